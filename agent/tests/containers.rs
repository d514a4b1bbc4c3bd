//! Real containers, run with podman (and runc) from an image the test builds from a
//! static busybox: a clean container has no drift; writes inside it are found by
//! `driftwatch containers`, by `check` of / and, within seconds, by the daemon, each
//! naming the container; a dropped executable that runs is a process finding; writes
//! to a volume, to /tmp and to a path the workload declares are not drift; a removed
//! container is no longer watched while its findings stay.
//!
//! Needs root, podman, runc and Debian's busybox-static; without them the test says
//! why and passes, except under `CI=true`, where `.ci/run` must have installed them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

use serde_json::Value;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use util::{http_get, is_root, BIN};

const RUNC: &str = "/usr/sbin/runc";

/// A tiny host baseline: the container checks are what this test is about.
const POLICY: &str = r#"
[scan]
paths = ["/etc/hostname"]
[runtime]
enabled = false
[packages]
enabled = false
[[containers.expected]]
images = ["localhost/driftwatch-test-*"]
paths = ["/srv/declared"]
"#;

fn prerequisites() -> Result<(), String> {
    if !is_root() {
        return Err("needs root".into());
    }
    for tool in ["podman", RUNC, "tar"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Err(format!(
                "`{tool}` is not installed (apt-get install podman runc)"
            ));
        }
    }
    let file = Command::new("sh")
        .args(["-c", "ldd /bin/busybox 2>&1"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if !Path::new("/bin/busybox").exists() || !file.contains("not a dynamic executable") {
        return Err("a static /bin/busybox is missing (apt-get install busybox-static)".into());
    }
    Ok(())
}

/// Whether to run; a missing prerequisite fails under CI.
fn ready() -> bool {
    match prerequisites() {
        Ok(()) => true,
        Err(why) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("containers test cannot run under CI: {why}")
        }
        Err(why) => {
            eprintln!("skipping: {why}");
            false
        }
    }
}

fn podman(args: &[&str]) -> String {
    let out = Command::new("podman")
        .arg("--runtime")
        .arg(RUNC)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "podman {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The image, a volume and the containers of one test, removed when dropped.
struct Podman {
    image: String,
    volume: String,
    containers: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Drop for Podman {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = Command::new("podman")
                .args(["rm", "-f", "-t", "0", c])
                .output();
        }
        let _ = Command::new("podman")
            .args(["volume", "rm", "-f", &self.volume])
            .output();
        let _ = Command::new("podman")
            .args(["rmi", "-f", &self.image])
            .output();
    }
}

impl Podman {
    /// Imports an image of busybox, its applets, `/etc/motd` and `/etc/passwd`.
    fn new() -> Podman {
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path().join("rootfs");
        for d in [
            "bin",
            "etc",
            "tmp",
            "usr/local/bin",
            "srv",
            "opt",
            "var/log",
        ] {
            std::fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
        for applet in ["sh", "sleep", "cat", "cp", "chmod", "rm", "mkdir", "echo"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
        std::fs::write(rootfs.join("etc/motd"), "welcome\n").unwrap();
        std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0::/:/bin/sh\n").unwrap();
        let tarball = dir.path().join("image.tar");
        let status = Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .arg("-cf")
            .arg(&tarball)
            .arg(".")
            .status()
            .unwrap();
        assert!(status.success());
        let tag = format!("localhost/driftwatch-test-{}:1", std::process::id());
        podman(&["import", "-q", tarball.to_str().unwrap(), &tag]);
        Podman {
            image: tag,
            volume: format!("driftwatch-test-{}", std::process::id()),
            containers: Vec::new(),
            _dir: dir,
        }
    }

    fn run(&mut self, name: &str) -> String {
        let name = format!("dwt-{}-{name}", std::process::id());
        let volume = format!("{}:/vol", self.volume);
        let id = podman(&[
            "run",
            "-d",
            "--name",
            &name,
            "--ulimit",
            "nofile=20000:20000",
            "--ulimit",
            "nproc=4096:4096",
            "--network",
            "none",
            "-v",
            &volume,
            "--annotation",
            "driftwatch.io/ignore-paths=/opt/own",
            &self.image,
            "/bin/sleep",
            "600",
        ]);
        self.containers.push(id.clone());
        id
    }
}

fn exec(id: &str, script: &str) {
    podman(&["exec", id, "/bin/sh", "-c", script]);
}

fn driftwatch(args: &[&str]) -> (Option<i32>, Value) {
    let out = Command::new(BIN).args(args).output().unwrap();
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "driftwatch {args:?}: not JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), json)
}

/// (kind, change or reason, path or exe) of the findings naming container `id`.
fn of_container(findings: &[Value], id: &str) -> Vec<(String, String, String)> {
    let mut found: Vec<(String, String, String)> = findings
        .iter()
        .map(|f| f.get("finding").unwrap_or(f))
        .filter(|f| f["container"]["id"] == id)
        .map(|f| {
            let what = f["change"].as_str().or(f["reason"].as_str()).unwrap_or("");
            let path = f["path"].as_str().or(f["exe"].as_str()).unwrap_or("");
            (
                f["kind"].as_str().unwrap_or("").to_string(),
                what.to_string(),
                path.to_string(),
            )
        })
        .collect();
    found.sort();
    found.dedup();
    found
}

fn row(kind: &str, what: &str, path: &str) -> (String, String, String) {
    (kind.into(), what.into(), path.into())
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn status(port: u16) -> Option<Value> {
    http_get(port, "/status").and_then(|(_, body)| serde_json::from_str(&body).ok())
}

fn wait_for(port: u16, limit: Duration, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        if let Some(status) = status(port).filter(|s| done(s)) {
            return status;
        }
        if start.elapsed() > limit {
            panic!(
                "timed out waiting for {what}; last status: {:#}",
                status(port).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn watched(status: &Value, id: &str) -> bool {
    status["containers"]
        .as_array()
        .is_some_and(|all| all.iter().any(|c| c["id"] == id))
}

#[test]
fn real_containers_are_checked_against_their_images() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, POLICY).unwrap();
    let policy_arg = policy.to_str().unwrap().to_string();
    let baseline = dir.path().join("baseline");
    let out = Command::new(BIN)
        .args([
            "baseline",
            "create",
            "--root",
            "/",
            "--policy",
            &policy_arg,
            "--out",
        ])
        .arg(&baseline)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut engine = Podman::new();
    let id = engine.run("web");
    let listed = |id: &str| {
        let (_, json) = driftwatch(&["containers", "--format", "json", "--policy", &policy_arg]);
        json["containers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("container {id} not listed: {json:#}"))
    };

    // Clean: seen, named, no drift.
    let clean = listed(&id);
    assert_eq!(clean["runtime"], "podman");
    assert_eq!(clean["image"], engine.image.as_str());
    assert!(clean["name"].as_str().unwrap().ends_with("-web"));
    assert_eq!(clean["drift"], 0, "{clean:#}");

    // The daemon, on the host's root, follows the container from here on.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "baseline = {baseline:?}\npolicy = {policy:?}\nstate_dir = {:?}\nrun_dir = {:?}\n[health]\nlisten = \"127.0.0.1:{port}\"\n",
            dir.path().join("state"),
            dir.path().join("run"),
        ),
    )
    .unwrap();
    let _daemon = Daemon(
        Command::new(BIN)
            .args(["run", "--config"])
            .arg(&config)
            .env_remove("NOTIFY_SOCKET")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("daemon.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_for(
        port,
        Duration::from_secs(60),
        "the container to be watched",
        |s| watched(s, &id) && s["full_checks"].as_u64() >= Some(1),
    );

    // Drift, and writes that are not drift.
    let written = Instant::now();
    exec(
        &id,
        "echo '#!/bin/sh' > /usr/local/bin/tool && chmod 755 /usr/local/bin/tool && \
         echo changed > /etc/motd && rm /etc/passwd && chmod 4755 /bin/busybox && \
         echo x > /tmp/scratch && echo x > /vol/data && mkdir -p /srv/declared /opt/own && \
         echo x > /srv/declared/cache && echo x > /opt/own/state",
    );
    let expected_files = vec![
        row("file", "added", "/usr/local/bin/tool"),
        row("file", "modified", "/bin/busybox"),
        row("file", "modified", "/etc/motd"),
        row("file", "removed", "/etc/passwd"),
    ];
    let seen = wait_for(
        port,
        Duration::from_secs(10),
        "the daemon to find the writes",
        |s| of_container(s["findings"].as_array().unwrap(), &id).len() >= expected_files.len(),
    );
    let latency = written.elapsed();
    let mut sorted = expected_files.clone();
    sorted.sort();
    assert_eq!(
        of_container(seen["findings"].as_array().unwrap(), &id),
        sorted
    );
    eprintln!("daemon found the writes {latency:?} after podman exec began");

    // A dropped executable that runs.
    exec(
        &id,
        "cp /bin/busybox /usr/local/bin/sleep && chmod 755 /usr/local/bin/sleep",
    );
    podman(&["exec", "-d", &id, "/usr/local/bin/sleep", "300"]);
    let seen = wait_for(port, Duration::from_secs(10), "the process finding", |s| {
        of_container(s["findings"].as_array().unwrap(), &id).contains(&row(
            "process",
            "not_in_image",
            "/usr/local/bin/sleep",
        ))
    });
    let process = seen["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["finding"])
        .find(|f| f["kind"] == "process" && f["container"]["id"] == id)
        .unwrap();
    assert_eq!(process["severity"], "critical");
    assert!(process["cmdline"].as_str().unwrap().contains("300"));
    assert_eq!(process["container"]["runtime"], "podman");

    // The same from the command line, and from `check` of /.
    let drifted = listed(&id);
    let rows = of_container(drifted["findings"].as_array().unwrap(), &id);
    for row in &expected_files {
        assert!(rows.contains(row), "{row:?} missing: {rows:?}");
    }
    for quiet in ["/tmp", "/vol", "/srv/declared", "/opt/own"] {
        assert!(
            !rows.iter().any(|(_, _, path)| path.starts_with(quiet)),
            "{quiet} must not be drift: {rows:?}"
        );
    }
    let (code, report) = driftwatch(&[
        "check",
        "--root",
        "/",
        "--baseline",
        baseline.to_str().unwrap(),
        "--policy",
        &policy_arg,
        "--format",
        "json",
    ]);
    assert_eq!(code, Some(1));
    let rows = of_container(report["findings"].as_array().unwrap(), &id);
    assert!(
        rows.contains(&row("file", "added", "/usr/local/bin/tool")),
        "{rows:?}"
    );

    // Removed: no longer watched; its findings stay in the history.
    podman(&["rm", "-f", "-t", "0", &id]);
    let after = wait_for(
        port,
        Duration::from_secs(10),
        "the container to be forgotten",
        |s| !watched(s, &id),
    );
    assert!(of_container(after["findings"].as_array().unwrap(), &id).len() >= 5);
    assert!(latency < Duration::from_secs(10));
}

/// The agent's container image: `FROM scratch` with the static binary that
/// `packaging/build.sh` builds; it runs.
#[test]
fn the_containerfile_builds_an_image_that_runs_the_agent() {
    if !ready() {
        return;
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let binary = repo.join("target/x86_64-unknown-linux-gnu/release/driftwatch");
    if !binary.exists() {
        let why = format!(
            "{} is not built (run packaging/build.sh first; .ci/run does)",
            binary.display()
        );
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "the Containerfile test cannot run under CI: {why}"
        );
        eprintln!("skipping: {why}");
        return;
    }
    let tag = format!("localhost/driftwatch-agent-test-{}:1", std::process::id());
    let built = Command::new("podman")
        .args([
            "build",
            "-q",
            "-f",
            "packaging/kubernetes/Containerfile",
            "-t",
            &tag,
            ".",
        ])
        .current_dir(repo)
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let ran = Command::new("podman")
        .args([
            "--runtime",
            RUNC,
            "run",
            "--rm",
            "--network",
            "none",
            "--ulimit",
            "nofile=20000:20000",
            "--ulimit",
            "nproc=4096:4096",
            &tag,
            "--version",
        ])
        .output()
        .unwrap();
    let _ = Command::new("podman").args(["rmi", "-f", &tag]).output();
    assert!(
        ran.status.success(),
        "{}",
        String::from_utf8_lossy(&ran.stderr)
    );
    assert!(String::from_utf8_lossy(&ran.stdout).starts_with("driftwatch "));
}
