//! The command table itself: one `command_table!` invocation, one row per
//! command, from which [`CommandSpec`] rows, [`Payload`], [`lookup`](super::lookup)
//! and the [`WireMessage`]/[`Request`] impls are generated (see the parent
//! module for the rules).

use super::{CommandError, CommandKind, CommandSpec, Validation, decode_as, sealed};
use crate::envelope::{Request, WireMessage, pack, pack_any};
use crate::proto::{self, Envelope, google::protobuf::Any};

/// `true` for rows that [`Validation::Lenient`] accepts without data.
macro_rules! data_optional {
    () => {
        false
    };
    (no_data) => {
        true
    };
}

/// Generates the table, [`Payload`] and the trait impls from one list.
///
/// `request` rows are `"cmd" => Type, "reply" => Response;` pairs; `other`
/// rows are `"cmd" => Type: Kind;`. A trailing `[no_data]` marks a command
/// Lenient accepts without data.
macro_rules! command_table {
    (
        request {
            $( $req_cmd:literal => $req:ident $([$req_flag:ident])?,
               $rep_cmd:literal => $rep:ident $([$rep_flag:ident])?; )*
        }
        other {
            $( $cmd:literal => $ty:ident: $kind:ident $([$flag:ident])?; )*
        }
    ) => {
        command_table!(@rows
            $( [$req_cmd, $req, Request, Some($rep_cmd), data_optional!($($req_flag)?)]
               [$rep_cmd, $rep, Reply, None, data_optional!($($rep_flag)?)] )*
            $( [$cmd, $ty, $kind, None, data_optional!($($flag)?)] )*
        );

        $( impl Request for proto::$req {
            type Response = proto::$rep;
        } )*
    };

    (@rows $( [$cmd:literal, $ty:ident, $kind:ident, $reply:expr, $optional:expr] )*) => {
        /// One constant per row, named after the payload type.
        #[allow(non_upper_case_globals)]
        mod spec {
            use super::{CommandKind, CommandSpec};
            use crate::proto;
            use prost::Name;

            $( pub(super) const $ty: CommandSpec = CommandSpec {
                command: $cmd,
                type_name: <proto::$ty as Name>::NAME,
                kind: CommandKind::$kind,
                reply: $reply,
                data_optional: $optional,
            }; )*
        }

        pub(super) static COMMANDS: &[CommandSpec] = &[ $( spec::$ty ),* ];

        pub(super) fn lookup(command: &str) -> Option<&'static CommandSpec> {
            match command {
                $( $cmd => Some(&spec::$ty), )*
                _ => None,
            }
        }

        $(
            impl sealed::Sealed for proto::$ty {
                const SPEC: &'static CommandSpec = &spec::$ty;
            }

            impl WireMessage for proto::$ty {
                const COMMAND: &'static str = $cmd;
            }

            impl From<proto::$ty> for Payload {
                fn from(message: proto::$ty) -> Self {
                    Self::$ty(message)
                }
            }
        )*

        /// Any payload of the table, decoded by command: for servers and
        /// tools that dispatch on every message.
        ///
        /// One variant per table row, named after the payload type. Built with
        /// [`Payload::decode`] or [`payload`](crate::envelope::payload), or
        /// from a message with `From`.
        #[derive(Debug, Clone, PartialEq)]
        #[non_exhaustive]
        pub enum Payload {
            $(
                #[doc = concat!("Command `", $cmd, "`: [`proto::", stringify!($ty), "`].")]
                $ty(proto::$ty),
            )*
        }

        impl Payload {
            /// Decodes `data` as the payload of `command` under `validation`.
            ///
            /// The [`command`](crate::command) module docs table every accepted
            /// and rejected form.
            ///
            /// # Errors
            ///
            /// [`CommandError::UnknownCommand`] for a command not in the
            /// table; otherwise [`CommandError::MissingPayload`],
            /// [`CommandError::TypeUrlMismatch`] or [`CommandError::Payload`]
            /// as the table says.
            pub fn decode(
                command: &str,
                data: Option<&Any>,
                validation: Validation,
            ) -> Result<Self, CommandError> {
                match command {
                    $( $cmd => decode_as(&spec::$ty, data, validation).map(Self::$ty), )*
                    _ => Err(CommandError::UnknownCommand {
                        command: command.to_owned(),
                    }),
                }
            }

            /// The table row of this payload.
            pub fn spec(&self) -> &'static CommandSpec {
                match self {
                    $( Self::$ty(_) => &spec::$ty, )*
                }
            }

            /// Packs the payload into an `Any` with its canonical type URL.
            pub fn to_any(&self) -> Any {
                match self {
                    $( Self::$ty(message) => pack_any(message), )*
                }
            }

            /// Packs the payload into an Envelope with its command and data
            /// set and every other field default, as [`pack`] does.
            pub fn to_envelope(&self) -> Envelope {
                match self {
                    $( Self::$ty(message) => pack(message), )*
                }
            }

            /// Default messages of every row, packed (test helper).
            #[cfg(test)]
            pub(crate) fn pack_defaults() -> Vec<Envelope> {
                vec![ $( pack(&proto::$ty::default()) ),* ]
            }
        }
    };
}

command_table! {
    request {
        "signin" => SigninRequest, "signinreply" => SigninResponse;
        "download" => DownloadRequest, "downloadreply" => DownloadResponse;
        "upload" => UploadRequest, "uploadreply" => UploadResponse;
        "customcommand" => CustomCommandRequest, "customcommandreply" => CustomCommandResponse;
        "listcollections" => ListCollectionsRequest, "listcollectionsreply" => ListCollectionsResponse;
        "dropcollection" => DropCollectionRequest, "dropcollectionreply" => DropCollectionResponse;
        "createcollection" => CreateCollectionRequest, "createcollectionreply" => CreateCollectionResponse;
        "query" => QueryRequest, "queryreply" => QueryResponse;
        "getdocumentversion" => GetDocumentVersionRequest, "getdocumentversionreply" => GetDocumentVersionResponse;
        "aggregate" => AggregateRequest, "aggregatereply" => AggregateResponse;
        "count" => CountRequest, "countreply" => CountResponse;
        "insertone" => InsertOneRequest, "insertonereply" => InsertOneResponse;
        "insertmany" => InsertManyRequest, "insertmanyreply" => InsertManyResponse;
        "updateone" => UpdateOneRequest, "updateonereply" => UpdateOneResponse;
        "updatedocument" => UpdateDocumentRequest, "updatedocumentreply" => UpdateDocumentResponse;
        "insertorupdateone" => InsertOrUpdateOneRequest, "insertorupdateonereply" => InsertOrUpdateOneResponse;
        "insertorupdatemany" => InsertOrUpdateManyRequest, "insertorupdatemanyreply" => InsertOrUpdateManyResponse;
        "deleteone" => DeleteOneRequest, "deleteonereply" => DeleteOneResponse;
        "deletemany" => DeleteManyRequest, "deletemanyreply" => DeleteManyResponse;
        "registerqueue" => RegisterQueueRequest, "registerqueuereply" => RegisterQueueResponse;
        "registerexchange" => RegisterExchangeRequest, "registerexchangereply" => RegisterExchangeResponse;
        "queuemessage" => QueueMessageRequest, "queuemessagereply" => QueueMessageResponse;
        "unregisterqueue" => UnRegisterQueueRequest, "unregisterqueuereply" => UnRegisterQueueResponse;
        "watch" => WatchRequest, "watchreply" => WatchResponse;
        "unwatch" => UnWatchRequest, "unwatchreply" => UnWatchResponse;
        "pushworkitem" => PushWorkitemRequest, "pushworkitemreply" => PushWorkitemResponse;
        "pushworkitems" => PushWorkitemsRequest, "pushworkitemsreply" => PushWorkitemsResponse;
        "updateworkitem" => UpdateWorkitemRequest, "updateworkitemreply" => UpdateWorkitemResponse;
        "popworkitem" => PopWorkitemRequest, "popworkitemreply" => PopWorkitemResponse;
        "deleteworkitem" => DeleteWorkitemRequest, "deleteworkitemreply" => DeleteWorkitemResponse;
        "addworkitemqueue" => AddWorkItemQueueRequest, "addworkitemqueuereply" => AddWorkItemQueueResponse;
        "updateworkitemqueue" => UpdateWorkItemQueueRequest, "updateworkitemqueuereply" => UpdateWorkItemQueueResponse;
        "deleteworkitemqueue" => DeleteWorkItemQueueRequest, "deleteworkitemqueuereply" => DeleteWorkItemQueueResponse;
        "ensurecustomer" => EnsureCustomerRequest, "ensurecustomerreply" => EnsureCustomerResponse;
        "invokeopenrpa" => InvokeOpenRpaRequest, "invokeopenrpareply" => InvokeOpenRpaResponse;
        "startagent" => StartAgentRequest, "startagentreply" => StartAgentResponse;
        "stopagent" => StopAgentRequest, "stopagentreply" => StopAgentResponse;
        "getagentlog" => GetAgentLogRequest, "getagentlogreply" => GetAgentLogResponse;
        "getagentpods" => GetAgentPodsRequest, "getagentpodsreply" => GetAgentPodsResponse;
        "deleteagentpod" => DeleteAgentPodRequest, "deleteagentpodreply" => DeleteAgentPodResponse;
        "deleteagent" => DeleteAgentRequest, "deleteagentreply" => DeleteAgentResponse;
        "createindex" => CreateIndexRequest, "createindexreply" => CreateIndexResponse;
        "getindexes" => GetIndexesRequest, "getindexesreply" => GetIndexesResponse;
        "dropindex" => DropIndexRequest, "dropindexreply" => DropIndexResponse;
        "deletepackage" => DeletePackageRequest, "deletepackagereply" => DeletePackageResponse;
        // Request/reply pairs that are not FlowService rpcs.
        "distinct" => DistinctRequest, "distinctreply" => DistinctResponse;
        "createworkflowinstance" => CreateWorkflowInstanceRequest,
            "createworkflowinstancereply" => CreateWorkflowInstanceResponse;
        "getelement" => GetElementRequest [no_data], "getelementreply" => GetElementResponse;
        "ping" => PingRequest [no_data], "pong" => PingResponse [no_data];
    }
    other {
        "error" => ErrorResponse: Error;
        "beginstream" => BeginStream: Stream;
        "stream" => Stream: Stream;
        "endstream" => EndStream: Stream [no_data];
        "watchevent" => WatchEvent: Event;
        "queueevent" => QueueEvent: Event;
        "refreshtoken" => RefreshToken: Event;
        "noop" => Noop: Control [no_data];
        "customer" => Customer: Record;
        "stripecustomer" => StripeCustomer: Record;
    }
}

#[cfg(test)]
mod tests {
    use super::super::{commands, lookup};
    use super::*;
    use prost::Message;
    use prost_types::FileDescriptorSet;

    fn schema() -> FileDescriptorSet {
        FileDescriptorSet::decode(proto::FILE_DESCRIPTOR_SET).expect("compiled descriptor set")
    }

    fn schema_message_names() -> Vec<String> {
        schema()
            .file
            .iter()
            .filter(|file| file.package() == "openiap")
            .flat_map(|file| file.message_type.iter().map(|m| m.name().to_owned()))
            .collect()
    }

    #[test]
    fn table_has_one_row_per_wire_command() {
        // 45 rpcs and their replies, 4 more request/reply pairs, 10 others.
        assert_eq!(commands().len(), 45 * 2 + 4 * 2 + 10);
    }

    #[test]
    fn commands_and_types_are_unique() {
        let mut names: Vec<_> = commands().iter().map(|s| s.command).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), commands().len());
        let mut types: Vec<_> = commands().iter().map(|s| s.type_name).collect();
        types.sort_unstable();
        types.dedup();
        assert_eq!(types.len(), commands().len());
    }

    #[test]
    fn lookup_returns_each_row() {
        for spec in commands() {
            assert_eq!(lookup(spec.command), Some(spec), "{}", spec.command);
        }
    }

    #[test]
    fn lookup_rejects_unknown_and_near_misses() {
        for command in [
            "",
            "Signin",
            "signin ",
            "signinReply",
            "grpcservice",
            "send",
        ] {
            assert_eq!(lookup(command), None, "{command:?}");
        }
    }

    #[test]
    fn request_rows_name_a_reply_row() {
        for spec in commands() {
            match spec.kind {
                CommandKind::Request => {
                    let reply = spec.reply_spec().expect("reply row");
                    assert_eq!(reply.kind, CommandKind::Reply, "{}", spec.command);
                }
                _ => assert_eq!(spec.reply, None, "{}", spec.command),
            }
        }
        assert_eq!(
            lookup("ping").and_then(CommandSpec::reply_spec),
            lookup("pong")
        );
    }

    #[test]
    fn wire_only_rows_have_their_kind_and_type() {
        let expected = [
            ("ping", "PingRequest", CommandKind::Request),
            ("pong", "PingResponse", CommandKind::Reply),
            ("noop", "Noop", CommandKind::Control),
            ("error", "ErrorResponse", CommandKind::Error),
            ("beginstream", "BeginStream", CommandKind::Stream),
            ("stream", "Stream", CommandKind::Stream),
            ("endstream", "EndStream", CommandKind::Stream),
            ("getelement", "GetElementRequest", CommandKind::Request),
            ("getelementreply", "GetElementResponse", CommandKind::Reply),
            ("watchevent", "WatchEvent", CommandKind::Event),
            ("queueevent", "QueueEvent", CommandKind::Event),
            ("refreshtoken", "RefreshToken", CommandKind::Event),
            ("distinct", "DistinctRequest", CommandKind::Request),
            ("distinctreply", "DistinctResponse", CommandKind::Reply),
            (
                "createworkflowinstance",
                "CreateWorkflowInstanceRequest",
                CommandKind::Request,
            ),
            (
                "createworkflowinstancereply",
                "CreateWorkflowInstanceResponse",
                CommandKind::Reply,
            ),
            ("customer", "Customer", CommandKind::Record),
            ("stripecustomer", "StripeCustomer", CommandKind::Record),
        ];
        for (command, type_name, kind) in expected {
            let spec = lookup(command).expect(command);
            assert_eq!((spec.type_name, spec.kind), (type_name, kind), "{command}");
        }
    }

    #[test]
    fn every_flowservice_rpc_is_in_the_table() {
        let schema = schema();
        let service = schema
            .file
            .iter()
            .flat_map(|file| &file.service)
            .find(|service| service.name() == "FlowService")
            .expect("FlowService in schema");
        let mut checked = 0;
        for method in &service.method {
            if method.name() == "SetupStream" {
                continue;
            }
            let command = method.name().to_ascii_lowercase();
            let reply_command = format!("{command}reply");
            let (Some(request), Some(reply)) = (lookup(&command), lookup(&reply_command)) else {
                panic!("rpc {} is missing from the table", method.name());
            };
            assert_eq!(
                Some(request.type_name),
                method.input_type().strip_prefix(".openiap."),
                "{command}"
            );
            assert_eq!(
                Some(reply.type_name),
                method.output_type().strip_prefix(".openiap."),
                "{command}reply"
            );
            assert_eq!(request.reply, Some(reply.command));
            checked += 1;
        }
        assert_eq!(checked, 45);
    }

    #[test]
    fn every_table_type_is_a_schema_message() {
        let names = schema_message_names();
        for spec in commands() {
            assert!(
                names.iter().any(|n| n == spec.type_name),
                "{}",
                spec.type_name
            );
        }
    }

    #[test]
    fn unsuffixed_request_names_are_not_schema_messages() {
        let names = schema_message_names();
        for spec in commands().iter().filter(|s| s.kind == CommandKind::Request) {
            let base = spec
                .type_name
                .strip_suffix("Request")
                .expect("Request suffix");
            assert!(
                !names.iter().any(|n| n.eq_ignore_ascii_case(base)),
                "{base} is a schema message"
            );
        }
    }

    #[test]
    fn schema_message_names_differ_beyond_ascii_case() {
        let mut names: Vec<_> = schema_message_names()
            .iter()
            .map(|n| n.to_ascii_lowercase())
            .collect();
        let total = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), total);
    }
}
