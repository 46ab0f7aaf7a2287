//! The wire protocol, server → client (JSON text frames), and redaction.
//!
//! Server → client event frame:
//! `{"type":"agent_started","stream":"u","epoch":77,"seq":42,"thread_id":"t1","run_id":"r9","data":{..}}`.
//! Control frames: `connected`, `resumed`, `refresh_required`, `skipped`, `joined`, `left`,
//! `error`, `pong`. Client → server frames are parsed in `client_frame.rs`.

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};
use serde_json::Value;

use crate::envelope::EventKind;
use crate::error::PeerError;
use crate::frame::Frame;
use crate::ids::{ConnId, RunId, StreamName, StreamPos, TenantId, ThreadId, UserId};
use crate::payload::{Payload, byte_below, quote_or_backslash, write_redacted};
use crate::redact::{Redacted, Redactor};

// ---------------------------------------------------------------------------------------------
// Server → client

struct WireStream<'a>(&'a StreamName);

impl Serialize for WireStream<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            StreamName::User => s.serialize_str("u"),
            StreamName::Tenant => s.serialize_str("t"),
            StreamName::Room(_) => s.collect_str(self.0),
        }
    }
}

/// The event frame as serde writes it: the reference for [`FrameWriter::event`].
#[cfg(test)]
#[derive(Serialize)]
struct EventFrame<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    stream: WireStream<'a>,
    epoch: u64,
    seq: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    thread_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    run_id: Option<&'a str>,
    /// Absent when the envelope carries no data (`null`): the README calls `data` optional.
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<Redacted<'a>>,
}

#[cfg(test)]
#[derive(Serialize)]
struct Position {
    epoch: u64,
    seq: u64,
}

#[cfg(test)]
struct Positions<'a>(&'a [(StreamName, StreamPos)]);

#[cfg(test)]
impl Serialize for Positions<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (name, pos) in self.0 {
            m.serialize_entry(&WireStream(name), &Position { epoch: pos.epoch, seq: pos.seq })?;
        }
        m.end()
    }
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ControlFrame<'a> {
    /// The serde reference for the hand-written `FrameWriter::connected`.
    #[cfg(test)]
    Connected {
        conn_id: WireConnId,
        tenant: &'a TenantId,
        user: &'a UserId,
        heartbeat_ms: u64,
        session_expires_in_ms: Option<u64>,
        streams: Positions<'a>,
    },
    RefreshRequired {
        expires_in_ms: u64,
    },
    /// A client's `refresh` was accepted: the session now ends in this many ms (`null`: never).
    Refreshed {
        session_expires_in_ms: Option<u64>,
    },
    /// The application's answer to a client `message` that carried an `id`.
    Reply {
        id: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        data: Option<Redacted<'a>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<ReplyErrorBody<'a>>,
    },
    Error {
        code: &'a str,
        message: String,
        /// The refused frame's own `id` (a `message`'s or a `history` request's), so that the
        /// client can fail that request at once instead of waiting for its timeout.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a str>,
    },
    Pong,
    Skipped {
        count: u32,
    },
    Joined {
        stream: WireStream<'a>,
        epoch: u64,
        seq: u64,
    },
    Left {
        stream: WireStream<'a>,
    },
    /// Cluster mode: messages of the stream up to `(epoch, seq)` may be missing (`reason`);
    /// refetch the state it carries and continue from that position.
    Resync {
        stream: WireStream<'a>,
        epoch: u64,
        seq: u64,
        recovered: bool,
        reason: &'a str,
    },
    Resumed {
        recovered: bool,
        streams: Reports<'a>,
    },
}

#[cfg(test)]
/// Writes a `ConnId` as text without an intermediate `String`.
struct WireConnId(ConnId);

#[cfg(test)]
impl Serialize for WireConnId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

/// The `error` object of a failed reply.
#[derive(Serialize)]
struct ReplyErrorBody<'a> {
    code: &'a str,
    message: &'a str,
}

/// What `resume` found for one stream, reported in the `resumed` frame.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct StreamReport {
    /// Whether exactly the missing messages were replayed.
    pub(crate) recovered: bool,
    /// Why not, when not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) reason: Option<&'static str>,
    /// The stream's current position (`epoch` 0 for a stream the connection does not have).
    pub(crate) epoch: u64,
    pub(crate) seq: u64,
    /// The oldest seq the stream still holds.
    pub(crate) available_from: u64,
    /// Messages replayed to this connection.
    pub(crate) replayed: u32,
}

struct Reports<'a>(&'a [(String, StreamReport)]);

impl Serialize for Reports<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (name, report) in self.0 {
            m.serialize_entry(name, report)?;
        }
        m.end()
    }
}

/// Appends `v` as JSON (it cannot fail on the values frames hold: see [`FrameWriter::finish`]).
fn json<T: Serialize + ?Sized>(buf: &mut Vec<u8>, v: &T) {
    serde_json::to_writer(buf, v).expect("in-memory JSON serialization");
}

/// Builds frames into reusable buffers, then copies the text once into the shared [`Frame`].
#[derive(Debug, Default)]
pub(crate) struct FrameWriter {
    /// The frame as serde_json and the hand-written parts write it: bytes, checked once.
    buf: Vec<u8>,
    /// Event frames: built from `str` pieces, so only what serde writes (the numbers, data that
    /// is a `Value`) passes through `buf` and is checked. Checking the whole frame was a tenth of
    /// a publish to one connection (callgrind, `publish-1-raw`).
    text: String,
}

impl FrameWriter {
    fn finish(&mut self) -> Frame {
        // Serializing JSON from `Value`s, `str`s and numbers never produces invalid UTF-8, and
        // serde_json cannot fail on them (map keys are strings, no non-finite floats exist in a
        // `Value`); an error would be a bug in this module.
        let text = std::str::from_utf8(&self.buf).expect("serde_json writes UTF-8");
        Frame::new(text)
    }

    fn write<T: Serialize>(&mut self, frame: &T) -> Frame {
        self.buf.clear();
        serde_json::to_writer(&mut self.buf, frame).expect("in-memory JSON serialization");
        self.finish()
    }

    /// An event frame. Written by hand up to `data` (the fields serde would write, in its order
    /// and escaping: see the tests), then `data` through the redacting serializer or, for raw
    /// data, copied in (redacted on the way). No tree, no intermediate string.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn event(
        &mut self,
        kind: &EventKind,
        stream: &StreamName,
        pos: StreamPos,
        thread: Option<&ThreadId>,
        run: Option<&RunId>,
        data: &Payload,
        redactor: &Redactor,
    ) -> Frame {
        let (b, bytes) = (&mut self.text, &mut self.buf);
        b.clear();
        match kind {
            EventKind::Custom(name) | EventKind::CustomDroppable(name) => {
                b.push_str(r#"{"type":"#);
                json_str(b, name);
            }
            // The built-in names are lowercase ASCII letters and `_`: nothing to escape.
            _ => {
                b.push_str(r#"{"type":""#);
                b.push_str(kind.as_str());
                b.push('"');
            }
        }
        match stream {
            StreamName::User => b.push_str(r#","stream":"u""#),
            StreamName::Tenant => b.push_str(r#","stream":"t""#),
            StreamName::Room(room) => {
                b.push_str(r#","stream":"r:"#);
                json_str_inner(b, room.as_str());
                b.push('"');
            }
        }
        // The numbers through serde_json (itoa), then checked as one piece.
        bytes.clear();
        bytes.extend_from_slice(br#","epoch":"#);
        json(bytes, &pos.epoch);
        bytes.extend_from_slice(br#","seq":"#);
        json(bytes, &pos.seq);
        b.push_str(std::str::from_utf8(bytes).expect("numbers are ASCII"));
        if let Some(thread) = thread {
            b.push_str(r#","thread_id":"#);
            json_str(b, thread.as_str());
        }
        if let Some(run) = run {
            b.push_str(r#","run_id":"#);
            json_str(b, run.as_str());
        }
        // Absent when the envelope carries no data (`null`): the README calls `data` optional.
        if !data.is_null() {
            b.push_str(r#","data":"#);
            match data {
                Payload::Json(value) => {
                    bytes.clear();
                    json(bytes, &Redacted { value, redactor });
                    b.push_str(std::str::from_utf8(bytes).expect("serde_json writes UTF-8"));
                }
                Payload::Raw(raw) => {
                    write_redacted(b, raw, (!redactor.is_empty()).then_some(redactor));
                }
            }
        }
        b.push('}');
        Frame::new(b)
    }

    /// The event frame through serde: the reference the hand-written one must match.
    #[cfg(test)]
    #[allow(clippy::too_many_arguments)]
    fn event_by_serde(
        &mut self,
        kind: &EventKind,
        stream: &StreamName,
        pos: StreamPos,
        thread: Option<&ThreadId>,
        run: Option<&RunId>,
        data: &Value,
        redactor: &Redactor,
    ) -> Frame {
        self.write(&EventFrame {
            kind: kind.as_str(),
            stream: WireStream(stream),
            epoch: pos.epoch,
            seq: pos.seq,
            thread_id: thread.map(ThreadId::as_str),
            run_id: run.map(RunId::as_str),
            data: (!data.is_null()).then_some(Redacted { value: data, redactor }),
        })
    }

    /// The `connected` frame, written by hand: it is built once per connection, and going through
    /// serde (escaping every constant key, formatting the id with `core::fmt`) was most of the
    /// cost of a connect. Byte-identical to the serde form (see the tests).
    pub(crate) fn connected(
        &mut self,
        conn: ConnId,
        tenant: &TenantId,
        user: &UserId,
        heartbeat_ms: u64,
        session_expires_in_ms: Option<u64>,
        streams: &[(StreamName, StreamPos)],
    ) -> Frame {
        let b = &mut self.buf;
        b.clear();
        b.extend_from_slice(br#"{"type":"connected","conn_id":""#);
        json(b, &conn.index);
        b.push(b'v');
        json(b, &conn.generation);
        b.extend_from_slice(br#"","tenant":"#);
        json_str(b, tenant.as_str());
        b.extend_from_slice(br#","user":"#);
        json_str(b, user.as_str());
        b.extend_from_slice(br#","heartbeat_ms":"#);
        json(b, &heartbeat_ms);
        b.extend_from_slice(br#","session_expires_in_ms":"#);
        json(b, &session_expires_in_ms);
        b.extend_from_slice(br#","streams":{"#);
        for (i, (name, pos)) in streams.iter().enumerate() {
            if i > 0 {
                b.push(b',');
            }
            json(b, &WireStream(name));
            b.extend_from_slice(br#":{"epoch":"#);
            json(b, &pos.epoch);
            b.extend_from_slice(br#","seq":"#);
            json(b, &pos.seq);
            b.push(b'}');
        }
        b.extend_from_slice(b"}}");
        self.finish()
    }

    /// The `connected` frame through serde: the reference the hand-written one must match.
    #[cfg(test)]
    fn connected_by_serde(
        &mut self,
        conn: ConnId,
        tenant: &TenantId,
        user: &UserId,
        heartbeat_ms: u64,
        session_expires_in_ms: Option<u64>,
        streams: &[(StreamName, StreamPos)],
    ) -> Frame {
        self.write(&ControlFrame::Connected {
            conn_id: WireConnId(conn),
            tenant,
            user,
            heartbeat_ms,
            session_expires_in_ms,
            streams: Positions(streams),
        })
    }

    /// A reply to the client message `id`: its data (redacted like an event's), or an error.
    pub(crate) fn reply(
        &mut self,
        id: &str,
        result: Result<&Value, (&str, &str)>,
        redactor: &Redactor,
    ) -> Frame {
        let (data, error) = match result {
            Ok(data) => ((!data.is_null()).then_some(Redacted { value: data, redactor }), None),
            Err((code, message)) => (None, Some(ReplyErrorBody { code, message })),
        };
        self.write(&ControlFrame::Reply { id, data, error })
    }

    pub(crate) fn refreshed(&mut self, session_expires_in_ms: Option<u64>) -> Frame {
        self.write(&ControlFrame::Refreshed { session_expires_in_ms })
    }

    pub(crate) fn refresh_required(&mut self, expires_in_ms: u64) -> Frame {
        self.write(&ControlFrame::RefreshRequired { expires_in_ms })
    }

    pub(crate) fn error(&mut self, err: &PeerError, id: Option<&str>) -> Frame {
        self.write(&ControlFrame::Error { code: err.code(), message: err.to_string(), id })
    }

    pub(crate) fn pong(&mut self) -> Frame {
        self.write(&ControlFrame::Pong)
    }

    pub(crate) fn skipped(&mut self, count: u32) -> Frame {
        self.write(&ControlFrame::Skipped { count })
    }

    /// The connection was put into a room: live delivery of its stream starts after `pos`.
    pub(crate) fn joined(&mut self, stream: &StreamName, pos: StreamPos) -> Frame {
        self.write(&ControlFrame::Joined {
            stream: WireStream(stream),
            epoch: pos.epoch,
            seq: pos.seq,
        })
    }

    /// Cluster mode: the stream's messages up to `pos` may be missing; the client refetches.
    pub(crate) fn resync(&mut self, stream: &StreamName, pos: StreamPos, reason: &str) -> Frame {
        self.write(&ControlFrame::Resync {
            stream: WireStream(stream),
            epoch: pos.epoch,
            seq: pos.seq,
            recovered: false,
            reason,
        })
    }

    /// Presence: who is in `scope` (`members: null` when the scope is too large for a list).
    pub(crate) fn presence(
        &mut self,
        scope: &str,
        count: u32,
        members: Option<&[crate::presence::PresentUser]>,
    ) -> Frame {
        self.buf.clear();
        self.buf.extend_from_slice(br#"{"type":"presence","scope":"#);
        json_str(&mut self.buf, scope);
        self.buf.extend_from_slice(format!(r#","count":{count},"members":"#).as_bytes());
        match members {
            None => self.buf.extend_from_slice(b"null"),
            Some(members) => {
                self.buf.push(b'[');
                for (i, m) in members.iter().enumerate() {
                    if i > 0 {
                        self.buf.push(b',');
                    }
                    self.buf.extend_from_slice(br#"{"user":"#);
                    json_str(&mut self.buf, m.user.as_str());
                    self.buf.extend_from_slice(format!(r#","conns":{}"#, m.conns).as_bytes());
                    meta_field(&mut self.buf, m.meta.as_deref());
                    self.buf.push(b'}');
                }
                self.buf.push(b']');
            }
        }
        self.buf.push(b'}');
        self.finish()
    }

    /// Presence: the scope's joins and leaves since the last batch.
    pub(crate) fn presence_diff(
        &mut self,
        scope: &str,
        joins: &[(UserId, Option<std::sync::Arc<str>>)],
        leaves: &[UserId],
    ) -> Frame {
        self.buf.clear();
        self.buf.extend_from_slice(br#"{"type":"presence_diff","scope":"#);
        json_str(&mut self.buf, scope);
        self.buf.extend_from_slice(br#","joins":["#);
        for (i, (user, meta)) in joins.iter().enumerate() {
            if i > 0 {
                self.buf.push(b',');
            }
            self.buf.extend_from_slice(br#"{"user":"#);
            json_str(&mut self.buf, user.as_str());
            meta_field(&mut self.buf, meta.as_deref());
            self.buf.push(b'}');
        }
        self.buf.extend_from_slice(br#"],"leaves":["#);
        for (i, user) in leaves.iter().enumerate() {
            if i > 0 {
                self.buf.push(b',');
            }
            json_str(&mut self.buf, user.as_str());
        }
        self.buf.extend_from_slice(b"]}");
        self.finish()
    }

    /// A `history` answer: `messages` are event frames exactly as delivered live (their bytes
    /// are copied in, not re-serialized). At most [`HISTORY_OVERHEAD`] bytes besides the
    /// messages, their commas and the id.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn history(
        &mut self,
        id: Option<&str>,
        stream: &StreamName,
        pos: StreamPos,
        available_from: u64,
        more: bool,
        reason: Option<&str>,
        messages: &[&Frame],
    ) -> Frame {
        let b = &mut self.buf;
        b.clear();
        b.extend_from_slice(br#"{"type":"history""#);
        if let Some(id) = id {
            b.extend_from_slice(br#","id":"#);
            json_str(b, id);
        }
        b.extend_from_slice(br#","stream":"#);
        serde_json::to_writer(&mut *b, &WireStream(stream)).expect("in-memory JSON");
        let numbers = format!(
            r#","epoch":{},"seq":{},"available_from":{available_from},"more":{more}"#,
            pos.epoch, pos.seq
        );
        b.extend_from_slice(numbers.as_bytes());
        if let Some(reason) = reason {
            b.extend_from_slice(br#","reason":"#);
            json_str(b, reason);
        }
        b.extend_from_slice(br#","messages":["#);
        for (i, m) in messages.iter().enumerate() {
            if i > 0 {
                b.push(b',');
            }
            b.extend_from_slice(m.as_str().as_bytes());
        }
        b.extend_from_slice(b"]}");
        self.finish()
    }

    pub(crate) fn left(&mut self, stream: &StreamName) -> Frame {
        self.write(&ControlFrame::Left { stream: WireStream(stream) })
    }

    pub(crate) fn resumed(&mut self, recovered: bool, reports: &[(String, StreamReport)]) -> Frame {
        self.write(&ControlFrame::Resumed { recovered, streams: Reports(reports) })
    }
}

/// The most a `history` answer adds to its messages, their commas, its id (escaped: six bytes a
/// byte at worst) and its stream name (likewise): the fixed keys, three numbers of 20 digits,
/// `more` and the longest reason.
pub(crate) const HISTORY_OVERHEAD: u64 = 200;

/// Where hand-written frames are built: bytes (checked once at the end) or text (never checked).
trait Out {
    fn put(&mut self, text: &str);
}

impl Out for Vec<u8> {
    #[inline]
    fn put(&mut self, text: &str) {
        self.extend_from_slice(text.as_bytes());
    }
}

impl Out for String {
    #[inline]
    fn put(&mut self, text: &str) {
        self.push_str(text);
    }
}

/// Appends `text` as a JSON string, byte for byte as serde_json writes it. Most strings of a
/// frame (kinds, ids, names) need no escape: eight bytes at a time finds that out, and they are
/// copied between quotes in one go. serde_json's writer looks up each byte in a table, about 14
/// instructions a byte (callgrind, `publish-1-raw`); the others go through it.
#[inline]
fn json_str(out: &mut impl Out, text: &str) {
    out.put("\"");
    json_str_inner(out, text);
    out.put("\"");
}

/// [`json_str`] without the quotes.
#[inline]
fn json_str_inner(out: &mut impl Out, text: &str) {
    if needs_escape(text.as_bytes()) {
        let quoted = serde_json::to_string(text).expect("in-memory JSON serialization");
        out.put(&quoted[1..quoted.len() - 1]);
    } else {
        out.put(text);
    }
}

/// Whether a JSON string of `bytes` needs an escape (serde_json's rule: a control character,
/// a quote or a backslash; everything else, UTF-8 included, is written as it is).
/// Eight bytes at a time; a tail is read as the last eight bytes (or two overlapping halves of a
/// string of four to seven), so no byte is looked at alone unless the string is shorter.
#[inline]
fn needs_escape(bytes: &[u8]) -> bool {
    let flagged = |w: u64| byte_below(w, 0x20) | quote_or_backslash(w) != 0;
    let n = bytes.len();
    if n >= 8 {
        let mut words = bytes.chunks_exact(8);
        for chunk in &mut words {
            if flagged(u64::from_le_bytes(chunk.try_into().expect("eight bytes"))) {
                return true;
            }
        }
        let last = bytes[n - 8..].try_into().expect("eight bytes");
        !words.remainder().is_empty() && flagged(u64::from_le_bytes(last))
    } else if n >= 4 {
        let low = u32::from_le_bytes(bytes[..4].try_into().expect("four bytes"));
        let high = u32::from_le_bytes(bytes[n - 4..].try_into().expect("four bytes"));
        flagged(u64::from(low) | u64::from(high) << 32)
    } else {
        bytes.iter().any(|&c| ESCAPED[usize::from(c)])
    }
}

/// The bytes a JSON string escapes (serde_json's rule), looked up one at a time in a string of
/// fewer than four bytes (fewer instructions than three comparisons).
static ESCAPED: [bool; 256] = {
    let mut table = [false; 256];
    let mut c = 0;
    while c < 256 {
        table[c] = c < 0x20 || c == b'"' as usize || c == b'\\' as usize;
        c += 1;
    }
    table
};

/// Appends `,"meta":<object>` when there is metadata (already valid JSON: `PresenceMeta`).
fn meta_field(buf: &mut Vec<u8>, meta: Option<&str>) {
    if let Some(meta) = meta {
        buf.extend_from_slice(br#","meta":"#);
        buf.extend_from_slice(meta.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::RoomId;
    use crate::payload::RawData;
    use serde_json::json;

    fn redactor() -> Redactor {
        Redactor::new(&["password".into(), "api_key".into()])
    }

    #[test]
    fn event_frames_follow_the_wire_format() {
        let mut w = FrameWriter::default();
        let f = w.event(
            &EventKind::AgentStarted,
            &StreamName::User,
            StreamPos { epoch: 5, seq: 42 },
            Some(&ThreadId::from("t1")),
            Some(&RunId::from("r9")),
            &Payload::Json(json!({"step": 1})),
            &redactor(),
        );
        assert_eq!(
            f.as_str(),
            r#"{"type":"agent_started","stream":"u","epoch":5,"seq":42,"thread_id":"t1","run_id":"r9","data":{"step":1}}"#
        );
        let room = w.event(
            &EventKind::custom("note"),
            &StreamName::Room(RoomId::from("a\"b")),
            StreamPos { epoch: 1, seq: 1 },
            None,
            None,
            &Payload::default(),
            &redactor(),
        );
        let v: Value = serde_json::from_str(room.as_str()).unwrap();
        assert_eq!(v["stream"], "r:a\"b");
        assert!(v.get("thread_id").is_none());
    }

    #[test]
    fn the_hand_written_connected_frame_is_the_serde_one() {
        let mut w = FrameWriter::default();
        let streams = [
            (StreamName::User, StreamPos { epoch: 1 << 52, seq: 0 }),
            (StreamName::Tenant, StreamPos { epoch: 7, seq: u64::MAX }),
        ];
        for (conn, tenant, user, expiry) in [
            (ConnId::new(0, 1), "acme", "alice", None),
            (ConnId::new(u32::MAX, u32::MAX), "a\"c\\me\n", "ü\u{1}ser", Some(0)),
            (ConnId::new(42, 7), "", "x", Some(u64::MAX)),
        ] {
            let (t, u) = (TenantId::from(tenant), UserId::from(user));
            let by_hand = w.connected(conn, &t, &u, 25_000, expiry, &streams);
            let by_serde = w.connected_by_serde(conn, &t, &u, 25_000, expiry, &streams);
            assert_eq!(by_hand.as_str(), by_serde.as_str());
        }
    }

    #[test]
    fn redaction_reaches_any_depth_and_ignores_case() {
        let mut w = FrameWriter::default();
        let data = json!({
            "Password": "hunter2",
            "nested": [{"api_key": "k", "keep": {"password": {"deep": 1}}}],
            "keep": "visible"
        });
        let f = w.event(
            &EventKind::ToolExecuting,
            &StreamName::User,
            StreamPos { epoch: 1, seq: 1 },
            None,
            None,
            &Payload::Json(data.clone()),
            &redactor(),
        );
        let v: Value = serde_json::from_str(f.as_str()).unwrap();
        assert_eq!(
            v["data"],
            json!({
                "Password": "[redacted]",
                "nested": [{"api_key": "[redacted]", "keep": {"password": "[redacted]"}}],
                "keep": "visible"
            })
        );
        assert!(!f.as_str().contains("hunter2"));
    }

    /// Strings are written byte for byte as serde_json writes them: every ASCII character and
    /// some others, alone and at every position of strings that end inside, at and past a word.
    #[test]
    fn strings_are_written_as_serde_writes_them() {
        let mut checked = 0;
        let chars = (0u8..128).map(char::from).chain(['é', '€', '😀', '\u{7f}', '\u{2028}']);
        for c in chars {
            for len in [1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17] {
                for at in 0..len {
                    let text: String = (0..len).map(|i| if i == at { c } else { 'a' }).collect();
                    let (mut ours, mut bytes) = (String::new(), Vec::new());
                    json_str(&mut ours, &text);
                    json_str(&mut bytes, &text);
                    assert_eq!(ours, serde_json::to_string(&text).unwrap(), "{text:?}");
                    assert_eq!(bytes, ours.as_bytes(), "{text:?}");
                    checked += 1;
                }
            }
        }
        // `event` copies a built-in kind's name without this check: none may need an escape.
        for kind in [
            EventKind::AgentStarted,
            EventKind::AgentThinking,
            EventKind::ToolExecuting,
            EventKind::ToolCompleted,
            EventKind::AgentCompleted,
        ] {
            assert!(!needs_escape(kind.as_str().as_bytes()), "{}", kind.as_str());
        }
        let mut empty = Vec::new();
        json_str(&mut empty, "");
        assert_eq!(empty, br#""""#);
        assert_eq!(checked, 133 * 87);
    }

    #[test]
    fn the_hand_written_event_frame_is_the_serde_one() {
        let mut w = FrameWriter::default();
        let data = json!({"b": [1, {"api_key": "k"}], "a": "x\"y"});
        let redactors = [redactor(), Redactor::default()];
        for (kind, stream, thread, run) in [
            (EventKind::ToolExecuting, StreamName::User, None, None),
            (EventKind::custom("a\"b\\c\u{1}é".to_owned()), StreamName::Tenant, Some("t\"1"), None),
            (EventKind::AgentThinking, StreamName::Room("r\"ö".into()), None, Some("run\n")),
            (EventKind::AgentCompleted, StreamName::Room("lobby".into()), Some(""), Some("r")),
        ] {
            let (thread, run) = (thread.map(ThreadId::from), run.map(RunId::from));
            for pos in [StreamPos { epoch: 1, seq: 0 }, StreamPos { epoch: u64::MAX, seq: 1 << 53 }]
            {
                for value in [&data, &Value::Null] {
                    for r in &redactors {
                        // The data as a `Value`, and as raw text (compact, keys in the order a
                        // `Value` writes them): the same frame either way.
                        let raw = RawData::new(value.to_string()).expect("valid JSON");
                        let (t, u) = (thread.as_ref(), run.as_ref());
                        let by_serde = w.event_by_serde(&kind, &stream, pos, t, u, value, r);
                        for payload in [Payload::Json(value.clone()), Payload::Raw(raw.clone())] {
                            let by_hand = w.event(&kind, &stream, pos, t, u, &payload, r);
                            assert_eq!(by_hand.as_str(), by_serde.as_str());
                        }
                    }
                }
            }
        }
    }
}
