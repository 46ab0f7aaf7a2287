//! Cluster-wide presence: what this node knows of the other nodes' presence sets, and what it has
//! told the bus of its own (DESIGN §12). Pure bookkeeping: `hub/presence_cluster.rs` issues the
//! operations and feeds the user-level changes into `crate::presence`, which renders them for
//! this node's connections.
//!
//! How the nodes agree:
//! - Each node keeps its own set per scope on the bus (the users it holds there: a connection,
//!   or a grace running). Every flush with changes writes them (`PresenceUpdate`, at most
//!   [`CHUNK`] users per operation); the node's first write to a scope, and the first after a
//!   write failed, replaces the set. Each write publishes a signal on the scope's channel with
//!   the changes and a [`Digest`] of the node's whole set after them.
//! - Every third of `presence_ttl` the node refreshes each of its sets (`PresenceRefresh`, the
//!   scopes spread over the period in [`sweep::STEPS`](super::sweep::STEPS) steps so that they do
//!   not reach the engine as one burst); each refreshed scope publishes a signal without
//!   changes, with the digest.
//! - A node with connections in a scope keeps a view of the other nodes' sets there: read from
//!   the bus when the scope gets its first local connection (that connection's snapshot waits for
//!   the read), then kept by the signals. Every signal re-arms its sender's expiry (its `ttl`
//!   from now): a node that stops signalling (it died, or lost the bus) has its set dropped after
//!   that long, which produces the leaves. A signal whose digest disagrees with the view (a signal
//!   was lost: a driver drops what its queue cannot take) makes the node read the scope again.
//!   Signals that arrive while a read is in flight wait and are applied after it, in order: set
//!   operations applied in order end in the same set whether or not the read already saw them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hashbrown::HashMap;

pub(crate) use super::signal::{Digest, Signal, scope_of, stream_of};
use super::sweep::{Step, Sweep};
use super::{NodeId, OpId, PresenceEntry, PresenceHeld};
use crate::ids::UserId;
use crate::presence::ScopeKey;
use crate::timer::{TimerId, TimerQueue};

/// Users per presence write (and per signal), so that no signal grows with a scope.
pub(crate) const CHUNK: usize = 256;
/// Signals kept per scope while its read is in flight; past it the scope is read again after.
const MAX_HELD: usize = 1024;
/// The longest lifetime a signal may claim for its sender's set (a bad one cannot pin a ghost).
pub(crate) const MAX_TTL: Duration = Duration::from_secs(3600);

/// One other node's set in one scope, as this node knows it.
#[derive(Debug)]
struct Record {
    users: HashMap<UserId, Option<Arc<str>>>,
    digest: Digest,
    /// Its expiry, in [`ClusterPresence::expiry`].
    timer: TimerId,
    /// The lifetime its last signal claimed.
    ttl: Duration,
}

/// Where a view stands with the bus.
#[derive(Debug)]
enum Sync {
    /// Signals apply as they come.
    Live,
    /// A read is in flight: signals wait for it.
    Reading { op: OpId, held: Vec<Signal>, overflowed: bool },
    /// No read succeeded since the view opened or last disagreed: the next refresh period reads
    /// again. Signals apply meanwhile.
    Stale,
}

/// The other nodes' sets in one scope.
#[derive(Debug)]
struct View {
    records: BTreeMap<NodeId, Record>,
    sync: Sync,
    /// The scope's first snapshots wait for its first read.
    holding: bool,
    /// Entries (user, node) held, at most the cap.
    entries: u32,
    /// Entries were left out (the cap, a truncated read): digests cannot agree, so they are not
    /// compared until a read holds everything again.
    capped: bool,
}

/// What a signal, a read or an expiry changed, for the hub.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// Per user: how many more (or fewer) other nodes hold it, and its metadata.
    pub(crate) changes: BTreeMap<UserId, (i32, Option<Arc<str>>)>,
    /// The scope's held snapshots may go out now.
    pub(crate) release: bool,
    /// The scope must be read again.
    pub(crate) reread: bool,
    /// Entries left out for the cap.
    pub(crate) limited: u32,
    /// A signal disagreed with the view.
    pub(crate) mismatch: bool,
}

impl Outcome {
    fn shift(&mut self, user: &UserId, by: i32, meta: Option<Arc<str>>) {
        let entry = self.changes.entry(user.clone()).or_insert((0, None));
        entry.0 += by;
        if meta.is_some() {
            entry.1 = meta;
        }
    }
}

/// What this node told the bus of its own set in one scope.
#[derive(Debug, Default)]
struct Own {
    digest: Digest,
    /// A write failed (or the bus lost the set): the next write replaces the set.
    rewrite: bool,
}

/// Cluster-wide presence bookkeeping of one node.
#[derive(Debug)]
pub(crate) struct ClusterPresence {
    views: HashMap<ScopeKey, View>,
    /// The other nodes' sets' expiries.
    expiry: TimerQueue<(ScopeKey, NodeId)>,
    own: HashMap<ScopeKey, Own>,
    /// The refresh of the own sets (and read of stale views), a slice of the scopes each step,
    /// armed while there are any.
    refresh: Sweep,
}

impl ClusterPresence {
    /// Bookkeeping for sets that live `ttl` (refreshed every third of it).
    pub(crate) fn new(ttl: Duration) -> Self {
        Self {
            views: HashMap::new(),
            expiry: TimerQueue::new(),
            own: HashMap::new(),
            refresh: Sweep::new(ttl / 3),
        }
    }

    fn arm(&mut self, now: Instant) {
        self.refresh.arm(now);
    }

    /// The next deadline: a set's expiry (only while the bus is up: a node that cannot hear
    /// the others keeps what it knew), or the next refresh.
    pub(crate) fn poll_timeout(&self, up: bool) -> Option<Instant> {
        let expiry = if up { self.expiry.peek() } else { None };
        [expiry, self.refresh.deadline()].into_iter().flatten().min()
    }

    /// The refresh's step due at `now`, if any (re-arming it while there is anything to refresh
    /// or read).
    pub(crate) fn refresh_due(&mut self, now: Instant) -> Option<Step> {
        let rearm = !self.own.is_empty() || !self.views.is_empty();
        self.refresh.due(now, rearm)
    }

    /// Other nodes' entries held, in all scopes.
    pub(crate) fn entries(&self) -> u64 {
        self.views.values().map(|v| u64::from(v.entries)).sum()
    }

    // ---- views ----

    /// Opens the scope's view (its first local connection arrived). Returns whether it is new:
    /// then it must be read, and its snapshots wait for the read.
    pub(crate) fn open(&mut self, now: Instant, key: &ScopeKey) -> bool {
        if self.views.contains_key(key) {
            return false;
        }
        let view = View {
            records: BTreeMap::new(),
            sync: Sync::Stale,
            holding: true,
            entries: 0,
            capped: false,
        };
        self.views.insert(key.clone(), view);
        self.arm(now);
        true
    }

    /// Closes the scope's view (its last local connection left): every other node's user leaves
    /// this node's picture.
    pub(crate) fn close(&mut self, key: &ScopeKey) -> Outcome {
        let mut out = Outcome::default();
        if let Some(view) = self.views.remove(key) {
            for record in view.records.into_values() {
                self.expiry.cancel(record.timer);
                for user in record.users.into_keys() {
                    out.shift(&user, -1, None);
                }
            }
        }
        out
    }

    /// Whether the scope's snapshots wait for its first read.
    pub(crate) fn holding(&self, key: &ScopeKey) -> bool {
        self.views.get(key).is_some_and(|v| v.holding)
    }

    /// Whether the scope has a view that is not being read.
    pub(crate) fn can_read(&self, key: &ScopeKey) -> bool {
        self.views.get(key).is_some_and(|v| !matches!(v.sync, Sync::Reading { .. }))
    }

    /// The scope is being read by `op`.
    pub(crate) fn reading(&mut self, key: &ScopeKey, op: OpId) {
        if let Some(view) = self.views.get_mut(key) {
            view.sync = Sync::Reading { op, held: Vec::new(), overflowed: false };
        }
    }

    /// The views no read has confirmed since they opened or disagreed, sorted (those that fall
    /// to `step`; all: `None`).
    pub(crate) fn stale(&self, step: Option<Step>) -> Vec<ScopeKey> {
        let mut keys: Vec<ScopeKey> = self
            .views
            .iter()
            .filter(|(k, v)| matches!(v.sync, Sync::Stale) && step.is_none_or(|s| s.holds(k)))
            .map(|(k, _)| k.clone())
            .collect();
        keys.sort_unstable();
        keys
    }

    /// Every view, sorted; after the bus came back, each is read again and meanwhile each set's
    /// expiry starts over (what a node could not hear while the bus was down is not a death).
    pub(crate) fn bus_back(&mut self, now: Instant) -> Vec<ScopeKey> {
        for view in self.views.values_mut() {
            if matches!(view.sync, Sync::Reading { .. }) {
                view.sync = Sync::Stale;
            }
            for record in view.records.values() {
                self.expiry.reschedule(record.timer, now.checked_add(record.ttl).unwrap_or(now));
            }
        }
        let mut keys: Vec<ScopeKey> = self.views.keys().cloned().collect();
        keys.sort_unstable();
        keys
    }

    /// A signal from another node on the scope's channel.
    pub(crate) fn signal(
        &mut self,
        now: Instant,
        key: &ScopeKey,
        signal: Signal,
        me: &NodeId,
        cap: u32,
    ) -> Outcome {
        let mut out = Outcome::default();
        if signal.node.as_ref() == me.as_str() {
            return out;
        }
        let Some(view) = self.views.get_mut(key) else { return out };
        match &mut view.sync {
            Sync::Reading { held, overflowed, .. } => {
                if held.len() < MAX_HELD {
                    held.push(signal);
                } else {
                    *overflowed = true;
                }
            }
            Sync::Live | Sync::Stale => {
                let agrees = apply(view, &mut self.expiry, key, now, &signal, cap, &mut out);
                if !agrees {
                    out.mismatch = true;
                    out.reread = true;
                }
            }
        }
        out
    }

    /// The scope's read `op` failed (or could not be issued): the view is stale until the next
    /// refresh period reads it again. `None` if the view is not waiting for `op`.
    pub(crate) fn read_failed(
        &mut self,
        now: Instant,
        key: &ScopeKey,
        op: Option<OpId>,
        cap: u32,
    ) -> Option<Outcome> {
        let view = self.views.get_mut(key)?;
        let held = match &mut view.sync {
            Sync::Reading { op: current, held, .. } if Some(*current) == op => std::mem::take(held),
            Sync::Stale if op.is_none() => Vec::new(),
            _ => return None,
        };
        view.sync = Sync::Stale;
        let mut out = Outcome::default();
        for signal in &held {
            apply(view, &mut self.expiry, key, now, signal, cap, &mut out);
        }
        out.release = std::mem::take(&mut view.holding);
        Some(out)
    }

    /// The scope's read `op` came back: the other nodes' sets become what it found, then the
    /// signals that waited apply. `None` if the view is not waiting for `op` (a late reply).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn read_done(
        &mut self,
        now: Instant,
        key: &ScopeKey,
        op: OpId,
        held_sets: Vec<PresenceHeld>,
        truncated: bool,
        me: &NodeId,
        cap: u32,
    ) -> Option<Outcome> {
        let view = self.views.get_mut(key)?;
        let (waiting, overflowed) = match &mut view.sync {
            Sync::Reading { op: current, held, overflowed } if *current == op => {
                (std::mem::take(held), *overflowed)
            }
            _ => return None,
        };
        view.sync = Sync::Live;
        let mut out = Outcome::default();
        // The old picture leaves, the new one comes; the net per user is what changes.
        for record in std::mem::take(&mut view.records).into_values() {
            self.expiry.cancel(record.timer);
            for user in record.users.into_keys() {
                out.shift(&user, -1, None);
            }
        }
        view.entries = 0;
        view.capped = truncated;
        if truncated {
            // The bus left users out to keep within the cap: a limit hit like any other.
            out.limited += 1;
        }
        for set in held_sets {
            if set.node == *me || set.users.is_empty() {
                continue;
            }
            let ttl = set.ttl.clamp(Duration::from_millis(1), MAX_TTL);
            let at = now.checked_add(ttl).unwrap_or(now);
            let timer = self.expiry.insert(at, (key.clone(), set.node.clone()));
            let mut record =
                Record { users: HashMap::new(), digest: Digest::default(), timer, ttl };
            for (user, meta) in set.users {
                if view.entries >= cap {
                    out.limited += 1;
                    view.capped = true;
                    continue;
                }
                if record.users.contains_key(&user) {
                    continue;
                }
                record.digest.add(user.as_str());
                out.shift(&user, 1, meta.clone());
                record.users.insert(user, meta);
                view.entries += 1;
            }
            view.records.insert(set.node, record);
        }
        for signal in &waiting {
            apply(view, &mut self.expiry, key, now, signal, cap, &mut out);
        }
        out.reread = overflowed;
        out.release = std::mem::take(&mut view.holding);
        Some(out)
    }

    /// Other nodes' sets whose expiry passed: each of their users is one node fewer.
    pub(crate) fn expire(&mut self, now: Instant) -> Vec<(ScopeKey, Outcome)> {
        let mut out: Vec<(ScopeKey, Outcome)> = Vec::new();
        while let Some((key, node)) = self.expiry.pop_due(now) {
            let Some(view) = self.views.get_mut(&key) else { continue };
            let Some(record) = view.records.remove(&node) else { continue };
            let mut outcome = Outcome::default();
            for user in record.users.into_keys() {
                view.entries -= 1;
                outcome.shift(&user, -1, None);
            }
            out.push((key, outcome));
        }
        out
    }

    // ---- own sets ----

    /// Whether this node's next write to the scope must replace its set (it never wrote there,
    /// or a write failed).
    pub(crate) fn must_replace(&self, key: &ScopeKey) -> bool {
        self.own.get(key).is_none_or(|o| o.rewrite)
    }

    /// Records a write of this node's set (about to be issued) and returns the digest after it.
    pub(crate) fn own_write(
        &mut self,
        now: Instant,
        key: &ScopeKey,
        replace: bool,
        joins: &[PresenceEntry],
        leaves: &[UserId],
    ) -> Digest {
        let own = self.own.entry(key.clone()).or_default();
        if replace {
            *own = Own::default();
        }
        leaves.iter().for_each(|u| own.digest.remove(u.as_str()));
        joins.iter().for_each(|(u, _)| own.digest.add(u.as_str()));
        let digest = own.digest;
        if digest.count == 0 && !own.rewrite {
            // Nothing left to refresh; the next write to the scope replaces.
            self.own.remove(key);
        }
        self.arm(now);
        digest
    }

    /// A write to the scope failed, or the bus lost the set: the next one replaces it.
    pub(crate) fn rewrite(&mut self, now: Instant, key: &ScopeKey) {
        self.own.entry(key.clone()).or_default().rewrite = true;
        self.arm(now);
    }

    /// For the refresh: the scopes whose sets are refreshed (with their digests), and those
    /// that must be written again, both sorted (those that fall to `step`; all: `None`).
    pub(crate) fn refresh_lists(
        &self,
        step: Option<Step>,
    ) -> (Vec<(ScopeKey, Digest)>, Vec<ScopeKey>) {
        let mut refresh: Vec<(ScopeKey, Digest)> = Vec::new();
        let mut rewrite: Vec<ScopeKey> = Vec::new();
        for (key, own) in &self.own {
            if step.is_some_and(|s| !s.holds(key)) {
                continue;
            }
            if own.rewrite {
                rewrite.push(key.clone());
            } else if own.digest.count > 0 {
                refresh.push((key.clone(), own.digest));
            }
        }
        refresh.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        rewrite.sort_unstable();
        (refresh, rewrite)
    }

    /// Checks the bookkeeping against the hub's: `remote` (per scope, per user, the other nodes
    /// that hold it, as `crate::presence` counts them) and `published` (per scope, the users
    /// this node told the bus it holds). For the invariant checker.
    #[cfg(any(test, feature = "fuzzing", fuzzing))]
    pub(crate) fn check(
        &self,
        remote: &HashMap<ScopeKey, HashMap<UserId, u32>>,
        published: &HashMap<ScopeKey, Vec<UserId>>,
    ) -> Result<(), String> {
        let mut timers = 0;
        for (key, view) in &self.views {
            let mut counts: HashMap<&UserId, u32> = HashMap::new();
            let mut entries = 0;
            for record in view.records.values() {
                timers += 1;
                if record.users.is_empty() {
                    return Err(format!("presence view {key:?}: an empty record is kept"));
                }
                let digest = Digest::of(record.users.keys().map(UserId::as_str));
                if digest != record.digest {
                    return Err(format!("presence view {key:?}: a record's digest is off"));
                }
                for user in record.users.keys() {
                    *counts.entry(user).or_default() += 1;
                    entries += 1;
                }
            }
            if entries != view.entries {
                return Err(format!("presence view {key:?}: {} entries counted", view.entries));
            }
            let theirs = remote.get(key);
            for (user, n) in &counts {
                let held = theirs.and_then(|t| t.get(*user)).copied().unwrap_or(0);
                if held != *n {
                    return Err(format!("presence {key:?}: {user} on {n} nodes, counted {held}"));
                }
            }
            if theirs.is_some_and(|t| t.iter().any(|(u, n)| *n > 0 && !counts.contains_key(u))) {
                return Err(format!("presence {key:?}: a user counted elsewhere is in no record"));
            }
        }
        for (key, users) in remote {
            if !self.views.contains_key(key) && users.values().any(|n| *n > 0) {
                return Err(format!("presence {key:?}: other nodes' users without a view"));
            }
        }
        if timers != self.expiry.len() {
            return Err(format!("presence: {timers} records, {} expiries", self.expiry.len()));
        }
        for (key, users) in published {
            let digest = Digest::of(users.iter().map(UserId::as_str));
            match self.own.get(key) {
                Some(own) if own.rewrite || own.digest == digest => {}
                None if digest.count == 0 => {}
                _ => return Err(format!("presence {key:?}: the own digest disagrees")),
            }
        }
        for (key, own) in &self.own {
            if !own.rewrite && own.digest.count > 0 && !published.contains_key(key) {
                return Err(format!("presence {key:?}: a digest for nothing published"));
            }
        }
        Ok(())
    }
}

/// Applies a signal to a view; returns whether the sender's digest agrees with the record
/// (always, for a capped view).
fn apply(
    view: &mut View,
    expiry: &mut TimerQueue<(ScopeKey, NodeId)>,
    key: &ScopeKey,
    now: Instant,
    signal: &Signal,
    cap: u32,
    out: &mut Outcome,
) -> bool {
    let node = NodeId::new(signal.node.clone());
    let ttl = signal.ttl();
    let at = now.checked_add(ttl).unwrap_or(now);
    let record = match view.records.get_mut(&node) {
        Some(record) => {
            expiry.reschedule(record.timer, at);
            record.ttl = ttl;
            record
        }
        None => {
            let timer = expiry.insert(at, (key.clone(), node.clone()));
            let record = Record { users: HashMap::new(), digest: Digest::default(), timer, ttl };
            view.records.entry(node.clone()).or_insert(record)
        }
    };
    if signal.replace {
        for user in std::mem::take(&mut record.users).into_keys() {
            view.entries -= 1;
            out.shift(&user, -1, None);
        }
        record.digest = Digest::default();
    }
    for user in &signal.leaves {
        if let Some((user, _)) = record.users.remove_entry(user.as_ref()) {
            view.entries -= 1;
            record.digest.remove(user.as_str());
            out.shift(&user, -1, None);
        }
    }
    for (user, meta) in &signal.joins {
        if let Some(kept) = record.users.get_mut(user.as_ref()) {
            kept.clone_from(meta);
            continue;
        }
        if view.entries >= cap {
            out.limited += 1;
            view.capped = true;
            continue;
        }
        let user = UserId::new(user.clone());
        record.digest.add(user.as_str());
        out.shift(&user, 1, meta.clone());
        record.users.insert(user, meta.clone());
        view.entries += 1;
    }
    let agrees = view.capped || record.digest == Digest { count: signal.count, hash: signal.hash };
    if record.users.is_empty() {
        // Nothing to expire; a later signal starts a new record.
        let record = view.records.remove(&node).expect("just used");
        expiry.cancel(record.timer);
    }
    agrees
}

#[cfg(test)]
mod tests {
    use super::super::signal::test_signal as signal;
    use super::*;
    use crate::presence::PresenceScope;

    fn key() -> ScopeKey {
        ("acme".into(), PresenceScope::Room("lobby".into()))
    }

    fn net(out: &Outcome) -> Vec<(String, i32)> {
        out.changes.iter().map(|(u, (n, _))| (u.to_string(), *n)).collect()
    }

    #[test]
    fn a_view_follows_signals_and_a_lost_one_shows_as_a_disagreement() {
        let t0 = Instant::now();
        let me = NodeId::from("me");
        let mut p = ClusterPresence::new(Duration::from_secs(15));
        assert!(p.open(t0, &key()));
        assert!(p.read_failed(t0, &key(), None, 100).expect("stale").release);
        let out = p.signal(t0, &key(), signal("n1", &["a", "b"], &["a", "b"], &[]), &me, 100);
        assert_eq!(net(&out), [("a".into(), 1), ("b".into(), 1)]);
        assert!(!out.reread);
        // The leave of `b` was lost: the next signal's digest disagrees.
        let out = p.signal(t0, &key(), signal("n1", &["a", "c"], &["c"], &[]), &me, 100);
        assert!(out.mismatch && out.reread);
        // Our own signals change nothing.
        let out = p.signal(t0, &key(), signal("me", &["z"], &["z"], &[]), &me, 100);
        assert!(out.changes.is_empty());
    }

    #[test]
    fn a_read_replaces_the_picture_and_the_signals_that_waited_apply_after_it() {
        let t0 = Instant::now();
        let me = NodeId::from("me");
        let mut p = ClusterPresence::new(Duration::from_secs(15));
        p.open(t0, &key());
        let op = OpId::new(0, 1);
        p.reading(&key(), op);
        assert!(p.holding(&key()));
        // Published after the read: `a` leaves n1.
        let waited = p.signal(t0, &key(), signal("n1", &["b"], &[], &["a"]), &me, 100);
        assert!(waited.changes.is_empty(), "held while the read is in flight");
        let sets = vec![
            PresenceHeld {
                node: "n1".into(),
                ttl: Duration::from_secs(10),
                users: vec![("a".into(), None), ("b".into(), None)],
            },
            PresenceHeld {
                node: "me".into(),
                ttl: Duration::from_secs(10),
                users: vec![("mine".into(), None)],
            },
        ];
        assert!(p.read_done(t0, &key(), OpId::new(0, 9), sets.clone(), false, &me, 100).is_none());
        let out = p.read_done(t0, &key(), op, sets, false, &me, 100).expect("awaited");
        assert!(out.release);
        assert_eq!(net(&out), [("a".into(), 0), ("b".into(), 1)]);
        // n1 sent nothing more: its set expires its last signal's lifetime after it (the read
        // said 10 s, the later signal 15 s).
        assert!(p.expire(t0 + Duration::from_secs(14)).is_empty());
        let gone = p.expire(t0 + Duration::from_secs(15));
        assert_eq!(gone.len(), 1);
        assert_eq!(net(&gone[0].1), [("b".into(), -1)]);
    }

    #[test]
    fn the_cap_leaves_entries_out_and_stops_comparing_digests() {
        let t0 = Instant::now();
        let me = NodeId::from("me");
        let mut p = ClusterPresence::new(Duration::from_secs(15));
        p.open(t0, &key());
        p.read_failed(t0, &key(), None, 2);
        let out =
            p.signal(t0, &key(), signal("n1", &["a", "b", "c"], &["a", "b", "c"], &[]), &me, 2);
        assert_eq!(out.limited, 1);
        assert!(!out.reread, "a capped view cannot agree, so it does not ask");
        assert_eq!(p.entries(), 2);
    }

    #[test]
    fn own_writes_keep_a_digest_and_a_failure_asks_for_a_rewrite() {
        let t0 = Instant::now();
        let mut p = ClusterPresence::new(Duration::from_secs(15));
        assert!(p.must_replace(&key()));
        let d = p.own_write(t0, &key(), true, &[("a".into(), None), ("b".into(), None)], &[]);
        assert_eq!(d, Digest::of(["a", "b"]));
        assert!(!p.must_replace(&key()));
        let d = p.own_write(t0, &key(), false, &[], &["a".into()]);
        assert_eq!(d, Digest::of(["b"]));
        assert_eq!(p.refresh_lists(None), (vec![(key(), d)], vec![]));
        p.rewrite(t0, &key());
        assert_eq!(p.refresh_lists(None), (vec![], vec![key()]));
        assert!(p.must_replace(&key()));
        p.own_write(t0, &key(), true, &[], &[]);
        assert_eq!(p.refresh_lists(None), (vec![], vec![]), "an empty set is not refreshed");
    }
}
