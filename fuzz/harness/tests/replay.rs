//! Replays every committed fuzz corpus file (seeds and the inputs of past findings)
//! through its target on the stable toolchain: none may panic.

use driftwatch_fuzz_harness::TARGETS;
use std::fs;
use std::panic;
use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = fuzz_dir().join("corpus").join(target);
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            entry
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .path()
        })
        .collect();
    files.sort();
    files
}

#[test]
fn every_corpus_input_is_handled_without_a_panic() {
    let mut failures = Vec::new();
    let mut replayed = 0;
    for (name, run) in TARGETS {
        let files = corpus(name);
        assert!(!files.is_empty(), "target {name} has no committed seeds");
        for file in files {
            let data = fs::read(&file).unwrap();
            if panic::catch_unwind(|| run(&data)).is_err() {
                failures.push(file.display().to_string());
            }
            replayed += 1;
        }
    }
    assert!(failures.is_empty(), "inputs that panic: {failures:#?}");
    println!("{replayed} corpus inputs replayed");
}

#[test]
fn every_fuzz_target_is_replayed() {
    let mut binaries: Vec<String> = fs::read_dir(fuzz_dir().join("fuzz_targets"))
        .unwrap()
        .map(|entry| {
            let path = entry.unwrap().path();
            path.file_stem().unwrap().to_string_lossy().into_owned()
        })
        .collect();
    binaries.sort();
    let names: Vec<&str> = TARGETS.iter().map(|(name, _)| *name).collect();
    assert_eq!(binaries, names, "fuzz_targets/ and TARGETS disagree");
}
