//! Identifiers: cheap-to-clone string newtypes for the things the application names, and the
//! opaque, generation-checked [`ConnId`] that only the hub can mint; the names of streams and
//! positions in them.

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        ///
        /// Cloning is a reference-count increment; the text is never copied after construction.
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Wraps a string as this identifier.
            pub fn new(id: impl Into<Arc<str>>) -> Self {
                Self(id.into())
            }

            /// The identifier as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl From<&str> for $name {
            fn from(id: &str) -> Self {
                Self(Arc::from(id))
            }
        }

        // Lets maps keyed by the id insert from a borrowed key (`entry_ref`).
        impl From<&$name> for $name {
            fn from(id: &$name) -> Self {
                id.clone()
            }
        }

        impl From<String> for $name {
            fn from(id: String) -> Self {
                Self(Arc::from(id))
            }
        }

        // `Hash` of the newtype equals `Hash` of its `str`, so maps keyed by it can be
        // searched with a borrowed `&str`.
        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }
    };
}

string_id!(
    /// A tenant (an organisation, a workspace): the widest scope an event may reach unless the
    /// configuration explicitly allows global broadcast.
    TenantId
);
string_id!(
    /// A user within a tenant. `(TenantId, UserId)` names one user; the same `UserId` in two
    /// tenants is two different users.
    UserId
);
string_id!(
    /// A conversation thread of one user. Threads narrow a user's stream; they never widen it.
    ThreadId
);
string_id!(
    /// A room: a tenant-scoped group that only the server can put connections into.
    RoomId
);
string_id!(
    /// One agent run, carried on envelopes so clients can group events.
    RunId
);
string_id!(
    /// A role name, used to narrow a tenant broadcast (`Audience::Role`).
    Role
);

/// A live connection's handle, minted by [`Hub::connect`](crate::Hub::connect).
///
/// It is a slot index plus a generation. When a connection closes its slot may be reused, but
/// the new occupant gets a new generation, so an id kept from before can never address it: the
/// hub rejects such a stale id with an error and an audit event. There is no public constructor.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    pub(crate) index: u32,
    pub(crate) generation: u32,
}

impl ConnId {
    pub(crate) fn new(index: u32, generation: u32) -> Self {
        Self { index, generation }
    }

    /// Builds an arbitrary id, valid or not. Only for fuzzers and reference models, which must be
    /// able to address connections that do not exist.
    #[cfg(any(feature = "fuzzing", fuzzing))]
    pub fn from_raw(index: u32, generation: u32) -> Self {
        Self { index, generation }
    }

    /// The id as one number (`generation << 32 | index`), for logs and wire protocols. It cannot
    /// be turned back into a `ConnId`.
    #[must_use]
    pub fn to_u64(self) -> u64 {
        (u64::from(self.generation) << 32) | u64::from(self.index)
    }
}

impl fmt::Debug for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConnId({}v{})", self.index, self.generation)
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}v{}", self.index, self.generation)
    }
}

/// The roles a principal holds, shared between all of its connections' records.
///
/// Small and immutable; cloning is a reference-count increment. One thin pointer (a connection
/// keeps a copy, so its size counts per connection).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Roles(Option<Arc<Box<[Role]>>>);

impl Roles {
    /// No roles.
    #[must_use]
    pub fn none() -> Self {
        Self(None)
    }

    /// Whether `role` is among these roles.
    #[must_use]
    pub fn contains(&self, role: &str) -> bool {
        self.iter().any(|r| r.as_str() == role)
    }

    /// The roles, in the order they were given (duplicates removed).
    pub fn iter(&self) -> impl Iterator<Item = &Role> {
        self.0.as_deref().map_or(&[][..], |roles| &roles[..]).iter()
    }

    /// How many roles there are.
    pub fn len(&self) -> usize {
        self.0.as_deref().map_or(0, |roles| roles.len())
    }

    /// Whether there are no roles.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<R: Into<Role>> FromIterator<R> for Roles {
    fn from_iter<I: IntoIterator<Item = R>>(iter: I) -> Self {
        let mut roles: Vec<Role> = Vec::new();
        for r in iter {
            let r = r.into();
            if !roles.contains(&r) {
                roles.push(r);
            }
        }
        if roles.is_empty() { Self(None) } else { Self(Some(Arc::new(roles.into_boxed_slice()))) }
    }
}

impl fmt::Debug for Roles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// Which stream a message belongs to, as named on the wire (`"u"`, `"t"`, `"r:<room>"`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StreamName {
    /// The user's own stream (targets `User`, `Thread`, `Connection`). Wire name `"u"`.
    User,
    /// The tenant's broadcast stream (`Tenant` target, and `Everyone`). Wire name `"t"`.
    Tenant,
    /// A room's stream. Wire name `"r:<room>"`.
    Room(RoomId),
}

impl fmt::Display for StreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StreamName::User => f.write_str("u"),
            StreamName::Tenant => f.write_str("t"),
            StreamName::Room(room) => write!(f, "r:{room}"),
        }
    }
}

/// A position in a stream: the epoch the stream was created with and a sequence number in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamPos {
    /// Identifies one incarnation of the stream. A stream created anew (a user retired and seen
    /// again, a room emptied and joined again) gets a new epoch, so positions from before cannot
    /// be mistaken for positions in it.
    pub epoch: u64,
    /// The sequence number: 1 for the first message of an epoch, +1 per message. 0 means "nothing
    /// yet".
    pub seq: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_ids_compare_by_text_and_borrow_as_str() {
        let a = UserId::from("alice");
        let b = UserId::new(String::from("alice"));
        assert_eq!(a, b);
        let mut set = hashbrown::HashSet::new();
        set.insert(a);
        assert!(set.contains("alice"));
        assert!(!set.contains("bob"));
    }

    #[test]
    fn roles_deduplicate_and_answer_membership() {
        let roles: Roles = ["admin", "viewer", "admin"].into_iter().map(Role::from).collect();
        assert_eq!(roles.len(), 2);
        assert!(roles.contains("admin"));
        assert!(!roles.contains("owner"));
        assert!(Roles::none().is_empty());
        assert_eq!(size_of::<Roles>(), size_of::<usize>());
    }

    #[test]
    fn conn_id_packs_generation_above_index() {
        let id = ConnId::new(7, 3);
        assert_eq!(id.to_u64(), (3 << 32) | 7);
        assert_eq!(id.to_string(), "7v3");
    }
}
