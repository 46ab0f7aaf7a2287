//! Rooms: server-side membership (`join`/`leave`, each announced to the connection), and what
//! happens to a room its last member leaves (dropped, or kept idle for `room_retention`).

use std::time::Instant;

use crate::cluster::StreamKey;
use crate::error::{ConnError, RoomError};
use crate::hub::Hub;
use crate::ids::{ConnId, RoomId, StreamName, StreamPos, TenantId};
use crate::kinds::{AuditKind, LimitKind};
use crate::stream::Stream;

impl Hub {
    /// Connection `idx` (of `tenant`) joined `room` again, whose stream's top is `pos`: what it
    /// was sent there before it left is marked on its member entry again
    /// ([`Connection::rejoined`](crate::connection::Connection::rejoined)). Returns that seq if
    /// it is later than `pos` in its epoch (the log lost its tail since, in cluster mode).
    pub(crate) fn rejoined(
        &mut self,
        idx: u32,
        tenant: &TenantId,
        room: &RoomId,
        pos: StreamPos,
    ) -> Option<u64> {
        let keep = self.node.is_some();
        let sent = self.conns.get_mut(idx).rejoined(room, pos, keep)?;
        let tenant = self.tenants.get_mut(tenant).expect("connection's tenant exists");
        if let Some(m) = tenant.member_mut(&self.conns, idx, room) {
            m.sent = sent;
        }
        (sent > pos.seq).then_some(sent)
    }

    /// Puts a connection into a room of its own tenant. Returns `false` if it was already there.
    /// Live delivery of the room's stream starts at its current position.
    ///
    /// # Errors
    ///
    /// [`RoomError::Conn`] if the connection is not open (see [`ConnError`]), or
    /// [`RoomError::TooManyRooms`] if it is in
    /// [`Config::max_rooms_per_connection`](crate::Config::max_rooms_per_connection) rooms
    /// already (audited and counted as a limit rejection). Membership is unchanged.
    pub fn join(
        &mut self,
        now: Instant,
        conn: ConnId,
        room: impl Into<RoomId>,
    ) -> Result<bool, RoomError> {
        let room = room.into();
        let now = self.clock(now);
        let idx = self.resolve(now, conn)?;
        let c = self.conns.get(idx);
        if c.in_room(room.as_str()) {
            return Ok(false);
        }
        if c.memberships().len() >= self.cfg.max_rooms_per_connection as usize {
            let kind = LimitKind::RoomsPerConnection;
            self.limit_conn(kind, AuditKind::LimitHit(kind), idx);
            return Err(RoomError::TooManyRooms { limit: self.cfg.max_rooms_per_connection });
        }
        let tenant_id = self.users.get(c.user()).tenant.clone();
        // An idle room comes back with its stream; otherwise a new room starts a new one.
        let revived = self.tenants.revive(&tenant_id, &room);
        let tenant = self.tenants.get_mut(&tenant_id).expect("connection's tenant exists");
        let fresh = !tenant.rooms.contains_key(&room);
        let epochs = &mut self.epochs;
        // Cluster mode: the bus tells a new room's position (until then it is `(0, 0)`).
        let clustered = self.node.is_some();
        let new_stream = || {
            if clustered {
                Stream::at(StreamPos { epoch: 0, seq: 0 })
            } else {
                Stream::new(epochs.next())
            }
        };
        let joined = tenant.join(&mut self.conns, idx, &room, new_stream);
        if fresh || revived {
            self.out.stats.rooms += 1;
        }
        if fresh && clustered {
            self.track(now, StreamKey::room(tenant_id.clone(), room.clone()));
        }
        if joined {
            let key = StreamKey::room(tenant_id, room.clone());
            if self.conns.get(idx).is_awaiting() || !self.stream_confirmed(&key) {
                // Cluster mode: `joined` waits until the connection and the room's stream are
                // set up on the bus; nothing of the room is delivered before.
                // What it was sent there before it left is matched with the stream's epoch
                // when that is known (`announce_room`).
                let c = self.conns.get_mut(idx);
                let slot = c.memberships().len() as u32 - 1;
                c.defer_announcement(slot);
                return Ok(true);
            }
            // Tell the client where the room's stream stands, so that it can resume it later.
            let tenant = self.tenants.get(&key.tenant).expect("connection's tenant exists");
            let pos = tenant.rooms[&room].stream.position();
            // What this connection was sent of the room before it left, so that a resume never
            // sends the room's seqs out of order (issue 10 item 5).
            // (A room's stream never goes back on one node; in cluster mode, see
            // `announce_room`.)
            if let Some(sent) = self.rejoined(idx, &key.tenant, &room, pos) {
                if self.node.is_some() {
                    self.rotate_past(now, &key, StreamPos { epoch: pos.epoch, seq: sent });
                }
            }
            let frame = self.flow.writer.joined(&StreamName::Room(room.clone()), pos);
            self.control_or_close(now, idx, &frame);
            if self.conns.contains(idx) {
                self.presence_joined(now, idx, room);
            }
        }
        Ok(joined)
    }

    /// Takes a connection out of a room. Returns `false` if it was not there.
    ///
    /// # Errors
    ///
    /// [`ConnError::Unknown`] if no connection with this id is open (closed, or never existed), or
    /// [`ConnError::Stale`] (also audited as [`AuditKind::StaleConnId`]) if the id's slot now belongs
    /// to a newer connection. Nothing changes.
    pub fn leave(
        &mut self,
        now: Instant,
        conn: ConnId,
        room: impl Into<RoomId>,
    ) -> Result<bool, ConnError> {
        let room = room.into();
        let now = self.clock(now);
        let idx = self.resolve(now, conn)?;
        let tenant_id = self.owner(idx).0;
        let tenant = self.tenants.get_mut(&tenant_id).expect("connection's tenant exists");
        // Remembered until the connection's one resume (issue 10 item 5); in cluster mode for
        // its whole life, as a re-join must also notice a log that lost its tail meanwhile.
        if let Some(epoch) = tenant.rooms.get(&room).map(|r| r.stream.epoch()) {
            let cap = self.cfg.max_rooms_per_connection;
            let clustered = self.node.is_some();
            let sent = tenant.member_mut(&self.conns, idx, &room).map_or(0, |m| m.sent);
            self.conns.get_mut(idx).remember_left(&room, epoch, sent, cap, clustered);
        }
        if self.conns.get(idx).in_room(room.as_str()) {
            self.presence_left(now, idx, room.clone());
        }
        let tenant = self.tenants.get_mut(&tenant_id).expect("connection's tenant exists");
        let (left, emptied) = tenant.leave(&mut self.conns, idx, room.as_str());
        if let Some(room) = emptied {
            self.room_emptied(now, &tenant_id, room);
        }
        if left {
            let frame = self.flow.writer.left(&StreamName::Room(room.clone()));
            self.control_or_close(now, idx, &frame);
        }
        Ok(left)
    }

    /// A room lost its last member: drop it, or keep it idle for `room_retention` so that its
    /// members can come back and resume it.
    pub(crate) fn room_emptied(&mut self, now: Instant, tenant_id: &TenantId, room: RoomId) {
        self.out.stats.rooms -= 1;
        // No retention, or one whose end is past the last instant the clock can represent (as
        // for users, a retention that can never end would escape `max_idle_rooms`): drop it.
        if self.cfg.room_retention.is_zero() || now.checked_add(self.cfg.room_retention).is_none() {
            self.drop_room(tenant_id, &room);
            return;
        }
        if let Some((t, r)) = self.tenants.keep_idle(now, tenant_id, &room, &self.cfg) {
            self.drop_room(&t, &r);
        }
    }

    /// Forgets an empty room and its stream (and its tenant, if nothing else holds it). Its idle
    /// timer, if any, has fired or been taken.
    pub(crate) fn drop_room(&mut self, tenant_id: &TenantId, room: &RoomId) {
        let tenant = self.tenants.get_mut(tenant_id).expect("room's tenant");
        let r = tenant.rooms.remove(room).expect("dropped room exists");
        debug_assert!(r.members.is_empty() && r.idle.is_none());
        self.buffers.dropped(&r.stream);
        let unused = tenant.is_unused();
        if unused {
            let tenant = self.tenants.remove(tenant_id).expect("present");
            self.buffers.dropped(&tenant.stream);
        }
        self.untrack(&StreamKey::room(tenant_id.clone(), room.clone()));
        if unused {
            self.untrack(&StreamKey::tenant(tenant_id.clone()));
        }
    }
}
