//! The driver: runs a sans-io [`Hub`] on tokio for axum WebSocket connections.
//!
//! This module holds the public surface ([`spawn`], [`Handle`], [`DriverConfig`], [`Snapshot`]);
//! `hub_task` is the task that owns the hub, `connection` the one task of one socket, `outbox`
//! what the hub queues for a connection.
//!
//! # Design
//!
//! ```text
//!   HTTP handlers ──┐                       ┌─► outbox A ─► conn task A ◄─► socket A
//!   (publish,       │  one bounded channel  │   (frames, pings, close)
//!    stats, auth'd  ├─► ┌──────────────┐ ───┤
//!    connect)       │   │   hub task   │    └─► outbox B ─► conn task B ◄─► socket B
//!   conn tasks ─────┘   │  owns `Hub`  │
//!   (frames, pongs,     │  + one timer │ ◄── "moved": connections that flushed bytes
//!    gone)              └──────┬───────┘
//!                              └──► application channel (Inbound messages, bounded)
//! ```
//!
//! - **One owner.** The [`Hub`] lives in one task and nothing else touches it: no mutex, no shared
//!   state. Everything else talks to that task through [`Handle`], a cheap clone around one
//!   bounded `mpsc` channel of `Command`s. A full channel makes connection tasks wait, which
//!   stops them reading their sockets: TCP pushes back on the clients, never on the hub.
//! - **The drive loop.** The task waits for a command or for the deadline of
//!   [`Hub::poll_timeout`] (one `sleep_until`, re-armed every turn), calls into the hub with
//!   `Instant::now()`, and drains [`Hub::poll_action`] until `None` after every call.
//! - **One task per connection.** It owns the unsplit socket and polls, in one loop, the hub's
//!   close, the outbox (writing and flushing what is queued) and the socket's next message; no
//!   second writer task, no lock around the socket's halves.
//! - **The hub never waits for a socket.** Each connection has an outbox: a small shared queue
//!   (a mutex held only for a push or a pop, and a waker) with a close slot. `Deliver` and `Ping`
//!   go into the queue; `Close` goes into the slot, which the connection's task looks at on every
//!   wake, even while its socket is blocked on a slow peer. The hub already bounds what it hands a
//!   connection by bytes (`max_unwritten_bytes`, released by `written`); the outbox's frame
//!   count is a second fence, and overflowing it closes the connection as a slow consumer,
//!   exactly as the hub would.
//! - **Wakes wait for the end of the hub task's turn.** A push into an empty outbox notes the
//!   connection; the turn's end (or every 64 connections, so that a large fan-out gets writers
//!   going on the other cores) flushes them: a burst for one connection (a batch publish, one
//!   read's worth of bus messages) goes out in one write instead of one system call per frame.
//! - **Small turns are written by the hub task itself.** When a turn hands frames to fewer than
//!   64 connections (a publish to one user or a small room) and a connection's task has nothing
//!   of its own to write, the hub task writes that connection's frames straight to its socket
//!   with one non-blocking write (a `send(2)` on the descriptor, not through tokio's readiness
//!   check, or a `writev` over 512 bytes; [`SocketWriter`], [`DriverConfig::direct_writes`]): no
//!   wake, no poll, no copy into tungstenite's buffer.
//!   Whatever the socket does not take at once (including the rest of a frame cut short) goes to
//!   the connection's task, which writes it before anything else. The task clears the
//!   permission under the outbox's lock before it writes anything itself (its queue, a pong
//!   tungstenite queued, a close), so two writers never interleave.
//! - **Large fan-outs are written by writer tasks.** A turn that reaches 64 connections hands
//!   them over in batches of 64 as it goes, each to a short-lived writer task that makes the
//!   same direct writes for its batch and then names the connections it wrote to in the
//!   "moved" list with one lock. The writer tasks run on whichever worker is free, so a
//!   10,000-connection broadcast is written on every core while the hub is still pushing, and
//!   no connection's task is woken or polled for it. The same rules hold as for the hub task's
//!   own direct writes: a connection whose task is busy, or whose socket does not take a frame
//!   whole, is handed to its task; one that falls behind has several publishes' frames in its
//!   queue, and the next write takes up to 32 of them at once. A large fan-out that begins
//!   within 20 ms of the previous one wakes the connections' tasks instead: a saturated hub
//!   starts one every few milliseconds, and tasks, which run later, gather more publishes'
//!   frames per system call than writer tasks would.
//! - **Connections report progress without a message per flush.** After flushing a batch of
//!   text frames the connection's task adds the bytes to its outbox's counter and, if the hub
//!   had taken the previous count, names itself in a shared "moved" list (waking the hub task if
//!   the list was empty). Once per turn of its loop the hub task settles every connection named
//!   there with one `written` each (a connection whose socket ended first is settled when its
//!   end is reported, so `bytes_written` misses none of its last flushes). That is what lets
//!   the hub skip `agent_thinking` for a connection that is behind and close one that cannot
//!   keep up, while everyone else goes on receiving.
//! - **Transport mapping.** `Ping` → WebSocket ping; a pong → [`Hub::pong`]; `Close { reason }` →
//!   a close frame with `reason.code()` and `reason.as_str()` (frames queued before it are sent
//!   first, except for `SlowConsumer`, whose queue is abandoned); a client close frame with
//!   1000/1001 (or none) → `disconnect(Clean)`, anything else (reset, EOF, other codes) →
//!   `disconnect(Abnormal)`, which feeds the user's reconnect breaker. What the transport itself
//!   refuses is closed without reaching the hub: a binary frame with 1003, text that is not
//!   UTF-8 with 1007, a message over twice `max_frame_bytes` with 1009 (see [`Handle::serve`]).
//! - **A socket budget.** [`DriverConfig::max_connections`] bounds the connection tasks alive
//!   (each holds a socket until its close is done); over it, connects are refused with 503 so
//!   that file descriptors remain for plain HTTP ([`crate::listen::FdBudget`]).
//! - **Connect before the upgrade.** [`Handle::connect`] runs `Hub::connect` while the HTTP request
//!   is still open, so a refused connection is an HTTP error, not an opened-then-closed socket.
//!   The returned [`Accepted`] owns the outbox; if the upgrade never happens, dropping it reports
//!   the connection gone.
//! - **Shutdown.** [`Handle::shutdown`] closes every connection with
//!   [`switchboard::CloseReason::ServerShutdown`] through [`Hub::close`], then waits (bounded)
//!   until every connection task has sent its close frame and ended; new connects are refused
//!   meanwhile.
//!
//! Application hooks: inbound client messages arrive on the `mpsc::Receiver<Box<Inbound>>`
//! returned by [`spawn`]; publish with [`Handle::publish`]; read counters with
//! [`Handle::snapshot`]. Audit events are counted by kind (and logged when `log_audits` is set).

mod connection;
mod hub_task;
mod outbox;
mod socket;
mod sse;

pub use socket::{SharedSocket, SocketWriter, share};
pub use sse::{SseConn, SseSessions, decode_positions, encode_positions};

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::WebSocketUpgrade;
use switchboard::{
    BusFailure, ConnId, ConnectError, DisconnectReason, Envelope, Frame, Hub, HubStats, Inbound,
    Principal, PublishError, Published, Rates, RoomId, Tier,
};
use tokio::sync::{mpsc, oneshot};

use crate::bus::{BusLink, BusMetrics};
use hub_task::Driver;

/// Sizes and timeouts of the driver.
#[derive(Clone, Debug)]
pub struct DriverConfig {
    /// Capacity of the channel into the hub task.
    pub command_queue: usize,
    /// Frames one connection's outbox holds before the connection is closed as a slow consumer.
    pub outbox_frames: usize,
    /// Capacity of the channel of inbound client messages to the application.
    pub inbound_queue: usize,
    /// How long a connection's task may take to send its close frame, and how long it then waits
    /// for the peer's close reply, before the socket is dropped.
    pub close_timeout: Duration,
    /// Bytes of text frames a connection's task hands to its socket before a flush must
    /// complete; each completed flush counts as `written`.
    pub flush_bytes: usize,
    /// Log audit events to stderr.
    pub log_audits: bool,
    /// Verifies a client's `refresh` token ([`switchboard::Action::RefreshRequested`]): the new
    /// session end, or why not. `None`: every refresh is refused ("not supported").
    pub refresh: Option<RefreshVerifier>,
    /// WebSocket connections the driver holds at once: admitted, open, or still closing (each
    /// holds a socket). Over it, [`Handle::connect`] is refused with
    /// `ConnectError::TooManyConnections` (HTTP 503) while plain HTTP requests still work. The
    /// binary derives it from `RLIMIT_NOFILE` (see [`crate::listen::FdBudget`]); `None`: only the
    /// hub's `max_connections` applies.
    pub max_connections: Option<usize>,
    /// Whether frames are written straight to the sockets the driver was given
    /// ([`Accepted::write_directly`]) when the connection's task has nothing else to write,
    /// instead of waking each connection's task: by the hub task when a turn of its loop hands
    /// frames to fewer than 64 connections (a publish to one user or a small room), by writer
    /// tasks in batches of 64 for a larger fan-out. Off: every frame goes through its
    /// connection's task.
    pub direct_writes: bool,
}

impl Default for DriverConfig {
    fn default() -> Self {
        DriverConfig {
            command_queue: 4096,
            // The hub's byte budget (1 MiB by default) is the real bound; at ~64 bytes for the
            // smallest frame this count is reached only by a peer that is behind anyway.
            outbox_frames: 16 * 1024,
            inbound_queue: 1024,
            close_timeout: Duration::from_secs(5),
            flush_bytes: 64 * 1024,
            log_audits: false,
            max_connections: None,
            refresh: None,
            direct_writes: true,
        }
    }
}

/// A verdict on a refresh: the session's new end (`None`: never), or why not.
pub type RefreshVerdict = Result<Option<std::time::Instant>, String>;

type VerifyFn = dyn Fn(&switchboard::RefreshRequest) -> RefreshVerdict + Send + Sync;

/// Checks a client's `refresh` token against the connection it came on: `Ok(new expiry)` (which
/// must be later than the session's current end) or `Err(a short reason for the client)`. Called
/// on the hub task: keep it quick (a signature check, not a network call).
#[derive(Clone)]
pub struct RefreshVerifier(Arc<VerifyFn>);

impl RefreshVerifier {
    /// A verifier from a function.
    pub fn new(
        f: impl Fn(&switchboard::RefreshRequest) -> RefreshVerdict + Send + Sync + 'static,
    ) -> Self {
        Self(Arc::new(f))
    }

    pub(crate) fn verify(&self, request: &switchboard::RefreshRequest) -> RefreshVerdict {
        (self.0)(request)
    }
}

impl std::fmt::Debug for RefreshVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RefreshVerifier")
    }
}

/// What connection tasks and the application send to the hub task.
enum Command {
    Connect {
        principal: Principal,
        rooms: Vec<RoomId>,
        reply: oneshot::Sender<Result<Accepted, Refused>>,
    },
    Frame {
        conn: ConnId,
        bytes: Bytes,
    },
    Pong {
        conn: ConnId,
    },
    Gone {
        conn: ConnId,
        reason: DisconnectReason,
    },
    Publish {
        envelope: Envelope,
        reply: oneshot::Sender<Result<Receipt, PublishFailed>>,
    },
    /// Several publishes taken in one turn of the hub task, in order.
    PublishBatch(Vec<(Envelope, oneshot::Sender<Result<Receipt, PublishFailed>>)>),
    Snapshot {
        reply: oneshot::Sender<Snapshot>,
    },
    Reply {
        conn: ConnId,
        id: Arc<str>,
        answer: switchboard::Reply,
        reply: oneshot::Sender<Result<(), switchboard::ReplyError>>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
    /// Runs a closure on the hub (reads and runtime changes for the admin API and lookups); its
    /// actions are drained after it, like any command's.
    With(HubJob),
}

/// A closure run on the hub task with the current instant.
type HubJob = Box<dyn FnOnce(&mut Hub, std::time::Instant) + Send>;

/// Why a connect did not produce a connection.
#[derive(Debug)]
pub enum Refused {
    /// The hub refused it (a limit, the reconnect breaker, an expired session).
    Hub(ConnectError),
    /// The server is shutting down.
    Stopping,
}

/// Why a publish failed.
#[derive(Debug)]
pub enum PublishFailed {
    /// The hub refused the envelope.
    Hub(PublishError),
    /// Cluster mode: the bus did not append it (retry when [`BusFailure::is_retryable`], with
    /// the same idempotency key to be safe).
    Bus(BusFailure),
    /// The hub task is gone.
    Stopped,
}

impl PublishFailed {
    /// Whether trying again later may succeed: the bus was down, overloaded or timed out.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        match self {
            PublishFailed::Bus(failure) | PublishFailed::Hub(PublishError::Bus(failure)) => {
                failure.is_retryable()
            }
            PublishFailed::Hub(_) | PublishFailed::Stopped => false,
        }
    }
}

/// What a publish did: the hub's [`Published`] (in cluster mode with the position the bus
/// assigned, and no delivery counts: delivery happens on every node when the message comes back
/// over the bus), and whether the bus had seen its idempotency key before.
#[derive(Clone, Debug)]
pub struct Receipt {
    /// What the hub reported.
    pub published: Published,
    /// Cluster mode: the idempotency key was used before; nothing new was appended and the
    /// position is the first append's.
    pub duplicate: bool,
}

/// What the driver counts beside the hub's own stats.
#[derive(Clone, Debug, Default)]
pub struct DriverStats {
    /// Audit events by kind.
    pub audits: BTreeMap<&'static str, u64>,
    /// Connections closed because their outbox was full.
    pub outbox_overflows: u64,
    /// Inbound messages dropped because the application's channel was full or gone.
    pub inbound_dropped: u64,
    /// Writes of text frames to connections (WebSocket flushes, SSE chunks), as settled by the
    /// hub task: `HubStats::deliveries` over this is how many frames one write carries. A
    /// connection's last writes before it ends may not be counted.
    pub flushes: u64,
    /// Batches of a large fan-out (up to 64 connections each) handed to writer tasks, which
    /// write them straight to the sockets on whichever worker is free.
    pub writer_batches: u64,
    /// Open connections as the driver sees them.
    pub connections: usize,
    /// Connection tasks alive (admitted, open or closing): what [`DriverConfig::max_connections`]
    /// bounds.
    pub sockets: usize,
    /// Connects refused at [`DriverConfig::max_connections`].
    pub refused_at_capacity: u64,
    /// Accepts that failed because the process or the system ran out of file descriptors
    /// (`EMFILE`/`ENFILE`), counted by the listener ([`crate::listen`]).
    pub accept_fd_exhausted: u64,
    /// Accepts that failed for any other reason but a peer's reset.
    pub accept_errors: u64,
    /// TCP connections closed at once because `max_pending` connections had not yet upgraded.
    pub pending_refused: u64,
    /// HTTP connections closed because the request's headers did not arrive in time.
    pub header_timeouts: u64,
    /// Rooms of tokens' `rooms` claims that the hub refused to join (the connection stays, in
    /// the rooms it could join).
    pub rooms_refused: u64,
    /// Connects with at least one refused room: each writes one summary line to stderr.
    pub connects_with_refused_rooms: u64,
}

/// Counters the listener ([`crate::listen`]) keeps outside the hub task; every [`Snapshot`]
/// reads them into [`DriverStats`].
#[derive(Debug, Default)]
pub struct ListenerCounters {
    /// See [`DriverStats::accept_fd_exhausted`].
    pub accept_fd_exhausted: AtomicU64,
    /// See [`DriverStats::accept_errors`].
    pub accept_errors: AtomicU64,
    /// See [`DriverStats::pending_refused`].
    pub pending_refused: AtomicU64,
    /// See [`DriverStats::header_timeouts`].
    pub header_timeouts: AtomicU64,
}

impl ListenerCounters {
    fn read_into(&self, stats: &mut DriverStats) {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        stats.accept_fd_exhausted = load(&self.accept_fd_exhausted);
        stats.accept_errors = load(&self.accept_errors);
        stats.pending_refused = load(&self.pending_refused);
        stats.header_timeouts = load(&self.header_timeouts);
    }
}

/// The hub's counters and the driver's, read at one instant.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// The hub's counters and gauges.
    pub hub: HubStats,
    /// The driver's own counters.
    pub driver: DriverStats,
    /// Moving averages of each tier's traffic.
    pub tiers: Vec<(Tier, Rates)>,
    /// Cluster mode: the bus driver's counters.
    pub bus: Option<Arc<BusMetrics>>,
}

/// What a connection's task sends, in order.
#[derive(Debug)]
enum Out {
    Text(Frame),
    Ping,
}

/// The driver's side of one connection: its outbox. Dropping it (the hub forgot the connection)
/// detaches the outbox, which the connection's task notices.
struct Peer {
    outbox: Arc<outbox::Outbox>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.outbox.detach();
    }
}

/// A connection the hub admitted, waiting for its socket ([`Handle::serve`]). Dropping it unused
/// (the upgrade failed) reports the connection gone.
pub struct Accepted {
    id: ConnId,
    parts: Option<AcceptedParts>,
}

struct AcceptedParts {
    outbox: outbox::Receiver,
    handle: Handle,
    /// Held while the connection's task runs; shutdown waits until every clone is gone.
    _alive: Alive,
}

/// A connection task's share of the driver: shutdown waits until every sender clone is gone, and
/// `live` counts the tasks for [`DriverConfig::max_connections`].
struct Alive {
    _tx: mpsc::Sender<()>,
    live: Arc<AtomicUsize>,
}

impl Drop for Alive {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Accepted {
    /// The hub's id of the connection.
    #[allow(dead_code)] // for applications that keep their own map of connections
    pub fn id(&self) -> ConnId {
        self.id
    }

    /// Lets the hub task write this connection's frames straight to its socket when the
    /// connection's task has nothing else to write ([`DriverConfig::direct_writes`]),
    /// instead of waking the task for each. `socket` must be the socket the WebSocket is served
    /// on: the listener puts it into every request's extensions ([`crate::listen::serve`]).
    /// Without it every frame goes through the connection's task.
    pub fn write_directly(&mut self, socket: SocketWriter) {
        if let Some(parts) = &self.parts {
            parts.outbox.share_socket(socket);
        }
    }
}

impl Drop for Accepted {
    fn drop(&mut self) {
        if let Some(parts) = self.parts.take() {
            parts
                .handle
                .send_now(Command::Gone { conn: self.id, reason: DisconnectReason::Abnormal });
        }
    }
}

/// A cheap, cloneable handle to the hub task.
#[derive(Clone)]
pub struct Handle {
    tx: mpsc::Sender<Command>,
    /// Connections with flushed bytes the hub task has not settled yet.
    moved: Arc<outbox::Moved>,
    cfg: Arc<DriverConfig>,
    listener: Arc<ListenerCounters>,
    /// The largest message the transport reads ([`Handle::configure`]).
    max_message: usize,
}

/// Starts the hub task. Returns its handle and the application's channel of client messages.
pub fn spawn(hub: Hub, cfg: DriverConfig) -> (Handle, mpsc::Receiver<Box<Inbound>>) {
    spawn_inner(hub, cfg, None)
}

/// Starts the hub task of a clustered hub (`Config::cluster` set) over a bus driver's link, for
/// example [`crate::bus::redis::start`]'s. The hub task performs `Action::Bus` through the link
/// and feeds what comes back into the hub; [`Handle::publish`] answers once the bus appended (or
/// refused) the message.
pub fn spawn_clustered(
    hub: Hub,
    cfg: DriverConfig,
    link: BusLink,
) -> (Handle, mpsc::Receiver<Box<Inbound>>) {
    spawn_inner(hub, cfg, Some(link))
}

fn spawn_inner(
    hub: Hub,
    cfg: DriverConfig,
    link: Option<BusLink>,
) -> (Handle, mpsc::Receiver<Box<Inbound>>) {
    let (tx, rx) = mpsc::channel(cfg.command_queue);
    let (inbound_tx, inbound_rx) = mpsc::channel(cfg.inbound_queue);
    let max_message = transport_limit(hub.config().max_frame_bytes);
    let handle = Handle {
        tx,
        moved: Arc::default(),
        cfg: Arc::new(cfg),
        listener: Arc::default(),
        max_message,
    };
    let (bus, events) = match link {
        Some(link) => (Some((link.ops, link.metrics)), Some(link.events)),
        None => (None, None),
    };
    tokio::spawn(Driver::new(hub, rx, handle.clone(), inbound_tx, bus).run(events));
    (handle, inbound_rx)
}

/// The read buffer of each WebSocket connection ([`Handle::configure`]). Client frames (pongs,
/// subscriptions, acknowledgements) are small; a larger message is read 256 bytes per call.
pub const READ_BUFFER_BYTES: usize = 256;

/// What a WebSocket connection's transport buffers before writing to its socket (it writes
/// earlier on every flush) ([`Handle::configure`]).
pub const WRITE_BUFFER_BYTES: usize = 8 * 1024;

/// The transport's message size limit for a hub that accepts frames up to `max_frame_bytes`:
/// twice that, at least 16 KiB. A frame a little over the hub's limit still reaches the hub, which
/// answers it with an `error` frame (`frame_too_large`) and keeps the connection; one far over it
/// is never buffered whole: the transport closes the connection with 1009.
fn transport_limit(max_frame_bytes: usize) -> usize {
    max_frame_bytes.saturating_mul(2).max(16 * 1024)
}

impl Handle {
    /// Applies the driver's transport settings to a WebSocket upgrade before
    /// [`on_upgrade`](WebSocketUpgrade::on_upgrade): a [`READ_BUFFER_BYTES`] read buffer, a
    /// [`WRITE_BUFFER_BYTES`] write threshold, and the message and frame size limit derived from
    /// the hub's `Config::max_frame_bytes` (twice it, at least 16 KiB).
    ///
    /// tungstenite's default read buffer is 128 KiB, which it zero-fills, so every page stays
    /// resident: that was 93% of the server's memory per connection (BENCHMARKS.md, end to end).
    /// Client frames are small; a larger one is read in several calls, and the size limit still
    /// bounds it. The write threshold bounds what tungstenite buffers (and keeps allocated)
    /// before writing to the socket, whatever the batch a flush covers.
    pub fn configure(&self, upgrade: WebSocketUpgrade) -> WebSocketUpgrade {
        upgrade
            .read_buffer_size(READ_BUFFER_BYTES)
            .write_buffer_size(WRITE_BUFFER_BYTES)
            .max_message_size(self.max_message)
            .max_frame_size(self.max_message)
    }

    /// Answers a WebSocket upgrade for an admitted connection: the transport settings of
    /// [`Handle::configure`], then [`Handle::serve`] on the socket in a task of its own.
    ///
    /// axum's upgrade runs its callback inside the task that awaited the handshake, whose future
    /// keeps the handshake's state (the upgrade, the settings, the protocol, a slot for the socket)
    /// beside the callback's for the connection's whole life. Spawning the connection's task from
    /// the callback lets that task end at once: the connection holds only its own state.
    pub fn upgrade(
        &self,
        upgrade: WebSocketUpgrade,
        accepted: Accepted,
    ) -> axum::response::Response {
        let handle = self.clone();
        self.configure(upgrade).on_upgrade(move |socket| {
            tokio::spawn(handle.serve(accepted, socket));
            std::future::ready(())
        })
    }

    /// The counters a listener in front of this driver keeps ([`crate::listen::serve`]); they
    /// appear in every [`Snapshot`].
    pub fn listener_counters(&self) -> Arc<ListenerCounters> {
        self.listener.clone()
    }

    /// The largest message the transport reads; see [`Handle::configure`].
    #[must_use]
    pub fn max_message_bytes(&self) -> usize {
        self.max_message
    }

    async fn send(&self, cmd: Command) -> bool {
        self.tx.send(cmd).await.is_ok()
    }

    /// For `Drop`: enqueue without waiting, or hand the wait to a task.
    fn send_now(&self, cmd: Command) {
        if let Err(mpsc::error::TrySendError::Full(cmd)) = self.tx.try_send(cmd) {
            let tx = self.tx.clone();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = tx.send(cmd).await;
                });
            }
        }
    }

    /// Admits an authenticated principal and puts it into `rooms`. Call before the WebSocket
    /// upgrade; hand the result and the socket to [`Handle::serve`].
    pub async fn connect(
        &self,
        principal: Principal,
        rooms: Vec<RoomId>,
    ) -> Result<Accepted, Refused> {
        let (reply, rx) = oneshot::channel();
        if !self.send(Command::Connect { principal, rooms, reply }).await {
            return Err(Refused::Stopping);
        }
        rx.await.unwrap_or(Err(Refused::Stopping))
    }

    /// Publishes an envelope. In cluster mode it returns once the bus appended it (or failed).
    pub async fn publish(&self, envelope: Envelope) -> Result<Published, PublishFailed> {
        self.publish_receipt(envelope).await.map(|r| r.published)
    }

    /// Publishes an envelope and says whether its idempotency key was seen before.
    pub async fn publish_receipt(&self, envelope: Envelope) -> Result<Receipt, PublishFailed> {
        let (reply, rx) = oneshot::channel();
        if !self.send(Command::Publish { envelope, reply }).await {
            return Err(PublishFailed::Stopped);
        }
        rx.await.unwrap_or(Err(PublishFailed::Stopped))
    }

    /// Publishes several envelopes in order, as one command: the hub takes them in one turn, so
    /// what they queue for one connection is written with one flush. Each has its own answer, in
    /// the order given.
    pub async fn publish_batch(
        &self,
        envelopes: Vec<Envelope>,
    ) -> Vec<Result<Receipt, PublishFailed>> {
        let (items, answers): (Vec<_>, Vec<_>) = envelopes
            .into_iter()
            .map(|envelope| {
                let (reply, rx) = oneshot::channel();
                ((envelope, reply), rx)
            })
            .unzip();
        if !self.send(Command::PublishBatch(items)).await {
            return answers.iter().map(|_| Err(PublishFailed::Stopped)).collect();
        }
        let mut out = Vec::with_capacity(answers.len());
        for rx in answers {
            out.push(rx.await.unwrap_or(Err(PublishFailed::Stopped)));
        }
        out
    }

    /// Answers a client message that carried an `id` ([`Inbound::id`]) on the connection it came
    /// from ([`Inbound`]'s `from.conn`): see [`Hub::reply`]. `Err(None)`: the hub task is gone.
    pub async fn reply(
        &self,
        conn: ConnId,
        id: Arc<str>,
        answer: switchboard::Reply,
    ) -> Result<(), Option<switchboard::ReplyError>> {
        let (reply, rx) = oneshot::channel();
        if !self.send(Command::Reply { conn, id, answer, reply }).await {
            return Err(None);
        }
        match rx.await {
            Ok(result) => result.map_err(Some),
            Err(_) => Err(None),
        }
    }

    /// Runs `f` on the hub task with the hub and the current instant, and returns its result
    /// (`None` if the hub task is gone). For reads and runtime changes that have no command of
    /// their own (the admin API): the hub's actions are drained after it as after any call. Keep
    /// `f` short: every connection waits while it runs.
    pub async fn with_hub<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Hub, std::time::Instant) -> R + Send + 'static,
    ) -> Option<R> {
        let (reply, rx) = oneshot::channel();
        let job: HubJob = Box::new(move |hub, now| {
            let _ = reply.send(f(hub, now));
        });
        if !self.send(Command::With(job)).await {
            return None;
        }
        rx.await.ok()
    }

    /// The hub's and the driver's counters, or `None` if the hub task is gone.
    pub async fn snapshot(&self) -> Option<Snapshot> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Snapshot { reply }).await;
        rx.await.ok()
    }

    /// Closes every connection with [`switchboard::CloseReason::ServerShutdown`] and waits (at
    /// most about twice `close_timeout`) until every connection task has ended. Later connects
    /// are refused.
    pub async fn shutdown(&self) {
        let (reply, rx) = oneshot::channel();
        if self.send(Command::Shutdown { reply }).await {
            let _ = rx.await;
        }
    }
}
