//! [`ByteStream`]: any `AsyncRead + AsyncWrite` (TCP, Unix socket) as a
//! [`Transport`].
//!
//! ```text
//!   io ──poll_read_buf──► conn.read_buf() ──handle_read──► frames
//!   io ◄──poll_write───── out ◄──poll_transmit (one batch at a time)
//! ```

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{Recv, Transport, TransportError};
use crate::connection::Connection;

/// A byte-stream socket driven as a [`Transport`]: reads go straight into
/// the connection's receive buffer, writes take one
/// [`poll_transmit`](Connection::poll_transmit) batch at a time.
#[derive(Debug)]
pub struct ByteStream<S> {
    io: S,
    out: BytesMut,
}

impl<S> ByteStream<S> {
    /// Wraps a connected socket.
    pub fn new(io: S) -> Self {
        Self {
            io,
            out: BytesMut::new(),
        }
    }

    /// The socket.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.io
    }

    /// Bytes taken from the connection and not yet written.
    pub fn unsent(&self) -> usize {
        self.out.len()
    }
}

impl<S: AsyncRead + AsyncWrite + Send + Unpin> Transport for ByteStream<S> {
    fn poll_recv(
        &mut self,
        cx: &mut Context<'_>,
        conn: &mut Connection,
        now: Instant,
    ) -> Poll<Result<Recv, TransportError>> {
        let n = ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.io),
            cx,
            conn.read_buf()
        ))?;
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
                self.out.clear();
                conn.poll_transmit(&mut self.out);
                if self.out.is_empty() {
                    ready!(Pin::new(&mut self.io).poll_flush(cx))?;
                    return Poll::Ready(Ok(()));
                }
            }
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.out))?;
            if n == 0 {
                return Poll::Ready(Err(io::Error::from(io::ErrorKind::WriteZero).into()));
            }
            self.out.advance(n.min(self.out.len()));
        }
    }

    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), TransportError>> {
        Poll::Ready(Ok(ready!(Pin::new(&mut self.io).poll_shutdown(cx))?))
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::connection::{ConnectionConfig, Event, Role};
    use crate::transport::{Driver, Status};

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
