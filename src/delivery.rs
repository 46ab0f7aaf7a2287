//! Publishing and delivery: a message gets its stream position, is serialized once, kept in the
//! stream's recovery buffer, and offered to each recipient under that connection's backpressure.

use std::time::Instant;

use serde_json::Value;

use crate::action::{
    Action, AuditEvent, AuditKind, CloseReason, ClosedBy, Frame, LimitKind, MetricEvent,
};
use crate::config::{Config, Tier};
use crate::connection::Connections;
use crate::envelope::{Audience, Envelope, EventKind, Priority, Target};
use crate::error::PublishError;
use crate::hub::{Hub, TrimKey};
use crate::ids::{ConnId, RunId, TenantId, ThreadId, UserId};
use crate::protocol::FrameWriter;
use crate::routing::audience_admits;
use crate::stats::{HubStats, MeterClock, Meters};
use crate::stream::{Scope, Stream, StreamName, StreamPos};
use crate::timer::TimerQueue;

/// What a publish did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Published {
    /// Connections a `Deliver` was queued for.
    pub delivered: usize,
    /// Connections for which this `agent_thinking` frame was skipped (they are behind).
    pub skipped: usize,
    /// Connections closed with `SlowConsumer` because this critical frame did not fit.
    pub closed: usize,
    /// Connections still in their resume window: they get it from the buffer when they go live.
    pub held: usize,
    /// The stream the message went into and its position there; `None` when there was no such
    /// stream (a user the hub does not hold, a room without members, a tenant without state) or
    /// when it went into several (`Everyone`: one message per tenant).
    pub position: Option<(StreamName, StreamPos)>,
}

impl Published {
    fn none() -> Self {
        Published { delivered: 0, skipped: 0, closed: 0, held: 0, position: None }
    }

    /// Whether the message reached no connection, live or held. (It is still kept in its stream
    /// for a later resume, if it has a stream.)
    pub fn undeliverable(&self) -> bool {
        self.delivered == 0 && self.held == 0
    }

    fn add(&mut self, offer: Offer) {
        match offer {
            Offer::Delivered => self.delivered += 1,
            Offer::Skipped => self.skipped += 1,
            Offer::Overflow => self.closed += 1,
            Offer::Held => self.held += 1,
        }
    }
}

/// What happened when a frame was offered to one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Offer {
    Delivered,
    /// Low priority, and the connection is over its soft limit.
    Skipped,
    /// The connection is in its resume window; the buffer will replay it.
    Held,
    /// Critical, and it does not fit under the hard limit: the caller closes the connection.
    Overflow,
}

/// The action queue, the counters, the frame writer and the meters: everything an output touches.
#[derive(Debug)]
pub(crate) struct Sink {
    pub(crate) actions: std::collections::VecDeque<Action>,
    pub(crate) stats: HubStats,
    pub(crate) writer: FrameWriter,
    pub(crate) tiers: [Meters; 4],
    pub(crate) clock: MeterClock,
}

impl Sink {
    pub(crate) fn new(clock: MeterClock) -> Self {
        Self {
            actions: Default::default(),
            stats: HubStats::default(),
            writer: FrameWriter::default(),
            tiers: [Meters::default(); 4],
            clock,
        }
    }

    /// Queues a frame for a connection unconditionally (control frames and replays), preceded by
    /// a `skipped` notice if frames were skipped since its last delivery.
    pub(crate) fn deliver(&mut self, conns: &mut Connections, idx: u32, frame: &Frame) {
        let id = conns.id_of(idx);
        let conn = conns.get_mut(idx);
        if conn.skipped > 0 {
            let notice = self.writer.skipped(conn.skipped);
            conn.skipped = 0;
            self.push_deliver(id, &notice);
            conn.unwritten += notice.len() as u64;
        }
        conn.unwritten += frame.len() as u64;
        self.push_deliver(id, frame);
    }

    fn push_deliver(&mut self, conn: ConnId, frame: &Frame) {
        self.stats.deliveries += 1;
        self.stats.bytes_delivered += frame.len() as u64;
        self.actions.push_back(Action::Deliver { conn, frame: frame.clone() });
    }

    /// Offers a live event frame under the connection's backpressure.
    pub(crate) fn offer(
        &mut self,
        conns: &mut Connections,
        idx: u32,
        frame: &Frame,
        priority: Priority,
        cfg: &Config,
    ) -> Offer {
        let conn = conns.get_mut(idx);
        if conn.held {
            self.stats.held_back += 1;
            return Offer::Held;
        }
        let after = conn.unwritten + notice_len(conn.skipped) + frame.len() as u64;
        if priority == Priority::Low && after > cfg.max_inflight_bytes {
            conn.skipped = conn.skipped.saturating_add(1);
            self.stats.thinking_skipped += 1;
            return Offer::Skipped;
        }
        if after > cfg.max_unwritten_bytes {
            return Offer::Overflow;
        }
        // Metered on the connection, whose record this already touches: a fan-out must not
        // visit every recipient's user state (the user view sums its connections' meters).
        conn.delivered.add(self.clock, 1);
        self.tiers[tier_index(conn.tier)].delivered.add(self.clock, 1);
        self.deliver(conns, idx, frame);
        Offer::Delivered
    }

    pub(crate) fn audit(
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

    /// A limit refused something: counted, pushed as a metric, audited as `audit`.
    pub(crate) fn limit(
        &mut self,
        limit: LimitKind,
        audit: AuditKind,
        conn: Option<ConnId>,
        tenant: &TenantId,
        user: &UserId,
    ) {
        self.stats.limit_rejections.bump(limit);
        self.actions.push_back(Action::Metric(MetricEvent::LimitRejected { limit }));
        self.audit(audit, conn, Some(tenant), Some(user));
    }

    /// Keeps a message in a stream's buffer and tracks the buffered gauges.
    pub(crate) fn keep(
        &mut self,
        stream: &mut Stream,
        now: Instant,
        pos: StreamPos,
        frame: &Frame,
        scope: Scope,
        cfg: &Config,
    ) {
        let before = stream.buffered();
        stream.keep(now, pos.seq, frame, scope, &cfg.retention);
        let over = (self.stats.buffered_bytes + stream.buffered().1 as u64)
            .saturating_sub(before.1 as u64)
            .saturating_sub(cfg.max_buffered_bytes);
        if over > 0 {
            stream.shed(usize::try_from(over).unwrap_or(usize::MAX));
        }
        self.rebuffered(before, stream.buffered());
    }

    /// Trims a stream to its bounds at `now` (the age bound is otherwise applied when it grows).
    /// A stream left empty disarms its age timer; one still holding messages keeps it (it may
    /// fire early, which only re-arms it).
    pub(crate) fn trim(
        &mut self,
        trims: &mut TimerQueue<TrimKey>,
        stream: &mut Stream,
        now: Instant,
        cfg: &Config,
    ) {
        let before = stream.buffered();
        stream.trim(now, &cfg.retention);
        self.rebuffered(before, stream.buffered());
        if stream.buffered().0 == 0 {
            if let Some(timer) = stream.trim_timer.take() {
                trims.cancel(timer);
            }
        }
    }

    /// Adjusts the buffered gauges after a stream changed from `before` to `after`.
    pub(crate) fn rebuffered(&mut self, before: (usize, usize), after: (usize, usize)) {
        let s = &mut self.stats;
        s.buffered_messages = (s.buffered_messages + after.0 as u64) - before.0 as u64;
        s.buffered_bytes = (s.buffered_bytes + after.1 as u64) - before.1 as u64;
    }

    /// A stream is dropped with its buffer and its age timer.
    pub(crate) fn dropped(&mut self, trims: &mut TimerQueue<TrimKey>, stream: &Stream) {
        self.rebuffered(stream.buffered(), (0, 0));
        if let Some(timer) = stream.trim_timer {
            trims.cancel(timer);
        }
    }

    /// Offers a control frame (`pong`, `error`, `refresh_required`, `joined`, …) under the hard
    /// limit: a client that never reads cannot make them pile up. `Overflow`: the caller closes
    /// the connection with `SlowConsumer`.
    pub(crate) fn control(
        &mut self,
        conns: &mut Connections,
        idx: u32,
        frame: &Frame,
        cfg: &Config,
    ) -> Offer {
        let conn = conns.get(idx);
        if conn.unwritten + notice_len(conn.skipped) + frame.len() as u64 > cfg.max_unwritten_bytes
        {
            return Offer::Overflow;
        }
        self.deliver(conns, idx, frame);
        Offer::Delivered
    }
}

/// The length of the `skipped` notice that precedes the next frame after `skipped` skips:
/// `{"type":"skipped","count":N}`. Backpressure checks count it with the frame it precedes.
pub(crate) fn notice_len(skipped: u32) -> u64 {
    if skipped == 0 { 0 } else { 27 + u64::from(skipped.checked_ilog10().unwrap_or(0) + 1) }
}

/// Keeps a stream's age timer in step with its buffer: armed (if it is not already) while the
/// stream holds messages, to fire just after the oldest outlives `max_age`; disarmed once it holds
/// none (a keep can empty a buffer: a message larger than the byte bound is not kept).
pub(crate) fn sync_age_timer(
    trims: &mut TimerQueue<TrimKey>,
    stream: &mut Stream,
    key: impl FnOnce() -> TrimKey,
    max_age: std::time::Duration,
) {
    match (stream.trim_timer, stream.oldest_at()) {
        (None, Some(at)) => {
            let due = at + max_age + std::time::Duration::from_nanos(1);
            stream.trim_timer = Some(trims.insert(due, key()));
        }
        (Some(timer), None) => {
            trims.cancel(timer);
            stream.trim_timer = None;
        }
        _ => {}
    }
}

pub(crate) fn tier_index(tier: Tier) -> usize {
    match tier {
        Tier::Free => 0,
        Tier::Early => 1,
        Tier::Mid => 2,
        Tier::Enterprise => 3,
    }
}

/// Offers `frame` to each of `recipients` (connection slots) that `admit` accepts, and collects
/// connections that overflowed into `doomed`.
#[allow(clippy::too_many_arguments)]
fn fan_out<'a>(
    out: &mut Sink,
    conns: &mut Connections,
    cfg: &Config,
    recipients: impl Iterator<Item = &'a u32>,
    admit: impl Fn(&crate::connection::Connection) -> bool,
    frame: &Frame,
    priority: Priority,
    doomed: &mut Vec<u32>,
    result: &mut Published,
) {
    for &idx in recipients {
        let conn = conns.get(idx);
        if !admit(conn) {
            continue;
        }
        let offer = out.offer(conns, idx, frame, priority, cfg);
        if offer == Offer::Overflow {
            doomed.push(idx);
        }
        result.add(offer);
    }
}

impl Hub {
    /// Routes an envelope to its target's connections: it gets the next position of its stream,
    /// is serialized once (shared by every recipient), and is kept in the stream's recovery
    /// buffer. Under backpressure, `agent_thinking` is skipped for a connection that is behind,
    /// and a connection that cannot take a critical frame is closed with `SlowConsumer`.
    pub fn publish(&mut self, now: Instant, envelope: Envelope) -> Result<Published, PublishError> {
        let now = self.clock(now);
        if !envelope.kind.is_valid() {
            return Err(PublishError::InvalidKind);
        }
        let Envelope { target, kind, thread, run, data } = envelope;
        let msg = Message { kind: &kind, thread: thread.as_ref(), run: run.as_ref(), data: &data };
        let result = match &target {
            Target::User { tenant, user } => self.publish_user(now, tenant, user, None, &msg),
            Target::Thread { tenant, user, thread: target_thread } => {
                if thread.as_ref().is_some_and(|t| t != target_thread) {
                    return Err(PublishError::ThreadMismatch);
                }
                let msg = Message { thread: Some(target_thread), ..msg };
                self.publish_user(now, tenant, user, None, &msg)
            }
            Target::Connection(id) => {
                let idx = self.resolve(now, *id)?;
                let (tenant, user) = self.owner(idx);
                self.publish_user(now, &tenant, &user, Some(idx), &msg)
            }
            Target::Room { tenant, room } => self.publish_room(now, tenant, room, &msg),
            Target::Tenant { tenant, audience } => {
                let role = match audience {
                    Audience::All => None,
                    Audience::Role(r) => Some(r),
                };
                self.publish_tenant(now, tenant, role, &msg)
            }
            Target::Everyone => {
                if !self.cfg.allow_global_broadcast {
                    self.out.audit(AuditKind::GlobalBroadcastDenied, None, None, None);
                    return Err(PublishError::GlobalBroadcastDisabled);
                }
                self.out.audit(AuditKind::GlobalBroadcast, None, None, None);
                // Sorted: map order is randomized per process, and the hub's outputs must depend
                // on its inputs only.
                let mut tenants: Vec<TenantId> = self.tenants.keys().cloned().collect();
                tenants.sort_unstable();
                let mut total = Published::none();
                for tenant in &tenants {
                    let r = self.publish_tenant(now, tenant, None, &msg);
                    total.delivered += r.delivered;
                    total.skipped += r.skipped;
                    total.closed += r.closed;
                    total.held += r.held;
                }
                total
            }
        };
        self.out.stats.publishes += 1;
        if result.undeliverable() {
            self.out.stats.undeliverable += 1;
        }
        self.close_doomed(now);
        // Make room under the hub-wide buffer cap at the expense of users who left, before a
        // live stream has to shed.
        let watermark = self.cfg.max_buffered_bytes - self.cfg.max_buffered_bytes / 8;
        while self.out.stats.buffered_bytes > watermark && self.evict_detached() {}
        Ok(result)
    }

    /// Closes the connections a fan-out found over their hard limit. Deferred to after the
    /// fan-out so that no membership list changes while it is walked.
    fn close_doomed(&mut self, now: Instant) {
        while let Some(idx) = self.doomed.pop() {
            self.close_conn(now, idx, ClosedBy::Hub(CloseReason::SlowConsumer));
        }
    }

    /// On a user's stream: to `only` if given (bypassing the thread filter), else to every
    /// connection whose filter admits the thread. Kept for recovery even while the user is
    /// detached.
    fn publish_user(
        &mut self,
        now: Instant,
        tenant: &TenantId,
        user: &UserId,
        only: Option<u32>,
        msg: &Message<'_>,
    ) -> Published {
        let Some(uidx) = self.users.find(tenant.as_str(), user.as_str()) else {
            // A user the hub does not hold: nothing is created for it.
            return Published::none();
        };
        let u = self.users.get_mut(uidx);
        let pos = u.stream.assign();
        let frame = msg.frame(&mut self.out.writer, &StreamName::User, pos, &self.redactor);
        let scope = match (only, msg.thread) {
            (Some(idx), _) => Scope::Conn(self.conns.id_of(idx)),
            (None, Some(t)) => Scope::Thread(t.clone()),
            (None, None) => Scope::All,
        };
        self.out.keep(&mut u.stream, now, pos, &frame, scope, &self.cfg);
        sync_age_timer(
            &mut self.trims,
            &mut u.stream,
            || TrimKey::User(uidx),
            self.cfg.retention.max_age,
        );
        let mut result = Published { position: Some((StreamName::User, pos)), ..Published::none() };
        let priority = msg.kind.priority();
        let only_slot = only.unwrap_or_default();
        let recipients = match only {
            Some(_) => std::slice::from_ref(&only_slot),
            None => u.conns.as_slice(),
        };
        for &idx in recipients {
            if only.is_none() && !self.conns.get(idx).wants(msg.thread) {
                continue;
            }
            let offer = self.out.offer(&mut self.conns, idx, &frame, priority, &self.cfg);
            if offer == Offer::Overflow {
                self.doomed.push(idx);
            }
            result.add(offer);
        }
        result
    }

    fn publish_room(
        &mut self,
        now: Instant,
        tenant: &TenantId,
        room: &crate::ids::RoomId,
        msg: &Message<'_>,
    ) -> Published {
        let Some(r) = self.tenants.get_mut(tenant).and_then(|t| t.rooms.get_mut(room)) else {
            return Published::none();
        };
        let pos = r.stream.assign();
        let name = StreamName::Room(room.clone());
        let frame = msg.frame(&mut self.out.writer, &name, pos, &self.redactor);
        self.out.keep(&mut r.stream, now, pos, &frame, Scope::All, &self.cfg);
        let key = || TrimKey::Room(tenant.clone(), room.clone());
        sync_age_timer(&mut self.trims, &mut r.stream, key, self.cfg.retention.max_age);
        let mut result = Published { position: Some((name, pos)), ..Published::none() };
        let members = r.members.iter().map(|m| &m.conn);
        let (out, conns, cfg) = (&mut self.out, &mut self.conns, &self.cfg);
        fan_out(
            out,
            conns,
            cfg,
            members,
            |_| true,
            &frame,
            msg.kind.priority(),
            &mut self.doomed,
            &mut result,
        );
        result
    }

    fn publish_tenant(
        &mut self,
        now: Instant,
        tenant: &TenantId,
        role: Option<&crate::ids::Role>,
        msg: &Message<'_>,
    ) -> Published {
        let Some(t) = self.tenants.get_mut(tenant) else {
            return Published::none();
        };
        let pos = t.stream.assign();
        let frame = msg.frame(&mut self.out.writer, &StreamName::Tenant, pos, &self.redactor);
        let scope = role.map_or(Scope::All, |r| Scope::Role(r.clone()));
        self.out.keep(&mut t.stream, now, pos, &frame, scope, &self.cfg);
        let key = || TrimKey::Tenant(tenant.clone());
        sync_age_timer(&mut self.trims, &mut t.stream, key, self.cfg.retention.max_age);
        let mut result =
            Published { position: Some((StreamName::Tenant, pos)), ..Published::none() };
        let (out, conns, cfg) = (&mut self.out, &mut self.conns, &self.cfg);
        let admit = |c: &crate::connection::Connection| audience_admits(&c.roles, role);
        fan_out(
            out,
            conns,
            cfg,
            t.conns.iter(),
            admit,
            &frame,
            msg.kind.priority(),
            &mut self.doomed,
            &mut result,
        );
        result
    }
}

/// The parts of an envelope that make up its frame.
#[derive(Clone, Copy)]
struct Message<'a> {
    kind: &'a EventKind,
    thread: Option<&'a ThreadId>,
    run: Option<&'a RunId>,
    data: &'a Value,
}

impl Message<'_> {
    fn frame(
        &self,
        writer: &mut FrameWriter,
        stream: &StreamName,
        pos: StreamPos,
        redactor: &crate::protocol::Redactor,
    ) -> Frame {
        writer.event(self.kind, stream, pos, self.thread, self.run, self.data, redactor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_notice_length_is_the_written_notice_length() {
        let mut w = FrameWriter::default();
        for n in [1, 9, 10, 99, 100, 12345, u32::MAX] {
            assert_eq!(notice_len(n), w.skipped(n).len() as u64, "count {n}");
        }
        assert_eq!(notice_len(0), 0);
    }
}
