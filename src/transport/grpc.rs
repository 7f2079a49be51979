//! [`GrpcStream`]: the `openiap.FlowService/SetupStream` bidirectional
//! stream as a [`Transport`], and the server that accepts those calls.
//!
//! gRPC frames messages itself, so envelopes skip the length prefix and go
//! straight to [`Connection::handle_body`] / come from
//! [`Connection::poll_envelope`]; seq is still checked (rustls's `quic.rs`
//! skips its record layer the same way).
//!
//! HTTP/2 is the `h2` crate used directly, and the gRPC message framing
//! is ours: a 1-byte compressed flag (always 0; a compressed message is
//! refused with [`GrpcCode::Internal`]), a 4-byte big-endian length and the
//! Envelope protobuf. Messages may span DATA frames and several may share
//! one; the length is checked against the limit as soon as the 5-byte
//! header is in, before any of the body is buffered, and flow-control
//! capacity is released as bytes are consumed. Each outgoing envelope is
//! encoded once, prefix and body, into one contiguous buffer, and handed
//! to h2 only within the send capacity it grants.
//!
//! ```text
//!   RecvStream DATA ──deframe──► conn.handle_body
//!   SendStream      ◄─encode──── conn.poll_envelope   (within h2's capacity)
//!
//!   client:  the h2 connection lives inside the GrpcStream and is polled
//!            from poll_recv / poll_send / poll_close: the whole call runs
//!            in the caller's task
//!   server:  TcpListener ─► one task per TCP connection drives h2
//!            each SetupStream call ─► GrpcServer::accept ─► GrpcStream
//!            (the session reads and writes the h2 stream itself)
//! ```
//!
//! | limit                         | value                                      |
//! |-------------------------------|--------------------------------------------|
//! | message size, both directions | the max frame length                       |
//! | bytes queued in h2 per call   | [`SEND_BUFFER`] (h2's send buffer; data is handed over only within the capacity h2 assigns) plus the rest of one encoded envelope |
//! | calls per HTTP/2 connection   | [`MAX_CALLS_PER_CONNECTION`]               |
//! | calls waiting to be accepted  | [`ACCEPT_QUEUE`]                           |
//! | HTTP/2 windows (call, connection) | [`STREAM_WINDOW`], [`CONNECTION_WINDOW`] (static: adaptive windows start at 64 KiB and send a BDP ping with data) |
//!
//! A message over the limit ends the call: the server reports it to the
//! client as the call's status ([`GrpcCode::OutOfRange`]). The server
//! ending the call (trailers with `grpc-status: 0`) is EOF for the client;
//! any other status is [`TransportError::Grpc`]. Paths other than
//! [`SETUP_STREAM_PATH`] are answered [`GrpcCode::Unimplemented`].
//!
//! On shutdown every connection gets a GOAWAY, calls in flight finish, and
//! after [`DRAIN_TIMEOUT`] the rest are dropped.

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker, ready};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use h2::{RecvStream, SendStream};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use prost::Message;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, mpsc, watch};
use tokio::task::JoinSet;

use super::{Recv, Transport, TransportConfig, TransportError};
use crate::connection::Connection;
use crate::proto::Envelope;

/// The one rpc the protocol uses: `SetupStream(stream Envelope) returns
/// (stream Envelope)` of `openiap.FlowService`, as an HTTP/2 path.
pub const SETUP_STREAM_PATH: &str = "/openiap.FlowService/SetupStream";

/// Concurrent SetupStream calls one HTTP/2 connection may open (its
/// `SETTINGS_MAX_CONCURRENT_STREAMS`). Clients open one; the cap bounds
/// what a single socket can make the server hold.
pub const MAX_CALLS_PER_CONNECTION: u32 = 16;

/// Calls accepted by HTTP/2 but not yet taken by the server's accept loop;
/// a call waits (backpressure) when the queue is full.
pub const ACCEPT_QUEUE: usize = 64;

/// HTTP/2 flow-control window of one call, both sides: 4 MiB, sixteen file
/// chunks in flight, so a transfer never waits for a WINDOW_UPDATE (the
/// HTTP/2 default is 64 KiB). It bounds what the peer may send ahead of
/// what we read.
pub const STREAM_WINDOW: u32 = 4 * 1024 * 1024;

/// HTTP/2 flow-control window of one connection (all its calls): 8 MiB.
pub const CONNECTION_WINDOW: u32 = 8 * 1024 * 1024;

/// Bytes h2 buffers per call, both sides, before it grants no more send
/// capacity: 1 MiB, four file chunks. Envelopes are handed to h2 only
/// within that capacity, so this bounds what a call queues.
pub const SEND_BUFFER: usize = 1024 * 1024;

/// How long HTTP/2 connections may take to finish their calls after the
/// server stopped, before they are dropped.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The gRPC message header: compressed flag and 4-byte big-endian length.
const MESSAGE_HEADER: usize = 5;

/// Envelopes one [`Transport::poll_recv`] hands to the connection at most,
/// so that the driver's backpressure check runs between batches.
const RECV_BATCH: usize = 64;

/// `application/grpc`, the content type of both directions.
const GRPC_CONTENT_TYPE: &str = "application/grpc";

/// A gRPC status code (the `grpc-status` trailer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum GrpcCode {
    /// 0: success.
    Ok,
    /// 1: the call was cancelled.
    Cancelled,
    /// 2: unknown error, or a code outside the table.
    Unknown,
    /// 3: the client sent something invalid.
    InvalidArgument,
    /// 4: the deadline passed.
    DeadlineExceeded,
    /// 5: not found.
    NotFound,
    /// 6: already exists.
    AlreadyExists,
    /// 7: not allowed.
    PermissionDenied,
    /// 8: a resource ran out.
    ResourceExhausted,
    /// 9: the system is not in the state the operation needs.
    FailedPrecondition,
    /// 10: aborted.
    Aborted,
    /// 11: out of range; here, a message over the size limit.
    OutOfRange,
    /// 12: the method is not served.
    Unimplemented,
    /// 13: an internal error (a broken message, a compressed one).
    Internal,
    /// 14: the peer cannot be reached or is shutting down.
    Unavailable,
    /// 15: data was lost.
    DataLoss,
    /// 16: no valid credentials.
    Unauthenticated,
}

impl GrpcCode {
    const TABLE: [Self; 17] = [
        Self::Ok,
        Self::Cancelled,
        Self::Unknown,
        Self::InvalidArgument,
        Self::DeadlineExceeded,
        Self::NotFound,
        Self::AlreadyExists,
        Self::PermissionDenied,
        Self::ResourceExhausted,
        Self::FailedPrecondition,
        Self::Aborted,
        Self::OutOfRange,
        Self::Unimplemented,
        Self::Internal,
        Self::Unavailable,
        Self::DataLoss,
        Self::Unauthenticated,
    ];

    /// The code of a `grpc-status` value; values outside the table are
    /// [`GrpcCode::Unknown`].
    pub fn from_u32(value: u32) -> Self {
        usize::try_from(value)
            .ok()
            .and_then(|i| Self::TABLE.get(i).copied())
            .unwrap_or(Self::Unknown)
    }

    /// The `grpc-status` value.
    pub fn as_u32(self) -> u32 {
        self as u32
    }
}

/// How a gRPC call ended, when it did not end well: the `grpc-status` code
/// and `grpc-message` text the peer sent, or what this side saw (a reset,
/// a message over the limit, a refused connection).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct GrpcStatus {
    code: GrpcCode,
    message: String,
}

impl GrpcStatus {
    /// A status of `code` with `message`.
    pub fn new(code: GrpcCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// The status code.
    pub fn code(&self) -> GrpcCode {
        self.code
    }

    /// The status text.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The `grpc-status` (and `grpc-message`) of trailers or of a
    /// trailers-only response; `None` when there is no `grpc-status`.
    fn from_headers(headers: &HeaderMap) -> Option<Self> {
        let code = headers.get("grpc-status")?;
        let code = std::str::from_utf8(code.as_bytes())
            .ok()
            .and_then(|code| code.trim().parse::<u32>().ok())
            .map_or(GrpcCode::Unknown, GrpcCode::from_u32);
        let message = headers
            .get("grpc-message")
            .map(|m| percent_decode(m.as_bytes()))
            .unwrap_or_default();
        Some(Self::new(code, message))
    }

    /// Adds `grpc-status` and `grpc-message` to `headers`.
    fn write_to(&self, headers: &mut HeaderMap) {
        headers.insert("grpc-status", HeaderValue::from(self.code.as_u32()));
        if !self.message.is_empty()
            && let Ok(message) = HeaderValue::from_str(&percent_encode(&self.message))
        {
            headers.insert("grpc-message", message);
        }
    }

    /// What an h2 error means for the call.
    fn from_h2(error: &h2::Error) -> Self {
        let code = match error.reason() {
            Some(h2::Reason::REFUSED_STREAM) => GrpcCode::Unavailable,
            Some(h2::Reason::CANCEL) => GrpcCode::Cancelled,
            Some(h2::Reason::ENHANCE_YOUR_CALM) => GrpcCode::ResourceExhausted,
            Some(h2::Reason::INADEQUATE_SECURITY) => GrpcCode::PermissionDenied,
            Some(h2::Reason::NO_ERROR) if error.is_go_away() => GrpcCode::Unavailable,
            Some(_) => GrpcCode::Internal,
            None => GrpcCode::Unavailable,
        };
        Self::new(code, format!("http/2: {}", with_sources(error)))
    }

    /// A response that is not gRPC: the HTTP status mapped as gRPC
    /// clients do.
    fn from_http(status: StatusCode) -> Self {
        let code = match status.as_u16() {
            400 => GrpcCode::Internal,
            401 => GrpcCode::Unauthenticated,
            403 => GrpcCode::PermissionDenied,
            404 => GrpcCode::Unimplemented,
            429 | 502..=504 => GrpcCode::Unavailable,
            _ => GrpcCode::Unknown,
        };
        Self::new(
            code,
            format!("the gRPC call was answered with HTTP {status}"),
        )
    }
}

impl From<h2::Error> for TransportError {
    fn from(error: h2::Error) -> Self {
        Self::Grpc(GrpcStatus::from_h2(&error))
    }
}

/// `grpc-message` encoding: printable ASCII except `%` stays, the rest is
/// `%XX` per byte of its UTF-8.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for &b in text.as_bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The inverse of [`percent_encode`]; malformed escapes stay as they are.
fn percent_decode(raw: &[u8]) -> String {
    let hex = |b: u8| char::from(b).to_digit(16);
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                raw.get(i + 1).and_then(|&b| hex(b)),
                raw.get(i + 2).and_then(|&b| hex(b)),
            )
        {
            // Two hex digits: at most 255.
            out.push(u8::try_from(hi * 16 + lo).unwrap_or(b'?'));
            i += 3;
        } else {
            out.push(raw[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `error` and its chain of causes on one line (a connect error alone
/// often only names the layer).
fn with_sources(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn closed() -> TransportError {
    TransportError::Io(io::Error::new(
        io::ErrorKind::BrokenPipe,
        "the gRPC call has ended",
    ))
}

/// `envelope` as one gRPC message, prefix and body in one buffer.
fn encode_message(envelope: &Envelope, max: usize) -> Result<Bytes, GrpcStatus> {
    let len = envelope.encoded_len();
    let prefix = match u32::try_from(len) {
        Ok(prefix) if len <= max => prefix,
        _ => {
            return Err(GrpcStatus::new(
                GrpcCode::OutOfRange,
                format!("envelope of {len} bytes is over the message limit of {max} bytes"),
            ));
        }
    };
    let mut buf = BytesMut::with_capacity(MESSAGE_HEADER + len);
    buf.put_u8(0);
    buf.put_u32(prefix);
    envelope.encode_raw(&mut buf);
    Ok(buf.freeze())
}

/// The body length in a message header, checked against `max`.
fn parse_header(header: &[u8], max: usize) -> Result<usize, GrpcStatus> {
    let flag = header[0];
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    if flag != 0 {
        return Err(GrpcStatus::new(
            GrpcCode::Internal,
            format!("gRPC message with compressed flag {flag}; no compression was negotiated"),
        ));
    }
    match usize::try_from(len) {
        Ok(len) if len <= max => Ok(len),
        _ => Err(GrpcStatus::new(
            GrpcCode::OutOfRange,
            format!("gRPC message of {len} bytes is over the limit of {max} bytes"),
        )),
    }
}

/// Incremental parser of gRPC messages out of DATA chunks. A message that
/// lies whole inside one chunk is sliced out of it (no copy); one that
/// spans chunks is gathered into `partial`.
#[derive(Debug, Default)]
struct Deframer {
    /// The rest of the current DATA chunk.
    chunk: Bytes,
    /// A message begun in earlier chunks: header, then body.
    partial: BytesMut,
    /// The body length of the message in `partial`, once its header is in.
    body_len: Option<usize>,
}

impl Deframer {
    /// Takes the next chunk; the previous one must be used up.
    fn push(&mut self, chunk: Bytes) {
        debug_assert!(self.chunk.is_empty());
        self.chunk = chunk;
    }

    /// True when no message is begun.
    fn is_idle(&self) -> bool {
        self.chunk.is_empty() && self.partial.is_empty()
    }

    /// The next whole message body, if the chunks so far hold one; adds
    /// the chunk bytes it used up to `consumed`.
    fn next_message(
        &mut self,
        max: usize,
        consumed: &mut usize,
    ) -> Result<Option<Bytes>, GrpcStatus> {
        if self.partial.is_empty() && self.chunk.len() >= MESSAGE_HEADER {
            let len = parse_header(&self.chunk[..MESSAGE_HEADER], max)?;
            if self.chunk.len() - MESSAGE_HEADER >= len {
                let mut message = self.chunk.split_to(MESSAGE_HEADER + len);
                message.advance(MESSAGE_HEADER);
                *consumed += MESSAGE_HEADER + len;
                return Ok(Some(message));
            }
        }
        while !self.chunk.is_empty() {
            let want = match self.body_len {
                None => MESSAGE_HEADER - self.partial.len(),
                Some(len) => MESSAGE_HEADER + len - self.partial.len(),
            };
            let take = want.min(self.chunk.len());
            self.partial.extend_from_slice(&self.chunk[..take]);
            self.chunk.advance(take);
            *consumed += take;
            let len = match self.body_len {
                Some(len) => len,
                None if self.partial.len() == MESSAGE_HEADER => {
                    let len = parse_header(&self.partial, max)?;
                    // Grow with the data beyond one window's worth, so a
                    // header alone cannot make us allocate the limit.
                    self.partial.reserve(len.min(STREAM_WINDOW as usize));
                    self.body_len = Some(len);
                    len
                }
                None => continue,
            };
            if self.partial.len() == MESSAGE_HEADER + len {
                self.body_len = None;
                let mut message = self.partial.split().freeze();
                message.advance(MESSAGE_HEADER);
                return Ok(Some(message));
            }
        }
        Ok(None)
    }
}

/// A TCP stream that records whether everything written has been flushed,
/// so the client can tell when h2 has put its frames on the socket.
#[derive(Debug)]
struct Tracked {
    io: TcpStream,
    flushed: Arc<AtomicBool>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.flushed.store(false, Ordering::Relaxed);
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.flushed.store(false, Ordering::Relaxed);
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.io).poll_flush(cx);
        if matches!(result, Poll::Ready(Ok(()))) {
            self.flushed.store(true, Ordering::Relaxed);
        }
        result
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A waker handed to h2 on the client side. It forwards to the task's
/// waker, except while `quiet`: wakes that our own calls cause (h2 waking
/// its connection after `send_data`, a DATA frame read by our own
/// connection poll waking the stream) are dropped there, because the same
/// call goes on to look at what they signal (it polls the connection after
/// sending, the stream after polling the connection). That saves the task
/// a useless extra poll per message.
///
/// Every wake, quiet or not, is also recorded (see [`Self::take_woken`]),
/// so the client polls its connection only when something woke it, as the
/// runtime polls a spawned connection task.
#[derive(Debug)]
struct QuietWaker {
    task: std::sync::Mutex<Option<Waker>>,
    quiet: AtomicBool,
    /// Woken since the last [`Self::take_woken`]; starts set.
    woken: AtomicBool,
}

impl Default for QuietWaker {
    fn default() -> Self {
        Self {
            task: std::sync::Mutex::default(),
            quiet: AtomicBool::new(false),
            woken: AtomicBool::new(true),
        }
    }
}

impl QuietWaker {
    /// Makes `waker` the one woken.
    fn register(&self, waker: &Waker) {
        let mut task = self
            .task
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !task.as_ref().is_some_and(|task| task.will_wake(waker)) {
            *task = Some(waker.clone());
        }
    }

    fn set_quiet(&self, quiet: bool) {
        self.quiet.store(quiet, Ordering::Relaxed);
    }

    /// Whether it was woken (or never asked) since the last call; clears
    /// the record. Called before polling what wakes it, so a wake during
    /// that poll counts for the next one.
    fn take_woken(&self) -> bool {
        self.woken.swap(false, Ordering::AcqRel)
    }
}

impl Wake for QuietWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        if self.quiet.load(Ordering::Relaxed) {
            return;
        }
        let task = self
            .task
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if let Some(task) = task {
            task.wake();
        }
    }
}

/// The client's HTTP/2 connection, polled from the stream's own methods.
struct ClientConnection {
    connection: h2::client::Connection<Tracked, Bytes>,
    /// Kept so the connection does not close for want of handles.
    _requests: h2::client::SendRequest<Bytes>,
    /// Set by [`Tracked`] once a flush finds nothing left to write; cleared
    /// by every write.
    flushed: Arc<AtomicBool>,
    /// The connection future has finished.
    done: bool,
    /// How it failed, if it did.
    error: Option<GrpcStatus>,
    /// What the connection's IO wakes; quiet while we hand h2 data (a
    /// connection poll always follows).
    conn_waker: Arc<QuietWaker>,
    conn_handle: Waker,
    /// What the stream's incoming half wakes; quiet during the connection
    /// poll at the start of `poll_recv` (the stream is polled next).
    recv_waker: Arc<QuietWaker>,
}

impl ClientConnection {
    /// Runs the connection's IO (reads frames, writes what streams queued)
    /// if anything woke it since its last poll: its socket, or a stream
    /// handing it frames or capacity. Unwoken, it has nothing to do (it
    /// would return `Pending` again); the task's current waker is still
    /// registered for its next wake.
    fn poll(&mut self, cx: &mut Context<'_>) {
        if self.done {
            return;
        }
        self.conn_waker.register(cx.waker());
        if !self.conn_waker.take_woken() {
            return;
        }
        let mut cx = Context::from_waker(&self.conn_handle);
        if let Poll::Ready(result) = Pin::new(&mut self.connection).poll(&mut cx) {
            self.done = true;
            if let Err(e) = result {
                self.error = Some(GrpcStatus::from_h2(&e));
            }
        }
    }

    /// Whatever streams queued has been written to the socket.
    fn is_flushed(&self) -> bool {
        self.flushed.load(Ordering::Relaxed)
    }

    /// The connection's failure, or "ended" when it finished cleanly.
    fn ended(&self) -> TransportError {
        self.error.clone().map_or_else(closed, TransportError::Grpc)
    }
}

/// Where the incoming half of the call is.
enum Incoming {
    /// Client: the response headers have not arrived yet.
    Response(h2::client::ResponseFuture),
    /// Messages.
    Body(RecvStream),
    /// The body ended; its trailers (the client's status) are next.
    Trailers(RecvStream),
    /// Ended well.
    Done,
}

/// One SetupStream call, client or server side.
pub struct GrpcStream {
    /// Client side: the HTTP/2 connection, driven from this stream's own
    /// poll methods. Server side: `None` (its connection task drives it).
    client: Option<Box<ClientConnection>>,
    /// Client side: the waker the incoming half registers with h2 (a
    /// [`QuietWaker`]); server side `None` (the task's own).
    recv_handle: Option<Waker>,
    send: SendStream<Bytes>,
    /// The unsent rest of the message being sent.
    out: Bytes,
    /// Our half has ended (END_STREAM, or the server's trailers).
    send_closed: bool,
    incoming: Incoming,
    deframer: Deframer,
    /// Message size limit, both directions.
    max: usize,
}

impl std::fmt::Debug for GrpcStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcStream")
            .field("client", &self.client.is_some())
            .field("send_closed", &self.send_closed)
            .finish_non_exhaustive()
    }
}

impl GrpcStream {
    /// Opens a SetupStream call to `authority` (`host:port`) over
    /// plaintext HTTP/2, message limits set to the config's max frame
    /// length.
    ///
    /// The connection is owned by the stream and runs whenever one of its
    /// poll methods runs (a [`Driver::flush`](super::Driver::flush) alone
    /// completes: it writes until everything is on the socket). The
    /// request headers are queued here; the response is awaited lazily
    /// inside [`poll_recv`](Transport::poll_recv): a server may hold its
    /// response headers until it has something to send, and the first
    /// envelope is ours. Dropping the stream closes the connection.
    ///
    /// # Errors
    ///
    /// [`TransportError::Grpc`] when the address is not a valid URI
    /// ([`GrpcCode::InvalidArgument`]), or the connection cannot be made
    /// ([`GrpcCode::Unavailable`]).
    pub async fn connect(
        authority: &str,
        config: &TransportConfig,
    ) -> Result<Self, TransportError> {
        let request = Request::builder()
            .method(Method::POST)
            .uri(format!("http://{authority}{SETUP_STREAM_PATH}"))
            .header(header::CONTENT_TYPE, GRPC_CONTENT_TYPE)
            .header(header::TE, "trailers")
            .body(())
            .map_err(|e| GrpcStatus::new(GrpcCode::InvalidArgument, e.to_string()))?;
        let unavailable = |e: &dyn std::error::Error| {
            GrpcStatus::new(
                GrpcCode::Unavailable,
                format!("connecting to {authority}: {}", with_sources(e)),
            )
        };
        let tcp = TcpStream::connect(authority)
            .await
            .map_err(|e| unavailable(&e))?;
        let _ = tcp.set_nodelay(true);
        let flushed = Arc::new(AtomicBool::new(false));
        let io = Tracked {
            io: tcp,
            flushed: Arc::clone(&flushed),
        };
        let (mut requests, connection) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_send_buffer_size(SEND_BUFFER)
            .handshake::<_, Bytes>(io)
            .await
            .map_err(|e| unavailable(&e))?;
        poll_fn(|cx| requests.poll_ready(cx))
            .await
            .map_err(|e| unavailable(&e))?;
        let (response, send) = requests
            .send_request(request, false)
            .map_err(|e| unavailable(&e))?;
        let conn_waker = Arc::new(QuietWaker::default());
        let recv_waker = Arc::new(QuietWaker::default());
        Ok(Self {
            client: Some(Box::new(ClientConnection {
                connection,
                _requests: requests,
                flushed,
                done: false,
                error: None,
                conn_handle: Waker::from(Arc::clone(&conn_waker)),
                conn_waker,
                recv_waker: Arc::clone(&recv_waker),
            })),
            recv_handle: Some(Waker::from(recv_waker)),
            send,
            out: Bytes::new(),
            send_closed: false,
            incoming: Incoming::Response(response),
            deframer: Deframer::default(),
            max: config.max_frame_length(),
        })
    }

    /// The server side of an accepted call.
    fn accepted(body: RecvStream, send: SendStream<Bytes>, max: usize) -> Self {
        Self {
            client: None,
            recv_handle: None,
            send,
            out: Bytes::new(),
            send_closed: false,
            incoming: Incoming::Body(body),
            deframer: Deframer::default(),
            max,
        }
    }

    /// Server side: ends the call with `status` in the trailers (once).
    fn finish(&mut self, status: &GrpcStatus) {
        if self.client.is_some() || self.send_closed {
            return;
        }
        self.send_closed = true;
        self.out = Bytes::new();
        let mut trailers = HeaderMap::new();
        status.write_to(&mut trailers);
        // The client may have reset the call already; nothing to tell then.
        let _ = self.send.send_trailers(trailers);
    }

    /// Hands `conn`'s envelopes to h2 within the send capacity it grants.
    /// Ready once all are handed over.
    /// Sets `handed` when it called into h2's send side.
    fn poll_hand_over(
        &mut self,
        cx: &mut Context<'_>,
        conn: &mut Connection,
        handed: &mut bool,
    ) -> Poll<Result<(), TransportError>> {
        loop {
            if self.out.is_empty() {
                if !conn.has_transmit() {
                    return Poll::Ready(Ok(()));
                }
                if self.send_closed {
                    return Poll::Ready(Err(closed()));
                }
                let Some(envelope) = conn.poll_envelope() else {
                    return Poll::Ready(Ok(()));
                };
                self.out = encode_message(&envelope, self.max)?;
                *handed = true;
                self.quiet_sends(true);
                self.send.reserve_capacity(self.out.len());
                self.quiet_sends(false);
            }
            let mut capacity = self.send.capacity();
            while capacity == 0 {
                match ready!(self.send.poll_capacity(cx)) {
                    Some(Ok(_)) => capacity = self.send.capacity(),
                    Some(Err(e)) => return Poll::Ready(Err(e.into())),
                    None => return Poll::Ready(Err(closed())),
                }
            }
            let data = if capacity >= self.out.len() {
                std::mem::take(&mut self.out)
            } else {
                self.out.split_to(capacity)
            };
            *handed = true;
            self.quiet_sends(true);
            let sent = self.send.send_data(data, false);
            self.quiet_sends(false);
            sent?;
        }
    }

    /// Client: h2 wakes its connection when handed data; the caller polls
    /// the connection next, so that wake is dropped.
    fn quiet_sends(&self, quiet: bool) {
        if let Some(client) = &self.client {
            client.conn_waker.set_quiet(quiet);
        }
    }

    /// Feeds whole messages to `conn`, at most [`RECV_BATCH`]; `Ready(true)`
    /// when some were fed, `Ready(false)` at the end of the body.
    fn poll_messages(
        &mut self,
        cx: &mut Context<'_>,
        conn: &mut Connection,
        now: Instant,
    ) -> Poll<Result<bool, TransportError>> {
        let Incoming::Body(body) = &mut self.incoming else {
            return Poll::Ready(Ok(false));
        };
        let mut fed = 0;
        let mut consumed = 0;
        let result = loop {
            match self.deframer.next_message(self.max, &mut consumed) {
                Ok(Some(message)) => {
                    if let Err(e) = conn.handle_body(message, now) {
                        break Poll::Ready(Err(e.into()));
                    }
                    fed += 1;
                    if fed >= RECV_BATCH {
                        break Poll::Ready(Ok(true));
                    }
                    continue;
                }
                Ok(None) => {}
                Err(status) => break Poll::Ready(Err(TransportError::Grpc(status))),
            }
            match body.poll_data(cx) {
                Poll::Ready(Some(Ok(chunk))) => self.deframer.push(chunk),
                Poll::Ready(Some(Err(e))) => break Poll::Ready(Err(e.into())),
                Poll::Ready(None) if fed > 0 => break Poll::Ready(Ok(true)),
                Poll::Ready(None) => {
                    if !self.deframer.is_idle() {
                        break Poll::Ready(Err(TransportError::Grpc(GrpcStatus::new(
                            GrpcCode::Internal,
                            "the gRPC stream ended inside a message",
                        ))));
                    }
                    break Poll::Ready(Ok(false));
                }
                Poll::Pending if fed > 0 => break Poll::Ready(Ok(true)),
                Poll::Pending => break Poll::Pending,
            }
        };
        if consumed > 0 {
            let _ = body.flow_control().release_capacity(consumed);
        }
        if let Poll::Ready(Ok(false)) = result
            && let Incoming::Body(body) = std::mem::replace(&mut self.incoming, Incoming::Done)
        {
            self.incoming = Incoming::Trailers(body);
        }
        result
    }

    /// The incoming half: response headers (client), messages, trailers.
    fn poll_incoming(
        &mut self,
        cx: &mut Context<'_>,
        conn: &mut Connection,
        now: Instant,
    ) -> Poll<Result<Recv, TransportError>> {
        loop {
            match &mut self.incoming {
                Incoming::Response(response) => {
                    let response = ready!(Pin::new(response).poll(cx))?;
                    self.incoming = Self::response_body(response)?;
                }
                Incoming::Body(_) => {
                    if ready!(self.poll_messages(cx, conn, now))? {
                        return Poll::Ready(Ok(Recv::Data));
                    }
                }
                Incoming::Trailers(body) => {
                    let trailers = ready!(body.poll_trailers(cx))?;
                    self.incoming = Incoming::Done;
                    if self.client.is_some() {
                        let status = trailers
                            .as_ref()
                            .and_then(GrpcStatus::from_headers)
                            .unwrap_or_else(|| {
                                GrpcStatus::new(
                                    GrpcCode::Unknown,
                                    "the gRPC call ended without a grpc-status",
                                )
                            });
                        if status.code != GrpcCode::Ok {
                            return Poll::Ready(Err(TransportError::Grpc(status)));
                        }
                    }
                }
                Incoming::Done => return Poll::Ready(Ok(Recv::Eof)),
            }
        }
    }

    /// Client: checks the response headers; a trailers-only response
    /// carries the call's status right there.
    fn response_body(response: Response<RecvStream>) -> Result<Incoming, TransportError> {
        let status = response.status();
        let grpc = response
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|t| t.as_bytes().starts_with(GRPC_CONTENT_TYPE.as_bytes()));
        if status != StatusCode::OK || !grpc {
            let mut status = GrpcStatus::from_http(status);
            if status.code == GrpcCode::Unknown && !grpc {
                status
                    .message
                    .push_str(", not content-type application/grpc");
            }
            return Err(status.into());
        }
        match GrpcStatus::from_headers(response.headers()) {
            Some(status) if status.code == GrpcCode::Ok => Ok(Incoming::Done),
            Some(status) => Err(status.into()),
            None => Ok(Incoming::Body(response.into_body())),
        }
    }
}

impl Drop for GrpcStream {
    fn drop(&mut self) {
        // Server side: a session that ends without closing ends the call
        // well, as a closed stream does.
        self.finish(&GrpcStatus::new(GrpcCode::Ok, ""));
    }
}

impl Transport for GrpcStream {
    fn poll_recv(
        &mut self,
        cx: &mut Context<'_>,
        conn: &mut Connection,
        now: Instant,
    ) -> Poll<Result<Recv, TransportError>> {
        let result = if let Some(client) = &mut self.client {
            // A DATA frame this poll reads wakes the stream: dropped, the
            // stream is polled next.
            client.recv_waker.register(cx.waker());
            client.recv_waker.set_quiet(true);
            client.poll(cx);
            client.recv_waker.set_quiet(false);
            let recv_handle = self
                .recv_handle
                .clone()
                .unwrap_or_else(|| cx.waker().clone());
            self.poll_incoming(&mut Context::from_waker(&recv_handle), conn, now)
        } else {
            self.poll_incoming(cx, conn, now)
        };
        match result {
            Poll::Ready(Err(TransportError::Grpc(ref status))) => {
                // Server side: the client learns why (a message over the
                // limit) as the call's status.
                self.finish(status);
            }
            Poll::Pending => {
                if let Some(client) = &self.client
                    && client.done
                {
                    return Poll::Ready(Err(client.ended()));
                }
            }
            _ => {}
        }
        result
    }

    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        conn: &mut Connection,
    ) -> Poll<Result<(), TransportError>> {
        loop {
            let mut sent = false;
            let handed = self.poll_hand_over(cx, conn, &mut sent);
            let Some(client) = &mut self.client else {
                return handed;
            };
            // Nothing new and all written: no need to run the connection
            // (poll_recv does, for reading).
            if sent || handed.is_pending() || !client.is_flushed() {
                client.poll(cx);
            }
            match handed {
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) if client.is_flushed() => return Poll::Ready(Ok(())),
                _ if client.done => return Poll::Ready(Err(client.ended())),
                Poll::Ready(Ok(())) => return Poll::Pending,
                // Running the connection may have freed capacity.
                Poll::Pending if self.send.capacity() > 0 => {}
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), TransportError>> {
        if self.client.is_none() {
            // Server: the trailers end the call well.
            self.finish(&GrpcStatus::new(GrpcCode::Ok, ""));
            return Poll::Ready(Ok(()));
        }
        if !self.send_closed {
            // Whatever the driver flushed is handed over; END_STREAM ends
            // the request body. A call the server already ended has
            // nothing left to close.
            self.send_closed = true;
            let rest = std::mem::take(&mut self.out);
            self.quiet_sends(true);
            let sent = self.send.send_data(rest, true);
            self.quiet_sends(false);
            if sent.is_err() {
                return Poll::Ready(Ok(()));
            }
        }
        let Some(client) = &mut self.client else {
            return Poll::Ready(Ok(()));
        };
        client.poll(cx);
        if client.is_flushed() || client.done {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }
}

/// A bound gRPC listener: HTTP/2 connections are served in background
/// tasks; [`accept`](Self::accept) yields their SetupStream calls. Dropping
/// it stops accepting and drains the connections (see the module docs).
#[derive(Debug)]
pub(super) struct GrpcServer {
    calls: Mutex<mpsc::Receiver<(GrpcStream, SocketAddr)>>,
    local: SocketAddr,
    stop: watch::Sender<bool>,
}

impl GrpcServer {
    /// Starts serving on `listener`; must run inside a tokio runtime.
    pub(super) fn start(listener: TcpListener, config: &TransportConfig) -> io::Result<Self> {
        let local = listener.local_addr()?;
        let (accepted, calls) = mpsc::channel(ACCEPT_QUEUE);
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(serve(
            listener,
            accepted,
            config.max_frame_length(),
            stopped,
        ));
        Ok(Self {
            calls: Mutex::new(calls),
            local,
            stop,
        })
    }

    /// The bound address.
    pub(super) fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The next SetupStream call and its peer address.
    pub(super) async fn accept(&self) -> io::Result<(GrpcStream, SocketAddr)> {
        self.calls
            .lock()
            .await
            .recv()
            .await
            .ok_or_else(|| io::Error::other("the gRPC server task has ended"))
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Resolves once `stop` turns true or its sender is gone.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Accepts TCP connections until stopped, then lets them drain.
async fn serve(
    listener: TcpListener,
    accepted: mpsc::Sender<(GrpcStream, SocketAddr)>,
    max_message_size: usize,
    mut stop: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            () = stopped(&mut stop) => break,
            tcp = listener.accept() => match tcp {
                Ok((tcp, peer)) => {
                    connections.spawn(serve_connection(
                        tcp,
                        peer,
                        accepted.clone(),
                        max_message_size,
                        stop.clone(),
                    ));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "grpc accept failed");
                    // Out of descriptors and the like: do not spin.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    drop(accepted);
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
}

/// A response with only headers: `grpc_status`, or a plain HTTP status
/// when `grpc_status` is `None`.
fn refuse(
    mut respond: h2::server::SendResponse<Bytes>,
    http_status: StatusCode,
    grpc_status: Option<&GrpcStatus>,
) {
    let mut response = Response::new(());
    *response.status_mut() = http_status;
    if let Some(status) = grpc_status {
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(GRPC_CONTENT_TYPE),
        );
        status.write_to(response.headers_mut());
    }
    let _ = respond.send_response(response, true);
}

/// Answers one incoming request: a SetupStream call becomes a
/// [`GrpcStream`] (its response headers sent); anything else is refused.
fn answer(
    request: Request<RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    max_message_size: usize,
) -> Option<GrpcStream> {
    if request.method() != Method::POST || request.uri().path() != SETUP_STREAM_PATH {
        let status = GrpcStatus::new(
            GrpcCode::Unimplemented,
            format!(
                "{} {} is not served; only POST {SETUP_STREAM_PATH}",
                request.method(),
                request.uri().path()
            ),
        );
        refuse(respond, StatusCode::OK, Some(&status));
        return None;
    }
    let grpc = request
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(GRPC_CONTENT_TYPE.as_bytes()));
    if !grpc {
        refuse(respond, StatusCode::UNSUPPORTED_MEDIA_TYPE, None);
        return None;
    }
    let mut response = Response::new(());
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(GRPC_CONTENT_TYPE),
    );
    let send = respond.send_response(response, false).ok()?;
    Some(GrpcStream::accepted(
        request.into_body(),
        send,
        max_message_size,
    ))
}

/// Serves one HTTP/2 connection: accepts its calls and queues them for
/// [`GrpcServer::accept`]; on stop it sends GOAWAY and lets the calls in
/// flight finish.
async fn serve_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    accepted: mpsc::Sender<(GrpcStream, SocketAddr)>,
    max_message_size: usize,
    mut stop: watch::Receiver<bool>,
) {
    let _ = tcp.set_nodelay(true);
    let handshake = h2::server::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_send_buffer_size(SEND_BUFFER)
        .max_concurrent_streams(MAX_CALLS_PER_CONNECTION)
        .handshake::<_, Bytes>(tcp);
    let mut connection = tokio::select! {
        connection = handshake => match connection {
            Ok(connection) => connection,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "grpc handshake failed");
                return;
            }
        },
        () = stopped(&mut stop) => return,
    };
    // Calls accepted by HTTP/2 while the accept queue is full; at most
    // MAX_CALLS_PER_CONNECTION (live ones count against the HTTP/2 stream
    // limit; ones the client reset do not, so the cap is kept here too).
    let mut waiting: VecDeque<GrpcStream> = VecDeque::new();
    let mut stopping = false;
    // One future for the whole loop: a new one per wake-up would register
    // with the watch channel each time.
    let mut stop = std::pin::pin!(stopped(&mut stop));
    loop {
        tokio::select! {
            () = &mut stop, if !stopping => {
                stopping = true;
                connection.graceful_shutdown();
            }
            permit = accepted.reserve(), if !waiting.is_empty() => match permit {
                Ok(permit) => {
                    if let Some(call) = waiting.pop_front() {
                        permit.send((call, peer));
                    }
                }
                Err(_) => {
                    let gone = GrpcStatus::new(GrpcCode::Unavailable, "the server is shutting down");
                    for mut call in waiting.drain(..) {
                        call.finish(&gone);
                    }
                }
            },
            call = connection.accept() => match call {
                Some(Ok((request, respond))) => {
                    if let Some(mut call) = answer(request, respond, max_message_size) {
                        if waiting.len() < MAX_CALLS_PER_CONNECTION as usize {
                            waiting.push_back(call);
                        } else {
                            // Only calls the client already reset can push
                            // the count past the HTTP/2 stream limit.
                            call.finish(&GrpcStatus::new(
                                GrpcCode::ResourceExhausted,
                                "too many calls on this connection wait to be accepted",
                            ));
                        }
                    }
                }
                Some(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "grpc connection ended");
                    break;
                }
                None => break,
            },
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::connection::{ConnectionConfig, Event, Role};
    use crate::proto::PingRequest;
    use crate::transport::{Driver, Status as DriveStatus};

    async fn server() -> GrpcServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        GrpcServer::start(listener, &TransportConfig::default()).unwrap()
    }

    async fn server_with_limit(limit: usize) -> GrpcServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut config = TransportConfig::default();
        config.set_max_frame_length(limit);
        GrpcServer::start(listener, &config).unwrap()
    }

    fn connection(role: Role) -> Connection {
        Connection::new(role, ConnectionConfig::default(), Instant::now())
    }

    /// Drives `driver` until it stops making progress.
    async fn run_to_end<T: Transport>(
        driver: &mut Driver<T>,
        conn: &mut Connection,
    ) -> Result<DriveStatus, TransportError> {
        loop {
            match driver.drive(conn).await {
                Ok(DriveStatus::Progress) => {}
                other => return other,
            }
        }
    }

    #[tokio::test]
    async fn ping_round_trip_over_setup_stream() {
        let server = server().await;
        let authority = server.local_addr().to_string();
        let serving = tokio::spawn(async move {
            let (stream, _) = server.accept().await.unwrap();
            let mut driver = Driver::new(stream);
            let mut conn = connection(Role::Server);
            // The core answers the ping; run until the client leaves.
            while let Ok(DriveStatus::Progress) = driver.drive(&mut conn).await {}
            conn
        });
        let stream = GrpcStream::connect(&authority, &TransportConfig::default())
            .await
            .unwrap();
        let mut driver = Driver::new(stream);
        let mut conn = connection(Role::Client);
        let id = conn.request(&PingRequest {}, Instant::now()).unwrap();
        let answered = loop {
            driver.drive(&mut conn).await.unwrap();
            if let Some(Event::Reply { request_id, .. }) = conn.poll_event() {
                break request_id;
            }
        };
        assert_eq!(answered, id);
        driver.close(&mut conn).await.unwrap();
        let server_conn = serving.await.unwrap();
        assert!(server_conn.error().is_some(), "the server saw the call end");
    }

    #[tokio::test]
    async fn server_closing_the_call_is_eof_for_the_client() {
        let server = server().await;
        let authority = server.local_addr().to_string();
        let stream = GrpcStream::connect(&authority, &TransportConfig::default())
            .await
            .unwrap();
        let mut client = Driver::new(stream);
        let mut client_conn = connection(Role::Client);
        // The call starts with our first envelope.
        client_conn
            .request(&PingRequest {}, Instant::now())
            .unwrap();
        let drive_client = run_to_end(&mut client, &mut client_conn);
        let close_server = async {
            let (stream, _) = server.accept().await.unwrap();
            let mut driver = Driver::new(stream);
            let mut conn = connection(Role::Server);
            driver.drive(&mut conn).await.unwrap();
            driver.close(&mut conn).await.unwrap();
            driver
        };
        let (ended, _server_driver) = tokio::join!(drive_client, close_server);
        assert!(matches!(ended, Ok(DriveStatus::Closed)), "{ended:?}");
    }

    #[tokio::test]
    async fn oversized_message_is_reported_as_the_call_status() {
        let server = server_with_limit(1024).await;
        let authority = server.local_addr().to_string();
        let serving = tokio::spawn(async move {
            let (stream, _) = server.accept().await.unwrap();
            let mut driver = Driver::new(stream);
            let mut conn = connection(Role::Server);
            run_to_end(&mut driver, &mut conn).await
        });
        let stream = GrpcStream::connect(&authority, &TransportConfig::default())
            .await
            .unwrap();
        let mut driver = Driver::new(stream);
        let mut conn = connection(Role::Client);
        let big = Envelope {
            command: "ping".into(),
            data: Some(crate::proto::google::protobuf::Any {
                type_url: String::new(),
                value: Bytes::from(vec![0u8; 4096]),
            }),
            ..Envelope::default()
        };
        conn.send(big, Instant::now()).unwrap();
        let seen = run_to_end(&mut driver, &mut conn).await;
        match seen {
            Err(TransportError::Grpc(status)) => {
                assert_eq!(status.code(), GrpcCode::OutOfRange, "{status:?}");
                assert!(status.message().contains("1024"), "{status:?}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            serving.await.unwrap(),
            Err(TransportError::Grpc(_))
        ));
    }

    /// Sends one request per size (the collection name carries the bytes;
    /// a query opens no stream, so no per-connection cap applies) and
    /// returns the ids the server saw, in order.
    async fn deliver(sizes: &[usize]) -> (Vec<String>, Vec<String>) {
        let server = server().await;
        let authority = server.local_addr().to_string();
        let serving = tokio::spawn(collect_requests(server, sizes.len()));
        let stream = GrpcStream::connect(&authority, &TransportConfig::default())
            .await
            .unwrap();
        let mut driver = Driver::new(stream);
        let mut conn = connection(Role::Client);
        let mut sent = Vec::new();
        for size in sizes {
            let request = crate::proto::QueryRequest {
                collectionname: "x".repeat(*size),
                ..Default::default()
            };
            sent.push(conn.request(&request, Instant::now()).unwrap());
        }
        driver.flush(&mut conn).await.unwrap();
        let seen = serving.await.unwrap();
        driver.close(&mut conn).await.unwrap();
        (sent, seen)
    }

    /// Accepts one call and returns the ids of the first `expected`
    /// requests on it, in order.
    async fn collect_requests(server: GrpcServer, expected: usize) -> Vec<String> {
        let (stream, _) = server.accept().await.unwrap();
        let mut driver = Driver::new(stream);
        let mut conn = connection(Role::Server);
        let mut seen = Vec::new();
        while seen.len() < expected {
            if !matches!(driver.drive(&mut conn).await, Ok(DriveStatus::Progress)) {
                break;
            }
            while let Some(event) = conn.poll_event() {
                if let Event::Request { envelope, .. } = event {
                    seen.push(envelope.id);
                }
            }
        }
        seen
    }

    #[tokio::test]
    async fn flush_of_many_envelopes_before_any_read_completes() {
        // The connection runs inside the stream's poll methods, so a flush
        // alone must drive it until everything is on the socket (a hang
        // here, caught by the guard, is the regression).
        let sizes = [16; 24];
        let delivered = tokio::time::timeout(Duration::from_secs(60), deliver(&sizes)).await;
        let (sent, seen) = delivered.expect("the flush completed");
        assert_eq!(sent, seen);
    }

    #[tokio::test]
    async fn flush_of_more_than_the_send_buffer_before_any_read_completes() {
        // Three times what h2 buffers per call: the flush waits for
        // capacity, which only running the connection frees.
        let sizes = [256 * 1024; 3 * SEND_BUFFER / (256 * 1024)];
        let delivered = tokio::time::timeout(Duration::from_secs(60), deliver(&sizes)).await;
        let (sent, seen) = delivered.expect("the flush completed");
        assert_eq!(sent, seen);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(12))]

        #[test]
        fn envelopes_of_any_size_arrive_once_and_in_order(
            sizes in proptest::collection::vec(0usize..300_000, 1..12),
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let (sent, seen) = runtime.block_on(deliver(&sizes));
            proptest::prop_assert_eq!(sent, seen);
        }
    }

    // ----- raw HTTP/2 peers: what a gRPC implementation may send --------

    /// A raw h2 call to `path` on `addr`; the connection runs in a task.
    async fn raw_call(
        addr: SocketAddr,
        path: &str,
    ) -> (
        h2::client::SendRequest<Bytes>,
        h2::client::ResponseFuture,
        SendStream<Bytes>,
    ) {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (mut requests, connection) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let request = Request::builder()
            .method(Method::POST)
            .uri(format!("http://{addr}{path}"))
            .header(header::CONTENT_TYPE, GRPC_CONTENT_TYPE)
            .header(header::TE, "trailers")
            .body(())
            .unwrap();
        let (response, send) = requests.send_request(request, false).unwrap();
        (requests, response, send)
    }

    /// The status a raw call ended with: from a trailers-only response,
    /// or the trailers after the (ignored) body.
    async fn raw_status(response: h2::client::ResponseFuture) -> GrpcStatus {
        raw_reply(response).await.1
    }

    /// The envelopes a raw call got, and the status that ended it.
    async fn raw_reply(response: h2::client::ResponseFuture) -> (Vec<Envelope>, GrpcStatus) {
        let response = response.await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        if let Some(status) = GrpcStatus::from_headers(response.headers()) {
            return (Vec::new(), status);
        }
        let mut body = response.into_body();
        let mut deframer = Deframer::default();
        let mut envelopes = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.unwrap();
            let _ = body.flow_control().release_capacity(chunk.len());
            deframer.push(chunk);
            while let Some(message) = deframer.next_message(usize::MAX, &mut 0).unwrap() {
                envelopes.push(Envelope::decode(message).unwrap());
            }
        }
        let trailers = body.trailers().await.unwrap().expect("trailers");
        let status = GrpcStatus::from_headers(&trailers).expect("a grpc-status");
        (envelopes, status)
    }

    /// Sends `bytes` as the DATA of a raw SetupStream call to a session on
    /// `server`; what the session ended with, and what the call got.
    async fn session_fed(
        server: GrpcServer,
        bytes: &'static [u8],
    ) -> (
        Result<DriveStatus, TransportError>,
        Vec<Envelope>,
        GrpcStatus,
    ) {
        let addr = server.local_addr();
        let serving = tokio::spawn(async move {
            let (stream, _) = server.accept().await.unwrap();
            let mut driver = Driver::new(stream);
            let mut conn = connection(Role::Server);
            run_to_end(&mut driver, &mut conn).await
        });
        let (_requests, response, mut send) = raw_call(addr, SETUP_STREAM_PATH).await;
        send.send_data(Bytes::from_static(bytes), false).unwrap();
        let served = tokio::time::timeout(Duration::from_secs(10), serving)
            .await
            .expect("the session ended without more input")
            .unwrap();
        let (envelopes, status) = raw_reply(response).await;
        (served, envelopes, status)
    }

    /// `sizes` requests stamped by a client connection, as gRPC messages.
    fn stamped_messages(sizes: &[usize]) -> (Vec<String>, Vec<Bytes>) {
        let mut conn = connection(Role::Client);
        let mut ids = Vec::new();
        let mut messages = Vec::new();
        for size in sizes {
            let request = crate::proto::QueryRequest {
                collectionname: "y".repeat(*size),
                ..Default::default()
            };
            ids.push(conn.request(&request, Instant::now()).unwrap());
            let envelope = conn.poll_envelope().unwrap();
            messages.push(encode_message(&envelope, usize::MAX).unwrap());
        }
        (ids, messages)
    }

    /// `wire` cut at `cuts` (positions taken modulo its length).
    fn cut(wire: &Bytes, cuts: &[proptest::sample::Index]) -> Vec<Bytes> {
        let mut at: Vec<usize> = cuts.iter().map(|c| c.index(wire.len() + 1)).collect();
        at.push(0);
        at.push(wire.len());
        at.sort_unstable();
        at.dedup();
        at.windows(2).map(|w| wire.slice(w[0]..w[1])).collect()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        #[test]
        fn deframer_finds_every_message_however_the_chunks_fall(
            sizes in proptest::collection::vec(0usize..3_000, 1..16),
            cuts in proptest::collection::vec(proptest::prelude::any::<proptest::sample::Index>(), 0..40),
        ) {
            let (_, messages) = stamped_messages(&sizes);
            let wire: Bytes = messages.concat().into();
            let mut deframer = Deframer::default();
            let mut found = Vec::new();
            let mut consumed = 0;
            for chunk in cut(&wire, &cuts) {
                deframer.push(chunk);
                while let Some(message) = deframer.next_message(usize::MAX, &mut consumed).unwrap() {
                    found.push(message);
                }
                proptest::prop_assert!(deframer.chunk.is_empty());
            }
            proptest::prop_assert!(deframer.is_idle());
            proptest::prop_assert_eq!(consumed, wire.len());
            let bodies: Vec<Bytes> = messages.iter().map(|m| m.slice(MESSAGE_HEADER..)).collect();
            proptest::prop_assert_eq!(found, bodies);
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(12))]

        #[test]
        fn messages_split_across_and_sharing_data_frames_arrive_in_order(
            sizes in proptest::collection::vec(0usize..40_000, 1..10),
            cuts in proptest::collection::vec(proptest::prelude::any::<proptest::sample::Index>(), 0..12),
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let (sent, seen) = runtime.block_on(async {
                let server = server().await;
                let addr = server.local_addr();
                let serving = tokio::spawn(collect_requests(server, sizes.len()));
                let (ids, messages) = stamped_messages(&sizes);
                let wire: Bytes = messages.concat().into();
                let (_requests, _response, mut send) = raw_call(addr, SETUP_STREAM_PATH).await;
                // One DATA frame per piece (h2 splits those over its frame size).
                for piece in cut(&wire, &cuts) {
                    send.send_data(piece, false).unwrap();
                }
                let seen = tokio::time::timeout(Duration::from_secs(60), serving)
                    .await
                    .expect("every message arrived")
                    .unwrap();
                send.send_data(Bytes::new(), true).unwrap();
                (ids, seen)
            });
            proptest::prop_assert_eq!(sent, seen);
        }
    }

    #[tokio::test]
    async fn compressed_message_is_refused_with_a_status() {
        let (served, _, status) = session_fed(server().await, &[1, 0, 0, 0, 3, 1, 2, 3]).await;
        match served {
            Err(TransportError::Grpc(status)) => {
                assert_eq!(status.code(), GrpcCode::Internal, "{status:?}");
                assert!(status.message().contains("compressed"), "{status:?}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(status.code(), GrpcCode::Internal, "{status:?}");
        assert!(status.message().contains("compressed"), "{status:?}");
    }

    #[test]
    fn quiet_waker_records_every_wake_and_forwards_only_loud_ones() {
        // The task: a QuietWaker too, whose own record counts its wakes.
        let task = Arc::new(QuietWaker::default());
        let waker = Arc::new(QuietWaker::default());
        waker.register(&Waker::from(Arc::clone(&task)));
        let handle = Waker::from(Arc::clone(&waker));
        // Never polled yet: the first poll must run.
        assert!(waker.take_woken());
        assert!(!waker.take_woken(), "the record is cleared");
        assert!(task.take_woken());

        waker.set_quiet(true);
        handle.wake_by_ref();
        assert!(waker.take_woken(), "a quiet wake is recorded");
        assert!(!task.take_woken(), "but not forwarded");

        waker.set_quiet(false);
        handle.wake_by_ref();
        assert!(task.take_woken(), "a loud wake is forwarded");
        assert!(waker.take_woken());
        assert!(!waker.take_woken());
    }

    #[test]
    fn deframer_refuses_a_compressed_flag() {
        let mut deframer = Deframer::default();
        deframer.push(Bytes::from_static(&[1, 0, 0, 0, 0]));
        let err = deframer.next_message(1024, &mut 0).unwrap_err();
        assert_eq!(err.code(), GrpcCode::Internal);
    }

    #[tokio::test]
    async fn size_limit_is_enforced_from_the_header_before_the_body() {
        // A header announcing 1 MiB; none of the body ever follows: refused
        // without waiting for it (`session_fed` allows 10 s).
        let (served, _, status) =
            session_fed(server_with_limit(1024).await, &[0, 0, 0x10, 0, 0]).await;
        match served {
            Err(TransportError::Grpc(status)) => {
                assert_eq!(status.code(), GrpcCode::OutOfRange, "{status:?}");
                assert!(status.message().contains("1048576"), "{status:?}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(status.code(), GrpcCode::OutOfRange, "{status:?}");
        assert!(status.message().contains("1024"), "{status:?}");
    }

    #[tokio::test]
    async fn an_undecodable_envelope_ends_the_session_with_an_error_notice() {
        // A well-formed gRPC message whose body is no Envelope: handled as a
        // frame body off a byte stream is, connection-fatal and explained.
        let (served, envelopes, _) =
            session_fed(server().await, &[0, 0, 0, 0, 3, 0xff, 0xff, 0xff]).await;
        match served {
            Err(TransportError::Protocol(crate::Error::Envelope(e))) => {
                assert!(
                    matches!(e, crate::envelope::EnvelopeError::Decode(_)),
                    "{e:?}"
                );
            }
            other => panic!("{other:?}"),
        }
        let commands: Vec<&str> = envelopes.iter().map(|e| e.command.as_str()).collect();
        assert_eq!(commands, ["error"], "{envelopes:?}");
        assert!(envelopes[0].rid.is_empty());
    }

    #[test]
    fn deframer_checks_the_limit_from_a_header_split_across_chunks() {
        let mut deframer = Deframer::default();
        let mut consumed = 0;
        deframer.push(Bytes::from_static(&[0, 0, 0]));
        assert_eq!(deframer.next_message(1024, &mut consumed), Ok(None));
        deframer.push(Bytes::from_static(&[0x04, 0x01]));
        let err = deframer.next_message(1024, &mut consumed).unwrap_err();
        assert_eq!(err.code(), GrpcCode::OutOfRange);
        assert!(err.message().contains("1025"), "{err:?}");
        // Exactly the limit is fine.
        let mut deframer = Deframer::default();
        deframer.push(Bytes::from_static(&[0, 0, 0, 0x04, 0x00]));
        assert_eq!(deframer.next_message(1024, &mut 0), Ok(None));
    }

    #[tokio::test]
    async fn unknown_path_is_unimplemented() {
        let server = server().await;
        let addr = server.local_addr();
        let (_requests, response, _send) = raw_call(addr, "/openiap.FlowService/Signin").await;
        let response = response.await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.body().is_end_stream(), "a trailers-only response");
        let status = GrpcStatus::from_headers(response.headers()).expect("a grpc-status");
        assert_eq!(status.code(), GrpcCode::Unimplemented, "{status:?}");
        assert!(status.message().contains("Signin"), "{status:?}");
        // Nothing reached the accept queue.
        assert!(
            tokio::time::timeout(Duration::from_millis(100), server.accept())
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn calls_waiting_on_a_full_accept_queue_are_capped() {
        // Nobody accepts: fill the accept queue with one call per connection.
        let server = server().await;
        let addr = server.local_addr();
        let mut queued = Vec::new();
        for _ in 0..ACCEPT_QUEUE {
            queued.push(raw_call(addr, SETUP_STREAM_PATH).await);
        }
        while server.calls.lock().await.len() < ACCEPT_QUEUE {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // One more connection: its calls wait in its own task.
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (requests, connection) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let call = |requests: h2::client::SendRequest<Bytes>| async move {
            let mut requests = requests.ready().await.unwrap();
            let request = Request::builder()
                .method(Method::POST)
                .uri(format!("http://{addr}{SETUP_STREAM_PATH}"))
                .header(header::CONTENT_TYPE, GRPC_CONTENT_TYPE)
                .body(())
                .unwrap();
            requests.send_request(request, false).unwrap()
        };
        let mut waiting = Vec::new();
        for _ in 0..MAX_CALLS_PER_CONNECTION {
            waiting.push(call(requests.clone()).await);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        // A reset call frees an HTTP/2 stream but still waits.
        let (_, mut reset) = waiting.pop().unwrap();
        reset.send_reset(h2::Reason::CANCEL);
        drop(reset);
        let (response, _send) = call(requests.clone()).await;
        let status = tokio::time::timeout(Duration::from_secs(10), raw_status(response))
            .await
            .expect("the extra call was answered");
        assert_eq!(status.code(), GrpcCode::ResourceExhausted, "{status:?}");
        // The queued calls are still there to be accepted.
        assert_eq!(server.calls.lock().await.len(), ACCEPT_QUEUE);
    }

    #[tokio::test]
    async fn error_status_in_the_trailers_is_a_typed_error() {
        // A raw h2 server that ends the call with INVALID_ARGUMENT.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority = listener.local_addr().unwrap().to_string();
        let serving = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut connection = h2::server::handshake(tcp).await.unwrap();
            let (request, mut respond) = connection.accept().await.unwrap().unwrap();
            assert_eq!(request.uri().path(), SETUP_STREAM_PATH);
            assert_eq!(request.headers()[header::TE], "trailers");
            let mut response = Response::new(());
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(GRPC_CONTENT_TYPE),
            );
            let mut send = respond.send_response(response, false).unwrap();
            let mut trailers = HeaderMap::new();
            GrpcStatus::new(GrpcCode::InvalidArgument, "bad thing: 100% ✓").write_to(&mut trailers);
            send.send_trailers(trailers).unwrap();
            // Run the connection until the client leaves.
            while connection.accept().await.is_some() {}
        });
        let stream = GrpcStream::connect(&authority, &TransportConfig::default())
            .await
            .unwrap();
        let mut driver = Driver::new(stream);
        let mut conn = connection(Role::Client);
        match run_to_end(&mut driver, &mut conn).await {
            Err(TransportError::Grpc(status)) => {
                assert_eq!(status.code(), GrpcCode::InvalidArgument, "{status:?}");
                assert_eq!(status.message(), "bad thing: 100% ✓");
            }
            other => panic!("{other:?}"),
        }
        drop(driver);
        serving.await.unwrap();
    }

    #[test]
    fn grpc_message_text_survives_percent_encoding() {
        let text = "plain ascii, 100% and ünïcode\nnewline";
        let encoded = percent_encode(text);
        assert!(
            encoded.bytes().all(|b| (0x20..=0x7e).contains(&b)),
            "{encoded}"
        );
        assert_eq!(percent_decode(encoded.as_bytes()), text);
        assert_eq!(percent_decode(b"50%"), "50%");
        assert_eq!(GrpcCode::from_u32(11), GrpcCode::OutOfRange);
        assert_eq!(GrpcCode::from_u32(99), GrpcCode::Unknown);
        assert_eq!(GrpcCode::Unauthenticated.as_u32(), 16);
    }

    #[test]
    fn error_text_includes_the_causes() {
        #[derive(Debug, thiserror::Error)]
        #[error("transport error")]
        struct Outer(#[source] io::Error);
        let chained = Outer(io::Error::other("refused"));
        assert_eq!(with_sources(&chained), "transport error: refused");
    }
}
