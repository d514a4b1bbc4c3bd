//! The fleet's decisions: host lifecycle, the image registry check, and the budgeted
//! replacement policy.
//!
//! Every batch an agent sends goes through [`Fleet::ingest`]: the host's claim is
//! checked against the registry (an unregistered image or another baseline than the
//! image's is a critical finding of the collector's own), the batch is stored, and the
//! host is [evaluated](Fleet::evaluate). Evaluation is where "replace, don't repair"
//! is decided: a finding that matches a rule marks the host — unless the image's budget
//! for the window is spent (the host is then *held* as `drifted` and the budget alert
//! says so; it is marked as soon as the window allows), or the mode is `dry_run` or
//! `manual_approve`. Decisions are serialised by one lock so that two hosts of one
//! image can never both take its last budget slot.
//!
//! A periodic [sweep](Fleet::sweep) turns hosts whose heartbeats stopped `silent` (or
//! `gone`, when they were marked: that is what a replaced host looks like), expires
//! old silent and gone hosts, and retries budget-held hosts.

use crate::actions::Actions;
use crate::alerts::{AlertKind, Alerter, Occurrence};
use crate::config::{CollectorConfig, MarkRule, ReplacementMode};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::store::{
    now_ms, ActionRecord, CollectorFinding, DynStore, FindingRecord, HostRecord, ImageRecord,
    IngestBody, IngestEvent, IngestRecord, StoreError, Transition,
};
use driftwatch_protocol::baseline::{digest_string, BaselineReader};
use driftwatch_protocol::report::Severity;
use driftwatch_protocol::sign::PublicKey;
use driftwatch_protocol::wire::{
    Batch, BatchAck, EventBody, HostDirective, HostState, MarkDirective,
};
use globset::{Glob, GlobSet, GlobSetBuilder};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Mutex as AsyncMutex;
use tracing::{info, warn};

/// How long a registry answer is reused before asking the store again.
const IMAGE_CACHE_TTL: Duration = Duration::from_secs(30);

/// One replacement rule, compiled.
struct Rule {
    kinds: Vec<String>,
    min_severity: Severity,
    paths: Option<GlobSet>,
    images: Option<GlobSet>,
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
    fn compile(rule: &MarkRule) -> Result<Rule, globset::Error> {
        Ok(Rule {
            kinds: rule.kinds.clone(),
            min_severity: rule.min_severity,
            paths: glob_set(&rule.paths)?,
            images: glob_set(&rule.images)?,
        })
    }

    fn selects(&self, finding: &FindingRecord, image_id: Option<&str>) -> bool {
        finding.severity >= self.min_severity
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

/// What is the same about one change across hosts, and how to say it.
pub fn describe(finding: &FindingRecord) -> (String, String) {
    let value = &finding.finding;
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
    let group = format!("{}:{change}:{}", finding.key, attributes.join(","));
    let mut title = format!(
        "{} {} {}",
        change.replace('_', " "),
        finding.kind,
        finding.subject
    );
    if !attributes.is_empty() {
        title.push_str(&format!(" ({})", attributes.join(", ")));
    }
    (group, title.trim().to_string())
}

/// Decides over the fleet.
pub struct Fleet {
    store: DynStore,
    config: Arc<CollectorConfig>,
    rules: Vec<Rule>,
    trusted_keys: Vec<PublicKey>,
    alerter: Alerter,
    actions: Actions,
    metrics: Arc<Metrics>,
    decisions: AsyncMutex<()>,
    images: Mutex<HashMap<String, (Instant, Option<ImageRecord>)>>,
    told: Mutex<HashSet<String>>,
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
        let rules = config
            .replacement
            .rules
            .iter()
            .map(Rule::compile)
            .collect::<Result<_, _>>()?;
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
            rules,
            trusted_keys,
            alerter,
            actions,
            metrics,
            decisions: AsyncMutex::new(()),
            images: Mutex::new(HashMap::new()),
            told: Mutex::new(HashSet::new()),
        })
    }

    /// The store.
    pub fn store(&self) -> &DynStore {
        &self.store
    }

    /// Stores an authenticated batch and answers with the host's verdict.
    pub async fn ingest(&self, batch: Batch) -> Result<BatchAck, ApiError> {
        let collector_findings = self
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
        let outcome = self
            .store
            .ingest(IngestRecord {
                host_id: batch.host_id,
                hostname: batch.hostname,
                image_id: batch.image.image_id,
                baseline_digest: batch.image.baseline_digest,
                events,
                collector_findings,
                received_ms: now_ms(),
            })
            .await
            .map_err(|err| match err {
                // The only conflict ingest has: the host was revoked.
                StoreError::Conflict(message) => ApiError::Forbidden(message),
                other => other.into(),
            })?;
        let host = outcome.host;
        for finding in &outcome.new_findings {
            let (group, title) = describe(finding);
            let kind = if finding.kind == "image" {
                AlertKind::Image
            } else {
                AlertKind::Drift
            };
            self.alerter.raise(Occurrence {
                kind,
                image_id: host.image_id.clone(),
                group,
                title: title.clone(),
                severity: finding.severity,
                host_id: host.host_id.clone(),
                detail: format!("first seen on {} ({})", host.host_id, host.hostname),
            });
        }
        let needs_decision = !outcome.new_findings.is_empty()
            || matches!(host.state, HostState::Silent | HostState::Gone)
            || (host.state == HostState::Drifted && host.hold.as_deref() == Some("budget"));
        let host = if needs_decision {
            self.evaluate(&host.host_id, Some(&outcome.new_findings))
                .await?
        } else {
            host
        };
        Ok(BatchAck {
            accepted: outcome.accepted,
            duplicates: outcome.duplicates,
            host: self.directive(&host).await,
        })
    }

    /// The verdict an agent receives; the first time a marked host hears it is logged.
    async fn directive(&self, host: &HostRecord) -> HostDirective {
        let mark = (host.state == HostState::Marked).then(|| MarkDirective {
            reason: host.mark_reason.clone().unwrap_or_default(),
            since: host
                .marked_at_ms
                .map(crate::api::rfc3339)
                .unwrap_or_default(),
        });
        if mark.is_some() {
            let first = self
                .told
                .lock()
                .map(|mut told| told.insert(host.host_id.clone()))
                .unwrap_or(false);
            if first {
                self.log(
                    host,
                    "agent_told",
                    None,
                    "ok",
                    "The agent was told it is marked for replacement.",
                )
                .await;
            }
        }
        HostDirective {
            state: host.state,
            mark,
        }
    }

    /// The registry's opinion of what a host claims, as collector findings.
    async fn image_findings(
        &self,
        image_id: Option<&str>,
        digest: Option<&str>,
    ) -> Result<Vec<CollectorFinding>, ApiError> {
        let Some(digest) = digest else {
            // No trusted baseline on the host: its agent reports that itself, as a
            // critical `baseline` finding.
            return Ok(Vec::new());
        };
        let subject = image_id.unwrap_or("(none)").to_string();
        let registered = match image_id {
            Some(id) => self.registered_image(id).await?,
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
        Ok(match &registered {
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
        })
    }

    async fn registered_image(&self, image_id: &str) -> Result<Option<ImageRecord>, ApiError> {
        if let Ok(cache) = self.images.lock() {
            if let Some((at, image)) = cache.get(image_id) {
                if at.elapsed() < IMAGE_CACHE_TTL {
                    return Ok(image.clone());
                }
            }
        }
        let image = self.store.image(image_id).await?;
        if let Ok(mut cache) = self.images.lock() {
            // Bounded by the number of images hosts claim; a flood of invented ids is
            // refused by the registry check itself, so clear rather than grow.
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
        if !self.trusted_keys.is_empty() {
            let trusted = signer.as_ref().is_some_and(|s| {
                self.trusted_keys
                    .iter()
                    .any(|k| k.to_bytes() == s.to_bytes())
            });
            if !trusted {
                return Err(ApiError::Forbidden(
                    "the baseline is not signed by a trusted pipeline key".into(),
                ));
            }
        }
        let image = ImageRecord {
            image_id: image_id.clone(),
            baseline_digest: digest_string(reader.digest()),
            signer: signer.map(|s| s.fingerprint()),
            entries: reader.entry_count(),
            created_at: meta.created_at.clone(),
            registered_ms: now_ms(),
        };
        self.store.register_image(image.clone()).await?;
        if let Ok(mut cache) = self.images.lock() {
            cache.remove(&image_id);
        }
        self.log_image(&image).await;
        info!(image_id = %image.image_id, digest = %image.baseline_digest, "Image registered.");
        Ok(image)
    }

    async fn log_image(&self, image: &ImageRecord) {
        let action = ActionRecord {
            id: 0,
            at_ms: now_ms(),
            host_id: None,
            image_id: Some(image.image_id.clone()),
            action: "register_image".into(),
            target: None,
            outcome: "ok".into(),
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

    async fn log(
        &self,
        host: &HostRecord,
        action: &str,
        target: Option<&str>,
        outcome: &str,
        detail: &str,
    ) {
        let record = ActionRecord {
            id: 0,
            at_ms: now_ms(),
            host_id: Some(host.host_id.clone()),
            image_id: host.image_id.clone(),
            action: action.into(),
            target: target.map(str::to_string),
            outcome: outcome.into(),
            detail: detail.into(),
        };
        if let Err(err) = self.store.record_action(record).await {
            warn!(error = %err, action, "Cannot log an action.");
        }
    }

    /// How many hosts of an image the budget allows per window.
    fn budget(&self, live_hosts: u64) -> u64 {
        let replacement = &self.config.replacement;
        let by_share = (live_hosts as f64 * replacement.max_percent / 100.0).floor() as u64;
        u64::from(replacement.max_hosts).min(by_share).max(1)
    }

    /// Re-decides one host's state; returns it afterwards. `new` are the findings just
    /// received: a host neither marked nor held was not selected by its older findings,
    /// so only new ones can change that, and the host's other findings are not read
    /// (they grow with every report). `None` weighs every finding: after silence, for
    /// a held decision the mode no longer explains, and for the sweep.
    pub async fn evaluate(
        &self,
        host_id: &str,
        new: Option<&[FindingRecord]>,
    ) -> Result<HostRecord, ApiError> {
        let _decision = self.decisions.lock().await;
        let now = now_ms();
        let Some(host) = self.store.host(host_id).await? else {
            return Err(ApiError::NotFound(format!("no host {host_id}")));
        };
        if host.revoked || host.state == HostState::Marked {
            return Ok(host);
        }
        let revived = matches!(host.state, HostState::Silent | HostState::Gone);
        if revived && host.mark_reason.is_some() {
            // A marked host heard from again is still to be replaced.
            return Ok(self
                .store
                .transition(host_id, Transition::Settle(HostState::Marked), now)
                .await?);
        }
        let mode = self.config.replacement.mode;
        if !revived {
            // A held decision stands until an operator acts on it, or — held by the
            // budget — until the window has room.
            match (host.hold.as_deref(), mode, host.hold_reason.clone()) {
                (Some("dry_run"), ReplacementMode::DryRun, _)
                | (Some("approval"), ReplacementMode::ManualApprove, _) => return Ok(host),
                (Some("budget"), ReplacementMode::Auto, Some(reason)) => {
                    return self.mark_within_budget(&host, reason, now).await
                }
                _ => {}
            }
        }
        let candidates = match new {
            Some(new) if !revived && host.hold.is_none() => new.to_vec(),
            _ => self.store.findings(host_id).await?,
        };
        let settled = if host.findings_by_severity.iter().sum::<u64>() == 0 {
            HostState::Clean
        } else {
            HostState::Drifted
        };
        let selected = candidates.iter().find(|f| {
            host.unmarked_at_ms.is_none_or(|at| f.last_seen_ms > at)
                && self
                    .rules
                    .iter()
                    .any(|r| r.selects(f, host.image_id.as_deref()))
        });
        let Some(finding) = selected else {
            return Ok(if host.state != settled || host.hold.is_some() {
                self.store
                    .transition(host_id, Transition::Settle(settled), now)
                    .await?
            } else {
                host
            });
        };
        let (_, title) = describe(finding);
        let reason = format!("{} finding: {title}", finding.severity.name());
        match mode {
            ReplacementMode::DryRun => {
                let held = self.hold(&host, "dry_run", &reason, now).await?;
                self.log(
                    &held,
                    "mark",
                    None,
                    "dry_run",
                    &format!("Would mark: {reason}."),
                )
                .await;
                Ok(held)
            }
            ReplacementMode::ManualApprove => {
                let held = self.hold(&host, "approval", &reason, now).await?;
                self.log(
                    &held,
                    "hold",
                    None,
                    "awaiting_approval",
                    &format!("Held for an operator's approval: {reason}."),
                )
                .await;
                Ok(held)
            }
            ReplacementMode::Auto => self.mark_within_budget(&host, reason, now).await,
        }
    }

    /// Marks the host if its image's budget has room in the window; holds it (once,
    /// with a budget alert) otherwise.
    async fn mark_within_budget(
        &self,
        host: &HostRecord,
        reason: String,
        now: i64,
    ) -> Result<HostRecord, ApiError> {
        let image = host.image_id.as_deref().unwrap_or("(none)");
        let live = self
            .store
            .live_hosts_on_image(host.image_id.as_deref())
            .await?;
        let limit = self.budget(live);
        let window = i64::try_from(self.config.replacement.window_secs.saturating_mul(1000))
            .unwrap_or(i64::MAX);
        let used = self
            .store
            .marked_since(host.image_id.as_deref(), now.saturating_sub(window))
            .await?;
        if used < limit {
            return self.mark(host, reason, "policy").await;
        }
        if host.hold.as_deref() == Some("budget") {
            return Ok(host.clone());
        }
        let held = self.hold(host, "budget", &reason, now).await?;
        self.metrics.budget_stops.inc();
        let detail = format!(
            "The replacement budget of image {image} ({limit} of {live} hosts per {} s) is used up; host {} is held as drifted: {reason}.",
            self.config.replacement.window_secs, host.host_id
        );
        self.log(&held, "hold", None, "held", &detail).await;
        self.alerter.raise(Occurrence {
            kind: AlertKind::Budget,
            image_id: host.image_id.clone(),
            group: String::new(),
            title: format!("replacement budget of image {image} used up"),
            severity: Severity::High,
            host_id: host.host_id.clone(),
            detail,
        });
        warn!(host_id = %host.host_id, image_id = image, "Replacement held back by the budget.");
        Ok(held)
    }

    async fn hold(
        &self,
        host: &HostRecord,
        hold: &'static str,
        reason: &str,
        now: i64,
    ) -> Result<HostRecord, ApiError> {
        Ok(self
            .store
            .transition(
                &host.host_id,
                Transition::Hold {
                    hold,
                    reason: reason.to_string(),
                },
                now,
            )
            .await?)
    }

    async fn mark(
        &self,
        host: &HostRecord,
        reason: String,
        by: &str,
    ) -> Result<HostRecord, ApiError> {
        let marked = self
            .store
            .transition(
                &host.host_id,
                Transition::Mark {
                    reason: reason.clone(),
                },
                now_ms(),
            )
            .await?;
        self.log(
            &marked,
            "mark",
            Some(by),
            "ok",
            &format!("Marked for replacement: {reason}."),
        )
        .await;
        info!(host_id = %host.host_id, reason = %reason, "Host marked for replacement.");
        self.actions.host_marked(&marked, &reason);
        Ok(marked)
    }

    /// An operator approves a held host (any hold): it is marked now, budget or not —
    /// the operator is the budget's override.
    pub async fn approve(&self, host_id: &str, operator: &str) -> Result<HostRecord, ApiError> {
        let _decision = self.decisions.lock().await;
        let host = self.require_host(host_id).await?;
        let Some(reason) = host.hold_reason.clone().filter(|_| host.hold.is_some()) else {
            return Err(ApiError::Conflict(format!(
                "host {host_id} has no decision waiting for approval"
            )));
        };
        self.mark(&host, reason, operator).await
    }

    /// An operator marks a host, whatever its findings.
    pub async fn operator_mark(
        &self,
        host_id: &str,
        reason: &str,
        operator: &str,
    ) -> Result<HostRecord, ApiError> {
        let _decision = self.decisions.lock().await;
        let host = self.require_host(host_id).await?;
        if host.state == HostState::Marked {
            return Ok(host);
        }
        self.mark(&host, format!("marked by an operator: {reason}"), operator)
            .await
    }

    /// An operator lifts a mark (or a held decision): the host's current findings stop
    /// selecting it; new ones will again.
    pub async fn unmark(&self, host_id: &str, operator: &str) -> Result<HostRecord, ApiError> {
        let _decision = self.decisions.lock().await;
        self.require_host(host_id).await?;
        let host = self
            .store
            .transition(host_id, Transition::Unmark, now_ms())
            .await?;
        if let Ok(mut told) = self.told.lock() {
            told.remove(host_id);
        }
        self.log(
            &host,
            "unmark",
            Some(operator),
            "ok",
            "Mark lifted by an operator.",
        )
        .await;
        Ok(host)
    }

    /// An operator revokes a host: it is refused from now on.
    pub async fn revoke(&self, host_id: &str, operator: &str) -> Result<HostRecord, ApiError> {
        let host = self.require_host(host_id).await?;
        self.store.revoke(host_id, now_ms()).await?;
        self.log(
            &host,
            "revoke",
            Some(operator),
            "ok",
            "Credentials revoked.",
        )
        .await;
        self.require_host(host_id).await
    }

    async fn require_host(&self, host_id: &str) -> Result<HostRecord, ApiError> {
        self.store
            .host(host_id)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("no host {host_id}")))
    }

    /// Liveness, expiry and held budgets; run every `hosts.sweep_interval_secs`.
    pub async fn sweep(&self) -> Result<(), ApiError> {
        let now = now_ms();
        for host in self
            .store
            .overdue_hosts(self.config.hosts.missed_heartbeats, now)
            .await?
        {
            let _decision = self.decisions.lock().await;
            if host.state == HostState::Marked {
                // A marked host going quiet is the replacement happening.
                let gone = self
                    .store
                    .transition(&host.host_id, Transition::Retire, now)
                    .await?;
                self.log(
                    &gone,
                    "retire",
                    None,
                    "ok",
                    "Marked host stopped reporting: replaced.",
                )
                .await;
                continue;
            }
            let silent = self
                .store
                .transition(&host.host_id, Transition::Silence, now)
                .await?;
            let detail = format!(
                "Host {} sent no heartbeat for {} intervals of {} s.",
                host.host_id, self.config.hosts.missed_heartbeats, host.heartbeat_interval_secs
            );
            self.log(&silent, "silence", None, "ok", &detail).await;
            warn!(host_id = %host.host_id, "Host went silent.");
            self.alerter.raise(Occurrence {
                kind: AlertKind::Silence,
                image_id: host.image_id.clone(),
                group: String::new(),
                title: "went silent".into(),
                severity: Severity::High,
                host_id: host.host_id.clone(),
                detail,
            });
        }
        let retention = i64::try_from(self.config.hosts.retention_secs.saturating_mul(1000))
            .unwrap_or(i64::MAX);
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
        // Ids only: listing every drifted host with its finding counts held the store
        // (and so every ingest) for 100+ ms per sweep on a fleet with many findings.
        for held in self.store.held_hosts("budget").await? {
            self.evaluate(&held, None).await?;
        }
        Ok(())
    }

    /// Runs [`Fleet::sweep`] on its interval until the process ends.
    pub fn spawn_sweeper(self: &Arc<Self>) {
        let fleet = Arc::clone(self);
        let interval = Duration::from_secs(fleet.config.hosts.sweep_interval_secs);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(err) = fleet.sweep().await {
                    warn!(error = %err, "Sweep failed; retrying on the next tick.");
                }
            }
        });
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
        let (group_a, title) = describe(&finding("file", Severity::Critical, "/usr/bin/ssh"));
        let mut other_host = finding("file", Severity::Critical, "/usr/bin/ssh");
        other_host.host_id = "h2".into();
        assert_eq!(describe(&other_host).0, group_a);
        assert_eq!(title, "modified file /usr/bin/ssh (content, mode)");
        assert_ne!(
            describe(&finding("file", Severity::Critical, "/usr/bin/scp")).0,
            group_a
        );
    }
}
