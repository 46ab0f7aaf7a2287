//! Raw JSON text copied into a frame: without insignificant whitespace, and with the values of
//! hidden keys replaced, from the keys validation noted or by a scan of every byte.

use super::MAX_DATA_DEPTH;
use super::RawData;
use super::scan::{ESCAPED_BIT, string_end};

/// What [`write_redacted`] asks of a key: whether it is hidden, and before that a filter, a
/// set of [`key_bit`](super::scan::key_bit)s, which a key whose bit is not in it fails without being compared.
pub(crate) trait KeyTest {
    /// The bits of the keys it may hide ([`key_bit`](super::scan::key_bit)); all of them if it keeps no filter.
    fn filter(&self) -> u64 {
        u64::MAX
    }

    /// Whether the value of the (unescaped) key `key` is hidden.
    fn hides(&self, key: &str) -> bool;

    /// [`KeyTest::hides`] for a key without escapes (so its bytes are its text: valid UTF-8)
    /// whose [`key_bit`](super::scan::key_bit) is `bit` (passed the filter): a test that keeps its keys' bits
    /// compares only the keys of that bit, and need not make a `str` of the key.
    fn hides_noted(&self, bit: u64, key: &[u8]) -> bool {
        let _ = bit;
        std::str::from_utf8(key).is_ok_and(|key| self.hides(key))
    }
}

impl<F: Fn(&str) -> bool + ?Sized> KeyTest for F {
    fn hides(&self, key: &str) -> bool {
        self(key)
    }
}

/// The string redaction writes in place of a hidden key's value (on both paths).
pub(crate) const REDACTED: &str = "[redacted]";

/// [`REDACTED`] as the JSON string the raw path writes (one copy rather than three).
const REDACTED_JSON: &str = "\"[redacted]\"";

/// Copies validated JSON `raw` into `out` without insignificant whitespace, writing
/// [`REDACTED`] (a JSON string) as the value of every object key for which `hides` is true (at
/// any depth; `None`: no key is hidden). Keys with escapes are unescaped before `hides` sees them.
///
/// Compact text (see [`RawData::is_compact`]) is copied in runs between the values of hidden keys,
/// found from the keys validation noted; other text goes through [`write_scanned`]. Both write
/// the same bytes.
///
/// Generic over `hides` so that a caller's test (the redactor's filter, above all) is inlined
/// into the loop over the keys rather than called through a pointer for each key.
pub(crate) fn write_redacted<H: KeyTest + ?Sized>(
    out: &mut String,
    raw: &RawData,
    hides: Option<&H>,
) {
    let Some(keys) = &raw.keys else {
        return match hides {
            Some(hides) => write_scanned(out, raw, &|k| hides.hides(k)),
            None => write_scanned(out, raw, &|_| false),
        };
    };
    let (text, b) = (&*raw.text, raw.text.as_bytes());
    let Some(hides) = hides else {
        out.push_str(text);
        return;
    };
    let filter = hides.filter() | ESCAPED_BIT;
    if filter & raw.bits == 0 {
        // No key's bit is the filter's: nothing to hide (most payloads, for a redactor).
        out.push_str(text);
        return;
    }
    // Everything before `from` is written (or, inside a hidden value, skipped).
    let mut from = 0;
    for &key in keys {
        // The bit validation noted: most keys fail the filter with no look at the text
        // (callgrind, `publish-1-raw`).
        if filter & key.bit() == 0 {
            continue;
        }
        let (open, close) = (key.open(), key.close(b));
        if open < from {
            continue; // inside a hidden value
        }
        let hidden = if key.escaped() {
            key_hidden(&raw.text[open..=close], &|k| hides.hides(k))
        } else {
            hides.hides_noted(key.bit(), &b[open + 1..close])
        };
        if hidden {
            // Through the key and its colon (compact: right after it), then the value skipped
            // (its end noted by validation if it is a string or a number). Every cut is next to
            // an ASCII delimiter, so on a character boundary.
            out.push_str(&text[from..close + 2]);
            out.push_str(REDACTED_JSON);
            from = key.value_end().unwrap_or_else(|| skip_value(b, close + 2));
        }
    }
    out.push_str(&text[from..]);
}

/// [`write_redacted`] by a scan of every byte: the one that drops whitespace.
pub(crate) fn write_scanned(out: &mut String, raw: &RawData, hides: &dyn Fn(&str) -> bool) {
    let b = raw.text.as_bytes();
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
                out.push(char::from(c));
                i += 1;
            }
            c @ (b'}' | b']') => {
                depth = depth.saturating_sub(1);
                expect_key = false;
                out.push(char::from(c));
                i += 1;
            }
            b',' => {
                expect_key = objects[depth];
                out.push(',');
                i += 1;
            }
            b':' => {
                out.push(':');
                i += 1;
            }
            b'"' => {
                let end = string_end(b, i);
                let span = &raw.text[i..=end];
                out.push_str(span);
                i = end + 1;
                if expect_key {
                    expect_key = false;
                    if key_hidden(span, hides) {
                        // The colon, then the value skipped whole.
                        i = skip_ws(b, i);
                        out.push(':');
                        i = skip_value(b, skip_ws(b, i + 1));
                        out.push_str(REDACTED_JSON);
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
                out.push_str(&raw.text[start..i]);
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
    use super::super::scan::{MAX_SPANNED, key_bit_of};
    use super::*;
    use serde_json::Value;

    /// `text` redacted by the scan, after checking that every path writes the same: the scan and
    /// [`write_redacted`] on `text`, and the copy from noted keys on its compact form.
    fn redact(text: &str, keys: &[&str]) -> String {
        let hides = |k: &str| keys.iter().any(|h| h.eq_ignore_ascii_case(k));
        let write = |raw: &RawData, hides: Option<&dyn Fn(&str) -> bool>| {
            let mut out = String::new();
            write_redacted(&mut out, raw, hides);
            out
        };
        let raw = RawData::new(text).expect("valid");
        let mut scanned = String::new();
        write_scanned(&mut scanned, &raw, &hides);
        assert_eq!(write(&raw, Some(&hides)), scanned);
        let compact = RawData::new(write(&raw, None)).expect("compacted JSON is valid");
        assert!(compact.is_compact(), "{compact:?} from {text}");
        assert_eq!(write(&compact, None), compact.as_str(), "nothing hidden: a plain copy");
        assert_eq!(write(&compact, Some(&hides)), scanned);
        for raw in [&raw, &compact] {
            let mut out = String::new();
            write_redacted(&mut out, raw, Some(&Bits::new(keys)));
            assert_eq!(out, scanned, "{text}");
        }
        scanned
    }

    /// A key test that filters by bits as the hub's redactor does (which lives in `protocol`),
    /// and checks that every bit validation noted is the key's own.
    struct Bits<'a>(&'a [&'a str], u64);

    impl<'a> Bits<'a> {
        fn new(keys: &'a [&'a str]) -> Self {
            Self(keys, keys.iter().fold(0, |bits, k| bits | key_bit_of(k)))
        }
    }

    impl KeyTest for Bits<'_> {
        fn filter(&self) -> u64 {
            self.1
        }

        fn hides(&self, key: &str) -> bool {
            self.0.iter().any(|h| h.eq_ignore_ascii_case(key))
        }

        fn hides_noted(&self, bit: u64, key: &[u8]) -> bool {
            let key = std::str::from_utf8(key).expect("a key without escapes is its text");
            assert_eq!(bit, key_bit_of(key), "the noted bit of {key:?}");
            self.hides(key)
        }
    }

    /// Keys of any length (past the 254 bytes a key's noted length holds) and values of every
    /// kind (whose end validation notes, or not) are hidden alike; a key no bit of the redactor
    /// matches leaves the text as it is.
    #[test]
    fn long_keys_and_every_kind_of_value_are_redacted() {
        assert_eq!(REDACTED_JSON, format!("\"{REDACTED}\""));
        let values = [r#""s""#, "-12.5e3", "true", "null", r#"{"x":[1,{"y":"}"}]}"#, "[[],{}]"];
        for len in [1, 7, 253, 254, 255, 256, 1000] {
            let key = "k".repeat(len);
            let entries: Vec<String> = values
                .iter()
                .enumerate()
                .map(|(i, v)| format!(r#""{key}":{v},"n{i}":{i}"#))
                .collect();
            let text = format!("{{{},\"{key}\":{{\"{key}\":1}}}}", entries.join(","));
            let out = redact(&text, &[key.as_str()]);
            let parsed: Value = serde_json::from_str(&out).expect("valid");
            assert_eq!(out.matches(REDACTED).count(), values.len() + 1, "{len}");
            for i in 0..values.len() {
                assert_eq!(parsed[format!("n{i}")], serde_json::json!(i), "{len}");
            }
            assert_eq!(redact(&text, &["absent"]), text, "nothing hidden: {len}");
        }
    }

    /// Past the spans a scan keeps on the stack (32), every key is still noted, in order.
    #[test]
    fn payloads_with_many_keys_are_noted_whole() {
        for n in [31, 32, 33, 64, 65, 200] {
            let entries: Vec<String> =
                (0..n).map(|i| format!(r#""k{i}":{{"token":{i},"v":"{i}"}}"#)).collect();
            let text = format!("{{{}}}", entries.join(","));
            let raw = RawData::new(text.as_str()).unwrap();
            assert_eq!(raw.keys.as_ref().map(|k| k.len()), Some(3 * n), "{n}");
            let out = redact(&text, &["token"]);
            assert_eq!(out.matches(r#""token":"[redacted]""#).count(), n, "{n}");
            let parsed: Value = serde_json::from_str(&out).unwrap();
            assert_eq!(parsed[format!("k{}", n - 1)]["v"], serde_json::json!(format!("{}", n - 1)));
        }
    }

    /// Text longer than a key's noted offset can hold is scanned instead (and still redacted).
    #[test]
    fn text_past_the_noted_length_is_scanned() {
        let text = format!(r#"{{"pad":"{}","token":"secret"}}"#, "x".repeat(MAX_SPANNED));
        let raw = RawData::new(text).expect("valid");
        assert!(!raw.is_compact());
        let mut out = String::new();
        write_redacted(&mut out, &raw, Some(&|k: &str| k == "token"));
        assert!(out.ends_with(r#","token":"[redacted]"}"#));
        assert_eq!(out.len(), raw.as_str().len() + REDACTED.len() - "secret".len());
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

    /// A JSON document as written: keys in order, duplicates allowed, scalars as their text.
    #[derive(Clone, Debug)]
    enum Doc {
        Scalar(&'static str),
        Str(String),
        Array(Vec<Doc>),
        Object(Vec<(String, Doc)>),
    }

    fn doc() -> impl proptest::strategy::Strategy<Value = Doc> {
        use proptest::prelude::*;
        const SCALARS: [&str; 10] =
            ["null", "true", "false", "0", "-0", "12", "-1.5e3", "1E+2", "0.25", "-7"];
        // Few names, so that hidden keys often nest inside hidden values.
        const KEYS: [&str; 6] = ["a", "token", "Token", "api_key", "é", ""];
        // Quotes, backslashes, a control character, multi-byte and astral characters, and
        // brackets, commas and colons inside strings.
        let text = "[ab \"\\\\\u{1}é€😀{}\\[\\],:]{0,6}";
        let leaf = prop_oneof![
            proptest::sample::select(&SCALARS[..]).prop_map(Doc::Scalar),
            text.prop_map(Doc::Str),
        ];
        leaf.prop_recursive(5, 40, 5, move |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..5).prop_map(Doc::Array),
                proptest::collection::vec(
                    (proptest::sample::select(&KEYS[..]).prop_map(String::from), inner),
                    0..5,
                )
                .prop_map(Doc::Object),
            ]
        })
    }

    /// Writes a [`Doc`] as JSON text: `choices` (cycled) decide where whitespace goes (only if
    /// `spaced`) and which characters of strings are escaped although they need not be.
    struct DocWriter<'a> {
        spaced: bool,
        choices: &'a [u8],
        at: usize,
        out: String,
    }

    impl DocWriter<'_> {
        fn next(&mut self) -> u8 {
            self.at += 1;
            self.choices[self.at % self.choices.len()]
        }

        /// Whitespace if `spaced`; the choices are taken either way, so that a document written
        /// both ways escapes the same characters.
        fn ws(&mut self) {
            for _ in 0..self.next() % 3 {
                let c = [' ', '\t', '\n', '\r'][usize::from(self.next() % 4)];
                if self.spaced {
                    self.out.push(c);
                }
            }
        }

        fn string(&mut self, text: &str) {
            self.out.push('"');
            for c in text.chars() {
                match (c, self.next() % 4) {
                    ('"', _) => self.out.push_str("\\\""),
                    ('\\', _) => self.out.push_str("\\\\"),
                    (c, 0) | (c @ '\u{0}'..='\u{1f}', _) => {
                        let mut units = [0u16; 2];
                        for u in c.encode_utf16(&mut units) {
                            self.out.push_str(&format!("\\u{u:04x}"));
                        }
                    }
                    (c, _) => self.out.push(c),
                }
            }
            self.out.push('"');
        }

        fn doc(&mut self, doc: &Doc) {
            self.ws();
            match doc {
                Doc::Scalar(text) => self.out.push_str(text),
                Doc::Str(text) => self.string(text),
                Doc::Array(items) => {
                    self.out.push('[');
                    self.ws();
                    for (i, item) in items.iter().enumerate() {
                        if i > 0 {
                            self.out.push(',');
                        }
                        self.doc(item);
                    }
                    self.out.push(']');
                }
                Doc::Object(entries) => {
                    self.out.push('{');
                    self.ws();
                    for (i, (key, value)) in entries.iter().enumerate() {
                        if i > 0 {
                            self.out.push(',');
                        }
                        self.ws();
                        self.string(key);
                        self.ws();
                        self.out.push(':');
                        self.doc(value);
                    }
                    self.out.push('}');
                }
            }
            self.ws();
        }
    }

    fn write_doc(doc: &Doc, spaced: bool, choices: &[u8]) -> String {
        let mut w = DocWriter { spaced, choices, at: 0, out: String::new() };
        w.doc(doc);
        w.out
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config {
            // PROPTEST_CASES raises the count, never lowers it.
            cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(0).max(2000),
            ..proptest::test_runner::Config::default()
        })]

        /// The copy from noted keys writes what the scan writes, for any JSON (escapes, unicode,
        /// duplicate keys, keys inside hidden values), with and without keys to hide; text with
        /// whitespace is scanned and writes the same as its compact form.
        #[test]
        fn the_copy_of_compact_text_writes_what_the_scan_writes(
            doc in doc(),
            choices in proptest::collection::vec(proptest::num::u8::ANY, 1..64),
            keys in proptest::sample::subsequence(vec!["token", "API_KEY", "a", "é"], 0..=4),
        ) {
            let hides = |k: &str| keys.iter().any(|h| h.eq_ignore_ascii_case(k));
            let hides: &dyn Fn(&str) -> bool = &hides;
            let compact = RawData::new(write_doc(&doc, false, &choices)).expect("a written document is valid JSON");
            let spaced = RawData::new(write_doc(&doc, true, &choices)).expect("a written document is valid JSON");
            proptest::prop_assert!(compact.is_compact());
            // Both escape alike: they differ only if whitespace was written.
            proptest::prop_assert_eq!(spaced.is_compact(), spaced.as_str() == compact.as_str());
            let redactor = Bits::new(&keys);
            for hides in [None, Some(hides)] {
                let write = |raw: &RawData| {
                    let mut out = String::new();
                    write_redacted(&mut out, raw, hides);
                    out
                };
                let mut scanned = String::new();
                write_scanned(&mut scanned, &compact, hides.unwrap_or(&|_| false));
                proptest::prop_assert_eq!(&write(&compact), &scanned);
                proptest::prop_assert_eq!(&write(&spaced), &scanned);
                if hides.is_some() {
                    // Filtered by the bits validation noted, as the hub's redactor does.
                    let mut by_bits = String::new();
                    write_redacted(&mut by_bits, &compact, Some(&redactor));
                    proptest::prop_assert_eq!(&by_bits, &scanned);
                }
                if hides.is_none() {
                    proptest::prop_assert_eq!(scanned.as_str(), compact.as_str());
                }
            }
        }
    }
}
