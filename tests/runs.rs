//! Issue 14 item 2: runs. A client subscribes to a `run_id` as to a thread; `Target::Run` reaches
//! exactly the connections of that user watching that run plus those not narrowed; a resume
//! replays by the same rule.
mod common;

use common::*;
use serde_json::json;
use switchboard::{Config, Envelope, EventKind, PeerError, ReceiveError, Target};

fn note(target: Target, n: u64) -> Envelope {
    Envelope::new(target, EventKind::custom("note")).data(json!({ "n": n }))
}

fn notes(frames: &[serde_json::Value]) -> Vec<u64> {
    frames.iter().filter(|f| f["type"] == "note").filter_map(|f| f["data"]["n"].as_u64()).collect()
}

#[test]
fn a_run_reaches_its_watchers_and_unnarrowed_connections_only() {
    let mut cfg = quiet();
    cfg.tiers.free.max_connections_per_user = 4;
    let mut sim = Sim::new(cfg);
    let all = sim.connect("acme", "alice");
    let r1 = sim.connect("acme", "alice");
    let r2 = sim.connect("acme", "alice");
    let t1 = sim.connect("acme", "alice");
    let bob = sim.connect("acme", "bob");
    sim.hub.receive(sim.now, r1, br#"{"type":"subscribe","run_id":"r1"}"#).unwrap();
    sim.hub.receive(sim.now, r2, br#"{"type":"subscribe","run_id":"r2"}"#).unwrap();
    sim.hub.receive(sim.now, t1, br#"{"type":"subscribe","thread_id":"t1"}"#).unwrap();
    sim.drain();
    assert_eq!(sim.hub.connection(r1).unwrap().runs().map(<[_]>::len), Some(1));
    assert_eq!(sim.hub.connection(all).unwrap().runs(), None);

    let p = sim.hub.publish(sim.now, note(Target::run("acme", "alice", "r1"), 1)).unwrap();
    assert_eq!(p.delivered, 2);
    // The run's event in thread t1: its thread's watcher gets it too.
    let in_t1 = note(Target::run("acme", "alice", "r1"), 2).thread("t1");
    sim.hub.publish(sim.now, in_t1).unwrap();
    // A user-wide event without thread or run still reaches every connection of the user.
    sim.hub.publish(sim.now, note(user_target("acme", "alice"), 3)).unwrap();
    // Another run, and a user event that names a run (the same rule: its watchers only).
    sim.hub.publish(sim.now, note(Target::run("acme", "alice", "r2"), 4)).unwrap();
    sim.hub.publish(sim.now, note(user_target("acme", "alice"), 5).run("r1")).unwrap();
    let actions = sim.drain();
    assert_eq!(notes(&frames_for(&actions, all)), [1, 2, 3, 4, 5]);
    assert_eq!(notes(&frames_for(&actions, r1)), [1, 2, 3, 5]);
    assert_eq!(notes(&frames_for(&actions, r2)), [3, 4]);
    assert_eq!(notes(&frames_for(&actions, t1)), [2, 3]);
    assert!(frames_for(&actions, bob).is_empty(), "another user's runs are not bob's");
    let frame = &frames_for(&actions, r1)[0];
    assert_eq!(frame["run_id"], "r1", "Target::Run sets the envelope's run");

    // Unsubscribing the last run widens the connection back to everything.
    sim.hub.receive(sim.now, r2, br#"{"type":"unsubscribe","run_id":"r2"}"#).unwrap();
    sim.hub.publish(sim.now, note(Target::run("acme", "alice", "r1"), 6)).unwrap();
    assert_eq!(notes(&frames_for(&sim.drain(), r2)), [6]);
    let mismatch = note(Target::run("acme", "alice", "r1"), 7).run("r2");
    assert_eq!(sim.hub.publish(sim.now, mismatch), Err(switchboard::PublishError::RunMismatch));
}

#[test]
fn run_subscriptions_are_bounded_like_threads() {
    let cfg = Config { max_thread_subscriptions: 2, ..quiet() };
    let mut sim = Sim::new(cfg);
    let c = sim.connect("acme", "alice");
    for run in ["a", "b", "b"] {
        let frame = format!(r#"{{"type":"subscribe","run_id":"{run}"}}"#);
        sim.hub.receive(sim.now, c, frame.as_bytes()).unwrap();
    }
    let err = sim.hub.receive(sim.now, c, br#"{"type":"subscribe","run_id":"c"}"#).unwrap_err();
    assert_eq!(err, ReceiveError::Peer(PeerError::TooManySubscriptions { limit: 2 }));
    let bad = sim.hub.receive(sim.now, c, br#"{"type":"subscribe","run_id":5}"#).unwrap_err();
    assert_eq!(bad, ReceiveError::Peer(PeerError::InvalidField { field: "run_id" }));
}

#[test]
fn a_resume_replays_only_what_the_run_filter_admits() {
    let cfg = Config { resume_window: secs(2), ..quiet() };
    let mut sim = Sim::new(cfg);
    let first = sim.connect("acme", "alice");
    sim.hub.receive(sim.now, first, br#"{"type":"ping"}"#).unwrap();
    sim.hub.publish(sim.now, note(user_target("acme", "alice"), 1)).unwrap();
    let seen = frames_for(&sim.drain(), first);
    let last = seen.iter().find(|f| f["type"] == "note").unwrap();
    let (epoch, seq) = (last["epoch"].as_u64().unwrap(), last["seq"].as_u64().unwrap());
    sim.hub.disconnect(sim.now, first, switchboard::DisconnectReason::Abnormal).unwrap();
    // Missed while away: two runs and a user-wide notice.
    sim.hub.publish(sim.now, note(Target::run("acme", "alice", "r1"), 2)).unwrap();
    sim.hub.publish(sim.now, note(Target::run("acme", "alice", "r2"), 3)).unwrap();
    sim.hub.publish(sim.now, note(user_target("acme", "alice"), 4)).unwrap();
    let again = sim.connect("acme", "alice");
    sim.hub.receive(sim.now, again, br#"{"type":"subscribe","run_id":"r1"}"#).unwrap();
    let resume = json!({"type": "resume", "positions": {"u": {"epoch": epoch, "seq": seq}}});
    sim.hub.receive(sim.now, again, resume.to_string().as_bytes()).unwrap();
    let frames = frames_for(&sim.drain(), again);
    assert_eq!(notes(&frames), [2, 4]);
    let resumed = frames.iter().find(|f| f["type"] == "resumed").unwrap();
    assert_eq!(resumed["recovered"], true, "{resumed}");
}
