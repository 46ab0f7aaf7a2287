//! `GET /metrics`: the hub's stats, the driver's and the HTTP layer's counters in the
//! Prometheus/OpenMetrics text format, encoded by `prometheus-client`.
//!
//! Every scrape takes one snapshot from the hub task and builds a fresh registry from it: the
//! hub keeps its numbers as plain integers (no atomics, no shared state), so there is nothing to
//! register once and update in place.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use switchboard::{ClosedBy, DisconnectReason, LimitKind};

use crate::driver::Snapshot;
use crate::http::HttpCounters;

/// The content type of the OpenMetrics text format, which Prometheus scrapes natively.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels = Vec<(&'static str, String)>;

struct Builder {
    registry: Registry,
}

impl Builder {
    fn counter(&mut self, name: &str, help: &str, value: u64) {
        let c: Counter = Counter::default();
        c.inc_by(value);
        self.registry.register(name, help, c);
    }

    fn counter_f64(&mut self, name: &str, help: &str, value: f64) {
        let c: Counter<f64, std::sync::atomic::AtomicU64> = Counter::default();
        c.inc_by(value);
        self.registry.register(name, help, c);
    }

    fn counters<'a>(
        &mut self,
        name: &str,
        help: &str,
        label: &'static str,
        values: impl IntoIterator<Item = (&'a str, u64)>,
    ) {
        let family = Family::<Labels, Counter>::default();
        for (key, value) in values {
            family.get_or_create(&vec![(label, key.to_owned())]).inc_by(value);
        }
        self.registry.register(name, help, family);
    }

    fn gauge(&mut self, name: &str, help: &str, value: u64) {
        let g: Gauge = Gauge::default();
        g.set(i64::try_from(value).unwrap_or(i64::MAX));
        self.registry.register(name, help, g);
    }

    fn gauges_f64<'a>(
        &mut self,
        name: &str,
        help: &str,
        label: &'static str,
        values: impl IntoIterator<Item = (&'a str, f64)>,
    ) {
        let family = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        for (key, value) in values {
            family.get_or_create(&vec![(label, key.to_owned())]).set(value);
        }
        self.registry.register(name, help, family);
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

/// The exposition text for one snapshot.
pub fn render(snapshot: &Snapshot, http: &HttpCounters) -> String {
    let s = &snapshot.hub;
    let d = &snapshot.driver;
    let mut b = Builder { registry: Registry::with_prefix("switchboard") };

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
    b.counter("security_violations", "Audit events emitted", s.security_violations);
    b.counter("stale_ids_refused", "Stale connection ids refused", s.stale_ids_refused);
    b.counters(
        "audit_events",
        "Audit events seen by the driver, by kind",
        "kind",
        d.audits.iter().map(|(k, v)| (*k, *v)),
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

    // Per-tier moving averages.
    let tiers = &snapshot.tiers;
    b.gauges_f64(
        "tier_delivered_per_minute",
        "Frames delivered per minute (moving average), by tier",
        "tier",
        tiers.iter().map(|(t, r)| (t.as_str(), r.delivered_per_minute)),
    );
    b.gauges_f64(
        "tier_inbound_per_minute",
        "Client messages per minute (moving average), by tier",
        "tier",
        tiers.iter().map(|(t, r)| (t.as_str(), r.inbound_per_minute)),
    );
    b.gauges_f64(
        "tier_connects_per_minute",
        "Connections opened per minute (moving average), by tier",
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
            ("invalid", load(&http.unauthorized_invalid)),
        ],
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

    let mut out = String::new();
    encode(&mut out, &b.registry).expect("writing to a String cannot fail");
    out
}
