//! The HTTP surface: `GET /ws` (authenticated upgrade), `POST /publish` (admin key),
//! `GET /metrics` (Prometheus text), `GET /healthz`, `GET /` (the demo page), and the admin API
//! (`/admin/…`, admin key; see `admin.rs`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Extension;
use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Query, Request, State, WebSocketUpgrade};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use switchboard::{
    Audience, ConnectError, Envelope, EventKind, Priority, PublishError, RawData, RawDataError,
    StreamPos, Target,
};

use crate::auth::{AuthError, Claims, KeyError, Keys, check_admin_key};
use crate::bus::BusReader;
use crate::driver::{Handle, PublishFailed, Receipt, Refused, SocketWriter, SseSessions};
use crate::metrics;
use crate::secret::AdminKey;

/// Counters of the HTTP layer (the hub never sees what it refuses here).
#[derive(Debug, Default)]
pub struct HttpCounters {
    /// Upgrades without a token.
    pub unauthorized_missing: AtomicU64,
    /// Upgrades with an expired token.
    pub unauthorized_expired: AtomicU64,
    /// Upgrades with a token whose `nbf` has not come yet.
    pub unauthorized_not_yet_valid: AtomicU64,
    /// Upgrades with a token that failed verification.
    pub unauthorized_invalid: AtomicU64,
    /// Upgrades refused with 403 because their `Origin` is not on the allowlist.
    pub origin_refused: AtomicU64,
    /// Authenticated upgrades the hub refused (limits, breaker).
    pub connect_refused: AtomicU64,
    /// `POST /publish` requests the hub accepted.
    pub publish_accepted: AtomicU64,
    /// `POST /publish` requests refused as invalid or by the hub (not counting the two below).
    pub publish_rejected: AtomicU64,
    /// `POST /publish` requests without the admin key.
    pub publish_unauthorized: AtomicU64,
    /// `POST /publish` requests whose body was over [`PublishBody::max_bytes`] (413).
    pub publish_too_large: AtomicU64,
    /// `POST /publish` requests whose body did not arrive within [`PublishBody::timeout`] (408).
    pub publish_body_timeouts: AtomicU64,
    /// Cluster mode: `POST /publish` requests the bus did not append (503 with `Retry-After`
    /// when retryable, else 502).
    pub publish_unavailable: AtomicU64,
    /// `GET /metrics` requests without the admin key, when it is required.
    pub metrics_unauthorized: AtomicU64,
    /// `/admin/…` requests without the admin key.
    pub admin_unauthorized: AtomicU64,
}

impl HttpCounters {
    pub(crate) fn unauthorized(&self, err: &AuthError) {
        let c = match err {
            AuthError::Missing => &self.unauthorized_missing,
            AuthError::Expired => &self.unauthorized_expired,
            AuthError::NotYetValid => &self.unauthorized_not_yet_valid,
            AuthError::Invalid(_) => &self.unauthorized_invalid,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// How much of a `POST /publish` body the server reads, and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PublishBody {
    /// The largest body; a larger one is answered 413 without being read whole (at once, when
    /// its `Content-Length` says so). Default [`PublishBody::DEFAULT_MAX_BYTES`].
    pub max_bytes: usize,
    /// How long reading the whole body may take, from the moment the handler starts reading it
    /// (the headers are the listener's header-read timeout's business); a body still incomplete
    /// then is answered 408 and the connection closed. Default [`PublishBody::DEFAULT_TIMEOUT`].
    pub timeout: Duration,
}

impl PublishBody {
    /// 2 MiB: twice the hub's default `max_unwritten_bytes` (1 MiB), the largest frame a
    /// connection can be handed, so every event the hub can deliver at its defaults fits, with
    /// room for the request's own fields and JSON escaping. Raise it with `max_unwritten_bytes`.
    pub const DEFAULT_MAX_BYTES: usize = 2 * 1024 * 1024;
    /// 10 s: a backend on any working link sends 2 MiB well within it.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
}

impl Default for PublishBody {
    fn default() -> Self {
        PublishBody { max_bytes: Self::DEFAULT_MAX_BYTES, timeout: Self::DEFAULT_TIMEOUT }
    }
}

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState {
    /// The hub task.
    pub handle: Handle,
    /// Verifies connection tokens.
    pub keys: Keys,
    /// What `POST /publish` requires as `Authorization: Bearer <key>` (one buffer shared by
    /// every clone of the state, wiped when the last is dropped).
    pub admin_key: AdminKey,
    /// The HTTP layer's counters, rendered by `/metrics`.
    pub counters: Arc<HttpCounters>,
    /// The browser origins allowed to open `/ws` (exact `scheme://host[:port]`); `None` allows
    /// any. A request without an `Origin` header (not a browser) is not affected.
    pub allowed_origins: Option<Arc<[String]>>,
    /// Whether `GET /metrics` requires the admin key as well.
    pub metrics_require_admin: bool,
    /// The size and time bounds of a `POST /publish` body.
    pub publish_body: PublishBody,
    /// Development only: `POST /demo/token` re-signs a valid token for this long, so that the
    /// page can refresh its session (a real deployment's own token issuer does that). `None`
    /// (the default): the route answers 404.
    pub demo_token_ttl: Option<Duration>,
    /// The open Server-Sent Events connections, for `POST /sse/{conn_id}` ([`crate::sse`]).
    pub sse: SseSessions,
    /// Cluster mode: reads on the bus that do not go through the hub (the admin API's
    /// cluster-wide presence). `None` on a single node.
    pub bus: Option<BusReader>,
}

impl AppState {
    /// State for [`router`], with fresh counters, any origin allowed and `/metrics` open. The
    /// admin key must have at least [`MIN_ADMIN_KEY_BYTES`](crate::auth::MIN_ADMIN_KEY_BYTES)
    /// bytes.
    pub fn new(
        handle: Handle,
        keys: Keys,
        admin_key: impl Into<AdminKey>,
    ) -> Result<Self, KeyError> {
        let admin_key = admin_key.into();
        check_admin_key(admin_key.expose())?;
        Ok(AppState {
            handle,
            keys,
            admin_key,
            counters: Arc::default(),
            allowed_origins: None,
            metrics_require_admin: false,
            publish_body: PublishBody::default(),
            demo_token_ttl: None,
            sse: SseSessions::default(),
            bus: None,
        })
    }

    /// Cluster mode: the bus reader the admin API's cluster-wide reads use (the bus link's
    /// `reader`).
    pub fn bus_reader(mut self, reader: Option<BusReader>) -> Self {
        self.bus = reader;
        self
    }

    /// Development only: serves `POST /demo/token` (see [`AppState::demo_token_ttl`]).
    pub fn demo_token_ttl(mut self, ttl: Option<Duration>) -> Self {
        self.demo_token_ttl = ttl;
        self
    }

    /// Allows WebSocket upgrades only from these browser origins (`https://app.example.com`,
    /// compared without a trailing `/` and ignoring ASCII case); an empty list allows any. Any
    /// deployment whose clients authenticate with something the browser sends by itself (a
    /// cookie put into the token by a proxy, say) should set it, against cross-site WebSocket
    /// hijacking.
    pub fn allowed_origins(mut self, origins: impl IntoIterator<Item = String>) -> Self {
        let list: Vec<String> = origins
            .into_iter()
            .map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase())
            .filter(|o| !o.is_empty())
            .collect();
        self.allowed_origins = (!list.is_empty()).then(|| list.into());
        self
    }

    /// Puts `GET /metrics` behind the admin key (`Authorization: Bearer <key>`).
    pub fn metrics_require_admin(mut self, required: bool) -> Self {
        self.metrics_require_admin = required;
        self
    }

    /// Bounds the size of a `POST /publish` body and the time taken to read it.
    pub fn publish_body(mut self, bounds: PublishBody) -> Self {
        self.publish_body = bounds;
        self
    }

    pub(crate) fn origin_allowed(&self, headers: &HeaderMap) -> bool {
        let Some(allowed) = &self.allowed_origins else { return true };
        let Some(origin) = headers.get(header::ORIGIN) else { return true };
        let Ok(origin) = origin.to_str() else { return false };
        let origin = origin.trim().trim_end_matches('/').to_ascii_lowercase();
        allowed.contains(&origin)
    }
}

/// The routes: `GET /ws`, `GET /sse` and `POST /sse/{conn_id}` ([`crate::sse`]), `POST /publish`,
/// `GET /metrics`, `GET /healthz`, `GET /`, `GET /switchboard-client.js`, and the admin API
/// under `/admin/` ([`crate::admin::routes`]). Merge it
/// into the application's own router, or nest it under a prefix.
///
/// `POST /publish` reads at most [`PublishBody::max_bytes`] of body (axum's [`DefaultBodyLimit`]
/// on that route; 413 over it) within [`PublishBody::timeout`] (408 after it).
pub fn router(state: AppState) -> Router {
    let body_limit = DefaultBodyLimit::max(state.publish_body.max_bytes);
    Router::new()
        .route("/", get(page))
        .route("/switchboard-client.js", get(client_module))
        .route("/ws", get(websocket))
        .route("/sse", get(crate::sse::open))
        .route("/sse/{conn_id}", post(crate::sse::post))
        .route("/publish", post(publish::publish).layer(body_limit))
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(healthz))
        .route("/demo/token", post(demo_token))
        .merge(crate::admin::routes())
        .with_state(state)
}

const PAGE: &str = include_str!("page.html");

/// The TypeScript client (`clients/typescript`), compiled: the page imports it, and any other
/// page of the deployment may. Committed build output, so the server needs no node to run; CI
/// checks that it is the build of the current source (`npm run check-build`).
pub const CLIENT_MODULE: &str = include_str!("../../clients/typescript/dist/switchboard.js");

async fn client_module() -> Response {
    let headers = [
        (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::CACHE_CONTROL, "no-cache"),
    ];
    (headers, CLIENT_MODULE).into_response()
}

/// The page's Content-Security-Policy: nothing but its own inline module and style (allowed by
/// their hashes) and scripts of its own origin (the client module), WebSockets and fetches to its
/// own origin, and no framing.
fn page_csp() -> &'static str {
    static CSP: OnceLock<String> = OnceLock::new();
    CSP.get_or_init(|| {
        let hash = |open: &str, close: &str| {
            let start = PAGE.find(open).map(|i| i + open.len()).expect("page.html has the element");
            let end = start + PAGE[start..].find(close).expect("page.html closes the element");
            let digest = Sha256::digest(&PAGE.as_bytes()[start..end]);
            format!("'sha256-{}'", base64::engine::general_purpose::STANDARD.encode(digest))
        };
        format!(
            "default-src 'none'; script-src 'self' {}; style-src {}; connect-src 'self'; \
             img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            hash("<script type=\"module\">", "</script>"),
            hash("<style>", "</style>"),
        )
    })
}

async fn page() -> Response {
    let headers = [
        (header::CONTENT_SECURITY_POLICY, page_csp()),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::CACHE_CONTROL, "no-store"),
    ];
    (headers, Html(PAGE)).into_response()
}

/// `POST /demo/token` (development only): the bearer token, verified, re-signed with the same
/// claims and a new expiry, as `{"token": …}`. 404 unless the server runs with demo tokens.
async fn demo_token(State(app): State<AppState>, headers: HeaderMap) -> Response {
    let Some(ttl) = app.demo_token_ttl else {
        return error(StatusCode::NOT_FOUND, "not_found", "no token issuer on this server");
    };
    let Some(token) = bearer(&headers) else {
        return error(StatusCode::UNAUTHORIZED, "unauthorized", "a token is required");
    };
    match app.keys.verified_claims(token) {
        Ok(claims) => {
            let exp = crate::auth::unix_now().saturating_add(ttl.as_secs());
            Json(json!({ "token": app.keys.sign(&Claims { exp, nbf: None, ..claims }) }))
                .into_response()
        }
        Err(e) => error(StatusCode::UNAUTHORIZED, "invalid", e),
    }
}

async fn healthz(State(app): State<AppState>) -> Response {
    match app.handle.snapshot().await {
        Some(s) => {
            let mut body = json!({ "status": "ok", "connections": s.hub.connections_active });
            // Cluster mode: while the bus is down the node keeps its connections but refuses new
            // ones (503) and publishes (503 with Retry-After).
            if let Some(bus) = &s.bus {
                body["bus"] = json!(if bus.is_up() { "up" } else { "down" });
            }
            Json(body).into_response()
        }
        None => {
            (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "status": "stopped" }))).into_response()
        }
    }
}

/// `GET /metrics`: the Prometheus text format 0.0.4 for every scraper (see [`metrics`]). With
/// `metrics_require_admin`, only with the admin key.
async fn metrics_text(State(app): State<AppState>, headers: HeaderMap) -> Response {
    if app.metrics_require_admin && !bearer(&headers).is_some_and(|k| app.admin_key.matches(k)) {
        app.counters.metrics_unauthorized.fetch_add(1, Ordering::Relaxed);
        let mut res = error(StatusCode::UNAUTHORIZED, "unauthorized", "admin key required");
        res.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return res;
    }
    let Some(snapshot) = app.handle.snapshot().await else {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    match metrics::render(&snapshot, &app.counters) {
        Ok(body) => ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], body).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "metrics", e),
    }
}

/// A JSON error answer: `{"error": code, "message": …}`.
pub(crate) fn error(status: StatusCode, code: &str, message: impl std::fmt::Display) -> Response {
    (status, Json(json!({ "error": code, "message": message.to_string() }))).into_response()
}

/// The bearer token of an `Authorization` header.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token.trim())
}

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

/// `GET /ws`: authenticate, let the hub admit the principal, then upgrade. A missing, bad or
/// expired token is a 401 and touches no hub state.
async fn websocket(
    State(app): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<TokenQuery>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    socket: Option<Extension<SocketWriter>>,
) -> Response {
    if !app.origin_allowed(&headers) {
        app.counters.origin_refused.fetch_add(1, Ordering::Relaxed);
        return error(StatusCode::FORBIDDEN, "origin_not_allowed", "this origin may not connect");
    }
    let token = bearer(&headers).or(query.token.as_deref()).filter(|t| !t.is_empty());
    let identity = match token.ok_or(AuthError::Missing).and_then(|t| app.keys.verify(t)) {
        Ok(identity) => identity,
        Err(err) => {
            app.counters.unauthorized(&err);
            let mut res = error(StatusCode::UNAUTHORIZED, err.as_str(), &err);
            res.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return res;
        }
    };
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => return rejection.into_response(),
    };
    match app.handle.connect(identity.principal, identity.rooms).await {
        // A small read buffer, a size limit derived from the hub's `max_frame_bytes`, and the
        // connection's own task.
        Ok(mut accepted) => {
            // Served by our own listener: the hub task may write frames to the socket itself.
            if let Some(Extension(socket)) = socket {
                accepted.write_directly(socket);
            }
            app.handle.upgrade(upgrade, accepted)
        }
        Err(refused) => {
            app.counters.connect_refused.fetch_add(1, Ordering::Relaxed);
            refusal(refused)
        }
    }
}

pub(crate) fn refusal(refused: Refused) -> Response {
    let err = match refused {
        Refused::Stopping => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "stopping",
                "the server is shutting down",
            );
        }
        Refused::Hub(err) => err,
    };
    let (status, code) = match err {
        ConnectError::SessionExpired => (StatusCode::UNAUTHORIZED, "expired"),
        ConnectError::UserLimit { .. } => (StatusCode::TOO_MANY_REQUESTS, "user_limit"),
        ConnectError::TenantLimit { .. } => (StatusCode::TOO_MANY_REQUESTS, "tenant_limit"),
        ConnectError::BreakerOpen { .. } => (StatusCode::TOO_MANY_REQUESTS, "breaker_open"),
        ConnectError::TooManyConnections { .. } => (StatusCode::SERVICE_UNAVAILABLE, "full"),
        ConnectError::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        _ => (StatusCode::FORBIDDEN, "refused"),
    };
    let mut res = error(status, code, err);
    if let ConnectError::BreakerOpen { retry_after } = err {
        let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
        res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    if matches!(err, ConnectError::Unavailable) {
        res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(RETRY_BUS_SECS));
    }
    res
}

/// `Retry-After` (seconds) when the bus is down: reconnecting to Redis takes up to about two
/// seconds between attempts.
pub(crate) const RETRY_BUS_SECS: u64 = 2;

/// The longest idempotency key `POST /publish` takes, in bytes.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 256;

/// The body of `POST /publish`: flat, so that it is easy to write with curl.
///
/// The target is chosen by which fields are present: `user` (with `thread`, one thread of that
/// user; else with `run`, one run of that user), `room`, or neither (the tenant's broadcast, narrowed to `role` if given). `everyone:
/// true` without a tenant is a global broadcast, refused unless the hub config allows it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    /// The tenant (required unless `everyone`).
    pub tenant: Option<String>,
    /// One user of the tenant.
    pub user: Option<String>,
    /// One thread of that user.
    pub thread: Option<String>,
    /// One room of the tenant.
    pub room: Option<String>,
    /// Narrows a tenant broadcast to one role.
    pub role: Option<String>,
    /// Every tenant (needs `Config::allow_global_broadcast`).
    #[serde(default)]
    pub everyone: bool,
    /// `agent_started`, `agent_thinking`, `tool_executing`, `tool_completed`, `agent_completed`,
    /// or a custom kind.
    pub kind: String,
    /// The agent run the event belongs to.
    pub run: Option<String>,
    /// The payload, kept as the JSON text it arrived as: the hub redacts and copies it into the
    /// frame without building a tree ([`switchboard::RawData`]). Absent or `null`: no data.
    #[serde(default)]
    pub data: Option<Box<RawValue>>,
    /// The same key on a retried request publishes the event only once within the retention age
    /// (the answer says `duplicate: true` and gives the first position): a single node remembers
    /// it, in cluster mode the bus does. At most [`MAX_IDEMPOTENCY_KEY_BYTES`].
    pub idempotency_key: Option<String>,
    /// A custom kind's priority: `"critical"` (the default) or `"low"` (skipped, and counted,
    /// for a connection that is behind, like `agent_thinking`). The agent events' priorities are
    /// fixed: naming another one is refused.
    pub priority: Option<String>,
    /// A connection id (its client's `connected.conn_id`) left out of the recipients: the
    /// sender's, which already shows what it sent. It names a connection of the node that takes
    /// the request; the answer's `excluded` says whether it named an open one.
    pub exclude: Option<String>,
}

impl PublishRequest {
    /// The envelope it describes, or what is wrong with it.
    pub fn envelope(self) -> Result<Envelope, &'static str> {
        let mut kind = EventKind::from_wire(&self.kind);
        if let Some(priority) = &self.priority {
            let priority = match priority.as_str() {
                "low" => Priority::Low,
                "critical" => Priority::Critical,
                _ => return Err("`priority` is \"low\" or \"critical\""),
            };
            match kind {
                EventKind::Custom(name) => kind = EventKind::custom_with_priority(name, priority),
                _ if kind.priority() != priority => {
                    return Err("the agent events' priorities are fixed");
                }
                _ => {}
            }
        }
        let target = match (self.everyone, self.tenant, self.user, self.room) {
            (true, None, None, None) if self.role.is_none() && self.thread.is_none() => {
                Target::Everyone
            }
            (true, ..) => return Err("`everyone` excludes every other target field"),
            (false, None, ..) => return Err("`tenant` is required"),
            (false, Some(_), Some(_), Some(_)) => return Err("give `user` or `room`, not both"),
            (false, Some(_), _, _) if self.role.is_some() && self.thread.is_some() => {
                return Err("`role` and `thread` do not go together");
            }
            (false, Some(tenant), Some(user), None) => {
                if self.role.is_some() {
                    return Err("`role` narrows a tenant broadcast, not a user");
                }
                match (self.thread, &self.run) {
                    (Some(thread), _) => Target::Thread {
                        tenant: tenant.into(),
                        user: user.into(),
                        thread: thread.into(),
                    },
                    // The run's watchers (and the user's connections not narrowed).
                    (None, Some(run)) => Target::Run {
                        tenant: tenant.into(),
                        user: user.into(),
                        run: run.as_str().into(),
                    },
                    (None, None) => Target::User { tenant: tenant.into(), user: user.into() },
                }
            }
            (false, Some(tenant), None, Some(room)) => {
                if self.role.is_some() || self.thread.is_some() {
                    return Err("`room` takes no `role` or `thread`");
                }
                Target::Room { tenant: tenant.into(), room: room.into() }
            }
            (false, Some(tenant), None, None) => {
                if self.thread.is_some() {
                    return Err("`thread` needs a `user`");
                }
                let audience = match self.role {
                    Some(role) => Audience::Role(role.into()),
                    None => Audience::All,
                };
                Target::Tenant { tenant: tenant.into(), audience }
            }
        };
        let mut env = Envelope::new(target, kind);
        if let Some(data) = self.data {
            // serde_json has checked the syntax; this checks the depth (the request's own object
            // is one level, so serde_json's limit already leaves `data` within the hub's), and
            // what a raw value lets through but no reader takes back: numbers beyond `f64`, `\u`
            // escapes of half a surrogate pair.
            let raw = RawData::new(Box::<str>::from(data)).map_err(|e| match e {
                RawDataError::TooDeep { .. } => "`data` nests too deeply",
                _ => "`data` is not valid JSON",
            })?;
            env = env.raw_data(raw);
        }
        if let Some(run) = self.run {
            env = env.run(run);
        }
        if let Some(key) = self.idempotency_key {
            if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_BYTES {
                return Err("`idempotency_key` must be 1 to 256 bytes");
            }
            env = env.idempotency_key(key);
        }
        Ok(env)
    }
}

mod publish;
pub use publish::MAX_BATCH;
