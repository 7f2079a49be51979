//! tokio-util [`Decoder`] and [`Encoder`] for Envelopes (feature `codec`).
//!
//! A thin shell over the sans-IO [`frame`](crate::frame) layer, for use with
//! `FramedRead`, `FramedWrite` and `Framed` over any `AsyncRead`/`AsyncWrite`
//! byte stream (TCP socket, pipe):
//!
//! ```text
//!  AsyncRead ──bytes──> FramedRead buffer ──frame parser──> body (Bytes) ──decode_envelope──> Envelope
//!  Envelope ──encode_frame──> FramedWrite buffer (prefix + body, contiguous) ──> AsyncWrite
//! ```
//!
//! The codec runs the same state machine as
//! [`FrameDecoder`](crate::frame::FrameDecoder), over the buffer that
//! `FramedRead` owns, so every frame property holds here too: the limit is
//! checked before anything is reserved, bodies are sliced from the read buffer
//! without a copy, a frame error is sticky, and a stream that ends inside a
//! frame reports [`FrameError::Truncated`] from [`Decoder::decode_eof`].
//! An [`EnvelopeError`] concerns one frame only and does not poison the codec:
//! frame boundaries are intact, so a caller driving the codec directly may go
//! on (`FramedRead` itself ends the stream after any error).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), openiap_wire::codec::CodecError> {
//! use futures_util::{SinkExt, StreamExt};
//! use openiap_wire::codec::EnvelopeCodec;
//! use openiap_wire::proto::Envelope;
//! use tokio_util::codec::{FramedRead, FramedWrite};
//!
//! let envelope = Envelope { command: "ping".into(), id: "1".into(), ..Default::default() };
//! let mut writer = FramedWrite::new(Vec::new(), EnvelopeCodec::default());
//! writer.send(&envelope).await?;
//!
//! let wire = writer.into_inner();
//! let mut reader = FramedRead::new(wire.as_slice(), EnvelopeCodec::default());
//! assert_eq!(reader.next().await.transpose()?, Some(envelope));
//! assert!(reader.next().await.is_none());
//! # Ok(())
//! # }
//! ```

use std::io;

use bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};

use crate::envelope::{EnvelopeError, decode_envelope};
use crate::frame::{FrameConfig, FrameError, FrameParser, encode_frame};
use crate::proto::Envelope;

/// Errors of [`EnvelopeCodec`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// Reading from or writing to the underlying IO object failed.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The byte stream broke the framing rules (sticky), or an Envelope to
    /// send exceeds the frame limit (nothing was written).
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// A frame body is not a valid Envelope.
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
}

/// Length-delimited Envelope codec for tokio-util's `Framed*` types.
///
/// One [`FrameConfig`] governs both directions: its
/// [`max_frame_length`](FrameConfig::max_frame_length) bounds received frames
/// and Envelopes to send alike.
#[derive(Clone, Debug)]
pub struct EnvelopeCodec {
    parser: FrameParser,
}

impl Default for EnvelopeCodec {
    fn default() -> Self {
        Self::new(FrameConfig::default())
    }
}

impl From<FrameConfig> for EnvelopeCodec {
    fn from(config: FrameConfig) -> Self {
        Self::new(config)
    }
}

impl EnvelopeCodec {
    /// Creates a codec with the given framing settings.
    pub fn new(config: FrameConfig) -> Self {
        Self {
            parser: FrameParser::new(config),
        }
    }

    /// The settings in force.
    pub fn config(&self) -> &FrameConfig {
        self.parser.config()
    }
}

impl Decoder for EnvelopeCodec {
    type Item = Envelope;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Envelope>, CodecError> {
        match self.parser.decode(src)? {
            Some(body) => Ok(Some(decode_envelope(body)?)),
            None => Ok(None),
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Envelope>, CodecError> {
        if let Some(envelope) = self.decode(src)? {
            return Ok(Some(envelope));
        }
        self.parser.finish(src)?;
        Ok(None)
    }
}

impl Encoder<&Envelope> for EnvelopeCodec {
    type Error = CodecError;

    fn encode(&mut self, envelope: &Envelope, dst: &mut BytesMut) -> Result<(), CodecError> {
        encode_frame(envelope, self.config().max_frame_length(), dst)?;
        Ok(())
    }
}

impl Encoder<Envelope> for EnvelopeCodec {
    type Error = CodecError;

    fn encode(&mut self, envelope: Envelope, dst: &mut BytesMut) -> Result<(), CodecError> {
        <Self as Encoder<&Envelope>>::encode(self, &envelope, dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::google::protobuf::Any;
    use bytes::Bytes;
    use futures_util::{SinkExt, StreamExt};
    use prost::Message;
    use tokio::io::AsyncReadExt;
    use tokio_util::codec::{FramedRead, FramedWrite};

    fn envelope(n: usize) -> Envelope {
        Envelope {
            command: "stream".into(),
            seq: i32::try_from(n).unwrap(),
            id: n.to_string(),
            rid: "7".into(),
            data: Some(Any {
                type_url: "type.googleapis.com/openiap.Stream".into(),
                value: Bytes::from(vec![u8::try_from(n).unwrap(); 100 * n]),
            }),
            ..Default::default()
        }
    }

    fn wire(envelopes: &[Envelope]) -> Vec<u8> {
        let mut dst = BytesMut::new();
        for item in envelopes {
            encode_frame(item, usize::MAX, &mut dst).unwrap();
        }
        dst.to_vec()
    }

    async fn read_all(reader: impl tokio::io::AsyncRead + Unpin) -> Vec<Result<Envelope, String>> {
        FramedRead::new(reader, EnvelopeCodec::default())
            .map(|item| item.map_err(|err| err.to_string()))
            .collect()
            .await
    }

    #[tokio::test]
    async fn decode_from_reader_in_chunks() {
        let sent: Vec<Envelope> = (1..=3).map(envelope).collect();
        let bytes = wire(&sent);
        // Cuts inside the first prefix, inside a body and across two frames.
        let (a, rest) = bytes.split_at(2);
        let (b, rest) = rest.split_at(50);
        let (c, d) = rest.split_at(200);
        let received = read_all(a.chain(b).chain(c).chain(d)).await;
        assert_eq!(received, sent.into_iter().map(Ok).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn decode_eof_reports_truncated() {
        let mut bytes = wire(&[envelope(1)]);
        bytes.extend_from_slice(&wire(&[envelope(2)])[..10]);
        let mut reader = FramedRead::new(bytes.as_slice(), EnvelopeCodec::default());
        assert_eq!(reader.next().await.unwrap().unwrap(), envelope(1));
        assert!(matches!(
            reader.next().await,
            Some(Err(CodecError::Frame(FrameError::Truncated {
                buffered: 10
            })))
        ));
        assert!(reader.next().await.is_none());
    }

    #[tokio::test]
    async fn decode_rejects_too_large_frame() {
        let mut config = FrameConfig::default();
        config.set_max_frame_length(16);
        let bytes = wire(&[envelope(1)]);
        let mut reader = FramedRead::new(bytes.as_slice(), EnvelopeCodec::new(config));
        match reader.next().await {
            Some(Err(CodecError::Frame(FrameError::TooLarge { max: 16, len }))) => {
                assert_eq!(len, u64::try_from(envelope(1).encoded_len()).unwrap());
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn encode_decode_round_trip() {
        let sent: Vec<Envelope> = (0..4).map(envelope).collect();
        let mut writer = FramedWrite::new(Vec::new(), EnvelopeCodec::default());
        writer.send(&sent[0]).await.unwrap();
        writer.send(sent[1].clone()).await.unwrap();
        writer.send(&Envelope::default()).await.unwrap();
        for item in &sent[2..] {
            writer.feed(item).await.unwrap();
        }
        SinkExt::<&Envelope>::flush(&mut writer).await.unwrap();
        let bytes = writer.into_inner();
        let received = read_all(bytes.as_slice()).await;
        let mut expected: Vec<_> = sent.into_iter().map(Ok).collect();
        expected.insert(2, Ok(Envelope::default()));
        assert_eq!(received, expected);
    }

    #[test]
    fn encode_too_large_writes_nothing() {
        let mut config = FrameConfig::default();
        config.set_max_frame_length(8);
        let mut codec = EnvelopeCodec::from(config);
        let mut dst = BytesMut::new();
        let result = codec.encode(&envelope(1), &mut dst);
        assert!(matches!(
            result,
            Err(CodecError::Frame(FrameError::EncodeTooLarge { max: 8, .. }))
        ));
        assert!(dst.is_empty());
    }

    #[test]
    fn envelope_error_does_not_poison_codec() {
        let mut codec = EnvelopeCodec::default();
        // 0xFF starts a varint that never ends: not a valid Envelope.
        let mut src = BytesMut::from(&[1, 0, 0, 0, 0xFF][..]);
        src.extend_from_slice(&wire(&[envelope(1)]));
        assert!(matches!(
            codec.decode(&mut src),
            Err(CodecError::Envelope(EnvelopeError::Decode(_)))
        ));
        assert_eq!(codec.decode(&mut src).unwrap(), Some(envelope(1)));
        assert_eq!(codec.decode_eof(&mut src).unwrap(), None);
    }

    #[test]
    fn frame_error_is_sticky() {
        let mut config = FrameConfig::default();
        config.set_max_frame_length(4);
        let mut codec = EnvelopeCodec::new(config);
        let mut src = BytesMut::from(&[5, 0, 0, 0][..]);
        let is_too_large = |r: &Result<_, CodecError>| {
            matches!(
                r,
                Err(CodecError::Frame(FrameError::TooLarge { len: 5, max: 4 }))
            )
        };
        assert!(is_too_large(&codec.decode(&mut src)));
        let mut src = BytesMut::from(&wire(&[Envelope::default()])[..]);
        assert!(is_too_large(&codec.decode(&mut src)));
        assert!(is_too_large(&codec.decode_eof(&mut src)));
    }
}
