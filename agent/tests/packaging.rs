//! Every agent configuration shipped or shown under `packaging/` loads with the agent's
//! own loader (STYLE.md: "A test parses every example config in `packaging/`"): the
//! `/etc/driftwatch/agent.toml` of the packages (`packaging/files/agent.toml`), also
//! with every commented-out setting switched on, and the examples.
//!
//! A TOML file under `packaging/` whose name contains "collector" is a collector
//! configuration (`collector/tests/packaging.rs` loads those); every other one is an
//! agent configuration.
//!
//! The agent has no library target, so configurations go through the binary:
//! `driftwatch status --config FILE` loads the file with `AgentConfig::load` — the
//! loader `driftwatch run` uses, validation included — before it asks the daemon's
//! loopback endpoint for anything. Getting as far as asking (answered or not) means the
//! configuration loaded; a test of a broken file shows that the route does refuse.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_driftwatch");

fn packaging_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging")
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

fn agent_configs() -> Vec<PathBuf> {
    toml_files(&packaging_dir())
        .into_iter()
        .filter(|p| {
            !p.file_name()
                .unwrap()
                .to_string_lossy()
                .contains("collector")
        })
        .collect()
}

/// Loads `path` as the daemon would: `Ok` when the loader accepts it, else the error.
fn load(path: &Path) -> Result<(), String> {
    let output = Command::new(BIN)
        .args(["status", "--config"])
        .arg(path)
        .env_clear()
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    match output.status.code() {
        // The daemon answered: clean (0), or drifted or marked (1).
        Some(0 | 1) => Ok(()),
        // No daemon there: the configuration loaded, the endpoint did not answer.
        Some(2) if stderr.contains("cannot get the status from") => Ok(()),
        _ => Err(stderr),
    }
}

/// Switches on every commented-out setting: lines `#key = value` and `#[table]` (prose
/// comments start with `# `).
fn uncomment_settings(text: &str) -> String {
    text.lines()
        .map(|line| match line.strip_prefix('#') {
            Some(rest) if rest.starts_with(|c: char| c.is_ascii_lowercase() || c == '[') => rest,
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn every_agent_config_in_packaging_loads() {
    let configs = agent_configs();
    let names: Vec<String> = configs.iter().map(|p| p.display().to_string()).collect();
    assert!(
        names.iter().any(|n| n.ends_with("files/agent.toml"))
            && names.iter().any(|n| n.ends_with("examples/agent.toml")),
        "expected the packaged and the example agent.toml, found {names:?}"
    );
    for config in &configs {
        if let Err(error) = load(config) {
            panic!("{} does not load:\n{error}", config.display());
        }
    }
}

#[test]
fn packaged_agent_toml_loads_with_every_setting_switched_on() {
    let shipped = std::fs::read_to_string(packaging_dir().join("files/agent.toml")).unwrap();
    let all_on = uncomment_settings(&shipped);
    // The commented defaults cover every section, [collector] included.
    for table in [
        "[health]",
        "[schedule]",
        "[throttle]",
        "[watch]",
        "[replacement]",
        "[collector]",
    ] {
        assert!(
            all_on.lines().any(|l| l == table),
            "{table} is not among the settings:\n{all_on}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, &all_on).unwrap();
    if let Err(error) = load(&path) {
        panic!("packaging/files/agent.toml with every setting switched on does not load:\n{error}\n{all_on}");
    }
}

#[test]
fn the_loader_route_refuses_a_broken_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, "baselin = \"/usr/lib/driftwatch/baseline\"\n").unwrap();
    let error = load(&path).unwrap_err();
    assert!(error.contains("unknown field `baselin`"), "{error}");
    std::fs::write(
        &path,
        "[collector]\nurl = \"http://collector.example.org\"\n",
    )
    .unwrap();
    assert!(load(&path).is_err());
}
