//! Property: clients (a user's devices) that disconnect, reconnect and `resume` with the
//! positions they last saw receive, per stream and across their successive connections, exactly
//! the published sequence filtered to what they may see: no duplicates, no gaps, in order, as
//! long as every resume came within retention; and the `resumed` frame says `recovered: false`
//! exactly when it did not (epoch changed, or the gap is no longer buffered).
//!
//! The model knows nothing of the hub's internals. It learns epochs from the frames the hub sends
//! (`connected`, `joined`, `resumed`, `Published::position`) and checks that they change exactly
//! when a stream is created anew (a user retired and seen again, a tenant dropped, a room
//! emptied). It keeps every published message with the rule that routed it, and for each
//! connection decides what it must see: live messages under the connection's current thread
//! filter, and on resume the buffered range `(client's seq, upto]` under the filter the
//! connection has at that moment. A client takes its starting positions from `connected` (`u`,
//! `t`) and `joined` (rooms), and otherwise remembers the last event it saw per stream.
//!
//! Retention is modelled exactly, not approximately: a stream keeps its last `MAX_MESSAGES`
//! messages, and a message leaves it once it is older than `MAX_AGE`, at the first of: the
//! stream gets a message, a replay from the stream is about to start, or the stream's age timer
//! fires (a `tick` at or after `kept_at + MAX_AGE + 1ns`). Ticks come on time, or late: the clock
//! moves, the next call reaches the hub before the tick does. The buffered gauge, each user's
//! buffer, and each `resumed` report's `available_from` are checked against the model.
//!
//! With a resume window, the client sets its thread filter first (right after connecting, or
//! right before resuming), then resumes: the replay honours the filter, and `Published::held`
//! counts exactly the held connections a message is for.
//!
//! Backpressure is kept out: every delivered frame is confirmed with `written` at once.
//!
//! The client side is the shared client model (`switchboard_testkit::client`): what each device
//! remembers per stream identity, the log of everything published, and its isolation, order,
//! exact-delivery and unrecovered-reason checks, the same ones the simulation runs. What this file
//! keeps of its own is the hub side of the prediction (which resumes recover, what is buffered,
//! the counters) and its operations: the shared `Op` and `Runner` (which
//! `tests/resume_clients.rs` runs resumes over) do not yet have per-client thread filters set
//! before a resume, spoiled positions sent before a real resume, or late ticks.
mod common;

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use common::Sim;
use proptest::prelude::*;
use serde_json::{Value, json};
use switchboard::{
    Action, Audience, AuditKind, BreakerConfig, Config, ConnError, ConnId, DisconnectReason,
    Envelope, EventKind, PeerError, Principal, PublishError, ReceiveError, Retention, StreamName,
    Target,
};
use switchboard_testkit::client::{Client, Log, Published, StreamKey, Visibility};
use switchboard_testkit::frames::{EventFrame, parse};
use switchboard_testkit::strategy::cases;
use switchboard_testkit::vocab::event_kind;

const TENANTS: [&str; 2] = ["acme", "globex"];
/// (tenant index, user). `dave` never connects: publishing to him reaches no stream.
const USERS: [(usize, &str); 4] = [(0, "alice"), (0, "bob"), (1, "carol"), (0, "dave")];
const CONNECTING_USERS: usize = 3;
const DEVICES_PER_USER: usize = 2;
const CLIENTS: usize = CONNECTING_USERS * DEVICES_PER_USER;
const ROOMS: [&str; 2] = ["lobby", "ops"];
const THREADS: [&str; 2] = ["t1", "t2"];
const ADMIN: &str = "admin";

const MAX_MESSAGES: usize = 6;
const MAX_AGE: Duration = Duration::from_secs(30);
const USER_RETENTION: Duration = Duration::from_secs(60);
/// Clock steps. With steps of whole seconds and of one nanosecond, a message's age lands exactly
/// on `MAX_AGE` (kept) and one nanosecond past it (dropped), and a detached user's on
/// `USER_RETENTION`.
const TICKS: [Duration; 9] = [
    Duration::from_nanos(1),
    Duration::from_secs(1),
    Duration::from_secs(5),
    Duration::from_secs(10),
    Duration::from_secs(20),
    Duration::from_secs(29),
    Duration::from_secs(30),
    Duration::from_secs(31),
    Duration::from_secs(61),
];
/// How many ways `bad_position` can spoil a position.
const BAD_POSITIONS: usize = 6;

/// One of the six kinds a publish may have (the vocabulary's; the seventh, reserved, is left out).
fn kind(i: usize) -> EventKind {
    event_kind(i % 6)
}

fn config(resume_window: Duration) -> Config {
    Config {
        retention: Retention { max_messages: MAX_MESSAGES, max_bytes: 1 << 30, max_age: MAX_AGE },
        user_retention: USER_RETENTION,
        resume_window,
        // The breaker is exercised elsewhere; here abnormal closes must not lock clients out.
        breaker: BreakerConfig { threshold: 1_000_000, ..BreakerConfig::default() },
        max_inflight_bytes: 1 << 30,
        max_unwritten_bytes: 1 << 30,
        ..Config::default()
    }
}

/// The position `(epoch, seq)` spoiled in one of `BAD_POSITIONS` ways: wrongly typed (string,
/// negative, fractional, a list, null) or incomplete. The hub must answer `invalid_field`.
fn bad_position(variant: usize, epoch: u64, seq: u64) -> Value {
    match variant % BAD_POSITIONS {
        0 => json!({"epoch": epoch.to_string(), "seq": seq}),
        1 => json!({"epoch": epoch, "seq": -1}),
        2 => json!({"epoch": epoch, "seq": seq as f64 + 0.5}),
        3 => json!([epoch, seq]),
        4 => json!({"epoch": null, "seq": seq}),
        _ => json!({"epoch": epoch}),
    }
}

// ---------------------------------------------------------------------------------------------
// Operations

#[derive(Clone, Debug)]
struct ClientSpec {
    /// Threads the client narrows its connections to (`None`: all of its user's events).
    filter: Option<Vec<usize>>,
    admin: bool,
    /// Rooms the application puts every connection of this client into when it connects.
    rooms: Vec<usize>,
    /// With a window: narrow right before resuming instead of right after connecting.
    late_subscribe: bool,
    /// Before its real `resume`, the client sends one with a spoiled position (which way).
    bad_resume: Option<usize>,
    /// The client's positions carry fields of its own, which the hub must ignore.
    extra_fields: bool,
}

#[derive(Clone, Debug)]
enum Op {
    PublishUser {
        user: usize,
        thread: Option<usize>,
        kind: usize,
    },
    PublishThread {
        user: usize,
        thread: usize,
        kind: usize,
    },
    PublishConn {
        client: usize,
        kind: usize,
    },
    PublishRoom {
        tenant: usize,
        room: usize,
        kind: usize,
    },
    PublishTenant {
        tenant: usize,
        admin_only: bool,
        kind: usize,
    },
    Disconnect {
        client: usize,
        abnormal: bool,
    },
    Connect {
        client: usize,
    },
    /// With a resume window: the client's `resume` arrives now.
    Resume {
        client: usize,
    },
    /// The application puts the client's live connection into a room (again).
    Join {
        client: usize,
        room: usize,
    },
    /// The application takes the client's live connection out of a room.
    Leave {
        client: usize,
        room: usize,
    },
    /// The clock moves by `d`. On time: the hub's `tick` comes at once. Late: the next operation
    /// reaches the hub first, at the new time, and the tick right after it (if that operation
    /// moves the clock again, the pending tick comes first).
    Tick {
        d: Duration,
        late: bool,
    },
}

fn spec() -> impl Strategy<Value = ClientSpec> {
    (
        prop_oneof![Just(None), Just(Some(vec![0])), Just(Some(vec![1])), Just(Some(vec![0, 1]))],
        any::<bool>(),
        prop_oneof![Just(vec![]), Just(vec![0]), Just(vec![1]), Just(vec![0, 1])],
        any::<bool>(),
        proptest::option::weighted(0.25, 0..BAD_POSITIONS),
        any::<bool>(),
    )
        .prop_map(|(filter, admin, rooms, late_subscribe, bad_resume, extra_fields)| {
            ClientSpec { filter, admin, rooms, late_subscribe, bad_resume, extra_fields }
        })
}

fn op() -> impl Strategy<Value = Op> {
    let k = 0..6usize;
    let d = || proptest::sample::select(TICKS.to_vec());
    prop_oneof![
        4 => (0..USERS.len(), proptest::option::of(0..2usize), k.clone())
            .prop_map(|(user, thread, kind)| Op::PublishUser { user, thread, kind }),
        2 => (0..USERS.len(), 0..2usize, k.clone())
            .prop_map(|(user, thread, kind)| Op::PublishThread { user, thread, kind }),
        2 => (0..CLIENTS, k.clone()).prop_map(|(client, kind)| Op::PublishConn { client, kind }),
        3 => (0..2usize, 0..2usize, k.clone())
            .prop_map(|(tenant, room, kind)| Op::PublishRoom { tenant, room, kind }),
        2 => (0..2usize, any::<bool>(), k)
            .prop_map(|(tenant, admin_only, kind)| Op::PublishTenant { tenant, admin_only, kind }),
        3 => (0..CLIENTS, any::<bool>())
            .prop_map(|(client, abnormal)| Op::Disconnect { client, abnormal }),
        4 => (0..CLIENTS).prop_map(|client| Op::Connect { client }),
        2 => (0..CLIENTS).prop_map(|client| Op::Resume { client }),
        1 => (0..CLIENTS, 0..2usize).prop_map(|(client, room)| Op::Join { client, room }),
        1 => (0..CLIENTS, 0..2usize).prop_map(|(client, room)| Op::Leave { client, room }),
        3 => d().prop_map(|d| Op::Tick { d, late: false }),
        2 => d().prop_map(|d| Op::Tick { d, late: true }),
    ]
}

// ---------------------------------------------------------------------------------------------
// The model

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Key {
    User(usize),
    Tenant(usize),
    Room(usize, usize),
}

impl Key {
    /// The stream's identity in the shared client model.
    fn stream(self) -> StreamKey {
        match self {
            Key::User(u) => StreamKey::user(TENANTS[USERS[u].0], USERS[u].1),
            Key::Tenant(t) => StreamKey::tenant(TENANTS[t]),
            Key::Room(t, r) => StreamKey::room(TENANTS[t], ROOMS[r]),
        }
    }
}

/// One stream as the model sees it. `alive` while the hub holds it; `epoch` is `None` until the
/// current incarnation's epoch has been observed.
#[derive(Debug, Default)]
struct MStream {
    alive: bool,
    epoch: Option<u64>,
    seq: u64,
    /// (seq, kept at) of what the hub buffers now.
    buf: VecDeque<(u64, Instant)>,
    past_epochs: HashSet<u64>,
}

impl MStream {
    fn start(&mut self) {
        assert!(!self.alive);
        self.alive = true;
        self.epoch = None;
        self.seq = 0;
        self.buf.clear();
    }

    fn end(&mut self) {
        assert!(self.alive);
        self.alive = false;
        if let Some(e) = self.epoch.take() {
            self.past_epochs.insert(e);
        }
        self.buf.clear();
    }

    /// Records (or checks) the epoch the hub reports for the current incarnation.
    fn observe(&mut self, epoch: u64, what: &str) {
        assert!(self.alive, "{what}: hub reports a stream the model says does not exist");
        match self.epoch {
            Some(e) => assert_eq!(e, epoch, "{what}: the epoch changed within one incarnation"),
            None => {
                assert!(
                    !self.past_epochs.contains(&epoch),
                    "{what}: a stream created anew reuses an old epoch"
                );
                self.epoch = Some(epoch);
            }
        }
    }

    /// Keeps message `seq` at `now`: then the oldest go while over the count or older than
    /// `MAX_AGE`.
    fn keep(&mut self, seq: u64, now: Instant) {
        assert_eq!(self.buf.back().map_or(seq - 1, |b| b.0), seq - 1, "contiguous");
        self.buf.push_back((seq, now));
        while self.buf.len() > MAX_MESSAGES || self.too_old(now) {
            self.buf.pop_front();
        }
    }

    /// Drops what is older than `MAX_AGE` at `now`.
    fn trim_age(&mut self, now: Instant) {
        while self.too_old(now) {
            self.buf.pop_front();
        }
    }

    fn too_old(&self, now: Instant) -> bool {
        self.buf.front().is_some_and(|(_, at)| now.saturating_duration_since(*at) > MAX_AGE)
    }

    /// The oldest seq buffered (`seq + 1` when nothing is).
    fn available_from(&self) -> u64 {
        self.buf.front().map_or(self.seq + 1, |b| b.0)
    }
}

#[derive(Debug)]
struct Live {
    id: ConnId,
    /// In its resume window: nothing goes out live yet.
    held: bool,
    /// When it connected: its window ends `resume_window` later.
    opened_at: Instant,
    /// Its `resume` was accepted (from then on a room it joins starts at the `joined` position).
    resumed: bool,
    /// The client has sent its `subscribe` frames.
    subscribed: bool,
    /// The thread filter the hub applies now.
    filter: Option<Vec<usize>>,
    /// Rooms the connection is in, in joining order.
    rooms: Vec<usize>,
    /// Each stream's seq when the connection attached to it.
    bases: HashMap<Key, u64>,
}

/// A device of a user: the shared client model (what it remembers and received per stream, what
/// it may see) and its connection here.
#[derive(Debug)]
struct Device {
    user: usize,
    spec: ClientSpec,
    live: Option<Live>,
    last_closed: Option<ConnId>,
    client: Client,
}

impl Device {
    fn tenant(&self) -> usize {
        USERS[self.user].0
    }

    /// The streams of its live connection.
    fn live_keys(&self) -> Vec<Key> {
        let t = self.tenant();
        let live = self.live.as_ref().expect("live");
        let mut keys = vec![Key::User(self.user), Key::Tenant(t)];
        keys.extend(live.rooms.iter().map(|&r| Key::Room(t, r)));
        keys
    }

    fn position(&self, key: Key) -> Option<(u64, u64)> {
        self.client.position(&key.stream())
    }

    /// Ends the current stretch of `key`: everything expected must have arrived.
    fn settle(&mut self, key: Key) {
        self.client.settle(&key.stream()).unwrap_or_else(|e| panic!("{e}"));
    }

    fn expect(&mut self, key: Key, ids: Vec<u64>) {
        self.client.expect(&key.stream(), ids);
    }
}

#[derive(Debug, Default)]
struct UserModel {
    exists: bool,
    active: usize,
    detached_at: Option<Instant>,
}

/// A predicted `resume` outcome for one stream.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Outcome {
    Recovered,
    Lost(&'static str),
}

/// Counters the model predicts for `HubStats`.
#[derive(Debug, Default)]
struct Counts {
    publishes: u64,
    undeliverable: u64,
    held_back: u64,
    replayed: u64,
    resumes_recovered: u64,
    resumes_unrecovered: u64,
    protocol_errors: u64,
}

struct World {
    sim: Sim,
    window: bool,
    clients: Vec<Device>,
    users: Vec<UserModel>,
    streams: HashMap<Key, MStream>,
    /// Every published message, by id and by (stream, epoch, seq).
    log: Log,
    next_id: u64,
    room_members: HashMap<(usize, usize), usize>,
    /// The clock moved and the hub has not been ticked since.
    late: bool,
    counts: Counts,
}

impl World {
    fn new(specs: Vec<ClientSpec>, resume_window: Duration) -> Self {
        let clients = specs
            .into_iter()
            .enumerate()
            .map(|(i, spec)| {
                let user = i / DEVICES_PER_USER;
                let mut client = Client::new(TENANTS[USERS[user].0], USERS[user].1);
                if spec.admin {
                    client.roles = vec![ADMIN.to_owned()];
                }
                Device { user, spec, live: None, last_closed: None, client }
            })
            .collect();
        Self {
            sim: Sim::new(config(resume_window)),
            window: !resume_window.is_zero(),
            clients,
            users: (0..USERS.len()).map(|_| UserModel::default()).collect(),
            streams: HashMap::new(),
            log: Log::default(),
            next_id: 1,
            room_members: HashMap::new(),
            late: false,
            counts: Counts::default(),
        }
    }

    fn stream(&mut self, key: Key) -> &mut MStream {
        self.streams.entry(key).or_default()
    }

    fn tenant_alive(&self, t: usize) -> bool {
        USERS.iter().zip(&self.users).any(|((ti, _), u)| *ti == t && u.exists)
    }

    fn client_of(&self, conn: ConnId) -> Option<usize> {
        self.clients.iter().position(|c| c.live.as_ref().is_some_and(|l| l.id == conn))
    }

    fn live(&self, c: usize) -> &Live {
        self.clients[c].live.as_ref().expect("live")
    }

    fn live_mut(&mut self, c: usize) -> &mut Live {
        self.clients[c].live.as_mut().expect("live")
    }

    /// Drains the hub; confirms every delivered byte; answers pings. Returns the deliveries as
    /// (client, parsed frame) in order. No connection may be closed by the hub here.
    fn drain(&mut self) -> Vec<(usize, Value)> {
        let actions = self.sim.drain();
        self.take(&actions)
    }

    fn take(&mut self, actions: &[Action]) -> Vec<(usize, Value)> {
        let mut out = Vec::new();
        for a in actions {
            match a {
                Action::Deliver { conn, frame } => {
                    let c = self.client_of(*conn).expect("a delivery to a live connection");
                    self.sim.hub.written(self.sim.now, *conn, frame.len()).expect("live");
                    out.push((c, parse(frame.as_str())));
                }
                Action::Ping { conn } => self.sim.hub.pong(self.sim.now, *conn).expect("live"),
                Action::Close { conn, reason } => {
                    panic!("unexpected close of {conn:?}: {reason:?}")
                }
                Action::Audit(e) => panic!("unexpected audit {e:?}"),
                _ => {}
            }
        }
        // Answering pings and confirming writes queue nothing.
        assert!(self.sim.hub.poll_action().is_none());
        out
    }

    /// A live event frame (or a replayed one) reached client `c`: isolation and order are the
    /// shared client model's checks.
    fn on_event(&mut self, c: usize, f: &Value) {
        let event = EventFrame::decode(f).expect("an event frame");
        let id = f["data"]["id"].as_u64().expect("every test message carries its id");
        let client = &mut self.clients[c].client;
        client.on_event(&self.log, &event, id).unwrap_or_else(|e| panic!("client {c}: {e}"));
    }

    fn check_all(&self) {
        for (i, c) in self.clients.iter().enumerate() {
            c.client.check_received().unwrap_or_else(|e| panic!("client {i}: {e}"));
        }
        let live = self.clients.iter().filter(|c| c.live.is_some()).count() as u64;
        let stats = self.sim.hub.stats();
        assert_eq!(stats.connections_active, live);
        assert_eq!(stats.thinking_skipped, 0);
        assert_eq!(stats.closed_by.slow_consumer, 0);
        // The buffered gauge follows every stream's buffer exactly: trims on keep, before a
        // replay and on the age timers, user retirement, tenant and room drops.
        let buffered: usize = self.streams.values().filter(|s| s.alive).map(|s| s.buf.len()).sum();
        assert_eq!(stats.buffered_messages, buffered as u64, "buffered_messages gauge");
        let rooms = self.streams.iter().filter(|(k, s)| matches!(k, Key::Room(..)) && s.alive);
        assert_eq!(stats.rooms, rooms.count() as u64, "rooms gauge");
        let n = &self.counts;
        assert_eq!(stats.publishes, n.publishes, "publishes");
        assert_eq!(stats.undeliverable, n.undeliverable, "undeliverable publishes");
        assert_eq!(stats.held_back, n.held_back, "held_back");
        assert_eq!(stats.replayed, n.replayed, "replayed");
        assert_eq!(stats.resumes_recovered, n.resumes_recovered, "resumes_recovered");
        assert_eq!(stats.resumes_unrecovered, n.resumes_unrecovered, "resumes_unrecovered");
        assert_eq!(stats.protocol_errors, n.protocol_errors, "protocol_errors");
        for (u, model) in self.users.iter().enumerate() {
            let view = self.sim.hub.user(TENANTS[USERS[u].0], USERS[u].1);
            assert_eq!(view.is_some(), model.exists, "user {u} state");
            let Some(view) = view else { continue };
            let s = &self.streams[&Key::User(u)];
            let p = view.stream_position();
            assert_eq!((Some(p.epoch), p.seq), (s.epoch, s.seq), "user {u} stream position");
            assert_eq!(view.buffered().0, s.buf.len(), "user {u} buffer");
            let detached = matches!(view.phase(), switchboard::UserPhase::Detached { .. });
            assert_eq!(detached, model.detached_at.is_some(), "user {u} phase");
        }
        for (i, c) in self.clients.iter().enumerate() {
            let Some(live) = &c.live else { continue };
            let view = self.sim.hub.connection(live.id).expect("a live connection");
            assert_eq!(view.held(), live.held, "client {i}: held");
            let mut got: Vec<&str> = view.rooms().map(|r| r.as_str()).collect();
            let mut want: Vec<&str> = live.rooms.iter().map(|&r| ROOMS[r]).collect();
            want.sort_unstable();
            got.sort_unstable();
            assert_eq!(got, want, "client {i}: rooms");
            let threads = view.threads().map(|ts| ts.iter().map(|t| t.as_str()).collect());
            let want: Option<Vec<&str>> =
                live.filter.as_ref().map(|f| f.iter().map(|&t| THREADS[t]).collect());
            assert_eq!(threads, want, "client {i}: thread filter");
        }
    }

    // -----------------------------------------------------------------------------------------

    fn run(&mut self, op: &Op) {
        let was_late = self.late;
        match *op {
            Op::PublishUser { user, thread, kind } => {
                let target = Target::User {
                    tenant: TENANTS[USERS[user].0].into(),
                    user: USERS[user].1.into(),
                };
                let mut env = Envelope::new(target, self::kind(kind));
                let scope = match thread {
                    Some(t) => {
                        env = env.thread(THREADS[t]);
                        Visibility::Thread(THREADS[t].into())
                    }
                    None => Visibility::All,
                };
                let exists = self.users[user].exists;
                self.publish(env, Key::User(user), scope, exists);
            }
            Op::PublishThread { user, thread, kind } => {
                let target = Target::Thread {
                    tenant: TENANTS[USERS[user].0].into(),
                    user: USERS[user].1.into(),
                    thread: THREADS[thread].into(),
                };
                let exists = self.users[user].exists;
                let env = Envelope::new(target, self::kind(kind));
                let scope = Visibility::Thread(THREADS[thread].into());
                self.publish(env, Key::User(user), scope, exists);
            }
            Op::PublishConn { client, kind } => {
                let c = &self.clients[client];
                if let Some(live) = &c.live {
                    let (id, user) = (live.id, c.user);
                    let env = Envelope::new(Target::Connection(id), self::kind(kind));
                    self.publish(env, Key::User(user), Visibility::Conn(id), true);
                } else if let Some(old) = c.last_closed {
                    let env = Envelope::new(Target::Connection(old), self::kind(kind));
                    let r = self.sim.hub.publish(self.sim.now, env);
                    let actions = self.sim.drain();
                    match r {
                        // Its slot was reused: refused and audited.
                        Err(PublishError::Conn(ConnError::Stale)) => {
                            assert_eq!(common::audits(&actions), vec![AuditKind::StaleConnId]);
                        }
                        Err(PublishError::Conn(ConnError::Unknown { .. })) => {
                            assert!(actions.is_empty());
                        }
                        other => panic!("a closed connection id was accepted: {other:?}"),
                    }
                    assert!(!actions.iter().any(|a| matches!(a, Action::Deliver { .. })));
                }
            }
            Op::PublishRoom { tenant, room, kind } => {
                let target =
                    Target::Room { tenant: TENANTS[tenant].into(), room: ROOMS[room].into() };
                let exists = self.room_members.get(&(tenant, room)).copied().unwrap_or(0) > 0;
                let env = Envelope::new(target, self::kind(kind));
                self.publish(env, Key::Room(tenant, room), Visibility::All, exists);
            }
            Op::PublishTenant { tenant, admin_only, kind } => {
                let audience =
                    if admin_only { Audience::Role(ADMIN.into()) } else { Audience::All };
                let target = Target::Tenant { tenant: TENANTS[tenant].into(), audience };
                let scope =
                    if admin_only { Visibility::Role(ADMIN.into()) } else { Visibility::All };
                let exists = self.tenant_alive(tenant);
                let env = Envelope::new(target, self::kind(kind));
                self.publish(env, Key::Tenant(tenant), scope, exists);
            }
            Op::Disconnect { client, abnormal } => self.disconnect(client, abnormal),
            Op::Connect { client } => self.connect(client),
            Op::Resume { client } => {
                if self.clients[client].live.as_ref().is_some_and(|l| l.held) {
                    self.resume(client);
                }
            }
            Op::Join { client, room } => {
                if self.clients[client].live.is_some() {
                    self.join(client, room);
                }
            }
            Op::Leave { client, room } => {
                if self.clients[client].live.is_some() {
                    self.leave(client, room);
                }
            }
            Op::Tick { d, late } => self.advance(d, late),
        }
        self.check_all();
        if was_late && self.late && !matches!(op, Op::Tick { .. }) {
            // The late tick comes right after the operation that overtook it.
            self.tick();
            self.check_all();
        }
        if let Err(e) = self.sim.hub.check_invariants() {
            panic!("hub invariants after {op:?}: {e}");
        }
    }

    fn publish(&mut self, env: Envelope, key: Key, scope: Visibility, exists: bool) {
        // A held connection's backlog must stay buffered until its resume (otherwise the hub
        // closes it, by design; that case is tested on its own): resume before it would drop.
        if exists {
            let seq = self.streams.get(&key).map_or(0, |s| s.seq);
            let due: Vec<usize> = (0..CLIENTS)
                .filter(|&c| {
                    let live = self.clients[c].live.as_ref();
                    live.is_some_and(|l| {
                        l.held
                            && l.bases.get(&key).is_some_and(|&b| seq + 1 - b > MAX_MESSAGES as u64)
                    })
                })
                .collect();
            for c in due {
                self.resume(c);
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        let env = env.data(json!({ "id": id }));
        let published = self.sim.hub.publish(self.sim.now, env).expect("publish accepted");
        self.counts.publishes += 1;
        let now = self.sim.now;
        if !exists {
            assert_eq!(published.position, None, "a stream the model says does not exist");
            assert_eq!((published.delivered, published.held), (0, 0));
            assert!(published.undeliverable());
            self.counts.undeliverable += 1;
            assert!(self.drain().is_empty());
            return;
        }
        let (name, pos) = published.position.clone().expect("the stream exists");
        let expected_name = match key {
            Key::User(_) => StreamName::User,
            Key::Tenant(_) => StreamName::Tenant,
            Key::Room(_, r) => StreamName::Room(ROOMS[r].into()),
        };
        assert_eq!(name, expected_name);
        let s = self.stream(key);
        s.observe(pos.epoch, "publish");
        assert_eq!(pos.seq, s.seq + 1, "seqs grow by one per message");
        s.seq = pos.seq;
        s.keep(pos.seq, now);
        let (epoch, seq) = (pos.epoch, pos.seq);
        let published_at =
            Published { key: key.stream(), epoch, seq, visibility: scope, critical: true, at: now };
        self.log.record(id, published_at);
        let message = self.log.get(id).expect("just recorded");

        let (mut live_recipients, mut held_recipients) = (0, 0);
        for c in &mut self.clients {
            let Some(live) = &c.live else { continue };
            if !c.live_keys().contains(&key) || !c.client.sees(message) {
                continue;
            }
            if live.held {
                held_recipients += 1;
            } else {
                c.client.expect(&key.stream(), [id]);
                live_recipients += 1;
            }
        }
        assert_eq!(published.delivered, live_recipients, "Published::delivered");
        assert_eq!(published.held, held_recipients, "Published::held");
        assert_eq!((published.skipped, published.closed), (0, 0));
        let undeliverable = live_recipients + held_recipients == 0;
        assert_eq!(published.undeliverable(), undeliverable, "Published::undeliverable");
        self.counts.undeliverable += u64::from(undeliverable);
        self.counts.held_back += held_recipients as u64;
        for (c, f) in self.drain() {
            assert!(f.get("stream").is_some(), "only event frames on publish: {f}");
            self.on_event(c, &f);
        }
    }

    fn connect(&mut self, c: usize) {
        if self.clients[c].live.is_some() {
            return;
        }
        let user = self.clients[c].user;
        let tenant = self.clients[c].tenant();
        let mut principal = Principal::new(TENANTS[tenant], USERS[user].1);
        if self.clients[c].spec.admin {
            principal = principal.roles([ADMIN]);
        }
        let id = self.sim.hub.connect(self.sim.now, principal).expect("admitted");

        // The model's user and tenant lifecycles.
        if !self.users[user].exists {
            if !self.tenant_alive(tenant) {
                self.stream(Key::Tenant(tenant)).start();
            }
            self.users[user].exists = true;
            self.stream(Key::User(user)).start();
        }
        self.users[user].active += 1;
        self.users[user].detached_at = None;

        let window = self.window;
        self.clients[c].client.conn = Some(id);
        self.clients[c].client.filter = None;
        self.clients[c].live = Some(Live {
            id,
            held: window,
            opened_at: self.sim.now,
            resumed: false,
            subscribed: false,
            filter: None,
            rooms: Vec::new(),
            bases: HashMap::new(),
        });
        let frames = self.drain();
        assert_eq!(frames.len(), 1, "only the connected frame: {frames:?}");
        let (fc, connected) = &frames[0];
        assert_eq!((*fc, connected["type"].as_str()), (c, Some("connected")));
        for (wire, key) in [("u", Key::User(user)), ("t", Key::Tenant(tenant))] {
            let p = &connected["streams"][wire];
            let (epoch, seq) = (p["epoch"].as_u64().unwrap(), p["seq"].as_u64().unwrap());
            let s = self.stream(key);
            s.observe(epoch, "connected");
            assert_eq!(seq, s.seq, "connected frame position of {key:?}");
            self.live_mut(c).bases.insert(key, seq);
            let client = &mut self.clients[c];
            if client.position(key).is_none() {
                // First sight of this stream: the client starts from the connected position.
                client.settle(key);
                client.client.start(key.stream(), (epoch, seq));
            }
        }
        // The application puts the connection into its rooms.
        for r in self.clients[c].spec.rooms.clone() {
            self.join(c, r);
        }
        if !window || !self.clients[c].spec.late_subscribe {
            self.subscribe(c);
        }
        if !window {
            // Without a window the client narrows its streams first, then resumes at once.
            self.resume(c);
        }
    }

    /// The application puts client `c`'s connection into room `r`.
    fn join(&mut self, c: usize, r: usize) {
        let (id, tenant) = (self.live(c).id, self.clients[c].tenant());
        let key = Key::Room(tenant, r);
        let joined = self.sim.hub.join(self.sim.now, id, ROOMS[r]).expect("join");
        if self.live(c).rooms.contains(&r) {
            assert!(!joined, "joined a room twice");
            assert!(self.drain().is_empty());
            return;
        }
        assert!(joined);
        let members = self.room_members.entry((tenant, r)).or_insert(0);
        *members += 1;
        if *members == 1 {
            self.stream(key).start();
        }
        let frames = self.drain();
        assert_eq!(frames.len(), 1, "only the joined frame: {frames:?}");
        let (fc, f) = &frames[0];
        assert_eq!((*fc, f["type"].as_str()), (c, Some("joined")), "{f}");
        assert_eq!(f["stream"].as_str(), Some(format!("r:{}", ROOMS[r]).as_str()));
        let (epoch, seq) = (f["epoch"].as_u64().unwrap(), f["seq"].as_u64().unwrap());
        let s = self.stream(key);
        s.observe(epoch, "joined");
        assert_eq!(seq, s.seq, "joined frame position of {key:?}");
        let live = self.live_mut(c);
        live.rooms.push(r);
        live.bases.insert(key, seq);
        let resumed = live.resumed;
        let client = &mut self.clients[c];
        // Before its resume the client keeps what it last saw of the room (to resume from it);
        // otherwise (first sight, or a live connection that can no longer resume) it starts
        // from the joined position.
        if resumed || client.position(key).is_none() {
            client.settle(key);
            client.client.set_position(key.stream(), (epoch, seq));
        }
    }

    /// The application takes client `c`'s connection out of room `r`.
    fn leave(&mut self, c: usize, r: usize) {
        let (id, tenant) = (self.live(c).id, self.clients[c].tenant());
        let key = Key::Room(tenant, r);
        let left = self.sim.hub.leave(self.sim.now, id, ROOMS[r]).expect("leave");
        let Some(at) = self.live(c).rooms.iter().position(|&x| x == r) else {
            assert!(!left, "left a room it was not in");
            assert!(self.drain().is_empty());
            return;
        };
        assert!(left);
        let live = self.live_mut(c);
        live.rooms.remove(at);
        live.bases.remove(&key);
        let frames = self.drain();
        assert_eq!(frames.len(), 1, "only the left frame: {frames:?}");
        let (fc, f) = &frames[0];
        assert_eq!(*fc, c);
        assert_eq!(f, &json!({"type": "left", "stream": format!("r:{}", ROOMS[r])}));
        let members = self.room_members.get_mut(&(tenant, r)).unwrap();
        *members -= 1;
        if *members == 0 {
            self.stream(key).end();
        }
        // The stretch of this room on this connection is over.
        self.clients[c].settle(key);
    }

    fn subscribe(&mut self, c: usize) {
        let id = self.live(c).id;
        let filter = self.clients[c].spec.filter.clone();
        for &t in filter.iter().flatten() {
            let frame = json!({"type": "subscribe", "thread_id": THREADS[t]}).to_string();
            self.sim.hub.receive(self.sim.now, id, frame.as_bytes()).expect("subscribe");
        }
        let names = filter.as_ref().map(|f| f.iter().map(|&t| THREADS[t].to_owned()).collect());
        self.clients[c].client.filter = names;
        let live = self.live_mut(c);
        live.filter = filter;
        live.subscribed = true;
        assert!(self.drain().is_empty(), "subscribing delivers nothing (and releases nothing)");
    }

    fn predict(&self, c: usize, key: Key, pos: (u64, u64)) -> Outcome {
        let live = self.live(c);
        let s = &self.streams[&key];
        if s.epoch != Some(pos.0) {
            return Outcome::Lost("epoch_mismatch");
        }
        let upto = if live.held { s.seq } else { live.bases[&key] };
        let after = pos.1;
        assert!(after <= s.seq, "the client cannot be ahead of the stream");
        if after >= upto || s.available_from() <= after + 1 {
            Outcome::Recovered
        } else {
            Outcome::Lost("gap_too_old")
        }
    }

    /// Messages of `key` in `(after, upto]` that client `c`'s connection may see now.
    fn visible(&self, c: usize, key: Key, after: u64, upto: u64) -> Vec<u64> {
        let client = &self.clients[c].client;
        let epoch = self.streams[&key].epoch.expect("an observed epoch");
        let messages = self.log.between(&key.stream(), epoch, after, upto);
        messages.filter(|(_, m)| client.sees(m)).map(|(id, _)| id).collect()
    }

    /// A `resume` with a spoiled position: refused with `invalid_field`; the connection stays
    /// as it was (held if it was, not resumed).
    fn bad_resume(&mut self, c: usize, variant: usize, positions: &serde_json::Map<String, Value>) {
        let id = self.live(c).id;
        let mut positions = positions.clone();
        let user = Key::User(self.clients[c].user);
        let (e, s) = self.clients[c].position(user).expect("a position on the user stream");
        positions.insert("u".into(), bad_position(variant, e, s));
        let frame = json!({"type": "resume", "positions": positions}).to_string();
        let r = self.sim.hub.receive(self.sim.now, id, frame.as_bytes());
        assert_eq!(r, Err(ReceiveError::Peer(PeerError::InvalidField { field: "positions" })));
        self.counts.protocol_errors += 1;
        let actions = self.sim.drain();
        assert_eq!(common::audits(&actions), vec![AuditKind::MalformedFrame]);
        let rest: Vec<Action> =
            actions.into_iter().filter(|a| !matches!(a, Action::Audit(_))).collect();
        let frames = self.take(&rest);
        assert_eq!(frames.len(), 1, "only the error frame: {frames:?}");
        assert_eq!(frames[0].0, c);
        assert_eq!(frames[0].1["type"], "error");
        assert_eq!(frames[0].1["code"], "invalid_field", "{}", frames[0].1);
    }

    fn resume(&mut self, c: usize) {
        if !self.live(c).subscribed {
            self.subscribe(c);
        }
        let (id, held) = (self.live(c).id, self.live(c).held);
        let client = &self.clients[c];
        let keys = client.live_keys();
        let named: Vec<(Key, (u64, u64))> =
            keys.iter().map(|k| (*k, client.position(*k).expect("a position"))).collect();
        let mut positions = serde_json::Map::new();
        for (k, (e, s)) in &named {
            let mut p = json!({"epoch": e, "seq": s});
            if client.spec.extra_fields {
                p["at"] = json!("2026-01-01T00:00:00Z");
                p["seq_hint"] = json!({"nested": [1, 2]});
            }
            positions.insert(k.stream().wire(), p);
        }
        if let Some(variant) = client.spec.bad_resume {
            self.bad_resume(c, variant, &positions);
        }
        // The hub trims every stream of the connection by age right before replaying from it.
        let now = self.sim.now;
        for k in &keys {
            self.stream(*k).trim_age(now);
        }
        let predictions: Vec<Outcome> =
            named.iter().map(|(k, p)| self.predict(c, *k, *p)).collect();
        let frame = json!({"type": "resume", "positions": positions}).to_string();
        self.sim.hub.receive(self.sim.now, id, frame.as_bytes()).expect("resume accepted");
        let frames = self.drain();
        assert!(frames.iter().all(|(fc, _)| *fc == c));
        let (last, events) = frames.split_last().expect("a resumed frame");
        let resumed = &last.1;
        assert_eq!(resumed["type"], "resumed", "the resumed frame comes last: {frames:?}");
        let reports = resumed["streams"].as_object().expect("streams");
        assert_eq!(reports.len(), named.len(), "one report per named stream: {resumed}");

        let mut all = true;
        let mut resets = Vec::new();
        let mut replayed = 0;
        for ((key, pos), predicted) in named.iter().zip(predictions) {
            let wire = key.stream().wire();
            let r = &reports[&wire];
            let recovered = r["recovered"].as_bool().expect("recovered");
            let (epoch, seq) = (r["epoch"].as_u64().unwrap(), r["seq"].as_u64().unwrap());
            let s = self.stream(*key);
            s.observe(epoch, "resumed");
            assert_eq!(seq, s.seq, "{key:?}: reported position");
            assert_eq!(r["available_from"].as_u64(), Some(s.available_from()), "{key:?}: {r}");
            match predicted {
                Outcome::Recovered => {
                    assert!(recovered, "{key:?} from {pos:?}: {r}");
                    assert!(r.get("reason").is_none_or(Value::is_null), "{r}");
                }
                Outcome::Lost(why) => {
                    assert!(!recovered, "{key:?} from {pos:?}: {r}");
                    assert_eq!(r["reason"], why);
                }
            }
            all &= recovered;
            let base = self.live(c).bases[key];
            let upto = if held { seq } else { base };
            if recovered {
                let add = self.visible(c, *key, pos.1, upto);
                assert_eq!(r["replayed"].as_u64(), Some(add.len() as u64), "{key:?}: replayed");
                replayed += add.len();
                self.clients[c].expect(*key, add);
            } else {
                assert_eq!(r["replayed"], 0);
                // The reason is justified by the log (the shared client check), and the client
                // refetches this stream's state; what was held back still follows, from the
                // connection's base.
                let (log, retention) = (&self.log, self.sim.hub.config().retention);
                let client = &mut self.clients[c].client;
                let check = client.unrecovered(log, &wire, r, &retention, self.sim.now);
                check.unwrap_or_else(|e| panic!("client {c}: {e}"));
                self.clients[c].settle(*key);
                if held {
                    self.clients[c].client.set_position(key.stream(), (epoch, base));
                    let add = self.visible(c, *key, base, upto);
                    replayed += add.len();
                    self.clients[c].expect(*key, add);
                }
                resets.push((*key, (epoch, seq)));
            }
        }
        assert_eq!(resumed["recovered"].as_bool(), Some(all), "overall flag: {resumed}");
        assert_eq!(events.len(), replayed, "replayed frames: {frames:?}");
        self.counts.replayed += replayed as u64;
        if all {
            self.counts.resumes_recovered += 1;
        } else {
            self.counts.resumes_unrecovered += 1;
        }
        for (fc, f) in events {
            assert!(f.get("stream").is_some(), "only event frames before resumed: {f}");
            self.on_event(*fc, f);
        }
        for (key, pos) in resets {
            self.clients[c].client.set_position(key.stream(), pos);
        }
        let live = self.live_mut(c);
        live.held = false;
        live.resumed = true;
    }

    fn disconnect(&mut self, c: usize, abnormal: bool) {
        let Some(live) = self.clients[c].live.take() else { return };
        let reason = if abnormal { DisconnectReason::Abnormal } else { DisconnectReason::Clean };
        self.sim.hub.disconnect(self.sim.now, live.id, reason).expect("live");
        self.clients[c].last_closed = Some(live.id);
        self.clients[c].client.conn = None;
        let (user, tenant) = (self.clients[c].user, self.clients[c].tenant());
        self.users[user].active -= 1;
        if self.users[user].active == 0 {
            self.users[user].detached_at = Some(self.sim.now);
        }
        for r in live.rooms {
            let members = self.room_members.get_mut(&(tenant, r)).unwrap();
            *members -= 1;
            if *members == 0 {
                self.stream(Key::Room(tenant, r)).end();
            }
        }
        assert!(self.drain().is_empty(), "a transport disconnect delivers nothing");
    }

    /// The clock moves by `d`; the hub is ticked at once unless the tick is `late`.
    fn advance(&mut self, d: Duration, late: bool) {
        if self.late {
            // A late tick is overtaken by one call, not by a clock that keeps moving.
            self.tick();
        }
        // With a window, clients resume within it: those whose window would end by then resume
        // now (the others stay held across the tick).
        let (then, window) = (self.sim.now + d, self.sim.hub.config().resume_window);
        for c in 0..CLIENTS {
            let live = self.clients[c].live.as_ref();
            if live.is_some_and(|l| l.held && l.opened_at + window <= then) {
                self.resume(c);
            }
        }
        self.sim.now += d;
        if late {
            self.late = true;
        } else {
            self.tick();
        }
    }

    /// The hub's tick at the current time: users retire, and every stream's age timer that is
    /// due fires, so no stream keeps anything older than `MAX_AGE`.
    fn tick(&mut self) {
        self.late = false;
        let now = self.sim.now;
        self.sim.hub.tick(now);
        for (u, &(t, _)) in USERS.iter().enumerate() {
            let due = self.users[u].detached_at.is_some_and(|at| at + USER_RETENTION <= now);
            if due {
                self.users[u].detached_at = None;
                self.users[u].exists = false;
                self.stream(Key::User(u)).end();
                if !self.tenant_alive(t) {
                    self.stream(Key::Tenant(t)).end();
                }
            }
        }
        for s in self.streams.values_mut().filter(|s| s.alive) {
            s.trim_age(now);
        }
        let frames = self.drain();
        assert!(frames.is_empty(), "ticks deliver nothing here: {frames:?}");
        for (u, (t, name)) in USERS.iter().enumerate() {
            let view = self.sim.hub.user(TENANTS[*t], name);
            assert_eq!(view.is_some(), self.users[u].exists, "user {u} retention");
        }
    }
}

fn run_case(specs: Vec<ClientSpec>, ops: Vec<Op>, resume_window: Duration) {
    let mut world = World::new(specs, resume_window);
    for op in &ops {
        world.run(op);
    }
    // Finally everyone comes back and resumes: the last stretch must be complete too.
    for c in 0..CLIENTS {
        world.run(&Op::Connect { client: c });
    }
    for c in 0..CLIENTS {
        world.run(&Op::Resume { client: c });
    }
    world.run(&Op::Tick { d: Duration::from_secs(1), late: false });
    for c in 0..CLIENTS {
        assert!(world.clients[c].live.as_ref().is_some_and(|l| l.resumed), "client {c}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(1000),
        max_shrink_iters: 20_000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// No resume window: each client narrows and resumes right after connecting.
    #[test]
    fn resume_replays_exactly_what_was_missed_without_window(
        specs in proptest::collection::vec(spec(), CLIENTS),
        ops in proptest::collection::vec(op(), 1..120),
    ) {
        run_case(specs, ops, Duration::ZERO);
    }

    /// With a resume window: publishes may come between a connect and its resume, and the
    /// client narrows before it resumes.
    #[test]
    fn resume_replays_exactly_what_was_missed_with_window(
        specs in proptest::collection::vec(spec(), CLIENTS),
        ops in proptest::collection::vec(op(), 1..120),
    ) {
        run_case(specs, ops, Duration::from_secs(3));
    }
}
