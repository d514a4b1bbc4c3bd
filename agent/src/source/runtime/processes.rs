//! Processes: deleted or memory-backed executables, binaries in mutable paths, and
//! binaries the baseline does not record or records differently.

use super::scope::Scope;
use super::{expected_io, expected_proc, RuntimeObservation};
use crate::policy::runtime::RuntimeConfig;
use driftwatch_protocol::baseline::{BaselineReader, ReadAt};
use driftwatch_protocol::entry::FileType;
use driftwatch_protocol::path as dwpath;
use driftwatch_protocol::report::{ProcessFinding, ProcessReason};
use procfs::ProcError;
use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::MetadataExt;

/// `PF_KTHREAD` in `/proc/PID/stat` flags: the task is a kernel thread.
const PF_KTHREAD: u32 = 0x0020_0000;
/// What the kernel appends to `/proc/PID/exe` when the file was unlinked.
pub(super) const DELETED_SUFFIX: &[u8] = b" (deleted)";
/// Command lines are cut here (in characters) so one process cannot bloat a report.
const MAX_CMDLINE_CHARS: usize = 256;

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

pub(super) fn observe<R: ReadAt>(
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
            "processes: {} in containers (another mount namespace and root) judged in their own \
             root for deleted executables and mutable paths only: their executables are not \
             paths of this image",
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

/// The path a process in a container names its executable by: below its own root.
/// Where the container's root is reachable from ours (`/proc/PID/root` links to, say,
/// `/var/lib/machines/web`), the kernel shows the executable from our root and the
/// root's part is taken off; otherwise it already shows it from the container's root.
fn within_own_root(pid: i32, exe: &[u8]) -> Vec<u8> {
    let Ok(root) = fs::read_link(format!("/proc/{pid}/root")) else {
        return exe.to_vec();
    };
    let root = root.into_os_string().into_vec();
    match exe.strip_prefix(root.as_slice()) {
        Some(rest) if root != b"/" && rest.starts_with(b"/") => rest.to_vec(),
        _ => exe.to_vec(),
    }
}

/// The executables of running processes that no baseline could explain, sorted and
/// without duplicates (see [`CapturedRuntime`]); a container's as it names them in its
/// own root. Kernel threads and unreadable processes are left out, as [`observe`]
/// leaves them out.
pub(super) fn capture(config: &RuntimeConfig) -> Vec<String> {
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
        .filter_map(|process| {
            let mut exe = process.exe().ok()?.into_os_string().into_vec();
            if FileView::of(&process.pid().to_string()).is_container_from(own_view) {
                exe = within_own_root(process.pid(), &exe);
            }
            let meta = fs::metadata(format!("/proc/{}/exe", process.pid())).ok();
            unexplainable(config, &exe, meta.as_ref()).map(|_| dwpath::display(&exe))
        })
        .collect();
    executables.sort();
    executables.dedup();
    executables
}

impl<R: ReadAt> ProcessScan<'_, R> {
    /// Decides whether one process is reported, and why; `Ok(None)` for a process the
    /// image explains or one this source does not judge (kernel threads).
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
        // Following the magic link stats the very file the process runs.
        let meta = fs::metadata(format!("/proc/{pid}/exe")).ok();
        // A process in a container names its executable in its own root, which this
        // baseline does not describe: judged there, for what no image could explain.
        if FileView::of(&pid.to_string()).is_container_from(self.own_view) {
            self.other_namespaces += 1;
            let exe = within_own_root(pid, &exe);
            return Ok(unexplainable(self.config, &exe, meta.as_ref()).map(|r| (r, exe)));
        }
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
        let file = process.open_relative("exe")?;
        let key = match key {
            Some(key) => key,
            None => {
                let meta = file.metadata().map_err(|e| ProcError::Io(e, None))?;
                (meta.dev(), meta.ino())
            }
        };
        let hash = match hash_executable(&file) {
            Ok(hash) => hash,
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
pub(crate) fn format_cmdline(raw: &[u8]) -> String {
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

/// BLAKE3 of an open executable through the one hashing path (bounded by the default
/// size limit: an executable is never that large, a planted sparse one may be); `None`
/// when it was too large or changed while being read.
fn hash_executable(file: &fs::File) -> std::io::Result<Option<[u8; 32]>> {
    use crate::source::hashing::{self, Algorithm, HashError, Hasher, Limits, Pacer};
    static NEVER: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let meta = file.metadata()?;
    let pacer = Pacer::new(0);
    let limits = Limits {
        max_bytes: crate::policy::DEFAULT_MAX_FILE_BYTES,
        pacer: &pacer,
        cancel: &NEVER,
    };
    let mut hashers = [Hasher::new(Algorithm::Blake3)];
    match hashing::hash_file(file, &meta, &mut hashers, &mut vec![0; 128 * 1024], &limits) {
        Ok(_) => {
            let [hasher] = hashers;
            Ok(Some(hashing::digest32(&hasher.finish().1)))
        }
        Err(HashError::Io(err)) => Err(err),
        Err(_) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::runtime::RuntimeConfig;

    use driftwatch_protocol::entry::FileType;
    use driftwatch_protocol::report::{ProcessReason, Severity};

    use driftwatch_protocol::Entry;
    use std::fs;

    use crate::source::runtime::observe;
    use crate::source::runtime::test_support::*;
    use std::os::unix::fs::MetadataExt;
    use std::path::Path;
    use std::process::Command;
    use std::time::{Duration, Instant};

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

    /// A container without a container engine: a private mount namespace chrooted
    /// into a root holding a static busybox, the way nspawn and podman start one.
    #[test]
    fn a_process_in_a_container_is_judged_in_its_own_root() {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true");
        let skip = |why: &str| {
            assert!(!ci, "CI=true, but {why}");
            eprintln!("skipping: {why}");
        };
        if !Path::new("/bin/busybox").is_file() {
            return skip("/bin/busybox (busybox-static) is not installed");
        }
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return skip("unshare --mount and chroot need root");
        }
        let _live = live();
        let (_temp, root) = temp_dir();
        fs::create_dir_all(root.join("bin")).unwrap();
        fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
        let child = Running(
            Command::new("unshare")
                .args(["--mount", "--propagation", "private", "chroot"])
                .arg(&root)
                .args(["/bin/busybox", "sleep", "600"])
                .spawn()
                .unwrap(),
        );
        // unshare and chroot exec into busybox: wait until the pid runs it.
        let started = Instant::now();
        while fs::read_link(format!("/proc/{}/exe", child.pid()))
            .map_or(true, |exe| !exe.ends_with("bin/busybox"))
        {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "the container did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let bytes = baseline_bytes("", Vec::new());
        let reader = open(&bytes);
        let config = RuntimeConfig::default();
        // Seen from here its binary lies below /tmp, a mutable path; in its own root it
        // is /bin/busybox, which this image knows nothing about: not reported.
        let observation = observe(&config, &reader, None);
        assert!(
            processes(&observation, child.pid()).is_empty(),
            "{observation:?}"
        );
        assert!(
            observation
                .skipped
                .iter()
                .any(|s| s.contains("in containers")),
            "{:?}",
            observation.skipped
        );
        // Its binary deleted under it: drift in any root, reported with its own path.
        fs::remove_file(root.join("bin/busybox")).unwrap();
        let observation = observe(&config, &reader, None);
        let found = processes(&observation, child.pid());
        assert_eq!(found.len(), 1, "{observation:?}");
        assert_eq!(found[0].reason, ProcessReason::DeletedExecutable);
        assert_eq!(found[0].exe, "/bin/busybox (deleted)");
    }

    #[test]
    fn a_process_in_a_private_mount_namespace_is_still_examined() {
        // What every hardened systemd service looks like (and the daemon itself).
        let Ok(mut child) = Command::new("unshare")
            .args(["--mount", "sleep", "10"])
            .spawn()
        else {
            // .ci/run has util-linux and runs as root: there a skip would hide the test.
            assert_ne!(
                std::env::var("CI").as_deref(),
                Ok("true"),
                "unshare is not available under CI"
            );
            eprintln!("skipping: unshare is not available");
            return;
        };
        std::thread::sleep(Duration::from_millis(200));
        let view = FileView::of(&child.id().to_string());
        let _ = child.kill();
        let _ = child.wait();
        if view.mount_namespace == FileView::of("self").mount_namespace {
            // .ci/run has util-linux and runs as root: there a skip would hide the test.
            assert_ne!(
                std::env::var("CI").as_deref(),
                Ok("true"),
                "unshare --mount needs root under CI"
            );
            eprintln!("skipping: unshare --mount needs root");
            return;
        }
        assert!(!view.is_container_from(FileView::of("self")));
    }

    // --- small pure helpers -------------------------------------------------------

    #[test]
    fn cmdline_and_passwd_helpers() {
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
        let captured = crate::source::runtime::capture(&config);
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
}
