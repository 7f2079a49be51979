//! Fuzz target: see `openiap_wire::fuzzing::server_connection` (the body
//! lives in the library so `cargo test` runs it on stable too).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| openiap_wire::fuzzing::server_connection(data));
