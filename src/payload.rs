//! An event's payload: a parsed [`Value`], or JSON text the application serialized itself
//! ([`RawData`]), which is checked once and redacted while it is copied into the frame, without
//! building a tree.

use std::fmt;

use serde::de::IgnoredAny;
use serde_json::Value;

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
            Payload::Raw(raw) => raw.0.trim_matches(is_ws) == "null",
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
#[derive(Clone, PartialEq, Eq)]
pub struct RawData(Box<str>);

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
        Ok(RawData(text))
    }

    /// The text as given.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for RawData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Like a Value's Debug, this shows the payload; the length keeps huge ones readable.
        write!(f, "RawData({} bytes)", self.0.len())
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

/// What one pass over `text` finds: the deepest nesting of arrays and objects (brackets inside
/// strings not counted), and whether a number is outside `f64`'s range.
struct Scan {
    depth: usize,
    huge_number: bool,
}

fn scan(text: &str) -> Scan {
    let b = text.as_bytes();
    let (mut depth, mut max, mut i) = (0usize, 0usize, 0usize);
    let mut huge_number = false;
    while i < b.len() {
        match b[i] {
            b'"' => i = string_end(b, i),
            b'{' | b'[' => {
                depth += 1;
                max = max.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            b'-' | b'0'..=b'9' => {
                let end = b[i..]
                    .iter()
                    .position(|c| !matches!(c, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
                    .map_or(b.len(), |n| i + n);
                // Only an exponent or a long mantissa can overflow; most numbers skip the parse.
                let token = &text[i..end];
                if (end - i > 300 || token.bytes().any(|c| c == b'e' || c == b'E'))
                    && token.parse::<f64>().is_ok_and(f64::is_infinite)
                {
                    huge_number = true;
                }
                i = end - 1;
            }
            _ => {}
        }
        i += 1;
    }
    Scan { depth: max, huge_number }
}

/// The index of the quote that closes the string opened at `open` (or the last index if it is
/// never closed, which validation then refuses).
fn string_end(b: &[u8], open: usize) -> usize {
    let mut i = open + 1;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return i,
            _ => i += 1,
        }
    }
    b.len().saturating_sub(1)
}

/// The string redaction writes in place of a hidden key's value (on both paths).
pub(crate) const REDACTED: &str = "[redacted]";

/// Copies validated JSON `text` into `out` without insignificant whitespace, writing
/// [`REDACTED`] (a JSON string) as the value of every object key for which `hides` is true (at any depth).
/// One pass, no tree; keys with escapes are unescaped before `hides` sees them.
pub(crate) fn write_redacted(out: &mut Vec<u8>, raw: &RawData, hides: &dyn Fn(&str) -> bool) {
    let b = raw.0.as_bytes();
    // Whether each open container is an object; validation bounds the depth.
    let mut objects = [false; MAX_DATA_DEPTH + 1];
    let mut depth = 0usize;
    let mut expect_key = false;
    let mut i = 0usize;
    while i < b.len() {
        match b[i] {
            b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            c @ (b'{' | b'[') => {
                depth += 1;
                objects[depth] = c == b'{';
                expect_key = c == b'{';
                out.push(c);
                i += 1;
            }
            c @ (b'}' | b']') => {
                depth = depth.saturating_sub(1);
                expect_key = false;
                out.push(c);
                i += 1;
            }
            b',' => {
                expect_key = objects[depth];
                out.push(b',');
                i += 1;
            }
            b':' => {
                out.push(b':');
                i += 1;
            }
            b'"' => {
                let end = string_end(b, i);
                let span = &raw.0[i..=end];
                out.extend_from_slice(span.as_bytes());
                i = end + 1;
                if expect_key {
                    expect_key = false;
                    if key_hidden(span, hides) {
                        // The colon, then the value skipped whole.
                        i = skip_ws(b, i);
                        out.push(b':');
                        i = skip_value(b, skip_ws(b, i + 1));
                        out.push(b'"');
                        out.extend_from_slice(REDACTED.as_bytes());
                        out.push(b'"');
                    }
                }
            }
            _ => {
                // A number, `true`, `false` or `null`: up to the next delimiter.
                let start = i;
                while i < b.len()
                    && !matches!(b[i], b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
                {
                    i += 1;
                }
                out.extend_from_slice(&b[start..i]);
            }
        }
    }
}

/// Whether the key `span` (with its quotes) is one `hides` hides, compared unescaped.
fn key_hidden(span: &str, hides: &dyn Fn(&str) -> bool) -> bool {
    let inner = &span[1..span.len() - 1];
    if !inner.contains('\\') {
        return hides(inner);
    }
    // Rare: a key written with escapes. The span is a valid JSON string (validated).
    serde_json::from_str::<String>(span).is_ok_and(|key| hides(&key))
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

/// The index just past the value that starts at `i`.
fn skip_value(b: &[u8], mut i: usize) -> usize {
    match b.get(i) {
        Some(b'"') => string_end(b, i) + 1,
        Some(b'{' | b'[') => {
            let mut depth = 0usize;
            while i < b.len() {
                match b[i] {
                    b'"' => i = string_end(b, i),
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return i + 1;
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
            i
        }
        _ => {
            while i < b.len() && !matches!(b[i], b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
            {
                i += 1;
            }
            i
        }
    }
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

    fn redact(text: &str, keys: &[&str]) -> String {
        let raw = RawData::new(text).expect("valid");
        let mut out = Vec::new();
        write_redacted(&mut out, &raw, &|k| keys.iter().any(|h| h.eq_ignore_ascii_case(k)));
        String::from_utf8(out).expect("UTF-8 in, UTF-8 out")
    }

    #[test]
    fn hidden_keys_are_redacted_at_any_depth_and_whitespace_is_dropped() {
        let text = r#" { "a" : 1 , "Password" : { "x" : [1, "}"] } ,
            "list" : [ { "token" : "s\"k" }, "token" ], "n": -1.5e3 , "t": true } "#;
        assert_eq!(
            redact(text, &["password", "token"]),
            r#"{"a":1,"Password":"[redacted]","list":[{"token":"[redacted]"},"token"],"n":-1.5e3,"t":true}"#
        );
    }

    #[test]
    fn escaped_keys_are_compared_unescaped() {
        assert_eq!(
            redact(r#"{"pass\u0077ord":"x"}"#, &["password"]),
            r#"{"pass\u0077ord":"[redacted]"}"#
        );
    }

    #[test]
    fn every_copy_of_a_duplicated_key_is_redacted() {
        assert_eq!(
            redact(r#"{"k":1,"k":{"k":2}}"#, &["k"]),
            r#"{"k":"[redacted]","k":"[redacted]"}"#
        );
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

    #[test]
    fn null_text_is_no_data() {
        assert!(Payload::Raw(RawData::new(" null ").unwrap()).is_null());
        assert!(!Payload::Raw(RawData::new("0").unwrap()).is_null());
        assert!(Payload::default().is_null());
    }
}
