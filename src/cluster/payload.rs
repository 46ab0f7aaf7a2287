//! The bus payload: a message serialized once by the publishing node, without its position, and
//! turned into the exact frame a single-node hub would have sent by every receiving node.
//!
//! Layout (three lines; compact JSON never contains a raw newline):
//!
//! ```text
//! {"t":"acme","u":"alice","th":"t1"}          <- header: stream identity, visibility, priority
//! {"type":"message","stream":"u","epoch":     <- the frame up to its epoch
//! ,"thread_id":"t1","data":{..}}              <- the frame after its seq
//! ```
//!
//! A receiving node writes `prefix + epoch + ,"seq": + seq + suffix`: one copy, no parse of the
//! data. Before that it checks that the header names the stream the message arrived on and that
//! the prefix ends with that stream's wire name, so a driver that mixes channels up cannot make a
//! node deliver one tenant's message to another.

use std::borrow::Cow;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{StreamKey, StreamScope};
use crate::ids::StreamPos;

/// The hole left in a frame serialized at position `(0, 0)`.
const HOLE: &str = r#""epoch":0,"seq":0"#;

#[derive(Serialize, Deserialize)]
struct Header<'a> {
    #[serde(borrow)]
    t: Cow<'a, str>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    u: Option<Cow<'a, str>>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    r: Option<Cow<'a, str>>,
    /// Thread of a user-stream message (connections narrowed to other threads skip it).
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    th: Option<Cow<'a, str>>,
    /// Run of a user-stream message (connections narrowed to other runs skip it).
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    rn: Option<Cow<'a, str>>,
    /// Role audience of a tenant broadcast.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    role: Option<Cow<'a, str>>,
    /// Node and connection of a `Target::Connection` message.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    n: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    c: Option<(u32, u32)>,
    /// Low priority (may be skipped for a connection that is behind).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    lo: bool,
    /// Node and connection left out of the recipients (`Envelope::exclude`).
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    xn: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    xc: Option<(u32, u32)>,
}

/// Who may see a message, as carried on the bus.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Visibility<'a> {
    All,
    /// A user-stream message of this thread and run (at least one set).
    Subject(Option<Cow<'a, str>>, Option<Cow<'a, str>>),
    Role(Cow<'a, str>),
    /// One connection of one node: `(index, generation)`.
    Conn(Cow<'a, str>, (u32, u32)),
}

/// Why a message could not be put on the bus.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EncodeError {
    /// The frame did not have the shape the hub writes (a bug, never input).
    NoHole,
}

/// A connection of one node, `(index, generation)`, left out of a message's recipients.
pub(crate) type Excluded<'a> = (Cow<'a, str>, (u32, u32));

/// Encodes a message for `key`, whose frame `frame` was written at position `(0, 0)`.
pub(crate) fn encode(
    key: &StreamKey,
    visibility: &Visibility<'_>,
    except: Option<&Excluded<'_>>,
    low_priority: bool,
    frame: &str,
) -> Result<Arc<str>, EncodeError> {
    let at = frame.find(HOLE).ok_or(EncodeError::NoHole)?;
    let prefix = &frame[..at + r#""epoch":"#.len()];
    let suffix = &frame[at + HOLE.len()..];
    let (u, r) = match &key.scope {
        StreamScope::User(u) => (Some(Cow::Borrowed(u.as_str())), None),
        StreamScope::Room(r) => (None, Some(Cow::Borrowed(r.as_str()))),
        StreamScope::Tenant => (None, None),
    };
    let mut header = Header {
        t: Cow::Borrowed(key.tenant.as_str()),
        u,
        r,
        th: None,
        rn: None,
        role: None,
        n: None,
        c: None,
        lo: low_priority,
        xn: except.map(|(n, _)| Cow::Borrowed(n.as_ref())),
        xc: except.map(|(_, c)| *c),
    };
    match visibility {
        Visibility::All => {}
        Visibility::Subject(t, r) => {
            header.th = t.as_deref().map(Cow::Borrowed);
            header.rn = r.as_deref().map(Cow::Borrowed);
        }
        Visibility::Role(r) => header.role = Some(Cow::Borrowed(r)),
        Visibility::Conn(n, c) => {
            header.n = Some(Cow::Borrowed(n));
            header.c = Some(*c);
        }
    }
    let mut out = serde_json::to_string(&header).map_err(|_| EncodeError::NoHole)?;
    out.reserve(prefix.len() + suffix.len() + 2);
    out.push('\n');
    out.push_str(prefix);
    out.push('\n');
    out.push_str(suffix);
    Ok(Arc::from(out))
}

/// A payload taken apart and checked against the stream it arrived on.
#[derive(Debug)]
pub(crate) struct Decoded<'a> {
    pub(crate) visibility: Visibility<'a>,
    pub(crate) except: Option<Excluded<'a>>,
    pub(crate) low_priority: bool,
    prefix: &'a str,
    suffix: &'a str,
}

impl<'a> Decoded<'a> {
    /// Takes `payload` apart; `None` if it is malformed or names another stream than `key` (the
    /// caller audits and drops it).
    pub(crate) fn parse(key: &StreamKey, payload: &'a str) -> Option<Self> {
        let (head, rest) = payload.split_once('\n')?;
        let (prefix, suffix) = rest.split_once('\n')?;
        let header: Header<'a> = serde_json::from_str(head).ok()?;
        let same = header.t == key.tenant.as_str()
            && match &key.scope {
                StreamScope::User(u) => {
                    header.u.as_deref() == Some(u.as_str()) && header.r.is_none()
                }
                StreamScope::Room(r) => {
                    header.r.as_deref() == Some(r.as_str()) && header.u.is_none()
                }
                StreamScope::Tenant => header.u.is_none() && header.r.is_none(),
            };
        if !same || !prefix.starts_with('{') || !suffix.ends_with('}') {
            return None;
        }
        // The frame must name the same stream the header does.
        let wire = serde_json::to_string(&key.name().to_string()).ok()?;
        let tail = prefix.strip_suffix(r#","epoch":"#)?;
        if !tail.strip_suffix(wire.as_str())?.ends_with(r#","stream":"#) {
            return None;
        }
        let subject = header.th.is_some() || header.rn.is_some();
        let visibility = match (subject, header.role, header.n, header.c) {
            (false, None, None, None) => Visibility::All,
            (true, None, None, None) => Visibility::Subject(header.th, header.rn),
            (false, Some(r), None, None) => Visibility::Role(r),
            (false, None, Some(n), Some(c)) => Visibility::Conn(n, c),
            _ => return None,
        };
        let except = match (header.xn, header.xc) {
            (None, None) => None,
            (Some(n), Some(c)) => Some((n, c)),
            _ => return None,
        };
        Some(Self { visibility, except, low_priority: header.lo, prefix, suffix })
    }

    /// The frame at `pos`, exactly as a single-node hub would have written it.
    pub(crate) fn render(&self, pos: StreamPos, buf: &mut String) {
        use std::fmt::Write as _;
        buf.clear();
        buf.push_str(self.prefix);
        let _ = write!(buf, r#"{},"seq":{}"#, pos.epoch, pos.seq);
        buf.push_str(self.suffix);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(stream: &str) -> String {
        format!(r#"{{"type":"message","stream":"{stream}","epoch":0,"seq":0,"data":{{"x":1}}}}"#)
    }

    #[test]
    fn a_payload_renders_the_frame_at_any_position() {
        let key = StreamKey::user("acme", "alice");
        let vis = Visibility::Subject(Some(Cow::Borrowed("t1")), Some(Cow::Borrowed("r9")));
        let except = (Cow::Borrowed("node-a"), (3, 1));
        let payload = encode(&key, &vis, Some(&except), true, &frame("u")).expect("encodes");
        let decoded = Decoded::parse(&key, &payload).expect("decodes");
        assert_eq!(decoded.visibility, vis);
        assert_eq!(decoded.except, Some(except));
        let run_only = Visibility::Subject(None, Some(Cow::Borrowed("r9")));
        let payload = encode(&key, &run_only, None, false, &frame("u")).expect("encodes");
        let plain = Decoded::parse(&key, &payload).expect("decodes");
        assert_eq!((plain.visibility, plain.except), (run_only, None));
        assert!(decoded.low_priority);
        let mut buf = String::new();
        decoded.render(StreamPos { epoch: 7, seq: 42 }, &mut buf);
        assert_eq!(buf, r#"{"type":"message","stream":"u","epoch":7,"seq":42,"data":{"x":1}}"#);
    }

    #[test]
    fn a_payload_is_refused_on_any_other_stream() {
        let alice = StreamKey::user("acme", "alice");
        let payload = encode(&alice, &Visibility::All, None, false, &frame("u")).expect("encodes");
        for other in [
            StreamKey::user("acme", "bob"),
            StreamKey::user("globex", "alice"),
            StreamKey::room("acme", "alice"),
            StreamKey::tenant("acme"),
        ] {
            assert!(Decoded::parse(&other, &payload).is_none(), "{other:?}");
        }
        assert!(Decoded::parse(&alice, &payload).is_some());
        // A header that lies about the stream its frame names is refused too.
        let room = StreamKey::room("acme", "lobby");
        let forged = encode(&room, &Visibility::All, None, false, &frame("u")).expect("encodes");
        assert!(Decoded::parse(&room, &forged).is_none());
        let honest =
            encode(&room, &Visibility::All, None, false, &frame("r:lobby")).expect("encodes");
        assert!(Decoded::parse(&room, &honest).is_some());
    }

    #[test]
    fn garbage_is_refused_without_panicking() {
        let key = StreamKey::tenant("acme");
        for bad in ["", "\n\n", "{}\n{\n}", "{\"t\":\"acme\"}\nx\ny", "{\"t\":1}\n{\n}"] {
            assert!(Decoded::parse(&key, bad).is_none(), "{bad:?}");
        }
    }
}
