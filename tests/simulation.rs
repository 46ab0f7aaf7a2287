//! Deterministic simulation: hundreds of clients of several tenants over virtual minutes, with
//! random disconnects, reconnects that resume, stalled readers, rooms, tenant broadcasts, thread
//! filters and clock jumps. Seeded and reproducible: a failure prints its seed, and
//! `SIM_SEEDS=<seed> cargo test --test simulation` replays it (`SIM_MINUTES` lengthens runs).
//!
//! Every frame a client processes is checked by the shared client model
//! (`switchboard_testkit::client`: positions per stream identity, a log of what was published),
//! the same one the resume properties use:
//! - isolation: an event reaches a client only on its own user's, tenant's or rooms' streams,
//!   and only where the target allowed (role audiences, connection targets);
//! - no duplicates: per stream, seqs only grow;
//! - no loss: between two consecutive seqs a client sees, every skipped message is one it may
//!   not see or a low-priority one; a `resumed` frame may say `recovered: false` only when the
//!   gap really exceeded retention (too many messages, too old) or the stream was re-created;
//! - bounded memory: the hub's buffer gauges stay under their configured bounds, and
//!   `Hub::check_invariants` holds after every step.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchboard::{
    Action, Audience, Config, ConnId, DisconnectReason, Envelope, EventKind, Hub, Principal,
    Retention, Target, Tier,
};
use switchboard_testkit::Rng;
use switchboard_testkit::client::{
    Client, Log, Published, StreamKey, Visibility, population_member,
};
use switchboard_testkit::frames::{EventFrame, parse, stream_position};

const TENANTS: usize = 4;
const USERS_PER_TENANT: usize = 60;
const CLIENTS: usize = 520;
const ROOMS: usize = 3;
const STEP: Duration = Duration::from_millis(250);

/// A simulated device: the shared client model plus its transport's state.
struct Device {
    /// What the client knows, received and may see (`switchboard_testkit::client`).
    client: Client,
    rooms: Vec<usize>,
    /// Frames handed to the transport and not yet read by the client.
    queue: VecDeque<(String, usize)>,
    stalled_until: Option<Instant>,
    reconnect_at: Instant,
}

struct World {
    seed: u64,
    hub: Hub,
    cfg: Config,
    now: Instant,
    rng: Rng,
    clients: Vec<Device>,
    by_conn: HashMap<ConnId, usize>,
    /// Everything published, by id and by (stream, epoch, seq).
    log: Log,
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
        let c = &self.clients[ci].client;
        let p = Principal::new(c.tenant.as_str(), c.user.as_str())
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
        let d = &mut self.clients[ci];
        d.client.conn = Some(id);
        d.queue.clear();
        for r in d.rooms.clone() {
            // A room the client has no position in yet starts where its `joined` frame says.
            self.hub.join(self.now, id, format!("room{r}")).unwrap();
        }
        let c = &self.clients[ci].client;
        // Resume with what it saw; with nothing to resume (a first connection), just ping.
        let positions: serde_json::Map<String, Value> =
            c.positions().map(|(k, (e, s))| (k.wire(), json!({"epoch": e, "seq": s}))).collect();
        let frame = if positions.is_empty() {
            json!({"type": "ping"}).to_string()
        } else {
            json!({"type": "resume", "positions": positions}).to_string()
        };
        self.hub.receive(self.now, id, frame.as_bytes()).unwrap();
        for t in c.filter.iter().flatten() {
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
        let (target, visibility) = match r {
            0..=49 => {
                if self.rng.index(2) == 0 {
                    let th = format!("th{}", self.rng.index(2));
                    let target = Target::Thread {
                        tenant: format!("t{tenant}").into(),
                        user: format!("u{user}").into(),
                        thread: th.clone().into(),
                    };
                    (target, Visibility::Thread(th))
                } else {
                    (
                        Target::User {
                            tenant: format!("t{tenant}").into(),
                            user: format!("u{user}").into(),
                        },
                        Visibility::All,
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
                (Target::Connection(c), Visibility::Conn(c))
            }
            65..=84 => {
                let room = self.rng.index(ROOMS);
                (
                    Target::Room {
                        tenant: format!("t{tenant}").into(),
                        room: format!("room{room}").into(),
                    },
                    Visibility::All,
                )
            }
            _ => {
                if self.rng.index(2) == 0 {
                    let role = format!("role{}", self.rng.index(2));
                    let audience = Audience::Role(role.as_str().into());
                    (
                        Target::Tenant { tenant: format!("t{tenant}").into(), audience },
                        Visibility::Role(role),
                    )
                } else {
                    (
                        Target::Tenant {
                            tenant: format!("t{tenant}").into(),
                            audience: Audience::All,
                        },
                        Visibility::All,
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
        let key = match &target {
            Target::User { tenant, user, .. } | Target::Thread { tenant, user, .. } => {
                StreamKey::user(tenant.as_str(), user.as_str())
            }
            Target::Connection(c) => self.clients[self.by_conn[c]].client.user_stream(),
            Target::Room { tenant, room } => StreamKey::room(tenant.as_str(), room.as_str()),
            Target::Tenant { tenant, .. } => StreamKey::tenant(tenant.as_str()),
            other => unreachable!("never published here: {other:?}"),
        };
        let (epoch, seq, critical, at) = (pos.epoch, pos.seq, !thinking, self.now);
        self.log.record(id, Published { key, epoch, seq, visibility, critical, at });
    }

    /// Client `ci` reads one frame: the shared client model checks it.
    fn process(&mut self, ci: usize, text: &str) {
        let v = parse(text);
        let c = &mut self.clients[ci].client;
        match v["type"].as_str().unwrap() {
            "connected" => {
                for wire in ["u", "t"] {
                    let pos = stream_position(&v, wire).expect("connected names u and t");
                    // First connection: start at the head. Later ones keep their position and
                    // resume.
                    c.start(c.key_of(wire).expect("a stream"), pos);
                }
            }
            "resumed" => {
                for (wire, report) in v["streams"].as_object().unwrap() {
                    if report["recovered"].as_bool().unwrap() {
                        self.stats.resumes_recovered += 1;
                        continue;
                    }
                    self.stats.resumes_reset += 1;
                    // The reason must be justified; the client refetches that stream's state and
                    // continues from the head.
                    let c = &mut self.clients[ci].client;
                    let retention = self.cfg.retention;
                    if let Err(e) = c.unrecovered(&self.log, wire, report, &retention, self.now) {
                        self.fail(format!("client {ci}: {e}"));
                    }
                }
            }
            "pong" | "skipped" => {}
            "joined" => {
                let event = EventFrame::decode(&v).expect("joined names its stream");
                c.start(c.key_of(&event.stream).expect("a room"), (event.epoch, event.seq));
            }
            _ if v.get("seq").is_some() => {
                self.stats.events_seen += 1;
                let event = EventFrame::decode(&v).expect("an event frame");
                let id = v["data"]["id"].as_u64().unwrap();
                // The gap this event skips over (from the client's position) may only hold
                // messages it may not see, or low-priority ones.
                let key = c.key_of(&event.stream).expect("a stream");
                let from = c.position(&key).filter(|p| p.0 == event.epoch);
                let lost = from.map(|(e, s)| c.lost(&self.log, &key, e, s, event.seq));
                let checked = match lost.and_then(|l| l.first().copied()) {
                    Some(m) => Err(format!("lost critical message {m} of {key}")),
                    None => c.on_event(&self.log, &event, id).map(drop),
                };
                if let Err(e) = checked {
                    self.fail(format!("client {ci}: {e}"));
                }
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
                    c.client.conn = None;
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
            let Some(conn) = self.clients[ci].client.conn else { continue };
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
            match self.clients[ci].client.conn {
                None if self.now >= self.clients[ci].reconnect_at => self.connect(ci),
                Some(conn) if self.rng.chance_per_million(800) => {
                    let abnormal = self.rng.index(3) == 0;
                    let reason =
                        if abnormal { DisconnectReason::Abnormal } else { DisconnectReason::Clean };
                    self.hub.disconnect(self.now, conn, reason).unwrap();
                    self.by_conn.remove(&conn);
                    let c = &mut self.clients[ci];
                    c.client.conn = None;
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
            let (client, rooms) = population_member(i, TENANTS, USERS_PER_TENANT, ROOMS, &mut rng);
            Device {
                client,
                rooms,
                queue: VecDeque::new(),
                stalled_until: None,
                reconnect_at: Instant::now(),
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
        log: Log::default(),
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
