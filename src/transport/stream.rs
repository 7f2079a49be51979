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
