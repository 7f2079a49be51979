//! Two [`Connection`]s, a client and a server, driven against each other in
//! memory the way quinn-proto's `Pair::drive` does it: no sockets, no tokio;
//! the clock is an `Instant` advanced by hand. Everything but that starting
//! instant is deterministic for a given seed.
//!
//! ```text
//!   client ── poll_transmit ─► Link (random pieces, a tail held back) ─► handle_bytes ── server
//!   client ◄─ handle_bytes ─── Link ◄──────────────────────────────── poll_transmit ── server
//!                                                                      │ events  ▲ replies, streams
//!                                                                      ▼         │
//!                                                                     FileServer (the application)
//! ```
//!
//! In gRPC mode the links carry whole envelopes (`poll_envelope` →
//! `handle_envelope`), a random number of them per step.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use openiap_wire::command::{Payload, Validation};
use openiap_wire::connection::{Connection, ConnectionConfig, Event, Role};
use openiap_wire::envelope::{EnvelopeExt, Request, WireMessage};
use openiap_wire::proto::{
    DownloadRequest, DownloadResponse, Envelope, ErrorResponse, PingRequest, QueryRequest,
    QueryResponse, SigninRequest, SigninResponse, UploadRequest, UploadResponse,
};
use openiap_wire::stream::{StreamError, StreamSender, StreamSummary, sha256, sha256_hex};
use proptest::prelude::*;

/// Virtual time that passes per [`Pair::step`].
const TICK: Duration = Duration::from_millis(1);
/// A pair that is not quiet after this many steps is livelocked.
const MAX_STEPS: usize = 10_000;

/// splitmix64: a tiny seeded PRNG, enough to cut bytes and fill files.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `low..=high`.
    fn between(&mut self, low: usize, high: usize) -> usize {
        low + (self.next() % (high - low + 1) as u64) as usize
    }

    fn bytes(&mut self, len: usize) -> Bytes {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next().to_le_bytes());
        }
        out.truncate(len);
        out.into()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    /// Length-prefixed frames on a byte stream (TCP, pipe, WebSocket).
    Framed,
    /// Whole envelopes, no framing.
    Grpc,
}

/// One direction of the in-memory wire.
struct Link {
    transport: Transport,
    /// Largest piece handed to `handle_bytes` at once.
    max_piece: usize,
    /// Bytes sent but not yet delivered.
    in_flight: BytesMut,
}

impl Link {
    /// Moves what `from` queued towards `to`; returns whether anything was
    /// sent or delivered.
    fn step(
        &mut self,
        from: &mut Connection,
        to: &mut Connection,
        rng: &mut Rng,
        now: Instant,
    ) -> bool {
        if self.transport == Transport::Grpc {
            let mut moved = false;
            for _ in 0..rng.between(1, 8) {
                let Some(envelope) = from.poll_envelope() else {
                    break;
                };
                to.handle_envelope(envelope, now).expect("handle_envelope");
                moved = true;
            }
            return moved;
        }
        let produced = from.poll_transmit(&mut self.in_flight) > 0;
        // Hold a random tail back while more is coming, so pieces straddle
        // the batches `poll_transmit` hands out.
        let hold = if produced {
            rng.between(0, self.max_piece).min(self.in_flight.len())
        } else {
            0
        };
        let mut deliver = self.in_flight.split_to(self.in_flight.len() - hold);
        let moved = !deliver.is_empty();
        while !deliver.is_empty() {
            // One piece in eight is tiny, so length prefixes get cut too.
            let max = if rng.next().is_multiple_of(8) {
                self.max_piece.min(8)
            } else {
                self.max_piece
            };
            let piece = deliver.split_to(rng.between(1, max).min(deliver.len()));
            to.handle_bytes(&piece, now).expect("handle_bytes");
        }
        moved || produced
    }
}

/// An `ErrorResponse` with `message` and `code`.
fn failure(message: &str, code: i32) -> ErrorResponse {
    let (message, stack) = (message.to_owned(), String::new());
    ErrorResponse {
        message,
        code,
        stack,
    }
}

/// `events` for a failure message, chunks shown by their length only.
fn show(events: &[Event]) -> String {
    let one = |event: &Event| match event {
        Event::StreamChunk { rid, data } => format!("StreamChunk {rid}: {} bytes", data.len()),
        other => format!("{other:?}"),
    };
    events.iter().map(one).collect::<Vec<_>>().join("\n")
}

/// Where the first event matching `f` is.
fn index(events: &[Event], f: impl Fn(&Event) -> bool) -> usize {
    let found = events.iter().position(f);
    found.unwrap_or_else(|| panic!("no such event in\n{}", show(events)))
}

/// The envelope and payload of an [`Event::Request`] (the inner function
/// derefs the payload whether the event boxes it or not).
fn request(event: &Event) -> Option<(&Envelope, &Payload)> {
    fn payload(payload: &Payload) -> &Payload {
        payload
    }
    match event {
        Event::Request {
            envelope,
            payload: p,
        } => Some((envelope, payload(p))),
        _ => None,
    }
}

fn is_reply_to(event: &Event, id: &str) -> bool {
    matches!(event, Event::Reply { request_id, .. } if request_id == id)
}

/// A transfer: its request, the file name and the bytes (received so far,
/// or left to send).
struct Transfer {
    request: Envelope,
    filename: String,
    data: BytesMut,
}

type Result<T = ()> = std::result::Result<T, openiap_wire::Error>;

/// The server application: signin, query, upload, download.
#[derive(Default)]
struct FileServer {
    uploads: HashMap<String, Transfer>,
    /// Stored files by id: name, content and the upload's summary.
    files: HashMap<String, (String, Bytes, StreamSummary)>,
    /// Paced downloads in progress.
    outgoing: Vec<(Transfer, StreamSender)>,
    /// Send downloads one chunk per step (a slow disk) instead of at once.
    paced: bool,
    /// Fail paced downloads with `error` after this many chunks.
    fail_download_after: Option<u64>,
}

impl FileServer {
    fn on_event(&mut self, server: &mut Connection, event: &Event, now: Instant) -> Result {
        if let Some((envelope, payload)) = request(event) {
            return self.on_request(server, envelope, payload, now);
        }
        match event {
            Event::StreamChunk { rid, data } => {
                if let Some(upload) = self.uploads.get_mut(rid) {
                    upload.data.extend_from_slice(data);
                }
                Ok(())
            }
            Event::StreamEnded { rid, summary } => {
                let Some(upload) = self.uploads.remove(rid) else {
                    return Ok(());
                };
                let id = format!("file{}", self.files.len());
                let response = UploadResponse {
                    id: id.clone(),
                    filename: upload.filename.clone(),
                    bytes: i32::try_from(summary.bytes).unwrap_or(i32::MAX),
                    chunks: i32::try_from(summary.chunks).unwrap_or(i32::MAX),
                    ..Default::default()
                };
                let file = (upload.filename, upload.data.freeze(), summary.clone());
                self.files.insert(id, file);
                server.reply::<UploadRequest>(&upload.request, &response, now)
            }
            Event::StreamFailed { rid, error } => match self.uploads.remove(rid) {
                Some(upload) => {
                    let answer = failure(&error.to_string(), 400);
                    server.reply_error(&upload.request, &answer, now)
                }
                None => Ok(()),
            },
            // Pings are answered by the connection, and so are rejections.
            _ => Ok(()),
        }
    }

    fn on_request(
        &mut self,
        server: &mut Connection,
        envelope: &Envelope,
        payload: &Payload,
        now: Instant,
    ) -> Result {
        match payload {
            Payload::SigninRequest(signin) => {
                let jwt = format!("jwt-for-{}", signin.username);
                let response = SigninResponse {
                    jwt,
                    ..Default::default()
                };
                server.reply::<SigninRequest>(envelope, &response, now)
            }
            Payload::QueryRequest(_) => {
                let response = QueryResponse {
                    results: "[]".into(),
                };
                server.reply::<QueryRequest>(envelope, &response, now)
            }
            Payload::UploadRequest(upload) => {
                let (request, data) = (envelope.clone(), BytesMut::new());
                let filename = upload.filename.clone();
                let upload = Transfer {
                    request,
                    filename,
                    data,
                };
                self.uploads.insert(envelope.id.clone(), upload);
                Ok(())
            }
            Payload::DownloadRequest(download) => {
                let Some((filename, content, _)) = self.files.get(&download.id) else {
                    let answer = failure(&format!("no file {}", download.id), 404);
                    return server.reply_error(envelope, &answer, now);
                };
                if !self.paced {
                    let content = content.clone();
                    server.send_stream(&envelope.id, content, true, None, now)?;
                    return reply_download(server, envelope, filename, now);
                }
                let mut sender = server.stream_sender(&envelope.id)?;
                let begin = sender.begin(Some(sha256(content)), None)?;
                server.send(begin, now)?;
                let (request, data) = (envelope.clone(), BytesMut::from(&content[..]));
                let filename = filename.clone();
                let download = Transfer {
                    request,
                    filename,
                    data,
                };
                self.outgoing.push((download, sender));
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Sends the next chunk of every paced download; true while any is left.
    fn tick(&mut self, server: &mut Connection, now: Instant) -> Result<bool> {
        let chunk_size = server.config().stream().chunk_size().get();
        for (mut out, mut sender) in std::mem::take(&mut self.outgoing) {
            let sent = sender.chunks_sent();
            if self.fail_download_after.is_some_and(|n| sent >= n) {
                server.reply_error(&out.request, &failure("disk gone", 500), now)?;
            } else if out.data.is_empty() {
                server.send(sender.end()?, now)?;
                reply_download(server, &out.request, &out.filename, now)?;
            } else {
                let piece = out.data.split_to(chunk_size.min(out.data.len()));
                server.send(sender.chunk(piece.freeze())?, now)?;
                self.outgoing.push((out, sender));
            }
        }
        Ok(!self.outgoing.is_empty())
    }
}

/// Answers a `download` with `downloadreply`.
fn reply_download(server: &mut Connection, request: &Envelope, name: &str, now: Instant) -> Result {
    let asked = request.unpack::<DownloadRequest>(Validation::Strict);
    let (id, filename) = (asked?.id, name.to_owned());
    let response = DownloadResponse {
        id,
        filename,
        ..Default::default()
    };
    server.reply::<DownloadRequest>(request, &response, now)
}

/// A client and a server wired together in memory.
struct Pair {
    client: Connection,
    server: Connection,
    app: FileServer,
    rng: Rng,
    now: Instant,
    links: [Link; 2],
    client_events: Vec<Event>,
    server_events: Vec<Event>,
}

impl Pair {
    fn new(seed: u64) -> Self {
        Self::with(seed, Transport::Framed, 4096)
    }

    fn with(seed: u64, transport: Transport, max_piece: usize) -> Self {
        let now = Instant::now();
        let config = ConnectionConfig::default();
        let link = || Link {
            transport,
            max_piece,
            in_flight: BytesMut::new(),
        };
        Self {
            client: Connection::new(Role::Client, config.clone(), now),
            server: Connection::new(Role::Server, config, now),
            app: FileServer::default(),
            rng: Rng(seed),
            now,
            links: [link(), link()],
            client_events: Vec::new(),
            server_events: Vec::new(),
        }
    }

    /// One round: both links, due timers, the server application, events.
    /// Returns whether anything is still moving.
    fn step(&mut self) -> bool {
        self.now += TICK;
        let now = self.now;
        let (client, server, rng) = (&mut self.client, &mut self.server, &mut self.rng);
        let [up, down] = &mut self.links;
        let mut busy = up.step(client, server, rng, now);
        busy |= down.step(server, client, rng, now);
        for conn in [&mut *client, &mut *server] {
            if conn.poll_timeout().is_some_and(|at| at <= now) {
                conn.handle_timeout(now).expect("handle_timeout");
            }
        }
        while let Some(event) = server.poll_event() {
            let handled = self.app.on_event(server, &event, now);
            handled.expect("server application");
            self.server_events.push(event);
        }
        busy |= self.app.tick(server, now).expect("paced download");
        self.client_events
            .extend(std::iter::from_fn(|| client.poll_event()));
        let in_flight = self.links.iter().any(|l| !l.in_flight.is_empty());
        busy || in_flight || client.has_transmit() || server.has_transmit()
    }

    /// Steps until both sides are quiet.
    fn drive(&mut self) {
        for _ in 0..MAX_STEPS {
            if !self.step() {
                return;
            }
        }
        panic!("the pair is still busy after {MAX_STEPS} steps");
    }

    /// Sends a request from the client; returns its id.
    fn request<M: Request>(&mut self, message: &M) -> String {
        self.client.request(message, self.now).expect("request")
    }

    /// Asks for the file `file_id`; returns the request id.
    fn request_download(&mut self, file_id: &str) -> String {
        let id = file_id.to_owned();
        self.request(&DownloadRequest {
            id,
            ..Default::default()
        })
    }

    /// Removes the client's reply to `id` and returns its envelope.
    fn take_reply(&mut self, id: &str) -> Envelope {
        let at = index(&self.client_events, |e| is_reply_to(e, id));
        match self.client_events.remove(at) {
            Event::Reply { envelope, .. } => envelope,
            other => panic!("{other:?}"),
        }
    }

    fn reply<M: WireMessage>(&mut self, id: &str) -> M {
        let envelope = self.take_reply(id);
        envelope.unpack(Validation::Strict).expect("reply payload")
    }

    /// Sends `upload`, then its transfer piece by piece with a
    /// `stream_sender`, announcing `digest`; `between(pair, i)` runs after
    /// chunk `i`. Returns the request id.
    fn upload_by_hand(
        &mut self,
        content: &Bytes,
        digest: [u8; 32],
        mut between: impl FnMut(&mut Self, usize),
    ) -> String {
        let id = self.request(&UploadRequest::default());
        let mut sender = self.client.stream_sender(&id).expect("sender");
        let mut parts = vec![sender.begin(Some(digest), None).expect("begin")];
        parts.extend(sender.chunks(content.clone()).expect("chunks"));
        parts.push(sender.end().expect("end"));
        let last = parts.len() - 1;
        for (i, part) in parts.into_iter().enumerate() {
            self.client.send(part, self.now).expect("send part");
            if (1..last).contains(&i) {
                between(self, i - 1);
            }
        }
        id
    }

    /// Uploads `content` with a checksum; returns the server's file id.
    fn upload(&mut self, content: &Bytes) -> String {
        let filename = "data.bin".into();
        let request = UploadRequest {
            filename,
            ..Default::default()
        };
        let uploaded = self
            .client
            .upload(&request, content.clone(), true, self.now);
        let id = uploaded.expect("upload");
        self.drive();
        let response: UploadResponse = self.reply(&id);
        assert_eq!(response.filename, "data.bin");
        assert_eq!(response.bytes as usize, content.len());
        let (_, stored, summary) = &self.app.files[&response.id];
        assert!(stored == content, "the server stored other bytes");
        assert!(summary.checksum_verified, "the server verified the upload");
        response.id
    }

    /// Downloads `file_id`; returns the bytes and the client's summary.
    fn download(&mut self, file_id: &str) -> (Bytes, StreamSummary) {
        let id = self.request_download(file_id);
        self.drive();
        let events = &self.client_events;
        let ended = index(
            events,
            |e| matches!(e, Event::StreamEnded { rid, .. } if *rid == id),
        );
        let replied = index(events, |e| is_reply_to(e, &id));
        assert!(ended < replied, "downloadreply comes after endstream");
        let received = received(&mut self.client_events, &id);
        assert_eq!(self.reply::<DownloadResponse>(&id).id, file_id);
        received
    }
}

/// Removes the events of transfer `rid` from `events`, checking their
/// order (started, chunks, ended), and returns the data and the summary.
fn received(events: &mut Vec<Event>, rid: &str) -> (Bytes, StreamSummary) {
    let mut data = BytesMut::new();
    let (mut started, mut end) = (false, None);
    events.retain(|event| match event {
        Event::StreamStarted { rid: r, started: s } if r == rid => {
            assert!(!started && s.was_expected && s.checksum.is_some(), "{s:?}");
            started = true;
            false
        }
        Event::StreamChunk { rid: r, data: d } if r == rid => {
            assert!(started && end.is_none(), "chunk outside the transfer");
            data.extend_from_slice(d);
            false
        }
        Event::StreamEnded { rid: r, summary } if r == rid => {
            let first = end.replace(summary.clone()).is_none();
            assert!(started && first, "end outside the transfer");
            false
        }
        Event::StreamFailed { rid: r, error } if r == rid => panic!("failed: {error}"),
        _ => true,
    });
    let end = end.unwrap_or_else(|| panic!("transfer {rid} did not end"));
    (data.freeze(), end)
}

/// Uploads, downloads back and checks both sides; returns the upload's and
/// the download's summaries.
fn round_trip(pair: &mut Pair, content: &Bytes) -> (StreamSummary, StreamSummary) {
    let file_id = pair.upload(content);
    let (data, summary) = pair.download(&file_id);
    assert_eq!(data.len(), content.len());
    assert!(data == content, "downloaded bytes differ");
    assert!(summary.checksum_verified, "client verified");
    assert_eq!(summary.sha256, Some(sha256_hex(content)));
    for conn in [&pair.client, &pair.server] {
        assert_eq!((conn.pending_requests(), conn.open_streams()), (0, 0));
    }
    (pair.app.files[&file_id].2.clone(), summary)
}

/// The golden vectors' conversation: signin, 3 pings, an unknown command,
/// upload, download.
fn conversation(pair: &mut Pair) {
    let username = "harness".into();
    let id = pair.request(&SigninRequest {
        username,
        ..Default::default()
    });
    pair.drive();
    assert_eq!(pair.reply::<SigninResponse>(&id).jwt, "jwt-for-harness");

    let pings: Vec<String> = (0..3).map(|_| pair.request(&PingRequest {})).collect();
    pair.drive();
    for ping in &pings {
        assert_eq!(pair.take_reply(ping).command, "pong");
    }
    let is_ping = |e: &&Event| matches!(e, Event::Ping { .. });
    assert_eq!(pair.server_events.iter().filter(is_ping).count(), 3);

    let command = "nosuchcommand".into();
    let unknown = Envelope {
        command,
        ..Default::default()
    };
    let id = pair.client.send(unknown, pair.now).expect("send");
    pair.drive();
    let rejected = |e: &Event| matches!(e, Event::Rejected { envelope, .. } if envelope.id == id);
    index(&pair.server_events, rejected);
    let last = pair.client_events.pop();
    let Some((envelope, Payload::ErrorResponse(error))) = last.as_ref().and_then(request) else {
        panic!("expected the error for the unknown command: {last:?}");
    };
    assert_eq!((&*envelope.command, &*envelope.rid), ("error", &*id));
    assert!(error.message.contains("nosuchcommand"), "{}", error.message);

    let content = pair.rng.bytes(314_573);
    round_trip(pair, &content);
    assert!(
        pair.client_events.is_empty(),
        "{}",
        show(&pair.client_events)
    );
}

#[test]
fn signin_pings_upload_download_round_trip() {
    conversation(&mut Pair::new(1));
}

#[test]
fn grpc_mode_round_trip() {
    conversation(&mut Pair::with(2, Transport::Grpc, 0));
}

/// A round trip of `size` bytes; both sides count `chunks` stream messages.
fn transfer(size: usize, chunks: u64) {
    let mut pair = Pair::new(size as u64);
    let content = pair.rng.bytes(size);
    let (up, down) = round_trip(&mut pair, &content);
    assert_eq!((up.bytes, up.chunks), (size as u64, chunks));
    assert_eq!((down.bytes, down.chunks), (size as u64, chunks));
}

#[test]
fn transfer_of_zero_bytes() {
    transfer(0, 0);
}

#[test]
fn transfer_of_one_byte() {
    transfer(1, 1);
}

#[test]
fn transfer_of_exactly_one_chunk() {
    transfer(256 * 1024, 1);
}

#[test]
fn transfer_of_many_chunks() {
    transfer(1024 * 1024 + 3, 5);
}

#[test]
fn requests_and_replies_interleave_with_transfers() {
    let mut pair = Pair::new(3);
    let content = pair.rng.bytes(2 * 1024 * 1024 + 5);
    // Upload by hand: a ping after every chunk, a query after the first.
    let mut asked = Vec::new();
    let upload = pair.upload_by_hand(&content, sha256(&content), |pair, i| {
        asked.push(pair.request(&PingRequest {}));
        if i == 0 {
            asked.push(pair.request(&QueryRequest::default()));
        }
    });
    pair.drive();
    // The server saw the 9 pings and the query between begin and end.
    let is_begin = |e: &Event| matches!(e, Event::StreamStarted { .. });
    let is_end = |e: &Event| matches!(e, Event::StreamEnded { .. });
    let events = &pair.server_events;
    let inside = &events[index(events, is_begin)..index(events, is_end)];
    let is_ping = |e: &&Event| matches!(e, Event::Ping { .. });
    assert_eq!(inside.iter().filter(is_ping).count(), 9);
    let is_query = |e: &Event| matches!(request(e), Some((_, Payload::QueryRequest(_))));
    index(inside, is_query);
    // Every pong and the queryreply reach the client before the uploadreply.
    let reply_at = |events: &[Event], id: &str| index(events, |e| is_reply_to(e, id));
    let events = &pair.client_events;
    let uploaded = reply_at(events, &upload);
    assert!(asked.iter().all(|id| reply_at(events, id) < uploaded));
    let file_id = pair.reply::<UploadResponse>(&upload).id;
    pair.client_events.clear();

    // Download from a slow disk, pinging on every step while it is open.
    pair.app.paced = true;
    let download = pair.request_download(&file_id);
    let mut pings = Vec::new();
    while pair.step() {
        let events = pair.client_events.iter();
        if events.clone().any(is_begin) && !events.clone().any(is_end) {
            pings.push(pair.request(&PingRequest {}));
        }
    }
    let events = &pair.client_events;
    let during = index(events, is_begin)..index(events, is_end);
    let inside = pings
        .iter()
        .filter(|id| during.contains(&reply_at(events, id)));
    let pongs_inside = inside.count();
    assert!(
        pongs_inside > 1,
        "pongs during the download: {pongs_inside}"
    );
    let (data, summary) = received(&mut pair.client_events, &download);
    assert!(data == content && summary.checksum_verified);
    assert_eq!(pair.take_reply(&download).command, "downloadreply");
    for ping in &pings {
        assert_eq!(pair.take_reply(ping).command, "pong");
    }
    assert!(
        pair.client_events.is_empty(),
        "{}",
        show(&pair.client_events)
    );
    assert_eq!(pair.client.pending_requests(), 0);
}

#[test]
fn upload_with_wrong_checksum_fails_and_stores_nothing() {
    let mut pair = Pair::new(4);
    let content = pair.rng.bytes(300_000);
    let id = pair.upload_by_hand(&content, sha256(b"another file"), |_, _| {});
    pair.drive();

    let failed = pair.server_events.iter().find_map(|e| match e {
        Event::StreamFailed { rid, error } if *rid == id => Some(error.clone()),
        _ => None,
    });
    let Some(StreamError::ChecksumMismatch {
        expected, actual, ..
    }) = failed
    else {
        panic!("expected a checksum mismatch: {failed:?}");
    };
    assert_eq!(expected, sha256_hex(b"another file"));
    assert_eq!(actual, sha256_hex(&content));
    let events = &pair.client_events;
    let [
        Event::PeerError {
            request_id, error, ..
        },
    ] = &events[..]
    else {
        panic!("expected the upload's error: {}", show(events));
    };
    assert_eq!(request_id, &id);
    assert!(error.message.contains("checksum mismatch"), "{error:?}");
    assert!(pair.app.files.is_empty() && pair.app.uploads.is_empty());
    assert_eq!(
        pair.server.open_streams() + pair.client.pending_requests(),
        0
    );
}

#[test]
fn server_error_mid_download_fails_stream_and_request() {
    let mut pair = Pair::new(5);
    let content = pair.rng.bytes(600_000);
    let file_id = pair.upload(&content);
    (pair.app.paced, pair.app.fail_download_after) = (true, Some(1));
    let id = pair.request_download(&file_id);
    pair.drive();

    // Started, one chunk, then the error fails the transfer and the
    // request; no downloadreply follows.
    let events = &pair.client_events;
    let [started, chunk, failed, error] = &events[..] else {
        panic!("{}", show(events))
    };
    assert!(matches!(started, Event::StreamStarted { rid, .. } if *rid == id));
    assert!(matches!(chunk, Event::StreamChunk { data, .. } if data.len() == 256 * 1024));
    let gone = |e: &StreamError| matches!(e, StreamError::PeerError { message, code: 500, .. } if message == "disk gone");
    assert!(matches!(failed, Event::StreamFailed { rid, error } if *rid == id && gone(error)));
    let said = |e: &ErrorResponse| e.message == "disk gone";
    assert!(
        matches!(error, Event::PeerError { request_id, error, .. } if *request_id == id && said(error))
    );
    assert_eq!(
        pair.client.pending_requests() + pair.client.open_streams(),
        0
    );
}

#[test]
fn keepalive_pings_are_answered_without_reaching_the_application() {
    let mut pair = Pair::new(6);
    let config = pair.client.config();
    pair.now += config.keepalive_interval().expect("on by default");
    pair.drive();
    // Both sides pinged and answered; neither pong is a reply to anything.
    for events in [&pair.client_events, &pair.server_events] {
        assert!(
            matches!(&events[..], [Event::Ping { .. }]),
            "{}",
            show(events)
        );
    }
    assert_eq!(pair.client.pending_requests(), 0);
    assert!(pair.client.poll_timeout().is_some_and(|at| at > pair.now));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Any seed, any cut of the byte stream, any size: the round trip works.
    #[test]
    fn round_trip_survives_any_chunking(
        seed in any::<u64>(),
        max_piece in 1usize..=16 * 1024,
        size in 0usize..600_000,
        grpc in any::<bool>(),
    ) {
        let transport = if grpc { Transport::Grpc } else { Transport::Framed };
        let mut pair = Pair::with(seed, transport, max_piece);
        let content = pair.rng.bytes(size);
        let (up, down) = round_trip(&mut pair, &content);
        prop_assert_eq!(up.sha256, down.sha256);
        prop_assert_eq!(down.bytes, size as u64);
    }
}

#[test]
fn download_of_a_missing_file_fails_the_expected_stream_and_the_request() {
    let mut pair = Pair::new(7);
    let id = pair.request_download("no-such-file");
    pair.drive();
    // The client expected the transfer; the `error` fails it, then the request.
    let events = &pair.client_events;
    let [failed, error] = &events[..] else {
        panic!("{}", show(events))
    };
    let not_found = |e: &StreamError| matches!(e, StreamError::PeerError { code: 404, .. });
    assert!(matches!(failed, Event::StreamFailed { rid, error } if *rid == id && not_found(error)));
    assert!(
        matches!(error, Event::PeerError { request_id, error, .. } if *request_id == id && error.code == 404)
    );
    assert_eq!(
        pair.client.pending_requests() + pair.client.open_streams(),
        0
    );
}
