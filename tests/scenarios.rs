//! The origin documents' scenarios (seeds 001 and 004), through the public API only, on a virtual
//! clock: isolation of many users' agent events, tenant and role scoped broadcasts, stale ids
//! after slot reuse, cleanup of one user, churn that leaves no trace, and connection limits. The
//! scenarios about sessions and their routing live in `tests/sessions.rs`.
mod common;
mod scenario_support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use common::*;
use scenario_support::*;
use serde_json::json;
use switchboard::{
    Action, Audience, AuditKind, CloseReason, Config, ConnError, ConnId, ConnectError,
    DisconnectReason, Envelope, EventKind, LimitKind, MetricEvent, Principal, PublishError,
    ReceiveError, RefreshError, RoomError, RoomId, Target, Tier, UserPhase,
};

// ---------------------------------------------------------------------------------------------
// 1. Isolation of agent events (seed 004: "25 users x 2 connections each"; seed 001:
//    "test_message_cross_contamination")

#[test]
fn twenty_five_users_two_connections_each_receive_only_their_own_events() {
    let mut sim = Sim::default();
    // 25 users of `acme`, and 5 users of `globex` who reuse the first five user names: the same
    // `UserId` in another tenant is another user.
    let mut users: Vec<(String, String)> =
        (0..25).map(|i| ("acme".to_owned(), format!("user-{i:02}"))).collect();
    users.extend((0..5).map(|i| ("globex".to_owned(), format!("user-{i:02}"))));

    let mut owner_of: HashMap<ConnId, (String, String)> = HashMap::new();
    let mut conns_of: BTreeMap<(String, String), Vec<ConnId>> = BTreeMap::new();
    for (tenant, user) in &users {
        for _ in 0..2 {
            let id = sim.connect(tenant, user);
            assert!(owner_of.insert(id, (tenant.clone(), user.clone())).is_none(), "ids unique");
            conns_of.entry((tenant.clone(), user.clone())).or_default().push(id);
        }
    }
    assert_eq!(owner_of.len(), 60);
    assert_eq!(sim.hub.stats().connections_active, 60);
    assert_eq!(sim.hub.stats().users_active, 30);
    assert_eq!(sim.hub.stats().tenants, 2);

    // Interleave the runs: every user's first event, then every user's second, and so on. Half
    // of the users are addressed by thread, half as a whole user with the thread on the envelope.
    let mut actions = Vec::new();
    for (kind, _) in AGENT_EVENTS.iter() {
        for (n, (tenant, user)) in users.iter().enumerate() {
            let thread = format!("thread-{tenant}-{user}");
            let run = format!("run-{tenant}-{user}");
            let target = if n % 2 == 0 {
                thread_target(tenant, user, &thread)
            } else {
                user_target(tenant, user)
            };
            let env = Envelope::new(target, kind.clone())
                .thread(thread.as_str())
                .run(run.as_str())
                .data(json!({ "owner": format!("{tenant}/{user}") }));
            let (published, out) = publish(&mut sim, env);
            assert_eq!(published.delivered, 2, "both of {tenant}/{user}'s connections");
            actions.extend(out);
        }
    }

    // No event of anyone else anywhere: every delivery carries its recipient's own run.
    let all = deliveries(&actions);
    assert_eq!(all.len(), 30 * 2 * 5);
    for (conn, frame) in &all {
        let (tenant, user) = owner_of.get(conn).expect("delivered to a known connection");
        assert_eq!(frame["data"]["owner"], format!("{tenant}/{user}"), "cross-user delivery");
    }

    // Every connection got exactly its user's five events, in order, on its user's stream.
    let expected_types: Vec<&str> = AGENT_EVENTS.iter().map(|(_, name)| *name).collect();
    for ((tenant, user), conns) in &conns_of {
        let mut epochs = BTreeSet::new();
        for &conn in conns {
            let frames = frames_for(&actions, conn);
            let types: Vec<&str> = frames.iter().map(|f| f["type"].as_str().unwrap()).collect();
            assert_eq!(types, expected_types, "{tenant}/{user} on {conn}");
            for (i, f) in frames.iter().enumerate() {
                assert_eq!(f["stream"], "u");
                assert_eq!(f["seq"], (i + 1) as u64, "user stream seqs 1..=5 without gaps");
                assert_eq!(f["thread_id"], format!("thread-{tenant}-{user}"));
                assert_eq!(f["run_id"], format!("run-{tenant}-{user}"));
                epochs.insert(f["epoch"].as_u64().expect("epoch is a number"));
            }
        }
        assert_eq!(epochs.len(), 1, "one stream per user, shared by its connections");
        let view = sim.hub.user(tenant, user).expect("user held");
        assert_eq!(view.stream_position().seq, 5);
        assert_eq!(view.connections().collect::<Vec<_>>(), *conns);
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Scoped broadcasts (seed 001: "test_broadcast_reaches_all_users", "Broadcast Information
//    Leakage: admin data leaked to regular users")

#[test]
fn tenant_broadcast_reaches_only_its_tenant_and_role() {
    let mut sim = Sim::default();
    let alice = sim.connect_as(Principal::new("acme", "alice").roles(["admin"]));
    let alice2 = sim.connect_as(Principal::new("acme", "alice").roles(["admin"]));
    let bob = sim.connect_as(Principal::new("acme", "bob").roles(["viewer"]));
    let carol = sim.connect_as(Principal::new("acme", "carol").roles(["viewer", "admin"]));
    let dave = sim.connect("acme", "dave");
    let eve = sim.connect_as(Principal::new("globex", "eve").roles(["admin"]));
    let frank = sim.connect("globex", "frank");
    let acme = [alice, alice2, bob, carol, dave];
    let globex = [eve, frank];

    let broadcast = |tenant: &str, audience: Audience, note: &str| {
        Envelope::new(
            Target::Tenant { tenant: tenant.into(), audience },
            EventKind::custom("notice"),
        )
        .data(json!({ "note": note }))
    };

    // Everyone of acme, nobody of globex.
    let (p, actions) = publish(&mut sim, broadcast("acme", Audience::All, "acme-all"));
    assert_eq!(p.delivered, acme.len());
    for &c in &acme {
        let frames = frames_for(&actions, c);
        assert_eq!(frames.len(), 1, "{c} gets the acme broadcast once");
        assert_eq!(frames[0]["type"], "notice");
        assert_eq!(frames[0]["stream"], "t");
        assert_eq!(frames[0]["seq"], 1);
        assert_eq!(frames[0]["data"]["note"], "acme-all");
    }
    for &c in &globex {
        assert!(frames_for(&actions, c).is_empty(), "{c} of globex got an acme broadcast");
    }
    assert_eq!(deliveries(&actions).len(), acme.len());

    // Admins of acme only: alice (both connections) and carol.
    let (p, actions) = publish(&mut sim, broadcast("acme", Audience::Role("admin".into()), "adm"));
    assert_eq!(p.delivered, 3);
    let got: BTreeSet<ConnId> = deliveries(&actions).into_iter().map(|(c, _)| c).collect();
    assert_eq!(got, BTreeSet::from([alice, alice2, carol]));
    for (_, f) in deliveries(&actions) {
        assert_eq!(f["seq"], 2, "role broadcasts share the tenant stream");
        assert_eq!(f["data"]["note"], "adm");
    }

    // Viewers: bob and carol.
    let (p, actions) = publish(&mut sim, broadcast("acme", Audience::Role("viewer".into()), "v"));
    assert_eq!(p.delivered, 2);
    let got: BTreeSet<ConnId> = deliveries(&actions).into_iter().map(|(c, _)| c).collect();
    assert_eq!(got, BTreeSet::from([bob, carol]));

    // A role nobody holds reaches nobody.
    let (p, actions) = publish(&mut sim, broadcast("acme", Audience::Role("auditor".into()), "x"));
    assert_eq!(p.delivered, 0);
    assert!(p.undeliverable());
    assert!(!any_delivery(&actions));

    // Globex admins: eve only; its tenant stream is its own (seq 1).
    let (p, actions) = publish(&mut sim, broadcast("globex", Audience::Role("admin".into()), "g"));
    assert_eq!(p.delivered, 1);
    let frames = frames_for(&actions, eve);
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0]["seq"], 1);
    assert_eq!(deliveries(&actions).len(), 1);

    // A tenant the hub has never seen: nothing is delivered, nothing is created.
    let (p, actions) = publish(&mut sim, broadcast("initech", Audience::All, "nobody"));
    assert!(p.undeliverable());
    assert!(!any_delivery(&actions));
    assert_eq!(sim.hub.stats().tenants, 2);

    // Global broadcast is off by default: refused, audited, and nobody receives anything.
    let err = sim.hub.publish(sim.now, Envelope::new(Target::Everyone, EventKind::AgentStarted));
    assert_eq!(err, Err(PublishError::GlobalBroadcastDisabled));
    let actions = sim.drain();
    assert!(!any_delivery(&actions));
    assert_eq!(audits(&actions), vec![AuditKind::GlobalBroadcastDenied]);
}

#[test]
fn global_broadcast_when_allowed_reaches_every_tenant_once_and_is_audited() {
    let mut sim = Sim::new(Config { allow_global_broadcast: true, ..Config::default() });
    let a = sim.connect("acme", "alice");
    let b = sim.connect("globex", "bob");
    let c = sim.connect("globex", "carol");
    let env = Envelope::new(Target::Everyone, EventKind::custom("maintenance"));
    let (p, actions) = publish(&mut sim, env);
    assert_eq!(p.delivered, 3);
    for conn in [a, b, c] {
        assert_eq!(types_for(&actions, conn), vec!["maintenance"]);
    }
    assert_eq!(audits(&actions), vec![AuditKind::GlobalBroadcast]);
}

// ---------------------------------------------------------------------------------------------
// 3. Stale ids (seed 001: "Connection Hijacking", "test_connection_hijacking_possibility")

#[test]
fn stale_id_after_slot_reuse_cannot_hijack() {
    let mut sim = Sim::default();
    let _bystander = sim.connect("acme", "carol");
    let old = sim.connect("acme", "alice");
    sim.hub.disconnect(sim.now, old, DisconnectReason::Clean).unwrap();
    sim.drain();

    // Another user's connection takes the freed slot.
    let new = sim.connect("acme", "mallory-victim");
    assert_ne!(old, new);
    assert_eq!(
        old.to_u64() & 0xffff_ffff,
        new.to_u64() & 0xffff_ffff,
        "the scenario needs the slot to be reused (same index, new generation)"
    );
    let new_open_at = sim.now;
    let unwritten_before = sim.hub.connection(new).unwrap().unwritten_bytes();
    assert!(unwritten_before > 0, "the connected frame is not written yet");

    // Later, the stale id is used for everything a caller can do with an id.
    sim.now += Duration::from_secs(5);
    let now = sim.now;
    let stale = ConnError::Stale;

    let env = Envelope::new(Target::Connection(old), EventKind::AgentStarted)
        .data(json!({ "secret_for": "alice" }));
    assert_eq!(sim.hub.publish(now, env), Err(PublishError::Conn(stale)));
    let msg = br#"{"type":"message","thread_id":"t1","data":{"text":"hi"}}"#;
    assert_eq!(sim.hub.receive(now, old, msg), Err(ReceiveError::Conn(stale)));
    assert_eq!(sim.hub.written(now, old, 1 << 20), Err(stale));
    assert_eq!(sim.hub.join(now, old, RoomId::from("ops")), Err(RoomError::Conn(stale)));
    let later = Some(now + Duration::from_secs(3600));
    assert_eq!(sim.hub.refresh(now, old, later), Err(RefreshError::Conn(stale)));
    assert_eq!(sim.hub.pong(now, old), Err(stale));
    assert_eq!(sim.hub.leave(now, old, "ops"), Err(stale));
    assert_eq!(sim.hub.disconnect(now, old, DisconnectReason::Abnormal), Err(stale));
    assert_eq!(sim.hub.close(now, old, CloseReason::Kicked), Err(stale));
    const ATTEMPTS: usize = 9;

    let actions = sim.drain();
    // Every attempt is audited, naming the id that was presented; nothing else happened.
    let events = audit_events(&actions);
    assert_eq!(events.len(), ATTEMPTS);
    for e in &events {
        assert_eq!(e.kind, AuditKind::StaleConnId);
        assert_eq!(e.conn, Some(old));
    }
    assert!(!any_delivery(&actions), "nothing may be delivered because of a stale id");
    assert!(closes(&actions).is_empty());
    assert!(!actions.iter().any(|a| matches!(a, Action::Inbound(_))));
    assert_eq!(actions.len(), ATTEMPTS, "audits only: {actions:?}");
    assert_eq!(sim.hub.stats().stale_ids_refused, ATTEMPTS as u64);

    // The new occupant is untouched: open, no room, no session change, liveness not refreshed by
    // the stale pong/receive, its unwritten bytes not reduced by the stale `written`.
    let view = sim.hub.connection(new).expect("the new occupant stays open");
    assert_eq!(view.user().as_str(), "mallory-victim");
    assert_eq!(view.rooms().count(), 0);
    assert_eq!(view.expires_at(), None);
    assert_eq!(view.last_seen(), new_open_at);
    assert_eq!(view.unwritten_bytes(), unwritten_before);
    assert_eq!(sim.hub.stats().rooms, 0);
    assert_eq!(sim.hub.stats().connections_active, 2);
    assert!(sim.hub.connection(old).is_none());
    // The stale publish did not consume a position on anyone's stream.
    assert_eq!(sim.hub.user("acme", "mallory-victim").unwrap().stream_position().seq, 0);
    assert_eq!(sim.hub.user("acme", "alice").unwrap().stream_position().seq, 0);

    // And it still receives its own events normally.
    let actions = sim.publish_to_user("acme", "mallory-victim", EventKind::AgentStarted);
    let frames = frames_for(&actions, new);
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0]["seq"], 1);
    let event_bytes = match &actions[..] {
        [Action::Deliver { frame, .. }] => frame.len() as u64,
        other => panic!("one delivery expected: {other:?}"),
    };
    assert_eq!(sim.hub.connection(new).unwrap().unwritten_bytes(), unwritten_before + event_bytes);
    // Its own id works for what the stale one was refused.
    sim.hub.pong(sim.now, new).unwrap();
    assert_eq!(sim.hub.connection(new).unwrap().last_seen(), sim.now);
    sim.hub.written(sim.now, new, event_bytes as usize).unwrap();
    assert_eq!(sim.hub.connection(new).unwrap().unwritten_bytes(), unwritten_before);
    assert!(sim.hub.join(sim.now, new, RoomId::from("ops")).unwrap());
    assert_eq!(types_for(&sim.drain(), new), vec!["joined"], "only its own join's announcement");
}

// ---------------------------------------------------------------------------------------------
// 4. Cleanup of one user (seed 001: "test_cleanup_affects_wrong_users")

#[test]
fn cleaning_up_one_user_leaves_others_untouched() {
    let mut sim = Sim::default();
    let retention = sim.hub.config().user_retention;
    let a1 = sim.connect("acme", "alice");
    let a2 = sim.connect("acme", "alice");
    let b1 = sim.connect("acme", "bob");
    let b2 = sim.connect("acme", "bob");
    let c1 = sim.connect("acme", "carol");
    let g1 = sim.connect("globex", "alice"); // another tenant's alice

    // Give everyone some state: bob narrows b2 to a thread, rooms, stream history.
    sim.hub.receive(sim.now, b2, br#"{"type":"subscribe","thread_id":"t-bob"}"#).unwrap();
    for (c, room) in [(a1, "ops"), (b1, "ops"), (c1, "ops"), (a2, "alice-only")] {
        assert!(sim.hub.join(sim.now, c, RoomId::from(room)).unwrap());
    }
    assert_eq!(sim.hub.stats().rooms, 2);
    for (t, u) in [("acme", "alice"), ("acme", "bob"), ("acme", "carol"), ("globex", "alice")] {
        sim.publish_to_user(t, u, EventKind::AgentStarted);
        sim.publish_to_user(t, u, EventKind::AgentCompleted);
    }
    sim.drain();
    let bob_pos = sim.hub.user("acme", "bob").unwrap().stream_position();
    let carol_pos = sim.hub.user("acme", "carol").unwrap().stream_position();
    let g_pos = sim.hub.user("globex", "alice").unwrap().stream_position();
    assert_eq!(bob_pos.seq, 2);

    // Alice leaves: one clean close, one abnormal.
    sim.hub.disconnect(sim.now, a1, DisconnectReason::Clean).unwrap();
    sim.hub.disconnect(sim.now, a2, DisconnectReason::Abnormal).unwrap();
    let detached_at = sim.now;
    let actions = sim.drain();
    assert!(closes(&actions).is_empty(), "a transport disconnect emits no Close");
    assert_eq!(sim.hub.stats().rooms, 1, "alice's private room is dropped, ops stays");
    match sim.hub.user("acme", "alice").expect("kept for retention").phase() {
        UserPhase::Detached { since, retires_at } => {
            assert_eq!(since, detached_at);
            assert_eq!(retires_at, detached_at + retention);
        }
        other => panic!("alice has no connection left, yet she is {other:?}"),
    }
    assert_eq!(sim.hub.stats().users_detached, 1);

    // Retention runs out while the others stay alive (they answer their pings).
    let others = [b1, b2, c1, g1];
    let actions = run_until(&mut sim, detached_at + retention + Duration::from_secs(1), &others);
    assert!(closes(&actions).is_empty(), "nobody else was closed: {:?}", closes(&actions));
    let retired: Vec<_> = metrics(&actions)
        .into_iter()
        .filter_map(|m| match m {
            MetricEvent::UserRetired { tenant, user } => Some((tenant, user)),
            _ => None,
        })
        .collect();
    assert_eq!(retired, vec![("acme".into(), "alice".into())]);
    assert!(sim.hub.user("acme", "alice").is_none());
    assert!(sim.hub.connection(a1).is_none() && sim.hub.connection(a2).is_none());

    // Everyone else is intact: connections, filters, rooms, streams.
    let s = sim.hub.stats();
    assert_eq!(s.connections_active, 4);
    assert_eq!(s.users_active, 3);
    assert_eq!(s.users_detached, 0);
    assert_eq!(s.users_retired, 1);
    assert_eq!(s.tenants, 2);
    assert_eq!(s.rooms, 1);
    let bob = sim.hub.user("acme", "bob").unwrap();
    assert_eq!(bob.connections().collect::<Vec<_>>(), vec![b1, b2]);
    assert_eq!(bob.stream_position(), bob_pos);
    assert_eq!(sim.hub.user("acme", "carol").unwrap().stream_position(), carol_pos);
    assert_eq!(sim.hub.user("globex", "alice").unwrap().stream_position(), g_pos);
    let b2_view = sim.hub.connection(b2).unwrap();
    assert_eq!(b2_view.threads().map(|t| t.len()), Some(1));
    assert_eq!(sim.hub.connection(b1).unwrap().rooms().count(), 1);
    assert_eq!(sim.hub.connection(c1).unwrap().rooms().count(), 1);

    // They still receive their events, continuing their streams.
    let env = Envelope::new(user_target("acme", "bob"), EventKind::ToolExecuting).thread("t-bob");
    let (p, actions) = publish(&mut sim, env);
    assert_eq!(p.delivered, 2);
    for c in [b1, b2] {
        let f = frames_for(&actions, c);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0]["seq"], bob_pos.seq + 1);
        assert_eq!(f[0]["epoch"], bob_pos.epoch);
    }
    let actions = sim.publish_to_user("globex", "alice", EventKind::AgentStarted);
    assert_eq!(types_for(&actions, g1), vec!["agent_started"]);
    assert_eq!(frames_for(&actions, g1)[0]["seq"], g_pos.seq + 1);
    let (p, actions) = publish(
        &mut sim,
        Envelope::new(
            Target::Room { tenant: "acme".into(), room: "ops".into() },
            EventKind::custom("standup"),
        ),
    );
    assert_eq!(p.delivered, 2);
    let got: BTreeSet<ConnId> = deliveries(&actions).into_iter().map(|(c, _)| c).collect();
    assert_eq!(got, BTreeSet::from([b1, c1]));

    // The retired user receives nothing, and publishing to it creates nothing.
    let undelivered_before = sim.hub.stats().undeliverable;
    let (p, actions) =
        publish(&mut sim, Envelope::new(user_target("acme", "alice"), EventKind::AgentStarted));
    assert!(p.undeliverable());
    assert_eq!(p.position, None);
    assert!(!any_delivery(&actions));
    assert!(sim.hub.user("acme", "alice").is_none());
    assert_eq!(sim.hub.stats().undeliverable, undelivered_before + 1);
    let (p, actions) = publish(
        &mut sim,
        Envelope::new(
            Target::Room { tenant: "acme".into(), room: "alice-only".into() },
            EventKind::AgentStarted,
        ),
    );
    assert!(p.undeliverable());
    assert!(!any_delivery(&actions));
}

// ---------------------------------------------------------------------------------------------
// 5. Churn (seed 004: "Proper cleanup after 1000+ connect/disconnect cycles"; seed 001:
//    "test_memory_leak_accumulation")

/// What the test believes the hub holds.
#[derive(Default)]
struct Model {
    /// Open connections: id -> (tenant, user, rooms).
    open: BTreeMap<ConnId, (String, String, BTreeSet<String>)>,
    /// User states: (tenant, user) -> (open connections, detached since).
    users: BTreeMap<(String, String), (BTreeSet<ConnId>, Option<Instant>)>,
    closed: Vec<ConnId>,
    /// Connections that live through the whole run (they answer every ping).
    baseline: Vec<ConnId>,
    retention: Duration,
    heartbeat_closes: usize,
    retirements: usize,
}

impl Model {
    fn close(&mut self, id: ConnId, now: Instant) {
        let (tenant, user, _) = self.open.remove(&id).expect("closed connection was open");
        let entry = self.users.get_mut(&(tenant, user)).expect("user of an open connection");
        assert!(entry.0.remove(&id));
        if entry.0.is_empty() {
            entry.1 = Some(now);
        }
        self.closed.push(id);
    }

    fn rooms(&self) -> BTreeSet<(String, String)> {
        self.open
            .values()
            .flat_map(|(t, _, rooms)| rooms.iter().map(move |r| (t.clone(), r.clone())))
            .collect()
    }

    fn tenants(&self) -> BTreeSet<String> {
        self.users.keys().map(|(t, _)| t.clone()).collect()
    }

    /// Applies what the hub reported (closes, retirements) to the model, checking each against
    /// it, and answers pings: always for the baseline, mostly for the churn.
    fn absorb(&mut self, sim: &mut Sim, actions: &[Action], rng: &mut Rng) {
        for a in actions {
            match a {
                Action::Deliver { conn, .. } => {
                    assert!(self.open.contains_key(conn), "delivery to a closed connection");
                }
                Action::Ping { conn } => {
                    assert!(self.open.contains_key(conn), "ping to a closed connection");
                    if self.baseline.contains(conn) || rng.chance(70) {
                        sim.hub.pong(sim.now, *conn).expect("pinged connection is open");
                    }
                }
                Action::Close { conn, reason } => {
                    assert!(!self.baseline.contains(conn), "a baseline connection was closed");
                    assert_eq!(*reason, CloseReason::HeartbeatTimeout);
                    self.close(*conn, sim.now);
                    self.heartbeat_closes += 1;
                }
                Action::Metric(m) => {
                    let MetricEvent::UserRetired { tenant, user } = &**m else { continue };
                    let key = (tenant.as_str().to_owned(), user.as_str().to_owned());
                    let (conns, since) = self.users.remove(&key).expect("retired user was held");
                    assert!(conns.is_empty(), "{key:?} retired with open connections");
                    let since = since.expect("retired user was detached");
                    assert!(sim.now >= since + self.retention, "{key:?} retired early");
                    self.retirements += 1;
                }
                Action::Audit(e) => panic!("unexpected audit {e:?}"),
                _ => {}
            }
        }
    }

    fn churn(&self) -> Vec<ConnId> {
        self.open.keys().copied().filter(|c| !self.baseline.contains(c)).collect()
    }
}

/// Checks the hub's gauges and views against the model.
fn check(sim: &Sim, model: &Model, retention: Duration) {
    let s = sim.hub.stats();
    let active = model.users.values().filter(|(c, _)| !c.is_empty()).count() as u64;
    let detached = model.users.values().filter(|(c, _)| c.is_empty()).count() as u64;
    assert_eq!(s.connections_active, model.open.len() as u64);
    assert_eq!(s.connections_opened, s.connections_closed + s.connections_active);
    assert_eq!(s.users_active, active);
    assert_eq!(s.users_detached, detached);
    assert_eq!(s.users_created - s.users_retired, active + detached);
    assert_eq!(s.rooms, model.rooms().len() as u64);
    assert_eq!(s.tenants, model.tenants().len() as u64);
    for ((tenant, user), (conns, since)) in &model.users {
        let view = sim.hub.user(tenant, user).unwrap_or_else(|| panic!("{tenant}/{user} held"));
        assert_eq!(view.connections().collect::<BTreeSet<_>>(), *conns);
        match (view.phase(), since) {
            (UserPhase::Active, None) => assert!(!conns.is_empty()),
            (UserPhase::Detached { since: s, retires_at }, Some(m)) => {
                assert_eq!(s, *m);
                assert_eq!(retires_at, *m + retention);
                assert!(retires_at > sim.now, "a detached user past retention is still held");
            }
            (phase, since) => panic!("{tenant}/{user}: hub says {phase:?}, model {since:?}"),
        }
    }
    for (id, (tenant, user, rooms)) in &model.open {
        let view = sim.hub.connection(*id).expect("open connection has a view");
        assert_eq!(view.tenant().as_str(), tenant);
        assert_eq!(view.user().as_str(), user);
        let hub_rooms: BTreeSet<String> = view.rooms().map(|r| r.as_str().to_owned()).collect();
        assert_eq!(hub_rooms, *rooms);
    }
}

#[test]
fn a_thousand_connect_disconnect_cycles_leave_counts_where_they_started() {
    // Abnormal churn is part of the mix; this scenario is about counts, not about the reconnect
    // breaker (tests/delivery.rs covers it), so the breaker never trips here.
    let mut cfg = Config::default();
    cfg.breaker.threshold = u32::MAX;
    let mut sim = Sim::new(cfg);
    let retention = sim.hub.config().user_retention;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut model = Model { retention, ..Model::default() };

    // A baseline that lives through the whole run: two tenants, a room, a detached-free start.
    for (t, u) in [("acme", "base-1"), ("acme", "base-2"), ("globex", "base-3")] {
        let id = sim.connect(t, u);
        model.open.insert(id, (t.into(), u.into(), BTreeSet::new()));
        model.users.entry((t.into(), u.into())).or_default().0.insert(id);
        model.baseline.push(id);
    }
    let baseline = model.baseline.clone();
    sim.hub.join(sim.now, baseline[0], RoomId::from("lobby")).unwrap();
    model.open.get_mut(&baseline[0]).unwrap().2.insert("lobby".into());
    sim.drain();
    check(&sim, &model, retention);
    let start = sim.hub.stats();

    // Churn users: acme and globex share names; initech exists only while churn users do.
    let tenants = ["acme", "globex", "initech"];
    let pool: Vec<(String, String)> =
        (0..12).map(|i| (tenants[i % 3].to_owned(), format!("churn-{}", i % 5))).collect();
    let rooms = ["lobby", "r1", "r2"];
    let mut connects = 0;
    let mut rejected = 0u64;

    let mut cycle = 0u64;
    while connects < 1000 {
        cycle += 1;
        let (tenant, user) = pool[rng.below(pool.len() as u64) as usize].clone();
        let held = model.users.get(&(tenant.clone(), user.clone())).map_or(0, |u| u.0.len());
        match sim.hub.connect(sim.now, Principal::new(tenant.as_str(), user.as_str())) {
            Ok(id) => {
                assert!(held < 3, "a fourth free-tier connection was admitted");
                connects += 1;
                let actions = sim.drain();
                assert_eq!(types_for(&actions, id), vec!["connected"]);
                let entry = model.users.entry((tenant.clone(), user.clone())).or_default();
                entry.0.insert(id);
                entry.1 = None;
                model.open.insert(id, (tenant.clone(), user.clone(), BTreeSet::new()));
                if rng.chance(40) {
                    let room = rooms[rng.below(3) as usize];
                    assert!(sim.hub.join(sim.now, id, RoomId::from(room)).unwrap());
                    model.open.get_mut(&id).unwrap().2.insert(room.into());
                }
            }
            Err(err) => {
                assert_eq!(held, 3, "refused below the limit: {err}");
                assert_eq!(err, ConnectError::UserLimit { tier: Tier::Free, limit: 3 });
                rejected += 1;
                let actions = sim.drain();
                assert_eq!(audits(&actions), vec![AuditKind::LimitHit(LimitKind::UserConnections)]);
            }
        }

        // An event for a random pool user reaches exactly its open connections.
        let (pt, pu) = pool[rng.below(pool.len() as u64) as usize].clone();
        let env = Envelope::new(user_target(&pt, &pu), EventKind::ToolCompleted);
        let (p, actions) = publish(&mut sim, env);
        let expected =
            model.users.get(&(pt.clone(), pu.clone())).map(|u| u.0.clone()).unwrap_or_default();
        let got: BTreeSet<ConnId> = deliveries(&actions).into_iter().map(|(c, _)| c).collect();
        assert_eq!(got, expected, "publish to {pt}/{pu}");
        assert_eq!(p.delivered, expected.len());
        if !model.users.contains_key(&(pt.clone(), pu.clone())) {
            assert!(sim.hub.user(&pt, &pu).is_none(), "a publish created a user");
        }

        // Disconnect one churn connection, clean or abnormal; more often when many are open.
        let churn: Vec<ConnId> = model.churn();
        if !churn.is_empty() && (churn.len() > 20 || rng.chance(55)) {
            let id = churn[rng.below(churn.len() as u64) as usize];
            let reason =
                if rng.chance(50) { DisconnectReason::Clean } else { DisconnectReason::Abnormal };
            sim.hub.disconnect(sim.now, id, reason).unwrap();
            model.close(id, sim.now);
            let actions = sim.drain();
            assert!(closes(&actions).is_empty());
        } else if let Some(&id) = model.churn().first() {
            // Sometimes a churn connection leaves a room instead.
            let room = model.open[&id].2.iter().next().cloned();
            if let Some(room) = room {
                assert!(sim.hub.leave(sim.now, id, room.as_str()).unwrap());
                model.open.get_mut(&id).unwrap().2.remove(&room);
            }
        }

        // Time passes: mostly a few seconds, now and then past the retention.
        let step = if cycle % 97 == 0 {
            retention + Duration::from_secs(rng.below(30) + 1)
        } else {
            Duration::from_millis(rng.below(4_000))
        };
        let actions = sim.advance(step);
        model.absorb(&mut sim, &actions, &mut rng);
        let after_pongs = sim.drain();
        assert!(after_pongs.is_empty(), "a pong queued {after_pongs:?}");
        check(&sim, &model, retention);
        for (t, u) in &pool {
            let held = model.users.contains_key(&(t.clone(), u.clone()));
            assert_eq!(sim.hub.user(t, u).is_some(), held, "{t}/{u}");
        }
    }

    // Close what is left of the churn, then let every detached user retire.
    let churn: Vec<ConnId> = model.churn();
    for id in churn {
        sim.hub.disconnect(sim.now, id, DisconnectReason::Abnormal).unwrap();
        model.close(id, sim.now);
    }
    sim.drain();
    check(&sim, &model, retention);
    let mut guard = 0;
    while model.users.len() > baseline.len() {
        guard += 1;
        assert!(guard < 100, "detached users never retire");
        let actions = sim.advance(Duration::from_secs(20));
        model.absorb(&mut sim, &actions, &mut rng);
        sim.drain();
        check(&sim, &model, retention);
    }

    // The mix really was mixed.
    assert_eq!(connects, 1000);
    assert!(rejected > 0, "no per-user limit was hit");
    assert!(model.heartbeat_closes > 0, "no heartbeat timeout happened");
    assert!(model.retirements > 12, "retention rarely ran out: {}", model.retirements);
    let end = sim.hub.stats();
    assert!(end.closed_by.client_clean > 0 && end.closed_by.client_abnormal > 0);
    assert_eq!(end.limit_rejections.user_connections, rejected);

    // Gauges are back where they started; counters add up.
    assert_eq!(end.connections_active, start.connections_active);
    assert_eq!(end.users_active, start.users_active);
    assert_eq!(end.users_detached, start.users_detached);
    assert_eq!(end.rooms, start.rooms);
    assert_eq!(end.tenants, start.tenants);
    assert_eq!(end.connections_opened, start.connections_opened + 1000);
    assert_eq!(end.connections_opened, end.connections_closed + end.connections_active);
    assert_eq!(end.users_created - end.users_retired, end.users_active + end.users_detached);
    assert_eq!(end.users_retired, model.retirements as u64);
    for id in &model.closed {
        assert!(sim.hub.connection(*id).is_none(), "{id} closed but still viewable");
    }
    for (t, u) in &pool {
        assert!(sim.hub.user(t, u).is_none(), "{t}/{u} outlived its retention");
    }
    for &b in &baseline {
        assert!(sim.hub.connection(b).is_some());
    }
    assert!(sim.hub.user("initech", "churn-2").is_none());
}

// ---------------------------------------------------------------------------------------------
// 6. Limits (seed 004: "Connection limits: 3 per user, 100 total")

#[test]
fn per_user_limit_of_three_on_free_tier_and_total_limit_of_one_hundred() {
    let mut sim = Sim::new(Config { max_connections: 100, ..Config::default() });

    // Three free-tier connections for alice; the fourth is refused.
    let alice: Vec<ConnId> = (0..3).map(|_| sim.connect("acme", "alice")).collect();
    let before = sim.hub.stats();
    let err = sim.hub.connect(sim.now, Principal::new("acme", "alice"));
    assert_eq!(err, Err(ConnectError::UserLimit { tier: Tier::Free, limit: 3 }));
    let actions = sim.drain();
    assert!(!any_delivery(&actions), "a refused connection gets no frame");
    assert_eq!(
        metrics(&actions),
        vec![MetricEvent::LimitRejected { limit: LimitKind::UserConnections }]
    );
    let events = audit_events(&actions);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, AuditKind::LimitHit(LimitKind::UserConnections));
    assert_eq!(events[0].tenant.as_ref().map(|t| t.as_str()), Some("acme"));
    assert_eq!(events[0].user.as_ref().map(|u| u.as_str()), Some("alice"));
    let s = sim.hub.stats();
    assert_eq!(s.limit_rejections.user_connections, 1);
    assert_eq!(s.limit_rejections.total(), 1);
    assert_eq!(s.connections_active, 3);
    assert_eq!(s.connections_opened, before.connections_opened);
    assert_eq!(sim.hub.user("acme", "alice").unwrap().connection_count(), 3);

    // Another tier has another limit: an early-tier user may open a fourth.
    for _ in 0..4 {
        sim.connect_as(Principal::new("acme", "erin").tier(Tier::Early));
    }
    assert_eq!(sim.hub.user("acme", "erin").unwrap().connection_count(), 4);

    // Fill the hub to 100 with other users (some of another tenant).
    let mut others = Vec::new();
    let mut n = 0;
    while sim.hub.stats().connections_active < 100 {
        let tenant = if n % 4 == 0 { "globex" } else { "acme" };
        others.push(sim.connect(tenant, &format!("filler-{n}")));
        n += 1;
    }
    assert_eq!(sim.hub.stats().connections_active, 100);

    // The 101st is refused, whoever asks, and nothing is created for it.
    let users_created = sim.hub.stats().users_created;
    let err = sim.hub.connect(sim.now, Principal::new("acme", "newcomer"));
    assert_eq!(err, Err(ConnectError::TooManyConnections { limit: 100 }));
    let actions = sim.drain();
    assert!(!any_delivery(&actions));
    assert_eq!(
        metrics(&actions),
        vec![MetricEvent::LimitRejected { limit: LimitKind::TotalConnections }]
    );
    assert_eq!(audits(&actions), vec![AuditKind::LimitHit(LimitKind::TotalConnections)]);
    assert!(sim.hub.user("acme", "newcomer").is_none());
    assert_eq!(sim.hub.stats().users_created, users_created);
    let err = sim.hub.connect(sim.now, Principal::new("acme", "erin").tier(Tier::Early));
    assert_eq!(err, Err(ConnectError::TooManyConnections { limit: 100 }));
    sim.drain();
    let s = sim.hub.stats();
    assert_eq!(s.limit_rejections.total_connections, 2);
    assert_eq!(s.limit_rejections.user_connections, 1);
    assert_eq!(s.limit_rejections.total(), 3);
    assert_eq!(s.connections_active, 100);

    // One of alice's connections goes: she may connect again (and that fills the hub again).
    sim.hub.disconnect(sim.now, alice[1], DisconnectReason::Clean).unwrap();
    sim.drain();
    let again = sim.connect("acme", "alice");
    assert_eq!(sim.hub.user("acme", "alice").unwrap().connection_count(), 3);
    assert_eq!(
        sim.hub.connect(sim.now, Principal::new("acme", "alice")),
        Err(ConnectError::UserLimit { tier: Tier::Free, limit: 3 })
    );
    assert_eq!(
        sim.hub.connect(sim.now, Principal::new("acme", "newcomer")),
        Err(ConnectError::TooManyConnections { limit: 100 })
    );
    sim.drain();

    // Any other connection goes: the newcomer is admitted.
    sim.hub.disconnect(sim.now, others[7], DisconnectReason::Abnormal).unwrap();
    sim.drain();
    let newcomer = sim.connect("acme", "newcomer");
    assert_eq!(sim.hub.stats().connections_active, 100);
    let s = sim.hub.stats();
    assert_eq!(s.limit_rejections.user_connections, 2);
    assert_eq!(s.limit_rejections.total_connections, 3);
    assert_eq!(s.connections_opened, s.connections_closed + s.connections_active);

    // The admitted ones work.
    let actions = sim.publish_to_user("acme", "newcomer", EventKind::AgentStarted);
    assert_eq!(types_for(&actions, newcomer), vec!["agent_started"]);
    let actions = sim.publish_to_user("acme", "alice", EventKind::AgentStarted);
    assert_eq!(types_for(&actions, again), vec!["agent_started"]);
    assert!(frames_for(&actions, alice[1]).is_empty());
}
