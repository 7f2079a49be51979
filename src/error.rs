//! The crate-wide [`Error`]: one variant per layer, plus what only a
//! [`Connection`](crate::connection::Connection) can tell.
//!
//! Every layer keeps its own error type ([`FrameError`], [`EnvelopeError`],
//! [`CommandError`], [`SeqError`], [`StreamError`], [`UsageError`]); `Error`
//! wraps them with `From`, so `?` works across layers, and classifies them:
//!
//! | variant                  | scope (h2: GOAWAY vs RST_STREAM) | [`code`](Error::code) |
//! |--------------------------|----------------------------------|------|
//! | `Frame`                  | connection                       | 413 for `TooLarge`, else 400 |
//! | `Envelope`               | the one envelope                 | 400  |
//! | `Command`                | the one request                  | 404 for an unknown command, else 400 |
//! | `Seq`                    | connection                       | 400  |
//! | `Stream`                 | the one transfer ([`rid`](Error::rid)) | 422 checksum, 413 too large, 429 too many, else 400 |
//! | `Usage`, `IdInUse`, `TooLarge`, `TooManyPending` | local misuse, nothing sent | 500 / 413 / 429 |
//! | `RequestTimedOut`        | the one request                  | 504  |
//! | `PeerSilent`             | connection                       | 408  |
//! | `FrameTimedOut`          | connection                       | 408  |
//! | `Closed`                 | connection                       | 499  |
//!
//! [`From<&Error> for ErrorResponse`](ErrorResponse) builds the `error`
//! payload the peer reads, as rustls maps its errors to alerts.

use std::time::Duration;

pub use crate::command::CommandError;
pub use crate::envelope::EnvelopeError;
pub use crate::frame::FrameError;
use crate::proto::ErrorResponse;
pub use crate::reorder::SeqError;
pub use crate::stream::{StreamError, UsageError};

/// Any error of this crate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The byte stream is not a valid run of frames (connection-fatal).
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// A frame body is not a usable Envelope.
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    /// A command or its payload was rejected.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// The peer broke the sequence-number rules (connection-fatal).
    #[error(transparent)]
    Seq(#[from] SeqError),
    /// A file transfer failed.
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// The local caller misused a stream.
    #[error(transparent)]
    Usage(#[from] UsageError),
    /// An envelope to send encodes larger than the max frame length.
    #[error("envelope of {len} bytes exceeds the max frame length of {max} bytes")]
    TooLarge {
        /// Its encoded length.
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// A request to send reuses the id of a request still pending.
    #[error("request id {id:?} is already pending")]
    IdInUse {
        /// The id.
        id: String,
    },
    /// The local caller has too many requests waiting for replies.
    #[error("too many pending requests: the limit is {max}")]
    TooManyPending {
        /// The configured cap.
        max: usize,
    },
    /// A request got no reply in time.
    #[error("request {id:?} ({command}) got no reply within {after:?}")]
    RequestTimedOut {
        /// The request's id.
        id: String,
        /// The request's command.
        command: String,
        /// The configured timeout.
        after: Duration,
    },
    /// Nothing arrived from the peer for too long (connection-fatal).
    #[error("peer silent for {silence:?}, the limit is {limit:?}")]
    PeerSilent {
        /// How long nothing arrived.
        silence: Duration,
        /// The configured idle timeout.
        limit: Duration,
    },
    /// A frame was still incomplete when the
    /// [frame timeout](crate::connection::ConnectionConfig::frame_timeout),
    /// counted from the arrival of its first byte, ran out
    /// (connection-fatal): a peer dripping bytes too slowly, or stalled
    /// mid-frame.
    #[error("frame still incomplete {limit:?} after its first byte ({buffered} bytes received)")]
    FrameTimedOut {
        /// Bytes of the incomplete frame received, length prefix included.
        buffered: usize,
        /// The configured frame timeout.
        limit: Duration,
    },
    /// The connection was closed before the operation finished.
    #[error("connection closed")]
    Closed,
}

impl Error {
    /// Whether the error ends the whole connection (GOAWAY-like), rather
    /// than one request or one transfer (RST_STREAM-like).
    pub fn is_connection_fatal(&self) -> bool {
        match self {
            // Encoding too large is local: nothing was written.
            Self::Frame(FrameError::EncodeTooLarge { .. }) => false,
            Self::Frame(_)
            | Self::Seq(_)
            | Self::PeerSilent { .. }
            | Self::FrameTimedOut { .. }
            | Self::Closed => true,
            Self::Stream(StreamError::TooManyOpen { .. }) => true,
            // An undecodable envelope has no readable seq: everything after
            // it would wait on a gap, so the connection ends on it.
            Self::Envelope(EnvelopeError::Decode(_)) => true,
            _ => false,
        }
    }

    /// The rid of the transfer the error belongs to, if it is one.
    pub fn rid(&self) -> Option<&str> {
        match self {
            Self::Stream(e) => e.rid(),
            _ => None,
        }
    }

    /// The `ErrorResponse.code` sent to the peer (HTTP-like, see the module
    /// docs; the reference server mostly sends 0, which no peer interprets).
    pub fn code(&self) -> i32 {
        match self {
            Self::Frame(FrameError::TooLarge { .. } | FrameError::EncodeTooLarge { .. }) => 413,
            Self::Command(CommandError::UnknownCommand { .. }) => 404,
            Self::Stream(StreamError::ChecksumMismatch { .. }) => 422,
            Self::Stream(StreamError::TooLarge { .. }) => 413,
            Self::Stream(StreamError::TooManyOpen { .. }) | Self::TooManyPending { .. } => 429,
            Self::Usage(_) | Self::IdInUse { .. } => 500,
            Self::TooLarge { .. } => 413,
            Self::RequestTimedOut { .. } => 504,
            Self::PeerSilent { .. } | Self::FrameTimedOut { .. } => 408,
            Self::Closed => 499,
            _ => 400,
        }
    }
}

impl From<&Error> for ErrorResponse {
    fn from(error: &Error) -> Self {
        Self {
            message: error.to_string(),
            code: error.code(),
            stack: String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn undecodable_envelope_is_fatal_missing_id_is_not() {
        let Err(decode) = crate::envelope::decode_envelope(bytes::Bytes::from_static(b"\xff"))
        else {
            panic!("0xFF is not an Envelope");
        };
        assert!(matches!(decode, EnvelopeError::Decode(_)));
        assert!(Error::from(decode).is_connection_fatal());
        let missing = EnvelopeError::MissingId {
            command: "ping".into(),
        };
        assert!(!Error::from(missing).is_connection_fatal());
    }

    #[test]
    fn frame_too_large_is_fatal_and_maps_to_413() {
        let error = Error::from(FrameError::TooLarge { len: 10, max: 5 });
        assert!(error.is_connection_fatal());
        let response = ErrorResponse::from(&error);
        assert_eq!(response.code, 413);
        assert!(response.message.contains("10"), "{}", response.message);
        assert!(response.message.contains('5'), "{}", response.message);
    }

    #[test]
    fn stream_errors_carry_their_rid_and_are_not_fatal() {
        let error = Error::from(StreamError::ChecksumMismatch {
            rid: "u1".into(),
            expected: "aa".into(),
            actual: "bb".into(),
        });
        assert!(!error.is_connection_fatal());
        assert_eq!(error.rid(), Some("u1"));
        assert_eq!(error.code(), 422);
    }

    #[test]
    fn unknown_command_maps_to_404() {
        let error = Error::from(CommandError::UnknownCommand {
            command: "nosuchcommand".into(),
        });
        assert!(!error.is_connection_fatal());
        assert_eq!(error.code(), 404);
        assert!(error.to_string().contains("nosuchcommand"));
    }

    #[test]
    fn frame_timed_out_is_fatal_and_maps_to_408() {
        let error = Error::FrameTimedOut {
            buffered: 5,
            limit: Duration::from_secs(30),
        };
        assert!(error.is_connection_fatal());
        assert_eq!(error.code(), 408);
        assert!(error.to_string().contains("30s"), "{error}");
    }

    #[test]
    fn seq_errors_are_fatal() {
        let error = Error::from(SeqError::Duplicate { seq: 3 });
        assert!(error.is_connection_fatal());
        assert_eq!(error.rid(), None);
    }
}
