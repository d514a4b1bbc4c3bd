//! Helpers for the CLI integration tests: a scratch tree to scan, and a way to run the
//! `driftwatch` binary with a timeout and look at what it printed.
//!
//! Layout of every scratch directory (a fresh temp dir per test):
//!
//! ```text
//! DIR/tree/          the tree that is scanned (`--root`)
//! DIR/policy.toml    the test policy (no exclusions unless a test writes another)
//! DIR/baseline       the baseline, outside the scanned tree
//! ```

#![allow(dead_code)] // each test binary uses a different subset

use serde_json::Value;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_driftwatch");

/// How long any single command may run unless a test says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// Every attribute but mtime, severity medium, nothing excluded.
pub const TEST_POLICY: &str = r#"[default]
attributes = ["type","mode","uid","gid","size","content","link_target","xattrs","rdev"]
severity = "medium"
"#;

/// True when the tests run as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// True when running as root; otherwise prints "skipping: needs root".
pub fn root_or_skip() -> bool {
    let root = is_root();
    if !root {
        eprintln!("skipping: needs root");
    }
    root
}

/// True when `tool` can be found on PATH; prints why the test is skipped otherwise.
pub fn have_tool(tool: &str) -> bool {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
        .unwrap_or(false);
    if !found {
        eprintln!("skipping: `{tool}` is not installed");
    }
    found
}

/// Runs an ordinary helper program (setfattr, setcap, mknod…) and asserts success.
pub fn sh(program: &str, args: &[&OsStr]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A scratch directory holding the tree to scan, the policy and the baseline.
pub struct Tree {
    dir: tempfile::TempDir,
}

impl Default for Tree {
    fn default() -> Self {
        Self::new()
    }
}

impl Tree {
    /// A fresh scratch dir with an empty `tree/` and the test policy.
    pub fn new() -> Tree {
        let dir = tempfile::Builder::new()
            .prefix("driftwatch-cli-")
            .tempdir()
            .expect("temp dir");
        fs::create_dir(dir.path().join("tree")).expect("create tree/");
        fs::set_permissions(dir.path().join("tree"), fs::Permissions::from_mode(0o755))
            .expect("chmod tree/");
        let tree = Tree { dir };
        tree.write_policy(TEST_POLICY);
        tree
    }

    /// The scratch directory (outside the scanned tree).
    pub fn base(&self) -> &Path {
        self.dir.path()
    }

    /// The scanned tree (`--root`).
    pub fn root(&self) -> PathBuf {
        self.base().join("tree")
    }

    /// The host path of `rel` inside the tree (`rel` may start with `/`). Bytes, so that
    /// names that are not UTF-8 can be built.
    pub fn path(&self, rel: impl AsRef<[u8]>) -> PathBuf {
        let rel = rel.as_ref();
        let rel = rel.strip_prefix(b"/").unwrap_or(rel);
        self.root().join(OsStr::from_bytes(rel))
    }

    /// A path in the scratch dir, outside the tree.
    pub fn outside(&self, name: &str) -> PathBuf {
        self.base().join(name)
    }

    /// The default baseline path.
    pub fn baseline(&self) -> PathBuf {
        self.outside("baseline")
    }

    /// The default policy path.
    pub fn policy(&self) -> PathBuf {
        self.outside("policy.toml")
    }

    /// Replaces the policy file.
    pub fn write_policy(&self, text: &str) -> PathBuf {
        fs::write(self.policy(), text).expect("write policy");
        fs::set_permissions(self.policy(), fs::Permissions::from_mode(0o644))
            .expect("chmod policy");
        self.policy()
    }

    /// Writes a regular file (mode 0644), creating parent directories.
    pub fn file(&self, rel: impl AsRef<[u8]>, bytes: impl AsRef<[u8]>) -> &Self {
        let path = self.path(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).expect("create parents");
        }
        fs::write(&path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod file");
        self
    }

    /// Creates a directory (mode 0755) and its parents.
    pub fn dir(&self, rel: impl AsRef<[u8]>) -> &Self {
        let path = self.path(rel);
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod dir");
        self
    }

    /// Creates a symbolic link at `rel` pointing to `target`.
    pub fn symlink(&self, rel: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> &Self {
        let path = self.path(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).expect("create parents");
        }
        symlink(OsStr::from_bytes(target.as_ref()), &path)
            .unwrap_or_else(|e| panic!("symlink {}: {e}", path.display()));
        self
    }

    /// Sets the permission bits of `rel` (never follows a symlink: do not call on one).
    pub fn chmod(&self, rel: impl AsRef<[u8]>, mode: u32) -> &Self {
        let path = self.path(rel);
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
        self
    }

    /// Removes a file, symlink or whole directory.
    pub fn remove(&self, rel: impl AsRef<[u8]>) -> &Self {
        let path = self.path(rel);
        let meta = fs::symlink_metadata(&path)
            .unwrap_or_else(|e| panic!("remove {}: {e}", path.display()));
        if meta.is_dir() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        }
        .unwrap_or_else(|e| panic!("remove {}: {e}", path.display()));
        self
    }

    /// `baseline create --root tree --policy policy.toml --out baseline --format json`,
    /// asserting exit 0 and no errors.
    pub fn create(&self) -> Output {
        self.create_to(&self.baseline())
    }

    /// Like [`create`](Self::create), to another file.
    pub fn create_to(&self, out: &Path) -> Output {
        let result = self.create_cmd(out).run();
        result.assert_code(0);
        assert_eq!(result.json()["errors"], serde_json::json!([]), "{result}");
        result
    }

    /// The `baseline create` command line (JSON summary), to run or extend.
    pub fn create_cmd(&self, out: &Path) -> Cmd {
        Cmd::new(["baseline", "create", "--format", "json"])
            .arg("--root")
            .arg(self.root())
            .arg("--policy")
            .arg(self.policy())
            .arg("--out")
            .arg(out)
    }

    /// `check --root tree --baseline baseline --format json`.
    pub fn check(&self) -> Output {
        self.check_cmd().run()
    }

    /// The `check` command line (JSON report), to run or extend.
    pub fn check_cmd(&self) -> Cmd {
        Cmd::new(["check", "--format", "json"])
            .arg("--root")
            .arg(self.root())
            .arg("--baseline")
            .arg(self.baseline())
    }

    /// Runs `check` and asserts it is clean (exit 0, no findings, no errors).
    pub fn assert_clean(&self) {
        let out = self.check();
        out.assert_code(0);
        let report = out.json();
        assert_eq!(report["findings"], serde_json::json!([]), "{out}");
        assert_eq!(report["errors"], serde_json::json!([]), "{out}");
    }
}

/// A `driftwatch` invocation being put together.
#[derive(Clone, Debug)]
pub struct Cmd {
    program: OsString,
    wrapper: Vec<OsString>,
    args: Vec<OsString>,
    env: Vec<(OsString, Option<OsString>)>,
    timeout: Duration,
}

impl Cmd {
    /// `driftwatch ARGS…`, with `SOURCE_DATE_EPOCH` and `NO_COLOR` removed from the
    /// environment.
    pub fn new<I, S>(args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Cmd {
            program: BIN.into(),
            wrapper: Vec::new(),
            args: args.into_iter().map(|a| a.as_ref().to_owned()).collect(),
            env: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Another program than `driftwatch` (e.g. `script`), with the same environment
    /// clean-up, timeout and output collection.
    pub fn exec<I, S>(program: &str, args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Cmd {
            program: program.into(),
            ..Cmd::new(args)
        }
    }

    /// Appends an argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Cmd {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Sets an environment variable for the child.
    pub fn env(mut self, name: &str, value: impl AsRef<OsStr>) -> Cmd {
        self.env
            .push((name.into(), Some(value.as_ref().to_owned())));
        self
    }

    /// Runs the binary through a wrapper (e.g. `setpriv --reuid=…`).
    pub fn via<I, S>(mut self, wrapper: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.wrapper = wrapper.into_iter().map(|a| a.as_ref().to_owned()).collect();
        self
    }

    /// Fails the test (after killing the child) if the command runs longer than this.
    pub fn timeout(mut self, timeout: Duration) -> Cmd {
        self.timeout = timeout;
        self
    }

    /// Runs the command to completion (or timeout) and collects its output.
    pub fn run(&self) -> Output {
        let mut command = match self.wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(&self.program);
                c
            }
            None => Command::new(&self.program),
        };
        command
            .args(&self.args)
            .env_remove("SOURCE_DATE_EPOCH")
            .env_remove("NO_COLOR")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (name, value) in &self.env {
            match value {
                Some(value) => command.env(name, value),
                None => command.env_remove(name),
            };
        }
        let line = self.to_string();
        let started = Instant::now();
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {line}: {e}"));
        let mut stdout = child.stdout.take().expect("stdout pipe");
        let mut stderr = child.stderr.take().expect("stderr pipe");
        // Drain both pipes concurrently so that a chatty child never blocks on a full pipe.
        let out_reader = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = stdout.read_to_end(&mut buf);
            buf
        });
        let err_reader = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = stderr.read_to_end(&mut buf);
            buf
        });
        let status = loop {
            match child.try_wait().expect("wait for child") {
                Some(status) => break status,
                None if started.elapsed() > self.timeout => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let stderr = err_reader.join().unwrap_or_default();
                    panic!(
                        "timed out after {:?}: {line}\nstderr: {}",
                        self.timeout,
                        String::from_utf8_lossy(&stderr)
                    );
                }
                None => std::thread::sleep(Duration::from_millis(5)),
            }
        };
        let stdout = out_reader.join().expect("stdout reader");
        let stderr = err_reader.join().expect("stderr reader");
        Output {
            command: line,
            code: status.code(),
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stdout_bytes: stdout,
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
            elapsed: started.elapsed(),
        }
    }
}

impl std::fmt::Display for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (name, value) in &self.env {
            if let Some(value) = value {
                write!(f, "{}={} ", name.to_string_lossy(), value.to_string_lossy())?;
            }
        }
        for part in &self.wrapper {
            write!(f, "{} ", part.to_string_lossy())?;
        }
        if self.program == BIN {
            write!(f, "driftwatch")?;
        } else {
            write!(f, "{}", self.program.to_string_lossy())?;
        }
        for arg in &self.args {
            write!(f, " {}", arg.to_string_lossy())?;
        }
        Ok(())
    }
}

/// Runs `driftwatch ARGS…` with the default timeout.
pub fn run<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    Cmd::new(args).run()
}

/// What a finished command did.
#[derive(Clone, Debug)]
pub struct Output {
    /// The command line, for messages.
    pub command: String,
    /// The exit code (`None` when killed by a signal).
    pub code: Option<i32>,
    /// Standard output (lossy UTF-8).
    pub stdout: String,
    /// Standard output, raw.
    pub stdout_bytes: Vec<u8>,
    /// Standard error (lossy UTF-8).
    pub stderr: String,
    /// Wall-clock run time.
    pub elapsed: Duration,
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const MAX: usize = 20_000;
        let clip = |s: &str| -> String {
            if s.len() > MAX {
                let mut end = MAX;
                while !s.is_char_boundary(end) {
                    end -= 1;
                }
                format!("{}… ({} bytes)", &s[..end], s.len())
            } else {
                s.to_string()
            }
        };
        write!(
            f,
            "\n$ {}\nexit: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.command,
            self.code,
            clip(&self.stdout),
            clip(&self.stderr)
        )
    }
}

impl Output {
    /// Asserts the exit code.
    #[track_caller]
    pub fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(self.code, Some(code), "unexpected exit status{self}");
        self
    }

    /// Parses stdout as exactly one JSON document.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}){self}"))
    }

    /// The findings of a report as `(change, path, attributes)`, in report order.
    #[track_caller]
    pub fn findings(&self) -> Vec<Found> {
        findings_of(&self.json())
    }

    /// Asserts that stderr is exactly one `driftwatch: …` line and no panic.
    #[track_caller]
    pub fn assert_one_line_error(&self) -> &Self {
        assert!(
            !self.stderr.contains("panicked"),
            "the binary panicked{self}"
        );
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "stderr must be one line{self}");
        assert!(
            lines[0].starts_with("driftwatch: "),
            "stderr must start with `driftwatch: `{self}"
        );
        self
    }
}

/// A finding reduced to what most tests compare.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Found {
    /// `added`, `removed` or `modified`.
    pub change: String,
    /// The readable path.
    pub path: String,
    /// Changed attributes, in report order.
    pub attributes: Vec<String>,
}

/// Builds an expected finding.
pub fn found(change: &str, path: &str, attributes: &[&str]) -> Found {
    Found {
        change: change.to_string(),
        path: path.to_string(),
        attributes: attributes.iter().map(|a| a.to_string()).collect(),
    }
}

/// The file findings of a report (or diff) document, checking `kind` on the way.
#[track_caller]
pub fn findings_of(report: &Value) -> Vec<Found> {
    let findings = report["findings"]
        .as_array()
        .unwrap_or_else(|| panic!("no findings array in {report:#}"));
    findings
        .iter()
        .map(|f| {
            assert_eq!(f["kind"], "file", "unexpected finding kind: {f:#}");
            Found {
                change: f["change"].as_str().expect("change").to_string(),
                path: f["path"].as_str().expect("path").to_string(),
                attributes: f["attributes"]
                    .as_array()
                    .expect("attributes")
                    .iter()
                    .map(|a| a.as_str().expect("attribute name").to_string())
                    .collect(),
            }
        })
        .collect()
}

/// The finding at `path` (panics when absent).
#[track_caller]
pub fn finding_at<'a>(report: &'a Value, path: &str) -> &'a Value {
    report["findings"]
        .as_array()
        .and_then(|all| all.iter().find(|f| f["path"] == path))
        .unwrap_or_else(|| panic!("no finding for {path} in {report:#}"))
}

/// The `(path, error)` pairs of a report's or create summary's `errors`.
#[track_caller]
pub fn errors_of(report: &Value) -> Vec<(String, String)> {
    report["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("no errors array in {report:#}"))
        .iter()
        .map(|e| {
            (
                e["path"].as_str().expect("error path").to_string(),
                e["error"].as_str().expect("error text").to_string(),
            )
        })
        .collect()
}

/// `baseline show --entries --format json` of `baseline`: the entries array.
#[track_caller]
pub fn shown_entries(baseline: &Path) -> Vec<Value> {
    let out = Cmd::new(["baseline", "show", "--entries", "--format", "json"])
        .arg(baseline)
        .run();
    out.assert_code(0);
    out.json()["entries"]
        .as_array()
        .unwrap_or_else(|| panic!("no entries array{out}"))
        .clone()
}

/// Generates a signing key pair in `dir` as `NAME.key` / `NAME.pub`.
#[track_caller]
pub fn generate_key(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let private = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub"));
    Cmd::new(["key", "generate", "--private"])
        .arg(&private)
        .arg("--public")
        .arg(&public)
        .run()
        .assert_code(0);
    (private, public)
}

/// A minimal HTTP/1.0 GET on 127.0.0.1: (status code, body), or `None` while nothing
/// answers there.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::Write as _;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let code = response.get(9..12)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n")?.1.to_string();
    Some((code, body))
}
