//! Cluster-wide presence (issue 13, DESIGN §12), over the test kit's multi-node harness and model
//! bus: scenario by scenario (a member's first snapshot names the users of other nodes, a user on
//! two nodes joins once, a dead node's users leave within the documented bound and not before,
//! a restarted node does not resurrect its old users, a lost signal is found and repaired, the
//! engine restarting empty or the bus going away loses nobody, the cap on other nodes' entries),
//! then a seeded simulation of clients hopping between nodes through crashes, restarts, bus and
//! link outages and lost signals, which checks after every step that no client's picture holds a
//! ghost past the bound, that no user flickers while it is connected somewhere, and at the end
//! that every picture (snapshot + diffs applied in order) and every node's `Hub::presence` is the
//! true cluster-wide membership. `CLUSTER_PRESENCE_SEEDS=<seed>` replays a seed.
//!
//! The bound, with `grace` 2 s, `flush_interval` 250 ms and `presence_ttl` 6 s here: a user whose
//! last connection closed leaves within `grace + flush_interval`; one whose node died, within
//! `presence_ttl + flush_interval` of the death (and no sooner than two thirds of `presence_ttl`:
//! the node's last refresh may be that old); a lost signal delays a leave by at most
//! `presence_ttl`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::Value;
use switchboard::{
    Action, ClusterConfig, Config, ConnId, DisconnectReason, PresenceConfig, PresenceScope,
    Principal, StreamKey, Tier,
};
use switchboard_testkit::Rng;
use switchboard_testkit::cluster::Cluster;
use switchboard_testkit::frames::parse;

const GRACE: Duration = Duration::from_secs(2);
const FLUSH: Duration = Duration::from_millis(250);
const TTL: Duration = Duration::from_secs(6);
/// The resolution of the scenarios' clock.
const TICK: Duration = Duration::from_millis(50);
/// The longest a user may stay in a picture after it lost its last connection (see the module
/// docs), with a step of slack.
const BOUND: Duration = Duration::from_millis(2_000 + 6_000 + 2 * 250 + 250);

fn config(node: usize, max_remote: u32) -> Config {
    let mut presence = PresenceConfig::default();
    presence.tenant = false;
    presence.grace = GRACE;
    presence.flush_interval = FLUSH;
    presence.max_remote_entries = max_remote;
    let mut cluster = ClusterConfig::new(format!("n{node}").as_str());
    cluster.presence_ttl = TTL;
    let mut cfg = Config {
        presence: Some(presence),
        cluster: Some(cluster),
        seed: 11 + node as u64,
        ..Config::default()
    };
    cfg.heartbeat.interval = Duration::from_secs(3600);
    cfg
}

/// What one connection was told of the lobby: `None` until its first snapshot; and whether it
/// was told `joined` (from then on its user is truly in the lobby).
#[derive(Debug, Default)]
struct Picture {
    members: Option<BTreeSet<String>>,
    joined: bool,
}

/// Nodes over the model bus, and each connection's picture of the lobby.
struct Net {
    c: Cluster,
    /// Per `(node, conn)`: its user and its picture.
    conns: BTreeMap<(usize, ConnId), (String, Picture)>,
    /// Every leave a connection was told: when, where, whom.
    leaves: Vec<(Instant, usize, ConnId, String)>,
    /// Every join a connection was told.
    joins: Vec<(Instant, usize, ConnId, String)>,
}

impl Net {
    fn new(nodes: usize, max_remote: u32) -> Self {
        let c = Cluster::new(nodes, 5, |i| config(i, max_remote));
        Self { c, conns: BTreeMap::new(), leaves: Vec::new(), joins: Vec::new() }
    }

    fn take(&mut self, out: Vec<(usize, Action)>) {
        let now = self.c.now;
        for (node, action) in out {
            match action {
                Action::Deliver { conn, frame } => {
                    let v = parse(frame.as_str());
                    let Some((_, pic)) = self.conns.get_mut(&(node, conn)) else { continue };
                    if v["type"] == "joined" && v["stream"] == "r:lobby" {
                        pic.joined = true;
                    }
                    if v["scope"] != "r:lobby" {
                        continue;
                    }
                    match v["type"].as_str() {
                        Some("presence") => pic.members = Some(members(&v["members"])),
                        Some("presence_diff") => {
                            let known = pic.members.as_mut().expect("a diff after a snapshot");
                            for user in names(&v["leaves"]) {
                                assert!(known.remove(&user), "{user} left but was not there");
                                self.leaves.push((now, node, conn, user));
                            }
                            for user in members(&v["joins"]) {
                                assert!(known.insert(user.clone()), "{user} joined twice");
                                self.joins.push((now, node, conn, user));
                            }
                        }
                        _ => {}
                    }
                }
                Action::Close { conn, .. } => {
                    self.conns.remove(&(node, conn));
                }
                _ => {}
            }
        }
    }

    /// Moves the clock by `d` in steps of [`TICK`], so that what a connection is told is
    /// stamped at most one step late.
    fn advance(&mut self, d: Duration) {
        let end = self.c.now + d;
        while self.c.now < end {
            let step = TICK.min(end - self.c.now);
            let out = self.c.advance(step);
            self.take(out);
            for i in 0..self.c.len() {
                if let Some(hub) = self.c.hub_ref(i) {
                    hub.check_invariants().unwrap_or_else(|e| panic!("node {i}: {e}"));
                }
            }
        }
    }

    /// `user` connects on `node` and joins the lobby.
    fn enter(&mut self, node: usize, user: &str) -> ConnId {
        let now = self.c.now;
        let hub = self.c.hub(node).expect("alive");
        let conn = hub.connect(now, Principal::new("acme", user).tier(Tier::Enterprise)).unwrap();
        hub.join(now, conn, "lobby").expect("joined");
        self.conns.insert((node, conn), (user.to_owned(), Picture::default()));
        let out = self.c.pump();
        self.take(out);
        conn
    }

    fn close(&mut self, node: usize, conn: ConnId) {
        let now = self.c.now;
        self.c.hub(node).expect("alive").disconnect(now, conn, DisconnectReason::Clean).unwrap();
        self.conns.remove(&(node, conn));
        let out = self.c.pump();
        self.take(out);
    }

    fn crash(&mut self, node: usize) {
        assert!(self.c.crash(node));
        self.conns.retain(|(n, _), _| *n != node);
    }

    /// The users with a connection told `joined` for the lobby: the truth.
    fn truth(&self) -> BTreeSet<String> {
        self.conns.values().filter(|(_, p)| p.joined).map(|(u, _)| u.clone()).collect()
    }

    fn picture(&self, node: usize, conn: ConnId) -> Vec<String> {
        let pic = &self.conns[&(node, conn)].1;
        pic.members.as_ref().expect("a snapshot").iter().cloned().collect()
    }

    /// When the connection was told `user` left.
    fn leaves_seen(&self, (node, conn): (usize, ConnId), user: &str) -> Vec<Instant> {
        let seen = self.leaves.iter().filter(|l| (l.1, l.2) == (node, conn) && l.3 == user);
        seen.map(|l| l.0).collect()
    }

    /// How many times the connection was told `user` joined.
    fn joins_seen(&self, (node, conn): (usize, ConnId), user: &str) -> usize {
        self.joins.iter().filter(|j| (j.1, j.2) == (node, conn) && j.3 == user).count()
    }
}

fn names(v: &Value) -> Vec<String> {
    v.as_array().expect("a list").iter().map(|u| u.as_str().expect("a user").to_owned()).collect()
}

fn members(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .expect("a member list")
        .iter()
        .map(|m| m["user"].as_str().expect("a user").to_owned())
        .collect()
}

fn lobby() -> PresenceScope {
    PresenceScope::Room("lobby".into())
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| (*x).to_owned()).collect()
}

#[test]
fn a_members_first_snapshot_names_the_users_other_nodes_hold() {
    let mut n = Net::new(2, 10_000);
    let alice = n.enter(0, "alice");
    n.advance(Duration::from_secs(1));
    assert_eq!(n.picture(0, alice), s(&["alice"]));
    let bob = n.enter(1, "bob");
    // Node 1 read the lobby before it told bob anything: alice is in bob's first snapshot.
    assert_eq!(n.picture(1, bob), s(&["alice", "bob"]));
    // Node 1 writes bob at its next batch, node 0 tells alice at its own next batch.
    n.advance(FLUSH);
    assert_eq!(n.picture(0, alice), s(&["alice"]));
    n.advance(FLUSH);
    assert_eq!(n.picture(0, alice), s(&["alice", "bob"]), "within two batches");
    // The application's view is cluster-wide too (the admin API reads it).
    let view = n.c.hub_ref(0).unwrap().presence(&"acme".into(), &lobby()).expect("on");
    assert_eq!(view.count, 2);
    let bob_there = view.users.iter().find(|u| u.user.as_str() == "bob").expect("bob");
    assert_eq!((bob_there.conns, bob_there.nodes), (0, 1), "held by one other node");
    assert!(n.c.hub_ref(1).unwrap().stats().bus.presence_reads >= 1);
}

#[test]
fn a_user_on_two_nodes_joins_once_and_leaves_once() {
    let mut n = Net::new(3, 10_000);
    let watcher = n.enter(0, "watcher");
    n.advance(Duration::from_secs(1));
    let a1 = n.enter(1, "alice");
    n.advance(Duration::from_millis(100));
    let a2 = n.enter(2, "alice");
    n.advance(Duration::from_secs(1));
    let w = (0, watcher);
    assert_eq!(n.joins_seen(w, "alice"), 1, "alice joined once, though on two nodes");
    assert_eq!(n.picture(2, a2), s(&["alice", "watcher"]));
    n.close(1, a1);
    n.advance(GRACE * 3);
    assert!(n.leaves_seen(w, "alice").is_empty(), "still held by node 2");
    n.close(2, a2);
    let closed = n.c.now;
    n.advance(GRACE + FLUSH * 3);
    let left = n.leaves_seen(w, "alice");
    assert_eq!(left.len(), 1);
    let after = left[0] - closed;
    assert!(after >= GRACE && after <= GRACE + FLUSH * 2, "{after:?}");
    assert_eq!(n.picture(0, watcher), s(&["watcher"]));
}

#[test]
fn a_dead_nodes_users_leave_within_the_ttl_and_the_others_stay() {
    let mut n = Net::new(3, 10_000);
    let watcher = n.enter(0, "watcher");
    n.enter(1, "alice");
    n.enter(1, "bob");
    n.enter(2, "carol");
    // Some refreshes happen, so that the last one before the crash is anywhere in its period.
    n.advance(Duration::from_millis(7_300));
    assert_eq!(n.picture(0, watcher), s(&["alice", "bob", "carol", "watcher"]));
    n.crash(1);
    let died = n.c.now;
    for _ in 0..40 {
        n.advance(FLUSH);
    }
    let w = (0, watcher);
    for user in ["alice", "bob"] {
        let left = n.leaves_seen(w, user);
        assert_eq!(left.len(), 1, "{user}");
        let after = left[0] - died;
        assert!(after <= TTL + FLUSH, "{user} left {after:?} after the crash");
        assert!(after >= TTL * 2 / 3, "{user} left {after:?} after: sooner than a refresh period");
    }
    assert!(n.leaves.iter().all(|l| l.3 != "carol" && l.3 != "watcher"), "{:?}", n.leaves);
    assert_eq!(n.picture(0, watcher), s(&["carol", "watcher"]));
    assert!(n.c.hub_ref(0).unwrap().stats().bus.presence_expired >= 1);
    let truth = n.c.bus.presence_members(&StreamKey::room("acme", "lobby"), n.c.now);
    assert_eq!(truth.len(), 2, "the bus forgot the dead node's set too: {truth:?}");
}

#[test]
fn a_user_whose_node_died_and_who_reconnects_within_the_ttl_never_leaves() {
    let mut n = Net::new(3, 10_000);
    let watcher = n.enter(0, "watcher");
    n.enter(1, "alice");
    n.advance(Duration::from_secs(3));
    n.crash(1);
    n.advance(Duration::from_secs(1));
    n.enter(2, "alice");
    n.advance(Duration::from_secs(20));
    assert!(
        n.leaves_seen((0, watcher), "alice").is_empty(),
        "alice was held by node 2 before node 1's set expired"
    );
    assert_eq!(n.picture(0, watcher), s(&["alice", "watcher"]));
}

#[test]
fn a_node_restarted_under_its_name_does_not_resurrect_its_old_users() {
    let mut n = Net::new(2, 10_000);
    let watcher = n.enter(0, "watcher");
    n.enter(1, "alice");
    n.advance(Duration::from_secs(2));
    n.crash(1);
    assert!(n.c.restart(1));
    let back = n.c.now;
    n.enter(1, "dave");
    n.advance(FLUSH * 3);
    // Node 1's first write to the lobby replaced its whole set: alice is gone within two
    // batches, not after the ttl.
    let left = n.leaves_seen((0, watcher), "alice");
    assert_eq!(left.len(), 1);
    assert!(left[0] - back <= FLUSH * 2, "{:?}", left[0] - back);
    n.advance(TTL * 2);
    assert_eq!(n.picture(0, watcher), s(&["dave", "watcher"]));
}

#[test]
fn a_lost_signal_shows_in_the_next_digest_and_the_scope_is_read_again() {
    let mut n = Net::new(2, 10_000);
    let watcher = n.enter(0, "watcher");
    n.enter(1, "alice");
    n.advance(Duration::from_secs(1));
    n.c.bus.set_signal_loss(1_000_000);
    n.enter(1, "bob");
    n.advance(FLUSH * 2);
    n.c.bus.set_signal_loss(0);
    assert_eq!(n.picture(0, watcher), s(&["alice", "watcher"]), "bob's join was lost");
    // Node 1's next refresh (every third of the ttl) carries a digest that names bob.
    n.advance(TTL / 3 + FLUSH * 2);
    assert_eq!(n.picture(0, watcher), s(&["alice", "bob", "watcher"]));
    let bus = n.c.hub_ref(0).unwrap().stats().bus;
    assert!(bus.presence_mismatches >= 1 && bus.presence_reads >= 2, "{bus:?}");
}

#[test]
fn the_engine_restarting_empty_loses_nobody_and_the_sets_are_written_again() {
    let mut n = Net::new(2, 10_000);
    let watcher = n.enter(0, "watcher");
    n.enter(1, "alice");
    n.advance(Duration::from_secs(1));
    n.c.bus.go_down();
    n.c.bus.restart_empty();
    n.advance(Duration::from_secs(1));
    n.c.bus.come_up();
    n.advance(Duration::from_secs(1));
    let lobby = StreamKey::room("acme", "lobby");
    let truth: Vec<String> =
        n.c.bus.presence_members(&lobby, n.c.now).iter().map(|u| u.to_string()).collect();
    assert_eq!(truth, s(&["alice", "watcher"]), "both nodes re-announced what they hold");
    n.advance(TTL * 2);
    assert!(n.leaves.is_empty(), "{:?}", n.leaves);
    assert_eq!(n.picture(0, watcher), s(&["alice", "watcher"]));
    assert!(n.c.hub_ref(1).unwrap().stats().bus.presence_rewrites >= 1);
}

#[test]
fn the_refresh_spreads_the_scopes_over_its_period_instead_of_one_burst() {
    let mut n = Net::new(1, 10_000);
    let rooms = 64;
    for r in 0..rooms {
        let now = n.c.now;
        let hub = n.c.hub(0).expect("alive");
        let conn = hub.connect(now, Principal::new("acme", format!("u{r}"))).unwrap();
        hub.join(now, conn, format!("room-{r}").as_str()).expect("joined");
    }
    n.advance(Duration::from_secs(1));
    // Each scope is refreshed once per period (a third of the ttl), a few at a time.
    let period = TTL / 3;
    let slice = period / 32;
    let start = n.c.bus.stats().presence_writes;
    let (mut last, mut largest) = (start, 0);
    for _ in 0..32 {
        n.c.advance(slice);
        let writes = n.c.bus.stats().presence_writes;
        largest = largest.max(writes - last);
        last = writes;
    }
    assert_eq!(last - start, rooms, "every room's set once in a period");
    assert!(largest <= rooms / 4, "no step refreshes more than a slice: {largest}");
    for r in 0..rooms {
        let room = StreamKey::room("acme", format!("room-{r}"));
        assert_eq!(n.c.bus.presence_nodes(&room, n.c.now).len(), 1, "room-{r}'s set lives");
    }
}

#[test]
fn a_long_bus_outage_freezes_the_picture_and_the_truth_comes_back_with_the_bus() {
    let mut n = Net::new(2, 10_000);
    let watcher = n.enter(0, "watcher");
    let alice = n.enter(1, "alice");
    n.enter(1, "bob");
    n.advance(Duration::from_secs(1));
    n.c.bus.go_down();
    n.advance(Duration::from_secs(1));
    n.close(1, alice);
    n.advance(TTL * 3);
    // Node 0 could not hear: its picture stays as it was rather than flicker.
    let w = (0, watcher);
    assert!(n.leaves_seen(w, "alice").is_empty() && n.leaves_seen(w, "bob").is_empty());
    assert_eq!(n.picture(0, watcher), s(&["alice", "bob", "watcher"]));
    n.c.bus.come_up();
    n.advance(Duration::from_secs(2));
    assert_eq!(n.picture(0, watcher), s(&["bob", "watcher"]));
    assert_eq!(n.leaves_seen(w, "alice").len(), 1);
    assert!(n.leaves_seen(w, "bob").is_empty());
}

#[test]
fn other_nodes_entries_past_the_cap_are_left_out_and_counted() {
    let mut n = Net::new(2, 2);
    for user in ["a", "b", "c"] {
        n.enter(1, user);
    }
    n.advance(Duration::from_secs(1));
    let watcher = n.enter(0, "watcher");
    n.advance(FLUSH);
    let hub = n.c.hub_ref(0).unwrap();
    let stats = hub.stats();
    assert!(stats.limit_rejections.presence_remote_entries >= 1, "{stats:?}");
    assert_eq!(stats.bus.presence_remote_entries, 2);
    assert_eq!(hub.presence(&"acme".into(), &lobby()).unwrap().count, 3, "two of them and me");
    assert_eq!(n.picture(0, watcher).len(), 3);
}

// ---------------------------------------------------------------------------------------------
// The simulation

const NODES: usize = 3;
const USERS: usize = 24;
const CLIENTS: usize = 36;
const STEP: Duration = Duration::from_millis(250);

/// One simulated device of a user: its connection, or when it reconnects.
struct Device {
    user: String,
    conn: Option<(usize, ConnId)>,
    reconnect_at: Instant,
}

/// The faults in force and when each ended, to excuse what they may cause.
#[derive(Default)]
struct Faults {
    restart_at: [Option<Instant>; NODES],
    link_back_at: [Option<Instant>; NODES],
    bus_back_at: Option<Instant>,
    loss_until: Option<Instant>,
    /// The last instant each node could not reach the bus.
    unreachable: [Option<Instant>; NODES],
    /// The last instant signals were being lost.
    lossy: Option<Instant>,
}

#[derive(Debug, Default)]
struct SimStats {
    connects: u64,
    disconnects: u64,
    crashes: u64,
    bus_outages: u64,
    link_outages: u64,
    loss_phases: u64,
    leaves_seen: u64,
    joins_seen: u64,
}

struct World {
    n: Net,
    rng: Rng,
    devices: Vec<Device>,
    faults: Faults,
    /// The last instant each user was truly in the lobby.
    last_present: BTreeMap<String, Instant>,
    /// How many of the leave and join records were checked.
    checked: (usize, usize),
    stats: SimStats,
    seed: u64,
}

impl World {
    fn fail(&self, what: String) -> ! {
        let t = self.n.c.now - self.n.c.start;
        panic!("seed {} at {t:?}: {what}", self.seed)
    }

    fn now(&self) -> Instant {
        self.n.c.now
    }

    /// Whether `since` lies after `t - window` (a fault that recent excuses what is checked).
    fn within(t: Instant, since: Option<Instant>, window: Duration) -> bool {
        since.is_some_and(|s| s + window >= t)
    }

    fn sample(&mut self) {
        let now = self.now();
        for user in self.n.truth() {
            self.last_present.insert(user, now);
        }
        for i in 0..NODES {
            if !self.n.c.bus.reachable(i) || !self.n.c.is_alive(i) {
                self.faults.unreachable[i] = Some(now);
            }
        }
        if self.faults.loss_until.is_some() {
            self.faults.lossy = Some(now);
        }
    }

    fn faults(&mut self) {
        let now = self.now();
        for i in 0..NODES {
            if self.faults.restart_at[i].is_some_and(|t| t <= now) {
                self.faults.restart_at[i] = None;
                self.n.c.restart(i);
            }
            if self.faults.link_back_at[i].is_some_and(|t| t <= now) {
                self.faults.link_back_at[i] = None;
                self.n.c.bus.reconnect(i);
            }
        }
        if self.faults.bus_back_at.is_some_and(|t| t <= now) {
            self.faults.bus_back_at = None;
            self.n.c.bus.come_up();
        }
        if self.faults.loss_until.is_some_and(|t| t <= now) {
            self.faults.loss_until = None;
            self.n.c.bus.set_signal_loss(0);
        }
        let alive = (0..NODES).filter(|&i| self.n.c.is_alive(i)).count();
        if alive == NODES && self.rng.below(300) == 0 {
            let i = self.rng.index(NODES);
            self.stats.crashes += 1;
            self.n.crash(i);
            self.faults.restart_at[i] =
                Some(now + Duration::from_millis(2_000 + self.rng.below(13_000)));
            for d in &mut self.devices {
                if d.conn.is_some_and(|(node, _)| node == i) {
                    d.conn = None;
                    d.reconnect_at = now + Duration::from_millis(300 + self.rng.below(4_700));
                }
            }
        }
        if self.faults.bus_back_at.is_none() && self.rng.below(1_500) == 0 {
            self.stats.bus_outages += 1;
            self.n.c.bus.go_down();
            self.faults.bus_back_at =
                Some(now + Duration::from_millis(1_000 + self.rng.below(9_000)));
        }
        if self.rng.below(800) == 0 {
            let i = self.rng.index(NODES);
            if self.faults.link_back_at[i].is_none() {
                self.stats.link_outages += 1;
                self.n.c.bus.disconnect(i);
                let back = now + Duration::from_millis(1_000 + self.rng.below(8_000));
                self.faults.link_back_at[i] = Some(back);
            }
        }
        if self.faults.loss_until.is_none() && self.rng.below(300) == 0 {
            self.stats.loss_phases += 1;
            self.n.c.bus.set_signal_loss(100_000);
            self.faults.loss_until =
                Some(now + Duration::from_millis(3_000 + self.rng.below(5_000)));
        }
    }

    /// Devices reconnect when due; with `churn`, open ones drop at random.
    fn clients(&mut self, churn: bool) {
        let now = self.now();
        for di in 0..self.devices.len() {
            match self.devices[di].conn {
                Some((node, conn)) => {
                    // Closed by its hub (set up while the bus was away, say).
                    if !self.n.conns.contains_key(&(node, conn)) {
                        self.devices[di].conn = None;
                        self.devices[di].reconnect_at = now + Duration::from_millis(500);
                        continue;
                    }
                    if !churn || self.rng.below(160) != 0 {
                        continue;
                    }
                    self.stats.disconnects += 1;
                    let reason = if self.rng.chance(50) {
                        DisconnectReason::Clean
                    } else {
                        DisconnectReason::Abnormal
                    };
                    if let Some(hub) = self.n.c.hub(node) {
                        hub.disconnect(now, conn, reason).expect("open");
                    }
                    self.n.conns.remove(&(node, conn));
                    let pause = if self.rng.chance(60) {
                        200 + self.rng.below(1_300)
                    } else {
                        3_000 + self.rng.below(9_000)
                    };
                    self.devices[di].conn = None;
                    self.devices[di].reconnect_at = now + Duration::from_millis(pause);
                }
                None if self.devices[di].reconnect_at <= now => {
                    let node = self.rng.index(NODES);
                    let user = self.devices[di].user.clone();
                    let Some(hub) = self.n.c.hub(node) else { continue };
                    let principal = Principal::new("acme", user.as_str()).tier(Tier::Enterprise);
                    let Ok(conn) = hub.connect(now, principal) else {
                        self.devices[di].reconnect_at = now + Duration::from_millis(500);
                        continue;
                    };
                    hub.join(now, conn, "lobby").expect("a room");
                    self.stats.connects += 1;
                    self.n.conns.insert((node, conn), (user, Picture::default()));
                    self.devices[di].conn = Some((node, conn));
                }
                None => {}
            }
        }
    }

    /// No leave while its user was truly in the lobby within the last window, unless a fault
    /// excuses it; no user in a picture past the bound after it truly left.
    fn check(&mut self) {
        let now = self.now();
        let window = GRACE.min(TTL * 2 / 3) - TICK;
        let excuse = TTL + Duration::from_secs(1);
        for k in self.checked.0..self.n.leaves.len() {
            let (t, node, _, user) = self.n.leaves[k].clone();
            self.stats.leaves_seen += 1;
            let last = self.last_present.get(&user).copied();
            let early = last.is_some_and(|l| l + window > t);
            let faulty = (0..NODES).any(|i| Self::within(t, self.faults.unreachable[i], excuse))
                || Self::within(t, self.faults.lossy, excuse);
            if early && !faulty {
                let ago = last.map(|l| t - l);
                self.fail(format!("node {node} told a leave of {user}, in the lobby {ago:?} ago"));
            }
        }
        self.stats.joins_seen += (self.n.joins.len() - self.checked.1) as u64;
        self.checked = (self.n.leaves.len(), self.n.joins.len());
        let truth = self.n.truth();
        for ((node, conn), (_, pic)) in &self.n.conns {
            let Some(members) = &pic.members else { continue };
            if Self::within(now, self.faults.unreachable[*node], BOUND) {
                continue;
            }
            for user in members.iter().filter(|u| !truth.contains(*u)) {
                let gone_for = self.last_present.get(user).map(|l| now - *l);
                if gone_for.is_none_or(|g| g > BOUND) {
                    self.fail(format!("{conn:?} on node {node} still shows {user}: {gone_for:?}"));
                }
            }
        }
    }

    /// One step; `busy`: faults and client churn happen.
    fn step(&mut self, busy: bool) {
        self.sample();
        if busy {
            self.faults();
        }
        self.clients(busy);
        self.n.advance(STEP);
        self.check();
    }

    /// Heals every fault, lets everyone reconnect and the bound pass, then checks that each
    /// picture, each node's view and the bus all hold the truth.
    fn settle(&mut self) {
        for i in 0..NODES {
            if !self.n.c.is_alive(i) {
                self.n.c.restart(i);
            }
            self.n.c.bus.reconnect(i);
        }
        self.faults = Faults { unreachable: self.faults.unreachable, ..Faults::default() };
        self.n.c.bus.come_up();
        self.n.c.bus.set_signal_loss(0);
        let now = self.now();
        for d in &mut self.devices {
            d.reconnect_at = d.reconnect_at.min(now);
        }
        let quiet = (BOUND + Duration::from_secs(5)).as_millis() / STEP.as_millis();
        for _ in 0..quiet {
            self.step(false);
        }
        let truth = self.n.truth();
        assert_eq!(truth.len(), USERS, "seed {}: everyone is back", self.seed);
        for ((node, conn), (_, pic)) in &self.n.conns {
            let shown = pic.members.as_ref().expect("a snapshot by now");
            assert_eq!(shown, &truth, "seed {}: {conn:?} on node {node}", self.seed);
        }
        let now = self.now();
        let lobby = StreamKey::room("acme", "lobby");
        let held: BTreeSet<String> =
            self.n.c.bus.presence_members(&lobby, now).iter().map(|u| u.to_string()).collect();
        assert_eq!(held, truth, "seed {}: the bus", self.seed);
        for i in 0..NODES {
            let view = self.n.c.hub_ref(i).unwrap().presence(&"acme".into(), &lobby_scope());
            let users: BTreeSet<String> =
                view.expect("on").users.iter().map(|u| u.user.to_string()).collect();
            assert_eq!(users, truth, "seed {}: node {i}'s view", self.seed);
        }
    }
}

fn lobby_scope() -> PresenceScope {
    lobby()
}

fn run(seed: u64, minutes: u64) -> SimStats {
    let mut rng = Rng::seeded(seed);
    let mut n = Net::new(NODES, 10_000);
    n.c.bus = switchboard_testkit::bus::ModelBus::new(seed);
    let start = n.c.now;
    let devices = (0..CLIENTS)
        .map(|i| Device {
            user: format!("u{}", i % USERS),
            conn: None,
            reconnect_at: start + Duration::from_millis(rng.below(3_000)),
        })
        .collect();
    let mut w = World {
        n,
        rng,
        devices,
        faults: Faults::default(),
        last_present: BTreeMap::new(),
        checked: (0, 0),
        stats: SimStats::default(),
        seed,
    };
    for _ in 0..(minutes * 60_000 / STEP.as_millis() as u64) {
        w.step(true);
    }
    w.settle();
    w.stats
}

#[test]
fn clients_hopping_between_nodes_see_cluster_wide_presence_through_crashes_and_lost_signals() {
    let seeds: Vec<u64> = std::env::var("CLUSTER_PRESENCE_SEEDS")
        .map(|s| s.split(',').map(|x| x.trim().parse().expect("seeds: numbers")).collect())
        .unwrap_or_else(|_| vec![1, 2]);
    for seed in seeds {
        let s = run(seed, 4);
        eprintln!("presence seed {seed}: {s:?}");
        assert!(s.crashes > 0 && s.link_outages > 0 && s.loss_phases > 0, "seed {seed}: {s:?}");
        assert!(s.leaves_seen > 100 && s.joins_seen > 100, "seed {seed}: {s:?}");
    }
}
