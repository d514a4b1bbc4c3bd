//! Where the fleet's state lives: the [`Store`] trait and its records.
//!
//! Everything the collector knows goes through this trait, so that the embedded SQLite
//! store ([`sqlite::SqliteStore`], the default) and a PostgreSQL store for replicated
//! collectors can be swapped without touching the API, the fleet logic or the actions.
//!
//! Guarantees every implementation gives:
//! - [`Store::ingest`] is atomic and durable: when it returns `Ok`, the batch's events
//!   and findings are committed **together with the decision they cause** (the host's
//!   new state, its hold or mark, the alerts and the mark command in the outbox), and
//!   the agent may be told so. No crash can leave findings stored and undecided.
//! - Event ids are unique per host: an event seen before is counted as a duplicate and
//!   changes nothing, so a retried batch stores nothing twice. A new event for a
//!   finding already stored whose content changed (severity, attributes, content)
//!   updates it and is decided and alerted like a new finding.
//! - The replacement budget of an image holds exactly, however many replicas decide
//!   at once: each implementation serialises the decisions of one image (see
//!   [`decide::DecisionTx::lock_budget`]).
//! - What the collector owes the outside world is in the [`outbox`], and periodic work
//!   runs under [leases](Store::lease).
//!
//! Times are milliseconds since the Unix epoch ([`now_ms`]); the API renders them as
//! RFC 3339.

pub mod dashboard;
pub mod decide;
pub mod outbox;
pub mod policy;
pub mod postgres;
pub mod sqlite;
#[cfg(test)]
mod tests;
pub mod trust;

pub use dashboard::{HeldHosts, ImageStates, SessionRecord};
pub use outbox::{AlertKind, Occurrence};
pub use policy::Policy;
pub use trust::{Admission, Binding, Enrolled, TokenRecord};

use async_trait::async_trait;
use base64::Engine;
use driftwatch_protocol::report::{Finding, Severity};
use driftwatch_protocol::wire::HostState;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use thiserror::Error;

/// The store as the rest of the collector holds it.
pub type DynStore = Arc<dyn Store>;

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Serde for millisecond timestamps as RFC 3339 text: the store keeps numbers, people
/// and the API read times. Records serialize through it, so the API returns them as
/// they are.
pub mod rfc3339_ms {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    /// Milliseconds as RFC 3339 (UTC, seconds).
    pub fn serialize<S: Serializer>(ms: &i64, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&crate::api::rfc3339(*ms))
    }

    /// RFC 3339 as milliseconds.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
        let text = String::deserialize(deserializer)?;
        let time = humantime::parse_rfc3339_weak(&text).map_err(D::Error::custom)?;
        let ms = time
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(D::Error::custom)?
            .as_millis();
        i64::try_from(ms).map_err(D::Error::custom)
    }

    /// The same for optional times.
    pub mod option {
        use serde::{Deserialize, Deserializer, Serializer};

        /// `None` as null.
        pub fn serialize<S: Serializer>(
            ms: &Option<i64>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            match ms {
                Some(ms) => super::serialize(ms, serializer),
                None => serializer.serialize_none(),
            }
        }

        /// null as `None`.
        pub fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Option<i64>, D::Error> {
            Option::<String>::deserialize(deserializer)?
                .map(|text| super::deserialize(serde::de::value::StringDeserializer::new(text)))
                .transpose()
        }
    }
}

/// Why the store failed. Callers turn it into a 500 (or 503) without detail: the
/// message is for the log.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The database refused or failed.
    #[error("database error: {0}")]
    Database(String),
    /// The database aborted the transaction for a conflict with a concurrent one
    /// (PostgreSQL's deadlock or serialization failure, SQLSTATE 40P01 or 40001): the
    /// same transaction run again can succeed, and the store does so a few times.
    #[error("transaction conflict: {0}")]
    Contended(String),
    /// The store's worker is gone (shutting down).
    #[error("the store is shutting down")]
    Closed,
    /// A record the caller named does not exist.
    #[error("no such {what}: {id}")]
    NotFound {
        /// `host`, `image`…
        what: &'static str,
        /// Its id.
        id: String,
    },
    /// The operation conflicts with what is stored (e.g. enrolling a host id that
    /// already has a credential).
    #[error("{0}")]
    Conflict(String),
    /// The database holds something this collector cannot read (an unknown state,
    /// a corrupt record): an error, never a guess.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// A paging cursor that this store did not hand out.
    #[error("invalid cursor")]
    BadCursor,
}

/// A store result.
pub type StoreResult<T> = Result<T, StoreError>;

/// Why a host's decision to mark it is held.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Hold {
    /// The image's replacement budget for the window is used up.
    Budget,
    /// `manual_approve`: an operator must approve.
    Approval,
    /// `dry_run`: it would have been marked.
    DryRun,
}

/// The outcome of a logged action.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Done.
    Ok,
    /// Tried and failed.
    Failed,
    /// Held back (by the budget).
    Held,
    /// Would have been done (dry run).
    DryRun,
    /// Waiting for an operator.
    AwaitingApproval,
}

/// Names in the store and on the wire for the small enums of the store, and the error
/// for a name this collector does not know.
macro_rules! named {
    ($type:ident { $($variant:ident = $name:literal),+ $(,)? }) => {
        impl $type {
            /// The name stored and shown.
            pub fn name(self) -> &'static str {
                match self { $($type::$variant => $name),+ }
            }

            /// The value of a stored name; unknown names are [`StoreError::Corrupt`].
            pub fn parse(name: &str) -> StoreResult<$type> {
                match name {
                    $($name => Ok($type::$variant),)+
                    other => Err(StoreError::Corrupt(format!(
                        "unknown {} {other:?}", stringify!($type).to_lowercase()
                    ))),
                }
            }
        }

        impl std::fmt::Display for $type {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.pad(self.name())
            }
        }

        impl PartialEq<&str> for $type {
            fn eq(&self, other: &&str) -> bool {
                self.name() == *other
            }
        }
    };
}

pub(crate) use named;

named!(Hold {
    Budget = "budget",
    Approval = "approval",
    DryRun = "dry_run",
});
named!(Outcome {
    Ok = "ok",
    Failed = "failed",
    Held = "held",
    DryRun = "dry_run",
    AwaitingApproval = "awaiting_approval",
});

/// A stored host state; an unknown one is [`StoreError::Corrupt`], never a guess.
pub fn parse_state(name: &str) -> StoreResult<HostState> {
    HostState::from_name(name)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown host state {name:?}")))
}

/// One host as the collector knows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostRecord {
    /// The host id (from its certificate).
    pub host_id: String,
    /// Its hostname, as it last said.
    pub hostname: String,
    /// The image it last claimed.
    pub image_id: Option<String>,
    /// The baseline digest it last claimed.
    pub baseline_digest: Option<String>,
    /// Lifecycle state.
    pub state: HostState,
    /// When it entered `state`.
    #[serde(rename = "state_since", with = "rfc3339_ms")]
    pub state_since_ms: i64,
    /// First contact.
    #[serde(rename = "first_seen", with = "rfc3339_ms")]
    pub first_seen_ms: i64,
    /// Last request of any kind.
    #[serde(rename = "last_seen", with = "rfc3339_ms")]
    pub last_seen_ms: i64,
    /// Last heartbeat.
    #[serde(rename = "last_heartbeat", with = "rfc3339_ms::option")]
    pub last_heartbeat_ms: Option<i64>,
    /// The agent's heartbeat interval; 0 for one-shot reporters (never silent).
    pub heartbeat_interval_secs: u64,
    /// The agent's version.
    pub agent_version: Option<String>,
    /// Why it is marked (set in `marked` and kept in `gone`).
    pub mark_reason: Option<String>,
    /// When it was marked.
    #[serde(rename = "marked_at", with = "rfc3339_ms::option")]
    pub marked_at_ms: Option<i64>,
    /// Why a decision to mark it is held (`budget`, `approval`, `dry_run`).
    pub hold: Option<Hold>,
    /// The reason a held decision would mark it with.
    pub hold_reason: Option<String>,
    /// When an operator last unmarked it: findings received before then no longer
    /// select it for marking.
    #[serde(rename = "unmarked_at", with = "rfc3339_ms::option")]
    pub unmarked_at_ms: Option<i64>,
    /// Refused from now on.
    pub revoked: bool,
    /// Findings by severity: critical, high, medium, low (kept incrementally).
    #[serde(rename = "findings")]
    pub findings_by_severity: [u64; 4],
    /// New findings not stored because the host reached
    /// `ingest.max_findings_per_host`.
    #[serde(default)]
    pub findings_dropped: u64,
}

/// One finding of one host (the latest report of it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FindingRecord {
    /// The host.
    pub host_id: String,
    /// [`Finding::key`], or `image:…` for the collector's own image findings.
    pub key: String,
    /// The finding kind (`file`, …, or `image`).
    pub kind: String,
    /// Its severity.
    pub severity: Severity,
    /// [`Finding::subject`] (path or name).
    pub subject: String,
    /// The finding as reported (JSON object).
    pub finding: serde_json::Value,
    /// When it was first received.
    #[serde(rename = "first_seen", with = "rfc3339_ms")]
    pub first_seen_ms: i64,
    /// When it was last received.
    #[serde(rename = "last_seen", with = "rfc3339_ms")]
    pub last_seen_ms: i64,
}

/// What a batch brings, already authenticated and validated.
#[derive(Clone, Debug)]
pub struct IngestRecord {
    /// The host (from its certificate).
    pub host_id: String,
    /// Its hostname.
    pub hostname: String,
    /// The image it claims.
    pub image_id: Option<String>,
    /// The baseline digest it claims.
    pub baseline_digest: Option<String>,
    /// The events: id and content.
    pub events: Vec<IngestEvent>,
    /// Findings the collector adds itself (image mismatch), upserted like the agent's.
    pub collector_findings: Vec<CollectorFinding>,
    /// When it arrived.
    pub received_ms: i64,
}

/// One event to store.
#[derive(Clone, Debug)]
pub struct IngestEvent {
    /// Unique per host.
    pub id: String,
    /// What it says.
    pub body: IngestBody,
}

/// An event's content, as the store needs it.
#[derive(Clone, Debug)]
pub enum IngestBody {
    /// The agent is alive.
    Heartbeat {
        /// Agent version.
        agent_version: String,
        /// Its heartbeat interval (0: one-shot).
        interval_secs: u64,
    },
    /// A finding.
    Finding(Box<Finding>),
    /// The host's sealed first-boot provisioning delta.
    Provisioned(Box<driftwatch_protocol::wire::ProvisionDelta>),
}

/// A finding the collector raises itself about a host.
#[derive(Clone, Debug)]
pub struct CollectorFinding {
    /// Stable key (`image:…`).
    pub key: String,
    /// `image`.
    pub kind: &'static str,
    /// Severity.
    pub severity: Severity,
    /// What it is about (the image id).
    pub subject: String,
    /// The finding as shown (JSON object).
    pub finding: serde_json::Value,
}

/// A finding as one batch brings it, ready to upsert.
#[derive(Clone, Debug)]
pub(crate) struct FindingInput {
    pub key: String,
    pub kind: String,
    pub severity: Severity,
    pub subject: String,
    pub finding: serde_json::Value,
}

impl FindingInput {
    fn from_agent(finding: &Finding) -> StoreResult<FindingInput> {
        Ok(FindingInput {
            key: finding.key(),
            kind: finding.kind_name().to_string(),
            severity: finding.severity(),
            subject: finding.subject(),
            finding: serde_json::to_value(finding)
                .map_err(|e| StoreError::Database(format!("cannot encode a finding: {e}")))?,
        })
    }

    fn from_collector(finding: &CollectorFinding) -> FindingInput {
        FindingInput {
            key: finding.key.clone(),
            kind: finding.kind.to_string(),
            severity: finding.severity,
            subject: finding.subject.clone(),
            finding: finding.finding.clone(),
        }
    }

    /// The stored record of it, as of `now`.
    pub(crate) fn record(&self, host_id: &str, first_seen_ms: i64, now: i64) -> FindingRecord {
        FindingRecord {
            host_id: host_id.to_string(),
            key: self.key.clone(),
            kind: self.kind.clone(),
            severity: self.severity,
            subject: self.subject.clone(),
            finding: self.finding.clone(),
            first_seen_ms,
            last_seen_ms: now,
        }
    }
}

/// Fields of a finding that change without the drift changing (a process's pid).
const VOLATILE_FIELDS: [&str; 1] = ["pid"];

/// Whether a finding reported again says something new: another severity, other
/// attributes, other content. Volatile fields do not count.
pub(crate) fn changed(old: &serde_json::Value, new: &serde_json::Value) -> bool {
    let material = |value: &serde_json::Value| {
        let mut value = value.clone();
        if let Some(object) = value.as_object_mut() {
            for field in VOLATILE_FIELDS {
                object.remove(field);
            }
        }
        value
    };
    material(old) != material(new)
}

/// The findings of a batch in the order they are upserted: the agent's events that
/// are new (by event id), then the collector's own; `heartbeats` counts the events
/// accepted without an id check (heartbeats, the provisioning delta).
pub(crate) struct BatchFindings {
    pub events: Vec<(String, FindingInput)>,
    pub collector: Vec<FindingInput>,
    pub heartbeat: Option<(String, u64)>,
    pub heartbeats: u32,
    /// The host's first-boot provisioning delta (JSON), the last of the batch.
    pub provisioned: Option<String>,
}

impl BatchFindings {
    /// Splits a batch's events; the last heartbeat is the one kept.
    pub(crate) fn of(record: &IngestRecord) -> StoreResult<BatchFindings> {
        let mut split = BatchFindings {
            events: Vec::new(),
            collector: record
                .collector_findings
                .iter()
                .map(FindingInput::from_collector)
                .collect(),
            heartbeat: None,
            heartbeats: 0,
            provisioned: None,
        };
        for event in &record.events {
            match &event.body {
                IngestBody::Heartbeat {
                    agent_version,
                    interval_secs,
                } => {
                    split.heartbeat = Some((agent_version.clone(), *interval_secs));
                    split.heartbeats += 1;
                }
                IngestBody::Finding(finding) => split
                    .events
                    .push((event.id.clone(), FindingInput::from_agent(finding)?)),
                IngestBody::Provisioned(delta) => {
                    // Kept as sent; the latest one wins.
                    split.provisioned = Some(serde_json::to_string(delta).map_err(|e| {
                        StoreError::Database(format!("cannot encode a delta: {e}"))
                    })?);
                    split.heartbeats += 1;
                }
            }
        }
        Ok(split)
    }
}

/// A stored provisioning delta, read back.
pub(crate) fn parse_delta(delta: Option<String>) -> StoreResult<Option<serde_json::Value>> {
    delta
        .map(|d| serde_json::from_str(&d))
        .transpose()
        .map_err(|e| StoreError::Corrupt(format!("a stored delta: {e}")))
}

/// The key of the finding that stands for the findings a host was refused beyond its
/// bound.
pub const TOO_MANY_FINDINGS_KEY: &str = "collector:too_many_findings";

/// The finding that says a host reached `ingest.max_findings_per_host`.
pub(crate) fn too_many_findings(limit: u64, dropped: u64) -> FindingInput {
    FindingInput {
        key: TOO_MANY_FINDINGS_KEY.to_string(),
        kind: "collector".to_string(),
        severity: Severity::Critical,
        subject: "too_many_findings".to_string(),
        finding: serde_json::json!({
            "kind": "collector",
            "reason": "too_many_findings",
            "limit": limit,
            "dropped": dropped,
            "message": format!(
                "the host reported more than {limit} findings; {dropped} more were counted, not stored"
            ),
            "severity": "critical",
        }),
    }
}

/// What a stored batch changed.
#[derive(Clone, Debug)]
pub struct IngestOutcome {
    /// Events stored now.
    pub accepted: u32,
    /// Events already stored before.
    pub duplicates: u32,
    /// Findings first received in this batch, or received again with other content
    /// (agent's and collector's).
    pub new_findings: Vec<FindingRecord>,
    /// The host after the batch and the decision it caused.
    pub host: HostRecord,
    /// True when this batch is the host's first contact.
    pub first_contact: bool,
    /// True when the decision was held back by the budget just now.
    pub budget_stopped: bool,
}

/// A change of a host's lifecycle state, decided by the fleet logic.
#[derive(Clone, Debug, PartialEq)]
pub enum Transition {
    /// To `clean` or `drifted` with no decision pending (or back to `marked` when a
    /// marked host is heard from again); clears any hold.
    Settle(HostState),
    /// To `marked`, for this reason.
    Mark {
        /// One sentence.
        reason: String,
    },
    /// Stays `drifted`; a decision to mark it is held.
    Hold {
        /// Why it is held.
        hold: Hold,
        /// The reason it would be marked with.
        reason: String,
    },
    /// From `marked` back to `drifted` by an operator; older findings stop selecting it,
    /// and the mark no longer counts against the image's budget.
    Unmark,
    /// To `silent`.
    Silence,
    /// To `gone`.
    Retire,
}

/// A decision asked of the store, taken in one transaction.
#[derive(Clone, Debug, PartialEq)]
pub enum Request {
    /// Re-decide the host from all its findings (a budget-held host, periodically).
    Evaluate,
    /// An operator approves a held decision.
    Approve {
        /// Who.
        by: String,
    },
    /// An operator marks the host.
    Mark {
        /// Why.
        reason: String,
        /// Who.
        by: String,
    },
    /// An operator lifts a mark or a held decision.
    Unmark {
        /// Who.
        by: String,
    },
    /// The host's heartbeats stopped: silent, or gone when it was marked.
    Overdue {
        /// Intervals missed (for the alert's wording).
        missed: u32,
    },
}

/// The answer to a [`Request`].
#[derive(Clone, Debug, PartialEq)]
pub struct Decided {
    /// The host afterwards.
    pub host: HostRecord,
    /// True when the budget held the decision back just now.
    pub budget_stopped: bool,
}

/// An image as registered by the bake pipeline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The image id.
    pub image_id: String,
    /// The baseline digest every host of the image must report.
    pub baseline_digest: String,
    /// Fingerprint of the key that signed the baseline, when signed.
    pub signer: Option<String>,
    /// Entries in the baseline.
    pub entries: u64,
    /// When the baseline was made (from its metadata).
    pub created_at: String,
    /// When it was registered.
    #[serde(rename = "registered_at", with = "rfc3339_ms")]
    pub registered_ms: i64,
}

/// One logged action.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActionRecord {
    /// Assigned by the store (0 before).
    pub id: i64,
    /// When.
    #[serde(rename = "at", with = "rfc3339_ms")]
    pub at_ms: i64,
    /// The host it concerns, if one.
    pub host_id: Option<String>,
    /// The image it concerns, if known.
    pub image_id: Option<String>,
    /// `mark`, `hold`, `unmark`, `approve`, `agent_told`, `webhook`, `command`,
    /// `alert`, `silence`, `retire`, `revoke`, `register_image`, `enroll`, `expire`.
    pub action: String,
    /// Who or what it was aimed at (a URL, a command, an operator).
    pub target: Option<String>,
    /// How it ended.
    pub outcome: Outcome,
    /// One sentence.
    pub detail: String,
}

impl ActionRecord {
    /// An action about one host, now.
    pub fn about(
        host: &HostRecord,
        action: &str,
        target: Option<&str>,
        outcome: Outcome,
        detail: &str,
    ) -> ActionRecord {
        ActionRecord {
            id: 0,
            at_ms: now_ms(),
            host_id: Some(host.host_id.clone()),
            image_id: host.image_id.clone(),
            action: action.into(),
            target: target.map(str::to_string),
            outcome,
            detail: detail.into(),
        }
    }
}

/// Where a page starts: after the row with this sort key. Opaque to clients (base64
/// of the key), so the order can change without breaking them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// The numeric part of the sort key (a time, a severity, an id).
    pub number: i64,
    /// The text part (an id, a key).
    pub text: String,
}

impl Cursor {
    /// The opaque form handed to clients.
    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(&(self.number, &self.text)).unwrap_or_default();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    }

    /// Reads an opaque cursor; [`StoreError::BadCursor`] when it is not one.
    pub fn decode(text: &str) -> StoreResult<Cursor> {
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|_| StoreError::BadCursor)?;
        let (number, text): (i64, String) =
            serde_json::from_slice(&json).map_err(|_| StoreError::BadCursor)?;
        Ok(Cursor { number, text })
    }
}

/// Which page of a list.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PageRequest {
    /// Start after this row (default: the first page).
    pub after: Option<Cursor>,
    /// At most this many rows (default: all).
    pub limit: Option<u32>,
}

/// One page of a list, and where the next starts (`None`: this was the last).
#[derive(Clone, Debug, PartialEq)]
pub struct Page<T> {
    /// The rows.
    pub items: Vec<T>,
    /// The cursor of the next page.
    pub next_cursor: Option<Cursor>,
}

impl<T> Page<T> {
    /// A page of `rows` fetched with `limit + 1`: the extra row only says there is
    /// more, and the last kept row's key starts the next page.
    pub(crate) fn of(mut rows: Vec<T>, limit: Option<u32>, key: impl Fn(&T) -> Cursor) -> Page<T> {
        let more = limit.is_some_and(|limit| rows.len() > limit as usize);
        if let (true, Some(limit)) = (more, limit) {
            rows.truncate(limit as usize);
        }
        let next_cursor = if more { rows.last().map(key) } else { None };
        Page {
            items: rows,
            next_cursor,
        }
    }
}

/// A page's cursor as SQL parameters: `(has a cursor, its number, its text)`.
pub(crate) fn cursor_params(page: &PageRequest) -> (bool, i64, String) {
    match &page.after {
        Some(cursor) => (true, cursor.number, cursor.text.clone()),
        None => (false, 0, String::new()),
    }
}

/// The SQL `LIMIT` of a page: one more than asked, to know whether there is more.
pub(crate) fn fetch_limit(limit: Option<u32>) -> i64 {
    limit.map_or(-1, |l| i64::from(l) + 1)
}

/// Which hosts to list.
#[derive(Clone, Debug, Default)]
pub struct HostFilter {
    /// Only hosts in this state.
    pub state: Option<HostState>,
    /// Only hosts on this image.
    pub image_id: Option<String>,
    /// Only hosts with at least one open finding of this severity or worse.
    pub min_severity: Option<Severity>,
    /// In which order.
    pub sort: HostSort,
    /// Which page (in `sort` order; a cursor belongs to the order it came from).
    pub page: PageRequest,
}

/// The orders hosts are listed in, each walked by an index and paged by cursor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HostSort {
    /// Most recently seen first (ties by id).
    #[default]
    LastSeen,
    /// By host id.
    Id,
    /// Most severe first: by [`severity_rank`] (most critical findings, then most
    /// high, …), ties by id.
    Severity,
}

impl HostSort {
    /// Every order, the default first.
    pub const ALL: [HostSort; 3] = [HostSort::LastSeen, HostSort::Id, HostSort::Severity];

    /// The order's name in URLs.
    pub fn name(self) -> &'static str {
        match self {
            HostSort::LastSeen => "seen",
            HostSort::Id => "id",
            HostSort::Severity => "severity",
        }
    }

    /// The order of a name.
    pub fn from_name(name: &str) -> Option<HostSort> {
        HostSort::ALL.into_iter().find(|s| s.name() == name)
    }

    /// The SQL `ORDER BY` of the order (the same in both stores; each has an index
    /// that walks it, alone and after `state =`).
    pub(crate) fn order_by(self) -> &'static str {
        match self {
            HostSort::LastSeen => "last_seen DESC, host_id",
            HostSort::Id => "host_id",
            HostSort::Severity => "severity_rank DESC, host_id",
        }
    }

    /// The cursor after `host` in this order.
    pub(crate) fn cursor_of(self, host: &HostRecord) -> Cursor {
        Cursor {
            number: match self {
                HostSort::LastSeen => host.last_seen_ms,
                HostSort::Id => 0,
                HostSort::Severity => severity_rank(&host.findings_by_severity),
            },
            text: host.host_id.clone(),
        }
    }
}

/// Bits of one severity's count in [`severity_rank`] (a count is capped at
/// `2^15 - 1`, far above `ingest.max_findings_per_host`'s default).
const RANK_BITS: u32 = 15;

/// A host's findings by severity as one number that orders hosts most severe first:
/// the four counts (critical, high, medium, low), each capped, side by side. The
/// stores keep it as the generated column `severity_rank` (same formula, in the
/// migrations), so that one index orders and filters by it.
pub fn severity_rank(findings_by_severity: &[u64; 4]) -> i64 {
    let cap = (1u64 << RANK_BITS) - 1;
    findings_by_severity
        .iter()
        .fold(0u64, |rank, n| (rank << RANK_BITS) | (*n).min(cap)) as i64
}

/// The least [`severity_rank`] of a host with an open finding of `severity` or
/// worse: the filter is one range on the rank.
pub(crate) fn severity_rank_at_least(severity: Severity) -> i64 {
    let mut counts = [0; 4];
    counts[severity_index(severity)] = 1;
    severity_rank(&counts)
}

/// Which actions to list.
#[derive(Clone, Debug, Default)]
pub struct ActionFilter {
    /// Only those about this host.
    pub host_id: Option<String>,
    /// Which page (newest first).
    pub page: PageRequest,
}

/// Fleet-wide counts for metrics.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FleetCounts {
    /// Hosts per state, in [`HostState::ALL`] order.
    pub hosts_by_state: [u64; 5],
    /// Findings per severity: critical, high, medium, low.
    pub findings_by_severity: [u64; 4],
    /// Registered images.
    pub images: u64,
    /// Alerts waiting in the outbox: pending groups and webhook deliveries.
    pub pending_alerts: u64,
    /// Mark commands waiting in the outbox.
    pub pending_commands: u64,
}

/// The index of a severity in `[critical, high, medium, low]` arrays.
pub fn severity_index(severity: Severity) -> usize {
    match severity {
        Severity::Critical => 0,
        Severity::High => 1,
        Severity::Medium => 2,
        Severity::Low => 3,
    }
}

/// A severity as stored (ordered: higher is more severe).
pub(crate) fn severity_code(severity: Severity) -> i64 {
    match severity {
        Severity::Low => 0,
        Severity::Medium => 1,
        Severity::High => 2,
        Severity::Critical => 3,
    }
}

/// A stored severity; an unknown code is [`StoreError::Corrupt`].
pub(crate) fn severity_of(code: i64) -> StoreResult<Severity> {
    match code {
        0 => Ok(Severity::Low),
        1 => Ok(Severity::Medium),
        2 => Ok(Severity::High),
        3 => Ok(Severity::Critical),
        other => Err(StoreError::Corrupt(format!(
            "unknown severity code {other}"
        ))),
    }
}

/// How a delivery attempt ends, as the store records it.
#[derive(Clone, Debug, PartialEq)]
pub enum Finish {
    /// Final (delivered, or failed for good): the row is done, the action logged.
    Done(ActionRecord),
    /// Try again at `at_ms`.
    Retry {
        /// When.
        at_ms: i64,
        /// Why the attempt failed.
        error: String,
    },
}

/// The collector's storage.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Stores a batch and takes the decision it causes, atomically (see the module
    /// docs), creating the host on first contact. Refuses a revoked host with
    /// [`StoreError::Conflict`].
    async fn ingest(&self, record: IngestRecord, policy: Arc<Policy>)
        -> StoreResult<IngestOutcome>;

    /// Takes one decision about a host in one transaction.
    async fn decide(
        &self,
        host_id: &str,
        request: Request,
        policy: Arc<Policy>,
    ) -> StoreResult<Decided>;

    /// One host.
    async fn host(&self, host_id: &str) -> StoreResult<Option<HostRecord>>;

    /// Hosts, most recently seen first.
    async fn hosts(&self, filter: HostFilter) -> StoreResult<Page<HostRecord>>;

    /// A host's findings, most severe first.
    async fn findings(&self, host_id: &str, page: PageRequest) -> StoreResult<Page<FindingRecord>>;

    /// A host's first-boot provisioning delta, as it sent it (`None`: none sent).
    async fn provisioning(&self, host_id: &str) -> StoreResult<Option<serde_json::Value>>;

    /// Applies a lifecycle transition at `at_ms` outside any decision (tests, tools);
    /// returns the host after it.
    async fn transition(
        &self,
        host_id: &str,
        transition: Transition,
        at_ms: i64,
    ) -> StoreResult<HostRecord>;

    /// Hosts of `image_id` marked at or after `since_ms` (the budget's use).
    async fn marked_since(&self, image_id: Option<&str>, since_ms: i64) -> StoreResult<u64>;

    /// Hosts of `image_id` that are not `gone` (the budget's and the alerts' "of N").
    async fn live_hosts_on_image(&self, image_id: Option<&str>) -> StoreResult<u64>;

    /// Ids of hosts whose heartbeats stopped: not `silent` or `gone`, with a heartbeat
    /// interval, and no heartbeat for `missed` intervals before `now_ms`.
    async fn overdue_hosts(&self, missed: u32, now_ms: i64) -> StoreResult<Vec<String>>;

    /// The ids of `drifted` hosts whose decision is held for `hold`.
    async fn held_hosts(&self, hold: Hold) -> StoreResult<Vec<String>>;

    /// The `drifted` hosts held for `hold`: how many, and the first `limit` by id.
    async fn held(&self, hold: Hold, limit: u32) -> StoreResult<HeldHosts>;

    /// The findings of each of `host_ids`, the `per_host` most severe of each, in one
    /// query (ordered by host, then most severe first).
    async fn findings_of(
        &self,
        host_ids: Vec<String>,
        per_host: u32,
    ) -> StoreResult<Vec<FindingRecord>>;

    /// Hosts by image and state, in one grouped query (images by id, hosts that
    /// claim none first).
    async fn hosts_by_image_state(&self) -> StoreResult<Vec<ImageStates>>;

    /// Hosts marked at or after `since_ms`, per image ([`Store::marked_since`] for
    /// every image at once).
    async fn marked_by_image(&self, since_ms: i64) -> StoreResult<Vec<(Option<String>, u64)>>;

    /// Keeps an image's baseline file (for comparing images), replacing the one kept;
    /// `None` forgets it.
    async fn keep_baseline(&self, image_id: &str, baseline: Option<Vec<u8>>) -> StoreResult<()>;

    /// The kept baseline file of an image.
    async fn kept_baseline(&self, image_id: &str) -> StoreResult<Option<Vec<u8>>>;

    /// Stores a dashboard session; beyond `max` live sessions, those closest to their
    /// end are dropped (and expired ones always are).
    async fn open_session(&self, session: SessionRecord, max: u64) -> StoreResult<()>;

    /// The session with this id hash, unless it expired by `now_ms` or the stored
    /// token it was opened with (by hash) is revoked or expired.
    async fn session(&self, id_hash: &str, now_ms: i64) -> StoreResult<Option<SessionRecord>>;

    /// Ends a session (sign-out).
    async fn close_session(&self, id_hash: &str) -> StoreResult<()>;

    /// Deletes hosts `gone` or `silent` since before `before_ms`, with their findings
    /// and events; returns how many.
    async fn expire_hosts(&self, before_ms: i64) -> StoreResult<u64>;

    /// Binds `binding.host_id` to its key, creating the host (as `clean`) when it is
    /// new; a binding with `source` [`trust::Source::Enrolled`] spends one use of its
    /// token. The same key again is [`Enrolled::Again`] (nothing spent); refused
    /// ([`StoreError::Conflict`]) are a revoked host or key, an id bound to another key,
    /// an id provisioned with a certificate (for enrollment), and a used-up token.
    async fn bind(&self, binding: Binding) -> StoreResult<Enrolled>;

    /// What the store knows of a certificate for `host_id` with this key.
    async fn admission(&self, host_id: &str, key_fingerprint: &str) -> StoreResult<Admission>;

    /// Refuses the host from now on, and its key until its certificate expires, even
    /// when the host's record is gone; returns false when the host is unknown.
    async fn revoke(&self, host_id: &str, at_ms: i64) -> StoreResult<bool>;

    /// Stores a new token under its hash ([`trust::token_hash`]); refuses a name in use
    /// ([`StoreError::Conflict`]).
    async fn create_token(&self, token: TokenRecord, hash: String) -> StoreResult<()>;

    /// The token with this hash, revoked or not.
    async fn token(&self, hash: &str) -> StoreResult<Option<TokenRecord>>;

    /// Every token, by name.
    async fn tokens(&self) -> StoreResult<Vec<TokenRecord>>;

    /// Revokes the token `name` at `at_ms`; false when there is no such token.
    async fn revoke_token(&self, name: &str, at_ms: i64) -> StoreResult<bool>;

    /// Registers (or re-registers) an image.
    async fn register_image(&self, image: ImageRecord) -> StoreResult<()>;

    /// One image.
    async fn image(&self, image_id: &str) -> StoreResult<Option<ImageRecord>>;

    /// Images, newest first.
    async fn images(&self, page: PageRequest) -> StoreResult<Page<ImageRecord>>;

    /// Logs an action; returns its id.
    async fn record_action(&self, action: ActionRecord) -> StoreResult<i64>;

    /// The action log, newest first.
    async fn actions(&self, filter: ActionFilter) -> StoreResult<Page<ActionRecord>>;

    /// Counts for metrics.
    async fn counts(&self) -> StoreResult<FleetCounts>;

    /// Files the `marked` occurrence of a host marked for `reason` and queues its mark
    /// command, as a decision does (for tools and tests).
    async fn announce_mark(
        &self,
        host: HostRecord,
        reason: String,
        policy: Arc<Policy>,
    ) -> StoreResult<()>;

    /// Files occurrences into their alert groups (outside a decision: tests, tools).
    async fn raise(&self, occurrences: Vec<Occurrence>, policy: Arc<Policy>) -> StoreResult<()>;

    /// Turns every group whose wait is over into one alert, and the alert into one
    /// outbox row per subscribed webhook; returns the kinds of alerts that went into
    /// the outbox.
    async fn flush_alerts(&self, now_ms: i64, policy: Arc<Policy>) -> StoreResult<Vec<AlertKind>>;

    /// Forgets which hosts were alerted for changes not seen since `before_ms` (a
    /// change that comes back later is news again).
    async fn forget_alerted(&self, before_ms: i64) -> StoreResult<u64>;

    /// Claims up to `limit` due outbox rows of `kind` (`webhook`, `command`) for
    /// `replica` until `now_ms + lease_ms`;
    /// rows claimed by a replica whose claim expired are claimed again.
    async fn claim(
        &self,
        replica: &str,
        kind: &str,
        now_ms: i64,
        lease_ms: i64,
        limit: u32,
    ) -> StoreResult<Vec<outbox::Claim>>;

    /// Records how a claimed row's attempt ended; false (and nothing changed) when the
    /// claim was lost to another replica meanwhile.
    async fn finish(&self, id: i64, replica: &str, finish: Finish) -> StoreResult<bool>;

    /// Takes or renews the lease `name` for `replica` until `now_ms + ttl_ms`; true when
    /// `replica` holds it (it held it already, or the holder's lease expired).
    async fn lease(&self, name: &str, replica: &str, now_ms: i64, ttl_ms: i64)
        -> StoreResult<bool>;
}

/// Opens the store the configuration names.
pub async fn open(config: &crate::config::CollectorConfig) -> StoreResult<DynStore> {
    Ok(match &config.database {
        crate::config::Database::Sqlite(path) => Arc::new(sqlite::SqliteStore::open(path)?),
        crate::config::Database::Postgres(url) => {
            let password = match &config.database_password_file {
                Some(path) => Some(
                    std::fs::read_to_string(path)
                        .map_err(|e| {
                            StoreError::Database(format!("cannot read {}: {e}", path.display()))
                        })?
                        .trim_end_matches(['\n', '\r'])
                        .to_string(),
                ),
                None => None,
            };
            Arc::new(postgres::PostgresStore::connect(url, password.as_deref()).await?)
        }
    })
}
