//! What a connection was sent in the rooms it left (issue 10 item 5): a re-join and a resume
//! never send a room's seqs out of order, and in cluster mode a re-join notices a log that lost
//! its tail meanwhile.

use super::Connection;
use crate::ids::{RoomId, StreamPos};

/// A room the connection left before its one `resume`: the highest seq it was sent there, so that
/// a re-join and a resume never send that stream's seqs out of order (issue 10 item 5).
#[derive(Debug)]
struct LeftRoom {
    room: RoomId,
    epoch: u64,
    sent: u64,
}

/// The rooms a connection left before its resume (a single node: one entry per room, at most
/// `max_rooms_per_connection`; cluster mode: the room's last two epochs, at most twice that),
/// newest last, and whether that memory overflowed: a re-joined room then counts as sent up to
/// its re-join position.
#[derive(Debug, Default)]
pub(super) struct LeftRooms {
    rooms: Vec<LeftRoom>,
    forgotten: bool,
}

impl Connection {
    /// A resume is being answered: forget the rooms left before it.
    pub(crate) fn forget_left_rooms(&mut self) {
        self.left_rooms = None;
    }

    /// It leaves `room` (in epoch `epoch` of the room's stream) before its resume: remember what
    /// it was sent there, `sent` (its member entry's mark; issue 10 item 5), for at most `cap`
    /// rooms (cluster mode: `2 * cap` entries, two epochs per room, see below); past that, the
    /// oldest is forgotten and a re-joined room counts as sent up to its re-join position.
    /// Nothing to do after the resume, unless `always` (cluster mode: a re-join
    /// checks what was sent against a log that may have lost its tail,
    /// [`Connection::rejoined`]), if it is not a member, or if the membership was never announced
    /// (cluster mode: it was sent nothing of the room, and an earlier membership's memory stays).
    pub(crate) fn remember_left(
        &mut self,
        room: &RoomId,
        epoch: u64,
        sent: u64,
        cap: u32,
        always: bool,
    ) {
        if self.resumed && !always {
            return;
        }
        let Some(m) = self.rooms.iter().find(|m| &m.room == room) else { return };
        // Left before it was announced (cluster mode: the room's stream was not set up yet), it
        // was sent nothing of the room: what an earlier membership was sent still counts.
        if !m.is_announced() {
            return;
        }
        let memory = self.left_rooms.get_or_insert_with(Box::default);
        // What it was sent in one epoch only grows (a re-join marks it on the member entry, but
        // a stream taken back to an epoch may have marked less).
        let kept = memory.rooms.iter().position(|l| &l.room == room && l.epoch == epoch);
        let sent = kept.map_or(sent, |i| memory.rooms.remove(i).sent.max(sent));
        // Cluster mode: the room's other epoch stays remembered (the newest one). A failover
        // that loses the rotation which started this epoch takes the log back to that one, where
        // what was sent still counts (the node forgets the stream once nobody is in the room).
        // A single node's epochs never go back: one entry per room.
        let others = if always { 1 } else { 0 };
        while memory.rooms.iter().filter(|l| &l.room == room).count() > others {
            let oldest = memory.rooms.iter().position(|l| &l.room == room).expect("counted");
            memory.rooms.remove(oldest);
        }
        let room_cap = if always { 2 * cap as usize } else { cap as usize };
        if memory.rooms.len() >= room_cap {
            memory.rooms.remove(0);
            memory.forgotten = true;
        }
        memory.rooms.push(LeftRoom { room: m.room.clone(), epoch, sent });
    }

    /// It joined `room` again, whose stream is in epoch `epoch` (in cluster mode, known only once
    /// the bus confirmed the stream): what it was sent there before it left counts again, so that
    /// a resume never sends the room's seqs out of order (issue 10 item 5). Nothing to do if it
    /// is not a member.
    ///
    /// Returns what counts as sent there now, for its member entry (`routing::Member::sent`);
    /// `None` if it is not a member. Later than the stream's top `pos` in this epoch: the log
    /// lost its tail since (cluster mode), and the seqs it had would be handed out again.
    ///
    /// A single node takes the memory (the member entry carries it on). In cluster mode
    /// (`keep`) it stays: the member entry may move to another epoch and lose this one's mark,
    /// and a failover may bring the stream back to it ([`Connection::remember_left`]).
    pub(crate) fn rejoined(&mut self, room: &RoomId, pos: StreamPos, keep: bool) -> Option<u64> {
        let base = self.rooms.iter().find(|m| &m.room == room)?.base;
        let Some(left) = self.left_rooms.as_deref_mut() else { return Some(0) };
        let known = left.rooms.iter().any(|l| &l.room == room);
        let at = left.rooms.iter().position(|l| &l.room == room && l.epoch == pos.epoch);
        let sent = at.map(|i| if keep { left.rooms[i].sent } else { left.rooms.remove(i).sent });
        if !keep {
            left.rooms.retain(|l| &l.room != room);
        }
        Some(match sent {
            Some(sent) => sent,
            None if !known && left.forgotten => base,
            None => 0,
        })
    }
}
