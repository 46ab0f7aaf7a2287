//! The server's two secrets in memory: the HS256 secret tokens are verified with
//! ([`JwtSecret`]) and the key of the admin routes ([`AdminKey`]).
//!
//! Each is held once, behind a reference count, in a buffer that is overwritten with zeros when
//! the last holder drops it ([`zeroize::Zeroizing`]): clones (every request clones the routes'
//! state) share that one buffer instead of leaving copies on the heap. Neither prints itself:
//! `Debug` shows `[redacted]`, and there is no `Display`. Reading one takes an explicit
//! [`JwtSecret::expose`] / [`AdminKey::expose`], and comparing a presented key with the admin
//! key ([`AdminKey::matches`]) takes time independent of where they differ.
//!
//! What this does not cover, so that nobody relies on it: the process's command line and
//! environment keep what they were given (`--jwt-secret`, `SWITCHBOARD_JWT_SECRET`), as does the
//! argument parser's copy until it is dropped after start-up; and `jsonwebtoken` keeps its own
//! copy of the secret in its keys ([`Keys`](crate::auth::Keys) holds one, shared by every clone)
//! and derives HMAC state from it per token, neither of which it wipes. Swap memory and core
//! dumps are the operating system's to protect (`mlock`, `ulimit -c 0`).

use std::fmt;
use std::sync::Arc;

use zeroize::Zeroizing;

/// The HS256 secret that signs and verifies tokens: wiped on drop, never printed.
#[derive(Clone)]
pub struct JwtSecret(Arc<Zeroizing<Vec<u8>>>);

impl JwtSecret {
    /// Takes ownership of `bytes` (moved, not copied: a `String` or `Vec` given here is the one
    /// buffer that is wiped).
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Arc::new(Zeroizing::new(bytes)))
    }

    /// The secret's bytes, for building the signing keys.
    #[must_use]
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Its length in bytes.
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether it is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// For the command line: the value as given.
    ///
    /// # Errors
    ///
    /// Never (the length is checked when the server starts, with its own message).
    pub fn parse_arg(value: &str) -> Result<Self, std::convert::Infallible> {
        Ok(Self::from(value))
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

impl fmt::Debug for JwtSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JwtSecret([redacted])")
    }
}

/// The key the admin routes (`POST /publish`, and `GET /metrics` when it asks for it) require as
/// `Authorization: Bearer <key>`: wiped on drop, never printed.
#[derive(Clone)]
pub struct AdminKey(Arc<Zeroizing<String>>);

impl AdminKey {
    /// Takes ownership of `key` (moved, not copied).
    pub fn new(key: String) -> Self {
        Self(Arc::new(Zeroizing::new(key)))
    }

    /// The key as text (the binary prints a key it generated, so that it can be used).
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Its length in bytes.
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether it is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

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

    /// For the command line: the value as given.
    ///
    /// # Errors
    ///
    /// Never (the length is checked when the server starts, with its own message).
    pub fn parse_arg(value: &str) -> Result<Self, std::convert::Infallible> {
        Ok(Self::from(value))
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

impl fmt::Debug for AdminKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminKey([redacted])")
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
        assert!(shown.contains("JwtSecret([redacted])") && shown.contains("AdminKey([redacted])"));
        assert_eq!(secret.expose(), b"correct horse battery staple, 32+ bytes");
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
