//! A sans-IO WebSocket frame codec (RFC 6455) for the `ws` transport.
//!
//! The protocol treats the binary messages of a WebSocket as one byte
//! stream (PROTOCOL.md), so message boundaries carry no meaning here:
//! [`Deframer`] strips frame headers, unmasks and hands out payload bytes as
//! they arrive, without ever holding a whole message. Memory is one frame
//! header and at most one control frame (125 bytes), whatever the peer
//! declares.
//!
//! ```
//! use bytes::BytesMut;
//! use openiap_wire::websocket::{Deframer, FrameHead, Opcode, Received};
//!
//! // A client's binary frame: masked, as RFC 6455 requires.
//! let key = [1, 2, 3, 4];
//! let mut wire = BytesMut::new();
//! FrameHead::new(Opcode::Binary, 5).with_mask(key).encode_frame(b"hello", &mut wire);
//!
//! // The server side expects masked frames.
//! let mut server = Deframer::new(true);
//! let mut payload = BytesMut::new();
//! assert_eq!(server.decode(&mut wire, &mut payload), Ok(Received::Data));
//! assert_eq!(&payload[..], b"hello");
//! assert!(wire.is_empty());
//! ```

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Longest frame header: 2 bytes, an 8-byte length and a 4-byte mask key.
pub const MAX_HEAD_LEN: usize = 14;

/// Longest control frame payload (RFC 6455 section 5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// Close status sent on a normal close (RFC 6455 section 7.4.1).
pub const CLOSE_NORMAL: u16 = 1000;

/// A frame's opcode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    /// A further frame of a fragmented message.
    Continuation,
    /// A text message (this protocol has none: an error).
    Text,
    /// A binary message: part of the byte stream.
    Binary,
    /// The peer is closing.
    Close,
    /// A ping, answered with a pong carrying the same payload.
    Ping,
    /// A pong (reported; nothing to answer).
    Pong,
}

impl Opcode {
    fn from_bits(bits: u8) -> Option<Self> {
        Some(match bits {
            0x0 => Self::Continuation,
            0x1 => Self::Text,
            0x2 => Self::Binary,
            0x8 => Self::Close,
            0x9 => Self::Ping,
            0xA => Self::Pong,
            _ => return None,
        })
    }

    fn bits(self) -> u8 {
        match self {
            Self::Continuation => 0x0,
            Self::Text => 0x1,
            Self::Binary => 0x2,
            Self::Close => 0x8,
            Self::Ping => 0x9,
            Self::Pong => 0xA,
        }
    }

    /// Close, ping and pong.
    pub fn is_control(self) -> bool {
        matches!(self, Self::Close | Self::Ping | Self::Pong)
    }
}

/// A frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHead {
    /// The last frame of its message.
    pub fin: bool,
    /// What the frame carries.
    pub opcode: Opcode,
    /// The mask key: set on every frame a client sends, on none a server
    /// sends.
    pub mask: Option<[u8; 4]>,
    /// Payload length.
    pub len: u64,
}

impl FrameHead {
    /// A final, unmasked frame of `len` payload bytes.
    pub fn new(opcode: Opcode, len: u64) -> Self {
        Self {
            fin: true,
            opcode,
            mask: None,
            len,
        }
    }

    /// The same header with `key` as its mask key.
    #[must_use]
    pub fn with_mask(mut self, key: [u8; 4]) -> Self {
        self.mask = Some(key);
        self
    }

    /// Bytes [`encode`](Self::encode) writes: 2 to [`MAX_HEAD_LEN`].
    pub fn encoded_len(&self) -> usize {
        let len = match self.len {
            0..=125 => 2,
            126..=0xFFFF => 4,
            _ => 10,
        };
        len + if self.mask.is_some() { 4 } else { 0 }
    }

    /// Appends the header, with the shortest length encoding.
    pub fn encode(&self, dst: &mut impl BufMut) {
        let first = (u8::from(self.fin) << 7) | self.opcode.bits();
        let masked = if self.mask.is_some() { 0x80 } else { 0 };
        dst.put_u8(first);
        match self.len {
            #[allow(clippy::cast_possible_truncation)] // at most 125
            len @ 0..=125 => dst.put_u8(masked | len as u8),
            #[allow(clippy::cast_possible_truncation)] // at most 0xFFFF
            len @ 126..=0xFFFF => {
                dst.put_u8(masked | 126);
                dst.put_u16(len as u16);
            }
            len => {
                dst.put_u8(masked | 127);
                dst.put_u64(len);
            }
        }
        if let Some(key) = self.mask {
            dst.put_slice(&key);
        }
    }

    /// Appends this head and `payload` (which should be
    /// [`len`](Self::len) bytes), masked with the head's key if it has one.
    pub fn encode_frame(&self, payload: &[u8], dst: &mut BytesMut) {
        self.encode(dst);
        let start = dst.len();
        dst.extend_from_slice(payload);
        if let Some(key) = self.mask {
            apply_mask(&mut dst[start..], key, 0);
        }
    }

    /// Parses a header from the start of `src`: `Ok(None)` while it is
    /// incomplete, else the header and its length in bytes.
    ///
    /// # Errors
    ///
    /// [`WsError::ReservedBits`], [`WsError::ReservedOpcode`] or
    /// [`WsError::BadLength`]: the peer does not speak RFC 6455 as
    /// negotiated (no extensions).
    pub fn parse(src: &[u8]) -> Result<Option<(Self, usize)>, WsError> {
        let [first, second, ref rest @ ..] = *src else {
            return Ok(None);
        };
        if first & 0x70 != 0 {
            return Err(WsError::ReservedBits { bits: first & 0x70 });
        }
        let opcode =
            Opcode::from_bits(first & 0x0F).ok_or(WsError::ReservedOpcode(first & 0x0F))?;
        let (len, rest, used) = match second & 0x7F {
            126 => match *rest {
                [a, b, ref rest @ ..] => (u64::from(u16::from_be_bytes([a, b])), rest, 4),
                _ => return Ok(None),
            },
            127 => match rest.split_first_chunk::<8>() {
                Some((bytes, rest)) => (u64::from_be_bytes(*bytes), rest, 10),
                None => return Ok(None),
            },
            short => (u64::from(short), rest, 2),
        };
        if len >> 63 != 0 {
            return Err(WsError::BadLength(len));
        }
        let (mask, used) = if second & 0x80 == 0 {
            (None, used)
        } else {
            match rest.first_chunk::<4>() {
                Some(key) => (Some(*key), used + 4),
                None => return Ok(None),
            }
        };
        let head = Self {
            fin: first & 0x80 != 0,
            opcode,
            mask,
            len,
        };
        Ok(Some((head, used)))
    }
}

/// XORs `buf` with `key`, as the bytes at offset `phase` (and on) of a
/// masked payload: masking and unmasking are the same operation.
pub fn apply_mask(buf: &mut [u8], key: [u8; 4], phase: usize) {
    let mut key = key;
    key.rotate_left(phase % 4);
    let [a, b, c, d] = key;
    let wide = u64::from_ne_bytes([a, b, c, d, a, b, c, d]);
    let (words, tail) = buf.as_chunks_mut::<8>();
    for word in words {
        *word = (u64::from_ne_bytes(*word) ^ wide).to_ne_bytes();
    }
    // The words covered a multiple of 4 bytes: the tail starts at phase 0
    // of the rotated key.
    for (byte, k) in tail.iter_mut().zip(key.iter().cycle()) {
        *byte ^= k;
    }
}

/// Why a peer's WebSocket frames were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WsError {
    /// RSV bits set: no extension was negotiated.
    #[error("WebSocket frame has reserved bits {bits:#04x} set, no extension was negotiated")]
    ReservedBits {
        /// The RSV1-3 bits as they sit in the first byte.
        bits: u8,
    },
    /// An opcode RFC 6455 reserves.
    #[error("WebSocket frame has reserved opcode {0:#x}")]
    ReservedOpcode(u8),
    /// A 64-bit length with its top bit set.
    #[error("WebSocket frame declares {0} bytes (the top bit must be clear)")]
    BadLength(u64),
    /// A text message: this protocol is binary.
    #[error("peer sent a text WebSocket message of {len} bytes; the protocol is binary")]
    TextMessage {
        /// The text frame's length.
        len: u64,
    },
    /// A client frame without a mask, or a server frame with one.
    #[error("WebSocket frame is {}masked; a {} must {}mask its frames", if *.masked { "" } else { "not " }, if *.masked { "server" } else { "client" }, if *.masked { "not " } else { "" })]
    Masking {
        /// Whether the frame was masked.
        masked: bool,
    },
    /// A control frame longer than 125 bytes, or fragmented.
    #[error(
        "WebSocket control frame of {len} bytes (fin {fin}); at most 125 bytes, never fragmented"
    )]
    BadControl {
        /// Its declared length.
        len: u64,
        /// Its FIN bit.
        fin: bool,
    },
    /// A continuation frame with no message to continue, or a new message
    /// before the last one's final frame.
    #[error("WebSocket {opcode:?} frame {}", if *.in_message { "inside an unfinished message" } else { "with no message to continue" })]
    Fragmentation {
        /// The frame's opcode.
        opcode: Opcode,
        /// Whether a fragmented message was open.
        in_message: bool,
    },
}

/// What one [`Deframer::decode`] call found besides payload bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// The input ran out (payload bytes, if any, were appended): read more.
    Data,
    /// A ping: answer with a pong carrying this payload.
    Ping(Bytes),
    /// A pong, with its payload (nothing to do).
    Pong(Bytes),
    /// The peer closed, with this status code if it gave one.
    Close(Option<u16>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between frames.
    Head,
    /// Inside a data frame's payload.
    Payload {
        remaining: u64,
        mask: Option<[u8; 4]>,
        phase: usize,
    },
    /// A control frame whose payload has not all arrived.
    Control { head: FrameHead, head_len: usize },
}

/// Turns WebSocket frames back into the byte stream they carry.
///
/// Feed it what the socket gave with [`decode`](Self::decode); or, while
/// [`payload_remaining`](Self::payload_remaining) is large, read payload
/// straight into its destination and pass it to
/// [`unmask_payload`](Self::unmask_payload).
#[derive(Debug, Clone)]
pub struct Deframer {
    expect_masked: bool,
    state: State,
    /// Inside a fragmented binary message (its last frame had FIN clear).
    in_message: bool,
    error: Option<WsError>,
}

impl Deframer {
    /// A deframer for the server side (`expect_masked`: the peer is a
    /// client, whose frames must be masked) or the client side.
    pub fn new(expect_masked: bool) -> Self {
        Self {
            expect_masked,
            state: State::Head,
            in_message: false,
            error: None,
        }
    }

    /// Payload bytes left in the current binary frame, 0 between frames.
    pub fn payload_remaining(&self) -> u64 {
        match self.state {
            State::Payload { remaining, .. } => remaining,
            _ => 0,
        }
    }

    /// Takes `payload`, the next bytes of the current frame's payload read
    /// straight from the socket, and unmasks them in place.
    ///
    /// # Panics
    ///
    /// When `payload` is longer than [`payload_remaining`](Self::payload_remaining):
    /// a bug in the caller, which must limit its read.
    pub fn unmask_payload(&mut self, payload: &mut [u8]) {
        let State::Payload {
            remaining,
            mask,
            phase,
        } = &mut self.state
        else {
            assert!(payload.is_empty(), "payload outside a frame");
            return;
        };
        let len = payload.len() as u64;
        assert!(len <= *remaining, "read past the frame's payload");
        if let Some(key) = *mask {
            apply_mask(payload, key, *phase);
        }
        *remaining -= len;
        *phase = (*phase + payload.len()) % 4;
        if *remaining == 0 {
            self.state = State::Head;
        }
    }

    /// Consumes frames from the front of `src`: binary payload bytes are
    /// unmasked and appended to `data`. Stops when `src` holds no more than
    /// an incomplete header or control frame (left in `src`), or after a
    /// control frame.
    ///
    /// # Errors
    ///
    /// A [`WsError`] for frames that break RFC 6455 or are text; the
    /// deframer then returns the same error on every call.
    pub fn decode(&mut self, src: &mut BytesMut, data: &mut BytesMut) -> Result<Received, WsError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        let result = self.decode_inner(src, data);
        if let Err(e) = &result {
            self.error = Some(e.clone());
        }
        result
    }

    fn decode_inner(
        &mut self,
        src: &mut BytesMut,
        data: &mut BytesMut,
    ) -> Result<Received, WsError> {
        loop {
            match self.state {
                State::Head => {
                    let Some((head, head_len)) = FrameHead::parse(src)? else {
                        return Ok(Received::Data);
                    };
                    self.check(&head)?;
                    if head.opcode.is_control() {
                        self.state = State::Control { head, head_len };
                        continue;
                    }
                    src.advance(head_len);
                    self.in_message = !head.fin;
                    if head.len > 0 {
                        self.state = State::Payload {
                            remaining: head.len,
                            mask: head.mask,
                            phase: 0,
                        };
                    }
                }
                State::Payload { remaining, .. } => {
                    let available =
                        usize::try_from(remaining).map_or(src.len(), |r| r.min(src.len()));
                    if available == 0 {
                        return Ok(Received::Data);
                    }
                    // Unmasked where it lies and copied once; splitting it
                    // off would turn `src` into a shared buffer.
                    let piece = &mut src[..available];
                    self.unmask_payload(piece);
                    data.extend_from_slice(piece);
                    src.advance(available);
                }
                State::Control { head, head_len } => {
                    // At most 125 bytes: checked with the header.
                    #[allow(clippy::cast_possible_truncation)]
                    let len = head.len as usize;
                    if src.len() < head_len + len {
                        return Ok(Received::Data);
                    }
                    let payload = &mut src[head_len..head_len + len];
                    if let Some(key) = head.mask {
                        apply_mask(payload, key, 0);
                    }
                    let received = match head.opcode {
                        Opcode::Ping => Received::Ping(Bytes::copy_from_slice(payload)),
                        Opcode::Close => Received::Close(
                            payload.first_chunk::<2>().map(|c| u16::from_be_bytes(*c)),
                        ),
                        _ => Received::Pong(Bytes::copy_from_slice(payload)),
                    };
                    src.advance(head_len + len);
                    self.state = State::Head;
                    return Ok(received);
                }
            }
        }
    }

    fn check(&self, head: &FrameHead) -> Result<(), WsError> {
        if head.mask.is_some() != self.expect_masked {
            return Err(WsError::Masking {
                masked: head.mask.is_some(),
            });
        }
        match head.opcode {
            Opcode::Text if !self.in_message => Err(WsError::TextMessage { len: head.len }),
            Opcode::Binary | Opcode::Text if self.in_message => Err(WsError::Fragmentation {
                opcode: head.opcode,
                in_message: true,
            }),
            Opcode::Continuation if !self.in_message => Err(WsError::Fragmentation {
                opcode: head.opcode,
                in_message: false,
            }),
            op if op.is_control() && (!head.fin || head.len > MAX_CONTROL_PAYLOAD as u64) => {
                Err(WsError::BadControl {
                    len: head.len,
                    fin: head.fin,
                })
            }
            _ => Ok(()),
        }
    }
}

/// Appends a whole control frame (`payload` at most
/// [`MAX_CONTROL_PAYLOAD`] bytes, cut there if longer), masked with `mask`
/// when given.
pub fn encode_control(opcode: Opcode, payload: &[u8], mask: Option<[u8; 4]>, dst: &mut BytesMut) {
    let payload = payload.get(..MAX_CONTROL_PAYLOAD).unwrap_or(payload);
    let head = FrameHead {
        mask,
        ..FrameHead::new(opcode, payload.len() as u64)
    };
    head.encode_frame(payload, dst);
}

/// Fuzz target body: arbitrary bytes through a deframer of each side, fed
/// whole and in pieces, must never panic, must agree, and must never hand
/// out more payload than was fed.
pub fn fuzz_deframe(input: &[u8]) {
    let (cut, bytes) = match input.split_first() {
        Some((&cut, rest)) => (usize::from(cut).max(1), rest),
        None => return,
    };
    for masked in [true, false] {
        let whole = run(masked, &[bytes]);
        let pieces: Vec<&[u8]> = bytes.chunks(cut).collect();
        let split = run(masked, &pieces);
        assert_eq!(whole, split, "fed whole and in pieces of {cut}");
        assert!(whole.0.len() <= bytes.len());
    }

    fn run(masked: bool, pieces: &[&[u8]]) -> (Vec<u8>, Vec<Received>, Option<WsError>) {
        let mut deframer = Deframer::new(masked);
        let (mut src, mut data) = (BytesMut::new(), BytesMut::new());
        let mut events = Vec::new();
        for piece in pieces {
            src.extend_from_slice(piece);
            loop {
                match deframer.decode(&mut src, &mut data) {
                    Ok(Received::Data) => break,
                    Ok(other) => events.push(other),
                    Err(e) => return (data.to_vec(), events, Some(e)),
                }
            }
            assert!(
                src.len() < MAX_HEAD_LEN + MAX_CONTROL_PAYLOAD,
                "kept {} bytes",
                src.len()
            );
        }
        (data.to_vec(), events, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame(head: FrameHead, payload: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        head.encode_frame(payload, &mut out);
        assert_eq!(out.len(), head.encoded_len() + payload.len());
        out.to_vec()
    }

    fn decode_all(
        deframer: &mut Deframer,
        wire: &[u8],
    ) -> Result<(Vec<u8>, Vec<Received>), WsError> {
        let mut src = BytesMut::from(wire);
        let mut data = BytesMut::new();
        let mut events = Vec::new();
        loop {
            match deframer.decode(&mut src, &mut data)? {
                Received::Data => return Ok((data.to_vec(), events)),
                other => events.push(other),
            }
        }
    }

    #[test]
    fn rfc_examples_decode() {
        // RFC 6455 section 5.7: an unmasked "Hello" and a masked one
        // (as text there; the same bytes with the binary opcode here).
        let unmasked = [0x82, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
        let (data, _) = decode_all(&mut Deframer::new(false), &unmasked).unwrap();
        assert_eq!(data, b"Hello");
        let masked = [
            0x82, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let (data, _) = decode_all(&mut Deframer::new(true), &masked).unwrap();
        assert_eq!(data, b"Hello");
        // Fragmented: "Hel" then "lo".
        let fragmented = [0x02, 0x03, 0x48, 0x65, 0x6c, 0x80, 0x02, 0x6c, 0x6f];
        let (data, _) = decode_all(&mut Deframer::new(false), &fragmented).unwrap();
        assert_eq!(data, b"Hello");
        // A masked ping carrying "Hello".
        let ping = [
            0x89, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let (_, events) = decode_all(&mut Deframer::new(true), &ping).unwrap();
        assert_eq!(events, [Received::Ping(Bytes::from_static(b"Hello"))]);
    }

    #[test]
    fn length_encodings_are_the_shortest_and_round_trip() {
        for (len, head_len) in [
            (0, 2),
            (125, 2),
            (126, 4),
            (65_535, 4),
            (65_536, 10),
            (1 << 40, 10),
        ] {
            let head = FrameHead::new(Opcode::Binary, len);
            let mut out = BytesMut::new();
            head.encode(&mut out);
            assert_eq!(out.len(), head_len, "{len}");
            assert_eq!(FrameHead::parse(&out), Ok(Some((head, head_len))));
            for short in 0..head_len {
                assert_eq!(
                    FrameHead::parse(&out[..short]),
                    Ok(None),
                    "{len} cut at {short}"
                );
            }
        }
    }

    #[test]
    fn protocol_violations_are_errors() {
        let cases: [(&[u8], bool, WsError); 8] = [
            (&[0xC2, 0x00], false, WsError::ReservedBits { bits: 0x40 }),
            (&[0x83, 0x00], false, WsError::ReservedOpcode(3)),
            (
                &[0x81, 0x02, b'h', b'i'],
                false,
                WsError::TextMessage { len: 2 },
            ),
            (&[0x82, 0x00], true, WsError::Masking { masked: false }),
            (
                &[0x82, 0x80, 0, 0, 0, 0],
                false,
                WsError::Masking { masked: true },
            ),
            (
                &[0x09, 0x00],
                false,
                WsError::BadControl { len: 0, fin: false },
            ),
            (
                &[0x80, 0x00],
                false,
                WsError::Fragmentation {
                    opcode: Opcode::Continuation,
                    in_message: false,
                },
            ),
            (
                &[0x02, 0x00, 0x82, 0x00],
                false,
                WsError::Fragmentation {
                    opcode: Opcode::Binary,
                    in_message: true,
                },
            ),
        ];
        for (wire, masked, expected) in cases {
            let mut deframer = Deframer::new(masked);
            assert_eq!(
                decode_all(&mut deframer, wire),
                Err(expected.clone()),
                "{wire:x?}"
            );
            // Poisoned: the same error again.
            assert_eq!(decode_all(&mut deframer, &[]), Err(expected));
        }
        let mut long_ping = vec![0x89, 126, 0, 126];
        long_ping.extend([0; 126]);
        assert_eq!(
            decode_all(&mut Deframer::new(false), &long_ping),
            Err(WsError::BadControl {
                len: 126,
                fin: true
            })
        );
        let mut huge = vec![0x82, 127];
        huge.extend(u64::MAX.to_be_bytes());
        assert_eq!(
            decode_all(&mut Deframer::new(false), &huge),
            Err(WsError::BadLength(u64::MAX))
        );
    }

    #[test]
    fn a_huge_declared_frame_holds_nothing_until_its_bytes_come() {
        let mut deframer = Deframer::new(false);
        let mut wire = BytesMut::new();
        FrameHead::new(Opcode::Binary, 1 << 62).encode(&mut wire);
        wire.extend_from_slice(b"abc");
        let mut data = BytesMut::new();
        assert_eq!(deframer.decode(&mut wire, &mut data), Ok(Received::Data));
        assert_eq!(&data[..], b"abc");
        assert!(wire.is_empty());
        assert_eq!(deframer.payload_remaining(), (1 << 62) - 3);
    }

    #[test]
    fn close_reports_its_code_and_pongs_their_payload() {
        let mut wire = Vec::new();
        wire.extend(frame(FrameHead::new(Opcode::Pong, 2), b"zz"));
        wire.extend(frame(FrameHead::new(Opcode::Binary, 1), b"x"));
        wire.extend(frame(
            FrameHead::new(Opcode::Close, 4),
            &[0x03, 0xE9, b'o', b'k'],
        ));
        wire.extend(frame(FrameHead::new(Opcode::Close, 0), b""));
        let (data, events) = decode_all(&mut Deframer::new(false), &wire).unwrap();
        assert_eq!(data, b"x");
        assert_eq!(
            events,
            [
                Received::Pong(Bytes::from_static(b"zz")),
                Received::Close(Some(1001)),
                Received::Close(None)
            ]
        );
    }

    #[test]
    fn direct_payload_reads_are_unmasked_at_the_right_phase() {
        let key = [0xA1, 0xB2, 0xC3, 0xD4];
        let payload: Vec<u8> = (0..=255).collect();
        let wire = frame(FrameHead::new(Opcode::Binary, 256).with_mask(key), &payload);
        let mut deframer = Deframer::new(true);
        // The head (2 bytes, a 2-byte length, the key) and 7 payload bytes.
        let mut src = BytesMut::from(&wire[..8 + 7]);
        let mut data = BytesMut::new();
        assert_eq!(deframer.decode(&mut src, &mut data), Ok(Received::Data));
        assert_eq!(deframer.payload_remaining(), 249);
        for piece in wire[15..].chunks(5) {
            let mut piece = piece.to_vec();
            deframer.unmask_payload(&mut piece);
            data.extend_from_slice(&piece);
        }
        assert_eq!(&data[..], &payload[..]);
        assert_eq!(deframer.payload_remaining(), 0);
    }

    #[test]
    fn encode_control_masks_and_cuts_at_125() {
        let mut out = BytesMut::new();
        encode_control(Opcode::Ping, &[7; 200], Some([9, 8, 7, 6]), &mut out);
        let (_, events) = decode_all(&mut Deframer::new(true), &out).unwrap();
        assert_eq!(events, [Received::Ping(Bytes::from(vec![7; 125]))]);
    }

    #[test]
    fn fuzz_body_runs_on_known_inputs() {
        fuzz_deframe(&[]);
        fuzz_deframe(&[
            3, 0x82, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ]);
        fuzz_deframe(&[1, 0x89, 0x00, 0x82, 0x01, 0x00, 0x88, 0x00]);
    }

    fn any_frames() -> impl Strategy<Value = Vec<(Opcode, Vec<u8>, [u8; 4])>> {
        let opcode = prop_oneof![
            4 => Just(Opcode::Binary),
            1 => Just(Opcode::Ping),
            1 => Just(Opcode::Pong),
        ];
        prop::collection::vec(
            (
                opcode,
                prop::collection::vec(any::<u8>(), 0..300),
                any::<[u8; 4]>(),
            ),
            0..12,
        )
    }

    proptest! {
        #[test]
        fn any_frames_cut_anywhere_give_back_the_stream(
            frames in any_frames(),
            masked in any::<bool>(),
            cuts in prop::collection::vec(1usize..700, 0..10),
            fragment in any::<bool>(),
        ) {
            let mut wire = Vec::new();
            let mut stream = Vec::new();
            let mut pings = Vec::new();
            let mut open = false;
            for (opcode, payload, key) in &frames {
                let payload = if opcode.is_control() { &payload[..payload.len().min(125)] } else { &payload[..] };
                let mut head = FrameHead::new(*opcode, payload.len() as u64);
                if masked {
                    head = head.with_mask(*key);
                }
                if *opcode == Opcode::Binary {
                    if open {
                        head.opcode = Opcode::Continuation;
                    }
                    // Fragmented: leave every other message open.
                    head.fin = !fragment || open;
                    open = !head.fin;
                    stream.extend_from_slice(payload);
                } else if *opcode == Opcode::Ping {
                    pings.push(Received::Ping(Bytes::copy_from_slice(payload)));
                } else {
                    pings.push(Received::Pong(Bytes::copy_from_slice(payload)));
                }
                wire.extend(frame(head, payload));
            }
            let mut deframer = Deframer::new(masked);
            let (mut src, mut data) = (BytesMut::new(), BytesMut::new());
            let mut events = Vec::new();
            let mut rest = &wire[..];
            let mut cuts = cuts.into_iter().cycle();
            while !rest.is_empty() {
                let take = cuts.next().unwrap_or(usize::MAX).min(rest.len());
                src.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
                loop {
                    match deframer.decode(&mut src, &mut data).unwrap() {
                        Received::Data => break,
                        other => events.push(other),
                    }
                }
            }
            prop_assert!(src.is_empty());
            prop_assert_eq!(&data[..], &stream[..]);
            prop_assert_eq!(events, pings);
        }

        #[test]
        fn masking_in_pieces_equals_masking_whole(
            bytes in prop::collection::vec(any::<u8>(), 0..100),
            key in any::<[u8; 4]>(),
            cut in 0usize..100,
        ) {
            let mut whole = bytes.clone();
            apply_mask(&mut whole, key, 0);
            let naive: Vec<u8> = bytes.iter().enumerate().map(|(i, b)| b ^ key[i % 4]).collect();
            prop_assert_eq!(&whole, &naive);
            let cut = cut.min(bytes.len());
            let mut pieces = bytes.clone();
            let (a, b) = pieces.split_at_mut(cut);
            apply_mask(a, key, 0);
            apply_mask(b, key, cut);
            prop_assert_eq!(pieces, naive);
        }
    }
}
