//! The HTTP listener: accepts TCP connections and serves a [`Router`] on each with hyper's HTTP/1
//! server, with three protections `axum::serve` does not give:
//!
//! - **A header-read timeout.** A connection that does not deliver a request's headers within
//!   [`ListenConfig::header_read_timeout`] (a silent or half-sent request, or a kept-alive
//!   connection idle that long between requests) is closed. Slowloris peers hold a socket for
//!   that long at most.
//! - **A cap on connections that have not upgraded.** At most [`ListenConfig::max_pending`] TCP
//!   connections are plain HTTP at once (a WebSocket stops counting once upgraded); a connection
//!   accepted above it is answered `503` and closed at once.
//! - **Graceful file-descriptor exhaustion.** When `accept` fails with `EMFILE`/`ENFILE` the
//!   listener logs once per burst, counts it ([`DriverStats::accept_fd_exhausted`]), backs off
//!   (10 ms, doubling to 1 s) and keeps accepting. [`FdBudget`] derives the caps from
//!   `RLIMIT_NOFILE` so that this is the exception: WebSockets stop at the limit minus a reserve
//!   (the driver refuses upgrades above it with 503), and the reserve holds the pending
//!   connections (which includes `/healthz`, `/publish` and `/metrics`) with room to spare.
//! - **`TCP_NODELAY`** on every accepted socket: the driver writes whole frames and flushes per
//!   batch, so Nagle's algorithm could only delay a frame behind an unacknowledged one.
//!
//! [`DriverStats::accept_fd_exhausted`]: crate::driver::DriverStats::accept_fd_exhausted

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use crate::driver::ListenerCounters;

/// The listener's limits.
#[derive(Clone, Debug)]
pub struct ListenConfig {
    /// How long a connection may take to deliver a request's headers, counted from the moment the
    /// server starts waiting for them (default 10 s).
    pub header_read_timeout: Duration,
    /// TCP connections that may be plain HTTP (not yet, or never, a WebSocket) at once; more are
    /// answered 503 and closed (default 1,024; the binary derives it with [`FdBudget`]).
    pub max_pending: usize,
}

impl Default for ListenConfig {
    fn default() -> Self {
        ListenConfig { header_read_timeout: Duration::from_secs(10), max_pending: 1024 }
    }
}

/// How the process's file descriptors are shared out: WebSockets up to the limit minus a
/// reserve; of the reserve, half for pending (plain HTTP) connections, half for everything else
/// (the listener, the runtime, stdio, sockets being closed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdBudget {
    /// The soft `RLIMIT_NOFILE`, if there is a finite one.
    pub fd_limit: Option<u64>,
    /// Descriptors kept from WebSockets.
    pub reserve: usize,
    /// The WebSocket cap ([`crate::driver::DriverConfig::max_connections`]); `None` without a
    /// finite limit.
    pub max_websockets: Option<usize>,
    /// The pending-connection cap ([`ListenConfig::max_pending`]).
    pub max_pending: usize,
}

impl FdBudget {
    /// The budget for `fd_limit` descriptors. `reserve` defaults to an eighth of the limit, at
    /// least 32 and at most 1,024 (so a limit of N + 1,024 always holds N WebSockets); pending
    /// connections get half the reserve, at most 1,024. With no finite limit: no WebSocket cap,
    /// 1,024 pending.
    #[must_use]
    pub fn new(fd_limit: Option<u64>, reserve: Option<usize>) -> FdBudget {
        let Some(limit) = fd_limit else {
            return FdBudget {
                fd_limit,
                reserve: reserve.unwrap_or(0),
                max_websockets: None,
                max_pending: ListenConfig::default().max_pending,
            };
        };
        let limit_usize = usize::try_from(limit).unwrap_or(usize::MAX);
        let reserve = reserve.unwrap_or((limit_usize / 8).clamp(32, 1024));
        FdBudget {
            fd_limit,
            reserve,
            max_websockets: Some(limit_usize.saturating_sub(reserve).max(1)),
            max_pending: (reserve / 2).clamp(1, ListenConfig::default().max_pending),
        }
    }

    /// The budget for this process's soft `RLIMIT_NOFILE` ([`nofile_limit`]).
    #[must_use]
    pub fn of_process(reserve: Option<usize>) -> FdBudget {
        FdBudget::new(nofile_limit(), reserve)
    }
}

/// The process's soft limit on open file descriptors, or `None` if it is unlimited or cannot be
/// read (or on a platform without `getrlimit`).
#[cfg(unix)]
#[allow(unsafe_code)]
#[must_use]
pub fn nofile_limit() -> Option<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `getrlimit` writes one `rlimit` through a pointer to a live, properly aligned value
    // and reads nothing else.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    if rc != 0 || limit.rlim_cur == libc::RLIM_INFINITY {
        return None;
    }
    #[allow(clippy::useless_conversion)] // `rlim_t` is not `u64` on every unix
    u64::try_from(limit.rlim_cur).ok()
}

/// The process's soft limit on open file descriptors: unknown on this platform.
#[cfg(not(unix))]
#[must_use]
pub fn nofile_limit() -> Option<u64> {
    None
}

/// How many file descriptors the process has open (`/proc/self/fd`), or `None` where that
/// cannot be read (not Linux). Since Linux 6.2 the directory's size is the count, one `stat`;
/// older kernels report 0 there and the entries are counted instead.
#[must_use]
pub fn open_fds() -> Option<u64> {
    const DIR: &str = "/proc/self/fd";
    match std::fs::metadata(DIR) {
        Ok(meta) if meta.len() > 0 => Some(meta.len()),
        Ok(_) => {
            // Listing opens one descriptor of its own, which the listing shows.
            let entries = std::fs::read_dir(DIR).ok()?.count() as u64;
            Some(entries.saturating_sub(1))
        }
        Err(_) => None,
    }
}

/// Serves `router` on `listener` until `stop` resolves, then stops accepting, asks every HTTP
/// connection to finish its request and close, and returns once they have (upgraded WebSockets
/// are not waited for: the driver's shutdown closes them). Counts into `counters`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    cfg: ListenConfig,
    counters: Arc<ListenerCounters>,
    stop: impl Future<Output = ()>,
) {
    let max_pending = cfg.max_pending.clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
    let pending = Arc::new(Semaphore::new(max_pending));
    let (stopping_tx, stopping) = watch::channel(false);
    let mut backoff = Backoff::default();
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            () = &mut stop => break,
            accepted = listener.accept() => accepted,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => {
                backoff.recovered();
                // Frames are written whole and flushed in batches already; Nagle would only
                // hold back a small frame behind an unacknowledged one (up to the peer's delayed
                // ACK, tens of milliseconds). Failure leaves a working socket, just a slower one.
                let _ = tcp.set_nodelay(true);
                tcp
            }
            Err(err) if is_peer_error(&err) => continue,
            Err(err) => {
                let fds = is_fd_exhaustion(&err);
                let counter =
                    if fds { &counters.accept_fd_exhausted } else { &counters.accept_errors };
                counter.fetch_add(1, Ordering::Relaxed);
                backoff.failed(&err, fds).await;
                continue;
            }
        };
        match pending.clone().try_acquire_owned() {
            Ok(permit) => {
                let conn = serve_one(
                    tcp,
                    router.clone(),
                    cfg.header_read_timeout,
                    permit,
                    stopping.clone(),
                    counters.clone(),
                );
                tokio::spawn(conn);
            }
            Err(_) => {
                counters.pending_refused.fetch_add(1, Ordering::Relaxed);
                refuse(tcp);
            }
        }
    }
    let _ = stopping_tx.send(true);
    // Every HTTP connection holds a permit until it ends or upgrades.
    let all = u32::try_from(max_pending).unwrap_or(u32::MAX);
    let _ = pending.acquire_many(all).await;
}

/// Answers a connection over the pending cap without waiting: a 503 if the socket takes it at
/// once, then the close.
fn refuse(tcp: TcpStream) {
    const FULL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
        content-length: 66\r\nretry-after: 1\r\nconnection: close\r\n\r\n\
        {\"error\":\"busy\",\"message\":\"too many connections are being set up\"}";
    let _ = tcp.try_write(FULL);
}

/// One HTTP connection, until it ends, upgrades to a WebSocket, or (after `stopping`) finishes
/// its request in flight.
async fn serve_one(
    tcp: TcpStream,
    router: Router,
    header_read_timeout: Duration,
    permit: OwnedSemaphorePermit,
    mut stopping: watch::Receiver<bool>,
    counters: Arc<ListenerCounters>,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(header_read_timeout);
    // The socket is shared with the hub task, which writes a WebSocket's frames to it directly
    // when it can (`Accepted::write_directly`): every request carries the hub's handle on it.
    let (io, writer) = crate::driver::share(tcp);
    let router = TowerToHyperService::new(router);
    let service = hyper::service::service_fn(move |mut request: hyper::Request<_>| {
        request.extensions_mut().insert(writer.clone());
        hyper::service::Service::call(&router, request)
    });
    let conn = http.serve_connection(TokioIo::new(io), service).with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = stopping.changed() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if result.is_err_and(|err| err.is_timeout()) {
        counters.header_timeouts.fetch_add(1, Ordering::Relaxed);
    }
    // A WebSocket's socket now belongs to its connection task; it no longer counts as pending.
    drop(permit);
}

/// Errors of one incoming connection, not of the listener: try the next one at once.
fn is_peer_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

#[cfg(unix)]
fn is_fd_exhaustion(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

#[cfg(not(unix))]
fn is_fd_exhaustion(_: &io::Error) -> bool {
    false
}

/// The pause after a failed accept, and the one log line per burst of failures.
#[derive(Default)]
struct Backoff {
    failures: u64,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_secs(1);

    async fn failed(&mut self, err: &io::Error, fds: bool) {
        if self.failures == 0 {
            if fds {
                eprintln!(
                    "switchboard: out of file descriptors, new connections wait in the backlog \
                     ({err}); raise `ulimit -n` or lower --max-connections"
                );
            } else {
                eprintln!("switchboard: accept failed: {err}; retrying");
            }
        }
        self.failures += 1;
        let shift = u32::try_from(self.failures - 1).unwrap_or(u32::MAX).min(7);
        tokio::time::sleep((Self::FIRST * (1 << shift)).min(Self::MAX)).await;
    }

    fn recovered(&mut self) {
        if self.failures > 0 {
            eprintln!("switchboard: accepting again after {} failed accepts", self.failures);
            self.failures = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_keeps_a_reserve_and_shares_it() {
        let b = FdBudget::new(Some(256), None);
        assert_eq!(b.reserve, 32);
        assert_eq!(b.max_websockets, Some(224));
        assert_eq!(b.max_pending, 16);

        let b = FdBudget::new(Some(4096), None);
        assert_eq!((b.reserve, b.max_websockets, b.max_pending), (512, Some(3584), 256));

        let b = FdBudget::new(Some(64), None);
        assert_eq!((b.reserve, b.max_websockets, b.max_pending), (32, Some(32), 16));

        let b = FdBudget::new(Some(1 << 20), None);
        assert_eq!(
            (b.reserve, b.max_websockets, b.max_pending),
            (1024, Some((1 << 20) - 1024), 512)
        );

        let b = FdBudget::new(Some(100), Some(10));
        assert_eq!((b.reserve, b.max_websockets, b.max_pending), (10, Some(90), 5));

        // A reserve larger than the limit still leaves one WebSocket, never zero or an underflow.
        let b = FdBudget::new(Some(16), Some(1000));
        assert_eq!(b.max_websockets, Some(1));

        let b = FdBudget::new(None, None);
        assert_eq!((b.max_websockets, b.max_pending), (None, 1024));
    }

    #[test]
    fn this_process_has_a_readable_limit() {
        // Every unix CI machine sets a finite soft limit; `ulimit -n unlimited` is not allowed.
        if cfg!(unix) {
            assert!(nofile_limit().is_some_and(|n| n > 0));
        }
    }

    #[test]
    fn open_descriptors_are_counted_and_follow_what_is_opened() {
        if !cfg!(target_os = "linux") {
            assert_eq!(open_fds(), None);
            return;
        }
        // Other tests' threads open and close files meanwhile: compare with a wide margin.
        let before = open_fds().expect("linux has /proc/self/fd");
        let files: Vec<std::fs::File> =
            (0..64).map(|_| std::fs::File::open("/proc/self/status").unwrap()).collect();
        let during = open_fds().unwrap();
        drop(files);
        assert!(during >= before + 32, "{before} then {during} with 64 more open");
        assert!(nofile_limit().is_none_or(|limit| during <= limit));
    }
}
