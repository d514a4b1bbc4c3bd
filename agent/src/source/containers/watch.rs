//! The daemon's view of containers in real time: containers are noticed as they start
//! and stop, each one's upper layer is watched with inotify (a write inside a
//! container is a change in its upper directory on the host), and its processes are
//! looked at every second.
//!
//! All of it runs on one thread of its own that sends [`ContainerEvent`]s to the
//! daemon. Idle, it costs a read of PID 1's mount table and a `stat` per process each
//! second; the runtimes' metadata is read again only when the set of overlay mounts
//! changed, and a container's upper layer is walked in full only when it is first
//! seen (and after lost events).

use super::config::ContainersConfig;
use super::discover::{discover, Container, NotContainers};
use super::metadata::{self, RuntimeState};
use super::{check, overlay, process, recheck, Host, Skip};
use crate::source::mountinfo;
use driftwatch_protocol::report::{ContainerRef, Finding};
use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};
use std::collections::{BTreeMap, HashMap};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How often containers starting and stopping, and their processes, are looked for.
const DISCOVER_INTERVAL: Duration = Duration::from_secs(1);
/// How long events are gathered after the first before re-checking: a burst of writes
/// (an `apt-get install` inside a container) is re-checked once.
const SETTLE: Duration = Duration::from_millis(20);

const MASK: WatchMask = crate::watch::CHANGES.union(WatchMask::ONLYDIR);

/// What the container watcher tells the daemon.
#[derive(Clone, Debug)]
pub enum ContainerEvent {
    /// A container is running and watched.
    Started(ContainerRef),
    /// A container is gone; it is no longer watched.
    Stopped(ContainerRef),
    /// Drift found in containers.
    Findings(Vec<Finding>),
    /// Something is not watched in real time (the scheduled checks still cover it).
    Degraded(String),
}

/// The running watcher; dropping it stops the thread.
pub type ContainerWatcher = crate::watch::Watcher;

/// Starts following the containers of `host`.
pub fn start(
    host: Host,
    config: ContainersConfig,
    events: mpsc::Sender<ContainerEvent>,
) -> ContainerWatcher {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let thread = std::thread::Builder::new()
        .name("containers".to_string())
        .spawn(move || match Inotify::init() {
            Ok(inotify) => Watching {
                host,
                config,
                events,
                inotify,
                containers: BTreeMap::new(),
                dirs: HashMap::new(),
                state: RuntimeState::default(),
                overlay_roots: Vec::new(),
                not_containers: NotContainers::new(),
                limit_reported: false,
            }
            .run(&flag),
            Err(err) => {
                let _ = events.blocking_send(ContainerEvent::Degraded(format!(
                    "containers are not watched in real time: {err}"
                )));
            }
        })
        .ok();
    ContainerWatcher::new(stop, thread)
}

struct Watched {
    container: Container,
    wds: Vec<WatchDescriptor>,
}

struct Watching {
    host: Host,
    config: ContainersConfig,
    events: mpsc::Sender<ContainerEvent>,
    inotify: Inotify,
    containers: BTreeMap<String, Watched>,
    /// Watched directories: the container id and the directory in its upper layer.
    dirs: HashMap<WatchDescriptor, (String, PathBuf)>,
    state: RuntimeState,
    overlay_roots: Vec<Vec<u8>>,
    not_containers: NotContainers,
    limit_reported: bool,
}

impl Watching {
    fn send(&self, event: ContainerEvent) -> bool {
        self.events.blocking_send(event).is_ok()
    }

    fn run(mut self, stop: &AtomicBool) {
        let mut buffer = vec![0u8; 64 * 1024];
        let mut next_discovery = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            if Instant::now() >= next_discovery {
                if !self.discover() {
                    return;
                }
                next_discovery = Instant::now() + DISCOVER_INTERVAL;
            }
            let wait = next_discovery.saturating_duration_since(Instant::now());
            let wait_ms = i32::try_from(wait.as_millis()).unwrap_or(i32::MAX).min(200);
            let mut poll = libc::pollfd {
                fd: self.inotify.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd for the duration of the call.
            if unsafe { libc::poll(&mut poll, 1, wait_ms) } <= 0 {
                continue;
            }
            std::thread::sleep(SETTLE);
            let changed = self.read_events(&mut buffer);
            if !self.recheck(changed) {
                return;
            }
        }
    }

    /// Overlay mount points in PID 1's table: when they change, containers started or
    /// stopped and the runtimes' metadata is read again.
    fn overlay_roots(&self) -> Vec<Vec<u8>> {
        let text = std::fs::read(self.host.proc.join("1/mountinfo")).unwrap_or_default();
        let mut roots: Vec<Vec<u8>> = mountinfo::parse(&text)
            .0
            .into_iter()
            .filter(|line| line.fs_type == "overlay")
            .map(|line| line.mount_point)
            .collect();
        roots.sort();
        roots
    }

    /// Notices containers that started or stopped, and judges the processes of all.
    fn discover(&mut self) -> bool {
        let roots = self.overlay_roots();
        if roots != self.overlay_roots {
            self.state = metadata::read(&self.host.state);
            self.overlay_roots = roots;
            // Devices are numbered anew as file systems come and go.
            self.not_containers.clear();
        }
        let running = discover(&self.host.proc, &self.state, &mut self.not_containers);
        let ids: Vec<String> = running
            .iter()
            .map(|c| c.meta.reference.id.clone())
            .collect();
        let gone: Vec<String> = self
            .containers
            .keys()
            .filter(|id| !ids.contains(id))
            .cloned()
            .collect();
        for id in gone {
            if let Some(watched) = self.containers.remove(&id) {
                for wd in watched.wds {
                    let _ = self.inotify.watches().remove(wd.clone());
                    self.dirs.remove(&wd);
                }
                if !self.send(ContainerEvent::Stopped(watched.container.meta.reference)) {
                    return false;
                }
            }
        }
        let mut findings = Vec::new();
        for container in running {
            let id = container.meta.reference.id.clone();
            match self.containers.get_mut(&id) {
                Some(watched) => {
                    // New processes (`exec`) come and go without a mount changing.
                    watched.container.pids = container.pids;
                    let (skip, _) = Skip::new(&self.config, &watched.container);
                    findings.extend(
                        process::findings(
                            &self.host.proc,
                            &watched.container,
                            &skip.expected,
                            self.config.executable_severity,
                        )
                        .into_iter()
                        .map(Finding::Process),
                    );
                }
                None => {
                    if !self.start_watching(container) {
                        return false;
                    }
                }
            }
        }
        findings.is_empty() || self.send(ContainerEvent::Findings(findings))
    }

    /// Watches a container's upper layer first, then checks it whole: nothing written
    /// in between is missed.
    fn start_watching(&mut self, container: Container) -> bool {
        let id = container.meta.reference.id.clone();
        let mut wds = Vec::new();
        let upper = container.layers.upper.clone();
        self.add_tree(&id, &upper, &mut wds);
        let (findings, errors) = check(&self.host, &self.config, &container);
        let reference = container.meta.reference.clone();
        self.containers.insert(id, Watched { container, wds });
        for error in errors {
            if !self.send(ContainerEvent::Degraded(error)) {
                return false;
            }
        }
        self.send(ContainerEvent::Started(reference))
            && (findings.is_empty() || self.send(ContainerEvent::Findings(findings)))
    }

    fn add_tree(&mut self, id: &str, dir: &Path, wds: &mut Vec<WatchDescriptor>) {
        for entry in walkdir::WalkDir::new(dir)
            .follow_links(false)
            .same_file_system(true)
            .into_iter()
            .flatten()
            .filter(|e| e.file_type().is_dir())
        {
            match self.inotify.watches().add(entry.path(), MASK) {
                Ok(wd) => {
                    self.dirs
                        .insert(wd.clone(), (id.to_string(), entry.path().to_path_buf()));
                    wds.push(wd);
                }
                Err(err) if err.raw_os_error() == Some(libc::ENOSPC) => {
                    if !self.limit_reported {
                        self.limit_reported = true;
                        let _ = self.events.blocking_send(ContainerEvent::Degraded(format!(
                            "inotify watch limit reached at {} (raise fs.inotify.max_user_watches)",
                            entry.path().display()
                        )));
                    }
                    return;
                }
                Err(_) => {}
            }
        }
    }

    /// The container paths each event names, by container; a directory created in an
    /// upper layer is watched, and what it holds reported.
    fn read_events(&mut self, buffer: &mut [u8]) -> BTreeMap<String, Vec<Vec<u8>>> {
        let mut changed: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
        let events: Vec<(WatchDescriptor, EventMask, Option<std::ffi::OsString>)> =
            match self.inotify.read_events(buffer) {
                Ok(events) => events
                    .map(|e| (e.wd, e.mask, e.name.map(|n| n.to_os_string())))
                    .collect(),
                Err(_) => return changed,
            };
        for (wd, mask, name) in events {
            if mask.contains(EventMask::Q_OVERFLOW) {
                // Lost events: every container is walked again.
                for id in self.containers.keys() {
                    changed.entry(id.clone()).or_default().push(b"/".to_vec());
                }
                continue;
            }
            let Some((id, dir)) = self.dirs.get(&wd).cloned() else {
                continue;
            };
            if mask.contains(EventMask::IGNORED) {
                self.dirs.remove(&wd);
                continue;
            }
            let Some(watched) = self.containers.get(&id) else {
                continue;
            };
            let upper = watched.container.layers.upper.clone();
            let host = name.map_or(dir.clone(), |n| dir.join(n));
            let paths = changed.entry(id.clone()).or_default();
            if mask.contains(EventMask::ISDIR)
                && (mask.contains(EventMask::CREATE) || mask.contains(EventMask::MOVED_TO))
            {
                let mut wds = Vec::new();
                self.add_tree(&id, &host, &mut wds);
                let paths = changed.entry(id.clone()).or_default();
                for entry in walkdir::WalkDir::new(&host)
                    .follow_links(false)
                    .into_iter()
                    .flatten()
                {
                    paths.push(overlay::container_path(&upper, entry.path()));
                }
                if let Some(watched) = self.containers.get_mut(&id) {
                    watched.wds.extend(wds);
                }
            } else {
                paths.push(overlay::container_path(&upper, &host));
            }
        }
        changed
    }

    fn recheck(&mut self, changed: BTreeMap<String, Vec<Vec<u8>>>) -> bool {
        let mut findings = Vec::new();
        for (id, mut paths) in changed {
            let Some(watched) = self.containers.get(&id) else {
                continue;
            };
            paths.sort();
            paths.dedup();
            if paths.iter().any(|p| p.as_slice() == b"/") {
                let (all, errors) = check(&self.host, &self.config, &watched.container);
                findings.extend(all);
                for error in errors {
                    let _ = self.events.blocking_send(ContainerEvent::Degraded(error));
                }
            } else {
                findings.extend(recheck(&self.config, &watched.container, &paths));
            }
        }
        findings.is_empty() || self.send(ContainerEvent::Findings(findings))
    }
}
