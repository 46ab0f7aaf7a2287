//! The per-tier cap on a connection's lifetime ([`TierQuota::max_connection_lifetime`]): when it
//! is reached the connection is closed with [`CloseReason::MaxLifetime`], so that its client
//! reconnects (and resumes) wherever the load balancer sends it now.
//!
//! Each connection's cap is drawn between 90 % and 100 % of its tier's, from the hub's seed and
//! the connection's place in the connection order: connections opened together (after a deploy,
//! say) then close spread over a tenth of the cap instead of all at once, and a run is still
//! reproducible from its seed. No state is kept: the deadline is computed from what the
//! connection already holds.
//!
//! [`TierQuota::max_connection_lifetime`]: crate::TierQuota::max_connection_lifetime
//! [`CloseReason::MaxLifetime`]: crate::CloseReason::MaxLifetime

use std::time::{Duration, Instant};

use super::Connection;
use crate::config::Config;
use crate::stream::mix64;

impl Connection {
    /// When its lifetime cap closes it, if its tier has one (and the instant is representable).
    pub(crate) fn lifetime_deadline(&self, cfg: &Config) -> Option<Instant> {
        let cap = cfg.tiers.get(self.tier).max_connection_lifetime?;
        self.opened_at.checked_add(jittered(cap, cfg.seed, self.order))
    }
}

/// `cap` less a pseudo-random part of its tenth, fixed by `seed` and `order`.
fn jittered(cap: Duration, seed: u64, order: u64) -> Duration {
    let spread = u64::try_from((cap / 10).as_nanos()).unwrap_or(u64::MAX);
    let draw = mix64(seed ^ mix64(order));
    cap - Duration::from_nanos(draw.checked_rem(spread + 1).unwrap_or(draw))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_spread_over_the_last_tenth_and_repeat_for_a_seed() {
        let cap = Duration::from_secs(3600);
        let caps: Vec<Duration> = (1..=1000).map(|order| jittered(cap, 7, order)).collect();
        assert!(caps.iter().all(|&c| c <= cap && c >= cap * 9 / 10), "within the last tenth");
        let (lo, hi) = (caps.iter().min().unwrap(), caps.iter().max().unwrap());
        assert!(*hi - *lo > Duration::from_secs(300), "spread, not bunched: {lo:?}..{hi:?}");
        assert_eq!(jittered(cap, 7, 42), caps[41], "the same seed and connection, the same cap");
        assert_ne!(jittered(cap, 8, 42), caps[41], "another seed, another draw");
        // A cap too short to spread is the cap.
        assert_eq!(jittered(Duration::from_nanos(5), 7, 1), Duration::from_nanos(5));
    }
}
