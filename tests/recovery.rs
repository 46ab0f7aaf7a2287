//! Recovery through the public API: hostile and malformed `resume` frames, a detached user
//! buffered and replayed within retention (and forgotten after it), and idle rooms kept for
//! their members to resume. All on a virtual clock. Backpressure, the breaker and rates live in
//! `tests/delivery.rs`.
mod common;
mod delivery_support;

use std::time::Duration;

use common::*;
use delivery_support::*;
use serde_json::{Value, json};
use switchboard::{
    Action, Audience, AuditKind, CloseReason, Config, ConnId, DisconnectReason, Envelope,
    EventKind, MetricEvent, PeerError, Principal, ReceiveError, Retention, StreamName, Target,
    UserPhase,
};

// ---------------------------------------------------------------------------------------------
// 5. Hostile and malformed resume frames

struct World {
    sim: Sim,
    alice: Value,
    bob: Value,
    eve: Value,
    acme_lobby_epoch: u64,
    acme_secret_epoch: u64,
    globex_vault_epoch: u64,
}

/// acme/alice (in room `lobby`), acme/bob (in `secret` and `lobby`), globex/eve (in `vault` and globex's own
/// `lobby`), each with messages on every stream. Payloads name their owner.
fn hostile_world(cfg: Config) -> World {
    let mut sim = Sim::new(cfg);
    let (a, alice) = open_flushed(&mut sim, Principal::new("acme", "alice"));
    let (b, bob) = open_flushed(&mut sim, Principal::new("acme", "bob").roles(["admin"]));
    let (e, eve) = open_flushed(&mut sim, Principal::new("globex", "eve"));
    sim.hub.join(sim.now, a, "lobby").unwrap();
    sim.hub.join(sim.now, b, "secret").unwrap();
    // Bob keeps acme's lobby alive while alice is away.
    sim.hub.join(sim.now, b, "lobby").unwrap();
    sim.hub.join(sim.now, e, "vault").unwrap();
    sim.hub.join(sim.now, e, "lobby").unwrap();
    let mut epochs = std::collections::HashMap::new();
    for _ in 0..3 {
        for (target, owner) in [
            (user("acme", "alice"), "alice"),
            (user("acme", "bob"), "bob"),
            (user("globex", "eve"), "eve"),
            (Target::Room { tenant: "acme".into(), room: "lobby".into() }, "acme-lobby"),
            (Target::Room { tenant: "acme".into(), room: "secret".into() }, "bob-room"),
            (Target::Room { tenant: "globex".into(), room: "vault".into() }, "eve-room"),
            (Target::Room { tenant: "globex".into(), room: "lobby".into() }, "eve-room"),
            (Target::Tenant { tenant: "acme".into(), audience: Audience::All }, "acme-all"),
            (
                Target::Tenant { tenant: "acme".into(), audience: Audience::Role("admin".into()) },
                "acme-admin",
            ),
            (Target::Tenant { tenant: "globex".into(), audience: Audience::All }, "eve-tenant"),
        ] {
            let env = Envelope::new(target, EventKind::ToolCompleted).data(json!({"owner": owner}));
            let (p, actions) = publish(&mut sim, env);
            flush(&mut sim, &actions);
            let (name, pos) = p.position.unwrap();
            epochs.insert(owner, (name, pos.epoch));
        }
    }
    // Alice leaves; her next connection tries its luck.
    sim.hub.disconnect(sim.now, a, DisconnectReason::Clean).unwrap();
    sim.drain();
    World {
        sim,
        alice,
        bob,
        eve,
        acme_lobby_epoch: epochs["acme-lobby"].1,
        acme_secret_epoch: epochs["bob-room"].1,
        globex_vault_epoch: epochs["eve-room"].1,
    }
}

/// Nothing another user (or tenant, or a room alice is not in, or an admin-only broadcast) owns
/// ever reaches alice.
fn assert_only_alices(frames: &[Value]) {
    for f in events(frames) {
        let owner = f["data"]["owner"].as_str().unwrap();
        assert!(
            ["alice", "acme-lobby", "acme-all"].contains(&owner),
            "alice received {owner}'s message: {f}"
        );
    }
}

/// A fresh connection of alice in `lobby` (as the application would rejoin her).
fn alice_again(w: &mut World) -> ConnId {
    let (id, _) = open_flushed(&mut w.sim, Principal::new("acme", "alice"));
    w.sim.hub.join(w.sim.now, id, "lobby").unwrap();
    w.sim.drain();
    id
}

#[test]
fn resume_naming_streams_the_connection_does_not_have_replays_nothing_of_them() {
    let mut w = hostile_world(Config::default());
    let (ue, _) = pos(&w.alice, "u");
    let (te, _) = pos(&w.alice, "t");
    let (bob_u, bob_seq) = (pos(&w.bob, "u").0, 3);
    let (eve_u, eve_t) = (pos(&w.eve, "u").0, pos(&w.eve, "t").0);
    let id = alice_again(&mut w);
    let frame = resume(&[
        ("u", ue, 0),
        ("t", te, 0),
        ("r:lobby", w.acme_lobby_epoch, 0),
        ("r:secret", w.acme_secret_epoch, 0),
        ("r:vault", w.globex_vault_epoch, 0),
        ("x", bob_u, 0),
        ("u:bob", bob_u, 0),
        ("acme/bob", bob_u, bob_seq),
        ("", eve_u, 0),
        ("T", eve_t, 0),
    ]);
    let (r, actions) = send(&mut w.sim, id, &frame);
    r.expect("a resume naming foreign streams is answered, not refused");
    assert!(audits(&actions).contains(&AuditKind::ForeignStream));
    let frames = frames_for(&actions, id);
    assert_only_alices(&frames);
    // Her own streams are replayed in full: 3 + 3 on u (her messages), 3 acme-all on t (not the
    // admin-only ones), 3 lobby messages of acme.
    let evs = events(&frames);
    let owners: Vec<&str> = evs.iter().map(|f| f["data"]["owner"].as_str().unwrap()).collect();
    assert_eq!(owners.iter().filter(|o| **o == "alice").count(), 3);
    assert_eq!(owners.iter().filter(|o| **o == "acme-all").count(), 3);
    assert_eq!(owners.iter().filter(|o| **o == "acme-lobby").count(), 3);
    let resumed = frames.last().unwrap();
    assert_eq!(resumed["type"], "resumed");
    assert_eq!(resumed["recovered"], false, "foreign names make the resume incomplete");
    for own in ["u", "t", "r:lobby"] {
        assert_eq!(resumed["streams"][own]["recovered"], true, "{own}: {resumed}");
    }
    for foreign in ["r:secret", "r:vault", "x", "u:bob", "acme/bob", "", "T"] {
        let r = &resumed["streams"][foreign];
        assert_eq!(r["recovered"], false, "{foreign}: {resumed}");
        assert_eq!(r["reason"], "unknown_stream", "{foreign}: {resumed}");
        // Nothing about the foreign stream leaks through the report either.
        assert_eq!((r["epoch"].as_u64(), r["seq"].as_u64()), (Some(0), Some(0)));
    }
}

#[test]
fn resume_with_foreign_or_impossible_positions_is_unrecovered_with_a_reason() {
    let mut w = hostile_world(Config::default());
    let (ue, _) = pos(&w.alice, "u");
    let (te, _) = pos(&w.alice, "t");
    let bob_u = pos(&w.bob, "u").0;
    let eve_t = pos(&w.eve, "t").0;
    let globex_lobby_epoch = {
        // The lobby of globex is another stream with its own epoch.
        let env = Envelope::new(
            Target::Room { tenant: "globex".into(), room: "lobby".into() },
            EventKind::ToolCompleted,
        )
        .data(json!({"owner": "eve-room"}));
        let (p, actions) = publish(&mut w.sim, env);
        flush(&mut w.sim, &actions);
        p.position.unwrap().1.epoch
    };
    assert_ne!(globex_lobby_epoch, w.acme_lobby_epoch);
    // (what, positions, stream, expected reason)
    type Case<'a> = (&'a str, Vec<(&'a str, u64, u64)>, &'a str, &'a str);
    let cases: Vec<Case> = vec![
        ("another user's epoch", vec![("u", bob_u, 0)], "u", "epoch_mismatch"),
        ("another user's epoch and seq", vec![("u", bob_u, 2)], "u", "epoch_mismatch"),
        ("another tenant's broadcast", vec![("t", eve_t, 0)], "t", "epoch_mismatch"),
        (
            "another tenant's room of the same name",
            vec![("r:lobby", globex_lobby_epoch, 0)],
            "r:lobby",
            "epoch_mismatch",
        ),
        ("wrong epoch", vec![("u", ue ^ 1, 0)], "u", "epoch_mismatch"),
        ("seq from the future", vec![("u", ue, 999)], "u", "future_seq"),
        ("seq just past the end", vec![("u", ue, 4)], "u", "future_seq"),
        ("max seq", vec![("t", te, u64::MAX)], "t", "future_seq"),
        ("zero epoch", vec![("u", 0, 0)], "u", "epoch_mismatch"),
    ];
    for (what, positions, stream, reason) in cases {
        let id = alice_again(&mut w);
        let (r, actions) = send(&mut w.sim, id, &resume(&positions));
        r.unwrap_or_else(|e| panic!("{what}: {e}"));
        let frames = frames_for(&actions, id);
        assert_only_alices(&frames);
        assert!(events(&frames).is_empty(), "{what}: nothing to replay: {frames:?}");
        let resumed = frames.last().unwrap();
        assert_eq!(resumed["type"], "resumed", "{what}");
        assert_eq!(resumed["recovered"], false, "{what}: {resumed}");
        assert_eq!(resumed["streams"][stream]["recovered"], false, "{what}: {resumed}");
        assert_eq!(resumed["streams"][stream]["reason"], reason, "{what}: {resumed}");
        w.sim.hub.disconnect(w.sim.now, id, DisconnectReason::Clean).unwrap();
        w.sim.drain();
    }
    assert_eq!(w.sim.hub.stats().closed_by.protocol_violation, 0);
}

#[test]
fn malformed_oversized_and_repeated_resumes_get_a_clear_error_frame() {
    let rooms = 4u32;
    let cfg = Config { max_rooms_per_connection: rooms, ..Config::default() };
    let mut w = hostile_world(cfg);
    let (ue, _) = pos(&w.alice, "u");
    let many = |n: usize| -> String {
        let map: serde_json::Map<String, Value> =
            (0..n).map(|i| (format!("r:room{i}"), json!({"epoch": 1, "seq": 0}))).collect();
        json!({"type": "resume", "positions": map}).to_string()
    };
    let bad: Vec<(&str, String, &str)> = vec![
        ("too many positions", many(2 + rooms as usize + 1), "invalid_field"),
        ("far too many positions", many(1000), "invalid_field"),
        ("no positions", r#"{"type":"resume"}"#.into(), "invalid_field"),
        ("null positions", r#"{"type":"resume","positions":null}"#.into(), "invalid_field"),
        (
            "positions as a list",
            r#"{"type":"resume","positions":[["u",1,0]]}"#.into(),
            "invalid_field",
        ),
        ("positions as a string", r#"{"type":"resume","positions":"u"}"#.into(), "invalid_field"),
        (
            "missing seq",
            r#"{"type":"resume","positions":{"u":{"epoch":1}}}"#.into(),
            "invalid_field",
        ),
        (
            "negative epoch",
            r#"{"type":"resume","positions":{"u":{"epoch":-1,"seq":0}}}"#.into(),
            "invalid_field",
        ),
        (
            "fractional seq",
            r#"{"type":"resume","positions":{"u":{"epoch":1,"seq":0.5}}}"#.into(),
            "invalid_field",
        ),
        (
            "seq beyond u64",
            r#"{"type":"resume","positions":{"u":{"epoch":1,"seq":18446744073709551616}}}"#.into(),
            "invalid_field",
        ),
        (
            "string epoch",
            r#"{"type":"resume","positions":{"u":{"epoch":"1","seq":0}}}"#.into(),
            "invalid_field",
        ),
        (
            "position not an object",
            r#"{"type":"resume","positions":{"u":7}}"#.into(),
            "invalid_field",
        ),
        ("truncated", r#"{"type":"resume","positions":{"u":{"epoch":1,"#.into(), "malformed"),
    ];
    for (what, frame, code) in bad {
        let id = alice_again(&mut w);
        let (r, actions) = send(&mut w.sim, id, &frame);
        let err = r.expect_err(what);
        let frames = frames_for(&actions, id);
        assert_eq!(frames.len(), 1, "{what}: {frames:?}");
        assert_eq!(frames[0]["type"], "error", "{what}");
        assert_eq!(frames[0]["code"], code, "{what}: {err}");
        assert!(frames[0]["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert!(matches!(err, ReceiveError::Peer(_)), "{what}: a peer's fault, not the caller's");
        if code == "invalid_field" {
            assert_eq!(err, ReceiveError::Peer(PeerError::InvalidField { field: "positions" }));
        }
        // The refused frame did not count as the resume: a good one still works.
        let (r, actions) = send(&mut w.sim, id, &resume(&[("u", ue, 0)]));
        r.unwrap_or_else(|e| panic!("{what}: then a valid resume: {e}"));
        let frames = frames_for(&actions, id);
        assert_only_alices(&frames);
        assert_eq!(seqs(&events(&frames)), vec![1, 2, 3], "{what}");
        assert_eq!(frames.last().unwrap()["recovered"], true);
        w.sim.hub.disconnect(w.sim.now, id, DisconnectReason::Clean).unwrap();
        w.sim.drain();
    }

    // Exactly at the cap (u, t and one per allowed room) is accepted.
    let id = alice_again(&mut w);
    let (r, actions) = send(&mut w.sim, id, &many(2 + rooms as usize));
    r.expect("at the cap");
    let frames = frames_for(&actions, id);
    assert_eq!(frames.last().unwrap()["type"], "resumed");
    assert_only_alices(&frames);

    // A second resume on the same connection is refused and replays nothing.
    let (r, actions) = send(&mut w.sim, id, &resume(&[("u", ue, 0)]));
    assert_eq!(r, Err(ReceiveError::Peer(PeerError::AlreadyResumed)));
    let frames = frames_for(&actions, id);
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0]["code"], "already_resumed");

    // Duplicate names in one object do not replay twice.
    let id = alice_again(&mut w);
    let dup = format!(
        r#"{{"type":"resume","positions":{{"u":{{"epoch":{ue},"seq":0}},"u":{{"epoch":{ue},"seq":1}}}}}}"#
    );
    let (r, actions) = send(&mut w.sim, id, &dup);
    let frames = frames_for(&actions, id);
    if r.is_ok() {
        let evs = events(&frames);
        let s = seqs(&evs);
        let mut dedup = s.clone();
        dedup.dedup();
        assert_eq!(s, dedup, "no frame twice");
        assert!(s.windows(2).all(|w| w[0] < w[1]));
    } else {
        assert_eq!(frames[0]["type"], "error");
    }
    assert_only_alices(&frames);
}

#[test]
fn hostile_resumes_during_a_resume_window_still_replay_only_own_data() {
    let cfg = Config { resume_window: Duration::from_secs(5), ..Config::default() };
    let mut w = hostile_world(cfg);
    let bob_u = pos(&w.bob, "u").0;
    let id = alice_again(&mut w);
    assert!(w.sim.hub.connection(id).unwrap().held());
    // Traffic for everyone while alice's connection is held.
    for (target, owner) in [
        (user("acme", "alice"), "alice"),
        (user("acme", "bob"), "bob"),
        (Target::Room { tenant: "acme".into(), room: "secret".into() }, "bob-room"),
        (Target::Room { tenant: "acme".into(), room: "lobby".into() }, "acme-lobby"),
    ] {
        let env = Envelope::new(target, EventKind::AgentStarted).data(json!({"owner": owner}));
        let (_, actions) = publish(&mut w.sim, env);
        flush(&mut w.sim, &actions);
        assert!(frames_for(&actions, id).is_empty(), "held");
    }
    let (r, actions) = send(
        &mut w.sim,
        id,
        &resume(&[("u", bob_u, 0), ("r:secret", w.acme_secret_epoch, 0), ("x", 1, 1)]),
    );
    r.unwrap();
    let frames = frames_for(&actions, id);
    assert_only_alices(&frames);
    // Her own held-back traffic still follows, even though her `u` position was bogus.
    let owners: Vec<&str> =
        events(&frames).iter().map(|f| f["data"]["owner"].as_str().unwrap()).collect();
    assert_eq!(owners, vec!["alice", "acme-lobby"]);
    let resumed = frames.last().unwrap();
    assert_eq!(resumed["streams"]["u"]["reason"], "epoch_mismatch");
    assert_eq!(resumed["streams"]["r:secret"]["reason"], "unknown_stream");
    assert!(!w.sim.hub.connection(id).unwrap().held());
}

// ---------------------------------------------------------------------------------------------
// 7. Detached users: buffered within retention, retired after it

#[test]
fn a_detached_user_is_buffered_and_replayed_within_retention_and_forgotten_after() {
    let retention = Duration::from_secs(120);
    let mut sim = Sim::default();
    let (a, connected) = open_flushed(&mut sim, Principal::new("acme", "alice"));
    let (epoch, seq0) = pos(&connected, "u");
    assert_eq!(seq0, 0);
    let (t_epoch, _) = pos(&connected, "t");
    sim.hub.disconnect(sim.now, a, DisconnectReason::Clean).unwrap();
    sim.drain();
    let since = sim.now;
    let view = sim.hub.user("acme", "alice").expect("kept while detached");
    assert_eq!(view.phase(), UserPhase::Detached { since, retires_at: since + retention });

    // Publishes while detached reach nobody live but are kept.
    sim.advance(Duration::from_secs(30));
    for i in 1..=5u64 {
        let env =
            Envelope::new(user("acme", "alice"), EventKind::ToolCompleted).data(json!({"n": i}));
        let (p, actions) = publish(&mut sim, env);
        assert!(p.undeliverable());
        assert_eq!(
            p.position.as_ref().map(|(n, pos)| (n.clone(), pos.epoch, pos.seq)),
            Some((StreamName::User, epoch, i))
        );
        assert!(actions.iter().all(|a| !matches!(a, Action::Deliver { .. })));
    }
    assert_eq!(sim.hub.user("acme", "alice").unwrap().buffered().0, 5);
    assert_eq!(sim.hub.stats().buffered_messages, 5);

    // Back within retention: the same stream, and exactly the five messages, in order.
    sim.advance(Duration::from_secs(60));
    let (b, connected) = open_flushed(&mut sim, Principal::new("acme", "alice"));
    assert_eq!(pos(&connected, "u"), (epoch, 5), "same epoch: the stream survived");
    assert_eq!(sim.hub.user("acme", "alice").unwrap().phase(), UserPhase::Active);
    let (r, actions) = send(&mut sim, b, &resume(&[("u", epoch, 0), ("t", t_epoch, 0)]));
    r.unwrap();
    let frames = frames_for(&actions, b);
    let evs = events(&frames);
    assert_eq!(seqs(&evs), vec![1, 2, 3, 4, 5]);
    assert!(evs.iter().zip(1..).all(|(f, n)| f["data"]["n"] == n && f["epoch"] == epoch));
    let resumed = frames.last().unwrap();
    assert_eq!(resumed["recovered"], true);
    assert_eq!(resumed["streams"]["u"]["replayed"], 5);
    assert_eq!(sim.hub.stats().replayed, 5);

    // Gone again, beyond retention: retired, stream and buffer with it.
    sim.hub.disconnect(sim.now, b, DisconnectReason::Clean).unwrap();
    sim.drain();
    sim.advance(retention - Duration::from_secs(1));
    assert!(sim.hub.user("acme", "alice").is_some());
    let actions = sim.advance(Duration::from_secs(1));
    assert!(sim.hub.user("acme", "alice").is_none());
    assert!(metrics(&actions).iter().any(|m| matches!(m,
        MetricEvent::UserRetired { user, .. } if user.as_str() == "alice")));
    assert_eq!(sim.hub.stats().users_retired, 1);
    assert_eq!(sim.hub.stats().buffered_messages, 0);
    assert_eq!(sim.hub.stats().buffered_bytes, 0);
    // Publishing to a retired user creates nothing.
    let (p, _) = publish(&mut sim, Envelope::new(user("acme", "alice"), EventKind::ToolCompleted));
    assert_eq!(p.position, None);
    assert!(sim.hub.user("acme", "alice").is_none());

    // A later resume is told the truth: a new stream, nothing recoverable, nothing replayed.
    let (c, connected) = open_flushed(&mut sim, Principal::new("acme", "alice"));
    let (new_epoch, new_seq) = pos(&connected, "u");
    assert_ne!(new_epoch, epoch);
    assert_eq!(new_seq, 0);
    let (r, actions) = send(&mut sim, c, &resume(&[("u", epoch, 5)]));
    r.unwrap();
    let frames = frames_for(&actions, c);
    assert!(events(&frames).is_empty());
    let resumed = &frames[0];
    assert_eq!(resumed["recovered"], false);
    assert_eq!(resumed["streams"]["u"]["reason"], "epoch_mismatch");
    assert_eq!(resumed["streams"]["u"]["epoch"], new_epoch);
    assert_eq!(resumed["streams"]["u"]["seq"], 0);
}

#[test]
fn with_a_resume_window_the_backlog_and_the_held_traffic_arrive_in_order() {
    let cfg = Config { resume_window: Duration::from_secs(5), ..Config::default() };
    let mut sim = Sim::new(cfg);
    let (a, connected) = open_flushed(&mut sim, Principal::new("acme", "alice"));
    let (epoch, _) = pos(&connected, "u");
    // The first connection goes live with its first frame.
    let (r, _) = send(&mut sim, a, &resume(&[("u", epoch, 0)]));
    r.unwrap();
    sim.hub.disconnect(sim.now, a, DisconnectReason::Abnormal).unwrap();
    sim.drain();
    for _ in 0..3 {
        publish(&mut sim, Envelope::new(user("acme", "alice"), EventKind::ToolExecuting));
    }
    let (b, _) = open_flushed(&mut sim, Principal::new("acme", "alice"));
    assert!(sim.hub.connection(b).unwrap().held());
    // Published between connect and resume: held back, not sent ahead of the replay.
    for _ in 0..2 {
        let (p, actions) =
            publish(&mut sim, Envelope::new(user("acme", "alice"), EventKind::AgentThinking));
        assert_eq!(p.delivered, 0);
        assert!(frames_for(&actions, b).is_empty());
    }
    assert_eq!(sim.hub.stats().held_back, 2);
    sim.advance(Duration::from_secs(2));
    let (r, actions) = send(&mut sim, b, &resume(&[("u", epoch, 0)]));
    r.unwrap();
    let frames = frames_for(&actions, b);
    assert_eq!(seqs(&events(&frames)), vec![1, 2, 3, 4, 5]);
    assert_eq!(frames.last().unwrap()["streams"]["u"]["replayed"], 5);
    // Live from now on.
    let (_, actions) =
        publish(&mut sim, Envelope::new(user("acme", "alice"), EventKind::AgentCompleted));
    assert_eq!(seqs(&events(&frames_for(&actions, b))), vec![6]);

    // A connection that never sends anything goes live when the window runs out, with what
    // was published since it connected.
    let (c, _) = open_flushed(&mut sim, Principal::new("acme", "alice"));
    publish(&mut sim, Envelope::new(user("acme", "alice"), EventKind::ToolCompleted));
    let actions = sim.advance(Duration::from_secs(5));
    let frames = frames_for(&actions, c);
    assert_eq!(seqs(&events(&frames)), vec![7]);
    assert!(frames.iter().all(|f| f["type"] != "resumed"));
    assert!(!sim.hub.connection(c).unwrap().held());
}

#[test]
fn a_held_connection_whose_backlog_was_dropped_is_closed_rather_than_losing_it() {
    let cfg = Config {
        resume_window: Duration::from_secs(5),
        retention: Retention { max_messages: 3, ..Retention::default() },
        ..Config::default()
    };
    let mut sim = Sim::new(cfg);
    let (a, _) = open_flushed(&mut sim, Principal::new("acme", "alice"));
    for _ in 0..4 {
        publish(&mut sim, Envelope::new(user("acme", "alice"), EventKind::ToolCompleted));
    }
    let actions = sim.advance(Duration::from_secs(5));
    assert_eq!(closes(&actions), vec![(a, CloseReason::SlowConsumer)]);
    assert!(sim.hub.connection(a).is_none());
    assert_eq!(sim.hub.stats().closed_by.slow_consumer, 1);
}

/// `Retention::max_age`: "Oldest message kept". DESIGN §5: "Each stream keeps a recovery buffer
/// bounded by count, bytes and age." A message older than `max_age` is no longer kept: it is not
/// counted as buffered and a resume that needs it is `recovered: false`.
#[test]
fn messages_older_than_max_age_are_neither_kept_nor_replayed() {
    let cfg = Config {
        retention: Retention { max_age: Duration::from_secs(30), ..Retention::default() },
        ..Config::default()
    };
    let mut sim = Sim::new(cfg);
    let (a, connected) = open_flushed(&mut sim, Principal::new("acme", "alice"));
    let (epoch, _) = pos(&connected, "u");
    sim.hub.disconnect(sim.now, a, DisconnectReason::Clean).unwrap();
    sim.drain();
    for _ in 0..3 {
        publish(&mut sim, Envelope::new(user("acme", "alice"), EventKind::ToolCompleted));
    }
    assert_eq!(sim.hub.user("acme", "alice").unwrap().buffered().0, 3);
    // Within `user_retention` (2 min) but past `max_age`.
    sim.advance(Duration::from_secs(31));
    let held = sim.hub.user("acme", "alice").unwrap().buffered();
    let gauge = sim.hub.stats().buffered_messages;
    let (b, _) = open_flushed(&mut sim, Principal::new("acme", "alice"));
    let (r, actions) = send(&mut sim, b, &resume(&[("u", epoch, 0)]));
    r.unwrap();
    let frames = frames_for(&actions, b);
    let resumed = frames.last().unwrap();
    assert_eq!(
        (held.0, gauge, resumed["recovered"].as_bool(), events(&frames).len()),
        (0, 0, Some(false), 0),
        "31 s after publishing with max_age 30 s: buffered {held:?}, gauge {gauge}, resume {resumed}"
    );
    assert_eq!(resumed["streams"]["u"]["reason"], "gap_too_old");
}

// ---------------------------------------------------------------------------------------------
// Room retention

fn room_note(room: &str, n: u64) -> Envelope {
    let target = Target::Room { tenant: "acme".into(), room: room.into() };
    Envelope::new(target, EventKind::custom("note")).data(json!({ "n": n }))
}

/// Joins `room` and returns its `joined` position.
fn join_at(sim: &mut Sim, conn: ConnId, room: &str) -> (u64, u64) {
    assert!(sim.hub.join(sim.now, conn, room).unwrap());
    let frames = frames_for(&sim.drain(), conn);
    assert_eq!(frames.len(), 1);
    assert_eq!(
        (frames[0]["type"].as_str(), frames[0]["stream"].as_str()),
        (Some("joined"), Some(&*format!("r:{room}")))
    );
    (frames[0]["epoch"].as_u64().unwrap(), frames[0]["seq"].as_u64().unwrap())
}

#[test]
fn an_idle_room_keeps_its_stream_so_its_only_member_can_resume_it() {
    let cfg = Config { room_retention: secs(30), ..quiet() };
    let mut sim = Sim::new(cfg);
    let (a1, _) = open(&mut sim, Principal::new("acme", "alice"));
    let (epoch, seq) = join_at(&mut sim, a1, "lobby");
    assert_eq!(seq, 0);
    let (_, actions) = publish(&mut sim, room_note("lobby", 1));
    assert_eq!(seqs(&events(&frames_for(&actions, a1))), vec![1]);

    // Her only connection drops: the room goes idle, its stream keeps buffering.
    sim.hub.disconnect(sim.now, a1, DisconnectReason::Abnormal).unwrap();
    sim.drain();
    assert_eq!((sim.hub.stats().rooms, sim.hub.stats().rooms_idle), (0, 1));
    for n in 2..=4 {
        let (p, _) = publish(&mut sim, room_note("lobby", n));
        assert!(p.undeliverable());
        assert_eq!(p.position.unwrap().1.seq, n);
    }
    sim.now += secs(29);
    sim.hub.tick(sim.now);
    sim.drain();
    assert_eq!(sim.hub.stats().rooms_idle, 1, "still within room_retention");

    // She comes back: the same room, the same epoch, and exactly what she missed.
    let (a2, _) = open(&mut sim, Principal::new("acme", "alice"));
    assert_eq!(join_at(&mut sim, a2, "lobby"), (epoch, 4));
    assert_eq!((sim.hub.stats().rooms, sim.hub.stats().rooms_idle), (1, 0));
    let (r, actions) = send(&mut sim, a2, &resume(&[("r:lobby", epoch, 1)]));
    r.unwrap();
    let frames = frames_for(&actions, a2);
    let replayed: Vec<u64> = frames
        .iter()
        .filter(|f| f["type"] == "note")
        .map(|f| f["data"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(replayed, vec![2, 3, 4]);
    let resumed = frames.last().unwrap();
    assert_eq!(resumed["type"], "resumed");
    assert_eq!(resumed["streams"]["r:lobby"]["recovered"], true);
    sim.hub.check_invariants().unwrap();

    // Past room_retention an idle room is dropped: joining it again starts a new stream.
    sim.hub.disconnect(sim.now, a2, DisconnectReason::Clean).unwrap();
    sim.drain();
    sim.now += secs(31);
    sim.hub.tick(sim.now);
    sim.drain();
    assert_eq!((sim.hub.stats().rooms, sim.hub.stats().rooms_idle), (0, 0));
    let (a3, _) = open(&mut sim, Principal::new("acme", "alice"));
    let (new_epoch, new_seq) = join_at(&mut sim, a3, "lobby");
    assert_ne!(new_epoch, epoch);
    assert_eq!(new_seq, 0);
    let (_, actions) = send(&mut sim, a3, &resume(&[("r:lobby", epoch, 4)]));
    let resumed = frames_for(&actions, a3).pop().unwrap();
    assert_eq!(resumed["streams"]["r:lobby"]["reason"], "epoch_mismatch");
    sim.hub.check_invariants().unwrap();
}

#[test]
fn idle_rooms_are_capped_and_the_oldest_goes_first() {
    let cfg = Config { room_retention: secs(60), max_idle_rooms: 1, ..quiet() };
    let mut sim = Sim::new(cfg);
    let (a, _) = open(&mut sim, Principal::new("acme", "alice"));
    let (old_epoch, _) = join_at(&mut sim, a, "first");
    let (second_epoch, _) = join_at(&mut sim, a, "second");
    sim.hub.leave(sim.now, a, "first").unwrap();
    assert_eq!(sim.hub.stats().rooms_idle, 1);
    sim.now += secs(1);
    sim.hub.leave(sim.now, a, "second").unwrap();
    sim.drain();
    // Only one idle room may be kept: "first" was dropped early, "second" is kept.
    assert_eq!((sim.hub.stats().rooms, sim.hub.stats().rooms_idle), (0, 1));
    assert_ne!(join_at(&mut sim, a, "first").0, old_epoch, "first was dropped and starts anew");
    assert_eq!(join_at(&mut sim, a, "second").0, second_epoch, "second was kept idle");
    sim.hub.check_invariants().unwrap();
}

#[test]
fn without_room_retention_an_emptied_room_is_dropped_at_once() {
    let mut sim = Sim::new(quiet());
    let (a, _) = open(&mut sim, Principal::new("acme", "alice"));
    let (epoch, _) = join_at(&mut sim, a, "lobby");
    sim.hub.leave(sim.now, a, "lobby").unwrap();
    sim.drain();
    assert_eq!((sim.hub.stats().rooms, sim.hub.stats().rooms_idle), (0, 0));
    assert_ne!(join_at(&mut sim, a, "lobby").0, epoch);
}

#[test]
fn published_says_whether_the_message_was_kept_for_a_resume() {
    let mut sim = Sim::new(Config { max_buffered_bytes: 6_000, ..quiet() });
    let note = |target: Target| Envelope::new(target, EventKind::custom("notice"));
    let padded = |target: Target, n: usize| note(target).data(json!({ "pad": "p".repeat(n) }));
    let alice = sim.connect("acme", "alice");
    let live = sim.hub.publish(sim.now, note(user_target("acme", "alice"))).unwrap();
    assert_eq!((live.delivered, live.buffered), (1, true));
    // Detached: nobody to deliver to, kept for its next connection.
    sim.hub.disconnect(sim.now, alice, DisconnectReason::Clean).unwrap();
    let away = sim.hub.publish(sim.now, note(user_target("acme", "alice"))).unwrap();
    assert_eq!((away.delivered, away.buffered, away.undeliverable()), (0, true, true));
    // A user the hub does not hold has no stream; a duplicate publishes nothing.
    let nobody = sim.hub.publish(sim.now, note(user_target("acme", "nobody"))).unwrap();
    assert_eq!((nobody.position, nobody.buffered), (None, false));
    let keyed = || note(user_target("acme", "alice")).idempotency_key("k1");
    assert!(sim.hub.publish(sim.now, keyed()).unwrap().buffered);
    let again = sim.hub.publish(sim.now, keyed()).unwrap();
    assert_eq!((again.duplicate, again.buffered), (true, false));
    // Larger than the hub-wide cap: delivered to whom it can be, never kept.
    let bob = sim.connect("acme", "bob");
    let big = sim.hub.publish(sim.now, padded(user_target("acme", "bob"), 7_000)).unwrap();
    assert_eq!((big.delivered, big.buffered), (1, false));
    sim.drain();
    // Over the cap's watermark, detached users are evicted whole, oldest first: alice, then
    // carol, and the message just published to carol with her.
    let carol = sim.connect("acme", "carol");
    sim.hub.disconnect(sim.now, carol, DisconnectReason::Clean).unwrap();
    let evicted = sim.hub.publish(sim.now, padded(user_target("acme", "carol"), 5_500)).unwrap();
    assert!(evicted.position.is_some());
    assert!(sim.hub.user("acme", "alice").is_none() && sim.hub.user("acme", "carol").is_none());
    assert!(!evicted.buffered);
    // bob is live, so never evicted: kept even under the same pressure (the rest is shed).
    let kept = sim.hub.publish(sim.now, padded(user_target("acme", "bob"), 5_500)).unwrap();
    assert_eq!((kept.delivered, kept.buffered), (1, true));
    assert!(sim.hub.connection(bob).is_some());
}
