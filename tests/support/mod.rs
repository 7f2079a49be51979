//! Helpers shared by the integration tests (`mod support;` in each test
//! file that uses them).
//!
//! Every test file is its own crate and uses only some of these helpers, so
//! the rest would be reported as dead code in that crate; the allow below is
//! for that alone.
#![allow(dead_code)]

use std::path::PathBuf;

/// xorshift32 (shifts 13, 17, 5) from `state`, each new state appended as 4
/// little-endian bytes, cut to `len`. `state` must not be 0 (the stream
/// would be all zeros); callers derive it from their seed.
pub(crate) fn xorshift32_bytes(len: usize, state: u32) -> Vec<u8> {
    assert_ne!(state, 0, "xorshift32 needs a non-zero state");
    let mut x = state;
    words_to_bytes(len, || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x.to_le_bytes()
    })
}

/// xorshift64 (shifts 13, 7, 17) from `state`, each new state appended as
/// 8 little-endian bytes, cut to `len`. `state` must not be 0.
pub(crate) fn xorshift64_bytes(len: usize, state: u64) -> Vec<u8> {
    assert_ne!(state, 0, "xorshift64 needs a non-zero state");
    let mut x = state;
    words_to_bytes(len, || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x.to_le_bytes()
    })
}

/// `next()`'s words one after another, cut to `len` bytes.
fn words_to_bytes<const N: usize>(len: usize, mut next: impl FnMut() -> [u8; N]) -> Vec<u8> {
    let mut out = Vec::with_capacity(len.saturating_add(N));
    while out.len() < len {
        out.extend_from_slice(&next());
    }
    out.truncate(len);
    out
}

/// The deterministic content generator of the captures and of the Node
/// peer's `common.genBytes` (shared/vectors/README.md): xorshift32 from
/// `seed ^ 0x9E3779B9` (1 if that is 0), cut to `size`.
pub(crate) fn gen_bytes(size: usize, seed: u32) -> Vec<u8> {
    let state = seed ^ 0x9E37_79B9;
    xorshift32_bytes(size, if state == 0 { 1 } else { state })
}

/// A file removed when this guard drops, on a panic too. For paths a test
/// makes outside its scratch directory, such as the Unix socket of a pipe
/// listener in a server process that the test kills.
pub(crate) struct RemoveOnDrop(pub(crate) PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The Unix socket path of pipe `name` (`/tmp/CoreFxPipe_NAME`), as the
/// library computes it.
#[cfg(feature = "transport")]
pub(crate) fn pipe_path(name: &str) -> PathBuf {
    openiap_wire::transport::Endpoint::pipe(name)
        .unwrap_or_else(|e| panic!("pipe name {name:?}: {e}"))
        .pipe_path()
        .expect("a pipe endpoint has a socket path")
}

/// An `openiap-server` child started by [`spawn_server`].
#[cfg(feature = "transport")]
pub(crate) struct ServerChild {
    pub(crate) child: std::process::Child,
    /// (transport, client URL) of the socket, pipe, ws and grpc listeners,
    /// as the server printed them.
    pub(crate) urls: Vec<(String, String)>,
    /// The rest of its stdout, to keep open so that the server never
    /// writes to a closed pipe.
    pub(crate) stdout: std::io::BufReader<std::process::ChildStdout>,
    /// The pipe listener's Unix socket: a server killed with SIGKILL cannot
    /// remove it, so this guard does. Made before the spawn, so that a
    /// failed start removes it too.
    pub(crate) pipe_file: RemoveOnDrop,
}

/// Spawns the `openiap-server` binary at `bin` with its socket, ws and gRPC
/// listeners on ephemeral loopback ports and its pipe listener on `pipe`,
/// data in `data`, `password` as the dev password, `RUST_LOG=rust_log` and
/// stderr into the file `log`; then reads its stdout up to the `listening`
/// lines of those four transports. If the server ends before that, kills
/// it and panics with its log.
#[cfg(feature = "transport")]
pub(crate) fn spawn_server(
    bin: &str,
    pipe: &str,
    data: &std::path::Path,
    password: &str,
    rust_log: &str,
    log: &std::path::Path,
) -> ServerChild {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    const LISTENERS: [&str; 4] = ["socket", "pipe", "ws", "grpc"];

    let pipe_file = RemoveOnDrop(pipe_path(pipe));
    let mut child = Command::new(bin)
        .args(["--grpc", "127.0.0.1:0", "--socket", "127.0.0.1:0"])
        .args(["--http", "127.0.0.1:0", "--pipe", pipe])
        .arg("--data")
        .arg(data)
        .args(["--dev-password", password])
        .env("RUST_LOG", rust_log)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut urls = Vec::new();
    while urls.len() < LISTENERS.len() {
        let mut line = String::new();
        if stdout.read_line(&mut line).unwrap() == 0 {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "server ended before listing its endpoints:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        let mut words = line.split_whitespace();
        if let (Some("listening"), Some(transport), Some(url)) =
            (words.next(), words.next(), words.next())
            && LISTENERS.contains(&transport)
        {
            urls.push((transport.to_owned(), url.to_owned()));
        }
    }
    ServerChild {
        child,
        urls,
        stdout,
        pipe_file,
    }
}
