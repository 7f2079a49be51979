//! The reference server: listeners on every transport, signin, upload and
//! download over the sans-IO [`Connection`](crate::connection::Connection).
//!
//! ```text
//!   Server::bind(config) ── one Listener per endpoint ──► endpoints() (real ports)
//!   Server::run(shutdown)
//!     ├─ accept loop per listener ──► one task per connection (session)
//!     └─ shutdown resolves: stop accepting, sessions flush and close,
//!        after SHUTDOWN_GRACE the rest are cancelled (their temp files removed)
//! ```
//!
//! The data directory holds the token secret and the uploaded files (layout
//! in [`store`]). What each command does on one connection:
//!
//! | event                     | before signin        | after signin                          |
//! |---------------------------|----------------------|---------------------------------------|
//! | `signin`                  | checked              | checked (may switch user)             |
//! | `ping`                    | `pong` (by the core) | `pong` (by the core)                  |
//! | `upload`                  | `error` 401          | temp file opened                      |
//! | chunk / end / failure     | dropped (upload refused) | written / published + `uploadreply` / removed + `error` |
//! | a stream part for no upload, or after its `endstream` | `error` 400, rid = the part's rid | `error` 400, rid = the part's rid |
//! | `download`                | `error` 401          | `beginstream`, chunks, `endstream`, `downloadreply` |
//! | other known command       | `error` 401          | `error` 501                           |
//! | unknown command           | `error` 404 (by the core) | `error` 404 (by the core)      |
//!
//! A message carrying its own `jwt` runs as that token's user; an invalid
//! one is answered `error` 401. Downloads are read from disk a few chunks at
//! a time, only when the connection's transmit queue has run empty, so a
//! large file never sits in memory. An upload is written to a temporary file
//! as it arrives and published only after `endstream` with a matching
//! checksum; a failed or abandoned upload leaves nothing behind, and one
//! that passes [`ServerConfig::max_upload_bytes`] fails at that chunk
//! (`error` 413). A frame must arrive whole within
//! [`DEFAULT_FRAME_TIMEOUT`] of its first byte (slow-drip peers are cut
//! off with `error` 408).
//!
//! With the `transport-rest` feature a WebSocket listener also serves REST
//! (experimental) at `/api/v2` ([`Server::rest_endpoints`]): every POST
//! runs in a fresh session, so nothing is signed in unless the envelope or
//! its `Authorization: Bearer` header carries a token, and transfers are
//! refused. A gRPC listener hands each `SetupStream` call to its own
//! session, like any other connection.
//!
//! Users: the list in [`ServerConfig::users`] or, when it is empty, one
//! development user, `dev`, whose password is given or generated at bind
//! time ([`Server::dev_password`]).
//!
//! ```no_run
//! # async fn run() -> Result<(), openiap_wire::server::ServerError> {
//! use openiap_wire::server::{Server, ServerConfig};
//!
//! let mut config = ServerConfig::new("./openiap-data");
//! config.listen.push("socket://127.0.0.1:0".parse().unwrap());
//! let server = Server::bind(config).await?;
//! for endpoint in server.endpoints() {
//!     println!("listening {} {endpoint}", endpoint.transport());
//! }
//! server.run(async { let _ = tokio::signal::ctrl_c().await; }).await;
//! # Ok(()) }
//! ```

pub mod auth;
mod session;
pub mod store;

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{info, warn};

#[cfg(feature = "transport-rest")]
pub use self::session::REST_TIMEOUT;
pub use self::session::{DOWNLOAD_READ_AHEAD, DOWNLOAD_SEND_AHEAD, MAX_DOWNLOADS_PER_CONNECTION};

use self::auth::{Auth, random_bytes};
use self::session::Session;
use self::store::{FileStore, StoreError};
use crate::connection::ConnectionConfig;
use crate::transport::{Accepted, Endpoint, Listener, TransportConfig, TransportError};

/// How long sessions get to finish after shutdown before they are cancelled.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How long an accepted connection may take to finish its handshake (the
/// WebSocket upgrade) before it is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Default [`ServerConfig::token_lifetime`]: 8 hours.
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(8 * 3600);

/// Default idle timeout of server connections: 2 minutes, four times the
/// Node client's ping interval.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// Default frame timeout of server connections
/// ([`ConnectionConfig::frame_timeout`]): 30 s from the first byte of a
/// frame to its last. A peer that drips a frame a byte at a time
/// ("slowloris") is cut off after it, however steadily the bytes come; an
/// honest client meets it for the largest frame
/// ([`DEFAULT_MAX_FRAME_LENGTH`](crate::frame::DEFAULT_MAX_FRAME_LENGTH),
/// 64 MiB) at about 2.2 MiB/s, and for a 256 KiB upload chunk at 9 KiB/s.
pub const DEFAULT_FRAME_TIMEOUT: Duration = Duration::from_secs(30);

/// Default [`ServerConfig::max_upload_bytes`]: 1 GiB.
///
/// Neither reference server documents a cap, but the protocol reports sizes
/// in `int32` fields (`UploadResponse.bytes`, `Stat.size`), which break past
/// 2 GiB; 1 GiB stays clear of that and of filling a small disk by accident.
/// Raise it, or set `None`, for larger files.
pub const DEFAULT_MAX_UPLOAD_BYTES: u64 = 1 << 30;

/// Username of the development user.
pub const DEV_USERNAME: &str = "dev";

/// What a server needs; build with [`ServerConfig::new`] and set fields.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Data directory (created if missing).
    pub data_dir: PathBuf,
    /// Endpoints to listen on (port 0 picks a free port).
    pub listen: Vec<Endpoint>,
    /// Users and their passwords (see [`auth::parse_users`] for the file
    /// form). When empty, the one user is [`DEV_USERNAME`].
    pub users: Vec<(String, String)>,
    /// Password of the user `dev` when `users` is empty; `None` generates
    /// one.
    pub dev_password: Option<String>,
    /// Token secret; `None` uses `DATA/jwt.secret`, created on first use.
    pub jwt_secret: Option<Vec<u8>>,
    /// How long issued tokens stay valid.
    pub token_lifetime: Duration,
    /// Largest upload accepted, in bytes; `None` accepts any size. Enforced
    /// chunk by chunk as the upload streams in: the chunk that would pass
    /// the limit fails the upload (`error` 413) and its temporary file is
    /// removed. [`Server::bind`] writes it into the connections'
    /// [`max_stream_bytes`](crate::stream::StreamConfig::max_stream_bytes)
    /// (a server receives no other streams), replacing what `connection`
    /// says there. Default [`DEFAULT_MAX_UPLOAD_BYTES`].
    pub max_upload_bytes: Option<u64>,
    /// Protocol limits of every connection (role is set to server).
    pub connection: ConnectionConfig,
    /// IO limits of every connection.
    pub transport: TransportConfig,
}

impl ServerConfig {
    /// Defaults: no listeners, generated password, secret in the data
    /// directory, uploads up to [`DEFAULT_MAX_UPLOAD_BYTES`], and server
    /// connections with [`DEFAULT_IDLE_TIMEOUT`], [`DEFAULT_FRAME_TIMEOUT`],
    /// no keepalive pings and zero-length frames refused
    /// ([`ZeroLengthPolicy::Reject`](crate::frame::ZeroLengthPolicy::Reject):
    /// no reference client sends one, and an empty Envelope has no id to
    /// answer, so it ends the connection with an `error` instead of being
    /// dropped unanswered).
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        let mut connection = ConnectionConfig::default();
        connection
            .set_idle_timeout(Some(DEFAULT_IDLE_TIMEOUT))
            .set_frame_timeout(Some(DEFAULT_FRAME_TIMEOUT))
            .set_keepalive_interval(None);
        connection
            .frame_mut()
            .set_zero_length(crate::frame::ZeroLengthPolicy::Reject);
        Self {
            data_dir: data_dir.into(),
            listen: Vec::new(),
            users: Vec::new(),
            dev_password: None,
            jwt_secret: None,
            token_lifetime: DEFAULT_TOKEN_LIFETIME,
            max_upload_bytes: Some(DEFAULT_MAX_UPLOAD_BYTES),
            connection,
            transport: TransportConfig::default(),
        }
    }
}

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// A listener could not be bound.
    #[error("cannot listen on {endpoint}: {source}")]
    Bind {
        /// The endpoint.
        endpoint: String,
        /// Why.
        source: TransportError,
    },
    /// The data directory is not usable.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The token secret could not be read or created.
    #[error("token secret at {path}: {source}")]
    Secret {
        /// The secret file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

/// State shared by every session.
#[derive(Debug)]
struct Shared {
    auth: Auth,
    store: FileStore,
    connection: ConnectionConfig,
}

/// A bound server. See the [module docs](self).
#[derive(Debug)]
pub struct Server {
    listeners: Vec<(Listener, Endpoint)>,
    shared: Arc<Shared>,
    dev_password: Option<String>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads `DATA/jwt.secret` (hex), creating it with a random 32-byte secret
/// (mode 0600 on Unix) when missing.
fn load_or_create_secret(data_dir: &Path) -> Result<Vec<u8>, ServerError> {
    let path = data_dir.join("jwt.secret");
    let fail = |source| ServerError::Secret {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => crate::stream::parse_sha256_hex(text.trim())
            .map(|secret| secret.to_vec())
            .ok_or_else(|| fail(io::Error::other("not 64 hex digits"))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let secret = random_bytes(32).map_err(fail)?;
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options.open(&path).map_err(fail)?;
            io::Write::write_all(&mut file, hex(&secret).as_bytes()).map_err(fail)?;
            Ok(secret)
        }
        Err(e) => Err(fail(e)),
    }
}

impl Server {
    /// Prepares the data directory and binds every endpoint.
    ///
    /// # Errors
    ///
    /// The data directory or secret is unusable, or a listener cannot bind.
    pub async fn bind(mut config: ServerConfig) -> Result<Self, ServerError> {
        // A WebSocket message may carry a whole frame, no more.
        let max_frame = config.connection.frame().max_frame_length();
        config.transport.set_max_frame_length(max_frame);
        config
            .connection
            .stream_mut()
            .set_max_stream_bytes(config.max_upload_bytes)
            // The session hashes each upload on its writer thread instead
            // (`PendingUpload::set_hash`).
            .set_hash_payload(false);
        let store = FileStore::open(&config.data_dir)?;
        let secret = match config.jwt_secret {
            Some(secret) => secret,
            None => load_or_create_secret(&config.data_dir)?,
        };
        let mut auth = Auth::new(secret, config.token_lifetime);
        let dev_password = if config.users.is_empty() {
            let password = match config.dev_password {
                Some(password) => password,
                None => hex(&random_bytes(12).map_err(|source| ServerError::Secret {
                    path: config.data_dir.clone(),
                    source,
                })?),
            };
            auth.add_user(DEV_USERNAME, &password);
            Some(password)
        } else {
            for (username, password) in &config.users {
                auth.add_user(username, password);
            }
            None
        };
        let mut listeners = Vec::new();
        for endpoint in &config.listen {
            let bind_error = |source| ServerError::Bind {
                endpoint: endpoint.to_string(),
                source,
            };
            let listener = Listener::bind(endpoint, config.transport.clone())
                .await
                .map_err(bind_error)?;
            let real = listener
                .endpoint()
                .map_err(|e| bind_error(TransportError::Io(e)))?;
            listeners.push((listener, real));
        }
        Ok(Self {
            listeners,
            shared: Arc::new(Shared {
                auth,
                store,
                connection: config.connection,
            }),
            dev_password,
        })
    }

    /// The client URL of every listener, with real ports.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        self.listeners.iter().map(|(_, e)| e.clone()).collect()
    }

    /// The REST URL served beside each WebSocket listener
    /// (`http://HOST:PORT/api/v2`); empty without the `transport-rest`
    /// feature. REST is one stateless POST per envelope, so these are not
    /// in [`endpoints`](Self::endpoints), which a client can connect to.
    pub fn rest_endpoints(&self) -> Vec<Endpoint> {
        if !cfg!(feature = "transport-rest") {
            return Vec::new();
        }
        self.listeners
            .iter()
            .filter_map(|(_, endpoint)| match endpoint {
                Endpoint::Ws { host, port, .. } => Some(Endpoint::Rest {
                    host: host.clone(),
                    port: *port,
                    path: crate::transport::DEFAULT_REST_PATH.to_owned(),
                }),
                _ => None,
            })
            .collect()
    }

    /// The password of the user [`DEV_USERNAME`], when the server runs
    /// with that one user (no [`ServerConfig::users`]).
    pub fn dev_password(&self) -> Option<&str> {
        self.dev_password.as_deref()
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets sessions
    /// close for up to [`SHUTDOWN_GRACE`] and cancels the rest.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut loops = JoinSet::new();
        for (listener, endpoint) in self.listeners {
            loops.spawn(accept_loop(
                listener,
                endpoint,
                Arc::clone(&self.shared),
                stop_rx.clone(),
            ));
        }
        shutdown.await;
        info!("shutting down");
        let _ = stop_tx.send(true);
        while loops.join_next().await.is_some() {}
    }
}

/// Resolves once the shutdown flag is set (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

async fn accept_loop(
    listener: Listener,
    endpoint: Endpoint,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let transport = endpoint.transport();
    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            () = stopped(&mut stop) => break,
            accepted = listener.accept() => match accepted {
                Ok(incoming) => {
                    let shared = Arc::clone(&shared);
                    let stop = stop.clone();
                    sessions.spawn(async move {
                        let peer = incoming.peer().to_owned();
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, incoming.accept()).await {
                            Ok(Ok(Accepted::Connection(io))) => {
                                Session::new(io, shared, transport, peer).run(stop).await;
                            }
                            #[cfg(feature = "transport-rest")]
                            Ok(Ok(Accepted::Rest(rest))) => serve_rest(rest, shared, peer, stop).await,
                            Ok(Err(e)) => info!(transport, %peer, error = %e, "handshake failed"),
                            Err(_) => info!(transport, %peer, "handshake timed out"),
                        }
                    });
                }
                Err(e) => {
                    warn!(transport, error = %e, "accept failed");
                    // Out of descriptors and the like: do not spin.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
        }
    }
    drop(listener);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while sessions.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!(
            transport,
            left = sessions.len(),
            "sessions cancelled after the grace period"
        );
        sessions.shutdown().await;
    }
}

/// Serves the REST POSTs of one HTTP connection: each envelope runs in a
/// fresh session ([`session::exchange`]).
#[cfg(feature = "transport-rest")]
async fn serve_rest(
    rest: crate::transport::rest::RestConnection,
    shared: Arc<Shared>,
    peer: String,
    stop: watch::Receiver<bool>,
) {
    let handler = {
        let peer = peer.clone();
        let stop = stop.clone();
        move |envelope| session::exchange(envelope, Arc::clone(&shared), peer.clone(), stop.clone())
    };
    let mut shutdown = stop;
    let served = rest
        .serve(handler, async move { stopped(&mut shutdown).await })
        .await;
    if let Err(e) = served {
        info!(transport = "rest", %peer, error = %e, "http connection failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::ZeroLengthPolicy;

    #[test]
    fn defaults_bound_uploads_slow_frames_and_empty_frames() {
        let config = ServerConfig::new("unused");
        assert_eq!(config.max_upload_bytes, Some(DEFAULT_MAX_UPLOAD_BYTES));
        assert_eq!(
            config.connection.frame_timeout(),
            Some(DEFAULT_FRAME_TIMEOUT)
        );
        assert_eq!(
            config.connection.frame().zero_length(),
            ZeroLengthPolicy::Reject
        );
    }

    #[tokio::test]
    async fn bind_gives_every_connection_the_upload_limit() {
        let root =
            std::env::temp_dir().join(format!("openiap-server-limit-{}", std::process::id()));
        let mut config = ServerConfig::new(&root);
        config.jwt_secret = Some(b"secret".to_vec());
        config.max_upload_bytes = Some(123);
        config
            .connection
            .stream_mut()
            .set_max_stream_bytes(Some(999));
        let server = Server::bind(config).await.unwrap();
        assert_eq!(
            server.shared.connection.stream().max_stream_bytes(),
            Some(123)
        );
        drop(server);
        std::fs::remove_dir_all(root).unwrap();
    }
}
