//! The durable outbox: what the collector owes the outside world, kept in the store.
//!
//! Nothing the collector decides waits in memory. An alert-worthy [`Occurrence`] is
//! written in the transaction that causes it (grouping state: which hosts of which
//! change are pending or already alerted); a flushed group becomes one [`Alert`], and
//! each alert and each mark command becomes an outbox row ([`OutboxItem`]) with an
//! idempotency key. Every replica drains the outbox: it *claims* due rows for a claim
//! lease ([`Claim`]), delivers them, and records the outcome. A replica that dies with
//! a claim loses it when the lease expires, and another replica delivers the row —
//! with the same key, so receivers can drop the duplicate. Delivery is at least once.
//!
//! "Seen again" is refreshed at most hourly (the memory is forgotten after a day), so
//! a change reported again and again does not lock its alert row every time.
//!
//! Retries wait as `driftwatch_protocol::backoff` says (exponential, capped, with
//! jitter, so that a fleet of retries does not hit a recovering receiver in step)
//! until the row's `give_up` time.

use driftwatch_protocol::report::Severity;
use serde::{Deserialize, Serialize};

/// What an alert is about; webhooks subscribe by [`AlertKind::name`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// A finding: the host differs from its image.
    Drift,
    /// The host stopped sending heartbeats.
    Silence,
    /// The replacement budget held a host back.
    Budget,
    /// The host reports an unknown image or another baseline than its image's.
    Image,
    /// The host was marked for replacement.
    Marked,
}

impl AlertKind {
    /// Every kind.
    pub const ALL: [AlertKind; 5] = [
        AlertKind::Drift,
        AlertKind::Silence,
        AlertKind::Budget,
        AlertKind::Image,
        AlertKind::Marked,
    ];

    /// The name webhooks subscribe with (one of [`crate::config::ALERT_KINDS`]).
    pub fn name(self) -> &'static str {
        match self {
            AlertKind::Drift => "drift",
            AlertKind::Silence => "silence",
            AlertKind::Budget => "budget",
            AlertKind::Image => "image",
            AlertKind::Marked => "marked",
        }
    }

    /// The kind of a stored name; `None` for a name this collector does not know.
    pub fn from_name(name: &str) -> Option<AlertKind> {
        AlertKind::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// Something alert-worthy on one host (or in one of its containers).
#[derive(Clone, Debug, PartialEq)]
pub struct Occurrence {
    /// What kind of alert it makes.
    pub kind: AlertKind,
    /// The host's image, when known; `None` for a change inside a container, which
    /// groups by the container's image across hosts of any image.
    pub image_id: Option<String>,
    /// The container a change was found in: the group counts containers, not hosts.
    pub container: Option<InContainer>,
    /// What is the same across hosts, e.g. `file:/usr/bin/ssh:modified:content` for
    /// drift, `package:openssl:amd64:3.0.1->3.0.2` for a package's files, empty for
    /// silence, budget and marked (which group by image alone).
    pub group: String,
    /// For people: `modified /usr/bin/ssh (content, mode)`.
    pub title: String,
    /// How serious; the group's alert takes the highest.
    pub severity: Severity,
    /// The host.
    pub host_id: String,
    /// One sentence about this host's occurrence (shown when only one host is alerted).
    pub detail: String,
}

/// The container of a change inside one: who it is, and the image its group is of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InContainer {
    /// Its id (unique on its host).
    pub id: String,
    /// Its image as alerts name it: `shop/api:1.4@sha256:…`.
    pub image: String,
}

/// One container of an alert.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AlertContainer {
    /// Its host.
    pub host_id: String,
    /// Its id.
    pub id: String,
}

/// One alert: a flushed group, as it is delivered.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Its kind.
    pub kind: AlertKind,
    /// The image, when known.
    pub image_id: Option<String>,
    /// The group (see [`Occurrence::group`]).
    pub group: String,
    /// For people.
    pub title: String,
    /// The highest severity of the group's occurrences.
    pub severity: Severity,
    /// The hosts of this alert, sorted.
    pub hosts: Vec<String>,
    /// Hosts (containers, for a change inside containers) alerted for the same key
    /// before (0 unless a follow-up).
    pub earlier: usize,
    /// Live hosts of the image when flushed (`None` for a change inside containers:
    /// their hosts may be of several images).
    pub image_hosts: Option<u64>,
    /// For a change inside containers: the containers' image (`image_id` is `None`).
    #[serde(default)]
    pub container_image: Option<String>,
    /// For a change inside containers: the containers of this alert, sorted.
    #[serde(default)]
    pub containers: Vec<AlertContainer>,
    /// For a change inside containers: the hosts of every container alerted for it,
    /// this alert's included.
    #[serde(default)]
    pub all_hosts: usize,
    /// The first host's detail.
    pub detail: String,
    /// When the group's first occurrence was stored.
    pub first_at_ms: i64,
    /// When the group was flushed.
    pub sent_at_ms: i64,
}

/// A mark command owed for one marked host.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CommandJob {
    /// The host.
    pub host_id: String,
    /// Its image.
    pub image_id: Option<String>,
    /// Its hostname.
    pub hostname: String,
    /// Why it was marked.
    pub reason: String,
}

/// What an outbox row delivers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OutboxItem {
    /// An alert to the webhook at `url`.
    Webhook {
        /// The receiver (as configured).
        url: String,
        /// The alert.
        alert: Alert,
    },
    /// The mark command for one host.
    Command(CommandJob),
}

impl OutboxItem {
    /// The kind column: `webhook` or `command`.
    pub fn kind(&self) -> &'static str {
        match self {
            OutboxItem::Webhook { .. } => "webhook",
            OutboxItem::Command(_) => "command",
        }
    }
}

/// An outbox row claimed by this replica.
#[derive(Clone, Debug, PartialEq)]
pub struct Claim {
    /// The row.
    pub id: i64,
    /// What to deliver.
    pub item: OutboxItem,
    /// Sent with it (`Idempotency-Key`, `DRIFTWATCH_ACTION_ID`): the same for every
    /// attempt and every replica.
    pub idempotency_key: String,
    /// Attempts so far, this one included.
    pub attempts: u32,
    /// After this time a failed attempt is final.
    pub give_up_ms: i64,
}

impl Claim {
    /// A claimed row as stored: its payload is the JSON of its [`OutboxItem`].
    pub(crate) fn from_stored(
        id: i64,
        payload: &str,
        idempotency_key: String,
        attempts: i64,
        give_up_ms: i64,
    ) -> super::StoreResult<Claim> {
        Ok(Claim {
            id,
            item: serde_json::from_str(payload)
                .map_err(|e| super::StoreError::Corrupt(format!("outbox row {id}: {e}")))?,
            idempotency_key,
            attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
            give_up_ms,
        })
    }
}

/// A fresh random token (128 bits, hex): idempotency keys and replica ids.
pub fn random_token() -> String {
    // Fails only without an entropy source; then a time-based value still keeps the
    // tokens of one process distinct (they identify, they guard nothing).
    driftwatch_protocol::random::hex(16).unwrap_or_else(|_| {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("{:016x}{n:016x}", super::now_ms())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_distinct_hex() {
        let (a, b) = (random_token(), random_token());
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
