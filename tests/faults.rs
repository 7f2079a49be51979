//! Faults against the real binaries, each run as its own process and killed
//! with SIGKILL ([`Child::kill`]) in the middle of a transfer:
//!
//! | fault                                   | what must hold                                            |
//! |-----------------------------------------|-----------------------------------------------------------|
//! | `openiap-client` killed mid-upload      | no file id issued, nothing listed or downloadable, the server's temporary file removed, the server serves on (every transport) |
//! | `openiap-server` killed mid-upload, restarted on the same data dir | no partial file visible, the temporary file gone, earlier uploads intact and downloadable with matching SHA-256 |
//! | connection cut mid-download (a proxy in this test stops after N bytes) | the client exits non-zero (the library returns a typed error) and leaves no output file, partial or whole (socket, ws, grpc) |
//! | `openiap-server` killed mid-download    | the same, and the file is intact after a restart (socket, pipe) |
//! | a stored file changed on disk (one bit) | its download fails the checksum as a typed error and leaves no output file (every transport) |
//!
//! "Mid" is checked, not assumed: the test waits until the server's
//! temporary file, the client's partial file or the bytes through the proxy
//! have grown past a threshold well below the file size, and only then
//! strikes.

#![cfg(all(feature = "bins", unix))]

mod support;

use std::ffi::OsString;
use std::fs::File;
use std::io::BufReader;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use openiap_wire::client::{Client, ClientError};
use openiap_wire::proto::DownloadRequest;
use openiap_wire::stream::{StreamError, sha256, sha256_hex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use support::{RemoveOnDrop, spawn_server};

const SERVER: &str = env!("CARGO_BIN_EXE_openiap-server");
const CLIENT: &str = env!("CARGO_BIN_EXE_openiap-client");
const PASSWORD: &str = "fault-password";
const MIB: u64 = 1024 * 1024;
/// Size of the file uploaded while a process is killed: big enough that the
/// kill lands well inside the transfer in either build profile (the
/// binaries are built with the test's profile).
const UPLOAD_SIZE: u64 = if cfg!(debug_assertions) { 32 } else { 256 } * MIB;
/// Size of the file downloaded while the connection is cut or the server
/// killed.
const DOWNLOAD_SIZE: u64 = if cfg!(debug_assertions) { 16 } else { 256 } * MIB;
/// How long any one wait in these tests may take before it fails.
const DEADLINE: Duration = Duration::from_secs(120);

static NEXT: AtomicU32 = AtomicU32::new(0);

fn unique(tag: &str) -> String {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{tag}-{}-{n}", std::process::id())
}

/// A scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("openiap-faults-{}", unique(tag)));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// The server's data directory, the same across restarts.
    fn data(&self) -> PathBuf {
        self.0.join("data")
    }

    /// Deterministic content (xorshift32) of `len` bytes written to `name`
    /// in here: its path and SHA-256.
    fn content(&self, name: &str, len: u64, seed: u32) -> (PathBuf, [u8; 32]) {
        let path = self.join(name);
        let data = support::xorshift32_bytes(usize::try_from(len).unwrap(), seed | 1);
        std::fs::write(&path, &data).unwrap();
        (path, sha256(&data))
    }

    fn dir(&self, name: &str) -> PathBuf {
        let dir = self.0.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process, killed (SIGKILL) and reaped on drop if still running.
struct Proc {
    child: Child,
    what: String,
}

impl Proc {
    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL; returns the exit status. Panics if the process had already
    /// ended by itself, since then the kill was not "mid" anything.
    fn kill(&mut self) -> ExitStatus {
        assert!(self.running(), "{} ended before the kill", self.what);
        self.child.kill().unwrap();
        let status = self.child.wait().unwrap();
        assert_eq!(status.signal(), Some(9), "{}: {status}", self.what);
        status
    }

    /// Waits for the process to end by itself.
    async fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "{} did not end", self.what);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `openiap-server` on ephemeral loopback ports, every transport on, data in
/// the scratch directory's `data/`, logs (info) in a new file there.
struct ServerProc {
    proc: Proc,
    /// (transport, client URL) as the server printed them.
    urls: Vec<(String, String)>,
    log: PathBuf,
    /// Kept open so that the server never writes to a closed pipe.
    _stdout: BufReader<ChildStdout>,
    /// The pipe listener's Unix socket, removed after the kill (on a panic
    /// too): a server killed with SIGKILL cannot remove it.
    _pipe: RemoveOnDrop,
}

impl ServerProc {
    fn start(scratch: &Scratch) -> Self {
        let log = scratch.join(&format!("{}.log", unique("server")));
        let pipe = unique("openiap-faults");
        let started = spawn_server(SERVER, &pipe, &scratch.data(), PASSWORD, "info", &log);
        Self {
            proc: Proc {
                child: started.child,
                what: "openiap-server".into(),
            },
            urls: started.urls,
            log,
            _stdout: started.stdout,
            _pipe: started.pipe_file,
        }
    }

    fn url(&self, transport: &str) -> &str {
        self.urls
            .iter()
            .find(|(t, _)| t == transport)
            .map(|(_, url)| url.as_str())
            .unwrap_or_else(|| panic!("no {transport} listener in {:?}", self.urls))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// One `openiap-client` run with `--json`; stdout and stderr go to files.
struct ClientRun {
    proc: Proc,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl ClientRun {
    fn spawn(scratch: &Scratch, url: &str, command: &[OsString]) -> Self {
        let tag = unique("client");
        let stdout = scratch.join(&format!("{tag}.out"));
        let stderr = scratch.join(&format!("{tag}.err"));
        let child = Command::new(CLIENT)
            .args(["--url", url, "--password", PASSWORD, "--json"])
            .args(command)
            .env("RUST_LOG", "warn")
            .env_remove("OPENIAP_JWT")
            .stdin(Stdio::null())
            .stdout(File::create(&stdout).unwrap())
            .stderr(File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        Self {
            proc: Proc {
                child,
                what: format!("openiap-client {command:?}"),
            },
            stdout,
            stderr,
        }
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits for a failed exit and returns the error the client reported.
    async fn failure(&mut self) -> String {
        let status = self.proc.wait().await;
        let (out, err) = (self.stdout(), self.stderr());
        assert!(!status.success(), "{status}: {out} {err}");
        assert_eq!(status.code(), Some(1), "{status}: {out} {err}");
        let report: serde_json::Value = serde_json::from_str(out.trim())
            .unwrap_or_else(|e| panic!("{e}: stdout {out:?} stderr {err:?}"));
        assert_eq!(report["ok"], false, "{report}");
        let error = report["error"].as_str().unwrap_or_default().to_owned();
        assert!(!error.is_empty(), "{report}");
        error
    }
}

fn args(list: &[&dyn AsRef<std::ffi::OsStr>]) -> Vec<OsString> {
    list.iter().map(|a| a.as_ref().to_owned()).collect()
}

fn file_sha256(path: &Path) -> [u8; 32] {
    sha256(&std::fs::read(path).unwrap())
}

/// Sorted names in `dir` (empty when it does not exist).
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Size of the content of the (one) upload in progress in `data/tmp`.
fn temp_upload_size(data: &Path) -> Option<u64> {
    let dir = std::fs::read_dir(data.join("tmp")).ok()?.next()?.ok()?;
    Some(std::fs::metadata(dir.path().join("content")).ok()?.len())
}

/// Size of the client's partial download file (`.NAME.*.part`) in `dir`.
fn part_size(dir: &Path) -> Option<u64> {
    let part = std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .find(|e| e.file_name().to_string_lossy().ends_with(".part"))?;
    Some(part.metadata().ok()?.len())
}

/// Polls `size` until it reaches `at_least` bytes while `proc` runs;
/// returns the size seen.
async fn grown(what: &str, proc: &mut Proc, at_least: u64, size: impl Fn() -> Option<u64>) -> u64 {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(seen) = size().filter(|&s| s >= at_least) {
            return seen;
        }
        assert!(proc.running(), "{what}: {} ended first", proc.what);
        assert!(Instant::now() < deadline, "{what} never reached {at_least}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Polls `done` until it holds.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !done() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn signed_in(url: &str) -> Client {
    let mut client = Client::connect(url).await.unwrap();
    client.signin("dev", PASSWORD).await.unwrap();
    client
}

/// Uploads `path` with the library client; returns the new id.
async fn upload(url: &str, path: &Path) -> String {
    let mut client = signed_in(url).await;
    let reply = client.upload(path).await.unwrap();
    client.close().await.unwrap();
    reply.id
}

/// Downloads `id` with the library client into `out`; returns the SHA-256
/// of what was written.
async fn download(url: &str, id: &str, out: &Path) -> [u8; 32] {
    let mut client = signed_in(url).await;
    let done = client.download(id, out).await.unwrap();
    assert!(done.summary.checksum_verified, "{id} via {url}");
    client.close().await.unwrap();
    file_sha256(out)
}

/// Asks for the newest file named `filename`; it must not exist.
async fn assert_not_downloadable(url: &str, filename: &str) {
    let mut client = signed_in(url).await;
    let request = DownloadRequest {
        filename: filename.to_owned(),
        ..DownloadRequest::default()
    };
    match client.call(openiap_wire::envelope::pack(&request)).await {
        Err(ClientError::Server { code: 404, .. }) => {}
        other => panic!("{filename} via {url}: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_killed_mid_upload_issues_no_id_and_leaves_no_temp_file() {
    let scratch = Scratch::new("client-kill");
    let data = scratch.data();
    let server = ServerProc::start(&scratch);
    let total = UPLOAD_SIZE;
    let (big, _) = scratch.content("big.bin", total, 1);
    let mut published = Vec::new();
    for transport in ["socket", "pipe", "ws", "grpc"] {
        let url = server.url(transport).to_owned();
        let mut client = ClientRun::spawn(&scratch, &url, &args(&[&"upload", &big]));
        let at_kill = grown("server temp file", &mut client.proc, 2 * MIB, || {
            temp_upload_size(&data)
        })
        .await;
        client.proc.kill();
        assert!(at_kill < total, "{transport}: {at_kill} of {total}");
        assert_eq!(client.stdout(), "", "{transport}: no id was printed");
        eventually(&format!("{transport}: temp file removed"), || {
            listing(&data.join("tmp")).is_empty()
        })
        .await;
        assert_eq!(
            listing(&data.join("files")),
            published,
            "{transport}: nothing new published\n{}",
            server.log()
        );
        assert_not_downloadable(&url, "big.bin").await;
        // The server serves on, on the same transport.
        let (small, sha) = scratch.content(&format!("small-{transport}.bin"), MIB + 11, 2);
        let id = upload(&url, &small).await;
        let out = scratch.join(&format!("small-{transport}.out"));
        assert_eq!(download(&url, &id, &out).await, sha, "{transport}");
        published.push(id);
        published.sort();
        println!(
            "{transport}: client killed with {at_kill} of {total} bytes in the server's temp file; temp removed, no id"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_killed_mid_upload_restarts_with_earlier_files_intact() {
    let scratch = Scratch::new("server-kill-upload");
    let data = scratch.data();
    let mut server = ServerProc::start(&scratch);
    let mut earlier = Vec::new();
    for (i, len) in [MIB + 3, 2 * MIB, 5 * MIB + 1].into_iter().enumerate() {
        let (path, sha) = scratch.content(&format!("early-{i}.bin"), len, 10 + i as u32);
        let id = upload(server.url("socket"), &path).await;
        earlier.push((id, sha));
    }
    let total = UPLOAD_SIZE;
    let (big, _) = scratch.content("big.bin", total, 3);
    let mut client = ClientRun::spawn(&scratch, server.url("socket"), &args(&[&"upload", &big]));
    let at_kill = grown("server temp file", &mut client.proc, 2 * MIB, || {
        temp_upload_size(&data)
    })
    .await;
    server.proc.kill();
    assert!(at_kill < total, "{at_kill} of {total}");
    // SIGKILL runs no cleanup: the partial upload is still on disk.
    assert_eq!(listing(&data.join("tmp")).len(), 1);
    let error = client.failure().await;
    println!("server killed with {at_kill} of {total} bytes in its temp file; client: {error}");

    let server = ServerProc::start(&scratch);
    assert!(
        listing(&data.join("tmp")).is_empty(),
        "temp file removed at start"
    );
    let mut ids: Vec<String> = earlier.iter().map(|(id, _)| id.clone()).collect();
    ids.sort();
    assert_eq!(listing(&data.join("files")), ids, "only complete files");
    assert_not_downloadable(server.url("socket"), "big.bin").await;
    let transports = ["socket", "pipe", "ws"];
    for ((id, sha), transport) in earlier.iter().zip(transports) {
        let out = scratch.join(&format!("{id}.out"));
        assert_eq!(
            download(server.url(transport), id, &out).await,
            *sha,
            "{id} via {transport}"
        );
    }
    // And it takes new uploads.
    let (path, sha) = scratch.content("after.bin", MIB, 4);
    let id = upload(server.url("grpc"), &path).await;
    assert_eq!(
        download(server.url("grpc"), &id, &scratch.join("after.out")).await,
        sha
    );
}

/// A TCP proxy that forwards one way untouched and the other (server to
/// client) until `cut_after` bytes went through, then drops both sockets.
struct CuttingProxy {
    addr: String,
    down: Arc<AtomicU64>,
    cut: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl CuttingProxy {
    async fn start(target: String, cut_after: u64) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let down = Arc::new(AtomicU64::new(0));
        let cut = Arc::new(AtomicBool::new(false));
        let (down_seen, cut_seen) = (Arc::clone(&down), Arc::clone(&cut));
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(&target).await else {
                    continue;
                };
                let (down, cut) = (Arc::clone(&down_seen), Arc::clone(&cut_seen));
                tokio::spawn(async move {
                    let (mut client_read, mut client_write) = client.into_split();
                    let (mut server_read, mut server_write) = server.into_split();
                    let up = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
                    });
                    let mut buf = vec![0u8; 16 * 1024];
                    while let Ok(n) = server_read.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        let before = down.load(Ordering::SeqCst);
                        let room = usize::try_from(cut_after.saturating_sub(before)).unwrap();
                        let pass = n.min(room);
                        if client_write.write_all(&buf[..pass]).await.is_err() {
                            break;
                        }
                        down.fetch_add(pass as u64, Ordering::SeqCst);
                        if pass < n || pass == room {
                            cut.store(true, Ordering::SeqCst);
                            break;
                        }
                    }
                    up.abort();
                    // Dropping the halves closes both connections.
                });
            }
        });
        Self {
            addr,
            down,
            cut,
            task,
        }
    }

    fn down(&self) -> u64 {
        self.down.load(Ordering::SeqCst)
    }

    fn was_cut(&self) -> bool {
        self.cut.load(Ordering::SeqCst)
    }
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `url` with its `HOST:PORT` replaced by `addr`.
fn via(url: &str, addr: &str) -> String {
    let endpoint: openiap_wire::transport::Endpoint = url.parse().unwrap();
    url.replacen(&endpoint.authority().unwrap(), addr, 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cut_mid_download_is_reported_and_leaves_no_output() {
    let scratch = Scratch::new("cut-download");
    let server = ServerProc::start(&scratch);
    let total = DOWNLOAD_SIZE;
    let (source, sha) = scratch.content("source.bin", total, 5);
    let id = upload(server.url("socket"), &source).await;
    let cut_after = 4 * MIB;
    for transport in ["socket", "ws", "grpc"] {
        let url = server.url(transport);
        let endpoint: openiap_wire::transport::Endpoint = url.parse().unwrap();
        let proxy = CuttingProxy::start(endpoint.authority().unwrap(), cut_after).await;
        let out_dir = scratch.dir(&format!("out-{transport}"));
        let out = out_dir.join("file.bin");
        let mut client = ClientRun::spawn(
            &scratch,
            &via(url, &proxy.addr),
            &args(&[&"download", &id, &"--out", &out]),
        );
        let error = client.failure().await;
        assert!(proxy.was_cut(), "{transport}: {error}");
        assert_eq!(proxy.down(), cut_after, "{transport}");
        assert!(cut_after < total);
        assert_eq!(listing(&out_dir), Vec::<String>::new(), "{transport}");
        println!(
            "{transport}: cut after {cut_after} bytes of a {total}-byte download; client exit 1: {error}"
        );
    }
    // The library reports it as a typed error and writes nothing either.
    let url = server.url("socket");
    let endpoint: openiap_wire::transport::Endpoint = url.parse().unwrap();
    let proxy = CuttingProxy::start(endpoint.authority().unwrap(), cut_after).await;
    let out_dir = scratch.dir("out-library");
    let mut client = signed_in(&via(url, &proxy.addr)).await;
    match client.download(&id, &out_dir.join("file.bin")).await {
        Err(
            e @ (ClientError::Transport(_)
            | ClientError::Stream(_)
            | ClientError::Protocol(_)
            | ClientError::Closed),
        ) => println!("library: {e:?}"),
        other => panic!("{other:?}"),
    }
    assert!(proxy.was_cut());
    assert_eq!(listing(&out_dir), Vec::<String>::new());
    // Nothing happened to the file or the server.
    let out = scratch.join("direct.bin");
    assert_eq!(download(url, &id, &out).await, sha);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_killed_mid_download_is_reported_and_leaves_no_output() {
    let scratch = Scratch::new("server-kill-download");
    let mut server = ServerProc::start(&scratch);
    let total = DOWNLOAD_SIZE;
    let (source, sha) = scratch.content("source.bin", total, 6);
    let id = upload(server.url("socket"), &source).await;
    for transport in ["socket", "pipe"] {
        let out_dir = scratch.dir(&format!("out-{transport}"));
        let out = out_dir.join("file.bin");
        let mut client = ClientRun::spawn(
            &scratch,
            server.url(transport),
            &args(&[&"download", &id, &"--out", &out]),
        );
        let at_kill = grown("client partial file", &mut client.proc, 2 * MIB, || {
            part_size(&out_dir)
        })
        .await;
        server.proc.kill();
        assert!(at_kill < total, "{transport}: {at_kill} of {total}");
        let error = client.failure().await;
        assert_eq!(listing(&out_dir), Vec::<String>::new(), "{transport}");
        println!(
            "{transport}: server killed with {at_kill} of {total} bytes in the client's partial file; client exit 1: {error}"
        );
        server = ServerProc::start(&scratch);
    }
    let out = scratch.join("after.bin");
    assert_eq!(download(server.url("ws"), &id, &out).await, sha);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_file_changed_on_disk_fails_its_download_and_leaves_no_output() {
    // The client hashes a download on the thread that writes it; the
    // mismatch must still fail it, and before the rename.
    let scratch = Scratch::new("bit-flip");
    let server = ServerProc::start(&scratch);
    let (source, _) = scratch.content("source.bin", 3 * MIB + 5, 7);
    let id = upload(server.url("socket"), &source).await;
    let stored = scratch.data().join("files").join(&id).join("content");
    let mut bytes = std::fs::read(&stored).unwrap();
    bytes[2 * MIB as usize] ^= 0x10;
    std::fs::write(&stored, &bytes).unwrap();
    for transport in ["socket", "pipe", "ws", "grpc"] {
        let out_dir = scratch.dir(&format!("out-{transport}"));
        let mut client = signed_in(server.url(transport)).await;
        match client.download(&id, &out_dir.join("file.bin")).await {
            Err(ClientError::Stream(StreamError::ChecksumMismatch { rid, actual, .. })) => {
                assert!(!rid.is_empty(), "{transport}");
                assert_eq!(actual, sha256_hex(&bytes), "{transport}");
            }
            other => panic!("{transport}: {other:?}"),
        }
        assert_eq!(listing(&out_dir), Vec::<String>::new(), "{transport}");
    }
}
