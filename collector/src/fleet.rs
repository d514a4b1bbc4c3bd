//! The fleet's front door: the image registry check, and the calls that ask the
//! store for a decision.
//!
//! Every batch an agent sends goes through [`Fleet::ingest`]: the host's claim is
//! checked against the registry (an unregistered image or another baseline than the
//! image's is a critical finding of the collector's own), and the batch is stored
//! together with the decision it causes, in one transaction of the store (the policy
//! itself is [`crate::store::policy`], the decisions [`crate::store::decide`]).
//! Operators' approvals, marks and unmarks are decisions of the store too.
//!
//! A periodic [sweep](Fleet::sweep), run by one replica at a time under the `sweep`
//! lease, turns hosts whose heartbeats stopped `silent` (or `gone`, when they were
//! marked: that is what a replaced host looks like), expires old silent and gone
//! hosts and old alert memory, and retries budget-held hosts.

use crate::actions::Actions;
use crate::alerts::Alerter;
use crate::config::CollectorConfig;
use crate::error::ApiError;
use crate::leases::{self, Periodic};
use crate::metrics::Metrics;
use crate::store::{
    now_ms, ActionRecord, CollectorFinding, Decided, DynStore, Hold, HostRecord, ImageRecord,
    IngestBody, IngestEvent, IngestRecord, Outcome, Policy, Request, StoreError, Transition,
};
use driftwatch_protocol::baseline::{digest_string, BaselineReader};
use driftwatch_protocol::report::Severity;
use driftwatch_protocol::sign::PublicKey;
use driftwatch_protocol::wire::{
    Batch, BatchAck, EventBody, HostDirective, HostState, MarkDirective,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{info, warn};

pub use crate::store::policy::describe;

/// How long a registry answer is reused before asking the store again.
const IMAGE_CACHE_TTL: Duration = Duration::from_secs(30);

/// A change not seen for this long is forgotten by the alerts: when it comes back,
/// it is news again.
const ALERT_MEMORY_MS: i64 = 24 * 3600 * 1000;

/// Decides over the fleet.
pub struct Fleet {
    store: DynStore,
    config: Arc<CollectorConfig>,
    policy: Arc<Policy>,
    trusted_keys: Vec<PublicKey>,
    metrics: Arc<Metrics>,
    images: Mutex<HashMap<String, (Instant, ImageRecord)>>,
    /// The outbox's workers of this replica, started before the fleet.
    _workers: (Alerter, Actions),
}

/// Why a fleet could not be built from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// A rule's glob does not compile.
    #[error("bad glob in a replacement rule: {0}")]
    Glob(#[from] globset::Error),
    /// A trusted key cannot be read.
    #[error("cannot use trusted key {path}: {message}")]
    Key {
        /// The key file.
        path: String,
        /// Why.
        message: String,
    },
}

impl Fleet {
    /// Builds the fleet logic; reads the trusted pipeline keys.
    pub fn new(
        config: Arc<CollectorConfig>,
        store: DynStore,
        alerter: Alerter,
        actions: Actions,
        metrics: Arc<Metrics>,
    ) -> Result<Fleet, FleetError> {
        let policy = Arc::new(Policy::new(&config)?);
        let trusted_keys = config
            .auth
            .trusted_keys
            .iter()
            .map(|path| {
                let key_error = |message: String| FleetError::Key {
                    path: path.display().to_string(),
                    message,
                };
                let pem = std::fs::read_to_string(path).map_err(|e| key_error(e.to_string()))?;
                PublicKey::from_pem(&pem).map_err(|e| key_error(e.to_string()))
            })
            .collect::<Result<_, _>>()?;
        Ok(Fleet {
            store,
            config,
            policy,
            trusted_keys,
            metrics,
            images: Mutex::new(HashMap::new()),
            _workers: (alerter, actions),
        })
    }

    /// The store.
    pub fn store(&self) -> &DynStore {
        &self.store
    }

    /// Stores an authenticated batch, with the decision it causes, and answers with the
    /// host's verdict.
    pub async fn ingest(&self, batch: Batch) -> Result<BatchAck, ApiError> {
        let (collector_findings, image_id) = self
            .image_findings(
                batch.image.image_id.as_deref(),
                batch.image.baseline_digest.as_deref(),
            )
            .await?;
        let events = batch
            .events
            .into_iter()
            .map(|event| IngestEvent {
                id: event.id,
                body: match event.body {
                    EventBody::Heartbeat(heartbeat) => IngestBody::Heartbeat {
                        agent_version: heartbeat.agent_version,
                        interval_secs: heartbeat.interval_secs,
                    },
                    EventBody::Finding { finding } => IngestBody::Finding(Box::new(finding)),
                    EventBody::Provisioned(delta) => IngestBody::Provisioned(Box::new(delta)),
                },
            })
            .collect();
        let record = IngestRecord {
            host_id: batch.host_id,
            hostname: batch.hostname,
            image_id,
            baseline_digest: batch.image.baseline_digest,
            events,
            collector_findings,
            received_ms: now_ms(),
        };
        let outcome = self
            .store
            .ingest(record, Arc::clone(&self.policy))
            .await
            .map_err(|err| match err {
                // The only conflict ingest has: the host was revoked.
                StoreError::Conflict(message) => ApiError::Forbidden(message),
                other => other.into(),
            })?;
        if outcome.budget_stopped {
            self.metrics.budget_stops.inc();
        }
        Ok(BatchAck {
            accepted: outcome.accepted,
            duplicates: outcome.duplicates,
            host: directive(&outcome.host),
            rejected: Vec::new(),
            renew: false,
        })
    }

    /// The registry's opinion of what a host claims, as collector findings, and the
    /// image the host is counted under: the one it claims when that is registered,
    /// else none — images are the collector's, so hosts claiming unregistered ids
    /// share one budget (and one pool for its percentage) instead of inventing a
    /// fresh budget per id.
    async fn image_findings(
        &self,
        image_id: Option<&str>,
        digest: Option<&str>,
    ) -> Result<(Vec<CollectorFinding>, Option<String>), ApiError> {
        let Some(digest) = digest else {
            // No trusted baseline on the host: its agent reports that itself, as a
            // critical `baseline` finding.
            let registered = match image_id {
                Some(id) => self.registered_image(id, "").await?.is_some(),
                None => false,
            };
            return Ok((
                Vec::new(),
                image_id.filter(|_| registered).map(str::to_string),
            ));
        };
        let subject = image_id.unwrap_or("(none)").to_string();
        let registered = match image_id {
            Some(id) => self.registered_image(id, digest).await?,
            None => None,
        };
        let finding = |reason: &str, message: String| CollectorFinding {
            key: format!("image:{reason}"),
            kind: "image",
            severity: Severity::Critical,
            subject: subject.clone(),
            finding: serde_json::json!({
                "kind": "image",
                "reason": reason,
                "image_id": image_id,
                "reported_digest": digest,
                "registered_digest": registered.as_ref().map(|i| i.baseline_digest.clone()),
                "message": message,
                "severity": "critical",
            }),
        };
        let counted = registered.as_ref().map(|image| image.image_id.clone());
        let findings = match &registered {
            None => vec![finding(
                "unregistered",
                format!("image {subject} is not registered with the collector"),
            )],
            Some(image) if image.baseline_digest != digest => vec![finding(
                "digest_mismatch",
                format!(
                    "the host verifies against baseline {digest}, but image {subject} is registered with {}",
                    image.baseline_digest
                ),
            )],
            Some(_) => Vec::new(),
        };
        Ok((findings, counted))
    }

    /// The registered image, from the cache only when it agrees with what the host
    /// claims: any other answer (unregistered, another digest) is read from the store
    /// again, because another replica may have registered the image a moment ago, and
    /// a stale answer would raise a critical finding against a healthy host.
    async fn registered_image(
        &self,
        image_id: &str,
        digest: &str,
    ) -> Result<Option<ImageRecord>, ApiError> {
        if let Ok(cache) = self.images.lock() {
            if let Some((at, image)) = cache.get(image_id) {
                if at.elapsed() < IMAGE_CACHE_TTL && image.baseline_digest == digest {
                    return Ok(Some(image.clone()));
                }
            }
        }
        let image = self.store.image(image_id).await?;
        if let (Ok(mut cache), Some(image)) = (self.images.lock(), &image) {
            // Bounded by the number of registered images hosts claim.
            if cache.len() > 10_000 {
                cache.clear();
            }
            cache.insert(image_id.to_string(), (Instant::now(), image.clone()));
        }
        Ok(image)
    }

    /// Verifies a baseline (digest, and signature against the trusted pipeline keys)
    /// and registers its image.
    pub async fn register_image(
        &self,
        baseline: &[u8],
        expected_id: Option<&str>,
        by: &str,
    ) -> Result<ImageRecord, ApiError> {
        let reader = BaselineReader::open(baseline, None)
            .map_err(|e| ApiError::BadRequest(format!("the baseline does not verify: {e}")))?;
        let meta = reader.meta();
        let image_id = match (meta.image_id.as_deref(), expected_id) {
            (Some(recorded), Some(expected)) if recorded != expected => {
                return Err(ApiError::BadRequest(format!(
                    "the baseline was baked for image {recorded}, not {expected}"
                )))
            }
            (Some(recorded), _) => recorded.to_string(),
            (None, Some(expected)) => expected.to_string(),
            (None, None) => {
                return Err(ApiError::BadRequest(
                    "the baseline records no image id; name one".into(),
                ))
            }
        };
        if !driftwatch_protocol::wire::is_valid_host_id(&image_id) {
            return Err(ApiError::BadRequest(format!(
                "{image_id:?} is not a valid image id"
            )));
        }
        let signer = reader.signer().cloned();
        self.check_signer(signer.as_ref())?;
        let image = ImageRecord {
            image_id: image_id.clone(),
            baseline_digest: digest_string(reader.digest()),
            signer: signer.map(|s| s.fingerprint()),
            entries: reader.entry_count(),
            created_at: meta.created_at.clone(),
            registered_ms: now_ms(),
        };
        self.store.register_image(image.clone()).await?;
        // The dashboard compares images from the baselines kept here; one too large to
        // keep is registered all the same (and the one kept before is dropped).
        let kept = (baseline.len() <= crate::store::dashboard::MAX_KEPT_BASELINE_BYTES)
            .then(|| baseline.to_vec());
        self.store.keep_baseline(&image_id, kept).await?;
        if let Ok(mut cache) = self.images.lock() {
            cache.remove(&image_id);
        }
        self.log_image(&image, by).await;
        info!(image_id = %image.image_id, digest = %image.baseline_digest, "Image registered.");
        Ok(image)
    }

    /// 403 unless the baseline is signed by a trusted pipeline key, or unsigned (or,
    /// with no trusted keys, signed by anyone) and `allow_unsigned_baselines` is set.
    fn check_signer(&self, signer: Option<&PublicKey>) -> Result<(), ApiError> {
        let trusted = signer.is_some_and(|s| {
            self.trusted_keys
                .iter()
                .any(|k| k.to_bytes() == s.to_bytes())
        });
        let unsigned_allowed = self.config.auth.allow_unsigned_baselines;
        match signer {
            _ if trusted => Ok(()),
            None if unsigned_allowed => Ok(()),
            Some(_) if unsigned_allowed && self.trusted_keys.is_empty() => Ok(()),
            None => Err(ApiError::Forbidden(
                "the baseline is not signed; sign it with a pipeline key in [auth] \
                 trusted_keys (or set allow_unsigned_baselines = true to try things out)"
                    .into(),
            )),
            Some(_) => Err(ApiError::Forbidden(
                "the baseline is not signed by a trusted pipeline key".into(),
            )),
        }
    }

    async fn log_image(&self, image: &ImageRecord, by: &str) {
        let action = ActionRecord {
            id: 0,
            at_ms: now_ms(),
            host_id: None,
            image_id: Some(image.image_id.clone()),
            action: "register_image".into(),
            target: Some(by.into()),
            outcome: Outcome::Ok,
            detail: format!(
                "Registered with baseline {} ({} entries, {}).",
                image.baseline_digest,
                image.entries,
                image
                    .signer
                    .as_deref()
                    .map_or("unsigned".into(), |s| format!("signed by {s}"))
            ),
        };
        if let Err(err) = self.store.record_action(action).await {
            warn!(error = %err, "Cannot log an action.");
        }
    }

    /// Asks the store for a decision about one host.
    async fn decide(&self, host_id: &str, request: Request) -> Result<HostRecord, ApiError> {
        let Decided {
            host,
            budget_stopped,
        } = self
            .store
            .decide(host_id, request, Arc::clone(&self.policy))
            .await?;
        if budget_stopped {
            self.metrics.budget_stops.inc();
        }
        Ok(host)
    }

    /// An operator approves a held host (any hold): it is marked now, budget or not —
    /// the operator is the budget's override.
    pub async fn approve(&self, host_id: &str, operator: &str) -> Result<HostRecord, ApiError> {
        let by = operator.to_string();
        self.decide(host_id, Request::Approve { by }).await
    }

    /// An operator marks a host, whatever its findings.
    pub async fn operator_mark(
        &self,
        host_id: &str,
        reason: &str,
        operator: &str,
    ) -> Result<HostRecord, ApiError> {
        let request = Request::Mark {
            reason: reason.to_string(),
            by: operator.to_string(),
        };
        self.decide(host_id, request).await
    }

    /// An operator lifts a mark (or a held decision): the host's current findings stop
    /// selecting it; new ones will again.
    pub async fn unmark(&self, host_id: &str, operator: &str) -> Result<HostRecord, ApiError> {
        let by = operator.to_string();
        self.decide(host_id, Request::Unmark { by }).await
    }

    /// An operator revokes a host: it is refused from now on.
    pub async fn revoke(&self, host_id: &str, operator: &str) -> Result<HostRecord, ApiError> {
        let host = self.require_host(host_id).await?;
        self.store.revoke(host_id, now_ms()).await?;
        let action = ActionRecord::about(
            &host,
            "revoke",
            Some(operator),
            Outcome::Ok,
            "Credentials revoked.",
        );
        if let Err(err) = self.store.record_action(action).await {
            warn!(error = %err, "Cannot log an action.");
        }
        self.require_host(host_id).await
    }

    /// An operator (or the scale-in hook) retires a host: `gone` now, without a
    /// silence alert, and not revoked — scale-in is not a compromise.
    pub async fn retire(&self, host_id: &str, operator: &str) -> Result<HostRecord, ApiError> {
        self.require_host(host_id).await?;
        let host = self
            .store
            .transition(host_id, Transition::Retire, now_ms())
            .await?;
        let action = ActionRecord::about(
            &host,
            "retire",
            Some(operator),
            Outcome::Ok,
            "Retired (scale-in): gone without a silence alert.",
        );
        if let Err(err) = self.store.record_action(action).await {
            warn!(error = %err, "Cannot log an action.");
        }
        Ok(host)
    }

    async fn require_host(&self, host_id: &str) -> Result<HostRecord, ApiError> {
        self.store
            .host(host_id)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("no host {host_id}")))
    }

    /// Liveness, expiry and held budgets; run every `hosts.sweep_interval_secs` by the
    /// replica holding the `sweep` lease.
    pub async fn sweep(&self) -> Result<(), ApiError> {
        let now = now_ms();
        let missed = self.config.hosts.missed_heartbeats;
        for host_id in self.store.overdue_hosts(missed, now).await? {
            self.decide(&host_id, Request::Overdue { missed }).await?;
        }
        let retention = crate::store::policy::secs_to_ms(self.config.hosts.retention_secs);
        let expired = self
            .store
            .expire_hosts(now.saturating_sub(retention))
            .await?;
        if expired > 0 {
            info!(
                hosts = expired,
                "Expired hosts silent or gone past retention."
            );
        }
        self.store
            .forget_alerted(now.saturating_sub(ALERT_MEMORY_MS))
            .await?;
        // Ids only: listing every drifted host with its findings would hold the store
        // for long on a fleet with many findings.
        for held in self.store.held_hosts(Hold::Budget).await? {
            self.decide(&held, Request::Evaluate).await?;
        }
        Ok(())
    }

    /// Runs [`Fleet::sweep`] on its interval, under the `sweep` lease, until the
    /// process ends.
    pub fn spawn_sweeper(self: &Arc<Self>) {
        let periodic = Periodic {
            name: "sweep",
            every: Duration::from_secs(self.config.hosts.sweep_interval_secs),
        };
        let fleet = Arc::clone(self);
        let replica = crate::delivery::replica_id().to_string();
        leases::spawn(Arc::clone(&self.store), periodic, replica, move || {
            let fleet = Arc::clone(&fleet);
            async move { fleet.sweep().await.map_err(|e| e.to_string()) }
        });
    }
}

/// The verdict an agent receives.
fn directive(host: &HostRecord) -> HostDirective {
    let mark = (host.state == HostState::Marked).then(|| MarkDirective {
        reason: host.mark_reason.clone().unwrap_or_default(),
        since: host
            .marked_at_ms
            .map(crate::api::rfc3339)
            .unwrap_or_default(),
    });
    HostDirective {
        state: host.state,
        mark,
    }
}
