//! Drains the outbox: every replica runs one worker per kind of row (webhooks, mark
//! commands), and the store hands each due row to exactly one of them at a time.
//!
//! A worker claims due rows for [`CLAIM_LEASE`] and delivers them; the store records
//! how each attempt ended (delivered, retry at, failed for good) only if the claim is
//! still the worker's. A replica that dies with claimed rows delays them by at most the
//! claim lease: then another replica's worker claims them again, with the same
//! idempotency key. Delivery is at least once; receivers deduplicate by the key.

use crate::store::outbox::{random_token, Claim};
use crate::store::{now_ms, DynStore, Finish};
use async_trait::async_trait;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::Semaphore;

/// How long a claimed row is this replica's: longer than any one attempt (a webhook
/// times out after its `timeout_secs`, a command after `command_timeout_secs`; see
/// [`Deliverer::claim_lease`]).
pub const CLAIM_LEASE: Duration = Duration::from_secs(120);

/// How often a worker looks for due rows when it found none.
const POLL: Duration = Duration::from_millis(200);

/// This process's name among the replicas: random, fixed for its lifetime.
pub fn replica_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| format!("{}-{}", std::process::id(), &random_token()[..12]))
}

/// Delivers one kind of outbox row.
#[async_trait]
pub trait Deliverer: Send + Sync + 'static {
    /// The kind of rows (`webhook`, `command`).
    fn kind(&self) -> &'static str;

    /// Deliveries in flight at once.
    fn concurrency(&self) -> usize;

    /// How long a claim lasts; must exceed the longest attempt.
    fn claim_lease(&self) -> Duration {
        CLAIM_LEASE
    }

    /// One attempt; says how it ended.
    async fn deliver(&self, claim: &Claim) -> Finish;
}

/// Runs a worker for `deliverer` as `replica` until the process ends.
pub fn spawn(store: DynStore, replica: String, deliverer: Arc<dyn Deliverer>) {
    tokio::spawn(async move {
        let slots = Arc::new(Semaphore::new(deliverer.concurrency().max(1)));
        loop {
            let free = u32::try_from(slots.available_permits()).unwrap_or(u32::MAX);
            let claimed = if free == 0 {
                Ok(Vec::new())
            } else {
                let lease = i64::try_from(deliverer.claim_lease().as_millis()).unwrap_or(i64::MAX);
                store
                    .claim(&replica, deliverer.kind(), now_ms(), lease, free)
                    .await
            };
            let claims = match claimed {
                Ok(claims) => claims,
                Err(error) => {
                    tracing::warn!(%error, kind = deliverer.kind(), "Cannot claim outbox rows; retrying.");
                    Vec::new()
                }
            };
            if claims.is_empty() {
                tokio::time::sleep(POLL).await;
                continue;
            }
            for claim in claims {
                let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
                    return;
                };
                let (store, replica, deliverer) =
                    (Arc::clone(&store), replica.clone(), Arc::clone(&deliverer));
                tokio::spawn(async move {
                    let _permit = permit;
                    deliver_one(&store, &replica, deliverer.as_ref(), &claim).await;
                });
            }
        }
    });
}

/// One attempt of one claimed row, and its record.
pub async fn deliver_one(
    store: &DynStore,
    replica: &str,
    deliverer: &dyn Deliverer,
    claim: &Claim,
) {
    let finish = deliverer.deliver(claim).await;
    match store.finish(claim.id, replica, finish).await {
        Ok(true) => {}
        Ok(false) => tracing::warn!(
            id = claim.id,
            "An outbox row's claim expired during its delivery; another replica owns it now."
        ),
        Err(error) => tracing::warn!(
            %error,
            id = claim.id,
            "Cannot record a delivery; it will be attempted again when its claim expires."
        ),
    }
}
