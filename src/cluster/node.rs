//! A clustered hub's bus bookkeeping: the operations in flight with their deadlines, the streams
//! it is subscribed to with their sequencers, whether the bus is up, and the counters of what the
//! bus did (late replies, duplicates, gaps).

use std::time::{Duration, Instant};

use hashbrown::HashMap;

use super::sweep::Sweep;
use super::{BusFailure, ClusterConfig, OpId, Sequencer, StreamKey};
use crate::ids::{ConnId, StreamPos};
use crate::stats::BusStats;
use crate::timer::{TimerId, TimerQueue};

/// What an operation in flight was for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Pending {
    /// A publish: its outcome goes to the publisher as `Action::Published`.
    Publish { stream: StreamKey },
    /// A subscription; connections wait for it.
    Subscribe { stream: StreamKey },
    /// A fetch filling a gap in live delivery, read after `after` (the seq delivered last when
    /// it was asked).
    Repair { stream: StreamKey, after: u64 },
    /// A fetch for one connection's resume.
    Resume { conn: ConnId, stream: StreamKey },
    /// A fetch for one connection's `history` request.
    History { conn: ConnId, stream: StreamKey },
    /// A top check of these streams, each with its position when the check was asked.
    Tops { streams: Vec<(StreamKey, StreamPos)> },
    /// A rotation to a new epoch after the log lost its tail.
    Rotate { stream: StreamKey, epoch: u64 },
    /// A connection's lease in its user's cluster-wide quota.
    Lease { conn: ConnId, user: StreamKey },
    /// The periodic renewal of the node's leases.
    Renew,
    /// A write of this node's presence set in a scope.
    PresenceUpdate { scope: StreamKey },
    /// The periodic refresh of this node's presence sets.
    PresenceRefresh,
    /// A read of a scope's presence sets.
    PresenceRead { scope: StreamKey },
}

/// One stream the node is subscribed to (or subscribing to).
#[derive(Debug)]
pub(crate) struct Tracked {
    pub(crate) seq: Sequencer,
    /// The subscription in flight, until confirmed.
    pub(crate) subscribing: Option<OpId>,
}

/// The node's side of the bus.
#[derive(Debug)]
pub(crate) struct Node {
    pub(crate) cfg: ClusterConfig,
    generation: u32,
    next: u64,
    up: bool,
    pending: HashMap<OpId, (Pending, TimerId)>,
    deadlines: TimerQueue<OpId>,
    pub(crate) streams: HashMap<StreamKey, Tracked>,
    /// The next top check, if armed.
    top_check: Option<Instant>,
    /// A small generator for the top check's jitter (seeded from the hub's seed).
    jitter: u64,
    /// Connections whose lease is being taken (they wait before `connected`).
    pub(crate) leasing: hashbrown::HashSet<ConnId>,
    /// The renewal of the node's leases (a slice of them every step), armed once it holds any.
    pub(crate) renew: Sweep,
    pub(crate) counters: BusStats,
}

impl Node {
    pub(crate) fn new(cfg: ClusterConfig, seed: u64) -> Self {
        let renew = Sweep::new(cfg.lease_ttl / 3);
        Self {
            cfg,
            generation: 0,
            next: 0,
            up: true,
            pending: HashMap::new(),
            deadlines: TimerQueue::new(),
            streams: HashMap::new(),
            top_check: None,
            jitter: seed | 1,
            leasing: hashbrown::HashSet::new(),
            renew,
            counters: BusStats::default(),
        }
    }

    /// Whether the bus is up (as last reported).
    pub(crate) fn is_up(&self) -> bool {
        self.up
    }

    /// Operations in flight.
    pub(crate) fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Registers an operation; its deadline is `now + op_timeout`.
    ///
    /// # Errors
    ///
    /// [`BusFailure::Down`] while the bus is down, [`BusFailure::Overloaded`] at
    /// `max_inflight_ops`.
    pub(crate) fn issue(&mut self, now: Instant, what: Pending) -> Result<OpId, BusFailure> {
        if !self.up {
            return Err(BusFailure::Down);
        }
        if self.pending.len() >= self.cfg.max_inflight_ops as usize {
            return Err(BusFailure::Overloaded);
        }
        self.next += 1;
        let op = OpId::new(self.generation, self.next);
        let at = now.checked_add(self.cfg.op_timeout).unwrap_or(now);
        let timer = self.deadlines.insert(at, op);
        self.pending.insert(op, (what, timer));
        self.counters.ops += 1;
        Ok(op)
    }

    /// The operation a reply answers, or `None` for one that is not in flight (late, from before
    /// an outage, or never issued): counted and ignored.
    pub(crate) fn complete(&mut self, op: OpId) -> Option<Pending> {
        match self.pending.remove(&op) {
            Some((what, timer)) => {
                self.deadlines.cancel(timer);
                Some(what)
            }
            None => {
                self.counters.late_replies += 1;
                None
            }
        }
    }

    /// An operation whose deadline passed, removed (so a late reply is ignored).
    pub(crate) fn pop_expired(&mut self, now: Instant) -> Option<(OpId, Pending)> {
        let op = self.deadlines.pop_due(now)?;
        let (what, _) = self.pending.remove(&op).expect("a deadline has its operation");
        self.counters.op_timeouts += 1;
        Some((op, what))
    }

    /// The bus went down: every operation in flight has failed (returned, oldest first).
    pub(crate) fn down(&mut self) -> Vec<(OpId, Pending)> {
        self.up = false;
        let mut failed: Vec<(OpId, Pending)> = Vec::with_capacity(self.pending.len());
        while let Some(op) = self.deadlines.pop_first() {
            let (what, _) = self.pending.remove(&op).expect("a deadline has its operation");
            failed.push((op, what));
        }
        failed.sort_by_key(|(op, _)| *op);
        for tracked in self.streams.values_mut() {
            tracked.subscribing = None;
            tracked.seq.repair = None;
        }
        failed
    }

    /// The bus is back: a new generation begins.
    pub(crate) fn up(&mut self) {
        self.up = true;
        self.generation = self.generation.wrapping_add(1);
    }

    /// When the next operation times out, the next top check or the next step of the lease
    /// renewal is due.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        [self.deadlines.peek(), self.top_check, self.renew.deadline()].into_iter().flatten().min()
    }

    /// Arms the next top check after `now` (±50 % jitter), if configured and not armed.
    pub(crate) fn arm_top_check(&mut self, now: Instant) {
        let Some(every) = self.cfg.top_check_interval else { return };
        if self.top_check.is_some() {
            return;
        }
        // xorshift: deterministic for a seed, different per node.
        self.jitter ^= self.jitter << 13;
        self.jitter ^= self.jitter >> 7;
        self.jitter ^= self.jitter << 17;
        let half = every / 2;
        let spread = u64::try_from(every.as_millis()).unwrap_or(u64::MAX).max(1);
        let at = half + Duration::from_millis(self.jitter % spread);
        self.top_check = now.checked_add(at);
    }

    /// Whether the top check is due (disarming it).
    pub(crate) fn top_check_due(&mut self, now: Instant) -> bool {
        if self.top_check.is_some_and(|at| at <= now) {
            self.top_check = None;
            return true;
        }
        false
    }

    /// The streams subscribed to, sorted (outputs depend on inputs only).
    pub(crate) fn stream_keys(&self) -> Vec<StreamKey> {
        let mut keys: Vec<StreamKey> = self.streams.keys().cloned().collect();
        keys.sort_unstable();
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(max: u32) -> Node {
        let mut cfg = ClusterConfig::new("n1");
        cfg.max_inflight_ops = max;
        Node::new(cfg, 7)
    }

    #[test]
    fn operations_are_bounded_and_time_out() {
        let mut n = node(2);
        let t0 = Instant::now();
        let s = StreamKey::tenant("acme");
        let a = n.issue(t0, Pending::Subscribe { stream: s.clone() }).expect("room");
        let b = n.issue(t0, Pending::Repair { stream: s.clone(), after: 0 }).expect("room");
        assert_eq!(
            n.issue(t0, Pending::Repair { stream: s.clone(), after: 0 }),
            Err(BusFailure::Overloaded)
        );
        assert_eq!(n.complete(a), Some(Pending::Subscribe { stream: s.clone() }));
        assert_eq!(n.complete(a), None, "a second reply is late");
        assert_eq!(n.counters.late_replies, 1);
        let deadline = t0 + n.cfg.op_timeout;
        assert_eq!(n.poll_timeout(), Some(deadline));
        assert!(n.pop_expired(deadline - Duration::from_millis(1)).is_none());
        assert_eq!(n.pop_expired(deadline), Some((b, Pending::Repair { stream: s, after: 0 })));
        assert_eq!(n.complete(b), None, "a reply after the deadline is ignored");
    }

    #[test]
    fn an_outage_fails_what_is_in_flight_and_starts_a_new_generation() {
        let mut n = node(10);
        let t0 = Instant::now();
        let s = StreamKey::tenant("acme");
        let a = n.issue(t0, Pending::Publish { stream: s.clone() }).expect("room");
        let failed = n.down();
        assert_eq!(failed, vec![(a, Pending::Publish { stream: s.clone() })]);
        assert_eq!(n.issue(t0, Pending::Publish { stream: s.clone() }), Err(BusFailure::Down));
        n.up();
        let b = n.issue(t0, Pending::Publish { stream: s }).expect("up again");
        assert_eq!(b.generation(), a.generation() + 1);
        assert_eq!(n.complete(a), None);
    }

    #[test]
    fn top_checks_are_jittered_within_half_to_one_and_a_half_intervals() {
        let mut n = node(10);
        let t0 = Instant::now();
        let every = n.cfg.top_check_interval.expect("default");
        for _ in 0..50 {
            n.arm_top_check(t0);
            let at = n.poll_timeout().expect("armed");
            assert!(at >= t0 + every / 2 && at <= t0 + every * 3 / 2, "{:?}", at - t0);
            assert!(n.top_check_due(at));
        }
    }
}
