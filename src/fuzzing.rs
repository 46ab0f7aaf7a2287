//! Entry points for the fuzzers (feature `fuzzing`): the wire protocol's parser and writer, with
//! their round-trip properties checked here so that a fuzz target is a one-liner. Not an API.

use serde_json::{Value, json};

use crate::client_frame::{ClientFrame, Page, parse_client_frame};
use crate::envelope::EventKind;
use crate::ids::{RoomId, RunId, StreamName, StreamPos, ThreadId};
use crate::payload::{
    MAX_DATA_DEPTH, Payload, RawData, RawDataError, depth_within, write_redacted, write_scanned,
};
use crate::protocol::FrameWriter;
use crate::redact::Redactor;

/// Parses `bytes` as a client frame; if it parses, serializes what was understood back to JSON,
/// parses that again and checks both readings agree. `Err` describes a disagreement.
pub fn client_frame_round_trip(bytes: &[u8]) -> Result<(), String> {
    let Ok(frame) = parse_client_frame(bytes, 128, 130, 100) else { return Ok(()) };
    let text = to_json(&frame).to_string();
    let again = parse_client_frame(text.as_bytes(), 128, 130, 100)
        .map_err(|e| format!("re-parse of {text} failed: {e}"))?;
    if again != frame {
        return Err(format!("{frame:?} became {again:?} via {text}"));
    }
    Ok(())
}

fn to_json(frame: &ClientFrame<'_>) -> Value {
    match frame {
        ClientFrame::Subscribe { thread, run } | ClientFrame::Unsubscribe { thread, run } => {
            let kind = if matches!(frame, ClientFrame::Subscribe { .. }) {
                "subscribe"
            } else {
                "unsubscribe"
            };
            let mut v = json!({"type": kind});
            if let Some(t) = thread {
                v["thread_id"] = json!(t);
            }
            if let Some(r) = run {
                v["run_id"] = json!(r);
            }
            v
        }
        ClientFrame::Message { thread, data, id } => {
            let mut v = json!({"type": "message", "data": data});
            if let Some(t) = thread {
                v["thread_id"] = json!(t);
            }
            if let Some(id) = id {
                v["id"] = json!(id);
            }
            v
        }
        ClientFrame::Ping => json!({"type": "ping"}),
        ClientFrame::Resume { positions } => {
            let map: serde_json::Map<String, Value> = positions
                .iter()
                .map(|(name, p)| (name.to_string(), json!({"epoch": p.epoch, "seq": p.seq})))
                .collect();
            json!({"type": "resume", "positions": map})
        }
        ClientFrame::Presence { scope } => json!({"type": "presence", "scope": scope}),
        ClientFrame::Refresh { token } => json!({"type": "refresh", "token": token}),
        ClientFrame::History(h) => {
            let mut v = json!({"type": "history", "stream": h.stream, "limit": h.limit});
            match h.page {
                Page::Last => {}
                Page::Before(seq) => v["before"] = json!(seq),
                Page::After(seq) => v["after"] = json!(seq),
            }
            for (field, value) in [("thread_id", &h.thread), ("run_id", &h.run), ("id", &h.id)] {
                if let Some(value) = value {
                    v[field] = json!(value);
                }
            }
            if let Some(epoch) = h.epoch {
                v["epoch"] = json!(epoch);
            }
            v
        }
    }
}

/// Builds an event frame from arbitrary parts, parses it, and checks that every field reads back
/// as written, with `data` redacted exactly where a redaction key matches (ignoring ASCII case).
#[allow(clippy::too_many_arguments)]
pub fn event_frame_round_trip(
    kind: &str,
    room: Option<&str>,
    epoch: u64,
    seq: u64,
    thread: Option<&str>,
    run: Option<&str>,
    data: &Value,
    redact: &[String],
) -> Result<(), String> {
    let kind = EventKind::custom(kind.to_owned());
    let stream = room.map_or(StreamName::User, |r| StreamName::Room(RoomId::from(r)));
    let thread = thread.map(ThreadId::from);
    let run = run.map(RunId::from);
    let redactor = Redactor::new(redact);
    let pos = StreamPos { epoch, seq };
    let write = |payload: &Payload| {
        FrameWriter::default().event(
            &kind,
            &stream,
            pos,
            thread.as_ref(),
            run.as_ref(),
            payload,
            &redactor,
        )
    };
    let frame = write(&Payload::Json(data.clone()));
    // The raw path, from the same data written with whitespace: byte for byte the same frame
    // (serde_json writes a Value's keys in the order it holds them, which the text keeps).
    let text = serde_json::to_string_pretty(data).map_err(|e| format!("unwritable data: {e}"))?;
    match RawData::new(text) {
        Ok(raw) => {
            let raw_frame = write(&Payload::Raw(raw));
            if raw_frame != frame {
                return Err(format!("raw data wrote {raw_frame}, parsed data wrote {frame}"));
            }
        }
        Err(RawDataError::TooDeep { .. }) if !depth_within(data, MAX_DATA_DEPTH) => {}
        Err(e) => return Err(format!("valid data refused as raw text: {e}")),
    }
    let v: Value = serde_json::from_str(frame.as_str()).map_err(|e| format!("not JSON: {e}"))?;
    let expect = json!({
        "type": kind.as_str(),
        "stream": stream.to_string(),
        "epoch": epoch,
        "seq": seq,
    });
    let mut expect = expect;
    // No data (`null`): no `data` key.
    if !data.is_null() {
        expect["data"] = redacted(data, redact);
    }
    if let Some(t) = &thread {
        expect["thread_id"] = json!(t.as_str());
    }
    if let Some(r) = &run {
        expect["run_id"] = json!(r.as_str());
    }
    if v != expect {
        return Err(format!("wrote {frame}, expected {expect}"));
    }
    Ok(())
}

/// Takes arbitrary text as raw data: refused exactly when serde_json refuses it (or it nests too
/// deeply), and otherwise written into a frame whose `data` reads back as the parsed text,
/// redacted where a key matches (duplicate keys: the last copy, as a parser keeps it).
pub fn raw_payload_round_trip(text: &str, redact: &[String]) -> Result<(), String> {
    let parsed = serde_json::from_str::<Value>(text);
    let raw = match (RawData::new(text), &parsed) {
        (Ok(raw), Ok(_)) => raw,
        (Err(RawDataError::Invalid(_)), Err(_)) => return Ok(()),
        (Err(RawDataError::TooDeep { .. }), _) => return Ok(()),
        (Ok(_), Err(e)) => return Err(format!("raw data took text serde_json refuses: {e}")),
        (Err(e), Ok(_)) => return Err(format!("raw data refused JSON serde_json takes: {e}")),
    };
    let parsed = parsed.expect("checked");
    // Compact text is copied from the keys validation noted: the same bytes as the full scan.
    let hides = |k: &str| redact.iter().any(|h| h.eq_ignore_ascii_case(k));
    let (mut copied, mut scanned) = (String::new(), String::new());
    write_redacted(&mut copied, &raw, Some(&hides));
    write_scanned(&mut scanned, &raw, &hides);
    if copied != scanned {
        return Err(format!("{text:?} copied as {copied}, scanned as {scanned}"));
    }
    let frame = FrameWriter::default().event(
        &EventKind::ToolCompleted,
        &StreamName::User,
        StreamPos { epoch: 1, seq: 1 },
        None,
        None,
        &Payload::Raw(raw),
        &Redactor::new(redact),
    );
    let v: Value = serde_json::from_str(frame.as_str()).map_err(|e| format!("not JSON: {e}"))?;
    let expect = if parsed.is_null() { None } else { Some(redacted(&parsed, redact)) };
    if v.get("data") != expect.as_ref() {
        return Err(format!("wrote {frame} for {text:?}, expected data {expect:?}"));
    }
    Ok(())
}

/// The reference model of redaction: a plain recursive copy.
fn redacted(value: &Value, keys: &[String]) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let hide = keys.iter().any(|key| key.eq_ignore_ascii_case(k));
                    (k.clone(), if hide { json!("[redacted]") } else { redacted(v, keys) })
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(|v| redacted(v, keys)).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_hold_on_sample_inputs() {
        for input in [
            &br#"{"type":"resume","positions":{"u":{"epoch":1,"seq":2}}}"#[..],
            br#"{"type":"message","thread_id":"t\u00e9","data":[1,{"a":null}]}"#,
            br#"{"type":"unsubscribe"}"#,
            b"garbage",
        ] {
            client_frame_round_trip(input).unwrap();
        }
        let data = json!({"Token": "x", "list": [{"secret": 1}], "ok": 2.5});
        let keys = vec!["token".to_owned(), "secret".to_owned()];
        event_frame_round_trip("custom", Some("r\"1"), 3, 4, Some("t"), None, &data, &keys)
            .unwrap();
        event_frame_round_trip("k", None, u64::MAX, 0, None, Some("run"), &Value::Null, &[])
            .unwrap();
    }

    #[test]
    fn raw_payloads_read_back_as_parsed_on_tricky_text() {
        let keys = vec!["token".to_owned(), "pass".to_owned()];
        for text in [
            r#" { "a" : [ 1 , 2.50 , -0 , 1E+2 ] , "Token" : { "x" : "}" } } "#,
            r#"{"k":1,"k":2,"token":[{"token":null}],"token":3}"#,
            r#"{"p\u0061ss":"x","s":"\"quoted\" \\ {[","e":{},"l":[]}"#,
            r#""just a string""#,
            "null",
            " true ",
            "[[[[]]]]",
            r#"{"a":1,}"#,
            "[1 2]",
            r#"{"a" 1}"#,
            "01",
            "\"unterminated",
            "",
        ] {
            raw_payload_round_trip(text, &keys).unwrap();
        }
    }

    fn json_value() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            (-1e9f64..1e9).prop_map(Value::from),
            "[a-zA-Z\"\\\\{}\\[\\],: ]{0,6}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 32, 5, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                proptest::collection::btree_map("[abAB]{1,2}", inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        /// JSON written compactly or with whitespace reads back as parsed and redacted.
        #[test]
        fn raw_json_reads_back_as_parsed(
            value in json_value(),
            pretty in proptest::bool::ANY,
            keys in proptest::collection::vec("[ab]{1,2}", 0..3),
        ) {
            let text = if pretty {
                serde_json::to_string_pretty(&value).unwrap()
            } else {
                serde_json::to_string(&value).unwrap()
            };
            raw_payload_round_trip(&text, &keys).map_err(proptest::test_runner::TestCaseError::fail)?;
        }

        /// Any text: refused exactly when it is not JSON.
        #[test]
        fn raw_payloads_read_back_as_parsed(
            text in "[\\[\\]{}\",:0-9a-z \\\\]{0,40}",
            keys in proptest::collection::vec("[a-z]{1,3}", 0..3),
        ) {
            raw_payload_round_trip(&text, &keys).map_err(proptest::test_runner::TestCaseError::fail)?;
        }
    }
}
