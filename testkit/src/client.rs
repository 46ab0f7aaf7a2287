//! The one client model: what a client (one device of a user) was published, what it received
//! per stream and where it stands, with the checks every client-side test makes (the resume
//! properties, the simulation).
//!
//! A client is not tied to a hub instance: it keeps its own position per stream, keyed by the
//! stream's identity ([`StreamKey`]: a user's stream, a tenant's, a room's), and messages are
//! identified by `(stream, epoch, seq)` in a [`Log`] of everything published. A client that
//! reconnects elsewhere (another connection, another hub of a cluster) and resumes is checked
//! the same way.
//!
//! The checks:
//! - isolation: an event reaches a client only on one of its own streams, as the message that
//!   was published there at that `(epoch, seq)`, and only where its visibility admits the client
//!   (a role audience, a connection target) — [`Client::on_event`];
//! - order: per stream and epoch, seqs only grow (no duplicate, no reorder) — [`Client::on_event`];
//! - no loss: either exactly the messages the client is due arrive ([`Client::expect`],
//!   [`Client::settle`]), or, where a test does not predict that exactly, no critical message the
//!   client may see is skipped between two positions ([`Client::lost`]); and a `resumed` report
//!   of `recovered: false` has a reason the log justifies ([`Client::unrecovered`]).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Instant;

use serde_json::Value;
use switchboard::{ConnId, Retention};

use crate::frames::EventFrame;

/// A stream's identity, the same on every hub: a user's, a tenant's or a room's stream.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StreamKey {
    /// The stream of user `user` of tenant `tenant` (wire name `u`).
    User {
        /// The tenant.
        tenant: String,
        /// The user.
        user: String,
    },
    /// A tenant's broadcast stream (wire name `t`).
    Tenant(String),
    /// Room `room` of tenant `tenant` (wire name `r:<room>`).
    Room {
        /// The tenant.
        tenant: String,
        /// The room.
        room: String,
    },
}

impl StreamKey {
    /// A user's stream.
    #[must_use]
    pub fn user(tenant: impl Into<String>, user: impl Into<String>) -> Self {
        Self::User { tenant: tenant.into(), user: user.into() }
    }

    /// A tenant's stream.
    #[must_use]
    pub fn tenant(tenant: impl Into<String>) -> Self {
        Self::Tenant(tenant.into())
    }

    /// A room's stream.
    #[must_use]
    pub fn room(tenant: impl Into<String>, room: impl Into<String>) -> Self {
        Self::Room { tenant: tenant.into(), room: room.into() }
    }

    /// The stream's name on the wire (in event frames, `connected`, `joined`, `resume`).
    #[must_use]
    pub fn wire(&self) -> String {
        match self {
            Self::User { .. } => "u".to_owned(),
            Self::Tenant(_) => "t".to_owned(),
            Self::Room { room, .. } => format!("r:{room}"),
        }
    }
}

impl fmt::Display for StreamKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::User { tenant, user } => write!(f, "{tenant}/{user}"),
            Self::Tenant(t) => write!(f, "{t}"),
            Self::Room { tenant, room } => write!(f, "{tenant}/r:{room}"),
        }
    }
}

/// Who may see a published message on its stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Visibility {
    /// Everyone on the stream.
    All,
    /// Clients whose thread filter admits this thread (no filter admits every thread).
    Thread(String),
    /// Only this connection.
    Conn(ConnId),
    /// Only clients holding this role.
    Role(String),
}

/// One published message, as the publish reported it.
#[derive(Clone, Debug)]
pub struct Published {
    /// Its stream.
    pub key: StreamKey,
    /// The stream's epoch and the message's seq (from `Published::position`).
    pub epoch: u64,
    /// See `epoch`.
    pub seq: u64,
    /// Who may see it.
    pub visibility: Visibility,
    /// Whether it may never be skipped (`agent_thinking` may be, for a client that is behind).
    pub critical: bool,
    /// When it was published.
    pub at: Instant,
}

/// Every message published, by the id its payload carries and by `(stream, epoch, seq)`.
#[derive(Debug, Default)]
pub struct Log {
    msgs: HashMap<u64, Published>,
    index: HashMap<(StreamKey, u64), BTreeMap<u64, u64>>,
}

impl Log {
    /// Records message `id`.
    ///
    /// # Panics
    /// If the id, or the message's `(stream, epoch, seq)`, was recorded before: a hub never
    /// publishes two messages at one position.
    pub fn record(&mut self, id: u64, p: Published) {
        let slot = self.index.entry((p.key.clone(), p.epoch)).or_default();
        let previous = slot.insert(p.seq, id);
        assert!(previous.is_none(), "{} epoch {} seq {} published twice", p.key, p.epoch, p.seq);
        assert!(self.msgs.insert(id, p).is_none(), "message id {id} recorded twice");
    }

    /// Records message `id` at a position an earlier message held until the engine lost it (a
    /// cluster bus failover that lost a log's tail hands the same `(epoch, seq)` out again): the
    /// index names the new message from now on; the old one stays known by its id.
    ///
    /// # Panics
    /// If the id was recorded before.
    pub fn supersede(&mut self, id: u64, p: Published) {
        let slot = self.index.entry((p.key.clone(), p.epoch)).or_default();
        slot.insert(p.seq, id);
        assert!(self.msgs.insert(id, p).is_none(), "message id {id} recorded twice");
    }

    /// Whether a message is recorded at `key`'s `(epoch, seq)`.
    #[must_use]
    pub fn holds(&self, key: &StreamKey, epoch: u64, seq: u64) -> bool {
        self.index.get(&(key.clone(), epoch)).is_some_and(|s| s.contains_key(&seq))
    }

    /// The message with this id.
    #[must_use]
    pub fn get(&self, id: u64) -> Option<&Published> {
        self.msgs.get(&id)
    }

    /// The messages of `key`'s `epoch` with a seq in `(after, upto]`, in order, with their ids.
    pub fn between<'a>(
        &'a self,
        key: &StreamKey,
        epoch: u64,
        after: u64,
        upto: u64,
    ) -> impl Iterator<Item = (u64, &'a Published)> + use<'a> {
        let from = after.saturating_add(1);
        let slot = self.index.get(&(key.clone(), epoch)).filter(|_| from <= upto);
        let range = slot.into_iter().flat_map(move |s| s.range(from..=upto));
        range.map(|(_, id)| (*id, &self.msgs[id]))
    }

    /// The messages of `key`'s `epoch` after `after`, in order.
    pub fn after<'a>(
        &'a self,
        key: &StreamKey,
        epoch: u64,
        after: u64,
    ) -> impl Iterator<Item = (u64, &'a Published)> + use<'a> {
        self.between(key, epoch, after, u64::MAX)
    }
}

/// A client: a device of user `(tenant, user)`, over its successive connections.
#[derive(Clone, Debug)]
pub struct Client {
    /// Its tenant.
    pub tenant: String,
    /// Its user.
    pub user: String,
    /// The roles it holds.
    pub roles: Vec<String>,
    /// The threads its connections narrow to (`None`: all of them).
    pub filter: Option<Vec<String>>,
    /// Its connection now, if any (on whichever hub).
    pub conn: Option<ConnId>,
    positions: BTreeMap<StreamKey, (u64, u64)>,
    expected: HashMap<StreamKey, Vec<u64>>,
    received: HashMap<StreamKey, Vec<u64>>,
}

/// What a client check found wrong.
pub type Failure = String;

impl Client {
    /// A client of `(tenant, user)` that knows no stream yet.
    #[must_use]
    pub fn new(tenant: impl Into<String>, user: impl Into<String>) -> Self {
        Self {
            tenant: tenant.into(),
            user: user.into(),
            roles: Vec::new(),
            filter: None,
            conn: None,
            positions: BTreeMap::new(),
            expected: HashMap::new(),
            received: HashMap::new(),
        }
    }

    /// Its user stream.
    #[must_use]
    pub fn user_stream(&self) -> StreamKey {
        StreamKey::user(&self.tenant, &self.user)
    }

    /// Its tenant's stream.
    #[must_use]
    pub fn tenant_stream(&self) -> StreamKey {
        StreamKey::tenant(&self.tenant)
    }

    /// The stream a wire name denotes for this client (`None` for a name that is no stream).
    #[must_use]
    pub fn key_of(&self, wire: &str) -> Option<StreamKey> {
        match wire {
            "u" => Some(self.user_stream()),
            "t" => Some(self.tenant_stream()),
            other => other.strip_prefix("r:").map(|room| StreamKey::room(&self.tenant, room)),
        }
    }

    /// Whether a message may be shown to this client (its filter as configured, its current
    /// connection).
    #[must_use]
    pub fn sees(&self, p: &Published) -> bool {
        match &p.visibility {
            Visibility::All => true,
            Visibility::Thread(t) => self.filter.as_ref().is_none_or(|f| f.contains(t)),
            Visibility::Conn(c) => self.conn == Some(*c),
            Visibility::Role(r) => self.roles.contains(r),
        }
    }

    /// Where the client stands on `key`: the last `(epoch, seq)` it was told or received.
    #[must_use]
    pub fn position(&self, key: &StreamKey) -> Option<(u64, u64)> {
        self.positions.get(key).copied()
    }

    /// Every position it knows, by stream.
    pub fn positions(&self) -> impl Iterator<Item = (&StreamKey, (u64, u64))> {
        self.positions.iter().map(|(k, p)| (k, *p))
    }

    /// Moves the client to `pos` on `key` (a `resumed` report it starts over from, a stream it
    /// first learns of).
    pub fn set_position(&mut self, key: StreamKey, pos: (u64, u64)) {
        self.positions.insert(key, pos);
    }

    /// Starts `key` at `pos` (a `connected` or `joined` frame) unless the client already knows a
    /// position there, which it keeps so as to resume from it. Returns whether it started.
    pub fn start(&mut self, key: StreamKey, pos: (u64, u64)) -> bool {
        if self.positions.contains_key(&key) {
            return false;
        }
        self.positions.insert(key, pos);
        true
    }

    /// Forgets every position (a client that lost its state).
    pub fn forget(&mut self) {
        self.positions.clear();
    }

    /// An event frame carrying message `id` reached the client: checks isolation and order, and
    /// moves its position. Returns the stream.
    ///
    /// # Errors
    /// The event is on a stream that is not the client's, is not the message published there at
    /// that position, is for a role or connection the client is not, repeats or reorders a seq,
    /// or comes on an epoch the client does not stand on.
    pub fn on_event(
        &mut self,
        log: &Log,
        event: &EventFrame,
        id: u64,
    ) -> Result<StreamKey, Failure> {
        let who = format!("client of {}/{}", self.tenant, self.user);
        let key =
            self.key_of(&event.stream).ok_or_else(|| format!("{who}: no stream {event:?}"))?;
        let m = log.get(id).ok_or_else(|| format!("{who}: unknown message {id}"))?;
        if m.key != key || (m.epoch, m.seq) != (event.epoch, event.seq) {
            return Err(format!(
                "{who}: message {id} of {} at ({}, {}) arrived as {key} at ({}, {})",
                m.key, m.epoch, m.seq, event.epoch, event.seq
            ));
        }
        match &m.visibility {
            Visibility::Role(r) if !self.roles.contains(r) => {
                return Err(format!("{who} got message {id} for role {r}"));
            }
            Visibility::Conn(c) if self.conn != Some(*c) => {
                return Err(format!("{who} got message {id} meant for {c}"));
            }
            _ => {}
        }
        let Some((epoch, seq)) = self.position(&key) else {
            return Err(format!("{who}: {} on {key} before any position", event.kind));
        };
        // Cluster mode: a stream with no message yet is reported at `(0, 0)`; its first message
        // brings the epoch the engine drew.
        if epoch != event.epoch && (epoch, seq) != (0, 0) {
            return Err(format!("{who}: {key} epoch {} while at {epoch}", event.epoch));
        }
        if event.seq <= seq {
            return Err(format!(
                "{who}: {key} seq {} after {seq} (duplicate or reorder)",
                event.seq
            ));
        }
        self.positions.insert(key.clone(), (event.epoch, event.seq));
        self.received.entry(key.clone()).or_default().push(id);
        Ok(key)
    }

    /// The critical messages of `key`'s `epoch` strictly between `after` and `upto` that the
    /// client may see: what it lost when it moves from `after` to `upto` (skipping over
    /// anything else is allowed).
    #[must_use]
    pub fn lost(&self, log: &Log, key: &StreamKey, epoch: u64, after: u64, upto: u64) -> Vec<u64> {
        let upto = upto.saturating_sub(1);
        log.between(key, epoch, after, upto)
            .filter(|(_, m)| m.critical && self.sees(m))
            .map(|(id, _)| id)
            .collect()
    }

    /// Messages the client is due on `key`, in order (in the current stretch).
    pub fn expect(&mut self, key: &StreamKey, ids: impl IntoIterator<Item = u64>) {
        self.expected.entry(key.clone()).or_default().extend(ids);
    }

    /// Ends the current stretch of `key`.
    ///
    /// # Errors
    /// What arrived on it is not exactly what was due.
    pub fn settle(&mut self, key: &StreamKey) -> Result<(), Failure> {
        let e = self.expected.remove(key).unwrap_or_default();
        let r = self.received.remove(key).unwrap_or_default();
        if r != e {
            return Err(format!(
                "client of {}/{} on {key}: received {r:?}, due {e:?}",
                self.tenant, self.user
            ));
        }
        Ok(())
    }

    /// Checks every stream without ending its stretch.
    ///
    /// # Errors
    /// On some stream what arrived so far is not exactly what was due.
    pub fn check_received(&self) -> Result<(), Failure> {
        for (key, e) in &self.expected {
            let r = self.received.get(key).map_or(&[][..], Vec::as_slice);
            if r != e.as_slice() {
                let (t, u) = (&self.tenant, &self.user);
                return Err(format!("client of {t}/{u} on {key}: received {r:?}, due {e:?}"));
            }
        }
        for (key, r) in &self.received {
            if !r.is_empty() && !self.expected.contains_key(key) {
                let (t, u) = (&self.tenant, &self.user);
                return Err(format!("client of {t}/{u} on {key}: received {r:?}, none due"));
            }
        }
        Ok(())
    }

    /// A `resumed` frame's report of `recovered: false` for stream `wire`: checks that its reason
    /// is justified by the client's position and the log (under `retention`, at `now`), then
    /// moves the client to the stream's head as reported (it refetches that stream's state).
    /// Returns the reason.
    ///
    /// # Errors
    /// The reason is not one of the protocol's, or not justified: `epoch_mismatch` with the
    /// client on the stream's epoch; `gap_too_old` when the messages the client missed are
    /// neither more than `max_messages` nor older than `max_age`; `too_large` or `live_ahead` with
    /// nothing missed; `future_seq` with the client not ahead; `unknown_stream` for a stream the
    /// client has.
    pub fn unrecovered(
        &mut self,
        log: &Log,
        wire: &str,
        report: &Value,
        retention: &Retention,
        now: Instant,
    ) -> Result<String, Failure> {
        self.unrecovered_excused(log, wire, report, retention, now, false)
    }

    /// [`Client::unrecovered`] in cluster mode, where the log behind the hub can lose what the
    /// retention alone would keep: with `log_lost` (the caller knows that the engine lost some of
    /// the messages after the client's position, or that the node could not reach the engine when
    /// it answered), `gap_too_old` is justified too. A `not_ready` report (a room whose position
    /// the node did not know yet) drops the client's position there: the room's `joined` frame
    /// starts it again.
    ///
    /// # Errors
    /// As [`Client::unrecovered`].
    pub fn unrecovered_excused(
        &mut self,
        log: &Log,
        wire: &str,
        report: &Value,
        retention: &Retention,
        now: Instant,
        log_lost: bool,
    ) -> Result<String, Failure> {
        let who = format!("client of {}/{}", self.tenant, self.user);
        let key = self.key_of(wire).ok_or_else(|| format!("{who}: report of {wire}"))?;
        let reason = report["reason"].as_str().unwrap_or("?").to_owned();
        let (e, s) = (report["epoch"].as_u64(), report["seq"].as_u64());
        let Some((ce, cs)) = self.position(&key) else {
            return Err(format!("{who}: {wire} reported, never named"));
        };
        let missed = || log.after(&key, ce, cs).map(|(_, m)| m).collect::<Vec<_>>();
        let justified = match reason.as_str() {
            "epoch_mismatch" => e != Some(ce),
            "gap_too_old" => {
                let missing = missed();
                let too_many = missing.len() > retention.max_messages;
                let too_old = missing.first().is_some_and(|m| now - m.at > retention.max_age);
                too_many || too_old || log_lost
            }
            "not_ready" if wire.starts_with("r:") => {
                self.positions.remove(&key);
                return Ok(reason);
            }
            // Issue 10 item 3 (would not fit under the unwritten limit) and item 5 (later seqs
            // already went out): only possible when something is missing.
            "too_large" | "live_ahead" => !(e == Some(ce) && s.is_some_and(|s| s <= cs)),
            "future_seq" => e == Some(ce) && s.is_some_and(|s| cs > s),
            _ => false,
        };
        if !justified {
            return Err(format!(
                "{who}: {wire} not recovered ({reason}) from ({ce}, {cs}): {report}"
            ));
        }
        if let (Some(e), Some(s)) = (e, s) {
            self.positions.insert(key, (e, s));
        }
        Ok(reason)
    }
}

impl Client {
    /// A cluster node's `resync` frame (`{"type":"resync","stream":S,"epoch":E,"seq":N,
    /// "recovered":false,"reason":..}`): messages of stream `S` up to `(E, N)` may be missing; the
    /// client takes `(E, N)` as its position (and refetches the stream's state). Returns the
    /// reason and the position the client stood on before.
    ///
    /// # Errors
    /// The frame is malformed, names no stream of the client's, has an unknown reason, claims to
    /// be recovered, or moves the client backwards within its epoch.
    pub fn resync(&mut self, frame: &Value) -> Result<(String, Option<(u64, u64)>), Failure> {
        let who = format!("client of {}/{}", self.tenant, self.user);
        let wire = frame["stream"].as_str().ok_or_else(|| format!("{who}: resync {frame}"))?;
        let key = self.key_of(wire).ok_or_else(|| format!("{who}: resync of {wire}"))?;
        let reason = frame["reason"].as_str().unwrap_or("?").to_owned();
        let (Some(e), Some(s)) = (frame["epoch"].as_u64(), frame["seq"].as_u64()) else {
            return Err(format!("{who}: resync without a position: {frame}"));
        };
        if frame["recovered"] != Value::Bool(false) {
            return Err(format!("{who}: resync not marked recovered: false: {frame}"));
        }
        let before = self.position(&key);
        match (reason.as_str(), before) {
            ("gap_too_old", Some((ce, cs))) if ce == e && s < cs => {
                return Err(format!("{who}: resync of {key} back from ({ce}, {cs}): {frame}"));
            }
            ("gap_too_old" | "epoch_changed", _) => {}
            _ => return Err(format!("{who}: resync of {key} with reason {reason}: {frame}")),
        }
        self.positions.insert(key, (e, s));
        Ok((reason, before))
    }

    /// Forgets the client's position on one stream.
    pub fn drop_position(&mut self, key: &StreamKey) {
        self.positions.remove(key);
    }
}

/// The `i`-th client of the simulations' population: tenant `t<i mod tenants>`, user
/// `u<(i / tenants) mod users_per_tenant>`, each of two roles with even odds, narrowed to one of
/// two threads one time in four, and in each of `rooms` rooms one time in three (the rooms it is
/// in, by index). One definition for the single-node and the cluster simulation.
pub fn population_member(
    i: usize,
    tenants: usize,
    users_per_tenant: usize,
    rooms: usize,
    rng: &mut crate::Rng,
) -> (Client, Vec<usize>) {
    let (tenant, user) = (i % tenants, (i / tenants) % users_per_tenant);
    let mut client = Client::new(format!("t{tenant}"), format!("u{user}"));
    client.roles = (0..2).filter(|_| rng.index(2) == 0).map(|r| format!("role{r}")).collect();
    if rng.index(4) == 0 {
        client.filter = Some(vec![format!("th{}", rng.index(2))]);
    }
    let rooms = (0..rooms).filter(|_| rng.index(3) == 0).collect();
    (client, rooms)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use serde_json::json;

    fn event(stream: &str, epoch: u64, seq: u64) -> EventFrame {
        let kind = "tool_completed".to_owned();
        EventFrame { kind, stream: stream.to_owned(), epoch, seq, thread: None }
    }

    fn published(key: StreamKey, epoch: u64, seq: u64, visibility: Visibility) -> Published {
        Published { key, epoch, seq, visibility, critical: true, at: Instant::now() }
    }

    /// A log of three messages on acme/alice's stream (epoch 7), the second for a role.
    fn alice() -> (Log, Client) {
        let mut log = Log::default();
        let key = StreamKey::user("acme", "alice");
        log.record(1, published(key.clone(), 7, 1, Visibility::All));
        log.record(2, published(key.clone(), 7, 2, Visibility::Role("admin".into())));
        log.record(3, published(key.clone(), 7, 3, Visibility::All));
        log.record(4, published(StreamKey::user("acme", "bob"), 9, 1, Visibility::All));
        let mut client = Client::new("acme", "alice");
        client.start(key, (7, 0));
        (log, client)
    }

    #[test]
    fn events_are_checked_for_isolation_and_order() {
        let (log, mut c) = alice();
        assert_eq!(c.on_event(&log, &event("u", 7, 1), 1), Ok(StreamKey::user("acme", "alice")));
        // Another user's message, a role the client does not hold, a repeat, another epoch.
        assert!(c.on_event(&log, &event("u", 9, 1), 4).is_err());
        assert!(c.on_event(&log, &event("u", 7, 2), 2).is_err());
        assert!(c.on_event(&log, &event("u", 7, 1), 1).is_err());
        assert!(c.on_event(&log, &event("u", 8, 3), 3).is_err());
        // A message at another position than it was published at.
        assert!(c.on_event(&log, &event("u", 7, 4), 3).is_err());
        assert_eq!(c.position(&c.user_stream()), Some((7, 1)));
    }

    #[test]
    fn what_is_skipped_and_what_is_due_are_checked() {
        let (log, mut c) = alice();
        let key = c.user_stream();
        // Skipping seq 2 (a role message) loses nothing; skipping 1..3 loses message 1 and 3
        // once the client holds the role.
        assert_eq!(c.lost(&log, &key, 7, 1, 3), Vec::<u64>::new());
        assert_eq!(c.lost(&log, &key, 7, 0, 4), vec![1, 3]);
        c.roles.push("admin".into());
        assert_eq!(c.lost(&log, &key, 7, 0, 4), vec![1, 2, 3]);
        c.expect(&key, [1]);
        c.on_event(&log, &event("u", 7, 1), 1).unwrap();
        assert!(c.check_received().is_ok(), "what is due arrived");
        c.expect(&key, [2]);
        assert!(c.check_received().is_err(), "message 2 has not come");
        assert!(c.settle(&key).is_err(), "message 2 never came");
        assert!(c.settle(&key).is_ok(), "a new stretch");
    }

    #[test]
    fn a_resync_moves_the_client_and_a_new_epoch_starts_from_zero() {
        let (log, mut c) = alice();
        let key = c.user_stream();
        c.on_event(&log, &event("u", 7, 1), 1).unwrap();
        let resync = |reason: &str, epoch: u64, seq: u64| {
            json!({"type": "resync", "stream": "u", "epoch": epoch, "seq": seq,
                   "recovered": false, "reason": reason})
        };
        // Backwards within the epoch, an unknown reason, or claiming recovery: refused.
        assert!(c.clone().resync(&resync("gap_too_old", 7, 0)).is_err());
        assert!(c.clone().resync(&resync("made_up", 7, 3)).is_err());
        let mut recovered = resync("gap_too_old", 7, 3);
        recovered["recovered"] = json!(true);
        assert!(c.clone().resync(&recovered).is_err());
        // A gap: the client stands after it, and seq 3 is next.
        let (reason, before) = c.clone().resync(&resync("gap_too_old", 7, 2)).unwrap();
        assert_eq!((reason.as_str(), before), ("gap_too_old", Some((7, 1))));
        // A new epoch not known yet: (0, 0), and the first message brings the epoch.
        c.resync(&resync("epoch_changed", 0, 0)).unwrap();
        assert_eq!(c.position(&key), Some((0, 0)));
        let mut log = log;
        log.record(5, published(key.clone(), 9, 1, Visibility::All));
        c.on_event(&log, &event("u", 9, 1), 5).unwrap();
        assert_eq!(c.position(&key), Some((9, 1)));
        assert!(c.on_event(&log, &event("u", 7, 3), 3).is_err(), "the old epoch is gone");
    }

    #[test]
    fn a_reused_position_names_the_newer_message() {
        let (mut log, _) = alice();
        let key = StreamKey::user("acme", "alice");
        assert!(log.holds(&key, 7, 3) && !log.holds(&key, 7, 4));
        log.supersede(9, published(key.clone(), 7, 3, Visibility::All));
        let at3: Vec<u64> = log.between(&key, 7, 2, 3).map(|(id, _)| id).collect();
        assert_eq!(at3, vec![9]);
        assert!(log.get(3).is_some(), "the lost message stays known by its id");
    }

    #[test]
    fn in_cluster_mode_a_log_loss_justifies_gap_too_old_and_not_ready_drops_a_room() {
        let (log, mut c) = alice();
        let roomy =
            Retention { max_messages: 5, max_bytes: 1 << 20, max_age: Duration::from_secs(60) };
        let now = Instant::now();
        let report = json!({"recovered": false, "reason": "gap_too_old", "epoch": 7, "seq": 3});
        // Within retention: only a loss the caller knows of justifies it.
        let strict = c.clone().unrecovered_excused(&log, "u", &report, &roomy, now, false);
        assert!(strict.is_err());
        let excused = c.clone().unrecovered_excused(&log, "u", &report, &roomy, now, true);
        assert_eq!(excused.as_deref(), Ok("gap_too_old"));
        // `not_ready` only for a room, and the room's position is dropped.
        let room = StreamKey::room("acme", "lobby");
        c.start(room.clone(), (4, 2));
        let not_ready = json!({"recovered": false, "reason": "not_ready", "epoch": 0, "seq": 0});
        assert!(c.clone().unrecovered_excused(&log, "u", &not_ready, &roomy, now, true).is_err());
        c.unrecovered_excused(&log, "r:lobby", &not_ready, &roomy, now, false).unwrap();
        assert_eq!(c.position(&room), None);
    }

    #[test]
    fn an_unrecovered_stream_needs_a_reason_the_log_justifies() {
        let (log, mut c) = alice();
        let retention =
            Retention { max_messages: 2, max_bytes: 1 << 20, max_age: Duration::from_secs(60) };
        let now = Instant::now();
        let report = |reason: &str, epoch: u64| json!({"recovered": false, "reason": reason, "epoch": epoch, "seq": 3});
        // The client is at (7, 0): three messages missed, more than the buffer keeps.
        assert!(
            c.clone().unrecovered(&log, "u", &report("gap_too_old", 7), &retention, now).is_ok()
        );
        let roomy = Retention { max_messages: 5, ..retention };
        assert!(c.clone().unrecovered(&log, "u", &report("gap_too_old", 7), &roomy, now).is_err());
        assert!(
            c.clone().unrecovered(&log, "u", &report("epoch_mismatch", 7), &roomy, now).is_err()
        );
        assert!(c.clone().unrecovered(&log, "u", &report("made_up", 7), &roomy, now).is_err());
        // Another hub (another epoch): the client starts over from the reported head.
        let reason = c.unrecovered(&log, "u", &report("epoch_mismatch", 11), &roomy, now);
        assert_eq!(reason.as_deref(), Ok("epoch_mismatch"));
        assert_eq!(c.position(&c.user_stream()), Some((11, 3)));
    }
}
