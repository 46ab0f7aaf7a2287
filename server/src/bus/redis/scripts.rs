//! The Lua scripts that make each stream operation one atomic step on Redis, and the parsing of
//! their replies.
//!
//! A stream is a hash `{e, s}` (epoch and top seq) plus a list of payloads whose last element has
//! seq `s` and whose elements are contiguous, so the seq of any element follows from the list's
//! length: no seq is stored twice. Epochs are Redis's clock in microseconds when the stream is
//! created (or rotated: later than the old one, whatever the clock says), so an epoch is never
//! handed out twice for one stream while the clock moves forward, and stays below 2^53 (exact in
//! JavaScript numbers and in Lua's doubles). Numbers cross the script boundary as decimal text,
//! never as Lua numbers formatted by `tostring` (which rounds to 14 digits).

use std::sync::Arc;
use std::time::Duration;

use redis::{Script, Value};
use switchboard::{BusEntry, NodeId, PresenceHeld, StreamPos, UserId};

/// Shared by every script: Redis's clock.
const PRELUDE: &str = r"
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local function num(n) return string.format('%.0f', n) end
";

/// KEYS: meta, log, idempotency key. ARGV: channel, payload, keep, ttl ms, has key (`1`/`0`).
/// Returns `{duplicate (0/1), epoch, seq}`.
const APPEND: &str = r"
if ARGV[5] == '1' then
  local seen = redis.call('GET', KEYS[3])
  if seen then
    local e, s = string.match(seen, '^(%d+):(%d+)$')
    if e then return {1, e, s} end
  end
end
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
  epoch = num(now_us())
  redis.call('HSET', KEYS[1], 'e', epoch, 's', 0)
  redis.call('DEL', KEYS[2])
end
local seq = num(redis.call('HINCRBY', KEYS[1], 's', 1))
local len = redis.call('RPUSH', KEYS[2], ARGV[2])
local keep = math.max(tonumber(ARGV[3]), 1)
if len > keep then
  redis.call('LTRIM', KEYS[2], -keep, -1)
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
if ARGV[5] == '1' then
  redis.call('SET', KEYS[3], epoch .. ':' .. seq, 'PX', ARGV[4])
end
redis.call('PUBLISH', ARGV[1], 'm' .. epoch .. ':' .. seq .. ':' .. ARGV[2])
return {0, epoch, seq}
";

/// KEYS: meta, log. ARGV: after, limit. Returns `{epoch, top, first seq, payloads…}` (`0 0 0`
/// for a stream that does not exist).
const FETCH: &str = r"
local m = redis.call('HMGET', KEYS[1], 'e', 's')
if not m[1] then return {'0', '0', '0'} end
local top = tonumber(m[2])
local len = redis.call('LLEN', KEYS[2])
local first = top - len + 1
local from = math.max(tonumber(ARGV[1]) + 1, first)
local out = {m[1], m[2], num(from)}
if from > top then return out end
local start = from - first
local stop = math.min(start + tonumber(ARGV[2]) - 1, len - 1)
local items = redis.call('LRANGE', KEYS[2], start, stop)
for i = 1, #items do out[#out + 1] = items[i] end
return out
";

/// KEYS: meta, log. ARGV: the epoch to replace. Returns `{epoch, seq}` after.
const ROTATE: &str = r"
local e = redis.call('HGET', KEYS[1], 'e')
if e and e == ARGV[1] then
  e = num(math.max(now_us(), tonumber(e) + 1))
  redis.call('HSET', KEYS[1], 'e', e, 's', 0)
  redis.call('DEL', KEYS[2])
end
if not e then return {'0', '0'} end
return {e, redis.call('HGET', KEYS[1], 's')}
";

/// Drops a lease set's expired holders and those of dead nodes (both sets). Shared by lease and
/// renew. ARGV starts with the count of dead nodes' member prefixes and the prefixes; `a` is the
/// index just before the operation's own arguments.
const LEASE_PRELUDE: &str = r"
local now = math.floor(now_us() / 1000)
local ndead = tonumber(ARGV[1])
local function drop(member)
  redis.call('ZREM', KEYS[1], member)
  redis.call('ZREM', KEYS[2], member)
end
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
for i = 1, #gone do drop(gone[i]) end
if ndead > 0 then
  local all = redis.call('ZRANGE', KEYS[1], 0, -1)
  for i = 1, #all do
    for d = 2, ndead + 1 do
      if string.sub(all[i], 1, #ARGV[d]) == ARGV[d] then
        drop(all[i])
        break
      end
    end
  end
end
local a = ndead + 1
local function keep_alive(ttl)
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('PEXPIRE', KEYS[2], ttl)
end
";

/// KEYS: leases (by expiry), lease order (by grant time). ARGV after the dead prefixes: member,
/// limit, ttl ms, evict (`1`/`0`). Returns `{granted (0/1), evicted member or ''}`.
const LEASE: &str = r"
local member, limit, ttl = ARGV[a + 1], tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
if redis.call('ZSCORE', KEYS[1], member) then
  redis.call('ZADD', KEYS[1], now + ttl, member)
  keep_alive(ttl)
  return {1, ''}
end
local evicted = ''
if redis.call('ZCARD', KEYS[1]) >= limit then
  if ARGV[a + 4] ~= '1' or limit < 1 then return {0, ''} end
  evicted = redis.call('ZRANGE', KEYS[2], 0, 0)[1] or ''
  if evicted == '' then return {0, ''} end
  drop(evicted)
end
redis.call('ZADD', KEYS[1], now + ttl, member)
redis.call('ZADD', KEYS[2], now, member)
keep_alive(ttl)
return {1, evicted}
";

/// KEYS: leases, lease order. ARGV after the dead prefixes: ttl ms, then (member, limit) pairs.
/// Returns the refused members.
const RENEW: &str = r"
local ttl = tonumber(ARGV[a + 1])
local refused = {}
for i = a + 2, #ARGV, 2 do
  local member, limit = ARGV[i], tonumber(ARGV[i + 1])
  if redis.call('ZSCORE', KEYS[1], member) then
    redis.call('ZADD', KEYS[1], now + ttl, member)
  elseif redis.call('ZCARD', KEYS[1]) < limit then
    redis.call('ZADD', KEYS[1], now + ttl, member)
    redis.call('ZADD', KEYS[2], now, member)
  else
    refused[#refused + 1] = member
  end
end
keep_alive(ttl)
return refused
";

/// Presence: drops the scope's expired nodes and keeps the node index alive as long as its
/// longest-lived set. KEYS[1] is the index (node → expiry in ms).
const PRESENCE_PRELUDE: &str = r"
local now = math.floor(now_us() / 1000)
local function index_alive()
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  if last[2] then redis.call('PEXPIREAT', KEYS[1], last[2]) end
end
";

/// KEYS: node index, the node's set. ARGV: channel, signal, ttl ms, node, replace (`1`/`0`),
/// number of joins, then (user, meta) per join, then the users that leave. Writes the set, lets
/// it live `ttl` (an empty one is gone), then publishes the signal. Returns 1.
const PRESENCE_UPDATE: &str = r"
local ttl = tonumber(ARGV[3])
if ARGV[5] == '1' then redis.call('DEL', KEYS[2]) end
local i = 7
for _ = 1, tonumber(ARGV[6]) do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
  i = i + 2
end
while i <= #ARGV do
  redis.call('HDEL', KEYS[2], ARGV[i])
  i = i + 1
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('PEXPIRE', KEYS[2], ttl)
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[4])
else
  redis.call('ZREM', KEYS[1], ARGV[4])
end
index_alive()
redis.call('PUBLISH', ARGV[1], 's:' .. ARGV[2])
return 1
";

/// KEYS: node index, the node's set. ARGV: channel, signal, ttl ms, node. If the set exists, it
/// lives `ttl` more and the signal is published (returns 1); else 0.
const PRESENCE_REFRESH: &str = r"
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('ZREM', KEYS[1], ARGV[4])
  index_alive()
  return 0
end
local ttl = tonumber(ARGV[3])
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('ZADD', KEYS[1], now + ttl, ARGV[4])
index_alive()
redis.call('PUBLISH', ARGV[1], 's:' .. ARGV[2])
return 1
";

/// KEYS: node index, then the set of each node the index listed (names built by the driver,
/// `StreamNames::presence_set`, so the script touches only keys it was given, as Redis Cluster
/// requires). ARGV: limit, then those nodes in KEYS' order. Returns `{truncated (0/1), then per
/// live set: node, ms left, n, n (user, meta) pairs}`; a listed node whose set is gone leaves the
/// index.
const PRESENCE_READ: &str = r"
if #ARGV ~= #KEYS then
  return redis.error_reply('ERR presence read: ' .. #KEYS .. ' keys for ' .. #ARGV .. ' arguments')
end
index_alive()
local out = {0}
local left = tonumber(ARGV[1])
for i = 2, #KEYS do
  local node = ARGV[i]
  local ms = redis.call('PTTL', KEYS[i])
  if ms > 0 then
    local all = redis.call('HGETALL', KEYS[i])
    local n = #all / 2
    local take = math.min(n, left)
    if take < n then out[1] = 1 end
    left = left - take
    out[#out + 1] = node
    out[#out + 1] = ms
    out[#out + 1] = take
    for j = 1, take * 2 do out[#out + 1] = all[j] end
  else
    redis.call('ZREM', KEYS[1], node)
  end
end
return out
";

/// The heartbeat (not through the executor, so not among [`Scripts::all`]). KEYS: the node
/// registry. ARGV: this node, the node timeout ms, the forget-after ms. Records this node's
/// heartbeat, forgets nodes silent for the forget-after, returns the nodes silent past the
/// timeout.
pub(crate) const HEARTBEAT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[3]))
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
";

/// One script: its text, and its SHA1 for `EVALSHA`.
pub(crate) struct Lua {
    pub(crate) code: String,
    script: Script,
}

impl Lua {
    fn new(code: String) -> Self {
        let script = Script::new(&code);
        Lua { code, script }
    }

    /// The SHA1 `EVALSHA` names it by.
    pub(crate) fn hash(&self) -> &str {
        self.script.get_hash()
    }
}

/// The scripts, each hashed once (Redis loads them when it first answers `NOSCRIPT`).
pub(crate) struct Scripts {
    pub(crate) append: Lua,
    pub(crate) fetch: Lua,
    pub(crate) rotate: Lua,
    pub(crate) lease: Lua,
    pub(crate) renew: Lua,
    pub(crate) presence_update: Lua,
    pub(crate) presence_refresh: Lua,
    pub(crate) presence_read: Lua,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        let plain = |body: &str| Lua::new(format!("{PRELUDE}{body}"));
        let leasing = |body: &str| Lua::new(format!("{PRELUDE}{LEASE_PRELUDE}{body}"));
        let presence = |body: &str| Lua::new(format!("{PRELUDE}{PRESENCE_PRELUDE}{body}"));
        Scripts {
            append: plain(APPEND),
            fetch: plain(FETCH),
            rotate: plain(ROTATE),
            lease: leasing(LEASE),
            renew: leasing(RENEW),
            presence_update: presence(PRESENCE_UPDATE),
            presence_refresh: presence(PRESENCE_REFRESH),
            presence_read: presence(PRESENCE_READ),
        }
    }

    /// Every script, for `SCRIPT LOAD` after Redis answered `NOSCRIPT` (it restarted empty).
    pub(crate) fn all(&self) -> [&Lua; 8] {
        [
            &self.append,
            &self.fetch,
            &self.rotate,
            &self.lease,
            &self.renew,
            &self.presence_update,
            &self.presence_refresh,
            &self.presence_read,
        ]
    }
}

/// A reply that does not have the shape a script returns: the driver and the scripts disagree.
#[derive(Debug, thiserror::Error)]
#[error("unexpected reply from Redis: {0}")]
pub(crate) struct Shape(pub(crate) String);

fn shape(what: &str, value: &Value) -> Shape {
    let mut text = format!("{what}: {value:?}");
    text.truncate(200);
    Shape(text)
}

/// A number sent as text or as an integer.
pub(crate) fn number(value: &Value) -> Option<u64> {
    match value {
        Value::Int(n) => u64::try_from(*n).ok(),
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

/// Text (a payload or a member).
pub(crate) fn text(value: &Value) -> Option<&str> {
    match value {
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

fn array<'a>(what: &str, value: &'a Value) -> Result<&'a [Value], Shape> {
    match value {
        Value::Array(items) => Ok(items),
        other => Err(shape(what, other)),
    }
}

fn pos(what: &str, value: &Value, e: usize, s: usize) -> Result<StreamPos, Shape> {
    let items = array(what, value)?;
    let n = |i: usize| items.get(i).and_then(number).ok_or_else(|| shape(what, value));
    Ok(StreamPos { epoch: n(e)?, seq: n(s)? })
}

/// An append's reply: whether it was a duplicate, and the position.
pub(crate) fn appended(value: &Value) -> Result<(bool, StreamPos), Shape> {
    let items = array("append", value)?;
    let duplicate = items.first().and_then(number).ok_or_else(|| shape("append", value))? == 1;
    Ok((duplicate, pos("append", value, 1, 2)?))
}

/// A fetch's reply: the top and the entries.
pub(crate) fn fetched(value: &Value) -> Result<(StreamPos, Vec<BusEntry>), Shape> {
    let top = pos("fetch", value, 0, 1)?;
    let items = array("fetch", value)?;
    let first = items.get(2).and_then(number).ok_or_else(|| shape("fetch", value))?;
    let entries = items[3..]
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let payload = text(v).ok_or_else(|| shape("fetch entry", v))?;
            Ok(BusEntry { seq: first + i as u64, payload: payload.into() })
        })
        .collect::<Result<_, Shape>>()?;
    Ok((top, entries))
}

/// A rotation's reply: the top after it.
pub(crate) fn rotated(value: &Value) -> Result<StreamPos, Shape> {
    pos("rotate", value, 0, 1)
}

/// `HMGET meta e s`: the top (`0, 0` for a stream without an epoch).
pub(crate) fn top(value: &Value) -> Result<StreamPos, Shape> {
    let items = array("top", value)?;
    match items {
        [Value::Nil, ..] | [] => Ok(StreamPos { epoch: 0, seq: 0 }),
        _ => pos("top", value, 0, 1),
    }
}

/// A lease's reply: granted, and the evicted member if any.
pub(crate) fn leased(value: &Value) -> Result<(bool, Option<&str>), Shape> {
    let items = array("lease", value)?;
    let granted = items.first().and_then(number).ok_or_else(|| shape("lease", value))? == 1;
    let evicted = items.get(1).and_then(text).filter(|m| !m.is_empty());
    Ok((granted, evicted))
}

/// A renewal's reply: the refused members.
pub(crate) fn refused(value: &Value) -> Result<Vec<&str>, Shape> {
    array("renew", value)?.iter().map(|v| text(v).ok_or_else(|| shape("renew", v))).collect()
}

/// `ZRANGE`: the members, as text.
pub(crate) fn members(value: &Value) -> Result<Vec<&str>, Shape> {
    array("members", value)?.iter().map(|v| text(v).ok_or_else(|| shape("members", v))).collect()
}

/// A presence read's reply: each live set (node, time left, users with metadata, `""` read as
/// none), and whether users were left out.
pub(crate) fn presence_read(value: &Value) -> Result<(Vec<PresenceHeld>, bool), Shape> {
    let items = array("presence read", value)?;
    let bad = || shape("presence read", value);
    let truncated = items.first().and_then(number).ok_or_else(bad)? == 1;
    let mut held = Vec::new();
    let mut rest = items.get(1..).unwrap_or_default();
    while let [node, ms, n, tail @ ..] = rest {
        let node = text(node).ok_or_else(bad)?;
        let (ms, n) = (number(ms).ok_or_else(bad)?, number(n).ok_or_else(bad)?);
        let n = usize::try_from(n).map_err(|_| bad())?;
        let pairs = tail.get(..n.saturating_mul(2)).ok_or_else(bad)?;
        let users = pairs
            .chunks(2)
            .map(|pair| {
                let user = text(&pair[0]).ok_or_else(bad)?;
                let meta = text(&pair[1]).ok_or_else(bad)?;
                let meta = (!meta.is_empty()).then(|| Arc::from(meta));
                Ok((UserId::from(user), meta))
            })
            .collect::<Result<Vec<_>, Shape>>()?;
        held.push(PresenceHeld { node: NodeId::new(node), ttl: Duration::from_millis(ms), users });
        rest = &tail[n * 2..];
    }
    if !rest.is_empty() {
        return Err(bad());
    }
    Ok((held, truncated))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn fetched_entries_take_their_seqs_from_the_first_one() {
        let reply = Value::Array(vec![bulk("7"), bulk("12"), bulk("10"), bulk("a"), bulk("b")]);
        let (top, entries) = fetched(&reply).unwrap();
        assert_eq!(top, StreamPos { epoch: 7, seq: 12 });
        assert_eq!(entries.iter().map(|e| e.seq).collect::<Vec<_>>(), [10, 11]);
        assert_eq!(&*entries[1].payload, "b");
    }

    #[test]
    fn replies_of_the_wrong_shape_are_errors_not_panics() {
        assert!(fetched(&Value::Nil).is_err());
        assert!(fetched(&Value::Array(vec![bulk("x")])).is_err());
        assert!(appended(&Value::Array(vec![Value::Int(0), bulk("1")])).is_err());
        assert!(leased(&Value::Okay).is_err());
        assert!(refused(&Value::Array(vec![Value::Int(3)])).is_err());
        assert_eq!(top(&Value::Array(vec![Value::Nil, Value::Nil])).unwrap().seq, 0);
    }

    #[test]
    fn presence_reads_parse_and_bad_shapes_are_errors() {
        let reply = Value::Array(vec![
            Value::Int(1),
            bulk("n1"),
            Value::Int(4_000),
            Value::Int(2),
            bulk("alice"),
            bulk(r#"{"name":"A"}"#),
            bulk("bob"),
            bulk(""),
            bulk("n2"),
            Value::Int(10),
            Value::Int(0),
        ]);
        let (held, truncated) = presence_read(&reply).unwrap();
        assert!(truncated);
        assert_eq!(held.len(), 2);
        assert_eq!(held[0].ttl, Duration::from_secs(4));
        assert_eq!(held[0].users[0].1.as_deref(), Some(r#"{"name":"A"}"#));
        assert_eq!(held[0].users[1], (UserId::from("bob"), None));
        assert!(held[1].users.is_empty());
        for bad in [
            Value::Nil,
            Value::Array(vec![]),
            Value::Array(vec![Value::Int(0), bulk("n1"), Value::Int(1), Value::Int(2), bulk("a")]),
            Value::Array(vec![Value::Int(0), bulk("n1")]),
        ] {
            assert!(presence_read(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn members_are_text_and_anything_else_is_an_error() {
        let reply = Value::Array(vec![bulk("n1"), bulk("a:2")]);
        assert_eq!(members(&reply).unwrap(), ["n1", "a:2"]);
        assert!(members(&Value::Array(vec![])).unwrap().is_empty());
        assert!(members(&Value::Array(vec![Value::Int(1)])).is_err());
        assert!(members(&Value::Nil).is_err());
    }

    /// Redis Cluster runs a script only if every key it touches is in KEYS (and in one slot):
    /// no script may build a key name. Each `redis.call` of a key command takes `KEYS[i]` as
    /// its key; only `TIME` (no key) and `PUBLISH` (a channel, not a key) are exempt.
    #[test]
    fn every_key_a_script_touches_comes_from_keys() {
        let scripts = Scripts::new();
        let mut texts: Vec<&str> = scripts.all().iter().map(|l| l.code.as_str()).collect();
        texts.push(HEARTBEAT);
        let mut calls = 0;
        for text in texts {
            for (at, _) in text.match_indices("redis.call(") {
                let rest = &text[at + "redis.call(".len()..];
                // `'COMMAND'` then `)` (no argument) or `, ` and the arguments.
                let quoted = rest.strip_prefix('\'').expect("the command is a literal");
                let (command, args) = quoted.split_once('\'').expect("a closed literal");
                if ["TIME", "PUBLISH"].contains(&command) {
                    continue;
                }
                calls += 1;
                assert!(
                    args.strip_prefix(", ").is_some_and(|a| a.starts_with("KEYS[")),
                    "{command} touches a key not taken from KEYS: {}",
                    &rest[..rest.find('\n').unwrap_or(rest.len())]
                );
            }
        }
        assert!(calls > 30, "the check found the scripts' calls: {calls}");
    }

    #[test]
    fn epochs_in_microseconds_survive_as_text() {
        let reply = Value::Array(vec![Value::Int(0), bulk("1796000000123456"), bulk("3")]);
        let (dup, pos) = appended(&reply).unwrap();
        assert!(!dup);
        assert_eq!(pos.epoch, 1_796_000_000_123_456);
    }
}
