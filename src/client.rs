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
//! | `upload`   | `upload`, `beginstream` (SHA-256, or none with [`UploadOptions::checksum`] off), chunks read ahead from disk on a blocking thread while earlier ones are sent, `endstream` | `uploadreply` or `error` |
//! | `download` | `download`                                          | chunks written to a temp file on a blocking thread while the next ones arrive; `endstream` (checksum checked by the core), then `downloadreply`: temp synced and renamed onto `out` |
//!
//! A failed download leaves no output file: the temporary file beside
//! `out` is removed on every error path (and when the future is dropped).
//! Events that belong to nothing the client waits for are dropped.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::command::{CommandError, Validation};
use crate::connection::{Connection, ConnectionConfig, Event, Role};
use crate::envelope::{Envelope, EnvelopeExt, Request};
use crate::file_io::{ChunkReader, FileWriter};
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

/// Chunks an upload reads ahead of the connection (1 MiB at the default
/// chunk size).
pub const UPLOAD_READ_AHEAD: usize = 4;

/// Envelopes an upload keeps queued in the connection, so the socket never
/// waits for the next chunk to be framed.
pub const UPLOAD_SEND_AHEAD: usize = 4;

/// Received bytes a download may hold waiting for the disk; beyond that it
/// stops reading the connection until the disk catches up.
pub const DOWNLOAD_WRITE_BEHIND: usize = 4 * 1024 * 1024;

/// A download asks the disk to write back what it has every this many
/// bytes (`fdatasync` in the background), so the sync at the end has little
/// left.
pub const DOWNLOAD_SYNC_EVERY: u64 = 32 * 1024 * 1024;

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
    /// [`DEFAULT_CLIENT_REQUEST_TIMEOUT`]. The client turns the stream
    /// table's [`hash_payload`](crate::stream::StreamConfig::hash_payload)
    /// off: [`Client::download`] hashes on the thread that writes the file.
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

/// How [`Client::upload_with`] uploads.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct UploadOptions {
    /// Hash the file first and send its SHA-256 in `beginstream`, so the
    /// server refuses the upload when what arrived differs (default on).
    /// Off, `beginstream` carries an empty checksum, as the Node package
    /// sends by default (PROTOCOL.md, "Upload flow"): the file is read once
    /// instead of twice, and only the transport vouches for the data.
    pub checksum: bool,
}

impl Default for UploadOptions {
    fn default() -> Self {
        Self { checksum: true }
    }
}

impl UploadOptions {
    /// The defaults: checksum on.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets [`checksum`](Self::checksum).
    #[must_use]
    pub fn checksum(mut self, on: bool) -> Self {
        self.checksum = on;
        self
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
        // A download is hashed by the thread that writes it, not in the
        // connection (see `download`).
        config.connection.stream_mut().set_hash_payload(false);
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

    /// Uploads the file at `path` with its SHA-256 in `beginstream`
    /// ([`upload_with`](Self::upload_with) and the default
    /// [`UploadOptions`]). The file is read twice: once to hash it, then in
    /// chunks that a blocking thread reads ahead ([`UPLOAD_READ_AHEAD`] of
    /// them) while the connection sends the previous ones.
    ///
    /// # Errors
    ///
    /// The file cannot be read, the server refused the upload, or a
    /// connection error.
    pub async fn upload(&mut self, path: &Path) -> Result<UploadResponse, ClientError> {
        self.upload_with(path, &UploadOptions::default()).await
    }

    /// Uploads the file at `path` as `options` say: with
    /// [`UploadOptions::checksum`] off the file is not hashed first and
    /// `beginstream` carries no checksum; otherwise as
    /// [`upload`](Self::upload).
    ///
    /// # Errors
    ///
    /// As [`upload`](Self::upload).
    pub async fn upload_with(
        &mut self,
        path: &Path,
        options: &UploadOptions,
    ) -> Result<UploadResponse, ClientError> {
        let started = Instant::now();
        let owned = path.to_owned();
        let (file, digest, total) = if options.checksum {
            let (file, digest, total) = blocking(move || open_and_hash(&owned))
                .await
                .map_err(file_error(path))?;
            tracing::debug!(hashed_in = ?started.elapsed(), bytes = total, "upload hashed");
            (file, Some(digest), total)
        } else {
            let (file, total) = blocking(move || {
                let file = std::fs::File::open(&owned)?;
                let total = file.metadata()?.len();
                Ok((file, total))
            })
            .await
            .map_err(file_error(path))?;
            (file, None, total)
        };
        let filename = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("upload.bin")
            .to_owned();
        let now = Instant::now();
        let request = UploadRequest {
            filename,
            ..UploadRequest::default()
        };
        let id = self.conn.request(&request, now)?;
        let mut sender = self.conn.stream_sender(&id)?;
        let begin = sender.begin(digest, None).map_err(crate::Error::from)?;
        self.conn.send(begin, now)?;
        let chunk_size = self.config.connection.stream().chunk_size().get();
        let mut reader = ChunkReader::new(file, chunk_size, UPLOAD_READ_AHEAD);
        reader.read_ahead();
        let mut sending = true;
        loop {
            while sending && self.conn.queued_transmit() < UPLOAD_SEND_AHEAD {
                let Some(chunk) = reader.next_ready().await else {
                    break;
                };
                let chunk = chunk.map_err(file_error(path))?;
                let now = Instant::now();
                if chunk.is_empty() {
                    sending = false;
                    tracing::debug!(read_in = ?started.elapsed(), "upload read to the end");
                    let end = sender.end().map_err(crate::Error::from)?;
                    self.conn.send(end, now)?;
                } else {
                    self.conn.send_chunk(&mut sender, chunk, now)?;
                    self.report(Direction::Upload, sender.bytes_sent(), Some(total));
                }
            }
            if sending {
                reader.read_ahead();
            }
            while let Some(event) = self.conn.poll_event() {
                match reply_for(&id, event) {
                    Ok(Some(reply)) => {
                        tracing::debug!(answered_in = ?started.elapsed(), "upload answered");
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
            let starved = sending && self.conn.queued_transmit() < UPLOAD_SEND_AHEAD;
            if starved && reader.is_reading() {
                // Wake for whichever comes first: the next chunk from
                // disk, or the connection (drained, a reply, a timer).
                tokio::select! {
                    () = reader.wait() => {}
                    driven = self.drive() => driven?,
                }
            } else {
                self.drive().await?;
            }
        }
    }

    /// Downloads file `id` into `out`: chunks go to a temporary file beside
    /// it, renamed onto `out` only after the transfer ended with a matching
    /// checksum and the server's reply arrived.
    ///
    /// Chunks are hashed and written by a blocking thread while the
    /// connection goes on receiving (at most [`DOWNLOAD_WRITE_BEHIND`] bytes wait for the disk),
    /// and the disk is asked to write back every [`DOWNLOAD_SYNC_EVERY`]
    /// bytes, so the final sync has little left to do.
    ///
    /// # Errors
    ///
    /// The server refused, the transfer failed (checksum, protocol), the
    /// checksum was missing while required, or a file or connection error.
    /// `out` is untouched and the temporary file removed in every case.
    pub async fn download(&mut self, id: &str, out: &Path) -> Result<Downloaded, ClientError> {
        let started = Instant::now();
        let name = out
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("download");
        let suffix = getrandom::u64().unwrap_or_else(|_| u64::from(std::process::id()));
        let temp_path = out.with_file_name(format!(".{name}.{suffix:016x}.part"));
        let created = temp_path.clone();
        let file = blocking(move || std::fs::File::create(&created))
            .await
            .map_err(file_error(&temp_path))?;
        let mut temp = TempFile(Some(temp_path.clone()));
        let mut writer = FileWriter::new(file, DOWNLOAD_SYNC_EVERY);
        let request = DownloadRequest {
            id: id.to_owned(),
            ..DownloadRequest::default()
        };
        let request_id = self.conn.request(&request, Instant::now())?;
        let mut summary = None;
        let mut announced = false;
        let (mut done, mut total) = (0u64, None);
        let reply = loop {
            let Some(event) = self.conn.poll_event() else {
                if writer.backlog() >= DOWNLOAD_WRITE_BEHIND {
                    writer.wait().await.map_err(file_error(&temp_path))?;
                } else if writer.is_writing() {
                    tokio::select! {
                        written = writer.wait() => written.map_err(file_error(&temp_path))?,
                        driven = self.drive_for_input() => driven?,
                    }
                } else {
                    self.drive_for_input().await?;
                }
                continue;
            };
            match event {
                Event::StreamStarted { rid, started } if rid == request_id => {
                    writer.set_hash(started.payload_hash());
                    announced = started.checksum.is_some();
                    total = started
                        .stat
                        .and_then(|stat| u64::try_from(stat.size).ok())
                        .filter(|&size| size > 0);
                }
                Event::StreamChunk { rid, data } if rid == request_id => {
                    done = done.saturating_add(data.len() as u64);
                    writer.push(data);
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
        tracing::debug!(received_in = ?started.elapsed(), bytes = done, "download received");
        let response = reply.unpack::<DownloadResponse>(Validation::Lenient)?;
        let Some(mut summary) = summary else {
            return Err(ClientError::Incomplete { id: id.to_owned() });
        };
        if self.config.require_checksum && !announced {
            return Err(ClientError::ChecksumMissing { id: id.to_owned() });
        }
        let hash = writer.finish().await.map_err(file_error(&temp_path))?;
        let digest = hash
            .ok_or(ClientError::Incomplete { id: id.to_owned() })?
            .finish(&request_id)?;
        summary.sha256 = Some(digest.sha256);
        summary.checksum_verified = digest.checksum_verified;
        tracing::debug!(synced_in = ?started.elapsed(), "download synced");
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

    /// Drives the connection until something happens, the transmit queue
    /// running empty included (an upload tops it up then).
    async fn drive(&mut self) -> Result<(), ClientError> {
        self.drive_inner(true).await
    }

    /// Drives the connection until input, a timer or the end: for waiting
    /// on the peer with nothing more to send.
    async fn drive_for_input(&mut self) -> Result<(), ClientError> {
        self.drive_inner(false).await
    }

    async fn drive_inner(&mut self, report_drained: bool) -> Result<(), ClientError> {
        if self.closed {
            return Err(ClientError::Closed);
        }
        match self
            .driver
            .drive_inner(&mut self.conn, report_drained)
            .await
        {
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
            self.drive_for_input().await?;
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
            command: request_command.to_owned(),
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

/// Runs blocking file work on tokio's blocking pool.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|join| Err(std::io::Error::other(join)))
}

/// Opens `path`, hashes it and rewinds it: the file, its SHA-256, its size.
fn open_and_hash(path: &Path) -> std::io::Result<(std::fs::File, [u8; 32], u64)> {
    use std::io::Seek;
    let mut file = std::fs::File::open(path)?;
    let total = file.metadata()?.len();
    let digest = crate::file_io::sha256_of(&mut file)?;
    file.rewind()?;
    Ok((file, digest, total))
}

/// The measurements behind `openiap-client bench` and `benches/e2e.rs`:
/// deterministic content, ping rate, and checksummed upload and download
/// throughput over one signed-in [`Client`].
///
/// | step       | timed                                               | checked |
/// |------------|-----------------------------------------------------|---------|
/// | pings      | `count` sequential [`Client::ping`] calls           | every pong |
/// | upload     | [`Client::upload_with`]: hash the file (unless [`UploadOptions::checksum`] is off), send it, `uploadreply` (the server has verified the checksum, if any, and synced the file) | reply |
/// | download   | [`Client::download`]: chunks to a temp file, checksum checked, file synced and renamed | SHA-256 of the written file, outside the timing |
pub mod bench {
    use std::io::Write;
    use std::path::Path;
    use std::time::{Duration, Instant};

    use super::{Client, ClientError, UploadOptions, file_error};

    /// MiB per second for `bytes` moved in `elapsed`.
    pub fn mib_per_s(bytes: u64, elapsed: Duration) -> f64 {
        bytes as f64 / (1024.0 * 1024.0) / elapsed.as_secs_f64().max(1e-9)
    }

    /// Writes `len` bytes of deterministic content (xorshift32) to `path`.
    ///
    /// # Errors
    ///
    /// The file cannot be written.
    pub fn write_content(path: &Path, len: u64) -> std::io::Result<()> {
        const BLOCK: usize = 1 << 20;
        let mut file = std::fs::File::create(path)?;
        let mut x: u32 = 0x9E37_79B9;
        let mut block = vec![0u8; BLOCK];
        let mut left = len;
        while left > 0 {
            for word in block.chunks_exact_mut(4) {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                word.copy_from_slice(&x.to_le_bytes());
            }
            let take = usize::try_from(left.min(BLOCK as u64)).unwrap_or(BLOCK);
            file.write_all(block.get(..take).unwrap_or(&block))?;
            left -= take as u64;
        }
        file.flush()
    }

    /// The SHA-256 of the file at `path`, lower-case hex.
    ///
    /// # Errors
    ///
    /// The file cannot be read.
    pub fn file_sha256(path: &Path) -> std::io::Result<String> {
        let mut file = std::fs::File::open(path)?;
        Ok(crate::file_io::sha256_of(&mut file)?
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect())
    }

    /// One measured conversation; rates are derived from the times.
    #[derive(Debug, Clone, PartialEq)]
    #[non_exhaustive]
    pub struct Measurement {
        /// `socket`, `pipe`, `ws` or `grpc`.
        pub transport: &'static str,
        /// The URL measured.
        pub url: String,
        /// Pings sent.
        pub pings: u32,
        /// Time for all pings.
        pub ping_time: Duration,
        /// File size.
        pub bytes: u64,
        /// Time of the upload, hashing included when `upload_checksum`.
        pub upload_time: Duration,
        /// The upload sent its SHA-256 (hashed first, within the time).
        pub upload_checksum: bool,
        /// Time of the download, until the file was synced and renamed.
        pub download_time: Duration,
        /// The download's checksum was verified by the protocol and the
        /// written file's SHA-256 equals the source's.
        pub checksum_ok: bool,
    }

    impl Measurement {
        /// Sequential ping round trips per second.
        pub fn pings_per_s(&self) -> f64 {
            f64::from(self.pings) / self.ping_time.as_secs_f64().max(1e-9)
        }

        /// Upload throughput.
        pub fn upload_mib_per_s(&self) -> f64 {
            mib_per_s(self.bytes, self.upload_time)
        }

        /// Download throughput.
        pub fn download_mib_per_s(&self) -> f64 {
            mib_per_s(self.bytes, self.download_time)
        }
    }

    /// Times `count` sequential pings.
    ///
    /// # Errors
    ///
    /// A ping failed.
    pub async fn pings(client: &mut Client, count: u32) -> Result<Duration, ClientError> {
        let started = Instant::now();
        for _ in 0..count {
            client.ping().await?;
        }
        Ok(started.elapsed())
    }

    /// Pings, then uploads `source` (whose SHA-256 is `source_sha`) with
    /// its checksum and downloads it again into `work`; the downloaded file
    /// is removed. [`measure_with`] with the default [`UploadOptions`].
    ///
    /// # Errors
    ///
    /// A call failed, or a local file could not be read or written.
    pub async fn measure(
        client: &mut Client,
        pings_count: u32,
        source: &Path,
        source_sha: &str,
        work: &Path,
    ) -> Result<Measurement, ClientError> {
        measure_with(
            client,
            pings_count,
            source,
            source_sha,
            work,
            &UploadOptions::default(),
        )
        .await
    }

    /// As [`measure`], the upload made with `upload` options (without a
    /// checksum, for instance, to time it without the hashing pass). The
    /// download is checked the same way in either case.
    ///
    /// # Errors
    ///
    /// As [`measure`].
    pub async fn measure_with(
        client: &mut Client,
        pings_count: u32,
        source: &Path,
        source_sha: &str,
        work: &Path,
        upload: &UploadOptions,
    ) -> Result<Measurement, ClientError> {
        let endpoint = client.endpoint().clone();
        let ping_time = pings(client, pings_count).await?;
        let bytes = std::fs::metadata(source).map_err(file_error(source))?.len();
        let started = Instant::now();
        let uploaded = client.upload_with(source, upload).await?;
        let upload_time = started.elapsed();
        let out = work.join(format!("download-{}.bin", endpoint.transport()));
        let started = Instant::now();
        let done = client.download(&uploaded.id, &out).await?;
        let download_time = started.elapsed();
        let written = file_sha256(&out).map_err(file_error(&out))?;
        std::fs::remove_file(&out).map_err(file_error(&out))?;
        Ok(Measurement {
            transport: endpoint.transport(),
            url: endpoint.to_string(),
            pings: pings_count,
            ping_time,
            bytes,
            upload_time,
            upload_checksum: upload.checksum,
            download_time,
            checksum_ok: done.summary.checksum_verified
                && done.summary.bytes == bytes
                && written == source_sha,
        })
    }
}

#[cfg(all(test, feature = "server", feature = "transport-tcp"))]
mod tests {
    use std::time::Duration;

    use tokio::io::AsyncReadExt;

    use super::*;
    use crate::envelope::{decode_envelope, unpack};
    use crate::frame::FrameDecoder;
    use crate::proto::BeginStream;
    use crate::server::{Server, ServerConfig};

    fn scratch(tag: &str) -> PathBuf {
        let suffix = getrandom::u64().unwrap();
        let dir = std::env::temp_dir().join(format!("openiap-client-{tag}-{suffix:016x}"));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// The checksum of the `beginstream` an upload of `path` sends, as a
    /// peer that only reads sees it (it keeps the connection open, so the
    /// upload is still waiting when it answers).
    async fn announced_checksum(path: &Path, options: &UploadOptions) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("socket://{}", listener.local_addr().unwrap());
        let mut peer = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut decoder = FrameDecoder::default();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = socket.read(&mut buf).await.unwrap();
                assert_ne!(n, 0, "closed before beginstream");
                decoder.push(&buf[..n]);
                while let Some(frame) = decoder.decode().unwrap() {
                    let envelope = decode_envelope(frame).unwrap();
                    if envelope.command == "beginstream" {
                        let begin = unpack::<BeginStream>(&envelope, Validation::Strict);
                        return (begin.unwrap().checksum, socket);
                    }
                }
            }
        });
        let mut client = Client::connect(&url).await.unwrap();
        let wait = tokio::time::timeout(Duration::from_secs(10), async {
            tokio::select! {
                answered = &mut peer => answered.unwrap().0,
                ended = client.upload_with(path, options) => panic!("upload ended first: {ended:?}"),
            }
        });
        wait.await.expect("a beginstream within 10 s")
    }

    #[tokio::test]
    async fn upload_announces_the_checksum_unless_told_not_to() {
        let dir = scratch("announce");
        let path = dir.join("a.bin");
        let content: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        std::fs::write(&path, &content).unwrap();
        let with = announced_checksum(&path, &UploadOptions::default()).await;
        assert_eq!(with, crate::stream::sha256_hex(&content));
        let without = announced_checksum(&path, &UploadOptions::new().checksum(false)).await;
        assert_eq!(without, "");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn upload_without_checksum_is_stored_and_downloads_verified() {
        let dir = scratch("nochecksum");
        let mut config = ServerConfig::new(dir.join("data"));
        config.dev_password = Some("pw".to_owned());
        config.listen = vec!["socket://127.0.0.1:0".parse().unwrap()];
        let server = Server::bind(config).await.unwrap();
        let url = server.endpoints()[0].to_string();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        // More than one chunk, not a multiple of the chunk size.
        let content: Vec<u8> = (0..700_001u32).map(|i| (i % 241) as u8).collect();
        let path = dir.join("plain.bin");
        std::fs::write(&path, &content).unwrap();
        let mut client = Client::connect(&url).await.unwrap();
        client
            .signin(crate::server::DEV_USERNAME, "pw")
            .await
            .unwrap();
        let options = UploadOptions::new().checksum(false);
        let reply = client.upload_with(&path, &options).await.unwrap();
        assert_eq!(reply.bytes, 700_001);
        let stored = dir.join("data").join("files").join(&reply.id);
        assert_eq!(std::fs::read(stored.join("content")).unwrap(), content);
        let out = dir.join("back.bin");
        let done = client.download(&reply.id, &out).await.unwrap();
        // The server hashed what arrived and announces it with the download.
        assert!(done.summary.checksum_verified);
        assert_eq!(
            done.summary.sha256,
            Some(crate::stream::sha256_hex(&content))
        );
        assert_eq!(std::fs::read(&out).unwrap(), content);
        client.close().await.unwrap();
        stop.send(()).unwrap();
        task.await.unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }
}
