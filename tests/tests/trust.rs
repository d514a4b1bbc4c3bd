//! Trust at the collector, through the real binaries over real TLS: named tokens made,
//! listed and revoked with the CLI, each doing only what its role allows, and the
//! action log naming the token that acted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use driftwatch_tests::{ok, Collector};
use serde_json::Value;
use std::path::Path;

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
