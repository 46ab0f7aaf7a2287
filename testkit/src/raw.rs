//! Raw client frames: bytes a client sends that the vocabulary's `In` variants do not spell, and
//! how the protocol reads them (README "Client frames", `PeerError`): a frame is one JSON object
//! (anything else is `malformed`, located at the first character that is not whitespace, or where
//! the JSON breaks; a field named twice breaks it); `type` must be a string (`missing_type`
//! otherwise) and one of the seven client types (`unknown_type`); `thread_id`, when present, a
//! non-empty string of at most `max_client_id_bytes` (checked for every type), and so is
//! `run_id`; `subscribe` needs one or the other (without either: `invalid_field` `thread_id`);
//! a `message`'s `id`, when present, is such a string too; `resume` needs `positions`, an
//! object of stream name → `{epoch, seq}` of non-negative integers; `presence` needs a `scope`
//! (a non-empty string of at most `max_client_id_bytes + 2`); `refresh` a non-empty `token`;
//! `history` a `stream` like `presence`'s `scope`, and optionally `limit` (1 to the config's
//! `max_history_messages`, 100 by default), one of `before` and `after`, and `epoch`
//! (non-negative integers), and an `id` like `message`'s; other fields are ignored.
//!
//! [`decode`] reads bytes that way, and [`Decoded::model_frame`] says what the reference model
//! should answer, or that the frame is valid but outside the model's domain (a thread not named
//! `th<k>`, message data other than `{"n": <u8>}`), in which case the runner does not send it.
//! [`raw_json`] spells frames from a small table of fields, so that both proptest and the fuzzer produce
//! valid-looking frames as well as garbage.

use serde::Deserialize;
use serde_json::Value;
use switchboard::PeerError;

use crate::vocab::{In, thread_name};

/// A field that should be a string: absent, a string, or any other JSON value.
#[derive(Debug, Default)]
enum Field {
    #[default]
    Absent,
    Str(String),
    Other,
}

fn field<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Field, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::String(s) => Field::Str(s),
        _ => Field::Other,
    })
}

/// Every field a client frame may carry (a field named twice is an error, others are ignored).
#[derive(Deserialize)]
struct Wire {
    #[serde(rename = "type", default, deserialize_with = "field")]
    kind: Field,
    #[serde(default, deserialize_with = "field")]
    thread_id: Field,
    #[serde(default, deserialize_with = "field")]
    run_id: Field,
    data: Option<Value>,
    positions: Option<Value>,
    #[serde(default, deserialize_with = "field")]
    id: Field,
    #[serde(default, deserialize_with = "field")]
    scope: Field,
    #[serde(default, deserialize_with = "field")]
    token: Field,
    #[serde(default, deserialize_with = "field")]
    stream: Field,
    limit: Option<Value>,
    before: Option<Value>,
    after: Option<Value>,
    epoch: Option<Value>,
}

/// A client frame as the protocol reads it.
#[derive(Clone, Debug, PartialEq)]
pub enum Decoded {
    /// `subscribe` to a thread.
    Subscribe(String),
    /// `unsubscribe` from a thread, or from every one.
    Unsubscribe(Option<String>),
    /// `subscribe` or (`false`) `unsubscribe` naming a run, maybe with a thread (outside the
    /// model's domain: it knows no runs).
    Run { subscribe: bool, thread: Option<String>, run: String },
    /// `message`, maybe on a thread, with its data (`null` when absent).
    Message(Option<String>, Value),
    /// `ping`.
    Ping,
    /// `resume` with these positions, by stream name.
    Resume(Vec<(String, u64, u64)>),
    /// `presence` for a scope (outside the model's domain: its hubs run without presence).
    Presence(String),
    /// `refresh` with a token (outside the model's domain: it is the application's to verify).
    Refresh(String),
    /// `history` of a stream (outside the model's domain).
    History(String),
    /// Refused with this error.
    Refused(PeerError),
}

/// Reads a client frame as the protocol documents (the size limit aside).
#[must_use]
pub fn decode(bytes: &[u8], max_client_id_bytes: usize) -> Decoded {
    if let Some(at) = bytes.iter().position(|b| !b.is_ascii_whitespace()) {
        if bytes[at] != b'{' {
            let before = &bytes[..at];
            let line = 1 + before.iter().filter(|&&b| b == b'\n').count();
            let column = at - before.iter().rposition(|&b| b == b'\n').map_or(0, |nl| nl + 1) + 1;
            return Decoded::Refused(PeerError::Malformed { line, column });
        }
    }
    let wire: Wire = match serde_json::from_slice(bytes) {
        Ok(w) => w,
        Err(e) => {
            return Decoded::Refused(PeerError::Malformed { line: e.line(), column: e.column() });
        }
    };
    let Field::Str(kind) = wire.kind else { return Decoded::Refused(PeerError::MissingType) };
    let invalid = |field| Decoded::Refused(PeerError::InvalidField { field });
    let thread = match wire.thread_id {
        Field::Absent => None,
        Field::Str(t) if !t.is_empty() && t.len() <= max_client_id_bytes => Some(t),
        _ => return invalid("thread_id"),
    };
    let run = match wire.run_id {
        Field::Absent => None,
        Field::Str(r) if !r.is_empty() && r.len() <= max_client_id_bytes => Some(r),
        _ => return invalid("run_id"),
    };
    if let ("subscribe" | "unsubscribe", Some(run)) = (kind.as_str(), &run) {
        return Decoded::Run { subscribe: kind == "subscribe", thread, run: run.clone() };
    }
    match kind.as_str() {
        "subscribe" => thread.map_or_else(|| invalid("thread_id"), Decoded::Subscribe),
        "unsubscribe" => Decoded::Unsubscribe(thread),
        "message" => match wire.id {
            Field::Absent => Decoded::Message(thread, wire.data.unwrap_or(Value::Null)),
            Field::Str(id) if !id.is_empty() && id.len() <= max_client_id_bytes => {
                Decoded::Message(thread, wire.data.unwrap_or(Value::Null))
            }
            _ => invalid("id"),
        },
        "refresh" => match wire.token {
            Field::Str(token) if !token.is_empty() => Decoded::Refresh(token),
            _ => invalid("token"),
        },
        "presence" => match wire.scope {
            Field::Str(scope) if !scope.is_empty() && scope.len() <= max_client_id_bytes + 2 => {
                Decoded::Presence(scope)
            }
            _ => invalid("scope"),
        },
        "history" => {
            let Field::Str(stream) = wire.stream else { return invalid("stream") };
            if stream.is_empty() || stream.len() > max_client_id_bytes + 2 {
                return invalid("stream");
            }
            let max = u64::from(switchboard::Config::default().max_history_messages);
            let number = |v: &Option<Value>| v.as_ref().map(Value::as_u64);
            match number(&wire.limit) {
                Some(Some(n)) if (1..=max).contains(&n) => {}
                None => {}
                _ => return invalid("limit"),
            }
            let (before, after) = (number(&wire.before), number(&wire.after));
            if before == Some(None) {
                return invalid("before");
            }
            if after == Some(None) || (before.is_some() && after.is_some()) {
                return invalid("after");
            }
            if number(&wire.epoch) == Some(None) {
                return invalid("epoch");
            }
            match wire.id {
                Field::Absent => Decoded::History(stream),
                Field::Str(id) if !id.is_empty() && id.len() <= max_client_id_bytes => {
                    Decoded::History(stream)
                }
                _ => invalid("id"),
            }
        }
        "ping" => Decoded::Ping,
        "resume" => {
            let Some(Value::Object(map)) = wire.positions else { return invalid("positions") };
            let mut out = Vec::new();
            for (name, pos) in map {
                let n = |f: &str| pos.get(f).and_then(Value::as_u64);
                let (Some(epoch), Some(seq)) = (n("epoch"), n("seq")) else {
                    return invalid("positions");
                };
                out.push((name, epoch, seq));
            }
            out.sort();
            Decoded::Resume(out)
        }
        _ => Decoded::Refused(PeerError::UnknownType),
    }
}

/// The `id` an `error` frame refusing `bytes` carries (README "Wire protocol"): the frame's own
/// when it is a JSON object naming `id` once, as a string of 1 to `max_client_id_bytes` bytes;
/// whatever the frame's type, and whatever else is wrong with it. (The caller leaves out frames
/// over the size limit, which are not read for it.)
#[must_use]
pub fn echo_id(bytes: &[u8], max_client_id_bytes: usize) -> Option<String> {
    #[derive(Deserialize)]
    struct IdOf {
        #[serde(default, deserialize_with = "field")]
        id: Field,
    }
    match serde_json::from_slice::<IdOf>(bytes).ok()?.id {
        Field::Str(id) if !id.is_empty() && id.len() <= max_client_id_bytes => Some(id),
        _ => None,
    }
}

/// A thread name of the model's domain (`th<k>`, spelled as [`thread_name`] spells it).
fn thread_index(name: &str) -> Option<usize> {
    let k: usize = name.strip_prefix("th")?.parse().ok()?;
    (thread_name(k) == name).then_some(k)
}

impl Decoded {
    /// The frame the model answers, as an [`In`] (a `resume` as `In::Resume` with no spec: its
    /// positions are [`Decoded::Resume`]'s); `None` for a valid frame outside the model's domain.
    /// A refused frame is `In::Raw` (the model answers the error of [`Decoded::Refused`]).
    #[must_use]
    pub fn model_frame(&self, bytes: &[u8]) -> Option<In> {
        let thread = |t: &Option<String>| match t {
            None => Some(None),
            Some(t) => thread_index(t).map(Some),
        };
        Some(match self {
            Decoded::Subscribe(t) => In::Subscribe(thread_index(t)?),
            Decoded::Unsubscribe(t) => In::Unsubscribe(thread(t)?),
            Decoded::Message(t, data) => {
                let n = data.as_object().filter(|o| o.len() == 1).and_then(|o| o.get("n"));
                let n = u8::try_from(n.and_then(Value::as_u64)?).ok()?;
                In::Message(thread(t)?, n)
            }
            Decoded::Ping => In::Ping,
            Decoded::Resume(_) => In::Resume(Vec::new(), false),
            Decoded::Presence(_)
            | Decoded::Refresh(_)
            | Decoded::Run { .. }
            | Decoded::History(_) => return None,
            Decoded::Refused(_) => In::Raw(bytes.to_vec()),
        })
    }
}

/// The fields of [`raw_json`] frames: a key and the JSON texts its value may be (valid and
/// invalid ones). The last is `type` again: a field named twice.
pub const RAW_FIELDS: [(&str, &[&str]); 11] = [
    (
        "type",
        &[
            r#""subscribe""#,
            r#""unsubscribe""#,
            r#""message""#,
            r#""ping""#,
            r#""resume""#,
            r#""presence""#,
            r#""history""#,
            r#""dance""#,
            "7",
            "null",
        ],
    ),
    (
        "thread_id",
        &[
            r#""th0""#,
            r#""th1""#,
            r#""th12""#,
            r#""""#,
            r#""far-too-long""#,
            r#""custom""#,
            "5",
            "null",
        ],
    ),
    ("data", &[r#"{"n":3}"#, r#"{"n":0}"#, r#"{"n":300}"#, r#"{"n":1,"m":2}"#, "[1,2]", "null"]),
    (
        "positions",
        &[
            r#"{"u":{"epoch":1,"seq":0}}"#,
            r#"{"t":{"epoch":1,"seq":0},"zz":{"epoch":2,"seq":1}}"#,
            r#"{"u":{"epoch":-1,"seq":0}}"#,
            r#"{"u":{"epoch":1}}"#,
            "[1]",
            "{}",
        ],
    ),
    ("x", &["true", r#"{"nested":[1]}"#, r#""y""#]),
    ("id", &[r#""m1""#, r#""""#, "9"]),
    ("scope", &[r#""t""#, r#""r:lobby""#, r#""""#, "null"]),
    ("run_id", &[r#""r1""#, r#""""#, "3"]),
    ("stream", &[r#""u""#, r#""r:lobby""#, r#""""#, "1"]),
    ("limit", &["3", "0", "101", r#""5""#]),
    ("type", &[r#""ping""#]),
];

/// A JSON object spelled from `type` (maybe: an index into its values, modulo their count) and
/// `(field, value)` indices into [`RAW_FIELDS`] (modulo their lengths), with `ws` spaces around
/// its tokens, maybe cut after `cut` bytes.
#[must_use]
pub fn raw_json(kind: Option<u8>, fields: &[(u8, u8)], ws: u8, cut: Option<u16>) -> Vec<u8> {
    let pad = " ".repeat(usize::from(ws % 3));
    let spell = |(f, v): (u8, u8)| {
        let (key, values) = RAW_FIELDS[usize::from(f) % RAW_FIELDS.len()];
        let value = values[usize::from(v) % values.len()];
        format!("{pad}\"{key}\"{pad}:{pad}{value}")
    };
    let body: Vec<String> =
        kind.map(|k| (0, k)).into_iter().chain(fields.iter().copied()).map(spell).collect();
    let mut out = format!("{pad}{{{}{pad}}}", body.join(",")).into_bytes();
    if let Some(cut) = cut {
        out.truncate(usize::from(cut));
    }
    out
}
