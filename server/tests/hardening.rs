//! Hardening of the server's transport (issue 10, items 10, 11 and 14): what the WebSocket layer
//! refuses and how, slow or silent TCP peers, and the file-descriptor budget.
//!
//! Each test starts its own server on a free port of 127.0.0.1 through `app::start`, as the
//! binary does; the last ones run the binary itself under a low `ulimit -n`.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

use switchboard_testkit::ws::{Client, WAIT, eventually, http_request, http_status};

use switchboard_server::auth::{Claims, Keys};

mod support;

use support::{ADMIN, SECRET, Server};

impl Server {
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
    // The hub hears of it just after the close frame went out.
    eventually("the hub to forget the connection", || async {
        server.healthz().await["connections"] == 0
    })
    .await;
    // Another client is unaffected.
    let mut other = server.live("bob").await;
    other.sync().await;
}

// ---------------------------------------------------------------------------------------------
// Slow and silent TCP peers (item 10)

/// Reads until the server closes the connection (or resets it) and returns what it sent, or
/// `None` if it was still open after `within`.
async fn read_until_closed(tcp: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let read = tokio::time::timeout(within, async {
        let mut buf = [0u8; 1024];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    read.ok().map(|()| got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_half_sent_requests_are_closed_after_the_header_timeout() {
    let server = Server::start(|s| s.listen.header_read_timeout = Duration::from_millis(300)).await;
    let mut peers = Vec::new();
    for i in 0..10 {
        let mut tcp = TcpStream::connect(server.addr()).await.unwrap();
        if i % 2 == 1 {
            // Headers that never end.
            tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.unwrap();
        }
        peers.push(tcp);
    }
    for tcp in &mut peers {
        let closed = read_until_closed(tcp, WAIT).await;
        assert!(closed.is_some(), "a slow peer was kept open");
    }
    let s = server.running.handle.snapshot().await.unwrap();
    assert_eq!(s.driver.header_timeouts, 10, "{:?}", s.driver);
    // The server still answers everyone else.
    assert_eq!(server.healthz().await["status"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_pending_cap_are_answered_503_and_closed() {
    let server = Server::start(|s| {
        s.listen.max_pending = 3;
        s.listen.header_read_timeout = Duration::from_secs(60);
    })
    .await;
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(TcpStream::connect(server.addr()).await.unwrap());
    }
    // The listener accepts in order: the fourth finds every pending slot taken.
    let mut extra = TcpStream::connect(server.addr()).await.unwrap();
    let answer = read_until_closed(&mut extra, WAIT).await.expect("the extra connection is closed");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 503"), "{answer}");
    // The three are still open.
    for tcp in &mut silent {
        assert!(read_until_closed(tcp, Duration::from_millis(200)).await.is_none());
    }
    let s = server.running.handle.snapshot().await.unwrap();
    assert!(s.driver.pending_refused >= 1, "{:?}", s.driver);
    // A slot frees when one of them goes.
    drop(silent.pop());
    eventually("a pending slot to free", || async {
        let mut tcp = TcpStream::connect(server.addr()).await.unwrap();
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let got = read_until_closed(&mut tcp, WAIT).await.unwrap_or_default();
        got.starts_with(b"HTTP/1.1 200")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgraded_websockets_do_not_count_as_pending() {
    let server = Server::start(|s| s.listen.max_pending = 2).await;
    let mut clients = Vec::new();
    for i in 0..5 {
        clients.push(server.live(&format!("user{i}")).await);
    }
    assert_eq!(server.healthz().await["connections"], 5);
    let s = server.running.handle.snapshot().await.unwrap();
    assert_eq!(s.driver.pending_refused, 0, "{:?}", s.driver);
}

// ---------------------------------------------------------------------------------------------
// POST /publish bodies: bounded in time and size

/// A `POST /publish` with the admin key whose headers announce `length` bytes of body, followed
/// by `body` (which may be shorter).
async fn publish_raw(addr: SocketAddr, length: usize, body: &[u8]) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN}\r\n\
         Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(body).await.unwrap();
    tcp
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_body_that_trickles_in_is_cut_off_with_408() {
    use switchboard_server::http::PublishBody;
    let timeout = Duration::from_millis(300);
    let server =
        Server::start(|s| s.publish_body = PublishBody { timeout, ..s.publish_body }).await;
    // Ten bytes of the 10,000 announced, then one more every 100 ms: never idle for long, but
    // never done either.
    let mut tcp = publish_raw(server.addr(), 10_000, br#"{"tenant":"#).await;
    let trickle = async {
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if tcp.write_all(b" ").await.is_err() {
                break;
            }
        }
    };
    let started = std::time::Instant::now();
    tokio::time::timeout(WAIT, trickle).await.expect("the server stops reading");
    let answer = read_until_closed(&mut tcp, WAIT).await.expect("the connection is closed");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_timeout"), "{answer}");
    assert!(started.elapsed() < timeout * 10, "cut off after {:?}", started.elapsed());
    assert_eq!(server.running.http.publish_body_timeouts.load(Ordering::Relaxed), 1);
    // Nothing was published, and the server answers everyone else.
    let s = server.running.handle.snapshot().await.unwrap();
    assert_eq!(s.hub.publishes, 0);
    let ok = http_request(server.addr(), "POST", "/publish", Some(ADMIN), NOTICE).await;
    assert_eq!(ok.status, 200, "{ok:?}");
}

const NOTICE: &str = r#"{"tenant":"acme","kind":"notice"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_body_over_the_limit_is_refused_with_413() {
    use switchboard_server::http::PublishBody;
    let server =
        Server::start(|s| s.publish_body = PublishBody { max_bytes: 1024, ..s.publish_body }).await;
    let big = format!(r#"{{"tenant":"acme","kind":"notice","data":"{}"}}"#, "x".repeat(2000));
    let res = http_request(server.addr(), "POST", "/publish", Some(ADMIN), &big).await;
    assert_eq!(res.status, 413, "{res:?}");
    assert_eq!(res.json()["error"], "too_large");
    // Announced as too large: refused at once, without waiting for the body.
    let mut tcp = publish_raw(server.addr(), 10 << 20, b"{").await;
    let answer = read_until_closed(&mut tcp, WAIT).await.expect("the connection is closed");
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 413"));
    // Chunked, with no length announced: cut off once the limit is passed.
    let mut tcp = TcpStream::connect(server.addr()).await.unwrap();
    let head = format!(
        "POST /publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN}\r\n\
         Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{big}\r\n",
        big.len()
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let answer = read_until_closed(&mut tcp, WAIT).await.expect("the connection is closed");
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 413"));
    // Within the limit, as before.
    let ok = http_request(server.addr(), "POST", "/publish", Some(ADMIN), NOTICE).await;
    assert_eq!(ok.status, 200, "{ok:?}");
    let metrics = http_request(server.addr(), "GET", "/metrics", None, "").await.body;
    assert!(
        metrics.contains(r#"switchboard_http_publish_requests_total{outcome="too_large"} 3"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"switchboard_http_publish_requests_total{outcome="rejected"} 0"#));
}

// ---------------------------------------------------------------------------------------------
// The file-descriptor budget (item 11)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_over_the_cap_get_503_while_http_still_answers() {
    let server = Server::start(|s| s.driver.max_connections = Some(2)).await;
    let _a = server.live("alice").await;
    let _b = server.live("bob").await;
    let refused = server.ws("carol").await.err().expect("over the cap");
    assert_eq!(http_status(refused), 503);
    let health = server.healthz().await;
    assert_eq!(health["connections"], 2, "{health}");
    let metrics = http_request(server.addr(), "GET", "/metrics", None, "").await;
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.body.contains("switchboard_connects_refused_capacity_total 1"),
        "{}",
        metrics.body
    );
    let publish = http_request(
        server.addr(),
        "POST",
        "/publish",
        Some(ADMIN),
        r#"{"tenant":"acme","kind":"notice"}"#,
    )
    .await;
    assert_eq!(publish.status, 200, "{publish:?}");
    // A slot frees when a connection's task ends.
    drop(_a);
    eventually("a connection slot to free", || async { server.ws("carol").await.is_ok() }).await;
}

/// The `switchboard` binary, started under `ulimit -n <fds>` on a free port; killed on drop.
struct Binary {
    child: std::process::Child,
    addr: SocketAddr,
    banner: Vec<String>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Binary {
    fn start(fds: u32, flags: &[&str]) -> Binary {
        use std::io::{BufRead, BufReader, Read};
        use std::process::{Command, Stdio};
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!("ulimit -n {fds} && exec \"$0\" \"$@\""))
            .arg(env!("CARGO_BIN_EXE_switchboard"))
            .args(["--listen", "127.0.0.1:0", "--jwt-secret", SECRET, "--admin-key", ADMIN])
            .args(flags)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sh runs the binary");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut banner = Vec::new();
        let mut line = String::new();
        while stdout.read_line(&mut line).unwrap_or(0) > 0 {
            banner.push(std::mem::take(&mut line).trim_end().to_owned());
            if banner.last().is_some_and(|l| l.starts_with("Ctrl-C")) {
                break;
            }
        }
        let addr = banner
            .iter()
            .find_map(|l| l.strip_prefix("switchboard listening on http://"))
            .unwrap_or_else(|| panic!("no address in {banner:?}"))
            .parse()
            .unwrap();
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let mut pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = pipe.read(&mut buf) {
                sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Binary { child, addr, banner, stderr }
    }

    fn token(&self, user: &str) -> String {
        Keys::new(SECRET.as_bytes()).unwrap().sign(&Claims::new(
            "acme",
            user,
            Duration::from_secs(3600),
        ))
    }

    /// Tries a WebSocket; `Ok` if it opened, else the HTTP status it was refused with (0: the
    /// connection was closed without an answer).
    async fn ws(&self, user: &str) -> Result<Client, u16> {
        let url = format!("ws://{}/ws?token={}", self.addr, self.token(user));
        let stream = TcpStream::connect(self.addr).await.unwrap();
        let attempt = tokio::time::timeout(WAIT, tokio_tungstenite::client_async(url, stream));
        match attempt.await.expect("every client gets an answer") {
            Ok((ws, _)) => Ok(Client { ws }),
            Err(tokio_tungstenite::tungstenite::Error::Http(res)) => Err(res.status().as_u16()),
            Err(_) => Err(0),
        }
    }

    async fn metric(&self, name: &str) -> u64 {
        let res = http_request(self.addr, "GET", "/metrics", None, "").await;
        assert_eq!(res.status, 200);
        res.body
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {}", res.body))
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_low_fd_limit_extra_clients_get_503_and_healthz_answers() {
    let server = Binary::start(64, &["--header-read-timeout-secs", "1"]);
    let limits = server.banner.iter().find(|l| l.starts_with("connections:")).unwrap();
    assert!(
        limits.contains("at most 32 WebSockets (RLIMIT_NOFILE 64 minus a reserve of 32"),
        "{limits}"
    );
    // More WebSockets than the cap: the first 32 open, every other one is answered 503.
    let mut open = Vec::new();
    let mut refused = 0;
    for i in 0..40 {
        match server.ws(&format!("user{i}")).await {
            Ok(client) => open.push(client),
            Err(status) => {
                assert_eq!(status, 503, "client {i}");
                refused += 1;
            }
        }
    }
    assert_eq!((open.len(), refused), (32, 8));
    let health = http_request(server.addr, "GET", "/healthz", None, "").await;
    assert_eq!(health.status, 200, "{health:?}");
    assert_eq!(health.json()["connections"], 32);
    assert_eq!(server.metric("switchboard_connects_refused_capacity_total").await, 8);
    let publish = http_request(
        server.addr,
        "POST",
        "/publish",
        Some(ADMIN),
        r#"{"tenant":"acme","kind":"notice"}"#,
    )
    .await;
    assert_eq!(publish.status, 200, "{publish:?}");

    // A flood of silent TCP connections on top: beyond the pending cap each is answered (503 or
    // closed) at once, none waits in the backlog for a descriptor.
    let mut flood = Vec::new();
    for _ in 0..60 {
        flood.push(TcpStream::connect(server.addr).await.unwrap());
    }
    for tcp in &mut flood {
        assert!(read_until_closed(tcp, WAIT).await.is_some(), "a client got no answer");
    }
    assert_eq!(server.metric("switchboard_accept_fd_exhausted_total").await, 0);
    assert!(server.metric("switchboard_http_pending_refused_total").await >= 40);
    let health = http_request(server.addr, "GET", "/healthz", None, "").await;
    assert_eq!(health.status, 200, "{health:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_fds_is_logged_counted_and_survived() {
    // Caps above what 64 descriptors hold, so that accept itself fails with EMFILE.
    let server = Binary::start(
        64,
        &[
            "--header-read-timeout-secs",
            "1",
            "--max-connections",
            "1000",
            "--max-pending-connections",
            "1000",
        ],
    );
    let mut flood = Vec::new();
    for _ in 0..80 {
        flood.push(TcpStream::connect(server.addr).await.unwrap());
    }
    // Every one is accepted in the end and closed by the header timeout.
    for tcp in &mut flood {
        assert!(read_until_closed(tcp, WAIT).await.is_some(), "a client was never served");
    }
    drop(flood);
    let health = http_request(server.addr, "GET", "/healthz", None, "").await;
    assert_eq!(health.status, 200, "{health:?}");
    let exhausted = server.metric("switchboard_accept_fd_exhausted_total").await;
    assert!(exhausted >= 1, "accept never failed: the test did not reach the limit");
    let log = server.stderr.lock().unwrap().clone();
    let lines = log.matches("out of file descriptors").count();
    assert!(lines >= 1 && lines as u64 <= exhausted, "{lines} lines for {exhausted}: {log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_banner_names_no_variable_it_did_not_export() {
    let server = Binary::start(1024, &[]);
    let banner = server.banner.join("\n");
    assert!(!banner.contains("$ALICE") && !banner.contains("$ADMIN"), "{banner}");
    assert!(banner.contains("/metrics"), "{banner}");
}
