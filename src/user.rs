//! Per-user isolated state: the origin documents' "isolated manager", reduced to what it must own:
//! the user's connections, its stream, its message quota and its retention timer. (Its reconnect
//! breaker is not here: it outlives the state, see `breaker.rs`.)
//!
//! ## When does a user retire?
//!
//! A user's state is created by its first connection and is **active** while it has any. When its
//! last connection closes it is **detached** ([`Users::detach`]):
//!
//! - with `user_retention` zero it retires at once (also if `now + user_retention` is past the
//!   end of the clock's range: a retirement that can never come would defeat
//!   `max_detached_users`);
//! - otherwise it is kept until `now + user_retention`;
//! - if `max_detached_users` are already detached, the one closest to retirement retires early
//!   (evicted) to make room; the hub also evicts this way when the recovery buffers pass 7/8 of
//!   `max_buffered_bytes`.
//!
//! A connection that comes back while it is detached reattaches it ([`Users::reattach`]): it
//! keeps its stream and its message quota. When the retention timer fires
//! ([`Users::pop_retiring`]) it retires. Retiring forgets the state, its stream, its buffer and its
//! message quota (the hub drops them, and its tenant if that was the tenant's last state); its
//! reconnect breaker is kept apart and forgets nothing.

use std::hash::{Hash, Hasher};
use std::time::Instant;

use hashbrown::{Equivalent, HashMap};
use slab::Slab;

use crate::config::Config;
use crate::ids::{TenantId, UserId};
use crate::limits::Bucket;
use crate::stats::Meters;
use crate::stream::Stream;
use crate::timer::{TimerId, TimerQueue};

/// Where a user is in its lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum UserPhase {
    /// It has at least one open connection.
    Active,
    /// It has none; its state is kept until retention runs out.
    Detached {
        /// When its last connection closed.
        since: Instant,
        /// When it will be retired unless a connection returns.
        retires_at: Instant,
    },
}

#[derive(Debug)]
pub(crate) struct UserState {
    pub(crate) tenant: TenantId,
    pub(crate) user: UserId,
    /// Open connections (slab indices), oldest first.
    pub(crate) conns: Vec<u32>,
    pub(crate) stream: Stream,
    pub(crate) created_at: Instant,
    /// While detached: the retirement timer (in the hub's detached-user queue) and when the
    /// user detached.
    pub(crate) retire: Option<(TimerId, Instant)>,
    /// The tier's `message` quota: the user's, shared by all of its connections (DESIGN §6).
    pub(crate) messages: Bucket,
    pub(crate) meters: Meters,
    /// Presence metadata (JSON text) from its latest connection's principal.
    pub(crate) meta: Option<std::sync::Arc<str>>,
}

/// The key of the user index: `(tenant, user)`. Hashes exactly like `(&str, &str)`, so lookups
/// need no owned ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UserKey {
    pub(crate) tenant: TenantId,
    pub(crate) user: UserId,
}

impl Hash for UserKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (self.tenant.as_str(), self.user.as_str()).hash(state);
    }
}

/// A borrowed `(tenant, user)` for lookups.
#[derive(Hash)]
pub(crate) struct UserRef<'a>(pub(crate) &'a str, pub(crate) &'a str);

impl Equivalent<UserKey> for UserRef<'_> {
    fn equivalent(&self, key: &UserKey) -> bool {
        self.0 == key.tenant.as_str() && self.1 == key.user.as_str()
    }
}

/// All user states, the index from `(tenant, user)` to them, and the retirement timers of the
/// detached ones.
#[derive(Debug)]
pub(crate) struct Users {
    pub(crate) slab: Slab<UserState>,
    index: HashMap<UserKey, u32>,
    /// Detached users by retirement time: the retirement timers, and the order in which
    /// `max_detached_users` evicts.
    detached: TimerQueue<u32>,
}

/// What [`Users::detach`] decided.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Detach {
    /// Retire this user now (no retention).
    pub(crate) retire_now: bool,
    /// Another detached user evicted to make room: retire it early.
    pub(crate) evicted: Option<u32>,
}

impl Users {
    pub(crate) fn new() -> Self {
        Self { slab: Slab::new(), index: HashMap::new(), detached: TimerQueue::new() }
    }

    /// How many users are detached (the rest are active).
    pub(crate) fn detached_count(&self) -> usize {
        self.detached.len()
    }

    /// The user's last connection closed: keep it detached, or say to retire it now. See the
    /// module docs for the rule.
    pub(crate) fn detach(&mut self, now: Instant, uidx: u32, cfg: &Config) -> Detach {
        let retire_at = match now.checked_add(cfg.user_retention) {
            Some(at) if !cfg.user_retention.is_zero() => at,
            _ => return Detach { retire_now: true, evicted: None },
        };
        let evicted = if self.detached.len() >= cfg.max_detached_users as usize {
            self.pop_evictable()
        } else {
            None
        };
        let timer = self.detached.insert(retire_at, uidx);
        self.get_mut(uidx).retire = Some((timer, now));
        Detach { retire_now: false, evicted }
    }

    /// A detached user's connection came back within retention: it keeps its state.
    pub(crate) fn reattach(&mut self, uidx: u32) {
        if let Some((timer, _)) = self.get_mut(uidx).retire.take() {
            self.detached.cancel(timer);
        }
    }

    /// Takes the detached user closest to retirement off its timer, to retire it early.
    pub(crate) fn pop_evictable(&mut self) -> Option<u32> {
        let oldest = self.detached.pop_first()?;
        self.get_mut(oldest).retire = None;
        Some(oldest)
    }

    /// When the next detached user's retention runs out.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.detached.peek()
    }

    /// The next user whose retention ran out at `now`: it retires now.
    pub(crate) fn pop_retiring(&mut self, now: Instant) -> Option<u32> {
        let uidx = self.detached.pop_due(now)?;
        self.get_mut(uidx).retire = None;
        Some(uidx)
    }

    /// When a detached user retires.
    pub(crate) fn retires_at(&self, uidx: u32) -> Option<Instant> {
        self.get(uidx).retire.map(|(t, _)| self.detached.deadline(t))
    }

    pub(crate) fn find(&self, tenant: &str, user: &str) -> Option<u32> {
        self.index.get(&UserRef(tenant, user)).copied()
    }

    pub(crate) fn insert(&mut self, state: UserState) -> u32 {
        let key = UserKey { tenant: state.tenant.clone(), user: state.user.clone() };
        let idx = self.slab.insert(state) as u32;
        self.index.insert(key, idx);
        idx
    }

    pub(crate) fn remove(&mut self, idx: u32) -> UserState {
        let state = self.slab.remove(idx as usize);
        self.index.remove(&UserRef(state.tenant.as_str(), state.user.as_str()));
        state
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (u32, &UserState)> {
        self.slab.iter().map(|(i, u)| (i as u32, u))
    }

    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn indexed(&self) -> usize {
        self.index.len()
    }

    pub(crate) fn get(&self, idx: u32) -> &UserState {
        &self.slab[idx as usize]
    }

    pub(crate) fn get_mut(&mut self, idx: u32) -> &mut UserState {
        &mut self.slab[idx as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_finds_users_by_borrowed_ids_and_scopes_them_by_tenant() {
        let mut users = Users::new();
        let t0 = Instant::now();
        let mk = |tenant: &str, user: &str| UserState {
            tenant: tenant.into(),
            user: user.into(),
            conns: Vec::new(),
            stream: Stream::new(1),
            created_at: t0,
            retire: None,
            messages: Bucket::full(t0),
            meters: Meters::default(),
            meta: None,
        };
        let a = users.insert(mk("acme", "alice"));
        let b = users.insert(mk("globex", "alice"));
        assert_ne!(a, b);
        assert_eq!(users.find("acme", "alice"), Some(a));
        assert_eq!(users.find("globex", "alice"), Some(b));
        assert_eq!(users.find("acme", "bob"), None);
        // Concatenation must not alias: ("ac", "mealice") is not ("acme", "alice").
        assert_eq!(users.find("ac", "mealice"), None);
        users.remove(a);
        assert_eq!(users.find("acme", "alice"), None);
        assert_eq!(users.find("globex", "alice"), Some(b));
    }
}
