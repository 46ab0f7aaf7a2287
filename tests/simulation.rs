//! Deterministic simulation: hundreds of clients of several tenants over virtual minutes, with
//! random disconnects, reconnects that resume, stalled readers, rooms, tenant broadcasts, thread
//! filters and clock jumps. Seeded and reproducible: a failure prints its seed, and
//! `SIM_SEEDS=<seed> cargo test --test simulation` replays it (`SIM_MINUTES` lengthens runs).
//!
//! Every frame a client processes is checked against a model of what was published:
//! - isolation: an event reaches a client only on its own user's, tenant's or rooms' streams,
//!   and only where the target allowed (role audiences, connection targets);
//! - no duplicates: per stream, seqs only grow;
//! - no loss: between two consecutive seqs a client sees, every skipped message is one it may
//!   not see or a low-priority one; a `resumed` frame may say `recovered: false` only when the
//!   gap really exceeded retention (too many messages, too old) or the stream was re-created;
//! - bounded memory: the hub's buffer gauges stay under their configured bounds, and
//!   `Hub::check_invariants` holds after every step.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchboard::{
    Action, Audience, Config, ConnId, DisconnectReason, Envelope, EventKind, Hub, Principal,
    Retention, Target, Tier,
};
use switchboard_testkit::Rng;
use switchboard_testkit::frames::{EventFrame, parse};

const TENANTS: usize = 4;
const USERS_PER_TENANT: usize = 60;
const CLIENTS: usize = 520;
const ROOMS: usize = 3;
const STEP: Duration = Duration::from_millis(250);

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Stream {
    User(usize, usize),
    Tenant(usize),
    Room(usize, usize),
}

#[derive(Clone, Debug)]
enum Vis {
    All,
    Thread(String),
    Conn(ConnId),
    Role(String),
}

#[derive(Debug)]
struct Msg {
    stream: Stream,
    epoch: u64,
    critical: bool,
    vis: Vis,
    at: Instant,
}

struct Client {
    tenant: usize,
    user: usize,
    roles: Vec<String>,
    thread: Option<String>,
    rooms: Vec<usize>,
    conn: Option<ConnId>,
    /// Frames handed to the transport and not yet read by the client.
    queue: VecDeque<(String, usize)>,
    stalled_until: Option<Instant>,
    reconnect_at: Instant,
    /// Wire stream name -> (epoch, last seq processed).
    cursors: BTreeMap<String, (u64, u64)>,
}

impl Client {
    fn stream_of(&self, wire: &str) -> Stream {
        match wire {
            "u" => Stream::User(self.tenant, self.user),
            "t" => Stream::Tenant(self.tenant),
            room => {
                Stream::Room(self.tenant, room.trim_start_matches("r:room").parse().expect("room"))
            }
        }
    }

    /// May this client see this message (its filter as configured, not as set on the wire yet)?
    fn sees(&self, m: &Msg) -> bool {
        match &m.vis {
            Vis::All => true,
            Vis::Thread(t) => self.thread.as_ref().is_none_or(|mine| mine == t),
            Vis::Conn(c) => self.conn == Some(*c),
            Vis::Role(r) => self.roles.contains(r),
        }
    }
}

struct World {
    seed: u64,
    hub: Hub,
    cfg: Config,
    now: Instant,
    rng: Rng,
    clients: Vec<Client>,
    by_conn: HashMap<ConnId, usize>,
    msgs: HashMap<u64, Msg>,
    /// (stream, epoch) -> seq -> message id
    log: HashMap<(Stream, u64), BTreeMap<u64, u64>>,
    /// Latest (epoch, seq) the model knows per stream.
    heads: HashMap<Stream, (u64, u64)>,
    next_id: u64,
    stats: SimStats,
}

#[derive(Default, Debug)]
struct SimStats {
    events_seen: u64,
    resumes_recovered: u64,
    resumes_reset: u64,
    slow_closes: u64,
    reconnects: u64,
}

impl World {
    fn fail(&self, what: String) -> ! {
        panic!("simulation seed {} failed: {what}\nreplay with SIM_SEEDS={}", self.seed, self.seed)
    }

    fn connect(&mut self, ci: usize) {
        let c = &self.clients[ci];
        let p = Principal::new(format!("t{}", c.tenant), format!("u{}", c.user))
            .tier(Tier::Enterprise)
            .roles(c.roles.iter().map(String::as_str));
        let id = match self.hub.connect(self.now, p) {
            Ok(id) => id,
            Err(_) => {
                // Breaker or limit: try again later.
                self.clients[ci].reconnect_at = self.now + Duration::from_secs(5);
                return;
            }
        };
        self.stats.reconnects += 1;
        self.by_conn.insert(id, ci);
        let c = &mut self.clients[ci];
        c.conn = Some(id);
        c.queue.clear();
        let rooms = c.rooms.clone();
        for r in rooms {
            // A room the client has no position in yet starts where its `joined` frame says.
            self.hub.join(self.now, id, format!("room{r}")).unwrap();
        }
        let c = &self.clients[ci];
        // Resume with what it saw; with nothing to resume (a first connection), just ping.
        let frame = if !c.cursors.is_empty() {
            let positions: serde_json::Map<String, Value> = c
                .cursors
                .iter()
                .map(|(k, (e, s))| (k.clone(), json!({"epoch": e, "seq": s})))
                .collect();
            json!({"type": "resume", "positions": positions}).to_string()
        } else {
            json!({"type": "ping"}).to_string()
        };
        self.hub.receive(self.now, id, frame.as_bytes()).unwrap();
        if let Some(t) = &c.thread {
            let sub = json!({"type": "subscribe", "thread_id": t}).to_string();
            self.hub.receive(self.now, id, sub.as_bytes()).unwrap();
        }
    }

    fn publish(&mut self) {
        let r = self.rng.index(100);
        let tenant = self.rng.index(TENANTS);
        let user = self.rng.index(USERS_PER_TENANT);
        let thinking = self.rng.index(3) == 0;
        let kind = if thinking { EventKind::AgentThinking } else { EventKind::ToolCompleted };
        let (target, vis) = match r {
            0..=49 => {
                let t = (user, tenant);
                let _ = t;
                if self.rng.index(2) == 0 {
                    let th = format!("th{}", self.rng.index(2));
                    let target = Target::Thread {
                        tenant: format!("t{tenant}").into(),
                        user: format!("u{user}").into(),
                        thread: th.clone().into(),
                    };
                    (target, Vis::Thread(th))
                } else {
                    (
                        Target::User {
                            tenant: format!("t{tenant}").into(),
                            user: format!("u{user}").into(),
                        },
                        Vis::All,
                    )
                }
            }
            50..=64 => {
                let live: Vec<ConnId> = self.by_conn.keys().copied().collect();
                if live.is_empty() {
                    return;
                }
                let mut live = live;
                live.sort();
                let c = live[self.rng.index(live.len())];
                (Target::Connection(c), Vis::Conn(c))
            }
            65..=84 => {
                let room = self.rng.index(ROOMS);
                (
                    Target::Room {
                        tenant: format!("t{tenant}").into(),
                        room: format!("room{room}").into(),
                    },
                    Vis::All,
                )
            }
            _ => {
                if self.rng.index(2) == 0 {
                    let role = format!("role{}", self.rng.index(2));
                    let audience = Audience::Role(role.as_str().into());
                    (
                        Target::Tenant { tenant: format!("t{tenant}").into(), audience },
                        Vis::Role(role),
                    )
                } else {
                    (
                        Target::Tenant {
                            tenant: format!("t{tenant}").into(),
                            audience: Audience::All,
                        },
                        Vis::All,
                    )
                }
            }
        };
        let id = self.next_id;
        self.next_id += 1;
        let env = Envelope::new(target.clone(), kind)
            .data(json!({"id": id, "pad": "x".repeat(self.rng.index(200))}));
        let published =
            self.hub.publish(self.now, env).unwrap_or_else(|e| self.fail(format!("publish: {e}")));
        let Some((_, pos)) = published.position else { return };
        let stream = match &target {
            Target::User { .. } | Target::Thread { .. } => Stream::User(tenant, user),
            Target::Connection(c) => {
                let ci = self.by_conn[c];
                Stream::User(self.clients[ci].tenant, self.clients[ci].user)
            }
            Target::Room { .. } => {
                let room = match &target {
                    Target::Room { room, .. } => {
                        room.as_str().trim_start_matches("room").parse().unwrap()
                    }
                    _ => unreachable!(),
                };
                Stream::Room(tenant, room)
            }
            _ => Stream::Tenant(tenant),
        };
        self.heads.insert(stream.clone(), (pos.epoch, pos.seq));
        self.log.entry((stream.clone(), pos.epoch)).or_default().insert(pos.seq, id);
        self.msgs
            .insert(id, Msg { stream, epoch: pos.epoch, critical: !thinking, vis, at: self.now });
    }

    /// Checks a gap (after, upto) a client skipped over: only messages it may not see, or
    /// low-priority ones, may be missing.
    fn check_gap(&self, ci: usize, stream: &Stream, epoch: u64, after: u64, upto: u64, why: &str) {
        let Some(log) = self.log.get(&(stream.clone(), epoch)) else { return };
        for (&seq, id) in log.range(after + 1..upto) {
            let m = &self.msgs[id];
            if m.critical && self.clients[ci].sees(m) {
                self.fail(format!(
                    "client {ci} lost critical message {id} (seq {seq}) of {stream:?}/{epoch} ({why}, window {after}..{upto})"
                ));
            }
        }
    }

    fn process(&mut self, ci: usize, text: &str) {
        let v = parse(text);
        let c = &self.clients[ci];
        match v["type"].as_str().unwrap() {
            "connected" => {
                for wire in ["u", "t"] {
                    let pos = &v["streams"][wire];
                    let (e, s) = (pos["epoch"].as_u64().unwrap(), pos["seq"].as_u64().unwrap());
                    // First connection: start at the head. Later ones keep their cursor and resume.
                    self.clients[ci].cursors.entry(wire.to_owned()).or_insert((e, s));
                }
            }
            "resumed" => {
                for (wire, report) in v["streams"].as_object().unwrap() {
                    let c = &self.clients[ci];
                    let stream = c.stream_of(wire);
                    let (ce, cs) = c.cursors[wire];
                    if report["recovered"].as_bool().unwrap() {
                        self.stats.resumes_recovered += 1;
                        continue;
                    }
                    self.stats.resumes_reset += 1;
                    let (e, s) =
                        (report["epoch"].as_u64().unwrap(), report["seq"].as_u64().unwrap());
                    let reason = report["reason"].as_str().unwrap_or("?");
                    match reason {
                        "epoch_mismatch" => {
                            if e == ce {
                                self.fail(format!(
                                    "client {ci}: epoch_mismatch on {wire} with equal epochs"
                                ));
                            }
                        }
                        "gap_too_old" => {
                            let ret = self.cfg.retention;
                            let missing: Vec<&Msg> = self
                                .log
                                .get(&(stream.clone(), ce))
                                .map(|l| l.range(cs + 1..).map(|(_, id)| &self.msgs[id]).collect())
                                .unwrap_or_default();
                            let too_many = missing.len() > ret.max_messages;
                            let too_old =
                                missing.first().is_some_and(|m| self.now - m.at > ret.max_age);
                            if !too_many && !too_old {
                                self.fail(format!(
                                    "client {ci}: {wire} unrecoverable after {} messages, oldest {:?} old",
                                    missing.len(),
                                    missing.first().map(|m| self.now - m.at)
                                ));
                            }
                        }
                        // Issue 10 item 3: the replay would not fit under the unwritten limit
                        // (only possible when something is missing).
                        "too_large" => {
                            if e == ce && s <= cs {
                                self.fail(format!(
                                    "client {ci}: too_large on {wire}, none missing"
                                ));
                            }
                        }
                        other => {
                            self.fail(format!("client {ci}: unexpected reason {other} for {wire}"))
                        }
                    }
                    // The client refetches that stream's state and continues from the head.
                    self.clients[ci].cursors.insert(wire.clone(), (e, s));
                }
            }
            "pong" | "skipped" => {}
            "joined" => {
                let wire = v["stream"].as_str().unwrap().to_owned();
                let (e, s) = (v["epoch"].as_u64().unwrap(), v["seq"].as_u64().unwrap());
                self.clients[ci].cursors.entry(wire).or_insert((e, s));
            }
            kind if v.get("seq").is_some() => {
                self.stats.events_seen += 1;
                let event = EventFrame::decode(&v).expect("an event frame");
                let (wire, epoch, seq) = (event.stream, event.epoch, event.seq);
                let id = v["data"]["id"].as_u64().unwrap();
                let m = self
                    .msgs
                    .get(&id)
                    .unwrap_or_else(|| self.fail(format!("unknown message {id}")));
                let stream = c.stream_of(&wire);
                if m.stream != stream || m.epoch != epoch {
                    self.fail(format!(
                        "client {ci} of t{}/u{} got message {id} of {:?} as {wire}",
                        c.tenant, c.user, m.stream
                    ));
                }
                match &m.vis {
                    Vis::Role(r) if !c.roles.contains(r) => {
                        self.fail(format!("client {ci} got role {r} message {id}"))
                    }
                    Vis::Conn(target) if c.conn != Some(*target) => {
                        self.fail(format!("client {ci} got message {id} meant for {target:?}"))
                    }
                    _ => {}
                }
                let Some(&(ce, cs)) = c.cursors.get(&wire) else {
                    self.fail(format!("client {ci}: {kind} on {wire} before any position"))
                };
                if ce != epoch {
                    self.fail(format!("client {ci}: {wire} epoch {epoch} while at {ce}"));
                }
                if seq <= cs {
                    self.fail(format!(
                        "client {ci}: {wire} seq {seq} after {cs} (duplicate or reorder)"
                    ));
                }
                self.check_gap(ci, &stream, epoch, cs, seq, "live or replay");
                self.clients[ci].cursors.insert(wire, (epoch, seq));
            }
            "error" => self.fail(format!("client {ci} got an error frame: {text}")),
            other => self.fail(format!("unexpected frame type {other}")),
        }
    }

    fn drain(&mut self) {
        let mut pings = Vec::new();
        while let Some(action) = self.hub.poll_action() {
            match action {
                Action::Deliver { conn, frame } => {
                    let Some(&ci) = self.by_conn.get(&conn) else {
                        self.fail(format!("delivery to {conn:?}, which is not open"))
                    };
                    self.clients[ci].queue.push_back((frame.as_str().to_owned(), frame.len()));
                }
                Action::Ping { conn } => pings.push(conn),
                Action::Close { conn, reason } => {
                    let ci = self.by_conn.remove(&conn).unwrap();
                    if reason == switchboard::CloseReason::SlowConsumer {
                        self.stats.slow_closes += 1;
                    }
                    let c = &mut self.clients[ci];
                    c.conn = None;
                    c.queue.clear(); // unsent frames die with the transport
                    c.reconnect_at = self.now + Duration::from_secs(1);
                }
                _ => {}
            }
        }
        for conn in pings {
            if let Some(&ci) = self.by_conn.get(&conn) {
                // A stalled application may still have its pongs answered by the transport; only
                // some stalled clients go silent entirely.
                if self.clients[ci].stalled_until.is_none() || ci % 2 == 0 {
                    self.hub.pong(self.now, conn).unwrap();
                }
            }
        }
    }

    /// Every client that is reading takes its frames and confirms them.
    fn flush(&mut self) {
        for ci in 0..self.clients.len() {
            let Some(conn) = self.clients[ci].conn else { continue };
            if self.clients[ci].stalled_until.is_some_and(|t| t > self.now) {
                continue;
            }
            self.clients[ci].stalled_until = None;
            let mut bytes = 0;
            while let Some((text, len)) = self.clients[ci].queue.pop_front() {
                self.process(ci, &text);
                bytes += len;
            }
            if bytes > 0 {
                self.hub.written(self.now, conn, bytes).unwrap();
            }
        }
    }

    fn step(&mut self) {
        // Clock: mostly steady, sometimes a jump forwards, sometimes a stale (earlier) `now`.
        self.now += STEP;
        if self.rng.chance_per_million(500) {
            self.now += Duration::from_secs(20);
        }
        let tick_at = if self.rng.chance_per_million(20_000) {
            self.now - Duration::from_secs(3)
        } else {
            self.now
        };
        self.hub.tick(tick_at);
        self.drain();

        for ci in 0..self.clients.len() {
            match self.clients[ci].conn {
                None if self.now >= self.clients[ci].reconnect_at => self.connect(ci),
                Some(conn) if self.rng.chance_per_million(800) => {
                    let abnormal = self.rng.index(3) == 0;
                    let reason =
                        if abnormal { DisconnectReason::Abnormal } else { DisconnectReason::Clean };
                    self.hub.disconnect(self.now, conn, reason).unwrap();
                    self.by_conn.remove(&conn);
                    let c = &mut self.clients[ci];
                    c.conn = None;
                    c.queue.clear();
                    // Mostly back within retention; sometimes long after (the user retires).
                    let away =
                        if self.rng.index(10) == 0 { 200 } else { 1 + self.rng.index(40) as u64 };
                    c.reconnect_at = self.now + Duration::from_secs(away);
                }
                Some(_) if self.rng.chance_per_million(300) => {
                    let secs = 2 + self.rng.index(40) as u64;
                    self.clients[ci].stalled_until = Some(self.now + Duration::from_secs(secs));
                }
                _ => {}
            }
            self.drain();
        }
        for _ in 0..6 {
            self.publish();
            self.drain();
        }
        self.flush();
        self.drain();

        let s = self.hub.stats();
        if s.buffered_bytes > self.cfg.max_buffered_bytes {
            self.fail(format!("buffered bytes {} over the cap", s.buffered_bytes));
        }
        if let Err(e) = self.hub.check_invariants() {
            self.fail(format!("invariant: {e}"));
        }
    }
}

fn run(seed: u64, minutes: u64) -> SimStats {
    let cfg = Config {
        max_connections: 2_000,
        seed,
        user_retention: Duration::from_secs(60),
        retention: Retention {
            max_messages: 150,
            max_bytes: 1 << 20,
            max_age: Duration::from_secs(90),
        },
        max_inflight_bytes: 2 * 1024,
        max_unwritten_bytes: 8 * 1024,
        resume_window: Duration::from_secs(1),
        // Rooms outlive their members for a while, so that they can be resumed like users.
        room_retention: Duration::from_secs(45),
        max_buffered_bytes: 64 << 20,
        ..Config::default()
    };
    let mut rng = Rng::seeded(seed);
    let clients = (0..CLIENTS)
        .map(|i| {
            let tenant = i % TENANTS;
            let user = (i / TENANTS) % USERS_PER_TENANT;
            let roles = (0..2).filter(|_| rng.index(2) == 0).map(|r| format!("role{r}")).collect();
            let thread = if rng.index(4) == 0 { Some(format!("th{}", rng.index(2))) } else { None };
            let rooms = (0..ROOMS).filter(|_| rng.index(3) == 0).collect();
            Client {
                tenant,
                user,
                roles,
                thread,
                rooms,
                conn: None,
                queue: VecDeque::new(),
                stalled_until: None,
                reconnect_at: Instant::now(),
                cursors: BTreeMap::new(),
            }
        })
        .collect();
    let now = Instant::now();
    let mut world = World {
        seed,
        hub: Hub::new(cfg.clone()).unwrap(),
        cfg,
        now,
        rng,
        clients,
        by_conn: HashMap::new(),
        msgs: HashMap::new(),
        log: HashMap::new(),
        heads: HashMap::new(),
        next_id: 0,
        stats: SimStats::default(),
    };
    for c in &mut world.clients {
        c.reconnect_at = now;
    }
    let steps = minutes * 60 * 1000 / STEP.as_millis() as u64;
    for _ in 0..steps {
        world.step();
    }
    world.stats
}

#[test]
fn clients_see_exactly_their_own_streams_across_drops_resumes_and_stalls() {
    let seeds: Vec<u64> = std::env::var("SIM_SEEDS")
        .map(|s| s.split(',').map(|x| x.trim().parse().expect("SIM_SEEDS: numbers")).collect())
        .unwrap_or_else(|_| vec![1, 2, 3]);
    let minutes = std::env::var("SIM_MINUTES").map_or(10, |m| m.parse().expect("SIM_MINUTES"));
    for seed in seeds {
        let stats = run(seed, minutes);
        eprintln!("seed {seed}: {stats:?}");
        // The run must have exercised what it claims to.
        assert!(stats.events_seen > 10_000, "seed {seed}: too few events {stats:?}");
        assert!(stats.resumes_recovered > 100, "seed {seed}: too few recovered resumes {stats:?}");
        assert!(stats.resumes_reset > 0, "seed {seed}: no resume ever needed a reset {stats:?}");
        assert!(stats.slow_closes > 0, "seed {seed}: no stalled reader was ever closed {stats:?}");
    }
}
