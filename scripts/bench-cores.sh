#!/usr/bin/env bash
# Both cores: the same switchboard binary under the same tenant-broadcast load, pinned to one CPU
# (server on CPU 0, load generator on CPU 1, as scripts/bench-ab.sh does) and unpinned (server
# and load generator free on every CPU, the server's tokio runtime with a worker per CPU),
# alternated REPS times in one run. Prints each run's delivered/s, CPU and the ratio of the
# medians (unpinned ÷ pinned); the target is ≥ 1.7× on a 2-CPU machine. Since the load generator
# shares the CPUs, it also prints each side's CPU per delivery and the ratio those costs allow on
# an otherwise idle machine, and warns when the pinned server did not use its core (a shared
# machine: the measured ratio then reflects CPU share rather than scaling).
#
# Each run also samples the server's threads over the window (/proc/PID/task/*/stat: the busiest
# thread and the sum). With PERF=1 one more unpinned run (not in the medians) records the server
# with perf (frame-pointer call graphs; the server is built with frame pointers for it, into
# TARGET/frame-pointers, or FP_SERVER names such a build) for
# PERF_SECS and counts the samples whose stack passes through the hub task (`driver::hub_task`):
# that share of the samples times the server's CPU is the hub task's CPU, in cores. The hub task is
# one tokio task, so one core is its ceiling: its share of one core is how far it is from being
# the bottleneck.
#
# The load generator parses the `ts` of one event in LATENCY_EVERY (default 16) per client and
# counts the rest, to keep its receive path cheap (it shares the cores); p99 comes from that sample.
#
#   scripts/bench-cores.sh                       # defaults: 2,000 clients, tenant:0, 3 alternations
#   REPS=5 CLIENTS=4000 PERF=1 scripts/bench-cores.sh
#   TENANTS=1 PHASE=tenant:0:b10 scripts/bench-cores.sh   # 10 publishes per request to one tenant
#   DEFER=1 REPS=5 scripts/bench-cores.sh        # the clients' reads deferred (below)
#
# DEFER=1 takes the load generator's receive path out of the window: each run is BURSTS `:defer`
# bursts of the phase (the first a warm-up, not counted). In a burst the clients stop reading, the
# load generator publishes DEFER_DELIVERIES deliveries' worth as fast as the server answers, and
# the window lasts until the server's /metrics say it wrote every frame it was handed; the
# kernel's socket buffers (RCVBUF bytes a client, set before connecting) hold them meanwhile.
# Then the clients read and count every delivery (any missing fails the run). The server pays
# for its writes in full, including the loopback receive work the kernel does in the writer's
# context; what the window leaves out is the load generator's reads, which on another host would
# not be on these cores. No per-thread sampling in this mode; with PERF=1 the profiled run records
# the server over all its bursts.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh

CLIENTS="${CLIENTS:-2000}"
TENANTS="${TENANTS:-10}"
REPS="${REPS:-3}"
PHASE="${PHASE:-tenant:0}"
WARMUP="${WARMUP:-2}"
DURATION="${DURATION:-6}"
PUBLISHERS="${PUBLISHERS:-16}"
PORT="${PORT:-18390}"
PERF="${PERF:-0}"
PERF_SECS="${PERF_SECS:-3}"
# The load generator's runtime threads in both modes (empty: one per CPU it may run on).
LOADGEN_THREADS="${LOADGEN_THREADS:-}"
LATENCY_EVERY="${LATENCY_EVERY:-16}"
DEFER="${DEFER:-0}"
BURSTS="${BURSTS:-3}"
DEFER_DELIVERIES="${DEFER_DELIVERIES:-400000}"
RCVBUF="${RCVBUF:-1048576}"

for tool in taskset curl ss node; do
  command -v "$tool" >/dev/null || { echo "bench-cores: $tool is required" >&2; exit 1; }
done
[ "$(nproc)" -ge 2 ] || { echo "bench-cores: needs at least 2 CPUs" >&2; exit 1; }
if [ "$PERF" = 1 ]; then command -v perf >/dev/null || { echo "bench-cores: PERF=1 needs perf" >&2; exit 1; }; fi
bench_require_free_ports bench-cores "$PORT"
ulimit -n "$(ulimit -Hn)"

echo "== building the server and the load generator (release)"
cargo build --release --quiet -p switchboard-server -p switchboard-loadgen
target_dir=$(cargo metadata --format-version 1 --no-deps |
  node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).target_directory))')
server_bin="$target_dir/release/switchboard"
loadgen_bin="$target_dir/release/loadgen"
fp_bin=""
if [ "$PERF" = 1 ]; then
  # The same release build with frame pointers, in a target directory of its own, for perf's
  # call graphs (FP_SERVER: one built already).
  fp_bin="${FP_SERVER:-}"
  if [ -z "$fp_bin" ]; then
    RUSTFLAGS="-C force-frame-pointers=yes" cargo build --release --quiet -p switchboard-server \
      --target-dir "$target_dir/frame-pointers"
    fp_bin="$target_dir/frame-pointers/release/switchboard"
  fi
fi

secret="cores-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
admin="cores-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
work=$(mktemp -d)
pid=""
cleanup() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
tick=$(getconf CLK_TCK)

# utime+stime of every thread of $1, `tid comm ticks` a line.
thread_ticks() {
  local t
  for t in /proc/"$1"/task/*/stat; do
    # Fields after the command name (in parentheses, may hold spaces) start at its closing paren.
    awk '{ line=$0; c=substr(line, index(line, "(")+1); c=substr(c, 1, index(c, ")")-1);
           r=substr(line, match(line, /\) /)+2); split(r, f, " ");
           gsub(/ /, "_", c); print FILENAME, c, f[12]+f[13] }' "$t" 2>/dev/null || true
  done | sed -E 's#^/proc/[0-9]+/task/([0-9]+)/stat#\1#'
}

# The busiest thread's and all threads' CPU over the window, in % of one core.
threads_report() { # before after secs
  join <(sort "$1") <(sort "$2") | awk -v secs="$3" -v tick="$tick" '
    { d=($5-$3)/tick/secs*100; sum+=d; if (d>max) { max=d; who=$2 } }
    END { printf "busiest_thread=%s busiest_thread_pct=%.0f threads_pct=%.0f", who, max, sum }'
}

run_one() { # mode rep [profile]
  local mode=$1 rep=$2 profile=${3:-0} server_pin=() loadgen_pin=() threads=() bin=$server_bin
  if [ "$profile" = 1 ]; then bin=$fp_bin; fi
  if [ "$mode" = pinned ]; then server_pin=(taskset -c 0); loadgen_pin=(taskset -c 1); fi
  if [ -n "$LOADGEN_THREADS" ]; then threads=(--threads "$LOADGEN_THREADS"); fi
  local phases=(--phase "$PHASE") defer_args=()
  if [ "$DEFER" = 1 ]; then
    phases=()
    for _ in $(seq "$BURSTS"); do phases+=(--phase "$PHASE:defer"); done
    defer_args=(--window "$DEFER_DELIVERIES" --rcvbuf "$RCVBUF")
  fi
  bench_require_free_ports bench-cores "$PORT"
  "${server_pin[@]}" "$bin" --listen "127.0.0.1:$PORT" --jwt-secret "$secret" \
    --admin-key "$admin" >"$work/server.log" 2>&1 &
  pid=$!
  bench_wait_for bench-cores "$pid" "$PORT" /healthz || { cat "$work/server.log" >&2; exit 1; }
  "${loadgen_pin[@]}" "$loadgen_bin" --server switchboard --addr "127.0.0.1:$PORT" --pid "$pid" \
    --jwt-secret "$secret" --admin-key "$admin" --clients "$CLIENTS" --tenants "$TENANTS" \
    --publishers "$PUBLISHERS" --warmup "$WARMUP" --duration "$DURATION" --settle 1 \
    --label "$mode" "${phases[@]}" "${defer_args[@]}" --latency-every "$LATENCY_EVERY" "${threads[@]}" >"$work/out.txt" 2>"$work/err.txt" &
  local lg=$!
  if [ "$DEFER" = 1 ]; then
    local perf_pid=""
    if [ "$profile" = 1 ]; then
      # The whole run once the clients are live: the server is busy only in the bursts (the
      # clients' reads after each burst cost it next to nothing), so these are the bursts' samples.
      for _ in $(seq 600); do [ -s "$work/out.txt" ] && break; sleep 0.1; done
      perf record -q -F 499 -g -p "$pid" -o "$work/perf.data" >/dev/null 2>&1 &
      perf_pid=$!
    fi
    wait "$lg" || { echo "bench-cores: the load generator failed:" >&2; cat "$work/err.txt" >&2; exit 1; }
    local extra=""
    if [ -n "$perf_pid" ]; then
      kill -INT "$perf_pid" 2>/dev/null || true
      wait "$perf_pid" 2>/dev/null || true
      extra=$(perf script -i "$work/perf.data" -F comm,ip,sym 2>/dev/null |
        awk 'BEGIN{RS=""} {n++} /hub_task/ {h++} END {printf "perf_samples=%d hub_task_samples=%d", n, h}')
      mode=profiled
    fi
    kill -INT "$pid"; wait "$pid" 2>/dev/null || true
    pid=""
    # Every burst's report must say nothing was missing and no connection dropped.
    if [ "$(grep -c 'missing after the drain' "$work/out.txt")" != "$BURSTS" ] ||
      grep 'missing after the drain' "$work/out.txt" |
        grep -qv ' 0 deliveries missing after the drain, 0 connections dropped'; then
      echo "bench-cores: deliveries went missing or connections were dropped in a deferred burst:" >&2
      cat "$work/out.txt" "$work/err.txt" >&2; exit 1
    fi
    # The first burst warms up; the others are rows.
    # (threads_pct: the server's CPU over the burst, which the profiled line of the report reads.)
    grep '^RESULT' "$work/out.txt" | tail -n +2 |
      sed -E "s/server_cpu_pct=([0-9.]+)/& threads_pct=\\1/; s/\$/ mode=$mode $extra/" | tee -a "$work/raw.txt" |
      tr ' ' '\n' | grep -E '^(mode|delivered_per_s|server_cpu_pct|loadgen_cpu_pct|measured_s)=' | tr '\n' ' '
    echo
    return
  fi
  # The window opens WARMUP seconds after the phase starts; the phase starts once every client
  # is live and `--settle` has passed: wait for the loadgen's first line, then the warm-up.
  for _ in $(seq 600); do [ -s "$work/out.txt" ] && break; sleep 0.1; done
  sleep "$WARMUP"
  local extra=""
  thread_ticks "$pid" >"$work/t0"
  if [ "$profile" = 1 ]; then
    perf record -q -F 499 -g -p "$pid" -o "$work/perf.data" \
      -- sleep "$PERF_SECS" >/dev/null 2>&1 || true
    local secs=$PERF_SECS
  else
    sleep "$((${DURATION%.*} / 2))"
    local secs=$((${DURATION%.*} / 2))
  fi
  thread_ticks "$pid" >"$work/t1"
  extra="$(threads_report "$work/t0" "$work/t1" "$secs")"
  if [ "$profile" = 1 ] && [ -s "$work/perf.data" ]; then
    # Samples (one stack each, blank-line separated), and those through the hub task's loop.
    local counts
    counts=$(perf script -i "$work/perf.data" -F comm,ip,sym 2>/dev/null |
      awk 'BEGIN{RS=""} {n++} /hub_task/ {h++} END {printf "perf_samples=%d hub_task_samples=%d", n, h}')
    extra="$extra $counts"
    mode=profiled
  fi
  wait "$lg" || { echo "bench-cores: the load generator failed:" >&2; cat "$work/err.txt" >&2; exit 1; }
  kill -INT "$pid"; wait "$pid" 2>/dev/null || true
  pid=""
  local result
  result=$(grep '^RESULT' "$work/out.txt" | head -1)
  echo "$result mode=$mode $extra" | tee -a "$work/raw.txt" |
    tr ' ' '\n' | grep -E '^(mode|delivered_per_s|p99_us|server_cpu_pct|loadgen_cpu_pct|busiest_thread|busiest_thread_pct|threads_pct|perf_samples|hub_task_samples)=' |
    tr '\n' ' '
  echo
}

load0=$(cut -d' ' -f1-3 /proc/loadavg)
for rep in $(seq "$REPS"); do
  if [ $((rep % 2)) = 1 ]; then order="pinned unpinned"; else order="unpinned pinned"; fi
  for mode in $order; do run_one "$mode" "$rep"; done
done
if [ "$PERF" = 1 ]; then run_one unpinned profile 1; fi

echo
echo "== $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')), $(date -u +%Y-%m-%d), commit $(git rev-parse --short HEAD)"
if [ "$DEFER" = 1 ]; then
  echo "== deferred reads: $((BURSTS - 1)) bursts of $DEFER_DELIVERIES deliveries a run after one warm-up, RCVBUF $RCVBUF; the clients read after each burst"
fi
echo "== $CLIENTS clients, $TENANTS tenants, phase $PHASE, ${WARMUP}s warm-up + ${DURATION}s, median of $REPS; load average at the start: $load0, at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
node - "$work/raw.txt" <<'EOF'
const fs = require("node:fs");
const rows = fs.readFileSync(process.argv[2], "utf8").trim().split("\n").filter(Boolean)
  .map((l) => Object.fromEntries(l.split(" ").slice(1).filter((kv) => kv.includes("=")).map((kv) => kv.split("="))));
const median = (xs) => {
  const s = xs.filter(Number.isFinite).sort((a, b) => a - b);
  return s.length ? (s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2) : NaN;
};
const m = (mode, key) => median(rows.filter((r) => r.mode === mode).map((r) => Number(r[key])));
const f = (x) => (Number.isFinite(x) ? Math.round(x).toLocaleString("en-US") : "-");
console.log("| figure | pinned (1 CPU) | unpinned (2 CPUs) | unpinned ÷ pinned |");
console.log("|---|---:|---:|---:|");
for (const [what, key] of [["delivered msg/s", "delivered_per_s"], ["server CPU %", "server_cpu_pct"],
  ["loadgen CPU %", "loadgen_cpu_pct"], ["p99 µs", "p99_us"], ["busiest server thread %", "busiest_thread_pct"]]) {
  const a = m("pinned", key), b = m("unpinned", key);
  console.log(`| ${what} | ${f(a)} | ${f(b)} | ${Number.isFinite(a / b) ? (b / a).toFixed(2) + "×" : "-"} |`);
}
const r = m("unpinned", "delivered_per_s") / m("pinned", "delivered_per_s");
console.log(`\ntarget: unpinned ≥ 1.7× pinned: ${r.toFixed(2)}× ${r >= 1.7 ? "met" : "MISSED"}`);
// CPU per delivery (µs) of each side in each mode, and what they imply for a machine with nothing
// else on it: pinned, the slower of the server's core and the load generator's; unpinned, two
// cores shared by both.
const us = (mode, key) => m(mode, key) / 100 / m(mode, "delivered_per_s") * 1e6;
const [sp, lp, su, lu] = [us("pinned", "server_cpu_pct"), us("pinned", "loadgen_cpu_pct"),
  us("unpinned", "server_cpu_pct"), us("unpinned", "loadgen_cpu_pct")];
console.log(`CPU per delivery: server ${sp.toFixed(2)} µs pinned, ${su.toFixed(2)} µs unpinned; load generator ${lp.toFixed(2)} µs pinned, ${lu.toFixed(2)} µs unpinned`);
const pinnedCap = 1e6 / Math.max(sp, lp), unpinnedCap = 2e6 / (su + lu);
console.log(`on an otherwise idle machine these costs allow ${f(pinnedCap)}/s pinned and ${f(unpinnedCap)}/s unpinned: ${(unpinnedCap / pinnedCap).toFixed(2)}×`);
const busy = m("pinned", "server_cpu_pct");
if (busy < 90) {
  console.log(`caveat: the pinned server used ${f(busy)}% of its core: other processes shared the CPUs, so neither mode was bound by its own cores and the measured ratio reflects the CPU share each mode got more than the design's scaling; read the projection above`);
}
for (const x of rows.filter((r) => r.mode === "profiled" && Number(r.perf_samples) > 0)) {
  const share = Number(x.hub_task_samples) / Number(x.perf_samples);
  const cpu = Number(x.threads_pct);
  console.log(`profiled unpinned run: ${f(Number(x.delivered_per_s))} delivered/s, server ${f(cpu)}% CPU; hub task in ${(share * 100).toFixed(1)}% of ${x.perf_samples} samples ≈ ${(share * cpu).toFixed(0)}% of one core (its ceiling is 100%)`);
}
EOF
