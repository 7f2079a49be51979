//! The server side: [`Listener`] and [`Incoming`].
//!
//! | endpoint | listen                                                                     |
//! |----------|----------------------------------------------------------------------------|
//! | socket   | TCP; accepted sockets get `TCP_NODELAY`                                    |
//! | pipe     | removes a stale socket file first, and its own on drop                     |
//! | ws       | TCP; the upgrade runs in [`Incoming::accept`], only on the configured path |
//! | (rest)   | same listener as ws: a connection that opens with `POST ` is REST          |
//! | grpc     | HTTP/2 served in a background task; each `SetupStream` call is one accept  |
//!
//! Accepting is split in two so that a slow WebSocket handshake never
//! blocks the accept loop: [`Listener::accept`] returns at once and the
//! per-connection task calls [`Incoming::accept`].

use std::io;
#[cfg(all(unix, feature = "transport-unix"))]
use std::path::PathBuf;

use tokio::net::{TcpListener, TcpStream};

#[cfg(not(feature = "transport-ws"))]
use super::connect::disabled;
use super::connect::feature_of;
use super::{BoxTransport, ByteStream, Endpoint, TransportConfig, TransportError};

/// A bound server socket for one endpoint.
#[derive(Debug)]
pub struct Listener {
    kind: Kind,
    config: TransportConfig,
}

#[derive(Debug)]
enum Kind {
    #[cfg_attr(not(feature = "transport-tcp"), allow(dead_code))]
    Tcp(TcpListener),
    #[cfg(all(unix, feature = "transport-unix"))]
    Unix {
        listener: tokio::net::UnixListener,
        path: PathBuf,
        name: String,
    },
    #[cfg_attr(not(feature = "transport-ws"), allow(dead_code))]
    Ws { listener: TcpListener, path: String },
    #[cfg(feature = "transport-grpc")]
    Grpc(super::grpc::GrpcServer),
}

impl Listener {
    /// Binds `endpoint` (port 0 picks a free port).
    ///
    /// For a pipe, a socket file left behind by a dead server is removed
    /// first; a live one (something accepts on it) is `AddrInUse`.
    ///
    /// # Errors
    ///
    /// An IO error, or [`TransportError::Disabled`].
    #[cfg_attr(
        not(any(
            feature = "transport-tcp",
            all(unix, feature = "transport-unix"),
            feature = "transport-ws"
        )),
        allow(unreachable_code, unused_variables)
    )]
    pub async fn bind(
        endpoint: &Endpoint,
        config: TransportConfig,
    ) -> Result<Self, TransportError> {
        let kind = match endpoint {
            #[cfg(feature = "transport-tcp")]
            Endpoint::Socket { .. } => {
                Kind::Tcp(TcpListener::bind(endpoint.authority().unwrap_or_default()).await?)
            }
            #[cfg(all(unix, feature = "transport-unix"))]
            Endpoint::Pipe { name } => {
                let path = endpoint.pipe_path().unwrap_or_default();
                remove_stale_socket(&path).await?;
                let listener = tokio::net::UnixListener::bind(&path)?;
                Kind::Unix {
                    listener,
                    path,
                    name: name.clone(),
                }
            }
            #[cfg(feature = "transport-ws")]
            Endpoint::Ws { path, .. } => Kind::Ws {
                listener: TcpListener::bind(endpoint.authority().unwrap_or_default()).await?,
                path: path.clone(),
            },
            #[cfg(feature = "transport-grpc")]
            Endpoint::Grpc { .. } => {
                let listener = TcpListener::bind(endpoint.authority().unwrap_or_default()).await?;
                Kind::Grpc(super::grpc::GrpcServer::start(listener, &config)?)
            }
            #[allow(unreachable_patterns)]
            other => return Err(feature_of(other)),
        };
        Ok(Self { kind, config })
    }

    /// The URL a client uses to reach this listener, with the real port.
    ///
    /// # Errors
    ///
    /// The socket's local address cannot be read.
    pub fn endpoint(&self) -> io::Result<Endpoint> {
        Ok(match &self.kind {
            Kind::Tcp(listener) => {
                let addr = listener.local_addr()?;
                Endpoint::Socket {
                    host: addr.ip().to_string(),
                    port: addr.port(),
                }
            }
            #[cfg(all(unix, feature = "transport-unix"))]
            Kind::Unix { name, .. } => Endpoint::Pipe { name: name.clone() },
            Kind::Ws { listener, path } => {
                let addr = listener.local_addr()?;
                Endpoint::Ws {
                    host: addr.ip().to_string(),
                    port: addr.port(),
                    path: path.clone(),
                }
            }
            #[cfg(feature = "transport-grpc")]
            Kind::Grpc(server) => {
                let addr = server.local_addr();
                Endpoint::Grpc {
                    host: addr.ip().to_string(),
                    port: addr.port(),
                }
            }
        })
    }

    /// Waits for the next connection. Cheap: a WebSocket handshake waits
    /// for [`Incoming::accept`].
    ///
    /// # Errors
    ///
    /// The accept call failed (for example, out of file descriptors).
    pub async fn accept(&self) -> io::Result<Incoming> {
        let (kind, peer) = match &self.kind {
            Kind::Tcp(listener) => {
                let (stream, peer) = listener.accept().await?;
                (IncomingKind::Tcp(stream), peer.to_string())
            }
            #[cfg(all(unix, feature = "transport-unix"))]
            Kind::Unix { listener, .. } => {
                let (stream, _) = listener.accept().await?;
                (IncomingKind::Unix(stream), "pipe".to_owned())
            }
            Kind::Ws { listener, path } => {
                let (stream, peer) = listener.accept().await?;
                (IncomingKind::Ws(stream, path.clone()), peer.to_string())
            }
            #[cfg(feature = "transport-grpc")]
            Kind::Grpc(server) => {
                let (stream, peer) = server.accept().await?;
                (IncomingKind::Grpc(stream), peer.to_string())
            }
        };
        Ok(Incoming {
            kind,
            peer,
            config: self.config.clone(),
        })
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        #[cfg(all(unix, feature = "transport-unix"))]
        if let Kind::Unix { path, .. } = &self.kind {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(all(unix, feature = "transport-unix"))]
async fn remove_stale_socket(path: &std::path::Path) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a socket", path.display()),
        ));
    }
    if tokio::net::UnixStream::connect(path).await.is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("{} is in use by a running server", path.display()),
        ));
    }
    std::fs::remove_file(path)
}

/// An accepted socket, not yet a transport: [`Incoming::accept`] finishes
/// the handshake in the connection's own task, so a slow WebSocket upgrade
/// never blocks [`Listener::accept`].
#[derive(Debug)]
pub struct Incoming {
    kind: IncomingKind,
    peer: String,
    #[cfg_attr(not(feature = "transport-ws"), allow(dead_code))]
    config: TransportConfig,
}

#[derive(Debug)]
enum IncomingKind {
    #[cfg_attr(not(feature = "transport-tcp"), allow(dead_code))]
    Tcp(TcpStream),
    #[cfg(all(unix, feature = "transport-unix"))]
    Unix(tokio::net::UnixStream),
    #[cfg_attr(not(feature = "transport-ws"), allow(dead_code))]
    Ws(TcpStream, String),
    #[cfg(feature = "transport-grpc")]
    Grpc(super::GrpcStream),
}

impl Incoming {
    /// The peer's address (`pipe` for a Unix socket).
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// Finishes accepting: `TCP_NODELAY`, and on an HTTP listener either
    /// the WebSocket upgrade (a request for another path is answered 404
    /// and fails) or, when the connection opens with a POST, REST.
    ///
    /// # Errors
    ///
    /// An IO or handshake error.
    pub async fn accept(self) -> Result<Accepted, TransportError> {
        #[cfg(feature = "transport-rest")]
        if let IncomingKind::Ws(stream, _) = &self.kind
            && opens_with_post(stream).await?
            && let IncomingKind::Ws(stream, _) = self.kind
        {
            stream.set_nodelay(true)?;
            let rest = super::rest::RestConnection::new(stream, &self.config);
            return Ok(Accepted::Rest(rest));
        }
        self.accept_connection().await.map(Accepted::Connection)
    }

    async fn accept_connection(self) -> Result<BoxTransport, TransportError> {
        match self.kind {
            IncomingKind::Tcp(stream) => {
                stream.set_nodelay(true)?;
                Ok(Box::new(ByteStream::new(stream)))
            }
            #[cfg(all(unix, feature = "transport-unix"))]
            IncomingKind::Unix(stream) => Ok(Box::new(ByteStream::new(stream))),
            #[cfg(feature = "transport-ws")]
            IncomingKind::Ws(mut stream, path) => {
                stream.set_nodelay(true)?;
                let rest = super::ws_handshake::accept(&mut stream, &path).await?;
                Ok(Box::new(super::WsStream::new(
                    stream,
                    super::WsRole::Server,
                    rest,
                    &self.config,
                )))
            }
            #[cfg(not(feature = "transport-ws"))]
            IncomingKind::Ws(..) => Err(disabled("ws", "transport-ws")),
            #[cfg(feature = "transport-grpc")]
            IncomingKind::Grpc(stream) => Ok(Box::new(stream)),
        }
    }
}

/// What [`Incoming::accept`] produced.
#[non_exhaustive]
pub enum Accepted {
    /// A connection: drive it with a [`Driver`](super::Driver).
    Connection(BoxTransport),
    /// An HTTP connection carrying REST POSTs (served beside ws).
    #[cfg(feature = "transport-rest")]
    Rest(super::rest::RestConnection),
}

impl std::fmt::Debug for Accepted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connection(_) => f.write_str("Accepted::Connection"),
            #[cfg(feature = "transport-rest")]
            Self::Rest(rest) => f.debug_tuple("Accepted::Rest").field(rest).finish(),
        }
    }
}

/// Waits for the first bytes of an HTTP connection and tells whether it is
/// a POST (REST) rather than a WebSocket upgrade. Peeking leaves the bytes
/// for whoever handles the connection.
#[cfg(feature = "transport-rest")]
async fn opens_with_post(stream: &TcpStream) -> io::Result<bool> {
    const METHOD: usize = 5; // "POST "
    let mut head = [0u8; METHOD];
    loop {
        let n = stream.peek(&mut head).await?;
        let seen = head.get(..n).unwrap_or_default();
        if n == 0 || n >= METHOD || !b"POST ".starts_with(seen) {
            return Ok(super::rest::is_post(seen));
        }
        // A method cut across segments: peek returns at once while the
        // bytes wait in the socket, so give the rest a moment to arrive
        // (the caller bounds the whole handshake).
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
}
