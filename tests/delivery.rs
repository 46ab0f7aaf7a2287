//! Delivery guarantees through the public API: backpressure and slow consumers, skipped
//! `agent_thinking` accounting, the reconnect breaker and rate meters. All on a virtual clock.
//! Resume and recovery live in `tests/recovery.rs`.
mod common;
mod delivery_support;

use std::time::Duration;

use common::*;
use delivery_support::*;
use serde_json::{Value, json};
use switchboard::{
    Action, Audience, AuditKind, BreakerConfig, BreakerState, CloseReason, ClosedBy, Config,
    ConnId, ConnectError, DisconnectReason, Envelope, EventKind, MetricEvent, Principal, Retention,
    StreamName, Target, Tier,
};

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
            Action::Audit(e) if e.kind == AuditKind::BreakerOpened => Some((**e).clone()),
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
