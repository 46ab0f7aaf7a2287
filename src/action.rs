//! What the hub asks the caller to do: drained with [`Hub::poll_action`](crate::Hub::poll_action).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Tier;
use crate::ids::{ConnId, TenantId, ThreadId, UserId};
use crate::limits::BreakerState;
use crate::stats::HubStats;

/// A serialized text frame, shared by every recipient of one publish.
///
/// Cloning is a reference-count increment: a fan-out to ten thousand connections holds one copy of
/// the bytes. It is valid UTF-8 JSON; send it as a WebSocket text frame. `AsRef<[u8]>` lets a
/// transport wrap it without copying (for example `bytes::Bytes::from_owner(frame)`).
#[derive(Clone, PartialEq, Eq)]
pub struct Frame(Arc<str>);

impl Frame {
    pub(crate) fn new(text: &str) -> Self {
        Self(Arc::from(text))
    }

    /// The frame's JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Length in bytes; this is what [`Hub::written`](crate::Hub::written) counts.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the frame is empty (never true for frames the hub builds).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether two frames share one buffer (true for every recipient of one publish).
    pub fn ptr_eq(a: &Frame, b: &Frame) -> bool {
        Arc::ptr_eq(&a.0, &b.0)
    }
}

impl AsRef<[u8]> for Frame {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl AsRef<str> for Frame {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

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
}

impl CloseReason {
    /// The WebSocket close code (4000–4999, the range reserved for applications).
    pub fn code(self) -> u16 {
        match self {
            CloseReason::HeartbeatTimeout => 4000,
            CloseReason::SessionExpired => 4001,
            CloseReason::Replaced => 4002,
            CloseReason::SlowConsumer => 4003,
            CloseReason::ProtocolViolation => 4004,
            CloseReason::Kicked => 4005,
            CloseReason::ServerShutdown => 4006,
        }
    }

    /// Whether a well-behaved client should reconnect after this close.
    pub fn reconnect(self) -> bool {
        match self {
            CloseReason::HeartbeatTimeout
            | CloseReason::SessionExpired
            | CloseReason::SlowConsumer
            | CloseReason::ServerShutdown => true,
            CloseReason::Replaced | CloseReason::ProtocolViolation | CloseReason::Kicked => false,
        }
    }

    /// A short snake_case name, used as the close frame's reason text and in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::HeartbeatTimeout => "heartbeat_timeout",
            CloseReason::SessionExpired => "session_expired",
            CloseReason::Replaced => "replaced",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::ProtocolViolation => "protocol_violation",
            CloseReason::Kicked => "kicked",
            CloseReason::ServerShutdown => "server_shutdown",
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

/// How a connection ended, as counted in [`HubStats`] and reported in
/// [`MetricEvent::ConnectionClosed`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClosedBy {
    /// The hub closed it.
    Hub(CloseReason),
    /// The transport reported it gone.
    Transport(DisconnectReason),
}

impl ClosedBy {
    /// Every way a connection can end (for exporting `HubStats::closed_by` as labelled metrics).
    pub const ALL: [ClosedBy; 9] = [
        ClosedBy::Hub(CloseReason::HeartbeatTimeout),
        ClosedBy::Hub(CloseReason::SessionExpired),
        ClosedBy::Hub(CloseReason::Replaced),
        ClosedBy::Hub(CloseReason::SlowConsumer),
        ClosedBy::Hub(CloseReason::ProtocolViolation),
        ClosedBy::Hub(CloseReason::Kicked),
        ClosedBy::Hub(CloseReason::ServerShutdown),
        ClosedBy::Transport(DisconnectReason::Clean),
        ClosedBy::Transport(DisconnectReason::Abnormal),
    ];
}

/// The authenticated identity of a client message, stamped by the hub from the connection's
/// binding. Trust this, never ids found inside the message's payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// The connection's tenant.
    pub tenant: TenantId,
    /// The connection's user.
    pub user: UserId,
    /// The connection.
    pub conn: ConnId,
}

/// A validated, rate-limited client `message`, for the application.
#[derive(Clone, Debug, PartialEq)]
pub struct Inbound {
    /// Who sent it (authenticated).
    pub from: Origin,
    /// The thread the client named, if any.
    pub thread: Option<ThreadId>,
    /// The message's `data` (JSON `null` if absent). Untrusted content.
    pub data: serde_json::Value,
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
}

/// A security-relevant event. Log it; alert on spikes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEvent {
    /// What happened.
    pub kind: AuditKind,
    /// The connection involved, if one is (for a stale id: the id that was presented).
    pub conn: Option<ConnId>,
    /// The tenant involved, if known.
    pub tenant: Option<TenantId>,
    /// The user involved, if known.
    pub user: Option<UserId>,
}

/// A lifecycle metric, pushed as it happens (the same numbers accumulate in [`HubStats`]).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum MetricEvent {
    /// A connection opened.
    ConnectionOpened {
        /// The connection.
        conn: ConnId,
        /// Its tenant.
        tenant: TenantId,
        /// Its user.
        user: UserId,
        /// The principal's tier.
        tier: Tier,
    },
    /// A connection closed.
    ConnectionClosed {
        /// The connection.
        conn: ConnId,
        /// Its tenant.
        tenant: TenantId,
        /// Its user.
        user: UserId,
        /// How long it was open.
        lifetime: Duration,
        /// Why it ended.
        reason: ClosedBy,
    },
    /// A user's state was created by its first connection.
    UserCreated {
        /// The tenant.
        tenant: TenantId,
        /// The user.
        user: UserId,
    },
    /// A detached user's retention ran out; its state is gone.
    UserRetired {
        /// The tenant.
        tenant: TenantId,
        /// The user.
        user: UserId,
    },
    /// A limit refused something.
    LimitRejected {
        /// Which limit.
        limit: LimitKind,
    },
    /// A user's reconnect breaker changed state.
    BreakerChanged {
        /// The tenant.
        tenant: TenantId,
        /// The user.
        user: UserId,
        /// The new state.
        state: BreakerState,
    },
    /// A periodic snapshot ([`Config::snapshot_interval`](crate::Config::snapshot_interval)).
    Snapshot(Box<HubStats>),
}

/// One thing for the caller to do. Drain them in order with
/// [`Hub::poll_action`](crate::Hub::poll_action) after every call into the hub.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Action {
    /// Write this text frame to this connection, then report the bytes with
    /// [`Hub::written`](crate::Hub::written) once the transport flushed them.
    Deliver {
        /// The connection.
        conn: ConnId,
        /// The frame (shared among recipients).
        frame: Frame,
    },
    /// Send a transport-level ping to this connection.
    Ping {
        /// The connection.
        conn: ConnId,
    },
    /// Close this connection's transport with `reason.code()`. The hub has already forgotten it.
    Close {
        /// The connection.
        conn: ConnId,
        /// Why.
        reason: CloseReason,
    },
    /// A client message for the application.
    Inbound(Box<Inbound>),
    /// A security-relevant event.
    Audit(AuditEvent),
    /// A lifecycle metric.
    Metric(MetricEvent),
}
