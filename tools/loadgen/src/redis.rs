//! Counting what Redis does over a window: `INFO commandstats` before and after, or MONITOR.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::bytes::{find, invalid};
use crate::run::fmt_opt;

/// What Redis did over a window.
pub(crate) struct RedisCount {
    /// Commands over the window.
    pub(crate) commands: u64,
    /// Commands per publish in the window.
    pub(crate) per_publish: Option<f64>,
    /// The commands that made most of it, per publish (`evalsha 1.00, publish 1.00`).
    pub(crate) top: String,
}

/// Calls per command (`INFO commandstats`) of the Redis server at `addr`; `None` without one
/// or when it does not answer (reported as `-`, the run goes on).
pub(crate) async fn redis_snapshot(addr: Option<SocketAddr>) -> Option<Vec<(String, u64)>> {
    match redis_info(addr?, "commandstats").await {
        Ok(text) => Some(parse_commandstats(&text)),
        Err(e) => {
            eprintln!("loadgen: INFO from redis failed: {e}");
            None
        }
    }
}

/// `cmdstat_evalsha:calls=12,usec=…` lines as (`evalsha`, 12).
pub(crate) fn parse_commandstats(text: &str) -> Vec<(String, u64)> {
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
pub(crate) fn redis_count(
    before: &[(String, u64)],
    after: &[(String, u64)],
    publishes: u64,
) -> RedisCount {
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
pub(crate) struct Monitored {
    /// Sent by clients (each a request, so at most one round trip); the load generator's own
    /// `INFO` is left out.
    pub(crate) client: u64,
    /// Run inside a script (`[0 lua]`): no round trip of their own.
    pub(crate) scripted: u64,
    /// The client commands that made most of it, with their counts.
    pub(crate) client_top: String,
    /// Every client command with its count, `name=count` joined by `;` (for RESULT lines).
    pub(crate) client_detail: String,
}

/// Watches Redis with MONITOR from `from` to `to`, counting what it shows.
pub(crate) async fn redis_monitor(
    addr: SocketAddr,
    from: Instant,
    to: Instant,
) -> std::io::Result<Monitored> {
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
pub(crate) struct MonitorCounts {
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
pub(crate) async fn redis_info(addr: SocketAddr, section: &str) -> std::io::Result<String> {
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
pub(crate) fn resp_bulk(buf: &[u8]) -> std::io::Result<Option<String>> {
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
}
