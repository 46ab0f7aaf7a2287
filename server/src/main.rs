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

use switchboard_server::app::{self, Settings};
use switchboard_server::auth::{self, Keys};

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
    #[arg(long, env = "SWITCHBOARD_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// Key that `POST /publish` requires as `Authorization: Bearer <key>`. Generated and printed
    /// when not given.
    #[arg(long, env = "SWITCHBOARD_ADMIN_KEY", hide_env_values = true)]
    admin_key: Option<String>,
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
    /// A browser origin allowed to open /ws (`https://app.example.com`); repeat it or give a
    /// comma-separated list. Without one any origin may connect. Recommended wherever a browser
    /// sends credentials by itself (cookies).
    #[arg(long = "allowed-origin", env = "SWITCHBOARD_ALLOWED_ORIGINS", value_delimiter = ',')]
    allowed_origins: Vec<String>,
    /// Require the admin key (`Authorization: Bearer <key>`) for GET /metrics.
    #[arg(long, env = "SWITCHBOARD_METRICS_REQUIRE_ADMIN")]
    metrics_require_admin: bool,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cli = Cli::parse();
    let dev_mode = cli.jwt_secret.is_none();
    let jwt_secret = cli.jwt_secret.clone().unwrap_or_else(auth::dev_secret);
    let admin_key = cli.admin_key.clone().unwrap_or_else(auth::dev_secret);
    // A short or empty secret would let anyone sign tokens: refuse to start.
    let keys = match Keys::new(jwt_secret.as_bytes())
        .and_then(|keys| auth::check_admin_key(&admin_key).map(|()| keys))
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
    settings.allowed_origins = cli.allowed_origins.clone();
    settings.metrics_require_admin = cli.metrics_require_admin;

    let listener = tokio::net::TcpListener::bind(cli.listen).await?;
    let running = app::start(listener, settings).await?;
    let base = format!("http://{}", running.addr);
    let ws = format!("ws://{}", running.addr);
    println!("switchboard listening on {base}");
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
        exports.push(format!("ADMIN={admin_key}"));
    }
    if !exports.is_empty() {
        println!(
            "\nFor the commands below, in a shell:\n  export {}",
            exports.join(" \\\n         ")
        );
    }
    println!(
        "\nTry:\n  websocat \"{ws}/ws?token=$ALICE\"\n    \
         then type {{\"type\":\"message\",\"thread_id\":\"t1\",\"data\":{{\"text\":\"hello\"}}}}\n  \
         curl -H \"Authorization: Bearer $ADMIN\" -d '{{\"tenant\":\"acme\",\"kind\":\"notice\",\"data\":{{\"text\":\"hi all\"}}}}' {base}/publish\n  \
         curl {base}/metrics\n\nCtrl-C closes every connection with code 4006 and exits."
    );

    tokio::signal::ctrl_c().await?;
    println!("\nshutting down: closing every connection with server_shutdown (4006)");
    running.shutdown().await;
    println!("bye");
    Ok(())
}
