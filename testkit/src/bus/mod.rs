//! The model bus: an in-memory, deterministic engine that does what the module doc of
//! `switchboard`'s cluster vocabulary says Redis does for a cluster (DESIGN §11), plus the faults
//! a real deployment sees, each one a method the simulation calls.
//!
//! Per stream ([`StreamKey`]) the engine keeps an epoch (drawn from the seeded [`Rng`] at the
//! first append, nonzero and never drawn twice), a seq counter, a log of `(seq, payload,
//! appended_at)` trimmed to the `keep` of each append, an expiry (a stream without an append for
//! the `ttl` of its last append is gone, epoch included) and the idempotency keys of its appends,
//! each remembered for the `ttl` it came with.
//!
//! Nodes are numbered `0..`; each has one FIFO of [`BusEvent`]s, live messages and replies in the
//! order the engine produced them (an append publishes before it replies). [`ModelBus::submit`]
//! performs an operation at once; [`ModelBus::poll`] hands a node its next event when it is due.
//!
//! Faults:
//! - [`ModelBus::set_message_loss`]: each live message to a node is lost with a probability;
//! - [`ModelBus::set_latency`] and [`ModelBus::hold`]: deliveries to a node are late (FIFO order is
//!   kept: an event is never due before the one ahead of it);
//! - [`ModelBus::set_op_faults`]: operations fail (`Retryable`, not performed) or time out (no
//!   reply ever; performed or not, evenly at random, as a client that lost the reply cannot tell);
//! - [`ModelBus::go_down`] / [`ModelBus::come_up`] (the whole bus) and [`ModelBus::disconnect`] /
//!   [`ModelBus::reconnect`] (one node's link): while a node is unreachable every operation it
//!   submits is answered `Err(Retryable)` unperformed, nothing is published to it (its live
//!   messages are lost, as a reconnecting pub/sub client loses them) and the live messages queued
//!   for it are dropped; its subscriptions are kept, as the driver restores them on reconnect;
//! - [`ModelBus::restart_empty`]: every stream, log, epoch and idempotency key is gone (the
//!   subscriptions survive, restored by the drivers); wrap it in `go_down`/`come_up` for a restart
//!   the nodes notice;
//! - [`ModelBus::lose_tail`] / [`ModelBus::lose_tail_everywhere`]: a failover to an asynchronous
//!   replica that missed the last `n` writes of a stream: its appends, and before them the
//!   rotation that started its epoch, if one did (the stream is then back in the epoch it had
//!   before, with that epoch's log);
//! - [`ModelBus::crash_node`]: a node died; its subscriptions and queued events are gone (its
//!   leases and presence sets stay until they expire, as a dead node's do);
//! - [`ModelBus::set_signal_loss`]: each signal to a node is lost with a probability (a driver
//!   drops what the hub's queue cannot take).
//!
//! Leases: per user, a set of holders with an expiry; `Lease` drops expired ones, then grants,
//! evicts the oldest (`evict_oldest`) or refuses; `Renew` extends (re-adding lost ones while the
//! set has room, refusing the rest);
//! `Release` drops one. `Signal` goes to the stream's subscribers unlogged.
//!
//! Presence ([`presence`]): per scope and node a set of users that expires `ttl` after its last
//! write; `PresenceUpdate` writes a set and then publishes its signal, `PresenceRefresh` extends
//! each named set that still exists and publishes its signal (the others are answered
//! missing), `PresenceRead` returns the live sets with their time left.
//!
//! Everything is ordered (`BTreeMap`s, node indices) and the only randomness is the seeded
//! generator, so a run is reproducible from its seed. The engine's own state is bounded by the
//! `keep` and `ttl` of the appends and by [`ModelBus::set_queue_limit`]; the ground truth
//! ([`ModelBus::history`]) holds one record per append ever made.

mod presence;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchboard::{
    BusEntry, BusFailure, BusOp, BusReply, LeaseHolder, NodeId, OpId, StreamKey, StreamPos, UserId,
};

use crate::rng::Rng;

/// What a node receives from the bus.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BusEvent {
    /// A live message on a stream the node is subscribed to.
    Message {
        /// The stream.
        stream: StreamKey,
        /// Its position.
        pos: StreamPos,
        /// The payload, as appended.
        payload: Arc<str>,
    },
    /// An unsequenced signal on a stream the node is subscribed to.
    Signal {
        /// The stream.
        stream: StreamKey,
        /// The signal, as published.
        payload: Arc<str>,
    },
    /// The reply to an operation the node submitted.
    Reply {
        /// The operation.
        op: OpId,
        /// Its outcome.
        reply: Result<BusReply, BusFailure>,
    },
}

/// Why an appended entry left the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EndKind {
    /// Trimmed by a later append's `keep`.
    Trimmed,
    /// The stream expired (no append for its `ttl`).
    Expired,
    /// The stream was given a new epoch.
    Rotated,
    /// A failover lost it ([`ModelBus::lose_tail`]).
    TailLost,
    /// The engine restarted empty.
    Restarted,
}

/// One append ever made: the simulation's ground truth.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Appended {
    /// The position it was given.
    pub pos: StreamPos,
    /// The payload.
    pub payload: Arc<str>,
    /// When.
    pub at: Instant,
    /// The node that appended it.
    pub by: usize,
    /// When and why it left the log (`None`: still there).
    pub ended: Option<(Instant, EndKind)>,
}

/// One entry of a stream's log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    /// Its seq in the stream's epoch.
    pub seq: u64,
    /// The payload.
    pub payload: Arc<str>,
    /// When it was appended.
    pub appended_at: Instant,
}

/// Counters of what the engine did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BusStats {
    /// Operations submitted (unsubscribes included).
    pub ops: u64,
    /// Entries appended.
    pub appended: u64,
    /// Appends answered `Duplicate`.
    pub duplicates: u64,
    /// Live messages queued for a node.
    pub messages_sent: u64,
    /// Live messages lost (message loss, an unreachable node, a full queue, a crash).
    pub messages_lost: u64,
    /// Operations answered `Err(Retryable)` by [`ModelBus::set_op_faults`].
    pub ops_failed: u64,
    /// Operations answered `Err(Retryable)` because the node could not reach the bus.
    pub ops_unreachable: u64,
    /// Operations never answered.
    pub ops_timed_out: u64,
    /// Streams that expired.
    pub streams_expired: u64,
    /// Streams rotated to a new epoch.
    pub rotations: u64,
    /// Rotations a failover lost: the stream went back to the epoch before
    /// ([`ModelBus::lose_tail`]).
    pub rotations_lost: u64,
    /// Signals lost ([`ModelBus::set_signal_loss`]).
    pub signals_lost: u64,
    /// Signals queued for a node (one per subscriber per signal).
    pub signals_sent: u64,
    /// Their bytes (payloads, per subscriber).
    pub signal_bytes: u64,
    /// Presence sets written (`PresenceUpdate`) or refreshed (each scope of a
    /// `PresenceRefresh`): what a Redis driver runs one script call for.
    pub presence_writes: u64,
    /// Presence reads.
    pub presence_reads: u64,
    /// Leases renewed (one per lease in a `Renew`).
    pub leases_renewed: u64,
    /// The most leases one `Renew` carried: how large a renewal burst reached the engine.
    pub largest_renewal: u64,
}

struct Stream {
    epoch: u64,
    seq: u64,
    /// The entries, with the index of each one's record in the history.
    log: VecDeque<(LogEntry, usize)>,
    expires_at: Instant,
    keys: BTreeMap<Arc<str>, (StreamPos, Instant)>,
    key_expiry: BTreeSet<(Instant, Arc<str>)>,
    /// The epoch a rotation ended to start this one: what a failover that loses the rotation
    /// brings back ([`ModelBus::lose_tail`]).
    rotated_from: Option<Box<EndedEpoch>>,
}

/// An epoch as a rotation left it.
struct EndedEpoch {
    epoch: u64,
    seq: u64,
    log: VecDeque<(LogEntry, usize)>,
}

impl Stream {
    fn top(&self) -> StreamPos {
        StreamPos { epoch: self.epoch, seq: self.seq }
    }

    /// Forgets the idempotency keys of the appends after `pos` in its epoch (a failover lost them).
    fn forget_keys_after(&mut self, pos: StreamPos) {
        let gone: Vec<Arc<str>> = self
            .keys
            .iter()
            .filter(|(_, (at, _))| at.epoch == pos.epoch && at.seq > pos.seq)
            .map(|(k, _)| k.clone())
            .collect();
        for k in gone {
            if let Some((_, exp)) = self.keys.remove(&k) {
                self.key_expiry.remove(&(exp, k));
            }
        }
    }
}

struct Node {
    subs: BTreeSet<StreamKey>,
    queue: VecDeque<(Instant, BusEvent)>,
    loss_ppm: u32,
    latency: (Duration, Duration),
    held_until: Option<Instant>,
    linked: bool,
}

/// The in-memory engine. See the [module docs](self).
pub struct ModelBus {
    rng: Rng,
    now: Option<Instant>,
    streams: BTreeMap<StreamKey, Stream>,
    expiry: BinaryHeap<Reverse<(Instant, StreamKey)>>,
    epochs_used: BTreeSet<u64>,
    nodes: Vec<Node>,
    up: bool,
    default_loss_ppm: u32,
    default_latency: (Duration, Duration),
    fail_ppm: u32,
    timeout_ppm: u32,
    queue_limit: usize,
    history: BTreeMap<StreamKey, Vec<Appended>>,
    stats: BusStats,
    /// Per user (by its stream key): the leases, holder → (taken at, expires at).
    leases: BTreeMap<StreamKey, BTreeMap<LeaseHolder, (Instant, Instant)>>,
    presence: presence::PresenceStore,
    signal_loss_ppm: u32,
}

const MILLION: u64 = 1_000_000;

impl ModelBus {
    /// An empty, lossless, instant engine whose randomness comes from `seed`.
    #[must_use]
    pub fn new(seed: u64) -> Self {
        Self {
            rng: Rng::seeded(seed),
            now: None,
            streams: BTreeMap::new(),
            expiry: BinaryHeap::new(),
            epochs_used: BTreeSet::new(),
            nodes: Vec::new(),
            up: true,
            default_loss_ppm: 0,
            default_latency: (Duration::ZERO, Duration::ZERO),
            fail_ppm: 0,
            timeout_ppm: 0,
            queue_limit: 100_000,
            history: BTreeMap::new(),
            stats: BusStats::default(),
            leases: BTreeMap::new(),
            presence: presence::PresenceStore::default(),
            signal_loss_ppm: 0,
        }
    }

    // ---- the engine ----

    /// Performs `op` for `node` at `now` (the clock only moves forward: an earlier `now` counts as
    /// the latest one seen). The reply, if the operation has one and it is not lost, is queued on
    /// the node's FIFO after the live messages the operation published.
    pub fn submit(&mut self, now: Instant, node: usize, op: BusOp) {
        let now = self.advance(now);
        self.node_mut(node);
        self.stats.ops += 1;
        if let BusOp::Unsubscribe { stream } = &op {
            // The driver's own bookkeeping: it holds even when the engine is unreachable (the
            // driver does not restore a channel it was told to leave).
            self.nodes[node].subs.remove(stream);
            return;
        }
        match &op {
            BusOp::Release { user, holder } if self.reachable(node) => {
                if let Some(set) = self.leases.get_mut(user) {
                    set.remove(holder);
                }
                return;
            }
            BusOp::Signal { stream, payload } if self.reachable(node) => {
                self.signal(now, stream, payload);
                return;
            }
            BusOp::Release { .. } | BusOp::Signal { .. } => return,
            _ => {}
        }
        let Some(id) = op.op() else { return };
        if !self.reachable(node) {
            self.stats.ops_unreachable += 1;
            self.reply(now, node, id, Err(BusFailure::Retryable));
            return;
        }
        if self.fail_ppm > 0 && self.rng.chance_per_million(u64::from(self.fail_ppm)) {
            self.stats.ops_failed += 1;
            self.reply(now, node, id, Err(BusFailure::Retryable));
            return;
        }
        if self.timeout_ppm > 0 && self.rng.chance_per_million(u64::from(self.timeout_ppm)) {
            self.stats.ops_timed_out += 1;
            if self.rng.chance(50) {
                let _ = self.perform(now, node, op);
            }
            return;
        }
        let reply = self.perform(now, node, op);
        self.reply(now, node, id, reply);
    }

    /// The next event for `node` if one is due at `now`.
    pub fn poll(&mut self, now: Instant, node: usize) -> Option<BusEvent> {
        let now = self.advance(now);
        let n = self.nodes.get_mut(node)?;
        if n.held_until.is_some_and(|t| t > now) {
            return None;
        }
        match n.queue.front() {
            Some((due, _)) if *due <= now => n.queue.pop_front().map(|(_, e)| e),
            _ => None,
        }
    }

    /// When `node`'s next queued event is due (`None`: nothing queued).
    #[must_use]
    pub fn next_due(&self, node: usize) -> Option<Instant> {
        let n = self.nodes.get(node)?;
        let (due, _) = n.queue.front()?;
        Some(n.held_until.map_or(*due, |h| h.max(*due)))
    }

    /// Moves the engine's clock to `now` (if later) and expires what is due; returns the clock.
    pub fn advance(&mut self, now: Instant) -> Instant {
        let now = self.now.map_or(now, |t| t.max(now));
        self.now = Some(now);
        while let Some(Reverse((at, _))) = self.expiry.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((_, key))) = self.expiry.pop() else { break };
            if self.streams.get(&key).is_some_and(|s| s.expires_at <= now) {
                self.stats.streams_expired += 1;
                self.remove_stream(&key, now, EndKind::Expired);
            }
        }
        now
    }

    fn perform(&mut self, now: Instant, node: usize, op: BusOp) -> Result<BusReply, BusFailure> {
        Ok(match op {
            BusOp::Subscribe { stream, .. } => {
                self.nodes[node].subs.insert(stream.clone());
                BusReply::Subscribed { top: self.top(&stream) }
            }
            BusOp::Append { stream, payload, idempotency_key, keep, ttl, .. } => {
                self.append(now, node, stream, payload, idempotency_key, keep, ttl)
            }
            BusOp::Fetch { stream, after, limit, .. } => {
                let (top, entries) = match self.streams.get(&stream) {
                    None => (StreamPos { epoch: 0, seq: 0 }, Vec::new()),
                    Some(s) => {
                        let entries = s
                            .log
                            .iter()
                            .filter(|(e, _)| e.seq > after)
                            .take(limit as usize)
                            .map(|(e, _)| BusEntry { seq: e.seq, payload: e.payload.clone() })
                            .collect();
                        (s.top(), entries)
                    }
                };
                BusReply::Fetched { top, entries }
            }
            BusOp::Tops { streams, .. } => {
                BusReply::Tops(streams.iter().map(|s| self.top(s)).collect())
            }
            BusOp::Rotate { stream, epoch, .. } => {
                let rotate = self.streams.get(&stream).is_some_and(|s| s.epoch == epoch);
                if rotate {
                    let fresh = self.fresh_epoch();
                    let s = self.streams.get_mut(&stream).expect("checked above");
                    let log = std::mem::take(&mut s.log);
                    let ended: Vec<usize> = log.iter().map(|(_, i)| *i).collect();
                    s.rotated_from = Some(Box::new(EndedEpoch { epoch: s.epoch, seq: s.seq, log }));
                    s.epoch = fresh;
                    s.seq = 0;
                    self.end(&stream, ended, now, EndKind::Rotated);
                    self.stats.rotations += 1;
                }
                BusReply::Rotated { top: self.top(&stream) }
            }
            BusOp::Lease { user, holder, limit, ttl, evict_oldest, .. } => {
                let set = self.leases.entry(user).or_default();
                set.retain(|_, (_, expires)| *expires > now);
                if set.contains_key(&holder) || set.len() < limit as usize {
                    set.insert(holder, (now, now + ttl));
                    BusReply::Leased { granted: true, evicted: None }
                } else if evict_oldest {
                    let oldest = set
                        .iter()
                        .min_by_key(|(h, (taken, _))| (*taken, (*h).clone()))
                        .map(|(h, _)| h.clone())
                        .expect("the set is full, so not empty");
                    set.remove(&oldest);
                    set.insert(holder, (now, now + ttl));
                    BusReply::Leased { granted: true, evicted: Some(oldest) }
                } else {
                    BusReply::Leased { granted: false, evicted: None }
                }
            }
            BusOp::PresenceUpdate { scope, node, replace, joins, leaves, ttl, signal, .. } => {
                self.stats.presence_writes += 1;
                self.presence.update(now, &scope, &node, replace, &joins, &leaves, ttl);
                self.signal(now, &scope, &signal);
                BusReply::PresenceWritten
            }
            BusOp::PresenceRefresh { node, ttl, scopes, .. } => {
                let mut missing = Vec::new();
                for (scope, signal) in scopes {
                    self.stats.presence_writes += 1;
                    if self.presence.refresh(now, &scope, &node, ttl) {
                        self.signal(now, &scope, &signal);
                    } else {
                        missing.push(scope);
                    }
                }
                BusReply::PresenceRefreshed { missing }
            }
            BusOp::PresenceRead { scope, limit, .. } => {
                self.stats.presence_reads += 1;
                let (held, truncated) = self.presence.read(now, &scope, limit);
                BusReply::Presence { held, truncated }
            }
            BusOp::Renew { leases, ttl, .. } => {
                let n = leases.len() as u64;
                self.stats.leases_renewed += n;
                self.stats.largest_renewal = self.stats.largest_renewal.max(n);
                let mut refused = Vec::new();
                for (user, holder, limit) in leases {
                    let set = self.leases.entry(user).or_default();
                    set.retain(|_, (_, expires)| *expires > now);
                    match set.get(&holder) {
                        Some(&(taken, _)) => {
                            set.insert(holder, (taken, now + ttl));
                        }
                        None if set.len() < limit as usize => {
                            set.insert(holder, (now, now + ttl));
                        }
                        None => refused.push(holder),
                    }
                }
                BusReply::Renewed { refused }
            }
            // `Unsubscribe`, `Release` and `Signal` are handled in `submit`; an operation this
            // model does not know is refused, as an engine refuses a script it does not have.
            _ => return Err(BusFailure::Refused),
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn append(
        &mut self,
        now: Instant,
        node: usize,
        stream: StreamKey,
        payload: Arc<str>,
        key: Option<Arc<str>>,
        keep: u32,
        ttl: Duration,
    ) -> BusReply {
        if let (Some(k), Some(s)) = (&key, self.streams.get_mut(&stream)) {
            while let Some((at, old)) = s.key_expiry.first().cloned() {
                if at > now {
                    break;
                }
                s.key_expiry.pop_first();
                if s.keys.get(&old).is_some_and(|(_, exp)| *exp <= now) {
                    s.keys.remove(&old);
                }
            }
            if let Some((pos, _)) = s.keys.get(k) {
                self.stats.duplicates += 1;
                return BusReply::Duplicate { pos: *pos };
            }
        }
        if !self.streams.contains_key(&stream) {
            let epoch = self.fresh_epoch();
            self.streams.insert(
                stream.clone(),
                Stream {
                    epoch,
                    seq: 0,
                    log: VecDeque::new(),
                    expires_at: now,
                    keys: BTreeMap::new(),
                    key_expiry: BTreeSet::new(),
                    rotated_from: None,
                },
            );
        }
        let history = self.history.entry(stream.clone()).or_default();
        let s = self.streams.get_mut(&stream).expect("inserted above");
        s.seq += 1;
        let pos = s.top();
        history.push(Appended { pos, payload: payload.clone(), at: now, by: node, ended: None });
        let index = history.len() - 1;
        s.log.push_back((
            LogEntry { seq: pos.seq, payload: payload.clone(), appended_at: now },
            index,
        ));
        let mut trimmed = Vec::new();
        while s.log.len() > keep as usize {
            if let Some((_, i)) = s.log.pop_front() {
                trimmed.push(i);
            }
        }
        let expires_at = now + ttl;
        s.expires_at = expires_at;
        if let Some(k) = key {
            s.keys.insert(k.clone(), (pos, expires_at));
            s.key_expiry.insert((expires_at, k));
        }
        self.expiry.push(Reverse((expires_at, stream.clone())));
        self.end(&stream, trimmed, now, EndKind::Trimmed);
        self.stats.appended += 1;
        self.publish(now, &stream, pos, &payload);
        BusReply::Appended { pos }
    }

    fn publish(&mut self, now: Instant, stream: &StreamKey, pos: StreamPos, payload: &Arc<str>) {
        for i in 0..self.nodes.len() {
            if !self.nodes[i].subs.contains(stream) {
                continue;
            }
            let loss = u64::from(self.nodes[i].loss_ppm);
            let lost = !self.reachable(i)
                || (loss > 0 && self.rng.chance_per_million(loss))
                || self.nodes[i].queue.len() >= self.queue_limit;
            if lost {
                self.stats.messages_lost += 1;
                continue;
            }
            self.stats.messages_sent += 1;
            let event = BusEvent::Message { stream: stream.clone(), pos, payload: payload.clone() };
            self.enqueue(now, i, event);
        }
    }

    fn signal(&mut self, now: Instant, stream: &StreamKey, payload: &Arc<str>) {
        for i in 0..self.nodes.len() {
            if self.nodes[i].subs.contains(stream) && self.reachable(i) {
                let loss = u64::from(self.signal_loss_ppm);
                if loss > 0 && self.rng.chance_per_million(loss) {
                    self.stats.signals_lost += 1;
                    continue;
                }
                self.stats.signals_sent += 1;
                self.stats.signal_bytes += payload.len() as u64;
                let event = BusEvent::Signal { stream: stream.clone(), payload: payload.clone() };
                self.enqueue(now, i, event);
            }
        }
    }

    /// The live (unexpired) leases of a user at `now`: the cluster-wide quota's ground truth.
    #[must_use]
    pub fn leases(&self, user: &StreamKey, now: Instant) -> usize {
        self.leases.get(user).map_or(0, |set| set.values().filter(|(_, exp)| *exp > now).count())
    }

    fn reply(&mut self, now: Instant, node: usize, op: OpId, reply: Result<BusReply, BusFailure>) {
        self.enqueue(now, node, BusEvent::Reply { op, reply });
    }

    fn enqueue(&mut self, now: Instant, node: usize, event: BusEvent) {
        let (lo, hi) = self.nodes[node].latency;
        let extra = if hi > lo {
            let span = u64::try_from((hi - lo).as_nanos()).unwrap_or(u64::MAX);
            lo + Duration::from_nanos(self.rng.below(span.saturating_add(1).max(1)))
        } else {
            lo
        };
        let n = &mut self.nodes[node];
        let mut due = now + extra;
        if let Some((last, _)) = n.queue.back() {
            due = due.max(*last);
        }
        n.queue.push_back((due, event));
    }

    /// Below 2^53, as the Redis engine's (microsecond) epochs and the hub's own are, so that a
    /// JavaScript client reads every epoch exactly.
    fn fresh_epoch(&mut self) -> u64 {
        loop {
            let e = self.rng.next() & ((1 << 53) - 1);
            if e != 0 && self.epochs_used.insert(e) {
                return e;
            }
        }
    }

    fn end(&mut self, stream: &StreamKey, indices: Vec<usize>, now: Instant, how: EndKind) {
        if let Some(h) = self.history.get_mut(stream) {
            for i in indices {
                if let Some(rec) = h.get_mut(i) {
                    rec.ended = Some((now, how));
                }
            }
        }
    }

    fn remove_stream(&mut self, key: &StreamKey, now: Instant, how: EndKind) {
        if let Some(s) = self.streams.remove(key) {
            let ended = s.log.into_iter().map(|(_, i)| i).collect();
            self.end(key, ended, now, how);
        }
    }

    fn node_mut(&mut self, node: usize) -> &mut Node {
        while self.nodes.len() <= node {
            self.nodes.push(Node {
                subs: BTreeSet::new(),
                queue: VecDeque::new(),
                loss_ppm: self.default_loss_ppm,
                latency: self.default_latency,
                held_until: None,
                linked: true,
            });
        }
        &mut self.nodes[node]
    }

    // ---- faults ----

    /// Each live message to `node` (`None`: to every node, present and future) is lost with this
    /// probability, in parts per million (capped at a million).
    pub fn set_message_loss(&mut self, node: Option<usize>, ppm: u32) {
        let ppm = ppm.min(MILLION as u32);
        match node {
            Some(n) => self.node_mut(n).loss_ppm = ppm,
            None => {
                self.default_loss_ppm = ppm;
                self.nodes.iter_mut().for_each(|n| n.loss_ppm = ppm);
            }
        }
    }

    /// Each event queued for `node` (`None`: every node, present and future) from now on is due
    /// a uniformly random time in `min..=max` after it was produced, but never before the event
    /// ahead of it. `max < min` counts as `min`.
    pub fn set_latency(&mut self, node: Option<usize>, min: Duration, max: Duration) {
        let l = (min, max.max(min));
        match node {
            Some(n) => self.node_mut(n).latency = l,
            None => {
                self.default_latency = l;
                self.nodes.iter_mut().for_each(|n| n.latency = l);
            }
        }
    }

    /// Nothing is delivered to `node` (`None`: to any node) before `until`; its FIFO keeps
    /// filling meanwhile.
    pub fn hold(&mut self, node: Option<usize>, until: Instant) {
        match node {
            Some(n) => self.node_mut(n).held_until = Some(until),
            None => self.nodes.iter_mut().for_each(|n| n.held_until = Some(until)),
        }
    }

    /// Each operation that expects a reply fails (`Err(Retryable)`, not performed) with
    /// probability `fail_ppm`, else times out (performed or not, evenly; never answered) with
    /// probability `timeout_ppm`, both in parts per million.
    pub fn set_op_faults(&mut self, fail_ppm: u32, timeout_ppm: u32) {
        self.fail_ppm = fail_ppm.min(MILLION as u32);
        self.timeout_ppm = timeout_ppm.min(MILLION as u32);
    }

    /// Each signal to each node is lost with this probability, in parts per million (capped at a
    /// million): a driver drops a signal the hub's queue cannot take.
    pub fn set_signal_loss(&mut self, ppm: u32) {
        self.signal_loss_ppm = ppm.min(MILLION as u32);
    }

    /// Live messages queued for one node beyond this many are lost (a pub/sub client's output
    /// buffer limit). Default 100 000.
    pub fn set_queue_limit(&mut self, limit: usize) {
        self.queue_limit = limit;
    }

    /// The whole bus becomes unreachable (see the [module docs](self)).
    pub fn go_down(&mut self) {
        self.up = false;
        for i in 0..self.nodes.len() {
            self.drop_queued_messages(i);
        }
    }

    /// The bus is reachable again (nodes cut by [`ModelBus::disconnect`] stay cut).
    pub fn come_up(&mut self) {
        self.up = true;
    }

    /// Whether the bus as a whole is up.
    #[must_use]
    pub fn is_up(&self) -> bool {
        self.up
    }

    /// One node's link to the bus breaks (see the [module docs](self)).
    pub fn disconnect(&mut self, node: usize) {
        self.node_mut(node).linked = false;
        self.drop_queued_messages(node);
    }

    /// One node's link works again.
    pub fn reconnect(&mut self, node: usize) {
        self.node_mut(node).linked = true;
    }

    /// Whether `node` can reach the bus (the bus is up and the node's link is not cut).
    #[must_use]
    pub fn reachable(&self, node: usize) -> bool {
        self.up && self.nodes.get(node).is_none_or(|n| n.linked)
    }

    fn drop_queued_messages(&mut self, node: usize) {
        let q = &mut self.nodes[node].queue;
        let before = q.len();
        q.retain(|(_, e)| matches!(e, BusEvent::Reply { .. }));
        self.stats.messages_lost += (before - q.len()) as u64;
    }

    /// A node died: its subscriptions, its queued events and any hold on it are gone (its link,
    /// latency and loss settings stay, as they describe the network).
    pub fn crash_node(&mut self, node: usize) {
        let n = self.node_mut(node);
        let lost = n.queue.iter().filter(|(_, e)| matches!(e, BusEvent::Message { .. })).count();
        n.subs.clear();
        n.queue.clear();
        n.held_until = None;
        self.stats.messages_lost += lost as u64;
    }

    /// The engine restarts empty: every stream, log, epoch and idempotency key is gone. The
    /// subscriptions and queued events survive.
    pub fn restart_empty(&mut self) {
        // A stream exists only after an append, which set the clock.
        if let Some(now) = self.now {
            let keys: Vec<StreamKey> = self.streams.keys().cloned().collect();
            for k in keys {
                self.remove_stream(&k, now, EndKind::Restarted);
            }
        }
        self.expiry.clear();
        // Leases and presence sets are gone too; the nodes' next renewals and refreshes put
        // theirs back.
        self.leases.clear();
        self.presence.clear();
    }

    /// A failover lost the last `n` writes of `stream`: its seq goes back by `n` in the same
    /// epoch, the entries (and idempotency keys) after it are gone. If that leaves nothing of the
    /// epoch, the appends that created the stream were lost, and it is gone entirely; or, if a
    /// rotation started the epoch, that rotation is the next write lost: the stream is back in
    /// the epoch it ended, with that epoch's log, and loses what is left of `n` from there.
    pub fn lose_tail(&mut self, stream: &StreamKey, n: u64) {
        if n == 0 {
            return;
        }
        // A stream exists only after an append, which set the clock.
        let (Some(now), Some(s)) = (self.now, self.streams.get_mut(stream)) else { return };
        if let Some(from) = s.rotated_from.take_if(|_| n > s.seq) {
            let EndedEpoch { epoch, seq, log } = *from;
            let rest = n - s.seq - 1;
            let lost = std::mem::replace(&mut s.log, log).into_iter().map(|(_, i)| i).collect();
            s.forget_keys_after(StreamPos { epoch: s.epoch, seq: 0 });
            (s.epoch, s.seq) = (epoch, seq);
            self.stats.rotations_lost += 1;
            let back: Vec<usize> = s.log.iter().map(|(_, i)| *i).collect();
            self.end(stream, lost, now, EndKind::TailLost);
            if let Some(h) = self.history.get_mut(stream) {
                for i in back {
                    if let Some(rec) = h.get_mut(i) {
                        rec.ended = None;
                    }
                }
            }
            self.lose_tail(stream, rest);
            return;
        }
        if n >= s.seq && s.rotated_from.is_none() {
            self.remove_stream(stream, now, EndKind::TailLost);
            return;
        }
        s.seq -= n;
        let keep_seq = s.seq;
        let epoch = s.epoch;
        let mut lost = Vec::new();
        while s.log.back().is_some_and(|(e, _)| e.seq > keep_seq) {
            if let Some((_, i)) = s.log.pop_back() {
                lost.push(i);
            }
        }
        s.forget_keys_after(StreamPos { epoch, seq: keep_seq });
        self.end(stream, lost, now, EndKind::TailLost);
    }

    /// [`ModelBus::lose_tail`] for every stream.
    pub fn lose_tail_everywhere(&mut self, n: u64) {
        let keys: Vec<StreamKey> = self.streams.keys().cloned().collect();
        for k in keys {
            self.lose_tail(&k, n);
        }
    }

    // ---- views ----

    /// The stream's top (`(0, 0)` for a stream with no epoch), as of the engine's clock.
    #[must_use]
    pub fn top(&self, stream: &StreamKey) -> StreamPos {
        self.streams.get(stream).map_or(StreamPos { epoch: 0, seq: 0 }, Stream::top)
    }

    /// The stream's log, oldest first.
    #[must_use]
    pub fn log(&self, stream: &StreamKey) -> Vec<LogEntry> {
        self.streams
            .get(stream)
            .map(|s| s.log.iter().map(|(e, _)| e.clone()).collect())
            .unwrap_or_default()
    }

    /// Every append ever made to the stream, in order.
    #[must_use]
    pub fn history(&self, stream: &StreamKey) -> &[Appended] {
        self.history.get(stream).map_or(&[], Vec::as_slice)
    }

    /// Every stream ever appended to, with its appends, in key order.
    pub fn histories(&self) -> impl Iterator<Item = (&StreamKey, &[Appended])> {
        self.history.iter().map(|(k, v)| (k, v.as_slice()))
    }

    /// The streams that exist now (have an epoch), in key order.
    pub fn streams(&self) -> impl Iterator<Item = &StreamKey> {
        self.streams.keys()
    }

    /// The nodes subscribed to the stream, ascending.
    #[must_use]
    pub fn subscribers(&self, stream: &StreamKey) -> Vec<usize> {
        (0..self.nodes.len()).filter(|&i| self.nodes[i].subs.contains(stream)).collect()
    }

    /// The streams `node` is subscribed to, in key order.
    pub fn subscriptions(&self, node: usize) -> impl Iterator<Item = &StreamKey> {
        self.nodes.get(node).into_iter().flat_map(|n| n.subs.iter())
    }

    /// Events queued for `node` (due or not).
    #[must_use]
    pub fn queued(&self, node: usize) -> usize {
        self.nodes.get(node).map_or(0, |n| n.queue.len())
    }

    /// Presence's ground truth: the users some node's live set holds in `scope` at `now`.
    #[must_use]
    pub fn presence_members(&self, scope: &StreamKey, now: Instant) -> BTreeSet<UserId> {
        self.presence.members(scope, now)
    }

    /// The nodes with a live presence set in `scope` at `now`.
    #[must_use]
    pub fn presence_nodes(&self, scope: &StreamKey, now: Instant) -> Vec<NodeId> {
        self.presence.nodes(scope, now)
    }

    /// The counters.
    #[must_use]
    pub fn stats(&self) -> &BusStats {
        &self.stats
    }

    /// The engine's clock (the latest instant it was given).
    #[must_use]
    pub fn now(&self) -> Option<Instant> {
        self.now
    }
}
