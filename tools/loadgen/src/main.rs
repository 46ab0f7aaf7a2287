//! End-to-end load generator: N WebSocket clients against switchboard's server or the
//! Socket.IO peer (`benches/peers/socketio/`), publishes through the server's HTTP publish API, and
//! reports delivered messages per second, publish-to-receive latency and the server's memory per
//! connection. `scripts/bench-e2e.sh` runs it against both servers and prints one table.
//!
//! ```sh
//! cargo build --release -p switchboard-server -p switchboard-loadgen
//! target/release/switchboard --listen 127.0.0.1:18080 --jwt-secret s --admin-key k &
//! target/release/loadgen --server switchboard --addr 127.0.0.1:18080 \
//!     --jwt-secret s --admin-key k --pid $! --clients 10000 --phase tenant:0 --phase tenant:10
//! ```
//!
//! # The load
//!
//! `--clients` connections belong to users of `--conns-per-user` connections each; user `u` belongs
//! to tenant `u % --tenants`. Every client authenticates with an HS256 JWT for its user (minted
//! here with `--jwt-secret`, the same claims for both servers). Publishes are
//! `POST /publish {"tenant","user"?,"kind":"bench","data":{"ts":…,"pad":…}}` with the admin key,
//! from `--publishers` keep-alive HTTP connections; the same body works for both servers.
//!
//! The clients connect once; then each `--phase TARGET:RATE` runs in turn (warm-up, measurement
//! window, drain). `TARGET` is `user` (publishes go round-robin over the users, each reaching that
//! user's connections) or `tenant` (round-robin over the tenants, each reaching every connection
//! of the tenant). `RATE` is publishes per second in total, open loop (latency is measured from
//! the moment each request is written), or `0`: as fast as the server delivers, with at most
//! `--window` deliveries outstanding (published but not yet received by every recipient), so the
//! figure is the server's delivery capacity, not the depth of its queues. `TARGET:RATE:bN` posts
//! `N` envelopes per request (a JSON array: the batch publish both servers accept), so that the
//! HTTP request's cost is spread over `N` publishes; `RATE` still counts envelopes.
//!
//! # What it measures
//!
//! - **delivered/s**: event frames received by all clients during a phase's measurement window
//!   (after `--warmup`, for `--duration`), divided by its length.
//! - **p50/p99 latency**: receive time minus the `ts` (microseconds on this process's clock)
//!   that the publisher embedded in the payload, over every event received in the window.
//! - **memory per connection**: the server's `VmRSS` from `/proc/<--pid>/status` once every
//!   client is connected and live (after `--settle`), minus it before the first connect, divided
//!   by the number of clients.
//! - **server and loadgen CPU** over the window (`/proc/<pid>/stat`, all threads), so that a run
//!   where the load generator itself was saturated is visible as such, and deliveries per
//!   server CPU-second.
//!
//! - **Redis commands per publish** (with `--redis-addr`): the calls of every command in
//!   `INFO commandstats` over the window (less the `INFO` itself), divided by the publishes sent
//!   in it; with `--redis-pid`, Redis's CPU too. It counts every client of that Redis, so give the
//!   benchmark a Redis of its own.
//!
//! Every phase ends with a line `RESULT key=value …` for scripts, after a readable summary.
//!
//! # A cluster
//!
//! Several nodes sharing one Redis (`scripts/bench-cluster.sh`): `--addr` repeated or
//! comma-separated; client `c` connects to node `c mod N` and publisher `p` posts through node
//! `p mod N` (or all through `--publish-via`). `--pid` repeated: memory and CPU are the sums over
//! the nodes. With one `--addr` and one `--pid` the output is what it always was.
//!
//! `--recovery` runs another test on the same clients: a node killed mid-stream, and what its
//! clients lost or got twice after moving to another node (see `recovery.rs`).
//!
//! # Many connections
//!
//! `--hold FILE` connects the clients and keeps them open, answering heartbeats, until `FILE`
//! exists, recording the latency of every event that arrives meanwhile (see `hold.rs`); another
//! load generator publishes. `ts` is microseconds since the Unix epoch (read once at start, then
//! advanced by the monotonic clock), so that one process's publishes are timed by another's
//! receptions on the same machine. `--bind` gives the clients source addresses (`127.0.0.2`,
//! `127.0.0.3`, …: each address has its own ephemeral ports), `--user-offset` keeps the users
//! of several processes apart (`scripts/bench-scale.sh`).
//!
//! # The clients
//!
//! A minimal RFC 6455 client over tokio's `TcpStream`: an HTTP/1.1 upgrade, masked client frames,
//! unmasked server frames parsed in place (fragmented messages reassembled; pings answered with
//! pongs), no extension negotiated (so no compression on either server). Receiving is the load
//! generator's hot path and costs one scan per frame and no allocation, so that the clients stay
//! cheaper than the servers they measure. On top of it:
//!
//! - switchboard: `GET /ws` with `Authorization: Bearer <jwt>`; waits for `connected`, sends
//!   `{"type":"ping"}` (a first frame ends the resume window, as README's clients do) and is
//!   live at the `pong`.
//! - Socket.IO: Engine.IO v4 over WebSocket only (`/socket.io/?EIO=4&transport=websocket`):
//!   the server's open packet `0{…}`, then the Socket.IO v5 connect `40{"token":…}` and its
//!   answer `40{"sid":…}`; events arrive as `42["bench",{…}]`; Engine.IO pings `2` are answered
//!   with `3`.
//!
//! It raises its own `RLIMIT_NOFILE` (the soft limit up to the hard one, and the hard one too
//! when it runs as root) so that 10,000 and more clients fit.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

mod connect;
mod hold;
mod recovery;

use connect::{close_clients, connect_clients};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ServerKind {
    /// switchboard's server (`cargo run`, the `switchboard` binary).
    Switchboard,
    /// The Socket.IO peer (`benches/peers/socketio/server.js`).
    Socketio,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TargetKind {
    /// Each publish goes to one user (all of its connections).
    User,
    /// Each publish goes to one tenant (every connection of it).
    Tenant,
}

/// One measured phase: what to publish to, and how fast.
#[derive(Clone, Copy, Debug)]
struct PhaseSpec {
    target: TargetKind,
    /// Publishes per second; 0: as fast as the server delivers.
    rate: f64,
    /// `…:monitor`: watch Redis with MONITOR over the window, to tell the commands clients send
    /// (round trips) from those a script runs. MONITOR slows Redis down: use it on a phase of
    /// its own, not on one whose latency or throughput matters.
    monitor: bool,
    /// `…:bN`: envelopes per publish request, 1 to 100 (default 1). Above 1 each request is a
    /// batch (a JSON array answered with one result per envelope), the same on both servers;
    /// the rate still counts envelopes.
    batch: u64,
}

impl FromStr for PhaseSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (s, monitor) = match s.strip_suffix(":monitor") {
            Some(rest) => (rest, true),
            None => (s, false),
        };
        let (s, batch) = match s.rsplit_once(":b") {
            Some((rest, n)) => {
                let n: u64 = n.parse().map_err(|e| format!("bad batch `{n}`: {e}"))?;
                if !(1..=100).contains(&n) {
                    return Err(format!("a batch holds 1 to 100 envelopes, not {n}"));
                }
                (rest, n)
            }
            None => (s, 1),
        };
        let (target, rate) = s.split_once(':').unwrap_or((s, "0"));
        let target = match target {
            "user" => TargetKind::User,
            "tenant" => TargetKind::Tenant,
            other => return Err(format!("unknown target `{other}` (user or tenant)")),
        };
        let rate: f64 = rate.parse().map_err(|e| format!("bad rate `{rate}`: {e}"))?;
        if !(rate >= 0.0 && rate.is_finite()) {
            return Err(format!("bad rate `{rate}`"));
        }
        Ok(PhaseSpec { target, rate, monitor, batch })
    }
}

/// switchboard's end-to-end load generator.
#[derive(Debug, Parser)]
#[command(
    about = "WebSocket load generator for switchboard's example server and the Socket.IO peer"
)]
struct Cli {
    /// Which server speaks at `--addr`.
    #[arg(long, value_enum)]
    server: ServerKind,
    /// The server's address (HTTP and WebSocket). Several nodes of one cluster: repeat it or
    /// separate with commas; client `c` connects to the `c mod N`-th, and so does publisher `p`
    /// (unless `--publish-via`).
    #[arg(long = "addr", default_value = "127.0.0.1:8080", value_delimiter = ',')]
    addrs: Vec<SocketAddr>,
    /// Publish through only this one of the `--addr`s (0-based) rather than round-robin.
    #[arg(long)]
    publish_via: Option<usize>,
    /// The server's process id, for its memory and CPU from /proc; repeat (or separate with
    /// commas) for several nodes: their RSS and CPU are summed.
    #[arg(long = "pid", value_delimiter = ',')]
    pids: Vec<u32>,
    /// A Redis server (`host:port`) the servers share: its commands are counted (`INFO
    /// commandstats`) over each measurement window and divided by the publishes in it.
    #[arg(long)]
    redis_addr: Option<SocketAddr>,
    /// The Redis server's process id, for its CPU over each window.
    #[arg(long)]
    redis_pid: Option<u32>,
    /// HS256 secret the server verifies tokens with.
    #[arg(long, env = "LOADGEN_JWT_SECRET", hide_env_values = true)]
    jwt_secret: String,
    /// The key of the publish endpoint (`Authorization: Bearer <key>`).
    #[arg(long, env = "LOADGEN_ADMIN_KEY", hide_env_values = true)]
    admin_key: String,
    /// WebSocket clients.
    #[arg(long, default_value_t = 2000)]
    clients: usize,
    /// Connections per user.
    #[arg(long, default_value_t = 2)]
    conns_per_user: usize,
    /// Tenants the users are spread over.
    #[arg(long, default_value_t = 10)]
    tenants: usize,
    /// A phase, `user:RATE` or `tenant:RATE` (publishes per second, 0 = as fast as delivered),
    /// with `:bN` appended for N envelopes per request (a batch, 1 to 100), and `:monitor` to
    /// count Redis round trips with MONITOR (`--redis-addr`); repeat for several, run in order
    /// on the same connections.
    #[arg(long = "phase", default_value = "tenant:0")]
    phases: Vec<PhaseSpec>,
    /// With rate 0: deliveries that may be outstanding (default: 16 publishes' worth, at least
    /// 16,384).
    #[arg(long)]
    window: Option<u64>,
    /// Concurrent keep-alive HTTP connections that publish.
    #[arg(long, default_value_t = 16)]
    publishers: usize,
    /// Seconds of publishing before each measurement window.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Seconds of each measurement window.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds to wait after the last client is live before reading the server's memory.
    #[arg(long, default_value_t = 2.0)]
    settle: f64,
    /// Bytes of padding in each payload.
    #[arg(long, default_value_t = 64)]
    payload_bytes: usize,
    /// Connection attempts in flight while connecting.
    #[arg(long, default_value_t = 128)]
    connect_concurrency: usize,
    /// Runtime worker threads (default: the CPUs this process may run on; 1 runs a
    /// current-thread runtime).
    #[arg(long)]
    threads: Option<usize>,
    /// A label for the RESULT lines.
    #[arg(long, default_value = "-")]
    label: String,
    /// Source addresses for the clients (`127.0.0.2`; repeat or separate with commas): client `c`
    /// binds to the `c mod N`-th before connecting. Each address has its own ephemeral ports.
    #[arg(long = "bind", value_delimiter = ',')]
    binds: Vec<IpAddr>,
    /// Number the users from this one (`u{offset}`, …), so that several load generators against
    /// the same servers hold different users.
    #[arg(long, default_value_t = 0)]
    user_offset: usize,
    /// Seconds to wait for every client to be live.
    #[arg(long, default_value_t = 180.0)]
    connect_timeout: f64,
    /// Hold the clients instead of running phases: connect them, print a `LIVE` line, record
    /// every event's latency until this file exists, then print `RESULT` and `HIST` lines and
    /// close (see `hold.rs`).
    #[arg(long)]
    hold: Option<std::path::PathBuf>,
    /// Run the recovery test instead of the phases (see the module docs of `recovery`): clients
    /// on the first `--addr`, publishes through `--publish-via` (default the second) at `--rate`
    /// for `--duration` seconds, `--kill-pid` SIGKILLed `--kill-after` seconds in.
    #[arg(long)]
    recovery: bool,
    /// Recovery test: publishes per second.
    #[arg(long)]
    rate: Option<f64>,
    /// Recovery test: the process to SIGKILL (node A, the first `--addr`).
    #[arg(long)]
    kill_pid: Option<u32>,
    /// Recovery test: the signal, `KILL` (the node dies at once) or `TERM` (it may close its
    /// connections first, which Socket.IO needs to save its sessions).
    #[arg(long, default_value = "KILL")]
    kill_signal: String,
    /// Recovery test: seconds after publishing starts to kill `--kill-pid`.
    #[arg(long, default_value_t = 4.0)]
    kill_after: f64,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cli = Cli::parse();
    if cli.clients == 0 || cli.conns_per_user == 0 || cli.tenants == 0 || cli.publishers == 0 {
        return Err(
            "--clients, --conns-per-user, --tenants and --publishers must be positive".into()
        );
    }
    let fds = raise_fd_limit(cli.clients as u64 + cli.publishers as u64 + 256)?;
    let threads = cli
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let rt = if threads == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()?
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()?
    };
    if cli.publish_via.is_some_and(|i| i >= cli.addrs.len()) {
        return Err(
            format!("--publish-via must be below the {} --addr given", cli.addrs.len()).into()
        );
    }
    let addrs = cli.addrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
    eprintln!(
        "loadgen: {:?} at {addrs}, {} clients, {threads} runtime threads, fd limit {fds}",
        cli.server, cli.clients
    );
    if cli.recovery {
        rt.block_on(recovery::run(cli))
    } else if cli.hold.is_some() {
        rt.block_on(hold::run(cli))
    } else {
        rt.block_on(run(cli))
    }
}

/// Raises the soft `RLIMIT_NOFILE` to at least `want` (up to the hard limit, or beyond it when
/// privileged). Returns the soft limit in force.
fn raise_fd_limit(want: u64) -> Result<u64, String> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(format!("getrlimit: {}", std::io::Error::last_os_error()));
    }
    if lim.rlim_cur >= want {
        return Ok(lim.rlim_cur);
    }
    let mut new =
        libc::rlimit { rlim_cur: lim.rlim_max.max(want), rlim_max: lim.rlim_max.max(want) };
    // SAFETY: setrlimit reads the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } != 0 {
        // Not privileged: the hard limit is as far as we may go.
        new = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } != 0 {
            return Err(format!("setrlimit: {}", std::io::Error::last_os_error()));
        }
    }
    if new.rlim_cur < want {
        return Err(format!(
            "{want} file descriptors needed, the hard limit is {}: raise it (ulimit -Hn) or use fewer --clients",
            new.rlim_cur
        ));
    }
    Ok(new.rlim_cur)
}

// ---------------------------------------------------------------------------------------------
// Shared state

/// A latency histogram with about 1.5 % resolution, in microseconds, shared by every client.
struct Hist {
    buckets: Vec<AtomicU64>,
}

impl Hist {
    const LINEAR: u64 = 128;
    const SUB: u64 = 64;

    fn new() -> Self {
        Hist { buckets: (0..2560).map(|_| AtomicU64::new(0)).collect() }
    }

    fn index(v: u64) -> usize {
        if v < Self::LINEAR {
            return v as usize;
        }
        let msb = 63 - u64::from(v.leading_zeros());
        let shift = msb - 6;
        let i = Self::LINEAR + (msb - 7) * Self::SUB + ((v >> shift) & (Self::SUB - 1));
        (i as usize).min(2559)
    }

    /// The lowest value of bucket `i`.
    fn value(i: usize) -> u64 {
        let i = i as u64;
        if i < Self::LINEAR {
            return i;
        }
        let k = (i - Self::LINEAR) / Self::SUB;
        let m = (i - Self::LINEAR) % Self::SUB;
        (Self::SUB + m) << (k + 1)
    }

    fn record(&self, v: u64) {
        self.buckets[Self::index(v)].fetch_add(1, Relaxed);
    }

    fn reset(&self) {
        for b in &self.buckets {
            b.store(0, Relaxed);
        }
    }

    fn counts(&self) -> Vec<u64> {
        self.buckets.iter().map(|b| b.load(Relaxed)).collect()
    }

    fn percentile(counts: &[u64], p: f64) -> u64 {
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return 0;
        }
        let rank = ((total as f64) * p).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Self::value(i);
            }
        }
        Self::value(counts.len() - 1)
    }
}

/// What every task shares.
struct Ctx {
    kind: ServerKind,
    /// The nodes; client `c` connects to `addrs[c % len]`.
    addrs: Vec<SocketAddr>,
    /// Source addresses; client `c` binds to `binds[c % len]` (none: the kernel picks).
    binds: Vec<IpAddr>,
    /// The clock every `ts` is measured on: `t0_unix_us` microseconds since the Unix epoch at
    /// `t0`, advanced by the monotonic clock from there.
    t0: Instant,
    t0_unix_us: u64,
    /// The measurement window, on the same clock (set before publishing starts).
    window_from: AtomicU64,
    window_to: AtomicU64,
    /// Event frames received, ever (for the in-flight window).
    received: AtomicU64,
    /// Deliveries the publishes so far should produce.
    expected: AtomicU64,
    /// Events received in the window, by latency.
    hist: Hist,
    /// Event frames without a readable `ts`.
    unreadable: AtomicU64,
    /// Clients that are live.
    ready: AtomicUsize,
    /// Clients that failed to connect or ended before the shutdown.
    failed: AtomicUsize,
    /// Clients that finished (after the shutdown, or failed).
    finished: AtomicUsize,
    /// Connections the server closed or reset while running.
    dropped: AtomicUsize,
    first_error: std::sync::Mutex<Option<String>>,
}

impl Ctx {
    /// A context with every counter at zero and no measurement window yet (`u64::MAX`).
    fn new(
        kind: ServerKind,
        addrs: Vec<SocketAddr>,
        binds: Vec<IpAddr>,
        t0: Instant,
        t0_unix_us: u64,
    ) -> Self {
        Ctx {
            kind,
            addrs,
            binds,
            t0,
            t0_unix_us,
            window_from: AtomicU64::new(u64::MAX),
            window_to: AtomicU64::new(u64::MAX),
            received: AtomicU64::new(0),
            expected: AtomicU64::new(0),
            hist: Hist::new(),
            unreadable: AtomicU64::new(0),
            ready: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            finished: AtomicUsize::new(0),
            dropped: AtomicUsize::new(0),
            first_error: std::sync::Mutex::new(None),
        }
    }

    fn now_us(&self) -> u64 {
        self.us_at(Instant::now())
    }

    /// `at` on the `ts` clock.
    fn us_at(&self, at: Instant) -> u64 {
        self.t0_unix_us + at.saturating_duration_since(self.t0).as_micros() as u64
    }

    fn fail(&self, why: String) {
        let mut first = self.first_error.lock().unwrap();
        if first.is_none() {
            *first = Some(why);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The run

#[derive(Default)]
struct PublishStats {
    sent: u64,
    in_window: u64,
    errors: u64,
    /// Answers whose `delivered` differs from the recipients this load generator holds.
    mismatched: u64,
}

/// Who is where: the recipients of every target.
struct Layout {
    user_conns: Vec<u64>,
    tenant_conns: Vec<u64>,
}

async fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    let n = cli.clients;
    let connected = connect_clients(&cli).await?;
    let (ctx, layout) = (connected.ctx.clone(), connected.layout.clone());
    let (users, tenants, connect_secs) =
        (connected.users, connected.tenants, connected.connect_secs);
    let rss_before = connected.rss_before;
    tokio::time::sleep(Duration::from_secs_f64(cli.settle)).await;
    let rss_live = sum_rss(&cli.pids);
    let mem_per_conn = match (rss_before, rss_live) {
        (Some(a), Some(b)) => Some((b.saturating_sub(a) * 1024) as f64 / n as f64),
        _ => None,
    };
    println!(
        "{:?}: {n} clients ({users} users of {} connections, {tenants} tenants) live in {connect_secs:.1} s",
        cli.server, cli.conns_per_user
    );
    println!(
        "  server memory      {} KiB before, {} KiB with every client live = {} bytes per connection",
        fmt_opt(rss_before.map(|v| v as f64), 0),
        fmt_opt(rss_live.map(|v| v as f64), 0),
        fmt_opt(mem_per_conn, 0)
    );

    for spec in &cli.phases {
        let r = phase(&cli, &ctx, &layout, *spec).await;
        let rss_loaded = sum_rss(&cli.pids);
        let fanout = r.fanout;
        let batch = match spec.batch {
            1 => String::new(),
            n => format!(", {n} envelopes per request"),
        };
        println!(
            "{:?} → {:?} (fan-out {fanout}{batch}), {}",
            cli.server,
            spec.target,
            if spec.rate > 0.0 {
                format!("{} publishes/s offered", spec.rate)
            } else {
                format!("as fast as delivered, at most {} deliveries outstanding", r.window)
            }
        );
        let secs = cli.duration;
        let s = &r.stats;
        println!(
            "  publishes          {} sent, {} in the window ({:.0}/s), {} errors, {} with another recipient count",
            s.sent,
            s.in_window,
            s.in_window as f64 / secs,
            s.errors,
            s.mismatched
        );
        println!("  delivered          {} in {secs:.1} s = {:.0}/s", r.measured, r.delivered_per_s);
        println!(
            "  latency (µs)       p50 {}  p99 {}  p99.9 {}  max {}",
            r.p50, r.p99, r.p999, r.max
        );
        println!(
            "  cpu in window      server {}%, loadgen {}% (of one core); {} delivered per server CPU-second",
            fmt_opt(r.server_cpu, 0),
            fmt_opt(r.loadgen_cpu, 0),
            fmt_opt(r.per_cpu_s, 0)
        );
        if let Some(redis) = &r.redis {
            println!(
                "  redis              {} commands = {} per publish ({}); redis CPU {}%",
                redis.commands,
                fmt_opt(redis.per_publish, 2),
                redis.top,
                fmt_opt(r.redis_cpu, 0)
            );
        }
        if let Some(m) = &r.monitor {
            let per = |c: u64| (s.in_window > 0).then(|| c as f64 / s.in_window as f64);
            println!(
                "  redis MONITOR      {} commands from clients = {} per publish ({}); {} run by scripts = {} per publish",
                m.client,
                fmt_opt(per(m.client), 2),
                m.client_top,
                m.scripted,
                fmt_opt(per(m.scripted), 2)
            );
        }
        println!(
            "  after              server RSS {} KiB; {} deliveries missing after the drain, {} connections dropped, {} unreadable events",
            fmt_opt(rss_loaded.map(|v| v as f64), 0),
            r.missing,
            ctx.dropped.load(Relaxed),
            ctx.unreadable.load(Relaxed)
        );
        let mut line = String::from("RESULT");
        let mut kv = |k: &str, v: String| {
            let _ = write!(line, " {k}={v}");
        };
        kv("label", cli.label.clone());
        kv("server", format!("{:?}", cli.server).to_lowercase());
        kv("target", format!("{:?}", spec.target).to_lowercase());
        kv("rate", spec.rate.to_string());
        kv("batch", spec.batch.to_string());
        kv("clients", n.to_string());
        kv("fanout", fanout.to_string());
        kv("publish_per_s", format!("{:.0}", s.in_window as f64 / secs));
        kv("delivered_per_s", format!("{:.0}", r.delivered_per_s));
        kv("p50_us", r.p50.to_string());
        kv("p99_us", r.p99.to_string());
        kv("mem_per_conn", fmt_opt(mem_per_conn, 0));
        kv("rss_before_kib", fmt_opt(rss_before.map(|v| v as f64), 0));
        kv("rss_live_kib", fmt_opt(rss_live.map(|v| v as f64), 0));
        kv("rss_after_kib", fmt_opt(rss_loaded.map(|v| v as f64), 0));
        kv("server_cpu_pct", fmt_opt(r.server_cpu, 0));
        kv("loadgen_cpu_pct", fmt_opt(r.loadgen_cpu, 0));
        kv("delivered_per_cpu_s", fmt_opt(r.per_cpu_s, 0));
        kv("missing", r.missing.to_string());
        kv("dropped", ctx.dropped.load(Relaxed).to_string());
        kv("errors", s.errors.to_string());
        kv("connect_s", format!("{connect_secs:.1}"));
        if let Some(m) = &r.monitor {
            let per = |c: u64| (s.in_window > 0).then(|| c as f64 / s.in_window as f64);
            kv("monitor", "1".into());
            kv("redis_client_cmds_per_publish", fmt_opt(per(m.client), 2));
            kv("redis_scripted_cmds_per_publish", fmt_opt(per(m.scripted), 2));
            kv("publishes_in_window", s.in_window.to_string());
            kv("window_s", secs.to_string());
            kv(
                "redis_client_cmds",
                if m.client_detail.is_empty() { "-".into() } else { m.client_detail.clone() },
            );
        }
        if let Some(redis) = &r.redis {
            kv("redis_cmds", redis.commands.to_string());
            kv("redis_cmds_per_publish", fmt_opt(redis.per_publish, 2));
            kv("redis_cpu_pct", fmt_opt(r.redis_cpu, 0));
        }
        println!("{line}");
    }

    // Close every client cleanly and wait for them (bounded).
    close_clients(connected, n).await;
    Ok(())
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    match v {
        Some(v) => format!("{v:.digits$}"),
        None => "-".into(),
    }
}

/// What one phase measured.
struct PhaseResult {
    fanout: u64,
    window: u64,
    stats: PublishStats,
    measured: u64,
    delivered_per_s: f64,
    p50: u64,
    p99: u64,
    p999: u64,
    max: u64,
    server_cpu: Option<f64>,
    loadgen_cpu: Option<f64>,
    per_cpu_s: Option<f64>,
    missing: u64,
    /// Redis commands over the window, with `--redis-addr`.
    redis: Option<RedisCount>,
    redis_cpu: Option<f64>,
    /// What MONITOR saw over the window (`:monitor` phases).
    monitor: Option<Monitored>,
}

/// What Redis did over a window.
struct RedisCount {
    commands: u64,
    per_publish: Option<f64>,
    /// The commands that made most of it, per publish (`evalsha 1.00, publish 1.00`).
    top: String,
}

/// Publishes for warm-up plus the window, then waits for what is in flight.
async fn phase(cli: &Cli, ctx: &Arc<Ctx>, layout: &Arc<Layout>, spec: PhaseSpec) -> PhaseResult {
    ctx.hist.reset();
    let warmup = Duration::from_secs_f64(cli.warmup);
    let duration = Duration::from_secs_f64(cli.duration);
    let start = Instant::now();
    let from = start + warmup;
    let to = from + duration;
    let us = |t: Instant| ctx.us_at(t);
    ctx.window_from.store(us(from), Relaxed);
    ctx.window_to.store(us(to), Relaxed);
    let fanout = match spec.target {
        TargetKind::User => layout.user_conns.iter().copied().max().unwrap_or(1),
        TargetKind::Tenant => layout.tenant_conns.iter().copied().max().unwrap_or(1),
    };
    let window = cli.window.unwrap_or((16 * fanout).max(16_384)).max(fanout);
    let plan = Arc::new(Plan {
        spec,
        layout: layout.clone(),
        next: AtomicU64::new(0),
        publishers: cli.publishers,
        window,
        pad: "x".repeat(cli.payload_bytes),
        admin_key: cli.admin_key.clone(),
        publish_via: cli.publish_via,
        batch: spec.batch,
        user_offset: cli.user_offset,
        start,
        from,
        to,
    });
    let publishers: Vec<_> = (0..cli.publishers)
        .map(|i| tokio::spawn(publisher(ctx.clone(), plan.clone(), i)))
        .collect();

    // CPU over the window.
    tokio::time::sleep_until(from.into()).await;
    let monitor = match (spec.monitor, cli.redis_addr) {
        (true, Some(addr)) => Some(tokio::spawn(redis_monitor(addr, from, to))),
        _ => None,
    };
    let redis_from = redis_snapshot(cli.redis_addr).await;
    let cpu_from = (
        sum_cpu(&cli.pids),
        proc_cpu_ticks(std::process::id()),
        cli.redis_pid.and_then(proc_cpu_ticks),
    );
    tokio::time::sleep_until(to.into()).await;
    let cpu_to = (
        sum_cpu(&cli.pids),
        proc_cpu_ticks(std::process::id()),
        cli.redis_pid.and_then(proc_cpu_ticks),
    );
    let redis_to = redis_snapshot(cli.redis_addr).await;

    let mut stats = PublishStats::default();
    for p in publishers {
        if let Ok(s) = p.await {
            stats.sent += s.sent;
            stats.in_window += s.in_window;
            stats.errors += s.errors;
            stats.mismatched += s.mismatched;
        }
    }
    // Let what is in flight arrive.
    let drain_deadline = Instant::now() + Duration::from_secs(20);
    while ctx.received.load(Relaxed) < ctx.expected.load(Relaxed) && Instant::now() < drain_deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let missing = ctx.expected.load(Relaxed).saturating_sub(ctx.received.load(Relaxed));
    // Count what never came as received, so that the next phase's window starts even.
    ctx.received.fetch_add(missing, Relaxed);

    let counts = ctx.hist.counts();
    let measured: u64 = counts.iter().sum();
    let secs = duration.as_secs_f64();
    let delivered_per_s = measured as f64 / secs;
    let tick = clock_ticks_per_sec();
    let cpu_pct = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / tick / secs * 100.0),
        _ => None,
    };
    let server_cpu = cpu_pct(cpu_from.0, cpu_to.0);
    let monitor = match monitor {
        Some(task) => match task.await {
            Ok(Ok(m)) => Some(m),
            Ok(Err(e)) => {
                eprintln!("loadgen: redis MONITOR failed: {e}");
                None
            }
            Err(e) => {
                eprintln!("loadgen: redis MONITOR failed: {e}");
                None
            }
        },
        None => None,
    };
    let redis = match (redis_from, redis_to) {
        (Some(a), Some(b)) => Some(redis_count(&a, &b, stats.in_window)),
        _ => None,
    };
    PhaseResult {
        fanout,
        window,
        stats,
        measured,
        delivered_per_s,
        p50: Hist::percentile(&counts, 0.50),
        p99: Hist::percentile(&counts, 0.99),
        p999: Hist::percentile(&counts, 0.999),
        max: Hist::percentile(&counts, 1.0),
        server_cpu,
        loadgen_cpu: cpu_pct(cpu_from.1, cpu_to.1),
        per_cpu_s: server_cpu.filter(|c| *c > 0.0).map(|c| delivered_per_s / (c / 100.0)),
        missing,
        redis,
        redis_cpu: cpu_pct(cpu_from.2, cpu_to.2),
        monitor,
    }
}

// ---------------------------------------------------------------------------------------------
// Publishing

struct Plan {
    spec: PhaseSpec,
    layout: Arc<Layout>,
    next: AtomicU64,
    publishers: usize,
    window: u64,
    pad: String,
    admin_key: String,
    /// Every publisher posts to this node, if set.
    publish_via: Option<usize>,
    /// Envelopes per request: more than one posts a JSON array (batch publish).
    batch: u64,
    /// `--user-offset`: user `u` is named `u{u + user_offset}`.
    user_offset: usize,
    start: Instant,
    from: Instant,
    to: Instant,
}

/// One keep-alive HTTP connection publishing until the window ends.
async fn publisher(ctx: Arc<Ctx>, plan: Arc<Plan>, index: usize) -> PublishStats {
    let mut stats = PublishStats::default();
    let mut conn: Option<HttpConn> = None;
    let rate = plan.spec.rate;
    // A request carries `batch` envelopes, and the rate counts envelopes.
    let interval = (rate > 0.0)
        .then(|| Duration::from_secs_f64(plan.publishers as f64 * plan.batch as f64 / rate));
    let mut due = plan.start
        + interval.map_or(Duration::ZERO, |i| i.mul_f64(index as f64 / plan.publishers as f64));
    let mut body = String::with_capacity(plan.pad.len() + 128);
    let addr = ctx.addrs[plan.publish_via.unwrap_or(index % ctx.addrs.len())];
    loop {
        if let Some(interval) = interval {
            if due >= plan.to {
                break;
            }
            tokio::time::sleep_until(due.into()).await;
            due += interval;
        } else if Instant::now() >= plan.to {
            break;
        }
        let batch = plan.batch;
        let first = plan.next.fetch_add(batch, Relaxed);
        let layout = &plan.layout;
        let tenants = layout.tenant_conns.len();
        let target_of = |k: u64| match plan.spec.target {
            TargetKind::User => {
                let u = (k % layout.user_conns.len() as u64) as usize;
                (u % tenants, Some(u), layout.user_conns[u])
            }
            TargetKind::Tenant => {
                let t = (k % tenants as u64) as usize;
                (t, None, layout.tenant_conns[t])
            }
        };
        let fanout: u64 = (first..first + batch).map(|k| target_of(k).2).sum();
        if interval.is_none() {
            // Closed loop: wait until the deliveries in flight leave room for this request.
            while ctx.expected.load(Relaxed).saturating_sub(ctx.received.load(Relaxed)) + fanout
                > plan.window
            {
                if Instant::now() >= plan.to {
                    return stats;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        ctx.expected.fetch_add(fanout, Relaxed);
        let sent_at = Instant::now();
        body.clear();
        if plan.batch > 1 {
            body.push('[');
        }
        for k in first..first + batch {
            let (tenant, user, _) = target_of(k);
            if k > first {
                body.push(',');
            }
            let _ = write!(body, r#"{{"tenant":"t{tenant}","#);
            if let Some(u) = user {
                let _ = write!(body, r#""user":"u{}","#, u + plan.user_offset);
            }
            let _ = write!(
                body,
                r#""kind":"bench","data":{{"ts":{},"pad":"{}"}}}}"#,
                ctx.us_at(sent_at),
                plan.pad
            );
        }
        if plan.batch > 1 {
            body.push(']');
        }
        stats.sent += batch;
        if sent_at >= plan.from && sent_at < plan.to {
            stats.in_window += batch;
        }
        let mut answer = match conn.as_mut() {
            Some(c) => c.post(&addr, "/publish", &plan.admin_key, &body).await,
            None => Err(std::io::ErrorKind::NotConnected.into()),
        };
        if answer.is_err() {
            // No connection yet, or the server closed an idle keep-alive connection (node does
            // after 5 s) before reading this request: connect anew and send it once more, as
            // HTTP clients do. The payload keeps its first `ts`.
            answer = match HttpConn::connect(addr).await {
                Ok(c) => conn.insert(c).post(&addr, "/publish", &plan.admin_key, &body).await,
                Err(e) => Err(e),
            };
        }
        match answer {
            Ok((200, reply)) if plan.batch > 1 => {
                // `{"results":[{…,"status":200},…]}` from both servers: an entry refused is an
                // error whose deliveries will never come.
                let refused = batch.saturating_sub(count(&reply, b"\"status\":200"));
                if refused > 0 {
                    stats.errors += refused;
                    ctx.expected.fetch_sub(fanout * refused / batch, Relaxed);
                    ctx.fail(format!("batch entries refused: {}", String::from_utf8_lossy(&reply)));
                }
                let delivered = sum_of(&reply, b"\"delivered\":");
                if delivered.is_some_and(|d| d != fanout) {
                    stats.mismatched += 1;
                }
            }
            Ok((200, reply)) => {
                if delivered_of(&reply).is_some_and(|d| d != fanout) {
                    stats.mismatched += 1;
                }
            }
            Ok((status, reply)) => {
                stats.errors += 1;
                ctx.expected.fetch_sub(fanout, Relaxed);
                ctx.fail(format!("publish answered {status}: {}", String::from_utf8_lossy(&reply)));
            }
            Err(e) => {
                stats.errors += 1;
                ctx.expected.fetch_sub(fanout, Relaxed);
                ctx.fail(format!("publish failed: {e}"));
                conn = None;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    stats
}

/// How often `needle` occurs in `body`.
fn count(body: &[u8], needle: &[u8]) -> u64 {
    body.windows(needle.len()).filter(|w| *w == needle).count() as u64
}

/// The sum of the numbers after each `key` in `body`, or `None` if the key is absent (a
/// clustered server answers positions, not counts).
fn sum_of(body: &[u8], key: &[u8]) -> Option<u64> {
    let mut rest = body;
    let mut sum = None;
    while let Some(at) = find(rest, key) {
        rest = &rest[at + key.len()..];
        *sum.get_or_insert(0) += parse_u64(rest)?;
    }
    sum
}

/// The `delivered` count of a publish answer (both servers give one).
fn delivered_of(body: &[u8]) -> Option<u64> {
    let at = find(body, b"\"delivered\":")? + b"\"delivered\":".len();
    parse_u64(&body[at..])
}

/// A minimal HTTP/1.1 keep-alive client.
struct HttpConn {
    stream: TcpStream,
    buf: Vec<u8>,
    request: Vec<u8>,
}

impl HttpConn {
    async fn connect(addr: SocketAddr) -> std::io::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(HttpConn { stream, buf: Vec::with_capacity(4096), request: Vec::with_capacity(1024) })
    }

    /// Posts a JSON body; returns the status and the response body.
    async fn post(
        &mut self,
        addr: &SocketAddr,
        path: &str,
        bearer: &str,
        body: &str,
    ) -> std::io::Result<(u16, Vec<u8>)> {
        self.request.clear();
        let _ = std::io::Write::write_fmt(
            &mut self.request,
            format_args!(
                "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {bearer}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                body.len()
            ),
        );
        self.request.extend_from_slice(body.as_bytes());
        self.stream.write_all(&self.request).await?;
        // Head.
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            self.fill().await?;
        };
        let head = std::str::from_utf8(&self.buf[..head_end]).map_err(invalid)?;
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| invalid("no status line"))?;
        let mut length = None;
        let mut chunked = false;
        for line in head.split("\r\n").skip(1) {
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse::<usize>().ok();
                } else if k.eq_ignore_ascii_case("transfer-encoding") {
                    chunked = v.to_ascii_lowercase().contains("chunked");
                }
            }
        }
        self.buf.drain(..head_end);
        let body = if chunked {
            let mut body = Vec::new();
            loop {
                let line_end = loop {
                    if let Some(i) = find(&self.buf, b"\r\n") {
                        break i;
                    }
                    self.fill().await?;
                };
                let size_text = std::str::from_utf8(&self.buf[..line_end]).map_err(invalid)?;
                let size =
                    usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                        .map_err(invalid)?;
                while self.buf.len() < line_end + 2 + size + 2 {
                    self.fill().await?;
                }
                body.extend_from_slice(&self.buf[line_end + 2..line_end + 2 + size]);
                self.buf.drain(..line_end + 2 + size + 2);
                if size == 0 {
                    break body;
                }
            }
        } else {
            let length = length.ok_or_else(|| invalid("no content-length"))?;
            while self.buf.len() < length {
                self.fill().await?;
            }
            self.buf.drain(..length).collect()
        };
        Ok((status, body))
    }

    async fn fill(&mut self) -> std::io::Result<()> {
        let mut chunk = [0u8; 4096];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

fn invalid(e: impl ToString) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())
}

// ---------------------------------------------------------------------------------------------
// The WebSocket clients

/// Where a client is in its handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// switchboard: waiting for `connected`; Socket.IO: waiting for the Engine.IO open packet.
    Opening,
    /// switchboard: waiting for the `pong`; Socket.IO: waiting for the Socket.IO connect answer.
    Joining,
    Live,
    /// We sent a close frame.
    Closing,
}

/// One client's connection: a read buffer parsed in place and a small write buffer.
struct Ws {
    stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// A fragmented message being reassembled.
    partial: Vec<u8>,
    partial_open: bool,
    out: Vec<u8>,
    mask_state: u32,
}

impl Ws {
    /// Opens the TCP connection and performs the HTTP/1.1 upgrade.
    async fn open(
        addr: SocketAddr,
        bind: Option<IpAddr>,
        path: &str,
        bearer: Option<&str>,
        seed: u64,
    ) -> std::io::Result<Ws> {
        let mut stream = match bind {
            Some(source) => hold::connect_from(source, addr).await?,
            None => TcpStream::connect(addr).await?,
        };
        stream.set_nodelay(true)?;
        let auth = bearer.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: bG9hZGdlbi1zd2l0Y2hiZA==\r\nSec-WebSocket-Version: 13\r\n{auth}\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut ws = Ws {
            stream,
            buf: vec![0; 8192],
            start: 0,
            end: 0,
            partial: Vec::new(),
            partial_open: false,
            out: Vec::with_capacity(256),
            mask_state: (seed as u32).wrapping_mul(2_654_435_761) | 1,
        };
        let head_end = loop {
            if let Some(i) = find(&ws.buf[..ws.end], b"\r\n\r\n") {
                break i + 4;
            }
            if ws.read_more().await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        };
        let head = String::from_utf8_lossy(&ws.buf[..head_end]).into_owned();
        if !head.starts_with("HTTP/1.1 101") {
            let line = head.lines().next().unwrap_or("").to_owned();
            let body = String::from_utf8_lossy(&ws.buf[head_end..ws.end]).into_owned();
            return Err(invalid(format!("upgrade refused: {line} {body}")));
        }
        ws.start = head_end;
        Ok(ws)
    }

    /// Reads more bytes into the buffer, compacting or growing it first if needed.
    async fn read_more(&mut self) -> std::io::Result<usize> {
        if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else {
                self.buf.resize(self.buf.len() * 2, 0);
            }
        }
        let n = self.stream.read(&mut self.buf[self.end..]).await?;
        self.end += n;
        Ok(n)
    }

    /// The next complete frame in the buffer, as (fin, opcode, payload range), consuming it.
    fn next_frame(&mut self) -> std::io::Result<Option<(bool, u8, std::ops::Range<usize>)>> {
        let avail = &self.buf[self.start..self.end];
        if avail.len() < 2 {
            return Ok(None);
        }
        let fin = avail[0] & 0x80 != 0;
        let opcode = avail[0] & 0x0f;
        let masked = avail[1] & 0x80 != 0;
        let (len, mut at) = match avail[1] & 0x7f {
            126 if avail.len() >= 4 => (u64::from(u16::from_be_bytes([avail[2], avail[3]])), 4),
            127 if avail.len() >= 10 => {
                (u64::from_be_bytes(avail[2..10].try_into().expect("8 bytes")), 10)
            }
            126 | 127 => return Ok(None),
            n => (u64::from(n), 2),
        };
        if masked {
            return Err(invalid("the server masked a frame"));
        }
        let len = usize::try_from(len).map_err(invalid)?;
        if len > 64 * 1024 * 1024 {
            return Err(invalid("frame over 64 MiB"));
        }
        if avail.len() < at + len {
            if self.start + at + len > self.buf.len() {
                // Make room for the whole frame.
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
                if at + len > self.buf.len() {
                    self.buf.resize((at + len).next_power_of_two(), 0);
                }
            }
            return Ok(None);
        }
        at += self.start;
        self.start = at + len;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        Ok(Some((fin, opcode, at..at + len)))
    }

    /// Queues a masked client frame.
    fn queue(&mut self, opcode: u8, payload: &[u8]) {
        self.out.push(0x80 | opcode);
        match payload.len() {
            n if n < 126 => self.out.push(0x80 | n as u8),
            n if n <= 0xffff => {
                self.out.push(0x80 | 126);
                self.out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                self.out.push(0x80 | 127);
                self.out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        // xorshift32: the mask need not be secret here, only present.
        let mut x = self.mask_state;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.mask_state = x;
        let mask = x.to_be_bytes();
        self.out.extend_from_slice(&mask);
        self.out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }
}

/// One client from connect to close. Releases `permit` once it is live.
async fn client(
    ctx: &Ctx,
    index: u64,
    token: &str,
    permit: &mut Option<tokio::sync::OwnedSemaphorePermit>,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let addr = ctx.addrs[index as usize % ctx.addrs.len()];
    let bind = (!ctx.binds.is_empty()).then(|| ctx.binds[index as usize % ctx.binds.len()]);
    let mut ws = match ctx.kind {
        ServerKind::Switchboard => Ws::open(addr, bind, "/ws", Some(token), index).await?,
        ServerKind::Socketio => {
            Ws::open(addr, bind, "/socket.io/?EIO=4&transport=websocket", None, index).await?
        }
    };
    let connect_packet = format!(r#"40{{"token":"{token}"}}"#);
    let mut phase = Phase::Opening;
    let mut stopping = false;
    let mut close_deadline = None;
    loop {
        // Every complete frame in the buffer.
        let mut events = 0u64;
        while let Some((fin, opcode, range)) = ws.next_frame()? {
            // A whole message: in the read buffer, or reassembled from fragments.
            let mut whole: Option<Vec<u8>> = None;
            let range = match opcode {
                0x0 => {
                    ws.partial.extend_from_slice(&ws.buf[range]);
                    if !(fin && ws.partial_open) {
                        continue;
                    }
                    ws.partial_open = false;
                    whole = Some(std::mem::take(&mut ws.partial));
                    0..0
                }
                0x1 | 0x2 if !fin => {
                    ws.partial.clear();
                    ws.partial.extend_from_slice(&ws.buf[range]);
                    ws.partial_open = true;
                    continue;
                }
                0x1 | 0x2 => range,
                0x8 => {
                    if phase != Phase::Closing {
                        // The server closed on us: answer, and count it unless we were stopping.
                        let why = String::from_utf8_lossy(&ws.buf[range]).into_owned();
                        ws.queue(0x8, &[0x03, 0xe8]);
                        let _ = ws.flush().await;
                        if !stopping {
                            ctx.dropped.fetch_add(1, Relaxed);
                            return Err(invalid(format!("closed by the server: {why}")));
                        }
                    }
                    return Ok(());
                }
                0x9 => {
                    let payload = ws.buf[range].to_vec();
                    ws.queue(0xA, &payload);
                    continue;
                }
                _ => continue,
            };
            let payload: &[u8] = whole.as_deref().unwrap_or(&ws.buf[range]);
            match handle_message(ctx, payload, phase) {
                Handled::Event(ts) => {
                    events += 1;
                    match ts {
                        Some(ts) => {
                            let now = ctx.now_us();
                            if now >= ctx.window_from.load(Relaxed)
                                && now < ctx.window_to.load(Relaxed)
                            {
                                ctx.hist.record(now.saturating_sub(ts));
                            }
                        }
                        None => {
                            ctx.unreadable.fetch_add(1, Relaxed);
                        }
                    }
                }
                Handled::Opened => {
                    match ctx.kind {
                        // Socket.IO: connect to the main namespace with the token.
                        ServerKind::Socketio => ws.queue(0x1, connect_packet.as_bytes()),
                        // switchboard: a first frame, so that live delivery starts now.
                        ServerKind::Switchboard => ws.queue(0x1, br#"{"type":"ping"}"#),
                    }
                    phase = Phase::Joining;
                }
                Handled::Live => {
                    if phase == Phase::Joining {
                        phase = Phase::Live;
                        permit.take();
                        ctx.ready.fetch_add(1, Relaxed);
                    }
                }
                Handled::EnginePing => ws.queue(0x1, b"3"),
                Handled::Refused(why) => return Err(invalid(why)),
                Handled::Other => {}
            }
        }
        if events > 0 {
            ctx.received.fetch_add(events, Relaxed);
        }
        ws.flush().await?;
        if stopping && phase != Phase::Closing {
            ws.queue(0x8, &[0x03, 0xe8]); // 1000, normal closure
            ws.flush().await?;
            phase = Phase::Closing;
            close_deadline = Some(tokio::time::Instant::now() + Duration::from_secs(5));
        }
        let deadline = async {
            match close_deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            n = ws.read_more() => {
                if n? == 0 {
                    if phase == Phase::Closing {
                        return Ok(());
                    }
                    ctx.dropped.fetch_add(1, Relaxed);
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
            }
            changed = stop.changed(), if !stopping => {
                let _ = changed;
                stopping = true;
            }
            () = deadline => return Ok(()),
        }
    }
}

enum Handled {
    /// An event, with its `ts` if it had one.
    Event(Option<u64>),
    /// switchboard's `connected`, or Engine.IO's open packet.
    Opened,
    /// switchboard's `pong`, or the Socket.IO connect answer.
    Live,
    /// Engine.IO ping.
    EnginePing,
    Refused(String),
    Other,
}

fn handle_message(ctx: &Ctx, payload: &[u8], phase: Phase) -> Handled {
    match ctx.kind {
        ServerKind::Switchboard => {
            if let Some(i) = find(payload, b"\"ts\":") {
                return Handled::Event(parse_u64(&payload[i + 5..]));
            }
            if phase == Phase::Opening && payload.starts_with(br#"{"type":"connected""#) {
                return Handled::Opened;
            }
            if payload.starts_with(br#"{"type":"pong""#) {
                return Handled::Live;
            }
            if payload.starts_with(br#"{"type":"error""#) {
                return Handled::Refused(String::from_utf8_lossy(payload).into_owned());
            }
            Handled::Other
        }
        ServerKind::Socketio => match payload {
            [b'4', b'2', rest @ ..] => {
                Handled::Event(find(rest, b"\"ts\":").and_then(|i| parse_u64(&rest[i + 5..])))
            }
            [b'2', ..] => Handled::EnginePing,
            [b'0', ..] if phase == Phase::Opening => Handled::Opened,
            [b'4', b'0', ..] => Handled::Live,
            [b'4', b'4', ..] | [b'1', ..] => {
                Handled::Refused(String::from_utf8_lossy(payload).into_owned())
            }
            _ => Handled::Other,
        },
    }
}

// ---------------------------------------------------------------------------------------------
// Small helpers

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn parse_u64(bytes: &[u8]) -> Option<u64> {
    let digits = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return None;
    }
    std::str::from_utf8(&bytes[..digits]).ok()?.parse().ok()
}

/// The summed `VmRSS` of every process, in KiB; `None` without processes or when one is gone.
fn sum_rss(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&p| proc_status_kb(p, "VmRSS")).sum()
}

/// The summed CPU ticks of every process; `None` without processes or when one is gone.
fn sum_cpu(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&p| proc_cpu_ticks(p)).sum()
}

/// Calls per command (`INFO commandstats`) of the Redis server at `addr`; `None` without one
/// or when it does not answer (reported as `-`, the run goes on).
async fn redis_snapshot(addr: Option<SocketAddr>) -> Option<Vec<(String, u64)>> {
    match redis_info(addr?, "commandstats").await {
        Ok(text) => Some(parse_commandstats(&text)),
        Err(e) => {
            eprintln!("loadgen: INFO from redis failed: {e}");
            None
        }
    }
}

/// `cmdstat_evalsha:calls=12,usec=…` lines as (`evalsha`, 12).
fn parse_commandstats(text: &str) -> Vec<(String, u64)> {
    text.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest.strip_prefix("calls=")?.split(',').next()?.parse().ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

/// The commands between two snapshots, less the `INFO` that took the first one (Redis counts a
/// command once it has answered it, so the second snapshot includes the first) and any
/// `MONITOR` of ours.
fn redis_count(before: &[(String, u64)], after: &[(String, u64)], publishes: u64) -> RedisCount {
    let mut diff: Vec<(String, u64)> = after
        .iter()
        .map(|(name, calls)| {
            let was = before.iter().find(|(n, _)| n == name).map_or(0, |(_, c)| *c);
            let own = u64::from(name == "info");
            (name.clone(), calls.saturating_sub(was).saturating_sub(own))
        })
        // A `:monitor` phase's own MONITOR is not the servers' either.
        .filter(|(name, c)| *c > 0 && name != "monitor")
        .collect();
    diff.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let commands = diff.iter().map(|(_, c)| c).sum();
    let per = |c: u64| (publishes > 0).then(|| c as f64 / publishes as f64);
    let top = diff
        .iter()
        .take(4)
        .map(|(n, c)| format!("{n} {}", fmt_opt(per(*c), 2)))
        .collect::<Vec<_>>()
        .join(", ");
    RedisCount { commands, per_publish: per(commands), top }
}

/// Commands MONITOR showed over a window.
#[derive(Debug, Default, PartialEq)]
struct Monitored {
    /// Sent by clients (each a request, so at most one round trip); the load generator's own
    /// `INFO` is left out.
    client: u64,
    /// Run inside a script (`[0 lua]`): no round trip of their own.
    scripted: u64,
    /// The client commands that made most of it, with their counts.
    client_top: String,
    /// Every client command with its count, `name=count` joined by `;` (for RESULT lines).
    client_detail: String,
}

/// Watches Redis with MONITOR from `from` to `to`, counting what it shows.
async fn redis_monitor(addr: SocketAddr, from: Instant, to: Instant) -> std::io::Result<Monitored> {
    let mut stream = TcpStream::connect(addr).await?;
    tokio::time::sleep_until(from.into()).await;
    stream.write_all(b"*1\r\n$7\r\nMONITOR\r\n").await?;
    let mut buf = Vec::with_capacity(1 << 16);
    let mut counts = MonitorCounts::default();
    let mut chunk = vec![0u8; 1 << 16];
    loop {
        let read = tokio::select! {
            n = stream.read(&mut chunk) => n?,
            () = tokio::time::sleep_until(to.into()) => break,
        };
        if read == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..read]);
        let mut start = 0;
        while let Some(i) = find(&buf[start..], b"\r\n") {
            counts.line(&buf[start..start + i]);
            start += i + 2;
        }
        buf.drain(..start);
    }
    Ok(counts.finish())
}

/// Tallies MONITOR lines: `+1700000000.123456 [0 127.0.0.1:5555] "evalsha" "…"`, where a
/// script's commands show `[0 lua]`.
#[derive(Default)]
struct MonitorCounts {
    client: HashMap<String, u64>,
    scripted: u64,
}

impl MonitorCounts {
    fn line(&mut self, line: &[u8]) {
        let Some(open) = find(line, b" [") else { return };
        let Some(close) = find(&line[open..], b"] ") else { return };
        let source = &line[open + 2..open + close];
        let rest = &line[open + close + 2..];
        let mut args = rest.split(|&b| b == b' ').map(|a| {
            let a = a.strip_prefix(b"\"").unwrap_or(a);
            String::from_utf8_lossy(a.strip_suffix(b"\"").unwrap_or(a)).to_ascii_lowercase()
        });
        let mut command = args.next().unwrap_or_default();
        if command == "evalsha" {
            // Scripts told apart by their SHA's first 8 digits: which one the publishes call.
            let sha = args.next().unwrap_or_default();
            command = format!("evalsha:{}", sha.chars().take(8).collect::<String>());
        }
        if source.ends_with(b"lua") {
            self.scripted += 1;
        } else if command != "info" {
            *self.client.entry(command).or_insert(0) += 1;
        }
    }

    fn finish(self) -> Monitored {
        let mut top: Vec<(String, u64)> = self.client.into_iter().collect();
        top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        Monitored {
            client: top.iter().map(|(_, c)| c).sum(),
            scripted: self.scripted,
            client_top: top
                .iter()
                .take(4)
                .map(|(n, c)| format!("{n} {c}"))
                .collect::<Vec<_>>()
                .join(", "),
            client_detail: top
                .iter()
                .map(|(n, c)| format!("{n}={c}"))
                .collect::<Vec<_>>()
                .join(";"),
        }
    }
}

/// `INFO <section>` over a fresh connection, in RESP: the bulk string it answers.
async fn redis_info(addr: SocketAddr, section: &str) -> std::io::Result<String> {
    let read = async {
        let mut stream = TcpStream::connect(addr).await?;
        let request = format!("*2\r\n$4\r\nINFO\r\n${}\r\n{section}\r\n", section.len());
        stream.write_all(request.as_bytes()).await?;
        let mut buf = Vec::with_capacity(8192);
        loop {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(body) = resp_bulk(&buf)? {
                return Ok(body);
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}

/// A complete RESP bulk string at the start of `buf`, `None` while incomplete; an error reply
/// (`-ERR …`) or any other type is an error.
fn resp_bulk(buf: &[u8]) -> std::io::Result<Option<String>> {
    let Some(line_end) = find(buf, b"\r\n") else { return Ok(None) };
    let head = std::str::from_utf8(&buf[..line_end]).map_err(invalid)?;
    let Some(len) = head.strip_prefix('$') else {
        return Err(invalid(format!("redis answered {head}")));
    };
    let len: usize = len.parse().map_err(invalid)?;
    let start = line_end + 2;
    if buf.len() < start + len {
        return Ok(None);
    }
    Ok(Some(String::from_utf8_lossy(&buf[start..start + len]).into_owned()))
}

/// A `kB` field of `/proc/<pid>/status`, in KiB.
fn proc_status_kb(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        rest.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

/// User plus system CPU time of a process (all threads), in clock ticks.
fn proc_cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start at its closing paren.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commandstats_lines_are_read_and_others_skipped() {
        let text = "# Commandstats\r\ncmdstat_evalsha:calls=12,usec=40,usec_per_call=3.33\r\n\
                    cmdstat_info:calls=3,usec=9\r\nused_memory:100\r\ncmdstat_bad:calls=x\r\n";
        assert_eq!(
            parse_commandstats(text),
            vec![("evalsha".to_owned(), 12), ("info".to_owned(), 3)]
        );
    }

    #[test]
    fn redis_count_subtracts_the_first_snapshot_and_its_own_info() {
        let before = vec![("evalsha".to_owned(), 10), ("info".to_owned(), 1)];
        let after =
            vec![("evalsha".to_owned(), 30), ("info".to_owned(), 2), ("publish".to_owned(), 5)];
        let c = redis_count(&before, &after, 20);
        assert_eq!(c.commands, 25);
        assert_eq!(c.per_publish, Some(1.25));
        assert_eq!(c.top, "evalsha 1.00, publish 0.25");
        assert_eq!(redis_count(&before, &after, 0).per_publish, None);
    }

    #[test]
    fn resp_bulk_waits_for_the_whole_string_and_reports_errors() {
        assert_eq!(resp_bulk(b"$5\r\nhel").unwrap(), None);
        assert_eq!(resp_bulk(b"$5\r\nhello\r\n").unwrap().as_deref(), Some("hello"));
        assert!(resp_bulk(b"-ERR unknown command\r\n").is_err());
        assert_eq!(resp_bulk(b"$5").unwrap(), None);
    }

    #[test]
    fn sums_over_processes_need_every_process() {
        let me = std::process::id();
        assert_eq!(sum_rss(&[]), None);
        let one = sum_rss(&[me]).expect("our own RSS");
        assert!(sum_rss(&[me, me]).expect("twice ours") >= one);
        // A pid above the kernel's maximum (4,194,304) never exists.
        assert_eq!(sum_rss(&[me, u32::MAX]), None);
        assert_eq!(sum_cpu(&[u32::MAX]), None);
    }

    #[test]
    fn monitor_lines_tell_client_commands_from_scripted_ones() {
        let mut m = MonitorCounts::default();
        m.line(br#"+1700000000.123456 [0 127.0.0.1:5555] "evalsha" "abcdef0123456789" "1" "k""#);
        m.line(br#"+1700000000.123460 [0 lua] "incr" "k""#);
        m.line(br#"+1700000000.123470 [0 lua] "publish" "c" "x""#);
        m.line(br#"+1700000000.123480 [0 127.0.0.1:5556] "INFO" "commandstats""#);
        m.line(br#"+1700000000.123490 [0 unix:/tmp/r.sock] "PUBLISH" "c" "y""#);
        m.line(b"+OK");
        assert_eq!(
            m.finish(),
            Monitored {
                client: 2,
                scripted: 2,
                client_top: "evalsha:abcdef01 1, publish 1".into(),
                client_detail: "evalsha:abcdef01=1;publish=1".into(),
            }
        );
    }

    #[test]
    fn phases_parse_with_an_optional_monitor_suffix() {
        let p: PhaseSpec = "user:100:monitor".parse().unwrap();
        assert!(p.monitor && p.rate == 100.0 && p.target == TargetKind::User);
        let p: PhaseSpec = "tenant".parse().unwrap();
        assert!(!p.monitor && p.rate == 0.0 && p.target == TargetKind::Tenant);
        assert!("user:fast".parse::<PhaseSpec>().is_err());
        assert!("room:1".parse::<PhaseSpec>().is_err());
    }

    #[test]
    fn addresses_come_repeated_or_comma_separated() {
        let cli = Cli::try_parse_from([
            "loadgen",
            "--server",
            "switchboard",
            "--jwt-secret",
            "s",
            "--admin-key",
            "k",
            "--addr",
            "127.0.0.1:1,127.0.0.1:2",
            "--addr",
            "127.0.0.1:3",
            "--pid",
            "7,8",
        ])
        .expect("valid");
        assert_eq!(cli.addrs.len(), 3);
        assert_eq!(cli.pids, vec![7, 8]);
        let default = Cli::try_parse_from([
            "loadgen",
            "--server",
            "socketio",
            "--jwt-secret",
            "s",
            "--admin-key",
            "k",
        ])
        .expect("valid");
        assert_eq!(default.addrs, vec!["127.0.0.1:8080".parse::<SocketAddr>().unwrap()]);
        assert!(default.pids.is_empty());
    }
}
