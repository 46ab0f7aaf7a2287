//! Holding many idle connections (`--hold FILE`), for `scripts/bench-scale.sh`.
//!
//! The clients connect as in a phase run (`--bind`, `--user-offset`, `--addr` round-robin), then
//! stay open, answering the server's heartbeats, until `FILE` exists. The process prints:
//!
//! - `LIVE clients=N connect_s=S connect_per_s=R` once every client is live;
//! - at the end, `RESULT mode=hold …` with what was received meanwhile (events, their p50/p99
//!   latency on the shared `ts` clock, connections dropped) and `HIST v:c,…`, the latency
//!   histogram's non-empty buckets (lowest value of the bucket in µs : events), so that a script
//!   can merge the histograms of several processes into one distribution.
//!
//! Holding publishes nothing: another load generator (a normal phase run) publishes, and its
//! `ts` is read here on the same clock (microseconds since the Unix epoch).

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream};

use crate::cli::Cli;
use crate::connect::{close_clients, connect_clients};
use crate::hist::Hist;

/// Connects to `addr`, from `source` if given (port chosen by the kernel at connect time), with a receive buffer of `rcvbuf` bytes if given
/// (set before connecting, so that the window the handshake offers can use it).
pub(crate) async fn connect_with(
    addr: SocketAddr,
    source: Option<IpAddr>,
    rcvbuf: Option<u32>,
) -> std::io::Result<TcpStream> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let Some(bytes) = rcvbuf {
        socket.set_recv_buffer_size(bytes)?;
    }
    let Some(source) = source else {
        return socket.connect(addr).await;
    };
    if source.is_ipv4() {
        // IP_BIND_ADDRESS_NO_PORT: the port is picked at connect, per destination, so that one
        // source address is not limited to one ephemeral port range across every node.
        let one: libc::c_int = 1;
        // SAFETY: the descriptor is the socket's own; the option value is a c_int we pass by
        // pointer with its size.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&raw const one).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(addr).await
}

/// `--hold`: connect, print `LIVE`, record events until the file exists, report, close.
pub(crate) async fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    let until = cli.hold.clone().ok_or("--hold needs a file")?;
    let n = cli.clients;
    let connected = connect_clients(&cli).await?;
    let ctx = connected.ctx.clone();
    // Every event from now on counts.
    ctx.hist.reset();
    ctx.in_window.store(0, Relaxed);
    ctx.window_from.store(0, Relaxed);
    ctx.window_to.store(u64::MAX, Relaxed);
    let secs = connected.connect_secs;
    println!("LIVE clients={n} connect_s={secs:.2} connect_per_s={:.0}", n as f64 / secs);
    while !until.exists() {
        if ctx.dropped.load(Relaxed) + ctx.failed.load(Relaxed) >= n {
            return Err("every connection ended while holding".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let counts = ctx.hist.counts();
    let mut line = String::from("RESULT mode=hold");
    let _ = write!(
        line,
        " label={} clients={n} connect_s={secs:.2} received={} p50_us={} p99_us={} max_us={} dropped={} unreadable={}",
        cli.label,
        ctx.in_window.load(Relaxed),
        Hist::percentile(&counts, 0.50),
        Hist::percentile(&counts, 0.99),
        Hist::percentile(&counts, 1.0),
        ctx.dropped.load(Relaxed),
        ctx.unreadable.load(Relaxed),
    );
    println!("{line}");
    println!("{}", hist_line(&counts));
    close_clients(connected, n).await;
    Ok(())
}

/// `HIST v:c,…` over the non-empty buckets (`HIST -` when there are none).
fn hist_line(counts: &[u64]) -> String {
    let buckets: Vec<String> = counts
        .iter()
        .enumerate()
        .filter(|(_, c)| **c > 0)
        .map(|(i, c)| format!("{}:{c}", Hist::value(i)))
        .collect();
    if buckets.is_empty() { "HIST -".into() } else { format!("HIST {}", buckets.join(",")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hist_line_lists_non_empty_buckets_by_their_lowest_value() {
        let h = Hist::new();
        assert_eq!(hist_line(&h.counts()), "HIST -");
        h.record(5);
        h.record(5);
        h.record(1000);
        let line = hist_line(&h.counts());
        let low = Hist::value(Hist::index(1000));
        assert!(low <= 1000 && low > 980, "{low}");
        assert_eq!(line, format!("HIST 5:2,{low}:1"));
    }

    #[test]
    fn ts_is_the_unix_clock_advanced_by_the_monotonic_one() {
        use std::time::Instant;
        let t0 = Instant::now();
        let ctx = crate::ctx::Ctx::new(
            crate::cli::ServerKind::Switchboard,
            Vec::new(),
            Vec::new(),
            t0,
            1_700_000_000_000_000,
        );
        assert_eq!(ctx.us_at(t0), 1_700_000_000_000_000);
        assert_eq!(ctx.us_at(t0 + Duration::from_millis(5)), 1_700_000_000_005_000);
        // An instant before t0 (a clock read racing the context's creation) is t0, not a wrap.
        assert_eq!(
            ctx.us_at(t0.checked_sub(Duration::from_secs(1)).unwrap_or(t0)),
            1_700_000_000_000_000
        );
        assert!(ctx.now_us() >= 1_700_000_000_000_000);
    }

    #[tokio::test]
    async fn connect_with_binds_the_source_address() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let source: IpAddr = "127.0.0.3".parse().unwrap();
        let (stream, accepted) =
            tokio::join!(connect_with(addr, Some(source), None), listener.accept());
        assert_eq!(stream.unwrap().local_addr().unwrap().ip(), source);
        assert_eq!(accepted.unwrap().1.ip(), source);
    }
}
