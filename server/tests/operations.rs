//! Operations (issue 17): the alert rules and the dashboard name only what `/metrics` exports,
//! round-trip times are measured over real WebSockets, tokens carry connection labels, and the
//! lifetime cap closes a socket with its code.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;
use switchboard::HubStats;
use tokio_tungstenite::tungstenite::Message;

use switchboard_server::auth::{AuthError, Claims};
use switchboard_server::bus::BusMetrics;
use switchboard_server::driver::{DriverStats, Snapshot};
use switchboard_server::http::HttpCounters;
use switchboard_server::metrics;
use switchboard_testkit::ws::{Client, WAIT, eventually, http_request};

mod support;

use support::Server;

// ---------------------------------------------------------------------------------------------
// The rules and the dashboard against the exported metrics

const OPS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/ops");

/// One series selector of an expression: the metric and its label matchers. An `=~` matcher's
/// alternatives (`a|b`) are kept one by one: each names a label value that must exist.
#[derive(Debug, PartialEq)]
struct Selector {
    metric: String,
    labels: Vec<(String, String)>,
}

/// The `switchboard_*` selectors of a PromQL expression. Only this project's metrics start with
/// `switchboard_`, and no label value or function does, so the prefix finds every one.
fn selectors(expr: &str) -> Vec<Selector> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("switchboard_") {
        let from = &rest[at..];
        let len = from.find(|c: char| !ident(c)).unwrap_or(from.len());
        let metric = from[..len].to_owned();
        let mut labels = Vec::new();
        let after = &from[len..];
        if let Some(body) = after.strip_prefix('{') {
            let body = &body[..body.find('}').expect("a closed selector")];
            for matcher in body.split(',').map(str::trim).filter(|m| !m.is_empty()) {
                let (label, value, regex) = match matcher.split_once("=~") {
                    Some((l, v)) => (l, v, true),
                    None => match matcher.split_once('=') {
                        // `!=` and `!~` exclude: nothing has to exist for them.
                        Some((l, _)) if l.ends_with('!') => continue,
                        Some((l, v)) => (l, v, false),
                        None => panic!("unreadable matcher {matcher:?} in {expr}"),
                    },
                };
                let value = value.trim().trim_matches('"');
                // Grafana's variables select whatever the instance has.
                if value.starts_with('$') {
                    continue;
                }
                let values: Vec<&str> =
                    if regex { value.split('|').collect() } else { vec![value] };
                for v in values {
                    assert!(v.chars().all(ident), "a literal label value, not a pattern: {v}");
                    labels.push((label.trim().to_owned(), v.to_owned()));
                }
            }
        }
        out.push(Selector { metric, labels });
        rest = &from[len..];
    }
    out
}

/// The `expr:` of every rule in a rules file (single-line or a block scalar).
fn rule_expressions(yaml: &str) -> Vec<String> {
    let mut exprs = Vec::new();
    let mut lines = yaml.lines().peekable();
    while let Some(line) = lines.next() {
        let Some((indent, rest)) = line.split_once("expr:") else { continue };
        if !indent.trim().is_empty() && indent.trim() != "-" {
            continue;
        }
        let rest = rest.trim();
        if rest == "|" || rest == ">" || rest.starts_with("|-") || rest.starts_with(">-") {
            let mut block = String::new();
            while let Some(next) = lines.peek() {
                if next.len() - next.trim_start().len() <= indent.len() && !next.trim().is_empty() {
                    break;
                }
                block.push_str(lines.next().unwrap().trim());
                block.push(' ');
            }
            exprs.push(block);
        } else {
            exprs.push(rest.trim_matches(|c| c == '\'' || c == '"').to_owned());
        }
    }
    exprs
}

/// Every string under an `expr`, `query` or `definition` key of a Grafana dashboard.
fn dashboard_expressions(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr" | "query" | "definition", Value::String(s)) => out.push(s.clone()),
                    _ => dashboard_expressions(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| dashboard_expressions(v, out)),
        _ => {}
    }
}

/// The sample lines of an exposition, without their values.
fn samples(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .map(|s| s.0)
        .collect()
}

/// Whether some sample line is of `s.metric` and carries each of its labels.
fn exported(samples: &[&str], s: &Selector) -> bool {
    s.labels.iter().all(|(label, value)| {
        let pair = format!("{label}=\"{value}\"");
        samples.iter().any(|line| {
            let (name, labels) = line.split_once('{').unwrap_or((line, ""));
            name == s.metric && labels.contains(&pair)
        })
    }) && samples.iter().any(|line| line.split('{').next() == Some(s.metric.as_str()))
}

/// What a node exports with everything on: a single node's families plus cluster mode's.
fn full_exposition() -> String {
    let snapshot = Snapshot {
        hub: HubStats::default(),
        driver: DriverStats::default(),
        tiers: switchboard::Tier::ALL.iter().map(|&t| (t, Default::default())).collect(),
        bus: Some(Arc::new(BusMetrics::default())),
    };
    metrics::render(&snapshot, &HttpCounters::default()).expect("renders")
}

/// Every selector of the rules and the dashboard, with where it came from.
fn referenced() -> Vec<(String, Selector)> {
    let rules = std::fs::read_to_string(format!("{OPS}/alerts.yml")).expect("alerts.yml");
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{OPS}/dashboard.json")).unwrap())
            .expect("dashboard.json is JSON");
    let mut exprs: Vec<(String, String)> =
        rule_expressions(&rules).into_iter().map(|e| ("alerts.yml".to_owned(), e)).collect();
    let mut panels = Vec::new();
    dashboard_expressions(&dashboard, &mut panels);
    exprs.extend(panels.into_iter().map(|e| ("dashboard.json".to_owned(), e)));
    exprs
        .into_iter()
        .flat_map(|(file, e)| selectors(&e).into_iter().map(move |s| (format!("{file}: {e}"), s)))
        .collect()
}

#[test]
fn the_checker_reads_selectors_and_catches_a_name_or_label_that_is_not_exported() {
    let got = selectors(
        r#"sum without (kind) (increase(switchboard_audit_events_total{kind=~"flood|bus_mismatch", instance=~"$instance"}[5m])) / switchboard_max_fds"#,
    );
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].metric, "switchboard_audit_events_total");
    assert_eq!(
        got[0].labels,
        [("kind".into(), "flood".into()), ("kind".into(), "bus_mismatch".into())]
    );
    assert_eq!(got[1], Selector { metric: "switchboard_max_fds".into(), labels: vec![] });
    let text = full_exposition();
    let lines = samples(&text);
    assert!(got.iter().all(|s| exported(&lines, s)));
    for bogus in [
        "rate(switchboard_security_violation_total[5m])",
        r#"switchboard_connections_closed_total{reason="slow"}"#,
        r#"switchboard_audit_events_total{kind=~"flood|stale_id"}"#,
    ] {
        let s = selectors(bogus);
        assert!(!exported(&lines, &s[0]), "{bogus} must not pass");
    }
    let yaml = "groups:\n  - rules:\n      - alert: A\n        expr: up == 0\n      - alert: B\n        expr: |\n          rate(x[5m])\n            > 1\n        labels: {}\n";
    assert_eq!(rule_expressions(yaml), ["up == 0", "rate(x[5m]) > 1 "]);
}

#[test]
fn every_metric_and_label_value_the_rules_and_dashboard_use_is_exported() {
    let text = full_exposition();
    let lines = samples(&text);
    let refs = referenced();
    assert!(refs.len() > 60, "read the rules and the dashboard: {} selectors", refs.len());
    let missing: Vec<String> = refs
        .iter()
        .filter(|(_, s)| !exported(&lines, s))
        .map(|(from, s)| format!("{s:?} in {from}"))
        .collect();
    assert!(missing.is_empty(), "not exported by /metrics:\n{}", missing.join("\n"));
    // Each alert of the brief has a rule on its metric.
    let used: BTreeSet<&str> = refs.iter().map(|(_, s)| s.metric.as_str()).collect();
    for metric in [
        "switchboard_breakers_opened_total",
        "switchboard_connections_closed_total",
        "switchboard_stale_ids_refused_total",
        "switchboard_audit_events_total",
        "switchboard_resumes_total",
        "switchboard_bus_op_errors_total",
        "switchboard_bus_gaps_lost_total",
        "switchboard_open_fds",
        "switchboard_max_fds",
        "switchboard_round_trip_seconds_bucket",
    ] {
        assert!(used.contains(metric), "nothing watches {metric}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_nodes_metrics_hold_every_family_outside_cluster_mode_that_is_referenced() {
    let server = Server::start(|_| {}).await;
    let scrape = http_request(server.addr(), "GET", "/metrics", None, "").await;
    assert_eq!(scrape.status, 200);
    let live = samples(&scrape.body);
    let families = |text: &str| -> BTreeSet<String> {
        samples(text).iter().map(|l| l.split('{').next().unwrap().to_owned()).collect()
    };
    let single = families(&scrape.body);
    let full = families(&full_exposition());
    let cluster_only: BTreeSet<&String> = full.difference(&single).collect();
    assert!(
        cluster_only.iter().all(|f| f.contains("bus")
            || f.contains("resync")
            || f.contains("unavailable")
            || f.contains("publishes_failed")
            // Cluster presence's bookkeeping of the other nodes' sets (reads, signals, expiries).
            || f.starts_with("switchboard_presence_")),
        "{cluster_only:?}"
    );
    for (from, s) in referenced() {
        if !cluster_only.contains(&s.metric) {
            assert!(exported(&live, &s), "{s:?} ({from}) is not on a single node's /metrics");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Round-trip times over WebSockets

impl Server {
    async fn client(&self, claims: &Claims) -> Client {
        let url = format!("ws://{}/ws?token={}", self.addr(), self.keys.sign(claims));
        let stream = tokio::net::TcpStream::connect(self.addr()).await.unwrap();
        let (ws, _) = tokio_tungstenite::client_async(url, stream).await.expect("connects");
        let mut c = Client { ws };
        assert_eq!(c.recv().await["type"], "connected");
        c
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_pings_are_timed_to_their_pongs_and_exported_as_a_histogram() {
    let server = Server::start(|s| {
        s.hub.heartbeat.interval = Duration::from_millis(200);
        s.hub.resume_window = Duration::ZERO;
    })
    .await;
    let mut c = server.client(&Claims::new("acme", "alice", Duration::from_secs(600))).await;
    // Reading lets tungstenite answer the server's pings with pongs.
    let reader = tokio::spawn(async move {
        while let Some(Ok(m)) = c.ws.next().await {
            assert!(!matches!(m, Message::Close(_)), "the connection stays open");
        }
    });
    eventually("two round trips", || async {
        let s = server.running.handle.snapshot().await.unwrap();
        s.hub.round_trips.count() >= 2
    })
    .await;
    let s = server.running.handle.snapshot().await.unwrap();
    assert!(s.hub.round_trips.sum() < WAIT, "loopback round trips are short");
    let text = http_request(server.addr(), "GET", "/metrics", None, "").await.body;
    let count = text
        .lines()
        .find_map(|l| l.strip_prefix("switchboard_round_trip_seconds_count "))
        .and_then(|v| v.parse::<u64>().ok())
        .expect("the histogram is on /metrics");
    assert!(count >= 2, "{count}");
    reader.abort();
}

// ---------------------------------------------------------------------------------------------
// Labels from the token, and the lifetime cap

#[test]
fn tokens_carry_connection_labels_from_sid_client_id_and_labels() {
    let server_keys = switchboard_server::auth::Keys::new(support::SECRET.as_bytes()).unwrap();
    let mut claims = Claims::new("acme", "alice", Duration::from_secs(600));
    claims.sid = Some("s-91".into());
    claims.client_id = Some("web-app".into());
    claims.labels.insert("build".into(), "1.4.2".into());
    let identity = server_keys.verify(&server_keys.sign(&claims)).expect("valid");
    let labels = &identity.principal.labels;
    let pairs: Vec<(&str, &str)> = labels.iter().collect();
    assert_eq!(pairs, [("sid", "s-91"), ("client_id", "web-app"), ("build", "1.4.2")]);

    let refused = |claims: &Claims| server_keys.verify(&server_keys.sign(claims)).err();
    let mut twice = claims.clone();
    twice.labels.insert("sid".into(), "other".into());
    assert_eq!(refused(&twice), Some(AuthError::Invalid("a label is given twice")));
    let mut many = claims.clone();
    many.labels.extend((0..8).map(|i| (format!("k{i}"), "v".to_owned())));
    assert_eq!(refused(&many), Some(AuthError::Invalid("more than 8 connection labels")));
    let mut long = claims.clone();
    long.sid = Some("s".repeat(257));
    assert_eq!(refused(&long), Some(AuthError::Invalid("a label's value is over 256 bytes")));
    let mut bad_key = claims;
    bad_key.labels.insert("no spaces".into(), "v".into());
    assert_eq!(refused(&bad_key), Some(AuthError::Invalid("invalid label key")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_past_its_tiers_lifetime_is_closed_with_4009() {
    let server = Server::start(|s| {
        s.hub.tiers.free.max_connection_lifetime = Some(Duration::from_millis(300));
    })
    .await;
    let mut c = server.client(&Claims::new("acme", "alice", Duration::from_secs(600))).await;
    let close = tokio::time::timeout(WAIT, async {
        loop {
            match c.ws.next().await {
                Some(Ok(Message::Close(frame))) => break frame,
                Some(Ok(_)) => {}
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    })
    .await
    .expect("closed in time")
    .expect("with a code");
    assert_eq!(u16::from(close.code), 4009);
    assert_eq!(close.reason.as_str(), "max_lifetime");
    let s = server.running.handle.snapshot().await.unwrap();
    assert_eq!(s.hub.closed_by.max_lifetime, 1);
}
