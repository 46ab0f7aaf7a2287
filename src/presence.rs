//! Presence: who is online in a tenant and in each of its rooms, at user granularity (DESIGN §12).
//! Pure bookkeeping: the hub says which connections arrive in and depart from a scope, and sends
//! what [`Presence::flush`] and [`Presence::snapshot`] return.
//!
//! A user is **present** in a scope while it has a connection there, and for
//! [`PresenceConfig::grace`] after its last one left: a reconnect or a deploy within the grace
//! changes nothing anyone sees. What a scope's members were last told is kept per user
//! (`announced`), so that a batch ([`Presence::flush`]) sends each user's net change once: a user
//! who joins and leaves between two flushes is never announced at all.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hashbrown::HashMap;

use crate::ids::{RoomId, TenantId, UserId};
use crate::timer::{TimerId, TimerQueue};

/// The most bytes a [`PresenceMeta`] may take as JSON text.
pub const MAX_META_BYTES: usize = 1024;

/// What a presence scope's members see beside a user's id (a display name, an avatar): a JSON
/// object of at most [`MAX_META_BYTES`], set by the application from what it authenticated
/// ([`Principal::meta`](crate::Principal::meta)), never from the client. It is shown, never
/// used to route anything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PresenceMeta(pub(crate) Arc<str>);

impl PresenceMeta {
    /// Metadata from a JSON object.
    ///
    /// # Errors
    ///
    /// [`MetaError`] if `value` is not an object or is over [`MAX_META_BYTES`] as JSON.
    pub fn new(value: &serde_json::Value) -> Result<Self, MetaError> {
        if !value.is_object() {
            return Err(MetaError::NotAnObject);
        }
        let text = value.to_string();
        if text.len() > MAX_META_BYTES {
            return Err(MetaError::TooLarge { limit: MAX_META_BYTES });
        }
        Ok(Self(text.into()))
    }

    /// The JSON text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Why a [`PresenceMeta`] was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MetaError {
    /// It is not a JSON object.
    #[error("presence metadata must be a JSON object")]
    NotAnObject,
    /// It is too large.
    #[error("presence metadata is over {limit} bytes of JSON")]
    TooLarge {
        /// [`MAX_META_BYTES`].
        limit: usize,
    },
}

/// Which presence scope of a tenant.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PresenceScope {
    /// Everyone connected to the tenant.
    Tenant,
    /// The members of one room.
    Room(RoomId),
}

impl PresenceScope {
    /// The scope's name on the wire: `t` or `r:<room>` (as the stream names).
    #[must_use]
    pub fn wire_name(&self) -> String {
        match self {
            PresenceScope::Tenant => "t".to_owned(),
            PresenceScope::Room(room) => format!("r:{}", room.as_str()),
        }
    }

    /// Reads a wire name back.
    #[must_use]
    pub fn from_wire(name: &str) -> Option<Self> {
        match name {
            "t" => Some(PresenceScope::Tenant),
            _ => name.strip_prefix("r:").filter(|r| !r.is_empty()).map(|r| Self::Room(r.into())),
        }
    }
}

/// Presence settings ([`Config::presence`](crate::Config::presence)).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PresenceConfig {
    /// Presence of everyone connected to a tenant.
    pub tenant: bool,
    /// Presence of every room's members.
    pub rooms: bool,
    /// How long a user whose last connection in a scope closed still counts as present: a new
    /// connection within it (a reconnect, a deploy) is not seen as a leave and a join.
    pub grace: Duration,
    /// How often joins and leaves are sent, batched: at most one `presence_diff` per scope per
    /// interval.
    pub flush_interval: Duration,
    /// Users a scope may hold with diffs. Above it the scope's members are told it is too large
    /// (a `presence` frame without members) and get no more diffs; they can still ask for the
    /// count. Below nine tenths of it again, everyone gets a full snapshot and diffs resume.
    pub max_members: u32,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        PresenceConfig {
            tenant: true,
            rooms: true,
            grace: Duration::from_secs(5),
            flush_interval: Duration::from_millis(250),
            max_members: 1_000,
        }
    }
}

/// A scope of a tenant.
pub(crate) type ScopeKey = (TenantId, PresenceScope);

/// One user in one scope.
#[derive(Debug)]
struct Member {
    /// Its connections in the scope.
    conns: u32,
    /// What the scope's members are shown beside its id (from its first connection's principal).
    meta: Option<Arc<str>>,
    /// Armed while the user has no connection but is still present.
    grace: Option<TimerId>,
    /// Whether the last flush told the scope's members this user is present.
    announced: bool,
    /// Listed in its scope's `changed` since the last flush.
    changed: bool,
}

impl Member {
    fn present(&self) -> bool {
        self.conns > 0 || self.grace.is_some()
    }
}

#[derive(Debug, Default)]
struct Scope {
    members: HashMap<UserId, Member>,
    /// Users whose presence changed since the last flush (a flush looks at these only).
    changed: Vec<UserId>,
    /// Users present.
    present: u32,
    /// Above `max_members`: no diffs.
    large: bool,
}

/// One user as a snapshot shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PresentUser {
    /// The user.
    pub user: UserId,
    /// Its connections in the scope (0 while in its grace).
    pub conns: u32,
    /// Its metadata (JSON text), if its principal carried any.
    pub meta: Option<Arc<str>>,
}

/// A scope's batch of changes since the last flush.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Diff {
    pub(crate) scope: ScopeKey,
    pub(crate) joins: Vec<(UserId, Option<Arc<str>>)>,
    pub(crate) leaves: Vec<UserId>,
}

/// What the hub tells a scope's members when its size crosses the limit.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Crossing {
    /// Grew above `max_members`: tell them diffs stop (a count-only `presence`).
    TooLarge(ScopeKey),
    /// Fell below nine tenths of it: everyone gets a full snapshot again.
    Resumed(ScopeKey),
}

/// Every presence scope of the hub.
#[derive(Debug)]
pub(crate) struct Presence {
    scopes: HashMap<ScopeKey, Scope>,
    /// Grace deadlines.
    timers: TimerQueue<(ScopeKey, UserId)>,
    /// Scopes with changes not yet flushed.
    dirty: BTreeSet<ScopeKey>,
    /// When the next flush is due, while something is dirty.
    flush_at: Option<Instant>,
    /// Scopes that crossed the size limit since the last flush.
    crossings: Vec<Crossing>,
}

impl Presence {
    pub(crate) fn new() -> Self {
        Self {
            scopes: HashMap::new(),
            timers: TimerQueue::new(),
            dirty: BTreeSet::new(),
            flush_at: None,
            crossings: Vec::new(),
        }
    }

    /// Users present in all scopes (for the stats).
    pub(crate) fn scopes(&self) -> usize {
        self.scopes.len()
    }

    /// Notes that `user`'s presence in the scope changed, for the next flush.
    fn touch(&mut self, now: Instant, key: &ScopeKey, user: &UserId, cfg: &PresenceConfig) {
        let Some(scope) = self.scopes.get_mut(key) else { return };
        if let Some(m) = scope.members.get_mut(user).filter(|m| !m.changed) {
            m.changed = true;
            scope.changed.push(user.clone());
        }
        if !self.dirty.contains(key) {
            self.dirty.insert(key.clone());
        }
        let at = now.checked_add(cfg.flush_interval).unwrap_or(now);
        self.flush_at.get_or_insert(at);
    }

    fn check_size(&mut self, key: &ScopeKey, cfg: &PresenceConfig) {
        let Some(scope) = self.scopes.get_mut(key) else { return };
        if !scope.large && scope.present > cfg.max_members {
            scope.large = true;
            self.crossings.push(Crossing::TooLarge(key.clone()));
        } else if scope.large && u64::from(scope.present) * 10 < u64::from(cfg.max_members) * 9 {
            scope.large = false;
            // Everyone gets a snapshot of the truth: it is what was announced from now on.
            for m in scope.members.values_mut() {
                m.announced = m.present();
                m.changed = false;
            }
            scope.changed.clear();
            scope.members.retain(|_, m| m.present());
            self.crossings.push(Crossing::Resumed(key.clone()));
        }
    }

    /// A connection of `user` arrived in the scope. Returns whether the user was not present
    /// before (a join, announced at the next flush).
    pub(crate) fn arrive(
        &mut self,
        now: Instant,
        key: &ScopeKey,
        user: &UserId,
        meta: Option<&Arc<str>>,
        cfg: &PresenceConfig,
    ) -> bool {
        let scope = self.scopes.entry(key.clone()).or_default();
        let member = scope.members.entry(user.clone()).or_insert_with(|| Member {
            conns: 0,
            meta: meta.cloned(),
            grace: None,
            announced: false,
            changed: false,
        });
        let joined = !member.present();
        member.conns += 1;
        if let Some(timer) = member.grace.take() {
            // Back within the grace: nobody saw it leave.
            self.timers.cancel(timer);
        }
        if joined {
            member.meta = meta.cloned();
            scope.present += 1;
            self.touch(now, key, user, cfg);
            self.check_size(key, cfg);
        }
        joined
    }

    /// A connection of `user` left the scope. Its last one starts the grace.
    pub(crate) fn depart(
        &mut self,
        now: Instant,
        key: &ScopeKey,
        user: &UserId,
        cfg: &PresenceConfig,
    ) {
        let Some(scope) = self.scopes.get_mut(key) else { return };
        let Some(member) = scope.members.get_mut(user) else { return };
        member.conns = member.conns.saturating_sub(1);
        if member.conns > 0 {
            return;
        }
        match now.checked_add(cfg.grace).filter(|_| !cfg.grace.is_zero()) {
            Some(at) => member.grace = Some(self.timers.insert(at, (key.clone(), user.clone()))),
            None => self.absent(now, key, user, cfg),
        }
    }

    /// The user's grace ran out (or there was none): it is no longer present.
    fn absent(&mut self, now: Instant, key: &ScopeKey, user: &UserId, cfg: &PresenceConfig) {
        let Some(scope) = self.scopes.get_mut(key) else { return };
        let Some(member) = scope.members.get_mut(user) else { return };
        member.grace = None;
        scope.present -= 1;
        self.touch(now, key, user, cfg);
        self.check_size(key, cfg);
    }

    /// The next deadline: a grace running out, or the next flush.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        match (self.timers.peek(), self.flush_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Ends the graces due at `now`.
    pub(crate) fn expire(&mut self, now: Instant, cfg: &PresenceConfig) {
        while let Some((key, user)) = self.timers.pop_due(now) {
            self.absent(now, &key, &user, cfg);
        }
    }

    /// The size-limit crossings since the last call.
    pub(crate) fn take_crossings(&mut self) -> Vec<Crossing> {
        std::mem::take(&mut self.crossings)
    }

    /// If the flush is due: every dirty scope's net changes since the last flush (scopes above
    /// the limit send none), and what was announced is updated.
    pub(crate) fn flush(&mut self, now: Instant) -> Vec<Diff> {
        if self.flush_at.is_none_or(|at| at > now) {
            return Vec::new();
        }
        self.flush_at = None;
        let mut diffs = Vec::new();
        for key in std::mem::take(&mut self.dirty) {
            let Some(scope) = self.scopes.get_mut(&key) else { continue };
            let mut diff = Diff { scope: key.clone(), joins: Vec::new(), leaves: Vec::new() };
            for user in std::mem::take(&mut scope.changed) {
                let Some(m) = scope.members.get_mut(&user) else { continue };
                m.changed = false;
                match (m.present(), m.announced) {
                    (true, false) => diff.joins.push((user.clone(), m.meta.clone())),
                    (false, true) => diff.leaves.push(user.clone()),
                    _ => {}
                }
                m.announced = m.present();
                if !m.present() {
                    scope.members.remove(&user);
                }
            }
            if scope.members.is_empty() {
                self.scopes.remove(&key);
            } else if scope.large {
                continue;
            }
            if !diff.joins.is_empty() || !diff.leaves.is_empty() {
                diff.joins.sort_by(|a, b| a.0.cmp(&b.0));
                diff.leaves.sort();
                diffs.push(diff);
            }
        }
        diffs
    }

    /// Who is in a scope: the count of users present, and the users unless the scope is above
    /// the limit (or `view`). For the wire (`view` false) the users are those the last flush
    /// announced, so that a new member's snapshot and the diffs that follow it compose exactly;
    /// for the application's view (`view` true), those present now.
    pub(crate) fn snapshot(&self, key: &ScopeKey, view: bool) -> (u32, Option<Vec<PresentUser>>) {
        let Some(scope) = self.scopes.get(key) else { return (0, Some(Vec::new())) };
        if scope.large && !view {
            return (scope.present, None);
        }
        let mut users: Vec<PresentUser> = scope
            .members
            .iter()
            .filter(|(_, m)| if view { m.present() } else { m.announced })
            .map(|(u, m)| PresentUser { user: u.clone(), conns: m.conns, meta: m.meta.clone() })
            .collect();
        users.sort_by(|a, b| a.user.cmp(&b.user));
        (scope.present, Some(users))
    }

    /// Checks the bookkeeping against `expected`: for each scope, the connections each user has
    /// in it (as the hub's indexes say). Every user with connections is a present member with
    /// exactly that count; the rest of the members are in their grace or announced leaving;
    /// counts, timers and change lists agree. For the invariant checker.
    #[cfg(any(test, feature = "fuzzing", fuzzing))]
    pub(crate) fn check(
        &self,
        expected: &HashMap<ScopeKey, HashMap<UserId, u32>>,
    ) -> Result<(), String> {
        for (key, users) in expected {
            let scope = self.scopes.get(key).ok_or(format!("presence {key:?}: scope missing"))?;
            for (user, conns) in users {
                let m =
                    scope.members.get(user).ok_or(format!("presence {key:?}: {user} missing"))?;
                if m.conns != *conns || m.grace.is_some() {
                    return Err(format!(
                        "presence {key:?}: {user} has {} conns (grace {}), expected {conns}",
                        m.conns,
                        m.grace.is_some()
                    ));
                }
            }
        }
        let mut timers = 0;
        for (key, scope) in &self.scopes {
            let present = scope.members.values().filter(|m| m.present()).count() as u32;
            if present != scope.present {
                return Err(format!(
                    "presence {key:?}: count {} but {present} present",
                    scope.present
                ));
            }
            for (user, m) in &scope.members {
                let held = expected.get(key).and_then(|u| u.get(user)).copied().unwrap_or(0);
                if m.conns != held {
                    return Err(format!(
                        "presence {key:?}: {user} counted {} conns, holds {held}",
                        m.conns
                    ));
                }
                if m.changed != scope.changed.contains(user) {
                    return Err(format!("presence {key:?}: {user}'s change flag disagrees"));
                }
                if !m.present() && !m.announced {
                    return Err(format!(
                        "presence {key:?}: {user} is neither present nor announced"
                    ));
                }
                timers += usize::from(m.grace.is_some());
            }
            if !scope.changed.is_empty() && !self.dirty.contains(key) {
                return Err(format!("presence {key:?}: changes but not dirty"));
            }
        }
        if timers != self.timers.len() {
            return Err(format!("presence: {timers} graces but {} timers", self.timers.len()));
        }
        if !self.dirty.is_empty() && self.flush_at.is_none() {
            return Err("presence: dirty scopes but no flush due".into());
        }
        Ok(())
    }

    /// Whether the scope is above the limit.
    pub(crate) fn is_large(&self, key: &ScopeKey) -> bool {
        self.scopes.get(key).is_some_and(|s| s.large)
    }
}
