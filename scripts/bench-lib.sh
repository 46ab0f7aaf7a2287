# Shared by the benchmark scripts (sourced, not run): ports that must be free, and making sure
# that the process answering on a port is the one the script started.
#
#   . scripts/bench-lib.sh
#   bench_require_free_ports bench-e2e 18080 18081      # exits when one is taken
#   bench_wait_for bench-e2e "$pid" 18080 /healthz || exit 1  # fails unless $pid answers
#   bench_listener_pids 18080                           # the PIDs holding a listening socket
#   bench_host_jitter                                   # "p50/p99" µs a 1 ms sleep wakes late
#   bench_quiet_idle                                    # QUIET_IDLE=1: idle CPUs poll (PM QoS)

# The PIDs of the processes with a socket listening on TCP port $1 (any address), one a line;
# empty when nobody listens. Needs `ss` (iproute2), which names the owner of sockets this user
# may see (every process of the same user, and every process for root).
bench_listener_pids() {
  ss -Hltnp "sport = :$1" 2>/dev/null | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -u
}

# Whether anything listens on TCP port $1.
bench_port_taken() {
  if command -v ss >/dev/null 2>&1; then
    [ -n "$(ss -Hltn "sport = :$1" 2>/dev/null)" ]
  else
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
  fi
}

# Exits (naming the script $1) when any of the ports $2… is taken.
bench_require_free_ports() {
  local who=$1 port
  shift
  command -v ss >/dev/null 2>&1 ||
    { echo "$who: ss (iproute2) is needed to check who listens on a port" >&2; exit 1; }
  for port in "$@"; do
    if bench_port_taken "$port"; then
      echo "$who: port $port is taken (pids: $(bench_listener_pids "$port" | tr '\n' ' ')); choose another" >&2
      exit 1
    fi
  done
}

# Waits (up to $5 tenths of a second, default 100) until process $2 listens on port $3 and
# answers `GET $4` with a success; fails (saying why, naming the script $1) when $2 ends first,
# when another process holds the port, or on timeout. The PID check is what tells the
# server just started from one that was already there.
bench_wait_for() {
  local who=$1 pid=$2 port=$3 path=$4 tries=${5:-100} owners
  for _ in $(seq "$tries"); do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "$who: process $pid exited before answering on port $port" >&2
      return 1
    fi
    owners=$(bench_listener_pids "$port")
    if [ -n "$owners" ]; then
      if [ "$owners" != "$pid" ]; then
        echo "$who: port $port is held by pid(s) $(echo "$owners" | tr '\n' ' ')not by $pid, the process started" >&2
        return 1
      fi
      if curl -fsS "http://127.0.0.1:$port$path" >/dev/null 2>&1; then
        return 0
      fi
    fi
    sleep 0.1
  done
  echo "$who: process $pid did not answer $path on port $port in time" >&2
  return 1
}

# How late this host wakes a sleeper: 2,000 sleeps of 1 ms, the overshoot's p50 and p99 in µs
# ("p50/p99"). Latency figures are only comparable between runs whose jitter is alike: on a
# shared VM the wake-up tail alone can exceed a millisecond at times.
bench_host_jitter() {
  python3 - <<'PY'
import time
d = []
for _ in range(2000):
    t = time.perf_counter()
    time.sleep(0.001)
    d.append((time.perf_counter() - t - 0.001) * 1e6)
d.sort()
print(f"{d[len(d) // 2]:.0f}/{d[len(d) * 99 // 100]:.0f}")
PY
}

# With QUIET_IDLE=1: asks the kernel for a zero wake-up latency (a PM QoS request on
# /dev/cpu_dma_latency, held on file descriptor 9 until the script exits, as cyclictest does), so
# that an idle CPU polls instead of halting. On a VM whose idle vCPUs halt, waking one costs a trip
# through the hypervisor, and a message that crosses several processes pays it at every hop: this
# takes the host's wake-up latency out of latency figures, for every configuration alike. It burns
# the idle CPU time of the machine while the script runs. Prints what it did (or could not do).
bench_quiet_idle() {
  [ "${QUIET_IDLE:-0}" = 1 ] || return 0
  if [ -w /dev/cpu_dma_latency ]; then
    exec 9>/dev/cpu_dma_latency
    printf '\0\0\0\0' >&9
    echo "== QUIET_IDLE: idle CPUs poll while this runs (PM QoS wake-up latency 0 µs)"
  else
    echo "== QUIET_IDLE: /dev/cpu_dma_latency is not writable here (needs root): idle CPUs may halt"
  fi
}

# RPS=<hex CPU mask>: the loopback's receive processing (the readers' TCP path and their
# wake-up, which loopback otherwise runs in the sender's softirq, charged to the server) is
# steered to those CPUs by Receive Packet Steering, as a separate host's network stack would
# take it. Pinned, RPS=2 puts it on the load generator's CPU 1. The previous mask is put back
# by bench_rps_restore (call it from the script's EXIT trap). Needs root; says so otherwise.
bench_rps_file=/sys/class/net/lo/queues/rx-0/rps_cpus
bench_rps_saved=""
bench_rps() {
  [ -n "${RPS:-}" ] || return 0
  if [ ! -w "$bench_rps_file" ]; then
    echo "bench: RPS=$RPS asked for, but $bench_rps_file is not writable here (needs root)" >&2
    exit 1
  fi
  bench_rps_saved=$(cat "$bench_rps_file")
  echo "$RPS" >"$bench_rps_file"
  echo "== RPS: loopback receive processing on CPU mask $(cat "$bench_rps_file") (was $bench_rps_saved)"
}
bench_rps_restore() {
  [ -n "$bench_rps_saved" ] || return 0
  echo "$bench_rps_saved" >"$bench_rps_file" 2>/dev/null || true
  bench_rps_saved=""
}
