//! The daemon, driven for real: a `driftwatch run` process on a scratch root, its
//! loopback endpoint polled over TCP, systemd's notification socket played by a test
//! socket, signals sent with kill(2).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

use serde_json::Value;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use util::{Tree, BIN};

/// Critical rule on /usr/bin, low everywhere else.
const POLICY: &str = r#"
[default]
attributes = ["type","mode","uid","gid","size","content","link_target","xattrs","rdev"]
severity = "low"
[[rule]]
name = "binaries"
paths = ["/usr/bin"]
severity = "critical"
"#;

struct Daemon {
    child: Child,
    run_dir: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn write_config(t: &Tree, port: u16, extra: &str) -> PathBuf {
    let config = t.outside("agent.toml");
    std::fs::write(
        &config,
        format!(
            "root = {:?}\nbaseline = {:?}\nstate_dir = {:?}\nrun_dir = {:?}\n{extra}\n[health]\nlisten = \"127.0.0.1:{port}\"\n[replacement]\ncommand = [\"/bin/sh\", \"-c\", \"echo \\\"$DRIFTWATCH_REASON\\\" > {}\"]\n",
            t.root(),
            t.baseline(),
            t.outside("state"),
            t.outside("run"),
            t.outside("command-ran").display(),
        ),
    )
    .unwrap();
    config
}

fn start(t: &Tree, config: &Path, notify: Option<&Path>) -> Daemon {
    let mut command = Command::new(BIN);
    command
        .args(["run", "--config"])
        .arg(config)
        .env_remove("JOURNAL_STREAM")
        .env("RUST_LOG", "driftwatch=debug")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    match notify {
        Some(socket) => command.env("NOTIFY_SOCKET", socket),
        None => command.env_remove("NOTIFY_SOCKET"),
    };
    Daemon {
        child: command.spawn().unwrap(),
        run_dir: t.outside("run"),
    }
}

/// GET on the daemon's endpoint: (status code, body), or None while it is not up.
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let code = response.get(9..12)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n")?.1.to_string();
    Some((code, body))
}

fn status(port: u16) -> Option<Value> {
    get(port, "/status").and_then(|(_, body)| serde_json::from_str(&body).ok())
}

/// Polls until `done` holds for the status, failing after `limit`.
fn wait_for(port: u16, limit: Duration, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        if let Some(status) = status(port) {
            if done(&status) {
                return status;
            }
            if start.elapsed() > limit {
                panic!("timed out waiting for {what}; last status: {status:#}");
            }
        } else if start.elapsed() > limit {
            panic!("timed out waiting for {what}: endpoint not answering");
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn finding_paths(status: &Value) -> Vec<String> {
    status["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["finding"]["path"].as_str().unwrap_or("").to_string())
        .collect()
}

fn signal(child: &Child, signal: i32) {
    // SAFETY: kill(2) on our own child's pid; no memory is involved.
    let rc = unsafe { libc::kill(child.id() as i32, signal) };
    assert_eq!(rc, 0);
}

fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            start.elapsed() < limit,
            "daemon did not stop within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn baked_tree() -> Tree {
    let t = Tree::new();
    t.write_policy(POLICY);
    t.file("/usr/bin/tool", b"tool v1\n")
        .file("/usr/bin/other", b"other\n")
        .file("/etc/app.conf", b"x=1\n");
    t.create();
    t
}

#[test]
fn drift_is_found_in_real_time_marks_the_host_and_survives_a_restart() {
    let t = baked_tree();
    let port = free_port();
    let config = write_config(&t, port, "");
    let socket_path = t.outside("notify.sock");
    let notify = UnixDatagram::bind(&socket_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut daemon = start(&t, &config, Some(&socket_path));

    let mut message = [0u8; 256];
    let n = notify
        .recv(&mut message)
        .expect("a notification from the daemon");
    assert!(String::from_utf8_lossy(&message[..n]).contains("READY=1"));
    wait_for(port, Duration::from_secs(20), "the boot check", |s| {
        s["state"] == "clean"
    });
    assert_eq!(get(port, "/healthz").unwrap().0, 200);

    // A low finding: remembered, host not marked.
    t.file("/etc/app.conf", b"x=2\n");
    signal(&daemon.child, libc::SIGHUP); // /etc is not watched; a reload re-checks
    let status = wait_for(port, Duration::from_secs(20), "the /etc finding", |s| {
        finding_paths(s).contains(&"/etc/app.conf".to_string())
    });
    assert_eq!(status["state"], "drifted", "{status:#}");
    assert_eq!(get(port, "/healthz").unwrap().0, 200);

    // A critical change under a watched path: seen in real time, the host is marked.
    let changed_at = Instant::now();
    t.file("/usr/bin/tool", b"tool v2\n");
    let status = wait_for(port, Duration::from_secs(5), "the real-time finding", |s| {
        finding_paths(s).contains(&"/usr/bin/tool".to_string())
    });
    eprintln!("watch latency: {:?}", changed_at.elapsed());
    assert_eq!(status["state"], "marked", "{status:#}");
    let (code, body) = get(port, "/healthz").unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("/usr/bin/tool"), "{body}");
    let marker = std::fs::read_to_string(daemon.run_dir.join("replace-me")).unwrap();
    assert!(marker.contains("/usr/bin/tool"), "{marker}");
    let waited = Instant::now();
    while !t.outside("command-ran").exists() {
        assert!(
            waited.elapsed() < Duration::from_secs(5),
            "replacement command did not run"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (_, metrics) = get(port, "/metrics").unwrap();
    assert!(metrics.contains("driftwatch_marked 1"), "{metrics}");
    let first_seen = status["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["finding"]["path"] == "/usr/bin/tool")
        .unwrap()["first_seen"]
        .clone();

    // SIGTERM: a clean stop within 5 s.
    signal(&daemon.child, libc::SIGTERM);
    let exit = wait_exit(&mut daemon.child, Duration::from_secs(5));
    assert!(exit.success(), "{exit:?}");

    // Restart: still marked, nothing reported twice, first sighting kept — even though
    // the file is put back.
    t.file("/usr/bin/tool", b"tool v1\n");
    let port2 = free_port();
    let config = write_config(&t, port2, "");
    let restarted = start(&t, &config, None);
    let status = wait_for(
        port2,
        Duration::from_secs(20),
        "the restart's boot check",
        |s| s["full_checks"].as_u64() >= Some(1),
    );
    assert_eq!(status["state"], "marked", "{status:#}");
    let paths = finding_paths(&status);
    assert_eq!(
        paths.iter().filter(|p| *p == "/usr/bin/tool").count(),
        1,
        "{paths:?}"
    );
    let again = status["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["finding"]["path"] == "/usr/bin/tool")
        .unwrap()["first_seen"]
        .clone();
    assert_eq!(again, first_seen);
    assert_eq!(get(port2, "/healthz").unwrap().0, 503);
    drop(restarted);
}

#[test]
fn a_tampered_baseline_marks_the_host_at_start() {
    let t = baked_tree();
    let mut bytes = std::fs::read(t.baseline()).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    std::fs::write(t.baseline(), bytes).unwrap();
    let port = free_port();
    let config = write_config(&t, port, "");
    let _daemon = start(&t, &config, None);
    let status = wait_for(port, Duration::from_secs(20), "the mark", |s| {
        s["state"] == "marked"
    });
    let reason = status["mark"]["reason"].as_str().unwrap();
    assert!(reason.contains("failed verification"), "{reason}");
    assert_eq!(get(port, "/healthz").unwrap().0, 503);
}

#[test]
fn a_bad_config_is_refused_naming_the_key() {
    let t = Tree::new();
    let config = t.outside("agent.toml");
    std::fs::write(&config, "[schedule]\nfast_verify_interval_secs = 0\n").unwrap();
    let out = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("schedule.fast_verify_interval_secs"),
        "{stderr}"
    );
    std::fs::write(&config, "colour = true\n").unwrap();
    let out = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown field `colour`"));
}

#[test]
fn status_command_reads_the_running_daemon() {
    let t = baked_tree();
    let port = free_port();
    let config = write_config(&t, port, "");
    let _daemon = start(&t, &config, None);
    wait_for(port, Duration::from_secs(20), "the boot check", |s| {
        s["state"] == "clean"
    });
    let out = Command::new(BIN)
        .args(["status", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("driftwatch: clean"));
    let out = Command::new(BIN)
        .args(["status", "--format", "json", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["state"], "clean");
    // Nobody listening: exit 2 and a sentence saying so.
    let other = write_config(&t, free_port(), "");
    let out = Command::new(BIN)
        .args(["status", "--config"])
        .arg(&other)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is the daemon running?"));
}
