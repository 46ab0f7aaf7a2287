//! The origin documents' scenarios about sessions (seeds 001 and 004), through the public API
//! only, on a virtual clock: thread routing, heartbeat and session cleanup, identity stamping,
//! misbehaviour isolation, tenant-scoped rooms, reconnects within retention, the evict-oldest
//! policy, and replay determinism. The isolation, broadcast, churn and limit scenarios live in
//! `tests/scenarios.rs`.
mod common;
mod scenario_support;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use common::*;
use scenario_support::*;
use serde_json::Value;
use switchboard::{
    Action, Audience, AuditKind, CloseReason, ClosedBy, Config, ConnError, ConnId, ConnectError,
    DisconnectReason, Envelope, EventKind, LimitKind, MetricEvent, Principal, PublishError,
    ReceiveError, RefreshError, RoomId, Target, UserPhase,
};

// ---------------------------------------------------------------------------------------------
// 7. Thread routing (seed 004: "Thread Isolation: messages routed to correct threads")

#[test]
fn events_for_one_thread_do_not_reach_a_connection_subscribed_only_to_another() {
    let mut sim = Sim::default();
    let only_a = sim.connect("acme", "alice");
    let only_b = sim.connect("acme", "alice");
    let all = sim.connect("acme", "alice");
    // Bob subscribes to a thread with the same name as alice's: threads belong to their user.
    let bob = sim.connect("acme", "bob");
    for (c, t) in [(only_a, "t-A"), (only_b, "t-B"), (bob, "t-A")] {
        let frame = format!(r#"{{"type":"subscribe","thread_id":"{t}"}}"#);
        sim.hub.receive(sim.now, c, frame.as_bytes()).unwrap();
    }
    assert!(sim.drain().is_empty(), "subscribe is silent");
    assert_eq!(
        sim.hub
            .connection(only_a)
            .unwrap()
            .threads()
            .unwrap()
            .iter()
            .map(|t| t.as_str())
            .collect::<Vec<_>>(),
        vec!["t-A"]
    );
    assert!(sim.hub.connection(all).unwrap().threads().is_none());

    let recipients = |sim: &mut Sim, env: Envelope| -> (BTreeSet<ConnId>, Vec<Action>) {
        let (p, actions) = publish(sim, env);
        let got: BTreeSet<ConnId> = deliveries(&actions).into_iter().map(|(c, _)| c).collect();
        assert_eq!(p.delivered, got.len());
        (got, actions)
    };

    let mut seen: HashMap<ConnId, Vec<u64>> = HashMap::new();
    fn record(seen: &mut HashMap<ConnId, Vec<u64>>, actions: &[Action]) {
        for (c, f) in deliveries(actions) {
            seen.entry(c).or_default().push(f["seq"].as_u64().unwrap());
        }
    }

    let (got, actions) = recipients(
        &mut sim,
        Envelope::new(thread_target("acme", "alice", "t-A"), EventKind::AgentStarted),
    );
    assert_eq!(got, BTreeSet::from([only_a, all]));
    for (_, f) in deliveries(&actions) {
        assert_eq!(f["thread_id"], "t-A");
    }
    record(&mut seen, &actions);
    let (got, actions) = recipients(
        &mut sim,
        Envelope::new(thread_target("acme", "alice", "t-B"), EventKind::AgentThinking),
    );
    assert_eq!(got, BTreeSet::from([only_b, all]));
    record(&mut seen, &actions);
    // A user-wide event with a thread is filtered like a thread event.
    let env = Envelope::new(user_target("acme", "alice"), EventKind::ToolExecuting).thread("t-A");
    let (got, actions) = recipients(&mut sim, env);
    assert_eq!(got, BTreeSet::from([only_a, all]));
    record(&mut seen, &actions);
    // A thread nobody narrowed to reaches only the unfiltered connection.
    let (got, actions) = recipients(
        &mut sim,
        Envelope::new(thread_target("acme", "alice", "t-C"), EventKind::ToolCompleted),
    );
    assert_eq!(got, BTreeSet::from([all]));
    record(&mut seen, &actions);
    // Thread-less user events reach every connection of the user.
    let (got, actions) = recipients(
        &mut sim,
        Envelope::new(user_target("acme", "alice"), EventKind::custom("quota")),
    );
    assert_eq!(got, BTreeSet::from([only_a, only_b, all]));
    record(&mut seen, &actions);
    // Addressing one connection bypasses its filter, on purpose.
    let env = Envelope::new(Target::Connection(only_b), EventKind::AgentCompleted).thread("t-A");
    let (got, actions) = recipients(&mut sim, env);
    assert_eq!(got, BTreeSet::from([only_b]));
    record(&mut seen, &actions);
    // Mismatched thread on a thread target is refused without side effects.
    let env =
        Envelope::new(thread_target("acme", "alice", "t-A"), EventKind::AgentStarted).thread("t-B");
    assert_eq!(sim.hub.publish(sim.now, env), Err(PublishError::ThreadMismatch));
    assert!(sim.drain().is_empty());

    // Bob's "t-A" subscription never saw alice's t-A.
    assert!(!seen.contains_key(&bob));
    let (got, actions) = recipients(
        &mut sim,
        Envelope::new(thread_target("acme", "bob", "t-A"), EventKind::AgentStarted),
    );
    assert_eq!(got, BTreeSet::from([bob]));
    record(&mut seen, &actions);

    // Per connection, seqs on the user stream strictly increase (with gaps where filtered).
    for (c, seqs) in &seen {
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{c}: {seqs:?}");
    }
    assert_eq!(seen[&all], vec![1, 2, 3, 4, 5]);
    assert_eq!(seen[&only_a], vec![1, 3, 5]);
    assert_eq!(seen[&only_b], vec![2, 5, 6]);

    // Unsubscribing from everything widens a connection back to all of its user's events.
    sim.hub.receive(sim.now, only_a, br#"{"type":"unsubscribe"}"#).unwrap();
    let (got, _) = recipients(
        &mut sim,
        Envelope::new(thread_target("acme", "alice", "t-B"), EventKind::AgentStarted),
    );
    assert_eq!(got, BTreeSet::from([only_a, only_b, all]));
    // Unsubscribing from its only thread removes the filter (issue 10 item 16): the connection
    // receives all of its user's events again, as before its first `subscribe`.
    sim.hub.receive(sim.now, only_b, br#"{"type":"unsubscribe","thread_id":"t-B"}"#).unwrap();
    let (got, _) = recipients(
        &mut sim,
        Envelope::new(thread_target("acme", "alice", "t-C"), EventKind::AgentStarted),
    );
    assert_eq!(got, BTreeSet::from([only_a, only_b, all]));
}

// ---------------------------------------------------------------------------------------------
// 8. Heartbeats (seed 004: "Heartbeat Performance", "STALE_CONNECTION_TIMEOUT", "Stale connection
//    removal"; seed 001: ConnectionLifecycleManager.health_check_connection / auto_cleanup_expired)

#[test]
fn silent_connections_are_pinged_then_closed_and_their_state_cleaned_up() {
    let mut sim = Sim::default();
    let hb = sim.hub.config().heartbeat;
    let retention = sim.hub.config().user_retention;
    let t0 = sim.now;
    let silent = sim.connect("acme", "alice");
    let answers = sim.connect("acme", "alice");
    let chatty = sim.connect("acme", "bob");

    // Nothing happens before the interval: the hub announces exactly when to look again.
    assert_eq!(sim.hub.poll_timeout(), Some(t0 + hb.interval));
    sim.hub.tick(t0 + hb.interval - Duration::from_millis(1));
    assert!(sim.drain().is_empty(), "early tick is harmless");
    let actions = sim.advance(hb.interval);
    assert_eq!(sim.now, t0 + hb.interval);

    // All three are pinged once, and nothing else happens.
    let mut pinged = pings(&actions);
    pinged.sort();
    let mut expected = vec![silent, answers, chatty];
    expected.sort();
    assert_eq!(pinged, expected);
    assert_eq!(actions.len(), 3, "{actions:?}");
    let pinged_at = sim.now;
    let s = sim.hub.stats();
    assert_eq!(s.pings_sent, 3);
    for c in [silent, answers, chatty] {
        assert!(sim.hub.connection(c).unwrap().awaiting_pong());
    }

    // One answers with a transport pong, one with an application ping frame; one stays silent.
    sim.now += Duration::from_secs(2);
    sim.hub.pong(sim.now, answers).unwrap();
    sim.hub.receive(sim.now, chatty, br#"{"type":"ping"}"#).unwrap();
    let actions = sim.drain();
    assert_eq!(types_for(&actions, chatty), vec!["pong"]);
    assert!(!sim.hub.connection(answers).unwrap().awaiting_pong());
    assert!(!sim.hub.connection(chatty).unwrap().awaiting_pong());

    // At the pong deadline only the silent one is closed, with a reconnectable 4000.
    let actions = run_until(&mut sim, pinged_at + hb.timeout, &[]);
    assert_eq!(closes(&actions), vec![(silent, CloseReason::HeartbeatTimeout)]);
    assert_eq!(CloseReason::HeartbeatTimeout.code(), 4000);
    assert!(CloseReason::HeartbeatTimeout.reconnect());
    let closed_metric = metrics(&actions).into_iter().find_map(|m| match m {
        MetricEvent::ConnectionClosed { conn, reason, lifetime, .. } if conn == silent => {
            Some((reason, lifetime))
        }
        _ => None,
    });
    assert_eq!(
        closed_metric,
        Some((ClosedBy::Hub(CloseReason::HeartbeatTimeout), hb.interval + hb.timeout))
    );
    assert!(sim.hub.connection(silent).is_none());
    assert_eq!(
        sim.hub.disconnect(sim.now, silent, DisconnectReason::Abnormal),
        Err(ConnError::Unknown { recently_closed: true })
    );
    assert_eq!(sim.hub.stats().heartbeat_timeouts(), 1);
    assert_eq!(sim.hub.user("acme", "alice").unwrap().phase(), UserPhase::Active);

    // Alice's other connection still gets her events; the dead one gets nothing.
    let actions = sim.publish_to_user("acme", "alice", EventKind::AgentStarted);
    assert_eq!(types_for(&actions, answers), vec!["agent_started"]);
    assert!(frames_for(&actions, silent).is_empty());

    // Connections that keep answering live through many heartbeat rounds.
    let ten_minutes = sim.now + Duration::from_secs(600);
    let actions = run_until(&mut sim, ten_minutes, &[answers, chatty]);
    assert!(closes(&actions).is_empty(), "{:?}", closes(&actions));
    let rounds = pings(&actions).len();
    assert!(rounds >= 2 * 600 / 35, "pings keep coming: {rounds}");

    // When they fall silent too, both are closed within one interval plus the timeout, the users
    // detach, retire after retention, and nothing at all is left armed.
    let went_silent = sim.now;
    let actions = run_until(&mut sim, went_silent + hb.interval + hb.timeout, &[]);
    let mut closed: Vec<ConnId> = closes(&actions).into_iter().map(|(c, _)| c).collect();
    closed.sort();
    let mut expected = vec![answers, chatty];
    expected.sort();
    assert_eq!(closed, expected);
    assert_eq!(sim.hub.stats().users_detached, 2);
    let until = sim.now + retention;
    let actions = run_until(&mut sim, until, &[]);
    let retired =
        metrics(&actions).iter().filter(|m| matches!(m, MetricEvent::UserRetired { .. })).count();
    assert_eq!(retired, 2);
    let s = sim.hub.stats();
    assert_eq!((s.connections_active, s.users_active, s.users_detached, s.tenants), (0, 0, 0, 0));
    assert_eq!(s.heartbeat_timeouts(), 3);
    assert_eq!(sim.hub.poll_timeout(), None, "no timer outlives the state it belongs to");
}

// ---------------------------------------------------------------------------------------------
// 9. Session expiry (seed 001: "Manager idle timeout", TTL cleanup; DESIGN §4)

#[test]
fn sessions_expire_unless_refreshed_without_touching_other_sessions() {
    let mut sim = Sim::default();
    let grace = sim.hub.config().session_grace;
    let exp = sim.now + Duration::from_secs(300);
    let refreshes = sim.connect_as(Principal::new("acme", "alice").expires_at(exp));
    let lapses = sim.connect_as(Principal::new("acme", "alice").expires_at(exp));
    let forever = sim.connect("acme", "bob");
    let all = [refreshes, lapses, forever];

    // `grace` before expiry, both expiring sessions are asked to refresh; bob is not.
    let actions = run_until(&mut sim, exp - grace, &all);
    for c in [refreshes, lapses] {
        let frames: Vec<Value> = frames_for(&actions, c)
            .into_iter()
            .filter(|f| f["type"] == "refresh_required")
            .collect();
        assert_eq!(frames.len(), 1, "{c}");
        assert_eq!(frames[0]["expires_in_ms"], grace.as_millis() as u64);
    }
    assert!(frames_for(&actions, forever).is_empty());

    let new_exp = exp + Duration::from_secs(3600);
    sim.hub.refresh(sim.now, refreshes, Some(new_exp)).unwrap();
    assert_eq!(
        sim.hub.refresh(sim.now, lapses, Some(sim.now)),
        Err(RefreshError::ExpiryInPast),
        "an expiry in the past is refused and changes nothing"
    );
    assert_eq!(sim.hub.connection(lapses).unwrap().expires_at(), Some(exp));

    let actions = run_until(&mut sim, exp, &all);
    assert_eq!(closes(&actions), vec![(lapses, CloseReason::SessionExpired)]);
    assert_eq!(CloseReason::SessionExpired.code(), 4001);
    assert_eq!(sim.hub.connection(refreshes).unwrap().expires_at(), Some(new_exp));
    assert!(sim.hub.connection(forever).is_some());
    let actions = sim.publish_to_user("acme", "alice", EventKind::AgentStarted);
    assert_eq!(types_for(&actions, refreshes), vec!["agent_started"]);
    assert!(frames_for(&actions, lapses).is_empty());

    // A principal whose session already ended is refused at the door.
    assert_eq!(
        sim.hub.connect(sim.now, Principal::new("acme", "carol").expires_at(sim.now)),
        Err(ConnectError::SessionExpired)
    );
    assert!(sim.hub.user("acme", "carol").is_none());
}

// ---------------------------------------------------------------------------------------------
// 10. Identity (seed 001: "Message User verification: context user_id must match", "Connection
//     Hijacking")

#[test]
fn client_messages_carry_the_connections_identity_not_the_payloads() {
    let mut sim = Sim::default();
    let bob = sim.connect("acme", "bob");
    let _alice = sim.connect("globex", "alice");
    let forged = br#"{"type":"message","thread_id":"t-bob","data":{"user_id":"alice","tenant":"globex","text":"hi"}}"#;
    sim.hub.receive(sim.now, bob, forged).unwrap();
    let actions = sim.drain();
    let inbound: Vec<_> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Inbound(m) => Some(m.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(inbound.len(), 1);
    let m = &inbound[0];
    assert_eq!(m.from.conn, bob);
    assert_eq!(m.from.tenant.as_str(), "acme");
    assert_eq!(m.from.user.as_str(), "bob");
    assert_eq!(m.thread.as_ref().map(|t| t.as_str()), Some("t-bob"));
    assert_eq!(m.data["user_id"], "alice", "payload passed through untouched, but not trusted");
    assert!(!any_delivery(&actions), "a client message is not echoed to anyone");
}

// ---------------------------------------------------------------------------------------------
// 11. One user's misbehaviour (seed 001: "State Mutation Cascade: one user's error affects all")

#[test]
fn one_clients_protocol_violations_close_only_that_connection() {
    let mut sim = Sim::default();
    let max = sim.hub.config().max_violations as usize;
    let bad = sim.connect("acme", "bob");
    let bob2 = sim.connect("acme", "bob");
    let alice = sim.connect("acme", "alice");
    sim.hub.join(sim.now, bad, RoomId::from("ops")).unwrap();
    sim.hub.join(sim.now, alice, RoomId::from("ops")).unwrap();
    sim.drain(); // the joined announcements

    let mut closed = Vec::new();
    let mut errors = 0;
    // The `max`-th violation closes (issue 10 item 14; it used to take one more).
    for i in 0..max {
        let res = sim.hub.receive(sim.now, bad, b"{not json");
        assert!(matches!(res, Err(ReceiveError::Peer(_))), "attempt {i}: {res:?}");
        let actions = sim.drain();
        errors += types_for(&actions, bad).iter().filter(|t| *t == "error").count();
        assert!(frames_for(&actions, bob2).is_empty() && frames_for(&actions, alice).is_empty());
        closed.extend(closes(&actions));
    }
    assert_eq!(errors, max, "every bad frame is answered with an error frame");
    assert_eq!(closed, vec![(bad, CloseReason::ProtocolViolation)]);
    assert!(sim.hub.connection(bad).is_none());

    // Bob's other connection, alice, and the room are unaffected.
    assert!(sim.hub.connection(bob2).is_some() && sim.hub.connection(alice).is_some());
    assert_eq!(sim.hub.user("acme", "bob").unwrap().connection_count(), 1);
    let actions = sim.publish_to_user("acme", "bob", EventKind::AgentStarted);
    assert_eq!(types_for(&actions, bob2), vec!["agent_started"]);
    let env = Envelope::new(
        Target::Room { tenant: "acme".into(), room: "ops".into() },
        EventKind::custom("note"),
    );
    let (p, actions) = publish(&mut sim, env);
    assert_eq!(p.delivered, 1);
    assert_eq!(types_for(&actions, alice), vec!["note"]);
    // Alice's own frames are still accepted.
    sim.hub.receive(sim.now, alice, br#"{"type":"message","data":1}"#).unwrap();
    assert!(sim.drain().iter().any(|a| matches!(a, Action::Inbound(_))));
}

// ---------------------------------------------------------------------------------------------
// 12. Rooms and names are tenant-scoped (seed 001: "Broadcast Information Leakage")

#[test]
fn rooms_and_user_names_are_scoped_to_their_tenant() {
    let mut sim = Sim::default();
    let acme_alice = sim.connect("acme", "alice");
    let acme_bob = sim.connect("acme", "bob");
    let globex_alice = sim.connect("globex", "alice");
    let globex_carol = sim.connect("globex", "carol");
    for c in [acme_alice, acme_bob, globex_alice, globex_carol] {
        assert!(sim.hub.join(sim.now, c, RoomId::from("general")).unwrap());
    }
    assert_eq!(sim.hub.stats().rooms, 2, "one `general` per tenant");

    let room = |tenant: &str| Target::Room { tenant: tenant.into(), room: "general".into() };
    let (p, actions) = publish(&mut sim, Envelope::new(room("acme"), EventKind::custom("note")));
    assert_eq!(p.delivered, 2);
    let got: BTreeSet<ConnId> = deliveries(&actions).into_iter().map(|(c, _)| c).collect();
    assert_eq!(got, BTreeSet::from([acme_alice, acme_bob]));
    for (_, f) in deliveries(&actions) {
        assert_eq!(f["stream"], "r:general");
        assert_eq!(f["seq"], 1);
    }

    // acme's alice is not globex's alice.
    let actions = sim.publish_to_user("acme", "alice", EventKind::AgentStarted);
    assert_eq!(deliveries(&actions).len(), 1);
    assert_eq!(types_for(&actions, acme_alice), vec!["agent_started"]);

    // When acme's room empties, it is dropped; globex's room of the same name lives on.
    sim.hub.leave(sim.now, acme_alice, "general").unwrap();
    sim.hub.disconnect(sim.now, acme_bob, DisconnectReason::Clean).unwrap();
    sim.drain();
    assert_eq!(sim.hub.stats().rooms, 1);
    let (p, actions) = publish(&mut sim, Envelope::new(room("acme"), EventKind::custom("note")));
    assert!(p.undeliverable());
    assert!(!any_delivery(&actions));
    let (p, actions) = publish(&mut sim, Envelope::new(room("globex"), EventKind::custom("note")));
    assert_eq!(p.delivered, 2);
    assert_eq!(frames_for(&actions, globex_carol)[0]["seq"], 1, "its own stream");
}

// ---------------------------------------------------------------------------------------------
// 13. Reconnects (seed 001: per-user message queue and recovery; DESIGN §4 user retention)

#[test]
fn a_user_reconnecting_within_retention_keeps_its_stream_and_after_retirement_starts_anew() {
    let mut sim = Sim::default();
    let retention = sim.hub.config().user_retention;
    let first = sim.connect("acme", "alice");
    for _ in 0..3 {
        sim.publish_to_user("acme", "alice", EventKind::AgentThinking);
    }
    let pos = sim.hub.user("acme", "alice").unwrap().stream_position();
    assert_eq!(pos.seq, 3);
    sim.hub.disconnect(sim.now, first, DisconnectReason::Abnormal).unwrap();
    sim.drain();

    // While detached, events still take positions on its stream (nothing is delivered).
    let (p, actions) =
        publish(&mut sim, Envelope::new(user_target("acme", "alice"), EventKind::AgentCompleted));
    assert_eq!(p.delivered, 0);
    assert!(!any_delivery(&actions));
    assert_eq!(p.position.map(|(_, at)| at.seq), Some(4));

    // Back within retention: same stream, and `connected` says where it stands.
    sim.advance(retention / 2);
    let id = sim.hub.connect(sim.now, Principal::new("acme", "alice")).unwrap();
    let actions = sim.drain();
    assert!(!metrics(&actions).iter().any(|m| matches!(m, MetricEvent::UserCreated { .. })));
    let connected = &frames_for(&actions, id)[0];
    assert_eq!(connected["type"], "connected");
    assert_eq!(connected["streams"]["u"]["epoch"], pos.epoch);
    assert_eq!(connected["streams"]["u"]["seq"], 4);
    assert_eq!(sim.hub.user("acme", "alice").unwrap().phase(), UserPhase::Active);
    assert_eq!(sim.hub.stats().users_detached, 0);
    let actions = sim.publish_to_user("acme", "alice", EventKind::AgentStarted);
    assert_eq!(frames_for(&actions, id)[0]["seq"], 5);

    // The original retirement deadline passes harmlessly: she is active again.
    let until = sim.now + retention;
    let actions = run_until(&mut sim, until, &[id]);
    assert!(!metrics(&actions).iter().any(|m| matches!(m, MetricEvent::UserRetired { .. })));
    assert!(sim.hub.user("acme", "alice").is_some());

    // Gone past retention: a new state, a new epoch, seqs from 1.
    sim.hub.disconnect(sim.now, id, DisconnectReason::Clean).unwrap();
    sim.drain();
    let until = sim.now + retention;
    let actions = run_until(&mut sim, until, &[]);
    assert_eq!(
        metrics(&actions).iter().filter(|m| matches!(m, MetricEvent::UserRetired { .. })).count(),
        1
    );
    let id = sim.hub.connect(sim.now, Principal::new("acme", "alice")).unwrap();
    let actions = sim.drain();
    let connected = &frames_for(&actions, id)[0];
    assert_ne!(connected["streams"]["u"]["epoch"], pos.epoch);
    assert_eq!(connected["streams"]["u"]["seq"], 0);
}

// ---------------------------------------------------------------------------------------------
// 14. The other per-user policy (DESIGN §6: `EvictOldest`)

#[test]
fn evict_oldest_policy_replaces_the_oldest_connection_even_when_the_hub_is_full() {
    let mut sim = Sim::new(Config {
        max_connections: 5,
        user_limit_policy: switchboard::UserLimitPolicy::EvictOldest,
        ..Config::default()
    });
    let alice: Vec<ConnId> = (0..3).map(|_| sim.connect("acme", "alice")).collect();
    let bob: Vec<ConnId> = (0..2).map(|_| sim.connect("acme", "bob")).collect();
    assert_eq!(sim.hub.stats().connections_active, 5);

    // Alice's fourth is admitted and replaces her oldest; bob is not touched.
    let fourth = sim.hub.connect(sim.now, Principal::new("acme", "alice")).unwrap();
    let actions = sim.drain();
    assert_eq!(types_for(&actions, fourth), vec!["connected"]);
    assert_eq!(closes(&actions), vec![(alice[0], CloseReason::Replaced)]);
    assert!(!CloseReason::Replaced.reconnect());
    let events = audit_events(&actions);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, AuditKind::LimitHit(LimitKind::UserConnectionsEvicted));
    assert_eq!(events[0].conn, Some(alice[0]));
    assert_eq!(sim.hub.stats().limit_rejections.user_connections_evicted, 1);
    assert_eq!(sim.hub.stats().connections_active, 5);
    let now_held: Vec<ConnId> = sim.hub.user("acme", "alice").unwrap().connections().collect();
    assert_eq!(now_held, vec![alice[1], alice[2], fourth]);
    for &b in &bob {
        assert!(sim.hub.connection(b).is_some());
    }

    // A new user cannot evict anyone: the hub is full.
    assert_eq!(
        sim.hub.connect(sim.now, Principal::new("acme", "carol")),
        Err(ConnectError::TooManyConnections { limit: 5 })
    );
    let actions = sim.drain();
    assert!(closes(&actions).is_empty());
}

// ---------------------------------------------------------------------------------------------
// 15. Replay (DESIGN §2 and §9: no clock, no OS entropy, deterministic simulation)

/// Runs one fixed script and returns every action as text.
fn replay_script() -> Vec<String> {
    let mut sim = Sim::new(Config { allow_global_broadcast: true, ..Config::default() });
    let mut log = Vec::new();
    let mut conns = Vec::new();
    for t in 0..16 {
        for u in 0..2 {
            let id =
                sim.hub.connect(sim.now, Principal::new(format!("tenant-{t}"), format!("u{u}")));
            conns.push(id.unwrap());
        }
    }
    for (i, &c) in conns.iter().enumerate() {
        sim.hub.join(sim.now, c, RoomId::from(format!("room-{}", i % 3))).unwrap();
    }
    log.extend(sim.drain().iter().map(|a| format!("{a:?}")));
    let envs = [
        Envelope::new(Target::Everyone, EventKind::custom("maintenance")),
        Envelope::new(user_target("tenant-3", "u1"), EventKind::AgentStarted),
        Envelope::new(
            Target::Tenant { tenant: "tenant-5".into(), audience: Audience::All },
            EventKind::custom("notice"),
        ),
    ];
    for env in envs {
        sim.hub.publish(sim.now, env).unwrap();
        log.extend(sim.drain().iter().map(|a| format!("{a:?}")));
    }
    log.extend(sim.advance(Duration::from_secs(40)).iter().map(|a| format!("{a:?}")));
    log
}

/// Two hubs with the same config fed the same inputs must queue the same actions in the same
/// order: that is what record/replay and deterministic simulation rest on, and the hub may draw
/// randomness only from `Config::seed`. The script includes a global broadcast across 16 tenants,
/// whose fan-out order must not depend on anything but the inputs.
#[test]
fn the_same_inputs_produce_the_same_actions() {
    let a = replay_script();
    let b = replay_script();
    assert_eq!(a.len(), b.len());
    let first_difference = a.iter().zip(&b).position(|(x, y)| x != y);
    assert_eq!(
        first_difference,
        None,
        "two hubs fed the same inputs diverged at action {:?}: {:?} vs {:?}",
        first_difference,
        first_difference.map(|i| &a[i]),
        first_difference.map(|i| &b[i]),
    );
}
