//! Delivery under failure: a collector that is down, killed mid-ingest, or an agent
//! killed while it spools — every finding arrives, and arrives once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use driftwatch_tests::{wait_until, Collector, Credentials, Host, Image, Topology};
use std::time::Duration;

const SOON: Duration = Duration::from_secs(60);
const FINDING_EVENTS: &str = "driftwatch_collector_ingest_events_total{type=\"finding\"}";

fn findings_at_collector(collector: &Collector, host: &str) -> usize {
    collector
        .host(host)
        .map_or(0, |h| h["findings"].as_array().unwrap().len())
}

fn wait_findings(collector: &Collector, host: &str, count: usize) {
    wait_until(
        SOON,
        &format!("{count} findings of {host} at the collector"),
        || (findings_at_collector(collector, host) == count).then_some(()),
    );
}

/// Waits until the agent itself remembers `count` findings (so they are spooled).
fn wait_agent_findings(host: &Host, count: usize) {
    wait_until(
        SOON,
        &format!("the agent to remember {count} findings"),
        || {
            let (_, body) = driftwatch_tests::http_get(host.health_port, "/status")?;
            let status: serde_json::Value = serde_json::from_str(&body).ok()?;
            (status["findings"].as_array()?.len() == count).then_some(())
        },
    );
}

fn a_collector_outage_loses_nothing_and_duplicates_nothing(topology: Topology) {
    let mut collector = Collector::start_as(topology, "");
    let image = Image::bake("img-outage");
    image.register(&collector);
    let mut host = Host::new(&image, &collector, "outage-1", Credentials::Certificate, "");
    host.start();
    wait_until(SOON, "first contact", || collector.state("outage-1"));
    collector.stop();
    for i in 0..50 {
        host.write(&format!("/usr/bin/drift-{i:02}"), "changed\n");
    }
    wait_agent_findings(&host, 50);
    collector.restart();
    wait_findings(&collector, "outage-1", 50);
    // Retries may resend, but the store takes each event once.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(findings_at_collector(&collector, "outage-1"), 50);
    assert_eq!(
        collector.metric(FINDING_EVENTS),
        50.0,
        "{}",
        collector.log()
    );
}

fn a_collector_killed_during_ingest_loses_nothing_acknowledged(topology: Topology) {
    let mut collector = Collector::start_as(topology, "");
    let image = Image::bake("img-kill");
    image.register(&collector);
    let mut host = Host::new(&image, &collector, "kill-1", Credentials::Certificate, "");
    host.start();
    wait_until(SOON, "first contact", || collector.state("kill-1"));
    for i in 0..60 {
        host.write(&format!("/usr/bin/drift-{i:02}"), "changed\n");
        std::thread::sleep(Duration::from_millis(15));
        if i == 30 {
            collector.kill();
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    collector.restart();
    wait_findings(&collector, "kill-1", 60);
}

fn an_agent_killed_while_spooling_delivers_after_restart(topology: Topology) {
    let mut collector = Collector::start_as(topology, "");
    let image = Image::bake("img-spool");
    image.register(&collector);
    let mut host = Host::new(&image, &collector, "spool-1", Credentials::Certificate, "");
    host.start();
    wait_until(SOON, "first contact", || collector.state("spool-1"));
    collector.stop();
    for i in 0..30 {
        host.write(&format!("/usr/bin/drift-{i:02}"), "changed\n");
    }
    wait_agent_findings(&host, 30);
    host.kill();
    collector.restart();
    host.start();
    wait_findings(&collector, "spool-1", 30);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        collector.metric(FINDING_EVENTS),
        30.0,
        "{}",
        collector.log()
    );
}

driftwatch_tests::each_topology!(
    a_collector_outage_loses_nothing_and_duplicates_nothing,
    a_collector_killed_during_ingest_loses_nothing_acknowledged,
    an_agent_killed_while_spooling_delivers_after_restart,
);
