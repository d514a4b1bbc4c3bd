//! The replacement budget under concurrency: 50 hosts of one image drift at the same
//! moment and exactly the budget's worth are marked — every round, through one
//! collector or through replicas behind the load balancer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use driftwatch_tests::{wait_until, Collector, Credentials, Host, Image, Topology};
use serde_json::Value;
use std::time::Duration;

const HOSTS: usize = 50;
const BUDGET: usize = 5;

/// Rounds (default 20; `DRIFTWATCH_BURST_ROUNDS` for a longer soak).
fn rounds() -> usize {
    std::env::var("DRIFTWATCH_BURST_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

fn fifty_hosts_drifting_at_once_mark_exactly_the_budget(topology: Topology) {
    let collector = Collector::start_as(
        topology,
        &format!(
            "\n[replacement]\nmax_hosts = {BUDGET}\nmax_percent = 100.0\nwindow_secs = 3600\n"
        ),
    );
    for round in 0..rounds() {
        // A fresh image per round: the budget is per image and window.
        let image = Image::bake(&format!("img-burst-{round}"));
        image.register(&collector);
        let hosts: Vec<Host> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..HOSTS)
                .map(|i| {
                    let (image, collector) = (&image, &collector);
                    scope.spawn(move || {
                        let id = format!("burst-{round}-{i:02}");
                        let host = Host::new(image, collector, &id, Credentials::Certificate, "");
                        host.write("/usr/bin/tool", &format!("#!/bin/sh\necho {id}\n"));
                        host
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        // All of them report their drift at the same moment (one-shot reports).
        driftwatch_tests::report_drift_at_once(&hosts);
        let prefix = format!("burst-{round}-");
        let decided: Vec<Value> = wait_until(Duration::from_secs(60), "every host decided", || {
            let mine: Vec<Value> = collector
                .json(&["hosts", "--image", &image.id])
                .as_array()
                .unwrap()
                .iter()
                .filter(|h| h["host_id"].as_str().unwrap().starts_with(&prefix))
                .cloned()
                .collect();
            (mine.len() == HOSTS
                && mine
                    .iter()
                    .all(|h| h["state"] == "marked" || h["hold"] == "budget"))
            .then_some(mine)
        });
        let marked = decided.iter().filter(|h| h["state"] == "marked").count();
        assert_eq!(
            marked,
            BUDGET,
            "round {round}: {marked} marked\n{decided:#?}\n{}",
            collector.log()
        );
    }
}

driftwatch_tests::each_topology!(
    ;
    shared_decisions:
    fifty_hosts_drifting_at_once_mark_exactly_the_budget,
);
