//! One accepted connection: a [`Connection`] in the server role, its
//! [`Driver`], the signed-in identity, uploads being written and downloads
//! being sent.
//!
//! ```text
//!   loop:  handle every event ──► top up downloads ──► drive (IO, timers) ─┐
//!     ▲                                                                    │
//!     └──────────── Progress ◄─────────────────────────────────────────────┘
//!                   Closed / error / shutdown ──► discard open uploads, end
//! ```
//!
//! A message carrying its own `jwt` runs as that token's user; an invalid
//! one is answered `error` 401. A download's chunks are read from disk on
//! the blocking pool, [`DOWNLOAD_READ_AHEAD`] ahead of the connection, and
//! queued while the transmit queue holds fewer than [`DOWNLOAD_SEND_AHEAD`]
//! envelopes; an upload's chunks are written behind (see
//! [`PendingUpload`]). So a large file never sits in memory.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::Shared;
use super::auth::Identity;
use super::store::{FileMeta, PendingUpload, StoreError, UPLOAD_WRITE_BEHIND};
use crate::command::Payload;
use crate::connection::{Connection, Event, Role};
use crate::envelope::Envelope;
use crate::file_io::ChunkReader;
use crate::proto::{
    DownloadRequest, DownloadResponse, ErrorResponse, SigninRequest, SigninResponse, Stat,
    UploadRequest, UploadResponse, User,
};
use crate::stream::StreamSender;
use crate::transport::{BoxTransport, Driver, Status};

/// Envelopes a download keeps queued in the connection (1 MiB of chunks at
/// the default chunk size), so the socket never waits for the next chunk.
pub const DOWNLOAD_SEND_AHEAD: usize = 4;

/// Chunks the current download reads ahead of the connection.
pub const DOWNLOAD_READ_AHEAD: usize = 4;

/// Downloads one connection may have queued at once (each holds an open
/// file); more are answered `error` 429.
pub const MAX_DOWNLOADS_PER_CONNECTION: usize = 16;

/// What the session knows of an upload's rid.
enum Upload {
    /// Being written to its temporary file.
    Open(Box<OpenUpload>),
    /// Answered `error` already (refused, or its write failed): the parts
    /// that follow anyway are dropped quietly, and its end or failure gets
    /// no second answer. (The connection registered the upload's stream,
    /// so these entries are bounded by its open-stream limit, and each goes
    /// when its stream ends or fails.)
    Answered,
}

struct OpenUpload {
    request: Envelope,
    file: PendingUpload,
    started: Instant,
    /// Its `beginstream` announced a checksum (which the commit checks).
    announced: bool,
}

struct Download {
    request: Envelope,
    meta: FileMeta,
    reader: ChunkReader,
    sender: StreamSender,
}

pub(super) struct Session {
    conn: Connection,
    driver: Driver<BoxTransport>,
    shared: Arc<Shared>,
    transport: &'static str,
    peer: String,
    user: Option<Identity>,
    uploads: HashMap<String, Upload>,
    downloads: VecDeque<Download>,
}

/// A trace field only when the peer sent one.
fn present(id: &str) -> Option<&str> {
    (!id.is_empty()).then_some(id)
}

fn error_response(message: impl Into<String>, code: i32) -> ErrorResponse {
    ErrorResponse {
        message: message.into(),
        code,
        stack: String::new(),
    }
}

impl Session {
    pub(super) fn new(
        io: BoxTransport,
        shared: Arc<Shared>,
        transport: &'static str,
        peer: String,
    ) -> Self {
        let conn = Connection::new(Role::Server, shared.connection.clone(), Instant::now());
        Self {
            conn,
            driver: Driver::new(io),
            shared,
            transport,
            peer,
            user: None,
            uploads: HashMap::new(),
            downloads: VecDeque::new(),
        }
    }

    /// Runs until the peer leaves, the connection fails or `shutdown` turns
    /// true.
    pub(super) async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        info!(transport = self.transport, peer = %self.peer, "connected");
        // One future for the whole loop: a new one per turn would register
        // with the watch channel and deregister again on every envelope.
        let mut stop = std::pin::pin!(super::stopped(&mut shutdown));
        let reason = loop {
            self.handle_events().await;
            self.top_up().await;
            // The next chunk from disk wakes the loop too when the
            // connection is short of chunks to send.
            let starved = self.conn.queued_transmit() < DOWNLOAD_SEND_AHEAD
                && self
                    .downloads
                    .front()
                    .is_some_and(|d| d.reader.is_reading());
            // A download in flight is topped up when the queue runs empty;
            // otherwise only input (or a timer) gives the loop work.
            let drive = self
                .driver
                .drive_inner(&mut self.conn, !self.downloads.is_empty());
            tokio::select! {
                () = read_front(&mut self.downloads), if starved => {}
                status = drive => match status {
                    Ok(Status::Progress) => {}
                    Ok(Status::Closed) => break "peer closed".to_owned(),
                    // A connection-fatal error's notice to the peer was
                    // flushed by the driver.
                    Err(e) => break e.to_string(),
                },
                () = &mut stop => {
                    let _ = self.driver.close(&mut self.conn).await;
                    break "server shutdown".to_owned();
                }
            }
        };
        // Failures reported by the end of the connection (open transfers).
        self.handle_events().await;
        for (_, upload) in self.uploads.drain() {
            if let Upload::Open(open) = upload {
                open.file.discard().await;
            }
        }
        info!(transport = self.transport, peer = %self.peer, %reason, "disconnected");
    }

    fn now() -> Instant {
        Instant::now()
    }

    fn reply_error(&mut self, request: &Envelope, message: impl Into<String>, code: i32) {
        let error = error_response(message, code);
        debug!(command = %request.command, id = %request.id, message = %error.message, "error reply");
        if let Err(e) = self.conn.reply_error(request, &error, Self::now()) {
            debug!(error = %e, "could not queue the error reply");
        }
    }

    async fn handle_events(&mut self) {
        while let Some(event) = self.conn.poll_event() {
            match event {
                Event::Request { envelope, payload } => self.on_request(envelope, *payload).await,
                Event::Rejected { envelope, error } => {
                    info!(command = %envelope.command, id = %envelope.id, traceid = present(&envelope.traceid),
                        spanid = present(&envelope.spanid), %error, "rejected");
                }
                Event::Ping { id } => debug!(%id, "ping"),
                Event::StreamStarted { rid, started } => {
                    if let Some(upload) = self.uploads.get_mut(&rid) {
                        debug!(%rid, checksum = ?started.checksum, "upload stream started");
                        if let Upload::Open(open) = upload {
                            // Hashed on the writer's thread (the server's
                            // streams do not hash in the connection).
                            open.file.set_hash(started.payload_hash());
                            open.announced = started.checksum.is_some();
                        }
                    } else {
                        // The core opens a stream for any rid; only an
                        // upload's is wanted. Its parts are dropped.
                        let message =
                            format!("beginstream for rid {rid:?}, which is not an upload");
                        self.reply_stray(&rid, message, 400);
                    }
                }
                Event::StreamChunk { rid, data } => self.on_chunk(&rid, data).await,
                Event::StreamEnded { rid, summary } => {
                    if let Some(Upload::Open(open)) = self.uploads.remove(&rid) {
                        self.finish_upload(&rid, *open, summary).await;
                    }
                }
                Event::StreamFailed { rid, error } => self.on_stream_failed(rid, error).await,
                other => debug!(event = ?other, "ignored"),
            }
        }
    }

    /// A received transfer failed. An upload's request gets the `error`
    /// (once: a refused upload was answered already); a part for a rid that
    /// is no upload (never begun, or after its `endstream`) is answered with
    /// an `error` whose rid is that rid, so the peer learns it was dropped.
    async fn on_stream_failed(&mut self, rid: String, error: crate::stream::StreamError) {
        let code = crate::Error::from(error.clone()).code();
        match self.uploads.remove(&rid) {
            Some(Upload::Open(open)) => {
                warn!(%rid, %error, "upload failed");
                open.file.discard().await;
                self.reply_error(&open.request, error.to_string(), code);
            }
            Some(Upload::Answered) => debug!(%rid, %error, "answered upload's stream failed"),
            None if error.is_peer_violation() => self.reply_stray(&rid, error.to_string(), code),
            None => debug!(%rid, %error, "stream failed"),
        }
    }

    /// Answers a stream part that belongs to no upload: `error` with the
    /// part's rid.
    fn reply_stray(&mut self, rid: &str, message: String, code: i32) {
        info!(%rid, %message, "stray stream part");
        let part = Envelope {
            id: rid.to_owned(),
            ..Envelope::default()
        };
        self.reply_error(&part, message, code);
    }

    /// Refuses `request`; a refused `upload` is [`Upload::Answered`].
    fn refuse(&mut self, request: Envelope, message: impl Into<String>, code: i32) {
        self.reply_error(&request, message, code);
        if request.command == "upload" {
            self.uploads.insert(request.id, Upload::Answered);
        }
    }

    /// Who `envelope` runs as: its own jwt, else the connection's user.
    fn identity_for(&self, envelope: &Envelope) -> Result<Option<Identity>, String> {
        if envelope.jwt.is_empty() {
            return Ok(self.user.clone());
        }
        self.shared
            .auth
            .verify(&envelope.jwt, SystemTime::now())
            .map(Some)
            .map_err(|e| e.to_string())
    }

    async fn on_request(&mut self, envelope: Envelope, payload: Payload) {
        info!(transport = self.transport, command = %envelope.command, id = %envelope.id,
            traceid = present(&envelope.traceid), spanid = present(&envelope.spanid), "request");
        if let Payload::SigninRequest(signin) = payload {
            return self.signin(&envelope, &signin);
        }
        if let Payload::ErrorResponse(error) = payload {
            return info!(message = %error.message, code = error.code, "peer error");
        }
        let identity = match self.identity_for(&envelope) {
            Ok(Some(identity)) => identity,
            Ok(None) => {
                let message = format!(
                    "sign in first: {:?} needs a signed-in connection",
                    envelope.command
                );
                return self.refuse(envelope, message, 401);
            }
            Err(message) => return self.refuse(envelope, message, 401),
        };
        match payload {
            Payload::UploadRequest(request) => self.start_upload(envelope, &request).await,
            Payload::DownloadRequest(request) => self.start_download(envelope, &request).await,
            _ => {
                let message = format!(
                    "command {:?} is not supported by this server (user {})",
                    envelope.command, identity.username
                );
                self.reply_error(&envelope, message, 501);
            }
        }
    }

    fn signin(&mut self, envelope: &Envelope, request: &SigninRequest) {
        let auth = &self.shared.auth;
        let now = SystemTime::now();
        let checked = if request.jwt.is_empty() {
            auth.check_password(&request.username, &request.password)
        } else {
            auth.verify(&request.jwt, now)
        };
        let identity = match checked {
            Ok(identity) => identity,
            Err(e) => {
                info!(username = %request.username, error = %e, "signin refused");
                return self.reply_error(envelope, e.to_string(), 401);
            }
        };
        let response = SigninResponse {
            jwt: auth.issue(&identity, now),
            user: Some(User {
                id: format!("user-{}", identity.username),
                name: identity.username.clone(),
                username: identity.username.clone(),
                ..User::default()
            }),
            config: "{}".to_owned(),
        };
        info!(username = %identity.username, validateonly = request.validateonly,
            agent = %request.agent, "signed in");
        if !request.validateonly {
            self.user = Some(identity);
        }
        if let Err(e) = self
            .conn
            .reply::<SigninRequest>(envelope, &response, Self::now())
        {
            debug!(error = %e, "could not queue the signin reply");
        }
    }

    async fn start_upload(&mut self, envelope: Envelope, request: &UploadRequest) {
        match self
            .shared
            .store
            .begin_upload(&request.filename, &request.mimetype)
            .await
        {
            Ok(file) => {
                let open = OpenUpload {
                    request: envelope,
                    file,
                    started: Instant::now(),
                    announced: false,
                };
                self.uploads
                    .insert(open.request.id.clone(), Upload::Open(Box::new(open)));
            }
            Err(e) => self.refuse(envelope, e.to_string(), 400),
        }
    }

    /// Queues an upload's chunk for its file. Each upload holds at most
    /// [`UPLOAD_WRITE_BEHIND`] bytes waiting for the disk, and so do all of
    /// the connection's uploads together: above it the session waits for
    /// the disk (on the upload with the most waiting) before it reads on.
    async fn on_chunk(&mut self, rid: &str, data: Bytes) {
        let Some(Upload::Open(open)) = self.uploads.get_mut(rid) else {
            return;
        };
        if let Err(e) = open.file.write(data).await {
            return self.write_failed(rid, e).await;
        }
        loop {
            let mut total = 0;
            let mut largest: Option<(&String, usize)> = None;
            for (rid, upload) in &self.uploads {
                if let Upload::Open(open) = upload {
                    let backlog = open.file.backlog();
                    total += backlog;
                    if largest.is_none_or(|(_, most)| backlog > most) {
                        largest = Some((rid, backlog));
                    }
                }
            }
            let Some((rid, _)) = largest.filter(|_| total >= UPLOAD_WRITE_BEHIND) else {
                return;
            };
            let rid = rid.clone();
            let Some(Upload::Open(open)) = self.uploads.get_mut(&rid) else {
                return;
            };
            let before = open.file.backlog();
            match open.file.wait().await {
                // Every queued chunk has a write in flight ahead of it, so
                // each wait shrinks the backlog; stop should one not.
                Ok(()) if open.file.backlog() >= before => return,
                Ok(()) => {}
                Err(e) => self.write_failed(&rid, e).await,
            }
        }
    }

    /// An upload's file could not be written: answered `error` 500, its
    /// temporary file removed, the remaining parts dropped and the end
    /// answered no more.
    async fn write_failed(&mut self, rid: &str, e: StoreError) {
        warn!(%rid, error = %e, "upload write failed");
        if let Some(Upload::Open(open)) = self.uploads.insert(rid.to_owned(), Upload::Answered) {
            open.file.discard().await;
            self.reply_error(&open.request, e.to_string(), 500);
        }
    }

    async fn finish_upload(
        &mut self,
        rid: &str,
        upload: OpenUpload,
        summary: crate::stream::StreamSummary,
    ) {
        let OpenUpload {
            request,
            file,
            started,
            announced,
        } = upload;
        let elapsed = started.elapsed();
        match file.commit(rid).await {
            Ok(meta) => {
                let secs = elapsed.as_secs_f64().max(1e-6);
                let mb = meta.bytes as f64 / (1024.0 * 1024.0);
                info!(id = %meta.id, filename = %meta.filename, bytes = meta.bytes,
                    chunks = summary.chunks, checksum_verified = announced,
                    "upload stored");
                let response = UploadResponse {
                    id: meta.id,
                    filename: meta.filename,
                    bytes: i32::try_from(meta.bytes).unwrap_or(i32::MAX),
                    chunks: i32::try_from(summary.chunks).unwrap_or(i32::MAX),
                    mb: mb as f32,
                    elapsed_time: i32::try_from(elapsed.as_millis()).unwrap_or(i32::MAX),
                    mbps: (mb / secs) as f32,
                };
                if let Err(e) = self
                    .conn
                    .reply::<UploadRequest>(&request, &response, Self::now())
                {
                    debug!(error = %e, "could not queue the upload reply");
                }
            }
            Err(StoreError::Payload(error)) => {
                warn!(%rid, %error, "upload failed");
                let code = crate::Error::from(error.clone()).code();
                self.reply_error(&request, error.to_string(), code);
            }
            Err(e) => {
                warn!(error = %e, "upload commit failed");
                self.reply_error(&request, e.to_string(), 500);
            }
        }
    }

    async fn start_download(&mut self, envelope: Envelope, request: &DownloadRequest) {
        if self.downloads.len() >= MAX_DOWNLOADS_PER_CONNECTION {
            let message = format!(
                "too many downloads in progress: found {}, limit {MAX_DOWNLOADS_PER_CONNECTION}",
                self.downloads.len()
            );
            return self.reply_error(&envelope, message, 429);
        }
        let store = &self.shared.store;
        let meta = if request.id.is_empty() {
            store.find_by_name(&request.filename).await
        } else {
            store.meta(&request.id).await
        };
        let opened = match meta {
            Ok(meta) => store.open_content(&meta.id).await.map(|file| (meta, file)),
            Err(e) => Err(e),
        };
        let (meta, file) = match opened {
            Ok(found) => found,
            Err(e) => return self.reply_error(&envelope, e.to_string(), 404),
        };
        let chunk_size = self.shared.connection.stream().chunk_size().get();
        let reader = ChunkReader::new(file, chunk_size, DOWNLOAD_READ_AHEAD);
        let mut sender = match self.conn.stream_sender(&envelope.id) {
            Ok(sender) => sender,
            Err(e) => return self.reply_error(&envelope, e.to_string(), e.code()),
        };
        let digest = crate::stream::parse_sha256_hex(&meta.sha256);
        let stat = Stat {
            size: i32::try_from(meta.bytes).unwrap_or(i32::MAX),
            ..Stat::default()
        };
        let begin = match sender.begin(digest, Some(stat)) {
            Ok(begin) => begin,
            Err(e) => return self.reply_error(&envelope, e.to_string(), 500),
        };
        if let Err(e) = self.conn.send(begin, Self::now()) {
            return self.reply_error(&envelope, e.to_string(), e.code());
        }
        info!(id = %meta.id, bytes = meta.bytes, "download started");
        self.downloads.push_back(Download {
            request: envelope,
            meta,
            reader,
            sender,
        });
    }

    /// Queues the current download's chunks that are ready while the
    /// transmit queue holds fewer than [`DOWNLOAD_SEND_AHEAD`] envelopes,
    /// and starts the next reads.
    async fn top_up(&mut self) {
        while self.conn.queued_transmit() < DOWNLOAD_SEND_AHEAD {
            let Some(download) = self.downloads.front_mut() else {
                return;
            };
            download.reader.read_ahead();
            let Some(read) = download.reader.next_ready().await else {
                return;
            };
            let now = Self::now();
            let outcome = match read {
                Err(e) => Err(e.to_string()),
                Ok(chunk) if chunk.is_empty() => {
                    // End of file: endstream, then the reply.
                    let Some(done) = self.downloads.pop_front() else {
                        return;
                    };
                    self.finish_download(done, now);
                    continue;
                }
                Ok(chunk) => self
                    .conn
                    .send_chunk(&mut download.sender, chunk, now)
                    .map_err(|e| e.to_string()),
            };
            if let Err(message) = outcome
                && let Some(failed) = self.downloads.pop_front()
            {
                warn!(id = %failed.meta.id, %message, "download failed");
                self.reply_error(&failed.request, message, 500);
            }
        }
        if let Some(download) = self.downloads.front_mut() {
            download.reader.read_ahead();
        }
    }

    fn finish_download(&mut self, mut done: Download, now: Instant) {
        let end = match done.sender.end() {
            Ok(end) => end,
            Err(e) => return self.reply_error(&done.request, e.to_string(), 500),
        };
        let response = DownloadResponse {
            id: done.meta.id.clone(),
            filename: done.meta.filename.clone(),
            mimetype: done.meta.mimetype.clone(),
        };
        let sent = self.conn.send(end, now).and_then(|_| {
            self.conn
                .reply::<DownloadRequest>(&done.request, &response, now)
        });
        match sent {
            Ok(()) => info!(id = %done.meta.id, bytes = done.sender.bytes_sent(),
                chunks = done.sender.chunks_sent(), "download sent"),
            Err(e) => debug!(error = %e, "could not queue the end of a download"),
        }
    }
}

/// Waits for the read in flight of the front download (cancel-safe).
async fn read_front(downloads: &mut VecDeque<Download>) {
    if let Some(download) = downloads.front_mut() {
        download.reader.wait().await;
    }
}

/// How long one REST request may take in its session before it is
/// answered `error` 504.
#[cfg(feature = "transport-rest")]
pub const REST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Answers one REST envelope statelessly: a fresh session (a new
/// [`Connection`], nobody signed in) over an
/// [`Exchange`](crate::transport::rest::Exchange); the reply is what it
/// sent back for the envelope's id.
#[cfg(feature = "transport-rest")]
pub(super) async fn exchange(
    request: Envelope,
    shared: Arc<Shared>,
    peer: String,
    stop: watch::Receiver<bool>,
) -> Envelope {
    use crate::envelope::error_reply;
    use crate::transport::rest::Exchange;
    let (io, replies) = Exchange::new(request.clone());
    let session = Session::new(Box::new(io), shared, "rest", peer);
    if tokio::time::timeout(REST_TIMEOUT, session.run(stop))
        .await
        .is_err()
    {
        let message = format!("no answer within {REST_TIMEOUT:?}");
        return error_reply(&request, message, 504);
    }
    replies
        .take()
        .into_iter()
        .find(|sent| sent.rid == request.id)
        .unwrap_or_else(|| {
            let message = format!(
                "nothing answers a {:?} envelope with rid {:?}: REST carries requests",
                request.command, request.rid
            );
            error_reply(&request, message, 400)
        })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use bytes::BytesMut;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    use super::*;
    use crate::envelope::{decode_envelope, pack};
    use crate::frame::{FrameDecoder, encode_frame};
    use crate::proto::{BeginStream, PingRequest, Stream};
    use crate::server::ServerConfig;
    use crate::server::auth::Auth;
    use crate::server::store::FileStore;
    use crate::transport::ByteStream;

    /// A session over an in-memory pipe; the other end is returned, with
    /// the shutdown sender (dropping it would stop the session).
    fn start(tag: &str) -> (DuplexStream, watch::Sender<bool>, PathBuf) {
        let root = std::env::temp_dir().join(format!(
            "openiap-session-{tag}-{}-{:?}",
            std::process::id(),
            Instant::now()
        ));
        let mut auth = Auth::new(b"secret".to_vec(), Duration::from_secs(60));
        auth.add_user("dev", "pw");
        let shared = Arc::new(Shared {
            auth,
            store: FileStore::open(&root).unwrap(),
            connection: ServerConfig::new(&root).connection,
        });
        let (peer, server) = tokio::io::duplex(64 * 1024);
        let session = Session::new(
            Box::new(ByteStream::new(server)),
            shared,
            "test",
            "peer".into(),
        );
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(session.run(stopped));
        (peer, stop, root)
    }

    /// Frames `envelopes` with seqs from 0.
    fn wire(envelopes: Vec<Envelope>) -> Vec<u8> {
        let mut out = BytesMut::new();
        for (seq, mut envelope) in (0..).zip(envelopes) {
            envelope.seq = seq;
            if envelope.id.is_empty() {
                envelope.id = format!("e{seq}");
            }
            encode_frame(&envelope, usize::MAX, &mut out).unwrap();
        }
        out.to_vec()
    }

    /// Reads envelopes until `n` have arrived.
    async fn read(peer: &mut DuplexStream, n: usize) -> Vec<Envelope> {
        let mut decoder = FrameDecoder::default();
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while seen.len() < n {
            let read = tokio::time::timeout(Duration::from_secs(5), peer.read(&mut buf))
                .await
                .expect("an answer within 5 s")
                .unwrap();
            assert_ne!(read, 0, "closed after {seen:?}");
            decoder.push(&buf[..read]);
            while let Some(frame) = decoder.decode().unwrap() {
                seen.push(decode_envelope(frame).unwrap());
            }
        }
        seen
    }

    /// Sends a ping with `seq` and asserts that the next envelope to
    /// arrive is its pong: nothing else was queued before it.
    async fn assert_pong_comes_next(peer: &mut DuplexStream, seq: i32) {
        let mut ping = pack(&PingRequest {});
        ping.id = "last".into();
        ping.seq = seq;
        let mut frame = BytesMut::new();
        encode_frame(&ping, usize::MAX, &mut frame).unwrap();
        peer.write_all(&frame).await.unwrap();
        let next = read(peer, 1).await;
        assert_eq!(
            (next[0].command.as_str(), next[0].rid.as_str()),
            ("pong", "last")
        );
    }

    fn part(rid: &str, mut envelope: Envelope) -> Envelope {
        envelope.rid = rid.to_owned();
        envelope
    }

    #[tokio::test]
    async fn undecodable_envelope_is_explained_before_the_close() {
        // The driver flushes the notice of a connection-fatal error (the
        // session does not flush again); an undecodable envelope ends the
        // connection and must not close it without a word.
        let (mut peer, _stop, root) = start("undecodable");
        peer.write_all(&[4, 0, 0, 0, 0x0f, 0xff, 0xff, 0xff])
            .await
            .unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), peer.read_to_end(&mut answer))
            .await
            .unwrap()
            .unwrap();
        let mut decoder = FrameDecoder::default();
        decoder.push(&answer);
        let notice = decode_envelope(decoder.decode().unwrap().unwrap()).unwrap();
        assert_eq!(notice.command, "error");
        assert_eq!(decoder.buffered(), 0);
        std::fs::remove_dir_all(root).unwrap();
    }

    #[tokio::test]
    async fn stray_stream_parts_are_answered() {
        let (mut peer, _stop, root) = start("stray");
        let input = wire(vec![
            part("nosuch", pack(&Stream::default())),
            part("other", pack(&BeginStream::default())),
            part("other", pack(&Stream::default())),
            pack(&PingRequest {}),
        ]);
        peer.write_all(&input).await.unwrap();
        let seen = read(&mut peer, 3).await;
        let mut summary: Vec<_> = seen
            .iter()
            .map(|e| (e.command.as_str(), e.rid.as_str()))
            .collect();
        // The core answers the ping at once, the session the parts: sort.
        summary.sort_unstable();
        // One error per stray stream, none for the parts behind an answered
        // beginstream.
        assert_eq!(
            summary,
            [("error", "nosuch"), ("error", "other"), ("pong", "e3")]
        );
        // Nothing else was queued: the next ping's pong comes next.
        assert_pong_comes_next(&mut peer, 4).await;
        std::fs::remove_dir_all(root).unwrap();
    }

    #[tokio::test]
    async fn upload_checksum_is_checked_when_announced_and_optional() {
        // A wrong checksum fails the upload and stores nothing; an empty
        // one (the Node package's default) stores what arrived.
        let (mut peer, _stop, root) = start("checksum");
        let content = Bytes::from(vec![5u8; 1000]);
        let mut signin = pack(&SigninRequest {
            username: "dev".into(),
            password: "pw".into(),
            ..Default::default()
        });
        signin.id = "s".into();
        let upload = |id: &str, filename: &str| {
            let mut envelope = pack(&UploadRequest {
                filename: filename.into(),
                ..Default::default()
            });
            envelope.id = id.into();
            envelope
        };
        let begin = |checksum: String| {
            pack(&BeginStream {
                checksum,
                stat: None,
            })
        };
        let chunk = pack(&Stream {
            data: content.clone(),
        });
        let input = wire(vec![
            signin,
            upload("bad", "bad.bin"),
            part("bad", begin("0".repeat(64))),
            part("bad", chunk.clone()),
            part("bad", pack(&crate::proto::EndStream {})),
            upload("none", "none.bin"),
            part("none", begin(String::new())),
            part("none", chunk),
            part("none", pack(&crate::proto::EndStream {})),
        ]);
        peer.write_all(&input).await.unwrap();
        let seen = read(&mut peer, 3).await;
        let by_rid = |rid: &str| seen.iter().find(|e| e.rid == rid).unwrap();
        let strict = crate::command::Validation::Strict;
        let refused = crate::envelope::unpack::<ErrorResponse>(by_rid("bad"), strict).unwrap();
        assert!(refused.message.contains("checksum mismatch"), "{refused:?}");
        let stored = crate::envelope::unpack::<UploadResponse>(by_rid("none"), strict).unwrap();
        assert_eq!(stored.bytes, 1000);
        let files = std::fs::read_dir(root.join("files"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect::<Vec<_>>();
        assert_eq!(files, std::slice::from_ref(&stored.id));
        let dir = root.join("files").join(&stored.id);
        assert_eq!(std::fs::read(dir.join("content")).unwrap(), content);
        let meta = std::fs::read_to_string(dir.join("meta.json")).unwrap();
        assert!(
            meta.contains(&crate::stream::sha256_hex(&content)),
            "{meta}"
        );
        assert_eq!(std::fs::read_dir(root.join("tmp")).unwrap().count(), 0);
        std::fs::remove_dir_all(root).unwrap();
    }

    #[tokio::test]
    async fn refused_upload_is_answered_once() {
        // Not signed in: the upload is refused, and its stream, which then
        // fails (a malformed checksum), gets no second answer.
        let (mut peer, _stop, root) = start("refused");
        let mut upload = pack(&UploadRequest {
            filename: "a.bin".into(),
            ..Default::default()
        });
        upload.id = "u".into();
        let begin = BeginStream {
            checksum: "not hex".into(),
            stat: None,
        };
        let input = wire(vec![
            upload,
            part("u", pack(&begin)),
            part("u", pack(&Stream::default())),
            part("u", pack(&crate::proto::EndStream {})),
            pack(&PingRequest {}),
        ]);
        peer.write_all(&input).await.unwrap();
        let seen = read(&mut peer, 2).await;
        let mut summary: Vec<_> = seen
            .iter()
            .map(|e| (e.command.as_str(), e.rid.as_str()))
            .collect();
        summary.sort_unstable();
        assert_eq!(summary, [("error", "u"), ("pong", "e4")]);
        let error = seen.iter().find(|e| e.command == "error").unwrap();
        let error =
            crate::envelope::unpack::<ErrorResponse>(error, crate::command::Validation::Strict)
                .unwrap();
        assert_eq!(error.code, 401);
        assert_pong_comes_next(&mut peer, 5).await;
        assert_eq!(std::fs::read_dir(root.join("tmp")).unwrap().count(), 0);
        std::fs::remove_dir_all(root).unwrap();
    }
}
