//! Cluster mode as it runs: real `switchboard` processes over a real `redis-server`, real
//! WebSocket clients over loopback, and what production does to them — a node SIGKILLed
//! mid-stream, Redis restarted empty, Redis gone for ten seconds, a dead node's leases, a reader
//! that stops reading (the six scenarios of issue 12), a Redis that stops answering, history
//! read from the log and a kick across nodes (issue 14), and a dead node's users leaving the
//! lobby's presence on the others (issue 13). Each
//! test starts its own Redis and nodes (`procs`), so the tests may run concurrently. Nothing is
//! mocked.
//!
//! Waits are bounded by `procs::DEADLINE` (or the shorter `LIVE`) and end as soon as what they
//! wait for holds; the only fixed sleep is the ten-second outage of scenario 4, which is the
//! scenario itself.
//!
//! Two things the tests rely on beyond the README: a node reads its Redis channels over one
//! subscriber connection, so messages of different streams published one after the other arrive
//! in that order (the fences of scenario 1); and a stream created anew starts at seq 1.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::Notify;

use switchboard_testkit::ws::{Client, http_request};
use tokio_tungstenite::tungstenite;

mod procs;

use procs::{
    ADMIN, DEADLINE, Node, NodeOpts, Redis, close_of, nodes, pos, recv, recv_event, to_user, token,
};

/// How long a message published after a node is back on Redis may take to reach that node's
/// connections live: well under the top check's least interval (15 s, 30 s ± 50 %), so that a
/// message only a top check found (a subscription not restored) fails the test.
const LIVE: Duration = Duration::from_secs(10);

/// The position of `stream` in a `connected` frame: (epoch, seq).
fn start_of(connected: &Value, stream: &str) -> (Value, u64) {
    let p = &connected["streams"][stream];
    (p["epoch"].clone(), p["seq"].as_u64().unwrap_or_else(|| panic!("{connected}")))
}

/// Reads frames until `fence` says one is the fence; returns the frames before it and the fence.
/// `pong` frames are skipped.
async fn read_to(c: &mut Client, fence: impl Fn(&Value) -> bool) -> (Vec<Value>, Value) {
    let mut seen = Vec::new();
    loop {
        let f = recv_event(c).await;
        if fence(&f) {
            return (seen, f);
        }
        seen.push(f);
    }
}

/// The frames before the fence.
async fn until_fence(c: &mut Client, fence: impl Fn(&Value) -> bool) -> Vec<Value> {
    read_to(c, fence).await.0
}

/// Sends a `ping` and asserts that the `pong` is the next frame: nothing else is queued.
async fn nothing_more(c: &mut Client, who: &str) {
    c.send(json!({"type": "ping"})).await;
    let f = recv(c).await;
    assert_eq!(f["type"], "pong", "{who}: expected nothing more, got {f}");
}

/// A summary of an event for comparisons: (stream, kind, data).
fn summary(f: &Value) -> (String, String, Value) {
    (f["stream"].as_str().unwrap_or("?").to_owned(), f["type"].to_string(), f["data"].clone())
}

// ---------------------------------------------------------------------------------------------
// 1. Delivery across nodes, isolation

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_through_any_node_reaches_every_connection_it_may_once_and_no_other() {
    let redis = Redis::start();
    let n = nodes(3, &redis, &NodeOpts::default());
    let (a, b, c) = (&n[0], &n[1], &n[2]);

    let alice = token("acme", "alice", "free", &["lobby"]);
    let bob = token("acme", "bob", "free", &["lobby"]);
    // Another tenant's room of the same name: nothing of acme's lobby may reach it.
    let carol = token("globex", "carol", "free", &["lobby"]);
    let (mut alice_a, alice_conn, alice_joined) = a.live(&alice).await;
    let (mut alice_b, _, _) = b.live(&alice).await;
    let (mut bob_a, _, _) = a.live(&bob).await;
    // On the publishing node too: it delivers when the message comes back from Redis.
    let (mut bob_c, _, _) = c.live(&bob).await;
    let (mut carol_b, _, _) = b.live(&carol).await;
    assert_eq!(alice_joined.len(), 1, "{alice_joined:?}");
    assert_eq!(alice_joined[0]["stream"], "r:lobby");

    // A user publish through the node that holds none of her connections.
    let (u_epoch, u_seq) = start_of(&alice_conn, "u");
    let first = c.publish_ok(&to_user("acme", "alice", 1)).await;
    assert_eq!(first["stream"], "u", "{first}");
    assert_eq!(first["duplicate"], false, "{first}");
    assert_eq!(first["seq"], u_seq + 1, "{first}");
    if u_seq > 0 {
        assert_eq!(first["epoch"], u_epoch, "{first}");
    }

    // A retried publish with the same idempotency key, through any node, is appended once.
    let mut keyed = to_user("acme", "alice", 2);
    keyed["idempotency_key"] = json!("alice-2");
    let second = c.publish_ok(&keyed).await;
    assert_eq!((&second["duplicate"], &second["seq"]), (&json!(false), &json!(u_seq + 2)));
    for node in [c, a] {
        let again = node.publish_ok(&keyed).await;
        assert_eq!(again["duplicate"], true, "retry through {}: {again}", node.name);
        assert_eq!((&again["stream"], &again["seq"]), (&second["stream"], &second["seq"]));
        assert_eq!(again["epoch"], second["epoch"]);
    }

    // A tenant broadcast and a room broadcast, both through C.
    let t = c.publish_ok(&json!({"tenant": "acme", "kind": "notice", "data": {"t": 1}})).await;
    assert_eq!(t["stream"], "t", "{t}");
    let r = c
        .publish_ok(&json!({"tenant": "acme", "room": "lobby", "kind": "notice", "data": {"r": 1}}))
        .await;
    assert_eq!(r["stream"], "r:lobby", "{r}");

    // Fences: one last broadcast per tenant. What reached a connection before its fence is all
    // it will get of the above.
    let fence = |f: &Value| f["data"]["fence"] == true;
    c.publish_ok(&json!({"tenant": "acme", "kind": "fence", "data": {"fence": true}})).await;
    c.publish_ok(&json!({"tenant": "globex", "kind": "fence", "data": {"fence": true}})).await;

    let user = |i: u64| ("u".to_owned(), "\"note\"".to_owned(), json!({"i": i}));
    let tenant = ("t".to_owned(), "\"notice\"".to_owned(), json!({"t": 1}));
    let room = ("r:lobby".to_owned(), "\"notice\"".to_owned(), json!({"r": 1}));
    for (who, client) in [("alice on A", &mut alice_a), ("alice on B", &mut alice_b)] {
        let got = until_fence(client, fence).await;
        let summaries: Vec<_> = got.iter().map(summary).collect();
        assert_eq!(summaries, [user(1), user(2), tenant.clone(), room.clone()], "{who}");
        for f in &got[..2] {
            assert_eq!(f["epoch"], first["epoch"], "{who}: {f}");
        }
        assert_eq!(got[0]["seq"], first["seq"]);
        assert_eq!(got[1]["seq"], second["seq"]);
        assert_eq!((&got[2]["epoch"], &got[2]["seq"]), (&t["epoch"], &t["seq"]), "{who}");
        assert_eq!((&got[3]["epoch"], &got[3]["seq"]), (&r["epoch"], &r["seq"]), "{who}");
        nothing_more(client, who).await;
    }
    for (who, client) in [("bob on A", &mut bob_a), ("bob on C", &mut bob_c)] {
        let got: Vec<_> = until_fence(client, fence).await.iter().map(summary).collect();
        assert_eq!(got, [tenant.clone(), room.clone()], "{who} gets the broadcasts, not alice's");
        nothing_more(client, who).await;
    }
    let got = until_fence(&mut carol_b, fence).await;
    assert!(got.is_empty(), "carol (globex) got acme's events: {got:?}");
    nothing_more(&mut carol_b, "carol").await;
}

// ---------------------------------------------------------------------------------------------
// 2. A node killed mid-stream; its client resumes on another

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_of_a_killed_node_resumes_on_another_with_exactly_what_it_missed() {
    const K: u64 = 10; // what the client reads before its node dies
    const AHEAD: u64 = 5; // published before the kill beyond what it read
    const N: u64 = 40;
    let redis = Redis::start();
    let mut n = nodes(2, &redis, &NodeOpts::default());
    let alice = token("acme", "alice", "free", &[]);
    let (mut client, connected, _) = n[0].live(&alice).await;
    let (epoch0, seq0) = start_of(&connected, "u");
    let tenant_pos = connected["streams"]["t"].clone();

    // The publisher goes on through B throughout; it waits for the kill only so that some of
    // its publishes certainly come after it.
    let killed = Arc::new(Notify::new());
    let b_addr = n[1].addr;
    let publisher = tokio::spawn({
        let killed = killed.clone();
        async move {
            let mut positions = Vec::new();
            for i in 1..=N {
                if i == K + AHEAD + 1 {
                    killed.notified().await;
                }
                let body = to_user("acme", "alice", i).to_string();
                let res = http_request(b_addr, "POST", "/publish", Some(ADMIN), &body).await;
                assert_eq!(res.status, 200, "publish {i}: {res:?}");
                let res = res.json();
                positions.push((res["epoch"].clone(), res["seq"].as_u64().unwrap()));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            positions
        }
    });

    let mut epoch = Value::Null;
    for i in 1..=K {
        let f = recv_event(&mut client).await;
        assert_eq!((&f["stream"], &f["data"]["i"]), (&json!("u"), &json!(i)), "{f}");
        assert_eq!(f["seq"], seq0 + i, "{f}");
        epoch = f["epoch"].clone();
    }
    if seq0 > 0 {
        assert_eq!(epoch, epoch0);
    }
    n[0].kill();
    killed.notify_one();
    drop(client);

    let positions = publisher.await.unwrap();
    for (i, (e, s)) in (1..).zip(&positions) {
        assert_eq!((e, *s), (&epoch, seq0 + i), "the publish response of {i}");
    }

    // Reconnect to B and resume from the last event processed.
    let mut client = n[1].ws(&alice, None).await.expect("alice connects to B");
    let connected = recv(&mut client).await;
    assert_eq!(connected["type"], "connected", "{connected}");
    let resume = json!({"u": pos(&epoch, seq0 + K), "t": tenant_pos});
    client.send(json!({"type": "resume", "positions": resume})).await;
    for i in K + 1..=N {
        let f = recv_event(&mut client).await;
        assert_eq!((&f["type"], &f["data"]["i"]), (&json!("note"), &json!(i)), "{f}");
        assert_eq!((&f["epoch"], &f["seq"]), (&epoch, &json!(seq0 + i)), "{f}");
    }
    let resumed = recv_event(&mut client).await;
    assert_eq!(resumed["type"], "resumed", "{resumed}");
    assert_eq!(resumed["recovered"], true, "{resumed}");
    let u = &resumed["streams"]["u"];
    assert_eq!((&u["recovered"], &u["replayed"]), (&json!(true), &json!(N - K)), "{resumed}");
    assert_eq!((&u["epoch"], &u["seq"]), (&epoch, &json!(seq0 + N)), "{resumed}");
    nothing_more(&mut client, "alice on B").await;
}

// ---------------------------------------------------------------------------------------------
// 3. Redis restarted empty

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_gives_new_epochs_and_unrecovered_resumes_and_no_node_dies() {
    let mut redis = Redis::start();
    let mut n = nodes(2, &redis, &NodeOpts::default());
    let alice = token("acme", "alice", "free", &[]);
    let (mut client, connected, _) = n[0].live(&alice).await;
    let (_, seq0) = start_of(&connected, "u");
    let mut old = Value::Null;
    for i in 1..=3 {
        old = n[1].publish_ok(&to_user("acme", "alice", i)).await;
        let f = recv_event(&mut client).await;
        assert_eq!((&f["data"]["i"], &f["seq"]), (&json!(i), &json!(seq0 + i)), "{f}");
    }
    let old_epoch = old["epoch"].clone();

    redis.kill();
    redis.restart();

    // A publishes again only once it is back on Redis with its subscriptions restored; then B
    // publishes what A's client must see.
    n[0].publish_when_back(&to_user("acme", "zed", 1)).await;
    let fourth = n[1].publish_when_back(&to_user("acme", "alice", 4)).await;
    let fifth = n[1].publish_ok(&to_user("acme", "alice", 5)).await;
    let new_epoch = fourth["epoch"].clone();
    assert_ne!(new_epoch, old_epoch, "the stream starts over in a new epoch: {fourth}");
    assert_eq!((&fourth["seq"], &fifth["seq"]), (&json!(1), &json!(2)), "{fourth} {fifth}");
    assert_eq!(fifth["epoch"], new_epoch);

    // The live connection on A is told (`resync`, `epoch_changed`) and goes on in the new epoch.
    // The fourth message comes unless the resync's position already covers it.
    let frames = tokio::time::timeout(LIVE, until_fence(&mut client, |f| f["data"]["i"] == 5))
        .await
        .expect("A's connection gets the new epoch's messages live");
    let resync = frames
        .iter()
        .rposition(|f| f["type"] == "resync" && f["stream"] == "u")
        .unwrap_or_else(|| panic!("no resync of u before the new epoch's events: {frames:?}"));
    let r = &frames[resync];
    assert_eq!((&r["reason"], &r["recovered"]), (&json!("epoch_changed"), &json!(false)), "{r}");
    let after: Vec<_> = frames[resync + 1..].iter().filter(|f| f["stream"] == "u").collect();
    if r["epoch"] == new_epoch && r["seq"].as_u64() >= Some(1) {
        assert!(after.is_empty(), "the resync covered seq 1, yet it came: {frames:?}");
    } else {
        assert_eq!(after.len(), 1, "{frames:?}");
        assert_eq!((&after[0]["data"]["i"], &after[0]["epoch"]), (&json!(4), &new_epoch));
    }
    for f in &frames[..resync] {
        assert_ne!(f["epoch"], new_epoch, "an event of the new epoch before the resync: {f}");
    }

    // A resume from the old epoch, on the other node, cannot be exact.
    let mut resumer = n[1].ws(&alice, None).await.expect("alice connects to B");
    assert_eq!(recv(&mut resumer).await["type"], "connected");
    let positions = json!({"u": pos(&old_epoch, seq0 + 3)});
    resumer.send(json!({"type": "resume", "positions": positions})).await;
    let (frames, resumed) = read_to(&mut resumer, |f| f["type"] == "resumed").await;
    for f in &frames {
        assert_eq!(f["epoch"], new_epoch, "only the new epoch may be replayed: {f}");
    }
    assert_eq!(resumed["recovered"], false, "{resumed}");
    let u = &resumed["streams"]["u"];
    assert_eq!(u["recovered"], false, "{resumed}");
    assert_eq!(u["reason"], "epoch_mismatch", "{resumed}");
    assert_eq!((&u["epoch"], &u["seq"]), (&new_epoch, &json!(2)), "{resumed}");

    // Nothing crashed: every node runs, answers /healthz and publishes.
    for node in n.iter_mut() {
        assert!(node.running(), "node {} exited:\n{}", node.name, node.log_tail());
    }
    for node in &n {
        assert_eq!(node.healthz().await, 200, "node {}", node.name);
        node.publish_ok(&to_user("acme", "alice", 6)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Redis gone for ten seconds

/// How long Redis stays down in scenario 4.
const OUTAGE: Duration = Duration::from_secs(10);

/// Asserts a publish is refused as retryable: 503, `Retry-After`, `unavailable`.
async fn assert_unavailable(node: &Node, body: &Value) {
    let res = node.publish(body).await;
    assert_eq!(res.status, 503, "publish through {} while Redis is down: {res:?}", node.name);
    let retry = res.headers.get("retry-after").unwrap_or_else(|| panic!("no Retry-After: {res:?}"));
    assert!(retry.parse::<u64>().is_ok_and(|s| s >= 1), "Retry-After: {retry}");
    assert_eq!(res.json()["error"], "unavailable", "{res:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_for_ten_seconds_refuses_publishes_keeps_connections_and_recovers_in_place() {
    // Persistent, so that Redis comes back with its data: this is an outage, not a wipe
    // (scenario 3 is the wipe).
    let mut redis = Redis::start_persistent();
    let n = nodes(2, &redis, &NodeOpts::default());
    let (a, b) = (&n[0], &n[1]);
    let alice = token("acme", "alice", "free", &[]);
    let (mut watcher, connected, _) = a.live(&alice).await;
    let (_, seq0) = start_of(&connected, "u");
    let mut epoch = Value::Null;
    for i in 1..=3 {
        let res = b.publish_ok(&to_user("acme", "alice", i)).await;
        let f = recv_event(&mut watcher).await;
        assert_eq!((&f["data"]["i"], &f["seq"]), (&json!(i), &res["seq"]), "{f}");
        assert_eq!(f["seq"], seq0 + i);
        epoch = f["epoch"].clone();
    }

    redis.kill();
    let down_since = Instant::now();

    // Publishing is refused, retryably, on every node, for as long as Redis is away.
    assert_unavailable(b, &to_user("acme", "alice", 100)).await;
    assert_unavailable(a, &to_user("acme", "alice", 101)).await;

    // Once a node knows Redis is gone it refuses new connections before the upgrade: no lease
    // can be taken (README: 503 `unavailable` with `Retry-After`).
    a.until_bus("down").await;
    match a.ws(&token("acme", "dora", "free", &[]), None).await {
        Err(tungstenite::Error::Http(res)) => {
            assert_eq!(res.status().as_u16(), 503, "{res:?}");
            assert!(res.headers().contains_key("retry-after"), "{res:?}");
        }
        Err(other) => panic!("expected an HTTP refusal, got {other:?}"),
        Ok(_) => panic!("a WebSocket was opened while Redis is down"),
    }

    // The open connection stays open and answered throughout.
    while down_since.elapsed() < OUTAGE {
        nothing_more(&mut watcher, "alice on A while Redis is down").await;
        assert_unavailable(b, &to_user("acme", "alice", 102)).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    redis.restart();

    // No node restarts: each publishes again once it has found Redis.
    a.publish_when_back(&to_user("acme", "zed", 1)).await;
    let fourth = b.publish_when_back(&to_user("acme", "alice", 4)).await;
    // Nothing refused during the outage was appended, and nothing before it was lost.
    assert_eq!((&fourth["epoch"], &fourth["seq"]), (&epoch, &json!(seq0 + 4)), "{fourth}");

    // Live delivery goes on on the connection that stayed open, in the same epoch, no resync.
    let f = tokio::time::timeout(LIVE, recv_event(&mut watcher))
        .await
        .expect("A's subscriptions are back: the next message comes live");
    assert_eq!((&f["type"], &f["data"]["i"]), (&json!("note"), &json!(4)), "{f}");
    assert_eq!((&f["epoch"], &f["seq"]), (&epoch, &json!(seq0 + 4)), "{f}");

    // A resume from before the outage, on either node, is exact.
    for node in [a, b] {
        let mut c = node.ws(&alice, None).await.expect("alice connects");
        assert_eq!(recv(&mut c).await["type"], "connected");
        let positions = json!({"u": pos(&epoch, seq0 + 1)});
        c.send(json!({"type": "resume", "positions": positions})).await;
        let (frames, resumed) = read_to(&mut c, |f| f["type"] == "resumed").await;
        let got: Vec<_> =
            frames.iter().map(|f| (f["data"]["i"].clone(), f["seq"].clone())).collect();
        let want: Vec<_> = (2..=4).map(|i| (json!(i), json!(seq0 + i))).collect();
        assert_eq!(got, want, "replay on {}", node.name);
        assert_eq!(resumed["recovered"], true, "{resumed}");
        assert_eq!(resumed["streams"]["u"]["replayed"], 3, "{resumed}");
        nothing_more(&mut c, "the resumed connection").await;
    }
    nothing_more(&mut watcher, "alice on A after the outage").await;
}

// ---------------------------------------------------------------------------------------------
// 5. The per-user quota across nodes, and a dead node's leases

/// Opens a connection for `token` on `node` and reports whether it was admitted (`connected`)
/// or closed 4008 `user_limit` before that; anything else fails the test.
async fn admitted(node: &Node, token: &str) -> Option<Client> {
    let mut c = node.ws(token, None).await.expect("the upgrade is accepted in cluster mode");
    match next_text_or_close(&mut c).await {
        Ok(f) => {
            assert_eq!(f["type"], "connected", "{f}");
            Some(c)
        }
        Err((code, reason)) => {
            assert_eq!((code, reason.as_str()), (4008, "user_limit"), "on {}", node.name);
            None
        }
    }
}

/// The first frame: a text frame, or the close frame's code and reason.
async fn next_text_or_close(c: &mut Client) -> Result<Value, (u16, String)> {
    use tokio_tungstenite::tungstenite::Message;
    match procs::next_message(c).await {
        Some(Message::Text(t)) => Ok(serde_json::from_str(&t).unwrap()),
        Some(Message::Close(Some(frame))) => Err((u16::from(frame.code), frame.reason.to_string())),
        other => panic!("expected a frame, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_free_users_fourth_connection_is_refused_on_another_node_until_the_dead_nodes_leases_expire()
 {
    let redis = Redis::start();
    let opts = NodeOpts { lease_ttl_secs: Some(3), ..NodeOpts::default() };
    let mut n = nodes(2, &redis, &opts);
    let frank = token("acme", "frank", "free", &[]);
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(n[0].live(&frank).await.0);
    }

    // The fourth, on B, which holds none of them: upgraded, then closed 4008 `user_limit`
    // without `connected` once Redis refuses its lease (README, "The server over Redis").
    assert!(admitted(&n[1], &frank).await.is_none(), "a 4th connection of a free user");
    // Another user of the tenant is not affected.
    n[1].live(&token("acme", "grace", "free", &[])).await;

    // A dies without releasing anything; its leases run out after the TTL.
    n[0].kill();
    let killed = Instant::now();
    let mut refused_after_kill = 0;
    let mut admitted_on_b = Vec::new();
    while admitted_on_b.len() < 3 {
        assert!(
            killed.elapsed() < DEADLINE,
            "A's leases did not expire within {DEADLINE:?} of its death (TTL 3 s); {} of 3 \
             connections admitted on B",
            admitted_on_b.len()
        );
        match admitted(&n[1], &frank).await {
            Some(c) => admitted_on_b.push(c),
            None => {
                refused_after_kill += 1;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
    eprintln!(
        "frank's 3 connections admitted on B {:?} after A's death ({refused_after_kill} refused)",
        killed.elapsed()
    );
    // And the quota holds again: B now holds all three. In cluster mode the hub leaves the
    // per-user count to the lease even on the node holding them (src/hub/mod.rs, `connect`), so
    // this 4th is upgraded and closed 4008 too.
    assert!(admitted(&n[1], &frank).await.is_none(), "a 4th on the node holding three");
    drop(held);
}

// ---------------------------------------------------------------------------------------------
// 6. A reader that stops reading

/// A metric's value from Prometheus text, 0 when absent.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_on_one_node_does_not_hold_up_delivery_on_the_others() {
    const MAX_PUBLISHES: u64 = 600;
    const CHECK_EVERY: u64 = 10;
    let redis = Redis::start();
    let n = nodes(2, &redis, &NodeOpts::default());
    let (a, b) = (&n[0], &n[1]);

    // The stalled one: a tiny receive window, live, then never read again until the end.
    let mut stalled = a.ws(&token("acme", "stalled", "free", &[]), Some(4096)).await.unwrap();
    assert_eq!(recv(&mut stalled).await["type"], "connected");
    nothing_more(&mut stalled, "the stalled reader, before it stalls").await;

    // Readers on both nodes, reading concurrently; A is also the node everything is published
    // through, so a hub held up by its stalled connection would show on every reader.
    let mut readers = Vec::new();
    for (node, user) in [(a, "reader-a"), (b, "reader-b")] {
        let (mut c, connected, _) = node.live(&token("acme", user, "free", &[])).await;
        let (_, t0) = start_of(&connected, "t");
        let count = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn({
            let count = count.clone();
            async move {
                let mut events: Vec<Value> = Vec::new();
                loop {
                    let f = recv_event(&mut c).await;
                    let prev = events.last().map_or(t0, |p| p["seq"].as_u64().unwrap());
                    assert_eq!(
                        (&f["stream"], &f["seq"]),
                        (&json!("t"), &json!(prev + 1)),
                        "{user}"
                    );
                    let last = f["data"]["last"] == true;
                    events.push(f);
                    count.fetch_add(1, Ordering::SeqCst);
                    if last {
                        return (c, events);
                    }
                }
            }
        });
        readers.push((user, count, task));
    }

    // Tenant broadcasts of 32 KiB, critical (not `agent_thinking`), until A closes the stalled
    // reader as a slow consumer; every few, both readers must have caught up.
    let pad = "x".repeat(32 * 1024);
    let mut published = 0;
    loop {
        published += 1;
        assert!(published <= MAX_PUBLISHES, "A never closed the stalled reader (4003)");
        let body = json!({"tenant": "acme", "kind": "blob", "data": {"i": published, "pad": pad}});
        a.publish_ok(&body).await;
        if published % CHECK_EVERY == 0 {
            for (user, count, task) in &mut readers {
                let deadline = Instant::now() + DEADLINE;
                while count.load(Ordering::SeqCst) < published {
                    if task.is_finished() {
                        // Its assertion failed: report that, not a timeout.
                        match task.await {
                            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                            Err(e) => panic!("{user}'s reader: {e}"),
                            Ok(_) => panic!("{user}'s reader ended before the last broadcast"),
                        }
                    }
                    assert!(Instant::now() < deadline, "{user} fell behind the stalled reader");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            let closed = metric(
                &a.metrics().await,
                "switchboard_connections_closed_total{reason=\"slow_consumer\"}",
            );
            if closed >= 1.0 {
                break;
            }
        }
    }
    a.publish_ok(&json!({"tenant": "acme", "kind": "blob", "data": {"last": true}})).await;
    for (user, _, task) in readers {
        let (mut c, events) = tokio::time::timeout(DEADLINE, task).await.expect(user).unwrap();
        let is: Vec<_> = events.iter().map(|f| f["data"]["i"].as_u64()).collect();
        let want: Vec<_> = (1..=published).map(Some).chain([None]).collect();
        assert_eq!(is, want, "{user} got every broadcast once, in order");
        nothing_more(&mut c, user).await;
    }
    eprintln!("the stalled reader was closed after {published} broadcasts of 32 KiB");

    // Reading at last, it finds what was in flight, then the slow-consumer close.
    let (code, _, _) = close_of(&mut stalled).await;
    assert_eq!(code, 4003);
}

// ---------------------------------------------------------------------------------------------
// 7. A Redis that stops answering (beyond issue 12's list: the deaf link its driver must detect)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_redis_is_detected_and_publishes_retried_with_their_keys_land_once() {
    let redis = Redis::start();
    let n = nodes(2, &redis, &NodeOpts::default());
    let (a, b) = (&n[0], &n[1]);
    let alice = token("acme", "alice", "free", &[]);
    let (mut watcher, connected, _) = a.live(&alice).await;
    let (_, seq0) = start_of(&connected, "u");
    let first = b.publish_ok(&to_user("acme", "alice", 1)).await;
    let epoch = first["epoch"].clone();
    let f = recv_event(&mut watcher).await;
    assert_eq!((&f["data"]["i"], &f["seq"]), (&json!(1), &json!(seq0 + 1)), "{f}");

    // Stopped, not dead: connections stay open and nothing answers. The probes find out.
    redis.pause();
    let keyed = |i: u64| {
        let mut body = to_user("acme", "alice", i);
        body["idempotency_key"] = json!(format!("alice-{i}"));
        body
    };
    // Sent before the node knows: it times out; Redis may still run it when it wakes.
    assert_unavailable(b, &keyed(100)).await;
    a.until_bus("down").await;
    b.until_bus("down").await;
    // Known down: refused at once, never sent.
    assert_unavailable(b, &keyed(101)).await;
    nothing_more(&mut watcher, "alice on A while Redis is silent").await;

    redis.resume();
    a.until_bus("up").await;
    b.until_bus("up").await;
    let third = b.publish_when_back(&to_user("acme", "alice", 3)).await;
    assert_eq!(third["epoch"], epoch, "{third}");
    // The retries land once each, whether or not the first attempt got through.
    let mut retried = Vec::new();
    for i in [100, 101] {
        let res = b.publish_ok(&keyed(i)).await;
        assert_eq!(res["epoch"], epoch, "{res}");
        retried.push((i, res["duplicate"].clone()));
    }

    // The watcher sees each message once, in order, with no gap and no resync.
    let mut want: Vec<u64> = vec![3, 100, 101];
    let mut got = Vec::new();
    let mut seq = seq0 + 1;
    while !want.is_empty() {
        let f = tokio::time::timeout(LIVE, recv_event(&mut watcher))
            .await
            .unwrap_or_else(|_| panic!("still waiting for {want:?}; got {got:?}"));
        assert_eq!((&f["type"], &f["epoch"]), (&json!("note"), &epoch), "{f}");
        seq += 1;
        assert_eq!(f["seq"], seq, "{f}");
        let i = f["data"]["i"].as_u64().unwrap();
        let at = want.iter().position(|w| *w == i);
        assert!(at.is_some(), "{i} again or unexpected (got {got:?}, retries {retried:?})");
        want.remove(at.unwrap());
        got.push(i);
    }
    nothing_more(&mut watcher, "alice on A after Redis woke").await;
    eprintln!("after the silence, in order: {got:?}; retries answered {retried:?}");
}

// ---------------------------------------------------------------------------------------------
// Issue 14: history from the Redis log, and a kick that reaches every node

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_comes_from_the_log_on_a_node_that_did_not_see_it_and_a_kick_reaches_every_node() {
    let redis = Redis::start();
    let n = nodes(2, &redis, &NodeOpts::default());
    let (a, b) = (&n[0], &n[1]);
    let alice = token("acme", "alice", "free", &[]);
    let (mut on_a, _, _) = a.live(&alice).await;
    for i in 1..=3 {
        a.publish_ok(&to_user("acme", "alice", i)).await;
        assert_eq!(recv_event(&mut on_a).await["data"]["i"], i);
    }
    // B follows alice's stream only from her connection there on: the history is Redis's log.
    let (mut on_b, _, _) = b.live(&alice).await;
    on_b.send(json!({"type": "history", "stream": "u", "limit": 10, "id": "h"})).await;
    let answer = recv_event(&mut on_b).await;
    assert_eq!((answer["type"].as_str(), answer["id"].as_str()), (Some("history"), Some("h")));
    assert!(answer.get("reason").is_none(), "{answer}");
    let got: Vec<u64> = answer["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["data"]["i"].as_u64().expect("i"))
        .collect();
    assert_eq!(got, [1, 2, 3], "{answer}");

    // A kick through B closes alice's connections on both nodes.
    let res = b.http("POST", "/admin/tenants/acme/users/alice/kick", Some(ADMIN), "").await;
    assert_eq!(res.status, 200, "{}", res.body);
    assert_eq!(res.json()["closed_here"], 1);
    for (who, client) in [("on B", &mut on_b), ("on A", &mut on_a)] {
        let (code, reason, _) = close_of(client).await;
        assert_eq!((code, reason.as_str()), (4005, "kicked"), "{who}");
    }
}

// ---------------------------------------------------------------------------------------------
// 8. Presence across nodes, and a killed node's users (issue 13)

/// A connection's picture of the lobby, from the `presence` and `presence_diff` frames it read,
/// with every join and leave it was told.
#[derive(Default)]
struct Lobby {
    members: BTreeSet<String>,
    joins: Vec<String>,
    leaves: Vec<(Instant, String)>,
}

impl Lobby {
    /// Applies one frame (others are ignored).
    fn read(&mut self, f: &Value) {
        if f["scope"] != "r:lobby" {
            return;
        }
        let name = |v: &Value| v.as_str().expect("a user id").to_owned();
        match f["type"].as_str() {
            Some("presence") => {
                let members = f["members"].as_array().expect("a member list under the limit");
                self.members = members.iter().map(|m| name(&m["user"])).collect();
            }
            Some("presence_diff") => {
                for user in f["leaves"].as_array().expect("leaves").iter().map(name) {
                    assert!(self.members.remove(&user), "{user} left but was not there: {f}");
                    self.leaves.push((Instant::now(), user));
                }
                for user in f["joins"].as_array().expect("joins").iter().map(|j| name(&j["user"])) {
                    assert!(self.members.insert(user.clone()), "{user} joined twice: {f}");
                    self.joins.push(user);
                }
            }
            _ => {}
        }
    }

    /// Reads until the picture is `want`; returns when it became so.
    async fn until(&mut self, c: &mut Client, want: &[&str], who: &str) -> Instant {
        let want: BTreeSet<String> = want.iter().map(|u| (*u).to_owned()).collect();
        let deadline = Instant::now() + DEADLINE;
        while self.members != want {
            let left = deadline.saturating_duration_since(Instant::now());
            let f = tokio::time::timeout(left, procs::recv_any(c))
                .await
                .unwrap_or_else(|_| panic!("{who} still shows {:?}, not {want:?}", self.members));
            self.read(&f);
        }
        Instant::now()
    }
}

/// Connects `user` to `node` in the lobby and reads up to its first lobby snapshot.
async fn in_lobby(node: &Node, user: &str) -> (Client, Lobby) {
    let mut c = node.ws(&token("acme", user, "free", &["lobby"]), None).await.expect("connects");
    let mut lobby = Lobby::default();
    loop {
        let f = procs::recv_any(&mut c).await;
        lobby.read(&f);
        if f["type"] == "presence" && f["scope"] == "r:lobby" {
            return (c, lobby);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_users_leave_the_lobby_of_the_others_in_time_and_nobody_else_does() {
    /// `--presence-ttl-secs`: the bound on a dead node's users, with the flush (250 ms) and some
    /// slack for a loaded machine.
    const TTL: u64 = 3;
    const SLACK: Duration = Duration::from_millis(250 + 1_500);
    let redis = Redis::start();
    let opts = NodeOpts { presence_ttl_secs: Some(TTL), ..NodeOpts::default() };
    let mut n = nodes(3, &redis, &opts);
    let (mut alice, mut alice_sees) = in_lobby(&n[0], "alice").await;
    let (bob, _) = in_lobby(&n[0], "bob").await;
    let (mut carol, mut carol_sees) = in_lobby(&n[1], "carol").await;
    // Once B has heard of A's users (they are on the bus), dave's first snapshot, on the third
    // node, names the users the other two hold.
    carol_sees.until(&mut carol, &["alice", "bob", "carol"], "carol").await;
    let (mut dave, mut dave_sees) = in_lobby(&n[2], "dave").await;
    for user in ["alice", "bob", "carol"] {
        assert!(dave_sees.members.contains(user), "dave's snapshot: {:?}", dave_sees.members);
    }
    let everyone = ["alice", "bob", "carol", "dave"];
    carol_sees.until(&mut carol, &everyone, "carol").await;
    dave_sees.until(&mut dave, &everyone, "dave").await;
    // A's users see the whole lobby too.
    alice_sees.until(&mut alice, &everyone, "alice").await;
    drop(bob);

    // A dies without a word. Its users leave the lobby of B's and C's connections within the
    // ttl, measured on each concurrently; carol and dave never leave anyone's picture.
    n[0].kill();
    let killed = Instant::now();
    let watch = |mut c: Client, mut seen: Lobby, who: &'static str| {
        tokio::spawn(async move {
            let at = seen.until(&mut c, &["carol", "dave"], who).await;
            (c, seen, at)
        })
    };
    let on_b = watch(carol, carol_sees, "carol");
    let on_c = watch(dave, dave_sees, "dave");
    for task in [on_b, on_c] {
        let (mut c, seen, at) = task.await.expect("the watcher");
        let took = at - killed;
        eprintln!("A's users left the lobby of a surviving node {took:?} after the kill");
        assert!(took <= Duration::from_secs(TTL) + SLACK, "{took:?} after the kill");
        // Not some other path: the set expired (no sooner than two thirds of the ttl, the age of
        // A's last refresh at worst, less the slack of a loaded machine).
        assert!(took >= Duration::from_secs(TTL) * 2 / 3 - Duration::from_millis(500), "{took:?}");
        let left: BTreeSet<&str> = seen.leaves.iter().map(|(_, u)| u.as_str()).collect();
        assert_eq!(left, BTreeSet::from(["alice", "bob"]), "only A's users left");
        // Quiet afterwards: nobody on a surviving node flickers.
        c.send(json!({"type": "ping"})).await;
        let mut after = seen;
        loop {
            let f = procs::recv_any(&mut c).await;
            if f["type"] == "pong" {
                break;
            }
            after.read(&f);
        }
        assert_eq!(after.leaves.len(), 2, "{:?}", after.leaves);
        assert_eq!(after.members, BTreeSet::from(["carol".to_owned(), "dave".to_owned()]));
    }
    let metrics = n[1].metrics().await;
    assert!(metric(&metrics, "switchboard_presence_expired_total") >= 1.0, "B dropped A's set");
    drop(alice);
}
