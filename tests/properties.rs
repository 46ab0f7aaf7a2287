//! Property tests: random operation sequences run against the hub and against the reference
//! model of `switchboard-testkit` (its [`model`](switchboard_testkit::model) docs say what the
//! model predicts, what it takes from the hub and what it leaves out), with every action, every
//! call's result, `stats()`, the views and `poll_timeout` compared after every step, and the four
//! properties of the design (section 9) asserted directly: deliveries only to live connections
//! the target admits, no stale id honoured, stats equal to the model's, seqs strictly increasing.
//! The minimal cases these properties found live in `tests/properties_regressions.rs`.

use proptest::prelude::*;
use switchboard::UserLimitPolicy;
use switchboard_testkit::run;
use switchboard_testkit::strategy::{cases, knobs, policy, steps};
use switchboard_testkit::vocab::{GARBAGE, HEARTBEAT, OBJECT_GARBAGE};

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
