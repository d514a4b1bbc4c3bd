//! The per-host rates: requests (`ingest.rate_per_sec` sustained, `ingest.burst` at
//! once) and events (`ingest.events_per_sec`, `ingest.event_burst`), each a keyed GCRA
//! limiter (`governor`) per host id.
//!
//! Each replica enforces the limit on the requests it receives, without asking the
//! others: the limit holds fleet-wide within a factor of the number of replicas. With
//! N replicas behind a load balancer one host can at most make N × `rate_per_sec`
//! requests per second (N × `burst` at once), and only if its requests are spread over
//! all of them; a TCP load balancer keeps an agent's keep-alive connection on one
//! replica, so in practice a host meets one replica's limit. That tolerance is the
//! price of an ingest path that never waits for the database before it refuses a
//! flood: the limit exists to keep a hostile host from costing the others, and N×
//! still bounds what it costs.

use crate::error::ApiError;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Checks between two sweeps of the limiter's idle keys: memory stays bounded however
/// many host ids (valid or not) show up.
const SWEEP_EVERY: u64 = 100_000;

/// A rate limit per key (host id).
pub struct RateLimiter {
    limiter: DefaultKeyedRateLimiter<String>,
    clock: DefaultClock,
    checks: AtomicU64,
    /// How long a whole burst takes to come back.
    burst_time: Duration,
}

impl RateLimiter {
    /// A limiter with these bounds (a rate ≤ 0 allows one request a day; a burst
    /// below 1 is 1).
    pub fn new(rate_per_sec: f64, burst: f64) -> RateLimiter {
        let period = if rate_per_sec > 0.0 {
            Duration::from_secs_f64(1.0 / rate_per_sec).max(Duration::from_nanos(1))
        } else {
            Duration::from_secs(86_400)
        };
        let burst = NonZeroU32::new(burst.max(1.0).min(f64::from(u32::MAX)) as u32)
            .unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(period)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(burst);
        RateLimiter {
            limiter: DefaultKeyedRateLimiter::keyed(quota),
            clock: DefaultClock::default(),
            checks: AtomicU64::new(0),
            burst_time: period.saturating_mul(burst.get()),
        }
    }

    /// Takes one request for `key`, or says how long to wait.
    pub fn check(&self, key: &str) -> Result<(), ApiError> {
        self.check_n(key, 1)
    }

    /// Takes `n` units (events) for `key` at once, or says how long to wait for them
    /// all; `n` above the burst waits a whole burst's time (it never fits: the
    /// configuration keeps batches below the burst).
    pub fn check_n(&self, key: &str, n: u32) -> Result<(), ApiError> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.limiter.retain_recent();
        }
        let n = NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
        let wait = match self.limiter.check_key_n(&key.to_string(), n) {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(not_until)) => not_until.wait_time_from(self.clock.now()),
            Err(_insufficient) => self.burst_time,
        };
        Err(ApiError::TooManyRequests {
            retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
        })
    }
}

/// Held hosts kept before the expired ones are swept out.
const HELD_SWEEP: usize = 10_000;

/// The per-host event rate, in two steps around decoding a batch. A batch refused for
/// its events holds its host until the time it was told to wait, and what that host
/// sends before then is refused before it is decoded: decoding a batch of 1,000
/// findings costs about 10 ms of CPU, so a flood of batches refused only after
/// decoding would still cost the other hosts a tenth of a core. An agent waits as it
/// is told and never meets the hold.
pub struct EventLimiter {
    rate: RateLimiter,
    held: Mutex<HashMap<String, Instant>>,
}

impl EventLimiter {
    /// `per_sec` events sustained, `burst` at once.
    pub fn new(per_sec: f64, burst: f64) -> EventLimiter {
        EventLimiter {
            rate: RateLimiter::new(per_sec, burst),
            held: Mutex::new(HashMap::new()),
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Before decoding: refused while `key` is held, with the time left.
    pub fn admit(&self, key: &str) -> Result<(), ApiError> {
        let left = self
            .held()
            .get(key)
            .and_then(|until| until.checked_duration_since(Instant::now()));
        match left {
            Some(left) => Err(ApiError::TooManyRequests {
                retry_after_secs: left.as_secs_f64().ceil().max(1.0) as u64,
            }),
            None => Ok(()),
        }
    }

    /// After decoding: takes the batch's `n` events, or refuses it and holds `key`
    /// until they fit.
    pub fn take(&self, key: &str, n: u32) -> Result<(), ApiError> {
        let taken = self.rate.check_n(key, n);
        if let Err(ApiError::TooManyRequests { retry_after_secs }) = &taken {
            let now = Instant::now();
            let mut held = self.held();
            if held.len() >= HELD_SWEEP {
                held.retain(|_, until| *until > now);
            }
            held.insert(
                key.to_string(),
                now + Duration::from_secs(*retry_after_secs),
            );
        }
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limiter_allows_a_burst_then_refuses() {
        let limiter = RateLimiter::new(1.0, 3.0);
        for _ in 0..3 {
            limiter.check("h").unwrap();
        }
        assert!(matches!(
            limiter.check("h"),
            Err(ApiError::TooManyRequests {
                retry_after_secs: 1
            })
        ));
        limiter.check("other").unwrap();
    }

    #[test]
    fn events_are_taken_by_the_batch_and_a_refusal_says_when_it_fits() {
        let limiter = RateLimiter::new(100.0, 2000.0);
        limiter.check_n("h", 1500).unwrap();
        limiter.check_n("h", 400).unwrap();
        // 100 left: 999 more need about nine seconds.
        assert!(matches!(
            limiter.check_n("h", 999),
            Err(ApiError::TooManyRequests { retry_after_secs }) if (9..=10).contains(&retry_after_secs)
        ));
        // A refused batch took nothing: a small one still fits.
        limiter.check_n("h", 100).unwrap();
        // More than a burst never fits; it is told to wait a whole burst's time.
        assert!(matches!(
            limiter.check_n("other", 2001),
            Err(ApiError::TooManyRequests {
                retry_after_secs: 20
            })
        ));
        limiter.check_n("other", 2000).unwrap();
    }

    #[test]
    fn a_host_refused_for_its_events_is_held_until_the_time_it_was_told() {
        let limiter = EventLimiter::new(100.0, 1000.0);
        limiter.admit("h").unwrap();
        limiter.take("h", 1000).unwrap();
        let told = match limiter.take("h", 500) {
            Err(ApiError::TooManyRequests { retry_after_secs }) => retry_after_secs,
            other => panic!("{other:?}"),
        };
        assert_eq!(told, 5);
        // Held: refused before decoding, even a batch that would fit by then.
        assert!(matches!(
            limiter.admit("h"),
            Err(ApiError::TooManyRequests { retry_after_secs }) if retry_after_secs <= told
        ));
        // Others are not.
        limiter.admit("other").unwrap();
        limiter.take("other", 10).unwrap();
    }
}
