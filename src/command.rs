//! The command table: which payload type travels under which command, and how
//! a received [`Any`] is checked against it.
//!
//! An [`Envelope`](crate::proto::Envelope) names its payload twice: in
//! `command` (`"signin"`) and in `data.type_url`
//! (`"type.googleapis.com/openiap.SigninRequest"`). The reference peers decode
//! by command and mostly ignore the type URL (PROTOCOL.md, "Command and
//! payload type"), so this module decodes by command too and treats the type
//! URL as a check whose strictness is a [`Validation`] policy.
//!
//! # The table
//!
//! One `command_table!` invocation (in `command/table.rs`) lists every command seen on the wire once,
//! with its payload type. Everything else is generated from that list: the
//! [`CommandSpec`] rows behind [`lookup`] and [`commands`], the [`Payload`]
//! enum, the [`WireMessage`](crate::envelope::WireMessage) impl of every payload type
//! and the [`Request`](crate::envelope::Request)
//! impl that ties a request type to its response type.
//!
//! | rows                                            | [`CommandKind`] | reply command         |
//! | ----------------------------------------------- | --------------- | --------------------- |
//! | the 45 `FlowService` rpcs, `signin` ... `deletepackage` | `Request` | `<command>reply`  |
//! | `distinct`, `createworkflowinstance`, `getelement` | `Request`     | `<command>reply`      |
//! | `ping`                                          | `Request`       | `pong`                |
//! | every `<command>reply` above, and `pong`        | `Reply`         | none                  |
//! | `error`                                         | `Error`         | none                  |
//! | `beginstream`, `stream`, `endstream`            | `Stream`        | none                  |
//! | `watchevent`, `queueevent`, `refreshtoken`      | `Event`         | none                  |
//! | `noop`                                          | `Control`       | none                  |
//! | `customer`, `stripecustomer`                    | `Record`        | none                  |
//!
//! The payload type of a command is `<Rpc>Request`, of its reply
//! `<Rpc>Response` (commands.tsv), so the type name in [`CommandSpec`] is the
//! schema's name (`InvokeOpenRPARequest`), taken from [`prost::Name::NAME`].
//!
//! **One type, one command.** The table is a bijection between commands and
//! payload types. The macro implements `WireMessage` once per row and names
//! each [`Payload`] variant after its type, so a second row for the same type
//! does not compile. This is deliberate: [`pack`](crate::envelope::pack) picks
//! the command from the type alone. The wire has two places where the
//! reference peers blur that line, and both are handled on receipt:
//!
//! - the production server answers `getelement` with command `getelement`
//!   and an empty `Any`, which decodes (Lenient) as a default
//!   [`GetElementRequest`](crate::proto::GetElementRequest);
//! - the Rust client decodes a `beginstream` value as `Stream`; this crate
//!   always decodes `beginstream` as [`BeginStream`](crate::proto::BeginStream).
//!
//! # Type URL validation
//!
//! A type URL is compared by the text after its last `/`, which must read
//! `openiap.<Type>`. Any domain before it is accepted, as is no domain at all
//! (`openiap.Stream`). Rows are tried top to bottom:
//!
//! | what was received                                            | `Strict`            | `Lenient` (default)   | sent by |
//! | ------------------------------------------------------------ | ------------------- | --------------------- | ------- |
//! | a command that is not in the table                            | `UnknownCommand`    | `UnknownCommand`      | - |
//! | `.../openiap.<Type>` exactly                                  | decode              | decode                | everyone (canonical) |
//! | nothing, on `ping`, `pong`, `noop`, `endstream`, `getelement` | `MissingPayload`    | default message       | Node ping and endstream, REST noop; Rust pong and getelement |
//! | nothing, on any other command                                 | `MissingPayload`    | `MissingPayload`      | - |
//! | an `Any` with an empty type URL                               | `TypeUrlMismatch`   | decode by command     | Node upload and stream chunks; server getelement reply |
//! | `openiap.<Type>` in another ASCII case                        | `TypeUrlMismatch`   | decode                | Rust `openiap.InvokeOpenRpaRequest` |
//! | `openiap.<Type minus "Request">`, on a `Request` row          | `TypeUrlMismatch`   | decode                | Node's 13 names, e.g. `openiap.CustomCommand` |
//! | any other name: another schema type, an unknown name, another package, no name | `TypeUrlMismatch` | `TypeUrlMismatch` | - |
//! | a value that is not a valid `<Type>`                          | `Payload`           | `Payload`             | - |
//!
//! The unsuffixed rule is the general form of the 13 names Node sends: for
//! every request row the unsuffixed name is not a message of the schema (a
//! unit test checks this), so Lenient never accepts a type URL that names
//! another existing type.

use std::fmt;

use prost::Message;

use crate::proto::google::protobuf::Any;

mod table;

pub use self::table::Payload;

/// What role a command plays in the conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CommandKind {
    /// A request that expects one reply, named by [`CommandSpec::reply`]
    /// (or an `error`).
    Request,
    /// The answer to a request; its `rid` is the request's `id`.
    Reply,
    /// The `error` answer to a failed request; its `rid` is the request's `id`.
    Error,
    /// A message pushed by the server without a request (`watchevent`,
    /// `queueevent`, `refreshtoken`); its `rid` is empty.
    Event,
    /// A part of an upload or download file stream (`beginstream`, `stream`,
    /// `endstream`); its `rid` is the `upload` or `download` request's `id`.
    Stream,
    /// Connection control that is never answered (`noop`).
    Control,
    /// A record type with a command name that no reference peer sends
    /// (`customer`, `stripecustomer`).
    Record,
}

impl fmt::Display for CommandKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Request => "request",
            Self::Reply => "reply",
            Self::Error => "error",
            Self::Event => "event",
            Self::Stream => "stream",
            Self::Control => "control",
            Self::Record => "record",
        })
    }
}

/// One row of the command table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct CommandSpec {
    /// The command string, as in `Envelope.command` (`"signin"`).
    pub command: &'static str,
    /// The schema name of the payload type, without package
    /// (`"SigninRequest"`); the type URL ends in `openiap.<type_name>`.
    pub type_name: &'static str,
    /// The role of the command.
    pub kind: CommandKind,
    /// For a [`CommandKind::Request`], the command of its reply
    /// (`"signinreply"`, `"pong"` for `ping`).
    pub reply: Option<&'static str>,
    /// Whether [`Validation::Lenient`] accepts the command with no `data` at
    /// all and decodes it as the default message (see the module docs).
    pub data_optional: bool,
}

impl CommandSpec {
    /// The row of this command's reply, for a request.
    pub fn reply_spec(&self) -> Option<&'static Self> {
        self.reply.and_then(lookup)
    }
}

/// How closely a received type URL must match the command's payload type.
///
/// The rules of both policies are tabled in the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Validation {
    /// The type URL must name exactly the command's type, and data must be
    /// present.
    Strict,
    /// Also accept the forms the reference peers send: an empty type URL,
    /// a missing payload where peers omit it, another ASCII case, and the
    /// unsuffixed request names of Node.
    #[default]
    Lenient,
}

/// Why a command or its payload was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// The command is not in the table.
    #[error("unknown command {command:?}: not in the OpenIAP command table")]
    UnknownCommand {
        /// The command as received.
        command: String,
    },
    /// The envelope carries another command than the one asked for.
    #[error("expected command {expected:?}, found {actual:?}")]
    UnexpectedCommand {
        /// The command of the requested payload type.
        expected: &'static str,
        /// The command of the envelope.
        actual: String,
    },
    /// The type URL does not name the command's payload type.
    #[error("command {command:?} carries type_url {actual:?}, expected openiap.{expected}")]
    TypeUrlMismatch {
        /// The command of the envelope.
        command: &'static str,
        /// The payload type of that command.
        expected: &'static str,
        /// The type URL as received.
        actual: String,
    },
    /// The envelope has no `data`, and the policy requires it.
    #[error("command {command:?} has no data, expected openiap.{expected}")]
    MissingPayload {
        /// The command of the envelope.
        command: &'static str,
        /// The payload type of that command.
        expected: &'static str,
    },
    /// The payload bytes are not a valid message of the command's type.
    #[error("command {command:?}: data is not a valid openiap.{type_name}")]
    Payload {
        /// The command of the envelope.
        command: &'static str,
        /// The payload type that failed to decode.
        type_name: &'static str,
        /// What prost found wrong.
        source: prost::DecodeError,
    },
}

/// The parts of a type URL: `[prefix/]full_name`.
///
/// Parsing never fails: as in `prost-types`, only the text after the last `/`
/// names the type, and whatever comes before it is kept as the prefix.
///
/// ```
/// use openiap_wire::command::TypeUrl;
///
/// let url = TypeUrl::parse("type.googleapis.com/openiap.SigninRequest");
/// assert_eq!(url.prefix(), "type.googleapis.com");
/// assert_eq!(url.full_name(), "openiap.SigninRequest");
/// assert_eq!(url.openiap_name(), Some("SigninRequest"));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TypeUrl<'a> {
    prefix: &'a str,
    full_name: &'a str,
}

impl<'a> TypeUrl<'a> {
    /// The package every OpenIAP message lives in.
    pub const PACKAGE: &'static str = "openiap";

    /// Splits `type_url` at its last `/`.
    pub fn parse(type_url: &'a str) -> Self {
        match type_url.rsplit_once('/') {
            Some((prefix, full_name)) => Self { prefix, full_name },
            None => Self {
                prefix: "",
                full_name: type_url,
            },
        }
    }

    /// The text before the last `/` (empty when there is no `/`).
    pub fn prefix(&self) -> &'a str {
        self.prefix
    }

    /// The fully qualified message name: the text after the last `/`.
    pub fn full_name(&self) -> &'a str {
        self.full_name
    }

    /// The message name when the full name is `openiap.<Name>`, with a
    /// non-empty `Name` that holds no further `.`.
    pub fn openiap_name(&self) -> Option<&'a str> {
        let name = self
            .full_name
            .strip_prefix(Self::PACKAGE)?
            .strip_prefix('.')?;
        (!name.is_empty() && !name.contains('.')).then_some(name)
    }
}

/// The OpenIAP message name a type URL names, if any: `"SigninRequest"` for
/// `"type.googleapis.com/openiap.SigninRequest"` or `"openiap.SigninRequest"`,
/// `None` for `"type.googleapis.com/google.protobuf.Any"` or `""`.
pub fn type_name(type_url: &str) -> Option<&str> {
    TypeUrl::parse(type_url).openiap_name()
}

/// The table row of `command`, or `None` for a command not in the table.
///
/// ```
/// use openiap_wire::command::{lookup, CommandKind};
///
/// let spec = lookup("signin").unwrap();
/// assert_eq!(spec.type_name, "SigninRequest");
/// assert_eq!(spec.kind, CommandKind::Request);
/// assert_eq!(spec.reply, Some("signinreply"));
/// assert!(lookup("signin ").is_none());
/// ```
pub fn lookup(command: &str) -> Option<&'static CommandSpec> {
    table::lookup(command)
}

/// Every row of the command table, requests followed by their replies, then
/// the commands that are not request/reply pairs.
pub fn commands() -> &'static [CommandSpec] {
    table::COMMANDS
}

/// Checks `data` against the row `spec` under `validation` and decodes it.
///
/// The value is decoded from a clone of `Any.value` (a reference count, not a
/// copy), so `bytes` fields of the message share the frame's memory.
pub(crate) fn decode_as<M: Message + Default>(
    spec: &CommandSpec,
    data: Option<&Any>,
    validation: Validation,
) -> Result<M, CommandError> {
    let Some(any) = data else {
        return if spec.data_optional && validation == Validation::Lenient {
            Ok(M::default())
        } else {
            Err(CommandError::MissingPayload {
                command: spec.command,
                expected: spec.type_name,
            })
        };
    };
    check_type_url(spec, &any.type_url, validation)?;
    M::decode(any.value.clone()).map_err(|source| CommandError::Payload {
        command: spec.command,
        type_name: spec.type_name,
        source,
    })
}

/// Applies the type URL rows of the module-level table.
fn check_type_url(
    spec: &CommandSpec,
    type_url: &str,
    validation: Validation,
) -> Result<(), CommandError> {
    let lenient = validation == Validation::Lenient;
    let accepted = match type_name(type_url) {
        Some(name) if name == spec.type_name => true,
        Some(name) => lenient && lenient_name_matches(spec, name),
        None => lenient && type_url.is_empty(),
    };
    if accepted {
        Ok(())
    } else {
        Err(CommandError::TypeUrlMismatch {
            command: spec.command,
            expected: spec.type_name,
            actual: type_url.to_owned(),
        })
    }
}

/// The Lenient-only name forms: another ASCII case, or a request's name
/// without its `Request` suffix.
fn lenient_name_matches(spec: &CommandSpec, name: &str) -> bool {
    if name.eq_ignore_ascii_case(spec.type_name) {
        return true;
    }
    spec.kind == CommandKind::Request
        && spec
            .type_name
            .strip_suffix("Request")
            .is_some_and(|base| !base.is_empty() && name.eq_ignore_ascii_case(base))
}

/// Seals [`WireMessage`](crate::envelope::WireMessage): only the table's types implement it, so every
/// `WireMessage` has a row.
pub(crate) mod sealed {
    /// Gives each payload type its table row.
    pub trait Sealed {
        /// The row of this type.
        const SPEC: &'static super::CommandSpec;
    }
}

impl Payload {
    /// The command this payload travels under (`"signin"`).
    pub fn command(&self) -> &'static str {
        self.spec().command
    }

    /// The schema name of the payload type (`"SigninRequest"`).
    pub fn type_name(&self) -> &'static str {
        self.spec().type_name
    }

    /// The role of the payload's command.
    pub fn kind(&self) -> CommandKind {
        self.spec().kind
    }

    /// Packs the payload into an `Any`, consuming it.
    pub fn into_any(self) -> Any {
        self.to_any()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto;
    use bytes::Bytes;
    use proptest::prelude::*;

    /// The 13 commands Node sends with an unsuffixed type name, and that name
    /// (commands.tsv footer).
    const NODE_UNSUFFIXED: [(&str, &str); 13] = [
        ("customcommand", "openiap.CustomCommand"),
        ("createworkflowinstance", "openiap.CreateWorkflowInstance"),
        ("invokeopenrpa", "openiap.InvokeOpenRPA"),
        ("startagent", "openiap.StartAgent"),
        ("stopagent", "openiap.StopAgent"),
        ("getagentlog", "openiap.GetAgentLog"),
        ("getagentpods", "openiap.GetAgentPods"),
        ("deleteagentpod", "openiap.DeleteAgentPod"),
        ("deleteagent", "openiap.DeleteAgent"),
        ("getindexes", "openiap.GetIndexes"),
        ("createindex", "openiap.CreateIndex"),
        ("dropindex", "openiap.DropIndex"),
        ("deletepackage", "openiap.DeletePackage"),
    ];

    fn any_with(type_url: &str) -> Any {
        Any {
            type_url: type_url.to_owned(),
            value: Bytes::new(),
        }
    }

    fn canonical(command: &str) -> Any {
        let spec = lookup(command).expect("command in table");
        any_with(&format!("type.googleapis.com/openiap.{}", spec.type_name))
    }

    #[test]
    fn type_url_splits_at_last_slash() {
        let url = TypeUrl::parse("a/b/openiap.Stream");
        assert_eq!((url.prefix(), url.full_name()), ("a/b", "openiap.Stream"));
        let bare = TypeUrl::parse("openiap.Stream");
        assert_eq!((bare.prefix(), bare.full_name()), ("", "openiap.Stream"));
    }

    #[test]
    fn type_name_requires_openiap_package() {
        assert_eq!(
            type_name("type.googleapis.com/openiap.Stream"),
            Some("Stream")
        );
        assert_eq!(type_name("example.org/x/openiap.Stream"), Some("Stream"));
        assert_eq!(type_name("openiap.Stream"), Some("Stream"));
        for url in [
            "",
            "/",
            "openiap.",
            "openiap",
            "openiapX.Stream",
            "type.googleapis.com/google.protobuf.Any",
            "type.googleapis.com/openiap.nested.Stream",
            "openiap.Stream/",
        ] {
            assert_eq!(type_name(url), None, "{url:?}");
        }
    }

    #[test]
    fn strict_accepts_canonical_and_any_prefix() {
        for url in [
            "type.googleapis.com/openiap.SigninRequest",
            "example.org/types/openiap.SigninRequest",
            "openiap.SigninRequest",
        ] {
            let payload = Payload::decode("signin", Some(&any_with(url)), Validation::Strict);
            assert_eq!(
                payload,
                Ok(Payload::SigninRequest(Default::default())),
                "{url}"
            );
        }
    }

    #[test]
    fn empty_type_url_is_lenient_only() {
        let data = any_with("");
        assert_eq!(
            Payload::decode("upload", Some(&data), Validation::Lenient),
            Ok(Payload::UploadRequest(Default::default()))
        );
        assert_eq!(
            Payload::decode("upload", Some(&data), Validation::Strict),
            Err(CommandError::TypeUrlMismatch {
                command: "upload",
                expected: "UploadRequest",
                actual: String::new(),
            })
        );
    }

    #[test]
    fn server_getelement_reply_decodes_leniently() {
        let payload = Payload::decode("getelement", Some(&Any::default()), Validation::Lenient);
        assert_eq!(payload, Ok(Payload::GetElementRequest(Default::default())));
    }

    #[test]
    fn missing_data_is_lenient_only_where_peers_omit_it() {
        let expected = [
            ("ping", Payload::PingRequest(Default::default())),
            ("pong", Payload::PingResponse(Default::default())),
            ("noop", Payload::Noop(Default::default())),
            ("endstream", Payload::EndStream(Default::default())),
            ("getelement", Payload::GetElementRequest(Default::default())),
        ];
        for (command, payload) in expected {
            assert_eq!(
                Payload::decode(command, None, Validation::Lenient),
                Ok(payload)
            );
            let spec = lookup(command).expect(command);
            assert_eq!(
                Payload::decode(command, None, Validation::Strict),
                Err(CommandError::MissingPayload {
                    command: spec.command,
                    expected: spec.type_name,
                })
            );
        }
    }

    #[test]
    fn missing_data_elsewhere_is_rejected_in_both_modes() {
        for validation in [Validation::Strict, Validation::Lenient] {
            for command in [
                "signin",
                "stream",
                "beginstream",
                "getelementreply",
                "error",
            ] {
                let result = Payload::decode(command, None, validation);
                assert!(
                    matches!(result, Err(CommandError::MissingPayload { command: c, .. }) if c == command),
                    "{command} {validation:?}: {result:?}"
                );
            }
        }
    }

    #[test]
    fn node_unsuffixed_names_are_lenient_only() {
        for (command, name) in NODE_UNSUFFIXED {
            let data = any_with(&format!("type.googleapis.com/{name}"));
            let lenient = Payload::decode(command, Some(&data), Validation::Lenient);
            assert_eq!(lenient.map(|p| p.command()), Ok(command));
            let spec = lookup(command).expect(command);
            assert_eq!(
                Payload::decode(command, Some(&data), Validation::Strict),
                Err(CommandError::TypeUrlMismatch {
                    command: spec.command,
                    expected: spec.type_name,
                    actual: data.type_url.clone(),
                })
            );
        }
    }

    #[test]
    fn unsuffixed_names_apply_to_requests_only() {
        let data = any_with("type.googleapis.com/openiap.Signin");
        let result = Payload::decode("signinreply", Some(&data), Validation::Lenient);
        assert!(
            matches!(result, Err(CommandError::TypeUrlMismatch { .. })),
            "{result:?}"
        );
    }

    #[test]
    fn prost_spelling_is_lenient_only() {
        let data = any_with("type.googleapis.com/openiap.InvokeOpenRpaRequest");
        assert_eq!(
            Payload::decode("invokeopenrpa", Some(&data), Validation::Lenient),
            Ok(Payload::InvokeOpenRpaRequest(Default::default()))
        );
        assert_eq!(
            Payload::decode("invokeopenrpa", Some(&data), Validation::Strict),
            Err(CommandError::TypeUrlMismatch {
                command: "invokeopenrpa",
                expected: "InvokeOpenRPARequest",
                actual: data.type_url.clone(),
            })
        );
    }

    #[test]
    fn another_schema_type_is_rejected_in_both_modes() {
        let data = any_with("type.googleapis.com/openiap.QueryRequest");
        for validation in [Validation::Strict, Validation::Lenient] {
            assert_eq!(
                Payload::decode("signin", Some(&data), validation),
                Err(CommandError::TypeUrlMismatch {
                    command: "signin",
                    expected: "SigninRequest",
                    actual: data.type_url.clone(),
                })
            );
        }
    }

    #[test]
    fn unknown_names_are_rejected_in_both_modes() {
        for url in [
            "type.googleapis.com/openiap.Garbage",
            "type.googleapis.com/google.protobuf.Any",
            "type.googleapis.com/other.SigninRequest",
            "type.googleapis.com/",
            "SigninRequest",
        ] {
            for validation in [Validation::Strict, Validation::Lenient] {
                let result = Payload::decode("signin", Some(&any_with(url)), validation);
                assert!(
                    matches!(&result, Err(CommandError::TypeUrlMismatch { actual, .. }) if actual == url),
                    "{url} {validation:?}: {result:?}"
                );
            }
        }
    }

    #[test]
    fn unknown_command_is_rejected() {
        for validation in [Validation::Strict, Validation::Lenient] {
            assert_eq!(
                Payload::decode("send", Some(&canonical("signin")), validation),
                Err(CommandError::UnknownCommand {
                    command: "send".to_owned()
                })
            );
        }
    }

    #[test]
    fn invalid_value_is_a_payload_error() {
        let mut data = canonical("signin");
        // Field 1 (username) as a length-delimited string of 5 bytes, but 1 given.
        data.value = Bytes::from_static(&[0x0a, 0x05, b'a']);
        let result = Payload::decode("signin", Some(&data), Validation::Lenient);
        assert!(
            matches!(
                result,
                Err(CommandError::Payload {
                    command: "signin",
                    type_name: "SigninRequest",
                    ..
                })
            ),
            "{result:?}"
        );
    }

    #[test]
    fn error_messages_name_the_command_and_types() {
        let mismatch = Payload::decode(
            "signin",
            Some(&any_with("type.googleapis.com/openiap.QueryRequest")),
            Validation::Strict,
        )
        .expect_err("mismatch");
        assert_eq!(
            mismatch.to_string(),
            "command \"signin\" carries type_url \"type.googleapis.com/openiap.QueryRequest\", \
             expected openiap.SigninRequest"
        );
        let missing = Payload::decode("pong", None, Validation::Strict).expect_err("missing");
        assert_eq!(
            missing.to_string(),
            "command \"pong\" has no data, expected openiap.PingResponse"
        );
        let unknown = Payload::decode("send", None, Validation::Strict).expect_err("unknown");
        assert_eq!(
            unknown.to_string(),
            "unknown command \"send\": not in the OpenIAP command table"
        );
    }

    #[test]
    fn payload_error_keeps_the_decode_error_as_source() {
        let mut data = canonical("stream");
        data.value = Bytes::from_static(&[0xff]);
        let error = Payload::decode("stream", Some(&data), Validation::Strict).expect_err("bad");
        assert!(std::error::Error::source(&error).is_some());
    }

    #[test]
    fn payload_knows_its_row() {
        let payload = Payload::from(proto::WatchEvent::default());
        assert_eq!(payload.command(), "watchevent");
        assert_eq!(payload.type_name(), "WatchEvent");
        assert_eq!(payload.kind(), CommandKind::Event);
        assert_eq!(payload.spec(), lookup("watchevent").expect("row"));
    }

    #[test]
    fn payload_to_any_uses_the_canonical_type_url() {
        let any = Payload::from(proto::Stream {
            data: Bytes::from_static(b"chunk"),
        })
        .into_any();
        assert_eq!(any.type_url, "type.googleapis.com/openiap.Stream");
        assert_eq!(
            Payload::decode("stream", Some(&any), Validation::Strict),
            Ok(Payload::Stream(proto::Stream {
                data: Bytes::from_static(b"chunk")
            }))
        );
    }

    fn command_strategy() -> impl Strategy<Value = String> {
        prop_oneof![
            proptest::sample::select(commands()).prop_map(|s| s.command.to_owned()),
            any::<String>(),
        ]
    }

    fn type_url_strategy() -> impl Strategy<Value = String> {
        prop_oneof![
            proptest::sample::select(commands())
                .prop_map(|s| format!("type.googleapis.com/openiap.{}", s.type_name)),
            proptest::sample::select(NODE_UNSUFFIXED.to_vec()).prop_map(|(_, n)| n.to_owned()),
            Just(String::new()),
            any::<String>(),
        ]
    }

    proptest! {
        #[test]
        fn decode_never_panics(
            command in command_strategy(),
            type_url in type_url_strategy(),
            value in proptest::collection::vec(any::<u8>(), 0..256),
            present in any::<bool>(),
            strict in any::<bool>(),
        ) {
            let data = Any { type_url, value: Bytes::from(value) };
            let validation = if strict { Validation::Strict } else { Validation::Lenient };
            let result = Payload::decode(&command, present.then_some(&data), validation);
            if let Ok(payload) = result {
                prop_assert_eq!(payload.command(), command.as_str());
            }
        }

        #[test]
        fn lenient_accepts_whatever_strict_accepts(
            command in command_strategy(),
            type_url in type_url_strategy(),
            value in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let data = Any { type_url, value: Bytes::from(value) };
            if let Ok(strict) = Payload::decode(&command, Some(&data), Validation::Strict) {
                prop_assert_eq!(
                    Payload::decode(&command, Some(&data), Validation::Lenient),
                    Ok(strict)
                );
            }
        }
    }
}
