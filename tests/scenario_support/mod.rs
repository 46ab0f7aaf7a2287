//! Helpers shared by the origin scenarios (`tests/scenarios.rs` and `tests/sessions.rs`).
#![allow(dead_code)]

use std::time::Instant;

use crate::common::*;
use switchboard::{Action, ConnId, Envelope, EventKind};

pub const AGENT_EVENTS: [(EventKind, &str); 5] = [
    (EventKind::AgentStarted, "agent_started"),
    (EventKind::AgentThinking, "agent_thinking"),
    (EventKind::ToolExecuting, "tool_executing"),
    (EventKind::ToolCompleted, "tool_completed"),
    (EventKind::AgentCompleted, "agent_completed"),
];

/// The `type`s of the frames delivered to one connection.
pub fn types_for(actions: &[Action], conn: ConnId) -> Vec<String> {
    frames_for(actions, conn).iter().map(|f| f["type"].as_str().unwrap_or("?").to_owned()).collect()
}

/// Publishes and returns the hub's answer together with the actions it queued.
/// Publishes and returns what that publish did (earlier actions, such as `joined`
/// announcements, are drained first).
pub fn publish(sim: &mut Sim, env: Envelope) -> (switchboard::Published, Vec<Action>) {
    sim.drain();
    let published = sim.hub.publish(sim.now, env).expect("publish accepted");
    (published, sim.drain())
}

/// Drives the clock to `until` through the deadlines the hub announces with `poll_timeout`,
/// answering every `Ping` to a connection in `responders` with a pong at once. Returns every action
/// queued on the way.
pub fn run_until(sim: &mut Sim, until: Instant, responders: &[ConnId]) -> Vec<Action> {
    let mut all = Vec::new();
    for _ in 0..100_000 {
        let next = sim.hub.poll_timeout();
        let at = match next {
            Some(at) if at <= until => at.max(sim.now),
            _ => until,
        };
        sim.now = at;
        sim.hub.tick(at);
        let actions = sim.drain();
        for conn in pings(&actions) {
            if responders.contains(&conn) {
                sim.hub.pong(sim.now, conn).expect("responder is open");
            }
        }
        all.extend(actions);
        if at >= until {
            return all;
        }
    }
    panic!("the clock did not reach its target: poll_timeout makes no progress");
}

/// Whether `actions` hold a `Deliver` of any frame.
pub fn any_delivery(actions: &[Action]) -> bool {
    actions.iter().any(|a| matches!(a, Action::Deliver { .. }))
}
