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
        .route("/publish", post(publish).layer(body_limit))
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
            // is one level, so serde_json's limit already leaves `data` within the hub's).
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

/// `POST /publish`: any backend publishes an event to a user, a thread, a room or a tenant.
///
/// The admin key is checked before the body is read, so that a caller without it cannot make
/// the server buffer anything; the body is then read within the route's [`PublishBody`] bounds.
async fn publish(State(app): State<AppState>, request: Request) -> Response {
    let c = &app.counters;
    if !bearer(request.headers()).is_some_and(|key| app.admin_key.matches(key)) {
        c.publish_unauthorized.fetch_add(1, Ordering::Relaxed);
        let mut res = error(StatusCode::UNAUTHORIZED, "unauthorized", "admin key required");
        res.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return res;
    }
    let rejected = |status, code, message: String| {
        c.publish_rejected.fetch_add(1, Ordering::Relaxed);
        error(status, code, message)
    };
    let bounds = app.publish_body;
    let too_large = || {
        c.publish_too_large.fetch_add(1, Ordering::Relaxed);
        let why = format!("the body is over {} bytes", bounds.max_bytes);
        let mut res = error(StatusCode::PAYLOAD_TOO_LARGE, "too_large", why);
        // The rest of the body is not read: the connection cannot carry another request.
        res.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        res
    };
    // A body announced as too large is refused before any of it is read.
    let announced = request.headers().get(header::CONTENT_LENGTH);
    let announced = announced.and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if announced.is_some_and(|n| n > bounds.max_bytes as u64) {
        return too_large();
    }
    // `Bytes` honours the route's `DefaultBodyLimit`: 413 over it, without reading further.
    let body = match tokio::time::timeout(bounds.timeout, Bytes::from_request(request, &())).await {
        Ok(Ok(body)) => body,
        Ok(Err(rejection)) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return too_large();
        }
        Ok(Err(rejection)) => {
            return rejected(rejection.status(), "bad_body", rejection.body_text());
        }
        Err(_) => {
            c.publish_body_timeouts.fetch_add(1, Ordering::Relaxed);
            let why = format!("the body did not arrive within {} ms", bounds.timeout.as_millis());
            let mut res = error(StatusCode::REQUEST_TIMEOUT, "body_timeout", why);
            res.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            return res;
        }
    };
    // A JSON array is a batch: each envelope published in order, each with its own answer.
    let batch = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
    if batch {
        // Each entry kept as text and parsed on its own, so that one bad entry is refused alone.
        let requests: Vec<&RawValue> = match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => return rejected(StatusCode::BAD_REQUEST, "bad_request", e.to_string()),
        };
        if requests.is_empty() || requests.len() > MAX_BATCH {
            let why = format!("a batch holds 1 to {MAX_BATCH} envelopes");
            return rejected(StatusCode::BAD_REQUEST, "bad_batch", why);
        }
        // Parsed one by one (a bad entry is refused alone), then published as one command: the
        // hub takes them in this order in one turn, so what they queue for one connection goes
        // out in one write, and in cluster mode their appends share pipelines.
        let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(requests.len());
        let mut prepared = Vec::with_capacity(requests.len());
        for request in requests {
            let parsed = serde_json::from_str::<PublishRequest>(request.get())
                .map_err(|e| {
                    Outcome::refused(StatusCode::BAD_REQUEST, "bad_request", e.to_string())
                })
                .and_then(prepare);
            match parsed {
                Ok(entry) => {
                    prepared.push(entry);
                    outcomes.push(None);
                }
                Err(refused) => outcomes.push(Some(refused)),
            }
        }
        let excluded = resolve_excludes(&app, &mut prepared).await;
        let envelopes = prepared.into_iter().map(|(envelope, _)| envelope).collect();
        let mut results = app.handle.publish_batch(envelopes).await.into_iter().zip(excluded);
        let outcomes: Vec<Outcome> = outcomes
            .into_iter()
            .map(|slot| {
                slot.unwrap_or_else(|| {
                    let (result, excluded) = results.next().expect("one answer per envelope");
                    outcome(result, excluded)
                })
            })
            .collect();
        // The answer is written straight out: no tree of `Value`s per envelope.
        let mut out = Vec::with_capacity(16 + outcomes.len() * 96);
        out.extend_from_slice(b"{\"results\":[");
        for (i, outcome) in outcomes.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            outcome.count(c);
            outcome.write_json(&mut out, true);
        }
        out.extend_from_slice(b"]}");
        return json_response(StatusCode::OK, out);
    }
    let request: PublishRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return rejected(StatusCode::BAD_REQUEST, "bad_request", e.to_string()),
    };
    let outcome = publish_one(&app, request).await;
    outcome.count(c);
    outcome.into_response()
}

/// A response with `body`, JSON text, as it is.
fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    (status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body)
        .into_response()
}

/// The most envelopes one `POST /publish` batch may hold.
pub const MAX_BATCH: usize = 100;

/// What became of one envelope of `POST /publish`: the status and body its answer carries (alone,
/// or as one entry of a batch's `results`).
struct Outcome {
    status: StatusCode,
    answer: Answer,
    /// Seconds for `Retry-After` (the bus was down).
    retry_after: Option<u64>,
    /// Which `switchboard_http_publish_requests_total` outcome it counts as.
    counted: PublishCount,
}

/// The body of one envelope's answer, written as JSON by [`Outcome::write_json`] (keys in
/// alphabetical order, as a `serde_json::Value` object would have them).
enum Answer {
    /// Accepted: where it went, and (on a single node) to whom.
    Published {
        /// The stream and position it took, if it was logged.
        position: Option<(String, StreamPos)>,
        /// Whether its idempotency key had been seen.
        duplicate: bool,
        /// Single node: delivered, skipped, closed, held. Clustered: `None` (delivery happens
        /// on every node when the message comes back over the bus, so this node cannot count it).
        counts: Option<[usize; 4]>,
        /// Whether `exclude` named an open connection (`None`: no `exclude` given).
        excluded: Option<bool>,
    },
    /// Refused or failed.
    Error { code: &'static str, message: String },
}

#[derive(Clone, Copy)]
enum PublishCount {
    Accepted,
    Rejected,
    Unavailable,
}

impl Outcome {
    fn refused(status: StatusCode, code: &'static str, message: String) -> Self {
        Outcome {
            status,
            answer: Answer::Error { code, message },
            retry_after: None,
            counted: PublishCount::Rejected,
        }
    }

    fn count(&self, c: &HttpCounters) {
        let counter = match self.counted {
            PublishCount::Accepted => &c.publish_accepted,
            PublishCount::Rejected => &c.publish_rejected,
            PublishCount::Unavailable => &c.publish_unavailable,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Appends the answer's JSON object to `out`, with the `status` field a batch's entries
    /// carry when `with_status`.
    fn write_json(&self, out: &mut Vec<u8>, with_status: bool) {
        use std::io::Write as _;
        // Writing into a `Vec` cannot fail.
        let status = self.status.as_u16();
        match &self.answer {
            Answer::Published { position, duplicate, counts, excluded } => {
                out.push(b'{');
                if let Some([delivered, _, closed, _]) = counts {
                    let _ = write!(out, "\"closed\":{closed},\"delivered\":{delivered},");
                }
                let _ = write!(out, "\"duplicate\":{duplicate},");
                write_opt(out, "epoch", position.as_ref().map(|p| p.1.epoch));
                if let Some(excluded) = excluded {
                    let _ = write!(out, ",\"excluded\":{excluded}");
                }
                if let Some([_, _, _, held]) = counts {
                    let _ = write!(out, ",\"held\":{held}");
                }
                out.push(b',');
                write_opt(out, "seq", position.as_ref().map(|p| p.1.seq));
                if let Some([_, skipped, _, _]) = counts {
                    let _ = write!(out, ",\"skipped\":{skipped}");
                }
                if with_status {
                    let _ = write!(out, ",\"status\":{status}");
                }
                out.extend_from_slice(b",\"stream\":");
                match position {
                    Some((name, _)) => write_string(out, name),
                    None => out.extend_from_slice(b"null"),
                }
                out.push(b'}');
            }
            Answer::Error { code, message } => {
                out.extend_from_slice(b"{\"error\":");
                write_string(out, code);
                out.extend_from_slice(b",\"message\":");
                write_string(out, message);
                if with_status {
                    let _ = write!(out, ",\"status\":{status}");
                }
                out.push(b'}');
            }
        }
    }

    fn into_response(self) -> Response {
        let mut body = Vec::with_capacity(160);
        self.write_json(&mut body, false);
        let mut res = json_response(self.status, body);
        if let Some(secs) = self.retry_after {
            res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        res
    }
}

/// Writes `"key":n`, or `"key":null`.
fn write_opt(out: &mut Vec<u8>, key: &str, n: Option<u64>) {
    use std::io::Write as _;
    let _ = match n {
        Some(n) => write!(out, "\"{key}\":{n}"),
        None => write!(out, "\"{key}\":null"),
    };
}

/// Writes `text` as a JSON string (serializing a `str` into a `Vec` cannot fail).
fn write_string(out: &mut Vec<u8>, text: &str) {
    let _ = serde_json::to_writer(&mut *out, text);
}

/// One envelope of `POST /publish` ready for the hub, with the connection its `exclude` names
/// (as the client knows it), or the answer refusing it.
fn prepare(mut request: PublishRequest) -> Result<(Envelope, Option<String>), Outcome> {
    let exclude = request.exclude.take();
    match request.envelope() {
        Ok(envelope) => Ok((envelope, exclude)),
        Err(why) => Err(Outcome::refused(StatusCode::BAD_REQUEST, "bad_target", why.into())),
    }
}

/// Resolves the `exclude` of each prepared envelope on the hub (one call for all of them): only
/// an id of an open connection excludes anyone. Returns, per envelope, whether it named one
/// (`None`: no `exclude` given).
async fn resolve_excludes(
    app: &AppState,
    prepared: &mut [(Envelope, Option<String>)],
) -> Vec<Option<bool>> {
    let wires: Vec<Option<String>> = prepared.iter_mut().map(|(_, wire)| wire.take()).collect();
    if wires.iter().all(Option::is_none) {
        return vec![None; prepared.len()];
    }
    let asked: Vec<bool> = wires.iter().map(Option::is_some).collect();
    let found = app
        .handle
        .with_hub(move |hub, _| {
            wires.iter().map(|w| w.as_deref().and_then(|w| hub.find_connection(w))).collect()
        })
        .await
        .unwrap_or_else(|| vec![None; prepared.len()]);
    prepared
        .iter_mut()
        .zip(found)
        .zip(asked)
        .map(|(((envelope, _), conn), asked)| {
            envelope.exclude = conn;
            asked.then_some(conn.is_some())
        })
        .collect()
}

/// Publishes one envelope of `POST /publish`.
async fn publish_one(app: &AppState, request: PublishRequest) -> Outcome {
    let mut prepared = match prepare(request) {
        Ok(entry) => [entry],
        Err(refused) => return refused,
    };
    let excluded = resolve_excludes(app, &mut prepared).await.pop().flatten();
    let [(envelope, _)] = prepared;
    outcome(app.handle.publish_receipt(envelope).await, excluded)
}

/// The answer to one envelope from what the hub (or the bus) made of it.
fn outcome(result: Result<Receipt, PublishFailed>, excluded: Option<bool>) -> Outcome {
    match result {
        Ok(Receipt { published, duplicate }) => {
            let position = published.position.as_ref().map(|(name, pos)| (name.to_string(), *pos));
            let counts = published.op.is_none().then_some([
                published.delivered,
                published.skipped,
                published.closed,
                published.held,
            ]);
            Outcome {
                status: StatusCode::OK,
                answer: Answer::Published { position, duplicate, counts, excluded },
                retry_after: None,
                counted: PublishCount::Accepted,
            }
        }
        Err(failed @ (PublishFailed::Bus(_) | PublishFailed::Hub(PublishError::Bus(_)))) => {
            let retry = failed.is_retryable();
            let why = match &failed {
                PublishFailed::Bus(f) | PublishFailed::Hub(PublishError::Bus(f)) => f.to_string(),
                _ => "the bus failed".to_owned(),
            };
            let status =
                if retry { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::BAD_GATEWAY };
            Outcome {
                status,
                answer: Answer::Error { code: "unavailable", message: why },
                retry_after: retry.then_some(RETRY_BUS_SECS),
                counted: PublishCount::Unavailable,
            }
        }
        Err(PublishFailed::Hub(err)) => {
            let status = match err {
                PublishError::GlobalBroadcastDisabled => StatusCode::FORBIDDEN,
                // It could never be delivered: no connection may hold a frame this large.
                PublishError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                _ => StatusCode::BAD_REQUEST,
            };
            Outcome::refused(status, "refused", err.to_string())
        }
        Err(PublishFailed::Stopped) => Outcome::refused(
            StatusCode::SERVICE_UNAVAILABLE,
            "stopping",
            "the server is shutting down".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(outcome: &Outcome, with_status: bool) -> String {
        let mut out = Vec::new();
        outcome.write_json(&mut out, with_status);
        String::from_utf8(out).expect("JSON is UTF-8")
    }

    #[test]
    fn answers_are_written_as_serde_json_would_write_them() {
        let pos = StreamPos { epoch: u64::MAX, seq: 7 };
        let published = |counts, excluded| Outcome {
            status: StatusCode::OK,
            answer: Answer::Published {
                position: Some(("u/a\"c".into(), pos)),
                duplicate: true,
                counts,
                excluded,
            },
            retry_after: None,
            counted: PublishCount::Accepted,
        };
        let solo = json!({"closed": 3, "delivered": 1, "duplicate": true, "epoch": u64::MAX, "excluded": false, "held": 4, "seq": 7, "skipped": 2, "status": 200, "stream": "u/a\"c"});
        assert_eq!(written(&published(Some([1, 2, 3, 4]), Some(false)), true), solo.to_string());
        let clustered = json!({"duplicate": true, "epoch": u64::MAX, "seq": 7, "stream": "u/a\"c"});
        assert_eq!(written(&published(None, None), false), clustered.to_string());
        let error =
            Outcome::refused(StatusCode::BAD_REQUEST, "bad_request", "a \"quote\"\n".into());
        let expected = json!({"error": "bad_request", "message": "a \"quote\"\n", "status": 400});
        assert_eq!(written(&error, true), expected.to_string());
    }
}
