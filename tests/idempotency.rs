//! A single node's idempotency keys: a retried publish with the same key on the same stream is
//! published once within the retention age, and the memory of keys is bounded.
mod common;

use common::*;
use switchboard::{Config, Envelope, EventKind, Retention, Target};

fn notice(target: Target, key: &str) -> Envelope {
    Envelope::new(target, EventKind::custom("notice")).idempotency_key(key)
}

fn events(actions: &[switchboard::Action]) -> usize {
    deliveries(actions).iter().filter(|(_, f)| f["type"] == "notice").count()
}

#[test]
fn a_retried_publish_is_published_once_and_answers_the_first_position() {
    let mut sim = Sim::new(quiet());
    let _alice = sim.connect("acme", "alice");
    let first = sim.hub.publish(sim.now, notice(user_target("acme", "alice"), "k1")).unwrap();
    assert!(!first.duplicate);
    assert_eq!(events(&sim.drain()), 1);
    let again = sim.hub.publish(sim.now, notice(user_target("acme", "alice"), "k1")).unwrap();
    assert!(again.duplicate);
    assert_eq!(again.position, first.position, "the first publish's position");
    assert_eq!((again.delivered, events(&sim.drain())), (0, 0), "nothing sent twice");
    // The same key on another stream, or another key, is another publish.
    let room = Target::Room { tenant: "acme".into(), room: "lobby".into() };
    assert!(!sim.hub.publish(sim.now, notice(room, "k1")).unwrap().duplicate);
    assert!(
        !sim.hub.publish(sim.now, notice(user_target("acme", "alice"), "k2")).unwrap().duplicate
    );
    // The lobby has no members: nothing was published there, so nothing is remembered.
    assert_eq!(sim.hub.stats().idempotency_keys, 2);
}

#[test]
fn keys_are_forgotten_after_the_retention_age_and_beyond_the_cap() {
    let retention = Retention { max_age: secs(60), ..Retention::default() };
    let mut sim = Sim::new(Config { retention, max_idempotency_keys: 2, ..quiet() });
    let _alice = sim.connect("acme", "alice");
    let to_alice = || user_target("acme", "alice");
    sim.hub.publish(sim.now, notice(to_alice(), "old")).unwrap();
    sim.advance(secs(61));
    assert!(!sim.hub.publish(sim.now, notice(to_alice(), "old")).unwrap().duplicate, "expired");
    for key in ["a", "b"] {
        sim.hub.publish(sim.now, notice(to_alice(), key)).unwrap();
    }
    assert_eq!(sim.hub.stats().idempotency_keys, 2, "the cap holds");
    assert!(!sim.hub.publish(sim.now, notice(to_alice(), "old")).unwrap().duplicate, "evicted");
    assert!(sim.hub.publish(sim.now, notice(to_alice(), "b")).unwrap().duplicate, "kept");
}

#[test]
fn connection_targets_do_not_remember_keys() {
    let mut sim = Sim::new(quiet());
    let alice = sim.connect("acme", "alice");
    for _ in 0..2 {
        let p = sim.hub.publish(sim.now, notice(Target::Connection(alice), "k")).unwrap();
        assert!(!p.duplicate);
    }
    assert_eq!(events(&sim.drain()), 2);
}
