//! Lifecycle integration tests, through the public API only, on a virtual clock.
//!
//! Connections: the `connected` frame, heartbeats, session refresh and expiry, hub closes,
//! tombstones, stale ids after slot reuse, clamped time, `poll_timeout`.
//! User states: active → detached → retired, reattachment within retention, new epochs after
//! retirement, zero retention, publishing to users the hub never saw.
mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use switchboard::{
    Action, AuditKind, CloseReason, ClosedBy, Config, ConnError, ConnId, ConnectError,
    DisconnectReason, Envelope, EventKind, MetricEvent, Principal, PublishError, ReceiveError,
    RefreshError, RoomError, RoomId, StreamName, StreamPos, Target, TenantId, UserId, UserPhase,
};

/// An audit event as a comparable tuple (`AuditEvent` is `#[non_exhaustive]`: tests read it,
/// they cannot build one).
type Audit = (AuditKind, Option<ConnId>, Option<TenantId>, Option<UserId>);

/// The audit events among `actions` (shadows `common::audit_events`).
fn audit_events(actions: &[Action]) -> Vec<Audit> {
    common::audit_events(actions).into_iter().map(|e| (e.kind, e.conn, e.tenant, e.user)).collect()
}

// ---------------------------------------------------------------------------------------------
// Local helpers

/// The connection a transport action (`Deliver`, `Ping`, `Close`) is addressed to.
fn transport_target(action: &Action) -> Option<ConnId> {
    match action {
        Action::Deliver { conn, .. } | Action::Ping { conn } | Action::Close { conn, .. } => {
            Some(*conn)
        }
        _ => None,
    }
}

fn user_env(tenant: &str, user: &str, kind: EventKind) -> Envelope {
    Envelope::new(Target::User { tenant: tenant.into(), user: user.into() }, kind)
}

/// Connects and returns the id together with the parsed `connected` frame.
fn connect_with_frame(sim: &mut Sim, principal: Principal) -> (ConnId, Value) {
    let id = sim.hub.connect(sim.now, principal).expect("admitted");
    let actions = sim.drain();
    let frame = frames_for(&actions, id).into_iter().next().expect("connected frame");
    assert_eq!(frame["type"], "connected");
    (id, frame)
}

fn stream_pos(v: &Value) -> StreamPos {
    StreamPos { epoch: v["epoch"].as_u64().expect("epoch"), seq: v["seq"].as_u64().expect("seq") }
}

// ---------------------------------------------------------------------------------------------
// The `connected` frame

#[test]
fn connected_frame_is_the_first_action_for_a_new_connection() {
    let mut sim = Sim::default();
    let expires = sim.now + secs(300);
    let id = sim.hub.connect(sim.now, Principal::new("acme", "alice").expires_at(expires)).unwrap();
    let actions = sim.drain();

    // No transport action for anyone precedes it, and the first one for this id is `connected`.
    let first = actions.iter().find(|a| transport_target(a).is_some()).expect("a transport action");
    let Action::Deliver { conn, frame } = first else {
        panic!("first transport action: {first:?}")
    };
    assert_eq!(*conn, id);
    let v: Value = serde_json::from_str(frame.as_str()).unwrap();
    assert_eq!(v["type"], "connected");
    assert_eq!(v["conn_id"], id.to_string());
    assert_eq!(v["tenant"], "acme");
    assert_eq!(v["user"], "alice");
    assert_eq!(v["heartbeat_ms"], 25_000);
    assert_eq!(v["session_expires_in_ms"], 300_000);
    let u = stream_pos(&v["streams"]["u"]);
    let t = stream_pos(&v["streams"]["t"]);
    assert_eq!(u.seq, 0, "a new user's stream is empty");
    assert_eq!(t.seq, 0, "a new tenant's broadcast stream is empty");
    assert_ne!(u.epoch, 0);
    assert_ne!(t.epoch, 0);
    assert_ne!(u.epoch, t.epoch, "user and tenant streams are distinct incarnations");
    assert_eq!(sim.hub.user("acme", "alice").unwrap().stream_position(), u);

    // The lifecycle metrics come along.
    let m = metrics(&actions);
    assert!(m.contains(&MetricEvent::UserCreated { tenant: "acme".into(), user: "alice".into() }));
    assert!(m.contains(&MetricEvent::ConnectionOpened {
        conn: id,
        tenant: "acme".into(),
        user: "alice".into(),
        tier: switchboard::Tier::Free,
    }));
}

#[test]
fn connected_frame_without_expiry_and_with_current_stream_positions() {
    let mut sim = Sim::new(quiet());
    let (_, first) = connect_with_frame(&mut sim, Principal::new("acme", "alice"));
    assert!(first["session_expires_in_ms"].is_null());
    assert_eq!(first["heartbeat_ms"], 3_600_000);

    // Two user events and one tenant broadcast later, a second connection sees where the
    // streams stand, in the same epochs.
    for _ in 0..2 {
        sim.hub.publish(sim.now, user_env("acme", "alice", EventKind::AgentThinking)).unwrap();
    }
    let all = Target::Tenant { tenant: "acme".into(), audience: switchboard::Audience::All };
    sim.hub.publish(sim.now, Envelope::new(all, EventKind::custom("notice"))).unwrap();
    sim.drain();
    let (second, v) = connect_with_frame(&mut sim, Principal::new("acme", "alice"));
    assert_eq!(v["conn_id"], second.to_string());
    let u0 = stream_pos(&first["streams"]["u"]);
    let t0 = stream_pos(&first["streams"]["t"]);
    assert_eq!(stream_pos(&v["streams"]["u"]), StreamPos { epoch: u0.epoch, seq: 2 });
    assert_eq!(stream_pos(&v["streams"]["t"]), StreamPos { epoch: t0.epoch, seq: 1 });
}

// ---------------------------------------------------------------------------------------------
// Heartbeats

#[test]
fn silence_brings_a_ping_then_a_heartbeat_timeout_close() {
    let mut sim = Sim::default();
    let t0 = sim.now;
    let id = sim.connect("acme", "alice");

    assert!(sim.advance(secs(25) - ms(1)).is_empty(), "nothing before the interval");
    let actions = sim.advance(ms(1));
    assert_eq!(pings(&actions), vec![id]);
    assert!(closes(&actions).is_empty());
    assert!(sim.hub.connection(id).unwrap().awaiting_pong());
    assert_eq!(sim.hub.stats().pings_sent, 1);

    assert!(sim.advance(secs(10) - ms(1)).is_empty(), "nothing before the timeout");
    let actions = sim.advance(ms(1));
    assert_eq!(closes(&actions), vec![(id, CloseReason::HeartbeatTimeout)]);
    assert!(pings(&actions).is_empty());
    assert_eq!(CloseReason::HeartbeatTimeout.code(), 4000);
    assert!(CloseReason::HeartbeatTimeout.reconnect());
    assert!(metrics(&actions).contains(&MetricEvent::ConnectionClosed {
        conn: id,
        tenant: "acme".into(),
        user: "alice".into(),
        lifetime: secs(35),
        reason: ClosedBy::Hub(CloseReason::HeartbeatTimeout),
    }));
    assert_eq!(sim.now, t0 + secs(35));

    let s = sim.hub.stats();
    assert_eq!(s.closed_by.heartbeat_timeout, 1);
    assert_eq!(s.heartbeat_timeouts(), 1);
    assert_eq!(s.connections_active, 0);
    assert!(sim.hub.connection(id).is_none());
    // The close removed it at once: a late pong is the usual race, not a panic.
    assert_eq!(sim.hub.pong(sim.now, id), Err(ConnError::Unknown { recently_closed: true }));
}

#[test]
fn a_pong_resets_liveness() {
    let mut sim = Sim::default();
    let id = sim.connect("acme", "alice");
    assert_eq!(pings(&sim.advance(secs(25))), vec![id]);

    sim.now += secs(5); // t0 + 30
    sim.hub.pong(sim.now, id).unwrap();
    assert!(!sim.hub.connection(id).unwrap().awaiting_pong());
    assert_eq!(sim.hub.connection(id).unwrap().last_seen(), sim.now);
    assert_eq!(sim.hub.stats().pongs_received, 1);

    // The old timeout passes harmlessly; the next ping comes one interval after the pong.
    let quiet_until = sim.advance(secs(25) - ms(1)); // t0 + 54.999
    assert!(closes(&quiet_until).is_empty());
    assert!(pings(&quiet_until).is_empty());
    assert_eq!(pings(&sim.advance(ms(1))), vec![id]); // t0 + 55
    assert!(sim.hub.connection(id).is_some());
}

#[test]
fn any_inbound_frame_resets_liveness_even_a_bad_one() {
    let mut sim = Sim::default();
    let id = sim.connect("acme", "alice");

    sim.now += secs(20);
    sim.hub.receive(sim.now, id, br#"{"type":"ping"}"#).unwrap();
    sim.drain();
    assert!(pings(&sim.advance(secs(5))).is_empty(), "no ping at t0+25: it spoke at t0+20");
    assert!(pings(&sim.advance(secs(20) - ms(1))).is_empty());
    assert_eq!(pings(&sim.advance(ms(1))), vec![id]); // t0 + 45

    // A ping is outstanding; a malformed frame is still a sign of life.
    sim.now += secs(5); // t0 + 50
    assert!(sim.hub.receive(sim.now, id, b"not json").is_err());
    sim.drain();
    assert!(!sim.hub.connection(id).unwrap().awaiting_pong());
    let at_timeout = sim.advance(secs(5)); // t0 + 55, the old timeout
    assert!(closes(&at_timeout).is_empty());
    assert!(pings(&sim.advance(secs(20) - ms(1))).is_empty());
    assert_eq!(pings(&sim.advance(ms(1))), vec![id]); // t0 + 75
}

#[test]
fn only_the_silent_connection_is_pinged_and_closed() {
    let mut sim = Sim::default();
    let chatty = sim.connect("acme", "alice");
    let silent = sim.connect("acme", "bob");
    for _ in 0..4 {
        sim.now += secs(10);
        sim.hub.pong(sim.now, chatty).unwrap();
        sim.hub.tick(sim.now);
        let actions = sim.drain();
        assert!(!pings(&actions).contains(&chatty));
        assert!(!closes(&actions).iter().any(|(c, _)| *c == chatty));
    }
    // By t0+40 the silent one was pinged at 25 and closed at 35.
    assert_eq!(sim.hub.stats().closed_by.heartbeat_timeout, 1);
    assert!(sim.hub.connection(silent).is_none());
    assert!(sim.hub.connection(chatty).is_some());
}

// ---------------------------------------------------------------------------------------------
// Sessions

#[test]
fn refresh_required_goes_out_grace_before_expiry_then_the_session_expires() {
    let mut sim = Sim::new(quiet());
    let t0 = sim.now;
    let id = sim.connect_as(Principal::new("acme", "alice").expires_at(t0 + secs(120)));

    assert!(sim.advance(secs(60) - ms(1)).is_empty());
    let actions = sim.advance(ms(1)); // t0 + 60 = expiry - grace
    let frames = frames_for(&actions, id);
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0]["type"], "refresh_required");
    assert_eq!(frames[0]["expires_in_ms"], 60_000);
    assert!(closes(&actions).is_empty());
    assert_eq!(sim.hub.stats().refresh_required_sent, 1);

    assert!(sim.advance(secs(60) - ms(1)).is_empty(), "no second refresh_required, no close yet");
    let actions = sim.advance(ms(1)); // t0 + 120
    assert_eq!(closes(&actions), vec![(id, CloseReason::SessionExpired)]);
    assert_eq!(CloseReason::SessionExpired.code(), 4001);
    assert!(CloseReason::SessionExpired.reconnect());
    assert_eq!(sim.hub.stats().closed_by.session_expired, 1);
    assert_eq!(
        sim.hub.receive(sim.now, id, br#"{"type":"ping"}"#),
        Err(ReceiveError::Conn(ConnError::Unknown { recently_closed: true }))
    );
}

#[test]
fn refresh_extends_the_session() {
    let mut sim = Sim::new(quiet());
    let t0 = sim.now;
    let id = sim.connect_as(Principal::new("acme", "alice").expires_at(t0 + secs(120)));
    assert_eq!(frames_for(&sim.advance(secs(61)), id)[0]["type"], "refresh_required");

    sim.hub.refresh(sim.now, id, Some(t0 + secs(300))).unwrap();
    assert_eq!(sim.hub.connection(id).unwrap().expires_at(), Some(t0 + secs(300)));
    assert_eq!(sim.hub.stats().sessions_refreshed, 1);

    // The old expiry passes without a close.
    let actions = sim.advance(secs(59)); // t0 + 120
    assert!(closes(&actions).is_empty());
    assert!(sim.hub.connection(id).is_some());
    // A new refresh_required one grace before the new expiry, then the close.
    assert!(sim.advance(secs(120) - ms(1)).is_empty()); // t0 + 239.999
    let actions = sim.advance(ms(1)); // t0 + 240
    let frames = frames_for(&actions, id);
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0]["type"], "refresh_required");
    assert_eq!(frames[0]["expires_in_ms"], 60_000);
    assert_eq!(closes(&sim.advance(secs(60))), vec![(id, CloseReason::SessionExpired)]);
}

#[test]
fn refresh_to_no_expiry_ends_the_session_clock() {
    let mut sim = Sim::new(quiet());
    let t0 = sim.now;
    let id = sim.connect_as(Principal::new("acme", "alice").expires_at(t0 + secs(120)));
    sim.now += secs(10);
    sim.hub.refresh(sim.now, id, None).unwrap();
    assert_eq!(sim.hub.connection(id).unwrap().expires_at(), None);
    for _ in 0..10 {
        let actions = sim.advance(secs(60));
        assert!(closes(&actions).is_empty());
        assert!(deliveries(&actions).is_empty(), "no refresh_required without an expiry");
    }
}

#[test]
fn refresh_to_an_earlier_expiry_moves_the_deadline_forward() {
    let mut sim = Sim::new(quiet());
    let t0 = sim.now;
    let id = sim.connect_as(Principal::new("acme", "alice").expires_at(t0 + secs(600)));
    assert_eq!(sim.hub.poll_timeout(), Some(t0 + secs(540)));
    sim.now += secs(10);
    sim.hub.refresh(sim.now, id, Some(t0 + secs(100))).unwrap();
    assert_eq!(sim.hub.poll_timeout(), Some(t0 + secs(40)), "timer moved earlier at once");

    assert!(sim.advance(secs(30) - ms(1)).is_empty());
    let frames = frames_for(&sim.advance(ms(1)), id); // t0 + 40
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0]["type"], "refresh_required");
    assert_eq!(frames[0]["expires_in_ms"], 60_000);
    assert_eq!(closes(&sim.advance(secs(60))), vec![(id, CloseReason::SessionExpired)]);
}

#[test]
fn refresh_into_the_past_is_refused_and_keeps_the_old_expiry() {
    let mut sim = Sim::new(quiet());
    let t0 = sim.now;
    let id = sim.connect_as(Principal::new("acme", "alice").expires_at(t0 + secs(120)));
    sim.now += secs(10);
    assert_eq!(sim.hub.refresh(sim.now, id, Some(sim.now)), Err(RefreshError::ExpiryInPast));
    assert_eq!(sim.hub.refresh(sim.now, id, Some(t0 + secs(5))), Err(RefreshError::ExpiryInPast));
    assert_eq!(sim.hub.connection(id).unwrap().expires_at(), Some(t0 + secs(120)));
    assert_eq!(sim.hub.stats().sessions_refreshed, 0);
    assert!(sim.drain().is_empty());
    // The old schedule stands.
    let actions = sim.advance(secs(50)); // t0 + 60
    assert_eq!(frames_for(&actions, id)[0]["type"], "refresh_required");
    assert!(closes(&actions).is_empty());
    assert_eq!(closes(&sim.advance(secs(60))), vec![(id, CloseReason::SessionExpired)]);
}

#[test]
fn a_session_shorter_than_the_grace_asks_for_refresh_at_once() {
    let mut sim = Sim::new(quiet());
    let t0 = sim.now;
    let id = sim.connect_as(Principal::new("acme", "alice").expires_at(t0 + secs(30)));
    let due = sim.hub.poll_timeout().expect("armed");
    assert!(due <= sim.now, "refresh is due immediately, got {:?}", due - t0);
    sim.hub.tick(sim.now);
    let frames = frames_for(&sim.drain(), id);
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0]["type"], "refresh_required");
    assert_eq!(frames[0]["expires_in_ms"], 30_000);
    assert_eq!(closes(&sim.advance(secs(30))), vec![(id, CloseReason::SessionExpired)]);
}

#[test]
fn connecting_with_an_expired_session_is_refused_and_creates_nothing() {
    let mut sim = Sim::default();
    sim.now += secs(10);
    let now = sim.now;
    for expiry in [now, now - secs(5)] {
        let r = sim.hub.connect(now, Principal::new("acme", "alice").expires_at(expiry));
        assert_eq!(r, Err(ConnectError::SessionExpired));
    }
    assert!(sim.drain().is_empty(), "no frame, no metric");
    assert!(sim.hub.user("acme", "alice").is_none());
    let s = sim.hub.stats();
    assert_eq!(s.connects_refused_expired, 2);
    assert_eq!((s.connections_opened, s.users_created, s.tenants), (0, 0, 0));
    assert_eq!(sim.hub.poll_timeout(), None, "no timer was armed");
}

// ---------------------------------------------------------------------------------------------
// Closes, tombstones, stale ids

#[test]
fn close_kicked_emits_close_and_the_id_is_tombstoned_then_forgotten() {
    let mut sim = Sim::new(Config { tombstone_ttl: secs(60), ..quiet() });
    let id = sim.connect("acme", "alice");
    sim.now += secs(7);
    sim.hub.close(sim.now, id, CloseReason::Kicked).unwrap();
    let actions = sim.drain();
    assert_eq!(closes(&actions), vec![(id, CloseReason::Kicked)]);
    assert_eq!(CloseReason::Kicked.code(), 4005);
    assert!(!CloseReason::Kicked.reconnect());
    assert!(metrics(&actions).contains(&MetricEvent::ConnectionClosed {
        conn: id,
        tenant: "acme".into(),
        user: "alice".into(),
        lifetime: secs(7),
        reason: ClosedBy::Hub(CloseReason::Kicked),
    }));
    assert_eq!(sim.hub.stats().closed_by.kicked, 1);
    assert!(sim.hub.connection(id).is_none());

    let gone = |recently_closed| ConnError::Unknown { recently_closed };
    let check_all = |sim: &mut Sim, expected: ConnError| {
        let now = sim.now;
        let hub = &mut sim.hub;
        assert_eq!(hub.receive(now, id, br#"{"type":"ping"}"#), Err(ReceiveError::Conn(expected)));
        assert_eq!(hub.pong(now, id), Err(expected));
        assert_eq!(hub.written(now, id, 10), Err(expected));
        assert_eq!(hub.refresh(now, id, None), Err(RefreshError::Conn(expected)));
        assert_eq!(hub.join(now, id, RoomId::from("lobby")), Err(RoomError::Conn(expected)));
        assert_eq!(hub.leave(now, id, "lobby"), Err(expected));
        let env = Envelope::new(Target::Connection(id), EventKind::AgentStarted);
        assert_eq!(hub.publish(now, env), Err(PublishError::Conn(expected)));
        assert_eq!(hub.close(now, id, CloseReason::Kicked), Err(expected));
        assert_eq!(hub.disconnect(now, id, DisconnectReason::Clean), Err(expected));
        let actions = sim.drain();
        assert!(actions.is_empty(), "a closed id is not audited as stale: {actions:?}");
    };
    check_all(&mut sim, gone(true));
    sim.now += secs(60) - ms(1);
    check_all(&mut sim, gone(true));
    sim.now += ms(2); // past the tombstone
    check_all(&mut sim, gone(false));
    assert_eq!(sim.hub.stats().stale_ids_refused, 0);
    assert_eq!(sim.hub.stats().closed_by.kicked, 1, "no second close was counted");
}

#[test]
fn a_transport_disconnect_is_tombstoned_too_and_emits_no_close() {
    let mut sim = Sim::default();
    let id = sim.connect("acme", "alice");
    sim.now += secs(3);
    sim.hub.disconnect(sim.now, id, DisconnectReason::Abnormal).unwrap();
    let actions = sim.drain();
    assert!(closes(&actions).is_empty(), "the transport is already gone");
    assert!(metrics(&actions).contains(&MetricEvent::ConnectionClosed {
        conn: id,
        tenant: "acme".into(),
        user: "alice".into(),
        lifetime: secs(3),
        reason: ClosedBy::Transport(DisconnectReason::Abnormal),
    }));
    assert_eq!(sim.hub.stats().closed_by.client_abnormal, 1);
    assert_eq!(
        sim.hub.disconnect(sim.now, id, DisconnectReason::Clean),
        Err(ConnError::Unknown { recently_closed: true })
    );
}

#[test]
fn a_stale_id_is_refused_audited_and_never_honoured() {
    let mut sim = Sim::default();
    let old = sim.connect("acme", "alice");
    sim.hub.disconnect(sim.now, old, DisconnectReason::Clean).unwrap();
    sim.drain();
    let bob = sim.connect("acme", "bob");
    assert_ne!(old, bob);
    assert_eq!(old.to_u64() as u32, bob.to_u64() as u32, "the slot was reused");
    assert!(sim.hub.join(sim.now, bob, RoomId::from("lobby")).unwrap());
    sim.drain();
    let before = sim.hub.stats().deliveries;

    let mut refusals = 0;
    let mut expect_refused = |sim: &mut Sim, what: &str| {
        refusals += 1;
        let actions = sim.drain();
        assert_eq!(
            audit_events(&actions),
            vec![(AuditKind::StaleConnId, Some(old), None, None)],
            "{what}"
        );
        assert!(deliveries(&actions).is_empty(), "{what}: nothing delivered");
        assert!(closes(&actions).is_empty(), "{what}: nothing closed");
        assert_eq!(inbound_count(&actions), 0, "{what}: nothing surfaced");
        assert_eq!(sim.hub.stats().stale_ids_refused, refusals, "{what}");
    };
    let now = sim.now;
    let stale = ConnError::Stale;

    let env = Envelope::new(Target::Connection(old), EventKind::AgentStarted);
    assert_eq!(sim.hub.publish(now, env), Err(PublishError::Conn(stale)));
    expect_refused(&mut sim, "publish");
    let msg = br#"{"type":"message","data":"from the past"}"#;
    assert_eq!(sim.hub.receive(now, old, msg), Err(ReceiveError::Conn(stale)));
    expect_refused(&mut sim, "receive");
    assert_eq!(sim.hub.disconnect(now, old, DisconnectReason::Clean), Err(stale));
    expect_refused(&mut sim, "disconnect");
    assert_eq!(sim.hub.close(now, old, CloseReason::Kicked), Err(stale));
    expect_refused(&mut sim, "close");
    assert_eq!(sim.hub.refresh(now, old, Some(now + secs(1))), Err(RefreshError::Conn(stale)));
    expect_refused(&mut sim, "refresh");
    assert_eq!(sim.hub.join(now, old, RoomId::from("vip")), Err(RoomError::Conn(stale)));
    expect_refused(&mut sim, "join");
    assert_eq!(sim.hub.leave(now, old, "lobby"), Err(stale));
    expect_refused(&mut sim, "leave");
    assert_eq!(sim.hub.written(now, old, 1_000_000), Err(stale));
    expect_refused(&mut sim, "written");
    assert!(sim.hub.connection(old).is_none());

    // Bob is untouched: open, in his room only, his session and byte count as they were.
    let view = sim.hub.connection(bob).expect("bob is open");
    assert_eq!(view.user().as_str(), "bob");
    assert_eq!(view.rooms().cloned().collect::<Vec<_>>(), vec![RoomId::from("lobby")]);
    assert_eq!(view.expires_at(), None);
    assert!(view.unwritten_bytes() > 0, "the stale `written` did not confirm bob's bytes");
    assert_eq!(sim.hub.stats().deliveries, before);
    assert_eq!(sim.hub.stats().connections_active, 1);

    // A pong through the stale id does not keep bob alive.
    assert_eq!(pings(&sim.advance(secs(25))), vec![bob]);
    sim.now += secs(5);
    assert_eq!(sim.hub.pong(sim.now, old), Err(stale));
    expect_refused(&mut sim, "pong");
    assert!(sim.hub.connection(bob).unwrap().awaiting_pong());
    assert_eq!(closes(&sim.advance(secs(5))), vec![(bob, CloseReason::HeartbeatTimeout)]);
    assert_eq!(sim.hub.stats().stale_ids_refused, 9);
}

#[test]
fn every_close_reason_has_an_application_code_and_a_reconnect_hint() {
    let table = [
        (CloseReason::HeartbeatTimeout, 4000, true),
        (CloseReason::SessionExpired, 4001, true),
        (CloseReason::Replaced, 4002, false),
        (CloseReason::SlowConsumer, 4003, true),
        (CloseReason::ProtocolViolation, 4004, false),
        (CloseReason::Kicked, 4005, false),
        (CloseReason::ServerShutdown, 4006, true),
    ];
    for (reason, code, reconnect) in table {
        assert_eq!(reason.code(), code, "{reason:?}");
        assert!((4000..=4999).contains(&reason.code()));
        assert_eq!(reason.reconnect(), reconnect, "{reason:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Time and `poll_timeout`

#[test]
fn time_going_backwards_is_clamped() {
    let mut sim = Sim::default();
    let t0 = sim.now;
    let id = sim.connect("acme", "alice");
    assert_eq!(pings(&sim.advance(secs(25))), vec![id]); // t0 + 25

    // A frame stamped earlier counts as arriving at the latest time seen.
    sim.hub.receive(t0, id, br#"{"type":"ping"}"#).unwrap();
    assert_eq!(sim.hub.poll_timeout(), Some(t0 + secs(25)), "last now, not the earlier input");
    assert_eq!(frames_for(&sim.drain(), id)[0]["type"], "pong");
    assert_eq!(sim.hub.connection(id).unwrap().last_seen(), t0 + secs(25));

    // So neither a ping nor a close at t0+35: it was alive at t0+25, not at t0.
    let actions = sim.advance(secs(10));
    assert!(pings(&actions).is_empty(), "{actions:?}");
    assert!(closes(&actions).is_empty());
    assert_eq!(sim.hub.poll_timeout(), Some(t0 + secs(50)));

    // An early tick is harmless; a connect stamped in the past opens at the latest time.
    sim.hub.tick(t0);
    assert!(sim.drain().is_empty());
    let late = sim.hub.connect(t0, Principal::new("acme", "bob")).unwrap();
    sim.drain();
    assert_eq!(sim.hub.connection(late).unwrap().opened_at(), t0 + secs(35));
    assert_eq!(sim.hub.connection(late).unwrap().next_check(), Some(t0 + secs(60)));
}

#[test]
fn poll_timeout_is_the_last_now_while_actions_are_queued_else_the_earliest_deadline() {
    let mut sim = Sim::new(Config { session_grace: secs(60), ..Config::default() });
    let t0 = sim.now;
    assert_eq!(sim.hub.poll_timeout(), None, "nothing armed, nothing queued");

    sim.hub.connect(t0, Principal::new("acme", "alice")).unwrap();
    assert_eq!(sim.hub.poll_timeout(), Some(t0), "drain first");
    sim.drain();
    assert_eq!(sim.hub.poll_timeout(), Some(t0 + secs(25)));

    sim.now += secs(10);
    sim.hub.connect(sim.now, Principal::new("acme", "bob").expires_at(t0 + secs(80))).unwrap();
    assert_eq!(sim.hub.poll_timeout(), Some(t0 + secs(10)));
    sim.drain();
    assert_eq!(sim.hub.poll_timeout(), Some(t0 + secs(20)), "bob's refresh_required");

    sim.now = t0 + secs(20);
    sim.hub.tick(sim.now);
    assert_eq!(sim.hub.poll_timeout(), Some(t0 + secs(20)), "refresh_required is queued");
    sim.drain();
    assert_eq!(sim.hub.poll_timeout(), Some(t0 + secs(25)), "alice's heartbeat");
}

// ---------------------------------------------------------------------------------------------
// User states

#[test]
fn a_user_detaches_after_its_last_connection_and_retires_after_retention() {
    let mut sim = Sim::new(Config { user_retention: secs(120), ..quiet() });
    let t0 = sim.now;
    let a = sim.connect("acme", "alice");
    let b = sim.connect("acme", "alice");
    assert_eq!(sim.hub.user("acme", "alice").unwrap().phase(), UserPhase::Active);

    assert_eq!(sim.hub.user("acme", "alice").unwrap().last_activity(), t0, "the openings");

    sim.now += secs(1);
    sim.hub.receive(sim.now, b, br#"{"type":"ping"}"#).unwrap();
    sim.now += secs(1);
    sim.hub.disconnect(sim.now, a, DisconnectReason::Clean).unwrap();
    sim.drain();
    let view = sim.hub.user("acme", "alice").unwrap();
    assert_eq!(view.phase(), UserPhase::Active);
    assert_eq!(view.connections().collect::<Vec<_>>(), vec![b]);
    assert_eq!(view.last_activity(), t0 + secs(1), "b's ping; a's close is not activity");

    sim.now += secs(3); // t0 + 5
    sim.hub.disconnect(sim.now, b, DisconnectReason::Clean).unwrap();
    let actions = sim.drain();
    assert!(!metrics(&actions).iter().any(|m| matches!(m, MetricEvent::UserRetired { .. })));
    let view = sim.hub.user("acme", "alice").expect("kept while detached");
    assert_eq!(
        view.phase(),
        UserPhase::Detached { since: t0 + secs(5), retires_at: t0 + secs(125) }
    );
    assert_eq!(view.connection_count(), 0);
    assert_eq!(view.created_at(), t0);
    assert_eq!(view.last_activity(), t0 + secs(5), "detached: when its last connection closed");
    let s = sim.hub.stats();
    assert_eq!((s.users_active, s.users_detached, s.users_retired, s.tenants), (0, 1, 0, 1));
    assert_eq!(sim.hub.poll_timeout(), Some(t0 + secs(125)));

    assert!(sim.advance(secs(120) - ms(1)).is_empty());
    assert!(sim.hub.user("acme", "alice").is_some());
    let actions = sim.advance(ms(1)); // t0 + 125
    assert_eq!(
        metrics(&actions),
        vec![MetricEvent::UserRetired { tenant: "acme".into(), user: "alice".into() }]
    );
    assert!(sim.hub.user("acme", "alice").is_none());
    let s = sim.hub.stats();
    assert_eq!((s.users_active, s.users_detached, s.users_retired, s.tenants), (0, 0, 1, 0));
    assert_eq!(s.users_created, 1);
    assert_eq!(sim.hub.poll_timeout(), None, "nothing left to wake up for");
}

#[test]
fn reconnecting_within_retention_keeps_the_epoch_and_continues_the_seq() {
    let mut sim = Sim::new(Config { user_retention: secs(120), ..quiet() });
    let t0 = sim.now;
    let (a, first) = connect_with_frame(&mut sim, Principal::new("acme", "alice"));
    let epoch = stream_pos(&first["streams"]["u"]).epoch;
    for seq in 1..=2 {
        let p = sim.hub.publish(sim.now, user_env("acme", "alice", EventKind::AgentStarted));
        assert_eq!(p.unwrap().position, Some((StreamName::User, StreamPos { epoch, seq })));
    }
    sim.drain();
    sim.now += secs(1);
    sim.hub.disconnect(sim.now, a, DisconnectReason::Abnormal).unwrap();
    sim.drain();

    // While detached, publishes still take the next position of the kept stream.
    sim.now += secs(30);
    let p = sim.hub.publish(sim.now, user_env("acme", "alice", EventKind::ToolExecuting)).unwrap();
    assert_eq!(p.delivered, 0);
    assert!(p.undeliverable());
    assert_eq!(p.position, Some((StreamName::User, StreamPos { epoch, seq: 3 })));
    assert!(deliveries(&sim.drain()).is_empty());

    sim.now += secs(30); // t0 + 61, within retention
    let id = sim.hub.connect(sim.now, Principal::new("acme", "alice")).unwrap();
    let actions = sim.drain();
    assert!(
        !metrics(&actions).iter().any(|m| matches!(m, MetricEvent::UserCreated { .. })),
        "the user state was reused, not created"
    );
    let v = &frames_for(&actions, id)[0];
    assert_eq!(stream_pos(&v["streams"]["u"]), StreamPos { epoch, seq: 3 });
    assert_eq!(sim.hub.user("acme", "alice").unwrap().phase(), UserPhase::Active);
    let s = sim.hub.stats();
    assert_eq!((s.users_created, s.users_active, s.users_detached), (1, 1, 0));

    let frames = frames_for(&sim.publish_to_user("acme", "alice", EventKind::AgentCompleted), id);
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0]["epoch"], epoch);
    assert_eq!(frames[0]["seq"], 4);

    // The retirement that was armed at disconnect is cancelled.
    sim.now = t0 + secs(200);
    sim.hub.tick(sim.now);
    assert!(metrics(&sim.drain()).is_empty());
    assert_eq!(sim.hub.user("acme", "alice").unwrap().phase(), UserPhase::Active);
}

#[test]
fn a_retired_user_comes_back_with_a_new_epoch() {
    let mut sim = Sim::new(Config { user_retention: secs(120), ..quiet() });
    let (a, first) = connect_with_frame(&mut sim, Principal::new("acme", "alice"));
    let old_epoch = stream_pos(&first["streams"]["u"]).epoch;
    sim.publish_to_user("acme", "alice", EventKind::AgentStarted);
    sim.hub.disconnect(sim.now, a, DisconnectReason::Clean).unwrap();
    sim.drain();
    let actions = sim.advance(secs(121));
    assert!(metrics(&actions).iter().any(|m| matches!(m, MetricEvent::UserRetired { .. })));

    let id = sim.hub.connect(sim.now, Principal::new("acme", "alice")).unwrap();
    let actions = sim.drain();
    assert!(
        metrics(&actions)
            .contains(&MetricEvent::UserCreated { tenant: "acme".into(), user: "alice".into() })
    );
    let u = stream_pos(&frames_for(&actions, id)[0]["streams"]["u"]);
    assert_ne!(u.epoch, old_epoch, "a new incarnation of the stream");
    assert_eq!(u.seq, 0);
    assert_eq!(sim.hub.stats().users_created, 2);
    let frames = frames_for(&sim.publish_to_user("acme", "alice", EventKind::AgentStarted), id);
    assert_eq!((frames[0]["epoch"].as_u64(), frames[0]["seq"].as_u64()), (Some(u.epoch), Some(1)));
}

#[test]
fn zero_retention_retires_at_once() {
    let mut sim = Sim::new(Config { user_retention: Duration::ZERO, ..quiet() });
    let a = sim.connect("acme", "alice");
    let b = sim.connect("acme", "bob");
    sim.hub.disconnect(sim.now, a, DisconnectReason::Clean).unwrap();
    let actions = sim.drain();
    assert!(
        metrics(&actions)
            .contains(&MetricEvent::UserRetired { tenant: "acme".into(), user: "alice".into() })
    );
    assert!(sim.hub.user("acme", "alice").is_none());
    let s = sim.hub.stats();
    assert_eq!((s.users_active, s.users_detached, s.users_retired, s.tenants), (1, 0, 1, 1));

    // A hub close takes the same path; the tenant goes with its last user.
    sim.hub.close(sim.now, b, CloseReason::Kicked).unwrap();
    let actions = sim.drain();
    assert!(
        metrics(&actions)
            .contains(&MetricEvent::UserRetired { tenant: "acme".into(), user: "bob".into() })
    );
    let s = sim.hub.stats();
    assert_eq!((s.users_active, s.users_detached, s.users_retired, s.tenants), (0, 0, 2, 0));
    assert_eq!(sim.hub.poll_timeout(), None);
    let p = sim.hub.publish(sim.now, user_env("acme", "bob", EventKind::AgentStarted)).unwrap();
    assert_eq!((p.delivered, p.position), (0, None));
}

#[test]
fn publishing_to_a_never_seen_user_creates_nothing() {
    let mut sim = Sim::default();
    let alice = sim.connect("acme", "alice");
    let created = sim.hub.stats().users_created;
    let envs = [
        user_env("acme", "mallory", EventKind::AgentStarted),
        user_env("globex", "alice", EventKind::AgentStarted),
        Envelope::new(
            Target::Thread { tenant: "acme".into(), user: "mallory".into(), thread: "t1".into() },
            EventKind::ToolCompleted,
        ),
    ];
    for (i, env) in envs.into_iter().enumerate() {
        let p = sim.hub.publish(sim.now, env).unwrap();
        assert!(p.undeliverable());
        assert_eq!((p.delivered, p.position), (0, None));
        let actions = sim.drain();
        assert!(deliveries(&actions).is_empty(), "alice gets nothing: {actions:?}");
        assert!(metrics(&actions).is_empty());
        assert_eq!(sim.hub.stats().undeliverable, i as u64 + 1);
        assert_eq!(sim.hub.stats().publishes, i as u64 + 1);
    }
    assert!(sim.hub.user("acme", "mallory").is_none());
    assert!(sim.hub.user("globex", "alice").is_none());
    let s = sim.hub.stats();
    assert_eq!((s.users_created, s.tenants), (created, 1));
    assert!(sim.hub.connection(alice).is_some());
}

#[test]
fn a_clock_jump_retires_a_detached_user_exactly_once() {
    // Retention is measured from the last close even when the clock jumps far ahead at once.
    let mut sim = Sim::new(Config { user_retention: secs(120), ..quiet() });
    let t0 = sim.now;
    let a = sim.connect("acme", "alice");
    sim.hub.disconnect(sim.now, a, DisconnectReason::Clean).unwrap();
    sim.drain();
    let jump: Instant = t0 + secs(10_000);
    sim.hub.tick(jump);
    let actions = sim.drain();
    assert_eq!(
        metrics(&actions),
        vec![MetricEvent::UserRetired { tenant: "acme".into(), user: "alice".into() }]
    );
    assert_eq!(sim.hub.stats().users_retired, 1);
    // A second tick at the same instant (or earlier) does nothing more.
    sim.hub.tick(jump);
    sim.hub.tick(t0);
    assert!(sim.drain().is_empty());
}

// ---------------------------------------------------------------------------------------------
// More edges

#[test]
fn empty_ids_are_refused_and_create_nothing() {
    let mut sim = Sim::default();
    let r = sim.hub.connect(sim.now, Principal::new("", "alice"));
    assert_eq!(r, Err(ConnectError::EmptyId { field: "tenant" }));
    let r = sim.hub.connect(sim.now, Principal::new("acme", ""));
    assert_eq!(r, Err(ConnectError::EmptyId { field: "user" }));
    assert!(sim.drain().is_empty());
    let s = sim.hub.stats();
    assert_eq!((s.connections_opened, s.users_created, s.tenants), (0, 0, 0));
}

#[test]
fn epochs_come_from_the_configured_seed() {
    let epochs = |seed: u64| {
        let mut sim = Sim::new(Config { seed, ..quiet() });
        let (_, a) = connect_with_frame(&mut sim, Principal::new("acme", "alice"));
        let (_, b) = connect_with_frame(&mut sim, Principal::new("globex", "bob"));
        [&a["streams"]["u"], &a["streams"]["t"], &b["streams"]["u"], &b["streams"]["t"]]
            .map(|v| stream_pos(v).epoch)
    };
    let one = epochs(1);
    assert_eq!(one, epochs(1), "same seed, same epochs: no OS entropy");
    assert_ne!(one, epochs(2));
    let mut distinct = one.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), 4);
    assert!(one.iter().all(|&e| e > 0 && e < (1 << 53)), "JS-safe epochs: {one:?}");
}

#[test]
fn refresh_required_and_a_ping_can_fall_due_together() {
    let mut sim = Sim::default(); // heartbeat 25 s, grace 60 s
    let t0 = sim.now;
    let id = sim.connect_as(Principal::new("acme", "alice").expires_at(t0 + secs(85)));
    let actions = sim.advance(secs(25));
    assert_eq!(pings(&actions), vec![id]);
    let frames = frames_for(&actions, id);
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0]["type"], "refresh_required");
    assert_eq!(frames[0]["expires_in_ms"], 60_000);
    // Both are honoured: a pong keeps it alive, and it still expires on time.
    sim.now += secs(5);
    sim.hub.pong(sim.now, id).unwrap();
    assert!(sim.advance(secs(25) - ms(1)).is_empty()); // t0 + 54.999
    assert_eq!(pings(&sim.advance(ms(1))), vec![id]); // t0 + 55
    sim.now += secs(1);
    sim.hub.pong(sim.now, id).unwrap();
    assert!(closes(&sim.advance(secs(29) - ms(1))).is_empty()); // t0 + 84.999
    assert_eq!(closes(&sim.advance(ms(1))), vec![(id, CloseReason::SessionExpired)]);
}

#[test]
fn session_expiry_wins_over_an_outstanding_ping() {
    let mut sim = Sim::new(Config { session_grace: Duration::ZERO, ..Config::default() });
    let t0 = sim.now;
    let id = sim.connect_as(Principal::new("acme", "alice").expires_at(t0 + secs(30)));
    assert_eq!(pings(&sim.advance(secs(25))), vec![id]);
    let actions = sim.advance(secs(5));
    assert_eq!(closes(&actions), vec![(id, CloseReason::SessionExpired)]);
    assert!(deliveries(&actions).is_empty(), "zero grace: no refresh_required");
    assert_eq!(sim.hub.stats().closed_by.heartbeat_timeout, 0);
    assert_eq!(sim.hub.stats().refresh_required_sent, 0);
}

#[test]
fn a_user_can_detach_reattach_and_detach_again() {
    let mut sim = Sim::new(Config { user_retention: secs(120), ..quiet() });
    let t0 = sim.now;
    let a = sim.connect("acme", "alice");
    sim.now += secs(10);
    sim.hub.disconnect(sim.now, a, DisconnectReason::Clean).unwrap();
    sim.now += secs(100);
    let b = sim.connect("acme", "alice");
    sim.now += secs(100); // t0 + 210: past the first retirement time
    sim.hub.tick(sim.now);
    assert!(metrics(&sim.drain()).is_empty());
    sim.hub.disconnect(sim.now, b, DisconnectReason::Clean).unwrap();
    sim.drain();
    assert_eq!(
        sim.hub.user("acme", "alice").unwrap().phase(),
        UserPhase::Detached { since: t0 + secs(210), retires_at: t0 + secs(330) }
    );
    let s = sim.hub.stats();
    assert_eq!((s.users_created, s.users_active, s.users_detached, s.users_retired), (1, 0, 1, 0));
    sim.advance(secs(120));
    assert!(sim.hub.user("acme", "alice").is_none());
    assert_eq!(sim.hub.stats().users_retired, 1);
}

#[test]
fn a_tenant_dropped_with_its_last_user_comes_back_with_a_new_broadcast_epoch() {
    let mut sim = Sim::new(Config { user_retention: Duration::ZERO, ..quiet() });
    let (a, first) = connect_with_frame(&mut sim, Principal::new("acme", "alice"));
    let all = Target::Tenant { tenant: "acme".into(), audience: switchboard::Audience::All };
    sim.hub.publish(sim.now, Envelope::new(all, EventKind::custom("notice"))).unwrap();
    sim.hub.disconnect(sim.now, a, DisconnectReason::Clean).unwrap();
    sim.drain();
    assert_eq!(sim.hub.stats().tenants, 0);
    let (_, again) = connect_with_frame(&mut sim, Principal::new("acme", "alice"));
    let (t_before, t_after) =
        (stream_pos(&first["streams"]["t"]), stream_pos(&again["streams"]["t"]));
    assert_ne!(t_after.epoch, t_before.epoch);
    assert_eq!(t_after.seq, 0);
}

#[test]
fn absurd_written_counts_never_make_the_hub_panic() {
    // DESIGN §2.4: "No input sequence may grow memory without bound or make the hub panic."
    let mut sim = Sim::default();
    let id = sim.connect("acme", "alice");
    for _ in 0..3 {
        sim.hub.written(sim.now, id, usize::MAX).unwrap();
    }
    assert_eq!(sim.hub.connection(id).unwrap().unwritten_bytes(), 0);
    assert!(sim.hub.stats().bytes_written >= usize::MAX as u64);
}

#[test]
fn close_user_closes_every_connection_of_that_user_and_no_other() {
    let mut sim = Sim::new(quiet());
    let tabs = [sim.connect("acme", "alice"), sim.connect("acme", "alice")];
    let bob = sim.connect("acme", "bob");
    let other_alice = sim.connect("globex", "alice");
    let (acme, alice) = (TenantId::from("acme"), UserId::from("alice"));
    assert_eq!(sim.hub.close_user(sim.now, &acme, &alice, CloseReason::Kicked), 2);
    let closed = closes(&sim.drain());
    let expected: Vec<_> = tabs.iter().map(|&t| (t, CloseReason::Kicked)).collect();
    assert_eq!(closed, expected, "oldest first");
    for id in [bob, other_alice] {
        assert!(sim.hub.connection(id).is_some(), "{id} stays open");
    }
    assert_eq!(sim.hub.close_user(sim.now, &acme, &alice, CloseReason::Kicked), 0, "none left");
    assert_eq!(sim.hub.close_user(sim.now, &acme, &"nobody".into(), CloseReason::Kicked), 0);
}
