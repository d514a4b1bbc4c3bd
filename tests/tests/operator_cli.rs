//! The operator's CLI as a shell user drives it: every listing piped into a reader
//! that stops early (`driftwatch-collector hosts | head`) ends quietly with exit 0,
//! never a panic.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use driftwatch_tests::{bin, heartbeat_batch, ok, Collector, Image, RawClient};
use std::io::Read;
use std::process::{Command, Stdio};

/// Runs the CLI with its stdout a pipe whose reader is already gone: the first write
/// meets EPIPE, as under `| head` once head has exited.
fn with_closed_stdout(collector: &Collector, args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(bin("driftwatch-collector"))
        .args(args)
        .arg("--config")
        .arg(collector.config())
        .env("DRIFTWATCH_COLLECTOR_URL", collector.url())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (child.wait().unwrap().code(), stderr)
}

#[test]
fn listings_into_a_closed_pipe_end_quietly() {
    let collector = Collector::start("");
    let image = Image::bake("img-cli");
    image.register(&collector);
    let certs = tempfile::tempdir().unwrap();
    for i in 0..3 {
        let id = format!("cli-{i}");
        let (cert, key) = collector.issue_cert(&id, certs.path());
        let client = RawClient::new(&collector, Some((&cert, &key)));
        let body = serde_json::to_vec(&heartbeat_batch(&id, "e1")).unwrap();
        let (status, text) = client.post("/v1/ingest", body, &[]).unwrap();
        assert_eq!(status, 200, "{text}");
    }
    ok(collector.cli(&["mark", "cli-0", "--reason", "test"]));
    for args in [
        &["hosts"][..],
        &["host", "cli-0"],
        &["image", "list"],
        &["actions"],
        &["hosts", "--format", "json"],
        &["host", "cli-0", "--format", "json"],
        &["actions", "--format", "json"],
    ] {
        let (code, stderr) = with_closed_stdout(&collector, args);
        assert_eq!(code, Some(0), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    // And through a real shell pipe into head, the exit status of the CLI itself.
    let script = format!(
        "{:?} host cli-0 --config {:?} | head -n 1 >/dev/null; exit ${{PIPESTATUS[0]}}",
        bin("driftwatch-collector"),
        collector.config()
    );
    let output = Command::new("bash")
        .args(["-c", &script])
        .env("DRIFTWATCH_COLLECTOR_URL", collector.url())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
