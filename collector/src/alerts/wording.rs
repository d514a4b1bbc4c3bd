//! How an alert reads: one sentence for people ("modified /usr/bin/ssh on 40 of 40
//! hosts of image ami-123"), and the two payloads webhooks receive (JSON with every
//! field, or chat's one line of text).

use crate::config::WebhookFormat;
use crate::store::outbox::{Alert, AlertKind};
use driftwatch_protocol::report::format_timestamp;
use driftwatch_protocol::Timestamp;

/// The `schema` of the JSON payload.
pub const ALERT_SCHEMA: &str = "driftwatch.alert/v1";

/// Host ids listed in one alert; `host_count` has the full number. A hundred ids are
/// enough to act on, and chat services refuse long messages.
const MAX_HOSTS_LISTED: usize = 100;

impl Alert {
    /// One sentence: "modified /usr/bin/ssh on 40 of 40 hosts of image ami-123".
    pub fn summary(&self) -> String {
        let count = self.hosts.len();
        let total = self.earlier + count;
        let fleet = match &self.image_id {
            Some(image) => format!("of image {image}"),
            None => "without an image id".to_string(),
        };
        // "43 of 60 hosts of image X", or "43 hosts of image X" when the store failed.
        let of_fleet = match self.image_hosts {
            Some(n) => format!("{total} of {n} {} {fleet}", hosts_noun(n)),
            None => format!("{total} {} {fleet}", hosts_noun(total as u64)),
        };
        let budget = match &self.image_id {
            Some(image) => format!("image {image}"),
            None => "hosts without an image id".to_string(),
        };
        let more = format!("{count} more {}", hosts_noun(count as u64));
        let first = self.earlier == 0;
        let sentence = match self.kind {
            AlertKind::Drift | AlertKind::Image if first => {
                format!("{} on {of_fleet}", self.title)
            }
            AlertKind::Drift | AlertKind::Image => {
                format!("{} on {more}, {of_fleet}", self.title)
            }
            AlertKind::Silence if first => format!("{of_fleet} went silent"),
            AlertKind::Silence => format!("{more} went silent, {of_fleet} in all"),
            AlertKind::Marked if first => format!(
                "{of_fleet} {} marked for replacement",
                if total == 1 { "was" } else { "were" }
            ),
            AlertKind::Marked => format!(
                "{more} {} marked for replacement, {of_fleet} in all",
                if count == 1 { "was" } else { "were" }
            ),
            AlertKind::Budget if first => format!(
                "the replacement budget of {budget} held back {count} {}",
                hosts_noun(count as u64)
            ),
            AlertKind::Budget => {
                format!("the replacement budget of {budget} held back {more}, {total} in all")
            }
        };
        if count == 1 && !self.detail.is_empty() {
            format!("{sentence}: {}", self.detail)
        } else {
            sentence
        }
    }

    /// The readable line both payloads carry.
    pub fn text(&self) -> String {
        format!(
            "[driftwatch] {} {}: {}",
            self.severity.name().to_uppercase(),
            self.kind.name(),
            self.summary()
        )
    }

    /// The body posted to a webhook of this format.
    pub fn payload(&self, format: WebhookFormat) -> serde_json::Value {
        match format {
            WebhookFormat::Chat => serde_json::json!({ "text": self.text() }),
            WebhookFormat::Json => serde_json::json!({
                "schema": ALERT_SCHEMA,
                "kind": self.kind.name(),
                "image_id": self.image_id,
                "title": self.title,
                "severity": self.severity.name(),
                "group": self.group,
                "hosts": self.hosts.iter().take(MAX_HOSTS_LISTED).collect::<Vec<_>>(),
                "host_count": self.hosts.len(),
                "earlier_hosts": self.earlier,
                "image_hosts": self.image_hosts,
                "text": self.text(),
                "first_at": rfc3339(self.first_at_ms),
                "sent_at": rfc3339(self.sent_at_ms),
            }),
        }
    }
}

fn hosts_noun(n: u64) -> &'static str {
    if n == 1 {
        "host"
    } else {
        "hosts"
    }
}

fn rfc3339(ms: i64) -> String {
    format_timestamp(Timestamp {
        secs: ms.div_euclid(1000),
        nanos: u32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use driftwatch_protocol::report::Severity;

    const IMAGE: &str = "img-1";

    fn alert(kind: AlertKind, hosts: &[&str], earlier: usize) -> Alert {
        Alert {
            kind,
            image_id: Some(IMAGE.to_string()),
            group: String::new(),
            title: "modified /usr/bin/ssh (content)".into(),
            severity: Severity::High,
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            earlier,
            image_hosts: Some(40),
            detail: "detail of the first host".into(),
            first_at_ms: 0,
            sent_at_ms: 0,
        }
    }

    #[test]
    fn summaries_read_as_sentences() {
        let three = ["h1", "h2", "h3"];
        let cases = [
            (
                alert(AlertKind::Drift, &three, 0),
                "modified /usr/bin/ssh (content) on 3 of 40 hosts of image img-1",
            ),
            (
                alert(AlertKind::Image, &three, 37),
                "modified /usr/bin/ssh (content) on 3 more hosts, 40 of 40 hosts of image img-1",
            ),
            (
                alert(AlertKind::Silence, &three, 0),
                "3 of 40 hosts of image img-1 went silent",
            ),
            (
                alert(AlertKind::Silence, &three, 2),
                "3 more hosts went silent, 5 of 40 hosts of image img-1 in all",
            ),
            (
                alert(AlertKind::Marked, &["h1"], 0),
                "1 of 40 hosts of image img-1 was marked for replacement: detail of the first host",
            ),
            (
                alert(AlertKind::Marked, &three, 1),
                "3 more hosts were marked for replacement, 4 of 40 hosts of image img-1 in all",
            ),
            (
                alert(AlertKind::Budget, &three, 0),
                "the replacement budget of image img-1 held back 3 hosts",
            ),
            (
                alert(AlertKind::Budget, &three, 8),
                "the replacement budget of image img-1 held back 3 more hosts, 11 in all",
            ),
            (
                Alert {
                    image_id: None,
                    image_hosts: None,
                    ..alert(AlertKind::Silence, &three, 0)
                },
                "3 hosts without an image id went silent",
            ),
        ];
        for (alert, expected) in cases {
            assert_eq!(alert.summary(), expected);
        }
    }
}
