//! The hub's hot paths, each measured side by side with the baseline (`baseline/mod.rs`, a plain
//! port of the origin documents' design) in the same run.
//!
//! Every benchmark group has two functions, `switchboard` and `baseline`, doing the same work
//! through each one's public API; after the groups, the run prints one table with the baseline's
//! median divided by switchboard's.
//!
//! What is timed: the call and the drain of everything it queued (`poll_action` until `None`,
//! dropping each action, as a transport would after writing it). What is not: building inputs
//! (envelopes are cloned before the clock starts, because publishing consumes them) and the
//! transport's `written` acknowledgements, which are replayed between timed chunks so that
//! backpressure never engages (it would otherwise skip or close after ~1 MiB per connection).
//!
//! Cluster mode (issue 11) has groups of its own, `cluster_*`, whose two functions are `local` (a
//! publish on a single-node hub) and `cluster` (the same work on a clustered hub: one
//! [`Hub::bus_message`] fanned out to the same connections, or a clustered publish); a second
//! table gives cluster ÷ local.
//!
//! Run: `cargo bench --bench hub -- --warm-up-time 1 --measurement-time 3`.

mod baseline;
mod workload;

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use criterion::{BenchmarkGroup, Criterion, Throughput, measurement::WallTime};
use serde_json::{Value, json};
use switchboard::{
    Action, Audience, BusReply, Config, ConnId, DisconnectReason, Envelope, EventKind, Hub, OpId,
    Payload, Principal, RawData, StreamPos, Target, Tier,
};

use baseline::{Baseline, BaselineConfig, Message, Out, To};
use workload::cluster::{EPOCH, bus_payload, clustered, settle};
use workload::{TENANT, envelope, message};

/// Iterations timed back to back before the `written` acknowledgements are replayed: at most
/// this many frames (~450 bytes each) are unacknowledged on any connection, far below the soft
/// limit (128 KiB).
const CHUNK: u64 = 128;

fn hub_config() -> Config {
    Config { max_connections: 1_100_000, max_detached_users: 1_100_000, ..Config::default() }
}

fn baseline_config() -> BaselineConfig {
    BaselineConfig { max_connections: 1_100_000, ..BaselineConfig::default() }
}

fn no_redaction(mut cfg: Config) -> Config {
    cfg.redact_keys = Vec::new();
    cfg
}

fn drain(hub: &mut Hub) -> usize {
    let mut n = 0;
    while let Some(action) = hub.poll_action() {
        black_box(&action);
        n += 1;
    }
    n
}

/// Drains and counts deliveries.
fn drain_delivered(hub: &mut Hub) -> usize {
    let mut n = 0;
    while let Some(action) = hub.poll_action() {
        n += usize::from(matches!(action, Action::Deliver { .. }));
    }
    n
}

fn drain_baseline(b: &Baseline) -> usize {
    let mut n = 0;
    b.drain(|id, out| {
        black_box((id, &out));
        n += 1;
    });
    n
}

/// The transport flushed everything delivered to these connections.
fn acknowledge(hub: &mut Hub, now: Instant, ids: &[ConnId]) {
    for &id in ids {
        hub.written(now, id, usize::MAX >> 1).expect("open connection");
    }
}

fn user_target(user: &str) -> Target {
    Target::User { tenant: TENANT.into(), user: user.into() }
}

/// Times `run` over `iters` fresh inputs made by `make` (outside the clock), in chunks, and runs
/// `between` (the `written` acknowledgements) outside the clock after each chunk.
fn timed<S, I>(
    state: &mut S,
    iters: u64,
    mut make: impl FnMut() -> I,
    mut run: impl FnMut(&mut S, I),
    mut between: impl FnMut(&mut S),
) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = iters;
    let mut inputs = Vec::with_capacity(CHUNK as usize);
    while left > 0 {
        let n = left.min(CHUNK);
        inputs.extend((0..n).map(|_| make()));
        let start = Instant::now();
        for input in inputs.drain(..) {
            run(state, input);
        }
        total += start.elapsed();
        between(state);
        left -= n;
    }
    total
}

/// Publishes clones of `env` and drains, acknowledging `ids`' deliveries between chunks.
fn bench_hub_publish(
    g: &mut BenchmarkGroup<'_, WallTime>,
    hub: &mut Hub,
    now: Instant,
    env: &Envelope,
    ids: &[ConnId],
) {
    g.bench_function("switchboard", |bench| {
        bench.iter_custom(|iters| {
            timed(
                hub,
                iters,
                || env.clone(),
                |hub, e| {
                    black_box(hub.publish(now, e).unwrap());
                    drain(hub);
                },
                |hub| acknowledge(hub, now, ids),
            )
        })
    });
}

/// Publishes clones of `msg` to `to()` and drains.
fn bench_baseline_publish<'t>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    b: &Baseline,
    now: Instant,
    msg: &Message,
    to: impl Fn() -> To<'t>,
) {
    g.bench_function("baseline", |bench| {
        bench.iter_custom(|iters| {
            timed(
                &mut (),
                iters,
                || msg.clone(),
                |_, m| {
                    black_box(b.publish(now, to(), m));
                    drain_baseline(b);
                },
                |_| {},
            )
        })
    });
}

fn group<'a>(c: &'a mut Criterion, name: &str, elements: u64) -> BenchmarkGroup<'a, WallTime> {
    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Elements(elements));
    g
}

/// Connects `n` background users of one connection each (the hub and the baseline are never
/// empty when measured).
fn populate(hub: &mut Hub, b: &Baseline, now: Instant, prefix: &str, n: usize) -> Vec<ConnId> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let user = format!("{prefix}{i}");
        ids.push(hub.connect(now, Principal::new(TENANT, user.as_str())).unwrap());
        b.connect(now, TENANT, &user).unwrap();
        if i % 1024 == 0 {
            drain(hub);
            drain_baseline(b);
        }
    }
    drain(hub);
    drain_baseline(b);
    ids
}

// ---------------------------------------------------------------------------------------------

/// Connect + disconnect of returning users (their state is held, detached, between visits), with
/// 10,000 other users connected.
fn churn(c: &mut Criterion, name: &str) {
    let now = Instant::now();
    let mut hub = Hub::new(hub_config()).unwrap();
    let b = Baseline::new(baseline_config());
    populate(&mut hub, &b, now, "bg", 10_000);
    let users: Vec<String> = (0..1000).map(|i| format!("returning-{i}")).collect();
    let principals: Vec<Principal> = users.iter().map(|u| Principal::new(TENANT, &**u)).collect();
    for (p, u) in principals.iter().zip(&users) {
        let id = hub.connect(now, p.clone()).unwrap();
        hub.disconnect(now, id, DisconnectReason::Clean).unwrap();
        let id = b.connect(now, TENANT, u).unwrap();
        b.disconnect(now, id);
    }
    drain(&mut hub);
    drain_baseline(&b);

    let mut g = group(c, name, 1);
    let mut i = 0;
    g.bench_function("switchboard", |bench| {
        bench.iter(|| {
            i = (i + 1) % principals.len();
            let id = hub.connect(now, principals[i].clone()).unwrap();
            drain(&mut hub);
            hub.disconnect(now, id, DisconnectReason::Clean).unwrap();
            drain(&mut hub);
        })
    });
    g.bench_function("baseline", |bench| {
        bench.iter(|| {
            i = (i + 1) % users.len();
            let id = b.connect(now, TENANT, &users[i]).unwrap();
            drain_baseline(&b);
            b.disconnect(now, id);
            drain_baseline(&b);
        })
    });
    g.finish();
}

/// A publish to one user with `conns` connections, among 10,000 other users.
fn publish_user(c: &mut Criterion, name: &str, conns: usize, redact: bool) {
    let now = Instant::now();
    let cfg = if redact { hub_config() } else { no_redaction(hub_config()) };
    let bcfg = BaselineConfig {
        redact_keys: if redact { BaselineConfig::default().redact_keys } else { Vec::new() },
        ..baseline_config()
    };
    let mut hub = Hub::new(cfg).unwrap();
    let b = Baseline::new(bcfg);
    populate(&mut hub, &b, now, "bg", 10_000);
    let ids: Vec<ConnId> =
        (0..conns).map(|_| hub.connect(now, Principal::new(TENANT, "alice")).unwrap()).collect();
    for _ in 0..conns {
        b.connect(now, TENANT, "alice").unwrap();
    }
    drain(&mut hub);
    drain_baseline(&b);
    // The work is what we think it is.
    let published = hub.publish(now, envelope(user_target("alice"))).unwrap();
    assert_eq!(published.delivered, conns);
    let frame = std::iter::from_fn(|| hub.poll_action())
        .find_map(|a| match a {
            Action::Deliver { frame, .. } => Some(frame),
            _ => None,
        })
        .unwrap();
    assert_eq!(frame.as_str().contains("[redacted]"), redact);
    acknowledge(&mut hub, now, &ids);
    assert_eq!(b.publish(now, To::User { tenant: TENANT, user: "alice" }, message()), conns);
    drain_baseline(&b);

    let mut g = group(c, name, conns as u64);
    let env = envelope(user_target("alice"));
    bench_hub_publish(&mut g, &mut hub, now, &env, &ids);
    bench_baseline_publish(&mut g, &b, now, &message(), || To::User {
        tenant: TENANT,
        user: "alice",
    });
    g.finish();
}

/// The data of a `POST /publish` as it arrives (text), published to one connection with
/// redaction on: parsed into a [`Value`] first (`parsed`, the path before raw payloads), or kept
/// as [`RawData`] (`raw`, the server's path now). Both include the parse and the drop.
fn publish_body(c: &mut Criterion, name: &str) {
    const BODY: &str = r#"{"tool": "web_search", "args": {"query": "sans-io websocket hubs",
        "limit": 10}, "api_key": "sk-live-0123456789", "results": [
        {"title": "One", "url": "https://example.com/1", "score": 0.93},
        {"title": "Two", "url": "https://example.com/2", "score": 0.88},
        {"title": "Three", "url": "https://example.com/3", "score": 0.71}], "elapsed_ms": 412}"#;
    let now = Instant::now();
    let mut hub = Hub::new(hub_config()).unwrap();
    let b = Baseline::new(baseline_config());
    populate(&mut hub, &b, now, "bg", 10_000);
    let ids = vec![hub.connect(now, Principal::new(TENANT, "alice")).unwrap()];
    drain(&mut hub);
    let env = |data: Payload| {
        let mut e = Envelope::new(user_target("alice"), EventKind::ToolCompleted);
        e.data = data;
        e
    };
    // The work is what we think it is: the same frame either way, redacted.
    let frames: Vec<String> = [
        Payload::Json(serde_json::from_str::<Value>(BODY).unwrap()),
        Payload::Raw(RawData::new(BODY).unwrap()),
    ]
    .into_iter()
    .map(|data| {
        assert_eq!(hub.publish(now, env(data)).unwrap().delivered, 1);
        let frame = std::iter::from_fn(|| hub.poll_action())
            .find_map(|a| match a {
                Action::Deliver { frame, .. } => Some(frame),
                _ => None,
            })
            .unwrap();
        acknowledge(&mut hub, now, &ids);
        frame.as_str().split_once(r#","data":"#).unwrap().1.to_owned()
    })
    .collect();
    assert!(frames[0].contains("[redacted]") && frames[1].contains("[redacted]"));
    // Keys come out in a different order (a parsed object's are sorted), so compare as JSON.
    let parse = |s: &str| serde_json::from_str::<Value>(&s[..s.len() - 1]).unwrap();
    assert_eq!(parse(&frames[0]), parse(&frames[1]));

    let mut g = group(c, name, 1);
    for (func, raw) in [("parsed", false), ("raw", true)] {
        g.bench_function(func, |bench| {
            bench.iter_custom(|iters| {
                timed(
                    &mut hub,
                    iters,
                    || BODY.to_owned(),
                    |hub, body| {
                        let data = if raw {
                            Payload::Raw(RawData::new(body).unwrap())
                        } else {
                            Payload::Json(serde_json::from_str::<Value>(&body).unwrap())
                        };
                        black_box(hub.publish(now, env(data)).unwrap());
                        drain(hub);
                    },
                    |hub| acknowledge(hub, now, &ids),
                )
            })
        });
    }
    g.finish();
}

/// A publish to thread `t1` of a user whose three connections narrowed themselves to threads:
/// {t1}, {t2}, {t1, t3}; two of them receive it.
fn publish_thread(c: &mut Criterion, name: &str) {
    let now = Instant::now();
    let mut hub = Hub::new(hub_config()).unwrap();
    let b = Baseline::new(baseline_config());
    populate(&mut hub, &b, now, "bg", 10_000);
    let subs: [&[&str]; 3] = [&["t1"], &["t2"], &["t1", "t3"]];
    let mut ids = Vec::new();
    for threads in subs {
        let id = hub.connect(now, Principal::new(TENANT, "alice")).unwrap();
        let bid = b.connect(now, TENANT, "alice").unwrap();
        for t in threads {
            let frame = json!({"type": "subscribe", "thread_id": t}).to_string();
            hub.receive(now, id, frame.as_bytes()).unwrap();
            b.subscribe(now, bid, t);
        }
        ids.push(id);
    }
    drain(&mut hub);
    drain_baseline(&b);
    let target =
        Target::Thread { tenant: TENANT.into(), user: "alice".into(), thread: "t1".into() };
    assert_eq!(hub.publish(now, envelope(target.clone())).unwrap().delivered, 2);
    drain(&mut hub);
    let to = || To::Thread { tenant: TENANT, user: "alice", thread: "t1" };
    assert_eq!(b.publish(now, to(), message()), 2);
    drain_baseline(&b);

    let mut g = group(c, name, 2);
    let env = envelope(target);
    bench_hub_publish(&mut g, &mut hub, now, &env, &ids);
    bench_baseline_publish(&mut g, &b, now, &message(), to);
    g.finish();
}

/// A fan-out to `n` connections, each of its own user: a room, or (`tenant`) the whole tenant.
fn fan_out(c: &mut Criterion, name: &str, n: usize, tenant: bool) {
    let now = Instant::now();
    let mut hub = Hub::new(hub_config()).unwrap();
    let b = Baseline::new(baseline_config());
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let user = format!("member-{i}");
        let id = hub.connect(now, Principal::new(TENANT, user.as_str())).unwrap();
        let bid = b.connect(now, TENANT, &user).unwrap();
        if !tenant {
            hub.join(now, id, "lobby").unwrap();
            b.join(bid, "lobby");
        }
        ids.push(id);
        if i % 1024 == 0 {
            drain(&mut hub);
            drain_baseline(&b);
        }
    }
    drain(&mut hub);
    drain_baseline(&b);
    let target = if tenant {
        Target::Tenant { tenant: TENANT.into(), audience: Audience::All }
    } else {
        Target::Room { tenant: TENANT.into(), room: "lobby".into() }
    };
    let to = || {
        if tenant {
            To::Tenant { tenant: TENANT }
        } else {
            To::Room { tenant: TENANT, room: "lobby" }
        }
    };
    assert_eq!(hub.publish(now, envelope(target.clone())).unwrap().delivered, n);
    assert_eq!(drain_delivered(&mut hub), n);
    acknowledge(&mut hub, now, &ids);
    assert_eq!(b.publish(now, to(), message()), n);
    drain_baseline(&b);

    let mut g = group(c, name, n as u64);
    if n >= 10_000 {
        g.sample_size(10);
    }
    let env = envelope(target);
    bench_hub_publish(&mut g, &mut hub, now, &env, &ids);
    bench_baseline_publish(&mut g, &b, now, &message(), to);
    g.finish();
}

/// `tick` with `n` idle connections (250,000 users × 4) and nothing due; the baseline's periodic
/// maintenance pass over the same population finds nothing to do either.
fn tick_idle(c: &mut Criterion, name: &str, n: usize) {
    let t0 = Instant::now();
    let mut cfg = hub_config();
    cfg.tiers.enterprise.max_connections_per_user = 4;
    let mut hub = Hub::new(cfg).unwrap();
    let b = Baseline::new(BaselineConfig { max_connections_per_user: 4, ..baseline_config() });
    for u in 0..n / 4 {
        let user = format!("user-{u:07}");
        let p = Principal::new(TENANT, user.as_str()).tier(Tier::Enterprise);
        for _ in 0..4 {
            hub.connect(t0, p.clone()).unwrap();
            b.connect(t0, TENANT, &user).unwrap();
        }
        if u % 256 == 0 {
            drain(&mut hub);
            drain_baseline(&b);
        }
    }
    drain(&mut hub);
    drain_baseline(&b);
    assert_eq!(hub.stats().connections_active, n as u64);
    let now = t0 + Duration::from_secs(1);
    hub.tick(now);
    assert_eq!(drain(&mut hub), 0, "nothing is due");
    b.sweep(now);
    assert_eq!(drain_baseline(&b), 0, "nothing is due");

    let mut g = group(c, name, 1);
    g.sample_size(10);
    g.bench_function("switchboard", |bench| {
        bench.iter(|| {
            hub.tick(now);
            drain(&mut hub)
        })
    });
    g.bench_function("baseline", |bench| {
        bench.iter(|| {
            b.sweep(now);
            drain_baseline(&b)
        })
    });
    g.finish();
}

/// Heartbeats in the steady state: `n` connections in `n / k` phases spread over the heartbeat
/// interval, so each sweep (one `tick`, one baseline maintenance pass) finds exactly `k` due and
/// pings them. The pongs come back (outside the clock) at the same instant. In this steady state
/// each switchboard tick also retires the `k` pong-timeout timers armed one timeout earlier.
fn heartbeat_sweep(c: &mut Criterion, name: &str, n: usize, k: usize) {
    let t0 = Instant::now();
    let interval = Config::default().heartbeat.interval;
    let phases = n / k;
    let step = interval / phases as u32;
    let mut hub = Hub::new(hub_config()).unwrap();
    let b = Baseline::new(baseline_config());
    let mut ids: Vec<Vec<ConnId>> = vec![Vec::with_capacity(k); phases];
    let mut bids: Vec<Vec<u64>> = vec![Vec::with_capacity(k); phases];
    for (p, (ids, bids)) in ids.iter_mut().zip(&mut bids).enumerate() {
        let at = t0 + step * p as u32;
        for i in 0..k {
            let user = format!("u{p}-{i}");
            ids.push(hub.connect(at, Principal::new(TENANT, user.as_str())).unwrap());
            bids.push(b.connect(at, TENANT, &user).unwrap());
        }
        drain(&mut hub);
        drain_baseline(&b);
    }
    // Sweep `j` runs at t0 + interval + j·step and finds phase `j mod phases` due.
    let sweep_at = |j: u64| t0 + interval + step * (j % (1 << 20)) as u32;
    let mut hub_sweeps = 0u64;
    let mut hub_sweep = |hub: &mut Hub, timed: bool| -> (Duration, usize) {
        let now = sweep_at(hub_sweeps);
        let phase = (hub_sweeps % phases as u64) as usize;
        hub_sweeps += 1;
        let start = Instant::now();
        hub.tick(now);
        let mut pings = 0;
        while let Some(a) = hub.poll_action() {
            pings += usize::from(matches!(a, Action::Ping { .. }));
        }
        let elapsed = start.elapsed();
        if !timed {
            assert_eq!(pings, k, "sweep {hub_sweeps}: k due");
        }
        for &id in &ids[phase] {
            hub.pong(now, id).unwrap();
        }
        (elapsed, pings)
    };
    // Two intervals reach the steady state (every phase pinged and ponged once before).
    for _ in 0..2 * phases {
        hub_sweep(&mut hub, false);
    }
    let mut b_sweeps = 0u64;
    let mut b_sweep = |b: &Baseline, timed: bool| -> Duration {
        let now = sweep_at(b_sweeps);
        let phase = (b_sweeps % phases as u64) as usize;
        b_sweeps += 1;
        let start = Instant::now();
        b.sweep(now);
        let mut pings = 0;
        b.drain(|_, out| pings += usize::from(matches!(out, Out::Ping)));
        let elapsed = start.elapsed();
        if !timed {
            assert_eq!(pings, k, "baseline sweep {b_sweeps}: k due");
        }
        for &id in &bids[phase] {
            b.pong(now, id);
        }
        elapsed
    };
    for _ in 0..2 * phases {
        b_sweep(&b, false);
    }

    let mut g = group(c, name, k as u64);
    if n / k < 1000 {
        g.sample_size(20);
    }
    g.bench_function("switchboard", |bench| {
        bench.iter_custom(|iters| (0..iters).map(|_| hub_sweep(&mut hub, true).0).sum::<Duration>())
    });
    g.bench_function("baseline", |bench| {
        bench.iter_custom(|iters| (0..iters).map(|_| b_sweep(&b, true)).sum::<Duration>())
    });
    g.finish();
}

/// A returning client resumes and gets the 1,000 messages published while it was away: connect,
/// `resume`, drain, disconnect. The baseline flushes its recovery queue on connect (and is
/// refilled outside the clock).
fn resume(c: &mut Criterion, name: &str) {
    const MISSED: usize = 1000;
    let now = Instant::now();
    let mut hub = Hub::new(hub_config()).unwrap();
    let b = Baseline::new(baseline_config());
    populate(&mut hub, &b, now, "bg", 10_000);
    let alice = Principal::new(TENANT, "alice");
    let id = hub.connect(now, alice.clone()).unwrap();
    hub.disconnect(now, id, DisconnectReason::Clean).unwrap();
    let bid = b.connect(now, TENANT, "alice").unwrap();
    b.disconnect(now, bid);
    for _ in 0..MISSED {
        hub.publish(now, envelope(user_target("alice"))).unwrap();
    }
    drain(&mut hub);
    drain_baseline(&b);
    let epoch = hub.user(TENANT, "alice").unwrap().stream_position().epoch;
    let resume = json!({"type": "resume", "positions": {"u": {"epoch": epoch, "seq": 0}}})
        .to_string()
        .into_bytes();
    let hub_resume = |hub: &mut Hub| -> usize {
        let id = hub.connect(now, alice.clone()).unwrap();
        let mut n = drain_delivered(hub);
        hub.receive(now, id, &resume).unwrap();
        n += drain_delivered(hub);
        hub.disconnect(now, id, DisconnectReason::Clean).unwrap();
        drain(hub);
        n
    };
    // connected + 1,000 replayed + resumed.
    assert_eq!(hub_resume(&mut hub), MISSED + 2);
    let msg = message();
    let refill = || {
        for _ in 0..MISSED {
            b.publish(now, To::User { tenant: TENANT, user: "alice" }, msg.clone());
        }
    };
    let b_resume = || -> usize {
        let id = b.connect(now, TENANT, "alice").unwrap();
        let n = drain_baseline(&b);
        b.disconnect(now, id);
        n
    };
    refill();
    // connected + 1,000 flushed.
    assert_eq!(b_resume(), MISSED + 1);

    let mut g = group(c, name, MISSED as u64);
    g.bench_function("switchboard", |bench| {
        bench.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                black_box(hub_resume(&mut hub));
            }
            start.elapsed()
        })
    });
    g.bench_function("baseline", |bench| {
        bench.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                refill();
                let start = Instant::now();
                black_box(b_resume());
                total += start.elapsed();
            }
            total
        })
    });
    g.finish();
}

// ---------------------------------------------------------------------------------------------
// Cluster mode: the local fan-outs again, reached through the bus.

/// Who a cluster benchmark's message reaches: `n` connections of one user (among 10,000 other
/// users), `n` members of a room, `n` connections of a tenant (each member its own user).
#[derive(Clone, Copy)]
enum Shape {
    User(usize),
    Room(usize),
    Tenant(usize),
}

/// A hub (one node of a cluster if `cluster`) holding `shape`'s connections, with the target
/// that reaches them.
fn shaped_hub(cluster: bool, shape: Shape, now: Instant) -> (Hub, Vec<ConnId>, Target) {
    let cfg = if cluster { clustered(hub_config()) } else { hub_config() };
    let mut hub = Hub::new(cfg).unwrap();
    let settle_every = |hub: &mut Hub, i: usize| {
        if cluster {
            settle(hub, now);
        } else if i % 1024 == 0 {
            drain(hub);
        }
    };
    let mut ids = Vec::new();
    let target = match shape {
        Shape::User(n) => {
            for i in 0..10_000 {
                hub.connect(now, Principal::new(TENANT, format!("bg{i}").as_str())).unwrap();
                settle_every(&mut hub, i);
            }
            for i in 0..n {
                ids.push(hub.connect(now, Principal::new(TENANT, "alice")).unwrap());
                settle_every(&mut hub, i);
            }
            user_target("alice")
        }
        Shape::Room(n) | Shape::Tenant(n) => {
            let room = matches!(shape, Shape::Room(_));
            for i in 0..n {
                let user = format!("member-{i}");
                let id = hub.connect(now, Principal::new(TENANT, user.as_str())).unwrap();
                if room {
                    hub.join(now, id, "lobby").unwrap();
                }
                ids.push(id);
                settle_every(&mut hub, i);
            }
            if room {
                Target::Room { tenant: TENANT.into(), room: "lobby".into() }
            } else {
                Target::Tenant { tenant: TENANT.into(), audience: Audience::All }
            }
        }
    };
    settle_every(&mut hub, 0);
    if cluster {
        settle(&mut hub, now);
    }
    (hub, ids, target)
}

/// `local`: a publish to `shape`'s connections on a single-node hub. `cluster`: one bus message
/// (the payload a clustered publish of the same envelope made, captured once) fanned out to the
/// same connections of a clustered hub, one seq further each time.
fn cluster_fan_out(c: &mut Criterion, name: &str, shape: Shape) {
    let now = Instant::now();
    let (mut local, local_ids, target) = shaped_hub(false, shape, now);
    let (mut node, node_ids, _) = shaped_hub(true, shape, now);
    let n = local_ids.len();
    assert_eq!(local.publish(now, envelope(target.clone())).unwrap().delivered, n);
    assert_eq!(drain_delivered(&mut local), n);
    acknowledge(&mut local, now, &local_ids);
    let (key, payload) = bus_payload(&mut node, now, envelope(target.clone()));
    let mut seq = 1;
    node.bus_message(now, &key, StreamPos { epoch: EPOCH, seq }, &payload);
    assert_eq!(drain_delivered(&mut node), n, "the bus message reaches every connection");
    acknowledge(&mut node, now, &node_ids);

    let mut g = group(c, name, n as u64);
    if n >= 10_000 {
        g.sample_size(10);
    }
    let env = envelope(target);
    g.bench_function("local", |bench| {
        bench.iter_custom(|iters| {
            timed(
                &mut local,
                iters,
                || env.clone(),
                |hub, e| {
                    black_box(hub.publish(now, e).unwrap());
                    drain(hub);
                },
                |hub| acknowledge(hub, now, &local_ids),
            )
        })
    });
    g.bench_function("cluster", |bench| {
        bench.iter_custom(|iters| {
            timed(
                &mut node,
                iters,
                || {
                    seq += 1;
                    StreamPos { epoch: EPOCH, seq }
                },
                |node, pos| {
                    node.bus_message(now, &key, pos, &payload);
                    drain(node);
                },
                |node| acknowledge(node, now, &node_ids),
            )
        })
    });
    g.finish();
}

/// `local`: a publish to a user with one connection (among 10,000 others) on a single-node hub.
/// `cluster`: the same publish on a clustered hub (validate, redact, serialize once, emit the
/// append, drop it as a driver would after handing it to the bus); the appends are acknowledged
/// between chunks, outside the clock.
fn cluster_publish(c: &mut Criterion, name: &str) {
    let now = Instant::now();
    let (mut local, local_ids, target) = shaped_hub(false, Shape::User(1), now);
    let (node, _, _) = shaped_hub(true, Shape::User(1), now);
    let env = envelope(target);
    let mut g = group(c, name, 1);
    g.bench_function("local", |bench| {
        bench.iter_custom(|iters| {
            timed(
                &mut local,
                iters,
                || env.clone(),
                |hub, e| {
                    black_box(hub.publish(now, e).unwrap());
                    drain(hub);
                },
                |hub| acknowledge(hub, now, &local_ids),
            )
        })
    });
    let mut state: (Hub, Vec<OpId>) = (node, Vec::with_capacity(CHUNK as usize));
    g.bench_function("cluster", |bench| {
        bench.iter_custom(|iters| {
            timed(
                &mut state,
                iters,
                || env.clone(),
                |(hub, ops), e| {
                    let published = hub.publish(now, e).unwrap();
                    drain(hub);
                    ops.push(published.op.expect("a clustered publish issues an append"));
                },
                |(hub, ops)| {
                    for op in ops.drain(..) {
                        let pos = StreamPos { epoch: EPOCH, seq: 1 };
                        hub.bus_reply(now, op, Ok(BusReply::Appended { pos }));
                    }
                    drain(hub);
                },
            )
        })
    });
    g.finish();
}

// ---------------------------------------------------------------------------------------------

/// Criterion's output directory (as criterion finds it): `$CRITERION_HOME`, else
/// `$CARGO_TARGET_DIR/criterion`, else `criterion/` in the target directory this binary was built
/// into.
fn criterion_dir() -> Option<PathBuf> {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return Some(home.into());
    }
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        return Some(PathBuf::from(target).join("criterion"));
    }
    // <target>/<profile>/deps/hub-<hash>
    let exe = std::env::current_exe().ok()?;
    Some(exe.parent()?.parent()?.parent()?.join("criterion"))
}

/// The median (ns) of one benchmark, if this run measured it.
fn median(dir: &std::path::Path, since: SystemTime) -> Option<f64> {
    let path = dir.join("new").join("estimates.json");
    let fresh = std::fs::metadata(&path).ok()?.modified().ok()? >= since;
    let est: Value = serde_json::from_str(&std::fs::read_to_string(&path).ok()?).ok()?;
    fresh.then(|| est["median"]["point_estimate"].as_f64()).flatten()
}

fn human(ns: f64) -> String {
    match ns {
        ns if ns < 1e3 => format!("{ns:.1} ns"),
        ns if ns < 1e6 => format!("{:.2} µs", ns / 1e3),
        ns if ns < 1e9 => format!("{:.2} ms", ns / 1e6),
        ns => format!("{:.2} s", ns / 1e9),
    }
}

/// One table of this run's medians of the groups that have functions `ours` and `theirs`, with
/// `theirs ÷ ours` beside each (the header names them).
fn print_table(groups: &[(String, u64)], since: SystemTime, [ours, theirs]: [&str; 2]) {
    let (ours_fn, theirs_fn) = (ours, theirs);
    let Some(dir) = criterion_dir() else { return };
    let mut rows = Vec::new();
    for (name, elements) in groups {
        let g = dir.join(name);
        let (Some(ours), Some(theirs)) =
            (median(&g.join(ours_fn), since), median(&g.join(theirs_fn), since))
        else {
            continue;
        };
        let per = |ns: f64| if *elements > 1 { human(ns / *elements as f64) } else { "".into() };
        rows.push(format!(
            "| {name} | {} | {} | {} | {} | {:.2}× |",
            human(ours),
            per(ours),
            human(theirs),
            per(theirs),
            theirs / ours
        ));
    }
    if rows.is_empty() {
        return;
    }
    println!("\nMedians of this run (per element: divided by the group's throughput elements)\n");
    println!(
        "| benchmark | {ours_fn} | per element | {theirs_fn} | per element | {theirs_fn} ÷ {ours_fn} |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for row in rows {
        println!("{row}");
    }
}

/// The benchmark filter criterion was given (the first free argument), if any. Setups are
/// skipped for groups it cannot match, so that profiling one benchmark does not first build the
/// million-connection hubs of another. (A plain substring, as criterion's regex usually is.)
fn filter() -> Option<String> {
    const WITH_VALUE: &[&str] = &[
        "--warm-up-time",
        "--measurement-time",
        "--sample-size",
        "--profile-time",
        "--save-baseline",
        "--baseline",
        "--baseline-lenient",
        "--load-baseline",
        "--noise-threshold",
        "--confidence-level",
        "--significance-level",
        "--nresamples",
        "--color",
        "--format",
        "--output-format",
        "--plotting-backend",
        "-c",
        "-b",
        "-s",
    ];
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if WITH_VALUE.contains(&arg.as_str()) {
            args.next();
        } else if !arg.starts_with('-') {
            return Some(arg);
        }
    }
    None
}

type Setup = Box<dyn FnOnce(&mut Criterion, &str)>;

fn main() {
    let since = SystemTime::now();
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    // In `cargo test --benches` (no `--bench`), every benchmark runs once: keep setups small.
    let full = std::env::args().any(|a| a == "--bench");
    let idle = if full { 1_000_000 } else { 10_000 };
    let big = if full { 100_000 } else { 10_000 };

    // (group, throughput elements, benchmark)
    let mut plan: Vec<(String, u64, Setup)> = Vec::new();
    plan.push(("churn_returning_user".into(), 1, Box::new(churn)));
    for conns in [1, 3] {
        for redact in [true, false] {
            let name = format!(
                "publish_user_{conns}conn{}_{}",
                if conns == 1 { "" } else { "s" },
                if redact { "redact" } else { "noredact" }
            );
            plan.push((
                name,
                conns as u64,
                Box::new(move |c, n| publish_user(c, n, conns, redact)),
            ));
        }
    }
    plan.push(("publish_thread_filtered".into(), 2, Box::new(publish_thread)));
    plan.push(("publish_body_1conn".into(), 1, Box::new(publish_body)));
    for n in [10, 1000, big] {
        plan.push((
            format!("room_fanout_{n}"),
            n as u64,
            Box::new(move |c, name| fan_out(c, name, n, false)),
        ));
    }
    plan.push((
        "tenant_broadcast_10000".into(),
        10_000,
        Box::new(|c, name| fan_out(c, name, 10_000, true)),
    ));
    plan.push((format!("tick_idle_{idle}"), 1, Box::new(move |c, name| tick_idle(c, name, idle))));
    for k in [100, 1000] {
        plan.push((
            format!("heartbeat_sweep_{k}_of_{big}"),
            k as u64,
            Box::new(move |c, name| heartbeat_sweep(c, name, big, k)),
        ));
    }
    plan.push(("resume_replay_1000".into(), 1000, Box::new(resume)));
    for (name, shape) in [
        ("cluster_user_1conn", Shape::User(1)),
        ("cluster_user_3conns", Shape::User(3)),
        ("cluster_room_10", Shape::Room(10)),
        ("cluster_room_1000", Shape::Room(1000)),
        ("cluster_tenant_10000", Shape::Tenant(10_000)),
    ] {
        let (Shape::User(n) | Shape::Room(n) | Shape::Tenant(n)) = shape;
        plan.push((
            name.into(),
            n as u64,
            Box::new(move |c, name| cluster_fan_out(c, name, shape)),
        ));
    }
    plan.push(("cluster_publish_1conn".into(), 1, Box::new(cluster_publish)));

    let filter = filter();
    let mut groups = Vec::new();
    for (name, elements, bench) in plan {
        let matches = |f: &String| {
            ["switchboard", "baseline", "local", "cluster", "parsed", "raw"]
                .iter()
                .any(|func| format!("{name}/{func}").contains(f.as_str()))
        };
        if filter.as_ref().is_none_or(matches) {
            bench(&mut c, &name);
            groups.push((name, elements));
        }
    }
    c.final_summary();
    print_table(&groups, since, ["switchboard", "baseline"]);
    print_table(&groups, since, ["local", "cluster"]);
    print_table(&groups, since, ["raw", "parsed"]);
}
