//! The subscriber: the pub/sub connection (our own RESP2 client, [`resp`]), batched
//! subscriptions restored after every reconnect, and the liveness probe that reports a deaf
//! connection as the bus going down.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use redis::Pipeline;
use redis::aio::ConnectionManager;
use switchboard::{BusFailure, BusReply, OpId, StreamKey, StreamPos};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

use super::keys::{self, StreamNames};
use super::resp::{self, Connection, Endpoint, Failure, Frame};
use super::{RedisConfig, SubRequest, scripts};
use crate::bus::{BusEvent, BusMetrics};

/// Why a connected session ended.
enum Lost {
    /// The connection closed or a command on it failed.
    Closed,
    /// Probes stopped coming back: open but deaf.
    Deaf,
    /// The driver is being dropped (the hub task is gone).
    Stopped,
}

pub(super) struct Subscriber {
    endpoint: Endpoint,
    conn: ConnectionManager,
    cfg: Arc<RedisConfig>,
    events: mpsc::Sender<BusEvent>,
    metrics: Arc<BusMetrics>,
    /// Every subscription the hub holds, by channel name: restored after a reconnect. Keyed by
    /// bytes, so a push's channel is looked up where it lies in the read buffer.
    channels: HashMap<Box<[u8]>, StreamKey>,
    probe_channel: String,
    /// Whether the hub was last told the link is up.
    reported_up: bool,
    /// Whether the current session reached up (resets the reconnect backoff).
    reached_up: bool,
}

impl Subscriber {
    pub(super) fn new(
        endpoint: Endpoint,
        conn: ConnectionManager,
        cfg: Arc<RedisConfig>,
        events: mpsc::Sender<BusEvent>,
        metrics: Arc<BusMetrics>,
    ) -> Self {
        let probe_channel = keys::probe_channel(&cfg.prefix, &cfg.node);
        Subscriber {
            endpoint,
            conn,
            cfg,
            events,
            metrics,
            channels: HashMap::new(),
            probe_channel,
            // The hub starts up; the first failure to connect says otherwise.
            reported_up: true,
            reached_up: false,
        }
    }

    pub(super) async fn run(mut self, mut requests: mpsc::Receiver<SubRequest>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.session(&mut requests).await {
                Lost::Stopped => return,
                Lost::Closed | Lost::Deaf => {}
            }
            BusMetrics::bump(&self.metrics.link_losses);
            self.report(false).await;
            // Answer what arrives while there is no connection, then try again.
            let pause = jitter(backoff);
            let until = tokio::time::Instant::now() + pause;
            loop {
                tokio::select! {
                    () = tokio::time::sleep_until(until) => break,
                    req = requests.recv() => match req {
                        Some(req) => self.while_down(req).await,
                        None => return,
                    },
                }
            }
            backoff = if std::mem::take(&mut self.reached_up) {
                Duration::from_millis(100)
            } else {
                (backoff * 2).min(self.cfg.max_backoff)
            };
        }
    }

    /// Tells the hub the link's state when it changed.
    async fn report(&mut self, up: bool) {
        self.metrics.up.store(up, Ordering::Relaxed);
        if self.reported_up != up {
            self.reported_up = up;
            let event = if up { BusEvent::Up } else { BusEvent::Down };
            let _ = self.events.send(event).await;
        }
    }

    /// A request while the link is down: remember the subscription (it is made on reconnect)
    /// and fail the operation, as the hub expects while it knows the bus is down.
    async fn while_down(&mut self, req: SubRequest) {
        match req {
            SubRequest::Subscribe { op, stream, at } => {
                let channel = StreamNames::of(&self.cfg.prefix, &stream).channel();
                self.channels.insert(channel.into_bytes().into(), stream);
                reply(&self.events, &self.metrics, op, at, Err(BusFailure::Retryable)).await;
            }
            SubRequest::Unsubscribe { stream } => {
                let channel = StreamNames::of(&self.cfg.prefix, &stream).channel();
                self.channels.remove(channel.as_bytes());
            }
        }
    }

    /// One connection's life: connect, restore, report up, then serve until it is lost.
    async fn session(&mut self, requests: &mut mpsc::Receiver<SubRequest>) -> Lost {
        let connect =
            tokio::time::timeout(self.cfg.connect_timeout, Connection::open(&self.endpoint));
        let mut conn = match connect.await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                note(&e);
                return Lost::Closed;
            }
            Err(_) => return Lost::Closed,
        };
        let mut probe = Probe::default();
        // Restore: the probe channel, then every subscription, in batches.
        let all: Vec<&[u8]> = std::iter::once(self.probe_channel.as_bytes())
            .chain(self.channels.keys().map(|c| &**c))
            .collect();
        for chunk in all.chunks(self.cfg.subscribe_batch.max(1)) {
            let mut command = Vec::new();
            resp::command(&mut command, b"SUBSCRIBE", chunk);
            if !self.change(&mut conn, &command, chunk.len(), &mut probe).await {
                return Lost::Closed;
            }
        }
        // The link is up only once a probe went round (the publishing side works too).
        if !self.probe_round_trip(&mut conn, &mut probe).await {
            BusMetrics::bump(&self.metrics.probes_missed);
            return Lost::Deaf;
        }
        self.report(true).await;
        self.reached_up = true;
        let mut tick = tokio::time::interval(self.cfg.probe_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch = Vec::new();
        loop {
            tokio::select! {
                read = conn.fill() => {
                    if let Err(e) = read.and_then(|()| self.drain(&mut conn, &mut probe)) {
                        note(&e);
                        return Lost::Closed;
                    }
                }
                n = requests.recv_many(&mut batch, self.cfg.subscribe_batch.max(1)) => {
                    if n == 0 {
                        return Lost::Stopped;
                    }
                    if !self.serve(&mut conn, &mut probe, std::mem::take(&mut batch)).await {
                        return Lost::Closed;
                    }
                }
                _ = tick.tick() => {
                    if probe.overdue(self.cfg.probe_timeout) {
                        BusMetrics::bump(&self.metrics.probes_missed);
                        return Lost::Deaf;
                    }
                    // One probe at a time: a slow round trip is not mistaken for a lost one.
                    if probe.outstanding.is_none() {
                        self.send_probe(&mut probe);
                    }
                }
            }
        }
    }

    /// Handles every complete frame read: messages go to the hub, subscription changes are
    /// counted (returned), and an error reply ends the session.
    fn drain<S>(&self, conn: &mut Connection<S>, probe: &mut Probe) -> Result<usize, Failure>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut confirmed = 0;
        while let Some(frame) = conn.next()? {
            match frame {
                Frame::Message { channel, payload } => self.on_message(channel, payload, probe),
                Frame::Subscribed | Frame::Unsubscribed => confirmed += 1,
                Frame::Error(text) => return Err(Failure::refused(text)),
                Frame::Status(_) | Frame::Other => {}
            }
        }
        Ok(confirmed)
    }

    /// Sends a subscription change and reads until its `expected` confirmations arrived, within
    /// the response timeout; messages that arrive meanwhile are delivered. `false`: the
    /// connection failed.
    async fn change<S>(
        &self,
        conn: &mut Connection<S>,
        command: &[u8],
        expected: usize,
        probe: &mut Probe,
    ) -> bool
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let confirm = async {
            conn.send(command).await?;
            let mut confirmed = 0;
            loop {
                confirmed += self.drain(conn, probe)?;
                if confirmed >= expected {
                    return Ok::<(), Failure>(());
                }
                conn.fill().await?;
            }
        };
        within(self.cfg.response_timeout, confirm).await
    }

    /// Publishes a probe and waits for it (the first one of a session).
    async fn probe_round_trip(&self, conn: &mut Connection, probe: &mut Probe) -> bool {
        self.send_probe(probe);
        let back = async {
            loop {
                self.drain(conn, probe)?;
                if probe.outstanding.is_none() {
                    return Ok::<(), Failure>(());
                }
                conn.fill().await?;
            }
        };
        within(self.cfg.probe_timeout, back).await
    }

    fn send_probe(&self, probe: &mut Probe) {
        probe.sent += 1;
        probe.outstanding = Some(Instant::now());
        let mut pipe = Pipeline::new();
        pipe.cmd("PUBLISH").arg(&self.probe_channel).arg(probe.sent);
        // Not awaited here: a Redis that stalls must not stall the check of the probe's deadline.
        // A failure shows as a probe that never comes back.
        let mut conn = self.conn.clone();
        tokio::spawn(async move {
            let _ = conn.send_packed_commands(&pipe, 0, 1).await;
        });
    }

    /// A message on the pub/sub connection: a probe, a stream message or a signal.
    fn on_message(&self, channel: &[u8], payload: &[u8], probe: &mut Probe) {
        if channel == self.probe_channel.as_bytes() {
            let n: Option<u64> = std::str::from_utf8(payload).ok().and_then(|t| t.parse().ok());
            if n == Some(probe.sent) {
                probe.outstanding = None;
            }
            return;
        }
        let Some(stream) = self.channels.get(channel) else { return };
        let Some(event) = parse(stream, payload) else {
            let channel = String::from_utf8_lossy(channel);
            eprintln!("switchboard: an unreadable message on {channel:?} was dropped");
            return;
        };
        // Never wait here: a full queue drops the message, and the hub repairs the gap.
        if self.events.try_send(event).is_err() {
            BusMetrics::bump(&self.metrics.messages_dropped);
        }
    }

    /// Subscribes and unsubscribes a batch of requests, then has the subscriptions answered with
    /// their streams' tops read after the subscriptions were confirmed ([`answer`]). `false`:
    /// the connection failed.
    async fn serve<S>(
        &mut self,
        conn: &mut Connection<S>,
        probe: &mut Probe,
        batch: Vec<SubRequest>,
    ) -> bool
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut subscribe: Vec<(OpId, StreamKey, Instant, String)> = Vec::new();
        let mut unsubscribe: Vec<String> = Vec::new();
        for req in batch {
            match req {
                SubRequest::Subscribe { op, stream, at } => {
                    let names = StreamNames::of(&self.cfg.prefix, &stream);
                    subscribe.push((op, stream, at, names.channel()));
                }
                SubRequest::Unsubscribe { stream } => {
                    unsubscribe.push(StreamNames::of(&self.cfg.prefix, &stream).channel());
                }
            }
        }
        // Both changes go out in one write; their confirmations come back in order.
        let mut command = Vec::new();
        let mut expected = 0;
        // A stream both dropped and taken again in this batch stays subscribed.
        unsubscribe.retain(|c| !subscribe.iter().any(|s| &s.3 == c));
        if !unsubscribe.is_empty() {
            for c in &unsubscribe {
                self.channels.remove(c.as_bytes());
            }
            let names: Vec<&[u8]> = unsubscribe.iter().map(|c| c.as_bytes()).collect();
            resp::command(&mut command, b"UNSUBSCRIBE", &names);
            expected += names.len();
        }
        if !subscribe.is_empty() {
            for (_, stream, _, channel) in &subscribe {
                self.channels.insert(channel.as_bytes().into(), stream.clone());
            }
            let names: Vec<&[u8]> = subscribe.iter().map(|s| s.3.as_bytes()).collect();
            resp::command(&mut command, b"SUBSCRIBE", &names);
            expected += names.len();
        }
        if expected == 0 {
            return true;
        }
        if !self.change(conn, &command, expected, probe).await {
            for (op, _, at, _) in subscribe {
                reply(&self.events, &self.metrics, op, at, Err(BusFailure::Retryable)).await;
            }
            return false;
        }
        if !subscribe.is_empty() {
            // In a task of its own: this one goes on reading the connection meanwhile, so Redis
            // does not buffer our messages while the tops are read (the hub holds a stream's
            // messages that arrive before its top).
            let streams =
                subscribe.into_iter().map(|(op, stream, at, _)| (op, stream, at)).collect();
            tokio::spawn(answer(
                self.conn.clone(),
                self.cfg.clone(),
                self.events.clone(),
                self.metrics.clone(),
                streams,
            ));
        }
        true
    }
}

/// Says why a session ended when it is more than Redis being away (which the reconnects show).
fn note(failure: &Failure) {
    if failure.is_notable() {
        eprintln!("switchboard: the Redis pub/sub connection failed: {failure}");
    }
}

/// Records a subscription's outcome and sends it to the hub.
async fn reply(
    events: &mpsc::Sender<BusEvent>,
    metrics: &BusMetrics,
    op: OpId,
    at: Instant,
    reply: Result<BusReply, BusFailure>,
) {
    metrics.record("subscribe", at.elapsed(), reply.is_err());
    let _ = events.send(BusEvent::Reply { op, reply }).await;
}

/// Answers confirmed subscriptions with their streams' tops, read in one pipeline.
async fn answer(
    mut conn: ConnectionManager,
    cfg: Arc<RedisConfig>,
    events: mpsc::Sender<BusEvent>,
    metrics: Arc<BusMetrics>,
    subscribed: Vec<(OpId, StreamKey, Instant)>,
) {
    let mut pipe = Pipeline::new();
    for (_, stream, _) in &subscribed {
        pipe.cmd("HMGET").arg(StreamNames::of(&cfg.prefix, stream).meta()).arg("e").arg("s");
    }
    let tops = conn.send_packed_commands(&pipe, 0, pipe.len()).await;
    for (i, (op, _, at)) in subscribed.into_iter().enumerate() {
        let outcome = match &tops {
            Ok(values) => match values.get(i).map(scripts::top) {
                Some(Ok(top)) => Ok(BusReply::Subscribed { top }),
                _ => Err(BusFailure::Refused),
            },
            Err(_) => Err(BusFailure::Retryable),
        };
        reply(&events, &metrics, op, at, outcome).await;
    }
}

/// Awaits `exchange` for at most `limit`: whether it succeeded. A failure is noted in the log;
/// a timeout is not (it is the caller's to count).
async fn within(
    limit: Duration,
    exchange: impl std::future::Future<Output = Result<(), Failure>>,
) -> bool {
    match tokio::time::timeout(limit, exchange).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            note(&e);
            false
        }
        Err(_) => false,
    }
}

/// The probe in flight.
#[derive(Default)]
struct Probe {
    /// The last probe's number.
    sent: u64,
    /// When the probe in flight went out.
    outstanding: Option<Instant>,
}

impl Probe {
    fn overdue(&self, timeout: Duration) -> bool {
        self.outstanding.is_some_and(|at| at.elapsed() > timeout)
    }
}

/// Reads a channel message: `m<epoch>:<seq>:<payload>` or `s:<payload>`.
fn parse(stream: &StreamKey, bytes: &[u8]) -> Option<BusEvent> {
    let text = std::str::from_utf8(bytes).ok()?;
    if let Some(payload) = text.strip_prefix("s:") {
        return Some(BusEvent::Signal { stream: stream.clone(), payload: payload.into() });
    }
    let rest = text.strip_prefix('m')?;
    let (epoch, rest) = rest.split_once(':')?;
    let (seq, payload) = rest.split_once(':')?;
    let pos = StreamPos { epoch: epoch.parse().ok()?, seq: seq.parse().ok()? };
    Some(BusEvent::Message { stream: stream.clone(), pos, payload: payload.into() })
}

/// Full jitter: a pause drawn between half of `d` and `d`.
fn jitter(d: Duration) -> Duration {
    let r = crate::auth::random_u64() % 1000;
    d / 2 + d / 2 * u32::try_from(r).unwrap_or(0) / 1000
}

#[cfg(test)]
mod tests {
    use redis::aio::ConnectionManagerConfig;
    use switchboard::NodeId;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    use super::*;

    /// A subscriber, the hub's end of its events, its connection and the fake Redis's end.
    type Rig = (Subscriber, mpsc::Receiver<BusEvent>, Connection<DuplexStream>, DuplexStream);

    /// A subscriber holding `alice`'s stream, with a connection to a fake Redis.
    fn subscriber() -> Rig {
        // Nothing listens there: the multiplexed connection is never used by these tests.
        let cfg = RedisConfig::new("redis://127.0.0.1:1/", NodeId::new("n1"));
        let client = redis::Client::open(cfg.url.as_str()).unwrap();
        let endpoint = Endpoint::of(client.get_connection_info()).unwrap();
        let manager =
            ConnectionManager::new_lazy_with_config(client, ConnectionManagerConfig::new())
                .unwrap();
        let (events, rx) = mpsc::channel(16);
        let mut sub = Subscriber::new(endpoint, manager, Arc::new(cfg), events, Arc::default());
        sub.channels.insert(channel(&sub, &alice()).into_bytes().into(), alice());
        let (ours, theirs) = tokio::io::duplex(4096);
        (sub, rx, Connection::new(ours), theirs)
    }

    fn alice() -> StreamKey {
        StreamKey::user("acme", "alice")
    }

    fn channel(sub: &Subscriber, stream: &StreamKey) -> String {
        StreamNames::of(&sub.cfg.prefix, stream).channel()
    }

    fn push(kind: &str, channel: &str, last: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        resp::command(&mut out, kind.as_bytes(), &[channel.as_bytes(), last]);
        out
    }

    fn confirmation(kind: &str, channel: &str, count: u32) -> Vec<u8> {
        let mut out = push(kind, channel, b"");
        // A confirmation ends with the subscription count, an integer.
        out.truncate(out.len() - b"$0\r\n\r\n".len());
        out.extend(format!(":{count}\r\n").into_bytes());
        out
    }

    /// The live events sent to the hub so far, as (seq, payload).
    fn delivered(rx: &mut mpsc::Receiver<BusEvent>) -> Vec<(u64, String)> {
        std::iter::from_fn(|| rx.try_recv().ok())
            .map(|ev| match ev {
                BusEvent::Message { stream, pos, payload } => {
                    assert_eq!(stream, alice());
                    (pos.seq, payload.into())
                }
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[tokio::test]
    async fn messages_between_confirmations_are_delivered_in_order() {
        let (sub, mut rx, mut conn, mut redis) = subscriber();
        let bob = channel(&sub, &StreamKey::user("acme", "bob"));
        let carol = channel(&sub, &StreamKey::user("acme", "carol"));
        let mut command = Vec::new();
        resp::command(&mut command, b"SUBSCRIBE", &[bob.as_bytes(), carol.as_bytes()]);
        let a = channel(&sub, &alice());
        let mut replies = push("message", &a, b"m7:1:one");
        replies.extend(confirmation("subscribe", &bob, 2));
        replies.extend(push("message", &a, b"m7:2:two"));
        // Half of the last confirmation first: the subscriber must read on.
        let last = confirmation("subscribe", &carol, 3);
        replies.extend(&last[..9]);
        redis.write_all(&replies).await.unwrap();
        let sent = command.clone();
        let fake = tokio::spawn(async move {
            let mut got = vec![0; sent.len()];
            redis.read_exact(&mut got).await.unwrap();
            assert_eq!(got, sent, "the SUBSCRIBE sent");
            tokio::time::sleep(Duration::from_millis(50)).await;
            let mut rest = last[9..].to_vec();
            // A message after the confirmations.
            rest.extend(push("message", &a, b"m7:3:three"));
            redis.write_all(&rest).await.unwrap();
            redis
        });
        let mut probe = Probe::default();
        assert!(sub.change(&mut conn, &command, 2, &mut probe).await, "confirmed");
        let _redis = fake.await.unwrap();
        let mut got = delivered(&mut rx);
        assert_eq!(
            got[..2],
            [(1, "one".into()), (2, "two".into())],
            "read before the change ended"
        );
        // The message after the confirmations, if it came in a later read (a change that
        // returned before its last confirmation would find that confirmation here).
        while got.len() < 3 {
            tokio::time::timeout(Duration::from_secs(5), conn.fill()).await.unwrap().unwrap();
            assert_eq!(sub.drain(&mut conn, &mut probe).unwrap(), 0, "no confirmation left");
            got.extend(delivered(&mut rx));
        }
        assert_eq!(got, [(1, "one".into()), (2, "two".into()), (3, "three".into())]);
    }

    #[tokio::test]
    async fn an_error_reply_or_the_end_of_the_stream_fails_a_change() {
        let (sub, _rx, mut conn, mut redis) = subscriber();
        redis.write_all(b"-ERR unknown command\r\n").await.unwrap();
        let mut command = Vec::new();
        resp::command(&mut command, b"SUBSCRIBE", &[b"x"]);
        let mut probe = Probe::default();
        assert!(!sub.change(&mut conn, &command, 1, &mut probe).await);

        let (sub, _rx, mut conn, redis) = subscriber();
        drop(redis);
        let started = Instant::now();
        assert!(!sub.change(&mut conn, &command, 1, &mut probe).await);
        assert!(started.elapsed() < sub.cfg.response_timeout, "not a timeout");
    }

    #[tokio::test]
    async fn an_unreadable_message_is_dropped_and_the_next_one_delivered() {
        let (sub, mut rx, mut conn, mut redis) = subscriber();
        let a = channel(&sub, &alice());
        let mut bytes = push("message", &a, b"m7:1:\xff");
        bytes.extend(push("message", "sb:someone else's", b"m7:1:x"));
        bytes.extend(push("message", &a, b"m7:2:ok"));
        redis.write_all(&bytes).await.unwrap();
        let mut probe = Probe::default();
        while rx.is_empty() {
            tokio::time::timeout(Duration::from_secs(5), conn.fill()).await.unwrap().unwrap();
            assert_eq!(sub.drain(&mut conn, &mut probe).unwrap(), 0);
        }
        assert_eq!(delivered(&mut rx), vec![(2, "ok".into())]);
    }

    #[test]
    fn channel_messages_parse_or_are_refused() {
        let key = StreamKey::user("acme", "alice");
        match parse(&key, b"m17:4:{\"a\":1}") {
            Some(BusEvent::Message { pos, payload, .. }) => {
                assert_eq!(pos, StreamPos { epoch: 17, seq: 4 });
                assert_eq!(&*payload, "{\"a\":1}");
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(parse(&key, b"s:x:y"), Some(BusEvent::Signal { payload, .. }) if &*payload == "x:y")
        );
        for bad in [&b"m1:x:p"[..], b"mz", b"q:1", b"m1:2", b"\xff"] {
            assert!(parse(&key, bad).is_none(), "{bad:?}");
        }
    }
}
