//! Per-connection sequence reordering: [`ReorderBuffer`].
//!
//! Each side numbers the envelopes it sends on one connection, starting at 0 and adding 1 per
//! envelope, stream chunks included (PROTOCOL.md "Sequence numbers"). The receiver must process
//! them in that order. [`ReorderBuffer::push`] takes envelopes as they arrive and
//! [`ReorderBuffer::pop`] hands them back in seq order. Every [`SeqError`] is fatal for the
//! connection.
//!
//! # The window
//!
//! `n` is [`next_expected`](ReorderBuffer::next_expected), the lowest seq not received yet, and
//! `w` is [`ReorderConfig::window`]:
//!
//! ```text
//!   ..., n-w-1 | n-w, ..., n-1 | n | n+1, ..., n+w-1 | n+w, ...
//!      Stale   |   Duplicate   |  accepted (held)    | WindowExceeded
//!              |<--- w seqs -->|<----- w seqs ------>|
//!                                ^ next_expected(): a gap when n+1.. are held
//! ```
//!
//! A seq in `(n, n+w)` that is held already is a Duplicate too. The accepted range starts at the
//! oldest item not popped yet: a caller that leaves `k` items unpopped shrinks it to
//! `n+w-k-1`, so at most `w` items are ever held. The Duplicate range covers received seqs
//! only; seqs before [`ReorderConfig::first_seq`] were never received and are Stale.
//!
//! | arriving seq (`k` items not popped yet)     | outcome                                     |
//! |---------------------------------------------|---------------------------------------------|
//! | `n`, and `k == 0`                           | O(1), into a single slot, no allocation     |
//! | `n`, and `k > 0`                            | held; `n` then advances past held seqs      |
//! | in `(n, n+w-k)`, not held yet               | held until the gap below it fills           |
//! | in `(n, n+w-k)`, held already               | [`SeqError::Duplicate`]                     |
//! | `n+w-k` up to `n+2^30-1`                    | [`SeqError::WindowExceeded`]                |
//! | in `[n-w, n)` and received                  | [`SeqError::Duplicate`]                     |
//! | any other                                   | [`SeqError::Stale`]                         |
//! | negative                                    | [`SeqError::Negative`]                      |
//! | held bytes would pass the limit             | [`SeqError::BytesExceeded`]                 |
//! | (`handle_timeout`) a gap open too long      | [`SeqError::GapTimeout`]                    |
//!
//! # Wrap-around
//!
//! seq is an `int32` that is never negative on the wire, and neither reference implementation
//! says what follows `i32::MAX` (PROTOCOL.md). Here the successor of `i32::MAX` is 0
//! ([`seq_successor`]) and seqs are compared by their distance modulo 2^31: a seq up to 2^30
//! ahead of `n` is "ahead", anything else is "behind". Internally positions are counted in a
//! `u64` from [`ReorderConfig::first_seq`], which cannot wrap within the life of a connection.
//!
//! # Memory
//!
//! An idle buffer owns no heap memory: the held map and the gap-timer queue are released as soon
//! as they empty. Held items are bounded by count (`window`) and by the byte sizes the caller
//! reports (`max_buffered_bytes`). After an error the buffer drops everything it held and
//! returns that same error from every later call (sticky).

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// Number of distinct seqs: seq runs over `0..=i32::MAX` and then wraps to 0.
const SEQ_SPACE: u64 = 1 << 31;
/// A seq less than this far ahead of `next_expected` is ahead of it; anything else is behind.
const HALF_SPACE: u64 = 1 << 30;

/// Default [`ReorderConfig::window`]: 1024 held envelopes, ten times the 100 out-of-order
/// envelopes the Node reference holds, so a peer that Node accepts is never refused here.
pub const DEFAULT_WINDOW: usize = 1024;

/// Largest accepted [`ReorderConfig::window`]: half the seq space, the most that modulo-2^31
/// comparison can tell apart from "behind".
pub const MAX_WINDOW: usize = 1 << 30;

/// Default [`ReorderConfig::max_buffered_bytes`]: 64 MiB, room for a full window of 64 KiB
/// envelopes or eight 8 MiB frames.
pub const DEFAULT_MAX_BUFFERED_BYTES: usize = 64 * 1024 * 1024;

/// Default [`ReorderConfig::gap_timeout`]: 30 s. Stream transports never reorder, so a gap means
/// a lost or skipped seq; 30 s is the Rust client's request timeout, after which every request
/// stuck behind the gap has already failed on the peer's side.
pub const DEFAULT_GAP_TIMEOUT: Duration = Duration::from_secs(30);

/// The seq that follows `seq`: `seq + 1`, and 0 after `i32::MAX`.
///
/// Meant for valid (non-negative) seqs; the sending side numbers envelopes with it too.
#[must_use]
pub fn seq_successor(seq: i32) -> i32 {
    seq.wrapping_add(1) & i32::MAX
}

/// An invalid [`ReorderConfig`] value, refused by its setter.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReorderConfigError {
    /// The window must hold at least one seq and at most [`MAX_WINDOW`].
    #[error("reorder window {window} is out of range, allowed 1..={max}")]
    WindowOutOfRange {
        /// The refused window.
        window: usize,
        /// The largest allowed window.
        max: usize,
    },
    /// A byte limit of 0 would refuse every non-empty envelope.
    #[error("max_buffered_bytes of 0 would refuse every envelope, allowed 1..")]
    ZeroByteLimit,
    /// Seqs on the wire are never negative.
    #[error("first seq {seq} is negative, allowed 0..={max}", max = i32::MAX)]
    NegativeFirstSeq {
        /// The refused first seq.
        seq: i32,
    },
    /// A zero gap timeout would fail every gap at once; `None` disables the timer.
    #[error("gap timeout of 0 would fail on every gap; use None to disable the timer")]
    ZeroGapTimeout,
}

/// Limits of a [`ReorderBuffer`]: `Default` plus validating setters.
///
/// ```
/// use openiap_wire::reorder::ReorderConfig;
/// use std::time::Duration;
///
/// let mut config = ReorderConfig::default();
/// config.set_window(100)?.set_gap_timeout(Some(Duration::from_secs(5)))?;
/// assert_eq!(config.window(), 100);
/// assert!(config.set_window(0).is_err());
/// # Ok::<(), openiap_wire::reorder::ReorderConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReorderConfig {
    window: usize,
    max_buffered_bytes: usize,
    first_seq: i32,
    gap_timeout: Option<Duration>,
}

impl Default for ReorderConfig {
    fn default() -> Self {
        Self {
            window: DEFAULT_WINDOW,
            max_buffered_bytes: DEFAULT_MAX_BUFFERED_BYTES,
            first_seq: 0,
            gap_timeout: Some(DEFAULT_GAP_TIMEOUT),
        }
    }
}

impl ReorderConfig {
    /// Most items held at once, counting from the oldest one not popped yet
    /// (default [`DEFAULT_WINDOW`]). Also the span below `next_expected` in which an old seq is
    /// reported as [`SeqError::Duplicate`] rather than [`SeqError::Stale`].
    pub fn window(&self) -> usize {
        self.window
    }

    /// Sets [`window`](Self::window); refuses 0 and anything above [`MAX_WINDOW`].
    pub fn set_window(&mut self, window: usize) -> Result<&mut Self, ReorderConfigError> {
        if window == 0 || window > MAX_WINDOW {
            return Err(ReorderConfigError::WindowOutOfRange {
                window,
                max: MAX_WINDOW,
            });
        }
        self.window = window;
        Ok(self)
    }

    /// Most bytes held at once, summing the sizes passed to `push`
    /// (default [`DEFAULT_MAX_BUFFERED_BYTES`]).
    pub fn max_buffered_bytes(&self) -> usize {
        self.max_buffered_bytes
    }

    /// Sets [`max_buffered_bytes`](Self::max_buffered_bytes); refuses 0.
    pub fn set_max_buffered_bytes(
        &mut self,
        limit: usize,
    ) -> Result<&mut Self, ReorderConfigError> {
        if limit == 0 {
            return Err(ReorderConfigError::ZeroByteLimit);
        }
        self.max_buffered_bytes = limit;
        Ok(self)
    }

    /// The seq of the peer's first envelope (default 0, as both reference implementations).
    pub fn first_seq(&self) -> i32 {
        self.first_seq
    }

    /// Sets [`first_seq`](Self::first_seq); refuses a negative seq.
    pub fn set_first_seq(&mut self, seq: i32) -> Result<&mut Self, ReorderConfigError> {
        if seq < 0 {
            return Err(ReorderConfigError::NegativeFirstSeq { seq });
        }
        self.first_seq = seq;
        Ok(self)
    }

    /// How long a gap may stay open before [`ReorderBuffer::handle_timeout`] fails with
    /// [`SeqError::GapTimeout`]; `None` disables the timer (default [`DEFAULT_GAP_TIMEOUT`]).
    pub fn gap_timeout(&self) -> Option<Duration> {
        self.gap_timeout
    }

    /// Sets [`gap_timeout`](Self::gap_timeout); refuses `Some(Duration::ZERO)`.
    pub fn set_gap_timeout(
        &mut self,
        timeout: Option<Duration>,
    ) -> Result<&mut Self, ReorderConfigError> {
        if timeout == Some(Duration::ZERO) {
            return Err(ReorderConfigError::ZeroGapTimeout);
        }
        self.gap_timeout = timeout;
        Ok(self)
    }
}

/// A peer's seq broke the ordering rules; every variant is fatal for the connection.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SeqError {
    /// The seq was received already: it is held, or it was delivered within the last `window`
    /// seqs below `next_expected`.
    #[error("duplicate seq {seq}: received already")]
    Duplicate {
        /// The repeated seq.
        seq: i32,
    },
    /// The seq is behind `next_expected` by more than the window, or was never received.
    #[error("stale seq {seq}: expected {expected} or later")]
    Stale {
        /// The refused seq.
        seq: i32,
        /// The lowest seq not received yet.
        expected: i32,
    },
    /// Seqs on the wire are never negative.
    #[error("negative seq {seq}, allowed 0..={max}", max = i32::MAX)]
    Negative {
        /// The refused seq.
        seq: i32,
    },
    /// The seq is too far ahead: holding it would pass the window.
    #[error("seq {seq} is too far ahead of expected seq {expected}, window {window}")]
    WindowExceeded {
        /// The refused seq.
        seq: i32,
        /// The lowest seq not received yet.
        expected: i32,
        /// The configured window.
        window: usize,
    },
    /// Holding the envelope would pass the byte limit.
    #[error("holding {held} bytes would exceed the limit of {limit}")]
    BytesExceeded {
        /// Bytes that would be held with the refused envelope (saturating).
        held: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The gap at `expected` stayed open longer than the gap timeout.
    #[error("seq {expected} still missing after {waited:?}, newer envelopes waiting")]
    GapTimeout {
        /// The missing seq.
        expected: i32,
        /// How long the oldest envelope behind the gap has waited.
        waited: Duration,
    },
}

/// One held item and the size the caller reported for it.
#[derive(Debug)]
struct Slot<T> {
    item: T,
    size: usize,
}

/// Reorders one connection's incoming items by seq (see the [module docs](self)).
///
/// ```
/// use openiap_wire::reorder::{ReorderBuffer, ReorderConfig};
/// use std::time::Instant;
///
/// let now = Instant::now();
/// let mut buf = ReorderBuffer::new(ReorderConfig::default());
/// buf.push(1, "b", 1, now)?;
/// assert_eq!(buf.pop(), None); // 0 is missing
/// buf.push(0, "a", 1, now)?;
/// assert_eq!(buf.pop(), Some("a"));
/// assert_eq!(buf.pop(), Some("b"));
/// assert_eq!(buf.next_expected(), 2);
/// # Ok::<(), openiap_wire::reorder::SeqError>(())
/// ```
#[derive(Debug)]
pub struct ReorderBuffer<T> {
    config: ReorderConfig,
    /// Position (count from `first_seq`) of the next item `pop` returns.
    deliver: u64,
    /// Position of the lowest seq not received yet; `deliver <= recv`.
    recv: u64,
    /// The item at `deliver` when it arrived in order with nothing waiting: the O(1) path.
    ready: Option<Slot<T>>,
    /// Every other held item by position: `[deliver, recv)` not popped yet, and `> recv` waiting
    /// behind a gap. Replaced by a fresh (unallocated) map whenever it empties.
    held: BTreeMap<u64, Slot<T>>,
    held_bytes: usize,
    /// (arrival, position) of items held behind a gap, in arrival order; entries with a position
    /// below `recv` are dropped from the front. The front is the oldest open gap's start.
    /// At most `2 * window` entries; empty (unallocated) when `gap_timeout` is `None`.
    arrivals: VecDeque<(Instant, u64)>,
    /// Latest `now` seen; earlier instants are clamped to it.
    latest: Option<Instant>,
    /// Set by the first error; returned by every later call.
    error: Option<SeqError>,
}

impl<T> ReorderBuffer<T> {
    /// An empty buffer expecting [`ReorderConfig::first_seq`]; allocates nothing.
    pub fn new(config: ReorderConfig) -> Self {
        Self {
            config,
            deliver: 0,
            recv: 0,
            ready: None,
            held: BTreeMap::new(),
            held_bytes: 0,
            arrivals: VecDeque::new(),
            latest: None,
            error: None,
        }
    }

    /// The configuration this buffer was built with.
    pub fn config(&self) -> &ReorderConfig {
        &self.config
    }

    /// Accepts `item` carrying `seq`, whose byte size is `size`, received at `now`.
    ///
    /// On error the item is dropped, the buffer releases everything it held and every later
    /// call returns the same error.
    pub fn push(&mut self, seq: i32, item: T, size: usize, now: Instant) -> Result<(), SeqError> {
        if let Some(error) = &self.error {
            return Err(error.clone());
        }
        let now = self.clamp(now);
        let pos = match self.locate(seq) {
            Ok(pos) => pos,
            Err(error) => return Err(self.fail(error)),
        };
        let limit = self.config.max_buffered_bytes;
        let total = self
            .held_bytes
            .checked_add(size)
            .filter(|&total| total <= limit);
        let too_many_bytes = SeqError::BytesExceeded {
            held: self.held_bytes.saturating_add(size),
            limit,
        };
        let slot = Slot { item, size };
        if pos != self.recv {
            let error = match self.held.entry(pos) {
                Entry::Occupied(_) => SeqError::Duplicate { seq },
                Entry::Vacant(vacant) => match total {
                    None => too_many_bytes,
                    Some(total) => {
                        vacant.insert(slot);
                        self.held_bytes = total;
                        if self.config.gap_timeout.is_some() {
                            self.arrivals.push_back((now, pos));
                        }
                        return Ok(());
                    }
                },
            };
            return Err(self.fail(error));
        }
        let Some(total) = total else {
            return Err(self.fail(too_many_bytes));
        };
        self.held_bytes = total;
        if self.ready.is_none() && self.deliver == self.recv {
            self.ready = Some(slot);
        } else {
            self.held.insert(pos, slot);
        }
        self.recv = self.recv.saturating_add(1);
        if !self.held.is_empty() {
            for (&key, _) in self.held.range(self.recv..) {
                if key != self.recv {
                    break;
                }
                self.recv = self.recv.saturating_add(1);
            }
            self.prune_arrivals();
        }
        Ok(())
    }

    /// The next item in seq order, if it has arrived; `None` after an error.
    pub fn pop(&mut self) -> Option<T> {
        if self.error.is_some() {
            return None;
        }
        let slot = match self.ready.take() {
            Some(slot) => slot,
            None => {
                if self.deliver >= self.recv {
                    return None;
                }
                let entry = self.held.first_entry()?;
                if *entry.key() != self.deliver {
                    return None;
                }
                let slot = entry.remove();
                if self.held.is_empty() {
                    // An emptied BTreeMap keeps its root node; drop it so idle costs nothing.
                    self.held = BTreeMap::new();
                }
                slot
            }
        };
        self.deliver = self.deliver.saturating_add(1);
        self.held_bytes = self.held_bytes.saturating_sub(slot.size);
        Some(slot.item)
    }

    /// The lowest seq not received yet.
    pub fn next_expected(&self) -> i32 {
        self.wire_seq(self.recv)
    }

    /// Items held: received and not popped yet (0 after an error).
    pub fn held(&self) -> usize {
        self.held.len() + usize::from(self.ready.is_some())
    }

    /// Sum of the sizes of the held items (0 after an error).
    pub fn held_bytes(&self) -> usize {
        self.held_bytes
    }

    /// The error that failed this buffer, if any.
    pub fn error(&self) -> Option<&SeqError> {
        self.error.as_ref()
    }

    /// When the oldest open gap times out: `None` without a gap, without a gap timeout, or
    /// after an error.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.error.is_some() {
            return None;
        }
        let timeout = self.config.gap_timeout?;
        let &(opened, _) = self.arrivals.front()?;
        opened.checked_add(timeout)
    }

    /// Fails with [`SeqError::GapTimeout`] once the oldest open gap is older than the gap
    /// timeout at `now`; returns a previous error again.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), SeqError> {
        if let Some(error) = &self.error {
            return Err(error.clone());
        }
        let now = self.clamp(now);
        let (Some(timeout), Some(&(opened, _))) = (self.config.gap_timeout, self.arrivals.front())
        else {
            return Ok(());
        };
        let waited = now.saturating_duration_since(opened);
        if waited < timeout {
            return Ok(());
        }
        let expected = self.next_expected();
        Err(self.fail(SeqError::GapTimeout { expected, waited }))
    }

    /// Maps a seq to its position, or says why it is refused (except a held duplicate ahead).
    fn locate(&self, seq: i32) -> Result<u64, SeqError> {
        if seq < 0 {
            return Err(SeqError::Negative { seq });
        }
        let expected = self.next_expected();
        let window = self.config.window;
        let window_u64 = u64::try_from(window).unwrap_or(u64::MAX);
        let forward = u64::from((seq.wrapping_sub(expected) & i32::MAX).unsigned_abs());
        if forward < HALF_SPACE {
            let pos = self.recv.saturating_add(forward);
            if pos.saturating_sub(self.deliver) >= window_u64 {
                return Err(SeqError::WindowExceeded {
                    seq,
                    expected,
                    window,
                });
            }
            return Ok(pos);
        }
        let back = SEQ_SPACE - forward;
        if back <= window_u64 && back <= self.recv {
            Err(SeqError::Duplicate { seq })
        } else {
            Err(SeqError::Stale { seq, expected })
        }
    }

    /// The wire seq at `pos` positions after `first_seq`.
    fn wire_seq(&self, pos: u64) -> i32 {
        let first = u64::from(self.config.first_seq.unsigned_abs());
        let seq = (first + pos % SEQ_SPACE) % SEQ_SPACE;
        i32::try_from(seq).unwrap_or(0)
    }

    /// Drops gap-timer entries the receive cursor has passed; frees the queue once empty.
    fn prune_arrivals(&mut self) {
        while self
            .arrivals
            .front()
            .is_some_and(|&(_, pos)| pos < self.recv)
        {
            self.arrivals.pop_front();
        }
        if self.arrivals.is_empty() && self.arrivals.capacity() != 0 {
            self.arrivals = VecDeque::new();
        }
    }

    /// Keeps time monotonic: an earlier `now` than one already seen counts as that one.
    fn clamp(&mut self, now: Instant) -> Instant {
        let now = self.latest.map_or(now, |latest| latest.max(now));
        self.latest = Some(now);
        now
    }

    /// Poisons the buffer with `error`, releases what it held, and returns `error`.
    fn fail(&mut self, error: SeqError) -> SeqError {
        self.ready = None;
        self.held = BTreeMap::new();
        self.arrivals = VecDeque::new();
        self.held_bytes = 0;
        self.error = Some(error.clone());
        error
    }
}

/// Fuzz body: applies `data` as operations to a buffer with window 8 and a 64-byte limit and
/// checks its invariants, panicking when one breaks. The first byte picks the first seq (near 0
/// or near `i32::MAX`); then each op byte `b` selects by `b % 8`: 0-3 push `next_expected` plus
/// an offset in `-4..12` (next byte), 4 push a raw little-endian `i32` (next 4 bytes), 5-6 pop
/// until `None`, 7 advance the clock by a byte of seconds and call `handle_timeout`. Pushes use
/// `b >> 3` as the size. Time starts at one `Instant::now()` and only moves by those steps.
#[doc(hidden)]
pub fn fuzz_reorder(data: &[u8]) {
    const WINDOW: usize = 8;
    const LIMIT: usize = 64;
    let Some((&first, mut ops)) = data.split_first() else {
        return;
    };
    let first_seq = match first & 1 {
        0 => i32::from(first >> 1),
        _ => i32::MAX - i32::from(first >> 1),
    };
    let mut config = ReorderConfig::default();
    let valid = config
        .set_window(WINDOW)
        .and_then(|c| c.set_max_buffered_bytes(LIMIT))
        .and_then(|c| c.set_first_seq(first_seq))
        .and_then(|c| c.set_gap_timeout(Some(Duration::from_secs(100))));
    assert!(valid.is_ok(), "fuzz config is valid");
    let mut buf = ReorderBuffer::new(config);
    let mut now = Instant::now();
    let mut next_out = first_seq;
    let mut failed: Option<SeqError> = None;
    while let Some((&op, rest)) = ops.split_first() {
        ops = rest;
        let result = match op % 8 {
            0..=4 => {
                let seq = if op % 8 < 4 {
                    let (&delta, rest) = ops.split_first().unwrap_or((&0, &[]));
                    ops = rest;
                    buf.next_expected().wrapping_add(i32::from(delta % 16) - 4) & i32::MAX
                } else {
                    let mut raw = [0u8; 4];
                    for byte in &mut raw {
                        let (&b, rest) = ops.split_first().unwrap_or((&0, &[]));
                        (*byte, ops) = (b, rest);
                    }
                    i32::from_le_bytes(raw)
                };
                let before = buf.held();
                let result = buf.push(seq, seq, usize::from(op >> 3), now);
                if result.is_ok() {
                    assert_eq!(buf.held(), before + 1, "an accepted push is held");
                }
                result
            }
            5 | 6 => {
                while let Some(seq) = buf.pop() {
                    assert_eq!(seq, next_out, "delivered out of order");
                    next_out = seq_successor(seq);
                }
                Ok(())
            }
            _ => {
                let (&secs, rest) = ops.split_first().unwrap_or((&0, &[]));
                ops = rest;
                let step = Duration::from_secs(secs.into());
                now = now.checked_add(step).unwrap_or(now);
                let deadline = buf.poll_timeout();
                let result = buf.handle_timeout(now);
                if failed.is_none() {
                    let due = deadline.is_some_and(|deadline| deadline <= now);
                    assert_eq!(due, result.is_err(), "GapTimeout exactly when due");
                }
                result
            }
        };
        match (&failed, result) {
            (Some(sticky), result) if !matches!(op % 8, 5 | 6) => {
                assert_eq!(result, Err(sticky.clone()), "sticky");
            }
            (None, Err(error)) => failed = Some(error),
            _ => {}
        }
        assert_eq!(buf.error(), failed.as_ref(), "error is sticky");
        assert!(buf.held() <= WINDOW, "held {} > window", buf.held());
        assert!(buf.held_bytes() <= LIMIT, "held {} bytes", buf.held_bytes());
        if failed.is_some() {
            assert_eq!((buf.held(), buf.held_bytes(), buf.pop()), (0, 0, None));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use SeqError::{BytesExceeded, Duplicate, GapTimeout, Negative, Stale, WindowExceeded};
    use proptest::prelude::*;

    type Buf = ReorderBuffer<i32>;
    const SEC: Duration = Duration::from_secs(1);
    const GAP: Duration = DEFAULT_GAP_TIMEOUT;

    fn config(window: usize, first_seq: i32) -> ReorderConfig {
        let mut config = ReorderConfig::default();
        config.set_window(window).unwrap();
        config.set_first_seq(first_seq).unwrap();
        config
    }

    fn buffer(window: usize) -> Buf {
        Buf::new(config(window, 0))
    }

    /// Pushes `seq` as its own item, size 1, at `t0 + secs` seconds.
    fn push_at(buf: &mut Buf, seq: i32, t0: Instant, secs: u32) -> Result<(), SeqError> {
        buf.push(seq, seq, 1, t0 + SEC * secs)
    }

    fn push(buf: &mut Buf, seq: i32) -> Result<(), SeqError> {
        buf.push(seq, seq, 1, Instant::now())
    }

    fn push_all(buf: &mut Buf, seqs: impl IntoIterator<Item = i32>) {
        seqs.into_iter().for_each(|seq| push(buf, seq).unwrap());
    }

    fn drain(buf: &mut Buf) -> Vec<i32> {
        std::iter::from_fn(|| buf.pop()).collect()
    }

    /// A buffer that has received and delivered `0..n`.
    fn delivered(window: usize, n: i32) -> Buf {
        let mut buf = buffer(window);
        (0..n).for_each(|seq| {
            push(&mut buf, seq).unwrap();
            assert_eq!(buf.pop(), Some(seq));
        });
        buf
    }

    #[test]
    fn in_order_push_uses_the_ready_slot_only() {
        let mut buf = buffer(4);
        for seq in 0..10_000 {
            push(&mut buf, seq).unwrap();
            assert!(buf.ready.is_some() && buf.held.is_empty());
            assert_eq!(buf.pop(), Some(seq));
        }
        let state = (buf.arrivals.capacity(), buf.held(), buf.next_expected());
        assert_eq!(state, (0, 0, 10_000));
    }

    #[test]
    fn pop_on_empty_buffer_returns_none() {
        assert_eq!(buffer(4).pop(), None);
    }

    #[test]
    fn out_of_order_items_wait_for_the_gap() {
        let mut buf = buffer(4);
        push_all(&mut buf, [2, 1]);
        assert_eq!((buf.pop(), buf.held(), buf.next_expected()), (None, 2, 0));
        push(&mut buf, 0).unwrap();
        assert_eq!((buf.next_expected(), drain(&mut buf)), (3, vec![0, 1, 2]));
    }

    #[test]
    fn unpopped_in_order_items_stay_in_order() {
        let mut buf = buffer(4);
        push_all(&mut buf, [0, 1, 3, 2]);
        assert_eq!((buf.held(), buf.held_bytes()), (4, 4));
        assert_eq!(drain(&mut buf), vec![0, 1, 2, 3]);
    }

    #[test]
    fn idle_buffer_releases_memory_after_reordering() {
        let mut buf = buffer(128);
        push_all(&mut buf, (0..100).rev());
        assert_eq!(drain(&mut buf), (0..100).collect::<Vec<_>>());
        assert!(buf.held.is_empty() && buf.arrivals.capacity() == 0);
        assert_eq!(buf.poll_timeout(), None);
        // Inline, an idle buffer is one item slot plus a few words: nothing pre-sized.
        let envelope = size_of::<crate::proto::Envelope>();
        assert!(size_of::<ReorderBuffer<crate::proto::Envelope>>() <= envelope + 256);
    }

    #[test]
    fn duplicate_of_held_seq() {
        let mut buf = buffer(4);
        push(&mut buf, 2).unwrap();
        assert_eq!(push(&mut buf, 2), Err(Duplicate { seq: 2 }));
    }

    #[test]
    fn duplicate_of_unpopped_seq() {
        let mut buf = buffer(4);
        push(&mut buf, 0).unwrap();
        assert_eq!(push(&mut buf, 0), Err(Duplicate { seq: 0 }));
    }

    #[test]
    fn delivered_seq_within_window_is_duplicate() {
        assert_eq!(push(&mut delivered(4, 10), 6), Err(Duplicate { seq: 6 }));
    }

    #[test]
    fn delivered_seq_below_window_is_stale() {
        let stale = Stale {
            seq: 5,
            expected: 10,
        };
        assert_eq!(push(&mut delivered(4, 10), 5), Err(stale));
    }

    #[test]
    fn never_received_seq_behind_start_is_stale() {
        let stale = Stale {
            seq: 4,
            expected: 5,
        };
        assert_eq!(push(&mut Buf::new(config(4, 5)), 4), Err(stale));
        let stale = Stale {
            seq: i32::MAX,
            expected: 0,
        };
        assert_eq!(push(&mut buffer(4), i32::MAX), Err(stale));
    }

    #[test]
    fn negative_seq_is_rejected() {
        assert_eq!(push(&mut buffer(4), -1), Err(Negative { seq: -1 }));
    }

    #[test]
    fn seq_past_the_window_is_rejected() {
        let mut buf = buffer(4);
        push(&mut buf, 3).unwrap();
        let error = WindowExceeded {
            seq: 4,
            expected: 0,
            window: 4,
        };
        assert_eq!(push(&mut buf, 4), Err(error));
        let seq = (1 << 30) - 1;
        let error = WindowExceeded {
            seq,
            expected: 0,
            window: 4,
        };
        assert_eq!(push(&mut buffer(4), seq), Err(error));
    }

    #[test]
    fn window_counts_unpopped_items() {
        let mut buf = buffer(2);
        push_all(&mut buf, [0, 1]);
        let error = WindowExceeded {
            seq: 2,
            expected: 2,
            window: 2,
        };
        assert_eq!(push(&mut buf, 2), Err(error));
    }

    #[test]
    fn seq_half_the_space_ahead_counts_as_behind() {
        let seq = (1 << 30) + 5;
        assert_eq!(push(&mut buffer(4), seq), Err(Stale { seq, expected: 0 }));
    }

    #[test]
    fn bytes_limit_counts_every_held_item() {
        let (mut config, now) = (config(8, 0), Instant::now());
        config.set_max_buffered_bytes(10).unwrap();
        let mut buf = Buf::new(config.clone());
        buf.push(0, 0, 6, now).unwrap();
        assert_eq!(buf.pop(), Some(0));
        buf.push(1, 1, 6, now).unwrap();
        let error = BytesExceeded {
            held: 11,
            limit: 10,
        };
        assert_eq!(buf.push(3, 3, 5, now), Err(error));
        let mut buf = Buf::new(config);
        buf.push(0, 0, 1, now).unwrap();
        let error = BytesExceeded {
            held: usize::MAX,
            limit: 10,
        };
        assert_eq!(buf.push(1, 1, usize::MAX, now), Err(error));
    }

    #[test]
    fn errors_are_sticky_and_release_memory() {
        let mut buf = buffer(4);
        push_all(&mut buf, [0, 2]);
        let error = Duplicate { seq: 2 };
        assert_eq!(push(&mut buf, 2), Err(error.clone()));
        assert_eq!(push(&mut buf, 1), Err(error.clone()));
        let later = Instant::now() + SEC * 3600;
        assert_eq!(buf.handle_timeout(later), Err(error.clone()));
        assert_eq!((buf.pop(), buf.held(), buf.held_bytes()), (None, 0, 0));
        assert_eq!((buf.error(), buf.poll_timeout()), (Some(&error), None));
    }

    #[test]
    fn seq_wraps_from_i32_max_to_zero() {
        let mut buf = Buf::new(config(8, i32::MAX - 1));
        push_all(&mut buf, [i32::MAX, 1, i32::MAX - 1, 0]);
        assert_eq!(drain(&mut buf), vec![i32::MAX - 1, i32::MAX, 0, 1]);
        assert_eq!(buf.next_expected(), 2);
        assert_eq!(push(&mut buf, i32::MAX), Err(Duplicate { seq: i32::MAX }));
        assert_eq!((seq_successor(i32::MAX), seq_successor(0)), (0, 1));
    }

    #[test]
    fn no_gap_means_no_timeout() {
        let mut buf = buffer(4);
        push(&mut buf, 0).unwrap();
        assert_eq!(buf.poll_timeout(), None);
        assert_eq!(buf.handle_timeout(Instant::now() + SEC * 3600), Ok(()));
    }

    #[test]
    fn poll_timeout_reports_the_oldest_gap() {
        let (mut buf, t0) = (buffer(8), Instant::now());
        push_at(&mut buf, 2, t0, 0).unwrap();
        push_at(&mut buf, 3, t0, 5).unwrap();
        assert_eq!(buf.poll_timeout(), Some(t0 + GAP));
    }

    #[test]
    fn gap_deadline_moves_to_the_next_gap() {
        let (mut buf, t0) = (buffer(8), Instant::now());
        for (seq, secs) in [(2, 0), (4, 10), (0, 20), (1, 20)] {
            push_at(&mut buf, seq, t0, secs).unwrap();
        }
        assert_eq!(buf.poll_timeout(), Some(t0 + SEC * 10 + GAP));
        push_at(&mut buf, 3, t0, 21).unwrap();
        assert_eq!(buf.poll_timeout(), None);
    }

    #[test]
    fn gap_open_too_long_times_out() {
        let (mut buf, t0) = (buffer(8), Instant::now());
        push_at(&mut buf, 1, t0, 0).unwrap();
        assert_eq!(buf.handle_timeout(t0 + SEC * 29), Ok(()));
        let error = GapTimeout {
            expected: 0,
            waited: SEC * 30,
        };
        assert_eq!(buf.handle_timeout(t0 + SEC * 30), Err(error));
    }

    #[test]
    fn gap_timer_can_be_disabled() {
        let mut config = config(8, 0);
        config.set_gap_timeout(None).unwrap();
        let (mut buf, t0) = (Buf::new(config), Instant::now());
        push_at(&mut buf, 1, t0, 0).unwrap();
        assert_eq!((buf.poll_timeout(), buf.arrivals.capacity()), (None, 0));
        assert_eq!(buf.handle_timeout(t0 + SEC * 3600), Ok(()));
    }

    #[test]
    fn earlier_now_is_clamped_to_the_latest() {
        let (mut buf, t0) = (buffer(8), Instant::now());
        assert_eq!(buf.handle_timeout(t0 + SEC * 10), Ok(()));
        push_at(&mut buf, 1, t0, 0).unwrap();
        assert_eq!(buf.poll_timeout(), Some(t0 + SEC * 10 + GAP));
    }

    #[test]
    fn config_setters_refuse_invalid_values() {
        use ReorderConfigError::*;
        let mut config = ReorderConfig::default();
        let max = MAX_WINDOW;
        let window = config.set_window(max + 1).err();
        assert_eq!(
            window,
            Some(WindowOutOfRange {
                window: max + 1,
                max
            })
        );
        assert!(config.set_window(0).is_err());
        assert_eq!(config.set_max_buffered_bytes(0).err(), Some(ZeroByteLimit));
        let first = config.set_first_seq(-1).err();
        assert_eq!(first, Some(NegativeFirstSeq { seq: -1 }));
        let zero = config.set_gap_timeout(Some(Duration::ZERO)).err();
        assert_eq!(zero, Some(ZeroGapTimeout));
        assert_eq!(config, ReorderConfig::default());
    }

    #[test]
    fn error_messages_carry_the_numbers() {
        let error = WindowExceeded {
            seq: 2000,
            expected: 5,
            window: 1024,
        };
        let text = "seq 2000 is too far ahead of expected seq 5, window 1024";
        assert_eq!(error.to_string(), text);
        let error = BytesExceeded {
            held: 11,
            limit: 10,
        };
        let text = "holding 11 bytes would exceed the limit of 10";
        assert_eq!(error.to_string(), text);
    }

    #[test]
    fn exercise_fuzz_reorder() {
        fuzz_reorder(&[]);
        // Near the wrap: hold +1, fill the gap, pop, duplicate of a delivered seq, raw -1.
        fuzz_reorder(&[1, 8, 5, 8, 4, 5, 8, 3, 4, 0xFF, 0xFF, 0xFF, 0xFF]);
        // Hold +1, wait 60 s and 60 s more (timeout 100 s), then push once failed.
        fuzz_reorder(&[0, 8, 5, 7, 60, 7, 60, 0, 4]);
        // Too far ahead; too many bytes (31 + 31 + 31 > 64).
        fuzz_reorder(&[0, 0, 15]);
        fuzz_reorder(&[0, 0xF8, 4, 0xF8, 5, 0xF8, 6]);
    }

    /// `0..n` shuffled, for `n` in `1..=max`.
    fn permutation(max: i32) -> impl Strategy<Value = Vec<i32>> {
        (1..=max).prop_flat_map(|n| Just((0..n).collect::<Vec<_>>()).prop_shuffle())
    }

    proptest! {
        #[test]
        fn permutation_within_window_is_delivered_in_order(
            perm in permutation(32),
            first in prop_oneof![Just(0), Just(i32::MAX - 16), 0..=i32::MAX],
            pop_each in any::<bool>(),
        ) {
            let mut buf = Buf::new(config(32, first));
            let mut out = Vec::new();
            for &offset in &perm {
                prop_assert_eq!(push(&mut buf, first.wrapping_add(offset) & i32::MAX), Ok(()));
                if pop_each {
                    out.extend(drain(&mut buf));
                }
            }
            out.extend(drain(&mut buf));
            let n = i32::try_from(perm.len()).unwrap();
            let want: Vec<i32> = (0..n).map(|o| first.wrapping_add(o) & i32::MAX).collect();
            prop_assert_eq!(out, want);
            prop_assert_eq!((buf.held(), buf.held_bytes(), buf.poll_timeout()), (0, 0, None));
        }

        #[test]
        fn duplicate_anywhere_is_rejected(
            perm in permutation(32),
            (dup, at) in (0..32usize, 1..=32usize),
            first in prop_oneof![Just(0), Just(i32::MAX - 16)],
            pop_each in any::<bool>(),
        ) {
            // Inject a copy of perm[dup] at a later index `at` (both reduced into range).
            let dup = dup % perm.len();
            let at = dup + 1 + at % (perm.len() - dup);
            let mut input = perm.clone();
            input.insert(at, perm[dup]);
            let mut buf = Buf::new(config(32, first));
            for (i, &offset) in input.iter().enumerate() {
                let seq = first.wrapping_add(offset) & i32::MAX;
                let result = push(&mut buf, seq);
                if i == at {
                    prop_assert_eq!(result, Err(Duplicate { seq }));
                    break;
                }
                prop_assert_eq!(result, Ok(()));
                if pop_each {
                    drain(&mut buf);
                }
            }
        }

        #[test]
        fn arbitrary_pushes_never_panic(
            ops in prop::collection::vec(
                (prop_oneof![1 => any::<i32>(), 8 => -2..12i32], 0usize..16, any::<bool>()),
                0..200,
            ),
        ) {
            let mut config = config(8, 0);
            config.set_max_buffered_bytes(40).unwrap();
            let mut buf = Buf::new(config);
            for (seq, size, pop) in ops {
                let _ = buf.push(seq, seq, size, Instant::now());
                if pop {
                    buf.pop();
                }
                prop_assert!(buf.held() <= 8 && buf.held_bytes() <= 40);
            }
        }

        #[test]
        fn fuzz_reorder_holds_on_random_bytes(data in prop::collection::vec(any::<u8>(), 0..512)) {
            fuzz_reorder(&data);
        }
    }
}
