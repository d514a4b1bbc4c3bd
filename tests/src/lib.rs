//! The harness of the end-to-end tests: real `driftwatch-collector` and `driftwatch`
//! processes on loopback, with certificates made by the collector's own `init` and
//! `issue-host-cert`, and a real HTTP server standing in for a webhook receiver.
//!
//! Nothing here is a mock: a test starts a [`Collector`], bakes an [`Image`] (a small
//! tree and its signed baseline, registered with the collector), boots [`Host`]s from
//! copies of the image's tree (each a `driftwatch run` daemon reporting to the
//! collector), changes files, and watches what the collector, the hosts' health
//! endpoints and the [`WebhookReceiver`] see. [`container`] goes one step further: real
//! Debian images, booted with systemd-nspawn (`tests/tests/image.rs`).
//!
//! The binaries are the workspace's debug builds: run `cargo build --workspace` first
//! (the README's test command does).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use serde_json::Value;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub mod bake;
pub mod browser;
pub mod container;
pub mod haproxy;
pub mod mount;
pub mod openapi;
pub mod plain_check;
pub mod podman;
pub mod postgres;
pub mod sockets;
pub mod vm;
pub mod webhook;

pub use webhook::{Answer, WebhookReceiver};

/// A workspace binary, next to this test's own executable's directory.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/debug/deps/test-hash -> target/debug/NAME
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace` before the end-to-end tests",
        path.display()
    );
    path
}

/// A free loopback port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `probe` every 50 ms until it returns `Some`, failing after `limit`.
pub fn wait_until<T>(limit: Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs a command to completion, with its output.
pub fn run(command: &mut Command) -> Output {
    command.output().expect("run command")
}

/// Asserts success and returns stdout.
pub fn ok(output: Output) -> String {
    assert!(
        output.status.success(),
        "command failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A plain HTTP GET on loopback: (status, body).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())?;
    Some((status, body))
}

/// Makes a long-running child die with the test process, even when the test is
/// killed (a `kill -9` of the test run must not leave collectors and daemons behind).
pub(crate) fn die_with_test(command: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe; the closure touches nothing else.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        })
    }
}

/// A log file a process (re)started by a test appends to.
pub(crate) fn append_log(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap()
}

fn signal(child: &Child, signal: i32) {
    // SAFETY: kill(2) on a child we own.
    unsafe {
        libc::kill(child.id() as i32, signal);
    }
}

pub(crate) fn stop_child(child: &mut Child, sig: i32) {
    signal(child, sig);
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// How the collector under test is deployed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topology {
    /// One `serve` process on its SQLite file: the first-try setup.
    Single,
    /// `n` `serve` replicas sharing one CA, one server certificate and one database,
    /// behind haproxy in `mode tcp`: agents and the CLI reach them only through it.
    Replicas(usize),
}

impl Topology {
    /// The fleet-scale setup the end-to-end tests run through: 3 replicas. `None` (with
    /// the reason printed) when haproxy or PostgreSQL is missing outside CI.
    pub fn replicas() -> Option<Topology> {
        if postgres::which("haproxy").is_none() && !Path::new("/usr/sbin/haproxy").is_file() {
            missing_prerequisite("haproxy is not installed (apt-get install haproxy)");
            return None;
        }
        // Replicas share one PostgreSQL database, as a fleet runs them.
        if std::env::var_os(postgres::URL_VAR).is_none() {
            missing_prerequisite(&format!("{} is not set", postgres::URL_VAR));
            return None;
        }
        Some(Topology::Replicas(3))
    }
}

/// Runs each named test function (`fn name(topology: Topology)`) twice: as
/// `single::name` against one SQLite collector, and as `replicas::name` against
/// [`Topology::replicas`] (three replicas behind haproxy). What a test asserts does not
/// depend on the topology: a fleet of replicas must behave as one collector.
///
/// Tests listed after `shared_decisions:` rely on what replicas can only share through
/// a shared store (alert grouping, the budget's decision lock), which the replicas'
/// PostgreSQL database gives them.
#[macro_export]
macro_rules! each_topology {
    ($($name:ident),* $(,)?) => {
        $crate::each_topology!($($name),* ; shared_decisions:);
    };
    ($($name:ident),* $(,)? ; shared_decisions: $($shared:ident),* $(,)?) => {
        mod single {
            $(
                #[test]
                fn $name() {
                    super::$name($crate::Topology::Single)
                }
            )*
            $(
                #[test]
                fn $shared() {
                    super::$shared($crate::Topology::Single)
                }
            )*
        }
        mod replicas {
            $(
                #[test]
                fn $name() {
                    if let Some(topology) = $crate::Topology::replicas() {
                        super::$name(topology)
                    }
                }
            )*
            $(
                #[test]
                fn $shared() {
                    if let Some(topology) = $crate::Topology::replicas() {
                        super::$shared(topology)
                    }
                }
            )*
        }
    };
}

/// Under `CI=true` a missing prerequisite fails the test (CI installs everything);
/// elsewhere the test says why it does not run and passes.
pub fn missing_prerequisite(reason: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("missing prerequisite under CI: {reason}");
    }
    eprintln!("skipping: {reason}");
}

/// A host's key and a certificate signing request for it, made with openssl in `dir`
/// as a provisioning script would: (key file, CSR PEM); `None` (after
/// [`missing_prerequisite`]) without openssl.
pub fn key_and_csr(dir: &Path, name: &str) -> Option<(PathBuf, String)> {
    let key = dir.join(format!("{name}.key"));
    let csr = dir.join(format!("{name}.csr"));
    let made = Command::new("openssl")
        .args(["req", "-new", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=ignored"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&csr)
        .output();
    match made {
        Ok(output) => assert!(output.status.success(), "openssl req: {output:?}"),
        Err(err) => {
            missing_prerequisite(&format!("openssl: {err}"));
            return None;
        }
    }
    Some((key, std::fs::read_to_string(&csr).unwrap()))
}

/// One `driftwatch-collector serve` process of a [`Collector`].
struct Replica {
    port: u16,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Replica {
    fn spawn(&mut self, ip: &str) {
        let log = append_log(&self.log);
        let child = die_with_test(
            Command::new(bin("driftwatch-collector"))
                .arg("serve")
                .arg("--config")
                .arg(&self.config)
                .env("RUST_LOG", "driftwatch_collector=debug")
                .stdout(Stdio::null())
                .stderr(log),
        )
        .spawn()
        .unwrap();
        self.child = Some(child);
        let port = self.port;
        wait_until(Duration::from_secs(20), "the collector to listen", || {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!(
                    "the collector exited ({status}): {}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            TcpStream::connect((ip, port)).ok()
        });
    }

    fn stop(&mut self, sig: i32) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, sig);
        }
    }
}

/// A running collector in its own directory (made by `driftwatch-collector init`): one
/// process, or replicas behind a load balancer ([`Topology`]). Either way a test sees
/// one URL, one CA, one CLI.
pub struct Collector {
    dir: tempfile::TempDir,
    /// The address it listens on and agents reach it at.
    ip: String,
    /// The port agents reach it at (haproxy's, with replicas).
    port: u16,
    replicas: Vec<Replica>,
    balancer: Option<haproxy::LoadBalancer>,
    database: Option<postgres::TestDatabase>,
}

impl Collector {
    /// Initialises a collector and starts it; `extra` is appended to its
    /// configuration (webhooks, replacement policy…). Defaults made quick for tests:
    /// one-second sweeps, two-second alert grouping.
    pub fn start(extra: &str) -> Collector {
        Collector::start_as(Topology::Single, extra)
    }

    /// Like [`Collector::start`], deployed as `topology`.
    pub fn start_as(topology: Topology, extra: &str) -> Collector {
        Collector::start_full(topology, "127.0.0.1", &[], &[], extra)
    }

    /// Like [`Collector::start`], listening on `ip` (a free port) with a server
    /// certificate for `names` (none: `init`'s defaults, localhost and 127.0.0.1), and
    /// registering only images signed by one of `trusted_keys` (none: any, and unsigned
    /// ones too).
    pub fn start_on(ip: &str, names: &[&str], trusted_keys: &[&Path], extra: &str) -> Collector {
        Collector::start_full(Topology::Single, ip, names, trusted_keys, extra)
    }

    fn start_full(
        topology: Topology,
        ip: &str,
        names: &[&str],
        trusted_keys: &[&Path],
        extra: &str,
    ) -> Collector {
        let dir = tempfile::Builder::new()
            .prefix("driftwatch-collector-")
            .tempdir()
            .unwrap();
        let port = free_port_on(ip);
        let mut init = Command::new(bin("driftwatch-collector"));
        init.arg("init")
            .arg(dir.path())
            .args(["--listen", &format!("{ip}:{port}")]);
        for name in names {
            init.args(["--name", name]);
        }
        ok(run(&mut init));
        let config = dir.path().join("collector.toml");
        let text = test_config(
            &std::fs::read_to_string(&config).unwrap(),
            trusted_keys,
            extra,
        );
        std::fs::write(&config, &text).unwrap();
        let mut collector = Collector {
            dir,
            ip: ip.to_string(),
            port,
            replicas: Vec::new(),
            balancer: None,
            database: None,
        };
        match topology {
            Topology::Single => collector.replicas.push(Replica {
                port,
                config,
                log: collector.path("collector.log"),
                child: None,
            }),
            Topology::Replicas(n) => collector.add_replicas(n, &text),
        }
        collector.spawn();
        if let Topology::Replicas(_) = topology {
            let backends: Vec<u16> = collector.replicas.iter().map(|r| r.port).collect();
            collector.balancer = Some(
                haproxy::LoadBalancer::start(ip, port, &backends)
                    .expect("haproxy (checked by Topology::replicas)"),
            );
        }
        collector
    }

    /// Writes one configuration per replica: the same file but for its own port (and
    /// the shared PostgreSQL database).
    fn add_replicas(&mut self, n: usize, text: &str) {
        let listen = format!("listen = \"{}:{}\"", self.ip, self.port);
        let mut text = text.to_string();
        let database = postgres::TestDatabase::create().expect("checked by Topology::replicas");
        text = text.replace(
            "database = \"collector.db\"",
            &format!("database = {:?}", database.url),
        );
        self.database = Some(database);
        // The CLI's configuration names the shared database too (issue-host-cert
        // binds the ids it provisions there).
        std::fs::write(self.config(), &text).unwrap();
        for i in 0..n {
            // The balancer's port is chosen but not yet bound: a free port may be it.
            let port = loop {
                let port = free_port_on(&self.ip);
                if port != self.port && self.replicas.iter().all(|r| r.port != port) {
                    break port;
                }
            };
            let config = self.path(&format!("replica-{i}.toml"));
            let own = text.replace(&listen, &format!("listen = \"{}:{port}\"", self.ip));
            assert_ne!(own, text, "init writes {listen}");
            std::fs::write(&config, own).unwrap();
            self.replicas.push(Replica {
                port,
                config,
                log: self.path(&format!("collector-{i}.log")),
                child: None,
            });
        }
    }

    fn spawn(&mut self) {
        // One at a time: each opens (and may migrate) the shared database.
        for replica in &mut self.replicas {
            if replica.child.is_none() {
                replica.spawn(&self.ip);
            }
        }
    }

    /// A file in the collector's directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Its configuration file (with replicas, the one the CLI reads).
    pub fn config(&self) -> PathBuf {
        self.path("collector.toml")
    }

    /// Its CA certificate (signs the server's and the hosts' certificates).
    pub fn ca(&self) -> PathBuf {
        self.path("ca.pem")
    }

    /// `https://IP:PORT` (127.0.0.1 unless started with [`Collector::start_on`]); with
    /// replicas, the load balancer's.
    pub fn url(&self) -> String {
        format!("https://{}:{}", self.ip, self.port)
    }

    /// Each replica's own URL, past the load balancer.
    pub fn replica_urls(&self) -> Vec<String> {
        self.replicas
            .iter()
            .map(|r| format!("https://{}:{}", self.ip, r.port))
            .collect()
    }

    /// The enrollment token.
    pub fn enrollment_token(&self) -> PathBuf {
        self.path("enrollment.token")
    }

    /// The shared PostgreSQL database, with replicas on PostgreSQL.
    pub fn database(&self) -> Option<&postgres::TestDatabase> {
        self.database.as_ref()
    }

    /// The log so far (for assertion messages): every replica's, then haproxy's.
    pub fn log(&self) -> String {
        let mut text = String::new();
        for (i, replica) in self.replicas.iter().enumerate() {
            if self.replicas.len() > 1 {
                text.push_str(&format!("--- replica {i}\n"));
            }
            text.push_str(&std::fs::read_to_string(&replica.log).unwrap_or_default());
        }
        if let Some(balancer) = &self.balancer {
            text.push_str("--- haproxy\n");
            text.push_str(&balancer.log());
        }
        text
    }

    /// Runs `driftwatch-collector ARGS --config CONFIG`, reaching the collector at
    /// [`Collector::url`].
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut command = Command::new(bin("driftwatch-collector"));
        command.env("DRIFTWATCH_COLLECTOR_URL", self.url());
        run(command.args(args).arg("--config").arg(self.config()))
    }

    /// Runs an operator command with `--format json` and parses its output.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["--format", "json"]);
        serde_json::from_str(&ok(self.cli(&all))).unwrap()
    }

    /// Every host.
    pub fn hosts(&self) -> Vec<Value> {
        self.json(&["hosts"]).as_array().unwrap().clone()
    }

    /// One host with its findings, if known.
    pub fn host(&self, host_id: &str) -> Option<Value> {
        let output = self.cli(&["host", host_id, "--format", "json"]);
        output
            .status
            .success()
            .then(|| serde_json::from_slice(&output.stdout).unwrap())
    }

    /// A host's state, if known.
    pub fn state(&self, host_id: &str) -> Option<String> {
        self.host(host_id)
            .map(|h| h["host"]["state"].as_str().unwrap().to_string())
    }

    /// The action log.
    pub fn actions(&self) -> Vec<Value> {
        self.json(&["actions", "--limit", "1000"])
            .as_array()
            .unwrap()
            .clone()
    }

    /// Issues a client certificate for `host_id` into DIR: (cert, key).
    pub fn issue_cert(&self, host_id: &str, dir: &Path) -> (PathBuf, PathBuf) {
        ok(self.cli(&[
            "issue-host-cert",
            "--host-id",
            host_id,
            "--out-dir",
            dir.to_str().unwrap(),
        ]));
        (
            dir.join(format!("{host_id}.pem")),
            dir.join(format!("{host_id}.key")),
        )
    }

    /// The value of one metric sample line (e.g.
    /// `driftwatch_collector_ingest_events_total{type="finding"}`), 0 when absent;
    /// with replicas, the sum over the running ones (each counts what it served).
    pub fn metric(&self, sample: &str) -> f64 {
        let token = self.path("operator.token");
        self.replicas
            .iter()
            .filter(|r| r.child.is_some())
            .map(|r| {
                let url = format!("https://{}:{}", self.ip, r.port);
                let (status, text) =
                    RawClient::to(&url, &self.ca(), None).get_operator("/metrics", &token);
                assert_eq!(status, 200, "{text}");
                text.lines()
                    .find_map(|line| line.strip_prefix(sample)?.trim().parse().ok())
                    .unwrap_or(0.0)
            })
            .sum()
    }

    /// The ids of every event the collector stored from `host_id` but heartbeats (whose
    /// ids are random), read from its SQLite file: what "each event once" is judged
    /// on. `None` with replicas (their store is PostgreSQL).
    pub fn stored_event_ids(&self, host_id: &str) -> Option<Vec<String>> {
        if self.database.is_some() {
            return None;
        }
        let db = rusqlite::Connection::open_with_flags(
            self.path("collector.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        let mut query = db
            .prepare(
                "SELECT event_id FROM events WHERE host_id = ?1 AND event_id NOT LIKE '%:hb:%' \
                 ORDER BY event_id",
            )
            .unwrap();
        let ids = query
            .query_map([host_id], |row| row.get(0))
            .unwrap()
            .collect::<Result<Vec<String>, _>>()
            .unwrap();
        Some(ids)
    }

    /// Sends `sig` to every running replica (SIGHUP: re-read the token files).
    pub fn signal(&self, sig: i32) {
        for child in self.replicas.iter().filter_map(|r| r.child.as_ref()) {
            signal(child, sig);
        }
    }

    /// Stops it (every replica) with SIGTERM.
    pub fn stop(&mut self) {
        for replica in &mut self.replicas {
            replica.stop(libc::SIGTERM);
        }
    }

    /// Kills it (every replica) with SIGKILL.
    pub fn kill(&mut self) {
        for replica in &mut self.replicas {
            replica.stop(libc::SIGKILL);
        }
    }

    /// Starts it again on the same directory and ports.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// How many `serve` processes it runs.
    pub fn replica_count(&self) -> usize {
        self.replicas.len()
    }

    /// Kills replica `i` with SIGKILL (the others keep serving).
    pub fn kill_replica(&mut self, i: usize) {
        self.replicas[i].stop(libc::SIGKILL);
    }

    /// The replica with an established connection to `port` on loopback (a delivery in
    /// flight to a receiver there), if any.
    pub fn replica_connected_to(&self, port: u16) -> Option<usize> {
        self.replicas.iter().position(|r| {
            r.child
                .as_ref()
                .is_some_and(|c| sockets::connected_to(c.id(), port))
        })
    }

    /// Starts replica `i` again (a no-op when it runs).
    pub fn start_replica(&mut self, i: usize) {
        let ip = self.ip.clone();
        let replica = &mut self.replicas[i];
        if replica.child.is_none() {
            replica.spawn(&ip);
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.kill();
        // The balancer and the database go after the processes using them.
        self.balancer = None;
        self.database = None;
    }
}

/// A free port on `ip`.
fn free_port_on(ip: &str) -> u16 {
    TcpListener::bind((ip, 0))
        .unwrap_or_else(|e| panic!("cannot bind {ip}: {e}"))
        .local_addr()
        .unwrap()
        .port()
}

/// `init`'s configuration made quick for tests, with `extra` appended.
fn test_config(init: &str, trusted_keys: &[&Path], extra: &str) -> String {
    let keys: Vec<String> = trusted_keys.iter().map(|k| format!("{k:?}")).collect();
    let trust = if keys.is_empty() {
        // The tests' images are signed with keys of their own.
        "trusted_keys = []\nallow_unsigned_baselines = true".to_string()
    } else {
        format!("trusted_keys = [{}]", keys.join(", "))
    };
    let written = "trusted_keys = [\"pipeline.pub\"]";
    assert!(init.contains(written), "init writes {written}");
    let mut text = init.replace(written, &trust);
    if extra.contains("[replacement]") {
        // The test's replacement policy replaces the one `init` wrote (its rule
        // and the commented webhook example come last).
        let cut = text
            .find("\n[replacement]")
            .expect("init writes [replacement]");
        text.truncate(cut + 1);
    }
    text.push_str(extra);
    if !extra.contains("[hosts]") {
        text.push_str("\n[hosts]\nsweep_interval_secs = 1\nmissed_heartbeats = 3\n");
    }
    if !extra.contains("[alerts]") {
        text.push_str("\n[alerts]\ngroup_wait_secs = 2\n");
    }
    text
}

/// Critical on /usr/bin, low elsewhere: what the hosts' baselines record.
pub const POLICY: &str = r#"
[default]
attributes = ["type","mode","uid","gid","size","content","link_target","xattrs","rdev"]
severity = "low"
[[rule]]
name = "binaries"
paths = ["/usr/bin"]
severity = "critical"
"#;

/// A baked image: a small tree and its signed baseline.
pub struct Image {
    dir: tempfile::TempDir,
    /// Its id.
    pub id: String,
}

impl Image {
    /// Bakes a tree with a few binaries and config files under image id `id`.
    pub fn bake(id: &str) -> Image {
        Image::bake_with(id, &[])
    }

    /// Like [`Image::bake`], with `changes` to the tree first: `(path, Some(content))`
    /// writes a file, `(path, None)` leaves one of the usual files out (paths relative
    /// to the root).
    pub fn bake_with(id: &str, changes: &[(&str, Option<&str>)]) -> Image {
        let dir = tempfile::Builder::new()
            .prefix("driftwatch-image-")
            .tempdir()
            .unwrap();
        let tree = dir.path().join("tree");
        let usual = [
            ("usr/bin/tool", Some("#!/bin/sh\necho tool\n")),
            ("usr/bin/other", Some("#!/bin/sh\necho other\n")),
            ("etc/app.conf", Some("setting = 1\n")),
            ("etc/machine-id", Some("0123456789abcdef0123456789abcdef\n")),
        ];
        let files = usual
            .iter()
            .filter(|(path, _)| !changes.iter().any(|(changed, _)| changed == path))
            .chain(changes)
            .filter_map(|(path, content)| content.map(|c| (*path, c)));
        for (path, content) in files {
            let path = tree.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, content).unwrap();
        }
        let policy = dir.path().join("policy.toml");
        std::fs::write(&policy, POLICY).unwrap();
        let (private, public) = (dir.path().join("key.pem"), dir.path().join("key.pub"));
        ok(run(Command::new(bin("driftwatch"))
            .args(["key", "generate", "--private"])
            .arg(&private)
            .arg("--public")
            .arg(&public)));
        ok(run(Command::new(bin("driftwatch"))
            .args(["baseline", "create", "--root"])
            .arg(&tree)
            .arg("--policy")
            .arg(&policy)
            .args(["--image-id", id, "--sign-key"])
            .arg(&private)
            .arg("--out")
            .arg(dir.path().join("baseline"))));
        Image {
            dir,
            id: id.to_string(),
        }
    }

    /// The baseline file.
    pub fn baseline(&self) -> PathBuf {
        self.dir.path().join("baseline")
    }

    /// The pipeline's public key.
    pub fn public_key(&self) -> PathBuf {
        self.dir.path().join("key.pub")
    }

    /// The baked tree.
    pub fn tree(&self) -> PathBuf {
        self.dir.path().join("tree")
    }

    /// The baseline's digest, as `baseline verify` prints it.
    pub fn digest(&self) -> String {
        let out = ok(run(Command::new(bin("driftwatch"))
            .args(["baseline", "show", "--format", "json"])
            .arg(self.baseline())));
        let show: Value = serde_json::from_str(&out).unwrap();
        show["digest"].as_str().unwrap().to_string()
    }

    /// Registers the image with `collector`.
    pub fn register(&self, collector: &Collector) {
        ok(collector.cli(&[
            "image",
            "register",
            "--image-id",
            &self.id,
            "--baseline",
            self.baseline().to_str().unwrap(),
        ]));
    }
}

/// How a host proves who it is.
pub enum Credentials {
    /// A certificate issued by the collector's CA beforehand.
    Certificate,
    /// The enrollment token, exchanged on first contact.
    Enrollment,
}

/// A host booted from an image: a copy of its tree, and a `driftwatch run` daemon
/// reporting to a collector.
pub struct Host {
    dir: tempfile::TempDir,
    /// Its id at the collector.
    pub id: String,
    /// Its health endpoint's port.
    pub health_port: u16,
    child: Option<Child>,
}

impl Host {
    /// Copies the image's tree and baseline and writes the agent's configuration;
    /// `extra` is appended to it. Does not start the daemon.
    pub fn new(
        image: &Image,
        collector: &Collector,
        id: &str,
        credentials: Credentials,
        extra: &str,
    ) -> Host {
        Host::new_at(image, collector, &[collector.url()], id, credentials, extra)
    }

    /// Like [`Host::new`], reporting to `urls` (`[collector] url` as a list when more
    /// than one: replicas the agent fails over between).
    pub fn new_at(
        image: &Image,
        collector: &Collector,
        urls: &[String],
        id: &str,
        credentials: Credentials,
        extra: &str,
    ) -> Host {
        let dir = tempfile::Builder::new()
            .prefix("driftwatch-host-")
            .tempdir()
            .unwrap();
        ok(run(Command::new("cp")
            .arg("-a")
            .arg(image.tree())
            .arg(dir.path().join("tree"))));
        std::fs::copy(image.baseline(), dir.path().join("baseline")).unwrap();
        let head = format!(
            "root = {:?}\npubkey = {:?}\n{extra}",
            dir.path().join("tree"),
            image.public_key()
        );
        Host::configure(dir, collector, urls, id, credentials, &head)
    }

    /// A host that is this machine: a daemon on `/`, where the running containers are,
    /// checking against `baseline` (copied) with `policy`, with a certificate. Its
    /// [`Host::path`] and [`Host::write`] are not for it: it has no tree of its own.
    pub fn on_this_machine(
        collector: &Collector,
        id: &str,
        baseline: &Path,
        policy: &Path,
    ) -> Host {
        let dir = tempfile::Builder::new()
            .prefix("driftwatch-host-")
            .tempdir()
            .unwrap();
        std::fs::copy(baseline, dir.path().join("baseline")).unwrap();
        let head = format!("root = \"/\"\npolicy = {policy:?}\n");
        let urls = [collector.url()];
        Host::configure(dir, collector, &urls, id, Credentials::Certificate, &head)
    }

    /// Writes the agent's configuration into `dir` (`head` first: root, keys, extras).
    fn configure(
        dir: tempfile::TempDir,
        collector: &Collector,
        urls: &[String],
        id: &str,
        credentials: Credentials,
        head: &str,
    ) -> Host {
        let auth = match credentials {
            Credentials::Certificate => {
                let (cert, key) = collector.issue_cert(id, dir.path());
                format!("cert_file = {cert:?}\nkey_file = {key:?}\n")
            }
            Credentials::Enrollment => format!(
                "enrollment_token_file = {:?}\n",
                collector.enrollment_token()
            ),
        };
        let health_port = free_port();
        let config = format!(
            "baseline = {baseline:?}\nstate_dir = {state:?}\nrun_dir = {run:?}\n{head}\n\
             [health]\nlisten = \"127.0.0.1:{health_port}\"\n\
             [collector]\nurl = {url}\nca_file = {ca:?}\nhost_id = \"{id}\"\nheartbeat_interval_secs = 1\nretry_max_secs = 2\ntimeout_secs = 2\n{auth}",
            baseline = dir.path().join("baseline"),
            state = dir.path().join("state"),
            run = dir.path().join("run"),
            url = match urls {
                [one] => format!("{one:?}"),
                many => format!("{many:?}"),
            },
            ca = collector.ca(),
        );
        std::fs::write(dir.path().join("agent.toml"), config).unwrap();
        Host {
            dir,
            id: id.to_string(),
            health_port,
            child: None,
        }
    }

    /// The agent's configuration file.
    pub fn config(&self) -> PathBuf {
        self.dir.path().join("agent.toml")
    }

    /// A path inside the host's root.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir
            .path()
            .join("tree")
            .join(rel.trim_start_matches('/'))
    }

    /// Its `state_dir` (the state, the hash cache and the spool), made on first start.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// Starts the daemon and waits for its health endpoint.
    pub fn start(&mut self) -> &mut Self {
        let log = append_log(&self.dir.path().join("daemon.log"));
        let child = die_with_test(
            Command::new(bin("driftwatch"))
                .args(["run", "--config"])
                .arg(self.config())
                .env_remove("JOURNAL_STREAM")
                .env_remove("NOTIFY_SOCKET")
                .env("RUST_LOG", "driftwatch=debug")
                .stdout(Stdio::null())
                .stderr(log),
        )
        .spawn()
        .unwrap();
        self.child = Some(child);
        let port = self.health_port;
        wait_until(
            Duration::from_secs(30),
            "the agent's health endpoint",
            || http_get(port, "/healthz"),
        );
        self
    }

    /// The status of `/healthz`.
    pub fn health(&self) -> Option<u16> {
        http_get(self.health_port, "/healthz").map(|(status, _)| status)
    }

    /// Stops the daemon with SIGTERM.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, libc::SIGTERM);
        }
    }

    /// Sends `sig` to the running daemon (SIGHUP: read the configuration, the CA
    /// bundle and the client certificate again).
    pub fn signal(&self, sig: i32) {
        if let Some(child) = &self.child {
            signal(child, sig);
        }
    }

    /// Kills the daemon with SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, libc::SIGKILL);
        }
    }

    /// Writes a file inside the host's root.
    pub fn write(&self, rel: &str, content: &str) {
        let path = self.path(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        // Written beside the tree and renamed in, so the daemon never sees the file half
        // written: an empty file that then gets its content is a changed finding (an
        // escalation, sent again), which would count as a second event here.
        let staged = self.dir.path().join(".staged");
        std::fs::write(&staged, content).unwrap();
        std::fs::rename(&staged, path).unwrap();
    }

    /// Runs `driftwatch check --report` against this host's root; returns the output.
    pub fn check_report(&self) -> Output {
        run(Command::new(bin("driftwatch"))
            .args(["check", "--report", "--no-runtime", "--root"])
            .arg(self.path("/"))
            .arg("--baseline")
            .arg(self.dir.path().join("baseline"))
            .arg("--config")
            .arg(self.config()))
    }
}

/// Runs every host's one-shot report at the same moment (threads released together),
/// each expected to deliver the drift it found (exit 1).
pub fn report_drift_at_once(hosts: &[Host]) {
    let start = std::sync::Barrier::new(hosts.len());
    std::thread::scope(|scope| {
        for host in hosts {
            let start = &start;
            scope.spawn(move || {
                start.wait();
                let output = host.check_report();
                assert_eq!(
                    output.status.code(),
                    Some(1),
                    "{}: {}",
                    host.id,
                    String::from_utf8_lossy(&output.stderr)
                );
            });
        }
    });
}

impl Drop for Host {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A raw HTTPS client of the collector, for requests an agent would never send.
pub struct RawClient {
    client: reqwest::Client,
    base: String,
    runtime: tokio::runtime::Runtime,
}

impl RawClient {
    /// Trusts the collector's CA; presents `identity` (cert + key PEM files) when
    /// given.
    pub fn new(collector: &Collector, identity: Option<(&Path, &Path)>) -> RawClient {
        RawClient::to(&collector.url(), &collector.ca(), identity)
    }

    /// A client of the collector (or replica) at `base`, trusting `ca`.
    pub fn to(base: &str, ca: &Path, identity: Option<(&Path, &Path)>) -> RawClient {
        let ca = std::fs::read(ca).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&ca) {
            roots.add(cert.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let tls = match identity {
            Some((cert, key)) => {
                let chain = rustls::pki_types::pem::PemObject::pem_file_iter(cert)
                    .unwrap()
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap();
                let key = rustls::pki_types::pem::PemObject::from_pem_file(key).unwrap();
                builder.with_client_auth_cert(chain, key).unwrap()
            }
            None => builder.with_no_client_auth(),
        };
        // HTTP/2 as agents speak it: a refusal (413) arrives even while the body is
        // still being sent, where HTTP/1.1 would see the connection closed under it.
        let mut tls = tls;
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        RawClient {
            client,
            base: base.to_string(),
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
        }
    }

    /// GETs `path` with the operator token: (status, body).
    pub fn get_operator(&self, path: &str, token_file: &Path) -> (u16, String) {
        let (status, _, body) = self.get_operator_page(path, token_file);
        (status, body)
    }

    /// GETs one page of a list with the operator token: (status, the `Next-Cursor`
    /// header, body).
    pub fn get_operator_page(
        &self,
        path: &str,
        token_file: &Path,
    ) -> (u16, Option<String>, String) {
        let token = std::fs::read_to_string(token_file).unwrap();
        let request = self
            .client
            .get(format!("{}{path}", self.base))
            .bearer_auth(token.trim());
        self.runtime.block_on(async {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let next = response
                .headers()
                .get("next-cursor")
                .map(|v| v.to_str().unwrap().to_string());
            (status, next, response.text().await.unwrap())
        })
    }

    /// POSTs `body` with extra headers: Ok((status, body)) or Err(transport error).
    pub fn post(
        &self,
        path: &str,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> Result<(u16, String), String> {
        let mut request = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        self.runtime.block_on(async {
            let response = request.send().await.map_err(|e| format!("{e:?}"))?;
            let status = response.status().as_u16();
            let text = response.text().await.map_err(|e| e.to_string())?;
            Ok((status, text))
        })
    }
}

/// A well-formed batch of one heartbeat from `host_id`.
pub fn heartbeat_batch(host_id: &str, event_id: &str) -> Value {
    serde_json::json!({
        "schema": "driftwatch.ingest/v1",
        "host_id": host_id,
        "hostname": host_id,
        // No baseline digest: the registry check has nothing to judge.
        "image": {"image_id": "img-raw", "baseline_digest": null},
        "events": [{
            "id": event_id,
            "at": "2026-01-01T00:00:00Z",
            "body": {"type": "heartbeat", "agent_version": "test", "findings": 0,
                     "last_full_verification": null, "interval_secs": 0}
        }]
    })
}

/// Gzip-compresses `bytes`.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}
