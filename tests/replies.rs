//! Replies (acks): a client `message` with an `id` reaches the application with that id, and
//! `Hub::reply` answers exactly that connection, with data or an error; a reply to a connection
//! that has gone is a typed error.
mod common;

use common::*;
use serde_json::{Value, json};
use switchboard::{
    Action, ConnError, DisconnectReason, Inbound, PeerError, ReceiveError, Reply, ReplyError,
};

fn inbound(actions: &[Action]) -> Vec<&Inbound> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Inbound(msg) => Some(&**msg),
            _ => None,
        })
        .collect()
}

#[test]
fn a_reply_reaches_the_asking_connection_only() {
    let mut sim = Sim::new(quiet());
    let tab1 = sim.connect("acme", "alice");
    let tab2 = sim.connect("acme", "alice");
    let msg = br#"{"type":"message","id":"m-1","thread_id":"t1","data":{"text":"hi"}}"#;
    sim.hub.receive(sim.now, tab1, msg).unwrap();
    let actions = sim.drain();
    let got = inbound(&actions);
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].id.as_deref(), got[0].from.conn), (Some("m-1"), tab1));

    let data = json!({"run_id": "r1", "password": "hunter2"});
    sim.hub.reply(sim.now, tab1, "m-1", Reply::Data(data)).unwrap();
    let actions = sim.drain();
    let frames = deliveries(&actions);
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0].0, tab1);
    assert_eq!(
        frames[0].1,
        json!({"type": "reply", "id": "m-1", "data": {"run_id": "r1", "password": "[redacted]"}})
    );
    assert!(frames_for(&actions, tab2).is_empty());
    assert_eq!(sim.hub.stats().replies_sent, 1);

    let failed = Reply::Error { code: "busy".into(), message: "try later".into() };
    sim.hub.reply(sim.now, tab1, "m-1", failed).unwrap();
    let frame = frames_for(&sim.drain(), tab1).remove(0);
    assert_eq!(
        frame,
        json!({"type": "reply", "id": "m-1", "error": {"code": "busy", "message": "try later"}})
    );
}

#[test]
fn a_reply_to_a_closed_connection_or_a_bad_answer_is_a_typed_error() {
    let mut sim = Sim::new(quiet());
    let alice = sim.connect("acme", "alice");
    sim.hub.disconnect(sim.now, alice, DisconnectReason::Clean).unwrap();
    let gone = sim.hub.reply(sim.now, alice, "m-1", Reply::Data(Value::Null));
    assert_eq!(gone, Err(ReplyError::Conn(ConnError::Unknown { recently_closed: true })));

    let bob = sim.connect("acme", "bob");
    let ok = Reply::Data(Value::Null);
    assert!(matches!(
        sim.hub.reply(sim.now, bob, "", ok.clone()),
        Err(ReplyError::InvalidId { .. })
    ));
    let long = "x".repeat(10_000);
    assert!(matches!(sim.hub.reply(sim.now, bob, &long, ok), Err(ReplyError::InvalidId { .. })));
    let no_code = Reply::Error { code: String::new(), message: "m".into() };
    assert_eq!(sim.hub.reply(sim.now, bob, "m", no_code), Err(ReplyError::InvalidError));
    let mut deep = Value::Null;
    for _ in 0..200 {
        deep = json!([deep]);
    }
    assert!(matches!(
        sim.hub.reply(sim.now, bob, "m", Reply::Data(deep)),
        Err(ReplyError::TooDeep { .. })
    ));
    let huge = Reply::Data(json!({"blob": "y".repeat(2 << 20)}));
    assert!(matches!(sim.hub.reply(sim.now, bob, "m", huge), Err(ReplyError::TooLarge { .. })));
    assert!(deliveries(&sim.drain()).is_empty(), "nothing was sent");
}

#[test]
fn a_message_id_must_be_a_short_string() {
    let mut sim = Sim::new(quiet());
    let alice = sim.connect("acme", "alice");
    for bad in [
        r#"{"type":"message","id":7,"data":{}}"#.to_owned(),
        r#"{"type":"message","id":"","data":{}}"#.to_owned(),
        format!(r#"{{"type":"message","id":"{}","data":{{}}}}"#, "i".repeat(4096)),
    ] {
        let err = sim.hub.receive(sim.now, alice, bad.as_bytes()).unwrap_err();
        assert_eq!(err, ReceiveError::Peer(PeerError::InvalidField { field: "id" }), "{bad}");
        let actions = sim.drain();
        assert!(inbound(&actions).is_empty());
        assert_eq!(frames_for(&actions, alice)[0]["code"], "invalid_field");
    }
    // Without an id it is a message as before.
    sim.hub.receive(sim.now, alice, br#"{"type":"message","data":{}}"#).unwrap();
    assert_eq!(inbound(&sim.drain())[0].id, None);
}

#[test]
fn a_refused_message_or_history_request_is_answered_with_its_id() {
    let mut sim = Sim::new(quiet());
    let alice = sim.connect("acme", "alice");
    let refused = |sim: &mut Sim, frame: &str| {
        assert!(sim.hub.receive(sim.now, alice, frame.as_bytes()).is_err(), "{frame}");
        let frames = frames_for(&sim.drain(), alice);
        assert_eq!(frames.len(), 1, "{frames:?}");
        assert_eq!(frames[0]["type"], "error");
        (frames[0]["code"].clone(), frames[0].get("id").cloned())
    };
    // Invalid: the id is read back from the frame that failed validation.
    let bad_thread = r#"{"type":"message","id":"m-1","thread_id":5,"data":{}}"#;
    assert_eq!(refused(&mut sim, bad_thread), (json!("invalid_field"), Some(json!("m-1"))));
    // An id that is itself invalid is not echoed; nor is one of a frame with no id at all.
    let bad_id = r#"{"type":"message","id":"","data":{}}"#;
    assert_eq!(refused(&mut sim, bad_id), (json!("invalid_field"), None));
    assert_eq!(refused(&mut sim, r#"{"type":"nope","id":"m-2"}"#).1, Some(json!("m-2")));
    assert_eq!(refused(&mut sim, r#"{"type":"message","thread_id":5}"#).1, None);
    // A history request for a stream the connection does not have.
    let foreign = r#"{"type":"history","stream":"r:lobby","id":"h-1"}"#;
    assert_eq!(refused(&mut sim, foreign), (json!("unknown_stream"), Some(json!("h-1"))));

    // Over the message rate: the refused message's id comes back with `rate_limited`.
    let burst = sim.hub.config().tiers.get(switchboard::Tier::Free).message_burst;
    for n in 0..burst {
        let msg = format!(r#"{{"type":"message","id":"ok-{n}","data":{{}}}}"#);
        sim.hub.receive(sim.now, alice, msg.as_bytes()).unwrap();
    }
    sim.drain();
    let over = r#"{"type":"message","id":"m-3","data":{}}"#;
    assert_eq!(refused(&mut sim, over), (json!("rate_limited"), Some(json!("m-3"))));
    // A refused frame too large to read again carries no id.
    let max = sim.hub.config().max_frame_bytes;
    let big = format!(r#"{{"type":"message","id":"m-4","data":"{}"}}"#, "x".repeat(max));
    assert_eq!(refused(&mut sim, &big), (json!("frame_too_large"), None));
}
