//! What the hub asks the caller to do: drained with [`Hub::poll_action`](crate::Hub::poll_action).

use std::time::{Duration, Instant};

use crate::cluster::{BusOp, OpId, PublishOutcome};
use crate::config::Tier;
use crate::frame::Frame;
use crate::ids::{ConnId, TenantId, ThreadId, UserId};
use crate::kinds::{AuditKind, BreakerState, CloseReason, ClosedBy, LimitKind};
use crate::labels::Labels;
use crate::stats::HubStats;

/// The authenticated identity of a client message, stamped by the hub from the connection's
/// binding. Trust this, never ids found inside the message's payload.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Origin {
    /// The connection's tenant.
    pub tenant: TenantId,
    /// The connection's user.
    pub user: UserId,
    /// The connection.
    pub conn: ConnId,
    /// The connection's labels, as the principal carried them at connect (say, the session
    /// id): for the application's logs and tracing, not for deciding who the sender is.
    pub labels: Labels,
}

/// A validated, rate-limited client `message`, for the application.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Inbound {
    /// Who sent it (authenticated).
    pub from: Origin,
    /// The thread the client named, if any.
    pub thread: Option<ThreadId>,
    /// The message's `data` (JSON `null` if absent). Untrusted content.
    pub data: serde_json::Value,
    /// The client's id for this message, if it wants an answer: reply with
    /// [`Hub::reply`](crate::Hub::reply) on `from.conn`. Untrusted, at most the id length limit.
    pub id: Option<std::sync::Arc<str>>,
}

/// A client's request to extend its session ([`Action::RefreshRequested`]). The token is
/// untrusted text: verify it, never log it.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RefreshRequest {
    /// The connection that sent it, and whose session it would extend.
    pub conn: ConnId,
    /// The connection's tenant.
    pub tenant: TenantId,
    /// The connection's user.
    pub user: UserId,
    /// When its session ends now (`None`: never).
    pub expires_at: Option<Instant>,
    /// The new token, as the client sent it.
    pub token: String,
}

impl std::fmt::Debug for RefreshRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token: debug output ends up in logs.
        f.debug_struct("RefreshRequest")
            .field("conn", &self.conn)
            .field("tenant", &self.tenant)
            .field("user", &self.user)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// A security-relevant event. Log it; alert on spikes.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct AuditEvent {
    /// What happened.
    pub kind: AuditKind,
    /// The connection involved, if one is (for a stale id: the id that was presented).
    pub conn: Option<ConnId>,
    /// The tenant involved, if known.
    pub tenant: Option<TenantId>,
    /// The user involved, if known.
    pub user: Option<UserId>,
    /// The labels of the connection involved (or of the principal a connect was refused for);
    /// empty when no connection is, or when the id presented was stale (the labels of whoever
    /// holds its slot now are not the presenter's).
    pub labels: Labels,
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
///
/// Every action is 32 bytes: a fan-out queues one [`Action::Deliver`] per recipient, and each is
/// moved into the queue, out of it and into the caller, so the rare variants whose contents are
/// larger (audits, metrics, bus operations, publish outcomes, inbound messages, refresh requests)
/// carry them boxed.
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
    /// A security-relevant event (boxed: see the enum's docs).
    Audit(Box<AuditEvent>),
    /// A lifecycle metric (boxed: see the enum's docs).
    Metric(Box<MetricEvent>),
    /// A client sent a new token for its session (`refresh` frame). Verify it (same tenant and
    /// user, a later expiry) and answer with [`Hub::answer_refresh`](crate::Hub::answer_refresh).
    RefreshRequested(Box<RefreshRequest>),
    /// Cluster mode: perform this operation on the bus, then report its reply with
    /// [`Hub::bus_reply`](crate::Hub::bus_reply) (see [`BusOp`]; boxed: see the enum's docs).
    Bus(Box<BusOp>),
    /// Cluster mode: what became of a [`Hub::publish`](crate::Hub::publish) once the bus
    /// answered ([`Published::op`](crate::Published::op) names it).
    Published {
        /// The append operation the publish issued.
        op: OpId,
        /// Appended, a duplicate, or failed (boxed: see the enum's docs).
        outcome: Box<PublishOutcome>,
    },
}

#[cfg(test)]
mod tests {
    use super::Action;

    #[test]
    fn an_action_is_four_words() {
        // A fan-out moves one `Deliver` per recipient three times (into the queue, out of it,
        // into the caller): a variant that grows the enum makes every one of those moves larger.
        assert_eq!(size_of::<Action>(), 32);
    }
}
