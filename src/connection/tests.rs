use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::*;
use crate::command::{CommandError, Payload, Validation};
use crate::envelope::EnvelopeExt;
use crate::frame::FrameError;
use crate::proto::{DownloadRequest, PingResponse, QueryRequest, SigninRequest, SigninResponse};
use crate::reorder::SeqError;
use crate::stream::StreamError;

fn pair(now: Instant) -> (Connection, Connection) {
    let mut config = ConnectionConfig::default();
    config.set_keepalive_interval(None);
    (
        Connection::new(Role::Client, config.clone(), now),
        Connection::new(Role::Server, config, now),
    )
}

/// Moves everything `from` has queued into `to`.
fn flow(from: &mut Connection, to: &mut Connection, now: Instant) -> Result<(), Error> {
    let mut wire = BytesMut::new();
    while from.has_transmit() {
        wire.clear();
        from.poll_transmit(&mut wire);
        to.handle_bytes(&wire, now)?;
    }
    Ok(())
}

fn events(conn: &mut Connection) -> Vec<Event> {
    std::iter::from_fn(|| conn.poll_event()).collect()
}

/// The ids of the requests `conn` reported failed, in order; any other
/// event is a test failure.
fn failed_requests(conn: &mut Connection) -> Vec<String> {
    events(conn)
        .into_iter()
        .map(|e| match e {
            Event::RequestFailed { request_id, .. } => request_id,
            other => panic!("{other:?}"),
        })
        .collect()
}

/// A client whose frames may be at most `max` bytes long.
fn client_with_max_frame_length(max: usize, now: Instant) -> Connection {
    let mut config = ConnectionConfig::default();
    config.frame_mut().set_max_frame_length(max);
    Connection::new(Role::Client, config, now)
}

fn raw_frame(envelope: &Envelope) -> BytesMut {
    let mut wire = BytesMut::new();
    encode_frame(envelope, usize::MAX, &mut wire).unwrap();
    wire
}

fn envelope(command: &str, seq: i32, id: &str) -> Envelope {
    Envelope {
        command: command.into(),
        seq,
        id: id.into(),
        ..Envelope::default()
    }
}

#[test]
fn request_reply_is_matched_by_rid() {
    let now = Instant::now();
    let (mut client, mut server) = pair(now);
    let id = client.request(&SigninRequest::default(), now).unwrap();
    assert_eq!(client.pending_requests(), 1);
    flow(&mut client, &mut server, now).unwrap();
    let [Event::Request { envelope, payload }] = &events(&mut server)[..] else {
        panic!("expected one request");
    };
    assert!(matches!(**payload, Payload::SigninRequest(_)));
    server
        .reply::<SigninRequest>(envelope, &SigninResponse::default(), now)
        .unwrap();
    flow(&mut server, &mut client, now).unwrap();
    let [
        Event::Reply {
            request_id,
            request_command,
            envelope,
        },
    ] = &events(&mut client)[..]
    else {
        panic!("expected one reply");
    };
    assert_eq!((request_id, *request_command), (&id, "signin"));
    assert_eq!(envelope.command, "signinreply");
    assert_eq!(client.pending_requests(), 0);
}

#[test]
fn seqs_are_stamped_in_send_order_from_zero() {
    let now = Instant::now();
    let (mut client, _) = pair(now);
    for _ in 0..3 {
        client.request(&PingRequest {}, now).unwrap();
    }
    let seqs: Vec<i32> = std::iter::from_fn(|| client.poll_envelope())
        .map(|e| e.seq)
        .collect();
    assert_eq!(seqs, [0, 1, 2]);
}

#[test]
fn ids_are_unique_and_filled_when_empty() {
    let now = Instant::now();
    let (mut client, _) = pair(now);
    let ids: Vec<String> = (0..100)
        .map(|_| client.request(&PingRequest {}, now).unwrap())
        .collect();
    let unique: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), 100);
    assert!(ids.iter().all(|id| !id.is_empty()));
}

#[test]
fn fresh_ids_are_the_counter_in_base_36() {
    fn base36(mut n: u64) -> String {
        let mut digits = Vec::new();
        loop {
            digits.push(char::from_digit((n % 36) as u32, 36).unwrap());
            n /= 36;
            if n == 0 {
                return digits.iter().rev().collect();
            }
        }
    }
    let (mut client, _) = pair(Instant::now());
    for n in [
        0,
        1,
        35,
        36,
        1295,
        1296,
        36u64.pow(12),
        u64::MAX - 1,
        u64::MAX,
    ] {
        client.next_id = n;
        assert_eq!(client.fresh_id(), base36(n), "{n}");
        assert_eq!(client.next_id, n.wrapping_add(1));
    }
    assert_eq!(base36(u64::MAX), "3w5e11264sgsf");
}

#[test]
fn ping_is_answered_with_pong_and_the_pong_resolves_the_request() {
    let now = Instant::now();
    let (mut client, mut server) = pair(now);
    let id = client.request(&PingRequest {}, now).unwrap();
    flow(&mut client, &mut server, now).unwrap();
    assert_eq!(events(&mut server), [Event::Ping { id: id.clone() }]);
    flow(&mut server, &mut client, now).unwrap();
    let [
        Event::Reply {
            request_id,
            envelope,
            ..
        },
    ] = &events(&mut client)[..]
    else {
        panic!("expected the pong");
    };
    assert_eq!((request_id, envelope.command.as_str()), (&id, "pong"));
    envelope
        .unpack::<PingResponse>(Validation::Lenient)
        .unwrap();
}

#[test]
fn unknown_command_is_rejected_with_an_error_reply() {
    let now = Instant::now();
    let (mut client, mut server) = pair(now);
    let id = client.send(envelope("nosuchcommand", 0, ""), now).unwrap();
    flow(&mut client, &mut server, now).unwrap();
    let [Event::Rejected { error, .. }] = &events(&mut server)[..] else {
        panic!("expected a rejection");
    };
    assert!(matches!(
        error,
        Error::Command(CommandError::UnknownCommand { .. })
    ));
    flow(&mut server, &mut client, now).unwrap();
    // The client did not know it as a request, so the error is unsolicited.
    let [Event::Request { envelope, payload }] = &events(&mut client)[..] else {
        panic!("expected the error envelope");
    };
    assert_eq!(
        (envelope.command.as_str(), envelope.rid.as_str()),
        ("error", id.as_str())
    );
    let Payload::ErrorResponse(response) = &**payload else {
        panic!("expected an ErrorResponse");
    };
    assert_eq!(response.code, 404);
    assert!(response.message.contains("nosuchcommand"));
}

#[test]
fn peer_error_settles_the_pending_request() {
    let now = Instant::now();
    let (mut client, mut server) = pair(now);
    let id = client.request(&QueryRequest::default(), now).unwrap();
    flow(&mut client, &mut server, now).unwrap();
    let [Event::Request { envelope, .. }] = &events(&mut server)[..] else {
        panic!()
    };
    let denied = ErrorResponse {
        message: "denied".into(),
        code: 7,
        stack: "at x".into(),
    };
    server.reply_error(envelope, &denied, now).unwrap();
    flow(&mut server, &mut client, now).unwrap();
    assert_eq!(
        events(&mut client),
        [Event::PeerError {
            request_id: id,
            request_command: "query",
            error: denied,
        }]
    );
}

#[test]
fn duplicate_seq_is_fatal_sticky_and_explained_to_the_peer() {
    let now = Instant::now();
    let (_, mut server) = pair(now);
    let ping = envelope("ping", 0, "p1");
    server.handle_bytes(&raw_frame(&ping), now).unwrap();
    let err = server.handle_bytes(&raw_frame(&ping), now).unwrap_err();
    assert_eq!(err, Error::Seq(SeqError::Duplicate { seq: 0 }));
    assert!(err.is_connection_fatal());
    // Sticky: every later call says the same.
    assert_eq!(server.handle_bytes(b"", now), Err(err.clone()));
    assert_eq!(server.send(envelope("ping", 0, ""), now), Err(err.clone()));
    assert_eq!(server.handle_timeout(now), Err(err.clone()));
    assert_eq!(server.poll_timeout(), None);
    // The pong, then the error notice are still flushed.
    let sent: Vec<Envelope> = std::iter::from_fn(|| server.poll_envelope()).collect();
    assert_eq!(sent.len(), 2);
    let notice = sent[1].unpack::<ErrorResponse>(Validation::Strict).unwrap();
    assert!(
        notice.message.contains("duplicate seq 0"),
        "{}",
        notice.message
    );
}

#[test]
fn out_of_order_envelopes_are_delivered_in_seq_order() {
    let now = Instant::now();
    let (_, mut server) = pair(now);
    let mut wire = BytesMut::new();
    for seq in [2, 0, 1] {
        wire.extend_from_slice(&raw_frame(&envelope("ping", seq, &format!("p{seq}"))));
    }
    server.handle_bytes(&wire, now).unwrap();
    let ids: Vec<String> = events(&mut server)
        .into_iter()
        .map(|e| match e {
            Event::Ping { id } => id,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(ids, ["p0", "p1", "p2"]);
}

#[test]
fn request_timeout_fails_the_request_once() {
    let now = Instant::now();
    let (mut client, _) = pair(now);
    let id = client.request(&QueryRequest::default(), now).unwrap();
    let deadline = client.poll_timeout().unwrap();
    assert_eq!(deadline, now + DEFAULT_REQUEST_TIMEOUT);
    client
        .handle_timeout(deadline - Duration::from_millis(1))
        .unwrap();
    assert!(events(&mut client).is_empty());
    client.handle_timeout(deadline).unwrap();
    let [
        Event::RequestFailed {
            request_id, error, ..
        },
    ] = &events(&mut client)[..]
    else {
        panic!("expected a timeout");
    };
    assert_eq!(request_id, &id);
    assert!(matches!(error, Error::RequestTimedOut { .. }));
    assert_eq!(client.pending_requests(), 0);
    client
        .handle_timeout(deadline + Duration::from_secs(60))
        .unwrap();
    assert!(events(&mut client).is_empty());
}

#[test]
fn keepalive_pings_after_idle_interval_and_idle_timeout_is_fatal() {
    let now = Instant::now();
    let mut config = ConnectionConfig::default();
    config
        .set_keepalive_interval(Some(Duration::from_secs(30)))
        .set_idle_timeout(Some(Duration::from_secs(90)))
        .set_request_timeout(None);
    let mut conn = Connection::new(Role::Client, config, now);
    assert_eq!(conn.poll_timeout(), Some(now + Duration::from_secs(30)));
    conn.handle_timeout(now + Duration::from_secs(30)).unwrap();
    let ping = conn.poll_envelope().expect("a keepalive ping");
    assert_eq!(ping.command, "ping");
    assert_eq!(conn.pending_requests(), 0, "keepalives are not pending");
    let err = conn
        .handle_timeout(now + Duration::from_secs(90))
        .unwrap_err();
    assert!(matches!(err, Error::PeerSilent { .. }));
}

#[test]
fn too_many_pending_requests_is_refused_without_queueing() {
    let now = Instant::now();
    let mut config = ConnectionConfig::default();
    config.set_max_pending_requests(2);
    let mut conn = Connection::new(Role::Client, config, now);
    conn.request(&PingRequest {}, now).unwrap();
    conn.request(&PingRequest {}, now).unwrap();
    assert_eq!(
        conn.request(&PingRequest {}, now),
        Err(Error::TooManyPending { max: 2 })
    );
    assert_eq!(std::iter::from_fn(|| conn.poll_envelope()).count(), 2);
}

#[test]
fn oversized_envelope_is_refused_locally() {
    let now = Instant::now();
    let mut conn = client_with_max_frame_length(64, now);
    let big = QueryRequest {
        query: "x".repeat(100),
        ..Default::default()
    };
    assert!(matches!(
        conn.request(&big, now),
        Err(Error::TooLarge { max: 64, .. })
    ));
    assert!(!conn.has_transmit());
    assert!(conn.error().is_none(), "a local refusal is not fatal");
}

#[test]
fn frame_too_large_from_peer_is_fatal() {
    let now = Instant::now();
    let (_, mut server) = pair(now);
    let err = server
        .handle_bytes(&u32::MAX.to_le_bytes(), now)
        .unwrap_err();
    assert!(matches!(err, Error::Frame(FrameError::TooLarge { .. })));
}

#[test]
fn eof_mid_frame_is_truncated_and_fails_pending_requests() {
    let now = Instant::now();
    let (mut client, _) = pair(now);
    let id = client.request(&QueryRequest::default(), now).unwrap();
    client.handle_bytes(&[5, 0, 0, 0, 1], now).unwrap();
    let err = client.handle_eof().unwrap_err();
    assert!(matches!(err, Error::Frame(FrameError::Truncated { .. })));
    let [Event::RequestFailed { request_id, .. }] = &events(&mut client)[..] else {
        panic!("expected the pending request to fail");
    };
    assert_eq!(request_id, &id);
}

#[test]
fn clean_eof_closes() {
    let now = Instant::now();
    let (mut client, _) = pair(now);
    client.handle_eof().unwrap();
    assert_eq!(
        client.send(envelope("ping", 0, ""), now),
        Err(Error::Closed)
    );
}

#[test]
fn upload_is_received_in_order_and_verified() {
    let now = Instant::now();
    let (mut client, mut server) = pair(now);
    let content = Bytes::from((0..600_000u32).map(|i| i as u8).collect::<Vec<u8>>());
    let id = client
        .upload(&UploadRequest::default(), content.clone(), true, now)
        .unwrap();
    flow(&mut client, &mut server, now).unwrap();
    let got = events(&mut server);
    let Event::Request { payload, .. } = &got[0] else {
        panic!("expected the upload request")
    };
    assert!(matches!(**payload, Payload::UploadRequest(_)));
    assert!(
        matches!(&got[1], Event::StreamStarted { rid, started } if *rid == id && started.was_expected)
    );
    let mut received = BytesMut::new();
    for event in &got[2..got.len() - 1] {
        let Event::StreamChunk { data, .. } = event else {
            panic!("{event:?}")
        };
        received.extend_from_slice(data);
    }
    assert!(received.freeze() == content, "received bytes differ");
    let Some(Event::StreamEnded { summary, .. }) = got.last() else {
        panic!()
    };
    assert!(summary.checksum_verified);
    assert_eq!(summary.chunks, 3);
}

#[test]
fn download_is_expected_by_the_client() {
    let now = Instant::now();
    let (mut client, mut server) = pair(now);
    let id = client.request(&DownloadRequest::default(), now).unwrap();
    flow(&mut client, &mut server, now).unwrap();
    let [Event::Request { envelope, .. }] = &events(&mut server)[..] else {
        panic!()
    };
    server
        .send_stream(&envelope.id, Bytes::from_static(b"hello"), true, None, now)
        .unwrap();
    flow(&mut server, &mut client, now).unwrap();
    let got = events(&mut client);
    assert!(matches!(&got[0], Event::StreamStarted { started, .. } if started.was_expected));
    assert!(matches!(&got[1], Event::StreamChunk { data, .. } if &data[..] == b"hello"));
    assert!(matches!(&got[2], Event::StreamEnded { rid, .. } if *rid == id));
    assert_eq!(client.pending_requests(), 1, "downloadreply still to come");
}

#[test]
fn chunk_for_unknown_rid_is_a_stream_failure_not_fatal() {
    let now = Instant::now();
    let (_, mut server) = pair(now);
    let mut chunk = pack(&Stream {
        data: Bytes::from_static(b"x"),
    });
    chunk.id = "c".into();
    chunk.rid = "nope".into();
    server.handle_bytes(&raw_frame(&chunk), now).unwrap();
    assert_eq!(
        events(&mut server),
        [Event::StreamFailed {
            rid: "nope".into(),
            error: StreamError::UnknownRid { rid: "nope".into() },
        }]
    );
    assert!(server.error().is_none());
}

#[test]
fn error_mid_stream_fails_transfer_and_request() {
    let now = Instant::now();
    let (mut client, mut server) = pair(now);
    let id = client.request(&DownloadRequest::default(), now).unwrap();
    flow(&mut client, &mut server, now).unwrap();
    let [Event::Request { envelope, .. }] = &events(&mut server)[..] else {
        panic!()
    };
    let mut sender = server.stream_sender(&envelope.id).unwrap();
    server.send(sender.begin(None, None).unwrap(), now).unwrap();
    let gone = ErrorResponse {
        message: "disk gone".into(),
        ..Default::default()
    };
    server.reply_error(envelope, &gone, now).unwrap();
    flow(&mut server, &mut client, now).unwrap();
    let got = events(&mut client);
    assert!(matches!(&got[0], Event::StreamStarted { .. }));
    assert!(
        matches!(&got[1], Event::StreamFailed { error: StreamError::PeerError { message, .. }, .. } if message == "disk gone")
    );
    assert!(matches!(&got[2], Event::PeerError { request_id, .. } if *request_id == id));
}

#[test]
fn zero_length_frame_is_rejected_not_fatal() {
    let now = Instant::now();
    let (_, mut server) = pair(now);
    server.handle_bytes(&[0, 0, 0, 0], now).unwrap();
    let [Event::Rejected { error, .. }] = &events(&mut server)[..] else {
        panic!()
    };
    assert!(matches!(error, Error::Envelope(_)));
    // The empty envelope carried seq 0; the next one must be seq 1.
    server
        .handle_bytes(&raw_frame(&envelope("ping", 1, "p")), now)
        .unwrap();
    assert_eq!(events(&mut server), [Event::Ping { id: "p".into() }]);
}

#[test]
fn grpc_envelopes_follow_the_same_seq_rules() {
    let now = Instant::now();
    let (_, mut server) = pair(now);
    server
        .handle_envelope(envelope("ping", 1, "b"), now)
        .unwrap();
    assert!(events(&mut server).is_empty(), "held until seq 0");
    server
        .handle_envelope(envelope("ping", 0, "a"), now)
        .unwrap();
    assert_eq!(
        events(&mut server),
        [
            Event::Ping { id: "a".into() },
            Event::Ping { id: "b".into() }
        ]
    );
    let err = server
        .handle_envelope(envelope("ping", 0, "c"), now)
        .unwrap_err();
    assert_eq!(err, Error::Seq(SeqError::Duplicate { seq: 0 }));
}

#[test]
fn reply_to_a_timed_out_request_is_not_a_reply() {
    let now = Instant::now();
    let (mut client, mut server) = pair(now);
    client.request(&QueryRequest::default(), now).unwrap();
    flow(&mut client, &mut server, now).unwrap();
    let [Event::Request { envelope, .. }] = &events(&mut server)[..] else {
        panic!()
    };
    let later = now + DEFAULT_REQUEST_TIMEOUT;
    client.handle_timeout(later).unwrap();
    events(&mut client);
    server
        .reply::<QueryRequest>(envelope, &Default::default(), later)
        .unwrap();
    flow(&mut server, &mut client, later).unwrap();
    // An answer nobody waits for is handed over as an unsolicited message.
    let [Event::Request { envelope, .. }] = &events(&mut client)[..] else {
        panic!()
    };
    assert_eq!(envelope.command, "queryreply");
}

#[test]
fn a_message_is_decoded_like_the_same_bytes_and_shared_not_copied() {
    let now = Instant::now();
    let (mut client, mut server) = pair(now);
    let content = Bytes::from(vec![7u8; 100_000]);
    client
        .upload(&UploadRequest::default(), content.clone(), true, now)
        .unwrap();
    let mut wire = BytesMut::new();
    while client.poll_transmit(&mut wire) > 0 {}
    let message = wire.freeze();
    let range = message.as_ptr_range();
    server.handle_message(message, now).unwrap();
    let chunks: Vec<Bytes> = events(&mut server)
        .into_iter()
        .filter_map(|e| match e {
            Event::StreamChunk { data, .. } => Some(data),
            _ => None,
        })
        .collect();
    assert_eq!(chunks.concat(), content.to_vec());
    assert!(
        chunks.iter().all(|c| range.contains(&c.as_ptr())),
        "chunks must point into the message"
    );
}

/// A connection with only the frame timer (30 s): no keepalive, no request
/// deadlines.
fn frame_timed(now: Instant) -> Connection {
    let mut config = ConnectionConfig::default();
    config
        .set_keepalive_interval(None)
        .set_request_timeout(None)
        .set_frame_timeout(Some(Duration::from_secs(30)));
    Connection::new(Role::Server, config, now)
}

#[test]
fn frame_timeout_is_off_by_default() {
    let now = Instant::now();
    assert_eq!(ConnectionConfig::default().frame_timeout(), None);
    let (_, mut server) = pair(now);
    server.handle_bytes(&[9, 0, 0, 0, 1], now).unwrap();
    assert_eq!(server.poll_timeout(), None);
    server
        .handle_timeout(now + Duration::from_secs(3600))
        .unwrap();
}

#[test]
fn slow_drip_frame_times_out_from_its_first_byte() {
    let t0 = Instant::now();
    let mut server = frame_timed(t0);
    let wire = raw_frame(&envelope("ping", 0, &"abcdefghi".repeat(5)));
    assert!(wire.len() > 31, "the frame outlasts the drip");
    // One byte per second: every byte is traffic, none extends the deadline.
    for (second, byte) in wire.iter().take(30).enumerate() {
        let at = t0 + Duration::from_secs(second as u64);
        server.handle_bytes(std::slice::from_ref(byte), at).unwrap();
        assert_eq!(server.poll_timeout(), Some(t0 + Duration::from_secs(30)));
        server.handle_timeout(at).unwrap();
    }
    let expected = Error::FrameTimedOut {
        buffered: 30,
        limit: Duration::from_secs(30),
    };
    assert_eq!(
        server.handle_timeout(t0 + Duration::from_secs(30)),
        Err(expected.clone())
    );
    assert!(expected.is_connection_fatal());
    // Fatal and sticky, and the peer is told why.
    assert_eq!(server.handle_bytes(&wire[30..], t0), Err(expected.clone()));
    assert_eq!(server.poll_timeout(), None);
    let notice = server.poll_envelope().expect("an error notice");
    assert_eq!(notice.command, "error");
    let body: ErrorResponse = notice.unpack(Validation::Strict).unwrap();
    assert_eq!(body.code, 408);
    assert!(body.message.contains("incomplete"), "{}", body.message);
}

#[test]
fn completed_frame_disarms_the_frame_timeout() {
    let t0 = Instant::now();
    let mut server = frame_timed(t0);
    let wire = raw_frame(&envelope("ping", 0, "abcdefghi"));
    server.handle_bytes(&wire[..10], t0).unwrap();
    assert_eq!(server.poll_timeout(), Some(t0 + Duration::from_secs(30)));
    server
        .handle_bytes(&wire[10..], t0 + Duration::from_secs(29))
        .unwrap();
    assert_eq!(server.poll_timeout(), None);
    server
        .handle_timeout(t0 + Duration::from_secs(600))
        .unwrap();
    assert!(matches!(&events(&mut server)[..], [Event::Ping { .. }]));
}

#[test]
fn frame_timeout_restarts_for_the_next_partial_frame() {
    let t0 = Instant::now();
    let mut server = frame_timed(t0);
    let mut wire = raw_frame(&envelope("ping", 0, "a"));
    let first = wire.len();
    wire.extend_from_slice(&raw_frame(&envelope("ping", 1, "b")));
    server.handle_bytes(&wire[..first - 1], t0).unwrap();
    let t20 = t0 + Duration::from_secs(20);
    // The rest of the first frame and the start of the second.
    server
        .handle_bytes(&wire[first - 1..first + 3], t20)
        .unwrap();
    assert_eq!(server.poll_timeout(), Some(t20 + Duration::from_secs(30)));
    server.handle_timeout(t0 + Duration::from_secs(30)).unwrap();
    // A read through read_buf counts the same way.
    server.read_buf().extend_from_slice(&wire[first + 3..]);
    server.handle_read(t20).unwrap();
    assert_eq!(server.poll_timeout(), None);
    assert_eq!(events(&mut server).len(), 2);
}

#[test]
fn held_chunk_out_of_order_still_shares_the_message() {
    let now = Instant::now();
    let (mut client, mut server) = pair(now);
    let id = client
        .upload(
            &UploadRequest::default(),
            Bytes::from(vec![5u8; 10]),
            false,
            now,
        )
        .unwrap();
    // upload (0), beginstream (1), stream (2), endstream (3): deliver the
    // chunk and the end before the begin, so both wait in the buffer.
    let frames: Vec<BytesMut> = std::iter::from_fn(|| client.poll_envelope())
        .map(|e| raw_frame(&e))
        .collect();
    assert_eq!(frames.len(), 4);
    let mut wire = BytesMut::new();
    for i in [0, 2, 3, 1] {
        wire.extend_from_slice(&frames[i]);
    }
    let message = wire.freeze();
    let range = message.as_ptr_range();
    server.handle_message(message, now).unwrap();
    let events = events(&mut server);
    let [
        Event::Request { .. },
        Event::StreamStarted { .. },
        Event::StreamChunk { rid, data },
        Event::StreamEnded { .. },
    ] = &events[..]
    else {
        panic!("{events:?}");
    };
    assert_eq!((rid, &data[..]), (&id, &[5u8; 10][..]));
    assert!(range.contains(&data.as_ptr()));
}

mod same_as_owned {
    //! The byte-stream path (frames read through `EnvelopeView`) and the
    //! owned path (`handle_envelope`, as gRPC) must react identically.

    use super::*;
    use crate::proto::google::protobuf::Any;
    use crate::proto::{BeginStream, EndStream, QueryResponse, Stream, UploadRequest};
    use proptest::collection::vec;
    use proptest::prelude::*;
    use prost::{Message, Name};

    fn any_of<M: Message + Name>(message: &M) -> Any {
        Any {
            type_url: M::type_url(),
            value: message.encode_to_vec().into(),
        }
    }

    fn arb_data() -> impl Strategy<Value = Option<Any>> {
        let data = prop_oneof![
            Just(any_of(&Stream {
                data: Bytes::from_static(b"chunk")
            })),
            Just(any_of(&BeginStream::default())),
            Just(any_of(&EndStream::default())),
            Just(any_of(&PingRequest::default())),
            Just(any_of(&ErrorResponse {
                message: "no".into(),
                code: 3,
                stack: String::new()
            })),
            Just(any_of(&UploadRequest::default())),
            Just(any_of(&QueryResponse {
                results: "[]".into()
            })),
            (".{0,12}", vec(any::<u8>(), 0..12)).prop_map(|(type_url, value)| Any {
                type_url,
                value: value.into(),
            }),
            vec(any::<u8>(), 0..12).prop_map(|value| Any {
                type_url: String::new(),
                value: value.into(),
            }),
        ];
        proptest::option::of(data)
    }

    fn arb_envelope() -> impl Strategy<Value = Envelope> {
        let command = proptest::sample::select(
            &[
                "ping",
                "pong",
                "stream",
                "beginstream",
                "endstream",
                "error",
                "upload",
                "queryreply",
                "nosuchcommand",
                "",
            ][..],
        );
        let name = proptest::sample::select(&["", "a", "b", "c"][..]);
        (command, name.clone(), name, 0..8i32, arb_data()).prop_map(
            |(command, id, rid, seq, data)| Envelope {
                command: command.to_owned(),
                id: id.to_owned(),
                rid: rid.to_owned(),
                seq,
                data,
                ..Envelope::default()
            },
        )
    }

    /// Everything a connection reported: events, queued envelopes, error.
    fn outcome(conn: &mut Connection) -> (Vec<Event>, Vec<Envelope>, Option<Error>) {
        (
            events(conn),
            std::iter::from_fn(|| conn.poll_envelope()).collect(),
            conn.error().cloned(),
        )
    }

    proptest! {
        #[test]
        fn prop_frames_and_envelopes_give_the_same_outcome(
            envelopes in vec(arb_envelope(), 0..12),
            role in prop_oneof![Just(Role::Client), Just(Role::Server)],
            strict in any::<bool>(),
            answer_pings in any::<bool>(),
        ) {
            let now = Instant::now();
            let mut config = ConnectionConfig::default();
            config
                .set_keepalive_interval(None)
                .set_answer_pings(answer_pings)
                .set_validation(if strict { Validation::Strict } else { Validation::Lenient });
            let mut framed = Connection::new(role, config.clone(), now);
            let mut owned = Connection::new(role, config, now);
            // Pending requests on both, so that replies have something to match.
            for id in ["a", "b"] {
                for conn in [&mut framed, &mut owned] {
                    let request = Envelope { id: id.into(), ..pack(&QueryRequest::default()) };
                    conn.send(request, now).unwrap();
                }
            }
            let mut wire = BytesMut::new();
            for envelope in &envelopes {
                wire.extend_from_slice(&raw_frame(envelope));
            }
            let framed_result = framed.handle_message(wire.freeze(), now);
            let mut owned_result = Ok(());
            for envelope in envelopes {
                owned_result = owned.handle_envelope(envelope, now);
                if owned_result.is_err() {
                    break;
                }
            }
            prop_assert_eq!(framed_result, owned_result);
            prop_assert_eq!(outcome(&mut framed), outcome(&mut owned));
        }
    }
}

#[test]
fn requests_with_chosen_ids_each_keep_their_deadline() {
    let now = Instant::now();
    let (mut client, _) = pair(now);
    for id in ["x", "y"] {
        let request = Envelope {
            id: id.into(),
            ..pack(&QueryRequest::default())
        };
        client.send(request, now).unwrap();
    }
    client
        .handle_timeout(now + Duration::from_secs(60))
        .unwrap();
    let failed = failed_requests(&mut client);
    assert_eq!(failed, ["x", "y"]);
    assert_eq!(client.pending_requests(), 0);
}

#[test]
fn shut_down_fails_pending_requests_in_send_order() {
    let now = Instant::now();
    let mut config = ConnectionConfig::default();
    config.set_request_timeout(None);
    let mut client = Connection::new(Role::Client, config, now);
    let ids: Vec<String> = (0..20)
        .map(|i| {
            let request = Envelope {
                id: format!("r{i}"),
                ..pack(&QueryRequest::default())
            };
            client.send(request, now).unwrap()
        })
        .collect();
    client.handle_eof().unwrap();
    let failed = failed_requests(&mut client);
    assert_eq!(failed, ids);
}

#[test]
fn large_receive_buffer_is_given_back_when_input_stops() {
    let t0 = Instant::now();
    let (_, mut server) = pair(t0);
    let big = Envelope {
        jwt: "j".repeat(300_000),
        ..envelope("ping", 0, "p")
    };
    let wire = raw_frame(&big);
    for (i, piece) in wire.chunks(1500).enumerate() {
        server
            .handle_bytes(piece, t0 + Duration::from_millis(i as u64))
            .unwrap();
    }
    let last = t0 + Duration::from_millis(wire.chunks(1500).count() as u64 - 1);
    assert!(matches!(&events(&mut server)[..], [Event::Ping { .. }]));
    assert!(server.decoder.capacity() >= 300_000);
    assert_eq!(server.poll_timeout(), Some(last + IDLE_BUFFER_RELEASE));
    server
        .handle_timeout(last + IDLE_BUFFER_RELEASE - Duration::from_millis(1))
        .unwrap();
    assert!(server.decoder.capacity() >= 300_000, "not before the delay");
    server.handle_timeout(last + IDLE_BUFFER_RELEASE).unwrap();
    assert_eq!(server.decoder.capacity(), 0);
    assert_eq!(server.poll_timeout(), None, "nothing left to release");
    // Small traffic afterwards stays within two read steps: no timer.
    let later = last + IDLE_BUFFER_RELEASE;
    server
        .handle_bytes(&raw_frame(&envelope("ping", 1, "q")), later)
        .unwrap();
    server
        .read_buf()
        .extend_from_slice(&raw_frame(&envelope("ping", 2, "r")));
    server.handle_read(later).unwrap();
    assert!(server.decoder.capacity() <= 2 * crate::frame::DEFAULT_READ_STEP);
    assert_eq!(server.poll_timeout(), None);
}

#[test]
fn send_chunk_writes_the_same_frames_as_send_of_chunk() {
    let now = Instant::now();
    let (mut typed, _) = pair(now);
    let (mut owned, _) = pair(now);
    let data = Bytes::from(vec![9u8; 100_000]);
    let mut a = typed.stream_sender("u1").unwrap();
    let mut b = owned.stream_sender("u1").unwrap();
    typed.send(a.begin(None, None).unwrap(), now).unwrap();
    owned.send(b.begin(None, None).unwrap(), now).unwrap();
    for piece in [data.slice(..60_000), data.slice(60_000..)] {
        typed.send_chunk(&mut a, piece.clone(), now).unwrap();
        owned.send(b.chunk(piece).unwrap(), now).unwrap();
    }
    typed.send(a.end().unwrap(), now).unwrap();
    owned.send(b.end().unwrap(), now).unwrap();
    assert_eq!(typed.queued_transmit(), 4);
    let (mut x, mut y) = (BytesMut::new(), BytesMut::new());
    while typed.poll_transmit(&mut x) > 0 {}
    while owned.poll_transmit(&mut y) > 0 {}
    assert_eq!(x, y);
    // Without framing (gRPC) the chunk comes out packed, as `chunk` makes it.
    let mut c = typed.stream_sender("u2").unwrap();
    c.begin(None, None).unwrap();
    typed.send_chunk(&mut c, data.slice(..10), now).unwrap();
    let envelope = typed.poll_envelope().unwrap();
    assert_eq!(
        (envelope.command.as_str(), envelope.rid.as_str()),
        ("stream", "u2")
    );
    let chunk = envelope.unpack::<Stream>(Validation::Strict).unwrap();
    assert_eq!(chunk.data, data.slice(..10));
}

#[test]
fn send_chunk_refuses_what_the_sender_or_the_frame_limit_refuses() {
    let now = Instant::now();
    let mut conn = client_with_max_frame_length(1000, now);
    let mut sender = conn.stream_sender("u1").unwrap();
    assert!(matches!(
        conn.send_chunk(&mut sender, Bytes::from_static(b"x"), now),
        Err(Error::Usage(
            crate::stream::UsageError::StreamNotOpen { .. }
        ))
    ));
    sender.begin(None, None).unwrap();
    assert!(matches!(
        conn.send_chunk(&mut sender, Bytes::from(vec![0; 2000]), now),
        Err(Error::TooLarge { max: 1000, .. })
    ));
    assert!(!conn.has_transmit());
    conn.send_chunk(&mut sender, Bytes::from(vec![0; 500]), now)
        .unwrap();
    assert_eq!(conn.queued_transmit(), 1);
}

/// Everything `conn` transmits through `poll_transmit_vectored`, as the
/// bytes a vectored writer would send, and the payloads it handed out.
fn drain_vectored(conn: &mut Connection) -> (Vec<u8>, Vec<Bytes>) {
    let mut wire = Vec::new();
    let mut handed = Vec::new();
    loop {
        let mut head = BytesMut::new();
        let data = conn.poll_transmit_vectored(&mut head);
        wire.extend_from_slice(&head);
        match data {
            Some(data) => {
                wire.extend_from_slice(&data);
                handed.push(data);
            }
            None if head.is_empty() => return (wire, handed),
            None => {}
        }
    }
}

/// Everything `conn` transmits through `poll_transmit`.
fn drain_transmit(conn: &mut Connection) -> Vec<u8> {
    let mut wire = Vec::new();
    while conn.has_transmit() {
        let mut batch = BytesMut::new();
        conn.poll_transmit(&mut batch);
        wire.extend_from_slice(&batch);
    }
    wire
}

#[test]
fn vectored_transmit_writes_the_same_bytes_without_copying_chunks() {
    let now = Instant::now();
    let (mut a, _) = pair(now);
    let (mut b, _) = pair(now);
    let file = Bytes::from((0..700_000u32).map(|i| i as u8).collect::<Vec<u8>>());
    for conn in [&mut a, &mut b] {
        conn.request(&PingRequest {}, now).unwrap();
        conn.send_stream("u1", file.clone(), true, None, now)
            .unwrap();
        conn.request(&PingRequest {}, now).unwrap();
    }
    let (vectored, handed) = drain_vectored(&mut a);
    let copied = drain_transmit(&mut b);
    let range = file.as_ptr_range();
    for data in &handed {
        assert!(range.contains(&data.as_ptr()), "a slice of the file");
    }
    assert_eq!(handed.len(), 3);
    assert_eq!(vectored.len(), copied.len());
    let first_difference = vectored.iter().zip(copied.iter()).position(|(x, y)| x != y);
    assert_eq!(first_difference, None);
}

#[test]
fn vectored_transmit_hands_out_large_envelope_payloads_unless_fields_follow() {
    let now = Instant::now();
    let (mut a, _) = pair(now);
    let (mut b, _) = pair(now);
    let value = Bytes::from(vec![5u8; VECTORED_PAYLOAD]);
    let reply = |jwt: &str, value: Bytes| Envelope {
        command: "queryreply".into(),
        rid: "q".into(),
        jwt: jwt.into(),
        data: Some(crate::proto::google::protobuf::Any {
            type_url: "openiap.QueryResponse".into(),
            value,
        }),
        ..Envelope::default()
    };
    for conn in [&mut a, &mut b] {
        // Handed out; written whole (a field after the payload); too small.
        conn.send(reply("", value.clone()), now).unwrap();
        conn.send(reply("j", value.clone()), now).unwrap();
        conn.send(reply("", value.slice(1..)), now).unwrap();
    }
    let (vectored, handed) = drain_vectored(&mut a);
    assert_eq!(handed.len(), 1);
    assert_eq!(handed[0].as_ptr(), value.as_ptr(), "not copied");
    assert_eq!(handed[0].len(), VECTORED_PAYLOAD);
    let copied = drain_transmit(&mut b);
    assert!(vectored == copied, "same bytes as poll_transmit");
}
