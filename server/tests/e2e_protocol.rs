//! End-to-end tests of issue 14's protocol additions over real WebSockets on loopback: custom
//! kinds with a priority and publishes that leave the sender out (item 7), runs (item 2),
//! history (item 4) and the admin API (item 5). Same harness as `e2e.rs`.

use serde_json::{Value, json};

mod e2e_harness;
mod support;

use support::{ADMIN, Server};

/// POSTs `body` to `/publish` with the admin key and returns the answer's JSON (asserting 200).
async fn publish_json(server: &Server, body: Value) -> Value {
    let res = server.http("POST", "/publish", Some(ADMIN), &body.to_string()).await;
    assert_eq!(res.status, 200, "{}", res.body);
    res.json()
}

// ---------------------------------------------------------------------------------------------
// Item 7: priorities and exclusion

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_can_leave_the_sender_out_and_give_a_custom_kind_a_priority() {
    let server = Server::start(|_| {}).await;
    let (mut sender, connected) = server.live(&server.token("acme", "alice", &[], &[])).await;
    let (mut other_tab, _) = server.live(&server.token("acme", "alice", &[], &[])).await;
    let (mut bob, _) = server.live(&server.token("acme", "bob", &[], &[])).await;
    let me = connected["conn_id"].as_str().unwrap().to_owned();

    // The sender's echo goes to its other tab only; the answer says the id named a connection.
    let echo = json!({"tenant": "acme", "user": "alice", "kind": "user_message",
                      "data": {"text": "hi"}, "exclude": me});
    let answer = publish_json(&server, echo).await;
    assert_eq!((answer["excluded"].as_bool(), answer["delivered"].as_u64()), (Some(true), Some(1)));
    let got = other_tab.recv_event().await;
    assert_eq!(
        (got["type"].as_str(), got["data"]["text"].as_str()),
        (Some("user_message"), Some("hi"))
    );
    // A tenant broadcast excluding the sender reaches everyone else.
    let all = json!({"tenant": "acme", "kind": "notice", "exclude": me});
    assert_eq!(publish_json(&server, all).await["delivered"], 2);
    assert_eq!(other_tab.recv_event().await["type"], "notice");
    assert_eq!(bob.recv_event().await["type"], "notice");
    sender.sync().await;
    other_tab.sync().await;
    bob.sync().await;

    // An id that names no open connection excludes nobody, and the answer says so.
    let stale = json!({"tenant": "acme", "user": "bob", "kind": "notice", "exclude": "999v9"});
    let answer = publish_json(&server, stale).await;
    assert_eq!(
        (answer["excluded"].as_bool(), answer["delivered"].as_u64()),
        (Some(false), Some(1))
    );
    assert_eq!(bob.recv_event().await["type"], "notice");

    // In a batch each entry's `exclude` is its own, and an entry without one excludes nobody.
    let batch = json!([
        {"tenant": "acme", "user": "alice", "kind": "notice", "data": {"n": 1}},
        {"tenant": "acme", "user": "alice", "kind": "notice", "data": {"n": 2}, "exclude": me},
        {"tenant": "acme", "user": "alice", "kind": "notice", "data": {"n": 3}, "exclude": "9v9"},
    ]);
    let res = server.http("POST", "/publish", Some(ADMIN), &batch.to_string()).await;
    assert_eq!(res.status, 200, "{}", res.body);
    let results = res.json()["results"].clone();
    let answers: Vec<_> = (0..3)
        .map(|i| (results[i]["excluded"].as_bool(), results[i]["delivered"].as_u64()))
        .collect();
    assert_eq!(answers, [(None, Some(2)), (Some(true), Some(1)), (Some(false), Some(2))]);
    for n in [1, 3] {
        assert_eq!(sender.recv_event().await["data"]["n"], n);
    }
    for n in [1, 2, 3] {
        assert_eq!(other_tab.recv_event().await["data"]["n"], n);
    }
    sender.sync().await;

    // A droppable custom kind is published as such; the agent events' priorities are fixed.
    let low = json!({"tenant": "acme", "user": "bob", "kind": "upload_progress",
                     "priority": "low", "data": {"pct": 50}});
    publish_json(&server, low).await;
    let got = bob.recv_event().await;
    assert_eq!(
        (got["type"].as_str(), got["data"]["pct"].as_u64()),
        (Some("upload_progress"), Some(50))
    );
    for (kind, priority) in [("agent_completed", "low"), ("notice", "urgent")] {
        let bad = json!({"tenant": "acme", "user": "bob", "kind": kind, "priority": priority});
        let res = server.http("POST", "/publish", Some(ADMIN), &bad.to_string()).await;
        assert_eq!((res.status, res.json()["error"].as_str()), (400, Some("bad_target")), "{kind}");
    }
    let fixed =
        json!({"tenant": "acme", "user": "bob", "kind": "agent_thinking", "priority": "low"});
    publish_json(&server, fixed).await;
    assert_eq!(bob.recv_event().await["type"], "agent_thinking");
    bob.sync().await;
    sender.sync().await;
}

// ---------------------------------------------------------------------------------------------
// Item 2: runs

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_watches_one_run_live_and_in_its_resume() {
    let server = Server::start(|_| {}).await;
    let token = server.token("acme", "alice", &[], &[]);
    let (mut watcher, _) = server.live(&token).await;
    let (mut tab, _) = server.live(&token).await;
    let (mut other_thread, _) = server.live(&token).await;
    watcher.send(json!({"type": "subscribe", "run_id": "r-7"})).await;
    other_thread.send(json!({"type": "subscribe", "thread_id": "t2"})).await;
    watcher.sync().await;
    other_thread.sync().await;

    let step = |run: &str, n: u64| {
        json!({"tenant": "acme", "user": "alice", "run": run, "kind": "tool_executing",
               "data": {"n": n}})
    };
    assert_eq!(publish_json(&server, step("r-7", 1)).await["delivered"], 2);
    assert_eq!(publish_json(&server, step("r-8", 2)).await["delivered"], 1);
    let seen = watcher.recv_event().await;
    assert_eq!((seen["run_id"].as_str(), seen["data"]["n"].as_u64()), (Some("r-7"), Some(1)));
    for n in [1, 2] {
        assert_eq!(tab.recv_event().await["data"]["n"], n);
    }
    watcher.sync().await;
    other_thread.sync().await;

    // Away, then back: the resume honours the run subscription sent before it.
    let (epoch, seq) = (seen["epoch"].as_u64().unwrap(), seen["seq"].as_u64().unwrap());
    drop(watcher);
    server.until("the watcher is gone", |s| s.hub.connections_active == 2).await;
    publish_json(&server, step("r-8", 3)).await;
    publish_json(&server, step("r-7", 4)).await;
    let mut back = server.ws_with(Some(&token), None).await.expect("connects");
    assert_eq!(back.recv().await["type"], "connected");
    back.send(json!({"type": "subscribe", "run_id": "r-7"})).await;
    back.send(json!({"type": "resume", "positions": {"u": {"epoch": epoch, "seq": seq}}})).await;
    let replayed = back.recv_event().await;
    assert_eq!(
        (replayed["run_id"].as_str(), replayed["data"]["n"].as_u64()),
        (Some("r-7"), Some(4))
    );
    let resumed = back.recv_event().await;
    assert_eq!(
        (resumed["type"].as_str(), resumed["recovered"].as_bool()),
        (Some("resumed"), Some(true))
    );
    back.sync().await;
}

// ---------------------------------------------------------------------------------------------
// Item 4: history

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_opening_a_thread_loads_its_recent_history_and_only_its_own() {
    let server = Server::start(|_| {}).await;
    let (mut first, _) = server.live(&server.token("acme", "alice", &[], &[])).await;
    for (thread, n) in [("t1", 1), ("t2", 2), ("t1", 3)] {
        let body = json!({"tenant": "acme", "user": "alice", "thread": thread, "kind": "note",
                          "data": {"n": n}});
        publish_json(&server, body).await;
        assert_eq!(first.recv_event().await["data"]["n"], n);
    }
    publish_json(&server, json!({"tenant": "acme", "user": "bob", "kind": "note"})).await;

    // A new tab opens thread t1: its history has t1's events, newest last, as delivered live.
    let (mut tab, _) = server.live(&server.token("acme", "alice", &[], &[])).await;
    tab.send(
        json!({"type": "history", "stream": "u", "thread_id": "t1", "limit": 10, "id": "open"}),
    )
    .await;
    let answer = tab.recv_event().await;
    assert_eq!((answer["type"].as_str(), answer["id"].as_str()), (Some("history"), Some("open")));
    let messages = answer["messages"].as_array().unwrap();
    let got: Vec<u64> = messages.iter().map(|m| m["data"]["n"].as_u64().unwrap()).collect();
    assert_eq!(got, [1, 3]);
    assert!(messages.iter().all(|m| m["thread_id"] == "t1" && m["stream"] == "u"));
    // Paged: one at a time, backwards.
    tab.send(json!({"type": "history", "stream": "u", "limit": 1})).await;
    let newest = tab.recv_event().await;
    assert_eq!(
        (newest["messages"][0]["data"]["n"].as_u64(), newest["more"].as_bool()),
        (Some(3), Some(true))
    );
    let before = newest["messages"][0]["seq"].as_u64().unwrap();
    tab.send(json!({"type": "history", "stream": "u", "limit": 1, "before": before})).await;
    assert_eq!(tab.recv_event().await["messages"][0]["data"]["n"], 2);
    // A room it is not in is refused, and the connection stays.
    tab.send(json!({"type": "history", "stream": "r:lobby"})).await;
    let refused = tab.recv_event().await;
    assert_eq!(
        (refused["type"].as_str(), refused["code"].as_str()),
        (Some("error"), Some("unknown_stream"))
    );
    tab.sync().await;
    first.sync().await;
    // The page asks for its thread's history when it opens, through the client's `history`
    // (which sends the frame above: the TypeScript client's tests and the browser test run it).
    let page = server.http("GET", "/", None, "").await;
    assert!(page.body.contains("client.history("), "the page requests history");
}

// ---------------------------------------------------------------------------------------------
// Item 5: the admin API

/// An admin request: status and JSON body.
async fn admin(server: &Server, method: &str, path: &str) -> (u16, Value) {
    let res = server.http(method, path, Some(ADMIN), "").await;
    let body = if res.body.is_empty() { Value::Null } else { res.json() };
    (res.status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_lists_inspects_moves_and_kicks_through_the_admin_api() {
    let server = Server::start(|_| {}).await;
    let (mut alice, hello) = server.live(&server.token("acme", "alice", &[], &["lobby"])).await;
    let (mut alice2, hello2) = server.live(&server.token("acme", "alice", &[], &[])).await;
    let (mut bob, bob_hello) =
        server.live(&server.token("acme", "bob", &["admin"], &["lobby"])).await;
    let (_carol, _) = server.live(&server.token("globex", "carol", &[], &[])).await;
    let alice_id = hello["conn_id"].as_str().unwrap().to_owned();
    let alice2_id = hello2["conn_id"].as_str().unwrap().to_owned();
    let bob_id = bob_hello["conn_id"].as_str().unwrap().to_owned();
    alice.send(json!({"type": "subscribe", "run_id": "r-1"})).await;
    alice.sync().await;

    // Without the key: 401, nothing read.
    let res = server.http("GET", "/admin/stats", None, "").await;
    assert_eq!(res.status, 401);
    let res = server.http("POST", "/admin/tenants/acme/users/bob/kick", Some("wrong"), "").await;
    assert_eq!(res.status, 401);

    // Users, a page at a time; never another tenant's.
    let (status, page) = admin(&server, "GET", "/admin/tenants/acme/users?limit=1").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(
        (page["items"][0]["user"].as_str(), page["next"].as_str()),
        (Some("alice"), Some("alice"))
    );
    let (_, rest) = admin(&server, "GET", "/admin/tenants/acme/users?limit=1&after=alice").await;
    assert_eq!(rest["items"][0]["user"], "bob");
    let (status, _) = admin(&server, "GET", "/admin/tenants/acme/users?limit=0").await;
    assert_eq!(status, 400);
    // One user with its connections' views.
    let (_, user) = admin(&server, "GET", "/admin/tenants/acme/users/alice").await;
    assert_eq!((user["connections"].as_u64(), user["phase"].as_str()), (Some(2), Some("active")));
    // Its age and last sign of life: both in the past, the activity no older than the state.
    let (age, idle) = (user["age_ms"].as_u64().unwrap(), user["last_activity_ms_ago"].as_u64());
    assert!(idle.is_some_and(|idle| idle <= age), "{user}");
    let views = user["connection_views"].as_array().unwrap();
    let first = views.iter().find(|v| v["conn_id"] == alice_id.as_str()).unwrap();
    assert_eq!(first["runs"], json!(["r-1"]));
    assert_eq!(first["rooms"], json!(["lobby"]));
    assert_eq!(admin(&server, "GET", "/admin/tenants/acme/users/nobody").await.0, 404);
    // Connections and rooms.
    let (_, conns) = admin(&server, "GET", "/admin/tenants/acme/connections").await;
    assert_eq!(conns["items"].as_array().unwrap().len(), 3);
    assert!(conns["items"].as_array().unwrap().iter().all(|c| c["tenant"] == "acme"));
    let (_, rooms) = admin(&server, "GET", "/admin/tenants/acme/rooms").await;
    assert_eq!(
        (rooms["items"][0]["room"].as_str(), rooms["items"][0]["members"].as_u64()),
        (Some("lobby"), Some(2))
    );
    let (_, presence) = admin(&server, "GET", "/admin/tenants/acme/presence?room=lobby").await;
    assert_eq!(presence["count"], 2, "{presence}");
    assert_eq!(
        (presence["cluster"].as_bool(), presence["truncated"].as_bool()),
        (Some(false), Some(false))
    );
    assert!(presence["members"].as_array().unwrap().iter().all(|m| m["conns"].as_u64() >= Some(1)));
    let (_, cut) = admin(&server, "GET", "/admin/tenants/acme/presence?room=lobby&limit=1").await;
    assert_eq!((cut["count"].as_u64(), cut["truncated"].as_bool()), (Some(2), Some(true)), "{cut}");
    assert_eq!(cut["members"].as_array().map(Vec::len), Some(1), "{cut}");
    let (status, _) =
        admin(&server, "GET", "/admin/tenants/acme/presence?room=lobby&limit=0").await;
    assert_eq!(status, 400);

    // Rooms at runtime: alice's second tab joins the lobby, then leaves it.
    let path = format!("/admin/connections/{alice2_id}/rooms/lobby");
    let (status, joined) = admin(&server, "POST", &path).await;
    assert_eq!((status, joined["joined"].as_bool()), (200, Some(true)));
    let f = alice2.recv_event().await;
    assert_eq!((f["type"].as_str(), f["stream"].as_str()), (Some("joined"), Some("r:lobby")));
    let (status, left) = admin(&server, "DELETE", &path).await;
    assert_eq!((status, left["left"].as_bool()), (200, Some(true)));
    loop {
        let f = alice2.recv_event().await;
        if f["type"] == "left" {
            assert_eq!(f["stream"], "r:lobby");
            break;
        }
    }
    assert_eq!(admin(&server, "POST", "/admin/connections/999v9/rooms/lobby").await.0, 404);

    // Kicks: one connection, then a user; closed with `kicked` (4005).
    let (status, _) = admin(&server, "POST", &format!("/admin/connections/{bob_id}/kick")).await;
    assert_eq!(status, 200);
    assert_eq!(bob.close_code().await, 4005);
    let (status, kicked) = admin(&server, "POST", "/admin/tenants/acme/users/alice/kick").await;
    assert_eq!((status, kicked["closed_here"].as_u64()), (200, Some(2)));
    assert_eq!(alice.close_code().await, 4005);
    assert_eq!(alice2.close_code().await, 4005);
    let (_, stats) = admin(&server, "GET", "/admin/stats").await;
    assert_eq!(
        (stats["kicked"].as_u64(), stats["connections_active"].as_u64()),
        (Some(3), Some(1))
    );
}
