//! Compiles `proto/*.proto` with the pure-Rust `protox` compiler (no system
//! `protoc`) and generates prost types with `bytes::Bytes` for every `bytes`
//! field, our own `google.protobuf.Any` (so `Any.value` is `Bytes` too), and
//! `prost::Name` impls so type URLs are never typed by hand. (gRPC needs no
//! generated service: `src/transport/grpc.rs` frames the one rpc itself.)

use std::{env, fs, path::PathBuf};

const PROTO_FILES: &[&str] = &[
    "proto/base.proto",
    "proto/ace.proto",
    "proto/agent.proto",
    "proto/querys.proto",
    "proto/queues.proto",
    "proto/stripe.proto",
    "proto/watch.proto",
    "proto/workitems.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(PROTO_FILES, ["proto"])?;

    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or("OUT_DIR not set")?);
    // The encoded descriptor set lets tests compare the compiled schema with
    // shared/protocol/messages.tsv without a protoc at test time.
    fs::write(
        out_dir.join("openiap_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;

    prost_build::Config::new()
        .bytes(["."])
        .compile_well_known_types()
        .enable_type_names()
        .type_name_domain(["."], "type.googleapis.com")
        .compile_fds(fds)?;

    Ok(())
}
