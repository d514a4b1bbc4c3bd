//! The text the operator's subcommands print: one function per answer, writing into a
//! `String` (printed at once by the caller, so a closed pipe is handled in one place).
//! Colour only for people at a terminal; pipes and files get plain text.

use crate::api::operator::HostDetail;
use crate::api::rfc3339;
use crate::store::{ActionRecord, FindingRecord, HostRecord, ImageRecord, TokenRecord};
use driftwatch_protocol::wire::HostState;
use std::fmt::Write as _;

/// The hosts table: one line per host.
pub fn hosts(out: &mut String, hosts: &[HostRecord]) {
    let _ = writeln!(
        out,
        "{:<24} {:<8} {:<20} {:>4} {:>4} {:>4} {:>4}  LAST SEEN",
        "HOST", "STATE", "IMAGE", "CRIT", "HIGH", "MED", "LOW"
    );
    let colour = std::io::IsTerminal::is_terminal(&std::io::stdout());
    for h in hosts {
        let [critical, high, medium, low] = h.findings_by_severity;
        let state = format!("{:<8}", h.state.name());
        let state = match (colour, h.state) {
            (true, HostState::Marked) => format!("\x1b[1;31m{state}\x1b[0m"),
            (true, HostState::Drifted | HostState::Silent) => format!("\x1b[33m{state}\x1b[0m"),
            (true, HostState::Clean) => format!("\x1b[32m{state}\x1b[0m"),
            _ => state,
        };
        let _ = writeln!(
            out,
            "{:<24} {state} {:<20} {critical:>4} {high:>4} {medium:>4} {low:>4}  {}{}",
            h.host_id,
            h.image_id.as_deref().unwrap_or("-"),
            rfc3339(h.last_seen_ms),
            h.hold
                .map(|hold| format!("  (held: {hold})"))
                .unwrap_or_default()
        );
    }
}

/// One host: its line of the hosts table, why it is marked or held, its findings.
pub fn host_detail(out: &mut String, detail: &HostDetail) {
    hosts(out, std::slice::from_ref(&detail.host));
    let host = &detail.host;
    for (key, value) in [
        ("mark_reason", &host.mark_reason),
        ("hold", &host.hold.map(|h| h.name().to_string())),
        ("hold_reason", &host.hold_reason),
    ] {
        if let Some(value) = value {
            let _ = writeln!(out, "{key}: {value}");
        }
    }
    let _ = writeln!(out, "\n{} findings", detail.findings.len());
    let (own, containers) = by_container(&detail.findings);
    for f in own {
        finding_line(out, f, "  ");
    }
    for (line, findings) in containers {
        let _ = writeln!(out, "  {line}");
        for f in findings {
            finding_line(out, f, "    ");
        }
    }
    if let Some(delta) = &detail.provisioning {
        provisioning(out, delta);
    }
}

/// A host's findings: its own, then each container's under the container's line, in
/// the order (most severe first) they come.
type ByContainer<'a> = (
    Vec<&'a FindingRecord>,
    Vec<(String, Vec<&'a FindingRecord>)>,
);

fn by_container(findings: &[FindingRecord]) -> ByContainer<'_> {
    let (mut own, mut containers): ByContainer<'_> = (Vec::new(), Vec::new());
    for f in findings {
        match container_line(&f.finding) {
            None => own.push(f),
            Some(line) => match containers.iter_mut().find(|(l, _)| *l == line) {
                Some((_, of_container)) => of_container.push(f),
                None => containers.push((line, vec![f])),
            },
        }
    }
    (own, containers)
}

fn finding_line(out: &mut String, f: &FindingRecord, indent: &str) {
    let _ = writeln!(
        out,
        "{indent}{:<8} {:<13} {}  (first {})",
        f.severity.name(),
        f.kind,
        f.subject,
        rfc3339(f.first_seen_ms)
    );
}

/// How a finding's container heads its group: `container web (3f2a…) image shop/api:1.4
/// pod shop/api-7d9 in shop`; `None` for the host's own findings.
fn container_line(finding: &serde_json::Value) -> Option<String> {
    let container = finding.get("container")?;
    let text = |key: &str| container.get(key).and_then(|v| v.as_str());
    let mut line = crate::store::policy::container_phrase(container);
    if let Some(image) = text("image").or(text("image_digest")) {
        let _ = write!(line, " image {image}");
    }
    if let Some(pod) = text("pod") {
        let _ = write!(line, " pod {pod}");
        if let Some(namespace) = text("namespace") {
            let _ = write!(line, " in {namespace}");
        }
    }
    Some(line)
}

/// A host's provisioning delta: what first boot wrote on declared paths (not drift).
fn provisioning(out: &mut String, delta: &serde_json::Value) {
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_string();
    let changes = delta["changes"].as_array().cloned().unwrap_or_default();
    let _ = writeln!(
        out,
        "\nprovisioning delta (not drift): {} changes, sealed {}",
        changes.len(),
        text(&delta["sealed"])
    );
    for change in &changes {
        let _ = writeln!(
            out,
            "  {:<8} {}  {}",
            text(&change["change"]),
            text(&change["path"]),
            text(&change["observed"]["blake3"])
        );
    }
}

/// The registered images.
pub fn images(out: &mut String, images: &[ImageRecord]) {
    for i in images {
        let _ = writeln!(
            out,
            "{}  {}  {} entries  {}  registered {}",
            i.image_id,
            i.baseline_digest,
            i.entries,
            i.signer.as_deref().unwrap_or("unsigned"),
            rfc3339(i.registered_ms)
        );
    }
}

/// The answer to `image register`.
pub fn registered(out: &mut String, image: &ImageRecord) {
    let _ = writeln!(
        out,
        "Registered image {} with baseline {} ({}).",
        image.image_id,
        image.baseline_digest,
        image
            .signer
            .as_deref()
            .map_or("unsigned".into(), |s| format!("signed by {s}"))
    );
}

/// The action log, newest first.
pub fn actions(out: &mut String, actions: &[ActionRecord]) {
    for a in actions {
        let _ = writeln!(
            out,
            "{}  {:<14} {:<18} {:<10} {}",
            rfc3339(a.at_ms),
            a.action,
            a.host_id
                .as_deref()
                .or(a.image_id.as_deref())
                .unwrap_or("-"),
            a.outcome,
            a.detail
        );
    }
}

/// The answer to approve, mark, unmark and revoke.
pub fn host_now(out: &mut String, host: &HostRecord) {
    let _ = writeln!(out, "Host {} is now {}.", host.host_id, host.state.name());
}

/// The tokens table: one line per token, no secrets.
pub fn tokens(out: &mut String, tokens: &[TokenRecord]) {
    let _ = writeln!(
        out,
        "{:<24} {:<9} {:<21} {:>5}  SCOPE",
        "NAME", "ROLE", "EXPIRES", "USES"
    );
    for t in tokens {
        let expires = t.expires_ms.map_or("never".into(), rfc3339);
        let uses = t.uses_left.map_or("-".into(), |n| n.to_string());
        let mut scope = [("hosts", &t.host_ids), ("images", &t.images)]
            .iter()
            .filter_map(|(what, glob)| glob.as_ref().map(|g| format!("{what}={g}")))
            .collect::<Vec<_>>();
        if !t.daemon {
            scope.push("no-daemon".into());
        }
        let scope = scope.join(" ");
        let revoked = t
            .revoked_ms
            .map_or(String::new(), |at| format!("  (revoked {})", rfc3339(at)));
        let _ = writeln!(
            out,
            "{:<24} {:<9} {expires:<21} {uses:>5}  {scope}{revoked}",
            t.name, t.role
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use driftwatch_protocol::report::Severity;

    fn finding(subject: &str, container: Option<serde_json::Value>) -> FindingRecord {
        let mut finding = serde_json::json!({"change": "added"});
        if let Some(container) = container {
            finding["container"] = container;
        }
        FindingRecord {
            host_id: "h".into(),
            key: format!("file:{subject}"),
            kind: "file".into(),
            severity: Severity::High,
            subject: subject.into(),
            finding,
            first_seen_ms: 0,
            last_seen_ms: 0,
        }
    }

    #[test]
    fn container_findings_are_shown_under_their_container() {
        let web = serde_json::json!({"id": "0123456789abcdef", "name": "web", "runtime": "containerd",
            "image": "shop/api:1.4", "pod": "api-7d9", "namespace": "shop"});
        let db = serde_json::json!({"id": "fedcba9876543210", "runtime": "podman"});
        let findings = [
            finding("/usr/local/bin/x", Some(web.clone())),
            finding("/etc/ssh/sshd_config", None),
            finding("/tmp/y", Some(db)),
            finding("/etc/passwd", Some(web)),
        ];
        let (own, containers) = by_container(&findings);
        assert_eq!(own.len(), 1);
        assert_eq!(own[0].subject, "/etc/ssh/sshd_config");
        let lines: Vec<(&str, Vec<&str>)> = containers
            .iter()
            .map(|(line, fs)| {
                (
                    line.as_str(),
                    fs.iter().map(|f| f.subject.as_str()).collect(),
                )
            })
            .collect();
        assert_eq!(
            lines,
            [
                (
                    "container web (0123456789ab) image shop/api:1.4 pod api-7d9 in shop",
                    vec!["/usr/local/bin/x", "/etc/passwd"]
                ),
                ("container fedcba987654", vec!["/tmp/y"]),
            ]
        );
    }
}
