//! Cluster mode: setting a connection up (its lease in the user's cluster-wide quota, its
//! streams' true positions, then `connected` and `joined`), and the quota's eviction signal.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use crate::cluster::{BusFailure, BusOp, BusReply, Node, Pending, StreamKey, StreamScope};
use crate::hub::Hub;
use crate::ids::{ConnId, RoomId, StreamName, StreamPos, TenantId, UserId};
use crate::kinds::{AuditKind, CloseReason, ClosedBy};
use crate::stream::TrimKey;

impl Hub {
    /// Whether a connection can be set up now: always on a single node; in cluster mode only
    /// while the bus is up (its lease in the user's cluster-wide quota must be taken).
    pub(crate) fn streams_servable(&self) -> bool {
        self.node.as_deref().is_none_or(Node::is_up)
    }

    /// Whether the user's and the tenant's streams have known positions (always, on a single
    /// node).
    pub(crate) fn streams_ready_for(&self, tenant: &TenantId, user: &UserId) -> bool {
        let Some(node) = self.node.as_deref() else { return true };
        let ready = |key: &StreamKey| node.streams.get(key).is_some_and(|t| t.seq.top().is_some());
        ready(&StreamKey::tenant(tenant.clone()))
            && ready(&StreamKey::user(tenant.clone(), user.clone()))
    }

    /// Whether a stream has a known position (always, on a single node).
    pub(crate) fn stream_confirmed(&self, key: &StreamKey) -> bool {
        let Some(node) = self.node.as_deref() else { return true };
        node.streams.get(key).is_some_and(|t| t.seq.top().is_some())
    }

    /// A stream's position became known: connections that waited for it get `connected` (when
    /// their other stream is known too), and room members get `joined`.
    pub(super) fn stream_ready(&mut self, now: Instant, key: &StreamKey) {
        match &key.scope {
            StreamScope::Room(room) => {
                let members: Vec<u32> = self
                    .tenants
                    .get(&key.tenant)
                    .and_then(|t| t.rooms.get(room))
                    .map(|r| r.members.iter().map(|m| m.conn).collect())
                    .unwrap_or_default();
                for idx in members {
                    if self.conns.contains(idx) && !self.conns.get(idx).is_awaiting() {
                        self.announce_room(now, idx, room);
                    }
                }
            }
            StreamScope::User(_) | StreamScope::Tenant => {
                for idx in self.waiting_on(key) {
                    if !self.conns.contains(idx) {
                        continue;
                    }
                    let (tenant, user) = self.owner(idx);
                    let id = self.conns.id_of(idx);
                    if self.streams_ready_for(&tenant, &user) && !self.lease_pending(id) {
                        self.go_ready(now, idx);
                    }
                }
            }
        }
    }

    /// An awaiting connection's streams are known: live from their positions now, `connected`,
    /// then `joined` for the rooms whose streams are known.
    fn go_ready(&mut self, now: Instant, idx: u32) {
        let c = self.conns.get(idx);
        let user = self.users.get(c.user());
        let tenant = self.tenants.get(&user.tenant).expect("connection's tenant exists");
        let (user_base, tenant_base) = (user.stream.position().seq, tenant.stream.position().seq);
        let held = !self.cfg.resume_window.is_zero();
        self.conns.get_mut(idx).streams_ready(user_base, tenant_base, held);
        self.conns.rearm_if_earlier(idx, &self.cfg);
        self.send_connected(now, idx);
        let rooms: Vec<RoomId> =
            self.conns.get(idx).memberships().iter().map(|m| m.room().clone()).collect();
        for room in rooms {
            if !self.conns.contains(idx) {
                return;
            }
            self.announce_room(now, idx, &room);
        }
        let id = self.conns.id_of(idx);
        if let Some(positions) = self.early_resumes.remove(&id) {
            if self.conns.contains(idx) {
                let positions: Vec<(Cow<'_, str>, StreamPos)> =
                    positions.iter().map(|(n, p)| (Cow::Borrowed(n.as_str()), *p)).collect();
                let _still_open = self.resume_clustered(now, idx, &positions);
            }
        }
    }

    /// Tells a member the room's position (`joined`), once the room's stream is known.
    pub(crate) fn announce_room(&mut self, now: Instant, idx: u32, room: &RoomId) {
        let key = StreamKey::room(self.owner(idx).0, room.clone());
        if !self.stream_confirmed(&key) {
            return;
        }
        let tenant = self.tenants.get(&key.tenant).expect("connection's tenant exists");
        let Some(r) = tenant.rooms.get(room) else { return };
        let pos = r.stream.position();
        if self.conns.get_mut(idx).announce(room, pos.seq) {
            // Only now is the room's epoch known: what the connection was sent there before it
            // left counts again if the stream is the same one. If it was sent more of this epoch
            // than the log now holds, the log lost its tail while this node was not following
            // the stream: its seqs would be handed out again, so the stream moves to a new epoch
            // (the members get `resync`), as when a following node sees the top go back.
            // Until the new epoch comes, the old one's messages up to what it was sent are
            // taken as already delivered: they reuse its seqs.
            if let Some(sent) = self.rejoined(idx, &key.tenant, room, pos) {
                self.rotate_past(now, &key, StreamPos { epoch: pos.epoch, seq: sent });
            }
            let frame = self.flow.writer.joined(&StreamName::Room(room.clone()), pos);
            self.control_or_close(now, idx, &frame);
            if self.conns.contains(idx) {
                self.presence_joined(now, idx, room.clone());
            }
        }
        // A resume that waited for the connection's rooms goes on once the last is set up.
        let id = self.conns.id_of(idx);
        let ready = self.conns.contains(idx)
            && !self.conns.get(idx).is_awaiting()
            && self.conns.get(idx).memberships().iter().all(|m| m.is_announced());
        if ready {
            if let Some(positions) = self.early_resumes.remove(&id) {
                let positions: Vec<(Cow<'_, str>, StreamPos)> =
                    positions.iter().map(|(n, p)| (Cow::Borrowed(n.as_str()), *p)).collect();
                let _still_open = self.resume_clustered(now, idx, &positions);
            }
        }
    }

    /// The connections waiting for a stream: awaiting connections of its user or tenant, or
    /// members not yet told a room's position.
    pub(crate) fn waiting_on(&self, key: &StreamKey) -> Vec<u32> {
        let Some(holder) = self.holder(key) else { return Vec::new() };
        let mut out = self.recipients(&holder);
        match &key.scope {
            StreamScope::Room(room) => out.retain(|&idx| {
                self.conns
                    .get(idx)
                    .memberships()
                    .iter()
                    .any(|m| m.room() == room && !m.is_announced())
            }),
            _ => out.retain(|&idx| self.conns.get(idx).is_awaiting()),
        }
        out
    }

    /// The connections on a stream's local holder (its user's, its room's members, its tenant's).
    pub(crate) fn recipients(&self, holder: &TrimKey) -> Vec<u32> {
        match holder {
            TrimKey::User(uidx) => self.users.get(*uidx).conns.clone(),
            TrimKey::Room(t, r) => self
                .tenants
                .get(t)
                .and_then(|t| t.rooms.get(r))
                .map(|r| r.members.iter().map(|m| m.conn).collect())
                .unwrap_or_default(),
            TrimKey::Tenant(t) => self.tenants.get(t).map(|t| t.conns.clone()).unwrap_or_default(),
        }
    }

    /// The stream started over: nothing was sent on it to any of its connections yet, or, if it
    /// went back to an epoch it had left ([`Hub::restart_stream`]), nothing after `start` (a
    /// room member counts as sent up to it, so that a re-join finds that epoch's log below what
    /// it may have been sent there, [`Hub::rotate_past`]).
    pub(super) fn reset_positions(&mut self, key: &StreamKey, start: u64) {
        let Some(holder) = self.holder(key) else { return };
        let name = key.name();
        for idx in self.recipients(&holder) {
            self.conns.get_mut(idx).restart_stream(&name);
        }
        // A room's marks are on its member entries.
        if let TrimKey::Room(t, r) = &holder
            && let Some(room) = self.tenants.get_mut(t).and_then(|t| t.rooms.get_mut(r))
        {
            for m in &mut room.members {
                m.sent = start;
            }
        }
    }
}

impl Hub {
    /// Cluster mode: the connection takes its place in its user's cluster-wide quota; its
    /// `connected` frame waits for the answer.
    pub(crate) fn take_lease(&mut self, now: Instant, idx: u32) {
        let id = self.conns.id_of(idx);
        let (tenant, user) = self.owner(idx);
        let tier = self.conns.get(idx).tier();
        let limit = self.cfg.tiers.get(tier).max_connections_per_user;
        let evict_oldest =
            self.cfg.user_limit_policy == crate::config::UserLimitPolicy::EvictOldest;
        let ttl = self.node.as_deref().expect("clustered").cfg.lease_ttl;
        let holder = self.holder_of(id);
        let user = StreamKey::user(tenant, user);
        let pending = Pending::Lease { conn: id, user: user.clone() };
        let issued = self.issue(now, pending, |op| BusOp::Lease {
            op,
            user,
            holder,
            limit,
            ttl,
            evict_oldest,
        });
        match issued {
            Ok(_) => {
                self.node().expect("clustered").leasing.insert(id);
            }
            Err(_) => self.close_conn(now, idx, ClosedBy::Hub(CloseReason::Unavailable)),
        }
    }

    /// This node's name for a connection's lease.
    fn holder_of(&self, id: ConnId) -> crate::cluster::LeaseHolder {
        let node = self.node.as_deref().expect("clustered").cfg.node.clone();
        crate::cluster::LeaseHolder { node, conn: id.to_u64() }
    }

    /// Whether the connection still waits for its lease.
    pub(crate) fn lease_pending(&self, id: ConnId) -> bool {
        self.node.as_deref().is_some_and(|n| n.leasing.contains(&id))
    }

    /// A lease's answer: the connection goes on (and an evicted one elsewhere is told to close),
    /// or it is closed: over the quota ([`CloseReason::UserLimit`]) or unknowable
    /// ([`CloseReason::Unavailable`]).
    pub(super) fn leased(
        &mut self,
        now: Instant,
        id: ConnId,
        key: StreamKey,
        reply: Result<BusReply, BusFailure>,
    ) {
        let node = self.node().expect("clustered");
        node.leasing.remove(&id);
        let Some(idx) = self.live(now, id) else {
            // Closed while it waited: give the lease back if it was taken.
            if let Ok(BusReply::Leased { granted: true, .. }) = reply {
                let holder = self.holder_of(id);
                self.out.bus(BusOp::Release { user: key, holder });
            }
            return;
        };
        let (tenant, user) = self.owner(idx);
        match reply {
            Ok(BusReply::Leased { granted: true, evicted }) => {
                let node = self.node().expect("clustered");
                node.renew.arm(now);
                if let Some(holder) = evicted {
                    self.evict(now, &tenant, &user, holder);
                }
                if self.conns.contains(idx)
                    && self.conns.get(idx).is_awaiting()
                    && self.streams_ready_for(&tenant, &user)
                {
                    self.go_ready(now, idx);
                }
            }
            Ok(BusReply::Leased { granted: false, .. }) => {
                let kind = crate::kinds::LimitKind::UserConnections;
                self.limit_conn(kind, AuditKind::LimitHit(kind), idx);
                self.close_conn(now, idx, ClosedBy::Hub(CloseReason::UserLimit));
            }
            _ => self.close_conn(now, idx, ClosedBy::Hub(CloseReason::Unavailable)),
        }
    }

    /// The quota evicted `holder` (the user's oldest connection) for a new one: close it here,
    /// or tell its node through the user's channel.
    fn evict(
        &mut self,
        now: Instant,
        tenant: &TenantId,
        user: &UserId,
        holder: crate::cluster::LeaseHolder,
    ) {
        let me = self.node.as_deref().expect("clustered").cfg.node.clone();
        if holder.node == me {
            self.evict_local(now, tenant, user, holder.conn);
            return;
        }
        let payload = format!("evict\n{}\n{}", holder.node, holder.conn);
        let stream = StreamKey::user(tenant.clone(), user.clone());
        self.out.bus(BusOp::Signal { stream, payload: Arc::from(payload) });
    }

    /// Closes this node's connection `conn` of `(tenant, user)` with `Replaced`, if open.
    fn evict_local(&mut self, now: Instant, tenant: &TenantId, user: &UserId, conn: u64) {
        #[allow(clippy::cast_possible_truncation)]
        let id = ConnId::new(conn as u32, (conn >> 32) as u32);
        let Some(idx) = self.live(now, id) else { return };
        let (t, u) = self.owner(idx);
        // Only ever a connection of the user the signal is about.
        if &t != tenant || &u != user {
            self.out.audit(AuditKind::BusMismatch, Some(id), Some(tenant), Some(user));
            return;
        }
        let kind = crate::kinds::LimitKind::UserConnectionsEvicted;
        self.limit_conn(kind, AuditKind::LimitHit(kind), idx);
        self.close_conn(now, idx, ClosedBy::Hub(CloseReason::Replaced));
    }

    /// Cluster mode: an unsequenced signal arrived on a stream's channel: "close the user's
    /// connection X on node N" (sent when the cluster-wide quota evicted it), "kick the user"
    /// (sent by [`Hub::kick_user`](crate::Hub::kick_user)), or a node's presence changes in the
    /// scope the channel belongs to. Checked against the stream it came on; anything else is
    /// ignored and counted.
    pub fn bus_signal(&mut self, now: Instant, stream: &StreamKey, payload: &str) {
        let now = self.clock(now);
        if self.node.is_none() || self.kick_signal(now, stream, payload) {
            return;
        }
        if crate::cluster::presence::Signal::is_presence(payload) {
            self.presence_signal(now, stream, payload);
            return;
        }
        let Some(node) = self.node.as_deref_mut() else { return };
        let mut parts = payload.split('\n');
        let (Some("evict"), Some(target), Some(conn), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            node.counters.mismatches += 1;
            return;
        };
        let StreamScope::User(user) = &stream.scope else {
            node.counters.mismatches += 1;
            return;
        };
        let Ok(conn) = conn.parse::<u64>() else {
            node.counters.mismatches += 1;
            return;
        };
        if target != node.cfg.node.as_str() {
            return;
        }
        let (tenant, user) = (stream.tenant.clone(), user.clone());
        self.evict_local(now, &tenant, &user, conn);
    }

    /// Gives a closed connection's lease back.
    pub(crate) fn release_lease(&mut self, idx: u32) {
        if self.node.is_none() {
            return;
        }
        let id = self.conns.id_of(idx);
        if self.lease_pending(id) {
            // Its answer releases it if it was granted.
            return;
        }
        let (tenant, user) = self.owner(idx);
        let holder = self.holder_of(id);
        self.out.bus(BusOp::Release { user: StreamKey::user(tenant, user), holder });
    }

    /// The slot of an open connection, without auditing a stale id (the bus's own references).
    fn live(&self, now: Instant, id: ConnId) -> Option<u32> {
        match self.conns.lookup(id, now, std::time::Duration::ZERO) {
            crate::connection::Lookup::Live(idx) => Some(idx),
            _ => None,
        }
    }

    /// Renews the leases of the users in these slots (all of them: `None`), in batches.
    pub(super) fn renew_leases(&mut self, now: Instant, slots: Option<std::ops::Range<usize>>) {
        let ttl = self.node.as_deref().expect("clustered").cfg.lease_ttl;
        let mut leases: Vec<(StreamKey, crate::cluster::LeaseHolder, u32)> = Vec::new();
        let slab = &self.users.slab;
        let users: Box<dyn Iterator<Item = &crate::user::UserState>> = match slots {
            Some(slots) => Box::new(slots.filter_map(|s| slab.get(s))),
            None => Box::new(self.users.iter().map(|(_, state)| state)),
        };
        for state in users {
            for &idx in &state.conns {
                let id = self.conns.id_of(idx);
                if self.lease_pending(id) {
                    continue;
                }
                let key = StreamKey::user(state.tenant.clone(), state.user.clone());
                let tier = self.conns.get(idx).tier();
                let limit = self.cfg.tiers.get(tier).max_connections_per_user;
                leases.push((key, self.holder_of(id), limit));
            }
        }
        // Sorted: the users' slab order is an accident of their slots.
        leases.sort_unstable();
        for batch in leases.chunks(512) {
            let leases = batch.to_vec();
            if self.issue(now, Pending::Renew, |op| BusOp::Renew { op, leases, ttl }).is_err() {
                break;
            }
        }
    }
}

impl Hub {
    /// A renewal's answer: connections whose lease could not be added back (the engine lost it
    /// and the user's quota filled meanwhile) are over the quota and close with
    /// [`CloseReason::UserLimit`].
    pub(super) fn renewed(&mut self, now: Instant, reply: Result<BusReply, BusFailure>) {
        let Ok(BusReply::Renewed { refused }) = reply else { return };
        let me = self.node.as_deref().expect("clustered").cfg.node.clone();
        for holder in refused.into_iter().filter(|h| h.node == me) {
            #[allow(clippy::cast_possible_truncation)]
            let id = ConnId::new(holder.conn as u32, (holder.conn >> 32) as u32);
            let Some(idx) = self.live(now, id) else { continue };
            let kind = crate::kinds::LimitKind::UserConnections;
            self.limit_conn(kind, AuditKind::LimitHit(kind), idx);
            self.close_conn(now, idx, ClosedBy::Hub(CloseReason::UserLimit));
        }
    }
}
