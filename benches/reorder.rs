//! `ReorderBuffer` throughput: envelopes in order, and shuffled within blocks of 16 and of 1024
//! (the default window), each popped as soon as it is deliverable. `btreemap_baseline` is the
//! naive approach (an unbounded `BTreeMap` by seq, no checks) on the same input, for ratios.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Instant;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use openiap_wire::proto::Envelope;
use openiap_wire::reorder::{ReorderBuffer, ReorderConfig};

/// Envelopes per iteration.
const COUNT: usize = 16 * 1024;
/// Byte size reported for each envelope (a small RPC).
const SIZE: usize = 64;

/// `0..COUNT` shuffled within consecutive blocks of `block` (1 = in order), deterministically.
fn seqs(block: usize) -> Vec<i32> {
    let mut seqs: Vec<i32> = (0..COUNT as i32).collect();
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    for chunk in seqs.chunks_mut(block) {
        for i in (1..chunk.len()).rev() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.swap(i, (state % (i as u64 + 1)) as usize);
        }
    }
    seqs
}

fn reorder(envelopes: Vec<Envelope>, now: Instant) -> usize {
    let mut buf = ReorderBuffer::new(ReorderConfig::default());
    let mut delivered = 0;
    for envelope in envelopes {
        let seq = envelope.seq;
        buf.push(seq, envelope, SIZE, now)
            .expect("input stays within the default window");
        while let Some(envelope) = buf.pop() {
            black_box(&envelope);
            delivered += 1;
        }
    }
    delivered
}

fn btreemap_baseline(envelopes: Vec<Envelope>) -> usize {
    let (mut held, mut next, mut delivered) = (BTreeMap::new(), 0, 0);
    for envelope in envelopes {
        held.insert(envelope.seq, envelope);
        while let Some(envelope) = held.remove(&next) {
            black_box(&envelope);
            next += 1;
            delivered += 1;
        }
    }
    delivered
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("reorder");
    group.throughput(Throughput::Elements(COUNT as u64));
    let now = Instant::now();
    for (name, block) in [
        ("in_order", 1),
        ("shuffled_16", 16),
        ("shuffled_1024", 1024),
    ] {
        let input: Vec<Envelope> = seqs(block)
            .into_iter()
            .map(|seq| Envelope {
                seq,
                ..Envelope::default()
            })
            .collect();
        group.bench_with_input(BenchmarkId::new("buffer", name), &input, |b, input| {
            b.iter_batched(
                || input.clone(),
                |input| assert_eq!(reorder(input, now), COUNT),
                BatchSize::LargeInput,
            );
        });
        group.bench_with_input(
            BenchmarkId::new("btreemap_baseline", name),
            &input,
            |b, input| {
                b.iter_batched(
                    || input.clone(),
                    |input| assert_eq!(btreemap_baseline(input), COUNT),
                    BatchSize::LargeInput,
                );
            },
        );
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
