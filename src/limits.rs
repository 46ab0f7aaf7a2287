//! Rate limits and the reconnect breaker.
//!
//! A token bucket is kept in its GCRA form (generic cell rate algorithm): one instant, the
//! "theoretical arrival time", instead of a token count and a refill time. It admits the same
//! traffic as a bucket of `burst` tokens refilled one per `interval`, in 16 bytes, with exact
//! integer time arithmetic, and needs no timer: it is brought up to date when it is used.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::config::BreakerConfig;
use crate::ids::ConnId;
use crate::kinds::BreakerState;

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
    pub(crate) fn try_take(&mut self, now: Instant, rate: Rate) -> bool {
        let tat = self.tat.max(now);
        if tat.duration_since(now) > rate.tolerance() {
            return false;
        }
        self.tat = tat + rate.interval;
        true
    }
}

/// What a breaker event changed, for audit and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transition {
    Opened,
    HalfOpened,
    Closed,
}

/// A user's reconnect breaker. The failure list allocates only once the user first fails, so
/// well-behaved users pay nothing for it.
#[derive(Debug)]
pub(crate) struct Breaker {
    pub(crate) state: BreakerState,
    failures: VecDeque<Instant>,
}

impl Breaker {
    pub(crate) fn new() -> Self {
        Self { state: BreakerState::Closed, failures: VecDeque::new() }
    }

    /// May a connection be admitted now? `Err(retry_after)` if not.
    pub(crate) fn admit(
        &self,
        now: Instant,
        cfg: &BreakerConfig,
        probe_opened: Option<Instant>,
    ) -> Result<(), Duration> {
        match self.state {
            BreakerState::Closed | BreakerState::HalfOpen { probe: None } => Ok(()),
            BreakerState::Open { until } => {
                Err(until.saturating_duration_since(now).max(MIN_RETRY))
            }
            BreakerState::HalfOpen { probe: Some(_) } => {
                let healthy_at = probe_opened.map_or(now, |t| t + cfg.probe_healthy_after);
                Err(healthy_at.saturating_duration_since(now).max(MIN_RETRY))
            }
        }
    }

    /// A connection was admitted; while half-open it becomes the probe.
    pub(crate) fn admitted(&mut self, conn: ConnId) -> bool {
        if let BreakerState::HalfOpen { probe: probe @ None } = &mut self.state {
            *probe = Some(conn);
            return true;
        }
        false
    }

    /// A connection of the user closed. Returns a transition if the breaker changed.
    pub(crate) fn closed(
        &mut self,
        now: Instant,
        conn: ConnId,
        abnormal: bool,
        cfg: &BreakerConfig,
    ) -> Option<Transition> {
        if let BreakerState::HalfOpen { probe } = &mut self.state {
            if *probe == Some(conn) {
                if abnormal {
                    self.state = BreakerState::Open { until: now + cfg.open_for };
                    return Some(Transition::Opened);
                }
                // A clean close proves nothing either way: admit another probe.
                *probe = None;
            }
            return None;
        }
        if !abnormal || self.state != BreakerState::Closed {
            return None;
        }
        let failures = &mut self.failures;
        while failures.front().is_some_and(|&t| now.saturating_duration_since(t) >= cfg.window) {
            failures.pop_front();
        }
        failures.push_back(now);
        if failures.len() >= cfg.threshold as usize {
            failures.clear();
            self.state = BreakerState::Open { until: now + cfg.open_for };
            return Some(Transition::Opened);
        }
        None
    }

    /// The breaker's timer fired: open → half-open, or a probe that stayed up closes it.
    pub(crate) fn on_timer(
        &mut self,
        now: Instant,
        probe_live_since: Option<Instant>,
        cfg: &BreakerConfig,
    ) -> Option<Transition> {
        match self.state {
            BreakerState::Open { until } if now >= until => {
                self.state = BreakerState::HalfOpen { probe: None };
                Some(Transition::HalfOpened)
            }
            BreakerState::HalfOpen { probe: Some(_) }
                if probe_live_since.is_some_and(|t| now >= t + cfg.probe_healthy_after) =>
            {
                self.state = BreakerState::Closed;
                Some(Transition::Closed)
            }
            _ => None,
        }
    }

    /// When the breaker's timer should next fire, if it needs one.
    pub(crate) fn deadline(
        &self,
        probe_opened: Option<Instant>,
        cfg: &BreakerConfig,
    ) -> Option<Instant> {
        match self.state {
            BreakerState::Open { until } => Some(until),
            BreakerState::HalfOpen { probe: Some(_) } => {
                probe_opened.map(|t| t + cfg.probe_healthy_after)
            }
            _ => None,
        }
    }
}

/// A refused client is told to wait at least this long, so that `retry_after` is never zero.
const MIN_RETRY: Duration = Duration::from_secs(1);

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
    fn the_breaker_opens_half_opens_and_closes() {
        let cfg = BreakerConfig {
            threshold: 3,
            window: Duration::from_secs(60),
            open_for: Duration::from_secs(30),
            probe_healthy_after: Duration::from_secs(10),
        };
        let t0 = Instant::now();
        let s = |n| t0 + Duration::from_secs(n);
        let c = ConnId::new(1, 1);
        let mut b = Breaker::new();
        assert_eq!(b.closed(s(0), c, true, &cfg), None);
        assert_eq!(b.closed(s(1), c, false, &cfg), None, "clean closes do not count");
        assert_eq!(b.closed(s(61), c, true, &cfg), None, "the first failure left the window");
        assert_eq!(b.closed(s(62), c, true, &cfg), None);
        assert_eq!(b.closed(s(63), c, true, &cfg), Some(Transition::Opened));
        assert_eq!(b.admit(s(73), &cfg, None), Err(Duration::from_secs(20)));
        assert_eq!(b.deadline(None, &cfg), Some(s(93)));
        assert_eq!(b.on_timer(s(92), None, &cfg), None);
        assert_eq!(b.on_timer(s(93), None, &cfg), Some(Transition::HalfOpened));
        assert_eq!(b.admit(s(93), &cfg, None), Ok(()));
        let probe = ConnId::new(2, 1);
        assert!(b.admitted(probe));
        assert_eq!(b.admit(s(95), &cfg, Some(s(93))), Err(Duration::from_secs(8)));
        // The probe fails: open again.
        assert_eq!(b.closed(s(96), probe, true, &cfg), Some(Transition::Opened));
        assert_eq!(b.on_timer(s(126), None, &cfg), Some(Transition::HalfOpened));
        assert!(b.admitted(probe));
        assert_eq!(b.deadline(Some(s(126)), &cfg), Some(s(136)));
        assert_eq!(b.on_timer(s(136), Some(s(126)), &cfg), Some(Transition::Closed));
        assert_eq!(b.state, BreakerState::Closed);
        assert_eq!(b.admit(s(136), &cfg, None), Ok(()));
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
}
