//! Wire protocol and routing, through the public API only: client frames (subscribe, unsubscribe,
//! message, ping, and every way to get them wrong), server frames (event format, redaction, one
//! shared buffer per publish), event kinds, targets (thread, tenant with roles, rooms, everyone),
//! and the counters in `stats()`.
mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use switchboard::{
    Action, Audience, AuditKind, CloseReason, ClosedBy, Config, ConnId, DisconnectReason, Envelope,
    EventKind, Frame, Inbound, PeerError, Principal, PublishError, ReceiveError, RoomId,
    StreamName, StreamPos, Target, TenantId, UserId,
};

/// An audit event as a comparable tuple (`AuditEvent` is `#[non_exhaustive]`: tests read it,
/// they cannot build one).
type Audit = (AuditKind, Option<ConnId>, Option<TenantId>, Option<UserId>);

/// The audit events among `actions` (shadows `common::audit_events`).
fn audit_events(actions: &[Action]) -> Vec<Audit> {
    common::audit_events(actions).into_iter().map(|e| (e.kind, e.conn, e.tenant, e.user)).collect()
}

// ---------------------------------------------------------------------------------------------
// Local helpers

fn user(tenant: &str, user: &str) -> Target {
    Target::User { tenant: tenant.into(), user: user.into() }
}

fn thread(tenant: &str, user: &str, thread: &str) -> Target {
    Target::Thread { tenant: tenant.into(), user: user.into(), thread: thread.into() }
}

fn room(tenant: &str, room: &str) -> Target {
    Target::Room { tenant: tenant.into(), room: room.into() }
}

/// The raw frames delivered, as (connection, shared frame).
fn raw_deliveries(actions: &[Action]) -> Vec<(ConnId, Frame)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Deliver { conn, frame } => Some((*conn, frame.clone())),
            _ => None,
        })
        .collect()
}

/// The set of connections that got a `Deliver`.
fn recipients(actions: &[Action]) -> BTreeSet<ConnId> {
    deliveries(actions).into_iter().map(|(c, _)| c).collect()
}

fn set(ids: &[ConnId]) -> BTreeSet<ConnId> {
    ids.iter().copied().collect()
}

fn inbounds(actions: &[Action]) -> Vec<Inbound> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Inbound(i) => Some((**i).clone()),
            _ => None,
        })
        .collect()
}

/// Publishes, drains, and returns (delivered count, actions).
/// Publishes and returns what that publish did (earlier actions, such as `joined`
/// announcements, are drained first).
fn publish(sim: &mut Sim, env: Envelope) -> (usize, Vec<Action>) {
    sim.drain();
    let p = sim.hub.publish(sim.now, env).expect("publish accepted");
    (p.delivered, sim.drain())
}

fn receive_ok(sim: &mut Sim, conn: ConnId, frame: &str) -> Vec<Action> {
    sim.hub.receive(sim.now, conn, frame.as_bytes()).expect("frame accepted");
    sim.drain()
}

// ---------------------------------------------------------------------------------------------
// Thread filters

#[test]
fn subscribe_narrows_and_unsubscribe_widens() {
    let mut sim = Sim::new(quiet());
    let narrow = sim.connect("acme", "alice");
    let wide = sim.connect("acme", "alice");
    let actions = receive_ok(&mut sim, narrow, r#"{"type":"subscribe","thread_id":"t1"}"#);
    assert!(actions.is_empty(), "subscribe is silent: {actions:?}");
    let t1 = [switchboard::ThreadId::from("t1")];
    assert_eq!(sim.hub.connection(narrow).unwrap().threads(), Some(&t1[..]));
    assert_eq!(sim.hub.connection(wide).unwrap().threads(), None);

    // Another thread's event reaches only the unfiltered connection.
    let (n, actions) = publish(
        &mut sim,
        Envelope::new(user("acme", "alice"), EventKind::AgentStarted).thread("t2"),
    );
    assert_eq!((n, recipients(&actions)), (1, set(&[wide])));
    // The subscribed thread's event reaches both, through either target.
    let (n, actions) =
        publish(&mut sim, Envelope::new(thread("acme", "alice", "t1"), EventKind::ToolExecuting));
    assert_eq!((n, recipients(&actions)), (2, set(&[narrow, wide])));
    assert_eq!(deliveries(&actions)[0].1["thread_id"], "t1", "set from the target");
    let (n, actions) = publish(
        &mut sim,
        Envelope::new(user("acme", "alice"), EventKind::AgentStarted).thread("t1"),
    );
    assert_eq!((n, recipients(&actions)), (2, set(&[narrow, wide])));
    // Thread-less user events reach every connection.
    let (n, actions) =
        publish(&mut sim, Envelope::new(user("acme", "alice"), EventKind::AgentCompleted));
    assert_eq!((n, recipients(&actions)), (2, set(&[narrow, wide])));
    assert!(deliveries(&actions)[0].1.get("thread_id").is_none());
    // A connection target bypasses the filter: the application chose that connection.
    let (n, actions) = publish(
        &mut sim,
        Envelope::new(Target::Connection(narrow), EventKind::ToolCompleted).thread("t9"),
    );
    assert_eq!((n, recipients(&actions)), (1, set(&[narrow])));

    // Unsubscribing a thread stops its events while another is still subscribed; thread-less
    // ones still come.
    receive_ok(&mut sim, narrow, r#"{"type":"subscribe","thread_id":"t3"}"#);
    receive_ok(&mut sim, narrow, r#"{"type":"unsubscribe","thread_id":"t1"}"#);
    let (_, actions) =
        publish(&mut sim, Envelope::new(thread("acme", "alice", "t1"), EventKind::ToolExecuting));
    assert_eq!(recipients(&actions), set(&[wide]));
    let (_, actions) =
        publish(&mut sim, Envelope::new(user("acme", "alice"), EventKind::AgentCompleted));
    assert_eq!(recipients(&actions), set(&[narrow, wide]));

    // Unsubscribe without a thread widens back to everything.
    receive_ok(&mut sim, narrow, r#"{"type":"subscribe","thread_id":"t2"}"#);
    receive_ok(&mut sim, narrow, r#"{"type":"unsubscribe"}"#);
    assert_eq!(sim.hub.connection(narrow).unwrap().threads(), None);
    for t in ["t1", "t3"] {
        let (_, actions) =
            publish(&mut sim, Envelope::new(thread("acme", "alice", t), EventKind::AgentStarted));
        assert_eq!(recipients(&actions), set(&[narrow, wide]), "{t}");
    }
}

#[test]
fn thread_events_never_cross_users() {
    let mut sim = Sim::new(quiet());
    let alice = sim.connect("acme", "alice");
    let bob = sim.connect("acme", "bob");
    receive_ok(&mut sim, bob, r#"{"type":"subscribe","thread_id":"t1"}"#);
    let (n, actions) =
        publish(&mut sim, Envelope::new(thread("acme", "alice", "t1"), EventKind::AgentStarted));
    assert_eq!((n, recipients(&actions)), (1, set(&[alice])));
}

#[test]
fn thread_target_mismatch_is_refused() {
    let mut sim = Sim::new(quiet());
    let alice = sim.connect("acme", "alice");
    let env = Envelope::new(thread("acme", "alice", "t1"), EventKind::AgentStarted).thread("t2");
    assert_eq!(sim.hub.publish(sim.now, env), Err(PublishError::ThreadMismatch));
    assert!(sim.drain().is_empty());
    assert_eq!(sim.hub.stats().publishes, 0);
    assert_eq!(sim.hub.user("acme", "alice").unwrap().stream_position().seq, 0, "no seq spent");
    // The same thread on both is fine.
    let env = Envelope::new(thread("acme", "alice", "t1"), EventKind::AgentStarted).thread("t1");
    let (n, actions) = publish(&mut sim, env);
    assert_eq!(n, 1);
    assert_eq!(frames_for(&actions, alice)[0]["thread_id"], "t1");
    assert_eq!(frames_for(&actions, alice)[0]["seq"], 1);
}

// ---------------------------------------------------------------------------------------------
// Client frames

#[test]
fn message_becomes_inbound_stamped_with_the_authenticated_origin() {
    let mut sim = Sim::new(quiet());
    let alice = sim.connect("acme", "alice");
    let bob = sim.connect("acme", "bob");
    let payload = json!({"user_id": "bob", "tenant": "globex", "conn": 0, "text": "hi"});
    let frame = json!({"type": "message", "thread_id": "t1", "user_id": "bob", "data": payload});
    let actions = receive_ok(&mut sim, alice, &frame.to_string());
    let got = inbounds(&actions);
    assert_eq!(got.len(), 1, "{got:?}");
    let (from, got) = (&got[0].from, &got[0]);
    assert_eq!((&from.tenant, &from.user, from.conn), (&"acme".into(), &"alice".into(), alice));
    assert_eq!((&got.thread, &got.data), (&Some("t1".into()), &payload));
    assert!(deliveries(&actions).is_empty(), "nothing is echoed to anyone");
    assert!(!recipients(&actions).contains(&bob));

    let actions = receive_ok(&mut sim, alice, r#"{"type":"message"}"#);
    let i = &inbounds(&actions)[0];
    assert_eq!((i.thread.clone(), i.data.clone()), (None, Value::Null));
    assert_eq!(i.from.conn, alice);
    assert_eq!(sim.hub.stats().inbound_messages, 2);
    assert_eq!(sim.hub.stats().frames_received, 2);
}

#[test]
fn ping_is_answered_with_a_pong_frame_to_that_connection_only() {
    let mut sim = Sim::new(quiet());
    let a = sim.connect("acme", "alice");
    let b = sim.connect("acme", "alice");
    let before = sim.hub.stats().deliveries;
    let actions = receive_ok(&mut sim, a, r#"{"type":"ping","extra":[1,2]}"#);
    assert_eq!(deliveries(&actions), vec![(a, json!({"type": "pong"}))]);
    assert!(!recipients(&actions).contains(&b));
    assert_eq!(sim.hub.stats().deliveries, before + 1);
    assert_eq!(
        sim.hub.user("acme", "alice").unwrap().stream_position().seq,
        0,
        "not a stream event"
    );
}

#[test]
fn bad_frames_get_an_error_frame_and_a_typed_err() {
    let mut sim = Sim::new(Config { max_violations: 100, ..quiet() });
    let id = sim.connect("acme", "alice");
    let long_thread = "x".repeat(129);
    let long = format!(r#"{{"type":"message","thread_id":"{long_thread}"}}"#);
    let cases: Vec<(Vec<u8>, &str, Option<PeerError>)> = vec![
        (b"{not json".to_vec(), "malformed", None),
        (b"[]".to_vec(), "malformed", None),
        (b"".to_vec(), "malformed", None),
        (vec![0xff, 0xfe], "malformed", None),
        (br#"{"thread_id":"t1"}"#.to_vec(), "missing_type", Some(PeerError::MissingType)),
        (br#"{"type":"launch"}"#.to_vec(), "unknown_type", Some(PeerError::UnknownType)),
        (br#"{"type":"PING"}"#.to_vec(), "unknown_type", Some(PeerError::UnknownType)),
        (
            br#"{"type":"subscribe"}"#.to_vec(),
            "invalid_field",
            Some(PeerError::InvalidField { field: "thread_id" }),
        ),
        (
            br#"{"type":"subscribe","thread_id":""}"#.to_vec(),
            "invalid_field",
            Some(PeerError::InvalidField { field: "thread_id" }),
        ),
        (long.into_bytes(), "invalid_field", Some(PeerError::InvalidField { field: "thread_id" })),
    ];
    for (i, (frame, code, expected)) in cases.into_iter().enumerate() {
        let r = sim.hub.receive(sim.now, id, &frame);
        match expected {
            Some(e) => assert_eq!(r, Err(ReceiveError::Peer(e)), "case {i}"),
            None => {
                assert!(
                    matches!(r, Err(ReceiveError::Peer(PeerError::Malformed { .. }))),
                    "case {i}: {r:?}"
                )
            }
        }
        let err = match r {
            Err(ReceiveError::Peer(e)) => e,
            other => panic!("case {i}: {other:?}"),
        };
        assert_eq!(err.code(), code, "case {i}");
        let actions = sim.drain();
        let frames = frames_for(&actions, id);
        assert_eq!(frames.len(), 1, "case {i}");
        assert_eq!(frames[0]["type"], "error");
        assert_eq!(frames[0]["code"], code, "case {i}");
        assert_eq!(frames[0]["message"], err.to_string(), "case {i}");
        assert_eq!(
            audit_events(&actions),
            vec![(AuditKind::MalformedFrame, Some(id), Some("acme".into()), Some("alice".into()))],
            "case {i}"
        );
        assert!(inbounds(&actions).is_empty());
        assert_eq!(sim.hub.stats().protocol_errors, i as u64 + 1);
    }
    // The longest allowed thread id is fine.
    let ok = format!(r#"{{"type":"subscribe","thread_id":"{}"}}"#, "x".repeat(128));
    receive_ok(&mut sim, id, &ok);
    assert_eq!(sim.hub.stats().limit_rejections.total(), 0, "malformed frames are not limits");
}

#[test]
fn a_wrongly_typed_thread_id_is_an_invalid_field_not_a_malformed_frame() {
    // `PeerError::InvalidField`: "A field the frame type requires is missing or has the wrong JSON
    // type." `PeerError::Malformed`: "The frame is not a JSON object (or not valid UTF-8)."
    let mut sim = Sim::new(Config { max_violations: 100, ..quiet() });
    let id = sim.connect("acme", "alice");
    let frames = [
        r#"{"type":"subscribe","thread_id":5}"#,
        r#"{"type":"unsubscribe","thread_id":true}"#,
        r#"{"type":"message","thread_id":["t1"],"data":"hi"}"#,
    ];
    for frame in frames {
        let r = sim.hub.receive(sim.now, id, frame.as_bytes());
        assert_eq!(
            r,
            Err(ReceiveError::Peer(PeerError::InvalidField { field: "thread_id" })),
            "{frame}"
        );
        assert_eq!(frames_for(&sim.drain(), id)[0]["code"], "invalid_field", "{frame}");
    }
}

#[test]
fn a_non_string_type_is_a_missing_type_not_a_malformed_frame() {
    // `PeerError::MissingType`: "The frame has no string `type` field." A JSON object whose
    // `type` is a number has none; it is not "not a JSON object" (`Malformed`).
    let mut sim = Sim::new(Config { max_violations: 100, ..quiet() });
    let id = sim.connect("acme", "alice");
    for frame in [r#"{"type":7}"#, r#"{"type":null}"#, r#"{"type":{"name":"ping"}}"#] {
        let r = sim.hub.receive(sim.now, id, frame.as_bytes());
        assert_eq!(r, Err(ReceiveError::Peer(PeerError::MissingType)), "{frame}");
        assert_eq!(frames_for(&sim.drain(), id)[0]["code"], "missing_type", "{frame}");
    }
}

// ---------------------------------------------------------------------------------------------
// Server frames

#[test]
fn event_frames_follow_the_wire_format() {
    let mut sim = Sim::new(quiet());
    let id = sim.connect("acme", "alice");
    let env = Envelope::new(user("acme", "alice"), EventKind::AgentStarted)
        .thread("t1")
        .run("r9")
        .data(json!({"agent": "researcher"}));
    let p = sim.hub.publish(sim.now, env).unwrap();
    let epoch = sim.hub.user("acme", "alice").unwrap().stream_position().epoch;
    assert_eq!(p.position, Some((StreamName::User, StreamPos { epoch, seq: 1 })));
    let frames = frames_for(&sim.drain(), id);
    assert_eq!(
        frames,
        vec![json!({
            "type": "agent_started", "stream": "u", "epoch": epoch, "seq": 1,
            "thread_id": "t1", "run_id": "r9", "data": {"agent": "researcher"}
        })]
    );
    let kinds = [
        (EventKind::AgentThinking, "agent_thinking"),
        (EventKind::ToolExecuting, "tool_executing"),
        (EventKind::ToolCompleted, "tool_completed"),
        (EventKind::AgentCompleted, "agent_completed"),
    ];
    for (seq, (kind, name)) in (2..).zip(kinds) {
        let f = &frames_for(&sim.publish_to_user("acme", "alice", kind), id)[0];
        assert_eq!((f["type"].as_str(), f["seq"].as_u64()), (Some(name), Some(seq)));
        assert!(f.get("data").is_none(), "no data, no `data` key: {f}");
    }
}

#[test]
fn configured_keys_are_redacted_at_any_depth() {
    let mut sim = Sim::new(quiet());
    let id = sim.connect("acme", "alice");
    let data = json!({
        "password": "hunter2",
        "nested": {"api_key": "sk-1", "list": [{"token": "tk-2"}, {"Secret": {"deep": "s-3"}}]},
        "AUTHORIZATION": "Bearer b-4",
        "keep": {"user": "alice", "tokens_used": 12},
    });
    let env = Envelope::new(user("acme", "alice"), EventKind::ToolCompleted).data(data);
    sim.hub.publish(sim.now, env).unwrap();
    let actions = sim.drain();
    let raw = &raw_deliveries(&actions)[0].1;
    for secret in ["hunter2", "sk-1", "tk-2", "s-3", "b-4"] {
        assert!(!raw.as_str().contains(secret), "{secret} leaked: {raw}");
    }
    assert_eq!(
        frames_for(&actions, id)[0]["data"],
        json!({
            "password": "[redacted]",
            "nested": {"api_key": "[redacted]", "list": [{"token": "[redacted]"}, {"Secret": "[redacted]"}]},
            "AUTHORIZATION": "[redacted]",
            "keep": {"user": "alice", "tokens_used": 12},
        })
    );

    // Room and tenant frames are redacted too.
    sim.hub.join(sim.now, id, RoomId::from("lobby")).unwrap();
    let secret = json!({"a": [{"password": "p-5"}]});
    for target in
        [room("acme", "lobby"), Target::Tenant { tenant: "acme".into(), audience: Audience::All }]
    {
        let (_, actions) = publish(
            &mut sim,
            Envelope::new(target, EventKind::custom("note")).data(secret.clone()),
        );
        assert_eq!(frames_for(&actions, id)[0]["data"], json!({"a": [{"password": "[redacted]"}]}));
    }
}

#[test]
fn redaction_uses_exactly_the_configured_keys() {
    let mut sim = Sim::new(Config { redact_keys: vec!["ssn".into()], ..quiet() });
    let id = sim.connect("acme", "alice");
    let env = Envelope::new(user("acme", "alice"), EventKind::ToolCompleted)
        .data(json!({"SSN": "123", "password": "visible", "x": [{"ssn": 1}]}));
    sim.hub.publish(sim.now, env).unwrap();
    let f = &frames_for(&sim.drain(), id)[0];
    assert_eq!(
        f["data"],
        json!({"SSN": "[redacted]", "password": "visible", "x": [{"ssn": "[redacted]"}]})
    );

    let mut sim = Sim::new(Config { redact_keys: Vec::new(), ..quiet() });
    let id = sim.connect("acme", "alice");
    let env = Envelope::new(user("acme", "alice"), EventKind::ToolCompleted)
        .data(json!({"password": "p"}));
    sim.hub.publish(sim.now, env).unwrap();
    assert_eq!(frames_for(&sim.drain(), id)[0]["data"], json!({"password": "p"}));
}

#[test]
fn one_shared_frame_per_publish() {
    let mut sim = Sim::new(quiet());
    let a: Vec<ConnId> = (0..3).map(|_| sim.connect("acme", "alice")).collect();
    let bob = sim.connect("acme", "bob");

    let (n, actions) =
        publish(&mut sim, Envelope::new(user("acme", "alice"), EventKind::AgentStarted));
    assert_eq!(n, 3);
    let frames = raw_deliveries(&actions);
    assert_eq!(frames.iter().map(|(c, _)| *c).collect::<BTreeSet<_>>(), set(&a));
    assert!(frames.iter().all(|(_, f)| Frame::ptr_eq(f, &frames[0].1)), "one buffer for all");

    // Rooms and tenant broadcasts share too; separate publishes do not.
    for c in a.iter().chain([&bob]) {
        sim.hub.join(sim.now, *c, RoomId::from("lobby")).unwrap();
    }
    let (_, room_actions) =
        publish(&mut sim, Envelope::new(room("acme", "lobby"), EventKind::custom("note")));
    let (_, tenant_actions) = publish(
        &mut sim,
        Envelope::new(
            Target::Tenant { tenant: "acme".into(), audience: Audience::All },
            EventKind::custom("note"),
        ),
    );
    for actions in [&room_actions, &tenant_actions] {
        let frames = raw_deliveries(actions);
        assert_eq!(frames.len(), 4);
        assert!(frames.iter().all(|(_, f)| Frame::ptr_eq(f, &frames[0].1)));
    }
    assert!(!Frame::ptr_eq(
        &raw_deliveries(&room_actions)[0].1,
        &raw_deliveries(&tenant_actions)[0].1
    ));
    assert!(!Frame::ptr_eq(&raw_deliveries(&room_actions)[0].1, &frames[0].1));
}

// ---------------------------------------------------------------------------------------------
// Event kinds

#[test]
fn custom_kinds_go_out_under_their_own_name_and_reserved_names_are_refused() {
    let mut sim = Sim::new(quiet());
    let id = sim.connect("acme", "alice");
    let (n, actions) = publish(
        &mut sim,
        Envelope::new(user("acme", "alice"), EventKind::custom("invoice_ready"))
            .data(json!({"n": 1})),
    );
    assert_eq!(n, 1);
    let f = &frames_for(&actions, id)[0];
    assert_eq!(
        (f["type"].as_str(), f["stream"].as_str(), f["seq"].as_u64()),
        (Some("invoice_ready"), Some("u"), Some(1))
    );

    let mut refused: Vec<String> = EventKind::RESERVED.iter().map(|s| s.to_string()).collect();
    refused.push(String::new());
    for name in refused {
        let env = Envelope::new(user("acme", "alice"), EventKind::custom(name.clone()));
        assert_eq!(sim.hub.publish(sim.now, env), Err(PublishError::InvalidKind), "{name:?}");
        assert!(sim.drain().is_empty(), "{name:?}");
    }
    for name in ["connected", "error", "pong", "refresh_required", "resumed", "agent_started"] {
        assert!(EventKind::RESERVED.contains(&name), "{name}");
    }
    assert_eq!(sim.hub.stats().publishes, 1);
    assert_eq!(sim.hub.user("acme", "alice").unwrap().stream_position().seq, 1, "no seq spent");
}

// ---------------------------------------------------------------------------------------------
// Tenants, roles, rooms, everyone

#[test]
fn global_broadcast_is_refused_and_audited_by_default() {
    let mut sim = Sim::new(quiet());
    sim.connect("acme", "alice");
    sim.connect("globex", "eve");
    let env = Envelope::new(Target::Everyone, EventKind::custom("maintenance"));
    assert_eq!(sim.hub.publish(sim.now, env), Err(PublishError::GlobalBroadcastDisabled));
    let actions = sim.drain();
    assert!(deliveries(&actions).is_empty());
    assert_eq!(audit_events(&actions), vec![(AuditKind::GlobalBroadcastDenied, None, None, None)]);
    assert_eq!(sim.hub.stats().security_violations, 1);
    assert_eq!(sim.hub.stats().publishes, 0);
}

#[test]
fn global_broadcast_when_allowed_reaches_every_tenant_and_is_audited() {
    let mut sim = Sim::new(Config { allow_global_broadcast: true, ..quiet() });
    let alice = sim.connect("acme", "alice");
    let bob = sim.connect("acme", "bob");
    let eve = sim.connect("globex", "eve");
    // A tenant broadcast first, so the two tenant streams stand at different seqs.
    publish(
        &mut sim,
        Envelope::new(
            Target::Tenant { tenant: "acme".into(), audience: Audience::All },
            EventKind::custom("x"),
        ),
    );

    let p = sim
        .hub
        .publish(sim.now, Envelope::new(Target::Everyone, EventKind::custom("maintenance")))
        .unwrap();
    assert_eq!((p.delivered, p.position), (3, None));
    let actions = sim.drain();
    assert_eq!(audits(&actions), vec![AuditKind::GlobalBroadcast]);
    assert_eq!(recipients(&actions), set(&[alice, bob, eve]));
    let f_alice = &frames_for(&actions, alice)[0];
    let f_eve = &frames_for(&actions, eve)[0];
    assert_eq!((f_alice["stream"].as_str(), f_alice["seq"].as_u64()), (Some("t"), Some(2)));
    assert_eq!((f_eve["stream"].as_str(), f_eve["seq"].as_u64()), (Some("t"), Some(1)));
    assert_ne!(f_alice["epoch"], f_eve["epoch"], "each tenant has its own stream");
    let raw = raw_deliveries(&actions);
    let of = |c: ConnId| raw.iter().find(|(x, _)| *x == c).unwrap().1.clone();
    assert!(Frame::ptr_eq(&of(alice), &of(bob)), "shared within a tenant");
}

#[test]
fn tenant_broadcast_with_role_audience() {
    let mut sim = Sim::new(quiet());
    let admin = sim.connect_as(Principal::new("acme", "alice").roles(["admin", "viewer"]));
    let viewer = sim.connect_as(Principal::new("acme", "bob").roles(["viewer"]));
    let nobody = sim.connect("acme", "carol");
    let other_admin = sim.connect_as(Principal::new("globex", "dave").roles(["admin"]));

    let to = |audience| {
        Envelope::new(
            Target::Tenant { tenant: "acme".into(), audience },
            EventKind::custom("notice"),
        )
    };
    let (n, actions) = publish(&mut sim, to(Audience::Role("admin".into())));
    assert_eq!((n, recipients(&actions)), (1, set(&[admin])));
    assert_eq!(frames_for(&actions, admin)[0]["stream"], "t");
    let (n, actions) = publish(&mut sim, to(Audience::Role("viewer".into())));
    assert_eq!((n, recipients(&actions)), (2, set(&[admin, viewer])));
    let (n, actions) = publish(&mut sim, to(Audience::All));
    assert_eq!((n, recipients(&actions)), (3, set(&[admin, viewer, nobody])));
    assert!(!recipients(&actions).contains(&other_admin));
    assert_eq!(frames_for(&actions, nobody)[0]["seq"], 3, "one tenant stream for every audience");
    let p = sim.hub.publish(sim.now, to(Audience::Role("owner".into()))).unwrap();
    assert!(p.undeliverable());
    // A tenant the hub does not hold.
    let env = Envelope::new(
        Target::Tenant { tenant: "initech".into(), audience: Audience::All },
        EventKind::custom("n"),
    );
    let p = sim.hub.publish(sim.now, env).unwrap();
    assert_eq!((p.delivered, p.position), (0, None));
    assert!(sim.drain().is_empty());
}

#[test]
fn rooms_are_tenant_scoped() {
    let mut sim = Sim::new(quiet());
    let alice = sim.connect("acme", "alice");
    let eve = sim.connect("globex", "eve");
    assert_eq!(sim.hub.join(sim.now, alice, RoomId::from("lobby")), Ok(true));
    assert_eq!(sim.hub.join(sim.now, eve, RoomId::from("lobby")), Ok(true));
    assert_eq!(sim.hub.stats().rooms, 2, "same name, two tenants, two rooms");

    let (n, actions) =
        publish(&mut sim, Envelope::new(room("acme", "lobby"), EventKind::custom("note")));
    assert_eq!((n, recipients(&actions)), (1, set(&[alice])));
    let f = &frames_for(&actions, alice)[0];
    assert_eq!((f["stream"].as_str(), f["seq"].as_u64()), (Some("r:lobby"), Some(1)));
    let (n, actions) =
        publish(&mut sim, Envelope::new(room("globex", "lobby"), EventKind::custom("note")));
    assert_eq!((n, recipients(&actions)), (1, set(&[eve])));
    assert_eq!(frames_for(&actions, eve)[0]["seq"], 1, "its own stream");
    let p = sim
        .hub
        .publish(sim.now, Envelope::new(room("initech", "lobby"), EventKind::custom("n")))
        .unwrap();
    assert_eq!((p.delivered, p.position), (0, None));
    // User events never go to rooms' other members.
    let (_, actions) =
        publish(&mut sim, Envelope::new(user("acme", "alice"), EventKind::AgentStarted));
    assert_eq!(recipients(&actions), set(&[alice]));
}

#[test]
fn an_empty_room_is_dropped_and_comes_back_as_a_new_stream() {
    let mut sim = Sim::new(quiet());
    let alice = sim.connect("acme", "alice");
    let bob = sim.connect("acme", "bob");
    sim.hub.join(sim.now, alice, RoomId::from("lobby")).unwrap();
    sim.hub.join(sim.now, bob, RoomId::from("lobby")).unwrap();
    assert_eq!(sim.hub.stats().rooms, 1);
    let p = sim
        .hub
        .publish(sim.now, Envelope::new(room("acme", "lobby"), EventKind::custom("n")))
        .unwrap();
    let Some((StreamName::Room(r), first)) = p.position else { panic!("{p:?}") };
    assert_eq!(r.as_str(), "lobby");
    sim.drain();

    assert_eq!(sim.hub.leave(sim.now, alice, "lobby"), Ok(true));
    assert_eq!(sim.hub.leave(sim.now, alice, "lobby"), Ok(false), "not a member any more");
    assert_eq!(sim.hub.stats().rooms, 1);
    let (n, actions) =
        publish(&mut sim, Envelope::new(room("acme", "lobby"), EventKind::custom("n")));
    assert_eq!((n, recipients(&actions)), (1, set(&[bob])));

    // The last member goes away with its connection: the room is dropped.
    sim.hub.disconnect(sim.now, bob, DisconnectReason::Clean).unwrap();
    sim.drain();
    assert_eq!(sim.hub.stats().rooms, 0);
    let p = sim
        .hub
        .publish(sim.now, Envelope::new(room("acme", "lobby"), EventKind::custom("n")))
        .unwrap();
    assert_eq!((p.delivered, p.position), (0, None));
    assert!(sim.drain().is_empty());

    sim.hub.join(sim.now, alice, RoomId::from("lobby")).unwrap();
    assert_eq!(sim.hub.stats().rooms, 1);
    let p = sim
        .hub
        .publish(sim.now, Envelope::new(room("acme", "lobby"), EventKind::custom("n")))
        .unwrap();
    let Some((_, again)) = p.position else { panic!() };
    assert_eq!(again.seq, 1);
    assert_ne!(again.epoch, first.epoch, "a new incarnation of the room");
}

#[test]
fn room_memberships_stay_consistent_through_interleaved_joins_leaves_and_closes() {
    let mut sim = Sim::new(quiet());
    let conns: Vec<ConnId> = ["a", "b", "c", "d"].iter().map(|u| sim.connect("acme", u)).collect();
    let rooms = ["r0", "r1", "r2", "r3"];
    // Model: which connections are in which room.
    let mut model: Vec<BTreeSet<ConnId>> = vec![BTreeSet::new(); rooms.len()];
    let mut step = |sim: &mut Sim, op: (&str, usize, usize)| {
        let (what, c, r) = op;
        match what {
            "join" => {
                let joined = sim.hub.join(sim.now, conns[c], RoomId::from(rooms[r])).unwrap();
                assert_eq!(joined, model[r].insert(conns[c]), "{op:?}");
            }
            "leave" => {
                let left = sim.hub.leave(sim.now, conns[c], rooms[r]).unwrap();
                assert_eq!(left, model[r].remove(&conns[c]), "{op:?}");
            }
            _ => unreachable!(),
        }
        for (i, name) in rooms.iter().enumerate() {
            let (n, actions) =
                publish(sim, Envelope::new(room("acme", name), EventKind::custom("n")));
            assert_eq!(recipients(&actions), model[i], "after {op:?}, room {name}");
            assert_eq!(n, model[i].len());
        }
        let live = model.iter().filter(|m| !m.is_empty()).count() as u64;
        assert_eq!(sim.hub.stats().rooms, live, "after {op:?}");
    };
    let ops = [
        ("join", 0, 0),
        ("join", 0, 1),
        ("join", 0, 2),
        ("join", 1, 1),
        ("join", 2, 1),
        ("join", 1, 0),
        ("join", 3, 2),
        ("join", 3, 1),
        ("join", 2, 3),
        ("leave", 0, 0),
        ("leave", 1, 1),
        ("join", 0, 0),
        ("join", 0, 3),
        ("leave", 0, 1),
        ("leave", 3, 2),
        ("join", 1, 2),
        ("leave", 2, 1),
        ("leave", 2, 1),
        ("join", 2, 0),
        ("leave", 0, 3),
    ];
    for op in ops {
        step(&mut sim, op);
    }
    // Closing a connection takes it out of every room.
    sim.hub.close(sim.now, conns[0], CloseReason::Kicked).unwrap();
    sim.drain();
    for m in model.iter_mut() {
        m.remove(&conns[0]);
    }
    for (i, name) in rooms.iter().enumerate() {
        let (_, actions) =
            publish(&mut sim, Envelope::new(room("acme", name), EventKind::custom("n")));
        assert_eq!(recipients(&actions), model[i], "room {name} after close");
    }
    let live = model.iter().filter(|m| !m.is_empty()).count() as u64;
    assert_eq!(sim.hub.stats().rooms, live);
}

// ---------------------------------------------------------------------------------------------
// Stats

#[test]
fn stats_count_deliveries_pings_pongs_closes_and_lifetimes() {
    let mut sim = Sim::default();
    let t0 = sim.now;
    let a = sim.connect("acme", "alice");
    let b = sim.connect("acme", "bob");
    let c = sim.connect("globex", "eve");
    let s = sim.hub.stats();
    assert_eq!((s.deliveries, s.connections_opened, s.connections_active), (3, 3, 3));
    assert_eq!((s.users_created, s.users_active, s.tenants), (3, 3, 2));

    let actions = sim.publish_to_user("acme", "alice", EventKind::AgentStarted);
    let bytes: u64 = raw_deliveries(&actions).iter().map(|(_, f)| f.len() as u64).sum();
    let s = sim.hub.stats();
    assert_eq!(s.deliveries, 4);
    assert!(s.bytes_delivered >= bytes && bytes > 0);
    assert_eq!((s.publishes, s.undeliverable), (1, 0));
    sim.hub.written(sim.now, a, 10).unwrap();
    assert_eq!(sim.hub.stats().bytes_written, 10);

    // t0+25: everyone is pinged.
    assert_eq!(pings(&sim.advance(secs(25))).len(), 3);
    assert_eq!(sim.hub.stats().pings_sent, 3);
    sim.now += secs(5); // t0+30
    sim.hub.pong(sim.now, a).unwrap();
    sim.hub.pong(sim.now, c).unwrap();
    assert_eq!(sim.hub.stats().pongs_received, 2);
    sim.hub.disconnect(sim.now, a, DisconnectReason::Clean).unwrap();
    sim.hub.disconnect(sim.now, c, DisconnectReason::Abnormal).unwrap();
    sim.drain();
    // t0+35: bob never answered.
    assert_eq!(closes(&sim.advance(secs(5))), vec![(b, CloseReason::HeartbeatTimeout)]);
    assert_eq!(sim.now, t0 + secs(35));

    let s = sim.hub.stats();
    assert_eq!((s.connections_closed, s.connections_active), (3, 0));
    assert_eq!(s.closed_by.client_clean, 1);
    assert_eq!(s.closed_by.client_abnormal, 1);
    assert_eq!(s.closed_by.heartbeat_timeout, 1);
    assert_eq!(s.closed_by.get(ClosedBy::Transport(DisconnectReason::Clean)), 1);
    assert_eq!(s.closed_by.get(ClosedBy::Hub(CloseReason::Kicked)), 0);
    assert_eq!(s.total_connection_lifetime, secs(95));
    assert_eq!(s.average_connection_lifetime(), secs(95) / 3);
    assert_eq!((s.users_active, s.users_detached), (0, 3));
}

#[test]
fn stats_average_lifetime_is_zero_before_any_close() {
    let mut sim = Sim::new(quiet());
    assert_eq!(sim.hub.stats().average_connection_lifetime(), Duration::ZERO);
    let a = sim.connect("acme", "alice");
    sim.now += secs(10);
    assert_eq!(sim.hub.stats().average_connection_lifetime(), Duration::ZERO);
    sim.hub.disconnect(sim.now, a, DisconnectReason::Clean).unwrap();
    assert_eq!(sim.hub.stats().average_connection_lifetime(), secs(10));
}

#[test]
fn stats_snapshot_metric_when_configured() {
    let mut sim = Sim::new(Config { snapshot_interval: Some(secs(60)), ..quiet() });
    sim.connect("acme", "alice");
    assert!(sim.advance(secs(59)).is_empty());
    let actions = sim.advance(secs(1));
    let snaps: Vec<_> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Metric(m) => match &**m {
                switchboard::MetricEvent::Snapshot(s) => Some(**s),
                _ => None,
            },
            _ => None,
        })
        .collect();
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0].connections_active, 1);
    assert_eq!(snaps[0].deliveries, 1);
}
