//! [`ByteStream`]: any `AsyncRead + AsyncWrite` (TCP, Unix socket) as a
//! [`Transport`].
//!
//! ```text
//!   io ──poll_read_buf──────► conn.read_buf() ──handle_read──► frames
//!   io ◄──poll_write_vectored── segments ◄── conn.poll_transmit_vectored (one batch at a time)
//! ```
//!
//! # Writes
//!
//! The connection frames its queue itself, up to [`TRANSMIT_BATCH`] bytes
//! at a time, with
//! [`poll_transmit_vectored`](Connection::poll_transmit_vectored): the
//! frames go into one reused staging buffer and are written from it, except
//! a payload of at least [`SPLIT_PAYLOAD`] bytes that the connection hands
//! out (a file chunk's data, a large `data.value`), which is not copied: its
//! frame goes out as the staged bytes before it, the payload's own buffer
//! and the bytes after it, in one vectored write. A smaller payload handed
//! out is copied into the staging buffer.
//!
//! # Read sizes
//!
//! Small frames are read with the decoder's own step. Inside a large frame
//! the stream asks the connection how much to read
//! ([`Connection::large_read`]): it reserves room for the rest of that
//! frame, at most [`RESERVE_FLOOR`] or twice what has arrived of it, and
//! reads no further than the frame's end (see
//! [Reading large frames](crate::frame#reading-large-frames)):
//!
//! | without                                                  | with                                   |
//! |----------------------------------------------------------|----------------------------------------|
//! | the buffer regrows 8, 16, ... 512 KiB inside every 256 KiB frame: about 500 KiB copied per frame | one reservation per frame; 8 KiB copied |
//! | reads straddle frames, so the decoder keeps a large buffer for the next one | a frame ends a read, the decoder frees the buffer with the frame |
//!
//! Memory still follows the bytes received: a prefix that declares a large
//! frame reserves at most [`RESERVE_FLOOR`] until its bytes arrive.

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};

use super::outbox::Outbox;
use super::{Recv, Transport, TransportError};
use crate::connection::Connection;

pub use super::outbox::SPLIT_PAYLOAD;
pub use crate::frame::{LARGE_FRAME, RESERVE_FLOOR};

/// A byte-stream socket driven as a [`Transport`]: reads go straight into
/// the connection's receive buffer; writes take one batch of the
/// connection's frames at a time from
/// [`poll_transmit_vectored`](Connection::poll_transmit_vectored) (see the
/// `transport::stream` module docs).
#[derive(Debug)]
pub struct ByteStream<S> {
    io: S,
    out: Outbox,
}

impl<S> ByteStream<S> {
    /// Wraps a connected socket.
    pub fn new(io: S) -> Self {
        Self {
            io,
            out: Outbox::default(),
        }
    }

    /// The socket.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.io
    }

    /// Bytes taken from the connection and not yet written.
    pub fn unsent(&self) -> usize {
        self.out.unsent()
    }
}

/// Reads at most `want` bytes into the spare room of `buf`, reserving room
/// for all of them first when it has less.
pub(super) fn poll_read_at_most<S: AsyncRead + Unpin>(
    io: &mut S,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
    want: usize,
) -> Poll<std::io::Result<usize>> {
    if buf.capacity() - buf.len() < want {
        buf.reserve(want);
    }
    let mut limited = buf.limit(want);
    tokio_util::io::poll_read_buf(Pin::new(io), cx, &mut limited)
}

impl<S: AsyncRead + AsyncWrite + Send + Unpin> Transport for ByteStream<S> {
    fn poll_recv(
        &mut self,
        cx: &mut Context<'_>,
        conn: &mut Connection,
        now: Instant,
    ) -> Poll<Result<Recv, TransportError>> {
        let large = conn.large_read();
        let buf = conn.read_buf();
        let n = match large {
            Some(want) => ready!(poll_read_at_most(&mut self.io, cx, buf, want))?,
            None => ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut self.io),
                cx,
                buf
            ))?,
        };
        if n == 0 {
            return Poll::Ready(Ok(Recv::Eof));
        }
        conn.handle_read(now)?;
        Poll::Ready(Ok(Recv::Data))
    }

    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        conn: &mut Connection,
    ) -> Poll<Result<(), TransportError>> {
        loop {
            if self.out.is_empty() {
                self.out.fill(conn);
                if self.out.is_empty() {
                    ready!(Pin::new(&mut self.io).poll_flush(cx))?;
                    return Poll::Ready(Ok(()));
                }
            }
            ready!(self.out.poll_write(&mut self.io, cx))?;
        }
    }

    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), TransportError>> {
        Poll::Ready(Ok(ready!(Pin::new(&mut self.io).poll_shutdown(cx))?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connection::{ConnectionConfig, Event, Role};
    use crate::frame::encode_frame;
    use crate::proto::Envelope;
    use crate::proto::google::protobuf::Any;
    use crate::transport::{Driver, Status};
    use bytes::{Bytes, BytesMut};

    #[tokio::test]
    async fn big_transfer_survives_a_pipe_of_64_bytes() {
        // Every read and write is partial: 64 bytes at a time.
        let (a, b) = tokio::io::duplex(64);
        let (mut tx_io, mut rx_io) = (
            Driver::new(ByteStream::new(a)),
            Driver::new(ByteStream::new(b)),
        );
        let now = Instant::now();
        let mut tx = Connection::new(Role::Client, ConnectionConfig::default(), now);
        let mut rx = Connection::new(Role::Server, ConnectionConfig::default(), now);
        let data: Bytes = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        tx.send_stream("r1", data.clone(), true, None, now).unwrap();
        let sender = tokio::spawn(async move {
            tx_io.close(&mut tx).await.unwrap();
        });
        let mut received = Vec::new();
        let mut verified = None;
        while verified.is_none() {
            assert_eq!(rx_io.drive(&mut rx).await.unwrap(), Status::Progress);
            while let Some(event) = rx.poll_event() {
                match event {
                    Event::StreamChunk { data, .. } => received.extend_from_slice(&data),
                    Event::StreamEnded { summary, .. } => {
                        verified = Some(summary.checksum_verified)
                    }
                    Event::StreamStarted { started, .. } => assert!(started.checksum.is_some()),
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        assert_eq!(verified, Some(true));
        assert_eq!(received, data);
        sender.await.unwrap();
    }

    /// `envelope`, a transfer of `file` and a ping, queued on two
    /// connections: what a `ByteStream` writes of one, and what
    /// `encode_frame` makes of the other's envelopes.
    fn framed_by_both(envelope: &Envelope, file: &Bytes) -> (Vec<u8>, Vec<u8>) {
        let now = Instant::now();
        let mut conns =
            [(); 2].map(|()| Connection::new(Role::Server, ConnectionConfig::default(), now));
        for conn in &mut conns {
            conn.send(envelope.clone(), now).unwrap();
            conn.send_stream("r1", file.clone(), false, None, now)
                .unwrap();
            conn.request(&crate::proto::PingRequest {}, now).unwrap();
        }
        let [streamed, enveloped] = &mut conns;
        let mut expected = BytesMut::new();
        while let Some(envelope) = enveloped.poll_envelope() {
            encode_frame(&envelope, usize::MAX, &mut expected).unwrap();
        }
        let (a, _b) = tokio::io::duplex(64);
        let mut stream = ByteStream::new(a);
        let mut got = Vec::new();
        loop {
            stream.out.fill(streamed);
            let batch = stream.out.take_unsent();
            if batch.is_empty() {
                break;
            }
            got.extend_from_slice(&batch);
        }
        (got, expected.to_vec())
    }

    /// `len` bytes of a pattern.
    fn pattern(len: usize) -> Bytes {
        (0..len).map(|i| (i % 253) as u8).collect()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        #[test]
        fn framing_matches_encode_frame(
            command in "[a-z]{0,12}",
            seq in proptest::prelude::any::<i32>(),
            priority in proptest::prelude::any::<i32>(),
            id in "[a-z0-9]{0,10}",
            rid in "[a-z0-9]{0,10}",
            jwt in "[a-zA-Z0-9.]{0,40}",
            traceid in "[a-f0-9]{0,8}",
            spanid in "[a-f0-9]{0,8}",
            type_url in proptest::option::of("[a-zA-Z./]{0,40}"),
            len in proptest::prop_oneof![
                0usize..64,
                (SPLIT_PAYLOAD - 2)..(SPLIT_PAYLOAD + 2),
                200_000usize..300_000,
            ],
            file_len in proptest::prop_oneof![
                0usize..64,
                (SPLIT_PAYLOAD - 2)..(SPLIT_PAYLOAD + 2),
                200_000usize..600_000,
            ],
        ) {
            let envelope = Envelope {
                command, priority, seq, id, rid, jwt, traceid, spanid,
                data: type_url.map(|type_url| Any {
                    type_url,
                    value: pattern(len),
                }),
            };
            let (got, expected) = framed_by_both(&envelope, &pattern(file_len));
            proptest::prop_assert!(got == expected, "{} vs {} bytes", got.len(), expected.len());
        }
    }

    #[test]
    fn a_large_chunk_is_its_own_segment_and_a_small_one_is_copied() {
        let now = Instant::now();
        let mut conn = Connection::new(Role::Server, ConnectionConfig::default(), now);
        let (a, _b) = tokio::io::duplex(64);
        let mut stream = ByteStream::new(a);
        let payload = pattern(SPLIT_PAYLOAD);
        conn.send_stream("r1", payload.clone(), false, None, now)
            .unwrap();
        stream.out.fill(&mut conn);
        assert_eq!(
            stream.out.segments.len(),
            3,
            "beginstream and the chunk's head, the chunk, endstream"
        );
        // Not copied: the same buffer.
        assert_eq!(stream.out.segments[1].as_ptr(), payload.as_ptr());
        assert_eq!(stream.out.segments[1].len(), SPLIT_PAYLOAD);
        stream.out.take_unsent();

        conn.send_stream("r2", pattern(SPLIT_PAYLOAD - 1), false, None, now)
            .unwrap();
        stream.out.fill(&mut conn);
        assert!(stream.out.segments.is_empty(), "all in the staging buffer");
        assert!(stream.unsent() > SPLIT_PAYLOAD);
        stream.out.take_unsent();

        // A chunk sent as an envelope (`StreamSender::chunk`) too.
        let mut sender = conn.stream_sender("r3").unwrap();
        conn.send(sender.begin(None, None).unwrap(), now).unwrap();
        let envelope = sender.chunk(payload.clone()).unwrap();
        let value = envelope.data.as_ref().unwrap().value.clone();
        conn.send(envelope, now).unwrap();
        stream.out.fill(&mut conn);
        assert_eq!(
            stream.out.segments.len(),
            2,
            "beginstream and the head, the data"
        );
        assert_eq!(stream.out.segments[1].as_ptr(), value.as_ptr());
    }

    #[tokio::test]
    async fn eof_mid_frame_is_a_truncation_error() {
        let (a, b) = tokio::io::duplex(1024);
        let mut rx_io = Driver::new(ByteStream::new(b));
        let mut rx = Connection::new(Role::Server, ConnectionConfig::default(), Instant::now());
        let mut raw = a;
        tokio::io::AsyncWriteExt::write_all(&mut raw, &[10, 0, 0, 0, 1, 2])
            .await
            .unwrap();
        drop(raw);
        let mut result = rx_io.drive(&mut rx).await;
        while let Ok(Status::Progress) = result {
            result = rx_io.drive(&mut rx).await;
        }
        assert!(matches!(
            result,
            Err(TransportError::Protocol(crate::Error::Frame(
                crate::frame::FrameError::Truncated { .. }
            )))
        ));
    }
}
