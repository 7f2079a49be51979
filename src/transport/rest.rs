//! REST (experimental): one JSON envelope per HTTP POST, served beside the
//! WebSocket transport on the same listener, at [`DEFAULT_REST_PATH`].
//!
//! ```text
//!   POST /api/v2  {"command":"ping","id":"1",...}     Authorization: Bearer JWT
//!     │ body ≤ max frame length (else 413), JSON (else 400)
//!     ▼
//!   decode_json ─► Envelope (jwt from the header, id if missing)
//!     ├─ noop ─────────────────────────► {"command":"noop","rid":...}
//!     ├─ upload/download/stream parts ─► `error` 501: REST has no streams
//!     └─ handler: a fresh server session over an [`Exchange`]
//!   200 {"command":"pong","rid":"1",...}     bytes as {"type":"Buffer","data":[...]}
//! ```
//!
//! | JSON field | envelope field | accepted forms                                      |
//! |------------|----------------|-----------------------------------------------------|
//! | `command`, `id`, `rid`, `jwt`, `traceid`, `spanid` | same | string or `null`  |
//! | `priority`, `seq` | same    | 32-bit integer or `null` (seq is ignored)           |
//! | `data`     | `data`         | `{"type_url": "...", "value": V}` or `null`         |
//! | `V`        | `Any.value`    | `{"type":"Buffer","data":[bytes]}` (Node), a base64 string, a bare array of bytes |
//!
//! Unknown fields are ignored. Replies always use Node's Buffer form, which
//! is what the Node client decodes. Each POST is stateless: no seq checks,
//! no session between requests, no server push.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Instant;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use hyper::{Method, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;

use super::{DEFAULT_REST_PATH, Recv, Transport, TransportConfig, TransportError};
use crate::command::CommandKind;
use crate::connection::Connection;
use crate::envelope::error_reply;
use crate::proto::Envelope;
use crate::proto::google::protobuf::Any;

/// Envelopes an [`Exchange`] keeps from what the session sends back; a
/// stateless request gets one reply, the rest is dropped.
pub const MAX_EXCHANGE_ENVELOPES: usize = 8;

/// Why a POST could not be turned into an envelope. Each maps to an HTTP
/// status ([`RestError::status`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RestError {
    /// The body is bigger than the max frame length.
    #[error("request body of {len} bytes is over the limit: found {len}, limit {max}")]
    TooLarge {
        /// Declared or received length (at least `max + 1`).
        len: u64,
        /// The limit (the max frame length).
        max: usize,
    },
    /// The body is not a JSON envelope (syntax, types, bytes).
    #[error("request body is not a JSON envelope: {0}")]
    Json(#[from] serde_json::Error),
    /// The envelope has no command.
    #[error("the envelope has no command")]
    MissingCommand,
    /// Something other than POST.
    #[error("method {method} is not allowed: POST a JSON envelope to {path}")]
    Method {
        /// The method used.
        method: String,
        /// Where to POST.
        path: String,
    },
    /// A POST to another path.
    #[error("nothing is served at {path}: POST to {expected}")]
    NotFound {
        /// The path used.
        path: String,
        /// The REST path.
        expected: String,
    },
    /// The body could not be read (the peer went away, bad chunking).
    #[error("reading the request body: {0}")]
    Body(String),
}

impl RestError {
    /// The HTTP status this error is answered with.
    pub fn status(&self) -> u16 {
        match self {
            Self::TooLarge { .. } => 413,
            Self::Json(_) | Self::MissingCommand | Self::Body(_) => 400,
            Self::Method { .. } => 405,
            Self::NotFound { .. } => 404,
        }
    }
}

// ----- JSON codec (no IO) ------------------------------------------------

/// `null` reads as the default value.
fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de> + Default>(d: D) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct JsonEnvelope {
    #[serde(deserialize_with = "nullable")]
    command: String,
    #[serde(deserialize_with = "nullable")]
    priority: i32,
    #[serde(deserialize_with = "nullable")]
    seq: i32,
    #[serde(deserialize_with = "nullable")]
    id: String,
    #[serde(deserialize_with = "nullable")]
    rid: String,
    data: Option<JsonAny>,
    #[serde(deserialize_with = "nullable")]
    jwt: String,
    #[serde(deserialize_with = "nullable")]
    traceid: String,
    #[serde(deserialize_with = "nullable")]
    spanid: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct JsonAny {
    #[serde(deserialize_with = "nullable")]
    type_url: String,
    value: JsonBytes,
}

/// `Any.value` in any of the accepted forms (module table).
#[derive(Default)]
struct JsonBytes(Vec<u8>);

/// A JSON array of byte values.
struct ByteArray(Vec<u8>);

impl<'de> Deserialize<'de> for ByteArray {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Bytes;
        impl<'de> Visitor<'de> for Bytes {
            type Value = ByteArray;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of byte values 0..=255")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ByteArray, A::Error> {
                let mut out = Vec::new();
                while let Some(byte) = seq.next_element::<u8>()? {
                    out.push(byte);
                }
                Ok(ByteArray(out))
            }
        }
        d.deserialize_seq(Bytes)
    }
}

impl<'de> Deserialize<'de> for JsonBytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Value;
        impl<'de> Visitor<'de> for Value {
            type Value = JsonBytes;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"bytes: {"type":"Buffer","data":[...]}, a base64 string or an array"#)
            }
            fn visit_unit<E: de::Error>(self) -> Result<JsonBytes, E> {
                Ok(JsonBytes(Vec::new()))
            }
            fn visit_none<E: de::Error>(self) -> Result<JsonBytes, E> {
                Ok(JsonBytes(Vec::new()))
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<JsonBytes, E> {
                base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .map(JsonBytes)
                    .map_err(|e| E::custom(format_args!("value is not valid base64: {e}")))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<JsonBytes, A::Error> {
                let ByteArray(bytes) =
                    ByteArray::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
                Ok(JsonBytes(bytes))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<JsonBytes, A::Error> {
                let mut data = None;
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "type" => {
                            let kind = map.next_value::<String>()?;
                            if !kind.eq_ignore_ascii_case("buffer") {
                                return Err(de::Error::custom(format_args!(
                                    "value has type {kind:?}; expected \"Buffer\""
                                )));
                            }
                        }
                        "data" => data = Some(map.next_value::<ByteArray>()?.0),
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                data.map(JsonBytes)
                    .ok_or_else(|| de::Error::missing_field("data"))
            }
        }
        d.deserialize_any(Value)
    }
}

/// Bytes written the way Node serialises a `Buffer`.
struct NodeBuffer<'a>(&'a [u8]);

impl Serialize for NodeBuffer<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(2))?;
        map.serialize_entry("type", "Buffer")?;
        map.serialize_entry("data", self.0)?;
        map.end()
    }
}

#[derive(Serialize)]
struct JsonAnyOut<'a> {
    type_url: &'a str,
    value: NodeBuffer<'a>,
}

#[derive(Serialize)]
struct JsonEnvelopeOut<'a> {
    command: &'a str,
    priority: i32,
    seq: i32,
    id: &'a str,
    rid: &'a str,
    data: Option<JsonAnyOut<'a>>,
    jwt: &'a str,
    traceid: &'a str,
    spanid: &'a str,
}

/// Decodes a POST body into an envelope (forms in the module table).
///
/// # Errors
///
/// [`RestError::Json`] for bad JSON, wrong types or bad bytes;
/// [`RestError::MissingCommand`] when `command` is empty.
pub fn decode_json(body: &[u8]) -> Result<Envelope, RestError> {
    let json: JsonEnvelope = serde_json::from_slice(body)?;
    if json.command.is_empty() {
        return Err(RestError::MissingCommand);
    }
    Ok(Envelope {
        command: json.command,
        priority: json.priority,
        seq: json.seq,
        id: json.id,
        rid: json.rid,
        data: json.data.map(|any| Any {
            type_url: any.type_url,
            value: Bytes::from(any.value.0),
        }),
        jwt: json.jwt,
        traceid: json.traceid,
        spanid: json.spanid,
    })
}

/// Encodes an envelope as the JSON reply body, bytes in Node's Buffer form.
pub fn encode_json(envelope: &Envelope) -> Vec<u8> {
    let out = JsonEnvelopeOut {
        command: &envelope.command,
        priority: envelope.priority,
        seq: envelope.seq,
        id: &envelope.id,
        rid: &envelope.rid,
        data: envelope.data.as_ref().map(|any| JsonAnyOut {
            type_url: &any.type_url,
            value: NodeBuffer(&any.value),
        }),
        jwt: &envelope.jwt,
        traceid: &envelope.traceid,
        spanid: &envelope.spanid,
    };
    // Strings, integers and byte arrays always serialise.
    serde_json::to_vec(&out).unwrap_or_default()
}

/// Whether `command` needs a file stream, which REST cannot carry.
fn needs_stream(command: &str) -> bool {
    matches!(command, "upload" | "download")
        || crate::command::lookup(command).is_some_and(|spec| spec.kind == CommandKind::Stream)
}

// ----- one request as a Transport ---------------------------------------

/// One REST request as a [`Transport`]: delivers its envelope once (seq
/// reset to 0, so a fresh connection accepts it), keeps what the connection
/// sends back (at most [`MAX_EXCHANGE_ENVELOPES`]), then reports end of
/// stream.
///
/// A session driving it handles the request between the delivery and the
/// next [`Driver::drive`](super::Driver::drive), whose send half collects
/// the replies before its receive half reports the end.
#[derive(Debug)]
pub struct Exchange {
    request: Option<Envelope>,
    sent: Arc<Mutex<Vec<Envelope>>>,
}

/// The envelopes an [`Exchange`] collected; read after the session ended.
#[derive(Debug, Clone)]
pub struct ExchangeReplies(Arc<Mutex<Vec<Envelope>>>);

impl ExchangeReplies {
    /// Takes what was collected so far.
    pub fn take(&self) -> Vec<Envelope> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl Exchange {
    /// An exchange for `request`, and the handle its replies land in.
    pub fn new(mut request: Envelope) -> (Self, ExchangeReplies) {
        request.seq = 0;
        let sent = Arc::new(Mutex::new(Vec::new()));
        (
            Self {
                request: Some(request),
                sent: Arc::clone(&sent),
            },
            ExchangeReplies(sent),
        )
    }
}

impl Transport for Exchange {
    fn poll_recv(
        &mut self,
        _cx: &mut Context<'_>,
        conn: &mut Connection,
        now: Instant,
    ) -> Poll<Result<Recv, TransportError>> {
        match self.request.take() {
            Some(request) => {
                conn.handle_envelope(request, now)?;
                Poll::Ready(Ok(Recv::Data))
            }
            None => Poll::Ready(Ok(Recv::Eof)),
        }
    }

    fn poll_send(
        &mut self,
        _cx: &mut Context<'_>,
        conn: &mut Connection,
    ) -> Poll<Result<(), TransportError>> {
        let mut sent = self.sent.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(envelope) = conn.poll_envelope() {
            if sent.len() < MAX_EXCHANGE_ENVELOPES {
                sent.push(envelope);
            }
        }
        Poll::Ready(Ok(()))
    }

    fn poll_close(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), TransportError>> {
        Poll::Ready(Ok(()))
    }
}

// ----- HTTP/1.1 --------------------------------------------------------

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// An accepted TCP connection whose first request is a REST POST; serve it
/// with [`RestConnection::serve`].
#[derive(Debug)]
pub struct RestConnection {
    tcp: TcpStream,
    max_body: usize,
}

/// Whether the first bytes of a connection are an HTTP POST.
pub(super) fn is_post(head: &[u8]) -> bool {
    head.starts_with(b"POST ")
}

impl RestConnection {
    pub(super) fn new(tcp: TcpStream, config: &TransportConfig) -> Self {
        Self {
            tcp,
            max_body: config.max_frame_length(),
        }
    }

    /// Serves POSTs (HTTP/1.1 keep-alive) until the peer closes or
    /// `shutdown` resolves; each envelope goes to `handler`, whose answer
    /// is the reply. `noop` and streaming commands are answered here.
    ///
    /// # Errors
    ///
    /// The HTTP connection failed (not per-request errors: those are
    /// answered with their status).
    pub async fn serve<H, F>(
        self,
        handler: H,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), TransportError>
    where
        H: Fn(Envelope) -> F + Send + Sync + 'static,
        F: Future<Output = Envelope> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let max_body = self.max_body;
        let service = hyper::service::service_fn(move |request| {
            let handler = Arc::clone(&handler);
            async move { Ok::<_, Infallible>(respond(request, max_body, &*handler).await) }
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .serve_connection(TokioIo::new(self.tcp), service);
        let mut connection = std::pin::pin!(connection);
        let result = tokio::select! {
            result = connection.as_mut() => result,
            () = shutdown => {
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        };
        result.map_err(|e| TransportError::Io(std::io::Error::other(e)))
    }
}

type Response = hyper::Response<Full<Bytes>>;

fn text(status: StatusCode, message: &str) -> Response {
    let mut response = hyper::Response::new(Full::new(Bytes::from(format!("{message}\n"))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn json(envelope: &Envelope) -> Response {
    let mut response = hyper::Response::new(Full::new(Bytes::from(encode_json(envelope))));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn refuse(error: &RestError) -> Response {
    let status = StatusCode::from_u16(error.status()).unwrap_or(StatusCode::BAD_REQUEST);
    text(status, &error.to_string())
}

async fn respond<H, F>(request: hyper::Request<Incoming>, max_body: usize, handler: &H) -> Response
where
    H: Fn(Envelope) -> F,
    F: Future<Output = Envelope>,
{
    match read_envelope(request, max_body).await {
        Ok(envelope) => json(&answer(envelope, handler).await),
        Err(error) => refuse(&error),
    }
}

/// Checks method, path and size, reads the body and decodes it; the
/// bearer token becomes the envelope's jwt when it has none.
async fn read_envelope(
    request: hyper::Request<Incoming>,
    max_body: usize,
) -> Result<Envelope, RestError> {
    let path = request.uri().path();
    if path != DEFAULT_REST_PATH {
        return Err(RestError::NotFound {
            path: path.to_owned(),
            expected: DEFAULT_REST_PATH.to_owned(),
        });
    }
    if request.method() != Method::POST {
        return Err(RestError::Method {
            method: request.method().to_string(),
            path: DEFAULT_REST_PATH.to_owned(),
        });
    }
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let max = u64::try_from(max_body).unwrap_or(u64::MAX);
    if let Some(len) = declared.filter(|len| *len > max) {
        return Err(RestError::TooLarge { len, max: max_body });
    }
    let bearer = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let body = Limited::new(request.into_body(), max_body)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<LengthLimitError>().is_some() {
                RestError::TooLarge {
                    len: max.saturating_add(1),
                    max: max_body,
                }
            } else {
                RestError::Body(e.to_string())
            }
        })?
        .to_bytes();
    let mut envelope = decode_json(&body)?;
    if envelope.jwt.is_empty()
        && let Some(jwt) = bearer
    {
        envelope.jwt = jwt;
    }
    if envelope.id.is_empty() {
        envelope.id = format!("rest-{}", NEXT_ID.fetch_add(1, Ordering::Relaxed));
    }
    Ok(envelope)
}

/// The reply to one decoded envelope.
async fn answer<H, F>(envelope: Envelope, handler: &H) -> Envelope
where
    H: Fn(Envelope) -> F,
    F: Future<Output = Envelope>,
{
    if envelope.command == "noop" {
        return Envelope {
            command: "noop".to_owned(),
            rid: envelope.id,
            ..Envelope::default()
        };
    }
    if needs_stream(&envelope.command) {
        let message = format!(
            "{:?} needs a file stream, which REST cannot carry (one envelope per POST): \
             use socket://, pipe://, ws:// or grpc://",
            envelope.command
        );
        return error_reply(&envelope, message, 501);
    }
    handler(envelope).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ping_json(extra: &str) -> String {
        format!(r#"{{"command":"ping","id":"7"{extra}}}"#)
    }

    #[test]
    fn node_buffer_value_decodes() {
        let body = r#"{"command":"signin","id":"1","seq":4,"priority":2,
            "data":{"type_url":"type.googleapis.com/openiap.SigninRequest",
                    "value":{"type":"Buffer","data":[10,1,97]}}}"#;
        let envelope = decode_json(body.as_bytes()).unwrap();
        assert_eq!((envelope.seq, envelope.priority), (4, 2));
        let any = envelope.data.unwrap();
        assert_eq!(any.type_url, "type.googleapis.com/openiap.SigninRequest");
        assert_eq!(&any.value[..], &[10, 1, 97]);
    }

    #[test]
    fn base64_and_bare_array_values_decode() {
        for value in [r#""CgFh""#, "[10,1,97]"] {
            let body = ping_json(&format!(r#","data":{{"type_url":"","value":{value}}}"#));
            let envelope = decode_json(body.as_bytes()).unwrap();
            assert_eq!(&envelope.data.unwrap().value[..], &[10, 1, 97], "{value}");
        }
    }

    #[test]
    fn nulls_and_unknown_fields_are_defaults() {
        let body = ping_json(r#","jwt":null,"seq":null,"data":null,"hash":"x""#);
        let envelope = decode_json(body.as_bytes()).unwrap();
        assert_eq!(envelope.jwt, "");
        assert_eq!(envelope.seq, 0);
        assert!(envelope.data.is_none());
    }

    #[test]
    fn bad_bodies_are_typed_errors() {
        assert!(matches!(decode_json(b"{"), Err(RestError::Json(_))));
        assert!(matches!(decode_json(b"7"), Err(RestError::Json(_))));
        assert!(decode_json(b"[]").is_err());
        assert!(matches!(
            decode_json(br#"{"id":"1"}"#),
            Err(RestError::MissingCommand)
        ));
        for value in [
            r#"{"type":"Buffer","data":[256]}"#,
            r#"{"type":"String","data":[1]}"#,
            r#"{"type":"Buffer"}"#,
            r#""not base64!""#,
            "12",
        ] {
            let body = ping_json(&format!(r#","data":{{"type_url":"","value":{value}}}"#));
            let err = decode_json(body.as_bytes()).unwrap_err();
            assert!(matches!(err, RestError::Json(_)), "{value}: {err}");
            assert_eq!(err.status(), 400);
        }
        let seq = ping_json(r#","seq":4294967296"#);
        assert!(matches!(
            decode_json(seq.as_bytes()),
            Err(RestError::Json(_))
        ));
    }

    #[test]
    fn reply_uses_node_buffer_form() {
        let envelope = Envelope {
            command: "pong".into(),
            rid: "7".into(),
            data: Some(Any {
                type_url: "t".into(),
                value: Bytes::from_static(&[1, 2]),
            }),
            ..Envelope::default()
        };
        let json: serde_json::Value = serde_json::from_slice(&encode_json(&envelope)).unwrap();
        assert_eq!(json["data"]["value"]["type"], "Buffer");
        assert_eq!(json["data"]["value"]["data"], serde_json::json!([1, 2]));
        assert_eq!(json["rid"], "7");
    }

    #[test]
    fn streaming_commands_are_recognised() {
        for command in ["upload", "download", "beginstream", "stream", "endstream"] {
            assert!(needs_stream(command), "{command}");
        }
        assert!(!needs_stream("signin"));
        assert!(!needs_stream("query"));
    }

    #[test]
    fn exchange_delivers_once_with_seq_zero_then_ends() {
        let now = Instant::now();
        let mut conn = Connection::new(
            crate::connection::Role::Server,
            crate::connection::ConnectionConfig::default(),
            now,
        );
        let request = Envelope {
            command: "ping".into(),
            id: "p".into(),
            seq: 41,
            ..Envelope::default()
        };
        let (mut exchange, replies) = Exchange::new(request);
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(matches!(
            exchange.poll_recv(&mut cx, &mut conn, now),
            Poll::Ready(Ok(Recv::Data))
        ));
        assert!(matches!(
            exchange.poll_send(&mut cx, &mut conn),
            Poll::Ready(Ok(()))
        ));
        assert!(matches!(
            exchange.poll_recv(&mut cx, &mut conn, now),
            Poll::Ready(Ok(Recv::Eof))
        ));
        let sent = replies.take();
        assert_eq!(sent.len(), 1);
        assert_eq!(
            (sent[0].command.as_str(), sent[0].rid.as_str()),
            ("pong", "p")
        );
    }

    #[test]
    fn post_is_recognised_by_its_first_bytes() {
        assert!(is_post(b"POST /api/v2 HTTP/1.1\r\n"));
        assert!(!is_post(b"GET /ws/v2 HTTP/1.1\r\n"));
        assert!(!is_post(b"POS"));
    }

    proptest! {
        #[test]
        fn decode_never_panics(body in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_json(&body);
        }

        #[test]
        fn encode_decode_round_trips(
            command in "[a-z]{1,12}",
            id in ".{0,12}",
            seq in any::<i32>(),
            priority in any::<i32>(),
            value in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let envelope = Envelope {
                command,
                id,
                seq,
                priority,
                data: Some(Any { type_url: "type.googleapis.com/openiap.X".into(), value: value.into() }),
                ..Envelope::default()
            };
            prop_assert_eq!(decode_json(&encode_json(&envelope)).unwrap(), envelope);
        }
    }
}
