//! Real-time watching: inotify on the policy's critical paths.
//!
//! An event names paths; the daemon re-checks just those against the baseline. inotify
//! has limits that bite on real hosts — a per-user watch count (one watch per
//! directory) and a bounded event queue — so each is turned into an event the daemon
//! acts on and shows: [`WatchEvent::Degraded`] when watches could not be placed (the
//! scheduled verification still covers those paths), [`WatchEvent::Rescan`] when
//! events were lost (the daemon runs a full check). Watching never fails silently.
//!
//! The mask asks only for changes — creation, deletion, moves, writes, metadata — and
//! never for opens or reads: a full check reads every watched file, and with open
//! events in the mask (as general-purpose watcher crates set it) those reads alone
//! overflow the kernel's queue and force needless rescans. Directories created later
//! are watched as they appear, and what they already hold is reported.

use crate::policy::Policy;
use driftwatch_protocol::path as dwpath;
use driftwatch_protocol::report::Severity;
use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};
use std::collections::HashMap;
use std::ffi::OsString;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Changes only, never through a link: see the module documentation for why opens and
/// reads are left out. Shared with the containers' upper-layer watcher.
pub const CHANGES: WatchMask = WatchMask::CREATE
    .union(WatchMask::DELETE)
    .union(WatchMask::MODIFY)
    .union(WatchMask::ATTRIB)
    .union(WatchMask::CLOSE_WRITE)
    .union(WatchMask::MOVED_FROM)
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::DONT_FOLLOW)
    .union(WatchMask::EXCL_UNLINK);
/// The changes, and a watched directory itself going away.
const MASK: WatchMask = CHANGES
    .union(WatchMask::DELETE_SELF)
    .union(WatchMask::MOVE_SELF);
/// How often the watcher thread looks at its stop flag while no event arrives.
const POLL_MILLIS: i32 = 200;

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
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watcher {
    /// A watcher whose `thread` stops once `stop` is set (when it is dropped).
    pub fn new(stop: Arc<AtomicBool>, thread: Option<std::thread::JoinHandle<()>>) -> Self {
        Watcher { stop, thread }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
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

/// The watches of one inotify instance, by descriptor, with the host directory each
/// watches.
struct Watches {
    inotify: Inotify,
    dirs: HashMap<WatchDescriptor, PathBuf>,
    root: PathBuf,
    events: mpsc::Sender<WatchEvent>,
    limit_reported: bool,
    /// On the watcher's own thread (blocking sends allowed); false while the watches
    /// are placed from the caller's async context.
    on_thread: bool,
    /// The watched trees' own directories.
    roots: Vec<PathBuf>,
    /// Roots moved or deleted, to watch again once a directory is back at their path.
    replaced: Vec<PathBuf>,
}

impl Watches {
    fn send(&self, event: WatchEvent) {
        if self.on_thread {
            // A full queue blocks this thread; the kernel's queue then overflows and a
            // rescan follows — slower, never silent.
            let _ = self.events.blocking_send(event);
        } else {
            // While placing watches the queue is nearly empty; a degradation that does
            // not fit is one of many identical ones.
            let _ = self.events.try_send(event);
        }
    }

    fn changed(&self, host: &Path) {
        if let Some(path) = inside(&self.root, host) {
            self.send(WatchEvent::Changed(path));
        }
    }

    fn add(&mut self, dir: &Path) -> bool {
        match self.inotify.watches().add(dir, MASK | WatchMask::ONLYDIR) {
            Ok(wd) => {
                self.dirs.insert(wd, dir.to_path_buf());
                true
            }
            Err(err) if err.raw_os_error() == Some(libc::ENOSPC) => {
                if !self.limit_reported {
                    self.limit_reported = true;
                    self.send(WatchEvent::Degraded(format!(
                        "inotify watch limit reached at {} (raise fs.inotify.max_user_watches)",
                        dir.display()
                    )));
                }
                false
            }
            // Gone, or not a directory any more: nothing to watch.
            Err(err) if matches!(err.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => true,
            Err(err) => {
                self.send(WatchEvent::Degraded(format!(
                    "cannot watch {}: {err}",
                    dir.display()
                )));
                true
            }
        }
    }

    /// Watches `dir` and every directory below it; with `report`, also reports what
    /// is there (a directory created after the fact may already hold files).
    fn add_tree(&mut self, dir: &Path, report: bool) {
        for entry in walkdir::WalkDir::new(dir)
            .follow_links(false)
            .into_iter()
            .flatten()
        {
            if report {
                self.changed(entry.path());
            }
            if entry.file_type().is_dir() && !self.add(entry.path()) {
                return;
            }
        }
    }

    /// A watched path: a directory is watched with everything below it; a file, or a
    /// path that does not exist yet (`/etc/ld.so.preload`), through its nearest
    /// existing parent directory.
    fn watch_path(&mut self, host: &Path) {
        if host.is_dir() && !host.is_symlink() {
            self.roots.push(host.to_path_buf());
            self.add_tree(host, false);
            return;
        }
        if let Some(parent) = host.ancestors().skip(1).find(|p| p.is_dir()) {
            self.add(parent);
        }
    }

    fn handle(&mut self, wd: WatchDescriptor, mask: EventMask, name: Option<OsString>) {
        if mask.contains(EventMask::Q_OVERFLOW) {
            self.send(WatchEvent::Rescan(
                "the inotify event queue overflowed".to_string(),
            ));
            return;
        }
        if mask.contains(EventMask::IGNORED) {
            self.dirs.remove(&wd);
            return;
        }
        let Some(dir) = self.dirs.get(&wd).cloned() else {
            return;
        };
        if (mask.contains(EventMask::DELETE_SELF) || mask.contains(EventMask::MOVE_SELF))
            && self.roots.contains(&dir)
        {
            // A whole watched tree was swapped: what changed in it is unknown.
            self.send(WatchEvent::Rescan(format!(
                "watched tree {} was moved or deleted",
                dir.display()
            )));
            self.replaced.push(dir);
            return;
        }
        let host = name.map_or(dir.clone(), |name| dir.join(name));
        if mask.contains(EventMask::ISDIR)
            && (mask.contains(EventMask::CREATE) || mask.contains(EventMask::MOVED_TO))
        {
            self.add_tree(&host, true);
        } else {
            self.changed(&host);
        }
    }

    /// Watches replaced roots again once a directory is back at their path, reporting
    /// what it holds (it was filled while nothing watched it).
    fn rewatch_replaced(&mut self) {
        let back: Vec<PathBuf> = self
            .replaced
            .iter()
            .filter(|path| path.is_dir() && !path.is_symlink())
            .cloned()
            .collect();
        self.replaced.retain(|path| !back.contains(path));
        for path in back {
            self.add_tree(&path, true);
        }
    }

    fn run(mut self, stop: &AtomicBool) {
        let mut buffer = vec![0u8; 64 * 1024];
        while !stop.load(Ordering::Relaxed) {
            let mut poll = libc::pollfd {
                fd: self.inotify.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd for the duration of the call.
            let ready = unsafe { libc::poll(&mut poll, 1, POLL_MILLIS) } > 0;
            self.rewatch_replaced();
            if !ready {
                continue;
            }
            let events: Vec<(WatchDescriptor, EventMask, Option<OsString>)> =
                match self.inotify.read_events(&mut buffer) {
                    Ok(events) => events
                        .map(|e| (e.wd, e.mask, e.name.map(|n| n.to_os_string())))
                        .collect(),
                    Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(err) => {
                        self.send(WatchEvent::Degraded(format!(
                            "real-time watching stopped: {err}"
                        )));
                        return;
                    }
                };
            for (wd, mask, name) in events {
                self.handle(wd, mask, name);
            }
        }
    }
}

/// Starts watching the critical paths of `policy` inside `root` on a thread of its
/// own. Problems placing watches are reported on `events` as
/// [`WatchEvent::Degraded`].
pub fn start(root: &Path, policy: &Policy, events: mpsc::Sender<WatchEvent>) -> Watcher {
    let stop = Arc::new(AtomicBool::new(false));
    let inotify = match Inotify::init() {
        Ok(inotify) => inotify,
        Err(err) => {
            let _ = events.try_send(WatchEvent::Degraded(format!(
                "real-time watching unavailable: {err}"
            )));
            return Watcher { stop, thread: None };
        }
    };
    let mut watches = Watches {
        inotify,
        dirs: HashMap::new(),
        root: root.to_path_buf(),
        events,
        limit_reported: false,
        on_thread: false,
        roots: Vec::new(),
        replaced: Vec::new(),
    };
    // Placed before returning, so that watching covers everything from then on.
    for path in watched_paths(policy) {
        let host = root.join(std::ffi::OsStr::from_bytes(
            path.strip_prefix(b"/").unwrap_or(&path),
        ));
        watches.watch_path(&host);
    }
    let flag = Arc::clone(&stop);
    let thread = std::thread::Builder::new()
        .name("watch".to_string())
        .spawn(move || {
            watches.on_thread = true;
            watches.run(&flag);
        })
        .ok();
    Watcher { stop, thread }
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

    async fn next_paths(rx: &mut mpsc::Receiver<WatchEvent>, until: &[u8]) -> Vec<Vec<u8>> {
        let mut seen = Vec::new();
        while !seen.iter().any(|p: &Vec<u8>| p.as_slice() == until) {
            match tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv()).await {
                Ok(Some(WatchEvent::Changed(path))) => seen.push(path),
                other => panic!("expected a change of {until:?}, got {other:?} after {seen:?}"),
            }
        }
        seen
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn new_directories_and_files_not_there_yet_are_covered() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        let policy = Policy::parse(
            "[[rule]]\npaths = [\"/usr/bin\", \"/etc/ld.so.preload\"]\nseverity = \"critical\"",
        )
        .unwrap();
        let (tx, mut rx) = mpsc::channel(256);
        let _watcher = start(&root, &policy, tx);
        // A file that does not exist yet, watched through its parent.
        std::fs::write(root.join("etc/ld.so.preload"), b"/tmp/evil.so").unwrap();
        next_paths(&mut rx, b"/etc/ld.so.preload").await;
        // A directory made after the watch, with a file in it already (mkdir -p + cp):
        // its content is reported, and later changes inside it too.
        std::fs::create_dir_all(root.join("usr/bin/sub/deeper")).unwrap();
        std::fs::write(root.join("usr/bin/sub/deeper/early"), b"x").unwrap();
        next_paths(&mut rx, b"/usr/bin/sub/deeper/early").await;
        std::fs::write(root.join("usr/bin/sub/deeper/late"), b"y").unwrap();
        next_paths(&mut rx, b"/usr/bin/sub/deeper/late").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_replaced_watched_tree_asks_for_a_rescan_and_is_watched_again() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        let policy =
            Policy::parse("[[rule]]\npaths = [\"/usr/bin\"]\nseverity = \"critical\"").unwrap();
        let (tx, mut rx) = mpsc::channel(256);
        let _watcher = start(&root, &policy, tx);
        std::fs::rename(root.join("usr/bin"), root.join("usr/bin.old")).unwrap();
        match tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv()).await {
            Ok(Some(WatchEvent::Rescan(reason))) => assert!(reason.contains("usr/bin"), "{reason}"),
            other => panic!("expected a rescan, got {other:?}"),
        }
        std::fs::create_dir(root.join("usr/bin")).unwrap();
        std::fs::write(root.join("usr/bin/implant"), b"x").unwrap();
        next_paths(&mut rx, b"/usr/bin/implant").await;
    }
}
