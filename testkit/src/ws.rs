//! A small WebSocket and HTTP client for the end-to-end tests of the servers
//! (`server/tests/e2e.rs`, `examples/smol_server/tests/e2e.rs`).

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{self, Message};

/// How long any single expected event may take before a test fails.
pub const WAIT: Duration = Duration::from_secs(10);

pub async fn eventually<F: Future<Output = bool>>(what: &str, check: impl Fn() -> F) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub struct Client {
    pub ws: WebSocketStream<TcpStream>,
}

impl Client {
    /// The next WebSocket message that is not a transport ping or pong.
    pub async fn next_message(&mut self) -> Message {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for a frame")
                .expect("socket ended without a close frame")
                .expect("socket error");
            match msg {
                Message::Ping(_) | Message::Pong(_) => continue,
                other => return other,
            }
        }
    }

    /// The next text frame, as JSON.
    pub async fn recv(&mut self) -> Value {
        match self.next_message().await {
            Message::Text(text) => serde_json::from_str(&text).expect("frames are JSON"),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// The next frame that is not a `pong` answer.
    pub async fn recv_event(&mut self) -> Value {
        loop {
            let f = self.recv().await;
            if f["type"] != "pong" {
                return f;
            }
        }
    }

    pub async fn send(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).await.unwrap();
    }

    /// Sends a `ping` and waits for its `pong`, asserting that nothing else arrived before it: the
    /// hub handles frames in order, so everything published before the ping is already here.
    pub async fn sync(&mut self) {
        self.send(json!({"type": "ping"})).await;
        let f = self.recv().await;
        assert_eq!(f["type"], "pong", "expected nothing but the pong, got {f}");
    }

    /// Reads until the close frame and returns its code.
    pub async fn close_code(&mut self) -> u16 {
        loop {
            match self.next_message().await {
                Message::Close(Some(frame)) => {
                    // Complete the closing handshake as a well-behaved client does: flushing
                    // sends the close reply tungstenite queued.
                    let _ = self.ws.flush().await;
                    return u16::from(frame.code);
                }
                Message::Close(None) => panic!("close frame without a code"),
                _ => continue,
            }
        }
    }
}

pub fn http_status(err: tungstenite::Error) -> u16 {
    match err {
        tungstenite::Error::Http(res) => res.status().as_u16(),
        other => panic!("expected an HTTP refusal, got {other:?}"),
    }
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

impl Response {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// A minimal HTTP/1.1 client: one JSON request per connection, with the admin or user key as
/// a bearer token if given.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: &str,
) -> Response {
    let auth = auth.map(|a| format!("Bearer {a}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(auth) = &auth {
        headers.push(("Authorization", auth.as_str()));
    }
    http_request_with(addr, method, path, &headers, body).await
}

/// One request with exactly these headers (plus `Host`, `Connection: close` and
/// `Content-Length`), read until the server closes; a chunked body is decoded.
pub async fn http_request_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Response {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra}\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut raw)).await.unwrap().unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, rest) = raw.split_once("\r\n\r\n").expect("a complete response");
    let mut lines = head.lines();
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let body = if headers.get("transfer-encoding").is_some_and(|v| v == "chunked") {
        let mut body = String::new();
        let mut rest = rest;
        loop {
            let (size, after) = rest.split_once("\r\n").unwrap();
            let size = usize::from_str_radix(size.trim(), 16).unwrap();
            if size == 0 {
                break;
            }
            body.push_str(&after[..size]);
            rest = &after[size + 2..];
        }
        body
    } else {
        rest.to_owned()
    };
    Response { status, headers, body }
}

pub const RUN: [&str; 7] = [
    "agent_started",
    "agent_thinking",
    "agent_thinking",
    "agent_thinking",
    "tool_executing",
    "tool_completed",
    "agent_completed",
];

/// Reads one agent run's events off a connection.
pub async fn read_run(client: &mut Client) -> Vec<Value> {
    let mut events = Vec::new();
    loop {
        let f = client.recv_event().await;
        let done = f["type"] == "agent_completed";
        events.push(f);
        if done {
            return events;
        }
    }
}
