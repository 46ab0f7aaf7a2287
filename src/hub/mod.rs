//! The [`Hub`]: the state it owns, the connection and user lifecycles, timers, and the views.
//! Publishing lives in `publish.rs`, client frames in `receive.rs`, resume in `resume.rs`, rooms
//! in `rooms.rs`.

mod admin;
mod audit;
pub use admin::RoomInfo;
mod cluster;
mod cluster_resume;
mod cluster_setup;
mod history;
pub(crate) mod presence;
mod presence_cluster;
mod publish;
mod receive;
mod resume;
mod rooms;

pub use publish::Published;

use std::time::{Duration, Instant};

use crate::action::Action;
use crate::breaker::{Breakers, ClosedConn, Transition};
use crate::config::{Config, ConfigError, Tier, UserLimitPolicy};
use crate::connection::{Connection, Connections, Due, Lookup};
use crate::error::{ConnError, ConnectError, RefreshError};
use crate::flow::{Flow, Offer};
use crate::frame::Frame;
use crate::ids::{ConnId, Role, Roles, StreamName, TenantId, UserId};
use crate::kinds::{AuditKind, CloseReason, ClosedBy, DisconnectReason, LimitKind};
use crate::labels::Labels;
use crate::limits::Bucket;
use crate::outbox::Outbox;
use crate::presence::PresenceMeta;
use crate::redact::Redactor;
use crate::routing::{Tenant, Tenants};
use crate::stats::{HubStats, MeterClock, Meters, Rates, SnapshotTimer};
use crate::stream::{Buffers, Epochs, Stream, TrimKey};
use crate::user::{UserState, Users};
use crate::view::{ConnView, UserView};

/// Who is connecting: an identity the caller has already authenticated (the hub never parses
/// tokens). It is bound to the connection for its whole life.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The tenant.
    pub tenant: TenantId,
    /// The user.
    pub user: UserId,
    /// The tier whose quotas apply.
    pub tier: Tier,
    /// Roles, for role-scoped tenant broadcasts.
    pub roles: Roles,
    /// When the session ends unless [`Hub::refresh`] extends it; `None` for no expiry.
    pub expires_at: Option<Instant>,
    /// Presence: what the scopes' members see beside this user's id (the last connection's
    /// wins). Shown, never routed on.
    pub meta: Option<PresenceMeta>,
    /// This connection's labels (a session id, a client name): shown in
    /// [`ConnView::labels`], in the [`Origin`](crate::Origin) of its messages and in the
    /// [`AuditEvent`](crate::AuditEvent)s it causes; never sent to a client, never routed on.
    pub labels: Labels,
}

impl Principal {
    /// A free-tier principal without roles or expiry.
    pub fn new(tenant: impl Into<TenantId>, user: impl Into<UserId>) -> Self {
        Self {
            tenant: tenant.into(),
            user: user.into(),
            tier: Tier::Free,
            roles: Roles::none(),
            expires_at: None,
            meta: None,
            labels: Labels::none(),
        }
    }

    /// Sets the tier.
    #[must_use]
    pub fn tier(mut self, tier: Tier) -> Self {
        self.tier = tier;
        self
    }

    /// Sets the roles.
    #[must_use]
    pub fn roles<R: Into<Role>>(mut self, roles: impl IntoIterator<Item = R>) -> Self {
        self.roles = roles.into_iter().collect();
        self
    }

    /// Sets the session expiry.
    #[must_use]
    pub fn expires_at(mut self, at: Instant) -> Self {
        self.expires_at = Some(at);
        self
    }

    /// Sets the presence metadata.
    #[must_use]
    pub fn meta(mut self, meta: PresenceMeta) -> Self {
        self.meta = Some(meta);
        self
    }

    /// Sets the connection's labels.
    #[must_use]
    pub fn labels(mut self, labels: Labels) -> Self {
        self.labels = labels;
        self
    }
}

/// Why the hub wants [`Hub::tick`] at the instant [`Hub::next_timeout`] returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum WakeReason {
    /// Actions are queued: drain them first (the instant is the last `now` seen).
    Drain,
    /// A connection's heartbeat, pong timeout, session refresh or expiry, resume window, or
    /// lifetime cap.
    Connection(ConnId),
    /// A user's reconnect breaker half-opens, or its probe has proved healthy.
    Breaker,
    /// A detached user's retention runs out.
    UserRetention,
    /// An idle room's retention runs out.
    RoomRetention,
    /// A stream's oldest buffered message outlives `retention.max_age`.
    StreamAge,
    /// A periodic stats snapshot is due.
    Snapshot,
    /// Cluster mode: a bus operation's deadline, the periodic top check, or a resume that waits
    /// for the bus to come back.
    Bus,
    /// Presence: a user's grace runs out, or a batch of joins and leaves is due.
    Presence,
}

/// The connection hub: a synchronous, sans-io state machine. See the [crate docs](crate) for the
/// drive loop.
#[derive(Debug)]
pub struct Hub {
    pub(crate) cfg: Config,
    pub(crate) redactor: Redactor,
    /// The first `now` seen (the meters count seconds from it) and the latest.
    origin: Option<Instant>,
    pub(crate) last_now: Option<Instant>,
    /// When the meters' current one-second bucket ends: until then a call's clock is the last
    /// one's, and finding it costs a comparison rather than a subtraction of instants
    /// (`None` before the first call, or past the end of the clock's range: computed each call).
    bucket_ends: Option<Instant>,
    pub(crate) conns: Connections,
    pub(crate) users: Users,
    /// The reconnect breakers, by `(tenant, user)`: they outlive the users' states.
    pub(crate) breakers: Breakers,
    /// Tenants, their rooms, and the idle rooms' timers.
    pub(crate) tenants: Tenants,
    /// The recovery buffers' age timers and totals.
    pub(crate) buffers: Buffers,
    pub(crate) snapshot: SnapshotTimer,
    pub(crate) out: Outbox,
    /// The frame writer and the traffic meters.
    pub(crate) flow: Flow,
    pub(crate) pong: Option<Frame>,
    pub(crate) epochs: Epochs,
    /// Scratch: connections a fan-out found over their hard limit, closed after it.
    pub(crate) doomed: Vec<u32>,
    /// Cluster mode's bus state (`None`: a single node).
    pub(crate) node: Option<Box<crate::cluster::Node>>,
    /// Cluster mode: resumes waiting for the log.
    pub(crate) resumes: cluster_resume::Resumes,
    /// Cluster mode: `history` requests waiting for the log.
    pub(crate) histories: history::Histories,
    /// Cluster mode: what the log gave a resume, for the release that answers it.
    pub(crate) replay_extra: Vec<(StreamName, Vec<crate::stream::Buffered>)>,
    /// Cluster mode: scratch for rendering bus messages into frames.
    pub(crate) render_buf: String,
    /// Cluster mode: `resume` frames that came before the connection's `connected` (bounded:
    /// one per connection).
    pub(crate) early_resumes: hashbrown::HashMap<ConnId, Vec<(String, crate::ids::StreamPos)>>,
    /// Who is present in each tenant and room (with `Config::presence`).
    pub(crate) presence: crate::presence::Presence,
    /// Cluster mode's presence: the other nodes' users, this node's sets on the bus.
    pub(crate) remote: crate::cluster::presence::ClusterPresence,
    /// A single node's idempotency keys.
    pub(crate) idempotency: crate::idempotency::IdempotencyKeys,
}

impl Hub {
    /// A hub with this configuration, or the reason it makes no sense.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] if [`Config::validate`] refuses the configuration.
    pub fn new(cfg: Config) -> Result<Self, ConfigError> {
        cfg.validate()?;
        let node = cfg.cluster.clone().map(|c| Box::new(crate::cluster::Node::new(c, cfg.seed)));
        Ok(Self {
            node,
            resumes: cluster_resume::Resumes::default(),
            histories: history::Histories::default(),
            replay_extra: Vec::new(),
            render_buf: String::new(),
            early_resumes: hashbrown::HashMap::new(),
            presence: crate::presence::Presence::new(cfg.cluster.is_some()),
            remote: crate::cluster::presence::ClusterPresence::new(
                cfg.cluster.as_ref().map_or(Duration::from_secs(15), |c| c.presence_ttl),
            ),
            idempotency: crate::idempotency::IdempotencyKeys::default(),
            redactor: Redactor::new(&cfg.redact_keys),
            epochs: Epochs::new(cfg.seed),
            out: Outbox::default(),
            flow: Flow::new(MeterClock::new(Duration::ZERO, cfg.rate_window)),
            cfg,
            origin: None,
            last_now: None,
            bucket_ends: None,
            conns: Connections::new(),
            users: Users::new(),
            breakers: Breakers::new(),
            tenants: Tenants::new(),
            buffers: Buffers::new(),
            snapshot: SnapshotTimer::default(),
            pong: None,
            doomed: Vec::new(),
        })
    }

    /// The configuration the hub runs with.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Time never goes backwards inside the hub: an earlier `now` is taken as the last one seen.
    #[inline]
    pub(crate) fn clock(&mut self, now: Instant) -> Instant {
        let now = self.last_now.map_or(now, |last| last.max(now));
        self.last_now = Some(now);
        let origin = *self.origin.get_or_insert(now);
        if self.bucket_ends.is_none_or(|end| now >= end) {
            let elapsed = now - origin;
            self.flow.clock = self.flow.clock.at(elapsed);
            self.bucket_ends =
                origin.checked_add(Duration::from_secs(elapsed.as_secs().saturating_add(1)));
        }
        self.snapshot.start(now, self.cfg.snapshot_interval);
        now
    }

    /// The `(tenant, user)` a connection is bound to (cheap clones).
    pub(crate) fn owner(&self, idx: u32) -> (TenantId, UserId) {
        let user = self.users.get(self.conns.get(idx).user());
        (user.tenant.clone(), user.user.clone())
    }

    /// Resolves a caller-supplied id; a stale one is refused and audited.
    pub(crate) fn resolve(&mut self, now: Instant, id: ConnId) -> Result<u32, ConnError> {
        match self.conns.lookup(id, now, self.cfg.tombstone_ttl) {
            Lookup::Live(idx) => Ok(idx),
            Lookup::Stale => {
                self.out.stats.stale_ids_refused += 1;
                self.out.audit(AuditKind::StaleConnId, Some(id), None, None);
                Err(ConnError::Stale)
            }
            Lookup::Gone { recently_closed } => Err(ConnError::Unknown { recently_closed }),
        }
    }

    // -----------------------------------------------------------------------------------------
    // Connection lifecycle

    /// Opens a connection for an authenticated principal. The first action for it is the
    /// `connected` frame.
    ///
    /// Refused, with nothing created, when the session already expired, the user's reconnect
    /// breaker is open, or a limit is reached (total, per tenant, or per user with
    /// [`UserLimitPolicy::Reject`]). With [`UserLimitPolicy::EvictOldest`] the user's oldest
    /// connection is closed with [`CloseReason::Replaced`] instead.
    ///
    /// # Errors
    ///
    /// Nothing is created when it fails:
    /// - [`ConnectError::EmptyId`]: the tenant or user id is empty;
    /// - [`ConnectError::SessionExpired`]: `principal.expires_at` is not in the future;
    /// - [`ConnectError::BreakerOpen`]: the user's reconnect breaker is open (or its probe is still
    ///   proving itself), with the time to wait; audited;
    /// - [`ConnectError::UserLimit`]: the user holds its tier's connections and the policy is
    ///   [`UserLimitPolicy::Reject`]; audited and counted as a limit rejection;
    /// - [`ConnectError::TooManyConnections`] or [`ConnectError::TenantLimit`]: the hub-wide or the
    ///   tenant's limit is reached; audited and counted.
    pub fn connect(&mut self, now: Instant, principal: Principal) -> Result<ConnId, ConnectError> {
        let now = self.clock(now);
        if principal.tenant.as_str().is_empty() {
            return Err(ConnectError::EmptyId { field: "tenant" });
        }
        if principal.user.as_str().is_empty() {
            return Err(ConnectError::EmptyId { field: "user" });
        }
        if principal.expires_at.is_some_and(|exp| exp <= now) {
            self.out.stats.connects_refused_expired += 1;
            return Err(ConnectError::SessionExpired);
        }
        let (tenant_id, user_id) = (&principal.tenant, &principal.user);
        let uidx = self.users.find(tenant_id.as_str(), user_id.as_str());
        let breaker =
            self.breakers.admit(now, tenant_id.as_str(), user_id.as_str(), &self.cfg.breaker);
        if let Err(retry_after) = breaker {
            self.out.stats.breaker_refusals += 1;
            let labels = &principal.labels;
            let kind = AuditKind::BreakerRefused;
            self.out.audit_labelled(kind, None, Some(tenant_id), Some(user_id), labels);
            return Err(ConnectError::BreakerOpen { retry_after });
        }
        let limit = self.cfg.tiers.get(principal.tier).max_connections_per_user;
        // Cluster mode: the per-user quota is cluster-wide, decided by the lease (`take_lease`).
        let held =
            if self.node.is_some() { 0 } else { uidx.map_or(0, |u| self.users.get(u).conns.len()) };
        // Connections that admitting this one will evict (they free their own slots).
        let mut evict = 0;
        if held >= limit as usize {
            match self.cfg.user_limit_policy {
                UserLimitPolicy::Reject => {
                    let kind = LimitKind::UserConnections;
                    self.refuse_connect(kind, &principal);
                    return Err(ConnectError::UserLimit { tier: principal.tier, limit });
                }
                UserLimitPolicy::EvictOldest => evict = held + 1 - limit as usize,
            }
        }
        if self.conns.len() - evict >= self.cfg.max_connections as usize {
            let kind = LimitKind::TotalConnections;
            self.refuse_connect(kind, &principal);
            return Err(ConnectError::TooManyConnections { limit: self.cfg.max_connections });
        }
        if let Some(cap) = self.cfg.max_connections_per_tenant {
            let in_tenant = self.tenants.get(tenant_id).map_or(0, |t| t.conns.len());
            if in_tenant - evict >= cap as usize {
                let kind = LimitKind::TenantConnections;
                self.refuse_connect(kind, &principal);
                return Err(ConnectError::TenantLimit { limit: cap });
            }
        }

        // Cluster mode: a connection needs its streams' true positions; while the bus is down
        // they can only come from streams this node already holds.
        if !self.streams_servable() {
            self.out.stats.connects_refused_unavailable += 1;
            return Err(ConnectError::Unavailable);
        }

        // Admitted: from here on nothing fails.
        let uidx = match uidx {
            Some(u) => {
                self.users.reattach(u);
                u
            }
            None => self.create_user(now, &principal),
        };
        if self.cfg.presence.is_some() {
            self.users.get_mut(uidx).meta = principal.meta.as_ref().map(|m| m.0.clone());
        }
        let idx = self.conns.next_index();
        let tenant = self.tenants.get_mut(&principal.tenant).expect("created with the user");
        let user = self.users.get_mut(uidx);
        let conn = Connection::new(
            now,
            uidx,
            principal.tier,
            principal.roles,
            principal.labels,
            principal.expires_at,
            !self.cfg.resume_window.is_zero(),
            user.stream.position().seq,
            tenant.stream.position().seq,
        );
        let id = self.conns.insert(conn, &self.cfg);
        debug_assert_eq!(id.index, idx);
        tenant.add_conn(&mut self.conns, idx);
        user.conns.push(idx);
        user.meters.connects.add(self.flow.clock, 1);
        let (t, u) = (principal.tenant.as_str(), principal.user.as_str());
        self.breakers.admitted(now, t, u, id, &self.cfg.breaker);

        self.out.opened(id, &principal.tenant, &principal.user, principal.tier);
        let clock = self.flow.clock;
        self.flow.tier(principal.tier).connects.add(clock, 1);
        if self.node.is_some() {
            // Cluster mode: `connected` waits for the lease and the streams' true positions.
            self.conns.get_mut(idx).await_streams();
            self.take_lease(now, idx);
        } else {
            self.send_connected(now, idx);
        }

        for _ in 0..evict {
            let oldest = self.users.get(uidx).conns[0];
            let kind = LimitKind::UserConnectionsEvicted;
            self.limit_conn(kind, AuditKind::LimitHit(kind), oldest);
            self.close_conn(now, oldest, ClosedBy::Hub(CloseReason::Replaced));
        }
        Ok(id)
    }

    /// The `connected` frame, with the streams' positions as they stand now.
    pub(crate) fn send_connected(&mut self, now: Instant, idx: u32) {
        let id = self.conns.id_of(idx);
        let c = self.conns.get(idx);
        let expires_in = c.expires_at().map(|exp| millis(exp.saturating_duration_since(now)));
        let user = self.users.get(c.user());
        let tenant = self.tenants.get(&user.tenant).expect("connection's tenant exists");
        let positions = [
            (StreamName::User, user.stream.position()),
            (StreamName::Tenant, tenant.stream.position()),
        ];
        let frame = self.flow.writer.connected(
            id,
            &user.tenant,
            &user.user,
            millis(self.cfg.heartbeat.interval),
            expires_in,
            &positions,
        );
        self.flow.deliver(&mut self.out, &mut self.conns, idx, &frame);
        self.presence_connected(now, idx);
    }

    /// A new stream: from the hub's epochs on a single node; in cluster mode at `(0, 0)` until
    /// the bus tells its position.
    fn new_stream(&mut self) -> Stream {
        if self.node.is_some() {
            Stream::at(crate::ids::StreamPos { epoch: 0, seq: 0 })
        } else {
            Stream::new(self.epochs.next())
        }
    }

    fn create_user(&mut self, now: Instant, principal: &Principal) -> u32 {
        let new_tenant = !self.tenants.contains_key(&principal.tenant);
        if new_tenant {
            let stream = self.new_stream();
            self.tenants.insert(principal.tenant.clone(), Tenant::new(stream));
        }
        let tenant = self.tenants.get_mut(&principal.tenant).expect("present");
        tenant.users += 1;
        let stream = self.new_stream();
        let uidx = self.users.insert(UserState {
            tenant: principal.tenant.clone(),
            user: principal.user.clone(),
            conns: Vec::new(),
            stream,
            created_at: now,
            retire: None,
            messages: Bucket::full(now),
            meters: Meters::default(),
            meta: None,
        });
        self.out.user_created(&principal.tenant, &principal.user);
        if new_tenant {
            self.track(now, crate::cluster::StreamKey::tenant(principal.tenant.clone()));
        }
        let key = crate::cluster::StreamKey::user(principal.tenant.clone(), principal.user.clone());
        self.track(now, key);
        uidx
    }

    /// Removes a connection from every index. A hub-initiated close also emits `Close`.
    pub(crate) fn close_conn(&mut self, now: Instant, idx: u32, by: ClosedBy) {
        let id = self.conns.id_of(idx);
        if !self.histories.is_empty() {
            self.histories.remove(&id);
        }
        if !self.resumes.is_empty() {
            self.resumes.remove(&id);
        }
        if !self.early_resumes.is_empty() {
            self.early_resumes.remove(&id);
        }
        self.release_lease(idx);
        self.presence_closed(now, idx);
        let uidx = self.conns.get(idx).user();
        let tenant_id = self.users.get(uidx).tenant.clone();
        let tenant = self.tenants.get_mut(&tenant_id).expect("connection's tenant exists");
        // Rooms it was the last member of (allocates only when there are any).
        let mut emptied = Vec::new();
        tenant.leave_all(&mut self.conns, idx, |room| emptied.push(room));
        tenant.remove_conn(&mut self.conns, idx);
        self.doomed.retain(|&d| d != idx);
        let conn = self.conns.remove(idx, now);
        let user = self.users.get_mut(uidx);
        user.conns.retain(|&c| c != idx);
        user.meters.delivered.absorb(conn.delivered(), self.flow.clock);
        let detached = user.conns.is_empty();
        let abnormal = matches!(
            by,
            ClosedBy::Transport(DisconnectReason::Abnormal)
                | ClosedBy::Hub(
                    CloseReason::HeartbeatTimeout
                        | CloseReason::SlowConsumer
                        | CloseReason::ProtocolViolation
                )
        );
        let lifetime = now.saturating_duration_since(conn.opened_at());
        let user_id = user.user.clone();
        let closed = ClosedConn {
            id,
            order: conn.order(),
            latest_order: self.conns.latest_order(),
            lifetime,
            abnormal,
        };
        let change = self.breakers.closed(now, &tenant_id, &user_id, closed, &self.cfg);
        self.out.closed(id, &tenant_id, &user_id, lifetime, by);
        if change.evicted {
            self.out.stats.breakers_evicted += 1;
        }
        if let Some(t) = change.transition {
            let state = self.breakers.state(tenant_id.as_str(), user_id.as_str());
            self.out.breaker_changed(tenant_id.clone(), user_id, state, t == Transition::Opened);
        }
        for room in emptied {
            self.room_emptied(now, &tenant_id, room);
        }
        if detached {
            self.detach_user(now, uidx);
        }
    }

    /// The user's last connection closed: `user.rs` decides whether it is kept (and whether
    /// another detached user is evicted to make room).
    fn detach_user(&mut self, now: Instant, uidx: u32) {
        let decision = self.users.detach(now, uidx, &self.cfg);
        if let Some(evicted) = decision.evicted {
            self.retire_user(evicted, true);
        }
        if decision.retire_now {
            self.retire_user(uidx, false);
        }
    }

    /// Retires the detached user closest to retirement, early. False if there is none.
    pub(crate) fn evict_detached(&mut self) -> bool {
        let Some(oldest) = self.users.pop_evictable() else { return false };
        self.retire_user(oldest, true);
        true
    }

    /// Forgets a user's state, its stream and buffer. Its retirement timer, if any, has already
    /// fired or been cancelled.
    fn retire_user(&mut self, uidx: u32, evicted: bool) {
        let user = self.users.remove(uidx);
        self.buffers.dropped(&user.stream);
        self.untrack(&crate::cluster::StreamKey::user(user.tenant.clone(), user.user.clone()));
        if let Some(tenant) = self.tenants.get_mut(&user.tenant) {
            tenant.users -= 1;
            if tenant.is_unused() {
                let tenant = self.tenants.remove(&user.tenant).expect("present");
                self.buffers.dropped(&tenant.stream);
                self.untrack(&crate::cluster::StreamKey::tenant(user.tenant.clone()));
            }
        }
        self.out.user_retired(user.tenant, user.user, evicted);
    }

    /// The transport went away. The connection is forgotten; no `Close` is emitted.
    /// [`DisconnectReason::Abnormal`] counts toward the user's reconnect breaker.
    ///
    /// # Errors
    ///
    /// [`ConnError::Unknown`] if no connection with this id is open (closed, or never existed), or
    /// [`ConnError::Stale`] (also audited as [`AuditKind::StaleConnId`]) if the id's slot now belongs
    /// to a newer connection. Nothing changes.
    pub fn disconnect(
        &mut self,
        now: Instant,
        conn: ConnId,
        reason: DisconnectReason,
    ) -> Result<(), ConnError> {
        let now = self.clock(now);
        let idx = self.resolve(now, conn)?;
        self.close_conn(now, idx, ClosedBy::Transport(reason));
        Ok(())
    }

    /// The application closes a connection (for example, the user was removed, or the server
    /// shuts down). Emits `Close`.
    ///
    /// # Errors
    ///
    /// [`ConnError::Unknown`] if no connection with this id is open (closed, or never existed), or
    /// [`ConnError::Stale`] (also audited as [`AuditKind::StaleConnId`]) if the id's slot now belongs
    /// to a newer connection. Nothing changes.
    pub fn close(
        &mut self,
        now: Instant,
        conn: ConnId,
        reason: CloseReason,
    ) -> Result<(), ConnError> {
        let now = self.clock(now);
        let idx = self.resolve(now, conn)?;
        self.close_conn(now, idx, ClosedBy::Hub(reason));
        Ok(())
    }

    /// Closes every connection of a user with `reason` (for example [`CloseReason::Kicked`] when
    /// an administrator removes them), oldest first. Returns how many were closed: 0 for a user
    /// the hub does not hold, or one with no connection open. Only this tenant's user: a user id
    /// of another tenant is another user.
    pub fn close_user(
        &mut self,
        now: Instant,
        tenant: &TenantId,
        user: &UserId,
        reason: CloseReason,
    ) -> usize {
        let now = self.clock(now);
        let Some(uidx) = self.users.find(tenant.as_str(), user.as_str()) else { return 0 };
        let conns = self.users.get(uidx).conns.clone();
        for &idx in &conns {
            // A close may retire the user (its last connection), but never reuses a slot here.
            if self.conns.contains(idx) {
                self.close_conn(now, idx, ClosedBy::Hub(reason));
            }
        }
        conns.len()
    }

    /// A transport-level pong arrived: the peer is alive. If it answers the hub's `Ping`, the
    /// time since the hub asked for that ping is the connection's round trip
    /// ([`ConnView::round_trip`], [`HubStats::round_trips`]).
    ///
    /// # Errors
    ///
    /// [`ConnError::Unknown`] if no connection with this id is open (closed, or never existed), or
    /// [`ConnError::Stale`] (also audited as [`AuditKind::StaleConnId`]) if the id's slot now belongs
    /// to a newer connection. Nothing changes.
    pub fn pong(&mut self, now: Instant, conn: ConnId) -> Result<(), ConnError> {
        let now = self.clock(now);
        let idx = self.resolve(now, conn)?;
        if let Some(rtt) = self.conns.get_mut(idx).pong(now, self.cfg.heartbeat.timeout) {
            self.out.stats.round_trips.observe(rtt);
        }
        self.conns.rearm_if_earlier(idx, &self.cfg);
        self.out.stats.pongs_received += 1;
        Ok(())
    }

    /// The transport flushed `bytes` bytes of frames delivered to this connection: they no longer
    /// count against its backpressure limits.
    ///
    /// # Errors
    ///
    /// [`ConnError::Unknown`] if no connection with this id is open (closed, or never existed), or
    /// [`ConnError::Stale`] (also audited as [`AuditKind::StaleConnId`]) if the id's slot now belongs
    /// to a newer connection. Nothing changes.
    pub fn written(&mut self, now: Instant, conn: ConnId, bytes: usize) -> Result<(), ConnError> {
        let now = self.clock(now);
        let idx = self.resolve(now, conn)?;
        self.conns.get_mut(idx).written(bytes as u64);
        self.out.stats.bytes_written = self.out.stats.bytes_written.saturating_add(bytes as u64);
        Ok(())
    }

    /// The caller re-authenticated the session: it now expires at `expires_at` (`None`: never).
    ///
    /// # Errors
    ///
    /// [`RefreshError::Conn`] as for any call naming a connection (see [`ConnError`]), or
    /// [`RefreshError::ExpiryInPast`] if `expires_at` is not after `now`; the session is unchanged.
    pub fn refresh(
        &mut self,
        now: Instant,
        conn: ConnId,
        expires_at: Option<Instant>,
    ) -> Result<(), RefreshError> {
        let now = self.clock(now);
        let idx = self.resolve(now, conn)?;
        if expires_at.is_some_and(|exp| exp <= now) {
            return Err(RefreshError::ExpiryInPast);
        }
        self.conns.get_mut(idx).refresh_session(expires_at);
        self.conns.rearm_if_earlier(idx, &self.cfg);
        self.out.stats.sessions_refreshed += 1;
        Ok(())
    }

    /// Sends a control frame, or closes the connection if it is too far behind to take one.
    pub(crate) fn control_or_close(&mut self, now: Instant, idx: u32, frame: &Frame) {
        if self.flow.control(&mut self.out, &mut self.conns, idx, frame, &self.cfg)
            == Offer::Overflow
        {
            self.close_conn(now, idx, ClosedBy::Hub(CloseReason::SlowConsumer));
        }
    }

    // -----------------------------------------------------------------------------------------
    // Timers

    /// Runs every timer that is due: heartbeats, pong timeouts, session refresh and expiry,
    /// resume windows, user retirement, breakers, snapshots. Costs O((due + 1) · log n); calling it
    /// early or twice is harmless.
    pub fn tick(&mut self, now: Instant) {
        let now = self.clock(now);
        self.cluster_tick(now);
        while let Some(uidx) = self.users.pop_retiring(now) {
            self.retire_user(uidx, false);
        }
        while let Some((tenant, room)) = self.tenants.pop_expired(now) {
            self.drop_room(&tenant, &room);
        }
        while let Some(key) = self.buffers.pop_due(now) {
            self.stream_aged(now, key);
        }
        // Breakers before connections: a probe's health is settled before its heartbeat.
        while let Some(change) = self.breakers.pop_due(now, &self.cfg.breaker) {
            if let Some((tenant, user, state, _)) = change {
                self.out.breaker_changed(tenant, user, state, false);
            }
        }
        while let Some((idx, due)) = self.conns.pop_due(now, &self.cfg) {
            self.on_conn_timer(now, idx, due);
        }
        // After the connections: a close this tick starts its grace now.
        self.presence_tick(now);
        // Last: the snapshot sees what the tick's timers did.
        if self.snapshot.pop_due(now, self.cfg.snapshot_interval) {
            let snapshot = self.stats();
            self.out.snapshot(snapshot);
        }
    }

    /// A stream's age timer fired.
    fn stream_aged(&mut self, now: Instant, key: TrimKey) {
        // Always found: dropping a stream cancels its timer.
        if let Some(stream) = publish::stream_of(&mut self.users, &mut self.tenants, &key) {
            self.buffers.handle_timeout(stream, key, now, &self.cfg);
        }
    }

    /// A connection's timer found `due` (its timer is already re-armed; a close disarms it).
    fn on_conn_timer(&mut self, now: Instant, idx: u32, due: Due) {
        let id = self.conns.id_of(idx);
        if let Some(reason) = due.close {
            self.close_conn(now, idx, ClosedBy::Hub(reason));
            return;
        }
        if let Some(expires_in) = due.refresh {
            let frame = self.flow.writer.refresh_required(millis(expires_in));
            self.out.stats.refresh_required_sent += 1;
            self.control_or_close(now, idx, &frame);
            if !self.conns.contains(idx) {
                return;
            }
        }
        if due.ping {
            self.out.ping(id);
        }
        // A resume waiting for the log ends the hold itself.
        if due.release && !self.resuming(id) {
            let _still_open = self.release(now, idx, None);
        }
    }

    // -----------------------------------------------------------------------------------------
    // Outputs and views

    /// The next thing to do, or `None` when the queue is empty. Drain until `None` after every
    /// call into the hub.
    #[must_use]
    #[inline]
    pub fn poll_action(&mut self) -> Option<Action> {
        self.out.pop()
    }

    /// When to call [`Hub::tick`] next: the earliest armed deadline, or the last `now` seen while
    /// actions are still queued (drain them first). `None` when nothing is armed.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_timeout().map(|(at, _)| at)
    }

    /// [`Hub::poll_timeout`] with the reason the hub wakes then (for debugging and tracing): the
    /// soonest of its components' deadlines.
    #[must_use]
    pub fn next_timeout(&self) -> Option<(Instant, WakeReason)> {
        if !self.out.is_empty() {
            return self.last_now.map(|at| (at, WakeReason::Drain));
        }
        // Among components due at one instant, the first listed names the reason.
        [
            self.conns.poll_timeout().map(|(at, id)| (at, WakeReason::Connection(id))),
            self.snapshot.poll_timeout().map(|at| (at, WakeReason::Snapshot)),
            self.users.poll_timeout().map(|at| (at, WakeReason::UserRetention)),
            self.breakers.poll_timeout().map(|at| (at, WakeReason::Breaker)),
            self.buffers.poll_timeout().map(|at| (at, WakeReason::StreamAge)),
            self.tenants.poll_timeout().map(|at| (at, WakeReason::RoomRetention)),
            self.node.as_deref().and_then(|n| n.poll_timeout()).map(|at| (at, WakeReason::Bus)),
            self.resume_timeout().map(|at| (at, WakeReason::Bus)),
            self.presence_timeout().map(|at| (at, WakeReason::Presence)),
        ]
        .into_iter()
        .flatten()
        .min_by_key(|(at, _)| *at)
    }

    /// Counters and gauges. The gauges are derived from the components that hold what they
    /// count when they are read, in O(1).
    #[must_use]
    pub fn stats(&self) -> HubStats {
        let mut stats = self.out.stats;
        let users = self.users.slab.len() as u64;
        let detached = self.users.detached_count() as u64;
        stats.connections_active = self.conns.len() as u64;
        stats.users_active = users - detached;
        stats.users_detached = detached;
        stats.tenants = self.tenants.len() as u64;
        stats.rooms_idle = self.tenants.idle_rooms() as u64;
        (stats.buffered_messages, stats.buffered_bytes) = self.buffers.totals();
        stats.presence_scopes = self.presence.scopes() as u64;
        stats.idempotency_keys = self.idempotency.len() as u64;
        if let Some(node) = self.node.as_deref() {
            stats.bus = node.counters;
            stats.bus.in_flight = node.in_flight() as u64;
            stats.bus.streams = node.streams.len() as u64;
            stats.bus.presence_remote_entries = self.remote.entries();
        }
        stats
    }

    /// Moving averages of one tier's traffic.
    pub fn tier_rates(&self, tier: Tier) -> Rates {
        self.flow.tier_rates(tier)
    }

    /// A user's state, if the hub holds it (active or detached).
    pub fn user(&self, tenant: &str, user: &str) -> Option<UserView<'_>> {
        let uidx = self.users.find(tenant, user)?;
        let state = self.users.get(uidx);
        Some(UserView {
            state,
            breaker: self.breakers.state(tenant, user),
            conns: &self.conns,
            retires_at: self.users.retires_at(uidx),
            clock: self.flow.clock,
        })
    }

    /// An open connection, or `None` (closed, stale or never existed).
    pub fn connection(&self, id: ConnId) -> Option<ConnView<'_>> {
        match self.conns.lookup(id, self.last_now?, Duration::ZERO) {
            Lookup::Live(idx) => {
                let conn = self.conns.get(idx);
                let user = self.users.get(conn.user());
                Some(ConnView { id, conn, user, next_timer: self.conns.timer_deadline(idx) })
            }
            _ => None,
        }
    }
}

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;

pub use presence::PresenceView;
