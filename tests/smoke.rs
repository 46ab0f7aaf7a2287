//! The harness itself works: a connection gets `connected` and its own events.
mod common;

use common::*;
use switchboard::EventKind;

#[test]
fn a_connected_user_receives_its_event() {
    let mut sim = Sim::default();
    let alice = sim.connect("acme", "alice");
    let actions = sim.publish_to_user("acme", "alice", EventKind::AgentStarted);
    let frames = frames_for(&actions, alice);
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0]["type"], "agent_started");
    assert_eq!(frames[0]["seq"], 1);
}

#[test]
fn the_invariant_checker_is_available_to_tests_and_passes_on_a_fresh_hub() {
    let mut sim = Sim::default();
    sim.hub.check_invariants().unwrap();
    let a = sim.connect("acme", "alice");
    sim.hub.join(sim.now, a, "room").unwrap();
    sim.hub.check_invariants().unwrap();
    sim.hub.disconnect(sim.now, a, switchboard::DisconnectReason::Clean).unwrap();
    sim.drain();
    sim.hub.check_invariants().unwrap();
}
