//! Regression tests for defects an adversarial review found (issue 10): the reconnect breaker,
//! instants at the end of their range, violations and rates, per-user quotas,
//! thread filters. Each one failed before its fix. Public API only.
mod common;

use std::time::{Duration, Instant};

use common::*;
use switchboard::{
    Action, CloseReason, Config, ConnId, ConnectError, DisconnectReason, Envelope, EventKind, Hub,
    Principal,
};

// ---------------------------------------------------------------------------------------------
// The reconnect breaker

fn storm_cycle(sim: &mut Sim) -> Result<(), ConnectError> {
    let c = sim.hub.connect(sim.now, Principal::new("acme", "alice"))?;
    sim.hub.disconnect(sim.now, c, DisconnectReason::Abnormal).unwrap();
    sim.drain();
    Ok(())
}

#[test]
fn a_storm_opens_the_breaker_even_without_user_retention() {
    let mut sim = Sim::new(Config { user_retention: Duration::ZERO, ..quiet() });
    for i in 0..5 {
        assert_eq!(storm_cycle(&mut sim), Ok(()), "attempt {i} is admitted");
    }
    assert!(matches!(storm_cycle(&mut sim), Err(ConnectError::BreakerOpen { .. })));
    assert_eq!(sim.hub.stats().breakers_opened, 1);
}

#[test]
fn failures_spaced_wider_than_retention_still_open_the_breaker() {
    let mut sim = Sim::new(Config { user_retention: secs(10), ..quiet() });
    for i in 0..5 {
        if i > 0 {
            sim.advance(secs(11));
        }
        assert_eq!(storm_cycle(&mut sim), Ok(()), "attempt {i} is admitted");
    }
    sim.advance(secs(11));
    assert!(matches!(storm_cycle(&mut sim), Err(ConnectError::BreakerOpen { .. })));
}

#[test]
fn a_failed_half_open_probe_reopens_even_when_retention_is_shorter_than_open_for() {
    let mut sim = Sim::new(Config { user_retention: secs(5), ..quiet() });
    for _ in 0..5 {
        storm_cycle(&mut sim).unwrap();
    }
    assert!(matches!(storm_cycle(&mut sim), Err(ConnectError::BreakerOpen { .. })));
    // Wait out `open_for` (60 s) in steps, so that every timer on the way fires.
    for _ in 0..6 {
        sim.advance(secs(10));
    }
    // Half-open: one probe is admitted; it fails at once.
    assert_eq!(storm_cycle(&mut sim), Ok(()), "the probe is admitted");
    let again = sim.hub.connect(sim.now, Principal::new("acme", "alice"));
    assert!(matches!(again, Err(ConnectError::BreakerOpen { .. })), "{again:?}");
    assert_eq!(sim.hub.stats().breakers_opened, 2);
}

#[test]
fn a_multi_tab_storm_counts_once_per_round_and_still_opens() {
    let mut sim = Sim::new(quiet());
    for round in 0..5 {
        let tabs: Vec<ConnId> = (0..3)
            .map(|_| sim.hub.connect(sim.now, Principal::new("acme", "alice")).unwrap())
            .collect();
        sim.now += ms(200);
        for t in tabs {
            sim.hub.disconnect(sim.now, t, DisconnectReason::Abnormal).unwrap();
        }
        sim.drain();
        assert_eq!(
            sim.hub.stats().breakers_opened,
            u64::from(round == 4),
            "three tabs failing together are one failure (round {round})"
        );
        sim.now += ms(500);
    }
    let refused = sim.hub.connect(sim.now, Principal::new("acme", "alice"));
    assert!(matches!(refused, Err(ConnectError::BreakerOpen { .. })));
}

#[test]
fn network_blips_of_long_lived_connections_do_not_open_the_breaker() {
    let mut sim = Sim::new(quiet());
    let mut tabs: Vec<ConnId> = (0..3).map(|_| sim.connect("acme", "alice")).collect();
    sim.advance(secs(600));
    // Ten blips a minute apart... and then five within one minute: each drops every tab of a
    // user whose connections had been up for a while.
    for gap in [60, 60, 60, 12, 12, 12, 12, 12] {
        for t in tabs.drain(..) {
            sim.hub.disconnect(sim.now, t, DisconnectReason::Abnormal).unwrap();
        }
        sim.drain();
        sim.now += ms(300);
        for _ in 0..3 {
            let c = sim.hub.connect(sim.now, Principal::new("acme", "alice"));
            tabs.push(c.expect("a user whose network blinked is let back in"));
        }
        sim.drain();
        sim.advance(secs(gap));
    }
    assert_eq!(sim.hub.stats().breakers_opened, 0);
    assert_eq!(sim.hub.stats().breaker_refusals, 0);
}

// ---------------------------------------------------------------------------------------------
// No input makes the hub panic

/// The latest instant this platform represents, give or take a second.
fn near_the_end_of_time() -> Instant {
    let start = Instant::now();
    let (mut lo, mut hi) = (0u64, u64::MAX);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if start.checked_add(Duration::from_secs(mid)).is_some() {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    start + Duration::from_secs(lo)
}

#[test]
fn instants_near_the_end_of_their_range_do_not_panic() {
    let end = near_the_end_of_time();
    let mut hub = Hub::new(Config::default()).unwrap();
    let t = end - Duration::from_secs(20);
    let c = hub.connect(t, Principal::new("acme", "alice").expires_at(end)).unwrap();
    hub.receive(t, c, br#"{"type":"ping"}"#).unwrap();
    hub.publish(t, Envelope::new(user_target("acme", "alice"), EventKind::AgentStarted)).unwrap();
    hub.tick(end);
    while hub.poll_action().is_some() {}
    let _ = hub.poll_timeout();
    hub.disconnect(end, c, DisconnectReason::Abnormal).unwrap_or_default();
    hub.tick(end);
}

#[test]
fn a_room_emptied_near_the_end_of_time_is_dropped_not_kept_forever() {
    let end = near_the_end_of_time();
    let cfg = Config { room_retention: secs(120), ..Config::default() };
    let mut hub = Hub::new(cfg).unwrap();
    let t = end - Duration::from_secs(20);
    let c = hub.connect(t, Principal::new("acme", "alice")).unwrap();
    hub.join(t, c, "lobby").unwrap();
    hub.leave(t, c, "lobby").unwrap();
    while hub.poll_action().is_some() {}
    let stats = hub.stats();
    assert_eq!((stats.rooms, stats.rooms_idle), (0, 0), "an idle room that could never expire");
    hub.tick(end);
}

// ---------------------------------------------------------------------------------------------
// Violations and rates

#[test]
fn the_fifth_violation_in_a_row_closes() {
    let mut sim = Sim::new(quiet());
    let c = sim.connect("acme", "alice");
    for i in 1..=5 {
        assert!(sim.hub.receive(sim.now, c, b"not json").is_err());
        let closed = closes(&sim.drain());
        if i < 5 {
            assert!(closed.is_empty(), "violation {i} is forgiven");
        } else {
            assert_eq!(closed, vec![(c, CloseReason::ProtocolViolation)]);
        }
    }
}

#[test]
fn a_burst_over_the_message_rate_is_answered_never_closed() {
    let mut sim = Sim::new(quiet());
    let c = sim.connect("acme", "alice");
    let mut limited = 0;
    for _ in 0..200 {
        if sim.hub.receive(sim.now, c, br#"{"type":"message","data":1}"#).is_err() {
            limited += 1;
        }
        let actions = sim.drain();
        assert!(closes(&actions).is_empty(), "a rate overrun is not a protocol violation");
        let n = actions.iter().filter(|a| matches!(a, Action::Deliver { .. })).count();
        sim.hub.written(sim.now, c, n * 64).unwrap_or_default();
    }
    assert!(limited >= 150);
    assert!(sim.hub.connection(c).is_some());
}

#[test]
fn the_message_quota_is_the_users_shared_by_its_connections_and_kept_across_a_reconnect() {
    let mut sim = Sim::new(Config { user_retention: secs(120), ..quiet() });
    let burst = sim.hub.config().tiers.free.message_burst as usize;
    let tabs: Vec<ConnId> = (0..3).map(|_| sim.connect("acme", "alice")).collect();
    let mut accepted = 0;
    for &t in &tabs {
        for _ in 0..burst {
            let _ = sim.hub.receive(sim.now, t, br#"{"type":"message","data":1}"#);
        }
        accepted += inbound_count(&sim.drain());
    }
    assert_eq!(accepted, burst, "three tabs share one bucket");
    for t in tabs {
        sim.hub.disconnect(sim.now, t, DisconnectReason::Clean).unwrap();
    }
    sim.now += secs(1);
    let c = sim.connect("acme", "alice");
    for _ in 0..burst {
        let _ = sim.hub.receive(sim.now, c, br#"{"type":"message","data":1}"#);
    }
    let refilled = inbound_count(&sim.drain());
    assert!(refilled <= 1, "a reconnect does not refill the burst ({refilled} accepted)");
}

// ---------------------------------------------------------------------------------------------
// Thread filters

#[test]
fn unsubscribing_the_last_thread_receives_everything_again() {
    let mut sim = Sim::new(quiet());
    let c = sim.connect("acme", "alice");
    sim.hub.receive(sim.now, c, br#"{"type":"subscribe","thread_id":"t1"}"#).unwrap();
    sim.hub.receive(sim.now, c, br#"{"type":"unsubscribe","thread_id":"t1"}"#).unwrap();
    sim.drain();
    let env = Envelope::new(thread_target("acme", "alice", "t2"), EventKind::AgentStarted);
    let p = sim.hub.publish(sim.now, env.thread("t2")).unwrap();
    assert_eq!(p.delivered, 1);
}
