//! # switchboard
//!
//! An embeddable, **sans-io** connection hub for multi-user, real-time AI-agent backends. It keeps
//! track of who is connected, which connection belongs to which user and tenant, and where every
//! agent event must go, and it guarantees that an event for one user never reaches another.
//!
//! ## Sans-io
//!
//! The [`Hub`] performs no I/O, reads no clock, spawns nothing and holds no global state. The
//! caller owns the sockets and the time: it tells the hub what happened ([`Hub::connect`],
//! [`Hub::receive`], [`Hub::pong`], [`Hub::publish`], [`Hub::written`], [`Hub::refresh`],
//! [`Hub::join`], [`Hub::leave`], [`Hub::disconnect`], [`Hub::tick`]), each call carrying `now`,
//! and then performs what the hub asks for, drained from [`Hub::poll_action`]: deliver a frame,
//! ping, close, hand an inbound message to the application, log an audit event, record a metric.
//! So the hub runs on tokio, smol or a hand-written loop alike, and every behaviour can be tested
//! with a virtual clock.
//!
//! ## The drive loop
//!
//! After **every** call into the hub, drain [`Hub::poll_action`] until it returns `None`, then ask
//! [`Hub::poll_timeout`] when to call [`Hub::tick`] next:
//!
//! ```text
//! loop {
//!     event = wait for (socket event | publish request | timer at hub.poll_timeout())
//!     match event { .. => hub.receive(now, conn, bytes) / hub.publish(now, env) / hub.tick(now) }
//!     while let Some(action) = hub.poll_action() { perform(action) }
//! }
//! ```
//!
//! ## A complete example
//!
//! Two users of one tenant, one of another; an agent event for Alice reaches Alice only.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use switchboard::{Action, Config, Envelope, EventKind, Hub, Principal, Target};
//!
//! let mut hub = Hub::new(Config::default())?;
//! let now = Instant::now();
//!
//! let alice = hub.connect(now, Principal::new("acme", "alice"))?;
//! let bob = hub.connect(now, Principal::new("acme", "bob"))?;
//! let eve = hub.connect(now, Principal::new("globex", "eve"))?;
//! while hub.poll_action().is_some() {} // `connected` frames and metrics, omitted here
//!
//! let event = Envelope::new(
//!     Target::User { tenant: "acme".into(), user: "alice".into() },
//!     EventKind::AgentStarted,
//! )
//! .thread("t1")
//! .data(serde_json::json!({ "agent": "researcher", "api_key": "sk-123" }));
//! let published = hub.publish(now, event)?;
//! assert_eq!(published.delivered, 1);
//!
//! let mut delivered = Vec::new();
//! while let Some(action) = hub.poll_action() {
//!     match action {
//!         Action::Deliver { conn, frame } => delivered.push((conn, frame)),
//!         Action::Ping { .. } | Action::Close { .. } => { /* transport work */ }
//!         _ => { /* inbound, audit, metric */ }
//!     }
//! }
//! assert_eq!(delivered.len(), 1);
//! assert_eq!(delivered[0].0, alice);
//! assert!(!delivered.iter().any(|(c, _)| *c == bob || *c == eve));
//! // Configured keys are redacted before the frame is built.
//! assert!(delivered[0].1.as_str().contains(r#""api_key":"[redacted]""#));
//!
//! // Timers: nothing is due until the heartbeat interval has passed.
//! let next = hub.poll_timeout().expect("heartbeats are armed");
//! assert_eq!(next, now + Duration::from_secs(25));
//! hub.tick(next);
//! let pings = std::iter::from_fn(|| hub.poll_action())
//!     .filter(|a| matches!(a, Action::Ping { .. }))
//!     .count();
//! assert_eq!(pings, 3);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Cluster mode
//!
//! With [`Config::cluster`] set, the hub is one node of several that share a bus (Redis in the
//! server crate). It then never mints stream positions: [`Hub::publish`] emits an
//! [`Action::Bus`]`(`[`BusOp::Append`]`)` and returns at once ([`Published::op`]); every node,
//! the publishing one too, delivers the message when the driver feeds it back with
//! [`Hub::bus_message`]. The driver performs each [`BusOp`] and reports its reply with
//! [`Hub::bus_reply`]; it reports losing and regaining the bus with [`Hub::bus_down`] and
//! [`Hub::bus_up`]. Deadlines stay the hub's: keep calling [`Hub::tick`] at
//! [`Hub::poll_timeout`]. What a node guarantees and how it behaves under each failure is in the
//! README ("Cluster mode").
//!
//! A whole cluster in a few lines, over a toy engine (one stream log, instant replies):
//!
//! ```
//! use std::collections::HashMap;
//! use std::time::Instant;
//! use switchboard::{
//!     Action, BusEntry, BusOp, BusReply, ClusterConfig, Config, Envelope, EventKind, Hub,
//!     Principal, StreamKey, StreamPos, Target,
//! };
//!
//! /// The engine: per stream an epoch and a log; who subscribed.
//! #[derive(Default)]
//! struct Engine {
//!     logs: HashMap<StreamKey, (u64, Vec<BusEntry>)>,
//!     subs: HashMap<StreamKey, Vec<usize>>,
//! }
//!
//! /// Drains every node's actions into the engine until nothing is left to do.
//! fn pump(nodes: &mut [Hub], engine: &mut Engine, now: Instant) -> Vec<(usize, String)> {
//!     let mut frames = Vec::new();
//!     loop {
//!         let mut idle = true;
//!         for n in 0..nodes.len() {
//!             while let Some(action) = nodes[n].poll_action() {
//!                 idle = false;
//!                 let op = match action {
//!                     Action::Bus(op) => *op,
//!                     Action::Deliver { frame, .. } => {
//!                         frames.push((n, frame.as_str().to_owned()));
//!                         continue;
//!                     }
//!                     _ => continue,
//!                 };
//!                 match op {
//!                     BusOp::Subscribe { op, stream } => {
//!                         engine.subs.entry(stream.clone()).or_default().push(n);
//!                         let (epoch, log) = engine.logs.get(&stream).cloned().unwrap_or_default();
//!                         let top = StreamPos { epoch, seq: log.len() as u64 };
//!                         nodes[n].bus_reply(now, op, Ok(BusReply::Subscribed { top }));
//!                     }
//!                     BusOp::Append { op, stream, payload, .. } => {
//!                         let (epoch, log) = engine.logs.entry(stream.clone()).or_insert((7, vec![]));
//!                         log.push(BusEntry { seq: log.len() as u64 + 1, payload: payload.clone() });
//!                         let pos = StreamPos { epoch: *epoch, seq: log.len() as u64 };
//!                         nodes[n].bus_reply(now, op, Ok(BusReply::Appended { pos }));
//!                         for &s in engine.subs.get(&stream).into_iter().flatten() {
//!                             nodes[s].bus_message(now, &stream, pos, &payload);
//!                         }
//!                     }
//!                     BusOp::Lease { op, .. } => {
//!                         // A quota that always has room.
//!                         let granted = BusReply::Leased { granted: true, evicted: None };
//!                         nodes[n].bus_reply(now, op, Ok(granted));
//!                     }
//!                     _ => {} // fetch, tops, rotate, renew: not needed on a lossless toy engine
//!                 }
//!             }
//!         }
//!         if idle {
//!             return frames;
//!         }
//!     }
//! }
//!
//! let cluster = |node: &str| Config { cluster: Some(ClusterConfig::new(node)), ..Config::default() };
//! let mut nodes = [Hub::new(cluster("a"))?, Hub::new(cluster("b"))?];
//! let mut engine = Engine::default();
//! let now = Instant::now();
//!
//! // Alice has a tab on each node; `connected` waits for the lease and the subscriptions.
//! nodes[0].connect(now, Principal::new("acme", "alice"))?;
//! nodes[1].connect(now, Principal::new("acme", "alice"))?;
//! let frames = pump(&mut nodes, &mut engine, now);
//! assert_eq!(frames.iter().filter(|(_, f)| f.contains(r#""type":"connected""#)).count(), 2);
//!
//! // Published on node b, delivered on both nodes at the position the engine assigned.
//! let event = Envelope::new(Target::user("acme", "alice"), EventKind::AgentStarted);
//! let published = nodes[1].publish(now, event)?;
//! assert!(published.op.is_some());
//! let frames = pump(&mut nodes, &mut engine, now);
//! let events: Vec<_> = frames.iter().filter(|(_, f)| f.contains("agent_started")).collect();
//! assert_eq!(events.len(), 2);
//! assert!(events.iter().all(|(_, f)| f.contains(r#""epoch":7,"seq":1"#)));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Architecture
//!
//! `src/` is layered, and each layer names only the layers below it:
//!
//! - **Vocabulary**: `ids` (string ids, [`ConnId`], [`StreamName`], [`StreamPos`]), `kinds`
//!   ([`CloseReason`], [`ClosedBy`], [`LimitKind`], [`AuditKind`], [`BreakerState`]), `frame`
//!   ([`Frame`]), `retention`, `config`, `error`, `envelope`, `stats` (counters), `action` (what
//!   is emitted), `protocol` (the wire format), `timer` (the deadline queue).
//! - **Components**: `connection` (one connection's deadlines, filters and allowances, the
//!   generation-checked slot table and the connections' timers), `user` (per-user state), `routing` (tenants and rooms),
//!   `stream` (sequence numbers, recovery buffers, their age timers and totals), `limits` (rate
//!   buckets), `breaker` (the reconnect breakers, by `(tenant, user)`, outliving user states),
//!   `outbox` (the one way anything is emitted: each action is
//!   queued by the call that records its counter), `flow` (backpressure per connection, the frame
//!   writer, the traffic meters), `view` (read-only views). The gauges of [`HubStats`] are not
//!   kept by hand: [`Hub::stats`] derives them from the components that hold what they count.
//! - **`Hub`** on top (`hub/`): the lifecycles that span components, publishing (`hub/publish.rs`,
//!   with `Target` resolution), client frames and resume (`hub/receive.rs`), rooms
//!   (`hub/rooms.rs`). `invariants` (feature `fuzzing`) checks the hub from outside.
//!
//! Data flows one way through them:
//!
//! ```text
//!  socket ──► driver ──► Hub::{connect, receive, publish, tick, ..}
//!                          │
//!                          ▼
//!              hub components (connections, users, tenants/rooms, streams)
//!                          │  every output, with its counter
//!                          ▼
//!                        outbox ──► Hub::poll_action ──► driver ──► socket
//! ```
//!
//! The module graph has no cycles. `cargo test -p switchboard --lib architecture` checks it: it
//! reads every file under `src/`, takes each `crate::<module>` path as an edge, and fails naming
//! the cycle if there is one (and if a vocabulary module names a component).
//!
//! ## Decisions worth knowing
//!
//! - **Isolation.** A connection is bound to one `(tenant, user)` at [`Hub::connect`] and never
//!   rebound. Targets resolve only through tenant-scoped indexes; [`Target::Everyone`] is refused
//!   unless [`Config::allow_global_broadcast`] is set, and audited either way.
//! - **Ids.** [`ConnId`] carries a generation. An id whose slot was reused is refused with
//!   [`ConnError::Stale`] and an [`AuditKind::StaleConnId`] event; an id of a connection closed
//!   within [`Config::tombstone_ttl`] reports `recently_closed`.
//! - **Threads.** A connection receives all of its user's events until the client sends
//!   `subscribe`; then it receives events of the threads it subscribed to plus thread-less user
//!   events. `unsubscribe` without a `thread_id`, or of its last thread, widens it back to
//!   everything. `Target::Connection`
//!   bypasses the filter: the application addressed that connection on purpose.
//! - **Time.** A `now` earlier than one already seen is taken as the latest one seen.
//! - **Output queue.** The queue holds the outputs of the calls since the last drain; it is the
//!   caller's to empty (a publish to N connections queues N deliveries).
//! - **Rates.** `message` frames spend the tier's token bucket, which is the user's (see
//!   *Quotas* below); control frames (`subscribe`, `unsubscribe`, `ping`) spend a separate
//!   per-connection allowance ([`Config::control_frames_per_minute`]).
//! - **Close codes** are in 4000–4999; see [`CloseReason`].
//! - **Streams.** Every event frame carries `stream`, `epoch` and `seq` (the epoch too, not only in
//!   `connected`, so a client always knows which incarnation a seq belongs to). `Everyone` is one
//!   message per tenant broadcast stream. `Target::Connection` messages go on the user's stream but
//!   are replayed only to that same connection, so a reconnect does not see them.
//! - **Resume.** A `resume` is answered once per connection: replay, then `resumed` with a report
//!   per stream. With [`Config::resume_window`] a new connection is held (its events stay in the
//!   buffer) until its first frame other than `subscribe`/`unsubscribe`, so filters may be set
//!   before the replay. A held connection whose backlog fell out of the buffer is closed
//!   `SlowConsumer` rather than silently missing it. A replay never sends a seq at or below one
//!   the connection was already sent (live, or in a room it left and re-joined: remembered until
//!   the resume, for up to `max_rooms_per_connection` rooms, else the re-join position counts);
//!   such a stream is reported `recovered: false` with reason `live_ahead`.
//!   A replay never takes the connection past `max_unwritten_bytes`: a stream whose gap does not
//!   fit in what is left (after the unwritten bytes and room for `resumed`) is not replayed at all
//!   and reported `too_large` (the client refetches it); a held backlog that does not fit closes
//!   the connection `SlowConsumer`, like a lost one.
//! - **Rooms** announce themselves with `joined`/`left` frames (the `joined` position lets a room
//!   be resumed before its first event). DESIGN says an empty room is dropped; that is the
//!   default, and [`Config::room_retention`] keeps it idle instead, its stream buffering.
//! - **Backpressure** counts control frames too: a client that never reads cannot pile up pongs
//!   or error frames; it is closed `SlowConsumer` like one that cannot take a critical event.
//! - **Breaker.** It counts what a reconnect storm looks like: an abnormal close (transport
//!   error, heartbeat timeout, slow-consumer or protocol-violation close) of a connection that
//!   lived less than `breaker.probe_healthy_after` and was opened after the user's last counted
//!   failure (tabs that drop together count once; "after" is the hub's connection order, not an
//!   instant). Breakers live apart from users' states (bounded by [`Config::max_breakers`]), so
//!   retiring a user forgets neither its failures nor its half-open probe.
//! - **Quotas.** The tier's `message` bucket is the user's, shared by its connections and kept
//!   while its state is (DESIGN §6); control frames keep a per-connection allowance. A rate
//!   overrun is answered `rate_limited` with a typed `Err` but is not a protocol violation: it
//!   never closes the connection (a flooder that does not read is closed `SlowConsumer`). The
//!   `max_violations`-th violation in a row closes with `ProtocolViolation`.
//! - **Thread filters.** A connection's filter is the set of threads it subscribed to;
//!   unsubscribing the last one removes the filter (all of its user's events again).
//! - **Instants** near the end of the clock's range never panic: a deadline that cannot be
//!   represented means "never" (no timer); a user retention that cannot end retires at once, and
//!   a breaker that could never half-open is not opened.
//! - **Publish refuses what can never arrive.** An event whose frame is larger than
//!   [`Config::max_unwritten_bytes`] is refused with [`PublishError::TooLarge`] (nobody is
//!   closed), and `data` nested deeper than [`MAX_DATA_DEPTH`] with [`PublishError::TooDeep`]
//!   (checked iteratively, so no payload exhausts the stack). `agent_thinking` is skipped only for
//!   a connection that is behind: one with nothing unwritten gets it whatever its size. An event
//!   without data (`null`) has no `data` key on the wire.
//! - **Buffer cap.** [`Config::max_buffered_bytes`] is a hard cap over all recovery buffers:
//!   after detached users are retired early, the oldest messages of all streams are shed (in the
//!   order they were kept, a stream's newest included), at a cost proportional to what is shed.
//! - **Meters** count live event frames only (not replays or control frames); a user's delivered
//!   rate is the sum of its connections' meters, folded into the user's when one closes.

#![forbid(unsafe_code)]
#![warn(missing_docs, rust_2018_idioms, unreachable_pub)]

#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

mod action;
#[cfg(test)]
mod architecture;
mod breaker;
mod client_frame;
mod cluster;
mod config;
mod connection;
pub mod docs;
mod envelope;
mod error;
mod flow;
mod frame;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
mod hub;
mod idempotency;
mod ids;
#[cfg(any(test, feature = "fuzzing"))]
mod invariants;
mod kinds;
mod labels;
mod limits;
mod narrowing;
mod outbox;
mod payload;
mod presence;
mod protocol;
mod redact;
mod retention;
mod routing;
mod stats;
mod stream;
mod timer;
mod user;
mod view;

pub use action::{Action, AuditEvent, Inbound, MetricEvent, Origin, RefreshRequest};
pub use cluster::{
    BusEntry, BusFailure, BusOp, BusReply, ClusterConfig, LeaseHolder, NodeId, OpId, PresenceEntry,
    PresenceHeld, PublishOutcome, StreamKey, StreamScope,
};
pub use config::{
    BreakerConfig, Config, ConfigError, Heartbeat, MAX_DURATION, Tier, TierQuota, TierQuotas,
    UserLimitPolicy,
};
pub use connection::RoundTrip;
pub use envelope::{Audience, Envelope, EventKind, Priority, Reply, Target};
pub use error::{
    ConnError, ConnectError, PeerError, PublishError, ReceiveError, RefreshError, ReplyError,
    RoomError,
};
pub use frame::Frame;
pub use hub::{Hub, Principal, Published, WakeReason};
pub use hub::{PresenceView, RoomInfo};
pub use ids::{
    ConnId, Role, Roles, RoomId, RunId, StreamName, StreamPos, TenantId, ThreadId, UserId,
};
pub use kinds::{AuditKind, BreakerState, CloseReason, ClosedBy, DisconnectReason, LimitKind};
pub use labels::{Labels, LabelsError};
pub use payload::{MAX_DATA_DEPTH, Payload, RawData, RawDataError};
pub use presence::{
    MAX_META_BYTES, MetaError, PresenceConfig, PresenceMeta, PresenceScope, PresentUser,
};
pub use retention::Retention;
pub use stats::{BusStats, ClosedCounts, HubStats, LimitCounts, Rates, RttHistogram};
pub use user::UserPhase;
pub use view::{ConnView, UserView};
