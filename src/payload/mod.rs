//! An event's payload: a parsed [`Value`], or JSON text the application serialized itself
//! ([`RawData`]), which is checked once and redacted while it is copied into the frame, without
//! building a tree.

use std::fmt;

use serde::de::IgnoredAny;
use serde_json::Value;

mod copy;
mod scan;

#[cfg(any(test, feature = "fuzzing"))]
pub(crate) use copy::write_scanned;
pub(crate) use copy::{KeyTest, REDACTED, write_redacted};
pub(crate) use scan::{byte_below, key_bit_of, quote_or_backslash};

use scan::{KeySpan, scan};

/// How deeply an envelope's `data` may nest arrays and objects (the limit serde_json's own parser
/// applies). [`Hub::publish`](crate::Hub::publish) refuses deeper data with
/// [`PublishError::TooDeep`](crate::PublishError::TooDeep), checked without recursion before
/// anything walks the value recursively (redaction, serialization).
pub const MAX_DATA_DEPTH: usize = 128;

/// Whether `value` nests arrays and objects at most `limit` levels deep (a scalar is depth 0, `[]`
/// and `{}` depth 1). Iterative: the stack does not grow with the value's depth.
pub(crate) fn depth_within(value: &Value, limit: usize) -> bool {
    let mut stack: Vec<(&Value, usize)> = vec![(value, 0)];
    while let Some((v, depth)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match v {
            Value::Array(items) => Box::new(items.iter()),
            Value::Object(map) => Box::new(map.values()),
            _ => continue,
        };
        if depth + 1 > limit {
            return false;
        }
        stack.extend(children.map(|c| (c, depth + 1)));
    }
    true
}

/// What an [`Envelope`](crate::Envelope) carries as `data`.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Payload {
    /// A parsed value. `null` means no data: the frame has no `data` key.
    Json(Value),
    /// JSON text, used as it is (after redaction). The text `null` means no data, as above.
    Raw(RawData),
}

impl Payload {
    /// Whether the payload is `null` (the frame then has no `data` key).
    #[must_use]
    pub fn is_null(&self) -> bool {
        match self {
            Payload::Json(v) => v.is_null(),
            Payload::Raw(raw) => raw.null,
        }
    }
}

impl Default for Payload {
    fn default() -> Self {
        Payload::Json(Value::Null)
    }
}

impl From<Value> for Payload {
    fn from(value: Value) -> Self {
        Payload::Json(value)
    }
}

impl From<RawData> for Payload {
    fn from(raw: RawData) -> Self {
        Payload::Raw(raw)
    }
}

/// JSON text that an application already serialized (or received, as the server's
/// `POST /publish` does), validated once: one value, at most [`MAX_DATA_DEPTH`] levels deep.
///
/// Publishing it skips building and dropping a [`Value`] tree: configured keys are redacted in one
/// pass over the text while the frame is written (keys are compared after unescaping, so
/// `"pass\u0077ord"` is `password`). Insignificant whitespace is dropped; everything else is
/// kept as written: key order, number spelling, and duplicate keys (a parsed [`Value`] keeps only
/// the last of those; here every copy is sent, and every copy of a redacted key is redacted).
///
/// Validation also notes whether the text is compact (no whitespace outside strings) and where
/// its object keys are. Compact text is copied into the frame as it is, only the values of keys
/// to redact replaced (found from the noted keys, without reading the rest of the text); other
/// text is scanned byte by byte to drop its whitespace. The frame is the same either way.
#[derive(Clone, PartialEq, Eq)]
pub struct RawData {
    text: Box<str>,
    /// `Some` when the text is compact: the span of every object key, in order (8 bytes per key).
    /// `None`: it has whitespace to drop (or is over [`MAX_SPANNED`](scan::MAX_SPANNED) bytes),
    /// so it is scanned.
    keys: Option<Box<[KeySpan]>>,
    /// The union of the noted keys' bits ([`key_bit`](scan::key_bit);
    /// [`ESCAPED_BIT`](scan::ESCAPED_BIT) for a key with escapes, whose bit the raw bytes do not
    /// give): a redactor whose bits miss it hides none of them, and the text is copied whole
    /// without a look at its keys.
    bits: u64,
    /// Whether the text is `null` (no data), decided once here rather than at each publish.
    null: bool,
}

impl RawData {
    /// Checks `text`: one JSON value (whitespace around it allowed), nesting at most
    /// [`MAX_DATA_DEPTH`] arrays and objects.
    ///
    /// # Errors
    ///
    /// [`RawDataError::TooDeep`] or [`RawDataError::Invalid`].
    pub fn new(text: impl Into<Box<str>>) -> Result<Self, RawDataError> {
        let text = text.into();
        // Depth first: it is a cheap scan, and serde_json's own limit would report it as a syntax
        // error. The depth count is reliable before validation (strings are skipped properly) and
        // only has to reject, never to accept, anything.
        let scan = scan(&text);
        if scan.depth > MAX_DATA_DEPTH {
            return Err(RawDataError::TooDeep { limit: MAX_DATA_DEPTH });
        }
        // Validation without a tree: every value is read and ignored.
        serde_json::from_str::<IgnoredAny>(&text)
            .map_err(|e| RawDataError::Invalid(e.to_string()))?;
        // Ignoring a number does not check its range, but no serde_json reader of the frame
        // (nor a tree on the other path) would take `1e999`: refuse it as serde_json would.
        if scan.huge_number {
            return Err(RawDataError::Invalid("number out of range".into()));
        }
        // Likewise a `\u` escape of half a surrogate pair: validation of ignored values takes it,
        // but it is no character, and a reader that parses strings (serde_json, for one) refuses
        // the whole frame.
        if scan.lone_surrogate {
            return Err(RawDataError::Invalid("lone surrogate in a \\u escape".into()));
        }
        let null = text.trim_matches(is_ws) == "null";
        Ok(RawData { text, keys: scan.keys, bits: scan.bits, null })
    }

    /// The text as given.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether validation found the text compact: no whitespace outside strings (and at most
    /// 64 MiB). Compact text is copied into frames as it is (keys to redact aside); other text is
    /// scanned to drop its whitespace, which costs several times more per byte.
    #[must_use]
    pub fn is_compact(&self) -> bool {
        self.keys.is_some()
    }
}

impl fmt::Debug for RawData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Like a Value's Debug, this shows the payload; the length keeps huge ones readable.
        write!(f, "RawData({} bytes)", self.text.len())
    }
}

/// Why [`RawData::new`] refused a text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RawDataError {
    /// It is not one JSON value.
    #[error("data is not valid JSON: {0}")]
    Invalid(String),
    /// It nests arrays and objects deeper than the limit.
    #[error("data nests deeper than {limit} levels")]
    TooDeep {
        /// [`MAX_DATA_DEPTH`].
        limit: usize,
    },
}

fn is_ws(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_is_measured_without_recursion() {
        assert!(depth_within(&Value::Null, 0));
        assert!(depth_within(&serde_json::json!([]), 1));
        assert!(!depth_within(&serde_json::json!([]), 0));
        assert!(depth_within(&serde_json::json!({"a": [1, {"b": 2}]}), 3));
        assert!(!depth_within(&serde_json::json!({"a": [1, {"b": {}}]}), 3));
        let mut deep = Value::Null;
        for _ in 0..100_000 {
            deep = Value::Array(vec![deep]);
        }
        assert!(!depth_within(&deep, MAX_DATA_DEPTH));
        std::mem::forget(deep); // dropping it recursively is serde_json's business
    }

    #[test]
    fn compactness_is_found_by_validation() {
        for text in [r#"{"a":[1,"b c",{"d":null}]}"#, r#""x y""#, "1", "[]", r#"{"\u0020":0}"#] {
            assert!(RawData::new(text).unwrap().is_compact(), "{text}");
        }
        for text in [" 1", "1\n", r#"{"a": 1}"#, "[1,\t2]", "{\r}"] {
            assert!(!RawData::new(text).unwrap().is_compact(), "{text:?}");
        }
    }

    #[test]
    fn bad_and_deep_text_is_refused_with_its_reason() {
        assert!(matches!(RawData::new("{\"a\":}"), Err(RawDataError::Invalid(_))));
        assert!(matches!(RawData::new("1 2"), Err(RawDataError::Invalid(_))));
        assert!(matches!(RawData::new(""), Err(RawDataError::Invalid(_))));
        // Out of f64's range: serde_json refuses to parse it, so a frame carrying it could not be
        // read back (found by the protocol fuzz target); in range and integer-sized ones pass.
        assert!(matches!(RawData::new("[1e999]"), Err(RawDataError::Invalid(_))));
        assert!(matches!(RawData::new(r#"{"a":-1e400}"#), Err(RawDataError::Invalid(_))));
        assert!(matches!(RawData::new("1".repeat(400)), Err(RawDataError::Invalid(_))));
        let fine = r#"["1e999", 1e308, 123456789012345678901234567890, -0, 1e-999]"#;
        assert!(RawData::new(fine).is_ok());
        // Both paths agree with serde_json's reading of each.
        for (text, ok) in [("[1e999]", false), (&"1".repeat(400)[..], false), (fine, true)] {
            assert_eq!(serde_json::from_str::<Value>(text).is_ok(), ok, "{text}");
        }
        let deep = "[".repeat(MAX_DATA_DEPTH + 1) + &"]".repeat(MAX_DATA_DEPTH + 1);
        assert_eq!(RawData::new(deep), Err(RawDataError::TooDeep { limit: MAX_DATA_DEPTH }));
        let ok = "[".repeat(MAX_DATA_DEPTH) + &"]".repeat(MAX_DATA_DEPTH);
        assert!(RawData::new(ok).is_ok());
        // Brackets inside strings are not nesting.
        assert!(RawData::new(format!("\"{}\"", "[".repeat(1000))).is_ok());
    }

    /// A `\u` escape of half a surrogate pair is no character: serde_json's validation of ignored
    /// values takes it, but its reading of a string (so of the frame) refuses it. Raw data is
    /// refused exactly when serde_json refuses the text as a `Value`, for each placement of the
    /// halves; the error says why.
    #[test]
    fn a_lone_surrogate_escape_is_refused_as_serde_json_refuses_it() {
        let strings = [
            (r#"\ud800"#, false),
            (r#"\udc00"#, false),
            (r#"\ud800\u0041"#, false),
            (r#"\ud800\\"#, false),
            (r#"\ud800\ud800"#, false),
            (r#"\ud800\udc00\udc00"#, false),
            (r#"\ud800x\udc00"#, false),
            (r#"\ud800\n"#, false),
            (r#"\\\ud800"#, false),
            (r#"\udbff\udfff"#, true),
            (r#"\ud800\udc00"#, true),
            (r#"\uD83D\uDE00 and \ud83d\ude00"#, true),
            (r#"a\\ud800"#, true),
            (r#"\ud7ff\ue000"#, true),
        ];
        for (inner, ok) in strings {
            for text in [format!(r#""{inner}""#), format!(r#"{{"k":["{inner}"],"{inner}":1}}"#)] {
                assert_eq!(serde_json::from_str::<Value>(&text).is_ok(), ok, "{text}");
                match RawData::new(text.as_str()) {
                    Ok(_) => assert!(ok, "{text} was taken"),
                    Err(RawDataError::Invalid(why)) => {
                        assert!(!ok, "{text} was refused: {why}");
                        assert!(why.contains("surrogate"), "{why}");
                    }
                    Err(e) => panic!("{text}: {e:?}"),
                }
            }
        }
    }

    #[test]
    fn null_text_is_no_data() {
        assert!(Payload::Raw(RawData::new(" null ").unwrap()).is_null());
        assert!(!Payload::Raw(RawData::new("0").unwrap()).is_null());
        assert!(Payload::default().is_null());
    }
}
