//! Shared harness for the integration tests: a hub on a virtual clock, helpers to read what it
//! asked for, and the seeded generator. They live in `switchboard-testkit` (one copy for every
//! test, property test, simulation and fuzzer); this module only brings them into scope.
#![allow(unused_imports)]

pub use switchboard_testkit::frames::*;
pub use switchboard_testkit::rng::Rng;
pub use switchboard_testkit::sim::*;
