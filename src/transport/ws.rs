//! [`WsStream`]: a WebSocket as a [`Transport`]: binary messages are one
//! byte stream.
//!
//! ```text
//!   recv: Binary(m1) Binary(m2) ... ──handle_message(m)──► FrameDecoder (frames may span messages)
//!   send: poll_transmit batch ──cut at max_message_size──► Binary, Binary, ...
//! ```
//!
//! Pings are answered by tungstenite; a text message is an error (the
//! protocol has none); a close frame is the end of input.

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::BytesMut;
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::{Recv, Transport, TransportConfig, TransportError};
use crate::connection::Connection;
use crate::frame::LENGTH_PREFIX_LEN;

/// A WebSocket driven as a [`Transport`].
#[derive(Debug)]
pub struct WsStream<S> {
    ws: WebSocketStream<S>,
    out: BytesMut,
    max_message_size: usize,
}

impl<S> WsStream<S> {
    /// Wraps an upgraded WebSocket; messages we send stay within
    /// `config.max_message_size()`.
    pub fn new(ws: WebSocketStream<S>, config: &TransportConfig) -> Self {
        Self {
            ws,
            out: BytesMut::new(),
            max_message_size: config.max_message_size(),
        }
    }
}

/// Most tungstenite reads at once. tungstenite zeroes this much of its read
/// buffer before every read, also when a 70-byte ping is all that came, and
/// a ping round trip makes about three reads on each side: at 32 KiB that
/// zeroing was most of a ws client's instructions (callgrind, 2,000 pings:
/// 144.8 M Ir in all, 114.5 M of them `memset` under `BytesMut::resize`;
/// 54.2 M at 8 KiB). A large frame takes more reads instead (its bytes are
/// zeroed once either way).
pub const WS_READ_SIZE: usize = 8 * 1024;

/// The tungstenite settings: one message or frame may hold a whole
/// envelope frame, no more; reads of at most [`WS_READ_SIZE`].
pub(super) fn ws_config(config: &TransportConfig) -> WebSocketConfig {
    let max = config.max_frame_length().saturating_add(LENGTH_PREFIX_LEN);
    WebSocketConfig::default()
        .max_message_size(Some(max))
        .max_frame_size(Some(max))
        .read_buffer_size(WS_READ_SIZE)
}

impl<S: AsyncRead + AsyncWrite + Send + Unpin> Transport for WsStream<S> {
    fn poll_recv(
        &mut self,
        cx: &mut Context<'_>,
        conn: &mut Connection,
        now: Instant,
    ) -> Poll<Result<Recv, TransportError>> {
        loop {
            let message = match ready!(Pin::new(&mut self.ws).poll_next(cx)) {
                None => return Poll::Ready(Ok(Recv::Eof)),
                Some(message) => message?,
            };
            match message {
                Message::Binary(data) => {
                    conn.handle_message(data, now)?;
                    return Poll::Ready(Ok(Recv::Data));
                }
                Message::Text(text) => {
                    return Poll::Ready(Err(TransportError::TextMessage { len: text.len() }));
                }
                Message::Close(_) => return Poll::Ready(Ok(Recv::Eof)),
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
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
                conn.poll_transmit(&mut self.out);
                if self.out.is_empty() {
                    ready!(Pin::new(&mut self.ws).poll_flush(cx))?;
                    return Poll::Ready(Ok(()));
                }
            }
            ready!(Pin::new(&mut self.ws).poll_ready(cx))?;
            let len = self.out.len().min(self.max_message_size);
            let message = self.out.split_to(len).freeze();
            Pin::new(&mut self.ws).start_send(Message::Binary(message))?;
        }
    }

    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), TransportError>> {
        match ready!(Pin::new(&mut self.ws).poll_close(cx)) {
            Ok(())
            | Err(tokio_tungstenite::tungstenite::Error::ConnectionClosed)
            | Err(tokio_tungstenite::tungstenite::Error::AlreadyClosed) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(e.into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connection::{ConnectionConfig, Event, Role};
    use crate::envelope::pack;
    use crate::proto::{PingRequest, Stream as StreamMsg};
    use crate::transport::{Driver, Status};
    use bytes::Bytes;
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::protocol::Role as WsRole;

    async fn ws_pair() -> (
        WebSocketStream<tokio::io::DuplexStream>,
        WebSocketStream<tokio::io::DuplexStream>,
    ) {
        let (a, b) = tokio::io::duplex(1 << 16);
        let a = WebSocketStream::from_raw_socket(a, WsRole::Client, None).await;
        let b = WebSocketStream::from_raw_socket(b, WsRole::Server, None).await;
        (a, b)
    }

    #[tokio::test]
    async fn prefix_and_body_in_separate_messages_decode() {
        let (mut raw, server_ws) = ws_pair().await;
        let mut server = Connection::new(Role::Server, ConnectionConfig::default(), Instant::now());
        let mut driver = Driver::new(WsStream::new(server_ws, &TransportConfig::default()));
        let mut ping = pack(&PingRequest {});
        ping.id = "p1".into();
        let mut frame = BytesMut::new();
        crate::frame::encode_frame(&ping, usize::MAX, &mut frame).unwrap();
        let body = frame.split_off(LENGTH_PREFIX_LEN);
        raw.send(Message::Binary(frame.freeze())).await.unwrap();
        raw.send(Message::Binary(body.freeze())).await.unwrap();
        let id = loop {
            assert_eq!(driver.drive(&mut server).await.unwrap(), Status::Progress);
            if let Some(Event::Ping { id }) = server.poll_event() {
                break id;
            }
        };
        assert_eq!(id, "p1");
        // The pong goes out as one binary message holding prefix and body.
        driver.flush(&mut server).await.unwrap();
        let Some(Ok(Message::Binary(reply))) = raw.next().await else {
            panic!("no binary reply")
        };
        let len = u32::from_le_bytes(reply[..4].try_into().unwrap()) as usize;
        assert_eq!(reply.len(), len + LENGTH_PREFIX_LEN);
    }

    #[tokio::test]
    async fn sent_messages_respect_the_size_limit() {
        let (mut raw, server_ws) = ws_pair().await;
        let mut config = TransportConfig::default();
        config.set_max_message_size(1000);
        let mut conn = Connection::new(Role::Server, ConnectionConfig::default(), Instant::now());
        let mut driver = Driver::new(WsStream::new(server_ws, &config));
        let mut chunk = pack(&StreamMsg {
            data: Bytes::from(vec![9u8; 5000]),
        });
        chunk.rid = "r".into();
        chunk.id = "c".into();
        // The first envelope gets seq 0, which protobuf does not encode.
        let expected = crate::envelope::encoded_len(&chunk) + LENGTH_PREFIX_LEN;
        conn.send(chunk, Instant::now()).unwrap();
        let reader = tokio::spawn(async move {
            let mut sizes = Vec::new();
            let mut total = 0usize;
            while total < expected {
                let Some(Ok(Message::Binary(m))) = raw.next().await else {
                    break;
                };
                total += m.len();
                sizes.push(m.len());
            }
            (sizes, total)
        });
        driver.flush(&mut conn).await.unwrap();
        let (sizes, total) = reader.await.unwrap();
        assert_eq!(total, expected);
        assert_eq!(sizes.len(), expected.div_ceil(1000), "{sizes:?}");
        assert!(sizes.iter().all(|&s| s <= 1000), "{sizes:?}");
    }

    #[tokio::test]
    async fn text_message_is_an_error() {
        let (mut raw, server_ws) = ws_pair().await;
        let mut conn = Connection::new(Role::Server, ConnectionConfig::default(), Instant::now());
        let mut driver = Driver::new(WsStream::new(server_ws, &TransportConfig::default()));
        raw.send(Message::text("hello")).await.unwrap();
        assert!(matches!(
            driver.drive(&mut conn).await,
            Err(TransportError::TextMessage { len: 5 })
        ));
    }

    /// Feeds `cuts` of the frames of `count` pings as separate binary
    /// messages and returns the ping ids the connection reports.
    async fn ids_after_split(count: usize, cuts: &[usize]) -> Vec<String> {
        let (mut raw, server_ws) = ws_pair().await;
        let mut conn = Connection::new(Role::Server, ConnectionConfig::default(), Instant::now());
        let mut driver = Driver::new(WsStream::new(server_ws, &TransportConfig::default()));
        let mut wire = BytesMut::new();
        for i in 0..count {
            let mut ping = pack(&PingRequest {});
            ping.id = format!("p{i}");
            ping.seq = i32::try_from(i).unwrap();
            crate::frame::encode_frame(&ping, usize::MAX, &mut wire).unwrap();
        }
        let mut bytes = wire.freeze();
        let mut pieces = Vec::new();
        for &cut in cuts {
            let at = cut % (bytes.len() + 1);
            pieces.push(bytes.split_to(at));
        }
        pieces.push(bytes);
        let writer = tokio::spawn(async move {
            for piece in pieces.into_iter().filter(|p| !p.is_empty()) {
                raw.send(Message::Binary(piece)).await.unwrap();
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
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let ids = runtime.block_on(ids_after_split(count, &cuts));
            let expected: Vec<String> = (0..count).map(|i| format!("p{i}")).collect();
            proptest::prop_assert_eq!(ids, expected);
        }
    }
}
