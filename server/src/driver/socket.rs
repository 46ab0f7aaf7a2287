//! A connection's TCP socket, shared by the two tasks that write to it: the connection's own
//! task (through hyper, then tungstenite, which also read it) and the hub task, which writes a
//! frame straight to it when nothing else is being written ([`super::outbox`] decides when).
//!
//! A direct write saves, per frame, the wake of the connection's task, its poll, the outbox's
//! hand-over and tungstenite's copy into its write buffer: the hub task encodes the frame's
//! two-to-ten-byte header and hands header and frame to one non-blocking `writev`. Only what the
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
    pub(super) fn try_write(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }

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

fn poll_write(tcp: &TcpStream, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
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
            match self.0.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
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
}
