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
    /// The socket, registered with the runtime (`None` while parked).
    stream: Option<TcpStream>,
    /// The socket while parked: out of the runtime's epoll set, so that what arrives meanwhile
    /// costs this process nothing until it reads again.
    parked: Option<std::net::TcpStream>,
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
        rcvbuf: Option<u32>,
    ) -> std::io::Result<Ws> {
        let mut stream = match (bind, rcvbuf) {
            (None, None) => TcpStream::connect(addr).await?,
            _ => crate::hold::connect_with(addr, bind, rcvbuf).await?,
        };
        stream.set_nodelay(true)?;
        let auth = bearer.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: bG9hZGdlbi1zd2l0Y2hiZA==\r\nSec-WebSocket-Version: 13\r\n{auth}\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut ws = Ws {
            stream: Some(stream),
            parked: None,
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
        let stream = self.stream.as_mut().ok_or_else(|| invalid("reading a parked socket"))?;
        let n = stream.read(&mut self.buf[self.end..]).await?;
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

    /// Writes every queued frame (none while parked: they wait for [`Ws::unpark`]).
    pub(crate) async fn flush(&mut self) -> std::io::Result<()> {
        if let Some(stream) = self.stream.as_mut()
            && !self.out.is_empty()
        {
            stream.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }

    /// Takes the socket out of the runtime's epoll set (a `:defer` burst): the kernel keeps
    /// taking what arrives, and no readiness event reaches this process.
    pub(crate) fn park(&mut self) -> std::io::Result<()> {
        if let Some(stream) = self.stream.take() {
            self.parked = Some(stream.into_std()?);
        }
        Ok(())
    }

    /// Registers a parked socket again.
    pub(crate) fn unpark(&mut self) -> std::io::Result<()> {
        if let Some(stream) = self.parked.take() {
            self.stream = Some(TcpStream::from_std(stream)?);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A peer that answers the upgrade, then sends one text frame when told to.
    async fn upgraded() -> (Ws, tokio::net::TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let peer = async {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                s.read_exact(&mut byte).await.unwrap();
                head.push(byte[0]);
            }
            s.write_all(b"HTTP/1.1 101 Switching Protocols\r\n\r\n").await.unwrap();
            s
        };
        let (ws, peer) = tokio::join!(Ws::open(addr, None, "/ws", None, 1, Some(65_536)), peer);
        (ws.unwrap(), peer)
    }

    #[tokio::test]
    async fn a_parked_socket_keeps_what_arrives_and_what_is_queued_until_unparked() {
        let (mut ws, mut peer) = upgraded().await;
        ws.park().unwrap();
        assert!(ws.read_more().await.is_err(), "a parked socket is not read");
        peer.write_all(&[0x81, 2, b'h', b'i']).await.unwrap();
        ws.queue(0x1, b"yo");
        ws.flush().await.unwrap();
        // Nothing left while parked: the peer has nothing to read.
        let mut buf = [0u8; 16];
        let early = tokio::time::timeout(Duration::from_millis(50), peer.read(&mut buf)).await;
        assert!(early.is_err(), "a parked socket wrote {early:?}");

        ws.unpark().unwrap();
        assert_eq!(ws.read_more().await.unwrap(), 4);
        let (fin, opcode, range) = ws.next_frame().unwrap().expect("a whole frame");
        assert!(fin);
        assert_eq!(opcode, 0x1);
        assert_eq!(&ws.buf[range], b"hi");
        ws.flush().await.unwrap();
        let n = peer.read(&mut buf).await.unwrap();
        // A masked client frame: FIN+text, MASK bit with length 2, 4 mask bytes, 2 bytes.
        assert_eq!((n, buf[0], buf[1]), (8, 0x81, 0x80 | 2));
    }
}
