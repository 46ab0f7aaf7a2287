//! Presence through the public API, on a virtual clock: snapshots on joining a scope, batched
//! diffs, the grace that hides reconnects, the size limit, requests, the view, and a property
//! test that every connection's picture (snapshot + diffs, applied in order) is the truth after
//! each batch, that nobody flickers within the grace, and that every join ends in a leave.
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;
use proptest::prelude::*;
use serde_json::{Value, json};
use switchboard::{
    Action, Config, ConnId, DisconnectReason, LimitKind, PresenceConfig, PresenceMeta,
    PresenceScope, Principal, TenantId,
};

const GRACE: Duration = Duration::from_secs(5);
const FLUSH: Duration = Duration::from_millis(250);

fn config(max_members: u32) -> Config {
    let mut p = PresenceConfig::default();
    p.grace = GRACE;
    p.flush_interval = FLUSH;
    p.max_members = max_members;
    Config { presence: Some(p), ..quiet() }
}

/// Presence frames among `actions`, per connection, in order.
fn presence_frames(actions: &[Action]) -> Vec<(ConnId, Value)> {
    deliveries(actions)
        .into_iter()
        .filter(|(_, f)| f["type"] == "presence" || f["type"] == "presence_diff")
        .collect()
}

fn members(frame: &Value) -> Vec<String> {
    frame["members"]
        .as_array()
        .expect("a member list")
        .iter()
        .map(|m| m["user"].as_str().unwrap().to_owned())
        .collect()
}

fn connect(sim: &mut Sim, user: &str) -> (ConnId, Vec<Action>) {
    let id = sim.hub.connect(sim.now, Principal::new("acme", user)).expect("admitted");
    (id, sim.drain())
}

#[test]
fn a_new_connection_gets_a_snapshot_and_the_others_a_batched_join() {
    let mut sim = Sim::new(config(100));
    let (alice, actions) = connect(&mut sim, "alice");
    let frames = presence_frames(&actions);
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].0, alice);
    assert_eq!(frames[0].1["scope"], "t");
    assert_eq!(frames[0].1["count"], 1);
    // What has been announced: nothing yet (alice's own join comes with the next batch).
    assert_eq!(members(&frames[0].1), Vec::<String>::new());
    sim.advance(FLUSH);

    let (bob, actions) = connect(&mut sim, "bob");
    let frames = presence_frames(&actions);
    assert_eq!(frames.len(), 1, "only bob's snapshot now; alice hears at the next batch");
    assert_eq!((frames[0].0, members(&frames[0].1)), (bob, vec!["alice".into()]));
    let (_, _) = connect(&mut sim, "carol");

    let batch = presence_frames(&sim.advance(FLUSH));
    let to_alice: Vec<&Value> = batch.iter().filter(|(c, _)| *c == alice).map(|(_, f)| f).collect();
    assert_eq!(to_alice.len(), 1, "one diff per batch, however many joined");
    assert_eq!(to_alice[0]["type"], "presence_diff");
    let joins: Vec<&str> = to_alice[0]["joins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["user"].as_str().unwrap())
        .collect();
    assert_eq!(joins, ["bob", "carol"]);
    assert_eq!(to_alice[0]["leaves"], json!([]));
    assert!(presence_frames(&sim.advance(FLUSH * 4)).is_empty(), "nothing changed, nothing sent");
}

#[test]
fn a_reconnect_within_the_grace_is_never_seen_and_a_real_leave_comes_after_it() {
    let mut sim = Sim::new(config(100));
    let (alice, _) = connect(&mut sim, "alice");
    let (bob, _) = connect(&mut sim, "bob");
    sim.advance(FLUSH);
    // Bob drops and is back 3 s later (a deploy): alice sees nothing.
    sim.hub.disconnect(sim.now, bob, DisconnectReason::Abnormal).unwrap();
    let mut seen = presence_frames(&sim.advance(secs(3)));
    let (bob2, actions) = connect(&mut sim, "bob");
    seen.extend(presence_frames(&actions).into_iter().filter(|(c, _)| *c != bob2));
    seen.extend(presence_frames(&sim.advance(secs(10))));
    assert!(seen.is_empty(), "no flicker: {seen:?}");

    // Now bob leaves for good: alice hears it once the grace and the next batch are over.
    sim.hub.disconnect(sim.now, bob2, DisconnectReason::Clean).unwrap();
    assert!(presence_frames(&sim.advance(GRACE - ms(10))).is_empty(), "still within the grace");
    let mut after = presence_frames(&sim.advance(ms(10)));
    after.extend(presence_frames(&sim.advance(FLUSH)));
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(after[0].0, alice);
    assert_eq!(after[0].1["leaves"], json!(["bob"]));
    let view = sim.hub.presence(&TenantId::from("acme"), &PresenceScope::Tenant).unwrap();
    assert_eq!(view.users.iter().map(|u| u.user.as_str()).collect::<Vec<_>>(), ["alice"]);
}

#[test]
fn three_tabs_are_one_user_and_metadata_is_shown() {
    let mut sim = Sim::new(config(100));
    let meta = PresenceMeta::new(&json!({"name": "Alice A."})).unwrap();
    let alice = Principal::new("acme", "alice").meta(meta);
    let mut tabs = Vec::new();
    for _ in 0..3 {
        tabs.push(sim.hub.connect(sim.now, alice.clone()).unwrap());
    }
    sim.drain();
    sim.advance(FLUSH);
    sim.hub.receive(sim.now, tabs[2], br#"{"type":"presence","scope":"t"}"#).unwrap();
    let last = frames_for(&sim.drain(), tabs[2]).remove(0);
    assert_eq!(last["count"], 1);
    assert_eq!(last["members"][0]["conns"], 3);
    assert_eq!(last["members"][0]["meta"], json!({"name": "Alice A."}));
    let view = sim.hub.presence(&TenantId::from("acme"), &PresenceScope::Tenant).unwrap();
    assert_eq!((view.count, view.users[0].conns), (1, 3));
    // Closing two tabs changes nothing anyone sees.
    for tab in &tabs[..2] {
        sim.hub.disconnect(sim.now, *tab, DisconnectReason::Clean).unwrap();
    }
    assert!(presence_frames(&sim.advance(secs(30))).is_empty());
    assert!(PresenceMeta::new(&json!("text")).is_err());
    assert!(PresenceMeta::new(&json!({"x": "y".repeat(2000)})).is_err());
}

#[test]
fn rooms_have_their_own_presence_and_only_members_may_ask_for_it() {
    let mut sim = Sim::new(config(100));
    let (alice, _) = connect(&mut sim, "alice");
    let (bob, _) = connect(&mut sim, "bob");
    sim.advance(FLUSH);
    sim.hub.join(sim.now, alice, "lobby").unwrap();
    let frames = presence_frames(&sim.drain());
    assert_eq!(frames.len(), 1);
    assert_eq!(
        (frames[0].1["scope"].as_str(), frames[0].1["count"].as_u64()),
        (Some("r:lobby"), Some(1))
    );
    let frames = presence_frames(&sim.advance(FLUSH));
    assert_eq!((frames.len(), &frames[0].1["joins"][0]["user"]), (1, &json!("alice")));

    sim.hub.receive(sim.now, bob, br#"{"type":"presence","scope":"r:lobby"}"#).unwrap_err();
    let refused = frames_for(&sim.drain(), bob);
    assert_eq!(refused[0]["code"], "no_presence", "bob is not in the lobby");
    sim.hub.receive(sim.now, alice, br#"{"type":"presence","scope":"t"}"#).unwrap();
    let snap = frames_for(&sim.drain(), alice);
    assert_eq!(members(&snap[0]), ["alice", "bob"]);

    // Leaving the room is a leave there (after the grace), not in the tenant.
    sim.hub.leave(sim.now, alice, "lobby").unwrap();
    sim.hub.join(sim.now, bob, "lobby").unwrap();
    sim.drain();
    let later = presence_frames(&sim.advance(GRACE + FLUSH));
    let to_bob: Vec<&Value> = later.iter().filter(|(c, _)| *c == bob).map(|(_, f)| f).collect();
    assert_eq!(to_bob.len(), 1, "{later:?}");
    assert_eq!(
        (to_bob[0]["scope"].as_str(), &to_bob[0]["leaves"]),
        (Some("r:lobby"), &json!(["alice"]))
    );
}

#[test]
fn a_scope_over_its_limit_stops_diffs_and_resumes_with_a_snapshot() {
    let mut sim = Sim::new(config(3));
    let mut conns = BTreeMap::new();
    for user in ["u1", "u2", "u3"] {
        conns.insert(user, connect(&mut sim, user).0);
    }
    sim.advance(FLUSH);
    let (u4, actions) = connect(&mut sim, "u4");
    let frames = presence_frames(&actions);
    assert_eq!(frames.len(), 4, "everyone is told: {frames:?}");
    for (_, f) in &frames {
        assert_eq!((f["count"].as_u64(), f["members"].is_null()), (Some(4), true));
    }
    assert_eq!(sim.hub.stats().limit_rejections.get(LimitKind::PresenceScopeSize), 1);
    conns.insert("u4", u4);
    let (u5, _) = connect(&mut sim, "u5");
    assert!(presence_frames(&sim.advance(FLUSH)).is_empty(), "no diffs while too large");
    sim.hub.receive(sim.now, u5, br#"{"type":"presence","scope":"t"}"#).unwrap();
    assert_eq!(frames_for(&sim.drain(), u5)[0]["count"], 5, "the count is still there");

    // Back under nine tenths of the limit: everyone gets the full picture again (what is
    // present at that instant counts as announced).
    for user in ["u4", "u3", "u2"] {
        sim.hub.disconnect(sim.now, conns[user], DisconnectReason::Clean).unwrap();
    }
    let frames = presence_frames(&sim.advance(GRACE + FLUSH));
    let snaps: Vec<&Value> =
        frames.iter().map(|(_, f)| f).filter(|f| f["type"] == "presence").collect();
    assert_eq!(snaps.len(), 2, "u1 and u5: {frames:?}");
    assert!(snaps.iter().all(|f| members(f) == ["u1", "u5"]));
}

#[test]
fn presence_is_off_unless_configured() {
    let mut sim = Sim::new(quiet());
    let (alice, actions) = connect(&mut sim, "alice");
    assert!(presence_frames(&actions).is_empty());
    assert!(sim.hub.presence(&TenantId::from("acme"), &PresenceScope::Tenant).is_none());
    sim.hub.receive(sim.now, alice, br#"{"type":"presence","scope":"t"}"#).unwrap_err();
    assert_eq!(frames_for(&sim.drain(), alice)[0]["code"], "no_presence");
}

// ---------------------------------------------------------------------------------------------
// Against a model

#[derive(Clone, Debug)]
enum Op {
    Connect(usize),
    Close(usize),
    Join(usize),
    Leave(usize),
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..4usize).prop_map(Op::Connect),
        3 => (0..16usize).prop_map(Op::Close),
        2 => (0..16usize).prop_map(Op::Join),
        1 => (0..16usize).prop_map(Op::Leave),
        3 => (0..7_000u64).prop_map(Op::Advance),
    ]
}

/// What one connection believes, per scope: the users present.
type Picture = BTreeMap<String, BTreeSet<String>>;

fn apply(picture: &mut Picture, frame: &Value) {
    let scope = frame["scope"].as_str().unwrap().to_owned();
    let set = picture.entry(scope).or_default();
    if frame["type"] == "presence" {
        if let Some(members) = frame["members"].as_array() {
            *set = members.iter().map(|m| m["user"].as_str().unwrap().to_owned()).collect();
        }
    } else {
        for j in frame["joins"].as_array().unwrap() {
            set.insert(j["user"].as_str().unwrap().to_owned());
        }
        for l in frame["leaves"].as_array().unwrap() {
            set.remove(l.as_str().unwrap());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn every_picture_is_the_truth_after_each_batch(ops in prop::collection::vec(op(), 1..80)) {
        let mut sim = Sim::new(config(100));
        let users = ["alice", "bob", "carol", "dave"];
        // Open connections: (id, user index, in the lobby).
        let mut open: Vec<(ConnId, usize, bool)> = Vec::new();
        let mut pictures: BTreeMap<ConnId, Picture> = BTreeMap::new();
        // When each user's last connection in the tenant closed (None while it has one).
        let mut gone_since: BTreeMap<usize, Option<std::time::Instant>> = BTreeMap::new();
        let feed = |actions: Vec<Action>, pictures: &mut BTreeMap<ConnId, Picture>,
                        sim_now: std::time::Instant,
                        gone_since: &BTreeMap<usize, Option<std::time::Instant>>| {
            for (conn, frame) in presence_frames(&actions) {
                if frame["type"] == "presence_diff" && frame["scope"] == "t" {
                    for l in frame["leaves"].as_array().unwrap() {
                        let u = users.iter().position(|x| *x == l.as_str().unwrap()).unwrap();
                        // No flicker: a leave only after a whole grace without a connection.
                        let since = gone_since.get(&u).copied().flatten();
                        assert!(since.is_some_and(|t| sim_now.duration_since(t) >= GRACE),
                            "{} left within its grace", users[u]);
                    }
                }
                if let Some(p) = pictures.get_mut(&conn) {
                    apply(p, &frame);
                }
            }
        };
        for op in ops {
            let actions = match op {
                Op::Connect(u) => {
                    // The tier's three connections per user: a fourth is refused, nothing changes.
                    let Ok(id) = sim.hub.connect(sim.now, Principal::new("acme", users[u])) else {
                        continue;
                    };
                    pictures.insert(id, Picture::new());
                    open.push((id, u, false));
                    gone_since.insert(u, None);
                    sim.drain()
                }
                Op::Close(i) if !open.is_empty() => {
                    let (id, u, _) = open.remove(i % open.len());
                    sim.hub.disconnect(sim.now, id, DisconnectReason::Clean).unwrap();
                    pictures.remove(&id);
                    if !open.iter().any(|(_, v, _)| *v == u) {
                        gone_since.insert(u, Some(sim.now));
                    }
                    sim.drain()
                }
                Op::Join(i) if !open.is_empty() => {
                    let n = open.len();
                    let c = &mut open[i % n];
                    c.2 = true;
                    sim.hub.join(sim.now, c.0, "lobby").unwrap();
                    sim.drain()
                }
                Op::Leave(i) if !open.is_empty() => {
                    let n = open.len();
                    let c = &mut open[i % n];
                    c.2 = false;
                    sim.hub.leave(sim.now, c.0, "lobby").unwrap();
                    sim.drain()
                }
                Op::Advance(ms_) => sim.advance(ms(ms_)),
                _ => continue,
            };
            let now = sim.now;
            feed(actions, &mut pictures, now, &gone_since);
            if let Err(e) = sim.hub.check_invariants() {
                prop_assert!(false, "{}", e);
            }
            // Once the batches in flight have gone out (a grace may run out meanwhile and start
            // another), every picture is the truth.
            let acme = TenantId::from("acme");
            let mut agree = false;
            for _ in 0..30 {
                let actions = sim.advance(FLUSH);
                let now = sim.now;
                feed(actions, &mut pictures, now, &gone_since);
                let truth = |scope: &PresenceScope| -> BTreeSet<String> {
                    let view = sim.hub.presence(&acme, scope).unwrap();
                    view.users.iter().map(|u| u.user.to_string()).collect()
                };
                let tenant = truth(&PresenceScope::Tenant);
                let lobby = truth(&PresenceScope::Room("lobby".into()));
                agree = open.iter().all(|(id, _, in_lobby)| {
                    let p = &pictures[id];
                    p.get("t").cloned().unwrap_or_default() == tenant
                        && (!*in_lobby || p.get("r:lobby").cloned().unwrap_or_default() == lobby)
                });
                if let Err(e) = sim.hub.check_invariants() {
                    prop_assert!(false, "{}", e);
                }
                if agree {
                    break;
                }
            }
            prop_assert!(agree, "pictures {:?} never matched the truth", pictures);
        }
        // Everyone closes: after the grace and a batch, every join has its leave.
        for (id, u, _) in std::mem::take(&mut open) {
            sim.hub.disconnect(sim.now, id, DisconnectReason::Clean).unwrap();
            gone_since.insert(u, Some(sim.now));
        }
        // A last observer sees the leaves as they come.
        let observer = sim.hub.connect(sim.now, Principal::new("acme", "observer")).unwrap();
        pictures.insert(observer, Picture::new());
        let actions = sim.drain();
        let now = sim.now;
        feed(actions, &mut pictures, now, &gone_since);
        let actions = sim.advance(GRACE + FLUSH);
        let now = sim.now;
        feed(actions, &mut pictures, now, &gone_since);
        let only = BTreeSet::from(["observer".to_owned()]);
        let p = &pictures[&observer];
        prop_assert_eq!(p.get("t").cloned().unwrap_or_default(), only.clone());
        let view = sim.hub.presence(&TenantId::from("acme"), &PresenceScope::Tenant).unwrap();
        let left: BTreeSet<String> = view.users.iter().map(|u| u.user.to_string()).collect();
        prop_assert_eq!(left, only, "every join ended in a leave");
        let lobby = sim.hub.presence(&TenantId::from("acme"), &PresenceScope::Room("lobby".into()));
        prop_assert_eq!(lobby.unwrap().count, 0);
    }
}
