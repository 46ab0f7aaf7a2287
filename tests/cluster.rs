//! Cluster mode, scenario by scenario: hubs as nodes over the test kit's model bus, each failure
//! of DESIGN §11 provoked on purpose and its defined outcome checked (the randomized multi-node
//! simulation is `cluster_sim.rs`).

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchboard::{
    Action, AuditKind, BusFailure, ClusterConfig, Config, ConnId, ConnectError, Envelope,
    EventKind, Hub, Principal, PublishError, PublishOutcome, Retention, StreamKey, StreamPos,
    Target,
};
use switchboard_testkit::bus::ModelBus;
use switchboard_testkit::cluster::Cluster;
use switchboard_testkit::frames::parse;

/// Nodes over one model bus on a virtual clock (the test kit's harness), and what each node's
/// connections received.
struct Net {
    c: Cluster,
    /// Per node: `(conn, frame)` in delivery order.
    frames: Vec<Vec<(ConnId, Value)>>,
    outcomes: Vec<PublishOutcome>,
    audits: Vec<AuditKind>,
}

fn config(node: &str, tweak: impl Fn(&mut Config)) -> Config {
    let mut cfg = Config { cluster: Some(ClusterConfig::new(node)), ..Config::default() };
    // The scenarios play no pongs: keep heartbeats out of the way.
    cfg.heartbeat.interval = Duration::from_secs(3600);
    tweak(&mut cfg);
    cfg
}

impl Net {
    fn new(nodes: usize, tweak: impl Fn(&mut Config)) -> Self {
        let c = Cluster::new(nodes, 7, |n| config(&format!("n{n}"), &tweak));
        Self { c, frames: vec![Vec::new(); nodes], outcomes: Vec::new(), audits: Vec::new() }
    }

    fn now(&self) -> Instant {
        self.c.now
    }

    fn bus(&mut self) -> &mut ModelBus {
        &mut self.c.bus
    }

    fn hub(&mut self, n: usize) -> &mut Hub {
        self.c.hub(n).expect("node is alive")
    }

    fn absorb(&mut self, actions: Vec<(usize, Action)>) {
        for (n, action) in actions {
            match action {
                Action::Deliver { conn, frame } => {
                    self.frames[n].push((conn, parse(frame.as_str())))
                }
                Action::Published { outcome, .. } => self.outcomes.push(*outcome),
                Action::Audit(event) => self.audits.push(event.kind),
                _ => {}
            }
        }
    }

    /// Runs the drive loop until nothing moves.
    fn pump(&mut self) {
        let actions = self.c.pump();
        self.absorb(actions);
    }

    /// Advances the clock by `d`, running every node's timers on the way.
    fn advance(&mut self, d: Duration) {
        let actions = self.c.advance(d);
        self.absorb(actions);
    }

    fn connect(&mut self, n: usize, tenant: &str, user: &str) -> ConnId {
        let now = self.now();
        let id = self.hub(n).connect(now, Principal::new(tenant, user)).expect("admitted");
        self.pump();
        id
    }

    fn publish(&mut self, n: usize, env: Envelope) {
        let now = self.now();
        self.hub(n).publish(now, env).expect("accepted");
        self.pump();
    }

    /// Frames of one type a connection of node `n` received.
    fn of_type(&self, n: usize, conn: ConnId, kind: &str) -> Vec<Value> {
        self.frames[n]
            .iter()
            .filter(|(c, f)| *c == conn && f["type"] == kind)
            .map(|(_, f)| f.clone())
            .collect()
    }

    /// The `n` fields of the `note` events a connection received, in order.
    fn notes(&self, node: usize, conn: ConnId) -> Vec<u64> {
        self.of_type(node, conn, "note")
            .iter()
            .map(|f| f["data"]["n"].as_u64().expect("n"))
            .collect()
    }
}

fn note(tenant: &str, user: &str, n: u64) -> Envelope {
    Envelope::new(Target::user(tenant, user), EventKind::Custom("note".into()))
        .data(json!({ "n": n }))
}

fn seqs(frames: &[Value]) -> Vec<u64> {
    frames.iter().map(|f| f["seq"].as_u64().expect("seq")).collect()
}

#[test]
fn a_publish_on_one_node_reaches_the_users_tabs_on_every_node_once_at_the_engines_position() {
    let mut net = Net::new(2, |_| {});
    let a = net.connect(0, "acme", "alice");
    let b = net.connect(1, "acme", "alice");
    let eve = net.connect(1, "globex", "eve");
    for (n, c) in [(0, a), (1, b), (1, eve)] {
        let connected = net.of_type(n, c, "connected");
        assert_eq!(connected.len(), 1, "one connected frame, after the subscription");
    }
    net.publish(1, note("acme", "alice", 1));
    net.publish(0, note("acme", "alice", 2));
    assert_eq!(net.notes(0, a), [1, 2]);
    assert_eq!(net.notes(1, b), [1, 2]);
    assert!(net.notes(1, eve).is_empty(), "another tenant's user receives nothing");
    let frames = net.of_type(0, a, "note");
    assert_eq!(frames, net.of_type(1, b, "note"), "the same bytes on both nodes");
    assert_eq!(seqs(&frames), [1, 2]);
    let key = StreamKey::user("acme", "alice");
    assert_eq!(frames[0]["epoch"].as_u64(), Some(net.bus().top(&key).epoch));
    assert!(matches!(
        net.outcomes[..],
        [PublishOutcome::Appended { .. }, PublishOutcome::Appended { .. }]
    ));
}

#[test]
fn connected_waits_for_the_subscription_and_reports_the_true_position() {
    let mut net = Net::new(2, |_| {});
    net.connect(0, "acme", "alice");
    for n in 1..=3 {
        net.publish(0, note("acme", "alice", n));
    }
    let now = net.now();
    let b = net.hub(1).connect(now, Principal::new("acme", "alice")).expect("admitted");
    // Before the bus answers, node 1 has sent nothing to the new connection.
    while let Some(action) = net.hub(1).poll_action() {
        assert!(!matches!(action, Action::Deliver { conn, .. } if conn == b), "{action:?}");
        if let Action::Bus(op) = action {
            net.bus().submit(now, 1, *op);
        }
    }
    net.pump();
    let connected = net.of_type(1, b, "connected");
    assert_eq!(connected.len(), 1);
    assert_eq!(connected[0]["streams"]["u"]["seq"], 3, "the log's top, not a local guess");
}

#[test]
fn a_lost_live_message_is_fetched_from_the_log_before_anything_later_is_delivered() {
    let mut net = Net::new(2, |_| {});
    net.connect(0, "acme", "alice");
    let b = net.connect(1, "acme", "alice");
    net.publish(0, note("acme", "alice", 1));
    net.bus().set_message_loss(Some(1), 1_000_000);
    net.publish(0, note("acme", "alice", 2));
    net.publish(0, note("acme", "alice", 3));
    net.bus().set_message_loss(Some(1), 0);
    net.publish(0, note("acme", "alice", 4));
    assert_eq!(net.notes(1, b), [1, 2, 3, 4], "repaired in order");
    assert_eq!(seqs(&net.of_type(1, b, "note")), [1, 2, 3, 4]);
    let stats = net.hub(1).stats();
    assert_eq!(stats.bus.gaps_repaired, 1);
    assert_eq!(stats.bus.gaps_lost, 0);
}

#[test]
fn a_lost_last_message_is_found_by_the_top_check() {
    let mut net = Net::new(2, |_| {});
    net.connect(0, "acme", "alice");
    let b = net.connect(1, "acme", "alice");
    net.bus().set_message_loss(Some(1), 1_000_000);
    net.publish(0, note("acme", "alice", 1));
    net.bus().set_message_loss(Some(1), 0);
    assert!(net.notes(1, b).is_empty());
    net.advance(Duration::from_secs(46));
    assert_eq!(net.notes(1, b), [1], "the top check noticed and fetched it");
}

#[test]
fn a_gap_the_log_no_longer_holds_becomes_a_resync_never_a_silent_hole() {
    let retention = Retention { max_messages: 2, ..Retention::default() };
    let mut net = Net::new(2, |c| c.retention = retention);
    net.connect(0, "acme", "alice");
    let b = net.connect(1, "acme", "alice");
    net.publish(0, note("acme", "alice", 1));
    net.bus().set_message_loss(Some(1), 1_000_000);
    for n in 2..=5 {
        net.publish(0, note("acme", "alice", n));
    }
    net.bus().set_message_loss(Some(1), 0);
    net.publish(0, note("acme", "alice", 6));
    let resync = net.of_type(1, b, "resync");
    assert_eq!(resync.len(), 1, "{:?}", net.frames[1]);
    assert_eq!(resync[0]["reason"], "gap_too_old");
    assert_eq!(resync[0]["recovered"], false);
    assert_eq!(resync[0]["stream"], "u");
    // Live delivery goes on after the hole, in order, and only with what the log still held.
    assert_eq!(net.notes(1, b), [1, 5, 6]);
    assert_eq!(net.hub(1).stats().bus.gaps_lost, 1);
}

#[test]
fn a_client_of_a_dead_node_resumes_exactly_on_another_node_from_the_log() {
    let mut net = Net::new(2, |_| {});
    let a = net.connect(0, "acme", "alice");
    net.publish(0, note("acme", "alice", 1));
    net.publish(0, note("acme", "alice", 2));
    let seen = net.of_type(0, a, "note");
    let epoch = seen[1]["epoch"].as_u64().expect("epoch");
    // Node 0 dies with its buffers; publishes go on through node 1.
    net.c.crash(0);
    for n in 3..=5 {
        net.publish(1, note("acme", "alice", n));
    }
    let b = net.connect(1, "acme", "alice");
    let resume = json!({ "type": "resume", "positions": { "u": { "epoch": epoch, "seq": 2 } } });
    let now = net.now();
    net.hub(1).receive(now, b, resume.to_string().as_bytes()).expect("valid resume");
    net.pump();
    assert_eq!(net.notes(1, b), [3, 4, 5], "exactly what it missed");
    let resumed = net.of_type(1, b, "resumed");
    assert_eq!(resumed.len(), 1);
    assert_eq!(resumed[0]["recovered"], true, "{resumed:?}");
}

#[test]
fn while_the_bus_is_down_publishes_fail_fast_and_connections_stay_open() {
    let mut net = Net::new(2, |_| {});
    let a = net.connect(0, "acme", "alice");
    let now = net.now();
    net.bus().go_down();
    net.hub(0).bus_down(now);
    let err = net.hub(0).publish(now, note("acme", "alice", 1)).expect_err("fails fast");
    assert_eq!(err, PublishError::Bus(BusFailure::Down));
    // A new connection needs its lease in the user's cluster-wide quota: refused, not created.
    for user in ["bob", "alice"] {
        let refused = net.hub(0).connect(now, Principal::new("acme", user));
        assert_eq!(refused, Err(ConnectError::Unavailable));
    }
    assert_eq!(net.hub(0).stats().connects_refused_unavailable, 2);
    net.pump();
    assert!(net.hub(0).connection(a).is_some(), "open connections stay open");
    // Back up; then node 0's own link drops while node 1 appends, and node 0 catches up when its
    // link is back.
    net.bus().come_up();
    let now = net.now();
    net.hub(0).bus_up(now);
    net.pump();
    net.bus().disconnect(0);
    net.hub(0).bus_down(now);
    net.publish(1, note("acme", "alice", 7));
    assert!(net.notes(0, a).is_empty(), "node 0 missed it");
    net.bus().reconnect(0);
    net.hub(0).bus_up(now);
    net.pump();
    assert_eq!(net.notes(0, a), [7], "the top check after bus_up fetched it");
}

#[test]
fn an_engine_restarted_empty_tells_the_clients_to_resync() {
    let mut net = Net::new(1, |_| {});
    let a = net.connect(0, "acme", "alice");
    net.publish(0, note("acme", "alice", 1));
    let now = net.now();
    net.bus().go_down();
    net.hub(0).bus_down(now);
    net.bus().restart_empty();
    net.bus().come_up();
    net.hub(0).bus_up(now);
    net.pump();
    net.publish(0, note("acme", "alice", 2));
    let resync = net.of_type(0, a, "resync");
    assert!(!resync.is_empty(), "{:?}", net.frames[0]);
    assert_eq!(resync[0]["reason"], "epoch_changed");
    let notes = net.of_type(0, a, "note");
    assert_eq!(notes.len(), 2);
    assert_ne!(notes[0]["epoch"], notes[1]["epoch"], "a new epoch, never a reused position");
    assert_eq!(notes[1]["seq"], 1);
}

#[test]
fn a_failover_that_lost_the_tail_moves_the_stream_to_a_new_epoch() {
    let mut net = Net::new(2, |_| {});
    net.connect(0, "acme", "alice");
    let b = net.connect(1, "acme", "alice");
    for n in 1..=3 {
        net.publish(0, note("acme", "alice", n));
    }
    let key = StreamKey::user("acme", "alice");
    let old = net.bus().top(&key);
    net.bus().lose_tail(&key, 2);
    net.advance(Duration::from_secs(46));
    let resync = net.of_type(1, b, "resync");
    assert!(!resync.is_empty(), "{:?}", net.frames[1]);
    assert_eq!(resync[0]["reason"], "epoch_changed");
    let new = net.bus().top(&key);
    assert_ne!(new.epoch, old.epoch, "rotated");
    net.publish(0, note("acme", "alice", 4));
    let last = net.of_type(1, b, "note").pop().expect("delivered");
    assert_eq!((last["epoch"].as_u64(), last["seq"].as_u64()), (Some(new.epoch), Some(1)));
}

#[test]
fn a_bus_message_that_names_another_stream_is_audited_and_never_delivered() {
    let mut net = Net::new(1, |_| {});
    let a = net.connect(0, "acme", "alice");
    net.connect(0, "acme", "bob");
    net.publish(0, note("acme", "bob", 1));
    let bob = StreamKey::user("acme", "bob");
    let payload = net.bus().log(&bob)[0].payload.clone();
    // A driver bug: bob's message on alice's channel, at alice's next position.
    let alice = StreamKey::user("acme", "alice");
    let top = net.bus().top(&alice);
    let now = net.now();
    let pos = StreamPos { epoch: top.epoch.max(1), seq: top.seq + 1 };
    net.hub(0).bus_message(now, &alice, pos, &payload);
    net.pump();
    assert!(net.notes(0, a).is_empty(), "nothing of bob's reaches alice");
    assert!(net.audits.contains(&AuditKind::BusMismatch));
    assert_eq!(net.hub(0).stats().bus.mismatches, 1);
}

#[test]
fn a_duplicate_live_message_is_dropped() {
    let mut net = Net::new(1, |_| {});
    let a = net.connect(0, "acme", "alice");
    net.publish(0, note("acme", "alice", 1));
    let key = StreamKey::user("acme", "alice");
    let entry = net.bus().log(&key)[0].clone();
    let pos = StreamPos { epoch: net.bus().top(&key).epoch, seq: entry.seq };
    let now = net.now();
    net.hub(0).bus_message(now, &key, pos, &entry.payload);
    net.pump();
    assert_eq!(net.notes(0, a), [1]);
    assert_eq!(net.hub(0).stats().bus.duplicates_dropped, 1);
}

#[test]
fn a_late_reply_is_ignored_and_a_timed_out_publish_reports_failed() {
    let mut net = Net::new(1, |_| {});
    net.connect(0, "acme", "alice");
    net.bus().set_op_faults(0, 1_000_000);
    net.publish(0, note("acme", "alice", 1));
    net.bus().set_op_faults(0, 0);
    net.advance(Duration::from_secs(4));
    assert!(
        matches!(
            net.outcomes.last(),
            Some(PublishOutcome::Failed { failure: BusFailure::Retryable, .. })
        ),
        "{:?}",
        net.outcomes
    );
    assert_eq!(net.hub(0).stats().bus.op_timeouts, 1);
}

#[test]
fn rooms_and_tenant_broadcasts_span_the_nodes() {
    let mut net = Net::new(2, |_| {});
    let a = net.connect(0, "acme", "alice");
    let b = net.connect(1, "acme", "bob");
    let now = net.now();
    assert!(net.hub(0).join(now, a, "lobby").expect("joined"));
    assert!(net.hub(1).join(now, b, "lobby").expect("joined"));
    net.pump();
    assert_eq!(net.of_type(0, a, "joined").len(), 1, "joined once the room's stream is known");
    let room = Envelope::new(Target::room("acme", "lobby"), EventKind::Custom("note".into()))
        .data(json!({ "n": 10 }));
    net.publish(0, room);
    let all = Envelope::new(Target::tenant("acme"), EventKind::Custom("note".into()))
        .data(json!({ "n": 20 }));
    net.publish(1, all);
    assert_eq!(net.notes(0, a), [10, 20]);
    assert_eq!(net.notes(1, b), [10, 20]);
}

#[test]
fn connection_targets_are_node_local_and_everyone_is_refused() {
    let mut net = Net::new(2, |_| {});
    net.connect(0, "acme", "carol");
    let a = net.connect(0, "acme", "alice");
    let a2 = net.connect(1, "acme", "alice");
    let now = net.now();
    // A connection id names a connection of its own node only: node 1 has no such connection.
    let elsewhere =
        net.hub(1).publish(now, Envelope::new(Target::Connection(a), EventKind::AgentStarted));
    assert!(matches!(elsewhere, Err(PublishError::Conn(_))), "{elsewhere:?}");
    let everyone =
        net.hub(0).publish(now, Envelope::new(Target::Everyone, EventKind::AgentStarted));
    assert_eq!(everyone, Err(PublishError::EveryoneInCluster));
    // On its own node it reaches exactly that connection, not the user's tab on the other node
    // (even where that node has a connection with the same id).
    let only = Envelope::new(Target::Connection(a), EventKind::Custom("note".into()))
        .data(json!({ "n": 1 }));
    net.publish(0, only);
    assert_eq!(net.notes(0, a), [1]);
    assert!(net.notes(1, a2).is_empty());
}

fn one_connection_per_user(cfg: &mut Config) {
    let t = &mut cfg.tiers;
    for q in [&mut t.free, &mut t.early, &mut t.mid, &mut t.enterprise] {
        q.max_connections_per_user = 1;
    }
}

#[test]
fn the_per_user_quota_holds_across_nodes() {
    let mut net = Net::new(2, one_connection_per_user);
    let a = net.connect(0, "acme", "alice");
    let b = net.connect(1, "acme", "alice");
    assert_eq!(net.of_type(0, a, "connected").len(), 1);
    assert!(net.of_type(1, b, "connected").is_empty(), "refused before connected");
    assert!(net.hub(1).connection(b).is_none());
    assert_eq!(net.hub(1).stats().closed_by.user_limit, 1);
    let key = StreamKey::user("acme", "alice");
    assert_eq!(net.c.bus.leases(&key, net.c.now), 1);
    // Closing the first gives its place back.
    let now = net.now();
    net.hub(0).disconnect(now, a, switchboard::DisconnectReason::Clean).expect("open");
    net.pump();
    assert_eq!(net.c.bus.leases(&key, net.c.now), 0);
    let c = net.connect(1, "acme", "alice");
    assert_eq!(net.of_type(1, c, "connected").len(), 1);
}

#[test]
fn evict_oldest_closes_the_oldest_connection_on_whichever_node_it_is() {
    let mut net = Net::new(2, |c| {
        one_connection_per_user(c);
        c.user_limit_policy = switchboard::UserLimitPolicy::EvictOldest;
    });
    let a = net.connect(0, "acme", "alice");
    let b = net.connect(1, "acme", "alice");
    assert_eq!(net.of_type(1, b, "connected").len(), 1);
    assert!(net.hub(0).connection(a).is_none(), "the oldest, on the other node, was replaced");
    assert_eq!(net.hub(0).stats().closed_by.replaced, 1);
    assert_eq!(net.c.bus.leases(&StreamKey::user("acme", "alice"), net.c.now), 1);
}

#[test]
fn a_dead_nodes_leases_expire_and_live_ones_are_renewed() {
    let mut net = Net::new(2, one_connection_per_user);
    let a = net.connect(0, "acme", "alice");
    let key = StreamKey::user("acme", "alice");
    // Renewals keep the lease past its lifetime while the node lives.
    net.advance(Duration::from_secs(95));
    assert!(net.hub(0).connection(a).is_some());
    assert_eq!(net.c.bus.leases(&key, net.c.now), 1);
    // The node dies: its lease is gone within one lifetime, and the user may connect elsewhere.
    net.c.crash(0);
    let early = net.connect(1, "acme", "alice");
    assert!(net.hub(1).connection(early).is_none(), "the dead node's lease still counts");
    net.advance(Duration::from_secs(31));
    let b = net.connect(1, "acme", "alice");
    assert_eq!(net.of_type(1, b, "connected").len(), 1);
}

#[test]
fn lease_renewals_are_spread_over_the_period_in_small_slices() {
    // Renewed in one go, 320 leases reach the engine as one burst of scripts every period.
    let mut net = Net::new(1, |_| {});
    let users = 320;
    for u in 0..users {
        net.connect(0, "acme", &format!("u{u}"));
    }
    let before = net.bus().stats().leases_renewed;
    // The default lease ttl is 30 s: one renewal period is 10 s.
    net.advance(Duration::from_secs(10));
    let stats = net.bus().stats();
    assert_eq!(stats.leases_renewed - before, users, "each lease once per period");
    assert!(stats.largest_renewal <= 2 * users / 32, "a slice, not all: {}", stats.largest_renewal);
    // And so on, period after period; every lease lives.
    net.advance(Duration::from_secs(60));
    assert_eq!(net.bus().stats().leases_renewed - before, 7 * users);
    for u in 0..users {
        assert_eq!(net.c.bus.leases(&StreamKey::user("acme", format!("u{u}")), net.now()), 1);
    }
}

#[test]
fn a_resume_waiting_for_the_bus_outlives_its_resume_window_without_spinning() {
    // Found by the `cluster` fuzzer: the expired window kept the connection's timer due.
    let mut net = Net::new(2, |c| c.resume_window = Duration::from_millis(800));
    net.publish(0, Envelope::new(Target::tenant("acme"), EventKind::AgentStarted));
    let a = net.connect(0, "acme", "alice");
    let connected = net.of_type(0, a, "connected").pop().expect("connected");
    let epoch = connected["streams"]["t"]["epoch"].as_u64().expect("epoch");
    net.bus().disconnect(0);
    net.pump();
    let resume = json!({ "type": "resume", "positions": { "t": { "epoch": epoch, "seq": 0 } } });
    let now = net.now();
    net.hub(0).receive(now, a, resume.to_string().as_bytes()).expect("valid resume");
    net.pump();
    // Past the window, the connection's next deadline is in the future again (the harness's
    // `advance` asserts that nothing stays due after a drive loop).
    net.advance(Duration::from_secs(2));
    let next = net.hub(0).poll_timeout().expect("armed");
    assert!(next > net.now(), "a deadline stays due: {next:?}");
    // After `resume_wait` the resume is answered without the log.
    net.advance(Duration::from_secs(4));
    let resumed = net.of_type(0, a, "resumed");
    assert_eq!(resumed.len(), 1);
    assert_eq!(resumed[0]["recovered"], false);
}

#[test]
fn a_resume_waits_for_a_room_being_set_up_and_then_fetches_it_from_the_log() {
    // Found by the cluster simulation: the room's true position was not known yet when the
    // resume chose what to fetch.
    let mut net = Net::new(2, |_| {});
    let a = net.connect(0, "acme", "alice");
    let now = net.now();
    net.hub(0).join(now, a, "lobby").expect("joined");
    net.pump();
    let room = |n| {
        Envelope::new(Target::room("acme", "lobby"), EventKind::Custom("note".into()))
            .data(json!({ "n": n }))
    };
    for n in 1..=2 {
        net.publish(0, note("acme", "alice", n));
        net.publish(0, room(10 + n));
    }
    let u = net.of_type(0, a, "note")[0]["epoch"].as_u64().expect("epoch");
    let r = net.of_type(0, a, "note")[1]["epoch"].as_u64().expect("epoch");
    // Node 1 has never seen the room: it is set up while the resume waits.
    let now = net.now();
    let b = net.hub(1).connect(now, Principal::new("acme", "alice")).expect("admitted");
    net.hub(1).join(now, b, "lobby").expect("joined");
    let resume = json!({ "type": "resume", "positions": {
        "u": { "epoch": u, "seq": 1 }, "r:lobby": { "epoch": r, "seq": 1 } } });
    net.pump();
    let now = net.now();
    net.hub(1).receive(now, b, resume.to_string().as_bytes()).expect("valid resume");
    net.pump();
    assert_eq!(net.notes(1, b), [2, 12], "both streams replayed from the log");
    let resumed = net.of_type(1, b, "resumed");
    assert_eq!(resumed.len(), 1);
    assert_eq!(resumed[0]["recovered"], true, "{resumed:?}");
}

#[test]
fn positions_handed_out_twice_after_a_tail_loss_become_a_new_epoch_not_a_silent_hole() {
    // Found by the cluster simulation: the reused seqs were dropped as duplicates.
    let mut net = Net::new(2, |_| {});
    net.connect(0, "acme", "alice");
    let b = net.connect(1, "acme", "alice");
    for n in 1..=3 {
        net.publish(0, note("acme", "alice", n));
    }
    let key = StreamKey::user("acme", "alice");
    net.bus().lose_tail(&key, 2);
    for n in 4..=6 {
        net.publish(0, note("acme", "alice", n));
    }
    let resync = net.of_type(1, b, "resync");
    assert!(!resync.is_empty(), "{:?}", net.frames[1]);
    assert_eq!(resync[0]["reason"], "epoch_changed");
    // Whatever reached the client after 3 is in a new epoch: nothing at a reused position.
    let notes = net.of_type(1, b, "note");
    let first_epoch = &notes[0]["epoch"];
    for f in &notes[3..] {
        assert_ne!(&f["epoch"], first_epoch, "{f}");
    }
}

#[test]
fn operations_in_flight_are_bounded_and_a_publish_beyond_them_fails_typed() {
    let mut net = Net::new(1, |c| {
        if let Some(cluster) = c.cluster.as_mut() {
            cluster.max_inflight_ops = 3;
        }
    });
    net.connect(0, "acme", "alice");
    // The bus answers nothing for a while: appends stay in flight.
    let until = net.now() + Duration::from_secs(1);
    net.bus().hold(Some(0), until);
    let now = net.now();
    let mut results = Vec::new();
    for n in 1..=5 {
        results.push(net.hub(0).publish(now, note("acme", "alice", n)).map(|p| p.op.is_some()));
    }
    assert_eq!(results[..3], [Ok(true), Ok(true), Ok(true)]);
    assert_eq!(
        results[3..],
        [
            Err(PublishError::Bus(BusFailure::Overloaded)),
            Err(PublishError::Bus(BusFailure::Overloaded))
        ]
    );
    assert_eq!(net.hub(0).stats().bus.in_flight, 3);
}

#[test]
fn messages_held_behind_a_gap_are_bounded_and_the_gap_given_up_with_a_resync() {
    let mut net = Net::new(2, |c| {
        if let Some(cluster) = c.cluster.as_mut() {
            cluster.max_held_per_stream = 2;
        }
    });
    net.connect(0, "acme", "alice");
    let b = net.connect(1, "acme", "alice");
    net.bus().set_message_loss(Some(1), 1_000_000);
    net.publish(0, note("acme", "alice", 1));
    net.bus().set_message_loss(Some(1), 0);
    // Node 1 reads nothing until 2..=5 are all queued: 2 and 3 are held, 4 overflows.
    let until = net.now() + Duration::from_secs(1);
    net.bus().hold(Some(1), until);
    for n in 2..=5 {
        net.publish(0, note("acme", "alice", n));
    }
    net.advance(Duration::from_secs(2));
    let resync = net.of_type(1, b, "resync");
    assert_eq!(resync.len(), 1, "{:?}", net.frames[1]);
    assert_eq!(resync[0]["reason"], "gap_too_old");
    assert!(net.hub(1).stats().bus.gaps_lost >= 1);
    // What was delivered is in order and unique.
    let seqs = seqs(&net.of_type(1, b, "note"));
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert_eq!(seqs.last(), Some(&5));
}

#[test]
fn a_cluster_configuration_that_makes_no_sense_is_refused_by_name() {
    use switchboard::ConfigError;
    type Spoil = fn(&mut ClusterConfig);
    let cases: [(&str, Spoil); 4] = [
        ("cluster.node", |c| c.node = "".into()),
        ("cluster.op_timeout", |c| c.op_timeout = Duration::ZERO),
        ("cluster.max_inflight_ops", |c| c.max_inflight_ops = 0),
        ("cluster.max_held_per_stream", |c| c.max_held_per_stream = 0),
    ];
    for (field, spoil) in cases {
        let mut cluster = ClusterConfig::new("n0");
        spoil(&mut cluster);
        let cfg = Config { cluster: Some(cluster), ..Config::default() };
        assert_eq!(Hub::new(cfg).err(), Some(ConfigError::Zero { field }), "{field}");
    }
}

#[test]
fn runs_and_exclusions_travel_on_the_bus_and_each_node_applies_them() {
    let mut net = Net::new(2, |cfg| cfg.tiers.free.max_connections_per_user = 4);
    let watcher = net.connect(0, "acme", "alice");
    let sender = net.connect(0, "acme", "alice");
    let other_run = net.connect(1, "acme", "alice");
    let everything = net.connect(1, "acme", "alice");
    let now = net.now();
    let subscribe = |run: &str| format!(r#"{{"type":"subscribe","run_id":"{run}"}}"#);
    net.hub(0).receive(now, watcher, subscribe("r1").as_bytes()).expect("subscribed");
    net.hub(1).receive(now, other_run, subscribe("r2").as_bytes()).expect("subscribed");
    net.pump();
    let step = |n: u64| {
        Envelope::new(Target::run("acme", "alice", "r1"), EventKind::Custom("note".into()))
            .data(json!({ "n": n }))
    };
    net.publish(1, step(1));
    // Published on node 0 leaving out one of its own connections; node 1's connection that
    // happens to have the same local id is not left out.
    net.publish(0, step(2).exclude(sender));
    assert_eq!(net.notes(0, watcher), [1, 2]);
    assert_eq!(net.notes(0, sender), [1]);
    assert!(net.notes(1, other_run).is_empty(), "narrowed to another run");
    assert_eq!(net.notes(1, everything), [1, 2]);
    let mismatch = Envelope::new(Target::run("acme", "alice", "r1"), EventKind::AgentStarted);
    let refused = net.hub(0).publish(now, mismatch.run("r2"));
    assert_eq!(refused, Err(PublishError::RunMismatch));
}

#[test]
fn history_comes_from_the_log_where_the_node_has_not_buffered_it() {
    let mut net = Net::new(2, |_| {});
    let early = net.connect(0, "acme", "alice");
    for n in 1..=5 {
        net.publish(0, note("acme", "alice", n));
    }
    assert_eq!(net.notes(0, early), [1, 2, 3, 4, 5]);
    // Node 1 starts following alice's stream only now: its buffer holds nothing older.
    let late = net.connect(1, "acme", "alice");
    net.publish(1, note("acme", "alice", 6));
    let now = net.now();
    let ask = br#"{"type":"history","stream":"u","limit":4,"id":"h"}"#;
    net.hub(1).receive(now, late, ask).expect("a valid request");
    let busy = net.hub(1).receive(now, late, ask);
    assert!(busy.is_err(), "one request waits for the log at a time: {busy:?}");
    net.pump();
    let answers = net.of_type(1, late, "history");
    assert_eq!(answers.len(), 1, "{answers:?}");
    let got: Vec<u64> = answers[0]["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["data"]["n"].as_u64().expect("n"))
        .collect();
    assert_eq!(got, [3, 4, 5, 6]);
    assert_eq!((answers[0]["more"].as_bool(), answers[0]["id"].as_str()), (Some(true), Some("h")));
    // The node that buffered everything answers at once, without the log.
    net.hub(0).receive(now, early, br#"{"type":"history","stream":"u","limit":2}"#).unwrap();
    net.pump();
    assert_eq!(net.of_type(0, early, "history")[0]["messages"].as_array().map(Vec::len), Some(2));
}

#[test]
fn a_kick_reaches_the_users_connections_on_every_node() {
    let mut net = Net::new(2, |_| {});
    let here = net.connect(0, "acme", "alice");
    let there = net.connect(1, "acme", "alice");
    let bob = net.connect(1, "acme", "bob");
    let now = net.now();
    let closed = net.hub(0).kick_user(now, &"acme".into(), &"alice".into());
    assert_eq!(closed, 1, "this node's own");
    net.pump();
    assert!(net.hub(0).connection(here).is_none());
    assert!(net.hub(1).connection(there).is_none(), "the other node closed its own too");
    assert!(net.hub(1).connection(bob).is_some());
    assert_eq!(
        net.hub(1)
            .stats()
            .closed_by
            .get(switchboard::ClosedBy::Hub(switchboard::CloseReason::Kicked)),
        1
    );
}
