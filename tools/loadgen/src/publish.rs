//! Publishing: keep-alive HTTP connections posting to `/publish`, open or closed loop.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::bytes::{find, invalid, parse_u64};
use crate::cli::{PhaseSpec, TargetKind};
use crate::ctx::{Ctx, Layout};

#[derive(Default)]
pub(crate) struct PublishStats {
    /// Envelopes sent over the whole phase.
    pub(crate) sent: u64,
    /// Envelopes sent inside the measurement window.
    pub(crate) in_window: u64,
    /// Envelopes refused or lost to a failed request.
    pub(crate) errors: u64,
    /// Answers whose `delivered` differs from the recipients this load generator holds.
    pub(crate) mismatched: u64,
}

/// What every publisher of one phase shares.
pub(crate) struct Plan {
    /// The phase.
    pub(crate) spec: PhaseSpec,
    /// Who is where, for each publish's expected recipients.
    pub(crate) layout: Arc<Layout>,
    /// The next publish's number (its target is chosen round-robin by it).
    pub(crate) next: AtomicU64,
    /// How many publishers share the rate.
    pub(crate) publishers: usize,
    /// Closed loop: deliveries that may be outstanding.
    pub(crate) window: u64,
    /// A `:defer` burst: publish until `window` is full, then stop (nothing is read meanwhile,
    /// so the window would never open again).
    pub(crate) burst: bool,
    /// The payload's padding.
    pub(crate) pad: String,
    /// The publish endpoint's key.
    pub(crate) admin_key: String,
    /// Every publisher posts to this node, if set.
    pub(crate) publish_via: Option<usize>,
    /// Envelopes per request: more than one posts a JSON array (batch publish).
    pub(crate) batch: u64,
    /// `--user-offset`: user `u` is named `u{u + user_offset}`.
    pub(crate) user_offset: usize,
    /// Publishing starts (warm-up).
    pub(crate) start: Instant,
    /// The measurement window opens.
    pub(crate) from: Instant,
    /// The window closes and publishing stops.
    pub(crate) to: Instant,
}

/// One keep-alive HTTP connection publishing until the window ends.
pub(crate) async fn publisher(ctx: Arc<Ctx>, plan: Arc<Plan>, index: usize) -> PublishStats {
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
                if plan.burst || Instant::now() >= plan.to {
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
pub(crate) fn count(body: &[u8], needle: &[u8]) -> u64 {
    body.windows(needle.len()).filter(|w| *w == needle).count() as u64
}

/// The sum of the numbers after each `key` in `body`, or `None` if the key is absent (a
/// clustered server answers positions, not counts).
pub(crate) fn sum_of(body: &[u8], key: &[u8]) -> Option<u64> {
    let mut rest = body;
    let mut sum = None;
    while let Some(at) = find(rest, key) {
        rest = &rest[at + key.len()..];
        *sum.get_or_insert(0) += parse_u64(rest)?;
    }
    sum
}

/// The `delivered` count of a publish answer (both servers give one).
pub(crate) fn delivered_of(body: &[u8]) -> Option<u64> {
    let at = find(body, b"\"delivered\":")? + b"\"delivered\":".len();
    parse_u64(&body[at..])
}

/// A minimal HTTP/1.1 keep-alive client.
pub(crate) struct HttpConn {
    stream: TcpStream,
    buf: Vec<u8>,
    request: Vec<u8>,
}

impl HttpConn {
    /// Opens a keep-alive connection to `addr` (`TCP_NODELAY`).
    pub(crate) async fn connect(addr: SocketAddr) -> std::io::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(HttpConn { stream, buf: Vec::with_capacity(4096), request: Vec::with_capacity(1024) })
    }

    /// Posts a JSON body; returns the status and the response body.
    pub(crate) async fn post(
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
        self.response().await
    }

    /// `GET path` with a bearer key: the status and the body.
    pub(crate) async fn get(
        &mut self,
        addr: &SocketAddr,
        path: &str,
        bearer: &str,
    ) -> std::io::Result<(u16, Vec<u8>)> {
        self.request.clear();
        let _ = std::io::Write::write_fmt(
            &mut self.request,
            format_args!(
                "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {bearer}\r\n\r\n"
            ),
        );
        self.stream.write_all(&self.request).await?;
        self.response().await
    }

    /// The answer to the request just written: its status and body.
    async fn response(&mut self) -> std::io::Result<(u16, Vec<u8>)> {
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
