//! The driver: runs a sans-io [`Hub`] on tokio for axum WebSocket connections. It is written to be
//! lifted into an application as it is; it depends on nothing else in this example.
//!
//! # Design
//!
//! ```text
//!   HTTP handlers ──┐                         ┌──► conn task A: writer ──► socket A
//!   (publish,       │   one bounded channel   │      (frames, pings, close)
//!    stats, auth'd  ├──► ┌──────────────┐ ────┤
//!    connect)       │    │   hub task   │     └──► conn task B: writer ──► socket B
//!   conn readers ───┤    │  owns `Hub`  │          per-connection bounded outbox + close slot
//!   (frames, pongs, │    │  + one timer │
//!    gone)          │    └──────┬───────┘
//!   conn writers ───┘           └──► application channel (Inbound messages, bounded)
//!   (written n bytes)
//! ```
//!
//! - **One owner.** The [`Hub`] lives in one task and nothing else touches it: no mutex, no shared
//!   state. Everything else talks to that task through [`Handle`], a cheap clone around one
//!   bounded `mpsc` channel of [`Command`]s. A full channel makes readers wait, which stops them
//!   reading their sockets: TCP pushes back on the clients, never on the hub.
//! - **The drive loop.** The task waits for a command or for the deadline of
//!   [`Hub::poll_timeout`] (one `sleep_until`, re-armed every turn), calls into the hub with
//!   `Instant::now()`, and drains [`Hub::poll_action`] until `None` after every call.
//! - **The hub never waits for a socket.** Each connection has a bounded outbox (`try_send`
//!   only) and a one-shot close slot. `Deliver` and `Ping` go into the outbox; `Close` goes into
//!   the slot, which the writer watches even while a send is blocked on a slow peer. The hub
//!   already bounds what it hands a connection by bytes (`max_unwritten_bytes`, released by
//!   `written`); the outbox's frame count is a second fence, and overflowing it closes the
//!   connection as a slow consumer, exactly as the hub would.
//! - **Writers report progress.** After flushing a batch of text frames the writer reports the
//!   bytes with `written`, which is what lets the hub skip `agent_thinking` for a connection that
//!   is behind and close one that cannot keep up, while everyone else goes on receiving.
//! - **Transport mapping.** `Ping` → WebSocket ping; a pong → [`Hub::pong`]; `Close { reason }` →
//!   a close frame with `reason.code()` and `reason.as_str()` (frames queued before it are sent
//!   first, except for `SlowConsumer`, whose queue is abandoned); a client close frame with
//!   1000/1001 (or none) → `disconnect(Clean)`, anything else (reset, EOF, other codes) →
//!   `disconnect(Abnormal)`, which feeds the user's reconnect breaker.
//! - **Connect before the upgrade.** [`Handle::connect`] runs `Hub::connect` while the HTTP request
//!   is still open, so a refused connection is an HTTP error, not an opened-then-closed socket.
//!   The returned [`Accepted`] owns the outbox; if the upgrade never happens, dropping it reports
//!   the connection gone.
//! - **Shutdown.** [`Handle::shutdown`] closes every connection with
//!   [`CloseReason::ServerShutdown`] through [`Hub::close`], then waits (bounded) until every
//!   connection task has sent its close frame and ended; new connects are refused meanwhile.
//!
//! Application hooks: inbound client messages arrive on the `mpsc::Receiver<Box<Inbound>>`
//! returned by [`spawn`]; publish with [`Handle::publish`]; read counters with
//! [`Handle::snapshot`]. Audit events are counted by kind (and logged when `log_audits` is set).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use switchboard::{
    Action, AuditKind, CloseReason, ConnId, ConnectError, DisconnectReason, Envelope, Frame, Hub,
    HubStats, Inbound, Principal, PublishError, Published, Rates, RoomId, Tier,
};
use tokio::sync::{mpsc, oneshot};

/// Sizes and timeouts of the driver.
#[derive(Clone, Debug)]
pub struct DriverConfig {
    /// Capacity of the channel into the hub task.
    pub command_queue: usize,
    /// Frames one connection's outbox holds before the connection is closed as a slow consumer.
    pub outbox_frames: usize,
    /// Capacity of the channel of inbound client messages to the application.
    pub inbound_queue: usize,
    /// How long a writer may take to send its close frame, and how long the reader then waits for
    /// the peer's close reply, before the socket is dropped.
    pub close_timeout: Duration,
    /// Bytes of text frames a writer sends before it flushes and reports `written`.
    pub flush_bytes: usize,
    /// Log audit events to stderr.
    pub log_audits: bool,
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
        }
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
    Written {
        conn: ConnId,
        bytes: usize,
    },
    Gone {
        conn: ConnId,
        reason: DisconnectReason,
    },
    Publish {
        envelope: Envelope,
        reply: oneshot::Sender<Result<Published, PublishError>>,
    },
    Snapshot {
        reply: oneshot::Sender<Snapshot>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

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
    /// The hub task is gone.
    Stopped,
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
    /// Open connections as the driver sees them.
    pub connections: usize,
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
}

/// What a writer sends, in order.
#[derive(Debug)]
enum Out {
    Text(Frame),
    Ping,
}

/// The driver's side of one connection.
struct Peer {
    frames: mpsc::Sender<Out>,
    close: oneshot::Sender<CloseReason>,
}

/// A connection the hub admitted, waiting for its socket ([`Handle::serve`]). Dropping it unused
/// (the upgrade failed) reports the connection gone.
pub struct Accepted {
    id: ConnId,
    parts: Option<AcceptedParts>,
}

struct AcceptedParts {
    frames: mpsc::Receiver<Out>,
    close: oneshot::Receiver<CloseReason>,
    handle: Handle,
    /// Held while the connection's task runs; shutdown waits until every clone is gone.
    _alive: mpsc::Sender<()>,
}

impl Accepted {
    /// The hub's id of the connection.
    #[allow(dead_code)] // for applications that keep their own map of connections
    pub fn id(&self) -> ConnId {
        self.id
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
    cfg: std::sync::Arc<DriverConfig>,
}

/// Starts the hub task. Returns its handle and the application's channel of client messages.
pub fn spawn(hub: Hub, cfg: DriverConfig) -> (Handle, mpsc::Receiver<Box<Inbound>>) {
    let (tx, rx) = mpsc::channel(cfg.command_queue);
    let (inbound_tx, inbound_rx) = mpsc::channel(cfg.inbound_queue);
    let (alive, alive_rx) = mpsc::channel(1);
    let handle = Handle { tx, cfg: std::sync::Arc::new(cfg) };
    let driver = Driver {
        hub,
        rx,
        handle: handle.clone(),
        peers: HashMap::new(),
        inbound: inbound_tx,
        stats: DriverStats::default(),
        alive: Some((alive, alive_rx)),
    };
    tokio::spawn(driver.run());
    (handle, inbound_rx)
}

impl Handle {
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

    /// Publishes an envelope.
    pub async fn publish(&self, envelope: Envelope) -> Result<Published, PublishFailed> {
        let (reply, rx) = oneshot::channel();
        if !self.send(Command::Publish { envelope, reply }).await {
            return Err(PublishFailed::Stopped);
        }
        match rx.await {
            Ok(result) => result.map_err(PublishFailed::Hub),
            Err(_) => Err(PublishFailed::Stopped),
        }
    }

    /// The hub's and the driver's counters, or `None` if the hub task is gone.
    pub async fn snapshot(&self) -> Option<Snapshot> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Snapshot { reply }).await;
        rx.await.ok()
    }

    /// Closes every connection with [`CloseReason::ServerShutdown`] and waits (at most about
    /// twice `close_timeout`) until every connection task has ended. Later connects are refused.
    pub async fn shutdown(&self) {
        let (reply, rx) = oneshot::channel();
        if self.send(Command::Shutdown { reply }).await {
            let _ = rx.await;
        }
    }

    /// Runs one connection on its socket until it ends: a reader feeding the hub, and a writer
    /// performing what the hub asks for.
    pub async fn serve(self, mut accepted: Accepted, socket: WebSocket) {
        let id = accepted.id;
        let Some(parts) = accepted.parts.take() else { return };
        let AcceptedParts { frames, close, _alive, .. } = parts;
        let close_timeout = self.cfg.close_timeout;
        let (sink, mut stream) = socket.split();
        let mut writer = tokio::spawn(write_loop(self.clone(), id, sink, frames, close));
        let mut writer_done = false;
        let mut linger: Option<tokio::time::Instant> = None;
        let reason = loop {
            let lingering = async {
                match linger {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                msg = stream.next() => match msg {
                    Some(Ok(Message::Text(text))) => {
                        self.send(Command::Frame { conn: id, bytes: Bytes::from(text) }).await;
                    }
                    Some(Ok(Message::Binary(bytes))) => {
                        self.send(Command::Frame { conn: id, bytes }).await;
                    }
                    Some(Ok(Message::Pong(_))) => {
                        self.send(Command::Pong { conn: id }).await;
                    }
                    // Answered by tungstenite itself.
                    Some(Ok(Message::Ping(_))) => {}
                    Some(Ok(Message::Close(frame))) => {
                        let clean = frame.is_none_or(|f| matches!(f.code, 1000 | 1001));
                        break if clean { DisconnectReason::Clean } else { DisconnectReason::Abnormal };
                    }
                    Some(Err(_)) | None => break DisconnectReason::Abnormal,
                },
                _ = &mut writer, if !writer_done => {
                    // The writer ended: the hub closed the connection (close frame sent or timed
                    // out) or the socket failed. Give the peer a moment to answer the close.
                    writer_done = true;
                    linger = Some(tokio::time::Instant::now() + close_timeout);
                }
                () = lingering => break DisconnectReason::Abnormal,
            }
        };
        // If the hub closed it, it already forgot it and ignores this.
        self.send(Command::Gone { conn: id, reason }).await;
        if !writer_done {
            // `Gone` drops the outbox, which ends the writer.
            if tokio::time::timeout(close_timeout, &mut writer).await.is_err() {
                writer.abort();
            }
        }
    }
}

type Sink = SplitSink<WebSocket, Message>;

/// Performs `Deliver` and `Ping` in order, flushes in batches, reports `written`, and on `Close`
/// sends the close frame. Ends when the connection is closed or gone.
async fn write_loop(
    handle: Handle,
    id: ConnId,
    mut sink: Sink,
    mut frames: mpsc::Receiver<Out>,
    mut close: oneshot::Receiver<CloseReason>,
) {
    let cfg = handle.cfg.clone();
    loop {
        let first = tokio::select! {
            biased;
            reason = &mut close => {
                if let Ok(reason) = reason {
                    send_close(&mut sink, &mut frames, reason, cfg.close_timeout).await;
                }
                return;
            }
            out = frames.recv() => match out {
                Some(out) => out,
                None => return, // gone: the reader reported it
            },
        };
        let batch = send_batch(&mut sink, first, &mut frames, cfg.flush_bytes);
        let sent = tokio::select! {
            biased;
            reason = &mut close => {
                // The hub closed it while a send was stuck (a slow consumer) or in progress.
                if let Ok(reason) = reason {
                    send_close(&mut sink, &mut frames, reason, cfg.close_timeout).await;
                }
                return;
            }
            sent = batch => sent,
        };
        match sent {
            Ok(0) => {}
            Ok(bytes) => {
                handle.send(Command::Written { conn: id, bytes }).await;
            }
            Err(_) => return, // the socket failed; the reader sees it too
        }
    }
}

fn to_message(out: Out) -> (Message, usize) {
    match out {
        Out::Text(frame) => {
            let n = frame.len();
            // Shares the frame's buffer: no copy of the bytes per recipient.
            let text = Utf8Bytes::try_from(Bytes::from_owner(frame)).expect("frames are UTF-8");
            (Message::Text(text), n)
        }
        Out::Ping => (Message::Ping(Bytes::new()), 0),
    }
}

/// Sends `first` and whatever else is already queued (up to `flush_bytes`), then flushes once.
/// Returns the text bytes flushed.
async fn send_batch(
    sink: &mut Sink,
    first: Out,
    frames: &mut mpsc::Receiver<Out>,
    flush_bytes: usize,
) -> Result<usize, axum::Error> {
    let (msg, mut bytes) = to_message(first);
    sink.feed(msg).await?;
    while bytes < flush_bytes {
        let Ok(out) = frames.try_recv() else { break };
        let (msg, n) = to_message(out);
        sink.feed(msg).await?;
        bytes += n;
    }
    sink.flush().await?;
    Ok(bytes)
}

/// Sends the frames queued before the close (unless the peer is a slow consumer: its queue is
/// abandoned), then the close frame with the reason's code, within `timeout`.
async fn send_close(
    sink: &mut Sink,
    frames: &mut mpsc::Receiver<Out>,
    reason: CloseReason,
    timeout: Duration,
) {
    let _ = tokio::time::timeout(timeout, async {
        if reason != CloseReason::SlowConsumer {
            while let Ok(out) = frames.try_recv() {
                sink.feed(to_message(out).0).await?;
            }
        }
        let frame =
            CloseFrame { code: reason.code(), reason: Utf8Bytes::from_static(reason.as_str()) };
        sink.send(Message::Close(Some(frame))).await
    })
    .await;
}

/// The hub task's state.
struct Driver {
    hub: Hub,
    rx: mpsc::Receiver<Command>,
    handle: Handle,
    peers: HashMap<ConnId, Peer>,
    inbound: mpsc::Sender<Box<Inbound>>,
    stats: DriverStats,
    /// The liveness token every connection task holds a clone of, and its receiver; taken by
    /// shutdown to wait for every task to end.
    alive: Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>,
}

impl Driver {
    async fn run(mut self) {
        loop {
            let deadline = self.hub.poll_timeout();
            let timer = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                cmd = self.rx.recv() => {
                    let Some(cmd) = cmd else { return };
                    self.handle(cmd);
                    // Take what else is ready before looking at the timer again.
                    for _ in 0..256 {
                        let Ok(cmd) = self.rx.try_recv() else { break };
                        self.handle(cmd);
                    }
                }
                () = timer => {
                    self.hub.tick(Instant::now());
                    self.drain(Instant::now());
                }
            }
        }
    }

    fn handle(&mut self, cmd: Command) {
        let now = Instant::now();
        match cmd {
            Command::Connect { principal, rooms, reply } => {
                let result = self.connect(now, principal, rooms);
                let _ = reply.send(result);
            }
            Command::Frame { conn, bytes } => {
                // A refused frame was already answered with an `error` frame (and maybe a close);
                // an unknown id is a connection the hub closed a moment ago.
                let _ = self.hub.receive(now, conn, &bytes);
            }
            Command::Pong { conn } => {
                let _ = self.hub.pong(now, conn);
            }
            Command::Written { conn, bytes } => {
                let _ = self.hub.written(now, conn, bytes);
            }
            Command::Gone { conn, reason } => {
                self.peers.remove(&conn);
                let _ = self.hub.disconnect(now, conn, reason);
            }
            Command::Publish { envelope, reply } => {
                let result = self.hub.publish(now, envelope);
                self.drain(now);
                let _ = reply.send(result);
            }
            Command::Snapshot { reply } => {
                let mut driver = self.stats.clone();
                driver.connections = self.peers.len();
                let tiers = Tier::ALL.iter().map(|&t| (t, self.hub.tier_rates(t))).collect();
                let _ = reply.send(Snapshot { hub: *self.hub.stats(), driver, tiers });
            }
            Command::Shutdown { reply } => self.shutdown(now, reply),
        }
        self.drain(now);
    }

    fn connect(
        &mut self,
        now: Instant,
        principal: Principal,
        rooms: Vec<RoomId>,
    ) -> Result<Accepted, Refused> {
        let Some((alive, _)) = &self.alive else { return Err(Refused::Stopping) };
        let alive = alive.clone();
        let id = self.hub.connect(now, principal).map_err(Refused::Hub)?;
        let (frames_tx, frames_rx) = mpsc::channel(self.handle.cfg.outbox_frames);
        let (close_tx, close_rx) = oneshot::channel();
        self.peers.insert(id, Peer { frames: frames_tx, close: close_tx });
        for room in rooms {
            if let Err(e) = self.hub.join(now, id, room.clone()) {
                eprintln!("switchboard: {id} could not join room {room}: {e}");
            }
        }
        let parts = AcceptedParts {
            frames: frames_rx,
            close: close_rx,
            handle: self.handle.clone(),
            _alive: alive,
        };
        Ok(Accepted { id, parts: Some(parts) })
    }

    fn shutdown(&mut self, now: Instant, reply: oneshot::Sender<()>) {
        let Some((alive, mut all_done)) = self.alive.take() else {
            let _ = reply.send(());
            return;
        };
        drop(alive);
        let ids: Vec<ConnId> = self.peers.keys().copied().collect();
        for id in ids {
            let _ = self.hub.close(now, id, CloseReason::ServerShutdown);
            self.drain(now);
        }
        // Every connection task holds a clone of `alive`; `recv` returns `None` once all are gone.
        // Writers take at most `close_timeout`, readers linger at most as long again.
        let wait = self.handle.cfg.close_timeout * 2 + Duration::from_secs(1);
        tokio::spawn(async move {
            let _ = tokio::time::timeout(wait, all_done.recv()).await;
            let _ = reply.send(());
        });
    }

    /// Performs every queued action.
    fn drain(&mut self, now: Instant) {
        while let Some(action) = self.hub.poll_action() {
            match action {
                Action::Deliver { conn, frame } => self.push(now, conn, Out::Text(frame)),
                Action::Ping { conn } => self.push(now, conn, Out::Ping),
                Action::Close { conn, reason } => {
                    if let Some(peer) = self.peers.remove(&conn) {
                        let _ = peer.close.send(reason);
                    }
                }
                Action::Inbound(msg) => {
                    // The application is behind (or gone): drop rather than stall every user.
                    let dropped = self.inbound.try_send(msg).is_err();
                    self.stats.inbound_dropped += u64::from(dropped);
                }
                Action::Audit(event) => {
                    *self.stats.audits.entry(audit_name(event.kind)).or_default() += 1;
                    if self.handle.cfg.log_audits {
                        eprintln!(
                            "switchboard audit: {:?} conn={:?} tenant={:?} user={:?}",
                            event.kind, event.conn, event.tenant, event.user
                        );
                    }
                }
                // The same numbers accumulate in `hub.stats()`, which /metrics reads.
                Action::Metric(_) => {}
                _ => {}
            }
        }
    }

    /// Queues a frame or ping for a connection's writer without waiting.
    fn push(&mut self, now: Instant, conn: ConnId, out: Out) {
        let Some(peer) = self.peers.get(&conn) else { return };
        match peer.frames.try_send(out) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(Out::Ping)) => {} // it is behind; pings can wait
            Err(mpsc::error::TrySendError::Full(_)) => {
                // Its `Close` action follows in this drain.
                if self.hub.close(now, conn, CloseReason::SlowConsumer).is_ok() {
                    self.stats.outbox_overflows += 1;
                }
            }
            // The writer ended; the reader reports the connection gone.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

/// A stable snake_case name for an audit kind (a metrics label).
pub fn audit_name(kind: AuditKind) -> &'static str {
    use switchboard::LimitKind;
    match kind {
        AuditKind::StaleConnId => "stale_conn_id",
        AuditKind::GlobalBroadcastDenied => "global_broadcast_denied",
        AuditKind::GlobalBroadcast => "global_broadcast",
        AuditKind::LimitHit(limit) => match limit {
            LimitKind::TotalConnections => "limit_total_connections",
            LimitKind::TenantConnections => "limit_tenant_connections",
            LimitKind::UserConnections => "limit_user_connections",
            LimitKind::UserConnectionsEvicted => "limit_user_connections_evicted",
            LimitKind::RoomsPerConnection => "limit_rooms_per_connection",
            LimitKind::ThreadSubscriptions => "limit_thread_subscriptions",
            LimitKind::MessageRate => "limit_message_rate",
            LimitKind::ControlRate => "limit_control_rate",
            LimitKind::FrameSize => "limit_frame_size",
            _ => "limit_other",
        },
        AuditKind::Flood => "flood",
        AuditKind::OversizedFrame => "oversized_frame",
        AuditKind::MalformedFrame => "malformed_frame",
        AuditKind::ViolationClose => "violation_close",
        AuditKind::BreakerOpened => "breaker_opened",
        AuditKind::BreakerRefused => "breaker_refused",
        AuditKind::ForeignStream => "foreign_stream",
        _ => "other",
    }
}
