//! Issue 10 item 3: a replay ignored the hard unwritten limit (1,000 messages of ~1 KB to a user
//! and 1,000 to its tenant, one `resume` queued ~2 MB against 1 MiB, and the connection stayed
//! open). The rule now: a replay never takes a connection past `max_unwritten_bytes`; streams are
//! replayed in order, and one whose missed messages do not all fit in what is left is not
//! replayed at all but reported `recovered: false` with reason `too_large` (the client refetches
//! it); a held backlog that does not fit closes the connection with `SlowConsumer`.
mod common;

use common::*;
use serde_json::{Value, json};
use switchboard::{
    Action, CloseReason, Config, ConnId, DisconnectReason, Envelope, EventKind, Principal,
    Retention, Target,
};

fn connected_positions(actions: &[Action], conn: ConnId) -> Value {
    let frames = frames_for(actions, conn);
    let connected = frames.iter().find(|f| f["type"] == "connected").expect("connected frame");
    connected["streams"].clone()
}

fn cfg() -> Config {
    Config {
        retention: Retention { max_messages: 5000, max_bytes: 8 << 20, ..Retention::default() },
        ..quiet()
    }
}

/// Publishes `n` messages of about `pad` bytes to alice's user stream and `m` of about `tpad`
/// to her tenant's stream.
fn publish(sim: &mut Sim, (n, pad): (u64, usize), (m, tpad): (u64, usize)) {
    for i in 0..n.max(m) {
        if i < n {
            let data = json!({ "i": i, "pad": "x".repeat(pad) });
            let to_user = Envelope::new(user_target("acme", "alice"), EventKind::ToolCompleted);
            sim.hub.publish(sim.now, to_user.data(data)).unwrap();
        }
        if i < m {
            let data = json!({ "i": i, "pad": "y".repeat(tpad) });
            let to_tenant = Envelope::new(Target::tenant("acme"), EventKind::custom("notice"));
            sim.hub.publish(sim.now, to_tenant.data(data)).unwrap();
        }
    }
    sim.drain();
}

/// What one `resume` handed out: the event seqs per stream in order, the `resumed` frame, and
/// the total bytes.
struct Replayed {
    seqs: Vec<(String, u64)>,
    resumed: Value,
    bytes: usize,
}

fn resume(sim: &mut Sim, conn: ConnId, positions: &Value) -> Replayed {
    let resume = json!({ "type": "resume", "positions": positions }).to_string();
    sim.hub.receive(sim.now, conn, resume.as_bytes()).unwrap();
    let actions = sim.drain();
    assert!(closes(&actions).is_empty(), "the resumed connection stays open");
    let mut out = Replayed { seqs: Vec::new(), resumed: Value::Null, bytes: 0 };
    for a in &actions {
        if let Action::Deliver { frame, .. } = a {
            out.bytes += frame.len();
        }
    }
    for (to, frame) in deliveries(&actions) {
        assert_eq!(to, conn);
        if frame["type"] == "resumed" {
            out.resumed = frame;
        } else if let Some(seq) = frame["seq"].as_u64() {
            assert!(out.resumed.is_null(), "`resumed` comes after the replay");
            out.seqs.push((frame["stream"].as_str().unwrap().to_owned(), seq));
        }
    }
    out
}

fn seqs_of(r: &Replayed, stream: &str) -> Vec<u64> {
    r.seqs.iter().filter(|(s, _)| s == stream).map(|(_, q)| *q).collect()
}

/// Alice is away while `user` and `tenant` messages are published, then comes back and resumes.
/// Checks the limit, the open connection, `resumed`, and each stream's outcome
/// (`fits`: replayed exactly and in order; otherwise `too_large` and nothing of it replayed),
/// then that live delivery works on every stream.
fn away_then_resume(user: (u64, usize), tenant: (u64, usize), fits: [bool; 2]) {
    let cfg = cfg();
    let limit = cfg.max_unwritten_bytes as usize;
    let mut sim = Sim::new(cfg);
    let first = sim.hub.connect(sim.now, Principal::new("acme", "alice")).unwrap();
    let positions = connected_positions(&sim.drain(), first);
    sim.hub.disconnect(sim.now, first, DisconnectReason::Clean).unwrap();
    sim.drain();
    publish(&mut sim, user, tenant);

    let again = sim.hub.connect(sim.now, Principal::new("acme", "alice")).unwrap();
    let connected: usize = sim
        .drain()
        .iter()
        .map(|a| if let Action::Deliver { frame, .. } = a { frame.len() } else { 0 })
        .sum();
    let r = resume(&mut sim, again, &positions);
    assert!(
        connected + r.bytes <= limit,
        "{} bytes unwritten after the resume against a limit of {limit}",
        connected + r.bytes
    );
    assert_eq!(r.resumed["type"], "resumed", "the resume is answered");
    assert_eq!(r.resumed["recovered"], fits.iter().all(|f| *f), "{}", r.resumed);
    for ((stream, fit), (n, _)) in ["u", "t"].into_iter().zip(fits).zip([user, tenant]) {
        let report = &r.resumed["streams"][stream];
        if fit {
            assert_eq!(seqs_of(&r, stream), (1..=n).collect::<Vec<u64>>(), "{stream}: exact");
            assert_eq!(report["recovered"], true, "{report}");
            assert_eq!(report["replayed"], n, "{report}");
        } else {
            assert!(seqs_of(&r, stream).is_empty(), "{stream}: never a partial replay");
            assert_eq!(report["recovered"], false, "{report}");
            assert_eq!(report["reason"], "too_large", "{report}");
            assert_eq!(report["replayed"], 0, "{report}");
            assert_eq!(report["seq"], n, "{report}: the position to refetch from");
        }
    }

    // The client reads what it got; live delivery goes on, on every stream.
    sim.hub.written(sim.now, again, connected + r.bytes).unwrap();
    let live_frames = |sim: &mut Sim| {
        let actions = sim.drain();
        assert!(closes(&actions).is_empty());
        let frames = frames_for(&actions, again);
        frames
            .iter()
            .map(|f| (f["stream"].as_str().unwrap().to_owned(), f["seq"].as_u64().unwrap()))
            .collect::<Vec<_>>()
    };
    let to_user = Envelope::new(user_target("acme", "alice"), EventKind::ToolCompleted);
    sim.hub.publish(sim.now, to_user).unwrap();
    let to_tenant = Envelope::new(Target::tenant("acme"), EventKind::custom("notice"));
    sim.hub.publish(sim.now, to_tenant).unwrap();
    let live = live_frames(&mut sim);
    assert_eq!(live, [("u".to_owned(), user.0 + 1), ("t".to_owned(), tenant.0 + 1)], "live");
    let view = sim.hub.connection(again).expect("still open");
    assert!(view.unwritten_bytes() <= limit as u64);
}

#[test]
fn the_issue_scenario_never_exceeds_the_limit_and_reports_both_streams_too_large() {
    // ~1.1 MB on each stream: neither fits on its own.
    away_then_resume((1000, 1000), (1000, 1000), [false, false]);
}

#[test]
fn streams_replay_in_order_while_they_fit_and_the_one_that_does_not_is_too_large() {
    // ~0.6 MB each: the user's stream fits, the tenant's does not fit in what is left.
    away_then_resume((1000, 500), (1000, 500), [true, false]);
}

#[test]
fn a_stream_too_large_does_not_stop_the_streams_after_it() {
    away_then_resume((1000, 1000), (100, 1000), [false, true]);
}

#[test]
fn a_replay_that_fits_is_whole() {
    away_then_resume((300, 1000), (300, 1000), [true, true]);
}

#[test]
fn a_held_backlog_that_does_not_fit_closes_with_slow_consumer_instead_of_exceeding_the_limit() {
    let cfg = Config { resume_window: secs(5), ..cfg() };
    let limit = cfg.max_unwritten_bytes as usize;
    let mut sim = Sim::new(cfg);
    let first = sim.hub.connect(sim.now, Principal::new("acme", "alice")).unwrap();
    sim.drain();
    sim.hub.disconnect(sim.now, first, DisconnectReason::Clean).unwrap();
    sim.drain();
    let again = sim.hub.connect(sim.now, Principal::new("acme", "alice")).unwrap();
    let connected = frames_for(&sim.drain(), again);
    assert_eq!(connected.len(), 1);
    // Held: ~1.1 MB to the user during the window, then the window ends without a resume.
    publish(&mut sim, (1000, 1000), (0, 0));
    let actions = sim.advance(secs(6));
    let bytes: usize = actions
        .iter()
        .map(|a| if let Action::Deliver { frame, .. } = a { frame.len() } else { 0 })
        .sum();
    assert!(bytes <= limit, "{bytes} bytes handed out against {limit}");
    assert_eq!(bytes, 0, "nothing of a backlog that does not fit");
    assert_eq!(closes(&actions), vec![(again, CloseReason::SlowConsumer)]);
}

#[test]
fn a_held_backlog_that_fits_is_replayed_whole_when_the_window_ends() {
    let cfg = Config { resume_window: secs(5), ..cfg() };
    let mut sim = Sim::new(cfg);
    let first = sim.hub.connect(sim.now, Principal::new("acme", "alice")).unwrap();
    sim.drain();
    sim.hub.disconnect(sim.now, first, DisconnectReason::Clean).unwrap();
    sim.drain();
    let again = sim.hub.connect(sim.now, Principal::new("acme", "alice")).unwrap();
    sim.drain();
    publish(&mut sim, (500, 1000), (0, 0));
    let actions = sim.advance(secs(6));
    assert!(closes(&actions).is_empty());
    let seqs: Vec<u64> =
        frames_for(&actions, again).iter().filter_map(|f| f["seq"].as_u64()).collect();
    assert_eq!(seqs, (1..=500).collect::<Vec<u64>>());
}
