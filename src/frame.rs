//! Length-delimited framing of Envelopes, sans-IO.
//!
//! Over a TCP socket, a pipe and a WebSocket, every `openiap.Envelope` travels
//! as one frame: a 4-byte unsigned little-endian length, then that many bytes
//! of the encoded Envelope. The length does not count the prefix itself.
//!
//! ```text
//! +----------------------+-------------------------------------------+
//! | length: u32 LE       | body: `length` bytes                      |
//! | (LENGTH_PREFIX_LEN)  | (protobuf encoding of openiap.Envelope)   |
//! +----------------------+-------------------------------------------+
//! ```
//!
//! This module does no IO. [`FrameDecoder`] takes received bytes in chunks of
//! any size (a frame may span many chunks, one chunk may hold many frames) and
//! hands out each frame body as a [`Bytes`] that shares the receive buffer.
//! [`encode_frame`] and [`FrameEncoder`] write prefix and body into one
//! contiguous buffer, so an IO layer needs one write per Envelope.
//!
//! # Decoder states
//!
//! ```text
//!                 4 bytes buffered, len <= max
//!     +------+ -----------------------------------> +-----------+
//!     | Head |                                      | Data(len) |
//!     +------+ <----------------------------------- +-----------+
//!        |        len bytes buffered: yield the body
//!        |
//!        | len > max, or len == 0 under ZeroLengthPolicy::Reject,
//!        | or finish() with bytes left
//!        v
//!   +----------+
//!   | Poisoned |  every later decode()/finish() returns the same error;
//!   +----------+  the buffer is released and later input is discarded
//! ```
//!
//! # Receive buffer
//!
//! The declared length is checked against the limit **before** anything is
//! reserved, and it is never reserved up front: a 4-byte prefix declaring
//! 4 GiB costs nothing. Memory follows the bytes actually received.
//!
//! | event                                   | buffer                                              |
//! |-----------------------------------------|-----------------------------------------------------|
//! | [`push`](FrameDecoder::push), [`read_buf`](FrameDecoder::read_buf) | bytes appended (`read_buf`: at least [`read_step`](FrameConfig::read_step) spare bytes ensured). Room is made by moving the unread bytes to the front of the allocation when the caller holds no frame of it; else a new allocation of twice the unread bytes (at least one read step), **capped at the end of the frame being received** |
//! | [`push_bytes`](FrameDecoder::push_bytes)| adopted without a copy when the decoder holds nothing and the `Bytes` is unique, else appended |
//! | a frame is decoded                      | `split_to(len).freeze()`: the body shares the buffer, no copy |
//! | after a frame, the allocation above both [`shrink_threshold`](FrameConfig::shrink_threshold) and twice the recent frame size, at most `read_step` bytes left | the leftover moves to a fresh buffer of `read_step` bytes (none if nothing is left), so the large allocation is freed once the caller drops its frames |
//! | [`shrink_idle`](FrameDecoder::shrink_idle), when input has stopped | the same move for any allocation above two read steps |
//! | an error                                | buffer released, later input discarded              |
//!
//! A steady run of 64 KiB frames fed in arbitrary pieces therefore lives in
//! one allocation of about one frame, reused frame after frame; with
//! pieces of at most one frame, the allocation never exceeds twice the
//! largest frame (prefix included) or two read steps, whichever is larger
//! (a property test checks it).
//!
//! # Reading large frames
//!
//! A reader that can size its reads (a byte stream) asks
//! [`large_read`](FrameDecoder::large_read) before each read. Inside a frame
//! of at least [`LARGE_FRAME`] bytes whose length prefix was accepted, it
//! answers with the rest of that frame, at most twice what has arrived of
//! it or [`RESERVE_FLOOR`], whichever is larger; reading exactly that much
//! into a buffer with that much room
//!
//! - makes one reservation per frame instead of regrowing the buffer 8, 16,
//!   ... 512 KiB inside it (about 500 KiB copied per 256 KiB frame), and
//! - ends a read at the frame's end, so the decoder frees the buffer with
//!   the frame instead of keeping a large one for a read that straddles
//!   into the next.
//!
//! Memory still follows the bytes received: a prefix that declares a large
//! frame costs at most [`RESERVE_FLOOR`] until its bytes arrive, and a
//! prefix above the limit costs nothing (it is an error).
//!
//! # Zero-length frames
//!
//! A zero-length frame is a valid encoding of an all-default Envelope, and by
//! default ([`ZeroLengthPolicy::Deliver`]) it decodes as an empty [`Bytes`].
//! The Node peer, however, loses sync when it receives one followed by more
//! bytes (PROTOCOL.md, "Framing"), so the encoder never emits one: an
//! all-default Envelope is written as the two bytes `0x0A 0x00` (field 1,
//! `command`, explicitly empty), which still decodes as the all-default
//! Envelope.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::{Message, Name};

use crate::proto::Envelope;

/// Size of the little-endian `u32` length that precedes every frame body.
pub const LENGTH_PREFIX_LEN: usize = 4;

/// Default limit on a frame body, in bytes: 64 MiB.
///
/// The limit bounds what one peer can make us buffer: a frame is only
/// delivered whole, and the receive buffer may reach about twice the largest
/// frame while it grows. 64 MiB is the largest WebSocket message the Rust
/// reference client accepts, so every frame that client can receive also
/// passes here. It is far above what the reference clients send in one
/// Envelope (file chunks are 256 KiB from Node and 1 MiB from Rust), leaving
/// room for large query results, while staying well below the 2 GiB at which
/// the Node parser fails (prefixes of 2^31 and above read as negative).
/// tokio-util (8 MiB) and tonic (4 MiB) choose smaller defaults because they
/// carry arbitrary protocols; raise or lower it with
/// [`FrameConfig::set_max_frame_length`].
pub const DEFAULT_MAX_FRAME_LENGTH: usize = 64 * 1024 * 1024;

/// Default growth step of the receive buffer: 8 KiB.
pub const DEFAULT_READ_STEP: usize = 8 * 1024;

/// Smallest accepted growth step; [`FrameConfig::set_read_step`] raises
/// smaller values to this one.
pub const MIN_READ_STEP: usize = 64;

/// Default [`FrameConfig::shrink_threshold`]: 64 KiB. A receive buffer of
/// this size is always kept; a larger one while it suits the recent frames.
pub const DEFAULT_SHRINK_THRESHOLD: usize = 64 * 1024;

/// Frames at least this long are read with a reservation for their rest
/// (see [`FrameDecoder::large_read`]); smaller ones with the read step.
pub const LARGE_FRAME: usize = 64 * 1024;

/// The most [`FrameDecoder::large_read`] asks for beyond what has arrived
/// of a frame, when that is more than twice what has arrived: one default
/// file chunk (256 KiB) with its envelope.
pub const RESERVE_FLOOR: usize = 256 * 1024 + 1024;

/// The body written for an all-default Envelope instead of a zero-length
/// frame: field 1 (`command`, wire type 2) with length 0.
const EMPTY_ENVELOPE_BODY: [u8; 2] = [0x0A, 0x00];

/// What the decoder does with a frame whose length prefix is zero.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ZeroLengthPolicy {
    /// Deliver it as an empty [`Bytes`], which the envelope layer decodes as
    /// an all-default Envelope (what the Rust reference client does).
    #[default]
    Deliver,
    /// Fail with [`FrameError::Empty`]: neither reference client ever sends
    /// an empty Envelope, so a strict endpoint may treat one as a violation.
    Reject,
}

/// Framing settings shared by [`FrameDecoder`] and [`FrameEncoder`].
///
/// Built from [`Default`] and adjusted with `&mut self` setters:
///
/// ```
/// use openiap_wire::frame::{FrameConfig, FrameDecoder};
///
/// let mut config = FrameConfig::default();
/// config.set_max_frame_length(1024 * 1024).set_read_step(16 * 1024);
/// let decoder = FrameDecoder::new(config);
/// assert_eq!(decoder.config().max_frame_length(), 1024 * 1024);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameConfig {
    max_frame_length: usize,
    read_step: usize,
    shrink_threshold: usize,
    zero_length: ZeroLengthPolicy,
}

impl Default for FrameConfig {
    fn default() -> Self {
        Self {
            max_frame_length: DEFAULT_MAX_FRAME_LENGTH,
            read_step: DEFAULT_READ_STEP,
            shrink_threshold: DEFAULT_SHRINK_THRESHOLD,
            zero_length: ZeroLengthPolicy::default(),
        }
    }
}

impl FrameConfig {
    /// Largest accepted frame body in bytes (prefix excluded).
    pub fn max_frame_length(&self) -> usize {
        self.max_frame_length
    }

    /// Sets the largest frame body, in bytes, that is decoded or encoded.
    ///
    /// The prefix is a `u32`, so values above `u32::MAX` act as `u32::MAX`.
    pub fn set_max_frame_length(&mut self, max: usize) -> &mut Self {
        self.max_frame_length = max;
        self
    }

    /// Spare capacity that [`FrameDecoder::read_buf`] ensures, and the step in
    /// which it grows the buffer.
    pub fn read_step(&self) -> usize {
        self.read_step
    }

    /// Sets the read step; values below [`MIN_READ_STEP`] are raised to it.
    pub fn set_read_step(&mut self, step: usize) -> &mut Self {
        self.read_step = step.max(MIN_READ_STEP);
        self
    }

    /// Receive buffer size that is always kept. Above it, a (nearly) drained
    /// buffer is replaced by a small one once its allocation is more than
    /// twice the recent frame size (a maximum that decays by a sixteenth per
    /// frame), so a steady run of large frames keeps one buffer and a
    /// connection that goes back to small frames gives the memory back.
    pub fn shrink_threshold(&self) -> usize {
        self.shrink_threshold
    }

    /// Sets the shrink threshold. Keep it above [`read_step`](Self::read_step),
    /// or small-frame traffic reallocates the buffer often.
    pub fn set_shrink_threshold(&mut self, threshold: usize) -> &mut Self {
        self.shrink_threshold = threshold;
        self
    }

    /// What the decoder does with zero-length frames.
    pub fn zero_length(&self) -> ZeroLengthPolicy {
        self.zero_length
    }

    /// Sets the zero-length frame policy.
    pub fn set_zero_length(&mut self, policy: ZeroLengthPolicy) -> &mut Self {
        self.zero_length = policy;
        self
    }
}

/// Errors of the framing layer.
///
/// [`TooLarge`](Self::TooLarge), [`Empty`](Self::Empty) and
/// [`Truncated`](Self::Truncated) come from received bytes and end the
/// connection (the decoder is poisoned);
/// [`EncodeTooLarge`](Self::EncodeTooLarge) is local and concerns only the
/// Envelope that was being sent.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// A received length prefix declares a body above the configured limit.
    /// Raised before any byte of the body is buffered.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Body length declared by the prefix.
        len: u64,
        /// The configured [`FrameConfig::max_frame_length`].
        max: usize,
    },
    /// A zero-length frame arrived while [`ZeroLengthPolicy::Reject`] is set.
    #[error("zero-length frame rejected by the configured policy")]
    Empty,
    /// Input ended in the middle of a frame.
    #[error("input ended inside a frame: {buffered} bytes left")]
    Truncated {
        /// Bytes received but not delivered as a frame, prefix included.
        buffered: usize,
    },
    /// An Envelope to be sent encodes to more bytes than the frame limit.
    /// Nothing was written.
    #[error("envelope encodes to {len} bytes, exceeding the frame limit of {max} bytes")]
    EncodeTooLarge {
        /// Encoded body length of the Envelope.
        len: usize,
        /// The limit in force (the configured one, at most `u32::MAX`).
        max: usize,
    },
}

/// Where the decoder is inside the current frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DecodeState {
    /// Waiting for a length prefix.
    Head,
    /// Prefix consumed; waiting for a body of this many bytes.
    Data(usize),
}

/// The decoding state machine, apart from the buffer it reads, so that
/// [`FrameDecoder`] can run it over its own buffer and the tokio-util codec
/// over the buffer `FramedRead` owns.
#[derive(Clone, Debug)]
pub(crate) struct FrameParser {
    config: FrameConfig,
    state: DecodeState,
    error: Option<FrameError>,
    /// A decaying maximum of the recent frame sizes, prefix included: each
    /// frame lowers it by a sixteenth unless the frame is larger.
    recent_frame: usize,
}

impl FrameParser {
    pub(crate) fn new(config: FrameConfig) -> Self {
        Self {
            config,
            state: DecodeState::Head,
            error: None,
            recent_frame: 0,
        }
    }

    pub(crate) fn config(&self) -> &FrameConfig {
        &self.config
    }

    fn is_poisoned(&self) -> bool {
        self.error.is_some()
    }

    /// Decodes the next frame body out of a buffer the caller owns (the
    /// tokio-util codec), shrinking it as [`shrink`](Self::shrink) says.
    #[cfg_attr(not(feature = "codec"), allow(dead_code))]
    pub(crate) fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        let frame = self.decode_frame(buf)?;
        if let Some(frame) = &frame {
            let total = frame.len().saturating_add(LENGTH_PREFIX_LEN);
            // The buffer's owner does not say how large its allocation is:
            // at least this frame and what is left of the buffer.
            self.shrink(buf, total.saturating_add(buf.capacity()));
        }
        Ok(frame)
    }

    /// Decodes the next frame body out of `buf` (see [`FrameDecoder::decode`]),
    /// leaving the buffer's size to the caller.
    #[inline]
    pub(crate) fn decode_frame(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        if let Some(err) = &self.error {
            return Err(err.clone());
        }
        let result = self.step(buf);
        match &result {
            Ok(Some(frame)) => {
                let total = frame.len().saturating_add(LENGTH_PREFIX_LEN);
                let decayed = self.recent_frame - self.recent_frame / 16;
                self.recent_frame = total.max(decayed);
            }
            Ok(None) => {}
            Err(err) => self.poison(err.clone(), buf),
        }
        result
    }

    /// The largest allocation worth keeping for the frames seen lately:
    /// twice the recent frame size, and never less than the configured
    /// shrink threshold.
    fn keep_limit(&self) -> usize {
        self.config
            .shrink_threshold
            .max(self.recent_frame.saturating_mul(2))
    }

    /// How many bytes from the start of `buf` the frame being received ends
    /// at, when its length is known and within the limit.
    fn frame_end(&self, buf: &BytesMut) -> Option<usize> {
        match self.state {
            DecodeState::Data(len) => Some(len),
            DecodeState::Head => match self.check_head(buf) {
                Ok(Some(len)) => len.checked_add(LENGTH_PREFIX_LEN),
                _ => None,
            },
        }
    }

    /// The frame being received at the start of `buf`, once its length
    /// prefix is in and accepted: how many bytes of its body have arrived,
    /// and how long the body is. `None` before that and after an error.
    fn partial_body(&self, buf: &BytesMut) -> Option<(usize, usize)> {
        if self.is_poisoned() {
            return None;
        }
        match self.state {
            DecodeState::Data(len) => Some((buf.len(), len)),
            DecodeState::Head => {
                let len = self.check_head(buf).ok().flatten()?;
                Some((buf.len() - LENGTH_PREFIX_LEN, len))
            }
        }
    }

    /// Reports bytes left at end of input (see [`FrameDecoder::finish`]).
    pub(crate) fn finish(&mut self, buf: &mut BytesMut) -> Result<(), FrameError> {
        if let Some(err) = &self.error {
            return Err(err.clone());
        }
        match self.buffered(buf) {
            0 => Ok(()),
            buffered => {
                let err = FrameError::Truncated { buffered };
                self.poison(err.clone(), buf);
                Err(err)
            }
        }
    }

    /// Bytes received and not yet delivered, including a consumed prefix.
    pub(crate) fn buffered(&self, buf: &BytesMut) -> usize {
        if self.is_poisoned() {
            // Bytes appended through `read_buf` after an error are discarded.
            return 0;
        }
        match self.state {
            DecodeState::Head => buf.len(),
            DecodeState::Data(_) => buf.len().saturating_add(LENGTH_PREFIX_LEN),
        }
    }

    fn poison(&mut self, err: FrameError, buf: &mut BytesMut) {
        self.error = Some(err);
        self.state = DecodeState::Head;
        *buf = BytesMut::new();
    }

    fn step(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        let len = match self.state {
            DecodeState::Data(len) => len,
            DecodeState::Head => {
                let Some(len) = self.check_head(buf)? else {
                    return Ok(None);
                };
                // Fast path, the common case for small frames: prefix and
                // body are both buffered, so take them with one split and
                // drop the prefix from the frozen frame (a pointer bump).
                if let Some(total) = len.checked_add(LENGTH_PREFIX_LEN)
                    && buf.len() >= total
                {
                    let mut frame = buf.split_to(total).freeze();
                    frame.advance(LENGTH_PREFIX_LEN);
                    return Ok(Some(frame));
                }
                // `check_head` succeeded, so the prefix is buffered.
                buf.advance(LENGTH_PREFIX_LEN);
                self.state = DecodeState::Data(len);
                len
            }
        };
        if buf.len() < len {
            return Ok(None);
        }
        let frame = buf.split_to(len).freeze();
        self.state = DecodeState::Head;
        Ok(Some(frame))
    }

    /// Reads and validates a length prefix, without consuming it.
    fn check_head(&self, buf: &BytesMut) -> Result<Option<usize>, FrameError> {
        let mut head: &[u8] = buf.as_ref();
        let Ok(declared) = head.try_get_u32_le() else {
            return Ok(None);
        };
        let max = self.config.max_frame_length;
        let too_large = || FrameError::TooLarge {
            len: u64::from(declared),
            max,
        };
        let len = usize::try_from(declared).map_err(|_| too_large())?;
        if len > max {
            return Err(too_large());
        }
        if len == 0 && self.config.zero_length == ZeroLengthPolicy::Reject {
            return Err(FrameError::Empty);
        }
        Ok(Some(len))
    }

    /// After a frame left `buf`, whose allocation is `allocation` bytes: if
    /// that is more than [`keep_limit`](Self::keep_limit) and little is left,
    /// move the leftover to a small buffer so that the large allocation is
    /// freed with the caller's frames. Returns whether it moved.
    #[inline]
    fn shrink(&self, buf: &mut BytesMut, allocation: usize) -> bool {
        if allocation <= self.keep_limit() || buf.len() > self.config.read_step {
            return false;
        }
        self.move_to_small(buf);
        true
    }

    /// The slow half of [`shrink`](Self::shrink): the leftover into a buffer
    /// of one read step, or none at all when nothing is left.
    #[inline(never)]
    fn move_to_small(&self, buf: &mut BytesMut) {
        if buf.is_empty() {
            *buf = BytesMut::new();
            return;
        }
        let mut small = BytesMut::with_capacity(self.config.read_step);
        small.extend_from_slice(buf);
        *buf = small;
    }
}

/// Splits a byte stream into frame bodies; see the [module docs](self).
///
/// ```
/// use openiap_wire::frame::FrameDecoder;
///
/// let mut decoder = FrameDecoder::default();
/// decoder.push(&[3, 0, 0, 0, b'a']);
/// assert_eq!(decoder.decode(), Ok(None));
/// decoder.push(b"bc");
/// assert_eq!(decoder.decode().unwrap().as_deref(), Some(&b"abc"[..]));
/// decoder.finish().unwrap();
/// ```
#[derive(Clone, Debug)]
pub struct FrameDecoder {
    parser: FrameParser,
    buf: BytesMut,
    /// Size of the allocation behind `buf`, as far as the decoder knows
    /// (`buf.capacity()` only counts from the first unread byte).
    allocation: usize,
    /// Whole frames, prefixes included, split off `buf` in one piece and
    /// handed out one by one: when a read brings many small frames, one
    /// `BytesMut` split serves them all.
    ready: Bytes,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new(FrameConfig::default())
    }
}

impl FrameDecoder {
    /// Creates a decoder; nothing is allocated until bytes arrive.
    pub fn new(config: FrameConfig) -> Self {
        Self {
            parser: FrameParser::new(config),
            buf: BytesMut::new(),
            allocation: 0,
            ready: Bytes::new(),
        }
    }

    /// The settings in force.
    pub fn config(&self) -> &FrameConfig {
        self.parser.config()
    }

    /// Changes the frame limit. It applies from the next length prefix: a
    /// frame whose prefix was already accepted still completes.
    pub fn set_max_frame_length(&mut self, max: usize) -> &mut Self {
        self.parser.config.set_max_frame_length(max);
        self
    }

    /// Appends received bytes. After an error they are discarded.
    pub fn push(&mut self, bytes: &[u8]) {
        if !self.parser.is_poisoned() {
            self.make_room(bytes.len());
            self.buf.extend_from_slice(bytes);
        }
    }

    /// Ensures `additional` bytes of spare capacity: by moving the unread
    /// bytes to the front of the allocation when nothing else uses it, or
    /// else by a new allocation of twice the unread bytes (at least one read
    /// step), but no larger than the frame being received needs.
    ///
    /// The cap is what keeps the buffer within about one frame (plus one
    /// read) of the largest frame: doubling alone can overshoot a 64 KiB
    /// frame to 128 KiB. The declared length is still never reserved up
    /// front: each step at most doubles what was received.
    #[inline]
    fn make_room(&mut self, additional: usize) {
        if self.buf.capacity() - self.buf.len() < additional {
            self.grow(additional);
        }
    }

    /// The slow half of [`make_room`](Self::make_room).
    #[inline(never)]
    fn grow(&mut self, additional: usize) {
        let len = self.buf.len();
        let step = self.parser.config.read_step;
        // Reclaiming a read step at a time keeps small pieces off this path.
        if self.buf.try_reclaim(additional.max(step)) || self.buf.try_reclaim(additional) {
            return;
        }
        let needed = len.saturating_add(additional);
        let mut target = len.saturating_mul(2).max(step);
        if let Some(end) = self.parser.frame_end(&self.buf) {
            target = target.min(end.max(step));
        }
        let mut fresh = BytesMut::with_capacity(target.max(needed));
        fresh.extend_from_slice(&self.buf);
        self.allocation = fresh.capacity();
        self.buf = fresh;
    }

    /// Appends received bytes held in a [`Bytes`], such as a WebSocket
    /// message. When the decoder holds no bytes and `bytes` is the only handle
    /// to its allocation, the allocation is adopted as the receive buffer and
    /// the frames decoded from it share it: no copy at all. Otherwise the
    /// bytes are copied as by [`push`](Self::push).
    pub fn push_bytes(&mut self, bytes: Bytes) {
        if self.parser.is_poisoned() {
            return;
        }
        if !self.buf.is_empty() {
            self.push(&bytes);
            return;
        }
        match bytes.try_into_mut() {
            Ok(adopted) => {
                self.allocation = adopted.capacity();
                self.buf = adopted;
            }
            Err(shared) => self.push(&shared),
        }
    }

    /// The receive buffer, with at least [`FrameConfig::read_step`] bytes of
    /// spare capacity, for IO code to read into without an intermediate
    /// copy (for example with tokio's `AsyncReadExt::read_buf`). Only append
    /// to it; bytes appended are decoded as if pushed.
    ///
    /// The buffer grows by one read step at a time, never by a declared frame
    /// length. Inside a frame that [`large_read`](Self::large_read) covers,
    /// the spare capacity guaranteed is the smaller of a read step and the
    /// rest of that frame. After an error it is emptied on every call.
    pub fn read_buf(&mut self) -> &mut BytesMut {
        if self.parser.is_poisoned() {
            self.buf.clear();
        }
        // Inside a large frame the next read stops at the frame's end (see
        // `large_read`), so room for the rest of it is enough: asking for a
        // whole step there would move a nearly complete frame to a new
        // buffer.
        let step = self.parser.config.read_step;
        let wanted = self.large_read().map_or(step, |rest| rest.min(step));
        let spare = self.buf.capacity().saturating_sub(self.buf.len());
        if spare < wanted {
            self.make_room(wanted);
        }
        &mut self.buf
    }

    /// How many bytes the next read into [`read_buf`](Self::read_buf)
    /// should ask for, when a large frame is being received: inside a frame
    /// of at least [`LARGE_FRAME`] bytes, the rest of it, at most twice what
    /// has arrived of it or [`RESERVE_FLOOR`], whichever is larger (never the
    /// declared length alone). `None` otherwise: read what fits (at least
    /// one read step). See [Reading large frames](crate::frame#reading-large-frames).
    ///
    /// ```
    /// use openiap_wire::frame::{FrameDecoder, RESERVE_FLOOR};
    ///
    /// let mut decoder = FrameDecoder::default();
    /// decoder.push(&100_000u32.to_le_bytes());
    /// assert_eq!(decoder.decode(), Ok(None));
    /// assert_eq!(decoder.large_read(), Some(100_000));
    /// decoder.push(&[0; 1000]);
    /// assert_eq!(decoder.decode(), Ok(None));
    /// assert_eq!(decoder.large_read(), Some(99_000));
    ///
    /// let mut huge = FrameDecoder::default();
    /// huge.set_max_frame_length(u32::MAX as usize);
    /// huge.push(&u32::MAX.to_le_bytes());
    /// assert_eq!(huge.large_read(), Some(RESERVE_FLOOR));
    /// ```
    pub fn large_read(&self) -> Option<usize> {
        let (arrived, len) = self.parser.partial_body(&self.buf)?;
        if len < LARGE_FRAME || arrived >= len {
            return None;
        }
        let allowance = arrived.saturating_mul(2).max(RESERVE_FLOOR);
        Some((len - arrived).min(allowance))
    }

    /// Returns the next whole frame body, `Ok(None)` if more bytes are
    /// needed. The body is a slice of the receive buffer (no copy). Call it
    /// until it returns `Ok(None)` after every push.
    ///
    /// # Errors
    ///
    /// [`FrameError::TooLarge`] or [`FrameError::Empty`] for a bad prefix.
    /// Any error poisons the decoder: this call and [`finish`](Self::finish)
    /// return it again from then on.
    #[inline]
    pub fn decode(&mut self) -> Result<Option<Bytes>, FrameError> {
        if !self.ready.is_empty() {
            return Ok(Some(self.next_ready()));
        }
        // Most calls on input fed in small pieces find a frame body still
        // incomplete: answer those without the full state machine.
        if let DecodeState::Data(len) = self.parser.state
            && self.buf.len() < len
            && self.parser.error.is_none()
        {
            return Ok(None);
        }
        self.decode_slow()
    }

    fn decode_slow(&mut self) -> Result<Option<Bytes>, FrameError> {
        // The caller may have grown the buffer through `read_buf`.
        self.allocation = self.allocation.max(self.buf.capacity());
        let frame = self.parser.decode_frame(&mut self.buf);
        match &frame {
            Ok(Some(_)) => {
                self.batch();
                if self.parser.shrink(&mut self.buf, self.allocation) {
                    self.allocation = self.buf.capacity();
                }
            }
            Ok(None) => {}
            Err(_) => self.allocation = 0,
        }
        frame
    }

    /// Moves the whole frames at the start of `buf` to `ready` in one split,
    /// when there are at least two (for one, the split is all the work
    /// there is). A prefix the parser would refuse ends the batch: its
    /// error comes once the frames before it are out.
    fn batch(&mut self) {
        let max = self.parser.config.max_frame_length;
        let reject_empty = self.parser.config.zero_length == ZeroLengthPolicy::Reject;
        let mut recent = self.parser.recent_frame;
        let (mut end, mut frames) = (0usize, 0usize);
        while let Some(prefix) = self.buf.get(end..).and_then(<[u8]>::first_chunk::<4>) {
            let len = usize::try_from(u32::from_le_bytes(*prefix)).unwrap_or(usize::MAX);
            if len > max || (len == 0 && reject_empty) {
                break;
            }
            let Some(next) = end
                .checked_add(LENGTH_PREFIX_LEN)
                .and_then(|start| start.checked_add(len))
                .filter(|&next| next <= self.buf.len())
            else {
                break;
            };
            let total = next - end;
            recent = total.max(recent - recent / 16);
            end = next;
            frames += 1;
        }
        if frames >= 2 {
            self.parser.recent_frame = recent;
            self.ready = self.buf.split_to(end).freeze();
        }
    }

    /// The next frame of `ready`, whose prefixes [`batch`](Self::batch)
    /// checked and whose bodies it found whole.
    #[inline]
    fn next_ready(&mut self) -> Bytes {
        let len = self
            .ready
            .first_chunk::<4>()
            .map_or(0, |prefix| u32::from_le_bytes(*prefix) as usize);
        let end = LENGTH_PREFIX_LEN.saturating_add(len).min(self.ready.len());
        let mut frame = self.ready.split_to(end);
        frame.advance(LENGTH_PREFIX_LEN.min(frame.len()));
        frame
    }

    /// Whether [`shrink_idle`](Self::shrink_idle) would free memory: the
    /// buffer's allocation is above two read steps (more than
    /// [`read_buf`](Self::read_buf) makes for small frames) and at most one
    /// read step of bytes is waiting in it.
    pub fn can_shrink_idle(&self) -> bool {
        let step = self.parser.config.read_step;
        !self.parser.is_poisoned()
            && self.capacity() > step.saturating_mul(2)
            && self.buf.len() <= step
    }

    /// Gives back what a quiet connection does not need: when
    /// [`can_shrink_idle`](Self::can_shrink_idle), the waiting bytes (if
    /// any) move to a buffer of one read step and the large allocation is
    /// released (once the caller drops its frames); the size kept for
    /// recent frames is forgotten. Call it when no bytes have arrived for a
    /// while ([`Connection`](crate::connection::Connection) does, one
    /// second after the last input). Returns whether it shrank.
    pub fn shrink_idle(&mut self) -> bool {
        if !self.can_shrink_idle() {
            return false;
        }
        self.parser.recent_frame = 0;
        self.parser.move_to_small(&mut self.buf);
        self.allocation = self.buf.capacity();
        true
    }

    /// Declares the end of input. Call it after [`decode`](Self::decode) has
    /// returned `Ok(None)`.
    ///
    /// # Errors
    ///
    /// [`FrameError::Truncated`] when bytes of an incomplete frame are left
    /// (this poisons the decoder), or the error that poisoned it earlier.
    pub fn finish(&mut self) -> Result<(), FrameError> {
        if !self.ready.is_empty() && !self.parser.is_poisoned() {
            // Whole frames not taken yet count as left over, as ever.
            let err = FrameError::Truncated {
                buffered: self.buffered(),
            };
            self.parser.poison(err.clone(), &mut self.buf);
            self.ready = Bytes::new();
            self.allocation = 0;
            return Err(err);
        }
        let result = self.parser.finish(&mut self.buf);
        if result.is_err() {
            self.allocation = 0;
        }
        result
    }

    /// Bytes received and not yet delivered as a frame, including a length
    /// prefix already read. Zero after an error.
    pub fn buffered(&self) -> usize {
        if self.parser.is_poisoned() {
            return 0;
        }
        self.parser.buffered(&self.buf) + self.ready.len()
    }

    /// Size in bytes of the receive buffer's allocation: the memory the
    /// decoder keeps (frames already handed out share it until dropped).
    #[inline]
    pub fn capacity(&self) -> usize {
        self.allocation.max(self.buf.capacity())
    }
}

/// The length prefix and the whole frame length for a body of `body_len`
/// bytes, or [`FrameError::EncodeTooLarge`] above `max_frame_length` (and
/// above `u32::MAX`, the most a prefix can say).
fn frame_prefix(body_len: usize, max_frame_length: usize) -> Result<(u32, usize), FrameError> {
    let prefix_max = usize::try_from(u32::MAX).unwrap_or(usize::MAX);
    let max = max_frame_length.min(prefix_max);
    let too_large = FrameError::EncodeTooLarge { len: body_len, max };
    if body_len > max {
        return Err(too_large);
    }
    match (
        u32::try_from(body_len),
        LENGTH_PREFIX_LEN.checked_add(body_len),
    ) {
        (Ok(prefix), Some(frame_len)) => Ok((prefix, frame_len)),
        _ => Err(too_large),
    }
}

/// Writes `envelope` as one frame (prefix and body) at the end of `dst`.
///
/// `dst` grows once, by exactly the frame size, so the frame is contiguous
/// and can go out in one write. An all-default Envelope is written with the
/// body `0x0A 0x00` rather than as a zero-length frame (see the
/// [module docs](self#zero-length-frames)).
///
/// # Errors
///
/// [`FrameError::EncodeTooLarge`] when the body exceeds `max_frame_length`
/// (or `u32::MAX`); `dst` is then left unchanged.
pub fn encode_frame(
    envelope: &Envelope,
    max_frame_length: usize,
    dst: &mut BytesMut,
) -> Result<(), FrameError> {
    let encoded_len = envelope.encoded_len();
    let body_len = if encoded_len == 0 {
        EMPTY_ENVELOPE_BODY.len()
    } else {
        encoded_len
    };
    let (prefix, frame_len) = frame_prefix(body_len, max_frame_length)?;
    let start = dst.len();
    dst.reserve(frame_len);
    dst.put_u32_le(prefix);
    if encoded_len == 0 {
        dst.put_slice(&EMPTY_ENVELOPE_BODY);
    } else if envelope.encode(dst).is_err() {
        // Unreachable: `BytesMut` never runs out of room. Keep the promise
        // that `dst` is unchanged on error anyway.
        dst.truncate(start);
        return Err(FrameError::EncodeTooLarge {
            len: body_len,
            max: max_frame_length,
        });
    }
    Ok(())
}

/// Type URL domain of every packed payload, as `pack_any` writes it.
const TYPE_URL_DOMAIN: &str = "type.googleapis.com/";

/// Length of `M`'s type URL, `type.googleapis.com/<package>.<Name>`.
fn type_url_len<M: Name>() -> usize {
    TYPE_URL_DOMAIN.len() + M::PACKAGE.len() + 1 + M::NAME.len()
}

/// Encoded length of the Envelope fields `1..=5` (`first`) or `7..=9`
/// (`!first`) of `header`, each skipped when default, as prost does.
fn header_len(header: &Envelope, first: bool) -> usize {
    use prost::encoding::{int32, string};
    let text = |tag: u32, value: &String| {
        if value.is_empty() {
            0
        } else {
            string::encoded_len(tag, value)
        }
    };
    let number = |tag: u32, value: i32| {
        if value == 0 {
            0
        } else {
            int32::encoded_len(tag, &value)
        }
    };
    if first {
        text(1, &header.command)
            + number(2, header.priority)
            + number(3, header.seq)
            + text(4, &header.id)
            + text(5, &header.rid)
    } else {
        text(7, &header.jwt) + text(8, &header.traceid) + text(9, &header.spanid)
    }
}

/// Writes the fields measured by [`header_len`].
fn encode_header(header: &Envelope, first: bool, dst: &mut BytesMut) {
    use prost::encoding::{int32, string};
    let text = |tag: u32, value: &String, dst: &mut BytesMut| {
        if !value.is_empty() {
            string::encode(tag, value, dst);
        }
    };
    if first {
        text(1, &header.command, dst);
        if header.priority != 0 {
            int32::encode(2, &header.priority, dst);
        }
        if header.seq != 0 {
            int32::encode(3, &header.seq, dst);
        }
        text(4, &header.id, dst);
        text(5, &header.rid, dst);
    } else {
        text(7, &header.jwt, dst);
        text(8, &header.traceid, dst);
        text(9, &header.spanid, dst);
    }
}

/// The lengths of a frame whose `data` is an `Any` with a type URL of
/// `url_len` bytes and a value of `value_len` bytes, each field written
/// only when not empty (as prost does): what [`encode_packed_frame`] and
/// [`encode_frame_head`] write.
struct PackedLen {
    url_len: usize,
    value_len: usize,
    any_len: usize,
    body_len: usize,
}

impl PackedLen {
    fn of<M: Message + Name>(header: &Envelope, message: &M) -> Self {
        Self::new(header, type_url_len::<M>(), message.encoded_len())
    }

    fn new(header: &Envelope, url_len: usize, value_len: usize) -> Self {
        use prost::encoding::{encoded_len_varint, key_len};
        let field = |tag: u32, len: usize| {
            if len == 0 {
                0
            } else {
                key_len(tag) + encoded_len_varint(len as u64) + len
            }
        };
        let any_len = field(1, url_len) + field(2, value_len);
        let body_len = header_len(header, true)
            .saturating_add(key_len(6) + encoded_len_varint(any_len as u64))
            .saturating_add(any_len)
            .saturating_add(header_len(header, false));
        Self {
            url_len,
            value_len,
            any_len,
            body_len,
        }
    }

    /// Appends the start of the frame these lengths measure, up to the
    /// `Any`'s value: the length prefix `prefix`, the header fields before
    /// `data`, the `Any`'s key and length, its type URL (the concatenation
    /// of `url`, `url_len` bytes) and the key and length of the value, each
    /// unless empty. The value and the header fields after `data` complete
    /// the frame. Every frame written around its payload, whole
    /// ([`encode_packed_frame`]) or not ([`encode_chunk_frame_head`],
    /// [`encode_frame_head`]), starts with these bytes.
    fn put_head(&self, header: &Envelope, prefix: u32, url: &[&str], dst: &mut BytesMut) {
        use prost::encoding::{WireType, encode_key, encode_varint};
        dst.put_u32_le(prefix);
        encode_header(header, true, dst);
        encode_key(6, WireType::LengthDelimited, dst);
        encode_varint(self.any_len as u64, dst);
        if self.url_len != 0 {
            encode_key(1, WireType::LengthDelimited, dst);
            encode_varint(self.url_len as u64, dst);
            for part in url {
                dst.put_slice(part.as_bytes());
            }
        }
        if self.value_len != 0 {
            encode_key(2, WireType::LengthDelimited, dst);
            encode_varint(self.value_len as u64, dst);
        }
    }
}

/// The parts of `M`'s type URL, `type.googleapis.com/<package>.<Name>`.
fn type_url_parts<M: Name>() -> [&'static str; 4] {
    [TYPE_URL_DOMAIN, M::PACKAGE, ".", M::NAME]
}

/// The frame body length [`encode_packed_frame`] would write for `header`
/// and `message` (prefix excluded): what
/// [`encoded_len`](crate::envelope::encoded_len) says of the packed Envelope,
/// without packing it.
pub fn packed_body_len<M: Message + Name>(header: &Envelope, message: &M) -> usize {
    PackedLen::of(header, message).body_len
}

/// Writes `header` with `message` packed as its `data`, as one frame at the
/// end of `dst`: the same bytes as [`encode_frame`] of
/// `Envelope { data: Some(pack_any(message)), ..header.clone() }`, but the
/// payload is encoded straight into `dst`. That saves the intermediate
/// `Any.value` buffer: one allocation and one copy of the payload per
/// Envelope (a 64 KiB file chunk is copied once instead of twice).
///
/// `header.data` is ignored. The type URL is
/// `type.googleapis.com/openiap.<Name>`, as [`pack_any`](crate::envelope::pack_any) writes it.
///
/// ```
/// use bytes::{Bytes, BytesMut};
/// use openiap_wire::envelope::pack;
/// use openiap_wire::frame::{DEFAULT_MAX_FRAME_LENGTH, encode_frame, encode_packed_frame};
/// use openiap_wire::proto::{Envelope, Stream};
///
/// let chunk = Stream { data: Bytes::from(vec![7; 1000]) };
/// let header = Envelope {
///     command: "stream".into(),
///     id: "9".into(),
///     rid: "u1".into(),
///     seq: 3,
///     ..Envelope::default()
/// };
/// let mut direct = BytesMut::new();
/// encode_packed_frame(&header, &chunk, DEFAULT_MAX_FRAME_LENGTH, &mut direct).unwrap();
///
/// let packed = Envelope { id: "9".into(), rid: "u1".into(), seq: 3, ..pack(&chunk) };
/// let mut via_pack = BytesMut::new();
/// encode_frame(&packed, DEFAULT_MAX_FRAME_LENGTH, &mut via_pack).unwrap();
/// assert_eq!(direct, via_pack);
/// ```
///
/// The header's `command` is written as given: set it to `M::COMMAND`
/// (what [`pack`](crate::envelope::pack) does) unless you mean otherwise.
///
/// # Errors
///
/// [`FrameError::EncodeTooLarge`] when the body exceeds `max_frame_length`
/// (or `u32::MAX`); `dst` is then left unchanged.
pub fn encode_packed_frame<M: Message + Name>(
    header: &Envelope,
    message: &M,
    max_frame_length: usize,
    dst: &mut BytesMut,
) -> Result<(), FrameError> {
    let lens = PackedLen::of(header, message);
    let (prefix, frame_len) = frame_prefix(lens.body_len, max_frame_length)?;
    let start = dst.len();
    dst.reserve(frame_len);
    lens.put_head(header, prefix, &type_url_parts::<M>(), dst);
    if lens.value_len != 0 && message.encode(dst).is_err() {
        // Unreachable: `BytesMut` never runs out of room.
        dst.truncate(start);
        return Err(FrameError::EncodeTooLarge {
            len: lens.body_len,
            max: max_frame_length,
        });
    }
    encode_header(header, false, dst);
    debug_assert_eq!(dst.len() - start, frame_len);
    Ok(())
}

/// The frame [`encode_packed_frame`] writes for `header` and the file chunk
/// `chunk`, except the chunk's data: the prefix, the header fields and the
/// keys and lengths of the `Any` and the `Stream` are appended to `dst`, and
/// `chunk.data`, written right after them, completes the frame. A transport
/// that writes vectored (`dst`, then the chunk's `Bytes`) sends a file chunk
/// without copying it.
///
/// Returns `Ok(false)` and writes nothing when the header has `jwt`,
/// `traceid` or `spanid` (fields that follow `data` in the frame) or the
/// chunk is empty: encode those with [`encode_packed_frame`].
///
/// ```
/// use bytes::{Bytes, BytesMut};
/// use openiap_wire::frame::{DEFAULT_MAX_FRAME_LENGTH, encode_chunk_frame_head, encode_packed_frame};
/// use openiap_wire::proto::{Envelope, Stream};
///
/// let header = Envelope { command: "stream".into(), id: "7".into(), rid: "u1".into(), seq: 3, ..Envelope::default() };
/// let chunk = Stream { data: Bytes::from(vec![1; 5000]) };
/// let mut whole = BytesMut::new();
/// encode_packed_frame(&header, &chunk, DEFAULT_MAX_FRAME_LENGTH, &mut whole).unwrap();
/// let mut head = BytesMut::new();
/// assert!(encode_chunk_frame_head(&header, &chunk, DEFAULT_MAX_FRAME_LENGTH, &mut head).unwrap());
/// assert_eq!([&head[..], &chunk.data[..]].concat(), whole);
/// ```
///
/// # Errors
///
/// [`FrameError::EncodeTooLarge`] when the whole frame body exceeds
/// `max_frame_length` (or `u32::MAX`); `dst` is then left unchanged.
pub fn encode_chunk_frame_head(
    header: &Envelope,
    chunk: &crate::proto::Stream,
    max_frame_length: usize,
    dst: &mut BytesMut,
) -> Result<bool, FrameError> {
    use prost::encoding::{WireType, encode_key, encode_varint};
    let lens = PackedLen::of(header, chunk);
    let (prefix, frame_len) = frame_prefix(lens.body_len, max_frame_length)?;
    if chunk.data.is_empty() || header_len(header, false) != 0 {
        return Ok(false);
    }
    dst.reserve(frame_len.saturating_sub(chunk.data.len()));
    lens.put_head(
        header,
        prefix,
        &type_url_parts::<crate::proto::Stream>(),
        dst,
    );
    // `Stream` has one field, `data` (1, bytes): its key and length.
    encode_key(1, WireType::LengthDelimited, dst);
    encode_varint(chunk.data.len() as u64, dst);
    Ok(true)
}

/// The frame [`encode_frame`] writes for `envelope`, except its payload
/// (`data.value`): the bytes before the payload are appended to `dst`, and
/// the payload, written right after them, completes the frame. A transport
/// that writes vectored (`dst`, then the payload's `Bytes`) sends a large
/// payload without copying it.
///
/// Returns `Ok(false)` and writes nothing when the envelope has no payload
/// or has `jwt`, `traceid` or `spanid` (fields that follow `data` in the
/// frame): encode those with [`encode_frame`].
///
/// ```
/// use bytes::{Bytes, BytesMut};
/// use openiap_wire::frame::{DEFAULT_MAX_FRAME_LENGTH, encode_frame, encode_frame_head};
/// use openiap_wire::proto::Envelope;
/// use openiap_wire::proto::google::protobuf::Any;
///
/// let value = Bytes::from(vec![1; 5000]);
/// let envelope = Envelope {
///     command: "queryreply".into(),
///     id: "7".into(),
///     data: Some(Any { type_url: "openiap.QueryResponse".into(), value: value.clone() }),
///     ..Envelope::default()
/// };
/// let mut whole = BytesMut::new();
/// encode_frame(&envelope, DEFAULT_MAX_FRAME_LENGTH, &mut whole).unwrap();
/// let mut head = BytesMut::new();
/// assert!(encode_frame_head(&envelope, DEFAULT_MAX_FRAME_LENGTH, &mut head).unwrap());
/// assert_eq!([&head[..], &value[..]].concat(), whole);
/// ```
///
/// # Errors
///
/// [`FrameError::EncodeTooLarge`] when the whole frame body exceeds
/// `max_frame_length` (or `u32::MAX`); `dst` is then left unchanged.
pub fn encode_frame_head(
    envelope: &Envelope,
    max_frame_length: usize,
    dst: &mut BytesMut,
) -> Result<bool, FrameError> {
    let Some(any) = &envelope.data else {
        // The body `encode_frame` would write: a non-empty encoding is at
        // least two bytes, and an empty one is written as two.
        let body_len = envelope.encoded_len().max(EMPTY_ENVELOPE_BODY.len());
        frame_prefix(body_len, max_frame_length)?;
        return Ok(false);
    };
    let lens = PackedLen::new(envelope, any.type_url.len(), any.value.len());
    let (prefix, frame_len) = frame_prefix(lens.body_len, max_frame_length)?;
    if any.value.is_empty() || header_len(envelope, false) != 0 {
        return Ok(false);
    }
    dst.reserve(frame_len.saturating_sub(any.value.len()));
    lens.put_head(envelope, prefix, &[any.type_url.as_str()], dst);
    Ok(true)
}

/// Encodes Envelopes into frames with the limit of a [`FrameConfig`].
///
/// ```
/// use bytes::BytesMut;
/// use openiap_wire::frame::{FrameDecoder, FrameEncoder};
/// use openiap_wire::proto::Envelope;
///
/// let envelope = Envelope { command: "ping".into(), id: "1".into(), ..Default::default() };
/// let mut wire = BytesMut::new();
/// FrameEncoder::default().encode(&envelope, &mut wire).unwrap();
///
/// let mut decoder = FrameDecoder::default();
/// decoder.push(&wire);
/// let body = decoder.decode().unwrap().unwrap();
/// assert_eq!(<Envelope as prost::Message>::decode(body).unwrap(), envelope);
/// ```
#[derive(Clone, Debug, Default)]
pub struct FrameEncoder {
    config: FrameConfig,
}

impl FrameEncoder {
    /// Creates an encoder; only [`FrameConfig::max_frame_length`] applies.
    pub fn new(config: FrameConfig) -> Self {
        Self { config }
    }

    /// The settings in force.
    pub fn config(&self) -> &FrameConfig {
        &self.config
    }

    /// Appends `envelope` as one frame to `dst`; see [`encode_frame`].
    ///
    /// # Errors
    ///
    /// [`FrameError::EncodeTooLarge`], leaving `dst` unchanged.
    pub fn encode(&self, envelope: &Envelope, dst: &mut BytesMut) -> Result<(), FrameError> {
        encode_frame(envelope, self.config.max_frame_length, dst)
    }

    /// Appends `header` with `message` packed as its data, as one frame;
    /// see [`encode_packed_frame`].
    ///
    /// # Errors
    ///
    /// [`FrameError::EncodeTooLarge`], leaving `dst` unchanged.
    pub fn encode_packed<M: Message + Name>(
        &self,
        header: &Envelope,
        message: &M,
        dst: &mut BytesMut,
    ) -> Result<(), FrameError> {
        encode_packed_frame(header, message, self.config.max_frame_length, dst)
    }
}

/// Frame limit used by [`fuzz_decode`].
const FUZZ_MAX_FRAME_LENGTH: usize = 1024;
/// Largest chunk [`fuzz_decode`] feeds at once.
const FUZZ_MAX_CHUNK: usize = 64;
/// Shrink threshold used by [`fuzz_decode`].
const FUZZ_SHRINK_THRESHOLD: usize = 256;
/// Capacity [`fuzz_decode`] never lets the decoder exceed: twice the largest
/// frame with its prefix, one chunk and one read step (amortised doubling),
/// plus the shrink threshold.
const FUZZ_CAPACITY_BOUND: usize = 2
    * (LENGTH_PREFIX_LEN + FUZZ_MAX_FRAME_LENGTH + FUZZ_MAX_CHUNK + MIN_READ_STEP)
    + FUZZ_SHRINK_THRESHOLD;

/// Fuzz body: feeds `data` through a [`FrameDecoder`] with a 1 KiB limit, in
/// chunks whose sizes and feeding method (`push`, `push_bytes`, `read_buf`)
/// the data itself chooses, and asserts the decoder's invariants: it never
/// panics, errors are sticky, every byte pushed is either delivered (prefix
/// included) or counted by `buffered()`, and capacity stays bounded.
#[doc(hidden)]
pub fn fuzz_decode(data: &[u8]) {
    let Some((&seed, mut input)) = data.split_first() else {
        return;
    };
    let mut config = FrameConfig::default();
    config
        .set_max_frame_length(FUZZ_MAX_FRAME_LENGTH)
        .set_read_step(MIN_READ_STEP)
        .set_shrink_threshold(FUZZ_SHRINK_THRESHOLD);
    let reject_empty = seed & 1 == 1;
    if reject_empty {
        config.set_zero_length(ZeroLengthPolicy::Reject);
    }
    let mut decoder = FrameDecoder::new(config);
    let mut pushed = 0usize;
    let mut delivered = 0usize;
    let mut failure: Option<FrameError> = None;

    while let Some(&cut) = input.first() {
        let take = (usize::from(cut) % FUZZ_MAX_CHUNK + 1).min(input.len());
        let (chunk, rest) = input.split_at(take);
        input = rest;
        match ((cut >> 6) ^ (seed >> 1)) & 3 {
            0 => decoder.push(chunk),
            1 => decoder.push_bytes(Bytes::copy_from_slice(chunk)),
            _ => decoder.read_buf().extend_from_slice(chunk),
        }
        pushed += chunk.len();
        loop {
            match decoder.decode() {
                Ok(Some(frame)) => {
                    assert!(failure.is_none(), "frame after an error");
                    assert!(frame.len() <= FUZZ_MAX_FRAME_LENGTH);
                    assert!(!(reject_empty && frame.is_empty()));
                    delivered += LENGTH_PREFIX_LEN + frame.len();
                }
                Ok(None) => {
                    assert!(failure.is_none(), "Ok(None) after an error");
                    break;
                }
                Err(err) => {
                    if let Some(first) = &failure {
                        assert_eq!(first, &err, "error changed");
                    }
                    assert_eq!(decoder.decode(), Err(err.clone()), "error not sticky");
                    failure = Some(err);
                    break;
                }
            }
        }
        if failure.is_none() {
            assert_eq!(pushed, delivered + decoder.buffered());
            assert!(decoder.buffered() < LENGTH_PREFIX_LEN + FUZZ_MAX_FRAME_LENGTH);
        } else {
            assert_eq!(decoder.buffered(), 0);
        }
        assert!(
            decoder.capacity() <= FUZZ_CAPACITY_BOUND,
            "capacity {} above {FUZZ_CAPACITY_BOUND}",
            decoder.capacity()
        );
    }

    let buffered = decoder.buffered();
    match decoder.finish() {
        Ok(()) => {
            assert!(failure.is_none());
            assert_eq!(buffered, 0);
        }
        Err(err) => {
            match &failure {
                Some(first) => assert_eq!(first, &err),
                None => assert_eq!(err, FrameError::Truncated { buffered }),
            }
            assert_eq!(decoder.finish(), Err(err.clone()));
            assert_eq!(decoder.decode(), Err(err));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::google::protobuf::Any;
    use proptest::collection::vec;
    use proptest::prelude::*;

    fn frame(body: &[u8]) -> Vec<u8> {
        let len = u32::try_from(body.len()).unwrap();
        let mut out = len.to_le_bytes().to_vec();
        out.extend_from_slice(body);
        out
    }

    fn config_with_max(max: usize) -> FrameConfig {
        let mut config = FrameConfig::default();
        config.set_max_frame_length(max);
        config
    }

    fn decode_all(decoder: &mut FrameDecoder) -> Vec<Bytes> {
        let mut out = Vec::new();
        while let Some(frame) = decoder.decode().unwrap() {
            out.push(frame);
        }
        out
    }

    fn sample_envelope() -> Envelope {
        Envelope {
            command: "getelement".into(),
            seq: 7,
            id: "42".into(),
            data: Some(Any {
                type_url: "type.googleapis.com/openiap.GetElementRequest".into(),
                value: Bytes::from_static(b"\x0a\x03abc"),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn read_single_frame_one_packet() {
        let mut decoder = FrameDecoder::default();
        decoder.push(&frame(b"abcdefghi"));
        assert_eq!(
            decode_all(&mut decoder),
            vec![Bytes::from_static(b"abcdefghi")]
        );
        assert_eq!(decoder.buffered(), 0);
        assert_eq!(decoder.finish(), Ok(()));
    }

    #[test]
    fn read_single_frame_multi_packet() {
        let mut decoder = FrameDecoder::default();
        let wire = frame(b"abcdefghi");
        let (last, init) = wire.split_last().unwrap();
        for byte in init {
            decoder.push(std::slice::from_ref(byte));
            assert_eq!(decoder.decode(), Ok(None));
        }
        decoder.push(std::slice::from_ref(last));
        assert_eq!(decoder.decode(), Ok(Some(Bytes::from_static(b"abcdefghi"))));
    }

    #[test]
    fn read_multi_frame_one_packet() {
        let mut decoder = FrameDecoder::default();
        let mut wire = frame(b"abc");
        wire.extend(frame(b"defgh"));
        wire.extend(frame(b"i"));
        decoder.push(&wire);
        let frames = decode_all(&mut decoder);
        assert_eq!(frames, [&b"abc"[..], b"defgh", b"i"]);
    }

    #[test]
    fn batched_frames_come_before_the_error_behind_them() {
        let mut decoder = FrameDecoder::new(config_with_max(8));
        let mut wire = BytesMut::new();
        for body in [&b"a"[..], b"bc", b"", b"defgh"] {
            wire.extend_from_slice(&frame(body));
        }
        wire.extend_from_slice(&frame(&[0; 9]));
        let message = wire.freeze();
        let range = message.as_ptr_range();
        decoder.push_bytes(message);
        for body in [&b"a"[..], b"bc", b"", b"defgh"] {
            let got = decoder.decode().unwrap().unwrap();
            assert_eq!(got, body);
            assert!(
                got.is_empty() || range.contains(&got.as_ptr()),
                "shares the message"
            );
        }
        let err = FrameError::TooLarge { len: 9, max: 8 };
        assert_eq!(decoder.decode(), Err(err.clone()));
        assert_eq!(decoder.decode(), Err(err));

        let mut config = FrameConfig::default();
        config.set_zero_length(ZeroLengthPolicy::Reject);
        let mut decoder = FrameDecoder::new(config);
        let mut wire = frame(b"x");
        wire.extend(frame(b"yz"));
        wire.extend(frame(b""));
        decoder.push(&wire);
        assert_eq!(decoder.decode().unwrap().as_deref(), Some(&b"x"[..]));
        assert_eq!(decoder.decode().unwrap().as_deref(), Some(&b"yz"[..]));
        assert_eq!(decoder.decode(), Err(FrameError::Empty));
    }

    #[test]
    fn finish_counts_whole_frames_not_taken() {
        let mut decoder = FrameDecoder::default();
        let mut wire = frame(b"one");
        wire.extend(frame(b"two"));
        wire.extend(frame(b"three"));
        wire.extend(&[9, 0]);
        decoder.push(&wire);
        assert_eq!(decoder.decode().unwrap().as_deref(), Some(&b"one"[..]));
        let left = wire.len() - 7;
        assert_eq!(decoder.buffered(), left);
        assert_eq!(
            decoder.finish(),
            Err(FrameError::Truncated { buffered: left })
        );
        assert_eq!(decoder.buffered(), 0);
        assert_eq!(
            decoder.decode(),
            Err(FrameError::Truncated { buffered: left })
        );
    }

    #[test]
    fn read_incomplete_head() {
        let mut decoder = FrameDecoder::default();
        decoder.push(&[9, 0]);
        assert_eq!(decoder.decode(), Ok(None));
        assert_eq!(decoder.buffered(), 2);
    }

    #[test]
    fn read_incomplete_payload() {
        let mut decoder = FrameDecoder::default();
        decoder.push(&frame(b"abcdefghij")[..9]);
        assert_eq!(decoder.decode(), Ok(None));
        assert_eq!(decoder.buffered(), 9);
        decoder.push(b"fghij");
        assert_eq!(
            decoder.decode(),
            Ok(Some(Bytes::from_static(b"abcdefghij")))
        );
    }

    #[test]
    fn read_max_frame_len() {
        let mut decoder = FrameDecoder::new(config_with_max(16));
        decoder.push(&frame(&[1; 16]));
        assert_eq!(decoder.decode().unwrap().map(|f| f.len()), Some(16));
        decoder.push(&frame(&[1; 17]));
        assert_eq!(
            decoder.decode(),
            Err(FrameError::TooLarge { len: 17, max: 16 })
        );
    }

    #[test]
    fn read_update_max_frame_len_in_flight() {
        let mut decoder = FrameDecoder::new(config_with_max(16));
        let wire = frame(b"0123456789");
        decoder.push(&wire[..6]);
        assert_eq!(decoder.decode(), Ok(None));
        decoder.set_max_frame_length(5);
        decoder.push(&wire[6..]);
        assert_eq!(decoder.decode().unwrap().map(|f| f.len()), Some(10));
        decoder.push(&wire);
        assert_eq!(
            decoder.decode(),
            Err(FrameError::TooLarge { len: 10, max: 5 })
        );
    }

    #[test]
    fn read_4gib_header_allocates_nothing() {
        let mut decoder = FrameDecoder::default();
        decoder.push(&[0xFF; 4]);
        assert_eq!(
            decoder.decode(),
            Err(FrameError::TooLarge {
                len: u64::from(u32::MAX),
                max: DEFAULT_MAX_FRAME_LENGTH
            })
        );
        assert!(decoder.capacity() <= 64, "capacity {}", decoder.capacity());

        // Even when the limit allows it, the declared length is not reserved.
        let mut decoder = FrameDecoder::new(config_with_max(usize::MAX));
        decoder.read_buf().extend_from_slice(&[0xFF; 4]);
        assert_eq!(decoder.decode(), Ok(None));
        decoder.read_buf().extend_from_slice(&[7; 100]);
        assert_eq!(decoder.decode(), Ok(None));
        assert_eq!(decoder.buffered(), 104);
        assert!(decoder.capacity() <= 4 * DEFAULT_READ_STEP);
    }

    #[test]
    fn large_read_follows_prefixes_across_reads() {
        let mut wire = BytesMut::new();
        for len in [3usize, 100_000, 0, 70_000] {
            wire.put_u32_le(u32::try_from(len).unwrap());
            wire.extend(std::iter::repeat_n(1u8, len));
        }
        let mut decoder = FrameDecoder::default();
        // Cut inside the second prefix, then inside its body.
        let (first, rest) = wire.split_at(9);
        decoder.push(first);
        assert_eq!(decode_all(&mut decoder).len(), 1);
        assert_eq!(decoder.large_read(), None, "in a prefix");
        let (second, rest) = rest.split_at(1000);
        decoder.push(second);
        assert!(decode_all(&mut decoder).is_empty());
        assert_eq!(decoder.large_read(), Some(100_000 - 998));
        // The rest of that body, the zero-length frame, the last prefix
        // and 10 bytes of its body.
        let (third, rest) = rest.split_at(100_000 - 998 + 4 + 4 + 10);
        decoder.push(third);
        assert_eq!(decode_all(&mut decoder).len(), 2);
        assert_eq!(decoder.large_read(), Some(70_000 - 10));
        decoder.push(rest);
        assert_eq!(decode_all(&mut decoder).len(), 1);
        assert_eq!(decoder.large_read(), None, "between frames");
        assert_eq!(decoder.buffered(), 0);
    }

    #[test]
    fn large_read_ignores_small_frames_undecoded_prefixes_and_errors() {
        let mut decoder = FrameDecoder::default();
        decoder.push(&u32::try_from(LARGE_FRAME - 1).unwrap().to_le_bytes());
        assert_eq!(decoder.large_read(), None, "a small frame");
        let mut decoder = FrameDecoder::default();
        // Not decoded yet: the prefix at the start of the buffer counts.
        decoder.push(&u32::try_from(LARGE_FRAME).unwrap().to_le_bytes());
        decoder.push(&[0; 10]);
        assert_eq!(decoder.large_read(), Some(LARGE_FRAME - 10));
        let mut decoder = FrameDecoder::new(config_with_max(LARGE_FRAME));
        decoder.push(&u32::try_from(LARGE_FRAME + 1).unwrap().to_le_bytes());
        assert_eq!(decoder.large_read(), None, "above the limit");
        assert!(decoder.decode().is_err());
        assert_eq!(decoder.large_read(), None, "poisoned");
    }

    #[test]
    fn a_declared_length_reserves_at_most_the_floor_before_bytes_arrive() {
        let mut decoder = FrameDecoder::new(config_with_max(u32::MAX as usize));
        decoder.push(&u32::MAX.to_le_bytes());
        assert_eq!(decoder.decode(), Ok(None));
        assert_eq!(decoder.large_read(), Some(RESERVE_FLOOR));
        decoder.push(&vec![0; 1_000_000]);
        assert_eq!(decoder.decode(), Ok(None));
        assert_eq!(decoder.large_read(), Some(2_000_000));
    }

    #[test]
    fn the_tail_of_a_large_frame_is_read_into_the_buffer_it_is_in() {
        // Reads as a byte stream does them (`large_read`, then `read_buf`,
        // room for what it asks, a read of at most that much), in pieces of
        // assorted sizes, over frames of assorted large sizes.
        let mut decoder = FrameDecoder::default();
        let mut seed = 0x2545_f491_u32;
        let mut next = move |bound: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            1 + seed as usize % bound
        };
        let mut tails_that_fit = 0;
        for _ in 0..200 {
            let len = LARGE_FRAME + next(300_000);
            decoder.push(&(len as u32).to_le_bytes());
            let mut arrived = 0;
            while arrived < len {
                assert_eq!(decoder.decode(), Ok(None));
                let want = decoder.large_read().expect("inside a large frame");
                let (ptr, spare) = {
                    let buf = &decoder.buf;
                    (buf.as_ptr() as usize, buf.capacity() - buf.len())
                };
                let buf = decoder.read_buf();
                if want <= spare {
                    tails_that_fit += usize::from(len - arrived <= spare);
                    assert_eq!(buf.as_ptr() as usize, ptr, "moved with room to spare");
                }
                if buf.capacity() - buf.len() < want {
                    buf.reserve(want);
                }
                let n = next(70_000).min(want);
                buf.extend_from_slice(&vec![7; n]);
                arrived += n;
            }
            let frame = decoder.decode().expect("valid").expect("whole frame");
            assert_eq!(frame.len(), len);
        }
        assert!(tails_that_fit > 20, "only {tails_that_fit} tails fit");
    }

    #[test]
    fn read_buf_grows_in_bounded_steps() {
        let mut decoder = FrameDecoder::default();
        decoder.push(&u32::try_from(32 << 20).unwrap().to_le_bytes());
        let mut received = 0;
        for _ in 0..64 {
            let buf = decoder.read_buf();
            assert!(buf.capacity() - buf.len() >= DEFAULT_READ_STEP);
            buf.extend_from_slice(&[0; 1000]);
            received += 1000;
            assert_eq!(decoder.decode(), Ok(None));
            assert!(decoder.capacity() <= 2 * (received + 2 * DEFAULT_READ_STEP));
        }
    }

    #[test]
    fn errors_are_sticky() {
        let mut decoder = FrameDecoder::new(config_with_max(8));
        decoder.push(&frame(&[0; 9]));
        let err = FrameError::TooLarge { len: 9, max: 8 };
        assert_eq!(decoder.decode(), Err(err.clone()));
        decoder.push(&frame(b"ok"));
        decoder.push_bytes(Bytes::from(frame(b"ok")));
        decoder.read_buf().extend_from_slice(&frame(b"ok"));
        assert_eq!(decoder.decode(), Err(err.clone()));
        assert_eq!(decoder.finish(), Err(err.clone()));
        assert_eq!(decoder.decode(), Err(err));
        assert_eq!(decoder.buffered(), 0);
    }

    #[test]
    fn finish_reports_truncated() {
        let mut decoder = FrameDecoder::default();
        decoder.push(&frame(b"0123456789")[..7]);
        assert_eq!(decoder.decode(), Ok(None));
        let err = FrameError::Truncated { buffered: 7 };
        assert_eq!(decoder.finish(), Err(err.clone()));
        assert_eq!(decoder.decode(), Err(err));

        let mut decoder = FrameDecoder::default();
        decoder.push(&[1, 0]);
        assert_eq!(decoder.decode(), Ok(None));
        assert_eq!(decoder.finish(), Err(FrameError::Truncated { buffered: 2 }));
    }

    #[test]
    fn zero_length_frame() {
        // The sequence that makes the Node parser lose sync.
        let mut decoder = FrameDecoder::default();
        let mut wire = frame(b"");
        wire.extend(frame(b"abc"));
        decoder.push(&wire);
        let frames = decode_all(&mut decoder);
        assert_eq!(frames, [&b""[..], b"abc"]);
        assert_eq!(Envelope::decode(frames[0].clone()), Ok(Envelope::default()));
    }

    #[test]
    fn zero_length_frame_rejected_by_policy() {
        let mut config = FrameConfig::default();
        config.set_zero_length(ZeroLengthPolicy::Reject);
        let mut decoder = FrameDecoder::new(config);
        decoder.push(&frame(b""));
        assert_eq!(decoder.decode(), Err(FrameError::Empty));
    }

    #[test]
    fn buffer_kept_for_large_frames_and_shrunk_after_small_ones() {
        let mut decoder = FrameDecoder::default();
        let big = frame(&[5; 1 << 20]);
        for _ in 0..3 {
            for chunk in big.chunks(1500) {
                decoder.push(chunk);
                while let Some(body) = decoder.decode().unwrap() {
                    assert_eq!(body.len(), 1 << 20);
                }
                // One frame plus at most one piece: no doubling past it.
                assert!(
                    decoder.capacity() <= big.len() + 1500,
                    "{}",
                    decoder.capacity()
                );
            }
        }
        // Kept for the next large frame (the body alone: the prefix was
        // consumed before the buffer grew to it).
        assert!(decoder.capacity() >= 1 << 20, "{}", decoder.capacity());
        // Small frames make the recent size decay until the buffer shrinks.
        let mut shrunk_after = None;
        for i in 0..40 {
            decoder.push(&frame(b"small"));
            assert_eq!(decoder.decode(), Ok(Some(Bytes::from_static(b"small"))));
            if decoder.capacity() <= DEFAULT_READ_STEP {
                shrunk_after = Some(i + 1);
                break;
            }
        }
        let shrunk_after = shrunk_after.expect("shrinks after small frames");
        assert!((5..=20).contains(&shrunk_after), "{shrunk_after}");
    }

    #[test]
    fn shrink_idle_releases_a_large_buffer() {
        let mut decoder = FrameDecoder::default();
        let big = frame(&[5; 200_000]);
        decoder.push(&big);
        assert_eq!(decoder.decode().unwrap().map(|b| b.len()), Some(200_000));
        // Part of the next frame is waiting: it survives the shrink.
        decoder.push(&big[..100]);
        assert_eq!(decoder.decode(), Ok(None));
        assert!(decoder.can_shrink_idle());
        assert!(decoder.shrink_idle());
        assert_eq!(decoder.capacity(), DEFAULT_READ_STEP);
        assert!(!decoder.can_shrink_idle());
        assert!(!decoder.shrink_idle());
        decoder.push(&big[100..]);
        assert_eq!(decoder.decode().unwrap().map(|b| b.len()), Some(200_000));
        // Nothing waiting: the buffer goes entirely.
        assert!(decoder.shrink_idle());
        assert_eq!(decoder.capacity(), 0);
        // More than a read step of a frame waiting: kept, it is needed.
        decoder.push(&big[..LENGTH_PREFIX_LEN + DEFAULT_READ_STEP + 1]);
        assert_eq!(decoder.decode(), Ok(None));
        assert!(!decoder.can_shrink_idle());
    }

    #[test]
    fn push_bytes_adopts_unique_buffer() {
        let mut decoder = FrameDecoder::default();
        let message = Bytes::from(frame(b"payload"));
        let base = message.as_ptr();
        decoder.push_bytes(message);
        let body = decoder.decode().unwrap().unwrap();
        assert_eq!(body, &b"payload"[..]);
        assert_eq!(body.as_ptr(), base.wrapping_add(LENGTH_PREFIX_LEN));
    }

    #[test]
    fn push_bytes_copies_shared_buffer() {
        let mut decoder = FrameDecoder::default();
        let message = Bytes::from(frame(b"payload"));
        decoder.push_bytes(message.clone());
        assert_eq!(decode_all(&mut decoder), [&b"payload"[..]]);
        assert_eq!(message.len(), LENGTH_PREFIX_LEN + 7);
    }

    #[test]
    fn decoded_frame_shares_read_buffer() {
        let mut decoder = FrameDecoder::default();
        let buf = decoder.read_buf();
        buf.extend_from_slice(&frame(b"abc"));
        let base = buf.as_ptr();
        let body = decoder.decode().unwrap().unwrap();
        assert_eq!(body.as_ptr(), base.wrapping_add(LENGTH_PREFIX_LEN));
    }

    #[test]
    fn write_frame_is_one_contiguous_buffer() {
        let envelope = sample_envelope();
        let mut dst = BytesMut::from(&b"xy"[..]);
        encode_frame(&envelope, DEFAULT_MAX_FRAME_LENGTH, &mut dst).unwrap();
        let body = envelope.encode_to_vec();
        assert_eq!(&dst[..2], b"xy");
        assert_eq!(&dst[2..], frame(&body).as_slice());
    }

    #[test]
    fn write_reserves_exactly_one_frame() {
        let envelope = sample_envelope();
        let mut dst = BytesMut::new();
        encode_frame(&envelope, DEFAULT_MAX_FRAME_LENGTH, &mut dst).unwrap();
        assert_eq!(dst.len(), LENGTH_PREFIX_LEN + envelope.encoded_len());
        assert_eq!(dst.capacity(), dst.len());
    }

    #[test]
    fn write_prefix_is_little_endian_body_length() {
        let envelope = Envelope {
            jwt: "j".repeat(300),
            ..Default::default()
        };
        let mut dst = BytesMut::new();
        encode_frame(&envelope, DEFAULT_MAX_FRAME_LENGTH, &mut dst).unwrap();
        let body_len = u32::try_from(envelope.encoded_len()).unwrap();
        assert_eq!(&dst[..4], body_len.to_le_bytes());
        assert_eq!(body_len, 303);
    }

    #[test]
    fn write_at_limit_ok() {
        let envelope = sample_envelope();
        let max = envelope.encoded_len();
        let mut dst = BytesMut::new();
        FrameEncoder::new(config_with_max(max))
            .encode(&envelope, &mut dst)
            .unwrap();
        let mut decoder = FrameDecoder::new(config_with_max(max));
        decoder.push(&dst);
        let body = decoder.decode().unwrap().unwrap();
        assert_eq!(Envelope::decode(body), Ok(envelope));
    }

    #[test]
    fn write_too_large_leaves_dst_unchanged() {
        let envelope = sample_envelope();
        let max = envelope.encoded_len() - 1;
        let mut dst = BytesMut::with_capacity(8);
        dst.extend_from_slice(b"abc");
        let capacity = dst.capacity();
        assert_eq!(
            encode_frame(&envelope, max, &mut dst),
            Err(FrameError::EncodeTooLarge { len: max + 1, max })
        );
        assert_eq!(&dst[..], b"abc");
        assert_eq!(dst.capacity(), capacity);
    }

    #[test]
    fn write_default_envelope_is_never_zero_length() {
        let mut dst = BytesMut::new();
        encode_frame(&Envelope::default(), DEFAULT_MAX_FRAME_LENGTH, &mut dst).unwrap();
        assert_eq!(&dst[..], [2, 0, 0, 0, 0x0A, 0x00]);
        let mut decoder = FrameDecoder::default();
        decoder.push(&dst);
        let body = decoder.decode().unwrap().unwrap();
        assert_eq!(Envelope::decode(body), Ok(Envelope::default()));
        assert_eq!(
            encode_frame(&Envelope::default(), 1, &mut dst),
            Err(FrameError::EncodeTooLarge { len: 2, max: 1 })
        );
    }

    /// `encode_frame` of the envelope `pack` builds from `header` and `message`.
    fn via_pack<M: crate::envelope::WireMessage>(header: &Envelope, message: &M) -> BytesMut {
        let envelope = Envelope {
            data: Some(crate::envelope::pack_any(message)),
            ..header.clone()
        };
        let mut dst = BytesMut::new();
        encode_frame(&envelope, DEFAULT_MAX_FRAME_LENGTH, &mut dst).unwrap();
        dst
    }

    #[test]
    fn packed_frame_matches_pack_then_encode() {
        use crate::proto::{PingRequest, QueryResponse, Stream};
        let header = Envelope {
            command: "stream".into(),
            priority: -2,
            seq: 300,
            id: "abcdefghi".into(),
            rid: "r".into(),
            jwt: "j".into(),
            traceid: "t".into(),
            spanid: "s".into(),
            data: Some(Any::default()),
        };
        let encoder = FrameEncoder::default();
        let mut dst = BytesMut::new();
        encoder
            .encode_packed(&header, &PingRequest {}, &mut dst)
            .unwrap();
        assert_eq!(dst, via_pack(&header, &PingRequest {}));
        let query = QueryResponse {
            results: "[{}]".repeat(50),
        };
        dst.clear();
        encode_packed_frame(
            &Envelope::default(),
            &query,
            DEFAULT_MAX_FRAME_LENGTH,
            &mut dst,
        )
        .unwrap();
        assert_eq!(dst, via_pack(&Envelope::default(), &query));
        let chunk = Stream {
            data: Bytes::from(vec![1; 70_000]),
        };
        dst.clear();
        encode_packed_frame(&header, &chunk, DEFAULT_MAX_FRAME_LENGTH, &mut dst).unwrap();
        assert_eq!(dst, via_pack(&header, &chunk));
        assert_eq!(
            dst.capacity(),
            dst.len(),
            "one reservation of the exact size"
        );
    }

    #[test]
    fn packed_body_len_is_the_packed_envelope_len() {
        use crate::proto::{PingRequest, Stream};
        let header = Envelope {
            command: "stream".into(),
            seq: 70_000,
            id: "i".into(),
            rid: "r".repeat(200),
            ..Envelope::default()
        };
        let chunk = Stream {
            data: Bytes::from(vec![1; 20_000]),
        };
        let packed = Envelope {
            data: Some(crate::envelope::pack_any(&chunk)),
            ..header.clone()
        };
        assert_eq!(packed_body_len(&header, &chunk), packed.encoded_len());
        let ping = Envelope {
            data: Some(crate::envelope::pack_any(&PingRequest {})),
            ..header.clone()
        };
        assert_eq!(
            packed_body_len(&header, &PingRequest {}),
            ping.encoded_len()
        );
    }

    #[test]
    fn chunk_frame_head_plus_data_is_the_packed_frame() {
        use crate::proto::Stream;
        let mut header = Envelope {
            command: "stream".into(),
            seq: 1 << 20,
            id: "abc".into(),
            rid: "r".repeat(130),
            ..Envelope::default()
        };
        for len in [1, 127, 128, 70_000] {
            let chunk = Stream {
                data: Bytes::from(vec![3; len]),
            };
            let mut whole = BytesMut::new();
            encode_packed_frame(&header, &chunk, DEFAULT_MAX_FRAME_LENGTH, &mut whole).unwrap();
            let mut head = BytesMut::from(&b"x"[..]);
            assert!(
                encode_chunk_frame_head(&header, &chunk, DEFAULT_MAX_FRAME_LENGTH, &mut head)
                    .unwrap()
            );
            assert_eq!([&head[1..], &chunk.data[..]].concat(), whole, "{len}");
            let mut small = BytesMut::new();
            assert!(matches!(
                encode_chunk_frame_head(&header, &chunk, 10, &mut small),
                Err(FrameError::EncodeTooLarge { max: 10, .. })
            ));
            assert!(small.is_empty());
        }
        let mut dst = BytesMut::new();
        let empty = Stream::default();
        assert_eq!(
            encode_chunk_frame_head(&header, &empty, DEFAULT_MAX_FRAME_LENGTH, &mut dst),
            Ok(false)
        );
        header.jwt = "j".into();
        let chunk = Stream {
            data: Bytes::from_static(b"data"),
        };
        assert_eq!(
            encode_chunk_frame_head(&header, &chunk, DEFAULT_MAX_FRAME_LENGTH, &mut dst),
            Ok(false)
        );
        assert!(dst.is_empty());
    }

    #[test]
    fn packed_type_url_is_the_generated_one() {
        use crate::proto::{PingRequest, QueryResponse, SigninRequest, Stream};
        assert_eq!(
            TYPE_URL_DOMAIN.len() + "openiap.Stream".len(),
            type_url_len::<Stream>()
        );
        for (len, url) in [
            (type_url_len::<PingRequest>(), PingRequest::type_url()),
            (type_url_len::<QueryResponse>(), QueryResponse::type_url()),
            (type_url_len::<SigninRequest>(), SigninRequest::type_url()),
        ] {
            assert_eq!(len, url.len(), "{url}");
        }
    }

    #[test]
    fn packed_frame_too_large_leaves_dst_unchanged() {
        let chunk = crate::proto::Stream {
            data: Bytes::from(vec![0; 100]),
        };
        let mut dst = BytesMut::from(&b"abc"[..]);
        let result = encode_packed_frame(&Envelope::default(), &chunk, 100, &mut dst);
        assert!(
            matches!(result, Err(FrameError::EncodeTooLarge { max: 100, .. })),
            "{result:?}"
        );
        assert_eq!(&dst[..], b"abc");
    }

    #[test]
    fn frame_encoder_uses_config() {
        let encoder = FrameEncoder::new(config_with_max(4));
        assert_eq!(encoder.config().max_frame_length(), 4);
        let mut dst = BytesMut::new();
        assert!(matches!(
            encoder.encode(&sample_envelope(), &mut dst),
            Err(FrameError::EncodeTooLarge { max: 4, .. })
        ));
        assert!(dst.is_empty());
    }

    #[test]
    fn read_step_is_clamped() {
        let mut config = FrameConfig::default();
        config.set_read_step(1);
        assert_eq!(config.read_step(), MIN_READ_STEP);
    }

    #[test]
    fn exercise_fuzz_decode() {
        fuzz_decode(&[]);
        fuzz_decode(&[0]);
        fuzz_decode(&[0, 3, 0, 0, 0, 1, 2, 3, 0, 0, 0, 0]);
        fuzz_decode(&[1, 0, 0, 0, 0]);
        fuzz_decode(&[2, 0xFF, 0xFF, 0xFF, 0xFF, 1]);
        let mut long = vec![6];
        for _ in 0..40 {
            long.extend(frame(&[0x41; 100]));
        }
        fuzz_decode(&long);
    }

    fn arb_envelope() -> impl Strategy<Value = Envelope> {
        let payload =
            (any::<String>(), vec(any::<u8>(), 0..512)).prop_map(|(type_url, value)| Any {
                type_url,
                value: value.into(),
            });
        (
            (any::<String>(), any::<i32>(), any::<i32>(), any::<String>()),
            (any::<String>(), proptest::option::of(payload)),
            (any::<String>(), any::<String>(), any::<String>()),
        )
            .prop_map(
                |((command, priority, seq, id), (rid, data), (jwt, traceid, spanid))| Envelope {
                    command,
                    priority,
                    seq,
                    id,
                    rid,
                    data,
                    jwt,
                    traceid,
                    spanid,
                },
            )
    }

    /// Feeds `wire` cut at `cuts`, alternating the three ways in.
    fn feed_split(decoder: &mut FrameDecoder, wire: &[u8], cuts: &[usize]) -> Vec<Bytes> {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
        cuts.sort_unstable();
        cuts.push(wire.len());
        let mut frames = Vec::new();
        let mut start = 0;
        for (i, end) in cuts.into_iter().enumerate() {
            let piece = &wire[start..end];
            start = end;
            match i % 3 {
                0 => decoder.push(piece),
                1 => decoder.push_bytes(Bytes::copy_from_slice(piece)),
                _ => decoder.read_buf().extend_from_slice(piece),
            }
            frames.extend(decode_all(decoder));
        }
        frames
    }

    proptest! {
        #[test]
        fn prop_encode_decode_roundtrip(envelopes in vec(arb_envelope(), 0..6)) {
            let mut wire = BytesMut::new();
            for envelope in &envelopes {
                encode_frame(envelope, DEFAULT_MAX_FRAME_LENGTH, &mut wire).unwrap();
            }
            let mut decoder = FrameDecoder::default();
            decoder.push_bytes(wire.freeze());
            let decoded: Vec<Envelope> = decode_all(&mut decoder)
                .into_iter()
                .map(|body| {
                    prop_assert!(!body.is_empty());
                    Ok(Envelope::decode(body).unwrap())
                })
                .collect::<Result<_, TestCaseError>>()?;
            prop_assert_eq!(decoded, envelopes);
            prop_assert_eq!(decoder.finish(), Ok(()));
        }

        #[test]
        fn prop_packed_frame_matches_pack(
            header in arb_envelope(),
            data in vec(any::<u8>(), 0..600),
            results in any::<String>(),
        ) {
            let chunk = crate::proto::Stream { data: data.into() };
            let mut dst = BytesMut::new();
            encode_packed_frame(&header, &chunk, DEFAULT_MAX_FRAME_LENGTH, &mut dst).unwrap();
            prop_assert_eq!(&dst, &via_pack(&header, &chunk));
            // The head writer is shared: the chunk's head and its data are
            // the same bytes, when the head applies (no fields after `data`).
            let bare = Envelope {
                jwt: String::new(),
                traceid: String::new(),
                spanid: String::new(),
                ..header.clone()
            };
            for header in [&header, &bare] {
                let mut head = BytesMut::new();
                let applies =
                    encode_chunk_frame_head(header, &chunk, DEFAULT_MAX_FRAME_LENGTH, &mut head)
                        .unwrap();
                prop_assert_eq!(
                    applies,
                    !chunk.data.is_empty() && header_len(header, false) == 0
                );
                if applies {
                    prop_assert_eq!(
                        [&head[..], &chunk.data[..]].concat(),
                        via_pack(header, &chunk)
                    );
                } else {
                    prop_assert!(head.is_empty());
                }
            }
            let query = crate::proto::QueryResponse { results };
            dst.clear();
            encode_packed_frame(&header, &query, DEFAULT_MAX_FRAME_LENGTH, &mut dst).unwrap();
            prop_assert_eq!(&dst, &via_pack(&header, &query));
        }

        #[test]
        fn prop_frame_head_plus_value_is_the_frame(envelope in arb_envelope()) {
            let bare = Envelope {
                jwt: String::new(),
                traceid: String::new(),
                spanid: String::new(),
                ..envelope.clone()
            };
            for envelope in [&envelope, &bare] {
                let mut whole = BytesMut::new();
                encode_frame(envelope, DEFAULT_MAX_FRAME_LENGTH, &mut whole).unwrap();
                let mut head = BytesMut::from(&b"x"[..]);
                let applies =
                    encode_frame_head(envelope, DEFAULT_MAX_FRAME_LENGTH, &mut head).unwrap();
                let value = envelope.data.as_ref().map(|any| any.value.clone());
                prop_assert_eq!(
                    applies,
                    value.as_ref().is_some_and(|v| !v.is_empty())
                        && header_len(envelope, false) == 0
                );
                if applies {
                    let value = value.unwrap_or_default();
                    prop_assert_eq!([&head[1..], &value[..]].concat(), whole.to_vec());
                } else {
                    prop_assert_eq!(&head[..], b"x");
                }
                let mut small = BytesMut::new();
                let limit = whole.len() - LENGTH_PREFIX_LEN - 1;
                let too_large = matches!(
                    encode_frame_head(envelope, limit, &mut small),
                    Err(FrameError::EncodeTooLarge { .. })
                );
                prop_assert!(too_large);
                prop_assert!(small.is_empty());
            }
        }

        #[test]
        fn prop_split_invariance(
            bodies in vec(vec(any::<u8>(), 0..300), 0..8),
            cuts in vec(any::<usize>(), 0..24),
        ) {
            let wire: Vec<u8> = bodies.iter().flat_map(|b| frame(b)).collect();
            let mut decoder = FrameDecoder::default();
            let frames = feed_split(&mut decoder, &wire, &cuts);
            prop_assert_eq!(frames, bodies);
            prop_assert_eq!(decoder.buffered(), 0);
            prop_assert_eq!(decoder.finish(), Ok(()));
        }

        #[test]
        fn prop_arbitrary_bytes_never_panic(data in vec(any::<u8>(), 0..4096)) {
            fuzz_decode(&data);
        }

        #[test]
        fn prop_buffer_within_twice_the_largest_frame(
            sizes in vec(prop_oneof![0..64usize, 0..5_000usize, 0..200_000usize], 1..8),
            pieces in vec(1..1500usize, 1..64),
            keep_frames in any::<bool>(),
        ) {
            let wire: Vec<u8> = sizes.iter().flat_map(|&n| frame(&vec![7; n])).collect();
            let mut decoder = FrameDecoder::default();
            let mut held = Vec::new();
            let (mut at, mut piece, mut largest, mut count) = (0, 0, 0, 0);
            while at < wire.len() {
                let len = pieces[piece % pieces.len()].min(wire.len() - at);
                piece += 1;
                let chunk = &wire[at..at + len];
                match piece % 3 {
                    0 => decoder.push(chunk),
                    1 => decoder.push_bytes(Bytes::copy_from_slice(chunk)),
                    _ => decoder.read_buf().extend_from_slice(chunk),
                }
                at += len;
                // The frame being received counts once its prefix is in.
                let mut start = 0;
                for &n in &sizes {
                    if start < at {
                        largest = largest.max(LENGTH_PREFIX_LEN + n);
                    }
                    start += LENGTH_PREFIX_LEN + n;
                }
                let bound = (2 * largest).max(2 * DEFAULT_READ_STEP);
                prop_assert!(
                    decoder.capacity() <= bound,
                    "capacity {} above {} after {} bytes", decoder.capacity(), bound, at
                );
                while let Some(body) = decoder.decode().unwrap() {
                    prop_assert_eq!(body.len(), sizes[count]);
                    count += 1;
                    if keep_frames {
                        held.push(body);
                    }
                }
                prop_assert!(decoder.capacity() <= bound);
            }
            prop_assert_eq!(count, sizes.len());
        }

        #[test]
        fn prop_memory_bounded_by_received_bytes(
            declared in any::<u32>(),
            pieces in vec(vec(any::<u8>(), 0..2048), 0..16),
        ) {
            let mut decoder = FrameDecoder::new(config_with_max(usize::MAX));
            decoder.push(&declared.to_le_bytes());
            let mut received = LENGTH_PREFIX_LEN;
            for piece in &pieces {
                decoder.read_buf().extend_from_slice(piece);
                received += piece.len();
                while decoder.decode().unwrap().is_some() {}
                prop_assert!(decoder.buffered() <= received);
                prop_assert!(
                    decoder.capacity() <= 2 * (received + DEFAULT_READ_STEP) + DEFAULT_SHRINK_THRESHOLD,
                    "capacity {} after {} bytes", decoder.capacity(), received
                );
            }
        }
    }
}
