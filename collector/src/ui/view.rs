//! What pages show, computed from the store's records: times, hosts, and findings with
//! their before → after. Templates only print these; every formatting choice is here.

use super::signin::SignedIn;
use crate::auth::Right;
use crate::store::policy::container_with_image;
use crate::store::{ActionRecord, FindingRecord, HostRecord};
use driftwatch_protocol::report::{Attribute, EntryState, FileFinding, Finding, PackageRef};
use serde_json::Value;

/// A time as RFC 3339 UTC; the page's script shows it in the viewer's zone.
pub fn time(ms: i64) -> String {
    crate::api::rfc3339(ms)
}

/// What every page shows around its content: who is signed in, and the session's
/// CSRF token for the forms.
pub struct Chrome {
    /// The credential's name.
    pub name: String,
    /// Its role.
    pub role: &'static str,
    /// The CSRF token of the session.
    pub csrf: String,
    /// Whether acting buttons are shown.
    pub can_act: bool,
    /// The section of the navigation that is current.
    pub section: &'static str,
}

impl Chrome {
    /// The chrome of `section` for this signed-in browser.
    pub fn of(who: &SignedIn, section: &'static str) -> Chrome {
        Chrome {
            name: who.principal().name.clone(),
            role: who.principal().role.name(),
            csrf: who.session.csrf.clone(),
            can_act: who.principal().role.allows(Right::Act),
            section,
        }
    }
}

/// A host row.
pub struct HostRow {
    pub id: String,
    pub hostname: String,
    pub image: String,
    pub state: &'static str,
    pub hold: String,
    pub findings: [u64; 4],
    pub last_seen: String,
    pub reason: String,
}

impl HostRow {
    /// The row of a host.
    pub fn of(host: &HostRecord) -> HostRow {
        HostRow {
            id: host.host_id.clone(),
            hostname: host.hostname.clone(),
            image: host.image_id.clone().unwrap_or_default(),
            state: host.state.name(),
            hold: host.hold.map(|h| h.name().to_string()).unwrap_or_default(),
            findings: host.findings_by_severity,
            last_seen: time(host.last_seen_ms),
            reason: host
                .mark_reason
                .clone()
                .or_else(|| host.hold_reason.clone())
                .unwrap_or_default(),
        }
    }
}

/// One attribute of a file, as baked and as found.
pub struct AttrRow {
    pub name: &'static str,
    pub before: String,
    pub after: String,
    pub changed: bool,
}

/// A finding as a page shows it.
pub struct FindingView {
    pub severity: &'static str,
    pub kind: String,
    pub summary: String,
    pub first_seen: String,
    pub last_seen: String,
    /// Before → after, for file findings.
    pub attributes: Vec<AttrRow>,
    /// The package change that explains it, when attributed.
    pub package: Option<String>,
    /// Other fields (findings that are not about files).
    pub details: Vec<(String, String)>,
}

impl FindingView {
    /// The view of a stored finding.
    pub fn of(record: &FindingRecord) -> FindingView {
        let mut view = FindingView::of_value(&record.finding, &record.kind, &record.subject);
        view.severity = record.severity.name();
        view.first_seen = time(record.first_seen_ms);
        view.last_seen = time(record.last_seen_ms);
        view
    }

    /// The view of a finding's JSON (a stored one, or one of a provisioning delta).
    pub fn of_value(value: &Value, kind: &str, subject: &str) -> FindingView {
        let parsed = serde_json::from_value::<Finding>(value.clone()).ok();
        let mut view = FindingView {
            severity: parsed.as_ref().map_or("", |f| f.severity().name()),
            kind: kind.to_string(),
            summary: summary(value, kind, subject),
            first_seen: String::new(),
            last_seen: String::new(),
            attributes: Vec::new(),
            package: None,
            details: Vec::new(),
        };
        match parsed {
            Some(Finding::File(file)) => {
                view.attributes = attribute_rows(&file);
                view.package = file.package.as_ref().map(PackageRef::describe);
            }
            _ => view.details = details(value),
        }
        view
    }
}

/// One line that says what changed: `modified /usr/bin/ssh (content)`, and inside a
/// container `… in container web (0123456789ab) of image shop/api:1.4` (the store's
/// wording, [`container_with_image`]). Findings with the same line on several hosts
/// are the same change ([`super::drift`]).
pub fn summary(value: &Value, kind: &str, subject: &str) -> String {
    let mut line = match serde_json::from_value::<Finding>(value.clone()) {
        Ok(Finding::File(file)) => {
            let change = match file.change {
                driftwatch_protocol::report::FileChange::Added => "added",
                driftwatch_protocol::report::FileChange::Removed => "removed",
                driftwatch_protocol::report::FileChange::Modified => "modified",
            };
            let attributes: Vec<&str> = file.attributes.iter().map(|a| a.name()).collect();
            let mut line = format!("{change} {}", file.path);
            if !attributes.is_empty() {
                line.push_str(&format!(" ({})", attributes.join(", ")));
            }
            line
        }
        Ok(Finding::Package(package)) => {
            format!("package {}", PackageRef::from(&package).describe())
        }
        _ => {
            let kind = kind.replace('_', " ");
            match value.get("reason").and_then(Value::as_str) {
                Some(reason) => format!("{kind} {subject} ({})", reason.replace('_', " ")),
                None => format!("{kind} {subject}"),
            }
        }
    };
    if let Some(container) = value.get("container").filter(|c| c.is_object()) {
        line.push_str(&format!(" in {}", container_with_image(container)));
    }
    line
}

/// The rows of a file finding: each attribute as baked and as found.
fn attribute_rows(file: &FileFinding) -> Vec<AttrRow> {
    type Show = fn(&EntryState) -> String;
    let rows: [(&'static str, &[Attribute], Show); 9] = [
        ("type", &[Attribute::Type], |e| e.file_type.clone()),
        ("mode", &[Attribute::Mode], |e| e.mode.clone()),
        ("owner", &[Attribute::Uid, Attribute::Gid], |e| {
            format!("{}:{}", e.uid, e.gid)
        }),
        ("size", &[Attribute::Size], |e| e.size.to_string()),
        ("blake3", &[Attribute::Content], |e| {
            e.blake3.clone().unwrap_or_default()
        }),
        ("sha256", &[Attribute::Content], |e| {
            e.sha256.clone().unwrap_or_default()
        }),
        ("link target", &[Attribute::LinkTarget], |e| {
            e.link_target.clone().unwrap_or_default()
        }),
        ("xattrs", &[Attribute::Xattrs], |e| {
            e.xattrs
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        }),
        ("mtime", &[Attribute::Mtime], |e| e.mtime.clone()),
    ];
    let absent = "—".to_string();
    rows.into_iter()
        .map(|(name, attributes, show)| AttrRow {
            name,
            before: file.baseline.as_ref().map_or(absent.clone(), show),
            after: file.observed.as_ref().map_or(absent.clone(), show),
            changed: attributes.iter().any(|a| file.attributes.contains(a)),
        })
        .filter(|row| !(row.before.is_empty() && row.after.is_empty()))
        .collect()
}

/// The fields of a finding that is not about a file, as `name: value` pairs.
fn details(value: &Value) -> Vec<(String, String)> {
    let Some(object) = value.as_object() else {
        return Vec::new();
    };
    object
        .iter()
        .filter(|(name, v)| !matches!(name.as_str(), "kind" | "severity") && !v.is_null())
        .map(|(name, v)| {
            let text = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (name.replace('_', " "), text)
        })
        .collect()
}

/// An action-log row.
pub struct ActionRow {
    pub at: String,
    pub host: String,
    pub image: String,
    pub action: String,
    pub target: String,
    pub outcome: &'static str,
    pub detail: String,
}

impl ActionRow {
    /// The row of a logged action.
    pub fn of(action: &ActionRecord) -> ActionRow {
        ActionRow {
            at: time(action.at_ms),
            host: action.host_id.clone().unwrap_or_default(),
            image: action.image_id.clone().unwrap_or_default(),
            action: action.action.clone(),
            target: action.target.clone().unwrap_or_default(),
            outcome: action.outcome.name(),
            detail: action.detail.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_modified_file_shows_what_changed_before_and_after() {
        let entry = |mode: &str, size: u64, blake3: &str| {
            serde_json::json!({"type": "file", "mode": mode, "uid": 0, "gid": 0, "size": size,
                "mtime": "2026-01-01T00:00:00Z", "rdev": null, "blake3": blake3,
                "sha256": null, "link_target": null, "xattrs": {}})
        };
        let finding = serde_json::json!({
            "kind": "file", "change": "modified", "path": "/usr/bin/ssh",
            "attributes": ["mode", "size", "content"], "severity": "critical", "rule": "bin",
            "baseline": entry("0755", 10, "aa"), "observed": entry("4755", 12, "bb"),
        });
        let view = FindingView::of_value(&finding, "file", "/usr/bin/ssh");
        assert_eq!(view.summary, "modified /usr/bin/ssh (mode, size, content)");
        assert_eq!(view.severity, "critical");
        let mode = view.attributes.iter().find(|r| r.name == "mode").unwrap();
        assert_eq!(
            (mode.before.as_str(), mode.after.as_str()),
            ("0755", "4755")
        );
        assert!(mode.changed);
        let owner = view.attributes.iter().find(|r| r.name == "owner").unwrap();
        assert!(!owner.changed);
        assert!(view.attributes.iter().all(|r| r.name != "sha256"));
    }

    #[test]
    fn other_findings_list_their_fields() {
        let finding = serde_json::json!({"kind": "kernel_module", "reason": "not_in_image",
            "name": "rootkit", "taint": null, "severity": "high"});
        let view = FindingView::of_value(&finding, "kernel_module", "rootkit");
        assert_eq!(view.summary, "kernel module rootkit (not in image)");
        assert!(view.details.contains(&("name".into(), "rootkit".into())));
        assert!(view.details.iter().all(|(k, _)| k != "taint"));
    }
}
