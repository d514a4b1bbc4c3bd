//! The replacement policy, compiled from the configuration: which findings select a
//! host for marking, how many hosts of an image may be marked per window, and how a
//! finding reads and groups in alerts.
//!
//! It is plain data and pure functions, handed to the store so that the decision it
//! drives ([`super::decide`]) runs inside the store's own transaction.

use super::{FindingRecord, Hold};
use crate::config::{CollectorConfig, MarkRule, ReplacementMode};
use driftwatch_protocol::report::Severity;
use globset::{Glob, GlobSet, GlobSetBuilder};
use std::time::Duration;

/// One replacement rule, compiled.
pub(crate) struct Rule {
    kinds: Vec<String>,
    min_severity: Severity,
    paths: Option<GlobSet>,
    images: Option<GlobSet>,
}

fn glob_set(globs: &[String]) -> Result<Option<GlobSet>, globset::Error> {
    if globs.is_empty() {
        return Ok(None);
    }
    let mut builder = GlobSetBuilder::new();
    for glob in globs {
        builder.add(Glob::new(glob)?);
    }
    builder.build().map(Some)
}

impl Rule {
    pub(crate) fn compile(rule: &MarkRule) -> Result<Rule, globset::Error> {
        Ok(Rule {
            kinds: rule.kinds.clone(),
            min_severity: rule.min_severity,
            paths: glob_set(&rule.paths)?,
            images: glob_set(&rule.images)?,
        })
    }

    pub(crate) fn selects(&self, finding: &FindingRecord, image_id: Option<&str>) -> bool {
        finding.severity >= self.min_severity
            && (self.kinds.is_empty() || self.kinds.contains(&finding.kind))
            && self
                .paths
                .as_ref()
                .is_none_or(|set| set.is_match(&finding.subject))
            && self
                .images
                .as_ref()
                .is_none_or(|set| image_id.is_some_and(|id| set.is_match(id)))
    }
}

/// Which webhook gets which alert kinds (the part of `[[webhook]]` that decides what
/// goes into the outbox).
#[derive(Clone, Debug, PartialEq)]
pub struct Subscription {
    /// The receiver.
    pub url: String,
    /// The kinds it subscribes to.
    pub kinds: Vec<String>,
}

/// Everything a decision needs to know about the configuration.
pub struct Policy {
    pub(crate) rules: Vec<Rule>,
    /// Auto, dry run or manual approval.
    pub mode: ReplacementMode,
    /// Most hosts marked per image and window.
    pub max_hosts: u32,
    /// Most hosts marked per image and window, as a share of its live hosts.
    pub max_percent: f64,
    /// The budget's window, in ms.
    pub window_ms: i64,
    /// How long occurrences gather before their group's alert goes out, in ms.
    pub group_wait_ms: i64,
    /// The webhooks and what they subscribe to.
    pub subscriptions: Vec<Subscription>,
    /// The mark command's program, when one is configured.
    pub command: Option<String>,
    /// How long a delivery is retried before it fails for good, in ms.
    pub retry_for_ms: i64,
    /// Most findings stored per host (beyond: one critical `too_many_findings`).
    pub max_findings_per_host: u64,
}

/// Milliseconds of a duration in seconds, saturating.
pub(crate) fn secs_to_ms(secs: u64) -> i64 {
    i64::try_from(Duration::from_secs(secs).as_millis()).unwrap_or(i64::MAX)
}

impl Policy {
    /// Compiles the configuration's rules.
    pub fn new(config: &CollectorConfig) -> Result<Policy, globset::Error> {
        let replacement = &config.replacement;
        Ok(Policy {
            rules: replacement
                .rules
                .iter()
                .map(Rule::compile)
                .collect::<Result<_, _>>()?,
            mode: replacement.mode,
            max_hosts: replacement.max_hosts,
            max_percent: replacement.max_percent,
            window_ms: secs_to_ms(replacement.window_secs),
            group_wait_ms: secs_to_ms(config.alerts.group_wait_secs),
            subscriptions: config
                .webhooks
                .iter()
                .map(|w| Subscription {
                    url: w.url.clone(),
                    kinds: w.events.clone(),
                })
                .collect(),
            command: config.alerts.mark_command.first().cloned(),
            retry_for_ms: secs_to_ms(config.alerts.retry_for_secs),
            max_findings_per_host: config.ingest.max_findings_per_host,
        })
    }

    /// How many hosts of an image the budget allows per window.
    pub fn budget(&self, live_hosts: u64) -> u64 {
        let by_share = (live_hosts as f64 * self.max_percent / 100.0).floor() as u64;
        u64::from(self.max_hosts).min(by_share).max(1)
    }

    /// The first of `candidates` a rule selects (findings received before the host was
    /// last unmarked no longer do).
    pub fn select<'a>(
        &self,
        candidates: &'a [FindingRecord],
        image_id: Option<&str>,
        unmarked_at_ms: Option<i64>,
    ) -> Option<&'a FindingRecord> {
        candidates.iter().find(|f| {
            unmarked_at_ms.is_none_or(|at| f.last_seen_ms > at)
                && self.rules.iter().any(|r| r.selects(f, image_id))
        })
    }

    /// The hold a mode puts on a selected host; `None` in auto mode (the budget
    /// decides).
    pub fn mode_hold(&self) -> Option<Hold> {
        match self.mode {
            ReplacementMode::Auto => None,
            ReplacementMode::DryRun => Some(Hold::DryRun),
            ReplacementMode::ManualApprove => Some(Hold::Approval),
        }
    }

    /// The webhooks subscribed to `kind`.
    pub fn subscribers<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Subscription> {
        self.subscriptions
            .iter()
            .filter(move |s| s.kinds.iter().any(|k| k == kind))
    }
}

/// The package a file finding is attributed to, as `(group, title)` parts:
/// `package:NAME:ARCH:OLD->NEW` and `NAME (ARCH) OLD → NEW`.
fn package(finding: &serde_json::Value) -> Option<(String, String)> {
    let package = finding.get("package")?;
    let text = |keys: &[&str]| {
        keys.iter()
            .find_map(|k| package.get(*k).and_then(|v| v.as_str()))
            .unwrap_or("")
            .to_string()
    };
    let name = text(&["name"]);
    if name.is_empty() {
        return None;
    }
    let arch = text(&["arch", "architecture"]);
    let old = text(&["old_version", "old", "from"]);
    let new = text(&["new_version", "version", "new", "to"]);
    let versions = match (old.is_empty(), new.is_empty()) {
        (false, false) => format!("{old} → {new}"),
        (true, false) => new.clone(),
        (false, true) => old.clone(),
        (true, true) => String::new(),
    };
    let title = format!("package {name} ({arch}) {versions}");
    Some((
        format!("package:{name}:{arch}:{old}->{new}"),
        title.replace(" ()", "").trim().to_string(),
    ))
}

/// The image of the container a finding is about, as alerts name it
/// (`shop/api:1.4@sha256:…`); `None` for the host's own findings and for a container
/// whose runtime recorded no image.
fn container_image(finding: &serde_json::Value) -> Option<String> {
    let container = finding.get("container")?;
    let text = |key: &str| container.get(key).and_then(|v| v.as_str());
    match (text("image"), text("image_digest")) {
        (Some(image), Some(digest)) if !image.contains(digest) => Some(format!("{image}@{digest}")),
        (Some(image), _) => Some(image.to_string()),
        (None, digest) => digest.map(str::to_string),
    }
}

/// What is the same about one change across hosts, and how to say it. Files a package
/// explains group by the package: one upgrade touching 300 files on 40 hosts is one
/// alert. A change inside containers groups by the containers' image, not by the
/// container: the same file dropped into every replica of `shop/api` is one alert,
/// "added file /usr/local/bin/x in containers of image shop/api@sha256:…".
pub fn describe(finding: &FindingRecord) -> (String, String) {
    let value = &finding.finding;
    if let Some((group, package)) = package(value) {
        return (group, format!("{package}: files changed"));
    }
    let image = container_image(value);
    let key = match &image {
        Some(image) => format!(
            "{}:container-image={image}:{}",
            finding.kind, finding.subject
        ),
        None => finding.key.clone(),
    };
    let change = value
        .get("change")
        .or_else(|| value.get("reason"))
        .and_then(|v| v.as_str())
        .unwrap_or("");
    let attributes: Vec<&str> = value
        .get("attributes")
        .and_then(|v| v.as_array())
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    let group = format!("{key}:{change}:{}", attributes.join(","));
    let mut title = format!(
        "{} {} {}",
        change.replace('_', " "),
        finding.kind,
        finding.subject
    );
    if !attributes.is_empty() {
        title.push_str(&format!(" ({})", attributes.join(", ")));
    }
    if let Some(image) = image {
        title.push_str(&format!(" in containers of image {image}"));
    }
    (group, title.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(kind: &str, severity: Severity, subject: &str) -> FindingRecord {
        FindingRecord {
            host_id: "h".into(),
            key: format!("{kind}:{subject}"),
            kind: kind.into(),
            severity,
            subject: subject.into(),
            finding: serde_json::json!({"change": "modified", "attributes": ["content", "mode"]}),
            first_seen_ms: 0,
            last_seen_ms: 0,
        }
    }

    #[test]
    fn rules_select_by_kind_severity_path_and_image() {
        let rule = Rule::compile(&MarkRule {
            kinds: vec!["file".into()],
            min_severity: Severity::High,
            paths: vec!["/usr/**".into()],
            images: vec!["web-*".into()],
        })
        .unwrap();
        let hit = finding("file", Severity::Critical, "/usr/bin/ssh");
        assert!(rule.selects(&hit, Some("web-7")));
        assert!(!rule.selects(&hit, Some("db-1")));
        assert!(!rule.selects(&hit, None));
        assert!(!rule.selects(
            &finding("file", Severity::Medium, "/usr/bin/ssh"),
            Some("web-7")
        ));
        assert!(!rule.selects(
            &finding("file", Severity::Critical, "/etc/x"),
            Some("web-7")
        ));
        assert!(!rule.selects(
            &finding("package", Severity::Critical, "/usr/x"),
            Some("web-7")
        ));
        let any_critical = Rule::compile(&MarkRule::default()).unwrap();
        assert!(any_critical.selects(&finding("image", Severity::Critical, "img"), None));
    }

    #[test]
    fn the_same_change_groups_together_and_reads_well() {
        let (group_a, title) = describe(&finding("file", Severity::Critical, "/usr/bin/ssh"));
        let mut other_host = finding("file", Severity::Critical, "/usr/bin/ssh");
        other_host.host_id = "h2".into();
        assert_eq!(describe(&other_host).0, group_a);
        assert_eq!(title, "modified file /usr/bin/ssh (content, mode)");
        assert_ne!(
            describe(&finding("file", Severity::Critical, "/usr/bin/scp")).0,
            group_a
        );
    }

    #[test]
    fn container_changes_group_by_the_containers_image() {
        let in_container = |id: &str, host: &str| {
            let mut f = finding("file", Severity::Critical, "/usr/local/bin/x");
            f.host_id = host.into();
            f.key = format!("file:container={id}:/usr/local/bin/x");
            f.finding = serde_json::json!({
                "change": "added",
                "container": {"id": id, "name": "web", "runtime": "containerd",
                    "image": "shop/api:1.4", "image_digest": "sha256:ab12"},
            });
            f
        };
        let (group, title) = describe(&in_container("c1", "h1"));
        assert_eq!(describe(&in_container("c2", "h2")).0, group);
        assert_eq!(
            title,
            "added file /usr/local/bin/x in containers of image shop/api:1.4@sha256:ab12"
        );
        // Not the host's own /usr/local/bin/x, nor another image's.
        let host_own = finding("file", Severity::Critical, "/usr/local/bin/x");
        assert_ne!(describe(&host_own).0, group);
        let mut other = in_container("c3", "h1");
        other.finding["container"]["image_digest"] = "sha256:cd34".into();
        assert_ne!(describe(&other).0, group);
        // A container whose runtime recorded no image groups by itself.
        let mut unnamed = in_container("c4", "h1");
        unnamed.finding["container"] = serde_json::json!({"id": "c4", "runtime": "unknown"});
        assert!(describe(&unnamed).0.starts_with("file:container=c4:"));
    }

    #[test]
    fn files_of_one_package_group_by_the_package() {
        let attributed = |path: &str| {
            let mut f = finding("file", Severity::Medium, path);
            f.finding["package"] = serde_json::json!({
                "name": "openssl", "arch": "amd64",
                "old_version": "3.0.1", "new_version": "3.0.2"
            });
            f
        };
        let (group, title) = describe(&attributed("/usr/lib/libssl.so.3"));
        assert_eq!(group, "package:openssl:amd64:3.0.1->3.0.2");
        assert_eq!(
            title,
            "package openssl (amd64) 3.0.1 → 3.0.2: files changed"
        );
        assert_eq!(describe(&attributed("/usr/bin/openssl")).0, group);
        // Without a name the attribution is ignored.
        let mut unnamed = finding("file", Severity::Medium, "/x");
        unnamed.finding["package"] = serde_json::json!({"arch": "amd64"});
        assert!(describe(&unnamed).0.starts_with("file:/x:"));
    }
}
