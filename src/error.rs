//! Errors as values. The caller's misuse ([`ConnError`]: an id that is unknown, closed or stale)
//! is kept apart from a peer's misbehaviour ([`PeerError`]: a malformed, oversized or flooding
//! client), and every limit has an error of its own.

use std::time::Duration;

use thiserror::Error;

use crate::cluster::BusFailure;
use crate::config::Tier;

/// The caller addressed a connection that is not open. This is the caller's bug or race, never
/// the peer's doing.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnError {
    /// No open connection has this id. `recently_closed` is true if it was open within
    /// [`Config::tombstone_ttl`](crate::Config::tombstone_ttl): the usual race between a close the
    /// hub decided and an event the transport had already queued.
    #[error("unknown connection (recently closed: {recently_closed})")]
    Unknown {
        /// Whether the id belonged to a connection that closed recently.
        recently_closed: bool,
    },
    /// The id is from an earlier occupant of a slot that now holds another connection. It was
    /// rejected and audited ([`AuditKind::StaleConnId`](crate::AuditKind::StaleConnId)).
    #[error("stale connection id: its slot now belongs to another connection")]
    Stale,
}

/// A connection was refused; nothing was created.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectError {
    /// Cluster mode: the bus is down and this node does not hold the streams the connection
    /// needs, so their positions cannot be known. Retry after a backoff (an HTTP front end
    /// answers 503).
    #[error("the cluster bus is unavailable")]
    Unavailable,
    /// The hub holds [`Config::max_connections`](crate::Config::max_connections) connections.
    #[error("hub connection limit reached ({limit})")]
    TooManyConnections {
        /// The limit.
        limit: u32,
    },
    /// The tenant holds its maximum of connections.
    #[error("tenant connection limit reached ({limit})")]
    TenantLimit {
        /// The limit.
        limit: u32,
    },
    /// The user holds its tier's maximum of connections and the policy is
    /// [`UserLimitPolicy::Reject`](crate::UserLimitPolicy::Reject).
    #[error("per-user connection limit of tier {tier:?} reached ({limit})")]
    UserLimit {
        /// The principal's tier.
        tier: Tier,
        /// The tier's limit.
        limit: u32,
    },
    /// The principal's `expires_at` is not in the future.
    #[error("the session has already expired")]
    SessionExpired,
    /// The user's reconnect breaker is open: it failed too often recently. Retry after the given
    /// time.
    #[error("reconnect breaker open; retry after {retry_after:?}")]
    BreakerOpen {
        /// When a connect may succeed again.
        retry_after: Duration,
    },
    /// An identifier in the principal is empty.
    #[error("principal has an empty {field}")]
    EmptyId {
        /// Which identifier.
        field: &'static str,
    },
}

/// A client frame was refused. The hub has already queued an `error` frame for the client with
/// [`code`](PeerError::code); after [`Config::max_violations`](crate::Config::max_violations) of
/// these in a row it also closes the connection.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PeerError {
    /// The frame is larger than [`Config::max_frame_bytes`](crate::Config::max_frame_bytes).
    #[error("frame of {size} bytes exceeds the limit of {limit}")]
    FrameTooLarge {
        /// The frame's size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The frame is not a JSON object (or not valid UTF-8).
    #[error("malformed frame at line {line}, column {column}")]
    Malformed {
        /// Where parsing failed (1-based).
        line: usize,
        /// Where parsing failed (1-based).
        column: usize,
    },
    /// The frame has no string `type` field.
    #[error("frame has no `type`")]
    MissingType,
    /// The frame's `type` is not one the protocol knows.
    #[error("unknown frame type")]
    UnknownType,
    /// A field the frame type requires is missing or has the wrong JSON type.
    #[error("frame field `{field}` is missing or invalid")]
    InvalidField {
        /// The field's name.
        field: &'static str,
    },
    /// The connection sent `message` frames faster than its tier allows, or control frames faster
    /// than the control allowance.
    #[error("rate limit exceeded")]
    RateLimited,
    /// The connection already resumed once.
    #[error("the connection already resumed")]
    AlreadyResumed,
    /// A `presence` request for a scope the connection is not in, or whose presence is off.
    #[error("no presence for this scope")]
    NoPresence,
    /// The application refused a `refresh` token (the session is unchanged).
    #[error("refresh refused: {why}")]
    RefreshRefused {
        /// Why, as the application said it.
        why: String,
    },
    /// A `history` request named a stream the connection does not have (another user's, a room it
    /// is not in, or nonsense). Audited as [`AuditKind::ForeignStream`](crate::AuditKind::ForeignStream);
    /// not a violation.
    #[error("no such stream for this connection")]
    UnknownStream,
    /// Cluster mode: a `history` request while the connection's previous one still waits for the
    /// log (one at a time).
    #[error("a history request is already waiting for the log")]
    HistoryBusy,
    /// `subscribe` would narrow the connection to more threads than allowed.
    #[error("thread subscription limit reached ({limit})")]
    TooManySubscriptions {
        /// The limit.
        limit: u32,
    },
}

impl PeerError {
    /// The machine-readable code sent to the client in the `error` frame.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            PeerError::FrameTooLarge { .. } => "frame_too_large",
            PeerError::Malformed { .. } => "malformed",
            PeerError::MissingType => "missing_type",
            PeerError::UnknownType => "unknown_type",
            PeerError::InvalidField { .. } => "invalid_field",
            PeerError::RateLimited => "rate_limited",
            PeerError::TooManySubscriptions { .. } => "too_many_subscriptions",
            PeerError::AlreadyResumed => "already_resumed",
            PeerError::NoPresence => "no_presence",
            PeerError::RefreshRefused { .. } => "refresh_refused",
            PeerError::UnknownStream => "unknown_stream",
            PeerError::HistoryBusy => "history_busy",
        }
    }
}

/// Why [`Hub::receive`](crate::Hub::receive) refused a frame.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReceiveError {
    /// The connection id is not open (caller's side).
    #[error(transparent)]
    Conn(#[from] ConnError),
    /// The client misbehaved (peer's side).
    #[error(transparent)]
    Peer(#[from] PeerError),
}

/// Why [`Hub::reply`](crate::Hub::reply) sent nothing.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReplyError {
    /// The connection is not open (it closed since its message arrived, or the id is stale).
    #[error(transparent)]
    Conn(#[from] ConnError),
    /// The message id is empty or longer than `Config::max_client_id_bytes` (a client's ids
    /// never are).
    #[error("reply id must be 1 to {limit} bytes")]
    InvalidId {
        /// `Config::max_client_id_bytes`.
        limit: usize,
    },
    /// An error reply's `code` is empty or over 64 bytes, or its `message` over 1,024.
    #[error("an error reply needs a code of 1 to 64 bytes and a message of at most 1024")]
    InvalidError,
    /// `data` nests deeper than [`MAX_DATA_DEPTH`](crate::MAX_DATA_DEPTH).
    #[error("reply data nests deeper than {limit} levels")]
    TooDeep {
        /// [`MAX_DATA_DEPTH`](crate::MAX_DATA_DEPTH).
        limit: usize,
    },
    /// The frame would be larger than `Config::max_unwritten_bytes`: no connection can take it.
    #[error("reply frame of {bytes} bytes exceeds {limit}")]
    TooLarge {
        /// The frame's size.
        bytes: u64,
        /// `Config::max_unwritten_bytes`.
        limit: u64,
    },
}

/// Why [`Hub::publish`](crate::Hub::publish) refused an envelope. Nothing was delivered.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PublishError {
    /// `Target::Connection` names a connection that is not open.
    #[error(transparent)]
    Conn(#[from] ConnError),
    /// `Target::Everyone` while [`Config::allow_global_broadcast`](crate::Config::allow_global_broadcast)
    /// is off. Audited.
    #[error("global broadcast is disabled")]
    GlobalBroadcastDisabled,
    /// A custom event kind is empty or uses a name the protocol reserves
    /// ([`EventKind::RESERVED`](crate::EventKind::RESERVED)).
    #[error("invalid event kind: custom kinds must be non-empty and not reserved")]
    InvalidKind,
    /// `Target::Thread` names one thread and the envelope's `thread` another.
    #[error("envelope thread differs from the target's thread")]
    ThreadMismatch,
    /// `Target::Run` names one run and the envelope's `run` another.
    #[error("envelope run differs from the target's run")]
    RunMismatch,
    /// The event's frame would be larger than
    /// [`Config::max_unwritten_bytes`](crate::Config::max_unwritten_bytes): no connection could
    /// ever take it, so it is refused before anything is kept or delivered (an HTTP front end
    /// answers 413). Raise `max_unwritten_bytes` (and `retention.max_bytes` /
    /// `max_buffered_bytes` for it to be recoverable) to send larger events.
    #[error("event frame of {bytes} bytes exceeds the unwritten limit of {limit}")]
    TooLarge {
        /// The size of the frame the event would have.
        bytes: u64,
        /// [`Config::max_unwritten_bytes`](crate::Config::max_unwritten_bytes).
        limit: u64,
    },
    /// The event's data nests arrays and objects deeper than
    /// [`MAX_DATA_DEPTH`](crate::MAX_DATA_DEPTH) levels (the limit serde_json's parser applies):
    /// it is refused before any recursive walk, so no payload can exhaust the stack.
    #[error("event data nests deeper than {limit} levels")]
    TooDeep {
        /// [`MAX_DATA_DEPTH`](crate::MAX_DATA_DEPTH).
        limit: usize,
    },
    /// Cluster mode: the append could not be issued (the bus is down, or too many operations are
    /// in flight). Nothing was appended; retrying later may succeed.
    #[error("cluster bus: {0}")]
    Bus(#[from] BusFailure),
    /// Cluster mode: [`Target::Everyone`](crate::Target::Everyone) would need every tenant of
    /// every node; publish to each tenant instead.
    #[error("Target::Everyone is not available in cluster mode")]
    EveryoneInCluster,
}

/// Why [`Hub::join`](crate::Hub::join) refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RoomError {
    /// The connection id is not open.
    #[error(transparent)]
    Conn(#[from] ConnError),
    /// The connection is in [`Config::max_rooms_per_connection`](crate::Config::max_rooms_per_connection)
    /// rooms already.
    #[error("room limit per connection reached ({limit})")]
    TooManyRooms {
        /// The limit.
        limit: u32,
    },
}

/// Why [`Hub::refresh`](crate::Hub::refresh) refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RefreshError {
    /// The connection id is not open.
    #[error(transparent)]
    Conn(#[from] ConnError),
    /// The new expiry is not in the future; the session keeps its old expiry.
    #[error("new session expiry is not in the future")]
    ExpiryInPast,
}
