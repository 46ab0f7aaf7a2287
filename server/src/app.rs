//! Wires the pieces together: the hub and its driver, the demo agent, and the HTTP server. Both
//! `main.rs` and the tests in `tests/` start the server through [`start`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use switchboard::{ClusterConfig, Config, ConfigError, Hub, Inbound, PresenceConfig, Reply};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::agent;
use crate::auth::{self, Keys};
use crate::bus::redis::{self, RedisConfig, RedisStartError};
use crate::driver::{self, DriverConfig, Handle};
use crate::http::{self, AppState, HttpCounters, PublishBody};
use crate::listen::{self, FdBudget, ListenConfig};
use crate::secret::{AdminKey, JwtSecret};

/// Everything the server runs with.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The hub's configuration.
    pub hub: Config,
    /// The driver's queues and timeouts.
    pub driver: DriverConfig,
    /// The HS256 secret tokens are verified with (wiped on drop, never printed).
    pub jwt_secret: JwtSecret,
    /// The key `POST /publish` requires (`Authorization: Bearer <key>`; wiped on drop, never
    /// printed).
    pub admin_key: AdminKey,
    /// Pause between the demo agent's events.
    pub agent_pace: Duration,
    /// Browser origins allowed to open `/ws`; empty allows any (see
    /// [`AppState::allowed_origins`]).
    pub allowed_origins: Vec<String>,
    /// Whether `GET /metrics` requires the admin key.
    pub metrics_require_admin: bool,
    /// The size and time bounds of a `POST /publish` body.
    pub publish_body: PublishBody,
    /// The HTTP listener's header-read timeout and pending-connection cap.
    pub listen: ListenConfig,
    /// The file-descriptor budget the caps were derived from (see [`Settings::apply_budget`]).
    pub budget: FdBudget,
    /// Development only: `POST /demo/token` re-signs a valid token for this long (the binary sets
    /// it when it prints demo tokens). `None`: no such route.
    pub demo_token_ttl: Option<Duration>,
    /// Cluster mode (`--redis`): the Redis driver's settings. The hub becomes one node of the
    /// cluster (its `Config::cluster` is set from `redis.node` unless already set, in which case
    /// the hub's node id wins). `None`: a single node, no Redis.
    pub redis: Option<RedisConfig>,
}

/// The hub configuration the server runs with unless told otherwise: the library defaults, plus
/// a short resume window (so a reconnecting client's `resume` is answered before live events,
/// which keeps every stream exactly in order), rooms kept as long as users (so that the only
/// member of a room can drop off and resume it), a seed that differs per process (so stream
/// epochs differ across restarts), and presence for rooms (tenants too with
/// `--tenant-presence`).
pub fn default_hub_config() -> Config {
    let defaults = Config::default();
    Config {
        resume_window: Duration::from_millis(1500),
        room_retention: defaults.user_retention,
        seed: auth::random_u64(),
        // Who is online in each room (the page shows the lobby's); a tenant's presence is one
        // setting away (`tenant: true`, the binary's `--tenant-presence`). Cluster-wide in
        // cluster mode.
        presence: Some(rooms_presence()),
        ..defaults
    }
}

/// Presence for rooms, not for whole tenants: a client that joins no room sees no presence frame.
fn rooms_presence() -> PresenceConfig {
    let mut presence = PresenceConfig::default();
    presence.tenant = false;
    presence
}

impl Settings {
    /// Defaults for everything but the secrets, with the connection caps derived from this
    /// process's `RLIMIT_NOFILE` ([`FdBudget::of_process`]).
    pub fn new(jwt_secret: impl Into<JwtSecret>, admin_key: impl Into<AdminKey>) -> Self {
        let mut settings = Settings {
            hub: default_hub_config(),
            driver: DriverConfig::default(),
            jwt_secret: jwt_secret.into(),
            admin_key: admin_key.into(),
            agent_pace: Duration::from_millis(400),
            allowed_origins: Vec::new(),
            metrics_require_admin: false,
            publish_body: PublishBody::default(),
            listen: ListenConfig::default(),
            budget: FdBudget::new(None, None),
            redis: None,
            demo_token_ttl: None,
        };
        settings.apply_budget(FdBudget::of_process(None));
        settings
    }

    /// Sets the WebSocket cap ([`DriverConfig::max_connections`]) and the pending-connection cap
    /// ([`ListenConfig::max_pending`]) from `budget`, and remembers it.
    pub fn apply_budget(&mut self, budget: FdBudget) {
        self.driver.max_connections = budget.max_websockets;
        self.listen.max_pending = budget.max_pending;
        self.budget = budget;
    }

    /// The most WebSocket connections this server holds: the hub's `max_connections` or the
    /// driver's cap, whichever is lower.
    #[must_use]
    pub fn websocket_cap(&self) -> usize {
        let hub = usize::try_from(self.hub.max_connections).unwrap_or(usize::MAX);
        self.driver.max_connections.map_or(hub, |cap| cap.min(hub))
    }
}

/// A running server.
pub struct Running {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// The hub task's handle.
    pub handle: Handle,
    /// The HTTP layer's counters.
    #[allow(dead_code)] // read by the tests
    pub http: Arc<HttpCounters>,
    server: JoinHandle<()>,
    stop_http: oneshot::Sender<()>,
}

/// Why the server did not start.
#[derive(Debug)]
pub enum StartError {
    /// The hub refused its configuration.
    Config(ConfigError),
    /// The listener's address could not be read.
    Io(std::io::Error),
    /// The JWT secret or the admin key is too short.
    Keys(auth::KeyError),
    /// The Redis driver could not start (an invalid URL).
    Redis(RedisStartError),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Config(e) => write!(f, "invalid hub configuration: {e}"),
            StartError::Io(e) => write!(f, "cannot listen: {e}"),
            StartError::Keys(e) => write!(f, "{e}"),
            StartError::Redis(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for StartError {}

/// Starts the hub task, the demo agent and the HTTP server on `listener`.
pub async fn start(listener: TcpListener, settings: Settings) -> Result<Running, StartError> {
    let addr = listener.local_addr().map_err(StartError::Io)?;
    let keys = Keys::new(settings.jwt_secret.expose()).map_err(StartError::Keys)?;
    auth::check_admin_key(settings.admin_key.expose()).map_err(StartError::Keys)?;
    let mut hub_config = settings.hub;
    let mut driver_config = settings.driver;
    if driver_config.refresh.is_none() {
        driver_config.refresh = Some(refresh_verifier(keys.clone()));
    }
    let mut bus_reader = None;
    let (handle, inbound) = match settings.redis {
        Some(mut redis_cfg) => {
            let cluster = hub_config
                .cluster
                .get_or_insert_with(|| ClusterConfig::new(redis_cfg.node.clone()));
            redis_cfg.node = cluster.node.clone();
            let hub = Hub::new(hub_config).map_err(StartError::Config)?;
            let mut link = redis::start(redis_cfg).map_err(StartError::Redis)?;
            // The admin API reads presence cluster-wide through it, beside the hub task.
            bus_reader = link.reader.take();
            driver::spawn_clustered(hub, driver_config, link)
        }
        None => driver::spawn(Hub::new(hub_config).map_err(StartError::Config)?, driver_config),
    };
    let counters = handle.listener_counters();
    tokio::spawn(run_agent(handle.clone(), inbound, settings.agent_pace));
    let state = AppState::new(handle.clone(), keys, settings.admin_key)
        .map_err(StartError::Keys)?
        .allowed_origins(settings.allowed_origins)
        .metrics_require_admin(settings.metrics_require_admin)
        .publish_body(settings.publish_body)
        .demo_token_ttl(settings.demo_token_ttl)
        .bus_reader(bus_reader);
    let http_counters = state.counters.clone();
    let router = http::router(state);
    let (stop_http, stopped) = oneshot::channel::<()>();
    let stop = async {
        let _ = stopped.await;
    };
    let server = tokio::spawn(listen::serve(listener, router, settings.listen, counters, stop));
    Ok(Running { addr, handle, http: http_counters, server, stop_http })
}

impl Running {
    /// Closes every WebSocket with `server_shutdown` (4006), waits for the close frames to go
    /// out, then stops the HTTP server.
    pub async fn shutdown(self) {
        self.handle.shutdown().await;
        let _ = self.stop_http.send(());
        let mut server = self.server;
        if tokio::time::timeout(Duration::from_secs(5), &mut server).await.is_err() {
            server.abort();
        }
    }
}

/// Accepts a client's `refresh` token when it verifies, names the same tenant and user as the
/// connection, and ends the session later than it ends now.
pub fn refresh_verifier(keys: Keys) -> driver::RefreshVerifier {
    driver::RefreshVerifier::new(move |request| {
        let identity = keys.verify(&request.token).map_err(|e| e.to_string())?;
        let p = identity.principal;
        if p.tenant != request.tenant || p.user != request.user {
            return Err("the token names another tenant or user".into());
        }
        if auth::extends_session(p.expires_at, request.expires_at) {
            Ok(p.expires_at)
        } else {
            Err("the token does not extend the session".into())
        }
    })
}

/// The demo agent: each client `message` starts a run that publishes the script's events.
async fn run_agent(handle: Handle, mut inbound: mpsc::Receiver<Box<Inbound>>, pace: Duration) {
    let mut runs: u64 = 0;
    while let Some(msg) = inbound.recv().await {
        runs += 1;
        let run = format!("run-{runs}");
        let handle = handle.clone();
        tokio::spawn(async move {
            // A message with an `id` is acknowledged first, with the run that will answer it (a
            // connection that has gone meanwhile just misses the ack).
            if let Some(id) = msg.id.clone() {
                let ack = Reply::Data(serde_json::json!({ "accepted": true, "run_id": run }));
                let _ = handle.reply(msg.from.conn, id, ack).await;
            }
            for step in agent::script(&agent::prompt_of(&msg), pace) {
                tokio::time::sleep(step.after).await;
                if let Err(e) = handle.publish(agent::envelope(&msg, &run, &step)).await {
                    eprintln!("switchboard: demo agent {run} stopped: {e:?}");
                    break;
                }
            }
        });
    }
}

/// Turns transparent huge pages off for this process (Linux; elsewhere it does nothing), for a
/// binary that sets mimalloc as its allocator: call it first thing in `main`.
///
/// mimalloc asks for huge pages on its arenas where the kernel leaves that to the program
/// (`madvise` mode), and a fresh 2 MiB page is zeroed whole at its first touch however little
/// of it is used. Under single-user publishes across a cluster, that zeroing was 14–18 % of each
/// node's CPU (`perf record`, docs/benchmarks/single-user.md); with huge pages off it is gone.
/// Mappings made before the call keep what they have.
#[allow(unsafe_code)]
pub fn disable_transparent_huge_pages() -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: `prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0)` takes plain integers and changes only
        // this process's huge page policy.
        let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
