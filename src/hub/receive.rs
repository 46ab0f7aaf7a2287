//! Client frames: validation, rate limits, subscriptions, inbound messages, and `resume`.

use std::borrow::Cow;
use std::time::Instant;

use crate::action::{Inbound, Origin};
use crate::connection::Connections;
use crate::error::{PeerError, ReceiveError};
use crate::flow::Flow;
use crate::hub::Hub;
use crate::ids::{ConnId, StreamName, StreamPos, ThreadId};
use crate::kinds::{AuditKind, CloseReason, ClosedBy, LimitKind};
use crate::limits::Rate;
use crate::outbox::Outbox;
use crate::protocol::{ClientFrame, StreamReport, parse_client_frame};
use crate::routing::scope_admits;
use crate::stream::{Stream, Unrecoverable};

impl Hub {
    /// A text (or binary) frame arrived from the client. Any frame proves the peer alive, and any
    /// valid one but `subscribe`/`unsubscribe` ends the connection's resume window (filters may be
    /// set first, so that the replay honours them).
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
        self.rearm_if_earlier(idx);
        if frame.len() > self.cfg.max_frame_bytes {
            let err =
                PeerError::FrameTooLarge { size: frame.len(), limit: self.cfg.max_frame_bytes };
            let limit = LimitKind::FrameSize;
            return Err(self.peer_error(now, idx, err, Some(limit), AuditKind::OversizedFrame));
        }
        let max_positions = 2 + self.cfg.max_rooms_per_connection as usize;
        let parsed = match parse_client_frame(frame, self.cfg.max_client_id_bytes, max_positions) {
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
            let rate = Rate::per_minute(self.cfg.control_frames_per_minute, self.cfg.control_burst);
            (&mut c.control, rate, LimitKind::ControlRate)
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
        if let ClientFrame::Resume { positions } = &parsed {
            if c.resumed {
                return Err(self.peer_error(
                    now,
                    idx,
                    PeerError::AlreadyResumed,
                    None,
                    AuditKind::MalformedFrame,
                ));
            }
            c.resumed = true;
            let _still_open = self.release(now, idx, Some(positions));
            return Ok(());
        }
        // Filters may be set while held (so that the replay already honours them); any other
        // frame starts live delivery.
        let filter =
            matches!(parsed, ClientFrame::Subscribe { .. } | ClientFrame::Unsubscribe { .. });
        if c.held && !filter && !self.release(now, idx, None) {
            // Its backlog was lost: it was closed (SlowConsumer) and the frame goes with it.
            return Ok(());
        }
        let c = self.conns.get_mut(idx);
        match parsed {
            ClientFrame::Subscribe { thread } => {
                let max = self.cfg.max_thread_subscriptions;
                let threads = &mut c.threads.get_or_insert_with(Box::default).0;
                if !threads.iter().any(|t| t.as_str() == thread) {
                    if threads.len() >= max as usize {
                        let err = PeerError::TooManySubscriptions { limit: max };
                        let limit = LimitKind::ThreadSubscriptions;
                        return Err(self.peer_error(
                            now,
                            idx,
                            err,
                            Some(limit),
                            AuditKind::LimitHit(limit),
                        ));
                    }
                    threads.push(ThreadId::from(&*thread));
                }
            }
            ClientFrame::Unsubscribe { thread: None } => c.threads = None,
            ClientFrame::Unsubscribe { thread: Some(thread) } => {
                if let Some(threads) = &mut c.threads {
                    threads.0.retain(|t| t.as_str() != thread);
                }
            }
            ClientFrame::Message { thread, data } => {
                let (tier, user) = (c.tier, c.user);
                let owner = self.users.get(user);
                let from = Origin { tenant: owner.tenant.clone(), user: owner.user.clone(), conn };
                let clock = self.flow.clock;
                self.flow.tier(tier).inbound.add(clock, 1);
                self.users.get_mut(user).meters.inbound.add(clock, 1);
                let thread = thread.map(|t| ThreadId::from(&*t));
                self.out.inbound(Inbound { from, thread, data });
            }
            ClientFrame::Ping => {
                let writer = &mut self.flow.writer;
                let pong = self.pong.get_or_insert_with(|| writer.pong()).clone();
                self.control_or_close(now, idx, &pong);
            }
            ClientFrame::Resume { .. } => unreachable!("handled above"),
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
        let (tenant, user) = self.owner(idx);
        self.out.stats.protocol_errors += 1;
        match limit {
            Some(limit) => self.out.limit(limit, audit, Some(id), &tenant, &user),
            None => self.out.audit(audit, Some(id), Some(&tenant), Some(&user)),
        }
        let frame = self.flow.writer.error(&err);
        self.control_or_close(now, idx, &frame);
        if !self.conns.contains(idx) {
            return ReceiveError::Peer(err);
        }
        let allowance = Rate::every(self.cfg.violation_refill, self.cfg.max_violations);
        if !self.conns.get_mut(idx).violations.try_take(now, allowance) {
            self.out.audit(AuditKind::ViolationClose, Some(id), Some(&tenant), Some(&user));
            self.close_conn(now, idx, ClosedBy::Hub(CloseReason::ProtocolViolation));
        }
        ReceiveError::Peer(err)
    }

    /// Ends a connection's hold and, for a `resume`, replays what the client missed.
    ///
    /// For each of the connection's streams (its user's, its tenant's, its rooms'), live delivery
    /// covers what came after `base` (the position when the connection attached to the stream)
    /// unless the connection was held, in which case nothing went out live yet. So the replay is
    /// `(client's seq, base]` for a live connection and `(client's seq, now]` for a held one, and
    /// without a `resume` a held connection gets `(base, now]`. If a held connection's own backlog
    /// is no longer buffered, messages would be lost: it is closed with `SlowConsumer` instead.
    /// Returns whether the connection is still open.
    #[must_use]
    pub(crate) fn release(
        &mut self,
        now: Instant,
        idx: u32,
        positions: Option<&[(Cow<'_, str>, StreamPos)]>,
    ) -> bool {
        let c = self.conns.get_mut(idx);
        let was_held = std::mem::replace(&mut c.held, false);
        let uidx = c.user;
        let tenant_id = self.users.get(uidx).tenant.clone();
        let bases = [(StreamName::User, c.user_base), (StreamName::Tenant, c.tenant_base)];
        let rooms: Vec<(StreamName, u64)> =
            c.rooms.iter().map(|m| (StreamName::Room(m.room.clone()), m.base)).collect();
        let mut replay =
            Replay { idx, was_held, positions, reports: Vec::new(), replayed: 0, lost: false };
        for (name, base) in bases.into_iter().chain(rooms) {
            let tenant = self.tenants.get_mut(&tenant_id).expect("connection's tenant exists");
            let stream = match &name {
                StreamName::User => &mut self.users.get_mut(uidx).stream,
                StreamName::Tenant => &mut tenant.stream,
                StreamName::Room(room) => {
                    &mut tenant.rooms.get_mut(room).expect("member's room").stream
                }
            };
            // Apply the age bound first, so nothing older than `max_age` is ever replayed.
            self.buffers.trim(stream, now, &self.cfg);
            replay.stream(&mut self.flow, &mut self.out, &mut self.conns, &name, stream, base);
        }
        let Replay { reports, replayed, lost, .. } = replay;
        self.out.stats.replayed += u64::from(replayed);
        if lost {
            self.close_conn(now, idx, ClosedBy::Hub(CloseReason::SlowConsumer));
            return false;
        }
        let Some(positions) = positions else { return true };
        let mut reports = reports;
        let mut foreign = false;
        for (name, _) in positions {
            if !reports.iter().any(|(n, _)| n == name) {
                foreign = true;
                let report = StreamReport {
                    recovered: false,
                    reason: Some("unknown_stream"),
                    epoch: 0,
                    seq: 0,
                    available_from: 0,
                    replayed: 0,
                };
                reports.push((name.to_string(), report));
            }
        }
        if foreign {
            let (id, (t, u)) = (self.conns.id_of(idx), self.owner(idx));
            self.out.audit(AuditKind::ForeignStream, Some(id), Some(&t), Some(&u));
        }
        let recovered = reports.iter().all(|(_, r)| r.recovered);
        if recovered {
            self.out.stats.resumes_recovered += 1;
        } else {
            self.out.stats.resumes_unrecovered += 1;
        }
        let frame = self.flow.writer.resumed(recovered, &reports);
        self.flow.deliver(&mut self.out, &mut self.conns, idx, &frame);
        true
    }
}

/// The state of one release across the connection's streams.
struct Replay<'p> {
    idx: u32,
    was_held: bool,
    positions: Option<&'p [(Cow<'p, str>, StreamPos)]>,
    /// Only for a `resume`: one report per stream the client named that the connection has.
    reports: Vec<(String, StreamReport)>,
    replayed: u32,
    lost: bool,
}

impl Replay<'_> {
    fn stream(
        &mut self,
        flow: &mut Flow,
        out: &mut Outbox,
        conns: &mut Connections,
        name: &StreamName,
        stream: &Stream,
        base: u64,
    ) {
        let current = stream.position();
        let upto = if self.was_held { current.seq } else { base };
        let wire = name.to_string();
        let requested =
            self.positions.and_then(|p| p.iter().find(|(n, _)| *n == wire)).map(|(_, pos)| *pos);
        let Some(pos) = requested else {
            if self.was_held {
                match self.send(flow, out, conns, stream, current.epoch, base, upto) {
                    Ok(n) => self.replayed += n,
                    Err(_) => self.lost = true,
                }
            }
            return;
        };
        // A client already past `upto` got the rest live on this connection.
        let ahead = pos.epoch == current.epoch && pos.seq >= upto && pos.seq <= current.seq;
        let outcome = if ahead {
            Ok(0)
        } else {
            self.send(flow, out, conns, stream, pos.epoch, pos.seq, upto)
        };
        let report = |recovered, reason: Option<Unrecoverable>, replayed| StreamReport {
            recovered,
            reason: reason.map(Unrecoverable::as_str),
            epoch: current.epoch,
            seq: current.seq,
            available_from: stream.available_from(),
            replayed,
        };
        match outcome {
            Ok(n) => {
                self.replayed += n;
                self.reports.push((wire, report(true, None, n)));
            }
            Err(why) => {
                self.reports.push((wire, report(false, Some(why), 0)));
                // The client refetches this stream's state; what was held back still follows.
                if self.was_held {
                    match self.send(flow, out, conns, stream, current.epoch, base, upto) {
                        Ok(n) => self.replayed += n,
                        Err(_) => self.lost = true,
                    }
                }
            }
        }
    }

    /// Delivers the buffered messages in `(after, upto]` that this connection may see.
    #[allow(clippy::too_many_arguments)]
    fn send(
        &self,
        flow: &mut Flow,
        out: &mut Outbox,
        conns: &mut Connections,
        stream: &Stream,
        epoch: u64,
        after: u64,
        upto: u64,
    ) -> Result<u32, Unrecoverable> {
        let id = conns.id_of(self.idx);
        let mut n = 0;
        for entry in stream.range(epoch, after, upto)? {
            if scope_admits(conns.get(self.idx), id, &entry.scope) {
                flow.deliver(out, conns, self.idx, &entry.frame);
                n += 1;
            }
        }
        Ok(n)
    }
}
