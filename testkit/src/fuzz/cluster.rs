//! The `cluster` fuzz target's cases and runner: several hubs over the model bus, with faults
//! and a driver's bugs, checked for every event's audience and every stream's order.

use super::*;

// ---- the `cluster` target ----------------------------------------------------------------------

/// At most this many steps per [`ClusterCase`]: short, so that a crash shrinks to a short loop.
pub const CLUSTER_MAX_STEPS: usize = 40;
/// Tenants of a cluster case (`t0`, `t1`).
pub const CLUSTER_TENANTS: usize = 2;
/// Users per tenant of a cluster case (`u0`, `u1`).
pub const CLUSTER_USERS: usize = 2;
/// Rooms per tenant of a cluster case (`room0`, `room1`).
pub const CLUSTER_ROOMS: usize = 2;

/// One `cluster` fuzz case: 2–3 clustered hubs over the model bus ([`crate::cluster::Cluster`])
/// and the steps to run on them, checked by [`ClusterRunner`].
#[derive(Clone, Debug)]
pub struct ClusterCase {
    /// The configuration the case varies.
    pub knobs: ClusterKnobs,
    /// What happens, in order.
    pub steps: Vec<ClusterStep>,
}

/// The configuration a cluster case varies (every node gets the same).
#[derive(Clone, Debug)]
pub struct ClusterKnobs {
    /// How many nodes (2 or 3).
    pub nodes: usize,
    /// The model bus's seed (its loss and latency draws, its epochs).
    pub seed: u64,
    /// `ClusterConfig::max_held_per_stream`.
    pub max_held: u32,
    /// `ClusterConfig::fetch_limit`.
    pub fetch_limit: u32,
    /// `ClusterConfig::max_inflight_ops`.
    pub max_inflight: u32,
    /// `ClusterConfig::op_timeout`, in ms.
    pub op_timeout_ms: u64,
    /// `Retention::max_messages` (the local recovery buffer and the bus log's `keep`).
    pub retention_messages: usize,
    /// `Config::resume_window`, in ms.
    pub resume_window_ms: u64,
}

/// A stream named by the case (`StreamKey`), within the case's tenants, users and rooms (one
/// more of each that nobody connects as, so that foreign streams are named too).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CStream {
    /// A user's stream.
    User(usize, usize),
    /// A room's stream.
    Room(usize, usize),
    /// A tenant's broadcast stream.
    Tenant(usize),
}

impl CStream {
    /// The stream's key.
    #[must_use]
    pub fn key(self) -> switchboard::StreamKey {
        use switchboard::StreamKey;
        match self {
            CStream::User(t, u) => StreamKey::user(tenant_name(t).as_str(), user_name(u).as_str()),
            CStream::Room(t, r) => StreamKey::room(tenant_name(t).as_str(), room_name(r).as_str()),
            CStream::Tenant(t) => StreamKey::tenant(tenant_name(t).as_str()),
        }
    }
}

/// Who a publish of a cluster case is for.
#[derive(Clone, Copy, Debug)]
pub enum CTarget {
    /// `Target::User`.
    User(usize, usize),
    /// `Target::Thread` (thread `th<n>`).
    Thread(usize, usize, usize),
    /// `Target::Room`.
    Room(usize, usize),
    /// `Target::Tenant`.
    Tenant(usize),
    /// `Target::Connection` of the publishing node's `n`-th live connection (modulo their count).
    Conn(usize),
}

/// A position a forged input names.
#[derive(Clone, Copy, Debug)]
pub enum CPos {
    /// The bus's current top of the stream, its seq moved by this much (saturating).
    Top(i8),
    /// Whatever the fuzzer has.
    Raw(u64, u64),
}

/// A payload a forged input carries.
#[derive(Clone, Debug)]
pub enum Forged {
    /// The payload of an append made earlier in the case (any stream: `n` modulo their count),
    /// byte for byte.
    Recorded(usize),
    /// Any text (the isolation check's marker key is spelled out of it).
    Text(String),
}

/// A reply a forged `bus_reply` carries.
#[derive(Clone, Debug)]
pub enum CReply {
    /// `Ok(Subscribed)`.
    Subscribed(CPos),
    /// `Ok(Appended)`.
    Appended(CPos),
    /// `Ok(Duplicate)`.
    Duplicate(CPos),
    /// `Ok(Fetched)` with these `(seq, payload)` entries.
    Fetched(CPos, Vec<(u64, Forged)>),
    /// `Ok(Tops)`.
    Tops(Vec<CPos>),
    /// `Ok(Rotated)`.
    Rotated(CPos),
    /// `Err(..)`: `Retryable`, `Refused`, `Down` or `Overloaded` by index.
    Failed(usize),
}

/// A fault of the model bus or of a node.
#[derive(Clone, Copy, Debug)]
pub enum CFault {
    /// Live messages to a node (`None`: every node) are lost with this probability (ppm).
    Loss(Option<usize>, u32),
    /// Deliveries to a node (`None`: every node) take up to this many ms.
    Latency(Option<usize>, u64),
    /// Nothing is delivered to a node (`None`: any node) for this many ms.
    Hold(Option<usize>, u64),
    /// Operations fail / time out with these probabilities (ppm).
    OpFaults(u32, u32),
    /// The whole bus goes down.
    Down,
    /// The whole bus comes back.
    Up,
    /// One node's link breaks.
    Cut(usize),
    /// One node's link works again.
    Link(usize),
    /// The engine restarts empty.
    RestartEmpty,
    /// A failover loses the last `n` appends of a stream.
    LoseTail(CStream, u64),
    /// A failover loses the last `n` appends of every stream.
    LoseTailEverywhere(u64),
    /// A node dies with its state.
    Crash(usize),
    /// A dead node starts again, empty.
    Restart(usize),
}

/// One step of a cluster case. Connections are addressed as a node's `n`-th live connection
/// (modulo their count; nothing happens if it has none).
#[derive(Clone, Debug)]
pub enum ClusterStep {
    /// `Hub::connect` of `(tenant, user)`.
    Connect { node: usize, tenant: usize, user: usize },
    /// `Hub::disconnect`.
    Disconnect { node: usize, conn: usize },
    /// `Hub::join`.
    Join { node: usize, conn: usize, room: usize },
    /// `Hub::leave`.
    Leave { node: usize, conn: usize, room: usize },
    /// `Hub::publish` (with idempotency key `k<n>` if given).
    Publish { node: usize, to: CTarget, key: Option<u8> },
    /// A `resume` frame with the last positions some connection of the case (`from`, modulo
    /// their count; any node, dead or alive) saw, each seq moved back by `back`.
    Resume { node: usize, conn: usize, from: usize, back: u64 },
    /// Raw client frame bytes.
    Raw { node: usize, conn: usize, bytes: Vec<u8> },
    /// The virtual clock moves forward by this many ms.
    Advance(u64),
    /// A bus or node fault.
    Fault(CFault),
    /// A driver bug: `Hub::bus_message` with any stream, position and payload.
    Message { node: usize, stream: CStream, pos: CPos, payload: Forged },
    /// A driver bug: `Hub::bus_reply` with any op id and reply (positions read from `stream`).
    Reply { node: usize, generation: u32, n: u64, stream: CStream, reply: CReply },
}

impl<'a> Arbitrary<'a> for ClusterCase {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let knobs = ClusterKnobs {
            nodes: u.int_in_range(2..=3)?,
            seed: u.arbitrary()?,
            max_held: if u.arbitrary()? { u.int_in_range(1..=4)? } else { 1_000 },
            fetch_limit: if u.arbitrary()? { u.int_in_range(1..=3)? } else { 1_000 },
            max_inflight: if u.ratio(1, 4)? { u.int_in_range(1..=4)? } else { 10_000 },
            op_timeout_ms: if u.arbitrary()? { u.int_in_range(50..=2_000)? } else { 3_000 },
            retention_messages: if u.arbitrary()? { u.int_in_range(1..=4)? } else { 1_000 },
            resume_window_ms: if u.ratio(1, 4)? { u.int_in_range(100..=3_000)? } else { 0 },
        };
        let mut steps = Vec::new();
        while steps.len() < CLUSTER_MAX_STEPS && !u.is_empty() {
            // A step the remaining bytes cannot finish ends the case (the fuzzer then still runs
            // what came before it).
            let Ok(step) = cluster_step(u, knobs.nodes) else { break };
            steps.push(step);
        }
        Ok(Self { knobs, steps })
    }
}

fn c_stream(u: &mut Unstructured<'_>) -> Result<CStream> {
    let t = below(u, CLUSTER_TENANTS + 1)?;
    Ok(match u.choose_index(3)? {
        0 => CStream::User(t, below(u, CLUSTER_USERS + 1)?),
        1 => CStream::Room(t, below(u, CLUSTER_ROOMS + 1)?),
        _ => CStream::Tenant(t),
    })
}

fn c_pos(u: &mut Unstructured<'_>) -> Result<CPos> {
    Ok(if u.ratio(3, 4)? {
        CPos::Top(u.int_in_range(-3..=3)?)
    } else {
        CPos::Raw(u.arbitrary()?, u.arbitrary()?)
    })
}

fn forged(u: &mut Unstructured<'_>) -> Result<Forged> {
    Ok(if u.arbitrary()? {
        Forged::Recorded(u.int_in_range(0..=63)?)
    } else {
        let len = u.int_in_range(0..=120)?.min(u.len());
        Forged::Text(String::from_utf8_lossy(u.bytes(len)?).into_owned())
    })
}

fn node_opt(u: &mut Unstructured<'_>, nodes: usize) -> Result<Option<usize>> {
    opt(u, |u| below(u, nodes))
}

fn cluster_step(u: &mut Unstructured<'_>, nodes: usize) -> Result<ClusterStep> {
    let node = below(u, nodes)?;
    let conn = below(u, 8)?;
    Ok(match u.choose_index(12)? {
        0 => ClusterStep::Connect {
            node,
            tenant: below(u, CLUSTER_TENANTS)?,
            user: below(u, CLUSTER_USERS)?,
        },
        1 => ClusterStep::Disconnect { node, conn },
        2 => ClusterStep::Join { node, conn, room: below(u, CLUSTER_ROOMS)? },
        3 => ClusterStep::Leave { node, conn, room: below(u, CLUSTER_ROOMS)? },
        4 => {
            let t = below(u, CLUSTER_TENANTS + 1)?;
            let to = match u.choose_index(5)? {
                0 => CTarget::User(t, below(u, CLUSTER_USERS + 1)?),
                1 => CTarget::Thread(t, below(u, CLUSTER_USERS)?, below(u, 2)?),
                2 => CTarget::Room(t, below(u, CLUSTER_ROOMS)?),
                3 => CTarget::Tenant(t),
                _ => CTarget::Conn(below(u, 8)?),
            };
            ClusterStep::Publish { node, to, key: opt(u, |u| u.int_in_range(0..=3))? }
        }
        5 => ClusterStep::Resume {
            node,
            conn,
            from: below(u, 16)?,
            back: if u.arbitrary()? { 0 } else { u.int_in_range(1..=5)? },
        },
        6 => ClusterStep::Raw {
            node,
            conn,
            bytes: match raw(u)? {
                In::Raw(bytes) => bytes,
                _ => Vec::new(),
            },
        },
        7 => ClusterStep::Advance(if u.ratio(1, 4)? {
            u.int_in_range(10_000..=200_000)?
        } else {
            u.int_in_range(0..=5_000)?
        }),
        8 => ClusterStep::Fault(match u.choose_index(13)? {
            0 => CFault::Loss(node_opt(u, nodes)?, u.int_in_range(0..=1_000_000)?),
            1 => CFault::Latency(node_opt(u, nodes)?, u.int_in_range(0..=3_000)?),
            2 => CFault::Hold(node_opt(u, nodes)?, u.int_in_range(0..=10_000)?),
            3 => CFault::OpFaults(u.int_in_range(0..=500_000)?, u.int_in_range(0..=500_000)?),
            4 => CFault::Down,
            5 => CFault::Up,
            6 => CFault::Cut(node),
            7 => CFault::Link(node),
            8 => CFault::RestartEmpty,
            9 => CFault::LoseTail(c_stream(u)?, u.int_in_range(1..=3)?),
            10 => CFault::LoseTailEverywhere(u.int_in_range(1..=3)?),
            11 => CFault::Crash(node),
            _ => CFault::Restart(node),
        }),
        9 | 10 => {
            ClusterStep::Message { node, stream: c_stream(u)?, pos: c_pos(u)?, payload: forged(u)? }
        }
        _ => ClusterStep::Reply {
            node,
            generation: u.int_in_range(0..=2)?,
            n: if u.ratio(7, 8)? { u.int_in_range(0..=40)? } else { u.arbitrary()? },
            stream: c_stream(u)?,
            reply: match u.choose_index(7)? {
                0 => CReply::Subscribed(c_pos(u)?),
                1 => CReply::Appended(c_pos(u)?),
                2 => CReply::Duplicate(c_pos(u)?),
                3 => {
                    let n = below(u, 4)?;
                    let mut entries = Vec::with_capacity(n);
                    for _ in 0..n {
                        entries.push((u.int_in_range(0..=12)?, forged(u)?));
                    }
                    CReply::Fetched(c_pos(u)?, entries)
                }
                4 => {
                    let n = below(u, 4)?;
                    let mut tops = Vec::with_capacity(n);
                    for _ in 0..n {
                        tops.push(c_pos(u)?);
                    }
                    CReply::Tops(tops)
                }
                5 => CReply::Rotated(c_pos(u)?),
                _ => CReply::Failed(below(u, 4)?),
            },
        },
    })
}

/// The data key under which every publish of a cluster case carries its number; the isolation
/// check reads it from each delivered event to know whose the event is. Forged payload text never
/// spells it ([`ClusterRunner`] rewrites it away).
pub const MARK: &str = "fz_mark";

/// Who may see a publish of a cluster case.
#[derive(Clone, Copy, Debug)]
enum Audience {
    User(usize, usize),
    Room(usize, usize),
    Tenant(usize),
    Conn(usize, ConnId),
}

/// One open connection of a node, as the runner tracks it.
struct Tracked {
    id: ConnId,
    tenant: usize,
    user: usize,
    /// Index of its last positions in [`ClusterRunner::memos`] (kept after it is gone).
    memo: usize,
    /// Per stream name and epoch, the last seq delivered since the last `resync`/`resumed`.
    seen: BTreeMap<String, BTreeMap<u64, u64>>,
}

#[derive(Default)]
struct NodeTrack {
    live: Vec<Tracked>,
    closed: BTreeSet<ConnId>,
}

/// Runs a [`ClusterCase`] on a [`Cluster`] and checks after every step: no panic; every node's
/// [`Hub::check_invariants`](switchboard::Hub::check_invariants); every delivered frame parses
/// as JSON and goes to a connection that is open; a `connected` frame names the connection's own
/// tenant and user; an event published by the case reaches only connections entitled to it (its
/// tenant, and its user for a user stream, the very connection for `Target::Connection`); per
/// connection, stream and epoch, seqs only grow until a `resync` (of that stream) or `resumed`.
pub struct ClusterRunner {
    pub(super) c: Cluster,
    nodes: Vec<NodeTrack>,
    marks: Vec<Audience>,
    memos: Vec<BTreeMap<String, (u64, u64)>>,
    /// Frames delivered so far (for the fuzzer's statistics and tests).
    pub delivered: u64,
    /// Whether a driver bug was played (a forged message or reply): a position it made up may
    /// move a stream to an epoch the log then contradicts, and the stream back after a resync.
    forged: bool,
}

impl ClusterRunner {
    /// The nodes of `knobs`, started.
    ///
    /// # Panics
    /// If the knobs make an invalid configuration (a bug in [`ClusterCase`]'s bounds).
    #[must_use]
    pub fn new(knobs: &ClusterKnobs) -> Self {
        let c = Cluster::new(knobs.nodes, knobs.seed, |i| {
            let mut cfg = crate::sim::quiet();
            let mut cc = ClusterConfig::new(format!("node-{i}").as_str());
            cc.max_held_per_stream = knobs.max_held;
            cc.fetch_limit = knobs.fetch_limit;
            cc.max_inflight_ops = knobs.max_inflight;
            cc.op_timeout = Duration::from_millis(knobs.op_timeout_ms);
            cfg.cluster = Some(cc);
            cfg.retention.max_messages = knobs.retention_messages;
            cfg.resume_window = Duration::from_millis(knobs.resume_window_ms);
            cfg
        });
        let nodes = (0..knobs.nodes).map(|_| NodeTrack::default()).collect();
        Self { c, nodes, marks: Vec::new(), memos: Vec::new(), delivered: 0, forged: false }
    }

    pub(super) fn conn(&self, node: usize, n: usize) -> Option<ConnId> {
        let live = &self.nodes.get(node)?.live;
        (!live.is_empty()).then(|| live[n % live.len()].id)
    }

    fn forget(&mut self, node: usize, conn: ConnId) {
        let t = &mut self.nodes[node];
        t.live.retain(|c| c.id != conn);
        t.closed.insert(conn);
    }

    fn pos(&self, p: CPos, key: &StreamKey) -> StreamPos {
        match p {
            CPos::Top(d) => {
                let top = self.c.bus.top(key);
                StreamPos { epoch: top.epoch, seq: top.seq.saturating_add_signed(i64::from(d)) }
            }
            CPos::Raw(epoch, seq) => StreamPos { epoch, seq },
        }
    }

    fn payload(&self, f: &Forged) -> Arc<str> {
        match f {
            Forged::Recorded(n) => {
                let all: Vec<&Arc<str>> = self
                    .c
                    .bus
                    .histories()
                    .flat_map(|(_, h)| h.iter().map(|a| &a.payload))
                    .collect();
                if all.is_empty() { Arc::from("") } else { all[n % all.len()].clone() }
            }
            // No forged text may claim to be one of the case's publishes (not even through a
            // JSON escape): the isolation check trusts the marks.
            Forged::Text(s) => Arc::from(s.replace(MARK, "fz_mork").replace("\\u", "u")),
        }
    }

    fn reply(&self, stream: CStream, r: &CReply) -> std::result::Result<BusReply, BusFailure> {
        let key = stream.key();
        let pos = |p: &CPos| self.pos(*p, &key);
        Ok(match r {
            CReply::Subscribed(p) => BusReply::Subscribed { top: pos(p) },
            CReply::Appended(p) => BusReply::Appended { pos: pos(p) },
            CReply::Duplicate(p) => BusReply::Duplicate { pos: pos(p) },
            CReply::Fetched(p, entries) => BusReply::Fetched {
                top: pos(p),
                entries: entries
                    .iter()
                    .map(|(seq, f)| BusEntry { seq: *seq, payload: self.payload(f) })
                    .collect(),
            },
            CReply::Tops(tops) => BusReply::Tops(tops.iter().map(pos).collect()),
            CReply::Rotated(p) => BusReply::Rotated { top: pos(p) },
            CReply::Failed(i) => {
                return Err([
                    BusFailure::Retryable,
                    BusFailure::Refused,
                    BusFailure::Down,
                    BusFailure::Overloaded,
                ][i % 4]
                    .clone());
            }
        })
    }

    /// Applies one step and checks everything after it; `Err` describes the first violation.
    ///
    /// # Errors
    /// A violated invariant (see [`ClusterRunner`]).
    pub fn apply(&mut self, step: &ClusterStep) -> std::result::Result<(), String> {
        let now = self.c.now;
        let out = match step {
            ClusterStep::Connect { node, tenant, user } => {
                let p = Principal::new(tenant_name(*tenant).as_str(), user_name(*user).as_str());
                if let Some(Ok(id)) = self.c.hub(*node).map(|h| h.connect(now, p)) {
                    self.memos.push(BTreeMap::new());
                    self.nodes[*node].live.push(Tracked {
                        id,
                        tenant: *tenant,
                        user: *user,
                        memo: self.memos.len() - 1,
                        seen: BTreeMap::new(),
                    });
                }
                self.c.pump()
            }
            ClusterStep::Disconnect { node, conn } => {
                if let Some(id) = self.conn(*node, *conn) {
                    let done =
                        self.c.hub(*node).map(|h| h.disconnect(now, id, DisconnectReason::Clean));
                    if matches!(done, Some(Ok(()))) {
                        self.forget(*node, id);
                    }
                }
                self.c.pump()
            }
            ClusterStep::Join { node, conn, room } => {
                if let Some(id) = self.conn(*node, *conn) {
                    let room = room_name(*room);
                    let _ = self.c.hub(*node).map(|h| h.join(now, id, room.as_str()));
                }
                self.c.pump()
            }
            ClusterStep::Leave { node, conn, room } => {
                if let Some(id) = self.conn(*node, *conn) {
                    let room = room_name(*room);
                    let _ = self.c.hub(*node).map(|h| h.leave(now, id, room.as_str()));
                }
                self.c.pump()
            }
            ClusterStep::Publish { node, to, key } => {
                let (target, audience) = match *to {
                    CTarget::User(t, u) => (
                        Target::user(tenant_name(t).as_str(), user_name(u).as_str()),
                        Audience::User(t, u),
                    ),
                    CTarget::Thread(t, u, th) => (
                        Target::thread(
                            tenant_name(t).as_str(),
                            user_name(u).as_str(),
                            format!("th{th}").as_str(),
                        ),
                        Audience::User(t, u),
                    ),
                    CTarget::Room(t, r) => (
                        Target::room(tenant_name(t).as_str(), room_name(r).as_str()),
                        Audience::Room(t, r),
                    ),
                    CTarget::Tenant(t) => {
                        (Target::tenant(tenant_name(t).as_str()), Audience::Tenant(t))
                    }
                    CTarget::Conn(n) => match self.conn(*node, n) {
                        Some(id) => (Target::Connection(id), Audience::Conn(*node, id)),
                        None => return self.check(Vec::new()),
                    },
                };
                let mut env = Envelope::new(target, EventKind::AgentStarted)
                    .data(serde_json::json!({ MARK: self.marks.len() }));
                if let Some(k) = key {
                    env = env.idempotency_key(format!("k{k}"));
                }
                self.marks.push(audience);
                let _ = self.c.hub(*node).map(|h| h.publish(now, env));
                self.c.pump()
            }
            ClusterStep::Resume { node, conn, from, back } => {
                if let (Some(id), false) = (self.conn(*node, *conn), self.memos.is_empty()) {
                    let positions: serde_json::Map<String, Value> = self.memos
                        [from % self.memos.len()]
                    .iter()
                    .map(|(name, (epoch, seq))| {
                        let seq = seq.saturating_sub(*back);
                        (name.clone(), serde_json::json!({ "epoch": epoch, "seq": seq }))
                    })
                    .collect();
                    let frame = serde_json::json!({ "type": "resume", "positions": positions });
                    let bytes = frame.to_string().into_bytes();
                    let _ = self.c.hub(*node).map(|h| h.receive(now, id, &bytes));
                }
                self.c.pump()
            }
            ClusterStep::Raw { node, conn, bytes } => {
                if let Some(id) = self.conn(*node, *conn) {
                    let _ = self.c.hub(*node).map(|h| h.receive(now, id, bytes));
                }
                self.c.pump()
            }
            ClusterStep::Advance(ms) => self.c.advance(Duration::from_millis(*ms)),
            ClusterStep::Fault(f) => {
                self.fault(*f);
                self.c.pump()
            }
            ClusterStep::Message { node, stream, pos, payload } => {
                self.forged = true;
                let key = stream.key();
                let pos = self.pos(*pos, &key);
                let payload = self.payload(payload);
                if let Some(h) = self.c.hub(*node) {
                    h.bus_message(now, &key, pos, &payload);
                }
                self.c.pump()
            }
            ClusterStep::Reply { node, generation, n, stream, reply } => {
                self.forged = true;
                let reply = self.reply(*stream, reply);
                if let Some(h) = self.c.hub(*node) {
                    h.bus_reply(now, OpId::from_raw(*generation, *n), reply);
                }
                self.c.pump()
            }
        };
        self.check(out)
    }

    fn fault(&mut self, f: CFault) {
        let now = self.c.now;
        let bus = &mut self.c.bus;
        match f {
            CFault::Loss(node, ppm) => bus.set_message_loss(node, ppm),
            CFault::Latency(node, ms) => {
                bus.set_latency(node, Duration::ZERO, Duration::from_millis(ms));
            }
            CFault::Hold(node, ms) => bus.hold(node, now + Duration::from_millis(ms)),
            CFault::OpFaults(fail, timeout) => bus.set_op_faults(fail, timeout),
            CFault::Down => bus.go_down(),
            CFault::Up => bus.come_up(),
            CFault::Cut(node) => bus.disconnect(node),
            CFault::Link(node) => bus.reconnect(node),
            CFault::RestartEmpty => bus.restart_empty(),
            CFault::LoseTail(stream, n) => bus.lose_tail(&stream.key(), n),
            CFault::LoseTailEverywhere(n) => bus.lose_tail_everywhere(n),
            CFault::Crash(node) => {
                if self.c.crash(node) {
                    // Its connections are gone with it (their positions stay in the memos).
                    self.nodes[node] = NodeTrack::default();
                }
            }
            CFault::Restart(node) => {
                self.c.restart(node);
            }
        }
    }

    fn check(&mut self, out: Vec<(usize, Action)>) -> std::result::Result<(), String> {
        for (node, action) in out {
            match action {
                Action::Deliver { conn, frame } => self.delivered(node, conn, frame.as_str())?,
                Action::Close { conn, .. } => self.forget(node, conn),
                _ => {}
            }
        }
        for i in 0..self.c.len() {
            if let Some(hub) = self.c.hub_ref(i) {
                hub.check_invariants().map_err(|e| format!("node {i}: {e}"))?;
            }
        }
        Ok(())
    }

    pub(super) fn delivered(
        &mut self,
        node: usize,
        conn: ConnId,
        text: &str,
    ) -> std::result::Result<(), String> {
        self.delivered += 1;
        let v: Value = serde_json::from_str(text)
            .map_err(|e| format!("node {node} {conn:?}: a frame that is not JSON ({e}): {text}"))?;
        let track = &mut self.nodes[node];
        let Some(t) = track.live.iter_mut().find(|t| t.id == conn) else {
            let what = if track.closed.contains(&conn) { "a closed" } else { "an unknown" };
            return Err(format!("node {node}: a frame to {what} connection {conn:?}: {text}"));
        };
        let memo = &mut self.memos[t.memo];
        let pos = |v: &Value| Some((v.get("epoch")?.as_u64()?, v.get("seq")?.as_u64()?));
        let name = v.get("stream").and_then(Value::as_str).map(str::to_owned);
        match v.get("type").and_then(Value::as_str).unwrap_or("") {
            "connected" => {
                let (tenant, user) = (tenant_name(t.tenant), user_name(t.user));
                if v["tenant"] != tenant.as_str() || v["user"] != user.as_str() {
                    return Err(format!("node {node}: {tenant}/{user} was sent {text}"));
                }
                for (name, p) in v["streams"].as_object().into_iter().flatten() {
                    memo.extend(pos(p).map(|p| (name.clone(), p)));
                }
            }
            "resumed" => {
                t.seen.clear();
                for (name, p) in v["streams"].as_object().into_iter().flatten() {
                    memo.extend(pos(p).map(|p| (name.clone(), p)));
                }
            }
            "resync" | "joined" => {
                let Some(name) = name else {
                    return Err(format!("node {node}: no stream: {text}"));
                };
                // With an honest driver a resync moves the stream on (past lost seqs, or to a
                // new epoch) but never back: epochs are never reused, so the seqs already seen
                // stay seen. After a forged position it may be taking the stream back.
                if v["type"] == "resync" && self.forged {
                    t.seen.remove(&name);
                }
                memo.extend(pos(&v).map(|p| (name, p)));
            }
            // A history page answers a request: its messages repeat seqs the connection may
            // already have had live, so only their audience is checked, and the page moves no
            // position.
            "history" => {
                for m in v["messages"].as_array().into_iter().flatten() {
                    let Some(ev) = EventFrame::decode(m) else {
                        return Err(format!(
                            "node {node}: a history message that is no event: {text}"
                        ));
                    };
                    check_audience(&self.marks, (node, conn), t, &ev, m, text)?;
                }
            }
            _ => {
                let Some(ev) = EventFrame::decode(&v) else { return Ok(()) };
                check_audience(&self.marks, (node, conn), t, &ev, &v, text)?;
                let per = t.seen.entry(ev.stream.clone()).or_default();
                if let Some(last) = per.get(&ev.epoch).filter(|last| ev.seq <= **last) {
                    return Err(format!(
                        "node {node} {conn:?}: seq {} of stream {} epoch {} after {last}: {text}",
                        ev.seq, ev.stream, ev.epoch
                    ));
                }
                per.insert(ev.epoch, ev.seq);
                memo.insert(ev.stream, (ev.epoch, ev.seq));
            }
        }
        Ok(())
    }
}

/// Checks that an event carrying a fuzz mark reached a connection of the mark's audience, on the
/// stream that audience is published on.
fn check_audience(
    marks: &[Audience],
    (node, conn): (usize, ConnId),
    t: &Tracked,
    ev: &EventFrame,
    v: &Value,
    text: &str,
) -> std::result::Result<(), String> {
    let Some(n) = v.get("data").and_then(|d| d.get(MARK)).and_then(Value::as_u64) else {
        return Ok(());
    };
    let entitled = match usize::try_from(n).ok().and_then(|n| marks.get(n)) {
        None => false,
        Some(Audience::User(tn, un)) => (*tn, *un) == (t.tenant, t.user) && ev.stream == "u",
        Some(Audience::Room(tn, r)) => {
            *tn == t.tenant && ev.stream == format!("r:{}", room_name(*r))
        }
        Some(Audience::Tenant(tn)) => *tn == t.tenant && ev.stream == "t",
        Some(Audience::Conn(n, id)) => (*n, *id) == (node, conn) && ev.stream == "u",
    };
    if entitled {
        return Ok(());
    }
    let who = format!("{}/{}", tenant_name(t.tenant), user_name(t.user));
    let aud = usize::try_from(n).ok().and_then(|n| marks.get(n));
    Err(format!("node {node}: {who} ({conn:?}) was sent a frame for {aud:?}: {text}"))
}
