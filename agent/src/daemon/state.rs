//! What the daemon remembers across restarts, in `state_dir/state.json`.
//!
//! A drifted host stays drifted until it is replaced: a finding seen once is kept even
//! if the file is put back, and the host's mark is never lifted by the daemon itself —
//! not by a baseline that fails verification, nor by another baseline (swapped in, and
//! perhaps swapped back): remembered drift belongs to the host, not to a baseline.
//! The one exception is a mark the collector set: the collector may lift it again (an
//! operator unmarked the host there), but it never lifts a mark the host set itself.
//! Each finding has a stable identity ([`Finding::key`]), so a restart or a repeated
//! scan does not report the same drift as new; drift that changes under the same key
//! (a file made setuid after it was added, a binary replaced twice) is reported again,
//! as a changed finding. The file is replaced atomically (write,
//! fsync, rename), so a crash leaves either the old or the new state, never a torn one.

use driftwatch_protocol::report::{Finding, Severity};
use driftwatch_protocol::wire::MarkDirective;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The state file's name inside `state_dir`.
pub const STATE_FILE: &str = "state.json";

/// Why and since when the host is marked for replacement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    /// RFC 3339.
    pub since: String,
    /// One sentence, e.g. `critical finding: modified /usr/bin/ssh`.
    pub reason: String,
    /// Who decided (state files written before the collector existed say nothing:
    /// those marks are local).
    #[serde(default)]
    pub origin: MarkOrigin,
}

/// Who marked the host.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MarkOrigin {
    /// The host itself: `[replacement] mark_severity`, or a baseline that failed
    /// verification. Only replacing the host clears it.
    #[default]
    Local,
    /// The collector's fleet policy; the collector may lift it again.
    Collector,
}

/// What a collector verdict changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Directed {
    /// Nothing: the host was already marked, or is not and need not be.
    Unchanged,
    /// The host is now marked, by the collector.
    Marked(Mark),
    /// The collector lifted its own mark.
    Lifted(Mark),
}

/// A finding as remembered.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Remembered {
    /// When it was first seen (RFC 3339).
    pub first_seen: String,
    /// When it was last seen.
    pub last_seen: String,
    /// When what it says last changed (a changed finding), if it ever did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_changed: Option<String>,
    /// The finding as last seen.
    pub finding: Finding,
    /// Not in the spool yet: spooling it failed (a full or read-only state directory)
    /// and is retried. Saved, so that a restart still sends it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unspooled: bool,
}

impl Remembered {
    /// When what it says was last found new or changed: the time of its event.
    pub fn reported_at(&self) -> &str {
        self.last_changed.as_deref().unwrap_or(&self.first_seen)
    }
}

/// `finding`, with the package `known` was attributed to when `finding` names none: a
/// re-check of a few paths does not read the package database, and must not make the
/// attribution come and go (each time a changed finding). A finding that gains its
/// package is a change: the collector regroups it.
fn keep_attribution(known: &Finding, finding: &Finding) -> Finding {
    let mut finding = finding.clone();
    if let (Finding::File(known), Finding::File(file)) = (known, &mut finding) {
        if file.package.is_none() {
            file.package.clone_from(&known.package);
        }
    }
    finding
}

/// What [`State::record`] found worth reporting.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Recorded {
    /// Findings under a key never seen before.
    pub new: Vec<Finding>,
    /// Findings under a known key that now say something else (see [`substance`]).
    pub changed: Vec<Finding>,
}

impl Recorded {
    /// New and changed findings, in that order: what the collector must hear about.
    pub fn to_report(&self) -> Vec<Finding> {
        self.new.iter().chain(&self.changed).cloned().collect()
    }
}

/// A finding without what changes while the drift stays the same: a process's pid and
/// command line (the same foreign binary restarted), a listener's pid, a file's mtime
/// (a rewrite with the same content; any change of content, mode, owner or type shows
/// elsewhere in the finding).
pub fn substance(finding: &Finding) -> Finding {
    let mut finding = finding.clone();
    match &mut finding {
        Finding::File(file) => {
            if let Some(observed) = file.observed.as_mut() {
                observed.mtime.clear();
            }
        }
        Finding::Process(process) => {
            process.pid = 0;
            process.cmdline.clear();
        }
        Finding::Listener(listener) => listener.pid = None,
        Finding::Package(_)
        | Finding::PackageFile(_)
        | Finding::KernelModule(_)
        | Finding::Mount(_)
        | Finding::Baseline(_) => {}
    }
    finding
}

/// The durable state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// The baseline last in use. Another baseline keeps the findings and the mark.
    pub baseline_digest: String,
    /// Set once the host is marked for replacement; never cleared by the daemon.
    pub mark: Option<Mark>,
    /// Every finding seen, by [`Finding::key`].
    pub findings: BTreeMap<String, Remembered>,
    /// When the last full verification finished.
    pub last_full_verification: Option<String>,
}

impl State {
    /// Loads the state and sets `baseline_digest` as the baseline in use; a missing file
    /// is a fresh state. A state made under another baseline (or under none that
    /// verified) keeps its findings and mark: swapping the baseline, or breaking it,
    /// must not erase drift. A corrupt file is an error: silently forgetting a host's
    /// drift would un-mark it.
    pub fn load(state_dir: &Path, baseline_digest: &str) -> io::Result<State> {
        let path = state_dir.join(STATE_FILE);
        let fresh = State {
            baseline_digest: baseline_digest.to_string(),
            ..State::default()
        };
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(fresh),
            Err(err) => return Err(err),
        };
        let mut state: State = serde_json::from_slice(&bytes).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is corrupt: {e}", path.display()),
            )
        })?;
        state.baseline_digest = fresh.baseline_digest;
        Ok(state)
    }

    /// Like [`State::load`], but a corrupt file does not stop the daemon: it is kept
    /// aside as `state.json.corrupt` (for the investigation) and a fresh state is used,
    /// with the reason returned for the log and the status. The boot check then finds
    /// again whatever drift the lost state held, and marks the host again if it must.
    pub fn load_or_recover(
        state_dir: &Path,
        baseline_digest: &str,
    ) -> io::Result<(State, Option<String>)> {
        match State::load(state_dir, baseline_digest) {
            Ok(state) => Ok((state, None)),
            Err(err) if err.kind() == io::ErrorKind::InvalidData => {
                let path = state_dir.join(STATE_FILE);
                let aside = state_dir.join(format!("{STATE_FILE}.corrupt"));
                let kept = match fs::rename(&path, &aside) {
                    Ok(()) => format!("kept as {}", aside.display()),
                    Err(rename) => format!("could not be moved aside: {rename}"),
                };
                let fresh = State {
                    baseline_digest: baseline_digest.to_string(),
                    ..State::default()
                };
                Ok((
                    fresh,
                    Some(format!(
                        "{err}; {kept}; starting fresh, the boot check finds the drift again"
                    )),
                ))
            }
            Err(err) => Err(err),
        }
    }

    /// Writes the state atomically.
    pub fn save(&self, state_dir: &Path) -> io::Result<()> {
        fs::create_dir_all(state_dir)?;
        let path = state_dir.join(STATE_FILE);
        let temp: PathBuf = state_dir.join(format!(".{STATE_FILE}.tmp"));
        let bytes = serde_json::to_vec_pretty(self).map_err(io::Error::other)?;
        let mut file = fs::File::create(&temp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        fs::rename(&temp, &path)?;
        if let Ok(dir) = fs::File::open(state_dir) {
            // Durability of the rename itself; the data is already safe.
            let _ = dir.sync_all();
        }
        Ok(())
    }

    /// Merges findings seen at `now`; returns the ones that are new and the ones whose
    /// [`substance`] changed since last seen (both are reported again).
    pub fn record(&mut self, findings: &[Finding], now: &str) -> Recorded {
        let mut recorded = Recorded::default();
        for finding in findings {
            let key = finding.key();
            match self.findings.get_mut(&key) {
                Some(known) => {
                    let finding = keep_attribution(&known.finding, finding);
                    if substance(&known.finding) != substance(&finding) {
                        recorded.changed.push(finding.clone());
                        known.last_changed = Some(now.to_string());
                    }
                    known.last_seen = now.to_string();
                    known.finding = finding;
                }
                None => {
                    recorded.new.push(finding.clone());
                    self.findings.insert(
                        key,
                        Remembered {
                            first_seen: now.to_string(),
                            last_seen: now.to_string(),
                            last_changed: None,
                            finding: finding.clone(),
                            unspooled: false,
                        },
                    );
                }
            }
        }
        recorded
    }

    /// Marks `findings` (by key; all of them with `None`) as not spooled yet.
    pub fn set_unspooled(&mut self, findings: Option<&[Finding]>) {
        match findings {
            Some(findings) => {
                for finding in findings {
                    if let Some(known) = self.findings.get_mut(&finding.key()) {
                        known.unspooled = true;
                    }
                }
            }
            None => self.findings.values_mut().for_each(|r| r.unspooled = true),
        }
    }

    /// Every finding is in the spool.
    pub fn clear_unspooled(&mut self) {
        self.findings.values_mut().for_each(|r| r.unspooled = false);
    }

    /// Takes in findings the spool holds for the collector but this state may not (a
    /// kill between the spool's append and the state's save): without them the boot
    /// check would find them new again and spool them a second time, under new ids the
    /// collector cannot tell from new drift. `spooled` is oldest first, with each
    /// event's time; a finding not spooled yet since is newer than any of them.
    pub fn absorb_spooled<'a>(
        &mut self,
        spooled: impl IntoIterator<Item = (&'a Finding, &'a str)>,
    ) {
        for (finding, at) in spooled {
            if self
                .findings
                .get(&finding.key())
                .is_some_and(|known| known.unspooled)
            {
                continue;
            }
            self.record(std::slice::from_ref(finding), at);
        }
    }

    /// Marks the host when a remembered finding is at or above `threshold` and it is
    /// not marked yet; returns the new mark.
    pub fn mark_if_needed(&mut self, threshold: Severity, now: &str) -> Option<Mark> {
        if self.mark.is_some() {
            return None;
        }
        let worst = self
            .findings
            .values()
            .filter(|r| r.finding.severity() >= threshold)
            .max_by_key(|r| r.finding.severity())?;
        let mark = Mark {
            since: now.to_string(),
            reason: format!(
                "{} finding: {}",
                worst.finding.severity().name(),
                worst.finding.key()
            ),
            origin: MarkOrigin::Local,
        };
        self.mark = Some(mark.clone());
        Some(mark)
    }

    /// Marks the host for a reason that is not a finding (a baseline that fails
    /// verification); keeps an earlier mark.
    pub fn mark(&mut self, reason: String, now: &str) -> Option<Mark> {
        if self.mark.is_some() {
            return None;
        }
        let mark = Mark {
            since: now.to_string(),
            reason,
            origin: MarkOrigin::Local,
        };
        self.mark = Some(mark.clone());
        Some(mark)
    }

    /// Applies the collector's verdict on the host: a mark from the collector marks an
    /// unmarked host (an existing mark, local or not, is kept as it is); no mark lifts
    /// only a mark the collector set — a local mark stays until the host is replaced.
    pub fn apply_directive(&mut self, directive: Option<&MarkDirective>) -> Directed {
        match (directive, &self.mark) {
            (Some(directive), None) => {
                let mark = Mark {
                    since: directive.since.clone(),
                    reason: directive.reason.clone(),
                    origin: MarkOrigin::Collector,
                };
                self.mark = Some(mark.clone());
                Directed::Marked(mark)
            }
            (None, Some(mark)) if mark.origin == MarkOrigin::Collector => {
                let lifted = mark.clone();
                self.mark = None;
                Directed::Lifted(lifted)
            }
            _ => Directed::Unchanged,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use driftwatch_protocol::report::{EntryState, FileChange, FileFinding};

    fn file(path: &str, severity: Severity) -> Finding {
        Finding::File(Box::new(FileFinding {
            change: FileChange::Modified,
            path: path.into(),
            path_bytes_b64: None,
            attributes: vec![],
            severity,
            rule: "r".into(),
            baseline: None,
            observed: None,
            package: None,
            container: None,
        }))
    }

    #[test]
    fn findings_are_remembered_once_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = State::load(dir.path(), "blake3:a").unwrap();
        let new = state.record(&[file("/a", Severity::Low)], "t1");
        assert_eq!(new.new.len(), 1);
        assert_eq!(
            state.record(&[file("/a", Severity::Low)], "t2"),
            Recorded::default()
        );
        assert_eq!(state.mark_if_needed(Severity::Critical, "t2"), None);
        state.record(&[file("/usr/bin/x", Severity::Critical)], "t3");
        let mark = state.mark_if_needed(Severity::Critical, "t3").unwrap();
        assert!(mark.reason.contains("/usr/bin/x"), "{mark:?}");
        state.save(dir.path()).unwrap();

        let again = State::load(dir.path(), "blake3:a").unwrap();
        assert_eq!(again, state);
        assert_eq!(again.findings["file:/a"].first_seen, "t1");
        // Another baseline, one that failed verification, and the first one back:
        // the findings and the mark stay.
        for digest in ["blake3:b", "untrusted", "blake3:a"] {
            let swapped = State::load(dir.path(), digest).unwrap();
            assert_eq!(swapped.baseline_digest, digest);
            assert_eq!(swapped.findings, state.findings);
            assert_eq!(swapped.mark, state.mark);
            swapped.save(dir.path()).unwrap();
        }
        // A corrupt state file is an error, not a silent reset.
        fs::write(dir.path().join(STATE_FILE), b"{not json").unwrap();
        assert!(State::load(dir.path(), "blake3:a").is_err());
    }

    fn with_observed(finding: &Finding, change: impl FnOnce(&mut EntryState)) -> Finding {
        let mut finding = finding.clone();
        if let Finding::File(file) = &mut finding {
            change(file.observed.get_or_insert_with(|| EntryState {
                file_type: "file".into(),
                mode: "644".into(),
                uid: 0,
                gid: 0,
                size: 1,
                mtime: "t".into(),
                rdev: None,
                blake3: Some("aa".into()),
                sha256: None,
                link_target: None,
                xattrs: Default::default(),
            }));
        }
        finding
    }

    #[test]
    fn changed_drift_is_reported_again_and_noise_is_not() {
        let mut state = State::default();
        let added = with_observed(&file("/etc/x", Severity::Medium), |_| {});
        assert_eq!(
            state.record(std::slice::from_ref(&added), "t1").new,
            std::slice::from_ref(&added)
        );
        // Touched (same content): the same drift.
        let touched = with_observed(&added, |o| o.mtime = "t2".into());
        assert_eq!(state.record(&[touched], "t2"), Recorded::default());
        // Made setuid: changed, reported, remembered as last seen.
        let setuid = with_observed(&added, |o| o.mode = "4755".into());
        let recorded = state.record(std::slice::from_ref(&setuid), "t3");
        assert_eq!(recorded.changed, std::slice::from_ref(&setuid));
        assert_eq!(recorded.to_report(), std::slice::from_ref(&setuid));
        let remembered = &state.findings["file:/etc/x"];
        assert_eq!(remembered.finding, setuid);
        assert_eq!(
            (
                remembered.first_seen.as_str(),
                remembered.last_changed.as_deref()
            ),
            ("t1", Some("t3"))
        );
        // Replaced again: another change; a severity change is one too.
        let replaced = with_observed(&setuid, |o| o.blake3 = Some("bb".into()));
        assert_eq!(
            state
                .record(std::slice::from_ref(&replaced), "t4")
                .changed
                .len(),
            1
        );
        let graver = with_observed(&file("/etc/x", Severity::Critical), |o| {
            *o = match &replaced {
                Finding::File(f) => f.observed.clone().unwrap(),
                _ => unreachable!(),
            }
        });
        assert_eq!(state.record(&[graver], "t5").changed.len(), 1);
        // A process restarted (new pid, same binary) is the same drift.
        let process = |pid: i32| {
            Finding::Process(driftwatch_protocol::report::ProcessFinding {
                reason: driftwatch_protocol::report::ProcessReason::MutablePath,
                pid,
                exe: "/tmp/x".into(),
                cmdline: format!("/tmp/x {pid}"),
                uid: 0,
                user: None,
                severity: Severity::Critical,
                container: None,
            })
        };
        assert_eq!(state.record(&[process(1)], "t6").new.len(), 1);
        assert_eq!(state.record(&[process(2)], "t7"), Recorded::default());
        // A file tied to its package by a full check: a change, sent again; a later
        // re-check of the path alone (no package read) keeps the attribution.
        let mut attributed = replaced.clone();
        if let Finding::File(f) = &mut attributed {
            f.package = Some(driftwatch_protocol::report::PackageRef {
                name: "podman".into(),
                arch: "amd64".into(),
                change: driftwatch_protocol::report::PackageChange::Installed,
                baseline_version: None,
                observed_version: Some("4.3.1".into()),
            });
        }
        let mut state = State::default();
        state.record(std::slice::from_ref(&replaced), "t8");
        assert_eq!(
            state
                .record(std::slice::from_ref(&attributed), "t9")
                .changed,
            [attributed.clone()]
        );
        assert_eq!(state.record(&[replaced], "t10"), Recorded::default());
        assert_eq!(state.findings["file:/etc/x"].finding, attributed);
    }

    fn directive(reason: &str) -> MarkDirective {
        MarkDirective {
            reason: reason.into(),
            since: "t9".into(),
        }
    }

    #[test]
    fn the_collector_marks_and_lifts_only_its_own_mark() {
        let mut state = State::default();
        // No verdict on an unmarked host: nothing happens.
        assert_eq!(state.apply_directive(None), Directed::Unchanged);
        let Directed::Marked(mark) = state.apply_directive(Some(&directive("budget ok"))) else {
            panic!("not marked: {state:?}");
        };
        assert_eq!(mark.origin, MarkOrigin::Collector);
        assert_eq!(
            (mark.reason.as_str(), mark.since.as_str()),
            ("budget ok", "t9")
        );
        // Repeated verdicts change nothing; another reason does not replace the mark.
        assert_eq!(
            state.apply_directive(Some(&directive("again"))),
            Directed::Unchanged
        );
        assert_eq!(state.mark.as_ref().unwrap().reason, "budget ok");
        // An operator unmarked the host at the collector.
        assert_eq!(state.apply_directive(None), Directed::Lifted(mark));
        assert_eq!(state.mark, None);
    }

    #[test]
    fn the_collector_never_lifts_a_local_mark() {
        let mut state = State::default();
        state.record(&[file("/usr/bin/x", Severity::Critical)], "t1");
        let local = state.mark_if_needed(Severity::Critical, "t1").unwrap();
        assert_eq!(local.origin, MarkOrigin::Local);
        assert_eq!(state.apply_directive(None), Directed::Unchanged);
        assert_eq!(
            state.apply_directive(Some(&directive("fleet"))),
            Directed::Unchanged
        );
        assert_eq!(state.mark, Some(local));
        // A baseline failure is local too.
        let mut state = State::default();
        state.mark("baseline failed verification".into(), "t1");
        assert_eq!(state.apply_directive(None), Directed::Unchanged);
        assert!(state.mark.is_some());
    }

    #[test]
    fn marks_in_old_state_files_are_local() {
        let old = r#"{"baseline_digest":"blake3:a","mark":{"since":"t","reason":"r"},"findings":{},"last_full_verification":null}"#;
        let state: State = serde_json::from_str(old).unwrap();
        assert_eq!(state.mark.unwrap().origin, MarkOrigin::Local);
    }
}
