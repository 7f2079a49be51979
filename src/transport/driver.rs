//! [`Driver`]: runs one [`Transport`] and the connection's timers.
//!
//! See [`Driver`] for what one call does.

use std::future::poll_fn;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use tokio::time::Sleep;

use super::{FLUSH_TIMEOUT, Recv, Transport, TransportError};
use crate::connection::Connection;

/// While the connection holds this many unsent envelopes, [`Driver::drive`]
/// stops reading: a peer that sends without reading cannot make our queue of
/// answers grow without bound. Far above what a transfer queues at once.
pub const RECV_PAUSE_QUEUE: usize = 1024;

/// What [`Driver::drive`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Status {
    /// Something happened: poll the connection's events, top up sends.
    Progress,
    /// The peer closed the connection; the connection was told
    /// ([`Connection::handle_eof`]) and its events say what failed.
    Closed,
}

/// Moves bytes and time between a [`Transport`] and a [`Connection`].
///
/// One call to [`Driver::drive`] does what is possible without waiting and
/// returns as soon as the owner has something to do:
///
/// | happened                                   | `drive` returns            |
/// |--------------------------------------------|----------------------------|
/// | bytes arrived and were fed                 | `Ok(Status::Progress)`     |
/// | a timer fired and was handled              | `Ok(Status::Progress)`     |
/// | the transmit queue ran empty (top it up); not for [`Driver::drive_for_input`] | `Ok(Status::Progress)` |
/// | the peer closed its side                   | `Ok(Status::Closed)`       |
/// | a fatal protocol error                     | notice flushed, `Err(Protocol)` |
/// | an IO error                                | `Err(Io)` / `Err(WebSocket)` |
///
/// Writing goes on in every call, so a peer that floods us cannot stall our
/// own output, and the timers run once due even while input never stops.
/// `drive` keeps its state in the driver and the connection, so it is
/// cancel-safe: it may sit in a `select!` beside a shutdown signal.
pub struct Driver<T> {
    io: T,
    timer: Pin<Box<Sleep>>,
    /// When `timer` fires, if it is armed. Deadlines that move later (the
    /// idle and keepalive clocks, at every envelope) leave it alone: it
    /// fires early, finds nothing due and is re-armed.
    armed: Option<Instant>,
    /// The waker `timer` was last polled with since it was armed: polling
    /// it again with the same task's waker would only register it again.
    registered: Option<Registered>,
}

/// A waker the timer holds, and the identity of the waker it was cloned
/// from.
///
/// [`Waker::will_wake`] compares the data pointer and the vtable address,
/// and a clone can carry another copy of the same vtable than the waker it
/// came from (a generic vtable instantiated in two codegen units): the
/// client binary's `block_on` waker was never recognised in its clone, so
/// the timer was polled again at every wake-up. The pair recorded here is
/// the borrowed waker's own, which stays the same from poll to poll. A
/// `RawWaker` is its data and vtable, so an equal pair wakes the same task
/// as long as the data cannot have been freed and reused meanwhile. The pair
/// is kept only when the clone held here shares the data pointer (tokio's
/// and the `futures` crate's `Arc` wakers): the clone then keeps that data
/// valid, so no other waker can take its address. For a waker whose clone
/// has data of its own, only [`Waker::will_wake`] counts.
struct Registered {
    waker: Waker,
    /// The borrowed waker's data and vtable addresses.
    identity: Option<(usize, usize)>,
}

impl Registered {
    fn new(waker: &Waker) -> Self {
        let clone = waker.clone();
        let identity = (clone.data() == waker.data()).then(|| identity(waker));
        Self {
            waker: clone,
            identity,
        }
    }

    fn will_wake(&self, waker: &Waker) -> bool {
        self.waker.will_wake(waker) || self.identity == Some(identity(waker))
    }
}

/// A waker's data and vtable addresses.
fn identity(waker: &Waker) -> (usize, usize) {
    (
        waker.data() as usize,
        std::ptr::from_ref(waker.vtable()) as usize,
    )
}

impl<T> std::fmt::Debug for Driver<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver").finish_non_exhaustive()
    }
}

impl<T: Transport> Driver<T> {
    /// A driver for `io`.
    pub fn new(io: T) -> Self {
        Self {
            io,
            timer: Box::pin(tokio::time::sleep_until(tokio::time::Instant::now())),
            armed: None,
            registered: None,
        }
    }

    /// The transport.
    pub fn get_mut(&mut self) -> &mut T {
        &mut self.io
    }

    /// Sends what is queued, reads what arrives, runs due timers; returns on
    /// the first of the outcomes tabled on [`Driver`].
    ///
    /// # Errors
    ///
    /// [`TransportError::Protocol`] after a connection-fatal error (the
    /// peer's notice has been flushed and the transport closed), or an IO
    /// error.
    pub async fn drive(&mut self, conn: &mut Connection) -> Result<Status, TransportError> {
        self.drive_inner(conn, true).await
    }

    /// Like [`drive`](Self::drive), but writing everything that is queued
    /// is not an outcome: it returns for input, a timer, the peer's close or
    /// an error. For an owner with nothing more to queue until the peer
    /// answers (a client awaiting a reply, a server that answered): it
    /// saves a wake-up, one more call that would only find nothing to do.
    ///
    /// # Errors
    ///
    /// As [`drive`](Self::drive).
    pub async fn drive_for_input(
        &mut self,
        conn: &mut Connection,
    ) -> Result<Status, TransportError> {
        self.drive_inner(conn, false).await
    }

    /// [`drive`](Self::drive) when `report_drained`, else
    /// [`drive_for_input`](Self::drive_for_input).
    pub(crate) async fn drive_inner(
        &mut self,
        conn: &mut Connection,
        report_drained: bool,
    ) -> Result<Status, TransportError> {
        let had_transmit = report_drained && conn.has_transmit();
        let result = poll_fn(|cx| {
            if let Poll::Ready(Err(e)) = self.io.poll_send(cx, conn) {
                return Poll::Ready(Err(e));
            }
            // Backpressure: while our answers pile up unsent (a peer that
            // sends without reading), stop reading; the next wake-up from
            // the socket becoming writable resumes it.
            let now = Instant::now();
            let recv = if conn.queued_transmit() < RECV_PAUSE_QUEUE {
                self.io.poll_recv(cx, conn, now)
            } else {
                Poll::Pending
            };
            let data = match recv {
                Poll::Ready(Ok(Recv::Data)) => true,
                Poll::Ready(Ok(Recv::Eof)) => {
                    return Poll::Ready(match conn.handle_eof() {
                        Ok(()) => Ok(Status::Closed),
                        Err(e) => Err(TransportError::Protocol(e)),
                    });
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => false,
            };
            // Looked at on every poll, input or not, so a steady flow can
            // neither starve a due timer nor keep an earlier deadline from
            // being armed.
            if let Some(due) = self.poll_timers(cx, conn, now) {
                return Poll::Ready(due);
            }
            if data || (had_transmit && !conn.has_transmit()) {
                return Poll::Ready(Ok(Status::Progress));
            }
            Poll::Pending
        })
        .await;
        if let Err(TransportError::Protocol(e)) = &result
            && e.is_connection_fatal()
        {
            let _ = tokio::time::timeout(FLUSH_TIMEOUT, self.close(conn)).await;
        }
        result
    }

    /// Runs the connection's timers when one is due at `now`; otherwise
    /// makes sure `timer` wakes this task at the earliest deadline.
    fn poll_timers(
        &mut self,
        cx: &mut Context<'_>,
        conn: &mut Connection,
        now: Instant,
    ) -> Option<Result<Status, TransportError>> {
        let at = conn.poll_timeout()?;
        if at <= now {
            return Some(match conn.handle_timeout(now) {
                Ok(()) => Ok(Status::Progress),
                Err(e) => Err(TransportError::Protocol(e)),
            });
        }
        // Re-armed for an earlier deadline, or once it has fired for one
        // that has since moved on.
        if self.armed.is_none_or(|armed| at < armed || armed <= now) {
            self.timer.as_mut().reset(at.into());
            self.armed = Some(at);
            self.registered = None;
        }
        if !self
            .registered
            .as_ref()
            .is_some_and(|registered| registered.will_wake(cx.waker()))
        {
            if self.timer.as_mut().poll(cx).is_ready() {
                // The deadline is ahead of `now`, but the runtime's clock is
                // already past it: poll again at once (and arm anew).
                self.armed = None;
                cx.waker().wake_by_ref();
            } else {
                self.registered = Some(Registered::new(cx.waker()));
            }
        }
        None
    }

    /// Writes everything the connection has queued and flushes it.
    ///
    /// # Errors
    ///
    /// An IO or WebSocket error.
    pub async fn flush(&mut self, conn: &mut Connection) -> Result<(), TransportError> {
        poll_fn(|cx| self.io.poll_send(cx, conn)).await
    }

    /// Flushes what is queued, then closes our side.
    ///
    /// # Errors
    ///
    /// An IO or WebSocket error.
    pub async fn close(&mut self, conn: &mut Connection) -> Result<(), TransportError> {
        self.flush(conn).await?;
        poll_fn(|cx| self.io.poll_close(cx)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connection::{ConnectionConfig, Event, Role};
    use crate::proto::PingRequest;
    use crate::reorder::SeqError;
    use crate::transport::ByteStream;

    fn pair() -> (
        Driver<ByteStream<tokio::io::DuplexStream>>,
        Driver<ByteStream<tokio::io::DuplexStream>>,
    ) {
        let (a, b) = tokio::io::duplex(4096);
        (
            Driver::new(ByteStream::new(a)),
            Driver::new(ByteStream::new(b)),
        )
    }

    #[tokio::test]
    async fn ping_is_answered_across_a_duplex_pipe() {
        let (mut client_io, mut server_io) = pair();
        let now = Instant::now();
        let mut client = Connection::new(Role::Client, ConnectionConfig::default(), now);
        let mut server = Connection::new(Role::Server, ConnectionConfig::default(), now);
        let id = client.request(&PingRequest {}, now).unwrap();
        let server_task = tokio::spawn(async move {
            loop {
                match server_io.drive(&mut server).await {
                    Ok(Status::Progress) => {}
                    _ => return server,
                }
            }
        });
        let reply = loop {
            client_io.drive(&mut client).await.unwrap();
            if let Some(Event::Reply { request_id, .. }) = client.poll_event() {
                break request_id;
            }
        };
        assert_eq!(reply, id);
        client_io.close(&mut client).await.unwrap();
        drop(client_io);
        let server = server_task.await.unwrap();
        assert!(server.error().is_some(), "server saw the close");
    }

    /// A transport whose peer never pauses: every read finds a keepalive
    /// `pong` (traffic, and an answer to nothing), every write succeeds.
    /// The peer never sends seq `skip`, if set.
    struct Firehose {
        seq: i32,
        skip: Option<i32>,
    }

    impl Transport for Firehose {
        fn poll_recv(
            &mut self,
            _cx: &mut Context<'_>,
            conn: &mut Connection,
            now: Instant,
        ) -> Poll<Result<Recv, TransportError>> {
            if Some(self.seq) == self.skip {
                self.seq += 1;
            }
            let pong = crate::proto::Envelope {
                command: "pong".into(),
                seq: self.seq,
                id: format!("k{}", self.seq),
                rid: "keepalive".into(),
                ..Default::default()
            };
            self.seq += 1;
            let mut frame = bytes::BytesMut::new();
            crate::frame::encode_frame(&pong, usize::MAX, &mut frame).unwrap();
            conn.handle_bytes(&frame, now)
                .map_err(TransportError::Protocol)?;
            Poll::Ready(Ok(Recv::Data))
        }

        fn poll_send(
            &mut self,
            _cx: &mut Context<'_>,
            conn: &mut Connection,
        ) -> Poll<Result<(), TransportError>> {
            let mut sink = bytes::BytesMut::new();
            while conn.has_transmit() {
                conn.poll_transmit(&mut sink);
                sink.clear();
            }
            Poll::Ready(Ok(()))
        }

        fn poll_close(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), TransportError>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_request_times_out_while_input_never_stops() {
        let mut config = ConnectionConfig::default();
        config.set_request_timeout(Some(std::time::Duration::from_millis(20)));
        let mut conn = Connection::new(Role::Client, config, Instant::now());
        let id = conn.request(&PingRequest {}, Instant::now()).unwrap();
        let mut io = Driver::new(Firehose { seq: 0, skip: None });
        let started = Instant::now();
        let failed = loop {
            // Every call has input to hand over, so none waits.
            assert_eq!(io.drive(&mut conn).await.unwrap(), Status::Progress);
            if let Some(Event::RequestFailed { request_id, .. }) = conn.poll_event() {
                break request_id;
            }
            assert!(
                started.elapsed() < std::time::Duration::from_secs(10),
                "the request deadline never ran"
            );
        };
        assert_eq!(failed, id);
    }

    #[tokio::test]
    async fn a_deadline_earlier_than_the_armed_one_runs_while_input_never_stops() {
        // The request deadline (10 s) is armed first; the gap the peer
        // then leaves (seq 1 never comes) times out after 50 ms, while
        // every call still has input.
        let mut config = ConnectionConfig::default();
        config.set_request_timeout(Some(std::time::Duration::from_secs(10)));
        config
            .reorder_mut()
            .set_window(crate::reorder::MAX_WINDOW)
            .unwrap()
            .set_max_buffered_bytes(usize::MAX)
            .unwrap()
            .set_gap_timeout(Some(std::time::Duration::from_millis(50)))
            .unwrap();
        let mut conn = Connection::new(Role::Client, config, Instant::now());
        conn.request(&PingRequest {}, Instant::now()).unwrap();
        let mut io = Driver::new(Firehose {
            seq: 0,
            skip: Some(1),
        });
        let started = Instant::now();
        let error = loop {
            match io.drive(&mut conn).await {
                Ok(status) => assert_eq!(status, Status::Progress),
                Err(e) => break e,
            }
            assert!(
                started.elapsed() < std::time::Duration::from_secs(5),
                "the gap timer never ran"
            );
        };
        assert!(
            matches!(
                error,
                TransportError::Protocol(crate::Error::Seq(SeqError::GapTimeout {
                    expected: 1,
                    ..
                }))
            ),
            "{error:?}"
        );
    }

    #[test]
    fn a_registered_waker_is_known_by_its_identity_and_no_other() {
        struct Task;
        impl std::task::Wake for Task {
            fn wake(self: std::sync::Arc<Self>) {}
        }
        let task = Waker::from(std::sync::Arc::new(Task));
        let held = Registered::new(&task);
        // An `Arc` waker's clone shares its data: the identity is kept.
        assert_eq!(held.identity, Some(identity(&task)));
        assert!(held.will_wake(&task));
        let other = Waker::from(std::sync::Arc::new(Task));
        assert!(!held.will_wake(&other));
    }

    #[tokio::test]
    async fn only_drive_returns_when_the_queue_runs_empty() {
        let (_peer, mut io) = pair();
        let now = Instant::now();
        let mut conn = Connection::new(Role::Client, ConnectionConfig::default(), now);
        let wait = std::time::Duration::from_millis(50);
        conn.request(&PingRequest {}, now).unwrap();
        let drained = tokio::time::timeout(wait, io.drive(&mut conn)).await;
        assert_eq!(drained.unwrap().unwrap(), Status::Progress);
        assert!(!conn.has_transmit());
        conn.request(&PingRequest {}, now).unwrap();
        // Written all the same, but the silent peer gives it nothing to
        // return for.
        let waiting = tokio::time::timeout(wait, io.drive_for_input(&mut conn)).await;
        assert!(waiting.is_err(), "returned {waiting:?}");
        assert!(!conn.has_transmit());
    }

    #[tokio::test]
    async fn silent_peer_is_ended_by_the_idle_timer() {
        let (_peer, mut server_io) = pair();
        let mut config = ConnectionConfig::default();
        config.set_idle_timeout(Some(std::time::Duration::from_millis(20)));
        let mut server = Connection::new(Role::Server, config, Instant::now());
        let mut result = server_io.drive(&mut server).await;
        while let Ok(Status::Progress) = result {
            result = server_io.drive(&mut server).await;
        }
        assert!(matches!(
            result,
            Err(TransportError::Protocol(crate::Error::PeerSilent { .. }))
        ));
    }

    #[tokio::test]
    async fn fatal_error_flushes_the_notice_before_closing() {
        let (mut client_io, mut server_io) = pair();
        let now = Instant::now();
        let mut server = Connection::new(Role::Server, ConnectionConfig::default(), now);
        let mut client = Connection::new(Role::Client, ConnectionConfig::default(), now);
        // A length prefix of 0xFFFFFFFF is over every limit: fatal.
        let raw = client_io.get_mut().get_mut();
        tokio::io::AsyncWriteExt::write_all(raw, &[0xff; 4])
            .await
            .unwrap();
        let err = server_io.drive(&mut server).await.unwrap_err();
        assert!(matches!(err, TransportError::Protocol(ref e) if e.is_connection_fatal()));
        // The client reads the server's `error` notice, then the close.
        let mut saw_error = false;
        while let Ok(Status::Progress) = client_io.drive(&mut client).await {
            while let Some(event) = client.poll_event() {
                if let Event::Request { envelope, .. } = event {
                    saw_error |= envelope.command == "error";
                }
            }
        }
        assert!(saw_error);
    }

    #[tokio::test]
    async fn a_peer_that_never_reads_cannot_grow_our_queue_without_bound() {
        use crate::frame::encode_frame;
        use bytes::BytesMut;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        const PINGS: i32 = 5_000;
        let (raw, server_side) = tokio::io::duplex(4096);
        let mut server_io = Driver::new(ByteStream::new(server_side));
        let mut config = ConnectionConfig::default();
        config.set_keepalive_interval(None);
        let mut server = Connection::new(Role::Server, config, Instant::now());
        let mut wire = BytesMut::new();
        for seq in 0..PINGS {
            let ping = crate::proto::Envelope {
                command: "ping".into(),
                seq,
                id: format!("p{seq}"),
                ..Default::default()
            };
            encode_frame(&ping, usize::MAX, &mut wire).unwrap();
        }
        let (mut raw_read, mut raw_write) = tokio::io::split(raw);
        // The peer writes every ping and reads nothing yet.
        let writer = tokio::spawn(async move {
            raw_write.write_all(&wire).await.unwrap();
            raw_write
        });
        // Drive the server until it stalls: its pongs cannot be written.
        let mut most_queued = 0;
        while let Ok(Ok(Status::Progress)) = tokio::time::timeout(
            std::time::Duration::from_millis(200),
            server_io.drive(&mut server),
        )
        .await
        {
            while server.poll_event().is_some() {}
            most_queued = most_queued.max(server.queued_transmit());
        }
        // One read (at most one read step of pings) may land past the limit.
        assert!(
            most_queued <= RECV_PAUSE_QUEUE + 1024,
            "queued {most_queued} answers for a peer that reads nothing"
        );
        // Once the peer reads, every ping is answered.
        let reader = tokio::spawn(async move {
            let mut decoder = crate::frame::FrameDecoder::default();
            let mut buf = [0u8; 64 * 1024];
            let mut pongs = 0;
            while pongs < PINGS {
                let n = raw_read.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                decoder.push(&buf[..n]);
                while let Ok(Some(_)) = decoder.decode() {
                    pongs += 1;
                }
            }
            pongs
        });
        let deadline = Instant::now() + std::time::Duration::from_secs(30);
        while !reader.is_finished() && Instant::now() < deadline {
            let _ = tokio::time::timeout(
                std::time::Duration::from_millis(50),
                server_io.drive(&mut server),
            )
            .await;
            while server.poll_event().is_some() {}
        }
        assert!(reader.is_finished(), "pongs still missing after 30 s");
        let pongs = reader.await.unwrap();
        assert!(writer.is_finished(), "every ping was read");
        assert_eq!(pongs, PINGS);
    }
}
