//! Redis names derived from typed stream keys.
//!
//! Every name of one stream shares one **base**, `<prefix>:{<kind><len>:<tenant><len>:<id>}`:
//! the kind (`u` user, `r` room, `t` tenant broadcast) and each id prefixed by its length in
//! bytes, so no two (tenant, id) pairs can produce the same base whatever bytes the ids hold
//! (`acme` + `a:b` and `acme:a` + `b` differ in their lengths). The braces are a Redis Cluster
//! hash tag: all of a stream's keys (its meta hash, its log, its idempotency keys, a user's lease
//! sets) hash to one slot, so each script touches a single slot and runs on a cluster unchanged.
//! An id containing `}` ends the tag early, but at the same byte for every key of that stream,
//! so they still share a slot; uniqueness comes from the full, length-prefixed name.
//!
//! The node registry and each node's list of lease sets live outside any stream's slot: they
//! are only ever touched one key per command. Every name is built here, in Rust; scripts get
//! them in KEYS and never derive one (Redis Cluster's rule, checked by a test in `scripts`).

use std::fmt::Write as _;

use switchboard::{LeaseHolder, NodeId, StreamKey, StreamScope};

/// The Redis names of one stream, derived from its base on demand (an operation builds only the
/// names it uses).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct StreamNames {
    /// `<prefix>:{<kind><len>:<tenant>[<len>:<id>]}`, then whatever the last
    /// [`StreamNames::suffixed`] call appended.
    base: String,
    /// The length of the base alone.
    len: usize,
}

/// Appends `text` as `<len>:<text>`.
fn push_prefixed(out: &mut String, text: &str) {
    let _ = write!(out, "{}:{text}", text.len());
}

impl StreamNames {
    /// The names of `key` under `prefix`.
    pub(crate) fn of(prefix: &str, key: &StreamKey) -> Self {
        let (kind, id) = match &key.scope {
            StreamScope::User(user) => ('u', Some(user.as_str())),
            StreamScope::Room(room) => ('r', Some(room.as_str())),
            StreamScope::Tenant => ('t', None),
            // A scope this driver does not know: named apart from every known kind.
            _ => ('x', None),
        };
        // Room for a suffix ([`StreamNames::suffixed`]) without growing.
        let ids = key.tenant.as_str().len() + id.map_or(0, str::len);
        let mut base = String::with_capacity(prefix.len() + ids + 48);
        base.push_str(prefix);
        base.push_str(":{");
        base.push(kind);
        push_prefixed(&mut base, key.tenant.as_str());
        if let Some(id) = id {
            push_prefixed(&mut base, id);
        }
        base.push('}');
        let len = base.len();
        StreamNames { base, len }
    }

    /// The name with `suffix` (`m`, `l`, `c`, …: see the methods below), built in this value's own
    /// buffer and valid until the next call: for a caller that copies each name (a pipeline's
    /// arguments) and would otherwise allocate a string per name.
    pub(crate) fn suffixed(&mut self, suffix: &str) -> &str {
        self.base.truncate(self.len);
        self.base.push(':');
        self.base.push_str(suffix);
        &self.base
    }

    /// [`StreamNames::idempotency`] for `key`, built as [`StreamNames::suffixed`] builds.
    pub(crate) fn idempotency_in_place(&mut self, key: &str) -> &str {
        self.suffixed("i:");
        push_prefixed(&mut self.base, key);
        &self.base
    }

    fn name(&self, suffix: &str) -> String {
        let base = &self.base[..self.len];
        let mut name = String::with_capacity(base.len() + 1 + suffix.len());
        name.push_str(base);
        name.push(':');
        name.push_str(suffix);
        name
    }

    /// Hash `{e: epoch, s: seq}`: the stream's top.
    pub(crate) fn meta(&self) -> String {
        self.name("m")
    }

    /// List of payloads, oldest first; the last one has seq `s`.
    pub(crate) fn log(&self) -> String {
        self.name("l")
    }

    /// The live channel.
    pub(crate) fn channel(&self) -> String {
        self.name("c")
    }

    /// Sorted set of lease holders by expiry (user streams).
    pub(crate) fn leases(&self) -> String {
        self.name("leases")
    }

    /// Sorted set of lease holders by grant time, to find the oldest (user streams).
    pub(crate) fn lease_order(&self) -> String {
        self.name("lease-order")
    }

    /// The key remembering an idempotency key's first append (the driver builds it in place:
    /// [`StreamNames::idempotency_in_place`]).
    #[cfg(test)]
    pub(crate) fn idempotency(&self, key: &str) -> String {
        let mut name = self.name("i:");
        push_prefixed(&mut name, key);
        name
    }

    /// Presence (tenant and room streams): sorted set of the nodes with a set in the scope, by
    /// expiry (ms, Redis time).
    pub(crate) fn presence_nodes(&self) -> String {
        self.name("pn")
    }

    /// Presence: the start of every node's set name in the scope. Only the driver builds set
    /// names (a script that touched a name it built itself would break on Redis Cluster, which
    /// requires every key a script touches to be passed in KEYS).
    fn presence_set_prefix(&self) -> String {
        self.name("p:")
    }

    /// Presence: hash user → metadata (`""` for none) of one node's set in the scope, expiring
    /// as a whole.
    pub(crate) fn presence_set(&self, node: &NodeId) -> String {
        let mut name = self.presence_set_prefix();
        push_prefixed(&mut name, node.as_str());
        name
    }
}

/// A lease holder as a sorted-set member: `<len>:<node>|<conn>`.
pub(crate) fn holder_member(holder: &LeaseHolder) -> String {
    let mut member = String::with_capacity(holder.node.as_str().len() + 24);
    push_prefixed(&mut member, holder.node.as_str());
    let _ = write!(member, "|{}", holder.conn);
    member
}

/// The member prefix of every lease a node holds: `<len>:<node>|`.
pub(crate) fn node_member_prefix(node: &NodeId) -> String {
    let mut prefix = String::new();
    push_prefixed(&mut prefix, node.as_str());
    prefix.push('|');
    prefix
}

/// Reads a member written by [`holder_member`] back; `None` for anything else.
pub(crate) fn parse_holder(member: &[u8]) -> Option<LeaseHolder> {
    let text = std::str::from_utf8(member).ok()?;
    let (len, rest) = text.split_once(':')?;
    let len: usize = len.parse().ok()?;
    let node = rest.get(..len)?;
    let conn = rest.get(len..)?.strip_prefix('|')?.parse().ok()?;
    Some(LeaseHolder { node: NodeId::new(node), conn })
}

/// The sorted set of live nodes (member: node id, score: last heartbeat in ms, Redis time).
pub(crate) fn nodes(prefix: &str) -> String {
    format!("{prefix}:nodes")
}

/// The channel a node publishes its liveness probes on (only it subscribes).
pub(crate) fn probe_channel(prefix: &str, node: &NodeId) -> String {
    let mut name = format!("{prefix}:probe:");
    push_prefixed(&mut name, node.as_str());
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_built_in_place_are_the_allocated_names() {
        let key = StreamKey::user("ac}me", "a:b}");
        let n = StreamNames::of("sb", &key);
        let mut m = n.clone();
        // In the order the append plans them, with a key that holds the tag's closing brace.
        assert_eq!(m.suffixed("m"), n.meta());
        assert_eq!(m.suffixed("l"), n.log());
        assert_eq!(m.idempotency_in_place("k}1"), n.idempotency("k}1"));
        assert_eq!(m.suffixed("c"), n.channel());
        assert_eq!(m.idempotency_in_place(""), n.idempotency(""));
        // The allocating names still see the base alone after an in-place one.
        assert_eq!(m.meta(), n.meta());
        assert_ne!(n.meta(), n.log());
    }

    #[test]
    fn ids_that_concatenate_alike_get_distinct_names() {
        let a = StreamNames::of("sb", &StreamKey::user("acme", "a:b"));
        let b = StreamNames::of("sb", &StreamKey::user("acme:a", "b"));
        let c = StreamNames::of("sb", &StreamKey::room("acme", "a:b"));
        let d = StreamNames::of("sb", &StreamKey::tenant("acme4:a:b"));
        let all = [&a, &b, &c, &d];
        for (i, x) in all.iter().enumerate() {
            for y in &all[i + 1..] {
                assert_ne!(x.meta(), y.meta());
                assert_ne!(x.channel(), y.channel());
            }
        }
        assert_eq!(a.meta(), "sb:{u4:acme3:a:b}:m");
        assert_eq!(d.log(), "sb:{t9:acme4:a:b}:l");
    }

    #[test]
    fn every_key_of_a_stream_shares_its_hash_tag() {
        // Redis Cluster hashes the text between the first `{` and the next `}`.
        fn tag(key: &str) -> &str {
            let open = key.find('{').unwrap();
            let close = key[open + 1..].find('}').unwrap() + open + 1;
            &key[open + 1..close]
        }
        for key in [StreamKey::user("acme", "alice"), StreamKey::room("t}x", "r}oom")] {
            let n = StreamNames::of("sb", &key);
            let keys = [
                n.meta(),
                n.log(),
                n.idempotency("k1"),
                n.leases(),
                n.lease_order(),
                n.presence_nodes(),
                n.presence_set(&NodeId::new("n}1")),
            ];
            let tags = keys.each_ref().map(|k| tag(k));
            assert!(tags.iter().all(|t| *t == tags[0]), "{tags:?}");
        }
    }

    #[test]
    fn holders_round_trip_through_their_member_text() {
        for node in ["n1", "a|b:c", ""] {
            let holder = LeaseHolder { node: NodeId::new(node), conn: 42 };
            let member = holder_member(&holder);
            assert!(member.starts_with(&node_member_prefix(&holder.node)));
            assert_eq!(parse_holder(member.as_bytes()), Some(holder));
        }
        assert_eq!(parse_holder(b"9:short|1"), None);
        assert_eq!(parse_holder(b"garbage"), None);
    }

    #[test]
    fn presence_sets_are_named_per_node_with_length_prefixes() {
        let n = StreamNames::of("sb", &StreamKey::room("acme", "lobby"));
        assert_eq!(n.presence_set(&NodeId::new("a:1")), "sb:{r4:acme5:lobby}:p:3:a:1");
        assert!(n.presence_set(&NodeId::new("a")).starts_with(&n.presence_set_prefix()));
        assert_ne!(n.presence_set(&NodeId::new("a:1")), n.presence_set(&NodeId::new("a")) + ":1");
        assert_eq!(n.presence_nodes(), "sb:{r4:acme5:lobby}:pn");
    }

    #[test]
    fn idempotency_keys_are_length_prefixed_too() {
        let n = StreamNames::of("sb", &StreamKey::tenant("acme"));
        assert_ne!(n.idempotency("a:1"), n.idempotency("a") + ":1");
        assert_eq!(n.idempotency("k"), "sb:{t4:acme}:i:1:k");
    }
}
