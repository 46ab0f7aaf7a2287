//! The admin API (`/admin/…`, behind the admin key): a tenant's users, connections and rooms a
//! page at a time, one user with its connections' views, kicks, room membership at runtime,
//! presence and the hub's stats, as JSON. Each request runs on the hub task
//! ([`Handle::with_hub`](crate::driver::Handle::with_hub)).
//!
//! In cluster mode two requests are cluster-wide and the others node-local (they read or change
//! the node that takes them; a connection id names a connection of that node):
//! - a user's kick: the node closes its own connections of the user and signals the others on the
//!   user's stream;
//! - a scope's presence: read from the bus (every node's live set in the scope, through
//!   [`BusReader::presence`](crate::bus::BusReader::presence)), so any node answers it whether or
//!   not it holds a connection there; a user held by several nodes is one member. The bus down
//!   answers 503 with `Retry-After`, as `/publish` does.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use switchboard::{
    BreakerState, BusFailure, CloseReason, ConnView, Hub, PresenceHeld, PresenceScope,
    PresenceView, RoomError, RoomId, StreamKey, TenantId, UserId, UserPhase, UserView,
};

use crate::http::{AppState, RETRY_BUS_SECS, bearer, error};

/// The most items one page of a listing holds (`?limit=`, default [`DEFAULT_PAGE`]).
pub const MAX_PAGE: usize = 1_000;
/// Items in a page when `?limit=` is not given.
pub const DEFAULT_PAGE: usize = 100;
/// The most members a presence answer lists (`?limit=`, default [`DEFAULT_PRESENCE`]); in
/// cluster mode, the most entries (a user held by a node) read from the bus.
pub const MAX_PRESENCE: u32 = 10_000;
/// Members a presence answer lists when `?limit=` is not given.
pub const DEFAULT_PRESENCE: u32 = 1_000;

/// The admin routes, to merge into the server's router.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin/stats", get(stats))
        .route("/admin/tenants/{tenant}/users", get(users))
        .route("/admin/tenants/{tenant}/users/{user}", get(user))
        .route("/admin/tenants/{tenant}/users/{user}/kick", post(kick_user))
        .route("/admin/tenants/{tenant}/connections", get(connections))
        .route("/admin/tenants/{tenant}/rooms", get(rooms))
        .route("/admin/tenants/{tenant}/presence", get(presence))
        .route("/admin/connections/{conn}/kick", post(kick_connection))
        .route("/admin/connections/{conn}/rooms/{room}", post(join).delete(leave))
}

/// `?after=&limit=`: a page of a listing.
#[derive(Debug, Deserialize)]
struct PageQuery {
    after: Option<String>,
    limit: Option<usize>,
}

impl PageQuery {
    /// The page size, or `None` when `limit` is out of bounds (answered by [`bad_limit`]).
    fn limit(&self) -> Option<usize> {
        match self.limit {
            None => Some(DEFAULT_PAGE),
            Some(n) if (1..=MAX_PAGE).contains(&n) => Some(n),
            Some(_) => None,
        }
    }
}

fn bad_limit() -> Response {
    bad_request(format!("`limit` is 1 to {MAX_PAGE}"))
}

fn bad_request(why: String) -> Response {
    error(StatusCode::BAD_REQUEST, "bad_request", why)
}

fn not_found(what: &str) -> Response {
    error(StatusCode::NOT_FOUND, "not_found", format!("no such {what} on this node"))
}

fn stopping() -> Response {
    error(StatusCode::SERVICE_UNAVAILABLE, "stopping", "the server is shutting down")
}

/// Whether the request carries the admin key (a refusal is counted).
fn authorized(app: &AppState, headers: &HeaderMap) -> bool {
    let ok = bearer(headers).is_some_and(|k| app.admin_key.matches(k));
    if !ok {
        app.counters.admin_unauthorized.fetch_add(1, Ordering::Relaxed);
    }
    ok
}

fn unauthorized() -> Response {
    let mut res = error(StatusCode::UNAUTHORIZED, "unauthorized", "admin key required");
    res.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    res
}

/// Authorizes, then runs `f` on the hub task and answers what it returns.
async fn on_hub(
    app: &AppState,
    headers: &HeaderMap,
    f: impl FnOnce(&mut Hub, Instant) -> Response + Send + 'static,
) -> Response {
    if !authorized(app, headers) {
        return unauthorized();
    }
    app.handle.with_hub(f).await.unwrap_or_else(stopping)
}

/// A page of a listing: `f` gets the cursor and the page size and returns the items, or `None`
/// for a cursor it cannot read.
async fn listing(
    app: &AppState,
    headers: &HeaderMap,
    q: PageQuery,
    cursor: &'static str,
    f: impl FnOnce(&mut Hub, Instant, Option<&str>, usize) -> Option<Vec<Value>> + Send + 'static,
) -> Response {
    on_hub(app, headers, move |hub, now| {
        let Some(limit) = q.limit() else { return bad_limit() };
        match f(hub, now, q.after.as_deref(), limit) {
            Some(items) => page(items, limit, cursor),
            None => bad_request(format!("`after` is not a `{cursor}`")),
        }
    })
    .await
}

/// Runs `f` on one connection of this node, named by its `conn_id` (404 if none is open).
async fn on_conn(
    app: &AppState,
    headers: &HeaderMap,
    conn: String,
    f: impl FnOnce(&mut Hub, Instant, switchboard::ConnId) -> Response + Send + 'static,
) -> Response {
    on_hub(app, headers, move |hub, now| match hub.find_connection(&conn) {
        Some(id) => f(hub, now, id),
        None => not_found("connection"),
    })
    .await
}

/// Milliseconds from `then` to `now` (0 if `then` is later).
fn ms_since(now: Instant, then: Instant) -> u64 {
    u64::try_from(now.saturating_duration_since(then).as_millis()).unwrap_or(u64::MAX)
}

fn conn_json(now: Instant, c: &ConnView<'_>) -> Value {
    json!({
        "conn_id": c.id().to_string(),
        "tenant": c.tenant().as_str(),
        "user": c.user().as_str(),
        "tier": c.tier().as_str(),
        "roles": c.roles().iter().map(|r| r.as_str()).collect::<Vec<_>>(),
        "opened_ms_ago": ms_since(now, c.opened_at()),
        "last_seen_ms_ago": ms_since(now, c.last_seen()),
        "session_expires_in_ms": c.expires_at().map(|at| ms_since(at, now)),
        "threads": c.threads().map(|t| t.iter().map(|t| t.as_str()).collect::<Vec<_>>()),
        "runs": c.runs().map(|r| r.iter().map(|r| r.as_str()).collect::<Vec<_>>()),
        "rooms": c.rooms().map(RoomId::as_str).collect::<Vec<_>>(),
        "unwritten_bytes": c.unwritten_bytes(),
        "held": c.held(),
    })
}

fn user_json(u: &UserView<'_>, now: Instant) -> Value {
    let pos = u.stream_position();
    let (messages, bytes) = u.buffered();
    json!({
        "user": u.user().as_str(),
        "phase": match u.phase() {
            UserPhase::Active => "active",
            _ => "detached",
        },
        "connections": u.connection_count(),
        "age_ms": ms_since(now, u.created_at()),
        "last_activity_ms_ago": ms_since(now, u.last_activity()),
        "stream": {"epoch": pos.epoch, "seq": pos.seq},
        "buffered": {"messages": messages, "bytes": bytes},
        "breaker": match u.breaker() {
            BreakerState::Closed => "closed",
            BreakerState::Open { .. } => "open",
            _ => "half_open",
        },
    })
}

/// `{"items": [...], "next": <the last item's cursor when the page is full, else null>}`.
fn page(items: Vec<Value>, limit: usize, cursor: &str) -> Response {
    let next = (items.len() == limit).then(|| items.last().map(|i| i[cursor].clone())).flatten();
    Json(json!({ "items": items, "next": next })).into_response()
}

/// `GET /admin/stats`: the hub's main counters and gauges.
async fn stats(State(app): State<AppState>, headers: HeaderMap) -> Response {
    on_hub(&app, &headers, |hub, _| {
        let s = hub.stats();
        Json(json!({
            "connections_active": s.connections_active,
            "connections_opened": s.connections_opened,
            "connections_closed": s.connections_closed,
            "users_active": s.users_active,
            "users_detached": s.users_detached,
            "tenants": s.tenants,
            "rooms": s.rooms,
            "rooms_idle": s.rooms_idle,
            "publishes": s.publishes,
            "undeliverable": s.undeliverable,
            "deliveries": s.deliveries,
            "bytes_delivered": s.bytes_delivered,
            "inbound_messages": s.inbound_messages,
            "protocol_errors": s.protocol_errors,
            "thinking_skipped": s.thinking_skipped,
            "replayed": s.replayed,
            "resumes_recovered": s.resumes_recovered,
            "resumes_unrecovered": s.resumes_unrecovered,
            "history_requests": s.history_requests,
            "buffered_messages": s.buffered_messages,
            "buffered_bytes": s.buffered_bytes,
            "security_violations": s.security_violations,
            "audit_events": s.audit_events,
            "kicked": s.closed_by.get(switchboard::ClosedBy::Hub(CloseReason::Kicked)),
        }))
        .into_response()
    })
    .await
}

/// `GET /admin/tenants/{tenant}/users?after=&limit=`.
async fn users(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    Query(q): Query<PageQuery>,
) -> Response {
    listing(&app, &headers, q, "user", move |hub, now, after, limit| {
        let items = hub.tenant_users(&TenantId::from(tenant), after, limit);
        Some(items.iter().map(|u| user_json(u, now)).collect())
    })
    .await
}

/// `GET /admin/tenants/{tenant}/users/{user}`: the user and its connections' views.
async fn user(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path((tenant, user)): Path<(String, String)>,
) -> Response {
    on_hub(&app, &headers, move |hub, now| {
        let Some(u) = hub.user(&tenant, &user) else { return not_found("user") };
        let mut body = user_json(&u, now);
        let conns: Vec<Value> = u
            .connections()
            .filter_map(|id| hub.connection(id))
            .map(|c| conn_json(now, &c))
            .collect();
        body["connection_views"] = Value::Array(conns);
        Json(body).into_response()
    })
    .await
}

/// `POST /admin/tenants/{tenant}/users/{user}/kick`: closes the user's connections (`kicked`,
/// 4005) on this node and, in cluster mode, on every other.
async fn kick_user(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path((tenant, user)): Path<(String, String)>,
) -> Response {
    on_hub(&app, &headers, move |hub, now| {
        let closed = hub.kick_user(now, &TenantId::from(tenant), &UserId::from(user));
        Json(json!({ "closed_here": closed })).into_response()
    })
    .await
}

/// `GET /admin/tenants/{tenant}/connections?after=&limit=` (`after`: a `conn_id`).
async fn connections(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    Query(q): Query<PageQuery>,
) -> Response {
    listing(&app, &headers, q, "conn_id", move |hub, now, after, limit| {
        let conns = hub.tenant_connections(&TenantId::from(tenant), after, limit)?;
        Some(conns.iter().map(|c| conn_json(now, c)).collect())
    })
    .await
}

/// `GET /admin/tenants/{tenant}/rooms?after=&limit=`.
async fn rooms(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    Query(q): Query<PageQuery>,
) -> Response {
    listing(&app, &headers, q, "room", move |hub, _, after, limit| {
        let rooms = hub.tenant_rooms(&TenantId::from(tenant), after, limit);
        let room = |r: &switchboard::RoomInfo| {
            json!({
                "room": r.room.as_str(),
                "members": r.members,
                "stream": {"epoch": r.position.epoch, "seq": r.position.seq},
                "idle": r.idle,
            })
        };
        Some(rooms.iter().map(room).collect())
    })
    .await
}

/// `?room=&limit=` of a presence request.
#[derive(Debug, Deserialize)]
struct PresenceQuery {
    room: Option<String>,
    limit: Option<u32>,
}

/// Presence metadata is JSON text; anything else reads as none.
fn meta_json(meta: Option<&str>) -> Option<Value> {
    meta.and_then(|t| serde_json::from_str::<Value>(t).ok())
}

/// `GET /admin/tenants/{tenant}/presence[?room=][&limit=]`: who is present in the tenant or one
/// room. `{scope, count, too_large, cluster, truncated, members}`; on a single node `members` are
/// `{user, conns, meta}` (this node's view), in cluster mode `{user, nodes, meta}` read from the
/// bus, plus `nodes` (the nodes holding anyone in the scope). At most `limit` members (in cluster
/// mode, entries read): `truncated` says some were left out.
async fn presence(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    Query(q): Query<PresenceQuery>,
) -> Response {
    if !authorized(&app, &headers) {
        return unauthorized();
    }
    let limit = match q.limit {
        None => DEFAULT_PRESENCE,
        Some(n) if (1..=MAX_PRESENCE).contains(&n) => n,
        Some(_) => return bad_request(format!("`limit` is 1 to {MAX_PRESENCE}")),
    };
    let tenant = TenantId::from(tenant);
    let scope = match q.room {
        Some(room) => PresenceScope::Room(RoomId::from(room)),
        None => PresenceScope::Tenant,
    };
    // The hub says whether presence is on for the scope (and holds the single node's answer).
    let (t, s) = (tenant.clone(), scope.clone());
    let local = app.handle.with_hub(move |hub, _| {
        let max_members = hub.config().presence.as_ref().map_or(u32::MAX, |p| p.max_members);
        hub.presence(&t, &s).map(|view| (view, max_members))
    });
    let Some(local) = local.await else { return stopping() };
    let Some((view, max_members)) = local else {
        return error(StatusCode::NOT_FOUND, "no_presence", "presence is off for that scope");
    };
    match &app.bus {
        None => node_presence(&scope, &view, limit),
        Some(bus) => {
            let stream = match &scope {
                PresenceScope::Room(room) => StreamKey::room(tenant, room.clone()),
                PresenceScope::Tenant => StreamKey::tenant(tenant),
            };
            match bus.presence(stream, limit).await {
                Ok((held, truncated)) => {
                    let local_large = view.too_large;
                    cluster_presence(&scope, &held, truncated, local_large, max_members)
                }
                Err(failure) => bus_failed(&failure),
            }
        }
    }
}

/// A single node's presence answer: the hub's view.
fn node_presence(scope: &PresenceScope, view: &PresenceView, limit: u32) -> Response {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let members: Vec<Value> = view
        .users
        .iter()
        .take(limit)
        .map(|m| {
            let meta = meta_json(m.meta.as_deref());
            json!({ "user": m.user.as_str(), "conns": m.conns, "meta": meta })
        })
        .collect();
    Json(json!({
        "scope": scope.wire_name(),
        "count": view.count,
        "too_large": view.too_large,
        "cluster": false,
        "truncated": view.users.len() > limit,
        "members": members,
    }))
    .into_response()
}

/// A user's share of the cluster's presence: the nodes holding it, and its metadata (the first
/// node's that has any).
#[derive(Default)]
struct Member {
    nodes: u32,
    meta: Option<Arc<str>>,
}

/// Every node's set in the scope merged into one member list, sorted by user.
fn merge(held: &[PresenceHeld]) -> BTreeMap<&UserId, Member> {
    let mut members: BTreeMap<&UserId, Member> = BTreeMap::new();
    for set in held {
        for (user, meta) in &set.users {
            let m = members.entry(user).or_default();
            m.nodes += 1;
            if m.meta.is_none() {
                m.meta.clone_from(meta);
            }
        }
    }
    members
}

/// A cluster's presence answer: the bus's sets, merged. Too large when this node's view says so
/// or the members outnumber `max_members`.
fn cluster_presence(
    scope: &PresenceScope,
    held: &[PresenceHeld],
    truncated: bool,
    local_large: bool,
    max_members: u32,
) -> Response {
    let members = merge(held);
    let count = u32::try_from(members.len()).unwrap_or(u32::MAX);
    let members: Vec<Value> = members
        .iter()
        .map(|(user, m)| {
            json!({ "user": user.as_str(), "nodes": m.nodes, "meta": meta_json(m.meta.as_deref()) })
        })
        .collect();
    Json(json!({
        "scope": scope.wire_name(),
        "count": count,
        "too_large": local_large || count > max_members,
        "cluster": true,
        // A node's set exists while it holds someone (a truncated read lists it all the same).
        "nodes": held.len(),
        "truncated": truncated,
        "members": members,
    }))
    .into_response()
}

/// The bus did not answer: 503 with `Retry-After` when trying again may work, else 502.
fn bus_failed(failure: &BusFailure) -> Response {
    if !failure.is_retryable() {
        return error(StatusCode::BAD_GATEWAY, "unavailable", failure);
    }
    let mut res = error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", failure);
    res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(RETRY_BUS_SECS));
    res
}

/// `POST /admin/connections/{conn}/kick`: closes one connection of this node (`kicked`, 4005).
async fn kick_connection(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(conn): Path<String>,
) -> Response {
    on_conn(&app, &headers, conn, |hub, now, id| match hub.close(now, id, CloseReason::Kicked) {
        Ok(()) => Json(json!({ "closed": true })).into_response(),
        Err(_) => not_found("connection"),
    })
    .await
}

/// `POST /admin/connections/{conn}/rooms/{room}`: puts a connection of this node into a room.
async fn join(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path((conn, room)): Path<(String, String)>,
) -> Response {
    on_conn(&app, &headers, conn, move |hub, now, id| match hub.join(now, id, RoomId::from(room)) {
        Ok(joined) => Json(json!({ "joined": joined })).into_response(),
        Err(e @ RoomError::TooManyRooms { .. }) => error(StatusCode::CONFLICT, "too_many_rooms", e),
        Err(e) => bad_request(e.to_string()),
    })
    .await
}

/// `DELETE /admin/connections/{conn}/rooms/{room}`: takes a connection of this node out of a room.
async fn leave(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path((conn, room)): Path<(String, String)>,
) -> Response {
    on_conn(&app, &headers, conn, move |hub, now, id| {
        match hub.leave(now, id, RoomId::from(room)) {
            Ok(left) => Json(json!({ "left": left })).into_response(),
            Err(e) => bad_request(e.to_string()),
        }
    })
    .await
}
