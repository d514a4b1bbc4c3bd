//! The replacement policy, compiled from the configuration: which findings select a
//! host for marking, how many hosts of an image may be marked per window, and how a
//! finding reads and groups in alerts.
//!
//! It is plain data and pure functions, handed to the store so that the decision it
//! drives ([`super::decide`]) runs inside the store's own transaction.

use super::outbox::InContainer;
use super::{FindingRecord, Hold};
use crate::config::{CollectorConfig, MarkRule, ReplacementMode, RuleScope};
use driftwatch_protocol::report::Severity;
use globset::{Glob, GlobSet, GlobSetBuilder};
use std::time::Duration;

/// One replacement rule, compiled.
pub(crate) struct Rule {
    kinds: Vec<String>,
    min_severity: Severity,
    paths: Option<GlobSet>,
    images: Option<GlobSet>,
    scope: RuleScope,
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
            scope: rule.scope,
        })
    }

    pub(crate) fn selects(&self, finding: &FindingRecord, image_id: Option<&str>) -> bool {
        let in_container = finding.finding.get("container").is_some();
        let in_scope = match self.scope {
            RuleScope::Host => !in_container,
            RuleScope::Containers => in_container,
            RuleScope::Any => true,
        };
        in_scope
            && finding.severity >= self.min_severity
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
/// (`shop/api:1.4@sha256:…`); `None` for a container whose runtime recorded no image.
fn container_image(container: &serde_json::Value) -> Option<String> {
    let text = |key: &str| container.get(key).and_then(|v| v.as_str());
    match (text("image"), text("image_digest")) {
        (Some(image), Some(digest)) if !image.contains(digest) => Some(format!("{image}@{digest}")),
        (Some(image), _) => Some(image.to_string()),
        (None, digest) => digest.map(str::to_string),
    }
}

/// How a container is named to people: `container web (0123456789ab)`, or
/// `container 0123456789ab` when its runtime gave it no name.
pub fn container_phrase(container: &serde_json::Value) -> String {
    let text = |key: &str| container.get(key).and_then(|v| v.as_str());
    let id: String = text("id").unwrap_or("?").chars().take(12).collect();
    match text("name") {
        Some(name) => format!("container {name} ({id})"),
        None => format!("container {id}"),
    }
}

/// A container named with its image, when its runtime recorded one: `container web
/// (0123456789ab) of image shop/api:1.4@sha256:…` (the host page's findings, one
/// host's decisions).
pub fn container_with_image(container: &serde_json::Value) -> String {
    let phrase = container_phrase(container);
    match container_image(container) {
        Some(image) => format!("{phrase} of image {image}"),
        None => phrase,
    }
}

/// How a finding groups and reads in alerts.
#[derive(Clone, Debug, PartialEq)]
pub struct Described {
    /// What is the same about the change across hosts.
    pub group: String,
    /// How to say it: `modified file /usr/bin/ssh (content, mode)`.
    pub title: String,
    /// The container it was found in, when its image is known: the alert is about the
    /// containers of that image, wherever they run.
    pub container: Option<InContainer>,
}

impl Described {
    /// The title with the container named, for one host's decision: `added file
    /// /usr/local/bin/x in container web (0123456789ab) of image shop/api:1.4`.
    pub fn on_host(&self, finding: &FindingRecord) -> String {
        match finding.finding.get("container") {
            Some(container) => format!("{} in {}", self.title, container_with_image(container)),
            None => self.title.clone(),
        }
    }
}

/// What is the same about one change across hosts, and how to say it. Files a package
/// explains group by the package: one upgrade touching 300 files on 40 hosts is one
/// alert. A change inside containers groups by the containers' image, not by the
/// container nor by the image of the host it runs on: the same file dropped into every
/// replica of `shop/api`, on nodes of any image, is one alert, "added file
/// /usr/local/bin/x in 12 containers of image shop/api@sha256:… on 5 hosts".
pub fn describe(finding: &FindingRecord) -> Described {
    let value = &finding.finding;
    let in_container = value.get("container");
    let container = in_container.and_then(|c| {
        Some(InContainer {
            id: c.get("id")?.as_str()?.to_string(),
            image: container_image(c)?,
        })
    });
    if let Some((group, package)) = package(value) {
        // A package's files are the host's own (packages are not installed into
        // running containers' layers by the agent's attribution).
        return Described {
            group,
            title: format!("{package}: files changed"),
            container: None,
        };
    }
    let key = match &container {
        Some(container) => format!(
            "{}:container-image={}:{}",
            finding.kind, container.image, finding.subject
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
    Described {
        group,
        title: title.trim().to_string(),
        container,
    }
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
            scope: RuleScope::Host,
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
        let described = describe(&finding("file", Severity::Critical, "/usr/bin/ssh"));
        let mut other_host = finding("file", Severity::Critical, "/usr/bin/ssh");
        other_host.host_id = "h2".into();
        assert_eq!(describe(&other_host).group, described.group);
        assert_eq!(
            described.title,
            "modified file /usr/bin/ssh (content, mode)"
        );
        assert_eq!(described.container, None);
        assert_ne!(
            describe(&finding("file", Severity::Critical, "/usr/bin/scp")).group,
            described.group
        );
    }

    fn in_container(id: &str, host: &str) -> FindingRecord {
        let mut f = finding("file", Severity::Critical, "/usr/local/bin/x");
        f.host_id = host.into();
        f.key = format!("file:container={id}:/usr/local/bin/x");
        f.finding = serde_json::json!({
            "change": "added",
            "container": {"id": id, "name": "web", "runtime": "containerd",
                "image": "shop/api:1.4", "image_digest": "sha256:ab12"},
        });
        f
    }

    #[test]
    fn container_changes_group_by_the_containers_image() {
        let described = describe(&in_container("c1", "h1"));
        assert_eq!(describe(&in_container("c2", "h2")).group, described.group);
        assert_eq!(described.title, "added file /usr/local/bin/x");
        assert_eq!(
            described.container,
            Some(InContainer {
                id: "c1".into(),
                image: "shop/api:1.4@sha256:ab12".into()
            })
        );
        assert_eq!(
            described.on_host(&in_container("c1", "h1")),
            "added file /usr/local/bin/x in container web (c1) of image shop/api:1.4@sha256:ab12"
        );
        // Not the host's own /usr/local/bin/x, nor another image's.
        let host_own = finding("file", Severity::Critical, "/usr/local/bin/x");
        assert_ne!(describe(&host_own).group, described.group);
        let mut other = in_container("c3", "h1");
        other.finding["container"]["image_digest"] = "sha256:cd34".into();
        assert_ne!(describe(&other).group, described.group);
        // An image whose name carries its digest is not named twice.
        let mut pinned = in_container("c5", "h1");
        pinned.finding["container"]["image"] = "shop/api@sha256:ab12".into();
        assert_eq!(
            describe(&pinned).container.unwrap().image,
            "shop/api@sha256:ab12"
        );
        // A container whose runtime recorded no image groups by itself, as a change of
        // its host, and still says which container.
        let mut unnamed = in_container("c4", "h1");
        unnamed.finding["container"] = serde_json::json!({"id": "c4", "runtime": "unknown"});
        let described = describe(&unnamed);
        assert!(described.group.starts_with("file:container=c4:"));
        assert_eq!(described.container, None);
        assert_eq!(
            described.on_host(&unnamed),
            "added file /usr/local/bin/x in container c4"
        );
    }

    #[test]
    fn rules_weigh_the_hosts_own_findings_unless_their_scope_says_otherwise() {
        let rule = |scope: RuleScope| {
            Rule::compile(&MarkRule {
                scope,
                ..MarkRule::default()
            })
            .unwrap()
        };
        let own = finding("file", Severity::Critical, "/usr/local/bin/x");
        let inside = in_container("c1", "h1");
        for (scope, selects_own, selects_inside) in [
            (RuleScope::Host, true, false),
            (RuleScope::Containers, false, true),
            (RuleScope::Any, true, true),
        ] {
            let rule = rule(scope);
            assert_eq!(rule.selects(&own, None), selects_own, "{scope:?}");
            assert_eq!(rule.selects(&inside, None), selects_inside, "{scope:?}");
        }
        assert_eq!(MarkRule::default().scope, RuleScope::Host);
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
        let described = describe(&attributed("/usr/lib/libssl.so.3"));
        assert_eq!(described.group, "package:openssl:amd64:3.0.1->3.0.2");
        assert_eq!(
            described.title,
            "package openssl (amd64) 3.0.1 → 3.0.2: files changed"
        );
        assert_eq!(
            describe(&attributed("/usr/bin/openssl")).group,
            described.group
        );
        // Without a name the attribution is ignored.
        let mut unnamed = finding("file", Severity::Medium, "/x");
        unnamed.finding["package"] = serde_json::json!({"arch": "amd64"});
        assert!(describe(&unnamed).group.starts_with("file:/x:"));
    }
}
