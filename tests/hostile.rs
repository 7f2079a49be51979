//! Hostile input against the reference server (issue 6, item 2).
//!
//! Every case starts an in-process [`Server`] on `socket://127.0.0.1:0` with
//! its own data directory and signs in a well-behaved [`Client`] that does a
//! round trip (ping, a small upload, its download, bytes compared) before the
//! hostile peer starts, one **while** it runs (the two futures are polled
//! together), and one after it. The hostile peer writes raw bytes on a tokio
//! `TcpStream`. At the end the data directory must list exactly the files
//! that were legitimately uploaded, each complete, and an empty `tmp/`.
//!
//! What a case asserts about the hostile connection is one of:
//!
//! | outcome      | asserted                                                        |
//! |--------------|-----------------------------------------------------------------|
//! | fatal        | after the answers listed, exactly one `error` envelope (empty rid) with the given code and message, then EOF from the server |
//! | answered     | an `error` reply (rid = the offending request or part) with the given code and message, then the connection still works: a raw `ping` gets its `pong` as the very next envelope |
//! | disconnect   | the server closes (EOF) without sending anything                 |
//!
//! Each case prints `OBSERVED | case | what the peer saw` (run with
//! `--nocapture` to collect them).

#![cfg(all(feature = "server", feature = "client", feature = "transport-tcp"))]

mod support;

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::{Bytes, BytesMut};
use openiap_wire::client::Client;
use openiap_wire::command::{CommandKind, Validation, commands};
use openiap_wire::envelope::{Envelope, decode_envelope, pack, unpack};
use openiap_wire::frame::{DEFAULT_MAX_FRAME_LENGTH, FrameDecoder, encode_frame};
use openiap_wire::proto::google::protobuf::Any;
use openiap_wire::proto::{
    BeginStream, DownloadRequest, EndStream, ErrorResponse, PingRequest, SigninRequest, Stream,
    UploadRequest, UploadResponse,
};
use openiap_wire::server::auth::{Auth, Identity};
use openiap_wire::server::{Server, ServerConfig};
use openiap_wire::stream::sha256_hex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{RwLock, oneshot};

const PASSWORD: &str = "hostile-suite-password";
/// The server's token secret, so the suite can mint expired tokens.
const SECRET: &[u8] = b"hostile-suite-token-secret";
/// Longest wait for any answer; a case that needs longer has hung.
const WAIT: Duration = Duration::from_secs(10);

static NEXT: AtomicU32 = AtomicU32::new(0);
/// Cases share the process; the one that counts file descriptors runs alone.
static EXCLUSIVE: RwLock<()> = RwLock::const_new(());

// ----- the server and its data directory --------------------------------

struct Harness {
    addr: String,
    url: String,
    data: PathBuf,
    client_dir: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Harness {
    async fn start(configure: impl FnOnce(&mut ServerConfig)) -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let root = std::env::temp_dir().join(format!("openiap-hostile-{}-{n}", std::process::id()));
        let data = root.join("data");
        let client_dir = root.join("client");
        std::fs::create_dir_all(&client_dir).unwrap();
        let mut config = ServerConfig::new(&data);
        config.dev_password = Some(PASSWORD.to_owned());
        config.jwt_secret = Some(SECRET.to_vec());
        config.listen = vec!["socket://127.0.0.1:0".parse().unwrap()];
        configure(&mut config);
        let server = Server::bind(config).await.unwrap();
        let endpoint = server.endpoints()[0].clone();
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        Self {
            addr: endpoint.authority().unwrap(),
            url: endpoint.to_string(),
            data,
            client_dir,
            stop: Some(stop),
            task: Some(task),
        }
    }

    async fn good(&self) -> Good {
        let mut client = Client::connect(&self.url).await.unwrap();
        client.signin("dev", PASSWORD).await.unwrap();
        Good {
            client,
            dir: self.client_dir.clone(),
            round: 0,
            stored: Vec::new(),
        }
    }

    /// The data directory must list exactly `files/<id>/{content,meta.json}`
    /// for each expected file and an empty `tmp/` (waits up to 5 s for
    /// sessions that are still cleaning up), and each content must match.
    async fn assert_data_dir(&self, expected: &[(String, Vec<u8>)]) {
        let mut want = vec!["files".to_owned(), "tmp".to_owned()];
        for (id, _) in expected {
            want.push(format!("files/{id}"));
            want.push(format!("files/{id}/content"));
            want.push(format!("files/{id}/meta.json"));
        }
        want.sort();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let found = listing(&self.data);
            if found == want {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "data directory lists {found:#?}, expected {want:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for (id, content) in expected {
            let stored = std::fs::read(self.data.join("files").join(id).join("content")).unwrap();
            assert!(stored == *content, "file {id} differs from what was sent");
        }
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(root) = self.data.parent() {
            let _ = std::fs::remove_dir_all(root);
        }
    }
}

/// Every path under `root`, relative, sorted (directories included).
fn listing(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let relative = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            out.push(relative);
            if path.is_dir() {
                walk(root, &path, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

/// Deterministic bytes (xorshift32), so every run sends the same input.
fn noise(len: usize, seed: u32) -> Vec<u8> {
    support::xorshift32_bytes(len, seed | 1)
}

// ----- the well-behaved client -------------------------------------------

struct Good {
    client: Client,
    dir: PathBuf,
    round: u32,
    stored: Vec<(String, Vec<u8>)>,
}

impl Good {
    /// Ping, upload a small file, download it, compare.
    async fn round_trip(&mut self) {
        self.round += 1;
        let round = self.round;
        let data = noise(4000 + round as usize, 0x9e37_79b9 ^ round);
        let path = self.dir.join(format!("good-{round}.bin"));
        let out = self.dir.join(format!("good-{round}.out"));
        std::fs::write(&path, &data).unwrap();
        let work = async {
            self.client.ping().await.expect("good client: ping");
            let uploaded = self
                .client
                .upload(&path)
                .await
                .expect("good client: upload");
            assert_eq!(uploaded.bytes as usize, data.len());
            let downloaded = self
                .client
                .download(&uploaded.id, &out)
                .await
                .expect("good client: download");
            assert!(downloaded.summary.checksum_verified);
            assert!(
                std::fs::read(&out).unwrap() == data,
                "good client: bytes differ"
            );
            uploaded.id
        };
        let id = tokio::time::timeout(WAIT, work)
            .await
            .expect("good client: round trip within 10 s");
        self.stored.push((id, data));
    }
}

// ----- the hostile peer ----------------------------------------------------

/// How the server ended a hostile connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Close {
    /// An orderly close (FIN): read returned 0.
    Eof,
    /// Connection reset.
    Reset,
}

impl fmt::Display for Close {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Eof => "close (EOF)",
            Self::Reset => "close (reset)",
        })
    }
}

struct Raw {
    tcp: TcpStream,
    decoder: FrameDecoder,
    seq: i32,
    ids: u32,
}

impl Raw {
    async fn connect(addr: &str) -> Self {
        Self {
            tcp: TcpStream::connect(addr).await.unwrap(),
            decoder: FrameDecoder::default(),
            seq: 0,
            ids: 0,
        }
    }

    async fn write(&mut self, bytes: &[u8]) {
        self.tcp.write_all(bytes).await.expect("hostile write");
    }

    fn frame(envelope: &Envelope) -> BytesMut {
        let mut wire = BytesMut::new();
        encode_frame(envelope, usize::MAX, &mut wire).unwrap();
        wire
    }

    /// Stamps `envelope` with the next seq (and an id when it has none)
    /// and returns its frame and id without sending.
    fn stamp(&mut self, mut envelope: Envelope) -> (BytesMut, String) {
        if envelope.id.is_empty() {
            self.ids += 1;
            envelope.id = format!("h{}", self.ids);
        }
        envelope.seq = self.seq;
        self.seq += 1;
        (Self::frame(&envelope), envelope.id)
    }

    /// Sends `envelope` with the next seq; returns its id.
    async fn send(&mut self, envelope: Envelope) -> String {
        let (wire, id) = self.stamp(envelope);
        self.write(&wire).await;
        id
    }

    /// The next envelope from the server, `Err` with how it closed.
    async fn next(&mut self) -> Result<Envelope, Close> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if let Some(frame) = self.decoder.decode().expect("server frames are valid") {
                return Ok(decode_envelope(frame).expect("server envelopes decode"));
            }
            let read = tokio::time::timeout(WAIT, self.tcp.read(&mut buf))
                .await
                .expect("the server answers or closes within 10 s");
            match read {
                Ok(0) => return Err(Close::Eof),
                Ok(n) => self.decoder.push(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    return Err(Close::Reset);
                }
                Err(e) => panic!("hostile read: {e}"),
            }
        }
    }

    async fn recv(&mut self) -> Envelope {
        match self.next().await {
            Ok(envelope) => envelope,
            Err(close) => panic!("expected an envelope, got {close}"),
        }
    }

    /// Everything the server sends until it closes.
    async fn until_close(&mut self) -> (Vec<Envelope>, Close) {
        let mut seen = Vec::new();
        loop {
            match self.next().await {
                Ok(envelope) => seen.push(envelope),
                Err(close) => return (seen, close),
            }
        }
    }

    /// Exactly one `error` (rid empty), then EOF.
    async fn fatal(&mut self) -> ErrorResponse {
        let (seen, close) = self.until_close().await;
        assert_eq!(seen.len(), 1, "expected one error then a close: {seen:?}");
        assert!(seen[0].rid.is_empty(), "{:?}", seen[0]);
        assert_eq!(close, Close::Eof);
        error_of(&seen[0])
    }

    /// The connection-fatal error notice, after asserting its code and
    /// message (see [`Raw::fatal`]).
    async fn fatal_is(&mut self, code: i32, message: impl AsRef<str>) -> ErrorResponse {
        expect_error(self.fatal().await, code, message)
    }

    /// The `error` answering `rid`, after asserting its code and message.
    async fn error_is(&mut self, rid: &str, code: i32, message: impl AsRef<str>) -> ErrorResponse {
        expect_error(self.error_for(rid).await, code, message)
    }

    /// Sends a download of an id no file has, with `jwt` on the envelope
    /// (none if empty); returns the request's id.
    async fn download_probe(&mut self, jwt: &str) -> String {
        let mut download = pack(&DownloadRequest {
            id: "0123456789abcdef01234567".into(),
            ..DownloadRequest::default()
        });
        download.jwt = jwt.to_owned();
        self.send(download).await
    }

    /// The connection is signed out: a download is refused with 401.
    async fn assert_signed_out(&mut self) {
        let id = self.download_probe("").await;
        assert_eq!(self.error_for(&id).await.code, 401);
    }

    /// The next envelope is an `error` answering `rid`.
    async fn error_for(&mut self, rid: &str) -> ErrorResponse {
        let envelope = self.recv().await;
        assert_eq!(envelope.rid, rid, "{envelope:?}");
        error_of(&envelope)
    }

    /// A `ping` gets its `pong` as the very next envelope: the connection is
    /// open and nothing else was queued for it.
    async fn still_open(&mut self) {
        let id = self.send(pack(&PingRequest {})).await;
        let pong = self.recv().await;
        assert_eq!(
            (pong.command.as_str(), pong.rid.as_str()),
            ("pong", id.as_str()),
            "{pong:?}"
        );
    }

    async fn signin(&mut self) {
        let id = self
            .send(pack(&SigninRequest {
                username: "dev".into(),
                password: PASSWORD.into(),
                ..SigninRequest::default()
            }))
            .await;
        let reply = self.recv().await;
        assert_eq!(
            (reply.command.as_str(), reply.rid.as_str()),
            ("signinreply", id.as_str())
        );
    }

    /// `upload` for `filename`; returns the request id.
    async fn upload_request(&mut self, filename: &str) -> String {
        self.send(pack(&UploadRequest {
            filename: filename.into(),
            ..UploadRequest::default()
        }))
        .await
    }

    async fn begin(&mut self, rid: &str, checksum: &str) {
        self.send(part(
            rid,
            pack(&BeginStream {
                checksum: checksum.into(),
                stat: None,
            }),
        ))
        .await;
    }

    async fn chunk(&mut self, rid: &str, data: &[u8]) {
        self.send(part(
            rid,
            pack(&Stream {
                data: Bytes::copy_from_slice(data),
            }),
        ))
        .await;
    }

    async fn end(&mut self, rid: &str) {
        self.send(part(rid, pack(&EndStream {}))).await;
    }

    /// A whole upload: request, begin (with `checksum`), one chunk, end.
    async fn upload(&mut self, filename: &str, data: &[u8], checksum: &str) -> String {
        let id = self.upload_request(filename).await;
        self.begin(&id, checksum).await;
        self.chunk(&id, data).await;
        self.end(&id).await;
        id
    }
}

fn part(rid: &str, envelope: Envelope) -> Envelope {
    Envelope {
        rid: rid.to_owned(),
        ..envelope
    }
}

fn error_of(envelope: &Envelope) -> ErrorResponse {
    assert_eq!(envelope.command, "error", "{envelope:?}");
    unpack::<ErrorResponse>(envelope, Validation::Strict).expect("a typed ErrorResponse")
}

fn ping_at(seq: i32) -> BytesMut {
    Raw::frame(&Envelope {
        command: "ping".into(),
        id: format!("p{seq}"),
        seq,
        ..Envelope::default()
    })
}

/// `body` behind its 4-byte little-endian length prefix.
fn framed(body: &[u8]) -> Vec<u8> {
    let mut bytes = u32::try_from(body.len()).unwrap().to_le_bytes().to_vec();
    bytes.extend_from_slice(body);
    bytes
}

/// `error` after asserting its code and message.
fn expect_error(error: ErrorResponse, code: i32, message: impl AsRef<str>) -> ErrorResponse {
    assert_eq!(error.code, code, "{error:?}");
    assert_eq!(error.message, message.as_ref());
    error
}

/// `error CODE "MESSAGE"`, with the message cut for the table.
fn show(error: &ErrorResponse) -> String {
    let message: String = error.message.chars().take(160).collect();
    let cut = if message.len() < error.message.len() {
        "…"
    } else {
        ""
    };
    format!("error {} {message:?}{cut}", error.code)
}

// ----- the case runner -----------------------------------------------------

/// What the hostile side hands back: what it saw, and the files it stored
/// legitimately (they must be in the data directory, complete).
struct Observed {
    what: String,
    stored: Vec<(String, Vec<u8>)>,
}

impl Observed {
    fn saw(what: impl Into<String>) -> Self {
        Self {
            what: what.into(),
            stored: Vec::new(),
        }
    }

    /// A fatal error notice, then the server's close.
    fn fatal(error: &ErrorResponse) -> Self {
        Self::saw(format!("{}, then {}", show(error), Close::Eof))
    }
}

/// What the hostile side gets to know about the server.
struct Ctx {
    addr: String,
    data: PathBuf,
}

impl Ctx {
    /// Bytes in `tmp/`. The good client's concurrent upload (about 4 KB)
    /// may be there; a hostile upload's leftover would be far larger.
    fn tmp_bytes(&self) -> u64 {
        listing(&self.data.join("tmp"))
            .iter()
            .filter_map(|p| std::fs::metadata(self.data.join("tmp").join(p)).ok())
            .filter(|m| m.is_file())
            .map(|m| m.len())
            .sum()
    }

    /// `tmp/` holds no more than the good client's upload in flight: no
    /// hostile upload's temporary file was left behind.
    fn assert_no_hostile_leftover(&self) {
        let bytes = self.tmp_bytes();
        assert!(bytes < GOOD_TMP_MAX, "{bytes} bytes in tmp/");
    }

    /// A raw connection to the server, signed in.
    async fn signed_in(&self) -> Raw {
        let mut raw = Raw::connect(&self.addr).await;
        raw.signin().await;
        raw
    }
}

/// Most bytes the good client's upload in flight holds in `tmp/`.
const GOOD_TMP_MAX: u64 = 64 * 1024;

/// A case against a server with the default configuration.
async fn case<F, Fut>(name: &str, hostile: F)
where
    F: FnOnce(Ctx) -> Fut,
    Fut: Future<Output = Observed>,
{
    case_with(name, |_| {}, hostile).await;
}

/// A case against a server configured by `configure`.
async fn case_with<F, Fut>(name: &str, configure: impl FnOnce(&mut ServerConfig), hostile: F)
where
    F: FnOnce(Ctx) -> Fut,
    Fut: Future<Output = Observed>,
{
    let _shared = EXCLUSIVE.read().await;
    run_case(name, configure, hostile).await;
}

async fn run_case<F, Fut>(name: &str, configure: impl FnOnce(&mut ServerConfig), hostile: F)
where
    F: FnOnce(Ctx) -> Fut,
    Fut: Future<Output = Observed>,
{
    let server = Harness::start(configure).await;
    let mut good = server.good().await;
    good.round_trip().await;
    let ctx = Ctx {
        addr: server.addr.clone(),
        data: server.data.clone(),
    };
    // The good client's second round trip runs while the hostile peer does.
    let (observed, ()) = tokio::join!(hostile(ctx), good.round_trip());
    good.round_trip().await;
    let mut expected = good.stored.clone();
    expected.extend(observed.stored);
    server.assert_data_dir(&expected).await;
    println!("OBSERVED | {name} | {}", observed.what);
    server.stop().await;
}

// ----- framing -------------------------------------------------------------

#[tokio::test]
async fn length_prefix_of_4_gib() {
    case("length prefix of 4 GiB", |ctx| async move {
        let mut raw = Raw::connect(&ctx.addr).await;
        // 0xFFFFFFFF, the largest prefix (4 GiB - 1), and a few body bytes.
        raw.write(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3]).await;
        let error = raw.fatal_is(413,
            format!(
                "frame of 4294967295 bytes exceeds the limit of {DEFAULT_MAX_FRAME_LENGTH} bytes"
            )).await;
        Observed::fatal(&error)
    })
    .await;
}

#[tokio::test]
async fn length_just_above_the_configured_limit() {
    const LIMIT: usize = 1024 * 1024;
    case_with(
        "length just above the configured limit",
        |config| {
            config.connection.frame_mut().set_max_frame_length(LIMIT);
        },
        |ctx| async move {
            let mut raw = Raw::connect(&ctx.addr).await;
            // A ping of exactly the limit is taken...
            let mut ping = Envelope {
                command: "ping".into(),
                id: "at-limit".into(),
                ..Envelope::default()
            };
            let mut pad = LIMIT;
            loop {
                ping.traceid = "x".repeat(pad);
                match prost::Message::encoded_len(&ping).cmp(&LIMIT) {
                    std::cmp::Ordering::Equal => break,
                    std::cmp::Ordering::Greater => pad -= 1,
                    std::cmp::Ordering::Less => pad += 1,
                }
            }
            raw.send(ping).await;
            let pong = raw.recv().await;
            assert_eq!(
                (pong.command.as_str(), pong.rid.as_str()),
                ("pong", "at-limit")
            );
            // ...a prefix one byte above it is not.
            let over = u32::try_from(LIMIT + 1).unwrap();
            raw.write(&over.to_le_bytes()).await;
            let error = raw
                .fatal_is(
                    413,
                    "frame of 1048577 bytes exceeds the limit of 1048576 bytes",
                )
                .await;
            Observed::saw(format!(
                "frame of exactly 1048576 bytes: pong; prefix 1048577: {}, then {}",
                show(&error),
                Close::Eof
            ))
        },
    )
    .await;
}

#[tokio::test]
async fn truncated_frame_then_close() {
    case("truncated frame then close", |ctx| async move {
        let mut raw = Raw::connect(&ctx.addr).await;
        let mut bytes = 100u32.to_le_bytes().to_vec();
        bytes.extend_from_slice(&[0x0a; 50]);
        raw.write(&bytes).await;
        raw.tcp.shutdown().await.unwrap();
        let (seen, close) = raw.until_close().await;
        assert!(seen.is_empty(), "{seen:?}");
        assert_eq!(close, Close::Eof);
        Observed::saw(format!(
            "nothing sent, {close} (the peer left mid-frame: 54 of 104 bytes)"
        ))
    })
    .await;
}

#[tokio::test]
async fn garbage_protobuf() {
    case("garbage protobuf", |ctx| async move {
        let mut raw = Raw::connect(&ctx.addr).await;
        // Field 1 with wire type 7, which does not exist.
        raw.write(&framed(&[0x0f, 0xff, 0xff, 0xff])).await;
        let error = raw
            .fatal_is(400, "frame body is not a valid openiap.Envelope")
            .await;
        Observed::fatal(&error)
    })
    .await;
}

#[tokio::test]
async fn zero_length_frame() {
    case("zero-length frame", |ctx| async move {
        let mut raw = Raw::connect(&ctx.addr).await;
        // An empty frame, then a ping that must not be answered.
        let mut bytes = vec![0, 0, 0, 0];
        bytes.extend_from_slice(&ping_at(0));
        raw.write(&bytes).await;
        let error = raw
            .fatal_is(400, "zero-length frame rejected by the configured policy")
            .await;
        Observed::fatal(&error)
    })
    .await;
}

#[tokio::test]
async fn valid_frame_of_random_bytes() {
    case("valid frame of random bytes", |ctx| async move {
        let mut raw = Raw::connect(&ctx.addr).await;
        raw.write(&framed(&noise(1024, 7))).await;
        let error = raw
            .fatal_is(400, "frame body is not a valid openiap.Envelope")
            .await;
        Observed::fatal(&error)
    })
    .await;
}

#[tokio::test]
async fn sixteen_mib_of_random_bytes() {
    case("16 MiB of random bytes", |ctx| async move {
        let raw = Raw::connect(&ctx.addr).await;
        let bytes = noise(16 * 1024 * 1024, 16);
        let declared = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        // The seed's first four bytes declare a frame under the limit,
        // so the server reads that much garbage before it can judge it.
        assert_eq!(declared, 4_596_240);
        let (mut reader, mut writer) = raw.tcp.into_split();
        // The server stops reading at the prefix, so this write fails
        // part way: that is the point.
        let flood = tokio::spawn(async move {
            let _ = writer.write_all(&bytes).await;
        });
        let mut answer = Vec::new();
        let read = tokio::time::timeout(WAIT, reader.read_to_end(&mut answer))
            .await
            .expect("closed within 10 s");
        let close = match read {
            Ok(_) => Close::Eof,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Close::Reset,
            Err(e) => panic!("{e}"),
        };
        flood.await.unwrap();
        let mut decoder = FrameDecoder::default();
        decoder.push(&answer);
        let frame = decoder.decode().unwrap().expect("one whole frame");
        assert_eq!(decoder.buffered(), 0, "exactly one frame");
        let notice = decode_envelope(frame).unwrap();
        let error = expect_error(
            error_of(&notice),
            400,
            "frame body is not a valid openiap.Envelope",
        );
        assert_eq!(close, Close::Eof);
        Observed::saw(format!(
            "prefix declares {declared} bytes (under the limit); after them: {}, then {close}",
            show(&error)
        ))
    })
    .await;
}

// ----- sequence numbers ------------------------------------------------------

#[tokio::test]
async fn duplicate_seq() {
    case("duplicate seq", |ctx| async move {
        let mut raw = Raw::connect(&ctx.addr).await;
        let mut bytes = ping_at(0);
        bytes.extend_from_slice(&Raw::frame(&Envelope {
            command: "ping".into(),
            id: "again".into(),
            seq: 0,
            ..Envelope::default()
        }));
        raw.write(&bytes).await;
        let pong = raw.recv().await;
        assert_eq!((pong.command.as_str(), pong.rid.as_str()), ("pong", "p0"));
        let error = raw.fatal_is(400, "duplicate seq 0: received already").await;
        Observed::saw(format!(
            "pong for seq 0, then {}, then {}",
            show(&error),
            Close::Eof
        ))
    })
    .await;
}

#[tokio::test]
async fn stale_seq() {
    case_with(
        "stale seq",
        |config| {
            config.connection.reorder_mut().set_window(4).unwrap();
        },
        |ctx| async move {
            let mut raw = Raw::connect(&ctx.addr).await;
            let mut bytes = BytesMut::new();
            for seq in 0..6 {
                bytes.extend_from_slice(&ping_at(seq));
            }
            // Seq 1 is older than the window of 4 below the expected 6.
            bytes.extend_from_slice(&Raw::frame(&Envelope {
                command: "ping".into(),
                id: "old".into(),
                seq: 1,
                ..Envelope::default()
            }));
            raw.write(&bytes).await;
            for seq in 0..6 {
                let pong = raw.recv().await;
                assert_eq!(pong.rid, format!("p{seq}"));
            }
            let error = raw.fatal_is(400, "stale seq 1: expected 6 or later").await;
            Observed::saw(format!(
                "6 pongs, then {}, then {} (window 4)",
                show(&error),
                Close::Eof
            ))
        },
    )
    .await;
}

#[tokio::test]
async fn seq_gap_held_past_the_timeout() {
    const GAP: Duration = Duration::from_millis(500);
    case_with(
        "seq gap held past the timeout",
        |config| {
            config
                .connection
                .reorder_mut()
                .set_gap_timeout(Some(GAP))
                .unwrap();
        },
        |ctx| async move {
            let mut raw = Raw::connect(&ctx.addr).await;
            let started = Instant::now();
            raw.write(&ping_at(1)).await;
            let error = raw.fatal().await;
            let elapsed = started.elapsed();
            assert_eq!(error.code, 400);
            assert!(
                error.message.starts_with("seq 0 still missing after 50"),
                "{}",
                error.message
            );
            assert!(
                error.message.ends_with("ms, newer envelopes waiting"),
                "{}",
                error.message
            );
            assert!(elapsed >= GAP, "{elapsed:?}");
            assert!(elapsed < GAP * 4, "{elapsed:?}");
            Observed::saw(format!(
                "{}, then {} after {elapsed:.2?} (gap timeout 500 ms)",
                show(&error),
                Close::Eof
            ))
        },
    )
    .await;
}

#[tokio::test]
async fn more_out_of_order_envelopes_than_the_window() {
    case(
        "more out-of-order envelopes than the window",
        |ctx| async move {
            let mut raw = Raw::connect(&ctx.addr).await;
            let window = openiap_wire::reorder::DEFAULT_WINDOW as i32;
            // Seq 0 never comes; 1..=window+1 wait behind it.
            let mut bytes = BytesMut::new();
            for seq in 1..=window + 1 {
                bytes.extend_from_slice(&ping_at(seq));
            }
            raw.write(&bytes).await;
            let error = raw
                .fatal_is(
                    400,
                    format!("seq {window} is too far ahead of expected seq 0, window {window}"),
                )
                .await;
            Observed::saw(format!("no pong, {}, then {}", show(&error), Close::Eof))
        },
    )
    .await;
}

// ----- streams -----------------------------------------------------------------

#[tokio::test]
async fn stream_chunk_with_no_beginstream() {
    case(
        "stream chunk with no BeginStream",
        |ctx| async move {
            let mut raw = ctx.signed_in().await;
            // In an upload: the chunk comes before the begin.
            let id = raw.upload_request("early.bin").await;
            raw.chunk(&id, b"too early").await;
            raw.end(&id).await;
            let in_upload = raw.error_is(&id, 400, format!("stream `{id}` got a part before its beginstream")).await;
            raw.still_open().await;
            // For no upload at all.
            raw.chunk("nosuchupload", b"stray").await;
            let stray = raw.error_is("nosuchupload", 400, "stream part for rid `nosuchupload`, which has no stream").await;
            raw.still_open().await;
            // A beginstream that belongs to no upload.
            raw.begin("notanupload", "").await;
            raw.chunk("notanupload", b"dropped").await;
            raw.end("notanupload").await;
            let begin = raw.error_is("notanupload", 400, "beginstream for rid \"notanupload\", which is not an upload").await;
            raw.still_open().await;
            Observed::saw(format!(
                "in an upload: {}; for no upload: {}; a beginstream for no upload: {}; connection stays open",
                show(&in_upload),
                show(&stray),
                show(&begin)
            ))
        },
    )
    .await;
}

#[tokio::test]
async fn second_beginstream() {
    case("second BeginStream", |ctx| async move {
        let mut raw = ctx.signed_in().await;
        let id = raw.upload_request("twice.bin").await;
        raw.begin(&id, "").await;
        // Large enough that a leftover in tmp/ would show.
        raw.chunk(&id, &noise(200_000, 2)).await;
        raw.begin(&id, "").await;
        raw.chunk(&id, b"two").await;
        raw.end(&id).await;
        let error = raw
            .error_is(&id, 400, format!("stream `{id}` got a second beginstream"))
            .await;
        raw.still_open().await;
        ctx.assert_no_hostile_leftover();
        Observed::saw(format!(
            "{} (later parts dropped unanswered), connection stays open",
            show(&error)
        ))
    })
    .await;
}

#[tokio::test]
async fn chunk_after_endstream() {
    case("chunk after EndStream", |ctx| async move {
        let mut raw = ctx.signed_in().await;
        let data = noise(3000, 3);
        let id = raw.upload("done.bin", &data, &sha256_hex(&data)).await;
        let reply = raw.recv().await;
        assert_eq!(
            (reply.command.as_str(), reply.rid.as_str()),
            ("uploadreply", id.as_str())
        );
        let stored = unpack::<UploadResponse>(&reply, Validation::Strict).unwrap();
        assert_eq!(stored.bytes, 3000);
        raw.chunk(&id, b"late").await;
        let error = raw
            .error_is(
                &id,
                400,
                format!("stream `{id}` got a part after its endstream"),
            )
            .await;
        raw.still_open().await;
        Observed {
            what: format!(
                "uploadreply (3000 bytes stored, unchanged), late chunk: {}, connection stays open",
                show(&error)
            ),
            stored: vec![(stored.id, data)],
        }
    })
    .await;
}

#[tokio::test]
async fn checksum_mismatch() {
    case(
        "checksum mismatch",
        |ctx| async move {
            let mut raw = ctx.signed_in().await;
            let data = noise(300_000, 5);
            let announced = sha256_hex(b"something else");
            let id = raw.upload("bad-sum.bin", &data, &announced).await;
            let error = raw.error_is(&id, 422, format!(
                    "stream `{id}` checksum mismatch: beginstream announced {announced}, data hashes to {}",
                    sha256_hex(&data)
                )).await;
            // The temporary file was removed before the answer went out.
            ctx.assert_no_hostile_leftover();
            raw.still_open().await;
            Observed::saw(format!("{}, connection stays open", show(&error)))
        },
    )
    .await;
}

#[tokio::test]
async fn upload_larger_than_the_configured_limit() {
    const LIMIT: u64 = 1024 * 1024;
    const CHUNK: usize = 256 * 1024;
    case_with(
        "upload larger than the configured limit",
        |config| config.max_upload_bytes = Some(LIMIT),
        |ctx| async move {
            let mut raw = ctx.signed_in().await;
            let id = raw.upload_request("huge.bin").await;
            raw.begin(&id, "").await;
            let chunk = noise(CHUNK, 11);
            // Four chunks reach the limit exactly; the fifth passes it, and
            // the sixth and the end follow regardless.
            for _ in 0..6 {
                raw.chunk(&id, &chunk).await;
            }
            raw.end(&id).await;
            let error = raw
                .error_is(
                    &id,
                    413,
                    format!("stream `{id}` would hold 1310720 bytes, the limit is {LIMIT}"),
                )
                .await;
            ctx.assert_no_hostile_leftover();
            raw.still_open().await;
            Observed::saw(format!(
                "{} at the 5th 256 KiB chunk, temp file already gone, connection stays open",
                show(&error)
            ))
        },
    )
    .await;
}

#[tokio::test]
async fn hostile_filenames() {
    case(
        "filenames: `..`, absolute paths, NUL, 10,000 characters",
        |ctx| async move {
            let mut raw = ctx.signed_in().await;
            let data = b"filename test".to_vec();
            let sum = sha256_hex(&data);
            let long = "n".repeat(10_000);
            let mut seen = Vec::new();
            let mut stored = Vec::new();
            // Refused outright.
            for (name, reason) in [
                ("..", "not a file name"),
                ("../..", "not a file name"),
                ("/", "empty base name"),
                ("a\0b.txt", "control characters or NUL"),
                (long.as_str(), "longer than 255 bytes"),
            ] {
                let id = raw.upload(name, &data, &sum).await;
                let error = raw.error_for(&id).await;
                assert_eq!(error.code, 400, "{name:?}");
                let shown: String = name.chars().take(300).collect();
                assert_eq!(
                    error.message,
                    format!("filename {shown:?} is invalid: {reason}")
                );
                let label: String = name.chars().take(12).collect();
                seen.push(format!(
                    "{label:?} ({} chars): {}",
                    name.len(),
                    show(&error)
                ));
            }
            // Cut to the base name: the name is metadata and never a path.
            for (name, base) in [
                ("../../../etc/cron.d/evil", "evil"),
                ("/etc/passwd", "passwd"),
                ("C:\\Windows\\win.ini", "win.ini"),
            ] {
                let id = raw.upload(name, &data, &sum).await;
                let reply = raw.recv().await;
                assert_eq!(
                    (reply.command.as_str(), reply.rid.as_str()),
                    ("uploadreply", id.as_str()),
                    "{name:?}"
                );
                let response = unpack::<UploadResponse>(&reply, Validation::Strict).unwrap();
                assert_eq!(response.filename, base);
                seen.push(format!("{name:?}: uploadreply filename {base:?}"));
                stored.push((response.id, data.clone()));
            }
            raw.still_open().await;
            Observed {
                what: format!(
                    "{}; connection stays open, nothing written outside files/<id>/",
                    seen.join("; ")
                ),
                stored,
            }
        },
    )
    .await;
}

// ----- requests ------------------------------------------------------------------

#[tokio::test]
async fn download_of_unknown_id() {
    case("download of an unknown id", |ctx| async move {
        let mut raw = ctx.signed_in().await;
        let mut seen = Vec::new();
        for (id, filename) in [
            ("0123456789abcdef01234567", ""),
            ("../../jwt.secret", ""),
            ("", "never-uploaded.bin"),
        ] {
            let request = raw
                .send(pack(&DownloadRequest {
                    id: id.into(),
                    filename: filename.into(),
                    ..DownloadRequest::default()
                }))
                .await;
            let error = raw.error_for(&request).await;
            assert_eq!(error.code, 404);
            let asked = if id.is_empty() { filename } else { id };
            assert_eq!(error.message, format!("no file with id {asked:?}"));
            seen.push(show(&error));
        }
        raw.still_open().await;
        Observed::saw(format!("{}; connection stays open", seen.join("; ")))
    })
    .await;
}

#[tokio::test]
async fn every_request_command_before_signin() {
    case(
        "every request command before signin",
        |ctx| async move {
            let mut raw = Raw::connect(&ctx.addr).await;
            let requests: Vec<_> = commands()
                .iter()
                .filter(|spec| spec.kind == CommandKind::Request)
                .collect();
            assert_eq!(requests.len(), 49);
            let mut sent = Vec::new();
            for spec in &requests {
                let envelope = Envelope {
                    command: spec.command.to_owned(),
                    data: Some(Any {
                        type_url: format!("type.googleapis.com/openiap.{}", spec.type_name),
                        value: Bytes::new(),
                    }),
                    ..Envelope::default()
                };
                sent.push((spec.command, raw.send(envelope).await));
            }
            // One answer each; the core answers ping at once, the session
            // the rest, so the order may differ from the requests'.
            let mut answers = std::collections::HashMap::new();
            for _ in 0..sent.len() {
                let answer = raw.recv().await;
                let rid = answer.rid.clone();
                assert!(answers.insert(rid, answer).is_none(), "two answers for one id");
            }
            let mut refused = 0;
            for (command, id) in sent {
                let answer = answers.remove(&id).expect("an answer for every request");
                if command == "ping" {
                    // The keepalive reveals nothing and needs no signin.
                    assert_eq!(answer.command, "pong");
                    continue;
                }
                let error = error_of(&answer);
                assert_eq!(error.code, 401, "{command}: {}", error.message);
                let expected = if command == "signin" {
                    "invalid username or password for \"\"".to_owned()
                } else {
                    format!("sign in first: {command:?} needs a signed-in connection")
                };
                assert_eq!(error.message, expected);
                refused += 1;
            }
            assert_eq!(refused, 48);
            raw.still_open().await;
            Observed::saw(format!(
                "{refused} of {} request commands: error 401 (\"sign in first: <command> needs a signed-in connection\"; signin with no credentials: \"invalid username or password for \\\"\\\"\"); ping: pong; connection stays open",
                requests.len()
            ))
        },
    )
    .await;
}

#[tokio::test]
async fn wrong_password() {
    case("wrong password", |ctx| async move {
        let mut raw = Raw::connect(&ctx.addr).await;
        let id = raw
            .send(pack(&SigninRequest {
                username: "dev".into(),
                password: "not-the-password".into(),
                ..SigninRequest::default()
            }))
            .await;
        let error = raw
            .error_is(&id, 401, "invalid username or password for \"dev\"")
            .await;
        // Still signed out.
        raw.assert_signed_out().await;
        raw.still_open().await;
        Observed::saw(format!(
            "{}; a download after it: error 401 (still signed out); connection stays open",
            show(&error)
        ))
    })
    .await;
}

/// A token with `alg: none` and no signature, claiming the user `dev`.
fn alg_none_token() -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let claims = URL_SAFE_NO_PAD.encode(br#"{"sub":"dev","username":"dev","exp":99999999999}"#);
    format!("{header}.{claims}.")
}

#[tokio::test]
async fn forged_expired_and_alg_none_jwts() {
    case(
        "forged, expired and alg:none JWTs (signin and Envelope.jwt)",
        |ctx| async move {
            let dev = Identity {
                username: "dev".into(),
            };
            let now = SystemTime::now();
            let forged = Auth::new(b"another secret".to_vec(), Duration::from_secs(3600))
                .issue(&dev, now);
            let expired = Auth::new(SECRET.to_vec(), Duration::from_secs(60))
                .issue(&dev, now - Duration::from_secs(7200));
            let valid = Auth::new(SECRET.to_vec(), Duration::from_secs(3600)).issue(&dev, now);
            let tokens = [
                ("forged", forged, "token signature is invalid"),
                ("expired", expired, "token expired at "),
                (
                    "alg none",
                    alg_none_token(),
                    "token algorithm \"none\" is not accepted, only HS256",
                ),
            ];
            let mut raw = Raw::connect(&ctx.addr).await;
            let mut seen = Vec::new();
            for (label, token, message) in &tokens {
                let signin = raw
                    .send(pack(&SigninRequest {
                        jwt: token.clone(),
                        ..SigninRequest::default()
                    }))
                    .await;
                let as_signin = raw.error_for(&signin).await;
                let download = raw.download_probe(token).await;
                let as_envelope = raw.error_for(&download).await;
                for error in [&as_signin, &as_envelope] {
                    assert_eq!(error.code, 401, "{label}");
                    assert!(error.message.starts_with(message), "{label}: {}", error.message);
                }
                seen.push(format!(
                    "{label}: signin {}, Envelope.jwt {}",
                    show(&as_signin),
                    show(&as_envelope)
                ));
            }
            // Control: the same download with a valid token reaches the
            // store (the file is what is missing), and the connection is
            // still signed out without one.
            let id = raw.download_probe(&valid).await;
            assert_eq!(raw.error_for(&id).await.code, 404);
            let id = raw.download_probe("").await;
            let unsigned = raw.error_for(&id).await;
            assert_eq!(unsigned.code, 401);
            assert!(unsigned.message.starts_with("sign in first"));
            raw.still_open().await;
            Observed::saw(format!(
                "{}; control: valid Envelope.jwt gets 404, no jwt gets 401 sign in first; connection stays open",
                seen.join("; ")
            ))
        },
    )
    .await;
}

#[tokio::test]
async fn type_url_naming_another_type_in_strict_mode() {
    case_with(
        "type_url naming another type (strict)",
        |config| {
            config.connection.set_validation(Validation::Strict);
        },
        |ctx| async move {
            let mut raw = Raw::connect(&ctx.addr).await;
            let mut signin = pack(&SigninRequest {
                username: "dev".into(),
                password: PASSWORD.into(),
                ..SigninRequest::default()
            });
            if let Some(any) = signin.data.as_mut() {
                any.type_url = "type.googleapis.com/openiap.PingRequest".into();
            }
            let id = raw.send(signin).await;
            let error = raw.error_is(&id, 400, "command \"signin\" carries type_url \"type.googleapis.com/openiap.PingRequest\", expected openiap.SigninRequest").await;
            // Not signed in by it.
            raw.assert_signed_out().await;
            raw.still_open().await;
            Observed::saw(format!(
                "{}; not signed in by it; connection stays open (the good client works in strict mode)",
                show(&error)
            ))
        },
    )
    .await;
}

// ----- connections -------------------------------------------------------------

/// Open file descriptors of this process (server and clients alike).
fn open_fds() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    let mut fds: Vec<String> = entries
        .flatten()
        .map(|e| {
            let target = std::fs::read_link(e.path()).unwrap_or_default();
            format!(
                "{} -> {}",
                e.file_name().to_string_lossy(),
                target.display()
            )
        })
        .collect();
    fds.sort();
    fds
}

#[tokio::test]
async fn thousand_connections_opened_and_dropped_without_a_word() {
    // Alone, so the descriptor count is this case's.
    let _alone = EXCLUSIVE.write().await;
    run_case(
        "1,000 connections opened and dropped without a word",
        |_| {},
        |ctx| async move {
            let before = open_fds();
            let started = Instant::now();
            for _ in 0..10 {
                let mut batch = Vec::new();
                for _ in 0..100 {
                    batch.push(TcpStream::connect(&ctx.addr));
                }
                let mut open = Vec::new();
                for connect in batch {
                    open.push(connect.await.unwrap());
                }
                drop(open);
            }
            let elapsed = started.elapsed();
            // Every session ends: no descriptor opened since `before` is
            // left (the good client's round trip may close some of those).
            let deadline = Instant::now() + Duration::from_secs(5);
            let leaked = || {
                let after = open_fds();
                let extra: Vec<String> =
                    after.iter().filter(|fd| !before.contains(fd)).cloned().collect();
                (after.len(), extra)
            };
            let (mut after, mut extra) = leaked();
            while !extra.is_empty() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
                (after, extra) = leaked();
            }
            assert!(extra.is_empty(), "descriptors left: {extra:#?}");
            let before = before.len();
            let mut raw = Raw::connect(&ctx.addr).await;
            raw.still_open().await;
            Observed::saw(format!(
                "1,000 accepted and closed in {elapsed:.2?} (batches of 100), descriptors {before} before, {after} after; a new connection pings fine"
            ))
        },
    )
    .await;
}

#[tokio::test]
async fn slowloris_one_byte_per_second() {
    const FRAME_TIMEOUT: Duration = Duration::from_millis(2500);
    case_with(
        "slowloris: one byte per second",
        |config| {
            config.connection.set_frame_timeout(Some(FRAME_TIMEOUT));
        },
        |ctx| async move {
            let raw = Raw::connect(&ctx.addr).await;
            let (mut reader, mut writer) = raw.tcp.into_split();
            // A 100-byte frame, one byte a second: its prefix, then its body.
            let mut frame = 100u32.to_le_bytes().to_vec();
            frame.extend_from_slice(&[0x0a; 100]);
            let started = Instant::now();
            let drip = tokio::spawn(async move {
                let mut sent = 0;
                for byte in frame {
                    if writer.write_all(&[byte]).await.is_err() {
                        break;
                    }
                    sent += 1;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                sent
            });
            let mut answer = Vec::new();
            let read = tokio::time::timeout(WAIT, reader.read_to_end(&mut answer))
                .await
                .expect("cut off within 10 s");
            let elapsed = started.elapsed();
            assert!(read.is_ok(), "{read:?}");
            drip.abort();
            let mut decoder = FrameDecoder::default();
            decoder.push(&answer);
            let notice = decode_envelope(decoder.decode().unwrap().expect("one frame")).unwrap();
            assert_eq!(decoder.buffered(), 0, "exactly one frame");
            let error = error_of(&notice);
            assert_eq!(error.code, 408);
            // Bytes went out at 0, 1 and 2 s; the deadline is 2.5 s after
            // the first, whatever came after it.
            assert_eq!(
                error.message,
                "frame still incomplete 2.5s after its first byte (3 bytes received)"
            );
            assert!(elapsed >= FRAME_TIMEOUT, "{elapsed:?}");
            assert!(elapsed < FRAME_TIMEOUT * 2, "{elapsed:?}");
            Observed::saw(format!(
                "{}, then {} after {elapsed:.2?} (frame timeout 2.5 s; server default 30 s)",
                show(&error),
                Close::Eof
            ))
        },
    )
    .await;
}
