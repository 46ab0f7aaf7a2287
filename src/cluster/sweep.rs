//! A periodic sweep cut into steps. Lease renewals and presence refreshes each touch everything
//! the node holds once per period; done in one go, a period's work reaches the engine as one
//! burst of scripts that holds up every other node's publishes behind it (measured: +3 ms on the
//! p99 of a single-user publish at 1,000 leases per node). Cut into [`STEPS`] steps, each step
//! carries a slice of the work and the burst is that much smaller.
//!
//! What each step covers is chosen so that everything is covered exactly once per period while
//! the set churns: a slab by a cursor over its slots ([`Sweep::slots`]), a map by a fixed hash of
//! its keys ([`Step::holds`]). Something added after its slice went by waits for the next period,
//! so it is touched at most two periods after it was added, as before.

use std::hash::{Hash, Hasher};
use std::ops::Range;
use std::time::{Duration, Instant};

/// Steps per period.
pub(crate) const STEPS: u32 = 32;

/// The timer and position of one sweep.
#[derive(Debug)]
pub(crate) struct Sweep {
    every: Duration,
    at: Option<Instant>,
    /// The step due next, `0..STEPS`.
    index: u32,
    /// The first slot the next [`Sweep::slots`] covers.
    cursor: usize,
}

/// One due step of a [`Sweep`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Step {
    index: u32,
}

impl Sweep {
    /// A sweep over `period`, disarmed.
    pub(crate) fn new(period: Duration) -> Self {
        Self {
            every: (period / STEPS).max(Duration::from_millis(1)),
            at: None,
            index: 0,
            cursor: 0,
        }
    }

    /// Arms the next step, unless armed.
    pub(crate) fn arm(&mut self, now: Instant) {
        if self.at.is_none() {
            self.at = now.checked_add(self.every);
        }
    }

    /// Whether the sweep is armed.
    pub(crate) fn is_armed(&self) -> bool {
        self.at.is_some()
    }

    /// When the next step is due.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.at
    }

    /// The step due at `now`, if any; the sweep moves on to the next one, re-armed only if
    /// `rearm` (a sweep with nothing left to do stops).
    pub(crate) fn due(&mut self, now: Instant, rearm: bool) -> Option<Step> {
        if self.at.is_none_or(|at| at > now) {
            return None;
        }
        self.at = if rearm { now.checked_add(self.every) } else { None };
        let index = self.index;
        self.index = (index + 1) % STEPS;
        if index == 0 {
            self.cursor = 0;
        }
        Some(Step { index })
    }

    /// The slots of a slab of `len` slots that `step` (the one just due) covers: the ones after
    /// the previous step's, what is left of the slab shared evenly over the steps left in the
    /// period.
    pub(crate) fn slots(&mut self, step: Step, len: usize) -> Range<usize> {
        let lo = self.cursor.min(len);
        // What is left, shared evenly by the steps left (a slab that grew is caught up gradually).
        let left = (STEPS - step.index) as usize;
        let hi = lo + (len - lo).div_ceil(left);
        self.cursor = hi;
        lo..hi
    }
}

impl Step {
    /// Whether this step covers `key` (each key falls to one step of every period).
    pub(crate) fn holds(&self, key: &impl Hash) -> bool {
        // SipHash with fixed keys: the same step on every run and every node.
        let mut h = std::hash::DefaultHasher::new();
        key.hash(&mut h);
        h.finish() % u64::from(STEPS) == u64::from(self.index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn a_period_covers_every_slot_once_in_slices_even_while_the_slab_grows() {
        let t0 = Instant::now();
        let mut sweep = Sweep::new(secs(32));
        sweep.arm(t0);
        let mut seen = vec![0u32; 1000];
        let mut widest = 0;
        for i in 1..=STEPS {
            // The slab doubles half way through the period.
            let len = if i <= 16 { 500 } else { 1000 };
            let step = sweep.due(t0 + secs(u64::from(i)), true).expect("due each second");
            let range = sweep.slots(step, len);
            widest = widest.max(range.len());
            range.for_each(|s| seen[s] += 1);
        }
        assert!(seen.iter().all(|&n| n == 1), "each slot once: {seen:?}");
        assert!(widest <= 2 * 1000 / STEPS as usize, "no step takes a burst: {widest}");
        // The next period starts over at slot 0.
        let step = sweep.due(t0 + secs(33), true).expect("due");
        assert_eq!(sweep.slots(step, 1000), 0..32);
    }

    #[test]
    fn a_key_falls_to_one_step_per_period_and_keys_spread_over_the_steps() {
        let t0 = Instant::now();
        let mut sweep = Sweep::new(secs(32));
        sweep.arm(t0);
        let keys: Vec<String> = (0..3200).map(|i| format!("scope-{i}")).collect();
        let mut hits = vec![0u32; keys.len()];
        let mut most = 0;
        for i in 1..=STEPS {
            let step = sweep.due(t0 + secs(u64::from(i)), true).expect("due");
            let mut n = 0;
            for (k, key) in keys.iter().enumerate() {
                if step.holds(key) {
                    hits[k] += 1;
                    n += 1;
                }
            }
            most = most.max(n);
        }
        assert!(hits.iter().all(|&n| n == 1));
        assert!(most < 200, "about 100 keys a step, not a burst: {most}");
    }

    #[test]
    fn a_sweep_is_due_only_when_armed_and_its_time_came() {
        let t0 = Instant::now();
        let mut sweep = Sweep::new(secs(32));
        assert!(sweep.due(t0 + secs(100), true).is_none(), "disarmed");
        sweep.arm(t0);
        assert_eq!(sweep.deadline(), Some(t0 + secs(1)));
        assert!(sweep.due(t0, true).is_none());
        assert!(sweep.due(t0 + secs(1), false).is_some());
        assert!(!sweep.is_armed(), "not re-armed when told so");
    }
}
