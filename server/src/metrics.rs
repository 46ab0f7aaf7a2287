//! `GET /metrics`: the hub's stats, the driver's and the HTTP layer's counters in the Prometheus
//! text format 0.0.4, written by the [`prometheus`] crate's [`TextEncoder`].
//!
//! **One format for every scraper.** Every Prometheus since 2.0 (and every compatible scraper:
//! VictoriaMetrics, the OpenTelemetry collector, Grafana's agents) reads 0.0.4, whatever its
//! `Accept` header prefers, so `/metrics` answers 0.0.4 to all of them with
//! `Content-Type: text/plain; version=0.0.4`. OpenMetrics would add nothing these metrics use
//! (no exemplars, units, info or state sets, no `_created` series), and one format is one code
//! path to keep right: a second encoder for the same families is what this module used to
//! hand-write, and what went wrong with it (mis-typed counters) is what a maintained encoder
//! takes off our hands.
//!
//! Every scrape takes one snapshot from the hub task, copies its numbers into a fresh
//! [`Registry`] and encodes that: the hub keeps its numbers as plain integers (no atomics, no
//! shared state), so there is nothing to register once and update in place. The registry sorts
//! families by name and each family's series by label value, so the order is the same at every
//! scrape; every label value that can occur (each audit kind, each close reason, each tier) has
//! its series from the first scrape on.
//!
//! Counters are named `…_total`, and their `# TYPE` line names them with that suffix, as 0.0.4
//! wants. `switchboard_security_violations_total` counts the audit kinds that are security
//! violations ([`AuditKind::is_security_violation`]) only: a client or caller doing something it
//! must not (another user's stream, a stale id, a malformed or oversized frame, a close for
//! repeated violations, a refused global broadcast); limits, rate limits and breakers are load,
//! not attacks, and are counted in
//! `switchboard_audit_events_total` and `…_limit_rejections_total`. The per-tier rates are the
//! hub's exponential moving averages, exposed as gauges named `…_per_minute_moving_avg`; the hub
//! keeps no per-tier counters, so `rate()` goes over the untiered
//! `switchboard_deliveries_total`, `…_inbound_messages_total` and `…_connections_opened_total`.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricFamily, MetricType};
use prometheus::{
    Counter, GaugeVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};
use switchboard::{AuditKind, ClosedBy, LimitKind, RttHistogram};

use crate::bus::BusMetrics;
use crate::driver::Snapshot;
use crate::http::HttpCounters;

/// The content type of `/metrics`: the Prometheus text format 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Cluster mode's families: the hub's view of the bus and the driver's.
fn bus_families(
    b: &Families,
    s: &switchboard::HubStats,
    bus: &BusMetrics,
) -> prometheus::Result<()> {
    let h = &s.bus;
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let counters: [(&str, &str, u64); 23] = [
        ("bus_ops", "Bus operations the hub issued", h.ops),
        ("bus_op_failures", "Bus operations that failed (as the hub saw them)", h.op_failures),
        ("bus_op_timeouts", "Bus operations without a reply within op_timeout", h.op_timeouts),
        (
            "bus_late_replies",
            "Bus replies ignored: after their deadline, from before an outage, or for a superseded subscription or repair",
            h.late_replies,
        ),
        (
            "bus_untracked_messages",
            "Bus messages on streams this node no longer tracks",
            h.untracked_messages,
        ),
        (
            "bus_duplicates_dropped",
            "Bus messages dropped as duplicates or as late messages of an epoch the stream left",
            h.duplicates_dropped,
        ),
        ("bus_gaps_repaired", "Gaps in a stream filled from the log", h.gaps_repaired),
        (
            "bus_gaps_lost",
            "Gaps the log no longer covered (the stream's connections got a resync)",
            h.gaps_lost,
        ),
        (
            "bus_mismatches",
            "Bus messages that named another stream than their channel's (dropped, audited)",
            h.mismatches,
        ),
        ("bus_epochs_changed", "Streams found with a new epoch", h.epochs_changed),
        ("resyncs_sent", "resync frames sent to connections", s.resyncs_sent),
        ("publishes_failed", "Clustered publishes the bus did not append", s.publishes_failed),
        (
            "connects_refused_unavailable",
            "Connects refused because the bus was down",
            s.connects_refused_unavailable,
        ),
        (
            "bus_messages_dropped",
            "Live bus messages dropped because the hub's queue was full (repaired from the log)",
            load(&bus.messages_dropped),
        ),
        (
            "bus_ops_refused",
            "Bus operations the driver's queue could not take (failed as overloaded)",
            load(&bus.ops_refused),
        ),
        ("bus_link_losses", "Times the bus link was lost or found deaf", load(&bus.link_losses)),
        (
            "bus_probes_missed",
            "Liveness probes of the bus link that did not come back in time",
            load(&bus.probes_missed),
        ),
        (
            "bus_dead_nodes",
            "Nodes found dead (their leases released)",
            load(&bus.dead_nodes_cleaned),
        ),
        ("presence_signals", "Presence signals received from other nodes", h.presence_signals),
        (
            "presence_mismatches",
            "Presence signals whose digest disagreed with this node's view (the scope was read again)",
            h.presence_mismatches,
        ),
        ("presence_reads", "Reads of a scope's presence on the bus", h.presence_reads),
        (
            "presence_expired",
            "Other nodes' presence sets dropped because they were not refreshed in time",
            h.presence_expired,
        ),
        (
            "presence_rewrites",
            "This node's presence sets written again whole (a write failed, or the bus lost them)",
            h.presence_rewrites,
        ),
    ];
    for (name, help, value) in counters {
        b.counter(name, help, value)?;
    }
    b.gauge("bus_ops_in_flight", "Bus operations waiting for their reply", h.in_flight)?;
    b.gauge("bus_streams", "Streams this node is subscribed to", h.streams)?;
    b.gauge(
        "presence_remote_entries",
        "Other nodes' presence entries this node keeps",
        h.presence_remote_entries,
    )?;
    b.gauge("bus_up", "1 while the bus link is up", u64::from(bus.is_up()))?;
    b.add(bus.latency.clone())?;
    b.add(bus.errors.clone())?;
    Ok(())
}

/// A family someone else counted (the hub's round-trip histogram, kept as plain bucket counts):
/// the registry only sorts and encodes it.
struct Precounted {
    desc: Desc,
    family: MetricFamily,
}

impl Collector for Precounted {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        vec![self.family.clone()]
    }
}

/// The families of one scrape, each named `switchboard_<name>`, registered as they are added.
struct Families {
    registry: Registry,
}

/// Converts a count to a gauge's `i64`, saturating (no count of ours comes near it).
fn gauge_value(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Families {
    fn add(&self, family: impl Collector + 'static) -> prometheus::Result<()> {
        self.registry.register(Box::new(family))
    }

    fn counter(&self, name: &str, help: &str, value: u64) -> prometheus::Result<()> {
        let c = IntCounter::new(format!("switchboard_{name}_total"), help)?;
        c.inc_by(value);
        self.add(c)
    }

    fn counter_f64(&self, name: &str, help: &str, value: f64) -> prometheus::Result<()> {
        let c = Counter::new(format!("switchboard_{name}_total"), help)?;
        c.inc_by(value.max(0.0));
        self.add(c)
    }

    fn counters<'a>(
        &self,
        name: &str,
        help: &str,
        label: &str,
        values: impl IntoIterator<Item = (&'a str, u64)>,
    ) -> prometheus::Result<()> {
        let family =
            IntCounterVec::new(Opts::new(format!("switchboard_{name}_total"), help), &[label])?;
        for (value_of_label, value) in values {
            family.get_metric_with_label_values(&[value_of_label])?.inc_by(value);
        }
        self.add(family)
    }

    fn gauge(&self, name: &str, help: &str, value: u64) -> prometheus::Result<()> {
        let g = IntGauge::new(format!("switchboard_{name}"), help)?;
        g.set(gauge_value(value));
        self.add(g)
    }

    /// A histogram in seconds from the hub's fixed buckets (`le` cumulative, `+Inf` the count).
    fn rtt_histogram(&self, name: &str, help: &str, h: &RttHistogram) -> prometheus::Result<()> {
        let name = format!("switchboard_{name}");
        let buckets = h
            .cumulative()
            .map(|(bound, count)| {
                let mut b = proto::Bucket::default();
                b.set_upper_bound(bound.as_secs_f64());
                b.set_cumulative_count(count);
                b
            })
            .collect();
        let mut histogram = proto::Histogram::default();
        histogram.set_sample_count(h.count());
        histogram.set_sample_sum(h.sum().as_secs_f64());
        histogram.set_bucket(buckets);
        let mut metric = proto::Metric::default();
        metric.set_histogram(histogram);
        let mut family = MetricFamily::default();
        family.set_name(name.clone());
        family.set_help(help.to_owned());
        family.set_field_type(MetricType::HISTOGRAM);
        family.set_metric(vec![metric]);
        let desc = Desc::new(name, help.to_owned(), Vec::new(), Default::default())?;
        self.add(Precounted { desc, family })
    }

    fn gauges_f64<'a>(
        &self,
        name: &str,
        help: &str,
        label: &str,
        values: impl IntoIterator<Item = (&'a str, f64)>,
    ) -> prometheus::Result<()> {
        let family = GaugeVec::new(Opts::new(format!("switchboard_{name}"), help), &[label])?;
        for (value_of_label, value) in values {
            family.get_metric_with_label_values(&[value_of_label])?.set(value);
        }
        self.add(family)
    }
}

/// The exposition text (format 0.0.4) for one snapshot and the HTTP layer's counters.
///
/// # Errors
///
/// Only if a family were defined wrongly (an invalid name, a name used twice), which the tests
/// rule out; `/metrics` answers 500 then.
pub fn render(snapshot: &Snapshot, http: &HttpCounters) -> prometheus::Result<String> {
    let s = &snapshot.hub;
    let d = &snapshot.driver;
    let b = Families { registry: Registry::new() };

    // Connections and users.
    b.counter("connections_opened", "Connections the hub admitted", s.connections_opened)?;
    b.counters(
        "connections_closed",
        "Connections closed, by how they ended",
        "reason",
        ClosedBy::ALL.iter().map(|&by| (by.as_str(), s.closed_by.get(by))),
    )?;
    b.gauge("connections_active", "Connections open now", s.connections_active)?;
    b.counter_f64(
        "connection_lifetime_seconds",
        "Summed lifetime of closed connections",
        s.total_connection_lifetime.as_secs_f64(),
    )?;
    b.counter(
        "connects_refused_expired",
        "Connects refused: session already expired",
        s.connects_refused_expired,
    )?;
    b.counter("users_created", "User states created", s.users_created)?;
    b.gauge("users_active", "Users with at least one open connection", s.users_active)?;
    b.gauge("users_detached", "Users without connections, kept for resume", s.users_detached)?;
    b.counter("users_retired", "User states retired after retention", s.users_retired)?;
    b.counter(
        "users_evicted",
        "Detached users retired early (max_detached_users)",
        s.users_evicted,
    )?;
    b.gauge("tenants", "Tenants with any state", s.tenants)?;
    b.gauge("rooms", "Rooms with members", s.rooms)?;

    // Limits and security.
    b.counters(
        "limit_rejections",
        "Refusals by limit",
        "limit",
        LimitKind::ALL.iter().map(|&kind| (kind.as_str(), s.limit_rejections.get(kind))),
    )?;
    let audit = |kind: &str| d.audits.get(kind).copied().unwrap_or(0);
    b.counter(
        "security_violations",
        "Audit events that are security violations (foreign streams, stale ids, malformed or \
         oversized frames, violation closes, refused global broadcasts); not limits or rate \
         limits",
        AuditKind::ALL
            .iter()
            .filter(|k| k.is_security_violation())
            .map(|k| audit(k.as_str()))
            .sum(),
    )?;
    b.counter("stale_ids_refused", "Stale connection ids refused", s.stale_ids_refused)?;
    let known = |name: &str| AuditKind::ALL.iter().any(|k| k.as_str() == name);
    let extra = d.audits.iter().filter(|(k, _)| !known(k)).map(|(k, v)| (*k, *v));
    b.counters(
        "audit_events",
        "Audit events seen by the driver, by kind",
        "kind",
        AuditKind::ALL.iter().map(|k| (k.as_str(), audit(k.as_str()))).chain(extra),
    )?;
    b.counter(
        "rooms_refused",
        "Rooms of tokens' rooms claims the hub refused to join (the connection stays)",
        d.rooms_refused,
    )?;
    b.counter("breakers_opened", "Reconnect breakers opened", s.breakers_opened)?;
    b.counter("breaker_refusals", "Connects refused by an open breaker", s.breaker_refusals)?;

    // Traffic.
    b.counter("publishes", "Envelopes accepted by publish", s.publishes)?;
    b.counter("undeliverable", "Envelopes that reached no connection live", s.undeliverable)?;
    b.counter("deliveries", "Frames handed to connections", s.deliveries)?;
    b.counter("delivered_bytes", "Bytes of frames handed to connections", s.bytes_delivered)?;
    b.counter("written_bytes", "Bytes the transport confirmed written", s.bytes_written)?;
    b.counter("frames_received", "Client frames received", s.frames_received)?;
    b.counter("inbound_messages", "Client messages passed to the application", s.inbound_messages)?;
    b.counter("protocol_errors", "Client frames refused", s.protocol_errors)?;
    b.counter("pings_sent", "Transport pings requested", s.pings_sent)?;
    b.counter("pongs_received", "Transport pongs received", s.pongs_received)?;
    b.rtt_histogram(
        "round_trip_seconds",
        "Round trips of the hub's heartbeat pings: from asking for the ping to the pong (never a \
         client's own ping frames)",
        &s.round_trips,
    )?;
    b.counter("refresh_required_sent", "refresh_required frames sent", s.refresh_required_sent)?;
    b.counter("sessions_refreshed", "Sessions refreshed", s.sessions_refreshed)?;

    // Delivery guarantees.
    b.counter(
        "thinking_skipped",
        "agent_thinking frames skipped for connections behind",
        s.thinking_skipped,
    )?;
    b.counter("held_back", "Events held for connections in their resume window", s.held_back)?;
    b.counter("replayed", "Messages replayed from recovery buffers", s.replayed)?;
    b.counter("history_answers", "history frames answering client requests", s.history_requests)?;
    b.counters(
        "resumes",
        "resume frames answered, by outcome",
        "recovered",
        [("true", s.resumes_recovered), ("false", s.resumes_unrecovered)],
    )?;
    b.gauge("buffered_messages", "Messages in recovery buffers", s.buffered_messages)?;
    b.gauge("buffered_bytes", "Frame bytes in recovery buffers", s.buffered_bytes)?;

    // Per-tier moving averages (gauges; rate() the untiered counters instead).
    let tiers = &snapshot.tiers;
    b.gauges_f64(
        "tier_delivered_per_minute_moving_avg",
        "Frames delivered per minute, the hub's exponential moving average, by tier",
        "tier",
        tiers.iter().map(|(t, r)| (t.as_str(), r.delivered_per_minute)),
    )?;
    b.gauges_f64(
        "tier_inbound_per_minute_moving_avg",
        "Client messages per minute, the hub's exponential moving average, by tier",
        "tier",
        tiers.iter().map(|(t, r)| (t.as_str(), r.inbound_per_minute)),
    )?;
    b.gauges_f64(
        "tier_connects_per_minute_moving_avg",
        "Connections opened per minute, the hub's exponential moving average, by tier",
        "tier",
        tiers.iter().map(|(t, r)| (t.as_str(), r.connects_per_minute)),
    )?;

    // The driver and the HTTP layer.
    b.counter(
        "outbox_overflows",
        "Connections closed because their outbox was full",
        d.outbox_overflows,
    )?;
    b.counter(
        "flushes",
        "Writes of text frames to connections (each carries one or more frames)",
        d.flushes,
    )?;
    b.counter(
        "writer_batches",
        "Batches of a large fan-out (up to 64 connections) written by writer tasks",
        d.writer_batches,
    )?;
    b.counter(
        "inbound_dropped",
        "Client messages dropped: the application was behind",
        d.inbound_dropped,
    )?;
    b.gauge(
        "sockets",
        "WebSocket connection tasks alive, open or closing (what the connection cap bounds)",
        u64::try_from(d.sockets).unwrap_or(u64::MAX),
    )?;
    b.counter(
        "connects_refused_capacity",
        "WebSocket upgrades refused with 503 at the connection cap (the file-descriptor reserve)",
        d.refused_at_capacity,
    )?;
    b.counter(
        "accept_fd_exhausted",
        "Accepts that failed: out of file descriptors (EMFILE/ENFILE)",
        d.accept_fd_exhausted,
    )?;
    b.counter("accept_errors", "Accepts that failed for other reasons", d.accept_errors)?;
    // Read at the scrape, from the process: `/proc/self/fd` (Linux) and RLIMIT_NOFILE (absent
    // where unknown or unlimited).
    if let Some(open) = crate::listen::open_fds() {
        b.gauge("open_fds", "File descriptors the process has open", open)?;
    }
    if let Some(limit) = crate::listen::nofile_limit() {
        b.gauge("max_fds", "The process's soft limit on open file descriptors", limit)?;
    }
    b.counter(
        "http_pending_refused",
        "TCP connections answered 503 and closed: too many had not upgraded",
        d.pending_refused,
    )?;
    b.counter(
        "http_header_timeouts",
        "HTTP connections closed: the request headers did not arrive in time",
        d.header_timeouts,
    )?;
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
    )?;
    b.counter(
        "http_origin_refused",
        "WebSocket upgrades refused with 403: Origin not on the allowlist",
        load(&http.origin_refused),
    )?;
    b.counter(
        "http_connect_refused",
        "Authenticated upgrades the hub refused",
        load(&http.connect_refused),
    )?;
    b.counters(
        "http_publish_requests",
        "POST /publish requests, by outcome (each request counts once)",
        "outcome",
        [
            ("accepted", load(&http.publish_accepted)),
            ("rejected", load(&http.publish_rejected)),
            ("unauthorized", load(&http.publish_unauthorized)),
            ("too_large", load(&http.publish_too_large)),
            ("body_timeout", load(&http.publish_body_timeouts)),
            ("unavailable", load(&http.publish_unavailable)),
        ],
    )?;
    b.counter(
        "presence_snapshots_sent",
        "presence snapshots sent (entering a scope, on request, a scope back under its limit)",
        s.presence_snapshots_sent,
    )?;
    b.counter("presence_diffs_sent", "presence_diff frames sent", s.presence_diffs_sent)?;
    b.gauge("presence_scopes", "Presence scopes with anyone present", s.presence_scopes)?;
    if let Some(bus) = &snapshot.bus {
        bus_families(&b, s, bus)?;
    }
    b.counter(
        "http_metrics_unauthorized",
        "GET /metrics requests without the admin key (with --metrics-require-admin)",
        load(&http.metrics_unauthorized),
    )?;
    b.counter(
        "http_admin_unauthorized",
        "/admin requests without the admin key",
        load(&http.admin_unauthorized),
    )?;
    let mut out = String::with_capacity(16 * 1024);
    TextEncoder::new().encode_utf8(&b.registry.gather(), &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use switchboard::{HubStats, Rates, Tier};

    use super::*;
    use crate::driver::DriverStats;

    fn snapshot() -> Snapshot {
        let mut driver = DriverStats::default();
        driver.audits.insert("malformed_frame", 2);
        driver.audits.insert("limit_user_connections", 5);
        driver.audits.insert("from_a_newer_core", 1); // not in AuditKind::ALL: still a series
        let mut rates = Rates::default();
        rates.delivered_per_minute = 1.5;
        let tiers = Tier::ALL.iter().map(|&t| (t, rates)).collect();
        Snapshot { hub: HubStats::default(), driver, tiers, bus: None }
    }

    /// `# TYPE` lines by family name, and the sample lines without their values.
    fn shape(text: &str) -> (Vec<(String, String)>, Vec<String>) {
        let mut types = Vec::new();
        let mut series = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                types.push((name.to_owned(), kind.to_owned()));
            } else if !line.starts_with('#') {
                series.push(line.rsplit_once(' ').unwrap().0.to_owned());
            }
        }
        (types, series)
    }

    #[test]
    fn every_family_renders_typed_and_sorted() {
        let text = render(&snapshot(), &HttpCounters::default()).unwrap();
        let (types, series) = shape(&text);
        assert!(types.len() >= 50, "{} families", types.len());
        let names: Vec<&String> = types.iter().map(|(n, _)| n).collect();
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(names, sorted, "families come sorted by name, each once");
        for (name, kind) in &types {
            assert!(name.starts_with("switchboard_"), "{name}");
            assert_eq!(kind == "counter", name.ends_with("_total"), "{name} is a {kind}");
            assert!(text.contains(&format!("# HELP {name} ")), "{name} has no HELP");
        }
        for s in &series {
            let name = s.split('{').next().unwrap();
            let histogram = |n: &str| types.iter().any(|(t, k)| t == n && k == "histogram");
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix).filter(|n| histogram(n)))
                .unwrap_or(name);
            assert!(types.iter().any(|(n, _)| n == family), "{name} has no TYPE of its own name");
        }
        assert!(text.contains("switchboard_security_violations_total 2\n"), "{text}");
        assert!(text.contains("switchboard_audit_events_total{kind=\"from_a_newer_core\"} 1\n"));
        assert!(text.contains("switchboard_audit_events_total{kind=\"flood\"} 0\n"));
        assert!(
            text.contains("switchboard_tier_delivered_per_minute_moving_avg{tier=\"free\"} 1.5")
        );
        assert!(text.contains("switchboard_connections_closed_total{reason=\"client_clean\"} 0\n"));
    }

    #[test]
    fn round_trips_render_as_a_histogram_in_seconds_and_descriptors_as_gauges() {
        let mut snap = snapshot();
        // Two samples of the hub's: 3 ms and 40 ms (HubStats is built by the hub only).
        let mut hub = switchboard::Hub::new(switchboard::Config::default()).unwrap();
        let t0 = std::time::Instant::now();
        let id = hub.connect(t0, switchboard::Principal::new("acme", "alice")).unwrap();
        let mut now = t0;
        for rtt_ms in [3, 40] {
            now += std::time::Duration::from_secs(25);
            hub.tick(now);
            now += std::time::Duration::from_millis(rtt_ms);
            hub.pong(now, id).unwrap();
        }
        snap.hub = hub.stats();
        let text = render(&snap, &HttpCounters::default()).unwrap();
        assert!(text.contains("# TYPE switchboard_round_trip_seconds histogram\n"), "{text}");
        assert!(text.contains("switchboard_round_trip_seconds_bucket{le=\"0.0025\"} 0\n"));
        assert!(text.contains("switchboard_round_trip_seconds_bucket{le=\"0.005\"} 1\n"));
        assert!(text.contains("switchboard_round_trip_seconds_bucket{le=\"0.05\"} 2\n"));
        assert!(text.contains("switchboard_round_trip_seconds_bucket{le=\"+Inf\"} 2\n"));
        assert!(text.contains("switchboard_round_trip_seconds_sum 0.043\n"));
        assert!(text.contains("switchboard_round_trip_seconds_count 2\n"));
        if cfg!(target_os = "linux") {
            assert!(text.contains("# TYPE switchboard_open_fds gauge\n"));
            assert!(text.contains("# TYPE switchboard_max_fds gauge\n"));
        }
    }

    #[test]
    fn label_values_come_sorted_within_a_family() {
        let text = render(&snapshot(), &HttpCounters::default()).unwrap();
        let kinds: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("switchboard_audit_events_total{kind=\""))
            .map(|l| l.split('"').next().unwrap())
            .collect();
        assert!(kinds.len() > AuditKind::ALL.len(), "every kind and the extra one: {kinds:?}");
        assert!(kinds.is_sorted(), "{kinds:?}");
    }
}
