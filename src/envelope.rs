//! What an application publishes: an [`Envelope`] of an [`EventKind`] for a [`Target`].

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use crate::ids::{ConnId, Role, RoomId, RunId, TenantId, ThreadId, UserId};
use crate::payload::{Payload, RawData};

/// What an event is. The five agent events have fixed wire names; `Custom` carries the
/// application's own.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EventKind {
    /// `agent_started`: an agent run began.
    AgentStarted,
    /// `agent_thinking`: progress while the agent reasons. The only low-priority kind: under
    /// backpressure it may be skipped (and counted).
    AgentThinking,
    /// `tool_executing`: the agent called a tool.
    ToolExecuting,
    /// `tool_completed`: a tool returned.
    ToolCompleted,
    /// `agent_completed`: the run finished.
    AgentCompleted,
    /// An application-defined event type. Its name must not be one of the protocol's own frame
    /// types (see [`EventKind::RESERVED`]). Critical, like the agent events but `agent_thinking`.
    Custom(Cow<'static, str>),
    /// An application-defined event type of [`Priority::Low`]: like `agent_thinking`, it may be
    /// skipped (and counted in the next `skipped` notice) for a connection that is behind; for an
    /// application's own progress events. On the wire it is its name, like [`EventKind::Custom`].
    CustomDroppable(Cow<'static, str>),
}

/// The application's answer to a client `message` that carried an `id` ([`Hub::reply`](crate::Hub::reply)).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Reply {
    /// It worked: `data` (redacted like an event's; `null` sends no `data` key).
    Data(Value),
    /// It did not: an application-defined `code` (1–64 bytes) and a human `message` (at most
    /// 1,024 bytes).
    Error {
        /// A short, stable code for the client to branch on.
        code: String,
        /// What happened.
        message: String,
    },
}

/// How much an event matters under pressure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    /// May be skipped for a connection that is behind.
    Low,
    /// Delivered in order, or the connection is closed so that the client resumes.
    Critical,
}

impl EventKind {
    /// Frame types a custom kind may not use.
    pub const RESERVED: &'static [&'static str] = &[
        "agent_started",
        "agent_thinking",
        "tool_executing",
        "tool_completed",
        "agent_completed",
        "connected",
        "resumed",
        "refresh_required",
        "error",
        "pong",
        "ping",
        "subscribe",
        "unsubscribe",
        "message",
        "resume",
        "skipped",
        "joined",
        "left",
        "resync",
        "presence",
        "presence_diff",
        "reply",
        "refreshed",
        "refresh",
        "history",
    ];

    /// A custom kind.
    pub fn custom(name: impl Into<Cow<'static, str>>) -> Self {
        EventKind::Custom(name.into())
    }

    /// A custom kind that may be skipped under pressure ([`EventKind::CustomDroppable`]).
    pub fn custom_droppable(name: impl Into<Cow<'static, str>>) -> Self {
        EventKind::CustomDroppable(name.into())
    }

    /// A custom kind of the given priority: [`EventKind::Custom`] for `Critical`,
    /// [`EventKind::CustomDroppable`] for `Low`.
    pub fn custom_with_priority(name: impl Into<Cow<'static, str>>, priority: Priority) -> Self {
        match priority {
            Priority::Critical => EventKind::Custom(name.into()),
            Priority::Low => EventKind::CustomDroppable(name.into()),
        }
    }

    /// The kind with this wire name: one of the five agent events, or else a custom kind (which
    /// `publish` refuses if the name is reserved). For transports that take event names as text.
    #[must_use]
    pub fn from_wire(name: &str) -> Self {
        match name {
            "agent_started" => EventKind::AgentStarted,
            "agent_thinking" => EventKind::AgentThinking,
            "tool_executing" => EventKind::ToolExecuting,
            "tool_completed" => EventKind::ToolCompleted,
            "agent_completed" => EventKind::AgentCompleted,
            other => EventKind::Custom(Cow::Owned(other.to_owned())),
        }
    }

    /// The wire name (`type` field).
    #[must_use]
    pub fn as_str(&self) -> &str {
        match self {
            EventKind::AgentStarted => "agent_started",
            EventKind::AgentThinking => "agent_thinking",
            EventKind::ToolExecuting => "tool_executing",
            EventKind::ToolCompleted => "tool_completed",
            EventKind::AgentCompleted => "agent_completed",
            EventKind::Custom(name) | EventKind::CustomDroppable(name) => name,
        }
    }

    /// The kind's priority: `Low` for `agent_thinking` and droppable custom kinds, `Critical`
    /// for everything else.
    #[must_use]
    pub fn priority(&self) -> Priority {
        match self {
            EventKind::AgentThinking | EventKind::CustomDroppable(_) => Priority::Low,
            _ => Priority::Critical,
        }
    }

    /// Whether this kind can be sent: custom names must be non-empty and not reserved.
    pub(crate) fn is_valid(&self) -> bool {
        match self {
            EventKind::Custom(name) | EventKind::CustomDroppable(name) => {
                !name.is_empty() && !Self::RESERVED.contains(&&**name)
            }
            _ => true,
        }
    }
}

/// Who a tenant broadcast reaches.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Audience {
    /// Every connection of the tenant.
    All,
    /// Connections whose principal holds this role.
    Role(Role),
}

/// Where an envelope goes. Every target but `Everyone` is confined to one tenant; `Everyone`
/// needs [`Config::allow_global_broadcast`](crate::Config::allow_global_broadcast) and is audited.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Target {
    /// Every connection of one user (those narrowed to threads get only their threads' events and
    /// thread-less ones).
    User {
        /// The tenant.
        tenant: TenantId,
        /// The user.
        user: UserId,
    },
    /// One thread of one user: the user's connections that are not narrowed to other threads.
    Thread {
        /// The tenant.
        tenant: TenantId,
        /// The user.
        user: UserId,
        /// The thread.
        thread: ThreadId,
    },
    /// One agent run of one user: the user's connections that subscribed to the run, plus those
    /// not narrowed at all (the origin's `run_id_connections` index). A connection narrowed to
    /// threads or other runs gets it only if it also subscribed to the envelope's thread.
    Run {
        /// The tenant.
        tenant: TenantId,
        /// The user.
        user: UserId,
        /// The run.
        run: RunId,
    },
    /// Exactly one connection (on its user's stream).
    Connection(ConnId),
    /// Every member of a room of one tenant.
    Room {
        /// The tenant.
        tenant: TenantId,
        /// The room.
        room: RoomId,
    },
    /// A tenant-wide broadcast.
    Tenant {
        /// The tenant.
        tenant: TenantId,
        /// All of it, or one role.
        audience: Audience,
    },
    /// Every connection of every tenant. Off unless the config allows it.
    Everyone,
}

impl Target {
    /// Every connection of one user: `Target::User { tenant, user }`.
    #[must_use]
    pub fn user(tenant: impl Into<TenantId>, user: impl Into<UserId>) -> Self {
        Target::User { tenant: tenant.into(), user: user.into() }
    }

    /// One thread of one user: `Target::Thread { tenant, user, thread }`.
    #[must_use]
    pub fn thread(
        tenant: impl Into<TenantId>,
        user: impl Into<UserId>,
        thread: impl Into<ThreadId>,
    ) -> Self {
        Target::Thread { tenant: tenant.into(), user: user.into(), thread: thread.into() }
    }

    /// One agent run of one user: `Target::Run { tenant, user, run }`.
    #[must_use]
    pub fn run(
        tenant: impl Into<TenantId>,
        user: impl Into<UserId>,
        run: impl Into<RunId>,
    ) -> Self {
        Target::Run { tenant: tenant.into(), user: user.into(), run: run.into() }
    }

    /// Every member of a room: `Target::Room { tenant, room }`.
    #[must_use]
    pub fn room(tenant: impl Into<TenantId>, room: impl Into<RoomId>) -> Self {
        Target::Room { tenant: tenant.into(), room: room.into() }
    }

    /// Every connection of a tenant: `Target::Tenant { tenant, audience: Audience::All }`.
    #[must_use]
    pub fn tenant(tenant: impl Into<TenantId>) -> Self {
        Target::Tenant { tenant: tenant.into(), audience: Audience::All }
    }

    /// The connections of a tenant whose principal holds `role`.
    #[must_use]
    pub fn tenant_role(tenant: impl Into<TenantId>, role: impl Into<Role>) -> Self {
        Target::Tenant { tenant: tenant.into(), audience: Audience::Role(role.into()) }
    }
}

/// An event to publish: where it goes, what it is, and its payload.
#[derive(Clone, Debug, PartialEq)]
pub struct Envelope {
    /// Where it goes.
    pub target: Target,
    /// What it is.
    pub kind: EventKind,
    /// The thread it belongs to, if any (set automatically for `Target::Thread`).
    pub thread: Option<ThreadId>,
    /// The agent run it belongs to, if any (set automatically for `Target::Run`). On a user's
    /// stream, a connection narrowed with `subscribe` gets it only if it subscribed to this run
    /// or to the event's thread.
    pub run: Option<RunId>,
    /// The payload: a [`Value`] ([`Envelope::data`]) or JSON text ([`Envelope::raw_data`]).
    /// Configured keys are redacted at any depth while the frame is written. `null` means no
    /// data: the frame then has no `data` key. At most [`MAX_DATA_DEPTH`](crate::MAX_DATA_DEPTH)
    /// levels deep.
    pub data: Payload,
    /// A key that makes a retried publish safe: a message with a key seen on the same stream
    /// within the retention age is published only once. A single node remembers keys itself
    /// (at most `Config::max_idempotency_keys`) and answers a retry with
    /// [`Published::duplicate`](crate::Published::duplicate); in cluster mode the bus remembers
    /// them and reports [`PublishOutcome::Duplicate`](crate::PublishOutcome::Duplicate).
    /// Ignored for `Connection` and `Everyone` targets (no one stream).
    pub idempotency_key: Option<Arc<str>>,
    /// A connection that does not receive this event although the target covers it: typically
    /// the sender's ([`Inbound::from`](crate::Inbound::from)`.conn`), whose client already shows
    /// what it sent. Honoured by every target, live and in replays and history (the message is
    /// still in the stream: the connection's next `seq` skips it). A connection that is not open
    /// excludes nobody. In cluster mode it names a connection of the publishing node.
    pub exclude: Option<ConnId>,
}

impl Envelope {
    /// An envelope with no thread, no run and no data (`null`: the frame has no `data` key).
    #[must_use]
    pub fn new(target: Target, kind: EventKind) -> Self {
        Self {
            target,
            kind,
            thread: None,
            run: None,
            data: Payload::default(),
            idempotency_key: None,
            exclude: None,
        }
    }

    /// Leaves `conn` out of the recipients (see [`Envelope::exclude`]).
    #[must_use]
    pub fn exclude(mut self, conn: ConnId) -> Self {
        self.exclude = Some(conn);
        self
    }

    /// Sets the thread.
    #[must_use]
    pub fn thread(mut self, thread: impl Into<ThreadId>) -> Self {
        self.thread = Some(thread.into());
        self
    }

    /// Sets the run.
    #[must_use]
    pub fn run(mut self, run: impl Into<RunId>) -> Self {
        self.run = Some(run.into());
        self
    }

    /// Sets the idempotency key (see [`Envelope::idempotency_key`]).
    #[must_use]
    pub fn idempotency_key(mut self, key: impl Into<Arc<str>>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// Sets the payload.
    #[must_use]
    pub fn data(mut self, data: Value) -> Self {
        self.data = Payload::Json(data);
        self
    }

    /// Sets the payload to JSON text already serialized (checked by [`RawData::new`]): no
    /// [`Value`] tree is built or dropped, and redaction happens in one pass over the text.
    #[must_use]
    pub fn raw_data(mut self, data: RawData) -> Self {
        self.data = Payload::Raw(data);
        self
    }

    /// Sets the payload from any serializable value.
    ///
    /// # Errors
    ///
    /// The serializer's error if `data` cannot be represented as JSON (for example a map with
    /// non-string keys).
    pub fn data_from<T: Serialize>(self, data: &T) -> Result<Self, serde_json::Error> {
        Ok(self.data(serde_json::to_value(data)?))
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_read_back_as_their_kinds() {
        for kind in [
            EventKind::AgentStarted,
            EventKind::AgentThinking,
            EventKind::ToolExecuting,
            EventKind::ToolCompleted,
            EventKind::AgentCompleted,
            EventKind::custom("invoice_ready"),
        ] {
            assert_eq!(EventKind::from_wire(kind.as_str()), kind);
        }
        // Priority is not on the wire: a droppable kind reads back as a plain custom one.
        let progress = EventKind::custom_droppable("upload_progress");
        assert_eq!(progress.as_str(), "upload_progress");
        assert_eq!(EventKind::from_wire("upload_progress"), EventKind::custom("upload_progress"));
        assert!(!EventKind::from_wire("connected").is_valid());
    }

    #[test]
    fn custom_kinds_may_not_impersonate_protocol_frames() {
        assert!(EventKind::custom("invoice_ready").is_valid());
        assert!(!EventKind::custom("connected").is_valid());
        assert!(!EventKind::custom("").is_valid());
        assert_eq!(EventKind::AgentThinking.priority(), Priority::Low);
        assert_eq!(EventKind::ToolCompleted.priority(), Priority::Critical);
        assert_eq!(EventKind::custom("invoice_ready").priority(), Priority::Critical);
        assert_eq!(EventKind::custom_droppable("upload_progress").priority(), Priority::Low);
        assert_eq!(
            EventKind::custom_with_priority("x", Priority::Low),
            EventKind::custom_droppable("x")
        );
        assert!(!EventKind::custom_droppable("agent_thinking").is_valid());
        assert!(!EventKind::custom_droppable("").is_valid());
    }
}
