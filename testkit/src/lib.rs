//! The shared test vocabulary of switchboard's own tests (`publish = false`).
//!
//! Everything the property tests, the resume properties, the simulation and the fuzzers have in
//! common lives here once, so that a change to the hub's API is made in one place:
//!
//! - [`vocab`]: the one operation vocabulary, [`Op`] (one variant per `Hub` method, plus the
//!   caller's clock), with connections addressed symbolically ([`Who`]) and the [`Knobs`] of the
//!   configuration a case varies; [`strategy`] builds them for proptest, and the `arbitrary`
//!   feature lets a fuzzer build whole cases from bytes (module `fuzz`);
//! - [`model`]: the one reference model and its [`Runner`], which applies each [`Step`] to the
//!   hub and to the model and checks the design's invariants after every step;
//! - [`client`]: the one client model (positions per stream identity, a log of what was
//!   published, the isolation, order and no-loss checks) of the resume properties and the
//!   simulation, independent of any one hub instance;
//! - [`raw`]: raw client frame bytes (valid-looking frames and garbage) read as the protocol
//!   documents, so that any bytes can be mixed into a case ([`In::Raw`]);
//! - [`rng`]: the one seeded generator; [`frames`]: the actions of a drain by kind and delivered
//!   frames decoded; [`sim`]: a hub on a virtual clock;
//! - `ws` (feature `ws`): a small WebSocket and HTTP client for the end-to-end tests of the
//!   servers.

#![forbid(unsafe_code)]

pub mod bus;
pub mod client;
pub mod cluster;
pub mod frames;
#[cfg(feature = "arbitrary")]
pub mod fuzz;
pub mod model;
pub mod raw;
pub mod rng;
pub mod sim;
pub mod strategy;
pub mod vocab;
#[cfg(feature = "ws")]
pub mod ws;

pub use model::{Runner, run};
pub use rng::Rng;
pub use sim::Sim;
pub use vocab::{In, Knobs, Op, Step, Tgt, Who};
