//! The server's hardening (issue 10, items 8, 12 and 14): secrets too short to be safe, token
//! claims out of bounds, the Origin allowlist, the page's security headers, the metrics
//! exposition formats and what `/publish` reports.
//!
//! Each test starts its own server on a free port of 127.0.0.1, as `tests/e2e.rs` does.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};

use switchboard_testkit::ws::{
    Client, Response as Reply, http_request_with as request, http_status,
};

use switchboard_server::app::{self, Settings, StartError};
use switchboard_server::auth::{
    self, AuthError, Claims, KeyError, Keys, MAX_CLAIM_BYTES, MAX_ROOMS, MIN_SECRET_BYTES,
};

mod support;

use support::{ADMIN, SECRET, Server};

impl Server {
    fn sign(&self, claims: &Claims) -> String {
        self.keys.sign(claims)
    }

    fn token(&self, user: &str) -> String {
        self.sign(&Claims::new("acme", user, Duration::from_secs(3600)))
    }

    /// Opens a WebSocket with the token in an `Authorization` header and the given extra headers.
    async fn ws(
        &self,
        token: &str,
        headers: &[(&str, &str)],
    ) -> Result<Client, tungstenite::Error> {
        let mut request = format!("ws://{}/ws", self.addr()).into_client_request().unwrap();
        request.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
        for (name, value) in headers {
            let name = tungstenite::http::HeaderName::from_bytes(name.as_bytes()).unwrap();
            request.headers_mut().insert(name, value.parse().unwrap());
        }
        let stream = TcpStream::connect(self.addr()).await.unwrap();
        tokio_tungstenite::client_async(request, stream).await.map(|(ws, _)| Client { ws })
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        request(self.addr(), "GET", path, headers, "").await
    }
}

/// The 401 body of an upgrade with this token.
async fn refusal(server: &Server, token: &str) -> Value {
    let reply = server.get("/ws", &[("Authorization", &format!("Bearer {token}"))]).await;
    assert_eq!(reply.status, 401, "{}", reply.body);
    reply.json()
}

// ---------------------------------------------------------------------------------------------
// Item 8: secrets

#[test]
fn keys_refuse_secrets_under_32_bytes_and_admin_keys_under_16() {
    assert_eq!(Keys::new(b"").err(), Some(KeyError::SecretTooShort { len: 0 }));
    assert_eq!(Keys::new(&[b'x'; 31]).err(), Some(KeyError::SecretTooShort { len: 31 }));
    assert!(Keys::new(&[b'x'; MIN_SECRET_BYTES]).is_ok());
    assert_eq!(auth::check_admin_key(""), Err(KeyError::AdminKeyTooShort { len: 0 }));
    assert_eq!(
        auth::check_admin_key("fifteen bytes!!"),
        Err(KeyError::AdminKeyTooShort { len: 15 })
    );
    assert_eq!(auth::check_admin_key("sixteen bytes!!!"), Ok(()));
    let message = KeyError::SecretTooShort { len: 0 }.to_string();
    assert!(message.contains("0 bytes") && message.contains("at least 32"), "{message}");
    // The development secret passes its own check.
    assert!(Keys::new(auth::dev_secret().as_bytes()).is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_does_not_start_with_a_short_secret_or_admin_key() {
    for (secret, admin, expected) in [
        ("", ADMIN, KeyError::SecretTooShort { len: 0 }),
        ("short", ADMIN, KeyError::SecretTooShort { len: 5 }),
        (SECRET, "", KeyError::AdminKeyTooShort { len: 0 }),
    ] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        match app::start(listener, Settings::new(secret, admin)).await {
            Err(StartError::Keys(e)) => assert_eq!(e, expected),
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("started with secret {secret:?} and admin key {admin:?}"),
        }
    }
}

#[test]
fn the_binary_exits_non_zero_with_a_message_for_an_empty_secret() {
    for args in [
        &["--jwt-secret", "", "--listen", "127.0.0.1:0"][..],
        &["--jwt-secret", SECRET, "--admin-key", "short", "--listen", "127.0.0.1:0"][..],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args(args)
            .env_remove("SWITCHBOARD_JWT_SECRET")
            .env_remove("SWITCHBOARD_ADMIN_KEY")
            .output()
            .expect("the binary runs");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("at least"), "{stderr}");
        assert!(!String::from_utf8_lossy(&out.stdout).contains("listening"));
    }
}

// ---------------------------------------------------------------------------------------------
// Item 12: far-future expiry

#[test]
fn a_far_future_exp_is_refused_without_a_panic() {
    let keys = Keys::new(SECRET.as_bytes()).unwrap();
    for exp in [u64::MAX, 1 << 62, auth::unix_now() + 31 * 24 * 3600] {
        let token = keys.sign(&Claims { exp, ..Claims::new("acme", "alice", Duration::ZERO) });
        assert_eq!(
            keys.verify(&token).err(),
            Some(AuthError::Invalid("`exp` beyond the maximum session length")),
            "exp {exp}"
        );
    }
    // 29 days is within the default 30; a shorter maximum refuses it.
    let token = keys.sign(&Claims::new("acme", "alice", Duration::from_secs(29 * 24 * 3600)));
    assert!(keys.verify(&token).is_ok());
    let strict = keys.clone().with_max_session(Duration::from_secs(3600));
    assert!(strict.verify(&token).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_with_exp_2_pow_64_minus_1_gets_401_and_the_server_keeps_serving() {
    let server = Server::start(|_| {}).await;
    for exp in [u64::MAX, 1 << 62] {
        let token = server.sign(&Claims { exp, ..Claims::new("acme", "alice", Duration::ZERO) });
        let body = refusal(&server, &token).await;
        assert_eq!(body["error"], "invalid");
        assert_eq!(body["message"], "invalid token: `exp` beyond the maximum session length");
    }
    // A valid token still connects, and its session is what it says.
    let mut c = server.ws(&server.token("alice"), &[]).await.expect("connects");
    let connected = c.recv().await;
    let ms = connected["session_expires_in_ms"].as_u64().unwrap();
    assert!((3_590_000..=3_600_000).contains(&ms), "{connected}");
}

// ---------------------------------------------------------------------------------------------
// Item 14: nbf, claim limits, short 401 bodies

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbf_in_the_future_is_refused_and_in_the_past_accepted() {
    let server = Server::start(|_| {}).await;
    let base = Claims::new("acme", "alice", Duration::from_secs(3600));
    let later = server.sign(&Claims { nbf: Some(auth::unix_now() + 600), ..base.clone() });
    let body = refusal(&server, &later).await;
    assert_eq!(body["error"], "not_yet_valid");
    let earlier = server.sign(&Claims { nbf: Some(auth::unix_now() - 10), ..base });
    let mut c = server.ws(&earlier, &[]).await.expect("a past nbf connects");
    assert_eq!(c.recv().await["type"], "connected");
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(server.running.http.unauthorized_not_yet_valid.load(Relaxed), 1);
}

#[test]
fn overlong_claims_and_too_many_rooms_are_refused() {
    let keys = Keys::new(SECRET.as_bytes()).unwrap();
    let base = Claims::new("acme", "alice", Duration::from_secs(3600));
    let huge = "u".repeat(100_000);
    let verify = |c: Claims| keys.verify(&keys.sign(&c)).err();
    // The 100 KB sub is over the token size cap already; a sub just over the claim cap is not.
    assert_eq!(
        verify(Claims { sub: huge.clone(), ..base.clone() }),
        Some(AuthError::Invalid("token too long"))
    );
    let long = "x".repeat(MAX_CLAIM_BYTES + 1);
    let ok = "x".repeat(MAX_CLAIM_BYTES);
    assert!(verify(Claims { sub: ok.clone(), tenant: ok.clone(), ..base.clone() }).is_none());
    assert_eq!(
        verify(Claims { sub: long.clone(), ..base.clone() }),
        Some(AuthError::Invalid("`sub` or `tenant` too long"))
    );
    assert_eq!(
        verify(Claims { tenant: long.clone(), ..base.clone() }),
        Some(AuthError::Invalid("`sub` or `tenant` too long"))
    );
    assert_eq!(
        verify(Claims { roles: vec![long.clone()], ..base.clone() }),
        Some(AuthError::Invalid("empty or too long role"))
    );
    assert_eq!(
        verify(Claims { rooms: vec![long], ..base.clone() }),
        Some(AuthError::Invalid("empty or too long room name"))
    );
    let rooms = |n: usize| (0..n).map(|i| format!("r{i}")).collect::<Vec<_>>();
    assert!(verify(Claims { rooms: rooms(MAX_ROOMS), ..base.clone() }).is_none());
    assert_eq!(
        verify(Claims { rooms: rooms(MAX_ROOMS + 1), ..base }),
        Some(AuthError::Invalid("too many rooms"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_say_little_and_never_echo_the_parser() {
    let server = Server::start(|_| {}).await;
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let exp = auth::unix_now() + 60;
    let payload = b64(&format!(r#"{{"sub":"eve","tenant":"acme","exp":{exp}}}"#));
    let alg_none = format!("{}.{payload}.", b64(r#"{"alg":"none","typ":"JWT"}"#));
    let body = refusal(&server, &alg_none).await;
    let message = body["message"].as_str().unwrap();
    assert!(!message.contains("variant") && !message.contains("expected"), "{message}");
    assert_eq!(message, "invalid token: malformed token");

    // Claims of the wrong type: the serde message stays inside.
    let wrong = format!(
        "{}.{}.",
        b64(r#"{"alg":"HS256","typ":"JWT"}"#),
        b64(r#"{"sub":5,"tenant":"acme","exp":"soon"}"#)
    );
    let message = refusal(&server, &wrong).await["message"].as_str().unwrap().to_owned();
    assert!(message.len() < 60 && !message.contains("expected"), "{message}");

    let forged = Keys::new(b"not the secret, but just as long as one").unwrap().sign(&Claims::new(
        "acme",
        "eve",
        Duration::from_secs(60),
    ));
    assert_eq!(refusal(&server, &forged).await["message"], "invalid token: bad signature");

    let sub = "x".repeat(MAX_CLAIM_BYTES + 1);
    let long = server.sign(&Claims::new("acme", &sub, Duration::from_secs(60)));
    assert_eq!(
        refusal(&server, &long).await["message"],
        "invalid token: `sub` or `tenant` too long"
    );
}

// ---------------------------------------------------------------------------------------------
// Item 14: Origin allowlist

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_origin_allowlist_refuses_other_origins_with_403() {
    let server = Server::start(|s| {
        s.allowed_origins = vec!["https://App.example.com/".into(), "http://localhost:8080".into()]
    })
    .await;
    let token = server.token("alice");
    let evil =
        server.ws(&token, &[("origin", "https://evil.example")]).await.err().expect("refused");
    assert_eq!(http_status(evil), 403);
    let reply = server
        .get(
            "/ws",
            &[("Origin", "https://evil.example"), ("Authorization", &format!("Bearer {token}"))],
        )
        .await;
    assert_eq!(reply.json()["error"], "origin_not_allowed");
    // Listed origins (compared ignoring case and a trailing slash) and non-browser clients pass.
    for headers in
        [&[("origin", "https://app.example.com")][..], &[("origin", "http://localhost:8080")], &[]]
    {
        let mut c = server.ws(&token, headers).await.expect("allowed");
        assert_eq!(c.recv().await["type"], "connected");
    }
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(server.running.http.origin_refused.load(Relaxed), 2);
    let s = server.running.handle.snapshot().await.unwrap();
    assert_eq!(s.hub.connections_opened, 3, "a refused origin creates no connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_allowlist_any_origin_connects() {
    let server = Server::start(|_| {}).await;
    let mut c =
        server.ws(&server.token("alice"), &[("origin", "https://anywhere.example")]).await.unwrap();
    assert_eq!(c.recv().await["type"], "connected");
}

// ---------------------------------------------------------------------------------------------
// Item 14: the page's headers

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_is_sent_with_csp_and_framing_headers() {
    let server = Server::start(|_| {}).await;
    let reply = server.get("/", &[]).await;
    assert_eq!(reply.status, 200);
    let h = &reply.headers;
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["referrer-policy"], "no-referrer");
    assert_eq!(h["x-content-type-options"], "nosniff");
    let csp = &h["content-security-policy"];
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(csp.contains("connect-src 'self'"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    // The hash allows exactly the page's inline module; 'self' the client module it imports.
    let open = r#"<script type="module">"#;
    let start = reply.body.find(open).unwrap() + open.len();
    let end = reply.body.find("</script>").unwrap();
    let digest = Sha256::digest(&reply.body.as_bytes()[start..end]);
    let hash = base64::engine::general_purpose::STANDARD.encode(digest);
    assert!(csp.contains(&format!("script-src 'self' 'sha256-{hash}'")), "{csp}");
    assert!(reply.body.contains(r#"from "/switchboard-client.js""#));
    let module = server.get("/switchboard-client.js", &[]).await;
    assert_eq!(module.status, 200);
    assert!(module.headers["content-type"].starts_with("text/javascript"));
    assert!(module.body.contains("var Client = class"), "the compiled client");
}

// ---------------------------------------------------------------------------------------------
// Item 14: metrics

/// Families by `# TYPE` name, and sample names in order, of an exposition.
fn shape(text: &str) -> (BTreeMap<String, String>, Vec<String>) {
    let mut types = BTreeMap::new();
    let mut series = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(types.insert(name.to_owned(), kind.to_owned()).is_none(), "{line}");
        } else if !line.starts_with('#') {
            series.push(line.rsplit_once(' ').unwrap().0.to_owned());
        }
    }
    (types, series)
}

fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no {series}"))
        .parse()
        .unwrap()
}

/// What Prometheus 2.x and 3.x send: OpenMetrics preferred, 0.0.4 accepted.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_0_0_4_text_for_every_scraper_with_counters_typed_by_their_total_name() {
    let server = Server::start(|_| {}).await;
    let _alice = server.ws(&server.token("alice"), &[]).await.unwrap();

    // Whatever the scraper prefers (none, text/plain, Prometheus' OpenMetrics-first Accept), the
    // answer is the 0.0.4 text that every Prometheus reads, where a counter's TYPE names its
    // `_total` sample: nothing is mis-typed.
    let accepts =
        [None, Some("text/plain"), Some("text/plain;version=0.0.4"), Some(PROMETHEUS_ACCEPT)];
    for accept in accepts {
        let headers: Vec<(&str, &str)> = accept.map(|a| ("Accept", a)).into_iter().collect();
        let reply = server.get("/metrics", &headers).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.headers["content-type"], "text/plain; version=0.0.4; charset=utf-8");
        assert!(!reply.body.contains("# EOF"));
        let (types, series) = shape(&reply.body);
        assert_eq!(types["switchboard_connections_opened_total"], "counter");
        assert_eq!(types["switchboard_connections_active"], "gauge");
        assert!(!types.contains_key("switchboard_connections_opened"));
        for (name, kind) in &types {
            assert!(["counter", "gauge", "histogram"].contains(&kind.as_str()), "{name} {kind}");
            assert_eq!(kind == "counter", name.ends_with("_total"), "{name} is a {kind}");
        }
        assert_eq!(types["switchboard_round_trip_seconds"], "histogram");
        for s in &series {
            let name = s.split('{').next().unwrap();
            // A histogram's samples are its name with `_bucket`, `_sum` and `_count`.
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .filter_map(|suffix| name.strip_suffix(suffix))
                .find(|f| types.get(*f).is_some_and(|k| k == "histogram"))
                .unwrap_or(name);
            assert!(types.contains_key(family), "{name} sample without a TYPE of its own name");
        }
        assert_eq!(sample(&reply.body, "switchboard_connections_opened_total"), 1.0);
        // Rates per tier are gauges named as moving averages.
        assert_eq!(types["switchboard_tier_delivered_per_minute_moving_avg"], "gauge");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metric_series_come_in_the_same_order_at_every_scrape() {
    let server = Server::start(|_| {}).await;
    let first = shape(&server.get("/metrics", &[]).await.body).1;
    for _ in 0..5 {
        assert_eq!(shape(&server.get("/metrics", &[]).await.body).1, first);
    }
    let kinds: Vec<&String> =
        first.iter().filter(|s| s.starts_with("switchboard_audit_events")).collect();
    assert!(kinds.len() >= 17, "every audit kind has a series from the start: {kinds:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_violations_do_not_count_limit_hits() {
    let server = Server::start(|_| {}).await;
    let token = server.token("alice");
    // A free user has three connections; the fourth is a benign limit hit.
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut c = server.ws(&token, &[]).await.unwrap();
        assert_eq!(c.recv().await["type"], "connected");
        open.push(c);
    }
    assert_eq!(http_status(server.ws(&token, &[]).await.err().unwrap()), 429);
    let text = server.get("/metrics", &[]).await.body;
    assert_eq!(
        sample(&text, r#"switchboard_audit_events_total{kind="limit_user_connections"}"#),
        1.0
    );
    assert_eq!(sample(&text, "switchboard_security_violations_total"), 0.0);

    // A malformed frame is one.
    open[0].send(json!({"type": "launch"})).await;
    assert_eq!(open[0].recv().await["code"], "unknown_type");
    let text = server.get("/metrics", &[]).await.body;
    assert_eq!(sample(&text, "switchboard_security_violations_total"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_require_the_admin_key() {
    let server = Server::start(|s| s.metrics_require_admin = true).await;
    let reply = server.get("/metrics", &[]).await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.headers["www-authenticate"], "Bearer");
    let wrong = server.get("/metrics", &[("Authorization", "Bearer not-the-admin-key!")]).await;
    assert_eq!(wrong.status, 401);
    let reply = server.get("/metrics", &[("Authorization", &format!("Bearer {ADMIN}"))]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(sample(&reply.body, "switchboard_http_metrics_unauthorized_total"), 2.0);
    // Open by default.
    let open = Server::start(|_| {}).await;
    assert_eq!(open.get("/metrics", &[]).await.status, 200);
}

// ---------------------------------------------------------------------------------------------
// Item 14: /publish reports held events

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_reports_events_held_for_a_connection_in_its_resume_window() {
    let server = Server::start(|s| s.hub.resume_window = Duration::from_secs(5)).await;
    let mut c = server.ws(&server.token("alice"), &[]).await.unwrap();
    assert_eq!(c.recv().await["type"], "connected");
    // No first frame yet: the connection is in its resume window.
    let body = r#"{"tenant":"acme","user":"alice","kind":"notice"}"#;
    let reply = request(
        server.addr(),
        "POST",
        "/publish",
        &[("Authorization", &format!("Bearer {ADMIN}")), ("Content-Type", "application/json")],
        body,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let answer = reply.json();
    assert_eq!(answer["delivered"], 0, "{answer}");
    assert_eq!(answer["held"], 1, "{answer}");
    // Once it goes live, it gets the held event.
    c.send(json!({"type": "ping"})).await;
    let mut got = Vec::new();
    while got.len() < 2 {
        got.push(c.recv().await["type"].as_str().unwrap().to_owned());
    }
    assert!(got.contains(&"notice".to_owned()), "{got:?}");
}

// ---------------------------------------------------------------------------------------------
// Item 9: an event that could never be delivered is refused, and nobody is closed

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_of_an_event_larger_than_any_connection_may_hold_is_413_and_closes_nobody() {
    let server = Server::start(|s| s.hub.max_unwritten_bytes = 256 * 1024).await;
    let mut c = server.ws(&server.token("alice"), &[]).await.unwrap();
    assert_eq!(c.recv().await["type"], "connected");
    c.send(json!({"type": "ping"})).await;
    assert_eq!(c.recv().await["type"], "pong");
    let big = "x".repeat(300 * 1024);
    let body = json!({"tenant": "acme", "user": "alice", "kind": "tool_completed", "data": big});
    let publish = |body: String| {
        let addr = server.addr();
        async move {
            let auth = format!("Bearer {ADMIN}");
            let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
            request(addr, "POST", "/publish", &headers, &body).await
        }
    };
    let reply = publish(body.to_string()).await;
    assert_eq!(reply.status, 413, "{}", reply.body);
    // The connection is still open and still gets what fits.
    let small = json!({"tenant": "acme", "user": "alice", "kind": "tool_completed", "data": "ok"});
    let reply = publish(small.to_string()).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["delivered"], 1);
    let event = c.recv().await;
    assert_eq!(
        (event["type"].as_str(), event["data"].as_str()),
        (Some("tool_completed"), Some("ok"))
    );
}
