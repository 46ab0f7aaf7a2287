//! A minimal RESP2 client for the pub/sub connection. The subscriber reads pushes straight from
//! its socket into one reusable buffer and looks at channel names and payloads where they lie,
//! instead of going through the `redis` crate's pub/sub (a `redis::Value` built per push, then
//! handed through a channel to our task). It speaks only what a subscriber needs: `AUTH`,
//! `SUBSCRIBE` / `UNSUBSCRIBE` and their confirmations, `message` pushes and error replies.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// The largest frame accepted, headers included. Payloads are the server's own messages (a
/// `POST /publish` body is at most 2 MiB by default); a length past this is a corrupt stream,
/// refused before the buffer grows to hold what it claims.
const MAX_FRAME: usize = 64 << 20;
/// The longest line (`+OK`, `-ERR ...`, a length), so a stream with no line end is refused too.
const MAX_LINE: usize = 64 << 10;
/// The most elements of a frame: pub/sub pushes have 3 (`pmessage` 4).
const MAX_ITEMS: usize = 4;
/// The free room each read gets.
const READ_CHUNK: usize = 64 << 10;
/// A buffer grown past this by one large frame is given back once it is empty.
const KEEP_CAPACITY: usize = 1 << 20;

/// One complete reply or push, borrowed from the read buffer.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Frame<'a> {
    /// A `message` push: a publish on a subscribed channel.
    Message {
        /// The channel's name.
        channel: &'a [u8],
        /// The message, byte for byte.
        payload: &'a [u8],
    },
    /// A `subscribe` confirmation (Redis sends one per channel of a `SUBSCRIBE`).
    Subscribed,
    /// An `unsubscribe` confirmation (one per channel of an `UNSUBSCRIBE`).
    Unsubscribed,
    /// A status reply (`+OK`).
    Status(&'a [u8]),
    /// An error reply (`-ERR ...`).
    Error(&'a [u8]),
    /// Any other well-formed reply or push: nothing a subscriber asks for.
    Other,
}

/// The peer sent something that is not RESP2 as a subscriber expects it.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(super) struct ProtocolError(&'static str);

/// Why the connection failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum Failure {
    /// The socket failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// Redis closed the connection.
    #[error("Redis closed the connection")]
    Closed,
    /// Redis answered with an error reply.
    #[error("Redis answered {0:?}")]
    Refused(String),
    /// Redis sent something unreadable.
    #[error("an unreadable reply from Redis: {0}")]
    Protocol(#[from] ProtocolError),
}

impl Failure {
    /// Whether it says something beyond "Redis is unreachable" (which reconnects show anyway).
    pub(super) fn is_notable(&self) -> bool {
        matches!(self, Failure::Refused(_) | Failure::Protocol(_))
    }

    /// The failure an error reply is.
    pub(super) fn refused(text: &[u8]) -> Failure {
        Failure::Refused(String::from_utf8_lossy(text).into_owned())
    }
}

/// One element as read: arrays only at the top of a frame.
#[derive(Clone, Copy)]
enum Item<'a> {
    Simple(&'a [u8]),
    Error(&'a [u8]),
    Int,
    Bulk(Option<&'a [u8]>),
    Array(Option<usize>),
}

/// Reads the frame at the start of `buf`: the frame and its length, or `Ok(None)` while part of
/// it has not arrived.
pub(super) fn frame(buf: &[u8]) -> Result<Option<(Frame<'_>, usize)>, ProtocolError> {
    let Some((head, mut at)) = item(buf, 0)? else { return Ok(None) };
    let n = match head {
        Item::Simple(text) => return Ok(Some((Frame::Status(text), at))),
        Item::Error(text) => return Ok(Some((Frame::Error(text), at))),
        Item::Int | Item::Bulk(_) | Item::Array(None) => return Ok(Some((Frame::Other, at))),
        Item::Array(Some(n)) => n,
    };
    if n > MAX_ITEMS {
        return Err(ProtocolError("an array longer than any push"));
    }
    let mut items = [Item::Bulk(None); MAX_ITEMS];
    for slot in &mut items[..n] {
        let Some((it, next)) = item(buf, at)? else { return Ok(None) };
        if matches!(it, Item::Array(_)) {
            return Err(ProtocolError("a nested array"));
        }
        *slot = it;
        at = next;
    }
    let frame = match items[..n] {
        [Item::Bulk(Some(b"message")), Item::Bulk(Some(channel)), Item::Bulk(Some(payload))] => {
            Frame::Message { channel, payload }
        }
        [Item::Bulk(Some(b"subscribe")), Item::Bulk(Some(_)), Item::Int] => Frame::Subscribed,
        // An `UNSUBSCRIBE` of nothing while subscribed to nothing names a null channel.
        [Item::Bulk(Some(b"unsubscribe")), Item::Bulk(_), Item::Int] => Frame::Unsubscribed,
        [Item::Bulk(Some(b"message" | b"subscribe" | b"unsubscribe")), ..] => {
            return Err(ProtocolError("a malformed push"));
        }
        _ => Frame::Other,
    };
    Ok(Some((frame, at)))
}

/// The element at `at` and where the next one starts, or `Ok(None)` while incomplete. `at` is
/// the offset in the frame, so the frame's size bounds each bulk string.
fn item(buf: &[u8], at: usize) -> Result<Option<(Item<'_>, usize)>, ProtocolError> {
    let Some(&kind) = buf.get(at) else { return Ok(None) };
    let Some((text, next)) = line(buf, at + 1)? else { return Ok(None) };
    let item = match kind {
        b'+' => Item::Simple(text),
        b'-' => Item::Error(text),
        b':' => {
            integer(text)?;
            Item::Int
        }
        b'$' => match integer(text)? {
            -1 => Item::Bulk(None),
            len => {
                let len = usize::try_from(len).map_err(|_| ProtocolError("a negative length"))?;
                // Checked before the bytes arrive: the buffer never waits for an absurd length.
                if len > MAX_FRAME.saturating_sub(next + 2) {
                    return Err(ProtocolError("a bulk string longer than the largest frame"));
                }
                let end = next + len;
                let Some(tail) = buf.get(end..end + 2) else { return Ok(None) };
                if tail != b"\r\n" {
                    return Err(ProtocolError("a bulk string not ended by CRLF"));
                }
                return Ok(Some((Item::Bulk(Some(&buf[next..end])), end + 2)));
            }
        },
        b'*' => match integer(text)? {
            -1 => Item::Array(None),
            n => Item::Array(Some(
                usize::try_from(n).map_err(|_| ProtocolError("a negative length"))?,
            )),
        },
        _ => return Err(ProtocolError("an unknown type")),
    };
    Ok(Some((item, next)))
}

/// The line from `at` without its CRLF, and where the next one starts; `Ok(None)` while it has
/// no end yet.
fn line(buf: &[u8], at: usize) -> Result<Option<(&[u8], usize)>, ProtocolError> {
    let rest = buf.get(at..).unwrap_or_default();
    let window = &rest[..rest.len().min(MAX_LINE)];
    match window.iter().position(|&b| b == b'\n') {
        Some(i) if i > 0 && window[i - 1] == b'\r' => Ok(Some((&window[..i - 1], at + i + 1))),
        Some(_) => Err(ProtocolError("a line not ended by CRLF")),
        None if rest.len() >= MAX_LINE => Err(ProtocolError("a line too long")),
        None => Ok(None),
    }
}

/// A length or an integer reply: at most 18 digits, so it cannot overflow.
fn integer(text: &[u8]) -> Result<i64, ProtocolError> {
    let (negative, digits) = match text {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, text),
    };
    if digits.is_empty() || digits.len() > 18 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(ProtocolError("not an integer"));
    }
    let n = digits.iter().fold(0i64, |n, d| n * 10 + i64::from(d - b'0'));
    Ok(if negative { -n } else { n })
}

/// Appends a command (an array of bulk strings) to `out`.
pub(super) fn command(out: &mut Vec<u8>, name: &[u8], args: &[&[u8]]) {
    header(out, b'*', args.len() + 1);
    for arg in std::iter::once(&name).chain(args) {
        header(out, b'$', arg.len());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

fn header(out: &mut Vec<u8>, kind: u8, n: usize) {
    out.push(kind);
    out.extend_from_slice(n.to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// The read side: one buffer reused for every read, which keeps at most one incomplete frame
/// between reads.
#[derive(Default)]
pub(super) struct Reader {
    buf: Vec<u8>,
    /// Where the frames not yet taken start.
    start: usize,
}

impl Reader {
    /// The next complete frame in the buffer, if one is there.
    pub(super) fn next(&mut self) -> Result<Option<Frame<'_>>, ProtocolError> {
        let Some((frame, used)) = frame(&self.buf[self.start..])? else { return Ok(None) };
        self.start += used;
        Ok(Some(frame))
    }

    /// Reads once from `io`; `Ok(false)` at the end of the stream. Cancel safe: nothing is read
    /// unless it completes.
    pub(super) async fn fill<R: AsyncRead + Unpin>(&mut self, io: &mut R) -> io::Result<bool> {
        if self.start == self.buf.len() {
            self.buf.clear();
            if self.buf.capacity() > KEEP_CAPACITY {
                self.buf.shrink_to(READ_CHUNK);
            }
        } else if self.start > 0 {
            // Moves the incomplete frame to the front (once per frame, not per read).
            self.buf.drain(..self.start);
        }
        self.start = 0;
        self.buf.reserve(READ_CHUNK);
        Ok(io.read_buf(&mut self.buf).await? > 0)
    }
}

/// Where the pub/sub connection goes: the `redis::Client`'s address and credentials.
pub(super) struct Endpoint {
    host: String,
    port: u16,
    username: Option<String>,
    password: Option<String>,
}

impl Endpoint {
    /// `None` for an address other than TCP (a Unix socket; TLS is not built in).
    pub(super) fn of(info: &redis::ConnectionInfo) -> Option<Endpoint> {
        let redis::ConnectionAddr::Tcp(host, port) = info.addr() else { return None };
        let settings = info.redis_settings();
        Some(Endpoint {
            host: host.clone(),
            port: *port,
            username: settings.username().map(Into::into),
            password: settings.password().map(Into::into),
        })
    }
}

/// A pub/sub connection: a socket and its reader.
pub(super) struct Connection<S = TcpStream> {
    io: S,
    reader: Reader,
}

impl Connection {
    /// Connects and, when the URL has a password, authenticates (no `SELECT`: pub/sub ignores
    /// the database). The caller bounds the time it takes.
    pub(super) async fn open(to: &Endpoint) -> Result<Connection, Failure> {
        let io = TcpStream::connect((to.host.as_str(), to.port)).await?;
        // Commands are rare and small: none should wait for the one before to be acknowledged.
        io.set_nodelay(true)?;
        let mut conn = Connection::new(io);
        if let Some(password) = &to.password {
            conn.auth(to.username.as_deref(), password).await?;
        }
        Ok(conn)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    /// A connection over `io`, already open.
    pub(super) fn new(io: S) -> Self {
        Connection { io, reader: Reader::default() }
    }

    /// `AUTH [user] password`, and its reply.
    async fn auth(&mut self, user: Option<&str>, password: &str) -> Result<(), Failure> {
        let mut args: Vec<&[u8]> = user.map(str::as_bytes).into_iter().collect();
        args.push(password.as_bytes());
        let mut cmd = Vec::new();
        command(&mut cmd, b"AUTH", &args);
        self.send(&cmd).await?;
        loop {
            match self.next()? {
                Some(Frame::Status(_)) => return Ok(()),
                Some(Frame::Error(text)) => return Err(Failure::refused(text)),
                Some(_) => return Err(ProtocolError("an unexpected reply to AUTH").into()),
                None => self.fill().await?,
            }
        }
    }

    /// Writes `bytes` (whole commands).
    pub(super) async fn send(&mut self, bytes: &[u8]) -> Result<(), Failure> {
        Ok(self.io.write_all(bytes).await?)
    }

    /// Reads once more. Cancel safe.
    pub(super) async fn fill(&mut self) -> Result<(), Failure> {
        if self.reader.fill(&mut self.io).await? { Ok(()) } else { Err(Failure::Closed) }
    }

    /// The next complete frame read, if there is one; an error reply is a frame, not a failure.
    pub(super) fn next(&mut self) -> Result<Option<Frame<'_>>, Failure> {
        Ok(self.reader.next()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame as owned data, to compare frames read at different times.
    #[derive(Debug, PartialEq, Eq)]
    enum Owned {
        Message(Vec<u8>, Vec<u8>),
        Subscribed,
        Unsubscribed,
        Status(Vec<u8>),
        Error(Vec<u8>),
        Other,
    }

    fn own(frame: Frame<'_>) -> Owned {
        match frame {
            Frame::Message { channel, payload } => Owned::Message(channel.into(), payload.into()),
            Frame::Subscribed => Owned::Subscribed,
            Frame::Unsubscribed => Owned::Unsubscribed,
            Frame::Status(t) => Owned::Status(t.into()),
            Frame::Error(t) => Owned::Error(t.into()),
            Frame::Other => Owned::Other,
        }
    }

    fn push(kind: &str, channel: &[u8], last: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        command(&mut out, kind.as_bytes(), &[channel, last]);
        out
    }

    fn message(channel: &[u8], payload: &[u8]) -> Vec<u8> {
        push("message", channel, payload)
    }

    fn confirmation(kind: &str, channel: &[u8], count: u32) -> Vec<u8> {
        format!("*3\r\n${}\r\n{kind}\r\n${}\r\n", kind.len(), channel.len())
            .into_bytes()
            .into_iter()
            .chain(channel.iter().copied())
            .chain(format!("\r\n:{count}\r\n").into_bytes())
            .collect()
    }

    /// Feeds `parts` one read each, taking every frame complete after each read.
    async fn read_in(parts: &[&[u8]]) -> Result<Vec<Owned>, ProtocolError> {
        let mut reader = Reader::default();
        let mut got = Vec::new();
        for part in parts {
            let mut io = *part;
            // A part longer than one read's room takes several.
            while !io.is_empty() {
                assert!(reader.fill(&mut io).await.unwrap(), "bytes were read");
                while let Some(frame) = reader.next()? {
                    got.push(own(frame));
                }
            }
        }
        assert!(reader.next()?.is_none());
        Ok(got)
    }

    #[tokio::test]
    async fn a_stream_split_at_every_byte_reads_as_the_same_frames() {
        let mut bytes = message(b"sb:c:5:acme|5:alice", b"m17:4:{\"a\":\"\r\n$3\r\n\"}");
        bytes.extend(message(b"sb:c:x", b""));
        bytes.extend(confirmation("subscribe", b"sb:probe", 2));
        bytes.extend(b"+OK\r\n-ERR no\r\n:5\r\n$-1\r\n*-1\r\n");
        let whole = read_in(&[&bytes]).await.unwrap();
        assert_eq!(
            whole,
            vec![
                Owned::Message(
                    b"sb:c:5:acme|5:alice".to_vec(),
                    b"m17:4:{\"a\":\"\r\n$3\r\n\"}".to_vec()
                ),
                Owned::Message(b"sb:c:x".to_vec(), Vec::new()),
                Owned::Subscribed,
                Owned::Status(b"OK".to_vec()),
                Owned::Error(b"ERR no".to_vec()),
                Owned::Other,
                Owned::Other,
                Owned::Other,
            ]
        );
        for at in 0..=bytes.len() {
            let (a, b) = bytes.split_at(at);
            assert_eq!(read_in(&[a, b]).await.unwrap(), whole, "split at {at}");
        }
        // And one byte per read.
        let bytes: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(read_in(&bytes).await.unwrap(), whole);
    }

    #[tokio::test]
    async fn confirmations_interleave_with_messages() {
        let mut bytes = message(b"a", b"m1:1:x");
        bytes.extend(confirmation("subscribe", b"b", 2));
        bytes.extend(message(b"b", b"m1:1:y"));
        bytes.extend(confirmation("unsubscribe", b"a", 1));
        // An UNSUBSCRIBE when nothing is subscribed names no channel.
        bytes.extend(b"*3\r\n$11\r\nunsubscribe\r\n$-1\r\n:0\r\n");
        bytes.extend(message(b"b", b"m1:2:z"));
        assert_eq!(
            read_in(&[&bytes[..30], &bytes[30..]]).await.unwrap(),
            vec![
                Owned::Message(b"a".to_vec(), b"m1:1:x".to_vec()),
                Owned::Subscribed,
                Owned::Message(b"b".to_vec(), b"m1:1:y".to_vec()),
                Owned::Unsubscribed,
                Owned::Unsubscribed,
                Owned::Message(b"b".to_vec(), b"m1:2:z".to_vec()),
            ]
        );
    }

    #[tokio::test]
    async fn an_error_reply_is_a_frame_and_bad_input_is_refused() {
        assert_eq!(
            read_in(&[b"-NOAUTH Authentication required.\r\n"]).await.unwrap(),
            vec![Owned::Error(b"NOAUTH Authentication required.".to_vec())]
        );
        for bad in [
            &b"?x\r\n"[..],
            b"$abc\r\n",
            b"$-2\r\n",
            b"$3\r\nabcd\r\n",
            b"+OK\n",
            b"*9\r\n",
            b"*3\r\n*1\r\n",
            b"*2\r\n$7\r\nmessage\r\n$1\r\na\r\n",
            b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n$1\r\n1\r\n",
            b":12345678901234567890\r\n",
        ] {
            assert!(read_in(&[bad]).await.is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[tokio::test]
    async fn absurd_lengths_and_endless_lines_are_refused_before_they_are_buffered() {
        // The header alone is enough: nothing waits for 64 MiB to arrive.
        let header = format!("*3\r\n$7\r\nmessage\r\n$1\r\na\r\n${}\r\n", MAX_FRAME);
        assert!(read_in(&[header.as_bytes()]).await.is_err());
        assert!(read_in(&[b"$99999999999999999\r\n"]).await.is_err());
        // Just under the limit is only incomplete.
        let fits = format!("*3\r\n$7\r\nmessage\r\n$1\r\na\r\n${}\r\n", MAX_FRAME - 64);
        assert_eq!(read_in(&[fits.as_bytes()]).await.unwrap(), vec![]);
        let endless = vec![b'+'; MAX_LINE + 1];
        assert!(read_in(&[&endless]).await.is_err());
    }

    #[tokio::test]
    async fn the_buffer_is_reused_and_a_large_one_given_back() {
        let mut reader = Reader::default();
        let big = message(b"c", &vec![b'x'; 2 * KEEP_CAPACITY]);
        let mut io = &big[..];
        while !io.is_empty() {
            reader.fill(&mut io).await.unwrap();
        }
        match reader.next() {
            Ok(Some(Frame::Message { payload, .. })) => {
                assert_eq!(payload.len(), 2 * KEEP_CAPACITY)
            }
            other => panic!("{other:?}"),
        }
        assert!(reader.buf.capacity() > KEEP_CAPACITY);
        let small = message(b"c", b"m1:1:x");
        reader.fill(&mut &small[..]).await.unwrap();
        assert!(reader.buf.capacity() <= KEEP_CAPACITY, "{}", reader.buf.capacity());
        assert!(matches!(reader.next(), Ok(Some(Frame::Message { .. }))));
        assert!(!reader.fill(&mut &b""[..]).await.unwrap(), "the end of the stream");
    }

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        let mut out = Vec::new();
        command(&mut out, b"SUBSCRIBE", &[b"a", b"", b"\r\n"]);
        assert_eq!(out, b"*4\r\n$9\r\nSUBSCRIBE\r\n$1\r\na\r\n$0\r\n\r\n$2\r\n\r\n\r\n");
    }

    /// A fake Redis on the other end of an in-memory pipe: answers the first command read with
    /// `reply` and returns what it read.
    async fn auth_with(user: Option<&str>, reply: &'static [u8]) -> (Result<(), Failure>, Vec<u8>) {
        let (ours, mut theirs) = tokio::io::duplex(1024);
        let mut conn = Connection::new(ours);
        let server = tokio::spawn(async move {
            let mut got = vec![0; 256];
            let n = theirs.read(&mut got).await.unwrap();
            got.truncate(n);
            theirs.write_all(reply).await.unwrap();
            got
        });
        let result = conn.auth(user, "hunter2").await;
        (result, server.await.unwrap())
    }

    #[tokio::test]
    async fn auth_sends_the_credentials_and_reads_the_reply() {
        let (ok, sent) = auth_with(Some("bob"), b"+OK\r\n").await;
        assert!(ok.is_ok(), "{ok:?}");
        assert_eq!(sent, b"*3\r\n$4\r\nAUTH\r\n$3\r\nbob\r\n$7\r\nhunter2\r\n");
        let (ok, sent) = auth_with(None, b"+O").await;
        assert!(matches!(ok, Err(Failure::Closed)), "a reply cut short: {ok:?}");
        assert_eq!(sent, b"*2\r\n$4\r\nAUTH\r\n$7\r\nhunter2\r\n");
        let (refused, _) = auth_with(None, b"-WRONGPASS invalid password\r\n").await;
        assert!(
            matches!(&refused, Err(Failure::Refused(t)) if t == "WRONGPASS invalid password"),
            "{refused:?}"
        );
        assert!(refused.unwrap_err().is_notable());
    }
}
