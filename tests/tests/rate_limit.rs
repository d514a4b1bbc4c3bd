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

driftwatch_tests::each_topology!(one_host_is_held_to_its_rate_within_the_replica_factor);
