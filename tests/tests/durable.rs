//! Every decision durable: deliveries pending when a collector dies are made after it
//! comes back, and a replica killed with -9 in the middle of ingest and of a delivery
//! loses no acknowledged report and no alert; a repeated delivery carries the same
//! `Idempotency-Key` (the receiver counts by key) and a mark command the same
//! `DRIFTWATCH_ACTION_ID`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use driftwatch_tests::webhook::Request;
use driftwatch_tests::WebhookReceiver;
use driftwatch_tests::{wait_until, Answer, Collector, Credentials, Host, Image, Topology};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

const SOON: Duration = Duration::from_secs(30);

/// The webhook (answering within 2 s, so a claim lasts 12 s), a mark command's
/// timeout of 10 s (its claim lasts 20 s), and a policy marking on critical drift
/// with room for every host.
fn config(receiver: &WebhookReceiver, mark_command: &str) -> String {
    format!(
        "\n[[webhook]]\nurl = \"{}\"\nformat = \"json\"\ntimeout_secs = 2\n\
         \n[alerts]\ngroup_wait_secs = 1\ncommand_timeout_secs = 10\n{mark_command}\
         \n[replacement]\nmax_hosts = 100\nmax_percent = 100.0\n",
        receiver.url()
    )
}

/// A mark command that writes its `DRIFTWATCH_ACTION_ID` to `runs`, then hangs (for
/// longer than its timeout) until `release` exists.
fn mark_command(runs: &Path, release: &Path) -> String {
    let script = format!(
        "echo \"$DRIFTWATCH_HOST_ID $DRIFTWATCH_ACTION_ID\" >> {}; \
         for i in $(seq 300); do [ -e {} ] && exit 0; sleep 0.1; done",
        runs.display(),
        release.display()
    );
    format!("mark_command = [\"sh\", \"-c\", {script:?}]\n")
}

/// The lines the mark command wrote: (host, action id).
fn command_runs(runs: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(runs)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(h, a)| (h.to_string(), a.to_string()))
        .collect()
}

/// Every request with one key carries the same alert, and no two keys carry the same
/// alert: a duplicate only ever repeats a key.
fn assert_keyed_once(attempts: &[Request]) {
    let mut by_key: BTreeMap<&str, &Value> = BTreeMap::new();
    for (key, body) in attempts {
        assert!(
            !key.is_empty(),
            "a delivery without Idempotency-Key: {body:#}"
        );
        if let Some(first) = by_key.insert(key, body) {
            assert_eq!(first, body, "key {key} carried two different alerts");
        }
    }
    let distinct: BTreeSet<String> = by_key.values().map(|b| b.to_string()).collect();
    assert_eq!(
        distinct.len(),
        by_key.len(),
        "one alert under two keys: {by_key:#?}"
    );
}

/// The hosts named by the delivered alerts of `kind`.
fn alerted_hosts(receiver: &WebhookReceiver, kind: &str) -> BTreeSet<String> {
    receiver
        .of_kind(kind)
        .iter()
        .flat_map(|a| a["hosts"].as_array().cloned().unwrap_or_default())
        .filter_map(|h| h.as_str().map(str::to_string))
        .collect()
}

/// A host with a critical change under /usr/bin, reported one-shot.
fn drifting_host(image: &Image, collector: &Collector, id: &str) -> Host {
    let host = Host::new(image, collector, id, Credentials::Certificate, "");
    host.write("/usr/bin/tool", &format!("#!/bin/sh\necho {id}\n"));
    host
}

/// Reports until the collector acknowledges (exit 1: delivered, drift found), as the
/// agent retries a report that did not get through.
fn report_until_acknowledged(host: &Host) {
    for _ in 0..10 {
        let output = host.check_report();
        if output.status.code() == Some(1) {
            return;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("{}'s report was never acknowledged", host.id);
}

fn pending_alerts_and_commands_are_delivered_after_a_restart(topology: Topology) {
    let receiver = WebhookReceiver::start();
    receiver.answer(Answer::Refuse);
    let scratch = tempfile::tempdir().unwrap();
    let (runs, release) = (scratch.path().join("runs"), scratch.path().join("release"));
    let mut collector =
        Collector::start_as(topology, &config(&receiver, &mark_command(&runs, &release)));
    let image = Image::bake("img-restart");
    image.register(&collector);
    let host = drifting_host(&image, &collector, "restart-1");
    report_until_acknowledged(&host);
    // The decision is taken; its alerts are refused and its command is running when
    // the whole collector dies.
    wait_until(SOON, "a refused alert and a running command", || {
        (!receiver.attempts().is_empty() && !command_runs(&runs).is_empty()).then_some(())
    });
    collector.kill();
    let refused: BTreeSet<String> = receiver.attempts().into_iter().map(|(k, _)| k).collect();
    let first_run = command_runs(&runs);
    assert!(receiver.delivered().is_empty());
    assert_eq!(first_run.len(), 1, "{first_run:?}");

    std::fs::write(&release, "").unwrap();
    receiver.answer(Answer::Accept);
    collector.restart();
    // After the restart: every refused alert is delivered, under its key.
    let delivered = wait_until(SOON, "the refused alerts delivered", || {
        let keys: BTreeSet<String> = receiver.delivered().into_iter().map(|(k, _)| k).collect();
        refused.is_subset(&keys).then_some(keys)
    });
    assert!(
        alerted_hosts(&receiver, "marked").contains("restart-1"),
        "{delivered:?}"
    );
    assert_keyed_once(&receiver.attempts());
    // The command that died with its collector runs again, with the same action id.
    let again = wait_until(SOON, "the mark command run again", || {
        let runs = command_runs(&runs);
        (runs.len() >= 2).then_some(runs)
    });
    assert!(again.iter().all(|run| run == &first_run[0]), "{again:?}");
}

driftwatch_tests::each_topology!(
    ;
    shared_decisions:
    pending_alerts_and_commands_are_delivered_after_a_restart,
);

/// Hosts that drift at once through three replicas, one of which is killed during
/// ingest, and then the one caught delivering: every host is decided once and every
/// decision's alerts arrive, repeated only under the same key.
#[test]
fn a_replica_killed_during_ingest_and_delivery_loses_nothing() {
    const HOSTS: usize = 12;
    let Some(topology) = Topology::replicas() else {
        return;
    };
    let receiver = WebhookReceiver::start();
    receiver.answer(Answer::Hang);
    let mut collector = Collector::start_as(topology, &config(&receiver, ""));
    let image = Image::bake("img-kill");
    image.register(&collector);
    let hosts: Vec<Host> = (0..HOSTS)
        .map(|i| drifting_host(&image, &collector, &format!("kill-{i:02}")))
        .collect();
    let start = std::sync::Barrier::new(HOSTS + 1);
    std::thread::scope(|scope| {
        for host in &hosts {
            let start = &start;
            scope.spawn(move || {
                start.wait();
                report_until_acknowledged(host);
            });
        }
        start.wait();
        // Reports are in flight: one replica dies under them.
        std::thread::sleep(Duration::from_millis(300));
        collector.kill_replica(2);
    });
    // A delivery hangs in flight: its replica dies with it.
    let delivering = wait_until(SOON, "a replica delivering", || {
        collector.replica_connected_to(receiver.port())
    });
    let caught: BTreeSet<String> = receiver.attempts().into_iter().map(|(k, _)| k).collect();
    collector.kill_replica(delivering);
    receiver.answer(Answer::Accept);
    // Every acknowledged report is stored and decided.
    for host in &hosts {
        let record = wait_until(SOON, &format!("{} marked", host.id), || {
            collector
                .host(&host.id)
                .filter(|h| h["host"]["state"] == "marked")
        });
        let findings = record["findings"].as_array().unwrap();
        assert!(
            findings.iter().any(|f| f["subject"] == "/usr/bin/tool"),
            "{record:#}"
        );
    }
    let ids: BTreeSet<String> = hosts.iter().map(|h| h.id.clone()).collect();
    wait_until(Duration::from_secs(90), "every decision alerted", || {
        let keys: BTreeSet<String> = receiver.delivered().into_iter().map(|(k, _)| k).collect();
        (caught.is_subset(&keys)
            && alerted_hosts(&receiver, "marked") == ids
            && alerted_hosts(&receiver, "drift") == ids)
            .then_some(())
    });
    let attempts = receiver.attempts();
    eprintln!(
        "replica {delivering} killed delivering; {} keys in flight then; {} attempts, {} delivered",
        caught.len(),
        attempts.len(),
        receiver.delivered().len()
    );
    assert_keyed_once(&attempts);
    // Each host was marked once, by one replica's decision.
    let actions = collector.actions();
    for id in &ids {
        let marks = actions
            .iter()
            .filter(|a| a["host_id"] == id.as_str() && a["action"] == "mark")
            .count();
        assert_eq!(marks, 1, "{id}: {actions:#?}");
    }
}
