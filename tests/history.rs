//! Issue 14 item 4: history. A client asks for the last messages of a stream it may see (or a
//! page before or after a position), bounded by count and by what the connection may still be
//! handed, filtered exactly as live delivery is.
mod common;

use common::*;
use serde_json::{Value, json};
use switchboard::{
    AuditKind, Config, ConnId, Envelope, EventKind, PeerError, ReceiveError, Target,
};

fn note(target: Target, n: u64) -> Envelope {
    Envelope::new(target, EventKind::custom("note")).data(json!({ "n": n }))
}

/// Sends a `history` request and returns the answer.
fn ask(sim: &mut Sim, conn: ConnId, request: Value) -> Value {
    sim.hub.receive(sim.now, conn, request.to_string().as_bytes()).expect("a valid request");
    let mut frames = frames_for(&sim.drain(), conn);
    assert_eq!(frames.len(), 1, "{frames:?}");
    let answer = frames.remove(0);
    assert_eq!(answer["type"], "history", "{answer}");
    answer
}

fn ns(answer: &Value) -> Vec<u64> {
    answer["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["data"]["n"].as_u64().unwrap())
        .collect()
}

#[test]
fn the_last_messages_come_newest_last_and_page_both_ways() {
    let mut sim = Sim::new(quiet());
    let alice = sim.connect("acme", "alice");
    let bob = sim.connect("acme", "bob");
    for n in 1..=6 {
        sim.hub.publish(sim.now, note(user_target("acme", "alice"), n)).unwrap();
    }
    sim.hub.publish(sim.now, note(user_target("acme", "bob"), 99)).unwrap();
    sim.drain();
    let last =
        ask(&mut sim, alice, json!({"type": "history", "stream": "u", "limit": 3, "id": "h1"}));
    assert_eq!(ns(&last), [4, 5, 6]);
    assert_eq!((last["id"].as_str(), last["more"].as_bool()), (Some("h1"), Some(true)));
    assert_eq!((last["seq"].as_u64(), last["available_from"].as_u64()), (Some(6), Some(1)));
    // The frames are the ones delivered live, positions included.
    assert_eq!(last["messages"][0]["seq"], 4);
    assert_eq!(last["messages"][0]["stream"], "u");
    let before =
        ask(&mut sim, alice, json!({"type": "history", "stream": "u", "limit": 3, "before": 4}));
    assert_eq!((ns(&before), before["more"].as_bool()), (vec![1, 2, 3], Some(false)));
    let after = ask(&mut sim, alice, json!({"type": "history", "stream": "u", "after": 4}));
    assert_eq!((ns(&after), after["more"].as_bool()), (vec![5, 6], Some(false)));
    // "u" is always the asker's own stream.
    assert_eq!(ns(&ask(&mut sim, bob, json!({"type": "history", "stream": "u"}))), [99]);
    let elsewhere = json!({"type": "history", "stream": "u", "epoch": 1, "after": 0});
    let stale = ask(&mut sim, alice, elsewhere);
    assert_eq!((ns(&stale), stale["reason"].as_str()), (vec![], Some("epoch_mismatch")));
    assert_eq!(sim.hub.stats().history_requests, 5);
}

#[test]
fn history_is_filtered_as_live_delivery_is() {
    let mut cfg = quiet();
    cfg.tiers.free.max_connections_per_user = 4;
    let mut sim = Sim::new(cfg);
    let all = sim.connect("acme", "alice");
    let t1 = sim.connect("acme", "alice");
    let other = sim.connect("acme", "alice");
    sim.hub.receive(sim.now, t1, br#"{"type":"subscribe","thread_id":"t1"}"#).unwrap();
    sim.hub.publish(sim.now, note(thread_target("acme", "alice", "t1"), 1)).unwrap();
    sim.hub.publish(sim.now, note(thread_target("acme", "alice", "t2"), 2)).unwrap();
    sim.hub.publish(sim.now, note(Target::run("acme", "alice", "r1"), 3)).unwrap();
    sim.hub.publish(sim.now, note(Target::Connection(other), 4)).unwrap();
    sim.hub.publish(sim.now, note(user_target("acme", "alice"), 5).exclude(all)).unwrap();
    sim.hub.publish(sim.now, note(Target::tenant_role("acme", "admin"), 6)).unwrap();
    sim.drain();
    let u = json!({"type": "history", "stream": "u"});
    assert_eq!(ns(&ask(&mut sim, all, u.clone())), [1, 2, 3]);
    assert_eq!(ns(&ask(&mut sim, t1, u.clone())), [1, 5]);
    assert_eq!(ns(&ask(&mut sim, other, u)), [1, 2, 3, 4, 5]);
    // One thread's or one run's history, as the page loads it.
    let thread = json!({"type": "history", "stream": "u", "thread_id": "t2"});
    assert_eq!(ns(&ask(&mut sim, other, thread)), [2]);
    let run = json!({"type": "history", "stream": "u", "run_id": "r1"});
    assert_eq!(ns(&ask(&mut sim, other, run)), [3]);
    // A role broadcast is not in the history of a connection without the role.
    assert!(ns(&ask(&mut sim, all, json!({"type": "history", "stream": "t"}))).is_empty());
}

#[test]
fn a_stream_the_connection_does_not_have_is_refused_and_audited() {
    let mut sim = Sim::new(quiet());
    let alice = sim.connect("acme", "alice");
    let bob = sim.connect("acme", "bob");
    sim.hub.join(sim.now, bob, "lobby").unwrap();
    sim.hub.publish(sim.now, note(Target::room("acme", "lobby"), 1)).unwrap();
    sim.drain();
    for stream in ["r:lobby", "u:bob", "x"] {
        let request = json!({"type": "history", "stream": stream}).to_string();
        let err = sim.hub.receive(sim.now, alice, request.as_bytes()).unwrap_err();
        assert_eq!(err, ReceiveError::Peer(PeerError::UnknownStream));
        let actions = sim.drain();
        assert_eq!(audits(&actions), [AuditKind::ForeignStream]);
        assert_eq!(frames_for(&actions, alice)[0]["code"], "unknown_stream");
    }
    assert!(sim.hub.connection(alice).is_some(), "answered, never closed");
    assert_eq!(ns(&ask(&mut sim, bob, json!({"type": "history", "stream": "r:lobby"}))), [1]);
    let too_many = json!({"type": "history", "stream": "u", "limit": 101}).to_string();
    let err = sim.hub.receive(sim.now, bob, too_many.as_bytes()).unwrap_err();
    assert_eq!(err, ReceiveError::Peer(PeerError::InvalidField { field: "limit" }));
}

#[test]
fn an_answer_stays_within_what_the_connection_may_be_handed() {
    let cfg = Config { max_unwritten_bytes: 1_000, max_inflight_bytes: 500, ..quiet() };
    let mut sim = Sim::new(cfg);
    let alice = sim.connect("acme", "alice");
    for n in 1..=5 {
        let env =
            note(user_target("acme", "alice"), n).data(json!({"n": n, "pad": "x".repeat(200)}));
        sim.hub.publish(sim.now, env).unwrap();
        // The client reads everything live: nothing stays unwritten.
        let actions = sim.drain();
        let bytes: usize = frames_for(&actions, alice).iter().map(|f| f.to_string().len()).sum();
        sim.hub.written(sim.now, alice, bytes + 100).unwrap();
    }
    let answer = ask(&mut sim, alice, json!({"type": "history", "stream": "u"}));
    let got = ns(&answer);
    assert!(!got.is_empty() && got.len() < 5, "{got:?}");
    assert_eq!(got.last(), Some(&5), "the newest ones");
    assert_eq!(answer["more"], true);
    assert!(answer.to_string().len() <= 1_000);
}
