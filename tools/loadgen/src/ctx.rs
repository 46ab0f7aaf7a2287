//! What every task shares: the clock `ts` is measured on, the counters, the histogram, and
//! who is where.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::time::Instant;

use tokio::sync::watch;

use crate::cli::{ServerKind, TargetKind};
use crate::hist::Hist;

/// What every task shares.
pub(crate) struct Ctx {
    /// Which server the clients speak to.
    pub(crate) kind: ServerKind,
    /// The nodes; client `c` connects to `addrs[c % len]`.
    pub(crate) addrs: Vec<SocketAddr>,
    /// Source addresses; client `c` binds to `binds[c % len]` (none: the kernel picks).
    pub(crate) binds: Vec<IpAddr>,
    /// The clock every `ts` is measured on: `t0_unix_us` microseconds since the Unix epoch at
    /// `t0`, advanced by the monotonic clock from there.
    t0: Instant,
    t0_unix_us: u64,
    /// The measurement window, on the same clock (set before publishing starts).
    pub(crate) window_from: AtomicU64,
    pub(crate) window_to: AtomicU64,
    /// Event frames received, ever (for the in-flight window).
    pub(crate) received: AtomicU64,
    /// Event frames received in the measurement window (every one, sampled for latency or not).
    pub(crate) in_window: AtomicU64,
    /// Deliveries the publishes so far should produce.
    pub(crate) expected: AtomicU64,
    /// Events received in the window, by latency.
    pub(crate) hist: Hist,
    /// Event frames without a readable `ts`.
    pub(crate) unreadable: AtomicU64,
    /// Clients that are live.
    pub(crate) ready: AtomicUsize,
    /// Clients that failed to connect or ended before the shutdown.
    pub(crate) failed: AtomicUsize,
    /// Clients that finished (after the shutdown, or failed).
    pub(crate) finished: AtomicUsize,
    /// Connections the server closed or reset while running.
    pub(crate) dropped: AtomicUsize,
    /// `--latency-every`: a client parses the `ts` of one event in this many.
    pub(crate) latency_every: u64,
    /// `--rcvbuf`: each client's socket receive buffer.
    pub(crate) rcvbuf: Option<u32>,
    /// Whether the clients read their sockets (false during a `:defer` phase's burst).
    pub(crate) reading: watch::Sender<bool>,
    /// The first failure of any task, for the report.
    pub(crate) first_error: std::sync::Mutex<Option<String>>,
}

impl Ctx {
    /// A context with every counter at zero and no measurement window yet (`u64::MAX`).
    pub(crate) fn new(
        kind: ServerKind,
        addrs: Vec<SocketAddr>,
        binds: Vec<IpAddr>,
        t0: Instant,
        t0_unix_us: u64,
    ) -> Self {
        Ctx {
            kind,
            addrs,
            binds,
            t0,
            t0_unix_us,
            window_from: AtomicU64::new(u64::MAX),
            window_to: AtomicU64::new(u64::MAX),
            received: AtomicU64::new(0),
            in_window: AtomicU64::new(0),
            expected: AtomicU64::new(0),
            hist: Hist::new(),
            unreadable: AtomicU64::new(0),
            ready: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            finished: AtomicUsize::new(0),
            dropped: AtomicUsize::new(0),
            latency_every: 1,
            rcvbuf: None,
            reading: watch::Sender::new(true),
            first_error: std::sync::Mutex::new(None),
        }
    }

    /// Now on the `ts` clock.
    pub(crate) fn now_us(&self) -> u64 {
        self.us_at(Instant::now())
    }

    /// `at` on the `ts` clock.
    pub(crate) fn us_at(&self, at: Instant) -> u64 {
        self.t0_unix_us + at.saturating_duration_since(self.t0).as_micros() as u64
    }

    /// Keeps `why` if it is the first failure.
    pub(crate) fn fail(&self, why: String) {
        let mut first = self.first_error.lock().unwrap();
        if first.is_none() {
            *first = Some(why);
        }
    }
}

/// Who is where: the recipients of every target.
pub(crate) struct Layout {
    /// Connections of each user.
    pub(crate) user_conns: Vec<u64>,
    /// Connections of each tenant.
    pub(crate) tenant_conns: Vec<u64>,
}

impl Layout {
    /// The most recipients one publish to `target` has.
    pub(crate) fn max_fanout(&self, target: TargetKind) -> u64 {
        let conns = match target {
            TargetKind::User => &self.user_conns,
            TargetKind::Tenant => &self.tenant_conns,
        };
        conns.iter().copied().max().unwrap_or(1)
    }
}
