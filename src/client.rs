//! The reference client: one [`Connection`] in the client role over any
//! transport, with async calls for signin, ping, upload and download.
//!
//! ```text
//!   Client::connect(url) ─► signin ─► ping / upload(path) / download(id, out) / call(envelope)
//!
//!   each call:  queue the request ─► loop { top up chunks ─► drive ─► events } until its reply
//! ```
//!
//! | call       | sends                                              | done when                 |
//! |------------|----------------------------------------------------|---------------------------|
//! | `upload`   | `upload`, `beginstream` (SHA-256), chunks read from disk as the queue drains, `endstream` | `uploadreply` or `error` |
//! | `download` | `download`                                          | chunks written to a temp file; `endstream` (checksum checked by the core), then `downloadreply`: temp renamed onto `out` |
//!
//! A failed download leaves no output file: the temporary file beside
//! `out` is removed on every error path (and when the future is dropped).
//! Events that belong to nothing the client waits for are dropped.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::command::{CommandError, Validation};
use crate::connection::{Connection, ConnectionConfig, Event, Role};
use crate::envelope::{Envelope, EnvelopeExt, Request};
use crate::proto::{
    DownloadRequest, DownloadResponse, PingRequest, SigninRequest, SigninResponse, UploadRequest,
    UploadResponse,
};
use crate::stream::{StreamError, StreamSummary};
use crate::transport::{
    BoxTransport, Driver, Endpoint, Status, TransportConfig, TransportError, UrlError, connect,
};

/// Default request timeout of the client: 5 minutes, because an upload's
/// reply only comes after the whole file went through.
pub const DEFAULT_CLIENT_REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

/// Chunks queued per top-up of an upload (1 MiB at the default chunk size).
const CHUNKS_PER_TOP_UP: usize = 4;

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The URL is not usable.
    #[error(transparent)]
    Url(#[from] UrlError),
    /// The transport failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The protocol failed (the connection, or this request: timeout, limits).
    #[error(transparent)]
    Protocol(#[from] crate::Error),
    /// The reply's payload could not be decoded.
    #[error(transparent)]
    Payload(#[from] CommandError),
    /// The server answered `error`.
    #[error("server refused {command}: {message} (code {code})")]
    Server {
        /// Our request's command.
        command: String,
        /// `ErrorResponse.message`.
        message: String,
        /// `ErrorResponse.code`.
        code: i32,
    },
    /// The transfer failed (checksum mismatch, protocol violation, server
    /// error).
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// A download arrived without a checksum and the config requires one.
    #[error("download {id:?} carried no checksum; nothing was written")]
    ChecksumMissing {
        /// The file id.
        id: String,
    },
    /// `downloadreply` came before the transfer ended.
    #[error("download {id:?} was answered before its endstream")]
    Incomplete {
        /// The file id.
        id: String,
    },
    /// A local file could not be read or written.
    #[error("file {path}: {source}")]
    File {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The connection closed while a call was waiting.
    #[error("connection closed")]
    Closed,
}

fn file_error(path: &Path) -> impl FnOnce(std::io::Error) -> ClientError + '_ {
    move |source| ClientError::File {
        path: path.to_owned(),
        source,
    }
}

/// Settings of a [`Client`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClientConfig {
    /// Protocol limits; default request timeout
    /// [`DEFAULT_CLIENT_REQUEST_TIMEOUT`].
    pub connection: ConnectionConfig,
    /// IO limits.
    pub transport: TransportConfig,
    /// Refuse downloads whose `beginstream` has no checksum (default on).
    pub require_checksum: bool,
}

impl Default for ClientConfig {
    fn default() -> Self {
        let mut connection = ConnectionConfig::default();
        connection.set_request_timeout(Some(DEFAULT_CLIENT_REQUEST_TIMEOUT));
        Self {
            connection,
            transport: TransportConfig::default(),
            require_checksum: true,
        }
    }
}

/// A finished download.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Downloaded {
    /// The server's reply.
    pub response: DownloadResponse,
    /// What arrived: bytes, chunks, SHA-256, whether it was verified.
    pub summary: StreamSummary,
    /// Where the file is now.
    pub path: PathBuf,
}

/// Which way a transfer goes, in a [`Progress`] report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Direction {
    /// Our file to the server.
    Upload,
    /// The server's file to us.
    Download,
}

/// How far a transfer has come, reported to the callback set with
/// [`Client::set_progress`] after every chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Progress {
    /// Which way the transfer goes.
    pub direction: Direction,
    /// Payload bytes moved so far.
    pub done: u64,
    /// All payload bytes, when known: the file size of an upload; for a
    /// download, the size announced in `beginstream` (`Stat.size`), if any.
    pub total: Option<u64>,
}

/// The progress callback, boxed so that [`Client`] stays `Send` and `Debug`.
struct ProgressFn(Box<dyn FnMut(Progress) + Send>);

impl std::fmt::Debug for ProgressFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProgressFn")
    }
}

/// Removes a temporary file unless it was kept.
struct TempFile(Option<PathBuf>);

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A connected client. See the [module docs](self).
#[derive(Debug)]
pub struct Client {
    conn: Connection,
    driver: Driver<BoxTransport>,
    endpoint: Endpoint,
    config: ClientConfig,
    jwt: Option<String>,
    closed: bool,
    progress: Option<ProgressFn>,
}

impl Client {
    /// Connects to `url` (`socket://`, `pipe://`, `ws://`, `grpc://`) with
    /// defaults. `http://` (REST) is refused: it is not a connection.
    ///
    /// # Errors
    ///
    /// A bad URL or a failed connection.
    pub async fn connect(url: &str) -> Result<Self, ClientError> {
        Self::connect_with(&url.parse()?, ClientConfig::default()).await
    }

    /// Connects to `endpoint` with `config`.
    ///
    /// # Errors
    ///
    /// The connection failed.
    pub async fn connect_with(
        endpoint: &Endpoint,
        mut config: ClientConfig,
    ) -> Result<Self, ClientError> {
        let max_frame = config.connection.frame().max_frame_length();
        config.transport.set_max_frame_length(max_frame);
        let io = connect(endpoint, &config.transport).await?;
        Ok(Self {
            conn: Connection::new(Role::Client, config.connection.clone(), Instant::now()),
            driver: Driver::new(io),
            endpoint: endpoint.clone(),
            config,
            jwt: None,
            closed: false,
            progress: None,
        })
    }

    /// Calls `report` after every chunk of an upload or download (a
    /// progress bar, a log line).
    pub fn set_progress(&mut self, report: impl FnMut(Progress) + Send + 'static) {
        self.progress = Some(ProgressFn(Box::new(report)));
    }

    fn report(&mut self, direction: Direction, done: u64, total: Option<u64>) {
        if let Some(ProgressFn(report)) = &mut self.progress {
            report(Progress {
                direction,
                done,
                total,
            });
        }
    }

    /// The endpoint this client connected to.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The token of the last successful signin.
    pub fn jwt(&self) -> Option<&str> {
        self.jwt.as_deref()
    }

    /// Signs in with a username and password; keeps the returned token.
    ///
    /// # Errors
    ///
    /// [`ClientError::Server`] for refused credentials, or a connection error.
    pub async fn signin(
        &mut self,
        username: &str,
        password: &str,
    ) -> Result<SigninResponse, ClientError> {
        self.signin_with(SigninRequest {
            username: username.to_owned(),
            password: password.to_owned(),
            ping: true,
            ..SigninRequest::default()
        })
        .await
    }

    /// Signs in with a token from an earlier signin.
    ///
    /// # Errors
    ///
    /// As [`signin`](Self::signin).
    pub async fn signin_jwt(&mut self, jwt: &str) -> Result<SigninResponse, ClientError> {
        self.signin_with(SigninRequest {
            jwt: jwt.to_owned(),
            ..SigninRequest::default()
        })
        .await
    }

    async fn signin_with(
        &mut self,
        mut request: SigninRequest,
    ) -> Result<SigninResponse, ClientError> {
        request.agent = "openiap-wire".to_owned();
        request.version = env!("CARGO_PKG_VERSION").to_owned();
        let response = self.request(&request).await?;
        if !request.validateonly {
            self.jwt = Some(response.jwt.clone());
        }
        Ok(response)
    }

    /// One `ping`; returns the round-trip time.
    ///
    /// # Errors
    ///
    /// A connection error or timeout.
    pub async fn ping(&mut self) -> Result<Duration, ClientError> {
        let started = Instant::now();
        let id = self.conn.request(&PingRequest {}, started)?;
        self.await_reply(&id).await?;
        Ok(started.elapsed())
    }

    /// Sends request `message` and decodes its reply.
    ///
    /// # Errors
    ///
    /// [`ClientError::Server`] when answered `error`, a payload or
    /// connection error.
    pub async fn request<M: Request>(&mut self, message: &M) -> Result<M::Response, ClientError> {
        let id = self.conn.request(message, Instant::now())?;
        let reply = self.await_reply(&id).await?;
        Ok(reply.unpack::<M::Response>(Validation::Lenient)?)
    }

    /// Sends any envelope and returns the envelope that answers it (rid =
    /// its id); an `error` answer is [`ClientError::Server`]. For commands
    /// the typed calls do not cover, unknown ones included.
    ///
    /// # Errors
    ///
    /// As [`request`](Self::request).
    pub async fn call(&mut self, envelope: Envelope) -> Result<Envelope, ClientError> {
        let id = self.conn.send(envelope, Instant::now())?;
        self.await_reply(&id).await
    }

    /// Uploads the file at `path` with its SHA-256 in `beginstream`, reading
    /// it in chunks as the connection drains (it is read twice: once to
    /// hash, once to send).
    ///
    /// # Errors
    ///
    /// The file cannot be read, the server refused the upload, or a
    /// connection error.
    pub async fn upload(&mut self, path: &Path) -> Result<UploadResponse, ClientError> {
        let digest = hash_file(path).await?;
        let filename = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("upload.bin")
            .to_owned();
        let mut file = tokio::fs::File::open(path)
            .await
            .map_err(file_error(path))?;
        let total = file.metadata().await.map(|m| m.len()).ok();
        let now = Instant::now();
        let request = UploadRequest {
            filename,
            ..UploadRequest::default()
        };
        let id = self.conn.request(&request, now)?;
        let mut sender = self.conn.stream_sender(&id)?;
        let begin = sender
            .begin(Some(digest), None)
            .map_err(crate::Error::from)?;
        self.conn.send(begin, now)?;
        let chunk_size = self.config.connection.stream().chunk_size().get();
        let mut sending = true;
        loop {
            let mut queued = 0;
            while sending && queued < CHUNKS_PER_TOP_UP && !self.conn.has_transmit() {
                let chunk = read_chunk(&mut file, chunk_size)
                    .await
                    .map_err(file_error(path))?;
                let now = Instant::now();
                let envelope = if chunk.is_empty() {
                    sending = false;
                    sender.end()
                } else {
                    sender.chunk(chunk.freeze())
                };
                self.conn.send(envelope.map_err(crate::Error::from)?, now)?;
                queued += 1;
                if sending {
                    self.report(Direction::Upload, sender.bytes_sent(), total);
                }
            }
            while let Some(event) = self.conn.poll_event() {
                match reply_for(&id, event) {
                    Ok(Some(reply)) => {
                        return Ok(reply.unpack::<UploadResponse>(Validation::Lenient)?);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        // Refused early: end the transfer so the server
                        // frees its slot; the end goes out with the next
                        // call or on close.
                        if sending && let Ok(end) = sender.end() {
                            let _ = self.conn.send(end, Instant::now());
                        }
                        return Err(e);
                    }
                }
            }
            self.drive().await?;
        }
    }

    /// Downloads file `id` into `out`: chunks go to a temporary file beside
    /// it, renamed onto `out` only after the transfer ended with a matching
    /// checksum and the server's reply arrived.
    ///
    /// # Errors
    ///
    /// The server refused, the transfer failed (checksum, protocol), the
    /// checksum was missing while required, or a file or connection error.
    /// `out` is untouched and the temporary file removed in every case.
    pub async fn download(&mut self, id: &str, out: &Path) -> Result<Downloaded, ClientError> {
        let name = out
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("download");
        let suffix = getrandom::u64().unwrap_or_else(|_| u64::from(std::process::id()));
        let temp_path = out.with_file_name(format!(".{name}.{suffix:016x}.part"));
        let mut file = tokio::fs::File::create(&temp_path)
            .await
            .map_err(file_error(&temp_path))?;
        let mut temp = TempFile(Some(temp_path.clone()));
        let request = DownloadRequest {
            id: id.to_owned(),
            ..DownloadRequest::default()
        };
        let request_id = self.conn.request(&request, Instant::now())?;
        let mut summary = None;
        let (mut done, mut total) = (0u64, None);
        let reply = loop {
            let event = self.next_event().await?;
            match event {
                Event::StreamStarted { rid, started } if rid == request_id => {
                    total = started
                        .stat
                        .and_then(|stat| u64::try_from(stat.size).ok())
                        .filter(|&size| size > 0);
                }
                Event::StreamChunk { rid, data } if rid == request_id => {
                    file.write_all(&data)
                        .await
                        .map_err(file_error(&temp_path))?;
                    done = done.saturating_add(data.len() as u64);
                    self.report(Direction::Download, done, total);
                }
                Event::StreamEnded { rid, summary: done } if rid == request_id => {
                    summary = Some(done);
                }
                Event::StreamFailed { rid, error } if rid == request_id => {
                    // A server `error` fails the stream first; report the
                    // server's words when they follow.
                    if let Some(Event::PeerError { error: e, .. }) = self.conn.poll_event() {
                        return Err(ClientError::Server {
                            command: "download".to_owned(),
                            message: e.message,
                            code: e.code,
                        });
                    }
                    return Err(error.into());
                }
                other => {
                    if let Some(reply) = reply_for(&request_id, other)? {
                        break reply;
                    }
                }
            }
        };
        let response = reply.unpack::<DownloadResponse>(Validation::Lenient)?;
        let Some(summary) = summary else {
            return Err(ClientError::Incomplete { id: id.to_owned() });
        };
        if self.config.require_checksum && !summary.checksum_verified {
            return Err(ClientError::ChecksumMissing { id: id.to_owned() });
        }
        file.flush().await.map_err(file_error(&temp_path))?;
        file.sync_all().await.map_err(file_error(&temp_path))?;
        drop(file);
        tokio::fs::rename(&temp_path, out)
            .await
            .map_err(file_error(out))?;
        temp.0 = None;
        Ok(Downloaded {
            response,
            summary,
            path: out.to_owned(),
        })
    }

    /// Flushes what is queued and closes the connection.
    ///
    /// # Errors
    ///
    /// The transport failed while flushing.
    pub async fn close(mut self) -> Result<(), ClientError> {
        self.driver.close(&mut self.conn).await?;
        Ok(())
    }

    async fn drive(&mut self) -> Result<(), ClientError> {
        if self.closed {
            return Err(ClientError::Closed);
        }
        match self.driver.drive(&mut self.conn).await {
            Ok(Status::Progress) => Ok(()),
            Ok(Status::Closed) => {
                self.closed = true;
                Ok(())
            }
            Err(e) => {
                self.closed = true;
                Err(e.into())
            }
        }
    }

    async fn next_event(&mut self) -> Result<Event, ClientError> {
        loop {
            if let Some(event) = self.conn.poll_event() {
                return Ok(event);
            }
            self.drive().await?;
        }
    }

    async fn await_reply(&mut self, id: &str) -> Result<Envelope, ClientError> {
        loop {
            let event = self.next_event().await?;
            if let Some(reply) = reply_for(id, event)? {
                return Ok(reply);
            }
        }
    }
}

/// The answer to request `id` in `event`, if it is one: the reply
/// envelope, or the error it carries.
fn reply_for(id: &str, event: Event) -> Result<Option<Envelope>, ClientError> {
    match event {
        Event::Reply {
            request_id,
            envelope,
            ..
        } if request_id == id => Ok(Some(envelope)),
        Event::PeerError {
            request_id,
            request_command,
            error,
        } if request_id == id => Err(ClientError::Server {
            command: request_command,
            message: error.message,
            code: error.code,
        }),
        Event::RequestFailed {
            request_id, error, ..
        } if request_id == id => Err(error.into()),
        // An answer to an envelope the connection did not track (an
        // unknown command sent with `call`).
        Event::Request { envelope, payload } if envelope.rid == id => match *payload {
            crate::command::Payload::ErrorResponse(error) => Err(ClientError::Server {
                command: String::new(),
                message: error.message,
                code: error.code,
            }),
            _ => Ok(Some(envelope)),
        },
        _ => Ok(None),
    }
}

async fn read_chunk(file: &mut tokio::fs::File, size: usize) -> std::io::Result<BytesMut> {
    let mut buf = BytesMut::with_capacity(size);
    while buf.len() < size {
        if file.read_buf(&mut buf).await? == 0 {
            break;
        }
    }
    Ok(buf)
}

async fn hash_file(path: &Path) -> Result<[u8; 32], ClientError> {
    use sha2::{Digest, Sha256};
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(file_error(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).await.map_err(file_error(path))?;
        if n == 0 {
            break;
        }
        hasher.update(buf.get(..n).unwrap_or_default());
    }
    Ok(hasher.finalize().into())
}
