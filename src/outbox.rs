//! The outbox: the one way anything leaves the hub. It holds the action queue and the counters,
//! and offers frames to connections under their backpressure.

use std::collections::VecDeque;
use std::time::Instant;

use crate::action::{Action, AuditEvent, MetricEvent};
use crate::config::{Config, Tier};
use crate::connection::Connections;
use crate::envelope::Priority;
use crate::frame::Frame;
use crate::ids::{ConnId, StreamPos, TenantId, UserId};
use crate::kinds::{AuditKind, LimitKind};
use crate::protocol::FrameWriter;
use crate::stats::{HubStats, MeterClock, Meters};
use crate::stream::{Scope, Stream, TrimKey};
use crate::timer::TimerQueue;

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
/// Nothing is emitted except through it.
#[derive(Debug)]
pub(crate) struct Outbox {
    pub(crate) actions: VecDeque<Action>,
    pub(crate) stats: HubStats,
    pub(crate) writer: FrameWriter,
    pub(crate) tiers: [Meters; 4],
    pub(crate) clock: MeterClock,
}

impl Outbox {
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

pub(crate) fn tier_index(tier: Tier) -> usize {
    match tier {
        Tier::Free => 0,
        Tier::Early => 1,
        Tier::Mid => 2,
        Tier::Enterprise => 3,
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
