//! One peer's protocol state, sans-IO: [`Connection`].
//!
//! A `Connection` ties framing, seq reordering, command validation, request
//! matching and file transfers together, and does no IO (the quinn-proto
//! model). Its owner moves bytes and time in and out:
//!
//! ```text
//!            handle_bytes / handle_envelope / handle_eof / handle_timeout(now)
//!   socket ───────────────────────────────────────────────────────────────► ┌────────────┐
//!                                                                            │ Connection │ ──► poll_event
//!   socket ◄──────────────────────────── poll_transmit / poll_envelope ──── └────────────┘ ◄── send, request,
//!                                                                              │  poll_timeout      reply, upload
//! ```
//!
//! Inside, received envelopes flow
//! `FrameDecoder → EnvelopeView → ReorderBuffer → dispatch`. The view
//! borrows the frame: an envelope in seq order is dispatched from it without
//! an owned [`Envelope`], and a `stream` chunk's data is sliced out of the
//! frame straight into [`Event::StreamChunk`]. An owned `Envelope` is built
//! only for an envelope that must wait for a gap, or one an event carries:
//!
//! | received, in seq order        | what happens                                                  |
//! |-------------------------------|---------------------------------------------------------------|
//! | no command or no id           | [`Event::Rejected`], `error` reply when it was a request      |
//! | `ping`                        | `pong` queued (rid = ping id) when enabled, [`Event::Ping`]    |
//! | `pong` for a pending ping     | [`Event::Reply`]; a keepalive pong is only noted as traffic    |
//! | `beginstream`/`stream`/`endstream` | [`StreamTable`]: `Stream*` events, [`Event::StreamFailed`] once per failed transfer |
//! | `error`                       | fails the rid's transfer, then [`Event::PeerError`] for a pending request |
//! | rid of a pending request      | [`Event::Reply`]                                              |
//! | anything else                 | payload decoded: [`Event::Request`], or [`Event::Rejected`] and an `error` reply |
//!
//! Sending stamps `seq` in send order (from 0, wrapping to 0 after
//! `i32::MAX`, as [`seq_successor`]) and gives an envelope with an empty `id`
//! a fresh one. A request (rid empty, command of kind
//! [`CommandKind::Request`]) is remembered until its reply, its `error`, its
//! timeout or the end of the connection, and each of those reports it once.
//!
//! A connection-fatal error (bad framing, a seq violation, a silent peer, a
//! frame not completed within the [frame timeout](ConnectionConfig::frame_timeout))
//! queues one `error` envelope telling the peer why, fails every pending
//! request and open transfer, and from then on every call returns that same
//! error; [`poll_transmit`](Connection::poll_transmit) still hands out what
//! was queued, so the owner can flush the explanation before closing.
//!
//! # Example
//!
//! ```
//! use std::time::Instant;
//! use bytes::BytesMut;
//! use openiap_wire::connection::{Connection, ConnectionConfig, Event, Role};
//! use openiap_wire::proto::{SigninRequest, SigninResponse};
//!
//! let now = Instant::now();
//! let mut client = Connection::new(Role::Client, ConnectionConfig::default(), now);
//! let mut server = Connection::new(Role::Server, ConnectionConfig::default(), now);
//!
//! let id = client.request(&SigninRequest { username: "dev".into(), ..Default::default() }, now)?;
//! let mut wire = BytesMut::new();
//! client.poll_transmit(&mut wire);
//! server.handle_bytes(&wire, now)?;
//!
//! let Some(Event::Request { envelope, .. }) = server.poll_event() else { panic!() };
//! server.reply::<SigninRequest>(&envelope, &SigninResponse { jwt: "t".into(), ..Default::default() }, now)?;
//! wire.clear();
//! server.poll_transmit(&mut wire);
//! client.handle_bytes(&wire, now)?;
//!
//! let Some(Event::Reply { request_id, .. }) = client.poll_event() else { panic!() };
//! assert_eq!(request_id, id);
//! # Ok::<(), openiap_wire::Error>(())
//! ```

mod config;
mod event;
mod pending;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

pub use self::config::{
    ConnectionConfig, DEFAULT_KEEPALIVE_INTERVAL, DEFAULT_MAX_PENDING_REQUESTS,
    DEFAULT_REQUEST_TIMEOUT, Role,
};
pub use self::event::Event;
use self::pending::PendingRequests;
use crate::Error;
use crate::command::{CommandError, CommandKind, Validation, lookup};
use crate::envelope::{
    Request, WireMessage, decode_envelope, encoded_len, error_reply, pack, pack_any, payload,
    reply, unpack, validate_header,
};
use crate::frame::{
    FrameDecoder, FrameError, LENGTH_PREFIX_LEN, encode_chunk_frame_head, encode_frame,
    encode_frame_head, encode_packed_frame, packed_body_len,
};
use crate::proto::{
    BeginStream, EndStream, Envelope, ErrorResponse, PingRequest, Stat, Stream, UploadRequest,
};
use crate::reorder::ReorderBuffer;
pub use crate::reorder::seq_successor;
use crate::stream::{StreamSender, StreamState, StreamTable, sha256};
use crate::view::EnvelopeView;

/// [`Connection::poll_transmit`] stops adding frames once this many bytes
/// are waiting in its buffer: large enough for one write to carry many small
/// envelopes, small enough that a queued transfer is never encoded at once.
pub const TRANSMIT_BATCH: usize = 256 * 1024;

/// An envelope's payload (`data.value`) at least this long is handed out by
/// [`Connection::poll_transmit_vectored`] instead of being copied into the
/// frame bytes; a smaller one is cheaper to copy. (File chunks queued by
/// [`Connection::send_chunk`] or [`Connection::send_stream`] are handed
/// out whatever their size.)
pub const VECTORED_PAYLOAD: usize = 16 * 1024;

/// After this long without input, [`Connection::handle_timeout`] gives back
/// a receive buffer grown past two read steps (a large frame came in), as
/// [`FrameDecoder::shrink_idle`] describes: while traffic flows the buffer
/// is reused frame after frame, and an idle connection keeps at most two
/// read steps ([`FrameConfig::read_step`](crate::frame::FrameConfig::read_step),
/// 8 KiB by default).
pub const IDLE_BUFFER_RELEASE: Duration = Duration::from_secs(1);

/// One peer's protocol state. See the [module docs](self).
#[derive(Debug)]
pub struct Connection {
    role: Role,
    config: ConnectionConfig,
    decoder: FrameDecoder,
    /// `None` stands for the envelope being dispatched from its frame (see
    /// `accept_frame`) and never stays in the buffer; an envelope that must
    /// wait is boxed, so that the in-order path moves one word, not a whole
    /// `Envelope`, in and out of the buffer.
    reorder: ReorderBuffer<Option<Box<Envelope>>>,
    streams: StreamTable,
    next_seq: i32,
    next_id: u64,
    pending: PendingRequests,
    events: VecDeque<Event>,
    transmit: VecDeque<Outgoing>,
    last_recv: Instant,
    last_send: Instant,
    /// When the first byte of the partial frame in the decoder arrived;
    /// `None` when no partial frame is buffered.
    partial_since: Option<Instant>,
    error: Option<Error>,
}

impl Connection {
    /// A fresh connection; `now` starts the keepalive and idle clocks.
    pub fn new(role: Role, config: ConnectionConfig, now: Instant) -> Self {
        Self {
            role,
            decoder: FrameDecoder::new(config.frame().clone()),
            reorder: ReorderBuffer::new(config.reorder().clone()),
            streams: StreamTable::new(config.stream().clone()),
            config,
            next_seq: 0,
            next_id: 0,
            pending: PendingRequests::default(),
            events: VecDeque::new(),
            transmit: VecDeque::new(),
            last_recv: now,
            last_send: now,
            partial_since: None,
            error: None,
        }
    }

    /// This end's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The connection's limits and timers.
    pub fn config(&self) -> &ConnectionConfig {
        &self.config
    }

    /// The error that ended the connection, if one did.
    pub fn error(&self) -> Option<&Error> {
        self.error.as_ref()
    }

    /// Requests awaiting their reply.
    pub fn pending_requests(&self) -> usize {
        self.pending.len()
    }

    /// Transfers being received right now.
    pub fn open_streams(&self) -> usize {
        self.streams.open_streams()
    }

    // ----- input -------------------------------------------------------

    /// Feeds bytes received on a framed transport (TCP, pipe, WebSocket),
    /// in chunks of any size.
    ///
    /// # Errors
    ///
    /// A connection-fatal error (framing, envelope decoding, seq); the same
    /// error again on every later call.
    pub fn handle_bytes(&mut self, data: &[u8], now: Instant) -> Result<(), Error> {
        self.check()?;
        self.decoder.push(data);
        self.drain_frames(now)
    }

    /// Like [`handle_bytes`](Self::handle_bytes), for bytes that arrive in a
    /// [`Bytes`] (a WebSocket message): when nothing is buffered, the message
    /// becomes the receive buffer and its frames share it, with no copy.
    ///
    /// # Errors
    ///
    /// As [`handle_bytes`](Self::handle_bytes).
    pub fn handle_message(&mut self, data: Bytes, now: Instant) -> Result<(), Error> {
        self.check()?;
        self.decoder.push_bytes(data);
        self.drain_frames(now)
    }

    /// Spare room of the receive buffer, for reading from a socket without
    /// an extra copy; call [`handle_read`](Self::handle_read) after filling it.
    pub fn read_buf(&mut self) -> &mut BytesMut {
        self.decoder.read_buf()
    }

    /// How many bytes the next read into [`read_buf`](Self::read_buf)
    /// should ask for while a large frame is being received, `None` when
    /// any amount will do: see [`FrameDecoder::large_read`].
    pub fn large_read(&self) -> Option<usize> {
        self.decoder.large_read()
    }

    /// Processes what was read into [`read_buf`](Self::read_buf).
    ///
    /// # Errors
    ///
    /// As [`handle_bytes`](Self::handle_bytes).
    pub fn handle_read(&mut self, now: Instant) -> Result<(), Error> {
        self.check()?;
        self.drain_frames(now)
    }

    /// Feeds one whole envelope from a transport without framing (gRPC).
    /// Its seq is checked like any other.
    ///
    /// # Errors
    ///
    /// A connection-fatal seq error; the same error again on later calls.
    pub fn handle_envelope(&mut self, envelope: Envelope, now: Instant) -> Result<(), Error> {
        self.check()?;
        self.last_recv = now;
        let size = encoded_len(&envelope);
        let seq = envelope.seq;
        self.accept(envelope, seq, size, now)
    }

    /// Feeds one whole envelope body from a transport that frames messages
    /// itself (one gRPC message): the same path as a frame off a byte
    /// stream, through the borrowed [`EnvelopeView`], so an envelope that
    /// arrives in seq order is dispatched without an owned decode.
    ///
    /// # Errors
    ///
    /// As [`handle_bytes`](Self::handle_bytes), without the framing errors:
    /// an undecodable envelope or a seq error ends the connection.
    pub fn handle_body(&mut self, body: Bytes, now: Instant) -> Result<(), Error> {
        self.check()?;
        self.last_recv = now;
        let size = body.len();
        self.accept_frame(&body, size, now)
    }

    /// The peer closed its side. Pending requests fail with
    /// [`Error::Closed`] and open transfers with `Aborted`.
    ///
    /// # Errors
    ///
    /// [`FrameError::Truncated`] when
    /// a frame was cut off, or the error that ended the connection earlier.
    pub fn handle_eof(&mut self) -> Result<(), Error> {
        self.check()?;
        let error = match self.decoder.finish() {
            Ok(()) => Error::Closed,
            Err(e) => Error::Frame(e),
        };
        let returned = error.clone();
        self.shut_down(error);
        match returned {
            Error::Closed => Ok(()),
            e => Err(e),
        }
    }

    /// The earliest instant at which [`handle_timeout`](Self::handle_timeout)
    /// has work: a gap timeout, a request deadline, a keepalive ping, the
    /// idle limit, the frame timeout of a partial frame, the release of a
    /// large receive buffer ([`IDLE_BUFFER_RELEASE`]).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.error.is_some() {
            return None;
        }
        let keepalive = self
            .config
            .keepalive_interval()
            .and_then(|i| self.last_send.checked_add(i));
        let idle = self
            .config
            .idle_timeout()
            .and_then(|i| self.last_recv.checked_add(i));
        [
            self.reorder.poll_timeout(),
            self.pending.next_deadline(),
            keepalive,
            idle,
            self.frame_deadline(),
            self.buffer_release(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Runs every timer due at `now`.
    ///
    /// # Errors
    ///
    /// [`Error::PeerSilent`], [`Error::FrameTimedOut`] or a gap timeout (all
    /// connection-fatal), or the error that ended the connection earlier.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), Error> {
        self.check()?;
        if let Err(e) = self.reorder.handle_timeout(now) {
            return Err(self.fail(e.into()));
        }
        if let (Some(at), Some(limit)) = (self.frame_deadline(), self.config.frame_timeout())
            && now >= at
        {
            let buffered = self.decoder.buffered();
            return Err(self.fail(Error::FrameTimedOut { buffered, limit }));
        }
        if self.buffer_release().is_some_and(|at| now >= at) {
            self.decoder.shrink_idle();
        }
        if let Some(limit) = self.config.idle_timeout() {
            let silence = now.saturating_duration_since(self.last_recv);
            if silence >= limit {
                return Err(self.fail(Error::PeerSilent { silence, limit }));
            }
        }
        let after = self.config.request_timeout().unwrap_or(Duration::ZERO);
        for (id, command) in self.pending.expire(now) {
            // A download that timed out must not leave its stream open.
            let _ = self.streams.abort(&id);
            self.events.push_back(Event::RequestFailed {
                request_id: id.clone(),
                error: Error::RequestTimedOut {
                    id,
                    command: command.to_owned(),
                    after,
                },
                request_command: command,
            });
        }
        if let Some(interval) = self.config.keepalive_interval()
            && now.saturating_duration_since(self.last_send) >= interval
        {
            // A keepalive expects no answer (the Node peer never sends one),
            // so it is not a pending request.
            let mut ping = pack(&PingRequest {});
            ping.id = self.fresh_id();
            self.queue(ping, now);
        }
        Ok(())
    }

    // ----- output ------------------------------------------------------

    /// The next event, in the peer's seq order.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Encodes queued envelopes as frames into `dst` (one contiguous buffer)
    /// until it holds [`TRANSMIT_BATCH`] bytes or the queue is empty, and
    /// returns how many were added.
    ///
    /// A chunk queued by [`send_chunk`](Self::send_chunk) or
    /// [`send_stream`](Self::send_stream) is encoded here, its payload copied
    /// once, straight into `dst`.
    pub fn poll_transmit(&mut self, dst: &mut BytesMut) -> usize {
        let mut frames = 0;
        while dst.len() < TRANSMIT_BATCH {
            let Some(outgoing) = self.transmit.pop_front() else {
                break;
            };
            // `send` and `send_chunk` checked the size against the same
            // limit, so this cannot fail; an unlimited bound keeps it
            // infallible.
            if outgoing.encode(dst).is_ok() {
                frames += 1;
            }
        }
        frames
    }

    /// Like [`poll_transmit`](Self::poll_transmit), for a transport that
    /// can write vectored: stops at the first queued file chunk, or
    /// envelope with a payload of at least [`VECTORED_PAYLOAD`] bytes,
    /// writes its frame into `dst` up to the payload and returns the
    /// payload, which the transport writes right after `dst` (then calls
    /// again). The payload is never copied. Returns `None` once `dst` holds
    /// only whole frames (the queue is empty or `dst` reached
    /// [`TRANSMIT_BATCH`]).
    ///
    /// A frame with `jwt`, `traceid` or `spanid` (fields after the payload)
    /// is written whole into `dst`.
    ///
    /// ```
    /// use std::time::Instant;
    /// use bytes::{Bytes, BytesMut};
    /// use openiap_wire::connection::{Connection, ConnectionConfig, Role};
    ///
    /// let now = Instant::now();
    /// let mut a = Connection::new(Role::Server, ConnectionConfig::default(), now);
    /// let mut b = Connection::new(Role::Server, ConnectionConfig::default(), now);
    /// let file = Bytes::from(vec![7; 300_000]);
    /// a.send_stream("u1", file.clone(), true, None, now)?;
    /// b.send_stream("u1", file, true, None, now)?;
    ///
    /// let mut vectored = Vec::new();
    /// loop {
    ///     let mut head = BytesMut::new();
    ///     let data = a.poll_transmit_vectored(&mut head);
    ///     vectored.extend_from_slice(&head); // a writev of head and data
    ///     match data {
    ///         Some(data) => vectored.extend_from_slice(&data),
    ///         None if head.is_empty() => break,
    ///         None => {}
    ///     }
    /// }
    /// let mut copied = Vec::new();
    /// while b.has_transmit() {
    ///     let mut batch = BytesMut::new();
    ///     b.poll_transmit(&mut batch);
    ///     copied.extend_from_slice(&batch);
    /// }
    /// assert!(vectored == copied);
    /// # Ok::<(), openiap_wire::Error>(())
    /// ```
    pub fn poll_transmit_vectored(&mut self, dst: &mut BytesMut) -> Option<Bytes> {
        while dst.len() < TRANSMIT_BATCH {
            let outgoing = self.transmit.pop_front()?;
            // As `poll_transmit`: the size was checked when queued, so an
            // unlimited bound keeps these infallible.
            let head = match &outgoing {
                Outgoing::Chunk { header, chunk } => {
                    encode_chunk_frame_head(header, chunk, usize::MAX, dst)
                }
                Outgoing::Envelope(envelope)
                    if envelope
                        .data
                        .as_ref()
                        .is_some_and(|any| any.value.len() >= VECTORED_PAYLOAD) =>
                {
                    encode_frame_head(envelope, usize::MAX, dst)
                }
                Outgoing::Envelope(_) => Ok(false),
            };
            if let Ok(true) = head {
                return Some(outgoing.into_payload());
            }
            let _ = outgoing.encode(dst);
        }
        None
    }

    /// The next queued envelope, for transports without framing (gRPC).
    pub fn poll_envelope(&mut self) -> Option<Envelope> {
        self.transmit.pop_front().map(Outgoing::into_envelope)
    }

    /// Whether envelopes are waiting to be transmitted.
    pub fn has_transmit(&self) -> bool {
        !self.transmit.is_empty()
    }

    /// How many envelopes are queued and not yet handed to the transport.
    /// Every received request can queue an answer, so a transport should
    /// stop reading while this is high (see
    /// [`Driver`](crate::transport::Driver)); otherwise a peer that sends
    /// without reading makes the queue grow without bound.
    pub fn queued_transmit(&self) -> usize {
        self.transmit.len()
    }

    // ----- sending -----------------------------------------------------

    /// Queues `envelope`: stamps its seq, gives it an id when it has none,
    /// and remembers it as pending when it is a request (rid empty, a
    /// command of kind [`CommandKind::Request`]). Returns the id.
    ///
    /// A client that sends `download` registers the transfer that will
    /// answer it.
    ///
    /// # Errors
    ///
    /// [`Error::TooLarge`] over the max frame length,
    /// [`Error::TooManyPending`], [`Error::IdInUse`], a stream usage error
    /// for a `download` that cannot be tracked, or the error that ended the
    /// connection. Nothing is queued on error.
    pub fn send(&mut self, mut envelope: Envelope, now: Instant) -> Result<String, Error> {
        self.admit(&mut envelope, now)?;
        let id = envelope.id.clone();
        self.queue(envelope, now);
        Ok(id)
    }

    /// [`send`](Self::send) for a caller that does not need the id back
    /// (an answer): the same checks, without copying the id.
    fn send_answer(&mut self, mut envelope: Envelope, now: Instant) -> Result<(), Error> {
        self.admit(&mut envelope, now)?;
        self.queue(envelope, now);
        Ok(())
    }

    /// Everything [`send`](Self::send) does before queueing: the id, the
    /// size check, the pending request and a download's transfer.
    fn admit(&mut self, envelope: &mut Envelope, now: Instant) -> Result<(), Error> {
        self.check()?;
        if envelope.id.is_empty() {
            envelope.id = self.fresh_id();
        }
        self.check_frame_len(encoded_len(envelope))?;
        let request = envelope
            .rid
            .is_empty()
            .then(|| lookup(&envelope.command))
            .flatten()
            .filter(|spec| spec.kind == CommandKind::Request);
        if let Some(spec) = request {
            self.add_pending(&envelope.id, spec.command, now)?;
            if self.role == Role::Client
                && envelope.command == "download"
                && let Err(e) = self.streams.expect(&envelope.id)
            {
                self.pending.remove(&envelope.id);
                return Err(e.into());
            }
        }
        Ok(())
    }

    /// Sends `message` as a request and returns its id.
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send).
    pub fn request<M: Request>(&mut self, message: &M, now: Instant) -> Result<String, Error> {
        self.send(pack(message), now)
    }

    /// Answers `request` with `response` (command `<cmd>reply`, rid = the
    /// request's id).
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send).
    pub fn reply<R: Request>(
        &mut self,
        request: &Envelope,
        response: &R::Response,
        now: Instant,
    ) -> Result<(), Error> {
        self.send_answer(reply::<R>(request, response), now)
    }

    /// Answers `request` with `error`.
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send).
    pub fn reply_error(
        &mut self,
        request: &Envelope,
        error: &ErrorResponse,
        now: Instant,
    ) -> Result<(), Error> {
        let mut answer = error_reply(request, String::new(), 0);
        answer.data = Some(pack_any(error));
        self.send_answer(answer, now)
    }

    /// Sends an `upload` request and, right behind it, the whole transfer:
    /// `beginstream` (with the SHA-256 of `content` when `checksum`),
    /// chunks of the configured size (slices of `content`, no copy) and
    /// `endstream`. Returns the request id; the server's `uploadreply` or
    /// `error` arrives as an event.
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send); nothing is queued on error.
    pub fn upload(
        &mut self,
        request: &UploadRequest,
        content: Bytes,
        checksum: bool,
        now: Instant,
    ) -> Result<String, Error> {
        let id = self.request(request, now)?;
        self.send_stream(&id, content, checksum, None, now)?;
        Ok(id)
    }

    /// Sends a whole transfer for `rid` (a server answering `download`):
    /// `beginstream`, chunks, `endstream`. The final reply is the caller's.
    ///
    /// # Errors
    ///
    /// A stream usage error, or the error that ended the connection.
    pub fn send_stream(
        &mut self,
        rid: &str,
        content: Bytes,
        checksum: bool,
        stat: Option<Stat>,
        now: Instant,
    ) -> Result<(), Error> {
        let mut sender = self.stream_sender(rid)?;
        let digest = checksum.then(|| sha256(&content));
        let begin = sender.begin(digest, stat)?;
        self.queue(begin, now);
        let size = self.config.stream().chunk_size().get();
        let mut rest = content;
        while !rest.is_empty() {
            let piece = rest.split_to(rest.len().min(size));
            let (header, chunk) = sender.chunk_parts(piece)?;
            self.queue_outgoing(Outgoing::Chunk { header, chunk }, now);
        }
        let end = sender.end()?;
        self.queue(end, now);
        Ok(())
    }

    /// Queues the next chunk of `sender`'s transfer, its payload kept as
    /// `data` until [`poll_transmit`](Self::poll_transmit) frames it: one
    /// copy of the payload, where [`send`](Self::send) of
    /// [`StreamSender::chunk`] makes two (into the envelope's `Any`, then
    /// into the frame). The bytes on the wire are the same.
    ///
    /// # Errors
    ///
    /// A stream usage error from [`StreamSender::chunk_parts`],
    /// [`Error::TooLarge`] over the max frame length, or the error that
    /// ended the connection. Nothing is queued on error.
    pub fn send_chunk(
        &mut self,
        sender: &mut StreamSender,
        data: Bytes,
        now: Instant,
    ) -> Result<(), Error> {
        self.check()?;
        let (mut header, chunk) = sender.chunk_parts(data)?;
        header.id = self.fresh_id();
        self.check_frame_len(packed_body_len(&header, &chunk))?;
        self.queue_outgoing(Outgoing::Chunk { header, chunk }, now);
        Ok(())
    }

    /// A sender for the transfer `rid`, for callers that produce the data
    /// piece by piece (a file read in chunks): [`send`](Self::send) the
    /// `beginstream` and `endstream` envelopes it returns, and give it to
    /// [`send_chunk`](Self::send_chunk) for each chunk.
    ///
    /// # Errors
    ///
    /// A stream usage error for an invalid rid, or the error that ended the
    /// connection.
    pub fn stream_sender(&self, rid: &str) -> Result<StreamSender, Error> {
        self.check()?;
        Ok(StreamSender::new(rid, self.config.stream())?)
    }

    // ----- internals ---------------------------------------------------

    fn check(&self) -> Result<(), Error> {
        match &self.error {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Refuses a frame body of `len` bytes: [`Error::TooLarge`] above the
    /// max frame length (and above `u32::MAX`, the most a prefix can say).
    fn check_frame_len(&self, len: usize) -> Result<(), Error> {
        let max = self
            .config
            .frame()
            .max_frame_length()
            .min(u32::MAX as usize);
        if len > max {
            return Err(Error::TooLarge { len, max });
        }
        Ok(())
    }

    /// When the partial frame in the decoder runs out of time, if one is
    /// buffered and a frame timeout is set.
    fn frame_deadline(&self) -> Option<Instant> {
        let limit = self.config.frame_timeout()?;
        self.partial_since?.checked_add(limit)
    }

    /// When a receive buffer grown past two read steps is given back, if
    /// there is one (see [`IDLE_BUFFER_RELEASE`]).
    fn buffer_release(&self) -> Option<Instant> {
        if !self.decoder.can_shrink_idle() {
            return None;
        }
        self.last_recv.checked_add(IDLE_BUFFER_RELEASE)
    }

    /// After input was handled: a partial frame left behind started at
    /// `now` unless it is the same one as before (no frame completed).
    fn track_partial_frame(&mut self, completed: bool, now: Instant) {
        self.partial_since = if self.decoder.buffered() == 0 {
            None
        } else if completed {
            Some(now)
        } else {
            self.partial_since.or(Some(now))
        };
    }

    fn drain_frames(&mut self, now: Instant) -> Result<(), Error> {
        self.last_recv = now;
        let mut completed = false;
        loop {
            let frame = match self.decoder.decode() {
                Ok(Some(frame)) => frame,
                Ok(None) => {
                    self.track_partial_frame(completed, now);
                    return Ok(());
                }
                Err(e) => return Err(self.fail(e.into())),
            };
            completed = true;
            let size = frame.len().saturating_add(LENGTH_PREFIX_LEN);
            self.accept_frame(&frame, size, now)?;
        }
    }

    /// Takes one frame body through the borrowed [`EnvelopeView`]: an
    /// envelope that arrives in seq order (always, on a byte stream) is
    /// dispatched straight from the frame, and an owned [`Envelope`] is
    /// built only if it must wait in the reorder buffer or an event carries
    /// it.
    fn accept_frame(&mut self, frame: &Bytes, size: usize, now: Instant) -> Result<(), Error> {
        // The view fails exactly when prost does (see `view`); report
        // prost's error, as the owned decode always did. An undecodable
        // envelope has no readable seq, so everything after it would wait on
        // a gap: the connection cannot go on.
        let Ok(view) = EnvelopeView::parse(frame) else {
            return match decode_envelope(frame.clone()) {
                Ok(envelope) => {
                    let seq = envelope.seq;
                    self.accept(envelope, seq, size, now)
                }
                Err(e) => Err(self.fail(e.into())),
            };
        };
        let seq = view.seq();
        self.accept(Framed::new(view), seq, size, now)
    }

    /// Puts a received envelope through the reorder buffer and dispatches
    /// whatever comes out in seq order.
    fn accept<R: Received>(
        &mut self,
        received: R,
        seq: i32,
        size: usize,
        now: Instant,
    ) -> Result<(), Error> {
        // Every call pops all it can, so nothing precedes `next_expected`:
        // an envelope carrying it comes straight back out of the first `pop`
        // below, and `None` holds its place. Only an envelope that must wait
        // is made owned and boxed.
        let (item, mut in_hand) = if seq == self.reorder.next_expected() {
            (None, Some(received))
        } else {
            (Some(Box::new(received.into_envelope())), None)
        };
        if let Err(e) = self.reorder.push(seq, item, size, now) {
            return Err(self.fail(e.into()));
        }
        while let Some(item) = self.reorder.pop() {
            match item {
                Some(envelope) => self.dispatch(*envelope, now),
                None => {
                    debug_assert!(in_hand.is_some(), "one placeholder per call");
                    if let Some(received) = in_hand.take() {
                        self.dispatch(received, now);
                    }
                }
            }
        }
        Ok(())
    }

    fn dispatch<R: Received>(&mut self, envelope: R, now: Instant) {
        if let Err(e) = validate_header(envelope.command(), envelope.id()) {
            return self.reject(envelope.into_envelope(), e.into(), now);
        }
        match envelope.command() {
            "ping" => {
                if self.config.answer_pings() {
                    let pong = Envelope {
                        command: "pong".to_owned(),
                        rid: envelope.id().to_owned(),
                        id: self.fresh_id(),
                        ..Envelope::default()
                    };
                    self.queue(pong, now);
                }
                self.events.push_back(Event::Ping {
                    id: envelope.into_id(),
                });
            }
            "beginstream" | "stream" | "endstream" => self.dispatch_stream(envelope, now),
            "error" => self.dispatch_error(envelope.into_envelope()),
            _ => match self.pending.remove(envelope.rid()) {
                Some((request_id, request_command)) => self.events.push_back(Event::Reply {
                    request_id,
                    request_command,
                    envelope: envelope.into_envelope(),
                }),
                // A pong for a keepalive ping is traffic and nothing else.
                None if envelope.command() == "pong" => {}
                None => self.dispatch_request(envelope.into_envelope(), now),
            },
        }
    }

    fn dispatch_stream<R: Received>(&mut self, envelope: R, now: Instant) {
        let rid = envelope.rid();
        let validation = self.config.validation();
        let was_failed = matches!(self.streams.state(rid), Some(StreamState::Failed(_)));
        let result = match envelope.command() {
            "beginstream" => envelope
                .unpack_as::<BeginStream>(validation)
                .map_err(Error::from)
                .and_then(|begin| Ok(self.streams.recv_begin(rid, &begin)?))
                .map(|started| Event::StreamStarted {
                    rid: rid.to_owned(),
                    started,
                }),
            "stream" => envelope
                .unpack_as::<Stream>(validation)
                .map_err(Error::from)
                .and_then(|chunk| Ok(self.streams.recv_chunk(rid, chunk.data)?))
                .map(|data| Event::StreamChunk {
                    rid: rid.to_owned(),
                    data,
                }),
            _ => envelope
                .unpack_as::<EndStream>(validation)
                .map_err(Error::from)
                .and_then(|_| Ok(self.streams.recv_end(rid)?))
                .map(|summary| Event::StreamEnded {
                    rid: rid.to_owned(),
                    summary,
                }),
        };
        match result {
            Ok(event) => self.events.push_back(event),
            Err(Error::Stream(error)) => {
                if !was_failed {
                    self.events.push_back(Event::StreamFailed {
                        rid: rid.to_owned(),
                        error,
                    });
                }
            }
            Err(error) => {
                // The part itself is malformed: the transfer cannot be
                // trusted any more.
                if self.streams.abort(rid).is_ok()
                    && let Some(StreamState::Failed(failure)) = self.streams.state(rid)
                {
                    self.events.push_back(Event::StreamFailed {
                        rid: rid.to_owned(),
                        error: failure,
                    });
                }
                self.reject(envelope.into_envelope(), error, now);
            }
        }
    }

    fn dispatch_error(&mut self, envelope: Envelope) {
        let validation = self.config.validation();
        let error =
            unpack::<ErrorResponse>(&envelope, validation).unwrap_or_else(|e| ErrorResponse {
                message: format!("undecodable error payload: {e}"),
                code: 0,
                stack: String::new(),
            });
        let rid = envelope.rid.as_str();
        let mut taken = false;
        if !rid.is_empty()
            && let Err(failure) = self.streams.recv_error(rid, &error)
        {
            taken = true;
            self.events.push_back(Event::StreamFailed {
                rid: rid.to_owned(),
                error: failure,
            });
        }
        if let Some((request_id, request_command)) = self.pending.remove(rid) {
            self.events.push_back(Event::PeerError {
                request_id,
                request_command,
                error,
            });
        } else if !taken {
            // An error for nothing of ours: the peer explaining a
            // disconnect, or answering a request that already timed out.
            self.events.push_back(Event::Request {
                envelope,
                payload: Box::new(crate::command::Payload::ErrorResponse(error)),
            });
        }
    }

    fn dispatch_request(&mut self, envelope: Envelope, now: Instant) {
        let decoded = match payload(&envelope, self.config.validation()) {
            Ok(decoded) => decoded,
            Err(e) => return self.reject(envelope, e.into(), now),
        };
        if self.role == Role::Server && envelope.command == "upload" {
            // The parts follow right behind the request: register the
            // transfer now, so they find it.
            if let Err(e) = self.streams.expect(&envelope.id) {
                return self.reject(envelope, e.into(), now);
            }
        }
        self.events.push_back(Event::Request {
            envelope,
            payload: Box::new(decoded),
        });
    }

    /// Reports a message that could not be taken and, when it was a
    /// request, tells the peer with an `error` reply.
    fn reject(&mut self, envelope: Envelope, error: Error, now: Instant) {
        if envelope.rid.is_empty() && !envelope.id.is_empty() && envelope.command != "error" {
            let mut answer = error_reply(&envelope, error.to_string(), error.code());
            answer.id = self.fresh_id();
            self.queue(answer, now);
        }
        self.events.push_back(Event::Rejected { envelope, error });
    }

    fn add_pending(&mut self, id: &str, command: &'static str, now: Instant) -> Result<(), Error> {
        let max = self.config.max_pending_requests();
        if self.pending.len() >= max {
            return Err(Error::TooManyPending { max });
        }
        let deadline = self
            .config
            .request_timeout()
            .and_then(|t| now.checked_add(t));
        self.pending
            .insert(id.to_owned(), command, deadline)
            .map_err(|id| Error::IdInUse { id })
    }

    fn fresh_id(&mut self) -> String {
        const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
        let mut n = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        // A u64 has at most 13 base-36 digits; written from the end, so
        // the id is built on the stack and allocated once.
        let mut digits = [0u8; 13];
        let mut start = digits.len();
        loop {
            start -= 1;
            if let (Some(slot), Some(&digit)) =
                (digits.get_mut(start), DIGITS.get((n % 36) as usize))
            {
                *slot = digit;
            }
            n /= 36;
            if n == 0 || start == 0 {
                break;
            }
        }
        // ASCII digits and letters, pushed as chars: no UTF-8 pass.
        let digits = digits.get(start..).unwrap_or_default();
        let mut id = String::with_capacity(digits.len());
        id.extend(digits.iter().map(|&digit| char::from(digit)));
        id
    }

    fn queue(&mut self, envelope: Envelope, now: Instant) {
        self.queue_outgoing(Outgoing::Envelope(envelope), now);
    }

    fn queue_outgoing(&mut self, mut outgoing: Outgoing, now: Instant) {
        let header = outgoing.header_mut();
        if header.id.is_empty() {
            header.id = self.fresh_id();
        }
        header.seq = self.next_seq;
        self.next_seq = seq_successor(self.next_seq);
        self.last_send = now;
        self.transmit.push_back(outgoing);
    }

    /// Ends the connection with a fatal `error`: tells the peer, fails
    /// everything in flight, and keeps the error.
    fn fail(&mut self, error: Error) -> Error {
        if self.error.is_none() {
            let mut notice = pack(&ErrorResponse::from(&error));
            notice.id = self.fresh_id();
            let now = self.last_send;
            self.queue(notice, now);
            self.shut_down(error.clone());
        }
        self.error.clone().unwrap_or(error)
    }

    /// Fails every pending request and open transfer with `error` and
    /// records it.
    fn shut_down(&mut self, error: Error) {
        let open: Vec<String> = self.streams.open_rids().map(str::to_owned).collect();
        for rid in open {
            if self.streams.abort(&rid).is_ok()
                && let Some(StreamState::Failed(failure)) = self.streams.state(&rid)
            {
                self.events.push_back(Event::StreamFailed {
                    rid,
                    error: failure,
                });
            }
        }
        for (request_id, request_command) in self.pending.drain() {
            self.events.push_back(Event::RequestFailed {
                request_id,
                request_command,
                error: error.clone(),
            });
        }
        self.error = Some(error);
    }
}

/// A queued message: an envelope, or a `stream` chunk kept typed until it
/// is framed, so that its payload is copied once (see
/// [`Connection::send_chunk`]).
#[derive(Debug)]
enum Outgoing {
    Envelope(Envelope),
    Chunk { header: Envelope, chunk: Stream },
}

impl Outgoing {
    fn header_mut(&mut self) -> &mut Envelope {
        match self {
            Self::Envelope(envelope)
            | Self::Chunk {
                header: envelope, ..
            } => envelope,
        }
    }

    /// Appends the frame; fails only above `u32::MAX` bytes.
    fn encode(&self, dst: &mut BytesMut) -> Result<(), FrameError> {
        match self {
            Self::Envelope(envelope) => encode_frame(envelope, usize::MAX, dst),
            Self::Chunk { header, chunk } => encode_packed_frame(header, chunk, usize::MAX, dst),
        }
    }

    /// The payload: a chunk's data, an envelope's `data.value`.
    fn into_payload(self) -> Bytes {
        match self {
            Self::Envelope(envelope) => envelope.data.map(|any| any.value).unwrap_or_default(),
            Self::Chunk { chunk, .. } => chunk.data,
        }
    }

    fn into_envelope(self) -> Envelope {
        match self {
            Self::Envelope(envelope) => envelope,
            Self::Chunk { header, chunk } => Envelope {
                data: Some(pack_any(&chunk)),
                ..header
            },
        }
    }
}

/// A received envelope as [`Connection::dispatch`] reads it: borrowed from
/// its frame ([`EnvelopeView`], the byte-stream path) or owned (gRPC, and
/// envelopes that waited in the reorder buffer). Both give the same answers;
/// the owned [`Envelope`] is built from a view only when an event or an
/// `error` reply carries it.
trait Received: Sized {
    fn command(&self) -> &str;
    fn id(&self) -> &str;
    fn rid(&self) -> &str;
    /// [`unpack`] (for a view, [`EnvelopeView::unpack`]: same results).
    fn unpack_as<M: WireMessage>(&self, validation: Validation) -> Result<M, CommandError>;
    fn into_id(self) -> String;
    fn into_envelope(self) -> Envelope;
}

impl Received for Envelope {
    fn command(&self) -> &str {
        &self.command
    }

    fn id(&self) -> &str {
        &self.id
    }

    fn rid(&self) -> &str {
        &self.rid
    }

    fn unpack_as<M: WireMessage>(&self, validation: Validation) -> Result<M, CommandError> {
        unpack(self, validation)
    }

    fn into_id(self) -> String {
        self.id
    }

    fn into_envelope(self) -> Envelope {
        self
    }
}

/// An envelope read through its [`EnvelopeView`], with the three header
/// strings dispatch reads made once (each view accessor runs a UTF-8 pass).
struct Framed<'a> {
    view: EnvelopeView<'a>,
    command: &'a str,
    id: &'a str,
    rid: &'a str,
}

impl<'a> Framed<'a> {
    fn new(view: EnvelopeView<'a>) -> Self {
        Self {
            command: view.command(),
            id: view.id(),
            rid: view.rid(),
            view,
        }
    }
}

impl Received for Framed<'_> {
    fn command(&self) -> &str {
        self.command
    }

    fn id(&self) -> &str {
        self.id
    }

    fn rid(&self) -> &str {
        self.rid
    }

    fn unpack_as<M: WireMessage>(&self, validation: Validation) -> Result<M, CommandError> {
        self.view.unpack(validation)
    }

    fn into_id(self) -> String {
        self.id.to_owned()
    }

    fn into_envelope(self) -> Envelope {
        self.view.to_envelope_with(self.command, self.id, self.rid)
    }
}

#[cfg(test)]
mod tests;
