//! File transfers: the `beginstream` → `stream`* → `endstream` state machine.
//!
//! An upload or a download moves a file as a run of envelopes that all carry
//! the same `rid`, the id of the `upload` or `download` request:
//!
//! ```text
//!   beginstream(rid, BeginStream { checksum, stat })
//!   stream(rid, Stream { data })          zero or more times
//!   endstream(rid, EndStream or no data)
//!   uploadreply / downloadreply / error   the request's final reply
//! ```
//!
//! This module is sans-IO. The receiving half, [`StreamTable`], keeps one
//! small state machine per rid, hashes chunks with SHA-256 as they pass and
//! hands every chunk back unchanged (the same [`Bytes`](bytes::Bytes), no
//! copy), so the caller writes it wherever it likes; the table never holds
//! payload. The sending half, [`StreamSender`], turns bytes into the ready
//! [`Envelope`](crate::proto::Envelope)s of one transfer.
//!
//! # Receiving: states of one rid
//!
//! ```text
//!                   expect
//!   (untracked) ──────────────► AwaitingBegin
//!        │                           │
//!        │ recv_begin                │ recv_begin
//!        │                           ▼
//!        └─────────────────────────► Open ◄──┐
//!                                    │  │    │ recv_chunk
//!                                    │  └────┘
//!          recv_end, checksum ok     │
//!        ┌───────────────────────────┘
//!        ▼
//!      Ended          Failed(StreamError) ◄── a peer violation, recv_error
//!        │                    │               or abort while AwaitingBegin
//!        └─────────┬──────────┘               or Open
//!                  ▼ evicted once max_closed_streams newer rids have closed
//!             (untracked)
//! ```
//!
//! Every event is one method; a row below is a method, a column the state the
//! rid is in. "→ S" moves the rid to S, `Err(X)` returns an error and leaves
//! the state alone, "→ Failed(X)" stores X and returns it.
//!
//! | event        | untracked                | AwaitingBegin        | Open                                    | Ended                | Failed(e) |
//! |--------------|--------------------------|----------------------|-----------------------------------------|----------------------|-----------|
//! | `expect`     | → AwaitingBegin ¹        | `Err(RidInUse)`      | `Err(RidInUse)`                         | `Err(RidInUse)`      | `Err(RidInUse)` |
//! | `recv_begin` | → Open ¹ ²               | → Open ²             | → Failed(AlreadyBegun)                  | `Err(AlreadyEnded)`  | `Err(e)`  |
//! | `recv_chunk` | `Err(UnknownRid)`        | → Failed(NotBegun)   | → Open, or → Failed(TooLarge)           | `Err(AlreadyEnded)`  | `Err(e)`  |
//! | `recv_end`   | `Err(UnknownRid)`        | → Failed(NotBegun)   | → Ended, or → Failed(ChecksumMismatch)  | `Err(AlreadyEnded)`  | `Err(e)`  |
//! | `recv_error` | `Ok` (not a stream)      | → Failed(PeerError)  | → Failed(PeerError)                     | `Ok` (final reply)   | `Ok`      |
//! | `abort`      | `Err(StreamNotOpen)`     | → Failed(Aborted)    | → Failed(Aborted)                       | `Err(StreamNotOpen)` | `Err(StreamNotOpen)` |
//!
//! ¹ Or `Err(TooManyOpen)` when the table is full, `Err(InvalidRid)` when the
//! rid is empty or too long; the rid stays untracked. ² Or → Failed(InvalidChecksum)
//! when the checksum is neither empty nor 64 hex digits.
//!
//! `expect` and `abort` are local calls and fail with [`UsageError`]; the
//! `recv_*` calls react to the peer and fail with [`StreamError`]. Opening a
//! rid (untracked → AwaitingBegin or Open) counts against
//! [`StreamConfig::max_open_streams`]; `expect` on a full table fails with
//! [`UsageError::TooManyOpen`].
//!
//! ## Bounded memory and late parts
//!
//! AwaitingBegin and Open rids are capped by `max_open_streams`. Ended and
//! Failed rids leave that count at once but stay in a first-in first-out
//! record of the last [`StreamConfig::max_closed_streams`] closed rids, so a
//! chunk or end after the end still gets `AlreadyEnded` and a failed stream
//! keeps answering with its first error. Once evicted, a rid is untracked
//! again: a late part gets `UnknownRid`. The record is kept by count, not
//! until the final reply, because the reply is outside this module's view and
//! a peer that never sends one must not pin memory. Stored strings are
//! bounded: rids by [`MAX_RID_LEN`], peer text in errors by
//! [`MAX_PEER_TEXT_LEN`].
//!
//! ## Checksums
//!
//! `BeginStream.checksum` is either empty (no check, what the server and the
//! Rust client send) or the SHA-256 of the whole file as 64 hex digits (the
//! Node client with `ChecksumCheckFiles`). Upper-case digits are accepted and
//! normalised to lower case: the digest is the same, so accepting them costs
//! no integrity. Anything else is `InvalidChecksum`. The sender always writes
//! lower case, because the Node receiver compares hex strings exactly.
//!
//! ## Node quirks
//!
//! Node upload chunks carry an `Any` with an empty type_url and Node's
//! `endstream` has no data at all. Both are dealt with where envelopes are
//! unpacked; the methods here take already unpacked values and do not care.
//!
//! # Sending: one transfer
//!
//! ```text
//!   Idle ──begin──► Open ──end──► Ended
//!                   │  ▲
//!                   └──┘ chunk / chunks
//! ```
//!
//! | call     | Idle                  | Open                    | Ended                   |
//! |----------|-----------------------|-------------------------|-------------------------|
//! | `begin`  | → Open                | `Err(AlreadyBegun)`     | `Err(AlreadyFinished)`  |
//! | `chunk`, `chunk_parts` | `Err(StreamNotOpen)`  | Open      | `Err(AlreadyFinished)`  |
//! | `chunks` | `Err(StreamNotOpen)`  | Open                    | `Err(AlreadyFinished)`  |
//! | `end`    | `Err(StreamNotOpen)`  | → Ended                 | `Err(AlreadyFinished)`  |
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use openiap_wire::proto::{BeginStream, Stream};
//! use openiap_wire::stream::{StreamConfig, StreamSender, StreamTable, sha256};
//! use prost::Message;
//!
//! let file = Bytes::from(vec![7u8; 600_000]);
//! let config = StreamConfig::default();
//!
//! // Sending side: the envelopes of one upload with request id "u1".
//! let mut sender = StreamSender::new("u1", &config).unwrap();
//! let begin = sender.begin(Some(sha256(&file)), None).unwrap();
//! let chunks: Vec<_> = sender.chunks(file.clone()).unwrap().collect();
//! let _end = sender.end().unwrap();
//! assert_eq!(chunks.len(), 3); // 256 KiB + 256 KiB + the rest
//!
//! // Receiving side: unpack the payloads and feed the table.
//! let mut table = StreamTable::new(config);
//! let payload = begin.data.unwrap().value;
//! table.recv_begin("u1", &BeginStream::decode(payload).unwrap()).unwrap();
//! for envelope in chunks {
//!     let chunk = Stream::decode(envelope.data.unwrap().value).unwrap();
//!     let _to_write: Bytes = table.recv_chunk("u1", chunk.data).unwrap();
//! }
//! let summary = table.recv_end("u1").unwrap();
//! assert_eq!(summary.bytes, 600_000);
//! assert!(summary.checksum_verified);
//! ```

mod error;
mod hash;
mod send;
mod state;
mod table;

pub use self::error::{StreamError, UsageError};
pub use self::hash::{PayloadDigest, PayloadHash};
pub use self::send::{Chunks, SendState, StreamSender};
pub use self::state::{StreamStarted, StreamState, StreamSummary};
pub use self::table::StreamTable;

use std::num::NonZeroUsize;

use sha2::{Digest, Sha256};

/// Command of the envelope that opens a transfer.
pub const BEGIN_STREAM_COMMAND: &str = "beginstream";
/// Command of the envelopes that carry one chunk each.
pub const STREAM_COMMAND: &str = "stream";
/// Command of the envelope that closes a transfer.
pub const END_STREAM_COMMAND: &str = "endstream";

/// Default for [`StreamConfig::max_open_streams`]: 16 concurrent transfers
/// per connection. Neither reference client limits this; a client moves one
/// file per request and rarely has more than a few in flight, so 16 leaves
/// room while capping what a peer can make us track.
pub const DEFAULT_MAX_OPEN_STREAMS: usize = 16;

/// Default for [`StreamConfig::max_closed_streams`]: how many ended or failed
/// rids are remembered so that late parts get a precise error.
pub const DEFAULT_MAX_CLOSED_STREAMS: usize = 64;

/// Default for [`StreamConfig::chunk_size`]: 256 KiB, the Node client's
/// `SendFileHighWaterMark`. The Rust client uses 1 MiB; both are far below the
/// ~10 MiB at which Node's receive buffer starts to corrupt large messages.
pub const DEFAULT_CHUNK_SIZE: NonZeroUsize = match NonZeroUsize::new(256 * 1024) {
    Some(size) => size,
    None => NonZeroUsize::MIN,
};

/// Longest rid, in bytes, that a table or sender accepts. Node ids are up to 9
/// characters and Rust ids are short Sqids strings; 256 bytes is generous and
/// bounds what the closed-stream record stores per entry.
pub const MAX_RID_LEN: usize = 256;

/// Longest peer-supplied text (an error message, a malformed checksum) that a
/// [`StreamError`] keeps, in bytes. Longer text is cut at a character boundary
/// and marked with `...`.
pub const MAX_PEER_TEXT_LEN: usize = 1024;

/// Limits of a [`StreamTable`] and chunk size of a [`StreamSender`].
///
/// `Default` plus `&mut self` setters that chain:
///
/// ```
/// use openiap_wire::stream::StreamConfig;
///
/// let mut config = StreamConfig::default();
/// config.set_max_open_streams(4).set_max_stream_bytes(Some(1 << 30));
/// assert_eq!(config.max_open_streams(), 4);
/// ```
#[derive(Clone, Debug)]
pub struct StreamConfig {
    max_open_streams: usize,
    max_stream_bytes: Option<u64>,
    max_closed_streams: usize,
    chunk_size: NonZeroUsize,
    hash_payload: bool,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            max_open_streams: DEFAULT_MAX_OPEN_STREAMS,
            max_stream_bytes: None,
            max_closed_streams: DEFAULT_MAX_CLOSED_STREAMS,
            chunk_size: DEFAULT_CHUNK_SIZE,
            hash_payload: true,
        }
    }
}

impl StreamConfig {
    /// Most rids that may be awaiting their begin or open at once
    /// (default [`DEFAULT_MAX_OPEN_STREAMS`]). 0 refuses every transfer.
    pub fn max_open_streams(&self) -> usize {
        self.max_open_streams
    }

    /// Sets [`max_open_streams`](Self::max_open_streams).
    pub fn set_max_open_streams(&mut self, max: usize) -> &mut Self {
        self.max_open_streams = max;
        self
    }

    /// Most payload bytes one received stream may carry; `None` (the default)
    /// means no limit.
    ///
    /// The table never buffers payload, so memory does not grow with a
    /// transfer and no cap is needed for safety. A cap is a storage policy
    /// (disk quota) that only the application can choose; neither reference
    /// implementation has one. Even without a cap, a total that would pass
    /// `u64::MAX` fails with `TooLarge`.
    pub fn max_stream_bytes(&self) -> Option<u64> {
        self.max_stream_bytes
    }

    /// Sets [`max_stream_bytes`](Self::max_stream_bytes).
    pub fn set_max_stream_bytes(&mut self, max: Option<u64>) -> &mut Self {
        self.max_stream_bytes = max;
        self
    }

    /// How many ended or failed rids are remembered, oldest evicted first
    /// (default [`DEFAULT_MAX_CLOSED_STREAMS`]). 0 forgets a rid as soon as
    /// it closes, so a late chunk gets `UnknownRid` instead of `AlreadyEnded`.
    pub fn max_closed_streams(&self) -> usize {
        self.max_closed_streams
    }

    /// Sets [`max_closed_streams`](Self::max_closed_streams).
    pub fn set_max_closed_streams(&mut self, max: usize) -> &mut Self {
        self.max_closed_streams = max;
        self
    }

    /// Largest chunk a [`StreamSender`] puts in one `stream` envelope
    /// (default [`DEFAULT_CHUNK_SIZE`]). The envelope adds a few dozen bytes
    /// plus the rid, so keep it below the frame limit of the transport.
    pub fn chunk_size(&self) -> NonZeroUsize {
        self.chunk_size
    }

    /// Sets [`chunk_size`](Self::chunk_size).
    pub fn set_chunk_size(&mut self, size: NonZeroUsize) -> &mut Self {
        self.chunk_size = size;
        self
    }

    /// Whether a [`StreamTable`] hashes received payload and checks it
    /// against the announced checksum at `endstream` (default `true`).
    ///
    /// With `false` the table still enforces the order of the parts and the
    /// size limit, but [`StreamSummary::sha256`] is `None` and
    /// `checksum_verified` is `false`: the application checks the payload
    /// with the [`PayloadHash`] of
    /// [`StreamStarted::payload_hash`], fed where the bytes go anyway. The
    /// reference server and client do that on the thread that writes the
    /// file, so SHA-256 (about 1.8 GB/s on one core) runs beside the
    /// connection instead of in its task.
    pub fn hash_payload(&self) -> bool {
        self.hash_payload
    }

    /// Sets [`hash_payload`](Self::hash_payload).
    pub fn set_hash_payload(&mut self, hash: bool) -> &mut Self {
        self.hash_payload = hash;
        self
    }
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// SHA-256 of `data` as 64 lower-case hex digits, the form
/// `BeginStream.checksum` uses.
pub fn sha256_hex(data: &[u8]) -> String {
    to_hex(&sha256(data))
}

/// Parses a SHA-256 written as 64 hex digits, either case.
pub fn parse_sha256_hex(hex: &str) -> Option<[u8; 32]> {
    let digits = hex.as_bytes();
    if digits.len() != 64 {
        return None;
    }
    let mut digest = [0u8; 32];
    for (byte, pair) in digest.iter_mut().zip(digits.chunks_exact(2)) {
        let [high, low] = pair else { return None };
        *byte = (hex_value(*high)? << 4) | hex_value(*low)?;
    }
    Some(digest)
}

/// Lower-case hex of `bytes`.
fn to_hex(bytes: &[u8]) -> String {
    let mut hex = String::with_capacity(bytes.len().saturating_mul(2));
    for byte in bytes {
        hex.push(hex_digit(byte >> 4));
        hex.push(hex_digit(byte & 0x0f));
    }
    hex
}

fn hex_digit(nibble: u8) -> char {
    match nibble & 0x0f {
        n @ 0..=9 => char::from(b'0' + n),
        n => char::from(b'a' + (n - 10)),
    }
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

/// Checks a rid's length: `Err((len, max))` when it is empty or too long.
fn check_rid(rid: &str) -> Result<(), (usize, usize)> {
    if rid.is_empty() || rid.len() > MAX_RID_LEN {
        Err((rid.len(), MAX_RID_LEN))
    } else {
        Ok(())
    }
}

/// Peer text cut to [`MAX_PEER_TEXT_LEN`] bytes at a character boundary.
fn clip_peer_text(text: &str) -> String {
    if text.len() <= MAX_PEER_TEXT_LEN {
        return text.to_owned();
    }
    let end = (0..=MAX_PEER_TEXT_LEN)
        .rev()
        .find(|&at| text.is_char_boundary(at))
        .unwrap_or(0);
    let mut clipped = text.get(..end).unwrap_or_default().to_owned();
    clipped.push_str("...");
    clipped
}

/// Fuzz body: reads `data` as 3-byte events `(op, rid, size)` and applies
/// them to a table with tiny limits, checking its invariants after each.
///
/// A fuzz target and a unit test call it; it must never panic.
#[doc(hidden)]
pub fn fuzz_stream(data: &[u8]) {
    use crate::proto::{BeginStream, ErrorResponse};
    use bytes::Bytes;

    const RIDS: [&str; 4] = ["a", "b", "c", ""];
    static FILL: [u8; 256] = [0x5a; 256];

    let mut config = StreamConfig::default();
    config
        .set_max_open_streams(2)
        .set_max_stream_bytes(Some(600))
        .set_max_closed_streams(2);
    let mut table = StreamTable::new(config);
    let empty_digest = sha256_hex(&[]);

    for event in data.chunks_exact(3) {
        let &[op, rid, size] = event else { continue };
        let rid = RIDS
            .get(usize::from(rid) % RIDS.len())
            .copied()
            .unwrap_or("a");
        let before = table.state(rid);
        let result = match op % 8 {
            0 => table.expect(rid).map(drop).map_err(|_| ()),
            1 => {
                let checksum = match size % 4 {
                    0 => String::new(),
                    1 => empty_digest.clone(),
                    2 => empty_digest.to_uppercase(),
                    _ => "not hex".to_owned(),
                };
                let begin = BeginStream {
                    checksum,
                    stat: None,
                };
                table.recv_begin(rid, &begin).map(drop).map_err(|_| ())
            }
            2..=4 => {
                let chunk = FILL.get(..usize::from(size)).unwrap_or_default();
                let chunk = Bytes::from_static(chunk);
                match table.recv_chunk(rid, chunk.clone()) {
                    Ok(back) => {
                        assert_eq!(back, chunk, "a chunk must come back unchanged");
                        Ok(())
                    }
                    Err(_) => Err(()),
                }
            }
            5 => table.recv_end(rid).map(drop).map_err(|_| ()),
            6 => {
                let error = ErrorResponse {
                    message: "boom".into(),
                    code: 1,
                    stack: String::new(),
                };
                table.recv_error(rid, &error).map_err(|_| ())
            }
            _ => table.abort(rid).map_err(|_| ()),
        };
        assert!(table.open_streams() <= 2, "open streams above the limit");
        match before {
            Some(StreamState::Failed(error)) => {
                let after = table.state(rid);
                assert_eq!(
                    after,
                    Some(StreamState::Failed(error)),
                    "a failed stream must stay failed"
                );
            }
            Some(StreamState::Ended { .. }) if op % 8 != 6 => {
                assert!(result.is_err(), "a part after the end must be refused");
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_are_documented_values() {
        let config = StreamConfig::default();
        assert_eq!(config.max_open_streams(), 16);
        assert_eq!(config.max_stream_bytes(), None);
        assert_eq!(config.max_closed_streams(), 64);
        assert_eq!(config.chunk_size().get(), 256 * 1024);
    }

    #[test]
    fn config_setters_chain_and_stick() {
        let mut config = StreamConfig::default();
        config
            .set_max_open_streams(3)
            .set_max_stream_bytes(Some(10))
            .set_max_closed_streams(0)
            .set_chunk_size(NonZeroUsize::MIN);
        assert_eq!(config.max_open_streams(), 3);
        assert_eq!(config.max_stream_bytes(), Some(10));
        assert_eq!(config.max_closed_streams(), 0);
        assert_eq!(config.chunk_size().get(), 1);
    }

    #[test]
    fn sha256_hex_matches_known_vectors() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn parse_sha256_hex_accepts_both_cases() {
        let lower = sha256_hex(b"abc");
        assert_eq!(parse_sha256_hex(&lower), Some(sha256(b"abc")));
        assert_eq!(
            parse_sha256_hex(&lower.to_uppercase()),
            Some(sha256(b"abc"))
        );
    }

    #[test]
    fn parse_sha256_hex_rejects_bad_length_and_digits() {
        let good = sha256_hex(b"abc");
        assert_eq!(parse_sha256_hex(""), None);
        assert_eq!(parse_sha256_hex(good.get(..63).unwrap()), None);
        assert_eq!(parse_sha256_hex(&format!("{good}0")), None);
        assert_eq!(
            parse_sha256_hex(&format!("g{}", good.get(1..).unwrap())),
            None
        );
        // 64 bytes but not 64 ASCII digits.
        assert_eq!(
            parse_sha256_hex(&format!("é{}", good.get(2..).unwrap())),
            None
        );
    }

    #[test]
    fn clip_peer_text_cuts_at_char_boundary() {
        let short = "short message";
        assert_eq!(clip_peer_text(short), short);
        let long = "é".repeat(MAX_PEER_TEXT_LEN);
        let clipped = clip_peer_text(&long);
        assert!(clipped.len() <= MAX_PEER_TEXT_LEN + 3);
        assert!(clipped.ends_with("..."));
        assert!(clipped.starts_with("éé"));
    }

    #[test]
    fn check_rid_bounds_length() {
        assert_eq!(check_rid(""), Err((0, MAX_RID_LEN)));
        assert_eq!(check_rid("x"), Ok(()));
        assert_eq!(check_rid(&"x".repeat(MAX_RID_LEN)), Ok(()));
        assert_eq!(
            check_rid(&"x".repeat(MAX_RID_LEN + 1)),
            Err((MAX_RID_LEN + 1, MAX_RID_LEN))
        );
    }

    #[test]
    fn exercise_fuzz_stream() {
        fuzz_stream(&[]);
        fuzz_stream(&[1, 0, 0, 2, 0, 200, 5, 0, 0, 2, 0, 1, 5, 0, 0]);
        // Open past the limit, overflow the size cap, abort, error, rid "".
        fuzz_stream(&[
            0, 0, 0, 1, 1, 0, 1, 2, 0, 2, 1, 255, 3, 1, 255, 4, 1, 255, 7, 0, 0, 6, 1, 0, 1, 3, 3,
            2, 0, 9,
        ]);
        // A deterministic pseudo-random walk over every op.
        let mut state: u32 = 0x1234_5678;
        let bytes: Vec<u8> = (0..30_000)
            .map(|_| {
                state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                (state >> 16) as u8
            })
            .collect();
        fuzz_stream(&bytes);
    }
}
