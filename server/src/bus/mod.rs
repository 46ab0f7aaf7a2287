//! Cluster mode's engine side: what runs a hub's [`BusOp`]s on a shared engine and brings back
//! what the engine says (DESIGN §11).
//!
//! The hub task does not know which engine it talks to. It holds a [`BusLink`]: a bounded
//! channel of operations into the engine's driver and a bounded channel of [`BusEvent`]s back.
//! [`redis`] is the driver this crate ships; another engine (NATS for the fan-out, say) is
//! another function that returns a `BusLink`.
//!
//! What crosses the link is bounded on both sides. The hub never waits for the engine: it
//! `try_send`s operations (its own `max_inflight_ops` bounds those that expect a reply), and an
//! operation that does not fit is failed at once as `Overloaded`. The engine never makes the hub
//! buffer without bound: replies and link state wait for room (they are bounded by the
//! operations in flight), while a live message that finds the queue full is dropped and counted
//! (`switchboard_bus_messages_dropped_total`) — the hub sees the gap at the next message and
//! fetches it from the log, so a full queue costs a round trip, never a message.
//!
//! The HTTP layer reads the engine through a [`BusReader`] of its own (the admin API's
//! cluster-wide presence): the hub task's operations carry the hub's ids and their replies go to
//! the hub, so a read nobody in the hub asked for does not travel that way.

pub mod redis;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounterVec, Opts};
use switchboard::{BusFailure, BusOp, BusReply, OpId, PresenceHeld, StreamKey, StreamPos};
use tokio::sync::{mpsc, oneshot};

/// What the engine's driver tells the hub task.
#[derive(Debug)]
pub enum BusEvent {
    /// A live message on a subscribed stream: [`Hub::bus_message`](switchboard::Hub::bus_message).
    Message {
        /// The stream.
        stream: StreamKey,
        /// Its position.
        pos: StreamPos,
        /// The payload, byte for byte as appended.
        payload: Box<str>,
    },
    /// A signal on a subscribed stream: [`Hub::bus_signal`](switchboard::Hub::bus_signal).
    Signal {
        /// The stream.
        stream: StreamKey,
        /// The signal.
        payload: Box<str>,
    },
    /// An operation's outcome: [`Hub::bus_reply`](switchboard::Hub::bus_reply).
    Reply {
        /// The operation.
        op: OpId,
        /// Its outcome.
        reply: Result<BusReply, BusFailure>,
    },
    /// The engine is unreachable, or its live channel is deaf:
    /// [`Hub::bus_down`](switchboard::Hub::bus_down).
    Down,
    /// The engine is reachable again and every subscription is restored:
    /// [`Hub::bus_up`](switchboard::Hub::bus_up).
    Up,
}

/// The hub task's end of an engine driver.
#[derive(Debug)]
pub struct BusLink {
    /// Operations for the engine.
    pub ops: mpsc::Sender<BusOp>,
    /// What the engine says.
    pub events: mpsc::Receiver<BusEvent>,
    /// The driver's counters, for `/metrics`.
    pub metrics: Arc<BusMetrics>,
    /// Reads for the HTTP layer, beside the hub task's operations (`None`: the engine offers
    /// none). The hub task does not use it; take it before handing the link over.
    pub reader: Option<BusReader>,
}

/// A read the HTTP layer asks the engine for directly, not through the hub task.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BusQuery {
    /// Every node's live presence set in `scope`, at most `limit` users in all; answered
    /// [`BusReply::Presence`] as [`BusOp::PresenceRead`] is.
    Presence {
        /// The scope's stream (tenant or room).
        scope: StreamKey,
        /// The most users (entries of all sets together) the answer holds.
        limit: u32,
    },
}

/// A [`BusQuery`] on its way to the driver, with where its answer goes.
#[derive(Debug)]
pub struct QueryRequest {
    /// What to read.
    pub query: BusQuery,
    /// The answer (dropped unanswered if the asker gave up).
    pub reply: oneshot::Sender<Result<BusReply, BusFailure>>,
}

/// The HTTP layer's handle on the engine: runs one [`BusQuery`] at a time per request, bounded
/// on both sides. A query that finds the driver's queue full fails at once as `Overloaded`, one
/// asked while the link is down fails at once as `Down`, and one not answered within the
/// reader's timeout as `Retryable`. Cheap to clone.
#[derive(Clone, Debug)]
pub struct BusReader {
    queries: mpsc::Sender<QueryRequest>,
    metrics: Arc<BusMetrics>,
    timeout: Duration,
}

impl BusReader {
    /// A reader whose queries wait at most `capacity` in the queue a driver serves (the
    /// receiver) and `timeout` for their answer; `metrics` says whether the link is up.
    pub fn new(
        capacity: usize,
        timeout: Duration,
        metrics: Arc<BusMetrics>,
    ) -> (Self, mpsc::Receiver<QueryRequest>) {
        let (queries, rx) = mpsc::channel(capacity.max(1));
        (BusReader { queries, metrics, timeout }, rx)
    }

    /// Whether the link is up.
    pub fn is_up(&self) -> bool {
        self.metrics.is_up()
    }

    /// Runs `query` and returns the driver's answer.
    pub async fn query(&self, query: BusQuery) -> Result<BusReply, BusFailure> {
        if !self.is_up() {
            return Err(BusFailure::Down);
        }
        let (reply, answer) = oneshot::channel();
        self.queries.try_send(QueryRequest { query, reply }).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => BusFailure::Overloaded,
            mpsc::error::TrySendError::Closed(_) => BusFailure::Down,
        })?;
        match tokio::time::timeout(self.timeout, answer).await {
            Ok(Ok(reply)) => reply,
            // The driver stopped.
            Ok(Err(_)) => Err(BusFailure::Down),
            Err(_) => Err(BusFailure::Retryable),
        }
    }

    /// Every node's live presence set in `scope` (at most `limit` users in all), and whether
    /// users were left out.
    pub async fn presence(
        &self,
        scope: StreamKey,
        limit: u32,
    ) -> Result<(Vec<PresenceHeld>, bool), BusFailure> {
        match self.query(BusQuery::Presence { scope, limit }).await? {
            BusReply::Presence { held, truncated } => Ok((held, truncated)),
            // A driver that answers another kind of reply does not implement the query.
            _ => Err(BusFailure::Refused),
        }
    }
}

/// The kinds of bus operations, as the `op` label of the metrics.
pub(crate) const OP_KINDS: [&str; 13] = [
    "subscribe",
    "unsubscribe",
    "append",
    "fetch",
    "tops",
    "rotate",
    "lease",
    "renew",
    "release",
    "signal",
    "presence_update",
    "presence_refresh",
    "presence_read",
];

/// The metrics label of an operation.
pub(crate) fn op_kind(op: &BusOp) -> &'static str {
    match op {
        BusOp::Subscribe { .. } => "subscribe",
        BusOp::Unsubscribe { .. } => "unsubscribe",
        BusOp::Append { .. } => "append",
        BusOp::Fetch { .. } => "fetch",
        BusOp::Tops { .. } => "tops",
        BusOp::Rotate { .. } => "rotate",
        BusOp::Lease { .. } => "lease",
        BusOp::Renew { .. } => "renew",
        BusOp::Release { .. } => "release",
        BusOp::Signal { .. } => "signal",
        BusOp::PresenceUpdate { .. } => "presence_update",
        BusOp::PresenceRefresh { .. } => "presence_refresh",
        BusOp::PresenceRead { .. } => "presence_read",
        _ => "other",
    }
}

/// What a bus driver counts: every operation's latency and failures by kind, and the link's
/// health. Shared with `/metrics`, which reads it at each scrape.
#[derive(Debug)]
pub struct BusMetrics {
    /// Seconds from the operation reaching the driver to its reply, by `op`.
    pub(crate) latency: HistogramVec,
    /// `latency`'s histogram of each of [`OP_KINDS`], in that order: resolved once, so that
    /// recording an operation does not hash its label (once per publish, in cluster mode).
    latency_by_kind: Vec<Histogram>,
    /// Operations that failed, by `op`.
    pub(crate) errors: IntCounterVec,
    /// Live messages dropped because the hub task's queue was full (repaired from the log).
    pub messages_dropped: AtomicU64,
    /// Operations the hub could not hand to the driver (its queue was full): publishes and
    /// subscriptions among them were failed as `Overloaded` at once.
    pub ops_refused: AtomicU64,
    /// Times the live channel's connection was lost or found deaf.
    pub link_losses: AtomicU64,
    /// Liveness probes that did not come back in time.
    pub probes_missed: AtomicU64,
    /// Dead nodes whose leases this node removed.
    pub dead_nodes_cleaned: AtomicU64,
    /// Leases of dead nodes removed.
    pub leases_purged: AtomicU64,
    /// Whether the link is up.
    pub up: AtomicBool,
}

impl Default for BusMetrics {
    fn default() -> Self {
        let buckets = vec![
            0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        ];
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "switchboard_bus_op_duration_seconds",
                "Seconds from a bus operation reaching the driver to its reply, by operation",
            )
            .buckets(buckets),
            &["op"],
        )
        .expect("valid histogram options");
        let errors = IntCounterVec::new(
            Opts::new(
                "switchboard_bus_op_errors_total",
                "Bus operations that failed, by operation",
            ),
            &["op"],
        )
        .expect("valid counter options");
        let latency_by_kind =
            OP_KINDS.iter().map(|kind| latency.with_label_values(&[kind])).collect();
        for kind in OP_KINDS {
            errors.with_label_values(&[kind]);
        }
        BusMetrics {
            latency,
            latency_by_kind,
            errors,
            messages_dropped: AtomicU64::new(0),
            ops_refused: AtomicU64::new(0),
            link_losses: AtomicU64::new(0),
            probes_missed: AtomicU64::new(0),
            dead_nodes_cleaned: AtomicU64::new(0),
            leases_purged: AtomicU64::new(0),
            up: AtomicBool::new(false),
        }
    }
}

impl BusMetrics {
    /// Records one operation of `kind` that took `took` and failed or not.
    pub(crate) fn record(&self, kind: &str, took: Duration, failed: bool) {
        let secs = took.as_secs_f64();
        match OP_KINDS.iter().position(|k| *k == kind) {
            Some(i) => self.latency_by_kind[i].observe(secs),
            None => self.latency.with_label_values(&[kind]).observe(secs),
        }
        if failed {
            self.errors.with_label_values(&[kind]).inc();
        }
    }

    /// Whether the link is up.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
