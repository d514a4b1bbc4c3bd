//! The scan engine: one parallel walk that serves `baseline create`, `check` and the
//! daemon.
//!
//! Design, in the order data flows:
//!
//! 1. A **walker thread** reads directories (getdents only, children sorted by name) and
//!    decides, from the policy, what to skip. It does no per-file syscalls, so it stays
//!    ahead of the hashing threads.
//! 2. **Inspector threads** (`threads`, default one per core) `lstat` each entry, read
//!    link targets and security xattrs, and hash regular files. A file is opened with
//!    `O_NOFOLLOW | O_NONBLOCK`, checked with `fstat` to be the regular file that was
//!    listed, read up to the size it had, and `fstat`ed again: if it changed while being
//!    read it is read again (a few times), then reported as an error. FIFOs, sockets and
//!    devices are never opened. Hard links are hashed once per inode.
//! 3. The **calling thread** receives results, restores walk order with a bounded
//!    reorder window, and hands each item to the caller's visitor — so callers see a
//!    sorted stream (what the baseline writer and the merge-join in `check` need) while
//!    the work runs in parallel. Every channel is bounded: a slow visitor slows the
//!    walk instead of growing memory.
//!
//! Problems with single entries (permission denied, a file that keeps changing) become
//! [`ScanItem`]s with an error, never a failed scan; a file that vanishes between being
//! listed and being examined is simply not there.

use super::rootfs::{io_message, open_no_follow};
use crate::policy::{PathState, Policy};
use crossbeam_channel::{bounded, Receiver, Sender};
use driftwatch_protocol::entry::{Entry, FileType, Timestamp};
use driftwatch_protocol::report::Attribute;
use sha2::Digest;
use std::collections::{HashMap, VecDeque};
use std::ffi::OsStr;
use std::fs::{self, Metadata};
use std::io::{self, Read};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use walkdir::WalkDir;

/// Jobs queued between the walker and the inspectors. Enough to keep both inspectors
/// busy through a burst of tiny files; small enough to be irrelevant in memory.
const JOB_QUEUE: usize = 1024;
/// Items that may be in flight between the walker and the visitor. This bounds the
/// reorder buffer when one inspector is stuck on a large file while others race ahead.
const REORDER_WINDOW: usize = 8192;
/// Read buffer per inspector. 64–128 KiB reads are fastest here; larger allocations fall
/// above glibc's mmap threshold and were measured ~4x slower on this class of VM.
const READ_BUFFER_BYTES: usize = 128 * 1024;
/// How far paced reading may run ahead of its rate before it sleeps.
const PACE_SLACK: std::time::Duration = std::time::Duration::from_millis(50);
/// How often a file that changes while being read is read again before giving up.
const READ_ATTEMPTS: usize = 3;

/// Extended attributes that carry security meaning; others (user.*, …) are ignored.
fn is_security_xattr(name: &[u8]) -> bool {
    matches!(
        name,
        b"security.capability"
            | b"security.selinux"
            | b"security.ima"
            | b"system.posix_acl_access"
            | b"system.posix_acl_default"
    ) || name.starts_with(b"trusted.")
}

/// What identifies a file's content without reading it. Writing content through the
/// filesystem changes mtime and ctime, and putting mtime back (`touch -r`) changes
/// ctime, which no system call can set: if none of these moved since a file was
/// hashed, its hash still holds. (Raw writes to the block device bypass this; the
/// daemon's periodic full re-hash, which ignores known hashes, covers them.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileIdentity {
    /// Device.
    pub dev: u64,
    /// Inode.
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, seconds and nanoseconds.
    pub mtime: (i64, i64),
    /// Status change time, seconds and nanoseconds.
    pub ctime: (i64, i64),
}

impl FileIdentity {
    /// The identity in a stat result.
    pub fn of(meta: &Metadata) -> Self {
        FileIdentity {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// Content hashes of one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ContentHashes {
    /// BLAKE3.
    pub blake3: [u8; 32],
    /// SHA-256, when the policy asks for it.
    pub sha256: Option<[u8; 32]>,
}

/// Hashes known from an earlier scan (the daemon's fast verification): a file whose
/// identity matches is not read again.
pub trait KnownHashes: Send + Sync {
    /// The hashes of `path`, if they were taken when it had exactly `identity`.
    fn get(&self, path: &[u8], identity: &FileIdentity) -> Option<ContentHashes>;
}

/// Paces reading across all inspectors to a rate in bytes per second.
struct Pacer {
    bytes_per_sec: u64,
    started: std::time::Instant,
    consumed: AtomicU64,
}

impl Pacer {
    /// Paces to `bytes_per_sec` from now on (0: unlimited).
    fn new(bytes_per_sec: u64) -> Self {
        Pacer {
            bytes_per_sec,
            started: std::time::Instant::now(),
            consumed: AtomicU64::new(0),
        }
    }

    /// Accounts for `bytes` read and, once reading is more than [`PACE_SLACK`] ahead of
    /// the rate, sleeps until it is back on it. Sleeping after every buffer would cut
    /// hashing into bursts too short to keep caches warm: measured here, that doubled
    /// the CPU time of the same work.
    fn pace(&self, bytes: u64) {
        if self.bytes_per_sec == 0 {
            return;
        }
        let total = self.consumed.fetch_add(bytes, Ordering::Relaxed) + bytes;
        let due = std::time::Duration::from_secs_f64(total as f64 / self.bytes_per_sec as f64);
        if let Some(ahead) = due.checked_sub(self.started.elapsed()) {
            if ahead > PACE_SLACK {
                std::thread::sleep(ahead);
            }
        }
    }
}

/// How to scan.
#[derive(Clone, Default)]
pub struct ScanOptions {
    /// Inspector threads; 0 means one per core.
    pub threads: usize,
    /// Bytes per second read for hashing, across all threads (0: unlimited; default).
    pub read_bytes_per_sec: u64,
    /// Hashes from an earlier scan to reuse for files whose identity did not change
    /// (default: none — everything is read).
    pub known: Option<Arc<dyn KnownHashes>>,
    /// Paths inside the root to leave out entirely, e.g. the baseline being written
    /// or read, which lives in the image but is not part of it (default: none).
    pub skip: Vec<Vec<u8>>,
}

/// One observed entry, in walk order.
// Nearly every item is `Observed`: boxing it would add an allocation per file on the
// scan's hot path to shrink the rare error variant.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum ScanItem {
    /// An entry and where it stands with the policy; `error` says what could not be
    /// read (its content, link target or xattrs), in which case those are absent.
    Observed {
        /// What was found.
        entry: Entry,
        /// Its policy state (rule).
        state: PathState,
        /// A partial failure.
        error: Option<String>,
        /// The identity the content hashes were taken at (hashed regular files only).
        identity: Option<FileIdentity>,
    },
    /// A path that could not be examined at all. When `subtree_unknown`, nothing below
    /// it was seen either (an unreadable directory), so nothing there may be called
    /// removed.
    Unreadable {
        /// The path inside the root.
        path: Vec<u8>,
        /// What went wrong.
        error: String,
        /// Whether the entries below are unknown.
        subtree_unknown: bool,
    },
}

/// Totals of one scan.
#[derive(Clone, Copy, Debug, Default)]
pub struct ScanStats {
    /// Entries observed.
    pub entries: u64,
    /// Bytes read for hashing.
    pub bytes_hashed: u64,
    /// Items with errors.
    pub errors: u64,
}

/// Why a scan stopped early.
#[derive(Debug)]
pub enum ScanAbort<E> {
    /// The root itself cannot be used.
    Root {
        /// The root.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The visitor returned an error.
    Visitor(E),
}

// As for `ScanItem`: `Ready` carries one, and both variants are on the hot path.
#[allow(clippy::large_enum_variant)]
enum Job {
    Inspect {
        seq: u64,
        path: Vec<u8>,
        host_path: PathBuf,
        state: PathState,
        hash: bool,
    },
    Ready {
        seq: u64,
        item: ScanItem,
    },
}

/// Hashes of one inode, shared between the hard links that name it.
type InodeHashes = Arc<Mutex<Option<ContentHashes>>>;

/// What every inspector of one scan shares.
struct Shared {
    bytes_hashed: AtomicU64,
    links: Mutex<HashMap<(u64, u64), InodeHashes>>,
    pacer: Pacer,
}

impl Shared {
    fn new(read_bytes_per_sec: u64) -> Self {
        Shared {
            bytes_hashed: AtomicU64::new(0),
            links: Mutex::new(HashMap::new()),
            pacer: Pacer::new(read_bytes_per_sec),
        }
    }

    fn inspector<'a>(
        &'a self,
        policy: &Policy,
        known: Option<&'a dyn KnownHashes>,
        cancel: &'a AtomicBool,
    ) -> Inspector<'a> {
        Inspector {
            sha256: policy.config().scan.sha256,
            buffer: vec![0; READ_BUFFER_BYTES],
            bytes_hashed: &self.bytes_hashed,
            links: &self.links,
            known,
            pacer: &self.pacer,
            cancel,
        }
    }
}

struct Inspector<'a> {
    sha256: bool,
    buffer: Vec<u8>,
    bytes_hashed: &'a AtomicU64,
    links: &'a Mutex<HashMap<(u64, u64), InodeHashes>>,
    known: Option<&'a dyn KnownHashes>,
    pacer: &'a Pacer,
    cancel: &'a AtomicBool,
}

/// Walks `policy`'s scan paths inside `root` and calls `visit` for every item in walk
/// order (see [`driftwatch_protocol::path::cmp`]). `cancel` stops the scan between
/// files (best effort); the items visited so far stay valid.
pub fn scan<E>(
    root: &Path,
    policy: &Policy,
    options: &ScanOptions,
    cancel: &AtomicBool,
    mut visit: impl FnMut(ScanItem) -> Result<(), E>,
) -> Result<ScanStats, ScanAbort<E>> {
    let root_meta = fs::metadata(root).map_err(|source| ScanAbort::Root {
        path: root.to_path_buf(),
        source,
    })?;
    if !root_meta.is_dir() {
        return Err(ScanAbort::Root {
            path: root.to_path_buf(),
            source: io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
        });
    }
    let threads = match options.threads {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
        n => n,
    };
    let shared = Shared::new(options.read_bytes_per_sec);
    let (job_tx, job_rx) = bounded::<Job>(JOB_QUEUE);
    let (result_tx, result_rx) = bounded::<(u64, Option<ScanItem>)>(JOB_QUEUE);
    let (window_tx, window_rx) = bounded::<()>(REORDER_WINDOW);
    let mut stats = ScanStats::default();

    let outcome = std::thread::scope(|scope| {
        scope.spawn(move || walk(root, policy, options, cancel, &job_tx, &window_tx));
        for _ in 0..threads {
            let jobs = job_rx.clone();
            let results = result_tx.clone();
            let mut inspector = shared.inspector(policy, options.known.as_deref(), cancel);
            scope.spawn(move || inspector.run(jobs, results));
        }
        drop(result_tx);
        drop(job_rx);
        reorder(result_rx, &window_rx, cancel, &mut stats, &mut visit)
    });
    stats.bytes_hashed = shared.bytes_hashed.load(Ordering::Relaxed);
    outcome.map(|()| stats).map_err(ScanAbort::Visitor)
}

/// Restores walk order and feeds the visitor; on a visitor error, cancels the scan and
/// drains the channels so that every thread can finish.
fn reorder<E>(
    results: Receiver<(u64, Option<ScanItem>)>,
    window: &Receiver<()>,
    cancel: &AtomicBool,
    stats: &mut ScanStats,
    visit: &mut impl FnMut(ScanItem) -> Result<(), E>,
) -> Result<(), E> {
    let mut pending: VecDeque<Option<Option<ScanItem>>> = VecDeque::new();
    let mut next_seq = 0u64;
    let mut failure = None;
    // A directory that cannot be entered fails twice: its lstat, then its listing.
    let mut last_unreadable: Option<Vec<u8>> = None;
    for (seq, item) in results {
        let slot = (seq - next_seq) as usize;
        if pending.len() <= slot {
            pending.resize_with(slot + 1, || None);
        }
        pending[slot] = Some(item);
        while let Some(Some(_)) = pending.front() {
            let Some(Some(item)) = pending.pop_front() else {
                break;
            };
            next_seq += 1;
            // The walker sent one token per job before queueing it.
            let _ = window.try_recv();
            let Some(item) = item else {
                continue; // vanished between listing and inspection
            };
            if failure.is_some() {
                continue;
            }
            if let ScanItem::Unreadable { path, .. } = &item {
                if last_unreadable.as_ref() == Some(path) {
                    continue;
                }
                last_unreadable = Some(path.clone());
            }
            match &item {
                ScanItem::Observed { error, .. } => {
                    stats.entries += 1;
                    stats.errors += u64::from(error.is_some());
                }
                ScanItem::Unreadable { .. } => stats.errors += 1,
            }
            if let Err(err) = visit(item) {
                cancel.store(true, Ordering::Relaxed);
                failure = Some(err);
            }
        }
    }
    failure.map_or(Ok(()), Err)
}

fn inside_path(scan_path: &[u8], relative: &Path) -> Vec<u8> {
    let rel = relative.as_os_str().as_bytes();
    if rel.is_empty() {
        return scan_path.to_vec();
    }
    let mut path = Vec::with_capacity(scan_path.len() + 1 + rel.len());
    path.extend_from_slice(scan_path);
    if scan_path != b"/" {
        path.push(b'/');
    }
    path.extend_from_slice(rel);
    path
}

fn host_path(root: &Path, inside: &[u8]) -> PathBuf {
    root.join(Path::new(OsStr::from_bytes(
        inside.strip_prefix(b"/").unwrap_or(inside),
    )))
}

/// Refuses scan paths that pass through a symlink inside the root: following one could
/// lead out of the root (an image's absolute link would point into the scanning host).
fn check_no_symlinked_ancestors(root: &Path, inside: &[u8]) -> io::Result<()> {
    let mut current = Vec::new();
    let parts: Vec<&[u8]> = inside
        .split(|b| *b == b'/')
        .filter(|p| !p.is_empty())
        .collect();
    for part in parts.iter().take(parts.len().saturating_sub(1)) {
        current.push(b'/');
        current.extend_from_slice(part);
        if fs::symlink_metadata(host_path(root, &current))?
            .file_type()
            .is_symlink()
        {
            return Err(io::Error::other(format!(
                "{} is a symbolic link; not followed",
                driftwatch_protocol::path::display(&current)
            )));
        }
    }
    Ok(())
}

/// Numbers jobs in walk order and keeps at most [`REORDER_WINDOW`] in flight.
struct Dispatcher<'a> {
    next_seq: u64,
    jobs: &'a Sender<Job>,
    window: &'a Sender<()>,
}

impl Dispatcher<'_> {
    /// Queues the job built for the next sequence number; false once the scan is over
    /// (the receiving side has gone).
    fn send(&mut self, job: impl FnOnce(u64) -> Job) -> bool {
        if self.window.send(()).is_err() {
            return false;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.jobs.send(job(seq)).is_ok()
    }

    fn report(&mut self, path: Vec<u8>, error: String) -> bool {
        self.send(|seq| Job::Ready {
            seq,
            item: ScanItem::Unreadable {
                path,
                error,
                subtree_unknown: true,
            },
        })
    }
}

fn walk(
    root: &Path,
    policy: &Policy,
    options: &ScanOptions,
    cancel: &AtomicBool,
    jobs: &Sender<Job>,
    window: &Sender<()>,
) {
    let mut dispatch = Dispatcher {
        next_seq: 0,
        jobs,
        window,
    };
    let one_filesystem = policy.config().scan.one_filesystem;
    let allowed_devices: Vec<u64> = policy
        .scan_paths()
        .iter()
        .filter_map(|p| fs::symlink_metadata(host_path(root, p)).ok())
        .map(|m| m.dev())
        .collect();

    for scan_path in policy.scan_paths() {
        let host = host_path(root, scan_path);
        if let Err(err) = check_no_symlinked_ancestors(root, scan_path) {
            if err.kind() != io::ErrorKind::NotFound
                && !dispatch.report(scan_path.clone(), io_message(&err))
            {
                return;
            }
            continue;
        }
        let mut states: Vec<PathState> = Vec::new();
        let mut entries = WalkDir::new(&host)
            .follow_links(false)
            .follow_root_links(false)
            .sort_by(|a, b| a.file_name().cmp(b.file_name()))
            .into_iter();
        while let Some(next) = entries.next() {
            if cancel.load(Ordering::Relaxed) {
                return;
            }
            let dent = match next {
                Ok(dent) => dent,
                Err(err) => {
                    let missing = err
                        .io_error()
                        .is_some_and(|e| e.kind() == io::ErrorKind::NotFound);
                    let Some(path) = err.path() else { continue };
                    if missing {
                        continue;
                    }
                    let relative = path.strip_prefix(&host).unwrap_or(path);
                    let message = err.io_error().map_or_else(|| err.to_string(), io_message);
                    if !dispatch.report(inside_path(scan_path, relative), message) {
                        return;
                    }
                    continue;
                }
            };
            let depth = dent.depth();
            let relative = dent.path().strip_prefix(&host).unwrap_or(dent.path());
            let path = inside_path(scan_path, relative);
            states.truncate(depth);
            let state = match depth.checked_sub(1).and_then(|d| states.get(d)) {
                Some(parent) => policy.child_state(&path, parent),
                None => policy.state_for(&path),
            };
            let is_dir = dent.file_type().is_dir();
            if options.skip.contains(&path) {
                if is_dir {
                    entries.skip_current_dir();
                }
                continue;
            }
            if state.excluded {
                if is_dir && policy.may_include_below(&path) {
                    states.push(state);
                } else if is_dir {
                    entries.skip_current_dir();
                }
                continue;
            }
            if is_dir {
                let foreign = one_filesystem
                    && depth > 0
                    && dent
                        .metadata()
                        .is_ok_and(|m| !allowed_devices.contains(&m.dev()));
                if foreign {
                    // A mount point: record it, do not cross it.
                    entries.skip_current_dir();
                }
                states.push(state);
            }
            let hash = dent.file_type().is_file()
                && policy.rule(&state).attributes.contains(Attribute::Content);
            let host_path = dent.into_path();
            if !dispatch.send(|seq| Job::Inspect {
                seq,
                path,
                host_path,
                state,
                hash,
            }) {
                return;
            }
        }
    }
}

impl Inspector<'_> {
    fn run(&mut self, jobs: Receiver<Job>, results: Sender<(u64, Option<ScanItem>)>) {
        for job in jobs {
            let (seq, item) = match job {
                Job::Ready { seq, item } => (seq, Some(item)),
                Job::Inspect {
                    seq,
                    path,
                    host_path,
                    state,
                    hash,
                } => (seq, self.inspect(path, &host_path, state, hash)),
            };
            if results.send((seq, item)).is_err() {
                return;
            }
        }
    }

    /// Examines one entry; `None` when it vanished before it could be examined.
    fn inspect(
        &mut self,
        path: Vec<u8>,
        host: &Path,
        state: PathState,
        hash: bool,
    ) -> Option<ScanItem> {
        let mut last_error = String::new();
        for _ in 0..READ_ATTEMPTS {
            let meta = match fs::symlink_metadata(host) {
                Ok(meta) => meta,
                Err(err) if err.kind() == io::ErrorKind::NotFound => return None,
                Err(err) => {
                    return Some(ScanItem::Unreadable {
                        path,
                        error: io_message(&err),
                        subtree_unknown: true,
                    })
                }
            };
            let Some(file_type) = FileType::from_mode(meta.mode()) else {
                return Some(ScanItem::Unreadable {
                    path,
                    error: format!("unknown file type (mode {:o})", meta.mode()),
                    subtree_unknown: false,
                });
            };
            let mut entry = entry_from(path.clone(), file_type, &meta);
            let mut error = None;
            let mut identity = None;
            let known = match (file_type, hash, self.known) {
                (FileType::File, true, Some(known)) => known.get(&path, &FileIdentity::of(&meta)),
                _ => None,
            };
            match file_type {
                FileType::File if hash && known.is_some() => {
                    if let Some(hashes) = known {
                        entry.blake3 = Some(hashes.blake3);
                        entry.sha256 = hashes.sha256;
                        identity = Some(FileIdentity::of(&meta));
                    }
                }
                FileType::File if hash => match self.hash_file(host, &meta) {
                    Ok(Some((hashes, stable_meta))) => {
                        entry = entry_from(path.clone(), file_type, &stable_meta);
                        entry.blake3 = Some(hashes.blake3);
                        entry.sha256 = hashes.sha256;
                        identity = Some(FileIdentity::of(&stable_meta));
                    }
                    Ok(None) => {
                        last_error = "changed while being read".to_string();
                        continue;
                    }
                    Err(err) if err.kind() == io::ErrorKind::NotFound => return None,
                    Err(err) => error = Some(format!("content not read: {}", io_message(&err))),
                },
                FileType::Symlink => match fs::read_link(host) {
                    Ok(target) => entry.link_target = Some(target.into_os_string().into_vec()),
                    Err(err) if err.kind() == io::ErrorKind::NotFound => return None,
                    Err(err) => error = Some(format!("link not read: {}", io_message(&err))),
                },
                _ => {}
            }
            match read_security_xattrs(host) {
                Ok(xattrs) => entry.xattrs = xattrs,
                Err(err) => {
                    let message = format!("xattrs not read: {}", io_message(&err));
                    error = Some(error.map_or(message.clone(), |e| format!("{e}; {message}")));
                }
            }
            return Some(ScanItem::Observed {
                entry,
                state,
                error,
                identity,
            });
        }
        Some(ScanItem::Unreadable {
            path,
            error: format!("{last_error} {READ_ATTEMPTS} times"),
            subtree_unknown: false,
        })
    }

    /// Hashes a regular file once per inode. `Ok(None)` means it changed under us.
    ///
    /// Links of one inode usually sit side by side in a directory and reach both
    /// inspectors at once, so the second waits on the inode's lock for the first's
    /// result instead of reading the same bytes again. Only a consistent hash is shared:
    /// after a failure each link tries for itself, with its own retries.
    fn hash_file(
        &mut self,
        host: &Path,
        listed: &Metadata,
    ) -> io::Result<Option<(ContentHashes, Metadata)>> {
        if listed.nlink() < 2 {
            return self.hash_once(host, listed);
        }
        let poisoned = || io::Error::other("hard-link table poisoned");
        let cell = self
            .links
            .lock()
            .map_err(|_| poisoned())?
            .entry((listed.dev(), listed.ino()))
            .or_default()
            .clone();
        let mut shared = cell.lock().map_err(|_| poisoned())?;
        if let Some(hashes) = *shared {
            return Ok(Some((hashes, listed.clone())));
        }
        let result = self.hash_once(host, listed)?;
        if let Some((hashes, _)) = &result {
            *shared = Some(*hashes);
        }
        Ok(result)
    }

    fn hash_once(
        &mut self,
        host: &Path,
        listed: &Metadata,
    ) -> io::Result<Option<(ContentHashes, Metadata)>> {
        let file = open_no_follow(host)?;
        let before = file.metadata()?;
        if !before.file_type().is_file()
            || before.ino() != listed.ino()
            || before.dev() != listed.dev()
        {
            return Ok(None);
        }
        let mut blake3 = blake3::Hasher::new();
        let mut sha256 = self.sha256.then(sha2::Sha256::new);
        let mut remaining = before.size();
        let mut reader = &file;
        while remaining > 0 {
            // A paced read of one large file can take minutes: stop within one buffer.
            if self.cancel.load(Ordering::Relaxed) {
                return Err(io::Error::other("scan cancelled"));
            }
            let want = remaining.min(self.buffer.len() as u64) as usize;
            let read = match reader.read(&mut self.buffer[..want]) {
                Ok(0) => break, // shrank: caught by the second fstat
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(err),
            };
            blake3.update(&self.buffer[..read]);
            if let Some(sha) = sha256.as_mut() {
                sha.update(&self.buffer[..read]);
            }
            remaining -= read as u64;
            self.bytes_hashed.fetch_add(read as u64, Ordering::Relaxed);
            self.pacer.pace(read as u64);
        }
        let after = file.metadata()?;
        let stable = remaining == 0
            && after.size() == before.size()
            && after.mtime() == before.mtime()
            && after.mtime_nsec() == before.mtime_nsec()
            && after.ctime() == before.ctime()
            && after.ctime_nsec() == before.ctime_nsec();
        if !stable {
            return Ok(None);
        }
        let hashes = ContentHashes {
            blake3: *blake3.finalize().as_bytes(),
            sha256: sha256.map(|sha| sha.finalize().into()),
        };
        Ok(Some((hashes, before)))
    }
}

fn entry_from(path: Vec<u8>, file_type: FileType, meta: &Metadata) -> Entry {
    let is_device = matches!(file_type, FileType::CharDevice | FileType::BlockDevice);
    Entry {
        path,
        file_type,
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        size: meta.size(),
        mtime: Timestamp {
            secs: meta.mtime(),
            nanos: u32::try_from(meta.mtime_nsec()).unwrap_or(0),
        },
        rdev: if is_device { meta.rdev() } else { 0 },
        ..Entry::default()
    }
}

fn read_security_xattrs(host: &Path) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let names = match xattr::list(host) {
        Ok(names) => names,
        Err(err) if is_unsupported(&err) || err.kind() == io::ErrorKind::NotFound => {
            return Ok(Vec::new())
        }
        Err(err) => return Err(err),
    };
    let mut xattrs = Vec::new();
    for name in names {
        let raw = name.as_bytes();
        if !is_security_xattr(raw) {
            continue;
        }
        match xattr::get(host, &name) {
            Ok(Some(value)) => xattrs.push((raw.to_vec(), value)),
            Ok(None) => {}
            Err(err) if is_unsupported(&err) || err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(err),
        }
    }
    xattrs.sort();
    Ok(xattrs)
}

fn is_unsupported(err: &io::Error) -> bool {
    err.raw_os_error() == Some(libc::ENOTSUP) || err.raw_os_error() == Some(libc::ENODATA)
}

/// Examines one path the way the scan does (for targeted re-checks after watch
/// events); `None` when it does not exist.
pub fn observe_one(root: &Path, policy: &Policy, path: &[u8]) -> Option<ScanItem> {
    let shared = Shared::new(0);
    let never = AtomicBool::new(false);
    let mut inspector = shared.inspector(policy, None, &never);
    let state = policy.state_for(path);
    let hash = policy.rule(&state).attributes.contains(Attribute::Content);
    inspector.inspect(path.to_vec(), &host_path(root, path), state, hash)
}

/// Examines one path of a tree that no policy describes (an overlay layer of a
/// container), the way the scan does, reading a regular file's content (BLAKE3) only
/// when `hash`; `None` when it does not exist.
pub fn inspect_path(root: &Path, path: &[u8], hash: bool) -> Option<ScanItem> {
    let shared = Shared::new(0);
    let never = AtomicBool::new(false);
    let mut inspector = Inspector {
        sha256: false,
        // Below the allocator's mmap threshold: this runs once per path.
        buffer: vec![0; if hash { READ_BUFFER_BYTES / 2 } else { 0 }],
        bytes_hashed: &shared.bytes_hashed,
        links: &shared.links,
        known: None,
        pacer: &shared.pacer,
        cancel: &never,
    };
    let state = PathState::default();
    inspector.inspect(path.to_vec(), &host_path(root, path), state, hash)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn collect(root: &Path, policy: &str) -> Vec<ScanItem> {
        let policy = Policy::parse(policy).unwrap();
        let mut items = Vec::new();
        scan(
            root,
            &policy,
            &ScanOptions::default(),
            &AtomicBool::new(false),
            |item| -> Result<(), ()> {
                items.push(item);
                Ok(())
            },
        )
        .unwrap();
        items
    }

    fn paths(items: &[ScanItem]) -> Vec<String> {
        items
            .iter()
            .map(|item| match item {
                ScanItem::Observed { entry, .. } => {
                    String::from_utf8_lossy(&entry.path).into_owned()
                }
                ScanItem::Unreadable { path, .. } => format!("!{}", String::from_utf8_lossy(path)),
            })
            .collect()
    }

    #[test]
    fn walk_order_exclusions_and_links() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("a/b")).unwrap();
        fs::create_dir_all(root.join("a-c")).unwrap();
        fs::create_dir_all(root.join("skip/deep")).unwrap();
        fs::write(root.join("a/b/file"), b"hello").unwrap();
        fs::hard_link(root.join("a/b/file"), root.join("a/link")).unwrap();
        symlink("/etc/passwd", root.join("a/sym")).unwrap();
        let items = collect(root, "exclude = [\"/skip\"]");
        assert_eq!(
            paths(&items),
            ["/", "/a", "/a/b", "/a/b/file", "/a/link", "/a/sym", "/a-c"]
        );
        let hash_of = |name: &str| {
            items.iter().find_map(|item| match item {
                ScanItem::Observed { entry, .. } if entry.path == name.as_bytes() => entry.blake3,
                _ => None,
            })
        };
        assert_eq!(
            hash_of("/a/b/file"),
            Some(*blake3::hash(b"hello").as_bytes())
        );
        assert_eq!(hash_of("/a/link"), hash_of("/a/b/file"));
        let ScanItem::Observed { entry, .. } = &items[5] else {
            panic!()
        };
        assert_eq!(entry.link_target.as_deref(), Some(&b"/etc/passwd"[..]));
    }

    #[test]
    fn scan_paths_through_symlinks_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("secret"), b"x").unwrap();
        symlink(outside.path(), dir.path().join("usr")).unwrap();
        let items = collect(dir.path(), "[scan]\npaths = [\"/usr/bin\", \"/usr\"]");
        // "/usr" itself is recorded as the link it is; nothing behind it is read.
        assert_eq!(paths(&items), ["/usr"]);
        let items = collect(dir.path(), "[scan]\npaths = [\"/usr/secret\"]");
        assert_eq!(paths(&items), ["!/usr/secret"]);
    }

    struct Remembered(Mutex<HashMap<Vec<u8>, (FileIdentity, ContentHashes)>>);

    impl KnownHashes for Remembered {
        fn get(&self, path: &[u8], identity: &FileIdentity) -> Option<ContentHashes> {
            let known = self.0.lock().unwrap();
            known
                .get(path)
                .filter(|(i, _)| i == identity)
                .map(|(_, h)| *h)
        }
    }

    #[test]
    fn known_hashes_spare_unchanged_files_only() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..20 {
            fs::write(dir.path().join(format!("f{i}")), vec![b'x'; 1000]).unwrap();
        }
        let policy = Policy::parse("").unwrap();
        let remembered = Arc::new(Remembered(Mutex::new(HashMap::new())));
        let run = |known: Option<Arc<dyn KnownHashes>>| {
            let options = ScanOptions {
                known,
                ..ScanOptions::default()
            };
            let mut seen = Vec::new();
            let stats = scan(
                dir.path(),
                &policy,
                &options,
                &AtomicBool::new(false),
                |item| -> Result<(), ()> {
                    if let ScanItem::Observed {
                        entry,
                        identity: Some(identity),
                        ..
                    } = item
                    {
                        let hashes = ContentHashes {
                            blake3: entry.blake3.unwrap(),
                            sha256: None,
                        };
                        seen.push((entry.path, identity, hashes));
                    }
                    Ok(())
                },
            )
            .unwrap();
            (stats.bytes_hashed, seen)
        };
        let (read, seen) = run(None);
        assert_eq!(read, 20_000);
        remembered
            .0
            .lock()
            .unwrap()
            .extend(seen.into_iter().map(|(p, i, h)| (p, (i, h))));
        let (read, _) = run(Some(remembered.clone()));
        assert_eq!(read, 0, "nothing changed, nothing read");
        // Same size, mtime put back: ctime still moves, so it is read again.
        let changed = dir.path().join("f3");
        let mtime = fs::metadata(&changed).unwrap().modified().unwrap();
        fs::write(&changed, vec![b'y'; 1000]).unwrap();
        fs::File::options()
            .write(true)
            .open(&changed)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        let (read, seen) = run(Some(remembered));
        assert_eq!(read, 1000);
        let f3 = seen.iter().find(|(p, _, _)| p.ends_with(b"/f3")).unwrap();
        assert_eq!(f3.2.blake3, *blake3::hash(&[b'y'; 1000]).as_bytes());
    }

    #[test]
    fn a_visitor_error_stops_the_scan_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..2000 {
            fs::write(dir.path().join(format!("f{i}")), b"x").unwrap();
        }
        let policy = Policy::parse("").unwrap();
        let mut seen = 0;
        let result = scan(
            dir.path(),
            &policy,
            &ScanOptions::default(),
            &AtomicBool::new(false),
            |_| {
                seen += 1;
                if seen == 10 {
                    Err("stop")
                } else {
                    Ok(())
                }
            },
        );
        assert!(matches!(result, Err(ScanAbort::Visitor("stop"))));
        assert_eq!(seen, 10);
    }
}
