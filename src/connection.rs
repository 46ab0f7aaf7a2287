//! Per-connection lifecycle: the binding to one `(tenant, user)`, liveness and session deadlines,
//! the client's thread filter, room memberships, rate allowances, and the slot table that gives
//! every id a generation and remembers recently closed ones.

use std::time::{Duration, Instant};

use slab::Slab;

use crate::config::{Config, Tier};
use crate::ids::{ConnId, Roles, RoomId, ThreadId};
use crate::kinds::CloseReason;
use crate::limits::Bucket;
use crate::stats::Meter;
use crate::timer::TimerId;

/// One room membership, with the member's position in the room's member list so that leaving is
/// O(1) (see `routing::Room`).
#[derive(Debug)]
pub(crate) struct Membership {
    pub(crate) room: RoomId,
    pub(crate) pos: u32,
    /// The room stream's seq when the connection joined: live delivery covers what follows.
    pub(crate) base: u64,
    /// The highest seq of the room's stream this connection was sent (issue 10 item 5).
    pub(crate) sent: u64,
}

/// A room the connection left before its one `resume`: the highest seq it was sent there, so that
/// a re-join and a resume never send that stream's seqs out of order (issue 10 item 5).
#[derive(Debug)]
pub(crate) struct LeftRoom {
    pub(crate) room: RoomId,
    pub(crate) epoch: u64,
    pub(crate) sent: u64,
}

/// An open connection. Its binding to one user's state (and so to one `(tenant, user)`) is set at
/// connect and never changes; the ids themselves live only in that state, once.
#[derive(Debug)]
pub(crate) struct Connection {
    /// Index of the user's state in the hub's user slab.
    pub(crate) user: u32,
    /// Position in the tenant's connection list.
    pub(crate) tenant_pos: u32,
    pub(crate) tier: Tier,
    pub(crate) roles: Roles,
    pub(crate) opened_at: Instant,
    /// Last inbound frame or pong.
    pub(crate) last_seen: Instant,
    /// Set while a ping is outstanding.
    pub(crate) ping_sent: Option<Instant>,
    pub(crate) expires_at: Option<Instant>,
    pub(crate) refresh_sent: bool,
    /// The connection's one timer, armed at or before its next deadline; `None` while it has no
    /// deadline the clock can represent (see [`Connection::next_deadline`]).
    pub(crate) timer: Option<TimerId>,
    /// Its place in the hub's connection order (1, 2, …; set by [`Connections::insert`]): the
    /// reconnect breaker coalesces closes of connections that were open together by it.
    pub(crate) order: u64,
    /// `None`: all of the user's events. `Some(threads)`: thread-less events plus these threads'
    /// (never an empty list: unsubscribing the last thread widens the filter back to `None`).
    /// Boxed: most connections never narrow, and this keeps them a pointer smaller.
    pub(crate) threads: Option<Box<Threads>>,
    pub(crate) rooms: Vec<Membership>,
    /// Control frames' allowance (per connection; `message` frames draw on the user's quota).
    pub(crate) control: Bucket,
    pub(crate) violations: Bucket,
    /// Bytes handed out in `Deliver` and not yet confirmed by `written`.
    pub(crate) unwritten: u64,
    /// Live event frames delivered (folded into the user's meter when the connection closes).
    pub(crate) delivered: Meter,
    /// `agent_thinking` frames skipped since the last delivery (reported by a `skipped` frame).
    pub(crate) skipped: u32,
    /// Waiting for the client's first frame (within `resume_window`) before going live.
    pub(crate) held: bool,
    /// Whether the client already sent `resume`.
    pub(crate) resumed: bool,
    /// The user stream's and the tenant stream's seq at connect: live delivery covers what
    /// follows, a resume replays up to here.
    pub(crate) user_base: u64,
    pub(crate) tenant_base: u64,
    // --- issue 10 item 5 (core-b): what was sent per stream, so that seqs only grow.
    /// Whether any event of the user's (tenant's) stream went out to this connection. Everything
    /// sent on those streams is past their base, so a bit stands for "the highest seq sent".
    pub(crate) user_sent: bool,
    pub(crate) tenant_sent: bool,
    /// Rooms left before the resume; allocated by the first such leave.
    pub(crate) left_rooms: Option<Box<LeftRooms>>,
}

/// The rooms a connection left before its resume (at most `max_rooms_per_connection`, newest
/// last), and whether that memory overflowed: a re-joined room then counts as sent up to its
/// re-join position.
#[derive(Debug, Default)]
pub(crate) struct LeftRooms {
    pub(crate) rooms: Vec<LeftRoom>,
    pub(crate) forgotten: bool,
}

/// The threads a connection narrowed itself to.
#[derive(Debug, Default)]
pub(crate) struct Threads(pub(crate) Vec<ThreadId>);

/// What a connection's timer found due. A close excludes everything else.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Due {
    pub(crate) close: Option<CloseReason>,
    /// Send `refresh_required`: the session expires in this long.
    pub(crate) refresh: Option<Duration>,
    pub(crate) ping: bool,
    /// The resume window ran out: start live delivery.
    pub(crate) release: bool,
}

impl Connection {
    /// A connection opening at `now` for the user in slot `user`, held for its resume window if
    /// `held`, attached to its user's and tenant's streams at `user_base` and `tenant_base`. Its
    /// timer and tenant position are set when it is inserted into the hub's indexes.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        now: Instant,
        user: u32,
        tier: Tier,
        roles: Roles,
        expires_at: Option<Instant>,
        held: bool,
        user_base: u64,
        tenant_base: u64,
    ) -> Self {
        Self {
            user,
            tenant_pos: 0,
            tier,
            roles,
            opened_at: now,
            last_seen: now,
            ping_sent: None,
            expires_at,
            refresh_sent: false,
            timer: None,
            order: 0,
            threads: None,
            rooms: Vec::new(),
            control: Bucket::full(now),
            violations: Bucket::full(now),
            unwritten: 0,
            delivered: Meter::default(),
            skipped: 0,
            held,
            resumed: false,
            user_base,
            tenant_base,
            user_sent: false,
            tenant_sent: false,
            left_rooms: None,
        }
    }

    /// Whether an event of `thread` (or a thread-less one) passes this connection's filter.
    pub(crate) fn wants(&self, thread: Option<&ThreadId>) -> bool {
        match (&self.threads, thread) {
            (None, _) | (Some(_), None) => true,
            (Some(threads), Some(t)) => threads.0.contains(t),
        }
    }

    /// Any inbound frame or pong proves the peer alive.
    pub(crate) fn seen(&mut self, now: Instant) {
        self.last_seen = now;
        self.ping_sent = None;
    }

    /// The earliest instant at which this connection has something to do, or `None` if every
    /// deadline lies past the end of the clock's range ("never": no timer). The armed timer may be
    /// earlier than this (activity moves deadlines later lazily) but never later: whatever moves
    /// it earlier re-arms the timer (`Hub::rearm_if_earlier`).
    pub(crate) fn next_deadline(&self, cfg: &Config) -> Option<Instant> {
        let heartbeat = match self.ping_sent {
            Some(sent) => sent.checked_add(cfg.heartbeat.timeout),
            None => self.last_seen.checked_add(cfg.heartbeat.interval),
        };
        let session =
            self.expires_at.map(|exp| if self.refresh_sent { exp } else { refresh_at(exp, cfg) });
        let release = if self.held { self.opened_at.checked_add(cfg.resume_window) } else { None };
        [heartbeat, session, release].into_iter().flatten().min()
    }

    /// Decides what is due at `now` and updates the connection's state as if it were done.
    pub(crate) fn due(&mut self, now: Instant, cfg: &Config) -> Due {
        if self.expires_at.is_some_and(|exp| now >= exp) {
            return Due { close: Some(CloseReason::SessionExpired), ..Due::default() };
        }
        let mut due = Due::default();
        // A deadline past the end of the clock's range is never due.
        let reached = |at: Option<Instant>| at.is_some_and(|at| now >= at);
        match self.ping_sent {
            Some(sent) if reached(sent.checked_add(cfg.heartbeat.timeout)) => {
                return Due { close: Some(CloseReason::HeartbeatTimeout), ..Due::default() };
            }
            Some(_) => {}
            None if reached(self.last_seen.checked_add(cfg.heartbeat.interval)) => {
                self.ping_sent = Some(now);
                due.ping = true;
            }
            None => {}
        }
        if let Some(exp) = self.expires_at {
            if !self.refresh_sent && now >= refresh_at(exp, cfg) {
                self.refresh_sent = true;
                due.refresh = Some(exp.saturating_duration_since(now));
            }
        }
        due.release = self.held && reached(self.opened_at.checked_add(cfg.resume_window));
        due
    }
}

fn refresh_at(expires_at: Instant, cfg: &Config) -> Instant {
    expires_at.checked_sub(cfg.session_grace).unwrap_or(expires_at)
}

#[derive(Clone, Copy, Debug)]
struct SlotMeta {
    /// Generation of the slot's current or most recent occupant.
    generation: u32,
    /// When the most recent occupant closed (`None` while occupied or never closed).
    closed_at: Option<Instant>,
}

/// The connection slab plus, per slot, the generation that makes stale ids detectable and the
/// close time that makes "recently closed" answerable. Slots are bounded by `max_connections`, so
/// this table is too.
#[derive(Debug, Default)]
pub(crate) struct Connections {
    slab: Slab<Connection>,
    slots: Vec<SlotMeta>,
    /// Connections ever inserted: the last `Connection::order` handed out.
    opened: u64,
}

/// How an id resolved.
pub(crate) enum Lookup {
    Live(u32),
    /// The id's slot now belongs to a newer connection.
    Stale,
    /// The id is closed and its slot is free, or the id never existed.
    Gone {
        recently_closed: bool,
    },
}

impl Connections {
    pub(crate) fn len(&self) -> usize {
        self.slab.len()
    }

    /// Whether slot `index` holds an open connection (for callers that may just have closed it).
    pub(crate) fn contains(&self, index: u32) -> bool {
        self.slab.contains(index as usize)
    }

    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u32, &Connection)> {
        self.slab.iter().map(|(i, c)| (i as u32, c))
    }

    /// The slot the next `insert` will use.
    pub(crate) fn next_index(&self) -> u32 {
        self.slab.vacant_key() as u32
    }

    /// The last connection order handed out (0 before the first connection).
    pub(crate) fn latest_order(&self) -> u64 {
        self.opened
    }

    pub(crate) fn insert(&mut self, mut conn: Connection) -> ConnId {
        self.opened += 1;
        conn.order = self.opened;
        let index = self.slab.insert(conn);
        if index == self.slots.len() {
            self.slots.push(SlotMeta { generation: 0, closed_at: None });
        }
        let slot = &mut self.slots[index];
        slot.generation = slot.generation.wrapping_add(1);
        slot.closed_at = None;
        ConnId::new(index as u32, slot.generation)
    }

    pub(crate) fn remove(&mut self, index: u32, now: Instant) -> Connection {
        self.slots[index as usize].closed_at = Some(now);
        self.slab.remove(index as usize)
    }

    pub(crate) fn id_of(&self, index: u32) -> ConnId {
        ConnId::new(index, self.slots[index as usize].generation)
    }

    pub(crate) fn lookup(&self, id: ConnId, now: Instant, tombstone: Duration) -> Lookup {
        let Some(slot) = self.slots.get(id.index as usize) else {
            return Lookup::Gone { recently_closed: false };
        };
        let occupied = self.slab.contains(id.index as usize);
        if id.generation == slot.generation {
            if occupied {
                return Lookup::Live(id.index);
            }
            let recently_closed =
                slot.closed_at.is_some_and(|at| now.saturating_duration_since(at) <= tombstone);
            return Lookup::Gone { recently_closed };
        }
        // Generations only grow (modulo wrap-around), so an older id in a reused slot is stale.
        if occupied && id.generation < slot.generation {
            Lookup::Stale
        } else {
            Lookup::Gone { recently_closed: false }
        }
    }

    pub(crate) fn get(&self, index: u32) -> &Connection {
        &self.slab[index as usize]
    }

    pub(crate) fn get_mut(&mut self, index: u32) -> &mut Connection {
        &mut self.slab[index as usize]
    }
}
