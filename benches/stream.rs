//! Stream receive throughput (issue 5, item 3): chunks through
//! `StreamTable::recv_begin` / `recv_chunk` / `recv_end`, which hashes every chunk with SHA-256
//! and checks the announced checksum, against plain SHA-256 of the same chunks (the floor: the
//! hash is work the receiver must do anyway).
//!
//! | bench              | per iteration                                                        |
//! |--------------------|----------------------------------------------------------------------|
//! | `sha256_floor`     | `Sha256::update` per chunk, `finalize`, compare with the checksum     |
//! | `table`            | `recv_begin` (with checksum), `recv_chunk` per chunk, `recv_end`     |
//! | `table_from_wire`  | as `table`, from framed `stream` envelopes read 64 KiB at a time into `FrameDecoder::read_buf`, then `EnvelopeView` and `Stream` decode |
//!
//! 64 MiB per iteration, in 256 KiB chunks (the Node client's size) and 1 MiB chunks (the Rust
//! client's). `cargo bench --bench stream -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use openiap_wire::frame::{DEFAULT_MAX_FRAME_LENGTH, FrameDecoder, encode_frame};
use openiap_wire::proto::{BeginStream, Stream};
use openiap_wire::stream::{STREAM_COMMAND, StreamConfig, StreamSender, StreamTable, sha256};
use openiap_wire::view::EnvelopeView;
use sha2::{Digest, Sha256};

/// Bytes moved per iteration.
const TOTAL: usize = 64 << 20;

/// A deterministic, incompressible-looking file.
fn file() -> Bytes {
    let mut state: u64 = 0x2545_F491_4F6C_DD1D;
    (0..TOTAL)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

fn floor(chunks: &[Bytes], digest: &[u8; 32]) -> usize {
    let mut hasher = Sha256::new();
    let mut bytes = 0;
    for chunk in chunks {
        hasher.update(chunk);
        bytes += chunk.len();
    }
    let got: [u8; 32] = hasher.finalize().into();
    assert_eq!(&got, digest);
    bytes
}

fn begin(digest: &[u8; 32]) -> BeginStream {
    BeginStream {
        checksum: digest.iter().map(|b| format!("{b:02x}")).collect(),
        stat: None,
    }
}

fn table(chunks: &[Bytes], begin: &BeginStream) -> u64 {
    let mut table = StreamTable::default();
    table.recv_begin("u1", begin).expect("begin");
    for chunk in chunks {
        black_box(table.recv_chunk("u1", chunk.clone()).expect("chunk"));
    }
    let summary = table.recv_end("u1").expect("end");
    assert!(summary.checksum_verified);
    summary.bytes
}

/// The chunks as framed `stream` envelopes, as they arrive on a socket.
fn wire(file: &Bytes, chunk_size: usize) -> Bytes {
    let mut config = StreamConfig::default();
    config.set_chunk_size(chunk_size.try_into().expect("non-zero"));
    let mut sender = StreamSender::new("u1", &config).expect("rid");
    sender.begin(None, None).expect("begin");
    let mut dst = BytesMut::new();
    for envelope in sender.chunks(file.clone()).expect("open") {
        encode_frame(&envelope, DEFAULT_MAX_FRAME_LENGTH, &mut dst).expect("frame");
    }
    dst.freeze()
}

/// Bytes per simulated socket read in `table_from_wire`.
const READ: usize = 64 << 10;

fn table_from_wire(wire: &[u8], begin: &BeginStream) -> u64 {
    let mut decoder = FrameDecoder::default();
    let mut table = StreamTable::default();
    table.recv_begin("u1", begin).expect("begin");
    for read in wire.chunks(READ) {
        decoder.read_buf().extend_from_slice(read);
        while let Some(frame) = decoder.decode().expect("framing") {
            let view = EnvelopeView::parse(&frame).expect("envelope");
            assert_eq!(view.command(), STREAM_COMMAND);
            let chunk: Stream = view.decode_value().expect("stream");
            black_box(table.recv_chunk(view.rid(), chunk.data).expect("chunk"));
        }
    }
    let summary = table.recv_end("u1").expect("end");
    assert!(summary.checksum_verified);
    summary.bytes
}

fn benches(c: &mut Criterion) {
    let file = file();
    let digest = sha256(&file);
    let begin = begin(&digest);
    let mut group = c.benchmark_group("stream_recv");
    group.throughput(Throughput::Bytes(TOTAL as u64));
    group.sample_size(10);
    for (label, chunk_size) in [("256KiB", 256 << 10), ("1MiB", 1 << 20)] {
        let chunks: Vec<Bytes> = (0..TOTAL)
            .step_by(chunk_size)
            .map(|at| file.slice(at..(at + chunk_size).min(TOTAL)))
            .collect();
        let wire = wire(&file, chunk_size);
        assert_eq!(floor(&chunks, &digest), TOTAL);
        assert_eq!(table(&chunks, &begin), TOTAL as u64);
        assert_eq!(table_from_wire(&wire, &begin), TOTAL as u64);
        group.bench_function(BenchmarkId::new("sha256_floor", label), |b| {
            b.iter(|| floor(&chunks, &digest));
        });
        group.bench_function(BenchmarkId::new("table", label), |b| {
            b.iter(|| table(&chunks, &begin));
        });
        group.bench_function(BenchmarkId::new("table_from_wire", label), |b| {
            b.iter(|| table_from_wire(&wire, &begin));
        });
    }
    group.finish();
}

criterion_group!(stream, benches);
criterion_main!(stream);
