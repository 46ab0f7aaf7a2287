//! Redaction: the configured keys whose values are replaced by `"[redacted]"`, at any depth, in
//! an event's data (parsed, while it is serialized; raw, while it is copied: see
//! `payload::write_redacted`), compared ignoring ASCII case.

use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};
use serde_json::Value;

use crate::payload::{KeyTest, REDACTED, key_bit_of};

/// Replaces the values of configured keys, at any depth, while serializing: one pass, no copy of
/// the payload.
#[derive(Debug, Clone, Default)]
pub(crate) struct Redactor {
    keys: Box<[HiddenKey]>,
    /// One bit per key, [`Redactor::bit`]: a key whose bit is clear is hidden by no key, which
    /// most keys of a payload are found to be without a comparison.
    bits: u64,
}

impl Redactor {
    pub(crate) fn new(keys: &[String]) -> Self {
        let bits = keys.iter().fold(0, |bits, k| bits | Self::bit(k));
        Self { keys: keys.iter().map(|k| HiddenKey::new(k)).collect(), bits }
    }

    /// A key's bit of 64 (`payload::key_bit`: from its length and its first and last bytes, ASCII case
    /// ignored, as the comparison ignores it).
    fn bit(key: &str) -> u64 {
        key_bit_of(key)
    }

    #[inline]
    pub(crate) fn hides(&self, key: &str) -> bool {
        let bit = Self::bit(key);
        self.bits & bit != 0 && self.compares_noted(bit, key.as_bytes())
    }

    /// The comparison that decides, once the filter let `key` through.
    #[inline]
    fn compares_equal(&self, key: &str) -> bool {
        self.keys.iter().any(|k| k.matches(key.as_bytes()))
    }

    /// [`Redactor::compares_equal`] for a key whose bit is known: only the keys of that bit are
    /// compared (most payload keys that pass the filter match no key, and fail here at once).
    #[inline]
    fn compares_noted(&self, bit: u64, key: &[u8]) -> bool {
        self.keys.iter().any(|k| k.bit == bit && k.matches(key))
    }

    /// Whether it hides no key at all.
    pub(crate) fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// A key to hide, kept for a comparison eight bytes at a time: per byte, the key's byte
/// lowercased, and 0x20 where that is an ASCII letter. A byte of a payload's key matches when,
/// with those bits set, it equals the lowercased byte: the letter in either case, any other byte
/// exactly (what `eq_ignore_ascii_case` decides, at about a fifth of its instructions for a
/// short key; callgrind, `publish-1-raw`).
#[derive(Debug, Clone)]
struct HiddenKey {
    /// Its [`Redactor::bit`].
    bit: u64,
    len: usize,
    /// (lowercased bytes, letter bits) per eight bytes, the last word padded with zeros.
    words: Box<[(u64, u64)]>,
}

impl HiddenKey {
    fn new(key: &str) -> Self {
        let lower = key.to_ascii_lowercase();
        let case: Vec<u8> =
            lower.bytes().map(|c| if c.is_ascii_lowercase() { 0x20 } else { 0 }).collect();
        let words = lower
            .as_bytes()
            .chunks(8)
            .zip(case.chunks(8))
            .map(|(l, c)| (word(l), word(c)))
            .collect();
        Self { bit: Redactor::bit(key), len: key.len(), words }
    }

    #[inline]
    fn matches(&self, key: &[u8]) -> bool {
        key.len() == self.len
            && key
                .chunks(8)
                .zip(&self.words)
                .all(|(chunk, &(lower, case))| word(chunk) | case == lower)
    }
}

/// Up to eight bytes as a little-endian word, padded with zeros.
#[inline]
fn word(bytes: &[u8]) -> u64 {
    match <[u8; 8]>::try_from(bytes) {
        Ok(full) => u64::from_le_bytes(full),
        Err(_) => {
            let mut w = [0u8; 8];
            w[..bytes.len()].copy_from_slice(bytes);
            u64::from_le_bytes(w)
        }
    }
}

pub(crate) struct Redacted<'a> {
    pub(crate) value: &'a Value,
    pub(crate) redactor: &'a Redactor,
}

impl Serialize for Redacted<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.redactor.keys.is_empty() {
            return self.value.serialize(s);
        }
        let child = |value| Redacted { value, redactor: self.redactor };
        match self.value {
            Value::Object(map) => {
                let mut m = s.serialize_map(Some(map.len()))?;
                for (k, v) in map {
                    if self.redactor.hides(k) {
                        m.serialize_entry(k, REDACTED)?;
                    } else {
                        m.serialize_entry(k, &child(v))?;
                    }
                }
                m.end()
            }
            Value::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for v in items {
                    seq.serialize_element(&child(v))?;
                }
                seq.end()
            }
            scalar => scalar.serialize(s),
        }
    }
}

/// The raw-data copy filters each key with the redactor's bits before comparing it (the
/// comparison runs for the keys whose bit is set only).
impl KeyTest for Redactor {
    #[inline]
    fn filter(&self) -> u64 {
        self.bits
    }

    /// The comparison alone: `write_redacted` asks for keys that passed its filter, and for
    /// the (rare) keys with escapes, whose unescaped form the filter skipped; the filter only
    /// spares comparisons, so the result is the same.
    #[inline]
    fn hides(&self, key: &str) -> bool {
        self.compares_equal(key)
    }

    #[inline]
    fn hides_noted(&self, bit: u64, key: &[u8]) -> bool {
        self.compares_noted(bit, key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::write_redacted;
    use serde_json::json;

    /// Hidden keys of every length and case, with an empty one and a non-ASCII one.
    fn filter_keys() -> Vec<String> {
        ["password", "API_KEY", "t", "", "é", "x-Token"].map(String::from).to_vec()
    }

    /// Keys to test against [`filter_keys`]: equal but for case, prefixes, near misses, and the
    /// characters either side of the filter's case bit (`@`, `` ` ``).
    const FILTER_PROBES: [&str; 17] = [
        "PASSWORD",
        "api_key",
        "Api_Key",
        "T",
        "t",
        "",
        "É",
        "é",
        "x-token",
        "passwor",
        "tokens",
        "a",
        "password ",
        "@",
        "`",
        "x-tokeN",
        "X-TOKEN",
    ];

    /// The word-at-a-time comparison decides as `eq_ignore_ascii_case`: every ASCII byte of a
    /// hidden key against every byte of a payload's key, in keys that end inside, at and just
    /// past a word.
    #[test]
    fn a_hidden_key_compares_as_eq_ignore_ascii_case() {
        let mut compared = 0;
        for len in [1, 7, 8, 9, 16, 17] {
            for h in 0u8..128 {
                let mut hidden = vec![b'k'; len];
                hidden[len / 2] = h;
                let hidden = String::from_utf8(hidden).unwrap();
                let key = HiddenKey::new(&hidden);
                for p in 0u8..=255 {
                    let mut probe = hidden.clone().into_bytes();
                    probe[len / 2] = p;
                    assert_eq!(
                        key.matches(&probe),
                        hidden.as_bytes().eq_ignore_ascii_case(&probe),
                        "{hidden:?} against {probe:?}"
                    );
                    compared += 1;
                }
                assert!(!key.matches(&hidden.as_bytes()[1..]), "a shorter key");
            }
        }
        assert_eq!(compared, 6 * 128 * 256);
    }

    #[test]
    fn the_key_filter_keeps_every_key_the_comparison_hides() {
        let keys = filter_keys();
        let r = Redactor::new(&keys);
        for probe in FILTER_PROBES {
            let expect = keys.iter().any(|k| k.eq_ignore_ascii_case(probe));
            assert_eq!(r.hides(probe), expect, "{probe:?}");
        }
    }

    /// The raw-data copy filters each key by the bytes around it in the text (an empty key's
    /// bit from its quotes): it hides exactly the keys the comparison hides, of every length, in
    /// any case, escaped or not, nested or not.
    #[test]
    fn the_raw_copy_hides_what_the_comparison_hides() {
        use crate::payload::RawData;
        let keys = filter_keys();
        let probes: Vec<&str> = FILTER_PROBES.into_iter().chain(["\"", "ab", "tt"]).collect();
        let entries: Vec<String> = probes
            .iter()
            .enumerate()
            .map(|(i, k)| format!("{}:{{\"n\":{i},{}:[{i}]}}", json!(k), json!(k)))
            .collect();
        let text = format!(r#"{{{},"pass\u0077ord":"x","k":"\u0074"}}"#, entries.join(","));
        let raw = RawData::new(text.as_str()).unwrap();
        assert!(raw.is_compact());
        let compare = |k: &str| keys.iter().any(|h| h.eq_ignore_ascii_case(k));
        let (mut written, mut by_comparison) = (String::new(), String::new());
        write_redacted(&mut written, &raw, Some(&Redactor::new(&keys)));
        write_redacted(&mut by_comparison, &raw, Some(&compare));
        assert_eq!(written, by_comparison);
        let hidden = probes.iter().filter(|k| compare(k)).count();
        assert!(hidden >= 10, "{hidden}");
        // Each hidden probe's value (its inner copy goes with it), and the escaped `password`.
        assert_eq!(written.matches(REDACTED).count(), hidden + 1, "{written}");
        let out: Value = serde_json::from_str(&written).unwrap();
        assert_eq!(
            (&out["k"], &out["a"]["n"], &out["ab"]["n"]),
            (&json!("t"), &json!(11), &json!(18))
        );
    }
}
