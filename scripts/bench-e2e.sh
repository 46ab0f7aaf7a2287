#!/usr/bin/env bash
# End-to-end benchmark: switchboard's server against a Socket.IO server doing the same
# fan-out (benches/peers/socketio), under the same load from tools/loadgen, side by side in
# one run. Prints one table with both servers' figures and their ratios.
#
# Refuses to run when SB_PORT or SIO_PORT is taken, and checks before measuring that the process
# listening there is the one it started (not a server left over from something else).
# Installs the peer's npm dependencies (npm ci), builds the server and the load generator in
# release mode, then for each repetition starts each server on 127.0.0.1 (stopped by PID), connects
# CLIENTS clients once and runs four phases on them:
#   tenant:0          tenant broadcasts as fast as the server delivers (fan-out CLIENTS/TENANTS)
#   user:0            publishes to single users as fast as the server delivers (fan-out CONNS_PER_USER)
#   user:0:bBATCH     the same, BATCH (10) envelopes per request: the batch publish both servers
#                     accept (a JSON array), so that the per-request cost is shared alike
#   tenant:TENANT_RATE, user:USER_RATE   a fixed offered load both servers sustain, for latency
# Publishes go through each server's POST /publish from PUBLISHERS keep-alive connections.
# Memory per connection is the server's RSS with every client live minus before the first
# connect, over CLIENTS. Each figure in the table is the median over REPS repetitions (the servers
# take turns going first).
#
# With PIN=1 (the default on 2+ CPUs) each server runs on CPU 0 and the load generator on CPU 1
# (taskset), so both servers get the same single core: node runs JavaScript on one thread anyway,
# and the load generator cannot steal the server's core. PIN=0 lets the kernel place everything.
#
#   scripts/bench-e2e.sh                          # defaults: 10,000 clients, 3 repetitions (~6 min)
#   CLIENTS=2000 REPS=1 DURATION=3 scripts/bench-e2e.sh  # a quick look
#   RAW=results.txt scripts/bench-e2e.sh          # keep the loadgen's RESULT lines
#   PHASES="tenant:10" TENANTS=1 PIN=0 scripts/bench-e2e.sh  # only the latency of a 10,000 fan-out
# PHASES replaces the five phases (space-separated loadgen phases); rows of phases not run show -.
#   SB_BIN=/tmp/switchboard-abc123 scripts/bench-e2e.sh  # measure another build of the server
#   QUIET_IDLE=1 scripts/bench-e2e.sh             # idle CPUs poll instead of halting (bench-lib.sh)
#   RPS=2 scripts/bench-e2e.sh                    # the readers' receive path on CPU 1, not the
#                                                 # server's (as on another host; bench-lib.sh)
#   LOADGEN_ARGS="--threads 1" scripts/bench-e2e.sh  # more load generator flags, for both servers
#   KINDS=switchboard scripts/bench-e2e.sh        # one server only (a quick look; no ratios)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh
bench_quiet_idle

CLIENTS="${CLIENTS:-10000}"
CONNS_PER_USER="${CONNS_PER_USER:-2}"
TENANTS="${TENANTS:-10}"
REPS="${REPS:-3}"
WARMUP="${WARMUP:-2}"
DURATION="${DURATION:-6}"
TENANT_RATE="${TENANT_RATE:-10}"
USER_RATE="${USER_RATE:-1000}"
BATCH="${BATCH:-10}"
PUBLISHERS="${PUBLISHERS:-64}"
PAYLOAD_BYTES="${PAYLOAD_BYTES:-64}"
SB_PORT="${SB_PORT:-18080}"
SIO_PORT="${SIO_PORT:-18081}"
PIN="${PIN:-auto}"
KINDS="${KINDS:-switchboard socketio}"
read -r -a extra_loadgen_args <<<"${LOADGEN_ARGS:-}"
PHASES="${PHASES:-tenant:0 user:0 user:0:b$BATCH tenant:$TENANT_RATE user:$USER_RATE}"
phase_args=()
for p in $PHASES; do phase_args+=(--phase "$p"); done

for tool in node npm curl ss; do
  command -v "$tool" >/dev/null || { echo "bench-e2e: $tool is required" >&2; exit 1; }
done
[ "$SB_PORT" != "$SIO_PORT" ] || { echo "bench-e2e: SB_PORT and SIO_PORT must differ" >&2; exit 1; }
bench_require_free_ports bench-e2e "$SB_PORT" "$SIO_PORT"

echo "== installing the Socket.IO peer (npm ci)"
(cd benches/peers/socketio && npm ci --no-audit --no-fund --loglevel=error)

echo "== building the server and the load generator (release)"
cargo build --release --quiet -p switchboard-server -p switchboard-loadgen
target_dir=$(cargo metadata --format-version 1 --no-deps |
  node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).target_directory))')
# SB_BIN: another `switchboard` binary to measure (a build of another commit, copied aside).
server_bin="${SB_BIN:-$target_dir/release/switchboard}"
loadgen_bin="$target_dir/release/loadgen"

# Each server needs a descriptor per client; the load generator raises its own limit.
hard=$(ulimit -Hn)
if [ "$hard" != unlimited ] && [ "$hard" -lt $((CLIENTS + 1024)) ]; then
  echo "bench-e2e: the hard file-descriptor limit ($hard) is below CLIENTS+1024; raise it (ulimit -Hn)" >&2
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
pid=""
cleanup() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
  bench_rps_restore
}
trap cleanup EXIT
bench_rps

start_server() { # kind port
  local kind=$1 port=$2
  bench_require_free_ports bench-e2e "$port"
  case "$kind" in
    switchboard)
      "${server_pin[@]}" "$server_bin" --listen "127.0.0.1:$port" --jwt-secret "$secret" \
        --admin-key "$admin" >"$work/$kind.log" 2>&1 &
      ;;
    socketio)
      "${server_pin[@]}" node benches/peers/socketio/server.js --listen "127.0.0.1:$port" \
        --jwt-secret "$secret" --admin-key "$admin" >"$work/$kind.log" 2>&1 &
      ;;
  esac
  pid=$!
  # The process answering must be the one just started: a server already listening there
  # would otherwise be measured instead (with --pid pointing at ours).
  if bench_wait_for bench-e2e "$pid" "$port" /healthz; then return 0; fi
  echo "bench-e2e: $kind did not come up:" >&2
  cat "$work/$kind.log" >&2
  exit 1
}

stop_server() {
  kill -INT "$pid" 2>/dev/null || true
  for _ in $(seq 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  pid=""
}

run_one() { # kind port rep
  local kind=$1 port=$2 rep=$3
  echo "== rep $rep/$REPS: $kind ($CLIENTS clients)"
  start_server "$kind" "$port"
  "${loadgen_pin[@]}" "$loadgen_bin" --server "$kind" --addr "127.0.0.1:$port" --pid "$pid" \
    --jwt-secret "$secret" --admin-key "$admin" --clients "$CLIENTS" \
    --conns-per-user "$CONNS_PER_USER" --tenants "$TENANTS" --publishers "$PUBLISHERS" \
    --payload-bytes "$PAYLOAD_BYTES" --warmup "$WARMUP" --duration "$DURATION" --label "$rep" \
    "${phase_args[@]}" ${extra_loadgen_args[@]+"${extra_loadgen_args[@]}"} \
    | tee "$work/out.txt" | sed 's/^/   /' | grep -v '^   RESULT'
  grep '^RESULT' "$work/out.txt" >>"$raw"
  stop_server
}

for rep in $(seq "$REPS"); do
  if [ $((rep % 2)) = 1 ]; then order="switchboard socketio"; else order="socketio switchboard"; fi
  for kind in $order; do
    case " $KINDS " in *" $kind "*) ;; *) continue ;; esac
    if [ "$kind" = switchboard ]; then run_one "$kind" "$SB_PORT" "$rep"; else run_one "$kind" "$SIO_PORT" "$rep"; fi
  done
done

echo
echo "== $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')), $(date -u +%Y-%m-%d), pinned: $([ "$PIN" = 1 ] && echo 'server CPU 0, loadgen CPU 1' || echo no)$([ -n "${RPS:-}" ] && echo ", loopback receive on CPU mask $RPS (RPS)")"
echo "== $CLIENTS clients, $CONNS_PER_USER per user, $TENANTS tenants; ${WARMUP}s warm-up + ${DURATION}s per phase; median of $REPS"
echo
CLIENTS="$CLIENTS" TENANT_RATE="$TENANT_RATE" USER_RATE="$USER_RATE" BATCH="$BATCH" node - "$raw" <<'EOF'
const fs = require("node:fs");
const rows = fs.readFileSync(process.argv[2], "utf8").trim().split("\n").filter(Boolean).map((line) =>
  Object.fromEntries(line.split(" ").slice(1).map((kv) => kv.split("="))));
const median = (xs) => {
  const s = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (!s.length) return NaN;
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
// `batch`: envelopes per publish request (lines from before batches were measured have none).
const pick = (server, target, rate, key, batch = 1) => median(rows
  .filter((r) => r.server === server && r.target === target && Number(r.rate) === rate &&
    Number(r.batch ?? 1) === batch)
  .map((r) => Number(r[key])));
const fmt = (x, digits = 0) => Number.isFinite(x)
  ? x.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits }) : "-";
const ratio = (a, b) => (Number.isFinite(a) && Number.isFinite(b) && b > 0 ? `${(a / b).toFixed(2)}×` : "-");
const fanout = (target) => rows.find((r) => r.target === target)?.fanout ?? "?";
const tr = Number(process.env.TENANT_RATE), ur = Number(process.env.USER_RATE);
const lines = [];
const bt = Number(process.env.BATCH);
const row = (what, key, target, rate, scale = 1, digits = 0, batch = 1) => {
  const a = pick("switchboard", target, rate, key, batch) / scale;
  const b = pick("socketio", target, rate, key, batch) / scale;
  lines.push(`| ${what} | ${fmt(a, digits)} | ${fmt(b, digits)} | ${ratio(a, b)} |`);
  return [a, b];
};
lines.push("| figure | switchboard | Socket.IO | switchboard ÷ Socket.IO |");
lines.push("|---|---:|---:|---:|");
const [tA, tB] = row(`delivered msg/s, tenant broadcast (fan-out ${fanout("tenant")}), as fast as delivered`, "delivered_per_s", "tenant", 0);
const [uA, uB] = row(`delivered msg/s, one user (fan-out ${fanout("user")}), as fast as delivered`, "delivered_per_s", "user", 0);
const [bA, bB] = row(`delivered msg/s, one user (fan-out ${fanout("user")}), ${bt} per request, as fast as delivered`, "delivered_per_s", "user", 0, 1, 0, bt);
row("  server CPU in the tenant phase (% of a core)", "server_cpu_pct", "tenant", 0);
row("  loadgen CPU in the tenant phase (% of a core)", "loadgen_cpu_pct", "tenant", 0);
row("  delivered per server CPU-second, tenant phase", "delivered_per_cpu_s", "tenant", 0);
const [cA, cB] = row("  delivered per server CPU-second, user phase", "delivered_per_cpu_s", "user", 0);
const [dA, dB] = row(`  delivered per server CPU-second, user phase, ${bt} per request`, "delivered_per_cpu_s", "user", 0, 1, 0, bt);
row(`p1 latency ms, tenant broadcast at ${tr} publishes/s (first recipients)`, "p1_us", "tenant", tr, 1000, 2);
row(`p50 latency ms, tenant broadcast at ${tr} publishes/s`, "p50_us", "tenant", tr, 1000, 2);
const [pA, pB] = row(`p99 latency ms, tenant broadcast at ${tr} publishes/s`, "p99_us", "tenant", tr, 1000, 2);
row(`  server CPU at ${tr} publishes/s (% of a core)`, "server_cpu_pct", "tenant", tr);
row(`  delivered per server CPU-second at ${tr} publishes/s`, "delivered_per_cpu_s", "tenant", tr);
row(`p50 latency ms, one user at ${ur} publishes/s`, "p50_us", "user", ur, 1000, 2);
row(`p99 latency ms, one user at ${ur} publishes/s`, "p99_us", "user", ur, 1000, 2);
// Memory is measured once per run, before the phases: every row of a run repeats it.
const mem = (server) => median(rows.filter((r) => r.server === server).map((r) => Number(r.mem_per_conn)));
const [mA, mB] = [mem("switchboard"), mem("socketio")];
lines.push(`| server memory per connection, bytes (RSS, ${process.env.CLIENTS} live clients) | ${fmt(mA)} | ${fmt(mB)} | ${ratio(mA, mB)} |`);
console.log(lines.join("\n"));
const missing = rows.reduce((s, r) => s + Number(r.missing) + Number(r.dropped) + Number(r.errors), 0);
console.log(`\nlost deliveries, dropped connections and publish errors over all runs: ${missing}`);
const verdict = (ok, x) => (Number.isFinite(x) ? (ok ? "met" : "MISSED") : "not measured");
console.log(`target: ≥ 3× Socket.IO's delivered msg/s: tenant ${ratio(tA, tB)} ${verdict(tA / tB >= 3, tA / tB)}, user ${ratio(uA, uB)} ${verdict(uA / uB >= 3, uA / uB)}`);
console.log(`target (issue 16 item 6): single-user publishes ≥ 3× Socket.IO's, both offered batches of ${bt}: delivered msg/s ${ratio(bA, bB)} ${verdict(bA / bB >= 3, bA / bB)}, per server CPU-second ${ratio(dA, dB)} ${verdict(dA / dB >= 3, dA / dB)} (one per request: ${ratio(uA, uB)}, per CPU-second ${ratio(cA, cB)})`);
console.log(`target (issue 16 item 1): ≤ 4 KiB and ≤ 0.25× Socket.IO's memory per connection: ${fmt(mA)} B, ${ratio(mA, mB)} ${verdict(mA <= 4096 && mA / mB <= 0.25, mA / mB)}`);
console.log(`target: p99 of the tenant broadcast at ${tr}/s ≤ 0.5× Socket.IO's: ${ratio(pA, pB)} ${verdict(pA / pB <= 0.5, pA / pB)}`);
EOF
if [ -n "${RAW:-}" ]; then echo "RESULT lines kept in $RAW"; fi
