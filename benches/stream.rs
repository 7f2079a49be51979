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
//! client's).
//!
//! The `stream_send` group measures the sending side, 64 MiB of chunks framed into a transmit
//! buffer that is emptied every 256 KiB (as a socket write would):
//!
//! | bench              | per chunk                                                            |
//! |--------------------|----------------------------------------------------------------------|
//! | `copy_floor`       | the chunk copied into the buffer: the one copy a framed transport needs |
//! | `chunk_then_frame` | `StreamSender::chunk` (payload encoded into the `Any`: a copy) + `encode_frame` (a second copy) |
//! | `chunk_parts`      | `StreamSender::chunk_parts` + `encode_packed_frame`: one copy        |
//! | `connection`       | `Connection::send_stream` of the whole file, then `poll_transmit`    |
//! | `connection_vectored` | the same with `poll_transmit_vectored`: chunks are not copied at all |
//!
//! `cargo bench --bench stream -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use openiap_wire::connection::{Connection, ConnectionConfig, Role, TRANSMIT_BATCH};
use openiap_wire::frame::{
    DEFAULT_MAX_FRAME_LENGTH, FrameDecoder, encode_frame, encode_packed_frame,
};
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

/// A send under test: file and chunk size to bytes written.
type SendFn = fn(&Bytes, usize) -> usize;

/// A transmit buffer that is written out (emptied) every [`TRANSMIT_BATCH`] bytes.
struct Transmit {
    buf: BytesMut,
    written: usize,
}

impl Transmit {
    fn new(chunk_size: usize) -> Self {
        Self {
            buf: BytesMut::with_capacity(TRANSMIT_BATCH + chunk_size + 4096),
            written: 0,
        }
    }

    fn flush_if_full(&mut self) {
        if self.buf.len() >= TRANSMIT_BATCH {
            self.flush();
        }
    }

    fn flush(&mut self) {
        self.written += black_box(&self.buf).len();
        self.buf.clear();
    }
}

fn stream_config(chunk_size: usize) -> StreamConfig {
    let mut config = StreamConfig::default();
    config.set_chunk_size(chunk_size.try_into().expect("non-zero"));
    config
}

fn copy_floor(file: &Bytes, chunk_size: usize) -> usize {
    let mut out = Transmit::new(chunk_size);
    for chunk in file.chunks(chunk_size) {
        out.buf.extend_from_slice(chunk);
        out.flush_if_full();
    }
    out.flush();
    out.written
}

/// Splits `file` into pieces of `chunk_size` for a fresh sender, has
/// `frame` append each one to the transmit buffer, and writes the buffer
/// out every batch.
fn frame_chunks(
    file: &Bytes,
    chunk_size: usize,
    mut frame: impl FnMut(&mut StreamSender, Bytes, &mut BytesMut),
) -> usize {
    let mut sender = StreamSender::new("u1", &stream_config(chunk_size)).expect("rid");
    sender.begin(None, None).expect("begin");
    let mut out = Transmit::new(chunk_size);
    let mut rest = file.clone();
    while !rest.is_empty() {
        let piece = rest.split_to(rest.len().min(chunk_size));
        frame(&mut sender, piece, &mut out.buf);
        out.flush_if_full();
    }
    out.flush();
    out.written
}

fn chunk_then_frame(file: &Bytes, chunk_size: usize) -> usize {
    frame_chunks(file, chunk_size, |sender, piece, buf| {
        let envelope = sender.chunk(piece).expect("chunk");
        encode_frame(&envelope, DEFAULT_MAX_FRAME_LENGTH, buf).expect("frame");
    })
}

fn chunk_parts(file: &Bytes, chunk_size: usize) -> usize {
    frame_chunks(file, chunk_size, |sender, piece, buf| {
        let (header, chunk) = sender.chunk_parts(piece).expect("chunk");
        encode_packed_frame(&header, &chunk, DEFAULT_MAX_FRAME_LENGTH, buf).expect("frame");
    })
}

/// A connection with the whole transfer of `file` queued.
fn streaming_connection(file: &Bytes, chunk_size: usize) -> Connection {
    let now = Instant::now();
    let mut config = ConnectionConfig::default();
    config.set_keepalive_interval(None);
    *config.stream_mut() = stream_config(chunk_size);
    let mut conn = Connection::new(Role::Server, config, now);
    conn.send_stream("u1", file.clone(), false, None, now)
        .expect("stream");
    conn
}

fn connection_send(file: &Bytes, chunk_size: usize) -> usize {
    let mut conn = streaming_connection(file, chunk_size);
    let mut out = Transmit::new(chunk_size);
    while conn.poll_transmit(&mut out.buf) > 0 {
        out.flush();
    }
    out.written
}

/// As [`connection_send`], for a transport that writes vectored: chunks are
/// never copied, only the bytes around them go through the buffer.
fn connection_send_vectored(file: &Bytes, chunk_size: usize) -> usize {
    let mut conn = streaming_connection(file, chunk_size);
    let mut out = Transmit::new(chunk_size);
    loop {
        let data = conn.poll_transmit_vectored(&mut out.buf);
        let done = data.is_none() && out.buf.is_empty();
        // One vectored write: the buffer, then the chunk's own bytes.
        out.written += data.map_or(0, |data| black_box(data).len());
        out.flush();
        if done {
            return out.written;
        }
    }
}

fn bench_send(c: &mut Criterion, file: &Bytes) {
    let mut group = c.benchmark_group("stream_send");
    group.throughput(Throughput::Bytes(TOTAL as u64));
    group.sample_size(10);
    for (label, chunk_size) in [("256KiB", 256 << 10), ("1MiB", 1 << 20)] {
        let framed = chunk_then_frame(file, chunk_size);
        assert_eq!(chunk_parts(file, chunk_size), framed);
        // The connection adds beginstream and endstream.
        assert!(connection_send(file, chunk_size) > framed);
        assert_eq!(
            connection_send_vectored(file, chunk_size),
            connection_send(file, chunk_size)
        );
        assert_eq!(copy_floor(file, chunk_size), TOTAL);
        let sends: [(&str, SendFn); 5] = [
            ("copy_floor", copy_floor),
            ("chunk_then_frame", chunk_then_frame),
            ("chunk_parts", chunk_parts),
            ("connection", connection_send),
            ("connection_vectored", connection_send_vectored),
        ];
        for (name, send) in sends {
            group.bench_function(BenchmarkId::new(name, label), |b| {
                b.iter(|| send(file, chunk_size));
            });
        }
    }
    group.finish();
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
    bench_send(c, &file);
}

criterion_group!(stream, benches);
criterion_main!(stream);
