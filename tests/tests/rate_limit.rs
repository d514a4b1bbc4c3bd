//! The per-host rate limit, through one collector and through replicas: each replica
//! enforces it on what it receives, so fleet-wide it holds within a factor of the
//! number of replicas (the documented tolerance), and a host on one connection meets
//! one replica's limit.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use driftwatch_tests::{heartbeat_batch, Collector, RawClient, Topology};
use std::path::Path;
use std::time::Instant;

const RATE: f64 = 0.5;
const BURST: f64 = 4.0;
const REQUESTS: usize = 40;

/// What one limiter lets through in `secs`: the burst and the rate since.
fn one_limit(secs: f64) -> usize {
    (BURST + RATE * secs).floor() as usize
}

/// Sends `REQUESTS` heartbeats of one host with `identity`, all on one connection or
/// each on a new one; (accepted, refused with 429, seconds taken).
fn flood(
    collector: &Collector,
    identity: Option<(&Path, &Path)>,
    new_connections: bool,
) -> (usize, usize, f64) {
    let started = Instant::now();
    let kept = RawClient::new(collector, identity);
    let (mut accepted, mut refused) = (0, 0);
    for i in 0..REQUESTS {
        let body = serde_json::to_vec(&heartbeat_batch("flood-1", &format!("e{i}"))).unwrap();
        let fresh = new_connections.then(|| RawClient::new(collector, identity));
        let client = fresh.as_ref().unwrap_or(&kept);
        let (status, text) = client.post("/v1/ingest", body, &[]).unwrap();
        match status {
            200 => accepted += 1,
            429 => refused += 1,
            other => panic!("answer {other}: {text}\n{}", collector.log()),
        }
    }
    (accepted, refused, started.elapsed().as_secs_f64())
}

fn one_host_is_held_to_its_rate_within_the_replica_factor(topology: Topology) {
    let collector = Collector::start_as(
        topology,
        &format!("\n[ingest]\nrate_per_sec = {RATE}\nburst = {BURST}\n"),
    );
    let replicas = collector.replica_count();
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = collector.issue_cert("flood-1", certs.path());
    let identity = Some((cert.as_path(), key.as_path()));

    // One connection (an agent's keep-alive): one replica's limit.
    let (accepted, refused, secs) = flood(&collector, identity, false);
    assert!(
        accepted <= one_limit(secs),
        "{accepted} accepted in {secs:.1} s"
    );
    assert!(refused >= REQUESTS - one_limit(secs), "{refused} refused");

    // A new connection per request, spread over every replica by the balancer: at
    // most the replicas' limits together, whatever it took before.
    let (accepted, _, secs) = flood(&collector, identity, true);
    assert!(
        accepted <= replicas * one_limit(secs),
        "{accepted} accepted through {replicas} replicas in {secs:.1} s"
    );
    assert!(accepted < REQUESTS, "the limit refused none");
}

/// A batch of `n` low findings of `host_id` (added files), event ids `{prefix}-0`….
fn findings(host_id: &str, prefix: &str, n: usize) -> Vec<u8> {
    let mut batch = heartbeat_batch(host_id, "unused");
    let events: Vec<_> = (0..n)
        .map(|i| {
            serde_json::json!({
                "id": format!("{prefix}-{i}"),
                "at": "2026-01-01T00:00:00Z",
                "body": {"type": "finding", "finding": {
                    "kind": "file", "change": "added", "path": format!("/srv/{prefix}/{i}"),
                    "attributes": [], "severity": "low", "rule": "test"}}
            })
        })
        .collect();
    batch["events"] = events.into();
    serde_json::to_vec(&batch).unwrap()
}

/// Events have a rate of their own: a batch beyond what is left is refused whole with
/// the time it needs (nothing of it stored), the host is held until then, and the
/// batch is taken when sent again after it.
fn a_host_is_held_to_its_event_rate(topology: Topology) {
    let collector = Collector::start_as(
        topology,
        "\n[ingest]\nmax_events_per_batch = 20\nevents_per_sec = 10.0\nevent_burst = 30.0\n",
    );
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = collector.issue_cert("flood-2", certs.path());
    let client = RawClient::new(&collector, Some((cert.as_path(), key.as_path())));
    let send = |prefix: &str, n: usize| {
        let (status, text) = client
            .post("/v1/ingest", findings("flood-2", prefix, n), &[])
            .unwrap();
        let ack: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        (
            status,
            ack["accepted"].as_u64(),
            ack["duplicates"].as_u64(),
            text,
        )
    };
    assert_eq!(send("a", 20).0, 200);
    // 10 left of the burst: 20 more need a second.
    let (status, _, _, text) = send("b", 20);
    assert_eq!(status, 429, "{text}");
    assert!(text.contains("retry in 1 s"), "{text}");
    // Until then the host is held: refused before its batch is decoded, even one that
    // would fit.
    let (status, _, _, text) = send("c", 1);
    assert_eq!(status, 429, "{text}");
    std::thread::sleep(std::time::Duration::from_millis(1300));
    // The refused batch was not stored: sent again after the wait, its events are new.
    let (status, accepted, duplicates, text) = send("b", 20);
    assert_eq!(
        (status, accepted, duplicates),
        (200, Some(20), Some(0)),
        "{text}"
    );
    assert_eq!(send("c", 1).0, 200, "the hold is over");
}

driftwatch_tests::each_topology!(
    one_host_is_held_to_its_rate_within_the_replica_factor,
    a_host_is_held_to_its_event_rate,
);
