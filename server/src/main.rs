//! `switchboard`: the hub on tokio behind a real WebSocket endpoint, with JWT authentication, a
//! publish API, Prometheus metrics and a browser page. Everything it runs is the
//! `switchboard_server` library; this file reads the command line and prints the welcome.
//!
//! ```sh
//! cargo run                   # from the workspace root: http://127.0.0.1:8080, dev secret, demo tokens
//! cargo run -- --help         # flags (each also reads an env variable)
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

use switchboard::{ClusterConfig, NodeId, Tier};
use switchboard_server::app::{self, Settings};
use switchboard_server::auth::{self, Keys};
use switchboard_server::bus::redis::RedisConfig;
use switchboard_server::listen::FdBudget;
use switchboard_server::secret::{AdminKey, JwtSecret};

/// The switchboard server.
#[derive(Debug, Parser)]
#[command(
    version,
    about = "switchboard: the sans-io hub on tokio behind WebSockets, with a live page at /"
)]
struct Cli {
    /// Address to listen on (port 0 picks a free port; the address is printed).
    #[arg(long, env = "SWITCHBOARD_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// HS256 secret for verifying tokens. Without one, a development secret is generated and
    /// demo tokens are printed.
    #[arg(
        long,
        env = "SWITCHBOARD_JWT_SECRET",
        hide_env_values = true,
        value_parser = JwtSecret::parse_arg
    )]
    jwt_secret: Option<JwtSecret>,
    /// Key that `POST /publish` requires as `Authorization: Bearer <key>`. Generated and printed
    /// when not given.
    #[arg(
        long,
        env = "SWITCHBOARD_ADMIN_KEY",
        hide_env_values = true,
        value_parser = AdminKey::parse_arg
    )]
    admin_key: Option<AdminKey>,
    /// Seconds of silence before the hub pings a connection.
    #[arg(long, env = "SWITCHBOARD_HEARTBEAT_SECS", default_value_t = 25)]
    heartbeat_secs: u64,
    /// Seconds to wait for a sign of life after a ping.
    #[arg(long, env = "SWITCHBOARD_HEARTBEAT_TIMEOUT_SECS", default_value_t = 10)]
    heartbeat_timeout_secs: u64,
    /// How long a new connection waits for its client's `resume` before going live.
    #[arg(long, env = "SWITCHBOARD_RESUME_WINDOW_MS", default_value_t = 1500)]
    resume_window_ms: u64,
    /// Pause between the demo agent's events.
    #[arg(long, env = "SWITCHBOARD_AGENT_PACE_MS", default_value_t = 400)]
    agent_pace_ms: u64,
    /// How long the printed demo tokens stay valid, in hours.
    #[arg(long, default_value_t = 24)]
    demo_token_hours: u64,
    /// Log every audit event to stderr.
    #[arg(long, env = "SWITCHBOARD_LOG_AUDITS")]
    log_audits: bool,
    /// Presence for whole tenants too, not only rooms: every connection gets its tenant's
    /// `presence` snapshot after `connected`, then `presence_diff` batches.
    #[arg(long, env = "SWITCHBOARD_TENANT_PRESENCE")]
    tenant_presence: bool,
    /// A browser origin allowed to open /ws (`https://app.example.com`); repeat it or give a
    /// comma-separated list. Without one any origin may connect. Recommended wherever a browser
    /// sends credentials by itself (cookies).
    #[arg(long = "allowed-origin", env = "SWITCHBOARD_ALLOWED_ORIGINS", value_delimiter = ',')]
    allowed_origins: Vec<String>,
    /// Require the admin key (`Authorization: Bearer <key>`) for GET /metrics.
    #[arg(long, env = "SWITCHBOARD_METRICS_REQUIRE_ADMIN")]
    metrics_require_admin: bool,
    /// Seconds a connection may take to send a request's headers before it is closed.
    #[arg(long, env = "SWITCHBOARD_HEADER_READ_TIMEOUT_SECS", default_value_t = 10)]
    header_read_timeout_secs: u64,
    /// Most WebSocket connections at once; more are answered 503. Default: RLIMIT_NOFILE minus
    /// the reserve (printed at start), and at most the hub's 100,000.
    #[arg(long, env = "SWITCHBOARD_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Most TCP connections that have not become WebSockets (plain HTTP, or an upgrade under
    /// way); more are answered 503 and closed. Default: half the reserve.
    #[arg(long, env = "SWITCHBOARD_MAX_PENDING_CONNECTIONS")]
    max_pending_connections: Option<usize>,
    /// Cluster mode: the Redis every node of the cluster shares (`redis://host:port[/db]`).
    /// Without it the server is a single node and needs no Redis.
    #[arg(long, env = "SWITCHBOARD_REDIS", hide_env_values = true)]
    redis: Option<String>,
    /// Cluster mode: this node's id, unique among the nodes sharing the Redis. Default: the host
    /// name, the process id and a random suffix.
    #[arg(long, env = "SWITCHBOARD_NODE_ID")]
    node_id: Option<String>,
    /// Cluster mode: the prefix of every Redis key and channel, so that several deployments can
    /// share one Redis.
    #[arg(long, env = "SWITCHBOARD_REDIS_PREFIX", default_value = "sb")]
    redis_prefix: String,
    /// Cluster mode: seconds a connection's place in its user's cluster-wide quota lives without
    /// renewal (renewed every third of it).
    #[arg(long, env = "SWITCHBOARD_LEASE_TTL_SECS", default_value_t = 30)]
    lease_ttl_secs: u64,
    /// Cluster mode: seconds a node may miss its heartbeats (sent every second) before the others
    /// count it dead and release its leases.
    #[arg(long, env = "SWITCHBOARD_NODE_TIMEOUT_SECS", default_value_t = 5)]
    node_timeout_secs: u64,
    /// Cluster mode: seconds this node's presence entries live in Redis without a refresh
    /// (refreshed every third of it). The users of a node that dies leave the other nodes'
    /// presence within this long (plus a quarter second).
    #[arg(long, env = "SWITCHBOARD_PRESENCE_TTL_SECS", default_value_t = 15)]
    presence_ttl_secs: u64,
    /// File descriptors kept from WebSockets for plain HTTP (/healthz, /publish, /metrics) and
    /// the process itself. Default: an eighth of RLIMIT_NOFILE, between 32 and 1,024.
    #[arg(long, env = "SWITCHBOARD_FD_RESERVE")]
    fd_reserve: Option<usize>,
    /// Keep transparent huge pages for the process. By default the server turns them off at
    /// start: idle connections then cost about a quarter less memory, stably, and single-user
    /// publishes less CPU (no 2 MiB page zeroed at first touch), for up to a tenth fewer
    /// deliveries per CPU-second in large broadcasts (docs/benchmarks/connection-memory.md).
    #[arg(long, env = "SWITCHBOARD_TRANSPARENT_HUGE_PAGES")]
    transparent_huge_pages: bool,
    /// The longest a connection of a tier stays open, as TIER=SECONDS (`free=3600`); repeat it or
    /// give a comma-separated list. At the cap the connection is closed with 4009 `max_lifetime`
    /// and the client reconnects, so sockets spread over the nodes after a deploy. Default: none.
    #[arg(
        long = "max-connection-lifetime",
        env = "SWITCHBOARD_MAX_CONNECTION_LIFETIME",
        value_delimiter = ',',
        value_parser = tier_lifetime
    )]
    max_connection_lifetime: Vec<(Tier, Duration)>,
}

/// `TIER=SECONDS`, for `--max-connection-lifetime`.
fn tier_lifetime(value: &str) -> Result<(Tier, Duration), String> {
    let (tier, secs) = value.split_once('=').ok_or("expected TIER=SECONDS, as in free=3600")?;
    let tier = Tier::ALL
        .iter()
        .copied()
        .find(|t| t.as_str() == tier.trim())
        .ok_or_else(|| format!("unknown tier {tier:?} (free, early, mid, enterprise)"))?;
    let secs: u64 =
        secs.trim().parse().map_err(|_| format!("{secs:?} is not a number of seconds"))?;
    if secs == 0 {
        return Err("a lifetime of 0 s would close every connection at once".into());
    }
    Ok((tier, Duration::from_secs(secs)))
}

/// mimalloc for the binary: glibc's malloc spent a sixth of the server's CPU under single-user
/// publishes (fragmented bins, `malloc_consolidate`); the library leaves the choice to whoever
/// embeds it.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How often the binary asks mimalloc to return what it can to the OS ([`return_freed_memory`]).
const ALLOCATOR_COLLECT_EVERY: Duration = Duration::from_secs(1);

/// Gives freed memory back to the OS once a second, whether or not the server is busy.
///
/// mimalloc returns a page to the OS (`madvise`) only once it has been free for its purge delay
/// (1 s), and only when it looks: on its own allocation and free paths. A server that goes quiet
/// after a burst of connections (each one's HTTP request, hyper's 8 KiB buffers and the token
/// check are freed at the upgrade) kept those pages resident. `mi_collect(false)` frees this
/// thread's empty pages and purges every page whose delay has passed, process-wide: 10,000 idle
/// connections measured 0.84x the RSS two seconds after connecting, for 10-140 us a call. Where
/// the kernel's khugepaged folds purged ranges back into transparent huge pages, the gain fades
/// within a minute or so; see `docs/benchmarks/connection-memory.md`.
#[allow(unsafe_code)]
fn return_freed_memory() {
    tokio::spawn(async {
        let mut tick = tokio::time::interval(ALLOCATOR_COLLECT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            // SAFETY: `mi_collect` takes no pointer and may be called from any thread at any
            // time; `false` asks for the ordinary (not forced) collection.
            unsafe { libmimalloc_sys::mi_collect(false) };
        }
    });
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cli = Cli::parse();
    // Listen for the stop signals before anything is served: a signal that came between the
    // listener opening and a later registration would kill the process without the shutdown.
    let stop = stop_signal()?;
    if !cli.transparent_huge_pages {
        if let Err(e) = app::disable_transparent_huge_pages() {
            eprintln!("switchboard: could not turn transparent huge pages off: {e}");
        }
    }
    return_freed_memory();
    let dev_mode = cli.jwt_secret.is_none();
    // The secrets live in one wiped-on-drop buffer each; these are shared handles to them.
    let jwt_secret = cli.jwt_secret.clone().unwrap_or_else(|| auth::dev_secret().into());
    let admin_key = cli.admin_key.clone().unwrap_or_else(|| auth::dev_secret().into());
    // A short or empty secret would let anyone sign tokens: refuse to start.
    let keys = match Keys::new(jwt_secret.expose())
        .and_then(|keys| auth::check_admin_key(admin_key.expose()).map(|()| keys))
    {
        Ok(keys) => keys,
        Err(e) => {
            eprintln!("switchboard: {e}");
            std::process::exit(2);
        }
    };

    let mut settings = Settings::new(jwt_secret.clone(), admin_key.clone());
    settings.hub.heartbeat.interval = Duration::from_secs(cli.heartbeat_secs.max(1));
    settings.hub.heartbeat.timeout = Duration::from_secs(cli.heartbeat_timeout_secs.max(1));
    settings.hub.resume_window = Duration::from_millis(cli.resume_window_ms);
    settings.agent_pace = Duration::from_millis(cli.agent_pace_ms);
    settings.driver.log_audits = cli.log_audits;
    if let (true, Some(presence)) = (cli.tenant_presence, settings.hub.presence.as_mut()) {
        presence.tenant = true;
    }
    settings.allowed_origins = cli.allowed_origins.clone();
    settings.metrics_require_admin = cli.metrics_require_admin;
    settings.apply_budget(FdBudget::of_process(cli.fd_reserve));
    if let Some(max) = cli.max_connections {
        settings.driver.max_connections = Some(max);
        settings.hub.max_connections = u32::try_from(max).unwrap_or(u32::MAX).max(1);
    }
    if let Some(max) = cli.max_pending_connections {
        settings.listen.max_pending = max.max(1);
    }
    settings.listen.header_read_timeout = Duration::from_secs(cli.header_read_timeout_secs.max(1));
    for &(tier, cap) in &cli.max_connection_lifetime {
        settings.hub.tiers.get_mut(tier).max_connection_lifetime = Some(cap);
    }
    if let Some(url) = &cli.redis {
        let node = NodeId::new(cli.node_id.clone().unwrap_or_else(default_node_id));
        let mut cluster = ClusterConfig::new(node.clone());
        cluster.lease_ttl = Duration::from_secs(cli.lease_ttl_secs.max(1));
        cluster.presence_ttl = Duration::from_secs(cli.presence_ttl_secs.max(1));
        settings.hub.cluster = Some(cluster);
        let mut redis = RedisConfig::new(url.clone(), node);
        redis.prefix = cli.redis_prefix.clone();
        redis.node_timeout = Duration::from_secs(cli.node_timeout_secs.max(2));
        settings.redis = Some(redis);
    }
    let limits = limits_line(&settings);

    if dev_mode {
        // The page renews its demo token here before the session runs out.
        settings.demo_token_ttl = Some(Duration::from_secs(cli.demo_token_hours * 3600));
    }
    let settings_echo = settings.redis.as_ref().map(|r| (r.node.to_string(), r.prefix.clone()));
    let presence_ttl = cli.presence_ttl_secs.max(1);
    let listener = tokio::net::TcpListener::bind(cli.listen).await?;
    let running = app::start(listener, settings).await?;
    let base = format!("http://{}", running.addr);
    let ws = format!("ws://{}", running.addr);
    println!("switchboard listening on {base}");
    println!("{limits}");
    if let (Some(redis), Some(url)) = (&settings_echo, &cli.redis) {
        println!(
            "cluster mode: node {:?} over Redis {} (prefix {:?}); presence is cluster-wide, a \
             dead node's users leave within {presence_ttl} s",
            redis.0,
            redact_url(url),
            redis.1
        );
    }
    let mut exports = Vec::new();
    if dev_mode {
        let ttl = Duration::from_secs(cli.demo_token_hours * 3600);
        println!(
            "\nNo --jwt-secret: using a generated development secret. Open the page as one of the \
             demo users (tokens valid {} h):",
            cli.demo_token_hours
        );
        for (demo, token) in auth::demo_tokens(&keys, ttl) {
            println!(
                "  {}/{} ({} tier, roles {}, rooms {})\n    {base}/?token={token}",
                demo.tenant,
                demo.user,
                demo.tier,
                demo.roles.join(","),
                if demo.rooms.is_empty() { "-".into() } else { demo.rooms.join(",") },
            );
            exports.push(format!("{}={token}", demo.user.to_uppercase()));
        }
    }
    if cli.admin_key.is_none() {
        println!("\nNo --admin-key: POST /publish takes a generated key (ADMIN below).");
        exports.push(format!("ADMIN={}", admin_key.expose()));
    }
    if !exports.is_empty() {
        println!(
            "\nFor the commands below, in a shell:\n  export {}",
            exports.join(" \\\n         ")
        );
    }
    println!("{}", try_block(&base, &ws, dev_mode, cli.admin_key.is_none()));

    stop.await;
    println!("\nshutting down: closing every connection with server_shutdown (4006)");
    running.shutdown().await;
    println!("bye");
    Ok(())
}

/// Resolves at the first SIGINT (Ctrl-C) or SIGTERM (what a process manager or an orchestrator
/// sends to stop a service). Both are registered when this is called, not when it is awaited.
#[cfg(unix)]
fn stop_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}

/// Resolves at the first Ctrl-C.
#[cfg(not(unix))]
fn stop_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

/// A node id unique among the nodes of a cluster: host name, process id, random suffix.
fn default_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".to_owned());
    let suffix = auth::random_u64() & 0xffff;
    format!("{host}-{}-{suffix:04x}", std::process::id())
}

/// A Redis URL without its password, for the banner.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

/// The connection caps and where they come from, for the start-up banner.
fn limits_line(settings: &Settings) -> String {
    let budget = &settings.budget;
    let source = match (budget.fd_limit, settings.driver.max_connections) {
        (Some(limit), Some(cap)) if budget.max_websockets == Some(cap) => format!(
            " (RLIMIT_NOFILE {limit} minus a reserve of {} for HTTP and the process)",
            budget.reserve
        ),
        (_, Some(_)) => " (--max-connections)".to_owned(),
        (None, None) => " (the hub's limit; RLIMIT_NOFILE is unlimited or unknown)".to_owned(),
        (Some(_), None) => String::new(),
    };
    format!(
        "connections: at most {} WebSockets{source}, {} pending HTTP connections, request headers \
         within {} s",
        settings.websocket_cap(),
        settings.listen.max_pending,
        settings.listen.header_read_timeout.as_secs(),
    )
}

/// The "Try:" commands, naming only the shell variables the banner exported: `$ALICE` with the
/// demo tokens (no `--jwt-secret`), `$ADMIN` with a generated admin key (no `--admin-key`).
fn try_block(base: &str, ws: &str, demo_tokens: bool, admin_exported: bool) -> String {
    let mut lines = vec!["\nTry:".to_owned()];
    if demo_tokens {
        lines.push(format!(
            "  websocat \"{ws}/ws?token=$ALICE\"\n    \
             then type {{\"type\":\"message\",\"thread_id\":\"t1\",\"data\":{{\"text\":\"hello\"}}}}"
        ));
    }
    if admin_exported {
        lines.push(format!(
            "  curl -H \"Authorization: Bearer $ADMIN\" -d '{{\"tenant\":\"acme\",\"kind\":\"notice\",\"data\":{{\"text\":\"hi all\"}}}}' {base}/publish"
        ));
    }
    lines.push(format!("  curl {base}/healthz"));
    lines.push(format!("  curl {base}/metrics"));
    lines
        .push("\nCtrl-C (or SIGTERM) closes every connection with code 4006 and exits.".to_owned());
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "http://127.0.0.1:8080";
    const WS: &str = "ws://127.0.0.1:8080";

    #[test]
    fn try_names_only_the_variables_that_were_exported() {
        let both_given = try_block(BASE, WS, false, false);
        assert!(!both_given.contains('$'), "{both_given}");
        assert!(both_given.contains("/metrics") && both_given.contains("/healthz"));

        let dev = try_block(BASE, WS, true, true);
        assert!(dev.contains("token=$ALICE") && dev.contains("Bearer $ADMIN"), "{dev}");

        let secret_given = try_block(BASE, WS, false, true);
        assert!(!secret_given.contains("$ALICE") && secret_given.contains("$ADMIN"));

        let key_given = try_block(BASE, WS, true, false);
        assert!(key_given.contains("$ALICE") && !key_given.contains("$ADMIN"));
    }

    #[test]
    fn redis_passwords_stay_out_of_the_banner() {
        assert_eq!(redact_url("redis://:hunter2@db:6379/0"), "redis://***@db:6379/0");
        assert_eq!(redact_url("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert!(default_node_id().len() > 5);
        assert_ne!(default_node_id(), default_node_id(), "ids carry a random suffix");
    }

    #[test]
    fn lifetimes_are_given_per_tier_and_checked() {
        let cli = Cli::try_parse_from([
            "switchboard",
            "--max-connection-lifetime",
            "free=3600,enterprise=86400",
            "--max-connection-lifetime",
            "mid=60",
        ])
        .unwrap();
        assert_eq!(
            cli.max_connection_lifetime,
            [
                (Tier::Free, Duration::from_secs(3600)),
                (Tier::Enterprise, Duration::from_secs(86400)),
                (Tier::Mid, Duration::from_secs(60)),
            ]
        );
        for bad in ["free", "gold=60", "free=soon", "free=0"] {
            let parsed = Cli::try_parse_from(["switchboard", "--max-connection-lifetime", bad]);
            assert!(parsed.is_err(), "{bad}");
        }
        assert!(Cli::try_parse_from(["switchboard"]).unwrap().max_connection_lifetime.is_empty());
    }

    #[test]
    fn secrets_given_on_the_command_line_do_not_print() {
        let cli = Cli::try_parse_from([
            "switchboard",
            "--jwt-secret",
            "a-jwt-secret-of-thirty-two-bytes-or-more",
            "--admin-key",
            "an-admin-key-of-16+",
        ])
        .unwrap();
        let shown = format!("{cli:?}");
        assert!(!shown.contains("thirty-two") && !shown.contains("16+"), "{shown}");
        assert_eq!(cli.admin_key.unwrap().expose(), "an-admin-key-of-16+");
    }

    #[test]
    fn the_banner_says_where_the_cap_comes_from() {
        let mut settings = Settings::new(b"x".repeat(32), "y".repeat(16));
        settings.apply_budget(FdBudget::new(Some(256), None));
        let line = limits_line(&settings);
        assert!(line.contains("at most 224 WebSockets"), "{line}");
        assert!(line.contains("RLIMIT_NOFILE 256 minus a reserve of 32"), "{line}");
        assert!(line.contains("16 pending"), "{line}");

        settings.driver.max_connections = Some(10);
        assert!(limits_line(&settings).contains("at most 10 WebSockets (--max-connections)"));
    }
}
