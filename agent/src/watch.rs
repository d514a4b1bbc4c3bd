//! Real-time watching: inotify (through `notify`) on the policy's critical paths.
//!
//! An event names paths; the daemon re-checks just those against the baseline. inotify
//! has limits that bite on real hosts — a per-user watch count (one watch per
//! directory) and a bounded event queue — so each is turned into an event the daemon
//! acts on and shows: [`WatchEvent::Degraded`] when watches could not be placed (the
//! scheduled verification still covers those paths), [`WatchEvent::Rescan`] when
//! events were lost (the daemon runs a full check). Watching never fails silently.
//!
//! The agent's own reads (a full check opens every file) produce open/access events;
//! only creation, modification (content or metadata) and removal are passed on.

use crate::policy::Policy;
use driftwatch_protocol::path as dwpath;
use driftwatch_protocol::report::Severity;
use notify::event::EventKind;
use notify::{Config, RecommendedWatcher, RecursiveMode, Watcher as _};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use tokio::sync::mpsc;

/// What the watcher tells the daemon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchEvent {
    /// Something at this path (inside the root) was created, changed or removed.
    Changed(Vec<u8>),
    /// Events were lost (queue overflow): only a full check can tell what changed.
    Rescan(String),
    /// Some paths are not watched in real time.
    Degraded(String),
}

/// A running watcher; dropping it stops watching.
pub struct Watcher {
    _inner: Option<RecommendedWatcher>,
}

/// The directories to watch: the literal part (up to the first glob character) of every
/// pattern of every critical rule — or, when `[default]` itself is critical, the scan
/// paths — inside the scan paths, none inside another.
pub fn watched_paths(policy: &Policy) -> Vec<Vec<u8>> {
    let config = policy.config();
    let default_critical = config.default.severity == Severity::Critical;
    let critical_rules = config
        .rules
        .iter()
        .filter(|rule| rule.severity.unwrap_or(config.default.severity) == Severity::Critical)
        .flat_map(|rule| rule.paths.iter())
        .map(|pattern| literal_prefix(pattern.as_bytes()));
    let scan_paths = policy
        .scan_paths()
        .iter()
        .filter(|_| default_critical)
        .cloned();
    let mut paths: Vec<Vec<u8>> = critical_rules
        .chain(scan_paths)
        .filter(|path| {
            policy.in_scope(path) && !policy.state_for(path).excluded
                || policy.may_include_below(path)
        })
        .collect();
    paths.sort_by(|a, b| dwpath::cmp(a, b));
    let mut outermost: Vec<Vec<u8>> = Vec::new();
    for path in paths {
        if !outermost
            .iter()
            .any(|outer| dwpath::is_within(&path, outer))
        {
            outermost.push(path);
        }
    }
    outermost
}

fn literal_prefix(pattern: &[u8]) -> Vec<u8> {
    let mut prefix = Vec::new();
    for component in pattern.split(|b| *b == b'/').filter(|c| !c.is_empty()) {
        if component
            .iter()
            .any(|b| matches!(b, b'*' | b'?' | b'[' | b'{' | b'\\'))
        {
            break;
        }
        prefix.push(b'/');
        prefix.extend_from_slice(component);
    }
    if prefix.is_empty() {
        prefix.push(b'/');
    }
    prefix
}

fn inside(root: &Path, host: &Path) -> Option<Vec<u8>> {
    let relative = host.strip_prefix(root).ok()?;
    let mut path = b"/".to_vec();
    path.extend_from_slice(relative.as_os_str().as_bytes());
    Some(path)
}

/// Starts watching the critical paths of `policy` inside `root`. Problems placing
/// watches are reported on `events` as [`WatchEvent::Degraded`].
pub fn start(root: &Path, policy: &Policy, events: mpsc::Sender<WatchEvent>) -> Watcher {
    let root_owned: PathBuf = root.to_path_buf();
    let sender = events.clone();
    let handler = move |result: notify::Result<notify::Event>| {
        let event = match result {
            Ok(event) => event,
            Err(err) => {
                let _ = sender.blocking_send(WatchEvent::Degraded(format!("inotify error: {err}")));
                return;
            }
        };
        if event.need_rescan() {
            let _ = sender.blocking_send(WatchEvent::Rescan(
                "the inotify event queue overflowed".to_string(),
            ));
            return;
        }
        if !matches!(
            event.kind,
            EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) | EventKind::Any
        ) {
            return;
        }
        for path in &event.paths {
            if let Some(path) = inside(&root_owned, path) {
                // A full queue blocks this thread; the kernel's queue then overflows
                // and a rescan follows — slower, never silent.
                let _ = sender.blocking_send(WatchEvent::Changed(path));
            }
        }
    };
    let config = Config::default().with_follow_symlinks(false);
    let mut watcher = match RecommendedWatcher::new(handler, config) {
        Ok(watcher) => watcher,
        Err(err) => {
            let _ = events.try_send(WatchEvent::Degraded(format!(
                "real-time watching unavailable: {err}"
            )));
            return Watcher { _inner: None };
        }
    };
    for path in watched_paths(policy) {
        let host = root.join(std::ffi::OsStr::from_bytes(
            path.strip_prefix(b"/").unwrap_or(&path),
        ));
        if !host.exists() {
            continue;
        }
        if let Err(err) = watcher.watch(&host, RecursiveMode::Recursive) {
            let reason = match err.kind {
                notify::ErrorKind::MaxFilesWatch => format!(
                    "inotify watch limit reached while watching {} (raise fs.inotify.max_user_watches)",
                    dwpath::display(&path)
                ),
                _ => format!("cannot watch {}: {err}", dwpath::display(&path)),
            };
            let _ = events.try_send(WatchEvent::Degraded(reason));
        }
    }
    Watcher {
        _inner: Some(watcher),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn critical_rules_give_the_outermost_literal_directories() {
        let policy = Policy::parse(
            r#"
exclude = ["/home"]
include = ["/home/*/.ssh"]
[[rule]]
paths = ["/usr/bin", "/usr/bin/sub", "/usr/lib/**/*.so", "/etc/ssh", "/home/*/.ssh"]
severity = "critical"
[[rule]]
paths = ["/usr/share"]
severity = "low"
"#,
        )
        .unwrap();
        let paths: Vec<String> = watched_paths(&policy)
            .into_iter()
            .map(|p| String::from_utf8(p).unwrap())
            .collect();
        assert_eq!(paths, ["/etc/ssh", "/home", "/usr/bin", "/usr/lib"]);
    }

    #[test]
    fn a_critical_default_watches_the_scan_paths() {
        let policy = Policy::parse(
            "[scan]\npaths = [\"/usr\", \"/etc\"]\n[default]\nseverity = \"critical\"",
        )
        .unwrap();
        assert_eq!(watched_paths(&policy), [b"/etc".to_vec(), b"/usr".to_vec()]);
        let calm = Policy::parse("[scan]\npaths = [\"/usr\"]").unwrap();
        assert!(watched_paths(&calm).is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn changes_are_reported_and_own_reads_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        std::fs::write(root.join("usr/bin/tool"), b"v1").unwrap();
        let policy =
            Policy::parse("[[rule]]\npaths = [\"/usr/bin\"]\nseverity = \"critical\"").unwrap();
        let (tx, mut rx) = mpsc::channel(64);
        let _watcher = start(&root, &policy, tx);
        // Reading is not a change.
        let _ = std::fs::read(root.join("usr/bin/tool")).unwrap();
        std::fs::write(root.join("usr/bin/tool"), b"v2").unwrap();
        let event = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv())
            .await
            .expect("an event within 5 s")
            .expect("open channel");
        assert_eq!(event, WatchEvent::Changed(b"/usr/bin/tool".to_vec()));
    }
}
