//! Late ticks, deterministically: the clock passes an age timer's deadline and a `resume` reaches
//! the hub before the tick does (as when a socket event and a due timer are ready together).
//! `tests/resume_props.rs` covers the same rule with random sequences; these are its two cases
//! written out.
mod common;

use std::time::Duration;

use common::Sim;
use serde_json::{Value, json};
use switchboard::{
    Config, ConnId, DisconnectReason, Envelope, EventKind, Principal, Retention, Target,
};

const MAX_AGE: Duration = Duration::from_secs(30);

/// Retention of 6 messages for 30 s, users kept 60 s after their last connection, this resume
/// window.
fn config(resume_window: Duration) -> Config {
    Config {
        retention: Retention { max_messages: 6, max_bytes: 1 << 30, max_age: MAX_AGE },
        user_retention: Duration::from_secs(60),
        resume_window,
        ..Config::default()
    }
}

fn user_env(user: &str, n: u64) -> Envelope {
    let target = Target::User { tenant: "acme".into(), user: user.into() };
    Envelope::new(target, EventKind::ToolCompleted).data(json!({ "id": n }))
}

/// Connects `alice` and returns the id and her user stream's epoch from the `connected` frame.
fn connect_alice(sim: &mut Sim) -> (ConnId, u64) {
    let id = sim.hub.connect(sim.now, Principal::new("acme", "alice")).expect("admitted");
    let frames = common::frames_for(&sim.drain(), id);
    assert_eq!(frames[0]["type"], "connected");
    (id, frames[0]["streams"]["u"]["epoch"].as_u64().expect("epoch"))
}

fn resume_u(sim: &mut Sim, id: ConnId, epoch: u64, seq: u64) -> Vec<Value> {
    let frame = json!({"type": "resume", "positions": {"u": {"epoch": epoch, "seq": seq}}});
    sim.hub.receive(sim.now, id, frame.to_string().as_bytes()).expect("resume accepted");
    common::frames_for(&sim.drain(), id)
}

/// Within the window, a late `resume` replays nothing older than `max_age`: the hub trims by
/// age right before the replay, although the age timer has not fired yet.
#[test]
fn a_late_resume_in_the_window_replays_nothing_older_than_max_age() {
    let mut sim = Sim::new(config(Duration::from_secs(3)));
    let (phone, epoch) = connect_alice(&mut sim);
    let frames = resume_u(&mut sim, phone, epoch, 0);
    assert_eq!(frames.last().expect("resumed")["recovered"], true);
    sim.hub.disconnect(sim.now, phone, DisconnectReason::Clean).expect("live");

    // m1 at t0, m2 at t0+10s, both kept for the detached user.
    let p = sim.hub.publish(sim.now, user_env("alice", 1)).expect("accepted");
    assert_eq!((p.delivered, p.held, p.undeliverable()), (0, 0, true));
    assert!(common::deliveries(&sim.advance(Duration::from_secs(10))).is_empty());
    sim.hub.publish(sim.now, user_env("alice", 2)).expect("accepted");
    // t0+29s: the phone is back, held; m3 waits for its resume.
    assert!(common::deliveries(&sim.advance(Duration::from_secs(19))).is_empty());
    let (phone, again) = connect_alice(&mut sim);
    assert_eq!(again, epoch);
    let p = sim.hub.publish(sim.now, user_env("alice", 3)).expect("accepted");
    assert_eq!((p.delivered, p.held, p.undeliverable()), (0, 1, false));
    assert_eq!(sim.hub.stats().buffered_messages, 3);

    // t0+30s+1ns, no tick yet: m1 is past max_age and its timer is overdue.
    sim.now += Duration::from_secs(1) + Duration::from_nanos(1);
    let frames = resume_u(&mut sim, phone, epoch, 0);
    let ids: Vec<u64> = frames.iter().filter_map(|f| f["data"]["id"].as_u64()).collect();
    assert_eq!(ids, vec![3], "only the held-back m3 (the gap from seq 0 needs m1): {frames:?}");
    let report = &frames.last().expect("resumed")["streams"]["u"];
    assert_eq!(report["recovered"], false, "{report}");
    assert_eq!(report["reason"], "gap_too_old");
    assert_eq!(
        (report["available_from"].as_u64(), report["replayed"].as_u64()),
        (Some(2), Some(0))
    );
    assert_eq!(sim.hub.stats().buffered_messages, 2);
    sim.hub.check_invariants().expect("invariants");
    assert!(common::deliveries(&sim.advance(Duration::ZERO)).is_empty());
    assert_eq!(sim.hub.stats().buffered_messages, 2);
    sim.hub.check_invariants().expect("invariants after the late tick");
}

/// Regression (fails against the hub as of 9ef776e): a late `resume` whose age trim empties a
/// stream's buffer leaves that stream's age timer armed, and `check_invariants` reports
/// "user stream: age timer armed true with 0 buffered" (the documented invariant, see
/// `Stream::trim_timer`: armed exactly while anything is buffered).
///
/// Input: alice connects (no window) at t0; an event is published to her (seq 1); she
/// disconnects; the clock moves 31 s without a `tick` (the age timer, due at t0+30s+1ns, is
/// overdue); she reconnects and resumes from seq 0. Expected: `gap_too_old`, nothing buffered,
/// no age timer armed, invariants hold. Actual: the report and the gauge are right, but the
/// timer stays armed on the empty stream until the next `tick` (harmless then: it fires, trims
/// nothing and is not re-armed).
///
/// Suspected cause: `Hub::release` (src/inbound.rs) trims each stream with `Sink::trim` before
/// replaying but, unlike `Hub::tick`, neither cancels nor re-arms the stream's `trim_timer`
/// afterwards.
#[test]
fn a_late_replay_that_empties_a_buffer_leaves_no_age_timer_armed() {
    let mut sim = Sim::new(config(Duration::ZERO));
    let (laptop, epoch) = connect_alice(&mut sim);
    let p = sim.hub.publish(sim.now, user_env("alice", 1)).expect("accepted");
    assert_eq!(p.delivered, 1);
    sim.drain();
    sim.hub.disconnect(sim.now, laptop, DisconnectReason::Clean).expect("live");
    sim.hub.check_invariants().expect("invariants before");

    sim.now += MAX_AGE + Duration::from_secs(1);
    let (laptop, _) = connect_alice(&mut sim);
    let frames = resume_u(&mut sim, laptop, epoch, 0);
    assert_eq!(frames.len(), 1, "only the resumed frame: {frames:?}");
    let report = &frames[0]["streams"]["u"];
    assert_eq!(
        (report["recovered"].as_bool(), report["reason"].as_str()),
        (Some(false), Some("gap_too_old"))
    );
    assert_eq!(report["available_from"].as_u64(), Some(2));
    assert_eq!(sim.hub.stats().buffered_messages, 0);
    assert_eq!(sim.hub.check_invariants(), Ok(()), "right after the late replay");
}
