//! The difference between two images' baselines, as the collector keeps them from
//! registration ([`crate::store::Store::kept_baseline`]): files added, removed and
//! changed (with the attributes that differ, before → after), and packages installed,
//! removed and changed version.
//!
//! Both baselines are read in path order, so the comparison is one merge of the two
//! entry streams; what it keeps for the page is bounded ([`MAX_FILES`]), the rest is
//! counted. Modification times are not compared (every rebuild changes them, and an
//! image's reader wants what differs in content and access), nor the sizes of
//! directories; the rows use the same before → after view as a host's findings.

use super::view::FindingView;
use driftwatch_protocol::baseline::{BaselineReader, ReadError};
use driftwatch_protocol::entry::{Entry, FileType};
use driftwatch_protocol::package::PackageSet;
use driftwatch_protocol::path;
use driftwatch_protocol::report::{
    report_path, Attribute, EntryState, FileChange, FileFinding, Finding, PackageChange,
    PackageRef, Severity,
};
use std::cmp::Ordering;
use std::collections::BTreeMap;

/// File rows kept for the page; beyond, changes are only counted.
pub const MAX_FILES: usize = 1000;

/// Files that differ, counted by change.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub added: u64,
    pub removed: u64,
    pub changed: u64,
}

/// What differs from one baseline to the other.
pub struct BaselineDiff {
    /// The first [`MAX_FILES`] differing files, in path order.
    pub files: Vec<FindingView>,
    /// Every differing file, counted.
    pub counts: Counts,
    /// Package changes (`None`: one of the baselines records no package set).
    pub packages: Option<Vec<PackageRef>>,
}

/// The attributes that differ between two recordings of one path. A change of type
/// stands alone (nothing else compares across types).
fn differing(old: &Entry, new: &Entry) -> Vec<Attribute> {
    if old.file_type != new.file_type {
        return vec![Attribute::Type];
    }
    let is_dir = old.file_type == FileType::Dir;
    [
        (Attribute::Mode, old.mode != new.mode),
        (Attribute::Uid, old.uid != new.uid),
        (Attribute::Gid, old.gid != new.gid),
        (Attribute::Size, !is_dir && old.size != new.size),
        (
            Attribute::Content,
            old.blake3 != new.blake3 || old.sha256 != new.sha256,
        ),
        (Attribute::LinkTarget, old.link_target != new.link_target),
        (Attribute::Xattrs, old.xattrs != new.xattrs),
        (Attribute::Rdev, old.rdev != new.rdev),
    ]
    .into_iter()
    .filter_map(|(attribute, differs)| differs.then_some(attribute))
    .collect()
}

/// The page's view of one differing path.
fn row(
    change: FileChange,
    old: Option<&Entry>,
    new: Option<&Entry>,
    attributes: Vec<Attribute>,
) -> Option<FindingView> {
    let raw = new.or(old)?.path.as_slice();
    let (path, path_bytes_b64) = report_path(raw);
    let finding = Finding::File(Box::new(FileFinding {
        change,
        path: path.clone(),
        path_bytes_b64,
        attributes,
        severity: Severity::Low,
        rule: String::new(),
        baseline: old.map(EntryState::of),
        observed: new.map(EntryState::of),
        package: None,
        container: None,
    }));
    let value = serde_json::to_value(&finding).ok()?;
    let mut view = FindingView::of_value(&value, "file", &path);
    view.severity = "";
    Some(view)
}

/// Compares the baseline `old` with `new` (both verified against their digests).
pub fn compare(old: &[u8], new: &[u8]) -> Result<BaselineDiff, ReadError> {
    let old = BaselineReader::open(old, None)?;
    let new = BaselineReader::open(new, None)?;
    let mut diff = BaselineDiff {
        files: Vec::new(),
        counts: Counts::default(),
        packages: match (&old.meta().packages, &new.meta().packages) {
            (Some(o), Some(n)) => Some(package_changes(o, n)),
            _ => None,
        },
    };
    let keep = |diff: &mut BaselineDiff, change, o: Option<&Entry>, n: Option<&Entry>, a| {
        match change {
            FileChange::Added => diff.counts.added += 1,
            FileChange::Removed => diff.counts.removed += 1,
            FileChange::Modified => diff.counts.changed += 1,
        }
        if diff.files.len() < MAX_FILES {
            diff.files.extend(row(change, o, n, a));
        }
    };
    let mut olds = old.entries();
    let mut news = new.entries();
    let mut o = olds.next().transpose()?;
    let mut n = news.next().transpose()?;
    loop {
        let order = match (&o, &n) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(a), Some(b)) => path::cmp(&a.path, &b.path),
        };
        match order {
            Ordering::Less => {
                keep(&mut diff, FileChange::Removed, o.as_ref(), None, Vec::new());
                o = olds.next().transpose()?;
            }
            Ordering::Greater => {
                keep(&mut diff, FileChange::Added, None, n.as_ref(), Vec::new());
                n = news.next().transpose()?;
            }
            Ordering::Equal => {
                if let (Some(a), Some(b)) = (&o, &n) {
                    let attributes = differing(a, b);
                    if !attributes.is_empty() {
                        keep(
                            &mut diff,
                            FileChange::Modified,
                            Some(a),
                            Some(b),
                            attributes,
                        );
                    }
                }
                o = olds.next().transpose()?;
                n = news.next().transpose()?;
            }
        }
    }
    Ok(diff)
}

/// Packages installed, removed, or at another version in `new` than in `old` (by name
/// and architecture).
pub fn package_changes(old: &PackageSet, new: &PackageSet) -> Vec<PackageRef> {
    let index = |set: &PackageSet| -> BTreeMap<(String, String), String> {
        set.packages
            .iter()
            .map(|p| ((p.name.clone(), p.arch.clone()), p.version.clone()))
            .collect()
    };
    let (old, new) = (index(old), index(new));
    let mut changes = Vec::new();
    for ((name, arch), version) in &old {
        let change = match new.get(&(name.clone(), arch.clone())) {
            None => PackageChange::Removed,
            Some(now) if now != version => PackageChange::VersionChanged,
            Some(_) => continue,
        };
        changes.push(PackageRef {
            name: name.clone(),
            arch: arch.clone(),
            change,
            baseline_version: Some(version.clone()),
            observed_version: new.get(&(name.clone(), arch.clone())).cloned(),
        });
    }
    for ((name, arch), version) in &new {
        if !old.contains_key(&(name.clone(), arch.clone())) {
            changes.push(PackageRef {
                name: name.clone(),
                arch: arch.clone(),
                change: PackageChange::Installed,
                baseline_version: None,
                observed_version: Some(version.clone()),
            });
        }
    }
    changes.sort_by(|a, b| (&a.name, &a.arch).cmp(&(&b.name, &b.arch)));
    changes
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use driftwatch_protocol::baseline::{BaselineMeta, BaselineWriter};
    use driftwatch_protocol::package::{Package, PackageDb};

    pub(crate) fn baseline(image: &str, entries: &[Entry], packages: &[(&str, &str)]) -> Vec<u8> {
        let meta = BaselineMeta {
            image_id: Some(image.into()),
            created_at: "2026-01-01T00:00:00Z".into(),
            tool: "driftwatch test".into(),
            policy: String::new(),
            policy_digest: String::new(),
            hashes: vec!["blake3".into()],
            packages: Some(PackageSet::new(
                PackageDb::Dpkg,
                packages
                    .iter()
                    .map(|(name, version)| Package {
                        name: (*name).into(),
                        arch: "amd64".into(),
                        version: (*version).into(),
                    })
                    .collect(),
            )),
            runtime: None,
        };
        let mut entries = entries.to_vec();
        entries.sort_by(|a, b| path::cmp(&a.path, &b.path));
        let mut writer = BaselineWriter::new(Vec::new(), &meta).unwrap();
        for entry in &entries {
            writer.push(entry).unwrap();
        }
        writer.finish(None).unwrap().0
    }

    pub(crate) fn file(path: &str, mode: u32, content: u8, mtime: i64) -> Entry {
        Entry {
            path: path.as_bytes().to_vec(),
            file_type: FileType::File,
            mode,
            size: 10,
            blake3: Some([content; 32]),
            mtime: driftwatch_protocol::entry::Timestamp {
                secs: mtime,
                nanos: 0,
            },
            ..Entry::default()
        }
    }

    #[test]
    fn files_and_packages_that_differ_are_listed_with_what_changed() {
        let old = baseline(
            "web-1",
            &[
                file("/usr/bin/ssh", 0o755, 1, 1),
                file("/etc/motd", 0o644, 2, 1),
                file("/etc/gone", 0o644, 3, 1),
                file("/etc/touched", 0o644, 4, 1),
            ],
            &[("openssh", "1:9.2-1"), ("curl", "8.0-1"), ("vim", "9.0")],
        );
        let new = baseline(
            "web-2",
            &[
                file("/usr/bin/ssh", 0o4755, 9, 1),
                file("/etc/motd", 0o644, 2, 1),
                file("/etc/new", 0o600, 5, 1),
                // Only its modification time differs: not a difference of the image.
                file("/etc/touched", 0o644, 4, 99),
            ],
            &[("openssh", "1:9.6-1"), ("curl", "8.0-1"), ("jq", "1.7")],
        );
        let diff = compare(&old, &new).unwrap();
        assert_eq!(
            diff.counts,
            Counts {
                added: 1,
                removed: 1,
                changed: 1
            }
        );
        let summaries: Vec<&str> = diff.files.iter().map(|f| f.summary.as_str()).collect();
        assert_eq!(
            summaries,
            [
                "removed /etc/gone",
                "added /etc/new",
                "modified /usr/bin/ssh (mode, content)"
            ]
        );
        let ssh = &diff.files[2];
        let mode = ssh.attributes.iter().find(|a| a.name == "mode").unwrap();
        assert_eq!(
            (mode.before.as_str(), mode.after.as_str()),
            ("0755", "4755")
        );
        assert!(mode.changed);
        let packages: Vec<String> = diff
            .packages
            .unwrap()
            .iter()
            .map(PackageRef::describe)
            .collect();
        assert_eq!(packages.len(), 3, "{packages:?}");
        assert!(packages[0].starts_with("installed jq 1.7"), "{packages:?}");
        assert!(
            packages[1].starts_with("upgraded openssh 1:9.2-1 → 1:9.6-1"),
            "{packages:?}"
        );
        assert!(packages[2].starts_with("removed vim 9.0"), "{packages:?}");
        // The same baseline twice: nothing differs. A corrupt one is an error.
        let same = compare(&old, &old).unwrap();
        assert!(same.files.is_empty() && same.packages.unwrap().is_empty());
        let mut corrupt = new.clone();
        corrupt[20] ^= 1;
        assert!(compare(&old, &corrupt).is_err());
    }
}
