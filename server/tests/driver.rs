//! The driver's plumbing over real sockets: what connection tasks flush reaches the hub's
//! `written` accounting (settled by the hub task from the shared "moved" list, no command per
//! flush), for WebSocket and Server-Sent Events connections alike.

use serde_json::json;
use switchboard::{Envelope, EventKind, Target};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use switchboard_testkit::ws::WAIT;

mod e2e_harness;
mod support;

use support::Server;

fn note(tenant: &str, user: &str, n: u64) -> Envelope {
    Envelope::new(
        Target::User { tenant: tenant.into(), user: user.into() },
        EventKind::custom("note"),
    )
    .data(json!({ "n": n, "pad": "x".repeat(200) }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_websocket_tasks_flush_is_settled_as_written_until_nothing_is_outstanding() {
    let server = Server::start(|_| {}).await;
    let (mut alice, _) = server.live(&server.token("acme", "alice", &[], &[])).await;
    let before = server.snapshot().await.hub;
    for n in 0..300 {
        server.publish(note("acme", "alice", n)).await;
    }
    for n in 0..300 {
        let f = alice.recv_event().await;
        assert_eq!((f["type"].as_str(), &f["data"]["n"]), (Some("note"), &json!(n)));
    }
    // Every byte handed to the connection was flushed; the hub hears of all of it.
    settled(&server, &before, 300).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_publish_reaches_a_connection_in_one_write() {
    let server = Server::start(|_| {}).await;
    let (mut alice, _) = server.live(&server.token("acme", "alice", &[], &[])).await;
    let before = server.snapshot().await;
    let batch = (0..20).map(|n| note("acme", "alice", n)).collect();
    let answers = server.running.handle.publish_batch(batch).await;
    assert_eq!(answers.len(), 20);
    for (n, answer) in answers.iter().enumerate() {
        let receipt = answer.as_ref().unwrap_or_else(|e| panic!("envelope {n}: {e:?}"));
        assert_eq!(receipt.published.delivered, 1, "envelope {n}");
    }
    for n in 0..20 {
        let f = alice.recv_event().await;
        assert_eq!((f["type"].as_str(), &f["data"]["n"]), (Some("note"), &json!(n)));
    }
    settled(&server, &before.hub, 20).await;
    // The hub took the batch in one turn and flushed alice's outbox once, after the last push
    // (here its own direct write; without one, a single wake of her task): the twenty frames
    // went out in one write, not one system call each.
    let flushes = server.snapshot().await.driver.flushes - before.driver.flushes;
    assert_eq!(flushes, 1, "20 frames in {flushes} writes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_the_hub_writes_itself_never_interleave_with_the_tasks_own_writes() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    // A reader with a small receive buffer: the hub task's direct writes fall short and hand
    // over to the connection's task. The client's pings make the task's transport queue pongs
    // between them. Every note must arrive whole and in order, and every ping be answered.
    let server = Server::start(|_| {}).await;
    let token = server.token("acme", "alice", &[], &[]);
    let mut alice = server.ws_with(Some(&token), Some(4096)).await.unwrap();
    assert_eq!(alice.recv().await["type"], "connected");
    // Live once its first message is answered (until then the hub keeps what it publishes).
    alice.send(json!({"type": "ping"})).await;
    assert_eq!(alice.recv().await["type"], "pong");
    let handle = server.running.handle.clone();
    let publisher = tokio::spawn(async move {
        for batch in 0..20u64 {
            let notes = (0..15).map(|i| {
                let env = note("acme", "alice", batch * 15 + i);
                env.data(json!({ "n": batch * 15 + i, "pad": "y".repeat(2000) }))
            });
            for answer in handle.publish_batch(notes.collect()).await {
                assert_eq!(answer.expect("published").published.delivered, 1);
            }
        }
    });
    let (mut next, mut pings, mut pongs) = (0u64, 0u32, 0u32);
    tokio::time::timeout(WAIT, async {
        while next < 300 || pongs < pings {
            match alice.ws.next().await.expect("open").expect("readable") {
                Message::Text(text) => {
                    let f: serde_json::Value = serde_json::from_str(&text).expect("whole JSON");
                    if f["type"] == "note" {
                        assert_eq!(f["data"]["n"], next, "in order");
                        assert_eq!(f["data"]["pad"].as_str().map(str::len), Some(2000));
                        next += 1;
                        if next % 7 == 0 {
                            alice.ws.send(Message::Ping(vec![1, 2, 3].into())).await.unwrap();
                            pings += 1;
                        }
                    }
                }
                Message::Pong(data) => {
                    assert_eq!(&data[..], &[1, 2, 3]);
                    pongs += 1;
                }
                _ => {}
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("stuck at note {next}, {pongs} of {pings} pongs"));
    publisher.await.unwrap();
    assert_eq!((next, pongs), (300, pings));
}

/// A broadcast to more connections than the hub task writes itself (64) goes to writer tasks in
/// batches, which write straight to the sockets. Every connection gets every frame whole and in
/// order, including one whose small receive buffer makes the writers' writes fall short (its rest
/// goes through its own task), and the hub hears of every byte written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_broadcast_is_written_by_writer_tasks_whole_in_order_and_settled() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    const CLIENTS: usize = 150;
    const NOTES: u64 = 40;
    let server = Server::start(|_| {}).await;
    let mut readers = Vec::new();
    for i in 0..CLIENTS {
        let (client, _) = server.live(&server.token("acme", &format!("u{i}"), &[], &[])).await;
        readers.push(client);
    }
    let token = server.token("acme", "small", &[], &[]);
    let mut small = server.ws_with(Some(&token), Some(4096)).await.unwrap();
    assert_eq!(small.recv().await["type"], "connected");
    small.send(json!({"type": "ping"})).await;
    assert_eq!(small.recv().await["type"], "pong");
    readers.push(small);
    let before = server.snapshot().await;
    // Every reader reads as it goes, each at its own pace.
    let reading: Vec<_> = readers
        .into_iter()
        .enumerate()
        .map(|(i, mut client)| {
            tokio::spawn(async move {
                let mut next = 0u64;
                while next < NOTES {
                    let msg = tokio::time::timeout(WAIT, client.ws.next()).await;
                    let msg = msg.unwrap_or_else(|_| panic!("reader {i} stuck at note {next}"));
                    let Message::Text(text) = msg.expect("open").expect("readable") else {
                        continue;
                    };
                    let f: serde_json::Value = serde_json::from_str(&text).expect("whole JSON");
                    assert_eq!((f["type"].as_str(), &f["data"]["n"]), (Some("note"), &json!(next)));
                    assert_eq!(f["data"]["pad"].as_str().map(str::len), Some(3000));
                    next += 1;
                }
                // Kept open until the hub has settled: a connection gone meanwhile takes
                // whatever a writer task names after its `Gone` out of the count.
                client
            })
        })
        .collect();
    for batch in 0..NOTES / 4 {
        let notes = (0..4).map(|i| {
            let n = batch * 4 + i;
            Envelope::new(Target::tenant("acme"), EventKind::custom("note"))
                .data(json!({ "n": n, "pad": "z".repeat(3000) }))
        });
        for answer in server.running.handle.publish_batch(notes.collect()).await {
            assert_eq!(answer.expect("published").published.delivered, CLIENTS + 1);
        }
    }
    let mut clients = Vec::new();
    for reader in reading {
        clients.push(reader.await.expect("every reader got every note"));
    }
    let after = server.snapshot().await;
    let batches = after.driver.writer_batches - before.driver.writer_batches;
    // 151 connections: at least two full batches of 64 per turn that reached them all.
    assert!(batches >= 2, "{batches} batches went to writer tasks");
    settled(&server, &before.hub, NOTES * (CLIENTS as u64 + 1)).await;
    drop(clients);
}

/// Checks that `notes` notes (200+ bytes each) were handed over since `before`, then waits
/// until the hub has heard that every byte it handed over was written.
async fn settled(server: &Server, before: &switchboard::HubStats, notes: u64) {
    let delivered = server.snapshot().await.hub.bytes_delivered - before.bytes_delivered;
    assert!(
        delivered > notes * 200,
        "{delivered} bytes handed over for {notes} notes of 200+ bytes"
    );
    server
        .until("written catches up with delivered", |s| {
            s.hub.bytes_written == s.hub.bytes_delivered
                && s.hub.bytes_written - before.bytes_written >= delivered
        })
        .await;
}

/// Reads from `tcp` into `seen` until `done` holds for what was read so far.
async fn read_until(tcp: &mut TcpStream, seen: &mut String, done: impl Fn(&str) -> bool) {
    let mut buf = vec![0u8; 64 * 1024];
    tokio::time::timeout(WAIT, async {
        while !done(seen) {
            let n = tcp.read(&mut buf).await.unwrap();
            assert!(n > 0, "the event stream ended early: {seen}");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out; read so far: {seen}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_an_sse_body_takes_is_settled_as_written_and_its_end_reports_the_connection_gone() {
    let server = Server::start(|_| {}).await;
    let token = server.token("acme", "bob", &[], &[]);
    let mut tcp = TcpStream::connect(server.addr()).await.unwrap();
    let request = format!("GET /sse?token={token} HTTP/1.1\r\nhost: test\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut seen = String::new();
    read_until(&mut tcp, &mut seen, |s| s.contains(r#""type":"connected""#)).await;
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    assert!(seen.contains("text/event-stream"), "{seen}");
    server.until("bob is connected", |s| s.driver.connections == 1).await;

    let before = server.snapshot().await.hub;
    for n in 0..100 {
        server.publish(note("acme", "bob", n)).await;
    }
    read_until(&mut tcp, &mut seen, |s| s.contains(r#""n":99"#)).await;
    assert_eq!(seen.matches(r#""type":"note""#).count(), 100, "each note once");
    settled(&server, &before, 100).await;

    // The client goes away: the body's end reports the connection gone.
    drop(tcp);
    server.until("bob is gone", |s| s.driver.connections == 0).await;
}
