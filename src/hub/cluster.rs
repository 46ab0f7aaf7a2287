//! Cluster mode: the hub as one node of several sharing a bus (DESIGN §11).
//!
//! Publishing appends to the stream's log on the bus; delivery happens when the message comes
//! back on the stream's live channel, on every node subscribed to it (the publishing one too).
//! Each stream's [`Sequencer`] drops duplicates, holds messages behind a gap while a fetch from
//! the log fills it, and turns what the log no longer holds into an explicit `resync` notice.

use std::sync::Arc;
use std::time::Instant;

use crate::cluster::{
    Arrival, BusFailure, BusOp, BusReply, Decoded, Fetched, Node, OpId, Pending, PublishOutcome,
    Sequencer, StreamKey, StreamScope, Tracked, Visibility,
};
use crate::hub::Hub;
use crate::hub::publish::stream_of;
use crate::ids::{ConnId, Role, RunId, StreamPos, ThreadId};
use crate::kinds::{AuditKind, CloseReason, ClosedBy};
use crate::stream::{Scope, Stream, TrimKey, Visible};

/// Why a stream's connections are told to refetch (`resync` frame's `reason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Resync {
    /// Messages between two positions are no longer in the log.
    GapTooOld,
    /// The stream was created anew (the engine restarted empty, the log expired, or a failover
    /// lost its tail and the stream was rotated to a new epoch).
    EpochChanged,
}

impl Resync {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Resync::GapTooOld => "gap_too_old",
            Resync::EpochChanged => "epoch_changed",
        }
    }
}

impl Hub {
    /// The node's bus state, in cluster mode.
    pub(crate) fn node(&mut self) -> Option<&mut Node> {
        self.node.as_deref_mut()
    }

    /// Cluster mode: a message arrived on a stream's live channel at `pos`.
    ///
    /// It is checked against the stream it arrived on: a payload that names another stream, or
    /// is malformed, is dropped and audited ([`AuditKind::BusMismatch`]); at once if it would
    /// start a new epoch, else at its turn (its seq is consumed: the stream moves on without
    /// it). A duplicate, or a late message of an epoch the stream has left, is dropped; a
    /// message after a gap is held while the gap is fetched from the log.
    /// Ignored outside cluster mode and for streams this node is not subscribed to.
    pub fn bus_message(&mut self, now: Instant, stream: &StreamKey, pos: StreamPos, payload: &str) {
        let now = self.clock(now);
        let Some(node) = self.node.as_deref_mut() else { return };
        let max_held = node.cfg.max_held_per_stream;
        let Some(tracked) = node.streams.get_mut(stream) else {
            node.counters.untracked_messages += 1;
            return;
        };
        // Epochs and seqs start at 1: a message at 0 is a driver's bug, and taking it would move
        // the sequencer to an epoch no connection was told of. So would one at another epoch
        // that is not a message of this stream (checked here only for a new epoch: within one,
        // delivery checks it and the stream moves past its seq).
        let new_epoch = tracked.seq.top().is_some_and(|top| top.epoch != pos.epoch);
        if pos.epoch == 0
            || pos.seq == 0
            || (new_epoch && Decoded::parse(stream, payload).is_none())
        {
            self.bus_mismatch(stream);
            return;
        }
        let text = payload;
        let payload: Arc<str> = Arc::from(payload);
        let mut arrival = tracked.seq.arrive(pos, payload.clone(), max_held);
        if arrival == Arrival::Overflow {
            // Give up on the gap rather than hold without bound.
            if let Some((after, upto)) = tracked.seq.skip_gap() {
                node.counters.gaps_lost += 1;
                self.resync(now, stream, Resync::GapTooOld, Some((after, upto)));
            }
            let node = self.node.as_deref_mut().expect("clustered");
            let tracked = node.streams.get_mut(stream).expect("tracked");
            arrival = tracked.seq.arrive(pos, payload, max_held);
        }
        match arrival {
            Arrival::Duplicate => {
                self.node().expect("clustered").counters.duplicates_dropped += 1;
                if self.position_reused(stream, pos, text) {
                    self.rotate(now, stream);
                }
            }
            Arrival::Left { past } => {
                self.node().expect("clustered").counters.duplicates_dropped += 1;
                if past {
                    // Appended after the stream left that epoch, or the log is back in it.
                    self.repair(now, stream);
                }
            }
            Arrival::NewEpoch { .. } => {
                // The sequencer already started over and holds this message.
                self.restart_local(now, stream, StreamPos { epoch: pos.epoch, seq: 0 });
                self.drain_stream(now, stream);
            }
            Arrival::Kept | Arrival::Overflow => self.drain_stream(now, stream),
        }
    }

    /// Cluster mode: the reply to bus operation `op`. A reply to an operation that is not in
    /// flight (it timed out, or it is from before the bus went down) is ignored and counted.
    pub fn bus_reply(&mut self, now: Instant, op: OpId, reply: Result<BusReply, BusFailure>) {
        let now = self.clock(now);
        let Some(node) = self.node.as_deref_mut() else { return };
        let Some(what) = node.complete(op) else { return };
        if reply.is_err() {
            node.counters.op_failures += 1;
        }
        self.settle(now, op, what, reply);
        self.close_doomed_conns(now);
    }

    /// Cluster mode: the bus connection is lost. Operations in flight fail (publishes report
    /// `Failed`, subscriptions close the connections waiting for them with
    /// [`CloseReason::Unavailable`], resumes that need the log wait up to
    /// [`ClusterConfig::resume_wait`](crate::ClusterConfig::resume_wait)); open connections stay
    /// open, and new publishes fail fast until [`Hub::bus_up`].
    pub fn bus_down(&mut self, now: Instant) {
        let now = self.clock(now);
        let Some(node) = self.node.as_deref_mut() else { return };
        if !node.is_up() {
            return;
        }
        for (op, what) in node.down() {
            self.settle(now, op, what, Err(BusFailure::Down));
        }
        self.close_doomed_conns(now);
    }

    /// Cluster mode: the bus is back (the driver restored its subscriptions). The node checks the
    /// top of every stream it holds and repairs what it missed, and subscribes again where a
    /// subscription was in flight.
    pub fn bus_up(&mut self, now: Instant) {
        let now = self.clock(now);
        let Some(node) = self.node.as_deref_mut() else { return };
        if node.is_up() {
            return;
        }
        node.up();
        let keys = node.stream_keys();
        let mut unconfirmed = Vec::new();
        let mut confirmed = Vec::new();
        for key in keys {
            if node.streams[&key].seq.top().is_some() {
                confirmed.push(key);
            } else {
                unconfirmed.push(key);
            }
        }
        for key in unconfirmed {
            self.subscribe(now, key);
        }
        self.check_tops(now, confirmed);
        // Before any new lease: an engine that restarted empty lost every lease.
        if self.node.as_deref().is_some_and(|n| n.renew.is_armed()) {
            self.renew_leases(now, None);
        }
        self.resume_bus_back(now);
        self.presence_bus_up(now);
    }

    /// Cluster mode's timers: operation deadlines (a timed-out operation fails as retryable)
    /// and the periodic top check.
    pub(crate) fn cluster_tick(&mut self, now: Instant) {
        if self.node.is_none() {
            return;
        }
        while let Some((op, what)) = self.node.as_deref_mut().and_then(|n| n.pop_expired(now)) {
            self.settle(now, op, what, Err(BusFailure::Retryable));
        }
        let node = self.node.as_deref_mut().expect("clustered");
        if node.top_check_due(now) {
            let keys = node.stream_keys();
            node.arm_top_check(now);
            if node.is_up() {
                self.check_tops(now, keys);
            }
        }
        let node = self.node.as_deref_mut().expect("clustered");
        let up = node.is_up();
        // With no user left there is nothing to renew: the sweep stops until the next lease.
        if let Some(step) = node.renew.due(now, !self.users.slab.is_empty()) {
            let slots = node.renew.slots(step, self.users.slab.capacity());
            if up {
                self.renew_leases(now, Some(slots));
            }
        }
        self.resume_deadlines(now);
        self.close_doomed_conns(now);
    }

    // -----------------------------------------------------------------------------------------
    // Operations

    /// Issues `op` built around a fresh id, or returns why it cannot be.
    pub(crate) fn issue(
        &mut self,
        now: Instant,
        what: Pending,
        build: impl FnOnce(OpId) -> BusOp,
    ) -> Result<OpId, BusFailure> {
        let node = self.node.as_deref_mut().expect("clustered");
        let op = node.issue(now, what)?;
        self.out.bus(build(op));
        Ok(op)
    }

    /// Starts tracking a stream: subscribe, unless it is tracked already.
    pub(crate) fn track(&mut self, now: Instant, key: StreamKey) {
        let Some(node) = self.node.as_deref_mut() else { return };
        if node.streams.contains_key(&key) {
            return;
        }
        node.streams.insert(key.clone(), Tracked { seq: Sequencer::new(), subscribing: None });
        node.arm_top_check(now);
        self.subscribe(now, key);
    }

    /// Stops tracking a stream (its local holder is gone).
    pub(crate) fn untrack(&mut self, key: &StreamKey) {
        let Some(node) = self.node.as_deref_mut() else { return };
        if node.streams.remove(key).is_some() {
            self.out.bus(BusOp::Unsubscribe { stream: key.clone() });
        }
    }

    fn subscribe(&mut self, now: Instant, key: StreamKey) {
        let stream = key.clone();
        let issued = self.issue(now, Pending::Subscribe { stream: key.clone() }, |op| {
            BusOp::Subscribe { op, stream }
        });
        let node = self.node.as_deref_mut().expect("clustered");
        match issued {
            Ok(op) => {
                if let Some(t) = node.streams.get_mut(&key) {
                    t.subscribing = Some(op);
                }
            }
            // Down: `bus_up` subscribes again. Overloaded: the waiting connections give up.
            Err(BusFailure::Down) => {}
            Err(_) => self.subscription_failed(now, &key),
        }
    }

    /// Reads the tops of those of `keys` whose top is known, in batches, to find messages the
    /// live channel lost.
    fn check_tops(&mut self, now: Instant, keys: Vec<StreamKey>) {
        let Some(node) = self.node.as_deref() else { return };
        let asked: Vec<(StreamKey, StreamPos)> = keys
            .into_iter()
            .filter_map(|k| {
                let top = node.streams.get(&k)?.seq.top()?;
                Some((k, top))
            })
            .collect();
        for batch in asked.chunks(256) {
            let streams = batch.iter().map(|(k, _)| k.clone()).collect();
            let pending = Pending::Tops { streams: batch.to_vec() };
            if self.issue(now, pending, |op| BusOp::Tops { op, streams }).is_err() {
                break;
            }
        }
    }

    /// Asks the log for what follows the stream's last delivered seq (one repair at a time).
    fn repair(&mut self, now: Instant, key: &StreamKey) {
        let Some(node) = self.node.as_deref_mut() else { return };
        let limit = node.cfg.fetch_limit;
        let Some(t) = node.streams.get(key) else { return };
        let after = match (t.seq.gap(), t.seq.top()) {
            (Some(after), _) => after,
            (None, Some(top)) if t.seq.repair.is_none() => top.seq,
            _ => return,
        };
        let stream = key.clone();
        let pending = Pending::Repair { stream: key.clone(), after };
        if let Ok(op) = self.issue(now, pending, |op| BusOp::Fetch { op, stream, after, limit }) {
            let node = self.node.as_deref_mut().expect("clustered");
            if let Some(t) = node.streams.get_mut(key) {
                t.seq.repair = Some(op);
            }
        }
    }

    /// What an operation's reply (or failure) means.
    fn settle(
        &mut self,
        now: Instant,
        op: OpId,
        what: Pending,
        reply: Result<BusReply, BusFailure>,
    ) {
        match what {
            Pending::Publish { stream } => {
                let outcome = match reply {
                    Ok(BusReply::Appended { pos }) => PublishOutcome::Appended { stream, pos },
                    Ok(BusReply::Duplicate { pos }) => PublishOutcome::Duplicate { stream, pos },
                    Ok(_) => PublishOutcome::Failed { stream, failure: BusFailure::Refused },
                    Err(failure) => PublishOutcome::Failed { stream, failure },
                };
                self.out.published(op, outcome);
            }
            // Only the stream's current subscription counts: one the node dropped (its last
            // holder left) and made anew may answer with a top from before messages the new one
            // has delivered since, and taking it would deliver their seqs again.
            Pending::Subscribe { stream }
                if self
                    .node()
                    .and_then(|n| n.streams.get(&stream))
                    .is_none_or(|t| t.subscribing != Some(op)) =>
            {
                // (An outage fails every subscription in flight after forgetting which was
                // current: that is no late reply.)
                if !matches!(reply, Err(BusFailure::Down)) {
                    self.node().expect("clustered").counters.late_replies += 1;
                }
            }
            Pending::Subscribe { stream } => match reply {
                Ok(BusReply::Subscribed { top }) => self.confirmed(now, &stream, top),
                _ => {
                    if let Some(t) = self.node().and_then(|n| n.streams.get_mut(&stream)) {
                        t.subscribing = None;
                    }
                    if self.node().is_some_and(|n| n.is_up()) {
                        self.subscription_failed(now, &stream);
                    }
                }
            },
            // Likewise only the stream's current repair: one asked before the stream started
            // over (a new epoch, or dropped and followed anew) describes a log the stream has
            // left, and taking it would move the stream back to it.
            Pending::Repair { stream, .. }
                if self
                    .node()
                    .and_then(|n| n.streams.get(&stream))
                    .is_none_or(|t| t.seq.repair != Some(op)) =>
            {
                if !matches!(reply, Err(BusFailure::Down)) {
                    self.node().expect("clustered").counters.late_replies += 1;
                }
            }
            Pending::Repair { stream, after } => {
                let t = self.node().and_then(|n| n.streams.get_mut(&stream)).expect("checked");
                match reply {
                    Ok(BusReply::Fetched { top, entries }) => {
                        let entries = entries.into_iter().map(|e| (e.seq, e.payload));
                        let fetched = t.seq.fetched(top, after, entries);
                        self.after_fetch(now, &stream, top, fetched);
                    }
                    _ => t.seq.repair = None,
                }
            }
            Pending::Resume { conn, stream } => self.resume_fetched(now, conn, &stream, reply),
            Pending::History { conn, stream } => self.history_fetched(now, conn, &stream, reply),
            Pending::Tops { streams } => {
                let Ok(BusReply::Tops(tops)) = reply else { return };
                for ((key, asked), top) in streams.iter().zip(tops) {
                    self.top_seen(now, key, *asked, top);
                }
            }
            Pending::Rotate { stream, epoch } => {
                let Ok(BusReply::Rotated { top }) = reply else { return };
                let t = self.node().and_then(|n| n.streams.get(&stream));
                // Moved on since it was asked (the new epoch's messages came first, or another
                // node's rotation): restarting now would send the new epoch's seqs again.
                if t.and_then(|t| t.seq.top()).is_some_and(|local| local.epoch == epoch) {
                    self.restart_at(now, &stream, top);
                }
            }
            Pending::Lease { conn, user } => self.leased(now, conn, user, reply),
            // A failed renewal is tried again at the next period (a lease outlives two misses).
            Pending::Renew => self.renewed(now, reply),
            what @ (Pending::PresenceUpdate { .. }
            | Pending::PresenceRefresh
            | Pending::PresenceRead { .. }) => self.presence_settled(now, op, what, reply),
        }
    }

    /// A repair's fetch came back.
    fn after_fetch(&mut self, now: Instant, key: &StreamKey, top: StreamPos, fetched: Fetched) {
        match fetched {
            Fetched::Repaired => {
                self.node().expect("clustered").counters.gaps_repaired += 1;
                self.drain_stream(now, key);
            }
            Fetched::Lost { after, upto } => {
                let node = self.node().expect("clustered");
                node.counters.gaps_lost += 1;
                if let Some(t) = node.streams.get_mut(key) {
                    t.seq.skip_to(upto);
                }
                self.resync(now, key, Resync::GapTooOld, Some((after, upto)));
                self.drain_stream(now, key);
            }
            // (`top` is the log's, in that epoch.)
            Fetched::NewEpoch { .. } => self.restart_at(now, key, top),
            Fetched::Gone => {
                // The engine forgot the stream: the next append starts a new epoch, which the
                // sequencer adopts; tell the connections now.
                self.restart_stream(now, key, 0);
            }
            Fetched::Backwards { .. } => self.rotate(now, key),
            Fetched::Current | Fetched::Stale => {}
        }
    }

    /// A top check's answer `top` for one stream, which was at `asked` when the check was asked.
    fn top_seen(&mut self, now: Instant, key: &StreamKey, asked: StreamPos, top: StreamPos) {
        let Some(t) = self.node().and_then(|n| n.streams.get(key)) else { return };
        let Some(local) = t.seq.top() else { return };
        if local.epoch != asked.epoch {
            // The stream started over since (a new epoch): the answer describes a log it has
            // left, and taking it would move the stream back there.
            return;
        }
        if top.epoch == local.epoch || (local.epoch == 0 && local.seq == 0) {
            if top.seq > local.seq {
                self.repair(now, key);
            } else if top.seq < asked.seq {
                // Below what was delivered before the log was read: a failover lost its tail.
                // (Seqs delivered since may have been appended after the read: no sign.)
                self.rotate(now, key);
            }
        } else if top.epoch == 0 && top.seq == 0 {
            // Expired or restarted empty: nothing to repair; a new epoch comes with the next
            // append.
        } else {
            self.restart_at(now, key, top);
        }
    }

    /// The log is in another epoch than the stream, at `top`: the stream starts over there
    /// ([`Hub::restart_stream`]), then reads what the log holds past its start, or, if the log
    /// is below what the stream delivered there before (it is the epoch the stream left, and a
    /// failover lost that epoch's tail), moves to a new epoch so that no position is handed
    /// out twice.
    fn restart_at(&mut self, now: Instant, key: &StreamKey, top: StreamPos) {
        let start = self.restart_stream(now, key, top.epoch);
        if top.seq > start.seq {
            self.repair(now, key);
        } else if top.seq < start.seq {
            self.rotate(now, key);
        }
    }

    /// The log went backwards in one epoch (a failover lost its tail): positions already handed
    /// out would be handed out again for other messages, so the stream moves to a new epoch.
    pub(super) fn rotate(&mut self, now: Instant, key: &StreamKey) {
        let Some(epoch) = self.node().and_then(|n| n.streams.get(key)).and_then(|t| t.seq.top())
        else {
            return;
        };
        let stream = key.clone();
        let pending = Pending::Rotate { stream: key.clone(), epoch: epoch.epoch };
        let _ = self.issue(now, pending, |op| BusOp::Rotate { op, stream, epoch: epoch.epoch });
    }

    /// The subscription is confirmed with the stream's top: the local stream takes its position,
    /// and the connections that waited for it go live.
    fn confirmed(&mut self, now: Instant, key: &StreamKey, top: StreamPos) {
        let Some(t) = self.node().and_then(|n| n.streams.get_mut(key)) else { return };
        t.subscribing = None;
        let reset = t.seq.confirmed(top);
        let position = t.seq.top().expect("confirmed");
        if let Some(holder) = self.holder(key) {
            let (users, tenants) = (&mut self.users, &mut self.tenants);
            if let Some(stream) = stream_of(users, tenants, &holder) {
                if stream.position() != position {
                    self.buffers.dropped(stream);
                    *stream = Stream::at(position);
                }
            }
        }
        if matches!(reset, Some(Arrival::NewEpoch { .. })) {
            self.node().expect("clustered").counters.epochs_changed += 1;
        }
        self.stream_ready(now, key);
        self.drain_stream(now, key);
    }

    /// The subscription could not be made: the connections waiting for it cannot get true
    /// positions, so they are closed with [`CloseReason::Unavailable`] (they reconnect with
    /// backoff).
    fn subscription_failed(&mut self, now: Instant, key: &StreamKey) {
        for idx in self.waiting_on(key) {
            if self.conns.contains(idx) {
                self.close_conn(now, idx, ClosedBy::Hub(CloseReason::Unavailable));
            }
        }
    }

    /// Delivers the messages the stream's sequencer has ready, in order; then starts a repair
    /// if a gap remains.
    fn drain_stream(&mut self, now: Instant, key: &StreamKey) {
        loop {
            let Some(t) = self.node().and_then(|n| n.streams.get_mut(key)) else { return };
            let Some((pos, payload)) = t.seq.pop_ready() else { break };
            self.deliver_remote(now, key, pos, &payload);
        }
        let gap = self.node().and_then(|n| n.streams.get(key)).and_then(|t| t.seq.gap());
        if gap.is_some() {
            self.repair(now, key);
        }
        self.close_doomed_conns(now);
    }

    /// One message of the bus, in order: checked against its stream, rendered into the frame a
    /// single node would have sent, kept in the local buffer and fanned out.
    fn deliver_remote(&mut self, now: Instant, key: &StreamKey, pos: StreamPos, payload: &str) {
        let Some(decoded) = Decoded::parse(key, payload) else {
            self.bus_mismatch(key);
            // Its seq is consumed: the stream moves on without it.
            self.advance_local(key, pos);
            return;
        };
        let visible = visible_of(&decoded, &self.node.as_deref().expect("clustered").cfg.node);
        let low = decoded.low_priority;
        let mut text = std::mem::take(&mut self.render_buf);
        decoded.render(pos, &mut text);
        let frame = crate::frame::Frame::new(&text);
        self.render_buf = text;
        let Some(holder) = self.holder(key) else { return };
        let _published = self.deliver_at(now, &holder, pos, &frame, visible, low);
    }

    /// A live message that is not one of `key`'s (or at no position): counted and audited.
    fn bus_mismatch(&mut self, key: &StreamKey) {
        self.node().expect("clustered").counters.mismatches += 1;
        let user = match &key.scope {
            StreamScope::User(u) => Some(u.clone()),
            _ => None,
        };
        self.out.audit(AuditKind::BusMismatch, None, Some(&key.tenant), user.as_ref());
    }

    /// Whether a message at an already delivered position is another message than the one
    /// delivered there (compared with the buffered frame, while it is buffered): the engine
    /// handed the position out twice, after a failover lost the tail of its log.
    fn position_reused(&mut self, key: &StreamKey, pos: StreamPos, payload: &str) -> bool {
        let Some(holder) = self.holder(key) else { return false };
        let Some(decoded) = Decoded::parse(key, payload) else { return false };
        let Some(stream) = stream_of(&mut self.users, &mut self.tenants, &holder) else {
            return false;
        };
        let Ok(mut entries) = stream.range(pos.epoch, pos.seq.saturating_sub(1), pos.seq) else {
            return false;
        };
        let Some(kept) = entries.next() else { return false };
        let mut text = std::mem::take(&mut self.render_buf);
        decoded.render(pos, &mut text);
        let reused = text != kept.frame.as_str();
        self.render_buf = text;
        reused
    }

    /// A re-joined member was sent the stream up to `sent` (same epoch) before the log lost its
    /// tail: the stream moves to a new epoch ([`Hub::rotate`]), and until it comes the sequencer
    /// and the local stream move past `sent`, so that messages reusing those seqs are dropped as
    /// duplicates instead of being delivered a second time.
    pub(super) fn rotate_past(&mut self, now: Instant, key: &StreamKey, sent: StreamPos) {
        if let Some(t) = self.node().and_then(|n| n.streams.get_mut(key)) {
            if t.seq.top().is_some_and(|top| top.epoch == sent.epoch && top.seq < sent.seq) {
                t.seq.skip_to(sent.seq);
                self.advance_local(key, sent);
            }
        }
        self.rotate(now, key);
    }

    /// Moves the local stream past `pos` without a message (one that could not be delivered).
    fn advance_local(&mut self, key: &StreamKey, pos: StreamPos) {
        let Some(holder) = self.holder(key) else { return };
        let (users, tenants) = (&mut self.users, &mut self.tenants);
        if let Some(stream) = stream_of(users, tenants, &holder) {
            self.buffers.dropped(stream);
            *stream = Stream::at(pos);
        }
    }

    /// The local holder of a stream: the user's state, the room, the tenant.
    pub(crate) fn holder(&self, key: &StreamKey) -> Option<TrimKey> {
        match &key.scope {
            StreamScope::User(user) => {
                self.users.find(key.tenant.as_str(), user.as_str()).map(TrimKey::User)
            }
            StreamScope::Room(room) => {
                let t = self.tenants.get(&key.tenant)?;
                t.rooms.contains_key(room).then(|| TrimKey::Room(key.tenant.clone(), room.clone()))
            }
            StreamScope::Tenant => {
                self.tenants.contains_key(&key.tenant).then(|| TrimKey::Tenant(key.tenant.clone()))
            }
        }
    }

    /// The stream starts over in `epoch` (0: unknown until the next message), at seq 0 or, if it
    /// is the epoch the stream left, where it was there ([`Sequencer::restart`]): the local
    /// buffer is dropped, the connections' positions on it reset, and each is told with a
    /// `resync` at the start. Returns the start.
    fn restart_stream(&mut self, now: Instant, key: &StreamKey, epoch: u64) -> StreamPos {
        let start = match self.node().and_then(|n| n.streams.get_mut(key)) {
            Some(t) => t.seq.restart(epoch),
            None => StreamPos { epoch, seq: 0 },
        };
        self.restart_local(now, key, start);
        start
    }

    /// [`Hub::restart_stream`] for the local side only (the sequencer already started over, at
    /// `start`).
    fn restart_local(&mut self, now: Instant, key: &StreamKey, start: StreamPos) {
        self.node().expect("clustered").counters.epochs_changed += 1;
        if let Some(holder) = self.holder(key) {
            let (users, tenants) = (&mut self.users, &mut self.tenants);
            if let Some(stream) = stream_of(users, tenants, &holder) {
                self.buffers.dropped(stream);
                *stream = Stream::at(start);
            }
        }
        self.reset_positions(key, start.seq);
        self.resync(now, key, Resync::EpochChanged, None);
    }

    /// Tells every connection on the stream that it must refetch: `lost` seqs `(after, upto]`
    /// are gone, or (without `lost`) the stream started over.
    fn resync(&mut self, now: Instant, key: &StreamKey, why: Resync, lost: Option<(u64, u64)>) {
        let Some(holder) = self.holder(key) else { return };
        let (users, tenants) = (&mut self.users, &mut self.tenants);
        let Some(stream) = stream_of(users, tenants, &holder) else { return };
        let mut pos = stream.position();
        if let Some((_, upto)) = lost {
            pos.seq = pos.seq.max(upto);
        }
        let name = key.name();
        let frame = self.flow.writer.resync(&name, pos, why.as_str());
        for idx in self.recipients(&holder) {
            self.out.stats.resyncs_sent += 1;
            self.control_or_close(now, idx, &frame);
        }
    }
}

impl Hub {
    /// [`Hub::publish`] in cluster mode: validated, redacted and serialized once (without its
    /// position), then appended on the bus. Delivery happens when it comes back over the bus.
    pub(crate) fn publish_clustered(
        &mut self,
        now: Instant,
        envelope: crate::envelope::Envelope,
    ) -> Result<crate::hub::Published, crate::error::PublishError> {
        use crate::envelope::{Audience, Priority, Target};
        use crate::error::PublishError;
        let crate::envelope::Envelope { target, kind, thread, run, data, idempotency_key, exclude } =
            envelope;
        let node = self.node.as_deref().expect("clustered");
        let me = node.cfg.node.clone();
        let (mut thread, mut run) = (thread, run);
        let (key, visibility) = match &target {
            Target::User { tenant, user } => (StreamKey::user(tenant.clone(), user.clone()), None),
            Target::Thread { tenant, user, thread: t } => {
                if thread.as_ref().is_some_and(|own| own != t) {
                    return Err(PublishError::ThreadMismatch);
                }
                thread = Some(t.clone());
                (StreamKey::user(tenant.clone(), user.clone()), None)
            }
            Target::Run { tenant, user, run: r } => {
                if run.as_ref().is_some_and(|own| own != r) {
                    return Err(PublishError::RunMismatch);
                }
                run = Some(r.clone());
                (StreamKey::user(tenant.clone(), user.clone()), None)
            }
            Target::Connection(id) => {
                // Node-local: the connection must be open here (its wire id names this node).
                let idx = self.resolve(now, *id)?;
                let (tenant, user) = self.owner(idx);
                let vis = Visibility::Conn(me.as_str().into(), (id.index, id.generation));
                (StreamKey::user(tenant, user), Some(vis))
            }
            Target::Room { tenant, room } => (StreamKey::room(tenant.clone(), room.clone()), None),
            Target::Tenant { tenant, audience } => {
                let vis = match audience {
                    Audience::All => None,
                    Audience::Role(r) => Some(Visibility::Role(r.as_str().into())),
                };
                (StreamKey::tenant(tenant.clone()), vis)
            }
            Target::Everyone => return Err(PublishError::EveryoneInCluster),
        };
        let visibility = visibility.unwrap_or_else(|| match (&thread, &run) {
            (None, None) => Visibility::All,
            _ if !matches!(key.scope, StreamScope::User(_)) => Visibility::All,
            (t, r) => Visibility::Subject(
                t.as_ref().map(|t| t.as_str().into()),
                r.as_ref().map(|r| r.as_str().into()),
            ),
        });
        // The excluded connection is one of this node's: the others exclude nobody.
        let except = exclude.map(|c| (me.as_str().into(), (c.index, c.generation)));
        let name = key.name();
        let frame = self.flow.writer.event(
            &kind,
            &name,
            StreamPos { epoch: 0, seq: 0 },
            thread.as_ref(),
            run.as_ref(),
            &data,
            &self.redactor,
        );
        // The largest position adds at most 38 digits to the frame.
        let bytes = frame.len() as u64 + 38;
        if bytes > self.cfg.max_unwritten_bytes {
            return Err(PublishError::TooLarge { bytes, limit: self.cfg.max_unwritten_bytes });
        }
        let low = kind.priority() == Priority::Low;
        let payload =
            crate::cluster::encode(&key, &visibility, except.as_ref(), low, frame.as_str())
                .expect("the hub's own event frames have a position to fill");
        let keep = u32::try_from(self.cfg.retention.max_messages).unwrap_or(u32::MAX);
        let ttl = self.cfg.retention.max_age;
        let stream = key.clone();
        let op = self.issue(now, Pending::Publish { stream: key }, |op| BusOp::Append {
            op,
            stream,
            payload,
            idempotency_key,
            keep,
            ttl,
        })?;
        self.out.stats.publishes += 1;
        Ok(crate::hub::Published::pending(op))
    }
}

/// Who may see a bus message on node `node`: a connection target of another node is nobody
/// here, and a connection excluded on another node excludes nobody here. (The buffers' `Scope`
/// is the hub's vocabulary, so the mapping lives here, not in `cluster`.)
pub(crate) fn visible_of(decoded: &Decoded<'_>, node: &crate::cluster::NodeId) -> Visible {
    let scope = match &decoded.visibility {
        Visibility::All => Scope::All,
        Visibility::Subject(t, r) => Scope::Subject {
            thread: t.as_deref().map(ThreadId::from),
            run: r.as_deref().map(RunId::from),
        },
        Visibility::Role(r) => Scope::Role(Role::from(r.as_ref())),
        Visibility::Conn(n, (index, generation)) if n.as_ref() == node.as_str() => {
            Scope::Conn(ConnId::new(*index, *generation))
        }
        Visibility::Conn(..) => Scope::Nobody,
    };
    let except = match &decoded.except {
        Some((n, (index, generation))) if n.as_ref() == node.as_str() => {
            Some(ConnId::new(*index, *generation))
        }
        _ => None,
    };
    Visible { scope, except }
}
