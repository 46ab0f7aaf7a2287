//! Hardening of the server's transport (issue 10, items 10, 11 and 14): what the WebSocket layer
//! refuses and how, slow or silent TCP peers, and the file-descriptor budget.
//!
//! Each test starts its own server on a free port of 127.0.0.1 through `app::start`, as the
//! binary does; the last ones run the binary itself under a low `ulimit -n`.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

use switchboard_testkit::ws::{Client, WAIT, http_request};

use switchboard_server::app::{self, Running, Settings};
use switchboard_server::auth::{Claims, Keys};

const SECRET: &str = "hardening-test-secret-of-32-bytes-or-more";
const ADMIN: &str = "hardening-admin-key";

struct Server {
    running: Running,
    keys: Keys,
}

impl Server {
    async fn start(tweak: impl FnOnce(&mut Settings)) -> Server {
        let mut settings = Settings::new(SECRET, ADMIN);
        tweak(&mut settings);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let running = app::start(listener, settings).await.unwrap();
        Server { running, keys: Keys::new(SECRET.as_bytes()) }
    }

    fn addr(&self) -> SocketAddr {
        self.running.addr
    }

    fn token(&self, user: &str) -> String {
        self.keys.sign(&Claims::new("acme", user, Duration::from_secs(3600)))
    }

    async fn ws(&self, user: &str) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
        let url = format!("ws://{}/ws?token={}", self.addr(), self.token(user));
        let stream = TcpStream::connect(self.addr()).await.unwrap();
        let (ws, _) = tokio_tungstenite::client_async(url, stream).await?;
        Ok(Client { ws })
    }

    /// A connection past its `connected` frame and its resume window.
    async fn live(&self, user: &str) -> Client {
        let mut c = self.ws(user).await.expect("valid token connects");
        assert_eq!(c.recv().await["type"], "connected");
        c.sync().await;
        c
    }

    async fn healthz(&self) -> Value {
        let res = http_request(self.addr(), "GET", "/healthz", None, "").await;
        assert_eq!(res.status, 200, "{res:?}");
        res.json()
    }
}

// ---------------------------------------------------------------------------------------------
// Frames the transport refuses (item 14)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_far_over_the_limit_is_closed_with_1009() {
    let server = Server::start(|_| {}).await;
    let mut c = server.live("alice").await;
    let huge = format!("{{\"type\":\"ping\",\"pad\":\"{}\"}}", "x".repeat(10 << 20));
    // The server stops reading at the frame's header, so the send may fail half-way.
    let _ = tokio::time::timeout(WAIT, c.ws.send(Message::text(huge))).await;
    assert_eq!(c.close_code().await, 1009);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_a_little_over_the_hub_limit_gets_an_error_frame_and_stays_open() {
    let server = Server::start(|s| s.hub.max_frame_bytes = 1024).await;
    assert_eq!(server.running.handle.max_message_bytes(), 16 * 1024);
    let mut c = server.live("alice").await;
    let big = format!("{{\"type\":\"ping\",\"pad\":\"{}\"}}", "x".repeat(4096));
    c.send(serde_json::from_str(&big).unwrap()).await;
    let f = c.recv().await;
    assert_eq!(f["type"], "error", "{f}");
    assert_eq!(f["code"], "frame_too_large", "{f}");
    c.sync().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_that_is_not_utf8_is_closed_with_1007() {
    let server = Server::start(|_| {}).await;
    let mut c = server.live("alice").await;
    let bad = Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
    c.ws.send(Message::Frame(bad)).await.unwrap();
    assert_eq!(c.close_code().await, 1007);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_frame_is_closed_with_1003_and_never_reaches_the_hub() {
    let server = Server::start(|_| {}).await;
    let mut c = server.live("alice").await;
    let received = server.running.handle.snapshot().await.unwrap().hub.frames_received;
    // A valid protocol frame, but binary: it is not read as text.
    c.ws.send(Message::binary(json!({"type": "ping"}).to_string())).await.unwrap();
    assert_eq!(c.close_code().await, 1003);
    let s = server.running.handle.snapshot().await.unwrap();
    assert_eq!(s.hub.frames_received, received, "the binary frame reached the hub");
    assert_eq!(server.healthz().await["connections"], 0);
    // Another client is unaffected.
    let mut other = server.live("bob").await;
    other.sync().await;
}
