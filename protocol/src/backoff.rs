//! Capped exponential backoff with jitter, for every retry loop on both sides (an
//! agent re-sending to its collector, a collector re-delivering a webhook): a first
//! wait, doubling, up to a maximum; each wait drawn between half and all of its
//! ceiling, so a fleet cut off together does not come back in lockstep.

use std::time::Duration;

/// The state of one retry loop.
#[derive(Clone, Debug)]
pub struct Backoff {
    attempt: u32,
    first: Duration,
    max: Duration,
}

impl Backoff {
    /// Starts at `first`, never above `max`.
    pub fn new(first: Duration, max: Duration) -> Backoff {
        Backoff {
            attempt: 0,
            first,
            max,
        }
    }

    /// The next wait (and counts one more failure).
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.delay(self.attempt, crate::random::unit());
        self.attempt = self.attempt.saturating_add(1);
        delay
    }

    /// After a success: the next failure waits `first` again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The wait after `attempt` earlier failures, with `random` in 0..=1: between half
    /// and all of `min(first × 2^attempt, max)`.
    pub fn delay(&self, attempt: u32, random: f64) -> Duration {
        let ceiling = self
            .first
            .saturating_mul(2u32.saturating_pow(attempt))
            .min(self.max);
        ceiling.mul_f64(0.5 + 0.5 * random.clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_first_wait_to_the_cap_with_jitter() {
        let max = Duration::from_secs(300);
        let backoff = Backoff::new(Duration::from_secs(1), max);
        assert_eq!(backoff.delay(0, 1.0), Duration::from_secs(1));
        assert_eq!(backoff.delay(0, 0.0), Duration::from_millis(500));
        assert_eq!(backoff.delay(3, 1.0), Duration::from_secs(8));
        assert_eq!(backoff.delay(8, 1.0), Duration::from_secs(256));
        assert_eq!(backoff.delay(9, 1.0), max);
        assert_eq!(backoff.delay(u32::MAX, 0.0), max / 2);
        assert_eq!(backoff.delay(2, 7.0), Duration::from_secs(4));
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(4));
        let waits: Vec<Duration> = (0..5).map(|_| backoff.next_delay()).collect();
        for (attempt, wait) in waits.iter().enumerate() {
            let ceiling = Duration::from_secs(1 << attempt.min(2));
            assert!(
                *wait >= ceiling / 2 && *wait <= ceiling,
                "{attempt}: {wait:?}"
            );
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_secs(1));
    }
}
