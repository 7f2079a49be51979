//! The state machine of one received stream: private `Inner` behind the
//! public [`StreamState`] view, one method per event (h2 `state.rs` style).
//! [`StreamTable`](super::StreamTable) looks rids up and counts them.

use bytes::Bytes;

use super::{PayloadHash, StreamError, UsageError, clip_peer_text, parse_sha256_hex, to_hex};
use crate::proto::{BeginStream, ErrorResponse, Stat};

/// What a [`StreamTable`](super::StreamTable) knows about one rid, as
/// returned by [`StreamTable::state`](super::StreamTable::state). The module
/// docs draw the transitions.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StreamState {
    /// Registered with [`StreamTable::expect`](super::StreamTable::expect); no
    /// `beginstream` yet.
    AwaitingBegin,
    /// `beginstream` seen; chunks are flowing.
    Open {
        /// Payload bytes received so far.
        bytes: u64,
        /// Chunks received so far.
        chunks: u64,
    },
    /// `endstream` seen and the checksum (if any) matched.
    Ended {
        /// Payload bytes received.
        bytes: u64,
        /// Chunks received.
        chunks: u64,
    },
    /// The stream failed; every later part returns this error again.
    Failed(StreamError),
}

/// What a `beginstream` announced, returned by
/// [`StreamTable::recv_begin`](super::StreamTable::recv_begin).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct StreamStarted {
    /// The announced SHA-256 as lower-case hex, `None` when the peer sent no
    /// checksum.
    pub checksum: Option<String>,
    /// The file metadata the peer sent, if any (Node's `fs.Stats`; beware
    /// the `int32`/`float` fields, see PROTOCOL.md).
    pub stat: Option<Stat>,
    /// Whether the rid was registered with
    /// [`StreamTable::expect`](super::StreamTable::expect) first.
    pub was_expected: bool,
    /// The announced digest, parsed (`checksum` is its hex).
    pub(super) expected: Option<[u8; 32]>,
}

impl StreamStarted {
    /// A [`PayloadHash`] that checks the payload against the announced
    /// checksum: for an application whose table does not hash
    /// ([`StreamConfig::set_hash_payload`](super::StreamConfig::set_hash_payload)).
    pub fn payload_hash(&self) -> PayloadHash {
        PayloadHash::new(self.expected)
    }
}

/// A completed transfer, returned by [`StreamTable::recv_end`](super::StreamTable::recv_end).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamSummary {
    /// Payload bytes received.
    pub bytes: u64,
    /// `stream` envelopes received (empty chunks included).
    pub chunks: u64,
    /// SHA-256 of the payload as lower-case hex; `None` when the table does
    /// not hash ([`StreamConfig::set_hash_payload`](super::StreamConfig::set_hash_payload)).
    pub sha256: Option<String>,
    /// Whether `beginstream` announced a checksum, which then matched. When
    /// `false` nobody vouched for the data, or the table did not hash and
    /// the application checks it (see [`StreamStarted::payload_hash`]).
    pub checksum_verified: bool,
}

/// One rid's state. Each event is one method holding a single `match`.
#[derive(Clone, Debug)]
pub(super) enum Inner {
    AwaitingBegin,
    Open {
        /// `None` when the application hashes.
        hash: Option<PayloadHash>,
        bytes: u64,
        chunks: u64,
    },
    Ended {
        bytes: u64,
        chunks: u64,
    },
    Failed(StreamError),
}

impl Inner {
    pub(super) fn is_live(&self) -> bool {
        matches!(self, Self::AwaitingBegin | Self::Open { .. })
    }

    pub(super) fn view(&self) -> StreamState {
        match self {
            Self::AwaitingBegin => StreamState::AwaitingBegin,
            Self::Open { bytes, chunks, .. } => StreamState::Open {
                bytes: *bytes,
                chunks: *chunks,
            },
            Self::Ended { bytes, chunks } => StreamState::Ended {
                bytes: *bytes,
                chunks: *chunks,
            },
            Self::Failed(error) => StreamState::Failed(error.clone()),
        }
    }

    /// Moves to `Failed(error)` and hands the error back.
    fn fail(&mut self, error: StreamError) -> StreamError {
        *self = Self::Failed(error.clone());
        error
    }

    pub(super) fn recv_begin(
        &mut self,
        rid: &str,
        begin: &BeginStream,
        hash_payload: bool,
    ) -> Result<StreamStarted, StreamError> {
        match self {
            Self::AwaitingBegin => {
                let expected = if begin.checksum.is_empty() {
                    None
                } else if let Some(digest) = parse_sha256_hex(&begin.checksum) {
                    Some(digest)
                } else {
                    let checksum = clip_peer_text(&begin.checksum);
                    return Err(self.fail(StreamError::InvalidChecksum {
                        rid: rid.to_owned(),
                        checksum,
                    }));
                };
                *self = Self::Open {
                    hash: hash_payload.then(|| PayloadHash::new(expected)),
                    bytes: 0,
                    chunks: 0,
                };
                Ok(StreamStarted {
                    checksum: expected.map(|digest| to_hex(&digest)),
                    stat: begin.stat,
                    was_expected: true,
                    expected,
                })
            }
            Self::Ended { .. } => Err(StreamError::AlreadyEnded {
                rid: rid.to_owned(),
            }),
            Self::Failed(error) => Err(error.clone()),
            _ => Err(self.fail(StreamError::AlreadyBegun {
                rid: rid.to_owned(),
            })),
        }
    }

    pub(super) fn recv_chunk(
        &mut self,
        rid: &str,
        data: Bytes,
        limit: Option<u64>,
    ) -> Result<Bytes, StreamError> {
        match self {
            Self::Open {
                hash,
                bytes,
                chunks,
            } => {
                let total = u64::try_from(data.len())
                    .ok()
                    .and_then(|len| bytes.checked_add(len));
                match (total, limit) {
                    (Some(total), Some(limit)) if total > limit => {
                        let rid = rid.to_owned();
                        Err(self.fail(StreamError::TooLarge { rid, total, limit }))
                    }
                    (None, limit) => {
                        let (rid, total, limit) =
                            (rid.to_owned(), u64::MAX, limit.unwrap_or(u64::MAX));
                        Err(self.fail(StreamError::TooLarge { rid, total, limit }))
                    }
                    (Some(total), _) => {
                        if let Some(hash) = hash {
                            hash.update(&data);
                        }
                        *bytes = total;
                        *chunks = chunks.saturating_add(1);
                        Ok(data)
                    }
                }
            }
            Self::AwaitingBegin => Err(self.fail(StreamError::NotBegun {
                rid: rid.to_owned(),
            })),
            Self::Failed(error) => Err(error.clone()),
            _ => Err(StreamError::AlreadyEnded {
                rid: rid.to_owned(),
            }),
        }
    }

    pub(super) fn recv_end(&mut self, rid: &str) -> Result<StreamSummary, StreamError> {
        match self {
            Self::Open {
                hash,
                bytes,
                chunks,
            } => {
                let (bytes, chunks) = (*bytes, *chunks);
                let digest = match hash.take().map(|hash| hash.finish(rid)).transpose() {
                    Ok(digest) => digest,
                    Err(error) => return Err(self.fail(error)),
                };
                *self = Self::Ended { bytes, chunks };
                Ok(StreamSummary {
                    bytes,
                    chunks,
                    checksum_verified: digest.as_ref().is_some_and(|d| d.checksum_verified),
                    sha256: digest.map(|d| d.sha256),
                })
            }
            Self::AwaitingBegin => Err(self.fail(StreamError::NotBegun {
                rid: rid.to_owned(),
            })),
            Self::Failed(error) => Err(error.clone()),
            _ => Err(StreamError::AlreadyEnded {
                rid: rid.to_owned(),
            }),
        }
    }

    pub(super) fn recv_error(
        &mut self,
        rid: &str,
        error: &ErrorResponse,
    ) -> Result<(), StreamError> {
        match self {
            Self::AwaitingBegin | Self::Open { .. } => Err(self.fail(StreamError::PeerError {
                rid: rid.to_owned(),
                code: error.code,
                message: clip_peer_text(&error.message),
            })),
            // Ended: the error is the request's final reply. Failed: the
            // stream already failed and keeps its first cause.
            _ => Ok(()),
        }
    }

    pub(super) fn abort(&mut self, rid: &str) -> Result<(), UsageError> {
        match self {
            Self::AwaitingBegin | Self::Open { .. } => {
                self.fail(StreamError::Aborted {
                    rid: rid.to_owned(),
                });
                Ok(())
            }
            _ => Err(UsageError::StreamNotOpen {
                rid: rid.to_owned(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::{MAX_PEER_TEXT_LEN, sha256_hex};

    fn begin(checksum: &str) -> BeginStream {
        BeginStream {
            checksum: checksum.to_owned(),
            stat: None,
        }
    }

    fn peer_error(message: &str) -> ErrorResponse {
        ErrorResponse {
            message: message.to_owned(),
            code: 7,
            stack: String::new(),
        }
    }

    /// A stream that has seen its begin (no checksum).
    fn open() -> Inner {
        let mut inner = Inner::AwaitingBegin;
        inner.recv_begin("r", &begin(""), true).unwrap();
        inner
    }

    /// A stream that has ended after `data` in one chunk.
    fn ended(data: &'static [u8]) -> Inner {
        let mut inner = open();
        inner
            .recv_chunk("r", Bytes::from_static(data), None)
            .unwrap();
        inner.recv_end("r").unwrap();
        inner
    }

    #[test]
    fn begin_opens_an_awaiting_stream() {
        let mut inner = Inner::AwaitingBegin;
        let started = inner.recv_begin("r", &begin(""), true).unwrap();
        assert_eq!(started.checksum, None);
        assert_eq!(
            inner.view(),
            StreamState::Open {
                bytes: 0,
                chunks: 0
            }
        );
        assert!(inner.is_live());
    }

    #[test]
    fn begin_twice_fails_already_begun() {
        let mut inner = open();
        let error = StreamError::AlreadyBegun { rid: "r".into() };
        assert_eq!(inner.recv_begin("r", &begin(""), true), Err(error.clone()));
        assert_eq!(inner.view(), StreamState::Failed(error));
        assert!(!inner.is_live());
    }

    #[test]
    fn begin_with_malformed_checksum_fails_invalid_checksum() {
        for checksum in ["abc", "not hex", &"g".repeat(64), &"a".repeat(65)] {
            let mut inner = Inner::AwaitingBegin;
            let error = inner.recv_begin("r", &begin(checksum), true).unwrap_err();
            assert_eq!(
                error,
                StreamError::InvalidChecksum {
                    rid: "r".into(),
                    checksum: checksum.into()
                }
            );
            assert_eq!(inner.view(), StreamState::Failed(error));
        }
    }

    #[test]
    fn begin_with_upper_case_checksum_is_normalised() {
        let lower = sha256_hex(b"data");
        let mut inner = Inner::AwaitingBegin;
        let started = inner
            .recv_begin("r", &begin(&lower.to_uppercase()), true)
            .unwrap();
        assert_eq!(started.checksum, Some(lower));
        inner
            .recv_chunk("r", Bytes::from_static(b"data"), None)
            .unwrap();
        assert!(inner.recv_end("r").unwrap().checksum_verified);
    }

    #[test]
    fn begin_after_end_is_already_ended_and_keeps_state() {
        let mut inner = ended(b"x");
        let error = inner.recv_begin("r", &begin(""), true).unwrap_err();
        assert_eq!(error, StreamError::AlreadyEnded { rid: "r".into() });
        assert_eq!(
            inner.view(),
            StreamState::Ended {
                bytes: 1,
                chunks: 1
            }
        );
    }

    #[test]
    fn chunk_returns_the_same_bytes_without_copy() {
        let mut inner = open();
        let data = Bytes::from(vec![1u8; 100]);
        let back = inner.recv_chunk("r", data.clone(), None).unwrap();
        assert_eq!((back.as_ptr(), back.len()), (data.as_ptr(), 100));
        inner.recv_chunk("r", Bytes::new(), None).unwrap();
        assert_eq!(
            inner.view(),
            StreamState::Open {
                bytes: 100,
                chunks: 2
            }
        );
    }

    #[test]
    fn chunk_before_begin_fails_not_begun() {
        let mut inner = Inner::AwaitingBegin;
        let error = StreamError::NotBegun { rid: "r".into() };
        assert_eq!(
            inner.recv_chunk("r", Bytes::new(), None),
            Err(error.clone())
        );
        assert_eq!(inner.view(), StreamState::Failed(error));
    }

    #[test]
    fn chunk_past_the_limit_fails_too_large() {
        let mut inner = open();
        inner
            .recv_chunk("r", Bytes::from_static(b"0123456789"), Some(10))
            .unwrap();
        let error = StreamError::TooLarge {
            rid: "r".into(),
            total: 11,
            limit: 10,
        };
        assert_eq!(
            inner.recv_chunk("r", Bytes::from_static(b"x"), Some(10)),
            Err(error.clone())
        );
        assert_eq!(inner.view(), StreamState::Failed(error));
    }

    #[test]
    fn chunk_overflowing_u64_fails_too_large() {
        let mut inner = Inner::Open {
            hash: Some(PayloadHash::default()),
            bytes: u64::MAX - 1,
            chunks: 9,
        };
        let error = inner
            .recv_chunk("r", Bytes::from_static(b"xy"), None)
            .unwrap_err();
        let too_large = StreamError::TooLarge {
            rid: "r".into(),
            total: u64::MAX,
            limit: u64::MAX,
        };
        assert_eq!(error, too_large);
    }

    #[test]
    fn chunk_after_end_is_already_ended() {
        let mut inner = ended(b"x");
        let error = inner
            .recv_chunk("r", Bytes::from_static(b"late"), None)
            .unwrap_err();
        assert_eq!(error, StreamError::AlreadyEnded { rid: "r".into() });
        assert_eq!(
            inner.view(),
            StreamState::Ended {
                bytes: 1,
                chunks: 1
            }
        );
    }

    #[test]
    fn end_without_checksum_reports_an_unverified_digest() {
        let mut inner = open();
        inner
            .recv_chunk("r", Bytes::from_static(b"ab"), None)
            .unwrap();
        inner
            .recv_chunk("r", Bytes::from_static(b"c"), None)
            .unwrap();
        let summary = inner.recv_end("r").unwrap();
        let expected = StreamSummary {
            bytes: 3,
            chunks: 2,
            sha256: Some(sha256_hex(b"abc")),
            checksum_verified: false,
        };
        assert_eq!(summary, expected);
        assert_eq!(
            inner.view(),
            StreamState::Ended {
                bytes: 3,
                chunks: 2
            }
        );
    }

    #[test]
    fn end_with_matching_checksum_is_verified() {
        let mut inner = Inner::AwaitingBegin;
        inner
            .recv_begin("r", &begin(&sha256_hex(b"")), true)
            .unwrap();
        assert!(inner.recv_end("r").unwrap().checksum_verified);
    }

    #[test]
    fn without_hashing_the_end_leaves_the_check_to_the_payload_hash() {
        let mut inner = Inner::AwaitingBegin;
        let started = inner
            .recv_begin("r", &begin(&sha256_hex(b"abc")), false)
            .unwrap();
        let mut hash = started.payload_hash();
        let data = inner
            .recv_chunk("r", Bytes::from_static(b"abd"), None)
            .unwrap();
        hash.update(&data);
        let summary = inner.recv_end("r").unwrap();
        assert_eq!(summary.sha256, None);
        assert!(!summary.checksum_verified);
        assert!(matches!(
            hash.finish("r"),
            Err(StreamError::ChecksumMismatch { .. })
        ));
    }

    #[test]
    fn end_with_wrong_checksum_fails_mismatch() {
        let mut inner = Inner::AwaitingBegin;
        inner
            .recv_begin("r", &begin(&sha256_hex(b"abc")), true)
            .unwrap();
        inner
            .recv_chunk("r", Bytes::from_static(b"abd"), None)
            .unwrap();
        let error = StreamError::ChecksumMismatch {
            rid: "r".into(),
            expected: sha256_hex(b"abc"),
            actual: sha256_hex(b"abd"),
        };
        assert_eq!(inner.recv_end("r"), Err(error.clone()));
        assert_eq!(inner.view(), StreamState::Failed(error));
    }

    #[test]
    fn end_before_begin_fails_not_begun() {
        let mut inner = Inner::AwaitingBegin;
        let error = StreamError::NotBegun { rid: "r".into() };
        assert_eq!(inner.recv_end("r"), Err(error.clone()));
        assert_eq!(inner.view(), StreamState::Failed(error));
    }

    #[test]
    fn end_twice_is_already_ended() {
        let mut inner = ended(b"");
        assert_eq!(
            inner.recv_end("r"),
            Err(StreamError::AlreadyEnded { rid: "r".into() })
        );
    }

    #[test]
    fn error_fails_a_live_stream_with_the_peer_message() {
        for mut inner in [Inner::AwaitingBegin, open()] {
            let error = StreamError::PeerError {
                rid: "r".into(),
                code: 7,
                message: "not found".into(),
            };
            assert_eq!(
                inner.recv_error("r", &peer_error("not found")),
                Err(error.clone())
            );
            assert_eq!(inner.view(), StreamState::Failed(error));
        }
    }

    #[test]
    fn error_after_end_is_the_final_reply() {
        let mut inner = ended(b"x");
        assert_eq!(inner.recv_error("r", &peer_error("late")), Ok(()));
        assert_eq!(
            inner.view(),
            StreamState::Ended {
                bytes: 1,
                chunks: 1
            }
        );
    }

    #[test]
    fn peer_error_message_is_clipped() {
        let mut inner = open();
        let long = "m".repeat(MAX_PEER_TEXT_LEN * 4);
        let Err(StreamError::PeerError { message, .. }) = inner.recv_error("r", &peer_error(&long))
        else {
            panic!("expected PeerError");
        };
        assert_eq!(message.len(), MAX_PEER_TEXT_LEN + 3);
    }

    #[test]
    fn failed_stream_repeats_its_first_error() {
        let mut inner = Inner::AwaitingBegin;
        let first = inner.recv_chunk("r", Bytes::new(), None).unwrap_err();
        assert_eq!(inner.recv_begin("r", &begin(""), true), Err(first.clone()));
        assert_eq!(
            inner.recv_chunk("r", Bytes::new(), None),
            Err(first.clone())
        );
        assert_eq!(inner.recv_end("r"), Err(first.clone()));
        assert_eq!(inner.recv_error("r", &peer_error("x")), Ok(()));
        assert_eq!(
            inner.abort("r"),
            Err(UsageError::StreamNotOpen { rid: "r".into() })
        );
        assert_eq!(inner.view(), StreamState::Failed(first));
    }

    #[test]
    fn abort_fails_a_live_stream_as_aborted() {
        for mut inner in [Inner::AwaitingBegin, open()] {
            inner.abort("r").unwrap();
            let aborted = StreamError::Aborted { rid: "r".into() };
            assert_eq!(inner.view(), StreamState::Failed(aborted.clone()));
            assert_eq!(inner.recv_chunk("r", Bytes::new(), None), Err(aborted));
        }
    }

    #[test]
    fn abort_after_end_is_usage_error() {
        let mut inner = ended(b"");
        assert_eq!(
            inner.abort("r"),
            Err(UsageError::StreamNotOpen { rid: "r".into() })
        );
    }
}
