//! The Server-Sent Events transport's routes: `GET /sse` opens a hub connection whose frames
//! arrive as events (see [`crate::driver::SseSessions`] for the mapping), `POST /sse/{conn_id}`
//! sends it a client frame.
//!
//! - `GET /sse?token=…[&threads=t1,t2][&runs=r1,r2][&last_event_id=…]`: the token as for `/ws`
//!   (query or `Authorization: Bearer`). `Last-Event-ID` (the header the browser's `EventSource`
//!   sends when it reconnects, or the query parameter) holds the positions the last event
//!   carried: the hub gets the thread and run subscriptions, then `resume` with them, before
//!   anything is written, so the replay is exact. Without it the connection starts live at once
//!   (`ping`).
//! - `POST /sse/{conn_id}` with the same user's token and one client frame as the body
//!   (`message`, `subscribe`, `refresh`, …): 202 once handed to the hub; 404 for a connection
//!   that is not open or not this user's; 401 without a valid token; 413 over the transport's
//!   message limit. Answers (`reply`, `error`, `pong`) come on the event stream.

use std::collections::BTreeMap;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use crate::auth::{AuthError, Identity};
use crate::driver::decode_positions;
use crate::http::{AppState, bearer, error, refusal};

/// The query of `GET /sse`.
#[derive(Deserialize)]
pub struct SseQuery {
    token: Option<String>,
    /// Comma-separated thread ids to subscribe to before resuming.
    threads: Option<String>,
    /// Comma-separated agent run ids to subscribe to before resuming.
    runs: Option<String>,
    /// For clients that cannot set the `Last-Event-ID` header.
    last_event_id: Option<String>,
}

fn authenticate(
    app: &AppState,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Identity, AuthError> {
    let token = bearer(headers).or(query).filter(|t| !t.is_empty());
    token.ok_or(AuthError::Missing).and_then(|t| app.keys.verify(t))
}

/// The 401 for a refused token, counted like `/ws`'s.
fn unauthorized(app: &AppState, err: &AuthError) -> Response {
    app.counters.unauthorized(err);
    let mut res = error(StatusCode::UNAUTHORIZED, err.as_str(), err);
    res.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    res
}

/// `GET /sse`: authenticate, admit, then stream the connection's frames as events.
pub async fn open(
    State(app): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<SseQuery>,
) -> Response {
    if !app.origin_allowed(&headers) {
        app.counters.origin_refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return error(StatusCode::FORBIDDEN, "origin_not_allowed", "this origin may not connect");
    }
    let identity = match authenticate(&app, &headers, q.token.as_deref()) {
        Ok(identity) => identity,
        Err(err) => return unauthorized(&app, &err),
    };
    let last =
        headers.get("last-event-id").and_then(|v| v.to_str().ok()).or(q.last_event_id.as_deref());
    let positions = match last.filter(|l| !l.trim().is_empty()) {
        Some(id) => match decode_positions(id) {
            Some(p) => p,
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_last_event_id",
                    "not an event id of this server",
                );
            }
        },
        None => BTreeMap::new(),
    };
    let mut first: Vec<Bytes> = Vec::new();
    for thread in q.threads.as_deref().unwrap_or("").split(',').filter(|t| !t.is_empty()) {
        first.push(Bytes::from(json!({ "type": "subscribe", "thread_id": thread }).to_string()));
    }
    for run in q.runs.as_deref().unwrap_or("").split(',').filter(|r| !r.is_empty()) {
        first.push(Bytes::from(json!({ "type": "subscribe", "run_id": run }).to_string()));
    }
    first.push(Bytes::from(if positions.is_empty() {
        json!({ "type": "ping" }).to_string()
    } else {
        let p: serde_json::Map<String, serde_json::Value> = positions
            .iter()
            .map(|(k, (epoch, seq))| (k.clone(), json!({ "epoch": epoch, "seq": seq })))
            .collect();
        json!({ "type": "resume", "positions": p }).to_string()
    }));
    let owner = (identity.principal.tenant.to_string(), identity.principal.user.to_string());
    match app.handle.connect(identity.principal, identity.rooms).await {
        Ok(accepted) => {
            let body =
                app.handle.clone().serve_sse(accepted, owner, first, positions, &app.sse).await;
            let headers = [
                (header::CONTENT_TYPE, "text/event-stream"),
                (header::CACHE_CONTROL, "no-cache"),
                (header::HeaderName::from_static("x-accel-buffering"), "no"),
            ];
            (headers, Body::from_stream(body)).into_response()
        }
        Err(refused) => {
            app.counters.connect_refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            refusal(refused)
        }
    }
}

/// The query of `POST /sse/{conn_id}`.
#[derive(Deserialize)]
pub struct PostQuery {
    token: Option<String>,
}

/// `POST /sse/{conn_id}`: one client frame for an open SSE connection of the caller's user.
pub async fn post(
    State(app): State<AppState>,
    Path(conn_id): Path<String>,
    headers: HeaderMap,
    Query(q): Query<PostQuery>,
    body: Bytes,
) -> Response {
    let identity = match authenticate(&app, &headers, q.token.as_deref()) {
        Ok(identity) => identity,
        Err(err) => return unauthorized(&app, &err),
    };
    if body.len() > app.handle.max_message_bytes() {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            "the frame is over the transport's limit",
        );
    }
    let (tenant, user) = (identity.principal.tenant.as_str(), identity.principal.user.as_str());
    // Another user's connection is as unknown as a closed one.
    let Some(conn) = app.sse.get(&conn_id, tenant, user) else {
        return error(
            StatusCode::NOT_FOUND,
            "unknown_connection",
            "no open SSE connection of yours has that id",
        );
    };
    if conn.receive(body).await {
        StatusCode::ACCEPTED.into_response()
    } else {
        error(StatusCode::SERVICE_UNAVAILABLE, "stopping", "the server is shutting down")
    }
}
