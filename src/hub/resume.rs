//! Resume: ending a connection's hold and replaying what the client missed, per stream, from the
//! recovery buffers, answered by one `resumed` frame.

use std::borrow::Cow;
use std::time::Instant;

use crate::connection::{Connections, Membership};
use crate::flow::{Flow, notice_len, resumed_bound};
use crate::hub::Hub;
use crate::ids::{StreamName, StreamPos};
use crate::kinds::{AuditKind, CloseReason, ClosedBy};
use crate::outbox::Outbox;
use crate::protocol::StreamReport;
use crate::routing::visible_to;
use crate::stream::{Buffered, Stream, Unrecoverable};

impl Hub {
    /// Ends a connection's hold and, for a `resume`, replays what the client missed.
    ///
    /// For each of the connection's streams (its user's, its tenant's, its rooms'), live delivery
    /// covers what came after `base` (the position when the connection attached to the stream)
    /// unless the connection was held, in which case nothing went out live yet. So the replay is
    /// `(client's seq, base]` for a live connection and `(client's seq, now]` for a held one, and
    /// without a `resume` a held connection gets `(base, now]`. If a held connection's own backlog
    /// is no longer buffered, messages would be lost: it is closed with `SlowConsumer` instead.
    ///
    /// A replay never takes the connection past `max_unwritten_bytes` (issue 10 item 3): it has
    /// what is left under the limit after what is unwritten, a pending `skipped` notice and the
    /// largest `resumed` frame the answer could need. Streams go in order; one whose replay does
    /// not fit in what is left is not replayed at all (`recovered: false`, `too_large`), and a
    /// held backlog that does not fit closes the connection with `SlowConsumer` like a lost one.
    /// Returns whether the connection is still open.
    #[must_use]
    pub(crate) fn release(
        &mut self,
        now: Instant,
        idx: u32,
        positions: Option<&[(Cow<'_, str>, StreamPos)]>,
    ) -> bool {
        let c = self.conns.get_mut(idx);
        let was_held = c.end_hold();
        let uidx = c.user();
        let tenant_id = self.users.get(uidx).tenant.clone();
        if positions.is_some() && self.node.is_none() {
            // The one resume: what was sent in rooms left before it is no longer needed (in
            // cluster mode it is: a re-join compares it with a log that may have lost its tail).
            c.forget_left_rooms();
        }
        let ((user_base, user_sent), (tenant_base, tenant_sent)) =
            (c.user_stream(), c.tenant_stream());
        let bases = [
            (StreamName::User, user_base, user_sent),
            (StreamName::Tenant, tenant_base, tenant_sent),
        ];
        // A room not announced yet (cluster mode: its stream is still being set up) has nothing
        // to replay; its position comes with its `joined` frame.
        // What it was sent of each room is on its member entry there.
        let tenant = self.tenants.get(&tenant_id).expect("connection's tenant exists");
        let sent = |m: &Membership| {
            tenant.rooms.get(m.room()).map_or(0, |r| r.members[m.pos() as usize].sent)
        };
        let rooms: Vec<(StreamName, u64, u64)> = c
            .memberships()
            .iter()
            .filter(|m| m.is_announced())
            .map(|m| (StreamName::Room(m.room().clone()), m.base(), sent(m)))
            .collect();
        let pending_rooms: Vec<String> = c
            .memberships()
            .iter()
            .filter(|m| !m.is_announced())
            .map(|m| StreamName::Room(m.room().clone()).to_string())
            .collect();
        let reserved = c.unwritten()
            + notice_len(c.skipped())
            + positions.map_or(0, |p| resumed_bound(p.iter().map(|(n, _)| n.as_ref())));
        let budget = self.cfg.max_unwritten_bytes.saturating_sub(reserved);
        let extra = std::mem::take(&mut self.replay_extra);
        let mut replay = Replay {
            idx,
            was_held,
            positions,
            extra: &extra,
            reports: Vec::new(),
            replayed: 0,
            top: 0,
            lost: false,
            budget,
        };
        for (name, base, sent) in bases.into_iter().chain(rooms) {
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
            let (flow, out, conns) = (&mut self.flow, &mut self.out, &mut self.conns);
            replay.top = 0;
            replay.stream(flow, out, conns, &name, stream, (base, sent));
            // A room's mark is on the member entry (the connection marked the user's and the
            // tenant's streams itself).
            if let StreamName::Room(room) = &name
                && replay.top > 0
                && let Some(m) = tenant.member_mut(&self.conns, idx, room)
            {
                m.sent = m.sent.max(replay.top);
            }
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
                let pending = pending_rooms.iter().any(|r| r == name);
                foreign |= !pending;
                let report = StreamReport {
                    recovered: false,
                    reason: Some(if pending { "not_ready" } else { "unknown_stream" }),
                    epoch: 0,
                    seq: 0,
                    available_from: 0,
                    replayed: 0,
                };
                reports.push((name.to_string(), report));
            }
        }
        if foreign {
            self.audit_conn(AuditKind::ForeignStream, idx);
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
    /// Cluster mode: entries fetched from the log, per stream, for what the buffers lack.
    extra: &'p [(StreamName, Vec<Buffered>)],
    /// Only for a `resume`: one report per stream the client named that the connection has.
    reports: Vec<(String, StreamReport)>,
    replayed: u32,
    /// The highest seq replayed of the stream in progress (0: none yet).
    top: u64,
    lost: bool,
    /// Bytes the replay may still hand the connection under `max_unwritten_bytes`.
    budget: u64,
}

impl Replay<'_> {
    fn stream(
        &mut self,
        flow: &mut Flow,
        out: &mut Outbox,
        conns: &mut Connections,
        name: &StreamName,
        stream: &Stream,
        (base, sent): (u64, u64),
    ) {
        let current = stream.position();
        let upto = if self.was_held { current.seq } else { base };
        let wire = name.to_string();
        let requested =
            self.positions.and_then(|p| p.iter().find(|(n, _)| *n == wire)).map(|(_, pos)| *pos);
        let Some(pos) = requested else {
            if self.was_held {
                match self.send(flow, out, conns, name, stream, current.epoch, base, upto) {
                    Ok(n) => self.replayed += n,
                    Err(_) => self.lost = true,
                }
            }
            return;
        };
        // A client already past `upto` got the rest live on this connection.
        let ahead = pos.epoch == current.epoch && pos.seq >= upto && pos.seq <= current.seq;
        // The connection was sent later seqs of this stream than the client's position: what the
        // client misses before them cannot be delivered in order (issue 10 item 5).
        let live_ahead = pos.epoch == current.epoch && pos.seq < upto && pos.seq < sent;
        let outcome = if ahead {
            Ok(0)
        } else if live_ahead {
            Err(Unrecoverable::LiveAhead)
        } else {
            self.send(flow, out, conns, name, stream, pos.epoch, pos.seq, upto)
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
                    match self.send(flow, out, conns, name, stream, current.epoch, base, upto) {
                        Ok(n) => self.replayed += n,
                        Err(_) => self.lost = true,
                    }
                }
            }
        }
    }

    /// Delivers the buffered messages in `(after, upto]` that this connection may see, if they
    /// all fit in the budget (summed first: all or nothing).
    #[allow(clippy::too_many_arguments)]
    fn send(
        &mut self,
        flow: &mut Flow,
        out: &mut Outbox,
        conns: &mut Connections,
        name: &StreamName,
        stream: &Stream,
        epoch: u64,
        after: u64,
        upto: u64,
    ) -> Result<u32, Unrecoverable> {
        let extra = self.extra.iter().find(|(n, _)| n == name).map(|(_, e)| e.as_slice());
        match extra {
            Some(extra) if !extra.is_empty() => {
                let entries = stream.range_with(extra, epoch, after, upto)?;
                self.deliver(flow, out, conns, name, entries.into_iter())
            }
            _ => self.deliver(flow, out, conns, name, stream.range(epoch, after, upto)?),
        }
    }

    /// Delivers the entries this connection may see, if they all fit in the budget.
    fn deliver<'e>(
        &mut self,
        flow: &mut Flow,
        out: &mut Outbox,
        conns: &mut Connections,
        name: &StreamName,
        entries: impl Iterator<Item = &'e Buffered> + Clone,
    ) -> Result<u32, Unrecoverable> {
        let id = conns.id_of(self.idx);
        let conn = conns.get(self.idx);
        let bytes: u64 = entries
            .clone()
            .filter(|entry| visible_to(conn, id, &entry.visible))
            .map(|entry| entry.frame.len() as u64)
            .sum();
        if bytes > self.budget {
            return Err(Unrecoverable::TooLarge);
        }
        self.budget -= bytes;
        let mut n = 0;
        for entry in entries {
            if visible_to(conns.get(self.idx), id, &entry.visible) {
                flow.deliver(out, conns, self.idx, &entry.frame);
                conns.get_mut(self.idx).mark_replayed(name);
                self.top = self.top.max(entry.seq);
                n += 1;
            }
        }
        Ok(n)
    }
}
