//! [`PayloadHash`]: the SHA-256 of a received payload and its check against
//! the checksum that `beginstream` announced, usable away from the
//! connection (see [`StreamConfig::set_hash_payload`]).
//!
//! [`StreamConfig::set_hash_payload`]: super::StreamConfig::set_hash_payload

use sha2::{Digest, Sha256};

use super::{StreamError, to_hex};

/// The running SHA-256 of one received payload and the digest it must
/// match, if the peer announced one.
///
/// A [`StreamTable`](super::StreamTable) keeps one per open stream unless
/// [`StreamConfig::set_hash_payload`](super::StreamConfig::set_hash_payload)
/// turned that off; then the application takes one from
/// [`StreamStarted::payload_hash`](super::StreamStarted::payload_hash) and
/// feeds it where the bytes go anyway (a writer thread, say), so the
/// connection's task does not hash.
///
/// ```
/// use openiap_wire::stream::{PayloadHash, StreamError, sha256};
///
/// let mut hash = PayloadHash::new(Some(sha256(b"hello")));
/// hash.update(b"hel");
/// hash.update(b"lo");
/// let digest = hash.finish("u1").unwrap();
/// assert!(digest.checksum_verified);
///
/// let mut wrong = PayloadHash::new(Some(sha256(b"hello")));
/// wrong.update(b"jello");
/// assert!(matches!(wrong.finish("u1"), Err(StreamError::ChecksumMismatch { .. })));
/// ```
#[derive(Clone, Debug, Default)]
pub struct PayloadHash {
    hasher: Sha256,
    expected: Option<[u8; 32]>,
}

/// A payload's digest, returned by [`PayloadHash::finish`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PayloadDigest {
    /// SHA-256 of the payload as lower-case hex.
    pub sha256: String,
    /// Whether a digest was announced (and matched). When `false` nobody
    /// vouched for the data.
    pub checksum_verified: bool,
}

impl PayloadHash {
    /// A hash that [`finish`](Self::finish) checks against `expected`
    /// (`None`: nothing announced, nothing to check).
    pub fn new(expected: Option<[u8; 32]>) -> Self {
        Self {
            hasher: Sha256::new(),
            expected,
        }
    }

    /// The digest the payload must hash to, if one was announced.
    pub fn expected(&self) -> Option<[u8; 32]> {
        self.expected
    }

    /// Hashes the next bytes of the payload.
    pub fn update(&mut self, data: &[u8]) {
        self.hasher.update(data);
    }

    /// The payload's digest, checked against the announced one.
    ///
    /// # Errors
    ///
    /// [`StreamError::ChecksumMismatch`] naming `rid` when a digest was
    /// announced and the payload hashes to another.
    pub fn finish(self, rid: &str) -> Result<PayloadDigest, StreamError> {
        let digest: [u8; 32] = self.hasher.finalize().into();
        let sha256 = to_hex(&digest);
        match self.expected {
            Some(want) if want != digest => Err(StreamError::ChecksumMismatch {
                rid: rid.to_owned(),
                expected: to_hex(&want),
                actual: sha256,
            }),
            expected => Ok(PayloadDigest {
                sha256,
                checksum_verified: expected.is_some(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::{sha256, sha256_hex};
    use proptest::prelude::*;

    #[test]
    fn nothing_announced_is_not_verified() {
        let mut hash = PayloadHash::default();
        hash.update(b"abc");
        assert_eq!(
            hash.finish("r"),
            Ok(PayloadDigest {
                sha256: sha256_hex(b"abc"),
                checksum_verified: false,
            })
        );
    }

    #[test]
    fn a_mismatch_names_both_digests() {
        let mut hash = PayloadHash::new(Some(sha256(b"abc")));
        hash.update(b"abd");
        assert_eq!(
            hash.finish("r"),
            Err(StreamError::ChecksumMismatch {
                rid: "r".into(),
                expected: sha256_hex(b"abc"),
                actual: sha256_hex(b"abd"),
            })
        );
    }

    proptest! {
        #[test]
        fn pieces_hash_as_the_whole(data in proptest::collection::vec(any::<u8>(), 0..4096),
                                    cuts in proptest::collection::vec(any::<usize>(), 0..8)) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (data.len() + 1)).collect();
            cuts.sort_unstable();
            let mut hash = PayloadHash::new(Some(sha256(&data)));
            let mut at = 0;
            for cut in cuts.into_iter().chain([data.len()]) {
                hash.update(&data[at..cut]);
                at = cut;
            }
            let digest = hash.finish("r").unwrap();
            prop_assert!(digest.checksum_verified);
            prop_assert_eq!(digest.sha256, sha256_hex(&data));
        }
    }
}
