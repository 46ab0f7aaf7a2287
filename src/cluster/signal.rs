//! Presence signals: what a node publishes on a scope's channel with each write and refresh of
//! its presence set there, and the digest that lets the others find a lost one (DESIGN §12; the
//! bookkeeping that uses them is `presence.rs`).

use std::ops::Not;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::presence::MAX_TTL;
use super::{NodeId, PresenceEntry, StreamKey, StreamScope};
use crate::ids::UserId;
use crate::presence::{PresenceScope, ScopeKey};

/// What a presence signal starts with (the other signals of a channel start otherwise).
const TAG: &str = "presence\n";

/// The scope's stream: its channel carries the scope's signals.
pub(crate) fn stream_of(key: &ScopeKey) -> StreamKey {
    match &key.1 {
        PresenceScope::Tenant => StreamKey::tenant(key.0.clone()),
        PresenceScope::Room(room) => StreamKey::room(key.0.clone(), room.clone()),
    }
}

/// The scope a stream's channel carries signals for (a user's stream carries none).
pub(crate) fn scope_of(stream: &StreamKey) -> Option<ScopeKey> {
    match &stream.scope {
        StreamScope::Tenant => Some((stream.tenant.clone(), PresenceScope::Tenant)),
        StreamScope::Room(room) => Some((stream.tenant.clone(), PresenceScope::Room(room.clone()))),
        StreamScope::User(_) => None,
    }
}

/// A set of users in brief: how many, and the xor of their ids' 64-bit FNV-1a hashes. Two sets
/// with one digest are, for this purpose, the same set; a lost change shows as a disagreement.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Digest {
    pub(crate) count: u32,
    pub(crate) hash: u64,
}

impl Digest {
    pub(crate) fn add(&mut self, user: &str) {
        self.count = self.count.saturating_add(1);
        self.hash ^= fnv(user);
    }

    pub(crate) fn remove(&mut self, user: &str) {
        self.count = self.count.saturating_sub(1);
        self.hash ^= fnv(user);
    }

    /// The digest of `users`.
    #[cfg(any(test, feature = "fuzzing", fuzzing))]
    pub(crate) fn of<'a>(users: impl IntoIterator<Item = &'a str>) -> Self {
        let mut d = Digest::default();
        users.into_iter().for_each(|u| d.add(u));
        d
    }
}

fn fnv(text: &str) -> u64 {
    text.bytes()
        .fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// A presence signal, as it travels on a scope's channel: its sender, how long the sender's set
/// lives without another signal, the changes, and the digest of the sender's set after them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Signal {
    #[serde(rename = "n")]
    pub(crate) node: Arc<str>,
    #[serde(rename = "t")]
    pub(crate) ttl_ms: u64,
    /// The set becomes exactly `joins`.
    #[serde(rename = "r", default, skip_serializing_if = "Not::not")]
    pub(crate) replace: bool,
    #[serde(rename = "c")]
    pub(crate) count: u32,
    #[serde(rename = "h")]
    pub(crate) hash: u64,
    #[serde(rename = "j", default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) joins: Vec<(Arc<str>, Option<Arc<str>>)>,
    #[serde(rename = "l", default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) leaves: Vec<Arc<str>>,
}

impl Signal {
    /// A signal from `node` after a write of `joins` and `leaves` (or a refresh: neither).
    pub(crate) fn new(
        node: &NodeId,
        ttl: Duration,
        replace: bool,
        digest: Digest,
        joins: &[PresenceEntry],
        leaves: &[UserId],
    ) -> Self {
        Signal {
            node: node.as_str().into(),
            ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
            replace,
            count: digest.count,
            hash: digest.hash,
            joins: joins.iter().map(|(u, m)| (u.as_str().into(), m.clone())).collect(),
            leaves: leaves.iter().map(|u| u.as_str().into()).collect(),
        }
    }

    /// The text published on the channel.
    pub(crate) fn encode(&self) -> Arc<str> {
        let json = serde_json::to_string(self).expect("a signal serializes");
        let mut text = String::with_capacity(TAG.len() + json.len());
        text.push_str(TAG);
        text.push_str(&json);
        text.into()
    }

    /// Whether a channel's signal is a presence signal (then [`Signal::decode`] reads it).
    pub(crate) fn is_presence(payload: &str) -> bool {
        payload.starts_with(TAG)
    }

    /// Reads a signal back; `None` for anything malformed.
    pub(crate) fn decode(payload: &str) -> Option<Self> {
        let signal: Signal = serde_json::from_str(payload.strip_prefix(TAG)?).ok()?;
        // Metadata is a JSON object (as `PresenceMeta` makes it): anything else is not ours.
        let meta_ok = signal.joins.iter().all(|(u, m)| {
            !u.is_empty()
                && m.as_deref().is_none_or(|m| {
                    m.len() <= crate::presence::MAX_META_BYTES && m.starts_with('{')
                })
        });
        (meta_ok && !signal.node.is_empty()).then_some(signal)
    }

    /// The lifetime the signal claims for its sender's set, within reason.
    pub(crate) fn ttl(&self) -> Duration {
        Duration::from_millis(self.ttl_ms).clamp(Duration::from_millis(1), MAX_TTL)
    }
}

/// For tests: a signal from `node` (ttl 15 s) with these joins and leaves and the digest of
/// `digest_of`.
#[cfg(test)]
pub(crate) fn test_signal(
    node: &str,
    digest_of: &[&str],
    joins: &[&str],
    leaves: &[&str],
) -> Signal {
    let joins: Vec<PresenceEntry> = joins.iter().map(|u| (UserId::from(*u), None)).collect();
    let leaves: Vec<UserId> = leaves.iter().map(|u| UserId::from(*u)).collect();
    let digest = Digest::of(digest_of.iter().copied());
    Signal::new(&node.into(), Duration::from_secs(15), false, digest, &joins, &leaves)
}

#[cfg(test)]
mod tests {
    use super::*;

    use test_signal as signal;

    #[test]
    fn signals_round_trip_and_bad_ones_are_refused() {
        let s = signal("n1", &["a"], &["a"], &["b"]);
        let text = s.encode();
        assert!(Signal::is_presence(&text));
        assert_eq!(Signal::decode(&text), Some(s));
        for bad in [
            "presence\n{}",
            "presence\nnot json",
            r#"presence\n{"n":"","t":1,"c":0,"h":0}"#,
            r#"presence\n{"n":"x","t":1,"c":1,"h":0,"j":[["u","[1]"]]}"#,
            "evict\nn1\n3",
        ] {
            assert_eq!(Signal::decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_digest_is_the_same_whatever_the_order_and_changes_with_the_set() {
        let mut d = Digest::default();
        d.add("a");
        d.add("b");
        assert_eq!(d, Digest::of(["b", "a"]));
        d.remove("a");
        assert_eq!(d, Digest::of(["b"]));
        assert_ne!(Digest::of(["a"]), Digest::of(["b"]));
        assert_eq!(Digest::of(["a"]).count, 1);
    }
}
