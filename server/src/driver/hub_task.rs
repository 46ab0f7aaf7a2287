//! The hub task: owns the [`Hub`], performs its actions, and answers the [`Handle`]'s commands.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use switchboard::{
    Action, BusFailure, BusOp, CloseReason, ConnId, ConnectError, Hub, Inbound, OpId, Principal,
    PublishOutcome, Published, RoomError, RoomId, Tier,
};
use tokio::sync::{mpsc, oneshot};

use super::outbox::{Outbox, Receiver, Refused as Push, Wakes, Writers};
use super::{
    Accepted, AcceptedParts, Alive, Command, DriverStats, Handle, Out, Peer, PublishFailed,
    Receipt, Refused, Snapshot,
};
use crate::bus::{BusEvent, BusMetrics};

/// A clustered publish waiting for the bus's answer.
type PendingPublish = (Published, oneshot::Sender<Result<Receipt, PublishFailed>>);

/// The hub task's end of the bus, in cluster mode.
struct Bus {
    ops: mpsc::Sender<BusOp>,
    metrics: Arc<BusMetrics>,
    /// Publishes waiting for their `Action::Published`, by the append's id.
    publishes: HashMap<OpId, PendingPublish>,
}

/// The hub task's state.
pub(super) struct Driver {
    hub: Hub,
    rx: mpsc::Receiver<Command>,
    handle: Handle,
    peers: HashMap<ConnId, Peer>,
    inbound: mpsc::Sender<Box<Inbound>>,
    stats: DriverStats,
    /// The liveness token every connection task holds a clone of, and its receiver; taken by
    /// shutdown to wait for every task to end.
    alive: Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>,
    /// Connection tasks alive; each one's [`Alive`] decrements it when it ends.
    live: Arc<AtomicUsize>,
    /// Cluster mode: the bus's operations and pending publishes.
    bus: Option<Bus>,
    /// The connections whose flushed bytes are being settled (kept for its allocation).
    moved: Vec<ConnId>,
    /// The connection tasks pushed to since the turn began, woken at its end.
    waking: Wakes,
}

impl Driver {
    pub(super) fn new(
        hub: Hub,
        rx: mpsc::Receiver<Command>,
        handle: Handle,
        inbound: mpsc::Sender<Box<Inbound>>,
        bus: Option<(mpsc::Sender<BusOp>, Arc<BusMetrics>)>,
    ) -> Self {
        let (alive, alive_rx) = mpsc::channel(1);
        let bus = bus.map(|(ops, metrics)| Bus { ops, metrics, publishes: HashMap::new() });
        Driver {
            hub,
            rx,
            handle,
            peers: HashMap::new(),
            inbound,
            stats: DriverStats::default(),
            alive: Some((alive, alive_rx)),
            live: Arc::default(),
            bus,
            moved: Vec::new(),
            waking: Wakes::default(),
        }
    }

    pub(super) async fn run(mut self, mut bus_events: Option<mpsc::Receiver<BusEvent>>) {
        self.waking.direct = self.handle.cfg.direct_writes;
        // A large fan-out's batches are written by writer tasks where direct writes are allowed.
        self.waking.writers = self.waking.direct.then(|| Writers::new(self.handle.moved.clone()));
        loop {
            let deadline = self.hub.poll_timeout();
            let timer = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            // Not biased: a steady stream of commands (publishes, frames) must not starve the
            // bus's replies and messages, nor the other way round.
            let moved = self.handle.moved.clone();
            tokio::select! {
                () = moved.notify.notified() => {}
                cmd = self.rx.recv() => {
                    let Some(cmd) = cmd else { return };
                    self.handle(cmd);
                    // Take what else is ready before looking at the timer again.
                    for _ in 0..256 {
                        let Ok(cmd) = self.rx.try_recv() else { break };
                        self.handle(cmd);
                    }
                }
                event = next_event(&mut bus_events) => {
                    let Some(event) = event else {
                        // The bus driver is gone: the bus is down for good.
                        bus_events = None;
                        self.hub.bus_down(Instant::now());
                        self.drain(Instant::now());
                        self.waking.flush_all();
                        continue;
                    };
                    let now = Instant::now();
                    self.bus_event(now, event);
                    for _ in 0..256 {
                        let Some(Ok(event)) = bus_events.as_mut().map(|rx| rx.try_recv()) else {
                            break;
                        };
                        self.bus_event(now, event);
                    }
                    self.drain(now);
                }
                () = timer => {
                    self.hub.tick(Instant::now());
                    self.drain(Instant::now());
                }
            }
            // Whatever woke it, the bytes flushed meanwhile are settled once per turn.
            // Pushes of this turn go out first (directly, or by waking the connections' tasks),
            // so that direct writes are settled in the same turn; what settling queues goes out
            // at once too.
            self.waking.flush_all();
            self.settle_written(Instant::now());
            self.waking.flush_all();
        }
    }

    /// Feeds one event of the bus to the hub (the caller drains).
    fn bus_event(&mut self, now: Instant, event: BusEvent) {
        match event {
            BusEvent::Message { stream, pos, payload } => {
                self.hub.bus_message(now, &stream, pos, &payload);
            }
            BusEvent::Signal { stream, payload } => self.hub.bus_signal(now, &stream, &payload),
            BusEvent::Reply { op, reply } => self.hub.bus_reply(now, op, reply),
            BusEvent::Down => self.hub.bus_down(now),
            BusEvent::Up => self.hub.bus_up(now),
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
            Command::Gone { conn, reason } => {
                if let Some(peer) = self.peers.remove(&conn) {
                    // Its last flushes may be named for this turn's settling, which would no
                    // longer find it: count them while the hub still knows the connection.
                    settle(&mut self.hub, &mut self.stats, now, conn, &peer.outbox);
                }
                let _ = self.hub.disconnect(now, conn, reason);
            }
            Command::Publish { envelope, reply } => self.publish(now, envelope, reply),
            Command::PublishBatch(items) => {
                for (envelope, reply) in items {
                    self.publish(now, envelope, reply);
                }
            }
            Command::Snapshot { reply } => {
                let mut driver = self.stats.clone();
                driver.connections = self.peers.len();
                driver.sockets = self.live.load(Ordering::Relaxed);
                driver.writer_batches = self.waking.writer_batches;
                self.handle.listener.read_into(&mut driver);
                let tiers = Tier::ALL.iter().map(|&t| (t, self.hub.tier_rates(t))).collect();
                let bus = self.bus.as_ref().map(|b| b.metrics.clone());
                let _ = reply.send(Snapshot { hub: self.hub.stats(), driver, tiers, bus });
            }
            Command::Reply { conn, id, answer, reply } => {
                let _ = reply.send(self.hub.reply(now, conn, &id, answer));
            }
            Command::Shutdown { reply } => self.shutdown(now, reply),
            Command::With(job) => job(&mut self.hub, now),
        }
        self.drain(now);
    }

    /// Publishes one envelope and answers it, or (clustered) keeps the answer for the bus's
    /// reply. The caller drains.
    fn publish(
        &mut self,
        now: Instant,
        envelope: switchboard::Envelope,
        reply: oneshot::Sender<Result<Receipt, PublishFailed>>,
    ) {
        match self.hub.publish(now, envelope) {
            // Clustered: answered when the bus says what became of the append.
            Ok(published) if published.op.is_some() && self.bus.is_some() => {
                let op = published.op.expect("checked");
                let bus = self.bus.as_mut().expect("checked");
                bus.publishes.insert(op, (published, reply));
            }
            result => {
                let result = result
                    .map(|published| {
                        let duplicate = published.duplicate;
                        Receipt { published, duplicate }
                    })
                    .map_err(PublishFailed::Hub);
                let _ = reply.send(result);
            }
        }
    }

    fn connect(
        &mut self,
        now: Instant,
        principal: Principal,
        rooms: Vec<RoomId>,
    ) -> Result<Accepted, Refused> {
        let Some((alive, _)) = &self.alive else { return Err(Refused::Stopping) };
        let alive = alive.clone();
        let live = self.live.load(Ordering::Relaxed);
        if let Some(cap) = self.handle.cfg.max_connections.filter(|&cap| live >= cap) {
            // Every socket beyond this would eat into the descriptors kept for plain HTTP.
            self.stats.refused_at_capacity += 1;
            let limit = u32::try_from(cap).unwrap_or(u32::MAX);
            return Err(Refused::Hub(ConnectError::TooManyConnections { limit }));
        }
        // Named in the refused-rooms line; kept only when the token names rooms.
        let who = (!rooms.is_empty()).then(|| (principal.tenant.clone(), principal.user.clone()));
        let id = self.hub.connect(now, principal).map_err(Refused::Hub)?;
        self.live.fetch_add(1, Ordering::Relaxed);
        let alive = Alive { _tx: alive, live: self.live.clone() };
        let outbox = Arc::new(Outbox::default());
        self.peers.insert(id, Peer { outbox: outbox.clone() });
        let mut refused = RoomRefusals::default();
        let asked = rooms.len();
        for room in rooms {
            if let Err(e) = self.hub.join(now, id, room.clone()) {
                refused.add(room, &e);
            }
        }
        // One line per connect, however many rooms were refused (a token may name 128).
        let who = match &who {
            Some((tenant, user)) => {
                format!(
                    "{id} ({}/{})",
                    tenant.as_str().escape_debug(),
                    user.as_str().escape_debug()
                )
            }
            None => id.to_string(),
        };
        if let Some(line) = refused.summary(&who, asked) {
            eprintln!("{line}");
            self.stats.rooms_refused += refused.count;
            self.stats.connects_with_refused_rooms += 1;
        }
        let parts = AcceptedParts {
            outbox: Receiver::new(outbox),
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
        // A task takes at most `close_timeout` to send its close frame, and lingers at most as long
        // again for the reply.
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
                        peer.outbox.close(reason);
                    }
                }
                Action::Inbound(msg) => {
                    // The application is behind (or gone): drop rather than stall every user.
                    let dropped = self.inbound.try_send(msg).is_err();
                    self.stats.inbound_dropped += u64::from(dropped);
                }
                Action::Audit(event) => {
                    *self.stats.audits.entry(event.kind.as_str()).or_default() += 1;
                    if self.handle.cfg.log_audits {
                        eprintln!(
                            "switchboard audit: {:?} conn={:?} tenant={:?} user={:?} labels={:?}",
                            event.kind, event.conn, event.tenant, event.user, event.labels
                        );
                    }
                }
                // The same numbers accumulate in `hub.stats()`, which /metrics reads.
                Action::Metric(_) => {}
                Action::Bus(op) => self.send_bus(now, *op),
                Action::RefreshRequested(request) => {
                    let verdict = match &self.handle.cfg.refresh {
                        Some(verifier) => verifier.verify(&request),
                        None => Err("refresh is not supported by this server".to_owned()),
                    };
                    let verdict = verdict.as_ref().map(|at| *at).map_err(String::as_str);
                    let _ = self.hub.answer_refresh(now, request.conn, verdict);
                }
                Action::Published { op, outcome } => self.published(op, *outcome),
                _ => {}
            }
        }
    }

    /// Hands an operation to the bus driver without waiting. One that does not fit is failed at
    /// once (`Overloaded`), as if the hub's own in-flight bound had been reached.
    fn send_bus(&mut self, now: Instant, op: BusOp) {
        let Some(bus) = &self.bus else { return };
        let id = op.op();
        if bus.ops.try_send(op).is_err() {
            BusMetrics::bump(&bus.metrics.ops_refused);
            if let Some(id) = id {
                self.hub.bus_reply(now, id, Err(BusFailure::Overloaded));
            }
        }
    }

    /// Answers a clustered publish.
    fn published(&mut self, op: OpId, outcome: PublishOutcome) {
        let Some(bus) = &mut self.bus else { return };
        let Some((mut published, reply)) = bus.publishes.remove(&op) else { return };
        let result = match outcome {
            PublishOutcome::Appended { stream, pos } => {
                published.position = Some((stream.name(), pos));
                Ok(Receipt { published, duplicate: false })
            }
            PublishOutcome::Duplicate { stream, pos } => {
                published.position = Some((stream.name(), pos));
                Ok(Receipt { published, duplicate: true })
            }
            PublishOutcome::Failed { failure, .. } => Err(PublishFailed::Bus(failure)),
            _ => Err(PublishFailed::Bus(BusFailure::Refused)),
        };
        let _ = reply.send(result);
    }

    /// Writes a frame to a connection's socket, or queues it (or a ping) for the connection's
    /// task, without waiting.
    fn push(&mut self, now: Instant, conn: ConnId, out: Out) {
        let Some(peer) = self.peers.get(&conn) else { return };
        match peer.outbox.push(out, self.handle.cfg.outbox_frames, self.waking.direct) {
            Ok(false) => {}
            Ok(true) => self.waking.add(conn, &peer.outbox),
            Err(Push::Full(Out::Ping)) => {} // it is behind; pings can wait
            Err(Push::Full(_)) => {
                // Its `Close` action follows in this drain.
                if self.hub.close(now, conn, CloseReason::SlowConsumer).is_ok() {
                    self.stats.outbox_overflows += 1;
                }
            }
            // The task ended; it reports the connection gone.
            Err(Push::Ended) => {}
        }
    }

    /// Tells the hub what the connections named in [`Handle`]'s `moved` list flushed since the
    /// last turn: one `written` per connection that moved, not one command per flush.
    fn settle_written(&mut self, now: Instant) {
        self.handle.moved.take(&mut self.moved);
        self.moved.append(&mut self.waking.written);
        if self.moved.is_empty() {
            return;
        }
        for &conn in &self.moved {
            // Gone (settled then) or closed by the hub since: its budget no longer matters.
            if let Some(peer) = self.peers.get(&conn) {
                settle(&mut self.hub, &mut self.stats, now, conn, &peer.outbox);
            }
        }
        self.drain(now);
    }
}

/// Tells the hub what `conn` flushed since it was last told.
fn settle(hub: &mut Hub, stats: &mut DriverStats, now: Instant, conn: ConnId, outbox: &Outbox) {
    let (bytes, flushes) = outbox.take_written();
    stats.flushes += flushes as u64;
    if bytes > 0 {
        let _ = hub.written(now, conn, bytes);
    }
}

/// The next event of the bus, or never (single node, or the driver is gone).
async fn next_event(events: &mut Option<mpsc::Receiver<BusEvent>>) -> Option<BusEvent> {
    match events {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// The rooms of one connect's `rooms` claim that the hub refused, gathered for one log line.
#[derive(Debug, Default)]
pub(super) struct RoomRefusals {
    /// How many were refused.
    pub(super) count: u64,
    /// The first [`RoomRefusals::NAMED`] of them.
    first: Vec<RoomId>,
    /// Each distinct reason (the error's text) with how many rooms it refused, in the order
    /// first seen.
    reasons: Vec<(String, u64)>,
}

impl RoomRefusals {
    /// How many refused rooms the line names.
    pub(super) const NAMED: usize = 3;

    pub(super) fn add(&mut self, room: RoomId, err: &RoomError) {
        self.count += 1;
        if self.first.len() < Self::NAMED {
            self.first.push(room);
        }
        let why = err.to_string();
        match self.reasons.iter_mut().find(|(r, _)| *r == why) {
            Some((_, n)) => *n += 1,
            None => self.reasons.push((why, 1)),
        }
    }

    /// The log line for a connection (`who`) whose token named `asked` rooms, or `None` if none
    /// was refused: how many were refused, why, and the first few names.
    pub(super) fn summary(&self, who: &str, asked: usize) -> Option<String> {
        if self.count == 0 {
            return None;
        }
        let why: Vec<String> = self.reasons.iter().map(|(r, n)| format!("{n} x {r}")).collect();
        // Quoted and escaped: a name from a token never breaks the line.
        let names: Vec<String> = self.first.iter().map(|r| format!("{:?}", r.as_str())).collect();
        let more = if self.count > names.len() as u64 { ", ..." } else { "" };
        Some(format!(
            "switchboard: {who} was refused {} of the {asked} rooms its token names ({}); first: \
             {}{more}",
            self.count,
            why.join("; "),
            names.join(", "),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::Out;
    use switchboard::DisconnectReason;

    /// A connection whose socket ends right after a flush sends `Gone` while it is still named
    /// for the hub task's settling: the hub hears of those bytes before it forgets it, so its
    /// `bytes_written` matches what was written.
    #[tokio::test]
    async fn a_connection_gone_right_after_a_flush_has_its_last_bytes_settled() {
        let hub = Hub::new(switchboard::Config::default()).expect("valid");
        let (tx, rx) = mpsc::channel(8);
        let (inbound, _inbound) = mpsc::channel(8);
        let cfg = Arc::new(super::super::DriverConfig::default());
        let handle = Handle {
            tx,
            moved: Arc::default(),
            cfg,
            listener: Arc::default(),
            max_message: 1 << 16,
        };
        let mut driver = Driver::new(hub, rx, handle.clone(), inbound, None);
        let (reply, answer) = oneshot::channel();
        let principal = switchboard::Principal::new("acme", "alice");
        driver.handle(Command::Connect { principal, rooms: Vec::new(), reply });
        driver.drain(Instant::now());
        let accepted = answer.await.expect("answered").expect("admitted");
        let outbox = &accepted.parts.as_ref().expect("unused").outbox;
        // The connection's task writes its `connected` frame and names itself for settling...
        let Some(Out::Text(frame)) = outbox.pop() else { panic!("the connected frame") };
        assert!(outbox.add_written(frame.len()), "the first count names the connection");
        handle.moved.push(accepted.id());
        // ...then its socket ends, before the hub task's turn settles what was named.
        let gone = Command::Gone { conn: accepted.id(), reason: DisconnectReason::Clean };
        driver.handle(gone);
        driver.settle_written(Instant::now());
        let stats = driver.hub.stats();
        assert_eq!(stats.bytes_written, frame.len() as u64, "{stats:?}");
        assert_eq!(stats.bytes_written, stats.bytes_delivered);
    }

    #[test]
    fn many_refused_rooms_make_one_line_with_the_count_the_reason_and_the_first_names() {
        let mut refused = RoomRefusals::default();
        assert_eq!(refused.summary("0v1 (acme/alice)", 10), None, "nothing refused, no line");
        for i in 0..872 {
            refused.add(RoomId::from(format!("room-{i}")), &RoomError::TooManyRooms { limit: 128 });
        }
        refused.add(RoomId::from("odd\nname"), &RoomError::TooManyRooms { limit: 7 });
        let line = refused.summary("0v1 (acme/alice)", 1000).unwrap();
        assert_eq!(line.lines().count(), 1, "{line}");
        assert!(line.contains("0v1 (acme/alice) was refused 873 of the 1000 rooms"), "{line}");
        assert!(line.contains("872 x room limit per connection reached (128)"), "{line}");
        assert!(line.contains("1 x room limit per connection reached (7)"), "{line}");
        assert!(line.contains(r#"first: "room-0", "room-1", "room-2", ..."#), "{line}");
        assert!(!line.contains("room-3"), "{line}");
        assert!(line.len() < 400, "{} bytes", line.len());
    }
}
