//! Cluster mode's presence in the hub: this node's sets on the bus (written per flush, refreshed
//! in one batch per period, rewritten after a failure), the view of the other nodes' users in
//! each scope this node has connections in (read, then kept by signals, expired when their node
//! goes silent), and the user-level changes that feed `crate::presence` (DESIGN §12). The
//! bookkeeping is `crate::cluster::presence`.

use std::time::Instant;

use crate::action::MetricEvent;
use crate::cluster::presence::{CHUNK, Outcome, Signal, scope_of, stream_of};
use crate::cluster::sweep::Step;
use crate::cluster::{BusFailure, BusOp, BusReply, Pending, PresenceEntry, StreamKey};
use crate::hub::Hub;
use crate::ids::UserId;
use crate::kinds::{AuditKind, LimitKind};
use crate::presence::{Diff, ScopeKey};

/// Scopes per refresh operation (one pipeline on the driver's side).
const REFRESH_BATCH: usize = 512;

impl Hub {
    /// Cluster mode: the scope's first connection here arrived. Opens the scope's view of the
    /// other nodes' users and reads it; returns whether the scope's snapshots are taken care of
    /// (they wait for the read, or the read could not be issued and they went out).
    pub(crate) fn presence_view_open(&mut self, now: Instant, key: &ScopeKey) -> bool {
        if self.node.is_none() || !self.remote.open(now, key) {
            return false;
        }
        self.presence_read(now, key);
        true
    }

    /// Cluster mode: the scope's last connection here left; the other nodes' users leave this
    /// node's picture (nobody here is shown it).
    pub(crate) fn presence_view_close(&mut self, now: Instant, key: &ScopeKey) {
        if self.node.is_none() {
            return;
        }
        let out = self.remote.close(key);
        self.presence_outcome(now, key, out);
    }

    /// Reads a scope's sets from the bus (one read in flight per scope).
    fn presence_read(&mut self, now: Instant, key: &ScopeKey) {
        if !self.remote.can_read(key) {
            return;
        }
        let Some(limit) = self.cfg.presence.as_ref().map(|p| p.max_remote_entries) else { return };
        let scope = stream_of(key);
        let pending = Pending::PresenceRead { scope: scope.clone() };
        match self.issue(now, pending, |op| BusOp::PresenceRead { op, scope, limit }) {
            Ok(op) => {
                self.remote.reading(key, op);
                self.node().expect("clustered").counters.presence_reads += 1;
            }
            Err(_) => {
                let cap = limit;
                if let Some(out) = self.remote.read_failed(now, key, None, cap) {
                    self.presence_outcome(now, key, out);
                }
            }
        }
    }

    /// Applies what the view's bookkeeping changed: users that more or fewer other nodes hold,
    /// the entries the cap left out, snapshots released, a read to make.
    fn presence_outcome(&mut self, now: Instant, key: &ScopeKey, out: Outcome) {
        let Some(cfg) = self.cfg.presence.as_ref() else { return };
        for (user, (by, meta)) in &out.changes {
            self.presence.remote_shift(now, key, user, *by, meta.as_ref(), cfg);
        }
        if out.limited > 0 {
            let kind = LimitKind::PresenceRemoteEntries;
            self.out.stats.limit_rejections.bump(kind);
            self.out.push_metric(MetricEvent::LimitRejected { limit: kind });
            self.out.audit(AuditKind::LimitHit(kind), None, Some(&key.0), None);
        }
        if out.mismatch {
            self.node().expect("clustered").counters.presence_mismatches += 1;
        }
        if out.release {
            // The first snapshots show everyone the read found: that is what was announced.
            self.presence.settle(key);
        }
        // A crossing already sent every member of the scope a snapshot.
        let crossed = self.presence_crossings(now).contains(key);
        if out.release && !crossed {
            for idx in self.scope_conns(key) {
                if self.conns.contains(idx) {
                    self.send_presence(now, idx, key);
                }
            }
        }
        if out.reread {
            self.presence_read(now, key);
        }
    }

    /// A presence signal arrived on a stream's channel.
    pub(crate) fn presence_signal(&mut self, now: Instant, stream: &StreamKey, payload: &str) {
        let node = self.node.as_deref_mut().expect("clustered");
        let (Some(signal), Some(key)) = (Signal::decode(payload), scope_of(stream)) else {
            node.counters.mismatches += 1;
            return;
        };
        let me = node.cfg.node.clone();
        if signal.node.as_ref() != me.as_str() {
            node.counters.presence_signals += 1;
        }
        let (Some(cap), true) =
            (self.cfg.presence.as_ref().map(|p| p.max_remote_entries), self.presence_for(&key.1))
        else {
            return;
        };
        let out = self.remote.signal(now, &key, signal, &me, cap);
        self.presence_outcome(now, &key, out);
    }

    /// Cluster mode's presence timers: other nodes' sets that expired (while the bus is up: a
    /// node that cannot hear the others keeps what it knew, and reads everything again when the
    /// bus is back), and the periodic refresh.
    pub(crate) fn presence_remote_tick(&mut self, now: Instant) {
        let Some(node) = self.node.as_deref_mut() else { return };
        if node.is_up() {
            let expired = self.remote.expire(now);
            let node = self.node.as_deref_mut().expect("clustered");
            node.counters.presence_expired += expired.len() as u64;
            for (key, out) in expired {
                self.presence_outcome(now, &key, out);
            }
        }
        if let Some(step) = self.remote.refresh_due(now)
            && self.node.as_deref().is_some_and(|n| n.is_up())
        {
            self.presence_refresh(now, Some(step));
        }
    }

    /// The deadline of presence as a whole (grace, flush, cluster mode's expiries and refresh).
    pub(crate) fn presence_timeout(&self) -> Option<Instant> {
        let up = self.node.as_deref().is_some_and(|n| n.is_up());
        [self.presence.poll_timeout(), self.remote.poll_timeout(up)].into_iter().flatten().min()
    }

    /// One step of the refresh (all of it: `None`): refreshes the sets this node holds on the
    /// bus in the step's scopes, writes again those that must be, and reads the views no read
    /// has confirmed.
    fn presence_refresh(&mut self, now: Instant, step: Option<Step>) {
        let node = self.node.as_deref().expect("clustered");
        let (me, ttl) = (node.cfg.node.clone(), node.cfg.presence_ttl);
        let (refresh, rewrite) = self.remote.refresh_lists(step);
        for batch in refresh.chunks(REFRESH_BATCH) {
            let scopes: Vec<(StreamKey, std::sync::Arc<str>)> = batch
                .iter()
                .map(|(key, digest)| {
                    (stream_of(key), Signal::new(&me, ttl, false, *digest, &[], &[]).encode())
                })
                .collect();
            let node = me.clone();
            let pending = Pending::PresenceRefresh;
            let issued =
                self.issue(now, pending, |op| BusOp::PresenceRefresh { op, node, ttl, scopes });
            if issued.is_err() {
                break;
            }
        }
        for key in rewrite {
            self.presence_rewrite(now, &key);
        }
        for key in self.remote.stale(step) {
            self.presence_read(now, &key);
        }
    }

    /// Writes this node's whole set in a scope again.
    fn presence_rewrite(&mut self, now: Instant, key: &ScopeKey) {
        self.node().expect("clustered").counters.presence_rewrites += 1;
        let users = self.presence.published(key);
        self.presence_write(now, key, true, users, Vec::new());
    }

    /// A flush's changes to this node's set in a scope, for the bus.
    pub(crate) fn presence_publish(&mut self, now: Instant, diff: Diff) {
        if self.node.is_none() {
            return;
        }
        let key = diff.scope;
        if self.remote.must_replace(&key) {
            let users = self.presence.published(&key);
            self.presence_write(now, &key, true, users, Vec::new());
        } else {
            self.presence_write(now, &key, false, diff.joins, diff.leaves);
        }
    }

    /// Issues the writes of a scope's set, at most [`CHUNK`] users each: a replacement is the
    /// first chunk replacing and the rest adding. A write that cannot be issued leaves the set
    /// to be written again whole.
    fn presence_write(
        &mut self,
        now: Instant,
        key: &ScopeKey,
        replace: bool,
        joins: Vec<PresenceEntry>,
        leaves: Vec<UserId>,
    ) {
        let node = self.node.as_deref().expect("clustered");
        let (me, ttl) = (node.cfg.node.clone(), node.cfg.presence_ttl);
        let scope = stream_of(key);
        let mut joins = joins.chunks(CHUNK).map(<[PresenceEntry]>::to_vec).collect::<Vec<_>>();
        let mut leaves = leaves.chunks(CHUNK).map(<[UserId]>::to_vec).collect::<Vec<_>>();
        if joins.is_empty() {
            joins.push(Vec::new());
        }
        let chunks = joins.len().max(leaves.len());
        leaves.resize(chunks, Vec::new());
        joins.resize(chunks, Vec::new());
        for (i, (joins, leaves)) in joins.into_iter().zip(leaves).enumerate() {
            let replace = replace && i == 0;
            let digest = self.remote.own_write(now, key, replace, &joins, &leaves);
            let signal = Signal::new(&me, ttl, replace, digest, &joins, &leaves).encode();
            let (scope, node) = (scope.clone(), me.clone());
            let pending = Pending::PresenceUpdate { scope: scope.clone() };
            let issued = self.issue(now, pending, |op| BusOp::PresenceUpdate {
                op,
                scope,
                node,
                replace,
                joins,
                leaves,
                ttl,
                signal,
            });
            if issued.is_err() {
                self.remote.rewrite(now, key);
                return;
            }
        }
    }

    /// A presence operation's reply.
    pub(crate) fn presence_settled(
        &mut self,
        now: Instant,
        op: crate::cluster::OpId,
        what: Pending,
        reply: Result<BusReply, BusFailure>,
    ) {
        match what {
            Pending::PresenceUpdate { scope }
                if !matches!(reply, Ok(BusReply::PresenceWritten)) =>
            {
                // Written or not, the bus may hold another set than this node's: write it whole.
                if let Some(key) = scope_of(&scope) {
                    self.remote.rewrite(now, &key);
                }
            }
            Pending::PresenceRefresh => {
                if let Ok(BusReply::PresenceRefreshed { missing }) = reply {
                    // The bus lost those sets (it restarted empty, or they expired): write them
                    // again now, so that nobody reading the scope misses this node's users.
                    for key in missing.iter().filter_map(scope_of) {
                        self.remote.rewrite(now, &key);
                        self.presence_rewrite(now, &key);
                    }
                }
            }
            Pending::PresenceRead { scope } => {
                let Some(key) = scope_of(&scope) else { return };
                let Some(cap) = self.cfg.presence.as_ref().map(|p| p.max_remote_entries) else {
                    return;
                };
                let me = self.node.as_deref().expect("clustered").cfg.node.clone();
                let out = match reply {
                    Ok(BusReply::Presence { held, truncated }) => {
                        self.remote.read_done(now, &key, op, held, truncated, &me, cap)
                    }
                    _ => self.remote.read_failed(now, &key, Some(op), cap),
                };
                if let Some(out) = out {
                    self.presence_outcome(now, &key, out);
                }
            }
            _ => {}
        }
    }

    /// Cluster mode: the bus is back. This node's sets are refreshed now (those the bus lost are
    /// written again: the node re-announces what it holds), and every view is read again.
    pub(crate) fn presence_bus_up(&mut self, now: Instant) {
        if self.cfg.presence.is_none() {
            return;
        }
        let keys = self.remote.bus_back(now);
        self.presence_refresh(now, None);
        for key in keys {
            self.presence_read(now, &key);
        }
    }
}
