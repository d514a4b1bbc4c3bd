//! The scan engine: one parallel walk that serves `baseline create`, `check` and the
//! daemon.
//!
//! Design, in the order data flows:
//!
//! 1. A **walker thread** reads directories (getdents only, children sorted by name) and
//!    decides, from the policy, what to skip. It does no per-file syscalls, so it stays
//!    ahead of the hashing threads.
//! 2. **Inspector threads** (`threads`, default one per core) `lstat` each entry, read
//!    link targets and security xattrs, and hash regular files through
//!    [`super::hashing`] (bounded by `scan.max_file_bytes`, holes not read, paced,
//!    cancellable). A file is opened with `O_NOFOLLOW | O_NONBLOCK`, checked with
//!    `fstat` to be the regular file that was listed, read up to the size it had, and
//!    `fstat`ed again: if it changed while being read it is read again (a few times),
//!    then observed without content and marked `unsettled` (its type, mode, owner and
//!    size are still compared, and the diff reports its content as unverifiable).
//!    FIFOs, sockets and devices are never opened. Hard links are hashed once per inode.
//! 3. The **calling thread** receives results, restores walk order with a bounded
//!    reorder window, and hands each item to the caller's visitor — so callers see a
//!    sorted stream (what the baseline writer and the merge-join in `check` need) while
//!    the work runs in parallel. Every channel is bounded: a slow visitor slows the
//!    walk instead of growing memory.
//!
//! **Nothing is looked up by path.** Someone who is root on the host may swap a
//! directory for a symlink while it is walked (`/usr/lib` → `/tmp/evil`). Every
//! directory is opened relative to its already-open parent (`openat` with
//! `O_NOFOLLOW | O_DIRECTORY`), and every entry is examined relative to the open
//! directory that listed it (`fstatat(AT_SYMLINK_NOFOLLOW)`, `openat`, `readlinkat`),
//! so a swapped-in link is recorded as the link it is and never followed. Scan paths
//! and the daemon's single-path re-checks ([`observe_one`]) are opened the same way,
//! one component at a time from the root down.
//!
//! Problems with single entries (permission denied, a file above the size limit)
//! become [`ScanItem`]s with an error, never a failed scan; a file that vanishes between
//! being listed and being examined is simply not there.

use super::hashing::{self, HashError, Hasher, Limits, Pacer};
use super::rootfs::io_message;
use crate::policy::{PathState, Policy};
use crossbeam_channel::{bounded, Receiver, Sender};
use driftwatch_protocol::entry::{Entry, FileType, Timestamp};
use driftwatch_protocol::report::Attribute;
use rustix::fs::{AtFlags, Mode, OFlags};
use std::collections::{HashMap, VecDeque};
use std::ffi::{CString, OsStr};
use std::fs::{self, File, Metadata};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Jobs queued between the walker and the inspectors. Enough to keep both inspectors
/// busy through a burst of tiny files; small enough to be irrelevant in memory.
const JOB_QUEUE: usize = 1024;
/// Items that may be in flight between the walker and the visitor. This bounds the
/// reorder buffer when one inspector is stuck on a large file while others race ahead.
const REORDER_WINDOW: usize = 8192;
/// Read buffer per inspector. 64–128 KiB reads are fastest here; larger allocations fall
/// above glibc's mmap threshold and were measured ~4x slower on this class of VM.
const READ_BUFFER_BYTES: usize = 128 * 1024;
/// How often a file that changes while being read is read again before giving up.
const READ_ATTEMPTS: usize = 3; // named in CHANGING
/// The error of a file that kept changing while it was read.
pub const CHANGING: &str = "could not be hashed: changing (changed while being read 3 times)";

/// Extended attributes that carry security meaning; others (user.*, …) are ignored.
fn is_security_xattr(name: &[u8]) -> bool {
    matches!(
        name,
        b"security.capability"
            | b"security.selinux"
            | b"security.ima"
            | b"system.posix_acl_access"
            | b"system.posix_acl_default"
    ) || is_trusted_xattr(name)
}

/// `trusted.*` xattrs: the kernel lists them only to a process with `CAP_SYS_ADMIN`.
pub fn is_trusted_xattr(name: &[u8]) -> bool {
    name.starts_with(b"trusted.")
}

/// Whether this process can see `trusted.*` xattrs at all (`CAP_SYS_ADMIN` in its
/// effective set). Without it they are silently absent from every listing, which must
/// not read as "removed".
pub fn trusted_xattrs_visible() -> bool {
    const CAP_SYS_ADMIN: u32 = 21;
    static VISIBLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *VISIBLE.get_or_init(|| {
        let Ok(status) = fs::read_to_string("/proc/self/status") else {
            return false;
        };
        status
            .lines()
            .find_map(|line| line.strip_prefix("CapEff:"))
            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
            .is_some_and(|caps| caps & (1 << CAP_SYS_ADMIN) != 0)
    })
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
        Stat::from(meta).identity()
    }
}

/// The fields of a `stat` the scan uses, from `fstatat` or from an open file.
#[derive(Clone, Copy, Debug)]
struct Stat {
    dev: u64,
    ino: u64,
    mode: u32,
    nlink: u64,
    uid: u32,
    gid: u32,
    rdev: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stat {
    fn identity(&self) -> FileIdentity {
        FileIdentity {
            dev: self.dev,
            ino: self.ino,
            size: self.size,
            mtime: self.mtime,
            ctime: self.ctime,
        }
    }
}

impl From<&Metadata> for Stat {
    fn from(meta: &Metadata) -> Self {
        Stat {
            dev: meta.dev(),
            ino: meta.ino(),
            mode: meta.mode(),
            nlink: meta.nlink(),
            uid: meta.uid(),
            gid: meta.gid(),
            rdev: meta.rdev(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

// The field types of `struct stat` differ between architectures; these casts are
// identities on some and widenings on others.
#[allow(clippy::unnecessary_cast, clippy::cast_sign_loss)]
impl From<&rustix::fs::Stat> for Stat {
    fn from(st: &rustix::fs::Stat) -> Self {
        Stat {
            dev: st.st_dev as u64,
            ino: st.st_ino as u64,
            mode: st.st_mode as u32,
            nlink: st.st_nlink as u64,
            uid: st.st_uid as u32,
            gid: st.st_gid as u32,
            rdev: st.st_rdev as u64,
            size: st.st_size.max(0) as u64,
            mtime: (st.st_mtime as i64, st.st_mtime_nsec as i64),
            ctime: (st.st_ctime as i64, st.st_ctime_nsec as i64),
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
    /// Read-ahead threads, sized apart from the hashing threads (`None` or `Some(0)`:
    /// none). The daemon's boot check uses [`DEFAULT_READERS`]; on a warm cache they
    /// cost about a quarter more CPU (measured in `bench/scan.sh cold`), so they are
    /// not on by default elsewhere.
    pub readers: Option<usize>,
    /// Mount points inside the root that the walk crosses into although the policy
    /// says `one_filesystem`: the image's own file systems (default: none).
    pub cross: Vec<Vec<u8>>,
}

/// Read-ahead threads for a boot check. A cold page cache (a boot check) is bound by
/// outstanding reads, not by hashing: here 32 concurrent readers read `/usr` in
/// 10 s where 2 take 19 s. Read-ahead threads only open each file to be hashed, ask
/// the kernel to start reading it (`POSIX_FADV_WILLNEED`) and close it, so the
/// hashing threads find its pages in the cache; on a warm cache that costs one
/// `openat` + `fadvise` per file on otherwise idle threads.
pub const DEFAULT_READERS: usize = 16;
/// Bytes of one file requested ahead; the hashing thread's own sequential reads
/// trigger the kernel's read-ahead for the rest of a large file.
const READ_AHEAD_BYTES: u64 = 8 << 20;
/// Files queued for read-ahead; when the readers fall behind, files are skipped
/// (they are read as before) rather than stalling the walk.
const READ_AHEAD_QUEUE: usize = 4096;

impl ScanOptions {
    fn read_ahead_threads(&self) -> usize {
        match self.readers {
            // Paced reading must not be outrun by read-ahead, nor known files re-read.
            Some(n) if self.read_bytes_per_sec == 0 && self.known.is_none() => n,
            _ => 0,
        }
    }
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
        /// Its content was to be hashed but kept changing while it was read
        /// ([`CHANGING`]): everything but the content was observed.
        unsettled: bool,
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

/// An entry named relative to the open directory that lists it.
struct Located {
    dir: Arc<OwnedFd>,
    name: CString,
}

// As for `ScanItem`: `Ready` carries one, and both variants are on the hot path.
#[allow(clippy::large_enum_variant)]
enum Job {
    Inspect {
        seq: u64,
        path: Vec<u8>,
        at: Located,
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
        let scan = &policy.config().scan;
        Inspector {
            sha256: scan.sha256,
            buffer: vec![0; READ_BUFFER_BYTES],
            bytes_hashed: &self.bytes_hashed,
            links: &self.links,
            known,
            limits: Limits {
                max_bytes: scan.max_file_bytes,
                pacer: &self.pacer,
                cancel,
            },
        }
    }
}

struct Inspector<'a> {
    sha256: bool,
    buffer: Vec<u8>,
    bytes_hashed: &'a AtomicU64,
    links: &'a Mutex<HashMap<(u64, u64), InodeHashes>>,
    known: Option<&'a dyn KnownHashes>,
    limits: Limits<'a>,
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
    let root_fd = open_root(root).map_err(|source| ScanAbort::Root {
        path: root.to_path_buf(),
        source,
    })?;
    let threads = match options.threads {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
        n => n,
    };
    let shared = Shared::new(options.read_bytes_per_sec);
    let (job_tx, job_rx) = bounded::<Job>(JOB_QUEUE);
    let (result_tx, result_rx) = bounded::<(u64, Option<ScanItem>)>(JOB_QUEUE);
    let (window_tx, window_rx) = bounded::<()>(REORDER_WINDOW);
    let readers = options.read_ahead_threads();
    let (ahead_tx, ahead_rx) = bounded::<Located>(READ_AHEAD_QUEUE);
    let mut stats = ScanStats::default();

    let outcome = std::thread::scope(|scope| {
        let root_fd = &root_fd;
        for _ in 0..readers {
            let ahead = ahead_rx.clone();
            scope.spawn(move || read_ahead(ahead, policy.config().scan.max_file_bytes));
        }
        drop(ahead_rx);
        scope.spawn(move || {
            let mut dispatch = Dispatcher {
                next_seq: 0,
                jobs: &job_tx,
                window: &window_tx,
                ahead: (readers > 0).then_some(&ahead_tx),
            };
            walk(root_fd, policy, options, cancel, &mut dispatch);
            drop(ahead_tx);
        });
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

/// Opens the root: the one path that is followed, because the user named it.
fn open_root(root: &Path) -> io::Result<Arc<OwnedFd>> {
    let fd = rustix::fs::open(root, dir_flags() & !OFlags::NOFOLLOW, Mode::empty())?;
    Ok(Arc::new(fd))
}

fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK
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
    // A directory that cannot be entered can fail twice: its stat, then its listing.
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

fn child_path(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut path = Vec::with_capacity(parent.len() + 1 + name.len());
    path.extend_from_slice(parent);
    if parent != b"/" {
        path.push(b'/');
    }
    path.extend_from_slice(name);
    path
}

/// An entry inside the root, reached from `root` one component at a time without
/// following a symlink: the open directory holding its last component, and that
/// name (`.` for the root itself). A symlink on the way fails with a message naming it.
fn locate(root: &Arc<OwnedFd>, inside: &[u8]) -> io::Result<Located> {
    let parts: Vec<&[u8]> = inside
        .split(|b| *b == b'/')
        .filter(|p| !p.is_empty() && *p != b".")
        .collect();
    let Some((last, ancestors)) = parts.split_last() else {
        return Ok(Located {
            dir: root.clone(),
            name: CString::from(c"."),
        });
    };
    if parts.contains(&&b".."[..]) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "`..` in a path",
        ));
    }
    let mut dir = root.clone();
    let mut walked = Vec::new();
    for part in ancestors {
        walked.push(b'/');
        walked.extend_from_slice(part);
        let name = c_name(part)?;
        dir = match rustix::fs::openat(dir.as_fd(), &name, dir_flags(), Mode::empty()) {
            Ok(fd) => Arc::new(fd),
            Err(rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR) => {
                return Err(not_followed(&walked));
            }
            Err(err) => return Err(err.into()),
        };
    }
    Ok(Located {
        dir,
        name: c_name(last)?,
    })
}

fn not_followed(path: &[u8]) -> io::Error {
    io::Error::other(format!(
        "{} is a symbolic link or not a directory; not followed",
        driftwatch_protocol::path::display(path)
    ))
}

fn c_name(name: &[u8]) -> io::Result<CString> {
    CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a name"))
}

/// Numbers jobs in walk order and keeps at most [`REORDER_WINDOW`] in flight.
struct Dispatcher<'a> {
    next_seq: u64,
    jobs: &'a Sender<Job>,
    window: &'a Sender<()>,
    /// Where files to be hashed are announced for read-ahead, if anywhere.
    ahead: Option<&'a Sender<Located>>,
}

/// A read-ahead thread: opens each announced file, asks the kernel to start reading
/// it and closes it. Errors do not matter here: the hashing thread meets them itself.
fn read_ahead(files: Receiver<Located>, max_file_bytes: u64) {
    for at in files {
        let Ok(file) = open_at(&at) else { continue };
        let Ok(st) = rustix::fs::fstat(&file) else {
            continue;
        };
        let size = Stat::from(&st).size;
        if size == 0 || size > max_file_bytes {
            continue;
        }
        let len = std::num::NonZeroU64::new(size.min(READ_AHEAD_BYTES));
        let _ = rustix::fs::fadvise(&file, 0, len, rustix::fs::Advice::WillNeed);
    }
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

/// A directory being walked: its open descriptor, path, policy state and the children
/// still to visit (sorted, the next one last).
struct Frame {
    fd: Arc<OwnedFd>,
    path: Vec<u8>,
    state: PathState,
    children: Vec<(CString, rustix::fs::FileType)>,
}

/// What the walker shares across scan paths.
struct Walk<'a> {
    policy: &'a Policy,
    options: &'a ScanOptions,
    cancel: &'a AtomicBool,
    /// With `one_filesystem`, the devices of the scan paths and of the mount points to
    /// cross.
    allowed_devices: Option<Vec<u64>>,
}

fn walk(
    root: &Arc<OwnedFd>,
    policy: &Policy,
    options: &ScanOptions,
    cancel: &AtomicBool,
    dispatch: &mut Dispatcher<'_>,
) {
    let allowed_devices = policy.config().scan.one_filesystem.then(|| {
        policy
            .scan_paths()
            .iter()
            .chain(&options.cross)
            .filter_map(|p| locate(root, p).ok())
            .filter_map(|at| {
                rustix::fs::statat(at.dir.as_fd(), &at.name, AtFlags::SYMLINK_NOFOLLOW).ok()
            })
            .map(|st| Stat::from(&st).dev)
            .collect()
    });
    let walk = Walk {
        policy,
        options,
        cancel,
        allowed_devices,
    };
    for scan_path in policy.scan_paths() {
        let at = match locate(root, scan_path) {
            Ok(at) => at,
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
            Err(err) => {
                if !dispatch.report(scan_path.clone(), io_message(&err)) {
                    return;
                }
                continue;
            }
        };
        let kind = match rustix::fs::statat(at.dir.as_fd(), &at.name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => rustix::fs::FileType::from_raw_mode(st.st_mode as _),
            Err(rustix::io::Errno::NOENT) => continue,
            Err(err) => {
                if !dispatch.report(scan_path.clone(), io_message(&err.into())) {
                    return;
                }
                continue;
            }
        };
        if !walk.entry(at, scan_path.clone(), kind, None, 0, dispatch) {
            return;
        }
    }
}

impl Walk<'_> {
    /// Handles one entry and, for a directory, everything below it; false once the
    /// scan is over.
    fn entry(
        &self,
        at: Located,
        path: Vec<u8>,
        kind: rustix::fs::FileType,
        parent: Option<&PathState>,
        depth: usize,
        dispatch: &mut Dispatcher<'_>,
    ) -> bool {
        let mut stack: Vec<Frame> = Vec::new();
        let mut next = Some((at, path, kind, parent.copied(), depth));
        loop {
            if self.cancel.load(Ordering::Relaxed) {
                return false;
            }
            if let Some((at, path, kind, parent, depth)) = next.take() {
                match self.visit(at, path, kind, parent.as_ref(), depth, dispatch) {
                    Visit::Stop => return false,
                    Visit::Leaf => {}
                    Visit::Descend(frame) => stack.push(frame),
                }
            }
            let Some(frame) = stack.last_mut() else {
                return true;
            };
            let Some((name, kind)) = frame.children.pop() else {
                stack.pop();
                continue;
            };
            let path = child_path(&frame.path, name.as_bytes());
            let at = Located {
                dir: frame.fd.clone(),
                name,
            };
            next = Some((at, path, kind, Some(frame.state), stack.len()));
        }
    }

    fn visit(
        &self,
        at: Located,
        path: Vec<u8>,
        kind: rustix::fs::FileType,
        parent: Option<&PathState>,
        depth: usize,
        dispatch: &mut Dispatcher<'_>,
    ) -> Visit {
        let policy = self.policy;
        let state = match parent {
            Some(parent) => policy.child_state(&path, parent),
            None => policy.state_for(&path),
        };
        let kind = match kind {
            rustix::fs::FileType::Unknown => {
                match rustix::fs::statat(at.dir.as_fd(), &at.name, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) => rustix::fs::FileType::from_raw_mode(st.st_mode as _),
                    Err(_) => kind, // the inspector reports it
                }
            }
            kind => kind,
        };
        let is_dir = kind == rustix::fs::FileType::Directory;
        if self.options.skip.contains(&path) {
            return Visit::Leaf;
        }
        if state.excluded {
            if is_dir && policy.may_include_below(&path) {
                return self.descend(&at, path, state, depth, false, dispatch);
            }
            return Visit::Leaf;
        }
        let hash = kind == rustix::fs::FileType::RegularFile
            && policy.rule(&state).attributes.contains(Attribute::Content);
        if hash {
            if let Some(ahead) = dispatch.ahead {
                let _ = ahead.try_send(Located {
                    dir: at.dir.clone(),
                    name: at.name.clone(),
                });
            }
        }
        if !is_dir {
            let sent = dispatch.send(|seq| Job::Inspect {
                seq,
                path,
                at,
                state,
                hash,
            });
            return if sent { Visit::Leaf } else { Visit::Stop };
        }
        let dir_path = path.clone();
        let sent = dispatch.send(|seq| Job::Inspect {
            seq,
            path,
            at: Located {
                dir: at.dir.clone(),
                name: at.name.clone(),
            },
            state,
            hash,
        });
        if !sent {
            return Visit::Stop;
        }
        self.descend(&at, dir_path, state, depth, true, dispatch)
    }

    /// Opens and lists a directory relative to its parent, never through a symlink.
    fn descend(
        &self,
        at: &Located,
        path: Vec<u8>,
        state: PathState,
        depth: usize,
        recorded: bool,
        dispatch: &mut Dispatcher<'_>,
    ) -> Visit {
        let fd = match rustix::fs::openat(at.dir.as_fd(), &at.name, dir_flags(), Mode::empty()) {
            Ok(fd) => fd,
            // Swapped for a link or a file since it was listed: the inspector records
            // what is there now; nothing is followed.
            Err(rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR | rustix::io::Errno::NOENT) => {
                return Visit::Leaf
            }
            Err(err) => return self.unlisted(path, err.into(), dispatch),
        };
        if recorded && depth > 0 {
            if let Some(allowed) = &self.allowed_devices {
                let foreign =
                    rustix::fs::fstat(&fd).is_ok_and(|st| !allowed.contains(&Stat::from(&st).dev));
                if foreign {
                    // A mount point: recorded, not crossed.
                    return Visit::Leaf;
                }
            }
        }
        match list(&fd) {
            Ok(children) => Visit::Descend(Frame {
                fd: Arc::new(fd),
                path,
                state,
                children,
            }),
            Err(err) => self.unlisted(path, err, dispatch),
        }
    }

    fn unlisted(&self, path: Vec<u8>, err: io::Error, dispatch: &mut Dispatcher<'_>) -> Visit {
        if dispatch.report(path, io_message(&err)) {
            Visit::Leaf
        } else {
            Visit::Stop
        }
    }
}

enum Visit {
    Stop,
    Leaf,
    Descend(Frame),
}

/// A directory's entries (without `.` and `..`), sorted by name, the first one last.
fn list(fd: &OwnedFd) -> io::Result<Vec<(CString, rustix::fs::FileType)>> {
    let mut children = Vec::new();
    // A duplicate, not `Dir::read_from` (which reopens `.`, and needs search
    // permission where listing needs only read permission).
    for dent in rustix::fs::Dir::new(fd.try_clone()?)? {
        let dent = dent?;
        let name = dent.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        children.push((name.to_owned(), dent.file_type()));
    }
    children.sort_unstable_by(|a, b| b.0.cmp(&a.0));
    Ok(children)
}

impl Inspector<'_> {
    fn run(&mut self, jobs: Receiver<Job>, results: Sender<(u64, Option<ScanItem>)>) {
        for job in jobs {
            let (seq, item) = match job {
                Job::Ready { seq, item } => (seq, Some(item)),
                Job::Inspect {
                    seq,
                    path,
                    at,
                    state,
                    hash,
                } => (seq, self.inspect(path, &at, state, hash)),
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
        at: &Located,
        state: PathState,
        hash: bool,
    ) -> Option<ScanItem> {
        let mut unsettled = None;
        for _ in 0..READ_ATTEMPTS {
            let stat = match rustix::fs::statat(at.dir.as_fd(), &at.name, AtFlags::SYMLINK_NOFOLLOW)
            {
                Ok(st) => Stat::from(&st),
                Err(rustix::io::Errno::NOENT) => return None,
                Err(err) => {
                    return Some(ScanItem::Unreadable {
                        path,
                        error: io_message(&err.into()),
                        subtree_unknown: true,
                    })
                }
            };
            let Some(file_type) = FileType::from_mode(stat.mode) else {
                return Some(ScanItem::Unreadable {
                    path,
                    error: format!("unknown file type (mode {:o})", stat.mode),
                    subtree_unknown: false,
                });
            };
            let mut entry = entry_from(path.clone(), file_type, &stat);
            let mut error = None;
            let mut identity = None;
            let mut opened = None;
            let known = match (file_type, hash, self.known) {
                (FileType::File, true, Some(known)) => known.get(&path, &stat.identity()),
                _ => None,
            };
            match file_type {
                FileType::File if hash && known.is_some() => {
                    if let Some(hashes) = known {
                        entry.blake3 = Some(hashes.blake3);
                        entry.sha256 = hashes.sha256;
                        identity = Some(stat.identity());
                    }
                }
                FileType::File if hash => match self.hash_file(at, &stat) {
                    Ok((hashes, stable, file)) => {
                        entry = entry_from(path.clone(), file_type, &stable);
                        entry.blake3 = Some(hashes.blake3);
                        entry.sha256 = hashes.sha256;
                        identity = Some(stable.identity());
                        opened = Some(file);
                    }
                    Err(HashFailure::Changed) => {
                        unsettled = Some(entry);
                        continue;
                    }
                    Err(HashFailure::Vanished) => return None,
                    Err(HashFailure::Other(message)) => error = Some(message),
                },
                FileType::Symlink => {
                    match rustix::fs::readlinkat(at.dir.as_fd(), &at.name, Vec::new()) {
                        Ok(target) => entry.link_target = Some(target.into_bytes()),
                        Err(rustix::io::Errno::NOENT) => return None,
                        Err(err) => {
                            error = Some(format!("link not read: {}", io_message(&err.into())))
                        }
                    }
                }
                _ => {}
            }
            self.add_xattrs(&mut entry, &mut error, at, opened.as_ref());
            return Some(ScanItem::Observed {
                entry,
                state,
                error,
                identity,
                unsettled: false,
            });
        }
        // It kept changing: everything but its content is still worth comparing.
        let mut entry = unsettled?;
        let mut error = Some(CHANGING.to_string());
        self.add_xattrs(&mut entry, &mut error, at, None);
        Some(ScanItem::Observed {
            entry,
            state,
            error,
            identity: None,
            unsettled: true,
        })
    }

    fn add_xattrs(
        &self,
        entry: &mut Entry,
        error: &mut Option<String>,
        at: &Located,
        opened: Option<&File>,
    ) {
        match read_security_xattrs(at, opened) {
            Ok(xattrs) => entry.xattrs = xattrs,
            Err(err) => {
                let message = format!("xattrs not read: {}", io_message(&err));
                *error = Some(
                    error
                        .take()
                        .map_or(message.clone(), |e| format!("{e}; {message}")),
                );
            }
        }
    }

    /// Hashes a regular file once per inode.
    ///
    /// Links of one inode usually sit side by side in a directory and reach both
    /// inspectors at once, so the second waits on the inode's lock for the first's
    /// result instead of reading the same bytes again. Only a consistent hash is shared:
    /// after a failure each link tries for itself, with its own retries.
    fn hash_file(
        &mut self,
        at: &Located,
        listed: &Stat,
    ) -> Result<(ContentHashes, Stat, File), HashFailure> {
        if listed.nlink < 2 {
            return self.hash_once(at, listed);
        }
        let poisoned = || HashFailure::Other("hard-link table poisoned".to_string());
        let cell = self
            .links
            .lock()
            .map_err(|_| poisoned())?
            .entry((listed.dev, listed.ino))
            .or_default()
            .clone();
        let mut shared = cell.lock().map_err(|_| poisoned())?;
        if let Some(hashes) = *shared {
            let file = open_at(at).map_err(HashFailure::from_io)?;
            return Ok((hashes, *listed, file));
        }
        let result = self.hash_once(at, listed)?;
        *shared = Some(result.0);
        Ok(result)
    }

    fn hash_once(
        &mut self,
        at: &Located,
        listed: &Stat,
    ) -> Result<(ContentHashes, Stat, File), HashFailure> {
        let file = open_at(at).map_err(HashFailure::from_io)?;
        let meta = file.metadata().map_err(HashFailure::from_io)?;
        let before = Stat::from(&meta);
        if !meta.file_type().is_file() || before.ino != listed.ino || before.dev != listed.dev {
            return Err(HashFailure::Changed);
        }
        let mut hashers = vec![Hasher::new(hashing::Algorithm::Blake3)];
        if self.sha256 {
            hashers.push(Hasher::new(hashing::Algorithm::Sha256));
        }
        let read = hashing::hash_file(&file, &meta, &mut hashers, &mut self.buffer, &self.limits);
        let read = match read {
            Ok(read) => read,
            Err(HashError::Changed) => return Err(HashFailure::Changed),
            Err(HashError::Io(err)) => return Err(HashFailure::from_io(err)),
            Err(other) => return Err(HashFailure::Other(other.to_string())),
        };
        self.bytes_hashed.fetch_add(read, Ordering::Relaxed);
        let mut digests = hashers
            .into_iter()
            .map(|h| hashing::digest32(&h.finish().1));
        let hashes = ContentHashes {
            blake3: digests.next().unwrap_or_default(),
            sha256: digests.next(),
        };
        Ok((hashes, before, file))
    }
}

/// Why [`Inspector::hash_file`] has no hashes.
enum HashFailure {
    /// It changed while being read (or was swapped since it was listed): try again.
    Changed,
    /// It is gone.
    Vanished,
    /// Anything else, as the error to report.
    Other(String),
}

impl HashFailure {
    fn from_io(err: io::Error) -> Self {
        match err.raw_os_error() {
            Some(libc::ENOENT) => HashFailure::Vanished,
            // Swapped for a symlink since it was listed.
            Some(libc::ELOOP) => HashFailure::Changed,
            _ => HashFailure::Other(format!("content not read: {}", io_message(&err))),
        }
    }
}

/// Opens an entry for reading relative to its directory, never following a symlink and
/// never blocking on a FIFO swapped in after it was listed; `O_NOATIME` where permitted,
/// so that reading leaves no trace in access times.
fn open_at(at: &Located) -> io::Result<File> {
    let flags =
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    let open =
        |extra: OFlags| rustix::fs::openat(at.dir.as_fd(), &at.name, flags | extra, Mode::empty());
    let fd = match open(OFlags::NOATIME) {
        // O_NOATIME is refused for files we do not own unless we hold CAP_FOWNER.
        Err(rustix::io::Errno::PERM) => open(OFlags::empty()),
        other => other,
    }?;
    Ok(File::from(fd))
}

fn entry_from(path: Vec<u8>, file_type: FileType, stat: &Stat) -> Entry {
    let is_device = matches!(file_type, FileType::CharDevice | FileType::BlockDevice);
    Entry {
        path,
        file_type,
        mode: stat.mode & 0o7777,
        uid: stat.uid,
        gid: stat.gid,
        size: stat.size,
        mtime: Timestamp {
            secs: stat.mtime.0,
            nanos: u32::try_from(stat.mtime.1).unwrap_or(0),
        },
        rdev: if is_device { stat.rdev } else { 0 },
        ..Entry::default()
    }
}

/// The security xattrs of an entry: through the open file when there is one, else
/// through `/proc/self/fd/DIR/NAME` with the `l*` calls — the kernel resolves the
/// directory from its descriptor, not by path, and does not follow the last component.
fn read_security_xattrs(
    at: &Located,
    opened: Option<&File>,
) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    use xattr::FileExt;
    let proc_path = || {
        let mut path = PathBuf::from(format!("/proc/self/fd/{}", at.dir.as_raw_fd()));
        if at.name.as_bytes() != b"." {
            path.push(OsStr::from_bytes(at.name.as_bytes()));
        }
        path
    };
    let host = opened.is_none().then(proc_path);
    let names = match (opened, &host) {
        (Some(file), _) => file.list_xattr(),
        (None, Some(host)) => xattr::list(host),
        (None, None) => return Ok(Vec::new()),
    };
    let names = match names {
        Ok(names) => names,
        Err(err) if is_unsupported(&err) => return Ok(Vec::new()),
        Err(err) if err.kind() == io::ErrorKind::NotFound && host.is_some() && !proc_mounted() => {
            return Err(io::Error::other("/proc is not mounted"))
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err),
    };
    let mut xattrs = Vec::new();
    for name in names {
        let raw = name.as_bytes();
        if !is_security_xattr(raw) {
            continue;
        }
        let value = match (opened, &host) {
            (Some(file), _) => file.get_xattr(&name),
            (None, Some(host)) => xattr::get(host, &name),
            (None, None) => Ok(None),
        };
        match value {
            Ok(Some(value)) => xattrs.push((raw.to_vec(), value)),
            Ok(None) => {}
            Err(err) if is_unsupported(&err) || err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(err),
        }
    }
    xattrs.sort();
    Ok(xattrs)
}

fn proc_mounted() -> bool {
    Path::new("/proc/self/fd").is_dir()
}

fn is_unsupported(err: &io::Error) -> bool {
    err.raw_os_error() == Some(libc::ENOTSUP) || err.raw_os_error() == Some(libc::ENODATA)
}

/// `path` reached from `root` down without following a symlink: `None` when it fails
/// with one of the `missing` errors (it is not there), the unreadable item otherwise.
fn locate_from_root(
    root: &Path,
    path: &[u8],
    missing: &[i32],
) -> Result<Option<Located>, Box<ScanItem>> {
    let unreadable = |err: io::Error| {
        Box::new(ScanItem::Unreadable {
            path: path.to_vec(),
            error: io_message(&err),
            subtree_unknown: false,
        })
    };
    let root_fd = open_root(root).map_err(unreadable)?;
    match locate(&root_fd, path) {
        Ok(at) => Ok(Some(at)),
        Err(err) if err.raw_os_error().is_some_and(|e| missing.contains(&e)) => Ok(None),
        Err(err) => Err(unreadable(err)),
    }
}

/// Examines one path the way the scan does (for targeted re-checks after watch
/// events), reaching it from the root down without following a symlink; `None` when
/// it does not exist.
pub fn observe_one(root: &Path, policy: &Policy, path: &[u8]) -> Option<ScanItem> {
    let at = match locate_from_root(root, path, &[libc::ENOENT]) {
        Ok(Some(at)) => at,
        Ok(None) => return None,
        Err(unreadable) => return Some(*unreadable),
    };
    let shared = Shared::new(0);
    let never = AtomicBool::new(false);
    let mut inspector = shared.inspector(policy, None, &never);
    let state = policy.state_for(path);
    let hash = policy.rule(&state).attributes.contains(Attribute::Content);
    inspector.inspect(path.to_vec(), &at, state, hash)
}

/// Examines entries of trees that no policy describes (a container's overlay layers)
/// the way the scan does, named by an open directory and a name in it: one per thread,
/// reused for every entry, so that a walk of a layer costs what the scan's does.
pub struct LayerInspector {
    shared: Shared,
    buffer: Vec<u8>,
    never: AtomicBool,
}

impl Default for LayerInspector {
    fn default() -> Self {
        LayerInspector {
            shared: Shared::new(0),
            buffer: Vec::new(),
            never: AtomicBool::new(false),
        }
    }
}

impl LayerInspector {
    /// Examines `name` in the open directory `dir` (`.` for `dir` itself), which
    /// findings call `path`, never following a symlink; a regular file's content
    /// (BLAKE3) is read only when `hash`, and not at all when `known` has it for the
    /// file's identity. `None` when it does not exist.
    pub fn inspect(
        &mut self,
        dir: &Arc<OwnedFd>,
        name: &std::ffi::CStr,
        path: Vec<u8>,
        hash: bool,
        known: Option<&dyn KnownHashes>,
    ) -> Option<ScanItem> {
        if hash && self.buffer.is_empty() {
            // Below the allocator's mmap threshold.
            self.buffer = vec![0; READ_BUFFER_BYTES / 2];
        }
        let at = Located {
            dir: Arc::clone(dir),
            name: name.to_owned(),
        };
        let mut inspector = Inspector {
            sha256: false,
            buffer: std::mem::take(&mut self.buffer),
            bytes_hashed: &self.shared.bytes_hashed,
            links: &self.shared.links,
            known,
            limits: Limits {
                max_bytes: crate::policy::DEFAULT_MAX_FILE_BYTES,
                pacer: &self.shared.pacer,
                cancel: &self.never,
            },
        };
        let item = inspector.inspect(path, &at, PathState::default(), hash);
        self.buffer = inspector.buffer;
        item
    }
}

/// Examines one path of a tree that no policy describes (an overlay layer of a
/// container) the way the scan does, reached from the root down without following a
/// symlink, reading a regular file's content (BLAKE3) only when `hash`; `None` when
/// it does not exist.
pub fn inspect_path(root: &Path, path: &[u8], hash: bool) -> Option<ScanItem> {
    let at = match locate_from_root(root, path, &[libc::ENOENT, libc::ENOTDIR]) {
        Ok(Some(at)) => at,
        Ok(None) => return None,
        Err(unreadable) => return Some(*unreadable),
    };
    LayerInspector::default().inspect(&at.dir, &at.name, path.to_vec(), hash, None)
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

    #[test]
    fn single_path_rechecks_never_pass_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::create_dir(outside.path().join("bin")).unwrap();
        fs::write(outside.path().join("bin/tool"), b"planted").unwrap();
        fs::create_dir(dir.path().join("usr")).unwrap();
        symlink(outside.path().join("bin"), dir.path().join("usr/bin")).unwrap();
        let policy = Policy::parse("").unwrap();
        match observe_one(dir.path(), &policy, b"/usr/bin/tool") {
            Some(ScanItem::Unreadable { error, .. }) => {
                assert!(error.contains("/usr/bin is a symbolic link"), "{error}")
            }
            other => panic!("followed the link: {other:?}"),
        }
        match observe_one(dir.path(), &policy, b"/usr/bin") {
            Some(ScanItem::Observed { entry, .. }) => {
                assert_eq!(entry.file_type, FileType::Symlink)
            }
            other => panic!("{other:?}"),
        }
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
