//! Interop matrix against the real Node implementation: the npm package
//! `@openiap/nodeapi` 0.0.39, driven by the scripts in `tests/interop/`.
//!
//! Every cell runs as separate processes on loopback (127.0.0.1 or a Unix
//! socket), each with its own scratch directory:
//!
//! ```text
//!   node client -> openiap-server            openiap-client -> node server
//!
//!   openiap-server (port 0, one for all)      node-server.js --transport T --port P
//!     | listening <t> <url>                     | listening <t> <url>
//!     v                                         v
//!   node-client.js --url <url>                openiap-client --url <url>
//!     connect, signin, ping x N, unknown,       ping --count N, upload FILE,
//!     upload (checksum on), download            download ID --out F; bytes compared
//!     (checksum verified), done                 + the server's events checked
//! ```
//!
//! | transport | node client -> openiap-server | openiap-client -> node server |
//! |-----------|-------------------------------|-------------------------------|
//! | socket    | run                           | run                           |
//! | pipe      | run                           | run                           |
//! | ws        | run                           | run                           |
//! | grpc      | run once `openiap-server` has `--grpc`, else skipped | same |
//!
//! Environment:
//!
//! | variable | meaning |
//! |----------|---------|
//! | `OPENIAP_INTEROP=1` | required (CI): a missing `node` or `tests/interop/node_modules` fails the test |
//! | `OPENIAP_INTEROP=0` | skip the matrix |
//! | unset | run when `node` and the packages are present, else skip with the reason printed |
//! | `OPENIAP_INTEROP_SIZE` | bytes uploaded and downloaded per cell (default 2 MiB + 4321) |
//! | `OPENIAP_INTEROP_TRANSPORTS` | subset, e.g. `"ws pipe"`; the others are reported as skipped |
//!
//! Every child process sits in a [`Proc`] guard that stops it on drop, and
//! every wait has a deadline. Run `cargo test --test interop_node -- --nocapture`
//! to see the matrix on success; on failure it is part of the panic output.

#![cfg(all(unix, feature = "bins"))]

mod support;

use std::fmt;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};
use support::{RemoveOnDrop, gen_bytes, pipe_path};

const SERVER_BIN: &str = env!("CARGO_BIN_EXE_openiap-server");
const CLIENT_BIN: &str = env!("CARGO_BIN_EXE_openiap-client");
const INTEROP_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop");
/// The pinned package version; anything else in node_modules is an error.
const NODEAPI_VERSION: &str = "0.0.39";
const MIN_NODE_MAJOR: u32 = 20;

/// Pings per cell.
const PINGS: u32 = 5;
/// Default transfer size: not a multiple of the 256 KiB chunk.
const DEFAULT_SIZE: usize = 2 * 1024 * 1024 + 4321;
/// Largest size accepted from `OPENIAP_INTEROP_SIZE` (node-client's limit).
const MAX_SIZE: usize = 512 * 1024 * 1024;

/// The dev user of `openiap-server` and the one user of `node-server.js`.
const OUR_USER: &str = "dev";
const NODE_USER: &str = "harness";

const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
const STEP_TIMEOUT: Duration = Duration::from_secs(120);
/// node-client.js's own deadline, inside [`STEP_TIMEOUT`].
const NODE_CLIENT_TIMEOUT_S: u32 = 100;
const STOP_GRACE: Duration = Duration::from_secs(5);
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(20);
/// Lines kept per process and characters kept per line.
const MAX_LINES: usize = 10_000;
const MAX_LINE_CHARS: usize = 16 * 1024;
/// Attempts at a free port for a Node server (another process may take it).
const PORT_ATTEMPTS: u32 = 3;

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

// ---------------------------------------------------------------------------
// The matrix
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    Socket,
    Pipe,
    Ws,
    Grpc,
}

impl Transport {
    const ALL: [Self; 4] = [Self::Socket, Self::Pipe, Self::Ws, Self::Grpc];

    fn name(self) -> &'static str {
        match self {
            Self::Socket => "socket",
            Self::Pipe => "pipe",
            Self::Ws => "ws",
            Self::Grpc => "grpc",
        }
    }

    /// The URL prefix a loopback listener of this transport must print.
    fn loopback_prefix(self) -> &'static str {
        match self {
            Self::Socket => "socket://127.0.0.1:",
            Self::Pipe => "pipe://./",
            Self::Ws => "ws://127.0.0.1:",
            Self::Grpc => "grpc://127.0.0.1:",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    Pass(Duration),
    Fail(String),
    Skipped(String),
}

impl Outcome {
    fn from_result(started: Instant, result: Result<(), String>) -> Self {
        match result {
            Ok(()) => Self::Pass(started.elapsed()),
            Err(reason) => Self::Fail(reason),
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            Self::Pass(took) => format!("pass ({:.1} s)", took.as_secs_f64()),
            Self::Fail(_) => "FAIL".to_owned(),
            Self::Skipped(_) => "skipped".to_owned(),
        };
        f.pad(&text)
    }
}

/// One row: a transport in both directions.
struct Row {
    transport: Transport,
    node_to_ours: Outcome,
    ours_to_node: Outcome,
}

const NODE_TO_OURS: &str = "node client -> openiap-server";
const OURS_TO_NODE: &str = "openiap-client -> node server";

fn render_matrix(rows: &[Row], size: usize) -> String {
    let mut out = format!(
        "Node interop matrix (@openiap/nodeapi {NODEAPI_VERSION}, {size} bytes, {PINGS} pings)\n"
    );
    out.push_str(&format!(
        "{:<10} {:<31} {:<31}\n",
        "transport", NODE_TO_OURS, OURS_TO_NODE
    ));
    for row in rows {
        out.push_str(&format!(
            "{:<10} {:<31} {:<31}\n",
            row.transport.name(),
            row.node_to_ours,
            row.ours_to_node
        ));
    }
    for row in rows {
        for (direction, outcome) in [
            (NODE_TO_OURS, &row.node_to_ours),
            (OURS_TO_NODE, &row.ours_to_node),
        ] {
            match outcome {
                Outcome::Fail(reason) => out.push_str(&format!(
                    "\n--- FAIL {} {direction}:\n{reason}\n",
                    row.transport.name()
                )),
                Outcome::Skipped(reason) => out.push_str(&format!(
                    "skipped {} {direction}: {reason}\n",
                    row.transport.name()
                )),
                Outcome::Pass(_) => {}
            }
        }
    }
    out
}

/// How `OPENIAP_INTEROP` asks the matrix to behave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Missing prerequisites fail the test.
    Required,
    /// Missing prerequisites skip the test.
    IfAvailable,
    /// Skip the test.
    Off,
}

fn parse_mode(value: Option<&str>) -> Result<Mode, String> {
    match value.map(str::trim) {
        None | Some("") => Ok(Mode::IfAvailable),
        Some("1") => Ok(Mode::Required),
        Some("0") => Ok(Mode::Off),
        Some(other) => Err(format!("OPENIAP_INTEROP={other:?}: expected 1, 0 or unset")),
    }
}

fn parse_size(value: Option<&str>) -> Result<usize, String> {
    let Some(text) = value else {
        return Ok(DEFAULT_SIZE);
    };
    match text.trim().parse::<usize>() {
        Ok(size) if (1..=MAX_SIZE).contains(&size) => Ok(size),
        Ok(size) => Err(format!(
            "OPENIAP_INTEROP_SIZE={size}: must be 1 to {MAX_SIZE}"
        )),
        Err(e) => Err(format!("OPENIAP_INTEROP_SIZE={text:?}: {e}")),
    }
}

/// The transports selected by `OPENIAP_INTEROP_TRANSPORTS` (all when unset).
fn parse_transports(value: Option<&str>) -> Result<Vec<Transport>, String> {
    let Some(text) = value else {
        return Ok(Transport::ALL.to_vec());
    };
    text.split([' ', ',', '\t'])
        .filter(|word| !word.is_empty())
        .map(|word| {
            Transport::ALL
                .into_iter()
                .find(|t| t.name() == word)
                .ok_or_else(|| {
                    format!(
                        "OPENIAP_INTEROP_TRANSPORTS: unknown transport {word:?} \
                         (expected socket, pipe, ws, grpc)"
                    )
                })
        })
        .collect()
}

fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

#[test]
fn node_interop_matrix() {
    let mode = parse_mode(env_var("OPENIAP_INTEROP").as_deref()).unwrap_or_else(|e| panic!("{e}"));
    if mode == Mode::Off {
        println!("node interop matrix skipped: OPENIAP_INTEROP=0");
        return;
    }
    if let Err(reason) = check_prerequisites() {
        if mode == Mode::Required {
            panic!(
                "node interop matrix cannot run (OPENIAP_INTEROP=1): {reason}\n\
                 install with: (cd tests/interop && npm ci)"
            );
        }
        println!(
            "node interop matrix skipped: {reason}\n\
             install with `(cd tests/interop && npm ci)`; \
             set OPENIAP_INTEROP=1 to make this a failure"
        );
        return;
    }
    let size =
        parse_size(env_var("OPENIAP_INTEROP_SIZE").as_deref()).unwrap_or_else(|e| panic!("{e}"));
    let selected = parse_transports(env_var("OPENIAP_INTEROP_TRANSPORTS").as_deref())
        .unwrap_or_else(|e| panic!("{e}"));

    let mut scratch = Scratch::new("matrix").unwrap_or_else(|e| panic!("{e}"));
    let grpc_skip = server_has_grpc_flag().err();
    let rows = run_matrix(&scratch, size, &selected, grpc_skip.as_deref());
    let report = render_matrix(&rows, size);
    let failed = rows
        .iter()
        .flat_map(|r| [&r.node_to_ours, &r.ours_to_node])
        .filter(|o| matches!(o, Outcome::Fail(_)))
        .count();
    println!("{report}");
    if failed > 0 {
        scratch.keep();
        panic!(
            "{failed} interop cell(s) failed (matrix and reasons above); \
             logs kept in {}",
            scratch.path.display()
        );
    }
}

/// Runs every selected cell, the cells concurrently. `grpc_skip` is the
/// reason the gRPC cells cannot run yet (no gRPC listener in
/// `openiap-server`); they are reported as skipped with it.
fn run_matrix(
    scratch: &Scratch,
    size: usize,
    selected: &[Transport],
    grpc_skip: Option<&str>,
) -> Vec<Row> {
    let skip_reason = |t: Transport| {
        if !selected.contains(&t) {
            Some("not in OPENIAP_INTEROP_TRANSPORTS".to_owned())
        } else if t == Transport::Grpc {
            grpc_skip.map(str::to_owned)
        } else {
            None
        }
    };
    let wanted: Vec<Transport> = Transport::ALL
        .into_iter()
        .filter(|t| skip_reason(*t).is_none())
        .collect();
    let seed = node_default_seed(size);
    let expected_sha = sha256_hex(&gen_bytes(size, seed));
    let source = scratch.path.join(format!("interop-rust-{size}.bin"));
    let source_bytes = gen_bytes(size, seed ^ 0xA5A5_A5A5);
    if let Err(e) = fs::write(&source, &source_bytes) {
        panic!("writing {}: {e}", source.display());
    }
    let source_sha = sha256_hex(&source_bytes);

    // One openiap-server for every node-client cell.
    let our_server = if wanted.is_empty() {
        Err("no transport selected".to_owned())
    } else {
        OurServer::start(scratch, &wanted, grpc_skip.is_none())
    };

    let mut rows: Vec<Row> = Transport::ALL
        .into_iter()
        .map(|transport| {
            let initial = skip_reason(transport)
                .map_or(Outcome::Fail("not run".to_owned()), Outcome::Skipped);
            Row {
                transport,
                node_to_ours: initial.clone(),
                ours_to_node: initial,
            }
        })
        .collect();

    thread::scope(|s| {
        let mut handles = Vec::new();
        for &transport in &wanted {
            let node_cell = {
                let url = match &our_server {
                    Ok(server) => server.url(transport).map(str::to_owned),
                    Err(e) => Err(format!("openiap-server did not start: {e}")),
                };
                let scratch = &scratch.path;
                let expected_sha = expected_sha.as_str();
                let password = our_server
                    .as_ref()
                    .map(|server| server.password.clone())
                    .unwrap_or_default();
                s.spawn(move || {
                    let started = Instant::now();
                    let result = url.and_then(|url| {
                        node_client_cell(&url, &password, scratch, transport, size, expected_sha)
                    });
                    Outcome::from_result(started, result)
                })
            };
            let ours_cell = {
                let scratch = &scratch.path;
                let source = source.as_path();
                let source_bytes = source_bytes.as_slice();
                let source_sha = source_sha.as_str();
                s.spawn(move || {
                    let started = Instant::now();
                    let result =
                        our_client_cell(transport, scratch, source, source_bytes, source_sha);
                    Outcome::from_result(started, result)
                })
            };
            handles.push((transport, node_cell, ours_cell));
        }
        for (transport, node_cell, ours_cell) in handles {
            let join = |h: thread::ScopedJoinHandle<'_, Outcome>| {
                h.join()
                    .unwrap_or_else(|_| Outcome::Fail("the cell's thread panicked".to_owned()))
            };
            if let Some(row) = rows.iter_mut().find(|r| r.transport == transport) {
                row.node_to_ours = join(node_cell);
                row.ours_to_node = join(ours_cell);
            }
        }
    });

    // The server must have survived every client.
    if let Ok(mut server) = our_server
        && let Err(e) = server.still_running()
    {
        for row in rows
            .iter_mut()
            .filter(|r| matches!(r.node_to_ours, Outcome::Pass(_)))
        {
            row.node_to_ours = Outcome::Fail(e.clone());
        }
    }
    rows
}

// ---------------------------------------------------------------------------
// Prerequisites
// ---------------------------------------------------------------------------

fn check_prerequisites() -> Result<(), String> {
    let output = run_to_end(
        Command::new("node").arg("--version"),
        Duration::from_secs(20),
    )
    .map_err(|e| format!("`node` is not usable: {e}"))?;
    let version = output.trim();
    let major = version
        .strip_prefix('v')
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.parse::<u32>().ok())
        .ok_or_else(|| format!("`node --version` printed {version:?}"))?;
    if major < MIN_NODE_MAJOR {
        return Err(format!(
            "node {version} is too old: found major {major}, need {MIN_NODE_MAJOR} or newer"
        ));
    }
    let manifest = Path::new(INTEROP_DIR).join("node_modules/@openiap/nodeapi/package.json");
    let text = fs::read_to_string(&manifest).map_err(|e| {
        format!(
            "tests/interop/node_modules is missing or incomplete ({}: {e})",
            manifest.display()
        )
    })?;
    let installed = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v.get("version").and_then(Value::as_str).map(str::to_owned))
        .ok_or_else(|| format!("{}: no version field", manifest.display()))?;
    if installed != NODEAPI_VERSION {
        return Err(format!(
            "tests/interop/node_modules holds @openiap/nodeapi {installed}, \
             the lockfile pins {NODEAPI_VERSION}: run `npm ci` in tests/interop"
        ));
    }
    Ok(())
}

/// `Ok` when `openiap-server --help` lists `--grpc`; else the reason to skip.
fn server_has_grpc_flag() -> Result<(), String> {
    let help = run_to_end(Command::new(SERVER_BIN).arg("--help"), STARTUP_TIMEOUT)
        .map_err(|e| format!("openiap-server --help failed: {e}"))?;
    if help.contains("--grpc") {
        Ok(())
    } else {
        Err("openiap-server has no --grpc listener yet (gRPC not wired in)".to_owned())
    }
}

// ---------------------------------------------------------------------------
// Node client -> openiap-server
// ---------------------------------------------------------------------------

/// `openiap-server` on port 0 listeners, a scratch data directory and a
/// known dev password.
struct OurServer {
    proc: Proc,
    urls: Vec<(Transport, String)>,
    password: String,
}

impl OurServer {
    /// Starts the server and waits for a `listening` line of every `wanted`
    /// transport. `grpc_flag`: the binary has `--grpc`, which is then always
    /// given (port 0) so its default port is never bound.
    fn start(scratch: &Scratch, wanted: &[Transport], grpc_flag: bool) -> Result<Self, String> {
        let id = unique_id();
        let password = format!("interop-{id}");
        let pipe = format!("oiw-interop-{id}");
        scratch.remove_on_drop(pipe_path(&pipe));
        let mut command = Command::new(SERVER_BIN);
        command
            .args(["--socket", "127.0.0.1:0", "--http", "127.0.0.1:0", "--pipe"])
            .arg(&pipe)
            .arg("--data")
            .arg(scratch.path.join("server-data"))
            .args(["--dev-password", &password])
            .env("RUST_LOG", "info")
            .env_remove("OPENIAP_JWT_SECRET");
        if grpc_flag {
            command.args(["--grpc", "127.0.0.1:0"]);
        }
        let mut proc = Proc::spawn(
            "openiap-server",
            &mut command,
            &scratch.path.join("server.stderr"),
            Stop::Terminate,
        )?;
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let mut urls = Vec::new();
        while wanted.iter().any(|t| !urls.iter().any(|(u, _)| u == t)) {
            let line = match proc.next_line(deadline) {
                Ok(Some(line)) => line,
                Ok(None) => {
                    return Err(format!(
                        "openiap-server exited before listening on every transport; {}",
                        proc.diagnostics()
                    ));
                }
                Err(e) => return Err(format!("{e}; {}", proc.diagnostics())),
            };
            let Some((name, url)) = parse_listening(&line) else {
                continue;
            };
            let Some(transport) = Transport::ALL.into_iter().find(|t| t.name() == name) else {
                continue; // e.g. rest
            };
            if !url.starts_with(transport.loopback_prefix()) {
                return Err(format!(
                    "openiap-server listens on {url}, expected a loopback {} URL",
                    transport.loopback_prefix()
                ));
            }
            urls.push((transport, url.to_owned()));
        }
        Ok(Self {
            proc,
            urls,
            password,
        })
    }

    fn url(&self, transport: Transport) -> Result<&str, String> {
        self.urls
            .iter()
            .find(|(t, _)| *t == transport)
            .map(|(_, url)| url.as_str())
            .ok_or_else(|| {
                format!(
                    "openiap-server printed no `listening {}` line",
                    transport.name()
                )
            })
    }

    fn still_running(&mut self) -> Result<(), String> {
        match self.proc.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!(
                "openiap-server exited ({status}) during the matrix; {}",
                self.proc.diagnostics()
            )),
            Err(e) => Err(format!("openiap-server: wait failed: {e}")),
        }
    }
}

/// Runs node-client.js against our server and checks every step.
fn node_client_cell(
    url: &str,
    password: &str,
    scratch: &Path,
    transport: Transport,
    size: usize,
    expected_sha: &str,
) -> Result<(), String> {
    let label = format!("node-client.js ({})", transport.name());
    let mut command = node_command("node-client.js");
    command
        .args(["--url", url, "--username", OUR_USER, "--password", password])
        .args(["--pings", &PINGS.to_string(), "--size", &size.to_string()])
        .args(["--timeout", &NODE_CLIENT_TIMEOUT_S.to_string()]);
    let stderr = scratch.join(format!("node-client-{}.stderr", transport.name()));
    let mut proc = Proc::spawn(&label, &mut command, &stderr, Stop::Kill)?;
    let status = proc.wait_until(Instant::now() + STEP_TIMEOUT)?;
    let lines = proc.drain(Instant::now() + DRAIN_TIMEOUT);
    check_node_client(&lines, status.success(), PINGS, size, expected_sha)
        .map_err(|e| format!("{e}\nstdout:\n{}\n{}", lines.join("\n"), proc.diagnostics()))
}

/// Checks node-client.js's step lines: every step present, in order, ok,
/// and the transferred bytes hash to `expected_sha`.
fn check_node_client(
    lines: &[String],
    exited_ok: bool,
    pings: u32,
    size: usize,
    expected_sha: &str,
) -> Result<(), String> {
    let steps: Vec<Value> = lines
        .iter()
        .map(|line| {
            serde_json::from_str::<Value>(line)
                .map_err(|e| format!("node-client.js printed a non-JSON line {line:?}: {e}"))
        })
        .collect::<Result<_, _>>()?;
    if let Some(bad) = steps.iter().find(|s| s["ok"] != Value::Bool(true)) {
        return Err(format!("step {} failed: {bad}", bad["step"]));
    }
    if !exited_ok {
        return Err("node-client.js exited non-zero".to_owned());
    }
    let names: Vec<&str> = steps.iter().filter_map(|s| s["step"].as_str()).collect();
    let mut expected = vec!["connect", "signin"];
    expected.extend(std::iter::repeat_n("ping", pings as usize));
    expected.extend(["unknown", "upload", "download", "done"]);
    if names != expected {
        return Err(format!("steps were {names:?}, expected {expected:?}"));
    }
    let step = |name: &str| steps.iter().find(|s| s["step"] == name);
    for ping in steps.iter().filter(|s| s["step"] == "ping") {
        if ping["id"].as_str().is_none_or(str::is_empty) || ping["id"] != ping["rid"] {
            return Err(format!("pong rid does not match the ping id: {ping}"));
        }
    }
    if step("unknown").is_none_or(|s| s["error"].as_str().is_none_or(str::is_empty)) {
        return Err("the unknown command got an error without a message".to_owned());
    }
    let size_json = Value::from(size);
    for name in ["upload", "download"] {
        let Some(s) = step(name) else {
            return Err(format!("no {name} step"));
        };
        if s["sha256"] != expected_sha || s["bytes"] != size_json {
            return Err(format!(
                "{name}: found sha256 {} and {} bytes, expected {expected_sha} and {size}",
                s["sha256"], s["bytes"]
            ));
        }
    }
    if step("download").is_none_or(|s| s["server_checksum"] != expected_sha) {
        return Err(format!(
            "download: server checksum is not {expected_sha}: {:?}",
            step("download")
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// openiap-client -> Node server
// ---------------------------------------------------------------------------

/// A node-server.js for one transport, stopped (stdin EOF, then kill) on drop.
struct NodeServer {
    proc: Proc,
    url: String,
}

impl NodeServer {
    fn start(
        transport: Transport,
        scratch: &Path,
        password: &str,
        pipe: &str,
    ) -> Result<Self, String> {
        let mut last_error = String::new();
        for attempt in 1..=PORT_ATTEMPTS {
            let label = format!("node-server.js ({})", transport.name());
            let mut command = node_command("node-server.js");
            command
                .args(["--transport", transport.name(), "--pipe", pipe])
                .arg("--data")
                .arg(scratch.join(format!("node-data-{}", transport.name())))
                .args(["--password", password, "--username", NODE_USER])
                .args(["--lifetime", "300", "--exit-on-stdin-eof"]);
            if transport != Transport::Pipe {
                command.args(["--port", &free_port()?.to_string()]);
            }
            let stderr = scratch.join(format!("node-server-{}-{attempt}.stderr", transport.name()));
            let mut proc = Proc::spawn(&label, &mut command, &stderr, Stop::CloseStdin)?;
            let deadline = Instant::now() + STARTUP_TIMEOUT;
            match proc.next_line(deadline) {
                Ok(Some(line)) => {
                    if let Some((name, url)) = parse_listening(&line) {
                        if name != transport.name() || !url.starts_with(transport.loopback_prefix())
                        {
                            return Err(format!("{label} printed {line:?}"));
                        }
                        let url = url.to_owned();
                        return Ok(Self { proc, url });
                    }
                    last_error = format!("{label} printed {line:?}; {}", proc.diagnostics());
                    // A port taken between our probe and the bind: try another.
                    if !line.contains("EADDRINUSE") {
                        break;
                    }
                }
                Ok(None) => {
                    last_error = format!("{label} exited before listening; {}", proc.diagnostics());
                    break;
                }
                Err(e) => {
                    last_error = format!("{e}; {}", proc.diagnostics());
                    break;
                }
            }
        }
        Err(last_error)
    }
}

/// Runs our client's ping, upload and download against node-server.js,
/// compares the downloaded bytes, then checks what the Node server saw.
fn our_client_cell(
    transport: Transport,
    scratch: &Path,
    source: &Path,
    source_bytes: &[u8],
    source_sha: &str,
) -> Result<(), String> {
    let id = unique_id();
    let password = format!("node-{id}");
    let pipe = format!("oiw-node-{id}");
    let _pipe_file = RemoveOnDrop(pipe_path(&pipe));
    let mut server = NodeServer::start(transport, scratch, &password, &pipe)?;
    let client = |args: &[&str]| -> Result<Value, String> {
        let mut command = Command::new(CLIENT_BIN);
        command
            .args(["--json", "--url", &server.url, "--username", NODE_USER])
            .args(["--password", &password])
            .args(args)
            .env("RUST_LOG", "info")
            .env_remove("OPENIAP_JWT")
            .env_remove("OPENIAP_URL")
            .env_remove("OPENIAP_USERNAME")
            .env_remove("OPENIAP_PASSWORD");
        let what = format!("openiap-client {} ({})", args.join(" "), transport.name());
        let stderr = scratch.join(format!(
            "client-{}-{}.stderr",
            transport.name(),
            unique_id()
        ));
        let mut proc = Proc::spawn(&what, &mut command, &stderr, Stop::Kill)?;
        let status = proc.wait_until(Instant::now() + STEP_TIMEOUT)?;
        let lines = proc.drain(Instant::now() + DRAIN_TIMEOUT);
        let report = lines
            .last()
            .and_then(|line| serde_json::from_str::<Value>(line).ok());
        match report {
            Some(report) if status.success() => Ok(report),
            _ => Err(format!(
                "{what} failed ({status}): {}\n{}",
                lines.join("\n"),
                proc.diagnostics()
            )),
        }
    };
    let out = scratch.join(format!("download-{}.bin", transport.name()));
    let result = (|| {
        let ping = client(&["ping", "--count", &PINGS.to_string()])?;
        if ping["count"] != PINGS {
            return Err(format!("ping: found {ping}, expected {PINGS} pings"));
        }
        let source_arg = source.to_str().ok_or("scratch path is not UTF-8")?;
        let upload = client(&["upload", source_arg])?;
        let file_id = upload["id"]
            .as_str()
            .filter(|id| !id.is_empty())
            .ok_or_else(|| format!("upload: no file id in {upload}"))?
            .to_owned();
        let base = source.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if upload["filename"] != base || upload["bytes"] != source_bytes.len() {
            return Err(format!(
                "upload: found {upload}, expected filename {base} and {} bytes",
                source_bytes.len()
            ));
        }
        let out_arg = out.to_str().ok_or("scratch path is not UTF-8")?;
        let download = client(&["download", &file_id, "--out", out_arg])?;
        if download["checksum_verified"] != true || download["sha256"] != source_sha {
            return Err(format!(
                "download: found {download}, expected checksum_verified and sha256 {source_sha}"
            ));
        }
        let got = fs::read(&out).map_err(|e| format!("reading {}: {e}", out.display()))?;
        compare_bytes(source_bytes, &got)?;
        Ok(file_id)
    })();
    // Stop the Node server (stdin EOF) and read everything it reported.
    server.proc.stop();
    let events = server.proc.drain(Instant::now() + DRAIN_TIMEOUT);
    let file_id = result.map_err(|e| {
        format!(
            "{e}\nnode-server.js events:\n{}\n{}",
            events.join("\n"),
            server.proc.diagnostics()
        )
    })?;
    check_node_server_events(&events, PINGS, &file_id, source_bytes.len(), source_sha).map_err(
        |e| {
            format!(
                "{e}\nnode-server.js events:\n{}\n{}",
                events.join("\n"),
                server.proc.diagnostics()
            )
        },
    )
}

/// Checks node-server.js's events after our client's three runs: three
/// successful signins, the pings, a checksum-verified upload of our bytes
/// and a download of the same id; no failure and no internal error.
fn check_node_server_events(
    lines: &[String],
    pings: u32,
    file_id: &str,
    size: usize,
    sha: &str,
) -> Result<(), String> {
    let events: Vec<Value> = lines
        .iter()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|v| v.get("event").is_some())
        .collect();
    if let Some(bad) = events
        .iter()
        .find(|e| e["event"] == "internal-error" || e["event"] == "fatal" || e["ok"] == false)
    {
        return Err(format!("node-server.js reported a failure: {bad}"));
    }
    let count = |name: &str| events.iter().filter(|e| e["event"] == name).count();
    let signins = events
        .iter()
        .filter(|e| e["event"] == "signin" && e["ok"] == true && e["username"] == NODE_USER)
        .count();
    if signins != 3 {
        return Err(format!(
            "node-server.js saw {signins} successful signins, expected 3"
        ));
    }
    if count("ping") != pings as usize {
        return Err(format!(
            "node-server.js saw {} pings, expected {pings}",
            count("ping")
        ));
    }
    let size_json = Value::from(size);
    let upload = events
        .iter()
        .find(|e| e["event"] == "upload")
        .ok_or("node-server.js saw no upload")?;
    if upload["ok"] != true
        || upload["id"] != file_id
        || upload["checksum_verified"] != true
        || upload["checksum"] != sha
        || upload["sha256"] != sha
        || upload["bytes"] != size_json
    {
        return Err(format!(
            "node-server.js upload event {upload}, expected id {file_id}, a verified \
             checksum {sha} and {size} bytes"
        ));
    }
    let download = events
        .iter()
        .find(|e| e["event"] == "download")
        .ok_or("node-server.js saw no download")?;
    if download["ok"] != true
        || download["id"] != file_id
        || download["sha256"] != sha
        || download["bytes"] != size_json
    {
        return Err(format!(
            "node-server.js download event {download}, expected id {file_id}, sha256 {sha}"
        ));
    }
    Ok(())
}

fn compare_bytes(expected: &[u8], got: &[u8]) -> Result<(), String> {
    if let Some(at) = expected.iter().zip(got).position(|(a, b)| a != b) {
        return Err(format!(
            "downloaded bytes differ from the upload at offset {at}"
        ));
    }
    if expected.len() != got.len() {
        return Err(format!(
            "downloaded {} bytes, uploaded {}",
            got.len(),
            expected.len()
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Content, names, ports
// ---------------------------------------------------------------------------

/// node-client.js's default seed for a size (`0x5eed + size`, mod 2^32).
fn node_default_seed(size: usize) -> u32 {
    // Truncation is the script's `mod 2^32`.
    0x5eed_u32.wrapping_add(size as u32)
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `listening <transport> <url>` -> `(transport, url)`.
fn parse_listening(line: &str) -> Option<(&str, &str)> {
    let mut words = line.strip_prefix("listening ")?.split_whitespace();
    let transport = words.next()?;
    let url = words.next()?;
    words.next().is_none().then_some((transport, url))
}

fn unique_id() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        NEXT_ID.fetch_add(1, Ordering::Relaxed)
    )
}

/// A loopback port that was free a moment ago (the Node package turns 0 into 80).
fn free_port() -> Result<u16, String> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(|e| format!("binding 127.0.0.1:0: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("local_addr: {e}"))
}

fn node_command(script: &str) -> Command {
    let mut command = Command::new("node");
    command
        .arg(Path::new(INTEROP_DIR).join(script))
        .current_dir(INTEROP_DIR)
        .env("NO_COLOR", "1");
    for var in ["apiurl", "grpcapiurl", "wsapiurl", "jwt"] {
        command.env_remove(var);
    }
    command
}

// ---------------------------------------------------------------------------
// Processes and scratch space
// ---------------------------------------------------------------------------

/// How a [`Proc`] is asked to stop before it is killed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    /// Kill at once.
    Kill,
    /// Close stdin (node-server.js `--exit-on-stdin-eof`), wait, then kill.
    CloseStdin,
    /// SIGTERM (graceful shutdown), wait, then kill.
    Terminate,
}

/// A child process with stdout read line by line on a thread, stderr in a
/// file, stopped on drop.
struct Proc {
    label: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    stderr_path: PathBuf,
    stop: Stop,
}

impl Proc {
    fn spawn(
        label: &str,
        command: &mut Command,
        stderr: &Path,
        stop: Stop,
    ) -> Result<Self, String> {
        let stderr_file =
            fs::File::create(stderr).map_err(|e| format!("creating {}: {e}", stderr.display()))?;
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr_file)
            .spawn()
            .map_err(|e| format!("starting {label}: {e}"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| format!("{label}: no stdout pipe"))?;
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            let mut kept = 0usize;
            for line in BufReader::new(stdout).lines() {
                let Ok(mut line) = line else { break };
                if kept >= MAX_LINES {
                    continue; // keep draining so the child never blocks
                }
                if let Some((cut, _)) = line.char_indices().nth(MAX_LINE_CHARS) {
                    line.truncate(cut);
                }
                kept += 1;
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        Ok(Self {
            label: label.to_owned(),
            child,
            stdin,
            lines,
            stderr_path: stderr.to_owned(),
            stop,
        })
    }

    /// The next stdout line; `Ok(None)` at end of output.
    fn next_line(&mut self, deadline: Instant) -> Result<Option<String>, String> {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.lines.recv_timeout(left) {
            Ok(line) => Ok(Some(line)),
            Err(mpsc::RecvTimeoutError::Disconnected) => Ok(None),
            Err(mpsc::RecvTimeoutError::Timeout) => Err(format!(
                "{}: no output line within the deadline",
                self.label
            )),
        }
    }

    /// Every remaining stdout line, until end of output or `deadline`.
    fn drain(&mut self, deadline: Instant) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(Some(line)) = self.next_line(deadline) {
            out.push(line);
        }
        out
    }

    /// Waits for exit; kills the process when `deadline` passes first.
    fn wait_until(&mut self, deadline: Instant) -> Result<ExitStatus, String> {
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Ok(status),
                Ok(None) if Instant::now() >= deadline => {
                    self.kill();
                    return Err(format!(
                        "{} did not finish within its deadline and was killed; {}",
                        self.label,
                        self.diagnostics()
                    ));
                }
                Ok(None) => thread::sleep(POLL),
                Err(e) => return Err(format!("{}: wait failed: {e}", self.label)),
            }
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Asks the process to stop as its [`Stop`] says, then kills it after
    /// [`STOP_GRACE`]. Idempotent.
    fn stop(&mut self) {
        drop(self.stdin.take());
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        match self.stop {
            Stop::Kill => {}
            Stop::CloseStdin => {
                let _ = self.wait_until(Instant::now() + STOP_GRACE);
            }
            Stop::Terminate => {
                // Our own child, by its id; it has not been reaped (try_wait above).
                let sent = Command::new("kill")
                    .args(["-TERM", &self.child.id().to_string()])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                if sent {
                    let _ = self.wait_until(Instant::now() + STOP_GRACE);
                }
            }
        }
        self.kill();
    }

    /// The tail of the process's stderr, for failure messages.
    fn diagnostics(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = fs::File::open(&self.stderr_path) {
            let _ = file.read_to_string(&mut text);
        }
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines.get(lines.len().saturating_sub(25)..).unwrap_or(&[]);
        if tail.is_empty() {
            return format!("{} wrote nothing to stderr", self.label);
        }
        format!(
            "{} stderr ({}), last {} lines:\n{}",
            self.label,
            self.stderr_path.display(),
            tail.len(),
            tail.join("\n")
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs a command to completion within `timeout`; its stdout on success.
fn run_to_end(command: &mut Command, timeout: Duration) -> Result<String, String> {
    let scratch = Scratch::new("probe")?;
    let label = format!("{command:?}");
    let mut proc = Proc::spawn(&label, command, &scratch.path.join("stderr"), Stop::Kill)?;
    let status = proc.wait_until(Instant::now() + timeout)?;
    let out = proc.drain(Instant::now() + DRAIN_TIMEOUT).join("\n");
    if status.success() {
        Ok(out)
    } else {
        Err(format!(
            "{label} exited with {status}; {}",
            proc.diagnostics()
        ))
    }
}

/// Removes a file (a pipe's socket) on drop.
/// A fresh directory under the system temp dir, removed on drop (unless
/// [`Scratch::keep`] was called) with the extra files registered in it.
/// Declared before the processes that use it, so it is dropped after them.
struct Scratch {
    path: PathBuf,
    extra: std::sync::Mutex<Vec<RemoveOnDrop>>,
    keep: bool,
}

impl Scratch {
    fn new(kind: &str) -> Result<Self, String> {
        let path = std::env::temp_dir().join(format!("openiap-interop-{kind}-{}", unique_id()));
        fs::create_dir_all(&path).map_err(|e| format!("creating {}: {e}", path.display()))?;
        Ok(Self {
            path,
            extra: std::sync::Mutex::default(),
            keep: false,
        })
    }

    /// Leaves the directory (the processes' stderr logs) for inspection.
    fn keep(&mut self) {
        self.keep = true;
    }

    fn remove_on_drop(&self, path: PathBuf) {
        if let Ok(mut extra) = self.extra.lock() {
            extra.push(RemoveOnDrop(path));
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Ok(mut extra) = self.extra.lock() {
            extra.clear();
        }
        if !self.keep {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

// ---------------------------------------------------------------------------
// Unit tests of the harness itself (no Node needed)
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    /// The known answers that selftest.sh checks common.genBytes against
    /// (from shared/vectors): the Rust generator is the same function.
    #[test]
    fn gen_bytes_matches_the_node_generator() {
        let size = 314_573;
        assert_eq!(
            sha256_hex(&gen_bytes(size, node_default_seed(size))),
            "26dd18c04ae197064a5ddc19263bb98fa4096e93d3808401f1dc83776eeead79"
        );
        assert_eq!(
            sha256_hex(&gen_bytes(size, 314_573)),
            "7b58638a6dbbc9d55c26874b1d2c11bf9812e5cae1495a380d98a4d44a0520e0"
        );
        assert_eq!(gen_bytes(7, 1).len(), 7);
    }

    #[test]
    fn listening_lines_parse_and_others_do_not() {
        assert_eq!(
            parse_listening("listening ws ws://127.0.0.1:5/ws/v2"),
            Some(("ws", "ws://127.0.0.1:5/ws/v2"))
        );
        assert_eq!(parse_listening("listening ws"), None);
        assert_eq!(parse_listening("listening ws a b"), None);
        assert_eq!(parse_listening("dev-password x"), None);
        assert_eq!(parse_listening(r#"{"event":"fatal"}"#), None);
    }

    #[test]
    fn mode_size_and_transport_settings_parse() {
        assert_eq!(parse_mode(None), Ok(Mode::IfAvailable));
        assert_eq!(parse_mode(Some("1")), Ok(Mode::Required));
        assert_eq!(parse_mode(Some("0")), Ok(Mode::Off));
        assert!(parse_mode(Some("yes")).is_err());
        assert_eq!(parse_size(None), Ok(DEFAULT_SIZE));
        assert_eq!(parse_size(Some("10")), Ok(10));
        assert!(parse_size(Some("0")).is_err());
        assert!(parse_size(Some("x")).is_err());
        assert_eq!(
            parse_transports(Some("ws, pipe")),
            Ok(vec![Transport::Ws, Transport::Pipe])
        );
        assert!(parse_transports(Some("rest")).is_err());
    }

    fn client_lines(sha: &str, size: usize) -> Vec<String> {
        let mut lines = vec![
            r#"{"step":"connect","ok":true}"#.to_owned(),
            r#"{"step":"signin","ok":true}"#.to_owned(),
        ];
        for i in 0..2 {
            lines.push(format!(
                r#"{{"step":"ping","ok":true,"id":"p{i}","rid":"p{i}"}}"#
            ));
        }
        lines.push(r#"{"step":"unknown","ok":true,"error":"Unknown command"}"#.to_owned());
        lines.push(format!(
            r#"{{"step":"upload","ok":true,"sha256":"{sha}","bytes":{size}}}"#
        ));
        lines.push(format!(
            r#"{{"step":"download","ok":true,"sha256":"{sha}","server_checksum":"{sha}","bytes":{size}}}"#
        ));
        lines.push(r#"{"step":"done","ok":true}"#.to_owned());
        lines
    }

    #[test]
    fn node_client_check_accepts_a_full_run_only() {
        let good = client_lines("ab", 9);
        assert_eq!(check_node_client(&good, true, 2, 9, "ab"), Ok(()));
        assert!(check_node_client(&good, false, 2, 9, "ab").is_err());
        assert!(check_node_client(&good, true, 3, 9, "ab").is_err());
        assert!(check_node_client(&good, true, 2, 8, "ab").is_err());
        assert!(check_node_client(&good, true, 2, 9, "cd").is_err());
        let mut missing_done = good.clone();
        missing_done.pop();
        assert!(check_node_client(&missing_done, true, 2, 9, "ab").is_err());
        let mut bad_rid = good.clone();
        bad_rid[2] = r#"{"step":"ping","ok":true,"id":"p0","rid":"zz"}"#.to_owned();
        assert!(check_node_client(&bad_rid, true, 2, 9, "ab").is_err());
        let mut failed = good;
        failed.insert(5, r#"{"step":"upload","ok":false,"error":"x"}"#.to_owned());
        assert!(
            check_node_client(&failed, true, 2, 9, "ab")
                .is_err_and(|e| e.contains("step \"upload\" failed"))
        );
    }

    fn server_events(id: &str, sha: &str, size: usize) -> Vec<String> {
        let mut lines = vec!["listening ws ws://127.0.0.1:1/ws/v2".to_owned()];
        for _ in 0..3 {
            lines.push(r#"{"event":"signin","ok":true,"username":"harness"}"#.to_owned());
        }
        lines.push(r#"{"event":"ping","id":"1"}"#.to_owned());
        lines.push(format!(
            r#"{{"event":"upload","ok":true,"id":"{id}","bytes":{size},"sha256":"{sha}","checksum":"{sha}","checksum_verified":true}}"#
        ));
        lines.push(format!(
            r#"{{"event":"download","ok":true,"id":"{id}","bytes":{size},"sha256":"{sha}"}}"#
        ));
        lines.push(r#"{"event":"exit","reason":"stdin-eof"}"#.to_owned());
        lines
    }

    #[test]
    fn node_server_check_requires_a_verified_upload_and_download() {
        let good = server_events("f1", "ab", 9);
        assert_eq!(check_node_server_events(&good, 1, "f1", 9, "ab"), Ok(()));
        assert!(check_node_server_events(&good, 2, "f1", 9, "ab").is_err());
        assert!(check_node_server_events(&good, 1, "f2", 9, "ab").is_err());
        assert!(check_node_server_events(&good, 1, "f1", 9, "cd").is_err());
        let unverified: Vec<String> = good
            .iter()
            .map(|l| {
                l.replace(
                    r#""checksum_verified":true"#,
                    r#""checksum_verified":false"#,
                )
            })
            .collect();
        assert!(check_node_server_events(&unverified, 1, "f1", 9, "ab").is_err());
        let mut crashed = good;
        crashed.push(r#"{"event":"internal-error","error":"boom"}"#.to_owned());
        assert!(check_node_server_events(&crashed, 1, "f1", 9, "ab").is_err());
    }

    #[test]
    fn compare_bytes_reports_offset_and_length() {
        assert_eq!(compare_bytes(b"abc", b"abc"), Ok(()));
        assert!(compare_bytes(b"abc", b"abd").is_err_and(|e| e.contains("offset 2")));
        assert!(compare_bytes(b"abc", b"ab").is_err_and(|e| e.contains("2 bytes")));
    }

    #[test]
    fn matrix_lists_every_cell_and_every_reason() {
        let rows = [Row {
            transport: Transport::Grpc,
            node_to_ours: Outcome::Fail("it broke".to_owned()),
            ours_to_node: Outcome::Skipped("not wired".to_owned()),
        }];
        let text = render_matrix(&rows, 10);
        assert!(text.contains("grpc"));
        assert!(text.contains("FAIL"));
        assert!(text.contains("it broke"));
        assert!(text.contains("skipped grpc openiap-client -> node server: not wired"));
    }
}
