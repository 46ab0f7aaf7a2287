//! The WebSocket harness of the end-to-end test files (`e2e.rs`, `e2e_protocol.rs`): tokens,
//! live connections, snapshots, and plain HTTP requests against a [`Server`].

#![allow(dead_code)]

use std::time::Duration;

use serde_json::{Value, json};
use switchboard::Envelope;
use switchboard_server::auth::Claims;
use switchboard_server::driver;
use switchboard_testkit::ws::{Client, Response, eventually, http_request};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite;

use crate::support::Server;

impl Server {
    pub(crate) fn token(&self, tenant: &str, user: &str, roles: &[&str], rooms: &[&str]) -> String {
        let claims = Claims {
            roles: roles.iter().map(|r| r.to_string()).collect(),
            rooms: rooms.iter().map(|r| r.to_string()).collect(),
            ..Claims::new(tenant, user, Duration::from_secs(3600))
        };
        self.keys.sign(&claims)
    }

    /// Opens a WebSocket with `?token=`; `rcvbuf` shrinks the client's receive buffer.
    pub(crate) async fn ws_with(
        &self,
        token: Option<&str>,
        rcvbuf: Option<u32>,
    ) -> Result<Client, tungstenite::Error> {
        let url = match token {
            Some(t) => format!("ws://{}/ws?token={t}", self.addr()),
            None => format!("ws://{}/ws", self.addr()),
        };
        let socket = TcpSocket::new_v4().unwrap();
        if let Some(size) = rcvbuf {
            socket.set_recv_buffer_size(size).unwrap();
        }
        let stream = socket.connect(self.addr()).await.unwrap();
        let (ws, _) = tokio_tungstenite::client_async(url, stream).await?;
        Ok(Client { ws })
    }

    /// A connection that has read its `connected` frame, the `joined` announcements of the
    /// rooms its token names, and gone live.
    pub(crate) async fn live(&self, token: &str) -> (Client, Value) {
        let mut c = self.ws_with(Some(token), None).await.expect("valid token connects");
        let connected = c.recv().await;
        assert_eq!(connected["type"], "connected", "{connected}");
        c.send(json!({"type": "ping"})).await;
        loop {
            let f = c.recv().await;
            match f["type"].as_str() {
                Some("pong") => break,
                Some("joined") => {
                    assert!(f["stream"].as_str().is_some_and(|s| s.starts_with("r:")))
                }
                // The server runs room presence: each `joined` is followed by the room's.
                Some("presence") => {
                    assert!(f["scope"].as_str().is_some_and(|s| s.starts_with("r:")))
                }
                _ => panic!("expected joined and presence frames, then the pong; got {f}"),
            }
        }
        (c, connected)
    }

    pub(crate) async fn snapshot(&self) -> driver::Snapshot {
        self.running.handle.snapshot().await.expect("hub task runs")
    }

    /// Polls the hub's stats until `done` holds.
    pub(crate) async fn until(&self, what: &str, done: impl Fn(&driver::Snapshot) -> bool) {
        eventually(what, || async { done(&self.snapshot().await) }).await
    }

    pub(crate) async fn publish(&self, env: Envelope) -> switchboard::Published {
        self.running.handle.publish(env).await.expect("publish accepted")
    }

    pub(crate) async fn http(
        &self,
        method: &str,
        path: &str,
        auth: Option<&str>,
        body: &str,
    ) -> Response {
        http_request(self.addr(), method, path, auth, body).await
    }
}
