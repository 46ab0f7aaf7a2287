//! Reading what the hub asked for: the actions of a drain by kind, and delivered frames decoded
//! from their JSON.

use serde_json::Value;
use switchboard::{Action, AuditEvent, AuditKind, CloseReason, ConnId, MetricEvent};

/// Every `Deliver` as (connection, parsed JSON frame).
pub fn deliveries(actions: &[Action]) -> Vec<(ConnId, Value)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Deliver { conn, frame } => Some((*conn, parse(frame.as_str()))),
            _ => None,
        })
        .collect()
}

/// The frames delivered to one connection.
pub fn frames_for(actions: &[Action], conn: ConnId) -> Vec<Value> {
    deliveries(actions).into_iter().filter(|(c, _)| *c == conn).map(|(_, f)| f).collect()
}

/// Every `Close` as (connection, reason).
pub fn closes(actions: &[Action]) -> Vec<(ConnId, CloseReason)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Close { conn, reason } => Some((*conn, *reason)),
            _ => None,
        })
        .collect()
}

/// Every `Ping`.
pub fn pings(actions: &[Action]) -> Vec<ConnId> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Ping { conn } => Some(*conn),
            _ => None,
        })
        .collect()
}

/// Every audit kind, in order.
pub fn audits(actions: &[Action]) -> Vec<AuditKind> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Audit(e) => Some(e.kind),
            _ => None,
        })
        .collect()
}

/// Every audit event, in order.
pub fn audit_events(actions: &[Action]) -> Vec<AuditEvent> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Audit(e) => Some((**e).clone()),
            _ => None,
        })
        .collect()
}

/// Every metric event, in order.
pub fn metrics(actions: &[Action]) -> Vec<MetricEvent> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Metric(m) => Some((**m).clone()),
            _ => None,
        })
        .collect()
}

/// How many `Inbound` actions there are.
pub fn inbound_count(actions: &[Action]) -> usize {
    actions.iter().filter(|a| matches!(a, Action::Inbound(_))).count()
}

/// A delivered event frame, decoded: what the isolation, ordering and loss checks read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventFrame {
    /// The frame's `type` (the event kind's wire name).
    pub kind: String,
    /// The stream's wire name: `u`, `t` or `r:<room>`.
    pub stream: String,
    /// The stream's epoch.
    pub epoch: u64,
    /// The message's seq on the stream.
    pub seq: u64,
    /// The thread, if the event has one.
    pub thread: Option<String>,
}

impl EventFrame {
    /// Decodes an event frame (one with `stream`, `epoch` and `seq`); `None` for any other frame
    /// (`connected`, `resumed`, `skipped`, `pong`, errors, …).
    #[must_use]
    pub fn decode(frame: &Value) -> Option<Self> {
        Some(Self {
            kind: frame.get("type")?.as_str()?.to_owned(),
            stream: frame.get("stream")?.as_str()?.to_owned(),
            epoch: frame.get("epoch")?.as_u64()?,
            seq: frame.get("seq")?.as_u64()?,
            thread: frame.get("thread_id").and_then(Value::as_str).map(str::to_owned),
        })
    }
}

/// Parses a delivered frame's text; frames are JSON objects by the protocol.
///
/// # Panics
/// If the text is not JSON: the hub never writes such a frame.
#[must_use]
pub fn parse(text: &str) -> Value {
    serde_json::from_str(text).expect("frames are JSON")
}

/// The `(epoch, seq)` of stream `name` in a `connected` frame's `streams` (or a `resumed`
/// frame's report of it).
#[must_use]
pub fn stream_position(frame: &Value, name: &str) -> Option<(u64, u64)> {
    let s = frame.get("streams")?.get(name)?;
    Some((s.get("epoch")?.as_u64()?, s.get("seq")?.as_u64()?))
}
