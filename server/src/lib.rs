//! # switchboard-server
//!
//! The [`switchboard`] hub on tokio, behind axum WebSockets: a library an application adds as a
//! dependency instead of copying a driver, and the `switchboard` binary built from it.
//!
//! ```text
//!  socket ──► connection task (reader) ──┐                      ┌──► connection task (writer) ──► socket
//!  HTTP /publish, /metrics ─────────────►├─ one bounded mpsc ──►│ hub task: owns the Hub,
//!                                        │  of commands         │ one timer at poll_timeout,
//!  writer: `written n bytes` ────────────┘                      │ drains poll_action into
//!                                                               └─ per-connection outboxes
//! ```
//!
//! - [`driver`]: the hub task and the connection tasks, and [`driver::Handle`], the cheap clone
//!   through which everything else talks to the hub.
//! - [`bus`]: cluster mode's engine side: [`bus::BusLink`], what the hub task holds, and
//!   [`bus::redis`], the Redis driver that runs a clustered hub's bus operations (Lua scripts,
//!   pipelines, pub/sub with batched and restored subscriptions, a liveness probe, heartbeats).
//! - [`auth`]: HS256 JWTs to [`switchboard::Principal`]s.
//! - [`http`]: the routes (`/ws`, `/sse`, `/publish`, `/metrics`, `/healthz`, `/`, and the
//!   compiled TypeScript client) as an axum [`Router`](axum::Router) to mount or merge into the
//!   application's own; [`admin`]: the admin API under `/admin/` (merged into the same router);
//!   [`sse`]: the Server-Sent Events routes.
//! - [`listen`]: the HTTP listener: a header-read timeout, a cap on connections that have not
//!   upgraded, and a file-descriptor budget derived from `RLIMIT_NOFILE`.
//! - [`metrics`]: the Prometheus text of `/metrics`.
//! - [`app`]: everything wired together, as the binary runs it; [`agent`]: the demo agent.
//!
//! ## Cluster mode
//!
//! Several processes sharing one Redis are one hub: start the Redis driver and hand its link to
//! [`driver::spawn_clustered`] instead of [`driver::spawn`] (the binary does this for `--redis`;
//! [`app::Settings::redis`] does it for [`app::start`]).
//!
//! ```no_run
//! use switchboard::{ClusterConfig, Config, Hub, NodeId};
//! use switchboard_server::bus::redis::{self, RedisConfig};
//! use switchboard_server::driver::{self, DriverConfig};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let node = NodeId::new("web-1");
//! let hub = Hub::new(Config { cluster: Some(ClusterConfig::new(node.clone())), ..Config::default() })?;
//! let link = redis::start(RedisConfig::new("redis://127.0.0.1:6379/", node))?;
//! let (handle, _inbound) = driver::spawn_clustered(hub, DriverConfig::default(), link);
//! # drop(handle);
//! # Ok(())
//! # }
//! ```
//!
//! ## Embedding
//!
//! An application starts the hub task, builds the routes around its handle, and serves them
//! beside its own. Client messages arrive on the returned receiver, stamped with the identity
//! the token proved; publishing goes through the handle.
//!
//! ```
//! use axum::{Router, routing::get};
//! use switchboard::{Config, Envelope, EventKind, Hub, Target};
//! use switchboard_server::{auth::Keys, driver::{self, DriverConfig}, http::{self, AppState}};
//! use switchboard_server::listen::{self, ListenConfig};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let (handle, mut inbound) = driver::spawn(Hub::new(Config::default())?, DriverConfig::default());
//! let keys = Keys::new(b"a secret of at least thirty-two bytes!!")?;
//! let routes = http::router(AppState::new(handle.clone(), keys, "an admin key, 16+ bytes")?);
//! let app = Router::new().route("/version", get(|| async { "1.0" })).merge(routes);
//!
//! // `axum::serve` works too; `listen::serve` adds a header-read timeout, a cap on connections
//! // that have not upgraded, and survives running out of file descriptors.
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let counters = handle.listener_counters();
//! let stop = std::future::pending(); // or a shutdown signal
//! tokio::spawn(listen::serve(listener, app, ListenConfig::default(), counters, stop));
//!
//! // The application's side: answer client messages, publish agent events.
//! tokio::spawn(async move {
//!     while let Some(msg) = inbound.recv().await {
//!         let to = Target::User { tenant: msg.from.tenant.clone(), user: msg.from.user.clone() };
//!         let _ = handle.publish(Envelope::new(to, EventKind::AgentStarted)).await;
//!     }
//! });
//! # Ok(())
//! # }
//! ```

// The crate's `unsafe`, each allowed where it is: `getrlimit` in `listen::nofile_limit`, `prctl` in
// `app::disable_transparent_huge_pages`, `shutdown(2)` and the read into a buffer's
// uninitialized tail in `driver::socket`.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod agent;
pub mod app;
pub mod auth;
pub mod bus;
pub mod driver;
pub mod http;
pub mod listen;
pub mod metrics;
pub mod secret;
pub mod sse;
