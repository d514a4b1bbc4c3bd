//! The daemon booted for real: a minimal Debian root file system with systemd, the built
//! binary and the repository's unit installed and a baseline baked in it with the
//! built-in policy, booted with `systemd-nspawn --boot`, then checked from outside over
//! its loopback endpoint: no findings after the boot check, none after every timer's
//! service ran and a reload re-checked, then drift marks the host in real time, and the
//! service stops cleanly.
//!
//! Needs root, `systemd-nspawn` (systemd-container), `mmdebstrap` and `nsenter`
//! (util-linux), and a Debian host whose apt sources name a mirror: the image is the
//! host's own Debian release (so the test binary's glibc runs in it), built once with
//! `mmdebstrap` and cached as a tarball under the target directory
//! (`target/boot-cache/`); later runs only extract it (to a tmpfs of their own, which
//! is unmounted and removed at the end, or after a killed run by the next one). Without
//! any of these the test prints `skipping: <reason>` and passes.
//!
//! The container gets its own network namespace (`--private-network`): sharing the
//! host's would show the host's listening sockets to the daemon's runtime check, which
//! a real machine booted from the image would not have. The test talks to the daemon
//! from a thread that joins the container's network namespace.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

use serde_json::Value;
use std::collections::HashSet;
use std::fmt::Display;
use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use util::http_get;
use util::{Cmd, Output, BIN};

/// The packages the image gets on top of `minbase`.
const PACKAGES: &str = "systemd,systemd-sysv,dbus";
/// The daemon's port inside the container (its own network namespace: always free).
const PORT: u16 = 19847;
/// The unit as shipped.
const UNIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../systemd/driftwatch.service");
/// A file the drift step adds under a critical, watched path.
const DROPPED: &str = "/usr/local/bin/x";
/// A binary the drift step makes setuid.
const SETUID: &str = "/usr/bin/env";

#[test]
fn boots_under_systemd_and_marks_the_host_on_drift() {
    let started = Instant::now();
    if !util::root_or_skip()
        || !util::have_tool("systemd-nspawn")
        || !util::have_tool("mmdebstrap")
        || !util::have_tool("nsenter")
    {
        return;
    }
    let (suite, mirror) = match debian_source() {
        Ok(found) => found,
        Err(reason) => {
            eprintln!("skipping: {reason}");
            return;
        }
    };
    let cache = cache_dir();
    fs::create_dir_all(&cache).unwrap();
    remove_stale_runs(&cache);

    // 1. The root file system, built once.
    let tarball = match rootfs_tarball(&cache, &suite, &mirror) {
        Ok(tarball) => tarball,
        Err(reason) => {
            eprintln!("skipping: {reason}");
            return;
        }
    };

    // 2. A fresh copy of it, the agent installed and a baseline baked.
    let mut container = Container::new(&cache);
    let extracting = Instant::now();
    Cmd::exec(
        "tar",
        ["--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf"],
    )
    .arg(&tarball.path)
    .arg("-C")
    .arg(container.root())
    .timeout(Duration::from_secs(300))
    .run()
    .assert_code(0);
    let extract_time = extracting.elapsed();
    let baking = Instant::now();
    let baked_entries = install_agent(&container.root());
    let bake_time = baking.elapsed();

    // 3. Boot, and wait for systemd to call the service active (READY=1 was sent).
    let booting = Instant::now();
    container.boot();
    container.wait_active(Duration::from_secs(60));
    let boot_to_active = booting.elapsed();

    // 4. From outside: the boot check finished, it saw the whole image, nothing found.
    let checking = Instant::now();
    let status = container.wait_for(Duration::from_secs(120), "the boot check", |s| {
        s["full_checks"].as_u64() >= Some(1)
    });
    let boot_check = checking.elapsed();
    // Only now: a process `nsenter` starts is, for an instant, the host's binary in the
    // container, which the boot check's process scan would rightly report.
    eprintln!(
        "system state: {}; failed units: [{}]",
        container
            .exec(&["systemctl", "is-system-running"])
            .stdout
            .trim(),
        container
            .exec(&[
                "systemctl",
                "--failed",
                "--plain",
                "--no-legend",
                "--no-pager"
            ])
            .stdout
            .lines()
            .map(str::trim)
            .collect::<Vec<_>>()
            .join("; ")
    );
    let mut problems = Vec::new();
    match container.boot_check_entries() {
        Some(entries) if entries == baked_entries => {
            eprintln!("the boot check compared {entries} entries, as many as the baseline has")
        }
        other => problem(
            &mut problems,
            format!(
                "the boot check compared {other:?} entries (journal field F_ENTRIES); the \
                 baseline has {baked_entries}"
            ),
        ),
    }
    let mut seen = HashSet::new();
    let mut clean = judge_clean(
        &container,
        &status,
        "the boot check",
        &mut seen,
        &mut problems,
    );

    // 5. What the host does later, done now: every timer's service runs once, then a
    //    reload (the unit's ExecReload) re-checks everything. Still nothing found.
    let rechecking = Instant::now();
    let timers = container.exec_ok(&[
        "systemctl",
        "list-timers",
        "--all",
        "--plain",
        "--no-legend",
        "--no-pager",
    ]);
    for service in timers
        .stdout
        .lines()
        .filter_map(|l| l.split_whitespace().last())
    {
        let ran = container.exec(&["systemctl", "start", service]);
        eprintln!("ran {service} (from its timer): exit {:?}", ran.code);
    }
    let reload = container.exec(&["systemctl", "reload", "driftwatch.service"]);
    let checks = if reload.code == Some(0) {
        2
    } else {
        problem(
            &mut problems,
            format!(
                "`systemctl reload driftwatch` fails under systemd:{reload}\n{}",
                last_lines(&container.journal(), 6)
            ),
        );
        // Re-check everything all the same: a restart runs a new boot check.
        container.exec_ok(&["systemctl", "restart", "driftwatch.service"]);
        1
    };
    let status = container.wait_for(
        Duration::from_secs(120),
        "the re-check after the timers",
        |s| s["full_checks"].as_u64() >= Some(checks),
    );
    let recheck = rechecking.elapsed();
    clean &= judge_clean(
        &container,
        &status,
        "the re-check after every timer ran",
        &mut seen,
        &mut problems,
    );

    // 6. Drift: a binary dropped under /usr/local/bin is seen in real time, the host is
    //    marked.
    let drifting = Instant::now();
    container.exec_ok(&["cp", "/bin/true", DROPPED]);
    let status = container.wait_for(Duration::from_secs(10), "the dropped binary", |s| {
        finding(s, DROPPED).is_some()
    });
    let drift_to_finding = drifting.elapsed();
    let dropped = finding(&status, DROPPED).unwrap();
    if dropped["change"] != "added" || dropped["severity"] != "critical" {
        container.fail(format!(
            "{DROPPED} should be a critical addition: {}",
            describe(&dropped)
        ));
    }
    let healthz = loop {
        match container.get("/healthz") {
            Some((503, body)) => break body,
            _ if drifting.elapsed() > Duration::from_secs(10) => container.fail(format!(
                "/healthz is not 503 10 s after the drift: {:?}",
                container.get("/healthz")
            )),
            _ => std::thread::sleep(Duration::from_millis(25)),
        }
    };
    let drift_to_503 = drifting.elapsed();
    let status = container.status().unwrap_or_default();
    if status["state"] != "marked" {
        container.fail(format!("state after the drift: {status:#}"));
    }
    let marker = container.exec(&["cat", "/run/driftwatch/replace-me"]);
    if marker.code != Some(0) {
        container.fail(format!("no replacement marker in the container{marker}"));
    }
    if clean && !(healthz.contains(DROPPED) && marker.stdout.contains(DROPPED)) {
        container.fail(format!(
            "the mark should name {DROPPED}: /healthz {healthz}, marker {}",
            marker.stdout
        ));
    }

    // 7. A setuid bit gained on an image binary: critical, whatever the rule says.
    container.exec_ok(&["chmod", "u+s", SETUID]);
    let status = container.wait_for(Duration::from_secs(10), "the setuid bit", |s| {
        finding(s, SETUID).is_some()
    });
    let setuid = finding(&status, SETUID).unwrap();
    if setuid["severity"] != "critical"
        || !setuid["attributes"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == "mode"))
    {
        container.fail(format!(
            "{SETUID} should be a critical mode change: {}",
            describe(&setuid)
        ));
    }

    // 8. A clean stop under systemd (SIGTERM, within TimeoutStopSec).
    let stopping = Instant::now();
    container.exec_ok(&["systemctl", "stop", "driftwatch.service"]);
    let stop_time = stopping.elapsed();
    let result = container.exec(&[
        "systemctl",
        "show",
        "--property=Result,ExecMainStatus,NRestarts",
        "driftwatch.service",
    ]);
    if ["Result=success", "ExecMainStatus=0", "NRestarts=0"]
        .iter()
        .any(|want| !result.stdout.lines().any(|line| line == *want))
    {
        problem(
            &mut problems,
            format!("the service did not run and stop cleanly:{result}"),
        );
    }
    eprintln!("--- journalctl -u driftwatch ---\n{}", container.journal());
    if !problems.is_empty() {
        container.fail(problems.join("\n"));
    }

    // 9. Power off, remove the copy.
    let powering_off = Instant::now();
    container.shutdown();
    let poweroff_time = powering_off.elapsed();
    drop(container);

    eprintln!(
        "timings: rootfs {} | extract {:.1?} | install+bake {:.1?} | \
         boot-to-active {:.1?} | boot check {:.1?} | timers+re-check {:.1?} | \
         drift-to-finding {:.1?} | drift-to-503 {:.1?} | stop {:.1?} | poweroff {:.1?} | \
         total {:.1?}",
        tarball.how,
        extract_time,
        bake_time,
        boot_to_active,
        boot_check,
        recheck,
        drift_to_finding,
        drift_to_503,
        stop_time,
        poweroff_time,
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------------------
// The image.

/// `target/boot-cache`, next to the binary under test (`target/debug/driftwatch`).
fn cache_dir() -> PathBuf {
    let target = Path::new(BIN)
        .parent()
        .and_then(Path::parent)
        .expect("the binary lies in target/PROFILE/");
    target.join("boot-cache")
}

/// The host's Debian release and a mirror for it, from the host's own apt sources (no
/// host name is written anywhere in the test).
fn debian_source() -> Result<(String, String), String> {
    let os_release = fs::read_to_string("/etc/os-release").unwrap_or_default();
    let field = |name: &str| {
        os_release.lines().find_map(|line| {
            line.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix('='))
                .map(|value| value.trim_matches('"').to_string())
        })
    };
    let suite = match (field("ID").as_deref(), field("VERSION_CODENAME")) {
        (Some("debian"), Some(codename)) if !codename.is_empty() => codename,
        (id, _) => {
            return Err(format!(
                "the image is built from the host's Debian release, and this host is not \
                 Debian with a release name (ID={})",
                id.unwrap_or("?")
            ))
        }
    };
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut listed: Vec<PathBuf> = dir.filter_map(|e| e.ok().map(|e| e.path())).collect();
        listed.sort();
        files.extend(listed);
    }
    for file in files {
        let Ok(text) = fs::read_to_string(&file) else {
            continue;
        };
        let name = file.to_string_lossy();
        let found = if name.ends_with(".sources") {
            deb822_mirror(&text, &suite)
        } else if name.ends_with(".list") {
            one_line_mirror(&text, &suite)
        } else {
            None
        };
        if let Some(mirror) = found {
            return Ok((suite, mirror));
        }
    }
    Err(format!(
        "no apt source on this host names a mirror for Debian {suite}"
    ))
}

/// The first URI of a deb822 stanza of type `deb` for `suite`.
fn deb822_mirror(text: &str, suite: &str) -> Option<String> {
    for stanza in text.split("\n\n") {
        let field = |name: &str| -> Vec<&str> {
            stanza
                .lines()
                .filter(|line| !line.starts_with('#'))
                .find_map(|line| {
                    let (key, value) = line.split_once(':')?;
                    key.trim()
                        .eq_ignore_ascii_case(name)
                        .then(|| value.split_whitespace().collect())
                })
                .unwrap_or_default()
        };
        let enabled = field("Enabled").first().is_none_or(|v| *v != "no");
        if enabled && field("Types").contains(&"deb") && field("Suites").contains(&suite) {
            if let Some(uri) = field("URIs").first() {
                return Some(uri.to_string());
            }
        }
    }
    None
}

/// The URI of a `deb [options] URI SUITE COMPONENTS…` line for `suite`.
fn one_line_mirror(text: &str, suite: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let rest = line.trim().strip_prefix("deb ")?.trim_start();
        let rest = match rest.strip_prefix('[') {
            Some(options) => options.split_once(']')?.1,
            None => rest,
        };
        let mut words = rest.split_whitespace();
        let uri = words.next()?;
        (words.next()? == suite).then(|| uri.to_string())
    })
}

/// The cached root file system, and how it came to be there.
struct Tarball {
    path: PathBuf,
    how: String,
}

/// `CACHE/SUITE-systemd.tar`, built with mmdebstrap unless already there. Builds are
/// serialised by a lock file and written under a temporary name, then renamed.
fn rootfs_tarball(cache: &Path, suite: &str, mirror: &str) -> Result<Tarball, String> {
    let path = cache.join(format!("{suite}-systemd.tar"));
    if path.exists() {
        return Ok(Tarball {
            path,
            how: "cached".into(),
        });
    }
    let lock = File::create(cache.join(format!("{suite}-systemd.lock"))).unwrap();
    let waiting = Instant::now();
    // SAFETY: flock(2) on a descriptor we own; released when `lock` is closed.
    let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(rc, 0, "flock: {}", std::io::Error::last_os_error());
    if path.exists() {
        return Ok(Tarball {
            path,
            how: format!(
                "built by another test run (waited {:.1?})",
                waiting.elapsed()
            ),
        });
    }
    let partial = cache.join(format!("{suite}-systemd.partial.tar"));
    let _ = fs::remove_file(&partial);
    let log = cache.join(format!("{suite}-systemd.build.log"));
    eprintln!("building the {suite} root file system from {mirror} (once; about 1-2 minutes)");
    let building = Instant::now();
    let out = Cmd::exec(
        "mmdebstrap",
        [
            "--variant=minbase",
            &format!("--include={PACKAGES}"),
            "--format=tar",
            suite,
        ],
    )
    .arg(&partial)
    .arg(mirror)
    .timeout(Duration::from_secs(1200))
    .run();
    let took = building.elapsed();
    fs::write(&log, out.to_string()).unwrap();
    if out.code != Some(0) {
        let _ = fs::remove_file(&partial);
        let text = format!("{}{}", out.stdout, out.stderr);
        let tail = last_lines(&text, 30);
        const UNREACHABLE: [&str; 8] = [
            "Failed to fetch",
            "Could not resolve",
            "Temporary failure resolving",
            "Could not connect",
            "Unable to connect",
            "Connection timed out",
            "Network is unreachable",
            "No route to host",
        ];
        if UNREACHABLE.iter().any(|m| text.contains(m)) {
            return Err(format!(
                "the root file system cannot be built: {mirror} is not reachable (log: {})\n{tail}",
                log.display()
            ));
        }
        panic!(
            "mmdebstrap failed (exit {:?}); log: {}\n{tail}",
            out.code,
            log.display()
        );
    }
    fs::rename(&partial, &path).unwrap();
    Ok(Tarball {
        path,
        how: format!("built in {took:.1?}"),
    })
}

/// Installs the agent into `root` as a package would, then bakes the baseline in a
/// chroot: the last change to the image before it boots.
fn install_agent(root: &Path) -> u64 {
    let put = |rel: &str, bytes: &[u8], mode: u32| {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    };
    put("usr/bin/driftwatch", &fs::read(BIN).unwrap(), 0o755);
    put(
        "etc/systemd/system/driftwatch.service",
        &fs::read(UNIT).unwrap(),
        0o644,
    );
    put(
        "etc/driftwatch/agent.toml",
        format!("[health]\nlisten = \"127.0.0.1:{PORT}\"\n").as_bytes(),
        0o644,
    );
    fs::create_dir_all(root.join("usr/lib/driftwatch")).unwrap();
    stand_in_kernel_modules(root);
    let chroot = |args: &[&str]| {
        args.iter()
            .fold(Cmd::exec("chroot", [root.as_os_str()]), |cmd, arg| {
                cmd.arg(arg)
            })
            .timeout(Duration::from_secs(300))
            .run()
    };
    chroot(&["systemctl", "enable", "driftwatch.service"]).assert_code(0);
    let baked = chroot(&[
        "/usr/bin/driftwatch",
        "baseline",
        "create",
        "--image-id",
        "test-image",
        "--out",
        "/usr/lib/driftwatch/baseline",
        "--format",
        "json",
    ]);
    baked.assert_code(0);
    let summary = baked.json();
    assert_eq!(summary["errors"], serde_json::json!([]), "{baked}");
    summary["entries"].as_u64().expect("entries in the summary")
}

/// The container runs the host's kernel, whose modules the image does not ship (a real
/// image ships its own kernel's). Every module the host has loaded gets an empty
/// stand-in under `/usr/lib/modules/RELEASE/` so that the runtime check judges the
/// image as one made for this kernel. Nothing to do on a kernel without modules.
fn stand_in_kernel_modules(root: &Path) {
    let Ok(modules) = fs::read_to_string("/proc/modules") else {
        return;
    };
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let dir = root.join(format!("usr/lib/modules/{}/kernel/host", release.trim()));
    fs::create_dir_all(&dir).unwrap();
    for name in modules.lines().filter_map(|l| l.split_whitespace().next()) {
        fs::write(dir.join(format!("{name}.ko")), b"").unwrap();
    }
}

// ---------------------------------------------------------------------------------------
// The container.

/// A root file system copy and, once booted, the `systemd-nspawn` running it. Dropping
/// it powers the container off (killing it if it does not stop) and removes the copy.
struct Container {
    dir: PathBuf,
    nspawn: Option<Child>,
    /// The container's PID 1, as seen from the host.
    init: Option<i32>,
    /// The container's network namespace.
    netns: Option<File>,
}

impl Container {
    /// A fresh, empty `CACHE/run-PID-N/root`, on a tmpfs of its own when one can be
    /// mounted (writing the image to disk takes from 0.5 to 10 s here; to memory 0.5 s).
    fn new(cache: &Path) -> Container {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let dir = cache.join(format!("run-{}-{nanos}", std::process::id()));
        fs::create_dir_all(dir.join("root")).unwrap();
        fs::set_permissions(dir.join("root"), fs::Permissions::from_mode(0o755)).unwrap();
        if let Err(err) = mount_tmpfs(&dir.join("root")) {
            eprintln!("extracting to disk: cannot mount a tmpfs: {err}");
        }
        Container {
            dir,
            nspawn: None,
            init: None,
            netns: None,
        }
    }

    fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    fn console_log(&self) -> PathBuf {
        self.dir.join("console.log")
    }

    /// Starts `systemd-nspawn --boot` and finds the container's systemd.
    fn boot(&mut self) {
        let log = File::create(self.console_log()).unwrap();
        let child = Command::new("systemd-nspawn")
            .env("SYSTEMD_NSPAWN_UNIFIED_HIERARCHY", "1")
            .arg("--directory")
            .arg(self.root())
            .args([
                "--boot",
                "--register=no",
                "--keep-unit",
                "--console=read-only",
                "--private-network",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start systemd-nspawn: {e}"));
        let nspawn_pid = child.id() as i32;
        self.nspawn = Some(child);
        fs::write(self.dir.join("nspawn.pid"), nspawn_pid.to_string()).unwrap();
        let looking = Instant::now();
        let init = loop {
            if let Some(pid) = child_named(nspawn_pid, "systemd") {
                break pid;
            }
            if let Some(status) = self.nspawn.as_mut().unwrap().try_wait().unwrap() {
                self.fail(format!("systemd-nspawn exited at boot: {status}"));
            }
            if looking.elapsed() > Duration::from_secs(30) {
                self.fail("no systemd below systemd-nspawn after 30 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        self.init = Some(init);
        let netns = File::open(format!("/proc/{init}/ns/net"))
            .unwrap_or_else(|e| self.fail(format!("cannot open the container's netns: {e}")));
        let probe = netns.try_clone().unwrap();
        let joined = std::thread::spawn(move || join_netns(&probe))
            .join()
            .unwrap();
        if let Err(err) = joined {
            self.fail(format!(
                "cannot join the container's network namespace: {err}"
            ));
        }
        self.netns = Some(netns);
    }

    /// Waits until systemd reports the service `active`; `failed` is a failure at once.
    fn wait_active(&self, limit: Duration) {
        let start = Instant::now();
        let mut last = String::new();
        loop {
            let out = self.exec(&["systemctl", "is-active", "driftwatch.service"]);
            let state = out.stdout.trim().to_string();
            match state.as_str() {
                "active" => return,
                "failed" => self.fail("driftwatch.service failed to start"),
                _ => {}
            }
            if state != last {
                eprintln!(
                    "driftwatch.service: {state:?} after {:.1?}",
                    start.elapsed()
                );
                last = state;
            }
            if start.elapsed() > limit {
                self.fail(format!(
                    "driftwatch.service not active after {limit:?} (last: {last:?}){out}"
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs a command inside the container (all its namespaces).
    fn exec(&self, args: &[&str]) -> Output {
        let init = self.init.expect("the container is booted").to_string();
        args.iter()
            .fold(
                Cmd::exec("nsenter", ["-t", init.as_str(), "-a"]),
                |cmd, arg| cmd.arg(arg),
            )
            .timeout(Duration::from_secs(60))
            .run()
    }

    /// Runs a command inside the container and fails unless it succeeds.
    fn exec_ok(&self, args: &[&str]) -> Output {
        let out = self.exec(args);
        if out.code != Some(0) {
            self.fail(format!("command failed in the container{out}"));
        }
        out
    }

    /// GET on the daemon's endpoint from inside the container's network namespace:
    /// (status code, body), or None while it does not answer.
    fn get(&self, path: &str) -> Option<(u16, String)> {
        let netns = self.netns.as_ref()?.try_clone().ok()?;
        let path = path.to_string();
        std::thread::spawn(move || {
            join_netns(&netns).ok()?;
            http_get(PORT, &path)
        })
        .join()
        .ok()
        .flatten()
    }

    fn status(&self) -> Option<Value> {
        self.get("/status")
            .and_then(|(_, body)| serde_json::from_str(&body).ok())
    }

    /// Polls `/status` until `done` holds, failing after `limit`.
    fn wait_for(&self, limit: Duration, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            let status = self.status();
            if let Some(status) = &status {
                if done(status) {
                    return status.clone();
                }
            }
            if start.elapsed() > limit {
                match status {
                    Some(status) => self.fail(format!(
                        "timed out after {limit:?} waiting for {what}; last status: {status:#}"
                    )),
                    None => self.fail(format!(
                        "timed out after {limit:?} waiting for {what}: the endpoint does not answer"
                    )),
                }
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// How many entries the boot check compared, from its journal entry.
    fn boot_check_entries(&self) -> Option<u64> {
        let out = self.exec(&[
            "journalctl",
            "--unit=driftwatch.service",
            "--boot",
            "--output=json",
            "--no-pager",
        ]);
        out.stdout
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .find(|e| e["MESSAGE"] == "Check finished." && e["F_WHY"] == "boot")
            .and_then(|e| e["F_ENTRIES"].as_str()?.parse().ok())
    }

    fn journal(&self) -> String {
        if self.init.is_none() {
            return "(not booted)".into();
        }
        let out = self.exec(&[
            "journalctl",
            "--unit=driftwatch.service",
            "--boot",
            "--no-pager",
            "--output=short-precise",
        ]);
        format!("{}{}", out.stdout, out.stderr)
    }

    /// Fails the test with the service's journal and the end of the console log.
    fn fail(&self, message: impl Display) -> ! {
        let (status, journal) = if self.init.is_some() && self.nspawn_running() {
            let status = self.exec(&[
                "systemctl",
                "status",
                "--no-pager",
                "--lines=0",
                "driftwatch.service",
            ]);
            (status.stdout, self.journal())
        } else {
            (String::new(), "(the container is not running)".into())
        };
        let console = fs::read_to_string(self.console_log()).unwrap_or_default();
        panic!(
            "{message}\n--- systemctl status driftwatch ---\n{status}\n\
             --- journalctl -u driftwatch ---\n{journal}\n\
             --- console (last 60 lines) ---\n{}",
            last_lines(&console, 60)
        );
    }

    /// Whether nspawn still runs (without `&mut`: exists and is not a zombie).
    fn nspawn_running(&self) -> bool {
        self.nspawn
            .as_ref()
            .is_some_and(|child| alive(child.id() as i32))
    }

    /// `systemctl poweroff` inside, then waits for nspawn to exit cleanly.
    fn shutdown(&mut self) {
        let _ = self.exec(&["systemctl", "poweroff"]);
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.nspawn.as_mut().expect("booted").try_wait().unwrap() {
                break status;
            }
            if start.elapsed() > Duration::from_secs(30) {
                self.fail("the container did not power off within 30 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        self.nspawn = None;
        if !status.success() {
            self.fail(format!(
                "systemd-nspawn exited with {status} after poweroff"
            ));
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if let Some(mut child) = self.nspawn.take() {
            // SIGTERM asks nspawn to power the container off.
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let start = Instant::now();
            while matches!(child.try_wait(), Ok(None)) && start.elapsed() < Duration::from_secs(20)
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            if matches!(child.try_wait(), Ok(None)) {
                eprintln!("the container did not stop on SIGTERM: killing it");
                if let Some(init) = self.init {
                    // SAFETY: kill(2); killing a PID namespace's init kills the namespace.
                    unsafe { libc::kill(init, libc::SIGKILL) };
                }
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        remove_run_dir(&self.dir);
    }
}

/// Mounts a tmpfs (no size limit beyond the default half of memory) on `dir`.
fn mount_tmpfs(dir: &Path) -> std::io::Result<()> {
    let target = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())?;
    // SAFETY: mount(2) with NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            c"driftwatch-boot".as_ptr(),
            target.as_ptr(),
            c"tmpfs".as_ptr(),
            0,
            c"mode=0755".as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The mount points listed in this mount namespace.
fn mount_points() -> Vec<String> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split(' ').nth(4).map(str::to_string))
        .collect()
}

/// Removes a run directory (unmounting its root's tmpfs first) unless something else
/// is mounted below it (a container that escaped teardown): deleting through a mount
/// could reach outside the copy.
fn remove_run_dir(dir: &Path) {
    let root = dir.join("root").display().to_string();
    if mount_points().contains(&root) {
        let target = std::ffi::CString::new(root.as_bytes()).unwrap_or_default();
        // SAFETY: umount2(2) on a NUL-terminated path; MNT_DETACH never blocks.
        if unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } != 0 {
            eprintln!("cannot unmount {root}: {}", std::io::Error::last_os_error());
        }
    }
    let prefix = format!("{}/", dir.display());
    if mount_points().iter().any(|m| m.starts_with(&prefix)) {
        eprintln!(
            "not removing {}: something is mounted below it",
            dir.display()
        );
        return;
    }
    if let Err(err) = fs::remove_dir_all(dir) {
        eprintln!("cannot remove {}: {err}", dir.display());
    }
}

/// Removes copies left by test processes that no longer exist (killed mid-run), after
/// stopping a container still running from one.
fn remove_stale_runs(cache: &Path) {
    let Ok(entries) = fs::read_dir(cache) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("run-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if alive(pid as i32) {
            continue;
        }
        let nspawn = fs::read_to_string(entry.path().join("nspawn.pid"))
            .ok()
            .and_then(|pid| pid.trim().parse::<i32>().ok())
            .filter(|pid| {
                // Only if that pid is still the nspawn running this copy.
                let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let cmdline = String::from_utf8_lossy(&cmdline);
                cmdline.starts_with("systemd-nspawn\0")
                    && cmdline.contains(&*entry.path().to_string_lossy())
            });
        if let Some(pid) = nspawn {
            eprintln!("stopping a container left running by a killed test (pid {pid})");
            // SAFETY: kill(2) on a process checked above to be that container's nspawn.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let start = Instant::now();
            while alive(pid) && start.elapsed() < Duration::from_secs(20) {
                std::thread::sleep(Duration::from_millis(50));
            }
            if alive(pid) {
                eprintln!("not removing {}: its container still runs", name);
                continue;
            }
        }
        remove_run_dir(&entry.path());
    }
}

/// Whether process `pid` exists and is not a zombie.
fn alive(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat.rsplit_once(") ")?.1.chars().next()?;
            Some(state != 'Z')
        })
        .unwrap_or(false)
}

/// A child of `parent` whose command name is `name`.
fn child_named(parent: i32, name: &str) -> Option<i32> {
    fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
        let stat = fs::read_to_string(entry.path().join("stat")).ok()?;
        // `pid (comm) state ppid …`; comm may contain spaces and parentheses.
        let (head, tail) = stat.rsplit_once(") ")?;
        let comm = head.split_once(" (")?.1;
        let ppid: i32 = tail.split_whitespace().nth(1)?.parse().ok()?;
        (ppid == parent && comm == name).then_some(pid)
    })
}

/// Moves the calling thread into the network namespace `netns` (only this thread).
fn join_netns(netns: &File) -> std::io::Result<()> {
    // SAFETY: setns(2) on a namespace descriptor we own; it affects this thread only.
    if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Reading the status.

/// Whether `status` (after `when`) is clean: no findings, state `clean`, `/healthz`
/// 200. Findings not printed before are printed in full, with a problem recorded.
fn judge_clean(
    container: &Container,
    status: &Value,
    when: &str,
    seen: &mut HashSet<String>,
    problems: &mut Vec<String>,
) -> bool {
    print_list(&format!("errors of {when}"), &status["errors"]);
    print_list("degradations", &status["degradations"]);
    let findings = status["findings"].as_array().cloned().unwrap_or_default();
    let new: Vec<&Value> = findings
        .iter()
        .filter(|r| {
            let f = &r["finding"];
            seen.insert(format!(
                "{}|{}|{}|{}|{}|{}",
                r["first_seen"], f["kind"], f["path"], f["name"], f["exe"], f["port"]
            ))
        })
        .collect();
    if !new.is_empty() {
        eprintln!("FALSE POSITIVES after {when} ({} new):", new.len());
        for remembered in &new {
            eprintln!("  {}", describe(&remembered["finding"]));
        }
        problem(
            problems,
            format!(
                "{} findings after {when} (listed above); state {}, mark {}",
                new.len(),
                status["state"],
                status["mark"]
            ),
        );
    }
    if !findings.is_empty() {
        return false;
    }
    if status["state"] != "clean" {
        problems.push(format!(
            "after {when} the state is {}: {status:#}",
            status["state"]
        ));
        return false;
    }
    match container.get("/healthz") {
        Some((200, _)) => true,
        Some((code, body)) => {
            problem(problems, format!("/healthz after {when}: {code} {body}"));
            false
        }
        None => container.fail("/healthz does not answer"),
    }
}

/// The finding about `path`, if any.
fn finding(status: &Value, path: &str) -> Option<Value> {
    status["findings"]
        .as_array()?
        .iter()
        .map(|r| &r["finding"])
        .find(|f| f["path"] == path)
        .cloned()
}

/// One line per finding: the essentials first, then the whole finding.
fn describe(finding: &Value) -> String {
    let essentials = match finding["kind"].as_str() {
        Some("file") => format!(
            "{} {} {} [{}] rule {:?}",
            finding["severity"].as_str().unwrap_or("?"),
            finding["change"].as_str().unwrap_or("?"),
            finding["path"].as_str().unwrap_or("?"),
            finding["attributes"]
                .as_array()
                .map(|a| a
                    .iter()
                    .map(|x| x.as_str().unwrap_or("?"))
                    .collect::<Vec<_>>()
                    .join(","))
                .unwrap_or_default(),
            finding["rule"].as_str().unwrap_or("?"),
        ),
        kind => format!(
            "{} {}",
            finding["severity"].as_str().unwrap_or("?"),
            kind.unwrap_or("?")
        ),
    };
    format!("{essentials}\n      {finding}")
}

/// Records a problem that fails the test at the end (the test goes on to show what else
/// works), printing it now.
fn problem(problems: &mut Vec<String>, message: String) {
    eprintln!("PROBLEM: {message}");
    problems.push(message);
}

fn print_list(what: &str, list: &Value) {
    match list.as_array() {
        Some(items) if !items.is_empty() => {
            eprintln!("{what} ({}):", items.len());
            for item in items {
                eprintln!("  {item}");
            }
        }
        _ => eprintln!("{what}: none"),
    }
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
