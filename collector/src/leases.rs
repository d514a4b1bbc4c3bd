//! Periodic work under a lease in the store: exactly one replica does each job at a
//! time, and another takes over within one lease period when it dies.
//!
//! On every tick each replica asks the store for the job's lease
//! ([`crate::store::Store::lease`]: granted when it holds it already or the holder's
//! lease expired) and runs the job only when granted. The holder renews it every tick,
//! so it keeps it while alive; the lease lasts [`Periodic::ttl`] ticks' worth, so a
//! slow tick does not lose it. The jobs are transactions that check what they change
//! (a host is silenced only if it is still overdue, a group flushed only once), so even
//! a job outliving its lease cannot double what it does.

use crate::store::{now_ms, DynStore};
use std::future::Future;
use std::time::Duration;

/// A job's schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Periodic {
    /// The lease's name.
    pub name: &'static str,
    /// How often it runs.
    pub every: Duration,
}

/// Ticks a lease lasts: a holder that misses two ticks in a row loses it.
const LEASE_TICKS: u32 = 3;

/// A lease lasts at least this long, however short the ticks.
const MIN_TTL: Duration = Duration::from_secs(5);

impl Periodic {
    /// How long the lease lasts once taken or renewed.
    pub fn ttl(self) -> Duration {
        (self.every * LEASE_TICKS).max(MIN_TTL)
    }
}

/// Takes or renews the lease; true when this replica should run the job now.
pub async fn acquire(store: &DynStore, periodic: Periodic, replica: &str) -> bool {
    let ttl = i64::try_from(periodic.ttl().as_millis()).unwrap_or(i64::MAX);
    match store.lease(periodic.name, replica, now_ms(), ttl).await {
        Ok(held) => held,
        Err(error) => {
            tracing::warn!(%error, lease = periodic.name, "Cannot take a lease; retrying.");
            false
        }
    }
}

/// Runs `job` every `periodic.every` while this replica holds the lease, until the
/// process ends.
pub fn spawn<F, Fut>(store: DynStore, periodic: Periodic, replica: String, job: F)
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), String>> + Send,
{
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(periodic.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if !acquire(&store, periodic, &replica).await {
                continue;
            }
            if let Err(error) = job().await {
                tracing::warn!(%error, job = periodic.name, "Periodic job failed; retrying on the next tick.");
            }
        }
    });
}
