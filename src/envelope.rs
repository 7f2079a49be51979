//! Envelopes in and out of bytes, and typed payloads in and out of envelopes.
//!
//! Every message on every transport is one [`Envelope`]. This module turns a
//! frame body into an Envelope and back, packs a typed message into an
//! Envelope (the command and type URL come from the message's type), builds
//! replies and errors that point back at their request, and unpacks a payload
//! checked against the [command table](crate::command).
//!
//! ```text
//!              pack / reply / error_reply            encode_envelope
//!   message ───────────────────────────────▶ Envelope ───────────────▶ frame body
//!   message ◀─────────────────────────────── Envelope ◀─────────────── frame body
//!              unpack::<M> / payload                 decode_envelope
//! ```
//!
//! | field     | [`pack`] | [`reply`]           | [`error_reply`]     |
//! | --------- | -------- | ------------------- | ------------------- |
//! | `command` | `M::COMMAND` | `R::Response::COMMAND` | `error`      |
//! | `data`    | `M`      | the response        | [`ErrorResponse`]   |
//! | `rid`     | empty    | request `id`        | request `id`        |
//! | `traceid`, `spanid` | empty | copied from the request | copied from the request |
//! | `id`, `seq`, `priority`, `jwt` | default | default | default  |
//!
//! `id` and `seq` are stamped by whoever sends the envelope. `jwt` is not
//! copied into replies: it only belongs on non-reply messages (PROTOCOL.md,
//! "Priority, per-message jwt and tracing").
//!
//! **Zero copy.** [`decode_envelope`] decodes from [`Bytes`], and every
//! `bytes` field of the schema, `Any::value` included, is `Bytes`, so prost
//! slices payloads out of the frame instead of copying them; unpacking a
//! [`Stream`](crate::proto::Stream) chunk slices again.
//!
//! ```
//! use openiap_wire::command::Validation;
//! use openiap_wire::envelope::{decode_envelope, encode_envelope, pack, unpack};
//! use openiap_wire::proto::SigninRequest;
//!
//! let signin = SigninRequest {
//!     username: "admin".into(),
//!     password: "secret".into(),
//!     ..Default::default()
//! };
//! let mut envelope = pack(&signin);
//! envelope.id = "1".into();
//! assert_eq!(envelope.command, "signin");
//!
//! let body = encode_envelope(&envelope);
//! let received = decode_envelope(body)?;
//! let back: SigninRequest = unpack(&received, Validation::Strict)?;
//! assert_eq!(back, signin);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use bytes::Bytes;
use prost::{Message, Name};

use crate::command::{self, CommandError, Payload, Validation, sealed::Sealed};
use crate::proto::{ErrorResponse, google::protobuf::Any};

pub use crate::proto::Envelope;

/// A message that travels as the payload of one command.
///
/// Implemented for every payload type of the [command table](crate::command),
/// and only for those (the trait is sealed), so [`pack`] knows the command
/// from the type alone and every `WireMessage` has a table row.
pub trait WireMessage: Message + Name + Default + Sized + Sealed {
    /// The command this type travels under (`"signin"` for
    /// [`SigninRequest`](crate::proto::SigninRequest)).
    const COMMAND: &'static str;
}

/// A request type, tied to the type of its reply.
///
/// Implemented for the 45 `FlowService` rpcs, `distinct`,
/// `createworkflowinstance`, `getelement` and `ping` (whose response,
/// [`PingResponse`](crate::proto::PingResponse), travels as `pong`), so
/// [`reply`] cannot pair a request with the wrong response type.
pub trait Request: WireMessage {
    /// The payload type of the reply.
    type Response: WireMessage;
}

/// Why a frame body was not accepted as an Envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// The bytes are not a valid protobuf `Envelope`.
    #[error("frame body is not a valid openiap.Envelope")]
    Decode(#[source] prost::DecodeError),
    /// The Envelope has an empty `command`.
    #[error("envelope {id:?} has an empty command")]
    MissingCommand {
        /// The envelope's id (possibly empty as well).
        id: String,
    },
    /// The Envelope has an empty `id`.
    #[error("envelope with command {command:?} has an empty id")]
    MissingId {
        /// The envelope's command.
        command: String,
    },
}

/// Decodes an Envelope from one frame body.
///
/// A zero-length body decodes as the all-default Envelope (protobuf's empty
/// message); [`validate_envelope`] rejects it. No payload byte is copied: the
/// `Bytes` fields of the result share `frame`'s memory.
///
/// # Errors
///
/// [`EnvelopeError::Decode`] when `frame` is not a valid protobuf `Envelope`.
pub fn decode_envelope(frame: Bytes) -> Result<Envelope, EnvelopeError> {
    Envelope::decode(frame).map_err(EnvelopeError::Decode)
}

/// Encodes an Envelope into a frame body (without the length prefix).
#[must_use]
pub fn encode_envelope(envelope: &Envelope) -> Bytes {
    Bytes::from(envelope.encode_to_vec())
}

/// The length of [`encode_envelope`]'s output, without encoding.
pub fn encoded_len(envelope: &Envelope) -> usize {
    envelope.encoded_len()
}

/// Checks the two fields every sent envelope carries (PROTOCOL.md, "ids, rids
/// and matching replies"): a non-empty `command` and a non-empty `id`.
///
/// # Errors
///
/// [`EnvelopeError::MissingCommand`] or [`EnvelopeError::MissingId`].
pub fn validate_envelope(envelope: &Envelope) -> Result<(), EnvelopeError> {
    validate_header(&envelope.command, &envelope.id)
}

/// [`validate_envelope`] on the two fields alone, for callers that hold them
/// borrowed (an [`EnvelopeView`](crate::view::EnvelopeView)).
///
/// # Errors
///
/// [`EnvelopeError::MissingCommand`] or [`EnvelopeError::MissingId`].
pub fn validate_header(command: &str, id: &str) -> Result<(), EnvelopeError> {
    if command.is_empty() {
        return Err(EnvelopeError::MissingCommand { id: id.to_owned() });
    }
    if id.is_empty() {
        return Err(EnvelopeError::MissingId {
            command: command.to_owned(),
        });
    }
    Ok(())
}

/// Packs `message` into an `Any` whose type URL comes from its type
/// (`type.googleapis.com/openiap.<Name>`).
#[must_use]
pub fn pack_any<M: WireMessage>(message: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: Bytes::from(message.encode_to_vec()),
    }
}

/// An Envelope carrying `message` under its command, every other field
/// default.
#[must_use]
pub fn pack<M: WireMessage>(message: &M) -> Envelope {
    Envelope {
        command: M::COMMAND.to_owned(),
        data: Some(pack_any(message)),
        ..Envelope::default()
    }
}

/// The reply to `request`, a request of type `R`: command
/// `R::Response::COMMAND`, `rid` = the request's `id`, `traceid` and `spanid`
/// copied.
///
/// ```
/// use openiap_wire::envelope::{pack, reply};
/// use openiap_wire::proto::{SigninRequest, SigninResponse};
///
/// let mut request = pack(&SigninRequest::default());
/// request.id = "7".into();
/// let answer = reply::<SigninRequest>(&request, &SigninResponse::default());
/// assert_eq!((answer.command.as_str(), answer.rid.as_str()), ("signinreply", "7"));
/// ```
#[must_use]
pub fn reply<R: Request>(request: &Envelope, response: &R::Response) -> Envelope {
    answer(request, pack(response))
}

/// The `error` answer to `request`: an [`ErrorResponse`] with `message` and
/// `code` (and no stack), `rid` = the request's `id`, `traceid` and `spanid`
/// copied.
#[must_use]
pub fn error_reply(request: &Envelope, message: impl Into<String>, code: i32) -> Envelope {
    let error = ErrorResponse {
        message: message.into(),
        code,
        stack: String::new(),
    };
    answer(request, pack(&error))
}

/// Points `envelope` back at `request`.
fn answer(request: &Envelope, envelope: Envelope) -> Envelope {
    Envelope {
        rid: request.id.clone(),
        traceid: request.traceid.clone(),
        spanid: request.spanid.clone(),
        ..envelope
    }
}

/// Decodes the payload of `envelope` as `M`.
///
/// The envelope's command must be `M::COMMAND`
/// ([`CommandError::UnexpectedCommand`] otherwise); the data is then checked
/// under `validation` as tabled in [`command`].
///
/// # Errors
///
/// [`CommandError::UnexpectedCommand`] when the command is not `M::COMMAND`,
/// and the errors of [`Payload::decode`] for the data.
pub fn unpack<M: WireMessage>(
    envelope: &Envelope,
    validation: Validation,
) -> Result<M, CommandError> {
    if envelope.command != M::COMMAND {
        return Err(CommandError::UnexpectedCommand {
            expected: M::COMMAND,
            actual: envelope.command.clone(),
        });
    }
    command::decode_as(M::SPEC, envelope.data.as_ref(), validation)
}

/// Decodes the payload of `envelope` by its command, whatever it is.
///
/// # Errors
///
/// As [`Payload::decode`]: an unknown command, missing data, a mismatching
/// type URL or an undecodable value.
pub fn payload(envelope: &Envelope, validation: Validation) -> Result<Payload, CommandError> {
    Payload::decode(&envelope.command, envelope.data.as_ref(), validation)
}

mod ext_sealed {
    /// Seals [`EnvelopeExt`](super::EnvelopeExt) to [`Envelope`](super::Envelope).
    pub trait Sealed {}
    impl Sealed for super::Envelope {}
}

/// The functions of this module as methods of [`Envelope`].
///
/// ```
/// use openiap_wire::command::Validation;
/// use openiap_wire::envelope::{EnvelopeExt, pack};
/// use openiap_wire::proto::QueryRequest;
///
/// let envelope = pack(&QueryRequest { collectionname: "entities".into(), ..Default::default() });
/// let query = envelope.unpack::<QueryRequest>(Validation::Strict)?;
/// assert_eq!(query.collectionname, "entities");
/// # Ok::<(), openiap_wire::command::CommandError>(())
/// ```
pub trait EnvelopeExt: ext_sealed::Sealed {
    /// [`unpack`] this envelope.
    ///
    /// # Errors
    ///
    /// As [`unpack`].
    fn unpack<M: WireMessage>(&self, validation: Validation) -> Result<M, CommandError>;
    /// [`payload`] of this envelope.
    ///
    /// # Errors
    ///
    /// As [`payload`].
    fn payload(&self, validation: Validation) -> Result<Payload, CommandError>;
    /// [`reply`] to this envelope.
    fn reply<R: Request>(&self, response: &R::Response) -> Envelope;
    /// [`error_reply`] to this envelope.
    fn error_reply(&self, message: impl Into<String>, code: i32) -> Envelope;
    /// [`encode_envelope`] this envelope.
    fn to_bytes(&self) -> Bytes;
}

impl EnvelopeExt for Envelope {
    fn unpack<M: WireMessage>(&self, validation: Validation) -> Result<M, CommandError> {
        unpack(self, validation)
    }

    fn payload(&self, validation: Validation) -> Result<Payload, CommandError> {
        payload(self, validation)
    }

    fn reply<R: Request>(&self, response: &R::Response) -> Envelope {
        reply::<R>(self, response)
    }

    fn error_reply(&self, message: impl Into<String>, code: i32) -> Envelope {
        error_reply(self, message, code)
    }

    fn to_bytes(&self) -> Bytes {
        encode_envelope(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{CommandKind, commands, lookup, type_name};
    use crate::proto::{
        PingRequest, QueryRequest, SigninRequest, SigninResponse, Stream, UploadRequest,
    };
    use proptest::prelude::*;

    fn request(command_id: &str) -> Envelope {
        Envelope {
            id: command_id.to_owned(),
            traceid: "4bf92f3577b34da6a3ce929d0e0e4736".to_owned(),
            spanid: "00f067aa0ba902b7".to_owned(),
            jwt: "token".to_owned(),
            seq: 12,
            priority: 2,
            ..pack(&SigninRequest::default())
        }
    }

    /// `inner` lies inside `outer`'s memory.
    fn within(outer: &Bytes, inner: &Bytes) -> bool {
        let start = outer.as_ptr() as usize;
        let at = inner.as_ptr() as usize;
        at >= start && at + inner.len() <= start + outer.len()
    }

    #[test]
    fn every_command_round_trips_through_pack_and_payload() {
        let packed = Payload::pack_defaults();
        assert_eq!(packed.len(), commands().len());
        for (envelope, spec) in packed.iter().zip(commands()) {
            assert_eq!(envelope.command, spec.command);
            let any = envelope.data.as_ref().expect("data");
            assert_eq!(type_name(&any.type_url), Some(spec.type_name));
            let received = decode_envelope(encode_envelope(envelope)).expect("decodes");
            let payload = payload(&received, Validation::Strict).expect(spec.command);
            assert_eq!(payload.spec(), spec);
            assert_eq!(&payload.to_envelope(), envelope);
        }
    }

    #[test]
    fn pack_takes_command_and_type_url_from_the_type() {
        let envelope = pack(&SigninRequest {
            username: "admin".to_owned(),
            ..Default::default()
        });
        assert_eq!(envelope.command, "signin");
        let any = envelope.data.as_ref().expect("data");
        assert_eq!(any.type_url, "type.googleapis.com/openiap.SigninRequest");
        assert_eq!(
            (envelope.id.as_str(), envelope.rid.as_str(), envelope.seq),
            ("", "", 0)
        );
    }

    #[test]
    fn reply_points_at_the_request() {
        let request = request("42");
        let answer = reply::<SigninRequest>(&request, &SigninResponse::default());
        assert_eq!(answer.command, "signinreply");
        assert_eq!(answer.rid, "42");
        assert_eq!(
            (answer.traceid.as_str(), answer.spanid.as_str()),
            (request.traceid.as_str(), request.spanid.as_str())
        );
        assert_eq!(
            (answer.id.as_str(), answer.jwt.as_str(), answer.seq),
            ("", "", 0)
        );
        assert_eq!(answer.priority, 0);
        let back: SigninResponse = unpack(&answer, Validation::Strict).expect("reply payload");
        assert_eq!(back, SigninResponse::default());
    }

    #[test]
    fn ping_is_answered_with_pong() {
        let ping = Envelope {
            id: "p1".to_owned(),
            ..pack(&PingRequest::default())
        };
        let pong = reply::<PingRequest>(&ping, &Default::default());
        assert_eq!((pong.command.as_str(), pong.rid.as_str()), ("pong", "p1"));
    }

    #[test]
    fn error_reply_points_at_the_request() {
        let request = request("42");
        let error = error_reply(&request, "no such user", 401);
        assert_eq!(error.command, "error");
        assert_eq!(error.rid, "42");
        assert_eq!(error.traceid, request.traceid);
        let body: ErrorResponse = unpack(&error, Validation::Strict).expect("error payload");
        assert_eq!(
            body,
            ErrorResponse {
                message: "no such user".to_owned(),
                code: 401,
                stack: String::new(),
            }
        );
        assert_eq!(
            lookup(&error.command).map(|s| s.kind),
            Some(CommandKind::Error)
        );
    }

    #[test]
    fn unpack_of_another_command_names_both() {
        let envelope = pack(&QueryRequest::default());
        let result = unpack::<SigninRequest>(&envelope, Validation::Lenient);
        let error = result.expect_err("wrong command");
        assert_eq!(
            error,
            CommandError::UnexpectedCommand {
                expected: "signin",
                actual: "query".to_owned(),
            }
        );
        assert_eq!(
            error.to_string(),
            "expected command \"signin\", found \"query\""
        );
    }

    #[test]
    fn unpack_applies_the_validation_policy() {
        let mut envelope = pack(&UploadRequest {
            filename: "a.txt".to_owned(),
            ..Default::default()
        });
        if let Some(any) = envelope.data.as_mut() {
            any.type_url.clear();
        }
        let upload: UploadRequest = unpack(&envelope, Validation::Lenient).expect("lenient");
        assert_eq!(upload.filename, "a.txt");
        assert!(matches!(
            unpack::<UploadRequest>(&envelope, Validation::Strict),
            Err(CommandError::TypeUrlMismatch {
                command: "upload",
                ..
            })
        ));
    }

    #[test]
    fn empty_frame_is_the_default_envelope() {
        assert_eq!(decode_envelope(Bytes::new()), Ok(Envelope::default()));
    }

    #[test]
    fn garbage_frame_is_a_decode_error() {
        // Field 1 (command) declares 16 bytes, 2 follow.
        let result = decode_envelope(Bytes::from_static(&[0x0a, 0x10, b'h', b'i']));
        assert!(
            matches!(result, Err(EnvelopeError::Decode(_))),
            "{result:?}"
        );
    }

    #[test]
    fn decode_copies_no_payload_bytes() {
        let chunk = Bytes::from(vec![7_u8; 4096]);
        let mut envelope = pack(&Stream { data: chunk });
        envelope.id = "1".to_owned();
        envelope.rid = "upload-1".to_owned();
        let frame = encode_envelope(&envelope);

        let received = decode_envelope(frame.clone()).expect("decodes");
        let any = received.data.as_ref().expect("data");
        assert!(within(&frame, &any.value));
        let Payload::Stream(stream) = payload(&received, Validation::Strict).expect("stream")
        else {
            panic!("not a stream payload");
        };
        assert_eq!(stream.data.len(), 4096);
        assert!(within(&frame, &stream.data));

        // Control: decoding from a borrowed slice copies, and the check sees it.
        let copied = Envelope::decode(frame.as_ref()).expect("decodes");
        let copied_value = copied.data.map(|any| any.value).unwrap_or_default();
        assert_eq!(copied_value.len(), any.value.len());
        assert!(!within(&frame, &copied_value));
    }

    #[test]
    fn encoded_len_matches_the_encoding() {
        let envelope = request("abc");
        assert_eq!(encoded_len(&envelope), encode_envelope(&envelope).len());
    }

    #[test]
    fn validate_envelope_requires_command_and_id() {
        assert_eq!(validate_envelope(&request("1")), Ok(()));
        assert_eq!(
            validate_envelope(&Envelope::default()),
            Err(EnvelopeError::MissingCommand { id: String::new() })
        );
        assert_eq!(
            validate_envelope(&pack(&PingRequest::default())),
            Err(EnvelopeError::MissingId {
                command: "ping".to_owned()
            })
        );
    }

    #[test]
    fn extension_methods_match_the_functions() {
        let request = request("9");
        assert_eq!(
            request.unpack::<SigninRequest>(Validation::Strict),
            unpack::<SigninRequest>(&request, Validation::Strict)
        );
        assert_eq!(
            request.payload(Validation::Strict),
            payload(&request, Validation::Strict)
        );
        assert_eq!(
            request.reply::<SigninRequest>(&SigninResponse::default()),
            reply::<SigninRequest>(&request, &SigninResponse::default())
        );
        assert_eq!(request.error_reply("x", 1), error_reply(&request, "x", 1));
        assert_eq!(request.to_bytes(), encode_envelope(&request));
    }

    fn signin_strategy() -> impl Strategy<Value = SigninRequest> {
        (
            any::<String>(),
            any::<String>(),
            any::<String>(),
            any::<(bool, bool, bool)>(),
            any::<String>(),
        )
            .prop_map(
                |(username, password, jwt, (ping, validateonly, longtoken), agent)| SigninRequest {
                    username,
                    password,
                    jwt,
                    ping,
                    validateonly,
                    agent,
                    version: "0.1.0".to_owned(),
                    longtoken,
                },
            )
    }

    fn query_strategy() -> impl Strategy<Value = QueryRequest> {
        (
            any::<String>(),
            any::<String>(),
            any::<i32>(),
            any::<i32>(),
            any::<bool>(),
        )
            .prop_map(|(query, collectionname, top, skip, explain)| QueryRequest {
                query,
                collectionname,
                top,
                skip,
                explain,
                ..Default::default()
            })
    }

    fn round_trip<M: WireMessage + PartialEq + std::fmt::Debug>(
        message: &M,
        id: String,
        seq: i32,
    ) -> Result<(), TestCaseError> {
        let envelope = Envelope {
            id,
            seq,
            ..pack(message)
        };
        let received = decode_envelope(encode_envelope(&envelope))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&received, &envelope);
        let back: M = unpack(&received, Validation::Strict)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&back, message);
        Ok(())
    }

    proptest! {
        #[test]
        fn signin_round_trips(message in signin_strategy(), id in any::<String>(), seq in any::<i32>()) {
            round_trip(&message, id, seq)?;
        }

        #[test]
        fn query_round_trips(message in query_strategy(), id in any::<String>(), seq in any::<i32>()) {
            round_trip(&message, id, seq)?;
        }

        #[test]
        fn stream_round_trips(
            data in proptest::collection::vec(any::<u8>(), 0..2048),
            id in any::<String>(),
            seq in any::<i32>(),
        ) {
            round_trip(&Stream { data: Bytes::from(data) }, id, seq)?;
        }

        #[test]
        fn error_reply_round_trips(message in any::<String>(), code in any::<i32>(), id in any::<String>()) {
            let error = error_reply(&Envelope { id: id.clone(), ..Default::default() }, message.clone(), code);
            let received = decode_envelope(encode_envelope(&error)).map_err(|e| {
                TestCaseError::fail(e.to_string())
            })?;
            prop_assert_eq!(&received.rid, &id);
            let body: ErrorResponse = unpack(&received, Validation::Strict).map_err(|e| {
                TestCaseError::fail(e.to_string())
            })?;
            prop_assert_eq!((body.message, body.code), (message, code));
        }

        #[test]
        fn arbitrary_frames_never_panic(
            frame in proptest::collection::vec(any::<u8>(), 0..512),
            strict in any::<bool>(),
        ) {
            let validation = if strict { Validation::Strict } else { Validation::Lenient };
            if let Ok(envelope) = decode_envelope(Bytes::from(frame)) {
                let _ = validate_envelope(&envelope);
                if let Ok(payload) = payload(&envelope, validation) {
                    prop_assert_eq!(payload.command(), envelope.command.as_str());
                }
            }
        }

        #[test]
        fn packed_frames_with_noise_never_panic(
            index in 0..commands().len(),
            noise in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            // A valid envelope for a table command whose data value is noise.
            let mut envelope = Payload::pack_defaults().swap_remove(index);
            if let Some(any) = envelope.data.as_mut() {
                any.value = Bytes::from(noise);
            }
            let received = decode_envelope(encode_envelope(&envelope)).map_err(|e| {
                TestCaseError::fail(e.to_string())
            })?;
            match payload(&received, Validation::Strict) {
                Ok(payload) => prop_assert_eq!(payload.command(), envelope.command.as_str()),
                Err(error) => {
                    let is_payload_error = matches!(error, CommandError::Payload { .. });
                    prop_assert!(is_payload_error, "{}", error);
                }
            }
        }
    }
}
