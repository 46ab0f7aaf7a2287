//! Cluster mode's resume: a stream the local recovery buffer does not cover is fetched from the
//! log after the client's position, then the usual release replays the fetched entries followed
//! by the buffer (deduplicated by seq) and answers `resumed`. The buffer is a cache in front of
//! the log.

use std::borrow::Cow;
use std::time::Instant;

use hashbrown::HashMap;

use crate::cluster::{BusFailure, BusOp, BusReply, Decoded, Pending, StreamKey};
use crate::hub::Hub;
use crate::hub::publish::stream_of;
use crate::ids::{ConnId, StreamName, StreamPos};
use crate::kinds::AuditKind;
use crate::stream::Buffered;

/// A resume waiting for the log.
#[derive(Debug)]
pub(crate) struct Resuming {
    /// The client's positions, as it sent them.
    positions: Vec<(String, StreamPos)>,
    /// Fetches not issued yet (the bus is down): `(stream, after)`.
    unissued: Vec<(StreamKey, u64)>,
    /// Fetches in flight.
    waiting: u32,
    /// What the fetches brought, per stream, ascending and contiguous.
    pub(crate) extra: Vec<(StreamName, Vec<Buffered>)>,
    /// While the bus is down: when to give up waiting for it.
    deadline: Option<Instant>,
}

/// Resumes waiting for the log, by connection.
pub(crate) type Resumes = HashMap<ConnId, Resuming>;

impl Hub {
    /// A `resume` in cluster mode. Returns whether the connection is still open.
    pub(crate) fn resume_clustered(
        &mut self,
        now: Instant,
        idx: u32,
        positions: &[(Cow<'_, str>, StreamPos)],
    ) -> bool {
        let id = self.conns.id_of(idx);
        if self.conns.get(idx).memberships().iter().any(|m| !m.is_announced()) {
            // A room of the connection is still being set up: its true position decides what to
            // fetch, so the resume waits for it (`announce_room` picks it up).
            let owned = positions.iter().map(|(n, p)| (n.to_string(), *p)).collect();
            self.early_resumes.insert(id, owned);
            return true;
        }
        let mut owned: Vec<(String, StreamPos)> = Vec::with_capacity(positions.len());
        let mut needs = Vec::new();
        for (name, pos) in positions {
            let mut pos = *pos;
            if let Some((key, local, available_from)) = self.stream_state(idx, name) {
                // `(0, 0)`: the client saw nothing of a stream that had no epoch yet.
                if pos.epoch == 0 && pos.seq == 0 {
                    pos.epoch = local.epoch;
                }
                let covered = pos.epoch == local.epoch
                    && (pos.seq >= local.seq || available_from <= pos.seq + 1);
                if !covered && pos.epoch == local.epoch && local.epoch != 0 {
                    needs.push((key, pos.seq));
                }
            }
            owned.push((name.to_string(), pos));
        }
        if needs.is_empty() {
            let positions: Vec<(Cow<'_, str>, StreamPos)> =
                owned.iter().map(|(n, p)| (Cow::Borrowed(n.as_str()), *p)).collect();
            return self.release(now, idx, Some(&positions));
        }
        let node = self.node.as_deref().expect("clustered");
        let deadline = (!node.is_up()).then(|| now.checked_add(node.cfg.resume_wait)).flatten();
        // The fetch's answer ends the hold, not the resume window.
        self.conns.get_mut(idx).set_resuming(true);
        self.resumes.insert(
            id,
            Resuming { positions: owned, unissued: needs, waiting: 0, extra: Vec::new(), deadline },
        );
        self.issue_resume_fetches(now, id);
        self.finish_resume_if_done(now, id)
    }

    /// The key, local position and first buffered seq of one of the connection's streams, by
    /// wire name.
    fn stream_state(&mut self, idx: u32, name: &str) -> Option<(StreamKey, StreamPos, u64)> {
        let c = self.conns.get(idx);
        let uidx = c.user();
        let user = self.users.get(uidx);
        let tenant = user.tenant.clone();
        let (key, holder) = match name {
            "u" => (
                StreamKey::user(tenant.clone(), user.user.clone()),
                crate::stream::TrimKey::User(uidx),
            ),
            "t" => (StreamKey::tenant(tenant.clone()), crate::stream::TrimKey::Tenant(tenant)),
            _ => {
                let room = name.strip_prefix("r:")?;
                let m = c.memberships().iter().find(|m| m.room().as_str() == room)?;
                let room = m.room().clone();
                (
                    StreamKey::room(tenant.clone(), room.clone()),
                    crate::stream::TrimKey::Room(tenant, room),
                )
            }
        };
        let stream = stream_of(&mut self.users, &mut self.tenants, &holder)?;
        Some((key, stream.position(), stream.available_from()))
    }

    fn issue_resume_fetches(&mut self, now: Instant, id: ConnId) {
        let Some(node) = self.node.as_deref() else { return };
        if !node.is_up() {
            return;
        }
        let limit = node.cfg.fetch_limit;
        let Some(r) = self.resumes.get_mut(&id) else { return };
        let unissued = std::mem::take(&mut r.unissued);
        for (key, after) in unissued {
            let stream = key.clone();
            let pending = Pending::Resume { conn: id, stream: key };
            // Not fetched: that stream's resume reports what the buffer can do.
            if self.issue(now, pending, |op| BusOp::Fetch { op, stream, after, limit }).is_ok() {
                self.resumes.get_mut(&id).expect("present").waiting += 1;
            }
        }
        if let Some(r) = self.resumes.get_mut(&id) {
            r.deadline = None;
        }
    }

    /// A resume fetch came back (or failed).
    pub(crate) fn resume_fetched(
        &mut self,
        now: Instant,
        id: ConnId,
        key: &StreamKey,
        reply: Result<BusReply, BusFailure>,
    ) {
        let Some(r) = self.resumes.get_mut(&id) else { return };
        r.waiting = r.waiting.saturating_sub(1);
        if let Ok(BusReply::Fetched { top, entries }) = reply {
            let kept = self.fetched_entries(now, id, key, top.epoch, entries).unwrap_or_default();
            // Entries of another epoch than the local stream's cannot be merged.
            let local_epoch = self
                .holder(key)
                .and_then(|h| stream_of(&mut self.users, &mut self.tenants, &h).map(|s| s.epoch()));
            if local_epoch == Some(top.epoch) && !kept.is_empty() {
                let r = self.resumes.get_mut(&id).expect("present");
                r.extra.push((key.name(), kept));
            }
        }
        let _ = self.finish_resume_if_done(now, id);
    }

    /// Entries fetched from the log for connection `id`, checked against their stream and
    /// rendered as a single node would have sent them (epoch `epoch`); `None`, counted and
    /// audited, if any names another stream (none of that answer is trusted).
    pub(crate) fn fetched_entries(
        &mut self,
        now: Instant,
        id: ConnId,
        key: &StreamKey,
        epoch: u64,
        entries: Vec<crate::cluster::BusEntry>,
    ) -> Option<Vec<Buffered>> {
        let me = self.node.as_deref().expect("clustered").cfg.node.clone();
        let mut kept = Vec::with_capacity(entries.len());
        let mut text = String::new();
        for e in entries {
            let Some(decoded) = Decoded::parse(key, &e.payload) else {
                self.node().expect("clustered").counters.mismatches += 1;
                self.out.audit(AuditKind::BusMismatch, Some(id), Some(&key.tenant), None);
                return None;
            };
            let visible = super::cluster::visible_of(&decoded, &me);
            decoded.render(StreamPos { epoch, seq: e.seq }, &mut text);
            let frame = crate::frame::Frame::new(&text);
            kept.push(Buffered { seq: e.seq, at: now, frame, visible });
        }
        Some(kept)
    }

    /// Releases the connection once every fetch of its resume is answered. Returns whether it is
    /// still open.
    fn finish_resume_if_done(&mut self, now: Instant, id: ConnId) -> bool {
        let Some(r) = self.resumes.get(&id) else { return true };
        if r.waiting > 0 || (r.deadline.is_some() && !r.unissued.is_empty()) {
            return true;
        }
        let r = self.resumes.remove(&id).expect("present");
        let Ok(idx) = self.resolve(now, id) else { return false };
        self.conns.get_mut(idx).set_resuming(false);
        self.replay_extra = r.extra;
        let positions: Vec<(Cow<'_, str>, StreamPos)> =
            r.positions.iter().map(|(n, p)| (Cow::Borrowed(n.as_str()), *p)).collect();
        let open = self.release(now, idx, Some(&positions));
        self.replay_extra.clear();
        open
    }

    /// The bus is back: resumes that waited for it fetch now.
    pub(crate) fn resume_bus_back(&mut self, now: Instant) {
        let mut ids: Vec<ConnId> = self.resumes.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            self.issue_resume_fetches(now, id);
            let _ = self.finish_resume_if_done(now, id);
        }
    }

    /// Resumes that waited for the bus longer than `resume_wait` answer without the log.
    pub(crate) fn resume_deadlines(&mut self, now: Instant) {
        let mut due: Vec<ConnId> = self
            .resumes
            .iter()
            .filter(|(_, r)| r.deadline.is_some_and(|at| at <= now))
            .map(|(id, _)| *id)
            .collect();
        due.sort_unstable();
        for id in due {
            if let Some(r) = self.resumes.get_mut(&id) {
                r.unissued.clear();
                r.deadline = None;
            }
            let _ = self.finish_resume_if_done(now, id);
        }
    }

    /// The soonest resume deadline (the bus is down).
    pub(crate) fn resume_timeout(&self) -> Option<Instant> {
        self.resumes.values().filter_map(|r| r.deadline).min()
    }

    /// Whether the connection's resume is waiting for the log (its hold must not end on a timer).
    pub(crate) fn resuming(&self, id: ConnId) -> bool {
        self.resumes.contains_key(&id)
    }
}
