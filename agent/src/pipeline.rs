//! The check pipeline: sources (files, packages, runtime) → diff → one report.
//!
//! `driftwatch check` and the daemon run exactly this; they differ only in where the
//! report goes. The file scan streams into a merge-join with the baseline (flat memory),
//! then the package set and the package manager's records are compared, then — for a
//! check of `/` — the running system.

use crate::attribution;
use crate::diff::{package_findings, BaselineCursor, Differ};
use crate::error::{Error, Result};
use crate::host::{hostname, machine_id};
use crate::policy::Policy;
use crate::sink::progress::Progress;
use crate::source::files::{
    self, scan, ContentHashes, FileIdentity, ScanAbort, ScanItem, ScanOptions,
};
use crate::source::{containers, packages, runtime};
use driftwatch_protocol::baseline::{digest_string, BaselineReader};
use driftwatch_protocol::package::{PackageDb, PackageSet};
use driftwatch_protocol::path::display;
use driftwatch_protocol::report::{
    report_path, BaselineInfo, Finding, HostInfo, PackageFileFinding, Report, ScanError, ScanInfo,
    Summary, REPORT_SCHEMA,
};
use driftwatch_protocol::time::rfc3339;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::{Instant, SystemTime};

/// What to check, resolved.
pub struct CheckPlan<'a> {
    /// The root, canonical.
    pub root: &'a Path,
    /// The verified baseline.
    pub baseline: &'a BaselineReader<File>,
    /// Its file (named in errors; left out of the scan when it lies in the root).
    pub baseline_path: &'a Path,
    /// The policy in force.
    pub policy: &'a Policy,
    /// Threads, read pacing and known hashes for the file scan (its `skip` is filled
    /// in here).
    pub scan: ScanOptions,
    /// Read runtime state (only ever done when the root is `/`).
    pub runtime: bool,
    /// Stops the file scan between files (best effort).
    pub cancel: &'a AtomicBool,
}

/// A finished check.
pub struct CheckOutcome {
    /// The report (`driftwatch.report/v1`).
    pub report: Report,
    /// Sources that could not be looked at on this host, and why (for people).
    pub skipped: Vec<String>,
}

/// Reads and compiles a policy file.
pub fn load_policy(path: &Path) -> Result<Policy> {
    let text = fs::read_to_string(path).map_err(|source| Error::ReadPolicy {
        path: path.to_path_buf(),
        source,
    })?;
    Policy::parse(&text).map_err(|source| Error::Policy {
        origin: path.display().to_string(),
        source,
    })
}

/// Opens and verifies a baseline (against the key in `pubkey` when given) and picks
/// the policy in force: the file `policy` when given, else the one recorded in the
/// baseline at bake time.
pub fn open_baseline_and_policy(
    baseline_path: &Path,
    pubkey: Option<&Path>,
    policy: Option<&Path>,
) -> Result<(BaselineReader<File>, Policy)> {
    let trusted_key = pubkey.map(crate::baseline::read_public_key).transpose()?;
    let reader = crate::baseline::open(baseline_path, trusted_key.as_ref())?;
    let policy = match policy {
        Some(path) => load_policy(path)?,
        None => Policy::parse(&reader.meta().policy).map_err(|source| Error::Policy {
            origin: format!("recorded in {}", baseline_path.display()),
            source,
        })?,
    };
    Ok((reader, policy))
}

/// An error entry for the report.
pub fn scan_error(path: &[u8], error: String) -> ScanError {
    let (path, path_bytes_b64) = report_path(path);
    ScanError {
        path,
        path_bytes_b64,
        error,
    }
}

fn source_error(source: &str, error: String) -> ScanError {
    ScanError {
        path: format!("({source})"),
        path_bytes_b64: None,
        error,
    }
}

/// The path of `file` inside `root`, if it lies there (used to keep driftwatch's own
/// files out of what it reports).
pub fn inside_root(root: &Path, file: &Path) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let parent = fs::canonicalize(file.parent().filter(|p| !p.as_os_str().is_empty())?).ok()?;
    let relative = parent.join(file.file_name()?);
    let relative = relative.strip_prefix(root).ok()?;
    let mut inside = b"/".to_vec();
    inside.extend_from_slice(relative.as_os_str().as_bytes());
    Some(inside)
}

/// The mount points inside `root` where the image itself goes on: file systems
/// mounted on a directory the baseline records content below (a separate `/usr` or
/// `/var` partition). `[scan] one_filesystem` keeps the walk off other file systems
/// (pseudo file systems, removable and network mounts); these it must cross, or every
/// file the image ships there would read as removed.
fn image_mount_points(root: &Path, baseline: &BaselineReader<File>) -> Vec<Vec<u8>> {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let table = fs::read("/proc/self/mountinfo").unwrap_or_default();
    let (mounts, _) = crate::source::mountinfo::parse(&table);
    mounts
        .into_iter()
        .filter_map(|mount| {
            let at = Path::new(std::ffi::OsStr::from_bytes(&mount.mount_point));
            let relative = at.strip_prefix(root).ok()?;
            let mut inside = b"/".to_vec();
            inside.extend(relative.as_os_str().to_os_string().into_vec());
            let below = [inside.as_slice(), b"/"].concat();
            let ships = baseline
                .entries_within(&inside)
                .filter_map(std::result::Result::ok)
                .any(|entry| entry.path.starts_with(&below));
            (inside != b"/" && ships).then_some(inside)
        })
        .collect()
}

/// Where each hashed file's path, identity and hashes go as the scan finds them (the
/// daemon's hash cache).
pub type HashedSink<'a> = &'a mut dyn FnMut(&[u8], &FileIdentity, &ContentHashes);

/// Runs the whole pipeline.
pub fn check(
    plan: &CheckPlan<'_>,
    progress: &Progress,
    hashed: HashedSink<'_>,
) -> Result<CheckOutcome> {
    let (root, reader, policy) = (plan.root, plan.baseline, plan.policy);
    let baseline_error = |source| Error::VerifyBaseline {
        path: plan.baseline_path.to_path_buf(),
        source,
    };
    // The baseline itself lives in the image but is not part of it.
    let own_files: Vec<Vec<u8>> = inside_root(root, plan.baseline_path).into_iter().collect();

    let started_at = SystemTime::now();
    let timer = Instant::now();
    let mut cursor = BaselineCursor::new(reader.entries());
    let mut differ = Differ::new(policy, &own_files);
    let mut errors = Vec::new();
    let mut bytes_seen = 0u64;
    let options = ScanOptions {
        skip: own_files.clone(),
        cross: image_mount_points(root, reader),
        ..plan.scan.clone()
    };
    let baked = reader
        .meta()
        .packages
        .as_ref()
        .filter(|_| policy.config().packages.enabled);
    let (scanned, packaged) = std::thread::scope(|scope| {
        // The package sources read the package database and the packaged files the
        // scan does not cover: beside the scan, so that on a cold page cache (a boot
        // check) their reads overlap the scan's instead of following them.
        let packaged = baked.map(|baked| scope.spawn(move || check_packages(root, baked, policy)));
        let scanned = scan(root, policy, &options, plan.cancel, |item| {
            match item {
                ScanItem::Observed {
                    entry,
                    state,
                    error,
                    identity,
                    unsettled,
                } => {
                    if entry.blake3.is_some() {
                        bytes_seen += entry.size;
                    }
                    if let (Some(identity), Some(blake3)) = (identity, entry.blake3) {
                        let hashes = ContentHashes {
                            blake3,
                            sha256: entry.sha256,
                        };
                        hashed(&entry.path, &identity, &hashes);
                    }
                    progress.entry(bytes_seen);
                    let before = cursor.seek(&entry.path, |b| differ.unmatched_baseline(b))?;
                    let before = before.map(|b| hide_unreadable_xattrs(b, &mut errors));
                    differ.observed(before.as_ref(), &entry, &state, unsettled);
                    if let Some(error) = error {
                        errors.push(scan_error(&entry.path, error));
                    }
                }
                ScanItem::Unreadable {
                    path,
                    error,
                    subtree_unknown,
                } => {
                    // What is below an unreadable path is unknown, not removed.
                    cursor.seek(&path, |b| differ.unmatched_baseline(b))?;
                    if subtree_unknown {
                        differ.subtree_unknown(path.clone());
                    }
                    errors.push(scan_error(&path, error));
                }
            }
            Ok(())
        });
        let packaged = packaged.map(|thread| {
            thread
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        });
        (scanned, packaged)
    });
    let stats = scanned.map_err(|abort| match abort {
        ScanAbort::Root { path, source } => Error::Root { path, source },
        ScanAbort::Visitor(source) => baseline_error(source),
    })?;
    cursor
        .drain(|b| differ.unmatched_baseline(b))
        .map_err(baseline_error)?;
    progress.finish();

    let mut findings = differ.finish();
    if let (Some(baked), Some((package_findings, package_errors))) = (baked, packaged) {
        findings.extend(package_findings);
        errors.extend(package_errors);
        attribute_packages(root, baked.db, &mut findings, &mut errors);
    }
    // Runtime state belongs to the running system, so only a check of / reads it.
    let mut skipped = Vec::new();
    if root == Path::new("/") && plan.runtime {
        let observed = runtime::observe(
            &policy.config().runtime,
            reader,
            reader.meta().runtime.as_ref(),
        );
        findings.extend(observed.findings);
        errors.extend(
            observed
                .errors
                .into_iter()
                .map(|e| source_error("runtime", e)),
        );
        skipped = observed.skipped;
        if policy.config().containers.enabled {
            let observed =
                containers::observe(&containers::Host::default(), &policy.config().containers);
            findings.extend(observed.findings);
            errors.extend(
                observed
                    .errors
                    .into_iter()
                    .map(|e| source_error("containers", e)),
            );
        }
    }

    let report = Report {
        schema: REPORT_SCHEMA.to_string(),
        host: HostInfo {
            hostname: hostname(),
            machine_id: machine_id(root),
        },
        baseline: BaselineInfo {
            digest: digest_string(reader.digest()),
            image_id: reader.meta().image_id.clone(),
            signed: reader.signer().is_some(),
        },
        scan: ScanInfo {
            root: display(root.as_os_str().as_encoded_bytes()),
            started_at: rfc3339(started_at),
            duration_ms: timer.elapsed().as_millis() as u64,
            entries: stats.entries,
            bytes_hashed: stats.bytes_hashed,
        },
        summary: Summary::of(&findings),
        findings,
        errors,
    };
    Ok(CheckOutcome { report, skipped })
}

/// The package set compared with the baseline's, then the packaged files verified
/// against the package database: findings and errors.
fn check_packages(
    root: &Path,
    baked: &PackageSet,
    policy: &Policy,
) -> (Vec<Finding>, Vec<ScanError>) {
    let mut findings = Vec::new();
    let mut errors = Vec::new();
    // A database that cannot be read is one error; verification would only repeat it.
    let verified = compare_packages(root, baked, policy).and_then(|changes| {
        findings.extend(changes);
        packages::verify_for_policy(root, policy, baked.db)
    });
    match verified {
        Ok(outcome) => {
            let accepted = |f: &PackageFileFinding| {
                baked
                    .accepted_mismatches
                    .iter()
                    .any(|a| a.path == f.path && a.package == f.package && a.observed == f.observed)
            };
            findings.extend(
                outcome
                    .findings
                    .into_iter()
                    .filter(|f| !accepted(f))
                    .map(Finding::PackageFile),
            );
            errors.extend(
                outcome
                    .errors
                    .iter()
                    .map(|(path, e)| scan_error(path, e.clone())),
            );
        }
        Err(err) => errors.push(source_error("package database", err.to_string())),
    }
    (findings, errors)
}

/// Ties the file findings on paths of installed or upgraded packages to their package.
fn attribute_packages(
    root: &Path,
    db: PackageDb,
    findings: &mut [Finding],
    errors: &mut Vec<ScanError>,
) {
    let changed = attribution::changed_packages(findings);
    if changed.is_empty() {
        return;
    }
    let keys: Vec<(String, String)> = changed
        .iter()
        .map(|p| (p.name.clone(), p.arch.clone()))
        .collect();
    match packages::owners(root, db, &keys) {
        Ok(owners) => {
            attribution::attribute(findings, &changed, &owners);
        }
        // The findings stand without it; the database problem is one error.
        Err(err) => errors.push(source_error("package attribution", err.to_string())),
    }
}

/// The package set now against the one baked into the image.
fn compare_packages(
    root: &Path,
    baked: &PackageSet,
    policy: &Policy,
) -> std::result::Result<Vec<Finding>, packages::PackageDbError> {
    // No database at all where the image had one: every package is gone.
    let now = packages::read(root)?.unwrap_or_else(|| PackageSet::new(baked.db, Vec::new()));
    Ok(package_findings(
        baked,
        &now,
        policy.config().packages.severity,
    ))
}

/// Re-checks only the package set (after a package manager wrote its database): what
/// was installed, removed or changed version. Packaged files are left to the file
/// watch and to the next full check. Nothing when the baseline records no package set
/// or the policy turns packages off.
pub fn recheck_packages(
    root: &Path,
    baseline: &BaselineReader<File>,
    policy: &Policy,
) -> std::result::Result<Vec<Finding>, packages::PackageDbError> {
    match baseline
        .meta()
        .packages
        .as_ref()
        .filter(|_| policy.config().packages.enabled)
    {
        Some(baked) => compare_packages(root, baked, policy),
        None => Ok(Vec::new()),
    }
}

/// Re-checks single paths against the baseline (after watch events): one baseline
/// lookup and one inspection per path. Paths outside the policy's scope give nothing.
pub fn recheck(
    root: &Path,
    baseline: &BaselineReader<File>,
    policy: &Policy,
    paths: &[Vec<u8>],
) -> Result<Vec<Finding>> {
    let mut differ = Differ::new(policy, &[]);
    for path in paths {
        if !policy.in_scope(path) || policy.state_for(path).excluded {
            continue;
        }
        let before = baseline
            .lookup(path)
            .map_err(|source| Error::VerifyBaseline {
                path: PathBuf::from("(baseline lookup)"),
                source,
            })?;
        match files::observe_one(root, policy, path) {
            Some(ScanItem::Observed {
                entry,
                state,
                unsettled,
                ..
            }) => {
                let before = before.map(|b| hide_unreadable_xattrs(b, &mut Vec::new()));
                differ.observed(before.as_ref(), &entry, &state, unsettled)
            }
            // Unreadable now: the next full check reports it as an error.
            Some(ScanItem::Unreadable { .. }) => {}
            None => {
                if let Some(before) = &before {
                    differ.unmatched_baseline(before);
                }
            }
        }
    }
    Ok(differ.finish())
}

/// Without `CAP_SYS_ADMIN` the kernel hides `trusted.*` xattrs from every listing:
/// the baseline's are left out of the comparison (and said to be not readable here)
/// instead of being reported as removed.
fn hide_unreadable_xattrs(
    mut before: driftwatch_protocol::entry::Entry,
    errors: &mut Vec<ScanError>,
) -> driftwatch_protocol::entry::Entry {
    if files::trusted_xattrs_visible()
        || !before
            .xattrs
            .iter()
            .any(|(n, _)| files::is_trusted_xattr(n))
    {
        return before;
    }
    before
        .xattrs
        .retain(|(name, _)| !files::is_trusted_xattr(name));
    errors.push(scan_error(
        &before.path,
        "trusted.* xattrs: not readable here (needs CAP_SYS_ADMIN); not compared".to_string(),
    ));
    before
}

/// The default baseline location inside `root`.
pub fn default_baseline(root: &Path) -> PathBuf {
    root.join(crate::config::DEFAULT_BASELINE_PATH.trim_start_matches('/'))
}
