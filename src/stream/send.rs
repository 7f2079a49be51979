//! Sending side: [`StreamSender`] builds the envelopes of one transfer.

use std::num::NonZeroUsize;

use bytes::Bytes;
use prost::{Message, Name};

use super::{
    BEGIN_STREAM_COMMAND, END_STREAM_COMMAND, STREAM_COMMAND, StreamConfig, UsageError, check_rid,
    to_hex,
};
use crate::proto::google::protobuf::Any;
use crate::proto::{BeginStream, EndStream, Envelope, Stat, Stream};

/// Where a [`StreamSender`] is in its transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendState {
    /// Nothing sent yet.
    Idle,
    /// `beginstream` built; chunks may follow.
    Open,
    /// `endstream` built; the sender is done.
    Ended,
}

/// Builds the `beginstream`, `stream` and `endstream` envelopes of one
/// transfer, in order.
///
/// Every envelope has `command` and `rid` set and `data` holding an `Any`
/// with the canonical type URL and the encoded message. `id` and `seq` are
/// left empty for the connection to stamp when it sends.
#[derive(Clone, Debug)]
pub struct StreamSender {
    rid: String,
    chunk_size: NonZeroUsize,
    state: SendState,
    bytes: u64,
    chunks: u64,
}

impl StreamSender {
    /// A sender for the transfer of request `rid` (the id of the `upload` or
    /// `download` request), splitting at `config.chunk_size()`.
    pub fn new(rid: impl Into<String>, config: &StreamConfig) -> Result<Self, UsageError> {
        let rid = rid.into();
        check_rid(&rid).map_err(|(len, max)| UsageError::InvalidRid { len, max })?;
        Ok(Self {
            rid,
            chunk_size: config.chunk_size(),
            state: SendState::Idle,
            bytes: 0,
            chunks: 0,
        })
    }

    /// The transfer's rid.
    pub fn rid(&self) -> &str {
        &self.rid
    }

    /// Where the transfer is.
    pub fn state(&self) -> SendState {
        self.state
    }

    /// Payload bytes put into `stream` envelopes so far.
    pub fn bytes_sent(&self) -> u64 {
        self.bytes
    }

    /// `stream` envelopes built so far.
    pub fn chunks_sent(&self) -> u64 {
        self.chunks
    }

    /// The `beginstream` envelope. `sha256` is the digest of the whole
    /// payload (see [`sha256`](super::sha256)), written as lower-case hex so
    /// the receiver can verify it; `None` sends no checksum. The sender does
    /// not check the digest against what it later sends: the receiver does.
    pub fn begin(
        &mut self,
        sha256: Option<[u8; 32]>,
        stat: Option<Stat>,
    ) -> Result<Envelope, UsageError> {
        match self.state {
            SendState::Idle => {
                self.state = SendState::Open;
                let checksum = sha256.map(|digest| to_hex(&digest)).unwrap_or_default();
                Ok(self.envelope(BEGIN_STREAM_COMMAND, &BeginStream { checksum, stat }))
            }
            SendState::Open => Err(UsageError::AlreadyBegun {
                rid: self.rid.clone(),
            }),
            _ => Err(UsageError::AlreadyFinished {
                rid: self.rid.clone(),
            }),
        }
    }

    /// One `stream` envelope carrying `data` whole. `data` may be empty and
    /// must not be longer than the chunk size; use [`chunks`](Self::chunks)
    /// to split larger payloads.
    pub fn chunk(&mut self, data: Bytes) -> Result<Envelope, UsageError> {
        let (header, chunk) = self.chunk_parts(data)?;
        Ok(Envelope {
            data: Some(any_of(&chunk)),
            ..header
        })
    }

    /// The `stream` envelope [`chunk`](Self::chunk) would build, in two
    /// parts: the header (`command` and `rid`, no `data`) and the payload
    /// as a typed [`Stream`] whose `data` is `data` itself. Same checks and
    /// counts as `chunk`.
    ///
    /// `chunk` encodes the payload into the `Any` (one copy of `data`), and
    /// framing the envelope copies it again. Written with
    /// [`encode_packed_frame`](crate::frame::encode_packed_frame), or queued
    /// with [`Connection::send_chunk`](crate::connection::Connection::send_chunk),
    /// the parts produce the same bytes with one copy of `data`, straight
    /// into the frame.
    ///
    /// ```
    /// use bytes::{Bytes, BytesMut};
    /// use openiap_wire::frame::{DEFAULT_MAX_FRAME_LENGTH, encode_frame, encode_packed_frame};
    /// use openiap_wire::stream::{StreamConfig, StreamSender};
    ///
    /// let config = StreamConfig::default();
    /// let (mut a, mut b) = (StreamSender::new("u1", &config)?, StreamSender::new("u1", &config)?);
    /// a.begin(None, None)?;
    /// b.begin(None, None)?;
    /// let data = Bytes::from(vec![7; 1000]);
    ///
    /// let mut via_envelope = BytesMut::new();
    /// encode_frame(&a.chunk(data.clone())?, DEFAULT_MAX_FRAME_LENGTH, &mut via_envelope)?;
    /// let (header, chunk) = b.chunk_parts(data)?;
    /// let mut direct = BytesMut::new();
    /// encode_packed_frame(&header, &chunk, DEFAULT_MAX_FRAME_LENGTH, &mut direct)?;
    /// assert_eq!(direct, via_envelope);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`chunk`](Self::chunk).
    pub fn chunk_parts(&mut self, data: Bytes) -> Result<(Envelope, Stream), UsageError> {
        match self.state {
            SendState::Open if data.len() > self.chunk_size.get() => {
                Err(UsageError::ChunkTooLarge {
                    rid: self.rid.clone(),
                    len: data.len(),
                    max: self.chunk_size.get(),
                })
            }
            SendState::Open => {
                self.count(&data);
                Ok((self.header(STREAM_COMMAND), Stream { data }))
            }
            SendState::Idle => Err(UsageError::StreamNotOpen {
                rid: self.rid.clone(),
            }),
            _ => Err(UsageError::AlreadyFinished {
                rid: self.rid.clone(),
            }),
        }
    }

    /// Splits `data` into `stream` envelopes of at most the chunk size. The
    /// split is zero-copy (`Bytes` slices); encoding each chunk into its
    /// `Any` copies it once, as an owned `Envelope` requires (see
    /// [`chunk_parts`](Self::chunk_parts) for the way around it). Empty
    /// `data` yields nothing.
    pub fn chunks(&mut self, data: Bytes) -> Result<Chunks<'_>, UsageError> {
        match self.state {
            SendState::Open => Ok(Chunks {
                sender: self,
                rest: data,
            }),
            SendState::Idle => Err(UsageError::StreamNotOpen {
                rid: self.rid.clone(),
            }),
            _ => Err(UsageError::AlreadyFinished {
                rid: self.rid.clone(),
            }),
        }
    }

    /// The `endstream` envelope: an `EndStream` `Any` with an empty value, as
    /// the Rust client and the server send it.
    pub fn end(&mut self) -> Result<Envelope, UsageError> {
        match self.state {
            SendState::Open => {
                self.state = SendState::Ended;
                Ok(self.envelope(END_STREAM_COMMAND, &EndStream {}))
            }
            SendState::Idle => Err(UsageError::StreamNotOpen {
                rid: self.rid.clone(),
            }),
            _ => Err(UsageError::AlreadyFinished {
                rid: self.rid.clone(),
            }),
        }
    }

    /// Counts one chunk of `data`.
    fn count(&mut self, data: &Bytes) {
        self.bytes = self
            .bytes
            .saturating_add(u64::try_from(data.len()).unwrap_or(u64::MAX));
        self.chunks = self.chunks.saturating_add(1);
    }

    fn stream_envelope(&mut self, data: Bytes) -> Envelope {
        self.count(&data);
        self.envelope(STREAM_COMMAND, &Stream { data })
    }

    /// An envelope of this transfer without data.
    fn header(&self, command: &str) -> Envelope {
        Envelope {
            command: command.to_owned(),
            rid: self.rid.clone(),
            ..Envelope::default()
        }
    }

    fn envelope<M: Message + Name>(&self, command: &str, message: &M) -> Envelope {
        Envelope {
            data: Some(any_of(message)),
            ..self.header(command)
        }
    }
}

/// `message` packed as the `data` of an envelope.
fn any_of<M: Message + Name>(message: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: Bytes::from(message.encode_to_vec()),
    }
}

/// Iterator over the `stream` envelopes of one payload, from
/// [`StreamSender::chunks`].
#[derive(Debug)]
pub struct Chunks<'a> {
    sender: &'a mut StreamSender,
    rest: Bytes,
}

impl Iterator for Chunks<'_> {
    type Item = Envelope;

    fn next(&mut self) -> Option<Envelope> {
        if self.rest.is_empty() {
            return None;
        }
        let take = self.rest.len().min(self.sender.chunk_size.get());
        let chunk = self.rest.split_to(take);
        Some(self.sender.stream_envelope(chunk))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.rest.len().div_ceil(self.sender.chunk_size.get());
        (left, Some(left))
    }
}

impl ExactSizeIterator for Chunks<'_> {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::{MAX_RID_LEN, StreamTable, sha256, sha256_hex};
    use proptest::prelude::*;

    fn sender(chunk_size: usize) -> StreamSender {
        let mut config = StreamConfig::default();
        config.set_chunk_size(NonZeroUsize::new(chunk_size).unwrap());
        StreamSender::new("u1", &config).unwrap()
    }

    fn payload<M: Message + Name + Default>(envelope: &Envelope) -> M {
        let any = envelope.data.as_ref().unwrap();
        assert_eq!(any.type_url, M::type_url());
        M::decode(any.value.clone()).unwrap()
    }

    #[test]
    fn new_rejects_empty_and_long_rid() {
        let config = StreamConfig::default();
        let error = StreamSender::new("", &config).unwrap_err();
        assert_eq!(
            error,
            UsageError::InvalidRid {
                len: 0,
                max: MAX_RID_LEN
            }
        );
        assert!(StreamSender::new("r".repeat(MAX_RID_LEN + 1), &config).is_err());
    }

    #[test]
    fn begin_builds_canonical_envelope() {
        let mut sender = sender(4);
        let stat = Stat {
            size: 12,
            ..Stat::default()
        };
        let envelope = sender.begin(None, Some(stat)).unwrap();
        assert_eq!(envelope.command, "beginstream");
        assert_eq!(envelope.rid, "u1");
        assert_eq!((envelope.id.as_str(), envelope.seq), ("", 0));
        let begin: BeginStream = payload(&envelope);
        assert_eq!(
            begin,
            BeginStream {
                checksum: String::new(),
                stat: Some(stat)
            }
        );
        assert_eq!(sender.state(), SendState::Open);
    }

    #[test]
    fn begin_with_digest_writes_lower_case_hex() {
        let mut sender = sender(4);
        let begin: BeginStream = payload(&sender.begin(Some(sha256(b"abc")), None).unwrap());
        assert_eq!(begin.checksum, sha256_hex(b"abc"));
        assert_eq!(begin.checksum, begin.checksum.to_lowercase());
    }

    #[test]
    fn begin_twice_is_already_begun() {
        let mut sender = sender(4);
        sender.begin(None, None).unwrap();
        assert_eq!(
            sender.begin(None, None),
            Err(UsageError::AlreadyBegun { rid: "u1".into() })
        );
    }

    #[test]
    fn chunk_and_end_before_begin_are_stream_not_open() {
        let mut sender = sender(4);
        let not_open = UsageError::StreamNotOpen { rid: "u1".into() };
        assert_eq!(sender.chunk(Bytes::new()), Err(not_open.clone()));
        assert_eq!(
            sender.chunks(Bytes::new()).map(|_| ()),
            Err(not_open.clone())
        );
        assert_eq!(sender.end(), Err(not_open));
        assert_eq!(sender.state(), SendState::Idle);
    }

    #[test]
    fn calls_after_end_are_already_finished() {
        let mut sender = sender(4);
        sender.begin(None, None).unwrap();
        sender.end().unwrap();
        let finished = UsageError::AlreadyFinished { rid: "u1".into() };
        assert_eq!(sender.begin(None, None), Err(finished.clone()));
        assert_eq!(sender.chunk(Bytes::new()), Err(finished.clone()));
        assert_eq!(
            sender.chunks(Bytes::new()).map(|_| ()),
            Err(finished.clone())
        );
        assert_eq!(sender.end(), Err(finished));
        assert_eq!(sender.state(), SendState::Ended);
    }

    #[test]
    fn chunk_carries_data_whole() {
        let mut sender = sender(4);
        sender.begin(None, None).unwrap();
        let envelope = sender.chunk(Bytes::from_static(b"abcd")).unwrap();
        assert_eq!(envelope.command, "stream");
        assert_eq!(envelope.rid, "u1");
        assert_eq!(
            payload::<Stream>(&envelope).data,
            Bytes::from_static(b"abcd")
        );
        assert_eq!((sender.bytes_sent(), sender.chunks_sent()), (4, 1));
    }

    #[test]
    fn chunk_parts_frame_like_chunk_and_share_the_data() {
        use crate::frame::{DEFAULT_MAX_FRAME_LENGTH, encode_frame, encode_packed_frame};
        let (mut a, mut b) = (sender(8), sender(8));
        a.begin(None, None).unwrap();
        b.begin(None, None).unwrap();
        let data = Bytes::from_static(b"abcdefgh");
        let mut envelope = a.chunk(data.clone()).unwrap();
        let (mut header, chunk) = b.chunk_parts(data.clone()).unwrap();
        assert_eq!(chunk.data.as_ptr(), data.as_ptr(), "no copy");
        assert_eq!(header.data, None);
        (envelope.id, envelope.seq) = ("7".into(), 300);
        (header.id, header.seq) = ("7".into(), 300);
        let (mut x, mut y) = (bytes::BytesMut::new(), bytes::BytesMut::new());
        encode_frame(&envelope, DEFAULT_MAX_FRAME_LENGTH, &mut x).unwrap();
        encode_packed_frame(&header, &chunk, DEFAULT_MAX_FRAME_LENGTH, &mut y).unwrap();
        assert_eq!(x, y);
        assert_eq!((b.bytes_sent(), b.chunks_sent()), (8, 1));
        assert_eq!(
            b.chunk_parts(Bytes::from_static(b"123456789")).map(|_| ()),
            Err(UsageError::ChunkTooLarge {
                rid: "u1".into(),
                len: 9,
                max: 8
            })
        );
        b.end().unwrap();
        assert_eq!(
            b.chunk_parts(data).map(|_| ()),
            Err(UsageError::AlreadyFinished { rid: "u1".into() })
        );
    }

    #[test]
    fn chunk_larger_than_chunk_size_is_refused() {
        let mut sender = sender(4);
        sender.begin(None, None).unwrap();
        let error = sender.chunk(Bytes::from_static(b"abcde")).unwrap_err();
        assert_eq!(
            error,
            UsageError::ChunkTooLarge {
                rid: "u1".into(),
                len: 5,
                max: 4
            }
        );
        assert_eq!(sender.chunks_sent(), 0);
    }

    #[test]
    fn chunks_split_at_chunk_size() {
        let mut sender = sender(4);
        sender.begin(None, None).unwrap();
        let chunks = sender.chunks(Bytes::from_static(b"abcdefghij")).unwrap();
        assert_eq!(chunks.len(), 3);
        let parts: Vec<Bytes> = chunks
            .map(|envelope| payload::<Stream>(&envelope).data)
            .collect();
        assert_eq!(parts, [&b"abcd"[..], b"efgh", b"ij"]);
        assert_eq!((sender.bytes_sent(), sender.chunks_sent()), (10, 3));
    }

    #[test]
    fn chunks_of_empty_data_yield_nothing() {
        let mut sender = sender(4);
        sender.begin(None, None).unwrap();
        assert_eq!(sender.chunks(Bytes::new()).unwrap().count(), 0);
        assert_eq!(sender.chunks_sent(), 0);
    }

    #[test]
    fn end_builds_endstream_with_empty_value() {
        let mut sender = sender(4);
        sender.begin(None, None).unwrap();
        let envelope = sender.end().unwrap();
        assert_eq!(envelope.command, "endstream");
        assert_eq!(envelope.rid, "u1");
        let any = envelope.data.unwrap();
        assert_eq!(any.type_url, EndStream::type_url());
        assert!(any.value.is_empty());
    }

    /// Sends `data` with a sender and feeds the decoded parts to a table.
    fn round_trip(
        data: &[u8],
        chunk_size: usize,
        checksum: bool,
    ) -> (u64, crate::stream::StreamSummary) {
        let mut sender = sender(chunk_size);
        let mut table = StreamTable::default();
        let begin = sender.begin(checksum.then(|| sha256(data)), None).unwrap();
        table.recv_begin("u1", &payload(&begin)).unwrap();
        let envelopes: Vec<Envelope> = sender
            .chunks(Bytes::copy_from_slice(data))
            .unwrap()
            .collect();
        let mut received = Vec::new();
        for envelope in &envelopes {
            assert_eq!(envelope.command, STREAM_COMMAND);
            let chunk: Stream = payload(envelope);
            assert!(chunk.data.len() <= chunk_size);
            received.extend_from_slice(&table.recv_chunk("u1", chunk.data).unwrap());
        }
        sender.end().unwrap();
        assert_eq!(received, data);
        (envelopes.len() as u64, table.recv_end("u1").unwrap())
    }

    proptest! {
        #[test]
        fn sender_to_table_round_trip(
            chunk_size in 1usize..64,
            shape in 0u8..4,
            extra in proptest::collection::vec(any::<u8>(), 0..600),
            checksum in any::<bool>(),
        ) {
            // 0 bytes, 1 byte, exactly one chunk, or many chunks.
            let data: Vec<u8> = match shape {
                0 => Vec::new(),
                1 => vec![9],
                2 => vec![5; chunk_size],
                _ => [vec![1; chunk_size + 1], extra].concat(),
            };
            let (sent, summary) = round_trip(&data, chunk_size, checksum);
            prop_assert_eq!(sent, data.len().div_ceil(chunk_size) as u64);
            prop_assert_eq!(summary.chunks, sent);
            prop_assert_eq!(summary.bytes, data.len() as u64);
            prop_assert_eq!(summary.sha256, Some(sha256_hex(&data)));
            prop_assert_eq!(summary.checksum_verified, checksum);
        }
    }
}
