//! [`Endpoint`]: the client URLs Node users already type, parsed.
//!
//! | URL                      | endpoint                      | socket                         |
//! |--------------------------|-------------------------------|--------------------------------|
//! | `socket://HOST:PORT`     | [`Endpoint::Socket`]          | TCP to HOST:PORT               |
//! | `pipe://./NAME`          | [`Endpoint::Pipe`]            | Unix socket `/tmp/CoreFxPipe_NAME` |
//! | `ws://HOST:PORT/PATH`    | [`Endpoint::Ws`]              | TCP, WebSocket upgrade on PATH |
//!
//! The host of a pipe URL is ignored (`.` is what everyone writes). A ws URL
//! without a path means [`DEFAULT_WS_PATH`], where OpenFlow serves it. IPv6
//! hosts are written in brackets (`socket://[::1]:50052`). `grpc://`,
//! `http://` and `wss://` are recognised and refused with
//! [`UrlError::UnsupportedScheme`]: those transports are not built yet.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// Where OpenFlow serves the WebSocket transport, and the path a ws URL
/// without one gets.
pub const DEFAULT_WS_PATH: &str = "/ws/v2";

/// The directory and prefix of pipe sockets, as .NET and the Node peer
/// build them: `pipe://./NAME` is the Unix socket `/tmp/CoreFxPipe_NAME`.
pub const PIPE_PREFIX: &str = "/tmp/CoreFxPipe_";

/// Longest pipe name: a Unix socket path holds at most 107 bytes on Linux,
/// and [`PIPE_PREFIX`] takes 16 of them.
pub const MAX_PIPE_NAME_LEN: usize = 91;

/// Why a URL is not a usable endpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UrlError {
    /// No `scheme://` in front.
    #[error("{url:?} has no scheme: expected socket://, pipe:// or ws://")]
    MissingScheme {
        /// The URL as given.
        url: String,
    },
    /// A scheme this build cannot connect with.
    #[error("scheme {scheme:?} is not supported: expected socket://, pipe:// or ws://")]
    UnsupportedScheme {
        /// The scheme as given.
        scheme: String,
    },
    /// The host part is empty.
    #[error("{url:?} has no host")]
    MissingHost {
        /// The URL as given.
        url: String,
    },
    /// `socket://` and `ws://` need a port.
    #[error("{url:?} has no port")]
    MissingPort {
        /// The URL as given.
        url: String,
    },
    /// The port is not a number from 0 to 65535.
    #[error("port {port:?} is not a number from 0 to 65535")]
    InvalidPort {
        /// The port text.
        port: String,
    },
    /// `socket://` takes no path.
    #[error("{url:?} has a path; socket:// URLs are HOST:PORT only")]
    UnexpectedPath {
        /// The URL as given.
        url: String,
    },
    /// The pipe name is empty, too long, or holds `/`, NUL or whitespace.
    #[error("pipe name {name:?} is invalid: 1 to {max} characters, no '/', NUL or spaces")]
    InvalidPipeName {
        /// The name as given.
        name: String,
        /// [`MAX_PIPE_NAME_LEN`].
        max: usize,
    },
}

/// A parsed client URL. `Display` writes it back in the canonical form.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Endpoint {
    /// `socket://HOST:PORT`: framed envelopes over TCP.
    Socket {
        /// Host name or IP address (IPv6 without brackets).
        host: String,
        /// TCP port; 0 lets a listener pick one.
        port: u16,
    },
    /// `pipe://./NAME`: framed envelopes over the Unix socket
    /// [`Endpoint::pipe_path`].
    Pipe {
        /// The pipe name.
        name: String,
    },
    /// `ws://HOST:PORT/PATH`: framed envelopes in binary WebSocket messages.
    Ws {
        /// Host name or IP address (IPv6 without brackets).
        host: String,
        /// TCP port; 0 lets a listener pick one.
        port: u16,
        /// The upgrade path, starting with `/`.
        path: String,
    },
}

impl Endpoint {
    /// A pipe endpoint, with the name checked.
    ///
    /// # Errors
    ///
    /// [`UrlError::InvalidPipeName`].
    pub fn pipe(name: &str) -> Result<Self, UrlError> {
        let bad = name.is_empty()
            || name.len() > MAX_PIPE_NAME_LEN
            || name
                .chars()
                .any(|c| c == '/' || c == '\\' || c == '\0' || c.is_whitespace());
        if bad {
            return Err(UrlError::InvalidPipeName {
                name: name.to_owned(),
                max: MAX_PIPE_NAME_LEN,
            });
        }
        Ok(Self::Pipe {
            name: name.to_owned(),
        })
    }

    /// The transport's short name: `socket`, `pipe` or `ws`.
    pub fn transport(&self) -> &'static str {
        match self {
            Self::Socket { .. } => "socket",
            Self::Pipe { .. } => "pipe",
            Self::Ws { .. } => "ws",
        }
    }

    /// The Unix socket path of a pipe endpoint (`/tmp/CoreFxPipe_NAME`).
    pub fn pipe_path(&self) -> Option<PathBuf> {
        match self {
            Self::Pipe { name } => Some(PathBuf::from(format!("{PIPE_PREFIX}{name}"))),
            _ => None,
        }
    }

    /// `host:port` of a TCP-based endpoint, brackets added for IPv6.
    pub fn authority(&self) -> Option<String> {
        match self {
            Self::Socket { host, port } | Self::Ws { host, port, .. } => {
                Some(join_host_port(host, *port))
            }
            Self::Pipe { .. } => None,
        }
    }
}

fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Socket { host, port } => write!(f, "socket://{}", join_host_port(host, *port)),
            Self::Pipe { name } => write!(f, "pipe://./{name}"),
            Self::Ws { host, port, path } => {
                write!(f, "ws://{}{path}", join_host_port(host, *port))
            }
        }
    }
}

impl FromStr for Endpoint {
    type Err = UrlError;

    fn from_str(url: &str) -> Result<Self, UrlError> {
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(UrlError::MissingScheme {
                url: url.to_owned(),
            });
        };
        let (authority, path) = match rest.find('/') {
            Some(at) => rest.split_at(at),
            None => (rest, ""),
        };
        match scheme.to_ascii_lowercase().as_str() {
            "socket" => {
                if !path.is_empty() && path != "/" {
                    return Err(UrlError::UnexpectedPath {
                        url: url.to_owned(),
                    });
                }
                let (host, port) = split_host_port(url, authority)?;
                Ok(Self::Socket { host, port })
            }
            "pipe" => Self::pipe(path.strip_prefix('/').unwrap_or(path)),
            "ws" => {
                let (host, port) = split_host_port(url, authority)?;
                let path = if path.is_empty() {
                    DEFAULT_WS_PATH.to_owned()
                } else {
                    path.to_owned()
                };
                Ok(Self::Ws { host, port, path })
            }
            _ => Err(UrlError::UnsupportedScheme {
                scheme: scheme.to_owned(),
            }),
        }
    }
}

/// Splits `host:port` or `[v6]:port`.
fn split_host_port(url: &str, authority: &str) -> Result<(String, u16), UrlError> {
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let Some((host, after)) = bracketed.split_once(']') else {
            return Err(UrlError::MissingHost {
                url: url.to_owned(),
            });
        };
        (host, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(UrlError::MissingHost {
            url: url.to_owned(),
        });
    }
    let Some(port) = port.filter(|p| !p.is_empty()) else {
        return Err(UrlError::MissingPort {
            url: url.to_owned(),
        });
    };
    let port = port.parse::<u16>().map_err(|_| UrlError::InvalidPort {
        port: port.to_owned(),
    })?;
    Ok((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(url: &str) -> Result<Endpoint, UrlError> {
        url.parse()
    }

    #[test]
    fn socket_url_parses_host_and_port() {
        assert_eq!(
            parse("socket://127.0.0.1:50052"),
            Ok(Endpoint::Socket {
                host: "127.0.0.1".into(),
                port: 50052
            })
        );
    }

    #[test]
    fn socket_url_accepts_bracketed_ipv6() {
        let endpoint = parse("socket://[::1]:7").unwrap();
        assert_eq!(
            endpoint,
            Endpoint::Socket {
                host: "::1".into(),
                port: 7
            }
        );
        assert_eq!(endpoint.to_string(), "socket://[::1]:7");
    }

    #[test]
    fn pipe_url_maps_to_corefx_path() {
        let endpoint = parse("pipe://./openiap").unwrap();
        assert_eq!(
            endpoint.pipe_path(),
            Some(PathBuf::from("/tmp/CoreFxPipe_openiap"))
        );
        assert_eq!(endpoint.to_string(), "pipe://./openiap");
    }

    #[test]
    fn pipe_name_with_slash_or_traversal_is_refused() {
        assert!(matches!(
            parse("pipe://./a/../../etc"),
            Err(UrlError::InvalidPipeName { .. })
        ));
        assert!(matches!(
            parse("pipe://./"),
            Err(UrlError::InvalidPipeName { .. })
        ));
        let long = format!("pipe://./{}", "x".repeat(MAX_PIPE_NAME_LEN + 1));
        assert!(matches!(
            parse(&long),
            Err(UrlError::InvalidPipeName { max, .. }) if max == MAX_PIPE_NAME_LEN
        ));
    }

    #[test]
    fn ws_url_keeps_path_and_defaults_it() {
        assert_eq!(
            parse("ws://localhost:8080/ws/v2"),
            Ok(Endpoint::Ws {
                host: "localhost".into(),
                port: 8080,
                path: "/ws/v2".into()
            })
        );
        assert_eq!(
            parse("ws://localhost:8080").unwrap().to_string(),
            "ws://localhost:8080/ws/v2"
        );
    }

    #[test]
    fn bad_urls_get_typed_errors() {
        assert!(matches!(
            parse("127.0.0.1:1"),
            Err(UrlError::MissingScheme { .. })
        ));
        assert!(matches!(
            parse("grpc://127.0.0.1:50051"),
            Err(UrlError::UnsupportedScheme { scheme }) if scheme == "grpc"
        ));
        assert!(matches!(
            parse("socket://127.0.0.1"),
            Err(UrlError::MissingPort { .. })
        ));
        assert!(matches!(
            parse("socket://:80"),
            Err(UrlError::MissingHost { .. })
        ));
        assert!(matches!(
            parse("socket://h:70000"),
            Err(UrlError::InvalidPort { port }) if port == "70000"
        ));
        assert!(matches!(
            parse("socket://h:1/x"),
            Err(UrlError::UnexpectedPath { .. })
        ));
    }

    proptest! {
        #[test]
        fn parse_never_panics(url in ".{0,64}") {
            let _ = parse(&url);
        }

        #[test]
        fn display_round_trips(
            host in "[a-z][a-z0-9.-]{0,20}",
            port in any::<u16>(),
            name in "[A-Za-z0-9_.-]{1,40}",
        ) {
            for endpoint in [
                Endpoint::Socket { host: host.clone(), port },
                Endpoint::pipe(&name).unwrap(),
                Endpoint::Ws { host: host.clone(), port, path: "/ws/v2".into() },
            ] {
                prop_assert_eq!(parse(&endpoint.to_string()), Ok(endpoint));
            }
        }
    }
}
