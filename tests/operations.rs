//! What operators read and set per connection (issue 17): round-trip times from the hub's own
//! pings, bounded connection labels, and the per-tier cap on a connection's lifetime. All on a
//! virtual clock.

mod common;

use common::*;
use std::time::Duration;

use switchboard::{
    Action, AuditKind, CloseReason, Config, ConfigError, ConnError, ConnId, ConnectError,
    DisconnectReason, EventKind, Hub, Labels, LimitKind, Principal, RoundTrip, RttHistogram, Tier,
};

// ---------------------------------------------------------------------------------------------
// Round-trip times

#[test]
fn a_pong_answering_the_hubs_ping_measures_the_round_trip() {
    let mut sim = Sim::default();
    let id = sim.connect("acme", "alice");
    assert_eq!(sim.hub.connection(id).unwrap().round_trip(), None, "nothing measured yet");

    assert_eq!(pings(&sim.advance(secs(25))), vec![id]);
    sim.now += ms(80);
    sim.hub.pong(sim.now, id).unwrap();
    let rtt = sim.hub.connection(id).unwrap().round_trip().unwrap();
    assert_eq!((rtt.last, rtt.smoothed), (ms(80), ms(80)));

    // The next ping, one interval after the pong; a slower answer moves the estimate an eighth.
    assert_eq!(pings(&sim.advance(secs(25))), vec![id]);
    sim.now += ms(240);
    sim.hub.pong(sim.now, id).unwrap();
    let rtt = sim.hub.connection(id).unwrap().round_trip().unwrap();
    assert_eq!((rtt.last, rtt.smoothed), (ms(240), ms(100)));

    let h: RttHistogram = sim.hub.stats().round_trips;
    assert_eq!(h.count(), 2);
    assert_eq!(h.sum(), ms(320));
    let le = |bound| h.cumulative().find(|&(b, _)| b == bound).unwrap().1;
    assert_eq!((le(ms(50)), le(ms(100)), le(ms(250))), (0, 1, 2));
}

#[test]
fn a_clients_own_ping_frames_and_unsolicited_pongs_measure_nothing() {
    let mut sim = Sim::default();
    let id = sim.connect("acme", "alice");
    // A client timing itself with `ping` frames gets its `pong` frames; the hub learns nothing.
    for _ in 0..3 {
        sim.now += secs(1);
        sim.hub.receive(sim.now, id, br#"{"type":"ping"}"#).unwrap();
        sim.drain();
    }
    // Pongs nobody asked for (a client may send them as keep-alives) prove life, measure nothing.
    sim.hub.pong(sim.now, id).unwrap();
    assert_eq!(sim.hub.connection(id).unwrap().round_trip(), None);
    assert_eq!(sim.hub.stats().round_trips.count(), 0);
    assert_eq!(sim.hub.stats().pongs_received, 1);

    // A pong answering the hub's ping samples once; a second pong for it samples nothing.
    assert_eq!(pings(&sim.advance(secs(25))), vec![id]);
    sim.now += ms(30);
    sim.hub.pong(sim.now, id).unwrap();
    sim.now += ms(1);
    sim.hub.pong(sim.now, id).unwrap();
    let rtt = sim.hub.connection(id).unwrap().round_trip().unwrap();
    assert_eq!(rtt.last, ms(30));
    assert_eq!(sim.hub.stats().round_trips.count(), 1);
}

#[test]
fn the_pong_times_the_ping_even_after_other_frames_proved_the_peer_alive() {
    let mut sim = Sim::default();
    let id = sim.connect("acme", "alice");
    assert_eq!(pings(&sim.advance(secs(25))), vec![id]);
    sim.now += ms(5);
    sim.hub.receive(sim.now, id, br#"{"type":"subscribe","thread_id":"t1"}"#).unwrap();
    sim.drain();
    assert!(!sim.hub.connection(id).unwrap().awaiting_pong(), "the frame answered liveness");
    sim.now += ms(45);
    sim.hub.pong(sim.now, id).unwrap();
    let rtt: RoundTrip = sim.hub.connection(id).unwrap().round_trip().unwrap();
    assert_eq!(rtt.last, ms(50), "from the ping, not from the frame");
}

#[test]
fn a_pong_later_than_the_heartbeat_timeout_is_no_sample() {
    let mut sim = Sim::default();
    let id = sim.connect("acme", "alice");
    assert_eq!(pings(&sim.advance(secs(25))), vec![id]);
    // Messages keep it alive past the timeout; the pong that finally comes is no round trip.
    for _ in 0..12 {
        sim.now += secs(1);
        sim.hub.receive(sim.now, id, br#"{"type":"ping"}"#).unwrap();
        sim.drain();
    }
    sim.hub.pong(sim.now, id).unwrap();
    assert!(sim.hub.connection(id).is_some());
    assert_eq!(sim.hub.connection(id).unwrap().round_trip(), None);
    assert_eq!(sim.hub.stats().round_trips.count(), 0);
}

// ---------------------------------------------------------------------------------------------
// Connection labels

fn labelled(tenant: &str, user: &str, sid: &str) -> Principal {
    Principal::new(tenant, user).labels(Labels::new([("sid", sid), ("client", "web")]).unwrap())
}

#[test]
fn labels_show_in_the_view_in_inbound_origins_and_in_audits_of_the_connection() {
    let mut sim = Sim::default();
    let tab = sim.connect_as(labelled("acme", "alice", "s-1"));
    let view = sim.hub.connection(tab).unwrap();
    assert_eq!(view.labels().get("sid"), Some("s-1"));
    assert_eq!(view.labels().get("client"), Some("web"));

    sim.hub.receive(sim.now, tab, br#"{"type":"message","data":{"q":1}}"#).unwrap();
    let inbound = sim.drain().into_iter().find_map(|a| match a {
        Action::Inbound(m) => Some(m),
        _ => None,
    });
    let from = inbound.expect("an inbound message").from;
    assert_eq!((from.conn, from.labels.get("sid")), (tab, Some("s-1")));

    assert!(sim.hub.receive(sim.now, tab, b"not json").is_err());
    let events = audit_events(&sim.drain());
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, AuditKind::MalformedFrame);
    assert_eq!((events[0].conn, events[0].labels.get("sid")), (Some(tab), Some("s-1")));
}

#[test]
fn a_refused_connect_is_audited_with_the_principals_labels_and_a_stale_id_with_none() {
    let mut sim = Sim::new(Config { max_connections: 1, ..Config::default() });
    let first = sim.connect_as(labelled("acme", "alice", "s-1"));
    let refused = sim.hub.connect(sim.now, labelled("acme", "bob", "s-2"));
    assert!(matches!(refused, Err(ConnectError::TooManyConnections { .. })));
    let events = audit_events(&sim.drain());
    assert_eq!(events[0].kind, AuditKind::LimitHit(LimitKind::TotalConnections));
    assert_eq!((events[0].conn, events[0].labels.get("sid")), (None, Some("s-2")));

    // `first`'s slot goes to carol; alice's old id is stale. The audit must not name carol's
    // labels: they are not the presenter's.
    sim.hub.disconnect(sim.now, first, DisconnectReason::Clean).unwrap();
    let carol = sim.connect_as(labelled("acme", "carol", "s-3"));
    assert_eq!(carol.to_u64() as u32, first.to_u64() as u32, "the slot was reused");
    assert_eq!(sim.hub.pong(sim.now, first), Err(ConnError::Stale));
    let events = audit_events(&sim.drain());
    assert_eq!(events[0].kind, AuditKind::StaleConnId);
    assert!(events[0].labels.is_empty(), "{:?}", events[0].labels);
}

#[test]
fn labels_never_reach_a_client_and_never_change_routing() {
    let mut sim = Sim::default();
    let secretive = Labels::new([("sid", "s-7f3a9"), ("client", "desktop-app")]).unwrap();
    let id = sim.hub.connect(sim.now, Principal::new("acme", "alice").labels(secretive)).unwrap();
    let plain = sim.hub.connect(sim.now, Principal::new("acme", "alice")).unwrap();
    let mut frames = frames_for(&sim.drain(), id);
    let actions = sim.publish_to_user("acme", "alice", EventKind::AgentStarted);
    assert_eq!(frames_for(&actions, plain).len(), 1, "both of alice's connections get it");
    frames.extend(frames_for(&actions, id));
    assert_eq!(frames.len(), 2, "connected and the event");
    for frame in frames {
        let text = frame.to_string();
        assert!(!text.contains("s-7f3a9") && !text.contains("desktop-app"), "{text}");
    }
}

// ---------------------------------------------------------------------------------------------
// Lifetime cap per tier

fn capped(free: Duration) -> Config {
    let mut cfg = quiet();
    cfg.tiers.free.max_connection_lifetime = Some(free);
    cfg.tiers.free.max_connections_per_user = 25;
    cfg
}

/// Advances one second at a time until `until`, and returns when each close happened.
fn closes_until(sim: &mut Sim, until: Duration) -> Vec<(Duration, ConnId, CloseReason)> {
    let mut seen = Vec::new();
    while sim.now - sim.start < until {
        let actions = sim.advance(secs(1));
        for (id, reason) in closes(&actions) {
            seen.push((sim.now - sim.start, id, reason));
        }
    }
    seen
}

#[test]
fn a_capped_tier_closes_its_connections_within_the_last_tenth_of_the_cap_to_reconnect() {
    let mut sim = Sim::new(capped(secs(600)));
    let free: Vec<ConnId> = (0..20).map(|_| sim.connect("acme", "alice")).collect();
    let enterprise = sim.connect_as(Principal::new("acme", "bob").tier(Tier::Enterprise));

    let closed = closes_until(&mut sim, secs(700));
    assert_eq!(closed.len(), 20, "every free connection, and only those: {closed:?}");
    for (at, id, reason) in &closed {
        assert!(free.contains(id));
        assert_eq!(*reason, CloseReason::MaxLifetime);
        assert!(*at >= secs(540) && *at <= secs(600), "closed at {at:?}");
    }
    let mut instants: Vec<Duration> = closed.iter().map(|(at, ..)| *at).collect();
    instants.dedup();
    assert!(instants.len() > 5, "spread over the last tenth, not all at once: {instants:?}");
    assert!(sim.hub.connection(enterprise).is_some(), "the enterprise tier has no cap");

    assert_eq!(CloseReason::MaxLifetime.code(), 4009);
    assert!(CloseReason::MaxLifetime.reconnect());
    assert_eq!(CloseReason::MaxLifetime.as_str(), "max_lifetime");
    assert_eq!(sim.hub.stats().closed_by.max_lifetime, 20);
}

#[test]
fn the_cap_is_the_same_for_the_same_seed_and_counts_from_the_connect() {
    let run = |late: Duration| {
        let mut sim = Sim::new(capped(secs(600)));
        sim.advance(late);
        let id = sim.connect("acme", "alice");
        // Activity does not extend a lifetime.
        for _ in 0..30 {
            sim.now += secs(10);
            sim.hub.receive(sim.now, id, br#"{"type":"ping"}"#).unwrap();
            sim.drain();
        }
        let closed = closes_until(&mut sim, late + secs(700));
        assert_eq!(closed.len(), 1);
        closed[0].0 - late
    };
    let lifetime = run(secs(0));
    assert!(lifetime >= secs(540) && lifetime <= secs(600), "{lifetime:?}");
    assert_eq!(run(secs(30)), lifetime, "same seed, same first connection, same cap");
}

#[test]
fn a_session_that_ends_first_still_ends_as_a_session_and_a_zero_cap_is_refused() {
    let mut sim = Sim::new(capped(secs(600)));
    let short = Principal::new("acme", "alice").expires_at(sim.now + secs(300));
    let id = sim.connect_as(short);
    let closed = closes_until(&mut sim, secs(700));
    assert_eq!(closed, vec![(secs(300), id, CloseReason::SessionExpired)]);

    let mut cfg = Config::default();
    cfg.tiers.mid.max_connection_lifetime = Some(Duration::ZERO);
    assert!(matches!(
        Hub::new(cfg),
        Err(ConfigError::ZeroTierQuota { tier: Tier::Mid, field: "max_connection_lifetime" })
    ));
}
