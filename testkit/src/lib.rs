//! The shared test vocabulary of switchboard's own tests (`publish = false`).
//!
//! Everything the property tests, the resume properties, the simulation and the fuzzers have in
//! common lives here once, so that a change to the hub's API is made in one place:
//!
//! - [`ws`] (feature `ws`): a small WebSocket and HTTP client for the end-to-end tests of the
//!   servers.

#![forbid(unsafe_code)]

#[cfg(feature = "ws")]
pub mod ws;
