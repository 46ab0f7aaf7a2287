//! The one reference model: operation sequences run against the hub and against a small model
//! of it, with checks after every step.
//!
//! The model (`Model`) is written from the design document and the public API docs, not from the
//! hub's internals: plain maps of live connections, held users, tenants and rooms (a room that
//! lost its last member is kept idle for `room_retention`, its stream still buffering: a join
//! within it continues the same epoch, and the tenant is kept while it holds users or rooms); per
//! stream a
//! counter and a recovery buffer (seq, time, frame text, who may see it); a token bucket per
//! allowance; a reconnect breaker per user; a retirement deadline per detached user. Where the docs
//! leave an order open it follows the documented one (a frame is size-checked, then parsed, then
//! rate-limited; an envelope's kind is checked before its target), and where several connect
//! refusals apply at once it accepts any of them. For every operation it predicts the call's result
//! and the exact multiset of actions the hub must queue: every `Deliver` down to the frame's text
//! (connected, error with its message, pong, refresh_required, skipped, resumed, joined, left,
//! event frames with epoch, seq, thread and redacted data), pings, closes, inbound messages, audits
//! and metrics (breaker changes included), and what a publish reports (delivered, skipped, closed,
//! held, position, `undeliverable`). It follows the delivery rules documented in `src/delivery.rs`
//! and `src/inbound.rs`: a `skipped` notice counts toward the limits with the frame it precedes;
//! control frames (`pong`, `error`, `refresh_required`, `joined`, `left`) are held to
//! `max_unwritten_bytes` too, and a connection that cannot take one is closed with `SlowConsumer`
//! instead; filters (`subscribe`/`unsubscribe`) do not end a resume window, so a replay honours
//! them; a held connection counts in `Published::held` and a message that reached one is not
//! undeliverable; every non-empty stream ages on a timer of its own (a `tick` at or after its
//! oldest message's `kept_at + max_age + 1ns` drops what is older than `max_age`, as does a publish
//! to it and the start of a replay from it); breakers are kept apart from users, by
//! `(tenant, user)`, and outlive them (issue 10: only abnormal closes of connections younger than
//! `probe_healthy_after`, opened after the last counted failure, count; entries expire on timers
//! of their own); a user's `message` quota is the user's, shared by its connections. On
//! top of that exact comparison each step asserts the four properties of the design (section 9)
//! directly:
//!
//! 1. every `Deliver` goes to a connection that is live, every live event frame to one whose
//!    `(tenant, user)` (room membership, role, thread filter) the publish target admits, and every
//!    replayed one to the connection that resumed (or whose resume window ended), from one of its
//!    own streams;
//! 2. no stale or closed id is honoured: the call fails, nothing is queued for the id, and an id
//!    whose slot now holds another connection gets `ConnError::Stale` plus an
//!    `AuditKind::StaleConnId` audit;
//! 3. `hub.stats()` equals the model's counters and gauges, field by field (breaker counters,
//!    skipped thinking frames, held-back and replayed messages, resumes, buffered messages and
//!    bytes, early evictions included), and `hub.check_invariants()` holds;
//! 4. per (connection, stream, epoch) the seqs of live event frames strictly increase, no
//!    (connection, stream, epoch, seq) is delivered twice (live or replayed), and a stream created
//!    anew gets a new epoch.
//!
//! Closes are checked for a reason consistent with the model (heartbeat timeout only after a ping
//! and `heartbeat.timeout` of silence, session expiry only at or after `expires_at`, `Replaced`
//! only under `EvictOldest` and for the connecting user, `ProtocolViolation` only once the
//! violation allowance is spent, `SlowConsumer` only from a publish, from the end of a resume
//! window, from `Hub::close` or for a control frame the connection is too far behind to take, the
//! others only from `Hub::close`); `joined` and `left` only from a `join` or `leave` of that
//! connection; pings only after `heartbeat.interval` of silence. Every step also checks that
//! redacted keys never reach a frame, that the recipients of one message share one buffer, that
//! `poll_timeout` is the last `now` while actions are queued and in the future after a tick, and
//! that the read-only views (unwritten bytes, pending skips, resume hold, buffered messages,
//! breaker state, detached users' retirement) and `poll_timeout` agree with the model (a timer,
//! age timers included, is never armed after the model's deadline).
//!
//! What the model takes from the hub instead of predicting, and why:
//! - stream epochs come from the seeded generator, one per stream created (a new tenant's before
//!   its first user's): the model reads the sequence for the seed off a scratch hub once (see
//!   [`crate::vocab::epochs`]) and gives each stream it creates the next one, so that it predicts
//!   every frame exactly (a `joined` frame's length decides whether it fits under the hard limit, and a room
//!   whose `joined` frame did not fit is dropped again unseen). The runner still checks that a
//!   stream created anew gets an epoch new for it and that it is stable afterwards;
//! - the docs leave open in which order timers that are due at the same `tick` run, and in which
//!   order the connections one fan-out found over their hard limit are closed; the model runs
//!   them in the order the hub's actions show. This matters for the breaker (a probe that times
//!   out in the tick that would have declared it healthy) and for `max_detached_users` (which
//!   users detach first, and so which older ones are evicted to make room);
//! - `max_detached_users` and `max_buffered_bytes` retire "the detached user closest to
//!   retirement"; among users with the same deadline the model evicts the one the hub retires
//!   first in the step.
//!
//! What is restricted, and so not covered here:
//! - in some cases the breaker's threshold is `u32::MAX`, which provably never trips (a case opens
//!   at most 60 connections, so it sees at most 60 abnormal closes); in the others it trips, with
//!   any `user_retention` (zero included) and `max_detached_users`;
//! - `retention.max_bytes` is never below the size of one event frame (150 bytes and up): a frame
//!   that does not fit on its own empties a non-empty buffer (that case, which once left an age
//!   timer armed, is `regression_a_frame_over_the_byte_bound_leaves_an_age_timer_armed`);
//! - a `resume` with more positions than a connection has streams does not fit in
//!   `max_frame_bytes` when generated (the model still checks the bound; [`GARBAGE`] covers it);
//! - the rate views (moving averages) and snapshots are not checked.
//!
//! Of the `regression_*` tests (`tests/properties_regressions.rs`), the first three are minimal
//! cases of bugs the properties found and that are fixed; the last two document bugs that are not.
//!
//! Who uses it: the property tests (`tests/properties.rs`, cases from [`crate::strategy`]), the
//! resume properties (`tests/resume_clients.rs`, and `tests/resume_props.rs`, whose devices send
//! [`In::Positions`] and [`In::Spoiled`] resumes from the shared client model's positions) and
//! the `ops` fuzz target (cases from `crate::fuzz`, feature `arbitrary`) all run
//! [`Runner::apply`] step by step; none keeps a model of its own. Forged ids ([`Who::forged`]) are predicted
//! like any other: stale when their slot holds a later occupant, unknown otherwise.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use crate::sim::Sim;
use crate::vocab::*;

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::{Value, json};
use switchboard::{
    Action, Audience, AuditKind, BreakerState, CloseReason, ClosedBy, Config, ConnError, ConnId,
    ConnectError, DisconnectReason, Envelope, EventKind, LimitKind, MetricEvent, PeerError,
    Principal, PublishError, ReceiveError, RefreshError, Retention, Role, RoomError, Target, Tier,
    UserLimitPolicy, UserPhase,
};

mod lifecycle;
mod publish;
mod runner;
mod wire;

pub use runner::{Runner, run};
use wire::*;

/// A token bucket kept as credit in nanoseconds: `burst` tokens of `interval` each, refilled
/// continuously; taking one needs a whole token.
/// Whether `id` is stale: from an earlier occupant of a slot that now holds a live connection
/// (generations grow at every reuse; an id forged with a later generation than the occupant's is
/// merely unknown).
fn superseded<'a>(mut live: impl Iterator<Item = &'a ConnId>, id: ConnId) -> bool {
    let generation = |c: ConnId| (c.to_u64() >> 32) as u32;
    live.any(|l| slot_of(*l) == slot_of(id) && generation(*l) > generation(id))
}

#[derive(Clone, Debug)]
struct Allowance {
    interval: u128,
    cap: u128,
    credit: u128,
    at: Ms,
}

impl Allowance {
    fn new(interval: Duration, burst: u32, now: Ms) -> Self {
        let interval = interval.as_nanos();
        let cap = interval * u128::from(burst.max(1));
        Self { interval, cap, credit: cap, at: now }
    }

    fn take(&mut self, now: Ms) -> bool {
        self.credit = (self.credit + u128::from(now - self.at) * 1_000_000).min(self.cap);
        self.at = now;
        if self.credit >= self.interval {
            self.credit -= self.interval;
            true
        } else {
            false
        }
    }
}

/// A GCRA bucket kept as debt in nanoseconds, independent of the rate it is charged at (a
/// user's `message` quota is shared by connections whose tiers may differ).
#[derive(Clone, Debug)]
struct Debt {
    debt: u128,
    at: Ms,
}

impl Debt {
    fn new(now: Ms) -> Self {
        Self { debt: 0, at: now }
    }

    fn take(&mut self, now: Ms, interval: Duration, burst: u32) -> bool {
        self.debt = self.debt.saturating_sub(u128::from(now - self.at) * 1_000_000);
        self.at = now;
        let interval = interval.as_nanos();
        if self.debt + interval > interval * u128::from(burst.max(1)) {
            return false;
        }
        self.debt += interval;
        true
    }
}

#[derive(Clone, Debug)]
struct MConn {
    tenant: usize,
    user: usize,
    tier: Tier,
    roles: u8,
    opened: Ms,
    /// Last inbound frame or pong (or the opening).
    last_act: Ms,
    /// When a ping went out that no sign of life has answered yet.
    ping_at: Option<Ms>,
    exp: Option<Ms>,
    refresh_sent: bool,
    threads: Option<Vec<usize>>,
    /// Rooms, with the room stream's seq when the connection joined.
    rooms: Vec<(usize, u64)>,
    /// Its place in the connection order (1, 2, …).
    order: u64,
    control: Allowance,
    violations: Allowance,
    peer_errors: u32,
    /// Bytes delivered and not yet confirmed by `written`.
    unwritten: u64,
    /// `agent_thinking` frames skipped since the last delivery.
    skipped: u32,
    /// In its resume window: live delivery has not started.
    held: bool,
    resumed: bool,
    /// The user and tenant streams' seqs at connect.
    user_base: u64,
    tenant_base: u64,
    /// Issue 10 item 5: the highest seq sent per stream name (`u`, `t`, `r:<room>` of a current
    /// membership), from the event frames delivered.
    sent: HashMap<String, u64>,
    /// Rooms left before the resume: (room, epoch, highest seq sent), at most
    /// `max_rooms_per_connection`, newest last; and whether that memory overflowed.
    left: Vec<(usize, u64, u64)>,
    left_forgotten: bool,
}

impl MConn {
    fn wants(&self, thread: Option<usize>) -> bool {
        match (&self.threads, thread) {
            (None, _) | (Some(_), None) => true,
            (Some(ts), Some(t)) => ts.contains(&t),
        }
    }

    fn has_role(&self, role: usize) -> bool {
        role < 8 && self.roles & (1 << role) != 0
    }

    fn in_room(&self, room: usize) -> bool {
        self.rooms.iter().any(|(r, _)| *r == room)
    }

    /// Whether a buffered message of this scope may be replayed to this connection.
    fn admits(&self, id: ConnId, scope: &MScope) -> bool {
        match scope {
            MScope::All => true,
            MScope::Thread(t) => self.wants(Some(*t)),
            MScope::Conn(c) => *c == id,
            MScope::Role(r) => self.has_role(*r),
        }
    }
}

/// Who may see a buffered message.
#[derive(Clone, Debug, PartialEq)]
enum MScope {
    All,
    Thread(usize),
    Conn(ConnId),
    Role(usize),
}

#[derive(Clone, Debug)]
struct MEntry {
    /// Issue 10 item 4: the global order it was kept in (the hub-wide cap sheds oldest first).
    ord: u64,
    seq: u64,
    at: Ms,
    frame: String,
    scope: MScope,
}

/// One incarnation of a stream: a fresh one gets a new `inc` (and must get a new epoch), learned
/// from the hub when it first reports it.
#[derive(Clone, Debug)]
struct MStream {
    inc: u64,
    epoch: u64,
    seq: u64,
    buf: VecDeque<MEntry>,
    bytes: usize,
}

impl MStream {
    /// The oldest seq still buffered (the next seq when nothing is).
    fn available_from(&self) -> u64 {
        self.buf.front().map_or(self.seq + 1, |e| e.seq)
    }

    /// Drops what exceeds the count, byte and age bounds, oldest first.
    fn trim(&mut self, now: Ms, r: &Retention) {
        let age = Model::ms(r.max_age);
        while let Some(front) = self.buf.front() {
            if self.buf.len() > r.max_messages || self.bytes > r.max_bytes || now - front.at > age {
                self.bytes -= front.frame.len();
                self.buf.pop_front();
            } else {
                break;
            }
        }
    }
}

/// A user's reconnect breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BState {
    Closed,
    /// Until when.
    Open(Ms),
    /// With its probe connection, once there is one.
    HalfOpen(Option<ConnId>),
}

#[derive(Clone, Debug)]
struct MUser {
    created: Ms,
    /// Live connections, oldest first.
    conns: Vec<ConnId>,
    /// While detached: since when, and when it retires.
    detached: Option<(Ms, Ms)>,
    stream: MStream,
    /// The user's `message` quota, shared by its connections (issue 10 item 15).
    messages: Debt,
}

/// A user's reconnect breaker, kept apart from the user so that it outlives it (issue 10 items
/// 1, 2, 13; `src/breaker.rs`).
#[derive(Clone, Debug)]
struct MBreaker {
    state: BState,
    /// Counted failures within the window, while closed.
    failures: VecDeque<Ms>,
    /// While half-open with a probe: when it opened.
    probe_since: Option<Ms>,
    /// Closes of connections whose order is at most this are coalesced into the last failure.
    coalesce_upto: u64,
    /// When a closed entry, or a half-open one without a probe, is forgotten.
    expires: Ms,
}

#[derive(Clone, Debug)]
struct MRoom {
    members: Vec<ConnId>,
    stream: MStream,
    /// Without members and kept for `room_retention`: until when (`src/routing.rs`). A join
    /// before then revives it with its stream (same epoch); at that instant it is dropped, and a
    /// later join starts a new stream.
    idle: Option<Ms>,
}

/// A stream, by owner.
#[derive(Clone, Copy, Debug)]
enum SKey {
    User(usize, usize),
    Tenant(usize),
    Room(usize, usize),
}

#[derive(Clone, Debug, Default)]
struct Counters {
    users_created: u64,
    users_retired: u64,
    users_evicted: u64,
    opened: u64,
    closed: u64,
    closed_by: HashMap<ClosedBy, u64>,
    refused_expired: u64,
    limits: HashMap<LimitKind, u64>,
    security: u64,
    audits: u64,
    stale: u64,
    publishes: u64,
    undeliverable: u64,
    deliveries: u64,
    bytes_delivered: u64,
    bytes_written: u64,
    frames_received: u64,
    inbound: u64,
    protocol_errors: u64,
    pings: u64,
    pongs: u64,
    refresh_required: u64,
    refreshed: u64,
    thinking_skipped: u64,
    held_back: u64,
    replayed: u64,
    resumes_recovered: u64,
    resumes_unrecovered: u64,
    breakers_opened: u64,
    breaker_refusals: u64,
    breakers_evicted: u64,
    lifetime: Ms,
}

/// What a publish should report: recipients delivered, skipped, closed and held, and the stream
/// position (name, seq, incarnation).
#[derive(Clone, Debug, Default)]
struct Expect {
    delivered: usize,
    skipped: usize,
    closed: usize,
    held: usize,
    position: Option<(String, u64, u64)>,
}

/// What the model takes from the hub's outputs of the current step (see the module docs).
#[derive(Clone, Debug, Default)]
struct Hints {
    /// Index of the first action concerning each connection.
    conn_order: HashMap<ConnId, usize>,
    /// Index of the first breaker change a timer makes (to half-open or closed), per user.
    breaker_order: HashMap<(usize, usize), usize>,
    /// Index of the first `UserRetired` metric per user.
    retired_order: HashMap<(usize, usize), usize>,
}

/// Something due in a tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Due {
    Conn(ConnId),
}

#[derive(Clone, Debug)]
struct Model {
    cfg: Config,
    /// The latest `now` the hub has seen.
    clock: Ms,
    live: BTreeMap<ConnId, MConn>,
    /// Every id ever minted, in order.
    minted: Vec<ConnId>,
    binding: HashMap<ConnId, (usize, usize)>,
    closed_at: HashMap<ConnId, Ms>,
    users: BTreeMap<(usize, usize), MUser>,
    breakers: BTreeMap<(usize, usize), MBreaker>,
    tenants: BTreeMap<usize, MStream>,
    rooms: BTreeMap<(usize, usize), MRoom>,
    next_inc: u64,
    /// Issue 10 item 4: the order of the next kept message.
    next_ord: u64,
    c: Counters,
    /// The outputs the current operation must produce.
    out: Vec<String>,
    /// The `id` an `error` frame refusing the frame being received carries (`raw::echo_id`).
    echo: Option<String>,
    hints: Hints,
}

impl Model {
    fn new(cfg: Config) -> Self {
        Self {
            cfg,
            clock: 0,
            live: BTreeMap::new(),
            minted: Vec::new(),
            binding: HashMap::new(),
            closed_at: HashMap::new(),
            users: BTreeMap::new(),
            breakers: BTreeMap::new(),
            tenants: BTreeMap::new(),
            rooms: BTreeMap::new(),
            next_inc: 0,
            next_ord: 0,
            c: Counters::default(),
            out: Vec::new(),
            echo: None,
            hints: Hints::default(),
        }
    }

    fn ms(d: Duration) -> Ms {
        d.as_millis() as Ms
    }

    /// The hub never lets time go backwards.
    fn observe(&mut self, now: Ms) -> Ms {
        self.clock = self.clock.max(now);
        self.clock
    }

    /// A stream created anew: the generator's next epoch.
    fn stream(&mut self) -> MStream {
        self.next_inc += 1;
        let epoch = *epochs().get(self.next_inc as usize - 1).expect("enough epochs drawn");
        MStream { inc: self.next_inc, epoch, seq: 0, buf: VecDeque::new(), bytes: 0 }
    }

    fn stream_ref(&self, key: SKey) -> &MStream {
        match key {
            SKey::User(t, u) => &self.users[&(t, u)].stream,
            SKey::Tenant(t) => &self.tenants[&t],
            SKey::Room(t, r) => &self.rooms[&(t, r)].stream,
        }
    }

    fn stream_mut(&mut self, key: SKey) -> &mut MStream {
        match key {
            SKey::User(t, u) => &mut self.users.get_mut(&(t, u)).expect("held user").stream,
            SKey::Tenant(t) => self.tenants.get_mut(&t).expect("tenant with state"),
            SKey::Room(t, r) => &mut self.rooms.get_mut(&(t, r)).expect("room with members").stream,
        }
    }

    /// Messages and frame bytes in all recovery buffers.
    fn buffered(&self) -> (u64, u64) {
        let users = self.users.values().map(|u| &u.stream);
        let rooms = self.rooms.values().map(|r| &r.stream);
        users
            .chain(self.tenants.values())
            .chain(rooms)
            .fold((0, 0), |(n, b), s| (n + s.buf.len() as u64, b + s.bytes as u64))
    }

    /// Keeps a message for recovery, within the stream's bounds. Issue 10 item 4: a frame larger
    /// than `max_buffered_bytes` is not kept and empties the buffer; the hub-wide cap is enforced
    /// after the publish by [`Model::shed_to_cap`].
    fn keep(&mut self, key: SKey, seq: u64, frame: &str, scope: MScope) {
        let now = self.clock;
        let (retention, cap) = (self.cfg.retention, self.cfg.max_buffered_bytes);
        self.next_ord += 1;
        let ord = self.next_ord;
        let s = self.stream_mut(key);
        if frame.len() as u64 > cap {
            s.buf.clear();
            s.bytes = 0;
            return;
        }
        s.buf.push_back(MEntry { ord, seq, at: now, frame: frame.to_owned(), scope });
        s.bytes += frame.len();
        s.trim(now, &retention);
    }

    /// Issue 10 item 4: `max_buffered_bytes` is a hard cap. Sheds the oldest buffered message
    /// across all streams (a stream's newest too) until the total fits.
    fn shed_to_cap(&mut self) {
        while self.buffered().1 > self.cfg.max_buffered_bytes {
            let users = self.users.values_mut().map(|u| &mut u.stream);
            let rooms = self.rooms.values_mut().map(|r| &mut r.stream);
            let oldest = users
                .chain(self.tenants.values_mut())
                .chain(rooms)
                .filter(|s| !s.buf.is_empty())
                .min_by_key(|s| s.buf.front().map(|e| e.ord));
            let Some(s) = oldest else { break };
            let front = s.buf.pop_front().expect("non-empty");
            s.bytes -= front.frame.len();
        }
    }

    fn emit(&mut self, s: String) {
        if let Some(kind) = s.strip_prefix("audit ") {
            self.c.audits += 1;
            // The README's list of security violations, by the names `o_audit` writes.
            const VIOLATIONS: [&str; 6] = [
                "ForeignStream ",
                "StaleConnId ",
                "MalformedFrame ",
                "OversizedFrame ",
                "ViolationClose ",
                "GlobalBroadcastDenied ",
            ];
            self.c.security += u64::from(VIOLATIONS.iter().any(|v| kind.starts_with(v)));
        }
        self.out.push(s);
    }

    /// Queues a frame for a connection, preceded by a `skipped` notice if thinking frames were
    /// skipped since its last delivery.
    fn deliver(&mut self, id: ConnId, frame: &str) {
        let c = self.live.get_mut(&id).expect("delivering to a live connection");
        let mut frames = Vec::new();
        if c.skipped > 0 {
            frames.push(f_skipped(c.skipped));
            c.skipped = 0;
        }
        frames.push(frame.to_owned());
        // Issue 10 item 5: remember the highest seq of each stream sent (event frames only).
        if let Ok(v) = serde_json::from_str::<Value>(frame) {
            if let (Some(name), Some(seq), false) =
                (v["stream"].as_str(), v["seq"].as_u64(), v["type"] == "joined")
            {
                let sent = c.sent.entry(name.to_owned()).or_default();
                *sent = (*sent).max(seq);
            }
        }
        for f in frames {
            c.unwritten += f.len() as u64;
            self.c.deliveries += 1;
            self.c.bytes_delivered += f.len() as u64;
            self.out.push(o_deliver(id, &f));
        }
    }

    /// Queues a control frame (`pong`, `error`, `refresh_required`, `joined`, `left`) under the
    /// connection's hard limit, counting the `skipped` notice it would carry; a connection that
    /// cannot take it is closed with `SlowConsumer` instead. Returns whether it is still open.
    fn control(&mut self, id: ConnId, frame: &str) -> bool {
        let c = &self.live[&id];
        if c.unwritten + notice_len(c.skipped) + frame.len() as u64 > self.cfg.max_unwritten_bytes {
            self.close_conn(id, ClosedBy::Hub(CloseReason::SlowConsumer));
            return false;
        }
        self.deliver(id, frame);
        true
    }

    fn limit(&mut self, kind: LimitKind, conn: Option<ConnId>, t: usize, u: usize) {
        *self.c.limits.entry(kind).or_default() += 1;
        self.emit(o_limit(kind));
        let audit =
            o_audit(AuditKind::LimitHit(kind), conn, Some(&tenant_name(t)), Some(&user_name(u)));
        self.emit(audit);
    }

    /// Resolves an id the caller presents.
    fn lookup(&mut self, id: ConnId) -> Result<(), ConnError> {
        if self.live.contains_key(&id) {
            return Ok(());
        }
        if superseded(self.live.keys(), id) {
            self.c.stale += 1;
            self.emit(o_audit(AuditKind::StaleConnId, Some(id), None, None));
            return Err(ConnError::Stale);
        }
        let latest = self.minted.iter().rev().find(|m| slot_of(**m) == slot_of(id)) == Some(&id);
        let tombstone = Self::ms(self.cfg.tombstone_ttl);
        let recently_closed =
            latest && self.closed_at.get(&id).is_some_and(|&at| self.clock - at <= tombstone);
        Err(ConnError::Unknown { recently_closed })
    }

    // --- connections ---

    /// Whether a connect is admitted (and how many of the user's connections it evicts), or the
    /// errors any of which the hub may answer.
    fn admission(
        &mut self,
        t: usize,
        u: usize,
        tier: Tier,
        exp: Option<Ms>,
    ) -> Result<usize, Vec<ConnectError>> {
        let now = self.clock;
        if exp.is_some_and(|e| e <= now) {
            self.c.refused_expired += 1;
            return Err(vec![ConnectError::SessionExpired]);
        }
        let mut refused = Vec::new();
        let held = self.users.get(&(t, u)).map_or(0, |s| s.conns.len());
        if let Some(b) = self.breakers.get(&(t, u)) {
            // Refused until the breaker is half-open, or while its probe proves itself; never
            // told to retry in less than a second.
            let healthy = Self::ms(self.cfg.breaker.probe_healthy_after);
            let retry_at = match b.state {
                BState::Closed | BState::HalfOpen(None) => None,
                BState::Open(until) => Some(until),
                BState::HalfOpen(Some(_)) => Some(b.probe_since.expect("a probe") + healthy),
            };
            if let Some(at) = retry_at {
                let retry_after = Duration::from_millis(at.saturating_sub(now).max(1_000));
                refused.push(ConnectError::BreakerOpen { retry_after });
            }
        }
        let limit = self.cfg.tiers.get(tier).max_connections_per_user;
        let mut evict = 0;
        if held >= limit as usize {
            match self.cfg.user_limit_policy {
                UserLimitPolicy::Reject => refused.push(ConnectError::UserLimit { tier, limit }),
                _ => evict = held + 1 - limit as usize,
            }
        }
        if self.live.len() - evict >= self.cfg.max_connections as usize {
            refused.push(ConnectError::TooManyConnections { limit: self.cfg.max_connections });
        }
        if let Some(cap) = self.cfg.max_connections_per_tenant {
            let in_tenant = self.live.values().filter(|c| c.tenant == t).count();
            if in_tenant - evict >= cap as usize {
                refused.push(ConnectError::TenantLimit { limit: cap });
            }
        }
        if refused.is_empty() { Ok(evict) } else { Err(refused) }
    }

    fn refuse(&mut self, err: &ConnectError, t: usize, u: usize) {
        let kind = match err {
            ConnectError::UserLimit { .. } => LimitKind::UserConnections,
            ConnectError::TooManyConnections { .. } => LimitKind::TotalConnections,
            ConnectError::TenantLimit { .. } => LimitKind::TenantConnections,
            ConnectError::BreakerOpen { .. } => {
                self.c.breaker_refusals += 1;
                let (tn, un) = (tenant_name(t), user_name(u));
                self.emit(o_audit(AuditKind::BreakerRefused, None, Some(&tn), Some(&un)));
                return;
            }
            _ => return,
        };
        self.limit(kind, None, t, u);
    }

    #[allow(clippy::too_many_arguments)]
    fn admit(
        &mut self,
        id: ConnId,
        t: usize,
        u: usize,
        tier: Tier,
        roles: u8,
        exp: Option<Ms>,
        evict: usize,
    ) {
        let now = self.clock;
        let (tn, un) = (tenant_name(t), user_name(u));
        if let Some(user) = self.users.get_mut(&(t, u)) {
            user.detached = None;
        } else {
            if !self.tenants.contains_key(&t) {
                let s = self.stream();
                self.tenants.insert(t, s);
            }
            let stream = self.stream();
            let user = MUser {
                created: now,
                conns: Vec::new(),
                detached: None,
                stream,
                messages: Debt::new(now),
            };
            self.users.insert((t, u), user);
            self.c.users_created += 1;
            self.emit(o_user_created(&tn, &un));
        }
        let cfg = &self.cfg;
        let user = &self.users[&(t, u)];
        let tenant = &self.tenants[&t];
        let conn = MConn {
            tenant: t,
            user: u,
            tier,
            roles,
            opened: now,
            last_act: now,
            ping_at: None,
            exp,
            refresh_sent: false,
            threads: None,
            rooms: Vec::new(),
            order: self.c.opened + 1,
            control: Allowance::new(
                Duration::from_secs(60) / cfg.control_frames_per_minute,
                cfg.control_burst,
                now,
            ),
            violations: Allowance::new(cfg.violation_refill, cfg.max_violations, now),
            peer_errors: 0,
            unwritten: 0,
            skipped: 0,
            held: !cfg.resume_window.is_zero(),
            resumed: false,
            user_base: user.stream.seq,
            tenant_base: tenant.seq,
            sent: HashMap::new(),
            left: Vec::new(),
            left_forgotten: false,
        };
        let frame = f_connected(
            id,
            (t, u),
            Self::ms(cfg.heartbeat.interval),
            exp.map(|e| e - now),
            (user.stream.epoch, user.stream.seq),
            (tenant.epoch, tenant.seq),
        );
        self.live.insert(id, conn);
        self.minted.push(id);
        self.binding.insert(id, (t, u));
        let user = self.users.get_mut(&(t, u)).unwrap();
        user.conns.push(id);
        // While half-open, the first connection admitted is the probe.
        if let Some(b) = self.breakers.get_mut(&(t, u)) {
            if b.state == BState::HalfOpen(None) {
                b.state = BState::HalfOpen(Some(id));
                b.probe_since = Some(now);
            }
        }
        self.c.opened += 1;
        self.emit(o_opened(id, &tn, &un, tier));
        self.deliver(id, &frame);
        for _ in 0..evict {
            let oldest = self.users[&(t, u)].conns[0];
            self.limit(LimitKind::UserConnectionsEvicted, Some(oldest), t, u);
            self.close_conn(oldest, ClosedBy::Hub(CloseReason::Replaced));
        }
    }

    fn close_conn(&mut self, id: ConnId, by: ClosedBy) {
        let now = self.clock;
        let c = self.live.remove(&id).expect("closing a live connection");
        for (r, _) in &c.rooms {
            let key = (c.tenant, *r);
            let room = self.rooms.get_mut(&key).expect("member of a live room");
            room.members.retain(|m| *m != id);
            if room.members.is_empty() {
                self.room_emptied(key);
            }
        }
        self.closed_at.insert(id, now);
        if let ClosedBy::Hub(reason) = by {
            self.emit(o_close(id, reason));
        }
        let (tn, un) = (tenant_name(c.tenant), user_name(c.user));
        self.emit(o_closed(id, &tn, &un, now - c.opened, by));
        self.c.closed += 1;
        *self.c.closed_by.entry(by).or_default() += 1;
        self.c.lifetime += now - c.opened;
        let key = (c.tenant, c.user);
        let abnormal = matches!(
            by,
            ClosedBy::Transport(DisconnectReason::Abnormal)
                | ClosedBy::Hub(
                    CloseReason::HeartbeatTimeout
                        | CloseReason::SlowConsumer
                        | CloseReason::ProtocolViolation
                )
        );
        let user = self.users.get_mut(&key).expect("a live connection's user is held");
        user.conns.retain(|m| *m != id);
        let detached = user.conns.is_empty();
        let opened = self.breaker_closed(key, id, &c, abnormal);
        if opened {
            self.c.breakers_opened += 1;
            self.emit(o_audit(AuditKind::BreakerOpened, None, Some(&tn), Some(&un)));
            self.breaker_changed(key);
        }
        if detached {
            self.detach(key);
        }
    }
}

/// The parts of an envelope that make up its frame.
#[derive(Clone, Debug)]
struct Msg {
    kind: String,
    /// `agent_thinking`: skipped for a connection that is behind.
    low: bool,
    thread: Option<usize>,
    /// The payload's number.
    n: u64,
}

/// A publish target with its connection resolved to an id.
#[derive(Clone, Debug)]
enum ResolvedTarget {
    User(usize, usize),
    Thread(usize, usize, usize),
    Conn(ConnId),
    Room(usize, usize),
    Tenant(usize, Option<usize>),
    Everyone,
}
