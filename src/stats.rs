//! Counters and gauges: the origin documents' factory, manager and security metrics. Counters are
//! plain integers the outbox bumps as it emits; gauges are derived from the hub's components when
//! [`Hub::stats`](crate::Hub::stats) is read (no scans: each is a length or a running total).

use std::time::{Duration, Instant};

use crate::kinds::{CloseReason, ClosedBy, DisconnectReason, LimitKind};

/// Connections closed, by how they ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClosedCounts {
    /// [`CloseReason::HeartbeatTimeout`].
    pub heartbeat_timeout: u64,
    /// [`CloseReason::SessionExpired`].
    pub session_expired: u64,
    /// [`CloseReason::Replaced`].
    pub replaced: u64,
    /// [`CloseReason::SlowConsumer`].
    pub slow_consumer: u64,
    /// [`CloseReason::ProtocolViolation`].
    pub protocol_violation: u64,
    /// [`CloseReason::Kicked`].
    pub kicked: u64,
    /// [`CloseReason::ServerShutdown`].
    pub server_shutdown: u64,
    /// [`CloseReason::Unavailable`].
    pub unavailable: u64,
    /// [`CloseReason::UserLimit`].
    pub user_limit: u64,
    /// [`CloseReason::MaxLifetime`].
    pub max_lifetime: u64,
    /// [`DisconnectReason::Clean`].
    pub client_clean: u64,
    /// [`DisconnectReason::Abnormal`].
    pub client_abnormal: u64,
}

impl ClosedCounts {
    /// The counter for one way of ending.
    #[must_use]
    pub fn get(&self, by: ClosedBy) -> u64 {
        // A copy is cheaper to read than a second, drifting copy of the mapping.
        let mut copy = *self;
        *copy.slot(by)
    }

    pub(crate) fn bump(&mut self, by: ClosedBy) {
        *self.slot(by) += 1;
    }

    fn slot(&mut self, by: ClosedBy) -> &mut u64 {
        match by {
            ClosedBy::Hub(CloseReason::HeartbeatTimeout) => &mut self.heartbeat_timeout,
            ClosedBy::Hub(CloseReason::SessionExpired) => &mut self.session_expired,
            ClosedBy::Hub(CloseReason::Replaced) => &mut self.replaced,
            ClosedBy::Hub(CloseReason::SlowConsumer) => &mut self.slow_consumer,
            ClosedBy::Hub(CloseReason::ProtocolViolation) => &mut self.protocol_violation,
            ClosedBy::Hub(CloseReason::Kicked) => &mut self.kicked,
            ClosedBy::Hub(CloseReason::ServerShutdown) => &mut self.server_shutdown,
            ClosedBy::Hub(CloseReason::Unavailable) => &mut self.unavailable,
            ClosedBy::Hub(CloseReason::UserLimit) => &mut self.user_limit,
            ClosedBy::Hub(CloseReason::MaxLifetime) => &mut self.max_lifetime,
            ClosedBy::Transport(DisconnectReason::Clean) => &mut self.client_clean,
            ClosedBy::Transport(DisconnectReason::Abnormal) => &mut self.client_abnormal,
        }
    }
}

/// Cluster mode: the bus's behaviour, as this node saw it (all zero on a single node).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BusStats {
    /// Operations issued.
    pub ops: u64,
    /// Operations answered with a failure (or failed by `bus_down`).
    pub op_failures: u64,
    /// Operations whose deadline passed without a reply.
    pub op_timeouts: u64,
    /// Replies to operations not in flight (late, or from before an outage), to a subscription
    /// the node has since dropped and made anew, or to a repair of a stream that has since
    /// started over: ignored.
    pub late_replies: u64,
    /// Live messages on streams the node does not follow (a subscription that timed out but was
    /// made, or an unsubscribe not yet effective): ignored.
    pub untracked_messages: u64,
    /// Live messages dropped because they were already delivered, or belong to an epoch the
    /// stream has left (late, after whatever moved it on).
    pub duplicates_dropped: u64,
    /// Gaps in live delivery filled from the log.
    pub gaps_repaired: u64,
    /// Gaps the log no longer covered (the connections got `resync`).
    pub gaps_lost: u64,
    /// Messages that did not match the stream they arrived on: dropped and audited.
    pub mismatches: u64,
    /// Streams that started over in a new epoch.
    pub epochs_changed: u64,
    /// Gauge: operations in flight.
    pub in_flight: u64,
    /// Gauge: streams subscribed to.
    pub streams: u64,
    /// Presence signals received from other nodes.
    pub presence_signals: u64,
    /// Presence signals whose digest disagreed with this node's view (a signal was lost): the
    /// scope was read again.
    pub presence_mismatches: u64,
    /// Reads of a scope's presence on the bus.
    pub presence_reads: u64,
    /// Other nodes' presence sets dropped because they were not refreshed in time (the node
    /// died, or lost the bus).
    pub presence_expired: u64,
    /// Writes of this node's presence sets that failed (each scope is written whole again).
    pub presence_rewrites: u64,
    /// Gauge: other nodes' presence entries this node keeps.
    pub presence_remote_entries: u64,
}

/// Limit rejections, by limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LimitCounts {
    /// [`LimitKind::TotalConnections`].
    pub total_connections: u64,
    /// [`LimitKind::TenantConnections`].
    pub tenant_connections: u64,
    /// [`LimitKind::UserConnections`].
    pub user_connections: u64,
    /// [`LimitKind::UserConnectionsEvicted`].
    pub user_connections_evicted: u64,
    /// [`LimitKind::RoomsPerConnection`].
    pub rooms_per_connection: u64,
    /// [`LimitKind::ThreadSubscriptions`].
    pub thread_subscriptions: u64,
    /// [`LimitKind::MessageRate`].
    pub message_rate: u64,
    /// [`LimitKind::ControlRate`].
    pub control_rate: u64,
    /// [`LimitKind::FrameSize`].
    pub frame_size: u64,
    /// [`LimitKind::PresenceScopeSize`].
    pub presence_scope_size: u64,
    /// [`LimitKind::PresenceRemoteEntries`].
    pub presence_remote_entries: u64,
}

impl LimitCounts {
    /// The counter of one limit.
    #[must_use]
    pub fn get(&self, limit: LimitKind) -> u64 {
        let mut copy = *self;
        *copy.slot(limit)
    }

    /// The sum over all limits.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.total_connections
            + self.tenant_connections
            + self.user_connections
            + self.user_connections_evicted
            + self.rooms_per_connection
            + self.thread_subscriptions
            + self.message_rate
            + self.control_rate
            + self.frame_size
            + self.presence_scope_size
            + self.presence_remote_entries
    }

    pub(crate) fn bump(&mut self, limit: LimitKind) {
        *self.slot(limit) += 1;
    }

    fn slot(&mut self, limit: LimitKind) -> &mut u64 {
        match limit {
            LimitKind::TotalConnections => &mut self.total_connections,
            LimitKind::TenantConnections => &mut self.tenant_connections,
            LimitKind::UserConnections => &mut self.user_connections,
            LimitKind::UserConnectionsEvicted => &mut self.user_connections_evicted,
            LimitKind::RoomsPerConnection => &mut self.rooms_per_connection,
            LimitKind::ThreadSubscriptions => &mut self.thread_subscriptions,
            LimitKind::MessageRate => &mut self.message_rate,
            LimitKind::ControlRate => &mut self.control_rate,
            LimitKind::FrameSize => &mut self.frame_size,
            LimitKind::PresenceScopeSize => &mut self.presence_scope_size,
            LimitKind::PresenceRemoteEntries => &mut self.presence_remote_entries,
        }
    }
}

/// A snapshot of the hub's counters (monotonic) and gauges (current values).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HubStats {
    /// User states created (first connection of a `(tenant, user)` the hub did not hold).
    pub users_created: u64,
    /// Gauge: users with at least one open connection.
    pub users_active: u64,
    /// Gauge: users without connections, kept for `user_retention`.
    pub users_detached: u64,
    /// User states retired after retention.
    pub users_retired: u64,
    /// Gauge: tenants with any state.
    pub tenants: u64,
    /// Gauge: rooms with members.
    pub rooms: u64,
    /// Gauge: rooms without members kept for `room_retention`.
    pub rooms_idle: u64,
    /// Connections opened.
    pub connections_opened: u64,
    /// Gauge: connections open now.
    pub connections_active: u64,
    /// Connections closed, all reasons.
    pub connections_closed: u64,
    /// Connections closed, by reason.
    pub closed_by: ClosedCounts,
    /// Connections refused at `connect` because the session was already expired.
    pub connects_refused_expired: u64,
    /// Cluster mode: connections refused at `connect` because the bus was down and the node did
    /// not hold the streams they need.
    pub connects_refused_unavailable: u64,
    /// Cluster mode: publishes whose append failed (reported as `PublishOutcome::Failed`).
    pub publishes_failed: u64,
    /// Cluster mode: `resync` notices sent (a stream's messages were lost or it started over).
    pub resyncs_sent: u64,
    /// `reply` frames sent ([`Hub::reply`](crate::Hub::reply)).
    pub replies_sent: u64,
    /// `history` frames sent, answering clients' `history` requests.
    pub history_requests: u64,
    /// `refresh` frames received from clients.
    pub refresh_requests: u64,
    /// Client refreshes refused ([`Hub::answer_refresh`](crate::Hub::answer_refresh)).
    pub refreshes_refused: u64,
    /// Gauge, single node: idempotency keys remembered (`Config::max_idempotency_keys`).
    pub idempotency_keys: u64,
    /// Presence: `presence` snapshots sent (on joining a scope, on request, after a scope came
    /// back under its size limit).
    pub presence_snapshots_sent: u64,
    /// Presence: `presence_diff` frames sent (one per member of a scope per flush with changes).
    pub presence_diffs_sent: u64,
    /// Gauge: presence scopes with anyone present (or a leave not yet sent).
    pub presence_scopes: u64,
    /// Cluster mode: what the bus did.
    pub bus: BusStats,
    /// Limit rejections, by limit.
    pub limit_rejections: LimitCounts,
    /// Audit events emitted that are security violations
    /// ([`AuditKind::is_security_violation`](crate::AuditKind::is_security_violation)): expected
    /// to stay at zero, and alerted on when it does not.
    pub security_violations: u64,
    /// Audit events emitted, of every kind (violations, limit hits, floods, breakers, refused
    /// refreshes, allowed global broadcasts).
    pub audit_events: u64,
    /// Stale connection ids refused.
    pub stale_ids_refused: u64,
    /// Envelopes accepted by `publish`.
    pub publishes: u64,
    /// Envelopes that reached no connection (unknown or offline user, empty room, …).
    pub undeliverable: u64,
    /// `Deliver` actions emitted (event frames and control frames).
    pub deliveries: u64,
    /// Bytes in `Deliver` actions emitted.
    pub bytes_delivered: u64,
    /// Bytes confirmed by `written`.
    pub bytes_written: u64,
    /// Client frames received (accepted or not).
    pub frames_received: u64,
    /// Client `message` frames surfaced as `Inbound`.
    pub inbound_messages: u64,
    /// Client frames refused (malformed, unknown, oversized, rate-limited, over a limit).
    pub protocol_errors: u64,
    /// Transport pings requested.
    pub pings_sent: u64,
    /// Transport pongs reported.
    pub pongs_received: u64,
    /// `refresh_required` frames sent.
    pub refresh_required_sent: u64,
    /// Sessions refreshed.
    pub sessions_refreshed: u64,
    /// `agent_thinking` frames skipped for connections over `max_inflight_bytes`.
    pub thinking_skipped: u64,
    /// Event frames not sent live to a connection still in its resume window (they are replayed
    /// from the buffer when it goes live).
    pub held_back: u64,
    /// Messages replayed from recovery buffers.
    pub replayed: u64,
    /// `resume` frames answered `recovered: true`.
    pub resumes_recovered: u64,
    /// `resume` frames answered `recovered: false`.
    pub resumes_unrecovered: u64,
    /// Gauge: messages in all recovery buffers.
    pub buffered_messages: u64,
    /// Gauge: frame bytes in all recovery buffers.
    pub buffered_bytes: u64,
    /// Reconnect breakers opened.
    pub breakers_opened: u64,
    /// Connects refused by an open breaker.
    pub breaker_refusals: u64,
    /// Breakers forgotten early because `max_breakers` was reached.
    pub breakers_evicted: u64,
    /// Detached users retired early because `max_detached_users` was reached.
    pub users_evicted: u64,
    /// Sum of the lifetimes of closed connections, for the average.
    pub total_connection_lifetime: Duration,
    /// Round-trip times of the hub's heartbeat pings: from the hub asking for a `Ping` to the
    /// transport's pong ([`Hub::pong`](crate::Hub::pong)). Never from a client's `ping` frame.
    pub round_trips: RttHistogram,
}

impl HubStats {
    /// Connections closed for heartbeat timeout (the origin documents' "timeouts").
    #[must_use]
    pub fn heartbeat_timeouts(&self) -> u64 {
        self.closed_by.heartbeat_timeout
    }

    /// Average lifetime of closed connections (zero if none closed).
    #[must_use]
    pub fn average_connection_lifetime(&self) -> Duration {
        if self.connections_closed == 0 {
            Duration::ZERO
        } else {
            let n = u32::try_from(self.connections_closed).unwrap_or(u32::MAX);
            self.total_connection_lifetime / n
        }
    }
}

/// A histogram of round-trip times, with fixed buckets ([`RttHistogram::BOUNDS`]) so that it is
/// `Copy`, costs no allocation and exports as a Prometheus histogram as it is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RttHistogram {
    /// Samples per bucket: `counts[i]` holds those at most `BOUNDS[i]` and over `BOUNDS[i - 1]`;
    /// the last holds those over every bound.
    counts: [u64; RttHistogram::BOUNDS.len() + 1],
    /// The sum of every sample.
    sum: Duration,
}

impl RttHistogram {
    /// The buckets' upper bounds, from a loopback's millisecond to a struggling mobile link's
    /// seconds (beyond `heartbeat.timeout` nothing is sampled: the connection would be closed).
    pub const BOUNDS: [Duration; 13] = [
        Duration::from_millis(1),
        Duration::from_micros(2_500),
        Duration::from_millis(5),
        Duration::from_millis(10),
        Duration::from_millis(25),
        Duration::from_millis(50),
        Duration::from_millis(100),
        Duration::from_millis(250),
        Duration::from_millis(500),
        Duration::from_secs(1),
        Duration::from_millis(2_500),
        Duration::from_secs(5),
        Duration::from_secs(10),
    ];

    /// Counts one sample.
    pub(crate) fn observe(&mut self, rtt: Duration) {
        let bucket = Self::BOUNDS.partition_point(|&bound| bound < rtt);
        self.counts[bucket] += 1;
        self.sum = self.sum.saturating_add(rtt);
    }

    /// How many samples there are.
    #[must_use]
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The sum of the samples.
    #[must_use]
    pub fn sum(&self) -> Duration {
        self.sum
    }

    /// Cumulative counts, one per bound of [`RttHistogram::BOUNDS`] (samples at most that long),
    /// as Prometheus' `le` buckets want them; the `+Inf` bucket is [`RttHistogram::count`].
    pub fn cumulative(&self) -> impl Iterator<Item = (Duration, u64)> + '_ {
        Self::BOUNDS
            .iter()
            .zip(self.counts.iter().scan(0, |acc, &n| {
                *acc += n;
                Some(*acc)
            }))
            .map(|(&bound, total)| (bound, total))
    }
}

/// Moving averages of one user's or one tier's traffic (the origin documents' usage
/// prediction), per minute.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct Rates {
    /// Client `message` frames accepted.
    pub inbound_per_minute: f64,
    /// Frames delivered.
    pub delivered_per_minute: f64,
    /// Connections opened.
    pub connects_per_minute: f64,
}

/// The time base of the meters: the current one-second bucket and the smoothing factor per
/// bucket. The hub computes it once per call, so metering a fan-out costs an add per recipient.
#[derive(Clone, Copy, Debug)]
pub(crate) struct MeterClock {
    pub(crate) bucket: u32,
    pub(crate) alpha: f32,
}

impl MeterClock {
    pub(crate) fn new(elapsed: Duration, window: Duration) -> Self {
        let alpha = 1.0 - (-1.0 / window.as_secs_f64().max(1.0)).exp();
        Self { bucket: 0, alpha: alpha as f32 }.at(elapsed)
    }

    /// The same smoothing at another time (no floating-point work: this runs on every call).
    pub(crate) fn at(self, elapsed: Duration) -> Self {
        Self { bucket: u32::try_from(elapsed.as_secs()).unwrap_or(u32::MAX), ..self }
    }
}

/// An exponentially weighted moving average over one-second buckets: events are counted into
/// the current bucket and folded into the average when the bucket changes. 12 bytes, no timer.
///
/// The count of the current bucket is a `u32` (saturating) by default; a connection's delivery
/// meter counts in a `u64` ([`DeliveryMeter`], 16 bytes): a fan-out adds to every recipient's
/// meter, and the saturating add of a 32-bit count cost 4 more instructions per recipient
/// (callgrind, `room-1000`), while 2^64 events in one bucket cannot happen, even with a caller's
/// clock that stands still. The user's and tier meters stay 12 bytes.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Meter<C = u32> {
    avg: f32,
    bucket: u32,
    count: C,
}

/// A connection's delivery meter (see [`Meter`]).
pub(crate) type DeliveryMeter = Meter<u64>;

/// The count of a meter's current bucket.
pub(crate) trait Count: Copy + Default {
    /// `self + n`, at most the type's maximum.
    fn plus(self, n: u64) -> Self;
    fn get(self) -> u64;
}

impl Count for u32 {
    #[inline]
    fn plus(self, n: u64) -> Self {
        u32::try_from(u64::from(self).saturating_add(n)).unwrap_or(u32::MAX)
    }

    fn get(self) -> u64 {
        u64::from(self)
    }
}

impl Count for u64 {
    #[inline]
    fn plus(self, n: u64) -> Self {
        self.saturating_add(n)
    }

    fn get(self) -> u64 {
        self
    }
}

impl Meter<u32> {
    #[inline]
    pub(crate) fn add(&mut self, clock: MeterClock, n: u32) {
        // A fan-out adds to every recipient's meter within one bucket: the roll is the rare case.
        if clock.bucket != self.bucket {
            self.roll(clock);
        }
        self.count = self.count.saturating_add(n);
    }
}

impl Meter<u64> {
    /// One event: no saturation (see [`Meter`]).
    #[inline]
    pub(crate) fn add_one(&mut self, clock: MeterClock) {
        if clock.bucket != self.bucket {
            self.roll(clock);
        }
        self.count += 1;
    }
}

impl<C: Count> Meter<C> {
    #[inline(never)]
    fn roll(&mut self, clock: MeterClock) {
        let k = clock.bucket.saturating_sub(self.bucket);
        if k == 0 {
            return;
        }
        self.avg += clock.alpha * (self.count.get() as f32 - self.avg);
        if k > 1 {
            self.avg *= (1.0 - clock.alpha).powi(i32::try_from(k - 1).unwrap_or(i32::MAX));
        }
        self.count = C::default();
        self.bucket = clock.bucket;
    }

    /// Adds another meter's history to this one. The average is linear, so the result is the
    /// meter of both event streams together.
    pub(crate) fn absorb<D: Count>(&mut self, mut other: Meter<D>, clock: MeterClock) {
        self.roll(clock);
        other.roll(clock);
        self.avg += other.avg;
        self.count = self.count.plus(other.count.get());
    }

    pub(crate) fn per_minute(mut self, clock: MeterClock) -> f64 {
        self.roll(clock);
        f64::from(self.avg) * 60.0
    }
}

/// The three meters kept per user and per tier.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Meters {
    pub(crate) inbound: Meter,
    pub(crate) delivered: Meter,
    pub(crate) connects: Meter,
}

impl Meters {
    pub(crate) fn rates(&self, clock: MeterClock) -> Rates {
        Rates {
            inbound_per_minute: self.inbound.per_minute(clock),
            delivered_per_minute: self.delivered.per_minute(clock),
            connects_per_minute: self.connects.per_minute(clock),
        }
    }
}

/// The periodic stats snapshot's deadline (`Config::snapshot_interval`): armed at the first `now`
/// the hub sees, then every interval after the snapshot it fired.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct SnapshotTimer {
    next: Option<Instant>,
}

impl SnapshotTimer {
    /// Arms the first snapshot `every` after `now`, unless one is armed (or there is no interval,
    /// or that instant lies past the end of the clock's range).
    pub(crate) fn start(&mut self, now: Instant, every: Option<Duration>) {
        if self.next.is_none() {
            self.next = every.and_then(|every| now.checked_add(every));
        }
    }

    /// When the next snapshot is due.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.next
    }

    /// Whether a snapshot is due at `now`; if so the next one is armed `every` later.
    pub(crate) fn pop_due(&mut self, now: Instant, every: Option<Duration>) -> bool {
        if self.next.is_none_or(|at| at > now) {
            return false;
        }
        self.next = every.and_then(|every| now.checked_add(every));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_fall_into_their_buckets_cumulatively() {
        let mut h = RttHistogram::default();
        for ms in [0, 1, 2, 40, 40, 20_000] {
            h.observe(Duration::from_millis(ms));
        }
        assert_eq!(h.count(), 6);
        assert_eq!(h.sum(), Duration::from_millis(20_083));
        let le = |bound: Duration| h.cumulative().find(|&(b, _)| b == bound).unwrap().1;
        // A sample equal to a bound is in it (`le`); 20 s is only in `+Inf`.
        assert_eq!(le(Duration::from_millis(1)), 2);
        assert_eq!(le(Duration::from_micros(2_500)), 3);
        assert_eq!(le(Duration::from_millis(25)), 3);
        assert_eq!(le(Duration::from_millis(50)), 5);
        assert_eq!(le(Duration::from_secs(10)), 5);
        let counts: Vec<u64> = h.cumulative().map(|(_, n)| n).collect();
        assert!(counts.is_sorted() && counts.len() == RttHistogram::BOUNDS.len());
        assert!(RttHistogram::BOUNDS.is_sorted());
    }

    #[test]
    fn a_steady_rate_converges_and_silence_decays() {
        let window = Duration::from_secs(60);
        let clock = |s| MeterClock::new(Duration::from_secs(s), window);
        let mut m = Meter::default();
        // Two events a second for ten minutes: about 120 per minute.
        for s in 0..600 {
            m.add(clock(s), 2);
        }
        let steady = m.per_minute(clock(600));
        assert!((steady - 120.0).abs() < 2.0, "{steady}");
        // One time constant of silence leaves about 1/e of it.
        let later = m.per_minute(clock(660));
        assert!((later / steady - (-1.0f64).exp()).abs() < 0.02, "{later}");
        assert!(m.per_minute(clock(600 + 3600)) < 0.01);
    }

    #[test]
    fn the_snapshot_timer_fires_once_per_due_tick_and_rearms_from_then() {
        let t0 = Instant::now();
        let every = Some(Duration::from_secs(10));
        let mut timer = SnapshotTimer::default();
        timer.start(t0, None);
        assert_eq!(timer.poll_timeout(), None, "no interval, no timer");
        timer.start(t0, every);
        let first = t0 + Duration::from_secs(10);
        assert_eq!(timer.poll_timeout(), Some(first));
        // Starting again does not move an armed timer.
        timer.start(t0 + Duration::from_secs(5), every);
        assert_eq!(timer.poll_timeout(), Some(first));
        assert!(!timer.pop_due(first - Duration::from_nanos(1), every));
        // A late tick fires once, and the next one is an interval after it.
        let late = first + Duration::from_secs(25);
        assert!(timer.pop_due(late, every));
        assert!(!timer.pop_due(late, every));
        assert_eq!(timer.poll_timeout(), Some(late + Duration::from_secs(10)));
    }
}
