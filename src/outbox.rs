//! The outbox: the one way anything leaves the hub. Every action is queued by a method that also
//! records its counter, so a count and the action (or metric) it stands for cannot drift apart.
//! The queue is private: nothing else can push to it.

use std::time::Duration;

use crate::action::{Action, AuditEvent, Inbound, MetricEvent};
use crate::cluster::{BusOp, OpId, PublishOutcome};
use crate::config::Tier;
use crate::frame::Frame;
use crate::ids::{ConnId, TenantId, UserId};
use crate::kinds::{AuditKind, BreakerState, ClosedBy, LimitKind};
use crate::labels::Labels;
use crate::stats::HubStats;

/// The action queue and the hub's counters. The gauges of [`HubStats`] are not kept here: the
/// hub derives them from its components when they are read.
///
/// The queue is two `Vec`s: actions are pushed onto `queued` and popped from the end of `ready`,
/// which holds them newest first. When `ready` runs out the two swap buffers and `ready` is
/// reversed. A fan-out pushes and pops one `Deliver` per recipient, and a `Vec` push and pop
/// plus the reversal cost fewer instructions than a `VecDeque`'s push and pop, which wrap their
/// index around (callgrind, `room-1000`). Both buffers are kept: the second one holds what is
/// pushed while actions are still waiting, so the queue's memory is at most twice its longest
/// run between drains, and as before for a caller that drains after every call (see
/// [`Outbox::pop`]).
///
/// A fan-out queues its recipients as a run instead: their ids go onto `ids` (8 bytes each, no
/// reference count) and one [`Run`] with the shared frame, in `runs`, notes where among the
/// queued actions they go. When `ready` runs out, each run's `Deliver`s are built in place there
/// from its ids and clones of its frame, in one tight loop. What the caller pops is the same
/// sequence of actions; per recipient this costs about 10 instructions fewer than building each
/// `Deliver` in the fan-out's loop, where the offer's checks keep the registers busy (callgrind,
/// `room-1000`). Other actions are queued as before (no run: the refill is the swap and the
/// reversal).
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    /// What [`Outbox::pop`] takes from, oldest last.
    ready: Vec<Action>,
    /// Everything pushed after `ready`'s actions, oldest first, less the runs.
    queued: Vec<Action>,
    /// The fan-out runs queued with `queued`'s actions, oldest first.
    runs: Vec<Run>,
    /// `ids[..filled]`: the recipients of `runs`, in order, then those of the fan-out in
    /// progress; emptied when the runs move into `ready`. The slots past `filled` are free (their
    /// contents mean nothing): a fan-out writes its recipients there ([`Outbox::open_run`]).
    ids: Vec<ConnId>,
    filled: usize,
    /// The frame of the fan-out in progress ([`Outbox::open_run`]).
    open: Option<Frame>,
    /// The end of `runs`' recipients in `ids`: those past it belong to the fan-out in progress.
    sealed: usize,
    /// Where the recipients of the fan-out in progress start in `ids`.
    opened: usize,
    /// Counters that no action stands for (frames received, publishes, …) are bumped directly.
    pub(crate) stats: HubStats,
}

/// Deliveries of `frame` to the connections `ids[start..end]`, queued before `queued[at]`.
#[derive(Debug)]
struct Run {
    at: usize,
    frame: Frame,
    start: usize,
    end: usize,
}

impl Outbox {
    /// The oldest queued action.
    ///
    /// When the queue is drained, `queued` keeps the larger buffer: a caller that drains after
    /// every call then pushes into one buffer only, and the other stays as small as the actions
    /// pushed while some were still waiting.
    #[inline]
    pub(crate) fn pop(&mut self) -> Option<Action> {
        if let Some(action) = self.ready.pop() {
            return Some(action);
        }
        if self.queued.is_empty() && self.runs.is_empty() {
            if self.ready.capacity() > self.queued.capacity() {
                std::mem::swap(&mut self.ready, &mut self.queued);
            }
            return None;
        }
        self.refill()
    }

    /// `ready` ran out and actions wait in `queued` or `runs`: they become `ready`, oldest last.
    /// Without runs the two swap buffers (`queued` takes the empty one). Then the oldest action.
    #[inline(never)]
    fn refill(&mut self) -> Option<Action> {
        if self.runs.is_empty() {
            std::mem::swap(&mut self.ready, &mut self.queued);
            self.ready.reverse();
        } else {
            self.expand_runs();
        }
        self.ready.pop()
    }

    /// [`Outbox::refill`] with runs: `queued`'s actions and the runs' `Deliver`s are moved or
    /// built into the empty `ready`, newest first, and the runs' ids go.
    fn expand_runs(&mut self) {
        debug_assert!(self.ready.is_empty());
        debug_assert!(self.open.is_none() && self.filled == self.sealed);
        let (ready, queued, ids) = (&mut self.ready, &mut self.queued, &self.ids);
        ready.reserve(queued.len() + self.filled);
        // From the last run back: the actions queued after it, then its recipients.
        while let Some(Run { at, frame, start, end }) = self.runs.pop() {
            while queued.len() > at {
                ready.extend(queued.pop());
            }
            push_deliveries(ready, &ids[start..end], &frame);
        }
        while let Some(action) = queued.pop() {
            ready.push(action);
        }
        // The slots stay, free for the next fan-outs.
        self.sealed = 0;
        self.filled = 0;
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.ready.is_empty() && self.queued.is_empty() && self.filled == 0
    }

    /// Where to push an action: after the recipients of the fan-out in progress queued so far.
    /// (The action is built after this check, not moved across it: a 32-byte `Action` kept
    /// across the call to `seal` was copied piece by piece, about 30 instructions per push.)
    #[inline]
    fn queue(&mut self) -> &mut Vec<Action> {
        if self.filled > self.sealed {
            self.seal();
        }
        &mut self.queued
    }

    /// Queues the recipients of the fan-out in progress pushed since its last run as a run.
    #[cold]
    #[inline(never)]
    fn seal(&mut self) {
        let frame = self.open.clone().expect("recipients are queued during a fan-out");
        let (start, end) = (self.sealed, self.filled);
        self.runs.push(Run { at: self.queued.len(), frame, start, end });
        self.sealed = end;
    }

    /// A fan-out of `frame` to at most `max` recipients begins: its recipients are queued with
    /// [`Outbox::deliver_in_run`] (or written into [`Outbox::run_slots`]) until
    /// [`Outbox::close_run`].
    ///
    /// A slot is set aside in `ids` for each of them up front, so that queuing a recipient is a
    /// store into a slice rather than a `Vec` push, whose length and capacity the fan-out's loop
    /// reloaded from memory for every recipient (its stores to the connection records may alias
    /// them, as far as the compiler knows; callgrind, `room-1000`). The slots are kept when the
    /// ids are consumed, so that they are initialized once, not for every fan-out (filling 8
    /// bytes per recipient cost a `memset` of about as many instructions as the push saved).
    #[inline]
    pub(crate) fn open_run(&mut self, frame: &Frame, max: usize) {
        debug_assert!(self.open.is_none(), "one fan-out at a time");
        self.open = Some(frame.clone());
        self.opened = self.filled;
        let needed = self.filled + max;
        if self.ids.len() < needed {
            self.add_slots(needed);
        }
    }

    /// More slots, `needed` in all: rare (the slots stay), and apart so that `open_run` stays
    /// small enough to be inlined (a call to it cost a publish to one connection 33
    /// instructions; callgrind, `publish-1-raw-noredact`).
    #[cold]
    #[inline(never)]
    fn add_slots(&mut self, needed: usize) {
        self.ids.resize(needed, ConnId::new(0, 0));
    }

    /// The fan-out in progress: `ids`, whose slots from `filled` on are free for its further
    /// recipients (at least as many as `open_run` was told), and `filled`. Write recipients
    /// there in order and report how far with [`Outbox::fill_to`] before anything else touches
    /// the outbox.
    #[inline]
    pub(crate) fn run_slots(&mut self) -> (&mut [ConnId], usize) {
        (&mut self.ids, self.filled)
    }

    /// The fan-out in progress wrote its recipients into [`Outbox::run_slots`] up to `filled`.
    #[inline]
    pub(crate) fn fill_to(&mut self, filled: usize) {
        debug_assert!(self.open.is_some() && filled >= self.filled && filled <= self.ids.len());
        self.filled = filled;
    }

    /// The fan-out ends: its recipients not queued yet are queued as a run. Returns how many
    /// recipients it queued in all (its deliveries).
    pub(crate) fn close_run(&mut self) -> usize {
        let frame = self.open.take().expect("a fan-out is in progress");
        let (start, end) = (self.sealed, self.filled);
        if end == start + 1 {
            // One recipient (a publish to one connection, say): its action queued as it is costs
            // less than a run and the refill that expands it (callgrind, `publish-1-raw`).
            self.filled = start;
            self.queued.push(Action::Deliver { conn: self.ids[start], frame });
        } else if end > start {
            self.runs.push(Run { at: self.queued.len(), frame, start, end });
            self.sealed = end;
        }
        end - self.opened
    }

    /// A frame for a connection (its backpressure already checked: see `flow`).
    #[inline]
    pub(crate) fn deliver(&mut self, conn: ConnId, frame: &Frame) {
        self.stats.deliveries += 1;
        self.stats.bytes_delivered += frame.len() as u64;
        self.queue().push(Action::Deliver { conn, frame: frame.clone() });
    }

    /// The live event frame of the fan-out in progress (`frame`, [`Outbox::open_run`]) for one
    /// of its recipients: queued in its run. The fan-out counts all of its deliveries at once
    /// with [`Outbox::count_deliveries`] (a counter update per recipient cost as much as the
    /// push; callgrind, `room-1000`).
    #[inline]
    pub(crate) fn deliver_in_run(&mut self, conn: ConnId, frame: &Frame) {
        debug_assert!(self.open.as_ref().is_some_and(|f| Frame::ptr_eq(f, frame)));
        // Into its slot (`open_run` set one aside for each recipient).
        self.ids[self.filled] = conn;
        self.filled += 1;
    }

    /// Counts `n` deliveries of `frame` queued with [`Outbox::deliver_in_run`].
    pub(crate) fn count_deliveries(&mut self, n: u64, frame: &Frame) {
        self.stats.deliveries += n;
        self.stats.bytes_delivered += n * frame.len() as u64;
    }

    /// Counts the live frames a fan-out held back for connections in their resume window and
    /// the thinking frames it skipped for connections that are behind.
    pub(crate) fn count_offers(&mut self, held: u64, skipped: u64) {
        self.stats.held_back += held;
        self.stats.thinking_skipped += skipped;
    }

    /// Cluster mode: an operation for the driver to perform on the bus.
    pub(crate) fn bus(&mut self, op: BusOp) {
        self.queue().push(Action::Bus(Box::new(op)));
    }

    /// Cluster mode: what became of a publish.
    pub(crate) fn published(&mut self, op: OpId, outcome: PublishOutcome) {
        if matches!(outcome, PublishOutcome::Failed { .. }) {
            self.stats.publishes_failed += 1;
        }
        self.queue().push(Action::Published { op, outcome: Box::new(outcome) });
    }

    /// A transport ping.
    pub(crate) fn ping(&mut self, conn: ConnId) {
        self.stats.pings_sent += 1;
        self.queue().push(Action::Ping { conn });
    }

    /// A client message for the application.
    pub(crate) fn inbound(&mut self, inbound: Inbound) {
        self.stats.inbound_messages += 1;
        self.queue().push(Action::Inbound(Box::new(inbound)));
    }

    /// A security-relevant event that names no connection's labels.
    pub(crate) fn audit(
        &mut self,
        kind: AuditKind,
        conn: Option<ConnId>,
        tenant: Option<&TenantId>,
        user: Option<&UserId>,
    ) {
        self.audit_labelled(kind, conn, tenant, user, &Labels::none());
    }

    /// A security-relevant event, with the labels of the connection (or principal) involved.
    pub(crate) fn audit_labelled(
        &mut self,
        kind: AuditKind,
        conn: Option<ConnId>,
        tenant: Option<&TenantId>,
        user: Option<&UserId>,
        labels: &Labels,
    ) {
        self.stats.audit_events += 1;
        self.stats.security_violations += u64::from(kind.is_security_violation());
        self.queue().push(Action::Audit(Box::new(AuditEvent {
            kind,
            conn,
            tenant: tenant.cloned(),
            user: user.cloned(),
            labels: labels.clone(),
        })));
    }

    /// An action with no counter of its own.
    pub(crate) fn push_action(&mut self, action: Action) {
        self.queue().push(action);
    }

    /// A metric event on its own (a limit with no user to name, say).
    pub(crate) fn push_metric(&mut self, event: MetricEvent) {
        self.queue().push(Action::Metric(Box::new(event)));
    }

    /// A limit refused something: counted, pushed as a metric, audited as `audit` with the labels
    /// of the connection (or principal) involved.
    pub(crate) fn limit(
        &mut self,
        limit: LimitKind,
        audit: AuditKind,
        conn: Option<ConnId>,
        tenant: &TenantId,
        user: &UserId,
        labels: &Labels,
    ) {
        self.stats.limit_rejections.bump(limit);
        self.push_metric(MetricEvent::LimitRejected { limit });
        self.audit_labelled(audit, conn, Some(tenant), Some(user), labels);
    }

    /// A connection opened.
    pub(crate) fn opened(&mut self, conn: ConnId, tenant: &TenantId, user: &UserId, tier: Tier) {
        self.stats.connections_opened += 1;
        self.push_metric(MetricEvent::ConnectionOpened {
            conn,
            tenant: tenant.clone(),
            user: user.clone(),
            tier,
        });
    }

    /// A connection ended: a `Close` if the hub closed it, then its metric.
    pub(crate) fn closed(
        &mut self,
        conn: ConnId,
        tenant: &TenantId,
        user: &UserId,
        lifetime: Duration,
        by: ClosedBy,
    ) {
        if let ClosedBy::Hub(reason) = by {
            self.queue().push(Action::Close { conn, reason });
        }
        let stats = &mut self.stats;
        stats.connections_closed += 1;
        stats.closed_by.bump(by);
        stats.total_connection_lifetime += lifetime;
        self.push_metric(MetricEvent::ConnectionClosed {
            conn,
            tenant: tenant.clone(),
            user: user.clone(),
            lifetime,
            reason: by,
        });
    }

    /// A user's state was created.
    pub(crate) fn user_created(&mut self, tenant: &TenantId, user: &UserId) {
        self.stats.users_created += 1;
        self.push_metric(MetricEvent::UserCreated { tenant: tenant.clone(), user: user.clone() });
    }

    /// A user's state was retired (`evicted`: early, over `max_detached_users`).
    pub(crate) fn user_retired(&mut self, tenant: TenantId, user: UserId, evicted: bool) {
        self.stats.users_retired += 1;
        self.stats.users_evicted += u64::from(evicted);
        self.push_metric(MetricEvent::UserRetired { tenant, user });
    }

    /// A user's breaker changed state; `opened` also counts and audits it.
    pub(crate) fn breaker_changed(
        &mut self,
        tenant: TenantId,
        user: UserId,
        state: BreakerState,
        opened: bool,
    ) {
        if opened {
            self.stats.breakers_opened += 1;
            self.audit(AuditKind::BreakerOpened, None, Some(&tenant), Some(&user));
        }
        self.push_metric(MetricEvent::BreakerChanged { tenant, user, state });
    }

    /// A periodic snapshot of the stats (as `Hub::stats` derives them).
    pub(crate) fn snapshot(&mut self, stats: HubStats) {
        self.push_metric(MetricEvent::Snapshot(Box::new(stats)));
    }
}

/// Pushes a `Deliver` of `frame` for each of `ids`, newest first, onto `ready` (with room for
/// them reserved).
///
/// A function of its own, for its `frame` argument: the compiler may take it that nothing the
/// loop stores changes what a shared reference argument points to, and keeps the frame in
/// registers. Inlined into the refill, where the frame was a local whose address had escaped,
/// it reloaded the frame for every recipient (callgrind, `room-1000`).
#[inline(never)]
fn push_deliveries(ready: &mut Vec<Action>, ids: &[ConnId], frame: &Frame) {
    ready.extend(ids.iter().rev().map(|&conn| Action::Deliver { conn, frame: frame.clone() }));
}

#[cfg(test)]
mod tests {
    use super::Outbox;
    use crate::action::Action;
    use crate::frame::Frame;
    use crate::ids::ConnId;

    fn ping(n: u32) -> Action {
        Action::Ping { conn: ConnId::new(n, 1) }
    }

    #[test]
    fn actions_come_out_in_the_order_they_went_in_across_refills() {
        let mut out = Outbox::default();
        let (mut next_in, mut next_out) = (0, 0);
        // Pushes interleaved with partial drains, so that actions wait in both buffers.
        for round in 0..50u32 {
            for _ in 0..(round % 7) * 3 + 1 {
                out.push_action(ping(next_in));
                next_in += 1;
            }
            for _ in 0..round % 5 {
                match out.pop() {
                    Some(action) => {
                        assert_eq!(action, ping(next_out));
                        next_out += 1;
                    }
                    None => break,
                }
            }
        }
        while let Some(action) = out.pop() {
            assert_eq!(action, ping(next_out));
            next_out += 1;
        }
        assert_eq!(next_out, next_in);
        assert!(out.is_empty());
    }

    /// Fan-out runs (with actions pushed in the middle of one, as a `skipped` notice is) and
    /// other actions, drained partially across refills: the actions come out in the order
    /// they were queued, each run's `Deliver`s sharing its frame.
    #[test]
    fn runs_and_actions_come_out_in_the_order_they_went_in() {
        let mut out = Outbox::default();
        let mut expected = std::collections::VecDeque::new();
        let mut next_id = 0;
        for round in 0..60u32 {
            for _ in 0..round % 3 {
                out.push_action(ping(next_id));
                expected.push_back(ping(next_id));
                next_id += 1;
            }
            let frame = Frame::new(&format!("frame {round}"));
            out.open_run(&frame, (round % 9) as usize);
            // 0 to 8 recipients: one alone is queued as a plain action, not as a run.
            for k in 0..round % 9 {
                if k % 3 == 2 {
                    out.push_action(ping(next_id));
                    expected.push_back(ping(next_id));
                    next_id += 1;
                }
                let conn = ConnId::new(next_id, 7);
                next_id += 1;
                out.deliver_in_run(conn, &frame);
                expected.push_back(Action::Deliver { conn, frame: frame.clone() });
            }
            assert_eq!(out.close_run(), (round % 9) as usize, "its recipients");
            for _ in 0..round % 7 {
                let Some(action) = out.pop() else { break };
                let want = expected.pop_front().unwrap();
                if let (Action::Deliver { frame: a, .. }, Action::Deliver { frame: b, .. }) =
                    (&action, &want)
                {
                    assert!(Frame::ptr_eq(a, b));
                }
                assert_eq!(action, want);
            }
        }
        assert!(!out.is_empty());
        while let Some(action) = out.pop() {
            assert_eq!(action, expected.pop_front().unwrap());
        }
        assert!(expected.is_empty() && out.is_empty());
        assert!(out.filled == 0 && out.ready.is_empty(), "a drained queue holds no frame");
    }

    #[test]
    fn a_drained_queue_pushes_into_its_larger_buffer() {
        let mut out = Outbox::default();
        for n in 0..100 {
            out.push_action(ping(n));
        }
        assert!(out.pop().is_some());
        out.push_action(ping(100)); // into the spent buffer, while 99 wait
        while out.pop().is_some() {}
        assert!(out.queued.capacity() >= 100, "the larger buffer takes the next pushes");
        assert!(out.ready.capacity() < 100);
    }

    /// A caller that always leaves an action in the queue still gets the recipients' ids and
    /// the queue's buffers back: they do not grow with the number of fan-outs.
    #[test]
    fn a_queue_that_is_never_empty_does_not_grow() {
        let mut out = Outbox::default();
        out.push_action(ping(0));
        for round in 0..1000u32 {
            let frame = Frame::new("f");
            out.open_run(&frame, 10);
            for k in 0..10 {
                out.deliver_in_run(ConnId::new(k, 1), &frame);
            }
            out.close_run();
            for _ in 0..10 {
                assert!(out.pop().is_some(), "round {round}");
            }
            assert!(!out.is_empty());
        }
        assert!(out.ids.capacity() <= 64 && out.ready.capacity() <= 64);
        assert!(out.queued.capacity() <= 64);
    }
}
