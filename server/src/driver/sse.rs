//! Server-Sent Events: a hub connection whose writer is an HTTP response body instead of a
//! WebSocket. What the hub asks for maps onto the event stream:
//!
//! - `Deliver` → `id: <positions>` and `data: <frame>` lines. The id encodes the connection's
//!   position in every stream it is in ([`encode_positions`]), so the browser's automatic
//!   reconnect, which sends it back as `Last-Event-ID`, resumes exactly.
//! - `Ping` → a comment line (`: ping`); once the body has taken it, the driver counts it as the
//!   pong (an SSE client cannot answer; a reader that stopped reading stops taking bytes, so
//!   its heartbeat times out, or its unwritten bytes close it as a slow consumer).
//! - `Close` → an `event: close` with the code and reason, then the body ends.
//!
//! Bytes count as written once the body has taken them, so a slow SSE reader is a slow consumer
//! exactly like a slow WebSocket reader. Client frames come in by `POST` ([`SseConn::receive`]).

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use base64::Engine as _;
use futures_util::Stream;
use serde::Deserialize;
use switchboard::{CloseReason, ConnId, DisconnectReason};

use super::outbox::{Receiver, Stop};
use super::{Accepted, AcceptedParts, Alive, Command, Handle, Out};

/// The open SSE connections by their `conn_id`, so that a `POST` reaches its connection.
/// Entries leave when their body ends; their number is bounded by the driver's connection caps.
#[derive(Clone, Default)]
pub struct SseSessions(Arc<Mutex<HashMap<String, SseConn>>>);

impl SseSessions {
    /// The connection `conn_id`, if it is open and belongs to `(tenant, user)`.
    pub fn get(&self, conn_id: &str, tenant: &str, user: &str) -> Option<SseConn> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.get(conn_id).filter(|c| c.tenant == tenant && c.user == user).cloned()
    }

    /// How many SSE connections are open.
    pub fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether none is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One SSE connection's inbound side: client frames arrive by `POST`.
#[derive(Clone)]
pub struct SseConn {
    handle: Handle,
    id: ConnId,
    tenant: String,
    user: String,
}

impl SseConn {
    /// Feeds one client frame to the hub, as a WebSocket text frame would be. `false`: the hub
    /// task is gone.
    pub async fn receive(&self, frame: Bytes) -> bool {
        self.handle.send(Command::Frame { conn: self.id, bytes: frame }).await
    }
}

/// Stream positions as an SSE event id: base64url (no padding) of `{"<stream>":[epoch,seq],…}`.
/// One line, no `:` or newline, whatever the room names are.
pub fn encode_positions(positions: &BTreeMap<String, (u64, u64)>) -> String {
    let json = serde_json::to_vec(positions).expect("a map of numbers serializes");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
}

/// The positions an event id ([`encode_positions`]) carries, or `None` if it is not one.
pub fn decode_positions(id: &str) -> Option<BTreeMap<String, (u64, u64)>> {
    if id.len() > 64 * 1024 {
        return None;
    }
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(id.trim()).ok()?;
    serde_json::from_slice(&json).ok()
}

/// The fields of a frame that move positions; everything else (`data` included) is skipped.
#[derive(Deserialize)]
struct Peek<'a> {
    #[serde(rename = "type", borrow)]
    ty: &'a str,
    #[serde(borrow)]
    stream: Option<&'a str>,
    epoch: Option<u64>,
    seq: Option<u64>,
    streams: Option<BTreeMap<String, PeekPos>>,
}

#[derive(Deserialize)]
struct PeekPos {
    epoch: u64,
    seq: u64,
    recovered: Option<bool>,
}

/// Keeps the positions the connection's client has been sent, as the TypeScript client does.
fn track(positions: &mut BTreeMap<String, (u64, u64)>, frame: &str) {
    let Ok(f) = serde_json::from_str::<Peek<'_>>(frame) else { return };
    match (f.ty, f.stream, f.epoch, f.seq) {
        ("connected", ..) => {
            for (name, p) in f.streams.unwrap_or_default() {
                positions.entry(name).or_insert((p.epoch, p.seq));
            }
        }
        ("resumed", ..) => {
            for (name, p) in f.streams.unwrap_or_default() {
                if p.recovered == Some(false) {
                    positions.insert(name, (p.epoch, p.seq));
                }
            }
        }
        ("joined", Some(s), Some(e), Some(q)) => {
            positions.entry(s.to_owned()).or_insert((e, q));
        }
        ("left", Some(s), ..) => {
            positions.remove(s);
        }
        (_, Some(s), Some(e), Some(q)) => {
            positions.insert(s.to_owned(), (e, q));
        }
        _ => {}
    }
}

/// The writer's state between chunks of the body.
struct Writer {
    handle: Handle,
    id: ConnId,
    conn_id: String,
    sessions: SseSessions,
    outbox: Receiver,
    positions: BTreeMap<String, (u64, u64)>,
    /// Text bytes of the last chunk, reported `written` when the body asks for the next one.
    unreported: usize,
    /// A ping comment went into the last chunk: its pong is due.
    pinged: bool,
    /// The hub closed the connection (no `Gone` is owed).
    closed: bool,
    ended: bool,
    _alive: Alive,
}

impl Writer {
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if self.unreported > 0 {
            let bytes = std::mem::take(&mut self.unreported);
            if self.outbox.add_written(bytes) {
                self.handle.moved.push(self.id);
            }
        }
        if std::mem::take(&mut self.pinged) {
            self.handle.send(Command::Pong { conn: self.id }).await;
        }
        if self.ended {
            return None;
        }
        let mut chunk = String::new();
        let first = match std::future::poll_fn(|cx| self.outbox.poll_next(cx)).await {
            Ok(out) => out,
            Err(Stop::Close(reason)) => {
                self.ended = true;
                self.closed = true;
                // As on a WebSocket: what was queued before the close goes first, except for a
                // slow consumer, whose queue is abandoned (it resumes instead).
                if reason != CloseReason::SlowConsumer {
                    while let Some(out) = self.outbox.pop() {
                        self.push(&mut chunk, out);
                    }
                }
                let data = serde_json::json!({ "code": reason.code(), "reason": reason.as_str() });
                chunk.push_str(&format!("event: close\ndata: {data}\n\n"));
                return Some(Bytes::from(chunk));
            }
            Err(Stop::Detached) => {
                self.ended = true;
                self.closed = true;
                return None;
            }
        };
        let flush = self.handle.cfg.flush_bytes;
        let mut next = Some(first);
        while let Some(out) = next.take() {
            self.push(&mut chunk, out);
            if chunk.len() < flush {
                next = self.outbox.pop();
            }
        }
        Some(Bytes::from(chunk))
    }

    /// Appends one of the hub's outputs to a chunk: a frame as an event with the positions as
    /// its id, a ping as a comment.
    fn push(&mut self, chunk: &mut String, out: Out) {
        match out {
            Out::Text(frame) => {
                let text = frame.as_str();
                track(&mut self.positions, text);
                chunk.push_str("id: ");
                chunk.push_str(&encode_positions(&self.positions));
                chunk.push_str("\ndata: ");
                chunk.push_str(text);
                chunk.push_str("\n\n");
                self.unreported += frame.len();
            }
            Out::Ping => {
                chunk.push_str(": ping\n\n");
                self.pinged = true;
            }
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.sessions.0.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.conn_id);
        if !self.closed {
            // The client went away (an SSE client has no close handshake: that is its normal end).
            self.handle.send_now(Command::Gone { conn: self.id, reason: DisconnectReason::Clean });
        }
    }
}

impl Handle {
    /// Serves an admitted connection as Server-Sent Events: feeds `first` (client frames such as
    /// `subscribe`s and the `resume` built from `Last-Event-ID`) to the hub before anything is
    /// written, registers the connection in `sessions` for `POST`s, and returns the response
    /// body. `positions` seed the event ids (those the client resumes from); `owner` is the
    /// `(tenant, user)` a `POST` must authenticate as.
    pub async fn serve_sse(
        self,
        mut accepted: Accepted,
        owner: (String, String),
        first: Vec<Bytes>,
        positions: BTreeMap<String, (u64, u64)>,
        sessions: &SseSessions,
    ) -> impl Stream<Item = Result<Bytes, Infallible>> + Send + 'static {
        let id = accepted.id;
        let parts = accepted.parts.take();
        let (tenant, user) = owner;
        let conn_id = id.to_string();
        let retry_seed = conn_id.clone();
        let conn = SseConn { handle: self.clone(), id, tenant, user };
        sessions.0.lock().unwrap_or_else(|e| e.into_inner()).insert(conn_id.clone(), conn);
        for frame in first {
            self.send(Command::Frame { conn: id, bytes: frame }).await;
        }
        let writer = parts.map(|AcceptedParts { outbox, _alive, .. }| Writer {
            handle: self.clone(),
            id,
            conn_id,
            sessions: sessions.clone(),
            outbox,
            positions,
            unreported: 0,
            pinged: false,
            closed: false,
            ended: false,
            _alive,
        });
        // The browser's EventSource reconnects after `retry` ms, with no jitter of its own: a
        // delay between 1 and 5 s drawn per connection keeps a restart from bringing every
        // browser back in the same instant. (The TypeScript client uses its own backoff.)
        let retry = 1000 + RandomState::new().hash_one(&retry_seed) % 4000;
        let hello =
            futures_util::stream::once(
                async move { Ok(Bytes::from(format!("retry: {retry}\n\n"))) },
            );
        let body = futures_util::stream::unfold(writer, |writer| async move {
            let mut writer = writer?;
            let chunk = writer.next_chunk().await?;
            Some((Ok(chunk), Some(writer)))
        });
        futures_util::StreamExt::chain(hello, body)
    }
}
