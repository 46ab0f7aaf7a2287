//! The command line: which server, where, how many clients, and the phases to run.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use clap::{Parser, ValueEnum};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum ServerKind {
    /// switchboard's server (`cargo run`, the `switchboard` binary).
    Switchboard,
    /// The Socket.IO peer (`benches/peers/socketio/server.js`).
    Socketio,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TargetKind {
    /// Each publish goes to one user (all of its connections).
    User,
    /// Each publish goes to one tenant (every connection of it).
    Tenant,
}

/// One measured phase: what to publish to, and how fast.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PhaseSpec {
    /// Who each publish goes to.
    pub(crate) target: TargetKind,
    /// Publishes per second; 0: as fast as the server delivers.
    pub(crate) rate: f64,
    /// `…:monitor`: watch Redis with MONITOR over the window, to tell the commands clients send
    /// (round trips) from those a script runs. MONITOR slows Redis down: use it on a phase of
    /// its own, not on one whose latency or throughput matters.
    pub(crate) monitor: bool,
    /// `…:bN`: envelopes per publish request, 1 to 100 (default 1). Above 1 each request is a
    /// batch (a JSON array answered with one result per envelope), the same on both servers;
    /// the rate still counts envelopes.
    pub(crate) batch: u64,
    /// `…:defer`: the clients stop reading while the phase publishes, so that the kernel's
    /// socket buffers take the deliveries and the load generator's receive path is off the
    /// machine's CPUs for the window (see `run::deferred`). Only with rate 0; the phase
    /// publishes `--window` deliveries' worth once, then the clients read and count them.
    pub(crate) defer: bool,
}

impl FromStr for PhaseSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (s, defer) = match s.strip_suffix(":defer") {
            Some(rest) => (rest, true),
            None => (s, false),
        };
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
        if defer && rate != 0.0 {
            return Err(
                "`:defer` publishes as fast as the server takes it: the rate must be 0".into()
            );
        }
        Ok(PhaseSpec { target, rate, monitor, batch, defer })
    }
}

/// switchboard's end-to-end load generator.
#[derive(Debug, Parser)]
#[command(
    about = "WebSocket load generator for switchboard's example server and the Socket.IO peer"
)]
pub(crate) struct Cli {
    /// Which server speaks at `--addr`.
    #[arg(long, value_enum)]
    pub(crate) server: ServerKind,
    /// The server's address (HTTP and WebSocket). Several nodes of one cluster: repeat it or
    /// separate with commas; client `c` connects to the `c mod N`-th, and so does publisher `p`
    /// (unless `--publish-via`).
    #[arg(long = "addr", default_value = "127.0.0.1:8080", value_delimiter = ',')]
    pub(crate) addrs: Vec<SocketAddr>,
    /// Publish through only this one of the `--addr`s (0-based) rather than round-robin.
    #[arg(long)]
    pub(crate) publish_via: Option<usize>,
    /// The server's process id, for its memory and CPU from /proc; repeat (or separate with
    /// commas) for several nodes: their RSS and CPU are summed.
    #[arg(long = "pid", value_delimiter = ',')]
    pub(crate) pids: Vec<u32>,
    /// A Redis server (`host:port`) the servers share: its commands are counted (`INFO
    /// commandstats`) over each measurement window and divided by the publishes in it.
    #[arg(long)]
    pub(crate) redis_addr: Option<SocketAddr>,
    /// The Redis server's process id, for its CPU over each window.
    #[arg(long)]
    pub(crate) redis_pid: Option<u32>,
    /// HS256 secret the server verifies tokens with.
    #[arg(long, env = "LOADGEN_JWT_SECRET", hide_env_values = true)]
    pub(crate) jwt_secret: String,
    /// The key of the publish endpoint (`Authorization: Bearer <key>`).
    #[arg(long, env = "LOADGEN_ADMIN_KEY", hide_env_values = true)]
    pub(crate) admin_key: String,
    /// WebSocket clients.
    #[arg(long, default_value_t = 2000)]
    pub(crate) clients: usize,
    /// Connections per user.
    #[arg(long, default_value_t = 2)]
    pub(crate) conns_per_user: usize,
    /// Tenants the users are spread over.
    #[arg(long, default_value_t = 10)]
    pub(crate) tenants: usize,
    /// A phase, `user:RATE` or `tenant:RATE` (publishes per second, 0 = as fast as delivered),
    /// with `:bN` appended for N envelopes per request (a batch, 1 to 100), and `:monitor` to
    /// count Redis round trips with MONITOR (`--redis-addr`); repeat for several, run in order
    /// on the same connections. `:defer` last (rate 0 only): the clients do not read while it
    /// publishes `--window` deliveries' worth, and the server's write rate is measured from its
    /// `/metrics` (the kernel's socket buffers hold what it wrote; see `--rcvbuf`).
    #[arg(long = "phase", default_value = "tenant:0")]
    pub(crate) phases: Vec<PhaseSpec>,
    /// With rate 0: deliveries that may be outstanding (default: 16 publishes' worth, at least
    /// 16,384).
    #[arg(long)]
    pub(crate) window: Option<u64>,
    /// Each client's socket receive buffer in bytes (`SO_RCVBUF`, before it connects; the
    /// kernel caps it at `net.core.rmem_max`). For `:defer` phases, whose deliveries wait in it.
    #[arg(long)]
    pub(crate) rcvbuf: Option<usize>,
    /// Concurrent keep-alive HTTP connections that publish.
    #[arg(long, default_value_t = 16)]
    pub(crate) publishers: usize,
    /// Seconds of publishing before each measurement window.
    #[arg(long, default_value_t = 2.0)]
    pub(crate) warmup: f64,
    /// Seconds of each measurement window.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) duration: f64,
    /// Seconds to wait after the last client is live before reading the server's memory.
    #[arg(long, default_value_t = 2.0)]
    pub(crate) settle: f64,
    /// Bytes of padding in each payload.
    #[arg(long, default_value_t = 64)]
    pub(crate) payload_bytes: usize,
    /// Connection attempts in flight while connecting.
    #[arg(long, default_value_t = 128)]
    pub(crate) connect_concurrency: usize,
    /// Parse the `ts` of one event in N per client (the others are counted, not read), to make
    /// the clients' receive path cheaper; p50/p99 then come from that sample. 1: every event.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) latency_every: u64,
    /// Runtime worker threads (default: the CPUs this process may run on; 1 runs a
    /// current-thread runtime).
    #[arg(long)]
    pub(crate) threads: Option<usize>,
    /// A label for the RESULT lines.
    #[arg(long, default_value = "-")]
    pub(crate) label: String,
    /// Source addresses for the clients (`127.0.0.2`; repeat or separate with commas): client `c`
    /// binds to the `c mod N`-th before connecting. Each address has its own ephemeral ports.
    #[arg(long = "bind", value_delimiter = ',')]
    pub(crate) binds: Vec<IpAddr>,
    /// Number the users from this one (`u{offset}`, …), so that several load generators against
    /// the same servers hold different users.
    #[arg(long, default_value_t = 0)]
    pub(crate) user_offset: usize,
    /// Seconds to wait for every client to be live.
    #[arg(long, default_value_t = 180.0)]
    pub(crate) connect_timeout: f64,
    /// Hold the clients instead of running phases: connect them, print a `LIVE` line, record
    /// every event's latency until this file exists, then print `RESULT` and `HIST` lines and
    /// close (see `hold.rs`).
    #[arg(long)]
    pub(crate) hold: Option<std::path::PathBuf>,
    /// Run the recovery test instead of the phases (see the module docs of `recovery`): clients
    /// on the first `--addr`, publishes through `--publish-via` (default the second) at `--rate`
    /// for `--duration` seconds, `--kill-pid` SIGKILLed `--kill-after` seconds in.
    #[arg(long)]
    pub(crate) recovery: bool,
    /// Recovery test: publishes per second.
    #[arg(long)]
    pub(crate) rate: Option<f64>,
    /// Recovery test: the process to SIGKILL (node A, the first `--addr`).
    #[arg(long)]
    pub(crate) kill_pid: Option<u32>,
    /// Recovery test: the signal, `KILL` (the node dies at once) or `TERM` (it may close its
    /// connections first, which Socket.IO needs to save its sessions).
    #[arg(long, default_value = "KILL")]
    pub(crate) kill_signal: String,
    /// Recovery test: seconds after publishing starts to kill `--kill-pid`.
    #[arg(long, default_value_t = 4.0)]
    pub(crate) kill_after: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn defer_goes_last_and_only_with_rate_zero() {
        let p: PhaseSpec = "tenant:0:b10:defer".parse().unwrap();
        assert!(p.defer && p.batch == 10 && p.rate == 0.0 && !p.monitor);
        let p: PhaseSpec = "tenant:0".parse().unwrap();
        assert!(!p.defer);
        assert!("tenant:100:defer".parse::<PhaseSpec>().is_err());
        // Not a batch size: `:defer` is taken off before `:bN` is read.
        assert!("tenant:0:defer:b10".parse::<PhaseSpec>().is_err());
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
        assert_eq!(default.latency_every, 1);
        assert!(default.pids.is_empty());
    }

    #[test]
    fn latency_every_is_at_least_one() {
        let args = |n: &'static str| {
            ["loadgen", "--server", "switchboard", "--jwt-secret", "s", "--admin-key", "k"]
                .into_iter()
                .chain(["--latency-every", n])
        };
        assert_eq!(Cli::try_parse_from(args("16")).expect("valid").latency_every, 16);
        assert!(Cli::try_parse_from(args("0")).is_err());
    }
}
