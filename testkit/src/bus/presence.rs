//! The model bus's presence store: per scope (a tenant's or a room's stream key) and per node, a
//! set of users with their metadata that expires as a whole `ttl` after its last write, as the
//! cluster vocabulary's module docs say the engine keeps them (DESIGN §12).
//!
//! Expiry is checked when a set is touched or read (a set past its expiry is gone), so the store
//! needs no timers; [`PresenceStore::members`] is the ground truth of who some live set holds.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchboard::{NodeId, PresenceEntry, PresenceHeld, StreamKey, UserId};

/// One node's set in one scope.
#[derive(Clone, Debug, Default)]
struct Set {
    users: BTreeMap<UserId, Option<Arc<str>>>,
    expires_at: Option<Instant>,
}

impl Set {
    fn live(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| at > now)
    }
}

/// Every scope's sets.
#[derive(Debug, Default)]
pub(crate) struct PresenceStore {
    scopes: BTreeMap<StreamKey, BTreeMap<NodeId, Set>>,
}

impl PresenceStore {
    /// Drops the scope's sets that expired by `now`.
    fn sweep(&mut self, scope: &StreamKey, now: Instant) {
        if let Some(sets) = self.scopes.get_mut(scope) {
            sets.retain(|_, set| set.live(now));
            if sets.is_empty() {
                self.scopes.remove(scope);
            }
        }
    }

    /// `BusOp::PresenceUpdate`'s write.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn update(
        &mut self,
        now: Instant,
        scope: &StreamKey,
        node: &NodeId,
        replace: bool,
        joins: &[PresenceEntry],
        leaves: &[UserId],
        ttl: Duration,
    ) {
        self.sweep(scope, now);
        let sets = self.scopes.entry(scope.clone()).or_default();
        let set = sets.entry(node.clone()).or_default();
        if replace {
            set.users.clear();
        }
        for user in leaves {
            set.users.remove(user);
        }
        for (user, meta) in joins {
            set.users.insert(user.clone(), meta.clone());
        }
        if set.users.is_empty() {
            sets.remove(node);
            if sets.is_empty() {
                self.scopes.remove(scope);
            }
        } else {
            set.expires_at = Some(now + ttl);
        }
    }

    /// `BusOp::PresenceRefresh` for one scope: whether the node's set was there (and now lives
    /// `ttl` more).
    pub(crate) fn refresh(
        &mut self,
        now: Instant,
        scope: &StreamKey,
        node: &NodeId,
        ttl: Duration,
    ) -> bool {
        self.sweep(scope, now);
        match self.scopes.get_mut(scope).and_then(|sets| sets.get_mut(node)) {
            Some(set) => {
                set.expires_at = Some(now + ttl);
                true
            }
            None => false,
        }
    }

    /// `BusOp::PresenceRead`: every live set of the scope with its time left, at most `limit`
    /// users in all, and whether some were left out.
    pub(crate) fn read(
        &mut self,
        now: Instant,
        scope: &StreamKey,
        limit: u32,
    ) -> (Vec<PresenceHeld>, bool) {
        self.sweep(scope, now);
        let mut left = limit as usize;
        let mut truncated = false;
        let mut held = Vec::new();
        for (node, set) in self.scopes.get(scope).into_iter().flatten() {
            let take = set.users.len().min(left);
            truncated |= take < set.users.len();
            left -= take;
            let users = set.users.iter().take(take).map(|(u, m)| (u.clone(), m.clone())).collect();
            let ttl = set.expires_at.map_or(Duration::ZERO, |at| at - now);
            held.push(PresenceHeld { node: node.clone(), ttl, users });
        }
        (held, truncated)
    }

    /// The engine restarted empty.
    pub(crate) fn clear(&mut self) {
        self.scopes.clear();
    }

    /// The users some live set of the scope holds at `now`.
    pub(crate) fn members(&self, scope: &StreamKey, now: Instant) -> BTreeSet<UserId> {
        self.scopes
            .get(scope)
            .into_iter()
            .flat_map(|sets| sets.values())
            .filter(|set| set.live(now))
            .flat_map(|set| set.users.keys().cloned())
            .collect()
    }

    /// The nodes with a live set in the scope at `now`.
    pub(crate) fn nodes(&self, scope: &StreamKey, now: Instant) -> Vec<NodeId> {
        self.scopes
            .get(scope)
            .into_iter()
            .flat_map(|sets| sets.iter())
            .filter(|(_, set)| set.live(now))
            .map(|(node, _)| node.clone())
            .collect()
    }
}
