//! The compiled schema must match `shared/protocol/messages.tsv` exactly:
//! every message, and every field's name, number, type and label. The
//! descriptor set comes from `build.rs` (protox), so this checks what the
//! generated code was built from, and drift in `proto/` fails here.

use std::collections::BTreeMap;

use openiap_wire::proto::FILE_DESCRIPTOR_SET;
use prost::Message as _;
use prost_types::{
    FileDescriptorSet,
    field_descriptor_proto::{Label, Type},
};

const MESSAGES_TSV: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shared/protocol/messages.tsv"
));

/// One field as `messages.tsv` writes it: (name, number, type, label).
type Field = (String, i32, String, String);

/// `package.Message` -> (file, fields). A fieldless message has no fields.
type Schema = BTreeMap<String, (String, Vec<Field>)>;

fn expected_schema() -> Schema {
    let mut schema = Schema::new();
    let mut lines = MESSAGES_TSV.lines();
    assert_eq!(
        lines.next(),
        Some("file\tpackage\tmessage\tfield\tnumber\ttype\tlabel"),
        "messages.tsv header changed"
    );
    for line in lines.filter(|l| !l.trim().is_empty()) {
        let cols: Vec<&str> = line.split('\t').collect();
        let [file, package, message, field, number, ty, label] = cols[..] else {
            panic!("malformed messages.tsv row: {line:?}");
        };
        let entry = schema
            .entry(format!("{package}.{message}"))
            .or_insert_with(|| (file.to_owned(), Vec::new()));
        assert_eq!(entry.0, file, "{package}.{message} split over two files");
        if field == "-" {
            assert_eq!(
                (number, ty, label),
                ("0", "-", "-"),
                "bad empty row {line:?}"
            );
            continue;
        }
        let number = number.parse().expect("field number");
        entry
            .1
            .push((field.to_owned(), number, ty.to_owned(), label.to_owned()));
    }
    schema
}

/// The type as written in a `.proto` file, resolved relative to `package`.
fn written_type(ty: Type, type_name: &str, package: &str) -> String {
    match ty {
        Type::Message | Type::Enum => {
            let full = type_name.trim_start_matches('.');
            full.strip_prefix(&format!("{package}."))
                .unwrap_or(full)
                .to_owned()
        }
        Type::Double => "double".into(),
        Type::Float => "float".into(),
        Type::Int64 => "int64".into(),
        Type::Uint64 => "uint64".into(),
        Type::Int32 => "int32".into(),
        Type::Fixed64 => "fixed64".into(),
        Type::Fixed32 => "fixed32".into(),
        Type::Bool => "bool".into(),
        Type::String => "string".into(),
        Type::Bytes => "bytes".into(),
        Type::Uint32 => "uint32".into(),
        Type::Sfixed32 => "sfixed32".into(),
        Type::Sfixed64 => "sfixed64".into(),
        Type::Sint32 => "sint32".into(),
        Type::Sint64 => "sint64".into(),
        Type::Group => panic!("groups are not used by the OpenIAP schema"),
    }
}

fn compiled_schema() -> Schema {
    let fds = FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).expect("descriptor set decodes");
    let mut schema = Schema::new();
    for file in &fds.file {
        let package = file.package();
        // Our files live in proto/ and are named bare; the well-known types
        // keep their google/protobuf/ path, as messages.tsv writes them.
        let file_name = file.name().to_owned();
        for message in &file.message_type {
            assert!(
                message.nested_type.is_empty() && message.enum_type.is_empty(),
                "{}: the schema has no nested types",
                message.name()
            );
            let fields = message
                .field
                .iter()
                .map(|f| {
                    assert!(f.oneof_index.is_none(), "{}: no oneofs", f.name());
                    let label = match f.label() {
                        Label::Repeated => "repeated",
                        Label::Optional => "singular",
                        Label::Required => panic!("proto3 has no required fields"),
                    };
                    (
                        f.name().to_owned(),
                        f.number(),
                        written_type(f.r#type(), f.type_name(), package),
                        label.to_owned(),
                    )
                })
                .collect();
            let key = format!("{package}.{}", message.name());
            let previous = schema.insert(key.clone(), (file_name.clone(), fields));
            assert!(previous.is_none(), "{key} defined twice");
        }
    }
    schema
}

#[test]
fn messages_tsv_has_129_openiap_messages() {
    let expected = expected_schema();
    let openiap = expected
        .keys()
        .filter(|k| k.starts_with("openiap."))
        .count();
    assert_eq!(openiap, 129);
    assert_eq!(expected.len(), 131, "129 openiap + Any + Timestamp");
}

#[test]
fn compiled_schema_matches_messages_tsv() {
    let expected = expected_schema();
    let compiled = compiled_schema();

    let missing: Vec<_> = expected
        .keys()
        .filter(|k| !compiled.contains_key(*k))
        .collect();
    let extra: Vec<_> = compiled
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .collect();
    assert!(
        missing.is_empty(),
        "messages missing from proto/: {missing:?}"
    );
    assert!(extra.is_empty(), "messages not in messages.tsv: {extra:?}");

    let mut compared_fields = 0;
    for (name, (file, fields)) in &expected {
        let (compiled_file, compiled_fields) = &compiled[name];
        assert_eq!(compiled_file, file, "{name} is in the wrong file");
        assert_eq!(compiled_fields, fields, "{name}: fields differ");
        compared_fields += fields.len();
    }
    // 447 rows, 16 of which stand for fieldless messages.
    assert_eq!(compared_fields, 447 - 16);
}

#[test]
fn workspaceid_fields_are_present() {
    let compiled = compiled_schema();
    let has = |message: &str, field: &str, number: i32| {
        compiled[message]
            .1
            .iter()
            .any(|f| f.0 == field && f.1 == number)
    };
    assert!(has("openiap.Workitem", "_workspaceid", 20));
    assert!(has("openiap.WorkItemQueue", "_workspaceid", 24));
}

#[test]
fn flow_service_declares_every_rpc_of_commands_tsv() {
    let tsv = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/protocol/commands.tsv"
    ));
    let expected: Vec<(String, String, String)> = tsv
        .lines()
        .skip(1)
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let c: Vec<&str> = l.split('\t').collect();
            (c[0].to_owned(), c[2].to_owned(), c[3].to_owned())
        })
        .collect();
    assert_eq!(expected.len(), 46, "45 commands + SetupStream");

    let fds = FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).expect("descriptor set decodes");
    let service = fds
        .file
        .iter()
        .flat_map(|f| &f.service)
        .find(|s| s.name() == "FlowService")
        .expect("FlowService is declared");
    let compiled: Vec<(String, String, String)> = service
        .method
        .iter()
        .map(|m| {
            let ty = |name: &str, streaming: bool| {
                let short = name.trim_start_matches(".openiap.").to_owned();
                if streaming {
                    format!("stream {short}")
                } else {
                    short
                }
            };
            (
                m.name().to_owned(),
                ty(m.input_type(), m.client_streaming()),
                ty(m.output_type(), m.server_streaming()),
            )
        })
        .collect();
    assert_eq!(compiled, expected);
}
