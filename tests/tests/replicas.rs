//! Collector replicas behind haproxy: the harness itself (one URL in front of several
//! `serve` processes, a replica killed leaves the rotation) and a fresh PostgreSQL
//! database per test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use driftwatch_tests::postgres::TestDatabase;
use driftwatch_tests::{
    heartbeat_batch, http_get, wait_until, Collector, Credentials, Host, Image, RawClient, Topology,
};
use serde_json::Value;
use std::time::Duration;

const SOON: Duration = Duration::from_secs(30);

#[test]
fn a_test_database_is_fresh_and_dropped_at_the_end() {
    let Some(database) = TestDatabase::create() else {
        return;
    };
    database.query("CREATE TABLE t (x int)");
    database.query("INSERT INTO t VALUES (1), (2)");
    assert_eq!(database.query("SELECT count(*) FROM t"), "2");
    let name = database.name.clone();
    let other = TestDatabase::create().unwrap();
    assert_ne!(other.name, name);
    let exists = |name: &str| {
        other.query(&format!(
            "SELECT count(*) FROM pg_database WHERE datname = '{name}'"
        ))
    };
    assert_eq!(exists(&name), "1");
    drop(database);
    assert_eq!(exists(&name), "0");
}

#[test]
fn replicas_behind_the_load_balancer_serve_while_one_is_down() {
    let Some(topology) = Topology::replicas() else {
        return;
    };
    let mut collector = Collector::start_as(topology, "");
    assert_eq!(collector.replica_count(), 3);
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = collector.issue_cert("lb-1", certs.path());
    let identity = Some((cert.as_path(), key.as_path()));
    // Through the load balancer, mutual TLS still ends at a collector: the host is
    // known by its certificate.
    let client = RawClient::new(&collector, identity);
    let post = |client: &RawClient, id: &str| {
        let body = serde_json::to_vec(&heartbeat_batch("lb-1", id)).unwrap();
        client.post("/v1/ingest", body, &[]).unwrap()
    };
    let (status, body) = post(&client, "e0");
    assert_eq!(status, 200, "{body}");
    // Every replica answers on its own port, with the same certificate.
    for (i, url) in collector.replica_urls().iter().enumerate() {
        let direct = RawClient::to(url, &collector.ca(), identity);
        let (status, body) = post(&direct, &format!("direct-{i}"));
        assert_eq!(status, 200, "replica {i}: {body}");
    }
    // One replica down: the load balancer's health check takes it out, and every
    // new connection still reaches a live one.
    collector.kill_replica(1);
    std::thread::sleep(std::time::Duration::from_secs(1));
    for i in 0..6 {
        let client = RawClient::new(&collector, identity);
        let (status, body) = post(&client, &format!("after-kill-{i}"));
        assert_eq!(status, 200, "{body}\n{}", collector.log());
    }
    assert_eq!(collector.state("lb-1").as_deref(), Some("clean"));
    collector.start_replica(1);
}

/// The URL the agent reports to, as its `/status` says.
fn agent_url(host: &Host) -> Option<String> {
    let (_, body) = http_get(host.health_port, "/status")?;
    let status: Value = serde_json::from_str(&body).ok()?;
    status["collector"]["url"].as_str().map(str::to_string)
}

fn has_finding(collector: &Collector, host: &str, subject: &str) -> bool {
    collector.host(host).is_some_and(|h| {
        h["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["subject"] == subject)
    })
}

#[test]
fn an_agent_with_two_collector_urls_fails_over_and_back() {
    let Some(Topology::Replicas(_)) = Topology::replicas() else {
        return;
    };
    let mut collector = Collector::start_as(Topology::Replicas(2), "");
    let image = Image::bake("img-failover");
    image.register(&collector);
    let urls = collector.replica_urls();
    let mut host = Host::new_at(
        &image,
        &collector,
        &urls,
        "failover-1",
        Credentials::Certificate,
        "",
    );
    host.start();
    wait_until(SOON, "the first URL in use", || {
        (agent_url(&host).as_deref() == Some(urls[0].as_str())).then_some(())
    });
    // The first collector stops: the next report goes to the second.
    collector.kill_replica(0);
    host.write("/usr/bin/while-first-down", "changed\n");
    wait_until(SOON, "the finding through the second collector", || {
        has_finding(&collector, "failover-1", "/usr/bin/while-first-down").then_some(())
    });
    wait_until(SOON, "the second URL in use", || {
        (agent_url(&host).as_deref() == Some(urls[1].as_str())).then_some(())
    });
    // The first comes back and the second stops: back to the first.
    collector.start_replica(0);
    collector.kill_replica(1);
    host.write("/usr/bin/while-second-down", "changed\n");
    wait_until(
        SOON,
        "the finding through the first collector again",
        || has_finding(&collector, "failover-1", "/usr/bin/while-second-down").then_some(()),
    );
    wait_until(SOON, "the first URL in use again", || {
        (agent_url(&host).as_deref() == Some(urls[0].as_str())).then_some(())
    });
    assert!(host
        .log()
        .contains("Reporting to another collector replica"));
}

#[test]
fn the_example_haproxy_configuration_is_valid() {
    let Some(Topology::Replicas(_)) = Topology::replicas() else {
        return;
    };
    let example =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/examples/haproxy.cfg");
    let haproxy =
        driftwatch_tests::postgres::which("haproxy").unwrap_or_else(|| "/usr/sbin/haproxy".into());
    let output = std::process::Command::new(haproxy)
        .args(["-c", "-f"])
        .arg(&example)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
