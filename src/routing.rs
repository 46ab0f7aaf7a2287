//! Membership indexes and recipient resolution.
//!
//! Every index here is keyed by slab positions of connections that the hub minted, and every one
//! of them is reached only through a tenant: a room is found in its tenant's room map, a tenant
//! broadcast walks its tenant's connection list. Nothing resolves across tenants except
//! `Everyone`, which the hub gates and audits.
//!
//! Lists are dense vectors with back-pointers (each connection knows its position in its tenant's
//! list and in each room's member list), so joining, leaving and closing are O(1) per membership
//! and a fan-out is a linear walk over exactly the recipients.

use std::ops::{Deref, DerefMut};
use std::time::Instant;

use hashbrown::HashMap;

use crate::config::Config;
use crate::connection::{Connection, Connections};
use crate::ids::{ConnId, Role, Roles, RoomId, TenantId};
use crate::stream::{Scope, Stream, Visible};
use crate::timer::{TimerId, TimerQueue};

/// Every tenant's state, and the timers of the rooms kept idle (`room_retention`). It derefs to
/// the tenant map; the idle-room lifecycle goes through its methods.
#[derive(Debug)]
pub(crate) struct Tenants {
    map: HashMap<TenantId, Tenant>,
    /// Rooms without members by the instant they are dropped.
    idle: TimerQueue<(TenantId, RoomId)>,
}

impl Deref for Tenants {
    type Target = HashMap<TenantId, Tenant>;

    fn deref(&self) -> &Self::Target {
        &self.map
    }
}

impl DerefMut for Tenants {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.map
    }
}

impl Tenants {
    pub(crate) fn new() -> Self {
        Self { map: HashMap::new(), idle: TimerQueue::new() }
    }

    /// Rooms kept idle now.
    pub(crate) fn idle_rooms(&self) -> usize {
        self.idle.len()
    }

    /// When the next idle room's retention runs out.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.idle.peek()
    }

    /// The next idle room whose retention ran out at `now`; it is no longer idle, and the caller
    /// drops it.
    pub(crate) fn pop_expired(&mut self, now: Instant) -> Option<(TenantId, RoomId)> {
        let (tenant, room) = self.idle.pop_due(now)?;
        self.unmark(&tenant, &room);
        Some((tenant, room))
    }

    /// A room lost its last member and `room_retention` is set: keep it idle until
    /// `now + room_retention`. Returns the idle room evicted to stay within `max_idle_rooms`
    /// (no longer idle; the caller drops it).
    pub(crate) fn keep_idle(
        &mut self,
        now: Instant,
        tenant: &TenantId,
        room: &RoomId,
        cfg: &Config,
    ) -> Option<(TenantId, RoomId)> {
        let evicted = if self.idle.len() >= cfg.max_idle_rooms as usize {
            let (t, r) = self.idle.pop_first().expect("the cap is positive");
            self.unmark(&t, &r);
            Some((t, r))
        } else {
            None
        };
        // The caller drops the room instead when this instant does not exist.
        let until = now.checked_add(cfg.room_retention).unwrap_or(now);
        let timer = self.idle.insert(until, (tenant.clone(), room.clone()));
        let r = self.map.get_mut(tenant).and_then(|t| t.rooms.get_mut(room)).expect("emptied room");
        r.idle = Some(timer);
        evicted
    }

    /// A member joins an idle room: it is no longer idle. Returns whether it was.
    pub(crate) fn revive(&mut self, tenant: &TenantId, room: &RoomId) -> bool {
        let r = self.map.get_mut(tenant).and_then(|t| t.rooms.get_mut(room));
        match r.and_then(|r| r.idle.take()) {
            Some(timer) => {
                self.idle.cancel(timer);
                true
            }
            None => false,
        }
    }

    fn unmark(&mut self, tenant: &TenantId, room: &RoomId) {
        let r = self.map.get_mut(tenant).and_then(|t| t.rooms.get_mut(room)).expect("idle room");
        r.idle = None;
    }
}

/// A tenant's shared state.
#[derive(Debug)]
pub(crate) struct Tenant {
    /// Open connections of the tenant.
    pub(crate) conns: Vec<u32>,
    /// User states (active and detached) of the tenant; the tenant is dropped when this and
    /// `rooms` are empty.
    pub(crate) users: u32,
    pub(crate) rooms: HashMap<RoomId, Room>,
    /// The tenant broadcast stream.
    pub(crate) stream: Stream,
}

/// A room: its members and its stream. When its last member leaves it is dropped, or, with
/// `Config::room_retention`, kept idle (its stream still buffering) until the retention runs out.
#[derive(Debug)]
pub(crate) struct Room {
    pub(crate) members: Vec<Member>,
    pub(crate) stream: Stream,
    /// Armed while the room has no members.
    pub(crate) idle: Option<TimerId>,
}

/// A room member: the connection, its slot's generation (a membership ends before its
/// connection closes, so this is the generation of the open connection: a fan-out builds each
/// recipient's id from its member entry instead of looking the slot table up), the position
/// of this membership in its `rooms` list, and the highest seq of the room's stream the
/// connection was sent.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Member {
    pub(crate) conn: u32,
    pub(crate) generation: u32,
    pub(crate) slot: u32,
    /// The highest seq of the room's stream this connection was sent (0: none; issue 10 item 5):
    /// a resume never sends it lower seqs. Here rather than in the connection's membership, so
    /// that a fan-out marks it in the entry it walks (callgrind, `room-1000`: the membership's
    /// bounds check and address cost 6 instructions per recipient).
    pub(crate) sent: u64,
}

impl Member {
    /// The member's connection id.
    #[inline]
    pub(crate) fn id(&self) -> ConnId {
        ConnId::new(self.conn, self.generation)
    }
}

impl Tenant {
    pub(crate) fn new(stream: Stream) -> Self {
        Self { conns: Vec::new(), users: 0, rooms: HashMap::new(), stream }
    }

    pub(crate) fn is_unused(&self) -> bool {
        self.users == 0 && self.rooms.is_empty()
    }

    pub(crate) fn add_conn(&mut self, conns: &mut Connections, idx: u32) {
        conns.get_mut(idx).set_tenant_pos(self.conns.len() as u32);
        self.conns.push(idx);
    }

    pub(crate) fn remove_conn(&mut self, conns: &mut Connections, idx: u32) {
        let pos = conns.get(idx).tenant_pos() as usize;
        debug_assert_eq!(self.conns[pos], idx);
        self.conns.swap_remove(pos);
        if let Some(&moved) = self.conns.get(pos) {
            conns.get_mut(moved).set_tenant_pos(pos as u32);
        }
    }

    /// Puts connection `idx` into `room`, creating the room (with `new_stream`) if needed.
    /// Returns false if it was already a member. The caller has checked the per-connection limit.
    pub(crate) fn join(
        &mut self,
        conns: &mut Connections,
        idx: u32,
        room: &RoomId,
        new_stream: impl FnOnce() -> Stream,
    ) -> bool {
        let generation = conns.id_of(idx).generation;
        let conn = conns.get_mut(idx);
        if conn.in_room(room.as_str()) {
            return false;
        }
        let r = self.rooms.entry_ref(room).or_insert_with(|| Room {
            members: Vec::new(),
            stream: new_stream(),
            idle: None,
        });
        let base = r.stream.position().seq;
        let slot = conn.add_membership(room.clone(), r.members.len() as u32, base);
        r.members.push(Member { conn: idx, generation, slot, sent: 0 });
        true
    }

    /// The member entry of connection `idx` in `room`, if it is a member.
    pub(crate) fn member_mut(
        &mut self,
        conns: &Connections,
        idx: u32,
        room: &RoomId,
    ) -> Option<&mut Member> {
        let slot = conns.get(idx).room_slot(room.as_str())?;
        let pos = conns.get(idx).memberships()[slot].pos();
        self.rooms.get_mut(room)?.members.get_mut(pos as usize)
    }

    /// Takes connection `idx` out of `room`. Returns whether it was a member, and the room if it
    /// was the last member (the room stays in place; the hub drops it or keeps it idle).
    pub(crate) fn leave(
        &mut self,
        conns: &mut Connections,
        idx: u32,
        room: &str,
    ) -> (bool, Option<RoomId>) {
        let Some(slot) = conns.get(idx).room_slot(room) else {
            return (false, None);
        };
        (true, self.leave_slot(conns, idx, slot))
    }

    /// Takes connection `idx` out of every room (on close), handing each room it emptied to
    /// `emptied`.
    pub(crate) fn leave_all(
        &mut self,
        conns: &mut Connections,
        idx: u32,
        mut emptied: impl FnMut(RoomId),
    ) {
        while !conns.get(idx).memberships().is_empty() {
            let last = conns.get(idx).memberships().len() - 1;
            if let Some(room) = self.leave_slot(conns, idx, last) {
                emptied(room);
            }
        }
    }

    fn leave_slot(&mut self, conns: &mut Connections, idx: u32, slot: usize) -> Option<RoomId> {
        let conn = conns.get_mut(idx);
        let gone = conn.remove_membership(slot);
        // The membership that moved into `slot` must tell its room where it now lives.
        if let Some(moved) = conn.memberships().get(slot) {
            let r = self.rooms.get_mut(moved.room()).expect("member of a live room");
            r.members[moved.pos() as usize].slot = slot as u32;
        }
        let r = self.rooms.get_mut(gone.room()).expect("member of a live room");
        let pos = gone.pos() as usize;
        r.members.swap_remove(pos);
        if let Some(moved) = r.members.get(pos).copied() {
            conns.get_mut(moved.conn).set_member_pos(moved.slot, pos as u32);
        }
        if r.members.is_empty() { Some(gone.into_room()) } else { None }
    }
}

/// Who a tenant broadcast is for.
pub(crate) fn audience_admits(roles: &Roles, role: Option<&Role>) -> bool {
    role.is_none_or(|r| roles.contains(r.as_str()))
}

/// Whether a buffered message may be replayed to this connection: the same rule that routed it
/// live, so a replay never shows a connection more than live delivery would have.
#[inline]
pub(crate) fn scope_admits(conn: &Connection, id: ConnId, scope: &Scope) -> bool {
    match scope {
        Scope::All => true,
        Scope::Subject { thread, run } => conn.wants(thread.as_ref(), run.as_ref()),
        Scope::Conn(c) => *c == id,
        Scope::Role(r) => audience_admits(conn.roles(), Some(r)),
        Scope::Nobody => false,
    }
}

/// [`scope_admits`], less the excluded connection.
#[inline]
pub(crate) fn visible_to(conn: &Connection, id: ConnId, visible: &Visible) -> bool {
    visible.except != Some(id) && scope_admits(conn, id, &visible.scope)
}
