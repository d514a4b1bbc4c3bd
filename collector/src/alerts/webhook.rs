//! Posting alerts to webhook receivers: one HTTP client per `[[webhook]]`, and the
//! [`Deliverer`] that turns a claimed outbox row into one attempt.
//!
//! Each attempt carries the row's idempotency key in an `Idempotency-Key` header: a
//! receiver sees the same key when an attempt is repeated (after a timeout, or by
//! another replica after this one died), and can drop the duplicate. Connection
//! errors, 5xx and 429 are retried with backoff and jitter until the webhook's
//! `max_attempts` or `alerts.retry_for_secs` runs out; any other status is final.
//! Every final outcome is logged in the action log.

use super::roots::{read_roots, read_system_roots};
use super::AlertError;
use crate::config::WebhookConfig;
use crate::delivery::Deliverer;
use crate::metrics::Metrics;
use crate::store::outbox::{Claim, OutboxItem};
use crate::store::{now_ms, ActionRecord, Finish, Outcome};
use async_trait::async_trait;
use driftwatch_protocol::backoff::Backoff;
use driftwatch_protocol::errors::error_chain;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Deliveries to all receivers in flight at once from one replica. Alerts are few (one
/// per change, not per host); this bounds memory and sockets while a receiver hangs.
const MAX_IN_FLIGHT: usize = 64;

/// A webhook row's claim outlasts the longest receiver timeout by this much (time to
/// record the attempt's outcome): a replica that died mid-delivery delays the alert
/// by no more than that before another replica sends it again, with the same key.
const CLAIM_MARGIN: Duration = Duration::from_secs(10);

/// One webhook receiver.
pub(crate) struct Receiver {
    config: WebhookConfig,
    client: reqwest::Client,
}

impl Receiver {
    /// `system_roots` is loaded on first need and shared by later webhooks.
    pub(crate) fn new(
        config: &WebhookConfig,
        system_roots: &mut Option<Arc<rustls::RootCertStore>>,
    ) -> Result<Receiver, AlertError> {
        let url = &config.url;
        let roots = match &config.ca_file {
            Some(path) => Arc::new(read_roots(path).map_err(|message| AlertError::ReadCaFile {
                url: url.clone(),
                path: path.clone(),
                message,
            })?),
            None if url.starts_with("https://") => match system_roots {
                Some(roots) => roots.clone(),
                None => {
                    let roots = Arc::new(
                        read_system_roots()
                            .ok_or_else(|| AlertError::NoRoots { url: url.clone() })?,
                    );
                    *system_roots = Some(roots.clone());
                    roots
                }
            },
            // Plain http: the TLS settings are never used.
            None => Arc::new(rustls::RootCertStore::empty()),
        };
        let build_error = |message: String| AlertError::BuildClient {
            url: url.clone(),
            message,
        };
        // The ring provider, explicitly: reqwest's own default would be aws-lc-rs,
        // which this build does not include (and without one it panics).
        let tls = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| build_error(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            // A timeout of 0 would fail every attempt.
            .timeout(Duration::from_secs(config.timeout_secs.max(1)))
            // A receiver that moved must be reconfigured, not followed: a redirected
            // POST may land somewhere the operator never chose.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("driftwatch-collector/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| build_error(error_chain(&e)))?;
        Ok(Receiver {
            config: config.clone(),
            client,
        })
    }

    /// One POST; `Err((retry, why))` when it failed.
    async fn post(&self, body: &serde_json::Value, key: &str) -> Result<(), (bool, String)> {
        match self
            .client
            .post(&self.config.url)
            .header("Idempotency-Key", key)
            .json(body)
            .send()
            .await
        {
            Ok(response) if response.status().is_success() => Ok(()),
            Ok(response) => {
                let status = response.status();
                let retry =
                    status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS;
                Err((retry, format!("HTTP {status}")))
            }
            Err(error) => Err((true, error_chain(&error))),
        }
    }
}

/// Delivers `webhook` rows of the outbox.
pub(crate) struct Webhooks {
    pub(crate) receivers: HashMap<String, Receiver>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) backoff: Backoff,
}

impl Webhooks {
    /// The wait after `attempts` failed attempts.
    fn wait_after(&self, attempts: u32) -> std::time::Duration {
        let failures_before = attempts.saturating_sub(1);
        self.backoff
            .delay(failures_before, driftwatch_protocol::random::unit())
    }

    fn done(
        &self,
        claim: &Claim,
        url: &str,
        image_id: Option<String>,
        result: Result<String, String>,
    ) -> Finish {
        let (outcome, detail) = match result {
            Ok(detail) => {
                tracing::info!(url, attempts = claim.attempts, "Alert delivered.");
                (Outcome::Ok, detail)
            }
            Err(detail) => {
                tracing::error!(url, attempts = claim.attempts, %detail, "Alert could not be delivered; check the webhook receiver.");
                (Outcome::Failed, detail)
            }
        };
        self.metrics
            .webhook_deliveries
            .get_or_create(&Metrics::label("outcome", outcome.name()))
            .inc();
        Finish::Done(ActionRecord {
            id: 0,
            at_ms: now_ms(),
            host_id: None,
            image_id,
            action: "webhook".to_string(),
            target: Some(url.to_string()),
            outcome,
            detail,
        })
    }
}

#[async_trait]
impl Deliverer for Webhooks {
    fn kind(&self) -> &'static str {
        "webhook"
    }

    fn concurrency(&self) -> usize {
        MAX_IN_FLIGHT
    }

    fn claim_lease(&self) -> Duration {
        let longest = self
            .receivers
            .values()
            .map(|r| r.config.timeout_secs.max(1))
            .max()
            .unwrap_or(1);
        Duration::from_secs(longest) + CLAIM_MARGIN
    }

    async fn deliver(&self, claim: &Claim) -> Finish {
        let OutboxItem::Webhook { url, alert } = &claim.item else {
            return Finish::Retry {
                at_ms: claim.give_up_ms,
                error: "not a webhook row".into(),
            };
        };
        let attempts = claim.attempts;
        let plural = if attempts == 1 { "" } else { "s" };
        let summary = alert.summary();
        let Some(receiver) = self.receivers.get(url) else {
            let error = format!("{summary}: the webhook is no longer configured");
            return self.done(claim, url, alert.image_id.clone(), Err(error));
        };
        let body = alert.payload(receiver.config.format);
        match receiver.post(&body, &claim.idempotency_key).await {
            Ok(()) => {
                let detail = format!("{summary} after {attempts} attempt{plural}");
                self.done(claim, url, alert.image_id.clone(), Ok(detail))
            }
            Err((retry, error)) => {
                let at_ms = now_ms().saturating_add(
                    i64::try_from(self.wait_after(attempts).as_millis()).unwrap_or(i64::MAX),
                );
                if retry && attempts < receiver.config.max_attempts && at_ms < claim.give_up_ms {
                    tracing::debug!(url = %url, attempts, %error, "Webhook delivery failed; retrying.");
                    return Finish::Retry { at_ms, error };
                }
                let detail = format!("{summary} after {attempts} attempt{plural}: {error}");
                self.done(claim, url, alert.image_id.clone(), Err(detail))
            }
        }
    }
}
