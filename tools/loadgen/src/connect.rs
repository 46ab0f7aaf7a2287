//! Connecting the clients (shared by the phase run and `--hold`): one token per user, every
//! client spawned with at most `--connect-concurrency` handshakes in flight, and a wait until
//! each is live; closing them all at the end.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, watch};

use switchboard_server::auth::{Claims, Keys};

use crate::cli::Cli;
use crate::client::client;
use crate::ctx::{Ctx, Layout};
use crate::procfs::sum_rss;

/// The clients, connected and live.
pub(crate) struct Connected {
    pub(crate) ctx: Arc<Ctx>,
    pub(crate) layout: Arc<Layout>,
    /// Tells every client to close.
    pub(crate) stop: watch::Sender<bool>,
    pub(crate) users: usize,
    pub(crate) tenants: usize,
    /// From the first connect until the last client was live.
    pub(crate) connect_secs: f64,
    /// The servers' summed RSS before the first connect, in KiB.
    pub(crate) rss_before: Option<u64>,
}

/// Connects `--clients` clients (users numbered from `--user-offset`, bound to the `--bind`
/// addresses) and waits until every one is live.
pub(crate) async fn connect_clients(cli: &Cli) -> Result<Connected, Box<dyn std::error::Error>> {
    let n = cli.clients;
    let users = n.div_ceil(cli.conns_per_user);
    let tenants = cli.tenants.min(users);
    let user_of = |client: usize| client / cli.conns_per_user;
    let mut layout = Layout { user_conns: vec![0; users], tenant_conns: vec![0; tenants] };
    for c in 0..n {
        layout.user_conns[user_of(c)] += 1;
        layout.tenant_conns[user_of(c) % tenants] += 1;
    }
    let layout = Arc::new(layout);

    // One token per user, the same claims for both servers.
    let keys = Keys::new(cli.jwt_secret.as_bytes())?;
    let tokens: Vec<Arc<str>> = (0..users)
        .map(|u| {
            let claims = Claims {
                tier: Some("enterprise".into()),
                ..Claims::new(
                    &format!("t{}", u % tenants),
                    &format!("u{}", u + cli.user_offset),
                    Duration::from_secs(3600),
                )
            };
            Arc::from(keys.sign(&claims))
        })
        .collect();

    let t0 = Instant::now();
    let t0_unix_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    let mut ctx = Ctx::new(cli.server, cli.addrs.clone(), cli.binds.clone(), t0, t0_unix_us);
    ctx.latency_every = cli.latency_every;
    ctx.rcvbuf = cli.rcvbuf.map(|b| b.min(u32::MAX as usize) as u32);
    let ctx = Arc::new(ctx);

    let rss_before = sum_rss(&cli.pids);

    // Connect every client, at most `connect_concurrency` handshakes at a time.
    let connect_started = Instant::now();
    let gate = Arc::new(Semaphore::new(cli.connect_concurrency.max(1)));
    let (stop_tx, stop_rx) = watch::channel(false);
    for c in 0..n {
        let permit = gate.clone().acquire_owned().await?;
        let ctx = ctx.clone();
        let token = tokens[user_of(c)].clone();
        let stop = stop_rx.clone();
        tokio::spawn(async move {
            let mut permit = Some(permit);
            if let Err(e) = client(&ctx, c as u64, &token, &mut permit, stop).await {
                ctx.failed.fetch_add(1, Relaxed);
                ctx.fail(format!("client {c}: {e}"));
            }
            ctx.finished.fetch_add(1, Relaxed);
        });
    }
    let timeout = Duration::try_from_secs_f64(cli.connect_timeout).map_err(|e| e.to_string())?;
    let connect_deadline = Instant::now() + timeout;
    while ctx.ready.load(Relaxed) + ctx.failed.load(Relaxed) < n {
        if Instant::now() > connect_deadline {
            return Err(format!(
                "only {} of {n} clients live after {} s ({} failed)",
                ctx.ready.load(Relaxed),
                cli.connect_timeout,
                ctx.failed.load(Relaxed)
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connect_secs = connect_started.elapsed().as_secs_f64();
    let failed = ctx.failed.load(Relaxed);
    if failed > 0 {
        let why = ctx.first_error.lock().unwrap().clone().unwrap_or_default();
        return Err(format!("{failed} of {n} clients failed to connect; first: {why}").into());
    }
    Ok(Connected { ctx, layout, stop: stop_tx, users, tenants, connect_secs, rss_before })
}

/// Tells every client to close and waits for them (at most 15 s).
pub(crate) async fn close_clients(connected: Connected, n: usize) {
    let Connected { ctx, stop, .. } = connected;
    let _ = stop.send(true);
    let close_deadline = Instant::now() + Duration::from_secs(15);
    while ctx.finished.load(Relaxed) < n && Instant::now() < close_deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if let Some(why) = ctx.first_error.lock().unwrap().as_ref() {
        eprintln!("loadgen: first error: {why}");
    }
}
