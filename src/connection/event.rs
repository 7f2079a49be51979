//! [`Event`]: what a [`Connection`](super::Connection) reports to its owner.

use bytes::Bytes;

use crate::Error;
use crate::command::Payload;
use crate::proto::{Envelope, ErrorResponse};
use crate::stream::{StreamError, StreamStarted, StreamSummary};

/// Something that happened on a connection, in the peer's seq order.
///
/// Replies are matched to requests by `rid`; stream parts go to their
/// transfer before any reply, as in the reference implementations
/// (PROTOCOL.md "ids, rids and matching replies").
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// A message that is not an answer to one of ours: a request, or an
    /// event pushed by the server. Its payload decoded under the
    /// connection's [`Validation`](crate::command::Validation).
    Request {
        /// The envelope (its `data` still holds the encoded payload).
        envelope: Envelope,
        /// The decoded payload (boxed: the largest schema messages would
        /// otherwise size every event).
        payload: Box<Payload>,
    },
    /// A received message that could not be taken: unknown command, bad
    /// payload, no id. When it was a request (rid empty, id set) the
    /// connection has already queued an `error` reply.
    Rejected {
        /// The envelope as received.
        envelope: Envelope,
        /// Why it was rejected.
        error: Error,
    },
    /// The answer to one of our requests (any command but `error`).
    Reply {
        /// The id of our request (the reply's rid).
        request_id: String,
        /// The command of our request (from the
        /// [command table](crate::command::lookup)).
        request_command: &'static str,
        /// The reply; unpack it with
        /// [`EnvelopeExt::unpack`](crate::envelope::EnvelopeExt::unpack).
        envelope: Envelope,
    },
    /// The peer answered one of our requests with `error`.
    PeerError {
        /// The id of our request.
        request_id: String,
        /// The command of our request (from the
        /// [command table](crate::command::lookup)).
        request_command: &'static str,
        /// What the peer said.
        error: ErrorResponse,
    },
    /// One of our requests failed locally: no reply in time, or the
    /// connection ended first.
    RequestFailed {
        /// The id of our request.
        request_id: String,
        /// The command of our request (from the
        /// [command table](crate::command::lookup)).
        request_command: &'static str,
        /// [`Error::RequestTimedOut`] or [`Error::Closed`] (or the fatal
        /// error that ended the connection).
        error: Error,
    },
    /// The peer pinged us (already answered with `pong` when
    /// [`answer_pings`](super::ConnectionConfig::answer_pings) is on).
    Ping {
        /// The ping's id.
        id: String,
    },
    /// A transfer began (`beginstream`).
    StreamStarted {
        /// The rid: the id of the `upload` or `download` request.
        rid: String,
        /// What `beginstream` announced.
        started: StreamStarted,
    },
    /// One chunk of a transfer: the payload bytes, sharing the receive
    /// buffer (no copy).
    StreamChunk {
        /// The transfer's rid.
        rid: String,
        /// The chunk.
        data: Bytes,
    },
    /// A transfer ended and its checksum (if announced) matched. Only now
    /// may the receiver make the data visible (rename the temporary file).
    StreamEnded {
        /// The transfer's rid.
        rid: String,
        /// Bytes, chunks and SHA-256 of what arrived.
        summary: StreamSummary,
    },
    /// A transfer failed: a protocol violation, a checksum mismatch, a limit,
    /// or an `error` from the peer. Discard what was written for it.
    /// Reported once per transfer.
    StreamFailed {
        /// The transfer's rid.
        rid: String,
        /// Why.
        error: StreamError,
    },
}
