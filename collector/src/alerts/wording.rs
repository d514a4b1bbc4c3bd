//! How an alert reads: one sentence for people ("modified /usr/bin/ssh on 40 of 40
//! hosts of image ami-123", or for a change inside containers "added file
//! /usr/local/bin/x in 12 containers of image shop/api@sha256:… on 5 hosts"), and the
//! two payloads webhooks receive (JSON with every field, or chat's one line of text).

use crate::config::WebhookFormat;
use crate::store::outbox::{Alert, AlertKind};
use driftwatch_protocol::report::format_timestamp;
use driftwatch_protocol::Timestamp;

/// The `schema` of the JSON payload.
pub const ALERT_SCHEMA: &str = "driftwatch.alert/v1";

/// Host ids (and containers) listed in one alert; `host_count` (`container_count`)
/// has the full number. A hundred ids are enough to act on, and chat services refuse
/// long messages.
const MAX_HOSTS_LISTED: usize = 100;

impl Alert {
    /// One sentence: "modified /usr/bin/ssh on 40 of 40 hosts of image ami-123".
    pub fn summary(&self) -> String {
        if let Some(image) = &self.container_image {
            return self.containers_summary(image);
        }
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

    /// A change inside containers: "added file /usr/local/bin/x in 12 containers of
    /// image shop/api@sha256:… on 5 hosts" — counted by container, the hosts whatever
    /// their own image.
    fn containers_summary(&self, image: &str) -> String {
        let count = self.containers.len();
        let hosts = self.hosts.len();
        let sentence = if self.earlier == 0 {
            format!(
                "{} in {count} {} of image {image} on {hosts} {}",
                self.title,
                containers_noun(count),
                hosts_noun(hosts as u64)
            )
        } else {
            let total = self.earlier + count;
            format!(
                "{} in {count} more {} of image {image}, {total} {} on {} {} in all",
                self.title,
                containers_noun(count),
                containers_noun(total),
                self.all_hosts,
                hosts_noun(self.all_hosts as u64)
            )
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
                "earlier_hosts": self.container_image.is_none().then_some(self.earlier),
                "image_hosts": self.image_hosts,
                "container_image": self.container_image,
                "containers": self.containers.iter().take(MAX_HOSTS_LISTED).collect::<Vec<_>>(),
                "container_count": self.containers.len(),
                "earlier_containers": self.container_image.is_some().then_some(self.earlier),
                "all_hosts": self.container_image.is_some().then_some(self.all_hosts),
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

fn containers_noun(n: usize) -> &'static str {
    if n == 1 {
        "container"
    } else {
        "containers"
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
    use crate::store::outbox::AlertContainer;
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
            container_image: None,
            containers: Vec::new(),
            all_hosts: 0,
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

    /// `n` containers, spread over `hosts`.
    fn in_containers(n: usize, hosts: &[&str], earlier: usize, all_hosts: usize) -> Alert {
        let containers: Vec<AlertContainer> = (0..n)
            .map(|i| AlertContainer {
                host_id: hosts[i % hosts.len()].to_string(),
                id: format!("c{i}"),
            })
            .collect();
        Alert {
            image_id: None,
            image_hosts: None,
            title: "added file /usr/local/bin/x".into(),
            detail: "first seen in container web (c0) on h1 (h1.example)".into(),
            container_image: Some("shop/api:1.4@sha256:ab12".into()),
            containers,
            all_hosts,
            ..alert(AlertKind::Drift, hosts, earlier)
        }
    }

    #[test]
    fn a_change_inside_containers_counts_containers_and_hosts() {
        let cases = [
            (
                in_containers(12, &["h1", "h2", "h3", "h4", "h5"], 0, 5),
                "added file /usr/local/bin/x in 12 containers of image shop/api:1.4@sha256:ab12 on 5 hosts",
            ),
            (
                in_containers(1, &["h1"], 0, 1),
                "added file /usr/local/bin/x in 1 container of image shop/api:1.4@sha256:ab12 on 1 host: \
                 first seen in container web (c0) on h1 (h1.example)",
            ),
            (
                in_containers(3, &["h6", "h7"], 12, 7),
                "added file /usr/local/bin/x in 3 more containers of image shop/api:1.4@sha256:ab12, \
                 15 containers on 7 hosts in all",
            ),
        ];
        for (alert, expected) in cases {
            assert_eq!(alert.summary(), expected);
        }
        let body = in_containers(12, &["h1", "h2"], 0, 2).payload(WebhookFormat::Json);
        assert_eq!(body["image_id"], serde_json::Value::Null);
        assert_eq!(body["image_hosts"], serde_json::Value::Null);
        assert_eq!(body["container_image"], "shop/api:1.4@sha256:ab12");
        assert_eq!(body["container_count"], 12);
        assert_eq!(body["host_count"], 2);
        assert_eq!(body["earlier_containers"], 0);
        assert_eq!(body["earlier_hosts"], serde_json::Value::Null);
        assert_eq!(
            body["containers"][1],
            serde_json::json!({"host_id": "h2", "id": "c1"})
        );
        // A host's alert says nothing of containers.
        let host = alert(AlertKind::Drift, &["h1"], 0).payload(WebhookFormat::Json);
        assert_eq!(host["container_image"], serde_json::Value::Null);
        assert_eq!(host["containers"], serde_json::json!([]));
        assert_eq!(host["earlier_hosts"], 0);
    }
}
