//! The collector's configuration (`collector.toml`), parsed, resolved and validated as
//! `driftwatch-collector` loads it.

use driftwatch_collector::config::CollectorConfig;
use std::path::Path;

/// Runs the `collector_toml` target on one input.
pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = CollectorConfig::parse(text, Path::new("/etc/driftwatch/collector.toml"));
}
