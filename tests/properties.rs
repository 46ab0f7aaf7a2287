//! Property tests: random operation sequences run against the hub and against the reference
//! model of `switchboard-testkit` (its [`model`](switchboard_testkit::model) docs say what the
//! model predicts, what it takes from the hub and what it leaves out), with every action, every
//! call's result, `stats()`, the views and `poll_timeout` compared after every step, and the four
//! properties of the design (section 9) asserted directly: deliveries only to live connections
//! the target admits, no stale id honoured, stats equal to the model's, seqs strictly increasing.
//! The minimal cases these properties found live in `tests/properties_regressions.rs`.

use proptest::prelude::*;
use switchboard::{Action, UserLimitPolicy};
use switchboard_testkit::frames::parse;
use switchboard_testkit::strategy::{
    IDLE_ROOM_RETENTION, cases, idle_steps, knobs, policy, raw_frame, steps,
};
use switchboard_testkit::vocab::{
    GARBAGE, HEARTBEAT, In, Knobs, NEWEST, NEWEST_BUT_ONE, NO_DETACHED_CAP, OBJECT_GARBAGE, Op,
    RETENTION, Step, Tgt, Who,
};
use switchboard_testkit::{Runner, run};

proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::with_cases(cases(2000))
    })]

    /// Random sequences under `UserLimitPolicy::Reject`.
    #[test]
    fn hub_matches_the_model_with_reject_policy(
        knobs in knobs(UserLimitPolicy::Reject, HEARTBEAT),
        steps in steps(OBJECT_GARBAGE),
    ) {
        run(&knobs, &steps)?;
    }

    /// Random sequences under `UserLimitPolicy::EvictOldest`.
    #[test]
    fn hub_matches_the_model_with_evict_oldest_policy(
        knobs in knobs(UserLimitPolicy::EvictOldest, HEARTBEAT),
        steps in steps(OBJECT_GARBAGE),
    ) {
        run(&knobs, &steps)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::with_cases(cases(1000))
    })]

    /// The same model with a heartbeat interval shorter than its timeout (a configuration
    /// `Config::validate` accepts); see
    /// `regression_ping_after_activity_is_late_when_interval_is_shorter_than_timeout`.
    #[test]
    fn hub_matches_the_model_with_a_heartbeat_interval_shorter_than_its_timeout(
        knobs in policy().prop_flat_map(|p| knobs(p, (4_000, 8_000))),
        steps in steps(OBJECT_GARBAGE),
    ) {
        run(&knobs, &steps)?;
    }

    /// The same model with client frames that are JSON arrays rather than objects among the
    /// garbage; see `regression_json_array_frames_are_refused_as_malformed`.
    #[test]
    fn hub_matches_the_model_when_clients_send_non_object_json(
        knobs in policy().prop_flat_map(|p| knobs(p, HEARTBEAT)),
        steps in steps(GARBAGE.len()),
    ) {
        run(&knobs, &steps)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::with_cases(cases(1000))
    })]

    /// Rooms emptied (their last member leaves or drops) and joined again before, exactly when
    /// and after `room_retention` runs out, with resumes from what the earlier connection
    /// remembers (frames large enough for a resume with real epochs).
    #[test]
    fn hub_matches_the_model_when_rooms_idle_and_are_joined_again(
        knobs in policy().prop_flat_map(|p| knobs(p, HEARTBEAT)).prop_map(|k| Knobs {
            room_retention: IDLE_ROOM_RETENTION,
            max_frame_bytes: 4_096,
            ..k
        }),
        steps in idle_steps(),
    ) {
        run(&knobs, &steps)?;
    }

    /// Raw client frame bytes (frames spelled from the raw tables, cut short, or any bytes)
    /// mixed into the operations: each is answered as the protocol reads it.
    #[test]
    fn hub_matches_the_model_with_raw_client_frames_mixed_in(
        knobs in policy().prop_flat_map(|p| knobs(p, HEARTBEAT)),
        steps in steps(OBJECT_GARBAGE),
        raw in prop::collection::vec((any::<u8>(), raw_frame()), 1..20),
    ) {
        let mut mixed = steps;
        for (at, frame) in raw {
            let who = Who { live: true, n: at, forged: None, exact: None };
            let at = usize::from(at) % (mixed.len() + 1);
            mixed.insert(at, Step { back: 0, op: Op::Receive { who, frame } });
        }
        run(&knobs, &mixed)?;
    }
}

/// Knobs for the idle-room examples: room retention on, frames large enough for a resume.
fn idle_knobs() -> Knobs {
    Knobs {
        policy: UserLimitPolicy::Reject,
        global_broadcast: false,
        user_retention: RETENTION,
        max_frame_bytes: 4_096,
        tenant_cap: None,
        heartbeat: HEARTBEAT,
        retention: None,
        max_buffered_bytes: None,
        backpressure: None,
        resume_window: 0,
        breaker: None,
        max_detached_users: NO_DETACHED_CAP,
        room_retention: IDLE_ROOM_RETENTION,
    }
}

/// The `joined` frames' epochs and the `resumed` frame's report of the room, in a run where a
/// connection joins `room0`, gets two events, leaves (the room is empty), the room gets one
/// more event, the clock moves by `wait` ms, and a new connection of the same user joins again
/// and resumes with what the first one remembers.
fn rejoin_after(wait: u32) -> (Vec<u64>, serde_json::Value) {
    let connect = Op::Connect { tenant: 0, user: 0, tier: 3, roles: 0, expires_in: None };
    let event = Op::Publish { target: Tgt::Room(0, 0), kind: 3, thread: None };
    let ops = [
        connect.clone(),
        Op::Join { who: NEWEST, room: 0 },
        event.clone(),
        event.clone(),
        Op::Leave { who: NEWEST, room: 0, joined: true },
        event,
        Op::Tick(wait),
        connect,
        Op::Join { who: NEWEST, room: 0 },
        Op::Receive { who: NEWEST, frame: In::Remembered(NEWEST_BUT_ONE, false) },
    ];
    let mut runner = Runner::new(&idle_knobs());
    let (mut joined, mut report) = (Vec::new(), serde_json::Value::Null);
    for op in ops {
        runner.apply(&Step { back: 0, op }).unwrap_or_else(|e| panic!("wait {wait}: {e}"));
        for a in runner.actions() {
            let Action::Deliver { frame, .. } = a else { continue };
            let v = parse(frame.as_str());
            match v["type"].as_str() {
                Some("joined") => joined.push(v["epoch"].as_u64().expect("an epoch")),
                Some("resumed") => report = v["streams"]["r:room0"].clone(),
                _ => {}
            }
        }
    }
    (joined, report)
}

/// Within `room_retention` an emptied room keeps its stream: a re-join continues the epoch and a
/// resume recovers what the room got while empty. From the instant the retention runs out it is
/// gone: a re-join starts a new epoch and the resume says why it cannot recover.
#[test]
fn a_room_joined_again_within_its_retention_continues_its_stream_and_after_it_starts_anew() {
    let last = IDLE_ROOM_RETENTION as u32;
    for (wait, kept) in [(1, true), (last - 1, true), (last, false), (last + 1, false)] {
        let (joined, report) = rejoin_after(wait);
        assert_eq!(joined.len(), 2, "wait {wait}: two joins");
        assert_eq!(joined[0] == joined[1], kept, "wait {wait}: epochs {joined:?}");
        assert_eq!(report["recovered"], kept, "wait {wait}: {report}");
        if kept {
            assert_eq!(report["replayed"], 1, "wait {wait}: the event sent while idle: {report}");
        } else {
            assert_eq!(report["reason"], "epoch_mismatch", "wait {wait}: {report}");
        }
    }
}

/// The raw frames the strategy makes reach every way the protocol reads bytes: refused for each
/// reason, valid frames the model answers, and valid frames outside its domain (not sent).
#[test]
fn raw_frames_reach_every_reading() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
    use switchboard::PeerError;
    use switchboard_testkit::raw::{Decoded, decode};
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[3; 32]);
    let mut runner = TestRunner::new_with_rng(Config::default(), rng);
    let mut seen = std::collections::BTreeMap::<&str, u32>::new();
    for _ in 0..2_000 {
        let In::Raw(bytes) = raw_frame().new_tree(&mut runner).unwrap().current() else {
            panic!("raw_frame makes raw frames");
        };
        let decoded = decode(&bytes, 8);
        let class = match (&decoded, decoded.model_frame(&bytes)) {
            (Decoded::Refused(PeerError::Malformed { .. }), _) => "malformed",
            (Decoded::Refused(PeerError::MissingType), _) => "missing_type",
            (Decoded::Refused(PeerError::UnknownType), _) => "unknown_type",
            (Decoded::Refused(PeerError::InvalidField { .. }), _) => "invalid_field",
            (Decoded::Refused(other), _) => panic!("decode refuses with {other:?}"),
            (_, None) => "outside the model",
            (Decoded::Resume(_), Some(_)) => "resume",
            (_, Some(_)) => "answered",
        };
        *seen.entry(class).or_default() += 1;
    }
    // Valid resumes are the rarest (a `positions` field, well formed, and nothing invalid).
    let at_least = [
        ("malformed", 10),
        ("missing_type", 10),
        ("unknown_type", 10),
        ("invalid_field", 10),
        ("outside the model", 10),
        ("answered", 10),
        ("resume", 3),
    ];
    for (class, n) in at_least {
        assert!(seen.get(class).copied().unwrap_or(0) >= n, "{class}: {seen:?}");
    }
}
