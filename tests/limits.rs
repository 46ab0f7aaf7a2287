//! Every limit the hub enforces, through the public API only: its typed error, its `Audit` and
//! `Metric` actions, and its counter in `stats().limit_rejections`. Plus the violation allowance
//! that closes abusive connections, and `Config::validate`.
mod common;

use std::time::Duration;

use common::*;
use switchboard::{
    Action, AuditKind, CloseReason, ClosedBy, Config, ConfigError, ConnError, ConnId, ConnectError,
    DisconnectReason, Hub, LimitKind, MetricEvent, PeerError, Principal, ReceiveError, RoomError,
    RoomId, TenantId, ThreadId, Tier, UserId, UserLimitPolicy,
};

// ---------------------------------------------------------------------------------------------
// Local helpers

/// An audit event as a comparable tuple (`AuditEvent` is `#[non_exhaustive]`: tests read it,
/// they cannot build one).
type Audit = (AuditKind, Option<ConnId>, Option<TenantId>, Option<UserId>);

/// The audit events among `actions` (shadows `common::audit_events`).
fn audit_events(actions: &[Action]) -> Vec<Audit> {
    common::audit_events(actions).into_iter().map(|e| (e.kind, e.conn, e.tenant, e.user)).collect()
}

fn audit(kind: AuditKind, conn: Option<ConnId>, tenant: &str, user: &str) -> Audit {
    (kind, conn, Some(tenant.into()), Some(user.into()))
}

fn rejected(limit: LimitKind) -> MetricEvent {
    MetricEvent::LimitRejected { limit }
}

/// Checks that exactly one `error` frame with `code` went to `conn`.
fn assert_error_frame(actions: &[Action], conn: ConnId, code: &str) {
    let frames = frames_for(actions, conn);
    assert_eq!(frames.len(), 1, "one frame for {conn:?}: {frames:?}");
    assert_eq!(frames[0]["type"], "error");
    assert_eq!(frames[0]["code"], code);
    assert!(frames[0]["message"].as_str().is_some_and(|m| !m.is_empty()));
}

const MESSAGE: &[u8] = br#"{"type":"message","data":"hi"}"#;
const PING: &[u8] = br#"{"type":"ping"}"#;

// ---------------------------------------------------------------------------------------------
// Connection limits

#[test]
fn total_connection_limit() {
    let mut sim = Sim::new(Config { max_connections: 2, ..quiet() });
    let a = sim.connect("acme", "alice");
    sim.connect("globex", "bob");

    let r = sim.hub.connect(sim.now, Principal::new("initech", "carol"));
    assert_eq!(r, Err(ConnectError::TooManyConnections { limit: 2 }));
    let actions = sim.drain();
    assert_eq!(metrics(&actions), vec![rejected(LimitKind::TotalConnections)]);
    assert_eq!(
        audit_events(&actions),
        vec![audit(AuditKind::LimitHit(LimitKind::TotalConnections), None, "initech", "carol")]
    );
    assert!(deliveries(&actions).is_empty());
    // Nothing was created for the refused principal.
    assert!(sim.hub.user("initech", "carol").is_none());
    let s = sim.hub.stats();
    assert_eq!(s.limit_rejections.total_connections, 1);
    assert_eq!(s.limit_rejections.get(LimitKind::TotalConnections), 1);
    assert_eq!(s.limit_rejections.total(), 1);
    assert_eq!((s.connections_opened, s.connections_active, s.users_created), (2, 2, 2));
    assert_eq!(s.tenants, 2);

    // A freed place admits the next one.
    sim.hub.disconnect(sim.now, a, DisconnectReason::Clean).unwrap();
    sim.drain();
    sim.connect("initech", "carol");
    assert_eq!(sim.hub.stats().connections_active, 2);
}

#[test]
fn a_refused_connect_leaves_a_detached_user_detached() {
    let mut sim = Sim::new(Config { max_connections: 1, user_retention: secs(120), ..quiet() });
    let t0 = sim.now;
    let a = sim.connect("acme", "alice");
    sim.hub.disconnect(sim.now, a, DisconnectReason::Clean).unwrap();
    sim.connect("acme", "bob");
    sim.now += secs(10);
    let r = sim.hub.connect(sim.now, Principal::new("acme", "alice"));
    assert_eq!(r, Err(ConnectError::TooManyConnections { limit: 1 }));
    assert_eq!(
        sim.hub.user("acme", "alice").unwrap().phase(),
        switchboard::UserPhase::Detached { since: t0, retires_at: t0 + secs(120) }
    );
    let s = sim.hub.stats();
    assert_eq!((s.users_active, s.users_detached), (1, 1));
}

#[test]
fn per_user_limit_of_every_tier_with_reject() {
    let defaults = [(Tier::Free, 3), (Tier::Early, 10), (Tier::Mid, 15), (Tier::Enterprise, 25)];
    for (tier, limit) in defaults {
        let mut sim = Sim::new(quiet());
        assert_eq!(sim.hub.config().tiers.get(tier).max_connections_per_user, limit);
        for _ in 0..limit {
            sim.connect_as(Principal::new("acme", "alice").tier(tier));
        }
        let r = sim.hub.connect(sim.now, Principal::new("acme", "alice").tier(tier));
        assert_eq!(r, Err(ConnectError::UserLimit { tier, limit }), "{tier:?}");
        let actions = sim.drain();
        assert_eq!(metrics(&actions), vec![rejected(LimitKind::UserConnections)]);
        assert_eq!(
            audit_events(&actions),
            vec![audit(AuditKind::LimitHit(LimitKind::UserConnections), None, "acme", "alice")]
        );
        assert!(deliveries(&actions).is_empty());
        assert!(closes(&actions).is_empty(), "Reject never closes anyone");
        assert_eq!(sim.hub.user("acme", "alice").unwrap().connection_count(), limit as usize);
        let s = sim.hub.stats();
        assert_eq!(s.limit_rejections.user_connections, 1);
        assert_eq!(s.connections_opened, u64::from(limit));

        // Another user of the same tenant and tier is unaffected.
        sim.connect_as(Principal::new("acme", "bob").tier(tier));
        // So is the same user name in another tenant.
        sim.connect_as(Principal::new("globex", "alice").tier(tier));
    }
}

#[test]
fn evict_oldest_closes_the_oldest_with_replaced() {
    let mut sim = Sim::new(Config { user_limit_policy: UserLimitPolicy::EvictOldest, ..quiet() });
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(sim.connect("acme", "alice"));
        sim.now += secs(1);
    }
    let newest = sim.hub.connect(sim.now, Principal::new("acme", "alice")).unwrap();
    let actions = sim.drain();

    // The newcomer is admitted and greeted; the oldest is closed with Replaced.
    assert_eq!(frames_for(&actions, newest)[0]["type"], "connected");
    assert_eq!(closes(&actions), vec![(ids[0], CloseReason::Replaced)]);
    assert_eq!(CloseReason::Replaced.code(), 4002);
    assert!(!CloseReason::Replaced.reconnect());
    let m = metrics(&actions);
    assert!(m.contains(&rejected(LimitKind::UserConnectionsEvicted)));
    assert!(m.contains(&MetricEvent::ConnectionClosed {
        conn: ids[0],
        tenant: "acme".into(),
        user: "alice".into(),
        lifetime: secs(3),
        reason: ClosedBy::Hub(CloseReason::Replaced),
    }));
    assert_eq!(
        audit_events(&actions),
        vec![audit(
            AuditKind::LimitHit(LimitKind::UserConnectionsEvicted),
            Some(ids[0]),
            "acme",
            "alice"
        )]
    );
    let view = sim.hub.user("acme", "alice").unwrap();
    assert_eq!(view.connections().collect::<Vec<_>>(), vec![ids[1], ids[2], newest]);
    let s = sim.hub.stats();
    assert_eq!(s.closed_by.replaced, 1);
    assert_eq!(s.limit_rejections.user_connections_evicted, 1);
    assert_eq!(s.limit_rejections.user_connections, 0);
    assert_eq!(s.connections_active, 3);
    assert_eq!(
        sim.hub.receive(sim.now, ids[0], PING),
        Err(ReceiveError::Conn(ConnError::Unknown { recently_closed: true }))
    );

    // The next one evicts the next oldest.
    let again = sim.hub.connect(sim.now, Principal::new("acme", "alice")).unwrap();
    assert_eq!(closes(&sim.drain()), vec![(ids[1], CloseReason::Replaced)]);
    let view = sim.hub.user("acme", "alice").unwrap();
    assert_eq!(view.connections().collect::<Vec<_>>(), vec![ids[2], newest, again]);
}

#[test]
fn evict_oldest_admits_at_the_total_and_tenant_caps_because_it_frees_a_place() {
    let cfg = Config {
        user_limit_policy: UserLimitPolicy::EvictOldest,
        max_connections: 3,
        max_connections_per_tenant: Some(3),
        ..quiet()
    };
    let mut sim = Sim::new(cfg);
    let first = sim.connect("acme", "alice");
    sim.connect("acme", "alice");
    sim.connect("acme", "alice");
    sim.hub.connect(sim.now, Principal::new("acme", "alice")).expect("replaces the oldest");
    let actions = sim.drain();
    assert_eq!(closes(&actions), vec![(first, CloseReason::Replaced)]);
    assert_eq!(sim.hub.stats().connections_active, 3);
    assert_eq!(sim.hub.stats().limit_rejections.total_connections, 0);
    assert_eq!(sim.hub.stats().limit_rejections.tenant_connections, 0);
    // Another user still finds the hub full.
    let r = sim.hub.connect(sim.now, Principal::new("acme", "bob"));
    assert_eq!(r, Err(ConnectError::TooManyConnections { limit: 3 }));
}

#[test]
fn per_tenant_cap() {
    let mut sim = Sim::new(Config { max_connections_per_tenant: Some(2), ..quiet() });
    sim.connect("acme", "alice");
    let bob = sim.connect("acme", "bob");
    let r = sim.hub.connect(sim.now, Principal::new("acme", "carol"));
    assert_eq!(r, Err(ConnectError::TenantLimit { limit: 2 }));
    let actions = sim.drain();
    assert_eq!(metrics(&actions), vec![rejected(LimitKind::TenantConnections)]);
    assert_eq!(
        audit_events(&actions),
        vec![audit(AuditKind::LimitHit(LimitKind::TenantConnections), None, "acme", "carol")]
    );
    assert!(sim.hub.user("acme", "carol").is_none());
    assert_eq!(sim.hub.stats().limit_rejections.tenant_connections, 1);

    // Other tenants have their own cap.
    sim.connect("globex", "eve");
    sim.connect("globex", "frank");
    assert!(sim.hub.connect(sim.now, Principal::new("globex", "gina")).is_err());
    assert_eq!(sim.hub.stats().limit_rejections.tenant_connections, 2);
    sim.drain();

    sim.hub.disconnect(sim.now, bob, DisconnectReason::Clean).unwrap();
    sim.drain();
    sim.connect("acme", "carol");
    assert_eq!(sim.hub.stats().connections_active, 4);
}

// ---------------------------------------------------------------------------------------------
// Inbound frame size

/// A valid `message` frame of exactly `len` bytes.
fn message_of_len(len: usize) -> Vec<u8> {
    let base = r#"{"type":"message","data":""}"#.len();
    let pad = "x".repeat(len - base);
    let frame = format!(r#"{{"type":"message","data":"{pad}"}}"#).into_bytes();
    assert_eq!(frame.len(), len);
    frame
}

#[test]
fn inbound_frame_size_limit() {
    let mut sim = Sim::new(Config { max_frame_bytes: 64, ..quiet() });
    let id = sim.connect("acme", "alice");

    sim.hub.receive(sim.now, id, &message_of_len(64)).expect("exactly the limit is fine");
    assert_eq!(inbound_count(&sim.drain()), 1);

    let r = sim.hub.receive(sim.now, id, &message_of_len(65));
    assert_eq!(r, Err(ReceiveError::Peer(PeerError::FrameTooLarge { size: 65, limit: 64 })));
    let actions = sim.drain();
    assert_error_frame(&actions, id, "frame_too_large");
    assert_eq!(inbound_count(&actions), 0);
    assert_eq!(metrics(&actions), vec![rejected(LimitKind::FrameSize)]);
    assert_eq!(
        audit_events(&actions),
        vec![audit(AuditKind::OversizedFrame, Some(id), "acme", "alice")]
    );
    assert!(closes(&actions).is_empty(), "one oversized frame does not close");
    let s = sim.hub.stats();
    assert_eq!(s.limit_rejections.frame_size, 1);
    assert_eq!(s.protocol_errors, 1);
    assert_eq!(s.frames_received, 2);
    assert!(sim.hub.connection(id).is_some());
}

#[test]
fn default_frame_limit_is_64_kib_and_checked_before_parsing() {
    let mut sim = Sim::new(quiet());
    let id = sim.connect("acme", "alice");
    assert_eq!(sim.hub.config().max_frame_bytes, 64 * 1024);
    sim.hub.receive(sim.now, id, &message_of_len(64 * 1024)).unwrap();
    sim.drain();
    // Garbage over the limit is reported as oversized, not as malformed.
    let garbage = vec![b'{'; 64 * 1024 + 1];
    let r = sim.hub.receive(sim.now, id, &garbage);
    let err = PeerError::FrameTooLarge { size: 64 * 1024 + 1, limit: 64 * 1024 };
    assert_eq!(r, Err(ReceiveError::Peer(err)));
    assert_error_frame(&sim.drain(), id, "frame_too_large");
}

// ---------------------------------------------------------------------------------------------
// Rooms and thread subscriptions per connection

#[test]
fn rooms_per_connection_limit() {
    let mut sim = Sim::new(Config { max_rooms_per_connection: 2, ..quiet() });
    let id = sim.connect("acme", "alice");
    let other = sim.connect("acme", "bob");
    let room = |r: &str| RoomId::from(r);
    assert_eq!(sim.hub.join(sim.now, id, room("r1")), Ok(true));
    assert_eq!(sim.hub.join(sim.now, id, room("r2")), Ok(true));
    let joined: Vec<_> = frames_for(&sim.drain(), id).iter().map(|f| f["stream"].clone()).collect();
    assert_eq!(joined, vec!["r:r1", "r:r2"], "each join is announced with a joined frame");

    assert_eq!(sim.hub.join(sim.now, id, room("r3")), Err(RoomError::TooManyRooms { limit: 2 }));
    let actions = sim.drain();
    assert_eq!(metrics(&actions), vec![rejected(LimitKind::RoomsPerConnection)]);
    assert_eq!(
        audit_events(&actions),
        vec![audit(AuditKind::LimitHit(LimitKind::RoomsPerConnection), Some(id), "acme", "alice")]
    );
    assert_eq!(sim.hub.stats().limit_rejections.rooms_per_connection, 1);
    assert_eq!(sim.hub.stats().rooms, 2, "r3 was not created");

    // Joining a room it is already in is not over the limit.
    assert_eq!(sim.hub.join(sim.now, id, room("r1")), Ok(false));
    // The limit is per connection.
    assert_eq!(sim.hub.join(sim.now, other, room("r3")), Ok(true));
    // Leaving makes room.
    assert_eq!(sim.hub.leave(sim.now, id, "r1"), Ok(true));
    assert_eq!(sim.hub.join(sim.now, id, room("r3")), Ok(true));
    let mut rooms: Vec<RoomId> = sim.hub.connection(id).unwrap().rooms().cloned().collect();
    rooms.sort();
    assert_eq!(rooms, vec![room("r2"), room("r3")]);
    // Only the announcements: no audit, no metric.
    let types: Vec<_> = deliveries(&sim.drain()).iter().map(|(_, f)| f["type"].clone()).collect();
    assert_eq!(types, vec!["joined", "left", "joined"]);
    assert_eq!(sim.hub.stats().limit_rejections.rooms_per_connection, 1);
}

#[test]
fn thread_subscription_limit() {
    let mut sim = Sim::new(Config { max_thread_subscriptions: 2, ..quiet() });
    let id = sim.connect("acme", "alice");
    let sub = |t: &str| format!(r#"{{"type":"subscribe","thread_id":"{t}"}}"#).into_bytes();
    sim.hub.receive(sim.now, id, &sub("t1")).unwrap();
    sim.hub.receive(sim.now, id, &sub("t2")).unwrap();
    sim.hub.receive(sim.now, id, &sub("t1")).unwrap(); // already subscribed: no new slot
    assert!(sim.drain().is_empty());

    let r = sim.hub.receive(sim.now, id, &sub("t3"));
    assert_eq!(r, Err(ReceiveError::Peer(PeerError::TooManySubscriptions { limit: 2 })));
    let actions = sim.drain();
    assert_error_frame(&actions, id, "too_many_subscriptions");
    assert_eq!(metrics(&actions), vec![rejected(LimitKind::ThreadSubscriptions)]);
    assert_eq!(
        audit_events(&actions),
        vec![audit(AuditKind::LimitHit(LimitKind::ThreadSubscriptions), Some(id), "acme", "alice")]
    );
    assert_eq!(sim.hub.stats().limit_rejections.thread_subscriptions, 1);
    let threads = sim.hub.connection(id).unwrap().threads().unwrap().to_vec();
    assert_eq!(threads, vec![ThreadId::from("t1"), ThreadId::from("t2")]);

    sim.hub.receive(sim.now, id, br#"{"type":"unsubscribe","thread_id":"t1"}"#).unwrap();
    sim.hub.receive(sim.now, id, &sub("t3")).unwrap();
    let threads = sim.hub.connection(id).unwrap().threads().unwrap().to_vec();
    assert_eq!(threads, vec![ThreadId::from("t2"), ThreadId::from("t3")]);
    assert!(sim.drain().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Rates

#[test]
fn message_rate_of_every_tier_admits_the_burst_then_the_sustained_rate() {
    // (tier, burst, sustained interval) from the default quotas: 30/100/200/500 per minute.
    let table = [
        (Tier::Free, 30, ms(2000)),
        (Tier::Early, 100, ms(600)),
        (Tier::Mid, 200, ms(300)),
        (Tier::Enterprise, 500, ms(120)),
    ];
    for (tier, burst, interval) in table {
        let mut sim = Sim::new(quiet());
        let q = *sim.hub.config().tiers.get(tier);
        assert_eq!(q.message_burst, burst);
        assert_eq!(Duration::from_secs(60) / q.messages_per_minute, interval);
        let id = sim.connect_as(Principal::new("acme", "alice").tier(tier));

        for i in 0..burst {
            sim.hub.receive(sim.now, id, MESSAGE).unwrap_or_else(|e| panic!("{tier:?} #{i}: {e}"));
        }
        assert_eq!(inbound_count(&sim.drain()), burst as usize);

        let r = sim.hub.receive(sim.now, id, MESSAGE);
        assert_eq!(r, Err(ReceiveError::Peer(PeerError::RateLimited)), "{tier:?}");
        let actions = sim.drain();
        assert_eq!(inbound_count(&actions), 0);
        assert_error_frame(&actions, id, "rate_limited");
        assert_eq!(metrics(&actions), vec![rejected(LimitKind::MessageRate)]);
        assert_eq!(
            audit_events(&actions),
            vec![audit(AuditKind::Flood, Some(id), "acme", "alice")]
        );
        assert_eq!(sim.hub.stats().limit_rejections.message_rate, 1);

        // Control frames have their own allowance.
        sim.hub.receive(sim.now, id, PING).unwrap();
        assert_eq!(frames_for(&sim.drain(), id)[0]["type"], "pong");

        // Just before one interval: still refused; at one interval: exactly one more.
        sim.now += interval - ms(1);
        assert!(sim.hub.receive(sim.now, id, MESSAGE).is_err(), "{tier:?}");
        sim.now += ms(1);
        sim.hub.receive(sim.now, id, MESSAGE).unwrap();
        assert!(sim.hub.receive(sim.now, id, MESSAGE).is_err(), "{tier:?}");
        let actions = sim.drain();
        assert_eq!(inbound_count(&actions), 1);
        assert!(closes(&actions).is_empty(), "three violations stay within the allowance");

        // A long pause refills to the burst and not beyond.
        sim.now += secs(600);
        for _ in 0..burst {
            sim.hub.receive(sim.now, id, MESSAGE).unwrap();
        }
        assert!(sim.hub.receive(sim.now, id, MESSAGE).is_err());
        let s = sim.hub.stats();
        assert_eq!(s.limit_rejections.message_rate, 4);
        assert_eq!(s.inbound_messages, 2 * u64::from(burst) + 1);
    }
}

#[test]
fn message_rate_is_per_user_and_control_rate_per_connection() {
    // Issue 10 item 15: the tier's message quota is the user's (DESIGN §6), shared by all of
    // its connections; control frames keep a per-connection allowance.
    let mut sim = Sim::new(quiet());
    let a = sim.connect("acme", "alice");
    let b = sim.connect("acme", "alice");
    let bob = sim.connect("acme", "bob");
    for _ in 0..sim.hub.config().tiers.free.message_burst {
        sim.hub.receive(sim.now, a, MESSAGE).unwrap();
    }
    assert!(sim.hub.receive(sim.now, a, MESSAGE).is_err());
    let shared = sim.hub.receive(sim.now, b, MESSAGE);
    assert!(matches!(shared, Err(ReceiveError::Peer(PeerError::RateLimited))), "{shared:?}");
    sim.hub.receive(sim.now, bob, MESSAGE).expect("another user has its own quota");
    sim.hub.receive(sim.now, b, br#"{"type":"ping"}"#).expect("b's control allowance is its own");
}

#[test]
fn control_frame_rate() {
    let mut sim = Sim::new(quiet());
    assert_eq!(sim.hub.config().control_burst, 60);
    assert_eq!(sim.hub.config().control_frames_per_minute, 600);
    let id = sim.connect("acme", "alice");
    for _ in 0..60 {
        sim.hub.receive(sim.now, id, PING).unwrap();
    }
    let actions = sim.drain();
    assert_eq!(frames_for(&actions, id).iter().filter(|f| f["type"] == "pong").count(), 60);

    assert_eq!(sim.hub.receive(sim.now, id, PING), Err(ReceiveError::Peer(PeerError::RateLimited)));
    let actions = sim.drain();
    assert_error_frame(&actions, id, "rate_limited");
    assert_eq!(metrics(&actions), vec![rejected(LimitKind::ControlRate)]);
    assert_eq!(audit_events(&actions), vec![audit(AuditKind::Flood, Some(id), "acme", "alice")]);
    assert_eq!(sim.hub.stats().limit_rejections.control_rate, 1);
    assert_eq!(sim.hub.stats().limit_rejections.message_rate, 0);

    // Messages are not control frames.
    sim.hub.receive(sim.now, id, MESSAGE).unwrap();
    // 600 per minute: one more every 100 ms.
    sim.now += ms(99);
    assert!(sim.hub.receive(sim.now, id, PING).is_err());
    sim.now += ms(1);
    sim.hub.receive(sim.now, id, PING).unwrap();
    assert_eq!(sim.hub.stats().limit_rejections.control_rate, 2);
}

#[test]
fn subscribe_and_unsubscribe_spend_the_control_allowance() {
    let mut sim = Sim::new(Config { control_burst: 3, control_frames_per_minute: 60, ..quiet() });
    let id = sim.connect("acme", "alice");
    sim.hub.receive(sim.now, id, br#"{"type":"subscribe","thread_id":"t1"}"#).unwrap();
    sim.hub.receive(sim.now, id, br#"{"type":"unsubscribe"}"#).unwrap();
    sim.hub.receive(sim.now, id, PING).unwrap();
    let r = sim.hub.receive(sim.now, id, br#"{"type":"subscribe","thread_id":"t2"}"#);
    assert_eq!(r, Err(ReceiveError::Peer(PeerError::RateLimited)));
    assert_eq!(
        sim.hub.connection(id).unwrap().threads(),
        None,
        "the refused subscribe did nothing"
    );
    assert_eq!(sim.hub.stats().limit_rejections.control_rate, 1);
}

// ---------------------------------------------------------------------------------------------
// Violations

#[test]
fn repeated_protocol_violations_close_the_connection() {
    let mut sim = Sim::new(quiet());
    assert_eq!(sim.hub.config().max_violations, 5);
    let id = sim.connect("acme", "alice");
    let bystander = sim.connect("acme", "alice");
    // The fifth violation closes (issue 10 item 14: it used to take a sixth, against the docs).
    for i in 0..4 {
        let r = sim.hub.receive(sim.now, id, b"{not json");
        assert!(matches!(r, Err(ReceiveError::Peer(PeerError::Malformed { .. }))), "#{i}: {r:?}");
        let actions = sim.drain();
        assert_error_frame(&actions, id, "malformed");
        assert!(closes(&actions).is_empty(), "violation #{i} is within the allowance");
    }
    let r = sim.hub.receive(sim.now, id, b"{not json");
    assert!(matches!(r, Err(ReceiveError::Peer(PeerError::Malformed { .. }))));
    let actions = sim.drain();
    // The client is told why, then closed.
    let error_at = actions
        .iter()
        .position(|a| matches!(a, Action::Deliver { conn, .. } if *conn == id))
        .expect("error frame");
    let close_at = actions.iter().position(|a| matches!(a, Action::Close { .. })).expect("close");
    assert!(error_at < close_at);
    assert_eq!(closes(&actions), vec![(id, CloseReason::ProtocolViolation)]);
    assert_eq!(CloseReason::ProtocolViolation.code(), 4004);
    assert!(!CloseReason::ProtocolViolation.reconnect());
    assert_eq!(audits(&actions), vec![AuditKind::MalformedFrame, AuditKind::ViolationClose]);
    let s = sim.hub.stats();
    assert_eq!(s.closed_by.protocol_violation, 1);
    assert_eq!(s.closed_by.get(ClosedBy::Hub(CloseReason::ProtocolViolation)), 1);
    assert_eq!(s.protocol_errors, 5);
    assert_eq!(
        sim.hub.receive(sim.now, id, PING),
        Err(ReceiveError::Conn(ConnError::Unknown { recently_closed: true }))
    );
    assert!(sim.hub.connection(bystander).is_some(), "only the abuser is closed");
}

#[test]
fn every_kind_of_violation_spends_the_same_allowance() {
    let mut sim = Sim::new(Config { max_frame_bytes: 100, ..quiet() });
    let id = sim.connect("acme", "alice");
    for _ in 0..sim.hub.config().tiers.free.message_burst {
        sim.hub.receive(sim.now, id, MESSAGE).unwrap();
    }
    sim.drain();
    let bad: [&[u8]; 5] = [
        b"nope",
        br#"{"no":"type"}"#,
        br#"{"type":"launch"}"#,
        &[b' '; 101],
        MESSAGE, // rate-limited: the burst is spent
    ];
    for frame in bad {
        assert!(sim.hub.receive(sim.now, id, frame).is_err());
    }
    assert!(closes(&sim.drain()).is_empty());
    assert!(sim.hub.receive(sim.now, id, br#"{"type":"subscribe"}"#).is_err());
    assert_eq!(closes(&sim.drain()), vec![(id, CloseReason::ProtocolViolation)]);
}

#[test]
fn isolated_violations_do_not_close() {
    let mut sim = Sim::default();
    assert_eq!(sim.hub.config().violation_refill, secs(12));
    let id = sim.connect("acme", "alice");
    // One violation every 12 s, for four minutes: always forgiven. (Each one is also a sign of
    // life, so heartbeats never fire.)
    for _ in 0..20 {
        sim.now += secs(12);
        sim.hub.tick(sim.now);
        assert!(sim.hub.receive(sim.now, id, br#"{"type":"launch"}"#).is_err());
        let actions = sim.drain();
        assert_error_frame(&actions, id, "unknown_type");
        assert!(closes(&actions).is_empty());
    }
    assert_eq!(sim.hub.stats().protocol_errors, 20);
    assert!(sim.hub.connection(id).is_some());
}

#[test]
fn the_violation_allowance_refills_one_per_refill_interval() {
    let mut sim = Sim::new(quiet());
    let id = sim.connect("acme", "alice");
    for _ in 0..4 {
        assert!(sim.hub.receive(sim.now, id, b"x").is_err());
    }
    // One left; after 12 s, two: the next violation is forgiven, the one after closes.
    sim.now += secs(12);
    assert!(sim.hub.receive(sim.now, id, b"x").is_err());
    assert!(closes(&sim.drain()).is_empty(), "one refilled after 12 s");
    assert!(sim.hub.receive(sim.now, id, b"x").is_err());
    assert_eq!(closes(&sim.drain()), vec![(id, CloseReason::ProtocolViolation)]);
}

// ---------------------------------------------------------------------------------------------
// Config validation

#[test]
fn config_validate_rejects_zero_limits() {
    type Edit = fn(&mut Config);
    let zero: [(&str, Edit); 14] = [
        ("max_connections", |c| c.max_connections = 0),
        ("max_connections_per_tenant", |c| c.max_connections_per_tenant = Some(0)),
        ("max_frame_bytes", |c| c.max_frame_bytes = 0),
        ("max_rooms_per_connection", |c| c.max_rooms_per_connection = 0),
        ("max_thread_subscriptions", |c| c.max_thread_subscriptions = 0),
        ("max_client_id_bytes", |c| c.max_client_id_bytes = 0),
        ("control_frames_per_minute", |c| c.control_frames_per_minute = 0),
        ("control_burst", |c| c.control_burst = 0),
        ("max_violations", |c| c.max_violations = 0),
        ("violation_refill", |c| c.violation_refill = Duration::ZERO),
        ("heartbeat.interval", |c| c.heartbeat.interval = Duration::ZERO),
        ("heartbeat.timeout", |c| c.heartbeat.timeout = Duration::ZERO),
        ("snapshot_interval", |c| c.snapshot_interval = Some(Duration::ZERO)),
        ("max_connections", |c| {
            c.max_connections = 0;
            c.max_frame_bytes = 0; // the first offending field is named
        }),
    ];
    for (field, edit) in zero {
        let mut cfg = Config::default();
        edit(&mut cfg);
        assert_eq!(cfg.validate(), Err(ConfigError::Zero { field }), "{field}");
        assert_eq!(Hub::new(cfg).err(), Some(ConfigError::Zero { field }), "{field}");
    }

    type QuotaEdit = fn(&mut switchboard::TierQuota);
    let tier_fields: [(&str, QuotaEdit); 3] = [
        ("max_connections_per_user", |q| q.max_connections_per_user = 0),
        ("messages_per_minute", |q| q.messages_per_minute = 0),
        ("message_burst", |q| q.message_burst = 0),
    ];
    for tier in Tier::ALL {
        for (field, edit) in tier_fields {
            let mut cfg = Config::default();
            match tier {
                Tier::Free => edit(&mut cfg.tiers.free),
                Tier::Early => edit(&mut cfg.tiers.early),
                Tier::Mid => edit(&mut cfg.tiers.mid),
                Tier::Enterprise => edit(&mut cfg.tiers.enterprise),
            }
            let expected = ConfigError::ZeroTierQuota { tier: *tier, field };
            assert_eq!(cfg.validate(), Err(expected.clone()));
            assert_eq!(Hub::new(cfg).err(), Some(expected));
        }
    }

    let too_big = Config { max_connections: u32::MAX, ..Config::default() };
    assert!(matches!(
        too_big.validate(),
        Err(ConfigError::TooLarge { field: "max_connections", .. })
    ));
    let empty_key =
        Config { redact_keys: vec!["token".into(), String::new()], ..Config::default() };
    assert_eq!(empty_key.validate(), Err(ConfigError::EmptyRedactKey));
}

#[test]
fn zero_durations_with_a_meaning_are_accepted() {
    // Zero retention retires at once, zero tombstone forgets at once, zero grace sends no
    // refresh_required before the expiry; none of them is a limit.
    let cfg = Config {
        user_retention: Duration::ZERO,
        tombstone_ttl: Duration::ZERO,
        session_grace: Duration::ZERO,
        redact_keys: Vec::new(),
        ..Config::default()
    };
    assert_eq!(cfg.validate(), Ok(()));
    assert!(Hub::new(cfg).is_ok());
    assert_eq!(Config::default().validate(), Ok(()));
}

#[test]
fn limit_rejections_add_up_across_kinds() {
    let cfg = Config {
        max_connections: 3,
        max_rooms_per_connection: 1,
        max_frame_bytes: 40,
        max_violations: 100,
        ..quiet()
    };
    let mut sim = Sim::new(cfg);
    let a = sim.connect("acme", "alice");
    sim.connect("acme", "alice");
    sim.connect("acme", "alice");
    assert!(sim.hub.connect(sim.now, Principal::new("acme", "alice")).is_err()); // user
    assert!(sim.hub.connect(sim.now, Principal::new("acme", "bob")).is_err()); // total
    sim.hub.join(sim.now, a, RoomId::from("r1")).unwrap();
    assert!(sim.hub.join(sim.now, a, RoomId::from("r2")).is_err()); // rooms
    assert!(sim.hub.receive(sim.now, a, &[b' '; 41]).is_err()); // frame size
    sim.drain();
    let l = sim.hub.stats().limit_rejections;
    assert_eq!(
        (l.user_connections, l.total_connections, l.rooms_per_connection, l.frame_size),
        (1, 1, 1, 1)
    );
    assert_eq!(l.total(), 4);
    assert_eq!(sim.hub.stats().connections_active, 3);
}

/// Drives a hub through every timer and rate path that does arithmetic with config durations.
fn exercise(cfg: Config) {
    let mut sim = Sim::new(cfg);
    let t0 = sim.now;
    let steady = sim.connect_as(Principal::new("acme", "alice").expires_at(t0 + secs(7200)));
    let abuser = sim.connect("acme", "bob");
    for _ in 0..7 {
        let _ = sim.hub.receive(sim.now, abuser, b"x");
        let _ = sim.hub.receive(sim.now, steady, MESSAGE);
    }
    sim.drain();
    for _ in 0..120 {
        sim.advance(secs(60));
        let _ = sim.hub.pong(sim.now, steady);
    }
    let _ = sim.hub.disconnect(sim.now, steady, DisconnectReason::Clean);
    sim.drain();
    sim.advance(secs(3600));
}

#[test]
fn huge_durations_are_refused_by_validate_or_never_make_the_hub_panic() {
    // "Never" is a natural thing to configure (`Duration::MAX`). Either `Config::validate`
    // refuses it, or the hub must cope: a panic is always a bug (DESIGN §2.4, §2.5).
    type Edit = fn(&mut Config);
    let cases: [(&str, Edit); 13] = [
        ("heartbeat.interval", |c| c.heartbeat.interval = Duration::MAX),
        ("heartbeat.timeout", |c| c.heartbeat.timeout = Duration::MAX),
        ("user_retention", |c| c.user_retention = Duration::MAX),
        ("violation_refill", |c| c.violation_refill = Duration::MAX),
        ("snapshot_interval", |c| c.snapshot_interval = Some(Duration::MAX)),
        ("session_grace", |c| c.session_grace = Duration::MAX),
        ("tombstone_ttl", |c| c.tombstone_ttl = Duration::MAX),
        ("retention.max_age", |c| c.retention.max_age = Duration::MAX),
        ("resume_window", |c| c.resume_window = Duration::MAX),
        ("breaker.window", |c| c.breaker.window = Duration::MAX),
        ("breaker.open_for", |c| c.breaker.open_for = Duration::MAX),
        ("breaker.probe_healthy_after", |c| c.breaker.probe_healthy_after = Duration::MAX),
        ("rate_window", |c| c.rate_window = Duration::MAX),
    ];
    let mut panicked = Vec::new();
    for (field, edit) in cases {
        let mut cfg = Config::default();
        edit(&mut cfg);
        if cfg.validate().is_err() {
            continue; // refused up front: fine
        }
        if std::panic::catch_unwind(move || exercise(cfg)).is_err() {
            panicked.push(field);
        }
    }
    assert!(
        panicked.is_empty(),
        "accepted by Config::validate, then the hub panicked with: {panicked:?}"
    );
}
