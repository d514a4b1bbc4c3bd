//! Version skew between a real daemon and a real collector: a batch with one event the
//! collector cannot read is acknowledged for the others, and the agent drops only that
//! one, logs it and counts it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use driftwatch_tests::{http_get, wait_until, Collector, Credentials, Host, Image};
use serde_json::{json, Value};
use std::time::Duration;

/// A spool as a newer agent left it (a downgrade): nine low findings of an old run and,
/// fifth, one event of a kind neither this agent nor the collector knows.
fn write_spool(host: &Host) -> Vec<String> {
    let dir = host.state_dir().join("spool");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("acked.json"),
        json!({"spool_id": "older", "acked_seq": 0}).to_string(),
    )
    .unwrap();
    let mut lines = String::new();
    let mut good = Vec::new();
    for seq in 1..=10u64 {
        let id = format!("older:{seq}");
        let body = if seq == 5 {
            json!({"type": "quantum_drift", "qubits": 3})
        } else {
            good.push(id.clone());
            json!({"type": "finding", "finding": {"kind": "kernel_module",
                   "reason": "not_in_image", "name": format!("mod-{seq}"), "taint": null,
                   "severity": "low"}})
        };
        let event = json!({"id": id, "at": "2026-01-01T00:00:00Z", "body": body});
        lines.push_str(&json!({"seq": seq, "event": event}).to_string());
        lines.push('\n');
    }
    std::fs::write(dir.join("segment-1.jsonl"), lines).unwrap();
    good
}

fn agent_status(host: &Host) -> Value {
    let (code, body) = http_get(host.health_port, "/status").expect("the agent answers");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[test]
fn one_event_the_collector_cannot_read_is_dropped_alone_logged_and_counted() {
    let collector = Collector::start("");
    let image = Image::bake("img-skew");
    image.register(&collector);
    let mut host = Host::new(&image, &collector, "skew-1", Credentials::Certificate, "");
    let good = write_spool(&host);
    host.start();
    let status = wait_until(Duration::from_secs(30), "the spool delivered", || {
        let status = agent_status(&host)["collector"].clone();
        (status["spooled_events"] == 0 && status["events_rejected"] == 1).then_some(status)
    });
    assert_eq!(status["requests_failed"], 0, "{status:#}");
    // The collector stored the nine others, not the tenth.
    let stored = collector.stored_event_ids("skew-1").unwrap();
    for id in &good {
        assert!(stored.contains(id), "{id} not stored: {stored:?}");
    }
    assert!(!stored.contains(&"older:5".to_string()), "{stored:?}");
    assert_eq!(
        collector.metric("driftwatch_collector_ingest_rejected_events_total"),
        1.0
    );
    // The agent logged which and why, and counts it on /metrics.
    let log = host.log();
    let line = log
        .lines()
        .find(|l| l.contains("rejected an event"))
        .unwrap_or_else(|| panic!("no log line: {log}"));
    assert!(
        line.contains("older:5") && line.contains("quantum_drift"),
        "{line}"
    );
    let (_, metrics) = http_get(host.health_port, "/metrics").unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l == "driftwatch_collector_events_rejected_total 1"),
        "{metrics}"
    );
    // Dropped for good: a restart sends nothing of it again, and the host reports on.
    host.stop();
    host.start();
    wait_until(
        Duration::from_secs(20),
        "the restarted agent reporting",
        || (agent_status(&host)["collector"]["reachable"] == true).then_some(()),
    );
    std::thread::sleep(Duration::from_secs(2));
    let status = agent_status(&host)["collector"].clone();
    assert_eq!(
        (
            status["events_rejected"].as_u64(),
            status["spooled_events"].as_u64()
        ),
        (Some(0), Some(0)),
        "{status:#}"
    );
    assert_eq!(
        collector.metric("driftwatch_collector_ingest_rejected_events_total"),
        1.0
    );
    assert_eq!(collector.state("skew-1").as_deref(), Some("drifted"));
}
