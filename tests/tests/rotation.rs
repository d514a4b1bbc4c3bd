//! Certificates that renew and CAs that rotate, through the real binaries over real
//! TLS: daemons keep reporting across the expiry of their certificates, and a fleet
//! moves from one CA to another while it reports.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use driftwatch_tests::{
    bin, heartbeat_batch, http_get, ok, run, wait_until, Collector, Credentials, Host, Image,
    RawClient,
};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Changes the collector's configuration file (the running collector reads it again
/// on restart, or its certificates on SIGHUP).
fn edit_config(collector: &Collector, edit: impl FnOnce(String) -> String) {
    let path = collector.config();
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, edit(text)).unwrap();
}

/// A key of `[tls]`, set (added after the section's header).
fn set_tls(collector: &Collector, line: &str) {
    let key = line.split('=').next().unwrap().trim().to_string();
    edit_config(collector, |text| {
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| !l.trim_start().starts_with(&format!("{key} ")))
            .collect();
        kept.join("\n")
            .replacen("[tls]\n", &format!("[tls]\n{line}\n"), 1)
    });
}

/// The agent's `/status`.
fn status(host: &Host) -> Value {
    let (code, body) = http_get(host.health_port, "/status").expect("the agent answers");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// The agent's `/metrics`.
fn metrics(host: &Host) -> String {
    http_get(host.health_port, "/metrics")
        .expect("the agent answers")
        .1
}

/// A copy of a file, as it is now.
fn snapshot(from: &Path, to: &Path) -> PathBuf {
    std::fs::copy(from, to).unwrap();
    to.to_path_buf()
}

/// Whether a client presenting `cert` and `key` may report as `host_id`: the status,
/// or the transport error (a refused handshake).
fn report_with(
    collector: &Collector,
    ca: &Path,
    cert: &Path,
    key: &Path,
    host_id: &str,
) -> Result<(u16, String), String> {
    let client = RawClient::to(&collector.url(), ca, Some((cert, key)));
    let batch = serde_json::to_vec(&heartbeat_batch(host_id, "raw-1")).unwrap();
    client.post("/v1/ingest", batch, &[])
}

/// Renewals of `host_id` in the action log.
fn renewals(collector: &Collector, host_id: &str) -> Vec<Value> {
    collector
        .actions()
        .into_iter()
        .filter(|a| a["action"] == "renew" && a["host_id"] == host_id)
        .collect()
}

#[test]
fn daemons_renew_their_certificates_across_expiries_without_a_gap() {
    let mut collector = Collector::start("");
    // 20-second certificates: renewed about every 13 s.
    set_tls(&collector, "host_cert_validity_secs = 20");
    collector.restart();
    let image = Image::bake("img-renew");
    image.register(&collector);
    let mut enrolled = Host::new(
        &image,
        &collector,
        "enrolled-1",
        Credentials::Enrollment,
        "",
    );
    let mut provisioned = Host::new(
        &image,
        &collector,
        "provisioned-1",
        Credentials::Certificate,
        "",
    );
    enrolled.start();
    provisioned.start();
    let identity = enrolled.state_dir().join("identity/enrolled-1.pem");
    wait_until(Duration::from_secs(30), "both hosts reporting", || {
        (collector.state("enrolled-1").as_deref() == Some("clean")
            && collector.state("provisioned-1").as_deref() == Some("clean"))
        .then_some(())
    });
    let keep = tempfile::tempdir().unwrap();
    let first = snapshot(&identity, &keep.path().join("first.pem"));
    let provisioned_files = |name: &str| {
        let dir = provisioned.state_dir();
        std::fs::read(dir.parent().unwrap().join(name)).unwrap()
    };
    let (provisioned_cert, provisioned_key) = (
        provisioned_files("provisioned-1.pem"),
        provisioned_files("provisioned-1.key"),
    );
    let replaced_at = Instant::now();

    // Three expiries of the first certificate's lifetime and more: the hosts never go
    // silent (three missed one-second heartbeats would be), the agents never fail a
    // request.
    let mut replaced = None;
    while replaced_at.elapsed() < Duration::from_secs(65) {
        for host in ["enrolled-1", "provisioned-1"] {
            let state = collector.state(host);
            assert_eq!(
                state.as_deref(),
                Some("clean"),
                "{host} after {:?}:\n{}\n{}",
                replaced_at.elapsed(),
                enrolled.log(),
                collector.log()
            );
        }
        if replaced.is_none() && std::fs::read(&identity).unwrap() != std::fs::read(&first).unwrap()
        {
            // The first certificate was replaced and has seconds left: its key is no
            // longer the host's.
            replaced = Some(Instant::now());
            let (status, body) =
                report_with(&collector, &collector.ca(), &first, &first, "enrolled-1")
                    .expect("a valid certificate is let in");
            assert_eq!(status, 403, "{body}");
            assert!(body.contains("another key"), "{body}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(replaced.is_some(), "the certificate was never renewed");
    for host in [&enrolled, &provisioned] {
        let collector_status = &status(host)["collector"];
        assert_eq!(
            collector_status["requests_failed"], 0,
            "{collector_status:#}"
        );
        assert_eq!(
            collector_status["certificate_renewal_failures"], 0,
            "{collector_status:#}"
        );
        let renewed = collector_status["certificate_renewals"].as_u64().unwrap();
        assert!(renewed >= 3, "{renewed} renewals: {collector_status:#}");
        assert!(collector_status["certificate_expires"].is_string());
        let text = metrics(host);
        let expiry: f64 = text
            .lines()
            .find_map(|l| {
                l.strip_prefix("driftwatch_collector_certificate_expiry_timestamp_seconds ")
            })
            .unwrap_or_else(|| panic!("no expiry metric in {text}"))
            .parse()
            .unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(expiry > now && expiry < now + 25.0, "{expiry} vs {now}");
    }
    // An enrolled identity gets a new key each time; a provisioned key file is kept.
    let enrolled_renewals = renewals(&collector, "enrolled-1");
    assert!(enrolled_renewals.len() >= 3, "{enrolled_renewals:#?}");
    assert!(enrolled_renewals
        .iter()
        .all(|a| a["detail"].as_str().unwrap().contains("new key")));
    let provisioned_renewals = renewals(&collector, "provisioned-1");
    assert!(provisioned_renewals.len() >= 3, "{provisioned_renewals:#?}");
    assert!(provisioned_renewals
        .iter()
        .all(|a| a["detail"].as_str().unwrap().contains("same key")));
    assert_ne!(provisioned_files("provisioned-1.pem"), provisioned_cert);
    assert_eq!(provisioned_files("provisioned-1.key"), provisioned_key);

    // Long expired, the first certificate is refused outright.
    let refused = report_with(&collector, &collector.ca(), &first, &first, "enrolled-1");
    assert!(
        !matches!(refused, Ok((200, _))),
        "an expired certificate was accepted: {refused:?}"
    );
    // And the hosts' last certificates work after a restart of the agent.
    enrolled.stop();
    enrolled.start();
    wait_until(
        Duration::from_secs(20),
        "the restarted agent reporting",
        || (status(&enrolled)["collector"]["reachable"] == true).then_some(()),
    );
    ok(collector.cli(&["hosts"]));
}

/// Replaces the content of `path` with that of `from`, atomically (as an operator's
/// deployment would).
fn replace(path: &Path, from: &Path) {
    let staged = path.with_extension("staged");
    std::fs::copy(from, &staged).unwrap();
    std::fs::rename(&staged, path).unwrap();
}

/// Points an agent's `ca_file` at `bundle` and has it read it again (SIGHUP).
fn trust_on_host(host: &Host, bundle: &Path) {
    let text = std::fs::read_to_string(host.config()).unwrap();
    let text: Vec<String> = text
        .lines()
        .map(|line| {
            if line.starts_with("ca_file = ") {
                format!("ca_file = {bundle:?}")
            } else {
                line.to_string()
            }
        })
        .collect();
    std::fs::write(host.config(), text.join("\n") + "\n").unwrap();
    host.signal(libc::SIGHUP);
}

/// Waits for a new renewal of `host` (after `seen` of them), then for its first
/// acknowledged report on the renewed certificate.
fn wait_renewed(host: &Host, seen: u64) -> u64 {
    wait_until(Duration::from_secs(40), "a renewal", || {
        let collector = status(host)["collector"].clone();
        let renewals = collector["certificate_renewals"].as_u64().unwrap_or(0);
        (renewals > seen && collector["reachable"] == true).then_some(renewals)
    })
}

/// Renewals of the agent's certificate since it started.
fn renewals_of(host: &Host) -> u64 {
    status(host)["collector"]["certificate_renewals"]
        .as_u64()
        .unwrap()
}

/// Both hosts are reported as clean right now.
fn all_reporting(collector: &Collector, hosts: &[&Host], step: &str) {
    for host in hosts {
        assert_eq!(
            collector.state(&host.id).as_deref(),
            Some("clean"),
            "{} at {step}:\n{}\n{}",
            host.id,
            host.log(),
            collector.log()
        );
    }
}

#[test]
fn the_ca_and_the_server_certificate_rotate_while_the_fleet_reports() {
    let mut collector = Collector::start("");
    let keep = tempfile::tempdir().unwrap();
    // A long-lived certificate of the old CA, for the end.
    let (old_cert, old_key) = collector.issue_cert("ca1-only", keep.path());
    // Certificates valid for an hour: in this test, hosts renew only when the collector
    // asks them to (its CA changed).
    set_tls(&collector, "host_cert_validity_secs = 3600");
    collector.restart();
    let image = Image::bake("img-rotate");
    image.register(&collector);
    let mut enrolled = Host::new(
        &image,
        &collector,
        "enrolled-2",
        Credentials::Enrollment,
        "",
    );
    let mut provisioned = Host::new(
        &image,
        &collector,
        "provisioned-2",
        Credentials::Certificate,
        "",
    );
    enrolled.start();
    provisioned.start();
    let hosts = [&enrolled, &provisioned];
    wait_until(Duration::from_secs(30), "both hosts reporting", || {
        hosts
            .iter()
            .all(|h| collector.state(&h.id).as_deref() == Some("clean"))
            .then_some(())
    });
    // The CA the collector was made with, as the agents have it.
    let ca1 = snapshot(&collector.ca(), &keep.path().join("ca1.pem"));
    for host in hosts {
        trust_on_host(host, &ca1);
    }
    assert_eq!(
        report_with(&collector, &ca1, &old_cert, &old_key, "ca1-only")
            .unwrap()
            .0,
        200
    );

    // 1. A new CA.
    let ca2_dir = collector.path("ca2");
    ok(run(Command::new(bin("driftwatch-collector"))
        .args(["new-ca", "--out-dir"])
        .arg(&ca2_dir)));
    let ca2 = ca2_dir.join("ca.pem");
    // 2. Both trusted on both sides: the collector's client CA bundle (the file its
    // configuration names, replaced), the agents' CA bundle.
    let both = keep.path().join("both.pem");
    let bundle = std::fs::read_to_string(&ca1).unwrap() + &std::fs::read_to_string(&ca2).unwrap();
    std::fs::write(&both, &bundle).unwrap();
    replace(&collector.ca(), &both);
    collector.signal(libc::SIGHUP);
    for host in hosts {
        trust_on_host(host, &both);
    }
    std::thread::sleep(Duration::from_secs(3));
    let renewals: Vec<u64> = hosts.iter().map(|h| renewals_of(h)).collect();
    all_reporting(&collector, &hosts, "both CAs trusted");

    // 3. The collector presents a certificate of the new CA and issues from it (its key
    // picks the new CA out of the bundle).
    replace(&collector.path("server.pem"), &ca2_dir.join("server.pem"));
    replace(&collector.path("server.key"), &ca2_dir.join("server.key"));
    replace(&collector.path("ca.key"), &ca2_dir.join("ca.key"));
    collector.signal(libc::SIGHUP);
    wait_until(
        Duration::from_secs(10),
        "the server certificate of CA2",
        || {
            let client = RawClient::to(&collector.url(), &ca2, None);
            let token = collector.path("operator.token");
            (client.get_operator("/v1/hosts", &token).0 == 200).then_some(())
        },
    );
    // 4. The hosts renew onto the new CA at once: the collector's answer asks them to,
    // as their certificates are not its issuing CA's any more. Once: their new ones are.
    for (host, seen) in hosts.iter().zip(&renewals) {
        assert_eq!(wait_renewed(host, *seen), seen + 1);
    }
    std::thread::sleep(Duration::from_secs(3));
    for (host, seen) in hosts.iter().zip(&renewals) {
        assert_eq!(renewals_of(host), seen + 1, "{}", host.log());
    }
    all_reporting(&collector, &hosts, "issuing from CA2");

    // 5. The old CA is dropped on both sides.
    replace(&collector.ca(), &ca2);
    collector.signal(libc::SIGHUP);
    for host in hosts {
        trust_on_host(host, &ca2);
    }
    all_reporting(&collector, &hosts, "CA1 removed");
    let before = hosts
        .iter()
        .map(|h| status(h)["collector"]["events_sent"].as_u64().unwrap())
        .collect::<Vec<_>>();
    std::thread::sleep(Duration::from_secs(3));
    for (host, before) in hosts.iter().zip(before) {
        let sent = status(host)["collector"]["events_sent"].as_u64().unwrap();
        assert!(
            sent > before,
            "{} stopped reporting: {}",
            host.id,
            host.log()
        );
    }
    // A client of the old CA only is refused: its certificate is no longer trusted, and
    // the collector's certificate is not one it trusts either.
    let refused = report_with(&collector, &ca2, &old_cert, &old_key, "ca1-only");
    assert!(
        !matches!(refused, Ok((200, _))),
        "a CA1 certificate was accepted: {refused:?}"
    );
    assert!(report_with(&collector, &ca1, &old_cert, &old_key, "ca1-only").is_err());
    assert!(collector.log().contains("SIGHUP: certificates read again"));
}
