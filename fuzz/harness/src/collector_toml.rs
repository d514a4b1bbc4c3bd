//! The collector's configuration (`collector.toml`), parsed, resolved and validated as
//! `driftwatch-collector` loads it.
//!
//! A configuration that validates must also be usable: its durations are added to
//! `Instant::now()` (alert grouping, the sweep, timeouts), the rate limiter turns
//! `burst / rate_per_sec` into a `Duration` when its table is full, and enrollment
//! issues certificates valid for `host_cert_days` (or `host_cert_validity_secs`) — each of which panics on values out
//! of range. The certificate is issued for real, by a CA made once.

use driftwatch_collector::config::CollectorConfig;
use driftwatch_collector::pki::CertificateAuthority;
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

fn ca() -> Option<&'static CertificateAuthority> {
    static CA: OnceLock<Option<CertificateAuthority>> = OnceLock::new();
    CA.get_or_init(|| CertificateAuthority::generate("fuzz CA", 30).ok())
        .as_ref()
}

/// Runs the `collector_toml` target on one input.
pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = CollectorConfig::parse(text, Path::new("/etc/driftwatch/collector.toml"))
    else {
        return;
    };
    let mut durations = vec![
        ("alerts.group_wait_secs", config.alerts.group_wait_secs),
        (
            "alerts.command_timeout_secs",
            config.alerts.command_timeout_secs,
        ),
        (
            "hosts.sweep_interval_secs",
            config.hosts.sweep_interval_secs,
        ),
    ];
    for webhook in &config.webhooks {
        durations.push(("webhook.timeout_secs", webhook.timeout_secs));
    }
    let now = Instant::now();
    for (key, secs) in durations {
        assert!(
            now.checked_add(Duration::from_secs(secs)).is_some(),
            "{key} = {secs} validates but cannot be scheduled"
        );
    }
    let refill = config.ingest.burst / config.ingest.rate_per_sec;
    assert!(
        Duration::try_from_secs_f64(refill).is_ok(),
        "ingest.burst / ingest.rate_per_sec = {refill} validates but is no duration"
    );
    if let Some(ca) = ca() {
        let _ = ca.host_certificate("host-1", config.tls.host_cert_validity());
    }
}
