//! Replays the committed fuzz inputs through the fuzz target bodies on stable.
//!
//! `fuzz/regressions/<target>/` holds, for every target in `fuzz/`, the corpus
//! minimised with `cargo fuzz cmin` after the long runs recorded in
//! `FUZZING.md`, plus every crasher found (named `crash-*`), minimised with
//! `cargo fuzz tmin`. Each file must run through its target without a panic;
//! the target bodies assert their own invariants.

use std::fs;
use std::path::{Path, PathBuf};

type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 6] = [
    ("frame_decoder", openiap_wire::fuzzing::frame_decoder),
    ("envelope", openiap_wire::fuzzing::envelope),
    ("reorder", openiap_wire::fuzzing::reorder),
    ("stream", openiap_wire::fuzzing::stream),
    (
        "server_connection",
        openiap_wire::fuzzing::server_connection,
    ),
    ("ws_frame", openiap_wire::fuzzing::ws_frame),
];

fn inputs(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/regressions")
        .join(target);
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_target_has_committed_inputs() {
    let fuzz_targets = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/fuzz_targets");
    let mut on_disk: Vec<String> = fs::read_dir(&fuzz_targets)
        .expect("fuzz/fuzz_targets")
        .map(|entry| {
            let path = entry.expect("directory entry").path();
            path.file_stem().unwrap().to_string_lossy().into_owned()
        })
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = TARGETS.iter().map(|(name, _)| name.to_string()).collect();
    listed.sort();
    assert_eq!(on_disk, listed, "every fuzz target is replayed here");
    for (name, _) in TARGETS {
        assert!(!inputs(name).is_empty(), "no committed inputs for {name}");
    }
}

#[test]
fn committed_inputs_run_clean() {
    for (name, target) in TARGETS {
        let files = inputs(name);
        for path in &files {
            let data = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let outcome = std::panic::catch_unwind(|| target(&data));
            assert!(outcome.is_ok(), "{name}: {} panicked", path.display());
        }
        println!("{name}: {} inputs", files.len());
    }
}
