//! Authentication before the upgrade: an HS256 JSON Web Token names the user (`sub`), the tenant,
//! the tier, the roles, optionally rooms to join, and the expiry (`exp`). The hub never parses
//! tokens; this module turns a verified token into the [`Principal`] it is handed.
//!
//! Self-contained (it refers to no sibling module), so that `examples/smol_server.rs` and the
//! tests can include it as it is.

use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use switchboard::{Principal, RoomId, Tier};

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
    /// Expiry, seconds since the Unix epoch. Required; it becomes the session's `expires_at`.
    pub exp: u64,
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
            exp: unix_now() + ttl.as_secs(),
        }
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

/// Why a token was refused. Every variant is an HTTP 401.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthError {
    /// No token in the request.
    Missing,
    /// The token's `exp` has passed.
    Expired,
    /// Bad signature, wrong algorithm, not a JWT, or claims that make no sense.
    Invalid(String),
}

impl AuthError {
    /// A short name, used as a metrics label and in the 401 body.
    pub fn as_str(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Expired => "expired",
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
            AuthError::Invalid(why) => write!(f, "invalid token: {why}"),
        }
    }
}

/// The HS256 signing and verifying keys.
#[derive(Clone)]
pub struct Keys {
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
    /// Keys for a shared secret.
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        // An expired token is expired: no grace. (`exp` is required by default.)
        validation.leeway = 0;
        Keys {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// Signs claims.
    pub fn sign(&self, claims: &Claims) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .expect("HS256 signing of plain claims cannot fail")
    }

    /// Verifies a token and maps its claims onto a principal whose session ends at `exp`.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        use jsonwebtoken::errors::ErrorKind;
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::Invalid(e.to_string()),
            })?;
        let claims = data.claims;
        let now_unix = unix_now();
        if claims.exp <= now_unix {
            return Err(AuthError::Expired);
        }
        if claims.sub.is_empty() || claims.tenant.is_empty() {
            return Err(AuthError::Invalid("empty `sub` or `tenant`".into()));
        }
        let tier = match claims.tier.as_deref() {
            None | Some("free") => Tier::Free,
            Some("early") => Tier::Early,
            Some("mid") => Tier::Mid,
            Some("enterprise") => Tier::Enterprise,
            Some(other) => return Err(AuthError::Invalid(format!("unknown tier `{other}`"))),
        };
        if claims.rooms.iter().any(String::is_empty) {
            return Err(AuthError::Invalid("empty room name".into()));
        }
        let expires_at = Instant::now() + Duration::from_secs(claims.exp - now_unix);
        let principal = Principal::new(claims.tenant, claims.sub)
            .tier(tier)
            .roles(claims.roles)
            .expires_at(expires_at);
        Ok(Identity { principal, rooms: claims.rooms.into_iter().map(RoomId::from).collect() })
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

/// Signed tokens for [`DEMO_USERS`], valid for `ttl`.
pub fn demo_tokens(keys: &Keys, ttl: Duration) -> Vec<(DemoUser, String)> {
    DEMO_USERS
        .iter()
        .map(|d| {
            let claims = Claims {
                tier: Some(d.tier.into()),
                roles: d.roles.iter().map(|r| r.to_string()).collect(),
                rooms: d.rooms.iter().map(|r| r.to_string()).collect(),
                ..Claims::new(d.tenant, d.user, ttl)
            };
            (d.clone(), keys.sign(&claims))
        })
        .collect()
}
