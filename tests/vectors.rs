//! Golden wire vectors captured from the real Node implementation
//! (`@openiap/nodeapi` 0.0.39) over socket, pipe, ws and grpc: see
//! `shared/vectors/README.md`. Every file must decode, whole and split into
//! arbitrary pieces, into exactly the envelopes its manifest lists, and the
//! payloads must decode to what the Node peer sent.

mod support;

use std::collections::BTreeSet;

use bytes::{Buf, Bytes, BytesMut};
use openiap_wire::{
    command::{CommandError, Payload, Validation},
    envelope::{decode_envelope, payload},
    frame::{FrameConfig, FrameDecoder, encode_frame},
    proto::Envelope,
};
use serde_json::Value;
use sha2::{Digest, Sha256};
use support::gen_bytes;

const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/vectors");
const FILES: [&str; 8] = [
    "socket-c2s.bin",
    "socket-s2c.bin",
    "pipe-c2s.bin",
    "pipe-s2c.bin",
    "ws-c2s.bin",
    "ws-s2c.bin",
    "grpc-c2s.bin",
    "grpc-s2c.bin",
];
/// Size of the file uploaded and downloaded in the captured conversation.
const FILE_SIZE: usize = 314_573;

fn manifest() -> Value {
    let text = std::fs::read_to_string(format!("{VECTORS}/manifest.json"))
        .expect("shared/vectors/manifest.json must sit beside the repository");
    serde_json::from_str(&text).expect("manifest is JSON")
}

fn read_vector(name: &str) -> Bytes {
    std::fs::read(format!("{VECTORS}/{name}"))
        .unwrap_or_else(|e| panic!("read {name}: {e}"))
        .into()
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Tiny deterministic PRNG for split points (no dependency on test order).
struct SplitMix(u64);
impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Feeds `pieces` through one decoder and returns every frame, checking
/// that nothing is left over at the end.
fn decode_pieces<'a>(pieces: impl IntoIterator<Item = &'a [u8]>) -> Vec<Bytes> {
    let mut decoder = FrameDecoder::new(FrameConfig::default());
    let mut frames = Vec::new();
    for piece in pieces {
        decoder.push(piece);
        while let Some(frame) = decoder.decode().expect("vector frames are valid") {
            frames.push(frame);
        }
    }
    decoder.finish().expect("no bytes left over");
    frames
}

fn random_pieces(data: &[u8], seed: u64, max_piece: usize) -> Vec<&[u8]> {
    let mut rng = SplitMix(seed);
    let mut pieces = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let n = (1 + rng.below(max_piece)).min(rest.len());
        let (head, tail) = rest.split_at(n);
        pieces.push(head);
        rest = tail;
    }
    pieces
}

/// Field numbers present in an encoded Envelope, in wire order.
fn fields_present(mut frame: &[u8]) -> Vec<u64> {
    let mut fields = Vec::new();
    while frame.has_remaining() {
        let (tag, wire_type) = prost::encoding::decode_key(&mut frame).expect("valid key");
        prost::encoding::skip_field(
            wire_type,
            tag,
            &mut frame,
            prost::encoding::DecodeContext::default(),
        )
        .expect("valid field");
        fields.push(u64::from(tag));
    }
    fields
}

fn str_field<'a>(entry: &'a Value, key: &str) -> &'a str {
    entry[key]
        .as_str()
        .unwrap_or_else(|| panic!("manifest {key}"))
}

fn int_field(entry: &Value, key: &str) -> i64 {
    entry[key]
        .as_i64()
        .unwrap_or_else(|| panic!("manifest {key}"))
}

/// Checks one decoded frame against its manifest entry.
fn check_envelope(name: &str, index: usize, frame: &Bytes, entry: &Value) -> Envelope {
    let at = format!("{name} envelope {index}");
    assert_eq!(frame.len() as i64, int_field(entry, "frame_len"), "{at}");
    let env = decode_envelope(frame.clone()).unwrap_or_else(|e| panic!("{at}: {e}"));
    assert_eq!(env.command, str_field(entry, "command"), "{at}");
    assert_eq!(
        i64::from(env.priority),
        int_field(entry, "priority"),
        "{at}"
    );
    assert_eq!(i64::from(env.seq), int_field(entry, "seq"), "{at}");
    assert_eq!(env.id, str_field(entry, "id"), "{at}");
    assert_eq!(env.rid, str_field(entry, "rid"), "{at}");
    assert_eq!(env.jwt, str_field(entry, "jwt"), "{at}");
    assert_eq!(env.traceid, str_field(entry, "traceid"), "{at}");
    assert_eq!(env.spanid, str_field(entry, "spanid"), "{at}");

    let expected_fields: Vec<u64> = entry["fields_present"]
        .as_array()
        .expect("fields_present")
        .iter()
        .map(|v| v.as_u64().expect("field number"))
        .collect();
    assert_eq!(fields_present(frame), expected_fields, "{at}");

    let has_data = entry["has_data"].as_bool().expect("has_data");
    assert_eq!(env.data.is_some(), has_data, "{at}");
    if let Some(any) = &env.data {
        assert_eq!(any.type_url, str_field(entry, "type_url"), "{at}");
        assert_eq!(
            any.value.len() as i64,
            int_field(entry, "value_len"),
            "{at}"
        );
        assert_eq!(
            sha256_hex(&any.value),
            str_field(entry, "value_sha256"),
            "{at}"
        );
    }
    env
}

/// What the payloads of one direction must decode to.
fn check_payloads(name: &str, envelopes: &[Envelope]) {
    let upload = gen_bytes(FILE_SIZE, 0x5eed + FILE_SIZE as u32);
    let download = gen_bytes(FILE_SIZE, FILE_SIZE as u32);
    let mut streamed = Vec::new();
    let mut chunk_sizes = Vec::new();
    let mut commands = BTreeSet::new();
    for env in envelopes {
        let at = format!("{name} {} seq {}", env.command, env.seq);
        commands.insert(env.command.as_str());
        let decoded = payload(env, Validation::Lenient);
        match (env.command.as_str(), decoded) {
            ("nosuchcommand", Err(CommandError::UnknownCommand { command })) => {
                assert_eq!(command, "nosuchcommand");
            }
            (_, Err(e)) => panic!("{at}: {e}"),
            (_, Ok(Payload::SigninRequest(req))) => {
                assert_eq!(req.username, "harness", "{at}");
                assert!(!req.password.is_empty(), "{at}");
            }
            (_, Ok(Payload::SigninResponse(resp))) => {
                assert!(!resp.jwt.is_empty(), "{at}");
            }
            (_, Ok(Payload::PingRequest(_) | Payload::PingResponse(_))) => {}
            (_, Ok(Payload::ErrorResponse(err))) => {
                assert!(err.message.contains("nosuchcommand"), "{at}: {err:?}");
            }
            (_, Ok(Payload::UploadRequest(req))) => {
                assert!(!req.filename.is_empty(), "{at}");
            }
            (_, Ok(Payload::UploadResponse(resp))) => {
                assert!(!resp.id.is_empty(), "{at}");
            }
            (_, Ok(Payload::BeginStream(begin))) => {
                let content = if name.contains("c2s") {
                    &upload
                } else {
                    &download
                };
                if !begin.checksum.is_empty() {
                    assert_eq!(begin.checksum, sha256_hex(content), "{at}");
                }
            }
            (_, Ok(Payload::Stream(chunk))) => {
                chunk_sizes.push(chunk.data.len());
                streamed.extend_from_slice(&chunk.data);
            }
            (_, Ok(Payload::EndStream(_))) => {}
            (_, Ok(Payload::DownloadRequest(req))) => {
                assert!(!req.id.is_empty() || !req.filename.is_empty(), "{at}");
            }
            (_, Ok(Payload::DownloadResponse(resp))) => {
                assert!(!resp.filename.is_empty() || !resp.id.is_empty(), "{at}");
            }
            (command, Ok(other)) => panic!("{at}: unexpected payload for {command}: {other:?}"),
        }
    }
    let expected = if name.contains("c2s") {
        &upload
    } else {
        &download
    };
    assert_eq!(streamed.len(), FILE_SIZE, "{name}: streamed bytes");
    assert!(streamed == *expected, "{name}: streamed content differs");
    assert_eq!(chunk_sizes, [262_144, 52_429], "{name}: chunk sizes");
    assert!(commands.contains("beginstream") && commands.contains("endstream"));
}

/// Decodes one file whole, checks every envelope, and returns them.
fn check_file(manifest: &Value, name: &str) -> Vec<Envelope> {
    let data = read_vector(name);
    let entry = &manifest["files"][name];
    assert_eq!(data.len() as i64, int_field(entry, "bytes"), "{name}");
    let expected = entry["envelopes"].as_array().expect("envelopes");

    let frames = decode_pieces([&data[..]]);
    assert_eq!(frames.len(), expected.len(), "{name}: frame count");
    let mut offset = 0i64;
    let envelopes: Vec<Envelope> = frames
        .iter()
        .zip(expected)
        .enumerate()
        .map(|(i, (frame, entry))| {
            assert_eq!(int_field(entry, "offset"), offset, "{name} envelope {i}");
            offset += 4 + frame.len() as i64;
            check_envelope(name, i, frame, entry)
        })
        .collect();
    assert_eq!(offset, data.len() as i64);
    check_payloads(name, &envelopes);
    envelopes
}

#[test]
fn every_vector_matches_its_manifest() {
    let manifest = manifest();
    for name in FILES {
        check_file(&manifest, name);
    }
}

#[test]
fn every_vector_decodes_the_same_in_random_pieces() {
    for name in FILES {
        let data = read_vector(name);
        let whole = decode_pieces([&data[..]]);
        for (seed, max_piece) in [(1, 7), (2, 1500), (3, 70_000)] {
            let split = decode_pieces(random_pieces(&data, seed, max_piece));
            assert!(split == whole, "{name}: split {seed}/{max_piece} differs");
        }
    }
}

#[test]
fn one_byte_pieces_decode_the_same() {
    let data = read_vector("socket-c2s.bin");
    let whole = decode_pieces([&data[..]]);
    let split = decode_pieces(data.chunks(1));
    assert!(split == whole);
}

#[test]
fn ws_vectors_decode_message_by_message() {
    let manifest = manifest();
    for name in ["ws-c2s.bin", "ws-s2c.bin"] {
        let data = read_vector(name);
        let sizes: Vec<usize> = manifest["files"][name]["ws_message_sizes"]
            .as_array()
            .expect("ws_message_sizes")
            .iter()
            .map(|v| v.as_u64().expect("size") as usize)
            .collect();
        assert_eq!(sizes.iter().sum::<usize>(), data.len());
        // Node sends the 4-byte prefix and the body as two messages.
        assert!(sizes.iter().step_by(2).all(|&s| s == 4), "{name}");
        let mut rest = &data[..];
        let messages = sizes.iter().map(|&n| {
            let (head, tail) = rest.split_at(n);
            rest = tail;
            head
        });
        let frames = decode_pieces(messages);
        assert_eq!(frames, decode_pieces([&data[..]]), "{name}");
    }
}

/// Re-encodes every decoded envelope with our encoder. The socket, pipe and
/// ws captures come from an encoder that omits default values, as prost
/// does, so our bytes are identical. The grpc capture's encoder writes
/// default-valued fields (seq 0, priority 0, empty rid) explicitly: our
/// frames are then shorter by exactly those fields and decode to the same
/// envelope.
#[test]
fn reencoding_reproduces_the_captured_bytes() {
    let manifest = manifest();
    for name in FILES {
        let data = read_vector(name);
        let envelopes = check_file(&manifest, name);
        let mut ours = BytesMut::new();
        for env in &envelopes {
            encode_frame(env, usize::MAX, &mut ours).expect("encodes");
        }
        if name.starts_with("grpc") {
            let ours = ours.freeze();
            let reparsed = decode_pieces([&ours[..]]);
            let original = decode_pieces([&data[..]]);
            for (i, (a, b)) in reparsed.iter().zip(&original).enumerate() {
                let (a_env, b_env) = (decode_envelope(a.clone()), decode_envelope(b.clone()));
                assert_eq!(a_env.ok(), b_env.ok(), "{name} envelope {i}");
                let extra: Vec<u64> = fields_present(b)
                    .into_iter()
                    .filter(|f| !fields_present(a).contains(f))
                    .collect();
                assert!(
                    extra.iter().all(|f| [2, 3, 5].contains(f)),
                    "{name} envelope {i}: only default-valued header fields may differ, got {extra:?}"
                );
                assert!(a.len() <= b.len(), "{name} envelope {i}");
            }
        } else {
            assert!(ours[..] == data[..], "{name}: re-encoded bytes differ");
        }
    }
}
