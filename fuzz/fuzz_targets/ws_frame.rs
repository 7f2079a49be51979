//! Fuzz target: see `openiap_wire::fuzzing::ws_frame` (the body lives in the
//! library so `cargo test` runs it on stable too).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| openiap_wire::fuzzing::ws_frame(data));
