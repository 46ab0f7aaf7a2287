//! Cluster mode's vocabulary: what a hub that is one node of many says to the bus it shares with
//! the others, and what it is told back (DESIGN §11).
//!
//! The core stays sans-io. A clustered hub never mints stream positions: it emits [`BusOp`]s
//! (drained as [`Action::Bus`](crate::Action::Bus)), and the driver performs them on an engine
//! (Redis, or the model bus of the test kit) and feeds the outcome back with
//! [`Hub::bus_reply`](crate::Hub::bus_reply), [`Hub::bus_message`](crate::Hub::bus_message),
//! [`Hub::bus_down`](crate::Hub::bus_down) and [`Hub::bus_up`](crate::Hub::bus_up).
//!
//! The engine must provide, per stream (named by a [`StreamKey`]):
//! - a **log** of entries `(seq, payload)` with an **epoch**: appending assigns `seq = top + 1`
//!   atomically with the append (and sets a fresh epoch if the stream has none), trims the log to
//!   the count it is given, expires an idle stream after the time it is given, and publishes the
//!   entry on the stream's live channel;
//! - a **live channel** that delivers each entry to the stream's subscribers in seq order (it may
//!   lose messages: the hub repairs gaps from the log);
//! - **fetch**: the entries after a seq together with the top, in one atomic step;
//! - **tops**: the top `(epoch, seq)` of many streams;
//! - **rotate**: give a stream a new epoch when its current one is the one named (used when a
//!   failover lost the tail of a log, so that positions handed out before cannot be confused with
//!   the ones handed out again).
//!
//! - **presence** (DESIGN §12): per scope (a tenant's or a room's stream key) and per node, a set
//!   of users with their metadata that expires as a whole `ttl` after its last write unless it is
//!   written again; an update writes a node's set and publishes a signal on the scope's channel in
//!   one atomic step, a refresh extends many of a node's sets (and publishes their signals) in one
//!   batch, and a read returns every node's unexpired set of a scope with the time it has left.
//!
//! Payloads are opaque text to the driver: it stores and forwards them byte for byte.

mod node;
mod payload;
pub(crate) mod presence;
mod seq;
mod signal;
pub(crate) mod sweep;

pub(crate) use node::{Node, Pending, Tracked};
pub(crate) use payload::{Decoded, Visibility, encode};
pub(crate) use seq::{Arrival, Fetched, Sequencer};

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::ids::{RoomId, StreamName, StreamPos, TenantId, UserId};

/// A user and its presence metadata (JSON object text), as presence operations carry them.
pub type PresenceEntry = (UserId, Option<Arc<str>>);

/// The name of one node of a cluster, unique among the nodes sharing a bus (for example a host
/// name plus a process id, or a random id chosen at start).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(Arc<str>);

impl NodeId {
    /// A node id. It must be non-empty ([`Config::validate`](crate::Config::validate) checks).
    pub fn new(id: impl Into<Arc<str>>) -> Self {
        Self(id.into())
    }

    /// The id's text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({:?})", &*self.0)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for NodeId {
    fn from(id: &str) -> Self {
        Self::new(id)
    }
}

/// Turns a [`Hub`](crate::Hub) into one node of a cluster ([`Config::cluster`](crate::Config::cluster)).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ClusterConfig {
    /// This node's name.
    pub node: NodeId,
    /// How long the hub waits for the reply to a bus operation before it counts it as failed
    /// (retryable). A reply that comes later is ignored and counted.
    pub op_timeout: Duration,
    /// Bus operations in flight at once. Nothing waits in a queue beyond it: a publish fails
    /// with [`BusFailure::Overloaded`] (`PublishError::Bus`); a connection whose lease or
    /// subscription cannot be issued is closed with `CloseReason::Unavailable`; a resume fetch
    /// that cannot be issued leaves that stream to what the local buffer holds (it is reported
    /// `recovered: false` if the buffer does not cover it).
    pub max_inflight_ops: u32,
    /// Live messages held per stream while a gap before them is repaired from the log. Past it,
    /// the repair gives up: the stream's connections get a `resync` notice and live delivery
    /// continues after the held messages.
    pub max_held_per_stream: u32,
    /// Entries asked for per fetch.
    pub fetch_limit: u32,
    /// How often (with ±50 % jitter) the node reads the tops of the streams it holds, to find a
    /// last message that the live channel lost. `None`: never.
    pub top_check_interval: Option<Duration>,
    /// While the bus is down, how long a `resume` waits for it before it is answered
    /// `recovered: false` for the streams that need the log.
    pub resume_wait: Duration,
    /// How long a connection's lease (its place in the user's cluster-wide connection quota)
    /// lives without a renewal. The node renews each of its leases every third of it, the users
    /// spread over that period in small slices (not one burst); the leases of a node that died
    /// expire after at most this long.
    pub lease_ttl: Duration,
    /// Presence (with [`Config::presence`](crate::Config::presence)): how long this node's
    /// entries on the bus live without a refresh. The node refreshes each scope's entries every
    /// third of it, the scopes spread over that period in small slices; the users of a node that
    /// died (or lost the bus) leave the other nodes' presence at most this long after its last
    /// refresh, plus one `flush_interval`.
    pub presence_ttl: Duration,
}

impl ClusterConfig {
    /// Cluster mode for the node `node`, with defaults for the rest.
    pub fn new(node: impl Into<NodeId>) -> Self {
        Self {
            node: node.into(),
            op_timeout: Duration::from_secs(3),
            max_inflight_ops: 10_000,
            max_held_per_stream: 1_000,
            fetch_limit: 1_000,
            top_check_interval: Some(Duration::from_secs(30)),
            resume_wait: Duration::from_secs(5),
            lease_ttl: Duration::from_secs(30),
            presence_ttl: Duration::from_secs(15),
        }
    }
}

impl From<NodeId> for ClusterConfig {
    fn from(node: NodeId) -> Self {
        Self::new(node)
    }
}

/// Which stream of a tenant.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum StreamScope {
    /// A user's stream (targets `User`, `Thread`, `Connection`).
    User(UserId),
    /// A room's stream.
    Room(RoomId),
    /// The tenant's broadcast stream.
    Tenant,
}

/// A stream, named across the cluster: a tenant plus which of its streams. The driver derives its
/// engine names from this (with length-prefixed ids, so that no two keys share a name).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamKey {
    /// The tenant.
    pub tenant: TenantId,
    /// Which of the tenant's streams.
    pub scope: StreamScope,
}

impl StreamKey {
    /// A user's stream.
    pub fn user(tenant: impl Into<TenantId>, user: impl Into<UserId>) -> Self {
        Self { tenant: tenant.into(), scope: StreamScope::User(user.into()) }
    }

    /// A room's stream.
    pub fn room(tenant: impl Into<TenantId>, room: impl Into<RoomId>) -> Self {
        Self { tenant: tenant.into(), scope: StreamScope::Room(room.into()) }
    }

    /// A tenant's broadcast stream.
    pub fn tenant(tenant: impl Into<TenantId>) -> Self {
        Self { tenant: tenant.into(), scope: StreamScope::Tenant }
    }

    /// The stream's name on the wire, as the tenant's clients see it.
    #[must_use]
    pub fn name(&self) -> StreamName {
        match &self.scope {
            StreamScope::User(_) => StreamName::User,
            StreamScope::Room(room) => StreamName::Room(room.clone()),
            StreamScope::Tenant => StreamName::Tenant,
        }
    }
}

/// One connection's place in its user's cluster-wide connection quota: the node and the
/// connection ([`ConnId::to_u64`](crate::ConnId::to_u64)).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseHolder {
    /// The node the connection is on.
    pub node: NodeId,
    /// The connection, as [`ConnId::to_u64`](crate::ConnId::to_u64).
    pub conn: u64,
}

/// Identifies one bus operation: a generation (bumped each time the bus comes back up, so a reply
/// from before an outage can never be taken for one after it) and a number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OpId {
    generation: u32,
    n: u64,
}

impl OpId {
    pub(crate) fn new(generation: u32, n: u64) -> Self {
        Self { generation, n }
    }

    /// The bus generation the operation was issued in.
    #[must_use]
    pub fn generation(self) -> u32 {
        self.generation
    }

    /// The operation's number (unique within the hub).
    #[must_use]
    pub fn number(self) -> u64 {
        self.n
    }

    /// Builds an arbitrary id. Only for fuzzers and reference models.
    #[cfg(any(feature = "fuzzing", fuzzing))]
    #[must_use]
    pub fn from_raw(generation: u32, n: u64) -> Self {
        Self { generation, n }
    }
}

impl fmt::Display for OpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "g{}.{}", self.generation, self.n)
    }
}

/// One thing for the driver to do on the bus. Every variant with an `op` expects exactly one
/// [`Hub::bus_reply`](crate::Hub::bus_reply) (a reply after the hub's deadline is ignored).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BusOp {
    /// Subscribe to the stream's live channel, then reply [`BusReply::Subscribed`] with its top
    /// (read after the subscription is active, so nothing between the two is missed).
    Subscribe {
        /// The operation.
        op: OpId,
        /// The stream.
        stream: StreamKey,
    },
    /// Unsubscribe from the stream's live channel. No reply.
    Unsubscribe {
        /// The stream.
        stream: StreamKey,
    },
    /// Append `payload` to the stream's log atomically with the next seq (setting an epoch if the
    /// stream has none), keep at most `keep` entries, expire the stream after `ttl` without
    /// appends, and publish the entry on its live channel. With an idempotency key that was seen
    /// within `ttl`, append nothing and reply [`BusReply::Duplicate`] with the first position.
    Append {
        /// The operation.
        op: OpId,
        /// The stream.
        stream: StreamKey,
        /// The message, opaque to the driver.
        payload: Arc<str>,
        /// The publisher's idempotency key, if any.
        idempotency_key: Option<Arc<str>>,
        /// Entries to keep in the log.
        keep: u32,
        /// How long an idle stream (and an idempotency key) lives.
        ttl: Duration,
    },
    /// Read the stream's top and at most `limit` entries with seqs after `after` in its current
    /// epoch, atomically; reply [`BusReply::Fetched`].
    Fetch {
        /// The operation.
        op: OpId,
        /// The stream.
        stream: StreamKey,
        /// Entries after this seq.
        after: u64,
        /// At most this many.
        limit: u32,
    },
    /// Read the tops of these streams; reply [`BusReply::Tops`] in the same order.
    Tops {
        /// The operation.
        op: OpId,
        /// The streams.
        streams: Vec<StreamKey>,
    },
    /// Give the stream a new epoch (seq 0) if its epoch is still `epoch`; reply
    /// [`BusReply::Rotated`] with the top after.
    Rotate {
        /// The operation.
        op: OpId,
        /// The stream.
        stream: StreamKey,
        /// The epoch that must be replaced.
        epoch: u64,
    },
    /// Take a lease for `holder` in the user's set (named by the user's stream key), atomically:
    /// drop the set's expired leases; if fewer than `limit` remain, add this one (expiring after
    /// `ttl`) and reply [`BusReply::Leased`] granted; if the set is full and `evict_oldest`,
    /// remove the oldest lease, add this one and name the removed holder; otherwise refuse.
    Lease {
        /// The operation.
        op: OpId,
        /// The user's stream key (the lease set's name).
        user: StreamKey,
        /// Who takes it.
        holder: LeaseHolder,
        /// The user's tier quota.
        limit: u32,
        /// Its lifetime without renewal.
        ttl: Duration,
        /// Whether a full set gives up its oldest lease instead of refusing.
        evict_oldest: bool,
    },
    /// Extend these leases by `ttl`, atomically per user: a lease the set no longer holds (it
    /// expired, or the engine restarted empty) is added back only while the set has fewer than
    /// its limit, else it is refused; reply [`BusReply::Renewed`] with the refused holders.
    Renew {
        /// The operation.
        op: OpId,
        /// The leases: the user, the holder, the user's tier quota.
        leases: Vec<(StreamKey, LeaseHolder, u32)>,
        /// Their new lifetime.
        ttl: Duration,
    },
    /// Drop a lease (its connection closed). No reply.
    Release {
        /// The user's stream key.
        user: StreamKey,
        /// The holder.
        holder: LeaseHolder,
    },
    /// Publish an unsequenced signal on the stream's live channel (not logged); every node
    /// subscribed gets it through [`Hub::bus_signal`](crate::Hub::bus_signal). No reply.
    Signal {
        /// The stream.
        stream: StreamKey,
        /// The signal, opaque to the driver.
        payload: Arc<str>,
    },
    /// Presence: write `node`'s set in the scope, atomically with publishing `signal` on the
    /// scope's channel (as [`BusOp::Signal`] does): with `replace`, the set becomes exactly
    /// `joins`; otherwise `leaves` are removed and `joins` added (or their metadata replaced).
    /// A set left non-empty lives `ttl` from now; an empty one is gone. Reply
    /// [`BusReply::PresenceWritten`].
    PresenceUpdate {
        /// The operation.
        op: OpId,
        /// The scope: a tenant's or a room's stream key.
        scope: StreamKey,
        /// The node whose set it is.
        node: NodeId,
        /// Whether the set is replaced (the node's first write to the scope, or a rewrite).
        replace: bool,
        /// Users added, with their metadata.
        joins: Vec<PresenceEntry>,
        /// Users removed.
        leaves: Vec<UserId>,
        /// The set's lifetime from now.
        ttl: Duration,
        /// Published on the scope's channel after the write, opaque to the driver.
        signal: Arc<str>,
    },
    /// Presence: for each scope, if `node`'s set there exists, let it live `ttl` from now and
    /// publish the scope's signal; if it does not (it expired, or the engine restarted empty),
    /// publish nothing and name the scope in the reply, [`BusReply::PresenceRefreshed`]. One
    /// batch per refresh period.
    PresenceRefresh {
        /// The operation.
        op: OpId,
        /// The node whose sets they are.
        node: NodeId,
        /// Their lifetime from now.
        ttl: Duration,
        /// The scopes, each with its signal.
        scopes: Vec<(StreamKey, Arc<str>)>,
    },
    /// Presence: every node's unexpired set in the scope, with the time each has left, at most
    /// `limit` users in all; reply [`BusReply::Presence`].
    PresenceRead {
        /// The operation.
        op: OpId,
        /// The scope.
        scope: StreamKey,
        /// The most users to return.
        limit: u32,
    },
}

impl BusOp {
    /// The operation's id, for the variants that expect a reply.
    #[must_use]
    pub fn op(&self) -> Option<OpId> {
        match self {
            BusOp::Subscribe { op, .. }
            | BusOp::Append { op, .. }
            | BusOp::Fetch { op, .. }
            | BusOp::Tops { op, .. }
            | BusOp::Rotate { op, .. }
            | BusOp::Lease { op, .. }
            | BusOp::Renew { op, .. }
            | BusOp::PresenceUpdate { op, .. }
            | BusOp::PresenceRefresh { op, .. }
            | BusOp::PresenceRead { op, .. } => Some(*op),
            BusOp::Unsubscribe { .. } | BusOp::Release { .. } | BusOp::Signal { .. } => None,
        }
    }
}

/// One log entry, as fetched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BusEntry {
    /// Its seq in the stream's current epoch.
    pub seq: u64,
    /// The payload, byte for byte as appended.
    pub payload: Arc<str>,
}

/// The successful outcome of a bus operation.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BusReply {
    /// The subscription is active; the stream's top (`epoch` 0 and `seq` 0 for a stream that has
    /// no epoch yet).
    Subscribed {
        /// The top.
        top: StreamPos,
    },
    /// The message was appended at this position.
    Appended {
        /// Its position.
        pos: StreamPos,
    },
    /// The idempotency key was already used; the message was appended before at this position.
    Duplicate {
        /// The first append's position.
        pos: StreamPos,
    },
    /// The top and the entries after the asked seq (ascending, contiguous from the first one the
    /// log still holds).
    Fetched {
        /// The top at the time of the read.
        top: StreamPos,
        /// The entries.
        entries: Vec<BusEntry>,
    },
    /// The tops, in the order asked.
    Tops(Vec<StreamPos>),
    /// The stream's top after a rotation (or the current top if the epoch had already changed).
    Rotated {
        /// The top.
        top: StreamPos,
    },
    /// The outcome of a [`BusOp::Lease`].
    Leased {
        /// Whether the lease was taken.
        granted: bool,
        /// The holder whose lease was removed to make room (`evict_oldest`).
        evicted: Option<LeaseHolder>,
    },
    /// The leases were renewed, except these (their connections are over the quota and close).
    Renewed {
        /// The holders whose leases could not be added back.
        refused: Vec<LeaseHolder>,
    },
    /// A [`BusOp::PresenceUpdate`] was written and its signal published.
    PresenceWritten,
    /// A [`BusOp::PresenceRefresh`] was done, except for these scopes, where the node's set was
    /// gone (nothing was published for them).
    PresenceRefreshed {
        /// The scopes whose set must be written again.
        missing: Vec<StreamKey>,
    },
    /// A [`BusOp::PresenceRead`]: each node's set in the scope.
    Presence {
        /// The nodes' sets.
        held: Vec<PresenceHeld>,
        /// Whether users were left out to stay within the read's `limit`.
        truncated: bool,
    },
}

/// One node's presence set in a scope, as a [`BusOp::PresenceRead`] found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PresenceHeld {
    /// The node.
    pub node: NodeId,
    /// How long the set has left to live without a refresh.
    pub ttl: Duration,
    /// Its users, with their metadata.
    pub users: Vec<PresenceEntry>,
}

/// Why a bus operation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BusFailure {
    /// It may succeed if tried again (the engine was unreachable, timed out, failed over).
    #[error("the bus operation failed and may be retried")]
    Retryable,
    /// It can never succeed as asked (for example the engine refused the script).
    #[error("the bus refused the operation")]
    Refused,
    /// The hub did not send it: the bus is down.
    #[error("the bus is down")]
    Down,
    /// The hub did not send it: too many operations are in flight.
    #[error("too many bus operations are in flight")]
    Overloaded,
}

impl BusFailure {
    /// Whether trying again later may succeed.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        !matches!(self, BusFailure::Refused)
    }
}

/// What became of a clustered publish ([`Action::Published`](crate::Action::Published)).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PublishOutcome {
    /// Appended at this position of this stream; every node delivers it when it comes back over
    /// the bus.
    Appended {
        /// The stream.
        stream: StreamKey,
        /// The position.
        pos: StreamPos,
    },
    /// The idempotency key was used before: nothing new was appended; this is the first append's
    /// position.
    Duplicate {
        /// The stream.
        stream: StreamKey,
        /// The first append's position.
        pos: StreamPos,
    },
    /// Not appended; the publisher may retry (with the same idempotency key, to be safe).
    Failed {
        /// The stream.
        stream: StreamKey,
        /// Why.
        failure: BusFailure,
    },
}
