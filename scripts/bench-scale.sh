#!/usr/bin/env bash
# How many idle WebSocket connections the server holds, and what each costs (issue 16).
#
#   scripts/bench-scale.sh                          # single node at 5k/10k/19k, then 6 nodes/100k
#   CLUSTER=0 scripts/bench-scale.sh                # the single node only (about 8 minutes)
#   SINGLE=0 CLUSTER_CLIENTS=30000 scripts/bench-scale.sh   # a smaller cluster run
#   SIZES="2000 4000" IDLE_SECS=30 CLUSTER=0 scripts/bench-scale.sh   # a quick look
#
# File descriptors: it reads the hard limit (`ulimit -Hn`), raises the soft limit to it (every
# process it starts inherits that), tries to raise the hard limit and says whether it could. One
# server process holds at most the hard limit minus its reserve (FD_RESERVE) of WebSockets; a
# size above that is lowered to fit, and the output says so.
#
# Per measurement (one fresh set of servers each, release build, every process on 127.0.0.x,
# stopped by PID; a trap stops everything on exit):
#   1. `HOLDERS` load generators (`loadgen --hold`, tools/loadgen/src/hold.rs) connect the clients
#      (2 per user, one tenant), each from its own source address 127.0.0.2, 127.0.0.3, …
#      (`--bind`), round-robin over the nodes, at most CONCURRENCY handshakes in flight each.
#      Connect rate = clients / wall time from the holders' start to the last one live.
#   2. After SETTLE seconds: memory per connection = the nodes' summed VmRSS minus before the
#      first connect, over the clients.
#   3. An idle window of IDLE_SECS (no publishing; the server pings each connection after 25 s of
#      silence and the holders answer): the nodes' CPU time over it (/proc/PID/stat, utime +
#      stime), per connection and per second; Redis's apart in cluster mode.
#   4. BROADCASTS tenant broadcasts, GAP seconds apart, from a separate load generator with a few
#      clients (`--phase tenant:RATE` through node 1's POST /publish), each reaching every held
#      connection. Delivery latency = receive time minus the `ts` in the payload, on the Unix
#      clock that every process shares; p50/p99/max over every delivery to the held connections
#      (the holders' histograms merged).
# Then, over the single-node sizes, a least-squares fit of RSS against connections (the slope is
# the cost per connection, the intercept the fixed cost), and a projection to TARGET connections.
#
# Cluster mode: `scripts/redis.sh start` (a Redis of its own on a free port), NODES nodes over it
# (`--redis`, `--node-id`), CLUSTER_CLIENTS clients from HOLDERS_CLUSTER holders.
# Output: readable lines, and `SCALE key=value …` lines kept in RAW (default: printed at the end).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh

SINGLE="${SINGLE:-1}"
CLUSTER="${CLUSTER:-1}"
SIZES="${SIZES:-5000 10000 19000}"
CLUSTER_CLIENTS="${CLUSTER_CLIENTS:-100000}"
NODES="${NODES:-6}"
# Four load generators even for one node: one process on one source address connected 19,000
# clients at 3,000/s, four at 12,500/s (docs/benchmarks/scale.md): the connect rate is then the server's.
HOLDERS_SINGLE="${HOLDERS_SINGLE:-4}"
HOLDERS_CLUSTER="${HOLDERS_CLUSTER:-6}"
CONCURRENCY="${CONCURRENCY:-64}"
SETTLE="${SETTLE:-5}"
IDLE_SECS="${IDLE_SECS:-60}"
BROADCASTS="${BROADCASTS:-5}"
GAP="${GAP:-5}"
LEAD_CLIENTS="${LEAD_CLIENTS:-10}"
FD_RESERVE="${FD_RESERVE:-256}"
CONNECT_TIMEOUT="${CONNECT_TIMEOUT:-900}"
PORT_BASE="${PORT_BASE:-18600}"
TARGET="${TARGET:-1000000}"

die() { echo "bench-scale: $*" >&2; exit 1; }
for tool in curl ss python3; do command -v "$tool" >/dev/null || die "$tool is required"; done

# --- file descriptors ------------------------------------------------------------------------
hard=$(ulimit -Hn)
[ "$hard" = unlimited ] && hard=1048576
raised=no
if (ulimit -Hn $((hard * 2))) 2>/dev/null; then raised=yes; fi
ulimit -n "$hard"
per_process=$((hard - FD_RESERVE))
echo "== file descriptors: hard limit $hard (raising it: $([ $raised = yes ] && echo 'possible, not done' || echo 'not permitted here')), soft limit raised to $(ulimit -n); one server holds at most $per_process WebSockets (reserve $FD_RESERVE)"

# --- build -----------------------------------------------------------------------------------
echo "== building the server and the load generator (release)"
cargo build --release --quiet -p switchboard-server -p switchboard-loadgen
target_dir=$(cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
server_bin="$target_dir/release/switchboard"
loadgen_bin="$target_dir/release/loadgen"
commit=$(git rev-parse --short HEAD)
dirty=$(git status --porcelain --untracked-files=no -- server src Cargo.lock | wc -l)
echo "== commit $commit$([ "$dirty" = 0 ] || echo ' (with uncommitted changes to server/ or src/)'), $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')), $(date -u '+%Y-%m-%d %H:%M UTC'), load average $(cut -d' ' -f1-3 /proc/loadavg)"

export SWITCHBOARD_JWT_SECRET="scale-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
export SWITCHBOARD_ADMIN_KEY="scale-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
export LOADGEN_JWT_SECRET="$SWITCHBOARD_JWT_SECRET" LOADGEN_ADMIN_KEY="$SWITCHBOARD_ADMIN_KEY"
work=$(mktemp -d "${TMPDIR:-/tmp}/bench-scale.XXXXXX")
raw="${RAW:-$work/scale.txt}"
: >"$raw"
tck=$(getconf CLK_TCK)

node_pids=()
holder_pids=()
lead_pid=""
REDIS_PID=""
stop_pids() { # signal pid...
  local sig=$1 pid
  shift
  for pid in "$@"; do kill "-$sig" "$pid" 2>/dev/null || true; done
  for pid in "$@"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
}
stop_nodes() {
  [ ${#node_pids[@]} -eq 0 ] || stop_pids INT "${node_pids[@]}"
  node_pids=()
}
cleanup() {
  trap '' INT TERM
  [ ${#holder_pids[@]} -eq 0 ] || stop_pids TERM "${holder_pids[@]}"
  [ -z "$lead_pid" ] || stop_pids TERM "$lead_pid"
  stop_nodes
  [ -z "$REDIS_PID" ] || scripts/redis.sh stop "$REDIS_PID" >/dev/null 2>&1 || true
  if [ -n "${KEEP:-}" ]; then echo "logs kept in $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Starts a node on 127.0.0.1:$1 (more arguments go to the server) and waits for it to answer.
start_node() {
  local port=$1 i=${#node_pids[@]}
  shift
  bench_require_free_ports bench-scale "$port"
  setsid "$server_bin" --listen "127.0.0.1:$port" --fd-reserve "$FD_RESERVE" \
    --max-pending-connections "$FD_RESERVE" "$@" </dev/null >"$work/node$i.log" 2>&1 &
  node_pids+=("$!")
  bench_wait_for bench-scale "$!" "$port" /healthz 300 || { tail -n 20 "$work/node$i.log" >&2; exit 1; }
}

sum_rss_kib() { # pid...
  local pid s=0 v
  for pid in "$@"; do
    v=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null) || v=""
    [ -n "$v" ] || die "process $pid is gone"
    s=$((s + v))
  done
  echo "$s"
}
sum_ticks() { # pid...
  local pid s=0 v
  for pid in "$@"; do
    v=$(awk '{sub(/.*\) /, ""); print $12 + $13}' "/proc/$pid/stat" 2>/dev/null) || v=""
    [ -n "$v" ] || die "process $pid is gone"
    s=$((s + v))
  done
  echo "$s"
}

# measure LABEL CLIENTS HOLDERS ADDRS: one measurement on the running nodes (node_pids).
measure() {
  local label=$1 n=$2 holders=$3 addrs=$4
  local stop="$work/stop-$label" k share offset count started live_at
  rm -f "$stop"
  local rss_before
  rss_before=$(sum_rss_kib "${node_pids[@]}")
  echo "== $label: $n clients from $holders load generator(s) over ${#node_pids[@]} node(s)"
  holder_pids=()
  # An even share each (two connections per user), the last one takes the rest.
  share=$((n / holders / 2 * 2))
  [ "$share" -gt 0 ] || die "$n clients are too few for $holders load generators"
  started=$(date +%s.%N)
  for k in $(seq 0 $((holders - 1))); do
    offset=$((k * share))
    count=$share
    [ "$k" -lt $((holders - 1)) ] || count=$((n - offset))
    "$loadgen_bin" --server switchboard --addr "$addrs" --bind "127.0.0.$((k + 2))" \
      --clients "$count" --conns-per-user 2 --tenants 1 --user-offset "$offset" \
      --connect-concurrency "$CONCURRENCY" --connect-timeout "$CONNECT_TIMEOUT" \
      --threads "$([ "$holders" -gt 1 ] && echo 1 || echo 2)" --label "$label" --hold "$stop" \
      >"$work/holder-$label-$k.out" 2>"$work/holder-$label-$k.err" &
    holder_pids+=("$!")
  done
  # Wait until every holder is live (or one gave up).
  local all ok pid
  while true; do
    all=1
    for k in "${!holder_pids[@]}"; do
      if ! grep -q '^LIVE' "$work/holder-$label-$k.out" 2>/dev/null; then
        all=0
        pid=${holder_pids[$k]}
        if ! kill -0 "$pid" 2>/dev/null; then
          echo "bench-scale: $label: load generator $k ended before its clients were live:" >&2
          tail -n 3 "$work/holder-$label-$k.err" >&2
          local got=0 s
          for s in "$work"/holder-"$label"-*.out; do
            grep -q '^LIVE' "$s" && got=$((got + $(sed -n 's/^LIVE clients=\([0-9]*\).*/\1/p' "$s")))
          done
          echo "SCALE label=$label nodes=${#node_pids[@]} clients=$n failed=1 live_holders_clients=$got why=$(tail -n 1 "$work/holder-$label-$k.err" | tr ' =' '_:')" >>"$raw"
          touch "$stop"
          stop_pids TERM "${holder_pids[@]}"
          holder_pids=()
          return 1
        fi
      fi
    done
    [ "$all" = 1 ] && break
    sleep 0.2
  done
  live_at=$(date +%s.%N)
  local held=0 s
  for s in "$work"/holder-"$label"-*.out; do
    held=$((held + $(sed -n 's/^LIVE clients=\([0-9]*\).*/\1/p' "$s")))
  done
  [ "$held" = "$n" ] || die "$label: the load generators hold $held clients, not $n"
  local connect_s
  connect_s=$(python3 -c "print(f'{$live_at - $started:.2f}')")
  echo "   every client live after ${connect_s} s ($(python3 -c "print(round($n / ($live_at - $started)))")/s)"
  sleep "$SETTLE"
  local rss_live
  rss_live=$(sum_rss_kib "${node_pids[@]}")
  echo "   nodes' RSS ${rss_before} KiB before, ${rss_live} KiB with every client live"
  # The kernel's TCP buffers (both ends of every loopback connection), not in any RSS.
  local tcp_mem_pages
  tcp_mem_pages=$(awk '/^TCP:/ {for (i = 2; i < NF; i++) if ($i == "mem") print $(i + 1)}' /proc/net/sockstat)

  # Idle window.
  local c0 c1 r0=0 r1=0 l0 l1
  c0=$(sum_ticks "${node_pids[@]}")
  [ -z "$REDIS_PID" ] || r0=$(sum_ticks "$REDIS_PID")
  l0=$(sum_ticks "${holder_pids[@]}")
  sleep "$IDLE_SECS"
  c1=$(sum_ticks "${node_pids[@]}")
  [ -z "$REDIS_PID" ] || r1=$(sum_ticks "$REDIS_PID")
  l1=$(sum_ticks "${holder_pids[@]}")
  echo "   idle ${IDLE_SECS} s: nodes $((c1 - c0)) ticks, Redis $((r1 - r0)), load generators $((l1 - l0)) (${tck}/s)"

  # Broadcasts from a separate, small load generator.
  local rate
  rate=$(python3 -c "print(1 / $GAP)")
  "$loadgen_bin" --server switchboard --addr "$addrs" --clients "$LEAD_CLIENTS" \
    --conns-per-user 1 --tenants 1 --user-offset 100000000 --publishers 1 --publish-via 0 \
    --phase "tenant:$rate" --warmup 0 --duration "$((BROADCASTS * GAP))" --settle 0 \
    --threads 1 --label "$label" >"$work/lead-$label.out" 2>"$work/lead-$label.err" &
  lead_pid=$!
  wait "$lead_pid" || { cat "$work/lead-$label.err" >&2; lead_pid=""; return 1; }
  lead_pid=""
  local rss_after
  rss_after=$(sum_rss_kib "${node_pids[@]}")
  touch "$stop"
  for pid in "${holder_pids[@]}"; do wait "$pid" || true; done
  holder_pids=()
  local published
  published=$(sed -n 's/^ *publishes *\([0-9]*\) sent.*/\1/p' "$work/lead-$label.out" | head -1)
  cat "$work"/holder-"$label"-*.out >"$work/holders-$label.txt"

  python3 - "$work/holders-$label.txt" <<EOF >>"$raw"
import sys
hist, received, dropped = {}, 0, 0
for line in open(sys.argv[1]):
    if line.startswith("HIST ") and line.strip() != "HIST -":
        for kv in line.split()[1].split(","):
            v, c = kv.split(":")
            hist[int(v)] = hist.get(int(v), 0) + int(c)
    if line.startswith("RESULT"):
        f = dict(kv.split("=", 1) for kv in line.split()[1:])
        dropped += int(f["dropped"])
total = sum(hist.values())
def pct(p):
    rank, seen = max(1, -(-total * p // 1)), 0
    for v in sorted(hist):
        seen += hist[v]
        if seen >= rank:
            return v
    return 0
n, before, live, after = $n, $rss_before, $rss_live, $rss_after
idle_s = ($c1 - $c0) / $tck
fields = dict(label="$label", nodes=${#node_pids[@]}, clients=n, commit="$commit",
    connect_s=$connect_s, connect_per_s=round(n / $connect_s),
    rss_before_kib=before, rss_live_kib=live, rss_after_kib=after,
    kernel_tcp_mem_kib=int("${tcp_mem_pages:-0}" or 0) * $(getconf PAGESIZE) // 1024,
    bytes_per_conn=round((live - before) * 1024 / n),
    idle_secs=$IDLE_SECS, idle_cpu_s=round(idle_s, 2), idle_cpu_pct=round(idle_s / $IDLE_SECS * 100, 1),
    idle_us_per_conn_s=round(idle_s / $IDLE_SECS / n * 1e6, 3),
    redis_idle_cpu_pct=round(($r1 - $r0) / $tck / $IDLE_SECS * 100, 1),
    loadgen_idle_cpu_pct=round(($l1 - $l0) / $tck / $IDLE_SECS * 100, 1),
    broadcasts=int("${published:-0}" or 0), received=total, expected=int("${published:-0}" or 0) * n,
    p50_ms=pct(0.5) / 1000, p99_ms=pct(0.99) / 1000, max_ms=pct(1.0) / 1000, dropped=dropped)
print("SCALE " + " ".join(f"{k}={v}" for k, v in fields.items()))
EOF
  tail -n 1 "$raw" | tr ' ' '\n' | tail -n +2 | paste -sd' ' | fold -s -w 100 | sed 's/^/   /'
}

if [ "$SINGLE" = 1 ]; then
  for size in $SIZES; do
    want=$size
    if [ "$size" -gt $((per_process - LEAD_CLIENTS - 16)) ]; then
      size=$((per_process - LEAD_CLIENTS - 16))
      echo "== $want clients do not fit one process under the hard limit ($hard): measuring $size"
    fi
    start_node "$PORT_BASE"
    measure "single-$size" "$size" "$HOLDERS_SINGLE" "127.0.0.1:$PORT_BASE" || true
    stop_nodes
  done
fi

if [ "$CLUSTER" = 1 ]; then
  per_node=$(((CLUSTER_CLIENTS + NODES - 1) / NODES))
  [ "$per_node" -le $((per_process - LEAD_CLIENTS - 16)) ] ||
    die "$CLUSTER_CLIENTS clients over $NODES nodes is $per_node per node, above what one process may hold ($per_process): more NODES"
  per_holder=$(((CLUSTER_CLIENTS + HOLDERS_CLUSTER - 1) / HOLDERS_CLUSTER))
  [ "$per_holder" -le $((hard - 512)) ] ||
    die "$per_holder clients per load generator is above its descriptor limit ($hard): more HOLDERS_CLUSTER"
  scripts/redis.sh install
  eval "$(scripts/redis.sh start)"
  echo "== redis-server on 127.0.0.1:$REDIS_PORT (pid $REDIS_PID)"
  addrs=""
  for i in $(seq 1 "$NODES"); do
    port=$((PORT_BASE + i))
    start_node "$port" --redis "redis://127.0.0.1:$REDIS_PORT/" --node-id "scale$i"
    addrs="$addrs${addrs:+,}127.0.0.1:$port"
  done
  measure "cluster-$CLUSTER_CLIENTS" "$CLUSTER_CLIENTS" "$HOLDERS_CLUSTER" "$addrs" || true
  stop_nodes
  scripts/redis.sh stop "$REDIS_PID" >/dev/null 2>&1 || true
  REDIS_PID=""
fi

echo
echo "== results (commit $commit)"
python3 - "$raw" "$TARGET" "$per_process" <<'EOF'
import sys
rows = [dict(kv.split("=", 1) for kv in l.split()[1:]) for l in open(sys.argv[1]) if l.startswith("SCALE")]
target, per_process = int(sys.argv[2]), int(sys.argv[3])
ok = [r for r in rows if "failed" not in r]
print("| run | nodes | connections | RSS per connection (B) | nodes' RSS (MiB) | connect/s | idle CPU (% of a core) | idle CPU per connection (µs/s) | broadcast p50 / p99 / max (ms) | received / expected | dropped |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|")
for r in ok:
    print(f"| {r['label']} | {r['nodes']} | {int(r['clients']):,} | {int(r['bytes_per_conn']):,} | {int(r['rss_live_kib']) / 1024:,.0f} | "
          f"{int(r['connect_per_s']):,} | {r['idle_cpu_pct']}{' + Redis ' + r['redis_idle_cpu_pct'] if r['nodes'] != '1' else ''} | "
          f"{r['idle_us_per_conn_s']} | {r['p50_ms']} / {r['p99_ms']} / {r['max_ms']} | {int(r['received']):,} / {int(r['expected']):,} | {r['dropped']} |")
for r in rows:
    if "failed" in r:
        print(f"| {r['label']} | {r['nodes']} | {int(r['clients']):,} | FAILED: {r['live_holders_clients']} live; {r['why']} |")
single = [r for r in ok if r["nodes"] == "1"]
if len(single) >= 2:
    xs = [int(r["clients"]) for r in single]
    ys = [int(r["rss_live_kib"]) * 1024 for r in single]
    cs = [float(r["idle_cpu_s"]) / float(r["idle_secs"]) for r in single]
    mx, my, mc = sum(xs) / len(xs), sum(ys) / len(ys), sum(cs) / len(cs)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    icpt = my - slope * mx
    cslope = sum((x - mx) * (c - mc) for x, c in zip(xs, cs)) / sxx
    resid = max(abs(y - (icpt + slope * x)) for x, y in zip(xs, ys))
    print(f"\nfit over {len(xs)} single-node runs: RSS = {icpt / 2**20:.1f} MiB + {slope:,.0f} B × connections (largest residual {resid / 2**20:.1f} MiB); "
          f"idle CPU = {cslope * 1e6:.3f} µs per connection per second (cores = {cslope:.2e} × connections)")
    nodes = -(-target // min(per_process, 100_000))
    mem = target * slope + nodes * icpt
    print(f"projection to {target:,} connections: {mem / 2**30:.1f} GiB of server RSS over at least {nodes} processes "
          f"(at most {min(per_process, 100_000):,} each: this machine's descriptor limit, the hub's 100,000), "
          f"{cslope * target:.2f} cores for idle heartbeats alone")
EOF
if [ -z "${RAW:-}" ]; then echo; cat "$raw"; else echo "SCALE lines kept in $raw"; fi
