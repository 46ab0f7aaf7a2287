//! A client's `refresh`: the hub hands the token to the application (never checking it itself),
//! and the application's verdict extends the session with a `refreshed` frame or refuses it with
//! an error frame and an audit event.
mod common;

use common::*;
use serde_json::json;
use switchboard::{Action, AuditKind, PeerError, Principal, ReceiveError, RefreshRequest};

fn requests(actions: &[Action]) -> Vec<RefreshRequest> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::RefreshRequested(r) => Some((**r).clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn an_accepted_refresh_extends_the_session_and_says_so() {
    let mut sim = Sim::new(quiet());
    let expires = sim.now + secs(600);
    let alice = sim.connect_as(Principal::new("acme", "alice").expires_at(expires));
    sim.hub.receive(sim.now, alice, br#"{"type":"refresh","token":"new.jwt.here"}"#).unwrap();
    let asked = requests(&sim.drain());
    assert_eq!(asked.len(), 1);
    let r = &asked[0];
    assert_eq!((r.conn, r.tenant.as_str(), r.user.as_str()), (alice, "acme", "alice"));
    assert_eq!((r.expires_at, r.token.as_str()), (Some(expires), "new.jwt.here"));
    assert!(!format!("{r:?}").contains("new.jwt.here"), "the token never prints");

    let later = sim.now + secs(3600);
    sim.hub.answer_refresh(sim.now, alice, Ok(Some(later))).unwrap();
    let frame = frames_for(&sim.drain(), alice).remove(0);
    assert_eq!(frame, json!({"type": "refreshed", "session_expires_in_ms": 3_600_000}));
    // The old expiry passes: still open.
    let actions = sim.advance(secs(700));
    assert!(closes(&actions).is_empty(), "{actions:?}");
    assert_eq!(sim.hub.stats().sessions_refreshed, 1);
}

#[test]
fn a_refused_refresh_is_answered_audited_and_changes_nothing() {
    let mut sim = Sim::new(quiet());
    let alice = sim.connect_as(Principal::new("acme", "alice").expires_at(sim.now + secs(600)));
    sim.hub.receive(sim.now, alice, br#"{"type":"refresh","token":"bob's"}"#).unwrap();
    sim.drain();
    sim.hub.answer_refresh(sim.now, alice, Err("the token names another user")).unwrap();
    let actions = sim.drain();
    let frame = frames_for(&actions, alice).remove(0);
    assert_eq!(frame["code"], "refresh_refused");
    assert!(frame["message"].as_str().unwrap().contains("another user"), "{frame}");
    assert!(audits(&actions).contains(&AuditKind::RefreshRefused));
    assert_eq!(sim.hub.stats().refreshes_refused, 1);
    // A verdict whose expiry is already over is refused too.
    let past = sim.hub.answer_refresh(sim.now, alice, Ok(Some(sim.now)));
    assert!(past.is_err());
    assert_eq!(frames_for(&sim.drain(), alice)[0]["code"], "refresh_refused");
    // The session still ends when it did.
    let actions = sim.advance(secs(601));
    assert_eq!(closes(&actions).len(), 1, "{actions:?}");
}

#[test]
fn a_refresh_needs_a_token() {
    let mut sim = Sim::new(quiet());
    let alice = sim.connect("acme", "alice");
    for bad in [
        &br#"{"type":"refresh"}"#[..],
        br#"{"type":"refresh","token":""}"#,
        br#"{"type":"refresh","token":7}"#,
    ] {
        let err = sim.hub.receive(sim.now, alice, bad).unwrap_err();
        assert_eq!(err, ReceiveError::Peer(PeerError::InvalidField { field: "token" }));
        assert!(requests(&sim.drain()).is_empty());
    }
}
