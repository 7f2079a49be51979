//! Errors of the stream module: [`StreamError`] for what the peer did,
//! [`UsageError`] for what the local caller did.

/// A peer broke the transfer rules, or the transfer failed, on a received
/// stream.
///
/// Every variant but `TooManyOpen` and `InvalidRid` names the rid. Once a
/// stream has failed, every later part for it returns the same error again
/// (see the module docs), so cleanup on error should be idempotent.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// A `stream` or `endstream` arrived for a rid that was never begun or
    /// expected (or whose record was evicted).
    #[error("stream part for rid `{rid}`, which has no stream")]
    UnknownRid {
        /// The rid of the part.
        rid: String,
    },
    /// A `stream` or `endstream` arrived for an expected rid before its
    /// `beginstream`.
    #[error("stream `{rid}` got a part before its beginstream")]
    NotBegun {
        /// The stream's rid.
        rid: String,
    },
    /// A second `beginstream` arrived for an open stream.
    #[error("stream `{rid}` got a second beginstream")]
    AlreadyBegun {
        /// The stream's rid.
        rid: String,
    },
    /// A part arrived for a stream that already ended.
    #[error("stream `{rid}` got a part after its endstream")]
    AlreadyEnded {
        /// The stream's rid.
        rid: String,
    },
    /// The data's SHA-256 differs from the checksum announced in
    /// `beginstream`. Both are lower-case hex.
    #[error(
        "stream `{rid}` checksum mismatch: beginstream announced {expected}, data hashes to {actual}"
    )]
    ChecksumMismatch {
        /// The stream's rid.
        rid: String,
        /// The announced SHA-256.
        expected: String,
        /// The SHA-256 of the received data.
        actual: String,
    },
    /// The stream's payload passed
    /// [`StreamConfig::max_stream_bytes`](super::StreamConfig::max_stream_bytes) (or
    /// `u64::MAX`).
    #[error("stream `{rid}` would hold {total} bytes, the limit is {limit}")]
    TooLarge {
        /// The stream's rid.
        rid: String,
        /// Bytes the stream would hold with the refused chunk (saturated at
        /// `u64::MAX`).
        total: u64,
        /// The configured limit (`u64::MAX` when none is set).
        limit: u64,
    },
    /// A `beginstream` would open more than
    /// [`StreamConfig::max_open_streams`](super::StreamConfig::max_open_streams) streams.
    #[error("too many open streams: the limit is {max}")]
    TooManyOpen {
        /// The configured limit.
        max: usize,
    },
    /// The peer sent `error` for the rid while the stream was open: the
    /// transfer failed on its side.
    #[error("stream `{rid}` failed at the peer (code {code}): {message}")]
    PeerError {
        /// The stream's rid.
        rid: String,
        /// `ErrorResponse.code` (the server usually sends 0).
        code: i32,
        /// `ErrorResponse.message`, cut to [`MAX_PEER_TEXT_LEN`](super::MAX_PEER_TEXT_LEN) bytes.
        message: String,
    },
    /// `BeginStream.checksum` is neither empty nor 64 hex digits.
    #[error("stream `{rid}` announced checksum {checksum:?}, expected 64 hex digits or nothing")]
    InvalidChecksum {
        /// The stream's rid.
        rid: String,
        /// The checksum as sent, cut to [`MAX_PEER_TEXT_LEN`](super::MAX_PEER_TEXT_LEN) bytes.
        checksum: String,
    },
    /// A `beginstream` rid is empty or longer than [`MAX_RID_LEN`](super::MAX_RID_LEN).
    #[error("beginstream rid is {len} bytes long, expected 1 to {max}")]
    InvalidRid {
        /// Length of the rid in bytes.
        len: usize,
        /// [`MAX_RID_LEN`](super::MAX_RID_LEN).
        max: usize,
    },
    /// The local side aborted the stream with
    /// [`StreamTable::abort`](super::StreamTable::abort). There
    /// is no cancel message, so the peer may still send parts it had in
    /// flight; they get this error and should be dropped quietly.
    #[error("stream `{rid}` was aborted locally")]
    Aborted {
        /// The stream's rid.
        rid: String,
    },
}

impl StreamError {
    /// The rid of the stream the error belongs to, if any.
    pub fn rid(&self) -> Option<&str> {
        match self {
            Self::UnknownRid { rid }
            | Self::NotBegun { rid }
            | Self::AlreadyBegun { rid }
            | Self::AlreadyEnded { rid }
            | Self::ChecksumMismatch { rid, .. }
            | Self::TooLarge { rid, .. }
            | Self::PeerError { rid, .. }
            | Self::InvalidChecksum { rid, .. }
            | Self::Aborted { rid } => Some(rid),
            Self::TooManyOpen { .. } | Self::InvalidRid { .. } => None,
        }
    }

    /// Whether the peer broke the protocol or our limits. `false` for
    /// [`PeerError`](Self::PeerError) (the peer reported a failure the
    /// regular way) and [`Aborted`](Self::Aborted) (our own doing).
    pub fn is_peer_violation(&self) -> bool {
        !matches!(self, Self::PeerError { .. } | Self::Aborted { .. })
    }
}

/// The local side called a stream method out of order or with bad input.
///
/// These are bugs in the caller, not in the peer (h2 keeps its `UserError`
/// apart in the same way).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UsageError {
    /// The stream is not open: a sender's chunk or end before its begin, or
    /// an abort for a rid that is not awaiting its begin or open.
    #[error("stream `{rid}` is not open")]
    StreamNotOpen {
        /// The stream's rid.
        rid: String,
    },
    /// [`StreamSender::begin`](super::StreamSender::begin) was called twice.
    #[error("stream `{rid}` has already begun")]
    AlreadyBegun {
        /// The stream's rid.
        rid: String,
    },
    /// A sender was used after its [`end`](super::StreamSender::end).
    #[error("stream `{rid}` has already finished")]
    AlreadyFinished {
        /// The stream's rid.
        rid: String,
    },
    /// [`StreamSender::chunk`](super::StreamSender::chunk) got more than the configured chunk size.
    #[error("chunk of {len} bytes for stream `{rid}`, the chunk size is {max}")]
    ChunkTooLarge {
        /// The stream's rid.
        rid: String,
        /// Length of the refused chunk.
        len: usize,
        /// [`StreamConfig::chunk_size`](super::StreamConfig::chunk_size).
        max: usize,
    },
    /// [`StreamTable::expect`](super::StreamTable::expect) for a rid the table already tracks.
    #[error("rid `{rid}` already has a stream")]
    RidInUse {
        /// The rid.
        rid: String,
    },
    /// [`StreamTable::expect`](super::StreamTable::expect) with the table full.
    #[error("too many open streams: the limit is {max}")]
    TooManyOpen {
        /// [`StreamConfig::max_open_streams`](super::StreamConfig::max_open_streams).
        max: usize,
    },
    /// A rid that is empty or longer than [`MAX_RID_LEN`](super::MAX_RID_LEN).
    #[error("rid is {len} bytes long, expected 1 to {max}")]
    InvalidRid {
        /// Length of the rid in bytes.
        len: usize,
        /// [`MAX_RID_LEN`](super::MAX_RID_LEN).
        max: usize,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_messages_carry_numbers_and_names() {
        let too_large = StreamError::TooLarge {
            rid: "r1".into(),
            total: 11,
            limit: 10,
        };
        assert_eq!(
            too_large.to_string(),
            "stream `r1` would hold 11 bytes, the limit is 10"
        );
        let too_many = StreamError::TooManyOpen { max: 16 };
        assert_eq!(
            too_many.to_string(),
            "too many open streams: the limit is 16"
        );
        let chunk = UsageError::ChunkTooLarge {
            rid: "u".into(),
            len: 5,
            max: 4,
        };
        assert_eq!(
            chunk.to_string(),
            "chunk of 5 bytes for stream `u`, the chunk size is 4"
        );
    }

    #[test]
    fn error_classification() {
        let peer = StreamError::PeerError {
            rid: "r".into(),
            code: 0,
            message: "x".into(),
        };
        assert_eq!(peer.rid(), Some("r"));
        assert!(!peer.is_peer_violation());
        assert!(!StreamError::Aborted { rid: "r".into() }.is_peer_violation());
        assert!(StreamError::UnknownRid { rid: "r".into() }.is_peer_violation());
        assert_eq!(StreamError::TooManyOpen { max: 1 }.rid(), None);
        assert_eq!(StreamError::InvalidRid { len: 0, max: 256 }.rid(), None);
    }
}
