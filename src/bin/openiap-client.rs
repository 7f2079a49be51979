//! `openiap-client`: ping, upload, download, bench, and a self-contained demo.
//!
//! `demo` starts the reference server in-process on ephemeral loopback
//! ports with a temporary data directory and, over every transport, signs
//! in, pings, uploads a generated file with its checksum and downloads it
//! again, then prints one row per transport. Any failure exits non-zero.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use openiap_wire::client::{Client, Direction, Progress, UploadOptions, bench};
use openiap_wire::server::{DEV_USERNAME, Server, ServerConfig};
use openiap_wire::transport::Endpoint;
use serde_json::json;

/// The OpenIAP Flow reference client.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Server URL: socket://HOST:PORT, pipe://./NAME, ws://HOST:PORT/ws/v2 or grpc://HOST:PORT.
    #[arg(long, env = "OPENIAP_URL", default_value = "socket://127.0.0.1:50052")]
    url: String,
    /// Username for signin.
    #[arg(long, env = "OPENIAP_USERNAME", default_value = "dev")]
    username: String,
    /// Password for signin.
    #[arg(long, env = "OPENIAP_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// Sign in with this token instead of a password.
    #[arg(long, env = "OPENIAP_JWT", hide_env_values = true)]
    jwt: Option<String>,
    /// Machine-readable output: one JSON object.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Ping round trips.
    Ping {
        /// How many pings.
        #[arg(long, default_value_t = 1)]
        count: u32,
    },
    /// Upload a file with its SHA-256 checksum.
    Upload {
        /// The file.
        file: PathBuf,
        /// Send no checksum (the file is read once instead of twice; the
        /// server cannot check what arrived).
        #[arg(long)]
        no_checksum: bool,
    },
    /// Download a file by id; nothing is written unless the checksum passes.
    Download {
        /// The file id.
        id: String,
        /// Where to write it (default: the server's filename in the current directory).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Ping rate and upload/download throughput against --url.
    Bench {
        /// Size of the file uploaded and downloaded, in MiB.
        #[arg(long, default_value_t = 64)]
        size_mib: u32,
        /// Pings.
        #[arg(long, default_value_t = 1000)]
        pings: u32,
        /// Upload without a checksum (times the upload without the hashing
        /// pass; the download is checked as always).
        #[arg(long)]
        no_checksum: bool,
    },
    /// Start a server in-process and exercise every transport.
    Demo {
        /// Size of the file uploaded and downloaded, in MiB.
        #[arg(long, default_value_t = 64)]
        size_mib: u32,
        /// Pings per transport.
        #[arg(long, default_value_t = 1000)]
        pings: u32,
    },
}

type Failure = Box<dyn std::error::Error>;

async fn signed_in(args: &Args) -> Result<Client, Failure> {
    let mut client = Client::connect(&args.url).await?;
    match (&args.jwt, &args.password) {
        (Some(jwt), _) => client.signin_jwt(jwt).await?,
        (None, Some(password)) => client.signin(&args.username, password).await?,
        (None, None) => return Err("give --password or --jwt (or OPENIAP_PASSWORD)".into()),
    };
    Ok(client)
}

/// Shows a one-line progress bar on stderr during transfers, when stderr is
/// a terminal and the output is not `--json`. Returns whether it did, so
/// the caller ends the line afterwards.
fn show_progress(client: &mut Client, args: &Args) -> bool {
    use std::io::{IsTerminal, Write};
    if args.json || !std::io::stderr().is_terminal() {
        return false;
    }
    let mut last: Option<Instant> = None;
    client.set_progress(move |p: Progress| {
        let finished = p.total == Some(p.done);
        if !finished && last.is_some_and(|at| at.elapsed() < Duration::from_millis(100)) {
            return;
        }
        last = Some(Instant::now());
        let verb = match p.direction {
            Direction::Upload => "upload",
            _ => "download",
        };
        let mib = |bytes: u64| bytes as f64 / f64::from(1u32 << 20);
        let line = match p.total {
            Some(total) if total > 0 => {
                let width = 30;
                let filled = usize::try_from(p.done.min(total) * width / total).unwrap_or(0);
                format!(
                    "{verb} [{}{}] {:.1}/{:.1} MiB",
                    "#".repeat(filled),
                    " ".repeat(30 - filled.min(30)),
                    mib(p.done),
                    mib(total)
                )
            }
            _ => format!("{verb} {:.1} MiB", mib(p.done)),
        };
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r{line}");
        let _ = err.flush();
    });
    true
}

async fn run(args: &Args) -> Result<serde_json::Value, Failure> {
    match &args.command {
        Command::Ping { count } => {
            let mut client = signed_in(args).await?;
            let started = Instant::now();
            let mut rtts = Vec::new();
            for _ in 0..*count {
                rtts.push(client.ping().await?.as_secs_f64() * 1000.0);
            }
            let elapsed = started.elapsed();
            client.close().await?;
            let mean = rtts.iter().sum::<f64>() / f64::from((*count).max(1));
            Ok(
                json!({"command": "ping", "count": count, "mean_rtt_ms": mean,
                "pings_per_s": f64::from(*count) / elapsed.as_secs_f64().max(1e-9)}),
            )
        }
        Command::Upload { file, no_checksum } => {
            let mut client = signed_in(args).await?;
            let bar = show_progress(&mut client, args);
            let started = Instant::now();
            let options = UploadOptions::new().checksum(!no_checksum);
            let reply = client.upload_with(file, &options).await;
            if bar {
                eprintln!();
            }
            let reply = reply?;
            let elapsed = started.elapsed();
            client.close().await?;
            let bytes = std::fs::metadata(file)?.len();
            Ok(
                json!({"command": "upload", "id": reply.id, "filename": reply.filename,
                "bytes": bytes, "checksum": !no_checksum,
                "mib_per_s": bench::mib_per_s(bytes, elapsed)}),
            )
        }
        Command::Download { id, out } => {
            let mut client = signed_in(args).await?;
            let started = Instant::now();
            let target = out
                .clone()
                .unwrap_or_else(|| PathBuf::from(format!("{id}.download")));
            let bar = show_progress(&mut client, args);
            let done = client.download(id, &target).await;
            if bar {
                eprintln!();
            }
            let done = done?;
            let elapsed = started.elapsed();
            client.close().await?;
            let mut path = done.path.clone();
            if out.is_none() {
                // Name it as the server does; the name is a plain base name.
                let name = Path::new(&done.response.filename)
                    .file_name()
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from(id));
                if name.exists() {
                    std::fs::remove_file(&done.path)?;
                    return Err(format!(
                        "refusing to overwrite {}; choose a path with --out",
                        name.display()
                    )
                    .into());
                }
                std::fs::rename(&done.path, &name)?;
                path = name;
            }
            Ok(
                json!({"command": "download", "id": id, "path": path.display().to_string(),
                "bytes": done.summary.bytes, "sha256": done.summary.sha256,
                "checksum_verified": done.summary.checksum_verified,
                "mib_per_s": bench::mib_per_s(done.summary.bytes, elapsed)}),
            )
        }
        Command::Bench {
            size_mib,
            pings,
            no_checksum,
        } => {
            let options = UploadOptions::new().checksum(!no_checksum);
            bench(args, *size_mib, *pings, &options).await
        }
        Command::Demo { size_mib, pings } => demo(*size_mib, *pings, args.json).await,
    }
}

/// Pings, a checksummed upload of `source` and its download: one table row.
async fn measure(
    client: &mut Client,
    pings: u32,
    source: &Path,
    source_sha: &str,
    work: &Path,
    upload: &UploadOptions,
) -> Result<serde_json::Value, Failure> {
    let m = bench::measure_with(client, pings, source, source_sha, work, upload).await?;
    Ok(json!({"transport": m.transport, "url": m.url,
        "pings": m.pings, "pings_per_s": m.pings_per_s(), "bytes": m.bytes,
        "upload_checksum": m.upload_checksum,
        "upload_mib_per_s": m.upload_mib_per_s(), "download_mib_per_s": m.download_mib_per_s(),
        "checksum_ok": m.checksum_ok}))
}

async fn demo_transport(
    endpoint: &Endpoint,
    password: &str,
    pings: u32,
    source: &Path,
    source_sha: &str,
    work: &Path,
) -> Result<serde_json::Value, Failure> {
    let mut client = Client::connect(&endpoint.to_string()).await?;
    client.signin(DEV_USERNAME, password).await?;
    let upload = UploadOptions::default();
    let row = measure(&mut client, pings, source, source_sha, work, &upload).await?;
    client.close().await?;
    Ok(row)
}

fn print_header(size_mib: u32, pings: u32) {
    println!("{size_mib} MiB file, {pings} pings per transport");
    println!(
        "{:<10} {:>12} {:>14} {:>16}  checksum",
        "transport", "pings/s", "upload MiB/s", "download MiB/s"
    );
}

fn print_row(transport: &str, row: &serde_json::Value) {
    match row.get("error") {
        Some(error) => println!("{transport:<10} FAILED: {error}"),
        None => println!(
            "{:<10} {:>12.0} {:>14.1} {:>16.1}  {}",
            transport,
            row["pings_per_s"].as_f64().unwrap_or(0.0),
            row["upload_mib_per_s"].as_f64().unwrap_or(0.0),
            row["download_mib_per_s"].as_f64().unwrap_or(0.0),
            if row["checksum_ok"].as_bool().unwrap_or(false) {
                "ok"
            } else {
                "FAILED"
            }
        ),
    }
}

/// A fresh scratch directory under the system temp dir.
fn scratch_dir(kind: &str) -> std::io::Result<(PathBuf, String)> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tag = format!("{}-{nanos:x}", std::process::id());
    let dir = std::env::temp_dir().join(format!("openiap-{kind}-{tag}"));
    std::fs::create_dir_all(&dir)?;
    Ok((dir, tag))
}

async fn bench(
    args: &Args,
    size_mib: u32,
    pings: u32,
    upload: &UploadOptions,
) -> Result<serde_json::Value, Failure> {
    let mut client = signed_in(args).await?;
    let (work, _) = scratch_dir("bench")?;
    let result = async {
        let source = work.join("bench.bin");
        bench::write_content(&source, u64::from(size_mib) << 20)?;
        let sha = bench::file_sha256(&source)?;
        measure(&mut client, pings, &source, &sha, &work, upload).await
    }
    .await;
    let _ = std::fs::remove_dir_all(&work);
    client.close().await?;
    let row = result?;
    if !args.json {
        print_header(size_mib, pings);
        print_row(row["transport"].as_str().unwrap_or("?"), &row);
        if !upload.checksum {
            println!("(upload without a checksum)");
        }
    }
    if row["checksum_ok"].as_bool() != Some(true) {
        return Err(format!("bench failed: {row}").into());
    }
    Ok(row)
}

async fn demo(size_mib: u32, pings: u32, quiet: bool) -> Result<serde_json::Value, Failure> {
    let (work, tag) = scratch_dir("demo")?;
    let result = demo_in(&work, &tag, size_mib, pings, quiet).await;
    let _ = std::fs::remove_dir_all(&work);
    result
}

async fn demo_in(
    work: &Path,
    tag: &str,
    size_mib: u32,
    pings: u32,
    quiet: bool,
) -> Result<serde_json::Value, Failure> {
    let password = format!("demo-{tag}");
    let mut config = ServerConfig::new(work.join("data"));
    config.dev_password = Some(password.clone());
    config.listen = vec![
        "socket://127.0.0.1:0".parse()?,
        Endpoint::pipe(&format!("openiap-demo-{tag}"))?,
        "ws://127.0.0.1:0/ws/v2".parse()?,
        "grpc://127.0.0.1:0".parse()?,
    ];
    let server = Server::bind(config).await?;
    let endpoints = server.endpoints();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server_task = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    let source = work.join("demo.bin");
    bench::write_content(&source, u64::from(size_mib) << 20)?;
    let source_sha = bench::file_sha256(&source)?;
    if !quiet {
        print!("openiap-wire demo: ");
        print_header(size_mib, pings);
    }
    let mut rows = Vec::new();
    let mut all_ok = true;
    for endpoint in &endpoints {
        let row = match demo_transport(endpoint, &password, pings, &source, &source_sha, work).await
        {
            Ok(row) => row,
            Err(e) => json!({"transport": endpoint.transport(), "error": e.to_string(),
                    "checksum_ok": false}),
        };
        all_ok &= row["checksum_ok"].as_bool().unwrap_or(false);
        if !quiet {
            print_row(endpoint.transport(), &row);
        }
        rows.push(row);
    }
    let _ = stop.send(());
    let _ = server_task.await;
    let report = json!({"command": "demo", "size_mib": size_mib, "pings": pings,
        "transports": rows, "ok": all_ok});
    if all_ok {
        Ok(report)
    } else {
        Err(format!("demo failed: {report}").into())
    }
}

/// One connection needs one thread: a current-thread runtime wakes the
/// task that waits for a reply on the thread that polled the socket, with no
/// hand-over between threads (a ping round trip is shorter). The demo also
/// runs the server, so it gets a worker per core.
fn runtime(command: &Command) -> std::io::Result<tokio::runtime::Runtime> {
    match command {
        Command::Demo { .. } => tokio::runtime::Builder::new_multi_thread(),
        _ => tokio::runtime::Builder::new_current_thread(),
    }
    .enable_all()
    .build()
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let args = Args::parse();
    let outcome = match runtime(&args.command) {
        Ok(rt) => rt.block_on(run(&args)),
        Err(e) => Err(e.into()),
    };
    match outcome {
        Ok(report) => {
            if args.json {
                println!("{report}");
            } else if !matches!(args.command, Command::Demo { .. } | Command::Bench { .. }) {
                println!("{report:#}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            if args.json {
                println!("{}", json!({"ok": false, "error": e.to_string()}));
            } else {
                eprintln!("error: {e}");
            }
            ExitCode::FAILURE
        }
    }
}
