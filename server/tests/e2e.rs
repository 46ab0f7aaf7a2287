//! End-to-end tests of the server over real WebSockets on loopback.
//!
//! Each test starts its own server (the library's `app::start`, as the binary does) on a free
//! port of 127.0.0.1. Clients are tokio-tungstenite; plain HTTP requests
//! are written by hand.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use switchboard::{Envelope, EventKind, Target};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use switchboard_testkit::ws::{Client, RUN, WAIT, eventually, http_status, read_run};

use switchboard_server::auth::{self, Claims, Keys};

mod e2e_harness;
mod support;

use support::{ADMIN, Server};

// ---------------------------------------------------------------------------------------------
// Auth

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_bad_and_expired_tokens_get_401_and_create_nothing() {
    let server = Server::start(|_| {}).await;

    let missing = server.ws_with(None, None).await.err().expect("refused");
    assert_eq!(http_status(missing), 401);

    let forged = Keys::new(b"not-the-secret, but just as long as it").unwrap().sign(&Claims::new(
        "acme",
        "alice",
        Duration::from_secs(60),
    ));
    assert_eq!(http_status(server.ws_with(Some(&forged), None).await.err().expect("refused")), 401);

    assert_eq!(
        http_status(server.ws_with(Some("not.a.jwt"), None).await.err().expect("refused")),
        401
    );

    let expired =
        Claims { exp: auth::unix_now() - 3600, ..Claims::new("acme", "alice", Duration::ZERO) };
    let expired = server.keys.sign(&expired);
    assert_eq!(
        http_status(server.ws_with(Some(&expired), None).await.err().expect("refused")),
        401
    );

    // A plain GET without a token is refused before anything else, too.
    let res = server.http("GET", "/ws", None, "").await;
    assert_eq!(res.status, 401);
    assert_eq!(res.json()["error"], "missing");

    let s = server.snapshot().await;
    assert_eq!(s.hub.connections_opened, 0, "a refused token must create no connection");
    assert_eq!(s.hub.users_created, 0, "a refused token must create no user state");
    let http = &server.running.http;
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(http.unauthorized_missing.load(Relaxed), 2);
    assert_eq!(http.unauthorized_invalid.load(Relaxed), 2);
    assert_eq!(http.unauthorized_expired.load(Relaxed), 1);

    // A valid token, in the query…
    let token = server.token("acme", "alice", &["member"], &[]);
    let (_alice, connected) = server.live(&token).await;
    assert_eq!(connected["tenant"], "acme");
    assert_eq!(connected["user"], "alice");
    assert!(connected["session_expires_in_ms"].as_u64().unwrap() > 3_500_000);
    assert!(connected["streams"]["u"]["epoch"].is_u64());

    // …or as a bearer header.
    let mut request = format!("ws://{}/ws", server.addr()).into_client_request().unwrap();
    let bob = server.token("acme", "bob", &[], &[]);
    request.headers_mut().insert("authorization", format!("Bearer {bob}").parse().unwrap());
    let stream = TcpStream::connect(server.addr()).await.unwrap();
    let (ws, _) =
        tokio_tungstenite::client_async(request, stream).await.expect("header token works");
    let mut bob = Client { ws };
    let connected = bob.recv().await;
    assert_eq!(connected["type"], "connected");
    assert_eq!(connected["user"], "bob");

    let s = server.snapshot().await;
    assert_eq!(s.hub.connections_opened, 2);
    assert_eq!(s.hub.users_created, 2);
}

// ---------------------------------------------------------------------------------------------
// Agent runs

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_five_users_with_two_connections_each_get_exactly_their_own_runs() {
    let server = std::sync::Arc::new(Server::start(|_| {}).await);
    let mut tasks = Vec::new();
    for i in 0..25 {
        let server = server.clone();
        tasks.push(tokio::spawn(async move {
            // Three tenants, and the same user names repeat across them.
            let (tenant, user) = (format!("tenant-{}", i % 3), format!("user-{}", i / 3));
            let token = server.token(&tenant, &user, &[], &[]);
            let (a, ca) = server.live(&token).await;
            let (b, cb) = server.live(&token).await;
            assert_ne!(ca["conn_id"], cb["conn_id"]);
            (i, tenant, user, a, b)
        }));
    }
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await.unwrap());
    }
    // Every connection is live before any run starts, so each sees its user's whole run.
    let mut runs = Vec::new();
    for (i, tenant, user, mut a, mut b) in clients {
        let thread = format!("thread-{i}");
        a.send(json!({"type": "message", "thread_id": thread, "data": {"text": format!("question {i}")}}))
            .await;
        runs.push(tokio::spawn(async move {
            let ea = read_run(&mut a).await;
            let eb = read_run(&mut b).await;
            for (events, client) in [(&ea, &mut a), (&eb, &mut b)] {
                let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
                assert_eq!(kinds, RUN, "{tenant}/{user}");
                let run_id = &events[0]["run_id"];
                for (k, e) in events.iter().enumerate() {
                    assert_eq!(e["stream"], "u");
                    assert_eq!(e["thread_id"], thread.as_str());
                    assert_eq!(&e["run_id"], run_id);
                    assert_eq!(e["seq"].as_u64().unwrap(), k as u64 + 1, "in order, no gaps");
                }
                assert_eq!(events[0]["data"]["prompt"], format!("question {i}"));
                // Nothing else is on its way: no other user's event, no second run.
                client.sync().await;
            }
            assert_eq!(ea, eb, "both connections of a user see the same frames");
            (format!("{tenant}/{user}"), ea[0]["run_id"].as_str().unwrap().to_owned(), a, b)
        }));
    }
    let mut run_ids = HashSet::new();
    let mut users = HashSet::new();
    let mut open = Vec::new();
    for r in runs {
        let (user, run_id, a, b) = r.await.unwrap();
        open.push((a, b));
        assert!(users.insert(user));
        assert!(run_ids.insert(run_id), "every user had its own run");
    }
    assert_eq!(run_ids.len(), 25);
    let s = server.snapshot().await;
    assert_eq!(s.hub.connections_active, 50);
    assert_eq!(s.hub.inbound_messages, 25);
    assert_eq!(s.hub.publishes, 25 * 7);
}

// ---------------------------------------------------------------------------------------------
// Publishing

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_broadcast_via_publish_reaches_that_tenant_and_role_only() {
    let server = Server::start(|_| {}).await;
    let (mut alice, _) = server.live(&server.token("acme", "alice", &["member"], &["lobby"])).await;
    let (mut bob, _) = server.live(&server.token("acme", "bob", &["admin"], &["lobby"])).await;
    let (mut carol, _) = server.live(&server.token("globex", "carol", &["admin"], &[])).await;

    // The admin key guards the endpoint, and the body is checked.
    let body = r#"{"tenant":"acme","kind":"notice","data":{"n":1}}"#;
    assert_eq!(server.http("POST", "/publish", None, body).await.status, 401);
    assert_eq!(server.http("POST", "/publish", Some("wrong"), body).await.status, 401);
    assert_eq!(server.http("POST", "/publish", Some(ADMIN), r#"{"kind":"x"}"#).await.status, 400);
    let everyone = r#"{"everyone":true,"kind":"notice"}"#;
    assert_eq!(server.http("POST", "/publish", Some(ADMIN), everyone).await.status, 403);
    let reserved = r#"{"tenant":"acme","kind":"connected"}"#;
    assert_eq!(server.http("POST", "/publish", Some(ADMIN), reserved).await.status, 400);

    // The whole tenant.
    let res = server.http("POST", "/publish", Some(ADMIN), body).await;
    assert_eq!(res.status, 200, "{}", res.body);
    let published = res.json();
    assert_eq!(published["delivered"], 2);
    assert_eq!(published["stream"], "t");
    for c in [&mut alice, &mut bob] {
        let f = c.recv_event().await;
        assert_eq!((f["type"].as_str(), f["stream"].as_str()), (Some("notice"), Some("t")));
        assert_eq!(f["data"], json!({"n": 1}));
    }

    // One role of it.
    let res = server
        .http(
            "POST",
            "/publish",
            Some(ADMIN),
            r#"{"tenant":"acme","role":"admin","kind":"notice","data":{"n":2}}"#,
        )
        .await;
    assert_eq!(res.json()["delivered"], 1);
    let f = bob.recv_event().await;
    assert_eq!(f["data"], json!({"n": 2}));

    // A room, and one user.
    let res = server
        .http(
            "POST",
            "/publish",
            Some(ADMIN),
            r#"{"tenant":"acme","room":"lobby","kind":"notice","data":{"n":3}}"#,
        )
        .await;
    assert_eq!(res.json()["delivered"], 2);
    assert_eq!(res.json()["stream"], "r:lobby");
    for c in [&mut alice, &mut bob] {
        let f = c.recv_event().await;
        assert_eq!((f["stream"].as_str(), &f["data"]), (Some("r:lobby"), &json!({"n": 3})));
    }
    let res = server
        .http(
            "POST",
            "/publish",
            Some(ADMIN),
            r#"{"tenant":"globex","user":"carol","thread":"t1","kind":"agent_started","run":"r1","data":{"n":4}}"#,
        )
        .await;
    assert_eq!(res.json()["delivered"], 1);
    let f = carol.recv_event().await;
    assert_eq!(
        (f["type"].as_str(), f["thread_id"].as_str(), f["run_id"].as_str()),
        (Some("agent_started"), Some("t1"), Some("r1"))
    );

    // Nothing else reached anyone: alice never saw the admin broadcast, carol never saw acme's.
    for c in [&mut alice, &mut bob, &mut carol] {
        c.sync().await;
    }
}

// ---------------------------------------------------------------------------------------------
// Heartbeats

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_answering_pings_is_closed_with_the_heartbeat_code() {
    let server = Server::start(|s| {
        s.hub.heartbeat.interval = Duration::from_millis(150);
        s.hub.heartbeat.timeout = Duration::from_millis(150);
    })
    .await;
    let (mut silent, _) = server.live(&server.token("acme", "silent", &[], &[])).await;
    let (mut lively, _) = server.live(&server.token("acme", "lively", &[], &[])).await;

    // The lively client keeps reading, so tungstenite answers every ping; the silent one does
    // not read at all, so its pings go unanswered.
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let reader = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = &mut stopped => return lively,
                msg = lively.ws.next() => { msg.expect("lively stays open").expect("no error"); }
            }
        }
    });
    server
        .until("the silent client's heartbeat timeout", |s| s.hub.closed_by.heartbeat_timeout == 1)
        .await;
    assert_eq!(silent.close_code().await, 4000);

    // Some pings went to the lively client and it answered them; it is still open.
    server.until("a pong from the lively client", |s| s.hub.pongs_received >= 1).await;
    stop.send(()).unwrap();
    let mut lively = reader.await.unwrap();
    lively.sync().await;
    let s = server.snapshot().await;
    assert_eq!(s.hub.connections_active, 1);
    assert_eq!(s.hub.closed_by.heartbeat_timeout, 1);
}

// ---------------------------------------------------------------------------------------------
// Resume

fn note(tenant: &str, user: &str, n: u64) -> Envelope {
    Envelope::new(
        Target::User { tenant: tenant.into(), user: user.into() },
        EventKind::custom("note"),
    )
    .data(json!({ "n": n }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_with_resume_gets_exactly_the_missed_events() {
    let server = Server::start(|_| {}).await;
    let token = server.token("acme", "dave", &[], &[]);
    let (mut first, connected) = server.live(&token).await;
    let epoch = connected["streams"]["u"]["epoch"].as_u64().unwrap();
    let tenant_pos = connected["streams"]["t"].clone();
    for n in 1..=3 {
        server.publish(note("acme", "dave", n)).await;
    }
    for n in 1..=3 {
        let f = first.recv_event().await;
        assert_eq!((f["seq"].as_u64(), f["data"]["n"].as_u64()), (Some(n), Some(n)));
    }

    // The connection drops without a close frame.
    drop(first);
    server.until("the drop to be noticed", |s| s.hub.connections_active == 0).await;
    assert_eq!(server.snapshot().await.hub.closed_by.client_abnormal, 1);
    for n in 4..=6 {
        let p = server.publish(note("acme", "dave", n)).await;
        assert_eq!(p.delivered, 0, "nobody is connected; the user's stream keeps it");
    }

    let mut second = server.ws_with(Some(&token), None).await.unwrap();
    let connected = second.recv().await;
    assert_eq!(connected["type"], "connected");
    assert_eq!(connected["streams"]["u"], json!({"epoch": epoch, "seq": 6}));
    // Published between the connect and the client's resume: held back, then replayed in order.
    server.publish(note("acme", "dave", 7)).await;
    second
        .send(json!({"type": "resume", "positions": {"u": {"epoch": epoch, "seq": 3}, "t": tenant_pos}}))
        .await;
    for n in 4..=7 {
        let f = second.recv().await;
        assert_eq!(f["type"], "note", "{f}");
        assert_eq!((f["seq"].as_u64(), f["data"]["n"].as_u64()), (Some(n), Some(n)));
    }
    let resumed = second.recv().await;
    assert_eq!(resumed["type"], "resumed", "{resumed}");
    assert_eq!(resumed["recovered"], true);
    assert_eq!(resumed["streams"]["u"]["replayed"], 4);
    // Live again, in order.
    server.publish(note("acme", "dave", 8)).await;
    let f = second.recv().await;
    assert_eq!((f["seq"].as_u64(), f["data"]["n"].as_u64()), (Some(8), Some(8)));
    second.sync().await;
    let s = server.snapshot().await;
    assert_eq!(s.hub.resumes_recovered, 1);
    assert_eq!(s.hub.replayed, 4);
}

// ---------------------------------------------------------------------------------------------
// Backpressure

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_as_slow_consumer_while_others_keep_receiving() {
    let server = Server::start(|s| {
        s.hub.max_inflight_bytes = 32 * 1024;
        s.hub.max_unwritten_bytes = 128 * 1024;
    })
    .await;
    let slow_token = server.token("acme", "slow", &[], &[]);
    let mut slow = server.ws_with(Some(&slow_token), Some(4096)).await.unwrap();
    assert_eq!(slow.recv().await["type"], "connected");
    slow.sync().await;
    let (mut fast, _) = server.live(&server.token("acme", "fast", &[], &[])).await;

    // The fast client reads everything it is sent, concurrently.
    let received = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = received.clone();
    let fast_reader = tokio::spawn(async move {
        let mut expected = 1;
        loop {
            let f = fast.recv_event().await;
            assert_eq!(f["data"]["n"].as_u64(), Some(expected), "in order, nothing lost");
            counter.store(expected, std::sync::atomic::Ordering::SeqCst);
            expected += 1;
            if f["data"]["last"] == true {
                return fast;
            }
        }
    });

    // The slow client reads nothing while 16 KiB events pile up for it.
    let blob = "x".repeat(16 * 1024);
    let mut sent_fast = 0;
    for i in 0..4000 {
        if server.snapshot().await.hub.closed_by.slow_consumer == 1 {
            break;
        }
        assert!(i < 3999, "the slow consumer was never closed");
        let env = Envelope::new(
            Target::User { tenant: "acme".into(), user: "slow".into() },
            EventKind::custom("blob"),
        )
        .data(json!({ "blob": blob }));
        server.publish(env).await;
        sent_fast += 1;
        server.publish(note("acme", "fast", sent_fast)).await;
        // The fast client keeps up while the slow one is stuck.
        if sent_fast % 50 == 0 {
            let received = &received;
            eventually("the fast client to keep up", || async move {
                received.load(std::sync::atomic::Ordering::SeqCst) == sent_fast
            })
            .await;
        }
    }
    sent_fast += 1;
    server
        .publish(
            Envelope::new(
                Target::User { tenant: "acme".into(), user: "fast".into() },
                EventKind::custom("note"),
            )
            .data(json!({ "n": sent_fast, "last": true })),
        )
        .await;
    let mut fast =
        tokio::time::timeout(WAIT, fast_reader).await.expect("fast client done").unwrap();
    fast.sync().await;

    // Once it reads again, the slow client finds the close frame with the slow-consumer code
    // after what was already in flight.
    assert_eq!(slow.close_code().await, 4003);
    let s = server.snapshot().await;
    assert_eq!(s.hub.closed_by.slow_consumer, 1);
    assert_eq!(s.hub.connections_active, 1, "only the fast client is left");
}

// ---------------------------------------------------------------------------------------------
// Rooms refused at connect

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_rooms_of_a_token_are_summed_up_once_per_connect() {
    let server = Server::start(|s| s.hub.max_rooms_per_connection = 4).await;
    let rooms: Vec<String> = (0..10).map(|i| format!("room-{i}")).collect();
    let rooms: Vec<&str> = rooms.iter().map(String::as_str).collect();
    let (_alice, _) = server.live(&server.token("acme", "alice", &[], &rooms)).await;
    let (_bob, _) = server.live(&server.token("acme", "bob", &[], &rooms[..3])).await;
    let s = server.snapshot().await;
    assert_eq!(s.hub.rooms, 4, "alice joined four rooms, bob three of the same");
    assert_eq!(s.driver.rooms_refused, 6, "six of alice's ten rooms were refused");
    assert_eq!(s.driver.connects_with_refused_rooms, 1, "one summary line, for alice only");
    let m = parse_metrics(&server.http("GET", "/metrics", None, "").await.body);
    assert_eq!(metric(&m, "switchboard_rooms_refused_total", &[]), 6.0);
}

// ---------------------------------------------------------------------------------------------
// Metrics

/// A parsed exposition (Prometheus text 0.0.4, or OpenMetrics when it ends with `# EOF`):
/// `(name, labels) -> value`, checked line by line.
fn parse_metrics(text: &str) -> BTreeMap<(String, BTreeMap<String, String>), f64> {
    let mut samples = BTreeMap::new();
    let mut typed: BTreeMap<String, String> = BTreeMap::new();
    let mut helped = HashSet::new();
    let mut lines: Vec<&str> = text.lines().collect();
    if lines.last() != Some(&"# EOF") {
        lines.push("# EOF"); // 0.0.4 has no end marker
    }
    let valid_name = |n: &str| {
        !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    for line in &lines[..lines.len() - 1] {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            assert!(valid_name(name), "{line}");
            assert!(
                ["counter", "gauge", "histogram", "summary", "info", "unknown"].contains(&kind),
                "{line}"
            );
            assert!(
                typed.insert(name.to_owned(), kind.to_owned()).is_none(),
                "one TYPE per family"
            );
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, _) = rest.split_once(' ').expect("# HELP name text");
            helped.insert(name.to_owned());
            continue;
        }
        assert!(!line.starts_with('#'), "unexpected comment {line}");
        let (series, value) = line.rsplit_once(' ').expect("name value");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {line}"));
        let (name, labels) = match series.split_once('{') {
            None => (series, BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect("closing brace");
                let labels = body
                    .split(',')
                    .filter(|p| !p.is_empty())
                    .map(|pair| {
                        let (k, v) = pair.split_once('=').expect("label=value");
                        assert!(valid_name(k), "{line}");
                        let v =
                            v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).expect("quoted");
                        (k.to_owned(), v.to_owned())
                    })
                    .collect();
                (name, labels)
            }
        };
        assert!(valid_name(name), "{line}");
        let family = typed
            .keys()
            .filter(|f| {
                name == f.as_str()
                    || name.strip_prefix(f.as_str()).is_some_and(|s| s.starts_with('_'))
            })
            .max_by_key(|f| f.len())
            .unwrap_or_else(|| panic!("sample {name} has no # TYPE"));
        assert!(helped.contains(family), "family {family} has no # HELP");
        if typed[family] == "counter" {
            assert!(name.ends_with("_total") || name.ends_with("_created"), "{line}");
            assert!(value >= 0.0);
        }
        assert!(samples.insert((name.to_owned(), labels), value).is_none(), "duplicate {line}");
    }
    samples
}

fn metric(
    samples: &BTreeMap<(String, BTreeMap<String, String>), f64>,
    name: &str,
    labels: &[(&str, &str)],
) -> f64 {
    let labels: BTreeMap<String, String> =
        labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let key = (name.to_owned(), labels);
    *samples.get(&key).unwrap_or_else(|| panic!("no sample {key:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_as_prometheus_text_and_count_what_happened() {
    let server = Server::start(|_| {}).await;
    // Two refused upgrades, two connections, one of which leaves cleanly.
    assert_eq!(http_status(server.ws_with(None, None).await.err().unwrap()), 401);
    assert_eq!(http_status(server.ws_with(Some("garbage"), None).await.err().unwrap()), 401);
    let (mut alice, _) = server.live(&server.token("acme", "alice", &[], &[])).await;
    let (mut bob, _) = server.live(&server.token("acme", "bob", &[], &[])).await;
    bob.ws.close(None).await.unwrap();
    server.until("bob's clean close", |s| s.hub.closed_by.client_clean == 1).await;
    // One agent run, one accepted and one unauthorized publish.
    alice.send(json!({"type": "message", "data": {"text": "hi"}})).await;
    let run = read_run(&mut alice).await;
    assert_eq!(run.len(), 7);
    let body = r#"{"tenant":"acme","kind":"notice"}"#;
    assert_eq!(server.http("POST", "/publish", Some(ADMIN), body).await.status, 200);
    assert_eq!(server.http("POST", "/publish", None, body).await.status, 401);
    alice.recv_event().await;
    // One bad frame.
    alice.send(json!({"type": "launch"})).await;
    assert_eq!(alice.recv().await["code"], "unknown_type");

    let res = server.http("GET", "/metrics", None, "").await;
    assert_eq!(res.status, 200);
    assert!(
        res.headers["content-type"].starts_with("text/plain; version=0.0.4"),
        "{:?}",
        res.headers
    );
    let m = parse_metrics(&res.body);
    let get = |name: &str, labels: &[(&str, &str)]| metric(&m, name, labels);
    assert_eq!(get("switchboard_connections_opened_total", &[]), 2.0);
    assert_eq!(get("switchboard_connections_active", &[]), 1.0);
    assert_eq!(get("switchboard_connections_closed_total", &[("reason", "client_clean")]), 1.0);
    assert_eq!(
        get("switchboard_connections_closed_total", &[("reason", "heartbeat_timeout")]),
        0.0
    );
    assert_eq!(get("switchboard_users_created_total", &[]), 2.0);
    assert_eq!(get("switchboard_users_active", &[]), 1.0);
    assert_eq!(get("switchboard_users_detached", &[]), 1.0);
    assert_eq!(get("switchboard_tenants", &[]), 1.0);
    assert_eq!(get("switchboard_rooms", &[]), 0.0);
    assert_eq!(get("switchboard_http_unauthorized_total", &[("reason", "missing")]), 1.0);
    assert_eq!(get("switchboard_http_unauthorized_total", &[("reason", "invalid")]), 1.0);
    assert_eq!(get("switchboard_http_unauthorized_total", &[("reason", "expired")]), 0.0);
    assert_eq!(get("switchboard_http_publish_requests_total", &[("outcome", "accepted")]), 1.0);
    assert_eq!(get("switchboard_http_publish_requests_total", &[("outcome", "unauthorized")]), 1.0);
    // Seven agent events and one notice.
    assert_eq!(get("switchboard_publishes_total", &[]), 8.0);
    assert_eq!(get("switchboard_inbound_messages_total", &[]), 1.0);
    assert_eq!(get("switchboard_protocol_errors_total", &[]), 1.0);
    assert_eq!(get("switchboard_audit_events_total", &[("kind", "malformed_frame")]), 1.0);
    // The rest agree with the hub's own stats.
    let s = server.snapshot().await;
    assert_eq!(get("switchboard_frames_received_total", &[]), s.hub.frames_received as f64);
    assert_eq!(get("switchboard_deliveries_total", &[]), s.hub.deliveries as f64);
    assert!(get("switchboard_written_bytes_total", &[]) > 0.0);
    assert!(get("switchboard_tier_delivered_per_minute_moving_avg", &[("tier", "free")]) >= 0.0);
}

// ---------------------------------------------------------------------------------------------
// Shutdown

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_every_connection_with_the_going_away_code() {
    let server = Server::start(|_| {}).await;
    let (mut a, _) = server.live(&server.token("acme", "alice", &[], &[])).await;
    let (mut b, _) = server.live(&server.token("globex", "carol", &[], &[])).await;
    let addr = server.addr();
    let handle = server.running.handle.clone();
    let shutdown = tokio::spawn(server.running.shutdown());
    assert_eq!(a.close_code().await, 4006);
    assert_eq!(b.close_code().await, 4006);
    tokio::time::timeout(WAIT, shutdown).await.expect("shutdown finishes").unwrap();
    let s = handle.snapshot().await.unwrap();
    assert_eq!(s.hub.closed_by.server_shutdown, 2);
    assert_eq!(s.hub.connections_active, 0);
    assert!(TcpStream::connect(addr).await.is_err(), "the listener is gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_presence_shows_who_is_in_the_lobby_with_their_names() {
    let server = Server::start(|s| {
        let presence = s.hub.presence.as_mut().expect("the server runs room presence");
        presence.grace = Duration::from_millis(300);
        presence.flush_interval = Duration::from_millis(50);
    })
    .await;
    let token = |user: &str, name: &str| {
        server.keys.sign(&Claims {
            rooms: vec!["lobby".into()],
            name: Some(name.into()),
            ..Claims::new("acme", user, Duration::from_secs(3600))
        })
    };
    let (mut alice, _) = server.live(&token("alice", "Alice A.")).await;
    // Alice's own join reaches her in the first batch.
    let diff = alice.recv_event().await;
    assert_eq!(
        (diff["type"].as_str(), diff["scope"].as_str()),
        (Some("presence_diff"), Some("r:lobby"))
    );
    assert_eq!(diff["joins"], json!([{"user": "alice", "meta": {"name": "Alice A."}}]));

    let (mut bob, _) = server.live(&token("bob", "Bob")).await;
    let diff = alice.recv_event().await;
    assert_eq!(diff["joins"], json!([{"user": "bob", "meta": {"name": "Bob"}}]), "{diff}");
    bob.send(json!({"type": "presence", "scope": "r:lobby"})).await;
    // Bob's own join may come first, in the batch.
    let snap = loop {
        let f = bob.recv_event().await;
        if f["type"] == "presence" {
            break f;
        }
        assert_eq!(f["type"], "presence_diff", "{f}");
    };
    let users: Vec<&str> =
        snap["members"].as_array().unwrap().iter().map(|m| m["user"].as_str().unwrap()).collect();
    assert_eq!((snap["count"].as_u64(), users), (Some(2), vec!["alice", "bob"]));
    bob.send(json!({"type": "presence", "scope": "r:elsewhere"})).await;
    let mut refused = bob.recv_event().await;
    while refused["type"] == "presence_diff" {
        refused = bob.recv_event().await;
    }
    assert_eq!(refused["code"], "no_presence", "{refused}");

    // Bob goes: alice hears it once the grace is over.
    drop(bob);
    let diff = alice.recv_event().await;
    assert_eq!((diff["joins"].clone(), diff["leaves"].clone()), (json!([]), json!(["bob"])));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_publish_answers_each_envelope_and_delivers_in_order() {
    let server = Server::start(|_| {}).await;
    let (mut alice, _) = server.live(&server.token("acme", "alice", &[], &[])).await;
    let batch = json!([
        {"tenant": "acme", "user": "alice", "kind": "notice", "data": {"n": 1}},
        {"tenant": "acme", "user": "alice", "room": "lobby", "kind": "notice"},
        {"tenant": "acme", "user": "alice", "kind": "notice", "data": {"n": 2}},
        {"kind": "notice"},
    ]);
    let res = server.http("POST", "/publish", Some(ADMIN), &batch.to_string()).await;
    assert_eq!(res.status, 200, "{}", res.body);
    let body: Value = serde_json::from_str(&res.body).unwrap();
    let results = body["results"].as_array().unwrap();
    let statuses: Vec<u64> = results.iter().map(|r| r["status"].as_u64().unwrap()).collect();
    assert_eq!(statuses, [200, 400, 200, 400], "{body}");
    assert_eq!(results[1]["error"], "bad_target");
    assert_eq!(results[3]["error"], "bad_target");
    assert_eq!(results[2]["seq"].as_u64(), results[0]["seq"].as_u64().map(|s| s + 1));
    for n in [1, 2] {
        let f = alice.recv_event().await;
        assert_eq!((f["type"].as_str(), f["data"]["n"].as_u64()), (Some("notice"), Some(n)));
    }
    alice.sync().await;

    // A retried envelope with its key is published once; a key over 256 bytes is refused.
    let keyed =
        json!({"tenant": "acme", "user": "alice", "kind": "notice", "idempotency_key": "k-1"});
    let first = server.http("POST", "/publish", Some(ADMIN), &keyed.to_string()).await.json();
    let again = server.http("POST", "/publish", Some(ADMIN), &keyed.to_string()).await.json();
    assert_eq!(
        (first["duplicate"].as_bool(), again["duplicate"].as_bool()),
        (Some(false), Some(true))
    );
    assert_eq!(again["seq"], first["seq"], "the first publish's position");
    assert_eq!(alice.recv_event().await["type"], "notice");
    alice.sync().await;
    let long = json!({"tenant": "acme", "kind": "notice", "idempotency_key": "k".repeat(257)});
    let res = server.http("POST", "/publish", Some(ADMIN), &long.to_string()).await;
    assert_eq!(
        (res.status, res.json()["error"].as_str()),
        (400, Some("bad_target")),
        "{}",
        res.body
    );

    // Bounds: an empty batch and one over the limit are refused whole.
    let empty = server.http("POST", "/publish", Some(ADMIN), "[]").await;
    assert_eq!(empty.status, 400);
    let one = json!({"tenant": "acme", "kind": "notice"});
    let too_many = Value::Array(vec![one; switchboard_server::http::MAX_BATCH + 1]);
    let res = server.http("POST", "/publish", Some(ADMIN), &too_many.to_string()).await;
    assert_eq!((res.status, res.body.contains("bad_batch")), (400, true), "{}", res.body);
    alice.sync().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_data_reaches_the_client_as_written_compacted_with_secrets_redacted() {
    let server = Server::start(|_| {}).await;
    let (mut alice, _) = server.live(&server.token("acme", "alice", &[], &[])).await;
    // Written by hand: key order, number spelling, an escaped secret key and whitespace are what
    // the raw path must keep (or drop) exactly, with no tree built in between.
    let body = r#"{"tenant": "acme", "user": "alice", "kind": "notice", "data": {
        "z": 1.50, "a": [1e3, "x y"],
        "API_KEY": {"nested": "sk-1"}, "pass\u0077ord": "hunter2", "list": [{"token": 7}]
    }}"#;
    let res = server.http("POST", "/publish", Some(ADMIN), body).await;
    assert_eq!(res.status, 200, "{}", res.body);
    let text = match alice.next_message().await {
        tungstenite::Message::Text(text) => text.to_string(),
        other => panic!("expected the event, got {other:?}"),
    };
    let data = &text[text.find(r#","data":"#).expect("a data field") + 8..text.len() - 1];
    assert_eq!(
        data,
        r#"{"z":1.50,"a":[1e3,"x y"],"API_KEY":"[redacted]","pass\u0077ord":"[redacted]","list":[{"token":"[redacted]"}]}"#,
        "{text}"
    );
    assert!(!text.contains("sk-1") && !text.contains("hunter2"), "{text}");

    // `null` data is no data; data deeper than the limit is refused.
    let none = r#"{"tenant": "acme", "user": "alice", "kind": "notice", "data": null}"#;
    assert_eq!(server.http("POST", "/publish", Some(ADMIN), none).await.status, 200);
    let f = alice.recv_event().await;
    assert!(f.get("data").is_none(), "{f}");
    let deep = format!(
        r#"{{"tenant": "acme", "user": "alice", "kind": "notice", "data": {}{}}}"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    let res = server.http("POST", "/publish", Some(ADMIN), &deep).await;
    assert_eq!(res.status, 400, "{}", res.body);
    alice.sync().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_with_an_id_is_acknowledged_before_its_run_starts() {
    let server = Server::start(|_| {}).await;
    let (mut alice, _) = server.live(&server.token("acme", "alice", &[], &[])).await;
    let (mut other_tab, _) = server.live(&server.token("acme", "alice", &[], &[])).await;
    alice
        .send(json!({"type": "message", "id": "q-1", "thread_id": "t1", "data": {"text": "hi"}}))
        .await;
    let ack = alice.recv_event().await;
    assert_eq!((ack["type"].as_str(), ack["id"].as_str()), (Some("reply"), Some("q-1")), "{ack}");
    assert_eq!(ack["data"]["accepted"], true);
    let run = ack["data"]["run_id"].as_str().expect("the ack names the run").to_owned();
    let events = read_run(&mut alice).await;
    assert!(events.iter().all(|e| e["run_id"] == run.as_str()), "{events:?}");
    // The other tab sees the run, never the ack: a reply goes to the asking connection only.
    let seen = read_run(&mut other_tab).await;
    assert_eq!(seen.len(), events.len());
    other_tab.sync().await;
    // A bad id is refused like any invalid field.
    alice.send(json!({"type": "message", "id": 5, "data": {}})).await;
    let refused = alice.recv_event().await;
    assert_eq!(
        (refused["code"].as_str(), refused["type"].as_str()),
        (Some("invalid_field"), Some("error"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_refreshes_its_session_with_a_new_token_and_only_its_own() {
    let server = Server::start(|_| {}).await;
    let opened_with = server.token("acme", "alice", &[], &[]);
    let (mut alice, connected) = server.live(&opened_with).await;
    let before = connected["session_expires_in_ms"].as_u64().unwrap();
    let longer = server.keys.sign(&Claims::new("acme", "alice", Duration::from_secs(7200)));
    alice.send(json!({"type": "refresh", "token": longer})).await;
    let refreshed = alice.recv_event().await;
    assert_eq!(refreshed["type"], "refreshed", "{refreshed}");
    let after = refreshed["session_expires_in_ms"].as_u64().unwrap();
    assert!(after > before + 3_000_000, "{before} -> {after}");

    // Another user's token, a token that does not extend the session (the same one again
    // included: its `exp` is whole seconds, the session's end is not), garbage: refused, audited.
    let bob = server.keys.sign(&Claims::new("acme", "bob", Duration::from_secs(9000)));
    let shorter = server.keys.sign(&Claims::new("acme", "alice", Duration::from_secs(600)));
    let refusals = [
        (bob, "another"),
        (shorter, "extend"),
        (longer, "extend"),
        (opened_with, "extend"),
        ("x.y.z".to_owned(), "invalid"),
    ];
    let refused_count = refusals.len() as u64;
    for (token, why) in refusals {
        alice.send(json!({"type": "refresh", "token": token})).await;
        let refused = alice.recv_event().await;
        assert_eq!(refused["code"], "refresh_refused", "{refused}");
        assert!(refused["message"].as_str().unwrap().contains(why), "{refused}");
    }
    let s = server.snapshot().await;
    assert_eq!((s.hub.sessions_refreshed, s.hub.refreshes_refused), (1, refused_count));
    assert_eq!(s.driver.audits.get("refresh_refused"), Some(&refused_count));
    alice.sync().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_development_token_route_re_signs_a_valid_token_and_only_when_enabled() {
    let server = Server::start(|s| s.demo_token_ttl = Some(Duration::from_secs(7200))).await;
    let old = server.keys.sign(&Claims {
        rooms: vec!["lobby".into()],
        name: Some("Alice".into()),
        ..Claims::new("acme", "alice", Duration::from_secs(600))
    });
    let res = server.http("POST", "/demo/token", Some(&old), "").await;
    assert_eq!(res.status, 200, "{}", res.body);
    let fresh = res.json()["token"].as_str().unwrap().to_owned();
    let claims = server.keys.verified_claims(&fresh).unwrap();
    let before = server.keys.verified_claims(&old).unwrap();
    assert_eq!(
        (claims.sub.as_str(), claims.tenant.as_str(), &claims.rooms),
        ("alice", "acme", &before.rooms)
    );
    assert_eq!(claims.name.as_deref(), Some("Alice"));
    assert!(claims.exp >= before.exp + 6000, "{} vs {}", claims.exp, before.exp);
    assert_eq!(server.http("POST", "/demo/token", Some("x.y.z"), "").await.status, 401);
    assert_eq!(server.http("POST", "/demo/token", None, "").await.status, 401);

    let production = Server::start(|_| {}).await;
    assert_eq!(production.http("POST", "/demo/token", Some(&old), "").await.status, 404);
}
