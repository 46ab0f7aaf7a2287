//! The admin API's presence in cluster mode, as it runs: real `switchboard` processes over a real
//! `redis-server` (`procs`). A node that holds no connection in a scope answers the scope's
//! presence from the bus: every node's users, a user on two nodes listed once; a killed node's
//! users leave that answer within the presence ttl; the bus down answers 503 with `Retry-After`.
//! Nothing is mocked; waits end as soon as what they wait for holds.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchboard_server::auth::{Claims, Keys};
use switchboard_testkit::ws::Client;

mod procs;

use procs::{ADMIN, DEADLINE, Node, NodeOpts, Redis, SECRET, nodes};

/// `--presence-ttl-secs`: the bound on a dead node's users.
const TTL: u64 = 3;
/// What a loaded machine adds to that bound: the flush (250 ms), a poll, scheduling.
const SLACK: Duration = Duration::from_millis(250 + 1_750);

const LOBBY: &str = "/admin/tenants/acme/presence?room=lobby";

/// A token of `user` in the lobby, shown as `name`.
fn token(user: &str, name: &str) -> String {
    let claims = Claims {
        tier: Some("free".into()),
        rooms: vec!["lobby".into()],
        name: Some(name.into()),
        ..Claims::new("acme", user, Duration::from_secs(3600))
    };
    Keys::new(SECRET.as_bytes()).unwrap().sign(&claims)
}

/// A connection of `user` to `node`, in the lobby.
async fn connect(node: &Node, user: &str, name: &str) -> Client {
    node.live(&token(user, name)).await.0
}

/// `GET path` on `node` with the admin key: status and JSON.
async fn admin(node: &Node, path: &str) -> (u16, Value) {
    let res = node.http("GET", path, Some(ADMIN), "").await;
    (res.status, res.json())
}

/// The members of a presence answer: user → (nodes, meta).
fn members(answer: &Value) -> BTreeMap<String, (u64, Value)> {
    let list = answer["members"].as_array().unwrap_or_else(|| panic!("members: {answer}"));
    list.iter()
        .map(|m| {
            let user = m["user"].as_str().expect("a user id").to_owned();
            (user, (m["nodes"].as_u64().expect("nodes"), m["meta"].clone()))
        })
        .collect()
}

/// Polls `node`'s lobby presence until its members (user → nodes holding it) are `want`;
/// returns the answer and when it became so.
async fn until_lobby(node: &Node, want: &[(&str, u64)]) -> (Value, Instant) {
    let want: BTreeMap<String, u64> = want.iter().map(|(u, n)| ((*u).to_owned(), *n)).collect();
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (status, answer) = admin(node, LOBBY).await;
        assert_eq!(status, 200, "{answer}");
        let got: BTreeMap<String, u64> =
            members(&answer).into_iter().map(|(u, (n, _))| (u, n)).collect();
        if got == want {
            return (answer, Instant::now());
        }
        assert!(Instant::now() < deadline, "{} shows {got:?}, not {want:?}", node.name);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_connections_in_a_room_lists_the_clusters_members_and_drops_a_dead_nodes() {
    let mut redis = Redis::start();
    let opts = NodeOpts { presence_ttl_secs: Some(TTL), ..NodeOpts::default() };
    let mut n = nodes(3, &redis, &opts);
    // alice on A and C, bob on A; B holds no connection at all.
    let alice_a = connect(&n[0], "alice", "Alice").await;
    let bob = connect(&n[0], "bob", "Bob").await;
    let alice_c = connect(&n[2], "alice", "Alice").await;
    let (answer, _) = until_lobby(&n[1], &[("alice", 2), ("bob", 1)]).await;
    assert_eq!(answer["scope"], "r:lobby");
    assert_eq!(answer["cluster"], true);
    assert_eq!(answer["count"], 2, "a user on two nodes is one member: {answer}");
    assert_eq!(answer["nodes"], 2, "A and C hold someone: {answer}");
    assert_eq!(
        (answer["truncated"].as_bool(), answer["too_large"].as_bool()),
        (Some(false), Some(false))
    );
    let listed = members(&answer);
    assert_eq!(listed["alice"].1, json!({"name": "Alice"}), "{answer}");
    assert_eq!(listed["bob"].1, json!({"name": "Bob"}), "{answer}");
    // B's own hub knows nobody there: the answer is the bus's.
    let (_, rooms) = admin(&n[1], "/admin/tenants/acme/rooms").await;
    assert_eq!(rooms["items"], json!([]), "B holds no room: {rooms}");

    // Bounded: a limit of one entry leaves users out and says so.
    let (status, cut) = admin(&n[1], &format!("{LOBBY}&limit=1")).await;
    assert_eq!(status, 200, "{cut}");
    assert_eq!(cut["truncated"], true, "{cut}");
    assert!(cut["members"].as_array().unwrap().len() <= 1, "{cut}");
    for bad in ["0", "10001", "x"] {
        let status = admin_status(&n[1], &format!("{LOBBY}&limit={bad}")).await;
        assert_eq!(status, 400, "limit={bad}");
    }
    // Presence is off for whole tenants (the server's default): 404, as on one node.
    let (status, off) = admin(&n[1], "/admin/tenants/acme/presence").await;
    assert_eq!((status, off["error"].as_str()), (404, Some("no_presence")), "{off}");

    // A dies without a word: its users leave B's answer when its set expires (bob entirely,
    // alice still held by C), within the ttl.
    n[0].kill();
    let killed = Instant::now();
    let (answer, at) = until_lobby(&n[1], &[("alice", 1)]).await;
    let took = at - killed;
    eprintln!("A's users left B's admin presence {took:?} after the kill");
    assert!(took <= Duration::from_secs(TTL) + SLACK, "{took:?} after the kill");
    assert_eq!((answer["count"].as_u64(), answer["nodes"].as_u64()), (Some(1), Some(1)));

    // The bus down: 503 with Retry-After, as `/publish` answers.
    redis.kill();
    n[1].until_bus("down").await;
    let res = n[1].http("GET", LOBBY, Some(ADMIN), "").await;
    assert_eq!(res.status, 503, "{res:?}");
    assert_eq!(res.json()["error"], "unavailable", "{res:?}");
    assert!(res.headers.get("retry-after").is_some_and(|s| s.parse::<u64>().is_ok()), "{res:?}");
    drop((alice_a, bob, alice_c));
}

async fn admin_status(node: &Node, path: &str) -> u16 {
    node.http("GET", path, Some(ADMIN), "").await.status
}
