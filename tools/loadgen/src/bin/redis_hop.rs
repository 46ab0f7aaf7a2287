//! `redis-hop`: the latency of one bare Redis pub/sub hop, the least that cluster mode adds to a
//! publish (issue 12).
//!
//! A clustered publish reaches another node's client through Redis: the publishing node's
//! request wakes Redis, and Redis's `PUBLISH` wakes the subscribing node, before that node writes
//! to its client. This probe keeps only those two crossings: one thread sends `PUBLISH` with a
//! timestamp at a fixed rate on one connection, another reads the messages on a second connection
//! (`SUBSCRIBE`) and records how long each took. Plain blocking sockets and no runtime, so that
//! what it measures is Redis and the host's scheduling, not a client library.
//!
//! ```text
//! redis-hop --addr 127.0.0.1:6379 --rate 1000 --warmup 2 --duration 10
//! HOP n=10000 p50_us=61 p99_us=402 p999_us=1210 max_us=2841
//! ```

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;

/// One bare Redis pub/sub hop, timed.
#[derive(Parser, Debug)]
#[command(name = "redis-hop")]
struct Args {
    /// The Redis server.
    #[arg(long)]
    addr: SocketAddr,
    /// Publishes per second.
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// Seconds published but not counted, first.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Seconds counted.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Bytes of each message (at least the timestamp's).
    #[arg(long, default_value_t = 64)]
    payload_bytes: usize,
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(&args) {
        eprintln!("redis-hop: {e}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> std::io::Result<()> {
    let channel = format!("redis-hop-{}", std::process::id());
    let mut sub = TcpStream::connect(args.addr)?;
    sub.set_nodelay(true)?;
    sub.write_all(&command(&[b"SUBSCRIBE", channel.as_bytes()]))?;
    let mut sub = BufReader::new(sub);
    // The confirmation: `*3 $9 subscribe $<n> <channel> :1`.
    read_push(&mut sub)?;

    let start = Instant::now();
    let counted_from = Duration::from_secs(args.warmup);
    let end = counted_from + Duration::from_secs(args.duration);
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let done = done.clone();
        std::thread::spawn(move || -> std::io::Result<Vec<u32>> {
            let mut lat = Vec::new();
            while !done.load(Ordering::Relaxed) {
                let payload = read_push(&mut sub)?;
                let now = start.elapsed();
                let Some(sent) = timestamp(&payload) else { continue };
                if sent >= counted_from {
                    let us = now.saturating_sub(sent).as_micros();
                    lat.push(u32::try_from(us).unwrap_or(u32::MAX));
                }
            }
            Ok(lat)
        })
    };

    let mut publisher = TcpStream::connect(args.addr)?;
    publisher.set_nodelay(true)?;
    // The replies (`:1`) are read by a thread of their own so that the publisher never waits.
    let mut replies = publisher.try_clone()?;
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while matches!(replies.read(&mut buf), Ok(n) if n > 0) {}
    });
    let interval = Duration::from_secs(1) / args.rate.max(1);
    let mut next = Duration::ZERO;
    let pad = "x".repeat(args.payload_bytes.saturating_sub(21));
    while next < end {
        if let Some(wait) = next.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
        let sent = start.elapsed();
        let payload = format!("{:020}:{pad}", sent.as_nanos());
        publisher.write_all(&command(&[b"PUBLISH", channel.as_bytes(), payload.as_bytes()]))?;
        next += interval;
    }
    // The last messages are under way: give them a moment, then end the reader with one more.
    std::thread::sleep(Duration::from_millis(200));
    done.store(true, Ordering::Relaxed);
    publisher.write_all(&command(&[b"PUBLISH", channel.as_bytes(), b"end"]))?;
    let mut lat = reader.join().map_err(|_| std::io::Error::other("the reader panicked"))??;
    lat.sort_unstable();
    let q = |p: f64| -> u32 {
        if lat.is_empty() {
            return 0;
        }
        let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
        lat[i]
    };
    println!(
        "HOP n={} p50_us={} p99_us={} p999_us={} max_us={}",
        lat.len(),
        q(0.50),
        q(0.99),
        q(0.999),
        lat.last().copied().unwrap_or(0)
    );
    Ok(())
}

/// A command as a RESP array of bulk strings.
fn command(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", parts.len()).into_bytes();
    for part in parts {
        out.extend_from_slice(format!("${}\r\n", part.len()).as_bytes());
        out.extend_from_slice(part);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Reads one push (an array of bulk strings and integers) and returns its last bulk string.
fn read_push(r: &mut impl BufRead) -> std::io::Result<Vec<u8>> {
    let header = line(r)?;
    let n: usize = header
        .strip_prefix('*')
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not a push: {header:?}")))?;
    let mut last = Vec::new();
    for _ in 0..n {
        let item = line(r)?;
        if let Some(len) = item.strip_prefix('$') {
            let len: usize = len.parse().map_err(|_| std::io::Error::other("bad length"))?;
            let mut bytes = vec![0; len + 2];
            r.read_exact(&mut bytes)?;
            bytes.truncate(len);
            last = bytes;
        }
    }
    Ok(last)
}

fn line(r: &mut impl BufRead) -> std::io::Result<String> {
    let mut s = String::new();
    if r.read_line(&mut s)? == 0 {
        return Err(std::io::Error::other("Redis closed the connection"));
    }
    Ok(s.trim_end().to_owned())
}

/// The send time a message carries (nanoseconds since the start, 20 digits).
fn timestamp(payload: &[u8]) -> Option<Duration> {
    let digits = std::str::from_utf8(payload.get(..20)?).ok()?;
    digits.parse().ok().map(Duration::from_nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_push_is_read_to_its_payload_and_timestamp() {
        let sent = Duration::from_nanos(1_234_567_890);
        let payload = format!("{:020}:xx", sent.as_nanos());
        let push = command(&[b"message", b"ch", payload.as_bytes()]);
        let got = read_push(&mut BufReader::new(&push[..])).unwrap();
        assert_eq!(got, payload.as_bytes());
        assert_eq!(timestamp(&got), Some(sent));
        assert_eq!(timestamp(b"end"), None);
        let confirm = b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n";
        assert_eq!(read_push(&mut BufReader::new(&confirm[..])).unwrap(), b"ch");
        assert!(read_push(&mut BufReader::new(&b"-ERR no\r\n"[..])).is_err());
    }
}
