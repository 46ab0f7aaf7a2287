#!/usr/bin/env bash
# Cluster benchmark (issue 12): switchboard's server as 1, 2 and 3 nodes over one Redis against
# Socket.IO with its Redis adapter on 2 nodes over the same Redis, under the same load from
# tools/loadgen, side by side; then the recovery test against both (a node SIGKILLed mid-stream).
#
# Starts one redis-server of its own on 127.0.0.1 with scripts/redis.sh (which installs it from
# the Debian packages when missing), emptied (FLUSHALL) before every configuration. Each configuration starts its nodes on
# 127.0.0.1 (stopped by PID), connects CLIENTS clients spread round-robin over the nodes, and runs
# five phases on them, publishing round-robin through every node:
#   tenant:0           tenant broadcasts as fast as delivered (fan-out CLIENTS/TENANTS)
#   user:0             publishes to single users as fast as delivered (fan-out CONNS_PER_USER)
#   user:0:bBATCH      the same, BATCH (10) envelopes per request: the batch publish both accept
#   tenant:TENANT_RATE a fixed rate, for latency
#   user:LAT_RATE      1,000 publishes/s by default: the latency target's load
# and, with Redis, two more with Redis's MONITOR on (it slows Redis, so these count and time
# nothing else): tenant:TENANT_RATE and user:MONITOR_RATE, where every command a client sent is
# told from the commands a script ran; the former are the round trips per publish.
# The configurations: `solo` (switchboard without Redis: the baseline that cluster mode's added
# latency is measured against), `sb1`, `sb2`, `sb3` (switchboard --redis, 1/2/3 nodes), `sio2`
# (Socket.IO, @socket.io/redis-adapter, 2 nodes); `sio2s` (the redis streams adapter with
# connectionStateRecovery) is not in the default list. `hop` (not in the default list either, and
# only with PHASES="user:LAT_RATE") is `solo` with tools/loadgen's `redis-hop` beside it: one bare
# Redis pub/sub hop at LAT_RATE/s, timed under the same load, the least cluster mode could add;
# its window starts HOP_LEAD (3) seconds after the loadgen, once the clients are connected. `sbN@NAME` runs N nodes of another
# `switchboard` binary, named in ALT_BINS="NAME=PATH ..." (a build of another commit copied
# aside), beside this tree's, so that a change and its baseline are measured in one run. PHASES replaces the four phases (for
# example PHASES="user:1000" for many repetitions of the latency target alone), MONITOR=0 drops
# the MONITOR phases.
#
# Figures: delivered msg/s; p50/p99 publish-to-receive latency; server memory per connection (the
# nodes' RSS summed); Redis commands per publish (INFO commandstats over the window: commands
# run inside a script count too, so the per-command breakdown is printed beside it); delivered
# messages per server CPU-second (the nodes' CPU) and per CPU-second with Redis's CPU added.
#
# The recovery test (loadgen --recovery): RECOVERY_CLIENTS clients on node A, RECOVERY_RATE
# publishes/s through node B for RECOVERY_DURATION s, node A SIGKILLed (by its PID) KILL_AFTER s
# in; its clients reconnect to node B (switchboard: `resume` with the positions they saw;
# Socket.IO: its own connection-state recovery when the adapter has it, else a plain reconnect)
# and each client's lost and duplicated messages are counted against the publishes answered 200.
# Run against switchboard (2 nodes), Socket.IO with the redis adapter, and Socket.IO with the
# redis streams adapter and connectionStateRecovery.
#
# With PIN=1 (the default on 2+ CPUs) every server process and Redis share CPU 0 and the load
# generator has CPU 1: several nodes on one core measure what a cluster costs, not how it scales.
#
#   scripts/bench-cluster.sh                         # defaults: 10,000 clients (~10 min)
#   CLIENTS=2000 DURATION=3 scripts/bench-cluster.sh # a quick look
#   CONFIGS="solo sb2 sio2" RECOVERY=0 scripts/bench-cluster.sh
#   RAW=results.txt scripts/bench-cluster.sh         # keep the loadgen's RESULT lines
#   SB_ARGS="--lease-ttl-secs 600" scripts/bench-cluster.sh   # more arguments for switchboard's nodes
#   QUIET_IDLE=1 PIN=0 PHASES="user:1000" scripts/bench-cluster.sh   # idle CPUs poll (bench-lib.sh)
set -euo pipefail
cd "$(dirname "$0")/.."

CLIENTS="${CLIENTS:-5000}"
CONNS_PER_USER="${CONNS_PER_USER:-2}"
TENANTS="${TENANTS:-10}"
REPS="${REPS:-2}"
WARMUP="${WARMUP:-2}"
DURATION="${DURATION:-4}"
TENANT_RATE="${TENANT_RATE:-10}"
LAT_RATE="${LAT_RATE:-1000}"
MONITOR_RATE="${MONITOR_RATE:-100}"
BATCH="${BATCH:-10}"
PHASES="${PHASES:-tenant:0 user:0 user:0:b$BATCH tenant:$TENANT_RATE user:$LAT_RATE}"
MONITOR="${MONITOR:-1}"
PUBLISHERS="${PUBLISHERS:-64}"
PAYLOAD_BYTES="${PAYLOAD_BYTES:-64}"
CONFIGS="${CONFIGS:-solo sb1 sb2 sb3 sio2}"
RECOVERY="${RECOVERY:-1}"
RECOVERY_CLIENTS="${RECOVERY_CLIENTS:-1000}"
RECOVERY_RATE="${RECOVERY_RATE:-200}"
RECOVERY_DURATION="${RECOVERY_DURATION:-10}"
KILL_AFTER="${KILL_AFTER:-4}"
REDIS_PORT="${REDIS_PORT:-}"
BASE_PORT="${BASE_PORT:-18180}"
PIN="${PIN:-auto}"
ALT_BINS="${ALT_BINS:-}"

for tool in node npm curl; do
  command -v "$tool" >/dev/null || { echo "bench-cluster: $tool is required" >&2; exit 1; }
done
scripts/redis.sh install
command -v redis-cli >/dev/null || { echo "bench-cluster: redis-cli is required (Debian: redis-tools)" >&2; exit 1; }

echo "== installing the Socket.IO peer (npm ci)"
(cd benches/peers/socketio && npm ci --no-audit --no-fund --loglevel=error)

echo "== building the server and the load generator (release)"
cargo build --release --quiet -p switchboard-server -p switchboard-loadgen
target_dir=$(cargo metadata --format-version 1 --no-deps |
  node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).target_directory))')
server_bin="$target_dir/release/switchboard"
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if ! git diff --quiet HEAD 2>/dev/null; then commit="$commit+changes"; fi
loadgen_bin="$target_dir/release/loadgen"
hop_bin="$target_dir/release/redis-hop"
HOP_LEAD="${HOP_LEAD:-3}"
if [[ " $CONFIGS " == *" hop "* ]] && [ "$(echo $PHASES)" != "user:$LAT_RATE" ]; then
  echo "bench-cluster: the hop configuration times its probe against one phase: PHASES=\"user:$LAT_RATE\"" >&2
  exit 1
fi
if ! "$server_bin" --help 2>/dev/null | grep -q -- '--redis'; then
  echo "bench-cluster: this switchboard has no --redis (cluster mode): only solo and Socket.IO run" >&2
  CONFIGS=$(echo "$CONFIGS" | tr ' ' '\n' | grep -v '^sb' | tr '\n' ' ')
  SB_CLUSTER=0
else
  SB_CLUSTER=1
fi

most=$((CLIENTS > RECOVERY_CLIENTS ? CLIENTS : RECOVERY_CLIENTS))
hard=$(ulimit -Hn)
if [ "$hard" != unlimited ] && [ "$hard" -lt $((most + 1024)) ]; then
  echo "bench-cluster: the hard file-descriptor limit ($hard) is below CLIENTS+1024; raise it (ulimit -Hn)" >&2
  exit 1
fi
ulimit -n "$hard"

server_pin=()
loadgen_pin=()
if [ "$PIN" = auto ]; then
  if [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then PIN=1; else PIN=0; fi
fi
if [ "$PIN" = 1 ]; then
  server_pin=(taskset -c 0)
  loadgen_pin=(taskset -c 1)
fi

secret="bench-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
admin="admin-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
work=$(mktemp -d)
raw="${RAW:-$work/results.txt}"
: >"$raw"
redis_pid=""
pids=()
stop_pid() { # pid: INT, then KILL after 10 s
  local p=$1
  kill -INT "$p" 2>/dev/null || true
  for _ in $(seq 100); do
    kill -0 "$p" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$p" 2>/dev/null || true
  { wait "$p"; } 2>/dev/null || true
}
stop_nodes() {
  for p in "${pids[@]}"; do stop_pid "$p"; done
  pids=()
}
cleanup() {
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  if [ -n "$redis_pid" ]; then scripts/redis.sh stop "$redis_pid" >/dev/null 2>&1 || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

# A free port unless REDIS_PORT is given; its PID is the one to stop (and to pin with the nodes).
eval "$(scripts/redis.sh start $REDIS_PORT)"
redis_pid=$REDIS_PID
if [ "$PIN" = 1 ]; then taskset -pc 0 "$redis_pid" >/dev/null; fi
echo "== redis-server on 127.0.0.1:$REDIS_PORT (pid $redis_pid)"
redis_url="redis://127.0.0.1:$REDIS_PORT/"
redis_version=$(redis-cli -p "$REDIS_PORT" info server | sed -n 's/^redis_version:\(.*\)\r$/\1/p')

# The binary of configuration NAME in `sbN@NAME` (ALT_BINS), or this tree's.
alt_bin() { # name
  local entry
  for entry in $ALT_BINS; do
    if [ "${entry%%=*}" = "$1" ]; then echo "${entry#*=}"; return 0; fi
  done
  echo "bench-cluster: no binary named $1 in ALT_BINS" >&2
  return 1
}

# start_node KIND INDEX [ADAPTER|BINARY]: kind solo | sb | sio; appends to pids and addrs.
addrs=()
start_node() {
  local kind=$1 i=$2 adapter=${3:-redis} bin=${3:-$server_bin}
  local port=$((BASE_PORT + i)) log="$work/$kind-$i.log"
  case "$kind" in
    solo)
      "${server_pin[@]}" "$server_bin" --listen "127.0.0.1:$port" --jwt-secret "$secret" \
        --admin-key "$admin" >"$log" 2>&1 &
      ;;
    sb)
      # shellcheck disable=SC2086 # SB_ARGS: extra arguments for switchboard's nodes, split on spaces
      "${server_pin[@]}" "$bin" --redis "$redis_url" --node-id "n$i" \
        --listen "127.0.0.1:$port" --jwt-secret "$secret" --admin-key "$admin" ${SB_ARGS:-} >"$log" 2>&1 &
      ;;
    sio)
      "${server_pin[@]}" node benches/peers/socketio/server.js --listen "127.0.0.1:$port" \
        --jwt-secret "$secret" --admin-key "$admin" --redis "$redis_url" --adapter "$adapter" \
        >"$log" 2>&1 &
      ;;
  esac
  local p=$!
  pids+=("$p")
  addrs+=("127.0.0.1:$port")
  for _ in $(seq 150); do
    if curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1; then return 0; fi
    if ! kill -0 "$p" 2>/dev/null; then break; fi
    sleep 0.1
  done
  echo "bench-cluster: $kind node $i did not come up:" >&2
  cat "$log" >&2
  exit 1
}

# start_config NAME: the nodes of a configuration.
start_config() {
  local name=$1
  pids=()
  addrs=()
  redis-cli -p "$REDIS_PORT" flushall >/dev/null
  case "$name" in
    solo | hop) start_node solo 0 ;;
    sb[0-9]) for i in $(seq "${name#sb}"); do start_node sb "$i"; done ;;
    sb[0-9]@*)
      local bin n=${name%%@*}
      bin=$(alt_bin "${name#*@}") || exit 1
      for i in $(seq "${n#sb}"); do start_node sb "$i" "$bin"; done
      ;;
    sio[0-9]) for i in $(seq "${name#sio}"); do start_node sio "$i" redis; done ;;
    sio[0-9]s) for i in $(seq "${name:3:1}"); do start_node sio "$i" streams; done ;;
    *) echo "bench-cluster: unknown configuration $name" >&2; exit 1 ;;
  esac
}

server_of() { case "$1" in sio*) echo socketio ;; *) echo switchboard ;; esac; }

run_load() { # name rep
  local name=$1 rep=$2 status=0
  echo "== rep $rep/$REPS: $name ($CLIENTS clients)"
  start_config "$name"
  local redis_args=() monitor_phases=()
  if [ "$name" != solo ]; then
    redis_args=(--redis-addr "127.0.0.1:$REDIS_PORT" --redis-pid "$redis_pid")
    if [ "$MONITOR" = 1 ]; then
      monitor_phases=(--phase "tenant:$TENANT_RATE:monitor" --phase "user:$MONITOR_RATE:monitor")
    fi
  fi
  local phase_args=()
  for p in $PHASES; do phase_args+=(--phase "$p"); done
  local pid_args=() addr_list
  for p in "${pids[@]}"; do pid_args+=(--pid "$p"); done
  addr_list=$(IFS=,; echo "${addrs[*]}")
  local hop_pid=""
  if [ "$name" = hop ]; then
    # Its window starts after the clients' connects (HOP_LEAD s) and the warm-up, and ends
    # before the loadgen's does, so it is timed under the load throughout.
    "${loadgen_pin[@]}" "$hop_bin" --addr "127.0.0.1:$REDIS_PORT" --rate "$LAT_RATE" \
      --payload-bytes "$PAYLOAD_BYTES" --warmup $((WARMUP + HOP_LEAD)) \
      --duration $((DURATION > HOP_LEAD ? DURATION - HOP_LEAD : 1)) >"$work/hop.txt" 2>&1 &
    hop_pid=$!
  fi
  "${loadgen_pin[@]}" "$loadgen_bin" --server "$(server_of "$name")" --addr "$addr_list" \
    "${pid_args[@]}" "${redis_args[@]}" \
    --jwt-secret "$secret" --admin-key "$admin" --clients "$CLIENTS" \
    --conns-per-user "$CONNS_PER_USER" --tenants "$TENANTS" --publishers "$PUBLISHERS" \
    --payload-bytes "$PAYLOAD_BYTES" --warmup "$WARMUP" --duration "$DURATION" --label "$name" \
    "${phase_args[@]}" "${monitor_phases[@]}" \
    | tee "$work/out.txt" | sed 's/^/   /' | grep -v '^   RESULT' || status=$?
  grep '^RESULT' "$work/out.txt" >>"$raw" || true
  if [ -n "$hop_pid" ]; then
    wait "$hop_pid" || status=$?
    sed 's/^/   /' "$work/hop.txt"
    sed -n "s/^HOP /RESULT mode=hop label=hop /p" "$work/hop.txt" >>"$raw"
  fi
  stop_nodes
  return "$status"
}

run_recovery() { # name (sb, sio-redis, sio-streams)
  local name=$1 status=0
  echo "== recovery: $name ($RECOVERY_CLIENTS clients on node A, $RECOVERY_RATE publishes/s through node B, A killed at ${KILL_AFTER}s)"
  pids=()
  addrs=()
  redis-cli -p "$REDIS_PORT" flushall >/dev/null
  case "$name" in
    sb) start_node sb 1; start_node sb 2 ;;
    sio-*) start_node sio 1 "${name#sio-}"; start_node sio 2 "${name#sio-}" ;;
  esac
  local addr_list
  addr_list=$(IFS=,; echo "${addrs[*]}")
  # The loadgen sends SIGKILL to node A's PID (given here) at KILL_AFTER.
  "${loadgen_pin[@]}" "$loadgen_bin" --recovery --server "$(server_of "$name")" \
    --addr "$addr_list" --kill-pid "${pids[0]}" --kill-after "$KILL_AFTER" \
    --rate "$RECOVERY_RATE" --duration "$RECOVERY_DURATION" --jwt-secret "$secret" \
    --admin-key "$admin" --clients "$RECOVERY_CLIENTS" --conns-per-user "$CONNS_PER_USER" \
    --tenants "$TENANTS" --label "$name" \
    | tee "$work/out.txt" | sed 's/^/   /' | grep -v '^   RESULT' || status=$?
  grep '^RESULT' "$work/out.txt" >>"$raw" || true
  stop_nodes
  return "$status"
}

. scripts/bench-lib.sh
bench_quiet_idle
jitter_before=$(bench_host_jitter)
read -ra cfgs <<<"$CONFIGS"
# A run that fails is reported and left out of the table; the others still run.
failures=()
for rep in $(seq "$REPS"); do
  # Each repetition starts one configuration later, so that none always runs first.
  k=$(( (rep - 1) % ${#cfgs[@]} ))
  for name in "${cfgs[@]:k}" "${cfgs[@]:0:k}"; do
    run_load "$name" "$rep" || { failures+=("$name (rep $rep)"); stop_nodes; }
  done
done
if [ "$RECOVERY" = 1 ]; then
  names=(sio-redis sio-streams)
  if [ "$SB_CLUSTER" = 1 ]; then names=(sb "${names[@]}"); fi
  for name in "${names[@]}"; do
    run_recovery "$name" || { failures+=("recovery $name"); stop_nodes; }
  done
fi

echo
echo "== $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')), $(date -u +%Y-%m-%d), commit $commit, redis $redis_version, pinned: $([ "$PIN" = 1 ] && echo 'servers and Redis CPU 0, loadgen CPU 1' || echo no)"
echo "== $CLIENTS clients, $CONNS_PER_USER per user, $TENANTS tenants; ${WARMUP}s warm-up + ${DURATION}s per phase; median of $REPS"
echo "== host timer jitter (a 1 ms sleep wakes late by p50/p99 µs): $jitter_before before the runs, $(bench_host_jitter) after"
echo
CONFIGS="$CONFIGS" CLIENTS="$CLIENTS" BATCH="$BATCH" TENANT_RATE="$TENANT_RATE" LAT_RATE="$LAT_RATE" \
  MONITOR_RATE="$MONITOR_RATE" node - "$raw" <<'EOF'
const fs = require("node:fs");
const all = fs.readFileSync(process.argv[2], "utf8").trim().split("\n").filter(Boolean).map((line) =>
  Object.fromEntries(line.split(" ").slice(1).map((kv) => [kv.slice(0, kv.indexOf("=")), kv.slice(kv.indexOf("=") + 1)])));
const rows = all.filter((r) => r.mode !== "recovery" && r.mode !== "hop");
const hops = all.filter((r) => r.mode === "hop");
const recov = all.filter((r) => r.mode === "recovery");
const configs = process.env.CONFIGS.trim().split(/\s+/).filter(Boolean);
const names = {
  solo: "switchboard, no Redis", sb1: "switchboard ×1", sb2: "switchboard ×2",
  sb3: "switchboard ×3", sio2: "Socket.IO ×2", sio2s: "Socket.IO ×2, streams adapter",
  hop: "no Redis + a bare Redis hop beside",
};
const median = (xs) => {
  const s = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (!s.length) return NaN;
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
// `batch`: envelopes per publish request (lines from before batches were measured have none).
const sel = (cfg, target, rate, monitor = false, batch = 1) => rows.filter((r) => r.label === cfg && r.target === target &&
  Number(r.rate) === rate && (r.monitor === "1") === monitor && Number(r.batch ?? 1) === batch);
const mon = (cfg, target, rate, key) => median(sel(cfg, target, rate, true).map((r) => Number(r[key])));
const pick = (cfg, target, rate, key, batch = 1) => median(sel(cfg, target, rate, false, batch).map((r) => Number(r[key])));
// Delivered per CPU-second of the nodes and Redis together.
const withRedis = (cfg, target, rate, batch = 1) => median(sel(cfg, target, rate, false, batch).map((r) => {
  const cpu = Number(r.server_cpu_pct) + (Number.isFinite(Number(r.redis_cpu_pct)) ? Number(r.redis_cpu_pct) : 0);
  return cpu > 0 ? Number(r.delivered_per_s) / (cpu / 100) : NaN;
}));
const fmt = (x, digits = 0) => Number.isFinite(x)
  ? x.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits }) : "-";
const ratio = (a, b) => (Number.isFinite(a) && Number.isFinite(b) && b > 0 ? `${(a / b).toFixed(2)}×` : "-");
const fanout = (target) => rows.find((r) => r.target === target)?.fanout ?? "?";
const bt = Number(process.env.BATCH);
const tr = Number(process.env.TENANT_RATE), lr = Number(process.env.LAT_RATE), mr = Number(process.env.MONITOR_RATE);
// The ratio column: switchboard with 2 nodes against Socket.IO with 2 nodes, when both ran.
const [ra, rb] = ["sb2", "sio2"];
const hasRatio = configs.includes(ra) && configs.includes(rb);
const lines = [];
lines.push(`| figure | ${configs.map((c) => names[c] ?? c).join(" | ")} |${hasRatio ? " switchboard ×2 ÷ Socket.IO ×2 |" : ""}`);
lines.push(`|---|${configs.map(() => "---:").join("|")}|${hasRatio ? "---:|" : ""}`);
const row = (what, get, digits = 0) => {
  const vals = configs.map(get);
  // A figure no configuration measured (PHASES, MONITOR=0) is left out.
  if (!vals.some(Number.isFinite)) return;
  const r = hasRatio ? ` ${ratio(get(ra), get(rb))} |` : "";
  lines.push(`| ${what} | ${vals.map((v) => fmt(v, digits)).join(" | ")} |${r}`);
};
row(`delivered msg/s, tenant broadcast (fan-out ${fanout("tenant")}), as fast as delivered`, (c) => pick(c, "tenant", 0, "delivered_per_s"));
row(`delivered msg/s, one user (fan-out ${fanout("user")}), as fast as delivered`, (c) => pick(c, "user", 0, "delivered_per_s"));
row(`delivered msg/s, one user (fan-out ${fanout("user")}), ${bt} per request, as fast as delivered`, (c) => pick(c, "user", 0, "delivered_per_s", bt));
row("  publishes/s, tenant phase", (c) => pick(c, "tenant", 0, "publish_per_s"));
row("  publishes/s, user phase", (c) => pick(c, "user", 0, "publish_per_s"));
row("  nodes' CPU, tenant phase (% of a core)", (c) => pick(c, "tenant", 0, "server_cpu_pct"));
row("  Redis CPU, tenant phase (% of a core)", (c) => pick(c, "tenant", 0, "redis_cpu_pct"));
row("  loadgen CPU, tenant phase (% of a core)", (c) => pick(c, "tenant", 0, "loadgen_cpu_pct"));
row("delivered per server CPU-second, tenant phase", (c) => pick(c, "tenant", 0, "delivered_per_cpu_s"));
row("delivered per server CPU-second, user phase", (c) => pick(c, "user", 0, "delivered_per_cpu_s"));
row(`delivered per server CPU-second, user phase, ${bt} per request`, (c) => pick(c, "user", 0, "delivered_per_cpu_s", bt));
row("  the same with Redis's CPU added, tenant phase", (c) => withRedis(c, "tenant", 0));
row("  the same with Redis's CPU added, user phase", (c) => withRedis(c, "user", 0));
row(`  the same with Redis's CPU added, user phase, ${bt} per request`, (c) => withRedis(c, "user", 0, bt));
row(`p50 latency ms, one user at ${lr} publishes/s`, (c) => pick(c, "user", lr, "p50_us") / 1000, 2);
row(`p99 latency ms, one user at ${lr} publishes/s`, (c) => pick(c, "user", lr, "p99_us") / 1000, 2);
if (hops.length) {
  row(`  a bare Redis pub/sub hop beside it (redis-hop at ${lr}/s), p50 ms`, (c) => c === "hop" ? median(hops.map((r) => Number(r.p50_us))) / 1000 : NaN, 2);
  row(`  a bare Redis pub/sub hop beside it (redis-hop at ${lr}/s), p99 ms`, (c) => c === "hop" ? median(hops.map((r) => Number(r.p99_us))) / 1000 : NaN, 2);
}
row(`p50 latency ms, tenant broadcast at ${tr} publishes/s`, (c) => pick(c, "tenant", tr, "p50_us") / 1000, 2);
row(`p99 latency ms, tenant broadcast at ${tr} publishes/s`, (c) => pick(c, "tenant", tr, "p99_us") / 1000, 2);
row(`server memory per connection, bytes (nodes' RSS, ${process.env.CLIENTS} live clients)`, (c) => pick(c, "tenant", 0, "mem_per_conn"));
row("Redis commands per publish, tenant phase", (c) => pick(c, "tenant", 0, "redis_cmds_per_publish"), 2);
row("Redis commands per publish, user phase", (c) => pick(c, "user", 0, "redis_cmds_per_publish"), 2);
row(`Redis commands per publish, one user at ${lr}/s`, (c) => pick(c, "user", lr, "redis_cmds_per_publish"), 2);
row(`Redis commands sent by clients per publish (MONITOR), tenant broadcast at ${tr}/s`, (c) => mon(c, "tenant", tr, "redis_client_cmds_per_publish"), 2);
row(`Redis commands sent by clients per publish (MONITOR), one user at ${mr}/s`, (c) => mon(c, "user", mr, "redis_client_cmds_per_publish"), 2);
// The publish path: the client command (a script by its SHA) whose count is nearest the
// publishes'; everything else clients sent is background (leases, heartbeats, probes).
const pathOf = (r) => {
  if (!r.redis_client_cmds || r.redis_client_cmds === "-") return { name: "-", per: NaN, bg: NaN };
  const pubs = Number(r.publishes_in_window), secs = Number(r.window_s);
  const cmds = r.redis_client_cmds.split(";").map((e) => { const [n, c] = e.split("="); return [n, Number(c)]; });
  const total = cmds.reduce((s, [, c]) => s + c, 0);
  const [name, count] = cmds.reduce((best, e) => (Math.abs(e[1] - pubs) < Math.abs(best[1] - pubs) ? e : best));
  return { name, per: pubs > 0 ? count / pubs : NaN, bg: secs > 0 ? (total - count) / secs : NaN };
};
const path = (cfg, target, rate) => {
  const all = sel(cfg, target, rate, true).map(pathOf);
  return { name: all[0]?.name ?? "-", per: median(all.map((p) => p.per)), bg: median(all.map((p) => p.bg)) };
};
row(`  of them the publish path (the command called about once per publish), tenant at ${tr}/s`, (c) => path(c, "tenant", tr).per, 2);
row(`  of them the publish path, one user at ${mr}/s`, (c) => path(c, "user", mr).per, 2);
row(`  other commands sent per second (background: leases, heartbeats, probes), tenant phase`, (c) => path(c, "tenant", tr).bg, 0);
row(`  commands run by scripts per publish (MONITOR), tenant broadcast at ${tr}/s`, (c) => mon(c, "tenant", tr, "redis_scripted_cmds_per_publish"), 2);
row(`  commands run by scripts per publish (MONITOR), one user at ${mr}/s`, (c) => mon(c, "user", mr, "redis_scripted_cmds_per_publish"), 2);
console.log(lines.join("\n"));
const bad = rows.reduce((s, r) => s + Number(r.missing) + Number(r.dropped) + Number(r.errors), 0);
console.log(`\nlost deliveries, dropped connections and publish errors over all load runs: ${bad}`);

if (recov.length) {
  console.log("\n| recovery test | clients | publishes answered 200 | deliveries expected | lost | duplicated | clients with loss | reconnected | reported recovered | reconnect p50 / max ms |");
  console.log("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
  const rn = { sb: "switchboard ×2, resume", "sio-redis": "Socket.IO ×2, redis adapter (plain reconnect)", "sio-streams": "Socket.IO ×2, redis streams adapter + connectionStateRecovery" };
  for (const r of recov) {
    console.log(`| ${rn[r.label] ?? r.label} | ${r.clients} | ${fmt(Number(r.publishes_ok))} | ${fmt(Number(r.expected))} | ${fmt(Number(r.lost))} | ${fmt(Number(r.duplicated))} | ${r.clients_with_loss} | ${r.reconnected} of ${r.disconnected} | ${r.recovered} | ${r.reconnect_p50_ms} / ${r.reconnect_max_ms} |`);
  }
}

console.log("\ntargets (issue 12):");
const verdict = (ok) => (ok === undefined ? "not measured" : ok ? "met" : "MISSED");
const sbRec = recov.find((r) => r.label === "sb");
console.log(`- zero lost and duplicated for switchboard within retention: ${sbRec ? `${sbRec.lost} lost, ${sbRec.duplicated} duplicated: ${verdict(Number(sbRec.lost) === 0 && Number(sbRec.duplicated) === 0)}` : verdict(undefined)}`);
const sbCfgs = configs.filter((c) => /^sb\d$/.test(c));
for (const c of sbCfgs) {
  const t = path(c, "tenant", tr), u = path(c, "user", mr);
  console.log(`- one Redis round trip per publish whatever the fan-out, ${names[c]}: the publish path sends ${fmt(t.per, 2)} (${t.name}, tenant broadcast, fan-out ${fanout("tenant")}) and ${fmt(u.per, 2)} (${u.name}, one user, fan-out ${fanout("user")}) per publish: ${verdict(Number.isFinite(t.per) && Number.isFinite(u.per) ? t.per <= 1.05 && u.per <= 1.05 : undefined)}; besides, ${fmt(t.bg, 0)} commands/s of background work`);
}
if (configs.includes("solo")) {
  const base = pick("solo", "user", lr, "p99_us");
  for (const c of sbCfgs) {
    const add = (pick(c, "user", lr, "p99_us") - base) / 1000;
    console.log(`- cluster mode adds ≤ 1 ms to p99 at ${lr} publishes/s, ${names[c]}: ${add >= 0 ? "+" : ""}${fmt(add, 2)} ms: ${verdict(Number.isFinite(add) ? add <= 1 : undefined)}`);
  }
  if (hops.length) {
    const hopP99 = median(hops.map((r) => Number(r.p99_us))) / 1000;
    const hopSolo = pick("hop", "user", lr, "p99_us") / 1000;
    console.log(`  for scale: one bare Redis pub/sub hop beside the solo load has a p99 of ${fmt(hopP99, 2)} ms (that run's own p99 ${fmt(hopSolo, 2)} ms against ${fmt(base / 1000, 2)} ms without the probe)`);
  }
}
// switchboard ×2 against Socket.IO ×2, and so each other binary's ×2 (`sb2@NAME`) in the run.
for (const sb of configs.filter((c) => c === ra || c.startsWith(`${ra}@`))) {
  if (!configs.includes(rb)) break;
  const who = sb === ra ? "" : ` (${sb})`;
  for (const target of ["tenant", "user"]) {
    const a = pick(sb, target, 0, "delivered_per_cpu_s"), b = pick(rb, target, 0, "delivered_per_cpu_s");
    if (!Number.isFinite(a) || !Number.isFinite(b)) continue;
    const a2 = withRedis(sb, target, 0), b2 = withRedis(rb, target, 0);
    console.log(`- delivered per server CPU-second ≥ 3× Socket.IO's, ${target} phase${who}: ${ratio(a, b)} (${ratio(a2, b2)} with Redis's CPU): ${verdict(a / b >= 3)}`);
  }
  const a = pick(sb, "user", 0, "delivered_per_cpu_s", bt), b = pick(rb, "user", 0, "delivered_per_cpu_s", bt);
  if (Number.isFinite(a) && Number.isFinite(b)) {
    const a2 = withRedis(sb, "user", 0, bt), b2 = withRedis(rb, "user", 0, bt);
    console.log(`- delivered per server CPU-second ≥ 3× Socket.IO's, user phase, both offered batches of ${bt} (issue 16's like-for-like form)${who}: ${ratio(a, b)} (${ratio(a2, b2)} with Redis's CPU): ${verdict(a / b >= 3)}`);
  }
}
EOF
if [ -n "${RAW:-}" ]; then echo "RESULT lines kept in $RAW"; fi
if [ ${#failures[@]} -gt 0 ]; then
  echo "bench-cluster: these runs failed (their output is above): ${failures[*]}" >&2
  exit 1
fi
