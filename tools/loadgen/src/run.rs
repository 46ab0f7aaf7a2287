//! The phase run: connect once, then each `--phase` (warm-up, window, drain) and its report.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use crate::bytes::invalid;
use crate::cli::{Cli, PhaseSpec};
use crate::connect::{close_clients, connect_clients};
use crate::ctx::{Ctx, Layout};
use crate::hist::Hist;
use crate::procfs::{clock_ticks_per_sec, proc_cpu_ticks, sum_cpu, sum_rss};
use crate::publish::{HttpConn, Plan, PublishStats, publisher};
use crate::redis::{Monitored, RedisCount, redis_count, redis_monitor, redis_snapshot};

/// Connects the clients, runs every `--phase` on them in turn, prints each one's summary and
/// `RESULT` line, and closes them.
pub(crate) async fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
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
            } else if spec.defer {
                format!("reads deferred, {} deliveries' worth published at once", r.window)
            } else {
                format!("as fast as delivered, at most {} deliveries outstanding", r.window)
            }
        );
        let secs = r.secs;
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
            "  latency (µs)       p1 {}  p50 {}  p99 {}  p99.9 {}  max {}",
            r.p1, r.p50, r.p99, r.p999, r.max
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
        kv("measured_s", format!("{secs:.3}"));
        kv("p1_us", r.p1.to_string());
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

/// `v` with `digits` decimals, or `-`.
pub(crate) fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    match v {
        Some(v) => format!("{v:.digits$}"),
        None => "-".into(),
    }
}

/// What one phase measured.
pub(crate) struct PhaseResult {
    /// Seconds measured: `--duration`, or a `:defer` burst's length.
    secs: f64,
    fanout: u64,
    window: u64,
    stats: PublishStats,
    measured: u64,
    delivered_per_s: f64,
    /// The first percentile: about what the earliest recipients of a publish wait, so that
    /// p99 − p1 is how long a fan-out takes to reach (nearly) all of its recipients.
    p1: u64,
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

/// Publishes for warm-up plus the window, then waits for what is in flight.
pub(crate) async fn phase(
    cli: &Cli,
    ctx: &Arc<Ctx>,
    layout: &Arc<Layout>,
    spec: PhaseSpec,
) -> PhaseResult {
    if spec.defer {
        return deferred(cli, ctx, layout, spec).await;
    }
    ctx.hist.reset();
    ctx.in_window.store(0, Relaxed);
    let warmup = Duration::from_secs_f64(cli.warmup);
    let duration = Duration::from_secs_f64(cli.duration);
    let start = Instant::now();
    let from = start + warmup;
    let to = from + duration;
    let us = |t: Instant| ctx.us_at(t);
    ctx.window_from.store(us(from), Relaxed);
    ctx.window_to.store(us(to), Relaxed);
    let fanout = layout.max_fanout(spec.target);
    let window = cli.window.unwrap_or((16 * fanout).max(16_384)).max(fanout);
    let publishers = spawn_publishers(cli, ctx, layout, spec, window, false, [start, from, to]);

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

    let stats = join_publishers(publishers).await;
    // Let what is in flight arrive.
    let missing = drain(ctx, Duration::from_secs(20)).await;

    let counts = ctx.hist.counts();
    let measured = ctx.in_window.load(Relaxed);
    let secs = duration.as_secs_f64();
    let delivered_per_s = measured as f64 / secs;
    let cpu_pct = |a, b| cpu_pct(a, b, secs);
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
        secs,
        fanout,
        window,
        stats,
        measured,
        delivered_per_s,
        p1: Hist::percentile(&counts, 0.01),
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

/// Starts `--publishers` publishers of one phase; `times`: publishing starts, the window
/// opens, the window closes.
fn spawn_publishers(
    cli: &Cli,
    ctx: &Arc<Ctx>,
    layout: &Arc<Layout>,
    spec: PhaseSpec,
    window: u64,
    burst: bool,
    [start, from, to]: [Instant; 3],
) -> Vec<tokio::task::JoinHandle<PublishStats>> {
    let plan = Arc::new(Plan {
        spec,
        layout: layout.clone(),
        next: AtomicU64::new(0),
        publishers: cli.publishers,
        window,
        burst,
        pad: "x".repeat(cli.payload_bytes),
        admin_key: cli.admin_key.clone(),
        publish_via: cli.publish_via,
        batch: spec.batch,
        user_offset: cli.user_offset,
        start,
        from,
        to,
    });
    (0..cli.publishers).map(|i| tokio::spawn(publisher(ctx.clone(), plan.clone(), i))).collect()
}

/// Waits for every publish's spawned publisher and sums what they did.
async fn join_publishers(publishers: Vec<tokio::task::JoinHandle<PublishStats>>) -> PublishStats {
    let mut stats = PublishStats::default();
    for p in publishers {
        if let Ok(s) = p.await {
            stats.sent += s.sent;
            stats.in_window += s.in_window;
            stats.errors += s.errors;
            stats.mismatched += s.mismatched;
        }
    }
    stats
}

/// Waits (at most `timeout`) for every delivery expected so far and returns how many did not
/// come. Those are counted as received, so that the next phase's window starts even.
async fn drain(ctx: &Ctx, timeout: Duration) -> u64 {
    let deadline = Instant::now() + timeout;
    while ctx.received.load(Relaxed) < ctx.expected.load(Relaxed) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let missing = ctx.expected.load(Relaxed).saturating_sub(ctx.received.load(Relaxed));
    ctx.received.fetch_add(missing, Relaxed);
    missing
}

/// CPU ticks `a` then `b` over `secs`, in % of one core.
fn cpu_pct(a: Option<u64>, b: Option<u64>, secs: f64) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => {
            Some(b.saturating_sub(a) as f64 / clock_ticks_per_sec() / secs * 100.0)
        }
        _ => None,
    }
}

/// The sums over every node of the `/metrics` counters a `:defer` phase reads.
#[derive(Clone, Copy, Debug, Default)]
struct Written {
    /// Frames handed to connections (`switchboard_deliveries_total`).
    deliveries: u64,
    /// Their bytes (`switchboard_delivered_bytes_total`).
    handed: u64,
    /// Bytes the transport confirmed written (`switchboard_written_bytes_total`).
    written: u64,
}

/// Reads [`Written`] from every node's `/metrics`.
async fn scrape(
    conns: &mut [Option<HttpConn>],
    addrs: &[SocketAddr],
    key: &str,
) -> std::io::Result<Written> {
    let mut sum = Written::default();
    for (conn, addr) in conns.iter_mut().zip(addrs) {
        if conn.is_none() {
            *conn = Some(HttpConn::connect(*addr).await?);
        }
        let c = conn.as_mut().expect("connected above");
        let (status, body) = match c.get(addr, "/metrics", key).await {
            Ok(answer) => answer,
            Err(e) => {
                *conn = None;
                return Err(e);
            }
        };
        if status != 200 {
            return Err(invalid(format!("/metrics answered {status}")));
        }
        let value = |name: &str| -> std::io::Result<u64> {
            let text = std::str::from_utf8(&body).map_err(invalid)?;
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse::<f64>().ok())
                .map(|v| v as u64)
                .ok_or_else(|| invalid(format!("/metrics has no {name}")))
        };
        sum.deliveries += value("switchboard_deliveries_total")?;
        sum.handed += value("switchboard_delivered_bytes_total")?;
        sum.written += value("switchboard_written_bytes_total")?;
    }
    Ok(sum)
}

/// A `:defer` phase: the server's delivery rate with the clients' receive path out of the
/// window (issue 16 item 4, on a machine where the load generator shares the server's cores).
///
/// The clients stop reading; the publishers send `--window` deliveries' worth as fast as the
/// server answers and stop; the window runs from the first publish until the server's
/// `/metrics` say that every frame it was handed was written (`written_bytes` caught up with
/// `delivered_bytes`, polled every 5 ms once the publishes are answered). The kernel's socket
/// buffers (`--rcvbuf`) hold those frames meanwhile. Then the clients read again, and every
/// delivery must arrive (`missing` counts those that did not). The server's CPU over the window
/// is its cost for writing them, including the loopback receive work the kernel does in the
/// writer's context; the load generator's own reads happen after the window.
async fn deferred(cli: &Cli, ctx: &Arc<Ctx>, layout: &Arc<Layout>, spec: PhaseSpec) -> PhaseResult {
    ctx.hist.reset();
    ctx.in_window.store(0, Relaxed);
    // No latency is recorded: the events are read after the window, on purpose.
    ctx.window_from.store(u64::MAX, Relaxed);
    ctx.window_to.store(u64::MAX, Relaxed);
    let fanout = layout.max_fanout(spec.target);
    let total = cli.window.unwrap_or(200 * cli.clients as u64).max(fanout);
    let mut conns: Vec<Option<HttpConn>> = cli.addrs.iter().map(|_| None).collect();
    let fail = |ctx: &Ctx, why: String| {
        eprintln!("loadgen: {why}");
        ctx.fail(why);
    };
    let before = match scrape(&mut conns, &cli.addrs, &cli.admin_key).await {
        Ok(w) => w,
        Err(e) => {
            fail(ctx, format!(":defer needs the server's /metrics: {e}"));
            Written::default()
        }
    };
    ctx.reading.send_replace(false);
    // The clients' reads in progress are dropped when they see the pause.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let received_before = ctx.received.load(Relaxed);
    let start = Instant::now();
    let limit = start + Duration::from_secs_f64(cli.duration.max(1.0) + 30.0);
    let cpu_from = (sum_cpu(&cli.pids), proc_cpu_ticks(std::process::id()));
    let publishers = spawn_publishers(cli, ctx, layout, spec, total, true, [start, start, limit]);
    let stats = join_publishers(publishers).await;
    let published = ctx.expected.load(Relaxed).saturating_sub(received_before);
    let mut last = before;
    let mut done = false;
    while Instant::now() < limit {
        match scrape(&mut conns, &cli.addrs, &cli.admin_key).await {
            Ok(w) => {
                last = w;
                let handed = w.deliveries - before.deliveries;
                if handed >= published && w.written - before.written >= w.handed - before.handed {
                    done = true;
                    break;
                }
            }
            Err(e) => fail(ctx, format!("reading /metrics: {e}")),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let end = Instant::now();
    let cpu_to = (sum_cpu(&cli.pids), proc_cpu_ticks(std::process::id()));
    if !done {
        fail(
            ctx,
            format!(
                ":defer: the server had not written every frame after {:.0} s (socket buffers too small? see --rcvbuf)",
                (end - start).as_secs_f64()
            ),
        );
    }
    ctx.reading.send_replace(true);
    let missing = drain(ctx, Duration::from_secs(30)).await;

    let secs = (end - start).as_secs_f64();
    let measured = last.deliveries - before.deliveries;
    let delivered_per_s = measured as f64 / secs;
    let cpu_pct = |a, b| cpu_pct(a, b, secs);
    let server_cpu = cpu_pct(cpu_from.0, cpu_to.0);
    PhaseResult {
        secs,
        fanout,
        window: total,
        stats,
        measured,
        delivered_per_s,
        p1: 0,
        p50: 0,
        p99: 0,
        p999: 0,
        max: 0,
        server_cpu,
        loadgen_cpu: cpu_pct(cpu_from.1, cpu_to.1),
        per_cpu_s: server_cpu.filter(|c| *c > 0.0).map(|c| delivered_per_s / (c / 100.0)),
        missing,
        redis: None,
        redis_cpu: None,
        monitor: None,
    }
}
