//! Connection labels: bounded, opaque metadata the application attaches to a principal (a session
//! id, a client name, a request id from the token) so that a connection can be told apart in
//! views, in the `Inbound` messages it sends and in the audit events it causes. The hub stores
//! and shows them; it never routes, limits or decides on them.

use std::fmt;
use std::sync::Arc;

use thiserror::Error;

/// A connection's labels: at most [`Labels::MAX_LABELS`] `key = value` pairs, keys of
/// ASCII letters, digits, `_`, `-` and `.` (at most [`Labels::MAX_KEY_BYTES`]), values any text
/// of at most [`Labels::MAX_VALUE_BYTES`]. Checked once, when built.
///
/// Cloning is a reference-count increment; no labels costs nothing. They appear in
/// [`ConnView::labels`](crate::ConnView::labels), [`Origin::labels`](crate::Origin::labels) and
/// [`AuditEvent::labels`](crate::AuditEvent::labels), never in a frame to a client, and never
/// in a routing decision.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Labels(Option<Arc<LabelList>>);

/// The pairs, in the order given. Boxed behind one thin pointer so that a connection without
/// labels holds eight bytes of `None`.
#[derive(PartialEq, Eq)]
struct LabelList(Box<[(Box<str>, Box<str>)]>);

/// Why [`Labels::new`] refused a set of labels. The texts name the key at most, never a value
/// (values may be identifiers the application would rather not see in a log line).
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum LabelsError {
    /// More than [`Labels::MAX_LABELS`] pairs.
    #[error("more than {max} labels")]
    TooMany {
        /// [`Labels::MAX_LABELS`].
        max: usize,
    },
    /// A key is empty, longer than [`Labels::MAX_KEY_BYTES`], or has a character outside
    /// ASCII letters, digits, `_`, `-` and `.`.
    #[error("invalid label key (1 to {max} of A-Z a-z 0-9 _ - .)")]
    InvalidKey {
        /// [`Labels::MAX_KEY_BYTES`].
        max: usize,
    },
    /// The value of `key` is longer than [`Labels::MAX_VALUE_BYTES`].
    #[error("the value of label `{key}` is over {max} bytes")]
    ValueTooLong {
        /// The label.
        key: String,
        /// [`Labels::MAX_VALUE_BYTES`].
        max: usize,
    },
    /// `key` is given twice.
    #[error("label `{key}` is given twice")]
    Duplicate {
        /// The label.
        key: String,
    },
}

impl Labels {
    /// The most pairs a connection may carry.
    pub const MAX_LABELS: usize = 8;
    /// The longest key, in bytes.
    pub const MAX_KEY_BYTES: usize = 64;
    /// The longest value, in bytes.
    pub const MAX_VALUE_BYTES: usize = 256;

    /// No labels.
    #[must_use]
    pub fn none() -> Self {
        Self(None)
    }

    /// Labels from `key, value` pairs, in the order given.
    ///
    /// # Errors
    ///
    /// [`LabelsError`] if there are too many pairs, a key is empty, too long or has a character
    /// outside `A-Z a-z 0-9 _ - .`, a value is too long, or a key repeats. Nothing is built then.
    pub fn new<K, V>(pairs: impl IntoIterator<Item = (K, V)>) -> Result<Self, LabelsError>
    where
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut list: Vec<(Box<str>, Box<str>)> = Vec::new();
        for (key, value) in pairs {
            let (key, value) = (key.as_ref(), value.as_ref());
            if list.len() == Self::MAX_LABELS {
                return Err(LabelsError::TooMany { max: Self::MAX_LABELS });
            }
            let key_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
            if key.is_empty() || key.len() > Self::MAX_KEY_BYTES || !key.chars().all(key_char) {
                return Err(LabelsError::InvalidKey { max: Self::MAX_KEY_BYTES });
            }
            if value.len() > Self::MAX_VALUE_BYTES {
                let max = Self::MAX_VALUE_BYTES;
                return Err(LabelsError::ValueTooLong { key: key.to_owned(), max });
            }
            if list.iter().any(|(k, _)| &**k == key) {
                return Err(LabelsError::Duplicate { key: key.to_owned() });
            }
            list.push((key.into(), value.into()));
        }
        if list.is_empty() {
            return Ok(Self(None));
        }
        Ok(Self(Some(Arc::new(LabelList(list.into_boxed_slice())))))
    }

    /// The value of `key`, if it is set.
    #[must_use]
    pub fn get(&self, key: &str) -> Option<&str> {
        self.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// The pairs, in the order they were given.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        let pairs = self.0.as_deref().map_or(&[][..], |l| &l.0[..]);
        pairs.iter().map(|(k, v)| (&**k, &**v))
    }

    /// How many pairs there are.
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.as_deref().map_or(0, |l| l.0.len())
    }

    /// Whether there are none.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }
}

impl fmt::Debug for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl serde::Serialize for Labels {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_keep_their_order_and_answer_lookups() {
        let labels = Labels::new([("sid", "s-42"), ("client", "web/1.4")]).unwrap();
        assert_eq!(labels.len(), 2);
        assert_eq!(labels.get("sid"), Some("s-42"));
        assert_eq!(labels.get("run"), None);
        assert_eq!(labels.iter().collect::<Vec<_>>(), [("sid", "s-42"), ("client", "web/1.4")]);
        assert_eq!(format!("{labels:?}"), r#"{"sid": "s-42", "client": "web/1.4"}"#);
        assert_eq!(serde_json::to_string(&labels).unwrap(), r#"{"sid":"s-42","client":"web/1.4"}"#);
        let none = Labels::new(std::iter::empty::<(&str, &str)>()).unwrap();
        assert!(none.is_empty() && none == Labels::none());
        assert_eq!(size_of::<Labels>(), size_of::<usize>());
    }

    #[test]
    fn every_bound_has_its_error_and_never_echoes_a_value() {
        let nine = (0..9).map(|i| (format!("k{i}"), "v"));
        assert_eq!(Labels::new(nine), Err(LabelsError::TooMany { max: 8 }));
        let eight = (0..8).map(|i| (format!("k{i}"), "v"));
        assert_eq!(Labels::new(eight).unwrap().len(), 8);

        let invalid = Err(LabelsError::InvalidKey { max: 64 });
        assert_eq!(Labels::new([("", "v")]), invalid);
        assert_eq!(Labels::new([("a b", "v")]), invalid);
        assert_eq!(Labels::new([("line\nbreak", "v")]), invalid);
        assert_eq!(Labels::new([("k".repeat(65), "v")]), invalid);
        assert!(Labels::new([("k".repeat(64), "v")]).is_ok());
        assert!(Labels::new([("client.name-2_x", "v")]).is_ok());

        let secret = "s".repeat(257);
        let err = Labels::new([("sid", secret.as_str())]).unwrap_err();
        assert_eq!(err, LabelsError::ValueTooLong { key: "sid".into(), max: 256 });
        assert!(!err.to_string().contains("sss"), "{err}");
        assert!(Labels::new([("sid", "s".repeat(256))]).is_ok());

        let twice = Labels::new([("sid", "a"), ("sid", "b")]);
        assert_eq!(twice, Err(LabelsError::Duplicate { key: "sid".into() }));
    }
}
