//! The naive baseline: what a user would write without this crate.
//!
//! prost messages derived by hand with `Vec<u8>` and `String` fields and
//! `prost_types::Any` (whose `value` is a `Vec<u8>`), framed either by
//! tokio-util's `LengthDelimitedCodec` (4-byte little-endian length) or by the
//! common hand-written `split_to` loop. Every payload is copied out of the
//! frame at least once.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

/// `openiap.Envelope` with owned fields and `prost_types::Any`.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct NaiveEnvelope {
    #[prost(string, tag = "1")]
    pub(crate) command: String,
    #[prost(int32, tag = "2")]
    pub(crate) priority: i32,
    #[prost(int32, tag = "3")]
    pub(crate) seq: i32,
    #[prost(string, tag = "4")]
    pub(crate) id: String,
    #[prost(string, tag = "5")]
    pub(crate) rid: String,
    #[prost(message, optional, tag = "6")]
    pub(crate) data: Option<prost_types::Any>,
    #[prost(string, tag = "7")]
    pub(crate) jwt: String,
    #[prost(string, tag = "8")]
    pub(crate) traceid: String,
    #[prost(string, tag = "9")]
    pub(crate) spanid: String,
}

/// `openiap.PingRequest` (no fields).
#[derive(Clone, PartialEq, Message)]
pub(crate) struct NaivePing {}

/// `openiap.Stream` with a `Vec<u8>` payload.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct NaiveStream {
    #[prost(bytes = "vec", tag = "1")]
    pub(crate) data: Vec<u8>,
}

/// `openiap.QueryResponse`.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct NaiveQueryResponse {
    #[prost(string, tag = "1")]
    pub(crate) results: String,
}

/// A decoded payload, by command.
#[derive(Clone)]
pub(crate) enum NaivePayload {
    Ping(NaivePing),
    Query(NaiveQueryResponse),
    Stream(NaiveStream),
}

/// The owned inputs of one envelope to send.
#[derive(Clone)]
pub(crate) struct NaiveItem {
    pub(crate) id: String,
    pub(crate) rid: String,
    pub(crate) seq: i32,
    pub(crate) payload: NaivePayload,
}

/// tokio-util's codec as the issue specifies it: 4-byte little-endian length.
pub(crate) fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .little_endian()
        .length_field_length(4)
        .max_frame_length(64 * 1024 * 1024)
        .new_codec()
}

/// Decodes the payload the way a naive user does: by command, from the
/// `Vec<u8>` value, type URL compared in full.
fn payload(envelope: NaiveEnvelope) -> Option<NaivePayload> {
    let any = envelope.data?;
    let (expected, payload) = match envelope.command.as_str() {
        "ping" => (
            "type.googleapis.com/openiap.PingRequest",
            NaivePayload::Ping(NaivePing::decode(any.value.as_slice()).ok()?),
        ),
        "queryreply" => (
            "type.googleapis.com/openiap.QueryResponse",
            NaivePayload::Query(NaiveQueryResponse::decode(any.value.as_slice()).ok()?),
        ),
        "stream" => (
            "type.googleapis.com/openiap.Stream",
            NaivePayload::Stream(NaiveStream::decode(any.value.as_slice()).ok()?),
        ),
        _ => return None,
    };
    (any.type_url == expected).then_some(payload)
}

/// Bytes of payload a decoded envelope carried, so the work is observable.
fn weight(payload: &NaivePayload) -> usize {
    match payload {
        NaivePayload::Ping(_) => 1,
        NaivePayload::Query(q) => q.results.len(),
        NaivePayload::Stream(s) => s.data.len(),
    }
}

/// Decodes every frame of `buf` through `LengthDelimitedCodec`; returns
/// (envelopes, payload weight).
pub(crate) fn decode_codec(mut buf: BytesMut) -> (usize, usize) {
    let mut codec = codec();
    let (mut count, mut total) = (0, 0);
    while let Some(frame) = codec.decode(&mut buf).expect("valid framing") {
        let envelope = NaiveEnvelope::decode(frame).expect("valid envelope");
        let payload = payload(envelope).expect("known payload");
        count += 1;
        total += weight(&payload);
    }
    (count, total)
}

/// Decodes every `stream` frame of `buf` through `LengthDelimitedCodec` and
/// keeps the chunks (freed outside the timed section).
pub(crate) fn keep_codec(mut buf: BytesMut) -> Vec<Vec<u8>> {
    let mut codec = codec();
    let mut chunks = Vec::new();
    while let Some(frame) = codec.decode(&mut buf).expect("valid framing") {
        let envelope = NaiveEnvelope::decode(frame).expect("valid envelope");
        match payload(envelope).expect("known payload") {
            NaivePayload::Stream(m) => chunks.push(m.data),
            _ => unreachable!("stream envelopes only"),
        }
    }
    chunks
}

/// Decodes every frame of `buf` with the hand-written `split_to` loop.
pub(crate) fn decode_split_to(mut buf: BytesMut) -> (usize, usize) {
    let (mut count, mut total) = (0, 0);
    while buf.len() >= 4 {
        let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if buf.len() < 4 + len {
            break;
        }
        buf.advance(4);
        let frame = buf.split_to(len);
        let envelope = NaiveEnvelope::decode(&frame[..]).expect("valid envelope");
        let payload = payload(envelope).expect("known payload");
        count += 1;
        total += weight(&payload);
    }
    (count, total)
}

/// The Envelope of one item, the payload packed into a `prost_types::Any`.
fn envelope(item: NaiveItem) -> NaiveEnvelope {
    let (command, type_url, value) = match item.payload {
        NaivePayload::Ping(m) => (
            "ping",
            "type.googleapis.com/openiap.PingRequest",
            m.encode_to_vec(),
        ),
        NaivePayload::Query(m) => (
            "queryreply",
            "type.googleapis.com/openiap.QueryResponse",
            m.encode_to_vec(),
        ),
        NaivePayload::Stream(m) => (
            "stream",
            "type.googleapis.com/openiap.Stream",
            m.encode_to_vec(),
        ),
    };
    NaiveEnvelope {
        command: command.to_owned(),
        seq: item.seq,
        id: item.id,
        rid: item.rid,
        data: Some(prost_types::Any {
            type_url: type_url.to_owned(),
            value,
        }),
        ..Default::default()
    }
}

/// Encodes every item through `LengthDelimitedCodec` (`encode_to_vec`, then
/// the codec copies it behind the prefix).
pub(crate) fn encode_codec(items: Vec<NaiveItem>, dst: &mut BytesMut) {
    let mut codec = codec();
    for item in items {
        let body = Bytes::from(envelope(item).encode_to_vec());
        codec.encode(body, dst).expect("frame within limit");
    }
}

/// Encodes every item by hand: prefix, then the Envelope straight into `dst`.
pub(crate) fn encode_put(items: Vec<NaiveItem>, dst: &mut BytesMut) {
    for item in items {
        let envelope = envelope(item);
        let len = envelope.encoded_len();
        dst.reserve(4 + len);
        dst.put_u32_le(len as u32);
        envelope.encode(dst).expect("reserved");
    }
}
