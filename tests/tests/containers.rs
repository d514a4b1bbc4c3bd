//! Containers at the collector, end to end: a real agent on this machine watches real
//! podman containers and reports to a real collector; a second host, on another node
//! image, reports the same change inside a container of the same image through the
//! ingest API (a fixture made from the first host's own finding). The collector:
//! - sends **one** alert for the change, grouped by the containers' image across the
//!   two node images and counted by container ("in 3 containers of image … on 2
//!   hosts"), and a follow-up when a new container of the image drifts the same way;
//! - leaves the node `drifted`, not marked: a drifted container is replaced by
//!   recreating it, not by replacing its node (the default `scope = "host"` rules);
//! - shows each finding's container under its host, in the CLI and in the API (as the
//!   OpenAPI document says), also after the container was stopped and removed.
//!
//! Needs root, podman, runc and a static busybox; without them the test says why and
//! passes, except under `CI=true`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use driftwatch_tests::openapi::check;
use driftwatch_tests::podman::{self, Podman};
use driftwatch_tests::{
    bin, http_get, missing_prerequisite, ok, run, wait_until, Collector, Host, RawClient, Topology,
    WebhookReceiver,
};
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const SOON: Duration = Duration::from_secs(30);

/// The node images' baselines record one file: the containers are what this is about.
const POLICY: &str = r#"
[scan]
paths = ["/etc/hostname"]
[runtime]
enabled = false
[packages]
enabled = false
"#;

/// Where the change is made, in every container.
const DROPPED: &str = "/usr/local/bin/tool";

/// Drops an executable into a container, renamed into place so that it appears whole.
const DROP: &str = "echo '#!/bin/sh' > /tmp/tool && chmod 755 /tmp/tool && \
                    mv /tmp/tool /usr/local/bin/tool";

/// Bakes a baseline of this machine for node image `image_id` in `dir`; its digest.
fn bake_node(dir: &Path, image_id: &str, policy: &Path) -> (std::path::PathBuf, String) {
    let baseline = dir.join(format!("{image_id}.baseline"));
    ok(run(Command::new(bin("driftwatch"))
        .args(["baseline", "create", "--root", "/", "--policy"])
        .arg(policy)
        .args(["--image-id", image_id, "--out"])
        .arg(&baseline)));
    let shown: Value = serde_json::from_str(&ok(run(Command::new(bin("driftwatch"))
        .args(["baseline", "show", "--format", "json"])
        .arg(&baseline))))
    .unwrap();
    (baseline, shown["digest"].as_str().unwrap().to_string())
}

/// The findings of `host` about `path` inside container `id`, as the collector has them.
fn in_container(collector: &Collector, host: &str, id: &str, path: &str) -> Vec<Value> {
    collector
        .host(host)
        .and_then(|h| h["findings"].as_array().cloned())
        .unwrap_or_default()
        .into_iter()
        .filter(|f| f["finding"]["container"]["id"] == id && f["subject"] == path)
        .collect()
}

/// The alerts about the dropped file in containers of `image`.
fn container_alerts(receiver: &WebhookReceiver, image: &str) -> Vec<Value> {
    receiver
        .of_kind("drift")
        .into_iter()
        .filter(|a| {
            a["title"] == format!("added file {DROPPED}")
                && a["container_image"]
                    .as_str()
                    .is_some_and(|i| i.starts_with(image))
        })
        .collect()
}

/// Whether the agent on `port` watches container `id`.
fn watched(port: u16, id: &str) -> Option<bool> {
    let (_, body) = http_get(port, "/status")?;
    let status: Value = serde_json::from_str(&body).ok()?;
    Some(
        status["containers"]
            .as_array()?
            .iter()
            .any(|c| c["id"] == id),
    )
}

fn a_change_in_containers_is_one_alert_per_container_image_across_hosts(topology: Topology) {
    if let Some(why) = podman::unavailable() {
        missing_prerequisite(&why);
        return;
    }
    let label = match topology {
        Topology::Single => "single",
        Topology::Replicas(_) => "replicas",
    };
    let receiver = WebhookReceiver::start();
    // Long enough a wait for the second host's report to join the first alert.
    let collector = Collector::start_as(
        topology,
        &format!(
            "\n[[webhook]]\nurl = \"{}\"\nformat = \"json\"\n\n[alerts]\ngroup_wait_secs = 6\n",
            receiver.url()
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, POLICY).unwrap();
    let (baseline_a, _) = bake_node(dir.path(), "node-a", &policy);
    let (baseline_b, digest_b) = bake_node(dir.path(), "node-b", &policy);
    for (image, baseline) in [("node-a", &baseline_a), ("node-b", &baseline_b)] {
        ok(collector.cli(&[
            "image",
            "register",
            "--image-id",
            image,
            "--baseline",
            baseline.to_str().unwrap(),
        ]));
    }

    let mut engine = Podman::import(label);
    let c1 = engine.run("web-1");
    let c2 = engine.run("web-2");
    let mut node_a = Host::on_this_machine(&collector, "node-a", &baseline_a, &policy);
    node_a.start();
    wait_until(SOON, "node-a to watch both containers", || {
        (watched(node_a.health_port, &c1)? && watched(node_a.health_port, &c2)?).then_some(())
    });

    // The same executable dropped into both containers on node-a…
    engine.exec(&c1, DROP);
    engine.exec(&c2, DROP);
    let reported = wait_until(SOON, "node-a's findings in both containers", || {
        let first = in_container(&collector, "node-a", &c1, DROPPED);
        let second = in_container(&collector, "node-a", &c2, DROPPED);
        (!first.is_empty() && !second.is_empty()).then_some(first[0].clone())
    });
    // …and into a container of the same image on node-b, another node image.
    let mut finding = reported["finding"].clone();
    finding["container"]["id"] = json!("b0".repeat(32));
    finding["container"]["name"] = json!("web-on-b");
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = collector.issue_cert("node-b", certs.path());
    let batch = json!({
        "schema": "driftwatch.ingest/v1",
        "host_id": "node-b",
        "hostname": "node-b.example",
        "image": {"image_id": "node-b", "baseline_digest": digest_b},
        "events": [{"id": "node-b-1", "at": "2026-01-01T00:00:00Z",
                    "body": {"type": "finding", "finding": finding}}],
    });
    let node_b = RawClient::new(&collector, Some((cert.as_path(), key.as_path())));
    let (status, text) = node_b
        .post("/v1/ingest", serde_json::to_vec(&batch).unwrap(), &[])
        .unwrap();
    assert_eq!(status, 200, "{text}");

    let alerts = wait_until(SOON, "the containers' alert", || {
        let alerts = container_alerts(&receiver, &engine.image);
        (!alerts.is_empty()).then_some(alerts)
    });
    let alert = &alerts[0];
    let image = alert["container_image"].as_str().unwrap().to_string();
    assert!(image.contains("@sha256:"), "{alert:#}");
    assert_eq!(alert["image_id"], Value::Null, "{alert:#}");
    assert_eq!(alert["image_hosts"], Value::Null);
    assert_eq!(alert["container_count"], 3, "{alert:#}");
    assert_eq!(alert["host_count"], 2);
    assert_eq!(alert["hosts"], json!(["node-a", "node-b"]));
    let mut ids: Vec<String> = alert["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            format!(
                "{}/{}",
                c["host_id"].as_str().unwrap(),
                c["id"].as_str().unwrap()
            )
        })
        .collect();
    ids.sort();
    let mut expected = vec![
        format!("node-a/{c1}"),
        format!("node-a/{c2}"),
        format!("node-b/{}", "b0".repeat(32)),
    ];
    expected.sort();
    assert_eq!(ids, expected);
    assert!(
        alert["text"].as_str().unwrap().ends_with(&format!(
            "added file {DROPPED} in 3 containers of image {image} on 2 hosts"
        )),
        "{alert:#}"
    );

    // The node is drifted, not marked: the containers are what is to be replaced.
    let host = collector.host("node-a").unwrap();
    assert_eq!(host["host"]["state"], "drifted", "{host:#}");
    assert_eq!(host["host"]["mark_reason"], Value::Null);
    assert_eq!(node_a.health(), Some(200));
    assert_eq!(reported["severity"], "critical", "{reported:#}");

    // The host's view names each finding's container: the CLI's text, and the API's
    // JSON as its document says.
    let text = ok(collector.cli(&["host", "node-a"]));
    let name = reported["finding"]["container"]["name"].as_str().unwrap();
    let heading = format!("container {name} ({})", &c1[..12]);
    let at = text
        .find(&heading)
        .unwrap_or_else(|| panic!("no {heading:?} in:\n{text}"));
    let below = text[at..].lines().nth(1).unwrap_or("");
    assert!(below.contains(DROPPED), "{text}");
    assert!(text[at..].lines().next().unwrap().contains(&engine.image));
    let token = collector.path("operator.token");
    let api = RawClient::new(&collector, None);
    let (status, body) = api.get_operator("/v1/hosts/node-a", &token);
    assert_eq!(status, 200, "{body}");
    let detail: Value = serde_json::from_str(&body).unwrap();
    let (_, document) = api.get_operator("/v1/openapi.json", &token);
    let document: Value = serde_json::from_str(&document).unwrap();
    let problems = check(
        &document,
        &document["components"]["schemas"]["HostDetail"],
        &detail,
    );
    assert!(problems.is_empty(), "{problems:#?}");
    let container = detail["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["finding"]["container"]["id"] == c1.as_str())
        .map(|f| f["finding"]["container"].clone())
        .unwrap();
    assert_eq!(container["runtime"], "podman");
    assert_eq!(container["name"], name);
    assert_eq!(container["image"], engine.image.as_str());

    // Stopped and removed: the agent lets it go, its findings stay in the host's
    // history.
    engine.remove(&c1);
    wait_until(
        SOON,
        "node-a to stop watching the removed container",
        || (!watched(node_a.health_port, &c1)?).then_some(()),
    );
    let beat = collector.host("node-a").unwrap()["host"]["last_heartbeat"].clone();
    wait_until(SOON, "a heartbeat after the removal", || {
        (collector.host("node-a")?["host"]["last_heartbeat"] != beat).then_some(())
    });
    assert_eq!(in_container(&collector, "node-a", &c1, DROPPED).len(), 1);

    // Its replacement drifts the same way: news, as a follow-up.
    let c3 = engine.run("web-3");
    wait_until(SOON, "node-a to watch the new container", || {
        watched(node_a.health_port, &c3)?.then_some(())
    });
    engine.exec(&c3, DROP);
    let alerts = wait_until(SOON, "the follow-up alert", || {
        let alerts = container_alerts(&receiver, &engine.image);
        (alerts.len() >= 2).then_some(alerts)
    });
    let follow_up = &alerts[1];
    assert_eq!(
        follow_up["containers"],
        json!([{"host_id": "node-a", "id": c3}]),
        "{follow_up:#}"
    );
    assert_eq!(follow_up["earlier_containers"], 3);
    assert_eq!(follow_up["all_hosts"], 2);
    assert!(
        follow_up["text"].as_str().unwrap().contains(&format!(
            "added file {DROPPED} in 1 more container of image {image}, 4 containers on 2 hosts in all"
        )),
        "{follow_up:#}"
    );
    // Nothing more: the containers alerted once are not alerted again.
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(container_alerts(&receiver, &engine.image).len(), 2);
    drop(node_a);
}

driftwatch_tests::each_topology!(
    ; shared_decisions: a_change_in_containers_is_one_alert_per_container_image_across_hosts
);
