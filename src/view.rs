//! A borrowed, allocation-free view of an Envelope's header fields.
//!
//! [`decode_envelope`](crate::envelope::decode_envelope) builds an owned
//! [`Envelope`]: one heap allocation per non-empty string (`command`, `id`,
//! `rid`, `type_url`, `jwt`, ...). For a small RPC such as `ping` those
//! allocations are most of the decode cost. [`EnvelopeView::parse`] reads the
//! same fields straight out of the frame body instead: strings are `&str`
//! slices of the frame, the payload is a [`Bytes`] that shares the frame, and
//! nothing is allocated.
//!
//! ```text
//!   frame body (Bytes) ─────────────────────────────────────────────────┐
//!   | 0a 04 "ping" | 18 07 | 22 09 "abcdefghi" | 32 .. (Any) .. |      │
//!        │                        │                    │               │
//!        ▼                        ▼                    ▼               │
//!   command: &str            id: &str        type_url: &str, value ◄───┘
//!   (borrowed)               (borrowed)      value(): Bytes sharing the frame
//! ```
//!
//! # Agreement with the owned decode
//!
//! The view accepts exactly the bytes prost accepts for [`Envelope`] and reads
//! the same values from them (a proptest checks both directions):
//!
//! | input                                   | view and owned decode              |
//! |-----------------------------------------|------------------------------------|
//! | a field repeated                        | the last occurrence wins           |
//! | `data` (field 6) repeated               | merged: each inner field, last wins |
//! | an unknown field, groups included       | skipped                            |
//! | a known field with the wrong wire type  | error                              |
//! | a string that is not UTF-8              | error                              |
//! | a length or varint past the end         | error                              |
//! | groups nested deeper than 100 levels    | error (prost's recursion limit)    |
//!
//! ```
//! use openiap_wire::envelope::{encode_envelope, pack};
//! use openiap_wire::proto::PingRequest;
//! use openiap_wire::view::EnvelopeView;
//!
//! let mut envelope = pack(&PingRequest::default());
//! envelope.id = "abcdefghi".into();
//! envelope.seq = 7;
//! let frame = encode_envelope(&envelope);
//!
//! let view = EnvelopeView::parse(&frame)?;
//! assert_eq!((view.command(), view.id(), view.seq()), ("ping", "abcdefghi", 7));
//! assert_eq!(view.type_url(), "type.googleapis.com/openiap.PingRequest");
//! assert_eq!(view.to_envelope(), envelope);
//! # Ok::<(), openiap_wire::view::ViewError>(())
//! ```

use bytes::Bytes;
use prost::{Message, Name};

use crate::command::{CommandError, Validation, decode_as};
use crate::envelope::WireMessage;
use crate::proto::Envelope;
use crate::proto::google::protobuf::Any;

/// How deep unknown groups may nest, as prost's default recursion limit.
const RECURSION_LIMIT: u32 = 100;

/// Longest varint, in bytes.
const MAX_VARINT_LEN: usize = 10;

/// Protobuf wire types.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const START_GROUP: u8 = 3;
const END_GROUP: u8 = 4;
const FIXED32: u8 = 5;

/// Why a frame body could not be viewed as an Envelope.
///
/// Every variant carries the byte offset in the frame body where parsing
/// stopped. The same bytes also fail [`decode_envelope`](crate::envelope::decode_envelope).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ViewError {
    /// A field or length ran past the end of its enclosing message.
    #[error("at byte {offset}: {needed} bytes needed, {remaining} left")]
    Truncated {
        /// Offset of the field's value.
        offset: usize,
        /// Bytes the field declares.
        needed: u64,
        /// Bytes left in the enclosing message.
        remaining: usize,
    },
    /// A varint longer than 10 bytes, overflowing 64 bits, or cut short.
    #[error("at byte {offset}: invalid varint")]
    InvalidVarint {
        /// Offset of the varint's first byte.
        offset: usize,
    },
    /// A field key that is not valid protobuf: above `u32::MAX`, field
    /// number 0, wire type 6 or 7, or an end-group without its start.
    #[error("at byte {offset}: invalid field key {key}")]
    InvalidKey {
        /// Offset of the key.
        offset: usize,
        /// The key as read.
        key: u64,
    },
    /// A known field arrived with another wire type than the schema's.
    #[error("at byte {offset}: field {field} has wire type {found}, expected {expected}")]
    WireType {
        /// Offset of the key.
        offset: usize,
        /// Field number.
        field: u32,
        /// Wire type in the schema.
        expected: u8,
        /// Wire type received.
        found: u8,
    },
    /// A string field holds bytes that are not UTF-8.
    #[error("at byte {offset}: field {field} is not valid UTF-8")]
    InvalidUtf8 {
        /// Offset of the string's first byte.
        offset: usize,
        /// Field name (`"command"`, `"type_url"`, ...).
        field: &'static str,
    },
    /// Unknown groups nested deeper than the recursion limit (100).
    #[error("at byte {offset}: groups nested deeper than {limit}")]
    TooDeep {
        /// Offset of the group that went too deep.
        offset: usize,
        /// The limit.
        limit: u32,
    },
}

/// The header fields of an Envelope, borrowed from its frame body.
///
/// Build it with [`parse`](Self::parse); see the [module docs](self).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvelopeView<'a> {
    frame: &'a Bytes,
    command: Text<'a>,
    priority: i32,
    seq: i32,
    id: Text<'a>,
    rid: Text<'a>,
    has_data: bool,
    type_url: Text<'a>,
    value: &'a [u8],
    jwt: Text<'a>,
    traceid: Text<'a>,
    spanid: Text<'a>,
}

/// A string field that [`EnvelopeView::parse`] has checked to be UTF-8,
/// kept as bytes: the `&str` is made when an accessor asks for it.
///
/// Checking is cheap for ASCII (`<[u8]>::is_ascii` reads a word at a time),
/// but making a `&str` without `unsafe` means `str::from_utf8`, which walks
/// the bytes again and costs about 80 instructions even for a 4-byte
/// command. Fields nobody reads (`jwt`, `traceid`, `spanid` on most paths)
/// never pay it, and the type URL, about 40 bytes on every envelope, is
/// compared as bytes by [`EnvelopeView::is_type`].
#[derive(Clone, Copy, Default, PartialEq, Eq)]
struct Text<'a>(&'a [u8]);

impl<'a> Text<'a> {
    #[inline]
    fn as_str(self) -> &'a str {
        if self.0.is_empty() {
            return "";
        }
        // `parse` accepted these bytes as UTF-8, so this never falls back.
        std::str::from_utf8(self.0).unwrap_or_default()
    }
}

impl std::fmt::Debug for Text<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl<'a> EnvelopeView<'a> {
    /// Reads the Envelope in `frame` without allocating.
    ///
    /// # Errors
    ///
    /// A [`ViewError`] when `frame` is not a valid protobuf `Envelope`
    /// (exactly when [`decode_envelope`](crate::envelope::decode_envelope)
    /// fails).
    #[inline(always)]
    pub fn parse(frame: &'a Bytes) -> Result<Self, ViewError> {
        let mut view = Self {
            frame,
            command: Text::default(),
            priority: 0,
            seq: 0,
            id: Text::default(),
            rid: Text::default(),
            has_data: false,
            type_url: Text::default(),
            value: &[],
            jwt: Text::default(),
            traceid: Text::default(),
            spanid: Text::default(),
        };
        let mut reader = Reader::new(frame, 0);
        while !reader.at_end() {
            let key_at = reader.pos;
            let (field, wire_type) = reader.key()?;
            match (field, wire_type) {
                (1, LEN) => view.command = reader.text("command")?,
                (2, VARINT) => view.priority = reader.int32()?,
                (3, VARINT) => view.seq = reader.int32()?,
                (4, LEN) => view.id = reader.text("id")?,
                (5, LEN) => view.rid = reader.text("rid")?,
                (6, LEN) => {
                    let any = reader.len_prefixed()?;
                    let base = reader.offset().saturating_sub(any.len());
                    view.has_data = true;
                    view.merge_any(any, base)?;
                }
                (7, LEN) => view.jwt = reader.text("jwt")?,
                (8, LEN) => view.traceid = reader.text("traceid")?,
                (9, LEN) => view.spanid = reader.text("spanid")?,
                (2 | 3, _) => return Err(reader.wire_type_error(key_at, field, VARINT, wire_type)),
                (1..=9, _) => return Err(reader.wire_type_error(key_at, field, LEN, wire_type)),
                _ => reader.pos = reader.skip(field, wire_type, key_at, RECURSION_LIMIT)?,
            }
        }
        Ok(view)
    }

    /// Merges one occurrence of the `data` field, as protobuf merges a
    /// repeated message field: each inner field present overwrites.
    #[inline(always)]
    fn merge_any(&mut self, any: &'a [u8], base: usize) -> Result<(), ViewError> {
        let mut reader = Reader::new(any, base);
        while !reader.at_end() {
            let key_at = reader.pos;
            let (field, wire_type) = reader.key()?;
            match (field, wire_type) {
                (1, LEN) => self.type_url = reader.text("type_url")?,
                (2, LEN) => self.value = reader.len_prefixed()?,
                (1 | 2, _) => return Err(reader.wire_type_error(key_at, field, LEN, wire_type)),
                _ => reader.pos = reader.skip(field, wire_type, key_at, RECURSION_LIMIT - 1)?,
            }
        }
        Ok(())
    }

    /// The frame body this view reads.
    pub fn frame(&self) -> &'a Bytes {
        self.frame
    }

    /// Field 1, `command`.
    ///
    /// Every string accessor makes its `&str` on each call (a UTF-8 pass
    /// over bytes that [`parse`](Self::parse) already checked); keep the
    /// result when you need it more than once.
    pub fn command(&self) -> &'a str {
        self.command.as_str()
    }

    /// Field 2, `priority`.
    pub fn priority(&self) -> i32 {
        self.priority
    }

    /// Field 3, `seq`.
    pub fn seq(&self) -> i32 {
        self.seq
    }

    /// Field 4, `id`.
    pub fn id(&self) -> &'a str {
        self.id.as_str()
    }

    /// Field 5, `rid`.
    pub fn rid(&self) -> &'a str {
        self.rid.as_str()
    }

    /// Whether field 6, `data`, is present (possibly as an empty `Any`).
    /// The owned decode has `data: Some(_)` exactly when this is true.
    pub fn has_data(&self) -> bool {
        self.has_data
    }

    /// `data.type_url`; empty when there is no data.
    pub fn type_url(&self) -> &'a str {
        self.type_url.as_str()
    }

    /// The schema name the type URL points at (`"openiap.PingRequest"` ->
    /// `"PingRequest"`), as [`command::type_name`](crate::command::type_name).
    pub fn type_name(&self) -> Option<&'a str> {
        crate::command::type_name(self.type_url())
    }

    /// Whether the type URL names `M` exactly, `[prefix/]<M::PACKAGE>.<M::NAME>`:
    /// the [`Validation::Strict`] rule.
    /// For the schema's `openiap` messages this is the same answer as
    /// `self.type_name() == Some(M::NAME)`, compared from the end of the URL
    /// without scanning the prefix.
    pub fn is_type<M: Name>(&self) -> bool {
        let Some(head) = self.type_url.0.strip_suffix(M::NAME.as_bytes()) else {
            return false;
        };
        let Some(head) = head
            .strip_suffix(b".")
            .and_then(|head| head.strip_suffix(M::PACKAGE.as_bytes()))
        else {
            return false;
        };
        head.is_empty() || head.ends_with(b"/")
    }

    /// `data.value` as a slice of the frame; empty when there is no data.
    pub fn value_slice(&self) -> &'a [u8] {
        self.value
    }

    /// `data.value` as a [`Bytes`] sharing the frame (a reference count, no
    /// copy); empty when there is no data.
    pub fn value(&self) -> Bytes {
        if self.value.is_empty() {
            return Bytes::new();
        }
        // `value` was sliced out of `frame` by `parse`, so it lies inside it.
        self.frame.slice_ref(self.value)
    }

    /// Decodes `data.value` as `M`, sharing the frame for `bytes` fields.
    /// Neither the command nor the type URL is checked.
    ///
    /// # Errors
    ///
    /// prost's error when the value is not a valid `M`.
    pub fn decode_value<M: Message + Default>(&self) -> Result<M, prost::DecodeError> {
        M::decode(self.value())
    }

    /// Decodes the payload as `M`, checked as [`unpack`](crate::envelope::unpack)
    /// checks the owned envelope (same results, same errors): the command
    /// must be `M::COMMAND`, then the data is checked under `validation`.
    /// `bytes` fields share the frame.
    ///
    /// The common case, a type URL naming `M` exactly, is checked from the
    /// end of the URL without allocating; other forms (the lenient ones, a
    /// mismatch, no data) take the owned path.
    ///
    /// # Errors
    ///
    /// As [`unpack`](crate::envelope::unpack).
    pub fn unpack<M: WireMessage>(&self, validation: Validation) -> Result<M, CommandError> {
        if self.command.0 != M::COMMAND.as_bytes() {
            return Err(CommandError::UnexpectedCommand {
                expected: M::COMMAND,
                actual: self.command().to_owned(),
            });
        }
        let spec = M::SPEC;
        if self.has_data && self.is_type::<M>() {
            // `is_type` is the Strict rule, which both policies accept.
            return M::decode(self.value()).map_err(|source| CommandError::Payload {
                command: spec.command,
                type_name: spec.type_name,
                source,
            });
        }
        let any = self.has_data.then(|| Any {
            type_url: self.type_url().to_owned(),
            value: self.value(),
        });
        decode_as(spec, any.as_ref(), validation)
    }

    /// Field 7, `jwt`.
    pub fn jwt(&self) -> &'a str {
        self.jwt.as_str()
    }

    /// Field 8, `traceid`.
    pub fn traceid(&self) -> &'a str {
        self.traceid.as_str()
    }

    /// Field 9, `spanid`.
    pub fn spanid(&self) -> &'a str {
        self.spanid.as_str()
    }

    /// The owned [`Envelope`] with the same fields (allocates; the payload
    /// still shares the frame).
    pub fn to_envelope(&self) -> Envelope {
        self.to_envelope_with(self.command(), self.id(), self.rid())
    }

    /// [`to_envelope`](Self::to_envelope) for a caller that already made
    /// the `command`, `id` and `rid` strings of this view (each accessor
    /// runs a UTF-8 pass).
    pub(crate) fn to_envelope_with(&self, command: &str, id: &str, rid: &str) -> Envelope {
        debug_assert_eq!((command, id, rid), (self.command(), self.id(), self.rid()));
        Envelope {
            command: command.to_owned(),
            priority: self.priority,
            seq: self.seq,
            id: id.to_owned(),
            rid: rid.to_owned(),
            data: self.has_data.then(|| Any {
                type_url: self.type_url().to_owned(),
                value: self.value(),
            }),
            jwt: self.jwt().to_owned(),
            traceid: self.traceid().to_owned(),
            spanid: self.spanid().to_owned(),
        }
    }
}

/// Whether every byte is below 0x80, which makes `bytes` valid UTF-8.
///
/// Header strings are short (a 4-byte command, a 9-byte id), where
/// `<[u8]>::is_ascii` spends more on its call and setup than on the bytes;
/// this reads one or two (overlapping) words for up to 16 bytes and a word
/// at a time beyond, inline.
#[inline]
fn is_ascii(bytes: &[u8]) -> bool {
    const HIGH: u64 = 0x8080_8080_8080_8080;
    if let (Some(first), Some(last)) = (bytes.first_chunk::<8>(), bytes.last_chunk::<8>()) {
        let mut acc = u64::from_ne_bytes(*first) | u64::from_ne_bytes(*last);
        if bytes.len() > 16 {
            let (words, _) = bytes.as_chunks::<8>();
            for word in words {
                acc |= u64::from_ne_bytes(*word);
            }
        }
        acc & HIGH == 0
    } else if let (Some(first), Some(last)) = (bytes.first_chunk::<4>(), bytes.last_chunk::<4>()) {
        (u32::from_ne_bytes(*first) | u32::from_ne_bytes(*last)) & 0x8080_8080 == 0
    } else {
        bytes.iter().fold(0, |acc, &byte| acc | byte) < 0x80
    }
}

/// A cursor over one protobuf message: `message` is its bytes, `base` its
/// offset in the frame body (for error offsets) and `pos` the next unread
/// byte of `message`. Errors are built in `#[cold]` functions so that the
/// success path stays small.
///
/// Everything off the success path (long varints, unknown fields, errors)
/// takes the reader by value, never by reference, so that a parse keeps its
/// reader in registers.
#[derive(Clone, Copy)]
struct Reader<'a> {
    message: &'a [u8],
    base: usize,
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(message: &'a [u8], base: usize) -> Self {
        Self {
            message,
            base,
            pos: 0,
        }
    }

    #[inline(always)]
    fn at_end(&self) -> bool {
        self.pos >= self.message.len()
    }

    /// Offset in the frame body of the next unread byte.
    fn offset(&self) -> usize {
        self.base.saturating_add(self.pos)
    }

    /// A varint. Keys and lengths almost always fit one byte and seqs two,
    /// so those cases are checked first.
    #[inline(always)]
    fn varint(&mut self) -> Result<u64, ViewError> {
        match self.message.get(self.pos..).unwrap_or_default() {
            [low, ..] if *low < 0x80 => {
                self.pos = self.pos.saturating_add(1);
                Ok(u64::from(*low))
            }
            // Two bytes: seqs up to 16383, lengths up to 16 KiB.
            [low, high, ..] if *high < 0x80 => {
                self.pos = self.pos.saturating_add(2);
                Ok(u64::from(low & 0x7f) | (u64::from(*high) << 7))
            }
            _ => {
                let (value, pos) = self.varint_slow()?;
                self.pos = pos;
                Ok(value)
            }
        }
    }

    /// A varint of any length: its value and the position after it.
    #[inline(never)]
    fn varint_slow(self) -> Result<(u64, usize), ViewError> {
        let rest = self.message.get(self.pos..).unwrap_or_default();
        let mut value: u64 = 0;
        for (count, &byte) in rest.iter().take(MAX_VARINT_LEN).enumerate() {
            value |= u64::from(byte & 0x7f) << (count * 7);
            if byte < 0x80 {
                if count == MAX_VARINT_LEN - 1 && byte >= 0x02 {
                    break;
                }
                return Ok((value, self.pos.saturating_add(count + 1)));
            }
        }
        Err(self.invalid_varint())
    }

    /// The next key as (field number, wire type). Call only when not
    /// [`at_end`](Self::at_end).
    #[inline(always)]
    fn key(&mut self) -> Result<(u32, u8), ViewError> {
        let at = self.pos;
        let key = self.varint()?;
        let wire_type = (key & 0x07) as u8;
        match u32::try_from(key) {
            Ok(key32) if key32 >> 3 != 0 && wire_type <= FIXED32 => Ok((key32 >> 3, wire_type)),
            _ => Err(self.invalid_key(at, key)),
        }
    }

    #[inline(always)]
    fn take(&mut self, len: u64) -> Result<&'a [u8], ViewError> {
        let end = usize::try_from(len)
            .ok()
            .and_then(|len| self.pos.checked_add(len));
        match end.and_then(|end| Some((self.message.get(self.pos..end)?, end))) {
            Some((taken, end)) => {
                self.pos = end;
                Ok(taken)
            }
            None => Err(self.truncated(len)),
        }
    }

    /// A length-delimited value.
    #[inline(always)]
    fn len_prefixed(&mut self) -> Result<&'a [u8], ViewError> {
        let len = self.varint()?;
        self.take(len)
    }

    /// A string field, checked as UTF-8 and kept as bytes ([`Text`]).
    #[inline(always)]
    fn text(&mut self, field: &'static str) -> Result<Text<'a>, ViewError> {
        let bytes = self.len_prefixed()?;
        if is_ascii(bytes) || std::str::from_utf8(bytes).is_ok() {
            Ok(Text(bytes))
        } else {
            Err(self.invalid_utf8(bytes.len(), field))
        }
    }

    /// protobuf int32: the low 32 bits of the varint.
    #[inline(always)]
    fn int32(&mut self) -> Result<i32, ViewError> {
        Ok(self.varint()? as i32)
    }

    #[cold]
    fn invalid_varint(self) -> ViewError {
        ViewError::InvalidVarint {
            offset: self.offset(),
        }
    }

    #[cold]
    fn invalid_key(self, at: usize, key: u64) -> ViewError {
        ViewError::InvalidKey {
            offset: self.base.saturating_add(at),
            key,
        }
    }

    #[cold]
    fn truncated(self, needed: u64) -> ViewError {
        ViewError::Truncated {
            offset: self.offset(),
            needed,
            remaining: self.message.len().saturating_sub(self.pos),
        }
    }

    /// `len` bytes of string just read were not UTF-8.
    #[cold]
    fn invalid_utf8(self, len: usize, field: &'static str) -> ViewError {
        ViewError::InvalidUtf8 {
            offset: self.offset().saturating_sub(len),
            field,
        }
    }

    #[cold]
    fn wire_type_error(self, at: usize, field: u32, expected: u8, found: u8) -> ViewError {
        ViewError::WireType {
            offset: self.base.saturating_add(at),
            field,
            expected,
            found,
        }
    }

    /// Skips an unknown field whose key was just read; `budget` is the
    /// recursion left for groups. Returns the position after the field.
    #[inline(never)]
    fn skip(
        mut self,
        field: u32,
        wire_type: u8,
        key_at: usize,
        budget: u32,
    ) -> Result<usize, ViewError> {
        if budget == 0 {
            return Err(ViewError::TooDeep {
                offset: self.base.saturating_add(key_at),
                limit: RECURSION_LIMIT,
            });
        }
        match wire_type {
            VARINT => {
                self.varint()?;
            }
            FIXED64 => {
                self.take(8)?;
            }
            LEN => {
                self.len_prefixed()?;
            }
            FIXED32 => {
                self.take(4)?;
            }
            START_GROUP => loop {
                if self.at_end() {
                    // The message ended inside the group.
                    return Err(self.truncated(1));
                }
                let inner_at = self.pos;
                let (inner, inner_type) = self.key()?;
                if inner_type == END_GROUP {
                    if inner != field {
                        let key = (u64::from(inner) << 3) | u64::from(END_GROUP);
                        return Err(self.invalid_key(inner_at, key));
                    }
                    break;
                }
                self.pos = self.skip(inner, inner_type, inner_at, budget - 1)?;
            },
            _ => {
                let key = (u64::from(field) << 3) | u64::from(wire_type);
                return Err(self.invalid_key(key_at, key));
            }
        }
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{decode_envelope, encode_envelope, pack};
    use crate::proto::{PingRequest, Stream};
    use proptest::collection::vec;
    use proptest::prelude::*;

    fn ping(id: &str, seq: i32) -> Envelope {
        Envelope {
            id: id.to_owned(),
            seq,
            ..pack(&PingRequest::default())
        }
    }

    /// Parses `frame` with both decoders and checks they agree (the check
    /// the envelope fuzz target makes).
    fn agree(frame: &Bytes) -> Result<(), TestCaseError> {
        crate::fuzzing::view_agrees(frame, &decode_envelope(frame.clone()))
            .map_err(TestCaseError::fail)
    }

    #[test]
    fn parse_reads_every_header_field() {
        let envelope = Envelope {
            command: "queryreply".into(),
            priority: -3,
            seq: 41,
            id: "abcdefghi".into(),
            rid: "r1".into(),
            data: Some(Any {
                type_url: "type.googleapis.com/openiap.QueryResponse".into(),
                value: Bytes::from_static(b"\x0a\x02[]"),
            }),
            jwt: "j".into(),
            traceid: "t".into(),
            spanid: "s".into(),
        };
        let frame = encode_envelope(&envelope);
        let view = EnvelopeView::parse(&frame).unwrap();
        assert_eq!(view.command(), "queryreply");
        assert_eq!((view.priority(), view.seq()), (-3, 41));
        assert_eq!((view.id(), view.rid()), ("abcdefghi", "r1"));
        assert_eq!(view.type_name(), Some("QueryResponse"));
        assert_eq!(view.value_slice(), b"\x0a\x02[]");
        assert_eq!((view.jwt(), view.traceid(), view.spanid()), ("j", "t", "s"));
        assert_eq!(view.to_envelope(), envelope);
    }

    #[test]
    fn empty_frame_is_the_default_envelope() {
        let frame = Bytes::new();
        let view = EnvelopeView::parse(&frame).unwrap();
        assert!(!view.has_data());
        assert_eq!(view.to_envelope(), Envelope::default());
    }

    #[test]
    fn empty_any_is_present_data() {
        // Field 6 with length 0: `data: Some(Any::default())`.
        let frame = Bytes::from_static(&[0x32, 0x00]);
        let view = EnvelopeView::parse(&frame).unwrap();
        assert!(view.has_data());
        assert_eq!(view.value(), Bytes::new());
        assert_eq!(
            decode_envelope(frame.clone()).unwrap().data,
            Some(Any::default())
        );
    }

    /// The frame of a `stream` envelope carrying `len` copies of `byte`.
    fn stream_frame(byte: u8, len: usize, id: &str, rid: &str) -> Bytes {
        let mut envelope = pack(&Stream {
            data: Bytes::from(vec![byte; len]),
        });
        envelope.id = id.into();
        envelope.rid = rid.into();
        encode_envelope(&envelope)
    }

    /// `part` lies inside `frame`, past its first byte: a slice of it, not
    /// a copy.
    fn assert_inside(part: &[u8], frame: &Bytes) {
        let start = frame.as_ptr() as usize;
        let at = part.as_ptr() as usize;
        assert!(at > start && at + part.len() <= start + frame.len());
    }

    #[test]
    fn value_shares_the_frame() {
        let frame = stream_frame(9, 4096, "", "u1");
        let view = EnvelopeView::parse(&frame).unwrap();
        let value = view.value();
        assert_inside(&value, &frame);
        let stream: Stream = view.decode_value().unwrap();
        assert_eq!(stream.data.len(), 4096);
    }

    #[test]
    fn repeated_fields_last_wins_and_data_merges() {
        let mut wire = encode_envelope(&ping("first", 1)).to_vec();
        // A second id and a second data carrying only a value.
        wire.extend_from_slice(&[0x22, 0x02, b'i', b'2']);
        wire.extend_from_slice(&[0x32, 0x03, 0x12, 0x01, 0x07]);
        let frame = Bytes::from(wire);
        let view = EnvelopeView::parse(&frame).unwrap();
        assert_eq!(view.id(), "i2");
        assert_eq!(view.type_url(), "type.googleapis.com/openiap.PingRequest");
        assert_eq!(view.value_slice(), [0x07]);
        agree(&frame).unwrap();
    }

    #[test]
    fn unknown_fields_and_groups_are_skipped() {
        let mut wire = encode_envelope(&ping("a", 2)).to_vec();
        // field 20 varint, field 21 fixed64, field 22 fixed32, field 23 bytes,
        // field 24 group holding a varint field, then its end.
        wire.extend_from_slice(&[0xa0, 0x01, 0x05]);
        wire.extend_from_slice(&[0xa9, 0x01, 1, 2, 3, 4, 5, 6, 7, 8]);
        wire.extend_from_slice(&[0xb5, 0x01, 1, 2, 3, 4]);
        wire.extend_from_slice(&[0xba, 0x01, 0x02, 0xff, 0xff]);
        wire.extend_from_slice(&[0xc3, 0x01, 0x08, 0x01, 0xc4, 0x01]);
        let frame = Bytes::from(wire);
        assert_eq!(EnvelopeView::parse(&frame).unwrap().id(), "a");
        agree(&frame).unwrap();
    }

    #[test]
    fn wrong_wire_type_is_an_error() {
        // Field 1 (command) as a varint.
        let frame = Bytes::from_static(&[0x08, 0x01]);
        assert_eq!(
            EnvelopeView::parse(&frame),
            Err(ViewError::WireType {
                offset: 0,
                field: 1,
                expected: LEN,
                found: VARINT
            })
        );
        assert!(decode_envelope(frame).is_err());
    }

    #[test]
    fn truncated_length_names_both_numbers() {
        let frame = Bytes::from_static(&[0x0a, 0x10, b'h', b'i']);
        assert_eq!(
            EnvelopeView::parse(&frame),
            Err(ViewError::Truncated {
                offset: 2,
                needed: 16,
                remaining: 2
            })
        );
    }

    #[test]
    fn invalid_utf8_is_an_error() {
        let frame = Bytes::from_static(&[0x22, 0x01, 0xff]);
        assert_eq!(
            EnvelopeView::parse(&frame),
            Err(ViewError::InvalidUtf8 {
                offset: 2,
                field: "id"
            })
        );
        assert!(decode_envelope(frame).is_err());
    }

    #[test]
    fn overlong_varint_is_an_error() {
        let frame = Bytes::from_static(&[
            0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02,
        ]);
        assert_eq!(
            EnvelopeView::parse(&frame),
            Err(ViewError::InvalidVarint { offset: 1 })
        );
        assert!(decode_envelope(frame).is_err());
        // Ten bytes ending in 0x01 is u64::MAX: valid, and seq is its low bits.
        let frame = Bytes::from_static(&[
            0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
        ]);
        assert_eq!(EnvelopeView::parse(&frame).unwrap().seq(), -1);
        agree(&frame).unwrap();
    }

    #[test]
    fn field_zero_and_stray_end_group_are_invalid_keys() {
        for frame in [&[0x00, 0x00][..], &[0x54][..], &[0x0e][..]] {
            let frame = Bytes::copy_from_slice(frame);
            assert!(
                matches!(
                    EnvelopeView::parse(&frame),
                    Err(ViewError::InvalidKey { .. })
                ),
                "{frame:?}"
            );
            assert!(decode_envelope(frame).is_err());
        }
    }

    #[test]
    fn deep_groups_hit_the_recursion_limit() {
        let depth = RECURSION_LIMIT as usize + 1;
        let mut wire: Vec<u8> = std::iter::repeat_n([0xc3, 0x01], depth).flatten().collect();
        wire.extend(std::iter::repeat_n([0xc4, 0x01], depth).flatten());
        let frame = Bytes::from(wire);
        assert!(matches!(
            EnvelopeView::parse(&frame),
            Err(ViewError::TooDeep { .. })
        ));
        agree(&frame).unwrap();
    }

    #[test]
    fn unpack_shares_the_frame_and_checks_the_command() {
        let frame = stream_frame(3, 1000, "c1", "");
        let view = EnvelopeView::parse(&frame).unwrap();
        let chunk: Stream = view.unpack(Validation::Strict).unwrap();
        assert_inside(&chunk.data, &frame);
        assert_eq!(
            view.unpack::<PingRequest>(Validation::Lenient),
            Err(CommandError::UnexpectedCommand {
                expected: "ping",
                actual: "stream".into()
            })
        );
    }

    #[test]
    fn is_ascii_finds_a_high_byte_anywhere() {
        for len in 0..48 {
            let mut bytes = vec![b'a'; len];
            assert!(is_ascii(&bytes), "{len}");
            for at in 0..len {
                bytes[at] = 0x80;
                assert!(!is_ascii(&bytes), "{len} {at}");
                bytes[at] = 0x7f;
                assert!(is_ascii(&bytes), "{len} {at}");
            }
        }
    }

    #[test]
    fn is_type_matches_only_the_exact_name() {
        let frame = encode_envelope(&ping("1", 0));
        let view = EnvelopeView::parse(&frame).unwrap();
        assert!(view.is_type::<PingRequest>());
        assert!(!view.is_type::<Stream>());
        for (url, expected) in [
            ("openiap.PingRequest", true),
            ("a/b/openiap.PingRequest", true),
            ("/openiap.PingRequest", true),
            ("xopeniap.PingRequest", false),
            ("openiap.xPingRequest", false),
            ("openiap.PingRequest/", false),
            ("openiap.pingrequest", false),
            ("", false),
        ] {
            let envelope = Envelope {
                data: Some(Any {
                    type_url: url.to_owned(),
                    value: Bytes::new(),
                }),
                ..Envelope::default()
            };
            let frame = encode_envelope(&envelope);
            let view = EnvelopeView::parse(&frame).unwrap();
            assert_eq!(view.is_type::<PingRequest>(), expected, "{url}");
        }
    }

    fn arb_envelope() -> impl Strategy<Value = Envelope> {
        let payload = (".{0,48}", vec(any::<u8>(), 0..64)).prop_map(|(type_url, value)| Any {
            type_url,
            value: value.into(),
        });
        (
            (".{0,12}", any::<i32>(), any::<i32>(), ".{0,12}", ".{0,12}"),
            (proptest::option::of(payload), ".{0,8}", ".{0,8}", ".{0,8}"),
        )
            .prop_map(
                |((command, priority, seq, id, rid), (data, jwt, traceid, spanid))| Envelope {
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

    /// An envelope whose command and type URL are near the `stream` and
    /// `error` rows: exact, prefixed, lenient and wrong forms.
    fn arb_typed_envelope() -> impl Strategy<Value = Envelope> {
        let command = prop_oneof![
            Just("stream"),
            Just("beginstream"),
            Just("error"),
            Just("ping"),
            Just("")
        ];
        let type_url = prop_oneof![
            Just("type.googleapis.com/openiap.Stream".to_owned()),
            Just("openiap.Stream".to_owned()),
            Just("x/openiap.stream".to_owned()),
            Just("openiap.ErrorResponse".to_owned()),
            Just("type.googleapis.com/openiap.BeginStream".to_owned()),
            Just("type.googleapis.com/openiap.Stream/".to_owned()),
            Just(String::new()),
            ".{0,24}",
        ];
        let any = (type_url, vec(any::<u8>(), 0..24)).prop_map(|(type_url, value)| Any {
            type_url,
            value: value.into(),
        });
        (command, proptest::option::of(any)).prop_map(|(command, data)| Envelope {
            command: command.to_owned(),
            id: "i".to_owned(),
            data,
            ..Envelope::default()
        })
    }

    proptest! {
        #[test]
        fn prop_unpack_agrees_with_owned_unpack(
            envelope in arb_typed_envelope(),
            strict in any::<bool>(),
        ) {
            use crate::envelope::unpack;
            use crate::proto::{BeginStream, ErrorResponse};
            let validation = if strict { Validation::Strict } else { Validation::Lenient };
            let frame = encode_envelope(&envelope);
            let view = EnvelopeView::parse(&frame).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let owned = view.to_envelope();
            prop_assert_eq!(view.unpack::<Stream>(validation), unpack::<Stream>(&owned, validation));
            prop_assert_eq!(
                view.unpack::<BeginStream>(validation),
                unpack::<BeginStream>(&owned, validation)
            );
            prop_assert_eq!(
                view.unpack::<ErrorResponse>(validation),
                unpack::<ErrorResponse>(&owned, validation)
            );
            prop_assert_eq!(
                view.unpack::<PingRequest>(validation),
                unpack::<PingRequest>(&owned, validation)
            );
        }

        #[test]
        fn prop_view_agrees_with_owned_decode(envelope in arb_envelope()) {
            let frame = encode_envelope(&envelope);
            let view = EnvelopeView::parse(&frame).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(view.to_envelope(), envelope);
        }

        #[test]
        fn prop_concatenated_envelopes_agree(a in arb_envelope(), b in arb_envelope()) {
            // Concatenating two encodings is a merge: the view must merge alike.
            let mut wire = encode_envelope(&a).to_vec();
            wire.extend_from_slice(&encode_envelope(&b));
            agree(&Bytes::from(wire))?;
        }

        #[test]
        fn prop_is_type_agrees_with_type_name(
            prefix in "[a-z./]{0,12}",
            name in "(openiap\\.)?(PingRequest|Stream|Ping|[A-Za-z.]{0,8})",
        ) {
            let envelope = Envelope {
                data: Some(Any { type_url: format!("{prefix}{name}"), value: Bytes::new() }),
                ..Envelope::default()
            };
            let frame = encode_envelope(&envelope);
            let view = EnvelopeView::parse(&frame).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(view.is_type::<PingRequest>(), view.type_name() == Some("PingRequest"));
            prop_assert_eq!(view.is_type::<Stream>(), view.type_name() == Some("Stream"));
        }

        #[test]
        fn prop_arbitrary_bytes_agree_and_never_panic(data in vec(any::<u8>(), 0..256)) {
            agree(&Bytes::from(data))?;
        }

        #[test]
        fn prop_mutated_envelopes_agree(
            envelope in arb_envelope(),
            at in any::<usize>(),
            byte in any::<u8>(),
        ) {
            let mut wire = encode_envelope(&envelope).to_vec();
            if !wire.is_empty() {
                let at = at % wire.len();
                wire[at] = byte;
            }
            agree(&Bytes::from(wire))?;
        }
    }
}
