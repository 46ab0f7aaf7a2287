//! A connection's TCP socket, shared by the tasks that write to it: the connection's own task
//! (through hyper, then tungstenite, which also read it) and the hub task, or a writer task of a
//! large fan-out, which write a frame straight to it when nothing else is being written
//! ([`super::outbox`] decides when, under the outbox's lock).
//!
//! A direct write saves, per frame, the wake of the connection's task, its poll, the outbox's
//! hand-over and tungstenite's copy into its write buffer: the hub task encodes the frame's
//! two-to-ten-byte header and hands header and frame to one non-blocking write. Only what the
//! socket does not take at once goes through the connection's task.
//!
//! The socket stays open while either holds it: its descriptor cannot be closed and reused by
//! another connection while the hub task may still write to it.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The I/O that hyper serves an HTTP connection on: the socket, shared with a [`SocketWriter`].
#[derive(Debug)]
pub struct SharedSocket(Arc<TcpStream>);

/// The hub task's handle on a connection's socket: put into every request's extensions by the
/// listener ([`crate::listen::serve`]), handed to the driver with [`super::Accepted::write_directly`].
#[derive(Clone, Debug)]
pub struct SocketWriter(Arc<TcpStream>);

/// Shares `tcp` between the HTTP connection (and the WebSocket it may become) and the hub task.
pub fn share(tcp: TcpStream) -> (SharedSocket, SocketWriter) {
    let tcp = Arc::new(tcp);
    (SharedSocket(tcp.clone()), SocketWriter(tcp))
}

impl SocketWriter {
    /// Writes as much of `bufs` as the socket takes now, without waiting.
    ///
    /// Up to [`SocketWriter::GATHER`] bytes in all (a frame or a few small ones with their
    /// headers, the common case) are copied into one buffer and sent with `send`: on Linux a
    /// `writev` of a socket goes through the file layer first, which cost about 6% of a
    /// broadcast's server CPU in samples (`vfs_writev`, `fdget_pos`), far more than the copy.
    pub(super) fn try_write(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if total > Self::GATHER {
            return self.0.try_write_vectored(bufs);
        }
        let mut gathered = [0u8; Self::GATHER];
        let mut at = 0;
        for buf in bufs {
            gathered[at..at + buf.len()].copy_from_slice(buf);
            at += buf.len();
        }
        send(&self.0, &gathered[..at])
    }

    /// The most bytes [`SocketWriter::try_write`] gathers into one buffer.
    const GATHER: usize = 512;

    /// Writes `buf` once the socket is writable (for the rest of a frame the hub task began).
    pub(super) fn poll_write(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        poll_write(&self.0, cx, buf)
    }
}

/// The header of an unmasked, final WebSocket text frame (what a server sends) carrying `len`
/// bytes, written into `out`: returns how many bytes of `out` it took (2, 4 or 10).
pub(super) fn text_header(len: usize, out: &mut [u8; 10]) -> usize {
    out[0] = 0x81;
    if len < 126 {
        out[1] = len as u8;
        2
    } else if let Ok(len) = u16::try_from(len) {
        out[1] = 126;
        out[2..4].copy_from_slice(&len.to_be_bytes());
        4
    } else {
        out[1] = 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    }
}

/// Sends `buf` now if the socket takes it, without waiting: one `send(2)`, not through tokio's
/// readiness check, whose load of the socket's readiness word (a cold cache line per connection
/// in a fan-out) was about 3% of the server's CPU under single-user publishes (perf). A socket
/// that is full answers `WouldBlock` from the kernel instead, and the writer then waits on
/// tokio's readiness ([`poll_write`]).
#[cfg(any(target_os = "linux", target_os = "android"))]
#[allow(unsafe_code)] // one FFI call on a descriptor the caller keeps open
fn send(tcp: &TcpStream, buf: &[u8]) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    let fd = tcp.as_raw_fd();
    loop {
        // SAFETY: `fd` is the descriptor of `tcp`, which is borrowed and so open, and `buf` is
        // valid for `buf.len()` bytes of reading. `MSG_NOSIGNAL`: a reset peer is an `EPIPE`
        // error, not a signal.
        let sent = unsafe {
            libc::send(fd, buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT)
        };
        if let Ok(sent) = usize::try_from(sent) {
            return Ok(sent);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn send(tcp: &TcpStream, buf: &[u8]) -> io::Result<usize> {
    tcp.try_write(buf)
}

/// Writes `buf` once the socket takes some of it: first straight away ([`send`]), and only if
/// the socket is full through tokio's readiness, which registers the task to be woken.
fn poll_write(tcp: &TcpStream, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
    match send(tcp, buf) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        result => return Poll::Ready(result),
    }
    loop {
        ready!(tcp.poll_write_ready(cx))?;
        match tcp.try_write(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            result => return Poll::Ready(result),
        }
    }
}

impl AsyncRead for SharedSocket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            ready!(self.0.poll_read_ready(cx))?;
            // Read into the buffer's uninitialized tail as tokio's own `TcpStream` does: hyper
            // hands over its whole spare capacity (8 KiB and up) on every read, and zeroing it
            // first (`initialize_unfilled`) was 2-3 % of a node's CPU under single-user
            // publishes (perf, docs/benchmarks/single-user.md).
            #[allow(unsafe_code)]
            // SAFETY: `try_read_buf` only writes into the slice (a `BufMut` over uninitialized
            // bytes) and returns how many bytes it wrote from its start; exactly those are then
            // marked initialized.
            let read = self.0.try_read_buf(&mut unsafe { buf.unfilled_mut() });
            match read {
                Ok(n) => {
                    #[allow(unsafe_code)]
                    // SAFETY: the first `n` bytes of the unfilled part were just written.
                    unsafe {
                        buf.assume_init(n)
                    };
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for SharedSocket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        poll_write(&self.0, cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write_vectored(bufs) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                result => return Poll::Ready(result),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Nothing is buffered here.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(shutdown_write(&self.0))
    }
}

/// Ends the socket's sending side (the peer reads EOF); the descriptor stays open until the last
/// holder drops it.
#[cfg(unix)]
#[allow(unsafe_code)] // one FFI call on a descriptor this function keeps open
fn shutdown_write(tcp: &TcpStream) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor is open: `tcp` is borrowed from an `Arc` that keeps it so.
    let rc = unsafe { libc::shutdown(tcp.as_raw_fd(), libc::SHUT_WR) };
    match rc {
        0 => Ok(()),
        _ => match io::Error::last_os_error() {
            // Already reset by the peer: nothing left to end.
            e if e.raw_os_error() == Some(libc::ENOTCONN) => Ok(()),
            e => Err(e),
        },
    }
}

#[cfg(not(unix))]
fn shutdown_write(_: &TcpStream) -> io::Result<()> {
    // Dropping the last holder closes the socket.
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connected pair over loopback: the peer's end, and ours shared as the driver shares it.
    async fn connected() -> (TcpStream, SharedSocket, SocketWriter) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (tcp, _) = listener.accept().await.unwrap();
        let (socket, writer) = share(tcp);
        (peer, socket, writer)
    }

    #[test]
    fn text_headers_take_the_shortest_length_encoding() {
        let mut h = [0u8; 10];
        assert_eq!((text_header(0, &mut h), &h[..2]), (2, &[0x81, 0][..]));
        assert_eq!((text_header(125, &mut h), &h[..2]), (2, &[0x81, 125][..]));
        assert_eq!((text_header(126, &mut h), &h[..4]), (4, &[0x81, 126, 0, 126][..]));
        assert_eq!((text_header(65_535, &mut h), &h[..4]), (4, &[0x81, 126, 255, 255][..]));
        let long = text_header(65_536, &mut h);
        assert_eq!((long, &h[..10]), (10, &[0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0][..]));
    }

    /// Slices that fit [`SocketWriter::GATHER`] go out gathered into one `send`, larger sets as
    /// a `writev`; either way the peer reads exactly the slices' bytes, in order.
    #[tokio::test]
    async fn direct_writes_send_every_slice_in_order_gathered_or_not() {
        use tokio::io::AsyncReadExt;
        let (mut peer, _socket, writer) = connected().await;
        let parts: Vec<Vec<u8>> = [2usize, 0, 300, 10, 199, 1, 700, 3]
            .iter()
            .enumerate()
            .map(|(i, &n)| (0..n).map(|j| (i * 31 + j) as u8).collect())
            .collect();
        let mut expected: Vec<u8> = Vec::new();
        // Well within the limit (512 bytes in all), just under it (509), and over it (1,215).
        for range in [0..2, 2..5, 3..6, 0..8] {
            let slices: Vec<IoSlice<'_>> =
                parts[range.clone()].iter().map(|p| IoSlice::new(p)).collect();
            let total: usize = parts[range.clone()].iter().map(Vec::len).sum();
            writer.0.writable().await.unwrap();
            assert_eq!(writer.try_write(&slices).unwrap(), total, "{range:?}: all taken at once");
            expected.extend(parts[range].iter().flatten());
        }
        let mut got = vec![0u8; expected.len()];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(got, expected);
    }

    /// A direct write to a socket that is full answers `WouldBlock` (the kernel's `EAGAIN`,
    /// not a panic, not an error that would end the connection), the writer's own `poll_write`
    /// then finishes the frame once the peer reads, and every byte arrives once, in order.
    #[tokio::test]
    async fn a_full_socket_answers_would_block_and_the_rest_is_written_when_it_drains() {
        use tokio::io::AsyncReadExt;
        let (mut peer, _socket, writer) = connected().await;
        let frame: Vec<u8> = (0..400u32).map(|i| (i % 253) as u8).collect();
        let mut sent: Vec<u8> = Vec::new();
        let refused = loop {
            match writer.try_write(&[IoSlice::new(&frame)]) {
                Ok(n) => sent.extend(&frame[..n]),
                Err(e) => break e,
            }
            assert!(sent.len() < 64 << 20, "a socket nobody reads took 64 MiB");
        };
        assert_eq!(refused.kind(), io::ErrorKind::WouldBlock, "{refused}");
        let reading = tokio::spawn(async move {
            let mut got: Vec<u8> = Vec::new();
            let mut buf = vec![0u8; 1 << 16];
            while got.len() < sent.len() + frame.len() {
                let n = peer.read(&mut buf).await.unwrap();
                assert!(n > 0, "the stream ended early");
                got.extend(&buf[..n]);
            }
            (got, sent, frame)
        });
        let rest: Vec<u8> = (0..400u32).map(|i| (i % 253) as u8).collect();
        let mut at = 0;
        while at < rest.len() {
            at += std::future::poll_fn(|cx| writer.poll_write(cx, &rest[at..])).await.unwrap();
        }
        let (got, mut sent, frame) = reading.await.unwrap();
        sent.extend(&frame);
        assert_eq!(got, sent);
    }

    /// Reads land in a buffer's uninitialized spare capacity (as hyper's do): every byte sent
    /// arrives once, in order, the buffer's length covers exactly what was read, and the end
    /// of the stream reads as zero bytes.
    #[tokio::test]
    async fn reads_fill_uninitialized_capacity_with_exactly_what_arrived() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut peer, mut socket, _writer) = connected().await;
        let sent: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let writing = tokio::spawn(async move {
            peer.write_all(&sent).await.unwrap();
            peer.shutdown().await.unwrap();
            sent
        });
        let mut got = Vec::new();
        loop {
            // Fresh spare capacity each time: `read_buf` hands it over uninitialized.
            got.reserve(8192);
            let before = got.len();
            let n = socket.read_buf(&mut got).await.unwrap();
            assert_eq!(got.len(), before + n);
            if n == 0 {
                break;
            }
        }
        assert_eq!(got, writing.await.unwrap());
    }
}
