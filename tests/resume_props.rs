//! Property: clients (a user's devices) that disconnect, reconnect and `resume` with the
//! positions they last saw receive, per stream and across their successive connections, exactly
//! the published sequence filtered to what they may see: no duplicates, no gaps, in order, as
//! long as every resume came within retention; and the `resumed` frame says `recovered: false`
//! exactly when it did not (epoch changed, or the gap is no longer buffered).
//!
//! The model knows nothing of the hub's internals. It learns epochs from the frames the hub sends
//! (`connected`, `resumed`, `Published::position`) and checks that they change exactly when a
//! stream is created anew (a user retired and seen again, a tenant dropped, a room emptied). It
//! keeps every published message with the rule that routed it, and for each connection decides
//! what it must see: live messages under the connection's current thread filter, and on resume
//! the buffered range `(client's seq, upto]` under the filter the connection has at that moment.
//!
//! Backpressure is kept out: every delivered frame is confirmed with `written` at once.
mod common;

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use common::Sim;
use proptest::prelude::*;
use serde_json::{Value, json};
use switchboard::{
    Action, Audience, AuditKind, BreakerConfig, Config, ConnError, ConnId, DisconnectReason,
    Envelope, EventKind, Principal, PublishError, Retention, StreamName, Target,
};

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
const TICKS: [u64; 6] = [1, 5, 20, 29, 31, 61];

fn kind(i: usize) -> EventKind {
    match i % 6 {
        0 => EventKind::AgentStarted,
        1 => EventKind::AgentThinking,
        2 => EventKind::ToolExecuting,
        3 => EventKind::ToolCompleted,
        4 => EventKind::AgentCompleted,
        _ => EventKind::custom("note"),
    }
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

// ---------------------------------------------------------------------------------------------
// Operations

#[derive(Clone, Debug)]
struct ClientSpec {
    /// Threads the client narrows its connections to (`None`: all of its user's events).
    filter: Option<Vec<usize>>,
    admin: bool,
    /// Rooms the application puts every connection of this client into.
    rooms: Vec<usize>,
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
    Tick {
        secs: u64,
    },
}

fn spec() -> impl Strategy<Value = ClientSpec> {
    (
        prop_oneof![Just(None), Just(Some(vec![0])), Just(Some(vec![1])), Just(Some(vec![0, 1]))],
        any::<bool>(),
        prop_oneof![Just(vec![]), Just(vec![0]), Just(vec![1]), Just(vec![0, 1])],
    )
        .prop_map(|(filter, admin, rooms)| ClientSpec { filter, admin, rooms })
}

fn op() -> impl Strategy<Value = Op> {
    let k = 0..6usize;
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
        3 => proptest::sample::select(TICKS.to_vec()).prop_map(|secs| Op::Tick { secs }),
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

#[derive(Clone, Debug, PartialEq, Eq)]
enum Scope {
    All,
    Thread(usize),
    Conn(ConnId),
    Admin,
}

#[derive(Clone, Debug)]
struct Msg {
    id: u64,
    seq: u64,
    scope: Scope,
}

/// One stream as the model sees it. `alive` while the hub holds it; `epoch` is `None` until the
/// current incarnation's epoch has been observed.
#[derive(Debug, Default)]
struct MStream {
    alive: bool,
    epoch: Option<u64>,
    seq: u64,
    /// Every message of the current incarnation.
    log: Vec<Msg>,
    /// (seq, published at), trimmed the way the hub trims: on each publish, by count and age.
    buf: VecDeque<(u64, Instant)>,
    past_epochs: HashSet<u64>,
}

impl MStream {
    fn start(&mut self) {
        assert!(!self.alive);
        self.alive = true;
        self.epoch = None;
        self.seq = 0;
        self.log.clear();
        self.buf.clear();
    }

    fn end(&mut self) {
        assert!(self.alive);
        self.alive = false;
        if let Some(e) = self.epoch.take() {
            self.past_epochs.insert(e);
        }
        self.log.clear();
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

    /// Oldest seq the hub still holds (lazy trimming: only when the stream gets a message).
    fn available_from_lazy(&self) -> u64 {
        self.buf.front().map_or(self.seq + 1, |b| b.0)
    }

    /// Oldest seq that is not older than `max_age` at `now`.
    fn available_from_strict(&self, now: Instant) -> u64 {
        self.buf
            .iter()
            .find(|(_, at)| now.saturating_duration_since(*at) <= MAX_AGE)
            .map_or(self.seq + 1, |b| b.0)
    }
}

#[derive(Debug)]
struct Live {
    id: ConnId,
    held: bool,
    /// The thread filter the hub applies now.
    filter: Option<Vec<usize>>,
    /// Each stream's seq when the connection attached to it.
    bases: HashMap<Key, u64>,
}

#[derive(Debug)]
struct Client {
    user: usize,
    spec: ClientSpec,
    live: Option<Live>,
    last_closed: Option<ConnId>,
    /// What the client remembers: the last position it saw per stream.
    last_seen: HashMap<Key, (u64, u64)>,
    /// Message ids it must have received in the current stretch of each stream, and those it did.
    expected: HashMap<Key, Vec<u64>>,
    received: HashMap<Key, Vec<u64>>,
}

impl Client {
    fn tenant(&self) -> usize {
        USERS[self.user].0
    }

    fn keys(&self) -> Vec<Key> {
        let t = self.tenant();
        let mut keys = vec![Key::User(self.user), Key::Tenant(t)];
        keys.extend(self.spec.rooms.iter().map(|&r| Key::Room(t, r)));
        keys
    }

    fn wire(&self, key: Key) -> String {
        match key {
            Key::User(_) => "u".into(),
            Key::Tenant(_) => "t".into(),
            Key::Room(_, r) => format!("r:{}", ROOMS[r]),
        }
    }

    fn key_of(&self, wire: &str) -> Key {
        match wire {
            "u" => Key::User(self.user),
            "t" => Key::Tenant(self.tenant()),
            other => {
                let name = other.strip_prefix("r:").expect("stream names are u, t or r:<room>");
                let r = ROOMS.iter().position(|n| *n == name).expect("a known room");
                Key::Room(self.tenant(), r)
            }
        }
    }

    /// Whether a message with `scope` on `key` may be shown to this client's connection `conn`
    /// under thread filter `filter`.
    fn admits(&self, conn: ConnId, filter: &Option<Vec<usize>>, key: Key, scope: &Scope) -> bool {
        match scope {
            Scope::All => true,
            Scope::Thread(t) => filter.as_ref().is_none_or(|f| f.contains(t)),
            Scope::Conn(c) => *c == conn,
            Scope::Admin => {
                assert!(matches!(key, Key::Tenant(_)));
                self.spec.admin
            }
        }
    }

    fn settle(&mut self, key: Key) {
        let e = self.expected.remove(&key).unwrap_or_default();
        let r = self.received.remove(&key).unwrap_or_default();
        assert_eq!(r, e, "client (user {}) on {key:?}: received vs expected", self.user);
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
    /// Messages older than `max_age` that the hub may or may not have dropped yet.
    Either,
}

struct World {
    sim: Sim,
    window: bool,
    clients: Vec<Client>,
    users: Vec<UserModel>,
    streams: HashMap<Key, MStream>,
    /// Every published message: its stream, epoch and seq.
    msgs: HashMap<u64, (Key, u64, u64)>,
    next_id: u64,
    room_members: HashMap<(usize, usize), usize>,
}

impl World {
    fn new(specs: Vec<ClientSpec>, resume_window: Duration) -> Self {
        let clients = specs
            .into_iter()
            .enumerate()
            .map(|(i, spec)| Client {
                user: i / DEVICES_PER_USER,
                spec,
                live: None,
                last_closed: None,
                last_seen: HashMap::new(),
                expected: HashMap::new(),
                received: HashMap::new(),
            })
            .collect();
        Self {
            sim: Sim::new(config(resume_window)),
            window: !resume_window.is_zero(),
            clients,
            users: (0..USERS.len()).map(|_| UserModel::default()).collect(),
            streams: HashMap::new(),
            msgs: HashMap::new(),
            next_id: 1,
            room_members: HashMap::new(),
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

    /// Drains the hub; confirms every delivered byte; answers pings. Returns the deliveries as
    /// (client, parsed frame) in order. No connection may be closed by the hub here.
    fn drain(&mut self) -> Vec<(usize, Value)> {
        let actions = self.sim.drain();
        let mut out = Vec::new();
        for a in &actions {
            match a {
                Action::Deliver { conn, frame } => {
                    let c = self.client_of(*conn).expect("a delivery to a live connection");
                    self.sim.hub.written(self.sim.now, *conn, frame.len()).expect("live");
                    out.push((c, serde_json::from_str(frame.as_str()).expect("JSON")));
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

    /// A live event frame (or a replayed one) reached client `c`.
    fn on_event(&mut self, c: usize, f: &Value) {
        let client = &self.clients[c];
        let key = client.key_of(f["stream"].as_str().expect("stream"));
        let id = f["data"]["id"].as_u64().expect("every test message carries its id");
        let (epoch, seq) = (f["epoch"].as_u64().unwrap(), f["seq"].as_u64().unwrap());
        let &(mkey, mepoch, mseq) = self.msgs.get(&id).expect("a published message");
        assert_eq!(mkey, key, "message {id} of {mkey:?} reached a client of {key:?}");
        assert_eq!((mepoch, mseq), (epoch, seq), "frame position differs from the publish's");
        let client = &mut self.clients[c];
        if let Some(&(e, s)) = client.last_seen.get(&key) {
            assert!(e != epoch || seq > s, "{key:?}: seq {seq} after {s} (duplicate or reorder)");
        }
        client.last_seen.insert(key, (epoch, seq));
        client.received.entry(key).or_default().push(id);
    }

    fn check_all(&self) {
        for c in &self.clients {
            for key in c.keys() {
                let e = c.expected.get(&key).cloned().unwrap_or_default();
                let r = c.received.get(&key).cloned().unwrap_or_default();
                assert_eq!(r, e, "client of user {} on {key:?}: received vs expected", c.user);
            }
        }
        let live = self.clients.iter().filter(|c| c.live.is_some()).count() as u64;
        let stats = self.sim.hub.stats();
        assert_eq!(stats.connections_active, live);
        assert_eq!(stats.thinking_skipped, 0);
        assert_eq!(stats.closed_by.slow_consumer, 0);
        // The buffered gauges follow every stream's buffer, through user retirement, tenant and
        // room drops (the hub trims a buffer when the stream gets a message).
        let buffered: usize = self.streams.values().filter(|s| s.alive).map(|s| s.buf.len()).sum();
        assert_eq!(stats.buffered_messages, buffered as u64, "buffered_messages gauge");
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
    }

    // -----------------------------------------------------------------------------------------

    fn run(&mut self, op: &Op) {
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
                        Scope::Thread(t)
                    }
                    None => Scope::All,
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
                self.publish(env, Key::User(user), Scope::Thread(thread), exists);
            }
            Op::PublishConn { client, kind } => {
                let c = &self.clients[client];
                if let Some(live) = &c.live {
                    let (id, user) = (live.id, c.user);
                    let env = Envelope::new(Target::Connection(id), self::kind(kind));
                    self.publish(env, Key::User(user), Scope::Conn(id), true);
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
                self.publish(env, Key::Room(tenant, room), Scope::All, exists);
            }
            Op::PublishTenant { tenant, admin_only, kind } => {
                let audience =
                    if admin_only { Audience::Role(ADMIN.into()) } else { Audience::All };
                let target = Target::Tenant { tenant: TENANTS[tenant].into(), audience };
                let scope = if admin_only { Scope::Admin } else { Scope::All };
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
            Op::Tick { secs } => self.tick(Duration::from_secs(secs)),
        }
        self.check_all();
    }

    fn publish(&mut self, env: Envelope, key: Key, scope: Scope, exists: bool) {
        // A held connection's backlog must stay buffered until its resume (otherwise the hub
        // closes it, by design; that case is tested on its own): resume before it could drop.
        if exists {
            let seq = self.streams.get(&key).map_or(0, |s| s.seq);
            let due: Vec<usize> = (0..CLIENTS)
                .filter(|&c| {
                    let live = self.clients[c].live.as_ref();
                    live.is_some_and(|l| {
                        l.held
                            && l.bases
                                .get(&key)
                                .is_some_and(|&b| seq + 1 - b >= MAX_MESSAGES as u64)
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
        let now = self.sim.now;
        if !exists {
            assert_eq!(published.position, None, "a stream the model says does not exist");
            assert_eq!(published.delivered, 0);
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
        s.log.push(Msg { id, seq: pos.seq, scope: scope.clone() });
        s.buf.push_back((pos.seq, now));
        while s.buf.len() > MAX_MESSAGES
            || s.buf.front().is_some_and(|(_, at)| now.saturating_duration_since(*at) > MAX_AGE)
        {
            s.buf.pop_front();
        }
        self.msgs.insert(id, (key, pos.epoch, pos.seq));

        let mut live_recipients = 0;
        for c in &mut self.clients {
            let Some(live) = &c.live else { continue };
            if live.held || !c.keys().contains(&key) {
                continue;
            }
            if c.admits(live.id, &live.filter, key, &scope) {
                c.expected.entry(key).or_default().push(id);
                live_recipients += 1;
            }
        }
        assert_eq!(published.delivered, live_recipients, "Published::delivered");
        assert_eq!((published.skipped, published.closed), (0, 0));
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
        self.clients[c].live = Some(Live { id, held: window, filter: None, bases: HashMap::new() });
        let frames = self.drain();
        assert_eq!(frames.len(), 1, "only the connected frame: {frames:?}");
        let (fc, connected) = &frames[0];
        assert_eq!((*fc, connected["type"].as_str()), (c, Some("connected")));
        let mut bases = HashMap::new();
        for (wire, key) in [("u", Key::User(user)), ("t", Key::Tenant(tenant))] {
            let p = &connected["streams"][wire];
            let (epoch, seq) = (p["epoch"].as_u64().unwrap(), p["seq"].as_u64().unwrap());
            let s = self.stream(key);
            s.observe(epoch, "connected");
            assert_eq!(seq, s.seq, "connected frame position of {key:?}");
            bases.insert(key, seq);
            let client = &mut self.clients[c];
            if !client.last_seen.contains_key(&key) {
                // First sight of this stream: the client starts from the connected position.
                client.settle(key);
                client.last_seen.insert(key, (epoch, seq));
            }
        }
        // The application puts the connection into its rooms.
        for r in self.clients[c].spec.rooms.clone() {
            let joined = self.sim.hub.join(self.sim.now, id, ROOMS[r].into()).expect("join");
            assert!(joined);
            let members = self.room_members.entry((tenant, r)).or_insert(0);
            *members += 1;
            if *members == 1 {
                self.stream(Key::Room(tenant, r)).start();
            }
            let seq = self.stream(Key::Room(tenant, r)).seq;
            bases.insert(Key::Room(tenant, r), seq);
            assert!(self.drain().is_empty());
        }
        self.clients[c].live.as_mut().unwrap().bases = bases;
        if !window {
            // Without a window the client narrows its stream first, then resumes at once.
            self.subscribe(c);
            self.resume(c);
        }
    }

    fn subscribe(&mut self, c: usize) {
        let live = self.clients[c].live.as_ref().unwrap();
        let id = live.id;
        let filter = self.clients[c].spec.filter.clone();
        for &t in filter.iter().flatten() {
            let frame = json!({"type": "subscribe", "thread_id": THREADS[t]}).to_string();
            self.sim.hub.receive(self.sim.now, id, frame.as_bytes()).expect("subscribe");
        }
        self.clients[c].live.as_mut().unwrap().filter = filter;
        assert!(self.drain().is_empty());
    }

    fn predict(&self, c: usize, key: Key, pos: (u64, u64)) -> Outcome {
        let live = self.clients[c].live.as_ref().unwrap();
        let s = &self.streams[&key];
        match s.epoch {
            Some(e) if e == pos.0 => {}
            // Unknown epoch: the stream was created anew and nobody has seen it yet.
            _ => return Outcome::Lost("epoch_mismatch"),
        }
        let upto = if live.held { s.seq } else { live.bases[&key] };
        let after = pos.1;
        assert!(after <= s.seq, "the client cannot be ahead of the stream");
        if after >= upto {
            return Outcome::Recovered;
        }
        let lazy = s.available_from_lazy() <= after + 1;
        let strict = lazy && s.available_from_strict(self.sim.now) <= after + 1;
        match (strict, lazy) {
            (true, true) => Outcome::Recovered,
            (false, false) => Outcome::Lost("gap_too_old"),
            _ => Outcome::Either,
        }
    }

    /// Messages of `key` in `(after, upto]` that client `c`'s connection may see now.
    fn visible(&self, c: usize, key: Key, after: u64, upto: u64) -> Vec<u64> {
        let client = &self.clients[c];
        let live = client.live.as_ref().unwrap();
        self.streams[&key]
            .log
            .iter()
            .filter(|m| m.seq > after && m.seq <= upto)
            .filter(|m| client.admits(live.id, &live.filter, key, &m.scope))
            .map(|m| m.id)
            .collect()
    }

    fn resume(&mut self, c: usize) {
        let client = &self.clients[c];
        let live = client.live.as_ref().unwrap();
        let id = live.id;
        let held = live.held;
        let named: Vec<(Key, (u64, u64))> = client
            .keys()
            .into_iter()
            .filter_map(|k| client.last_seen.get(&k).map(|p| (k, *p)))
            .collect();
        let positions: serde_json::Map<String, Value> = named
            .iter()
            .map(|(k, (e, s))| (client.wire(*k), json!({"epoch": e, "seq": s})))
            .collect();
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
        for ((key, pos), predicted) in named.iter().zip(predictions) {
            let wire = self.clients[c].wire(*key);
            let r = &reports[&wire];
            let recovered = r["recovered"].as_bool().expect("recovered");
            let (epoch, seq) = (r["epoch"].as_u64().unwrap(), r["seq"].as_u64().unwrap());
            let s = self.stream(*key);
            s.observe(epoch, "resumed");
            assert_eq!(seq, s.seq, "{key:?}: reported position");
            match predicted {
                Outcome::Recovered => assert!(recovered, "{key:?} from {pos:?}: {r}"),
                Outcome::Lost(why) => {
                    assert!(!recovered, "{key:?} from {pos:?}: {r}");
                    assert_eq!(r["reason"], why);
                }
                Outcome::Either if !recovered => assert_eq!(r["reason"], "gap_too_old"),
                Outcome::Either => {}
            }
            all &= recovered;
            let live = self.clients[c].live.as_ref().unwrap();
            let base = live.bases[key];
            let upto = if held { seq } else { base };
            if recovered {
                let add = self.visible(c, *key, pos.1, upto);
                assert_eq!(r["replayed"].as_u64(), Some(add.len() as u64), "{key:?}: replayed");
                self.clients[c].expected.entry(*key).or_default().extend(add);
            } else {
                assert_eq!(r["replayed"], 0);
                // The client refetches this stream's state; what was held back still follows.
                self.clients[c].settle(*key);
                if held {
                    let add = self.visible(c, *key, base, upto);
                    self.clients[c].expected.entry(*key).or_default().extend(add);
                }
                resets.push((*key, (epoch, seq)));
            }
        }
        assert_eq!(resumed["recovered"].as_bool(), Some(all), "overall flag: {resumed}");
        if held {
            // Streams the client could not name (rooms it never saw an event of): the backlog
            // since the connection attached.
            for key in self.clients[c].keys() {
                if named.iter().any(|(k, _)| *k == key) {
                    continue;
                }
                let base = self.clients[c].live.as_ref().unwrap().bases[&key];
                let upto = self.streams[&key].seq;
                let add = self.visible(c, key, base, upto);
                self.clients[c].expected.entry(key).or_default().extend(add);
            }
        }
        for (fc, f) in events {
            assert!(f.get("stream").is_some(), "only event frames before resumed: {f}");
            self.on_event(*fc, f);
        }
        for (key, pos) in resets {
            self.clients[c].last_seen.insert(key, pos);
        }
        self.clients[c].live.as_mut().unwrap().held = false;
        if self.window {
            // With a window, `resume` must be the first frame; the client narrows right after.
            self.subscribe(c);
        }
    }

    fn disconnect(&mut self, c: usize, abnormal: bool) {
        let Some(live) = self.clients[c].live.take() else { return };
        let reason = if abnormal { DisconnectReason::Abnormal } else { DisconnectReason::Clean };
        self.sim.hub.disconnect(self.sim.now, live.id, reason).expect("live");
        self.clients[c].last_closed = Some(live.id);
        let (user, tenant) = (self.clients[c].user, self.clients[c].tenant());
        self.users[user].active -= 1;
        if self.users[user].active == 0 {
            self.users[user].detached_at = Some(self.sim.now);
        }
        for r in self.clients[c].spec.rooms.clone() {
            let members = self.room_members.get_mut(&(tenant, r)).unwrap();
            *members -= 1;
            if *members == 0 {
                self.stream(Key::Room(tenant, r)).end();
            }
        }
        // A stream the client has no position for cannot be resumed: its stretch ends here.
        for key in self.clients[c].keys() {
            if !self.clients[c].last_seen.contains_key(&key) {
                self.clients[c].settle(key);
            }
        }
        assert!(self.drain().is_empty(), "a transport disconnect delivers nothing");
    }

    fn tick(&mut self, d: Duration) {
        // With a window, clients resume within it.
        for c in 0..CLIENTS {
            if self.clients[c].live.as_ref().is_some_and(|l| l.held) {
                self.resume(c);
            }
        }
        self.sim.now += d;
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
        world.connect(c);
    }
    world.tick(Duration::from_secs(1));
    world.check_all();
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(1000).max(1000)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        max_shrink_iters: 20_000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// No resume window: each client resumes right after connecting, before anything else.
    #[test]
    fn resume_replays_exactly_what_was_missed_without_window(
        specs in proptest::collection::vec(spec(), CLIENTS),
        ops in proptest::collection::vec(op(), 1..120),
    ) {
        run_case(specs, ops, Duration::ZERO);
    }

    /// With a resume window: publishes may come between a connect and its resume.
    #[test]
    fn resume_replays_exactly_what_was_missed_with_window(
        specs in proptest::collection::vec(spec(), CLIENTS),
        ops in proptest::collection::vec(op(), 1..120),
    ) {
        run_case(specs, ops, Duration::from_secs(3));
    }
}
