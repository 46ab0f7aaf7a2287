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
//!   that the publisher embedded in the payload, over every event received in the window (or,
//!   with `--latency-every N`, over one event in N per client: a cheaper receive path when the
//!   load generator shares the server's cores).
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
//!
//! # The modules
//!
//! `cli` (the command line), `connect` (connecting and closing the clients), `run` (the phases
//! and their report), `publish` (the HTTP publishers), `ws` (the RFC 6455 client), `client` (one
//! client's life, switchboard or Socket.IO), `ctx` (what every task shares), `hist` (the latency
//! histogram), `procfs` (memory and CPU from `/proc`), `redis` (Redis command counts), `hold`
//! and `recovery` (the other two modes), `bytes` (byte helpers).

use clap::Parser;

mod bytes;
mod cli;
mod client;
mod connect;
mod ctx;
mod hist;
mod hold;
mod procfs;
mod publish;
mod recovery;
mod redis;
mod run;
mod ws;

use cli::Cli;

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
        rt.block_on(run::run(cli))
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
