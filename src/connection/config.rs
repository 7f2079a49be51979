//! [`ConnectionConfig`]: every limit and timer of a
//! [`Connection`](super::Connection), with defaults documented beside them.

use std::time::Duration;

use crate::command::Validation;
use crate::frame::FrameConfig;
use crate::reorder::ReorderConfig;
use crate::stream::StreamConfig;

/// Default [`ConnectionConfig::max_pending_requests`]: 1024 requests in
/// flight, far above what the reference clients keep (they await each call).
pub const DEFAULT_MAX_PENDING_REQUESTS: usize = 1024;

/// Default [`ConnectionConfig::request_timeout`]: 30 s, the Rust reference
/// client's timeout (the Node client has none).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Default [`ConnectionConfig::keepalive_interval`]: 30 s, the Node client's
/// ping interval.
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);

/// Which end of the connection this is.
///
/// The role decides which transfers the connection expects without being
/// told: a server registers the stream of every `upload` it receives (the
/// parts follow right behind the request), a client the stream of every
/// `download` it sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The side that connected.
    Client,
    /// The side that accepted.
    Server,
}

/// Limits and timers of one connection (`Default` + setters, like quinn's
/// `TransportConfig`).
#[derive(Debug, Clone)]
pub struct ConnectionConfig {
    frame: FrameConfig,
    reorder: ReorderConfig,
    stream: StreamConfig,
    validation: Validation,
    max_pending_requests: usize,
    request_timeout: Option<Duration>,
    keepalive_interval: Option<Duration>,
    idle_timeout: Option<Duration>,
    frame_timeout: Option<Duration>,
    answer_pings: bool,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        Self {
            frame: FrameConfig::default(),
            reorder: ReorderConfig::default(),
            stream: StreamConfig::default(),
            validation: Validation::default(),
            max_pending_requests: DEFAULT_MAX_PENDING_REQUESTS,
            request_timeout: Some(DEFAULT_REQUEST_TIMEOUT),
            keepalive_interval: Some(DEFAULT_KEEPALIVE_INTERVAL),
            idle_timeout: None,
            frame_timeout: None,
            answer_pings: true,
        }
    }
}

impl ConnectionConfig {
    /// Framing limits (max frame length, buffer steps).
    pub fn frame(&self) -> &FrameConfig {
        &self.frame
    }

    /// Mutable framing limits.
    pub fn frame_mut(&mut self) -> &mut FrameConfig {
        &mut self.frame
    }

    /// Reordering limits (window, bytes held, gap timeout).
    pub fn reorder(&self) -> &ReorderConfig {
        &self.reorder
    }

    /// Mutable reordering limits.
    pub fn reorder_mut(&mut self) -> &mut ReorderConfig {
        &mut self.reorder
    }

    /// Transfer limits (open streams, bytes per stream, chunk size).
    pub fn stream(&self) -> &StreamConfig {
        &self.stream
    }

    /// Mutable transfer limits.
    pub fn stream_mut(&mut self) -> &mut StreamConfig {
        &mut self.stream
    }

    /// How received type URLs are checked; default [`Validation::Lenient`].
    pub fn validation(&self) -> Validation {
        self.validation
    }

    /// Sets how received type URLs are checked.
    pub fn set_validation(&mut self, validation: Validation) -> &mut Self {
        self.validation = validation;
        self
    }

    /// Most requests awaiting a reply at once; default
    /// [`DEFAULT_MAX_PENDING_REQUESTS`].
    pub fn max_pending_requests(&self) -> usize {
        self.max_pending_requests
    }

    /// Sets the cap on requests awaiting a reply.
    pub fn set_max_pending_requests(&mut self, max: usize) -> &mut Self {
        self.max_pending_requests = max;
        self
    }

    /// How long a request may wait for its reply; `None` waits forever.
    /// Default [`DEFAULT_REQUEST_TIMEOUT`].
    pub fn request_timeout(&self) -> Option<Duration> {
        self.request_timeout
    }

    /// Sets the request timeout.
    pub fn set_request_timeout(&mut self, timeout: Option<Duration>) -> &mut Self {
        self.request_timeout = timeout;
        self
    }

    /// After this long without sending anything, send a `ping`; `None`
    /// never pings. Default [`DEFAULT_KEEPALIVE_INTERVAL`].
    pub fn keepalive_interval(&self) -> Option<Duration> {
        self.keepalive_interval
    }

    /// Sets the keepalive interval.
    pub fn set_keepalive_interval(&mut self, interval: Option<Duration>) -> &mut Self {
        self.keepalive_interval = interval;
        self
    }

    /// After this long without receiving anything, the peer is dead
    /// ([`Error::PeerSilent`](crate::Error::PeerSilent)); `None` (the default)
    /// never gives up. The Node server never answers a ping, so a client
    /// that talks to it and sits idle hears nothing: set this on servers
    /// (above the clients' ping interval), or on clients of servers that
    /// answer pings.
    pub fn idle_timeout(&self) -> Option<Duration> {
        self.idle_timeout
    }

    /// Sets the idle timeout.
    pub fn set_idle_timeout(&mut self, timeout: Option<Duration>) -> &mut Self {
        self.idle_timeout = timeout;
        self
    }

    /// How long a frame may take to arrive whole, counted from the arrival
    /// of its first byte; `None` (the default) waits forever.
    ///
    /// This bounds slow-drip ("slowloris") peers: a peer that sends the
    /// start of a frame and then one byte now and then keeps the connection
    /// and its receive buffer alive without ever completing a message, and
    /// the [idle timeout](Self::idle_timeout) never fires because bytes keep
    /// arriving. The deadline is set when the first byte of a partial frame
    /// arrives and is **not** extended by later bytes of the same frame; it
    /// is cleared when no partial frame remains. When it passes,
    /// [`handle_timeout`](super::Connection::handle_timeout) ends the
    /// connection with [`Error::FrameTimedOut`](crate::Error::FrameTimedOut).
    ///
    /// Servers should set it: the reference server uses 30 s. Pick a value
    /// that the largest frame you accept can meet on the slowest link you
    /// serve (64 MiB in 30 s needs about 2.2 MiB/s).
    pub fn frame_timeout(&self) -> Option<Duration> {
        self.frame_timeout
    }

    /// Sets the frame-completion timeout.
    pub fn set_frame_timeout(&mut self, timeout: Option<Duration>) -> &mut Self {
        self.frame_timeout = timeout;
        self
    }

    /// Whether a received `ping` is answered with `pong` (rid = the ping's
    /// id) by the connection itself; default `true`, as the Rust reference.
    pub fn answer_pings(&self) -> bool {
        self.answer_pings
    }

    /// Sets whether pings are answered automatically.
    pub fn set_answer_pings(&mut self, answer: bool) -> &mut Self {
        self.answer_pings = answer;
        self
    }
}
