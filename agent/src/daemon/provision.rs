//! The first-boot provisioning window.
//!
//! A cloud image is personalised at its first boot: cloud-init creates the default user
//! (`/etc/passwd`, `shadow`, `group`, `gshadow`, `subuid`, `subgid`, the user's home with
//! `~/.ssh/authorized_keys`, `/etc/sudoers.d/90-cloud-init-users`), sets the hostname,
//! makes new SSH host keys and writes what the user data asks for. Judged against the
//! image's baseline, all of it is critical drift, and every host would be marked the
//! moment it came up. Excluding those paths instead would blind the agent to the same
//! files forever after.
//!
//! So the agent knows a window: from boot until the declared provisioning units have
//! finished (`[provisioning] units`, default cloud-init's `cloud-final.service`; no
//! window when none of them exists), a change on a declared path (`paths`, plus
//! `extra_paths`) is the host's **provisioning delta**, not drift. The delta keeps each
//! change as found, with its content digests; when the units have finished, one more
//! full check records the final state, and the delta is **sealed**: persisted in
//! `state_dir/provisioning.json`, shown on `/status`, sent to the collector once. From
//! then on a declared path is compared against baseline + delta: a finding that shows
//! the path exactly as the delta recorded it is no drift, anything else is.
//!
//! The window opens once in a host's life: a sealed record keeps it closed at every
//! later boot (cloud-final runs at every boot). A change outside the declared paths is
//! drift during the window too, and a window that stays open longer than `max_secs`
//! is sealed anyway. The units are asked about with `systemctl show`; where that cannot
//! answer (no systemd, another root) there is no window, and everything is drift.

use super::{Daemon, Depth};
use crate::config::provisioning::Declared;
use crate::config::AgentConfig;
use crate::sink::spool::write_durably;
use driftwatch_protocol::report::{EntryState, Finding, Report, Summary};
use driftwatch_protocol::time::now_rfc3339 as now;
use driftwatch_protocol::wire::{EventBody, ProvisionDelta};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tracing::{info, warn};

/// The record's name inside `state_dir`.
pub const PROVISIONING_FILE: &str = "provisioning.json";
/// How often the provisioning units are asked about while the window is open.
pub const POLL: Duration = Duration::from_secs(2);

/// Where the window stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// No provisioning unit on this host, or none could be asked about: no window.
    None,
    /// Provisioning runs: changes on declared paths go to the delta.
    Open,
    /// Provisioning finished: declared paths are compared against baseline + delta.
    Sealed,
}

/// One change of the delta.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeltaEntry {
    /// When provisioning was first seen changing it.
    pub first_seen: String,
    /// The change as last seen in the window (its `observed` state is what the path
    /// must stay).
    pub finding: Finding,
}

/// The window, as persisted and shown on `/status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Provisioning {
    /// The baseline it belongs to.
    pub baseline_digest: String,
    /// `none`, `open` or `sealed`.
    pub phase: Phase,
    /// The units that close it.
    pub units: Vec<String>,
    /// When it opened (RFC 3339).
    pub opened: Option<String>,
    /// When it was sealed.
    pub sealed: Option<String>,
    /// Why it was sealed: the units finished, or `max_secs` passed.
    pub sealed_because: Option<String>,
    /// The delta, by finding key.
    pub delta: BTreeMap<String, DeltaEntry>,
    /// Whether the sealed delta is in the spool for the collector.
    #[serde(default)]
    pub spooled: bool,
}

/// What the provisioning units say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Units {
    /// None of them is installed (or none could be asked about).
    Absent,
    /// At least one has yet to finish.
    Running,
    /// Every installed one has finished (or will not run in this boot).
    Finished,
}

impl Provisioning {
    /// A window decided at the daemon's start, with no record yet: open while the
    /// units have yet to finish, none when they are absent or already done (a window
    /// never opens late: what changed before the daemon ran is drift).
    pub fn start(baseline_digest: &str, units: &[String], now: &str, said: Units) -> Self {
        let phase = match said {
            Units::Running => Phase::Open,
            Units::Absent | Units::Finished => Phase::None,
        };
        Provisioning {
            baseline_digest: baseline_digest.to_string(),
            phase,
            units: units.to_vec(),
            opened: (phase == Phase::Open).then(|| now.to_string()),
            sealed: None,
            sealed_because: None,
            delta: BTreeMap::new(),
            spooled: false,
        }
    }

    /// Takes the findings of a check: returns those that are drift. While the window
    /// is open, findings on declared paths join the delta; once sealed, a finding that
    /// shows a declared path as the delta recorded it is dropped.
    pub fn absorb(
        &mut self,
        declared: &Declared,
        findings: &[Finding],
        time: &str,
    ) -> Vec<Finding> {
        let mut drift = Vec::with_capacity(findings.len());
        for finding in findings {
            let Some(path) = path_of(finding).filter(|p| declared.covers(p)) else {
                drift.push(finding.clone());
                continue;
            };
            let key = finding.key();
            match self.phase {
                Phase::Open => {
                    let first_seen = self
                        .delta
                        .get(&key)
                        .map_or_else(|| time.to_string(), |e| e.first_seen.clone());
                    debug_assert!(!path.is_empty());
                    self.delta.insert(
                        key,
                        DeltaEntry {
                            first_seen,
                            finding: finding.clone(),
                        },
                    );
                }
                Phase::Sealed
                    if self
                        .delta
                        .get(&key)
                        .is_some_and(|e| same_outcome(&e.finding, finding)) => {}
                Phase::Sealed | Phase::None => drift.push(finding.clone()),
            }
        }
        drift
    }

    /// Closes the window.
    pub fn seal(&mut self, time: &str, because: &str) {
        self.phase = Phase::Sealed;
        self.sealed = Some(time.to_string());
        self.sealed_because = Some(because.to_string());
    }

    /// Whether the window has been open longer than `max_secs`.
    pub fn overdue(&self, max_secs: u64) -> bool {
        let opened = self
            .opened
            .as_deref()
            .and_then(|t| humantime::parse_rfc3339_weak(t).ok());
        opened.is_some_and(|opened| {
            SystemTime::now()
                .duration_since(opened)
                .is_ok_and(|open| open > Duration::from_secs(max_secs))
        })
    }

    /// The delta as the collector gets it.
    pub fn wire(&self) -> ProvisionDelta {
        ProvisionDelta {
            opened: self.opened.clone(),
            sealed: self.sealed.clone(),
            units: self.units.clone(),
            changes: self.delta.values().map(|e| e.finding.clone()).collect(),
        }
    }

    /// Loads the record for `baseline_digest` (`None`: no record, or one made for
    /// another baseline). A corrupt record is an error: forgetting a sealed window
    /// would open it again.
    pub fn load(state_dir: &Path, baseline_digest: &str) -> std::io::Result<Option<Self>> {
        let path = state_dir.join(PROVISIONING_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(err),
        };
        let record: Provisioning = serde_json::from_slice(&bytes).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} is corrupt: {e}", path.display()),
            )
        })?;
        Ok((record.baseline_digest == baseline_digest).then_some(record))
    }

    /// Writes the record atomically.
    pub fn save(&self, state_dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(state_dir)?;
        let bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        write_durably(
            &state_dir.join(format!(".{PROVISIONING_FILE}.tmp")),
            &state_dir.join(PROVISIONING_FILE),
            &bytes,
        )
        .map_err(std::io::Error::other)
    }
}

/// Takes out of `report` the findings that the host's provisioning record (in the
/// configuration's `state_dir`, for the report's baseline) explains, and counts the
/// rest again: what `driftwatch check` on the host itself applies, so that it answers
/// as the daemon does — its listing, summary and exit status alike. Without a readable
/// record, the report stays as it is.
pub fn explain(config: &AgentConfig, report: &mut Report) {
    let Ok(declared) = Declared::compile(&config.provisioning) else {
        return;
    };
    if let Ok(Some(mut record)) = Provisioning::load(&config.state_dir, &report.baseline.digest) {
        report.findings = record.absorb(&declared, &report.findings, &now());
        report.summary = Summary::of(&report.findings);
    }
}

/// The path a finding is about, for the kinds provisioning can explain.
fn path_of(finding: &Finding) -> Option<&str> {
    match finding {
        Finding::File(f) => Some(&f.path),
        Finding::PackageFile(f) => Some(&f.path),
        _ => None,
    }
}

/// Whether two findings about one path show it in the same state: same change and
/// the same observed entry (type, mode, owner, size, digests, link target, xattrs; not
/// the mtime, which the policy does not compare either).
fn same_outcome(recorded: &Finding, now: &Finding) -> bool {
    let comparable = |state: &Option<EntryState>| {
        state.clone().map(|mut s| {
            s.mtime.clear();
            s
        })
    };
    match (recorded, now) {
        (Finding::File(a), Finding::File(b)) => {
            a.change == b.change && comparable(&a.observed) == comparable(&b.observed)
        }
        (Finding::PackageFile(a), Finding::PackageFile(b)) => a.observed == b.observed,
        _ => false,
    }
}

/// Asks systemd about `units` (`systemctl show`). Where systemd cannot answer, the
/// units count as absent: no window, everything is drift.
pub fn ask_units(units: &[String]) -> Units {
    if units.is_empty() {
        return Units::Absent;
    }
    let Some(manager) = systemctl_show(&[]) else {
        return Units::Absent;
    };
    let booting = matches!(
        manager.get("SystemState").map(String::as_str),
        Some("initializing" | "starting")
    );
    let mut present = false;
    for unit in units {
        let Some(props) = systemctl_show(&[unit]) else {
            return Units::Absent;
        };
        if props.get("LoadState").map(String::as_str) != Some("loaded") {
            continue;
        }
        present = true;
        let finished = match props.get("ActiveState").map(String::as_str) {
            Some("active" | "failed") => true,
            // Not run (yet): it will not once start-up is over.
            Some("inactive") => !booting,
            _ => false,
        };
        if !finished {
            return Units::Running;
        }
    }
    if present {
        Units::Finished
    } else {
        Units::Absent
    }
}

/// `systemctl show [UNIT]` as `KEY=VALUE` pairs.
fn systemctl_show(unit: &[&String]) -> Option<BTreeMap<String, String>> {
    let out = Command::new("systemctl")
        .arg("show")
        .args(unit)
        .output()
        .map_err(|err| warn!(error = %err, "Cannot run systemctl; no provisioning window."))
        .ok()?;
    if !out.status.success() {
        warn!(
            stderr = %String::from_utf8_lossy(&out.stderr).trim(),
            "systemctl show failed; no provisioning window."
        );
        return None;
    }
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|line| line.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

/// The daemon's side of the window.
impl Daemon {
    /// Loads or decides the window for the verified baseline `digest`, before the boot
    /// check. Only on the real root: another root's systemd cannot be asked.
    pub(super) fn start_provisioning(&mut self, digest: &str) {
        let config = &self.config.provisioning;
        self.declared = match Declared::compile(config) {
            Ok(declared) => Some(declared),
            // Validated at load; a failure here means no window.
            Err(key) => {
                warn!(key, "No provisioning window.");
                return;
            }
        };
        let record = match Provisioning::load(&self.config.state_dir, digest) {
            Ok(Some(record)) => record,
            Ok(None) => {
                let said = if self.config.root == Path::new("/") {
                    ask_units(&config.units)
                } else {
                    Units::Absent
                };
                Provisioning::start(digest, &config.units, &now(), said)
            }
            Err(err) => {
                // Drift is safer than an open window that should have been sealed.
                warn!(error = %err, "Cannot read the provisioning record; no window.");
                Provisioning::start(digest, &config.units, &now(), Units::Absent)
            }
        };
        info!(phase = ?record.phase, units = ?record.units, "Provisioning window.");
        self.provisioning = Some(record);
        self.save_provisioning();
    }

    /// Whether the window is open.
    pub(super) fn provisioning_open(&self) -> bool {
        self.provisioning
            .as_ref()
            .is_some_and(|p| p.phase == Phase::Open)
    }

    /// The findings of a check that are drift (see [`Provisioning::absorb`]).
    pub(super) fn provisioning_filter(&mut self, findings: &[Finding], time: &str) -> Vec<Finding> {
        let (Some(record), Some(declared)) = (self.provisioning.as_mut(), &self.declared) else {
            return findings.to_vec();
        };
        let before = record.delta.len();
        let drift = record.absorb(declared, findings, time);
        if record.phase == Phase::Open && drift.len() < findings.len() {
            if record.delta.len() > before {
                info!(
                    changes = record.delta.len(),
                    "Provisioning changes recorded."
                );
            }
            self.save_provisioning();
        }
        drift
    }

    /// While the window is open: when the units have finished (or `max_secs` passed),
    /// one more full check records the final state of the declared paths, then the
    /// delta is sealed, saved and spooled for the collector.
    pub(super) async fn poll_provisioning(&mut self, context: Arc<super::Context>) {
        let max_secs = self.config.provisioning.max_secs;
        let Some(record) = &self.provisioning else {
            return;
        };
        let because = if record.overdue(max_secs) {
            warn!(
                max_secs,
                "Provisioning takes too long; sealing its window now."
            );
            "max_secs passed"
        } else {
            let units = self.config.provisioning.units.clone();
            match tokio::task::spawn_blocking(move || ask_units(&units)).await {
                Ok(Units::Running) => return,
                Ok(Units::Finished | Units::Absent) => "the provisioning units finished",
                Err(_) => return,
            }
        };
        let kept = record.delta.clone();
        if let Some(record) = self.provisioning.as_mut() {
            // The last check sees every declared path as provisioning left it; what
            // it no longer finds changed was put back and is not part of the delta.
            record.delta.clear();
        }
        let checks = self.shared.status().full_checks;
        self.check(context, "provisioned", Depth::Immediate).await;
        let Some(record) = self.provisioning.as_mut() else {
            return;
        };
        if self.shared.status().full_checks == checks {
            // The check did not finish (stopping, or it failed): keep what was seen,
            // stay open, try again at the next poll.
            record.delta = kept;
            return;
        }
        record.seal(&now(), because);
        info!(
            changes = record.delta.len(),
            because, "Provisioning window sealed."
        );
        let event = (now(), EventBody::Provisioned(record.wire()));
        self.spool_provisioning(event);
        self.save_provisioning();
        self.publish();
    }

    /// Hands the sealed delta to the spool, once.
    fn spool_provisioning(&mut self, event: (String, EventBody)) {
        let Some(spool) = self.spool.clone() else {
            return;
        };
        let state = &self.state;
        let appended = super::lock(&spool).append(vec![event], || super::current_findings(state));
        match appended {
            Ok(appended) => {
                if let Some(record) = self.provisioning.as_mut() {
                    record.spooled = true;
                }
                self.spooled(appended);
                self.wake.notify_one();
            }
            Err(err) => warn!(error = %err, "Cannot spool the provisioning delta."),
        }
    }

    fn save_provisioning(&self) {
        if let Some(record) = &self.provisioning {
            if let Err(err) = record.save(&self.config.state_dir) {
                warn!(error = %err, "Cannot save the provisioning record.");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::provisioning::{default_units, ProvisioningConfig};
    use driftwatch_protocol::report::{Attribute, FileChange, FileFinding, Severity};

    fn entry(blake3: &str) -> EntryState {
        EntryState {
            file_type: "file".into(),
            mode: "0644".into(),
            uid: 0,
            gid: 0,
            size: 10,
            mtime: "2026-01-01T00:00:00Z".into(),
            rdev: None,
            blake3: Some(blake3.into()),
            sha256: None,
            link_target: None,
            xattrs: BTreeMap::new(),
        }
    }

    fn file(path: &str, change: FileChange, observed: Option<EntryState>) -> Finding {
        Finding::File(Box::new(FileFinding {
            change,
            path: path.into(),
            path_bytes_b64: None,
            attributes: vec![Attribute::Content],
            severity: Severity::Critical,
            rule: "accounts".into(),
            baseline: Some(entry("baked")),
            observed,
            package: None,
            container: None,
        }))
    }

    fn paths(findings: &[Finding]) -> Vec<&str> {
        findings.iter().filter_map(path_of).collect()
    }

    fn declared() -> Declared {
        Declared::compile(&ProvisioningConfig::default()).unwrap()
    }

    #[test]
    fn the_window_takes_declared_changes_and_nothing_else() {
        let d = declared();
        let mut window = Provisioning::start("blake3:x", &default_units(), "t0", Units::Running);
        assert_eq!(window.phase, Phase::Open);
        let found = [
            file("/etc/passwd", FileChange::Modified, Some(entry("user"))),
            file(
                "/home/debian/.ssh/authorized_keys",
                FileChange::Added,
                Some(entry("key")),
            ),
            file("/usr/local/bin/x", FileChange::Added, Some(entry("evil"))),
        ];
        let drift = window.absorb(&d, &found, "t1");
        assert_eq!(paths(&drift), ["/usr/local/bin/x"]);
        assert_eq!(window.delta.len(), 2);

        window.seal("t2", "the provisioning units finished");
        // The same state again (a later check, a new mtime): not drift.
        let mut again = entry("user");
        again.mtime = "2026-02-02T00:00:00Z".into();
        let same = [file("/etc/passwd", FileChange::Modified, Some(again))];
        assert!(window.absorb(&d, &same, "t3").is_empty());
        // After the seal, any other change to a declared path is drift.
        let later = [
            file(
                "/etc/passwd",
                FileChange::Modified,
                Some(entry("another user")),
            ),
            file("/home/debian/.ssh/authorized_keys", FileChange::Added, None),
            file("/etc/shadow", FileChange::Modified, Some(entry("new"))),
        ];
        assert_eq!(
            paths(&window.absorb(&d, &later, "t4")),
            [
                "/etc/passwd",
                "/home/debian/.ssh/authorized_keys",
                "/etc/shadow"
            ]
        );
    }

    #[test]
    fn no_window_opens_without_units_or_after_they_finished() {
        let d = declared();
        for said in [Units::Absent, Units::Finished] {
            let mut window = Provisioning::start("blake3:x", &default_units(), "t0", said);
            assert_eq!(window.phase, Phase::None);
            let found = [file("/etc/passwd", FileChange::Modified, Some(entry("u")))];
            assert_eq!(paths(&window.absorb(&d, &found, "t1")), ["/etc/passwd"]);
        }
    }

    #[test]
    fn a_sealed_window_stays_sealed_across_restarts_and_another_baseline_starts_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let mut window = Provisioning::start("blake3:x", &default_units(), "t0", Units::Running);
        window.absorb(
            &declared(),
            &[file("/etc/group", FileChange::Modified, Some(entry("g")))],
            "t1",
        );
        window.seal("t2", "the provisioning units finished");
        window.save(dir.path()).unwrap();
        let loaded = Provisioning::load(dir.path(), "blake3:x").unwrap().unwrap();
        assert_eq!(loaded, window);
        assert_eq!(loaded.wire().changes.len(), 1);
        assert!(Provisioning::load(dir.path(), "blake3:other")
            .unwrap()
            .is_none());
        std::fs::write(dir.path().join(PROVISIONING_FILE), b"{").unwrap();
        assert!(Provisioning::load(dir.path(), "blake3:x").is_err());
    }

    #[test]
    fn a_window_open_too_long_is_overdue() {
        let mut window = Provisioning::start("blake3:x", &default_units(), &now(), Units::Running);
        assert!(!window.overdue(60));
        window.opened = Some("2020-01-01T00:00:00Z".into());
        assert!(window.overdue(60));
    }
}
