//! Trust at the collector, through the real binaries over real TLS: named tokens made,
//! listed and revoked with the CLI, each doing only what its role allows, and the
//! action log naming the token that acted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use driftwatch_tests::{
    bin, heartbeat_batch, key_and_csr, ok, run, wait_until, Collector, Image, RawClient,
};
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Writes a token's secret into a file of the collector's directory.
fn token_file(collector: &Collector, name: &str, secret: &str) -> std::path::PathBuf {
    let path = collector.path(&format!("{name}.secret"));
    std::fs::write(&path, format!("{secret}\n")).unwrap();
    path
}

/// `driftwatch-collector ARGS --token-file FILE`: (exit code, stdout, stderr).
fn as_token(collector: &Collector, file: &Path, args: &[&str]) -> (i32, String, String) {
    let mut all = args.to_vec();
    all.extend(["--token-file", file.to_str().unwrap()]);
    let output = collector.cli(&all);
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into(),
        String::from_utf8_lossy(&output.stderr).into(),
    )
}

#[test]
fn tokens_are_named_scoped_revoked_and_named_in_the_log() {
    let collector = Collector::start("");
    // Made with the admin token the configuration names; printed once.
    let secret = ok(collector.cli(&["token", "create", "--name", "ci-viewer", "--role", "viewer"]));
    let secret = secret.trim().to_string();
    assert_eq!(secret.len(), 64, "{secret}");
    let operator: Value = collector.json(&[
        "token",
        "create",
        "--name",
        "oncall",
        "--role",
        "operator",
        "--expires",
        "1h",
    ]);
    let operator_secret = operator["token"].as_str().unwrap().to_string();
    let listed = collector.json(&["token", "list"]);
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["ci-viewer", "oncall"]);
    assert!(!listed.to_string().contains(&secret));
    assert!(listed[1]["expires_at"].is_string());

    // The viewer reads but cannot act; the operator token of the configuration cannot
    // manage tokens.
    let viewer = token_file(&collector, "viewer", &secret);
    let (code, _, _) = as_token(&collector, &viewer, &["hosts"]);
    assert_eq!(code, 0);
    let (code, _, err) = as_token(&collector, &viewer, &["mark", "web-1"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("403"), "{err}");
    let configured = collector.path("operator.token");
    let (code, _, err) = as_token(&collector, &configured, &["token", "list"]);
    assert_eq!((code, err.contains("403")), (1, true), "{err}");

    // A named operator token acts, and the log says which token it was.
    let oncall = token_file(&collector, "oncall", &operator_secret);
    let (code, _, err) = as_token(&collector, &oncall, &["mark", "web-1"]);
    assert_eq!(code, 1, "no such host yet: {err}");
    assert!(err.contains("404"), "{err}");
    ok(collector.cli(&["token", "revoke", "ci-viewer"]));
    let (code, _, err) = as_token(&collector, &viewer, &["hosts"]);
    assert_eq!((code, err.contains("403")), (1, true), "{err}");
    let actions = collector.actions();
    for (action, name) in [("token_create", "ci-viewer"), ("token_revoke", "ci-viewer")] {
        assert!(
            actions.iter().any(|a| a["action"] == action
                && a["target"] == "admin"
                && a["detail"].as_str().unwrap().contains(name)),
            "{action} {name}: {actions:#?}"
        );
    }
    // The collector still serves.
    assert_eq!(collector.hosts().len(), 0);
}

#[test]
fn a_revoked_certificate_stays_refused_after_its_host_record_expired() {
    let collector = Collector::start(
        "\n[hosts]\nretention_secs = 1\nsweep_interval_secs = 1\nmissed_heartbeats = 3\n",
    );
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = collector.issue_cert("web-1", certs.path());
    let host = RawClient::new(&collector, Some((&cert, &key)));
    let report = |event: &str| {
        let batch = serde_json::to_vec(&heartbeat_batch("web-1", event)).unwrap();
        host.post("/v1/ingest", batch, &[]).unwrap()
    };
    assert_eq!(report("e1").0, 200);
    ok(collector.cli(&["revoke", "web-1"]));
    let (status, body) = report("e2");
    assert_eq!(status, 403, "{body}");
    // The record goes (retention 1 s); the certificate is still refused.
    wait_until(Duration::from_secs(30), "web-1 expired", || {
        collector.host("web-1").is_none().then_some(())
    });
    let (status, body) = report("e3");
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("revoked"), "{body}");
    assert!(collector.host("web-1").is_none());
    // A host provisioned afresh under another id, and the collector, still serve.
    let (cert, key) = collector.issue_cert("web-2", certs.path());
    let other = RawClient::new(&collector, Some((&cert, &key)));
    let batch = serde_json::to_vec(&heartbeat_batch("web-2", "e1")).unwrap();
    assert_eq!(other.post("/v1/ingest", batch, &[]).unwrap().0, 200);
}

#[test]
fn a_scoped_enrollment_token_enrolls_only_its_hosts_and_images() {
    let collector = Collector::start("");
    let token: Value = collector.json(&[
        "token",
        "create",
        "--name",
        "web-pool",
        "--role",
        "enroll",
        "--uses",
        "1",
        "--host-ids",
        "web-*",
        "--images",
        "img-web*",
    ]);
    let secret = token["token"].as_str().unwrap();
    let anonymous = RawClient::new(&collector, None);
    let dir = tempfile::tempdir().unwrap();
    let enroll = |host_id: &str, name: &str| {
        let Some((key, csr)) = key_and_csr(dir.path(), name) else {
            panic!("the host's key is made with openssl");
        };
        let request = serde_json::json!({"token": secret, "host_id": host_id, "csr_pem": csr});
        let (status, body) = anonymous
            .post("/v1/enroll", serde_json::to_vec(&request).unwrap(), &[])
            .unwrap();
        (status, body, key)
    };
    // Outside its host ids: 403, and the use is not spent.
    let (status, body, _) = enroll("db-1", "db");
    assert_eq!(status, 403, "{body}");
    let (status, body, key) = enroll("web-1", "web");
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    let cert = dir.path().join("web-1.pem");
    std::fs::write(&cert, answer["certificate_pem"].as_str().unwrap()).unwrap();
    // Its one use is spent.
    let (status, body, _) = enroll("web-2", "web2");
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("used up"), "{body}");
    // The host may claim only the token's images.
    let host = RawClient::new(&collector, Some((&cert, &key)));
    let mut batch = heartbeat_batch("web-1", "e1");
    let (status, body) = host
        .post("/v1/ingest", serde_json::to_vec(&batch).unwrap(), &[])
        .unwrap();
    assert_eq!(status, 403, "img-raw is not the token's: {body}");
    batch["image"]["image_id"] = serde_json::json!("img-web-2026");
    let (status, body) = host
        .post("/v1/ingest", serde_json::to_vec(&batch).unwrap(), &[])
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let actions = collector.actions();
    assert!(actions
        .iter()
        .any(|a| a["action"] == "enroll" && a["host_id"] == "web-1" && a["target"] == "web-pool"));
}

/// `driftwatch baseline create` of `tree` for `image_id`, signed with `key` if any.
fn baseline(tree: &Path, image_id: &str, key: Option<&Path>, out: &Path) {
    let mut create = Command::new(bin("driftwatch"));
    create
        .args(["baseline", "create", "--root"])
        .arg(tree)
        .args(["--image-id", image_id, "--out"])
        .arg(out);
    if let Some(key) = key {
        create.arg("--sign-key").arg(key);
    }
    ok(run(&mut create));
}

#[test]
fn unsigned_and_untrusted_baselines_are_refused_and_init_writes_a_trusted_key() {
    let signed = Image::bake("img-signed");
    let stranger = Image::bake("img-stranger");
    let collector = Collector::start_on("127.0.0.1", &[], &[&signed.public_key()], "");
    let unsigned = collector.path("unsigned.baseline");
    baseline(&signed.tree(), "img-unsigned", None, &unsigned);
    let register = |id: &str, file: &Path| {
        collector.cli(&[
            "image",
            "register",
            "--image-id",
            id,
            "--baseline",
            file.to_str().unwrap(),
        ])
    };
    let refused = register("img-unsigned", &unsigned);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{err}");
    assert!(err.contains("not signed"), "{err}");
    let refused = register("img-stranger", &stranger.baseline());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{err}");
    assert!(err.contains("trusted pipeline key"), "{err}");
    ok(register("img-signed", &signed.baseline()));
    let images = collector.json(&["image", "list"]);
    assert_eq!(images.as_array().unwrap().len(), 1, "{images:#}");

    // `init` writes a pipeline key pair its configuration trusts, and no opening for
    // unsigned baselines; the key signs baselines the public half verifies.
    let dir = tempfile::tempdir().unwrap();
    ok(run(Command::new(bin("driftwatch-collector"))
        .arg("init")
        .arg(dir.path())));
    let config = std::fs::read_to_string(dir.path().join("collector.toml")).unwrap();
    assert!(
        config.contains("trusted_keys = [\"pipeline.pub\"]"),
        "{config}"
    );
    assert!(
        !config
            .lines()
            .any(|l| l.trim_start().starts_with("allow_unsigned_baselines")),
        "{config}"
    );
    let out = dir.path().join("b");
    baseline(
        &signed.tree(),
        "img-x",
        Some(&dir.path().join("pipeline.key")),
        &out,
    );
    ok(run(Command::new(bin("driftwatch"))
        .args(["baseline", "verify"])
        .arg(&out)
        .arg("--pubkey")
        .arg(dir.path().join("pipeline.pub"))));
}

#[test]
fn a_daemon_host_claiming_never_silent_still_goes_silent() {
    let collector = Collector::start(
        "\n[hosts]\nheartbeat_interval_secs = 1\nmissed_heartbeats = 2\nsweep_interval_secs = 1\n",
    );
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = collector.issue_cert("daemon-1", certs.path());
    ok(collector.cli(&[
        "issue-host-cert",
        "--host-id",
        "ci-scan-1",
        "--no-daemon",
        "--out-dir",
        certs.path().to_str().unwrap(),
    ]));
    let scan_cert = certs.path().join("ci-scan-1.pem");
    let scan_key = certs.path().join("ci-scan-1.key");
    // Both say "interval_secs: 0" (never silent); only the collector decides.
    for (host, cert, key) in [
        ("daemon-1", &cert, &key),
        ("ci-scan-1", &scan_cert, &scan_key),
    ] {
        let client = RawClient::new(&collector, Some((cert, key)));
        let batch = serde_json::to_vec(&heartbeat_batch(host, "e1")).unwrap();
        let (status, body) = client.post("/v1/ingest", batch, &[]).unwrap();
        assert_eq!(status, 200, "{body}");
    }
    wait_until(Duration::from_secs(30), "daemon-1 silent", || {
        (collector.state("daemon-1").as_deref() == Some("silent")).then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(collector.state("ci-scan-1").as_deref(), Some("clean"));
}

#[test]
fn sighup_reads_the_token_files_again() {
    let collector = Collector::start("");
    let client = RawClient::new(&collector, None);
    let file = collector.path("operator.token");
    let old = collector.path("old.token");
    std::fs::copy(&file, &old).unwrap();
    assert_eq!(client.get_operator("/v1/hosts", &file).0, 200);
    std::fs::write(&file, "a-new-operator-token\n").unwrap();
    collector.signal(libc::SIGHUP);
    wait_until(Duration::from_secs(10), "the new token", || {
        (client.get_operator("/v1/hosts", &file).0 == 200).then_some(())
    });
    assert_eq!(client.get_operator("/v1/hosts", &old).0, 403);
    // Still serving, and the log says so.
    assert!(collector.log().contains("SIGHUP"), "{}", collector.log());
}

#[test]
fn a_host_renews_its_certificate_for_its_key_or_a_new_one() {
    let collector = Collector::start("");
    let anonymous = RawClient::new(&collector, None);
    let token = std::fs::read_to_string(collector.enrollment_token()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let csr = |name: &str| key_and_csr(dir.path(), name).expect("openssl makes the keys");
    let certificate = |answer: &str, name: &str| {
        let answer: Value = serde_json::from_str(answer).unwrap();
        let path = dir.path().join(format!("{name}.pem"));
        std::fs::write(&path, answer["certificate_pem"].as_str().unwrap()).unwrap();
        path
    };
    let report = |cert: &Path, key: &Path, event: &str| {
        let client = RawClient::new(&collector, Some((cert, key)));
        let batch = serde_json::to_vec(&heartbeat_batch("web-1", event)).unwrap();
        client.post("/v1/ingest", batch, &[]).unwrap()
    };
    let (key_a, csr_a) = csr("a");
    let request = serde_json::json!({"token": token.trim(), "host_id": "web-1", "csr_pem": csr_a});
    let (status, body) = anonymous
        .post("/v1/enroll", serde_json::to_vec(&request).unwrap(), &[])
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let cert_a = certificate(&body, "a");
    assert_eq!(report(&cert_a, &key_a, "e1").0, 200);
    // Without a certificate: 401.
    let renewal = |csr: &str| serde_json::to_vec(&serde_json::json!({ "csr_pem": csr })).unwrap();
    assert_eq!(
        anonymous.post("/v1/renew", renewal(&csr_a), &[]).unwrap().0,
        401
    );
    // The same key: a new certificate that works.
    let host = RawClient::new(&collector, Some((&cert_a, &key_a)));
    let (status, body) = host.post("/v1/renew", renewal(&csr_a), &[]).unwrap();
    assert_eq!(status, 200, "{body}");
    let cert_a2 = certificate(&body, "a2");
    assert_eq!(report(&cert_a2, &key_a, "e2").0, 200);
    // A new key: bound from now on; the replaced key is refused.
    let (key_b, csr_b) = csr("b");
    let (status, body) = host.post("/v1/renew", renewal(&csr_b), &[]).unwrap();
    assert_eq!(status, 200, "{body}");
    let cert_b = certificate(&body, "b");
    assert_eq!(report(&cert_b, &key_b, "e3").0, 200);
    let (status, body) = report(&cert_a2, &key_a, "e4");
    assert_eq!(status, 403, "{body}");
    // A revoked host cannot renew.
    ok(collector.cli(&["revoke", "web-1"]));
    let renewed_b = RawClient::new(&collector, Some((&cert_b, &key_b)));
    let (status, body) = renewed_b.post("/v1/renew", renewal(&csr_b), &[]).unwrap();
    assert_eq!(status, 403, "{body}");
    assert!(collector
        .actions()
        .iter()
        .any(|a| a["action"] == "renew" && a["detail"].as_str().unwrap().contains("new key")));
}

#[test]
fn hosts_enrolled_with_a_no_daemon_token_are_never_silent() {
    let collector = Collector::start(
        "\n[hosts]\nheartbeat_interval_secs = 1\nmissed_heartbeats = 2\nsweep_interval_secs = 1\n",
    );
    let created = collector.json(&[
        "token",
        "create",
        "--name",
        "ci-scans",
        "--role",
        "enroll",
        "--no-daemon",
    ]);
    assert_eq!(created["daemon"], false, "{created}");
    let scans = created["token"].as_str().unwrap().to_string();
    let daemons = collector.json(&["token", "create", "--name", "fleet", "--role", "enroll"]);
    assert_eq!(daemons["daemon"], true, "{daemons}");
    let daemons = daemons["token"].as_str().unwrap().to_string();
    // Only enroll tokens say it.
    let output = collector.cli(&[
        "token",
        "create",
        "--name",
        "v",
        "--role",
        "viewer",
        "--no-daemon",
    ]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("400"));
    let listed = ok(collector.cli(&["token", "list"]));
    let line = listed.lines().find(|l| l.starts_with("ci-scans")).unwrap();
    assert!(line.contains("no-daemon"), "{listed}");

    let dir = tempfile::tempdir().unwrap();
    let anonymous = RawClient::new(&collector, None);
    for (host, token) in [("scan-1", &scans), ("daemon-2", &daemons)] {
        let (key, csr) = key_and_csr(dir.path(), host).expect("openssl makes the keys");
        let request = serde_json::json!({"token": token, "host_id": host, "csr_pem": csr});
        let (status, body) = anonymous
            .post("/v1/enroll", serde_json::to_vec(&request).unwrap(), &[])
            .unwrap();
        assert_eq!(status, 200, "{body}");
        let answer: Value = serde_json::from_str(&body).unwrap();
        let cert = dir.path().join(format!("{host}.pem"));
        std::fs::write(&cert, answer["certificate_pem"].as_str().unwrap()).unwrap();
        // Both claim a daemon's interval; the token decides.
        let mut batch = heartbeat_batch(host, "e1");
        batch["events"][0]["body"]["interval_secs"] = 30.into();
        let client = RawClient::new(&collector, Some((&cert, &key)));
        let (status, body) = client
            .post("/v1/ingest", serde_json::to_vec(&batch).unwrap(), &[])
            .unwrap();
        assert_eq!(status, 200, "{body}");
    }
    wait_until(Duration::from_secs(30), "daemon-2 silent", || {
        (collector.state("daemon-2").as_deref() == Some("silent")).then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(collector.state("scan-1").as_deref(), Some("clean"));
}
