//! Authentication before the upgrade: an HS256 JSON Web Token names the user (`sub`), the tenant,
//! the tier, the roles, optionally rooms to join, and the expiry (`exp`). The hub never parses
//! tokens; this module turns a verified token into the [`Principal`] it is handed.
//!
//! **Connection labels** come from three claims, all optional: `sid` (OpenID Connect's session
//! id) becomes the label `sid`, `client_id` (RFC 9068's: the client the token was issued to) the
//! label `client_id`, and `labels`, an object of strings, adds its pairs as they are. Together
//! they must fit [`Labels`]' bounds (8 pairs, keys of `A-Z a-z 0-9 _ - .` up to 64 bytes, values
//! up to 256 bytes, no key twice) or the token is refused. The hub shows them in its views,
//! in the origin of the connection's messages and in its audit events; it never routes on them
//! and never sends them to a client.
//!
//! Self-contained (it refers to no sibling module), so that `examples/smol_server.rs` and the
//! tests can include it as it is.

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use switchboard::{Labels, LabelsError, PresenceMeta, Principal, RoomId, Tier};

/// The shortest HS256 secret [`Keys::new`] accepts, in bytes (RFC 7518 §3.2: a key of at least
/// the hash's size). A shorter one is refused: an empty secret would let anyone sign any token.
pub const MIN_SECRET_BYTES: usize = 32;
/// The shortest admin key ([`check_admin_key`]) accepted, in bytes.
pub const MIN_ADMIN_KEY_BYTES: usize = 16;
/// The longest token [`Keys::verify`] looks at, in bytes.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// The longest `sub`, `tenant`, role or room name a token may carry, in bytes.
pub const MAX_CLAIM_BYTES: usize = 256;
/// The most roles a token may carry.
pub const MAX_ROLES: usize = 32;
/// The most rooms a token may carry (the hub's default `max_rooms_per_connection`).
pub const MAX_ROOMS: usize = 128;
/// How far in the future a token's `exp` may lie by default: 30 days. A token that claims a
/// longer session is refused ([`Keys::with_max_session`] changes it).
pub const DEFAULT_MAX_SESSION: Duration = Duration::from_secs(30 * 24 * 3600);

/// The claims the server understands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user.
    pub sub: String,
    /// The tenant.
    pub tenant: String,
    /// `free` (the default), `early`, `mid` or `enterprise`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    /// Roles, for role-scoped tenant broadcasts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// Rooms the server puts the connection into at connect (rooms are joined by the server only,
    /// never by a client frame; the token is the server's word).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rooms: Vec<String>,
    /// Expiry, seconds since the Unix epoch. Required; it becomes the session's `expires_at`. At
    /// most the keys' maximum session length ([`DEFAULT_MAX_SESSION`]) from now.
    pub exp: u64,
    /// Not before, seconds since the Unix epoch: optional; a token used earlier is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// A display name, shown beside the user id in presence (`meta.name`); at most 256 bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The session id (OpenID Connect's `sid`): the connection's label `sid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    /// The client the token was issued to (RFC 9068's `client_id`): the label `client_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Further connection labels (see the module docs for the bounds).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

impl Claims {
    /// Claims for `user` of `tenant` that expire `ttl` from now.
    pub fn new(tenant: &str, user: &str, ttl: Duration) -> Self {
        Claims {
            sub: user.into(),
            tenant: tenant.into(),
            tier: None,
            roles: Vec::new(),
            rooms: Vec::new(),
            exp: unix_now().saturating_add(ttl.as_secs()),
            nbf: None,
            name: None,
            sid: None,
            client_id: None,
            labels: BTreeMap::new(),
        }
    }

    /// The connection labels these claims carry: `sid`, `client_id`, then `labels`.
    ///
    /// # Errors
    ///
    /// [`AuthError::Invalid`] if they do not fit [`Labels`]' bounds.
    pub fn connection_labels(&self) -> Result<Labels, AuthError> {
        let standard = [("sid", &self.sid), ("client_id", &self.client_id)];
        let standard = standard.into_iter().filter_map(|(k, v)| Some((k, v.as_deref()?)));
        let custom = self.labels.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        Labels::new(standard.chain(custom)).map_err(|e| {
            AuthError::Invalid(match e {
                LabelsError::TooMany { .. } => "more than 8 connection labels",
                LabelsError::InvalidKey { .. } => "invalid label key",
                LabelsError::ValueTooLong { .. } => "a label's value is over 256 bytes",
                LabelsError::Duplicate { .. } => "a label is given twice",
                _ => "invalid connection labels",
            })
        })
    }
}

/// A verified identity: the principal for [`switchboard::Hub::connect`] and the rooms to join.
#[derive(Clone, Debug)]
pub struct Identity {
    /// Who the token proved.
    pub principal: Principal,
    /// The rooms the token's `rooms` claim puts the connection in.
    pub rooms: Vec<RoomId>,
}

/// Why a token was refused. Every variant is an HTTP 401. The texts are short and fixed: a
/// refusal never echoes the token or the parser's own message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthError {
    /// No token in the request.
    Missing,
    /// The token's `exp` has passed.
    Expired,
    /// The token's `nbf` has not come yet.
    NotYetValid,
    /// Bad signature, wrong algorithm, not a JWT, or claims that make no sense; the text says
    /// which in a few words.
    Invalid(&'static str),
}

impl AuthError {
    /// A short name, used as a metrics label and in the 401 body.
    pub fn as_str(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::Invalid(_) => "invalid",
        }
    }
}

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthError::Missing => {
                f.write_str("no token: send `Authorization: Bearer <jwt>` or `?token=<jwt>`")
            }
            AuthError::Expired => f.write_str("the token has expired"),
            AuthError::NotYetValid => f.write_str("the token is not valid yet (`nbf`)"),
            AuthError::Invalid(why) => write!(f, "invalid token: {why}"),
        }
    }
}

impl std::error::Error for AuthError {}

/// A secret or key too short to be safe: the server refuses to start with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyError {
    /// The JWT secret has fewer than [`MIN_SECRET_BYTES`] bytes.
    SecretTooShort {
        /// Its length in bytes.
        len: usize,
    },
    /// The admin key has fewer than [`MIN_ADMIN_KEY_BYTES`] bytes.
    AdminKeyTooShort {
        /// Its length in bytes.
        len: usize,
    },
}

impl std::fmt::Display for KeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyError::SecretTooShort { len } => write!(
                f,
                "the JWT secret has {len} bytes; at least {MIN_SECRET_BYTES} are required \
                 (for example `openssl rand -hex 32`), or leave it unset for development mode"
            ),
            KeyError::AdminKeyTooShort { len } => write!(
                f,
                "the admin key has {len} bytes; at least {MIN_ADMIN_KEY_BYTES} are required \
                 (for example `openssl rand -hex 16`), or leave it unset to have one generated"
            ),
        }
    }
}

impl std::error::Error for KeyError {}

/// Checks that an admin key (what `POST /publish` requires) is at least [`MIN_ADMIN_KEY_BYTES`]
/// long.
pub fn check_admin_key(key: &str) -> Result<(), KeyError> {
    if key.len() < MIN_ADMIN_KEY_BYTES {
        return Err(KeyError::AdminKeyTooShort { len: key.len() });
    }
    Ok(())
}

/// The HS256 signing and verifying keys.
///
/// `jsonwebtoken` keeps a copy of the secret in each of its keys and does not wipe it; they are
/// built once and shared by every clone (the routes' state is cloned per request), so that copy
/// exists once, for the life of the server.
#[derive(Clone)]
pub struct Keys {
    /// Shared: the router clones its state (and so these keys) for every request; the key
    /// material and validation rules are several heap allocations to copy, and the secret's
    /// unwiped copy inside them must exist once.
    material: Arc<KeyMaterial>,
    max_session: Duration,
}

/// `jsonwebtoken`'s keys for one secret, and the checks every token gets.
struct KeyMaterial {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(HS256, secret hidden)")
    }
}

impl Keys {
    /// Keys for a shared secret of at least [`MIN_SECRET_BYTES`] bytes; a shorter one (an empty
    /// one above all) is refused.
    pub fn new(secret: &[u8]) -> Result<Self, KeyError> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(KeyError::SecretTooShort { len: secret.len() });
        }
        let mut validation = Validation::new(Algorithm::HS256);
        // An expired token is expired: no grace. (`exp` is required by default.)
        validation.leeway = 0;
        validation.validate_nbf = true;
        let material = KeyMaterial {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        };
        Ok(Keys { material: Arc::new(material), max_session: DEFAULT_MAX_SESSION })
    }

    /// The longest session a token may claim: a token whose `exp` lies further in the future is
    /// refused as invalid. Defaults to [`DEFAULT_MAX_SESSION`].
    pub fn with_max_session(mut self, max: Duration) -> Self {
        self.max_session = max;
        self
    }

    /// Signs claims.
    pub fn sign(&self, claims: &Claims) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.material.encoding)
            .expect("HS256 signing of plain claims cannot fail")
    }

    /// Verifies a token and returns its claims as signed (every check of [`Keys::verify`]).
    pub fn verified_claims(&self, token: &str) -> Result<Claims, AuthError> {
        self.verify_inner(token).map(|(claims, _)| claims)
    }

    /// Verifies a token and maps its claims onto a principal whose session ends at `exp`.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        self.verify_inner(token).map(|(_, identity)| identity)
    }

    fn verify_inner(&self, token: &str) -> Result<(Claims, Identity), AuthError> {
        use jsonwebtoken::errors::ErrorKind;
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::Invalid("token too long"));
        }
        let data = jsonwebtoken::decode::<Claims>(
            token,
            &self.material.decoding,
            &self.material.validation,
        )
        .map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::ImmatureSignature => AuthError::NotYetValid,
            ErrorKind::InvalidSignature => AuthError::Invalid("bad signature"),
            ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                AuthError::Invalid("algorithm not accepted (HS256 only)")
            }
            ErrorKind::MissingRequiredClaim(_) => AuthError::Invalid("missing claim"),
            _ => AuthError::Invalid("malformed token"),
        })?;
        let claims = data.claims;
        let signed = claims.clone();
        let now_unix = unix_now();
        if claims.exp <= now_unix {
            return Err(AuthError::Expired);
        }
        if claims.nbf.is_some_and(|nbf| nbf > now_unix) {
            return Err(AuthError::NotYetValid);
        }
        let (wall, now) = (SystemTime::now(), Instant::now());
        let remaining = time_left(claims.exp, wall);
        if remaining > self.max_session {
            return Err(AuthError::Invalid("`exp` beyond the maximum session length"));
        }
        let too_long = |s: &String| s.len() > MAX_CLAIM_BYTES;
        if claims.sub.is_empty() || claims.tenant.is_empty() {
            return Err(AuthError::Invalid("empty `sub` or `tenant`"));
        }
        if too_long(&claims.sub) || too_long(&claims.tenant) {
            return Err(AuthError::Invalid("`sub` or `tenant` too long"));
        }
        let tier = match claims.tier.as_deref() {
            None | Some("free") => Tier::Free,
            Some("early") => Tier::Early,
            Some("mid") => Tier::Mid,
            Some("enterprise") => Tier::Enterprise,
            Some(_) => return Err(AuthError::Invalid("unknown tier")),
        };
        if claims.roles.len() > MAX_ROLES {
            return Err(AuthError::Invalid("too many roles"));
        }
        if claims.roles.iter().any(|r| r.is_empty() || too_long(r)) {
            return Err(AuthError::Invalid("empty or too long role"));
        }
        if claims.rooms.len() > MAX_ROOMS {
            return Err(AuthError::Invalid("too many rooms"));
        }
        if claims.rooms.iter().any(|r| r.is_empty() || too_long(r)) {
            return Err(AuthError::Invalid("empty or too long room name"));
        }
        let expires_at = now
            .checked_add(remaining)
            .ok_or(AuthError::Invalid("`exp` beyond the maximum session length"))?;
        let labels = claims.connection_labels()?;
        let mut principal = Principal::new(claims.tenant, claims.sub)
            .tier(tier)
            .roles(claims.roles)
            .expires_at(expires_at)
            .labels(labels);
        if let Some(name) = &claims.name {
            if name.is_empty() || too_long(name) {
                return Err(AuthError::Invalid("empty or too long `name`"));
            }
            // A 256-byte name is far inside the metadata's 1 KiB, escaped or not.
            let meta = PresenceMeta::new(&serde_json::json!({ "name": name }))
                .map_err(|_| AuthError::Invalid("`name` does not fit the presence metadata"))?;
            principal = principal.meta(meta);
        }
        let rooms = claims.rooms.into_iter().map(RoomId::from).collect();
        Ok((signed, Identity { principal, rooms }))
    }
}

/// How long until `exp` (seconds since the Unix epoch) by the wall clock `wall`, to the
/// nanosecond: cut to whole seconds, one token's session end would move by up to a second
/// between two verifications, and a refresh with the same token could pass for a later one.
/// An `exp` past what the clock can represent is `Duration::MAX` (so refused as too far off), one
/// already past is zero.
fn time_left(exp: u64, wall: SystemTime) -> Duration {
    match UNIX_EPOCH.checked_add(Duration::from_secs(exp)) {
        Some(end) => end.duration_since(wall).unwrap_or(Duration::ZERO),
        None => Duration::MAX,
    }
}

/// Two verifications of one token give session ends this close (the wall and monotonic clocks
/// are read a moment apart each time); a token that really ends later does so by at least a
/// second, `exp` being whole seconds.
const SAME_END: Duration = Duration::from_millis(500);

/// Whether a refresh token's session end (`new`, from [`Keys::verify`]) is later than the
/// session's current one (`old`), and not the same `exp` again. `None`: never ends.
pub fn extends_session(new: Option<Instant>, old: Option<Instant>) -> bool {
    match (new, old) {
        (_, None) => new.is_none(),
        (None, Some(_)) => true,
        (Some(new), Some(old)) => old.checked_add(SAME_END).is_some_and(|old| new > old),
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// 64 unpredictable bits from the standard library's randomly keyed hasher (seeded from the OS),
/// so that a development secret needs no extra dependency.
pub fn random_u64() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    h.finish()
}

/// A random 256-bit secret as hex, for development runs without a configured secret.
pub fn dev_secret() -> String {
    (0..4).map(|_| format!("{:016x}", random_u64())).collect()
}

/// One demo identity printed at startup in development mode.
#[derive(Clone, Debug)]
pub struct DemoUser {
    /// Its tenant.
    pub tenant: &'static str,
    /// Its user id.
    pub user: &'static str,
    /// Its tier, as the `tier` claim spells it.
    pub tier: &'static str,
    /// Its roles.
    pub roles: &'static [&'static str],
    /// The rooms its token joins.
    pub rooms: &'static [&'static str],
}

/// Two users of one tenant and one of another.
pub const DEMO_USERS: [DemoUser; 3] = [
    DemoUser { tenant: "acme", user: "alice", tier: "free", roles: &["member"], rooms: &["lobby"] },
    DemoUser { tenant: "acme", user: "bob", tier: "mid", roles: &["admin"], rooms: &["lobby"] },
    DemoUser { tenant: "globex", user: "carol", tier: "enterprise", roles: &["admin"], rooms: &[] },
];

/// `alice` → `Alice`, the demo users' display names.
fn capitalized(user: &str) -> String {
    let mut chars = user.chars();
    chars.next().map(|c| c.to_uppercase().chain(chars).collect()).unwrap_or_default()
}

/// Signed tokens for [`DEMO_USERS`], valid for `ttl`.
pub fn demo_tokens(keys: &Keys, ttl: Duration) -> Vec<(DemoUser, String)> {
    DEMO_USERS
        .iter()
        .map(|d| {
            let claims = Claims {
                tier: Some(d.tier.into()),
                roles: d.roles.iter().map(|r| r.to_string()).collect(),
                rooms: d.rooms.iter().map(|r| r.to_string()).collect(),
                name: Some(capitalized(d.user)),
                ..Claims::new(d.tenant, d.user, ttl)
            };
            (d.clone(), keys.sign(&claims))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_token_verified_at_any_fraction_of_a_second_never_passes_for_a_later_one() {
        let exp = 2_000_000_000;
        let now = Instant::now();
        // The same token at the start and at the end of a wall-clock second, and the monotonic
        // clock having moved exactly as much: the two session ends agree to the nanosecond.
        let early = UNIX_EPOCH + Duration::from_secs(exp - 100) + Duration::from_millis(1);
        let late = early + Duration::from_millis(998);
        let first = now + time_left(exp, early);
        let again = now + Duration::from_millis(998) + time_left(exp, late);
        assert_eq!(first, again);
        // With a few microseconds between the two clock readings either way, still not later.
        let jitter = Duration::from_micros(50);
        assert!(!extends_session(Some(again + jitter), Some(first)));
        assert!(!extends_session(Some(again - jitter), Some(first)));
        // A token whose `exp` is one second later extends it; an earlier one does not.
        let later = now + time_left(exp + 1, early);
        assert!(extends_session(Some(later), Some(first)));
        assert!(!extends_session(Some(now + time_left(exp - 1, early)), Some(first)));
        // Past `exp`: nothing left, never a negative or wrapped duration; beyond the clock's
        // range: as far off as can be (refused as longer than any session).
        assert_eq!(time_left(exp, UNIX_EPOCH + Duration::from_secs(exp + 5)), Duration::ZERO);
        assert_eq!(time_left(u64::MAX, early), Duration::MAX);
        // A session that never ends is extended only by another that never ends.
        assert!(!extends_session(Some(later), None));
        assert!(extends_session(None, None));
        assert!(extends_session(None, Some(first)));
    }
}
