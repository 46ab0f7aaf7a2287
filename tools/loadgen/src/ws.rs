//! A minimal RFC 6455 client over tokio's `TcpStream`: the HTTP/1.1 upgrade, server frames
//! parsed in place, masked client frames.

use std::net::{IpAddr, SocketAddr};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::bytes::{find, invalid};

/// Where a client is in its handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// switchboard: waiting for `connected`; Socket.IO: waiting for the Engine.IO open packet.
    Opening,
    /// switchboard: waiting for the `pong`; Socket.IO: waiting for the Socket.IO connect answer.
    Joining,
    Live,
    /// We sent a close frame.
    Closing,
}

/// One client's connection: a read buffer parsed in place and a small write buffer.
pub(crate) struct Ws {
    stream: TcpStream,
    /// Bytes read; the unparsed ones are `start..end`.
    pub(crate) buf: Vec<u8>,
    start: usize,
    end: usize,
    /// A fragmented message being reassembled.
    pub(crate) partial: Vec<u8>,
    /// Whether `partial` holds the start of a message.
    pub(crate) partial_open: bool,
    out: Vec<u8>,
    mask_state: u32,
}

impl Ws {
    /// Opens the TCP connection and performs the HTTP/1.1 upgrade.
    pub(crate) async fn open(
        addr: SocketAddr,
        bind: Option<IpAddr>,
        path: &str,
        bearer: Option<&str>,
        seed: u64,
    ) -> std::io::Result<Ws> {
        let mut stream = match bind {
            Some(source) => crate::hold::connect_from(source, addr).await?,
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
    pub(crate) async fn read_more(&mut self) -> std::io::Result<usize> {
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
    pub(crate) fn next_frame(
        &mut self,
    ) -> std::io::Result<Option<(bool, u8, std::ops::Range<usize>)>> {
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
    pub(crate) fn queue(&mut self, opcode: u8, payload: &[u8]) {
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

    /// Writes every queued frame.
    pub(crate) async fn flush(&mut self) -> std::io::Result<()> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }
}
