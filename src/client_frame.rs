//! Client → server frames: one parse of the JSON object, then validation per `type`
//! (README "Client frames"). The server → client side is `protocol.rs`.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde_json::Value;

use crate::error::PeerError;
use crate::ids::StreamPos;

/// Every field any client frame may carry; validated per type afterwards. One parse, and a clear
/// error for a missing or wrongly typed field rather than serde's message about the whole frame.
#[derive(Deserialize)]
struct RawClientFrame<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Loose<'a>,
    #[serde(borrow, default)]
    thread_id: Loose<'a>,
    #[serde(borrow, default)]
    run_id: Loose<'a>,
    data: Option<Value>,
    positions: Option<Value>,
    #[serde(borrow, default)]
    scope: Loose<'a>,
    #[serde(borrow, default)]
    id: Loose<'a>,
    #[serde(borrow, default)]
    token: Loose<'a>,
    #[serde(borrow, default)]
    stream: Loose<'a>,
    limit: Option<Value>,
    before: Option<Value>,
    after: Option<Value>,
    epoch: Option<Value>,
}

/// A field that should be a string: the string, absent, or something else (reported as an invalid
/// field by the caller, not as a malformed frame).
#[derive(Default, Debug)]
enum Loose<'a> {
    #[default]
    Absent,
    Str(Cow<'a, str>),
    Other,
}

impl<'de: 'a, 'a> Deserialize<'de> for Loose<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = Loose<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Loose::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Loose::Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Loose::Str(Cow::Owned(v)))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Loose::Other)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(Loose::Other)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(Loose::Other)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Loose::Other)
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Loose::Other)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(Loose::Other)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                while map.next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?.is_some() {}
                Ok(Loose::Other)
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// `positions`: an object of stream name → `{epoch, seq}` (non-negative integers).
fn parse_positions(
    value: Value,
    max: usize,
) -> Result<Vec<(Cow<'static, str>, StreamPos)>, PeerError> {
    let invalid = PeerError::InvalidField { field: "positions" };
    let Value::Object(map) = value else { return Err(invalid) };
    if map.len() > max {
        return Err(invalid);
    }
    let mut out = Vec::with_capacity(map.len());
    for (name, pos) in map {
        let field = |f: &str| pos.get(f).and_then(Value::as_u64);
        match (field("epoch"), field("seq")) {
            (Some(epoch), Some(seq)) => out.push((Cow::Owned(name), StreamPos { epoch, seq })),
            _ => return Err(invalid),
        }
    }
    Ok(out)
}

/// A parsed, validated client frame.
#[derive(Debug, PartialEq)]
pub(crate) enum ClientFrame<'a> {
    /// A thread, a run, or both (at least one).
    Subscribe {
        thread: Option<Cow<'a, str>>,
        run: Option<Cow<'a, str>>,
    },
    /// Neither: clears the filter, and the connection receives all of its user's events again.
    Unsubscribe {
        thread: Option<Cow<'a, str>>,
        run: Option<Cow<'a, str>>,
    },
    Message {
        thread: Option<Cow<'a, str>>,
        data: Value,
        /// What the client will match the application's `reply` with.
        id: Option<Cow<'a, str>>,
    },
    Ping,
    /// Stream name (`u`, `t`, `r:<room>`) → the last position the client saw.
    Resume {
        positions: Vec<(Cow<'a, str>, StreamPos)>,
    },
    /// Presence: a fresh snapshot of a scope (`t` or `r:<room>`) the connection is in.
    Presence {
        scope: Cow<'a, str>,
    },
    /// A new token for this connection's session, for the application to verify.
    Refresh {
        token: Cow<'a, str>,
    },
    /// The last messages of a stream the connection may see (`History::page` says which).
    History(History<'a>),
}

/// A `history` request: up to `limit` messages of `stream` that the connection may see, the
/// newest ones (before `before`, if given), or the oldest ones after `after`; only those of a
/// thread or a run when asked.
#[derive(Debug, PartialEq)]
pub(crate) struct History<'a> {
    pub(crate) stream: Cow<'a, str>,
    pub(crate) limit: u32,
    pub(crate) page: Page,
    /// The epoch the client's positions belong to; another epoch's positions mean nothing.
    pub(crate) epoch: Option<u64>,
    pub(crate) thread: Option<Cow<'a, str>>,
    pub(crate) run: Option<Cow<'a, str>>,
    /// Echoed in the answer, so the client can match it.
    pub(crate) id: Option<Cow<'a, str>>,
}

/// Which messages of a stream a `history` request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Page {
    /// The newest ones.
    Last,
    /// The newest ones with a seq below this.
    Before(u64),
    /// The oldest ones with a seq above this.
    After(u64),
}

impl ClientFrame<'_> {
    pub(crate) fn is_message(&self) -> bool {
        matches!(self, ClientFrame::Message { .. })
    }
}

/// The `id` an `error` frame refusing `frame` carries: the one the frame named, if it is a JSON
/// object whose `id` (named once) is a valid client id (1 to `max_id` bytes), whatever its type
/// and whatever else is wrong with it; so a client can fail a refused request at once. Read again
/// only on that error path, and never for a frame over the size limit.
pub(crate) fn echo_id(frame: &[u8], max_id: usize) -> Option<Cow<'_, str>> {
    #[derive(Deserialize)]
    struct IdOnly<'a> {
        #[serde(borrow, default)]
        id: Loose<'a>,
    }
    let only: IdOnly<'_> = serde_json::from_slice(frame).ok()?;
    client_id(only.id, max_id).ok().flatten()
}

/// [`echo_id`] for a frame that parsed: the id it kept (a `message`'s, a `history` request's),
/// without reading it again; other types keep none, so their bytes are read for it.
pub(crate) fn frame_id<'a>(
    parsed: &'a ClientFrame<'_>,
    frame: &'a [u8],
    max_id: usize,
) -> Option<Cow<'a, str>> {
    match parsed {
        ClientFrame::Message { id, .. } | ClientFrame::History(History { id, .. }) => {
            id.as_deref().map(Cow::Borrowed)
        }
        _ => echo_id(frame, max_id),
    }
}

/// A client-chosen id (`message`'s, `history`'s): absent, or 1 to `max_id` bytes.
fn client_id(id: Loose<'_>, max_id: usize) -> Result<Option<Cow<'_, str>>, PeerError> {
    match id {
        Loose::Absent => Ok(None),
        Loose::Str(id) if !id.is_empty() && id.len() <= max_id => Ok(Some(id)),
        _ => Err(PeerError::InvalidField { field: "id" }),
    }
}

/// Parses one client frame. The caller has already checked its size. A `history` request asks
/// for at most `max_history` messages.
pub(crate) fn parse_client_frame(
    bytes: &[u8],
    max_id: usize,
    max_positions: usize,
    max_history: u32,
) -> Result<ClientFrame<'_>, PeerError> {
    // A frame is a JSON object; serde would also read a struct from an array, position by
    // position, which the protocol does not allow.
    if let Some(at) = bytes.iter().position(|b| !b.is_ascii_whitespace()) {
        if bytes[at] != b'{' {
            let line = 1 + bytes[..at].iter().filter(|&&b| b == b'\n').count();
            let column =
                at - bytes[..at].iter().rposition(|&b| b == b'\n').map_or(0, |nl| nl + 1) + 1;
            return Err(PeerError::Malformed { line, column });
        }
    }
    let raw: RawClientFrame<'_> = serde_json::from_slice(bytes)
        .map_err(|e| PeerError::Malformed { line: e.line(), column: e.column() })?;
    let Loose::Str(kind) = raw.kind else { return Err(PeerError::MissingType) };
    let thread = match raw.thread_id {
        Loose::Absent => None,
        Loose::Str(t) if !t.is_empty() && t.len() <= max_id => Some(t),
        _ => return Err(PeerError::InvalidField { field: "thread_id" }),
    };
    let run = match raw.run_id {
        Loose::Absent => None,
        Loose::Str(r) if !r.is_empty() && r.len() <= max_id => Some(r),
        _ => return Err(PeerError::InvalidField { field: "run_id" }),
    };
    match &*kind {
        "subscribe" if thread.is_none() && run.is_none() => {
            Err(PeerError::InvalidField { field: "thread_id" })
        }
        "subscribe" => Ok(ClientFrame::Subscribe { thread, run }),
        "unsubscribe" => Ok(ClientFrame::Unsubscribe { thread, run }),
        "message" => {
            let id = client_id(raw.id, max_id)?;
            Ok(ClientFrame::Message { thread, data: raw.data.unwrap_or(Value::Null), id })
        }
        "history" => {
            let stream = match raw.stream {
                // `u`, `t`, or `r:` plus a room id of at most `max_id` bytes.
                Loose::Str(s) if !s.is_empty() && s.len() <= max_id + 2 => s,
                _ => return Err(PeerError::InvalidField { field: "stream" }),
            };
            let number = |v: Option<Value>, field| match v {
                None => Ok(None),
                Some(v) => v.as_u64().map(Some).ok_or(PeerError::InvalidField { field }),
            };
            let limit = match number(raw.limit, "limit")? {
                None => max_history,
                Some(n) if n >= 1 && n <= u64::from(max_history) => n as u32,
                Some(_) => return Err(PeerError::InvalidField { field: "limit" }),
            };
            let page = match (number(raw.before, "before")?, number(raw.after, "after")?) {
                (None, None) => Page::Last,
                (Some(b), None) => Page::Before(b),
                (None, Some(a)) => Page::After(a),
                (Some(_), Some(_)) => return Err(PeerError::InvalidField { field: "after" }),
            };
            let epoch = number(raw.epoch, "epoch")?;
            let id = client_id(raw.id, max_id)?;
            Ok(ClientFrame::History(History { stream, limit, page, epoch, thread, run, id }))
        }
        "ping" => Ok(ClientFrame::Ping),
        "resume" => {
            let positions = raw.positions.ok_or(PeerError::InvalidField { field: "positions" })?;
            Ok(ClientFrame::Resume { positions: parse_positions(positions, max_positions)? })
        }
        "refresh" => match raw.token {
            Loose::Str(token) if !token.is_empty() => Ok(ClientFrame::Refresh { token }),
            _ => Err(PeerError::InvalidField { field: "token" }),
        },
        "presence" => match raw.scope {
            // `r:` plus a room id of at most `max_id` bytes.
            Loose::Str(scope) if !scope.is_empty() && scope.len() <= max_id + 2 => {
                Ok(ClientFrame::Presence { scope })
            }
            _ => Err(PeerError::InvalidField { field: "scope" }),
        },
        _ => Err(PeerError::UnknownType),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn client_frames_parse_and_validate() {
        fn p(s: &str) -> Result<ClientFrame<'_>, PeerError> {
            parse_client_frame(s.as_bytes(), 8, 2, 50)
        }
        assert_eq!(
            p(r#"{"type":"subscribe","thread_id":"t1"}"#),
            Ok(ClientFrame::Subscribe { thread: Some("t1".into()), run: None })
        );
        assert_eq!(
            p(r#"{"type":"subscribe","run_id":"r9"}"#),
            Ok(ClientFrame::Subscribe { thread: None, run: Some("r9".into()) })
        );
        assert_eq!(
            p(r#"{"type":"unsubscribe","run_id":"r9"}"#),
            Ok(ClientFrame::Unsubscribe { thread: None, run: Some("r9".into()) })
        );
        assert_eq!(
            p(r#"{"type":"subscribe","run_id":""}"#),
            Err(PeerError::InvalidField { field: "run_id" })
        );
        assert_eq!(
            p(r#"{"type":"ping","run_id":7}"#),
            Err(PeerError::InvalidField { field: "run_id" })
        );
        assert_eq!(
            p(r#"{"type":"unsubscribe"}"#),
            Ok(ClientFrame::Unsubscribe { thread: None, run: None })
        );
        let history = |stream: &'static str, limit, page| {
            Ok(ClientFrame::History(History {
                stream: stream.into(),
                limit,
                page,
                epoch: None,
                thread: None,
                run: None,
                id: None,
            }))
        };
        assert_eq!(p(r#"{"type":"history","stream":"u"}"#), history("u", 50, Page::Last));
        assert_eq!(
            p(r#"{"type":"history","stream":"r:lobby","limit":3,"before":9}"#),
            history("r:lobby", 3, Page::Before(9))
        );
        assert_eq!(
            p(r#"{"type":"history","stream":"t","after":0}"#),
            history("t", 50, Page::After(0))
        );
        for (bad, field) in [
            (r#"{"type":"history"}"#, "stream"),
            (r#"{"type":"history","stream":"u","limit":0}"#, "limit"),
            (r#"{"type":"history","stream":"u","limit":51}"#, "limit"),
            (r#"{"type":"history","stream":"u","before":-1}"#, "before"),
            (r#"{"type":"history","stream":"u","before":1,"after":0}"#, "after"),
            (r#"{"type":"history","stream":"u","epoch":"x"}"#, "epoch"),
            (r#"{"type":"history","stream":"u","id":""}"#, "id"),
        ] {
            assert_eq!(p(bad), Err(PeerError::InvalidField { field }), "{bad}");
        }
        assert_eq!(p(r#"{"type":"ping","extra":[1,2]}"#), Ok(ClientFrame::Ping));
        assert_eq!(
            p(r#"{"type":"message","data":{"user_id":"mallory"}}"#),
            Ok(ClientFrame::Message { thread: None, data: json!({"user_id":"mallory"}), id: None })
        );
        assert_eq!(
            p(r#"{"type":"subscribe"}"#),
            Err(PeerError::InvalidField { field: "thread_id" })
        );
        assert_eq!(
            p(r#"{"type":"subscribe","thread_id":"123456789"}"#),
            Err(PeerError::InvalidField { field: "thread_id" })
        );
        assert_eq!(p(r#"{"type":"launch"}"#), Err(PeerError::UnknownType));
        assert_eq!(
            p(
                r#"{"type":"resume","positions":{"u":{"epoch":3,"seq":9},"r:x":{"epoch":1,"seq":0}}}"#
            ),
            Ok(ClientFrame::Resume {
                // Order does not matter: the hub walks its own streams.
                positions: vec![
                    ("r:x".into(), StreamPos { epoch: 1, seq: 0 }),
                    ("u".into(), StreamPos { epoch: 3, seq: 9 })
                ]
            })
        );
        let three = r#"{"type":"resume","positions":{"u":{"epoch":1,"seq":1},"t":{"epoch":1,"seq":1},"r:a":{"epoch":1,"seq":1}}}"#;
        assert_eq!(p(three), Err(PeerError::InvalidField { field: "positions" }));
        assert_eq!(p(r#"{"type":"resume"}"#), Err(PeerError::InvalidField { field: "positions" }));
        assert_eq!(
            p(r#"{"type":"resume","positions":{"u":{"epoch":-1,"seq":1}}}"#),
            Err(PeerError::InvalidField { field: "positions" })
        );
        assert_eq!(
            p(r#"{"type":"resume","positions":[1]}"#),
            Err(PeerError::InvalidField { field: "positions" })
        );
        assert_eq!(p(r#"{"thread_id":"t"}"#), Err(PeerError::MissingType));
        assert!(matches!(p("{not json"), Err(PeerError::Malformed { .. })));
        assert_eq!(p(r#"{"type":7}"#), Err(PeerError::MissingType));
        assert_eq!(
            p(r#"{"type":"subscribe","thread_id":5}"#),
            Err(PeerError::InvalidField { field: "thread_id" })
        );
        assert_eq!(p("[]"), Err(PeerError::Malformed { line: 1, column: 1 }));
        assert_eq!(p(" \n  [\"ping\"]"), Err(PeerError::Malformed { line: 2, column: 3 }));
        assert_eq!(
            p(r#"["message","t",{"n":1}]"#),
            Err(PeerError::Malformed { line: 1, column: 1 })
        );
        assert!(matches!(
            parse_client_frame(&[0xff, 0xfe], 8, 2, 50),
            Err(PeerError::Malformed { .. })
        ));
    }
}
