//! Per-connection lifecycle: the binding to one `(tenant, user)`, liveness and session deadlines,
//! the client's thread filter, room memberships, rate allowances, and the slot table that gives
//! every id a generation and remembers recently closed ones.

use std::time::{Duration, Instant};

use slab::Slab;

use crate::config::{Config, Tier};
use crate::ids::{ConnId, Roles, RoomId, RunId, StreamName, ThreadId};
use crate::kinds::CloseReason;
use crate::labels::Labels;
use crate::limits::{Bucket, Rate};
use crate::narrowing::Narrowing;
pub(crate) use crate::narrowing::TooManySubscriptions as TooManyThreads;
use crate::stats::{DeliveryMeter, MeterClock};
use crate::timer::{TimerId, TimerQueue};

mod left_rooms;
mod lifetime;
mod rtt;

pub use rtt::RoundTrip;
use rtt::Rtt;

/// The top bit of a connection's `unwritten` count: set while the connection is held or owes a
/// `skipped` notice, the connections a fan-out's fast lane leaves to the full offer. The lane's
/// bound is below it, so one comparison of the count covers all three checks (callgrind,
/// `room-1000`: 4 instructions fewer per recipient than testing `held` and `skipped` apart).
pub(crate) const OFF_LANE: u64 = 1 << 63;

/// One room membership, with the member's position in the room's member list so that leaving is
/// O(1) (see `routing::Room`).
#[derive(Debug)]
pub(crate) struct Membership {
    room: RoomId,
    /// Position in the room's member list.
    pos: u32,
    /// The room stream's seq when the connection joined: live delivery covers what follows.
    /// (The highest seq it was sent there, issue 10 item 5, is on its member entry in the room,
    /// `routing::Member::sent`, which a fan-out walks anyway.)
    base: u64,
    /// Cluster mode: whether the client was told the room's position (`joined`). Not until the
    /// room's stream and the connection are both set up on the bus; nothing of the room is
    /// delivered before.
    announced: bool,
}

impl Membership {
    /// The room.
    #[inline]
    pub(crate) fn room(&self) -> &RoomId {
        &self.room
    }

    /// The member's position in the room's member list.
    #[inline]
    pub(crate) fn pos(&self) -> u32 {
        self.pos
    }

    /// The room stream's seq when the connection joined.
    pub(crate) fn base(&self) -> u64 {
        self.base
    }

    /// The room, taking the membership apart.
    pub(crate) fn into_room(self) -> RoomId {
        self.room
    }

    /// Whether the client was told the room's position (always, outside cluster mode).
    #[inline]
    pub(crate) fn is_announced(&self) -> bool {
        self.announced
    }
}

/// An open connection. Its binding to one user's state (and so to one `(tenant, user)`) is set at
/// connect and never changes; the ids themselves live only in that state, once.
///
/// Laid out in declaration order (`repr(C)`), hot fields first: what a fan-out reads and writes
/// for each recipient (backpressure, meter, hold, what was sent, the filters) sits in the first
/// 80 bytes, so that a recipient costs one or two cache lines of its record rather than the
/// three or four that the compiler's order (by alignment) spread them over. The order also
/// leaves no padding (232 bytes).
#[derive(Debug)]
#[repr(C)]
pub(crate) struct Connection {
    // --- Hot: read or written per recipient of a fan-out.
    /// Bytes handed out in `Deliver` and not yet confirmed by `written`, with [`OFF_LANE`] set
    /// while it is `held` or owes a `skipped` notice (read with [`Connection::unwritten`]).
    unwritten: u64,
    rooms: Vec<Membership>,
    /// Live event frames delivered (folded into the user's meter when the connection closes).
    delivered: DeliveryMeter,
    /// `agent_thinking` frames skipped since the last delivery (reported by a `skipped` frame).
    skipped: u32,
    /// Waiting for the client's first frame (within `resume_window`) before going live.
    held: bool,
    tier: Tier,
    // --- issue 10 item 5 (core-b): what was sent per stream, so that seqs only grow.
    /// Whether any event of the user's (tenant's) stream went out to this connection. Everything
    /// sent on those streams is past their base, so a bit stands for "the highest seq sent".
    user_sent: bool,
    tenant_sent: bool,
    /// Index of the user's state in the hub's user slab.
    user: u32,
    /// Position in the tenant's connection list (cold, here to fill the 4 bytes before
    /// `threads`).
    tenant_pos: u32,
    /// `None`: all of the user's events. `Some(..)`: the threads and runs it subscribed to (see
    /// `narrowing.rs`; never empty: unsubscribing the last widens the filter back to `None`).
    /// Boxed: most connections never narrow, and this keeps them a pointer smaller.
    threads: Option<Box<Narrowing>>,
    roles: Roles,
    // --- Cold: connect, close, timers, control frames, resume.
    refresh_sent: bool,
    /// Whether the client already sent `resume`.
    resumed: bool,
    /// Cluster mode: its `connected` frame waits until its user's and tenant's streams are set
    /// up on the bus (their true positions known). It is held meanwhile.
    awaiting: bool,
    /// Cluster mode: its `resume` waits for the log; the fetch's answer ends the hold, not the
    /// resume window.
    resuming: bool,
    /// The connection's one timer (in [`Connections`]' queue), armed at or before its next
    /// deadline; `None` while it has no deadline the clock can represent (see
    /// [`Connection::next_deadline`]). Here to fill the 4 bytes before `labels`.
    timer: Option<TimerId>,
    /// The principal's labels: shown, never routed on.
    labels: Labels,
    /// Round-trip times of its pongs (see `rtt.rs`).
    rtt: Rtt,
    /// Its place in the hub's connection order (1, 2, …; set by [`Connections::insert`]): the
    /// reconnect breaker coalesces closes of connections that were open together by it.
    order: u64,
    /// The user stream's and the tenant stream's seq at connect: live delivery covers what
    /// follows, a resume replays up to here.
    user_base: u64,
    tenant_base: u64,
    /// Rooms left before the resume; allocated by the first such leave.
    left_rooms: Option<Box<left_rooms::LeftRooms>>,
    opened_at: Instant,
    /// Last inbound frame or pong.
    last_seen: Instant,
    /// Control frames' allowance (per connection; `message` frames draw on the user's quota).
    control: Bucket,
    violations: Bucket,
    /// When the hub last asked for a ping whose pong has not come. Any frame proves the peer
    /// alive (the ping is outstanding only while `last_seen` is earlier), but only the pong
    /// measures the round trip.
    ping_sent: Option<Instant>,
    expires_at: Option<Instant>,
}

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
        labels: Labels,
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
            labels,
            opened_at: now,
            last_seen: now,
            ping_sent: None,
            rtt: Rtt::default(),
            expires_at,
            refresh_sent: false,
            timer: None,
            order: 0,
            threads: None,
            rooms: Vec::new(),
            control: Bucket::full(now),
            violations: Bucket::full(now),
            unwritten: if held { OFF_LANE } else { 0 },
            delivered: DeliveryMeter::default(),
            skipped: 0,
            held,
            resumed: false,
            awaiting: false,
            resuming: false,
            user_base,
            tenant_base,
            user_sent: false,
            tenant_sent: false,
            left_rooms: None,
        }
    }

    // --- Binding (fixed at connect)

    /// The slot of the user's state it is bound to.
    #[inline]
    pub(crate) fn user(&self) -> u32 {
        self.user
    }

    /// The principal's tier.
    #[inline]
    pub(crate) fn tier(&self) -> Tier {
        self.tier
    }

    /// The principal's roles.
    #[inline]
    pub(crate) fn roles(&self) -> &Roles {
        &self.roles
    }

    /// The principal's labels.
    #[inline]
    pub(crate) fn labels(&self) -> &Labels {
        &self.labels
    }

    /// When it opened.
    pub(crate) fn opened_at(&self) -> Instant {
        self.opened_at
    }

    /// Its place in the hub's connection order (see [`Connections::latest_order`]).
    pub(crate) fn order(&self) -> u64 {
        self.order
    }

    /// Its position in its tenant's connection list.
    pub(crate) fn tenant_pos(&self) -> u32 {
        self.tenant_pos
    }

    /// It now sits at `pos` in its tenant's connection list.
    pub(crate) fn set_tenant_pos(&mut self, pos: u32) {
        self.tenant_pos = pos;
    }

    // --- Liveness and session

    /// Any inbound frame or pong proves the peer alive.
    pub(crate) fn seen(&mut self, now: Instant) {
        self.last_seen = now;
    }

    /// Its last inbound frame or pong (or its opening).
    pub(crate) fn last_seen(&self) -> Instant {
        self.last_seen
    }

    /// Whether a ping is outstanding (nothing came since it was asked for).
    pub(crate) fn awaiting_pong(&self) -> bool {
        self.outstanding_ping().is_some()
    }

    /// When the outstanding ping was asked for: a ping is asked when the peer has been silent
    /// for the heartbeat interval (so `last_seen` is then earlier than the ping), and anything
    /// the peer sends after it moves `last_seen` to or past it.
    fn outstanding_ping(&self) -> Option<Instant> {
        self.ping_sent.filter(|&sent| self.last_seen < sent)
    }

    /// When its session expires, if it does.
    pub(crate) fn expires_at(&self) -> Option<Instant> {
        self.expires_at
    }

    /// The session was re-authenticated: it now expires at `expires_at`, and a new
    /// `refresh_required` goes out before then.
    pub(crate) fn refresh_session(&mut self, expires_at: Option<Instant>) {
        self.expires_at = expires_at;
        self.refresh_sent = false;
    }

    // --- Thread filter

    /// Whether an event of `thread` and `run` passes this connection's filter (see
    /// `narrowing.rs`).
    #[inline]
    pub(crate) fn wants(&self, thread: Option<&ThreadId>, run: Option<&RunId>) -> bool {
        self.threads.as_deref().is_none_or(|n| n.admits(thread, run))
    }

    /// The threads it narrowed itself to; `None` when it receives all of its user's events.
    pub(crate) fn threads(&self) -> Option<&[ThreadId]> {
        self.threads.as_deref().map(Narrowing::threads)
    }

    /// The runs it narrowed itself to; `None` when it receives all of its user's events.
    pub(crate) fn runs(&self) -> Option<&[RunId]> {
        self.threads.as_deref().map(Narrowing::runs)
    }

    /// `subscribe`: adds `thread` to the filter (narrowing it on the first), unless that would
    /// hold more than `max` threads. Subscribing twice is one subscription.
    pub(crate) fn narrow_to(&mut self, thread: &str, max: u32) -> Result<(), TooManyThreads> {
        let added = self.threads.get_or_insert_with(Box::default).add_thread(thread, max);
        self.widen_if_empty();
        added
    }

    /// `subscribe` to a run: as [`Connection::narrow_to`], for runs (at most `max` of them).
    pub(crate) fn narrow_to_run(&mut self, run: &str, max: u32) -> Result<(), TooManyThreads> {
        let added = self.threads.get_or_insert_with(Box::default).add_run(run, max);
        self.widen_if_empty();
        added
    }

    /// `unsubscribe` of one thread: without any thread or run left, the connection receives all
    /// of its user's events again.
    pub(crate) fn unsubscribe(&mut self, thread: &str) {
        if let Some(n) = &mut self.threads {
            n.remove_thread(thread);
        }
        self.widen_if_empty();
    }

    /// `unsubscribe` of one run (see [`Connection::unsubscribe`]).
    pub(crate) fn unsubscribe_run(&mut self, run: &str) {
        if let Some(n) = &mut self.threads {
            n.remove_run(run);
        }
        self.widen_if_empty();
    }

    fn widen_if_empty(&mut self) {
        if self.threads.as_deref().is_some_and(Narrowing::is_empty) {
            self.threads = None;
        }
    }

    /// `unsubscribe` of everything: the connection receives all of its user's events again.
    pub(crate) fn widen(&mut self) {
        self.threads = None;
    }

    // --- Rate allowances

    /// The control frames' allowance.
    pub(crate) fn control_allowance(&mut self) -> &mut Bucket {
        &mut self.control
    }

    /// Spends one violation of `allowance` at `now`. True when the allowance is spent (this was
    /// the last in a row): the connection is to be closed.
    pub(crate) fn violation_spends_allowance(&mut self, now: Instant, allowance: Rate) -> bool {
        !self.violations.try_take(now, allowance) || self.violations.exhausted(now, allowance)
    }

    // --- Backpressure (see `flow.rs`)

    /// Bytes handed out and not yet confirmed written.
    #[inline]
    pub(crate) fn unwritten(&self) -> u64 {
        self.unwritten & !OFF_LANE
    }

    /// Its unwritten bytes while it is live and owes no `skipped` notice, else [`OFF_LANE`] or
    /// more: a fan-out's fast lane tells both apart from how much it has unwritten with one
    /// comparison (the fast lane's test, `flow::Lane::takes`).
    #[inline]
    pub(crate) fn lane_load(&self) -> u64 {
        self.unwritten
    }

    /// `bytes` more were handed out to the transport. (The count stays below [`OFF_LANE`]: it
    /// would take 8 EiB handed out and not written to reach it.)
    #[inline]
    pub(crate) fn queued(&mut self, bytes: u64) {
        self.unwritten += bytes;
    }

    /// The transport confirmed `bytes` written.
    pub(crate) fn written(&mut self, bytes: u64) {
        let flag = self.unwritten & OFF_LANE;
        self.unwritten = (self.unwritten & !OFF_LANE).saturating_sub(bytes) | flag;
    }

    /// Sets [`OFF_LANE`] in `unwritten` from `held` and `skipped`: called by everything that
    /// changes either.
    #[inline]
    fn relane(&mut self) {
        let off = if self.held || self.skipped > 0 { OFF_LANE } else { 0 };
        self.unwritten = (self.unwritten & !OFF_LANE) | off;
    }

    /// Frames skipped since the last delivery.
    #[inline]
    pub(crate) fn skipped(&self) -> u32 {
        self.skipped
    }

    /// One more frame skipped.
    #[inline]
    pub(crate) fn skip(&mut self) {
        self.skipped = self.skipped.saturating_add(1);
        self.relane();
    }

    /// The skips to report now (the `skipped` notice goes out), leaving none.
    #[inline]
    pub(crate) fn take_skipped(&mut self) -> u32 {
        let skipped = std::mem::take(&mut self.skipped);
        self.relane();
        skipped
    }

    /// One more live event frame delivered.
    #[inline]
    pub(crate) fn count_delivered(&mut self, clock: MeterClock) {
        self.delivered.add_one(clock);
    }

    /// Its live event frames delivered (the user's meter absorbs them on close).
    pub(crate) fn delivered(&self) -> DeliveryMeter {
        self.delivered
    }

    // --- Resume window and what was sent per stream

    /// Whether it is still in its resume window (live delivery not started).
    #[inline]
    pub(crate) fn is_held(&self) -> bool {
        self.held
    }

    /// Cluster mode: it waits for its streams before its `connected` frame (held meanwhile).
    pub(crate) fn await_streams(&mut self) {
        self.awaiting = true;
        self.held = true;
        self.relane();
    }

    /// Whether it waits for its streams (see [`Connection::await_streams`]).
    #[inline]
    pub(crate) fn is_awaiting(&self) -> bool {
        self.awaiting
    }

    /// Cluster mode: whether its `resume` waits for the log (the resume window then ends
    /// nothing).
    pub(crate) fn set_resuming(&mut self, resuming: bool) {
        self.resuming = resuming;
    }

    /// Its streams are set up: live delivery covers what follows `user_base` and `tenant_base`;
    /// it stays held only for a resume window (`held`).
    pub(crate) fn streams_ready(&mut self, user_base: u64, tenant_base: u64, held: bool) {
        self.awaiting = false;
        self.held = held;
        self.relane();
        self.user_base = user_base;
        self.tenant_base = tenant_base;
    }

    /// Cluster mode: the stream started over in a new epoch: nothing was sent on it yet.
    pub(crate) fn restart_stream(&mut self, name: &StreamName) {
        match name {
            StreamName::User => (self.user_base, self.user_sent) = (0, false),
            StreamName::Tenant => (self.tenant_base, self.tenant_sent) = (0, false),
            StreamName::Room(room) => {
                // (The member entry's `sent` is reset with it: `Hub::reset_positions`.)
                if let Some(m) = self.rooms.iter_mut().find(|m| &m.room == room) {
                    m.base = 0;
                }
            }
        }
    }

    /// Ends the hold. Returns whether it was held.
    pub(crate) fn end_hold(&mut self) -> bool {
        let was = std::mem::replace(&mut self.held, false);
        self.relane();
        was
    }

    /// Takes the connection's one `resume`: false if it already had it.
    pub(crate) fn claim_resume(&mut self) -> bool {
        if self.resumed {
            return false;
        }
        self.resumed = true;
        true
    }

    /// The user stream's base and the highest seq sent on it (0: none). Anything sent on it is
    /// past the base.
    pub(crate) fn user_stream(&self) -> (u64, u64) {
        (self.user_base, if self.user_sent { self.user_base + 1 } else { 0 })
    }

    /// [`Connection::user_stream`] for the tenant stream.
    pub(crate) fn tenant_stream(&self) -> (u64, u64) {
        (self.tenant_base, if self.tenant_sent { self.tenant_base + 1 } else { 0 })
    }

    /// An event of the user's stream went out to it.
    #[inline]
    pub(crate) fn mark_user_sent(&mut self) {
        self.user_sent = true;
    }

    /// An event of the tenant's stream went out to it.
    #[inline]
    pub(crate) fn mark_tenant_sent(&mut self) {
        self.tenant_sent = true;
    }

    /// A replayed event of stream `name` went out to it (a replay after a window expired may be
    /// followed by a `resume`, which must not send below it). For a room, the replay marks the
    /// member entry (`routing::Member::sent`): nothing here.
    pub(crate) fn mark_replayed(&mut self, name: &StreamName) {
        match name {
            StreamName::User => self.user_sent = true,
            StreamName::Tenant => self.tenant_sent = true,
            StreamName::Room(_) => {}
        }
    }

    // --- Rooms (the back-pointers are kept by `routing::Tenant`)

    /// Its room memberships.
    #[inline]
    pub(crate) fn memberships(&self) -> &[Membership] {
        &self.rooms
    }

    /// Whether it is in `room`.
    pub(crate) fn in_room(&self, room: &str) -> bool {
        self.rooms.iter().any(|m| m.room.as_str() == room)
    }

    /// The slot of its membership of `room`.
    pub(crate) fn room_slot(&self, room: &str) -> Option<usize> {
        self.rooms.iter().position(|m| m.room.as_str() == room)
    }

    /// Joins `room` as its member at `pos`, live from `base`. Returns the membership's slot.
    pub(crate) fn add_membership(&mut self, room: RoomId, pos: u32, base: u64) -> u32 {
        let slot = self.rooms.len() as u32;
        self.rooms.push(Membership { room, pos, base, announced: true });
        slot
    }

    /// Cluster mode: the membership in `slot` waits for the room's stream before `joined`.
    pub(crate) fn defer_announcement(&mut self, slot: u32) {
        self.rooms[slot as usize].announced = false;
    }

    /// Cluster mode: the membership of `room` is announced, live from `base`. False if it was
    /// announced already (or is not a membership).
    pub(crate) fn announce(&mut self, room: &RoomId, base: u64) -> bool {
        match self.rooms.iter_mut().find(|m| &m.room == room) {
            Some(m) if !m.announced => {
                m.announced = true;
                m.base = base;
                true
            }
            _ => false,
        }
    }

    /// Removes the membership in `slot`; the last one moves into its place.
    pub(crate) fn remove_membership(&mut self, slot: usize) -> Membership {
        self.rooms.swap_remove(slot)
    }

    /// Its membership in `slot` now sits at `pos` in the room's member list.
    pub(crate) fn set_member_pos(&mut self, slot: u32, pos: u32) {
        self.rooms[slot as usize].pos = pos;
    }

    // --- Timer

    /// The earliest instant at which this connection has something to do, or `None` if every
    /// deadline lies past the end of the clock's range ("never": no timer). The armed timer may be
    /// earlier than this (activity moves deadlines later lazily) but never later: whatever moves
    /// it earlier re-arms the timer ([`Connections::rearm_if_earlier`]).
    pub(crate) fn next_deadline(&self, cfg: &Config) -> Option<Instant> {
        let heartbeat = match self.outstanding_ping() {
            Some(sent) => sent.checked_add(cfg.heartbeat.timeout),
            None => self.last_seen.checked_add(cfg.heartbeat.interval),
        };
        let session =
            self.expires_at.map(|exp| if self.refresh_sent { exp } else { refresh_at(exp, cfg) });
        // An awaiting connection's window has not started (it counts from the connect, once the
        // `connected` frame is out).
        let release = if self.held && !self.awaiting && !self.resuming {
            self.opened_at.checked_add(cfg.resume_window)
        } else {
            None
        };
        [heartbeat, session, release, self.lifetime_deadline(cfg)].into_iter().flatten().min()
    }

    /// Decides what is due at `now` and updates the connection's state as if it were done.
    fn due(&mut self, now: Instant, cfg: &Config) -> Due {
        if self.expires_at.is_some_and(|exp| now >= exp) {
            return Due { close: Some(CloseReason::SessionExpired), ..Due::default() };
        }
        // A deadline past the end of the clock's range is never due.
        let reached = |at: Option<Instant>| at.is_some_and(|at| now >= at);
        if reached(self.lifetime_deadline(cfg)) {
            return Due { close: Some(CloseReason::MaxLifetime), ..Due::default() };
        }
        let mut due = Due::default();
        match self.outstanding_ping() {
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
        due.release = self.held
            && !self.awaiting
            && !self.resuming
            && reached(self.opened_at.checked_add(cfg.resume_window));
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
/// close time that makes "recently closed" answerable, and every open connection's timer (its
/// heartbeat, pong timeout, session refresh and expiry, and resume window: see
/// [`Connection::next_deadline`]). Slots are bounded by `max_connections`, so this table is too.
#[derive(Debug)]
pub(crate) struct Connections {
    slab: Slab<Connection>,
    slots: Vec<SlotMeta>,
    /// Connections ever inserted: the last `Connection::order` handed out.
    opened: u64,
    /// One timer per open connection with a deadline, keyed by its slot.
    timers: TimerQueue<u32>,
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
    pub(crate) fn new() -> Self {
        Self { slab: Slab::new(), slots: Vec::new(), opened: 0, timers: TimerQueue::new() }
    }

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

    /// Opens `conn` and arms its timer for its first deadline.
    pub(crate) fn insert(&mut self, mut conn: Connection, cfg: &Config) -> ConnId {
        self.opened += 1;
        conn.order = self.opened;
        let deadline = conn.next_deadline(cfg);
        let index = self.slab.insert(conn);
        self.slab[index].timer = deadline.map(|at| self.timers.insert(at, index as u32));
        if index == self.slots.len() {
            self.slots.push(SlotMeta { generation: 0, closed_at: None });
        }
        let slot = &mut self.slots[index];
        slot.generation = slot.generation.wrapping_add(1);
        slot.closed_at = None;
        ConnId::new(index as u32, slot.generation)
    }

    /// Closes the connection in slot `index` (its timer is disarmed) and hands back its state.
    pub(crate) fn remove(&mut self, index: u32, now: Instant) -> Connection {
        self.slots[index as usize].closed_at = Some(now);
        let conn = self.slab.remove(index as usize);
        if let Some(timer) = conn.timer {
            self.timers.cancel(timer);
        }
        conn
    }

    /// The soonest connection deadline, and whose it is.
    pub(crate) fn poll_timeout(&self) -> Option<(Instant, ConnId)> {
        self.timers.peek_key().map(|(at, &index)| (at, self.id_of(index)))
    }

    /// The next connection whose timer is due at `now`, with what is due: its state is updated
    /// as if that were done, and its timer re-armed for its next deadline, so that the caller may
    /// close it (which disarms the timer) or act on it. `None` when nothing more is due.
    pub(crate) fn pop_due(&mut self, now: Instant, cfg: &Config) -> Option<(u32, Due)> {
        let index = self.timers.pop_due(now)?;
        let c = &mut self.slab[index as usize];
        let due = c.due(now, cfg);
        // Every outcome but a close leaves the next deadline in the future (or releases the
        // hold); a deadline that is still due moves on by a nanosecond so that a tick ends.
        let next = c.next_deadline(cfg).and_then(|at| {
            if at > now { Some(at) } else { now.checked_add(Duration::from_nanos(1)) }
        });
        c.timer = next.map(|at| self.timers.insert(at, index));
        Some((index, due))
    }

    /// Deadlines that move later are picked up lazily when the armed timer fires; one that moves
    /// earlier must move the timer now. (Activity usually moves a deadline later, but ending an
    /// outstanding ping moves it from `ping + timeout` to `now + interval`, which is earlier when
    /// the interval is the shorter.) Call it after anything that may move a deadline earlier.
    pub(crate) fn rearm_if_earlier(&mut self, index: u32, cfg: &Config) {
        let c = &mut self.slab[index as usize];
        match (c.next_deadline(cfg), c.timer) {
            (Some(at), Some(t)) if at < self.timers.deadline(t) => self.timers.reschedule(t, at),
            (Some(at), None) => c.timer = Some(self.timers.insert(at, index)),
            _ => {}
        }
    }

    /// When the timer of the connection in slot `index` fires, if it is armed.
    pub(crate) fn timer_deadline(&self, index: u32) -> Option<Instant> {
        self.slab[index as usize].timer.map(|t| self.timers.deadline(t))
    }

    /// Armed connection timers.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn armed(&self) -> usize {
        self.timers.len()
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
