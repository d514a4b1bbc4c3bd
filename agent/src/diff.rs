//! Baseline × observation → findings. Pure: no I/O, no clock.
//!
//! Both inputs arrive sorted in walk order, so comparing a live tree (or a second
//! baseline) with a baseline is a merge-join: [`BaselineCursor`] walks the baseline
//! alongside the observations, and [`Differ`] turns each pairing into findings, graded
//! by the policy rule that covers the path.

use crate::policy::{AttributeSet, PathState, Policy, Rule};
use driftwatch_protocol::entry::{Entry, FileType};
use driftwatch_protocol::package::PackageSet;
use driftwatch_protocol::path;
use driftwatch_protocol::report::{
    report_path, Attribute, EntryState, FileChange, FileFinding, Finding, Severity,
};
use driftwatch_protocol::report::{PackageChange, PackageFinding};
use std::cmp::Ordering;
use std::collections::BTreeMap;

/// The attributes that differ between two recordings of one path, limited to `checked`.
///
/// A change of type is always reported (and alone: nothing else compares across types).
/// Size and mtime are not compared for directories: both change whenever an entry is
/// added or removed, which is already reported for that entry. Content is compared only
/// when both sides were hashed.
pub fn changed_attributes(before: &Entry, after: &Entry, checked: AttributeSet) -> Vec<Attribute> {
    if before.file_type != after.file_type {
        return vec![Attribute::Type];
    }
    let is_dir = before.file_type == FileType::Dir;
    Attribute::ALL
        .into_iter()
        .filter(|attribute| checked.contains(*attribute))
        .filter(|attribute| match attribute {
            Attribute::Type => false,
            Attribute::Mode => before.mode != after.mode,
            Attribute::Uid => before.uid != after.uid,
            Attribute::Gid => before.gid != after.gid,
            Attribute::Size => !is_dir && before.size != after.size,
            Attribute::Content => match (before.blake3, after.blake3) {
                (Some(b), Some(a)) => {
                    b != a || matches!((before.sha256, after.sha256), (Some(b), Some(a)) if b != a)
                }
                // Not hashed now (above the size limit, unreadable): a size that
                // differs is a content change all the same.
                (Some(_), None) => !is_dir && before.size != after.size,
                _ => false,
            },
            Attribute::LinkTarget => before.link_target != after.link_target,
            Attribute::Xattrs => before.xattrs != after.xattrs,
            Attribute::Rdev => before.rdev != after.rdev,
            Attribute::Mtime => !is_dir && before.mtime != after.mtime,
        })
        .collect()
}

/// Privilege gained is critical whatever the rule says: a new setuid/setgid bit, or a
/// new or changed file capability.
fn gains_privilege(before: Option<&Entry>, after: &Entry) -> bool {
    let set_id_gained = after.mode & 0o6000 & !before.map_or(0, |b| b.mode & 0o6000) != 0;
    let capability = after.xattr(b"security.capability");
    let capability_gained =
        capability.is_some() && capability != before.and_then(|b| b.xattr(b"security.capability"));
    set_id_gained || capability_gained
}

/// Builds a file finding.
pub fn file_finding(
    change: FileChange,
    before: Option<&Entry>,
    after: Option<&Entry>,
    attributes: Vec<Attribute>,
    rule: &Rule,
) -> Option<Finding> {
    let raw_path = after.or(before)?.path.as_slice();
    let escalated = after.is_some_and(|a| gains_privilege(before, a));
    let (path, path_bytes_b64) = report_path(raw_path);
    Some(Finding::File(Box::new(FileFinding {
        change,
        path,
        path_bytes_b64,
        attributes,
        severity: if escalated {
            Severity::Critical
        } else {
            rule.severity
        },
        rule: rule.name.clone(),
        baseline: before.map(EntryState::of),
        observed: after.map(EntryState::of),
        package: None,
    })))
}

/// Collects findings from pairings of baseline and observed entries.
pub struct Differ<'a> {
    policy: &'a Policy,
    skip: &'a [Vec<u8>],
    unknown_subtrees: Vec<Vec<u8>>,
    findings: Vec<Finding>,
}

impl<'a> Differ<'a> {
    /// Grades with `policy`; paths in `skip` (e.g. the baseline file itself) are never
    /// reported.
    pub fn new(policy: &'a Policy, skip: &'a [Vec<u8>]) -> Self {
        Differ {
            policy,
            skip,
            unknown_subtrees: Vec::new(),
            findings: Vec::new(),
        }
    }

    /// An entry seen now, with its baseline entry if there is one. `unsettled`: its
    /// content was to be compared but it kept changing while it was read, so the
    /// content counts as changed (whatever else compares equal).
    pub fn observed(
        &mut self,
        before: Option<&Entry>,
        after: &Entry,
        state: &PathState,
        unsettled: bool,
    ) {
        let rule = self.policy.rule(state);
        let finding = match before {
            None => file_finding(FileChange::Added, None, Some(after), Vec::new(), rule),
            Some(before) => {
                // Privilege gained is reported even where the rule does not compare
                // mode or xattrs.
                let checked = if gains_privilege(Some(before), after) {
                    rule.attributes
                        .with(Attribute::Mode)
                        .with(Attribute::Xattrs)
                } else {
                    rule.attributes
                };
                let mut changed = changed_attributes(before, after, checked);
                if unsettled
                    && checked.contains(Attribute::Content)
                    && !changed.contains(&Attribute::Content)
                    && before.blake3.is_some()
                {
                    changed.push(Attribute::Content);
                }
                if changed.is_empty() {
                    return;
                }
                file_finding(
                    FileChange::Modified,
                    Some(before),
                    Some(after),
                    changed,
                    rule,
                )
            }
        };
        self.findings.extend(finding);
    }

    /// A baseline entry with no observed counterpart: removed, unless it is outside
    /// what the current policy scans or below something that could not be read.
    pub fn unmatched_baseline(&mut self, before: &Entry) {
        let raw = before.path.as_slice();
        if self.skip.iter().any(|s| s == raw)
            || !self.policy.in_scope(raw)
            || self
                .unknown_subtrees
                .iter()
                .any(|u| path::is_within(raw, u))
        {
            return;
        }
        let state = self.policy.state_for(raw);
        if state.excluded {
            return;
        }
        let rule = self.policy.rule(&state);
        self.findings.extend(file_finding(
            FileChange::Removed,
            Some(before),
            None,
            Vec::new(),
            rule,
        ));
    }

    /// Nothing at or below `path` could be seen: do not call it removed.
    pub fn subtree_unknown(&mut self, path: Vec<u8>) {
        self.unknown_subtrees.push(path);
    }

    /// The findings, in walk order.
    pub fn finish(self) -> Vec<Finding> {
        self.findings
    }
}

/// Package findings: the baseline's package set against the one installed now.
///
/// Packages are keyed by name and architecture; one key may carry several versions
/// (rpm installs kernels side by side). A version gone and another come under one key
/// is an upgrade (`version_changed`); what remains unpaired is installed or removed.
pub fn package_findings(
    before: &PackageSet,
    after: &PackageSet,
    severity: Severity,
) -> Vec<Finding> {
    type Versions<'a> = BTreeMap<(&'a str, &'a str), Vec<&'a str>>;
    fn by_key(set: &PackageSet) -> Versions<'_> {
        let mut map = Versions::new();
        for p in &set.packages {
            map.entry((p.name.as_str(), p.arch.as_str()))
                .or_default()
                .push(p.version.as_str());
        }
        map
    }
    let (old, new) = (by_key(before), by_key(after));
    let mut keys: Vec<&(&str, &str)> = old.keys().chain(new.keys()).collect();
    keys.sort();
    keys.dedup();
    let mut findings = Vec::new();
    for key in keys {
        let was = old.get(key).map_or(&[][..], Vec::as_slice);
        let is = new.get(key).map_or(&[][..], Vec::as_slice);
        let gone: Vec<&str> = was.iter().filter(|v| !is.contains(v)).copied().collect();
        let came: Vec<&str> = is.iter().filter(|v| !was.contains(v)).copied().collect();
        let paired = gone.len().min(came.len());
        let finding = |change, baseline_version: Option<&str>, observed_version: Option<&str>| {
            Finding::Package(PackageFinding {
                change,
                name: key.0.to_string(),
                arch: key.1.to_string(),
                db: after.db,
                baseline_version: baseline_version.map(str::to_string),
                observed_version: observed_version.map(str::to_string),
                severity,
            })
        };
        for (old_version, new_version) in gone.iter().zip(came.iter()) {
            findings.push(finding(
                PackageChange::VersionChanged,
                Some(old_version),
                Some(new_version),
            ));
        }
        for version in &gone[paired..] {
            findings.push(finding(PackageChange::Removed, Some(version), None));
        }
        for version in &came[paired..] {
            findings.push(finding(PackageChange::Installed, None, Some(version)));
        }
    }
    findings
}

/// Walks a sorted stream of baseline entries in step with sorted observations.
pub struct BaselineCursor<I> {
    entries: I,
    peeked: Option<Entry>,
}

impl<I, E> BaselineCursor<I>
where
    I: Iterator<Item = Result<Entry, E>>,
{
    /// Starts at the first baseline entry.
    pub fn new(entries: I) -> Self {
        BaselineCursor {
            entries,
            peeked: None,
        }
    }

    fn peek(&mut self) -> Result<Option<&Entry>, E> {
        if self.peeked.is_none() {
            self.peeked = self.entries.next().transpose()?;
        }
        Ok(self.peeked.as_ref())
    }

    /// Hands every baseline entry ordered before `target` to `unmatched`, then returns
    /// the entry at exactly `target`, if any.
    pub fn seek(
        &mut self,
        target: &[u8],
        mut unmatched: impl FnMut(&Entry),
    ) -> Result<Option<Entry>, E> {
        while let Some(entry) = self.peek()? {
            match path::cmp(&entry.path, target) {
                Ordering::Less => {
                    unmatched(entry);
                    self.peeked = None;
                }
                Ordering::Equal => return Ok(self.peeked.take()),
                Ordering::Greater => return Ok(None),
            }
        }
        Ok(None)
    }

    /// Hands every remaining baseline entry to `unmatched`.
    pub fn drain(&mut self, mut unmatched: impl FnMut(&Entry)) -> Result<(), E> {
        while let Some(entry) = self.peek()? {
            unmatched(entry);
            self.peeked = None;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use driftwatch_protocol::entry::Timestamp;

    fn file(path: &str) -> Entry {
        Entry {
            path: path.as_bytes().to_vec(),
            file_type: FileType::File,
            mode: 0o755,
            size: 10,
            blake3: Some([1; 32]),
            mtime: Timestamp {
                secs: 100,
                nanos: 0,
            },
            ..Entry::default()
        }
    }

    fn all() -> AttributeSet {
        AttributeSet::of(&Attribute::ALL)
    }

    #[test]
    fn attribute_table() {
        type Mutation = fn(&mut Entry);
        let cases: [(&str, Mutation, &[Attribute]); 9] = [
            ("unchanged", |_| {}, &[]),
            (
                "content",
                |e| e.blake3 = Some([2; 32]),
                &[Attribute::Content],
            ),
            ("mode", |e| e.mode = 0o4755, &[Attribute::Mode]),
            (
                "owner",
                |e| {
                    e.uid = 1;
                    e.gid = 2
                },
                &[Attribute::Uid, Attribute::Gid],
            ),
            (
                "size+mtime",
                |e| {
                    e.size = 11;
                    e.mtime.secs = 5
                },
                &[Attribute::Size, Attribute::Mtime],
            ),
            (
                "type wins",
                |e| {
                    e.file_type = FileType::Dir;
                    e.mode = 0
                },
                &[Attribute::Type],
            ),
            (
                "xattr",
                |e| e.xattrs = vec![(b"security.ima".to_vec(), vec![1])],
                &[Attribute::Xattrs],
            ),
            ("unhashed", |e| e.blake3 = None, &[]),
            ("sha256 only differs", |e| e.sha256 = Some([3; 32]), &[]),
        ];
        for (name, mutate, expected) in cases {
            let before = file("/f");
            let mut after = before.clone();
            mutate(&mut after);
            assert_eq!(
                changed_attributes(&before, &after, all()),
                expected,
                "{name}"
            );
        }
        let mut link = file("/l");
        link.file_type = FileType::Symlink;
        link.link_target = Some(b"a".to_vec());
        let mut retargeted = link.clone();
        retargeted.link_target = Some(b"b".to_vec());
        assert_eq!(
            changed_attributes(&link, &retargeted, all()),
            [Attribute::LinkTarget]
        );
        let mut dir = file("/d");
        dir.file_type = FileType::Dir;
        let mut grown = dir.clone();
        grown.size = 4096;
        grown.mtime.secs = 1;
        assert!(changed_attributes(&dir, &grown, all()).is_empty());
        let only_content = AttributeSet::of(&[Attribute::Content]);
        let mut chmod = file("/f");
        chmod.mode = 0o777;
        assert!(changed_attributes(&file("/f"), &chmod, only_content).is_empty());
    }

    fn low() -> Rule {
        Rule {
            name: "low".into(),
            attributes: all(),
            severity: Severity::Low,
        }
    }

    #[test]
    fn gaining_setuid_or_capability_is_critical() {
        let before = file("/usr/share/x");
        let mut after = before.clone();
        after.mode |= 0o4000;
        let finding = file_finding(
            FileChange::Modified,
            Some(&before),
            Some(&after),
            vec![],
            &low(),
        );
        assert_eq!(finding.unwrap().severity(), Severity::Critical);
        let mut cap = file("/new");
        cap.xattrs = vec![(b"security.capability".to_vec(), vec![1])];
        let finding = file_finding(FileChange::Added, None, Some(&cap), vec![], &low());
        assert_eq!(finding.unwrap().severity(), Severity::Critical);
        let finding = file_finding(FileChange::Removed, Some(&cap), None, vec![], &low());
        assert_eq!(finding.unwrap().severity(), Severity::Low);
    }

    #[test]
    fn package_sets_compare_by_name_and_arch() {
        use driftwatch_protocol::package::{Package, PackageDb};
        let set = |packages: &[(&str, &str, &str)]| {
            PackageSet::new(
                PackageDb::Rpm,
                packages
                    .iter()
                    .map(|(name, arch, version)| Package {
                        name: name.to_string(),
                        arch: arch.to_string(),
                        version: version.to_string(),
                    })
                    .collect(),
            )
        };
        let before = set(&[
            ("curl", "x86_64", "7.1"),
            ("kernel", "x86_64", "5.14-1"),
            ("kernel", "x86_64", "5.14-2"),
            ("gone", "noarch", "1"),
            ("same", "noarch", "1"),
        ]);
        let after = set(&[
            ("curl", "x86_64", "7.2"),
            ("kernel", "x86_64", "5.14-2"),
            ("kernel", "x86_64", "5.14-3"),
            ("kernel", "x86_64", "5.14-4"),
            ("new", "x86_64", "2"),
            ("same", "noarch", "1"),
        ]);
        let summary: Vec<String> = package_findings(&before, &after, Severity::High)
            .into_iter()
            .map(|f| match f {
                Finding::Package(p) => format!(
                    "{:?} {} {:?}->{:?}",
                    p.change, p.name, p.baseline_version, p.observed_version
                ),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(
            summary,
            [
                "VersionChanged curl Some(\"7.1\")->Some(\"7.2\")",
                "Removed gone Some(\"1\")->None",
                "VersionChanged kernel Some(\"5.14-1\")->Some(\"5.14-3\")",
                "Installed kernel None->Some(\"5.14-4\")",
                "Installed new None->Some(\"2\")",
            ]
        );
        assert!(package_findings(&after, &after, Severity::High).is_empty());
    }

    #[test]
    fn merge_join_pairs_sorted_streams() {
        let policy = Policy::parse("exclude = [\"/gone-but-excluded\"]").unwrap();
        let baseline = vec![
            file("/a"),
            file("/b"),
            file("/gone-but-excluded"),
            file("/u/x"),
            file("/z"),
        ];
        let observed = vec![file("/b"), file("/c")];
        let mut cursor = BaselineCursor::new(baseline.into_iter().map(Ok::<_, ()>));
        let mut differ = Differ::new(&policy, &[]);
        differ.subtree_unknown(b"/u".to_vec());
        for after in &observed {
            let mut unmatched = Vec::new();
            let before = cursor
                .seek(&after.path, |b| unmatched.push(b.clone()))
                .unwrap();
            unmatched.iter().for_each(|b| differ.unmatched_baseline(b));
            let state = policy.state_for(&after.path);
            differ.observed(before.as_ref(), after, &state, false);
        }
        cursor.drain(|b| differ.unmatched_baseline(b)).unwrap();
        let summary: Vec<(String, FileChange)> = differ
            .finish()
            .into_iter()
            .map(|finding| match finding {
                Finding::File(f) => (f.path, f.change),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("/a".to_string(), FileChange::Removed),
                ("/c".to_string(), FileChange::Added),
                ("/z".to_string(), FileChange::Removed),
            ]
        );
    }
}
