//! The baseline: a plain Rust port of the origin documents' design (`shared/seeds/` 000–002), so
//! that every switchboard figure has a figure beside it from the same run.
//!
//! What the origin documents describe, ported as a reasonable engineer would port it from Python:
//!
//! - **One global lock** around all state (the singleton's `_lock`, the factory's `_factory_lock`),
//!   here a `std::sync::Mutex`; every entry point takes `&self` and locks once.
//! - **`_connections`**: connection id → connection info (owner ids as `String`s, timestamps,
//!   thread subscriptions, rooms), a `HashMap`.
//! - **`_user_connections`**: the global map of user → that user's connection ids (nested by
//!   tenant so lookups take `&str` without building a key). A user's entry is the "isolated
//!   manager": it outlives its last connection until the periodic cleanup retires it.
//! - **`_message_recovery_queue`**: per user, messages published while it had no connection
//!   (bounded at 1,000, oldest dropped), flushed to the next connection of that user.
//! - **Serialization per recipient**: `send_to_user` serializes the message for each connection
//!   (`serde_json::to_string`, as `websocket.send_json(message)` does), after one sanitizing copy
//!   of the payload per publish when keys are configured ("event sanitization").
//! - **Periodic full scans**: heartbeats and cleanup walk every connection and every user entry.
//!
//! Sends go to one outbound queue inside the lock, drained by the caller, just as switchboard's
//! actions are; the caller passes `now`, so neither side pays for reading the clock. Where the
//! documents leave a choice, the baseline gets the cheaper one: `u64` connection ids (not UUID
//! strings), no per-message timestamp or sequence fields, a `Vec` of a user's connection ids.

// Shared by two bench binaries (`hub`, `memory`); each uses a part of it.
#![allow(dead_code)]

use std::borrow::Cow;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

/// Limits and timings, with the origin documents' values where they give one.
#[derive(Clone, Debug)]
pub struct BaselineConfig {
    pub max_connections: usize,
    pub max_connections_per_user: usize,
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    /// How long an idle user entry (no connections) is kept before cleanup removes it.
    pub idle_user_timeout: Duration,
    /// Bound of each user's recovery queue (`message_queue: Queue(1000)`).
    pub recovery_queue_len: usize,
    /// Payload keys replaced by `"[redacted]"` ("event sanitization").
    pub redact_keys: Vec<String>,
}

impl Default for BaselineConfig {
    fn default() -> Self {
        Self {
            max_connections: 100_000,
            max_connections_per_user: 3,
            heartbeat_interval: Duration::from_secs(25),
            heartbeat_timeout: Duration::from_secs(10),
            idle_user_timeout: Duration::from_secs(120),
            recovery_queue_len: 1000,
            redact_keys: ["password", "api_key", "token", "secret", "authorization"]
                .map(String::from)
                .to_vec(),
        }
    }
}

/// An event as the application hands it over (`emit_critical_event(event_type, data)`).
#[derive(Clone, Debug, Serialize)]
pub struct Message {
    #[serde(rename = "type")]
    pub kind: Cow<'static, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thread_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    pub data: Value,
}

/// Where a message goes.
#[derive(Clone, Copy)]
pub enum To<'a> {
    User { tenant: &'a str, user: &'a str },
    Thread { tenant: &'a str, user: &'a str, thread: &'a str },
    Room { tenant: &'a str, room: &'a str },
    Tenant { tenant: &'a str },
}

/// What the caller must send.
#[derive(Debug)]
pub enum Out {
    Text(String),
    Ping,
    Close,
}

#[derive(Debug)]
struct ConnInfo {
    tenant: String,
    user: String,
    connected_at: Instant,
    last_activity: Instant,
    last_ping: Option<Instant>,
    threads: Option<HashSet<String>>,
    rooms: Vec<String>,
}

#[derive(Debug)]
struct UserEntry {
    conns: Vec<u64>,
    recovery: VecDeque<Message>,
    last_activity: Instant,
    messages_sent: u64,
}

#[derive(Debug, Default)]
struct State {
    connections: HashMap<u64, ConnInfo>,
    users: HashMap<String, HashMap<String, UserEntry>>,
    rooms: HashMap<String, HashMap<String, HashSet<u64>>>,
    outbox: VecDeque<(u64, Out)>,
    next_id: u64,
    connections_created: u64,
    messages_sent: u64,
    users_cleaned_up: u64,
}

#[derive(Serialize)]
struct Connected<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    connection_id: u64,
    tenant_id: &'a str,
    user_id: &'a str,
    heartbeat_ms: u64,
}

#[derive(Debug)]
pub enum ConnectError {
    TooManyConnections,
    UserLimit,
}

pub struct Baseline {
    cfg: BaselineConfig,
    state: Mutex<State>,
}

impl Baseline {
    pub fn new(cfg: BaselineConfig) -> Self {
        Self { cfg, state: Mutex::new(State::default()) }
    }

    /// `add_connection`: checks the limits, registers the connection, greets it and flushes the
    /// user's recovery queue to it.
    pub fn connect(&self, now: Instant, tenant: &str, user: &str) -> Result<u64, ConnectError> {
        let mut guard = self.state.lock().unwrap();
        let st = &mut *guard;
        if st.connections.len() >= self.cfg.max_connections {
            return Err(ConnectError::TooManyConnections);
        }
        let users = match st.users.get_mut(tenant) {
            Some(users) => users,
            None => st.users.entry(tenant.to_owned()).or_default(),
        };
        let entry = match users.get_mut(user) {
            Some(entry) => entry,
            None => users.entry(user.to_owned()).or_insert_with(|| UserEntry {
                conns: Vec::new(),
                recovery: VecDeque::new(),
                last_activity: now,
                messages_sent: 0,
            }),
        };
        if entry.conns.len() >= self.cfg.max_connections_per_user {
            return Err(ConnectError::UserLimit);
        }
        st.next_id += 1;
        let id = st.next_id;
        entry.conns.push(id);
        entry.last_activity = now;
        st.connections.insert(
            id,
            ConnInfo {
                tenant: tenant.to_owned(),
                user: user.to_owned(),
                connected_at: now,
                last_activity: now,
                last_ping: None,
                threads: None,
                rooms: Vec::new(),
            },
        );
        st.connections_created += 1;
        let hello = Connected {
            kind: "connected",
            connection_id: id,
            tenant_id: tenant,
            user_id: user,
            heartbeat_ms: self.cfg.heartbeat_interval.as_millis() as u64,
        };
        st.outbox.push_back((id, Out::Text(serde_json::to_string(&hello).unwrap())));
        for msg in entry.recovery.drain(..) {
            st.outbox.push_back((id, Out::Text(serde_json::to_string(&msg).unwrap())));
            entry.messages_sent += 1;
        }
        Ok(id)
    }

    /// `remove_connection`: forgets the connection; its user entry stays until cleanup.
    pub fn disconnect(&self, now: Instant, id: u64) -> bool {
        let mut guard = self.state.lock().unwrap();
        let st = &mut *guard;
        let Some(conn) = st.connections.remove(&id) else { return false };
        if let Some(entry) = st.users.get_mut(&conn.tenant).and_then(|u| u.get_mut(&conn.user)) {
            entry.conns.retain(|&c| c != id);
            entry.last_activity = now;
        }
        for room in &conn.rooms {
            if let Some(rooms) = st.rooms.get_mut(&conn.tenant) {
                if let Some(members) = rooms.get_mut(room) {
                    members.remove(&id);
                    if members.is_empty() {
                        rooms.remove(room);
                    }
                }
            }
        }
        let _lifetime = now.saturating_duration_since(conn.connected_at);
        true
    }

    /// Narrows a connection to one more thread.
    pub fn subscribe(&self, now: Instant, id: u64, thread: &str) {
        let mut st = self.state.lock().unwrap();
        if let Some(c) = st.connections.get_mut(&id) {
            c.last_activity = now;
            c.threads.get_or_insert_with(HashSet::new).insert(thread.to_owned());
        }
    }

    pub fn join(&self, id: u64, room: &str) {
        let mut guard = self.state.lock().unwrap();
        let st = &mut *guard;
        let Some(c) = st.connections.get_mut(&id) else { return };
        if c.rooms.iter().any(|r| r == room) {
            return;
        }
        c.rooms.push(room.to_owned());
        st.rooms
            .entry(c.tenant.clone())
            .or_default()
            .entry(room.to_owned())
            .or_default()
            .insert(id);
    }

    /// A pong (or any inbound frame): the connection is alive.
    pub fn pong(&self, now: Instant, id: u64) {
        let mut st = self.state.lock().unwrap();
        if let Some(c) = st.connections.get_mut(&id) {
            c.last_activity = now;
            c.last_ping = None;
        }
    }

    /// `send_to_user` / `emit_critical_event` and friends: sanitize once, then serialize for each
    /// recipient. A user without connections gets the message queued for recovery. Returns how
    /// many connections it was sent to.
    pub fn publish(&self, now: Instant, to: To<'_>, mut msg: Message) -> usize {
        if !self.cfg.redact_keys.is_empty() {
            msg.data = sanitize(&msg.data, &self.cfg.redact_keys);
        }
        let mut guard = self.state.lock().unwrap();
        let st = &mut *guard;
        let State { connections, users, rooms, outbox, .. } = st;
        let mut sent = 0;
        match to {
            To::User { tenant, user } | To::Thread { tenant, user, .. } => {
                let thread = match to {
                    To::Thread { thread, .. } => {
                        msg.thread_id = Some(thread.to_owned());
                        Some(thread)
                    }
                    _ => None,
                };
                let Some(entry) = users.get_mut(tenant).and_then(|u| u.get_mut(user)) else {
                    return 0;
                };
                entry.last_activity = now;
                if entry.conns.is_empty() {
                    if entry.recovery.len() >= self.cfg.recovery_queue_len {
                        entry.recovery.pop_front();
                    }
                    entry.recovery.push_back(msg);
                    return 0;
                }
                for &id in &entry.conns {
                    let Some(conn) = connections.get(&id) else { continue };
                    let wanted = match (&conn.threads, thread) {
                        (Some(threads), Some(t)) => threads.contains(t),
                        _ => true,
                    };
                    if wanted {
                        outbox.push_back((id, Out::Text(serde_json::to_string(&msg).unwrap())));
                        sent += 1;
                    }
                }
                entry.messages_sent += sent as u64;
            }
            To::Room { tenant, room } => {
                let Some(members) = rooms.get(tenant).and_then(|r| r.get(room)) else {
                    return 0;
                };
                for &id in members {
                    if connections.contains_key(&id) {
                        outbox.push_back((id, Out::Text(serde_json::to_string(&msg).unwrap())));
                        sent += 1;
                    }
                }
            }
            To::Tenant { tenant } => {
                for (&id, conn) in connections.iter() {
                    if conn.tenant == tenant {
                        outbox.push_back((id, Out::Text(serde_json::to_string(&msg).unwrap())));
                        sent += 1;
                    }
                }
            }
        }
        st.messages_sent += sent as u64;
        sent
    }

    /// The periodic maintenance task: one full scan of every connection (heartbeat pings, stale
    /// connections closed) and of every user entry (idle managers retired).
    pub fn sweep(&self, now: Instant) {
        let mut guard = self.state.lock().unwrap();
        let st = &mut *guard;
        let mut stale = Vec::new();
        for (&id, conn) in st.connections.iter_mut() {
            match conn.last_ping {
                Some(sent) if now.saturating_duration_since(sent) >= self.cfg.heartbeat_timeout => {
                    stale.push(id);
                }
                Some(_) => {}
                None if now.saturating_duration_since(conn.last_activity)
                    >= self.cfg.heartbeat_interval =>
                {
                    conn.last_ping = Some(now);
                    st.outbox.push_back((id, Out::Ping));
                }
                None => {}
            }
        }
        for &id in &stale {
            st.outbox.push_back((id, Out::Close));
        }
        if !stale.is_empty() {
            drop(guard);
            for id in stale {
                self.disconnect(now, id);
            }
            guard = self.state.lock().unwrap();
        }
        let st = &mut *guard;
        let mut retired = 0;
        for users in st.users.values_mut() {
            users.retain(|_, e| {
                let keep = !e.conns.is_empty()
                    || now.saturating_duration_since(e.last_activity) < self.cfg.idle_user_timeout;
                retired += u64::from(!keep);
                keep
            });
        }
        st.users.retain(|_, u| !u.is_empty());
        st.users_cleaned_up += retired;
    }

    /// Hands every queued send to `f`, in order.
    pub fn drain(&self, mut f: impl FnMut(u64, Out)) {
        let mut st = self.state.lock().unwrap();
        for (id, out) in st.outbox.drain(..) {
            f(id, out);
        }
    }

    pub fn connection_count(&self) -> usize {
        self.state.lock().unwrap().connections.len()
    }

    /// (connections created, messages sent, users cleaned up, user entries held).
    pub fn counters(&self) -> (u64, u64, u64, usize) {
        let st = self.state.lock().unwrap();
        let held = st.users.values().map(HashMap::len).sum();
        (st.connections_created, st.messages_sent, st.users_cleaned_up, held)
    }
}

/// A copy of `v` with configured keys' values replaced, at any depth.
fn sanitize(v: &Value, keys: &[String]) -> Value {
    match v {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let v = if keys.iter().any(|key| key.eq_ignore_ascii_case(k)) {
                        Value::String("[redacted]".to_owned())
                    } else {
                        sanitize(v, keys)
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(|v| sanitize(v, keys)).collect()),
        scalar => scalar.clone(),
    }
}
