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

pub mod redis;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts};
use switchboard::{BusFailure, BusOp, BusReply, OpId, StreamKey, StreamPos};
use tokio::sync::mpsc;

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
    pub metrics: std::sync::Arc<BusMetrics>,
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
        for kind in OP_KINDS {
            latency.with_label_values(&[kind]);
            errors.with_label_values(&[kind]);
        }
        BusMetrics {
            latency,
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
        self.latency.with_label_values(&[kind]).observe(took.as_secs_f64());
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
