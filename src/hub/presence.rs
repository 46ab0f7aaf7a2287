//! Presence in the hub: which connections arrive in and leave each scope, the snapshots and the
//! batched diffs they are sent, and the application's view (DESIGN §12). The bookkeeping is
//! `crate::presence`; what cluster mode adds (the other nodes' users, this node's set on the
//! bus) is `presence_cluster.rs`.

use std::time::Instant;

use crate::action::MetricEvent;
use crate::hub::Hub;
use crate::ids::{RoomId, TenantId};
use crate::kinds::{AuditKind, LimitKind};
use crate::presence::{Crossing, PresenceScope, PresentUser, ScopeKey};

/// Who is present in a scope ([`Hub::presence`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PresenceView {
    /// Users present (with a connection in the scope, or within their grace).
    pub count: u32,
    /// Each of them, sorted by id.
    pub users: Vec<PresentUser>,
    /// Whether the scope is above `max_members` (its members get no diffs).
    pub too_large: bool,
}

/// What became of a client's `presence` request.
pub(crate) enum Requested {
    Sent,
    /// Presence is off for that kind of scope.
    Off,
    /// The connection is not in the scope.
    NotMember,
}

impl Hub {
    /// Whether presence is on for this kind of scope.
    pub(crate) fn presence_for(&self, scope: &PresenceScope) -> bool {
        self.cfg.presence.as_ref().is_some_and(|p| match scope {
            PresenceScope::Tenant => p.tenant,
            PresenceScope::Room(_) => p.rooms,
        })
    }

    /// A connection arrived in a scope: count it, and send it the scope's snapshot.
    fn presence_arrive(&mut self, now: Instant, idx: u32, scope: PresenceScope) {
        if !self.presence_for(&scope) {
            return;
        }
        let cfg = self.cfg.presence.as_ref().expect("checked");
        let user = self.users.get(self.conns.get(idx).user());
        let key = (user.tenant.clone(), scope);
        self.presence.arrive(now, &key, &user.user, user.meta.as_ref(), cfg);
        // Cluster mode: the scope's first connection here opens the view of the other nodes'
        // users; its snapshot waits for the read (or went out with the read's failure).
        let handled = self.presence.local_conns(&key) == 1 && self.presence_view_open(now, &key);
        // A crossing already sent every member of the scope (this one too) a snapshot.
        let crossed = self.presence_crossings(now).contains(&key);
        if !handled && !crossed && !self.remote.holding(&key) {
            self.send_presence(now, idx, &key);
        }
    }

    /// A connection left a scope.
    fn presence_depart(&mut self, now: Instant, idx: u32, scope: PresenceScope) {
        if !self.presence_for(&scope) {
            return;
        }
        let cfg = self.cfg.presence.as_ref().expect("checked");
        let user = self.users.get(self.conns.get(idx).user());
        let key = (user.tenant.clone(), scope);
        self.presence.depart(now, &key, &user.user, cfg);
        if self.presence.local_conns(&key) == 0 {
            self.presence_view_close(now, &key);
        }
        self.presence_crossings(now);
    }

    /// After `connected`: the connection is in its tenant's scope.
    pub(crate) fn presence_connected(&mut self, now: Instant, idx: u32) {
        self.presence_arrive(now, idx, PresenceScope::Tenant);
    }

    /// After `joined`: the connection is in the room's scope.
    pub(crate) fn presence_joined(&mut self, now: Instant, idx: u32, room: RoomId) {
        self.presence_arrive(now, idx, PresenceScope::Room(room));
    }

    /// The connection left a room (counted only if it arrived there: cluster mode announces a
    /// membership once the room's stream is set up).
    pub(crate) fn presence_left(&mut self, now: Instant, idx: u32, room: RoomId) {
        let arrived =
            self.conns.get(idx).memberships().iter().any(|m| *m.room() == room && m.is_announced());
        if arrived {
            self.presence_depart(now, idx, PresenceScope::Room(room));
        }
    }

    /// The connection is closing: it leaves its tenant and every room it is in (those it
    /// arrived in: cluster mode's connections arrive once set up).
    pub(crate) fn presence_closed(&mut self, now: Instant, idx: u32) {
        if self.cfg.presence.is_none() {
            return;
        }
        let rooms: Vec<RoomId> =
            self.conns.get(idx).memberships().iter().map(|m| m.room().clone()).collect();
        for room in rooms {
            self.presence_left(now, idx, room);
        }
        if !self.conns.get(idx).is_awaiting() {
            self.presence_depart(now, idx, PresenceScope::Tenant);
        }
    }

    /// Graces that ran out, and the batch of joins and leaves when it is due.
    pub(crate) fn presence_tick(&mut self, now: Instant) {
        let Some(cfg) = self.cfg.presence.as_ref() else { return };
        self.presence.expire(now, cfg);
        self.presence_remote_tick(now);
        self.presence_crossings(now);
        let (diffs, bus) = self.presence.flush(now);
        for diff in bus {
            self.presence_publish(now, diff);
        }
        for diff in diffs {
            if self.remote.holding(&diff.scope) {
                // Its members get a snapshot of what this flush announced when the read is in.
                continue;
            }
            let frame = self.flow.writer.presence_diff(
                &diff.scope.1.wire_name(),
                &diff.joins,
                &diff.leaves,
            );
            for idx in self.scope_conns(&diff.scope) {
                if self.conns.contains(idx) {
                    self.out.stats.presence_diffs_sent += 1;
                    self.control_or_close(now, idx, &frame);
                }
            }
        }
    }

    /// Scopes that crossed the size limit: their members are told (a count-only snapshot when
    /// diffs stop, a full one when they resume), unless the scope's first snapshots still wait
    /// for its read. Returns those scopes.
    pub(crate) fn presence_crossings(&mut self, now: Instant) -> Vec<ScopeKey> {
        let mut told = Vec::new();
        for crossing in self.presence.take_crossings() {
            let key = match crossing {
                Crossing::TooLarge(key) => {
                    let kind = LimitKind::PresenceScopeSize;
                    self.out.stats.limit_rejections.bump(kind);
                    self.out.push_metric(MetricEvent::LimitRejected { limit: kind });
                    self.out.audit(AuditKind::LimitHit(kind), None, Some(&key.0), None);
                    key
                }
                Crossing::Resumed(key) => key,
            };
            if self.remote.holding(&key) {
                told.push(key);
                continue;
            }
            for idx in self.scope_conns(&key) {
                if self.conns.contains(idx) {
                    self.send_presence(now, idx, &key);
                }
            }
            told.push(key);
        }
        told
    }

    /// The scope's snapshot, to one connection.
    pub(crate) fn send_presence(&mut self, now: Instant, idx: u32, key: &ScopeKey) {
        let (count, users) = self.presence.snapshot(key, false);
        let frame = self.flow.writer.presence(&key.1.wire_name(), count, users.as_deref());
        self.out.stats.presence_snapshots_sent += 1;
        self.control_or_close(now, idx, &frame);
    }

    /// The connections of a scope that have been told `connected` (tenant) or `joined` (room).
    pub(crate) fn scope_conns(&self, key: &ScopeKey) -> Vec<u32> {
        let Some(tenant) = self.tenants.get(&key.0) else { return Vec::new() };
        let mut conns: Vec<u32> = match &key.1 {
            PresenceScope::Tenant => tenant.conns.clone(),
            PresenceScope::Room(room) => {
                { tenant.rooms.get(room).map(|r| r.members.iter().map(|m| m.conn).collect()) }
                    .unwrap_or_default()
            }
        };
        if self.node.is_some() {
            // Cluster mode: a connection arrives in a scope once it is set up.
            conns.retain(|&idx| {
                let c = self.conns.get(idx);
                !c.is_awaiting()
                    && match &key.1 {
                        PresenceScope::Tenant => true,
                        PresenceScope::Room(room) => {
                            c.memberships().iter().any(|m| m.room() == room && m.is_announced())
                        }
                    }
            });
        }
        conns
    }

    /// A client asked for a scope's snapshot (`{"type":"presence","scope":"r:lobby"}`).
    pub(crate) fn presence_requested(&mut self, now: Instant, idx: u32, scope: &str) -> Requested {
        let Some(scope) = PresenceScope::from_wire(scope) else { return Requested::NotMember };
        if !self.presence_for(&scope) {
            return Requested::Off;
        }
        let member = match &scope {
            PresenceScope::Tenant => true,
            PresenceScope::Room(room) => self.conns.get(idx).in_room(room.as_str()),
        };
        if !member {
            return Requested::NotMember;
        }
        let key = (self.owner(idx).0, scope);
        self.send_presence(now, idx, &key);
        Requested::Sent
    }

    /// Who is present in a tenant's scope, or `None` when presence is off for it. A scope
    /// without anyone present has a count of 0.
    ///
    /// In cluster mode this is the cluster-wide picture of a scope this node has connections
    /// in (its own users and those the other nodes hold, [`PresentUser::nodes`]); of a scope it
    /// has no connection in, it knows only the users still in their grace here.
    #[must_use]
    pub fn presence(&self, tenant: &TenantId, scope: &PresenceScope) -> Option<PresenceView> {
        if !self.presence_for(scope) {
            return None;
        }
        let key = (tenant.clone(), scope.clone());
        let (count, users) = self.presence.snapshot(&key, true);
        let too_large = self.presence.is_large(&key);
        Some(PresenceView { count, users: users.unwrap_or_default(), too_large })
    }
}
