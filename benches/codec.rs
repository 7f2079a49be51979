//! Codec throughput, ours against the naive baseline in the same run (issue 5, item 1).
//!
//! | workload     | envelopes | content                                                            |
//! |--------------|-----------|--------------------------------------------------------------------|
//! | `ping`       | 10,000    | `ping`, 9-character id, increasing seq, empty `PingRequest`        |
//! | `stream64k`  | 256       | `stream`, a `Stream` with a 64 KiB payload                         |
//! | `mix`        | 10,000    | 90 % `queryreply` (200-byte JSON string), 10 % `stream` (16 KiB)   |
//!
//! Groups (each reports `Throughput::Bytes` of framed bytes):
//!
//! - `decode/<workload>`: framing, Envelope and payload decode. `ours_owned` is `FrameDecoder`,
//!   `decode_envelope` and `payload(Strict)`; `ours_view` is `FrameDecoder`, `EnvelopeView` and
//!   the typed payload; `naive_codec` is tokio-util `LengthDelimitedCodec` + prost structs with
//!   `Vec<u8>` fields and `prost_types::Any`; `naive_split_to` is the hand-written loop.
//!   The input is handed over as a `BytesMut` built outside the timed section.
//! - `encode/<workload>`: typed payload + header fields to frames in one `BytesMut`. `ours` is
//!   `encode_packed_frame` (payload encoded straight into the output), `ours_pack` is `pack` +
//!   `encode_frame`; `naive_codec` is `encode_to_vec` + `LengthDelimitedCodec`, `naive_put`
//!   writes prefix and Envelope by hand.
//! - `split/stream64k`: the same wire pushed whole, or in pseudo-random 1-1500-byte pieces,
//!   both with the default `FrameConfig`; the largest receive buffer is printed.
//! - `payload_size`: 16 `stream` envelopes at 16 KiB, 64 KiB and 1 MiB, `Throughput::Elements`:
//!   a zero-copy decode costs the same per envelope at every size.
//! - `connection/<workload>` (`ping`, `stream64k`): the whole receive path of a server
//!   `Connection`, bytes in through `handle_message` and every event polled out (`Ping` with its
//!   id, `StreamChunk` with its data; `stream64k` is preceded by a `beginstream`, so every chunk
//!   also goes through the SHA-256 of the stream table). Pings are not answered
//!   (`set_answer_pings(false)`) so that only the receive side is measured. `decode_view` is the
//!   bare `FrameDecoder` + `EnvelopeView` decode of the same wire, for scale.
//!
//! `cargo bench --bench codec -- --warm-up-time 1 --measurement-time 3`

mod naive;

use std::hint::black_box;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use naive::{NaiveItem, NaivePayload, NaivePing, NaiveQueryResponse, NaiveStream};
use openiap_wire::command::{Payload, Validation};
use openiap_wire::connection::{Connection, ConnectionConfig, Event, Role};
use openiap_wire::envelope::{WireMessage, decode_envelope, pack, payload};
use openiap_wire::frame::{
    DEFAULT_MAX_FRAME_LENGTH, FrameDecoder, encode_frame, encode_packed_frame,
};
use openiap_wire::proto::{BeginStream, Envelope, PingRequest, QueryResponse, Stream};
use openiap_wire::view::EnvelopeView;
use prost::{Message, Name};

/// A decode under test: the input buffer to (envelopes, payload weight).
type DecodeFn = fn(BytesMut) -> (usize, usize);
/// An encode under test: owned items appended as frames to the buffer.
type EncodeFn<T> = fn(Vec<T>, &mut BytesMut);

/// Deterministic xorshift64 so every run sees the same input.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }

    /// A 9-character alphanumeric id, as the Node client makes.
    fn id(&mut self) -> String {
        const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
        (0..9)
            .map(|_| char::from(ALPHABET[self.below(ALPHABET.len() as u64) as usize]))
            .collect()
    }
}

/// A 200-byte JSON result string.
fn json_result(rng: &mut Rng) -> String {
    let mut json = format!(
        "[{{\"_id\":\"{}\",\"name\":\"entity {}\",\"_type\":\"item\",\"value\":{}}}",
        rng.id(),
        rng.below(1_000_000),
        rng.below(1_000_000_000)
    );
    json.push_str(",{\"note\":\"");
    while json.len() < 200 - 3 {
        json.push('x');
    }
    json.push_str("\"}]");
    assert_eq!(json.len(), 200);
    json
}

/// The typed payload of one envelope.
#[derive(Clone)]
enum Body {
    Ping(PingRequest),
    Query(QueryResponse),
    Stream(Stream),
}

/// The owned inputs of one envelope to send.
#[derive(Clone)]
struct Item {
    id: String,
    rid: String,
    seq: i32,
    body: Body,
}

impl Item {
    fn naive(&self) -> NaiveItem {
        let payload = match &self.body {
            Body::Ping(_) => NaivePayload::Ping(NaivePing {}),
            Body::Query(m) => NaivePayload::Query(NaiveQueryResponse {
                results: m.results.clone(),
            }),
            Body::Stream(m) => NaivePayload::Stream(NaiveStream {
                data: m.data.to_vec(),
            }),
        };
        NaiveItem {
            id: self.id.clone(),
            rid: self.rid.clone(),
            seq: self.seq,
            payload,
        }
    }
}

/// One workload: the items to encode and the wire they encode to.
struct Workload {
    name: &'static str,
    items: Vec<Item>,
    naive_items: Vec<NaiveItem>,
    wire: Bytes,
    /// Envelopes and payload weight a decode must report.
    expected: (usize, usize),
    largest_frame: usize,
}

impl Workload {
    fn new(name: &'static str, items: Vec<Item>) -> Self {
        let naive_items: Vec<NaiveItem> = items.iter().map(Item::naive).collect();
        let mut wire = BytesMut::new();
        encode_ours(items.clone(), &mut wire);
        let mut naive_wire = BytesMut::new();
        naive::encode_codec(naive_items.clone(), &mut naive_wire);
        assert_eq!(
            wire, naive_wire,
            "{name}: both encoders write the same bytes"
        );
        let expected = naive::decode_codec(wire.clone());
        assert_eq!(expected.0, items.len());
        let largest_frame = largest_frame(&wire);
        Self {
            name,
            items,
            naive_items,
            wire: wire.freeze(),
            expected,
            largest_frame,
        }
    }

    fn input(&self) -> BytesMut {
        BytesMut::from(&self.wire[..])
    }
}

fn largest_frame(mut wire: &[u8]) -> usize {
    let mut largest = 0;
    while let [a, b, c, d, rest @ ..] = wire {
        let len = u32::from_le_bytes([*a, *b, *c, *d]) as usize;
        largest = largest.max(4 + len);
        wire = &rest[len..];
    }
    largest
}

fn ping_items(rng: &mut Rng) -> Vec<Item> {
    (0..10_000)
        .map(|seq| Item {
            id: rng.id(),
            rid: String::new(),
            seq,
            body: Body::Ping(PingRequest {}),
        })
        .collect()
}

fn stream_items(rng: &mut Rng, count: usize, size: usize) -> Vec<Item> {
    let rid = rng.id();
    (0..count)
        .map(|seq| Item {
            id: rng.id(),
            rid: rid.clone(),
            seq: seq as i32,
            body: Body::Stream(Stream {
                data: Bytes::from(rng.bytes(size)),
            }),
        })
        .collect()
}

fn mix_items(rng: &mut Rng) -> Vec<Item> {
    let upload = rng.id();
    (0..10_000)
        .map(|seq| {
            let (rid, body) = if seq % 10 == 9 {
                let data = Bytes::from(rng.bytes(16 * 1024));
                (upload.clone(), Body::Stream(Stream { data }))
            } else {
                let results = json_result(rng);
                (rng.id(), Body::Query(QueryResponse { results }))
            };
            Item {
                id: rng.id(),
                rid,
                seq,
                body,
            }
        })
        .collect()
}

/// Our encode through `pack`: the typed payload into an `Any`, the header
/// stamped, then `encode_frame`.
fn encode_ours_pack(items: Vec<Item>, dst: &mut BytesMut) {
    for item in items {
        let mut envelope = match &item.body {
            Body::Ping(m) => pack(m),
            Body::Query(m) => pack(m),
            Body::Stream(m) => pack(m),
        };
        envelope.id = item.id;
        envelope.rid = item.rid;
        envelope.seq = item.seq;
        encode_frame(&envelope, DEFAULT_MAX_FRAME_LENGTH, dst).expect("frame within limit");
    }
}

/// Our direct encode: the header and `encode_packed_frame`, which writes the
/// payload straight into `dst` (no intermediate `Any.value`).
fn encode_ours(items: Vec<Item>, dst: &mut BytesMut) {
    fn frame<M: WireMessage>(item: Item, message: &M, dst: &mut BytesMut) {
        let header = Envelope {
            command: M::COMMAND.to_owned(),
            id: item.id,
            rid: item.rid,
            seq: item.seq,
            ..Envelope::default()
        };
        encode_packed_frame(&header, message, DEFAULT_MAX_FRAME_LENGTH, dst)
            .expect("frame within limit");
    }
    for mut item in items {
        match std::mem::replace(&mut item.body, Body::Ping(PingRequest {})) {
            Body::Ping(m) => frame(item, &m, dst),
            Body::Query(m) => frame(item, &m, dst),
            Body::Stream(m) => frame(item, &m, dst),
        }
    }
}

/// Decodes every frame with the owned decode and `payload(Strict)`.
fn drain_owned(decoder: &mut FrameDecoder) -> (usize, usize) {
    let (mut count, mut total) = (0, 0);
    while let Some(frame) = decoder.decode().expect("valid framing") {
        let envelope = decode_envelope(frame).expect("valid envelope");
        total += match payload(&envelope, Validation::Strict).expect("valid payload") {
            Payload::PingRequest(_) => 1,
            Payload::QueryResponse(m) => m.results.len(),
            Payload::Stream(m) => m.data.len(),
            _ => unreachable!("workloads hold ping, queryreply and stream only"),
        };
        count += 1;
    }
    (count, total)
}

/// The typed payload of `view`, its type URL checked strictly.
fn typed<M: Message + Name + Default>(view: &EnvelopeView<'_>) -> M {
    assert!(view.is_type::<M>(), "type URL names {}", M::NAME);
    view.decode_value().expect("valid payload")
}

/// Decodes every frame through the borrowed view and the typed payload.
fn drain_view(decoder: &mut FrameDecoder) -> (usize, usize) {
    let (mut count, mut total) = (0, 0);
    while let Some(frame) = decoder.decode().expect("valid framing") {
        let view = EnvelopeView::parse(&frame).expect("valid envelope");
        total += match view.command() {
            "ping" => typed::<PingRequest>(&view).encoded_len() + 1,
            "queryreply" => typed::<QueryResponse>(&view).results.len(),
            "stream" => typed::<Stream>(&view).data.len(),
            // The `connection/stream64k` wire opens with one.
            "beginstream" => typed::<BeginStream>(&view).encoded_len(),
            other => unreachable!("unexpected command {other}"),
        };
        count += 1;
    }
    (count, total)
}

fn decode_owned(buf: BytesMut) -> (usize, usize) {
    let mut decoder = FrameDecoder::default();
    decoder.push_bytes(buf.freeze());
    drain_owned(&mut decoder)
}

fn decode_view(buf: BytesMut) -> (usize, usize) {
    let mut decoder = FrameDecoder::default();
    decoder.push_bytes(buf.freeze());
    drain_view(&mut decoder)
}

fn bench_decode(c: &mut Criterion, workload: &Workload) {
    let mut group = c.benchmark_group(format!("decode/{}", workload.name));
    group.throughput(Throughput::Bytes(workload.wire.len() as u64));
    let decoders: [(&str, DecodeFn); 4] = [
        ("ours_owned", decode_owned),
        ("ours_view", decode_view),
        ("naive_codec", naive::decode_codec),
        ("naive_split_to", naive::decode_split_to),
    ];
    for (name, decode) in decoders {
        assert_eq!(decode(workload.input()), workload.expected, "{name}");
        group.bench_function(name, |b| {
            b.iter_batched(
                || workload.input(),
                |input| black_box(decode(input)),
                BatchSize::LargeInput,
            );
        });
    }
    group.finish();
}

fn bench_encode(c: &mut Criterion, workload: &Workload) {
    let mut group = c.benchmark_group(format!("encode/{}", workload.name));
    group.throughput(Throughput::Bytes(workload.wire.len() as u64));
    let capacity = workload.wire.len();
    let ours: [(&str, EncodeFn<Item>); 2] =
        [("ours", encode_ours), ("ours_pack", encode_ours_pack)];
    for (name, encode) in ours {
        let mut check = BytesMut::new();
        encode(workload.items.clone(), &mut check);
        assert_eq!(check, workload.wire, "{name}");
        group.bench_function(name, |b| {
            b.iter_batched(
                || (workload.items.clone(), BytesMut::with_capacity(capacity)),
                |(items, mut dst)| {
                    encode(items, &mut dst);
                    dst
                },
                BatchSize::LargeInput,
            );
        });
    }
    let encoders: [(&str, EncodeFn<NaiveItem>); 2] = [
        ("naive_codec", naive::encode_codec),
        ("naive_put", naive::encode_put),
    ];
    for (name, encode) in encoders {
        let mut check = BytesMut::new();
        encode(workload.naive_items.clone(), &mut check);
        assert_eq!(check, workload.wire, "{name}");
        group.bench_function(name, |b| {
            b.iter_batched(
                || {
                    (
                        workload.naive_items.clone(),
                        BytesMut::with_capacity(capacity),
                    )
                },
                |(items, mut dst)| {
                    encode(items, &mut dst);
                    dst
                },
                BatchSize::LargeInput,
            );
        });
    }
    group.finish();
}

/// Piece lengths of 1 to 1500 bytes covering `len` bytes.
fn pieces(len: usize, rng: &mut Rng) -> Vec<usize> {
    let mut pieces = Vec::new();
    let mut left = len;
    while left > 0 {
        let piece = (1 + rng.below(1500) as usize).min(left);
        pieces.push(piece);
        left -= piece;
    }
    pieces
}

/// Pushes `wire` in `pieces`, draining after each; returns the tally and the
/// largest receive buffer capacity seen.
fn decode_pieces(wire: &[u8], pieces: &[usize]) -> ((usize, usize), usize) {
    let mut decoder = FrameDecoder::default();
    let (mut count, mut total, mut capacity, mut at) = (0, 0, 0, 0);
    for &len in pieces {
        decoder.push(&wire[at..at + len]);
        at += len;
        capacity = capacity.max(decoder.capacity());
        let (c, t) = drain_view(&mut decoder);
        count += c;
        total += t;
    }
    ((count, total), capacity)
}

fn bench_split(c: &mut Criterion, workload: &Workload, rng: &mut Rng) {
    let pieces = pieces(workload.wire.len(), rng);
    let wire = &workload.wire[..];
    let (tally, capacity) = decode_pieces(wire, &pieces);
    assert_eq!(tally, workload.expected);
    println!(
        "split/{}: {} pieces, largest receive buffer {} bytes = {:.2}x the largest frame ({} bytes)",
        workload.name,
        pieces.len(),
        capacity,
        capacity as f64 / workload.largest_frame as f64,
        workload.largest_frame
    );
    let mut group = c.benchmark_group(format!("split/{}", workload.name));
    group.throughput(Throughput::Bytes(wire.len() as u64));
    group.bench_function("unsplit", |b| {
        b.iter(|| {
            let mut decoder = FrameDecoder::default();
            decoder.push(wire);
            black_box(drain_view(&mut decoder))
        });
    });
    group.bench_function("split_1_1500", |b| {
        b.iter(|| black_box(decode_pieces(wire, &pieces)));
    });
    group.finish();
}

/// Decodes every `stream` frame with the owned decode and keeps the chunks,
/// as a receiver that writes them out does: the buffer is freed outside the
/// timed section, so only the per-envelope cost is measured.
fn keep_owned(buf: BytesMut) -> Vec<Bytes> {
    let mut decoder = FrameDecoder::default();
    decoder.push_bytes(buf.freeze());
    let mut chunks = Vec::new();
    while let Some(frame) = decoder.decode().expect("valid framing") {
        let envelope = decode_envelope(frame).expect("valid envelope");
        match payload(&envelope, Validation::Strict).expect("valid payload") {
            Payload::Stream(m) => chunks.push(m.data),
            _ => unreachable!("stream envelopes only"),
        }
    }
    chunks
}

/// As [`keep_owned`], through the view.
fn keep_view(buf: BytesMut) -> Vec<Bytes> {
    let mut decoder = FrameDecoder::default();
    decoder.push_bytes(buf.freeze());
    let mut chunks = Vec::new();
    while let Some(frame) = decoder.decode().expect("valid framing") {
        let view = EnvelopeView::parse(&frame).expect("valid envelope");
        assert_eq!(view.command(), "stream");
        chunks.push(typed::<Stream>(&view).data);
    }
    chunks
}

fn bench_payload_size(c: &mut Criterion, rng: &mut Rng) {
    const COUNT: usize = 16;
    let mut group = c.benchmark_group("payload_size");
    group.throughput(Throughput::Elements(COUNT as u64));
    for (label, size) in [("16KiB", 16 << 10), ("64KiB", 64 << 10), ("1MiB", 1 << 20)] {
        let workload = Workload::new("payload", stream_items(rng, COUNT, size));
        group.bench_function(BenchmarkId::new("ours_owned", label), |b| {
            b.iter_batched(|| workload.input(), keep_owned, BatchSize::PerIteration);
        });
        group.bench_function(BenchmarkId::new("ours_view", label), |b| {
            b.iter_batched(|| workload.input(), keep_view, BatchSize::PerIteration);
        });
        group.bench_function(BenchmarkId::new("naive_codec", label), |b| {
            b.iter_batched(
                || workload.input(),
                naive::keep_codec,
                BatchSize::PerIteration,
            );
        });
    }
    group.finish();
}

/// The wire a server connection receives for `items`: a `beginstream` for the
/// rid of the first `stream` item, if there is one, then the items, seqs
/// numbered from 0 in that order.
fn connection_wire(items: &[Item]) -> Bytes {
    let mut dst = BytesMut::new();
    let mut items = items.to_vec();
    if let Some(rid) = items
        .iter()
        .find(|item| matches!(item.body, Body::Stream(_)))
        .map(|item| item.rid.clone())
    {
        let header = Envelope {
            command: "beginstream".to_owned(),
            id: "begin".to_owned(),
            rid,
            ..Envelope::default()
        };
        encode_packed_frame(
            &header,
            &BeginStream::default(),
            DEFAULT_MAX_FRAME_LENGTH,
            &mut dst,
        )
        .expect("frame within limit");
        for item in &mut items {
            item.seq += 1;
        }
    }
    encode_ours(items, &mut dst);
    dst.freeze()
}

/// The configuration of the receiving server: no keepalive, no pongs.
fn connection_config() -> ConnectionConfig {
    let mut config = ConnectionConfig::default();
    config.set_keepalive_interval(None).set_answer_pings(false);
    config
}

/// Feeds `wire` to a fresh server connection and polls every event out:
/// (events, ping id bytes + chunk bytes).
fn receive(config: &ConnectionConfig, wire: BytesMut) -> (usize, usize) {
    let now = Instant::now();
    let mut conn = Connection::new(Role::Server, config.clone(), now);
    conn.handle_message(wire.freeze(), now).expect("valid wire");
    let (mut count, mut total) = (0, 0);
    while let Some(event) = conn.poll_event() {
        total += match event {
            Event::Ping { id } => id.len(),
            Event::StreamChunk { data, .. } => data.len(),
            Event::StreamStarted { .. } => 0,
            other => panic!("unexpected event {other:?}"),
        };
        count += 1;
    }
    (count, total)
}

/// [`receive`] as the timed loop calls it: a separate symbol, so that a
/// profiler can collect the measured iterations alone
/// (`valgrind --tool=callgrind --toggle-collect='codec::receive_measured'`).
#[inline(never)]
fn receive_measured(config: &ConnectionConfig, wire: BytesMut) -> (usize, usize) {
    receive(config, wire)
}

fn bench_connection(c: &mut Criterion, workload: &Workload) {
    let wire = connection_wire(&workload.items);
    let config = connection_config();
    let input = || BytesMut::from(&wire[..]);
    let (events, total) = receive(&config, input());
    let chunks = workload
        .items
        .iter()
        .filter(|item| matches!(item.body, Body::Stream(_)))
        .count();
    assert_eq!(events, workload.items.len() + usize::from(chunks > 0));
    let expected_total: usize = workload
        .items
        .iter()
        .map(|item| match &item.body {
            Body::Stream(m) => m.data.len(),
            _ => item.id.len(),
        })
        .sum();
    assert_eq!(total, expected_total);
    assert_eq!(decode_view(input()).0, events);
    let mut group = c.benchmark_group(format!("connection/{}", workload.name));
    group.throughput(Throughput::Bytes(wire.len() as u64));
    group.bench_function("connection", |b| {
        b.iter_batched(
            input,
            |input| black_box(receive_measured(&config, input)),
            BatchSize::LargeInput,
        );
    });
    group.bench_function("decode_view", |b| {
        b.iter_batched(
            input,
            |input| black_box(decode_view(input)),
            BatchSize::LargeInput,
        );
    });
    group.finish();
}

fn benches(c: &mut Criterion) {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let workloads = [
        Workload::new("ping", ping_items(&mut rng)),
        Workload::new("stream64k", stream_items(&mut rng, 256, 64 * 1024)),
        Workload::new("mix", mix_items(&mut rng)),
    ];
    for workload in &workloads {
        bench_decode(c, workload);
        bench_encode(c, workload);
    }
    bench_split(c, &workloads[1], &mut rng);
    bench_payload_size(c, &mut rng);
    bench_connection(c, &workloads[0]);
    bench_connection(c, &workloads[1]);
}

criterion_group!(codec, benches);
criterion_main!(codec);
