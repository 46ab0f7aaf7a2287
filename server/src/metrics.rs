//! `GET /metrics`: the hub's stats, the driver's and the HTTP layer's counters as text for
//! Prometheus, in the format the scraper asks for: OpenMetrics 1.0 when its `Accept` header
//! names `application/openmetrics-text`, the Prometheus text format 0.0.4 otherwise.
//!
//! Every scrape takes one snapshot from the hub task and writes it out: the hub keeps its
//! numbers as plain integers (no atomics, no shared state), so there is nothing to register once
//! and update in place. Families and their label values come out in a fixed order, the same at
//! every scrape.
//!
//! Counters are named `…_total` in both formats (in OpenMetrics the family's `# TYPE` line names
//! it without the suffix, in 0.0.4 with it). `switchboard_security_violations_total` counts the
//! audit kinds in [`SECURITY_AUDITS`] only: a client or caller doing something it must not
//! (another user's stream, a stale id, a malformed or oversized frame, a close for repeated
//! violations, a refused global broadcast); limits, rate limits and breakers are load, not
//! attacks, and are counted in `switchboard_audit_events_total` and `…_limit_rejections_total`.
//! The per-tier rates are the hub's exponential moving averages, exposed as gauges named
//! `…_per_minute_moving_avg`; the hub keeps no per-tier counters, so `rate()` goes over the
//! untiered `switchboard_deliveries_total`, `…_inbound_messages_total` and
//! `…_connections_opened_total`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use switchboard::{ClosedBy, DisconnectReason, LimitKind};

use crate::driver::Snapshot;
use crate::http::HttpCounters;

/// The content type of OpenMetrics text 1.0.0.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The content type of the Prometheus text format 0.0.4.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The audit kinds (as the driver names them) that count as security violations.
pub const SECURITY_AUDITS: [&str; 6] = [
    "foreign_stream",
    "stale_conn_id",
    "malformed_frame",
    "oversized_frame",
    "violation_close",
    "global_broadcast_denied",
];

/// Every audit kind the driver names, so that each series exists from the first scrape.
const AUDIT_KINDS: [&str; 17] = [
    "stale_conn_id",
    "global_broadcast_denied",
    "global_broadcast",
    "limit_total_connections",
    "limit_tenant_connections",
    "limit_user_connections",
    "limit_user_connections_evicted",
    "limit_rooms_per_connection",
    "limit_thread_subscriptions",
    "limit_message_rate",
    "limit_control_rate",
    "limit_frame_size",
    "flood",
    "oversized_frame",
    "malformed_frame",
    "violation_close",
    "foreign_stream",
];

/// The two exposition formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics text 1.0.0 (`# EOF` at the end, counter families named without `_total`).
    OpenMetrics,
    /// The Prometheus text format 0.0.4 (what a scraper gets unless it asks for OpenMetrics).
    Prometheus,
}

impl Format {
    /// Chooses by an `Accept` header: OpenMetrics when it lists `application/openmetrics-text`
    /// with a quality at least that of any text/plain range, the 0.0.4 text otherwise (also for
    /// a missing or empty header).
    pub fn negotiate(accept: &str) -> Format {
        let (mut openmetrics, mut text) = (0.0f32, 0.0f32);
        for range in accept.split(',') {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
                .map_or(Some(1.0), |(_, v)| v.trim().parse::<f32>().ok())
                .unwrap_or(0.0);
            match media.as_str() {
                "application/openmetrics-text" => openmetrics = openmetrics.max(q),
                "text/plain" | "text/*" | "*/*" => text = text.max(q),
                _ => {}
            }
        }
        if openmetrics > 0.0 && openmetrics >= text {
            Format::OpenMetrics
        } else {
            Format::Prometheus
        }
    }

    /// The `Content-Type` of a body in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
            Format::Prometheus => PROMETHEUS_CONTENT_TYPE,
        }
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
}

#[derive(Clone, Copy)]
enum Num {
    Int(u64),
    Float(f64),
}

impl std::fmt::Display for Num {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Num::Int(v) => write!(f, "{v}"),
            Num::Float(v) if v.is_nan() => f.write_str("NaN"),
            Num::Float(v) if v.is_infinite() => f.write_str(if v > 0.0 { "+Inf" } else { "-Inf" }),
            Num::Float(v) => write!(f, "{v}"),
        }
    }
}

/// Writes families one after another, in the order they are added.
struct Writer {
    format: Format,
    out: String,
}

fn escape(text: &str, quote: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quote => out.push_str("\\\""),
            c => out.push(c),
        }
    }
    out
}

impl Writer {
    fn family<'a>(
        &mut self,
        name: &str,
        help: &str,
        kind: Kind,
        label: &str,
        samples: impl IntoIterator<Item = (Option<&'a str>, Num)>,
    ) {
        let full = format!("switchboard_{name}");
        let sample_name = match kind {
            Kind::Counter => format!("{full}_total"),
            Kind::Gauge => full.clone(),
        };
        let (family_name, type_name) = match (self.format, kind) {
            (Format::OpenMetrics, Kind::Counter) => (full.as_str(), "counter"),
            (Format::Prometheus, Kind::Counter) => (sample_name.as_str(), "counter"),
            (_, Kind::Gauge) => (full.as_str(), "gauge"),
        };
        let help = escape(help, self.format == Format::OpenMetrics);
        let out = &mut self.out;
        let _ = writeln!(out, "# HELP {family_name} {help}");
        let _ = writeln!(out, "# TYPE {family_name} {type_name}");
        for (value_of_label, value) in samples {
            match value_of_label {
                Some(v) => {
                    let _ =
                        writeln!(out, "{sample_name}{{{label}=\"{}\"}} {value}", escape(v, true));
                }
                None => {
                    let _ = writeln!(out, "{sample_name} {value}");
                }
            }
        }
    }

    fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, help, Kind::Counter, "", [(None, Num::Int(value))]);
    }

    fn counter_f64(&mut self, name: &str, help: &str, value: f64) {
        self.family(name, help, Kind::Counter, "", [(None, Num::Float(value))]);
    }

    fn counters<'a>(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        values: impl IntoIterator<Item = (&'a str, u64)>,
    ) {
        let samples = values.into_iter().map(|(k, v)| (Some(k), Num::Int(v)));
        self.family(name, help, Kind::Counter, label, samples);
    }

    fn gauge(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, help, Kind::Gauge, "", [(None, Num::Int(value))]);
    }

    fn gauges_f64<'a>(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        values: impl IntoIterator<Item = (&'a str, f64)>,
    ) {
        let samples = values.into_iter().map(|(k, v)| (Some(k), Num::Float(v)));
        self.family(name, help, Kind::Gauge, label, samples);
    }

    fn finish(mut self) -> String {
        if self.format == Format::OpenMetrics {
            self.out.push_str("# EOF\n");
        }
        self.out
    }
}

const CLOSE_REASONS: [ClosedBy; 9] = ClosedBy::ALL;

fn closed_label(by: ClosedBy) -> &'static str {
    match by {
        ClosedBy::Hub(reason) => reason.as_str(),
        ClosedBy::Transport(DisconnectReason::Clean) => "client_clean",
        ClosedBy::Transport(_) => "client_abnormal",
    }
}

const LIMITS: [(LimitKind, &str); 9] = [
    (LimitKind::TotalConnections, "total_connections"),
    (LimitKind::TenantConnections, "tenant_connections"),
    (LimitKind::UserConnections, "user_connections"),
    (LimitKind::UserConnectionsEvicted, "user_connections_evicted"),
    (LimitKind::RoomsPerConnection, "rooms_per_connection"),
    (LimitKind::ThreadSubscriptions, "thread_subscriptions"),
    (LimitKind::MessageRate, "message_rate"),
    (LimitKind::ControlRate, "control_rate"),
    (LimitKind::FrameSize, "frame_size"),
];

/// The exposition text for one snapshot, in `format`.
pub fn render(snapshot: &Snapshot, http: &HttpCounters, format: Format) -> String {
    let s = &snapshot.hub;
    let d = &snapshot.driver;
    let mut b = Writer { format, out: String::with_capacity(16 * 1024) };

    // Connections and users.
    b.counter("connections_opened", "Connections the hub admitted", s.connections_opened);
    b.counters(
        "connections_closed",
        "Connections closed, by how they ended",
        "reason",
        CLOSE_REASONS.iter().map(|&by| (closed_label(by), s.closed_by.get(by))),
    );
    b.gauge("connections_active", "Connections open now", s.connections_active);
    b.counter_f64(
        "connection_lifetime_seconds",
        "Summed lifetime of closed connections",
        s.total_connection_lifetime.as_secs_f64(),
    );
    b.counter(
        "connects_refused_expired",
        "Connects refused: session already expired",
        s.connects_refused_expired,
    );
    b.counter("users_created", "User states created", s.users_created);
    b.gauge("users_active", "Users with at least one open connection", s.users_active);
    b.gauge("users_detached", "Users without connections, kept for resume", s.users_detached);
    b.counter("users_retired", "User states retired after retention", s.users_retired);
    b.counter(
        "users_evicted",
        "Detached users retired early (max_detached_users)",
        s.users_evicted,
    );
    b.gauge("tenants", "Tenants with any state", s.tenants);
    b.gauge("rooms", "Rooms with members", s.rooms);

    // Limits and security.
    b.counters(
        "limit_rejections",
        "Refusals by limit",
        "limit",
        LIMITS.iter().map(|&(kind, name)| (name, s.limit_rejections.get(kind))),
    );
    let audit = |kind: &str| d.audits.get(kind).copied().unwrap_or(0);
    b.counter(
        "security_violations",
        "Audit events that are security violations (foreign streams, stale ids, malformed or \
         oversized frames, violation closes, refused global broadcasts); not limits or rate \
         limits",
        SECURITY_AUDITS.iter().map(|k| audit(k)).sum(),
    );
    b.counter("stale_ids_refused", "Stale connection ids refused", s.stale_ids_refused);
    let extra = d.audits.iter().filter(|(k, _)| !AUDIT_KINDS.contains(k)).map(|(k, v)| (*k, *v));
    b.counters(
        "audit_events",
        "Audit events seen by the driver, by kind",
        "kind",
        AUDIT_KINDS.iter().map(|&k| (k, audit(k))).chain(extra),
    );
    b.counter("breakers_opened", "Reconnect breakers opened", s.breakers_opened);
    b.counter("breaker_refusals", "Connects refused by an open breaker", s.breaker_refusals);

    // Traffic.
    b.counter("publishes", "Envelopes accepted by publish", s.publishes);
    b.counter("undeliverable", "Envelopes that reached no connection live", s.undeliverable);
    b.counter("deliveries", "Frames handed to connections", s.deliveries);
    b.counter("delivered_bytes", "Bytes of frames handed to connections", s.bytes_delivered);
    b.counter("written_bytes", "Bytes the transport confirmed written", s.bytes_written);
    b.counter("frames_received", "Client frames received", s.frames_received);
    b.counter("inbound_messages", "Client messages passed to the application", s.inbound_messages);
    b.counter("protocol_errors", "Client frames refused", s.protocol_errors);
    b.counter("pings_sent", "Transport pings requested", s.pings_sent);
    b.counter("pongs_received", "Transport pongs received", s.pongs_received);
    b.counter("refresh_required_sent", "refresh_required frames sent", s.refresh_required_sent);
    b.counter("sessions_refreshed", "Sessions refreshed", s.sessions_refreshed);

    // Delivery guarantees.
    b.counter(
        "thinking_skipped",
        "agent_thinking frames skipped for connections behind",
        s.thinking_skipped,
    );
    b.counter("held_back", "Events held for connections in their resume window", s.held_back);
    b.counter("replayed", "Messages replayed from recovery buffers", s.replayed);
    b.counters(
        "resumes",
        "resume frames answered, by outcome",
        "recovered",
        [("true", s.resumes_recovered), ("false", s.resumes_unrecovered)],
    );
    b.gauge("buffered_messages", "Messages in recovery buffers", s.buffered_messages);
    b.gauge("buffered_bytes", "Frame bytes in recovery buffers", s.buffered_bytes);

    // Per-tier moving averages (gauges; rate() the untiered counters instead).
    let tiers = &snapshot.tiers;
    b.gauges_f64(
        "tier_delivered_per_minute_moving_avg",
        "Frames delivered per minute, the hub's exponential moving average, by tier",
        "tier",
        tiers.iter().map(|(t, r)| (t.as_str(), r.delivered_per_minute)),
    );
    b.gauges_f64(
        "tier_inbound_per_minute_moving_avg",
        "Client messages per minute, the hub's exponential moving average, by tier",
        "tier",
        tiers.iter().map(|(t, r)| (t.as_str(), r.inbound_per_minute)),
    );
    b.gauges_f64(
        "tier_connects_per_minute_moving_avg",
        "Connections opened per minute, the hub's exponential moving average, by tier",
        "tier",
        tiers.iter().map(|(t, r)| (t.as_str(), r.connects_per_minute)),
    );

    // The driver and the HTTP layer.
    b.counter(
        "outbox_overflows",
        "Connections closed because their outbox was full",
        d.outbox_overflows,
    );
    b.counter(
        "inbound_dropped",
        "Client messages dropped: the application was behind",
        d.inbound_dropped,
    );
    b.gauge(
        "sockets",
        "WebSocket connection tasks alive, open or closing (what the connection cap bounds)",
        u64::try_from(d.sockets).unwrap_or(u64::MAX),
    );
    b.counter(
        "connects_refused_capacity",
        "WebSocket upgrades refused with 503 at the connection cap (the file-descriptor reserve)",
        d.refused_at_capacity,
    );
    b.counter(
        "accept_fd_exhausted",
        "Accepts that failed: out of file descriptors (EMFILE/ENFILE)",
        d.accept_fd_exhausted,
    );
    b.counter("accept_errors", "Accepts that failed for other reasons", d.accept_errors);
    b.counter(
        "http_pending_refused",
        "TCP connections answered 503 and closed: too many had not upgraded",
        d.pending_refused,
    );
    b.counter(
        "http_header_timeouts",
        "HTTP connections closed: the request headers did not arrive in time",
        d.header_timeouts,
    );
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    b.counters(
        "http_unauthorized",
        "WebSocket upgrades refused with 401, by reason",
        "reason",
        [
            ("missing", load(&http.unauthorized_missing)),
            ("expired", load(&http.unauthorized_expired)),
            ("not_yet_valid", load(&http.unauthorized_not_yet_valid)),
            ("invalid", load(&http.unauthorized_invalid)),
        ],
    );
    b.counter(
        "http_origin_refused",
        "WebSocket upgrades refused with 403: Origin not on the allowlist",
        load(&http.origin_refused),
    );
    b.counter(
        "http_connect_refused",
        "Authenticated upgrades the hub refused",
        load(&http.connect_refused),
    );
    b.counters(
        "http_publish_requests",
        "POST /publish requests, by outcome",
        "outcome",
        [
            ("accepted", load(&http.publish_accepted)),
            ("rejected", load(&http.publish_rejected)),
            ("unauthorized", load(&http.publish_unauthorized)),
        ],
    );
    b.counter(
        "http_metrics_unauthorized",
        "GET /metrics requests without the admin key (with --metrics-require-admin)",
        load(&http.metrics_unauthorized),
    );
    b.finish()
}
