//! [`StreamTable`]: the received streams of one connection, by rid.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;

use super::state::Inner;
use super::{
    StreamConfig, StreamError, StreamStarted, StreamState, StreamSummary, UsageError, check_rid,
};
use crate::proto::{BeginStream, ErrorResponse};

/// The receiving streams of one connection, keyed by rid.
///
/// Bounded: at most [`StreamConfig::max_open_streams`] rids awaiting their
/// begin or open, plus at most [`StreamConfig::max_closed_streams`] closed
/// rids remembered for late parts. Chunks pass through without being stored.
#[derive(Debug)]
pub struct StreamTable {
    config: StreamConfig,
    streams: HashMap<String, Inner>,
    /// Closed (Ended or Failed) rids, oldest first. Each appears once:
    /// a closed rid never becomes live again while it is tracked.
    closed: VecDeque<String>,
    open: usize,
}

impl Default for StreamTable {
    fn default() -> Self {
        Self::new(StreamConfig::default())
    }
}

impl StreamTable {
    /// An empty table with the given limits.
    pub fn new(config: StreamConfig) -> Self {
        Self {
            config,
            streams: HashMap::new(),
            closed: VecDeque::new(),
            open: 0,
        }
    }

    /// The table's limits.
    pub fn config(&self) -> &StreamConfig {
        &self.config
    }

    /// Registers a rid whose `beginstream` the local side is waiting for:
    /// after sending `download`, or when accepting an `upload` (its stream
    /// parts follow right behind it).
    ///
    /// Optional: [`recv_begin`](Self::recv_begin) also opens untracked rids.
    /// Expecting a rid reserves its slot, and a part that arrives before the
    /// begin is then `NotBegun` rather than `UnknownRid`.
    pub fn expect(&mut self, rid: &str) -> Result<(), UsageError> {
        check_rid(rid).map_err(|(len, max)| UsageError::InvalidRid { len, max })?;
        match self.streams.get(rid) {
            None if self.open < self.config.max_open_streams() => {
                self.streams.insert(rid.to_owned(), Inner::AwaitingBegin);
                self.open = self.open.saturating_add(1);
                Ok(())
            }
            None => Err(UsageError::TooManyOpen {
                max: self.config.max_open_streams(),
            }),
            Some(_) => Err(UsageError::RidInUse {
                rid: rid.to_owned(),
            }),
        }
    }

    /// Handles `beginstream` for `rid`: opens an expected or an untracked rid.
    pub fn recv_begin(
        &mut self,
        rid: &str,
        begin: &BeginStream,
    ) -> Result<StreamStarted, StreamError> {
        let was_expected = self.streams.contains_key(rid);
        if !was_expected {
            check_rid(rid).map_err(|(len, max)| StreamError::InvalidRid { len, max })?;
            if self.open >= self.config.max_open_streams() {
                return Err(StreamError::TooManyOpen {
                    max: self.config.max_open_streams(),
                });
            }
            self.streams.insert(rid.to_owned(), Inner::AwaitingBegin);
            self.open = self.open.saturating_add(1);
        }
        let hash_payload = self.config.hash_payload();
        let started = self.on_stream(
            rid,
            |inner| inner.recv_begin(rid, begin, hash_payload),
            || {
                Err(StreamError::UnknownRid {
                    rid: rid.to_owned(),
                })
            },
        )?;
        Ok(StreamStarted {
            was_expected,
            ..started
        })
    }

    /// Handles one `stream` chunk: counts it, hashes it (unless
    /// [`StreamConfig::hash_payload`] is off) and returns the same
    /// [`Bytes`] (no copy) for the caller to store.
    pub fn recv_chunk(&mut self, rid: &str, data: Bytes) -> Result<Bytes, StreamError> {
        let limit = self.config.max_stream_bytes();
        self.on_stream(
            rid,
            |inner| inner.recv_chunk(rid, data, limit),
            || {
                Err(StreamError::UnknownRid {
                    rid: rid.to_owned(),
                })
            },
        )
    }

    /// Handles `endstream`: checks the announced checksum (when the table
    /// hashes) and closes the stream. The request's final reply is still to come.
    pub fn recv_end(&mut self, rid: &str) -> Result<StreamSummary, StreamError> {
        self.on_stream(
            rid,
            |inner| inner.recv_end(rid),
            || {
                Err(StreamError::UnknownRid {
                    rid: rid.to_owned(),
                })
            },
        )
    }

    /// Handles an `error` envelope whose rid is `rid`.
    ///
    /// `Err(PeerError)` when it failed a stream awaiting its begin or open:
    /// drop what was written and report the error. `Ok(())` when the rid has
    /// no live stream: the error is an ordinary reply (for an ended stream,
    /// the request's final reply) and goes to the pending request.
    pub fn recv_error(&mut self, rid: &str, error: &ErrorResponse) -> Result<(), StreamError> {
        self.on_stream(rid, |inner| inner.recv_error(rid, error), || Ok(()))
    }

    /// Gives up on a stream awaiting its begin or open (a local cancel or a
    /// failed write). It becomes `Failed(Aborted)`; parts still in flight from
    /// the peer get that error.
    pub fn abort(&mut self, rid: &str) -> Result<(), UsageError> {
        self.on_stream(
            rid,
            |inner| inner.abort(rid),
            || {
                Err(UsageError::StreamNotOpen {
                    rid: rid.to_owned(),
                })
            },
        )
    }

    /// The state of `rid`, `None` when it is not tracked.
    pub fn state(&self, rid: &str) -> Option<StreamState> {
        self.streams.get(rid).map(Inner::view)
    }

    /// How many rids are awaiting their begin or open.
    pub fn open_streams(&self) -> usize {
        self.open
    }

    /// The rids awaiting their begin or open, in no particular order (for
    /// cleanup when the connection drops).
    pub fn open_rids(&self) -> impl Iterator<Item = &str> + '_ {
        self.streams
            .iter()
            .filter(|(_, inner)| inner.is_live())
            .map(|(rid, _)| rid.as_str())
    }

    /// Runs `event` on the rid's state, or `untracked` when there is none,
    /// and moves a rid that just closed from the open count to the record.
    fn on_stream<T, E>(
        &mut self,
        rid: &str,
        event: impl FnOnce(&mut Inner) -> Result<T, E>,
        untracked: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, E> {
        let Some(inner) = self.streams.get_mut(rid) else {
            return untracked();
        };
        let was_live = inner.is_live();
        let result = event(inner);
        if was_live && !inner.is_live() {
            self.open = self.open.saturating_sub(1);
            self.closed.push_back(rid.to_owned());
            while self.closed.len() > self.config.max_closed_streams() {
                if let Some(oldest) = self.closed.pop_front() {
                    self.streams.remove(&oldest);
                }
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Stat;
    use crate::stream::{MAX_RID_LEN, sha256_hex};
    use proptest::prelude::*;

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

    fn table(max_open: usize, max_bytes: Option<u64>, max_closed: usize) -> StreamTable {
        let mut config = StreamConfig::default();
        config
            .set_max_open_streams(max_open)
            .set_max_stream_bytes(max_bytes)
            .set_max_closed_streams(max_closed);
        StreamTable::new(config)
    }

    fn open(rid: &str) -> StreamTable {
        let mut table = StreamTable::default();
        table.recv_begin(rid, &begin("")).unwrap();
        table
    }

    fn failed(table: &StreamTable, rid: &str) -> StreamError {
        match table.state(rid) {
            Some(StreamState::Failed(error)) => error,
            other => panic!("expected Failed, found {other:?}"),
        }
    }

    #[test]
    fn expect_registers_awaiting_begin() {
        let mut table = StreamTable::default();
        table.expect("d1").unwrap();
        assert_eq!(table.state("d1"), Some(StreamState::AwaitingBegin));
        assert_eq!(table.open_streams(), 1);
    }

    #[test]
    fn expect_twice_is_rid_in_use() {
        let mut table = StreamTable::default();
        table.expect("d1").unwrap();
        assert_eq!(
            table.expect("d1"),
            Err(UsageError::RidInUse { rid: "d1".into() })
        );
        let mut table = open("u1");
        table.recv_end("u1").unwrap();
        assert_eq!(
            table.expect("u1"),
            Err(UsageError::RidInUse { rid: "u1".into() })
        );
    }

    #[test]
    fn expect_beyond_limit_is_too_many_open() {
        let mut table = table(1, None, 4);
        table.expect("a").unwrap();
        assert_eq!(table.expect("b"), Err(UsageError::TooManyOpen { max: 1 }));
        assert_eq!(table.state("b"), None);
    }

    #[test]
    fn expect_rejects_empty_and_long_rid() {
        let mut table = StreamTable::default();
        assert_eq!(
            table.expect(""),
            Err(UsageError::InvalidRid {
                len: 0,
                max: MAX_RID_LEN
            })
        );
        let long = "r".repeat(MAX_RID_LEN + 1);
        assert_eq!(
            table.expect(&long),
            Err(UsageError::InvalidRid {
                len: MAX_RID_LEN + 1,
                max: MAX_RID_LEN
            })
        );
        assert_eq!(table.open_streams(), 0);
    }

    #[test]
    fn begin_on_expected_rid_opens() {
        let mut table = StreamTable::default();
        table.expect("d1").unwrap();
        let started = table.recv_begin("d1", &begin("")).unwrap();
        assert!(started.was_expected);
        assert_eq!(started.checksum, None);
        assert_eq!(
            table.state("d1"),
            Some(StreamState::Open {
                bytes: 0,
                chunks: 0
            })
        );
        assert_eq!(table.open_streams(), 1);
    }

    #[test]
    fn begin_on_untracked_rid_opens() {
        let mut table = StreamTable::default();
        let stat = Stat {
            size: 3,
            ..Stat::default()
        };
        let started = table
            .recv_begin(
                "u1",
                &BeginStream {
                    checksum: String::new(),
                    stat: Some(stat),
                },
            )
            .unwrap();
        assert!(!started.was_expected);
        assert_eq!(started.stat, Some(stat));
        assert_eq!(table.open_streams(), 1);
    }

    #[test]
    fn begin_beyond_limit_is_too_many_open() {
        let mut table = table(1, None, 4);
        table.recv_begin("a", &begin("")).unwrap();
        assert_eq!(
            table.recv_begin("b", &begin("")),
            Err(StreamError::TooManyOpen { max: 1 })
        );
        assert_eq!(table.state("b"), None);
        // Closing "a" frees its slot.
        table.recv_end("a").unwrap();
        table.recv_begin("b", &begin("")).unwrap();
    }

    #[test]
    fn begin_with_invalid_rid_is_refused() {
        let mut table = StreamTable::default();
        assert_eq!(
            table.recv_begin("", &begin("")),
            Err(StreamError::InvalidRid {
                len: 0,
                max: MAX_RID_LEN
            })
        );
        assert_eq!(table.open_streams(), 0);
    }

    #[test]
    fn begin_with_invalid_checksum_fails_stream() {
        let mut table = StreamTable::default();
        let error = StreamError::InvalidChecksum {
            rid: "u1".into(),
            checksum: "abc".into(),
        };
        assert_eq!(table.recv_begin("u1", &begin("abc")), Err(error.clone()));
        assert_eq!(failed(&table, "u1"), error);
        assert_eq!(table.open_streams(), 0);
    }

    #[test]
    fn chunk_for_untracked_rid_is_unknown_rid() {
        let mut table = StreamTable::default();
        let error = table.recv_chunk("nope", Bytes::new()).unwrap_err();
        assert_eq!(error, StreamError::UnknownRid { rid: "nope".into() });
        assert_eq!(table.state("nope"), None);
    }

    #[test]
    fn chunk_over_limit_is_too_large_and_frees_the_slot() {
        let mut table = table(4, Some(10), 4);
        table.recv_begin("u1", &begin("")).unwrap();
        table
            .recv_chunk("u1", Bytes::from_static(b"0123456789"))
            .unwrap();
        let error = StreamError::TooLarge {
            rid: "u1".into(),
            total: 11,
            limit: 10,
        };
        assert_eq!(
            table.recv_chunk("u1", Bytes::from_static(b"x")),
            Err(error.clone())
        );
        assert_eq!(failed(&table, "u1"), error);
        assert_eq!(table.open_streams(), 0);
    }

    #[test]
    fn end_for_untracked_rid_is_unknown_rid() {
        let mut table = StreamTable::default();
        assert_eq!(
            table.recv_end("x"),
            Err(StreamError::UnknownRid { rid: "x".into() })
        );
    }

    #[test]
    fn error_without_a_live_stream_is_an_ordinary_reply() {
        let mut table = StreamTable::default();
        assert_eq!(table.recv_error("q1", &peer_error("bad query")), Ok(()));
        assert_eq!(table.state("q1"), None);
        let mut table = open("d1");
        table.recv_end("d1").unwrap();
        assert_eq!(table.recv_error("d1", &peer_error("late failure")), Ok(()));
        assert_eq!(
            table.state("d1"),
            Some(StreamState::Ended {
                bytes: 0,
                chunks: 0
            })
        );
    }

    #[test]
    fn abort_without_a_live_stream_is_usage_error() {
        let mut table = open("u1");
        assert_eq!(
            table.abort("x"),
            Err(UsageError::StreamNotOpen { rid: "x".into() })
        );
        table.recv_end("u1").unwrap();
        assert_eq!(
            table.abort("u1"),
            Err(UsageError::StreamNotOpen { rid: "u1".into() })
        );
    }

    #[test]
    fn closed_record_evicts_oldest_first() {
        let mut table = table(4, None, 2);
        for rid in ["a", "b", "c"] {
            table.recv_begin(rid, &begin("")).unwrap();
            table.recv_end(rid).unwrap();
        }
        assert_eq!(table.state("a"), None);
        assert!(table.state("b").is_some());
        assert!(table.state("c").is_some());
        // An evicted rid is untracked again.
        assert_eq!(
            table.recv_chunk("a", Bytes::new()),
            Err(StreamError::UnknownRid { rid: "a".into() })
        );
    }

    #[test]
    fn zero_closed_capacity_forgets_at_once() {
        let mut table = table(4, None, 0);
        table.recv_begin("a", &begin("")).unwrap();
        table.recv_end("a").unwrap();
        assert_eq!(table.state("a"), None);
        assert_eq!(
            table.recv_end("a"),
            Err(StreamError::UnknownRid { rid: "a".into() })
        );
    }

    #[test]
    fn open_rids_lists_only_live_streams() {
        let mut table = StreamTable::default();
        table.expect("a").unwrap();
        table.recv_begin("b", &begin("")).unwrap();
        table.recv_begin("c", &begin("")).unwrap();
        table.recv_end("c").unwrap();
        let mut rids: Vec<_> = table.open_rids().collect();
        rids.sort_unstable();
        assert_eq!(rids, ["a", "b"]);
    }

    /// One table event, quinn `fuzz_targets/streams.rs` style.
    #[derive(Clone, Debug)]
    enum Op {
        Expect(usize),
        Begin(usize, u8),
        Chunk(usize, usize),
        End(usize),
        Error(usize),
        Abort(usize),
    }

    const RIDS: [&str; 4] = ["r0", "r1", "r2", "r3"];

    fn op() -> impl Strategy<Value = Op> {
        let rid = 0..RIDS.len();
        prop_oneof![
            rid.clone().prop_map(Op::Expect),
            (rid.clone(), 0u8..3).prop_map(|(rid, kind)| Op::Begin(rid, kind)),
            (rid.clone(), 0usize..40).prop_map(|(rid, len)| Op::Chunk(rid, len)),
            rid.clone().prop_map(Op::End),
            rid.clone().prop_map(Op::Error),
            rid.prop_map(Op::Abort),
        ]
    }

    impl Op {
        fn rid(&self) -> &'static str {
            let (Self::Expect(index)
            | Self::Begin(index, _)
            | Self::Chunk(index, _)
            | Self::End(index)
            | Self::Error(index)
            | Self::Abort(index)) = self;
            RIDS.get(*index).copied().unwrap_or("r0")
        }
    }

    /// Applies `op`; `true` when the call returned `Ok`.
    fn apply(table: &mut StreamTable, op: &Op) -> bool {
        let rid = op.rid();
        match op {
            Op::Expect(_) => table.expect(rid).is_ok(),
            Op::Begin(_, kind) => {
                let checksum = match kind {
                    0 => String::new(),
                    1 => sha256_hex(b""),
                    _ => "zz".to_owned(),
                };
                table.recv_begin(rid, &begin(&checksum)).is_ok()
            }
            Op::Chunk(_, len) => table.recv_chunk(rid, Bytes::from(vec![3u8; *len])).is_ok(),
            Op::End(_) => table.recv_end(rid).is_ok(),
            Op::Error(_) => table.recv_error(rid, &peer_error("x")).is_ok(),
            Op::Abort(_) => table.abort(rid).is_ok(),
        }
    }

    proptest! {
        #[test]
        fn random_ops_keep_limits_and_failed_streams_stay_failed(
            ops in proptest::collection::vec(op(), 0..80),
            max_open in 0usize..4,
        ) {
            // Closed record larger than any run, so nothing is evicted.
            let mut table = table(max_open, Some(64), 100);
            for op in &ops {
                let name = op.rid();
                let before = table.state(name);
                let ok = apply(&mut table, op);
                prop_assert!(table.open_streams() <= max_open);
                prop_assert_eq!(table.open_streams(), table.open_rids().count());
                if let Some(StreamState::Failed(error)) = before {
                    prop_assert_eq!(table.state(name), Some(StreamState::Failed(error)));
                    prop_assert!(!ok || matches!(op, Op::Error(_)));
                }
                if let Some(StreamState::Failed(error)) = table.state(name) {
                    prop_assert_eq!(error.rid().unwrap_or(name), name);
                }
            }
        }

        #[test]
        fn valid_transfers_always_succeed(
            data in prop_oneof![
                Just(Vec::new()),
                Just(vec![42u8]),
                proptest::collection::vec(any::<u8>(), 0..4096),
            ],
            cuts in proptest::collection::vec(1usize..700, 0..16),
            with_checksum in any::<bool>(),
            expected in any::<bool>(),
            hashing in any::<bool>(),
        ) {
            let mut config = StreamConfig::default();
            config.set_hash_payload(hashing);
            let mut table = StreamTable::new(config);
            if expected {
                table.expect("u").unwrap();
            }
            let checksum = if with_checksum { sha256_hex(&data) } else { String::new() };
            let started = table.recv_begin("u", &begin(&checksum)).unwrap();
            prop_assert_eq!(started.was_expected, expected);
            // The application's hash, as the reference server keeps it.
            let mut hash = started.payload_hash();
            let payload = Bytes::from(data.clone());
            let mut rest = payload.clone();
            let mut chunks = 0u64;
            for cut in cuts {
                let piece = rest.split_to(cut.min(rest.len()));
                let stored = table.recv_chunk("u", piece.clone()).unwrap();
                hash.update(&stored);
                prop_assert_eq!(stored, piece);
                chunks += 1;
            }
            if !rest.is_empty() {
                hash.update(&table.recv_chunk("u", rest).unwrap());
                chunks += 1;
            }
            let summary = table.recv_end("u").unwrap();
            prop_assert_eq!(summary.bytes, data.len() as u64);
            prop_assert_eq!(summary.chunks, chunks);
            prop_assert_eq!(summary.sha256, hashing.then(|| sha256_hex(&data)));
            prop_assert_eq!(summary.checksum_verified, hashing && with_checksum);
            let digest = hash.finish("u").unwrap();
            prop_assert_eq!(digest.sha256, sha256_hex(&data));
            prop_assert_eq!(digest.checksum_verified, with_checksum);
            prop_assert_eq!(table.open_streams(), 0);
        }

        #[test]
        fn tampered_transfer_fails_its_checksum(
            data in proptest::collection::vec(any::<u8>(), 1..2048),
            flip in any::<prop::sample::Index>(),
            bit in 0u8..8,
            hashing in any::<bool>(),
        ) {
            let mut config = StreamConfig::default();
            config.set_hash_payload(hashing);
            let mut table = StreamTable::new(config);
            let started = table.recv_begin("u", &begin(&sha256_hex(&data))).unwrap();
            let mut hash = started.payload_hash();
            let mut tampered = data.clone();
            if let Some(byte) = tampered.get_mut(flip.index(data.len())) {
                *byte ^= 1 << bit;
            }
            hash.update(&table.recv_chunk("u", Bytes::from(tampered)).unwrap());
            let error = if hashing {
                let error = table.recv_end("u").unwrap_err();
                prop_assert_eq!(table.state("u"), Some(StreamState::Failed(error.clone())));
                error
            } else {
                // The table only keeps the order; the application's hash
                // catches the change.
                prop_assert!(table.recv_end("u").is_ok());
                hash.finish("u").unwrap_err()
            };
            let is_mismatch = matches!(error, StreamError::ChecksumMismatch { .. });
            prop_assert!(is_mismatch);
        }
    }
}
