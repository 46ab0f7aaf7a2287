//! Flags of the binary that change what clients see, checked on a real `switchboard` process.

mod procs;

use procs::{Node, NodeOpts, recv_any, token};
use serde_json::{Value, json};
use switchboard_testkit::ws::Client;

/// A connection of `user`, and its frames up to and including the pong that answers a ping sent
/// after `connected`.
async fn first_frames(node: &Node, user: &str) -> (Client, Vec<Value>) {
    let mut c = node.ws(&token("acme", user, "free", &[]), None).await.expect("the token connects");
    let connected = recv_any(&mut c).await;
    assert_eq!(connected["type"], "connected", "{connected}");
    c.send(json!({"type": "ping"})).await;
    let mut frames = Vec::new();
    loop {
        let f = recv_any(&mut c).await;
        let pong = f["type"] == "pong";
        frames.push(f);
        if pong {
            return (c, frames);
        }
    }
}

#[tokio::test]
async fn tenant_presence_is_off_by_default_and_on_with_its_flag() {
    let off = Node::start("single", None, &NodeOpts::default());
    let (_alice, frames) = first_frames(&off, "alice").await;
    assert!(frames.iter().all(|f| f["type"] != "presence"), "{frames:?}");

    let opts = NodeOpts { args: vec!["--tenant-presence".into()], ..NodeOpts::default() };
    let on = Node::start("single", None, &opts);
    let (_alice_on, frames) = first_frames(&on, "alice").await;
    assert!(frames.iter().any(|f| f["type"] == "presence" && f["scope"] == "t"), "{frames:?}");
    // Members are listed as last announced: alice's join goes out with the next batch (250 ms).
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let (_bob, frames) = first_frames(&on, "bob").await;
    let presence: Vec<_> = frames.iter().filter(|f| f["type"] == "presence").collect();
    assert_eq!(presence.len(), 1, "{frames:?}");
    assert_eq!((&presence[0]["scope"], &presence[0]["count"]), (&json!("t"), &json!(2)));
    let users: Vec<_> =
        presence[0]["members"].as_array().unwrap().iter().map(|m| m["user"].clone()).collect();
    assert_eq!(users, [json!("alice")], "{frames:?}");
}
