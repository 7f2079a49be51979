//! Thin tokio adapters that move bytes between a socket and a sans-IO
//! [`Connection`].
//!
//! The protocol lives in [`Connection`]; this module only does IO, the
//! quinn `ConnectionDriver` way. Each transport implements [`Transport`],
//! two poll methods that hand bytes to the connection and take its queued
//! frames; one [`Driver`] runs any of them and adds the timers:
//!
//! ```text
//!                 poll_recv: read_buf + handle_read (bytes; ws payload bytes)
//!                            handle_body (one gRPC message)
//!   socket ─────────────────────────────────────────────► Connection ──► poll_event
//!   socket ◄───────────────────────────────────────────── Connection ◄── send, request
//!                 poll_send: poll_transmit batches
//!   tokio::time ─ poll_timeout / handle_timeout ────────►
//! ```
//!
//! | transport | URL                    | type                    | feature          |
//! |-----------|------------------------|-------------------------|------------------|
//! | TCP       | `socket://HOST:PORT`   | [`ByteStream`]`<TcpStream>`  | `transport-tcp`  |
//! | Unix      | `pipe://./NAME`        | [`ByteStream`]`<UnixStream>` | `transport-unix` |
//! | WebSocket | `ws://HOST:PORT/ws/v2` | `WsStream`              | `transport-ws`   |
//! | gRPC      | `grpc://HOST:PORT`     | `GrpcStream`            | `transport-grpc` |
//! | REST      | `http://HOST:PORT/api/v2` | `rest::RestConnection` (server side, one POST per envelope) | `transport-rest` |
//!
//! Byte streams read straight into the connection's receive buffer (no
//! copy) and write each [`poll_transmit`](Connection::poll_transmit) batch
//! as it comes. WebSocket treats binary messages as one byte stream: a
//! message may hold several frames and a frame may span messages (the Node
//! peer sends prefix and body as two). Its frames are this crate's own
//! sans-IO [`websocket`](crate::websocket) codec, whose payload bytes go to
//! the connection's receive buffer as they arrive (a long payload is read
//! straight into it). It sends each batch as one binary message, cut so
//! that no message exceeds [`TransportConfig::max_message_size`].
//!
//! gRPC frames its own messages: [`GrpcStream`] hands
//! each message body to [`Connection::handle_body`] and takes envelopes from
//! [`Connection::poll_envelope`], gRPC-framed over h2 with the message
//! limit set to the max frame length.
//!
//! Memory per connection is bounded by the connection's own limits plus one
//! outgoing batch ([`TRANSMIT_BATCH`](crate::connection::TRANSMIT_BATCH)
//! and at most one frame) and, for WebSocket, one read of at most
//! [`WS_READ_SIZE`] bytes: no WebSocket message is ever held whole.
//!
//! On a connection-fatal error the driver first writes out what the
//! connection queued (its `error` notice to the peer), for at most
//! [`FLUSH_TIMEOUT`], then closes.

mod connect;
mod driver;
#[cfg(feature = "transport-grpc")]
pub mod grpc;
mod listen;
mod outbox;
#[cfg(feature = "transport-rest")]
pub mod rest;
mod stream;
mod url;
#[cfg(feature = "transport-ws")]
mod ws;
#[cfg(feature = "transport-ws")]
pub mod ws_handshake;

use std::io;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

pub use self::connect::connect;
pub use self::driver::{Driver, RECV_PAUSE_QUEUE, Status};
#[cfg(feature = "transport-grpc")]
pub use self::grpc::{GrpcCode, GrpcStatus, GrpcStream};
pub use self::listen::{Accepted, Incoming, Listener};
pub use self::stream::{ByteStream, LARGE_FRAME, RESERVE_FLOOR, SPLIT_PAYLOAD};
pub use self::url::{
    DEFAULT_REST_PATH, DEFAULT_WS_PATH, Endpoint, GRPC_TLS_PORT, MAX_PIPE_NAME_LEN, PIPE_PREFIX,
    UrlError,
};
#[cfg(feature = "transport-ws")]
pub use self::ws::{DIRECT_READ, WS_READ_SIZE, WsRole, WsStream};
use crate::connection::Connection;

/// Default [`TransportConfig::max_message_size`]: 8 MiB per WebSocket
/// message. The Node peer silently corrupts messages above about 15 MiB
/// (PROTOCOL.md, "Buffer limits"), so this stays well below.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 8 * 1024 * 1024;

/// How long the driver keeps writing a connection's last words (its `error`
/// notice) after a fatal error before it closes anyway.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// What went wrong below or inside the protocol.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The socket failed.
    #[error("transport io: {0}")]
    Io(#[from] io::Error),
    /// The peer's WebSocket frames break RFC 6455, or are text.
    #[error("websocket: {0}")]
    WebSocket(#[from] crate::websocket::WsError),
    /// The WebSocket opening handshake failed.
    #[cfg(feature = "transport-ws")]
    #[error("websocket handshake: {0}")]
    Handshake(#[from] ws_handshake::HandshakeError),
    /// The gRPC call failed: refused, reset, a broken or compressed
    /// message, a message over the size limit, or the peer ended it with a
    /// non-zero `grpc-status` (the [`GrpcStatus`] code
    /// and message say which).
    #[cfg(feature = "transport-grpc")]
    #[error("grpc: {0}")]
    Grpc(#[from] GrpcStatus),
    /// The protocol ended the connection; the peer was told why.
    #[error(transparent)]
    Protocol(#[from] crate::Error),
    /// The URL cannot be used.
    #[error(transparent)]
    Url(#[from] UrlError),
    /// A REST endpoint was used where a connection is needed: REST carries
    /// one stateless POST per envelope.
    #[error(
        "{url} is REST: one stateless POST per envelope, not a connection; \
         use socket://, pipe://, ws:// or grpc:// (the server serves REST beside ws://)"
    )]
    Stateless {
        /// The URL.
        url: String,
    },
    /// The transport was not compiled in.
    #[error("transport {transport:?} is not enabled in this build (cargo feature {feature:?})")]
    Disabled {
        /// `socket`, `pipe`, `ws`, `grpc` or `rest`.
        transport: &'static str,
        /// The cargo feature that enables it.
        feature: &'static str,
    },
}

/// Limits of the IO layer (the protocol's own are in
/// [`ConnectionConfig`](crate::connection::ConnectionConfig)).
#[derive(Debug, Clone)]
pub struct TransportConfig {
    max_message_size: usize,
    max_frame_length: usize,
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            max_frame_length: crate::frame::DEFAULT_MAX_FRAME_LENGTH,
        }
    }
}

impl TransportConfig {
    /// Largest WebSocket message we send; default
    /// [`DEFAULT_MAX_MESSAGE_SIZE`]. Bigger batches are cut into several
    /// messages.
    pub fn max_message_size(&self) -> usize {
        self.max_message_size
    }

    /// Sets the largest WebSocket message we send (at least 1 byte).
    pub fn set_max_message_size(&mut self, max: usize) -> &mut Self {
        self.max_message_size = max.max(1);
        self
    }

    /// The connection's max frame length, used as gRPC's message limit
    /// (a WebSocket's payload goes to the connection as it arrives, whose
    /// own frame limit applies). Default
    /// [`DEFAULT_MAX_FRAME_LENGTH`](crate::frame::DEFAULT_MAX_FRAME_LENGTH).
    pub fn max_frame_length(&self) -> usize {
        self.max_frame_length
    }

    /// Sets the receive limit; keep it equal to the connection's
    /// [`FrameConfig::max_frame_length`](crate::frame::FrameConfig::max_frame_length).
    pub fn set_max_frame_length(&mut self, max: usize) -> &mut Self {
        self.max_frame_length = max;
        self
    }
}

/// What one [`Transport::poll_recv`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Recv {
    /// Bytes arrived and went into the connection; events may be waiting.
    Data,
    /// The peer closed its side.
    Eof,
}

/// One connected socket, seen as two poll methods over a [`Connection`].
/// [`Driver`] calls them; users rarely do.
pub trait Transport: Send {
    /// Reads what has arrived and feeds it to `conn`.
    ///
    /// # Errors
    ///
    /// [`TransportError::Protocol`] when the connection rejected the bytes
    /// (it then holds an `error` notice to flush), or an IO error.
    fn poll_recv(
        &mut self,
        cx: &mut Context<'_>,
        conn: &mut Connection,
        now: Instant,
    ) -> Poll<Result<Recv, TransportError>>;

    /// Writes what `conn` has queued; ready once everything is written and
    /// flushed.
    ///
    /// # Errors
    ///
    /// An IO or WebSocket error.
    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        conn: &mut Connection,
    ) -> Poll<Result<(), TransportError>>;

    /// Closes our sending side (TCP shutdown, WebSocket close frame).
    ///
    /// # Errors
    ///
    /// An IO or WebSocket error.
    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), TransportError>>;
}

impl<T: Transport + ?Sized> Transport for Box<T> {
    fn poll_recv(
        &mut self,
        cx: &mut Context<'_>,
        conn: &mut Connection,
        now: Instant,
    ) -> Poll<Result<Recv, TransportError>> {
        (**self).poll_recv(cx, conn, now)
    }

    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        conn: &mut Connection,
    ) -> Poll<Result<(), TransportError>> {
        (**self).poll_send(cx, conn)
    }

    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), TransportError>> {
        (**self).poll_close(cx)
    }
}

/// Any transport, boxed: what [`connect`] and [`Incoming::accept`] return.
pub type BoxTransport = Box<dyn Transport>;
