//! `openiap-server`: the reference server on socket, pipe, WebSocket,
//! gRPC and (experimental, beside WebSocket) REST.
//!
//! Prints one `listening <transport> <client-url>` line per listener on
//! stdout (real ports), then `dev-password <pw>` when the password was
//! generated. Logs go to stderr (`RUST_LOG` filters them). Stops on Ctrl-C
//! or SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use openiap_wire::server::{DEFAULT_MAX_UPLOAD_BYTES, Server, ServerConfig};
use openiap_wire::transport::Endpoint;

/// The OpenIAP Flow reference server.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// gRPC listener for grpc:// clients, plaintext HTTP/2 (`off` disables it).
    #[arg(long, default_value = "127.0.0.1:50051")]
    grpc: String,
    /// TCP listener for socket:// clients (`off` disables it).
    #[arg(long, default_value = "127.0.0.1:50052")]
    socket: String,
    /// Pipe name for pipe:// clients, a Unix socket at /tmp/CoreFxPipe_NAME (`off` disables it).
    #[arg(long, default_value = "openiap")]
    pipe: String,
    /// HTTP listener: WebSocket at ws://ADDR/ws/v2 and REST (experimental) at
    /// http://ADDR/api/v2 (`off` disables it).
    #[arg(long, default_value = "127.0.0.1:8080")]
    http: String,
    /// Data directory: token secret and uploaded files.
    #[arg(long, default_value = "./openiap-data")]
    data: PathBuf,
    /// Users file: one `username:password` per line (`#` comments). Without
    /// it the only user is `dev`.
    #[arg(long)]
    users: Option<PathBuf>,
    /// Password of the user `dev` (without --users); generated and printed when unset.
    #[arg(long, env = "OPENIAP_DEV_PASSWORD", hide_env_values = true)]
    dev_password: Option<String>,
    /// Token signing secret; default: DATA/jwt.secret, generated on first start.
    #[arg(long, env = "OPENIAP_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// Largest upload accepted, in bytes (`off` for no limit).
    #[arg(long, default_value_t = DEFAULT_MAX_UPLOAD_BYTES.to_string())]
    max_upload_bytes: String,
    /// Runtime worker threads: 0 = tokio's default (one per core, or
    /// TOKIO_WORKER_THREADS); 1 = everything on one thread (faster pings:
    /// no wake-ups across threads); N = N workers. File IO runs on the
    /// blocking pool in every case.
    #[arg(long, default_value_t = 0)]
    worker_threads: usize,
}

/// `--max-upload-bytes`: a byte count or `off`.
fn parse_limit(value: &str) -> Result<Option<u64>, String> {
    if value.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    value
        .parse()
        .map(Some)
        .map_err(|e| format!("--max-upload-bytes {value:?}: {e}"))
}

fn read_users(path: &std::path::Path) -> Result<Vec<(String, String)>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    openiap_wire::server::auth::parse_users(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn endpoints(args: &Args) -> Result<Vec<Endpoint>, String> {
    let mut out = Vec::new();
    let off = |value: &str| value.eq_ignore_ascii_case("off");
    if !off(&args.grpc) {
        out.push(parse(&format!("grpc://{}", args.grpc))?);
    }
    if !off(&args.socket) {
        out.push(parse(&format!("socket://{}", args.socket))?);
    }
    if !off(&args.pipe) {
        out.push(Endpoint::pipe(&args.pipe).map_err(|e| e.to_string())?);
    }
    if !off(&args.http) {
        out.push(parse(&format!("ws://{}/ws/v2", args.http))?);
    }
    Ok(out)
}

fn parse(url: &str) -> Result<Endpoint, String> {
    url.parse().map_err(|e| format!("{url}: {e}"))
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// The runtime for `--worker-threads`.
fn runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = match workers {
        0 => tokio::runtime::Builder::new_multi_thread(),
        1 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(n);
            builder
        }
    };
    builder.enable_all().build()
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    match runtime(args.worker_threads) {
        Ok(runtime) => runtime.block_on(serve(args)),
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: Args) -> ExitCode {
    let listen = match endpoints(&args) {
        Ok(listen) if !listen.is_empty() => listen,
        Ok(_) => {
            eprintln!("error: every listener is off");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let mut config = ServerConfig::new(&args.data);
    match parse_limit(&args.max_upload_bytes) {
        Ok(limit) => config.max_upload_bytes = limit,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    }
    if let Some(path) = &args.users {
        match read_users(path) {
            Ok(users) => config.users = users,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let generated = args.users.is_none() && args.dev_password.is_none();
    config.listen = listen;
    config.dev_password = args.dev_password;
    config.jwt_secret = args.jwt_secret.map(String::into_bytes);
    let server = match Server::bind(config).await {
        Ok(server) => server,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    for endpoint in server
        .endpoints()
        .into_iter()
        .chain(server.rest_endpoints())
    {
        println!("listening {} {endpoint}", endpoint.transport());
    }
    if let (true, Some(password)) = (generated, server.dev_password()) {
        println!("dev-password {password}");
    }
    server.run(shutdown_signal()).await;
    ExitCode::SUCCESS
}
