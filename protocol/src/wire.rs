//! What the agent and the collector say to each other over HTTPS
//! (`driftwatch.ingest/v1`).
//!
//! An agent sends [`Batch`]es of [`Event`]s to `POST /v1/ingest`; the collector answers
//! with a [`BatchAck`] that also carries its verdict on the host ([`HostDirective`]): this
//! is how "replace this host" reaches it, on the next heartbeat at the latest.
//!
//! Delivery is *at least once* from the agent (it spools and retries) and *exactly once*
//! in the store: every event carries an id unique per host, and the collector stores an
//! id it has already seen as a duplicate, not again. An agent that never got an
//! acknowledgement simply sends the same events again.
//!
//! Versions skew: within `driftwatch.ingest/v1` a reader ignores fields it does not
//! know, and a collector that cannot accept one event of a batch (a kind newer than
//! it) stores the others and names that one in [`BatchAck::rejected`]. Upgrade the
//! collector first, then the agents.
//!
//! A host without credentials sends an [`EnrollRequest`] to `POST /v1/enroll` with an
//! enrollment token and a certificate signing request; the collector answers with a
//! client certificate bound to the host id ([`EnrollResponse`]), and from then on the
//! host authenticates by mutual TLS like any other. The private key never leaves the
//! host.
//!
//! Before its certificate expires, a host renews it over its current identity with a
//! [`RenewRequest`] to `POST /v1/renew` (same key or a new one); an acknowledgement with
//! [`BatchAck::renew`] asks it to do so at once (the collector's CA changed).

use crate::report::Finding;
use serde::{Deserialize, Serialize};

/// The schema tag of a [`Batch`].
pub const INGEST_SCHEMA: &str = "driftwatch.ingest/v1";

/// The HTTP path of ingest.
pub const INGEST_PATH: &str = "/v1/ingest";

/// The HTTP path of enrollment.
pub const ENROLL_PATH: &str = "/v1/enroll";
/// Where an enrolled host renews its certificate, over its current mutual-TLS identity.
pub const RENEW_PATH: &str = "/v1/renew";

/// The longest host id accepted: ids go into certificates, file names and URLs.
pub const MAX_HOST_ID_LEN: usize = 128;

/// Whether `id` may name a host: 1 to [`MAX_HOST_ID_LEN`] ASCII letters, digits, `.`,
/// `-`, `_` or `:`, not starting with `.` or `-`. A machine id, an instance id or a
/// hostname all fit.
pub fn is_valid_host_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_HOST_ID_LEN
        && !id.starts_with(['.', '-'])
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'))
}

/// One delivery from an agent. `E` is [`Event`] but for an agent forwarding events
/// of kinds it does not know itself (spooled by a newer version), which are sent as
/// they were written.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Batch<E = Event> {
    /// Always [`INGEST_SCHEMA`].
    pub schema: String,
    /// The sending host. It must be the host named by the client certificate.
    pub host_id: String,
    /// The host's name, for people.
    pub hostname: String,
    /// The image and baseline the host runs on, as the host sees them.
    pub image: ImageClaim,
    /// The events, oldest first.
    pub events: Vec<E>,
}

/// The image a host says it runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageClaim {
    /// The image id recorded in the baseline at bake time (`None` when the baseline has
    /// none or could not be read).
    pub image_id: Option<String>,
    /// The digest of the baseline the host verifies against (`blake3:<hex>`); `None`
    /// when the host has no baseline it trusts.
    pub baseline_digest: Option<String>,
}

/// One event, with an id unique for its host.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Unique per host and stable across retries (the agent assigns it when it spools
    /// the event).
    pub id: String,
    /// When the agent observed it (RFC 3339).
    pub at: String,
    /// What happened.
    pub body: EventBody,
}

/// What an event says.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventBody {
    /// The agent is alive.
    Heartbeat(Heartbeat),
    /// A finding, new or changed since the agent last reported it. Findings are never
    /// withdrawn: a drifted host stays drifted until it is replaced.
    Finding {
        /// The finding.
        finding: Finding,
    },
    /// The host's provisioning delta, sent once when its first-boot provisioning
    /// window is sealed: what provisioning (cloud-init) changed on the paths declared
    /// for it, as found. These changes are not drift; the host is judged against its
    /// baseline plus this delta from then on.
    Provisioned(ProvisionDelta),
}

/// What provisioning changed at a host's first boot.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProvisionDelta {
    /// When the window opened (RFC 3339).
    pub opened: Option<String>,
    /// When it was sealed.
    pub sealed: Option<String>,
    /// The units whose end closed it (`cloud-final.service`).
    pub units: Vec<String>,
    /// Each change, as a finding (with the content digests found).
    pub changes: Vec<Finding>,
}

/// A heartbeat's content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The agent's version.
    pub agent_version: String,
    /// How many findings the agent remembers.
    pub findings: u64,
    /// When the agent last finished a full verification (RFC 3339).
    pub last_full_verification: Option<String>,
    /// The agent's own seconds between heartbeats, so the collector can tell silence
    /// from a slow cadence.
    pub interval_secs: u64,
}

/// The collector's answer to a batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchAck {
    /// Events stored now.
    pub accepted: u32,
    /// Events already stored by an earlier delivery.
    pub duplicates: u32,
    /// The collector's verdict on the host.
    pub host: HostDirective,
    /// Events of the batch the collector cannot accept (an event kind it does not
    /// know, a malformed event): the others are stored; these are not, and the agent
    /// drops them (logged and counted) instead of resending them forever.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rejected: Vec<RejectedEvent>,
    /// The host's certificate was not issued by the CA the collector issues from now
    /// (a CA rotation): the agent renews it at once instead of at its usual time.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub renew: bool,
}

/// One event the collector refused, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectedEvent {
    /// Its id (empty when it had none the collector could read).
    pub id: String,
    /// One sentence.
    pub error: String,
}

/// The collector's verdict on a host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostDirective {
    /// The host's state at the collector.
    pub state: HostState,
    /// Set when the host is marked for replacement: the agent turns its health check to
    /// 503, writes its marker and runs its command.
    pub mark: Option<MarkDirective>,
}

/// Why a host is marked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarkDirective {
    /// One sentence.
    pub reason: String,
    /// RFC 3339.
    pub since: String,
}

/// A host's state at the collector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostState {
    /// Reporting, no findings.
    Clean,
    /// Has findings, not (yet) marked.
    Drifted,
    /// Marked for replacement.
    Marked,
    /// Stopped sending heartbeats without being marked.
    Silent,
    /// Marked and since silent (replaced), or retired by an operator.
    Gone,
}

impl HostState {
    /// Every state, in lifecycle order.
    pub const ALL: [HostState; 5] = [
        HostState::Clean,
        HostState::Drifted,
        HostState::Marked,
        HostState::Silent,
        HostState::Gone,
    ];

    /// The lowercase name used in JSON, the API and metrics.
    pub fn name(self) -> &'static str {
        match self {
            HostState::Clean => "clean",
            HostState::Drifted => "drifted",
            HostState::Marked => "marked",
            HostState::Silent => "silent",
            HostState::Gone => "gone",
        }
    }

    /// Parses [`HostState::name`].
    pub fn from_name(name: &str) -> Option<HostState> {
        HostState::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// A host asking for credentials.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// The enrollment token from the collector's configuration.
    pub token: String,
    /// The id the host will report as ([`is_valid_host_id`]).
    pub host_id: String,
    /// A PKCS#10 certificate signing request (PEM) for the host's own key; the
    /// collector ignores its subject and binds the certificate to `host_id`.
    pub csr_pem: String,
}

/// A certificate renewal: a CSR for the same key or a new one, sent over the host's
/// current certificate (which names the host); answered with an [`EnrollResponse`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenewRequest {
    /// A PKCS#10 certificate signing request (PEM) for the key to use from now on.
    pub csr_pem: String,
}

/// Credentials for an enrolled host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollResponse {
    /// The host id the certificate names.
    pub host_id: String,
    /// The client certificate (PEM).
    pub certificate_pem: String,
}

/// An error the collector returns, with a status code in the 4xx or 5xx range.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// One sentence for the operator of the agent.
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ids() {
        for good in [
            "web-1",
            "i-0abc123",
            "4f2c9e0d1b2a",
            "host.example.org",
            "a:b_c",
        ] {
            assert!(is_valid_host_id(good), "{good}");
        }
        let long = "a".repeat(MAX_HOST_ID_LEN + 1);
        for bad in ["", "-x", ".x", "a/b", "a b", "é", long.as_str(), "../etc"] {
            assert!(!is_valid_host_id(bad), "{bad}");
        }
    }

    #[test]
    fn a_batch_round_trips_and_unknown_fields_are_ignored() {
        let batch = Batch {
            schema: INGEST_SCHEMA.into(),
            host_id: "h1".into(),
            hostname: "h1".into(),
            image: ImageClaim {
                image_id: Some("img".into()),
                baseline_digest: Some("blake3:00".into()),
            },
            events: vec![Event {
                id: "s:1".into(),
                at: "2026-01-01T00:00:00Z".into(),
                body: EventBody::Heartbeat(Heartbeat {
                    agent_version: "0.1.0".into(),
                    findings: 0,
                    last_full_verification: None,
                    interval_secs: 30,
                }),
            }],
        };
        let json = serde_json::to_string(&batch).unwrap();
        assert!(json.contains(r#""type":"heartbeat""#), "{json}");
        assert_eq!(serde_json::from_str::<Batch>(&json).unwrap(), batch);
        // A newer agent's fields are ignored by an older reader, not refused.
        let extra = json.replacen("{", r#"{"admin":true,"#, 1).replace(
            r#""interval_secs":30"#,
            r#""interval_secs":30,"battery":"low""#,
        );
        assert_ne!(extra, json);
        assert_eq!(serde_json::from_str::<Batch>(&extra).unwrap(), batch);
    }

    #[test]
    fn state_names_round_trip() {
        for state in HostState::ALL {
            assert_eq!(HostState::from_name(state.name()), Some(state));
            assert_eq!(
                serde_json::to_string(&state).unwrap(),
                format!("\"{}\"", state.name())
            );
        }
    }
}
