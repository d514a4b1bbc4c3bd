//! The agent's own state directory (state, hash cache, spool) on a real file system
//! that fills up or turns read-only under the running daemon, which reports to a real
//! collector: the daemon keeps watching, says what is wrong on `/status`, `/metrics`
//! and in its log, retries, and once it can write again every finding reaches the
//! collector exactly once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use driftwatch_tests::mount::Tmpfs;
use driftwatch_tests::{http_get, wait_until, Collector, Credentials, Host, Image};
use serde_json::Value;
use std::time::Duration;

const SOON: Duration = Duration::from_secs(60);
const FINDING_EVENTS: &str = "driftwatch_collector_ingest_events_total{type=\"finding\"}";

fn status(host: &Host) -> Option<Value> {
    let (_, body) = http_get(host.health_port, "/status")?;
    serde_json::from_str(&body).ok()
}

fn wait_status(host: &Host, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    wait_until(SOON, what, || status(host).filter(|s| done(s)))
}

fn remembered(status: &Value) -> usize {
    status["findings"].as_array().map_or(0, Vec::len)
}

fn problems(status: &Value) -> String {
    status["state_problems"].to_string()
}

fn findings_at_collector(collector: &Collector, host: &str) -> usize {
    collector
        .host(host)
        .map_or(0, |h| h["findings"].as_array().unwrap().len())
}

/// Waits until the collector holds at least `count` findings of `host`.
fn wait_collector(collector: &Collector, host: &Host, count: usize) {
    let deadline = std::time::Instant::now() + SOON;
    while findings_at_collector(collector, &host.id) < count {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {count} findings of {} at the collector; agent log:\n{}",
            host.id,
            host.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn drift(host: &Host, prefix: &str, range: std::ops::Range<usize>) {
    for i in range {
        host.write(&format!("/usr/bin/{prefix}-{i:02}"), "changed\n");
    }
}

/// Exactly `count` finding events arrived, also after retries had time to land.
fn assert_once(collector: &Collector, host: &Host, count: usize) {
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(findings_at_collector(collector, &host.id), count);
    assert_eq!(
        collector.metric(FINDING_EVENTS),
        count as f64,
        "agent log:\n{}",
        host.log()
    );
}

fn metrics(host: &Host) -> String {
    http_get(host.health_port, "/metrics").unwrap().1
}

#[test]
fn a_full_state_file_system_keeps_the_daemon_watching_and_loses_nothing() {
    let mut collector = Collector::start("");
    let image = Image::bake("img-enospc");
    image.register(&collector);
    let mut host = Host::new(&image, &collector, "full-1", Credentials::Certificate, "");
    let Some(disk) = Tmpfs::mount(&host.state_dir(), "1m") else {
        return;
    };
    host.start();
    wait_until(SOON, "first contact", || collector.state("full-1"));
    // Spooled while the collector is away, then the disk fills up under them.
    collector.stop();
    drift(&host, "spooled", 0..5);
    wait_status(&host, "5 findings spooled", |s| remembered(s) == 5);
    assert!(disk.fill() > 0);
    // More than the last page of the spool's segment still takes.
    drift(&host, "full", 0..10);
    let full = wait_status(&host, "15 findings while full", |s| {
        remembered(s) == 15 && problems(s).contains("cannot spool findings")
    });
    let text = problems(&full);
    assert!(text.contains("No space left on device"), "{full:#}");
    assert!(text.contains("cannot save state"), "{full:#}");
    assert!(metrics(&host).contains("driftwatch_state_problems 2"));
    let log = host.log();
    assert!(log.contains("Cannot spool findings for the collector; retrying."));
    assert!(log.contains("Cannot save state; retrying."));
    assert!(!log.contains("panicked"), "{log}");
    // What was spooled before goes out although the acknowledgements cannot be
    // recorded (they are sent again, and the collector takes them once). The five
    // spooled before the disk filled, and those of the next ten that fit the last page
    // of the spool's segment.
    collector.restart();
    wait_collector(&collector, &host, 5);
    disk.unfill();
    wait_collector(&collector, &host, 15);
    let recovered = wait_status(&host, "the problems gone", |s| {
        s["state_problems"].as_array().is_some_and(Vec::is_empty)
    });
    assert_eq!(remembered(&recovered), 15);
    assert_once(&collector, &host, 15);
    let saved = std::fs::read_to_string(host.state_dir().join("state.json")).unwrap();
    assert!(saved.contains("/usr/bin/full-09") && saved.contains("/usr/bin/spooled-00"));
    // A restart finds all of it remembered: nothing is sent again.
    host.stop();
    host.start();
    wait_status(&host, "the boot check", |s| s["full_checks"] == 1);
    assert_once(&collector, &host, 15);
}

#[test]
fn a_read_only_state_directory_is_reported_and_recovers_when_writable() {
    let collector = Collector::start("");
    let image = Image::bake("img-erofs");
    image.register(&collector);
    let mut host = Host::new(&image, &collector, "ro-1", Credentials::Certificate, "");
    let Some(disk) = Tmpfs::mount(&host.state_dir(), "16m") else {
        return;
    };
    host.start();
    wait_until(SOON, "first contact", || collector.state("ro-1"));
    disk.set_read_only(true);
    drift(&host, "ro", 0..3);
    let read_only = wait_status(&host, "3 findings while read-only", |s| {
        remembered(s) == 3 && problems(s).contains("cannot spool findings")
    });
    assert!(
        problems(&read_only).contains("Read-only file system"),
        "{read_only:#}"
    );
    // Killed and started again on the read-only directory: the daemon starts, finds
    // the drift again at boot, and cannot spool it or save — all of which it says.
    host.kill();
    host.start();
    let restarted = wait_status(&host, "the boot check on a read-only state", |s| {
        s["full_checks"] == 1 && remembered(s) == 3
    });
    let text = problems(&restarted);
    assert!(text.contains("cannot spool findings"), "{restarted:#}");
    assert!(text.contains("cannot save state"), "{restarted:#}");
    assert!(text.contains("Read-only file system"), "{restarted:#}");
    assert_eq!(findings_at_collector(&collector, "ro-1"), 0);
    disk.set_read_only(false);
    wait_collector(&collector, &host, 3);
    wait_status(&host, "the problems gone", |s| {
        s["state_problems"].as_array().is_some_and(Vec::is_empty)
    });
    assert_once(&collector, &host, 3);
}
