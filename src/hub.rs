//! The [`Hub`]: every entry point of the state machine. It validates its inputs, delegates to the
//! per-connection, per-user and routing modules, and owns the queue of actions.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use hashbrown::HashMap;

use crate::action::{
    Action, AuditEvent, AuditKind, CloseReason, ClosedBy, DisconnectReason, Frame, Inbound,
    LimitKind, MetricEvent, Origin,
};
use crate::config::{Config, Tier, UserLimitPolicy};
use crate::connection::{Connection, Connections, Due, Lookup};
use crate::error::{
    ConfigError, ConnError, ConnectError, PeerError, PublishError, ReceiveError, RefreshError,
    RoomError,
};
use crate::ids::{ConnId, Role, Roles, RoomId, RunId, TenantId, ThreadId, UserId};
use crate::limits::{Bucket, Rate};
use crate::protocol::{
    Audience, ClientFrame, Envelope, EventKind, FrameWriter, Redactor, Target, parse_client_frame,
};
use crate::routing::{Tenant, audience_admits};
use crate::stats::HubStats;
use crate::stream::{Epochs, Stream, StreamName, StreamPos};
use crate::timer::{TimerId, TimerQueue};
use crate::user::{UserState, Users};
use crate::view::{ConnView, UserView, retires_at};

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
        }
    }

    /// Sets the tier.
    pub fn tier(mut self, tier: Tier) -> Self {
        self.tier = tier;
        self
    }

    /// Sets the roles.
    pub fn roles<R: Into<Role>>(mut self, roles: impl IntoIterator<Item = R>) -> Self {
        self.roles = roles.into_iter().collect();
        self
    }

    /// Sets the session expiry.
    pub fn expires_at(mut self, at: Instant) -> Self {
        self.expires_at = Some(at);
        self
    }
}

/// What a publish did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Published {
    /// Connections a `Deliver` was queued for.
    pub delivered: usize,
    /// The stream the message went into and its position there; `None` when there was no such
    /// stream (a user the hub does not hold, a room without members, a tenant without state) or
    /// when it went into several (`Everyone`: one message per tenant).
    pub position: Option<(StreamName, StreamPos)>,
}

impl Published {
    /// Whether the message reached no connection.
    pub fn undeliverable(&self) -> bool {
        self.delivered == 0
    }
}

#[derive(Clone, Copy, Debug)]
enum TimerKey {
    Conn(u32),
    User(u32),
    Snapshot,
}

/// The action queue and the counters, kept together because almost every output bumps one.
#[derive(Debug, Default)]
struct Sink {
    actions: VecDeque<Action>,
    stats: HubStats,
}

impl Sink {
    fn deliver(&mut self, conns: &mut Connections, idx: u32, frame: &Frame) {
        let conn = conns.get_mut(idx);
        conn.unwritten += frame.len() as u64;
        self.stats.deliveries += 1;
        self.stats.bytes_delivered += frame.len() as u64;
        self.actions.push_back(Action::Deliver { conn: conns.id_of(idx), frame: frame.clone() });
    }

    fn audit(
        &mut self,
        kind: AuditKind,
        conn: Option<ConnId>,
        tenant: Option<&TenantId>,
        user: Option<&UserId>,
    ) {
        self.stats.security_violations += 1;
        self.actions.push_back(Action::Audit(AuditEvent {
            kind,
            conn,
            tenant: tenant.cloned(),
            user: user.cloned(),
        }));
    }

    fn limit(&mut self, limit: LimitKind, conn: Option<ConnId>, tenant: &TenantId, user: &UserId) {
        self.stats.limit_rejections.bump(limit);
        self.actions.push_back(Action::Metric(MetricEvent::LimitRejected { limit }));
        self.audit(AuditKind::LimitHit(limit), conn, Some(tenant), Some(user));
    }
}

/// The connection hub: a synchronous, sans-io state machine. See the [crate docs](crate) for the
/// drive loop.
#[derive(Debug)]
pub struct Hub {
    cfg: Config,
    redactor: Redactor,
    last_now: Option<Instant>,
    conns: Connections,
    users: Users,
    tenants: HashMap<TenantId, Tenant>,
    timers: TimerQueue<TimerKey>,
    snapshot: Option<TimerId>,
    out: Sink,
    writer: FrameWriter,
    pong: Option<Frame>,
    epochs: Epochs,
}

impl Hub {
    /// A hub with this configuration, or the reason it makes no sense.
    pub fn new(cfg: Config) -> Result<Self, ConfigError> {
        cfg.validate()?;
        Ok(Self {
            redactor: Redactor::new(&cfg.redact_keys),
            epochs: Epochs::new(cfg.seed),
            cfg,
            last_now: None,
            conns: Connections::default(),
            users: Users::default(),
            tenants: HashMap::new(),
            timers: TimerQueue::new(),
            snapshot: None,
            out: Sink::default(),
            writer: FrameWriter::default(),
            pong: None,
        })
    }

    /// The configuration the hub runs with.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Time never goes backwards inside the hub: an earlier `now` is taken as the last one seen.
    fn clock(&mut self, now: Instant) -> Instant {
        let now = self.last_now.map_or(now, |last| last.max(now));
        self.last_now = Some(now);
        if self.snapshot.is_none() {
            if let Some(every) = self.cfg.snapshot_interval {
                self.snapshot = Some(self.timers.insert(now + every, TimerKey::Snapshot));
            }
        }
        now
    }

    /// Resolves a caller-supplied id; a stale one is refused and audited.
    fn resolve(&mut self, now: Instant, id: ConnId) -> Result<u32, ConnError> {
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
    /// Refused, with nothing created, when the session already expired or a limit is reached
    /// (total, per tenant, or per user with [`UserLimitPolicy::Reject`]). With
    /// [`UserLimitPolicy::EvictOldest`] the user's oldest connection is closed with
    /// [`CloseReason::Replaced`] instead.
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
        let limit = self.cfg.tiers.get(principal.tier).max_connections_per_user;
        let uidx = self.users.find(tenant_id.as_str(), user_id.as_str());
        let held = uidx.map_or(0, |u| self.users.get(u).conns.len());
        // Connections that admitting this one will evict (they free their own slots).
        let mut evict = 0;
        if held >= limit as usize {
            match self.cfg.user_limit_policy {
                UserLimitPolicy::Reject => {
                    self.out.limit(LimitKind::UserConnections, None, tenant_id, user_id);
                    return Err(ConnectError::UserLimit { tier: principal.tier, limit });
                }
                UserLimitPolicy::EvictOldest => evict = held + 1 - limit as usize,
            }
        }
        if self.conns.len() - evict >= self.cfg.max_connections as usize {
            self.out.limit(LimitKind::TotalConnections, None, tenant_id, user_id);
            return Err(ConnectError::TooManyConnections { limit: self.cfg.max_connections });
        }
        if let Some(cap) = self.cfg.max_connections_per_tenant {
            let in_tenant = self.tenants.get(tenant_id).map_or(0, |t| t.conns.len());
            if in_tenant - evict >= cap as usize {
                self.out.limit(LimitKind::TenantConnections, None, tenant_id, user_id);
                return Err(ConnectError::TenantLimit { limit: cap });
            }
        }

        // Admitted: from here on nothing fails.
        let uidx = match uidx {
            Some(u) => {
                self.reattach_user(u);
                u
            }
            None => self.create_user(now, &principal),
        };
        let idx = self.conns.next_index();
        let conn = Connection {
            tenant: principal.tenant.clone(),
            user_id: principal.user.clone(),
            user: uidx,
            tenant_pos: 0,
            tier: principal.tier,
            roles: principal.roles,
            opened_at: now,
            last_seen: now,
            ping_sent: None,
            expires_at: principal.expires_at,
            refresh_sent: false,
            timer: TimerId::placeholder(),
            threads: None,
            rooms: Vec::new(),
            messages: Bucket::full(now),
            control: Bucket::full(now),
            violations: Bucket::full(now),
            unwritten: 0,
        };
        let deadline = conn.next_deadline(&self.cfg);
        let id = self.conns.insert(conn);
        debug_assert_eq!(id.index, idx);
        self.conns.get_mut(idx).timer = self.timers.insert(deadline, TimerKey::Conn(idx));
        let tenant = self.tenants.get_mut(&principal.tenant).expect("created with the user");
        tenant.add_conn(&mut self.conns, idx);
        let tenant_pos = tenant.stream.position();
        let user = self.users.get_mut(uidx);
        user.conns.push(idx);
        let user_pos = user.stream.position();

        let stats = &mut self.out.stats;
        stats.connections_opened += 1;
        stats.connections_active += 1;
        self.out.actions.push_back(Action::Metric(MetricEvent::ConnectionOpened {
            conn: id,
            tenant: principal.tenant.clone(),
            user: principal.user.clone(),
            tier: principal.tier,
        }));
        let frame = self.writer.connected(
            id,
            &principal.tenant,
            &principal.user,
            millis(self.cfg.heartbeat.interval),
            principal.expires_at.map(|exp| millis(exp - now)),
            &[(StreamName::User, user_pos), (StreamName::Tenant, tenant_pos)],
        );
        self.out.deliver(&mut self.conns, idx, &frame);

        for _ in 0..evict {
            let oldest = self.users.get(uidx).conns[0];
            let oldest_id = self.conns.id_of(oldest);
            self.out.limit(
                LimitKind::UserConnectionsEvicted,
                Some(oldest_id),
                &principal.tenant,
                &principal.user,
            );
            self.close_conn(now, oldest, ClosedBy::Hub(CloseReason::Replaced));
        }
        Ok(id)
    }

    fn create_user(&mut self, now: Instant, principal: &Principal) -> u32 {
        let epochs = &mut self.epochs;
        let tenant = self
            .tenants
            .entry_ref(&principal.tenant)
            .or_insert_with(|| Tenant::new(Stream::new(epochs.next())));
        tenant.users += 1;
        let uidx = self.users.insert(UserState {
            tenant: principal.tenant.clone(),
            user: principal.user.clone(),
            conns: Vec::new(),
            stream: Stream::new(self.epochs.next()),
            created_at: now,
            retire: None,
        });
        let stats = &mut self.out.stats;
        stats.users_created += 1;
        stats.users_active += 1;
        stats.tenants = self.tenants.len() as u64;
        self.out.actions.push_back(Action::Metric(MetricEvent::UserCreated {
            tenant: principal.tenant.clone(),
            user: principal.user.clone(),
        }));
        uidx
    }

    /// A detached user's connection came back within retention: it keeps its stream.
    fn reattach_user(&mut self, uidx: u32) {
        if let Some((timer, _)) = self.users.get_mut(uidx).retire.take() {
            self.timers.cancel(timer);
            self.out.stats.users_detached -= 1;
            self.out.stats.users_active += 1;
        }
    }

    /// Removes a connection from every index. A hub-initiated close also emits `Close`.
    fn close_conn(&mut self, now: Instant, idx: u32, by: ClosedBy) {
        let id = self.conns.id_of(idx);
        let (tenant_id, uidx, timer) = {
            let c = self.conns.get(idx);
            (c.tenant.clone(), c.user, c.timer)
        };
        let tenant = self.tenants.get_mut(&tenant_id).expect("connection's tenant exists");
        let rooms_before = tenant.rooms.len();
        tenant.leave_all(&mut self.conns, idx);
        tenant.remove_conn(&mut self.conns, idx);
        let rooms_dropped = rooms_before - tenant.rooms.len();
        self.timers.cancel(timer);
        let conn = self.conns.remove(idx, now);
        let user = self.users.get_mut(uidx);
        user.conns.retain(|&c| c != idx);
        let detached = user.conns.is_empty();

        if let ClosedBy::Hub(reason) = by {
            self.out.actions.push_back(Action::Close { conn: id, reason });
        }
        let lifetime = now.saturating_duration_since(conn.opened_at);
        let stats = &mut self.out.stats;
        stats.rooms -= rooms_dropped as u64;
        stats.connections_closed += 1;
        stats.connections_active -= 1;
        stats.closed_by.bump(by);
        stats.total_connection_lifetime += lifetime;
        self.out.actions.push_back(Action::Metric(MetricEvent::ConnectionClosed {
            conn: id,
            tenant: conn.tenant,
            user: conn.user_id,
            lifetime,
            reason: by,
        }));
        if detached {
            self.out.stats.users_active -= 1;
            if self.cfg.user_retention.is_zero() {
                self.retire_user(uidx);
            } else {
                self.out.stats.users_detached += 1;
                let timer = self.timers.insert(now + self.cfg.user_retention, TimerKey::User(uidx));
                self.users.get_mut(uidx).retire = Some((timer, now));
            }
        }
    }

    fn retire_user(&mut self, uidx: u32) {
        let user = self.users.remove(uidx);
        // Its retire timer, if any, is the one that just fired (zero retention arms none).
        if user.retire.is_some() {
            self.out.stats.users_detached -= 1;
        }
        if let Some(tenant) = self.tenants.get_mut(&user.tenant) {
            tenant.users -= 1;
            if tenant.is_unused() {
                self.tenants.remove(&user.tenant);
            }
        }
        let stats = &mut self.out.stats;
        stats.users_retired += 1;
        stats.tenants = self.tenants.len() as u64;
        self.out.actions.push_back(Action::Metric(MetricEvent::UserRetired {
            tenant: user.tenant,
            user: user.user,
        }));
    }

    /// The transport went away. The connection is forgotten; no `Close` is emitted.
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

    /// The application closes a connection (for example, the user was removed). Emits `Close`.
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

    /// A transport-level pong arrived: the peer is alive.
    pub fn pong(&mut self, now: Instant, conn: ConnId) -> Result<(), ConnError> {
        let now = self.clock(now);
        let idx = self.resolve(now, conn)?;
        self.conns.get_mut(idx).seen(now);
        self.out.stats.pongs_received += 1;
        Ok(())
    }

    /// The transport flushed `bytes` bytes of frames delivered to this connection.
    pub fn written(&mut self, now: Instant, conn: ConnId, bytes: usize) -> Result<(), ConnError> {
        let now = self.clock(now);
        let idx = self.resolve(now, conn)?;
        let c = self.conns.get_mut(idx);
        c.unwritten = c.unwritten.saturating_sub(bytes as u64);
        self.out.stats.bytes_written += bytes as u64;
        Ok(())
    }

    /// The caller re-authenticated the session: it now expires at `expires_at` (`None`: never).
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
        let c = self.conns.get_mut(idx);
        c.expires_at = expires_at;
        c.refresh_sent = false;
        let deadline = c.next_deadline(&self.cfg);
        // Deadlines that move later are picked up lazily when the armed timer fires; an earlier
        // one must move the timer now.
        if deadline < self.timers.deadline(c.timer) {
            self.timers.reschedule(c.timer, deadline);
        }
        self.out.stats.sessions_refreshed += 1;
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Rooms

    /// Puts a connection into a room of its own tenant. Returns `false` if it was already there.
    pub fn join(&mut self, now: Instant, conn: ConnId, room: RoomId) -> Result<bool, RoomError> {
        let now = self.clock(now);
        let idx = self.resolve(now, conn)?;
        let c = self.conns.get(idx);
        if c.rooms.iter().any(|m| m.room == room) {
            return Ok(false);
        }
        if c.rooms.len() >= self.cfg.max_rooms_per_connection as usize {
            let (t, u) = (c.tenant.clone(), c.user_id.clone());
            self.out.limit(LimitKind::RoomsPerConnection, Some(conn), &t, &u);
            return Err(RoomError::TooManyRooms { limit: self.cfg.max_rooms_per_connection });
        }
        let tenant = self.tenants.get_mut(&c.tenant).expect("connection's tenant exists");
        let before = tenant.rooms.len();
        let epochs = &mut self.epochs;
        let joined = tenant.join(&mut self.conns, idx, &room, || Stream::new(epochs.next()));
        self.out.stats.rooms += (tenant.rooms.len() - before) as u64;
        Ok(joined)
    }

    /// Takes a connection out of a room. Returns `false` if it was not there.
    pub fn leave(&mut self, now: Instant, conn: ConnId, room: &str) -> Result<bool, ConnError> {
        let now = self.clock(now);
        let idx = self.resolve(now, conn)?;
        let tenant_id = self.conns.get(idx).tenant.clone();
        let tenant = self.tenants.get_mut(&tenant_id).expect("connection's tenant exists");
        let before = tenant.rooms.len();
        let left = tenant.leave(&mut self.conns, idx, room);
        self.out.stats.rooms -= (before - tenant.rooms.len()) as u64;
        Ok(left)
    }

    // -----------------------------------------------------------------------------------------
    // Client frames

    /// A text (or binary) frame arrived from the client. Any frame proves the peer alive.
    ///
    /// A frame that is oversized, malformed, unknown, over a rate or over a limit gets an `error`
    /// frame and `Err(ReceiveError::Peer(..))`; after `max_violations` of those in a row the
    /// connection is also closed with [`CloseReason::ProtocolViolation`].
    pub fn receive(
        &mut self,
        now: Instant,
        conn: ConnId,
        frame: &[u8],
    ) -> Result<(), ReceiveError> {
        let now = self.clock(now);
        let idx = self.resolve(now, conn)?;
        self.out.stats.frames_received += 1;
        self.conns.get_mut(idx).seen(now);
        if frame.len() > self.cfg.max_frame_bytes {
            let err =
                PeerError::FrameTooLarge { size: frame.len(), limit: self.cfg.max_frame_bytes };
            return Err(self.peer_error(
                now,
                idx,
                err,
                Some(LimitKind::FrameSize),
                AuditKind::OversizedFrame,
            ));
        }
        let parsed = match parse_client_frame(frame, self.cfg.max_client_id_bytes) {
            Ok(f) => f,
            Err(err) => {
                return Err(self.peer_error(now, idx, err, None, AuditKind::MalformedFrame));
            }
        };
        let c = self.conns.get_mut(idx);
        let (bucket, rate, limit) = if parsed.is_message() {
            let q = self.cfg.tiers.get(c.tier);
            (
                &mut c.messages,
                Rate::per_minute(q.messages_per_minute, q.message_burst),
                LimitKind::MessageRate,
            )
        } else {
            (
                &mut c.control,
                Rate::per_minute(self.cfg.control_frames_per_minute, self.cfg.control_burst),
                LimitKind::ControlRate,
            )
        };
        if !bucket.try_take(now, rate) {
            return Err(self.peer_error(
                now,
                idx,
                PeerError::RateLimited,
                Some(limit),
                AuditKind::Flood,
            ));
        }
        match parsed {
            ClientFrame::Subscribe { thread } => {
                let max = self.cfg.max_thread_subscriptions;
                let threads = c.threads.get_or_insert_with(Vec::new);
                if !threads.iter().any(|t| t.as_str() == thread) {
                    if threads.len() >= max as usize {
                        let err = PeerError::TooManySubscriptions { limit: max };
                        return Err(self.peer_error(
                            now,
                            idx,
                            err,
                            Some(LimitKind::ThreadSubscriptions),
                            AuditKind::LimitHit(LimitKind::ThreadSubscriptions),
                        ));
                    }
                    threads.push(ThreadId::from(&*thread));
                }
            }
            ClientFrame::Unsubscribe { thread: None } => c.threads = None,
            ClientFrame::Unsubscribe { thread: Some(thread) } => {
                if let Some(threads) = &mut c.threads {
                    threads.retain(|t| t.as_str() != thread);
                }
            }
            ClientFrame::Message { thread, data } => {
                let from = Origin { tenant: c.tenant.clone(), user: c.user_id.clone(), conn };
                self.out.stats.inbound_messages += 1;
                self.out.actions.push_back(Action::Inbound(Box::new(Inbound {
                    from,
                    thread: thread.map(|t| ThreadId::from(&*t)),
                    data,
                })));
            }
            ClientFrame::Ping => {
                let writer = &mut self.writer;
                let pong = self.pong.get_or_insert_with(|| writer.pong()).clone();
                self.out.deliver(&mut self.conns, idx, &pong);
            }
        }
        Ok(())
    }

    /// Answers a misbehaving frame: count it, audit it, tell the client, and close the connection
    /// once its violation allowance is spent.
    fn peer_error(
        &mut self,
        now: Instant,
        idx: u32,
        err: PeerError,
        limit: Option<LimitKind>,
        audit: AuditKind,
    ) -> ReceiveError {
        let id = self.conns.id_of(idx);
        let (tenant, user) = {
            let c = self.conns.get(idx);
            (c.tenant.clone(), c.user_id.clone())
        };
        self.out.stats.protocol_errors += 1;
        match limit {
            Some(limit) => {
                // `limit` audits as LimitHit; other audits (flood, oversized) add their own kind.
                self.out.stats.limit_rejections.bump(limit);
                self.out.actions.push_back(Action::Metric(MetricEvent::LimitRejected { limit }));
                self.out.audit(audit, Some(id), Some(&tenant), Some(&user));
            }
            None => self.out.audit(audit, Some(id), Some(&tenant), Some(&user)),
        }
        let frame = self.writer.error(&err);
        self.out.deliver(&mut self.conns, idx, &frame);
        let allowance = Rate::every(self.cfg.violation_refill, self.cfg.max_violations);
        if !self.conns.get_mut(idx).violations.try_take(now, allowance) {
            self.out.audit(AuditKind::ViolationClose, Some(id), Some(&tenant), Some(&user));
            self.close_conn(now, idx, ClosedBy::Hub(CloseReason::ProtocolViolation));
        }
        ReceiveError::Peer(err)
    }

    // -----------------------------------------------------------------------------------------
    // Publishing

    /// Routes an envelope to its target's connections: serialized once, shared by every
    /// recipient.
    pub fn publish(&mut self, now: Instant, envelope: Envelope) -> Result<Published, PublishError> {
        let now = self.clock(now);
        if !envelope.kind.is_valid() {
            return Err(PublishError::InvalidKind);
        }
        let Envelope { target, kind, thread, run, data } = envelope;
        let result = match target {
            Target::User { tenant, user } => {
                self.publish_user((&tenant, &user), None, &kind, thread, run.as_ref(), &data)?
            }
            Target::Thread { tenant, user, thread: target_thread } => {
                if thread.as_ref().is_some_and(|t| *t != target_thread) {
                    return Err(PublishError::ThreadMismatch);
                }
                self.publish_user(
                    (&tenant, &user),
                    None,
                    &kind,
                    Some(target_thread),
                    run.as_ref(),
                    &data,
                )?
            }
            Target::Connection(id) => {
                let idx = self.resolve(now, id)?;
                let c = self.conns.get(idx);
                let (tenant, user) = (c.tenant.clone(), c.user_id.clone());
                self.publish_user((&tenant, &user), Some(idx), &kind, thread, run.as_ref(), &data)?
            }
            Target::Room { tenant, room } => {
                let Some(t) = self.tenants.get_mut(&tenant) else {
                    return Ok(self.undeliverable());
                };
                let Some(r) = t.rooms.get_mut(&room) else { return Ok(self.undeliverable()) };
                let pos = r.stream.assign();
                let name = StreamName::Room(room);
                let frame = self.writer.event(
                    &kind,
                    &name,
                    pos,
                    thread.as_ref(),
                    run.as_ref(),
                    &data,
                    &self.redactor,
                );
                for m in &r.members {
                    self.out.deliver(&mut self.conns, m.conn, &frame);
                }
                Published { delivered: r.members.len(), position: Some((name, pos)) }
            }
            Target::Tenant { tenant, audience } => {
                let Some(t) = self.tenants.get_mut(&tenant) else {
                    return Ok(self.undeliverable());
                };
                let role = match &audience {
                    Audience::All => None,
                    Audience::Role(r) => Some(r),
                };
                let pos = t.stream.assign();
                let frame = self.writer.event(
                    &kind,
                    &StreamName::Tenant,
                    pos,
                    thread.as_ref(),
                    run.as_ref(),
                    &data,
                    &self.redactor,
                );
                let mut delivered = 0;
                for &idx in &t.conns {
                    if audience_admits(&self.conns.get(idx).roles, role) {
                        self.out.deliver(&mut self.conns, idx, &frame);
                        delivered += 1;
                    }
                }
                Published { delivered, position: Some((StreamName::Tenant, pos)) }
            }
            Target::Everyone => {
                if !self.cfg.allow_global_broadcast {
                    self.out.audit(AuditKind::GlobalBroadcastDenied, None, None, None);
                    return Err(PublishError::GlobalBroadcastDisabled);
                }
                self.out.audit(AuditKind::GlobalBroadcast, None, None, None);
                let mut delivered = 0;
                for t in self.tenants.values_mut() {
                    if t.conns.is_empty() {
                        continue;
                    }
                    let pos = t.stream.assign();
                    let frame = self.writer.event(
                        &kind,
                        &StreamName::Tenant,
                        pos,
                        thread.as_ref(),
                        run.as_ref(),
                        &data,
                        &self.redactor,
                    );
                    for &idx in &t.conns {
                        self.out.deliver(&mut self.conns, idx, &frame);
                    }
                    delivered += t.conns.len();
                }
                Published { delivered, position: None }
            }
        };
        self.out.stats.publishes += 1;
        if result.delivered == 0 {
            self.out.stats.undeliverable += 1;
        }
        Ok(result)
    }

    fn undeliverable(&mut self) -> Published {
        self.out.stats.publishes += 1;
        self.out.stats.undeliverable += 1;
        Published { delivered: 0, position: None }
    }

    /// Publishes on a user's stream: to `only` if given, else to every connection whose thread
    /// filter admits `thread`.
    #[allow(clippy::too_many_arguments)]
    fn publish_user(
        &mut self,
        (tenant, user): (&TenantId, &UserId),
        only: Option<u32>,
        kind: &EventKind,
        thread: Option<ThreadId>,
        run: Option<&RunId>,
        data: &serde_json::Value,
    ) -> Result<Published, PublishError> {
        let Some(uidx) = self.users.find(tenant.as_str(), user.as_str()) else {
            // A user the hub does not hold: nothing is created for it.
            return Ok(Published { delivered: 0, position: None });
        };
        let u = self.users.get_mut(uidx);
        let pos = u.stream.assign();
        let frame = self.writer.event(
            kind,
            &StreamName::User,
            pos,
            thread.as_ref(),
            run,
            data,
            &self.redactor,
        );
        let mut delivered = 0;
        match only {
            Some(idx) => {
                self.out.deliver(&mut self.conns, idx, &frame);
                delivered = 1;
            }
            None => {
                for &idx in &u.conns {
                    if self.conns.get(idx).wants(thread.as_ref()) {
                        self.out.deliver(&mut self.conns, idx, &frame);
                        delivered += 1;
                    }
                }
            }
        }
        Ok(Published { delivered, position: Some((StreamName::User, pos)) })
    }

    // -----------------------------------------------------------------------------------------
    // Timers

    /// Runs every timer that is due: heartbeats, pong timeouts, session refresh and expiry, user
    /// retirement, snapshots. Costs O((due + 1) · log n); calling it early or twice is harmless.
    pub fn tick(&mut self, now: Instant) {
        let now = self.clock(now);
        while let Some(key) = self.timers.pop_due(now) {
            match key {
                TimerKey::Conn(idx) => self.on_conn_timer(now, idx),
                TimerKey::User(uidx) => self.retire_user(uidx),
                TimerKey::Snapshot => {
                    let every = self.cfg.snapshot_interval.expect("armed only when configured");
                    self.snapshot = Some(self.timers.insert(now + every, TimerKey::Snapshot));
                    let snap = Box::new(self.out.stats);
                    self.out.actions.push_back(Action::Metric(MetricEvent::Snapshot(snap)));
                }
            }
        }
    }

    fn on_conn_timer(&mut self, now: Instant, idx: u32) {
        let c = self.conns.get_mut(idx);
        let due = c.due(now, &self.cfg);
        // The popped timer is gone; re-arm before acting so that a close can cancel it. Every
        // outcome but a close leaves the next deadline in the future.
        let next = c.next_deadline(&self.cfg).max(now + Duration::from_nanos(1));
        c.timer = self.timers.insert(next, TimerKey::Conn(idx));
        let id = self.conns.id_of(idx);
        let ping = match due {
            Due::Close(reason) => {
                self.close_conn(now, idx, ClosedBy::Hub(reason));
                return;
            }
            Due::RefreshRequired { expires_in, ping } => {
                let frame = self.writer.refresh_required(millis(expires_in));
                self.out.deliver(&mut self.conns, idx, &frame);
                self.out.stats.refresh_required_sent += 1;
                ping
            }
            Due::Ping => true,
            Due::Nothing => false,
        };
        if ping {
            self.out.stats.pings_sent += 1;
            self.out.actions.push_back(Action::Ping { conn: id });
        }
    }

    // -----------------------------------------------------------------------------------------
    // Outputs and views

    /// The next thing to do, or `None` when the queue is empty. Drain until `None` after every
    /// call into the hub.
    #[must_use]
    pub fn poll_action(&mut self) -> Option<Action> {
        self.out.actions.pop_front()
    }

    /// When to call [`Hub::tick`] next: the earliest armed deadline, or the last `now` seen while
    /// actions are still queued (drain them first). `None` when nothing is armed.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        if !self.out.actions.is_empty() {
            return self.last_now;
        }
        self.timers.peek()
    }

    /// Counters and gauges.
    pub fn stats(&self) -> &HubStats {
        &self.out.stats
    }

    /// A user's state, if the hub holds it (active or detached).
    pub fn user(&self, tenant: &str, user: &str) -> Option<UserView<'_>> {
        let state = self.users.get(self.users.find(tenant, user)?);
        Some(UserView { state, conns: &self.conns, retires_at: retires_at(state, &self.timers) })
    }

    /// An open connection, or `None` (closed, stale or never existed).
    pub fn connection(&self, id: ConnId) -> Option<ConnView<'_>> {
        let last = self.last_now?;
        match self.conns.lookup(id, last, Duration::ZERO) {
            Lookup::Live(idx) => {
                let conn = self.conns.get(idx);
                Some(ConnView { id, conn, next_timer: self.timers.deadline(conn.timer) })
            }
            _ => None,
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
