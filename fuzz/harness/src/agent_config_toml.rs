//! The agent's configuration (`/etc/driftwatch/agent.toml`), parsed and validated as
//! the daemon loads it.
//!
//! A configuration that validates must also be usable: the daemon schedules its checks
//! at `now + interval × (1 + jitter)` (jitter ≤ 1), its heartbeats every interval, and
//! its one-shot reports within three timeouts — each an `Instant` addition, which
//! panics on overflow. So every interval must fit twice (three times for the timeout)
//! on top of now.

use driftwatch_agent::config::AgentConfig;
use std::path::Path;
use std::time::{Duration, Instant};

/// Runs the `agent_config_toml` target on one input.
pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = AgentConfig::parse(text, Path::new("agent.toml")) else {
        return;
    };
    let schedule = &config.schedule;
    let mut intervals = vec![
        (
            "fast_verify_interval_secs",
            schedule.fast_verify_interval_secs,
            2,
        ),
        (
            "full_verify_interval_secs",
            schedule.full_verify_interval_secs,
            2,
        ),
    ];
    if let Some(collector) = &config.collector {
        intervals.push((
            "heartbeat_interval_secs",
            collector.heartbeat_interval_secs,
            2,
        ));
        intervals.push(("retry_max_secs", collector.retry_max_secs, 2));
        intervals.push(("timeout_secs", collector.timeout_secs, 3));
    }
    let now = Instant::now();
    for (key, secs, times) in intervals {
        let fits = Duration::from_secs(secs)
            .checked_mul(times)
            .and_then(|span| now.checked_add(span));
        assert!(
            fits.is_some(),
            "{key} = {secs} validates but cannot be scheduled"
        );
    }
}
