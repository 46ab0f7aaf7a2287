//! Frames and actions as text, as the protocol documents them.

use super::*;

pub(super) fn js(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

/// The `connected` frame: the id, `(tenant, user)`, the heartbeat, the session's remaining time,
/// and the `(epoch, seq)` of the user and tenant streams.
pub(super) fn f_connected(
    id: ConnId,
    (t, u): (usize, usize),
    hb: Ms,
    expires_in: Option<Ms>,
    user: (u64, u64),
    tenant: (u64, u64),
) -> String {
    let exp = expires_in.map_or("null".to_owned(), |e| e.to_string());
    format!(
        r#"{{"type":"connected","conn_id":"{id}","tenant":{},"user":{},"heartbeat_ms":{hb},"session_expires_in_ms":{exp},"streams":{{"u":{{"epoch":{},"seq":{}}},"t":{{"epoch":{},"seq":{}}}}}}}"#,
        js(&tenant_name(t)),
        js(&user_name(u)),
        user.0,
        user.1,
        tenant.0,
        tenant.1
    )
}
pub(super) fn f_pong() -> String {
    r#"{"type":"pong"}"#.to_owned()
}
/// An `error` frame, with the refused frame's `id` when it had a valid one.
pub(super) fn f_error(e: &PeerError, id: Option<&str>) -> String {
    let id = id.map_or(String::new(), |id| format!(r#","id":{}"#, js(id)));
    format!(r#"{{"type":"error","code":{},"message":{}{id}}}"#, js(e.code()), js(&e.to_string()))
}
pub(super) fn f_refresh(expires_in: Ms) -> String {
    format!(r#"{{"type":"refresh_required","expires_in_ms":{expires_in}}}"#)
}
pub(super) fn f_skipped(count: u32) -> String {
    format!(r#"{{"type":"skipped","count":{count}}}"#)
}
/// The length of the `skipped` notice the next frame carries (none after no skips).
pub(super) fn notice_len(skipped: u32) -> u64 {
    if skipped == 0 { 0 } else { f_skipped(skipped).len() as u64 }
}
pub(super) fn f_joined(room: usize, (epoch, seq): (u64, u64)) -> String {
    let stream = js(&format!("r:{}", room_name(room)));
    format!(r#"{{"type":"joined","stream":{stream},"epoch":{epoch},"seq":{seq}}}"#)
}
pub(super) fn f_left(room: usize) -> String {
    format!(r#"{{"type":"left","stream":{}}}"#, js(&format!("r:{}", room_name(room))))
}
/// An event frame; the payload is the one every publish carries, `n` its number.
pub(super) fn f_event(
    kind: &str,
    stream: &str,
    (epoch, seq): (u64, u64),
    thread: Option<usize>,
    n: u64,
) -> String {
    let thread =
        thread.map_or(String::new(), |t| format!(r#","thread_id":{}"#, js(&thread_name(t))));
    format!(
        r#"{{"type":{},"stream":{},"epoch":{epoch},"seq":{seq}{thread},"data":{{"api_key":"[redacted]","n":{n}}}}}"#,
        js(kind),
        js(stream)
    )
}

/// What `resume` found for one stream.
#[derive(Clone, Debug)]
pub(super) struct Report {
    pub(super) recovered: bool,
    pub(super) reason: Option<&'static str>,
    pub(super) epoch: u64,
    pub(super) seq: u64,
    pub(super) available_from: u64,
    pub(super) replayed: u32,
}

pub(super) fn f_resumed(recovered: bool, reports: &[(String, Report)]) -> String {
    let streams: Vec<String> = reports
        .iter()
        .map(|(name, r)| {
            let reason = r.reason.map_or(String::new(), |w| format!(r#","reason":{}"#, js(w)));
            format!(
                r#"{}:{{"recovered":{}{reason},"epoch":{},"seq":{},"available_from":{},"replayed":{}}}"#,
                js(name),
                r.recovered,
                r.epoch,
                r.seq,
                r.available_from,
                r.replayed
            )
        })
        .collect();
    format!(r#"{{"type":"resumed","recovered":{recovered},"streams":{{{}}}}}"#, streams.join(","))
}

/// Issue 10 item 3: the longest `resumed` frame a resume naming `names` could get (every report
/// at its longest reason and largest numbers); a replay leaves room for it.
pub(super) fn f_resumed_max<'a>(names: impl Iterator<Item = &'a String>) -> u64 {
    let worst = Report {
        recovered: false,
        reason: Some("unknown_stream"),
        epoch: u64::MAX,
        seq: u64::MAX,
        available_from: u64::MAX,
        replayed: u32::MAX,
    };
    let reports: Vec<(String, Report)> = names.map(|n| (n.clone(), worst.clone())).collect();
    f_resumed(false, &reports).len() as u64
}

// ---------------------------------------------------------------------------------------------
// Normalized outputs: the model predicts these strings, the hub's actions are mapped onto them.

pub(super) fn o_deliver(c: ConnId, frame: &str) -> String {
    format!("deliver {c} {frame}")
}
pub(super) fn o_ping(c: ConnId) -> String {
    format!("ping {c}")
}
pub(super) fn o_close(c: ConnId, r: CloseReason) -> String {
    format!("close {c} {r:?}")
}
pub(super) fn o_inbound(c: ConnId, t: &str, u: &str, thread: Option<&str>, data: &Value) -> String {
    format!("inbound {c} {t}/{u} thread={thread:?} data={data}")
}
pub(super) fn o_audit(
    kind: AuditKind,
    c: Option<ConnId>,
    t: Option<&str>,
    u: Option<&str>,
) -> String {
    format!("audit {kind:?} {c:?} {t:?} {u:?}")
}
pub(super) fn o_opened(c: ConnId, t: &str, u: &str, tier: Tier) -> String {
    format!("metric opened {c} {t}/{u} {tier:?}")
}
pub(super) fn o_closed(c: ConnId, t: &str, u: &str, lifetime: Ms, by: ClosedBy) -> String {
    format!("metric closed {c} {t}/{u} {lifetime}ms {by:?}")
}
pub(super) fn o_user_created(t: &str, u: &str) -> String {
    format!("metric user_created {t}/{u}")
}
pub(super) fn o_user_retired(t: &str, u: &str) -> String {
    format!("metric user_retired {t}/{u}")
}
pub(super) fn o_limit(limit: LimitKind) -> String {
    format!("metric limit {limit:?}")
}
pub(super) fn o_breaker(t: &str, u: &str, state: &BState) -> String {
    format!("metric breaker {t}/{u} {state:?}")
}

pub(super) fn parse_frame(text: &str) -> Value {
    serde_json::from_str(text).expect("every frame is JSON")
}

/// A breaker state with its instant as ms since `start`.
pub(super) fn breaker_state(state: BreakerState, start: Instant) -> BState {
    match state {
        BreakerState::Closed => BState::Closed,
        BreakerState::Open { until } => BState::Open((until - start).as_millis() as Ms),
        BreakerState::HalfOpen { probe } => BState::HalfOpen(probe),
        other => panic!("a breaker state the model does not know: {other:?}"),
    }
}

pub(super) fn normalize(a: &Action, start: Instant) -> String {
    match a {
        Action::Deliver { conn, frame } => o_deliver(*conn, frame.as_str()),
        Action::Ping { conn } => o_ping(*conn),
        Action::Close { conn, reason } => o_close(*conn, *reason),
        Action::Inbound(i) => o_inbound(
            i.from.conn,
            i.from.tenant.as_str(),
            i.from.user.as_str(),
            i.thread.as_ref().map(|t| t.as_str()),
            &i.data,
        ),
        Action::Audit(e) => o_audit(
            e.kind,
            e.conn,
            e.tenant.as_ref().map(|t| t.as_str()),
            e.user.as_ref().map(|u| u.as_str()),
        ),
        Action::Metric(m) => match &**m {
            MetricEvent::ConnectionOpened { conn, tenant, user, tier } => {
                o_opened(*conn, tenant.as_str(), user.as_str(), *tier)
            }
            MetricEvent::ConnectionClosed { conn, tenant, user, lifetime, reason } => {
                o_closed(*conn, tenant.as_str(), user.as_str(), lifetime.as_millis() as Ms, *reason)
            }
            MetricEvent::UserCreated { tenant, user } => {
                o_user_created(tenant.as_str(), user.as_str())
            }
            MetricEvent::UserRetired { tenant, user } => {
                o_user_retired(tenant.as_str(), user.as_str())
            }
            MetricEvent::LimitRejected { limit } => o_limit(*limit),
            MetricEvent::BreakerChanged { tenant, user, state } => {
                o_breaker(tenant.as_str(), user.as_str(), &breaker_state(*state, start))
            }
            other => format!("unexpected {other:?}"),
        },
        other => format!("unexpected {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// The reference model
