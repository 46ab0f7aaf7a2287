//! Counters and gauges: the origin documents' factory, manager and security metrics, kept as plain
//! integers the hub bumps as it goes (no scans).

use std::time::Duration;

use crate::action::{CloseReason, ClosedBy, DisconnectReason, LimitKind};

/// Connections closed, by how they ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
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
    /// [`DisconnectReason::Clean`].
    pub client_clean: u64,
    /// [`DisconnectReason::Abnormal`].
    pub client_abnormal: u64,
}

impl ClosedCounts {
    /// The counter for one way of ending.
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
            ClosedBy::Transport(DisconnectReason::Clean) => &mut self.client_clean,
            ClosedBy::Transport(DisconnectReason::Abnormal) => &mut self.client_abnormal,
        }
    }
}

/// Limit rejections, by limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
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
}

impl LimitCounts {
    /// The counter of one limit.
    pub fn get(&self, limit: LimitKind) -> u64 {
        let mut copy = *self;
        *copy.slot(limit)
    }

    /// The sum over all limits.
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
    /// Limit rejections, by limit.
    pub limit_rejections: LimitCounts,
    /// Audit events emitted (security violations and audited uses).
    pub security_violations: u64,
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
    /// Sum of the lifetimes of closed connections, for the average.
    pub total_connection_lifetime: Duration,
}

impl HubStats {
    /// Connections closed for heartbeat timeout (the origin documents' "timeouts").
    pub fn heartbeat_timeouts(&self) -> u64 {
        self.closed_by.heartbeat_timeout
    }

    /// Average lifetime of closed connections (zero if none closed).
    pub fn average_connection_lifetime(&self) -> Duration {
        if self.connections_closed == 0 {
            Duration::ZERO
        } else {
            let n = u32::try_from(self.connections_closed).unwrap_or(u32::MAX);
            self.total_connection_lifetime / n
        }
    }
}
