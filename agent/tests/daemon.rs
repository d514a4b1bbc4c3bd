//! The daemon, driven for real: a `driftwatch run` process on a scratch root, its
//! loopback endpoint polled over TCP, systemd's notification socket played by a test
//! socket, signals sent with kill(2).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

use serde_json::Value;
use std::net::TcpListener;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use util::{http_get, Tree, BIN};

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
    start_via(t, config, notify, &[])
}

/// Starts the daemon through a wrapper command (e.g. `unshare …`), or directly.
fn start_via(t: &Tree, config: &Path, notify: Option<&Path>, wrapper: &[&str]) -> Daemon {
    let mut command = match wrapper.split_first() {
        Some((program, args)) => {
            let mut command = Command::new(program);
            command.args(args).arg(BIN);
            command
        }
        None => Command::new(BIN),
    };
    command
        .args(["run", "--config"])
        .arg(config)
        .env_remove("JOURNAL_STREAM")
        .env("RUST_LOG", "driftwatch=debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(t.outside("daemon.log")).unwrap());
    match notify {
        // As systemd does for a unit with WatchdogSec=300ms.
        Some(socket) => command
            .env("NOTIFY_SOCKET", socket)
            .env("WATCHDOG_USEC", "300000"),
        None => command
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC"),
    };
    Daemon {
        child: command.spawn().unwrap(),
        run_dir: t.outside("run"),
    }
}

fn status(port: u16) -> Option<Value> {
    http_get(port, "/status").and_then(|(_, body)| serde_json::from_str(&body).ok())
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

/// When the finding at `path` was first seen.
fn first_seen_of(status: &Value, path: &str) -> Value {
    status["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["finding"]["path"] == path)
        .unwrap_or_else(|| panic!("no finding at {path}: {status:#}"))["first_seen"]
        .clone()
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

/// Eight files of `size` bytes under /usr/lib: content that takes a while to hash.
fn add_big_files(t: &Tree, size: usize) {
    let big = vec![7u8; size];
    for i in 0..8 {
        t.file(format!("/usr/lib/big{i}"), &big);
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
    // The watchdog is fed at half its interval.
    let fed = Instant::now();
    loop {
        let n = notify.recv(&mut message).expect("a watchdog notification");
        if String::from_utf8_lossy(&message[..n]).contains("WATCHDOG=1") {
            break;
        }
    }
    assert!(
        fed.elapsed() < Duration::from_secs(2),
        "{:?}",
        fed.elapsed()
    );
    wait_for(port, Duration::from_secs(20), "the boot check", |s| {
        s["state"] == "clean"
    });
    assert_eq!(http_get(port, "/healthz").unwrap().0, 200);

    // A low finding: remembered, host not marked.
    t.file("/etc/app.conf", b"x=2\n");
    signal(&daemon.child, libc::SIGHUP); // /etc is not watched; a reload re-checks
    let status = wait_for(port, Duration::from_secs(20), "the /etc finding", |s| {
        finding_paths(s).contains(&"/etc/app.conf".to_string())
    });
    assert_eq!(status["state"], "drifted", "{status:#}");
    assert_eq!(http_get(port, "/healthz").unwrap().0, 200);

    // A critical change under a watched path: seen in real time, the host is marked.
    let changed_at = Instant::now();
    t.file("/usr/bin/tool", b"tool v2\n");
    let status = wait_for(port, Duration::from_secs(5), "the real-time finding", |s| {
        finding_paths(s).contains(&"/usr/bin/tool".to_string())
    });
    eprintln!("watch latency: {:?}", changed_at.elapsed());
    assert_eq!(status["state"], "marked", "{status:#}");
    let (code, body) = http_get(port, "/healthz").unwrap();
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
    let (_, metrics) = http_get(port, "/metrics").unwrap();
    assert!(metrics.contains("driftwatch_marked 1"), "{metrics}");
    let first_seen = first_seen_of(&status, "/usr/bin/tool");

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
    let again = first_seen_of(&status, "/usr/bin/tool");
    assert_eq!(again, first_seen);
    assert_eq!(http_get(port2, "/healthz").unwrap().0, 503);
    drop(restarted);
}

#[test]
fn every_kind_of_change_is_seen_in_real_time_on_status_and_in_the_log() {
    let t = baked_tree();
    std::fs::create_dir_all(t.path("/usr/bin")).unwrap();
    let port = free_port();
    let config = write_config(&t, port, "");
    let _daemon = start(&t, &config, None);
    wait_for(port, Duration::from_secs(20), "the boot check", |s| {
        s["state"] == "clean"
    });
    let seen = |path: &str, change: &str| {
        let status = wait_for(port, Duration::from_secs(5), path, |s| {
            finding_paths(s).contains(&path.to_string())
        });
        let finding = status["findings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["finding"]["path"] == path)
            .unwrap()
            .clone();
        assert_eq!(finding["finding"]["change"], change, "{finding:#}");
    };
    t.file("/usr/bin/new", b"x");
    seen("/usr/bin/new", "added");
    t.file("/usr/bin/tool", b"tool v9\n");
    seen("/usr/bin/tool", "modified");
    t.chmod("/usr/bin/other", 0o600);
    seen("/usr/bin/other", "modified");
    if util::is_root() {
        std::os::unix::fs::chown(t.path("/usr/bin/new"), Some(4321), Some(4321)).unwrap();
        wait_for(port, Duration::from_secs(5), "the owner change", |s| {
            s["findings"].as_array().unwrap().iter().any(|r| {
                r["finding"]["path"] == "/usr/bin/new" && r["finding"]["observed"]["uid"] == 4321
            })
        });
    }
    t.remove("/usr/bin/tool");
    wait_for(port, Duration::from_secs(5), "the removal", |s| {
        s["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["finding"]["path"] == "/usr/bin/tool" && r["finding"]["change"] == "removed")
    });
    let log = std::fs::read_to_string(t.outside("daemon.log")).unwrap();
    for path in ["/usr/bin/new", "/usr/bin/tool", "/usr/bin/other"] {
        assert!(
            log.contains(&format!("key=file:{path}")),
            "{path} not in the log:\n{log}"
        );
    }
}

#[test]
fn fast_verification_catches_what_watching_does_not() {
    let t = baked_tree();
    let port = free_port();
    // /etc is not watched (no critical rule covers it): only scheduled verification
    // can see a change there.
    let config = write_config(&t, port, "");
    with_fast_schedule(&config);
    let _daemon = start(&t, &config, None);
    wait_for(port, Duration::from_secs(20), "the boot check", |s| {
        s["state"] == "clean"
    });
    // Same size, mtime put back: only the content (and the ctime) differ.
    let path = t.path("/etc/app.conf");
    let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
    std::fs::write(&path, b"x=9\n").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let status = wait_for(port, Duration::from_secs(20), "fast verification", |s| {
        finding_paths(s).contains(&"/etc/app.conf".to_string())
    });
    assert!(status["fast_checks"].as_u64() >= Some(1), "{status:#}");
    assert_eq!(status["state"], "drifted");
}

fn with_fast_schedule(config: &Path) {
    let text = std::fs::read_to_string(config).unwrap()
        + "[schedule]\nfast_verify_interval_secs = 1\njitter = 0.0\n";
    std::fs::write(config, text).unwrap();
}

#[test]
fn an_exhausted_watch_limit_is_reported_and_scheduled_verification_covers_it() {
    if !util::root_or_skip() || !util::have_tool("unshare") {
        return;
    }
    let t = Tree::new();
    t.write_policy(POLICY);
    for i in 0..20 {
        t.file(format!("/usr/bin/d{i:02}/tool"), b"v1\n");
    }
    t.create();
    let port = free_port();
    let config = write_config(&t, port, "");
    with_fast_schedule(&config);
    // A user namespace of our own, allowed 3 inotify watches: the host's limit is left
    // alone, the daemon hits its own.
    let _daemon = start_via(
        &t,
        &config,
        None,
        &[
            "unshare",
            "--user",
            "--map-root-user",
            "sh",
            "-c",
            "echo 3 > /proc/sys/user/max_inotify_watches && exec \"$0\" \"$@\"",
        ],
    );
    let status = wait_for(port, Duration::from_secs(20), "the degradation", |s| {
        s["degradations"].as_array().is_some_and(|d| !d.is_empty())
    });
    let degradation = status["degradations"][0].as_str().unwrap().to_string();
    assert!(degradation.contains("watch limit"), "{degradation}");
    // A directory that got no watch: the scheduled fast verification still finds it.
    t.file("/usr/bin/d19/tool", b"v2\n");
    wait_for(port, Duration::from_secs(20), "the finding", |s| {
        finding_paths(s).contains(&"/usr/bin/d19/tool".to_string())
    });
}

#[test]
fn lost_watch_events_trigger_a_full_check() {
    if !util::root_or_skip() {
        return;
    }
    const QUEUE_LIMIT: &str = "/proc/sys/fs/inotify/max_queued_events";
    let t = baked_tree();
    let port = free_port();
    let config = write_config(&t, port, "");
    // The queue limit is taken when an inotify instance is created: lower it only while
    // the daemon starts.
    let original = std::fs::read_to_string(QUEUE_LIMIT).unwrap();
    std::fs::write(QUEUE_LIMIT, "16").unwrap();
    let daemon = start(&t, &config, None);
    let started = wait_for(port, Duration::from_secs(20), "the boot check", |s| {
        s["state"] == "clean"
    });
    std::fs::write(QUEUE_LIMIT, original.trim()).unwrap();
    assert_eq!(started["rescans"], 0);
    // A burst far beyond 16 queued events, then one real drift among them.
    for i in 0..2000 {
        t.file(format!("/usr/bin/burst{}", i % 50), format!("{i}"));
    }
    t.file("/usr/bin/tool", b"tampered\n");
    let status = wait_for(
        port,
        Duration::from_secs(30),
        "a rescan finding the drift",
        |s| {
            s["rescans"].as_u64() >= Some(1)
                && finding_paths(s).contains(&"/usr/bin/tool".to_string())
        },
    );
    assert_eq!(status["state"], "marked");
    // Paced, at background priority, like a scheduled check: an event storm never
    // turns into an unthrottled re-hash of the host (issue 10 §4).
    let log = std::fs::read_to_string(t.outside("daemon.log")).unwrap();
    let rescan = log
        .lines()
        .find(|l| l.contains("Check finished.") && l.contains("why=\"rescan\""))
        .unwrap_or_else(|| panic!("no rescan check in the log:\n{log}"));
    assert!(rescan.contains("depth=Full"), "{rescan}");
    drop(daemon);
}

#[test]
fn killed_mid_scan_the_daemon_restarts_with_its_state_intact() {
    let t = baked_tree();
    // Enough content that the boot check is still running when the daemon is killed.
    add_big_files(&t, 64 << 20);
    t.file("/usr/bin/tool", b"tampered\n");
    t.create();
    t.file("/usr/bin/tool", b"tampered again\n");
    let port = free_port();
    let config = write_config(&t, port, "");
    let first = start(&t, &config, None);
    let status = wait_for(port, Duration::from_secs(60), "the first finding", |s| {
        s["state"] == "marked"
    });
    let sightings = |status: &Value| -> Vec<(String, String)> {
        status["findings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["finding"]["path"].as_str().unwrap_or("").to_string(),
                    r["first_seen"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let before = sightings(&status);
    drop(first); // SIGKILL, whatever it was doing
    let mut second = start(&t, &config, None);
    // Kill the second one mid-scan (its boot check reads 512 MiB).
    std::thread::sleep(Duration::from_millis(150));
    second.child.kill().unwrap();
    second.child.wait().unwrap();
    let port3 = free_port();
    let config3 = write_config(&t, port3, "");
    let _third = start(&t, &config3, None);
    let status = wait_for(port3, Duration::from_secs(60), "the restarted check", |s| {
        s["full_checks"].as_u64() >= Some(1)
    });
    assert_eq!(status["state"], "marked", "{status:#}");
    assert_eq!(
        sightings(&status),
        before,
        "state intact, nothing duplicated"
    );
}

#[test]
fn sigterm_stops_a_paced_full_check_within_seconds_and_applies_nothing() {
    let t = baked_tree();
    add_big_files(&t, 32 << 20);
    t.create();
    let port = free_port();
    let config = write_config(&t, port, "");
    // A scheduled full re-hash paced to 4 MiB/s: 256 MiB would take a minute.
    let text = std::fs::read_to_string(&config).unwrap()
        + "[schedule]\nfull_verify_interval_secs = 1\njitter = 0.0\n[throttle]\nread_bytes_per_sec = 4194304\n";
    std::fs::write(&config, text).unwrap();
    let mut daemon = start(&t, &config, None);
    wait_for(port, Duration::from_secs(30), "the boot check", |s| {
        s["state"] == "clean"
    });
    std::thread::sleep(Duration::from_secs(3)); // the paced check is under way
    let asked = Instant::now();
    signal(&daemon.child, libc::SIGTERM);
    let exit = wait_exit(&mut daemon.child, Duration::from_secs(5));
    assert!(exit.success(), "{exit:?}");
    eprintln!("stopped {:?} after SIGTERM", asked.elapsed());
    // The cut-short walk was not applied: nothing looks removed.
    let state = std::fs::read_to_string(t.outside("state").join("state.json")).unwrap();
    let state: Value = serde_json::from_str(&state).unwrap();
    assert_eq!(state["findings"], serde_json::json!({}), "{state:#}");
}

#[test]
fn sighup_picks_up_a_policy_change() {
    let t = baked_tree();
    let port = free_port();
    // The policy in force comes from the configuration: first one that ignores /etc.
    let policy = t.outside("override.toml");
    std::fs::write(&policy, format!("exclude = [\"/etc\"]\n{POLICY}")).unwrap();
    let config = write_config(&t, port, &format!("policy = {policy:?}"));
    let daemon = start(&t, &config, None);
    wait_for(port, Duration::from_secs(20), "the boot check", |s| {
        s["state"] == "clean"
    });
    t.file("/etc/app.conf", b"x=3\n");
    signal(&daemon.child, libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(500));
    let status = wait_for(port, Duration::from_secs(20), "the reload's check", |s| {
        s["full_checks"].as_u64() >= Some(2)
    });
    assert!(
        finding_paths(&status).is_empty(),
        "/etc is excluded: {status:#}"
    );
    // The policy changes to the baseline's own (no exclusion): a reload sees /etc.
    std::fs::write(&policy, POLICY).unwrap();
    signal(&daemon.child, libc::SIGHUP);
    wait_for(
        port,
        Duration::from_secs(20),
        "the finding after the policy change",
        |s| finding_paths(s).contains(&"/etc/app.conf".to_string()),
    );
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
    // And it is a critical finding of its own.
    let finding = &status["findings"][0]["finding"];
    assert_eq!(finding["kind"], "baseline", "{status:#}");
    assert_eq!(finding["severity"], "critical");
    assert!(
        finding["error"].as_str().unwrap().contains("digest"),
        "{finding:#}"
    );
    assert_eq!(http_get(port, "/healthz").unwrap().0, 503);
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

#[test]
fn a_package_installed_is_seen_within_seconds() {
    let stanza = |name: &str, version: &str| {
        format!(
            "Package: {name}\nStatus: install ok installed\nArchitecture: amd64\nVersion: {version}\n\n"
        )
    };
    let t = Tree::new();
    t.write_policy(POLICY);
    t.file("/usr/bin/tool", b"tool v1\n")
        .file("/var/lib/dpkg/status", stanza("base-files", "12.4"));
    t.create();
    let port = free_port();
    let config = write_config(&t, port, "");
    let _daemon = start(&t, &config, None);
    wait_for(port, Duration::from_secs(20), "the boot check", |s| {
        s["state"] == "clean"
    });
    // As dpkg does: the new status is written aside, then renamed over the old one.
    let status = t.path("/var/lib/dpkg/status");
    let written = t.path("/var/lib/dpkg/status-new");
    std::fs::write(
        &written,
        stanza("base-files", "12.4") + &stanza("netcat-openbsd", "1.219"),
    )
    .unwrap();
    std::fs::rename(&written, &status).unwrap();
    let started = Instant::now();
    let found = wait_for(port, Duration::from_secs(15), "the package finding", |s| {
        s["findings"].as_array().unwrap().iter().any(|r| {
            r["finding"]["kind"] == "package"
                && r["finding"]["name"] == "netcat-openbsd"
                && r["finding"]["change"] == "installed"
        })
    });
    // Two polls of two seconds at most, not the next scheduled verification.
    assert!(started.elapsed() < Duration::from_secs(8), "{found:#}");
}

/// Appends `text` (whole sections) to the daemon's configuration.
fn append_config(config: &Path, text: &str) {
    let text = std::fs::read_to_string(config).unwrap() + text;
    std::fs::write(config, text).unwrap();
}

/// A collector that never answers: every event stays in the spool, counted on
/// `/status`. (Delivery itself is tested against the real collector elsewhere.)
fn unreachable_collector(t: &Tree, config: &Path) {
    let token = t.outside("enroll.token");
    std::fs::write(&token, "token\n").unwrap();
    append_config(
        config,
        &format!(
            "[collector]\nurl = \"https://127.0.0.1:{}\"\nca_file = {:?}\nenrollment_token_file = {token:?}\nhost_id = \"escalation-test\"\n",
            free_port(),
            t.outside("no-ca.pem"),
        ),
    );
}

fn daemon_log(t: &Tree) -> String {
    std::fs::read_to_string(t.outside("daemon.log")).unwrap()
}

fn remembered<'a>(status: &'a Value, path: &str) -> &'a Value {
    status["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["finding"]["path"] == path)
        .unwrap_or_else(|| panic!("no finding at {path}: {status:#}"))
}

/// Drift that changes after it was first reported (issue 10 §4): an added file made
/// setuid, then replaced, is reported again each time — remembered, spooled as a new
/// event with the whole finding — while the same drift seen again is not.
#[test]
fn r10_changed_drift_is_remembered_spooled_and_logged_again() {
    let t = baked_tree();
    let port = free_port();
    let config = write_config(&t, port, "");
    unreachable_collector(&t, &config);
    let _daemon = start(&t, &config, None);
    wait_for(port, Duration::from_secs(20), "the boot check", |s| {
        s["state"] == "clean" && s["collector"].is_object()
    });
    let spooled = |s: &Value| s["collector"]["events_spooled"].as_u64().unwrap();

    t.file("/usr/bin/dropped", b"payload v1\n");
    let status = wait_for(port, Duration::from_secs(10), "the added file", |s| {
        finding_paths(s).contains(&"/usr/bin/dropped".to_string())
    });
    let first = spooled(&status);
    assert_eq!(
        remembered(&status, "/usr/bin/dropped")["last_changed"],
        Value::Null
    );

    t.chmod("/usr/bin/dropped", 0o4755);
    let status = wait_for(port, Duration::from_secs(10), "the setuid change", |s| {
        remembered(s, "/usr/bin/dropped")["finding"]["observed"]["mode"] == "4755"
    });
    let entry = remembered(&status, "/usr/bin/dropped");
    assert!(entry["last_changed"].is_string(), "{entry:#}");
    assert_eq!(
        entry["first_seen"],
        remembered(&status, "/usr/bin/dropped")["first_seen"]
    );
    let status = wait_for(port, Duration::from_secs(5), "the change spooled", |s| {
        spooled(s) > first
    });
    let second = spooled(&status);

    t.file("/usr/bin/dropped", b"payload v2, replaced\n");
    t.chmod("/usr/bin/dropped", 0o4755);
    wait_for(
        port,
        Duration::from_secs(10),
        "the replacement spooled",
        |s| spooled(s) > second,
    );
    let log = daemon_log(&t);
    assert_eq!(
        log.matches("Drift changed.").count(),
        2,
        "one line per change:\n{log}"
    );
    assert!(log.contains("key=file:/usr/bin/dropped"), "{log}");
}

/// A paced full check that outlasts WatchdogSec many times over (issue 10 §4): the
/// watchdog is fed all along, and real-time drift is found while it runs.
#[test]
fn r10_a_long_check_feeds_the_watchdog_and_stays_real_time() {
    let t = baked_tree();
    add_big_files(&t, 16 << 20);
    t.create();
    let port = free_port();
    let config = write_config(&t, port, "");
    // 128 MiB paced to 4 MiB/s: the scheduled check takes about 30 s.
    append_config(
        &config,
        "[schedule]\nfull_verify_interval_secs = 1\njitter = 0.0\n[throttle]\nread_bytes_per_sec = 4194304\n",
    );
    let socket_path = t.outside("notify.sock");
    let notify = UnixDatagram::bind(&socket_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let _daemon = start(&t, &config, Some(&socket_path));
    let booted = wait_for(port, Duration::from_secs(30), "the boot check", |s| {
        s["state"] == "clean"
    });
    let full_checks = booted["full_checks"].as_u64().unwrap();
    std::thread::sleep(Duration::from_secs(2)); // the paced check is under way

    // WatchdogSec=300ms: pings at least every 300 ms for 3 s, the check still running.
    let mut message = [0u8; 256];
    let watched = Instant::now();
    let mut last = Instant::now();
    let mut pings = 0;
    while watched.elapsed() < Duration::from_secs(3) {
        let n = notify.recv(&mut message).expect("a notification");
        if String::from_utf8_lossy(&message[..n]).contains("WATCHDOG=1") {
            assert!(
                last.elapsed() < Duration::from_millis(300),
                "the watchdog starved for {:?} during a check",
                last.elapsed()
            );
            last = Instant::now();
            pings += 1;
        }
    }
    assert!(pings >= 10, "{pings} pings in 3 s");

    let changed_at = Instant::now();
    t.file("/usr/bin/tool", b"tool v2\n");
    let status = wait_for(
        port,
        Duration::from_secs(5),
        "real-time drift during a check",
        |s| finding_paths(s).contains(&"/usr/bin/tool".to_string()),
    );
    eprintln!(
        "watch latency during a paced check: {:?}",
        changed_at.elapsed()
    );
    assert_eq!(
        status["full_checks"].as_u64().unwrap(),
        full_checks,
        "the paced check had finished; the test proves nothing: {status:#}"
    );
    assert!(status["watch_rechecks"].as_u64() >= Some(1), "{status:#}");
}

/// Neither a baseline that fails verification nor one swapped in and back erases
/// remembered drift or the mark (issue 10 §4).
#[test]
fn r10_a_broken_or_swapped_baseline_keeps_findings_and_the_mark() {
    let t = baked_tree();
    let original = std::fs::read(t.baseline()).unwrap();
    t.file("/usr/bin/tool", b"tampered\n");
    let run = |expect: &str| -> Value {
        let port = free_port();
        let config = write_config(&t, port, "");
        let daemon = start(&t, &config, None);
        let status = wait_for(port, Duration::from_secs(20), expect, |s| {
            s["state"] == "marked" && s["findings"].as_array().is_some_and(|f| !f.is_empty())
        });
        drop(daemon);
        status
    };
    let marked = run("the first mark");
    let mark = marked["mark"].clone();
    assert!(
        finding_paths(&marked).contains(&"/usr/bin/tool".to_string()),
        "{marked:#}"
    );

    // A baseline baked from the tampered tree: it explains the drift, but the drift was
    // seen and stays.
    t.create();
    let swapped = run("the swapped baseline's check");
    assert_eq!(swapped["mark"], mark, "{swapped:#}");
    assert!(finding_paths(&swapped).contains(&"/usr/bin/tool".to_string()));

    // A baseline that fails verification.
    let mut broken = original.clone();
    let middle = broken.len() / 2;
    broken[middle] ^= 0x20;
    std::fs::write(t.baseline(), broken).unwrap();
    let untrusted = run("the broken baseline");
    assert_eq!(untrusted["mark"], mark, "{untrusted:#}");
    assert!(finding_paths(&untrusted).contains(&"/usr/bin/tool".to_string()));

    // The original back: still marked, still remembered, first sighting kept.
    std::fs::write(t.baseline(), &original).unwrap();
    let back = run("the original baseline again");
    assert_eq!(back["mark"], mark, "{back:#}");
    assert_eq!(
        first_seen_of(&back, "/usr/bin/tool"),
        first_seen_of(&marked, "/usr/bin/tool")
    );
    let kinds: Vec<&str> = back["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["finding"]["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"baseline"),
        "the failed verification is remembered: {kinds:?}"
    );
}

/// The replacement command cannot hang the daemon: it is killed after its timeout,
/// and the outcome is logged (issue 10 §4).
#[test]
fn r10_a_hanging_mark_command_is_killed_and_logged() {
    let t = baked_tree();
    t.file("/usr/bin/tool", b"tampered\n");
    let port = free_port();
    let config = write_config(&t, port, "");
    let pid_file = t.outside("command.pid");
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text
        .lines()
        .map(|line| {
            if line.starts_with("command = ") {
                format!(
                    "command = [\"/bin/sh\", \"-c\", \"echo $$ > {}; sleep 600\"]\ncommand_timeout_secs = 1",
                    pid_file.display()
                )
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&config, text).unwrap();
    let _daemon = start(&t, &config, None);
    wait_for(port, Duration::from_secs(20), "the mark", |s| {
        s["state"] == "marked"
    });
    let started = Instant::now();
    while !daemon_log(&t).contains("Replacement command timed out") {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no timeout logged:\n{}",
            daemon_log(&t)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The shell and its sleep are gone (the whole process group was killed).
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    let pid: i32 = pid.trim().parse().unwrap();
    // SAFETY: signal 0 only tests whether the process group exists.
    let alive = || unsafe { libc::kill(-pid, 0) } == 0;
    // The orphaned sleep is reaped by init, not by us: give it a moment.
    let killed = Instant::now();
    while alive() && killed.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!alive(), "the command's process group {pid} survived");
    // And the daemon still answers.
    assert_eq!(http_get(port, "/healthz").unwrap().0, 503);
}

/// Sizes a file to `size` bytes without writing them, or to the largest size offered
/// that the filesystem accepts.
fn grow_sparse(path: &Path, sizes: &[u64]) {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .unwrap();
    assert!(
        sizes.iter().any(|&size| file.set_len(size).is_ok()),
        "no sparse size accepted"
    );
}

#[test]
fn a_hostile_host_cannot_stall_or_blind_the_running_daemon() {
    let t = baked_tree();
    let evil = t.outside("evil");
    std::fs::create_dir_all(evil.join("bin")).unwrap();
    std::fs::write(evil.join("bin/tool"), b"planted outside the root").unwrap();
    let port = free_port();
    let config = write_config(&t, port, "");
    let _daemon = start(&t, &config, None);
    wait_for(port, Duration::from_secs(20), "the boot check", |s| {
        s["state"] == "clean"
    });
    // A petabyte file and a binary grown to 100 GiB: findings within seconds.
    grow_sparse(
        &t.path("/usr/bin/huge"),
        &[1 << 50, 16 << 40, (16 << 40) - 4096],
    );
    grow_sparse(&t.path("/usr/bin/tool"), &[100 << 30]);
    let found = wait_for(port, Duration::from_secs(10), "the sparse files", |s| {
        let paths = finding_paths(s);
        paths.contains(&"/usr/bin/huge".into()) && paths.contains(&"/usr/bin/tool".into())
    });
    let grown = found["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["finding"]["path"] == "/usr/bin/tool")
        .unwrap();
    assert_eq!(
        grown["finding"]["attributes"],
        serde_json::json!(["size", "content"])
    );
    // The watched `/usr/bin` swapped for a link out of the root: the rescan it causes
    // records the link and never follows it.
    std::fs::rename(t.path("/usr/bin"), t.path("/usr/bin.real")).unwrap();
    std::os::unix::fs::symlink(evil.join("bin"), t.path("/usr/bin")).unwrap();
    std::fs::write(evil.join("bin/tool"), b"planted outside the root, v2").unwrap();
    wait_for(port, Duration::from_secs(10), "the swapped /usr/bin", |s| {
        s["findings"].as_array().unwrap().iter().any(|r| {
            r["finding"]["path"] == "/usr/bin" && r["finding"]["observed"]["type"] == "symlink"
        })
    });
    std::thread::sleep(Duration::from_secs(1));
    let status = status(port).unwrap();
    let planted = blake3::hash(b"planted outside the root, v2")
        .to_hex()
        .to_string();
    assert!(
        !status.to_string().contains(&planted),
        "the daemon read a file behind the swapped-in link: {status:#}"
    );
}

#[test]
fn a_corrupt_or_unwritable_state_is_reported_and_the_boot_check_restores_it() {
    let t = baked_tree();
    let state = t.outside("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("state.json"), b"{ not json").unwrap();
    std::fs::write(state.join("hash-cache"), b"garbage").unwrap();
    // Saving fails while the temporary file's name is taken by a directory.
    std::fs::create_dir(state.join(".state.json.tmp")).unwrap();
    t.file("/usr/bin/tool", b"tool v2\n");
    let port = free_port();
    let config = write_config(&t, port, "");
    let _daemon = start(&t, &config, None);
    let status = wait_for(port, Duration::from_secs(20), "the boot check", |s| {
        s["state"] != "starting" && finding_paths(s).contains(&"/usr/bin/tool".into())
    });
    let problems = status["state_problems"].to_string();
    assert!(problems.contains("corrupt"), "{status:#}");
    assert!(problems.contains("cannot save state"), "{status:#}");
    assert!(problems.contains("hash cache"), "{status:#}");
    assert!(state.join("state.json.corrupt").exists());
    let (_, metrics) = http_get(port, "/metrics").unwrap();
    assert!(metrics.contains("driftwatch_state_problems 3"), "{metrics}");
    assert!(
        metrics.contains("driftwatch_hash_caches_discarded_total 1"),
        "{metrics}"
    );
    // The boot check rebuilt the cache it found damaged.
    let cache = std::fs::read(state.join("hash-cache")).unwrap();
    assert!(cache.starts_with(b"DWHCACH1"), "{cache:?}");
    // Space (or write access) comes back: the next save clears the problem.
    std::fs::remove_dir(state.join(".state.json.tmp")).unwrap();
    t.file("/usr/bin/other", b"other v2\n");
    let status = wait_for(port, Duration::from_secs(10), "a successful save", |s| {
        finding_paths(s).contains(&"/usr/bin/other".into())
            && !s["state_problems"].to_string().contains("cannot save")
    });
    assert!(status["state_problems"].to_string().contains("corrupt"));
    let saved = std::fs::read_to_string(state.join("state.json")).unwrap();
    assert!(saved.contains("/usr/bin/tool") && saved.contains("/usr/bin/other"));
    let log = std::fs::read_to_string(t.outside("daemon.log")).unwrap();
    assert!(log.contains("The state file was corrupt"), "{log}");
    assert!(log.contains("Cannot save state"), "{log}");
    assert!(log.contains("The hash cache was damaged"), "{log}");
}

#[test]
fn a_damaged_hash_cache_is_reported_not_trusted_and_rebuilt() {
    let t = baked_tree();
    let port = free_port();
    let config = write_config(&t, port, "");
    with_fast_schedule(&config);
    let _daemon = start(&t, &config, None);
    // Every file of the tree (tool, other, app.conf) read again: 8 + 6 + 4 bytes.
    let tree_bytes = 18;
    let trusted = wait_for(port, Duration::from_secs(20), "a fast check", |s| {
        s["fast_checks"].as_u64() >= Some(1) && s["last_check_bytes_hashed"] == 0
    });
    assert_eq!(trusted["hash_caches_discarded"], 0, "{trusted:#}");
    let cache = t.outside("state").join("hash-cache");
    let mut bytes = std::fs::read(&cache).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    std::fs::write(&cache, &bytes).unwrap();
    let found = wait_for(port, Duration::from_secs(20), "the damage found", |s| {
        s["hash_caches_discarded"] == 1
    });
    assert_eq!(found["last_check_bytes_hashed"], tree_bytes, "{found:#}");
    let problems = found["state_problems"].to_string();
    assert!(
        problems.contains("hash cache") && problems.contains("seal"),
        "{found:#}"
    );
    let (_, metrics) = http_get(port, "/metrics").unwrap();
    assert!(
        metrics.contains("driftwatch_hash_caches_discarded_total 1"),
        "{metrics}"
    );
    assert!(metrics.contains("driftwatch_state_problems 1"), "{metrics}");
    // Rebuilt by that check: the next one trusts it again and reads nothing.
    let after = found["fast_checks"].as_u64().unwrap();
    let rebuilt = wait_for(
        port,
        Duration::from_secs(20),
        "the rebuilt cache used",
        |s| s["fast_checks"].as_u64() > Some(after) && s["last_check_bytes_hashed"] == 0,
    );
    assert_eq!(rebuilt["hash_caches_discarded"], 1, "{rebuilt:#}");
    assert_eq!(rebuilt["state"], "clean", "{rebuilt:#}");
    assert!(daemon_log(&t).contains("The hash cache was damaged"));
}

/// `/status` and a plain `driftwatch check` of the daemon's root, with its config: the
/// same findings, and the check's text listing, text summary, JSON summary and exit
/// status all agree with them.
fn check_agrees_with_daemon(t: &Tree, config: &Path, status: &Value) -> Value {
    let daemon: Vec<String> = finding_paths(status);
    let json = util::Cmd::new(["check", "--format", "json", "--config"])
        .arg(config)
        .arg("--root")
        .arg(t.root())
        .arg("--baseline")
        .arg(t.baseline())
        .run();
    let report = json.json();
    let plain: Vec<String> = util::findings_of(&report)
        .into_iter()
        .map(|f| f.path)
        .collect();
    assert_eq!(plain, daemon, "{json}\n{status:#}");
    let count = plain.len() as u64;
    assert_eq!(report["summary"]["findings"], count, "{json}");
    json.assert_code(if count == 0 { 0 } else { 1 });
    let text = util::Cmd::new(["check", "--config"])
        .arg(config)
        .arg("--root")
        .arg(t.root())
        .arg("--baseline")
        .arg(t.baseline())
        .run();
    text.assert_code(if count == 0 { 0 } else { 1 });
    let summary = text.stdout.lines().last().unwrap_or_default();
    if count == 0 {
        assert!(summary.starts_with("No drift."), "{text}");
        assert!(!text.stdout.contains("findings"), "{text}");
    } else {
        let noun = if count == 1 { "finding" } else { "findings" };
        assert!(summary.starts_with(&format!("{count} {noun}:")), "{text}");
    }
    for path in &plain {
        assert!(
            text.stdout.contains(path.as_str()),
            "{path} not listed:\n{text}"
        );
    }
    report
}

#[test]
fn a_sealed_provisioning_delta_is_no_drift_for_the_daemon_and_the_plain_check_alike() {
    let t = Tree::new();
    t.write_policy(POLICY);
    t.file("/usr/bin/tool", b"tool v1\n")
        .file("/etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
        .file("/etc/shadow", b"root:*:20000:0:99999:7:::\n")
        .dir("/home");
    t.create();
    // What cloud-init does at first boot: the default user and its key.
    t.file(
        "/etc/passwd",
        b"root:x:0:0:root:/root:/bin/sh\ndebian:x:1000:1000::/home/debian:/bin/sh\n",
    )
    .file(
        "/home/debian/.ssh/authorized_keys",
        b"ssh-ed25519 AAAA e2e\n",
    );
    // Judged against the baseline alone (no configuration), that is drift.
    let raw = t.check();
    raw.assert_code(1);
    let raw = raw.json();
    let provisioned = util::findings_of(&raw);
    assert_eq!(provisioned.len(), 4, "{raw:#}");
    // The window as the daemon seals it: each change with its state, by finding key.
    let delta: serde_json::Map<String, Value> = raw["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let key = format!("file:{}", f["path"].as_str().unwrap());
            let entry = serde_json::json!({"first_seen": "2026-12-03T10:00:00Z", "finding": f});
            (key, entry)
        })
        .collect();
    let record = serde_json::json!({
        "baseline_digest": raw["baseline"]["digest"],
        "phase": "sealed",
        "units": ["cloud-final.service"],
        "opened": "2026-12-03T10:00:00Z",
        "sealed": "2026-12-03T10:01:00Z",
        "sealed_because": "the provisioning units finished",
        "delta": delta,
        "spooled": true,
    });
    std::fs::create_dir_all(t.outside("state")).unwrap();
    std::fs::write(
        t.outside("state").join("provisioning.json"),
        serde_json::to_vec_pretty(&record).unwrap(),
    )
    .unwrap();

    let port = free_port();
    let config = write_config(&t, port, "");
    let daemon = start(&t, &config, None);
    let status = wait_for(port, Duration::from_secs(20), "the boot check", |s| {
        s["full_checks"].as_u64() >= Some(1)
    });
    assert_eq!(status["provisioning"]["phase"], "sealed", "{status:#}");
    assert_eq!(status["state"], "clean", "{status:#}");
    let report = check_agrees_with_daemon(&t, &config, &status);
    assert_eq!(report["findings"], serde_json::json!([]), "{report:#}");
    assert_eq!(report["summary"]["critical"], 0, "{report:#}");

    // After the seal, a declared path changed again and a binary replaced: drift for
    // both, counted alike.
    t.file(
        "/home/debian/.ssh/authorized_keys",
        b"ssh-ed25519 AAAA intruder\n",
    )
    .file("/usr/bin/tool", b"tool v2\n");
    signal(&daemon.child, libc::SIGHUP);
    let status = wait_for(port, Duration::from_secs(20), "the re-check", |s| {
        s["full_checks"].as_u64() >= Some(2)
    });
    let report = check_agrees_with_daemon(&t, &config, &status);
    assert_eq!(
        util::findings_of(&report),
        vec![
            util::found("added", "/home/debian/.ssh/authorized_keys", &[]),
            util::found("modified", "/usr/bin/tool", &["content"]),
        ],
        "{report:#}"
    );
}
