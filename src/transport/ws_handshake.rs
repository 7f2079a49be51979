//! The WebSocket opening handshake (RFC 6455 section 4): an HTTP/1.1
//! upgrade, read and written by hand on the raw socket so that bytes the
//! peer sends right behind its head are kept for the frame decoder.

use std::io;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::{Buf, BytesMut};
use sha1::{Digest as _, Sha1};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use super::TransportError;

/// Longest request or response head accepted.
pub const MAX_HEAD: usize = 16 * 1024;

/// Most header lines parsed in a head.
const MAX_HEADERS: usize = 48;

/// Appended to the client's key before hashing (RFC 6455 section 1.3).
const ACCEPT_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Why an opening handshake failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The peer closed before its head was complete.
    #[error("connection closed during the WebSocket handshake ({received} bytes of the head)")]
    Closed {
        /// Bytes of the head received.
        received: usize,
    },
    /// The head did not end within [`MAX_HEAD`] bytes.
    #[error("WebSocket handshake head exceeds {MAX_HEAD} bytes")]
    HeadTooLarge,
    /// Not parseable as HTTP/1.1.
    #[error("WebSocket handshake is not valid HTTP/1.1: {0}")]
    Http(#[from] httparse::Error),
    /// A request this server refuses (answered with `status`).
    #[error("WebSocket upgrade refused with HTTP {status}: {reason}")]
    Refused {
        /// The status we answered.
        status: u16,
        /// Why.
        reason: String,
    },
    /// The server answered something other than `101 Switching Protocols`.
    #[error("server answered the WebSocket upgrade with HTTP {status} instead of 101")]
    Status {
        /// The status it sent.
        status: u16,
    },
    /// A 101 answer that does not accept our key or is not a WebSocket.
    #[error("server's WebSocket upgrade answer is invalid: {0}")]
    BadAnswer(&'static str),
}

/// `Sec-WebSocket-Accept` for `key`.
pub fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(ACCEPT_GUID.as_bytes());
    BASE64.encode(sha.finalize())
}

/// Reads until the end of an HTTP head; returns the buffer (head and
/// whatever followed it) and the head's length.
async fn read_head<S: AsyncRead + Unpin>(io: &mut S) -> Result<(BytesMut, usize), TransportError> {
    let mut buf = BytesMut::with_capacity(1024);
    let mut searched = 0;
    loop {
        if let Some(at) = buf[searched..].windows(4).position(|w| w == b"\r\n\r\n") {
            return Ok((buf, searched + at + 4));
        }
        searched = buf.len().saturating_sub(3);
        if buf.len() >= MAX_HEAD {
            return Err(HandshakeError::HeadTooLarge.into());
        }
        buf.reserve(1024);
        if io.read_buf(&mut buf).await? == 0 {
            return Err(HandshakeError::Closed {
                received: buf.len(),
            }
            .into());
        }
    }
}

fn header<'h>(headers: &'h [httparse::Header<'_>], name: &str) -> Option<&'h [u8]> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

/// Whether the comma-separated header value holds `token` (any case).
fn has_token(value: Option<&[u8]>, token: &str) -> bool {
    value.is_some_and(|v| {
        v.split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// Server side: reads the upgrade request, answers 101 if it asks for a
/// WebSocket on `path` (404 for another path; 400, 405, 426 or 431 for a
/// bad request) and returns the bytes that followed the request.
///
/// # Errors
///
/// IO errors, and [`HandshakeError`] for a request refused (after the
/// answer was written).
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    path: &str,
) -> Result<BytesMut, TransportError> {
    let (mut buf, head_len) = match read_head(io).await {
        Err(TransportError::Handshake(HandshakeError::HeadTooLarge)) => {
            let reason = format!("the request head exceeds {MAX_HEAD} bytes");
            answer_refusal(io, 431, &reason, None).await?;
            return Err(HandshakeError::HeadTooLarge.into());
        }
        read => read?,
    };
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let parsed = match request.parse(&buf[..head_len]) {
        Ok(httparse::Status::Complete(_)) => Ok(()),
        Ok(httparse::Status::Partial) => Err(httparse::Error::Token),
        Err(e) => Err(e),
    };
    let verdict = match parsed {
        Err(e) => {
            let status = if e == httparse::Error::TooManyHeaders {
                431
            } else {
                400
            };
            Err((status, format!("{e}"), None))
        }
        Ok(()) => check_request(&request, path),
    };
    match verdict {
        Ok(accept) => {
            let answer = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
            );
            io.write_all(answer.as_bytes()).await?;
            buf.advance(head_len);
            Ok(buf)
        }
        Err((status, reason, extra)) => {
            answer_refusal(io, status, &reason, extra).await?;
            Err(HandshakeError::Refused { status, reason }.into())
        }
    }
}

/// Writes a plain-text refusal with `status` and closes our side.
async fn answer_refusal<S: AsyncWrite + Unpin>(
    io: &mut S,
    status: u16,
    reason: &str,
    extra_headers: Option<&str>,
) -> io::Result<()> {
    let body = format!("{reason}\n");
    let answer = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n{}\r\n{body}",
        reason_phrase(status),
        body.len(),
        extra_headers.unwrap_or_default(),
    );
    io.write_all(answer.as_bytes()).await?;
    let _ = io.shutdown().await;
    Ok(())
}

type Refusal = (u16, String, Option<&'static str>);

fn check_request(request: &httparse::Request<'_, '_>, path: &str) -> Result<String, Refusal> {
    let bad = |reason: &str| (400, reason.to_owned(), None);
    if request.method != Some("GET") {
        return Err((405, "a WebSocket upgrade is a GET".to_owned(), None));
    }
    let target = request.path.unwrap_or_default();
    let asked = target.split('?').next().unwrap_or_default();
    if asked != path {
        return Err((404, format!("the WebSocket endpoint is {path}"), None));
    }
    let headers = &*request.headers;
    if !has_token(header(headers, "upgrade"), "websocket") {
        return Err(bad("Upgrade: websocket is missing"));
    }
    if !has_token(header(headers, "connection"), "upgrade") {
        return Err(bad("Connection: Upgrade is missing"));
    }
    if header(headers, "sec-websocket-version").map(<[u8]>::trim_ascii) != Some(b"13") {
        return Err((
            426,
            "only WebSocket version 13 is supported".to_owned(),
            Some("Sec-WebSocket-Version: 13\r\n"),
        ));
    }
    let key = header(headers, "sec-websocket-key").map(<[u8]>::trim_ascii);
    match key {
        Some(key) if BASE64.decode(key).is_ok_and(|k| k.len() == 16) => Ok(accept_key(key)),
        _ => Err(bad(
            "Sec-WebSocket-Key is missing or not 16 bytes in base64",
        )),
    }
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        _ => "Error",
    }
}

/// Client side: asks `authority` for a WebSocket on `path` and returns the
/// bytes that followed the server's answer.
///
/// # Errors
///
/// IO errors, or [`HandshakeError`] for an answer other than an accepting
/// 101.
pub async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    authority: &str,
    path: &str,
) -> Result<BytesMut, TransportError> {
    let mut nonce = [0u8; 16];
    getrandom::fill(&mut nonce).map_err(|e| io::Error::other(e.to_string()))?;
    let key = BASE64.encode(nonce);
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    io.write_all(request.as_bytes()).await?;
    let (mut buf, head_len) = read_head(io).await?;
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    match response
        .parse(&buf[..head_len])
        .map_err(HandshakeError::from)?
    {
        httparse::Status::Complete(_) => {}
        httparse::Status::Partial => {
            return Err(HandshakeError::from(httparse::Error::Status).into());
        }
    }
    let status = response.code.unwrap_or_default();
    if status != 101 {
        return Err(HandshakeError::Status { status }.into());
    }
    let headers = &*response.headers;
    if !has_token(header(headers, "upgrade"), "websocket") {
        return Err(HandshakeError::BadAnswer("no Upgrade: websocket").into());
    }
    if !has_token(header(headers, "connection"), "upgrade") {
        return Err(HandshakeError::BadAnswer("no Connection: Upgrade").into());
    }
    let expected = accept_key(key.as_bytes());
    if header(headers, "sec-websocket-accept").map(<[u8]>::trim_ascii) != Some(expected.as_bytes())
    {
        return Err(
            HandshakeError::BadAnswer("Sec-WebSocket-Accept does not match our key").into(),
        );
    }
    if header(headers, "sec-websocket-extensions").is_some() {
        return Err(HandshakeError::BadAnswer("an extension we did not offer").into());
    }
    buf.advance(head_len);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_rfc_6455() {
        // RFC 6455 section 1.3's example.
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    async fn answer_to(request: &str, path: &str) -> (Result<BytesMut, TransportError>, String) {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        client.write_all(request.as_bytes()).await.unwrap();
        client.shutdown().await.unwrap();
        let result = accept(&mut server, path).await;
        drop(server);
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.unwrap();
        (result, answer)
    }

    const GOOD: &str = "GET /ws/v2 HTTP/1.1\r\nHost: x\r\nupgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n";

    #[tokio::test]
    async fn server_accepts_and_keeps_the_bytes_behind_the_head() {
        let (result, answer) = answer_to(&format!("{GOOD}early"), "/ws/v2").await;
        assert_eq!(&result.unwrap()[..], b"early");
        assert!(answer.starts_with("HTTP/1.1 101 "), "{answer}");
        assert!(answer.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        // No extension is accepted.
        assert!(
            !answer.to_ascii_lowercase().contains("extensions"),
            "{answer}"
        );
    }

    #[tokio::test]
    async fn server_refuses_bad_requests_with_a_status() {
        let cases = [
            (GOOD.replace("/ws/v2", "/elsewhere"), 404),
            (GOOD.replace("GET", "PUT"), 405),
            (GOOD.replace("Version: 13", "Version: 8"), 426),
            (GOOD.replace("upgrade: WebSocket", "upgrade: h2c"), 400),
            (GOOD.replace("keep-alive, Upgrade", "keep-alive"), 400),
            (GOOD.replace("dGhlIHNhbXBsZSBub25jZQ==", "short"), 400),
            ("GET / HTTP/1.1\r\n\0\r\n\r\n".to_owned(), 400),
            (
                format!("GET /ws/v2 HTTP/1.1\r\n{}\r\n", "a: b\r\n".repeat(60)),
                431,
            ),
        ];
        for (request, status) in cases {
            let (result, answer) = answer_to(&request, "/ws/v2").await;
            assert!(
                answer.starts_with(&format!("HTTP/1.1 {status} ")),
                "{request:?} -> {answer}"
            );
            match result {
                Err(TransportError::Handshake(HandshakeError::Refused { status: s, .. })) => {
                    assert_eq!(s, status)
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn server_refuses_an_endless_head_and_a_closed_one() {
        let (result, answer) = answer_to(&"x".repeat(MAX_HEAD + 10), "/ws/v2").await;
        assert!(matches!(
            result,
            Err(TransportError::Handshake(HandshakeError::HeadTooLarge))
        ));
        assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
        let (result, _) = answer_to("GET /ws/v2 HTTP/1.1\r\n", "/ws/v2").await;
        assert!(matches!(
            result,
            Err(TransportError::Handshake(HandshakeError::Closed {
                received: 21
            }))
        ));
    }

    #[tokio::test]
    async fn client_and_server_agree_and_bytes_behind_heads_survive() {
        let (mut a, mut b) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(async move {
            let rest = accept(&mut b, "/p").await.unwrap();
            b.write_all(b"early").await.unwrap();
            rest
        });
        let rest = connect(&mut a, "h:1", "/p").await.unwrap();
        assert!(server.await.unwrap().is_empty());
        let mut early = rest.to_vec();
        while early.len() < 5 {
            let mut more = [0; 5];
            let n = a.read(&mut more).await.unwrap();
            early.extend_from_slice(&more[..n]);
        }
        assert_eq!(early, b"early");
    }

    #[tokio::test]
    async fn client_refuses_a_wrong_accept_and_a_non_101() {
        for (answer, expect_status) in [
            (
                "HTTP/1.1 101 OK\r\nUpgrade: websocket\r\nConnection: upgrade\r\nSec-WebSocket-Accept: nope\r\n\r\n",
                None,
            ),
            (
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
                Some(404),
            ),
        ] {
            let (mut a, mut b) = tokio::io::duplex(64 * 1024);
            let server = tokio::spawn(async move {
                let _ = read_head(&mut b).await.unwrap();
                b.write_all(answer.as_bytes()).await.unwrap();
                b
            });
            let result = connect(&mut a, "h:1", "/p").await;
            drop(server.await.unwrap());
            match (result, expect_status) {
                (Err(TransportError::Handshake(HandshakeError::Status { status })), Some(s)) => {
                    assert_eq!(status, s)
                }
                (Err(TransportError::Handshake(HandshakeError::BadAnswer(_))), None) => {}
                (other, _) => panic!("{other:?}"),
            }
        }
    }
}
