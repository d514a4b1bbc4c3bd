//! The daemon's view of containers in real time: containers are noticed as they start
//! and stop, each one's upper layer is watched with inotify (a write inside a
//! container is a change in its upper directory on the host), and new processes in
//! them are judged within a second.
//!
//! All of it runs on one thread of its own that sends [`ContainerEvent`]s to the
//! daemon. Idle, it waits on events rather than looking again: the kernel wakes it
//! when the host's mount table changes (`poll` on PID 1's `mountinfo`: a container
//! started or stopped) or a container's own does (a volume mounted inside it), and
//! only then are the mount tables and the runtimes' metadata read again and new
//! containers walked in full. Once a second it lists `/proc`: a process it has not
//! seen before costs one `stat` of its root, and each container process one
//! `readlink` of its executable (an `exec` keeps the pid); an executable is judged
//! against the image once, and again only after its container's upper layer changed.
use super::config::ContainersConfig;
use super::discover::{self, discover, Container, NotContainers};
use super::metadata::{self, RuntimeState};
use super::process::Judged;
use super::walk::ImageHashes;
use super::{check, overlay, process, recheck, Host, Skip};
use driftwatch_protocol::report::{ContainerRef, Finding};
use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How often new processes in containers are looked for.
const PROCESS_INTERVAL: Duration = Duration::from_secs(1);
/// How often the stop flag is looked at while nothing happens.
const POLL_MILLIS: u128 = 200;
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
                host_mounts: None,
                overlay_roots: Vec::new(),
                not_containers: NotContainers::new(),
                pids: HashMap::new(),
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
    /// Its first process's mount table, open: readable with priority when a mount
    /// inside the container comes or goes.
    mounts: Option<File>,
    /// Its executables judged so far (forgotten when its upper layer changes).
    judged: Judged,
    /// The process findings already sent: (pid, executable).
    reported: HashSet<(i32, String)>,
}

/// Where a process seen in `/proc` runs.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Seen {
    /// In a watched container.
    In(String),
    /// Anywhere else.
    Elsewhere,
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
    /// PID 1's mount table, open: readable with priority when the host's mounts change.
    host_mounts: Option<File>,
    overlay_roots: Vec<Vec<u8>>,
    not_containers: NotContainers,
    /// Every process seen, and where it runs.
    pids: HashMap<i32, Seen>,
    limit_reported: bool,
}

/// A mount table opened for `poll`: the kernel reports a change of the mount
/// namespace it shows as `POLLPRI` once per change.
fn open_mounts(path: &Path) -> Option<File> {
    File::open(path).ok()
}

impl Watching {
    fn send(&self, event: ContainerEvent) -> bool {
        self.events.blocking_send(event).is_ok()
    }

    fn run(mut self, stop: &AtomicBool) {
        let mut buffer = vec![0u8; 64 * 1024];
        self.host_mounts = open_mounts(&self.host.proc.join("1/mountinfo"));
        let mut rediscover = true;
        let mut next_pass = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            if rediscover {
                rediscover = false;
                if !self.discover() {
                    return;
                }
                next_pass = Instant::now() + PROCESS_INTERVAL;
            } else if Instant::now() >= next_pass {
                match self.processes() {
                    Some(unknown) => rediscover = unknown,
                    None => return,
                }
                next_pass = Instant::now() + PROCESS_INTERVAL;
            }
            let wait = next_pass.saturating_duration_since(Instant::now());
            let mut fds = self.poll_fds();
            let wait_ms = i32::try_from(wait.as_millis().min(POLL_MILLIS)).unwrap_or(0);
            let Ok(count) = libc::nfds_t::try_from(fds.len()) else {
                return;
            };
            // SAFETY: `fds` is a valid array of `count` pollfds for the whole call.
            if unsafe { libc::poll(fds.as_mut_ptr(), count, wait_ms) } <= 0 {
                continue;
            }
            rediscover = fds[1..].iter().any(|fd| fd.revents != 0);
            if fds[0].revents & libc::POLLIN != 0 {
                std::thread::sleep(SETTLE);
                let changed = self.read_events(&mut buffer);
                if !self.recheck(changed) {
                    return;
                }
            }
        }
    }

    /// What to wait on: inotify first, then the mount tables.
    fn poll_fds(&self) -> Vec<libc::pollfd> {
        let mounts = std::iter::once(self.host_mounts.as_ref())
            .chain(self.containers.values().map(|w| w.mounts.as_ref()))
            .flatten()
            .map(|file| libc::pollfd {
                fd: file.as_raw_fd(),
                events: libc::POLLPRI,
                revents: 0,
            });
        std::iter::once(libc::pollfd {
            fd: self.inotify.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .chain(mounts)
        .collect()
    }

    /// Overlay mount points in PID 1's table: when they change, containers started or
    /// stopped and the runtimes' metadata is read again.
    fn overlay_roots(&self) -> Vec<Vec<u8>> {
        let text = std::fs::read(self.host.proc.join("1/mountinfo")).unwrap_or_default();
        let mut roots: Vec<Vec<u8>> = crate::source::mountinfo::parse(&text)
            .0
            .into_iter()
            .filter(|line| line.fs_type == "overlay")
            .map(|line| line.mount_point)
            .collect();
        roots.sort();
        roots
    }

    /// Notices containers that started or stopped (after a mount table changed, or a
    /// process appeared whose root is an overlay not known yet), and judges the
    /// processes of all.
    fn discover(&mut self) -> bool {
        let roots = self.overlay_roots();
        if roots != self.overlay_roots {
            self.state = metadata::read(&self.host.state);
            self.overlay_roots = roots;
            // Devices are numbered anew as file systems come and go.
            self.not_containers.clear();
        }
        let running = discover(&self.host.proc, &self.state, &mut self.not_containers);
        let ids: HashSet<String> = running
            .iter()
            .map(|c| c.meta.reference.id.clone())
            .collect();
        let gone: Vec<String> = self
            .containers
            .keys()
            .filter(|id| !ids.contains(*id))
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
        // Every process is placed again below.
        self.pids.clear();
        let images = ImageHashes::default();
        for container in running {
            let id = container.meta.reference.id.clone();
            for pid in &container.pids {
                self.pids.insert(*pid, Seen::In(id.clone()));
            }
            match self.containers.get_mut(&id) {
                Some(watched) => {
                    // Mounts inside it may have changed; new processes come and go.
                    watched.container.pids = container.pids;
                    watched.container.mounts = container.mounts;
                }
                None => {
                    if !self.start_watching(container, &images) {
                        return false;
                    }
                }
            }
        }
        for pid in discover::numeric_dirs(&self.host.proc) {
            self.pids.entry(pid).or_insert(Seen::Elsewhere);
        }
        self.judge_processes()
    }

    /// Places the processes that appeared since the last look and forgets those that
    /// exited; then judges the processes of every container. `Some(true)` when a new
    /// process runs on an overlay no known container has (a container to discover),
    /// `None` when the daemon is gone.
    fn processes(&mut self) -> Option<bool> {
        let host_root = discover::root_device(&self.host.proc, 1);
        let devices: HashMap<(u32, u32), String> = self
            .containers
            .iter()
            .map(|(id, w)| (w.container.device, id.clone()))
            .collect();
        let now: HashSet<i32> = discover::numeric_dirs(&self.host.proc)
            .into_iter()
            .collect();
        self.pids.retain(|pid, _| now.contains(pid));
        let mut unknown = false;
        for pid in now {
            if self.pids.contains_key(&pid) {
                continue;
            }
            let Some(device) = discover::root_device(&self.host.proc, pid) else {
                continue;
            };
            let seen = match devices.get(&device) {
                Some(id) => Seen::In(id.clone()),
                None => {
                    unknown |= Some(device) != host_root && !self.not_containers.contains(&device);
                    Seen::Elsewhere
                }
            };
            self.pids.insert(pid, seen);
        }
        let mut pids: HashMap<&str, Vec<i32>> = HashMap::new();
        for (pid, seen) in &self.pids {
            if let Seen::In(id) = seen {
                pids.entry(id.as_str()).or_default().push(*pid);
            }
        }
        for (id, watched) in &mut self.containers {
            let mut now = pids.remove(id.as_str()).unwrap_or_default();
            now.sort_unstable();
            watched.container.pids = now;
        }
        self.judge_processes().then_some(unknown)
    }

    /// Judges the processes of every container; sends the findings not sent before.
    fn judge_processes(&mut self) -> bool {
        let mut findings = Vec::new();
        for watched in self.containers.values_mut() {
            let (skip, _) = Skip::new(&self.config, &watched.container);
            let found = process::findings(
                &self.host.proc,
                &watched.container,
                &skip.expected,
                self.config.executable_severity,
                &mut watched.judged,
            );
            let live: HashSet<i32> = watched.container.pids.iter().copied().collect();
            watched.reported.retain(|(pid, _)| live.contains(pid));
            for finding in found {
                if watched.reported.insert((finding.pid, finding.exe.clone())) {
                    findings.push(Finding::Process(finding));
                }
            }
        }
        findings.is_empty() || self.send(ContainerEvent::Findings(findings))
    }

    /// Watches a container's upper layer first, then checks it whole: nothing written
    /// in between is missed.
    fn start_watching(&mut self, container: Container, images: &ImageHashes) -> bool {
        let id = container.meta.reference.id.clone();
        let mut wds = Vec::new();
        let upper = container.layers.upper.clone();
        self.add_tree(&id, &upper, &mut wds);
        let (findings, errors) = check(&self.host, &self.config, &container, images);
        let reference = container.meta.reference.clone();
        let mounts = container
            .pids
            .first()
            .and_then(|pid| open_mounts(&self.host.proc.join(format!("{pid}/mountinfo"))));
        // What the full check reported is not reported again.
        let reported = findings
            .iter()
            .filter_map(|f| match f {
                Finding::Process(p) => Some((p.pid, p.exe.clone())),
                _ => None,
            })
            .collect();
        self.containers.insert(
            id,
            Watched {
                container,
                wds,
                mounts,
                judged: Judged::default(),
                reported,
            },
        );
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
            let Some(watched) = self.containers.get_mut(&id) else {
                continue;
            };
            // An executable may have been written: judged again at the next look.
            watched.judged.clear();
            paths.sort();
            paths.dedup();
            if paths.iter().any(|p| p.as_slice() == b"/") {
                let images = ImageHashes::default();
                let (all, errors) = check(&self.host, &self.config, &watched.container, &images);
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
