//! The whole loop on loopback: agents on scratch roots report to a real collector;
//! drift turns a host `drifted`, the policy marks it, its health check turns 503, and a
//! webhook receiver gets grouped alerts.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use driftwatch_tests::{
    ok, wait_until, Collector, Credentials, Host, Image, Topology, WebhookReceiver,
};
use serde_json::Value;
use std::time::Duration;

const SOON: Duration = Duration::from_secs(30);

fn webhook(receiver: &WebhookReceiver) -> String {
    format!(
        "\n[[webhook]]\nurl = \"{}\"\nformat = \"json\"\n",
        receiver.url()
    )
}

/// Waits for `host` to reach `state`; on timeout, says what it was and what the
/// collector logged.
fn wait_state(collector: &Collector, host: &str, state: &str) -> Value {
    let start = std::time::Instant::now();
    loop {
        let seen = collector.host(host);
        if let Some(reached) = seen.as_ref().filter(|h| h["host"]["state"] == state) {
            return reached.clone();
        }
        assert!(
            start.elapsed() < SOON,
            "timed out after {SOON:?} waiting for {host} to be {state}; last seen: {seen:#?}\n\
             collector log:\n{}",
            collector.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The drift alerts received for one change (by its title).
fn drift_alerts(receiver: &WebhookReceiver, path: &str) -> Vec<Value> {
    receiver
        .of_kind("drift")
        .into_iter()
        .filter(|a| a["title"].as_str().unwrap_or("").contains(path))
        .collect()
}

fn drift_marks_the_host_and_the_same_change_on_three_hosts_is_one_alert(topology: Topology) {
    let receiver = WebhookReceiver::start();
    let collector = Collector::start_as(
        topology,
        &format!(
            "{}\n[replacement]\nmax_hosts = 10\nmax_percent = 100.0\n",
            webhook(&receiver)
        ),
    );
    let image = Image::bake("img-web");
    image.register(&collector);
    let digest = image.digest();
    let mut hosts: Vec<Host> = ["web-1", "web-2"]
        .iter()
        .map(|id| Host::new(&image, &collector, id, Credentials::Certificate, ""))
        .collect();
    // The third host has no certificate yet: it enrolls with the token.
    hosts.push(Host::new(
        &image,
        &collector,
        "web-3",
        Credentials::Enrollment,
        "",
    ));
    for host in &mut hosts {
        host.start();
    }
    for host in &hosts {
        let known = wait_state(&collector, &host.id, "clean");
        assert_eq!(known["host"]["image_id"], "img-web");
        assert_eq!(known["host"]["baseline_digest"], digest.as_str());
        assert_eq!(host.health(), Some(200));
    }
    // Heartbeats keep arriving.
    let first = collector.host("web-1").unwrap()["host"]["last_heartbeat"].clone();
    wait_until(SOON, "a later heartbeat", || {
        (collector.host("web-1").unwrap()["host"]["last_heartbeat"] != first).then_some(())
    });

    // Drift on one host: drifted, then marked (critical under /usr/bin), told, 503.
    hosts[0].write("/usr/bin/backdoor", "#!/bin/sh\nnc -l 4444\n");
    let marked = wait_state(&collector, "web-1", "marked");
    assert!(
        marked["host"]["mark_reason"]
            .as_str()
            .unwrap()
            .contains("/usr/bin/backdoor"),
        "{marked:#}"
    );
    let findings = marked["findings"].as_array().unwrap();
    assert!(findings
        .iter()
        .any(|f| f["subject"] == "/usr/bin/backdoor" && f["severity"] == "critical"));
    wait_until(SOON, "web-1's health check to fail", || {
        (hosts[0].health() == Some(503)).then_some(())
    });
    assert_eq!(hosts[1].health(), Some(200));
    let alerts = wait_until(SOON, "the drift alert", || {
        let alerts = drift_alerts(&receiver, "/usr/bin/backdoor");
        (!alerts.is_empty()).then_some(alerts)
    });
    assert_eq!(alerts[0]["host_count"], 1, "{alerts:#?}");
    assert_eq!(alerts[0]["hosts"], serde_json::json!(["web-1"]));
    assert_eq!(alerts[0]["image_hosts"], 3);
    let actions = collector.actions();
    let has = |action: &str| {
        actions
            .iter()
            .any(|a| a["host_id"] == "web-1" && a["action"] == action && a["outcome"] == "ok")
    };
    assert!(has("mark") && has("agent_told"), "{actions:#?}");

    // The same change on all three hosts: one alert, "3 of 3".
    for host in &hosts {
        host.write("/usr/bin/tool", "#!/bin/sh\necho trojan\n");
    }
    let alerts = wait_until(SOON, "the grouped alert", || {
        let alerts = drift_alerts(&receiver, "/usr/bin/tool");
        (!alerts.is_empty()).then_some(alerts)
    });
    assert_eq!(alerts[0]["host_count"], 3, "{alerts:#?}");
    assert_eq!(alerts[0]["image_hosts"], 3);
    assert!(
        alerts[0]["text"].as_str().unwrap().contains("3 of 3"),
        "{alerts:#?}"
    );
    // And no second alert for either change, after a full grouping window more.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(drift_alerts(&receiver, "/usr/bin/tool").len(), 1);
    assert_eq!(drift_alerts(&receiver, "/usr/bin/backdoor").len(), 1);
    for host in &hosts {
        wait_state(&collector, &host.id, "marked");
    }

    // An operator lifts web-2's mark at the collector: the host hears it and is healthy
    // again; the others stay marked.
    ok(collector.cli(&["unmark", "web-2"]));
    wait_until(SOON, "web-2's health check to recover", || {
        (hosts[1].health() == Some(200)).then_some(())
    });
    assert_eq!(hosts[0].health(), Some(503));
    assert_eq!(collector.state("web-2").as_deref(), Some("drifted"));
}

/// The budget alert's group wait in the batch test: ten reports at once land well
/// within it, even on a loaded machine.
const BATCH_GROUP_WAIT_SECS: u64 = 10;
const BATCH_GROUP_WAIT: Duration = Duration::from_secs(BATCH_GROUP_WAIT_SECS);

fn the_budget_holds_back_replacements_beyond_its_share(topology: Topology) {
    let receiver = WebhookReceiver::start();
    let collector = Collector::start_as(
        topology,
        &format!(
            "{}\n[replacement]\nmax_hosts = 2\nmax_percent = 100.0\nwindow_secs = 3600\n\
             [alerts]\ngroup_wait_secs = {BATCH_GROUP_WAIT_SECS}\n",
            webhook(&receiver)
        ),
    );
    let image = Image::bake("img-batch");
    image.register(&collector);
    // Ten hosts without a daemon, reporting one-shot (`check --report`), each with a
    // change under /usr/bin.
    let hosts: Vec<Host> = (0..10)
        .map(|i| {
            let host = Host::new(
                &image,
                &collector,
                &format!("batch-{i}"),
                Credentials::Certificate,
                "",
            );
            host.write("/usr/bin/tool", &format!("#!/bin/sh\necho changed {i}\n"));
            host
        })
        .collect();
    // All at once, so that the eight held hosts fall in one alert group: reported one
    // after the other they may span more than the group's wait, and a first alert
    // then rightly names only those held so far.
    driftwatch_tests::report_drift_at_once(&hosts);
    let states: Vec<Value> = wait_until(SOON, "every host to be decided", || {
        let hosts = collector.hosts();
        (hosts.len() == 10
            && hosts
                .iter()
                .all(|h| h["state"] == "marked" || h["hold"] == "budget"))
        .then_some(hosts)
    });
    let marked = states.iter().filter(|h| h["state"] == "marked").count();
    let held = states
        .iter()
        .filter(|h| h["state"] == "drifted" && h["hold"] == "budget")
        .count();
    assert_eq!((marked, held), (2, 8), "{states:#?}");
    let budget = wait_until(SOON + BATCH_GROUP_WAIT, "the budget alert", || {
        let alerts = receiver.of_kind("budget");
        (!alerts.is_empty()).then_some(alerts)
    });
    assert_eq!(budget.len(), 1, "one grouped budget alert: {budget:#?}");
    assert_eq!(budget[0]["host_count"], 8, "{budget:#?}");
    // An operator can still approve one past the budget.
    let held_id = states.iter().find(|h| h["hold"] == "budget").unwrap()["host_id"]
        .as_str()
        .unwrap()
        .to_string();
    ok(collector.cli(&["approve", &held_id]));
    assert_eq!(collector.state(&held_id).as_deref(), Some("marked"));

    // With the collector gone, a one-shot report cannot be delivered: exit 2, even
    // though drift was found, and a sentence saying why.
    let mut collector = collector;
    collector.stop();
    let output = hosts[0].check_report();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot deliver the report"), "{stderr}");
}

fn a_silent_host_is_reported_and_a_replaced_one_goes_away(topology: Topology) {
    let receiver = WebhookReceiver::start();
    let collector = Collector::start_as(
        topology,
        &format!(
            "{}\n[hosts]\nsweep_interval_secs = 1\nmissed_heartbeats = 2\n",
            webhook(&receiver)
        ),
    );
    let image = Image::bake("img-quiet");
    image.register(&collector);
    let mut quiet = Host::new(&image, &collector, "quiet-1", Credentials::Certificate, "");
    let mut replaced = Host::new(
        &image,
        &collector,
        "replaced-1",
        Credentials::Certificate,
        "",
    );
    quiet.start();
    replaced.start();
    wait_state(&collector, "quiet-1", "clean");
    wait_state(&collector, "replaced-1", "clean");
    ok(collector.cli(&["mark", "replaced-1", "--reason", "test"]));
    wait_until(SOON, "replaced-1 to learn it is marked", || {
        (replaced.health() == Some(503)).then_some(())
    });
    quiet.kill();
    replaced.kill();
    wait_state(&collector, "quiet-1", "silent");
    wait_state(&collector, "replaced-1", "gone");
    let silence = wait_until(SOON, "the silence alert", || {
        let alerts = receiver.of_kind("silence");
        (!alerts.is_empty()).then_some(alerts)
    });
    assert_eq!(
        silence[0]["hosts"],
        serde_json::json!(["quiet-1"]),
        "{silence:#?}"
    );
    // Back from silence, a host is judged again from its findings.
    quiet.start();
    wait_state(&collector, "quiet-1", "clean");
}

fn a_host_on_an_unregistered_image_or_baseline_is_a_critical_finding(topology: Topology) {
    let receiver = WebhookReceiver::start();
    let collector = Collector::start_as(topology, &webhook(&receiver));
    let registered = Image::bake("img-known");
    registered.register(&collector);
    let rogue = Image::bake("img-rogue");
    let mut host = Host::new(&rogue, &collector, "rogue-1", Credentials::Certificate, "");
    host.start();
    let marked = wait_state(&collector, "rogue-1", "marked");
    let findings = marked["findings"].as_array().unwrap();
    assert!(
        findings
            .iter()
            .any(|f| f["kind"] == "image" && f["finding"]["reason"] == "unregistered"),
        "{marked:#}"
    );
    wait_until(SOON, "the image alert", || {
        (!receiver.of_kind("image").is_empty()).then_some(())
    });
}

driftwatch_tests::each_topology!(
    a_silent_host_is_reported_and_a_replaced_one_goes_away,
    a_host_on_an_unregistered_image_or_baseline_is_a_critical_finding;
    shared_decisions:
    drift_marks_the_host_and_the_same_change_on_three_hosts_is_one_alert,
    the_budget_holds_back_replacements_beyond_its_share,
);
