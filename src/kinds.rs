//! The closed vocabularies of outputs: why a connection closed, which limit was hit, what kind of
//! audit event happened, where a breaker stands. Plain enums with no dependencies above `ids`, so
//! that counters, actions and components can all name them.

use std::time::Instant;

use crate::ids::ConnId;

/// Why the hub closes a connection. Each reason has a WebSocket close code in 4000–4999 and a hint
/// whether the client should reconnect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CloseReason {
    /// No sign of life within `heartbeat.timeout` after a ping. Code 4000; reconnect.
    HeartbeatTimeout,
    /// The session reached `expires_at` without a refresh. Code 4001; reconnect after
    /// re-authenticating.
    SessionExpired,
    /// The user opened a connection beyond its limit and the policy evicted this, the oldest one.
    /// Code 4002; do not reconnect (the user is connected elsewhere).
    Replaced,
    /// The client does not read fast enough to receive critical events. Code 4003; reconnect and
    /// resume.
    SlowConsumer,
    /// The client sent too many malformed, unknown, oversized or rate-limited frames. Code 4004;
    /// do not reconnect.
    ProtocolViolation,
    /// The application closed the connection with [`Hub::close`](crate::Hub::close). Code 4005;
    /// do not reconnect.
    Kicked,
    /// The server is shutting down. Code 4006; reconnect (to another instance, or later).
    ServerShutdown,
    /// Cluster mode: the node could not reach the bus to set the connection up (its streams'
    /// positions could not be read). Code 4007; reconnect after a backoff.
    Unavailable,
    /// Cluster mode: the user already holds its tier's connections on other nodes (the
    /// cluster-wide quota refused this one). Code 4008; do not reconnect automatically.
    UserLimit,
    /// The connection reached its tier's
    /// [`max_connection_lifetime`](crate::TierQuota::max_connection_lifetime). Code 4009;
    /// reconnect at once and resume (to whichever node the load balancer picks now).
    MaxLifetime,
}

impl CloseReason {
    /// The WebSocket close code (4000–4999, the range reserved for applications).
    #[must_use]
    pub fn code(self) -> u16 {
        match self {
            CloseReason::HeartbeatTimeout => 4000,
            CloseReason::SessionExpired => 4001,
            CloseReason::Replaced => 4002,
            CloseReason::SlowConsumer => 4003,
            CloseReason::ProtocolViolation => 4004,
            CloseReason::Kicked => 4005,
            CloseReason::ServerShutdown => 4006,
            CloseReason::Unavailable => 4007,
            CloseReason::UserLimit => 4008,
            CloseReason::MaxLifetime => 4009,
        }
    }

    /// Whether a well-behaved client should reconnect after this close.
    #[must_use]
    pub fn reconnect(self) -> bool {
        match self {
            CloseReason::HeartbeatTimeout
            | CloseReason::SessionExpired
            | CloseReason::SlowConsumer
            | CloseReason::ServerShutdown
            | CloseReason::Unavailable
            | CloseReason::MaxLifetime => true,
            CloseReason::Replaced
            | CloseReason::ProtocolViolation
            | CloseReason::Kicked
            | CloseReason::UserLimit => false,
        }
    }

    /// A short snake_case name, used as the close frame's reason text and in metrics.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::HeartbeatTimeout => "heartbeat_timeout",
            CloseReason::SessionExpired => "session_expired",
            CloseReason::Replaced => "replaced",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::ProtocolViolation => "protocol_violation",
            CloseReason::Kicked => "kicked",
            CloseReason::ServerShutdown => "server_shutdown",
            CloseReason::Unavailable => "unavailable",
            CloseReason::UserLimit => "user_limit",
            CloseReason::MaxLifetime => "max_lifetime",
        }
    }
}

/// Why the transport went away, as the caller reports it to
/// [`Hub::disconnect`](crate::Hub::disconnect).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// The client closed cleanly (a close frame with a normal code).
    Clean,
    /// The transport failed: reset, read error, close without a close frame, or an abnormal code.
    Abnormal,
}

/// How a connection ended, as counted in [`HubStats`](crate::HubStats) and reported in
/// [`MetricEvent::ConnectionClosed`](crate::MetricEvent::ConnectionClosed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ClosedBy {
    /// The hub closed it.
    Hub(CloseReason),
    /// The transport reported it gone.
    Transport(DisconnectReason),
}

impl ClosedBy {
    /// A short snake_case name, for metric labels and logs: the close reason's
    /// ([`CloseReason::as_str`]) when the hub closed it, `client_clean` or `client_abnormal` when
    /// the transport did.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ClosedBy::Hub(reason) => reason.as_str(),
            ClosedBy::Transport(DisconnectReason::Clean) => "client_clean",
            ClosedBy::Transport(DisconnectReason::Abnormal) => "client_abnormal",
        }
    }

    /// Every way a connection can end (for exporting `HubStats::closed_by` as labelled metrics).
    pub const ALL: &'static [ClosedBy] = &[
        ClosedBy::Hub(CloseReason::HeartbeatTimeout),
        ClosedBy::Hub(CloseReason::SessionExpired),
        ClosedBy::Hub(CloseReason::Replaced),
        ClosedBy::Hub(CloseReason::SlowConsumer),
        ClosedBy::Hub(CloseReason::ProtocolViolation),
        ClosedBy::Hub(CloseReason::Kicked),
        ClosedBy::Hub(CloseReason::ServerShutdown),
        ClosedBy::Hub(CloseReason::Unavailable),
        ClosedBy::Hub(CloseReason::UserLimit),
        ClosedBy::Hub(CloseReason::MaxLifetime),
        ClosedBy::Transport(DisconnectReason::Clean),
        ClosedBy::Transport(DisconnectReason::Abnormal),
    ];
}

/// What kind of security-relevant event happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AuditKind {
    /// A stale `ConnId` (its slot reused by another connection) was presented and refused.
    StaleConnId,
    /// `Target::Everyone` was refused because global broadcast is disabled.
    GlobalBroadcastDenied,
    /// `Target::Everyone` was used (allowed by config).
    GlobalBroadcast,
    /// A connection limit refused or evicted a connection.
    LimitHit(LimitKind),
    /// A client exceeded a rate limit.
    Flood,
    /// A client sent a frame over the size limit.
    OversizedFrame,
    /// A client sent a malformed or unknown frame.
    MalformedFrame,
    /// A client was closed for repeated protocol violations.
    ViolationClose,
    /// A user's reconnect breaker opened (too many abnormal closes).
    BreakerOpened,
    /// A connect was refused because the user's breaker is open.
    BreakerRefused,
    /// A `resume` named a stream the connection does not have (another user's, a room it is not
    /// in, or nonsense). Nothing was replayed for it.
    ForeignStream,
    /// A bus message did not match the stream it arrived on (another tenant's, user's or room's,
    /// or malformed): a driver or engine fault. It was dropped, never delivered.
    BusMismatch,
    /// A client's `refresh` was refused: its token is invalid, names another user or tenant, or
    /// does not extend the session.
    RefreshRefused,
}

impl AuditKind {
    /// Every audit kind, so that an exporter can publish each series before it first occurs.
    pub const ALL: &'static [AuditKind] = &[
        AuditKind::StaleConnId,
        AuditKind::GlobalBroadcastDenied,
        AuditKind::GlobalBroadcast,
        AuditKind::LimitHit(LimitKind::TotalConnections),
        AuditKind::LimitHit(LimitKind::TenantConnections),
        AuditKind::LimitHit(LimitKind::UserConnections),
        AuditKind::LimitHit(LimitKind::UserConnectionsEvicted),
        AuditKind::LimitHit(LimitKind::RoomsPerConnection),
        AuditKind::LimitHit(LimitKind::ThreadSubscriptions),
        AuditKind::LimitHit(LimitKind::MessageRate),
        AuditKind::LimitHit(LimitKind::ControlRate),
        AuditKind::LimitHit(LimitKind::FrameSize),
        AuditKind::LimitHit(LimitKind::PresenceScopeSize),
        AuditKind::LimitHit(LimitKind::PresenceRemoteEntries),
        AuditKind::Flood,
        AuditKind::OversizedFrame,
        AuditKind::MalformedFrame,
        AuditKind::ViolationClose,
        AuditKind::BreakerOpened,
        AuditKind::BreakerRefused,
        AuditKind::ForeignStream,
        AuditKind::BusMismatch,
        AuditKind::RefreshRefused,
    ];

    /// Whether it is a security violation: a client or caller doing what it must not (another
    /// user's or a foreign stream, a stale id, a malformed or oversized frame, a close for
    /// repeated violations, a refused global broadcast). Limits, rate limits, breakers, refused
    /// refreshes and allowed global broadcasts are audited but are load or policy, not attacks;
    /// a bus mismatch is a driver fault. [`HubStats::security_violations`] counts these only,
    /// [`HubStats::audit_events`] every kind.
    ///
    /// [`HubStats::security_violations`]: crate::HubStats::security_violations
    /// [`HubStats::audit_events`]: crate::HubStats::audit_events
    #[must_use]
    pub fn is_security_violation(self) -> bool {
        matches!(
            self,
            AuditKind::ForeignStream
                | AuditKind::StaleConnId
                | AuditKind::MalformedFrame
                | AuditKind::OversizedFrame
                | AuditKind::ViolationClose
                | AuditKind::GlobalBroadcastDenied
        )
    }

    /// A short snake_case name, for logs and metric labels. A limit hit is `limit_` followed by
    /// the limit's name ([`LimitKind::as_str`]).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
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
                LimitKind::PresenceScopeSize => "limit_presence_scope_size",
                LimitKind::PresenceRemoteEntries => "limit_presence_remote_entries",
            },
            AuditKind::Flood => "flood",
            AuditKind::OversizedFrame => "oversized_frame",
            AuditKind::MalformedFrame => "malformed_frame",
            AuditKind::ViolationClose => "violation_close",
            AuditKind::BreakerOpened => "breaker_opened",
            AuditKind::BreakerRefused => "breaker_refused",
            AuditKind::ForeignStream => "foreign_stream",
            AuditKind::BusMismatch => "bus_mismatch",
            AuditKind::RefreshRefused => "refresh_refused",
        }
    }
}

/// Which limit was hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LimitKind {
    /// [`Config::max_connections`](crate::Config::max_connections).
    TotalConnections,
    /// [`Config::max_connections_per_tenant`](crate::Config::max_connections_per_tenant).
    TenantConnections,
    /// The tier's connections per user, rejected.
    UserConnections,
    /// The tier's connections per user, oldest evicted.
    UserConnectionsEvicted,
    /// [`Config::max_rooms_per_connection`](crate::Config::max_rooms_per_connection).
    RoomsPerConnection,
    /// [`Config::max_thread_subscriptions`](crate::Config::max_thread_subscriptions).
    ThreadSubscriptions,
    /// The tier's inbound message rate.
    MessageRate,
    /// The control-frame rate.
    ControlRate,
    /// [`Config::max_frame_bytes`](crate::Config::max_frame_bytes).
    FrameSize,
    /// [`PresenceConfig::max_members`](crate::PresenceConfig::max_members): a presence scope
    /// grew too large for diffs.
    PresenceScopeSize,
    /// [`PresenceConfig::max_remote_entries`](crate::PresenceConfig::max_remote_entries):
    /// cluster mode, other nodes' presence entries left out of a scope.
    PresenceRemoteEntries,
}

impl LimitKind {
    /// Every limit, so that an exporter can publish each series before it is first hit.
    pub const ALL: &'static [LimitKind] = &[
        LimitKind::TotalConnections,
        LimitKind::TenantConnections,
        LimitKind::UserConnections,
        LimitKind::UserConnectionsEvicted,
        LimitKind::RoomsPerConnection,
        LimitKind::ThreadSubscriptions,
        LimitKind::MessageRate,
        LimitKind::ControlRate,
        LimitKind::FrameSize,
        LimitKind::PresenceScopeSize,
        LimitKind::PresenceRemoteEntries,
    ];

    /// A short snake_case name, for metric labels and logs (the field of
    /// [`LimitCounts`](crate::LimitCounts) that counts it).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            LimitKind::TotalConnections => "total_connections",
            LimitKind::TenantConnections => "tenant_connections",
            LimitKind::UserConnections => "user_connections",
            LimitKind::UserConnectionsEvicted => "user_connections_evicted",
            LimitKind::RoomsPerConnection => "rooms_per_connection",
            LimitKind::ThreadSubscriptions => "thread_subscriptions",
            LimitKind::MessageRate => "message_rate",
            LimitKind::ControlRate => "control_rate",
            LimitKind::FrameSize => "frame_size",
            LimitKind::PresenceScopeSize => "presence_scope_size",
            LimitKind::PresenceRemoteEntries => "presence_remote_entries",
        }
    }
}

/// Where a user's reconnect breaker stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BreakerState {
    /// Connections are admitted.
    Closed,
    /// Connections are refused until `until`.
    Open {
        /// When it turns half-open.
        until: Instant,
    },
    /// One probe connection is admitted; `probe` is it, once it exists.
    HalfOpen {
        /// The probe, if one is open.
        probe: Option<ConnId>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snake_case(name: &str) -> bool {
        !name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase() || c == '_')
    }

    #[test]
    fn names_are_distinct_snake_case_and_match_the_server_tables() {
        let mut names: Vec<&str> = ClosedBy::ALL.iter().map(|b| b.as_str()).collect();
        names.extend(LimitKind::ALL.iter().map(|l| l.as_str()));
        names.extend(AuditKind::ALL.iter().map(|a| a.as_str()));
        assert!(names.iter().all(|n| snake_case(n)), "{names:?}");
        let mut unique = names.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "a name is used twice");
        // The names the server's /metrics and audit log already publish.
        assert_eq!(ClosedBy::Hub(CloseReason::SlowConsumer).as_str(), "slow_consumer");
        assert_eq!(ClosedBy::Transport(DisconnectReason::Clean).as_str(), "client_clean");
        assert_eq!(ClosedBy::Transport(DisconnectReason::Abnormal).as_str(), "client_abnormal");
        assert_eq!(LimitKind::UserConnectionsEvicted.as_str(), "user_connections_evicted");
        assert_eq!(AuditKind::LimitHit(LimitKind::FrameSize).as_str(), "limit_frame_size");
        assert_eq!(AuditKind::StaleConnId.as_str(), "stale_conn_id");
        for &l in LimitKind::ALL {
            assert!(AuditKind::ALL.contains(&AuditKind::LimitHit(l)), "{l:?} is listed");
            assert_eq!(AuditKind::LimitHit(l).as_str(), format!("limit_{}", l.as_str()));
        }
    }
}
