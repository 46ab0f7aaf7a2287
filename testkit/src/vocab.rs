//! The one operation vocabulary: the model's domain (tenants, users, rooms, threads and roles by
//! index), the configuration knobs a case varies, and [`Op`], one variant per `Hub` method plus
//! the caller's clock. Connections are addressed symbolically ([`Who`]): a live one, or any id
//! ever minted (closed and stale ones), never a raw id.

use std::time::Duration;

use crate::sim::Sim;

use switchboard::{
    BreakerConfig, CloseReason, ClosedBy, Config, ConnId, EventKind, Heartbeat, LimitKind,
    PeerError, Principal, Retention, Tier, TierQuota, UserLimitPolicy,
};

/// Milliseconds since the simulation's start instant.
pub type Ms = u64;

/// Tenants that connect (`t0`..); targets may also name one more that never does.
pub const TENANTS: usize = 3;
/// Users per tenant that connect (`u0`..); targets may also name one more that never does.
pub const USERS: usize = 4;
/// Rooms per tenant (`room0`..).
pub const ROOMS: usize = 3;
/// Threads per user (`th0`..).
pub const THREADS: usize = 3;
/// Role names by bit; index 2 is a role nobody holds.
pub const ROLES: [&str; 3] = ["admin", "ops", "ghost"];
/// The first operation happens this long after the start instant, so that times going backwards
/// never go before it.
pub const T0: Ms = 100_000;
/// Put into every payload under a redacted key: it must never appear in a frame.
pub const SECRET: &str = "sk-SECRET-7f3a";

/// The default heartbeat interval of a case, in ms.
pub const HEARTBEAT_INTERVAL: Ms = 10_000;
/// The default heartbeat timeout of a case, in ms.
pub const HEARTBEAT_TIMEOUT: Ms = 5_000;
/// `Config::session_grace`, in ms.
pub const SESSION_GRACE: Ms = 4_000;
/// `Config::user_retention` unless a case asks for zero, in ms.
pub const RETENTION: Ms = 20_000;
/// `Config::tombstone_ttl`, in ms.
pub const TOMBSTONE: Ms = 10_000;
/// `Config::max_frame_bytes` (small, so that oversized frames are cheap to make).
pub const MAX_FRAME_BYTES: usize = 160;
/// `max_detached_users` when it must never be reached (there are only `TENANTS * USERS` users).
pub const NO_DETACHED_CAP: u32 = 1_000;

/// The name of tenant `t`.
pub fn tenant_name(t: usize) -> String {
    format!("t{t}")
}
/// The name of user `u`.
pub fn user_name(u: usize) -> String {
    format!("u{u}")
}
/// The name of room `r`.
pub fn room_name(r: usize) -> String {
    format!("room{r}")
}
/// The name of thread `t`.
pub fn thread_name(t: usize) -> String {
    format!("th{t}")
}
/// The tier with this index (modulo the number of tiers).
pub fn tier_of(i: usize) -> Tier {
    Tier::ALL[i % Tier::ALL.len()]
}
/// The slab slot of a connection id.
pub fn slot_of(id: ConnId) -> u32 {
    // `to_u64` is `generation << 32 | index`.
    id.to_u64() as u32
}
/// The model index in a name such as `t2` or `u0`.
pub fn index_in(name: &str) -> Option<usize> {
    name.get(1..)?.parse().ok()
}

// ---------------------------------------------------------------------------------------------
// Configuration

/// The parts of the configuration a test case varies.
#[derive(Clone, Debug)]
pub struct Knobs {
    /// `Config::user_limit_policy`.
    pub policy: UserLimitPolicy,
    /// `Config::allow_global_broadcast`.
    pub global_broadcast: bool,
    /// `Config::user_retention` in ms (mostly [`RETENTION`]; zero retires a user at once).
    pub user_retention: Ms,
    /// `Config::max_frame_bytes` (mostly [`MAX_FRAME_BYTES`]; resuming from remembered positions
    /// needs room for real epochs).
    pub max_frame_bytes: usize,
    /// `Config::max_connections_per_tenant`.
    pub tenant_cap: Option<u32>,
    /// `(interval, timeout)` of the heartbeat, in ms.
    pub heartbeat: (Ms, Ms),
    /// Bounds of every recovery buffer: `(messages, bytes, age in ms)`; `None`: the defaults
    /// (only the age bound is ever reached).
    pub retention: Option<(usize, usize, Ms)>,
    /// `None`: the default, never reached.
    pub max_buffered_bytes: Option<u64>,
    /// `(max_inflight_bytes, max_unwritten_bytes)`; `None`: the defaults, never reached.
    pub backpressure: Option<(u64, u64)>,
    /// `resume_window` in ms (mostly 0: live at once).
    pub resume_window: Ms,
    /// `(threshold, window, open_for, probe_healthy_after)`, durations in ms; `None`: a threshold
    /// of `u32::MAX`, which never trips (a case opens at most 60 connections).
    pub breaker: Option<(u32, Ms, Ms, Ms)>,
    /// `Config::max_detached_users` ([`NO_DETACHED_CAP`]: never reached).
    pub max_detached_users: u32,
    /// `Config::room_retention` in ms (0: an emptied room is dropped at once; otherwise it is
    /// kept idle that long, and a re-join within it continues the room's stream).
    pub room_retention: Ms,
}

/// The heartbeat most tests run with: the interval longer than the timeout, as by default.
pub const HEARTBEAT: (Ms, Ms) = (HEARTBEAT_INTERVAL, HEARTBEAT_TIMEOUT);

/// Milliseconds as a duration.
pub fn ms(d: Ms) -> Duration {
    Duration::from_millis(d)
}

/// More streams than a case can create (at most two per step: a tenant's and a user's).
pub const MAX_STREAMS: usize = 130;

/// The epochs the hub's generator hands out, in order, for the default seed (which every case
/// runs with): read off a scratch hub through the public API, from the `connected` frame of its
/// first connection (a new tenant's stream is created before its first user's) and the `joined`
/// frames of rooms created one after another. The model gives each stream it creates the next.
pub fn epochs() -> &'static [u64] {
    static EPOCHS: std::sync::OnceLock<Vec<u64>> = std::sync::OnceLock::new();
    EPOCHS.get_or_init(|| {
        let cfg = Config { max_rooms_per_connection: MAX_STREAMS as u32, ..Config::default() };
        let mut sim = Sim::new(cfg);
        let conn = sim.hub.connect(sim.now, Principal::new("t", "u")).expect("admitted");
        for k in 0..MAX_STREAMS - 2 {
            sim.hub.join(sim.now, conn, format!("e{k}")).expect("live");
        }
        let mut out = Vec::new();
        for (_, v) in crate::frames::deliveries(&sim.drain()) {
            match v["type"].as_str() {
                Some("connected") => {
                    out.extend(["t", "u"].map(|s| v["streams"][s]["epoch"].as_u64()));
                }
                Some("joined") => out.push(v["epoch"].as_u64()),
                _ => {}
            }
        }
        let out: Vec<u64> = out.into_iter().map(|e| e.expect("an epoch")).collect();
        assert_eq!(out.len(), MAX_STREAMS);
        out
    })
}

/// The hub configuration of a case with these knobs (the same for hub and model).
pub fn config(k: &Knobs) -> Config {
    let defaults = Config::default();
    let mut cfg = Config {
        max_connections: 8,
        max_connections_per_tenant: k.tenant_cap,
        user_limit_policy: k.policy,
        max_frame_bytes: k.max_frame_bytes,
        max_rooms_per_connection: 2,
        max_thread_subscriptions: 2,
        max_client_id_bytes: 8,
        control_frames_per_minute: 120,
        control_burst: 4,
        max_violations: 3,
        violation_refill: Duration::from_secs(4),
        heartbeat: Heartbeat { interval: ms(k.heartbeat.0), timeout: ms(k.heartbeat.1) },
        session_grace: ms(SESSION_GRACE),
        user_retention: ms(k.user_retention),
        max_detached_users: k.max_detached_users,
        retention: match k.retention {
            Some((max_messages, max_bytes, age)) => {
                Retention { max_messages, max_bytes, max_age: ms(age) }
            }
            None => Retention::default(),
        },
        max_buffered_bytes: k.max_buffered_bytes.unwrap_or(defaults.max_buffered_bytes),
        max_inflight_bytes: k.backpressure.map_or(defaults.max_inflight_bytes, |b| b.0),
        max_unwritten_bytes: k.backpressure.map_or(defaults.max_unwritten_bytes, |b| b.1),
        resume_window: ms(k.resume_window),
        breaker: match k.breaker {
            Some((threshold, window, open_for, healthy)) => BreakerConfig {
                threshold,
                window: ms(window),
                open_for: ms(open_for),
                probe_healthy_after: ms(healthy),
            },
            None => BreakerConfig { threshold: u32::MAX, ..BreakerConfig::default() },
        },
        tombstone_ttl: ms(TOMBSTONE),
        room_retention: ms(k.room_retention),
        allow_global_broadcast: k.global_broadcast,
        ..defaults
    };
    let quota = |conns, per_minute, burst| TierQuota {
        max_connections_per_user: conns,
        messages_per_minute: per_minute,
        message_burst: burst,
        max_connection_lifetime: None,
    };
    cfg.tiers.free = quota(2, 60, 2);
    cfg.tiers.early = quota(3, 120, 3);
    cfg.tiers.mid = quota(1, 30, 1);
    cfg.tiers.enterprise = quota(4, 600, 5);
    cfg
}

// ---------------------------------------------------------------------------------------------
// Operations

/// Which connection an operation addresses: a live one (if any), or any id ever minted
/// (preferring closed and stale ones), or an id forged outright with `ConnId::from_raw` (the
/// core's `fuzzing` feature): `(index % 16, generation % 4)`, which may be live, stale, closed or
/// never minted. `NEWEST` addresses the newest live connection.
#[derive(Clone, Copy, Debug)]
pub struct Who {
    /// Prefer a live connection (else one ever minted that is not live).
    pub live: bool,
    /// Which one, modulo how many there are.
    pub n: u8,
    /// A forged `(index, generation)`; overrides the other fields.
    pub forged: Option<(u8, u8)>,
    /// Exactly the `k`-th id ever minted (modulo how many), live or not; overrides `live` and
    /// `n`. This is how a client addresses its own connection.
    pub exact: Option<u8>,
}

/// The newest live connection.
pub const NEWEST: Who = Who { live: true, n: u8::MAX, forged: None, exact: None };

/// The id minted before the newest one ever minted, live or not (the newest if there is only
/// one): the earlier connection of a client that just connected again.
pub const NEWEST_BUT_ONE: Who = Who { live: false, n: u8::MAX, forged: None, exact: None };

/// Exactly the `k`-th id ever minted (modulo how many), live or not.
#[must_use]
pub const fn exact(k: u8) -> Who {
    Who { live: false, n: 0, forged: None, exact: Some(k) }
}

/// A client frame.
#[derive(Clone, Debug)]
pub enum In {
    Subscribe(usize),
    Unsubscribe(Option<usize>),
    Message(Option<usize>, u8),
    Ping,
    /// `resume` naming up to four streams: `(stream, wrong epoch, seq)` where the stream is the
    /// user's (0), the tenant's (1), one of the connection's rooms (2, 3; a room it is not in if
    /// it has none) or one no connection has (4), and the seq is taken modulo the stream's seq + 2
    /// (so sometimes ahead of it). With the flag, every position carries an extra field (ignored).
    Resume(Vec<(usize, bool, u8)>, bool),
    /// `resume` with the positions a client remembers from the connection [`Who`] addresses
    /// (typically an earlier, closed connection of the same device): per stream, what its
    /// `connected`, `joined` or `resumed` frame said, or the last event it received. Nothing is
    /// sent when that connection remembers nothing. With the flag, every position carries an
    /// extra field (ignored).
    Remembered(Who, bool),
    /// `resume` with exactly these positions `(stream, epoch, seq)`, as a client that keeps its
    /// own positions per stream across its connections sends them (the caller fills them in from
    /// its client model at run time). With the flag, every position carries fields of its own
    /// (ignored).
    Positions(Vec<(String, u64, u64)>, bool),
    /// `resume` with these positions, but the user stream's (`u`, added if absent) spoiled in one
    /// of [`SPOILED_POSITIONS`] ways ([`spoiled_position`]): the hub must refuse the frame with
    /// `invalid_field` and leave the connection as it was (held if it was, not resumed).
    Spoiled(Vec<(String, u64, u64)>, usize),
    /// One of [`GARBAGE`].
    Garbage(usize),
    /// A well-formed `message` this many bytes over `max_frame_bytes`.
    Oversized(usize),
    /// Raw bytes: garbage, or a frame spelled some other way ([`crate::raw::raw_json`]). The
    /// runner reads them as the protocol does ([`crate::raw::decode`]); a valid frame outside the
    /// model's domain is not sent.
    Raw(Vec<u8>),
}

/// Frames the hub must refuse, with the error it must answer. The protocol's client frames are
/// JSON objects (`PeerError::Malformed`: "the frame is not a JSON object", located at the first
/// character that is not whitespace); the last [`NON_OBJECTS`] entries are JSON arrays whose
/// elements line up with the fields of a valid frame.
pub const GARBAGE: &[(&[u8], PeerError)] = &[
    (br#"{"type":"message""#, PeerError::Malformed { line: 1, column: 17 }),
    (b"not json", PeerError::Malformed { line: 1, column: 1 }),
    (b"\xff\xfe{}", PeerError::Malformed { line: 1, column: 1 }),
    (b"null", PeerError::Malformed { line: 1, column: 1 }),
    (b"[1,2,3]", PeerError::Malformed { line: 1, column: 1 }),
    (br#"{"type":42}"#, PeerError::MissingType),
    (br#"{"thread_id":"th1"}"#, PeerError::MissingType),
    (br#"{"type":null}"#, PeerError::MissingType),
    (br#"{"type":"dance"}"#, PeerError::UnknownType),
    (br#"{"type":"message","thread_id":5}"#, PeerError::InvalidField { field: "thread_id" }),
    (br#"{"type":"subscribe"}"#, PeerError::InvalidField { field: "thread_id" }),
    (br#"{"type":"message","thread_id":""}"#, PeerError::InvalidField { field: "thread_id" }),
    (
        br#"{"type":"subscribe","thread_id":"far-too-long"}"#,
        PeerError::InvalidField { field: "thread_id" },
    ),
    (br#"{"type":"resume"}"#, PeerError::InvalidField { field: "positions" }),
    (br#"{"type":"resume","positions":[]}"#, PeerError::InvalidField { field: "positions" }),
    (br#"{"type":"resume","positions":"u"}"#, PeerError::InvalidField { field: "positions" }),
    (
        br#"{"type":"resume","positions":{"u":{"epoch":1}}}"#,
        PeerError::InvalidField { field: "positions" },
    ),
    // Wrongly typed positions.
    (
        br#"{"type":"resume","positions":{"u":{"epoch":"1","seq":1}}}"#,
        PeerError::InvalidField { field: "positions" },
    ),
    (
        br#"{"type":"resume","positions":{"t":{"epoch":1,"seq":2.5}}}"#,
        PeerError::InvalidField { field: "positions" },
    ),
    (
        br#"{"type":"resume","positions":{"u":{"epoch":1,"seq":-3}}}"#,
        PeerError::InvalidField { field: "positions" },
    ),
    (
        br#"{"type":"resume","positions":{"u":[1,2]}}"#,
        PeerError::InvalidField { field: "positions" },
    ),
    (
        br#"{"type":"resume","positions":{"t":null}}"#,
        PeerError::InvalidField { field: "positions" },
    ),
    // More streams than a connection can have (2 + max_rooms_per_connection).
    (
        br#"{"type":"resume","positions":{"a":{"epoch":1,"seq":1},"b":{"epoch":1,"seq":1},"c":{"epoch":1,"seq":1},"d":{"epoch":1,"seq":1},"e":{"epoch":1,"seq":1}}}"#,
        PeerError::InvalidField { field: "positions" },
    ),
    (br#"["ping",null,null]"#, PeerError::Malformed { line: 1, column: 1 }),
    (br#"["message","th1",{"n":1}]"#, PeerError::Malformed { line: 1, column: 1 }),
    (b" \n [\"subscribe\",\"th1\",null]", PeerError::Malformed { line: 2, column: 2 }),
];
/// How many ways [`spoiled_position`] spoils a position.
pub const SPOILED_POSITIONS: usize = 6;

/// The position `(epoch, seq)` spoiled in one of [`SPOILED_POSITIONS`] ways: wrongly typed
/// (a string, negative, fractional, a list, null) or incomplete.
#[must_use]
pub fn spoiled_position(variant: usize, epoch: u64, seq: u64) -> serde_json::Value {
    use serde_json::json;
    match variant % SPOILED_POSITIONS {
        0 => json!({"epoch": epoch.to_string(), "seq": seq}),
        1 => json!({"epoch": epoch, "seq": -1}),
        2 => json!({"epoch": epoch, "seq": seq as f64 + 0.5}),
        3 => json!([epoch, seq]),
        4 => json!({"epoch": null, "seq": seq}),
        _ => json!({"epoch": epoch}),
    }
}

/// How many of the last [`GARBAGE`] entries are JSON arrays rather than objects.
pub const NON_OBJECTS: usize = 3;
/// Garbage frames that are JSON objects or not JSON at all.
pub const OBJECT_GARBAGE: usize = GARBAGE.len() - NON_OBJECTS;

/// A publish target, by model indices, or relative to a connection (so that targets often reach
/// someone).
#[derive(Clone, Debug)]
#[allow(missing_docs)]
pub enum Tgt {
    User(usize, usize),
    Thread(usize, usize, usize),
    Conn(Who),
    Room(usize, usize),
    Tenant(usize, Option<usize>),
    Everyone,
    UserOf(Who),
    ThreadOf(Who, usize),
    RoomOf(Who, usize),
    TenantOf(Who, Option<usize>),
}

/// One operation: one variant per `Hub` input method (`connect`, `disconnect`, `close`,
/// `receive`, `pong`, `written`, `refresh`, `join`, `leave`, `publish`, `tick`), plus the
/// caller's clock. Names are model indices ([`tenant_name`] …); connections are [`Who`]s.
#[derive(Clone, Debug)]
pub enum Op {
    /// `Hub::connect` of `(tenant, user)` with a tier, roles by bit of [`ROLES`] and a session
    /// that expires this many ms from the caller's clock.
    Connect { tenant: usize, user: usize, tier: usize, roles: u8, expires_in: Option<i32> },
    /// `Hub::disconnect`, clean or abnormal.
    Disconnect { who: Who, clean: bool },
    /// `Hub::close` with one of [`APP_CLOSE_REASONS`].
    Close { who: Who, reason: usize },
    /// `Hub::receive` of a client frame.
    Receive { who: Who, frame: In },
    /// `Hub::pong`.
    Pong { who: Who },
    /// `Hub::written` of this many bytes.
    Written { who: Who, bytes: u32 },
    /// `Hub::refresh` to a session that ends this many ms from the caller's clock (or never).
    Refresh { who: Who, expires_in: Option<i32> },
    /// `Hub::join`.
    Join { who: Who, room: usize },
    /// Leave a room; with `joined`, one of the rooms the connection is in (if any).
    Leave { who: Who, room: usize, joined: bool },
    /// `Hub::publish` of an event of kind [`event_kind`]`(kind)`, maybe on a thread.
    Publish { target: Tgt, kind: usize, thread: Option<usize> },
    /// The caller's clock moves on; the hub is not called.
    Sleep(u32),
    /// The caller's clock moves on by this much, then `tick`.
    Tick(u32),
    /// `tick` with a time this much earlier than the caller's clock.
    TickBack(u32),
    /// `tick` at `poll_timeout()`, as the drive loop would.
    TickNext,
}

/// One operation, called with a `now` that is `back` ms behind the caller's clock (mostly zero:
/// time going backwards must be clamped by the hub).
#[derive(Clone, Debug)]
pub struct Step {
    /// How many ms before the caller's clock the call is made.
    pub back: u32,
    /// The operation.
    pub op: Op,
}

/// Every way a connection ends, in the order of the stats' counters.
pub const CLOSED_BY: &[ClosedBy] = ClosedBy::ALL;

/// Every limit kind, in the order of the stats' counters.
pub const LIMIT_KINDS: &[LimitKind] = LimitKind::ALL;

/// The reasons an application closes a connection with (`Op::Close`).
pub const APP_CLOSE_REASONS: [CloseReason; 3] =
    [CloseReason::Kicked, CloseReason::ServerShutdown, CloseReason::SlowConsumer];

/// The event kind with this index: the five agent kinds, a custom one, and (6) a reserved name
/// the hub refuses.
pub fn event_kind(i: usize) -> EventKind {
    match i {
        0 => EventKind::AgentStarted,
        1 => EventKind::AgentThinking,
        2 => EventKind::ToolExecuting,
        3 => EventKind::ToolCompleted,
        4 => EventKind::AgentCompleted,
        5 => EventKind::custom("invoice_ready"),
        // Reserved by the protocol: refused.
        _ => EventKind::custom("pong"),
    }
}
