//! Delivery guarantees through the public API: backpressure and slow consumers, skipped
//! `agent_thinking` accounting, the reconnect breaker, hostile `resume` frames, rate meters, and
//! recovery of a detached user within (and after) retention. All on a virtual clock.
mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use switchboard::{
    Action, Audience, AuditKind, BreakerConfig, BreakerState, CloseReason, ClosedBy, Config,
    ConnId, ConnectError, DisconnectReason, Envelope, EventKind, MetricEvent, PeerError, Principal,
    Published, ReceiveError, Retention, StreamName, Target, Tier, UserPhase,
};

// ---------------------------------------------------------------------------------------------
// Local helpers

/// Connects and returns the id and the `connected` frame (drains everything else).
fn open(sim: &mut Sim, principal: Principal) -> (ConnId, Value) {
    let id = sim.hub.connect(sim.now, principal).expect("admitted");
    let actions = sim.drain();
    let frames = frames_for(&actions, id);
    assert_eq!(frames[0]["type"], "connected");
    (id, frames[0].clone())
}

/// Connects and confirms the `connected` frame as written, so the connection starts at zero.
fn open_flushed(sim: &mut Sim, principal: Principal) -> (ConnId, Value) {
    let id = sim.hub.connect(sim.now, principal).expect("admitted");
    let actions = sim.drain();
    flush(sim, &actions);
    let frames = frames_for(&actions, id);
    assert_eq!(frames[0]["type"], "connected");
    (id, frames[0].clone())
}

/// Confirms every frame delivered to connections other than `except` as written.
fn flush_except(sim: &mut Sim, actions: &[Action], except: ConnId) {
    for a in actions {
        if let Action::Deliver { conn, frame } = a {
            if *conn != except {
                sim.hub.written(sim.now, *conn, frame.len()).expect("live");
            }
        }
    }
}

/// Confirms every delivered frame as written.
fn flush(sim: &mut Sim, actions: &[Action]) {
    for a in actions {
        if let Action::Deliver { conn, frame } = a {
            sim.hub.written(sim.now, *conn, frame.len()).expect("live");
        }
    }
}

fn pos(connected: &Value, stream: &str) -> (u64, u64) {
    let p = &connected["streams"][stream];
    (p["epoch"].as_u64().unwrap(), p["seq"].as_u64().unwrap())
}

fn resume(positions: &[(&str, u64, u64)]) -> String {
    let map: serde_json::Map<String, Value> = positions
        .iter()
        .map(|(name, epoch, seq)| (name.to_string(), json!({"epoch": epoch, "seq": seq})))
        .collect();
    json!({"type": "resume", "positions": map}).to_string()
}

fn send(sim: &mut Sim, conn: ConnId, frame: &str) -> (Result<(), ReceiveError>, Vec<Action>) {
    let r = sim.hub.receive(sim.now, conn, frame.as_bytes());
    (r, sim.drain())
}

fn user(tenant: &str, user: &str) -> Target {
    Target::User { tenant: tenant.into(), user: user.into() }
}

fn publish(sim: &mut Sim, env: Envelope) -> (Published, Vec<Action>) {
    let p = sim.hub.publish(sim.now, env).expect("publish accepted");
    (p, sim.drain())
}

fn events(frames: &[Value]) -> Vec<&Value> {
    frames.iter().filter(|f| f.get("stream").is_some()).collect()
}

fn seqs(frames: &[&Value]) -> Vec<u64> {
    frames.iter().map(|f| f["seq"].as_u64().unwrap()).collect()
}

fn metrics(actions: &[Action]) -> Vec<&MetricEvent> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Metric(m) => Some(m),
            _ => None,
        })
        .collect()
}

fn breaker_changes(actions: &[Action]) -> Vec<BreakerState> {
    metrics(actions)
        .into_iter()
        .filter_map(|m| match m {
            MetricEvent::BreakerChanged { state, .. } => Some(*state),
            _ => None,
        })
        .collect()
}

/// Advances the clock in steps, answering every ping so that connections stay up.
fn advance_alive(sim: &mut Sim, total: Duration, step: Duration) -> Vec<Action> {
    let mut all = Vec::new();
    let mut left = total;
    while !left.is_zero() {
        let d = step.min(left);
        left -= d;
        let actions = sim.advance(d);
        for conn in pings(&actions) {
            sim.hub.pong(sim.now, conn).expect("live");
        }
        all.extend(actions);
    }
    all
}

const CRITICAL: [EventKind; 4] = [
    EventKind::AgentStarted,
    EventKind::ToolExecuting,
    EventKind::ToolCompleted,
    EventKind::AgentCompleted,
];

// ---------------------------------------------------------------------------------------------
// 2. One stalled connection among fifty

#[test]
fn one_stalled_connection_among_fifty_is_closed_and_nobody_else_notices() {
    const N: usize = 50;
    const STALLED: usize = 17;
    let retention =
        Retention { max_messages: 100, max_bytes: 32 * 1024, max_age: Duration::from_secs(60) };
    let cfg = Config {
        max_inflight_bytes: 4 * 1024,
        max_unwritten_bytes: 16 * 1024,
        retention,
        ..Config::default()
    };
    let max_unwritten = cfg.max_unwritten_bytes;
    let mut sim = Sim::new(cfg);
    let names: Vec<String> = (0..N).map(|i| format!("user{i}")).collect();
    let mut conns = Vec::new();
    let mut connected = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let (id, frame) = if i == STALLED {
            open(&mut sim, Principal::new("acme", name.as_str()))
        } else {
            open_flushed(&mut sim, Principal::new("acme", name.as_str()))
        };
        conns.push(id);
        connected.push(frame);
    }
    let stalled = conns[STALLED];

    // What each connection received, and the seq each stream was at when it started.
    let mut received: Vec<Vec<Value>> = vec![Vec::new(); N];
    let mut start: Vec<(u64, u64)> = vec![(0, 0); N];
    let mut tenant_published = 0u64;
    let mut user_published = vec![0u64; N];
    // The stalled connection, from its client's point of view.
    let mut stalled_open = true;
    let mut owed_thinking = 0u32; // skipped since its last delivery
    let mut total_skipped = 0u64;
    let mut critical_to_stalled = 0u64;
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);

    for step in 0..1500 {
        // Time passes; the transports answer pings (even the stalled one's socket is alive).
        let actions = sim.advance(Duration::from_millis(250));
        assert!(closes(&actions).is_empty(), "step {step}: only backpressure closes here");
        for conn in pings(&actions) {
            sim.hub.pong(sim.now, conn).unwrap();
        }

        let thinking = rng.below(2) == 0;
        let kind = if thinking {
            EventKind::AgentThinking
        } else {
            CRITICAL[rng.below(4) as usize].clone()
        };
        let broadcast = rng.below(10) < 6;
        let to = rng.below(N as u64) as usize;
        let target = if broadcast {
            Target::Tenant { tenant: "acme".into(), audience: Audience::All }
        } else {
            user("acme", &names[to])
        };
        let pad = "x".repeat(20 + rng.below(600) as usize);
        let env = Envelope::new(target, kind).data(json!({ "step": step, "pad": pad }));
        let (p, actions) = publish(&mut sim, env);
        let (stream, seq) = if broadcast {
            tenant_published += 1;
            ("t", tenant_published)
        } else {
            user_published[to] += 1;
            ("u", user_published[to])
        };
        let (name, position) = p.position.clone().expect("a stream");
        assert_eq!(position.seq, seq);
        assert_eq!(name, if broadcast { StreamName::Tenant } else { StreamName::User });

        // Everyone but the stalled connection confirms what it got at once.
        flush_except(&mut sim, &actions, stalled);
        for (i, &c) in conns.iter().enumerate() {
            received[i].extend(frames_for(&actions, c));
        }

        let reaches_stalled = stalled_open && (broadcast || to == STALLED);
        let to_stalled = frames_for(&actions, stalled);
        let closed = closes(&actions);
        if !reaches_stalled {
            assert!(to_stalled.is_empty() && closed.is_empty(), "step {step}");
        } else if !closed.is_empty() {
            // A critical frame did not fit: the connection is closed, never silently skipped.
            assert!(!thinking, "step {step}: a thinking frame must be skipped, not close");
            assert_eq!(closed, vec![(stalled, CloseReason::SlowConsumer)]);
            assert_eq!(CloseReason::SlowConsumer.code(), 4003);
            assert!(CloseReason::SlowConsumer.reconnect());
            assert_eq!(p.closed, 1);
            assert!(to_stalled.is_empty());
            assert!(metrics(&actions).iter().any(|m| matches!(m,
                MetricEvent::ConnectionClosed { conn, reason: ClosedBy::Hub(CloseReason::SlowConsumer), .. }
                    if *conn == stalled)));
            assert!(sim.hub.connection(stalled).is_none());
            stalled_open = false;

            // The client reconnects at once and resumes from what it last saw: it gets the rest,
            // in order, the critical message that closed it included.
            let evs = events(&received[STALLED]);
            let last = |s: &str, dflt: u64| {
                evs.iter()
                    .filter(|f| f["stream"] == s)
                    .map(|f| f["seq"].as_u64().unwrap())
                    .max()
                    .unwrap_or(dflt)
            };
            let (ue, useq) = pos(&connected[STALLED], "u");
            let (te, tseq) = pos(&connected[STALLED], "t");
            let (from_u, from_t) = (last("u", useq), last("t", tseq));
            let (id, _) = open_flushed(&mut sim, Principal::new("acme", names[STALLED].as_str()));
            let (r, actions) = send(&mut sim, id, &resume(&[("u", ue, from_u), ("t", te, from_t)]));
            r.unwrap();
            flush(&mut sim, &actions);
            let frames = frames_for(&actions, id);
            let resumed = frames.last().unwrap();
            assert_eq!(resumed["recovered"], true, "{resumed}");
            let replayed = events(&frames);
            let on = |s: &str| {
                seqs(&replayed.iter().copied().filter(|f| f["stream"] == s).collect::<Vec<_>>())
            };
            assert_eq!(on("t"), (from_t + 1..=tenant_published).collect::<Vec<_>>());
            assert_eq!(on("u"), (from_u + 1..=user_published[STALLED]).collect::<Vec<_>>());
            assert!(on(stream).contains(&seq), "the closing message is replayed");
            // From here on it is a well-behaved connection.
            conns[STALLED] = id;
            received[STALLED] = replayed.into_iter().cloned().collect();
            start[STALLED] = (from_t, from_u);
        } else if to_stalled.is_empty() {
            assert!(thinking, "step {step}: a critical frame was neither delivered nor closed");
            assert_eq!(p.skipped, 1);
            owed_thinking += 1;
            total_skipped += 1;
        } else {
            // Delivered; skipped thinking frames are announced first, with their exact count.
            let event = to_stalled.last().unwrap();
            assert_eq!(
                (event["stream"].as_str(), event["seq"].as_u64()),
                (Some(stream), Some(seq))
            );
            if owed_thinking > 0 {
                assert_eq!(to_stalled.len(), 2, "step {step}: {to_stalled:?}");
                assert_eq!(to_stalled[0], json!({"type": "skipped", "count": owed_thinking}));
            } else {
                assert_eq!(to_stalled.len(), 1, "step {step}: {to_stalled:?}");
            }
            owed_thinking = 0;
            if !thinking {
                critical_to_stalled += 1;
            }
        }
        if reaches_stalled {
            let others = if broadcast { N - 1 } else { 0 };
            let own = usize::from(!to_stalled.is_empty());
            assert_eq!(p.delivered, others + own, "step {step}");
        }
        if let Some(view) = sim.hub.connection(stalled) {
            assert!(
                view.unwritten_bytes() <= max_unwritten,
                "step {step}: {} unwritten bytes, over max_unwritten_bytes {max_unwritten}; last frames {to_stalled:?}",
                view.unwritten_bytes()
            );
            assert_eq!(view.skipped_pending(), owed_thinking);
        }

        // Memory stays bounded by the retention bounds of the 51 streams.
        let stats = sim.hub.stats();
        let streams = (N + 1) as u64;
        assert!(stats.buffered_messages <= streams * retention.max_messages as u64);
        assert!(stats.buffered_bytes <= streams * retention.max_bytes as u64);
        for name in &names {
            let (m, b) = sim.hub.user("acme", name).unwrap().buffered();
            assert!(m <= retention.max_messages && b <= retention.max_bytes);
        }
        assert_eq!(stats.thinking_skipped, total_skipped);
    }

    assert!(!stalled_open, "the stalled connection must have been closed");
    assert!(critical_to_stalled > 0, "it took critical frames until the hard limit");
    let stats = sim.hub.stats();
    assert_eq!(stats.closed_by.slow_consumer, 1);
    assert_eq!(stats.connections_active, N as u64);
    assert_eq!(stats.thinking_skipped, total_skipped);
    assert!(total_skipped > 0);

    // Everyone else (and the stalled client since it resumed) received every message of its
    // streams, in order, thinking included.
    for i in 0..N {
        assert!(received[i].iter().all(|f| f["type"] != "skipped"), "user{i} never fell behind");
        let evs = events(&received[i]);
        let t: Vec<&Value> = evs.iter().copied().filter(|f| f["stream"] == "t").collect();
        let u: Vec<&Value> = evs.iter().copied().filter(|f| f["stream"] == "u").collect();
        let (t0, u0) = start[i];
        assert_eq!(
            seqs(&t),
            (t0 + 1..=tenant_published).collect::<Vec<_>>(),
            "user{i} tenant stream"
        );
        assert_eq!(
            seqs(&u),
            (u0 + 1..=user_published[i]).collect::<Vec<_>>(),
            "user{i} own stream"
        );
        assert_eq!(sim.hub.connection(conns[i]).unwrap().unwritten_bytes(), 0);
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Skipped thinking is counted exactly; critical events are never skipped

#[test]
fn skipped_thinking_is_counted_exactly_and_critical_frames_are_never_skipped() {
    let cfg = Config { max_inflight_bytes: 1000, max_unwritten_bytes: 8000, ..Config::default() };
    let mut sim = Sim::new(cfg);
    let (slow, connected) = open_flushed(&mut sim, Principal::new("acme", "alice"));
    let (fast, _) = open_flushed(&mut sim, Principal::new("acme", "alice"));
    let big = |n: usize| json!({ "pad": "x".repeat(n) });
    let to_alice = |kind: EventKind| Envelope::new(user("acme", "alice"), kind);

    // Put `slow` past the soft limit with one critical frame it never confirms.
    let (p, actions) = publish(&mut sim, to_alice(EventKind::AgentStarted).data(big(1500)));
    assert_eq!((p.delivered, p.skipped, p.closed), (2, 0, 0));
    let written_fast = |sim: &mut Sim, actions: &[Action]| {
        for a in actions {
            if let Action::Deliver { conn, frame } = a {
                if *conn == fast {
                    sim.hub.written(sim.now, fast, frame.len()).unwrap();
                }
            }
        }
    };
    written_fast(&mut sim, &actions);

    // Seven thinking frames: skipped for `slow` only, each counted.
    for i in 1..=7u32 {
        let (p, actions) = publish(&mut sim, to_alice(EventKind::AgentThinking));
        assert_eq!((p.delivered, p.skipped, p.closed), (1, 1, 0));
        assert!(frames_for(&actions, slow).is_empty());
        assert_eq!(frames_for(&actions, fast).len(), 1);
        written_fast(&mut sim, &actions);
        assert_eq!(sim.hub.connection(slow).unwrap().skipped_pending(), i);
        assert_eq!(sim.hub.stats().thinking_skipped, u64::from(i));
    }

    // Critical frames past the soft limit are still delivered, the first one announced by the
    // exact number of frames skipped before it.
    let (p, actions) = publish(&mut sim, to_alice(EventKind::ToolExecuting));
    assert_eq!((p.delivered, p.skipped, p.closed), (2, 0, 0));
    written_fast(&mut sim, &actions);
    let got = frames_for(&actions, slow);
    assert_eq!(got.len(), 2);
    assert_eq!(got[0], json!({"type": "skipped", "count": 7}));
    assert_eq!(
        (got[1]["type"].as_str(), got[1]["seq"].as_u64()),
        (Some("tool_executing"), Some(9))
    );
    assert_eq!(sim.hub.connection(slow).unwrap().skipped_pending(), 0);
    // `fast` never fell behind: no notice, every frame.
    assert!(frames_for(&actions, fast).iter().all(|f| f["type"] != "skipped"));

    // Critical frames keep coming until one does not fit: then the connection is closed.
    let mut delivered_seqs = vec![1, 9];
    let mut closed_at = None;
    for _ in 0..20 {
        let (p, actions) = publish(&mut sim, to_alice(EventKind::ToolCompleted).data(big(900)));
        written_fast(&mut sim, &actions);
        let seq = p.position.as_ref().unwrap().1.seq;
        let got = frames_for(&actions, slow);
        if p.closed == 1 {
            assert!(got.is_empty());
            assert_eq!(closes(&actions), vec![(slow, CloseReason::SlowConsumer)]);
            closed_at = Some(seq);
            break;
        }
        assert_eq!(p.skipped, 0, "critical frames are never skipped");
        assert_eq!(seqs(&events(&got)), vec![seq]);
        delivered_seqs.push(seq);
        assert!(sim.hub.connection(slow).unwrap().unwritten_bytes() <= 8000);
    }
    let closed_at = closed_at.expect("the hard limit was reached");
    assert!(sim.hub.connection(slow).is_none());
    assert_eq!(sim.hub.stats().thinking_skipped, 7);

    // The client resumes from the last frame it saw and gets the rest, in order: the critical
    // frame that closed it included. Nothing critical was lost.
    let (ue, _) = pos(&connected, "u");
    let (again, _) = open_flushed(&mut sim, Principal::new("acme", "alice"));
    let last_seen = *delivered_seqs.last().unwrap();
    let (r, actions) = send(&mut sim, again, &resume(&[("u", ue, last_seen)]));
    r.unwrap();
    let frames = frames_for(&actions, again);
    assert_eq!(seqs(&events(&frames)), vec![closed_at]);
    assert_eq!(frames.last().unwrap()["recovered"], true);
}

#[test]
fn the_skipped_notice_precedes_whatever_frame_comes_next() {
    let cfg = Config { max_inflight_bytes: 200, max_unwritten_bytes: 8000, ..Config::default() };
    let mut sim = Sim::new(cfg);
    let (alice, _) = open_flushed(&mut sim, Principal::new("acme", "alice"));
    let env = Envelope::new(user("acme", "alice"), EventKind::AgentStarted)
        .data(json!({"pad": "x".repeat(300)}));
    publish(&mut sim, env);
    for _ in 0..3 {
        let (p, _) =
            publish(&mut sim, Envelope::new(user("acme", "alice"), EventKind::AgentThinking));
        assert_eq!(p.skipped, 1);
    }
    // The next frame is a control frame (`pong`): it carries the notice.
    let (r, actions) = send(&mut sim, alice, r#"{"type":"ping"}"#);
    r.unwrap();
    let got = frames_for(&actions, alice);
    assert_eq!(got, vec![json!({"type": "skipped", "count": 3}), json!({"type": "pong"})]);
    // Counted once: a later frame carries no notice.
    let (_, actions) =
        publish(&mut sim, Envelope::new(user("acme", "alice"), EventKind::AgentCompleted));
    assert_eq!(events(&frames_for(&actions, alice)).len(), frames_for(&actions, alice).len());
}

/// `max_unwritten_bytes`: "Unwritten bytes a critical frame may not push a connection past". The
/// `skipped` notice that precedes a critical frame is bytes too; together they may not go past.
#[test]
fn a_skipped_notice_never_pushes_a_connection_past_the_hard_limit() {
    // Learn the exact frame sizes on a hub with the same seed and history but no pressure.
    let run = |cfg: Config| {
        let mut sim = Sim::new(cfg);
        let (alice, _) = open_flushed(&mut sim, Principal::new("acme", "alice"));
        let env =
            |kind| Envelope::new(user("acme", "alice"), kind).data(json!({"pad": "x".repeat(400)}));
        let (_, a1) = publish(&mut sim, env(EventKind::AgentStarted));
        let (_, a2) = publish(&mut sim, env(EventKind::AgentThinking));
        let (_, a3) = publish(&mut sim, env(EventKind::ToolExecuting));
        (sim, alice, [a1, a2, a3])
    };
    let (_, _, probe) = run(Config::default());
    let size = |actions: &[Action]| -> u64 {
        actions
            .iter()
            .find_map(|a| match a {
                Action::Deliver { frame, .. } => Some(frame.len() as u64),
                _ => None,
            })
            .unwrap()
    };
    let (first, critical) = (size(&probe[0]), size(&probe[2]));

    // The hard limit fits exactly the two critical frames, not the notice in between.
    let limit = first + critical;
    let cfg = Config { max_inflight_bytes: 100, max_unwritten_bytes: limit, ..Config::default() };
    let (sim, alice, actions) = run(cfg);
    let skipped: Vec<Value> = frames_for(&actions[1], alice);
    assert!(skipped.is_empty(), "the thinking frame was skipped");
    match sim.hub.connection(alice) {
        Some(view) => assert!(
            view.unwritten_bytes() <= limit,
            "unwritten {} > max_unwritten_bytes {limit}: frames {:?}",
            view.unwritten_bytes(),
            frames_for(&actions[2], alice)
        ),
        // Closing it instead would also keep the limit.
        None => assert_eq!(closes(&actions[2]), vec![(alice, CloseReason::SlowConsumer)]),
    }
}

/// DESIGN §5: "past the hard limit ... the connection is closed with SlowConsumer. A slow reader
/// never ... grows memory." Control frames the hub answers with (here `pong`) count as unwritten
/// bytes too; a reader that never reads may not pile them up past the hard limit.
#[test]
fn control_frames_do_not_pile_up_past_the_hard_limit() {
    let cfg = Config { max_inflight_bytes: 64, max_unwritten_bytes: 256, ..Config::default() };
    let mut sim = Sim::new(cfg);
    let (alice, _) = open_flushed(&mut sim, Principal::new("acme", "alice"));
    for i in 0..40 {
        let (r, actions) = send(&mut sim, alice, r#"{"type":"ping"}"#);
        if sim.hub.connection(alice).is_none() {
            assert_eq!(closes(&actions), vec![(alice, CloseReason::SlowConsumer)]);
            return;
        }
        r.unwrap();
        let unwritten = sim.hub.connection(alice).unwrap().unwritten_bytes();
        assert!(unwritten <= 256, "after {} pings: {unwritten} unwritten bytes, still open", i + 1);
    }
}

// ---------------------------------------------------------------------------------------------
// 4. The reconnect breaker

fn breaker_config() -> Config {
    Config {
        breaker: BreakerConfig {
            threshold: 3,
            window: Duration::from_secs(60),
            open_for: Duration::from_secs(30),
            probe_healthy_after: Duration::from_secs(10),
        },
        ..Config::default()
    }
}

#[test]
fn the_breaker_opens_half_opens_and_closes_with_exact_retry_after() {
    let mut sim = Sim::new(breaker_config());
    let state = |sim: &Sim| sim.hub.user("acme", "alice").map(|u| u.breaker());
    let fail = |sim: &mut Sim| {
        let id = sim.connect("acme", "alice");
        sim.hub.disconnect(sim.now, id, DisconnectReason::Abnormal).unwrap();
        sim.drain()
    };

    // Clean disconnects never count.
    for _ in 0..10 {
        let id = sim.connect("acme", "alice");
        sim.hub.disconnect(sim.now, id, DisconnectReason::Clean).unwrap();
        let actions = sim.drain();
        assert!(breaker_changes(&actions).is_empty());
        assert!(audits(&actions).is_empty());
    }
    assert_eq!(state(&sim), Some(BreakerState::Closed));

    // Failures outside the window are forgotten.
    fail(&mut sim);
    fail(&mut sim);
    sim.advance(Duration::from_secs(61));
    let actions = fail(&mut sim);
    assert!(breaker_changes(&actions).is_empty());
    sim.advance(Duration::from_secs(1));
    let actions = fail(&mut sim);
    assert!(breaker_changes(&actions).is_empty());
    assert_eq!(state(&sim), Some(BreakerState::Closed));

    // The third failure within the window opens it.
    sim.advance(Duration::from_secs(1));
    let actions = fail(&mut sim);
    let until = sim.now + Duration::from_secs(30);
    assert_eq!(breaker_changes(&actions), vec![BreakerState::Open { until }]);
    let opened: Vec<_> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Audit(e) if e.kind == AuditKind::BreakerOpened => Some(e.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(opened.len(), 1);
    assert_eq!(opened[0].tenant.as_ref().map(|t| t.as_str()), Some("acme"));
    assert_eq!(opened[0].user.as_ref().map(|u| u.as_str()), Some("alice"));
    assert_eq!(state(&sim), Some(BreakerState::Open { until }));
    assert_eq!(sim.hub.stats().breakers_opened, 1);

    // While open: refused with the exact time left; nothing is created; other users are fine.
    let active = sim.hub.stats().connections_active;
    let r = sim.hub.connect(sim.now, Principal::new("acme", "alice"));
    assert_eq!(r, Err(ConnectError::BreakerOpen { retry_after: Duration::from_secs(30) }));
    assert_eq!(audits(&sim.drain()), vec![AuditKind::BreakerRefused]);
    sim.advance(Duration::from_secs(12));
    let r = sim.hub.connect(sim.now, Principal::new("acme", "alice"));
    assert_eq!(r, Err(ConnectError::BreakerOpen { retry_after: Duration::from_secs(18) }));
    assert_eq!(sim.hub.stats().connections_active, active);
    assert_eq!(sim.hub.stats().breaker_refusals, 2);
    sim.connect("acme", "bob");
    sim.drain();

    // At `until` it half-opens (the hub asks to be woken by then).
    assert!(sim.hub.poll_timeout().is_some_and(|t| t <= until));
    let wait = until - sim.now;
    let actions = advance_alive(&mut sim, wait, Duration::from_secs(60));
    assert_eq!(breaker_changes(&actions), vec![BreakerState::HalfOpen { probe: None }]);
    assert_eq!(state(&sim), Some(BreakerState::HalfOpen { probe: None }));

    // One probe is admitted; a second connect waits for the probe to prove itself.
    let probe = sim.connect("acme", "alice");
    assert_eq!(state(&sim), Some(BreakerState::HalfOpen { probe: Some(probe) }));
    let r = sim.hub.connect(sim.now, Principal::new("acme", "alice"));
    assert_eq!(r, Err(ConnectError::BreakerOpen { retry_after: Duration::from_secs(10) }));
    sim.drain();

    // The probe fails: open again, audited again.
    sim.advance(Duration::from_secs(4));
    sim.hub.disconnect(sim.now, probe, DisconnectReason::Abnormal).unwrap();
    let actions = sim.drain();
    let until = sim.now + Duration::from_secs(30);
    assert_eq!(breaker_changes(&actions), vec![BreakerState::Open { until }]);
    assert_eq!(audits(&actions), vec![AuditKind::BreakerOpened]);
    assert_eq!(state(&sim), Some(BreakerState::Open { until }));
    assert_eq!(sim.hub.stats().breakers_opened, 2);
    let r = sim.hub.connect(sim.now, Principal::new("acme", "alice"));
    assert_eq!(r, Err(ConnectError::BreakerOpen { retry_after: Duration::from_secs(30) }));
    sim.drain();

    // Half-open again; a probe that closes cleanly proves nothing: another probe is admitted.
    let actions = advance_alive(&mut sim, Duration::from_secs(30), Duration::from_secs(30));
    assert_eq!(breaker_changes(&actions), vec![BreakerState::HalfOpen { probe: None }]);
    let quitter = sim.connect("acme", "alice");
    sim.hub.disconnect(sim.now, quitter, DisconnectReason::Clean).unwrap();
    assert!(breaker_changes(&sim.drain()).is_empty());
    assert_eq!(state(&sim), Some(BreakerState::HalfOpen { probe: None }));

    // A probe that stays up for `probe_healthy_after` closes it.
    let probe = sim.connect("acme", "alice");
    let actions = advance_alive(&mut sim, Duration::from_secs(9), Duration::from_secs(1));
    assert!(breaker_changes(&actions).is_empty());
    let actions = sim.advance(Duration::from_secs(1));
    assert_eq!(breaker_changes(&actions), vec![BreakerState::Closed]);
    assert_eq!(state(&sim), Some(BreakerState::Closed));
    let second = sim.connect("acme", "alice");
    assert_ne!(second, probe);
    assert_eq!(sim.hub.user("acme", "alice").unwrap().connection_count(), 2);
}

#[test]
fn hub_side_abnormal_closes_count_toward_the_breaker() {
    // Protocol-violation closes are abnormal closes too: three connections, one after the
    // other, each closed by the hub within a second of opening, are a storm.
    let mut sim = Sim::new(breaker_config());
    let mut actions = Vec::new();
    for _ in 0..3 {
        let c = sim.connect("acme", "alice");
        for _ in 0..5 {
            assert!(sim.hub.receive(sim.now, c, b"not json").is_err());
        }
        let drained = sim.drain();
        assert_eq!(closes(&drained), vec![(c, CloseReason::ProtocolViolation)]);
        actions.extend(drained);
        sim.now += Duration::from_millis(500);
    }
    assert!(audits(&actions).contains(&AuditKind::BreakerOpened));
    assert!(matches!(sim.hub.user("acme", "alice").unwrap().breaker(), BreakerState::Open { .. }));
    assert!(matches!(
        sim.hub.connect(sim.now, Principal::new("acme", "alice")),
        Err(ConnectError::BreakerOpen { .. })
    ));
}

#[test]
fn heartbeat_timeouts_of_connections_that_were_up_a_while_do_not_count() {
    // Issue 10 item 13: three tabs that stop answering after 35 s are a network blip, not a
    // storm (they lived past `probe_healthy_after`, and they were open together).
    let mut sim = Sim::new(breaker_config());
    let ids: Vec<ConnId> = (0..3).map(|_| sim.connect("acme", "alice")).collect();
    sim.advance(Duration::from_secs(25));
    let actions = sim.advance(Duration::from_secs(10));
    assert_eq!(closes(&actions).len(), ids.len());
    assert!(closes(&actions).iter().all(|(_, r)| *r == CloseReason::HeartbeatTimeout));
    assert!(!audits(&actions).contains(&AuditKind::BreakerOpened));
    assert!(sim.hub.connect(sim.now, Principal::new("acme", "alice")).is_ok());
}

/// A detached user is retired after `user_retention` (DESIGN §4). The hub keeps a user whose
/// breaker is not closed so that waiting out retention does not reset an open breaker; but once
/// the breaker has half-opened and nobody returns, nothing will ever change it again, and the
/// user (stream and buffer included) must still be retired eventually.
#[test]
fn a_user_whose_breaker_half_opened_is_still_retired_eventually() {
    let cfg = Config { user_retention: Duration::from_secs(120), ..breaker_config() };
    let mut sim = Sim::new(cfg);
    for _ in 0..3 {
        let id = sim.connect("acme", "alice");
        sim.hub.disconnect(sim.now, id, DisconnectReason::Abnormal).unwrap();
    }
    sim.drain();
    assert!(matches!(sim.hub.user("acme", "alice").unwrap().breaker(), BreakerState::Open { .. }));
    // The open breaker outlives the first retention period (its state must not reset early).
    sim.advance(Duration::from_secs(29));
    assert!(sim.hub.user("acme", "alice").is_some());
    sim.advance(Duration::from_secs(1));
    assert_eq!(
        sim.hub.user("acme", "alice").unwrap().breaker(),
        BreakerState::HalfOpen { probe: None }
    );
    // Nobody comes back. An hour later the user is still held.
    for _ in 0..60 {
        sim.advance(Duration::from_secs(60));
    }
    assert!(
        sim.hub.user("acme", "alice").is_none(),
        "a detached user with a half-open breaker is kept forever (users_detached = {})",
        sim.hub.stats().users_detached
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Hostile and malformed resume frames

struct World {
    sim: Sim,
    alice: Value,
    bob: Value,
    eve: Value,
    acme_lobby_epoch: u64,
    acme_secret_epoch: u64,
    globex_vault_epoch: u64,
}

/// acme/alice (in room `lobby`), acme/bob (in `secret` and `lobby`), globex/eve (in `vault` and globex's own
/// `lobby`), each with messages on every stream. Payloads name their owner.
fn hostile_world(cfg: Config) -> World {
    let mut sim = Sim::new(cfg);
    let (a, alice) = open_flushed(&mut sim, Principal::new("acme", "alice"));
    let (b, bob) = open_flushed(&mut sim, Principal::new("acme", "bob").roles(["admin"]));
    let (e, eve) = open_flushed(&mut sim, Principal::new("globex", "eve"));
    sim.hub.join(sim.now, a, "lobby".into()).unwrap();
    sim.hub.join(sim.now, b, "secret".into()).unwrap();
    // Bob keeps acme's lobby alive while alice is away.
    sim.hub.join(sim.now, b, "lobby".into()).unwrap();
    sim.hub.join(sim.now, e, "vault".into()).unwrap();
    sim.hub.join(sim.now, e, "lobby".into()).unwrap();
    let mut epochs = std::collections::HashMap::new();
    for _ in 0..3 {
        for (target, owner) in [
            (user("acme", "alice"), "alice"),
            (user("acme", "bob"), "bob"),
            (user("globex", "eve"), "eve"),
            (Target::Room { tenant: "acme".into(), room: "lobby".into() }, "acme-lobby"),
            (Target::Room { tenant: "acme".into(), room: "secret".into() }, "bob-room"),
            (Target::Room { tenant: "globex".into(), room: "vault".into() }, "eve-room"),
            (Target::Room { tenant: "globex".into(), room: "lobby".into() }, "eve-room"),
            (Target::Tenant { tenant: "acme".into(), audience: Audience::All }, "acme-all"),
            (
                Target::Tenant { tenant: "acme".into(), audience: Audience::Role("admin".into()) },
                "acme-admin",
            ),
            (Target::Tenant { tenant: "globex".into(), audience: Audience::All }, "eve-tenant"),
        ] {
            let env = Envelope::new(target, EventKind::ToolCompleted).data(json!({"owner": owner}));
            let (p, actions) = publish(&mut sim, env);
            flush(&mut sim, &actions);
            let (name, pos) = p.position.unwrap();
            epochs.insert(owner, (name, pos.epoch));
        }
    }
    // Alice leaves; her next connection tries its luck.
    sim.hub.disconnect(sim.now, a, DisconnectReason::Clean).unwrap();
    sim.drain();
    World {
        sim,
        alice,
        bob,
        eve,
        acme_lobby_epoch: epochs["acme-lobby"].1,
        acme_secret_epoch: epochs["bob-room"].1,
        globex_vault_epoch: epochs["eve-room"].1,
    }
}

/// Nothing another user (or tenant, or a room alice is not in, or an admin-only broadcast) owns
/// ever reaches alice.
fn assert_only_alices(frames: &[Value]) {
    for f in events(frames) {
        let owner = f["data"]["owner"].as_str().unwrap();
        assert!(
            ["alice", "acme-lobby", "acme-all"].contains(&owner),
            "alice received {owner}'s message: {f}"
        );
    }
}

/// A fresh connection of alice in `lobby` (as the application would rejoin her).
fn alice_again(w: &mut World) -> ConnId {
    let (id, _) = open_flushed(&mut w.sim, Principal::new("acme", "alice"));
    w.sim.hub.join(w.sim.now, id, "lobby".into()).unwrap();
    w.sim.drain();
    id
}

#[test]
fn resume_naming_streams_the_connection_does_not_have_replays_nothing_of_them() {
    let mut w = hostile_world(Config::default());
    let (ue, _) = pos(&w.alice, "u");
    let (te, _) = pos(&w.alice, "t");
    let (bob_u, bob_seq) = (pos(&w.bob, "u").0, 3);
    let (eve_u, eve_t) = (pos(&w.eve, "u").0, pos(&w.eve, "t").0);
    let id = alice_again(&mut w);
    let frame = resume(&[
        ("u", ue, 0),
        ("t", te, 0),
        ("r:lobby", w.acme_lobby_epoch, 0),
        ("r:secret", w.acme_secret_epoch, 0),
        ("r:vault", w.globex_vault_epoch, 0),
        ("x", bob_u, 0),
        ("u:bob", bob_u, 0),
        ("acme/bob", bob_u, bob_seq),
        ("", eve_u, 0),
        ("T", eve_t, 0),
    ]);
    let (r, actions) = send(&mut w.sim, id, &frame);
    r.expect("a resume naming foreign streams is answered, not refused");
    assert!(audits(&actions).contains(&AuditKind::ForeignStream));
    let frames = frames_for(&actions, id);
    assert_only_alices(&frames);
    // Her own streams are replayed in full: 3 + 3 on u (her messages), 3 acme-all on t (not the
    // admin-only ones), 3 lobby messages of acme.
    let evs = events(&frames);
    let owners: Vec<&str> = evs.iter().map(|f| f["data"]["owner"].as_str().unwrap()).collect();
    assert_eq!(owners.iter().filter(|o| **o == "alice").count(), 3);
    assert_eq!(owners.iter().filter(|o| **o == "acme-all").count(), 3);
    assert_eq!(owners.iter().filter(|o| **o == "acme-lobby").count(), 3);
    let resumed = frames.last().unwrap();
    assert_eq!(resumed["type"], "resumed");
    assert_eq!(resumed["recovered"], false, "foreign names make the resume incomplete");
    for own in ["u", "t", "r:lobby"] {
        assert_eq!(resumed["streams"][own]["recovered"], true, "{own}: {resumed}");
    }
    for foreign in ["r:secret", "r:vault", "x", "u:bob", "acme/bob", "", "T"] {
        let r = &resumed["streams"][foreign];
        assert_eq!(r["recovered"], false, "{foreign}: {resumed}");
        assert_eq!(r["reason"], "unknown_stream", "{foreign}: {resumed}");
        // Nothing about the foreign stream leaks through the report either.
        assert_eq!((r["epoch"].as_u64(), r["seq"].as_u64()), (Some(0), Some(0)));
    }
}

#[test]
fn resume_with_foreign_or_impossible_positions_is_unrecovered_with_a_reason() {
    let mut w = hostile_world(Config::default());
    let (ue, _) = pos(&w.alice, "u");
    let (te, _) = pos(&w.alice, "t");
    let bob_u = pos(&w.bob, "u").0;
    let eve_t = pos(&w.eve, "t").0;
    let globex_lobby_epoch = {
        // The lobby of globex is another stream with its own epoch.
        let env = Envelope::new(
            Target::Room { tenant: "globex".into(), room: "lobby".into() },
            EventKind::ToolCompleted,
        )
        .data(json!({"owner": "eve-room"}));
        let (p, actions) = publish(&mut w.sim, env);
        flush(&mut w.sim, &actions);
        p.position.unwrap().1.epoch
    };
    assert_ne!(globex_lobby_epoch, w.acme_lobby_epoch);
    // (what, positions, stream, expected reason)
    type Case<'a> = (&'a str, Vec<(&'a str, u64, u64)>, &'a str, &'a str);
    let cases: Vec<Case> = vec![
        ("another user's epoch", vec![("u", bob_u, 0)], "u", "epoch_mismatch"),
        ("another user's epoch and seq", vec![("u", bob_u, 2)], "u", "epoch_mismatch"),
        ("another tenant's broadcast", vec![("t", eve_t, 0)], "t", "epoch_mismatch"),
        (
            "another tenant's room of the same name",
            vec![("r:lobby", globex_lobby_epoch, 0)],
            "r:lobby",
            "epoch_mismatch",
        ),
        ("wrong epoch", vec![("u", ue ^ 1, 0)], "u", "epoch_mismatch"),
        ("seq from the future", vec![("u", ue, 999)], "u", "future_seq"),
        ("seq just past the end", vec![("u", ue, 4)], "u", "future_seq"),
        ("max seq", vec![("t", te, u64::MAX)], "t", "future_seq"),
        ("zero epoch", vec![("u", 0, 0)], "u", "epoch_mismatch"),
    ];
    for (what, positions, stream, reason) in cases {
        let id = alice_again(&mut w);
        let (r, actions) = send(&mut w.sim, id, &resume(&positions));
        r.unwrap_or_else(|e| panic!("{what}: {e}"));
        let frames = frames_for(&actions, id);
        assert_only_alices(&frames);
        assert!(events(&frames).is_empty(), "{what}: nothing to replay: {frames:?}");
        let resumed = frames.last().unwrap();
        assert_eq!(resumed["type"], "resumed", "{what}");
        assert_eq!(resumed["recovered"], false, "{what}: {resumed}");
        assert_eq!(resumed["streams"][stream]["recovered"], false, "{what}: {resumed}");
        assert_eq!(resumed["streams"][stream]["reason"], reason, "{what}: {resumed}");
        w.sim.hub.disconnect(w.sim.now, id, DisconnectReason::Clean).unwrap();
        w.sim.drain();
    }
    assert_eq!(w.sim.hub.stats().closed_by.protocol_violation, 0);
}

#[test]
fn malformed_oversized_and_repeated_resumes_get_a_clear_error_frame() {
    let rooms = 4u32;
    let cfg = Config { max_rooms_per_connection: rooms, ..Config::default() };
    let mut w = hostile_world(cfg);
    let (ue, _) = pos(&w.alice, "u");
    let many = |n: usize| -> String {
        let map: serde_json::Map<String, Value> =
            (0..n).map(|i| (format!("r:room{i}"), json!({"epoch": 1, "seq": 0}))).collect();
        json!({"type": "resume", "positions": map}).to_string()
    };
    let bad: Vec<(&str, String, &str)> = vec![
        ("too many positions", many(2 + rooms as usize + 1), "invalid_field"),
        ("far too many positions", many(1000), "invalid_field"),
        ("no positions", r#"{"type":"resume"}"#.into(), "invalid_field"),
        ("null positions", r#"{"type":"resume","positions":null}"#.into(), "invalid_field"),
        (
            "positions as a list",
            r#"{"type":"resume","positions":[["u",1,0]]}"#.into(),
            "invalid_field",
        ),
        ("positions as a string", r#"{"type":"resume","positions":"u"}"#.into(), "invalid_field"),
        (
            "missing seq",
            r#"{"type":"resume","positions":{"u":{"epoch":1}}}"#.into(),
            "invalid_field",
        ),
        (
            "negative epoch",
            r#"{"type":"resume","positions":{"u":{"epoch":-1,"seq":0}}}"#.into(),
            "invalid_field",
        ),
        (
            "fractional seq",
            r#"{"type":"resume","positions":{"u":{"epoch":1,"seq":0.5}}}"#.into(),
            "invalid_field",
        ),
        (
            "seq beyond u64",
            r#"{"type":"resume","positions":{"u":{"epoch":1,"seq":18446744073709551616}}}"#.into(),
            "invalid_field",
        ),
        (
            "string epoch",
            r#"{"type":"resume","positions":{"u":{"epoch":"1","seq":0}}}"#.into(),
            "invalid_field",
        ),
        (
            "position not an object",
            r#"{"type":"resume","positions":{"u":7}}"#.into(),
            "invalid_field",
        ),
        ("truncated", r#"{"type":"resume","positions":{"u":{"epoch":1,"#.into(), "malformed"),
    ];
    for (what, frame, code) in bad {
        let id = alice_again(&mut w);
        let (r, actions) = send(&mut w.sim, id, &frame);
        let err = r.expect_err(what);
        let frames = frames_for(&actions, id);
        assert_eq!(frames.len(), 1, "{what}: {frames:?}");
        assert_eq!(frames[0]["type"], "error", "{what}");
        assert_eq!(frames[0]["code"], code, "{what}: {err}");
        assert!(frames[0]["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert!(matches!(err, ReceiveError::Peer(_)), "{what}: a peer's fault, not the caller's");
        if code == "invalid_field" {
            assert_eq!(err, ReceiveError::Peer(PeerError::InvalidField { field: "positions" }));
        }
        // The refused frame did not count as the resume: a good one still works.
        let (r, actions) = send(&mut w.sim, id, &resume(&[("u", ue, 0)]));
        r.unwrap_or_else(|e| panic!("{what}: then a valid resume: {e}"));
        let frames = frames_for(&actions, id);
        assert_only_alices(&frames);
        assert_eq!(seqs(&events(&frames)), vec![1, 2, 3], "{what}");
        assert_eq!(frames.last().unwrap()["recovered"], true);
        w.sim.hub.disconnect(w.sim.now, id, DisconnectReason::Clean).unwrap();
        w.sim.drain();
    }

    // Exactly at the cap (u, t and one per allowed room) is accepted.
    let id = alice_again(&mut w);
    let (r, actions) = send(&mut w.sim, id, &many(2 + rooms as usize));
    r.expect("at the cap");
    let frames = frames_for(&actions, id);
    assert_eq!(frames.last().unwrap()["type"], "resumed");
    assert_only_alices(&frames);

    // A second resume on the same connection is refused and replays nothing.
    let (r, actions) = send(&mut w.sim, id, &resume(&[("u", ue, 0)]));
    assert_eq!(r, Err(ReceiveError::Peer(PeerError::AlreadyResumed)));
    let frames = frames_for(&actions, id);
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0]["code"], "already_resumed");

    // Duplicate names in one object do not replay twice.
    let id = alice_again(&mut w);
    let dup = format!(
        r#"{{"type":"resume","positions":{{"u":{{"epoch":{ue},"seq":0}},"u":{{"epoch":{ue},"seq":1}}}}}}"#
    );
    let (r, actions) = send(&mut w.sim, id, &dup);
    let frames = frames_for(&actions, id);
    if r.is_ok() {
        let evs = events(&frames);
        let s = seqs(&evs);
        let mut dedup = s.clone();
        dedup.dedup();
        assert_eq!(s, dedup, "no frame twice");
        assert!(s.windows(2).all(|w| w[0] < w[1]));
    } else {
        assert_eq!(frames[0]["type"], "error");
    }
    assert_only_alices(&frames);
}

#[test]
fn hostile_resumes_during_a_resume_window_still_replay_only_own_data() {
    let cfg = Config { resume_window: Duration::from_secs(5), ..Config::default() };
    let mut w = hostile_world(cfg);
    let bob_u = pos(&w.bob, "u").0;
    let id = alice_again(&mut w);
    assert!(w.sim.hub.connection(id).unwrap().held());
    // Traffic for everyone while alice's connection is held.
    for (target, owner) in [
        (user("acme", "alice"), "alice"),
        (user("acme", "bob"), "bob"),
        (Target::Room { tenant: "acme".into(), room: "secret".into() }, "bob-room"),
        (Target::Room { tenant: "acme".into(), room: "lobby".into() }, "acme-lobby"),
    ] {
        let env = Envelope::new(target, EventKind::AgentStarted).data(json!({"owner": owner}));
        let (_, actions) = publish(&mut w.sim, env);
        flush(&mut w.sim, &actions);
        assert!(frames_for(&actions, id).is_empty(), "held");
    }
    let (r, actions) = send(
        &mut w.sim,
        id,
        &resume(&[("u", bob_u, 0), ("r:secret", w.acme_secret_epoch, 0), ("x", 1, 1)]),
    );
    r.unwrap();
    let frames = frames_for(&actions, id);
    assert_only_alices(&frames);
    // Her own held-back traffic still follows, even though her `u` position was bogus.
    let owners: Vec<&str> =
        events(&frames).iter().map(|f| f["data"]["owner"].as_str().unwrap()).collect();
    assert_eq!(owners, vec!["alice", "acme-lobby"]);
    let resumed = frames.last().unwrap();
    assert_eq!(resumed["streams"]["u"]["reason"], "epoch_mismatch");
    assert_eq!(resumed["streams"]["r:secret"]["reason"], "unknown_stream");
    assert!(!w.sim.hub.connection(id).unwrap().held());
}

// ---------------------------------------------------------------------------------------------
// 6. Rates

#[test]
fn rates_rise_with_traffic_and_decay_with_silence() {
    let mut sim = Sim::default();
    open_flushed(&mut sim, Principal::new("acme", "alice"));
    let (bob, _) = open_flushed(&mut sim, Principal::new("acme", "bob").tier(Tier::Enterprise));
    let rates = |sim: &Sim, u: &str| sim.hub.user("acme", u).unwrap().rates();
    assert_eq!(sim.hub.tier_rates(Tier::Mid).delivered_per_minute, 0.0);

    // 30 s of traffic: 10 events a second to alice, 1 to bob; bob sends a message a second.
    for _ in 0..30 {
        for _ in 0..10 {
            let (_, actions) =
                publish(&mut sim, Envelope::new(user("acme", "alice"), EventKind::ToolCompleted));
            flush(&mut sim, &actions);
        }
        let (_, actions) =
            publish(&mut sim, Envelope::new(user("acme", "bob"), EventKind::ToolCompleted));
        flush(&mut sim, &actions);
        let (r, _) = send(&mut sim, bob, r#"{"type":"message","data":{"q":1}}"#);
        r.unwrap();
        let actions = sim.advance(Duration::from_secs(1));
        for c in pings(&actions) {
            sim.hub.pong(sim.now, c).unwrap();
        }
    }
    let a = rates(&sim, "alice");
    let b = rates(&sim, "bob");
    // 600 and 60 per minute sustained; after half a time constant, about 39 % of that.
    assert!(a.delivered_per_minute > 150.0 && a.delivered_per_minute < 600.0, "{a:?}");
    assert!(b.delivered_per_minute > 15.0 && b.delivered_per_minute < 60.0, "{b:?}");
    assert!(a.delivered_per_minute > 5.0 * b.delivered_per_minute);
    assert!(b.inbound_per_minute > 10.0 && b.inbound_per_minute < 60.0, "{b:?}");
    assert_eq!(a.inbound_per_minute, 0.0);
    assert!(a.connects_per_minute > 0.0 && b.connects_per_minute > 0.0);
    let free = sim.hub.tier_rates(Tier::Free);
    let enterprise = sim.hub.tier_rates(Tier::Enterprise);
    assert!(free.delivered_per_minute >= a.delivered_per_minute * 0.99, "{free:?}");
    assert!(enterprise.delivered_per_minute >= b.delivered_per_minute * 0.99);
    assert!(free.delivered_per_minute > enterprise.delivered_per_minute);
    assert!(enterprise.inbound_per_minute > 10.0 && free.inbound_per_minute == 0.0);
    assert_eq!(sim.hub.tier_rates(Tier::Mid), switchboard::Rates::default());

    // One time constant of silence: about 1/e of the peak.
    let peak = a.delivered_per_minute;
    advance_alive(&mut sim, Duration::from_secs(60), Duration::from_secs(5));
    let later = rates(&sim, "alice").delivered_per_minute;
    assert!(later < peak, "decays");
    let ratio = later / peak;
    assert!((0.30..0.45).contains(&ratio), "after 60 s of silence: {ratio}");
    assert!(sim.hub.tier_rates(Tier::Free).delivered_per_minute < free.delivered_per_minute);
    assert!(rates(&sim, "bob").inbound_per_minute < b.inbound_per_minute);

    // Long silence: practically zero.
    advance_alive(&mut sim, Duration::from_secs(600), Duration::from_secs(20));
    let quiet = rates(&sim, "alice");
    assert!(quiet.delivered_per_minute < peak * 0.01, "{quiet:?}");
    assert!(quiet.delivered_per_minute >= 0.0);
    assert!(sim.hub.tier_rates(Tier::Enterprise).inbound_per_minute < 0.5);

    // Traffic resumes: the rate rises again.
    for _ in 0..5 {
        for _ in 0..10 {
            let (_, actions) =
                publish(&mut sim, Envelope::new(user("acme", "alice"), EventKind::ToolCompleted));
            flush(&mut sim, &actions);
        }
        sim.advance(Duration::from_secs(1));
    }
    assert!(rates(&sim, "alice").delivered_per_minute > quiet.delivered_per_minute + 20.0);
}

// ---------------------------------------------------------------------------------------------
// 7. Detached users: buffered within retention, retired after it

#[test]
fn a_detached_user_is_buffered_and_replayed_within_retention_and_forgotten_after() {
    let retention = Duration::from_secs(120);
    let mut sim = Sim::default();
    let (a, connected) = open_flushed(&mut sim, Principal::new("acme", "alice"));
    let (epoch, seq0) = pos(&connected, "u");
    assert_eq!(seq0, 0);
    let (t_epoch, _) = pos(&connected, "t");
    sim.hub.disconnect(sim.now, a, DisconnectReason::Clean).unwrap();
    sim.drain();
    let since = sim.now;
    let view = sim.hub.user("acme", "alice").expect("kept while detached");
    assert_eq!(view.phase(), UserPhase::Detached { since, retires_at: since + retention });

    // Publishes while detached reach nobody live but are kept.
    sim.advance(Duration::from_secs(30));
    for i in 1..=5u64 {
        let env =
            Envelope::new(user("acme", "alice"), EventKind::ToolCompleted).data(json!({"n": i}));
        let (p, actions) = publish(&mut sim, env);
        assert!(p.undeliverable());
        assert_eq!(
            p.position.as_ref().map(|(n, pos)| (n.clone(), pos.epoch, pos.seq)),
            Some((StreamName::User, epoch, i))
        );
        assert!(actions.iter().all(|a| !matches!(a, Action::Deliver { .. })));
    }
    assert_eq!(sim.hub.user("acme", "alice").unwrap().buffered().0, 5);
    assert_eq!(sim.hub.stats().buffered_messages, 5);

    // Back within retention: the same stream, and exactly the five messages, in order.
    sim.advance(Duration::from_secs(60));
    let (b, connected) = open_flushed(&mut sim, Principal::new("acme", "alice"));
    assert_eq!(pos(&connected, "u"), (epoch, 5), "same epoch: the stream survived");
    assert_eq!(sim.hub.user("acme", "alice").unwrap().phase(), UserPhase::Active);
    let (r, actions) = send(&mut sim, b, &resume(&[("u", epoch, 0), ("t", t_epoch, 0)]));
    r.unwrap();
    let frames = frames_for(&actions, b);
    let evs = events(&frames);
    assert_eq!(seqs(&evs), vec![1, 2, 3, 4, 5]);
    assert!(evs.iter().zip(1..).all(|(f, n)| f["data"]["n"] == n && f["epoch"] == epoch));
    let resumed = frames.last().unwrap();
    assert_eq!(resumed["recovered"], true);
    assert_eq!(resumed["streams"]["u"]["replayed"], 5);
    assert_eq!(sim.hub.stats().replayed, 5);

    // Gone again, beyond retention: retired, stream and buffer with it.
    sim.hub.disconnect(sim.now, b, DisconnectReason::Clean).unwrap();
    sim.drain();
    sim.advance(retention - Duration::from_secs(1));
    assert!(sim.hub.user("acme", "alice").is_some());
    let actions = sim.advance(Duration::from_secs(1));
    assert!(sim.hub.user("acme", "alice").is_none());
    assert!(metrics(&actions).iter().any(|m| matches!(m,
        MetricEvent::UserRetired { user, .. } if user.as_str() == "alice")));
    assert_eq!(sim.hub.stats().users_retired, 1);
    assert_eq!(sim.hub.stats().buffered_messages, 0);
    assert_eq!(sim.hub.stats().buffered_bytes, 0);
    // Publishing to a retired user creates nothing.
    let (p, _) = publish(&mut sim, Envelope::new(user("acme", "alice"), EventKind::ToolCompleted));
    assert_eq!(p.position, None);
    assert!(sim.hub.user("acme", "alice").is_none());

    // A later resume is told the truth: a new stream, nothing recoverable, nothing replayed.
    let (c, connected) = open_flushed(&mut sim, Principal::new("acme", "alice"));
    let (new_epoch, new_seq) = pos(&connected, "u");
    assert_ne!(new_epoch, epoch);
    assert_eq!(new_seq, 0);
    let (r, actions) = send(&mut sim, c, &resume(&[("u", epoch, 5)]));
    r.unwrap();
    let frames = frames_for(&actions, c);
    assert!(events(&frames).is_empty());
    let resumed = &frames[0];
    assert_eq!(resumed["recovered"], false);
    assert_eq!(resumed["streams"]["u"]["reason"], "epoch_mismatch");
    assert_eq!(resumed["streams"]["u"]["epoch"], new_epoch);
    assert_eq!(resumed["streams"]["u"]["seq"], 0);
}

#[test]
fn with_a_resume_window_the_backlog_and_the_held_traffic_arrive_in_order() {
    let cfg = Config { resume_window: Duration::from_secs(5), ..Config::default() };
    let mut sim = Sim::new(cfg);
    let (a, connected) = open_flushed(&mut sim, Principal::new("acme", "alice"));
    let (epoch, _) = pos(&connected, "u");
    // The first connection goes live with its first frame.
    let (r, _) = send(&mut sim, a, &resume(&[("u", epoch, 0)]));
    r.unwrap();
    sim.hub.disconnect(sim.now, a, DisconnectReason::Abnormal).unwrap();
    sim.drain();
    for _ in 0..3 {
        publish(&mut sim, Envelope::new(user("acme", "alice"), EventKind::ToolExecuting));
    }
    let (b, _) = open_flushed(&mut sim, Principal::new("acme", "alice"));
    assert!(sim.hub.connection(b).unwrap().held());
    // Published between connect and resume: held back, not sent ahead of the replay.
    for _ in 0..2 {
        let (p, actions) =
            publish(&mut sim, Envelope::new(user("acme", "alice"), EventKind::AgentThinking));
        assert_eq!(p.delivered, 0);
        assert!(frames_for(&actions, b).is_empty());
    }
    assert_eq!(sim.hub.stats().held_back, 2);
    sim.advance(Duration::from_secs(2));
    let (r, actions) = send(&mut sim, b, &resume(&[("u", epoch, 0)]));
    r.unwrap();
    let frames = frames_for(&actions, b);
    assert_eq!(seqs(&events(&frames)), vec![1, 2, 3, 4, 5]);
    assert_eq!(frames.last().unwrap()["streams"]["u"]["replayed"], 5);
    // Live from now on.
    let (_, actions) =
        publish(&mut sim, Envelope::new(user("acme", "alice"), EventKind::AgentCompleted));
    assert_eq!(seqs(&events(&frames_for(&actions, b))), vec![6]);

    // A connection that never sends anything goes live when the window runs out, with what
    // was published since it connected.
    let (c, _) = open_flushed(&mut sim, Principal::new("acme", "alice"));
    publish(&mut sim, Envelope::new(user("acme", "alice"), EventKind::ToolCompleted));
    let actions = sim.advance(Duration::from_secs(5));
    let frames = frames_for(&actions, c);
    assert_eq!(seqs(&events(&frames)), vec![7]);
    assert!(frames.iter().all(|f| f["type"] != "resumed"));
    assert!(!sim.hub.connection(c).unwrap().held());
}

#[test]
fn a_held_connection_whose_backlog_was_dropped_is_closed_rather_than_losing_it() {
    let cfg = Config {
        resume_window: Duration::from_secs(5),
        retention: Retention { max_messages: 3, ..Retention::default() },
        ..Config::default()
    };
    let mut sim = Sim::new(cfg);
    let (a, _) = open_flushed(&mut sim, Principal::new("acme", "alice"));
    for _ in 0..4 {
        publish(&mut sim, Envelope::new(user("acme", "alice"), EventKind::ToolCompleted));
    }
    let actions = sim.advance(Duration::from_secs(5));
    assert_eq!(closes(&actions), vec![(a, CloseReason::SlowConsumer)]);
    assert!(sim.hub.connection(a).is_none());
    assert_eq!(sim.hub.stats().closed_by.slow_consumer, 1);
}

/// `Retention::max_age`: "Oldest message kept". DESIGN §5: "Each stream keeps a recovery buffer
/// bounded by count, bytes and age." A message older than `max_age` is no longer kept: it is not
/// counted as buffered and a resume that needs it is `recovered: false`.
#[test]
fn messages_older_than_max_age_are_neither_kept_nor_replayed() {
    let cfg = Config {
        retention: Retention { max_age: Duration::from_secs(30), ..Retention::default() },
        ..Config::default()
    };
    let mut sim = Sim::new(cfg);
    let (a, connected) = open_flushed(&mut sim, Principal::new("acme", "alice"));
    let (epoch, _) = pos(&connected, "u");
    sim.hub.disconnect(sim.now, a, DisconnectReason::Clean).unwrap();
    sim.drain();
    for _ in 0..3 {
        publish(&mut sim, Envelope::new(user("acme", "alice"), EventKind::ToolCompleted));
    }
    assert_eq!(sim.hub.user("acme", "alice").unwrap().buffered().0, 3);
    // Within `user_retention` (2 min) but past `max_age`.
    sim.advance(Duration::from_secs(31));
    let held = sim.hub.user("acme", "alice").unwrap().buffered();
    let gauge = sim.hub.stats().buffered_messages;
    let (b, _) = open_flushed(&mut sim, Principal::new("acme", "alice"));
    let (r, actions) = send(&mut sim, b, &resume(&[("u", epoch, 0)]));
    r.unwrap();
    let frames = frames_for(&actions, b);
    let resumed = frames.last().unwrap();
    assert_eq!(
        (held.0, gauge, resumed["recovered"].as_bool(), events(&frames).len()),
        (0, 0, Some(false), 0),
        "31 s after publishing with max_age 30 s: buffered {held:?}, gauge {gauge}, resume {resumed}"
    );
    assert_eq!(resumed["streams"]["u"]["reason"], "gap_too_old");
}

// ---------------------------------------------------------------------------------------------
// Room retention

fn room_note(room: &str, n: u64) -> Envelope {
    let target = Target::Room { tenant: "acme".into(), room: room.into() };
    Envelope::new(target, EventKind::custom("note")).data(json!({ "n": n }))
}

/// Joins `room` and returns its `joined` position.
fn join_at(sim: &mut Sim, conn: ConnId, room: &str) -> (u64, u64) {
    assert!(sim.hub.join(sim.now, conn, room.into()).unwrap());
    let frames = frames_for(&sim.drain(), conn);
    assert_eq!(frames.len(), 1);
    assert_eq!(
        (frames[0]["type"].as_str(), frames[0]["stream"].as_str()),
        (Some("joined"), Some(&*format!("r:{room}")))
    );
    (frames[0]["epoch"].as_u64().unwrap(), frames[0]["seq"].as_u64().unwrap())
}

#[test]
fn an_idle_room_keeps_its_stream_so_its_only_member_can_resume_it() {
    let cfg = Config { room_retention: secs(30), ..quiet() };
    let mut sim = Sim::new(cfg);
    let (a1, _) = open(&mut sim, Principal::new("acme", "alice"));
    let (epoch, seq) = join_at(&mut sim, a1, "lobby");
    assert_eq!(seq, 0);
    let (_, actions) = publish(&mut sim, room_note("lobby", 1));
    assert_eq!(seqs(&events(&frames_for(&actions, a1))), vec![1]);

    // Her only connection drops: the room goes idle, its stream keeps buffering.
    sim.hub.disconnect(sim.now, a1, DisconnectReason::Abnormal).unwrap();
    sim.drain();
    assert_eq!((sim.hub.stats().rooms, sim.hub.stats().rooms_idle), (0, 1));
    for n in 2..=4 {
        let (p, _) = publish(&mut sim, room_note("lobby", n));
        assert!(p.undeliverable());
        assert_eq!(p.position.unwrap().1.seq, n);
    }
    sim.now += secs(29);
    sim.hub.tick(sim.now);
    sim.drain();
    assert_eq!(sim.hub.stats().rooms_idle, 1, "still within room_retention");

    // She comes back: the same room, the same epoch, and exactly what she missed.
    let (a2, _) = open(&mut sim, Principal::new("acme", "alice"));
    assert_eq!(join_at(&mut sim, a2, "lobby"), (epoch, 4));
    assert_eq!((sim.hub.stats().rooms, sim.hub.stats().rooms_idle), (1, 0));
    let (r, actions) = send(&mut sim, a2, &resume(&[("r:lobby", epoch, 1)]));
    r.unwrap();
    let frames = frames_for(&actions, a2);
    let replayed: Vec<u64> = frames
        .iter()
        .filter(|f| f["type"] == "note")
        .map(|f| f["data"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(replayed, vec![2, 3, 4]);
    let resumed = frames.last().unwrap();
    assert_eq!(resumed["type"], "resumed");
    assert_eq!(resumed["streams"]["r:lobby"]["recovered"], true);
    sim.hub.check_invariants().unwrap();

    // Past room_retention an idle room is dropped: joining it again starts a new stream.
    sim.hub.disconnect(sim.now, a2, DisconnectReason::Clean).unwrap();
    sim.drain();
    sim.now += secs(31);
    sim.hub.tick(sim.now);
    sim.drain();
    assert_eq!((sim.hub.stats().rooms, sim.hub.stats().rooms_idle), (0, 0));
    let (a3, _) = open(&mut sim, Principal::new("acme", "alice"));
    let (new_epoch, new_seq) = join_at(&mut sim, a3, "lobby");
    assert_ne!(new_epoch, epoch);
    assert_eq!(new_seq, 0);
    let (_, actions) = send(&mut sim, a3, &resume(&[("r:lobby", epoch, 4)]));
    let resumed = frames_for(&actions, a3).pop().unwrap();
    assert_eq!(resumed["streams"]["r:lobby"]["reason"], "epoch_mismatch");
    sim.hub.check_invariants().unwrap();
}

#[test]
fn idle_rooms_are_capped_and_the_oldest_goes_first() {
    let cfg = Config { room_retention: secs(60), max_idle_rooms: 1, ..quiet() };
    let mut sim = Sim::new(cfg);
    let (a, _) = open(&mut sim, Principal::new("acme", "alice"));
    let (old_epoch, _) = join_at(&mut sim, a, "first");
    let (second_epoch, _) = join_at(&mut sim, a, "second");
    sim.hub.leave(sim.now, a, "first").unwrap();
    assert_eq!(sim.hub.stats().rooms_idle, 1);
    sim.now += secs(1);
    sim.hub.leave(sim.now, a, "second").unwrap();
    sim.drain();
    // Only one idle room may be kept: "first" was dropped early, "second" is kept.
    assert_eq!((sim.hub.stats().rooms, sim.hub.stats().rooms_idle), (0, 1));
    assert_ne!(join_at(&mut sim, a, "first").0, old_epoch, "first was dropped and starts anew");
    assert_eq!(join_at(&mut sim, a, "second").0, second_epoch, "second was kept idle");
    sim.hub.check_invariants().unwrap();
}

#[test]
fn without_room_retention_an_emptied_room_is_dropped_at_once() {
    let mut sim = Sim::new(quiet());
    let (a, _) = open(&mut sim, Principal::new("acme", "alice"));
    let (epoch, _) = join_at(&mut sim, a, "lobby");
    sim.hub.leave(sim.now, a, "lobby").unwrap();
    sim.drain();
    assert_eq!((sim.hub.stats().rooms, sim.hub.stats().rooms_idle), (0, 0));
    assert_ne!(join_at(&mut sim, a, "lobby").0, epoch);
}
