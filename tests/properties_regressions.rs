//! Regressions: minimal failing cases found by the properties (`tests/properties.rs`), written
//! out. The first three are minimal cases of bugs the properties found and
//! that are fixed; the last two document bugs that are not.
mod common;

use std::time::Duration;

use common::Sim;
use serde_json::json;
use switchboard::{
    Action, Audience, AuditKind, BreakerConfig, Config, ConnectError, DisconnectReason, Envelope,
    EventKind, Heartbeat, Principal, ReceiveError, Retention, Target,
};

/// earlier heartbeat.
#[test]
fn regression_ping_after_activity_is_late_when_interval_is_shorter_than_timeout() {
    let cfg = Config {
        heartbeat: Heartbeat { interval: Duration::from_secs(4), timeout: Duration::from_secs(8) },
        ..Config::default()
    };
    let mut sim = Sim::new(cfg);
    let conn = sim.connect("acme", "alice");
    assert_eq!(common::pings(&sim.advance(Duration::from_secs(4))), vec![conn]);
    // The peer answers at once: silence starts again at 4 s.
    sim.hub.pong(sim.now, conn).expect("live");
    assert!(sim.drain().is_empty());
    let due = sim.now + Duration::from_secs(4);
    assert!(
        sim.hub.poll_timeout().is_some_and(|t| t <= due),
        "poll_timeout {:?} is after the next ping is due (8 s)",
        sim.hub.poll_timeout().map(|t| t - sim.start)
    );
    assert!(sim.hub.connection(conn).expect("live").next_check().is_some_and(|t| t <= due));
    let actions = sim.advance(Duration::from_secs(4));
    assert_eq!(common::pings(&actions), vec![conn], "no ping after 4 s of silence: {actions:?}");
}

/// Client frames are JSON objects; `PeerError::Malformed` documents "the frame is not a JSON
/// object". A JSON array whose elements line up with the frame's fields (`type`, `thread_id`,
/// `data`) used to be accepted as that frame instead: here a `message` surfaced as
/// `Action::Inbound`. Fixed: a frame that does not start with `{` is malformed.
#[test]
fn regression_json_array_frames_are_refused_as_malformed() {
    let mut sim = Sim::default();
    let conn = sim.connect("acme", "alice");
    let result = sim.hub.receive(sim.now, conn, br#"["message","th1",{"n":1}]"#);
    let actions = sim.drain();
    assert!(
        matches!(result, Err(ReceiveError::Peer(ref e)) if e.code() == "malformed"),
        "a JSON array was accepted as a client frame: {result:?} {actions:?}"
    );
    assert!(!actions.iter().any(|a| matches!(a, Action::Inbound(_))), "{actions:?}");
}

/// The breaker "stops a client that keeps failing from reconnecting in a tight loop":
/// `threshold` abnormal closes within `window` open it, and for `open_for` "connects fail with
/// `retry_after`" (`BreakerConfig`). With `user_retention` zero (which `Config::validate`
/// accepts), the user used to be retired the moment its last connection closed, breaker and
/// failure count with it: the breaker opened (`BreakerOpened` audit, `BreakerChanged { Open }`
/// metric), the user retired in the same call, and the very next connect was admitted instead of
/// failing with `ConnectError::BreakerOpen`. Fixed (5cea3a3): a detached user with an open
/// breaker is kept until the breaker half-opens.
#[test]
fn regression_zero_retention_discards_an_open_breaker() {
    let cfg = Config {
        user_retention: Duration::ZERO,
        breaker: BreakerConfig { threshold: 1, ..BreakerConfig::default() },
        ..Config::default()
    };
    let mut sim = Sim::new(cfg);
    let conn = sim.connect("acme", "alice");
    sim.hub.disconnect(sim.now, conn, DisconnectReason::Abnormal).expect("live");
    let actions = sim.drain();
    assert_eq!(common::audits(&actions), vec![AuditKind::BreakerOpened], "{actions:?}");
    assert_eq!(sim.hub.stats().breakers_opened, 1);
    let again = sim.hub.connect(sim.now, Principal::new("acme", "alice"));
    assert!(
        matches!(again, Err(ConnectError::BreakerOpen { .. })),
        "the breaker opened and the next connect was {again:?}: {:?}",
        sim.drain()
    );
}

/// `Published::held` counts "connections still in their resume window", and a message that
/// reached held connections is not `undeliverable` ("reached no connection, live or held");
/// `HubStats::undeliverable` counts the publishes that are. For `Target::Everyone` the hub sums
/// `delivered`, `skipped` and `closed` over the tenants but not `held`: here the only connection
/// is in its resume window, a tenant broadcast reports `held: 1` and is deliverable, while the
/// same message sent to everyone reports `held: 0`, `undeliverable()` and bumps the
/// `undeliverable` counter (the connection gets both messages when it goes live).
///
/// Fails today. Suspected cause: the `Target::Everyone` arm of `Hub::publish`
/// (src/delivery.rs) adds up `r.delivered`, `r.skipped` and `r.closed` per tenant but not
/// `r.held`.
#[test]
fn regression_everyone_counts_held_connections() {
    let cfg = Config {
        resume_window: Duration::from_secs(5),
        allow_global_broadcast: true,
        ..Config::default()
    };
    let mut sim = Sim::new(cfg);
    let conn = sim.connect("acme", "alice");
    assert!(sim.hub.connection(conn).expect("live").held());
    let tenant = Target::Tenant { tenant: "acme".into(), audience: Audience::All };
    let to_tenant = sim.hub.publish(sim.now, Envelope::new(tenant, EventKind::AgentStarted));
    let to_tenant = to_tenant.expect("published");
    assert_eq!((to_tenant.delivered, to_tenant.held), (0, 1));
    assert!(!to_tenant.undeliverable());
    let to_all = sim.hub.publish(sim.now, Envelope::new(Target::Everyone, EventKind::AgentStarted));
    let to_all = to_all.expect("published");
    let stats = sim.hub.stats();
    assert_eq!(stats.held_back, 2, "both messages were held back for {conn}");
    assert_eq!(
        (to_all.delivered, to_all.held, to_all.undeliverable(), stats.undeliverable),
        (0, 1, false, 0),
        "a broadcast to everyone that reached one held connection: {to_all:?}"
    );
}

/// A stream's age timer is "armed while anything is buffered" (`Stream::trim_timer`), which
/// `Hub::check_invariants` holds it to both ways (armed exactly when the stream buffers
/// something). A message whose frame alone is over `retention.max_bytes` (which
/// `Config::validate` lets be any non-zero size) is not kept: keeping it drops the oldest first
/// and then the message itself. When the buffer held something before, it is left empty with its
/// age timer still armed: here a 70-byte message is kept at 0 s (timer due at 30 s + 1 ns), and
/// a 290-byte one at 1 s empties the buffer; `check_invariants` reports "user stream: age timer
/// armed true with 0 buffered", and `poll_timeout` asks for a `tick` at 30 s + 1 ns with nothing
/// due before the heartbeat at 60 s.
///
/// Fails today. Suspected cause: `Hub::publish_user`/`publish_room`/`publish_tenant`
/// (src/delivery.rs) call `Sink::keep` and then `arm_trim`, which only ever arms; unlike
/// `Sink::trim` (fixed for the replay's trim in 9e0bb00), nothing disarms the timer when the trim
/// inside `Stream::keep` leaves the stream empty.
#[test]
fn regression_a_frame_over_the_byte_bound_leaves_an_age_timer_armed() {
    let cfg = Config {
        heartbeat: Heartbeat {
            interval: Duration::from_secs(60),
            timeout: Duration::from_secs(10),
        },
        retention: Retention { max_messages: 10, max_bytes: 150, max_age: Duration::from_secs(30) },
        ..Config::default()
    };
    let mut sim = Sim::new(cfg);
    sim.connect("acme", "alice");
    let to_alice = || Target::User { tenant: "acme".into(), user: "alice".into() };
    let small = Envelope::new(to_alice(), EventKind::AgentStarted);
    sim.hub.publish(sim.now, small).expect("published");
    sim.drain();
    assert_eq!(sim.hub.user("acme", "alice").expect("held").buffered(), (1, 70));
    sim.hub.check_invariants().expect("one message buffered, its age timer armed");
    sim.now += Duration::from_secs(1);
    let big =
        Envelope::new(to_alice(), EventKind::AgentStarted).data(json!({"pad": "x".repeat(200)}));
    sim.hub.publish(sim.now, big).expect("published");
    sim.drain();
    assert_eq!(sim.hub.user("acme", "alice").expect("held").buffered(), (0, 0));
    let next = sim.hub.poll_timeout().map(|t| t - sim.start);
    assert_eq!(next, Some(Duration::from_secs(60)), "the next deadline is the heartbeat's");
    sim.hub.check_invariants().expect("nothing buffered, no age timer armed");
}
