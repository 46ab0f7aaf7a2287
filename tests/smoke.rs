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
