//! The server's two secrets in memory: the HS256 secret tokens are verified with
//! ([`JwtSecret`]) and the key of the admin routes ([`AdminKey`]).
//!
//! Each is a [`Secret`]: held once, behind a reference count, in a buffer that is overwritten
//! with zeros when the last holder drops it ([`zeroize::Zeroizing`]). Clones (every request
//! clones the routes' state) share that one buffer instead of leaving copies on the heap. Neither
//! prints itself: `Debug` shows `[redacted]`, and there is no `Display`. Reading one takes an
//! explicit [`Secret::expose`], and comparing a presented key with the admin key
//! ([`AdminKey::matches`]) takes time independent of where they differ.
//!
//! What this does not cover, so that nobody relies on it: the process's command line and
//! environment keep what they were given (`--jwt-secret`, `SWITCHBOARD_JWT_SECRET`), as does the
//! argument parser's copy until it is dropped after start-up; and `jsonwebtoken` keeps its own
//! copy of the secret in its keys ([`Keys`](crate::auth::Keys) holds one, shared by every clone)
//! and derives HMAC state from it per token, neither of which it wipes. Swap memory and core
//! dumps are the operating system's to protect (`mlock`, `ulimit -c 0`).

use std::fmt;
use std::sync::Arc;

use zeroize::{Zeroize, Zeroizing};

/// A secret value: one buffer, shared by every clone, wiped when the last is dropped, never
/// printed.
#[derive(Clone)]
pub struct Secret<T: Zeroize>(Arc<Zeroizing<T>>);

/// The HS256 secret that signs and verifies tokens.
pub type JwtSecret = Secret<Vec<u8>>;

/// The key the admin routes (`POST /publish`, and `GET /metrics` when it asks for it) require as
/// `Authorization: Bearer <key>`.
pub type AdminKey = Secret<String>;

impl<T: Zeroize> Secret<T> {
    /// Takes ownership of `value` (moved, not copied: the buffer given here is the one that is
    /// wiped).
    pub fn new(value: T) -> Self {
        Self(Arc::new(Zeroizing::new(value)))
    }

    /// The value, for the one place that needs it (building the signing keys, checking a key's
    /// length, printing a key the binary generated).
    #[must_use]
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T: Zeroize> Secret<T>
where
    Self: for<'a> From<&'a str>,
{
    /// For the command line: the value as given.
    ///
    /// # Errors
    ///
    /// Never (the length is checked when the server starts, with its own message).
    pub fn parse_arg(value: &str) -> Result<Self, std::convert::Infallible> {
        Ok(Self::from(value))
    }
}

impl AdminKey {
    /// Whether `given` is the key. Every byte of the key is compared whatever `given` holds, so
    /// the time taken does not tell how much of a guess was right.
    #[must_use]
    pub fn matches(&self, given: &str) -> bool {
        let (a, b) = (given.as_bytes(), self.0.as_bytes());
        let mut diff = a.len() ^ b.len();
        for (i, byte) in b.iter().enumerate() {
            diff |= usize::from(a.get(i).copied().unwrap_or(0) ^ byte);
        }
        diff == 0
    }
}

impl From<Vec<u8>> for JwtSecret {
    fn from(bytes: Vec<u8>) -> Self {
        Self::new(bytes)
    }
}

impl From<String> for JwtSecret {
    fn from(text: String) -> Self {
        Self::new(text.into_bytes())
    }
}

impl From<&str> for JwtSecret {
    fn from(text: &str) -> Self {
        Self::new(text.as_bytes().to_vec())
    }
}

impl From<&[u8]> for JwtSecret {
    fn from(bytes: &[u8]) -> Self {
        Self::new(bytes.to_vec())
    }
}

impl From<String> for AdminKey {
    fn from(key: String) -> Self {
        Self::new(key)
    }
}

impl From<&str> for AdminKey {
    fn from(key: &str) -> Self {
        Self::new(key.to_owned())
    }
}

impl<T: Zeroize> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neither_secret_prints_itself() {
        let secret = JwtSecret::from("correct horse battery staple, 32+ bytes");
        let key = AdminKey::from("admin-key-hunter2-hunter2");
        let shown = format!("{secret:?} {key:?} {:#?}", (secret.clone(), key.clone()));
        assert!(!shown.contains("horse") && !shown.contains("hunter2"), "{shown}");
        assert_eq!(shown.matches("[redacted]").count(), 4, "{shown}");
        assert_eq!(secret.expose().as_slice(), b"correct horse battery staple, 32+ bytes");
        assert_eq!(key.expose(), "admin-key-hunter2-hunter2");
    }

    #[test]
    fn clones_share_one_buffer() {
        let secret = JwtSecret::from(String::from("a secret of some length"));
        let copy = secret.clone();
        assert!(std::ptr::eq(secret.expose().as_ptr(), copy.expose().as_ptr()));
        let key = AdminKey::from("sixteen bytes!!!");
        assert!(std::ptr::eq(key.expose().as_ptr(), key.clone().expose().as_ptr()));
    }

    #[test]
    fn the_admin_key_matches_only_itself() {
        let key = AdminKey::from("sixteen bytes!!!");
        assert!(key.matches("sixteen bytes!!!"));
        for wrong in ["", "sixteen bytes!!", "sixteen bytes!!!!", "Sixteen bytes!!!", "x"] {
            assert!(!key.matches(wrong), "{wrong:?}");
        }
    }
}
