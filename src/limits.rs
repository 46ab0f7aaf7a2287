//! Rate limits: token buckets (the reconnect breaker lives in `breaker.rs`).
//!
//! A token bucket is kept in its GCRA form (generic cell rate algorithm): one instant, the
//! "theoretical arrival time", instead of a token count and a refill time. It admits the same
//! traffic as a bucket of `burst` tokens refilled one per `interval`, in 16 bytes, with exact
//! integer time arithmetic, and needs no timer: it is brought up to date when it is used.

use std::time::{Duration, Instant};

/// A rate: one event per `interval` sustained, `burst` back to back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Rate {
    pub(crate) interval: Duration,
    pub(crate) burst: u32,
}

impl Rate {
    /// `per_minute` sustained (must be positive), `burst` back to back (must be positive).
    pub(crate) fn per_minute(per_minute: u32, burst: u32) -> Self {
        Self { interval: Duration::from_secs(60) / per_minute.max(1), burst: burst.max(1) }
    }

    pub(crate) fn every(interval: Duration, burst: u32) -> Self {
        Self { interval, burst: burst.max(1) }
    }

    fn tolerance(self) -> Duration {
        self.interval.saturating_mul(self.burst - 1)
    }
}

/// One rate-limited allowance.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Bucket {
    /// When the bucket would be full again if nothing more arrived, minus one interval.
    tat: Instant,
}

impl Bucket {
    /// A full bucket at `now`.
    pub(crate) fn full(now: Instant) -> Self {
        Self { tat: now }
    }

    /// Takes one token if there is one. Time is assumed not to go backwards (the hub clamps it).
    /// At the very end of the clock's range, where the next arrival time cannot be represented,
    /// nothing more is admitted (never a panic).
    pub(crate) fn try_take(&mut self, now: Instant, rate: Rate) -> bool {
        let tat = self.tat.max(now);
        if tat.duration_since(now) > rate.tolerance() {
            return false;
        }
        match tat.checked_add(rate.interval) {
            Some(next) => {
                self.tat = next;
                true
            }
            None => false,
        }
    }

    /// Whether no token is left at `now` (the next `try_take` would fail).
    pub(crate) fn exhausted(&self, now: Instant, rate: Rate) -> bool {
        self.tat.max(now).duration_since(now) > rate.tolerance()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_the_burst_then_the_sustained_rate() {
        let t0 = Instant::now();
        let rate = Rate::per_minute(60, 3); // one per second, three at once
        let mut b = Bucket::full(t0);
        assert!(b.try_take(t0, rate));
        assert!(b.try_take(t0, rate));
        assert!(b.try_take(t0, rate));
        assert!(!b.try_take(t0, rate), "fourth at once exceeds the burst");
        assert!(!b.try_take(t0 + Duration::from_millis(999), rate));
        assert!(b.try_take(t0 + Duration::from_secs(1), rate));
        assert!(!b.try_take(t0 + Duration::from_secs(1), rate));
        // A long pause refills to the burst, never beyond it.
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert!(b.try_take(later, rate));
        }
        assert!(!b.try_take(later, rate));
    }

    #[test]
    fn refused_attempts_do_not_consume() {
        let t0 = Instant::now();
        let rate = Rate::every(Duration::from_secs(10), 1);
        let mut b = Bucket::full(t0);
        assert!(b.try_take(t0, rate));
        for s in 1..10 {
            assert!(!b.try_take(t0 + Duration::from_secs(s), rate));
        }
        assert!(b.try_take(t0 + Duration::from_secs(10), rate));
    }

    #[test]
    fn exhausted_says_when_the_last_token_was_taken() {
        let t0 = Instant::now();
        let rate = Rate::every(Duration::from_secs(12), 5);
        let mut b = Bucket::full(t0);
        for i in 1..=5 {
            assert!(!b.exhausted(t0, rate), "token {i} is left");
            assert!(b.try_take(t0, rate));
        }
        assert!(b.exhausted(t0, rate), "the fifth was the last");
        assert!(!b.exhausted(t0 + Duration::from_secs(12), rate), "one refilled");
    }
}
