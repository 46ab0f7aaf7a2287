//! Lookups and listings for operators (an admin API) and transports: connections by the id their
//! client was told, a tenant's users, connections and rooms a page at a time, and a kick that
//! reaches the user's connections on every node. Reads only, but for the kick.

use std::time::Instant;

use crate::cluster::{BusOp, StreamKey};
use crate::hub::Hub;
use crate::ids::{ConnId, RoomId, StreamPos, TenantId, UserId};
use crate::kinds::CloseReason;
use crate::view::{ConnView, UserView};

/// One room of a tenant, as of now ([`Hub::tenant_rooms`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RoomInfo {
    /// The room.
    pub room: RoomId,
    /// Its members (connections) on this node.
    pub members: usize,
    /// The position of its stream's last message.
    pub position: StreamPos,
    /// Whether it has no members and is kept for `room_retention`.
    pub idle: bool,
}

/// The payload of the bus signal that closes a user's connections on every node.
const KICK_SIGNAL: &str = "kick";

impl Hub {
    /// The open connection whose id reads `wire` (as its `connected` frame's `conn_id` and
    /// [`ConnId`]'s `Display` spell it, `<index>v<generation>`); `None` for text that names no
    /// open connection (malformed, closed, or a reused slot's older generation). A lookup, not a
    /// constructor: it never yields an id the hub did not mint for a live connection.
    #[must_use]
    pub fn find_connection(&self, wire: &str) -> Option<ConnId> {
        let (index, generation) = parse_wire(wire)?;
        if !self.conns.contains(index) {
            return None;
        }
        let id = self.conns.id_of(index);
        (id.generation == generation).then_some(id)
    }

    /// Up to `limit` users of `tenant` (active and detached) whose id sorts after `after`, in id
    /// order: a page of a listing, the last id being the next page's `after`. Costs a pass over
    /// every user state the hub holds (an operator's request, not a hot path).
    #[must_use]
    pub fn tenant_users(
        &self,
        tenant: &TenantId,
        after: Option<&str>,
        limit: usize,
    ) -> Vec<UserView<'_>> {
        let mut ids: Vec<&UserId> = self
            .users
            .slab
            .iter()
            .map(|(_, u)| u)
            .filter(|u| &u.tenant == tenant && after.is_none_or(|a| u.user.as_str() > a))
            .map(|u| &u.user)
            .collect();
        ids.sort_unstable();
        ids.truncate(limit);
        ids.into_iter().filter_map(|u| self.user(tenant.as_str(), u.as_str())).collect()
    }

    /// Up to `limit` open connections of `tenant` whose id sorts after `after` (a connection id
    /// as its client was told it; it may have closed since), in id order. `None` when `after` is
    /// not such an id. Costs a pass over the tenant's connections.
    #[must_use]
    pub fn tenant_connections(
        &self,
        tenant: &TenantId,
        after: Option<&str>,
        limit: usize,
    ) -> Option<Vec<ConnView<'_>>> {
        let after = match after {
            None => None,
            Some(wire) => Some(parse_wire(wire).map(|(i, g)| ConnId::new(i, g))?),
        };
        let Some(t) = self.tenants.get(tenant) else { return Some(Vec::new()) };
        let mut ids: Vec<ConnId> = t
            .conns
            .iter()
            .map(|&idx| self.conns.id_of(idx))
            .filter(|id| after.is_none_or(|a| *id > a))
            .collect();
        ids.sort_unstable();
        ids.truncate(limit);
        Some(ids.into_iter().filter_map(|id| self.connection(id)).collect())
    }

    /// Up to `limit` rooms of `tenant` (with members, or idle) whose id sorts after `after`, in
    /// id order. Costs a pass over the tenant's rooms.
    #[must_use]
    pub fn tenant_rooms(
        &self,
        tenant: &TenantId,
        after: Option<&str>,
        limit: usize,
    ) -> Vec<RoomInfo> {
        let Some(t) = self.tenants.get(tenant) else { return Vec::new() };
        let mut rooms: Vec<RoomInfo> = t
            .rooms
            .iter()
            .filter(|(id, _)| after.is_none_or(|a| id.as_str() > a))
            .map(|(id, r)| RoomInfo {
                room: id.clone(),
                members: r.members.len(),
                position: r.stream.position(),
                idle: r.idle.is_some(),
            })
            .collect();
        rooms.sort_unstable_by(|a, b| a.room.cmp(&b.room));
        rooms.truncate(limit);
        rooms
    }

    /// Closes every connection of one user with [`CloseReason::Kicked`] (4005, do not
    /// reconnect), here and, in cluster mode, on every other node: a signal on the user's stream
    /// reaches each node that holds a connection of the user, and each closes its own. Returns
    /// how many this node closed.
    pub fn kick_user(&mut self, now: Instant, tenant: &TenantId, user: &UserId) -> usize {
        let closed = self.close_user(now, tenant, user, CloseReason::Kicked);
        if self.node.as_deref().is_some_and(|n| n.is_up()) {
            let stream = StreamKey::user(tenant.clone(), user.clone());
            self.out.bus(BusOp::Signal { stream, payload: KICK_SIGNAL.into() });
        }
        closed
    }

    /// Cluster mode: a kick signal arrived on a user's stream: close the user's connections here.
    /// Returns whether `payload` was one.
    pub(crate) fn kick_signal(&mut self, now: Instant, stream: &StreamKey, payload: &str) -> bool {
        if payload != KICK_SIGNAL {
            return false;
        }
        if let crate::cluster::StreamScope::User(user) = &stream.scope {
            let (tenant, user) = (stream.tenant.clone(), user.clone());
            self.close_user(now, &tenant, &user, CloseReason::Kicked);
        }
        true
    }
}

/// A connection id as its client was told it, `<index>v<generation>`, as its two numbers.
fn parse_wire(wire: &str) -> Option<(u32, u32)> {
    let (index, generation) = wire.split_once('v')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(index) || !digits(generation) {
        return None;
    }
    Some((index.parse().ok()?, generation.parse().ok()?))
}
