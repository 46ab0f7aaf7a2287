//! Publishing and delivery: a message gets its stream position, is serialized once, kept in the
//! stream's recovery buffer, and offered to each recipient under that connection's backpressure.

use std::time::Instant;

use crate::cluster::{OpId, StreamKey};
use crate::config::Config;
use crate::connection::{Connection, Connections};
use crate::envelope::{Audience, Envelope, EventKind, Priority, Target};
use crate::error::PublishError;
use crate::flow::{Flow, Offer, TierTally};
use crate::frame::Frame;
use crate::hub::Hub;
use crate::ids::{ConnId, Role, RoomId, RunId, StreamName, StreamPos, TenantId, ThreadId, UserId};
use crate::kinds::{AuditKind, CloseReason, ClosedBy};
use crate::outbox::Outbox;
use crate::payload::{MAX_DATA_DEPTH, Payload, depth_within};
use crate::protocol::FrameWriter;
use crate::redact::Redactor;
use crate::routing::{Member, Tenants};
use crate::routing::{audience_admits, visible_to};
use crate::stream::{Scope, Stream, TrimKey, Visible};
use crate::user::Users;

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
    /// The message was kept in its stream's recovery buffer (for `Everyone`, in every tenant's):
    /// a connection that resumes from before it, or a detached user's next one, gets it. False
    /// when there was no stream, when it was a duplicate, in cluster mode (the log keeps it), and
    /// when it could not be kept (larger than `Retention::max_bytes` or the hub-wide cap, or
    /// shed or evicted with a detached user by the same call's cap enforcement).
    pub buffered: bool,
    /// The stream the message went into and its position there; `None` when there was no such
    /// stream (a user the hub does not hold, a room without members, a tenant without state) or
    /// when it went into several (`Everyone`: one message per tenant).
    pub position: Option<(StreamName, StreamPos)>,
    /// Cluster mode: the append the publish issued. Nothing is delivered yet (the other counts
    /// are 0): delivery happens when the message comes back over the bus, and the outcome comes
    /// as [`Action::Published`](crate::Action::Published) with this id.
    pub op: Option<OpId>,
    /// A single node: the envelope's idempotency key was used on this stream within the
    /// retention age; nothing was published, and `position` is the first publish's.
    pub duplicate: bool,
}

impl Published {
    fn none() -> Self {
        Published {
            delivered: 0,
            skipped: 0,
            closed: 0,
            held: 0,
            buffered: false,
            position: None,
            op: None,
            duplicate: false,
        }
    }

    /// A clustered publish waiting for the bus.
    pub(crate) fn pending(op: OpId) -> Self {
        Published { op: Some(op), ..Self::none() }
    }

    /// Whether the message reached no connection, live or held. (It is still kept in its stream
    /// for a later resume, if it has a stream.)
    #[must_use]
    pub fn undeliverable(&self) -> bool {
        self.delivered == 0 && self.held == 0
    }
}

/// An entry of a fan-out's recipient list: a connection slot (a user's or a tenant's list), or a
/// room member (which holds the room's mark of what was sent, `Member::sent`).
trait Recipient {
    /// The connection's slot and its id.
    fn resolve(&self, conns: &Connections) -> (u32, ConnId);
}

impl Recipient for u32 {
    #[inline(always)]
    fn resolve(&self, conns: &Connections) -> (u32, ConnId) {
        (*self, conns.id_of(*self))
    }
}

impl Recipient for Member {
    /// The id from the member entry: no look-up in the slot table.
    #[inline(always)]
    fn resolve(&self, _: &Connections) -> (u32, ConnId) {
        (self.conn, self.id())
    }
}

/// Offers `frame` to each of `recipients` that `admit` accepts, `mark`s those it was delivered
/// to (the connection, and the recipient entry: a room's mark is on its member entry), and
/// collects connections that overflowed into `doomed`.
///
/// Two loops: the first runs while every recipient takes the frame through the fast lane (the
/// common case: all of them), the `i`-th into the run's `i`-th free slot, so that one index
/// walks both lists with no bounds checks and no count of slots filled; the second takes over
/// at the first recipient that does not, and goes through the full offer where it must
/// (callgrind, `room-1000`: 5 instructions fewer per recipient than the second loop alone).
#[allow(clippy::too_many_arguments)]
fn fan_out<R: Recipient>(
    flow: &mut Flow,
    out: &mut Outbox,
    conns: &mut Connections,
    cfg: &Config,
    recipients: &mut [R],
    admit: impl Fn(&Connection, ConnId) -> bool,
    mark: impl Fn(&mut Connection, &mut R),
    frame: &Frame,
    priority: Priority,
    doomed: &mut Vec<u32>,
    result: &mut Published,
) {
    let mut tally = TierTally::default();
    let lane = flow.lane(frame, priority, cfg);
    let n = recipients.len();
    out.open_run(frame, n);
    // The lane writes its recipients into the run's slots (see `Outbox::open_run`), `filled`
    // kept here; the full offer queues through the outbox, told first how far they go.
    let (mut slots, filled) = out.run_slots();
    let free = &mut slots[filled..filled + n];
    let mut i = 0;
    while i < n {
        let recipient = &mut recipients[i];
        // One look-up per recipient, for its filter, the offer and the mark.
        let (idx, id) = recipient.resolve(conns);
        let conn = conns.get_mut(idx);
        if !(admit(conn, id) && lane.takes(conn)) {
            break;
        }
        lane.deliver(conn, &mut tally);
        free[i] = id;
        // Remember the highest seq sent on this stream (issue 10 item 5).
        mark(conn, recipient);
        i += 1;
    }
    let mut filled = filled + i;
    // Counted here and added once at the end: per recipient, counters in the outbox and the
    // result cost about as much as the push, and kept the loop from holding its values in
    // registers across it. Deliveries are the recipients queued in the run.
    let (mut held, mut skipped) = (0, 0);
    for recipient in &mut recipients[i..] {
        let (idx, id) = recipient.resolve(conns);
        let conn = conns.get_mut(idx);
        if !admit(conn, id) {
            continue;
        }
        if lane.takes(conn) {
            lane.deliver(conn, &mut tally);
            slots[filled] = id;
            filled += 1;
            mark(conn, recipient);
            continue;
        }
        out.fill_to(filled);
        let offer = flow.offer_to(out, id, conn, frame, priority, cfg, &mut tally);
        (slots, filled) = out.run_slots();
        match offer {
            Offer::Delivered => mark(conn, recipient),
            Offer::Overflow => {
                doomed.push(idx);
                result.closed += 1;
            }
            Offer::Held => held += 1,
            Offer::Skipped => skipped += 1,
        }
    }
    out.fill_to(filled);
    let delivered = out.close_run();
    result.delivered += delivered;
    result.held += held;
    result.skipped += skipped;
    out.count_deliveries(delivered as u64, frame);
    out.count_offers(held as u64, skipped as u64);
    flow.count_tiers(tally);
}

impl Hub {
    /// Routes an envelope to its target's connections: it gets the next position of its stream,
    /// is serialized once (shared by every recipient), and is kept in the stream's recovery
    /// buffer. Under backpressure, `agent_thinking` is skipped for a connection that is behind,
    /// and a connection that cannot take a critical frame is closed with `SlowConsumer`.
    ///
    /// # Errors
    ///
    /// Nothing is delivered or kept when it fails:
    /// - [`PublishError::InvalidKind`]: a custom event kind that is empty or reserved;
    /// - [`PublishError::ThreadMismatch`]: a `Thread` target whose envelope names another thread;
    /// - [`PublishError::RunMismatch`]: a `Run` target whose envelope names another run;
    /// - [`PublishError::GlobalBroadcastDisabled`]: [`Target::Everyone`] without
    ///   [`Config::allow_global_broadcast`] (audited);
    /// - [`PublishError::Conn`]: a `Connection` target that is not open (see [`ConnError`](crate::ConnError));
    /// - [`PublishError::TooDeep`]: `data` nests deeper than [`MAX_DATA_DEPTH`] (checked without
    ///   recursion, before anything walks it);
    /// - [`PublishError::TooLarge`]: the event's frame is larger than
    ///   [`Config::max_unwritten_bytes`], so no connection could ever take it (nobody is closed;
    ///   for `Everyone`, checked for every tenant before any is published to). Checked when the
    ///   target has a stream: a publish to a user the hub does not hold builds no frame.
    ///
    /// A target with no recipients is not an error: see [`Published::undeliverable`].
    pub fn publish(&mut self, now: Instant, envelope: Envelope) -> Result<Published, PublishError> {
        let now = self.clock(now);
        if !envelope.kind.is_valid() {
            return Err(PublishError::InvalidKind);
        }
        if let Payload::Json(data) = &envelope.data
            && !depth_within(data, MAX_DATA_DEPTH)
        {
            return Err(PublishError::TooDeep { limit: MAX_DATA_DEPTH });
        }
        if self.node.is_some() {
            return self.publish_clustered(now, envelope);
        }
        // A key seen on this stream within the retention age: published before.
        let (max_age, max_keys) =
            (self.cfg.retention.max_age, self.cfg.max_idempotency_keys as usize);
        let idempotent = match (&envelope.idempotency_key, idempotent_stream(&envelope.target)) {
            (Some(key), Some(stream)) => Some((key.clone(), stream)),
            _ => None,
        };
        if let Some((key, stream)) = &idempotent {
            if let Some(position) = self.idempotency.seen(now, stream, key, max_age, max_keys) {
                return Ok(Published {
                    position: Some(position),
                    duplicate: true,
                    ..Published::none()
                });
            }
        }
        // By reference: moving the envelope (about 200 bytes) was a `memcpy` per publish.
        let result = self.publish_local(now, &envelope)?;
        if let (Some((key, stream)), Some(position)) = (idempotent, &result.position) {
            self.idempotency.record(now, stream, key, position.clone(), max_age, max_keys);
        }
        Ok(result)
    }

    /// A single node's publish, once the envelope is known to be valid and new.
    fn publish_local(
        &mut self,
        now: Instant,
        envelope: &Envelope,
    ) -> Result<Published, PublishError> {
        let Envelope { target, kind, thread, run, data, exclude, .. } = envelope;
        let msg =
            Message { kind, thread: thread.as_ref(), run: run.as_ref(), data, except: *exclude };
        // A connection's user, for the check below (the connection may close meanwhile).
        let mut owner = None;
        let mut result = match target {
            Target::User { tenant, user } => self.publish_user(now, tenant, user, None, &msg)?,
            Target::Thread { tenant, user, thread: target_thread } => {
                if thread.as_ref().is_some_and(|t| t != target_thread) {
                    return Err(PublishError::ThreadMismatch);
                }
                let msg = Message { thread: Some(target_thread), ..msg };
                self.publish_user(now, tenant, user, None, &msg)?
            }
            Target::Run { tenant, user, run: target_run } => {
                if run.as_ref().is_some_and(|r| r != target_run) {
                    return Err(PublishError::RunMismatch);
                }
                let msg = Message { run: Some(target_run), ..msg };
                self.publish_user(now, tenant, user, None, &msg)?
            }
            Target::Connection(id) => {
                let idx = self.resolve(now, *id)?;
                let (tenant, user) = self.owner(idx);
                let published = self.publish_user(now, &tenant, &user, Some(idx), &msg)?;
                owner = Some((tenant, user));
                published
            }
            Target::Room { tenant, room } => self.publish_room(now, tenant, room, &msg)?,
            Target::Tenant { tenant, audience } => {
                let role = match audience {
                    Audience::All => None,
                    Audience::Role(r) => Some(r),
                };
                let frame = self.tenant_frame(tenant, &msg)?;
                self.publish_tenant(now, tenant, role, &msg, frame)
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
                // Every tenant's frame is built (once) and size-checked before any is published.
                let mut frames = Vec::with_capacity(tenants.len());
                for tenant in &tenants {
                    frames.push(self.tenant_frame(tenant, &msg)?);
                }
                let mut total = Published { buffered: !tenants.is_empty(), ..Published::none() };
                for (tenant, frame) in tenants.iter().zip(frames) {
                    let r = self.publish_tenant(now, tenant, None, &msg, frame);
                    total.delivered += r.delivered;
                    total.skipped += r.skipped;
                    total.closed += r.closed;
                    total.held += r.held;
                    total.buffered &= r.buffered;
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
        let kept = self.buffers.totals().0;
        let watermark = self.cfg.max_buffered_bytes - self.cfg.max_buffered_bytes / 8;
        while self.buffers.totals().1 > watermark && self.evict_detached() {}
        self.shed_to_cap();
        // Whatever was dropped may have been this message (a detached user evicted whole).
        if let (true, Some((_, pos))) = (self.buffers.totals().0 < kept, &result.position) {
            result.buffered &= self.still_kept(target, owner.as_ref(), pos.seq);
        }
        Ok(result)
    }

    /// Whether the stream `target` published into still keeps `seq` as its newest message.
    /// `owner`: a connection target's user. `Everyone`: tenant streams shed their oldest first,
    /// so the message just published outlasts the rest.
    fn still_kept(&self, target: &Target, owner: Option<&(TenantId, UserId)>, seq: u64) -> bool {
        let user = |tenant: &TenantId, user: &UserId| {
            let idx = self.users.find(tenant.as_str(), user.as_str())?;
            Some(&self.users.get(idx).stream)
        };
        let stream = match target {
            Target::User { tenant, user: u }
            | Target::Thread { tenant, user: u, .. }
            | Target::Run { tenant, user: u, .. } => user(tenant, u),
            Target::Connection(_) => owner.and_then(|(t, u)| user(t, u)),
            Target::Room { tenant, room } => {
                self.tenants.get(tenant).and_then(|t| t.rooms.get(room)).map(|r| &r.stream)
            }
            Target::Tenant { tenant, .. } => self.tenants.get(tenant).map(|t| &t.stream),
            Target::Everyone => return true,
        };
        stream.is_some_and(|s| s.keeps_newest(seq))
    }

    /// Enforces `max_buffered_bytes` as a hard cap: sheds the oldest buffered messages across all
    /// streams (a stream's newest too, if it must) until the total fits. Costs O(what is shed,
    /// plus stale queue entries skipped once each).
    fn shed_to_cap(&mut self) {
        while self.buffers.totals().1 > self.cfg.max_buffered_bytes {
            let Some((key, epoch, seq)) = self.buffers.pop_oldest() else { break };
            let (buffers, cfg) = (&mut self.buffers, &self.cfg);
            if let Some(stream) = stream_of(&mut self.users, &mut self.tenants, &key) {
                buffers.shed(stream, key, epoch, seq, cfg);
            }
        }
        if self.buffers.order_needs_compaction() {
            let (users, tenants) = (&mut self.users, &mut self.tenants);
            self.buffers.compact_order(|key, epoch, seq| {
                stream_of(users, tenants, key)
                    .is_some_and(|s| s.epoch() == epoch && s.available_from() <= seq)
            });
        }
    }

    /// Closes the connections a fan-out found over their hard limit. Deferred to after the
    /// fan-out so that no membership list changes while it is walked.
    pub(crate) fn close_doomed_conns(&mut self, now: Instant) {
        self.close_doomed(now);
    }

    fn close_doomed(&mut self, now: Instant) {
        while let Some(idx) = self.doomed.pop() {
            self.close_conn(now, idx, ClosedBy::Hub(CloseReason::SlowConsumer));
        }
    }

    /// On a user's stream: to `only` if given (bypassing the filter), else to every connection
    /// whose filter admits the thread and run. Kept for recovery even while the user is
    /// detached.
    fn publish_user(
        &mut self,
        now: Instant,
        tenant: &TenantId,
        user: &UserId,
        only: Option<u32>,
        msg: &Message<'_>,
    ) -> Result<Published, PublishError> {
        let Some(uidx) = self.users.find(tenant.as_str(), user.as_str()) else {
            // A user the hub does not hold: nothing is created for it.
            return Ok(Published::none());
        };
        let u = self.users.get_mut(uidx);
        let pos = u.stream.next_position();
        let frame = msg.frame(&mut self.flow.writer, &StreamName::User, pos, &self.redactor);
        deliverable(&frame, &self.cfg)?;
        let pos = u.stream.assign();
        let scope = match only {
            Some(idx) => Scope::Conn(self.conns.id_of(idx)),
            None => Scope::subject(msg.thread, msg.run),
        };
        let key = || TrimKey::User(uidx);
        let visible = Visible { scope, except: msg.except };
        self.buffers.keep(&mut u.stream, key, now, pos, &frame, visible, &self.cfg);
        let mut result = Published {
            position: Some((StreamName::User, pos)),
            buffered: u.stream.keeps_newest(pos.seq),
            ..Published::none()
        };
        let priority = msg.kind.priority();
        let mut only_slot = only.unwrap_or_default();
        let recipients = match only {
            Some(_) => std::slice::from_mut(&mut only_slot),
            None => u.conns.as_mut_slice(),
        };
        let (thread, run, except) = (msg.thread, msg.run, msg.except);
        fan_out(
            &mut self.flow,
            &mut self.out,
            &mut self.conns,
            &self.cfg,
            recipients,
            |c, id| (only.is_some() || c.wants(thread, run)) && except.is_none_or(|e| e != id),
            |c, _| c.mark_user_sent(),
            &frame,
            priority,
            &mut self.doomed,
            &mut result,
        );
        Ok(result)
    }

    fn publish_room(
        &mut self,
        now: Instant,
        tenant: &TenantId,
        room: &RoomId,
        msg: &Message<'_>,
    ) -> Result<Published, PublishError> {
        let Some(r) = self.tenants.get_mut(tenant).and_then(|t| t.rooms.get_mut(room)) else {
            return Ok(Published::none());
        };
        let name = StreamName::Room(room.clone());
        let frame =
            msg.frame(&mut self.flow.writer, &name, r.stream.next_position(), &self.redactor);
        deliverable(&frame, &self.cfg)?;
        let pos = r.stream.assign();
        let key = || TrimKey::Room(tenant.clone(), room.clone());
        let visible = Visible { scope: Scope::All, except: msg.except };
        self.buffers.keep(&mut r.stream, key, now, pos, &frame, visible, &self.cfg);
        let buffered = r.stream.keeps_newest(pos.seq);
        let mut result = Published { position: Some((name, pos)), buffered, ..Published::none() };
        let members = &mut r.members;
        let (flow, out, conns, cfg) = (&mut self.flow, &mut self.out, &mut self.conns, &self.cfg);
        let except = msg.except;
        fan_out(
            flow,
            out,
            conns,
            cfg,
            members,
            |_, id| except.is_none_or(|c| c != id),
            |_, m| m.sent = pos.seq,
            &frame,
            msg.kind.priority(),
            &mut self.doomed,
            &mut result,
        );
        Ok(result)
    }

    /// The frame a tenant broadcast will have at the tenant stream's next position, size-checked;
    /// `None` for a tenant without state.
    fn tenant_frame(
        &mut self,
        tenant: &TenantId,
        msg: &Message<'_>,
    ) -> Result<Option<Frame>, PublishError> {
        let Some(t) = self.tenants.get(tenant) else { return Ok(None) };
        let pos = t.stream.next_position();
        let frame = msg.frame(&mut self.flow.writer, &StreamName::Tenant, pos, &self.redactor);
        deliverable(&frame, &self.cfg)?;
        Ok(Some(frame))
    }

    /// Publishes `frame` (from [`Hub::tenant_frame`], built for the next position) on a tenant's
    /// stream.
    fn publish_tenant(
        &mut self,
        now: Instant,
        tenant: &TenantId,
        role: Option<&Role>,
        msg: &Message<'_>,
        frame: Option<Frame>,
    ) -> Published {
        let (Some(t), Some(frame)) = (self.tenants.get_mut(tenant), frame) else {
            return Published::none();
        };
        let pos = t.stream.assign();
        let scope = role.map_or(Scope::All, |r| Scope::Role(r.clone()));
        let key = || TrimKey::Tenant(tenant.clone());
        let visible = Visible { scope, except: msg.except };
        self.buffers.keep(&mut t.stream, key, now, pos, &frame, visible, &self.cfg);
        let mut result = Published {
            position: Some((StreamName::Tenant, pos)),
            buffered: t.stream.keeps_newest(pos.seq),
            ..Published::none()
        };
        let (flow, out, conns, cfg) = (&mut self.flow, &mut self.out, &mut self.conns, &self.cfg);
        let except = msg.except;
        let admit =
            |c: &Connection, id| audience_admits(c.roles(), role) && except.is_none_or(|e| e != id);
        fan_out(
            flow,
            out,
            conns,
            cfg,
            &mut t.conns,
            admit,
            |c, _| c.mark_tenant_sent(),
            &frame,
            msg.kind.priority(),
            &mut self.doomed,
            &mut result,
        );
        result
    }
}

/// The one stream a target publishes into, for its idempotency key: none for a connection
/// target (ephemeral) or `Everyone` (one stream per tenant), whose keys are not remembered.
fn idempotent_stream(target: &Target) -> Option<StreamKey> {
    match target {
        Target::User { tenant, user }
        | Target::Thread { tenant, user, .. }
        | Target::Run { tenant, user, .. } => Some(StreamKey::user(tenant.clone(), user.clone())),
        Target::Room { tenant, room } => Some(StreamKey::room(tenant.clone(), room.clone())),
        Target::Tenant { tenant, .. } => Some(StreamKey::tenant(tenant.clone())),
        _ => None,
    }
}

/// The stream an age timer or a shedding entry names, if it still exists.
pub(crate) fn stream_of<'a>(
    users: &'a mut Users,
    tenants: &'a mut Tenants,
    key: &TrimKey,
) -> Option<&'a mut Stream> {
    match key {
        TrimKey::User(u) => users.slab.get_mut(*u as usize).map(|u| &mut u.stream),
        TrimKey::Tenant(t) => tenants.get_mut(t).map(|t| &mut t.stream),
        TrimKey::Room(t, r) => {
            tenants.get_mut(t).and_then(|t| t.rooms.get_mut(r)).map(|r| &mut r.stream)
        }
    }
}

/// Refuses a frame no connection could ever take: larger than the hard unwritten limit.
fn deliverable(frame: &Frame, cfg: &Config) -> Result<(), PublishError> {
    let bytes = frame.len() as u64;
    if bytes > cfg.max_unwritten_bytes {
        return Err(PublishError::TooLarge { bytes, limit: cfg.max_unwritten_bytes });
    }
    Ok(())
}

/// The parts of an envelope that make up its frame.
#[derive(Clone, Copy)]
struct Message<'a> {
    kind: &'a EventKind,
    thread: Option<&'a ThreadId>,
    run: Option<&'a RunId>,
    data: &'a Payload,
    /// The connection left out ([`Envelope::exclude`]).
    except: Option<ConnId>,
}

impl Message<'_> {
    fn frame(
        &self,
        writer: &mut FrameWriter,
        stream: &StreamName,
        pos: StreamPos,
        redactor: &Redactor,
    ) -> Frame {
        writer.event(self.kind, stream, pos, self.thread, self.run, self.data, redactor)
    }
}

impl Hub {
    /// Cluster mode: a message that came back over the bus at `pos`, rendered into `frame`, is
    /// kept in its local stream's buffer and offered to the holder's connections that `visible`
    /// admits (the same fan-out as a local publish).
    pub(crate) fn deliver_at(
        &mut self,
        now: Instant,
        holder: &TrimKey,
        pos: StreamPos,
        frame: &Frame,
        visible: Visible,
        low: bool,
    ) -> Published {
        let priority = if low { Priority::Low } else { Priority::Critical };
        let Some(stream) = stream_of(&mut self.users, &mut self.tenants, holder) else {
            return Published::none();
        };
        if !stream.take(pos) {
            // Not the next position (a skipped gap, a new epoch): the buffer starts over here.
            self.buffers.dropped(stream);
            *stream = Stream::at(StreamPos { epoch: pos.epoch, seq: pos.seq.saturating_sub(1) });
            let _taken = stream.take(pos);
        }
        let key = || holder.clone();
        self.buffers.keep(stream, key, now, pos, frame, visible.clone(), &self.cfg);
        let mut result = Published::none();
        let (flow, out, conns, cfg) = (&mut self.flow, &mut self.out, &mut self.conns, &self.cfg);
        let doomed = &mut self.doomed;
        match holder {
            TrimKey::User(uidx) => {
                let members = &mut self.users.get_mut(*uidx).conns;
                let all = visible == Visible::from(Scope::All);
                let admit = |c: &Connection, id| all || visible_to(c, id, &visible);
                let mark = |c: &mut Connection, _: &mut u32| c.mark_user_sent();
                fan_out(
                    flow,
                    out,
                    conns,
                    cfg,
                    members,
                    admit,
                    mark,
                    frame,
                    priority,
                    doomed,
                    &mut result,
                );
            }
            TrimKey::Room(t, r) => {
                let Some(room) = self.tenants.get_mut(t).and_then(|t| t.rooms.get_mut(r)) else {
                    return result;
                };
                let members = &mut room.members;
                let seq = pos.seq;
                let mark = |_: &mut Connection, m: &mut Member| m.sent = seq;
                let except = visible.except;
                fan_out(
                    flow,
                    out,
                    conns,
                    cfg,
                    members,
                    |_, id| except.is_none_or(|c| c != id),
                    mark,
                    frame,
                    priority,
                    doomed,
                    &mut result,
                );
            }
            TrimKey::Tenant(t) => {
                let Some(tenant) = self.tenants.get_mut(t) else { return result };
                let members = &mut tenant.conns;
                let all = visible == Visible::from(Scope::All);
                let admit = |c: &Connection, id| all || visible_to(c, id, &visible);
                let mark = |c: &mut Connection, _: &mut u32| c.mark_tenant_sent();
                fan_out(
                    flow,
                    out,
                    conns,
                    cfg,
                    members,
                    admit,
                    mark,
                    frame,
                    priority,
                    doomed,
                    &mut result,
                );
            }
        }
        result
    }
}
