//! Our client against our server over every transport (socket, pipe, ws,
//! grpc), on loopback with ephemeral ports: signin, pings, checksummed
//! upload and download, errors, and a client that dies in the middle of an
//! upload; gRPC limits; and REST POSTs (hand-written HTTP/1.1) beside ws.

#![cfg(all(
    feature = "server",
    feature = "client",
    feature = "transport-tcp",
    feature = "transport-unix",
    feature = "transport-ws",
    feature = "transport-grpc",
    feature = "transport-rest"
))]

mod support;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use openiap_wire::client::{Client, ClientError};
use openiap_wire::connection::{Connection, ConnectionConfig, Event, Role};
use openiap_wire::envelope::Envelope;
use openiap_wire::proto::{SigninRequest, UploadRequest};
use openiap_wire::server::{Server, ServerConfig};
use openiap_wire::stream::sha256;
use openiap_wire::transport::{Driver, Endpoint, Status, TransportConfig, connect};
use tokio::sync::oneshot;

const PASSWORD: &str = "test-password";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A server on loopback with its own data directory, stopped on drop.
struct TestServer {
    endpoints: Vec<Endpoint>,
    data: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    async fn start_with(configure: impl FnOnce(&mut ServerConfig)) -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{}-{n}", std::process::id());
        let data = std::env::temp_dir().join(format!("openiap-transports-{tag}"));
        let mut config = ServerConfig::new(&data);
        config.dev_password = Some(PASSWORD.to_owned());
        config.listen = vec![
            "socket://127.0.0.1:0".parse().unwrap(),
            Endpoint::pipe(&format!("openiap-wire-test-{tag}")).unwrap(),
            "ws://127.0.0.1:0/ws/v2".parse().unwrap(),
            "grpc://127.0.0.1:0".parse().unwrap(),
        ];
        configure(&mut config);
        let server = Server::bind(config).await.unwrap();
        let endpoints = server.endpoints();
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        Self {
            endpoints,
            data,
            stop: Some(stop),
            task: Some(task),
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

    fn count(&self, sub: &str) -> usize {
        std::fs::read_dir(self.data.join(sub))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

/// Deterministic test content (xorshift32), so no two files look alike.
fn content(len: usize, seed: u32) -> Vec<u8> {
    support::xorshift32_bytes(len, seed | 1)
}

fn write_temp(server: &TestServer, name: &str, data: &[u8]) -> PathBuf {
    let dir = server.data.join("client");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, data).unwrap();
    path
}

async fn signed_in(endpoint: &Endpoint) -> Client {
    let mut client = Client::connect(&endpoint.to_string()).await.unwrap();
    let response = client.signin("dev", PASSWORD).await.unwrap();
    assert!(!response.jwt.is_empty());
    assert_eq!(response.user.unwrap().username, "dev");
    client
}

#[tokio::test]
async fn signin_pings_upload_and_download_over_every_transport() {
    let server = TestServer::start().await;
    let transports: Vec<_> = server.endpoints.iter().map(Endpoint::transport).collect();
    assert_eq!(transports, ["socket", "pipe", "ws", "grpc"]);
    for (i, endpoint) in server.endpoints.clone().iter().enumerate() {
        let mut client = signed_in(endpoint).await;
        for _ in 0..5 {
            client.ping().await.unwrap();
        }
        // Over 8 MiB, so a ws transfer needs several messages.
        let data = content(9 * 1024 * 1024 + 17, i as u32 + 1);
        let path = write_temp(&server, &format!("up-{i}.bin"), &data);
        let uploaded = client.upload(&path).await.unwrap();
        assert_eq!(uploaded.filename, format!("up-{i}.bin"));
        assert_eq!(uploaded.bytes as usize, data.len());
        assert_eq!(uploaded.id.len(), 24);

        let out = path.with_file_name(format!("down-{i}.bin"));
        let downloaded = client.download(&uploaded.id, &out).await.unwrap();
        assert!(downloaded.summary.checksum_verified, "{endpoint}");
        assert_eq!(downloaded.response.filename, uploaded.filename);
        assert_eq!(std::fs::read(&out).unwrap(), data, "{endpoint}");
        client.close().await.unwrap();
    }
    assert_eq!(server.count("files"), 4);
    server.stop().await;
}

#[tokio::test]
async fn unknown_command_gets_an_error_reply() {
    let server = TestServer::start().await;
    for endpoint in server.endpoints.clone() {
        let mut client = signed_in(&endpoint).await;
        let envelope = Envelope {
            command: "nosuchcommand".into(),
            ..Envelope::default()
        };
        match client.call(envelope).await {
            Err(ClientError::Server { message, code, .. }) => {
                assert_eq!(code, 404, "{endpoint}");
                assert!(message.contains("nosuchcommand"), "{message}");
            }
            other => panic!("{endpoint}: {other:?}"),
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn commands_before_signin_are_refused() {
    let server = TestServer::start().await;
    let endpoint = &server.endpoints[0];
    let mut client = Client::connect(&endpoint.to_string()).await.unwrap();
    // ping needs no signin
    client.ping().await.unwrap();
    let path = write_temp(&server, "early.bin", b"early");
    match client.upload(&path).await {
        Err(ClientError::Server { code, .. }) => assert_eq!(code, 401),
        other => panic!("{other:?}"),
    }
    let out = path.with_file_name("early-out.bin");
    match client.download("0123456789abcdef01234567", &out).await {
        Err(ClientError::Server { code, .. }) => assert_eq!(code, 401),
        other => panic!("{other:?}"),
    }
    assert!(!out.exists());
    assert_eq!(server.count("files"), 0);
    server.stop().await;
}

#[tokio::test]
async fn wrong_password_is_refused_and_jwt_signin_works() {
    let server = TestServer::start().await;
    let url = server.endpoints[0].to_string();
    let mut client = Client::connect(&url).await.unwrap();
    assert!(matches!(
        client.signin("dev", "wrong").await,
        Err(ClientError::Server { code: 401, .. })
    ));
    let jwt = client.signin("dev", PASSWORD).await.unwrap().jwt;
    let mut other = Client::connect(&url).await.unwrap();
    other.signin_jwt(&jwt).await.unwrap();
    assert!(matches!(
        other.signin_jwt("a.b.c").await,
        Err(ClientError::Server { code: 401, .. })
    ));
    server.stop().await;
}

#[tokio::test]
async fn validateonly_signin_leaves_the_connection_signed_out() {
    let server = TestServer::start().await;
    let mut client = Client::connect(&server.endpoints[0].to_string())
        .await
        .unwrap();
    let request = SigninRequest {
        username: "dev".into(),
        password: PASSWORD.into(),
        validateonly: true,
        ..SigninRequest::default()
    };
    client.request(&request).await.unwrap();
    let path = write_temp(&server, "v.bin", b"v");
    assert!(matches!(
        client.upload(&path).await,
        Err(ClientError::Server { code: 401, .. })
    ));
    server.stop().await;
}

#[tokio::test]
async fn download_of_unknown_id_leaves_no_output() {
    let server = TestServer::start().await;
    let mut client = signed_in(&server.endpoints[2]).await;
    let out = server.data.join("nothing.bin");
    match client.download("0123456789abcdef01234567", &out).await {
        Err(ClientError::Server { code, .. }) => assert_eq!(code, 404),
        other => panic!("{other:?}"),
    }
    assert!(!out.exists());
    let leftovers = std::fs::read_dir(&server.data)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
        .count();
    assert_eq!(leftovers, 0);
    server.stop().await;
}

/// Polls `done` until it holds, failing after a generous deadline.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn client_killed_mid_upload_leaves_no_file() {
    let server = TestServer::start().await;
    for endpoint in server.endpoints.clone() {
        let io = connect(&endpoint, &TransportConfig::default())
            .await
            .unwrap();
        let mut driver = Driver::new(io);
        let now = Instant::now();
        let mut conn = Connection::new(Role::Client, ConnectionConfig::default(), now);
        let signin = SigninRequest {
            username: "dev".into(),
            password: PASSWORD.into(),
            ..SigninRequest::default()
        };
        let signin_id = conn.request(&signin, now).unwrap();
        let upload = UploadRequest {
            filename: "partial.bin".into(),
            ..UploadRequest::default()
        };
        let upload_id = conn.request(&upload, now).unwrap();
        let mut sender = conn.stream_sender(&upload_id).unwrap();
        let whole = Bytes::from(content(4 * 1024 * 1024, 7));
        conn.send(sender.begin(Some(sha256(&whole)), None).unwrap(), now)
            .unwrap();
        // Half of the chunks, then a ping to know the server has them.
        let half = whole.slice(..whole.len() / 2);
        let chunks: Vec<_> = sender.chunks(half).unwrap().collect();
        for chunk in chunks {
            conn.send(chunk, now).unwrap();
        }
        let ping_id = conn
            .request(&openiap_wire::proto::PingRequest {}, now)
            .unwrap();
        let mut signed_in = false;
        let mut ponged = false;
        while !(signed_in && ponged) {
            assert_eq!(driver.drive(&mut conn).await.unwrap(), Status::Progress);
            while let Some(event) = conn.poll_event() {
                if let Event::Reply { request_id, .. } = event {
                    signed_in |= request_id == signin_id;
                    ponged |= request_id == ping_id;
                }
            }
        }
        assert_eq!(server.count("tmp"), 1, "{endpoint}: upload in progress");
        // Kill the client: drop the socket without endstream.
        drop(driver);
        eventually("temp file removed", || server.count("tmp") == 0).await;
        assert_eq!(server.count("files"), 0, "{endpoint}: no file published");
    }
    server.stop().await;
}

#[tokio::test]
async fn pipe_listener_replaces_a_stale_socket_and_removes_its_own() {
    let name = format!("openiap-wire-stale-{}", std::process::id());
    let endpoint = Endpoint::pipe(&name).unwrap();
    let path = endpoint.pipe_path().unwrap();
    // A socket file nobody listens on, as a crashed server leaves it.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let listener = openiap_wire::transport::Listener::bind(&endpoint, TransportConfig::default())
        .await
        .unwrap();
    assert!(
        openiap_wire::transport::Listener::bind(&endpoint, TransportConfig::default())
            .await
            .is_err(),
        "a live socket must not be taken over"
    );
    drop(listener);
    assert!(!Path::new(&path).exists());
}

#[tokio::test]
async fn per_message_jwt_is_checked() {
    let server = TestServer::start().await;
    let url = server.endpoints[0].to_string();
    let jwt = signed_in(&server.endpoints[0])
        .await
        .jwt()
        .unwrap()
        .to_owned();
    // A connection that never signed in, asking with a message token.
    let mut client = Client::connect(&url).await.unwrap();
    let mut envelope = openiap_wire::envelope::pack(&openiap_wire::proto::DownloadRequest {
        id: "0123456789abcdef01234567".into(),
        ..Default::default()
    });
    envelope.jwt = jwt;
    match client.call(envelope.clone()).await {
        // The token is accepted: the file is what is missing.
        Err(ClientError::Server { code, .. }) => assert_eq!(code, 404),
        other => panic!("{other:?}"),
    }
    envelope.jwt = "not.a.token".into();
    match client.call(envelope).await {
        Err(ClientError::Server { code, .. }) => assert_eq!(code, 401),
        other => panic!("{other:?}"),
    }
    server.stop().await;
}

#[tokio::test]
async fn shutdown_closes_connected_clients_and_the_pipe() {
    let server = TestServer::start().await;
    let pipe = server.endpoints[1].pipe_path().unwrap();
    let mut clients = Vec::new();
    for endpoint in server.endpoints.clone() {
        clients.push(signed_in(&endpoint).await);
    }
    server.stop().await;
    for client in &mut clients {
        assert!(client.ping().await.is_err(), "{}", client.endpoint());
    }
    assert!(!pipe.exists());
}

#[tokio::test]
async fn configured_users_replace_the_dev_user() {
    let server = TestServer::start_with(|config| {
        config.users = vec![("alice".into(), "wonderland".into())];
    })
    .await;
    let mut client = Client::connect(&server.endpoints[0].to_string())
        .await
        .unwrap();
    assert!(matches!(
        client.signin("dev", PASSWORD).await,
        Err(ClientError::Server { code: 401, .. })
    ));
    let response = client.signin("alice", "wonderland").await.unwrap();
    assert_eq!(response.user.unwrap().username, "alice");
    server.stop().await;
}

/// A raw WebSocket peer: the handshake, then frames written and read by
/// hand with the crate's own codec.
struct RawWs {
    tcp: tokio::net::TcpStream,
    rx: bytes::BytesMut,
    deframer: openiap_wire::websocket::Deframer,
}

impl RawWs {
    async fn connect(endpoint: &Endpoint) -> Self {
        let authority = endpoint.authority().unwrap();
        let mut tcp = tokio::net::TcpStream::connect(&authority).await.unwrap();
        let rx = openiap_wire::transport::ws_handshake::connect(&mut tcp, &authority, "/ws/v2")
            .await
            .unwrap();
        Self {
            tcp,
            rx,
            deframer: openiap_wire::websocket::Deframer::new(false),
        }
    }

    async fn send(&mut self, head: openiap_wire::websocket::FrameHead, payload: &[u8]) {
        use tokio::io::AsyncWriteExt;
        self.tcp.write_all(&ws_frame(head, payload)).await.unwrap();
    }

    /// Everything the server sends until it closes: the payload bytes and
    /// the control frames (panics after 10 s).
    async fn until_eof(&mut self) -> (Vec<u8>, Vec<openiap_wire::websocket::Received>) {
        use openiap_wire::websocket::Received;
        use tokio::io::AsyncReadExt;
        let (mut data, mut controls) = (bytes::BytesMut::new(), Vec::new());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            loop {
                match self.deframer.decode(&mut self.rx, &mut data).unwrap() {
                    Received::Data => break,
                    other => controls.push(other),
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let read = tokio::time::timeout(left, self.tcp.read_buf(&mut self.rx));
            match read.await.expect("the server did not close within 10 s") {
                Ok(0) | Err(_) => return (data.to_vec(), controls),
                Ok(_) => {}
            }
        }
    }
}

/// One WebSocket frame, masked when the head has a key.
fn ws_frame(head: openiap_wire::websocket::FrameHead, payload: &[u8]) -> Vec<u8> {
    let mut wire = bytes::BytesMut::new();
    head.encode_frame(payload, &mut wire);
    wire.to_vec()
}

/// The envelopes framed in `bytes`.
fn envelopes_in(bytes: &[u8]) -> Vec<Envelope> {
    let mut decoder = openiap_wire::frame::FrameDecoder::default();
    decoder.push(bytes);
    let mut out = Vec::new();
    while let Ok(Some(frame)) = decoder.decode() {
        out.push(openiap_wire::envelope::decode_envelope(frame).unwrap());
    }
    out
}

#[tokio::test]
async fn hostile_websocket_frames_end_only_their_own_connection() {
    use openiap_wire::websocket::{FrameHead, Opcode, Received};
    let server = TestServer::start().await;
    let ws = server.endpoints[2].clone();
    let mut good = signed_in(&ws).await;
    let key = Some([0x5a, 0x17, 0xc3, 0x08]);
    let masked = |opcode, len| FrameHead {
        mask: key,
        ..FrameHead::new(opcode, len)
    };
    // Refused frames: the server closes without a word (they are not the
    // protocol's to answer), and keeps serving.
    let mut reserved_bits = ws_frame(masked(Opcode::Binary, 0), b"");
    reserved_bits[0] |= 0x40; // RSV1, with no extension negotiated
    let cases = [
        ("text", ws_frame(masked(Opcode::Text, 5), b"hello")),
        (
            "unmasked",
            ws_frame(FrameHead::new(Opcode::Binary, 3), b"abc"),
        ),
        ("reserved bits", reserved_bits),
        (
            "continuation first",
            ws_frame(masked(Opcode::Continuation, 1), b"x"),
        ),
        (
            "ping of 126 bytes",
            ws_frame(masked(Opcode::Ping, 126), &[0; 126]),
        ),
    ];
    for (name, wire) in cases {
        use tokio::io::AsyncWriteExt;
        let mut raw = RawWs::connect(&ws).await;
        raw.tcp.write_all(&wire).await.unwrap();
        let (data, _) = raw.until_eof().await;
        assert!(
            data.is_empty(),
            "{name}: the server answered {} bytes",
            data.len()
        );
        good.ping().await.unwrap();
    }
    // A ping is answered with its payload; the connection stays.
    let mut raw = RawWs::connect(&ws).await;
    raw.send(masked(Opcode::Ping, 4), b"ping").await;
    // A binary frame that declares 2^62 bytes and opens with a 4 GiB
    // envelope prefix: the envelope is fatal (413, told in an `error`),
    // and nothing of the declared size is held.
    raw.send(masked(Opcode::Binary, 1 << 62), &u32::MAX.to_le_bytes())
        .await;
    let (data, controls) = raw.until_eof().await;
    assert_eq!(
        controls.first(),
        Some(&Received::Pong(Bytes::from_static(b"ping"))),
        "{controls:?}"
    );
    assert!(
        matches!(controls.last(), Some(Received::Close(Some(_)))),
        "{controls:?}"
    );
    let errors = envelopes_in(&data);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].command, "error");
    let error: openiap_wire::proto::ErrorResponse =
        openiap_wire::envelope::unpack(&errors[0], openiap_wire::command::Validation::Strict)
            .unwrap();
    assert_eq!(error.code, 413, "{}", error.message);
    good.ping().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn websocket_upgrade_on_another_path_is_refused() {
    let server = TestServer::start().await;
    let Endpoint::Ws { host, port, .. } = server.endpoints[2].clone() else {
        panic!("third endpoint is ws");
    };
    let url = format!("ws://{host}:{port}/elsewhere");
    match Client::connect(&url).await {
        Err(ClientError::Transport(e)) => {
            assert!(e.to_string().contains("404"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    server.stop().await;
}

#[tokio::test]
async fn many_refused_uploads_leave_the_connection_usable() {
    let server = TestServer::start().await;
    let mut client = Client::connect(&server.endpoints[0].to_string())
        .await
        .unwrap();
    let path = write_temp(&server, "slots.bin", &content(300_000, 3));
    // More refused uploads than the server has stream slots (16).
    for _ in 0..20 {
        assert!(matches!(
            client.upload(&path).await,
            Err(ClientError::Server { code: 401, .. })
        ));
    }
    client.signin("dev", PASSWORD).await.unwrap();
    let uploaded = client.upload(&path).await.unwrap();
    assert_eq!(uploaded.bytes, 300_000);
    server.stop().await;
}

#[tokio::test]
async fn clients_run_in_spawned_tasks() {
    let server = TestServer::start().await;
    let mut tasks = Vec::new();
    for endpoint in server.endpoints.clone() {
        tasks.push(tokio::spawn(async move {
            let mut client = signed_in(&endpoint).await;
            client.ping().await.unwrap();
            client.close().await.unwrap();
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    server.stop().await;
}

#[tokio::test]
async fn garbage_from_one_peer_closes_only_that_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start().await;
    let mut good = signed_in(&server.endpoints[0]).await;
    let addr = server.endpoints[0].authority().unwrap();
    let mut raw = tokio::net::TcpStream::connect(addr).await.unwrap();
    // A length prefix of 4 GiB - 1: over the max frame length.
    raw.write_all(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3])
        .await
        .unwrap();
    let mut answer = Vec::new();
    raw.read_to_end(&mut answer).await.unwrap();
    // The server explained itself (an `error` frame) before closing.
    let mut decoder = openiap_wire::frame::FrameDecoder::new(Default::default());
    decoder.push(&answer);
    let frame = decoder.decode().unwrap().expect("one whole frame");
    let notice = openiap_wire::envelope::decode_envelope(frame).unwrap();
    assert_eq!(notice.command, "error");
    good.ping().await.unwrap();
    server.stop().await;
}

/// The gRPC endpoint of a test server.
fn grpc(server: &TestServer) -> &Endpoint {
    server
        .endpoints
        .iter()
        .find(|e| e.transport() == "grpc")
        .expect("a grpc endpoint")
}

#[tokio::test]
async fn grpc_message_over_the_max_frame_length_is_refused() {
    let server = TestServer::start_with(|config| {
        config
            .connection
            .frame_mut()
            .set_max_frame_length(64 * 1024);
    })
    .await;
    let mut client = signed_in(grpc(&server)).await;
    // The client's own limit is the default (8 MiB), so the envelope
    // leaves; the server's gRPC deframer refuses it.
    let envelope = Envelope {
        command: "ping".into(),
        data: Some(openiap_wire::proto::google::protobuf::Any {
            type_url: String::new(),
            value: Bytes::from(vec![7u8; 100 * 1024]),
        }),
        ..Envelope::default()
    };
    match client.call(envelope).await {
        Err(ClientError::Transport(openiap_wire::transport::TransportError::Grpc(status))) => {
            assert!(status.message().contains("65536"), "{status:?}");
        }
        other => panic!("{other:?}"),
    }
    // Other calls on the same server are unaffected.
    signed_in(grpc(&server)).await.ping().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn grpc_seq_beyond_the_window_is_a_protocol_error() {
    let server = TestServer::start().await;
    let io = connect(grpc(&server), &TransportConfig::default())
        .await
        .unwrap();
    let mut driver = Driver::new(io);
    let now = Instant::now();
    let mut conn = Connection::new(Role::Client, ConnectionConfig::default(), now);
    // Stamp and discard more envelopes than the server's reorder window,
    // so the first one it sees is far ahead of the seq it expects.
    for _ in 0..=openiap_wire::reorder::DEFAULT_WINDOW {
        let pong = Envelope {
            command: "pong".into(),
            rid: "nothing".into(),
            ..Envelope::default()
        };
        conn.send(pong, now).unwrap();
        drop(conn.poll_envelope());
    }
    conn.request(&openiap_wire::proto::PingRequest {}, now)
        .unwrap();
    let mut notice = None;
    loop {
        let status = driver.drive(&mut conn).await;
        while let Some(event) = conn.poll_event() {
            if let Event::Request { envelope, .. } = event {
                notice.get_or_insert(envelope.command);
            }
        }
        if !matches!(status, Ok(Status::Progress)) {
            break;
        }
    }
    assert_eq!(
        notice.as_deref(),
        Some("error"),
        "the server explained itself"
    );
    server.stop().await;
}

#[tokio::test]
async fn grpc_connect_to_a_closed_port_is_a_typed_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let url = format!("grpc://127.0.0.1:{port}");
    match Client::connect(&url).await {
        Err(ClientError::Transport(openiap_wire::transport::TransportError::Grpc(status))) => {
            assert_eq!(
                status.code(),
                openiap_wire::transport::GrpcCode::Unavailable,
                "{status:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        Client::connect("grpc://127.0.0.1:443").await,
        Err(ClientError::Url(
            openiap_wire::transport::UrlError::TlsUnsupported { .. }
        ))
    ));
}

// ----- REST (experimental): one JSON envelope per POST beside ws ---------

/// The REST URL of a test server (beside its ws listener).
fn rest_authority(server: &TestServer) -> String {
    let ws = server
        .endpoints
        .iter()
        .find(|e| e.transport() == "ws")
        .expect("a ws endpoint");
    ws.authority().unwrap()
}

/// One HTTP/1.1 request on its own connection; returns status and body.
async fn http(authority: &str, head: &str, body: &[u8]) -> (u16, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(authority).await.unwrap();
    let mut request = format!("{head}\r\nHost: {authority}\r\nConnection: close\r\n").into_bytes();
    if !body.is_empty() || head.starts_with("POST") {
        request.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    request.extend_from_slice(b"\r\n");
    request.extend_from_slice(body);
    // The peer may answer (413) and close before reading everything.
    let _ = tcp.write_all(&request).await;
    let mut response = Vec::new();
    let _ = tcp.read_to_end(&mut response).await;
    let text = String::from_utf8_lossy(&response);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"));
    let at = text.find("\r\n\r\n").map_or(response.len(), |at| at + 4);
    (status, response[at..].to_vec())
}

/// POSTs a JSON envelope to /api/v2.
async fn post(authority: &str, json: &serde_json::Value, bearer: Option<&str>) -> (u16, Vec<u8>) {
    let auth = bearer.map_or(String::new(), |jwt| {
        format!("\r\nAuthorization: Bearer {jwt}")
    });
    let head = format!("POST /api/v2 HTTP/1.1\r\nContent-Type: application/json{auth}");
    http(authority, &head, json.to_string().as_bytes()).await
}

/// Bytes as Node writes a Buffer, or as base64.
fn json_bytes(bytes: &[u8], node: bool) -> serde_json::Value {
    use base64::Engine;
    if node {
        serde_json::json!({"type": "Buffer", "data": bytes})
    } else {
        serde_json::json!(base64::engine::general_purpose::STANDARD.encode(bytes))
    }
}

fn rest_request<M: prost::Message + prost::Name>(
    command: &str,
    id: &str,
    message: &M,
    node: bool,
) -> serde_json::Value {
    serde_json::json!({
        "command": command, "id": id, "seq": 99, "priority": 1,
        "data": {"type_url": M::type_url(), "value": json_bytes(&message.encode_to_vec(), node)},
    })
}

/// The reply envelope's command, rid, and payload bytes (Buffer form).
fn rest_reply(status: u16, body: &[u8]) -> (String, String, Vec<u8>) {
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(body));
    let json: serde_json::Value = serde_json::from_slice(body).unwrap();
    assert!(
        json["data"].is_null() || json["data"]["value"]["type"] == "Buffer",
        "{json}"
    );
    let value = json["data"]["value"]["data"]
        .as_array()
        .map(|a| a.iter().map(|b| b.as_u64().unwrap() as u8).collect())
        .unwrap_or_default();
    (
        json["command"].as_str().unwrap().to_owned(),
        json["rid"].as_str().unwrap().to_owned(),
        value,
    )
}

fn rest_error(status: u16, body: &[u8]) -> openiap_wire::proto::ErrorResponse {
    let (command, _, value) = rest_reply(status, body);
    assert_eq!(command, "error");
    prost::Message::decode(&value[..]).unwrap()
}

#[tokio::test]
async fn rest_signin_ping_and_query_in_both_byte_encodings() {
    use openiap_wire::proto::{PingRequest, QueryRequest, SigninResponse};
    let server = TestServer::start().await;
    let authority = rest_authority(&server);
    for node in [true, false] {
        let signin = SigninRequest {
            username: "dev".into(),
            password: PASSWORD.into(),
            ..SigninRequest::default()
        };
        let (status, body) = post(
            &authority,
            &rest_request("signin", "s1", &signin, node),
            None,
        )
        .await;
        let (command, rid, value) = rest_reply(status, &body);
        assert_eq!((command.as_str(), rid.as_str()), ("signinreply", "s1"));
        let response: SigninResponse = prost::Message::decode(&value[..]).unwrap();
        assert_eq!(response.user.unwrap().username, "dev");

        let (status, body) = post(
            &authority,
            &rest_request("ping", "p1", &PingRequest {}, node),
            None,
        )
        .await;
        assert_eq!(rest_reply(status, &body).0, "pong");

        // Stateless: the signin above did not sign this request in...
        let query = QueryRequest {
            collectionname: "entities".into(),
            ..QueryRequest::default()
        };
        let request = rest_request("query", "q1", &query, node);
        let (status, body) = post(&authority, &request, None).await;
        assert_eq!(rest_error(status, &body).code, 401);
        // ...but its token in the Authorization header does: the query
        // gets past authentication to the server's "not supported".
        let (status, body) = post(&authority, &request, Some(&response.jwt)).await;
        let error = rest_error(status, &body);
        assert_eq!(error.code, 501, "{}", error.message);
        assert!(error.message.contains("query"), "{}", error.message);
    }
    // The Node client's connection check.
    let (status, body) = post(&authority, &serde_json::json!({"command": "noop"}), None).await;
    assert_eq!(rest_reply(status, &body).0, "noop");
    server.stop().await;
}

#[tokio::test]
async fn rest_bad_bodies_get_400_and_the_server_stays_up() {
    let server = TestServer::start().await;
    let authority = rest_authority(&server);
    let head = "POST /api/v2 HTTP/1.1\r\nContent-Type: application/json";
    for body in [
        &b"{not json"[..],
        br#"{"id":"1"}"#,
        br#"{"command":"ping","data":{"type_url":"","value":{"type":"Buffer","data":[300]}}}"#,
        br#"{"command":"ping","data":{"type_url":"","value":"%%%"}}"#,
        b"\xff\xfe\x00",
    ] {
        let (status, text) = http(&authority, head, body).await;
        assert_eq!(status, 400, "{}", String::from_utf8_lossy(&text));
    }
    let (status, _) = http(&authority, "POST /elsewhere HTTP/1.1", b"{}").await;
    assert_eq!(status, 404);
    // The same listener still upgrades WebSockets.
    let ws = server
        .endpoints
        .iter()
        .find(|e| e.transport() == "ws")
        .unwrap();
    signed_in(ws).await.ping().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn rest_body_over_the_max_frame_length_gets_413() {
    let server = TestServer::start_with(|config| {
        config
            .connection
            .frame_mut()
            .set_max_frame_length(64 * 1024);
    })
    .await;
    let authority = rest_authority(&server);
    let big = serde_json::json!({"command": "ping", "id": "x",
        "data": {"type_url": "", "value": json_bytes(&[1u8; 40 * 1024], true)}});
    let (status, text) = post(&authority, &big, None).await;
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&text));
    assert!(String::from_utf8_lossy(&text).contains("65536"));
    // Without a length up front (chunked), the limit still holds.
    let head = "POST /api/v2 HTTP/1.1\r\nTransfer-Encoding: chunked";
    let payload = vec![b' '; 70 * 1024];
    let mut chunked = format!("{:x}\r\n", payload.len()).into_bytes();
    chunked.extend_from_slice(&payload);
    chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    let (status, _) = http(&authority, head, &chunked).await;
    assert_eq!(status, 413);
    server.stop().await;
}

#[tokio::test]
async fn rest_upload_and_download_are_refused() {
    use openiap_wire::proto::DownloadRequest;
    let server = TestServer::start().await;
    let authority = rest_authority(&server);
    let upload = UploadRequest {
        filename: "rest.bin".into(),
        ..UploadRequest::default()
    };
    let (status, body) = post(
        &authority,
        &rest_request("upload", "u1", &upload, true),
        None,
    )
    .await;
    let error = rest_error(status, &body);
    assert_eq!(error.code, 501);
    assert!(error.message.contains("stream"), "{}", error.message);
    let download = DownloadRequest {
        id: "0123456789abcdef01234567".into(),
        ..DownloadRequest::default()
    };
    let (status, body) = post(
        &authority,
        &rest_request("download", "d1", &download, false),
        None,
    )
    .await;
    assert_eq!(rest_error(status, &body).code, 501);
    assert_eq!(server.count("tmp"), 0);
    assert_eq!(server.count("files"), 0);
    server.stop().await;
}

#[tokio::test]
async fn rest_url_is_listed_but_cannot_be_connected_to() {
    let server = TestServer::start().await;
    let url = format!("http://{}/api/v2", rest_authority(&server));
    match Client::connect(&url).await {
        Err(ClientError::Transport(openiap_wire::transport::TransportError::Stateless {
            url: refused,
        })) => assert_eq!(refused, url),
        other => panic!("{other:?}"),
    }
    server.stop().await;
}

#[tokio::test]
async fn transfers_report_progress_up_to_the_total() {
    use openiap_wire::client::{Direction, Progress};
    use std::sync::{Arc, Mutex};

    let server = TestServer::start().await;
    let endpoint = server.endpoints[0].clone();
    let mut client = signed_in(&endpoint).await;
    let reports: Arc<Mutex<Vec<Progress>>> = Arc::default();
    let sink = Arc::clone(&reports);
    client.set_progress(move |p| sink.lock().unwrap().push(p));

    let data = content(1024 * 1024 + 5, 9);
    let path = write_temp(&server, "progress.bin", &data);
    let uploaded = client.upload(&path).await.unwrap();
    let out = path.with_file_name("progress-down.bin");
    client.download(&uploaded.id, &out).await.unwrap();
    client.close().await.unwrap();

    let reports = reports.lock().unwrap().clone();
    let len = data.len() as u64;
    for direction in [Direction::Upload, Direction::Download] {
        let seen: Vec<&Progress> = reports
            .iter()
            .filter(|p| p.direction == direction)
            .collect();
        // 1 MiB + 5 bytes in 256 KiB chunks: five reports, rising to the total.
        assert_eq!(seen.len(), 5, "{direction:?}: {seen:?}");
        assert!(
            seen.windows(2).all(|w| w[0].done < w[1].done),
            "{direction:?}"
        );
        assert_eq!(seen.last().map(|p| p.done), Some(len), "{direction:?}");
        assert!(
            seen.iter().all(|p| p.total == Some(len)),
            "{direction:?}: {seen:?}"
        );
    }
    server.stop().await;
}
