//! Issue 14 item 7: custom kinds with a priority (a droppable one is skipped under pressure like
//! `agent_thinking`, a plain one never is), and a publish that leaves one connection out (the
//! sender's), live and in the replay a held connection gets.
mod common;

use common::*;
use serde_json::json;
use switchboard::{Config, Envelope, EventKind, Priority, Target};

#[test]
fn a_droppable_custom_kind_is_skipped_for_a_connection_that_is_behind() {
    let cfg = Config { max_inflight_bytes: 200, max_unwritten_bytes: 8000, ..quiet() };
    let mut sim = Sim::new(cfg);
    let slow = sim.connect("acme", "alice");
    sim.drain();
    // Past the soft limit with a critical frame it never confirms.
    let big = Envelope::new(user_target("acme", "alice"), EventKind::custom("invoice_ready"))
        .data(json!({"pad": "x".repeat(300)}));
    sim.hub.publish(sim.now, big).unwrap();
    sim.drain();
    let progress = EventKind::custom_droppable("upload_progress");
    assert_eq!(progress.priority(), Priority::Low);
    let env = Envelope::new(user_target("acme", "alice"), progress).data(json!({"pct": 10}));
    let p = sim.hub.publish(sim.now, env).unwrap();
    assert_eq!((p.delivered, p.skipped), (0, 1));
    // A plain custom kind is critical: still delivered, announced by the skip count.
    let done = Envelope::new(user_target("acme", "alice"), EventKind::custom("upload_done"));
    let p = sim.hub.publish(sim.now, done).unwrap();
    assert_eq!((p.delivered, p.skipped), (1, 0));
    let frames = frames_for(&sim.drain(), slow);
    let types: Vec<&str> = frames.iter().filter_map(|f| f["type"].as_str()).collect();
    assert_eq!(types, ["skipped", "upload_done"], "{frames:?}");
    assert_eq!(frames[0]["count"], 1);
}

#[test]
fn a_droppable_kind_may_not_use_a_reserved_name() {
    let mut sim = Sim::new(quiet());
    sim.connect("acme", "alice");
    for name in ["agent_thinking", "history", ""] {
        let env = Envelope::new(user_target("acme", "alice"), EventKind::custom_droppable(name));
        assert!(sim.hub.publish(sim.now, env).is_err(), "{name:?}");
    }
}

#[test]
fn an_excluded_connection_gets_nothing_of_a_publish_on_any_target() {
    let mut sim = Sim::new(quiet());
    let a = sim.connect("acme", "alice");
    let b = sim.connect("acme", "alice");
    let c = sim.connect("acme", "carol");
    sim.hub.join(sim.now, a, "lobby").unwrap();
    sim.hub.join(sim.now, c, "lobby").unwrap();
    sim.drain();
    let targets = [
        user_target("acme", "alice"),
        thread_target("acme", "alice", "t1"),
        Target::room("acme", "lobby"),
        Target::tenant("acme"),
    ];
    for target in targets {
        let env = Envelope::new(target.clone(), EventKind::custom("note")).exclude(a);
        let p = sim.hub.publish(sim.now, env).unwrap();
        let actions = sim.drain();
        assert!(frames_for(&actions, a).is_empty(), "{target:?}: the sender got it");
        let others = frames_for(&actions, b).len() + frames_for(&actions, c).len();
        assert_eq!(p.delivered, others, "{target:?}");
        assert!(others >= 1, "{target:?}: nobody else got it");
    }
    // Excluding the one connection a connection target names reaches nobody.
    let env = Envelope::new(Target::Connection(a), EventKind::custom("note")).exclude(a);
    assert!(sim.hub.publish(sim.now, env).unwrap().undeliverable());
}

#[test]
fn an_excluded_connection_still_held_does_not_get_the_message_in_its_replay() {
    let cfg = Config { resume_window: secs(5), ..quiet() };
    let mut sim = Sim::new(cfg);
    let a = sim.connect("acme", "alice");
    let b = sim.connect("acme", "alice");
    sim.drain();
    let env = Envelope::new(user_target("acme", "alice"), EventKind::custom("note")).exclude(a);
    let p = sim.hub.publish(sim.now, env).unwrap();
    assert_eq!(p.held, 1, "the other connection waits in its resume window");
    let marker = Envelope::new(user_target("acme", "alice"), EventKind::custom("marker"));
    sim.hub.publish(sim.now, marker).unwrap();
    let actions = sim.advance(secs(6));
    let kinds = |conn| -> Vec<String> {
        frames_for(&actions, conn)
            .iter()
            .filter_map(|f| f["type"].as_str().map(str::to_owned))
            .collect()
    };
    assert_eq!(kinds(a), ["marker"]);
    assert_eq!(kinds(b), ["note", "marker"]);
}

#[test]
fn connections_are_found_by_the_id_their_client_was_told_and_only_while_open() {
    let mut sim = Sim::new(quiet());
    let a = sim.hub.connect(sim.now, switchboard::Principal::new("acme", "alice")).unwrap();
    let connected = frames_for(&sim.drain(), a).remove(0);
    let wire = connected["conn_id"].as_str().unwrap().to_owned();
    assert_eq!(sim.hub.find_connection(&wire), Some(a));
    for bad in ["", "v", "0v", "v1", "x0v1", "0v1v2", "99v1", "0v99", "-0v1", "+0v1"] {
        assert_eq!(sim.hub.find_connection(bad), None, "{bad:?}");
    }
    sim.hub.disconnect(sim.now, a, switchboard::DisconnectReason::Clean).unwrap();
    assert_eq!(sim.hub.find_connection(&wire), None);
}
