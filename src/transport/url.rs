//! [`Endpoint`]: the client URLs Node users already type, parsed.
//!
//! | URL                      | endpoint                      | socket                         |
//! |--------------------------|-------------------------------|--------------------------------|
//! | `socket://HOST:PORT`     | [`Endpoint::Socket`]          | TCP to HOST:PORT               |
//! | `pipe://./NAME`          | [`Endpoint::Pipe`]            | Unix socket `/tmp/CoreFxPipe_NAME` |
//! | `ws://HOST:PORT/PATH`    | [`Endpoint::Ws`]              | TCP, WebSocket upgrade on PATH |
//! | `grpc://HOST:PORT`       | [`Endpoint::Grpc`]            | TCP, plaintext HTTP/2 (h2c)    |
//! | `http://HOST:PORT/PATH`  | [`Endpoint::Rest`]            | TCP, one HTTP/1.1 POST per envelope |
//!
//! The host of a pipe URL is ignored (`.` is what everyone writes). A ws URL
//! without a path means [`DEFAULT_WS_PATH`], a REST URL without one
//! [`DEFAULT_REST_PATH`], where OpenFlow serves them. IPv6 hosts are written
//! in brackets (`socket://[::1]:50052`). TLS is not supported: `wss://`,
//! `https://` and `grpc://HOST:443` (which the Node peer dials with TLS)
//! are refused with [`UrlError::TlsUnsupported`].

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// Where OpenFlow serves the WebSocket transport, and the path a ws URL
/// without one gets.
pub const DEFAULT_WS_PATH: &str = "/ws/v2";

/// Where OpenFlow serves the REST transport, and the path an http URL
/// without one gets.
pub const DEFAULT_REST_PATH: &str = "/api/v2";

/// The port on which a `grpc://` URL means TLS to the Node peer.
pub const GRPC_TLS_PORT: u16 = 443;

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
    #[error("{url:?} has no scheme: expected socket://, pipe://, ws://, grpc:// or http://")]
    MissingScheme {
        /// The URL as given.
        url: String,
    },
    /// A scheme this build cannot connect with.
    #[error(
        "scheme {scheme:?} is not supported: expected socket://, pipe://, ws://, grpc:// or http://"
    )]
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
    /// The URL asks for TLS, which this crate does not implement.
    #[error("{url:?} needs TLS, which is not supported: use a plaintext URL ({hint})")]
    TlsUnsupported {
        /// The URL as given.
        url: String,
        /// What to use instead.
        hint: &'static str,
    },
    /// `socket://` and `grpc://` take no path.
    #[error("{url:?} has a path; socket:// and grpc:// URLs are HOST:PORT only")]
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
    /// `grpc://HOST:PORT`: one envelope per message of the
    /// `openiap.FlowService/SetupStream` call, plaintext HTTP/2.
    Grpc {
        /// Host name or IP address (IPv6 without brackets).
        host: String,
        /// TCP port, never [`GRPC_TLS_PORT`]; 0 lets a listener pick one.
        port: u16,
    },
    /// `http://HOST:PORT/PATH`: REST, one JSON envelope per POST, no
    /// session (served beside WebSocket on the same listener).
    Rest {
        /// Host name or IP address (IPv6 without brackets).
        host: String,
        /// TCP port.
        port: u16,
        /// The POST path, starting with `/`.
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

    /// The transport's short name: `socket`, `pipe`, `ws`, `grpc` or
    /// `rest`.
    pub fn transport(&self) -> &'static str {
        match self {
            Self::Socket { .. } => "socket",
            Self::Pipe { .. } => "pipe",
            Self::Ws { .. } => "ws",
            Self::Grpc { .. } => "grpc",
            Self::Rest { .. } => "rest",
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
            Self::Socket { host, port }
            | Self::Ws { host, port, .. }
            | Self::Grpc { host, port }
            | Self::Rest { host, port, .. } => Some(join_host_port(host, *port)),
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
            Self::Grpc { host, port } => write!(f, "grpc://{}", join_host_port(host, *port)),
            Self::Rest { host, port, path } => {
                write!(f, "http://{}{path}", join_host_port(host, *port))
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
            "grpc" => {
                if !path.is_empty() && path != "/" {
                    return Err(UrlError::UnexpectedPath {
                        url: url.to_owned(),
                    });
                }
                let (host, port) = split_host_port(url, authority)?;
                if port == GRPC_TLS_PORT {
                    return Err(UrlError::TlsUnsupported {
                        url: url.to_owned(),
                        hint: "grpc://HOST:PORT with a port other than 443",
                    });
                }
                Ok(Self::Grpc { host, port })
            }
            "http" => {
                let (host, port) = split_host_port(url, authority)?;
                let path = if path.is_empty() {
                    DEFAULT_REST_PATH.to_owned()
                } else {
                    path.to_owned()
                };
                Ok(Self::Rest { host, port, path })
            }
            "wss" | "https" => Err(UrlError::TlsUnsupported {
                url: url.to_owned(),
                hint: "ws:// or http://",
            }),
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
            parse("ftp://127.0.0.1:50051"),
            Err(UrlError::UnsupportedScheme { scheme }) if scheme == "ftp"
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

    #[test]
    fn grpc_url_parses_and_refuses_a_path() {
        assert_eq!(
            parse("grpc://localhost:50051"),
            Ok(Endpoint::Grpc {
                host: "localhost".into(),
                port: 50051
            })
        );
        assert_eq!(
            parse("grpc://[::1]:7").unwrap().to_string(),
            "grpc://[::1]:7"
        );
        assert!(matches!(
            parse("grpc://h:1/openiap.FlowService"),
            Err(UrlError::UnexpectedPath { .. })
        ));
    }

    #[test]
    fn grpc_port_443_and_tls_schemes_are_refused_as_tls() {
        for url in [
            "grpc://grpc.example.org:443",
            "wss://h:1/ws/v2",
            "https://h:1/api/v2",
        ] {
            assert!(
                matches!(parse(url), Err(UrlError::TlsUnsupported { .. })),
                "{url}"
            );
        }
    }

    #[test]
    fn http_url_is_rest_with_the_default_path() {
        assert_eq!(
            parse("http://127.0.0.1:8080"),
            Ok(Endpoint::Rest {
                host: "127.0.0.1".into(),
                port: 8080,
                path: DEFAULT_REST_PATH.into()
            })
        );
        let endpoint = parse("http://h:1/api/v2").unwrap();
        assert_eq!(endpoint.transport(), "rest");
        assert_eq!(endpoint.to_string(), "http://h:1/api/v2");
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
                Endpoint::Rest { host: host.clone(), port, path: "/api/v2".into() },
            ] {
                prop_assert_eq!(parse(&endpoint.to_string()), Ok(endpoint));
            }
            if port != GRPC_TLS_PORT {
                let endpoint = Endpoint::Grpc { host: host.clone(), port };
                prop_assert_eq!(parse(&endpoint.to_string()), Ok(endpoint));
            }
        }
    }
}
