//! The one pass of validation over raw JSON text: its depth, its out-of-range numbers, and (for
//! compact text) where its object keys are, with what the redacting copy needs of each.

/// The longest text whose keys are noted: [`KeySpan`] offsets are 24 bits, so that a key's
/// [`key_bit`], its length and its value's end fit beside them in 8 bytes (a longer text is
/// scanned, as one with whitespace is).
pub(super) const MAX_SPANNED: usize = (1 << 24) - 1;

/// What validation notes of an object key in a compact text, in 8 bytes (a larger entry made
/// freeing a payload dearer than the copy it spares; callgrind, `publish-1-raw`):
///
/// - `at`: the byte offset of its opening quote (bits 0–23), its [`key_bit`] as a bit number
///   (bits 24–29), and whether it has escapes, so must be unescaped to be compared (bit 30);
/// - `ends`: where its value ends if that value is a string or a number (bits 0–23; 0 if not
///   noted: a hidden object's end is found when it is hidden), and the key's length inside its
///   quotes (bits 24–31; [`KeySpan::LONG`] if it is that long or longer: its closing quote is
///   then found in the text).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) struct KeySpan {
    at: u32,
    ends: u32,
}

impl KeySpan {
    const OFFSET: u32 = (1 << 24) - 1;
    const ESCAPED: u32 = 1 << 30;
    const LONG: u32 = 255;

    fn new(open: usize, close: usize, escaped: bool, bit: u64) -> Self {
        debug_assert!(close <= MAX_SPANNED);
        let flag = if escaped { Self::ESCAPED } else { 0 };
        let len = (close - open - 1).min(Self::LONG as usize) as u32;
        Self { at: open as u32 | bit.trailing_zeros() << 24 | flag, ends: len << 24 }
    }

    pub(super) fn open(self) -> usize {
        (self.at & Self::OFFSET) as usize
    }

    /// The offset of its closing quote in `b`, the text it was noted in.
    pub(super) fn close(self, b: &[u8]) -> usize {
        match self.ends >> 24 {
            Self::LONG => string_end(b, self.open()),
            len => self.open() + 1 + len as usize,
        }
    }

    /// The key's [`key_bit`] as validation noted it ([`ESCAPED_BIT`] if the key has escapes).
    pub(super) fn bit(self) -> u64 {
        1 << ((self.at >> 24) & 63)
    }

    pub(super) fn escaped(self) -> bool {
        self.at & Self::ESCAPED != 0
    }

    /// Where the key's value ends, if noted.
    pub(super) fn value_end(self) -> Option<usize> {
        match self.ends & Self::OFFSET {
            0 => None,
            end => Some(end as usize),
        }
    }

    fn set_value_end(&mut self, end: usize) {
        debug_assert!(end <= MAX_SPANNED);
        self.ends = (self.ends & !Self::OFFSET) | end as u32;
    }
}

/// What one pass over `text` finds: the deepest nesting of arrays and objects (brackets inside
/// strings not counted), whether a number is outside `f64`'s range, and, if the text is compact
/// (no whitespace outside strings), the span of every object key and the union of their
/// [`key_bit`]s. Only meaningful for valid JSON.
pub(super) struct Scan {
    pub(super) depth: usize,
    pub(super) huge_number: bool,
    /// A string has a `\u` escape of a surrogate that is not half of a pair
    /// ([`lone_surrogate`]).
    pub(super) lone_surrogate: bool,
    pub(super) keys: Option<Box<[KeySpan]>>,
    pub(super) bits: u64,
}

pub(super) fn scan(text: &str) -> Scan {
    let b = text.as_bytes();
    let (mut depth, mut max, mut i) = (0usize, 0usize, 0usize);
    let (mut huge_number, mut lone, mut bits) = (false, false, 0u64);
    // Keys are noted while the text is compact (no whitespace seen yet) and short enough.
    let mut compact = b.len() <= MAX_SPANNED;
    let mut keys = Spans::new();
    while i < b.len() {
        match b[i] {
            b'"' => {
                let (close, escaped) = string_close(b, i);
                // Rare (escapes), so looked at only then. This costs a payload without escapes
                // about 120 instructions of its 8,000 (callgrind, `raw-new`): its strings' escape
                // flags are kept now, where only its keys' were.
                lone |= escaped && lone_surrogate(&b[i..=close]);
                // In compact JSON a string is a key exactly when a colon follows it at once (a
                // value string is followed by `,`, `}`, `]` or the end), and a string right
                // after a colon is the value of the key noted last.
                if compact
                    && i > 0
                    && b[i - 1] == b':'
                    && let Some(key) = keys.last_mut()
                {
                    key.set_value_end(close + 1);
                } else if compact && b.get(close + 1) == Some(&b':') {
                    // From the bytes inside the quotes (the quotes themselves for an empty key,
                    // as `key_bit` takes them). A key with escapes is compared unescaped, so it
                    // must reach the comparison whatever the redactor's bits: its own bit.
                    let bit = if escaped {
                        ESCAPED_BIT
                    } else {
                        key_bit(close - i - 1, b[i + 1], b[close - 1])
                    };
                    bits |= bit;
                    keys.push(KeySpan::new(i, close, escaped, bit));
                }
                i = close;
            }
            b' ' | b'\t' | b'\n' | b'\r' => compact = false,
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
                if compact
                    && i > 0
                    && b[i - 1] == b':'
                    && let Some(key) = keys.last_mut()
                {
                    key.set_value_end(end);
                }
                i = end - 1;
            }
            _ => {}
        }
        i += 1;
    }
    Scan {
        depth: max,
        huge_number,
        lone_surrogate: lone,
        keys: compact.then(|| keys.finish()),
        bits,
    }
}

/// Whether the JSON string `s` (its quotes included) has a `\u` escape of a surrogate that is not
/// a high one followed at once by an escaped low one. Such text is not a sequence of characters:
/// serde_json refuses it as a `String` or a `Value` (its validation of ignored values, which
/// [`RawData::new`](super::RawData::new) runs, takes it), so a reader of the frame could not parse
/// it.
pub(super) fn lone_surrogate(s: &[u8]) -> bool {
    let escape_at = |i: usize| match s.get(i..i + 6) {
        Some([b'\\', b'u', hex @ ..]) => {
            hex.iter().try_fold(0u32, |u, &c| Some(u << 4 | char::from(c).to_digit(16)?))
        }
        _ => None,
    };
    let mut i = 0;
    while i < s.len() {
        if s[i] != b'\\' {
            i += 1;
            continue;
        }
        let Some(unit) = escape_at(i) else {
            i += 2; // another escape (`\\` among them): its second byte is not a backslash
            continue;
        };
        i += 6;
        match unit {
            0xD800..=0xDBFF if matches!(escape_at(i), Some(0xDC00..=0xDFFF)) => i += 6,
            0xD800..=0xDFFF => return true,
            _ => {}
        }
    }
    false
}

/// The key spans a scan gathers: the first [`Spans::INLINE`] on the stack, so that a payload
/// with that many keys costs one allocation of its exact size. Growing a `Vec` instead cost three
/// reallocations for 13 keys, more than the rest of the scan's work on them (callgrind,
/// `raw-new`).
struct Spans {
    inline: [KeySpan; Self::INLINE],
    len: usize,
    /// Every span, once there are more than fit inline.
    spill: Vec<KeySpan>,
}

impl Spans {
    const INLINE: usize = 32;

    fn new() -> Self {
        Self { inline: [KeySpan { at: 0, ends: 0 }; Self::INLINE], len: 0, spill: Vec::new() }
    }

    fn push(&mut self, key: KeySpan) {
        if self.len < Self::INLINE {
            self.inline[self.len] = key;
        } else {
            if self.len == Self::INLINE {
                self.spill.reserve(2 * Self::INLINE);
                self.spill.extend_from_slice(&self.inline);
            }
            self.spill.push(key);
        }
        self.len += 1;
    }

    fn last_mut(&mut self) -> Option<&mut KeySpan> {
        if self.len <= Self::INLINE {
            let last = self.len.checked_sub(1)?;
            Some(&mut self.inline[last])
        } else {
            self.spill.last_mut()
        }
    }

    fn finish(self) -> Box<[KeySpan]> {
        if self.len <= Self::INLINE {
            Box::from(&self.inline[..self.len])
        } else {
            self.spill.into_boxed_slice()
        }
    }
}

/// The index of the quote that closes the string opened at `open` (or the last index if it is
/// never closed, which validation then refuses).
pub(super) fn string_end(b: &[u8], open: usize) -> usize {
    string_close(b, open).0
}

/// [`string_end`], and whether the string has escapes.
///
/// Eight bytes at a time up to the next quote or backslash ([`quote_or_backslash`]), then a
/// byte at a time: the value of a hidden key is skipped this way, and a byte at a time cost
/// about 8 instructions per byte (callgrind, `publish-1-raw`).
fn string_close(b: &[u8], open: usize) -> (usize, bool) {
    let (mut i, mut escaped) = (open + 1, false);
    loop {
        while let Some(chunk) = b.get(i..i + 8) {
            let word = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
            match quote_or_backslash(word) {
                0 => i += 8,
                found => {
                    i += (found.trailing_zeros() / 8) as usize;
                    break;
                }
            }
        }
        match b.get(i) {
            Some(b'\\') => {
                escaped = true;
                i += 2;
            }
            Some(b'"') => return (i, escaped),
            Some(_) => i += 1,
            None => return (b.len().saturating_sub(1), escaped),
        }
    }
}

/// The high bit of each byte of `word` (little-endian) that may be a quote or a backslash: the
/// lowest one set is the first such byte (a byte above a match may be flagged falsely, never
/// one below), 0 if there is none. The frame writer's escape check uses it too.
#[inline]
pub(crate) fn quote_or_backslash(word: u64) -> u64 {
    zero_byte(word ^ (ONES * u64::from(b'"'))) | zero_byte(word ^ (ONES * u64::from(b'\\')))
}

/// The high bit of each byte of `word` that may be a byte below `n` (n ≤ 128), as
/// [`quote_or_backslash`] flags its bytes: 0 exactly when there is none.
#[inline]
pub(crate) fn byte_below(word: u64, n: u8) -> u64 {
    word.wrapping_sub(ONES * u64::from(n)) & !word & HIGHS
}

const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);

/// The high bit of each byte of `v` that may be zero (0 exactly when none is).
#[inline]
fn zero_byte(v: u64) -> u64 {
    v.wrapping_sub(ONES) & !v & HIGHS
}

/// One bit of the low 63 for a key of `len` bytes whose first and last bytes are `first` and
/// `last` (for an empty key: two quotes, `"`, which is what is around it in JSON text), ASCII
/// case ignored: keys equal but for ASCII case have the same bit. The top bit is
/// [`ESCAPED_BIT`], which no key's bit is.
///
/// `| 0x20` stands for the lowercase: it lowercases ASCII letters and maps a few other bytes
/// onto others (`@` onto `` ` ``, say), which only makes more keys share a bit. It costs
/// fewer instructions than `to_ascii_lowercase` (its range check), and this runs for every
/// key of a payload (callgrind, `publish-1-raw`).
#[inline]
pub(crate) fn key_bit(len: usize, first: u8, last: u8) -> u64 {
    let (first, last) = (first | 0x20, last | 0x20);
    let h = (len as u64).wrapping_mul(31) ^ u64::from(first) ^ (u64::from(last) << 3);
    // Not `% 63`: a division, dearer than the two instructions of `min` (callgrind,
    // `publish-1`, where every key of a parsed payload is hashed); bit 62 is just twice as full.
    1 << (h % 64).min(62)
}

/// [`key_bit`] of an (unescaped) key.
#[inline]
pub(crate) fn key_bit_of(key: &str) -> u64 {
    match key.as_bytes() {
        [] => key_bit(0, b'"', b'"'),
        b @ ([first, .., last] | [first @ last]) => key_bit(b.len(), *first, *last),
    }
}

/// The bit [`RawData`](super::RawData) notes for a key with escapes (whose bytes do not give its [`key_bit`]):
/// [`write_redacted`](super::write_redacted) adds it to any filter, so that such keys are always compared.
pub(super) const ESCAPED_BIT: u64 = 1 << 63;

#[cfg(test)]
mod tests {
    use super::*;

    /// The scan eight bytes at a time finds the closing quote and the escapes a byte-by-byte
    /// scan finds, wherever they fall in or across the eight-byte words, and at the end of the
    /// text.
    #[test]
    fn the_string_scan_finds_what_a_bytewise_scan_finds() {
        fn bytewise(b: &[u8], open: usize) -> (usize, bool) {
            let (mut i, mut escaped) = (open + 1, false);
            while i < b.len() {
                match b[i] {
                    b'\\' => {
                        escaped = true;
                        i += 2;
                    }
                    b'"' => return (i, escaped),
                    _ => i += 1,
                }
            }
            (b.len().saturating_sub(1), escaped)
        }
        let alphabet = [b'a', b'"', b'\\', 0x80, 0xff, 0x21, 0x23, 0x5b, 0x5d, 0x01, 0xa2, 0xdc];
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut checked = 0;
        for len in 0..40 {
            for _ in 0..60 {
                let mut text = vec![b'"'];
                for _ in 0..len {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    // Mostly plain bytes, so that quotes and escapes fall anywhere in a word.
                    let pick =
                        if seed % 4 == 0 { (seed >> 8) as usize % alphabet.len() } else { 0 };
                    text.push(alphabet[pick]);
                }
                assert_eq!(string_close(&text, 0), bytewise(&text, 0), "{text:?}");
                checked += usize::from(bytewise(&text, 0).0 + 1 < text.len());
            }
        }
        assert!(checked > 500, "{checked} closed strings");
        assert_eq!(quote_or_backslash(u64::from_le_bytes(*b"abc\"efgh")).trailing_zeros(), 31);
        assert_eq!(quote_or_backslash(u64::from_le_bytes(*b"abcdefgh")), 0);
    }
}
