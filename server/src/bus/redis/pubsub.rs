//! The subscriber: the pub/sub connection, batched subscriptions restored after every
//! reconnect, and the liveness probe that reports a deaf connection as the bus going down.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use redis::aio::{ConnectionManager, PubSubSink, PubSubStream};
use redis::{Msg, Pipeline};
use switchboard::{BusFailure, BusReply, OpId, StreamKey, StreamPos};
use tokio::sync::mpsc;

use super::keys::{self, StreamNames};
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
    client: redis::Client,
    conn: ConnectionManager,
    cfg: Arc<RedisConfig>,
    events: mpsc::Sender<BusEvent>,
    metrics: Arc<BusMetrics>,
    /// Every subscription the hub holds, by channel name: restored after a reconnect.
    channels: HashMap<String, StreamKey>,
    probe_channel: String,
    /// Whether the hub was last told the link is up.
    reported_up: bool,
    /// Whether the current session reached up (resets the reconnect backoff).
    reached_up: bool,
}

impl Subscriber {
    pub(super) fn new(
        client: redis::Client,
        conn: ConnectionManager,
        cfg: Arc<RedisConfig>,
        events: mpsc::Sender<BusEvent>,
        metrics: Arc<BusMetrics>,
    ) -> Self {
        let probe_channel = keys::probe_channel(&cfg.prefix, &cfg.node);
        Subscriber {
            client,
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
                self.channels.insert(channel, stream);
                self.reply(op, at, Err(BusFailure::Retryable)).await;
            }
            SubRequest::Unsubscribe { stream } => {
                self.channels.remove(&StreamNames::of(&self.cfg.prefix, &stream).channel());
            }
        }
    }

    async fn reply(&self, op: OpId, at: Instant, reply: Result<BusReply, BusFailure>) {
        self.metrics.record("subscribe", at.elapsed(), reply.is_err());
        let _ = self.events.send(BusEvent::Reply { op, reply }).await;
    }

    /// One connection's life: connect, restore, report up, then serve until it is lost.
    async fn session(&mut self, requests: &mut mpsc::Receiver<SubRequest>) -> Lost {
        let connect =
            tokio::time::timeout(self.cfg.connect_timeout, self.client.get_async_pubsub());
        let Ok(Ok(pubsub)) = connect.await else { return Lost::Closed };
        let (mut sink, mut stream) = pubsub.split();
        // Restore: the probe channel, then every subscription, in batches.
        let mut all: Vec<String> = vec![self.probe_channel.clone()];
        all.extend(self.channels.keys().cloned());
        for chunk in all.chunks(self.cfg.subscribe_batch.max(1)) {
            if !self.bounded(sink.subscribe(chunk)).await {
                return Lost::Closed;
            }
        }
        // The link is up only once a probe went round (the publishing side works too).
        let mut probe = Probe::default();
        if !self.probe_round_trip(&mut stream, &mut probe).await {
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
                msg = stream.next() => {
                    let Some(msg) = msg else { return Lost::Closed };
                    self.on_message(&msg, &mut probe);
                }
                n = requests.recv_many(&mut batch, self.cfg.subscribe_batch.max(1)) => {
                    if n == 0 {
                        return Lost::Stopped;
                    }
                    if !self.serve(&mut sink, std::mem::take(&mut batch)).await {
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

    /// Awaits a subscription change within the response timeout.
    async fn bounded(
        &self,
        fut: impl std::future::Future<Output = redis::RedisResult<()>>,
    ) -> bool {
        matches!(tokio::time::timeout(self.cfg.response_timeout, fut).await, Ok(Ok(())))
    }

    /// Publishes a probe and waits for it (the first one of a session).
    async fn probe_round_trip(&mut self, stream: &mut PubSubStream, probe: &mut Probe) -> bool {
        self.send_probe(probe);
        let deadline = tokio::time::Instant::now() + self.cfg.probe_timeout;
        while probe.outstanding.is_some() {
            match tokio::time::timeout_at(deadline, stream.next()).await {
                Ok(Some(msg)) => self.on_message(&msg, probe),
                Ok(None) | Err(_) => return false,
            }
        }
        true
    }

    fn send_probe(&mut self, probe: &mut Probe) {
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
    fn on_message(&mut self, msg: &Msg, probe: &mut Probe) {
        let channel = msg.get_channel_name();
        if channel == self.probe_channel {
            let n: Option<u64> =
                std::str::from_utf8(msg.get_payload_bytes()).ok().and_then(|t| t.parse().ok());
            if n == Some(probe.sent) {
                probe.outstanding = None;
            }
            return;
        }
        let Some(stream) = self.channels.get(channel) else { return };
        let Some(event) = parse(stream, msg.get_payload_bytes()) else {
            eprintln!("switchboard: an unreadable message on {channel:?} was dropped");
            return;
        };
        // Never wait here: a full queue drops the message, and the hub repairs the gap.
        if self.events.try_send(event).is_err() {
            BusMetrics::bump(&self.metrics.messages_dropped);
        }
    }

    /// Subscribes and unsubscribes a batch of requests, then answers the subscriptions with
    /// their streams' tops read after the subscriptions were confirmed. `false`: the
    /// connection failed.
    async fn serve(&mut self, sink: &mut PubSubSink, batch: Vec<SubRequest>) -> bool {
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
        if !unsubscribe.is_empty() {
            // A stream both dropped and taken again in this batch stays subscribed.
            unsubscribe.retain(|c| !subscribe.iter().any(|s| &s.3 == c));
            for c in &unsubscribe {
                self.channels.remove(c);
            }
            if !unsubscribe.is_empty() && !self.bounded(sink.unsubscribe(&unsubscribe)).await {
                return false;
            }
        }
        if subscribe.is_empty() {
            return true;
        }
        let channels: Vec<&String> = subscribe.iter().map(|s| &s.3).collect();
        for (_, stream, _, channel) in &subscribe {
            self.channels.insert(channel.clone(), stream.clone());
        }
        if !self.bounded(sink.subscribe(&channels)).await {
            for (op, _, at, _) in subscribe {
                self.reply(op, at, Err(BusFailure::Retryable)).await;
            }
            return false;
        }
        let mut pipe = Pipeline::new();
        for (_, stream, _, _) in &subscribe {
            pipe.cmd("HMGET")
                .arg(StreamNames::of(&self.cfg.prefix, stream).meta())
                .arg("e")
                .arg("s");
        }
        let tops = self.conn.send_packed_commands(&pipe, 0, pipe.len()).await;
        for (i, (op, _, at, _)) in subscribe.into_iter().enumerate() {
            let reply = match &tops {
                Ok(values) => match values.get(i).map(scripts::top) {
                    Some(Ok(top)) => Ok(BusReply::Subscribed { top }),
                    _ => Err(BusFailure::Refused),
                },
                Err(_) => Err(BusFailure::Retryable),
            };
            self.reply(op, at, reply).await;
        }
        true
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
    use super::*;

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
