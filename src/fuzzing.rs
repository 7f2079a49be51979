//! Bodies of the fuzz targets in `fuzz/`, kept in the library (as rustls
//! does) so that they build on stable and `cargo test` runs them on known
//! inputs. Each function must never panic on any input; the assertions
//! inside check invariants that hold for every input.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::command::{Payload, Validation};
use crate::connection::{Connection, ConnectionConfig, Role};
use crate::envelope::{Envelope, EnvelopeError, decode_envelope, encode_envelope, payload};
use crate::view::EnvelopeView;

pub use crate::frame::fuzz_decode as frame_decoder;
pub use crate::reorder::fuzz_reorder as reorder;
pub use crate::stream::fuzz_stream as stream;
pub use crate::websocket::fuzz_deframe as ws_frame;

/// Envelope decoding, command/type_url validation in both policies and
/// payload decoding; whatever decodes must survive an encode/decode round
/// trip unchanged, and the borrowed [`EnvelopeView`] must agree with prost:
/// both accept the same frames and read the same fields.
pub fn envelope(data: &[u8]) {
    let frame = Bytes::copy_from_slice(data);
    let decoded = decode_envelope(frame.clone());
    if let Err(why) = view_agrees(&frame, &decoded) {
        panic!("{why}");
    }
    let Ok(envelope) = decoded else {
        return;
    };
    let again = decode_envelope(encode_envelope(&envelope));
    assert_eq!(again.as_ref(), Ok(&envelope), "envelope round trip");
    for validation in [Validation::Strict, Validation::Lenient] {
        if let Ok(decoded) = payload(&envelope, validation) {
            let any = decoded.to_any();
            let redecoded = Payload::decode(decoded.command(), Some(&any), Validation::Strict);
            assert_eq!(redecoded.as_ref(), Ok(&decoded), "payload round trip");
        }
    }
}

/// Checks that the borrowed [`EnvelopeView`] agrees with prost on `frame`,
/// given prost's result for it (`decode_envelope(frame.clone())`): both
/// refuse it, or both accept it and read the same fields. The error says
/// how they differ. Shared by [`envelope`] and the view's tests.
pub fn view_agrees(frame: &Bytes, owned: &Result<Envelope, EnvelopeError>) -> Result<(), String> {
    match (EnvelopeView::parse(frame), owned) {
        (Ok(view), Ok(owned)) => {
            let viewed = view.to_envelope();
            if &viewed == owned {
                Ok(())
            } else {
                Err(format!(
                    "view and prost differ: view {viewed:?}, prost {owned:?}"
                ))
            }
        }
        (Err(_), Err(_)) => Ok(()),
        (view, owned) => Err(format!("view {view:?} but prost {owned:?}")),
    }
}

/// A server-role [`Connection`] fed arbitrary bytes in data-driven pieces
/// with a clock that moves: it never panics, keeps its queues bounded and,
/// once failed, answers every call with the same error.
pub fn server_connection(data: &[u8]) {
    let start = Instant::now();
    let mut config = ConnectionConfig::default();
    config.frame_mut().set_max_frame_length(64 * 1024);
    config.stream_mut().set_max_open_streams(4);
    config.set_max_pending_requests(8);
    let mut conn = Connection::new(Role::Server, config, start);
    let mut out = BytesMut::new();
    let mut rest = data;
    let mut now = start;
    while let Some((&control, tail)) = rest.split_first() {
        let take = usize::from(control & 0x3f).min(tail.len());
        let (piece, tail) = tail.split_at(take);
        rest = tail;
        now += Duration::from_millis(u64::from(control >> 6) * 20_000);
        let result = if control & 0x80 != 0 && piece.is_empty() {
            conn.handle_timeout(now)
        } else {
            conn.handle_bytes(piece, now)
        };
        while conn.poll_event().is_some() {}
        out.clear();
        while conn.poll_transmit(&mut out) > 0 {
            out.clear();
        }
        if let Err(error) = result
            && error.is_connection_fatal()
        {
            assert_eq!(conn.handle_bytes(b"x", now), Err(error.clone()));
            assert_eq!(conn.error(), Some(&error));
            return;
        }
        assert!(conn.pending_requests() <= 8);
        assert!(conn.open_streams() <= 4);
    }
    let _ = conn.handle_eof();
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOCKET_C2S: &[u8] = include_bytes!("../../shared/vectors/socket-c2s.bin");
    const SOCKET_S2C: &[u8] = include_bytes!("../../shared/vectors/socket-s2c.bin");

    fn inputs() -> Vec<Vec<u8>> {
        let mut inputs = vec![
            Vec::new(),
            vec![0],
            vec![0xff; 64],
            vec![0, 0, 0, 0],
            vec![0x0a, 0x04, b'p', b'i', b'n', b'g'],
            (0..=255).collect(),
        ];
        // The first frames of a real conversation, whole and cut.
        inputs.push(SOCKET_C2S.get(..400).unwrap_or_default().to_vec());
        inputs.push(SOCKET_S2C.get(..400).unwrap_or_default().to_vec());
        inputs.push(SOCKET_C2S.get(4..200).unwrap_or_default().to_vec());
        inputs
    }

    #[test]
    fn exercise_every_target() {
        for input in inputs() {
            frame_decoder(&input);
            envelope(&input);
            reorder(&input);
            stream(&input);
            server_connection(&input);
        }
    }

    #[test]
    fn server_connection_takes_a_real_client_stream() {
        // Interleave control bytes so the whole capture prefix is fed in
        // 63-byte pieces without moving the clock.
        let mut input = Vec::new();
        for piece in SOCKET_C2S.get(..4096).unwrap_or_default().chunks(63) {
            input.push(63);
            input.extend_from_slice(piece);
        }
        server_connection(&input);
    }

    #[test]
    fn envelope_accepts_every_captured_frame() {
        let mut rest = SOCKET_C2S;
        while rest.len() >= 4 {
            let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            let Some(body) = rest.get(4..4 + len) else {
                break;
            };
            envelope(body);
            rest = &rest[4 + len..];
        }
    }
}
