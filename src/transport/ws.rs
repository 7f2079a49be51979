//! [`WsStream`]: a WebSocket as a [`Transport`]: binary messages are one
//! byte stream.
//!
//! ```text
//!   recv: socket ──read──► head buffer ──Deframer──► conn.read_buf() ──handle_read──► frames
//!         (inside a long frame payload: socket ──read──► conn.read_buf(), unmasked in place)
//!   send: poll_transmit batch ──one binary frame, cut at max_message_size──► socket
//! ```
//!
//! The frames are this crate's own sans-IO [`websocket`](crate::websocket)
//! codec; nothing holds a whole message. Reads at a frame boundary go to a
//! small buffer of at most [`WS_READ_SIZE`] bytes; the payload bytes in it
//! are copied to the connection's receive buffer (a ping's 70 bytes). Once
//! a frame's remaining payload is at least [`DIRECT_READ`] bytes, reads go
//! straight into the connection's receive buffer, limited to that payload,
//! and are unmasked in place: a file chunk is never copied on the way in.
//!
//! The server sends each batch of the connection's frames as one unmasked
//! binary frame: the frame head goes out in the same vectored write as the
//! batch, whose large payloads are not copied (as [`ByteStream`](super::ByteStream)
//! does). A client must mask what it sends, so its batch is copied once and
//! masked in place. Pings are answered with pongs, a text message is an
//! error (the protocol has none) and a close frame is the end of input,
//! answered with a close frame when we close.

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};

use super::outbox::Outbox;
use super::stream::poll_read_at_most;
use super::{Recv, Transport, TransportConfig, TransportError};
use crate::connection::Connection;
use crate::websocket::{
    CLOSE_NORMAL, Deframer, FrameHead, MAX_HEAD_LEN, Opcode, Received, apply_mask, encode_control,
};

/// Most bytes read at once at a frame boundary (into a small buffer, from
/// which a frame's payload is copied to the connection).
pub const WS_READ_SIZE: usize = 8 * 1024;

/// A frame payload with at least this many bytes still to come is read
/// straight into the connection's receive buffer.
pub const DIRECT_READ: u64 = 4 * 1024;

/// Which end of the WebSocket we are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WsRole {
    /// We accepted: the peer masks its frames, we do not.
    Server,
    /// We connected: we mask our frames, the peer does not.
    Client,
}

/// A WebSocket driven as a [`Transport`].
#[derive(Debug)]
pub struct WsStream<S> {
    io: S,
    role: WsRole,
    deframer: Deframer,
    /// Read at frame boundaries; holds at most an incomplete frame head or
    /// control frame between calls.
    rx: BytesMut,
    out: Outbox,
    /// Control frames being written, between batches.
    control: BytesMut,
    /// The payload of the latest ping not answered yet. One at most: a
    /// peer that pings faster than it reads gets a pong for its latest
    /// ping only (RFC 6455 section 5.5.3), so unread pongs cannot pile up.
    pong: Option<bytes::Bytes>,
    max_message_size: usize,
    /// Mask keys for a client.
    keys: MaskKeys,
    /// The peer's close code, once it sent a close frame.
    peer_closed: Option<Option<u16>>,
    close_sent: bool,
}

impl<S> WsStream<S> {
    /// Wraps a socket whose opening handshake is done; `rest` holds bytes
    /// the peer sent behind it (see `ws_handshake::accept` and `connect`).
    /// Messages we send stay within `config.max_message_size()`.
    pub fn new(io: S, role: WsRole, rest: BytesMut, config: &TransportConfig) -> Self {
        Self {
            io,
            role,
            deframer: Deframer::new(role == WsRole::Server),
            rx: rest,
            out: Outbox::default(),
            control: BytesMut::new(),
            pong: None,
            max_message_size: config.max_message_size(),
            keys: MaskKeys::new(),
            peer_closed: None,
            close_sent: false,
        }
    }

    fn mask(&mut self) -> Option<[u8; 4]> {
        (self.role == WsRole::Client).then(|| self.keys.next())
    }

    /// Takes a batch from `conn` and wraps it in binary frames.
    fn fill(&mut self, conn: &mut Connection) {
        if self.role == WsRole::Server {
            self.out.fill(conn);
        } else {
            // Masked in place below: copy the payloads in.
            conn.poll_transmit(&mut self.out.staging);
        }
        let len = self.out.body_len();
        if len == 0 {
            return;
        }
        if len <= self.max_message_size {
            // A client's batch is all in `staging` (copied in above); a
            // server's may be in segments, which it does not mask.
            let key = self.mask();
            let head = FrameHead::new(Opcode::Binary, len as u64);
            let head = masked(head, key, &mut self.out.staging);
            let mut encoded = [0u8; MAX_HEAD_LEN];
            let mut cursor = &mut encoded[..];
            head.encode(&mut cursor);
            let used = MAX_HEAD_LEN - cursor.remaining_mut();
            self.out.set_head(&encoded[..used]);
        } else {
            // Rare (a message limit below the batch): one copy, cut into
            // messages with a head each.
            let mut body = self.out.take_body();
            while !body.is_empty() {
                let mut piece = body.split_to(body.len().min(self.max_message_size));
                let head = FrameHead::new(Opcode::Binary, piece.len() as u64);
                let head = masked(head, self.mask(), &mut piece);
                let mut encoded = BytesMut::with_capacity(MAX_HEAD_LEN);
                head.encode(&mut encoded);
                self.out.push(encoded.freeze());
                self.out.push(piece.freeze());
            }
        }
    }

    fn has_control(&self) -> bool {
        !self.control.is_empty() || self.pong.is_some()
    }

    fn queue_control(&mut self, opcode: Opcode, payload: &[u8]) {
        let mask = self.mask();
        encode_control(opcode, payload, mask, &mut self.control);
    }
}

impl<S: AsyncWrite + Unpin> WsStream<S> {
    /// Writes the queued control frames, then the pending pong.
    fn poll_control(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), TransportError>> {
        loop {
            if self.control.is_empty() {
                let Some(payload) = self.pong.take() else {
                    return Poll::Ready(Ok(()));
                };
                self.queue_control(Opcode::Pong, &payload);
            }
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.control))?;
            if n == 0 {
                return Poll::Ready(Err(
                    std::io::Error::from(std::io::ErrorKind::WriteZero).into()
                ));
            }
            self.control.advance(n);
        }
    }
}

/// `head` with `key` (a client's), and `payload` masked with it in place;
/// `head` and `payload` unchanged without a key.
#[inline]
fn masked(head: FrameHead, key: Option<[u8; 4]>, payload: &mut [u8]) -> FrameHead {
    match key {
        Some(key) => {
            apply_mask(payload, key, 0);
            head.with_mask(key)
        }
        None => head,
    }
}

/// Mask keys for a client's frames: a per-connection generator seeded from
/// the OS. RFC 6455 asks for keys a page script cannot predict (they defeat
/// cache poisoning through proxies), not for secrecy.
#[derive(Debug)]
struct MaskKeys(u64);

impl MaskKeys {
    fn new() -> Self {
        let mut seed = [0u8; 8];
        // Without OS randomness, fall back to the clock: still not
        // predictable by a page script.
        if getrandom::fill(&mut seed).is_err() {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            seed = (nanos as u64).to_le_bytes();
        }
        Self(u64::from_le_bytes(seed))
    }

    /// splitmix64.
    fn next(&mut self) -> [u8; 4] {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let [a, b, c, d, ..] = z.to_le_bytes();
        [a, b, c, d]
    }
}

impl<S: AsyncRead + AsyncWrite + Send + Unpin> Transport for WsStream<S> {
    fn poll_recv(
        &mut self,
        cx: &mut Context<'_>,
        conn: &mut Connection,
        now: Instant,
    ) -> Poll<Result<Recv, TransportError>> {
        loop {
            if self.peer_closed.is_some() {
                return Poll::Ready(Ok(Recv::Eof));
            }
            if !self.rx.is_empty() {
                let buf = conn.read_buf();
                let before = buf.len();
                let received = self.deframer.decode(&mut self.rx, buf)?;
                let fed = buf.len() > before;
                // Decoding stops after any control frame: more may follow.
                let stopped_early = received != Received::Data;
                let act = match received {
                    Received::Data | Received::Pong(_) => false,
                    Received::Ping(payload) => {
                        self.pong = Some(payload);
                        true
                    }
                    Received::Close(code) => {
                        self.peer_closed = Some(code);
                        true
                    }
                };
                if fed {
                    conn.handle_read(now)?;
                }
                if fed || act {
                    // A pong to send, or the close seen on the next call.
                    return Poll::Ready(Ok(Recv::Data));
                }
                if stopped_early {
                    continue;
                }
            }
            let remaining = self.deframer.payload_remaining();
            if self.rx.is_empty() && remaining >= DIRECT_READ {
                // Straight into the connection's buffer, no further than
                // this frame's payload (its next head goes to `rx`).
                let want = conn.large_read().unwrap_or(WS_READ_SIZE);
                let want = usize::try_from(remaining).map_or(want, |r| r.min(want));
                let buf = conn.read_buf();
                let start = buf.len();
                if ready!(poll_read_at_most(&mut self.io, cx, buf, want))? == 0 {
                    return Poll::Ready(Ok(Recv::Eof));
                }
                self.deframer.unmask_payload(&mut buf[start..]);
                conn.handle_read(now)?;
                return Poll::Ready(Ok(Recv::Data));
            }
            if ready!(poll_read_at_most(
                &mut self.io,
                cx,
                &mut self.rx,
                WS_READ_SIZE
            ))? == 0
            {
                return Poll::Ready(Ok(Recv::Eof));
            }
        }
    }

    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        conn: &mut Connection,
    ) -> Poll<Result<(), TransportError>> {
        loop {
            if self.out.is_empty() {
                // Between messages: control frames first (rare: checked
                // here, so the call is not paid on every send).
                if self.has_control() {
                    ready!(self.poll_control(cx))?;
                }
                if self.close_sent {
                    return Poll::Ready(Ok(()));
                }
                self.fill(conn);
                if self.out.is_empty() {
                    ready!(Pin::new(&mut self.io).poll_flush(cx))?;
                    return Poll::Ready(Ok(()));
                }
            }
            ready!(self.out.poll_write(&mut self.io, cx))?;
        }
    }

    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), TransportError>> {
        while !self.out.is_empty() {
            ready!(self.out.poll_write(&mut self.io, cx))?;
        }
        // A pending pong goes before our close.
        ready!(self.poll_control(cx))?;
        if !self.close_sent {
            self.close_sent = true;
            // Echo the peer's code, or close normally.
            let code = self.peer_closed.flatten().unwrap_or(CLOSE_NORMAL);
            self.queue_control(Opcode::Close, &code.to_be_bytes());
        }
        ready!(self.poll_control(cx))?;
        ready!(Pin::new(&mut self.io).poll_flush(cx))?;
        Poll::Ready(Ok(ready!(Pin::new(&mut self.io).poll_shutdown(cx))?))
    }
}

/// Wraps a message as a frame, for tests and tools that play the
/// peer: one final binary frame, masked by a client.
#[cfg(test)]
pub(crate) fn binary_frame(payload: &[u8], mask: Option<[u8; 4]>) -> bytes::Bytes {
    let mut out = BytesMut::new();
    let head = FrameHead {
        mask,
        ..FrameHead::new(Opcode::Binary, payload.len() as u64)
    };
    head.encode_frame(payload, &mut out);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connection::{ConnectionConfig, Event, Role};
    use crate::envelope::pack;
    use crate::frame::LENGTH_PREFIX_LEN;
    use crate::proto::{PingRequest, Stream as StreamMsg};
    use crate::transport::{Driver, Status};
    use crate::websocket::{MAX_CONTROL_PAYLOAD, WsError};
    use bytes::Bytes;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    /// A server `WsStream` over a duplex pipe of `capacity` bytes each way,
    /// the raw client end of that pipe, and a server connection.
    fn server_with_pipe(
        config: &TransportConfig,
        capacity: usize,
    ) -> (Driver<WsStream<DuplexStream>>, DuplexStream, Connection) {
        let (raw, server) = tokio::io::duplex(capacity);
        let ws = WsStream::new(server, WsRole::Server, BytesMut::new(), config);
        let conn = Connection::new(Role::Server, ConnectionConfig::default(), Instant::now());
        (Driver::new(ws), raw, conn)
    }

    fn server_and_raw(
        config: &TransportConfig,
    ) -> (Driver<WsStream<DuplexStream>>, DuplexStream, Connection) {
        server_with_pipe(config, 1 << 16)
    }

    /// Reads whole frames from the raw end until `want` payload bytes came;
    /// returns each frame's head and payload.
    async fn read_frames(raw: &mut DuplexStream, want: usize) -> Vec<(FrameHead, Vec<u8>)> {
        let mut buf = Vec::new();
        let mut frames = Vec::new();
        let mut got = 0;
        while got < want {
            if let Some((head, used)) = FrameHead::parse(&buf).unwrap() {
                let len = usize::try_from(head.len).unwrap();
                if buf.len() >= used + len {
                    let mut payload = buf[used..used + len].to_vec();
                    if let Some(key) = head.mask {
                        apply_mask(&mut payload, key, 0);
                    }
                    buf.drain(..used + len);
                    got += len;
                    frames.push((head, payload));
                    continue;
                }
            }
            let mut more = [0u8; 4096];
            let n = raw.read(&mut more).await.unwrap();
            assert!(n > 0, "EOF after {got} of {want} bytes");
            buf.extend_from_slice(&more[..n]);
        }
        frames
    }

    fn ping_frame(id: &str, seq: i32) -> BytesMut {
        let mut ping = pack(&PingRequest {});
        ping.id = id.into();
        ping.seq = seq;
        let mut frame = BytesMut::new();
        crate::frame::encode_frame(&ping, usize::MAX, &mut frame).unwrap();
        frame
    }

    #[tokio::test]
    async fn prefix_and_body_in_separate_messages_decode() {
        let (mut driver, mut raw, mut server) = server_and_raw(&TransportConfig::default());
        let mut frame = ping_frame("p1", 0);
        let body = frame.split_off(LENGTH_PREFIX_LEN);
        raw.write_all(&binary_frame(&frame, Some([1, 2, 3, 4])))
            .await
            .unwrap();
        raw.write_all(&binary_frame(&body, Some([5, 6, 7, 8])))
            .await
            .unwrap();
        let id = loop {
            assert_eq!(driver.drive(&mut server).await.unwrap(), Status::Progress);
            if let Some(Event::Ping { id }) = server.poll_event() {
                break id;
            }
        };
        assert_eq!(id, "p1");
        // The pong goes out as one unmasked binary frame holding prefix and
        // body.
        driver.flush(&mut server).await.unwrap();
        let frames = read_frames(&mut raw, 1).await;
        let (head, reply) = &frames[0];
        assert_eq!(
            (head.opcode, head.fin, head.mask),
            (Opcode::Binary, true, None)
        );
        let len = u32::from_le_bytes(reply[..4].try_into().unwrap()) as usize;
        assert_eq!(reply.len(), len + LENGTH_PREFIX_LEN);
    }

    #[tokio::test]
    async fn sent_messages_respect_the_size_limit() {
        let mut config = TransportConfig::default();
        config.set_max_message_size(1000);
        let (mut driver, mut raw, mut conn) = server_and_raw(&config);
        let mut chunk = pack(&StreamMsg {
            data: Bytes::from(vec![9u8; 5000]),
        });
        chunk.rid = "r".into();
        chunk.id = "c".into();
        // The first envelope gets seq 0, which protobuf does not encode.
        let expected = crate::envelope::encoded_len(&chunk) + LENGTH_PREFIX_LEN;
        conn.send(chunk, Instant::now()).unwrap();
        let reader = tokio::spawn(async move { read_frames(&mut raw, expected).await });
        driver.flush(&mut conn).await.unwrap();
        let frames = reader.await.unwrap();
        let sizes: Vec<usize> = frames.iter().map(|(_, p)| p.len()).collect();
        assert_eq!(sizes.iter().sum::<usize>(), expected);
        assert_eq!(sizes.len(), expected.div_ceil(1000), "{sizes:?}");
        assert!(sizes.iter().all(|&s| s <= 1000), "{sizes:?}");
        assert!(frames.iter().all(|(h, _)| h.fin && h.mask.is_none()));
    }

    #[tokio::test]
    async fn text_message_is_an_error() {
        let (mut driver, mut raw, mut conn) = server_and_raw(&TransportConfig::default());
        let mut text = BytesMut::new();
        FrameHead::new(Opcode::Text, 5)
            .with_mask([0; 4])
            .encode(&mut text);
        text.extend_from_slice(b"hello");
        raw.write_all(&text).await.unwrap();
        assert!(matches!(
            driver.drive(&mut conn).await,
            Err(TransportError::WebSocket(WsError::TextMessage { len: 5 }))
        ));
    }

    #[tokio::test]
    async fn unmasked_client_frames_are_an_error() {
        let (mut driver, mut raw, mut conn) = server_and_raw(&TransportConfig::default());
        raw.write_all(&binary_frame(&ping_frame("p", 0), None))
            .await
            .unwrap();
        assert!(matches!(
            driver.drive(&mut conn).await,
            Err(TransportError::WebSocket(WsError::Masking {
                masked: false
            }))
        ));
    }

    #[tokio::test]
    async fn pings_are_answered_and_a_close_is_echoed() {
        let (mut driver, mut raw, mut conn) = server_and_raw(&TransportConfig::default());
        let mut wire = BytesMut::new();
        encode_control(Opcode::Ping, b"are you there", Some([7; 4]), &mut wire);
        encode_control(
            Opcode::Close,
            &1001u16.to_be_bytes(),
            Some([3; 4]),
            &mut wire,
        );
        raw.write_all(&wire).await.unwrap();
        let mut status = driver.drive(&mut conn).await.unwrap();
        while status == Status::Progress {
            status = driver.drive(&mut conn).await.unwrap();
        }
        assert_eq!(status, Status::Closed);
        driver.close(&mut conn).await.unwrap();
        let frames = read_frames(&mut raw, 13 + 2).await;
        assert_eq!(frames[0].0.opcode, Opcode::Pong);
        assert_eq!(frames[0].1, b"are you there");
        assert_eq!(frames[1].0.opcode, Opcode::Close);
        assert_eq!(frames[1].1, 1001u16.to_be_bytes());
        let mut rest = Vec::new();
        raw.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "nothing after the close frame");
    }

    #[tokio::test]
    async fn a_peer_that_pings_and_never_reads_gets_one_pong_queued_at_most() {
        // 4 KiB each way: our pongs fill the pipe after about 30.
        let (mut driver, raw, mut conn) = server_with_pipe(&TransportConfig::default(), 4096);
        let pings: u32 = 20_000;
        let mut wire = BytesMut::new();
        for i in 0..pings {
            let payload = [i.to_be_bytes(), [0xAB; 4]].concat().repeat(15);
            encode_control(Opcode::Ping, &payload, Some([9, 8, 7, 6]), &mut wire);
        }
        let (mut raw_rx, mut raw_tx) = tokio::io::split(raw);
        let writer = tokio::spawn(async move { raw_tx.write_all(&wire).await.map(|()| raw_tx) });
        // Drive until every ping was read: each drive returns after a read
        // (a ping received) or after the pipe stayed idle for 200 ms.
        let step = std::time::Duration::from_millis(200);
        while let Ok(status) = tokio::time::timeout(step, driver.drive(&mut conn)).await {
            assert_eq!(status.unwrap(), Status::Progress);
            let ws = driver.get_mut();
            // One pong being written and the latest ping's payload.
            assert!(
                ws.control.len() <= MAX_HEAD_LEN + MAX_CONTROL_PAYLOAD,
                "{}",
                ws.control.len()
            );
        }
        let raw_tx = writer.await.unwrap().unwrap();
        // The peer reads at last: the last pong answers the last ping.
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(Ok(n @ 1..)) =
                tokio::time::timeout(std::time::Duration::from_millis(300), raw_rx.read(&mut buf))
                    .await
            {
                all.extend_from_slice(&buf[..n]);
            }
            all
        });
        while let Ok(status) = tokio::time::timeout(step, driver.drive(&mut conn)).await {
            status.unwrap();
        }
        let all = reader.await.unwrap();
        drop(raw_tx);
        let mut deframer = Deframer::new(false);
        let (mut src, mut data) = (BytesMut::from(&all[..]), BytesMut::new());
        let mut pongs = Vec::new();
        while let Ok(Received::Pong(payload)) = deframer.decode(&mut src, &mut data) {
            pongs.push(payload);
        }
        assert!(src.is_empty() && data.is_empty());
        assert!(pongs.len() < 200, "{} pongs for {pings} pings", pongs.len());
        let last = pongs.last().expect("no pong at all");
        assert_eq!(last[..4], (pings - 1).to_be_bytes());
    }

    #[tokio::test]
    async fn data_behind_a_pong_in_the_same_read_is_delivered() {
        let (mut driver, mut raw, mut conn) = server_and_raw(&TransportConfig::default());
        let mut wire = BytesMut::new();
        encode_control(Opcode::Pong, b"late", Some([1; 4]), &mut wire);
        wire.extend_from_slice(&binary_frame(&ping_frame("after-pong", 0), Some([2; 4])));
        raw.write_all(&wire).await.unwrap();
        let id = loop {
            let drive = driver.drive(&mut conn);
            let status = tokio::time::timeout(std::time::Duration::from_secs(5), drive)
                .await
                .expect("the ping behind the pong was never decoded");
            assert_eq!(status.unwrap(), Status::Progress);
            if let Some(Event::Ping { id }) = conn.poll_event() {
                break id;
            }
        };
        assert_eq!(id, "after-pong");
    }

    #[tokio::test]
    async fn a_client_and_a_server_move_a_large_transfer_both_ways() {
        let (a, b) = tokio::io::duplex(1 << 14);
        let config = TransportConfig::default();
        let mut client_io = Driver::new(WsStream::new(a, WsRole::Client, BytesMut::new(), &config));
        let mut server_io = Driver::new(WsStream::new(b, WsRole::Server, BytesMut::new(), &config));
        let now = Instant::now();
        let mut client = Connection::new(Role::Client, ConnectionConfig::default(), now);
        let mut server = Connection::new(Role::Server, ConnectionConfig::default(), now);
        let data: Bytes = (0..700_000u32).map(|i| (i % 251) as u8).collect();
        client
            .send_stream("up", data.clone(), true, None, now)
            .unwrap();
        server
            .send_stream("down", data.clone(), true, None, now)
            .unwrap();
        let mut received = [Vec::new(), Vec::new()];
        let mut ended = [false, false];
        while !(ended[0] && ended[1]) {
            tokio::select! {
                r = client_io.drive(&mut client) => { r.unwrap(); }
                r = server_io.drive(&mut server) => { r.unwrap(); }
            }
            for (i, conn) in [&mut client, &mut server].into_iter().enumerate() {
                while let Some(event) = conn.poll_event() {
                    match event {
                        Event::StreamChunk { data, .. } => received[i].extend_from_slice(&data),
                        Event::StreamEnded { summary, .. } => {
                            assert!(summary.checksum_verified);
                            ended[i] = true;
                        }
                        Event::StreamStarted { .. } => {}
                        other => panic!("unexpected {other:?}"),
                    }
                }
            }
        }
        assert_eq!(received[0], data);
        assert_eq!(received[1], data);
    }

    /// Feeds `cuts` of the frames of `count` pings as separate binary
    /// messages, each written in pieces of `piece` bytes, and returns the
    /// ping ids the connection reports.
    async fn ids_after_split(count: usize, cuts: &[usize], piece: usize) -> Vec<String> {
        let (mut driver, mut raw, mut conn) = server_and_raw(&TransportConfig::default());
        let mut wire = BytesMut::new();
        for i in 0..count {
            wire.extend_from_slice(&ping_frame(&format!("p{i}"), i32::try_from(i).unwrap()));
        }
        let mut bytes = wire.freeze();
        let mut pieces = Vec::new();
        for &cut in cuts {
            let at = cut % (bytes.len() + 1);
            pieces.push(bytes.split_to(at));
        }
        pieces.push(bytes);
        let mut framed = Vec::new();
        for (i, message) in pieces.iter().enumerate() {
            let key = [i as u8, 1, 2, 3];
            framed.extend_from_slice(&binary_frame(message, Some(key)));
        }
        let writer = tokio::spawn(async move {
            for bytes in framed.chunks(piece.max(1)) {
                raw.write_all(bytes).await.unwrap();
            }
            raw
        });
        let mut ids = Vec::new();
        while ids.len() < count {
            assert_eq!(driver.drive(&mut conn).await.unwrap(), Status::Progress);
            while let Some(event) = conn.poll_event() {
                if let Event::Ping { id } = event {
                    ids.push(id);
                }
            }
        }
        drop(writer.await.unwrap());
        ids
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
        #[test]
        fn any_split_into_messages_delivers_every_envelope(
            count in 1usize..6,
            cuts in proptest::collection::vec(0usize..400, 0..8),
            piece in 1usize..200,
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let ids = runtime.block_on(ids_after_split(count, &cuts, piece));
            let expected: Vec<String> = (0..count).map(|i| format!("p{i}")).collect();
            proptest::prop_assert_eq!(ids, expected);
        }
    }
}
