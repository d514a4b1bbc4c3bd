//! Every collector configuration under `packaging/` loads with the collector's own
//! loader, `CollectorConfig::load` (STYLE.md: "A test parses every example config in
//! `packaging/`"), and keeps its database where the packaged unit lets the service
//! write.
//!
//! A TOML file under `packaging/` whose name contains "collector" is a collector
//! configuration; every other one is an agent configuration
//! (`agent/tests/packaging.rs` loads those).

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use driftwatch_collector::config::CollectorConfig;
use std::path::{Path, PathBuf};

fn repo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every `*.toml` under `dir`, sorted.
fn toml_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(toml_files(&path));
        } else if path.extension().is_some_and(|e| e == "toml") {
            found.push(path);
        }
    }
    found.sort();
    found
}

fn collector_configs() -> Vec<PathBuf> {
    toml_files(&repo_dir().join("packaging"))
        .into_iter()
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .contains("collector")
        })
        .collect()
}

/// The directory the packaged unit lets the service write (`StateDirectory=`).
fn unit_state_dir() -> PathBuf {
    let unit =
        std::fs::read_to_string(repo_dir().join("systemd/driftwatch-collector.service")).unwrap();
    let name = unit
        .lines()
        .find_map(|l| l.strip_prefix("StateDirectory="))
        .expect("the collector unit has a StateDirectory=");
    Path::new("/var/lib").join(name.trim())
}

#[test]
fn every_collector_config_in_packaging_loads() {
    let configs = collector_configs();
    assert!(
        configs
            .iter()
            .any(|p| p.ends_with("examples/collector.toml")),
        "expected packaging/examples/collector.toml, found {configs:?}"
    );
    let state_dir = unit_state_dir();
    for path in &configs {
        let config = CollectorConfig::load(path)
            .unwrap_or_else(|e| panic!("{} does not load: {e}", path.display()));
        // ProtectSystem=strict: the database must be in the state directory.
        assert!(
            config.database.starts_with(&state_dir),
            "{}: database {} is outside the unit's state directory {}",
            path.display(),
            config.database.display(),
            state_dir.display()
        );
    }
}
