//! dpkg (Debian, Ubuntu): the package set from `var/lib/dpkg/status`, and the files the
//! packages shipped from `var/lib/dpkg/info/*.md5sums` and the status file's conffile
//! records.
//!
//! dpkg's files are read directly rather than through `dpkg-query`: the root may be an
//! image mounted somewhere (its dpkg is not runnable here, or is another version), and a
//! host under suspicion should not be asked to describe itself through its own binaries.
//!
//! The status file is deb822: stanzas separated by blank lines, `Field: value` lines,
//! continuation lines starting with a space or tab. Only the fields driftwatch needs are
//! kept; the rest (descriptions, maintainers — in old packages not even UTF-8) are
//! skipped unread. Parsing is one pass over a byte buffer with a cap on the file and on
//! each field, so a hostile status file costs at most a bounded read and an error naming
//! the stanza and line.
//!
//! dpkg's own records need two corrections before they can be verified:
//! - `md5sums` list files where the package ships them, but `dpkg-divert` may have moved
//!   another package's file elsewhere (`/bin/sh` → `/bin/sh.distrib`);
//!   [`packaged_files`] points such records at the diverted-to location.
//! - conffiles are not in `md5sums` (dh_md5sums leaves them out); their digests live in
//!   the status file's `Conffiles` field, and admins are expected to edit them, so they
//!   are marked `config`.

use super::{
    db_file, read_db_file, read_optional_db_file, DigestAlgorithm, PackageDbError, PackagedFile,
    MAX_FIELD_BYTES,
};
use driftwatch_protocol::package::Package;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// The status file, relative to the root.
const STATUS: &str = "var/lib/dpkg/status";
/// Per-package control files (`<name>[:<arch>].md5sums`), relative to the root.
const INFO_DIR: &str = "var/lib/dpkg/info";
/// The diversions database, relative to the root.
const DIVERSIONS: &str = "var/lib/dpkg/diversions";

/// True when the root has a dpkg status file.
pub fn is_present(root: &Path) -> bool {
    db_file(root, STATUS).is_ok_and(|path| path.is_file())
}

/// The installed packages of the root (`Status: … installed`), in status-file order.
///
/// Errors: the status file cannot be read, is larger than 256 MiB, or is malformed
/// (see [`parse_status`]).
pub fn read_packages(root: &Path) -> Result<Vec<Package>, PackageDbError> {
    let path = db_file(root, STATUS)?;
    let bytes = read_db_file(&path)?;
    parse_status(&bytes).map_err(|reason| PackageDbError::Malformed { path, reason })
}

/// Parses a dpkg status file into its installed packages, in file order.
///
/// A package counts when its `Status` is `<want> <flag> installed` (`install ok
/// installed`, `hold ok installed`, `deinstall ok installed` — still on disk). Every
/// other state (`config-files`, `half-installed`, `triggers-pending`, …) does not.
///
/// Errors, as a reason naming the stanza (1-based) and line: a line that is neither a
/// field, a continuation nor blank; a field over 1 MiB; a tracked field given twice; a
/// missing or malformed `Status`; an installed stanza without `Package` or `Version`, or
/// with a name, version or architecture dpkg itself would reject; those fields not in
/// UTF-8. Other fields may hold any bytes.
pub fn parse_status(bytes: &[u8]) -> Result<Vec<Package>, String> {
    Ok(installed_stanzas(bytes)?
        .into_iter()
        .map(|installed| installed.package)
        .collect())
}

/// The files the root's installed packages shipped, with their md5 digests, sorted by
/// path then package, diversions applied.
///
/// For each installed package this reads `info/<name>:<arch>.md5sums` (Multi-Arch: same
/// packages) or `info/<name>.md5sums`, either name accepted as a fallback; a package
/// without one (metapackages, or packages built without) contributes only its
/// conffiles. Conffiles come from the status file and are marked `config`; `obsolete`
/// ones and `newconffile` placeholders are left out.
///
/// Errors: an unreadable or malformed status, md5sums or diversions file, naming the
/// file and the line.
pub fn packaged_files(root: &Path) -> Result<Vec<PackagedFile>, PackageDbError> {
    let status_path = db_file(root, STATUS)?;
    let status = read_db_file(&status_path)?;
    let malformed = |path: &Path, reason: String| PackageDbError::Malformed {
        path: path.to_path_buf(),
        reason,
    };
    let installed = installed_stanzas(&status).map_err(|reason| malformed(&status_path, reason))?;

    let diversions_path = db_file(root, DIVERSIONS)?;
    let diversions = match read_optional_db_file(&diversions_path)? {
        Some(bytes) => {
            parse_diversions(&bytes).map_err(|reason| malformed(&diversions_path, reason))?
        }
        None => Vec::new(),
    };
    let diversions: HashMap<&[u8], &Diversion> = diversions
        .iter()
        .map(|diversion| (diversion.from.as_slice(), diversion))
        .collect();

    let info = db_file(root, INFO_DIR)?;
    let mut files = Vec::new();
    for package in &installed {
        let name = &package.package.name;
        let conffiles = match package.conffiles {
            Some(value) => parse_conffiles(value).map_err(|reason| {
                malformed(
                    &status_path,
                    format!("stanza {} (package {name}): {reason}", package.stanza),
                )
            })?,
            None => Vec::new(),
        };
        // dh_md5sums leaves conffiles out of md5sums, but a hand-built package may list
        // one in both: the conffile record wins, so the edit is graded as config.
        let config_paths: HashSet<&[u8]> =
            conffiles.iter().map(|(path, _)| path.as_slice()).collect();
        if let Some((md5sums_path, bytes)) = read_md5sums(&info, package)? {
            let records =
                parse_md5sums(&bytes).map_err(|reason| malformed(&md5sums_path, reason))?;
            for (path, digest) in records {
                if !config_paths.contains(path.as_slice()) {
                    files.push(PackagedFile {
                        path,
                        package: name.clone(),
                        algorithm: DigestAlgorithm::Md5,
                        digest: digest.to_vec(),
                        config: false,
                    });
                }
            }
        }
        for (path, digest) in conffiles {
            files.push(PackagedFile {
                path,
                package: name.clone(),
                algorithm: DigestAlgorithm::Md5,
                digest: digest.to_vec(),
                config: true,
            });
        }
    }

    for file in &mut files {
        if let Some(diversion) = diversions.get(file.path.as_slice()) {
            // The diverting package's own file stays where it is; every other
            // package's copy was installed at the diverted-to path. A local diversion
            // (`:`) diverts every package's copy.
            if diversion.package.as_deref() != Some(file.package.as_str()) {
                file.path = diversion.to.clone();
            }
        }
    }
    files.sort_by(|a, b| {
        driftwatch_protocol::path::cmp(&a.path, &b.path)
            .then_with(|| a.package.cmp(&b.package))
            .then_with(|| a.config.cmp(&b.config))
            .then_with(|| a.digest.cmp(&b.digest))
    });
    // Multi-Arch: same packages installed for two architectures list their shared
    // files (docs, man pages) twice, identically.
    files.dedup();
    Ok(files)
}

/// The conffiles that the installed packages of a status file record, in file order:
/// what [`packaged_files`] takes from the status file (`obsolete` and `newconffile`
/// entries left out). Errors name the stanza and line.
pub fn status_conffiles(bytes: &[u8]) -> Result<Vec<Md5Record>, String> {
    let mut conffiles = Vec::new();
    for package in installed_stanzas(bytes)? {
        if let Some(value) = package.conffiles {
            let records = parse_conffiles(value)
                .map_err(|reason| format!("stanza {}: {reason}", package.stanza))?;
            conffiles.extend(records);
        }
    }
    Ok(conffiles)
}

/// Every path the named packages own, as their `info/<name>[:<arch>].list` files
/// record it (directories and symlinks too, unlike md5sums), with the index of the
/// owning package in `packages` (name, architecture). A package without a list (one
/// installed by hand without its control files) owns nothing here.
///
/// Errors: an unreadable list file, naming it.
pub fn owned_paths(
    root: &Path,
    packages: &[(String, String)],
) -> Result<Vec<(Vec<u8>, usize)>, PackageDbError> {
    let info = db_file(root, INFO_DIR)?;
    let mut owned = Vec::new();
    for (index, (name, arch)) in packages.iter().enumerate() {
        let mut candidates = vec![info.join(format!("{name}.list"))];
        if !arch.is_empty() {
            candidates.insert(0, info.join(format!("{name}:{arch}.list")));
        }
        for path in candidates {
            if let Some(bytes) = read_optional_db_file(&path)? {
                owned.extend(parse_list(&bytes).into_iter().map(|p| (p, index)));
                break;
            }
        }
    }
    Ok(owned)
}

/// A `.list` file: one absolute path per line (`/.` for the root itself, left out).
fn parse_list(bytes: &[u8]) -> Vec<Vec<u8>> {
    bytes
        .split(|&b| b == b'\n')
        .map(strip_cr)
        .filter(|line| line.starts_with(b"/") && *line != b"/.")
        .map(<[u8]>::to_vec)
        .collect()
}

/// One `dpkg-divert` record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diversion {
    /// The path packages ship the file at.
    pub from: Vec<u8>,
    /// Where other packages' copies are installed instead.
    pub to: Vec<u8>,
    /// The package that owns the diversion, whose own file stays at `from`; `None` for
    /// a local diversion (`:`, made by an admin), which diverts every package's copy.
    pub package: Option<String>,
}

/// Parses `var/lib/dpkg/diversions`: triplets of lines (from, to, package).
///
/// Errors: a count of lines that is not a multiple of three, a path that is not
/// absolute, a package name that is not UTF-8; each naming the line.
pub fn parse_diversions(bytes: &[u8]) -> Result<Vec<Diversion>, String> {
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    if body.is_empty() {
        return Ok(Vec::new());
    }
    let lines: Vec<&[u8]> = body.split(|&b| b == b'\n').map(strip_cr).collect();
    if !lines.len().is_multiple_of(3) {
        return Err(format!(
            "{} lines: not a whole number of (from, to, package) triplets",
            lines.len()
        ));
    }
    let mut diversions = Vec::with_capacity(lines.len() / 3);
    for (index, triplet) in lines.chunks_exact(3).enumerate() {
        let first_line = index * 3 + 1;
        let (from, to, package) = (triplet[0], triplet[1], triplet[2]);
        for (offset, path) in [(0, from), (1, to)] {
            if path.first() != Some(&b'/') || path.contains(&0) {
                return Err(format!(
                    "line {}: expected an absolute path",
                    first_line + offset
                ));
            }
        }
        let package = match package {
            b":" => None,
            name => Some(
                std::str::from_utf8(name)
                    .ok()
                    .filter(|name| valid_package_name(name.as_bytes()))
                    .ok_or_else(|| {
                        format!("line {}: expected a package name or `:`", first_line + 2)
                    })?
                    .to_string(),
            ),
        };
        diversions.push(Diversion {
            from: from.to_vec(),
            to: to.to_vec(),
            package,
        });
    }
    Ok(diversions)
}

/// An installed package and what [`packaged_files`] needs from its stanza.
struct Installed<'a> {
    package: Package,
    /// `Multi-Arch: same`: its control files are named `<name>:<arch>.*`.
    multi_arch_same: bool,
    conffiles: Option<Value<'a>>,
    /// 1-based stanza number, for errors.
    stanza: usize,
}

/// The installed stanzas of a status file, in file order.
fn installed_stanzas(bytes: &[u8]) -> Result<Vec<Installed<'_>>, String> {
    let mut installed = Vec::new();
    for_each_stanza(bytes, |stanza| {
        let at = format!("stanza {} (line {})", stanza.number, stanza.line);
        let status = stanza
            .status
            .ok_or_else(|| format!("{at}: missing Status"))?;
        let status_text =
            single_line(status, "Status").map_err(|reason| format!("{at}: {reason}"))?;
        if !is_installed(status_text)
            .map_err(|reason| format!("{at}: line {}: {reason}", status.line))?
        {
            return Ok(());
        }
        let name = stanza
            .package
            .ok_or_else(|| format!("{at}: installed, but missing Package"))?;
        let name = single_line(name, "Package").map_err(|reason| format!("{at}: {reason}"))?;
        if !valid_package_name(name.as_bytes()) {
            return Err(format!(
                "{at}: invalid package name {name:?} (dpkg allows letters, digits and -+._, starting with a letter or digit)"
            ));
        }
        let at = format!(
            "stanza {} (package {name}, line {})",
            stanza.number, stanza.line
        );
        let version = stanza
            .version
            .ok_or_else(|| format!("{at}: installed, but missing Version"))?;
        let version =
            single_line(version, "Version").map_err(|reason| format!("{at}: {reason}"))?;
        if !version.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!("{at}: invalid Version {version:?}"));
        }
        let arch = match stanza.architecture {
            Some(arch) => {
                let arch = single_line(arch, "Architecture")
                    .map_err(|reason| format!("{at}: {reason}"))?;
                if !valid_arch(arch) {
                    return Err(format!("{at}: invalid Architecture {arch:?}"));
                }
                arch
            }
            // Very old status files have installed packages without one.
            None => "",
        };
        let multi_arch_same = match stanza.multi_arch {
            Some(value) => {
                single_line(value, "Multi-Arch").map_err(|reason| format!("{at}: {reason}"))?
                    == "same"
            }
            None => false,
        };
        installed.push(Installed {
            package: Package {
                name: name.to_string(),
                arch: arch.to_string(),
                version: version.to_string(),
            },
            multi_arch_same,
            conffiles: stanza.conffiles,
            stanza: stanza.number,
        });
        Ok(())
    })?;
    Ok(installed)
}

/// Whether a `Status` value (`want flag status`) means installed. Unknown words are an
/// error: dpkg writes only these, so anything else is corruption.
fn is_installed(status: &str) -> Result<bool, String> {
    let words: Vec<&str> = status.split_ascii_whitespace().collect();
    let &[want, flag, state] = words.as_slice() else {
        return Err(format!("Status {status:?} is not `want flag state`"));
    };
    if !matches!(want, "unknown" | "install" | "hold" | "deinstall" | "purge") {
        return Err(format!("Status {status:?}: unknown want {want:?}"));
    }
    if !matches!(flag, "ok" | "reinstreq") {
        return Err(format!("Status {status:?}: unknown flag {flag:?}"));
    }
    match state {
        "installed" => Ok(true),
        "not-installed" | "config-files" | "half-installed" | "unpacked" | "half-configured"
        | "triggers-awaited" | "triggers-pending" => Ok(false),
        _ => Err(format!("Status {status:?}: unknown state {state:?}")),
    }
}

/// dpkg's rule (`pkg_name_is_illegal`): letters, digits and `-+._`, starting with a
/// letter or digit. It also keeps names safe to put in a file name under `info/`.
fn valid_package_name(name: &[u8]) -> bool {
    name.first().is_some_and(u8::is_ascii_alphanumeric)
        && name
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"-+._".contains(&b))
}

/// dpkg's rule for architecture names: letters, digits and `-`, starting with a letter
/// or digit.
fn valid_arch(arch: &str) -> bool {
    arch.bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric())
        && arch.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Reads the package's md5sums, trying the Multi-Arch name first when it applies.
/// `None` when the package has none.
fn read_md5sums(
    info: &Path,
    package: &Installed<'_>,
) -> Result<Option<(PathBuf, Vec<u8>)>, PackageDbError> {
    let name = &package.package.name;
    let arch = &package.package.arch;
    let plain = info.join(format!("{name}.md5sums"));
    let mut candidates = vec![plain];
    if !arch.is_empty() {
        let qualified = info.join(format!("{name}:{arch}.md5sums"));
        if package.multi_arch_same {
            candidates.insert(0, qualified);
        } else {
            candidates.push(qualified);
        }
    }
    for path in candidates {
        if let Some(bytes) = read_optional_db_file(&path)? {
            return Ok(Some((path, bytes)));
        }
    }
    Ok(None)
}

/// An absolute path and its md5, as md5sums and Conffiles record them.
pub type Md5Record = (Vec<u8>, [u8; 16]);

/// Parses an md5sums file: `<32 hex>  <path>` per line (`md5sum` output; ` *` for
/// binary mode is accepted), path relative to the root. Returns absolute paths.
pub fn parse_md5sums(bytes: &[u8]) -> Result<Vec<Md5Record>, String> {
    let mut records = Vec::new();
    for (index, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let line = strip_cr(line);
        if line.is_empty() {
            continue;
        }
        let malformed = || format!("line {}: expected `<md5>  <path>`", index + 1);
        let (Some(hex), Some(separator), Some(path)) =
            (line.get(..32), line.get(32..34), line.get(34..))
        else {
            return Err(malformed());
        };
        let digest = decode_md5(hex).ok_or_else(malformed)?;
        if separator != b"  " && separator != b" *" {
            return Err(malformed());
        }
        let path = absolute(path).ok_or_else(malformed)?;
        records.push((path, digest));
    }
    Ok(records)
}

/// Parses the `Conffiles` field: ` <path> <md5>[ obsolete][ remove-on-upgrade]` per
/// line. Obsolete conffiles (no longer shipped, left for the admin) and `newconffile`
/// placeholders (dpkg's mark for a conffile not yet unpacked) carry no digest to verify.
fn parse_conffiles(value: Value<'_>) -> Result<Vec<Md5Record>, String> {
    let mut conffiles = Vec::new();
    for (line_number, line) in value.lines() {
        let line = trim(line);
        if line.is_empty() {
            continue;
        }
        let malformed = || format!("line {line_number}: expected `<path> <md5>` in Conffiles");
        // Parsed from the end, as dpkg does: a path may contain spaces.
        let mut rest = line;
        let mut obsolete = false;
        let hash = loop {
            let (head, word) = split_last_word(rest).ok_or_else(malformed)?;
            match word {
                b"obsolete" => obsolete = true,
                b"remove-on-upgrade" => {}
                _ => {
                    rest = head;
                    break word;
                }
            }
            rest = head;
        };
        let path = absolute_conffile(rest).ok_or_else(malformed)?;
        if obsolete || hash == b"newconffile" {
            continue;
        }
        let digest = decode_md5(hash).ok_or_else(malformed)?;
        conffiles.push((path, digest));
    }
    Ok(conffiles)
}

/// Splits `a b c` into (`a b`, `c`); `None` when there is no space.
fn split_last_word(line: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = line.iter().rposition(|&b| b == b' ' || b == b'\t')?;
    Some((trim(&line[..at]), &line[at + 1..]))
}

/// A conffile path as the status file gives it: absolute, no NUL.
fn absolute_conffile(path: &[u8]) -> Option<Vec<u8>> {
    (path.first() == Some(&b'/') && path.len() > 1 && !path.contains(&0)).then(|| path.to_vec())
}

/// A path from md5sums (`usr/bin/x`, rarely `/usr/bin/x` or `./usr/bin/x`) made
/// absolute.
fn absolute(path: &[u8]) -> Option<Vec<u8>> {
    let relative = path
        .strip_prefix(b"./")
        .or_else(|| path.strip_prefix(b"/"))
        .unwrap_or(path);
    if relative.is_empty() || relative.starts_with(b"/") || relative.contains(&0) {
        return None;
    }
    let mut absolute = Vec::with_capacity(relative.len() + 1);
    absolute.push(b'/');
    absolute.extend_from_slice(relative);
    Some(absolute)
}

fn decode_md5(hex: &[u8]) -> Option<[u8; 16]> {
    if hex.len() != 32 {
        return None;
    }
    let mut digest = [0u8; 16];
    for (byte, pair) in digest.iter_mut().zip(hex.chunks_exact(2)) {
        *byte = (hex_digit(pair[0])? << 4) | hex_digit(pair[1])?;
    }
    Some(digest)
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(start, |at| at + 1);
    &bytes[start..end]
}

// ---------------------------------------------------------------------------------
// deb822 stanzas

/// A field's value: the bytes after `Name:` through the end of its last continuation
/// line (line ends included, CR not stripped), and the line it starts on.
#[derive(Clone, Copy, Debug)]
struct Value<'a> {
    raw: &'a [u8],
    line: usize,
}

impl<'a> Value<'a> {
    /// The value's lines with their line numbers: the text after the colon first, then
    /// each continuation line (leading space kept), CR stripped.
    fn lines(self) -> impl Iterator<Item = (usize, &'a [u8])> {
        self.raw
            .split(|&b| b == b'\n')
            .enumerate()
            .map(move |(index, line)| (self.line + index, strip_cr(line)))
    }
}

/// The text of a one-line field, trimmed and checked to be UTF-8. Continuation lines
/// are an error: dpkg never folds these fields.
fn single_line<'a>(value: Value<'a>, name: &str) -> Result<&'a str, String> {
    let mut lines = value.lines();
    let first = lines.next().map_or(&[][..], |(_, line)| trim(line));
    if let Some((line, _)) = lines.find(|(_, line)| !trim(line).is_empty()) {
        return Err(format!("line {line}: {name} continues on a second line"));
    }
    let text = std::str::from_utf8(first)
        .map_err(|_| format!("line {}: {name} is not UTF-8", value.line))?;
    if text.is_empty() {
        return Err(format!("line {}: {name} is empty", value.line));
    }
    Ok(text)
}

/// The fields of one stanza that driftwatch reads; the rest are skipped.
#[derive(Default)]
struct Stanza<'a> {
    /// 1-based, counting non-empty stanzas.
    number: usize,
    /// The line it starts on.
    line: usize,
    package: Option<Value<'a>>,
    version: Option<Value<'a>>,
    architecture: Option<Value<'a>>,
    status: Option<Value<'a>>,
    multi_arch: Option<Value<'a>>,
    conffiles: Option<Value<'a>>,
}

impl<'a> Stanza<'a> {
    fn slot(&mut self, name: &[u8]) -> Option<(&'static str, &mut Option<Value<'a>>)> {
        const FIELDS: [&str; 6] = [
            "Package",
            "Version",
            "Architecture",
            "Status",
            "Multi-Arch",
            "Conffiles",
        ];
        let index = FIELDS
            .iter()
            .position(|field| field.as_bytes().eq_ignore_ascii_case(name))?;
        let slot = match index {
            0 => &mut self.package,
            1 => &mut self.version,
            2 => &mut self.architecture,
            3 => &mut self.status,
            4 => &mut self.multi_arch,
            _ => &mut self.conffiles,
        };
        Some((FIELDS[index], slot))
    }
}

/// A field being read: where its value starts, where it ends so far, whether it is one
/// driftwatch keeps.
struct OpenField {
    tracked: Option<&'static str>,
    name_line: usize,
    start: usize,
    end: usize,
}

/// Calls `visit` for each stanza of a deb822 file, in order, stopping at the first
/// error. Memory stays bounded by the tracked fields, whatever the input.
fn for_each_stanza<'a>(
    bytes: &'a [u8],
    mut visit: impl FnMut(&Stanza<'a>) -> Result<(), String>,
) -> Result<(), String> {
    let mut stanza = Stanza::default();
    let mut in_stanza = false;
    let mut stanzas = 0usize;
    let mut open: Option<OpenField> = None;
    let mut offset = 0usize;
    let mut line_number = 0usize;

    let close = |stanza: &mut Stanza<'a>, open: &mut Option<OpenField>| {
        if let Some(field) = open.take() {
            if let Some(name) = field.tracked {
                if let Some((_, slot)) = stanza.slot(name.as_bytes()) {
                    *slot = Some(Value {
                        raw: &bytes[field.start..field.end],
                        line: field.name_line,
                    });
                }
            }
        }
    };

    while offset < bytes.len() {
        line_number += 1;
        let line_end = bytes[offset..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(bytes.len(), |at| offset + at);
        let line = strip_cr(&bytes[offset..line_end]);
        let content_end = offset + line.len();
        let line_start = offset;
        offset = line_end + 1;

        if line.iter().all(|&b| b == b' ' || b == b'\t') {
            // Blank (or whitespace-only) line: the stanza, if any, ends.
            close(&mut stanza, &mut open);
            if in_stanza {
                visit(&stanza)?;
                stanza = Stanza::default();
                in_stanza = false;
            }
            continue;
        }
        if !in_stanza {
            in_stanza = true;
            stanzas += 1;
            stanza.number = stanzas;
            stanza.line = line_number;
        }
        let at = || format!("stanza {stanzas}, line {line_number}");
        if line[0] == b' ' || line[0] == b'\t' {
            let field = open
                .as_mut()
                .ok_or_else(|| format!("{}: continuation line before any field", at()))?;
            field.end = content_end;
            if field.end - field.start > MAX_FIELD_BYTES {
                return Err(format!(
                    "{}: field value longer than {} MiB",
                    at(),
                    MAX_FIELD_BYTES >> 20
                ));
            }
            continue;
        }
        close(&mut stanza, &mut open);
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or_else(|| format!("{}: expected `Field: value`", at()))?;
        let name = &line[..colon];
        if name.is_empty() || name.iter().any(|b| !b.is_ascii_graphic()) {
            return Err(format!("{}: invalid field name", at()));
        }
        let tracked = match stanza.slot(name) {
            Some((canonical, slot)) => {
                if slot.is_some() {
                    return Err(format!("{}: {canonical} given twice", at()));
                }
                Some(canonical)
            }
            None => None,
        };
        let start = line_start + colon + 1;
        if content_end - start > MAX_FIELD_BYTES {
            return Err(format!(
                "{}: field value longer than {} MiB",
                at(),
                MAX_FIELD_BYTES >> 20
            ));
        }
        open = Some(OpenField {
            tracked,
            name_line: line_number,
            start,
            end: content_end,
        });
    }
    close(&mut stanza, &mut open);
    if in_stanza {
        visit(&stanza)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::MAX_DB_FILE_BYTES;
    use super::*;
    use proptest::prelude::*;
    use std::fs;

    const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/dpkg/status");

    fn package(name: &str, arch: &str, version: &str) -> Package {
        Package {
            name: name.into(),
            arch: arch.into(),
            version: version.into(),
        }
    }

    fn err(bytes: &[u8]) -> String {
        match parse_status(bytes) {
            Ok(packages) => panic!("expected an error, got {packages:?}"),
            Err(reason) => reason,
        }
    }

    /// Writes a dpkg database into a temp root: status, md5sums, diversions.
    fn root_with(
        status: &str,
        info: &[(&str, &str)],
        diversions: Option<&str>,
    ) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        let dpkg = root.path().join("var/lib/dpkg");
        fs::create_dir_all(dpkg.join("info")).unwrap();
        fs::write(dpkg.join("status"), status).unwrap();
        for (name, content) in info {
            fs::write(dpkg.join("info").join(name), content).unwrap();
        }
        if let Some(diversions) = diversions {
            fs::write(dpkg.join("diversions"), diversions).unwrap();
        }
        root
    }

    #[test]
    fn installed_states_only() {
        let status =
            b"Package: a\nStatus: install ok installed\nVersion: 1.0\nArchitecture: amd64\n\n\
Package: b\nStatus: hold ok installed\nVersion: 2:1.0-1\nArchitecture: all\n\n\
Package: c\nStatus: deinstall ok config-files\nVersion: 1\nArchitecture: amd64\n\n\
Package: d\nStatus: purge ok not-installed\nArchitecture: amd64\n\n\
Package: e\nStatus: install ok half-configured\nVersion: 1\n\n\
Package: f\nStatus: install ok triggers-pending\nVersion: 1\n";
        assert_eq!(
            parse_status(status).unwrap(),
            vec![package("a", "amd64", "1.0"), package("b", "all", "2:1.0-1")]
        );
    }

    #[test]
    fn continuation_lines_crlf_and_foreign_bytes_in_other_fields() {
        let status = b"Package: a\r\nStatus: install ok installed\r\n\
Description: caf\xe9 (latin-1, as old packages have)\r\n .\r\n second line \xff\r\n\
Version: 1.0\r\n\r\n\r\n\
Package: b\nStatus: install ok installed\nVersion: 3\n \n";
        assert_eq!(
            parse_status(status).unwrap(),
            vec![package("a", "", "1.0"), package("b", "", "3")]
        );
    }

    #[test]
    fn hostile_status_files_are_errors_naming_the_place() {
        assert!(
            err(b"Package: a\nStatus: install ok installed\n")
                .contains("stanza 1 (package a, line 1): installed, but missing Version"),
            "{}",
            err(b"Package: a\nStatus: install ok installed\n")
        );
        let reason = err(b"Package: a\nStatus: install ok installed\nVersion: 1\n\nStatus: install ok installed\nVersion: 1\n");
        assert!(
            reason.contains("stanza 2 (line 5): installed, but missing Package"),
            "{reason}"
        );
        let reason = err(b"Package: a\nStatus: install ok installed\nVersion: 1\n\xff\xfe garbage");
        assert!(
            reason.contains("stanza 1, line 4: expected `Field: value`"),
            "{reason}"
        );
        let reason = err(b"Package: a\xff\nStatus: install ok installed\nVersion: 1\n");
        assert!(reason.contains("line 1: Package is not UTF-8"), "{reason}");
        let reason = err(b" leading continuation\n");
        assert!(
            reason.contains("continuation line before any field"),
            "{reason}"
        );
        let reason = err(b"Package: a\nPackage: b\n");
        assert!(reason.contains("line 2: Package given twice"), "{reason}");
        let reason = err(b"Package: a\nStatus: install ok\nVersion: 1\n");
        assert!(
            reason.contains("line 2: Status \"install ok\" is not `want flag state`"),
            "{reason}"
        );
        let reason = err(b"Package: a\nStatus: install ok bogus\n");
        assert!(reason.contains("unknown state"), "{reason}");
        let reason = err(b"Package: a\nVersion: 1\n");
        assert!(reason.contains("missing Status"), "{reason}");
        let reason = err(b"Package: ../../etc/x\nStatus: install ok installed\nVersion: 1\n");
        assert!(reason.contains("invalid package name"), "{reason}");
        let reason = err(b"Package: a\nStatus: install ok installed\nVersion: 1 2\n");
        assert!(reason.contains("invalid Version"), "{reason}");
        let reason =
            err(b"Package: a\nStatus: install ok installed\nVersion: 1\nArchitecture: ../x\n");
        assert!(reason.contains("invalid Architecture"), "{reason}");
        let reason = err(b"Package: a\n b\nStatus: install ok installed\nVersion: 1\n");
        assert!(
            reason.contains("line 2: Package continues on a second line"),
            "{reason}"
        );
        let reason = err(b": no name\n");
        assert!(reason.contains("invalid field name"), "{reason}");
    }

    #[test]
    fn huge_fields_are_refused() {
        let mut status =
            b"Package: a\nStatus: install ok installed\nVersion: 1\nDescription: x\n".to_vec();
        let line = vec![b'x'; 4096];
        for _ in 0..(MAX_FIELD_BYTES / 4096 + 2) {
            status.push(b' ');
            status.extend_from_slice(&line);
            status.push(b'\n');
        }
        assert!(err(&status).contains("longer than 1 MiB"));
        let mut one_line = b"Package: a\nDescription: ".to_vec();
        one_line.resize(one_line.len() + MAX_FIELD_BYTES + 1, b'y');
        assert!(err(&one_line).contains("stanza 1, line 2: field value longer than 1 MiB"));
    }

    #[test]
    fn oversized_file_is_refused_before_parsing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status");
        let file = fs::File::create(&path).unwrap();
        // Sparse: no disk used.
        file.set_len(MAX_DB_FILE_BYTES + 1).unwrap();
        match read_db_file(&path) {
            Err(PackageDbError::Malformed { path: p, reason }) => {
                assert_eq!(p, path);
                assert_eq!(reason, "larger than 256 MiB");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn real_status_file_of_this_machine() {
        let bytes = fs::read(FIXTURE).unwrap();
        let packages = parse_status(&bytes).unwrap();
        assert!(packages.len() > 500, "{}", packages.len());
        assert!(packages
            .iter()
            .any(|p| p.name == "dpkg" && !p.version.is_empty()));
        assert!(packages.iter().any(|p| p.arch == "all"));
        assert!(packages.iter().all(|p| !p.arch.is_empty()));
    }

    #[test]
    fn read_packages_names_the_file() {
        let root = root_with("Package: a\nStatus: install ok installed\n", &[], None);
        assert!(is_present(root.path()));
        match read_packages(root.path()) {
            Err(err @ PackageDbError::Malformed { .. }) => {
                let text = err.to_string();
                assert!(
                    text.contains("var/lib/dpkg/status is malformed: stanza 1"),
                    "{text}"
                );
            }
            other => panic!("{other:?}"),
        }
        let empty = tempfile::tempdir().unwrap();
        assert!(!is_present(empty.path()));
        assert!(matches!(
            read_packages(empty.path()),
            Err(PackageDbError::Io { .. })
        ));
    }

    const MD5_A: &str = "0123456789abcdef0123456789abcdef";
    const MD5_B: &str = "fedcba9876543210fedcba9876543210";

    fn digest(hex: &str) -> Vec<u8> {
        decode_md5(hex.as_bytes()).unwrap().to_vec()
    }

    fn file(path: &str, package: &str, hex: &str, config: bool) -> PackagedFile {
        PackagedFile {
            path: path.as_bytes().to_vec(),
            package: package.into(),
            algorithm: DigestAlgorithm::Md5,
            digest: digest(hex),
            config,
        }
    }

    #[test]
    fn packaged_files_md5sums_conffiles_multiarch_and_diversions() {
        let status = format!(
            "Package: base\nStatus: install ok installed\nVersion: 1\nArchitecture: amd64\n\
Conffiles:\n /etc/base.conf {MD5_A}\n /etc/old.conf {MD5_B} obsolete\n /etc/new.conf newconffile\n /etc/with space.conf {MD5_B} remove-on-upgrade\n\n\
Package: libz\nStatus: install ok installed\nVersion: 1\nArchitecture: amd64\nMulti-Arch: same\n\n\
Package: libz\nStatus: install ok installed\nVersion: 1\nArchitecture: i386\nMulti-Arch: same\n\n\
Package: dash\nStatus: install ok installed\nVersion: 1\nArchitecture: amd64\n\n\
Package: bash\nStatus: install ok installed\nVersion: 1\nArchitecture: amd64\n\n\
Package: meta\nStatus: install ok installed\nVersion: 1\nArchitecture: all\n\n\
Package: gone\nStatus: deinstall ok config-files\nVersion: 1\nArchitecture: amd64\n"
        );
        let root = root_with(
            &status,
            &[
                ("base.md5sums", &format!("{MD5_B}  usr/bin/base\r\n{MD5_A}  etc/base.conf\n")),
                ("libz:amd64.md5sums", &format!("{MD5_A}  usr/lib/x86_64/libz.so\n{MD5_B}  usr/share/doc/libz/copyright\n")),
                ("libz:i386.md5sums", &format!("{MD5_A}  usr/lib/i386/libz.so\n{MD5_B}  usr/share/doc/libz/copyright\n")),
                ("dash.md5sums", &format!("{MD5_A}  bin/sh\n")),
                ("bash.md5sums", &format!("{MD5_B}  bin/sh\n{MD5_A}  usr/bin/local-diverted\n")),
                ("gone.md5sums", &format!("{MD5_A}  usr/bin/gone\n")),
            ],
            Some("/bin/sh\n/bin/sh.distrib\ndash\n/usr/bin/local-diverted\n/usr/bin/local-diverted.orig\n:\n"),
        );
        assert_eq!(
            packaged_files(root.path()).unwrap(),
            vec![
                // dash's own /bin/sh stays; bash's copy lives at the diverted-to path.
                file("/bin/sh", "dash", MD5_A, false),
                file("/bin/sh.distrib", "bash", MD5_B, false),
                file("/etc/base.conf", "base", MD5_A, true),
                file("/etc/with space.conf", "base", MD5_B, true),
                file("/usr/bin/base", "base", MD5_B, false),
                file("/usr/bin/local-diverted.orig", "bash", MD5_A, false),
                file("/usr/lib/i386/libz.so", "libz", MD5_A, false),
                file("/usr/lib/x86_64/libz.so", "libz", MD5_A, false),
                file("/usr/share/doc/libz/copyright", "libz", MD5_B, false),
            ]
        );
    }

    #[test]
    fn malformed_md5sums_and_conffiles_name_file_and_line() {
        let status = "Package: a\nStatus: install ok installed\nVersion: 1\nArchitecture: amd64\n";
        let root = root_with(
            status,
            &[("a.md5sums", &format!("{MD5_A}  ok\nnot a digest line\n"))],
            None,
        );
        let text = packaged_files(root.path()).unwrap_err().to_string();
        assert!(
            text.contains("info/a.md5sums is malformed: line 2: expected `<md5>  <path>`"),
            "{text}"
        );

        let root = root_with(
            &format!("{status}Conffiles:\n /etc/a {MD5_A}\n /etc/b zz\n"),
            &[],
            None,
        );
        let text = packaged_files(root.path()).unwrap_err().to_string();
        assert!(
            text.contains(
                "status is malformed: stanza 1 (package a): line 7: expected `<path> <md5>`"
            ),
            "{text}"
        );

        let root = root_with(status, &[], Some("/a\n/b\n"));
        let text = packaged_files(root.path()).unwrap_err().to_string();
        assert!(text.contains("diversions is malformed: 2 lines"), "{text}");
    }

    #[test]
    fn md5sums_line_forms() {
        let parsed = parse_md5sums(
            format!("{MD5_A}  usr/a b\n{MD5_B} */usr/c\n\n{MD5_A}  ./d\n").as_bytes(),
        )
        .unwrap();
        let paths: Vec<&[u8]> = parsed.iter().map(|(path, _)| path.as_slice()).collect();
        assert_eq!(paths, vec![&b"/usr/a b"[..], b"/usr/c", b"/d"]);
        assert!(parse_md5sums(format!("{MD5_A}  \n").as_bytes()).is_err());
        assert!(parse_md5sums(format!("{MD5_A} usr/x\n").as_bytes()).is_err());
        assert!(parse_md5sums("g123456789abcdef0123456789abcdef  x\n".as_bytes()).is_err());
    }

    /// Renders packages as a dpkg status file, with filler fields dpkg writes.
    fn render(stanzas: &[(Package, &str, bool)]) -> String {
        let mut out = String::new();
        for (package, status, crlf) in stanzas {
            let nl = if *crlf { "\r\n" } else { "\n" };
            out.push_str(&format!("Package: {}{nl}", package.name));
            out.push_str(&format!("Status: {status}{nl}"));
            out.push_str(&format!("Priority: optional{nl}Installed-Size: 12{nl}"));
            out.push_str(&format!("Architecture: {}{nl}", package.arch));
            out.push_str(&format!("Version: {}{nl}", package.version));
            out.push_str(&format!(
                "Description: short{nl} long line{nl} .{nl} more{nl}"
            ));
            out.push_str(nl);
        }
        out
    }

    fn arb_package() -> impl Strategy<Value = Package> {
        (
            "[a-z0-9][a-z0-9+.-]{0,15}",
            prop::sample::select(vec!["amd64", "all", "i386", "arm64"]),
            "([0-9]:)?[0-9][0-9a-zA-Z.+~]{0,8}(-[0-9a-z.+~]{1,4})?",
        )
            .prop_map(|(name, arch, version)| package(&name, arch, &version))
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
            let _ = parse_status(&bytes);
            let _ = parse_md5sums(&bytes);
            let _ = parse_diversions(&bytes);
            let _ = installed_stanzas(&bytes).map(|stanzas| {
                for stanza in stanzas {
                    if let Some(value) = stanza.conffiles {
                        let _ = parse_conffiles(value);
                    }
                }
            });
        }

        #[test]
        fn status_like_bytes_never_panic(parts in prop::collection::vec(
            prop::sample::select(vec![
                "Package: a", "Status: install ok installed", "Version: 1", "Conffiles:",
                " /etc/x 0123456789abcdef0123456789abcdef", " obsolete", " \u{ff}", "",
                "\r", ":", " ", "Architecture: all", "Multi-Arch: same", "\u{0}",
            ]),
            0..40,
        )) {
            let bytes = parts.join("\n");
            if let Ok(stanzas) = installed_stanzas(bytes.as_bytes()) {
                for stanza in stanzas {
                    if let Some(value) = stanza.conffiles {
                        let _ = parse_conffiles(value);
                    }
                }
            }
        }

        #[test]
        fn well_formed_stanzas_round_trip(stanzas in prop::collection::vec(
            (arb_package(), prop::sample::select(vec![
                "install ok installed", "hold ok installed", "deinstall ok config-files",
                "purge ok not-installed", "install ok unpacked",
            ]), any::<bool>()),
            0..20,
        )) {
            let text = render(&stanzas);
            let expected: Vec<Package> = stanzas
                .iter()
                .filter(|(_, status, _)| status.ends_with(" installed"))
                .map(|(package, _, _)| package.clone())
                .collect();
            prop_assert_eq!(parse_status(text.as_bytes()).unwrap(), expected);
        }
    }
}
