//! Helpers shared by the delivery tests (`tests/delivery.rs`) and the recovery tests
//! (`tests/recovery.rs`): connect and flush, build `resume` frames, read positions, seqs, metrics
//! and breaker changes out of what the hub queued.
#![allow(dead_code)]

use std::time::Duration;

use crate::common::*;
use serde_json::{Value, json};
use switchboard::{
    Action, BreakerState, ConnId, Envelope, EventKind, MetricEvent, Principal, Published,
    ReceiveError, Target,
};

/// Connects and returns the id and the `connected` frame (drains everything else).
pub fn open(sim: &mut Sim, principal: Principal) -> (ConnId, Value) {
    let id = sim.hub.connect(sim.now, principal).expect("admitted");
    let actions = sim.drain();
    let frames = frames_for(&actions, id);
    assert_eq!(frames[0]["type"], "connected");
    (id, frames[0].clone())
}

/// Connects and confirms the `connected` frame as written, so the connection starts at zero.
pub fn open_flushed(sim: &mut Sim, principal: Principal) -> (ConnId, Value) {
    let id = sim.hub.connect(sim.now, principal).expect("admitted");
    let actions = sim.drain();
    flush(sim, &actions);
    let frames = frames_for(&actions, id);
    assert_eq!(frames[0]["type"], "connected");
    (id, frames[0].clone())
}

/// Confirms every frame delivered to connections other than `except` as written.
pub fn flush_except(sim: &mut Sim, actions: &[Action], except: ConnId) {
    for a in actions {
        if let Action::Deliver { conn, frame } = a {
            if *conn != except {
                sim.hub.written(sim.now, *conn, frame.len()).expect("live");
            }
        }
    }
}

/// Confirms every delivered frame as written.
pub fn flush(sim: &mut Sim, actions: &[Action]) {
    for a in actions {
        if let Action::Deliver { conn, frame } = a {
            sim.hub.written(sim.now, *conn, frame.len()).expect("live");
        }
    }
}

pub fn pos(connected: &Value, stream: &str) -> (u64, u64) {
    let p = &connected["streams"][stream];
    (p["epoch"].as_u64().unwrap(), p["seq"].as_u64().unwrap())
}

pub fn resume(positions: &[(&str, u64, u64)]) -> String {
    let map: serde_json::Map<String, Value> = positions
        .iter()
        .map(|(name, epoch, seq)| (name.to_string(), json!({"epoch": epoch, "seq": seq})))
        .collect();
    json!({"type": "resume", "positions": map}).to_string()
}

pub fn send(sim: &mut Sim, conn: ConnId, frame: &str) -> (Result<(), ReceiveError>, Vec<Action>) {
    let r = sim.hub.receive(sim.now, conn, frame.as_bytes());
    (r, sim.drain())
}

pub fn user(tenant: &str, user: &str) -> Target {
    Target::User { tenant: tenant.into(), user: user.into() }
}

pub fn publish(sim: &mut Sim, env: Envelope) -> (Published, Vec<Action>) {
    let p = sim.hub.publish(sim.now, env).expect("publish accepted");
    (p, sim.drain())
}

pub fn events(frames: &[Value]) -> Vec<&Value> {
    frames.iter().filter(|f| f.get("stream").is_some()).collect()
}

pub fn seqs(frames: &[&Value]) -> Vec<u64> {
    frames.iter().map(|f| f["seq"].as_u64().unwrap()).collect()
}

pub fn breaker_changes(actions: &[Action]) -> Vec<BreakerState> {
    metrics(actions)
        .into_iter()
        .filter_map(|m| match m {
            MetricEvent::BreakerChanged { state, .. } => Some(state),
            _ => None,
        })
        .collect()
}

/// Advances the clock in steps, answering every ping so that connections stay up.
pub fn advance_alive(sim: &mut Sim, total: Duration, step: Duration) -> Vec<Action> {
    let mut all = Vec::new();
    let mut left = total;
    while !left.is_zero() {
        let d = step.min(left);
        left -= d;
        let actions = sim.advance(d);
        for conn in pings(&actions) {
            sim.hub.pong(sim.now, conn).expect("live");
        }
        all.extend(actions);
    }
    all
}

pub const CRITICAL: [EventKind; 4] = [
    EventKind::AgentStarted,
    EventKind::ToolExecuting,
    EventKind::ToolCompleted,
    EventKind::AgentCompleted,
];
