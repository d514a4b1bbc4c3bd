//! Collector replicas behind haproxy: the harness itself (one URL in front of several
//! `serve` processes, a replica killed leaves the rotation) and a fresh PostgreSQL
//! database per test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use driftwatch_tests::postgres::TestDatabase;
use driftwatch_tests::{heartbeat_batch, Collector, RawClient, Topology};

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
