#!/usr/bin/env bash
# A/B of server binaries under one load: alternates the given `switchboard` binaries (a build of
# each commit to compare, copied aside) REPS times, each pinned to CPU 0 on 127.0.0.1:PORT with the
# load generator pinned to CPU 1, and prints each run's delivered/s, p99, memory per connection
# and delivered per server CPU-second. Alternating in one run makes the ratio robust to a shared
# machine's drift; read ratios, not absolute rates.
#
#   scripts/bench-ab.sh user:0 3 /tmp/sb-before /tmp/sb-after
#   CLIENTS=10000 DURATION=3 scripts/bench-ab.sh user:0:b10 2 /tmp/sb-a /tmp/sb-b
#
# With SERVER=BINARY the binaries given are load generators instead, alternated against that one
# server build, and each line adds the load generator's CPU per delivery (µs): the A/B of a
# change to the load generator's own cost. EXTRA passes more loadgen arguments to every run.
#
#   SERVER=target/release/switchboard scripts/bench-ab.sh tenant:0 3 /tmp/loadgen-a /tmp/loadgen-b
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh
[ $# -ge 3 ] || { echo "usage: $0 PHASE REPS BINARY..." >&2; exit 2; }
PHASE=$1 REPS=$2
shift 2
PORT="${PORT:-18380}"
ulimit -n "$(ulimit -Hn)"
cargo build --release --quiet -p switchboard-loadgen
target_dir=$(cargo metadata --format-version 1 --no-deps |
  node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).target_directory))')
loadgen="$target_dir/release/loadgen"
server="${SERVER:-}"
read -r -a extra <<<"${EXTRA:-}"
secret="ab-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
admin="ab-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
for _ in $(seq "$REPS"); do
  for bin in "$@"; do
    bench_require_free_ports bench-ab "$PORT"
    if [ -n "$server" ]; then srv=$server lg=$bin; else srv=$bin lg=$loadgen; fi
    taskset -c 0 "$srv" --listen "127.0.0.1:$PORT" --jwt-secret "$secret" --admin-key "$admin" \
      >/dev/null 2>&1 &
    pid=$!
    bench_wait_for bench-ab "$pid" "$PORT" /healthz 50 || { echo "bench-ab: $bin did not start" >&2; exit 1; }
    result=$(taskset -c 1 "$lg" --server switchboard --addr "127.0.0.1:$PORT" \
      --jwt-secret "$secret" --admin-key "$admin" --pid "$pid" --clients "${CLIENTS:-2000}" \
      --phase "$PHASE" --warmup 2 --duration "${DURATION:-6}" "${extra[@]}" | grep '^RESULT' || true)
    kill -INT "$pid"; wait "$pid" 2>/dev/null || true
    echo "$bin $(echo "$result" | tr ' ' '\n' |
      grep -E '^(delivered_per_s|p99_us|mem_per_conn|server_cpu_pct|loadgen_cpu_pct|delivered_per_cpu_s)=' | tr '\n' ' ')$(
      echo "$result" | tr ' ' '\n' | awk -F= '$1=="delivered_per_s"{d=$2} $1=="loadgen_cpu_pct"{c=$2}
        END { if (d > 0 && c != "-") printf "loadgen_us_per_delivery=%.2f", c / 100 / d * 1e6 }')"
  done
done
