//! What the daemon remembers across restarts, in `state_dir/state.json`.
//!
//! A drifted host stays drifted until it is replaced: a finding seen once is kept even
//! if the file is put back, and the host's mark is never lifted by the daemon itself.
//! The one exception is a mark the collector set: the collector may lift it again (an
//! operator unmarked the host there), but it never lifts a mark the host set itself.
//! Each finding has a stable identity ([`Finding::key`]), so a restart or a repeated
//! scan does not report the same drift as new. The file is replaced atomically (write,
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
    /// The finding as last seen.
    pub finding: Finding,
}

/// The durable state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// The baseline this state belongs to; another baseline starts a fresh state.
    pub baseline_digest: String,
    /// Set once the host is marked for replacement; never cleared by the daemon.
    pub mark: Option<Mark>,
    /// Every finding seen, by [`Finding::key`].
    pub findings: BTreeMap<String, Remembered>,
    /// When the last full verification finished.
    pub last_full_verification: Option<String>,
}

impl State {
    /// Loads the state for `baseline_digest`; a missing file, or one made for another
    /// baseline, is a fresh state. A corrupt file is an error: silently forgetting a
    /// host's drift would un-mark it.
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
        let state: State = serde_json::from_slice(&bytes).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is corrupt: {e}", path.display()),
            )
        })?;
        Ok(if state.baseline_digest == baseline_digest {
            state
        } else {
            fresh
        })
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

    /// Merges findings seen at `now`; returns the ones that are new.
    pub fn record(&mut self, findings: &[Finding], now: &str) -> Vec<Finding> {
        let mut new = Vec::new();
        for finding in findings {
            let key = finding.key();
            match self.findings.get_mut(&key) {
                Some(known) => {
                    known.last_seen = now.to_string();
                    known.finding = finding.clone();
                }
                None => {
                    new.push(finding.clone());
                    self.findings.insert(
                        key,
                        Remembered {
                            first_seen: now.to_string(),
                            last_seen: now.to_string(),
                            finding: finding.clone(),
                        },
                    );
                }
            }
        }
        new
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
    use driftwatch_protocol::report::{FileChange, FileFinding};

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
            container: None,
        }))
    }

    #[test]
    fn findings_are_remembered_once_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = State::load(dir.path(), "blake3:a").unwrap();
        let new = state.record(&[file("/a", Severity::Low)], "t1");
        assert_eq!(new.len(), 1);
        assert!(state.record(&[file("/a", Severity::Low)], "t2").is_empty());
        assert_eq!(state.mark_if_needed(Severity::Critical, "t2"), None);
        state.record(&[file("/usr/bin/x", Severity::Critical)], "t3");
        let mark = state.mark_if_needed(Severity::Critical, "t3").unwrap();
        assert!(mark.reason.contains("/usr/bin/x"), "{mark:?}");
        state.save(dir.path()).unwrap();

        let again = State::load(dir.path(), "blake3:a").unwrap();
        assert_eq!(again, state);
        assert_eq!(again.findings["file:/a"].first_seen, "t1");
        // Another baseline (another image): a fresh state.
        assert_eq!(
            State::load(dir.path(), "blake3:b").unwrap().findings.len(),
            0
        );
        // A corrupt state file is an error, not a silent reset.
        fs::write(dir.path().join(STATE_FILE), b"{not json").unwrap();
        assert!(State::load(dir.path(), "blake3:a").is_err());
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
