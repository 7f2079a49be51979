//! End-to-end and memory benchmarks (issue 5, items 4 and 5): a measured
//! comparison in one run, not a criterion bench. Results and method are in
//! BENCHMARKS.md, sections "End to end" and "Memory".
//!
//! ```text
//! cargo bench --bench e2e               # end to end (the default)
//! cargo bench --bench e2e -- memory     # memory only
//! cargo bench --bench e2e -- all        # both
//! ```
//!
//! End to end: the release `openiap-server` runs as a separate process with
//! every transport on loopback (TCP ports and a Unix socket). For each run
//! and transport our client (`openiap_wire::client::bench::measure`, the code
//! behind `openiap-client bench`) signs in, times sequential pings, uploads
//! the source file and downloads it again (checksums verified); then it
//! times the same pings against a second server started with
//! `--worker-threads 1` (one event loop, as the Node server has) and an
//! upload without the checksum pass (`UploadOptions::checksum(false)`, the
//! Node package's default). In the same
//! run: raw loopback baselines with no protocol, over TCP and a Unix socket
//! (round trips of a 64-byte message to an echo in another process, this
//! binary's `raw-echo` mode; copies of the same file, with and without
//! `fsync`, and memory to memory), and the Node peer
//! (`tests/interop/node-bench.js`: the pinned `@openiap/nodeapi` client
//! against `node-server.js`), once with the checksum on and once more, for
//! the transfers alone, with its default, the checksum off (`--no-checksum`).
//! Before every timed transfer and raw copy the bench removes the files our
//! server stored so far and runs `sync` (see `settle`: on this VM memory the
//! guest freed goes back to the host, and writing into it costs a host fault
//! per page), so every measurement starts from the same state. Medians of
//! the runs and ratios are printed as Markdown.
//!
//! Each run ends with the pinned ping rows: the same sequential pings with
//! every process of a measurement on one CPU (`taskset -c 0`): a third
//! server, `openiap-client ping` in its own process, `node-bench.js
//! --pings-only` with its server as its child, and three echoes (this
//! binary's `raw-pings` mode, module `echo`): the blocking raw echo, the
//! same echo on tokio (the IO model of our binaries), and the tokio echo
//! served to a blocking client. On this VM a halted
//! vCPU takes long to wake, and an unpinned round trip wakes one or two (the
//! raw echo's rate alone
//! moves from about 4,000 to 37,000/s); pinned, a round trip hands the CPU
//! from one process to the other. Both tables are printed; the rows are
//! skipped with a message where `taskset` is missing.
//!
//! Memory: server RSS (`/proc/<pid>/status`) before and after opening and
//! signing in many idle socket connections from this process, then every one
//! of them pings at once; and the server's peak RSS (`VmHWM`) over a large
//! upload and download.
//!
//! | variable | default | meaning |
//! |----------|---------|---------|
//! | `OPENIAP_BENCH_MIB` | 256 | file size of the end-to-end transfers |
//! | `OPENIAP_BENCH_PINGS` | 10000 | sequential pings per run |
//! | `OPENIAP_BENCH_RUNS` | 3 | runs; medians are reported |
//! | `OPENIAP_BENCH_TRANSPORTS` | `socket pipe ws grpc` | transports measured |
//! | `OPENIAP_BENCH_NODE` | on | `0` skips the Node rows |
//! | `OPENIAP_BENCH_NODE_PING_SECONDS` | 10 | a Node ping series stops after this long (the package's socket transport leaves Nagle on: about 11 pings/s) |
//! | `OPENIAP_BENCH_CONNECTIONS` | 10000 | idle connections in the memory mode |
//! | `OPENIAP_BENCH_MEMORY_MIB` | 1024 | transfer size of the peak-RSS measurement |
//!
//! The Node rows need `node` and `tests/interop/node_modules` (`cd
//! tests/interop && npm ci`); without them they are skipped with a message.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use openiap_wire::client::bench::{self, Measurement};
use openiap_wire::client::{Client, ClientError, UploadOptions};
use openiap_wire::server::DEV_USERNAME;
use openiap_wire::transport::Endpoint;

mod echo;
use echo::EchoIo;

const SERVER_BIN: &str = env!("CARGO_BIN_EXE_openiap-server");
const CLIENT_BIN: &str = env!("CARGO_BIN_EXE_openiap-client");
/// The CPU of the pinned ping measurement (`taskset -c`).
const PIN_CPU: &str = "0";
const INTEROP_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop");
const MIB: f64 = 1024.0 * 1024.0;
/// Read and write size of the raw copies.
const RAW_BLOCK: usize = 1 << 20;
/// Connections opened at once in the memory mode.
const OPEN_AT_ONCE: usize = 128;

type Failure = Box<dyn std::error::Error>;

fn main() {
    let words: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let mode = words.first().map_or("e2e", String::as_str);
    let settings = Settings::from_env();
    let result = match mode {
        "raw-echo" => echo::echo_mode(words.get(1..).unwrap_or_default()),
        "raw-pings" => echo::pings_mode(words.get(1..).unwrap_or_default()),
        "e2e" => end_to_end(&settings),
        "memory" => memory(&settings),
        "all" => end_to_end(&settings).and_then(|()| memory(&settings)),
        other => Err(format!("unknown mode {other:?}: e2e, memory or all").into()),
    };
    if let Err(e) = result {
        eprintln!("e2e bench failed: {e}");
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------------------
// Settings, scratch space, the server process
// ---------------------------------------------------------------------------

struct Settings {
    mib: u64,
    pings: u32,
    runs: usize,
    transports: Vec<String>,
    node: bool,
    node_ping_seconds: u32,
    connections: usize,
    memory_mib: u64,
}

fn env_num<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(value) => value.trim().parse().unwrap_or_else(|_| {
            eprintln!("ignoring {name}={value:?}: not a number");
            default
        }),
        Err(_) => default,
    }
}

impl Settings {
    fn from_env() -> Self {
        let transports = std::env::var("OPENIAP_BENCH_TRANSPORTS")
            .unwrap_or_else(|_| "socket pipe ws grpc".to_owned())
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        Self {
            mib: env_num("OPENIAP_BENCH_MIB", 256u64).max(1),
            pings: env_num("OPENIAP_BENCH_PINGS", 10_000u32),
            runs: env_num("OPENIAP_BENCH_RUNS", 3usize).max(1),
            transports,
            node: std::env::var("OPENIAP_BENCH_NODE").map_or(true, |v| v != "0"),
            node_ping_seconds: env_num("OPENIAP_BENCH_NODE_PING_SECONDS", 10u32).max(1),
            connections: env_num("OPENIAP_BENCH_CONNECTIONS", 10_000usize).max(1),
            memory_mib: env_num("OPENIAP_BENCH_MEMORY_MIB", 1024u64).max(1),
        }
    }
}

/// A fresh directory under the system temp dir (same disk as the server's
/// data here), removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(kind: &str) -> std::io::Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!(
            "openiap-e2e-{kind}-{}-{nanos:x}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The release `openiap-server`, its `listening` URLs, stopped on drop.
struct ServerProc {
    child: Child,
    urls: BTreeMap<String, String>,
    password: String,
    /// The pipe listener's Unix socket, removed on drop: the server removes
    /// it on SIGTERM, but not when `stop` has to fall back to SIGKILL.
    pipe_path: Option<PathBuf>,
    /// Its `--data` directory.
    data: PathBuf,
}

impl ServerProc {
    /// Starts the server with the `transports` listeners on loopback (port
    /// 0) and its data in `dir`, on its default runtime.
    fn start(dir: &Path, transports: &[&str]) -> Result<Self, Failure> {
        Self::start_with(dir, transports, None, false)
    }

    /// As [`start`](Self::start), with `--worker-threads N` when
    /// `worker_threads` is given, and on CPU [`PIN_CPU`] only when `pinned`
    /// (data and stderr then get their own names).
    fn start_with(
        dir: &Path,
        transports: &[&str],
        worker_threads: Option<u32>,
        pinned: bool,
    ) -> Result<Self, Failure> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let tag = format!("{}-{nanos:x}", std::process::id());
        let password = format!("bench-{tag}");
        let on = |name: &str, value: String| {
            if transports.contains(&name) {
                value
            } else {
                "off".to_owned()
            }
        };
        let pipe = format!("oiw-e2e-{tag}");
        let pipe_path = if transports.contains(&"pipe") {
            Endpoint::pipe(&pipe)?.pipe_path()
        } else {
            None
        };
        let mut suffix = worker_threads.map_or(String::new(), |n| format!("-threads-{n}"));
        if pinned {
            suffix.push_str("-pinned");
        }
        let data = dir.join(format!("server-data{suffix}"));
        let mut command = pinned_if(pinned, SERVER_BIN);
        command
            .args(["--socket", &on("socket", "127.0.0.1:0".into())])
            .args(["--http", &on("ws", "127.0.0.1:0".into())])
            .args(["--grpc", &on("grpc", "127.0.0.1:0".into())])
            .args(["--pipe", &on("pipe", pipe)])
            .arg("--data")
            .arg(&data)
            .args(["--dev-password", &password])
            .env("RUST_LOG", "warn")
            .env_remove("OPENIAP_JWT_SECRET")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(
                dir.join(format!("server{suffix}.stderr")),
            )?);
        if let Some(n) = worker_threads {
            command.args(["--worker-threads", &n.to_string()]);
        }
        let mut child = command.spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    // Nobody listens any more; keep draining.
                    continue;
                }
            }
        });
        let mut server = Self {
            child,
            urls: BTreeMap::new(),
            password,
            pipe_path,
            data,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while transports.iter().any(|t| !server.urls.contains_key(*t)) {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .map_err(|_| "openiap-server did not print every listening line")?;
            let mut words = line.split_whitespace();
            if let (Some("listening"), Some(transport), Some(url)) =
                (words.next(), words.next(), words.next())
            {
                server.urls.insert(transport.to_owned(), url.to_owned());
            }
        }
        Ok(server)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn url(&self, transport: &str) -> Result<&str, Failure> {
        self.urls
            .get(transport)
            .map(String::as_str)
            .ok_or_else(|| format!("the server has no {transport} listener").into())
    }

    /// Removes the files uploaded so far (`DATA/files/<id>`), which no
    /// measurement reads again. See [`settle`] for why.
    fn drop_uploads(&self) -> std::io::Result<()> {
        let files = self.data.join("files");
        match std::fs::read_dir(&files) {
            Ok(entries) => {
                for entry in entries {
                    std::fs::remove_dir_all(entry?.path())?;
                }
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn stop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        // Our own child, by its id: SIGTERM is a graceful shutdown.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        self.stop();
        if let Some(path) = &self.pipe_path {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// `VmRSS` and `VmHWM` of process `pid`, in KiB.
fn rss_kib(pid: u32) -> Result<(u64, u64), Failure> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    match (field("VmRSS:"), field("VmHWM:")) {
        (Some(rss), Some(hwm)) => Ok((rss, hwm)),
        _ => Err(format!("no VmRSS/VmHWM in /proc/{pid}/status").into()),
    }
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

async fn signed_in(url: &str, password: &str) -> Result<Client, ClientError> {
    let mut client = Client::connect(url).await?;
    client.signin(DEV_USERNAME, password).await?;
    Ok(client)
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

fn runs_text(values: &[f64], decimals: usize) -> String {
    values
        .iter()
        .map(|v| format!("{v:.decimals$}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn mib_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / MIB / elapsed.as_secs_f64().max(1e-9)
}

// ---------------------------------------------------------------------------
// Raw loopback copies
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sock {
    Tcp,
    Unix,
}

impl Sock {
    const ALL: [Self; 2] = [Self::Tcp, Self::Unix];

    /// Its name in the tables and on the command line of the echo modes.
    fn name(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Unix => "unix",
        }
    }

    fn parse(name: Option<&str>) -> Option<Self> {
        Self::ALL.into_iter().find(|s| Some(s.name()) == name)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Raw {
    /// File read, socket, file written and synced: what an upload or a
    /// download does minus the protocol and the hashing.
    FileSync,
    /// The same without the sync: the file stays in the page cache.
    File,
    /// Memory to memory: the socket alone.
    Memory,
}

const RAW_KINDS: [Raw; 3] = [Raw::FileSync, Raw::File, Raw::Memory];

impl Raw {
    fn label(self) -> &'static str {
        match self {
            Self::FileSync => "file -> socket -> file + fsync",
            Self::File => "file -> socket -> file (page cache, no fsync)",
            Self::Memory => "memory -> socket -> memory",
        }
    }
}

trait Duplex: Read + Write + Send {
    fn finish_writing(&mut self) -> std::io::Result<()>;
}

impl Duplex for std::net::TcpStream {
    fn finish_writing(&mut self) -> std::io::Result<()> {
        self.shutdown(std::net::Shutdown::Write)
    }
}

impl Duplex for std::os::unix::net::UnixStream {
    fn finish_writing(&mut self) -> std::io::Result<()> {
        self.shutdown(std::net::Shutdown::Write)
    }
}

/// Accepts or connects one end of a raw copy.
type Opener = Box<dyn FnOnce() -> std::io::Result<Box<dyn Duplex>> + Send>;

/// Receives until EOF into `out` (a file, synced when `sync`) or nowhere;
/// returns the bytes received.
fn raw_receive(
    mut stream: Box<dyn Duplex>,
    out: Option<&Path>,
    sync: bool,
) -> std::io::Result<u64> {
    let mut file = out.map(std::fs::File::create).transpose()?;
    let mut buf = vec![0u8; RAW_BLOCK];
    let mut total = 0u64;
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
        if let Some(file) = &mut file {
            file.write_all(&buf[..n])?;
        }
    }
    if let (Some(file), true) = (&file, sync) {
        file.sync_all()?;
    }
    Ok(total)
}

/// One raw copy of `source` (or `bytes` from memory) over a loopback socket;
/// the time runs from connect to the receiver's last write (and sync).
fn raw_copy(sock: Sock, kind: Raw, source: &Path, bytes: u64, dir: &Path) -> Result<f64, Failure> {
    let out = dir.join("raw-copy.bin");
    let socket_path = dir.join("raw-copy.sock");
    let _ = std::fs::remove_file(&socket_path);
    let (accept, connect): (Opener, Opener) = match sock {
        Sock::Tcp => {
            let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
            let addr = listener.local_addr()?;
            (
                Box::new(move || Ok(Box::new(listener.accept()?.0) as Box<dyn Duplex>)),
                Box::new(move || {
                    Ok(Box::new(std::net::TcpStream::connect(addr)?) as Box<dyn Duplex>)
                }),
            )
        }
        Sock::Unix => {
            let listener = std::os::unix::net::UnixListener::bind(&socket_path)?;
            let path = socket_path.clone();
            (
                Box::new(move || Ok(Box::new(listener.accept()?.0) as Box<dyn Duplex>)),
                Box::new(move || {
                    Ok(Box::new(std::os::unix::net::UnixStream::connect(path)?) as Box<dyn Duplex>)
                }),
            )
        }
    };
    let target = (kind != Raw::Memory).then(|| out.clone());
    let receiver = thread::spawn(move || -> std::io::Result<(u64, Instant)> {
        let stream = accept()?;
        let received = raw_receive(stream, target.as_deref(), kind == Raw::FileSync)?;
        Ok((received, Instant::now()))
    });
    let started = Instant::now();
    let mut stream = connect()?;
    let mut buf = vec![0u8; RAW_BLOCK];
    if kind == Raw::Memory {
        buf.iter_mut().enumerate().for_each(|(i, b)| *b = i as u8);
        let mut left = bytes;
        while left > 0 {
            let n = usize::try_from(left.min(RAW_BLOCK as u64)).unwrap_or(RAW_BLOCK);
            stream.write_all(&buf[..n])?;
            left -= n as u64;
        }
    } else {
        let mut file = std::fs::File::open(source)?;
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            stream.write_all(&buf[..n])?;
        }
    }
    stream.finish_writing()?;
    let (received, finished) = receiver.join().map_err(|_| "raw receiver panicked")??;
    let _ = std::fs::remove_file(&out);
    let _ = std::fs::remove_file(&socket_path);
    if received != bytes {
        return Err(format!("raw copy moved {received} of {bytes} bytes").into());
    }
    Ok(mib_per_s(bytes, finished.duration_since(started)))
}

// ---------------------------------------------------------------------------
// The Node peer
// ---------------------------------------------------------------------------

/// Why the Node rows cannot run, if they cannot.
fn node_missing() -> Option<String> {
    let version = Command::new("node").arg("--version").output();
    if !version.is_ok_and(|o| o.status.success()) {
        return Some("`node` is not on PATH".to_owned());
    }
    let package = Path::new(INTEROP_DIR).join("node_modules/@openiap/nodeapi");
    if !package.is_dir() {
        return Some(format!(
            "{} is missing (cd tests/interop && npm ci)",
            package.display()
        ));
    }
    None
}

struct NodeRow {
    pings: u64,
    pings_per_s: f64,
    upload: f64,
    download: f64,
}

/// One `node-bench.js` run on `transport`: pings, upload and download with
/// the checksum on, or (`no_checksum`) the transfers alone with the
/// package's default, the checksum off.
fn node_run(
    settings: &Settings,
    transport: &str,
    (source, sha): (&Path, &str),
    no_checksum: bool,
    log: &Path,
) -> Result<NodeRow, Failure> {
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let mut command = Command::new("node");
    command
        .arg(Path::new(INTEROP_DIR).join("node-bench.js"))
        .args(["--transport", transport, "--file"])
        .arg(source)
        .args(["--sha256", sha])
        .args(["--ping-seconds", &settings.node_ping_seconds.to_string()]);
    if no_checksum {
        command.args(["--pings", "0", "--no-checksum"]);
    } else {
        command.args(["--pings", &settings.pings.to_string()]);
    }
    let output = command
        .current_dir(INTEROP_DIR)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stderr(stderr)
        .output()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .ok_or_else(|| format!("node-bench.js printed nothing ({})", output.status))?;
    let row: serde_json::Value = serde_json::from_str(line)?;
    if let Some(error) = row.get("error") {
        return Err(format!("node-bench.js {transport}: {error}").into());
    }
    if row["checksum_ok"].as_bool() != Some(true) {
        return Err(format!("node-bench.js {transport}: checksum check failed: {line}").into());
    }
    let number = |key: &str| {
        row[key]
            .as_f64()
            .ok_or_else(|| format!("node-bench.js {transport}: no {key} in {line}"))
    };
    Ok(NodeRow {
        pings: row["pings"].as_u64().unwrap_or(0),
        pings_per_s: number("pings_per_s")?,
        upload: number("upload_mib_per_s")?,
        download: number("download_mib_per_s")?,
    })
}

// ---------------------------------------------------------------------------
// End to end
// ---------------------------------------------------------------------------

#[derive(Default)]
struct Series {
    pings: Vec<f64>,
    /// Ours only: pings against the server started with `--worker-threads 1`.
    pings_one_thread: Vec<f64>,
    upload: Vec<f64>,
    /// The upload without the checksum pass (Node: its default,
    /// `ChecksumCheckFiles` off).
    upload_no_checksum: Vec<f64>,
    download: Vec<f64>,
    /// Pings the Node peer sent per run (it may stop early).
    ping_counts: Vec<u64>,
}

fn end_to_end(settings: &Settings) -> Result<(), Failure> {
    let scratch = Scratch::new("e2e")?;
    let bytes = settings.mib << 20;
    let source = scratch.0.join("bench.bin");
    eprintln!("writing the {} MiB source file", settings.mib);
    bench::write_content(&source, bytes)?;
    let sha = bench::file_sha256(&source)?;
    let transports: Vec<&str> = settings.transports.iter().map(String::as_str).collect();
    let server = ServerProc::start(&scratch.0, &transports)?;
    let server_one = ServerProc::start_with(&scratch.0, &transports, Some(1), false)?;
    let pinning = pinning_available();
    let server_pinned = match &pinning {
        Ok(()) => Some(ServerProc::start_with(&scratch.0, &transports, None, true)?),
        Err(why) => {
            eprintln!("skipping the pinned ping rows: {why}");
            None
        }
    };
    let node_skip = if settings.node {
        node_missing()
    } else {
        Some("OPENIAP_BENCH_NODE=0".to_owned())
    };
    if let Some(why) = &node_skip {
        eprintln!("skipping the Node rows: {why}");
    }
    let rt = runtime()?;
    let work = scratch.0.join("work");
    std::fs::create_dir_all(&work)?;
    let mut raw: BTreeMap<(usize, &str), Vec<f64>> = BTreeMap::new();
    let mut raw_pings: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut ours: BTreeMap<&str, Series> = BTreeMap::new();
    let mut node: BTreeMap<&str, Series> = BTreeMap::new();
    let mut pinned = Pinned::default();
    for run in 0..settings.runs {
        for sock in Sock::ALL {
            let name = sock.name();
            let rate =
                echo::round_trips(sock, EchoIo::Blocking, settings.pings.max(1), &scratch.0)?;
            eprintln!("run {run}: raw {name} round trips: {rate:.0}/s");
            raw_pings.entry(name).or_default().push(rate);
        }
        for (k, kind) in RAW_KINDS.into_iter().enumerate() {
            for sock in Sock::ALL {
                let name = sock.name();
                settle(&server);
                let rate = raw_copy(sock, kind, &source, bytes, &scratch.0)?;
                eprintln!("run {run}: raw {name} {}: {rate:.0} MiB/s", kind.label());
                raw.entry((k, name)).or_default().push(rate);
            }
        }
        for &transport in &transports {
            let url = server.url(transport)?;
            settle(&server);
            let m: Measurement = rt.block_on(async {
                let mut client = signed_in(url, &server.password).await?;
                let m = bench::measure(&mut client, settings.pings, &source, &sha, &work).await?;
                client.close().await?;
                Ok::<_, ClientError>(m)
            })?;
            if !m.checksum_ok {
                return Err(format!("{transport}: the downloaded file differs").into());
            }
            let (ping_time, plain_upload) = rt.block_on(async {
                let mut client =
                    signed_in(server_one.url(transport)?, &server_one.password).await?;
                let ping_time = bench::pings(&mut client, settings.pings).await?;
                client.close().await?;
                settle(&server);
                let mut client = signed_in(url, &server.password).await?;
                let started = Instant::now();
                client
                    .upload_with(&source, &UploadOptions::new().checksum(false))
                    .await?;
                let plain_upload = started.elapsed();
                client.close().await?;
                Ok::<_, Failure>((ping_time, plain_upload))
            })?;
            let pings_one_thread = f64::from(settings.pings) / ping_time.as_secs_f64();
            let upload_no_checksum = bytes as f64 / MIB / plain_upload.as_secs_f64();
            eprintln!(
                "run {run}: ours {transport}: {:.0} pings/s ({pings_one_thread:.0} with a 1-thread server), upload {:.1} MiB/s ({upload_no_checksum:.1} without checksum), download {:.1} MiB/s",
                m.pings_per_s(),
                m.upload_mib_per_s(),
                m.download_mib_per_s()
            );
            let series = ours.entry(transport).or_default();
            series.pings.push(m.pings_per_s());
            series.pings_one_thread.push(pings_one_thread);
            series.upload.push(m.upload_mib_per_s());
            series.upload_no_checksum.push(upload_no_checksum);
            series.download.push(m.download_mib_per_s());
            if node_skip.is_none() {
                let log = scratch.0.join("node.stderr");
                settle(&server);
                let row = node_run(settings, transport, (&source, &sha), false, &log)?;
                eprintln!(
                    "run {run}: node {transport}: {:.0} pings/s ({} pings), upload {:.1} MiB/s, download {:.1} MiB/s",
                    row.pings_per_s, row.pings, row.upload, row.download
                );
                let series = node.entry(transport).or_default();
                series.pings.push(row.pings_per_s);
                series.upload.push(row.upload);
                series.download.push(row.download);
                series.ping_counts.push(row.pings);
                settle(&server);
                let plain = node_run(settings, transport, (&source, &sha), true, &log)?;
                eprintln!(
                    "run {run}: node {transport}, no checksum: upload {:.1} MiB/s",
                    plain.upload
                );
                series.upload_no_checksum.push(plain.upload);
            }
        }
        if let Some(pinned_server) = &server_pinned {
            pinned_pings(
                settings,
                run,
                &transports,
                pinned_server,
                node_skip.is_none(),
                (&source, &sha),
                &scratch.0,
                &mut pinned,
            )?;
        }
    }
    drop(server);
    drop(server_one);
    drop(server_pinned);
    println!(
        "{}",
        report(
            settings,
            &transports,
            &Raws {
                copies: &raw,
                round_trips: &raw_pings,
            },
            &ours,
            &node,
            node_skip.as_deref()
        )
    );
    match &pinning {
        Ok(()) => println!("{}", pinned_report(settings, &transports, &pinned)),
        Err(why) => println!("\nPinned ping rows skipped: {why}\n"),
    }
    Ok(())
}

/// Brings the machine to the same state before every timed transfer and
/// raw copy. A failure is reported and the measurement goes on.
///
/// - Removes what our earlier uploads stored on `server`. This VM hands the
///   memory its guest frees back to the host at once (virtio-balloon free
///   page reporting), so writing into pages the guest has not used lately
///   costs a host fault per page: new page cache is then written at about
///   350 MiB/s instead of 1,400 (`benches/tools/fresh-pages.sh`). The raw
///   copies and the Node peer remove what they wrote; our server used to
///   keep every upload (12 GiB in a run), so each later transfer of ours
///   wrote into such pages and ran at a third of its speed.
/// - Writes the page cache's dirty data to disk (`sync`), so no earlier
///   measurement's writeback (a raw copy or the Node peer leave 256 MiB or
///   more unsynced) runs into the next one.
fn settle(server: &ServerProc) {
    if let Err(e) = server.drop_uploads() {
        eprintln!("removing the stored uploads: {e}");
    }
    match Command::new("sync").status() {
        Ok(status) if status.success() => {}
        Ok(status) => eprintln!("sync: {status}"),
        Err(e) => eprintln!("sync: {e}"),
    }
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 && a.is_finite() && b.is_finite() {
        format!("{:.1}x", a / b)
    } else {
        "n/a".to_owned()
    }
}

fn percent(a: f64, b: f64) -> String {
    if b > 0.0 && a.is_finite() && b.is_finite() {
        format!("{:.0} %", 100.0 * a / b)
    } else {
        "n/a".to_owned()
    }
}

/// The cells `ours [runs] | Node [runs]NOTE | **ours / Node**` of one
/// measure: medians with `decimals` places, each run's value in brackets.
fn versus(ours: &[f64], node: &[f64], decimals: usize, note: &str) -> String {
    let (o, n) = (median(ours), median(node));
    format!(
        "{o:.decimals$} [{}] | {n:.decimals$} [{}]{note} | **{}**",
        runs_text(ours, decimals),
        runs_text(node, decimals),
        ratio(o, n)
    )
}

/// `intro`, a blank line, then a Markdown table's header row of `columns`
/// (`a | b | c`) and its separator row.
fn table_head(out: &mut String, intro: &str, columns: &str) {
    let _ = writeln!(out, "{intro}\n");
    let _ = writeln!(out, "| {columns} |");
    let rule: Vec<String> = columns
        .split(" | ")
        .map(|c| "-".repeat(c.len() + 2))
        .collect();
    let _ = writeln!(out, "|{}|", rule.join("|"));
}

/// The raw baselines of a run: copies by (kind, socket), round trips by socket.
struct Raws<'a> {
    copies: &'a BTreeMap<(usize, &'a str), Vec<f64>>,
    round_trips: &'a BTreeMap<&'a str, Vec<f64>>,
}

fn report(
    settings: &Settings,
    transports: &[&str],
    raws: &Raws<'_>,
    ours: &BTreeMap<&str, Series>,
    node: &BTreeMap<&str, Series>,
    node_skip: Option<&str>,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n### End to end: {} MiB file, {} pings, median of {} runs (each run's value in brackets)\n",
        settings.mib, settings.pings, settings.runs
    );
    if let Some(why) = node_skip {
        let _ = writeln!(out, "Node rows skipped: {why}\n");
    }
    let raw = raws.copies;
    let empty = Series::default();
    // Each transport with our series, Node's and the socket kind it runs on.
    let rows = || {
        transports.iter().map(|t| {
            let sock = if *t == "pipe" { "unix" } else { "tcp" };
            let (o, n) = (ours.get(t).unwrap_or(&empty), node.get(t).unwrap_or(&empty));
            (t, o, n, sock)
        })
    };
    table_head(
        &mut out,
        &format!(
            "Sequential ping round trips per second (raw: a {}-byte message echoed over the same socket kind, no protocol; ws and gRPC run over TCP):",
            echo::PING_BYTES
        ),
        "transport | ours | Node | ours / Node | raw round trips | ours / raw | ours, server on 1 thread | ours (1 thread) / Node | ours (1 thread) / raw",
    );
    for (t, o, n, sock) in rows() {
        let r = raws.round_trips.get(sock).map_or(&[][..], Vec::as_slice);
        let counts = if n.ping_counts.iter().any(|&c| c < u64::from(settings.pings)) {
            format!(
                " (pings sent: {})",
                runs_text(
                    &n.ping_counts.iter().map(|&c| c as f64).collect::<Vec<_>>(),
                    0
                )
            )
        } else {
            String::new()
        };
        let one = &o.pings_one_thread;
        let _ = writeln!(
            out,
            "| {t} | {} | {:.0} [{}] | {} | {:.0} [{}] | **{}** | {} |",
            versus(&o.pings, &n.pings, 0, &counts),
            median(r),
            runs_text(r, 0),
            percent(median(&o.pings), median(r)),
            median(one),
            runs_text(one, 0),
            ratio(median(one), median(&n.pings)),
            percent(median(one), median(r)),
        );
    }
    table_head(
        &mut out,
        "\nUpload and download through the server, MiB/s:",
        "transport | ours upload | Node upload | ours / Node | ours download | Node download | ours / Node",
    );
    for (t, o, n, _) in rows() {
        let _ = writeln!(
            out,
            "| {t} | {} | {} |",
            versus(&o.upload, &n.upload, 1, ""),
            versus(&o.download, &n.download, 1, ""),
        );
    }
    table_head(
        &mut out,
        "\nRaw loopback copy of the same bytes, no protocol, MiB/s:",
        "copy | TCP | Unix socket",
    );
    let raw_median = |k: usize, sock: &str| raw.get(&(k, sock)).map_or(f64::NAN, |v| median(v));
    for (k, kind) in RAW_KINDS.into_iter().enumerate() {
        let runs = |sock: &str| {
            raw.get(&(k, sock))
                .map_or(String::new(), |v| runs_text(v, 0))
        };
        let _ = writeln!(
            out,
            "| {} | {:.0} [{}] | {:.0} [{}] |",
            kind.label(),
            raw_median(k, "tcp"),
            runs("tcp"),
            raw_median(k, "unix"),
            runs("unix"),
        );
    }
    table_head(
        &mut out,
        "\nOurs as a share of the raw copy over the same socket kind (ws and gRPC run over TCP):",
        "transport | upload / raw+fsync | download / raw+fsync | upload / raw no fsync | download / raw no fsync | upload / memory copy | download / memory copy",
    );
    for (t, o, _, sock) in rows() {
        let (up, down) = (median(&o.upload), median(&o.download));
        let _ = writeln!(
            out,
            "| {t} | **{}** | **{}** | {} | {} | {} | {} |",
            percent(up, raw_median(0, sock)),
            percent(down, raw_median(0, sock)),
            percent(up, raw_median(1, sock)),
            percent(down, raw_median(1, sock)),
            percent(up, raw_median(2, sock)),
            percent(down, raw_median(2, sock)),
        );
    }
    table_head(
        &mut out,
        "\nUpload without the checksum pass, both sides (ours `UploadOptions::checksum(false)`, Node `ChecksumCheckFiles` off, the package's default: `beginstream` carries an empty checksum), MiB/s, and ours as a share of the raw copy:",
        "transport | ours upload, no checksum | Node upload, no checksum | ours / Node | / raw+fsync | / raw no fsync",
    );
    for (t, o, n, sock) in rows() {
        let up = median(&o.upload_no_checksum);
        let _ = writeln!(
            out,
            "| {t} | {} | {} | {} |",
            versus(&o.upload_no_checksum, &n.upload_no_checksum, 1, ""),
            percent(up, raw_median(0, sock)),
            percent(up, raw_median(1, sock)),
        );
    }
    out
}

// ---------------------------------------------------------------------------
// Pinned pings: every process of a ping measurement on one CPU
// ---------------------------------------------------------------------------

/// Whether `taskset` can pin a process to [`PIN_CPU`] here.
fn pinning_available() -> Result<(), String> {
    match Command::new("taskset")
        .args(["-c", PIN_CPU, "true"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(format!("`taskset -c {PIN_CPU} true` failed ({status})")),
        Err(e) => Err(format!("no taskset ({e})")),
    }
}

/// `program` as a command, under `taskset -c PIN_CPU` when `pinned`
/// (taskset execs it: the pid is the program's, and its children inherit
/// the CPU).
fn pinned_if(pinned: bool, program: &str) -> Command {
    if pinned {
        let mut command = Command::new("taskset");
        command.args(["-c", PIN_CPU, program]);
        command
    } else {
        Command::new(program)
    }
}

/// The pinned series, per socket kind (raw) and per transport.
#[derive(Default)]
struct Pinned {
    /// The blocking echo.
    raw: BTreeMap<&'static str, Vec<f64>>,
    /// The tokio echo.
    tokio: BTreeMap<&'static str, Vec<f64>>,
    /// The tokio echo with a blocking client.
    blocking_client: BTreeMap<&'static str, Vec<f64>>,
    ours: BTreeMap<String, Vec<f64>>,
    node: BTreeMap<String, Vec<f64>>,
    /// Pings the Node peer sent per run (it may stop early).
    node_counts: BTreeMap<String, Vec<u64>>,
}

/// The last line of `command`'s stdout that starts with `{`, as JSON; an
/// error with `what` if it failed or printed none. Its stderr goes where
/// the caller set it (inherited by default).
fn json_line(mut command: Command, what: &str) -> Result<serde_json::Value, Failure> {
    let output = command.stdin(Stdio::null()).output()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .ok_or_else(|| format!("{what} printed no JSON ({})", output.status))?;
    let value: serde_json::Value = serde_json::from_str(line)?;
    if !output.status.success() || value.get("error").is_some() {
        return Err(format!("{what} failed ({}): {line}", output.status).into());
    }
    Ok(value)
}

/// One run of the pinned ping rows: the raw round trips, our client
/// (`openiap-client ping`, its own process) against `server` (started
/// pinned), and the Node peer (`node-bench.js --pings-only`, whose server
/// is its child), each process on CPU [`PIN_CPU`]. A ping round trip then
/// hands the CPU from one process to the other instead of waking a halted
/// vCPU, whose wake-up (not either protocol) dominates an unpinned round
/// trip on this VM; see BENCHMARKS.md.
#[allow(clippy::too_many_arguments)] // one call site; the run's state
fn pinned_pings(
    settings: &Settings,
    run: usize,
    transports: &[&str],
    server: &ServerProc,
    with_node: bool,
    (source, sha): (&Path, &str),
    dir: &Path,
    pinned: &mut Pinned,
) -> Result<(), Failure> {
    let count = settings.pings.max(1).to_string();
    let me = std::env::current_exe()?;
    let me = me.to_str().ok_or("the bench's path is not UTF-8")?;
    for io in [EchoIo::Blocking, EchoIo::Tokio, EchoIo::BlockingClient] {
        for name in Sock::ALL.map(Sock::name) {
            let mut command = pinned_if(true, me);
            command
                .args(["raw-pings", io.word(), name, &count])
                .arg(dir);
            let output = command.stdin(Stdio::null()).output()?;
            let rate: f64 = String::from_utf8_lossy(&output.stdout)
                .trim()
                .parse()
                .map_err(|e| format!("raw-pings {} {name}: {e} ({})", io.word(), output.status))?;
            eprintln!(
                "run {run}: pinned {} echo {name} round trips: {rate:.0}/s",
                io.word()
            );
            let series = match io {
                EchoIo::Blocking => &mut pinned.raw,
                EchoIo::Tokio => &mut pinned.tokio,
                EchoIo::BlockingClient => &mut pinned.blocking_client,
            };
            series.entry(name).or_default().push(rate);
        }
    }
    for &transport in transports {
        let mut command = pinned_if(true, CLIENT_BIN);
        command
            .args(["--url", server.url(transport)?])
            .args(["--password", &server.password])
            .args(["--json", "ping", "--count", &count])
            .env("RUST_LOG", "warn");
        let row = json_line(command, &format!("openiap-client ping ({transport})"))?;
        let rate = row["pings_per_s"]
            .as_f64()
            .ok_or("openiap-client ping printed no pings_per_s")?;
        eprint!("run {run}: pinned ours {transport}: {rate:.0} pings/s");
        pinned
            .ours
            .entry(transport.to_owned())
            .or_default()
            .push(rate);
        if with_node {
            let mut command = pinned_if(true, "node");
            command
                .arg(Path::new(INTEROP_DIR).join("node-bench.js"))
                .args(["--transport", transport, "--file"])
                .arg(source)
                .args(["--sha256", sha, "--pings", &count])
                .args(["--ping-seconds", &settings.node_ping_seconds.to_string()])
                .arg("--pings-only")
                .current_dir(INTEROP_DIR)
                .env("NO_COLOR", "1")
                .stderr(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(dir.join("node.stderr"))?,
                );
            let row = json_line(
                command,
                &format!("node-bench.js --pings-only ({transport})"),
            )?;
            let rate = row["pings_per_s"]
                .as_f64()
                .ok_or("node-bench.js printed no pings_per_s")?;
            let sent = row["pings"].as_u64().unwrap_or(0);
            eprint!(", node {rate:.0} pings/s ({sent} pings)");
            pinned
                .node
                .entry(transport.to_owned())
                .or_default()
                .push(rate);
            pinned
                .node_counts
                .entry(transport.to_owned())
                .or_default()
                .push(sent);
        }
        eprintln!();
    }
    Ok(())
}

/// The pinned ping table.
fn pinned_report(settings: &Settings, transports: &[&str], pinned: &Pinned) -> String {
    let mut out = String::new();
    table_head(
        &mut out,
        &format!(
            "\nSequential ping round trips per second with client and server pinned to one CPU (`taskset -c {PIN_CPU}`, every process of a row: ours, Node's and the echoes alike), {} pings, median of {} runs. Raw: the blocking echo; tokio: the same echo with our binaries' IO model (a multi-thread runtime serving it, a current-thread runtime as the client), the floor of any tokio implementation here; tokio / Node is the most a tokio implementation could reach; blocking client: the tokio echo served to a blocking client, the most a blocking client of a tokio server could reach:",
            settings.pings, settings.runs
        ),
        "transport | ours | Node | ours / Node | raw echo | ours / raw | tokio echo | ours / tokio | tokio / Node | blocking client | blocking client / Node",
    );
    for &t in transports {
        let sock = if t == "pipe" { "unix" } else { "tcp" };
        let ours = pinned.ours.get(t).map_or(&[][..], Vec::as_slice);
        let node = pinned.node.get(t).map_or(&[][..], Vec::as_slice);
        let raw = pinned.raw.get(sock).map_or(&[][..], Vec::as_slice);
        let tokio = pinned.tokio.get(sock).map_or(&[][..], Vec::as_slice);
        let blocking_client = pinned
            .blocking_client
            .get(sock)
            .map_or(&[][..], Vec::as_slice);
        let counts = pinned.node_counts.get(t).map_or(&[][..], Vec::as_slice);
        let note = if counts.iter().any(|&c| c < u64::from(settings.pings)) {
            format!(
                " (pings sent: {})",
                runs_text(&counts.iter().map(|&c| c as f64).collect::<Vec<_>>(), 0)
            )
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "| {t} | {} | {:.0} [{}] | {} | {:.0} [{}] | {} | {} | {:.0} [{}] | {} |",
            versus(ours, node, 0, &note),
            median(raw),
            runs_text(raw, 0),
            percent(median(ours), median(raw)),
            median(tokio),
            runs_text(tokio, 0),
            percent(median(ours), median(tokio)),
            ratio(median(tokio), median(node)),
            median(blocking_client),
            runs_text(blocking_client, 0),
            ratio(median(blocking_client), median(node)),
        );
    }
    out
}

// ---------------------------------------------------------------------------
// Memory
// ---------------------------------------------------------------------------

fn kib_text(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn memory(settings: &Settings) -> Result<(), Failure> {
    let scratch = Scratch::new("memory")?;
    let rt = runtime()?;
    let mut out = String::new();
    let n = settings.connections;
    let _ = writeln!(out, "\n### Memory\n");

    // 1. Idle signed-in connections.
    let server = ServerProc::start(&scratch.0, &["socket"])?;
    let pid = server.pid();
    let url = server.url("socket")?.to_owned();
    let password = server.password.clone();
    rt.block_on(async {
        // Warm up: the first connections initialise what every later one shares.
        for _ in 0..8 {
            let mut client = signed_in(&url, &password).await?;
            client.ping().await?;
            client.close().await?;
        }
        Ok::<_, ClientError>(())
    })?;
    thread::sleep(Duration::from_millis(500));
    let (before, _) = rss_kib(pid)?;
    let fds_before = open_fds(pid);
    eprintln!("opening {n} connections");
    let started = Instant::now();
    let mut clients = rt.block_on(async {
        let mut clients = Vec::with_capacity(n);
        let mut opening = tokio::task::JoinSet::new();
        let mut next = 0;
        while clients.len() < n {
            while next < n && opening.len() < OPEN_AT_ONCE {
                let (url, password) = (url.clone(), password.clone());
                opening.spawn(async move { signed_in(&url, &password).await });
                next += 1;
            }
            match opening.join_next().await {
                Some(Ok(Ok(client))) => clients.push(client),
                Some(Ok(Err(e))) => return Err(Failure::from(e)),
                Some(Err(e)) => return Err(Failure::from(e)),
                None => break,
            }
        }
        Ok(clients)
    })?;
    let opened_in = started.elapsed();
    thread::sleep(Duration::from_secs(1));
    let (after, _) = rss_kib(pid)?;
    let fds_after = open_fds(pid);
    // Every connection pings at once: one process serves them all.
    let started = Instant::now();
    let (answered, back) = rt.block_on(async {
        let mut pinging = tokio::task::JoinSet::new();
        for mut client in clients.drain(..) {
            pinging.spawn(async move {
                let ok = client.ping().await.is_ok();
                (ok, client)
            });
        }
        let mut answered = 0usize;
        let mut back = Vec::with_capacity(n);
        while let Some(done) = pinging.join_next().await {
            if let Ok((ok, client)) = done {
                answered += usize::from(ok);
                back.push(client);
            }
        }
        (answered, back)
    });
    let pinged_in = started.elapsed();
    let (after_pings, _) = rss_kib(pid)?;
    drop(back);
    drop(server);
    let per_connection = after.saturating_sub(before) as f64 / n as f64;
    eprintln!("idle: {before} KiB -> {after} KiB, {per_connection:.1} KiB per connection");
    table_head(
        &mut out,
        &format!(
            "{n} signed-in socket connections from one client process (opened {OPEN_AT_ONCE} at a time in {:.1} s):",
            opened_in.as_secs_f64()
        ),
        "server | value",
    );
    let _ = writeln!(
        out,
        "| VmRSS before (after 8 warm-up connections) | {} |",
        kib_text(before)
    );
    let _ = writeln!(
        out,
        "| VmRSS with {n} idle connections | {} |",
        kib_text(after)
    );
    let _ = writeln!(
        out,
        "| **per connection** ((after - before) / {n}) | **{per_connection:.1} KiB** |"
    );
    let _ = writeln!(
        out,
        "| open descriptors before / with the connections | {fds_before} / {fds_after} |"
    );
    let _ = writeln!(
        out,
        "| all {n} ping at once: answered | {answered} of {n} in {:.2} s |",
        pinged_in.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "| VmRSS after those pings | {} |",
        kib_text(after_pings)
    );
    if answered != n {
        println!("{out}");
        return Err(format!("only {answered} of {n} pings were answered").into());
    }

    // 2. Peak RSS over a large upload and download.
    let bytes = settings.memory_mib << 20;
    let source = scratch.0.join("memory.bin");
    eprintln!("writing the {} MiB source file", settings.memory_mib);
    bench::write_content(&source, bytes)?;
    let sha = bench::file_sha256(&source)?;
    let work = scratch.0.join("work");
    std::fs::create_dir_all(&work)?;
    let server = ServerProc::start(&scratch.0, &["socket"])?;
    let pid = server.pid();
    let url = server.url("socket")?.to_owned();
    let (idle, hwm_idle) = rss_kib(pid)?;
    let m = rt.block_on(async {
        let mut client = signed_in(&url, &server.password).await?;
        let m = bench::measure(&mut client, 0, &source, &sha, &work).await?;
        client.close().await?;
        Ok::<_, ClientError>(m)
    })?;
    let (end, hwm) = rss_kib(pid)?;
    drop(server);
    if !m.checksum_ok {
        return Err("the downloaded file differs".into());
    }
    table_head(
        &mut out,
        &format!(
            "\nServer peak RSS over one {} MiB upload then download (socket):",
            settings.memory_mib
        ),
        "server | value",
    );
    let _ = writeln!(
        out,
        "| VmRSS / VmHWM after start | {} / {} |",
        kib_text(idle),
        kib_text(hwm_idle)
    );
    let _ = writeln!(
        out,
        "| **VmHWM after upload + download** | **{}** |",
        kib_text(hwm)
    );
    let _ = writeln!(out, "| VmRSS at the end | {} |", kib_text(end));
    let _ = writeln!(
        out,
        "| upload / download | {:.1} / {:.1} MiB/s, checksums verified |",
        m.upload_mib_per_s(),
        m.download_mib_per_s()
    );
    println!("{out}");
    Ok(())
}
