//! Configuration: every limit the hub enforces, with documented defaults, validated once by
//! [`Hub::new`](crate::Hub::new).

use std::time::Duration;

use thiserror::Error;

use crate::cluster::ClusterConfig;
use crate::presence::PresenceConfig;
use crate::retention::Retention;

/// A principal's service tier. Each tier has its own quotas ([`TierQuota`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Tier {
    /// The free tier (default quotas: 3 connections per user, 30 messages per minute).
    #[default]
    Free,
    /// Early-stage paid tier (10 connections, 100 messages per minute).
    Early,
    /// Mid-market tier (15 connections, 200 messages per minute).
    Mid,
    /// Enterprise tier (25 connections, 500 messages per minute).
    Enterprise,
}

impl Tier {
    /// Every tier, in ascending order.
    pub const ALL: &'static [Tier] = &[Tier::Free, Tier::Early, Tier::Mid, Tier::Enterprise];

    /// The tier's lower-case name, as used in metrics and the wire protocol.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Free => "free",
            Tier::Early => "early",
            Tier::Mid => "mid",
            Tier::Enterprise => "enterprise",
        }
    }
}

/// The quotas of one tier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TierQuota {
    /// How many connections one user of this tier may hold at once.
    pub max_connections_per_user: u32,
    /// Sustained rate of client `message` frames per user, per minute (token bucket refill). The
    /// bucket is the user's, shared by all of its connections, and kept while the user's state is
    /// (a reconnect within `user_retention` does not refill it; a retired user's returns full).
    /// Each frame is charged at the rate of the tier of the connection it arrived on.
    pub messages_per_minute: u32,
    /// Token bucket capacity: how many `message` frames one user may send back to back. The
    /// default is a minute's worth (`messages_per_minute`), so that a user who sends no more than
    /// that many in any 60 seconds is never refused, however it spaces them; the bucket then
    /// refills at the sustained rate.
    pub message_burst: u32,
    /// The longest a connection of this tier stays open (default: no cap). At the cap it is
    /// closed with [`CloseReason::MaxLifetime`](crate::CloseReason::MaxLifetime) (code 4009,
    /// reconnect): the client reconnects and resumes, and lands wherever the load balancer sends
    /// it now, so long-lived sockets spread over the nodes a deploy added. Each connection's cap
    /// is drawn between 90 % and 100 % of this (from `Config::seed` and the connection), so that
    /// connections opened together do not all come back together.
    pub max_connection_lifetime: Option<Duration>,
}

/// Quotas for every tier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TierQuotas {
    /// [`Tier::Free`].
    pub free: TierQuota,
    /// [`Tier::Early`].
    pub early: TierQuota,
    /// [`Tier::Mid`].
    pub mid: TierQuota,
    /// [`Tier::Enterprise`].
    pub enterprise: TierQuota,
}

impl TierQuotas {
    /// The quota of `tier`.
    #[must_use]
    pub fn get(&self, tier: Tier) -> &TierQuota {
        match tier {
            Tier::Free => &self.free,
            Tier::Early => &self.early,
            Tier::Mid => &self.mid,
            Tier::Enterprise => &self.enterprise,
        }
    }

    /// The quota of `tier`, to change it.
    #[must_use]
    pub fn get_mut(&mut self, tier: Tier) -> &mut TierQuota {
        match tier {
            Tier::Free => &mut self.free,
            Tier::Early => &mut self.early,
            Tier::Mid => &mut self.mid,
            Tier::Enterprise => &mut self.enterprise,
        }
    }
}

impl Default for TierQuotas {
    fn default() -> Self {
        let q = |conns, per_min, burst| TierQuota {
            max_connections_per_user: conns,
            messages_per_minute: per_min,
            message_burst: burst,
            max_connection_lifetime: None,
        };
        Self {
            free: q(3, 30, 30),
            early: q(10, 100, 100),
            mid: q(15, 200, 200),
            enterprise: q(25, 500, 500),
        }
    }
}

/// What to do when a user who already holds its tier's maximum of connections connects again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum UserLimitPolicy {
    /// Refuse the new connection with [`ConnectError::UserLimit`](crate::ConnectError::UserLimit).
    #[default]
    Reject,
    /// Admit it and close the user's oldest connection with
    /// [`CloseReason::Replaced`](crate::CloseReason::Replaced).
    EvictOldest,
}

/// Heartbeat timing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    /// After this long without any inbound frame or pong, the hub asks for a `Ping` (default 25 s).
    pub interval: Duration,
    /// After a `Ping`, how long to wait for any sign of life before closing with
    /// [`CloseReason::HeartbeatTimeout`](crate::CloseReason::HeartbeatTimeout) (default 10 s).
    pub timeout: Duration,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Self { interval: Duration::from_secs(25), timeout: Duration::from_secs(10) }
    }
}

/// The per-user reconnect breaker: it stops a client that keeps failing from reconnecting in a
/// tight loop (the origin documents' circuit breaker).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Counted failures within `window` that open the breaker (default 5). A failure is an
    /// abnormal close (transport error, heartbeat timeout, slow consumer, protocol violation) of
    /// a connection that lived less than `probe_healthy_after` and was opened after the user's
    /// last counted failure (closes of connections that were open together count once).
    pub threshold: u32,
    /// See `threshold` (default 60 s).
    pub window: Duration,
    /// How long it stays open; connects fail with `retry_after` meanwhile (default 60 s).
    pub open_for: Duration,
    /// After `open_for` it is half-open and admits one probe connection; the probe closes the
    /// breaker once it has stayed up this long, or reopens it by failing (default 10 s). The same
    /// notion of healthy decides what counts: an abnormal close of a connection that lived this
    /// long is not a failure.
    pub probe_healthy_after: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            threshold: 5,
            window: Duration::from_secs(60),
            open_for: Duration::from_secs(60),
            probe_healthy_after: Duration::from_secs(10),
        }
    }
}

/// Everything the hub enforces. Build with `Config::default()` and adjust fields; the hub checks
/// the result in [`Hub::new`](crate::Hub::new).
/// Construct with struct-update syntax: `Config { max_connections: 10, ..Config::default() }`.
#[derive(Clone, Debug)]
pub struct Config {
    /// Maximum open connections in the hub (default 100,000).
    pub max_connections: u32,
    /// Maximum open connections per tenant, if any (default: no per-tenant cap).
    pub max_connections_per_tenant: Option<u32>,
    /// Per-tier quotas.
    pub tiers: TierQuotas,
    /// What happens at the per-user connection limit.
    pub user_limit_policy: UserLimitPolicy,
    /// Largest inbound frame accepted, in bytes (default 64 KiB).
    pub max_frame_bytes: usize,
    /// Maximum rooms one connection may be in (default 128).
    pub max_rooms_per_connection: u32,
    /// Maximum threads one connection may narrow its stream to with `subscribe` (default 64), and
    /// as many agent runs.
    pub max_thread_subscriptions: u32,
    /// Longest identifier (thread id) a client may send, in bytes (default 128).
    pub max_client_id_bytes: usize,
    /// The most messages one `history` answer holds (default 100; a request's `limit` may not
    /// exceed it). The answer is also held under what the connection may still be handed
    /// (`max_unwritten_bytes`).
    pub max_history_messages: u32,
    /// Control frames (`subscribe`, `unsubscribe`, `ping`, `resume`) per connection per minute,
    /// sustained (default 600), with `control_burst` back to back (default 60).
    pub control_frames_per_minute: u32,
    /// See `control_frames_per_minute`.
    pub control_burst: u32,
    /// Protocol violations (malformed, unknown or oversized frames, a second `resume`, a
    /// subscription over its limit) a connection may commit in a row: the `max_violations`-th
    /// closes it with [`CloseReason::ProtocolViolation`](crate::CloseReason::ProtocolViolation)
    /// (default 5). The allowance refills at one per `violation_refill`. A frame over a rate
    /// (`rate_limited`) is answered but is not a violation.
    pub max_violations: u32,
    /// See `max_violations` (default 12 s, so five per minute are forgiven).
    pub violation_refill: Duration,
    /// Heartbeat timing.
    pub heartbeat: Heartbeat,
    /// How long before a session's `expires_at` the hub sends `refresh_required` (default 60 s).
    pub session_grace: Duration,
    /// How long a user's state outlives its last connection (default 2 min). While detached, its
    /// stream keeps buffering (within `retention`) so that a returning client can resume.
    pub user_retention: Duration,
    /// How long a room outlives its last member, its stream still buffering, so that members who
    /// drop off for a moment can resume it (default 0: an empty room is dropped at once, and a
    /// room joined again starts a new epoch).
    pub room_retention: Duration,
    /// Most idle (member-less) rooms kept at once (default 100,000); beyond it the one closest to
    /// being dropped is dropped early.
    pub max_idle_rooms: u32,
    /// Most detached users kept at once (default 100,000). Beyond it, the one closest to
    /// retirement is retired early, so that churn of distinct users cannot grow memory.
    pub max_detached_users: u32,
    /// Bounds of every stream's recovery buffer (default 1000 messages, 1 MiB, 2 min).
    pub retention: Retention,
    /// Frame bytes kept in all recovery buffers together (default 512 MiB), a hard cap. Past it,
    /// detached users are retired early, oldest first, then the oldest messages of all streams
    /// are shed, a stream's newest too if it must (a later resume across them says
    /// `recovered: false`); an event larger than the cap is delivered live but not kept.
    pub max_buffered_bytes: u64,
    /// Unwritten bytes past which `agent_thinking` frames are skipped for a connection (and
    /// counted) (default 128 KiB).
    pub max_inflight_bytes: u64,
    /// Unwritten bytes a critical frame may not push a connection past; if it would, the
    /// connection is closed with [`CloseReason::SlowConsumer`](crate::CloseReason::SlowConsumer)
    /// (default 1 MiB). Replays on resume are exempt: they are bounded by `retention`.
    pub max_unwritten_bytes: u64,
    /// How long a new connection waits for its client's first frame before live delivery starts
    /// (default 0: at once). With a window, events published between `connect` and the client's
    /// `resume` are not sent ahead of the replay, so a resuming client sees every stream exactly
    /// in order. Any valid frame but `subscribe`/`unsubscribe` (which may come first, so that the
    /// replay honours the filter), or the window running out, starts live delivery.
    pub resume_window: Duration,
    /// The per-user reconnect breaker.
    pub breaker: BreakerConfig,
    /// Most reconnect breakers remembered at once (default 100,000). A breaker is remembered for a
    /// `(tenant, user)` from its first counted failure until its window has passed (or, if it
    /// opened, until it closes again), whether or not the user's state is still held; beyond the
    /// cap the one that matters least is forgotten (closed ones first, the one closest to expiry
    /// first) and counted in `breakers_evicted`, so that churn of distinct users cannot grow
    /// memory.
    pub max_breakers: u32,
    /// Time constant of the moving averages in the rate views (default 60 s).
    pub rate_window: Duration,
    /// How long a closed connection's id is remembered as "recently closed" (default 60 s).
    pub tombstone_ttl: Duration,
    /// Whether [`Target::Everyone`](crate::Target::Everyone) is allowed (default `false`). Every
    /// use is audited either way.
    pub allow_global_broadcast: bool,
    /// JSON object keys whose values are replaced by `"[redacted]"` at any depth before a frame is
    /// built. Matched ignoring ASCII case. Default: `password`, `api_key`, `token`, `secret`,
    /// `authorization`.
    pub redact_keys: Vec<String>,
    /// Seed of the hub's generator (stream epochs). The hub never reads OS entropy; give each
    /// process a different seed (the time at startup will do) so that epochs differ across restarts.
    pub seed: u64,
    /// If set, the hub emits a [`MetricEvent::Snapshot`](crate::MetricEvent::Snapshot) of its
    /// stats this often (default: never).
    pub snapshot_interval: Option<Duration>,
    /// Cluster mode: this hub is one node of several sharing a bus (DESIGN §11, and "Cluster
    /// mode" in the crate docs). `None` (the default): a single node, nothing is emitted for a
    /// bus.
    pub cluster: Option<ClusterConfig>,
    /// Presence (DESIGN §12): who is online per tenant and per room, sent to the scope's members
    /// as a `presence` snapshot when they join it and `presence_diff` batches after. `None` (the
    /// default): off. In cluster mode presence is cluster-wide (see "Presence" in the crate
    /// docs and [`ClusterConfig::presence_ttl`](crate::ClusterConfig::presence_ttl)).
    pub presence: Option<PresenceConfig>,
    /// A single node's memory of publishers' idempotency keys ([`Envelope::idempotency_key`](crate::Envelope::idempotency_key)):
    /// at most this many, each for `retention.max_age`, oldest forgotten first. (In cluster mode
    /// the bus remembers them.)
    pub max_idempotency_keys: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_connections: 100_000,
            max_connections_per_tenant: None,
            tiers: TierQuotas::default(),
            user_limit_policy: UserLimitPolicy::Reject,
            max_frame_bytes: 64 * 1024,
            max_rooms_per_connection: 128,
            max_thread_subscriptions: 64,
            max_client_id_bytes: 128,
            max_history_messages: 100,
            control_frames_per_minute: 600,
            control_burst: 60,
            max_violations: 5,
            violation_refill: Duration::from_secs(12),
            heartbeat: Heartbeat::default(),
            session_grace: Duration::from_secs(60),
            user_retention: Duration::from_secs(120),
            max_detached_users: 100_000,
            room_retention: Duration::ZERO,
            max_idle_rooms: 100_000,
            retention: Retention::default(),
            max_buffered_bytes: 512 << 20,
            max_inflight_bytes: 128 * 1024,
            max_unwritten_bytes: 1024 * 1024,
            resume_window: Duration::ZERO,
            breaker: BreakerConfig::default(),
            max_breakers: 100_000,
            rate_window: Duration::from_secs(60),
            tombstone_ttl: Duration::from_secs(60),
            allow_global_broadcast: false,
            redact_keys: ["password", "api_key", "token", "secret", "authorization"]
                .map(String::from)
                .to_vec(),
            seed: 0x5eed_5b0a_2d00_0001,
            snapshot_interval: None,
            cluster: None,
            presence: None,
            max_idempotency_keys: 100_000,
        }
    }
}

impl Config {
    /// Checks that every limit makes sense. [`Hub::new`](crate::Hub::new) calls this.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the first field that is zero where it must be positive, too large,
    /// inconsistent with another, or an empty redaction key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let nonzero = |field: &'static str, v: u64| {
            if v == 0 { Err(ConfigError::Zero { field }) } else { Ok(()) }
        };
        if let Some(p) = &self.presence {
            nonzero("presence.max_members", p.max_members.into())?;
            nonzero("presence.flush_interval", u64::from(!p.flush_interval.is_zero()))?;
            nonzero("presence.max_remote_entries", p.max_remote_entries.into())?;
        }
        nonzero("max_connections", self.max_connections.into())?;
        // Slot indices are u32 and one index is kept free of meaning; stay well inside.
        if self.max_connections > (u32::MAX >> 1) {
            return Err(ConfigError::TooLarge {
                field: "max_connections",
                max: u64::from(u32::MAX >> 1),
            });
        }
        if let Some(t) = self.max_connections_per_tenant {
            nonzero("max_connections_per_tenant", t.into())?;
        }
        for &tier in Tier::ALL {
            let q = self.tiers.get(tier);
            let field = |f| ConfigError::ZeroTierQuota { tier, field: f };
            if q.max_connections_per_user == 0 {
                return Err(field("max_connections_per_user"));
            }
            if q.messages_per_minute == 0 {
                return Err(field("messages_per_minute"));
            }
            if q.message_burst == 0 {
                return Err(field("message_burst"));
            }
            if let Some(cap) = q.max_connection_lifetime {
                if cap.is_zero() {
                    return Err(field("max_connection_lifetime"));
                }
                bounded("tiers.max_connection_lifetime", cap)?;
            }
        }
        nonzero("max_frame_bytes", self.max_frame_bytes as u64)?;
        nonzero("max_rooms_per_connection", self.max_rooms_per_connection.into())?;
        nonzero("max_thread_subscriptions", self.max_thread_subscriptions.into())?;
        nonzero("max_client_id_bytes", self.max_client_id_bytes as u64)?;
        nonzero("max_history_messages", self.max_history_messages.into())?;
        nonzero("control_frames_per_minute", self.control_frames_per_minute.into())?;
        nonzero("control_burst", self.control_burst.into())?;
        nonzero("max_violations", self.max_violations.into())?;
        let nonzero_d = |field: &'static str, d: Duration| {
            if d.is_zero() { Err(ConfigError::Zero { field }) } else { bounded(field, d) }
        };
        // Durations that may be zero still may not be absurd: `now + d` must stay an instant.
        bounded("session_grace", self.session_grace)?;
        bounded("user_retention", self.user_retention)?;
        bounded("tombstone_ttl", self.tombstone_ttl)?;
        bounded("resume_window", self.resume_window)?;
        bounded("room_retention", self.room_retention)?;
        nonzero_d("violation_refill", self.violation_refill)?;
        nonzero("max_detached_users", self.max_detached_users.into())?;
        nonzero("max_idle_rooms", self.max_idle_rooms.into())?;
        nonzero("retention.max_messages", self.retention.max_messages as u64)?;
        nonzero("retention.max_bytes", self.retention.max_bytes as u64)?;
        nonzero_d("retention.max_age", self.retention.max_age)?;
        nonzero("max_inflight_bytes", self.max_inflight_bytes)?;
        if let Some(c) = &self.cluster {
            if c.node.as_str().is_empty() {
                return Err(ConfigError::Zero { field: "cluster.node" });
            }
            nonzero_d("cluster.op_timeout", c.op_timeout)?;
            nonzero("cluster.max_inflight_ops", c.max_inflight_ops.into())?;
            nonzero("cluster.max_held_per_stream", c.max_held_per_stream.into())?;
            nonzero("cluster.fetch_limit", c.fetch_limit.into())?;
            bounded("cluster.resume_wait", c.resume_wait)?;
            if let Some(every) = c.top_check_interval {
                nonzero_d("cluster.top_check_interval", every)?;
            }
            // Refreshed every third of it: a third must be a positive time.
            nonzero_d("cluster.presence_ttl", c.presence_ttl / 3)?;
            bounded("cluster.presence_ttl", c.presence_ttl)?;
        }
        nonzero("max_buffered_bytes", self.max_buffered_bytes)?;
        if self.max_unwritten_bytes < self.max_inflight_bytes {
            return Err(ConfigError::Inconsistent {
                detail: "max_unwritten_bytes must be at least max_inflight_bytes",
            });
        }
        nonzero("breaker.threshold", self.breaker.threshold.into())?;
        nonzero("max_breakers", self.max_breakers.into())?;
        nonzero_d("breaker.window", self.breaker.window)?;
        nonzero_d("breaker.open_for", self.breaker.open_for)?;
        nonzero_d("breaker.probe_healthy_after", self.breaker.probe_healthy_after)?;
        nonzero_d("rate_window", self.rate_window)?;
        nonzero_d("heartbeat.interval", self.heartbeat.interval)?;
        nonzero_d("heartbeat.timeout", self.heartbeat.timeout)?;
        if let Some(d) = self.snapshot_interval {
            nonzero_d("snapshot_interval", d)?;
        }
        for key in &self.redact_keys {
            if key.is_empty() {
                return Err(ConfigError::EmptyRedactKey);
            }
        }
        Ok(())
    }
}

/// The longest duration any setting accepts (ten years): "never" in practice, and far enough from
/// `Duration::MAX` that adding it to an instant, or multiplying a rate interval by a burst, stays
/// in range.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

fn bounded(field: &'static str, d: Duration) -> Result<(), ConfigError> {
    if d > MAX_DURATION {
        Err(ConfigError::TooLarge { field, max: MAX_DURATION.as_secs() })
    } else {
        Ok(())
    }
}

/// The configuration makes no sense; returned by [`Hub::new`](crate::Hub::new).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// A limit or duration that must be positive is zero.
    #[error("config field `{field}` must be greater than zero")]
    Zero {
        /// The field's name.
        field: &'static str,
    },
    /// A limit is larger than the hub can represent (for durations: `max` is in seconds).
    #[error("config field `{field}` must be at most {max}")]
    TooLarge {
        /// The field's name.
        field: &'static str,
        /// The largest value accepted.
        max: u64,
    },
    /// A tier quota is zero.
    #[error("tier quota `{field}` of tier {tier:?} must be greater than zero")]
    ZeroTierQuota {
        /// The tier.
        tier: Tier,
        /// The quota's name.
        field: &'static str,
    },
    /// Two settings contradict each other.
    #[error("inconsistent config: {detail}")]
    Inconsistent {
        /// Which settings, and why.
        detail: &'static str,
    },
    /// A redaction key is the empty string.
    #[error("redact_keys must not contain an empty key")]
    EmptyRedactKey,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid_and_matches_the_documented_tiers() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.tiers.get(Tier::Free).max_connections_per_user, 3);
        assert_eq!(c.tiers.get(Tier::Enterprise).messages_per_minute, 500);
    }

    #[test]
    fn zero_limits_are_rejected_by_name() {
        let mut c = Config { max_rooms_per_connection: 0, ..Config::default() };
        assert_eq!(c.validate(), Err(ConfigError::Zero { field: "max_rooms_per_connection" }));
        c = Config::default();
        c.tiers.mid.messages_per_minute = 0;
        assert_eq!(
            c.validate(),
            Err(ConfigError::ZeroTierQuota { tier: Tier::Mid, field: "messages_per_minute" })
        );
        c = Config::default();
        c.heartbeat.timeout = Duration::ZERO;
        assert_eq!(c.validate(), Err(ConfigError::Zero { field: "heartbeat.timeout" }));
        c = Config { user_retention: Duration::MAX, ..Config::default() };
        assert_eq!(
            c.validate(),
            Err(ConfigError::TooLarge { field: "user_retention", max: MAX_DURATION.as_secs() })
        );
        c = Config { redact_keys: vec![String::new()], ..Config::default() };
        assert_eq!(c.validate(), Err(ConfigError::EmptyRedactKey));
    }
}
