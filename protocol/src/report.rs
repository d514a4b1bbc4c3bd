//! The `driftwatch.report/v1` document (contract, DESIGN.md §4).
//!
//! `driftwatch check --format json` prints exactly one [`Report`]; the collector ingests
//! the same findings. Field names and value spellings here are a contract with users'
//! scripts: change them only with a new schema version.

use crate::entry::{Entry, FileType, Timestamp};
use crate::path;
use base64::Engine;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The schema name carried in every report.
pub const REPORT_SCHEMA: &str = "driftwatch.report/v1";

/// How serious a finding is, from `low` to `critical`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth knowing.
    Low,
    /// Unexpected; look at it.
    Medium,
    /// A real deviation from the image.
    High,
    /// Security-relevant: binaries, libraries, setuid bits, capabilities, auth config.
    Critical,
}

impl Severity {
    /// Every severity, most severe first (the order of a human report).
    pub const ALL_DESCENDING: [Severity; 4] = [
        Severity::Critical,
        Severity::High,
        Severity::Medium,
        Severity::Low,
    ];

    /// The lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

/// What can differ about a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Attribute {
    /// File, directory, symlink, …
    Type,
    /// Permission bits, including setuid/setgid/sticky.
    Mode,
    /// Owner.
    Uid,
    /// Group.
    Gid,
    /// Size in bytes (not compared for directories, whose size is a filesystem detail).
    Size,
    /// Content hashes.
    Content,
    /// A symlink's target.
    LinkTarget,
    /// Security-relevant extended attributes (capabilities, SELinux label, IMA, ACLs).
    Xattrs,
    /// A device's number.
    Rdev,
    /// Modification time (not compared for directories).
    Mtime,
}

impl Attribute {
    /// Every attribute, in report order.
    pub const ALL: [Attribute; 10] = [
        Attribute::Type,
        Attribute::Mode,
        Attribute::Uid,
        Attribute::Gid,
        Attribute::Size,
        Attribute::Content,
        Attribute::LinkTarget,
        Attribute::Xattrs,
        Attribute::Rdev,
        Attribute::Mtime,
    ];

    /// The snake_case name.
    pub fn name(self) -> &'static str {
        match self {
            Attribute::Type => "type",
            Attribute::Mode => "mode",
            Attribute::Uid => "uid",
            Attribute::Gid => "gid",
            Attribute::Size => "size",
            Attribute::Content => "content",
            Attribute::LinkTarget => "link_target",
            Attribute::Xattrs => "xattrs",
            Attribute::Rdev => "rdev",
            Attribute::Mtime => "mtime",
        }
    }
}

/// One complete report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Always [`REPORT_SCHEMA`].
    pub schema: String,
    /// The host that was checked.
    pub host: HostInfo,
    /// The baseline it was checked against.
    pub baseline: BaselineInfo,
    /// What the scan did.
    pub scan: ScanInfo,
    /// Counts by severity.
    pub summary: Summary,
    /// Every deviation, in path order within each kind.
    pub findings: Vec<Finding>,
    /// What could not be examined (unreadable files and directories).
    pub errors: Vec<ScanError>,
}

/// The checked host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostInfo {
    /// The kernel's hostname.
    pub hostname: String,
    /// `/etc/machine-id` inside the root, when present.
    pub machine_id: Option<String>,
}

/// The baseline a report refers to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaselineInfo {
    /// `blake3:<hex>`.
    pub digest: String,
    /// The image id recorded at bake time.
    pub image_id: Option<String>,
    /// Whether the baseline carries a valid signature.
    pub signed: bool,
}

/// What the scan covered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanInfo {
    /// The root directory scanned (absolute, symlinks resolved).
    pub root: String,
    /// RFC 3339 start time.
    pub started_at: String,
    /// Wall-clock duration.
    pub duration_ms: u64,
    /// Entries examined.
    pub entries: u64,
    /// Bytes read for hashing.
    pub bytes_hashed: u64,
}

/// Finding counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// All findings.
    pub findings: u64,
    /// Critical findings.
    pub critical: u64,
    /// High findings.
    pub high: u64,
    /// Medium findings.
    pub medium: u64,
    /// Low findings.
    pub low: u64,
}

impl Summary {
    /// Counts the findings by severity.
    pub fn of(findings: &[Finding]) -> Summary {
        let mut summary = Summary::default();
        for finding in findings {
            summary.findings += 1;
            match finding.severity() {
                Severity::Critical => summary.critical += 1,
                Severity::High => summary.high += 1,
                Severity::Medium => summary.medium += 1,
                Severity::Low => summary.low += 1,
            }
        }
        summary
    }
}

/// One deviation from the baseline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Finding {
    /// A file, directory, link or special file differs, appeared or disappeared.
    /// Boxed: with both entry states it is several times larger than the others.
    File(Box<FileFinding>),
    /// A package was installed, removed or changed version.
    Package(PackageFinding),
    /// The package manager's own record says a packaged file differs from what its
    /// package shipped (a second opinion that also covers paths the policy excludes).
    PackageFile(PackageFileFinding),
    /// A running process the image does not explain.
    Process(ProcessFinding),
    /// A loaded kernel module the image does not ship, or a kernel taint.
    KernelModule(KernelModuleFinding),
    /// A listening socket the policy does not allow.
    Listener(ListenerFinding),
    /// A mount whose options differ from the policy's expectations.
    Mount(MountFinding),
    /// The baseline itself failed verification (digest or signature): the host cannot
    /// be judged against its image and is in doubt itself.
    Baseline(BaselineFinding),
}

impl Finding {
    /// A stable identity: the same drift seen again (by the daemon after a restart, or
    /// by the collector in a retried batch) has the same key.
    pub fn key(&self) -> String {
        match self {
            Finding::File(f) => format!("file:{}", f.path_bytes_b64.as_deref().unwrap_or(&f.path)),
            Finding::Package(p) => format!("package:{}:{}", p.name, p.arch),
            Finding::PackageFile(p) => format!("package_file:{}:{}", p.package, p.path),
            Finding::Process(p) => format!("process:{:?}:{}", p.reason, p.exe),
            Finding::KernelModule(m) => format!("kernel_module:{}", m.name),
            Finding::Listener(l) => format!("listener:{}:{}:{}", l.protocol, l.address, l.port),
            Finding::Mount(m) => format!("mount:{}", m.mountpoint),
            Finding::Baseline(b) => format!("baseline:{}", b.path),
        }
    }

    /// The `kind` tag as it appears in JSON (`file`, `package`, …).
    pub fn kind_name(&self) -> &'static str {
        match self {
            Finding::File(_) => "file",
            Finding::Package(_) => "package",
            Finding::PackageFile(_) => "package_file",
            Finding::Process(_) => "process",
            Finding::KernelModule(_) => "kernel_module",
            Finding::Listener(_) => "listener",
            Finding::Mount(_) => "mount",
            Finding::Baseline(_) => "baseline",
        }
    }

    /// What the finding is about, as a path where there is one (file, packaged file,
    /// process executable, mountpoint, baseline file) and a name otherwise (package,
    /// kernel module, `proto:address:port` for a listener). Replacement rules match
    /// their path globs against it.
    pub fn subject(&self) -> String {
        match self {
            Finding::File(f) => f.path.clone(),
            Finding::Package(p) => p.name.clone(),
            Finding::PackageFile(p) => p.path.clone(),
            Finding::Process(p) => p.exe.clone(),
            Finding::KernelModule(m) => m.name.clone(),
            Finding::Listener(l) => format!("{}:{}:{}", l.protocol, l.address, l.port),
            Finding::Mount(m) => m.mountpoint.clone(),
            Finding::Baseline(b) => b.path.clone(),
        }
    }

    /// The finding's severity.
    pub fn severity(&self) -> Severity {
        match self {
            Finding::File(f) => f.severity,
            Finding::Package(f) => f.severity,
            Finding::PackageFile(f) => f.severity,
            Finding::Process(f) => f.severity,
            Finding::KernelModule(f) => f.severity,
            Finding::Listener(f) => f.severity,
            Finding::Mount(f) => f.severity,
            Finding::Baseline(f) => f.severity,
        }
    }
}

/// How a package changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PackageChange {
    /// Installed now, absent from the baseline.
    Installed,
    /// In the baseline, not installed now.
    Removed,
    /// Installed in both, at different versions.
    VersionChanged,
}

/// A package finding.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PackageFinding {
    /// Installed, removed or version changed.
    pub change: PackageChange,
    /// Package name.
    pub name: String,
    /// Architecture.
    pub arch: String,
    /// The database (`dpkg`, `rpm`, `apk`).
    pub db: crate::package::PackageDb,
    /// Version in the baseline.
    pub baseline_version: Option<String>,
    /// Version installed now.
    pub observed_version: Option<String>,
    /// How serious it is (policy `[packages] severity`, default `high`).
    pub severity: Severity,
}

/// A packaged file that no longer matches its package's record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PackageFileFinding {
    /// The file, readable.
    pub path: String,
    /// Exact path bytes (base64), only when the path is not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_bytes_b64: Option<String>,
    /// The package that ships it.
    pub package: String,
    /// The database that recorded it.
    pub db: crate::package::PackageDb,
    /// The digest the database records, `algorithm:hex` (e.g. `md5:…`, `sha256:…`).
    pub expected: String,
    /// The digest of the file now, or `None` when the file is missing.
    pub observed: Option<String>,
    /// True for a configuration file the package manager expects to be edited (dpkg
    /// conffile, rpm `%config`).
    #[serde(default)]
    pub config: bool,
    /// How serious it is.
    pub severity: Severity,
}

/// A baseline that failed verification.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BaselineFinding {
    /// The baseline file.
    pub path: String,
    /// What failed, e.g. `its digest does not match its content`.
    pub error: String,
    /// Always critical.
    pub severity: Severity,
}

/// Why a process is reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessReason {
    /// Its executable is not in the baseline.
    NotInBaseline,
    /// Its executable differs from the baseline's.
    DiffersFromBaseline,
    /// Its executable was deleted after it started.
    DeletedExecutable,
    /// It runs from a writable, mutable location (/tmp, /dev/shm, /var/tmp).
    MutablePath,
}

/// A process finding.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProcessFinding {
    /// Why it is reported.
    pub reason: ProcessReason,
    /// Process id.
    pub pid: i32,
    /// Executable path as the kernel reports it.
    pub exe: String,
    /// Command line, arguments joined by spaces.
    pub cmdline: String,
    /// Real user id.
    pub uid: u32,
    /// User name, when it resolves.
    pub user: Option<String>,
    /// How serious it is.
    pub severity: Severity,
}

/// Why a kernel module is reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KernelModuleReason {
    /// No matching `.ko` in the baseline under `/lib/modules/$(uname -r)`.
    NotInImage,
    /// Out-of-tree or unsigned (taint flags `O` or `E`).
    Tainted,
}

/// A kernel module finding.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KernelModuleFinding {
    /// Why it is reported.
    pub reason: KernelModuleReason,
    /// Module name.
    pub name: String,
    /// The module's taint flags, when any.
    pub taint: Option<String>,
    /// How serious it is.
    pub severity: Severity,
}

/// A listener finding.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ListenerFinding {
    /// `tcp`, `tcp6`, `udp` or `udp6`.
    pub protocol: String,
    /// Local address.
    pub address: String,
    /// Local port.
    pub port: u16,
    /// The owning process, when known.
    pub pid: Option<i32>,
    /// The owning process's executable, when known.
    pub program: Option<String>,
    /// How serious it is.
    pub severity: Severity,
}

/// A mount finding.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MountFinding {
    /// Mount point.
    pub mountpoint: String,
    /// Options the policy expects (e.g. `ro`, `noexec`).
    pub expected: Vec<String>,
    /// The mount's options now (empty when the mount is missing).
    pub observed: Vec<String>,
    /// How serious it is.
    pub severity: Severity,
}

/// How a file changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileChange {
    /// Present now, absent from the baseline.
    Added,
    /// In the baseline, absent now.
    Removed,
    /// Present in both, with different attributes.
    Modified,
}

/// A file finding.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FileFinding {
    /// Added, removed or modified.
    pub change: FileChange,
    /// The path, readable: bytes that are not UTF-8 appear as `\xNN`.
    pub path: String,
    /// The exact path bytes (standard base64), present only when the path is not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_bytes_b64: Option<String>,
    /// What differs (empty for added and removed).
    pub attributes: Vec<Attribute>,
    /// How serious it is.
    pub severity: Severity,
    /// The policy rule that graded it (`default` when no rule covers the path).
    #[serde(default)]
    pub rule: String,
    /// The entry as baked.
    pub baseline: Option<EntryState>,
    /// The entry as found.
    pub observed: Option<EntryState>,
    /// The package change that explains it: the path belongs to a package that was
    /// installed or changed version itself (absent when no package explains it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package: Option<PackageRef>,
}

/// The package a file finding belongs to, and how that package changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageRef {
    /// Package name.
    pub name: String,
    /// Architecture (empty when the database has none).
    pub arch: String,
    /// Installed or version changed.
    pub change: PackageChange,
    /// Version in the baseline (`None` for a package installed since).
    pub baseline_version: Option<String>,
    /// Version installed now.
    pub observed_version: Option<String>,
}

impl PackageRef {
    /// The package change as people read it: `installed podman 4.3.1`, `upgraded curl
    /// 7.88.1-10 → 7.88.1-10+deb12u5`, `removed foo 1.0`.
    pub fn describe(&self) -> String {
        let version = |v: &Option<String>| v.clone().unwrap_or_else(|| "?".to_string());
        match self.change {
            PackageChange::Installed => {
                format!(
                    "installed {} {}",
                    self.name,
                    version(&self.observed_version)
                )
            }
            PackageChange::Removed => {
                format!("removed {} {}", self.name, version(&self.baseline_version))
            }
            PackageChange::VersionChanged => format!(
                "upgraded {} {} → {}",
                self.name,
                version(&self.baseline_version),
                version(&self.observed_version)
            ),
        }
    }
}

impl From<&PackageFinding> for PackageRef {
    fn from(finding: &PackageFinding) -> Self {
        PackageRef {
            name: finding.name.clone(),
            arch: finding.arch.clone(),
            change: finding.change,
            baseline_version: finding.baseline_version.clone(),
            observed_version: finding.observed_version.clone(),
        }
    }
}

/// A path as it appears in reports: readable text plus, when needed, the exact bytes.
pub fn report_path(raw: &[u8]) -> (String, Option<String>) {
    let text = path::display(raw);
    let exact =
        (!path::is_utf8(raw)).then(|| base64::engine::general_purpose::STANDARD.encode(raw));
    (text, exact)
}

/// An entry's attributes as shown in reports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryState {
    /// `file`, `dir`, `symlink`, `fifo`, `socket`, `char_device`, `block_device`.
    #[serde(rename = "type")]
    pub file_type: String,
    /// Octal permission bits, e.g. `4755`.
    pub mode: String,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, RFC 3339 with nanoseconds.
    pub mtime: String,
    /// Device number (`major:minor`) for devices.
    pub rdev: Option<String>,
    /// BLAKE3 hex, when hashed.
    pub blake3: Option<String>,
    /// SHA-256 hex, when hashed.
    pub sha256: Option<String>,
    /// A symlink's target.
    pub link_target: Option<String>,
    /// Security-relevant extended attributes, decoded where their format is known
    /// (`security.capability` as `cap_net_raw+ep`, ACLs as `u::rwx,…`), else base64.
    pub xattrs: BTreeMap<String, String>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Formats a timestamp as RFC 3339 in UTC with nanoseconds.
pub fn format_timestamp(ts: Timestamp) -> String {
    let nanos = ts.nanos.min(999_999_999);
    match u64::try_from(ts.secs) {
        Ok(secs) => {
            let time = std::time::UNIX_EPOCH + std::time::Duration::new(secs, nanos);
            humantime::format_rfc3339_nanos(time).to_string()
        }
        Err(_) => format!("{}s{:09}ns since epoch", ts.secs, nanos),
    }
}

impl EntryState {
    /// The report form of a recorded entry.
    pub fn of(entry: &Entry) -> EntryState {
        let is_device = matches!(
            entry.file_type,
            FileType::CharDevice | FileType::BlockDevice
        );
        EntryState {
            file_type: entry.file_type.name().to_string(),
            mode: format!("{:04o}", entry.mode),
            uid: entry.uid,
            gid: entry.gid,
            size: entry.size,
            mtime: format_timestamp(entry.mtime),
            rdev: is_device.then(|| {
                let (major, minor) = split_dev(entry.rdev);
                format!("{major}:{minor}")
            }),
            blake3: entry.blake3.map(|h| hex(&h)),
            sha256: entry.sha256.map(|h| hex(&h)),
            link_target: entry.link_target.as_deref().map(path::display),
            xattrs: entry
                .xattrs
                .iter()
                .map(|(name, value)| (path::display(name), xattr_text(name, value)))
                .collect(),
        }
    }
}

/// Splits a Linux `dev_t` into major and minor numbers (glibc's encoding).
pub fn split_dev(dev: u64) -> (u64, u64) {
    let major = ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0x0000_0fff);
    let minor = ((dev >> 12) & 0xffff_ff00) | (dev & 0x0000_00ff);
    (major, minor)
}

/// Renders an extended attribute's value for people.
pub fn xattr_text(name: &[u8], value: &[u8]) -> String {
    let decoded = match name {
        b"security.capability" => decode_capability(value),
        b"system.posix_acl_access" | b"system.posix_acl_default" => decode_acl(value),
        b"security.selinux" => std::str::from_utf8(value.strip_suffix(b"\0").unwrap_or(value))
            .ok()
            .map(str::to_string),
        _ => None,
    };
    decoded.unwrap_or_else(|| {
        format!(
            "base64:{}",
            base64::engine::general_purpose::STANDARD.encode(value)
        )
    })
}

const CAPABILITY_NAMES: [&str; 41] = [
    "chown",
    "dac_override",
    "dac_read_search",
    "fowner",
    "fsetid",
    "kill",
    "setgid",
    "setuid",
    "setpcap",
    "linux_immutable",
    "net_bind_service",
    "net_broadcast",
    "net_admin",
    "net_raw",
    "ipc_lock",
    "ipc_owner",
    "sys_module",
    "sys_rawio",
    "sys_chroot",
    "sys_ptrace",
    "sys_pacct",
    "sys_admin",
    "sys_boot",
    "sys_nice",
    "sys_resource",
    "sys_time",
    "sys_tty_config",
    "mknod",
    "lease",
    "audit_write",
    "audit_control",
    "setfcap",
    "mac_override",
    "mac_admin",
    "syslog",
    "wake_alarm",
    "block_suspend",
    "audit_read",
    "perfmon",
    "bpf",
    "checkpoint_restore",
];

fn u32_le(bytes: &[u8], at: usize) -> Option<u32> {
    let raw = bytes.get(at..at + 4)?;
    Some(u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]))
}

fn cap_list(low: u32, high: u32) -> String {
    let bits = u64::from(low) | (u64::from(high) << 32);
    (0..64)
        .filter(|bit| bits & (1 << bit) != 0)
        .map(|bit| match CAPABILITY_NAMES.get(bit) {
            Some(name) => format!("cap_{name}"),
            None => format!("cap_{bit}"),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Decodes `vfs_cap_data` (revisions 1–3) into getcap's notation.
fn decode_capability(value: &[u8]) -> Option<String> {
    let magic = u32_le(value, 0)?;
    let effective = magic & 1 != 0;
    let (words, expected_len) = match magic & 0xff00_0000 {
        0x0100_0000 => (1, 12),
        0x0200_0000 => (2, 20),
        0x0300_0000 => (2, 24),
        _ => return None,
    };
    if value.len() != expected_len {
        return None;
    }
    let word = |i: usize| u32_le(value, 4 + i * 4).unwrap_or(0);
    let (permitted, inheritable) = if words == 1 {
        (cap_list(word(0), 0), cap_list(word(1), 0))
    } else {
        (cap_list(word(0), word(2)), cap_list(word(1), word(3)))
    };
    let mut parts = Vec::new();
    if !permitted.is_empty() {
        parts.push(format!(
            "{permitted}+{}",
            if effective { "ep" } else { "p" }
        ));
    }
    if !inheritable.is_empty() {
        parts.push(format!("{inheritable}+i"));
    }
    if magic & 0xff00_0000 == 0x0300_0000 {
        parts.push(format!("[rootid={}]", u32_le(value, 20)?));
    }
    Some(parts.join(" "))
}

/// Decodes a POSIX ACL xattr (version 2) into `getfacl -c`-like short text.
fn decode_acl(value: &[u8]) -> Option<String> {
    if u32_le(value, 0)? != 2 || !(value.len() - 4).is_multiple_of(8) {
        return None;
    }
    let mut parts = Vec::new();
    for entry in value[4..].chunks_exact(8) {
        let tag = u16::from_le_bytes([entry[0], entry[1]]);
        let perm = u16::from_le_bytes([entry[2], entry[3]]);
        let id = u32::from_le_bytes([entry[4], entry[5], entry[6], entry[7]]);
        let rwx = format!(
            "{}{}{}",
            if perm & 4 != 0 { 'r' } else { '-' },
            if perm & 2 != 0 { 'w' } else { '-' },
            if perm & 1 != 0 { 'x' } else { '-' }
        );
        parts.push(match tag {
            0x01 => format!("u::{rwx}"),
            0x02 => format!("u:{id}:{rwx}"),
            0x04 => format!("g::{rwx}"),
            0x08 => format!("g:{id}:{rwx}"),
            0x10 => format!("m::{rwx}"),
            0x20 => format!("o::{rwx}"),
            _ => return None,
        });
    }
    Some(parts.join(","))
}

/// Something that could not be examined.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanError {
    /// The path, readable.
    pub path: String,
    /// The exact path bytes (base64), only when the path is not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_bytes_b64: Option<String>,
    /// What went wrong, e.g. `permission denied`.
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_decodes_like_getcap() {
        // setcap cap_net_raw+ep: revision 2, effective, permitted bit 13.
        let mut raw = vec![0x01, 0, 0, 0x02];
        raw.extend_from_slice(&(1u32 << 13).to_le_bytes());
        raw.extend_from_slice(&[0; 12]);
        assert_eq!(xattr_text(b"security.capability", &raw), "cap_net_raw+ep");
    }

    #[test]
    fn acl_and_unknown_values() {
        let mut acl = 2u32.to_le_bytes().to_vec();
        for (tag, perm, id) in [(1u16, 7u16, u32::MAX), (2, 5, 1000), (0x20, 4, u32::MAX)] {
            acl.extend_from_slice(&tag.to_le_bytes());
            acl.extend_from_slice(&perm.to_le_bytes());
            acl.extend_from_slice(&id.to_le_bytes());
        }
        assert_eq!(
            xattr_text(b"system.posix_acl_access", &acl),
            "u::rwx,u:1000:r-x,o::r--"
        );
        assert_eq!(xattr_text(b"trusted.x", b"\x00\xff"), "base64:AP8=");
        assert_eq!(xattr_text(b"security.capability", b"\x01"), "base64:AQ==");
    }

    #[test]
    fn timestamps_and_devices() {
        let ts = Timestamp {
            secs: 1_700_000_000,
            nanos: 5,
        };
        assert_eq!(format_timestamp(ts), "2023-11-14T22:13:20.000000005Z");
        assert_eq!(split_dev(0x0103), (1, 3));
    }

    #[test]
    fn finding_json_matches_contract() {
        let finding = Finding::File(Box::new(FileFinding {
            change: FileChange::Modified,
            path: "/usr/bin/ssh".into(),
            path_bytes_b64: None,
            attributes: vec![Attribute::Content, Attribute::LinkTarget],
            severity: Severity::Critical,
            rule: "default".into(),
            baseline: None,
            observed: None,
            package: None,
        }));
        let json = serde_json::to_value(&finding).unwrap();
        assert!(
            json.get("package").is_none(),
            "additive: absent when unexplained"
        );
        let mut attributed = finding.clone();
        if let Finding::File(file) = &mut attributed {
            file.package = Some(PackageRef {
                name: "podman".into(),
                arch: "amd64".into(),
                change: PackageChange::Installed,
                baseline_version: None,
                observed_version: Some("4.3.1".into()),
            });
        }
        let with = serde_json::to_value(&attributed).unwrap();
        assert_eq!(with["package"]["name"], "podman");
        assert_eq!(with["package"]["change"], "installed");
        assert_eq!(with["package"]["observed_version"], "4.3.1");
        // Reports written before the field existed still parse.
        let old: Finding = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(old, finding);
        assert_eq!(json["kind"], "file");
        assert_eq!(json["change"], "modified");
        assert_eq!(json["attributes"][1], "link_target");
        assert_eq!(json["severity"], "critical");
        assert!(json.get("path_bytes_b64").is_none());
        let (text, exact) = report_path(b"/x\xff");
        assert_eq!((text.as_str(), exact.as_deref()), ("/x\\xff", Some("L3j/")));
    }
}
