//! The Redis driver: runs a clustered hub's [`BusOp`]s on Redis (DESIGN §11).
//!
//! [`start`] returns the hub task's [`BusLink`] and spawns four tasks:
//!
//! - **the executor** takes operations in arrival order and sends each batch of them (up to
//!   [`RedisConfig::batch`]) to Redis as one pipeline on a multiplexed connection, so a publish
//!   costs one Redis round trip whatever its fan-out, and appends to a stream are applied in the
//!   order the hub issued them. Every stream operation is one Lua script (module `scripts`): append
//!   (epoch if absent, next seq, log push, trim, expiries, idempotency key, publish), fetch (top
//!   and range), rotate, lease and renew; tops are a batch of `HMGET`s. Presence is three
//!   scripts: an update writes one node's set in a scope (a hash that expires as a whole, listed
//!   in the scope's node index by expiry) and publishes its signal; a refresh is one script call
//!   per scope, all in one pipeline (the node's sets live another `ttl`, each publishing its
//!   signal; a set Redis lost is reported, not recreated); a read returns every live set, in
//!   two steps (`reads`: the scope's node index, then one script given the index and each
//!   listed node's set as KEYS, since on Redis Cluster a script may touch only the keys it is
//!   given), after the rest of its batch. A script Redis no longer knows (`NOSCRIPT`: it
//!   restarted) is loaded and that operation retried once — safe, since a script that was not
//!   found did not run.
//! - **the subscriber** owns the pub/sub connection, a plain TCP socket it reads itself
//!   (`resp`: pushes are parsed in place from one buffer, not built into `redis::Value`s): it
//!   subscribes in batches (one `SUBSCRIBE` for every request waiting), reads each new stream's
//!   top after its subscription is confirmed, restores every subscription after a reconnect
//!   before it reports the link up, and probes the link: every [`RedisConfig::probe_interval`] it
//!   publishes on a channel only it listens to, and a probe that does not come back within
//!   [`RedisConfig::probe_timeout`] means the connection is deaf (open, but not delivering) —
//!   reported as down, then reconnected.
//! - **the heartbeat** records this node in a registry every [`RedisConfig::heartbeat_interval`]
//!   and reads which nodes have been silent longer than [`RedisConfig::node_timeout`]: their
//!   leases are removed by the next lease or renewal on each user's set (the scripts take the
//!   dead nodes' member prefixes), so a crashed node's connections stop counting against quotas
//!   after `node_timeout` rather than after the whole lease lifetime.
//! - **the reader** serves the HTTP layer's [`BusReader`] (the link's
//!   `reader`): one query at a time on the same multiplexed connection, never through the hub
//!   task.
//!
//! Key names: the private module `keys`. Every wait on Redis is bounded
//! ([`RedisConfig::response_timeout`], [`RedisConfig::connect_timeout`]); the redis crate's own
//! defaults are shorter than a slow script needs.

mod keys;
mod pubsub;
mod reads;
mod resp;
mod scripts;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Pipeline, Value};
use switchboard::{BusFailure, BusOp, BusReply, LeaseHolder, NodeId, OpId, StreamKey, StreamPos};
use tokio::sync::mpsc;

use super::{BusEvent, BusLink, BusMetrics, BusReader, op_kind};
use keys::StreamNames;
use scripts::Scripts;

/// How the Redis driver connects and paces itself.
#[derive(Clone, Debug)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]` (or `rediss://` is not built in: no TLS).
    pub url: String,
    /// The first part of every key and channel name, so that several deployments can share a
    /// Redis.
    pub prefix: String,
    /// This node's id (the hub's `ClusterConfig::node`).
    pub node: NodeId,
    /// How long a command or pipeline may take before it fails as retryable. Keep it under the
    /// hub's `ClusterConfig::op_timeout`, so the hub hears the failure rather than a timeout.
    pub response_timeout: Duration,
    /// How long connecting may take.
    pub connect_timeout: Duration,
    /// Operations waiting for the executor; past it the hub fails them at once.
    pub ops_queue: usize,
    /// Events waiting for the hub task; a live message past it is dropped (and repaired).
    pub events_queue: usize,
    /// Operations per pipeline.
    pub batch: usize,
    /// Channels per `SUBSCRIBE`.
    pub subscribe_batch: usize,
    /// How often the subscriber probes its connection.
    pub probe_interval: Duration,
    /// How long a probe may take to come back before the link counts as deaf.
    pub probe_timeout: Duration,
    /// How often the node records itself in the registry.
    pub heartbeat_interval: Duration,
    /// How long a node may miss its heartbeats before it counts as dead and its leases are
    /// removed.
    pub node_timeout: Duration,
    /// The longest pause between reconnection attempts (they start at 100 ms and double, with
    /// jitter).
    pub max_backoff: Duration,
    /// The HTTP layer's queries ([`BusReader`]) waiting for the reader; past it they fail at
    /// once as `Overloaded`.
    pub queries_queue: usize,
}

impl RedisConfig {
    /// Defaults for a node `node` on the Redis at `url`.
    pub fn new(url: impl Into<String>, node: NodeId) -> Self {
        RedisConfig {
            url: url.into(),
            prefix: "sb".into(),
            node,
            response_timeout: Duration::from_millis(2500),
            connect_timeout: Duration::from_secs(2),
            ops_queue: 16 * 1024,
            events_queue: 16 * 1024,
            batch: 512,
            subscribe_batch: 1024,
            probe_interval: Duration::from_secs(1),
            probe_timeout: Duration::from_secs(3),
            heartbeat_interval: Duration::from_secs(1),
            node_timeout: Duration::from_secs(5),
            max_backoff: Duration::from_secs(2),
            queries_queue: 64,
        }
    }
}

/// Why the driver could not start.
#[derive(Debug, thiserror::Error)]
pub enum RedisStartError {
    /// The URL is not a Redis URL.
    #[error("invalid Redis URL: {0}")]
    Url(#[source] redis::RedisError),
    /// The URL is not `redis://host:port` (a Unix socket): the pub/sub connection speaks TCP only.
    #[error("unsupported Redis URL: only redis://[user:password@]host:port[/db] is supported")]
    Unsupported,
}

/// The nodes found dead, as lease-member prefixes, shared by the heartbeat and the executor.
type DeadNodes = Arc<Mutex<Arc<Vec<String>>>>;

/// Starts the driver's tasks (on the current tokio runtime) and returns the hub task's link.
/// Connecting happens in the background: while Redis is unreachable the link reports
/// [`BusEvent::Down`] and keeps trying.
pub fn start(cfg: RedisConfig) -> Result<BusLink, RedisStartError> {
    let client = redis::Client::open(cfg.url.as_str()).map_err(RedisStartError::Url)?;
    let endpoint =
        resp::Endpoint::of(client.get_connection_info()).ok_or(RedisStartError::Unsupported)?;
    let manager_cfg = ConnectionManagerConfig::new()
        .set_response_timeout(Some(cfg.response_timeout))
        .set_connection_timeout(Some(cfg.connect_timeout))
        .set_number_of_retries(1)
        .set_max_delay(cfg.max_backoff);
    let conn = ConnectionManager::new_lazy_with_config(client, manager_cfg)
        .map_err(RedisStartError::Url)?;
    let (ops_tx, ops_rx) = mpsc::channel(cfg.ops_queue);
    let (events_tx, events_rx) = mpsc::channel(cfg.events_queue);
    let (subs_tx, subs_rx) = mpsc::channel(cfg.ops_queue);
    let metrics = Arc::new(BusMetrics::default());
    let dead: DeadNodes = Arc::default();
    let scripts = Arc::new(Scripts::new());
    // A query is two round trips (a presence read), each bounded by the response timeout.
    let query_timeout = cfg.response_timeout.saturating_mul(2) + Duration::from_millis(500);
    let (reader, queries) = BusReader::new(cfg.queries_queue, query_timeout, metrics.clone());
    tokio::spawn(reads::serve(
        conn.clone(),
        scripts.clone(),
        cfg.prefix.clone(),
        metrics.clone(),
        queries,
    ));
    let cfg = Arc::new(cfg);
    tokio::spawn(
        Executor {
            conn: conn.clone(),
            cfg: cfg.clone(),
            scripts: scripts.clone(),
            events: events_tx.clone(),
            subs: subs_tx,
            metrics: metrics.clone(),
            dead: dead.clone(),
        }
        .run(ops_rx),
    );
    tokio::spawn(
        pubsub::Subscriber::new(
            endpoint,
            conn.clone(),
            cfg.clone(),
            events_tx.clone(),
            metrics.clone(),
        )
        .run(subs_rx),
    );
    tokio::spawn(heartbeat(conn, cfg, metrics.clone(), dead, events_tx));
    Ok(BusLink { ops: ops_tx, events: events_rx, metrics, reader: Some(reader) })
}

/// What the executor hands the subscriber.
#[derive(Debug)]
pub(crate) enum SubRequest {
    Subscribe { op: OpId, stream: StreamKey, at: Instant },
    Unsubscribe { stream: StreamKey },
}

/// Runs operations on Redis in pipelines, in arrival order.
struct Executor {
    conn: ConnectionManager,
    cfg: Arc<RedisConfig>,
    scripts: Arc<Scripts>,
    events: mpsc::Sender<BusEvent>,
    subs: mpsc::Sender<SubRequest>,
    metrics: Arc<BusMetrics>,
    dead: DeadNodes,
}

/// One operation's share of a pipeline: which commands are its, and how to read their replies.
struct Planned {
    op: BusOp,
    first: usize,
    count: usize,
}

impl Executor {
    async fn run(mut self, mut ops: mpsc::Receiver<BusOp>) {
        let mut batch = Vec::with_capacity(self.cfg.batch);
        while ops.recv_many(&mut batch, self.cfg.batch).await > 0 {
            let at = Instant::now();
            let mut rest = Vec::with_capacity(batch.len());
            let mut reads = Vec::new();
            for op in batch.drain(..) {
                match op {
                    BusOp::Subscribe { op, stream } => {
                        let _ = self.subs.send(SubRequest::Subscribe { op, stream, at }).await;
                    }
                    BusOp::Unsubscribe { stream } => {
                        let _ = self.subs.send(SubRequest::Unsubscribe { stream }).await;
                    }
                    read @ BusOp::PresenceRead { .. } => reads.push(read),
                    other => rest.push(other),
                }
            }
            if !rest.is_empty() {
                self.run_batch(rest, at, true).await;
            }
            if !reads.is_empty() {
                self.presence_reads(reads, at).await;
            }
        }
    }

    /// Sends one pipeline; with `retry`, operations whose scripts Redis did not know are run
    /// once more after loading the scripts.
    async fn run_batch(&mut self, batch: Vec<BusOp>, at: Instant, retry: bool) {
        let dead = self.dead.lock().map(|d| d.clone()).unwrap_or_default();
        let mut pipe = Pipeline::new();
        let mut planned = Vec::with_capacity(batch.len());
        for op in batch {
            let first = pipe.len();
            self.plan(&mut pipe, &op, &dead);
            planned.push(Planned { op, first, count: pipe.len() - first });
        }
        let result = if pipe.is_empty() {
            // Nothing this driver can send (an operation kind it does not know): no round trip.
            Ok(Vec::new())
        } else {
            self.conn.send_packed_commands(&pipe, 0, pipe.len()).await
        };
        let replies = match result {
            Ok(replies) if replies.len() == pipe.len() => replies,
            Ok(_) | Err(_) => {
                for p in planned {
                    self.finish(&p.op, at, Err(BusFailure::Retryable)).await;
                }
                return;
            }
        };
        let mut again = Vec::new();
        for p in planned {
            let mine = &replies[p.first..p.first + p.count];
            if retry && mine.iter().any(is_noscript) {
                again.push(p.op);
                continue;
            }
            let reply = self.read(&p.op, mine);
            self.finish(&p.op, at, reply).await;
        }
        if !again.is_empty() {
            let loaded = self.load_scripts().await;
            if loaded {
                Box::pin(self.run_batch(again, at, false)).await;
            } else {
                for op in again {
                    self.finish(&op, at, Err(BusFailure::Retryable)).await;
                }
            }
        }
    }

    async fn load_scripts(&mut self) -> bool {
        load_scripts(&mut self.conn, &self.scripts).await
    }

    /// Runs a batch's presence reads ([`reads::presence`]: two pipelines for all of them).
    async fn presence_reads(&mut self, ops: Vec<BusOp>, at: Instant) {
        let reads: Vec<reads::Read<'_>> = ops
            .iter()
            .filter_map(|op| match op {
                BusOp::PresenceRead { scope, limit, .. } => Some((scope, *limit)),
                _ => None,
            })
            .collect();
        let answers =
            reads::presence(&mut self.conn, &self.scripts, &self.cfg.prefix, &reads).await;
        for (op, answer) in ops.iter().zip(answers) {
            self.finish(op, at, answer).await;
        }
    }

    /// Adds `op`'s commands to the pipeline.
    fn plan(&self, pipe: &mut Pipeline, op: &BusOp, dead: &[String]) {
        let prefix = &self.cfg.prefix;
        match op {
            BusOp::Append { stream, payload, idempotency_key, keep, ttl, .. } => {
                // The names are written one after another into one buffer (once per publish:
                // one allocation instead of five); the pipeline copies each argument.
                let mut n = StreamNames::of(prefix, stream);
                let cmd = pipe.cmd("EVALSHA").arg(self.scripts.append.hash()).arg(3);
                cmd.arg(n.suffixed("m"));
                cmd.arg(n.suffixed("l"));
                // Unused without a key, but declared: a script names every key it could touch.
                cmd.arg(n.idempotency_in_place(idempotency_key.as_deref().unwrap_or("")));
                cmd.arg(n.suffixed("c"))
                    .arg(payload.as_bytes())
                    .arg(*keep)
                    .arg(millis(*ttl))
                    .arg(if idempotency_key.is_some() { "1" } else { "0" });
            }
            BusOp::Fetch { stream, after, limit, .. } => {
                let n = StreamNames::of(prefix, stream);
                pipe.cmd("EVALSHA")
                    .arg(self.scripts.fetch.hash())
                    .arg(2)
                    .arg(n.meta())
                    .arg(n.log())
                    .arg(*after)
                    .arg((*limit).max(1));
            }
            BusOp::Tops { streams, .. } => {
                for stream in streams {
                    let n = StreamNames::of(prefix, stream);
                    pipe.cmd("HMGET").arg(n.meta()).arg("e").arg("s");
                }
            }
            BusOp::Rotate { stream, epoch, .. } => {
                let n = StreamNames::of(prefix, stream);
                pipe.cmd("EVALSHA")
                    .arg(self.scripts.rotate.hash())
                    .arg(2)
                    .arg(n.meta())
                    .arg(n.log())
                    .arg(*epoch);
            }
            BusOp::Lease { user, holder, limit, ttl, evict_oldest, .. } => {
                let n = StreamNames::of(prefix, user);
                pipe.cmd("EVALSHA")
                    .arg(self.scripts.lease.hash())
                    .arg(2)
                    .arg(n.leases())
                    .arg(n.lease_order())
                    .arg(dead.len())
                    .arg(dead)
                    .arg(keys::holder_member(holder))
                    .arg(*limit)
                    .arg(millis(*ttl))
                    .arg(if *evict_oldest { "1" } else { "0" });
            }
            BusOp::Renew { leases, ttl, .. } => {
                for (user, held) in by_user(leases) {
                    let n = StreamNames::of(prefix, user);
                    let cmd = pipe
                        .cmd("EVALSHA")
                        .arg(self.scripts.renew.hash())
                        .arg(2)
                        .arg(n.leases())
                        .arg(n.lease_order())
                        .arg(dead.len())
                        .arg(dead)
                        .arg(millis(*ttl));
                    for (holder, limit) in held {
                        cmd.arg(keys::holder_member(holder)).arg(limit);
                    }
                }
            }
            BusOp::Release { user, holder } => {
                let n = StreamNames::of(prefix, user);
                let member = keys::holder_member(holder);
                pipe.cmd("ZREM").arg(n.leases()).arg(&member);
                pipe.cmd("ZREM").arg(n.lease_order()).arg(&member);
            }
            BusOp::Signal { stream, payload } => {
                let n = StreamNames::of(prefix, stream);
                let mut message = String::with_capacity(payload.len() + 2);
                message.push_str("s:");
                message.push_str(payload);
                pipe.cmd("PUBLISH").arg(n.channel()).arg(message);
            }
            BusOp::PresenceUpdate { scope, node, replace, joins, leaves, ttl, signal, .. } => {
                let n = StreamNames::of(prefix, scope);
                let cmd = pipe
                    .cmd("EVALSHA")
                    .arg(self.scripts.presence_update.hash())
                    .arg(2)
                    .arg(n.presence_nodes())
                    .arg(n.presence_set(node))
                    .arg(n.channel())
                    .arg(signal.as_bytes())
                    .arg(millis(*ttl))
                    .arg(node.as_str())
                    .arg(if *replace { "1" } else { "0" })
                    .arg(joins.len());
                for (user, meta) in joins {
                    cmd.arg(user.as_str()).arg(meta.as_deref().unwrap_or(""));
                }
                for user in leaves {
                    cmd.arg(user.as_str());
                }
            }
            BusOp::PresenceRefresh { node, ttl, scopes, .. } => {
                for (scope, signal) in scopes {
                    let n = StreamNames::of(prefix, scope);
                    pipe.cmd("EVALSHA")
                        .arg(self.scripts.presence_refresh.hash())
                        .arg(2)
                        .arg(n.presence_nodes())
                        .arg(n.presence_set(node))
                        .arg(n.channel())
                        .arg(signal.as_bytes())
                        .arg(millis(*ttl))
                        .arg(node.as_str());
                }
            }
            // Subscriptions are the subscriber's and presence reads take two steps (`reads`); a
            // kind this driver does not know sends nothing and is answered `Refused` (see `read`).
            _ => {}
        }
    }

    /// Reads `op`'s replies.
    fn read(&self, op: &BusOp, replies: &[Value]) -> Result<BusReply, BusFailure> {
        if let Some(err) = replies.iter().find_map(server_error) {
            eprintln!("switchboard: redis refused a {} operation: {err:?}", op_kind(op));
            // Out of memory, loading, a failover under way: it may work later.
            return Err(if RETRYABLE_CODES.contains(&err.code()) {
                BusFailure::Retryable
            } else {
                BusFailure::Refused
            });
        }
        let parsed = match op {
            BusOp::Append { .. } => one(replies).and_then(scripts::appended).map(|(dup, pos)| {
                if dup { BusReply::Duplicate { pos } } else { BusReply::Appended { pos } }
            }),
            BusOp::Fetch { .. } => one(replies)
                .and_then(scripts::fetched)
                .map(|(top, entries)| BusReply::Fetched { top, entries }),
            BusOp::Tops { .. } => replies
                .iter()
                .map(scripts::top)
                .collect::<Result<Vec<StreamPos>, _>>()
                .map(BusReply::Tops),
            BusOp::Rotate { .. } => {
                one(replies).and_then(scripts::rotated).map(|top| BusReply::Rotated { top })
            }
            BusOp::Lease { .. } => {
                one(replies).and_then(scripts::leased).map(|(granted, ev)| BusReply::Leased {
                    granted,
                    evicted: ev.and_then(|m| keys::parse_holder(m.as_bytes())),
                })
            }
            BusOp::Renew { .. } => {
                let mut refused: Vec<LeaseHolder> = Vec::new();
                let mut all = Ok(());
                for reply in replies {
                    match scripts::refused(reply) {
                        Ok(members) => refused.extend(
                            members.iter().filter_map(|m| keys::parse_holder(m.as_bytes())),
                        ),
                        Err(e) => all = Err(e),
                    }
                }
                all.map(|()| BusReply::Renewed { refused })
            }
            BusOp::PresenceUpdate { .. } => one(replies).map(|_| BusReply::PresenceWritten),
            BusOp::PresenceRefresh { scopes, .. } => {
                let mut missing = Vec::new();
                let mut all = Ok(());
                for ((scope, _), reply) in scopes.iter().zip(replies) {
                    match scripts::number(reply) {
                        Some(1) => {}
                        Some(0) => missing.push(scope.clone()),
                        _ => all = Err(scripts::Shape(format!("presence refresh: {reply:?}"))),
                    }
                }
                all.map(|()| BusReply::PresenceRefreshed { missing })
            }
            _ => return Err(BusFailure::Refused),
        };
        parsed.map_err(|e| {
            eprintln!("switchboard: {e}");
            BusFailure::Refused
        })
    }

    /// Records the operation and, if it expects one, sends its reply to the hub.
    async fn finish(&self, op: &BusOp, at: Instant, reply: Result<BusReply, BusFailure>) {
        self.metrics.record(op_kind(op), at.elapsed(), reply.is_err());
        if let Some(id) = op.op() {
            let _ = self.events.send(BusEvent::Reply { op: id, reply }).await;
        }
    }
}

/// The single reply of a one-command operation.
fn one(replies: &[Value]) -> Result<&Value, scripts::Shape> {
    match replies {
        [only] => Ok(only),
        other => Err(scripts::Shape(format!("{} replies for one command", other.len()))),
    }
}

/// Loads every script (after Redis answered `NOSCRIPT`: it restarted empty); whether all loaded.
async fn load_scripts(conn: &mut ConnectionManager, scripts: &Scripts) -> bool {
    let mut pipe = Pipeline::new();
    for script in scripts.all() {
        pipe.cmd("SCRIPT").arg("LOAD").arg(&script.code);
    }
    let loaded = conn.send_packed_commands(&pipe, 0, pipe.len()).await;
    matches!(loaded, Ok(r) if !r.iter().any(|v| matches!(v, Value::ServerError(_))))
}

/// Error codes of a Redis that may answer differently later: out of memory (with
/// `noeviction`), loading its data, busy with a script, a replica or cluster not ready.
const RETRYABLE_CODES: [&str; 8] =
    ["OOM", "LOADING", "BUSY", "MASTERDOWN", "READONLY", "TRYAGAIN", "CLUSTERDOWN", "NOREPLICAS"];

fn server_error(value: &Value) -> Option<&redis::ServerError> {
    match value {
        Value::ServerError(err) => Some(err),
        _ => None,
    }
}

fn is_noscript(value: &Value) -> bool {
    matches!(value, Value::ServerError(err) if err.code() == "NOSCRIPT")
}

/// A renewal's leases grouped by user (one script call per user's set), in a stable order.
fn by_user(
    leases: &[(StreamKey, LeaseHolder, u32)],
) -> BTreeMap<&StreamKey, Vec<(&LeaseHolder, u32)>> {
    let mut users: BTreeMap<&StreamKey, Vec<(&LeaseHolder, u32)>> = BTreeMap::new();
    for (user, holder, limit) in leases {
        users.entry(user).or_default().push((holder, *limit));
    }
    users
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// Records this node in the registry and reads which nodes are dead, every
/// `heartbeat_interval`. Forgets nodes silent for ten node timeouts (their leases have expired
/// by then unless `lease_ttl` is longer, in which case they simply expire later).
async fn heartbeat(
    mut conn: ConnectionManager,
    cfg: Arc<RedisConfig>,
    metrics: Arc<BusMetrics>,
    dead: DeadNodes,
    hub: mpsc::Sender<BusEvent>,
) {
    let script = redis::Script::new(scripts::HEARTBEAT);
    let registry = keys::nodes(&cfg.prefix);
    let timeout = millis(cfg.node_timeout);
    let forget = timeout.saturating_mul(10);
    let mut known: Vec<String> = Vec::new();
    let mut tick = tokio::time::interval(cfg.heartbeat_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Ends with the hub's end of the link, as the executor and the subscriber do.
    while !hub.is_closed() {
        tick.tick().await;
        let at = Instant::now();
        let result: redis::RedisResult<Vec<String>> = script
            .key(&registry)
            .arg(cfg.node.as_str())
            .arg(timeout)
            .arg(forget)
            .invoke_async(&mut conn)
            .await;
        metrics.record("heartbeat", at.elapsed(), result.is_err());
        let Ok(nodes) = result else { continue };
        let nodes: Vec<String> = nodes.into_iter().filter(|n| n != cfg.node.as_str()).collect();
        for node in &nodes {
            if !known.contains(node) {
                BusMetrics::bump(&metrics.dead_nodes_cleaned);
                eprintln!(
                    "switchboard: node {node:?} missed its heartbeats; its leases are released"
                );
            }
        }
        let prefixes =
            nodes.iter().map(|n| keys::node_member_prefix(&NodeId::new(n.as_str()))).collect();
        if let Ok(mut shared) = dead.lock() {
            *shared = Arc::new(prefixes);
        }
        known = nodes;
    }
}
