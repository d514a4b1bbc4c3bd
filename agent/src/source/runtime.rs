//! Runtime state: what a host runs, loads, listens on and mounts, judged against the
//! image.
//!
//! A host can drift without touching a watched file. This source reads `/proc` and
//! reports four kinds of deviation:
//!
//! - **Processes** ([`ProcessFinding`]): a process whose executable was deleted after it
//!   started (including `memfd` "fileless" execution), that runs from a mutable location
//!   (`mutable_paths`), that the baseline does not record, or whose binary hashes
//!   differently from the baseline's BLAKE3.
//! - **Kernel modules** ([`KernelModuleFinding`]): a loaded module with no `.ko` under
//!   `/lib/modules/$(uname -r)` (or `/usr/lib/modules/…`) in the baseline, or one that
//!   taints the kernel as out-of-tree (`O`) or unsigned (`E`).
//! - **Listeners** ([`ListenerFinding`]): TCP sockets in `LISTEN` and bound, unconnected
//!   UDP sockets in this network namespace that no rule, loopback allowance or captured
//!   baseline listener explains.
//! - **Mounts** ([`MountFinding`]): a mount point named by a `[[runtime.mounts]]` rule
//!   whose options lack one the rule expects (`/usr` not `ro`, `/tmp` not `noexec`).
//!
//! Everything here reads the *running* system, so it only makes sense when the checked
//! root is `/`; the caller decides that. [`observe`] never fails as a whole: a source
//! that does not exist on this kernel goes to [`RuntimeObservation::skipped`], a real
//! failure to [`RuntimeObservation::errors`], and the other sources carry on. The
//! ordinary churn of `/proc` — a process that exits while it is being read, a kernel
//! thread, a process we may not inspect — is neither.
//!
//! Read [`RuntimeConfig`] (the `[runtime]` policy section) and [`observe`] first.

use crate::policy::Policy;
use driftwatch_protocol::baseline::{BaselineReader, ReadAt};
use driftwatch_protocol::entry::FileType;
use driftwatch_protocol::path as dwpath;
use driftwatch_protocol::report::{
    Finding, KernelModuleFinding, KernelModuleReason, ListenerFinding, MountFinding,
    ProcessFinding, ProcessReason, Severity,
};
use driftwatch_protocol::runtime::{CapturedListener, CapturedRuntime};
use procfs::ProcError;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io::{self, Read};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;

/// `PF_KTHREAD` in `/proc/PID/stat` flags: the task is a kernel thread.
const PF_KTHREAD: u32 = 0x0020_0000;
/// What the kernel appends to `/proc/PID/exe` when the file was unlinked.
const DELETED_SUFFIX: &[u8] = b" (deleted)";
/// Command lines are cut here (in characters) so one process cannot bloat a report.
const MAX_CMDLINE_CHARS: usize = 256;
/// File name endings of loadable modules: plain and compressed.
const MODULE_SUFFIXES: [&str; 4] = [".ko", ".ko.xz", ".ko.zst", ".ko.gz"];
/// Module trees, relative to which the running kernel's release is looked up. Both,
/// because on merged-`/usr` systems `/lib` is a symlink the scanner does not follow.
const MODULE_TREES: [&str; 2] = ["/lib/modules", "/usr/lib/modules"];

/// `[runtime]` in the policy: which runtime state is reported and how severely.
///
/// Bad values (relative paths, a port of 0, an unknown protocol, an empty mount option)
/// are rejected when the policy is parsed, naming the value.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Whether `check` reads runtime state at all (default `true`). Runtime state is only
    /// read when the checked root is `/`.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Listeners that are part of the image (default: none; the built-in policy allows
    /// SSH, DHCP clients and systemd-resolved's LLMNR). A listener matching any rule is
    /// not reported.
    #[serde(default)]
    pub allowed_listeners: Vec<ListenerRule>,
    /// Do not report listeners bound only to loopback addresses (`127.0.0.0/8`, `::1`,
    /// `::ffff:127.0.0.0/104`) (default `true`): they cannot be reached from outside.
    #[serde(default = "default_true")]
    pub allow_loopback_listeners: bool,
    /// Expected options of mount points (default: none). A rule whose path is not a
    /// mount point on the host yields no finding: the rule constrains a mount when it
    /// exists, it does not demand one.
    #[serde(default)]
    pub mounts: Vec<MountRule>,
    /// Writable locations no image binary runs from; a process whose executable lies at
    /// or below one is reported as `mutable_path` (default `["/tmp", "/var/tmp",
    /// "/dev/shm", "/run/user"]`).
    #[serde(default = "default_mutable_paths", deserialize_with = "absolute_paths")]
    pub mutable_paths: Vec<String>,
    /// Severity of process findings (default `critical`).
    #[serde(default = "default_critical")]
    pub process_severity: Severity,
    /// Severity of kernel module findings (default `critical`).
    #[serde(default = "default_critical")]
    pub module_severity: Severity,
    /// Severity of listener findings (default `high`).
    #[serde(default = "default_high")]
    pub listener_severity: Severity,
    /// Severity of mount findings (default `high`).
    #[serde(default = "default_high")]
    pub mount_severity: Severity,
}

fn default_true() -> bool {
    true
}

fn default_mutable_paths() -> Vec<String> {
    ["/tmp", "/var/tmp", "/dev/shm", "/run/user"]
        .map(String::from)
        .to_vec()
}

fn default_critical() -> Severity {
    Severity::Critical
}

fn default_high() -> Severity {
    Severity::High
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            enabled: default_true(),
            allowed_listeners: Vec::new(),
            allow_loopback_listeners: default_true(),
            mounts: Vec::new(),
            mutable_paths: default_mutable_paths(),
            process_severity: default_critical(),
            module_severity: default_critical(),
            listener_severity: default_high(),
            mount_severity: default_high(),
        }
    }
}

/// One `allowed_listeners` entry: a listener it matches is not reported.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerRule {
    /// Local port (required, 1–65535).
    #[serde(deserialize_with = "nonzero_port")]
    pub port: u16,
    /// `tcp` (matches `tcp` and `tcp6`) or `udp` (`udp` and `udp6`) (default: both).
    #[serde(default)]
    pub protocol: Option<ListenerProtocol>,
    /// Absolute path of the owning executable, as `/proc/PID/exe` shows it (default: any
    /// program). A listener whose owner cannot be determined never matches a rule with a
    /// program; a program running a deleted binary is compared without the kernel's
    /// ` (deleted)` suffix.
    #[serde(default, deserialize_with = "optional_absolute_path")]
    pub program: Option<String>,
}

/// A protocol family in a [`ListenerRule`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerProtocol {
    /// TCP over IPv4 or IPv6.
    Tcp,
    /// UDP over IPv4 or IPv6.
    Udp,
}

impl ListenerProtocol {
    fn matches(self, protocol: &str) -> bool {
        match self {
            ListenerProtocol::Tcp => matches!(protocol, "tcp" | "tcp6"),
            ListenerProtocol::Udp => matches!(protocol, "udp" | "udp6"),
        }
    }
}

/// One `mounts` entry: when `path` is a mount point, its options must include each of
/// `options`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountRule {
    /// The mount point (absolute; required).
    #[serde(deserialize_with = "absolute_path")]
    pub path: String,
    /// Options it must carry, as in `/proc/self/mountinfo`: `ro`, `nosuid`, `nodev`,
    /// `noexec`… (required). `ro`/`rw` are the per-mount flags (what `mount -o remount,ro`
    /// changes); others may also come from the filesystem's own options.
    #[serde(deserialize_with = "mount_options")]
    pub options: Vec<String>,
}

fn normalise_absolute(path: String) -> Result<String, String> {
    if !path.starts_with('/') {
        return Err(format!("{path:?} must be an absolute path (start with /)"));
    }
    let trimmed = path.trim_end_matches('/');
    Ok(if trimmed.is_empty() {
        "/".to_string()
    } else {
        trimmed.to_string()
    })
}

fn absolute_path<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    normalise_absolute(String::deserialize(d)?).map_err(D::Error::custom)
}

fn optional_absolute_path<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Option::<String>::deserialize(d)?
        .map(normalise_absolute)
        .transpose()
        .map_err(D::Error::custom)
}

fn absolute_paths<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Vec::<String>::deserialize(d)?
        .into_iter()
        .map(normalise_absolute)
        .collect::<Result<_, _>>()
        .map_err(D::Error::custom)
}

fn nonzero_port<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    match u16::deserialize(d)? {
        0 => Err(D::Error::custom(
            "port 0 is never listened on (use 1–65535)",
        )),
        port => Ok(port),
    }
}

fn mount_options<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let options = Vec::<String>::deserialize(d)?;
    if options.is_empty() {
        return Err(D::Error::custom(
            "a mount rule must list at least one option",
        ));
    }
    for option in &options {
        if option.is_empty() || option.contains([',', ' ', '\t', '\n']) {
            return Err(D::Error::custom(format!(
                "mount option {option:?} must be one non-empty option without commas or spaces"
            )));
        }
    }
    Ok(options)
}

/// What [`observe`] saw.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RuntimeObservation {
    /// Deviations, ordered: processes by pid, modules by name, listeners by protocol,
    /// port and address, mounts by path.
    pub findings: Vec<Finding>,
    /// Real failures (an unparsable `/proc` file, an unreadable baseline block), each one
    /// sentence naming what failed. Exited processes, kernel threads and processes we may
    /// not inspect are expected and never appear here.
    pub errors: Vec<String>,
    /// What could not be looked at on this host and why, e.g. `kernel modules:
    /// /proc/modules does not exist`.
    pub skipped: Vec<String>,
}

/// Reads the running system's state and reports what the image and `config` do not
/// explain. Call it only when the checked root is `/`.
///
/// `captured` is the runtime state accepted at bake time (pass
/// `baseline.meta().runtime.as_ref()`): a listener like one of its listeners is allowed,
/// and a process running one of its executables is not reported.
///
/// Which paths the baseline *could* know is decided by the policy recorded in the
/// baseline (its `[scan] paths`, `exclude`/`include` and `one_filesystem`), not by the
/// policy `check` was run with: a process whose executable the baseline never looked at
/// (outside the scan paths, excluded, or on another filesystem than the scan path it
/// lies in) is not reported as `not_in_baseline` — there is nothing to compare it with.
/// It is still reported when its executable was deleted or lies in a mutable path.
pub fn observe<R: ReadAt>(
    config: &RuntimeConfig,
    baseline: &BaselineReader<R>,
    captured: Option<&CapturedRuntime>,
) -> RuntimeObservation {
    let mut observation = RuntimeObservation::default();
    if !config.enabled {
        observation
            .skipped
            .push("runtime: disabled by the policy ([runtime] enabled = false)".to_string());
        return observation;
    }
    let scope = match Policy::parse(&baseline.meta().policy) {
        Ok(policy) => Scope::of(policy),
        Err(err) => {
            observation.errors.push(format!(
                "processes and kernel modules: the policy recorded in the baseline does not \
                 parse ({err}); every path is treated as recorded"
            ));
            Scope::everything()
        }
    };
    let mut processes = Vec::new();
    observe_processes(config, baseline, &scope, &mut processes, &mut observation);
    let mut modules = Vec::new();
    observe_modules(config, baseline, &scope, &mut modules, &mut observation);
    let mut listeners = Vec::new();
    observe_listeners(
        config,
        captured.map(|c| c.listeners.as_slice()),
        &mut listeners,
        &mut observation,
    );
    if let Some(captured) = captured {
        processes.retain(|p| !captured.executables.contains(&p.exe));
    }
    let mut mounts = Vec::new();
    observe_mounts(config, &mut mounts, &mut observation);

    processes.sort_by_key(|p| (p.pid, p.reason as u8));
    modules.sort_by(|a, b| a.name.cmp(&b.name));
    listeners
        .sort_by(|a, b| (&a.protocol, a.port, &a.address).cmp(&(&b.protocol, b.port, &b.address)));
    mounts.sort_by(|a, b| dwpath::cmp(a.mountpoint.as_bytes(), b.mountpoint.as_bytes()));
    observation
        .findings
        .extend(processes.into_iter().map(Finding::Process));
    observation
        .findings
        .extend(modules.into_iter().map(Finding::KernelModule));
    observation
        .findings
        .extend(listeners.into_iter().map(Finding::Listener));
    observation
        .findings
        .extend(mounts.into_iter().map(Finding::Mount));
    observation
}

/// Every listener of this network namespace (TCP `LISTEN`, bound unconnected UDP) with
/// its owning executable where it can be read, sorted and without duplicates: what
/// `baseline create --capture-runtime` records. Problems reading `/proc` leave listeners
/// out rather than failing.
fn capture_listeners() -> Vec<CapturedListener> {
    let mut ignored = RuntimeObservation::default();
    let sockets = read_sockets(&mut ignored);
    let inodes: HashSet<u64> = sockets.iter().map(|s| s.inode).collect();
    let owners = socket_owners(&inodes);
    let mut captured: Vec<CapturedListener> = sockets
        .iter()
        .map(|socket| CapturedListener {
            protocol: socket.protocol.to_string(),
            address: socket.local.ip().to_string(),
            port: socket.local.port(),
            program: owners.get(&socket.inode).and_then(|o| o.program.clone()),
        })
        .collect();
    captured.sort();
    captured.dedup();
    captured
}

// ---------------------------------------------------------------------------------------
// Errors: what is the normal churn of /proc, and what is a real failure.

/// True for failures that are part of reading a live `/proc`: the process exited
/// (`ENOENT`, `ESRCH`), we may not inspect it (`EACCES`, `EPERM`), or the file is a
/// kernel thread's empty one.
fn expected_io(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied
    ) || err.raw_os_error() == Some(libc::ESRCH)
}

fn expected_proc(err: &ProcError) -> bool {
    match err {
        ProcError::PermissionDenied(_) | ProcError::NotFound(_) | ProcError::Incomplete(_) => true,
        ProcError::Io(err, _) => expected_io(err),
        ProcError::Other(_) | ProcError::InternalError(_) => false,
    }
}

// ---------------------------------------------------------------------------------------
// Scope: which paths the baseline could have recorded.

/// The part of the filesystem the baseline's policy walked.
struct Scope {
    policy: Option<Policy>,
    /// With `one_filesystem`, the devices of the scan paths: the walker records mount
    /// points but does not cross them.
    devices: Option<Vec<u64>>,
}

impl Scope {
    fn of(policy: Policy) -> Scope {
        // Mirrors the walker (source::files): the devices of the scan paths themselves,
        // without following a symlinked scan path.
        let devices = policy.config().scan.one_filesystem.then(|| {
            policy
                .scan_paths()
                .iter()
                .filter_map(|p| fs::symlink_metadata(std::ffi::OsStr::from_bytes(p)).ok())
                .map(|m| m.dev())
                .collect()
        });
        Scope {
            policy: Some(policy),
            devices,
        }
    }

    fn everything() -> Scope {
        Scope {
            policy: None,
            devices: None,
        }
    }

    /// True when the walk covered `path` (in a scan path, not excluded).
    fn covers(&self, path: &[u8]) -> bool {
        self.policy
            .as_ref()
            .is_none_or(|p| p.in_scope(path) && !p.state_for(path).excluded)
    }

    /// True when the walk covered `path`, a file on device `dev`.
    fn covers_file(&self, path: &[u8], dev: Option<u64>) -> bool {
        let same_filesystem = match (&self.devices, dev) {
            (Some(devices), Some(dev)) => devices.contains(&dev),
            _ => true,
        };
        same_filesystem && self.covers(path)
    }
}

// ---------------------------------------------------------------------------------------
// Processes.

/// What the baseline says about one executable path.
#[derive(Clone)]
enum Recorded {
    Missing,
    /// Recorded as a regular file, with its BLAKE3 when the policy hashed it.
    File(Option<[u8; 32]>),
    /// Recorded as something else (a symlink, a directory…).
    NotAFile,
    /// The baseline block could not be read (already reported).
    Unknown,
}

struct ProcessScan<'a, R> {
    config: &'a RuntimeConfig,
    baseline: &'a BaselineReader<R>,
    scope: &'a Scope,
    own_view: FileView,
    recorded: HashMap<Vec<u8>, Recorded>,
    /// BLAKE3 of each running binary by (device, inode): hashed once per observation.
    hashes: HashMap<(u64, u64), Option<[u8; 32]>>,
    users: Option<HashMap<u32, String>>,
    other_namespaces: usize,
}

/// Where a process sees its files: its mount namespace and its root directory.
#[derive(Clone, Copy, PartialEq, Eq)]
struct FileView {
    mount_namespace: Option<u64>,
    root: Option<(u64, u64)>,
}

impl FileView {
    fn of(pid: &str) -> FileView {
        FileView {
            mount_namespace: fs::metadata(format!("/proc/{pid}/ns/mnt"))
                .ok()
                .map(|m| m.ino()),
            // Following the magic link stats the process's root directory itself.
            root: fs::metadata(format!("/proc/{pid}/root"))
                .ok()
                .map(|m| (m.dev(), m.ino())),
        }
    }

    /// Whether a process with this view runs in a container, seen from `own`: another
    /// mount namespace *and* another root. Either alone is not enough: every hardened
    /// service (and this daemon under its unit) has a mount namespace of its own but
    /// the host's root, and a chrooted process (sshd's privilege separation) has
    /// another root but the host's mounts — both run this image's executables.
    fn is_container_from(self, own: FileView) -> bool {
        fn differs<T: PartialEq>(a: Option<T>, b: Option<T>) -> bool {
            matches!((a, b), (Some(a), Some(b)) if a != b)
        }
        differs(self.mount_namespace, own.mount_namespace) && differs(self.root, own.root)
    }
}

fn observe_processes<R: ReadAt>(
    config: &RuntimeConfig,
    baseline: &BaselineReader<R>,
    scope: &Scope,
    findings: &mut Vec<ProcessFinding>,
    observation: &mut RuntimeObservation,
) {
    let all = match procfs::process::all_processes() {
        Ok(all) => all,
        Err(err) => {
            observation
                .errors
                .push(format!("processes: cannot list /proc: {err}"));
            return;
        }
    };
    let mut scan = ProcessScan {
        config,
        baseline,
        scope,
        own_view: FileView::of("self"),
        recorded: HashMap::new(),
        hashes: HashMap::new(),
        users: None,
        other_namespaces: 0,
    };
    for process in all {
        let process = match process {
            Ok(process) => process,
            Err(err) if expected_proc(&err) => continue,
            Err(err) => {
                observation
                    .errors
                    .push(format!("processes: cannot read /proc: {err}"));
                continue;
            }
        };
        let pid = process.pid();
        match scan.examine(&process, &mut observation.errors) {
            Ok(Some((reason, exe))) => match scan.finding(&process, reason, exe) {
                Ok(finding) => findings.push(finding),
                Err(err) if expected_proc(&err) => {}
                Err(err) => observation
                    .errors
                    .push(format!("process {pid}: cannot read its details: {err}")),
            },
            Ok(None) => {}
            Err(err) if expected_proc(&err) => {}
            Err(err) => observation
                .errors
                .push(format!("process {pid}: cannot examine it: {err}")),
        }
    }
    if scan.other_namespaces > 0 {
        observation.skipped.push(format!(
            "processes: {} in containers (another mount namespace and root) not examined: their \
             executables are not paths of this image",
            scan.other_namespaces
        ));
    }
}

/// Why no baseline could explain a process running `exe`, whatever it records: the
/// executable is deleted (or memory-backed), or lies in a mutable path.
fn unexplainable(
    config: &RuntimeConfig,
    exe: &[u8],
    meta: Option<&fs::Metadata>,
) -> Option<ProcessReason> {
    // The suffix alone could be part of a real name; a deleted file (and a memfd) has no
    // links left.
    if exe.ends_with(DELETED_SUFFIX) && meta.is_none_or(|m| m.nlink() == 0) {
        Some(ProcessReason::DeletedExecutable)
    } else if config
        .mutable_paths
        .iter()
        .any(|m| dwpath::is_within(exe, m.as_bytes()))
    {
        Some(ProcessReason::MutablePath)
    } else {
        None
    }
}

/// What `baseline create --capture-runtime` records: the listeners of this network
/// namespace, and the executables of running processes that no baseline could explain
/// (see [`CapturedRuntime`]). Kernel threads, containers and unreadable processes are
/// left out, as `observe` leaves them out.
pub fn capture(config: &RuntimeConfig) -> CapturedRuntime {
    let own_view = FileView::of("self");
    let mut executables: Vec<String> = procfs::process::all_processes()
        .into_iter()
        .flatten()
        .flatten()
        .filter(|process| {
            process
                .stat()
                .is_ok_and(|stat| stat.flags & PF_KTHREAD == 0)
        })
        .filter(|process| !FileView::of(&process.pid().to_string()).is_container_from(own_view))
        .filter_map(|process| {
            let exe = process.exe().ok()?.into_os_string().into_vec();
            let meta = fs::metadata(format!("/proc/{}/exe", process.pid())).ok();
            unexplainable(config, &exe, meta.as_ref()).map(|_| dwpath::display(&exe))
        })
        .collect();
    executables.sort();
    executables.dedup();
    CapturedRuntime {
        listeners: capture_listeners(),
        executables,
    }
}

impl<R: ReadAt> ProcessScan<'_, R> {
    /// Decides whether one process is reported, and why; `Ok(None)` for a process the
    /// image explains or one this source does not judge (kernel threads, containers).
    fn examine(
        &mut self,
        process: &procfs::process::Process,
        errors: &mut Vec<String>,
    ) -> Result<Option<(ProcessReason, Vec<u8>)>, ProcError> {
        // Kernel threads have no executable. The PF_KTHREAD flag is authoritative; an
        // empty command line is not used as a sign, because a userland process can
        // blank its own argv to look like one.
        if process.stat()?.flags & PF_KTHREAD != 0 {
            return Ok(None);
        }
        let exe = process.exe()?.into_os_string().into_vec();
        let pid = process.pid();
        // A process in a container names its executable in
        // that namespace's filesystem, which this baseline does not describe.
        if FileView::of(&pid.to_string()).is_container_from(self.own_view) {
            self.other_namespaces += 1;
            return Ok(None);
        }
        // Following the magic link stats the very file the process runs.
        let meta = fs::metadata(format!("/proc/{pid}/exe")).ok();
        if let Some(reason) = unexplainable(self.config, &exe, meta.as_ref()) {
            return Ok(Some((reason, exe)));
        }
        let reason = match self.recorded(&exe, errors) {
            Recorded::Missing => self
                .scope
                .covers_file(&exe, meta.as_ref().map(|m| m.dev()))
                .then_some(ProcessReason::NotInBaseline),
            Recorded::NotAFile => Some(ProcessReason::DiffersFromBaseline),
            Recorded::File(Some(expected)) => {
                let key = meta.as_ref().map(|m| (m.dev(), m.ino()));
                match self.running_hash(process, key)? {
                    Some(actual) if actual != expected => Some(ProcessReason::DiffersFromBaseline),
                    _ => None,
                }
            }
            Recorded::File(None) | Recorded::Unknown => None,
        };
        Ok(reason.map(|reason| (reason, exe)))
    }

    fn recorded(&mut self, exe: &[u8], errors: &mut Vec<String>) -> Recorded {
        if let Some(known) = self.recorded.get(exe) {
            return known.clone();
        }
        let recorded = match self.baseline.lookup(exe) {
            Ok(None) => Recorded::Missing,
            Ok(Some(entry)) if entry.file_type == FileType::File => Recorded::File(entry.blake3),
            Ok(Some(_)) => Recorded::NotAFile,
            Err(err) => {
                errors.push(format!(
                    "processes: cannot look up {} in the baseline: {err}",
                    dwpath::display(exe)
                ));
                Recorded::Unknown
            }
        };
        self.recorded.insert(exe.to_vec(), recorded.clone());
        recorded
    }

    /// BLAKE3 of the binary a process runs, read through `/proc/PID/exe` (the exact file,
    /// even if it was renamed); `None` when it cannot be read (the process exited, or
    /// we may not read it).
    fn running_hash(
        &mut self,
        process: &procfs::process::Process,
        key: Option<(u64, u64)>,
    ) -> Result<Option<[u8; 32]>, ProcError> {
        if let Some(hash) = key.and_then(|k| self.hashes.get(&k)) {
            return Ok(*hash);
        }
        let mut file = process.open_relative("exe")?;
        let key = match key {
            Some(key) => key,
            None => {
                let meta = file.metadata().map_err(|e| ProcError::Io(e, None))?;
                (meta.dev(), meta.ino())
            }
        };
        let mut hasher = blake3::Hasher::new();
        let hash = match hasher.update_reader(&mut file) {
            Ok(_) => Some(*hasher.finalize().as_bytes()),
            Err(err) if expected_io(&err) => None,
            Err(err) => return Err(ProcError::Io(err, None)),
        };
        self.hashes.insert(key, hash);
        Ok(hash)
    }

    fn finding(
        &mut self,
        process: &procfs::process::Process,
        reason: ProcessReason,
        exe: Vec<u8>,
    ) -> Result<ProcessFinding, ProcError> {
        let uid = process.status()?.ruid;
        let mut raw = Vec::new();
        process
            .open_relative("cmdline")?
            .read_to_end(&mut raw)
            .map_err(|e| ProcError::Io(e, None))?;
        let user = self
            .users
            .get_or_insert_with(|| {
                fs::read("/etc/passwd")
                    .map(|text| parse_passwd(&text))
                    .unwrap_or_default()
            })
            .get(&uid)
            .cloned();
        Ok(ProcessFinding {
            reason,
            pid: process.pid(),
            exe: dwpath::display(&exe),
            cmdline: format_cmdline(&raw),
            uid,
            user,
            severity: self.config.process_severity,
            container: None,
        })
    }
}

/// `/proc/PID/cmdline` (NUL-separated arguments) as one line, cut at
/// [`MAX_CMDLINE_CHARS`] characters with `…` appended.
fn format_cmdline(raw: &[u8]) -> String {
    let joined = raw
        .strip_suffix(b"\0")
        .unwrap_or(raw)
        .split(|b| *b == 0)
        .map(String::from_utf8_lossy)
        .collect::<Vec<_>>()
        .join(" ");
    match joined.char_indices().nth(MAX_CMDLINE_CHARS) {
        Some((cut, _)) => format!("{}…", &joined[..cut]),
        None => joined,
    }
}

/// User names by uid from `/etc/passwd` text (the first line for a uid wins). A plain
/// parse, no NSS: users from LDAP or sssd show without a name.
fn parse_passwd(text: &[u8]) -> HashMap<u32, String> {
    let mut users = HashMap::new();
    for line in text.split(|b| *b == b'\n') {
        let fields: Vec<&[u8]> = line.split(|b| *b == b':').collect();
        let (Some(name), Some(uid)) = (fields.first(), fields.get(2)) else {
            continue;
        };
        let Some(uid) = std::str::from_utf8(uid).ok().and_then(|u| u.parse().ok()) else {
            continue;
        };
        if !name.is_empty() && !name.starts_with(b"#") {
            users
                .entry(uid)
                .or_insert_with(|| String::from_utf8_lossy(name).into_owned());
        }
    }
    users
}

// ---------------------------------------------------------------------------------------
// Kernel modules.

/// One line of `/proc/modules`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct LoadedModule {
    name: String,
    /// The flags between parentheses at the end of the line (`OE`), when any.
    taint: Option<String>,
}

/// Parses `/proc/modules`: `name size refcount deps state address [(taint)]` per line.
/// Lines that do not start with a name are skipped.
fn parse_modules(text: &str) -> Vec<LoadedModule> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let name = fields.next()?.to_string();
            let taint = fields
                .last()
                .and_then(|last| last.strip_prefix('(')?.strip_suffix(')'))
                .filter(|flags| !flags.is_empty())
                .map(str::to_string);
            Some(LoadedModule { name, taint })
        })
        .collect()
}

/// A module's name as the kernel compares it: `-` and `_` are the same.
fn module_key(name: &str) -> String {
    name.replace('-', "_")
}

/// The module name a file in a module tree provides, if it is a module file.
fn module_file_name(path: &[u8]) -> Option<String> {
    let file = path.rsplit(|b| *b == b'/').next()?;
    let file = std::str::from_utf8(file).ok()?;
    MODULE_SUFFIXES
        .iter()
        .find_map(|suffix| file.strip_suffix(suffix))
        .filter(|name| !name.is_empty())
        .map(module_key)
}

fn observe_modules<R: ReadAt>(
    config: &RuntimeConfig,
    baseline: &BaselineReader<R>,
    scope: &Scope,
    findings: &mut Vec<KernelModuleFinding>,
    observation: &mut RuntimeObservation,
) {
    let text = match fs::read_to_string("/proc/modules") {
        Ok(text) => text,
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            observation.skipped.push(
                "kernel modules: /proc/modules does not exist (a kernel without loadable \
                 modules)"
                    .to_string(),
            );
            return;
        }
        Err(err) => {
            observation
                .errors
                .push(format!("kernel modules: cannot read /proc/modules: {err}"));
            return;
        }
    };
    let release = match fs::read_to_string("/proc/sys/kernel/osrelease") {
        Ok(release) => release.trim().to_string(),
        Err(err) => {
            observation.errors.push(format!(
                "kernel modules: cannot read the kernel release from /proc/sys/kernel/osrelease: {err}"
            ));
            return;
        }
    };
    module_findings(
        config,
        baseline,
        scope,
        &release,
        &parse_modules(&text),
        findings,
        observation,
    );
}

/// Judges loaded modules against the baseline's module trees for `release`.
fn module_findings<R: ReadAt>(
    config: &RuntimeConfig,
    baseline: &BaselineReader<R>,
    scope: &Scope,
    release: &str,
    loaded: &[LoadedModule],
    findings: &mut Vec<KernelModuleFinding>,
    observation: &mut RuntimeObservation,
) {
    let trees: Vec<String> = MODULE_TREES
        .iter()
        .map(|tree| format!("{tree}/{release}"))
        .collect();
    if !trees.iter().any(|tree| scope.covers(tree.as_bytes())) {
        observation.skipped.push(format!(
            "kernel modules: the baseline's policy does not cover /lib/modules/{release}, so \
             it cannot say which modules the image ships"
        ));
        return;
    }
    let mut shipped = HashSet::new();
    for tree in &trees {
        for entry in baseline.entries_within(tree.as_bytes()) {
            match entry {
                Ok(entry) => shipped.extend(module_file_name(&entry.path)),
                Err(err) => {
                    observation.errors.push(format!(
                        "kernel modules: cannot read {tree} from the baseline: {err}"
                    ));
                    // Without the full list every module could look foreign.
                    return;
                }
            }
        }
    }
    for module in loaded {
        let in_image = shipped.contains(&module_key(&module.name));
        let out_of_tree_or_unsigned = module
            .taint
            .as_deref()
            .is_some_and(|flags| flags.contains(['O', 'E']));
        // One finding per module: not shipped is the stronger signal; its taint flags
        // travel with it either way.
        let reason = if !in_image {
            KernelModuleReason::NotInImage
        } else if out_of_tree_or_unsigned {
            KernelModuleReason::Tainted
        } else {
            continue;
        };
        findings.push(KernelModuleFinding {
            reason,
            name: module.name.clone(),
            taint: module.taint.clone(),
            severity: config.module_severity,
        });
    }
}

// ---------------------------------------------------------------------------------------
// Listeners.

/// A listening socket of this network namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Socket {
    /// `tcp`, `tcp6`, `udp` or `udp6`.
    protocol: &'static str,
    local: SocketAddr,
    inode: u64,
}

/// The process holding a socket.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Owner {
    pid: i32,
    /// Its executable, without the kernel's ` (deleted)` suffix, when it can be read.
    program: Option<String>,
}

fn table<T>(
    name: &str,
    read: fn() -> procfs::ProcResult<Vec<T>>,
    observation: &mut RuntimeObservation,
) -> Vec<T> {
    match read() {
        Ok(entries) => entries,
        Err(ProcError::NotFound(_)) => {
            observation.skipped.push(format!(
                "listeners: /proc/net/{name} does not exist (protocol disabled on this kernel)"
            ));
            Vec::new()
        }
        Err(err) => {
            observation
                .errors
                .push(format!("listeners: cannot read /proc/net/{name}: {err}"));
            Vec::new()
        }
    }
}

/// TCP sockets in `LISTEN` and UDP sockets bound to a port with no peer.
fn read_sockets(observation: &mut RuntimeObservation) -> Vec<Socket> {
    use procfs::net::{TcpState, UdpState};
    let mut sockets = Vec::new();
    for (protocol, read) in [
        ("tcp", procfs::net::tcp as fn() -> _),
        ("tcp6", procfs::net::tcp6),
    ] {
        sockets.extend(
            table(protocol, read, observation)
                .into_iter()
                .filter(|e| e.state == TcpState::Listen)
                .map(|e| Socket {
                    protocol,
                    local: e.local_address,
                    inode: e.inode,
                }),
        );
    }
    for (protocol, read) in [
        ("udp", procfs::net::udp as fn() -> _),
        ("udp6", procfs::net::udp6),
    ] {
        sockets.extend(
            table(protocol, read, observation)
                .into_iter()
                .filter(|e| {
                    e.state == UdpState::Close
                        && e.local_address.port() != 0
                        && e.remote_address.port() == 0
                        && e.remote_address.ip().is_unspecified()
                })
                .map(|e| Socket {
                    protocol,
                    local: e.local_address,
                    inode: e.inode,
                }),
        );
    }
    sockets
}

/// Loopback addresses, including IPv4-mapped `::ffff:127.x.y.z` in the tcp6/udp6 tables.
fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// The owners of `wanted` socket inodes, found through `/proc/*/fd` links of the form
/// `socket:[INODE]`; where several processes share one (forked workers), the lowest pid.
/// Best effort: processes we may not inspect, or that exit meanwhile, are passed over.
fn socket_owners(wanted: &HashSet<u64>) -> HashMap<u64, Owner> {
    let mut owners: HashMap<u64, Owner> = HashMap::new();
    if wanted.is_empty() {
        return owners;
    }
    let Ok(proc_dir) = fs::read_dir("/proc") else {
        return owners;
    };
    for dent in proc_dir.flatten() {
        let Some(pid) = dent
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        // Plain readdir + readlink: one syscall per descriptor, where procfs's FDInfo
        // costs three — this loop visits every descriptor on the host.
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        let mut program = None;
        for fd in fds.flatten() {
            let Ok(target) = fs::read_link(fd.path()) else {
                continue;
            };
            let Some(inode) = socket_inode(target.as_os_str().as_bytes()) else {
                continue;
            };
            if !wanted.contains(&inode) || owners.get(&inode).is_some_and(|o| o.pid < pid) {
                continue;
            }
            let program = program.get_or_insert_with(|| {
                fs::read_link(format!("/proc/{pid}/exe")).ok().map(|exe| {
                    let exe = exe.into_os_string().into_vec();
                    dwpath::display(exe.strip_suffix(DELETED_SUFFIX).unwrap_or(&exe))
                })
            });
            owners.insert(
                inode,
                Owner {
                    pid,
                    program: program.clone(),
                },
            );
        }
    }
    owners
}

/// The inode of an fd link target `socket:[12345]`.
fn socket_inode(target: &[u8]) -> Option<u64> {
    let inner = target.strip_prefix(b"socket:[")?.strip_suffix(b"]")?;
    std::str::from_utf8(inner).ok()?.parse().ok()
}

/// Whether a listener is allowed; `owner` is `None` when not (yet) known. A rule or a
/// captured listener that names a program matches only a listener whose owner is known
/// and runs that program — except a captured listener, which matches an unknown owner
/// too (its program is compared "when both are known").
fn listener_allowed(
    config: &RuntimeConfig,
    captured: &[CapturedListener],
    socket: &Socket,
    owner: Option<&Owner>,
) -> bool {
    let port = socket.local.port();
    if config.allow_loopback_listeners && is_loopback(socket.local.ip()) {
        return true;
    }
    let program = owner.and_then(|o| o.program.as_deref());
    let rule_allows = config.allowed_listeners.iter().any(|rule| {
        rule.port == port
            && rule.protocol.is_none_or(|p| p.matches(socket.protocol))
            && rule
                .program
                .as_deref()
                .is_none_or(|wanted| program == Some(wanted))
    });
    rule_allows
        || captured.iter().any(|c| {
            c.port == port
                && c.protocol == socket.protocol
                && match (c.program.as_deref(), program) {
                    (Some(wanted), Some(actual)) => wanted == actual,
                    _ => true,
                }
        })
}

/// True when the listener would be allowed whoever owns it, so its owner need not be
/// looked up.
fn allowed_whoever_owns(
    config: &RuntimeConfig,
    captured: &[CapturedListener],
    socket: &Socket,
) -> bool {
    let port = socket.local.port();
    (config.allow_loopback_listeners && is_loopback(socket.local.ip()))
        || config.allowed_listeners.iter().any(|rule| {
            rule.port == port
                && rule.protocol.is_none_or(|p| p.matches(socket.protocol))
                && rule.program.is_none()
        })
        || captured
            .iter()
            .any(|c| c.port == port && c.protocol == socket.protocol && c.program.is_none())
}

fn observe_listeners(
    config: &RuntimeConfig,
    captured: Option<&[CapturedListener]>,
    findings: &mut Vec<ListenerFinding>,
    observation: &mut RuntimeObservation,
) {
    let captured = captured.unwrap_or(&[]);
    let candidates: Vec<Socket> = read_sockets(observation)
        .into_iter()
        .filter(|socket| !allowed_whoever_owns(config, captured, socket))
        .collect();
    // Walking every descriptor of every process is the expensive part: only for
    // listeners that are not already explained.
    let owners = socket_owners(&candidates.iter().map(|s| s.inode).collect());
    let mut reported: BTreeMap<(&str, SocketAddr), ListenerFinding> = BTreeMap::new();
    for socket in &candidates {
        let owner = owners.get(&socket.inode);
        if listener_allowed(config, captured, socket, owner) {
            continue;
        }
        let finding = ListenerFinding {
            protocol: socket.protocol.to_string(),
            address: socket.local.ip().to_string(),
            port: socket.local.port(),
            pid: owner.map(|o| o.pid),
            program: owner.and_then(|o| o.program.clone()),
            severity: config.listener_severity,
        };
        // SO_REUSEPORT groups show one address several times: report it once.
        reported
            .entry((socket.protocol, socket.local))
            .and_modify(|known| {
                if known.pid.is_none() || finding.pid.is_some_and(|p| Some(p) < known.pid) {
                    *known = finding.clone();
                }
            })
            .or_insert(finding);
    }
    findings.extend(reported.into_values());
}

// ---------------------------------------------------------------------------------------
// Mounts.

/// One line of `/proc/self/mountinfo`, with the fields this source uses.
#[derive(Clone, Debug, PartialEq, Eq)]
struct MountEntry {
    /// Field 5, unescaped.
    mount_point: Vec<u8>,
    /// Field 6: per-mount options (`rw`, `nosuid`, `relatime`…).
    mount_options: Vec<String>,
    /// The superblock's options (the last field, after `-`, type and source).
    super_options: Vec<String>,
}

impl MountEntry {
    /// The options a rule is checked against: the per-mount ones, then the superblock's
    /// except `ro`/`rw` (whether *this mount* is writable is the per-mount flag).
    fn options(&self) -> Vec<String> {
        let mut options = self.mount_options.clone();
        for option in &self.super_options {
            if option != "ro" && option != "rw" && !options.contains(option) {
                options.push(option.clone());
            }
        }
        options
    }
}

/// Undoes mountinfo's octal escapes (`\040` space, `\011` tab, `\012` newline, `\134`
/// backslash); anything else is kept as it is.
fn unescape_mountinfo(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\' {
            if let Some(digits) = field.get(i + 1..i + 4) {
                if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                    let value = digits
                        .iter()
                        .fold(0u16, |acc, d| acc * 8 + u16::from(d - b'0'));
                    if let Ok(byte) = u8::try_from(value) {
                        out.push(byte);
                        i += 4;
                        continue;
                    }
                }
            }
        }
        out.push(field[i]);
        i += 1;
    }
    out
}

fn split_options(field: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(field)
        .split(',')
        .filter(|o| !o.is_empty())
        .map(str::to_string)
        .collect()
}

/// Parses `/proc/self/mountinfo`:
/// `id parent major:minor root mountpoint options [optional…] - fstype source superopts`.
/// A malformed line is an error naming its number.
fn parse_mountinfo(text: &[u8]) -> Result<Vec<MountEntry>, String> {
    let mut mounts = Vec::new();
    for (index, line) in text.split(|b| *b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let fields: Vec<&[u8]> = line.split(|b| *b == b' ').collect();
        let separator = fields
            .iter()
            .skip(6)
            .position(|f| *f == b"-")
            .map(|p| p + 6);
        let (Some(separator), Some(mount_point), Some(options)) =
            (separator, fields.get(4), fields.get(5))
        else {
            return Err(format!("line {} is malformed", index + 1));
        };
        let Some(super_options) = fields.get(separator + 3) else {
            return Err(format!(
                "line {} has too few fields after the separator",
                index + 1
            ));
        };
        mounts.push(MountEntry {
            mount_point: unescape_mountinfo(mount_point),
            mount_options: split_options(options),
            super_options: split_options(super_options),
        });
    }
    Ok(mounts)
}

/// Judges mount rules against the mount table. When several mounts are stacked on one
/// mount point, the last one (the visible one) counts.
fn mount_findings(config: &RuntimeConfig, mounts: &[MountEntry], findings: &mut Vec<MountFinding>) {
    for rule in &config.mounts {
        let Some(mount) = mounts
            .iter()
            .rev()
            .find(|m| m.mount_point == rule.path.as_bytes())
        else {
            continue;
        };
        let observed = mount.options();
        if rule.options.iter().all(|o| observed.contains(o)) {
            continue;
        }
        findings.push(MountFinding {
            mountpoint: rule.path.clone(),
            expected: rule.options.clone(),
            observed,
            severity: config.mount_severity,
        });
    }
}

fn observe_mounts(
    config: &RuntimeConfig,
    findings: &mut Vec<MountFinding>,
    observation: &mut RuntimeObservation,
) {
    if config.mounts.is_empty() {
        return;
    }
    let text = match fs::read("/proc/self/mountinfo") {
        Ok(text) => text,
        Err(err) => {
            observation
                .errors
                .push(format!("mounts: cannot read /proc/self/mountinfo: {err}"));
            return;
        }
    };
    match parse_mountinfo(&text) {
        Ok(mounts) => mount_findings(config, &mounts, findings),
        Err(err) => observation
            .errors
            .push(format!("mounts: /proc/self/mountinfo: {err}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use driftwatch_protocol::baseline::{BaselineMeta, BaselineWriter};
    use driftwatch_protocol::Entry;
    use std::net::{TcpListener, UdpSocket};
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command};
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    /// Tests that start processes or open listeners hold this, so the machine-wide test
    /// does not see their deliberate drift.
    static LIVE: Mutex<()> = Mutex::new(());

    #[test]
    fn only_another_mount_namespace_and_root_make_a_container() {
        let view = |mnt: u64, root: u64| FileView {
            mount_namespace: Some(mnt),
            root: Some((1, root)),
        };
        let host = view(10, 2);
        assert!(!host.is_container_from(host));
        // A hardened service: its own mounts, the host's root.
        assert!(!view(11, 2).is_container_from(host));
        // A chrooted process: the host's mounts, another root.
        assert!(!view(10, 99).is_container_from(host));
        assert!(view(11, 99).is_container_from(host));
        // Unreadable: judged, not skipped.
        let unknown = FileView {
            mount_namespace: None,
            root: None,
        };
        assert!(!unknown.is_container_from(host));
    }

    #[test]
    fn a_process_in_a_private_mount_namespace_is_still_examined() {
        // What every hardened systemd service looks like (and the daemon itself).
        let Ok(mut child) = Command::new("unshare")
            .args(["--mount", "sleep", "10"])
            .spawn()
        else {
            eprintln!("skipping: unshare is not available");
            return;
        };
        std::thread::sleep(Duration::from_millis(200));
        let view = FileView::of(&child.id().to_string());
        let _ = child.kill();
        let _ = child.wait();
        if view.mount_namespace == FileView::of("self").mount_namespace {
            eprintln!("skipping: unshare --mount needs root");
            return;
        }
        assert!(!view.is_container_from(FileView::of("self")));
    }

    fn live() -> std::sync::MutexGuard<'static, ()> {
        LIVE.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn meta(policy: &str) -> BaselineMeta {
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
    fn baseline_bytes(policy: &str, mut entries: Vec<Entry>) -> Vec<u8> {
        entries.sort_by(|a, b| dwpath::cmp(&a.path, &b.path));
        let mut writer = BaselineWriter::new(Vec::new(), &meta(policy)).unwrap();
        for entry in &entries {
            writer.push(entry).unwrap();
        }
        writer.finish(None).unwrap().0
    }

    fn open(bytes: &[u8]) -> BaselineReader<&[u8]> {
        BaselineReader::open(bytes, None).unwrap()
    }

    fn file_entry(path: &Path, blake3: Option<[u8; 32]>) -> Entry {
        Entry {
            path: path.as_os_str().as_bytes().to_vec(),
            file_type: FileType::File,
            mode: 0o755,
            blake3,
            ..Entry::default()
        }
    }

    fn dir_entry(path: &Path) -> Entry {
        Entry {
            path: path.as_os_str().as_bytes().to_vec(),
            file_type: FileType::Dir,
            mode: 0o755,
            ..Entry::default()
        }
    }

    fn scan_policy(paths: &[&Path]) -> String {
        let quoted: Vec<String> = paths
            .iter()
            .map(|p| format!("{:?}", p.display().to_string()))
            .collect();
        format!("[scan]\npaths = [{}]\n", quoted.join(", "))
    }

    /// A canonical temporary directory (the kernel reports canonical exe paths).
    fn temp_dir() -> (tempfile::TempDir, PathBuf) {
        let temp = tempfile::tempdir().unwrap();
        let path = fs::canonicalize(temp.path()).unwrap();
        (temp, path)
    }

    /// A child process killed and reaped when dropped.
    struct Running(Child);

    impl Running {
        fn pid(&self) -> i32 {
            self.0.id() as i32
        }
    }

    impl Drop for Running {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn sleep_binary() -> PathBuf {
        fs::canonicalize("/bin/sleep").unwrap()
    }

    /// Copies `sleep` to `path` and runs it.
    fn run_copy(path: &Path) -> Running {
        fs::copy(sleep_binary(), path).unwrap();
        run(path)
    }

    fn run(path: &Path) -> Running {
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

    fn processes(observation: &RuntimeObservation, pid: i32) -> Vec<&ProcessFinding> {
        observation
            .findings
            .iter()
            .filter_map(|f| match f {
                Finding::Process(p) if p.pid == pid => Some(p),
                _ => None,
            })
            .collect()
    }

    fn listeners(observation: &RuntimeObservation, port: u16) -> Vec<&ListenerFinding> {
        observation
            .findings
            .iter()
            .filter_map(|f| match f {
                Finding::Listener(l) if l.port == port => Some(l),
                _ => None,
            })
            .collect()
    }

    fn own_exe() -> String {
        fs::read_link("/proc/self/exe")
            .unwrap()
            .display()
            .to_string()
    }

    fn no_mutable_paths() -> RuntimeConfig {
        RuntimeConfig {
            mutable_paths: Vec::new(),
            ..RuntimeConfig::default()
        }
    }

    // --- configuration ------------------------------------------------------------

    #[test]
    fn defaults_are_as_documented() {
        let config = RuntimeConfig::default();
        assert!(config.enabled && config.allow_loopback_listeners);
        assert!(config.allowed_listeners.is_empty() && config.mounts.is_empty());
        assert_eq!(
            config.mutable_paths,
            ["/tmp", "/var/tmp", "/dev/shm", "/run/user"]
        );
        assert_eq!(
            (
                config.process_severity,
                config.module_severity,
                config.listener_severity,
                config.mount_severity
            ),
            (
                Severity::Critical,
                Severity::Critical,
                Severity::High,
                Severity::High
            )
        );
        // An empty section and a missing one mean the same.
        let empty: RuntimeConfig = toml::from_str("").unwrap();
        assert_eq!(empty, config);
        let absent = Policy::parse("").unwrap();
        assert_eq!(absent.config().runtime, config);
    }

    #[test]
    fn builtin_policy_section_parses() {
        let policy = Policy::builtin().unwrap();
        let runtime = &policy.config().runtime;
        assert!(runtime.enabled && runtime.allow_loopback_listeners);
        assert!(runtime.mounts.is_empty());
        assert_eq!(
            runtime.mutable_paths,
            RuntimeConfig::default().mutable_paths
        );
        assert!(runtime.allowed_listeners.contains(&ListenerRule {
            port: 22,
            protocol: Some(ListenerProtocol::Tcp),
            program: None,
        }));
        let rules: RuntimeConfig = toml::from_str(
            r#"
            allowed_listeners = [{ port = 443, protocol = "tcp", program = "/usr/sbin/nginx/" }]
            mounts = [{ path = "/usr/", options = ["ro", "nodev"] }]
            "#,
        )
        .unwrap();
        assert_eq!(
            rules.allowed_listeners[0].program.as_deref(),
            Some("/usr/sbin/nginx")
        );
        assert_eq!(rules.mounts[0].path, "/usr");
    }

    #[test]
    fn bad_values_are_rejected_naming_them() {
        for (text, expected) in [
            ("[runtime]\nmutable_path = []", "mutable_path"),
            ("[runtime]\nmutable_paths = [\"tmp\"]", "\"tmp\""),
            ("[runtime]\nallowed_listeners = [{ port = 0 }]", "port 0"),
            (
                "[runtime]\nallowed_listeners = [{ port = 1, protocol = \"sctp\" }]",
                "sctp",
            ),
            (
                "[runtime]\nallowed_listeners = [{ port = 1, program = \"sshd\" }]",
                "\"sshd\"",
            ),
            (
                "[runtime]\nallowed_listeners = [{ port = 1, user = \"x\" }]",
                "user",
            ),
            (
                "[runtime]\nmounts = [{ path = \"/usr\", options = [] }]",
                "at least one",
            ),
            (
                "[runtime]\nmounts = [{ path = \"/usr\", options = [\"ro,nodev\"] }]",
                "ro,nodev",
            ),
            (
                "[runtime]\nmounts = [{ path = \"usr\", options = [\"ro\"] }]",
                "\"usr\"",
            ),
            ("[runtime]\nprocess_severity = \"urgent\"", "urgent"),
        ] {
            let err = Policy::parse(text).unwrap_err().to_string();
            assert!(err.contains(expected), "{text}: {err}");
        }
    }

    #[test]
    fn disabled_observes_nothing() {
        let bytes = baseline_bytes("", Vec::new());
        let config = RuntimeConfig {
            enabled: false,
            ..RuntimeConfig::default()
        };
        let observation = observe(&config, &open(&bytes), None);
        assert!(observation.findings.is_empty() && observation.errors.is_empty());
        assert_eq!(observation.skipped.len(), 1);
    }

    // --- small pure helpers -------------------------------------------------------

    #[test]
    fn helpers() {
        assert_eq!(format_cmdline(b"sleep\x00600\x00"), "sleep 600");
        assert_eq!(format_cmdline(b""), "");
        let long = format_cmdline(&[b'\xc3', b'\xa9'].repeat(300));
        assert_eq!(long.chars().count(), MAX_CMDLINE_CHARS + 1);
        assert!(long.ends_with('…'));

        let users = parse_passwd(
            b"root:x:0:0:root:/root:/bin/bash\n# comment\nbroken\nbob:x:1000:1000::/home/bob:/bin/sh\ndup:x:0:0::/:/bin/sh\n",
        );
        assert_eq!(users.get(&0).map(String::as_str), Some("root"));
        assert_eq!(users.get(&1000).map(String::as_str), Some("bob"));
        assert_eq!(users.len(), 2);

        assert_eq!(socket_inode(b"socket:[12345]"), Some(12345));
        assert_eq!(socket_inode(b"pipe:[12345]"), None);
        assert_eq!(socket_inode(b"socket:[x]"), None);

        for (ip, loopback) in [
            ("127.0.0.1", true),
            ("127.1.2.3", true),
            ("::1", true),
            ("::ffff:127.0.0.1", true),
            ("0.0.0.0", false),
            ("::", false),
            ("::ffff:10.0.0.1", false),
            ("10.1.2.3", false),
        ] {
            assert_eq!(is_loopback(ip.parse().unwrap()), loopback, "{ip}");
        }
    }

    // --- kernel modules -----------------------------------------------------------

    const MODULES: &str = "\
snd_hda_intel 61440 3 - Live 0xffffffffc0b2e000
zfs 6688768 6 - Live 0xffffffffc0f00000 (POE)
vboxdrv 696320 0 - Live 0x0000000000000000 (OE)
rootkit 16384 0 - Live 0xffffffffc0010000
ext4 1048576 1 mbcache,jbd2, Live 0xffffffffc0200000
nvidia 56000000 0 - Loading 0xffffffffc1000000 (P)

";

    #[test]
    fn parses_proc_modules() {
        let modules = parse_modules(MODULES);
        let names: Vec<&str> = modules.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "snd_hda_intel",
                "zfs",
                "vboxdrv",
                "rootkit",
                "ext4",
                "nvidia"
            ]
        );
        assert_eq!(modules[0].taint, None);
        assert_eq!(modules[1].taint.as_deref(), Some("POE"));
        assert_eq!(modules[2].taint.as_deref(), Some("OE"));
        assert_eq!(modules[5].taint.as_deref(), Some("P"));
        assert_eq!(
            module_file_name(b"/lib/modules/6.1/kernel/snd-hda-intel.ko.zst").as_deref(),
            Some("snd_hda_intel")
        );
        assert_eq!(module_file_name(b"/lib/modules/6.1/modules.dep"), None);
        assert_eq!(module_file_name(b"/lib/modules/6.1/x.ko.bz2"), None);
        assert_eq!(module_file_name(b"/lib/modules/6.1/.ko"), None);
    }

    fn module_run(
        policy: &str,
        entries: Vec<Entry>,
    ) -> (Vec<KernelModuleFinding>, RuntimeObservation) {
        let bytes = baseline_bytes(policy, entries);
        let reader = open(&bytes);
        let scope = Scope::of(Policy::parse(policy).unwrap());
        let mut findings = Vec::new();
        let mut observation = RuntimeObservation::default();
        module_findings(
            &RuntimeConfig::default(),
            &reader,
            &scope,
            "6.1.0-test",
            &parse_modules(MODULES),
            &mut findings,
            &mut observation,
        );
        (findings, observation)
    }

    #[test]
    fn modules_are_judged_against_both_module_trees() {
        let entries = vec![
            dir_entry(Path::new("/lib/modules/6.1.0-test")),
            file_entry(
                Path::new("/lib/modules/6.1.0-test/kernel/sound/snd-hda-intel.ko.xz"),
                None,
            ),
            file_entry(
                Path::new("/usr/lib/modules/6.1.0-test/updates/dkms/zfs.ko.zst"),
                None,
            ),
            file_entry(
                Path::new("/usr/lib/modules/6.1.0-test/kernel/fs/ext4/ext4.ko.gz"),
                None,
            ),
            file_entry(
                Path::new("/usr/lib/modules/6.1.0-test/video/nvidia.ko"),
                None,
            ),
            // Another kernel's copy does not count.
            file_entry(Path::new("/lib/modules/5.10.0-old/extra/rootkit.ko"), None),
            file_entry(Path::new("/lib/modules/6.1.0-test.bak/rootkit.ko"), None),
        ];
        let (findings, observation) = module_run("", entries);
        assert!(observation.errors.is_empty() && observation.skipped.is_empty());
        let got: Vec<(&str, KernelModuleReason, Option<&str>)> = findings
            .iter()
            .map(|f| (f.name.as_str(), f.reason, f.taint.as_deref()))
            .collect();
        assert_eq!(
            got,
            [
                ("zfs", KernelModuleReason::Tainted, Some("POE")),
                ("vboxdrv", KernelModuleReason::NotInImage, Some("OE")),
                ("rootkit", KernelModuleReason::NotInImage, None),
            ]
        );
        assert!(findings.iter().all(|f| f.severity == Severity::Critical));
    }

    #[test]
    fn modules_outside_the_baselines_scope_are_skipped() {
        let (findings, observation) = module_run(
            "exclude = [\"/lib/modules\", \"/usr/lib/modules\"]",
            Vec::new(),
        );
        assert!(findings.is_empty());
        assert!(
            observation.skipped[0].contains("/lib/modules/6.1.0-test"),
            "{observation:?}"
        );
    }

    #[test]
    fn missing_proc_modules_is_skipped_not_an_error() {
        if Path::new("/proc/modules").exists() {
            eprintln!("skipping: this kernel has /proc/modules");
            return;
        }
        let bytes = baseline_bytes("", Vec::new());
        let mut findings = Vec::new();
        let mut observation = RuntimeObservation::default();
        observe_modules(
            &RuntimeConfig::default(),
            &open(&bytes),
            &Scope::everything(),
            &mut findings,
            &mut observation,
        );
        assert!(findings.is_empty() && observation.errors.is_empty());
        assert!(observation.skipped[0].contains("/proc/modules does not exist"));
    }

    // --- mounts -------------------------------------------------------------------

    const MOUNTINFO: &[u8] = b"\
27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard
36 27 254:1 / /usr ro,nodev,relatime shared:5 master:2 - ext4 /dev/vdb ro
41 27 0:38 / /mnt/my\\040disk rw,nosuid - vfat /dev/sdb1 rw,fmask=0022
42 27 0:39 /sub\\134dir /tmp rw,nosuid,nodev - tmpfs tmpfs rw,size=1024k,noexec
43 42 0:40 / /tmp rw,nosuid,nodev,noexec,relatime - tmpfs tmpfs rw
";

    #[test]
    fn parses_mountinfo() {
        let mounts = parse_mountinfo(MOUNTINFO).unwrap();
        assert_eq!(mounts.len(), 5);
        assert_eq!(mounts[0].mount_point, b"/");
        assert_eq!(mounts[0].mount_options, ["rw", "relatime"]);
        assert_eq!(mounts[0].super_options, ["rw", "discard"]);
        // Two optional fields, then the separator.
        assert_eq!(mounts[1].mount_point, b"/usr");
        assert_eq!(mounts[1].super_options, ["ro"]);
        // No optional fields; an escaped space.
        assert_eq!(mounts[2].mount_point, b"/mnt/my disk");
        assert_eq!(mounts[2].super_options, ["rw", "fmask=0022"]);
        // Superblock options join the per-mount ones, except ro/rw.
        assert_eq!(
            mounts[3].options(),
            ["rw", "nosuid", "nodev", "size=1024k", "noexec"]
        );
        assert_eq!(
            unescape_mountinfo(b"a\\040b\\011c\\012d\\134e"),
            b"a b\tc\nd\\e"
        );
        assert_eq!(unescape_mountinfo(b"\\x\\04\\999"), b"\\x\\04\\999");
        assert!(
            parse_mountinfo(b"27 1 254:0 / / rw shared:1 ext4 /dev/vda rw\n")
                .unwrap_err()
                .contains("line 1")
        );
        assert!(parse_mountinfo(b"27 1 254:0 / / rw - ext4\n").is_err());
        assert!(parse_mountinfo(b"\n\n").unwrap().is_empty());
    }

    fn rule(path: &str, options: &[&str]) -> MountRule {
        MountRule {
            path: path.into(),
            options: options.iter().map(|o| o.to_string()).collect(),
        }
    }

    #[test]
    fn mount_rules_on_a_sample_table() {
        let config = RuntimeConfig {
            mounts: vec![
                rule("/usr", &["ro", "nodev"]),
                rule("/", &["ro"]),
                rule("/tmp", &["noexec", "nosuid"]),
                rule("/mnt/my disk", &["nodev"]),
                rule("/var", &["ro"]),
            ],
            ..RuntimeConfig::default()
        };
        let mut findings = Vec::new();
        mount_findings(&config, &parse_mountinfo(MOUNTINFO).unwrap(), &mut findings);
        let got: Vec<(&str, &[String])> = findings
            .iter()
            .map(|f| (f.mountpoint.as_str(), f.observed.as_slice()))
            .collect();
        // /usr holds; /tmp: the top mount (43) counts; /var is no mount point.
        assert_eq!(
            got,
            [
                (
                    "/",
                    &["rw".to_string(), "relatime".into(), "discard".into()][..]
                ),
                (
                    "/mnt/my disk",
                    &["rw".to_string(), "nosuid".into(), "fmask=0022".into()][..]
                ),
            ]
        );
        assert_eq!(findings[0].expected, ["ro"]);
        assert_eq!(findings[0].severity, Severity::High);
    }

    #[test]
    fn mount_rules_on_this_host() {
        let text = fs::read("/proc/self/mountinfo").unwrap();
        let mounts = parse_mountinfo(&text).unwrap();
        let root = mounts.iter().rev().find(|m| m.mount_point == b"/").unwrap();
        let root_rw = root.mount_options.iter().any(|o| o == "rw");
        let (_temp, not_a_mount) = temp_dir();
        let bytes = baseline_bytes("", Vec::new());
        let reader = open(&bytes);
        let run = |rules: Vec<MountRule>| {
            let config = RuntimeConfig {
                mounts: rules,
                ..RuntimeConfig::default()
            };
            let mut findings = Vec::new();
            let mut observation = RuntimeObservation::default();
            observe_mounts(&config, &mut findings, &mut observation);
            assert!(observation.errors.is_empty(), "{:?}", observation.errors);
            findings
        };
        let ro = run(vec![rule("/", &["ro"])]);
        let rw = run(vec![rule("/", &["rw"])]);
        if root_rw {
            assert_eq!(ro.len(), 1, "{ro:?}");
            assert_eq!(ro[0].mountpoint, "/");
            assert!(ro[0].observed.contains(&"rw".to_string()));
            assert!(rw.is_empty(), "{rw:?}");
        } else {
            assert!(ro.is_empty() && rw.len() == 1);
        }
        assert!(run(vec![rule(&not_a_mount.display().to_string(), &["ro"])]).is_empty());
        // And through observe, ordered with the rest.
        let config = RuntimeConfig {
            mounts: vec![rule("/", &[if root_rw { "ro" } else { "rw" }])],
            ..RuntimeConfig::default()
        };
        let observation = observe(&config, &reader, None);
        assert!(observation
            .findings
            .iter()
            .any(|f| matches!(f, Finding::Mount(m) if m.mountpoint == "/")));
    }

    // --- processes ----------------------------------------------------------------

    #[test]
    fn process_in_a_mutable_path_then_deleted() {
        let _live = live();
        let (_temp, dir) = temp_dir();
        let exe = dir.join("sleep");
        let child = run_copy(&exe);
        let config = RuntimeConfig {
            mutable_paths: vec![dir.display().to_string()],
            ..RuntimeConfig::default()
        };
        let bytes = baseline_bytes("", Vec::new());
        let reader = open(&bytes);

        let observation = observe(&config, &reader, None);
        let found = processes(&observation, child.pid());
        assert_eq!(found.len(), 1, "{observation:?}");
        assert_eq!(found[0].reason, ProcessReason::MutablePath);
        assert_eq!(found[0].exe, exe.display().to_string());
        assert_eq!(found[0].cmdline, format!("{} 600", exe.display()));
        // SAFETY-free: the real uid of this test process is the child's.
        let uid = fs::metadata("/proc/self").unwrap().uid();
        assert_eq!(found[0].uid, uid);
        if uid == 0 {
            assert_eq!(found[0].user.as_deref(), Some("root"));
        }
        assert_eq!(found[0].severity, Severity::Critical);

        // Captured at bake time, the same executable is accepted.
        let captured = capture(&config);
        assert!(captured.executables.contains(&found[0].exe), "{captured:?}");
        let observation = observe(&config, &reader, Some(&captured));
        assert!(processes(&observation, child.pid()).is_empty());

        fs::remove_file(&exe).unwrap();
        let observation = observe(&config, &reader, None);
        let found = processes(&observation, child.pid());
        assert_eq!(found.len(), 1, "{observation:?}");
        assert_eq!(found[0].reason, ProcessReason::DeletedExecutable);
        assert_eq!(found[0].exe, format!("{} (deleted)", exe.display()));
    }

    #[test]
    fn process_binaries_are_compared_with_the_baseline() {
        let _live = live();
        let (_temp, dir) = temp_dir();
        let sleep_hash = *blake3::hash(&fs::read(sleep_binary()).unwrap()).as_bytes();
        let same = dir.join("same");
        let differs = dir.join("differs");
        let unhashed = dir.join("unhashed");
        let missing = dir.join("missing");
        let not_a_file = dir.join("not-a-file");
        let children: Vec<Running> = [&same, &differs, &unhashed, &missing, &not_a_file]
            .into_iter()
            .map(|p| run_copy(p))
            .collect();
        let pids: Vec<i32> = children.iter().map(Running::pid).collect();
        let entries = vec![
            dir_entry(&dir),
            file_entry(&same, Some(sleep_hash)),
            file_entry(&differs, Some(*blake3::hash(b"another binary").as_bytes())),
            file_entry(&unhashed, None),
            Entry {
                file_type: FileType::Symlink,
                link_target: Some(b"same".to_vec()),
                ..file_entry(&not_a_file, None)
            },
        ];
        let reasons = |policy: &str, entries: Vec<Entry>| -> Vec<Vec<ProcessReason>> {
            let bytes = baseline_bytes(policy, entries);
            let observation = observe(&no_mutable_paths(), &open(&bytes), None);
            assert!(observation.errors.is_empty(), "{:?}", observation.errors);
            pids.iter()
                .map(|pid| {
                    processes(&observation, *pid)
                        .iter()
                        .map(|f| f.reason)
                        .collect()
                })
                .collect()
        };
        use ProcessReason::{DiffersFromBaseline, NotInBaseline};
        let scanned_here = scan_policy(&[&dir]);
        assert_eq!(
            reasons(&scanned_here, entries.clone()),
            [
                vec![],
                vec![DiffersFromBaseline],
                vec![],
                vec![NotInBaseline],
                vec![DiffersFromBaseline]
            ]
        );
        // Excluded from the baseline, or outside its scan paths: nothing to compare.
        let excluded = format!(
            "exclude = [{:?}]\n{scanned_here}",
            missing.display().to_string()
        );
        assert_eq!(reasons(&excluded, entries.clone())[3], vec![]);
        let elsewhere = scan_policy(&[Path::new("/nonexistent-scan-path")]);
        assert!(reasons(&elsewhere, Vec::new()).iter().all(Vec::is_empty));
        // The default policy scans "/", so there it is missing.
        assert_eq!(reasons("", entries)[3], vec![NotInBaseline]);
    }

    // --- listeners ----------------------------------------------------------------

    fn listener_rule(
        port: u16,
        protocol: Option<ListenerProtocol>,
        program: Option<&str>,
    ) -> ListenerRule {
        ListenerRule {
            port,
            protocol,
            program: program.map(str::to_string),
        }
    }

    #[test]
    fn tcp_listeners_rules_and_captures() {
        let _live = live();
        let listener = TcpListener::bind("0.0.0.0:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let bytes = baseline_bytes("", Vec::new());
        let reader = open(&bytes);
        let me = own_exe();
        let found = |config: &RuntimeConfig, captured: Option<&[CapturedListener]>| {
            let captured = captured.map(|listeners| CapturedRuntime {
                listeners: listeners.to_vec(),
                executables: Vec::new(),
            });
            let observation = observe(config, &reader, captured.as_ref());
            listeners(&observation, port)
                .into_iter()
                .cloned()
                .collect::<Vec<_>>()
        };

        let base = no_mutable_paths();
        let reported = found(&base, None);
        assert_eq!(
            reported,
            [ListenerFinding {
                protocol: "tcp".into(),
                address: "0.0.0.0".into(),
                port,
                pid: Some(std::process::id() as i32),
                program: Some(me.clone()),
                severity: Severity::High,
            }]
        );

        let with_rules = |rules: Vec<ListenerRule>| RuntimeConfig {
            allowed_listeners: rules,
            ..no_mutable_paths()
        };
        use ListenerProtocol::{Tcp, Udp};
        for (rules, allowed) in [
            (vec![listener_rule(port, None, None)], true),
            (vec![listener_rule(port, Some(Tcp), None)], true),
            (vec![listener_rule(port, Some(Tcp), Some(&me))], true),
            (vec![listener_rule(port, Some(Udp), None)], false),
            (
                vec![listener_rule(port, None, Some("/usr/sbin/other"))],
                false,
            ),
            (
                vec![listener_rule(port.wrapping_add(1).max(1), None, None)],
                false,
            ),
        ] {
            let got = found(&with_rules(rules.clone()), None);
            assert_eq!(got.is_empty(), allowed, "{rules:?}: {got:?}");
        }

        let captured = |protocol: &str, program: Option<&str>| {
            vec![CapturedListener {
                protocol: protocol.into(),
                address: "0.0.0.0".into(),
                port,
                program: program.map(str::to_string),
            }]
        };
        for (list, allowed) in [
            (captured("tcp", Some(&me)), true),
            (captured("tcp", None), true),
            (captured("tcp", Some("/usr/sbin/other")), false),
            (captured("tcp6", Some(&me)), false),
        ] {
            let got = found(&base, Some(&list));
            assert_eq!(got.is_empty(), allowed, "{list:?}: {got:?}");
        }

        // Loopback only: not reported unless asked.
        let loopback = TcpListener::bind("127.0.0.1:0").unwrap();
        let loopback_port = loopback.local_addr().unwrap().port();
        let observation = observe(&base, &reader, None);
        assert!(listeners(&observation, loopback_port).is_empty());
        let strict = RuntimeConfig {
            allow_loopback_listeners: false,
            ..no_mutable_paths()
        };
        let observation = observe(&strict, &reader, None);
        let strict_found = listeners(&observation, loopback_port);
        assert_eq!(strict_found.len(), 1, "{observation:?}");
        assert_eq!(strict_found[0].address, "127.0.0.1");
    }

    #[test]
    fn udp_and_ipv6_listeners() {
        let _live = live();
        let bytes = baseline_bytes("", Vec::new());
        let reader = open(&bytes);
        let config = no_mutable_paths();
        let udp = UdpSocket::bind("0.0.0.0:0").unwrap();
        let udp_port = udp.local_addr().unwrap().port();
        // A connected UDP socket is a client, not a listener.
        let client = UdpSocket::bind("0.0.0.0:0").unwrap();
        client.connect(udp.local_addr().unwrap()).unwrap();
        let client_port = client.local_addr().unwrap().port();
        let v6 = TcpListener::bind("[::]:0").ok();
        let v6_loopback = TcpListener::bind("[::1]:0").ok();

        let observation = observe(&config, &reader, None);
        let found = listeners(&observation, udp_port);
        assert_eq!(found.len(), 1, "{observation:?}");
        assert_eq!(
            (found[0].protocol.as_str(), found[0].address.as_str()),
            ("udp", "0.0.0.0")
        );
        assert_eq!(found[0].pid, Some(std::process::id() as i32));
        assert!(listeners(&observation, client_port).is_empty());
        match (&v6, &v6_loopback) {
            (Some(v6), Some(v6_loopback)) => {
                let found = listeners(&observation, v6.local_addr().unwrap().port());
                assert_eq!(found.len(), 1, "{observation:?}");
                assert_eq!(
                    (found[0].protocol.as_str(), found[0].address.as_str()),
                    ("tcp6", "::")
                );
                assert!(
                    listeners(&observation, v6_loopback.local_addr().unwrap().port()).is_empty()
                );
            }
            _ => eprintln!("skipping the IPv6 part: cannot bind IPv6 sockets here"),
        }
        let allowed = RuntimeConfig {
            allowed_listeners: vec![listener_rule(udp_port, Some(ListenerProtocol::Udp), None)],
            ..no_mutable_paths()
        };
        assert!(listeners(&observe(&allowed, &reader, None), udp_port).is_empty());
    }

    #[test]
    fn capture_lists_our_listeners_sorted() {
        let _live = live();
        let listener = TcpListener::bind("0.0.0.0:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let captured = capture_listeners();
        assert!(
            captured.contains(&CapturedListener {
                protocol: "tcp".into(),
                address: "0.0.0.0".into(),
                port,
                program: Some(own_exe()),
            }),
            "{captured:?}"
        );
        assert!(captured.windows(2).all(|w| w[0] < w[1]), "{captured:?}");
        // What was captured is allowed later.
        let bytes = baseline_bytes("", Vec::new());
        let captured = CapturedRuntime {
            listeners: captured,
            executables: Vec::new(),
        };
        let observation = observe(&no_mutable_paths(), &open(&bytes), Some(&captured));
        assert!(listeners(&observation, port).is_empty());
    }

    // --- this machine -------------------------------------------------------------

    /// The built-in policy's `[runtime]` against a baseline of this machine's system
    /// directories, built with the scan engine. Prints what it sees; fails on what
    /// would be false positives: processes from scanned paths that do not match, or
    /// processes from unscanned paths (/work, ~/.cargo) called "not in baseline".
    #[test]
    fn builtin_policy_on_this_machine() {
        use crate::source::files::{scan, ScanItem, ScanOptions};
        use std::sync::atomic::AtomicBool;
        let _live = live();
        let policy_text =
            "[scan]\npaths = [\"/usr\", \"/bin\", \"/sbin\", \"/lib\", \"/opt\", \"/etc\"]\n";
        let policy = Policy::parse(policy_text).unwrap();
        let timer = Instant::now();
        let mut writer = BaselineWriter::new(Vec::new(), &meta(policy_text)).unwrap();
        let options = ScanOptions::default();
        scan(
            Path::new("/"),
            &policy,
            &options,
            &AtomicBool::new(false),
            |item| match item {
                ScanItem::Observed { entry, .. } => writer.push(&entry),
                ScanItem::Unreadable { .. } => Ok(()),
            },
        )
        .unwrap();
        let (bytes, sealed) = writer.finish(None).unwrap();
        eprintln!(
            "baseline of this machine: {} entries, {} bytes, built in {:?}",
            sealed.entry_count,
            bytes.len(),
            timer.elapsed()
        );
        let reader = open(&bytes);
        // A process from /usr that must match.
        let from_usr = run(&sleep_binary());

        let config = Policy::builtin().unwrap().config().runtime.clone();
        let timer = Instant::now();
        let observation = observe(&config, &reader, reader.meta().runtime.as_ref());
        let took = timer.elapsed();
        eprintln!("observe() took {took:?}");
        for finding in &observation.findings {
            eprintln!("finding: {}", serde_json::to_string(finding).unwrap());
        }
        eprintln!("errors: {:?}", observation.errors);
        eprintln!("skipped: {:?}", observation.skipped);

        assert!(observation.errors.is_empty(), "{:?}", observation.errors);
        assert!(processes(&observation, from_usr.pid()).is_empty());
        let false_positives: Vec<&Finding> = observation
            .findings
            .iter()
            .filter(|f| {
                matches!(f, Finding::Process(p) if matches!(
                    p.reason,
                    ProcessReason::NotInBaseline | ProcessReason::DiffersFromBaseline
                ))
            })
            .collect();
        assert!(false_positives.is_empty(), "{false_positives:?}");
        assert!(!observation
            .findings
            .iter()
            .any(|f| matches!(f, Finding::Mount(_))));
    }
}
