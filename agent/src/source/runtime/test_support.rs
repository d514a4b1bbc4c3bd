//! What the runtime sources' tests share: baselines in memory, processes run and reaped,
//! and the lock that keeps deliberate drift away from the machine-wide test.

use super::RuntimeObservation;
use crate::policy::runtime::RuntimeConfig;
use driftwatch_protocol::baseline::{BaselineMeta, BaselineReader, BaselineWriter};
use driftwatch_protocol::entry::FileType;
use driftwatch_protocol::path as dwpath;
use driftwatch_protocol::report::{Finding, ListenerFinding, ProcessFinding};
use driftwatch_protocol::Entry;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Mutex;
use std::time::Duration;

/// Tests that start processes or open listeners hold this, so the machine-wide test
/// does not see their deliberate drift.
pub(crate) static LIVE: Mutex<()> = Mutex::new(());

pub(crate) fn live() -> std::sync::MutexGuard<'static, ()> {
    LIVE.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub(crate) fn meta(policy: &str) -> BaselineMeta {
    BaselineMeta {
        image_id: Some("runtime-test".into()),
        created_at: "2026-01-01T00:00:00Z".into(),
        tool: "driftwatch test".into(),
        policy: policy.to_string(),
        policy_digest: String::new(),
        hashes: vec!["blake3".into()],
        packages: None,
        runtime: None,
    }
}

/// A sealed baseline in memory.
pub(crate) fn baseline_bytes(policy: &str, mut entries: Vec<Entry>) -> Vec<u8> {
    entries.sort_by(|a, b| dwpath::cmp(&a.path, &b.path));
    let mut writer = BaselineWriter::new(Vec::new(), &meta(policy)).unwrap();
    for entry in &entries {
        writer.push(entry).unwrap();
    }
    writer.finish(None).unwrap().0
}

pub(crate) fn open(bytes: &[u8]) -> BaselineReader<&[u8]> {
    BaselineReader::open(bytes, None).unwrap()
}

pub(crate) fn file_entry(path: &Path, blake3: Option<[u8; 32]>) -> Entry {
    Entry {
        path: path.as_os_str().as_bytes().to_vec(),
        file_type: FileType::File,
        mode: 0o755,
        blake3,
        ..Entry::default()
    }
}

pub(crate) fn dir_entry(path: &Path) -> Entry {
    Entry {
        path: path.as_os_str().as_bytes().to_vec(),
        file_type: FileType::Dir,
        mode: 0o755,
        ..Entry::default()
    }
}

pub(crate) fn scan_policy(paths: &[&Path]) -> String {
    let quoted: Vec<String> = paths
        .iter()
        .map(|p| format!("{:?}", p.display().to_string()))
        .collect();
    format!("[scan]\npaths = [{}]\n", quoted.join(", "))
}

/// A canonical temporary directory (the kernel reports canonical exe paths).
pub(crate) fn temp_dir() -> (tempfile::TempDir, PathBuf) {
    let temp = tempfile::tempdir().unwrap();
    let path = fs::canonicalize(temp.path()).unwrap();
    (temp, path)
}

/// A child process killed and reaped when dropped.
pub(crate) struct Running(pub Child);

impl Running {
    pub(crate) fn pid(&self) -> i32 {
        self.0.id() as i32
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn sleep_binary() -> PathBuf {
    fs::canonicalize("/bin/sleep").unwrap()
}

/// Copies `sleep` to `path` and runs it.
pub(crate) fn run_copy(path: &Path) -> Running {
    fs::copy(sleep_binary(), path).unwrap();
    run(path)
}

pub(crate) fn run(path: &Path) -> Running {
    // Another test thread may fork while the copy's write descriptor is still open
    // in this process; the child holds it until it execs, and exec then fails with
    // ETXTBSY. That clears within milliseconds.
    for _ in 0..100 {
        match Command::new(path).arg("600").spawn() {
            Ok(child) => return Running(child),
            Err(err) if err.raw_os_error() == Some(libc::ETXTBSY) => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(err) => panic!("cannot run {}: {err}", path.display()),
        }
    }
    panic!("{} stays busy", path.display());
}

pub(crate) fn processes(observation: &RuntimeObservation, pid: i32) -> Vec<&ProcessFinding> {
    observation
        .findings
        .iter()
        .filter_map(|f| match f {
            Finding::Process(p) if p.pid == pid => Some(p),
            _ => None,
        })
        .collect()
}

pub(crate) fn listeners(observation: &RuntimeObservation, port: u16) -> Vec<&ListenerFinding> {
    observation
        .findings
        .iter()
        .filter_map(|f| match f {
            Finding::Listener(l) if l.port == port => Some(l),
            _ => None,
        })
        .collect()
}

pub(crate) fn own_exe() -> String {
    fs::read_link("/proc/self/exe")
        .unwrap()
        .display()
        .to_string()
}

pub(crate) fn no_mutable_paths() -> RuntimeConfig {
    RuntimeConfig {
        mutable_paths: Vec::new(),
        ..RuntimeConfig::default()
    }
}
