//! The grouping job: under the `alerts` lease, one replica turns every group whose
//! wait is over into one alert and queues it for each subscribed webhook.
//!
//! Occurrences are filed into groups by the transactions that cause them (see
//! [`crate::store::outbox`]); this job only flushes, so the wait a group gets does not
//! depend on which replica received its hosts' reports.

use crate::leases::{self, Periodic};
use crate::metrics::Metrics;
use crate::store::{now_ms, DynStore, Policy};
use std::sync::Arc;
use std::time::Duration;

/// How often due groups are flushed: the delay it adds to an alert's wait.
pub(crate) const FLUSH: Periodic = Periodic {
    name: "alerts",
    every: Duration::from_millis(250),
};

/// Flushes due groups once; counts the alerts queued.
pub async fn flush(
    store: &DynStore,
    policy: &Arc<Policy>,
    metrics: &Metrics,
) -> Result<(), String> {
    let kinds = store
        .flush_alerts(now_ms(), Arc::clone(policy))
        .await
        .map_err(|e| e.to_string())?;
    for kind in kinds {
        metrics
            .alerts_sent
            .get_or_create(&Metrics::label("kind", kind.name()))
            .inc();
    }
    Ok(())
}

/// Runs [`flush`] under the lease, as `replica`, until the process ends.
pub(crate) fn spawn(store: DynStore, policy: Arc<Policy>, metrics: Arc<Metrics>, replica: String) {
    let job_store = Arc::clone(&store);
    leases::spawn(store, FLUSH, replica, move || {
        let (store, policy, metrics) = (
            Arc::clone(&job_store),
            Arc::clone(&policy),
            Arc::clone(&metrics),
        );
        async move { flush(&store, &policy, &metrics).await }
    });
}
