//! The Redis driver against the bus contract (`switchboard::BusOp`'s docs, and the model bus of
//! the test kit, which the core's cluster tests run on): each operation performed on a real
//! `redis-server`, through the driver's [`BusLink`] exactly as the hub task uses it, and the
//! link's failure handling (a killed subscription, a deaf connection, a Redis that forgot its
//! scripts, a dead node's leases).

use std::collections::VecDeque;
use std::time::Duration;

use switchboard::{
    BusEntry, BusFailure, BusOp, BusReply, LeaseHolder, NodeId, OpId, PresenceHeld, StreamKey,
    StreamPos, UserId,
};
use switchboard_server::bus::redis::{self, RedisConfig, RedisStartError};
use switchboard_server::bus::{BusEvent, BusLink, BusReader};

mod procs;

use procs::Redis;

const WAIT: Duration = Duration::from_secs(15);
const TTL: Duration = Duration::from_secs(60);

/// A driver on its own key prefix, with its events read one by one.
struct Link {
    link: BusLink,
    next: u64,
    /// Events read while waiting for something else.
    stash: VecDeque<BusEvent>,
}

fn config(redis: &Redis, node: &str) -> RedisConfig {
    let mut cfg = RedisConfig::new(redis.url(), NodeId::new(node));
    cfg.prefix = format!("test{}", procs::free_port());
    cfg.probe_interval = Duration::from_millis(100);
    cfg.probe_timeout = Duration::from_millis(600);
    cfg.heartbeat_interval = Duration::from_millis(100);
    cfg.node_timeout = Duration::from_millis(800);
    cfg.max_backoff = Duration::from_millis(300);
    cfg
}

impl Link {
    fn start(cfg: RedisConfig) -> Link {
        Link { link: redis::start(cfg).expect("valid URL"), next: 0, stash: VecDeque::new() }
    }

    fn id(&mut self) -> OpId {
        self.next += 1;
        OpId::from_raw(0, self.next)
    }

    async fn event(&mut self) -> BusEvent {
        if let Some(ev) = self.stash.pop_front() {
            return ev;
        }
        tokio::time::timeout(WAIT, self.link.events.recv())
            .await
            .expect("an event in time")
            .expect("the driver runs")
    }

    /// Sends `op` and waits for its reply, keeping other events for later.
    async fn call(&mut self, make: impl FnOnce(OpId) -> BusOp) -> Result<BusReply, BusFailure> {
        let id = self.id();
        self.link.ops.send(make(id)).await.expect("driver runs");
        let mut other = VecDeque::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let ev = tokio::time::timeout_at(deadline, self.link.events.recv())
                .await
                .expect("a reply in time")
                .expect("the driver runs");
            match ev {
                BusEvent::Reply { op, reply } if op == id => {
                    self.stash.extend(other);
                    return reply;
                }
                ev => other.push_back(ev),
            }
        }
    }

    /// The link's reader (for the HTTP layer), once the link is up.
    async fn reader(&self) -> BusReader {
        let reader = self.link.reader.clone().expect("the Redis driver has a reader");
        let deadline = tokio::time::Instant::now() + WAIT;
        while !reader.is_up() {
            assert!(tokio::time::Instant::now() < deadline, "the link came up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        reader
    }

    async fn send(&mut self, op: BusOp) {
        self.link.ops.send(op).await.expect("driver runs");
    }

    async fn subscribe(&mut self, stream: &StreamKey) -> StreamPos {
        match self.call(|op| BusOp::Subscribe { op, stream: stream.clone() }).await {
            Ok(BusReply::Subscribed { top }) => top,
            other => panic!("subscribe: {other:?}"),
        }
    }

    /// Appends (keeping 3 entries) and returns the outcome.
    async fn try_append(
        &mut self,
        stream: &StreamKey,
        payload: &str,
        key: Option<&str>,
    ) -> Result<BusReply, BusFailure> {
        self.call(|op| BusOp::Append {
            op,
            stream: stream.clone(),
            payload: payload.into(),
            idempotency_key: key.map(Into::into),
            keep: 3,
            ttl: TTL,
        })
        .await
    }

    async fn append(&mut self, stream: &StreamKey, payload: &str, key: Option<&str>) -> BusReply {
        self.try_append(stream, payload, key).await.expect("append")
    }

    async fn fetch(&mut self, stream: &StreamKey, after: u64, limit: u32) -> (StreamPos, Vec<u64>) {
        let reply = self.call(|op| BusOp::Fetch { op, stream: stream.clone(), after, limit }).await;
        match reply {
            Ok(BusReply::Fetched { top, entries }) => {
                (top, entries.iter().map(|e| e.seq).collect())
            }
            other => panic!("fetch: {other:?}"),
        }
    }

    /// The next live message or signal (skipping link state changes).
    async fn live(&mut self) -> BusEvent {
        loop {
            match self.event().await {
                ev @ (BusEvent::Message { .. } | BusEvent::Signal { .. }) => return ev,
                BusEvent::Down | BusEvent::Up => {}
                BusEvent::Reply { op, .. } => panic!("a reply nobody waits for: {op}"),
            }
        }
    }

    /// Waits for `Down` then `Up`, dropping anything else.
    async fn down_then_up(&mut self) {
        let mut seen_down = false;
        loop {
            match self.event().await {
                BusEvent::Down => seen_down = true,
                BusEvent::Up if seen_down => return,
                _ => {}
            }
        }
    }
}

fn appended(reply: BusReply) -> StreamPos {
    match reply {
        BusReply::Appended { pos } => pos,
        other => panic!("expected Appended, got {other:?}"),
    }
}

fn holder(node: &str, conn: u64) -> LeaseHolder {
    LeaseHolder { node: NodeId::new(node), conn }
}

async fn admin(redis: &Redis) -> ::redis::aio::MultiplexedConnection {
    let client = ::redis::Client::open(redis.url()).unwrap();
    client.get_multiplexed_async_connection().await.unwrap()
}

#[tokio::test]
async fn streams_append_fetch_trim_rotate_and_deliver_byte_for_byte() {
    let redis = Redis::start();
    let mut bus = Link::start(config(&redis, "n1"));
    let alice = StreamKey::user("acme", "alice");
    let other = StreamKey::user("acme:alice", "");
    assert_eq!(bus.subscribe(&alice).await, StreamPos { epoch: 0, seq: 0 }, "a new stream");

    // Payloads are opaque: separators, quotes and non-ASCII survive as they were.
    let payloads = ["{\"a\":1}", "m1:2:x", "", "ünï\ncode:\"", "5"];
    let mut epoch = 0;
    for (i, payload) in payloads.iter().enumerate() {
        let pos = appended(bus.append(&alice, payload, None).await);
        assert_eq!(pos.seq, i as u64 + 1);
        assert!(pos.epoch > 0 && (epoch == 0 || pos.epoch == epoch), "{pos:?}");
        epoch = pos.epoch;
        match bus.live().await {
            BusEvent::Message { stream, pos: got, payload: text } => {
                assert_eq!((stream, got), (alice.clone(), pos));
                assert_eq!(&*text, *payload);
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(epoch < 1 << 53, "epochs stay exact in JavaScript numbers: {epoch}");

    // keep = 3: the log holds seqs 3..=5; a fetch is the top plus what is left after `after`.
    let top = StreamPos { epoch, seq: 5 };
    assert_eq!(bus.fetch(&alice, 0, 100).await, (top, vec![3, 4, 5]));
    assert_eq!(bus.fetch(&alice, 3, 1).await, (top, vec![4]));
    assert_eq!(bus.fetch(&alice, 5, 10).await, (top, vec![]));
    match bus.call(|op| BusOp::Fetch { op, stream: alice.clone(), after: 4, limit: 9 }).await {
        Ok(BusReply::Fetched { entries, .. }) => {
            assert_eq!(entries, vec![BusEntry { seq: 5, payload: "5".into() }]);
        }
        other => panic!("{other:?}"),
    }
    // Length-prefixed names: a look-alike stream is another stream.
    assert_eq!(bus.fetch(&other, 0, 10).await, (StreamPos { epoch: 0, seq: 0 }, vec![]));

    let tops = bus.call(|op| BusOp::Tops { op, streams: vec![other.clone(), alice.clone()] }).await;
    assert_eq!(tops, Ok(BusReply::Tops(vec![StreamPos { epoch: 0, seq: 0 }, top])));

    // Rotation happens only from the epoch named, and gives a later one starting at seq 0.
    let stale = bus.call(|op| BusOp::Rotate { op, stream: alice.clone(), epoch: epoch - 1 }).await;
    assert_eq!(stale, Ok(BusReply::Rotated { top }));
    let rotated = match bus.call(|op| BusOp::Rotate { op, stream: alice.clone(), epoch }).await {
        Ok(BusReply::Rotated { top }) => top,
        other => panic!("{other:?}"),
    };
    assert!(rotated.epoch > epoch && rotated.seq == 0, "{rotated:?}");
    assert_eq!(bus.fetch(&alice, 0, 10).await, (rotated, vec![]));
    let after = appended(bus.append(&alice, "again", None).await);
    assert_eq!(after, StreamPos { epoch: rotated.epoch, seq: 1 });
}

#[tokio::test]
async fn an_idempotency_key_appends_once_and_answers_the_first_position() {
    let redis = Redis::start();
    let mut bus = Link::start(config(&redis, "n1"));
    let room = StreamKey::room("acme", "lobby");
    bus.subscribe(&room).await;
    let first = appended(bus.append(&room, "one", Some("key-1")).await);
    assert_eq!(
        bus.append(&room, "one again", Some("key-1")).await,
        BusReply::Duplicate { pos: first }
    );
    let second = appended(bus.append(&room, "two", Some("key-2")).await);
    assert_eq!(second.seq, first.seq + 1, "the duplicate took no seq");
    let mut live = Vec::new();
    for _ in 0..2 {
        match bus.live().await {
            BusEvent::Message { pos, payload, .. } => live.push((pos.seq, payload.to_string())),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(live, vec![(1, "one".to_owned()), (2, "two".to_owned())], "published once each");
}

#[tokio::test]
async fn signals_reach_subscribers_unlogged() {
    let redis = Redis::start();
    let mut bus = Link::start(config(&redis, "n1"));
    let tenant = StreamKey::tenant("acme");
    bus.subscribe(&tenant).await;
    bus.send(BusOp::Signal { stream: tenant.clone(), payload: "close:7".into() }).await;
    match bus.live().await {
        BusEvent::Signal { stream, payload } => {
            assert_eq!((stream, &*payload), (tenant.clone(), "close:7"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(bus.fetch(&tenant, 0, 10).await.1, Vec::<u64>::new(), "not in the log");
}

#[tokio::test]
async fn the_urls_credentials_open_the_subscription_and_a_wrong_password_keeps_the_link_down() {
    let redis = Redis::start();
    let mut admin = admin(&redis).await;
    let acl = ["SETUSER", "bob", "on", ">s3cret", "~*", "&*", "+@all"];
    let _: () = ::redis::cmd("ACL").arg(&acl).query_async(&mut admin).await.unwrap();
    // From now on nobody gets in without a password (this connection is in already).
    let _: () = ::redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("other")
        .query_async(&mut admin)
        .await
        .unwrap();
    let with =
        |credentials: &str| redis.url().replace("redis://", &format!("redis://{credentials}@"));
    let mut cfg = config(&redis, "n1");
    cfg.url = with("bob:s3cret");
    let mut bus = Link::start(cfg);
    let alice = StreamKey::user("acme", "alice");
    bus.subscribe(&alice).await;
    let pos = appended(bus.append(&alice, "through AUTH", None).await);
    match bus.live().await {
        BusEvent::Message { pos: got, payload, .. } => {
            assert_eq!((got, &*payload), (pos, "through AUTH"));
        }
        other => panic!("{other:?}"),
    }
    let mut cfg = config(&redis, "n2");
    cfg.url = with("bob:wrong");
    let mut refused = Link::start(cfg);
    assert!(matches!(refused.event().await, BusEvent::Down), "the link never came up");
    let reply = refused.call(|op| BusOp::Subscribe { op, stream: alice.clone() }).await;
    assert_eq!(reply, Err(BusFailure::Retryable));
}

#[test]
fn a_url_other_than_tcp_is_refused_at_start() {
    // The pub/sub connection speaks TCP only; a Unix socket would leave the link down for good.
    let cfg = RedisConfig::new("redis+unix:///tmp/redis.sock", NodeId::new("n1"));
    assert!(matches!(redis::start(cfg), Err(RedisStartError::Unsupported)));
}

/// A lease of `holder` in `user`'s set of two places.
async fn take(bus: &mut Link, user: &StreamKey, holder: LeaseHolder, evict: bool) -> BusReply {
    let user = user.clone();
    let lease = |op| BusOp::Lease { op, user, holder, limit: 2, ttl: TTL, evict_oldest: evict };
    bus.call(lease).await.expect("lease")
}

#[tokio::test]
async fn leases_grant_refuse_evict_renew_and_release() {
    let redis = Redis::start();
    let mut bus = Link::start(config(&redis, "n1"));
    let user = StreamKey::user("acme", "alice");
    let granted = BusReply::Leased { granted: true, evicted: None };
    assert_eq!(take(&mut bus, &user, holder("n1", 1), false).await, granted);
    assert_eq!(take(&mut bus, &user, holder("n2", 2), false).await, granted);
    assert_eq!(
        take(&mut bus, &user, holder("n1", 1), false).await,
        granted,
        "a holder renews its own"
    );
    let refused = BusReply::Leased { granted: false, evicted: None };
    assert_eq!(take(&mut bus, &user, holder("n1", 3), false).await, refused);
    assert_eq!(
        take(&mut bus, &user, holder("n1", 3), true).await,
        BusReply::Leased { granted: true, evicted: Some(holder("n1", 1)) },
        "the oldest gives way"
    );
    // Renewing: held ones extend; a lost one comes back only while there is room.
    let renew = bus
        .call(|op| BusOp::Renew {
            op,
            leases: vec![
                (user.clone(), holder("n2", 2), 2),
                (user.clone(), holder("n1", 3), 2),
                (user.clone(), holder("n9", 9), 2),
            ],
            ttl: TTL,
        })
        .await;
    assert_eq!(renew, Ok(BusReply::Renewed { refused: vec![holder("n9", 9)] }));
    bus.send(BusOp::Release { user: user.clone(), holder: holder("n2", 2) }).await;
    assert_eq!(
        take(&mut bus, &user, holder("n9", 9), false).await,
        granted,
        "released room is reused"
    );
}

#[tokio::test]
async fn a_dead_nodes_leases_are_released_after_its_heartbeats_stop() {
    let redis = Redis::start();
    let cfg = config(&redis, "alive");
    let prefix = cfg.prefix.clone();
    let mut bus = Link::start(cfg);
    let user = StreamKey::user("acme", "bob");
    let lease = |op, node: &str| BusOp::Lease {
        op,
        user: user.clone(),
        holder: holder(node, 1),
        limit: 1,
        ttl: TTL,
        evict_oldest: false,
    };
    // Another node takes bob's only place, then dies: its heartbeat stops.
    let mut ghost_cfg = config(&redis, "ghost");
    ghost_cfg.prefix = prefix;
    let mut ghost = Link::start(ghost_cfg);
    let got = ghost.call(|op| lease(op, "ghost")).await;
    assert_eq!(got, Ok(BusReply::Leased { granted: true, evicted: None }));
    let refused = bus.call(|op| lease(op, "alive")).await;
    assert_eq!(refused, Ok(BusReply::Leased { granted: false, evicted: None }), "ghost holds it");
    drop(ghost); // its tasks end with the runtime's next turns; its registry entry goes stale
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match bus.call(|op| lease(op, "alive")).await {
            Ok(BusReply::Leased { granted: true, .. }) => break,
            Ok(BusReply::Leased { granted: false, .. }) => {}
            other => panic!("{other:?}"),
        }
        // Well before the lease's own 60 s expiry.
        assert!(tokio::time::Instant::now() < deadline, "the dead node's lease was not released");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn scripts_are_reloaded_when_redis_forgot_them() {
    let redis = Redis::start();
    let mut bus = Link::start(config(&redis, "n1"));
    let alice = StreamKey::user("acme", "alice");
    appended(bus.append(&alice, "one", None).await);
    let mut admin = admin(&redis).await;
    let _: () = ::redis::cmd("SCRIPT").arg("FLUSH").query_async(&mut admin).await.unwrap();
    let pos = appended(bus.append(&alice, "two", None).await);
    assert_eq!(pos.seq, 2, "appended once, after loading the script again");
    assert_eq!(bus.fetch(&alice, 0, 10).await.1, vec![1, 2]);
}

#[tokio::test]
async fn a_killed_subscription_is_reported_and_restored() {
    let redis = Redis::start();
    let mut bus = Link::start(config(&redis, "n1"));
    let alice = StreamKey::user("acme", "alice");
    bus.subscribe(&alice).await;
    let mut admin = admin(&redis).await;
    let _: () = ::redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut admin)
        .await
        .unwrap();
    bus.down_then_up().await;
    let pos = appended(bus.append(&alice, "after", None).await);
    match bus.live().await {
        BusEvent::Message { pos: got, .. } => assert_eq!(got, pos, "the subscription is back"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_deaf_link_is_found_by_the_probe() {
    let redis = Redis::start();
    let mut bus = Link::start(config(&redis, "n1"));
    let alice = StreamKey::user("acme", "alice");
    bus.subscribe(&alice).await;
    // Redis stops answering anyone for 2 s: every connection stays open, nothing arrives.
    let mut admin = admin(&redis).await;
    let _: () =
        ::redis::cmd("CLIENT").arg("PAUSE").arg(2000).query_async(&mut admin).await.unwrap();
    bus.down_then_up().await;
    let pos = appended(bus.append(&alice, "after", None).await);
    match bus.live().await {
        BusEvent::Message { pos: got, .. } => assert_eq!(got, pos),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn operations_fail_retryable_while_redis_is_gone() {
    let mut redis = Redis::start();
    let mut bus = Link::start(config(&redis, "n1"));
    let alice = StreamKey::user("acme", "alice");
    appended(bus.append(&alice, "one", None).await);
    let reader = bus.reader().await;
    redis.kill();
    let reply = bus.try_append(&alice, "lost?", None).await;
    assert_eq!(reply, Err(BusFailure::Retryable));
    let lobby = StreamKey::room("acme", "lobby");
    let scope = lobby.clone();
    let read = bus.call(|op| BusOp::PresenceRead { op, scope, limit: 10 }).await;
    assert_eq!(read, Err(BusFailure::Retryable));
    // The reader fails fast too: retryable (the link may not have noticed yet), or down.
    let failed = reader.presence(lobby, 10).await.expect_err("Redis is gone");
    assert!(failed.is_retryable(), "{failed:?}");
    redis.restart();
    bus.down_then_up().await;
    let pos = appended(bus.append(&alice, "two", None).await);
    assert_eq!(pos.seq, 1, "Redis came back empty: a new stream");
}

#[tokio::test]
async fn a_redis_out_of_memory_fails_appends_as_retryable() {
    let redis = Redis::start();
    let mut bus = Link::start(config(&redis, "n1"));
    let alice = StreamKey::user("acme", "alice");
    appended(bus.append(&alice, "one", None).await);
    let mut admin = admin(&redis).await;
    let set = |value: &'static str| {
        let mut cmd = ::redis::cmd("CONFIG");
        cmd.arg("SET").arg("maxmemory").arg(value);
        cmd
    };
    let _: () = ::redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg("noeviction")
        .query_async(&mut admin)
        .await
        .unwrap();
    let _: () = set("1").query_async(&mut admin).await.unwrap();
    let full = bus.try_append(&alice, "two", None).await;
    assert_eq!(full, Err(BusFailure::Retryable), "a full Redis may take it later");
    let _: () = set("0").query_async(&mut admin).await.unwrap();
    assert_eq!(appended(bus.append(&alice, "two", None).await).seq, 2, "nothing half-done");
}

/// One node's presence write in the lobby.
async fn presence_update(
    bus: &mut Link,
    node: &str,
    replace: bool,
    joins: &[(&str, Option<&str>)],
    leaves: &[&str],
    ttl: Duration,
) -> Result<BusReply, BusFailure> {
    let scope = StreamKey::room("acme", "lobby");
    bus.call(|op| BusOp::PresenceUpdate {
        op,
        scope,
        node: NodeId::new(node),
        replace,
        joins: joins.iter().map(|(u, m)| (UserId::from(*u), m.map(Into::into))).collect(),
        leaves: leaves.iter().map(|u| UserId::from(*u)).collect(),
        ttl,
        signal: format!("{node} wrote").into(),
    })
    .await
}

/// Sets as `(node, users)`, sorted.
type Sets = Vec<(String, Vec<String>)>;

/// A presence read's answer as sorted [`Sets`], and whether it was cut short.
fn sorted(held: Vec<PresenceHeld>, truncated: bool) -> (Sets, bool) {
    let mut sets: Sets = held
        .into_iter()
        .map(|h| {
            assert!(h.ttl > Duration::ZERO && h.ttl <= TTL, "{:?}", h.ttl);
            let mut users: Vec<String> = h.users.iter().map(|u| u.0.to_string()).collect();
            users.sort();
            (h.node.to_string(), users)
        })
        .collect();
    sets.sort();
    (sets, truncated)
}

/// The lobby's sets as `(node, users)`, sorted, and whether the read was cut short; read as the
/// hub reads them, and checked against the HTTP layer's reader.
async fn presence_read(bus: &mut Link, limit: u32) -> (Sets, bool) {
    let scope = StreamKey::room("acme", "lobby");
    let read = match bus.call(|op| BusOp::PresenceRead { op, scope: scope.clone(), limit }).await {
        Ok(BusReply::Presence { held, truncated }) => sorted(held, truncated),
        other => panic!("presence read: {other:?}"),
    };
    let (held, truncated) = bus.reader().await.presence(scope, limit).await.expect("a read");
    assert_eq!(sorted(held, truncated), read, "the reader reads what the hub reads");
    read
}

#[tokio::test]
async fn presence_sets_are_written_read_refreshed_and_signalled_per_node() {
    let redis = Redis::start();
    let cfg = config(&redis, "n1");
    let mut other = config(&redis, "n2");
    other.prefix = cfg.prefix.clone();
    let prefix = cfg.prefix.clone();
    let (mut a, mut b) = (Link::start(cfg), Link::start(other));
    let lobby = StreamKey::room("acme", "lobby");
    b.subscribe(&lobby).await;
    let meta = r#"{"name":"Alice"}"#;
    let written = Ok(BusReply::PresenceWritten);
    assert_eq!(
        presence_update(&mut a, "n1", true, &[("alice", Some(meta)), ("bob", None)], &[], TTL)
            .await,
        written
    );
    assert_eq!(presence_update(&mut b, "n2", true, &[("carol", None)], &[], TTL).await, written);
    // Each write's signal reaches the scope's subscribers, unlogged, as published.
    match b.live().await {
        BusEvent::Signal { stream, payload } => {
            assert_eq!((stream, &*payload), (lobby.clone(), "n1 wrote"))
        }
        other => panic!("{other:?}"),
    }
    let sets = |v: &[(&str, &[&str])]| -> Sets {
        v.iter()
            .map(|(n, us)| ((*n).to_owned(), us.iter().map(|u| (*u).to_owned()).collect()))
            .collect()
    };
    assert_eq!(
        presence_read(&mut b, 100).await,
        (sets(&[("n1", &["alice", "bob"]), ("n2", &["carol"])]), false)
    );
    // Metadata comes back byte for byte; none reads as none.
    let scope = lobby.clone();
    let Ok(BusReply::Presence { held, .. }) =
        a.call(|op| BusOp::PresenceRead { op, scope, limit: 100 }).await
    else {
        panic!("a read")
    };
    let n1 = held.iter().find(|h| h.node.as_str() == "n1").expect("n1's set");
    assert!(n1.users.contains(&(UserId::from("alice"), Some(meta.into()))));
    assert!(n1.users.contains(&(UserId::from("bob"), None)));
    // Incremental writes; a replace drops what was there; the limit cuts a read short.
    presence_update(&mut a, "n1", false, &[("dave", None)], &["bob"], TTL).await.unwrap();
    assert_eq!(
        presence_read(&mut b, 100).await.0,
        sets(&[("n1", &["alice", "dave"]), ("n2", &["carol"])])
    );
    presence_update(&mut a, "n1", true, &[("erin", None)], &[], TTL).await.unwrap();
    assert_eq!(presence_read(&mut b, 100).await.0, sets(&[("n1", &["erin"]), ("n2", &["carol"])]));
    assert!(presence_read(&mut b, 1).await.1, "two users, one asked for");
    // The last user leaving removes the node's set and its index entry.
    presence_update(&mut b, "n2", false, &[], &["carol"], TTL).await.unwrap();
    assert_eq!(presence_read(&mut a, 100).await.0, sets(&[("n1", &["erin"])]));

    // A refresh extends the sets that exist (publishing their signals) and names the others.
    let tenant = StreamKey::tenant("acme");
    let scopes =
        vec![(lobby.clone(), "n1 refreshed".into()), (tenant.clone(), "n1 nothing".into())];
    let node = NodeId::new("n1");
    let refreshed = a.call(|op| BusOp::PresenceRefresh { op, node, ttl: TTL, scopes }).await;
    assert_eq!(refreshed, Ok(BusReply::PresenceRefreshed { missing: vec![tenant] }));
    let mut seen = Vec::new();
    while seen.last().map(String::as_str) != Some("n1 refreshed") {
        if let BusEvent::Signal { payload, .. } = b.live().await {
            seen.push(payload.to_string());
        }
    }
    assert!(!seen.contains(&"n1 nothing".to_owned()));

    // A set expires as a whole when it is not refreshed; the read cleans the index.
    presence_update(&mut b, "n2", true, &[("fay", None)], &[], Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(presence_read(&mut a, 100).await.0.len(), 2);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(presence_read(&mut a, 100).await.0, sets(&[("n1", &["erin"])]));
    let mut admin = admin(&redis).await;
    let index = format!("{prefix}:{{r4:acme5:lobby}}:pn");
    let listed: Vec<String> =
        ::redis::cmd("ZRANGE").arg(&index).arg(0).arg(-1).query_async(&mut admin).await.unwrap();
    assert_eq!(listed, ["n1"]);

    // A refresh costs one script call per scope, whatever the scope holds: 10 scopes, 10 calls.
    let rooms: Vec<StreamKey> = (0..10).map(|i| StreamKey::room("acme", format!("r{i}"))).collect();
    for room in &rooms {
        let (scope, node) = (room.clone(), NodeId::new("n1"));
        let joins = (0..50).map(|u| (UserId::from(format!("u{u}")), None)).collect();
        let signal = "s".into();
        let write = |op| BusOp::PresenceUpdate {
            op,
            scope,
            node,
            replace: true,
            joins,
            leaves: Vec::new(),
            ttl: TTL,
            signal,
        };
        assert_eq!(a.call(write).await, Ok(BusReply::PresenceWritten));
    }
    let before = evalsha_calls(&mut admin).await;
    let scopes = rooms.iter().map(|r| (r.clone(), "s".into())).collect();
    let node = NodeId::new("n1");
    let refreshed = a.call(|op| BusOp::PresenceRefresh { op, node, ttl: TTL, scopes }).await;
    assert_eq!(refreshed, Ok(BusReply::PresenceRefreshed { missing: Vec::new() }));
    assert_eq!(evalsha_calls(&mut admin).await - before, 10);

    // Redis restarted empty (and forgot its scripts): the refresh finds the set gone.
    let _: () = ::redis::cmd("FLUSHALL").query_async(&mut admin).await.unwrap();
    let _: () = ::redis::cmd("SCRIPT").arg("FLUSH").query_async(&mut admin).await.unwrap();
    let scopes = vec![(lobby.clone(), "again".into())];
    let node = NodeId::new("n1");
    let refreshed = a.call(|op| BusOp::PresenceRefresh { op, node, ttl: TTL, scopes }).await;
    assert_eq!(refreshed, Ok(BusReply::PresenceRefreshed { missing: vec![lobby.clone()] }));
    assert_eq!(presence_read(&mut a, 100).await, (Vec::new(), false));
}

/// `EVALSHA` calls Redis has served (`INFO commandstats`).
async fn evalsha_calls(admin: &mut ::redis::aio::MultiplexedConnection) -> u64 {
    let info: String = ::redis::cmd("INFO").arg("commandstats").query_async(admin).await.unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|rest| rest.split(',').next()?.parse().ok())
        .unwrap_or(0)
}

/// Redis Cluster runs a script only on keys it is given: the read takes the scope's node index
/// first, then hands the script the index and each listed node's set. Node ids that would
/// concatenate alike name distinct sets; a script Redis forgot is loaded and the read answered.
#[tokio::test]
async fn presence_reads_name_each_nodes_set_and_survive_a_forgotten_script() {
    let redis = Redis::start();
    let cfg = config(&redis, "n:1");
    let prefix = cfg.prefix.clone();
    let mut bus = Link::start(cfg);
    for (node, user) in [("n:1", "alice"), ("n", "bob"), ("n:1:x", "carol")] {
        let written = presence_update(&mut bus, node, true, &[(user, None)], &[], TTL).await;
        assert_eq!(written, Ok(BusReply::PresenceWritten));
    }
    let want = |v: &[(&str, &str)]| -> Sets {
        v.iter().map(|(n, u)| ((*n).to_owned(), vec![(*u).to_owned()])).collect()
    };
    let all = want(&[("n", "bob"), ("n:1", "alice"), ("n:1:x", "carol")]);
    assert_eq!(presence_read(&mut bus, 100).await, (all.clone(), false));
    // Redis forgot its scripts: both reads load it again and answer.
    let mut admin = admin(&redis).await;
    let _: () = ::redis::cmd("SCRIPT").arg("FLUSH").query_async(&mut admin).await.unwrap();
    assert_eq!(presence_read(&mut bus, 100).await, (all, false));
    // A set gone while the index still lists its node (expired between two reads): left out,
    // and the index forgets the node.
    let set = format!("{prefix}:{{r4:acme5:lobby}}:p:1:n");
    let _: () = ::redis::cmd("DEL").arg(&set).query_async(&mut admin).await.unwrap();
    let rest = want(&[("n:1", "alice"), ("n:1:x", "carol")]);
    assert_eq!(presence_read(&mut bus, 100).await, (rest, false));
    let index = format!("{prefix}:{{r4:acme5:lobby}}:pn");
    let mut listed: Vec<String> =
        ::redis::cmd("ZRANGE").arg(&index).arg(0).arg(-1).query_async(&mut admin).await.unwrap();
    listed.sort();
    assert_eq!(listed, ["n:1", "n:1:x"]);
    // A scope nobody is in: no node listed, an empty answer.
    let scope = StreamKey::room("acme", "empty");
    let reader = bus.reader().await;
    assert_eq!(reader.presence(scope, 10).await, Ok((Vec::new(), false)));
}
