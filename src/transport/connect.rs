//! The client side: [`connect`].
//!
//! | endpoint | connect                          |
//! |----------|----------------------------------|
//! | socket   | TCP, `TCP_NODELAY`               |
//! | pipe     | Unix socket at `pipe_path()`     |
//! | ws       | TCP + upgrade on the URL's path  |
//! | grpc     | HTTP/2 + a `SetupStream` call    |
//! | rest     | refused: [`TransportError::Stateless`] |

use std::io;

use tokio::net::TcpStream;

#[cfg(any(feature = "transport-tcp", all(unix, feature = "transport-unix")))]
use super::ByteStream;
use super::{BoxTransport, Endpoint, TransportConfig, TransportError};

pub(super) fn disabled(transport: &'static str, feature: &'static str) -> TransportError {
    TransportError::Disabled { transport, feature }
}

/// Opens a connection to `endpoint`.
///
/// # Errors
///
/// An IO or WebSocket handshake error, or [`TransportError::Disabled`] when
/// the transport's feature is off.
pub async fn connect(
    endpoint: &Endpoint,
    config: &TransportConfig,
) -> Result<BoxTransport, TransportError> {
    let _ = config;
    match endpoint {
        #[cfg(feature = "transport-tcp")]
        Endpoint::Socket { .. } => {
            let stream = tcp_connect(endpoint).await?;
            Ok(Box::new(ByteStream::new(stream)))
        }
        #[cfg(all(unix, feature = "transport-unix"))]
        Endpoint::Pipe { .. } => {
            let path = endpoint.pipe_path().unwrap_or_default();
            let stream = tokio::net::UnixStream::connect(path).await?;
            Ok(Box::new(ByteStream::new(stream)))
        }
        #[cfg(feature = "transport-ws")]
        Endpoint::Ws { path, .. } => {
            let mut stream = tcp_connect(endpoint).await?;
            let authority = endpoint.authority().unwrap_or_default();
            let rest = super::ws_handshake::connect(&mut stream, &authority, path).await?;
            Ok(Box::new(super::WsStream::new(
                stream,
                super::WsRole::Client,
                rest,
                config,
            )))
        }
        #[cfg(feature = "transport-grpc")]
        Endpoint::Grpc { .. } => {
            let authority = endpoint.authority().unwrap_or_default();
            Ok(Box::new(
                super::GrpcStream::connect(&authority, config).await?,
            ))
        }
        Endpoint::Rest { .. } => Err(TransportError::Stateless {
            url: endpoint.to_string(),
        }),
        #[allow(unreachable_patterns)]
        other => Err(feature_of(other)),
    }
}

pub(super) fn feature_of(endpoint: &Endpoint) -> TransportError {
    match endpoint {
        Endpoint::Socket { .. } => disabled("socket", "transport-tcp"),
        Endpoint::Pipe { .. } => disabled("pipe", "transport-unix"),
        Endpoint::Ws { .. } => disabled("ws", "transport-ws"),
        Endpoint::Grpc { .. } => disabled("grpc", "transport-grpc"),
        Endpoint::Rest { .. } => TransportError::Stateless {
            url: endpoint.to_string(),
        },
    }
}

#[cfg_attr(
    not(any(feature = "transport-tcp", feature = "transport-ws")),
    allow(dead_code)
)]
async fn tcp_connect(endpoint: &Endpoint) -> io::Result<TcpStream> {
    let authority = endpoint.authority().unwrap_or_default();
    let stream = TcpStream::connect(authority).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}
