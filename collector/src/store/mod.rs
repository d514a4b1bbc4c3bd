//! Where the fleet's state lives: the [`Store`] trait and its records.
//!
//! Everything the collector knows goes through this trait, so that the embedded SQLite
//! store ([`sqlite::SqliteStore`], the default) and a PostgreSQL store for replicated
//! collectors can be swapped without touching the API, the fleet logic or the actions.
//!
//! Two guarantees every implementation gives:
//! - [`Store::ingest`] is atomic and durable: when it returns `Ok`, the batch's events
//!   and findings are committed, and the agent may be told so.
//! - Event ids are unique per host: an event seen before is counted as a duplicate and
//!   changes nothing, so a retried batch stores nothing twice.
//!
//! Times are milliseconds since the Unix epoch ([`now_ms`]); the API renders them as
//! RFC 3339.

pub mod sqlite;

use async_trait::async_trait;
use driftwatch_protocol::report::{Finding, Severity};
use driftwatch_protocol::wire::HostState;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The store as the rest of the collector holds it.
pub type DynStore = std::sync::Arc<dyn Store>;

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
}

/// A store result.
pub type StoreResult<T> = Result<T, StoreError>;

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
    pub hold: Option<String>,
    /// The reason a held decision would mark it with.
    pub hold_reason: Option<String>,
    /// When an operator last unmarked it: findings received before then no longer
    /// select it for marking.
    #[serde(rename = "unmarked_at", with = "rfc3339_ms::option")]
    pub unmarked_at_ms: Option<i64>,
    /// Refused from now on.
    pub revoked: bool,
    /// Findings by severity: critical, high, medium, low.
    #[serde(rename = "findings")]
    pub findings_by_severity: [u64; 4],
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
    /// The events: id, observation time (RFC 3339, as sent) and content.
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

/// What a stored batch changed.
#[derive(Clone, Debug)]
pub struct IngestOutcome {
    /// Events stored now.
    pub accepted: u32,
    /// Events already stored before.
    pub duplicates: u32,
    /// Findings first received in this batch (keys), agent's and collector's.
    pub new_findings: Vec<FindingRecord>,
    /// The host after the batch (state not yet re-evaluated by the fleet logic).
    pub host: HostRecord,
    /// True when this batch is the host's first contact.
    pub first_contact: bool,
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
        /// `budget`, `approval` or `dry_run`.
        hold: &'static str,
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
    /// `ok`, `failed`, `held`, `dry_run`…
    pub outcome: String,
    /// One sentence.
    pub detail: String,
}

/// Which hosts to list.
#[derive(Clone, Debug, Default)]
pub struct HostFilter {
    /// Only hosts in this state.
    pub state: Option<HostState>,
    /// Only hosts on this image.
    pub image_id: Option<String>,
    /// At most this many (default: all).
    pub limit: Option<u32>,
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

/// The collector's storage.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Stores a batch atomically (see the module docs), creating the host on first
    /// contact. Refuses a revoked host with [`StoreError::Conflict`].
    async fn ingest(&self, record: IngestRecord) -> StoreResult<IngestOutcome>;

    /// One host.
    async fn host(&self, host_id: &str) -> StoreResult<Option<HostRecord>>;

    /// Hosts, most recently seen first.
    async fn hosts(&self, filter: HostFilter) -> StoreResult<Vec<HostRecord>>;

    /// A host's findings, most severe first.
    async fn findings(&self, host_id: &str) -> StoreResult<Vec<FindingRecord>>;

    /// A host's first-boot provisioning delta, as it sent it (`None`: none sent).
    async fn provisioning(&self, host_id: &str) -> StoreResult<Option<serde_json::Value>>;

    /// Applies a lifecycle transition at `at_ms`; returns the host after it.
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

    /// Hosts whose heartbeats stopped: not `silent` or `gone`, with a heartbeat
    /// interval, and no heartbeat for `missed` intervals before `now_ms`.
    async fn overdue_hosts(&self, missed: u32, now_ms: i64) -> StoreResult<Vec<HostRecord>>;

    /// The ids of `drifted` hosts whose decision is held for `hold` (`budget`, …).
    async fn held_hosts(&self, hold: &str) -> StoreResult<Vec<String>>;

    /// Deletes hosts `gone` or `silent` since before `before_ms`, with their findings
    /// and events; returns how many.
    async fn expire_hosts(&self, before_ms: i64) -> StoreResult<u64>;

    /// Records a credential issued to `host_id`; refuses an id that already has one or
    /// that was revoked ([`StoreError::Conflict`]).
    async fn enroll(&self, host_id: &str, fingerprint: &str, at_ms: i64) -> StoreResult<()>;

    /// Refuses the host from now on; returns false when it is unknown.
    async fn revoke(&self, host_id: &str, at_ms: i64) -> StoreResult<bool>;

    /// Registers (or re-registers) an image.
    async fn register_image(&self, image: ImageRecord) -> StoreResult<()>;

    /// One image.
    async fn image(&self, image_id: &str) -> StoreResult<Option<ImageRecord>>;

    /// Every image, newest first.
    async fn images(&self) -> StoreResult<Vec<ImageRecord>>;

    /// Logs an action; returns its id.
    async fn record_action(&self, action: ActionRecord) -> StoreResult<i64>;

    /// The action log, newest first, optionally for one host.
    async fn actions(&self, host_id: Option<&str>, limit: u32) -> StoreResult<Vec<ActionRecord>>;

    /// Counts for metrics.
    async fn counts(&self) -> StoreResult<FleetCounts>;
}
