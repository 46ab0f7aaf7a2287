//! The harness of the multi-process tests: real `switchboard` binaries over a real `redis-server`,
//! each a child process of the test on a free port of 127.0.0.1, stopped by PID (SIGKILL) when
//! the test kills it or drops it. Clients are the test kit's WebSocket client over loopback.
//!
//! Every child also gets `PR_SET_PDEATHSIG` = SIGKILL, so that a test binary that dies without
//! unwinding (a CI timeout, an abort) leaves no server or Redis running on a shared machine.
//! Spawn children from the test's own thread (the body of the `#[tokio::test]`, not a spawned
//! task): that signal fires when the spawning *thread* exits.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::{self, Message};

use switchboard_server::auth::{Claims, Keys};
use switchboard_testkit::ws::{Client, Response, http_request};

/// The JWT secret every node of a test shares.
pub const SECRET: &str = "cluster-process-test-secret, 32+ bytes long";
/// The admin key every node of a test shares.
pub const ADMIN: &str = "cluster-process-test-admin-key";

/// How long anything a test waits for may take on a loaded 2-core machine before the test
/// fails: a process starting, a frame crossing Redis, a node noticing Redis went away or came
/// back. Generous, because it only bounds the failure case; the passing case returns as soon as
/// the condition holds.
pub const DEADLINE: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// Child processes

/// Makes the child die with the test binary (see the module docs).
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec and only calls prctl(2), which is
    // async-signal-safe; it touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Everything a child writes to stdout and stderr, kept for the failure report.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<String>>);

impl Log {
    fn push(&self, line: &str) {
        let mut log = self.0.lock().unwrap();
        log.push_str(line);
        log.push('\n');
    }

    /// The last `max` bytes (cut at a line start).
    fn tail(&self, max: usize) -> String {
        let log = self.0.lock().unwrap();
        if log.len() <= max {
            return log.clone();
        }
        let mut start = log.len() - max;
        while !log.is_char_boundary(start) {
            start += 1;
        }
        let from = log[start..].find('\n').map_or(start, |i| start + i + 1);
        format!("[...]\n{}", &log[from..])
    }

    /// Copies `stream` into the log line by line on a thread of its own, sending the first
    /// line to `first` if given.
    fn drain(
        &self,
        stream: impl Read + Send + 'static,
        first: Option<std::sync::mpsc::Sender<String>>,
    ) {
        let log = self.clone();
        std::thread::spawn(move || {
            let mut first = first;
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                if let Some(tx) = first.take() {
                    let _ = tx.send(line.clone());
                }
                log.push(&line);
            }
        });
    }
}

/// A free TCP port of 127.0.0.1 right now (another process may take it before it is used: the
/// callers check that the server they start is the one that answers).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// SIGKILLs a child and reaps it (nothing happens if it is gone already).
fn kill_child(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

// ---------------------------------------------------------------------------------------------
// Redis

/// A directory under the system's temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(prefix: &str) -> TempDir {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("{prefix}.{}.{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Makes sure `redis-server` is on PATH, installing it with `scripts/redis.sh install` (Debian
/// packages) the first time a test needs it.
fn ensure_redis_installed() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let found = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if found {
            return;
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/redis.sh");
        let status = Command::new("bash").arg(&script).arg("install").status();
        assert!(
            status.is_ok_and(|s| s.success()),
            "redis-server is not on PATH and `scripts/redis.sh install` failed: install Redis 7"
        );
    });
}

/// Asks the Redis on `port` for its `process_id` (INFO server), with a short timeout; `None`
/// if nothing answers.
fn redis_pid(port: u16) -> Option<u32> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream.write_all(b"INFO server\r\n").ok()?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    // A bulk string: `$<len>\r\n<len bytes>\r\n`.
    loop {
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&reply);
        if let Some((head, body)) = text.split_once("\r\n")
            && let Some(len) = head.strip_prefix('$').and_then(|l| l.parse::<usize>().ok())
            && body.len() >= len
        {
            break;
        }
    }
    let text = String::from_utf8_lossy(&reply);
    text.lines().find_map(|l| l.strip_prefix("process_id:")?.trim().parse().ok())
}

/// One `redis-server`, a child of the test.
pub struct Redis {
    child: Option<Child>,
    /// Its port on 127.0.0.1 (kept across restarts).
    pub port: u16,
    persistent: bool,
    dir: TempDir,
    log: Log,
}

impl Redis {
    /// Starts a Redis without persistence (what a restart empties).
    pub fn start() -> Redis {
        Redis::start_with(false)
    }

    /// Starts a Redis that writes every command to its append-only file before answering
    /// (`appendfsync always`), so that one killed with SIGKILL and started again on the same
    /// directory comes back with its data: a Redis that was down, not one that was wiped.
    pub fn start_persistent() -> Redis {
        Redis::start_with(true)
    }

    fn start_with(persistent: bool) -> Redis {
        ensure_redis_installed();
        let mut redis = Redis {
            child: None,
            port: 0,
            persistent,
            dir: TempDir::new("switchboard-redis"),
            log: Log::default(),
        };
        for _ in 0..5 {
            redis.port = free_port();
            if redis.spawn() {
                return redis;
            }
        }
        panic!("could not start redis-server:\n{}", redis.log.tail(4000));
    }

    /// Spawns `redis-server` on `self.port` and waits until it (and not another server) answers;
    /// false if it exited or never answered.
    fn spawn(&mut self) -> bool {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--daemonize", "no", "--logfile", ""])
            .arg("--dir")
            .arg(&self.dir.0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if self.persistent {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        die_with_parent(&mut cmd);
        let mut child = cmd.spawn().expect("spawn redis-server");
        self.log.drain(child.stdout.take().unwrap(), None);
        self.log.drain(child.stderr.take().unwrap(), None);
        let pid = child.id();
        let deadline = Instant::now() + DEADLINE;
        while Instant::now() < deadline {
            if redis_pid(self.port) == Some(pid) {
                self.child = Some(child);
                return true;
            }
            if child.try_wait().unwrap().is_some() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        kill_child(&mut child);
        false
    }

    /// The URL the nodes are given.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL: no shutdown, no final save; clients see their connections reset.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_child(&mut child);
        }
    }

    /// SIGSTOP: the process keeps its sockets open but answers nothing, like a Redis behind a
    /// link that went silent; the kernel still accepts connections for it. `resume` undoes it.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after [`Redis::pause`]: it serves what queued up meanwhile, then goes on.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.pid().expect("a running Redis").to_string();
        let status = Command::new("kill").args([sig, &pid]).status().expect("run kill");
        assert!(status.success(), "kill {sig} {pid}");
    }

    /// Starts it again on the same port and directory: empty unless it is persistent. Retries
    /// for a while if the port is still held (it is ours: nothing else should take it).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart a killed Redis");
        let deadline = Instant::now() + DEADLINE;
        while !self.spawn() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not start again on port {}:\n{}",
                self.port,
                self.log.tail(4000)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- redis on port {} ---\n{}", self.port, self.log.tail(3000));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Nodes

/// A `switchboard` process.
pub struct Node {
    /// Its name, also its `--node-id`.
    pub name: String,
    /// Where it listens.
    pub addr: SocketAddr,
    child: Option<Child>,
    log: Log,
}

/// What a node is started with besides the shared secret, admin key and Redis.
#[derive(Clone, Debug, Default)]
pub struct NodeOpts {
    /// `--lease-ttl-secs`.
    pub lease_ttl_secs: Option<u64>,
    /// `--presence-ttl-secs`.
    pub presence_ttl_secs: Option<u64>,
    /// More arguments, as given.
    pub args: Vec<String>,
}

impl Node {
    /// Starts `switchboard --redis <redis> --node-id <name>` on a free port and waits until it
    /// prints its address and answers `/healthz`. Without Redis it is a single node.
    pub fn start(name: &str, redis: Option<&Redis>, opts: &NodeOpts) -> Node {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchboard"));
        // The node takes its settings from these arguments only, not from the caller's shell.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("SWITCHBOARD_") {
                cmd.env_remove(key);
            }
        }
        cmd.args(["--listen", "127.0.0.1:0", "--jwt-secret", SECRET, "--admin-key", ADMIN])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(redis) = redis {
            cmd.args(["--redis", &redis.url(), "--node-id", name]);
        }
        if let Some(ttl) = opts.lease_ttl_secs {
            cmd.args(["--lease-ttl-secs", &ttl.to_string()]);
        }
        if let Some(ttl) = opts.presence_ttl_secs {
            cmd.args(["--presence-ttl-secs", &ttl.to_string()]);
        }
        cmd.args(&opts.args);
        die_with_parent(&mut cmd);
        let mut child = cmd.spawn().expect("spawn the switchboard binary");
        let log = Log::default();
        let (tx, rx) = std::sync::mpsc::channel();
        log.drain(child.stdout.take().unwrap(), Some(tx));
        log.drain(child.stderr.take().unwrap(), None);
        let banner = match rx.recv_timeout(DEADLINE) {
            Ok(line) => line,
            Err(_) => {
                kill_child(&mut child);
                panic!("node {name} printed no banner:\n{}", log.tail(4000));
            }
        };
        let addr = banner
            .strip_prefix("switchboard listening on http://")
            .and_then(|a| a.trim().parse().ok())
            .unwrap_or_else(|| panic!("node {name}: unexpected banner {banner:?}"));
        Node { name: name.to_owned(), addr, child: Some(child), log }
    }

    /// SIGKILL: the node gets no chance to close connections or release leases.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_child(&mut child);
        }
    }

    /// Sends `signal` (SIGINT, SIGTERM) to the process.
    pub fn signal(&self, signal: libc::c_int) {
        let child = self.child.as_ref().expect("running");
        let pid = libc::pid_t::try_from(child.id()).expect("a pid");
        // SAFETY: kill(2) with the pid of a child this test spawned and has not reaped.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal})");
    }

    /// Waits up to [`DEADLINE`] for the process to exit by itself: its exit status, or `None`
    /// if it was still running (then it is killed).
    pub fn wait_exit(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let until = Instant::now() + DEADLINE;
        while Instant::now() < until {
            if let Some(status) = child.try_wait().expect("wait") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        kill_child(&mut child);
        None
    }

    /// Whether the process still runs (it has not exited by itself or been killed).
    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    /// What it printed so far (the end of it).
    pub fn log_tail(&self) -> String {
        self.log.tail(4000)
    }

    /// One HTTP request.
    pub async fn http(&self, method: &str, path: &str, auth: Option<&str>, body: &str) -> Response {
        http_request(self.addr, method, path, auth, body).await
    }

    /// `POST /publish` with the admin key.
    pub async fn publish(&self, body: &Value) -> Response {
        self.http("POST", "/publish", Some(ADMIN), &body.to_string()).await
    }

    /// `POST /publish`, asserting 200; returns the response's JSON.
    pub async fn publish_ok(&self, body: &Value) -> Value {
        let res = self.publish(body).await;
        assert_eq!(res.status, 200, "publish {body} through {}: {res:?}", self.name);
        res.json()
    }

    /// Publishes until one is accepted (200), for a node that is waiting for Redis to come
    /// back; any other answer than 200 or 503 fails the test.
    pub async fn publish_when_back(&self, body: &Value) -> Value {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let res = self.publish(body).await;
            match res.status {
                200 => return res.json(),
                503 => {}
                _ => panic!("publish through {} while Redis comes back: {res:?}", self.name),
            }
            assert!(
                Instant::now() < deadline,
                "{} kept answering 503 for {DEADLINE:?}: {res:?}\n{}",
                self.name,
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Polls `GET /healthz` until its `bus` field says `state`.
    pub async fn until_bus(&self, state: &str) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let res = self.http("GET", "/healthz", None, "").await;
            if res.status == 200 && res.json()["bus"] == state {
                return;
            }
            assert!(Instant::now() < deadline, "{} never reported bus {state}: {res:?}", self.name);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `GET /healthz`'s status.
    pub async fn healthz(&self) -> u16 {
        self.http("GET", "/healthz", None, "").await.status
    }

    /// `GET /metrics`.
    pub async fn metrics(&self) -> String {
        let res = self.http("GET", "/metrics", None, "").await;
        assert_eq!(res.status, 200, "{res:?}");
        res.body
    }

    /// Opens a WebSocket with `?token=`; `rcvbuf` shrinks the client's receive buffer (set
    /// before connecting, so the window the server sees is small from the start).
    pub async fn ws(&self, token: &str, rcvbuf: Option<u32>) -> Result<Client, tungstenite::Error> {
        let socket = TcpSocket::new_v4().unwrap();
        if let Some(size) = rcvbuf {
            socket.set_recv_buffer_size(size).unwrap();
        }
        let stream = socket.connect(self.addr).await.unwrap();
        let url = format!("ws://{}/ws?token={token}", self.addr);
        let (ws, _) = tokio_tungstenite::client_async(url, stream).await?;
        Ok(Client { ws })
    }

    /// A connection that has read `connected` (returned), then ended its resume window with a
    /// `ping` and read the `pong` and the `joined` frame of every room its token names
    /// (returned). In cluster mode a `joined` waits until the room's stream is set up on the bus,
    /// so it may come after the `pong`.
    pub async fn live(&self, token: &str) -> (Client, Value, Vec<Value>) {
        let rooms = token_rooms(token);
        let mut c = self.ws(token, None).await.expect("the token connects");
        let connected = recv(&mut c).await;
        assert_eq!(connected["type"], "connected", "{}: {connected}", self.name);
        c.send(json!({"type": "ping"})).await;
        let mut joined = Vec::new();
        let mut ponged = false;
        while !ponged || joined.len() < rooms {
            let f = recv(&mut c).await;
            match f["type"].as_str() {
                Some("pong") if !ponged => ponged = true,
                Some("joined") => joined.push(f),
                _ => panic!("{}: expected joined frames and the pong; got {f}", self.name),
            }
        }
        (c, connected, joined)
    }
}

/// How many rooms a token's `rooms` claim names (read from its unverified payload).
fn token_rooms(token: &str) -> usize {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).expect("a JWT has a payload");
    let bytes =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).expect("base64url");
    let claims: Value = serde_json::from_slice(&bytes).expect("JSON claims");
    claims["rooms"].as_array().map_or(0, Vec::len)
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- node {} ({}) ---\n{}", self.name, self.addr, self.log.tail(4000));
        }
    }
}

/// Starts nodes named `a`, `b`, ... over one Redis, and waits until each one's bus link is up
/// (its first probe went round), so that a test's first steps do not race a node's start.
pub fn nodes(n: usize, redis: &Redis, opts: &NodeOpts) -> Vec<Node> {
    let nodes: Vec<Node> = (0..n)
        .map(|i| {
            let name = char::from(b'a' + u8::try_from(i).unwrap()).to_string();
            Node::start(&name, Some(redis), opts)
        })
        .collect();
    for node in &nodes {
        node.wait_bus_up();
    }
    nodes
}

impl Node {
    /// Polls `/metrics` (blocking: it runs before a test's clients exist) until
    /// `switchboard_bus_up` is 1, or fails the test after [`DEADLINE`].
    pub fn wait_bus_up(&self) {
        let until = Instant::now() + DEADLINE;
        loop {
            let mut body = String::new();
            if let Ok(mut s) = TcpStream::connect(self.addr) {
                let req = "GET /metrics HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n";
                let _ = s.write_all(req.as_bytes()).and_then(|()| s.read_to_string(&mut body));
            }
            if body.lines().any(|l| l == "switchboard_bus_up 1") {
                return;
            }
            assert!(Instant::now() < until, "node {}: bus not up:\n{}", self.name, self.log_tail());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Clients

/// A token of `user` in `tenant`, valid for an hour.
pub fn token(tenant: &str, user: &str, tier: &str, rooms: &[&str]) -> String {
    let claims = Claims {
        tier: Some(tier.into()),
        rooms: rooms.iter().map(|r| r.to_string()).collect(),
        ..Claims::new(tenant, user, Duration::from_secs(3600))
    };
    Keys::new(SECRET.as_bytes()).unwrap().sign(&claims)
}

/// The next WebSocket message that is not a transport ping or pong, within [`DEADLINE`]; `None`
/// when the connection ended (a close frame is returned as a message).
pub async fn next_message(c: &mut Client) -> Option<Message> {
    use futures_util::StreamExt;
    loop {
        let msg = tokio::time::timeout(DEADLINE, c.ws.next())
            .await
            .unwrap_or_else(|_| panic!("no frame within {DEADLINE:?}"));
        match msg {
            None | Some(Err(_)) => return None,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(m)) => return Some(m),
        }
    }
}

/// The next text frame as JSON, within [`DEADLINE`], presence frames included.
pub async fn recv_any(c: &mut Client) -> Value {
    match next_message(c).await {
        Some(Message::Text(text)) => serde_json::from_str(&text).expect("frames are JSON"),
        other => panic!("expected a text frame, got {other:?}"),
    }
}

/// The next text frame as JSON, within [`DEADLINE`], skipping `presence` and `presence_diff`
/// frames: the servers run room presence, and who else joined a room comes at times the
/// stream scenarios do not order (the presence scenario reads them with [`recv_any`]).
pub async fn recv(c: &mut Client) -> Value {
    loop {
        let f = recv_any(c).await;
        if f["type"] != "presence" && f["type"] != "presence_diff" {
            return f;
        }
    }
}

/// The next frame that is not a `pong`.
pub async fn recv_event(c: &mut Client) -> Value {
    loop {
        let f = recv(c).await;
        if f["type"] != "pong" {
            return f;
        }
    }
}

/// Reads until the close frame and returns its code and reason, with the frames before it.
pub async fn close_of(c: &mut Client) -> (u16, String, Vec<Value>) {
    use futures_util::SinkExt;
    let mut before = Vec::new();
    loop {
        match next_message(c).await {
            Some(Message::Close(Some(frame))) => {
                let _ = c.ws.flush().await;
                return (u16::from(frame.code), frame.reason.to_string(), before);
            }
            Some(Message::Close(None)) => panic!("close frame without a code"),
            Some(Message::Text(text)) => before.push(serde_json::from_str(&text).unwrap()),
            Some(other) => panic!("unexpected {other:?}"),
            None => panic!("the connection ended without a close frame; before it: {before:?}"),
        }
    }
}

/// A user-stream publish body: `{"tenant","user","kind":"note","data":{"i":i}}`.
pub fn to_user(tenant: &str, user: &str, i: u64) -> Value {
    json!({"tenant": tenant, "user": user, "kind": "note", "data": {"i": i}})
}

/// A position as the `resume` frame takes it.
pub fn pos(epoch: &Value, seq: u64) -> Value {
    json!({"epoch": epoch, "seq": seq})
}
