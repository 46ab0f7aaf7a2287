//! The reconnect breakers: the origin documents' circuit breaker, one per `(tenant, user)` that
//! failed recently, kept apart from the user's state so that it outlives it.
//!
//! ## The rule
//!
//! - **What counts.** A connection that closes abnormally (transport error, heartbeat timeout,
//!   slow consumer, protocol violation) counts as a failure only if it lived less than
//!   `breaker.probe_healthy_after` (10 s by default: the same notion of "healthy" as the
//!   half-open probe) **and** it was opened after the user's last counted failure. A long-lived
//!   connection whose network blinked is not a reconnect storm, and several tabs of one user
//!   that fail together are one failure. "Opened after" uses the hub's connection order, not
//!   instants, so cycles at one instant still count.
//! - **Opening.** `threshold` counted failures within `window` open the breaker for `open_for`;
//!   then it is half-open and admits one probe; the probe closes it by staying up
//!   `probe_healthy_after`, or reopens it by closing abnormally before that. A probe that
//!   closes cleanly makes room for another.
//! - **Lifetime.** An entry is created by a user's first counted failure (well-behaved users cost
//!   nothing), and kept while it has failures inside `window` or is open or half-open. Its own
//!   timer removes it: a closed entry `window` after its last failure, a half-open one without a
//!   probe `window` after it half-opened (a user that stays away that long is not storming).
//!   Retiring the user's state forgets none of this.
//! - **Bound.** At most `max_breakers` entries. At the cap, a new entry evicts the one that
//!   matters least: closed entries first, the one closest to expiry first; only if there is none
//!   the open or half-open entry whose timer is due first. Each eviction is counted
//!   (`breakers_evicted`).
//! - **The end of time.** If an instant the breaker needs (`now + window`, `now + open_for`)
//!   cannot be represented, the failure is not counted and the breaker does not open: a timer that
//!   can never fire would lock the user out for good.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use hashbrown::HashMap;
use slab::Slab;

use crate::config::{BreakerConfig, Config};
use crate::ids::{ConnId, TenantId, UserId};
use crate::kinds::BreakerState;
use crate::timer::{TimerId, TimerQueue};
use crate::user::{UserKey, UserRef};

/// What a breaker event changed, for audit and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transition {
    Opened,
    HalfOpened,
    Closed,
}

/// A refused client is told to wait at least this long, so that `retry_after` is never zero.
const MIN_RETRY: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct Entry {
    key: UserKey,
    state: BreakerState,
    /// Counted failures within the window, while closed.
    failures: VecDeque<Instant>,
    /// While half-open with a probe: when the probe opened.
    probe_since: Option<Instant>,
    /// Connections whose order is at most this were already open at the last counted failure:
    /// their closes are part of it.
    coalesce_upto: u64,
    /// In `idle` while closed, in `armed` while open or half-open.
    timer: TimerId,
    /// Whether `timer` is in `idle`.
    idle: bool,
}

/// Every breaker that remembers something, by `(tenant, user)`, with their timers.
#[derive(Debug)]
pub(crate) struct Breakers {
    slab: Slab<Entry>,
    index: HashMap<UserKey, u32>,
    /// Closed entries by expiry (last failure + window): their timers and the eviction order.
    idle: TimerQueue<u32>,
    /// Open and half-open entries by their next transition or expiry.
    armed: TimerQueue<u32>,
}

/// A user's connection closed: what the breaker needs to know about it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ClosedConn {
    pub(crate) id: ConnId,
    /// The connection's place in the hub's connection order.
    pub(crate) order: u64,
    /// The latest order the hub has handed out.
    pub(crate) latest_order: u64,
    pub(crate) lifetime: Duration,
    pub(crate) abnormal: bool,
}

/// What a call changed: a transition to report, and whether an entry was evicted for room.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Change {
    pub(crate) transition: Option<Transition>,
    pub(crate) evicted: bool,
}

impl Breakers {
    pub(crate) fn new() -> Self {
        Self {
            slab: Slab::new(),
            index: HashMap::new(),
            idle: TimerQueue::new(),
            armed: TimerQueue::new(),
        }
    }

    /// How many entries are held.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn len(&self) -> usize {
        self.slab.len()
    }

    /// How many timers are armed (one per entry).
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn timers(&self) -> usize {
        self.idle.len() + self.armed.len()
    }

    fn find(&self, tenant: &str, user: &str) -> Option<u32> {
        self.index.get(&UserRef(tenant, user)).copied()
    }

    /// The state of a user's breaker (closed when nothing is remembered).
    pub(crate) fn state(&self, tenant: &str, user: &str) -> BreakerState {
        self.find(tenant, user).map_or(BreakerState::Closed, |i| self.slab[i as usize].state)
    }

    /// May a connection of this user be admitted now? `Err(retry_after)` if not.
    pub(crate) fn admit(
        &self,
        now: Instant,
        tenant: &str,
        user: &str,
        cfg: &BreakerConfig,
    ) -> Result<(), Duration> {
        let Some(i) = self.find(tenant, user) else { return Ok(()) };
        let e = &self.slab[i as usize];
        match e.state {
            BreakerState::Closed | BreakerState::HalfOpen { probe: None } => Ok(()),
            BreakerState::Open { until } => {
                Err(until.saturating_duration_since(now).max(MIN_RETRY))
            }
            BreakerState::HalfOpen { probe: Some(_) } => {
                let healthy_at = e.probe_since.and_then(|t| t.checked_add(cfg.probe_healthy_after));
                Err(healthy_at
                    .map_or(MIN_RETRY, |at| at.saturating_duration_since(now).max(MIN_RETRY)))
            }
        }
    }

    /// A connection of this user was admitted; while half-open it becomes the probe.
    pub(crate) fn admitted(
        &mut self,
        now: Instant,
        tenant: &str,
        user: &str,
        conn: ConnId,
        cfg: &BreakerConfig,
    ) {
        let Some(i) = self.find(tenant, user) else { return };
        let e = &mut self.slab[i as usize];
        if e.state != (BreakerState::HalfOpen { probe: None }) {
            return;
        }
        e.state = BreakerState::HalfOpen { probe: Some(conn) };
        e.probe_since = Some(now);
        self.rearm(i, now.checked_add(cfg.probe_healthy_after));
    }

    /// A connection of this user closed. See the module docs for what counts.
    pub(crate) fn closed(
        &mut self,
        now: Instant,
        tenant: &TenantId,
        user: &UserId,
        conn: ClosedConn,
        cfg: &Config,
    ) -> Change {
        let b = &cfg.breaker;
        let found = self.find(tenant.as_str(), user.as_str());
        if let Some(i) = found {
            let e = &mut self.slab[i as usize];
            match e.state {
                BreakerState::HalfOpen { probe: Some(p) } if p == conn.id => {
                    e.probe_since = None;
                    if conn.abnormal {
                        return self.open(i, now, b);
                    }
                    // A clean close proves nothing either way: admit another probe.
                    e.state = BreakerState::HalfOpen { probe: None };
                    self.rearm(i, now.checked_add(b.window));
                    return Change::default();
                }
                BreakerState::Closed => {}
                _ => return Change::default(),
            }
            if conn.order <= e.coalesce_upto {
                return Change::default();
            }
        }
        if !conn.abnormal || conn.lifetime >= b.probe_healthy_after {
            return Change::default();
        }
        let Some(expires) = now.checked_add(b.window) else { return Change::default() };
        let mut change = Change::default();
        let i = match found {
            Some(i) => i,
            None => {
                if self.slab.len() >= cfg.max_breakers as usize {
                    change.evicted = self.evict();
                }
                self.insert(tenant, user, expires)
            }
        };
        let e = &mut self.slab[i as usize];
        while e.failures.front().is_some_and(|&t| now.saturating_duration_since(t) >= b.window) {
            e.failures.pop_front();
        }
        e.failures.push_back(now);
        e.coalesce_upto = conn.latest_order;
        if e.failures.len() >= b.threshold as usize {
            let opened = self.open(i, now, b);
            change.transition = opened.transition;
            if opened.transition.is_some() {
                return change;
            }
        }
        self.rearm(i, Some(expires));
        change
    }

    /// Opens entry `i` until `now + open_for` (if that instant exists).
    fn open(&mut self, i: u32, now: Instant, b: &BreakerConfig) -> Change {
        let Some(until) = now.checked_add(b.open_for) else { return Change::default() };
        let e = &mut self.slab[i as usize];
        e.failures.clear();
        e.probe_since = None;
        e.state = BreakerState::Open { until };
        self.rearm(i, Some(until));
        Change { transition: Some(Transition::Opened), evicted: false }
    }

    fn insert(&mut self, tenant: &TenantId, user: &UserId, at: Instant) -> u32 {
        let key = UserKey { tenant: tenant.clone(), user: user.clone() };
        let i = self.slab.vacant_key() as u32;
        let timer = self.idle.insert(at, i);
        let entry = Entry {
            key: key.clone(),
            state: BreakerState::Closed,
            failures: VecDeque::new(),
            probe_since: None,
            coalesce_upto: 0,
            timer,
            idle: true,
        };
        let got = self.slab.insert(entry) as u32;
        debug_assert_eq!(got, i);
        self.index.insert(key, i);
        i
    }

    fn remove(&mut self, i: u32) -> Entry {
        let e = self.slab.remove(i as usize);
        self.index.remove(&UserRef(e.key.tenant.as_str(), e.key.user.as_str()));
        e
    }

    /// Makes room: the closed entry closest to expiry, else the armed one due first.
    fn evict(&mut self) -> bool {
        let victim = self.idle.pop_first().or_else(|| self.armed.pop_first());
        match victim {
            Some(i) => {
                self.remove(i);
                true
            }
            None => false,
        }
    }

    /// Moves entry `i`'s one timer to `at`, in the queue its state belongs to. `None` (an instant
    /// that cannot be represented) forgets the entry instead: a timer that never fires would keep
    /// it for good.
    fn rearm(&mut self, i: u32, at: Option<Instant>) {
        let e = &self.slab[i as usize];
        let closed = e.state == BreakerState::Closed;
        let (old, was_idle) = (e.timer, e.idle);
        if was_idle {
            self.idle.cancel(old);
        } else {
            self.armed.cancel(old);
        }
        let Some(at) = at else {
            self.remove(i);
            return;
        };
        let timer = if closed { self.idle.insert(at, i) } else { self.armed.insert(at, i) };
        let e = &mut self.slab[i as usize];
        (e.timer, e.idle) = (timer, closed);
    }

    /// When the next breaker timer is due.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        match (self.idle.peek(), self.armed.peek()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Runs the next timer due at `now`; a transition to report comes back with the entry's ids.
    /// Closed entries past their window, and half-open ones whose probe never came, are
    /// forgotten silently. `None` when nothing more is due.
    pub(crate) fn pop_due(
        &mut self,
        now: Instant,
        cfg: &BreakerConfig,
    ) -> Option<Option<(TenantId, UserId, BreakerState, Transition)>> {
        if let Some(i) = self.idle.pop_due(now) {
            self.remove(i);
            return Some(None);
        }
        let i = self.armed.pop_due(now)?;
        let e = &mut self.slab[i as usize];
        match e.state {
            BreakerState::Open { .. } => {
                e.state = BreakerState::HalfOpen { probe: None };
                let (t, u) = (e.key.tenant.clone(), e.key.user.clone());
                let timer = now.checked_add(cfg.window).map(|at| self.armed.insert(at, i));
                match timer {
                    Some(timer) => {
                        (self.slab[i as usize].timer, self.slab[i as usize].idle) = (timer, false)
                    }
                    None => {
                        self.remove(i);
                    }
                }
                let state = BreakerState::HalfOpen { probe: None };
                Some(Some((t, u, state, Transition::HalfOpened)))
            }
            BreakerState::HalfOpen { probe: Some(_) } => {
                // The probe stayed up: closed, and nothing left to remember.
                let e = self.remove(i);
                Some(Some((e.key.tenant, e.key.user, BreakerState::Closed, Transition::Closed)))
            }
            _ => {
                self.remove(i);
                Some(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn closed(id: u32, order: u64, latest: u64, lifetime_s: u64, abnormal: bool) -> ClosedConn {
        ClosedConn {
            id: ConnId::new(id, 1),
            order,
            latest_order: latest,
            lifetime: Duration::from_secs(lifetime_s),
            abnormal,
        }
    }

    #[test]
    fn storms_open_blips_and_coalesced_closes_do_not() {
        let cfg = Config {
            breaker: BreakerConfig { threshold: 3, ..BreakerConfig::default() },
            ..Config::default()
        };
        let (t, u) = (TenantId::from("acme"), UserId::from("alice"));
        let t0 = Instant::now();
        let s = |n| t0 + Duration::from_secs(n);
        let mut b = Breakers::new();
        // A long-lived connection's abnormal end does not count, nor a clean one.
        assert_eq!(b.closed(s(0), &t, &u, closed(1, 1, 3, 30, true), &cfg), Change::default());
        assert_eq!(b.closed(s(0), &t, &u, closed(2, 2, 3, 0, false), &cfg), Change::default());
        assert_eq!(b.len(), 0, "nothing remembered for a well-behaved user");
        // A short-lived one counts; one opened before it (order 3 <= 4) is coalesced.
        assert_eq!(b.closed(s(1), &t, &u, closed(4, 4, 4, 0, true), &cfg), Change::default());
        assert_eq!(b.closed(s(1), &t, &u, closed(3, 3, 4, 0, true), &cfg), Change::default());
        assert_eq!(b.len(), 1);
        assert_eq!(b.closed(s(2), &t, &u, closed(5, 5, 5, 0, true), &cfg), Change::default());
        let c = b.closed(s(2), &t, &u, closed(6, 6, 6, 0, true), &cfg);
        assert_eq!(c.transition, Some(Transition::Opened));
        assert_eq!(b.admit(s(12), "acme", "alice", &cfg.breaker), Err(Duration::from_secs(50)));
        assert_eq!(b.poll_timeout(), Some(s(62)));
        assert_eq!(b.pop_due(s(61), &cfg.breaker), None);
        let half = b.pop_due(s(62), &cfg.breaker).unwrap().unwrap();
        assert_eq!(half.3, Transition::HalfOpened);
        assert_eq!(b.admit(s(62), "acme", "alice", &cfg.breaker), Ok(()));
        b.admitted(s(62), "acme", "alice", ConnId::new(7, 1), &cfg.breaker);
        assert_eq!(b.admit(s(64), "acme", "alice", &cfg.breaker), Err(Duration::from_secs(8)));
        assert_eq!(b.poll_timeout(), Some(s(72)));
        let done = b.pop_due(s(72), &cfg.breaker).unwrap().unwrap();
        assert_eq!((done.2, done.3), (BreakerState::Closed, Transition::Closed));
        assert_eq!(b.len(), 0);
        assert_eq!(b.poll_timeout(), None);
    }

    #[test]
    fn entries_expire_and_the_cap_evicts_closed_ones_first() {
        let cfg = Config { max_breakers: 2, ..Config::default() };
        let t0 = Instant::now();
        let mut b = Breakers::new();
        let users: Vec<UserId> = ["a", "b", "c"].map(UserId::from).to_vec();
        let t = TenantId::from("acme");
        for (n, u) in users.iter().enumerate() {
            let at = t0 + Duration::from_secs(n as u64);
            let n = n as u64 + 1;
            let c = b.closed(at, &t, u, closed(n as u32, n, n, 0, true), &cfg);
            assert_eq!(c.evicted, n == 3);
        }
        assert_eq!(b.len(), 2);
        assert_eq!(b.state("acme", "a"), BreakerState::Closed);
        assert!(b.find("acme", "a").is_none(), "the oldest closed entry went");
        assert_eq!(b.poll_timeout(), Some(t0 + Duration::from_secs(61)));
        while b.pop_due(t0 + Duration::from_secs(62), &cfg.breaker).is_some() {}
        assert_eq!(b.len(), 0);
    }
}
