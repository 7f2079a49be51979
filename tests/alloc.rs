//! Allocation bounds measured with a counting global allocator: what a
//! hostile 4-byte header costs, what an idle connection holds, and that
//! in-order delivery through the reorder buffer allocates nothing.
//!
//! dhat's counters are global, so every measurement runs inside one test
//! function, one after the other, while no other test of this binary runs.

use std::time::Instant;

use openiap_wire::connection::{Connection, ConnectionConfig, Role};
use openiap_wire::frame::{FrameDecoder, FrameError};
use openiap_wire::reorder::{ReorderBuffer, ReorderConfig};

#[global_allocator]
static ALLOCATOR: dhat::Alloc = dhat::Alloc;

/// Runs `f` and returns its result with (an upper bound of the peak bytes
/// allocated above the start, allocation calls) during it. dhat's peak is
/// the maximum since the profiler started, so measurements run in
/// increasing order of cost.
fn measure<T>(f: impl FnOnce() -> T) -> (T, usize, u64) {
    let before = dhat::HeapStats::get();
    let out = f();
    let after = dhat::HeapStats::get();
    let peak = after.max_bytes.saturating_sub(before.curr_bytes);
    (out, peak, after.total_blocks - before.total_blocks)
}

#[test]
fn allocation_bounds() {
    let _profiler = dhat::Profiler::builder().testing().build();
    // 1. A header declaring 4 GiB - 1 is refused before anything is
    //    reserved for its body.
    let (result, peak, _) = measure(|| {
        let mut decoder = FrameDecoder::default();
        decoder.push(&u32::MAX.to_le_bytes());
        let result = decoder.decode();
        drop(decoder);
        result
    });
    assert_eq!(
        result,
        Err(FrameError::TooLarge {
            len: u64::from(u32::MAX),
            max: 64 * 1024 * 1024
        })
    );
    println!("4 GiB header: peak {peak} bytes allocated");
    assert!(peak <= 16 * 1024, "4 GiB header cost {peak} bytes");

    // 2. An idle connection (nothing received yet) is small.
    let now = Instant::now();
    let (conn, peak, _) =
        measure(|| Connection::new(Role::Server, ConnectionConfig::default(), now));
    let inline = size_of_val(&conn);
    println!("idle connection: {inline} bytes inline + {peak} bytes on the heap");
    assert!(
        inline + peak <= 64 * 1024,
        "idle connection {inline} + {peak} bytes"
    );
    drop(conn);

    // 3. In-order delivery through the reorder buffer allocates nothing
    //    once it exists. dhat counts the whole process, and the test
    //    harness's own thread may allocate a few times meanwhile, so the
    //    bound is "nothing per envelope": far below one per 10,000.
    let mut buffer = ReorderBuffer::new(ReorderConfig::default());
    let ((), _, calls) = measure(|| {
        for seq in 0..100_000 {
            buffer.push(seq, seq, 1, now).expect("in order");
            assert_eq!(buffer.pop(), Some(seq));
        }
    });
    println!("100,000 in-order envelopes: {calls} allocations");
    assert!(calls < 10, "in-order reorder path allocated {calls} times");
}
