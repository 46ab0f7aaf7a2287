//! Per-user isolated state: the origin documents' "isolated manager", reduced to what it must own:
//! the user's connections, its stream, and its retention timer. It is created by the user's first
//! connection, detached (kept for `user_retention`) after its last, and retired after that.

use std::hash::{Hash, Hasher};
use std::time::Instant;

use hashbrown::{Equivalent, HashMap};
use slab::Slab;

use crate::ids::{TenantId, UserId};
use crate::limits::Breaker;
use crate::stats::Meters;
use crate::stream::Stream;
use crate::timer::TimerId;

/// Where a user is in its lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
    pub(crate) breaker: Breaker,
    /// Armed while the breaker is open or has a probe.
    pub(crate) breaker_timer: Option<TimerId>,
    pub(crate) meters: Meters,
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

/// All user states and the index from `(tenant, user)` to them.
#[derive(Debug, Default)]
pub(crate) struct Users {
    pub(crate) slab: Slab<UserState>,
    index: HashMap<UserKey, u32>,
}

impl Users {
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

    #[cfg(any(test, feature = "fuzzing"))]
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
        let mut users = Users::default();
        let t0 = Instant::now();
        let mk = |tenant: &str, user: &str| UserState {
            tenant: tenant.into(),
            user: user.into(),
            conns: Vec::new(),
            stream: Stream::new(1),
            created_at: t0,
            retire: None,
            breaker: Breaker::new(),
            breaker_timer: None,
            meters: Meters::default(),
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
