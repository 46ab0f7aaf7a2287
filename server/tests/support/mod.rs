//! The harness every server test file shares: a server of the library's own `app::start` on a
//! free port of 127.0.0.1, with a secret and an admin key long enough to be accepted. Each test
//! file adds the methods it needs in an `impl Server` block of its own.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use switchboard_server::app::{self, Running, Settings};
use switchboard_server::auth::Keys;

pub const SECRET: &str = "server-test-secret, at least thirty-two bytes";
pub const ADMIN: &str = "server-test-admin-key, 16+ bytes";

pub struct Server {
    pub running: Running,
    pub keys: Keys,
}

impl Server {
    /// Starts a server with the defaults, a brisk demo agent, and what `tweak` changes.
    pub async fn start(tweak: impl FnOnce(&mut Settings)) -> Server {
        let mut settings = Settings::new(SECRET, ADMIN);
        settings.agent_pace = Duration::from_millis(5);
        tweak(&mut settings);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let running = app::start(listener, settings).await.unwrap();
        Server { running, keys: Keys::new(SECRET.as_bytes()).unwrap() }
    }

    pub fn addr(&self) -> SocketAddr {
        self.running.addr
    }
}
