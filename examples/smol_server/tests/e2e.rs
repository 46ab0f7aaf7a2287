//! The smol server over real WebSockets on loopback: the same JWT check and the same wire
//! protocol as the tokio server, driven by another runtime.

use std::time::Duration;

use futures_util::SinkExt;
use serde_json::json;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use switchboard_smol_example as smol_server;
use switchboard_smol_example::auth::{Claims, Keys};
use switchboard_testkit::ws::{Client, RUN, http_status, read_run};

const SECRET: &str = "smol-test-secret, thirty-two bytes or more";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_smol_server_speaks_the_same_protocol() {
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = std_listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let listener = smol::net::TcpListener::try_from(std_listener).unwrap();
        let keys = smol_server::auth::Keys::new(SECRET.as_bytes()).unwrap();
        let _ = smol::block_on(smol_server::serve(listener, keys, Duration::from_millis(5)));
    });
    let keys = Keys::new(SECRET.as_bytes()).unwrap();
    let connect = |token: Option<String>| async move {
        let url = match token {
            Some(t) => format!("ws://{addr}/ws?token={t}"),
            None => format!("ws://{addr}/ws"),
        };
        let stream = TcpStream::connect(addr).await.unwrap();
        tokio_tungstenite::client_async(url, stream).await.map(|(ws, _)| Client { ws })
    };
    assert_eq!(http_status(connect(None).await.err().expect("refused")), 401);
    let forged = Keys::new(b"another secret, also thirty-two bytes long")
        .unwrap()
        .sign(&Claims::new("acme", "eve", Duration::from_secs(60)));
    assert_eq!(http_status(connect(Some(forged)).await.err().expect("refused")), 401);

    let token = keys.sign(&Claims::new("acme", "alice", Duration::from_secs(3600)));
    let mut alice = connect(Some(token)).await.unwrap();
    let connected = alice.recv().await;
    assert_eq!(
        (connected["type"].as_str(), connected["user"].as_str()),
        (Some("connected"), Some("alice"))
    );
    alice.sync().await;
    alice.send(json!({"type": "message", "thread_id": "t9", "data": {"text": "smol?"}})).await;
    let run = read_run(&mut alice).await;
    let kinds: Vec<&str> = run.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, RUN);
    assert!(run.iter().all(|e| e["thread_id"] == "t9"));
    alice.sync().await;
    // This server verifies no tokens: a refresh is answered with a refusal, not left hanging.
    alice.send(json!({"type": "refresh", "token": "a.b.c"})).await;
    assert_eq!(alice.recv().await["code"], "refresh_refused");
    alice.sync().await;

    // A binary frame is not read as text: the connection is closed with 1003, as on the tokio
    // server, even though its bytes are a valid protocol frame.
    let token = keys.sign(&Claims::new("acme", "bob", Duration::from_secs(3600)));
    let mut bob = connect(Some(token)).await.unwrap();
    assert_eq!(bob.recv().await["type"], "connected");
    bob.sync().await;
    bob.ws.send(Message::binary(json!({"type": "ping"}).to_string())).await.unwrap();
    assert_eq!(bob.close_code().await, 1003);
}
