//! [`Outbox`]: framed bytes a transport took from its connection and has not
//! written yet, written with as few copies and calls as possible.
//!
//! A batch is either small frames only, written from one reused staging
//! buffer, or segments: the staged bytes around each large payload and the
//! payloads themselves (never copied), in one vectored write. A transport
//! that wraps the batch in its own framing (a WebSocket frame head) sets a
//! head that goes out first.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::AsyncWrite;

use crate::connection::{Connection, TRANSMIT_BATCH};

/// Payloads handed out by
/// [`poll_transmit_vectored`](Connection::poll_transmit_vectored) at least
/// this long are written from their own buffer instead of being copied into
/// the staging buffer (see the `transport::stream` module docs).
pub const SPLIT_PAYLOAD: usize = 16 * 1024;

/// Most segments handed to one vectored write (a batch is a few frames:
/// the bytes around each large payload, and the payloads).
const MAX_SEGMENTS: usize = 8;

/// Longest head: a WebSocket frame head.
const MAX_HEAD: usize = 14;

/// Bytes waiting to be written, in order: the head, then the staging buffer
/// or the segments (never both: a batch with segments is sealed).
#[derive(Debug, Default)]
pub(super) struct Outbox {
    head: [u8; MAX_HEAD],
    /// Unwritten part of `head`.
    head_at: usize,
    head_end: usize,
    /// Frame bytes being assembled: small frames, and the bytes around a
    /// large payload.
    pub(super) staging: BytesMut,
    /// Framed bytes waiting to be written, in order.
    pub(super) segments: VecDeque<Bytes>,
    /// Bytes in `segments`.
    queued: usize,
}

impl Outbox {
    /// Bytes not yet written, head included.
    pub(super) fn unsent(&self) -> usize {
        self.head_end - self.head_at + self.queued + self.staging.len()
    }

    /// Bytes of the batch, head excluded.
    pub(super) fn body_len(&self) -> usize {
        self.queued + self.staging.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.unsent() == 0
    }

    /// Sets the bytes written before the batch (at most 14).
    #[cfg_attr(not(feature = "transport-ws"), allow(dead_code))] // WebSocket only
    pub(super) fn set_head(&mut self, head: &[u8]) {
        let len = head.len().min(MAX_HEAD);
        self.head[..len].copy_from_slice(&head[..len]);
        self.head_at = 0;
        self.head_end = len;
    }

    /// Takes frames from `conn` until a batch is ready. A batch of small
    /// frames stays in `staging` and is written from there; a payload of at
    /// least [`SPLIT_PAYLOAD`] bytes becomes its own segment, after the
    /// staged bytes before it, and what follows it is sealed into a segment
    /// too.
    pub(super) fn fill(&mut self, conn: &mut Connection) {
        while self.body_len() < TRANSMIT_BATCH {
            let Some(payload) = conn.poll_transmit_vectored(&mut self.staging) else {
                break;
            };
            if payload.len() < SPLIT_PAYLOAD {
                // Cheaper to copy than to write as a segment of its own.
                self.staging.extend_from_slice(&payload);
            } else {
                self.seal();
                self.push(payload);
            }
        }
        if !self.segments.is_empty() {
            self.seal();
        }
    }

    /// Moves the staged bytes to the segments.
    pub(super) fn seal(&mut self) {
        if !self.staging.is_empty() {
            let staged = self.staging.split().freeze();
            self.push(staged);
        }
    }

    /// Appends a segment.
    pub(super) fn push(&mut self, segment: Bytes) {
        self.queued += segment.len();
        self.segments.push_back(segment);
    }

    /// Takes the whole batch (head excluded) as one buffer, copying the
    /// segments; the outbox is left with its head only.
    #[cfg_attr(not(feature = "transport-ws"), allow(dead_code))] // WebSocket only
    pub(super) fn take_body(&mut self) -> BytesMut {
        if self.segments.is_empty() {
            return self.staging.split();
        }
        let mut all = BytesMut::with_capacity(self.queued);
        for segment in self.segments.drain(..) {
            all.extend_from_slice(&segment);
        }
        self.queued = 0;
        all
    }

    /// Writes what it can with one call; returns the bytes written.
    pub(super) fn poll_write<S: AsyncWrite + Unpin>(
        &mut self,
        io: &mut S,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        let io = Pin::new(io);
        let head = &self.head[self.head_at..self.head_end];
        let n = match (head.is_empty(), self.segments.len(), self.segments.front()) {
            // Small frames only: written from the staging buffer, which is
            // reused for the next batch.
            (true, 0, _) => ready!(io.poll_write(cx, &self.staging))?,
            (true, 1, Some(only)) => ready!(io.poll_write(cx, only))?,
            _ => {
                let mut slices = [IoSlice::new(&[]); MAX_SEGMENTS];
                let mut count = 0;
                let staged = (!self.staging.is_empty()).then_some(&self.staging[..]);
                let pieces = std::iter::once(head)
                    .filter(|h| !h.is_empty())
                    .chain(staged)
                    .chain(self.segments.iter().map(|s| &s[..]));
                for (slice, piece) in slices.iter_mut().zip(pieces) {
                    *slice = IoSlice::new(piece);
                    count += 1;
                }
                ready!(io.poll_write_vectored(cx, slices.get(..count).unwrap_or_default()))?
            }
        };
        if n == 0 && self.unsent() > 0 {
            return Poll::Ready(Err(io::Error::from(io::ErrorKind::WriteZero)));
        }
        self.advance(n);
        Poll::Ready(Ok(n))
    }

    /// Drops the first `n` bytes (they were written).
    fn advance(&mut self, mut n: usize) {
        let from_head = n.min(self.head_end - self.head_at);
        self.head_at += from_head;
        n -= from_head;
        if self.head_at == self.head_end {
            (self.head_at, self.head_end) = (0, 0);
        }
        if self.segments.is_empty() {
            self.staging.advance(n.min(self.staging.len()));
            return;
        }
        self.queued -= n.min(self.queued);
        while n > 0 {
            let Some(front) = self.segments.front_mut() else {
                return;
            };
            if front.len() > n {
                front.advance(n);
                return;
            }
            n -= front.len();
            self.segments.pop_front();
        }
    }

    /// What a write of everything unsent would write; empties the outbox
    /// as if it had been written.
    #[cfg(test)]
    pub(super) fn take_unsent(&mut self) -> Vec<u8> {
        let mut bytes = self.head[self.head_at..self.head_end].to_vec();
        // A batch with segments was sealed.
        assert!(self.segments.is_empty() || self.staging.is_empty());
        bytes.extend_from_slice(&self.staging);
        bytes.extend(self.segments.iter().flat_map(|s| s.to_vec()));
        assert_eq!(self.unsent(), bytes.len());
        let len = bytes.len();
        self.advance(len);
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn head_then_segments_come_out_in_order_through_partial_writes() {
        let (mut a, mut b) = tokio::io::duplex(7);
        let mut out = Outbox::default();
        out.set_head(b"HEAD");
        out.staging.extend_from_slice(b"staged");
        out.seal();
        out.push(Bytes::from_static(b"-payload-"));
        out.staging.extend_from_slice(b"tail");
        out.seal();
        let expected = b"HEADstaged-payload-tail".to_vec();
        assert_eq!(out.unsent(), expected.len());
        let reader = tokio::spawn(async move {
            let mut got = vec![0; expected.len()];
            b.read_exact(&mut got).await.unwrap();
            assert_eq!(got, expected);
        });
        while !out.is_empty() {
            std::future::poll_fn(|cx| out.poll_write(&mut a, cx))
                .await
                .unwrap();
        }
        reader.await.unwrap();
        // The head was reset: a staged-only batch is written on its own.
        out.staging.extend_from_slice(b"x");
        assert_eq!(out.unsent(), 1);
    }

    #[test]
    fn take_body_joins_the_segments() {
        let mut out = Outbox::default();
        out.staging.extend_from_slice(b"ab");
        out.seal();
        out.push(Bytes::from_static(b"cd"));
        assert_eq!(&out.take_body()[..], b"abcd");
        assert!(out.is_empty());
        out.staging.extend_from_slice(b"ef");
        assert_eq!(&out.take_body()[..], b"ef");
        assert!(out.is_empty());
    }
}
