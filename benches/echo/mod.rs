//! The floors of a ping round trip: a 64-byte message written and read back
//! over a loopback socket (TCP with `TCP_NODELAY`, or Unix) to an echo in
//! another process (the bench binary in its `raw-echo` mode), no protocol.
//!
//! Three IO models are measured, so a missed ping target can be split into
//! what the protocol costs and what the IO model costs:
//! - [`EchoIo::Blocking`]: blocking std IO on both sides, two syscalls per
//!   round trip and side (the physical limit of the host);
//! - [`EchoIo::Tokio`]: the IO model of our binaries, a multi-thread tokio
//!   runtime serving the echo from a spawned task (as `openiap-server` does
//!   by default) and a current-thread runtime driving the client (as
//!   `openiap-client` does); each wait goes through epoll;
//! - [`EchoIo::BlockingClient`]: the tokio echo served, a blocking client:
//!   the most a blocking client of our tokio server could reach.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::{Duplex, Failure, Sock};

/// Size of the message: about a framed ping envelope.
pub(crate) const PING_BYTES: usize = 64;

/// How both ends of an echo do their IO.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EchoIo {
    /// Blocking std sockets.
    Blocking,
    /// tokio sockets: a multi-thread runtime for the echo, a current-thread
    /// runtime for the client.
    Tokio,
    /// The echo of [`Self::Tokio`], the client of [`Self::Blocking`].
    BlockingClient,
}

impl EchoIo {
    /// The word of this IO model on the command line.
    pub(crate) fn word(self) -> &'static str {
        match self {
            Self::Blocking => "blocking",
            Self::Tokio => "tokio",
            Self::BlockingClient => "blocking-client",
        }
    }

    /// Whether the client side blocks (the echo side blocks only in
    /// [`Self::Blocking`]).
    fn client_blocks(self) -> bool {
        self != Self::Tokio
    }

    fn parse(word: Option<&str>) -> Option<Self> {
        match word {
            Some("blocking") => Some(Self::Blocking),
            Some("tokio") => Some(Self::Tokio),
            Some("blocking-client") => Some(Self::BlockingClient),
            _ => None,
        }
    }
}

/// `count` round trips to an echo that this binary starts in its
/// `raw-echo` mode; returns round trips per second.
pub(crate) fn round_trips(sock: Sock, io: EchoIo, count: u32, dir: &Path) -> Result<f64, Failure> {
    let socket_path = dir.join(format!("echo-{}.sock", io.word()));
    let _ = std::fs::remove_file(&socket_path);
    let mut command = Command::new(std::env::current_exe()?);
    command.args(["raw-echo", io.word(), sock.name()]);
    if sock == Sock::Unix {
        command.arg(&socket_path);
    }
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut ready = String::new();
    let rate = match child.stdout.take() {
        Some(stdout) => BufReader::new(stdout)
            .read_line(&mut ready)
            .map_err(Failure::from)
            .and_then(|_| {
                if io.client_blocks() {
                    blocking_client(sock, ready.trim(), count)
                } else {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_io()
                        .build()?
                        .block_on(tokio_client(sock, ready.trim(), count))
                }
            }),
        None => Err("no stdout".into()),
    };
    // After a success the echo ends at the EOF that the client's drop sent;
    // after a failure it may still wait to accept, so it is stopped.
    if rate.is_err() {
        let _ = child.kill();
    }
    let _ = child.wait();
    let _ = std::fs::remove_file(&socket_path);
    rate
}

fn per_second(count: u32, started: Instant) -> f64 {
    f64::from(count) / started.elapsed().as_secs_f64().max(1e-9)
}

fn blocking_client(sock: Sock, address: &str, count: u32) -> Result<f64, Failure> {
    let mut stream: Box<dyn Duplex> = match sock {
        Sock::Tcp => {
            let stream = std::net::TcpStream::connect(address)?;
            stream.set_nodelay(true)?;
            Box::new(stream)
        }
        Sock::Unix => Box::new(std::os::unix::net::UnixStream::connect(address)?),
    };
    let mut buf = [7u8; PING_BYTES];
    let started = Instant::now();
    for _ in 0..count {
        stream.write_all(&buf)?;
        stream.read_exact(&mut buf)?;
    }
    Ok(per_second(count, started))
}

async fn tokio_client(sock: Sock, address: &str, count: u32) -> Result<f64, Failure> {
    let mut stream: Box<dyn AsyncReadWrite> = match sock {
        Sock::Tcp => {
            let stream = tokio::net::TcpStream::connect(address).await?;
            stream.set_nodelay(true)?;
            Box::new(stream)
        }
        Sock::Unix => Box::new(tokio::net::UnixStream::connect(address).await?),
    };
    let mut buf = [7u8; PING_BYTES];
    let started = Instant::now();
    for _ in 0..count {
        stream.write_all(&buf).await?;
        stream.read_exact(&mut buf).await?;
    }
    Ok(per_second(count, started))
}

trait AsyncReadWrite: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> AsyncReadWrite for T {}

const ECHO_USAGE: &str = "raw-echo blocking|tokio|blocking-client tcp | raw-echo blocking|tokio|blocking-client unix PATH";

/// The `raw-echo` mode: accepts one connection (TCP on a free loopback
/// port, or the Unix socket at PATH), prints its address once listening,
/// and echoes [`PING_BYTES`]-byte messages until EOF.
pub(crate) fn echo_mode(args: &[String]) -> Result<(), Failure> {
    let io = EchoIo::parse(args.first().map(String::as_str)).ok_or(ECHO_USAGE)?;
    let sock = Sock::parse(args.get(1).map(String::as_str)).ok_or(ECHO_USAGE)?;
    let path = match sock {
        Sock::Tcp => None,
        Sock::Unix => Some(args.get(2).ok_or(ECHO_USAGE)?.as_str()),
    };
    match io {
        EchoIo::Blocking => blocking_echo(path),
        EchoIo::Tokio | EchoIo::BlockingClient => tokio::runtime::Builder::new_multi_thread()
            .enable_io()
            .build()?
            .block_on(tokio_echo(path)),
    }
}

fn blocking_echo(unix_path: Option<&str>) -> Result<(), Failure> {
    let mut stream: Box<dyn Duplex> = match unix_path {
        None => {
            let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
            println!("{}", listener.local_addr()?);
            let stream = listener.accept()?.0;
            stream.set_nodelay(true)?;
            Box::new(stream)
        }
        Some(path) => {
            let listener = std::os::unix::net::UnixListener::bind(path)?;
            println!("{path}");
            Box::new(listener.accept()?.0)
        }
    };
    let mut buf = [0u8; PING_BYTES];
    while stream.read_exact(&mut buf).is_ok() {
        stream.write_all(&buf)?;
    }
    Ok(())
}

async fn tokio_echo(unix_path: Option<&str>) -> Result<(), Failure> {
    let mut stream: Box<dyn AsyncReadWrite> = match unix_path {
        None => {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            println!("{}", listener.local_addr()?);
            let stream = listener.accept().await?.0;
            stream.set_nodelay(true)?;
            Box::new(stream)
        }
        Some(path) => {
            let listener = tokio::net::UnixListener::bind(path)?;
            println!("{path}");
            Box::new(listener.accept().await?.0)
        }
    };
    // Served from a spawned task, as the server serves each connection.
    let echo = tokio::spawn(async move {
        let mut buf = [0u8; PING_BYTES];
        while stream.read_exact(&mut buf).await.is_ok() {
            stream.write_all(&buf).await?;
        }
        Ok::<_, std::io::Error>(())
    });
    Ok(echo.await??)
}

const PINGS_USAGE: &str = "raw-pings blocking|tokio|blocking-client tcp|unix COUNT DIR";

/// The `raw-pings` mode: prints the rate of [`round_trips`]; run under
/// `taskset`, so that the echo it starts shares the CPU.
pub(crate) fn pings_mode(args: &[String]) -> Result<(), Failure> {
    let io = EchoIo::parse(args.first().map(String::as_str)).ok_or(PINGS_USAGE)?;
    let sock = Sock::parse(args.get(1).map(String::as_str)).ok_or(PINGS_USAGE)?;
    let count: u32 = args.get(2).ok_or(PINGS_USAGE)?.parse()?;
    let dir = Path::new(args.get(3).ok_or(PINGS_USAGE)?);
    println!("{}", round_trips(sock, io, count, dir)?);
    Ok(())
}
