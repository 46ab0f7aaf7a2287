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
    /// Cluster mode: the other nodes' entries (a user held by a node) a node keeps per scope.
    /// Past it further entries are left out (counted as the limit
    /// [`LimitKind::PresenceRemoteEntries`](crate::LimitKind::PresenceRemoteEntries)): the
    /// scope's count is then a lower bound.
    pub max_remote_entries: u32,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        PresenceConfig {
            tenant: true,
            rooms: true,
            grace: Duration::from_secs(5),
            flush_interval: Duration::from_millis(250),
            max_members: 1_000,
            max_remote_entries: 10_000,
        }
    }
}

/// A scope of a tenant.
pub(crate) type ScopeKey = (TenantId, PresenceScope);

/// One user in one scope.
#[derive(Debug)]
struct Member {
    /// Its connections in the scope (on this node).
    conns: u32,
    /// What the scope's members are shown beside its id (from its first connection's principal,
    /// or the node that holds it).
    meta: Option<Arc<str>>,
    /// Armed while the user has no connection but is still present.
    grace: Option<TimerId>,
    /// Cluster mode: how many other nodes hold the user in the scope.
    remote: u32,
    /// Whether the last flush told the scope's members this user is present.
    announced: bool,
    /// Cluster mode: whether the last flush told the bus this node holds the user.
    published: bool,
    /// Listed in its scope's `changed` since the last flush.
    changed: bool,
}

impl Member {
    /// This node holds the user: a connection, or its grace.
    fn held(&self) -> bool {
        self.conns > 0 || self.grace.is_some()
    }

    /// Some node holds it.
    fn present(&self) -> bool {
        self.held() || self.remote > 0
    }
}

#[derive(Debug, Default)]
struct Scope {
    members: HashMap<UserId, Member>,
    /// Users whose presence changed since the last flush (a flush looks at these only).
    changed: Vec<UserId>,
    /// Users present.
    present: u32,
    /// This node's connections in the scope.
    local: u32,
    /// Above `max_members`: no diffs.
    large: bool,
}

/// One user as a snapshot shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PresentUser {
    /// The user.
    pub user: UserId,
    /// Its connections in the scope on this node (0 while in its grace, or when only other
    /// nodes hold it).
    pub conns: u32,
    /// Its metadata (JSON text), if its principal carried any.
    pub meta: Option<Arc<str>>,
    /// Cluster mode: how many other nodes hold it in the scope (0 on a single node).
    pub nodes: u32,
}

/// A scope's batch of changes since the last flush: for its members (who is present), or for
/// the bus (whom this node holds).
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
    /// Cluster mode: a flush also says what to tell the bus.
    clustered: bool,
}

impl Presence {
    pub(crate) fn new(clustered: bool) -> Self {
        Self {
            scopes: HashMap::new(),
            timers: TimerQueue::new(),
            dirty: BTreeSet::new(),
            flush_at: None,
            crossings: Vec::new(),
            clustered,
        }
    }

    /// This node's connections in a scope.
    pub(crate) fn local_conns(&self, key: &ScopeKey) -> u32 {
        self.scopes.get(key).map_or(0, |s| s.local)
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
            // Everyone gets a snapshot of the truth: it is what was announced from now on. (The
            // change list stays: the next flush still tells the bus, and drops who is gone.)
            for m in scope.members.values_mut() {
                m.announced = m.present();
            }
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
            remote: 0,
            announced: false,
            published: false,
            changed: false,
        });
        let joined = !member.present();
        let was_held = member.held();
        member.conns += 1;
        scope.local += 1;
        if let Some(timer) = member.grace.take() {
            // Back within the grace: nobody saw it leave.
            self.timers.cancel(timer);
        }
        if joined {
            member.meta = meta.cloned();
            scope.present += 1;
        }
        if !was_held {
            // A join here, or (held elsewhere too) news for the bus only.
            self.touch(now, key, user, cfg);
        }
        if joined {
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
        scope.local = scope.local.saturating_sub(1);
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
        let gone = !member.present();
        if gone {
            scope.present -= 1;
        }
        // Always news for the bus; a leave for the members if no other node holds it.
        self.touch(now, key, user, cfg);
        if gone {
            self.check_size(key, cfg);
        }
    }

    /// Cluster mode: `by` more (or fewer) other nodes hold `user` in the scope. A user nobody
    /// held before joins (with `meta`); one nobody holds after leaves.
    pub(crate) fn remote_shift(
        &mut self,
        now: Instant,
        key: &ScopeKey,
        user: &UserId,
        by: i32,
        meta: Option<&Arc<str>>,
        cfg: &PresenceConfig,
    ) {
        if by == 0 {
            return;
        }
        let scope = if by > 0 {
            self.scopes.entry(key.clone()).or_default()
        } else {
            let Some(scope) = self.scopes.get_mut(key) else { return };
            scope
        };
        let member = if by > 0 {
            scope.members.entry(user.clone()).or_insert_with(|| Member {
                conns: 0,
                meta: None,
                grace: None,
                remote: 0,
                announced: false,
                published: false,
                changed: false,
            })
        } else {
            let Some(member) = scope.members.get_mut(user) else { return };
            member
        };
        let was = member.present();
        member.remote = member.remote.saturating_add_signed(by);
        let is = member.present();
        if is && !was {
            member.meta = meta.cloned();
            scope.present += 1;
        } else if was && !is {
            scope.present -= 1;
        }
        if is != was {
            self.touch(now, key, user, cfg);
            self.check_size(key, cfg);
        }
    }

    /// Cluster mode: the scope's first snapshots go out now, each showing everyone present:
    /// from now on that is what the scope's members were told.
    pub(crate) fn settle(&mut self, key: &ScopeKey) {
        if let Some(scope) = self.scopes.get_mut(key) {
            for m in scope.members.values_mut() {
                m.announced = m.present();
            }
        }
    }

    /// Cluster mode: the users this node told the bus it holds in the scope, sorted.
    pub(crate) fn published(&self, key: &ScopeKey) -> Vec<(UserId, Option<Arc<str>>)> {
        let Some(scope) = self.scopes.get(key) else { return Vec::new() };
        let mut users: Vec<(UserId, Option<Arc<str>>)> = scope
            .members
            .iter()
            .filter(|(_, m)| m.published)
            .map(|(u, m)| (u.clone(), m.meta.clone()))
            .collect();
        users.sort_by(|a, b| a.0.cmp(&b.0));
        users
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

    /// If the flush is due: every dirty scope's net changes since the last flush, for its
    /// members (scopes above the limit send none) and, in cluster mode, for the bus (whom this
    /// node holds); what was announced and published is updated.
    pub(crate) fn flush(&mut self, now: Instant) -> (Vec<Diff>, Vec<Diff>) {
        if self.flush_at.is_none_or(|at| at > now) {
            return (Vec::new(), Vec::new());
        }
        self.flush_at = None;
        let mut diffs = Vec::new();
        let mut bus = Vec::new();
        for key in std::mem::take(&mut self.dirty) {
            let Some(scope) = self.scopes.get_mut(&key) else { continue };
            let mut diff = Diff { scope: key.clone(), joins: Vec::new(), leaves: Vec::new() };
            let mut told = Diff { scope: key.clone(), joins: Vec::new(), leaves: Vec::new() };
            for user in std::mem::take(&mut scope.changed) {
                let Some(m) = scope.members.get_mut(&user) else { continue };
                m.changed = false;
                match (m.present(), m.announced) {
                    (true, false) => diff.joins.push((user.clone(), m.meta.clone())),
                    (false, true) => diff.leaves.push(user.clone()),
                    _ => {}
                }
                m.announced = m.present();
                if self.clustered {
                    match (m.held(), m.published) {
                        (true, false) => told.joins.push((user.clone(), m.meta.clone())),
                        (false, true) => told.leaves.push(user.clone()),
                        _ => {}
                    }
                    m.published = m.held();
                }
                if !m.present() {
                    scope.members.remove(&user);
                }
            }
            if !told.joins.is_empty() || !told.leaves.is_empty() {
                told.joins.sort_by(|a, b| a.0.cmp(&b.0));
                told.leaves.sort();
                bus.push(told);
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
        (diffs, bus)
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
            .map(|(u, m)| PresentUser {
                user: u.clone(),
                conns: m.conns,
                meta: m.meta.clone(),
                nodes: m.remote,
            })
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
            let local: u32 = scope.members.values().map(|m| m.conns).sum();
            if local != scope.local {
                return Err(format!("presence {key:?}: {} local conns, {local} held", scope.local));
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
                if !m.present() && !m.changed {
                    return Err(format!(
                        "presence {key:?}: {user} is neither present nor waiting for a flush"
                    ));
                }
                let told = if self.clustered { m.held() } else { false };
                if m.published != told && !m.changed {
                    return Err(format!("presence {key:?}: {user}'s published flag disagrees"));
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

    /// For the invariant checker, in cluster mode: per scope, how many other nodes hold each
    /// user (as counted here), and whom this node told the bus it holds.
    #[cfg(any(test, feature = "fuzzing", fuzzing))]
    #[allow(clippy::type_complexity)]
    pub(crate) fn cluster_counts(
        &self,
    ) -> (HashMap<ScopeKey, HashMap<UserId, u32>>, HashMap<ScopeKey, Vec<UserId>>) {
        let mut remote: HashMap<ScopeKey, HashMap<UserId, u32>> = HashMap::new();
        let mut published: HashMap<ScopeKey, Vec<UserId>> = HashMap::new();
        for (key, scope) in &self.scopes {
            for (user, m) in &scope.members {
                if m.remote > 0 {
                    remote.entry(key.clone()).or_default().insert(user.clone(), m.remote);
                }
                if m.published {
                    published.entry(key.clone()).or_default().push(user.clone());
                }
            }
        }
        (remote, published)
    }

    /// Whether the scope is above the limit.
    pub(crate) fn is_large(&self, key: &ScopeKey) -> bool {
        self.scopes.get(key).is_some_and(|s| s.large)
    }
}
