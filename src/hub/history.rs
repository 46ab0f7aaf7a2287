//! History: a client asks for the last messages of a stream it may see (or a page of them), and
//! gets them in one `history` frame, filtered exactly as live delivery and replay are.
//!
//! A single node serves it from the stream's recovery buffer. In cluster mode the buffer is a
//! cache in front of the log: when it does not reach down to the page's window (the last
//! `fetch_limit` seqs before the page's end, or the `fetch_limit` after `after`), the window is
//! fetched from the log, merged under the buffer (deduplicated by seq) and answered when the
//! fetch returns. One request per connection waits for the log at a time.

use std::sync::Arc;
use std::time::Instant;

use hashbrown::HashMap;

use crate::client_frame::{History, Page};
use crate::cluster::{BusFailure, BusOp, BusReply, Pending, StreamKey};
use crate::connection::Lookup;
use crate::error::PeerError;
use crate::flow::notice_len;
use crate::frame::Frame;
use crate::hub::Hub;
use crate::hub::publish::stream_of;
use crate::ids::{ConnId, RunId, StreamName, ThreadId};
use crate::protocol::HISTORY_OVERHEAD;
use crate::routing::visible_to;
use crate::stream::{Buffered, Scope, TrimKey};

/// A `history` request, owned (it may wait for the log).
#[derive(Debug, Clone)]
pub(crate) struct Request {
    stream: Arc<str>,
    limit: u32,
    page: Page,
    epoch: Option<u64>,
    thread: Option<ThreadId>,
    run: Option<RunId>,
    id: Option<Arc<str>>,
}

impl From<&History<'_>> for Request {
    fn from(h: &History<'_>) -> Self {
        Request {
            stream: Arc::from(&*h.stream),
            limit: h.limit,
            page: h.page,
            epoch: h.epoch,
            thread: h.thread.as_deref().map(ThreadId::from),
            run: h.run.as_deref().map(RunId::from),
            id: h.id.as_deref().map(Arc::from),
        }
    }
}

/// Cluster mode: history requests waiting for the log, by connection (at most one each).
pub(crate) type Histories = HashMap<ConnId, Request>;

/// Why an answer holds fewer messages than asked, when it is not just the end of the stream.
const EPOCH_MISMATCH: &str = "epoch_mismatch";
const LOG_UNAVAILABLE: &str = "log_unavailable";
const TOO_LARGE: &str = "too_large";

impl Hub {
    /// A client's `history` request.
    ///
    /// # Errors
    ///
    /// [`PeerError::UnknownStream`] for a stream the connection does not have (the caller
    /// audits it), [`PeerError::HistoryBusy`] while its previous request waits for the log.
    pub(crate) fn history(
        &mut self,
        now: Instant,
        idx: u32,
        request: &History<'_>,
    ) -> Result<(), PeerError> {
        let (holder, name, key) =
            self.visible_stream(idx, &request.stream).ok_or(PeerError::UnknownStream)?;
        let request = Request::from(request);
        let mut reason = None;
        if let Some(fetch_limit) = self.node.as_deref().map(|n| n.cfg.fetch_limit) {
            let id = self.conns.id_of(idx);
            if self.histories.contains_key(&id) {
                return Err(PeerError::HistoryBusy);
            }
            let stream = stream_of(&mut self.users, &mut self.tenants, &holder).expect("held");
            let (pos, available) = (stream.position(), stream.available_from());
            let lower = window_start(request.page, pos.seq, u64::from(fetch_limit));
            let same_epoch = request.epoch.is_none_or(|e| e == pos.epoch);
            if available > lower + 1 && lower < pos.seq && pos.epoch != 0 && same_epoch {
                let pending = Pending::History { conn: id, stream: key.clone() };
                let limit = fetch_limit;
                let fetch = |op| BusOp::Fetch { op, stream: key, after: lower, limit };
                match self.issue(now, pending, fetch) {
                    Ok(_) => {
                        self.histories.insert(id, request);
                        return Ok(());
                    }
                    Err(_) => reason = Some(LOG_UNAVAILABLE),
                }
            }
        }
        self.answer_history(now, idx, &request, &holder, &name, &[], reason);
        Ok(())
    }

    /// Cluster mode: a history fetch came back (or failed): answer from the log and the buffer,
    /// or from the buffer alone (`log_unavailable`). Nothing if the connection has gone.
    pub(crate) fn history_fetched(
        &mut self,
        now: Instant,
        id: ConnId,
        key: &StreamKey,
        reply: Result<BusReply, BusFailure>,
    ) {
        let Some(request) = self.histories.remove(&id) else { return };
        let Lookup::Live(idx) = self.conns.lookup(id, now, self.cfg.tombstone_ttl) else { return };
        // It may have left the room meanwhile: then it is told so.
        let Some((holder, name, _)) = self.visible_stream(idx, &request.stream) else {
            let frame = self.flow.writer.error(&PeerError::UnknownStream, request.id.as_deref());
            self.control_or_close(now, idx, &frame);
            return;
        };
        let local_epoch = stream_of(&mut self.users, &mut self.tenants, &holder)
            .map_or(0, |s| s.position().epoch);
        let mut extra = Vec::new();
        let mut reason = Some(LOG_UNAVAILABLE);
        if let Ok(BusReply::Fetched { top, entries }) = reply {
            // A driver fault (an entry of another stream) leaves the buffer alone answering.
            let fetched = self.fetched_entries(now, id, key, top.epoch, entries);
            if let (Some(fetched), true) = (fetched, top.epoch == local_epoch) {
                (extra, reason) = (fetched, None);
            }
        }
        self.answer_history(now, idx, &request, &holder, &name, &extra, reason);
    }

    /// The stream a connection may read by its wire name: its user's, its tenant's, or a room it
    /// is in (announced).
    fn visible_stream(&self, idx: u32, name: &str) -> Option<(TrimKey, StreamName, StreamKey)> {
        let c = self.conns.get(idx);
        let uidx = c.user();
        let user = self.users.get(uidx);
        let tenant = user.tenant.clone();
        match name {
            "u" => Some((
                TrimKey::User(uidx),
                StreamName::User,
                StreamKey::user(tenant, user.user.clone()),
            )),
            "t" => Some((
                TrimKey::Tenant(tenant.clone()),
                StreamName::Tenant,
                StreamKey::tenant(tenant),
            )),
            _ => {
                let room = name.strip_prefix("r:")?;
                let m = c.memberships().iter().find(|m| m.room().as_str() == room)?;
                if !m.is_announced() {
                    return None;
                }
                let room = m.room().clone();
                Some((
                    TrimKey::Room(tenant.clone(), room.clone()),
                    StreamName::Room(room.clone()),
                    StreamKey::room(tenant, room),
                ))
            }
        }
    }

    /// Picks the page from `extra` (fetched from the log, ascending) and the stream's buffer,
    /// filtered as live delivery is, within what the connection may still be handed, and sends
    /// it.
    #[allow(clippy::too_many_arguments)]
    fn answer_history(
        &mut self,
        now: Instant,
        idx: u32,
        request: &Request,
        holder: &TrimKey,
        name: &StreamName,
        extra: &[Buffered],
        reason: Option<&'static str>,
    ) {
        let Some(stream) = stream_of(&mut self.users, &mut self.tenants, holder) else { return };
        // Nothing older than `max_age` is ever handed out, as in a replay.
        self.buffers.trim(stream, now, &self.cfg);
        let stream = stream_of(&mut self.users, &mut self.tenants, holder).expect("just found");
        let pos = stream.position();
        let buffered_from = stream.available_from();
        let mismatch = request.epoch.is_some_and(|e| e != pos.epoch);
        let older = extra.iter().filter(|e| e.seq < buffered_from);
        let candidates: Vec<&Buffered> = if mismatch {
            Vec::new()
        } else {
            older
                .chain(
                    stream
                        .range(pos.epoch, buffered_from.saturating_sub(1), pos.seq)
                        .into_iter()
                        .flatten(),
                )
                .collect()
        };
        let available_from = candidates.first().map_or(buffered_from, |b| b.seq.min(buffered_from));
        let id = self.conns.id_of(idx);
        let conn = self.conns.get(idx);
        let admitted = |b: &&Buffered| {
            visible_to(conn, id, &b.visible)
                && about(&b.visible.scope, request.thread.as_ref(), request.run.as_ref())
                && match request.page {
                    Page::Last => true,
                    Page::Before(seq) => b.seq < seq,
                    Page::After(seq) => b.seq > seq,
                }
        };
        let id_len = request.id.as_deref().map_or(0, |i| 6 * i.len() as u64);
        let name_len = 6 * name.to_string().len() as u64;
        let mut budget = self
            .cfg
            .max_unwritten_bytes
            .saturating_sub(conn.unwritten() + notice_len(conn.skipped()))
            .saturating_sub(HISTORY_OVERHEAD + id_len + name_len);
        let mut page: Vec<&Frame> = Vec::new();
        let mut more = false;
        let ordered: Box<dyn Iterator<Item = &&Buffered>> = match request.page {
            Page::After(_) => Box::new(candidates.iter()),
            Page::Last | Page::Before(_) => Box::new(candidates.iter().rev()),
        };
        for b in ordered.filter(|b| admitted(b)) {
            let cost = b.frame.len() as u64 + 1;
            if page.len() as u32 >= request.limit || cost > budget {
                more = true;
                break;
            }
            budget -= cost;
            page.push(&b.frame);
        }
        if !matches!(request.page, Page::After(_)) {
            page.reverse();
        }
        let reason = if mismatch {
            Some(EPOCH_MISMATCH)
        } else if more && page.is_empty() {
            Some(TOO_LARGE)
        } else {
            reason
        };
        let frame = self.flow.writer.history(
            request.id.as_deref(),
            name,
            pos,
            available_from,
            more,
            reason,
            &page,
        );
        self.out.stats.history_requests += 1;
        self.control_or_close(now, idx, &frame);
    }
}

/// The first seq before a page's window (cluster mode fetches what follows it): `after` itself,
/// or `fetch_limit` seqs before the page's end.
fn window_start(page: Page, top: u64, fetch_limit: u64) -> u64 {
    match page {
        Page::After(after) => after,
        Page::Last => top.saturating_sub(fetch_limit),
        Page::Before(before) => before.saturating_sub(1).min(top).saturating_sub(fetch_limit),
    }
}

/// Whether a message is about the thread and the run a request names (all are, without either).
fn about(scope: &Scope, thread: Option<&ThreadId>, run: Option<&RunId>) -> bool {
    if thread.is_none() && run.is_none() {
        return true;
    }
    let Scope::Subject { thread: t, run: r } = scope else { return false };
    thread.is_none_or(|want| t.as_ref() == Some(want))
        && run.is_none_or(|want| r.as_ref() == Some(want))
}
