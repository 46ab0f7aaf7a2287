#!/usr/bin/env bash
# A throwaway Redis for the cluster tests and the local cluster (scripts/cluster.sh).
#
#   scripts/redis.sh install          # apt-get install redis-server, only if it is not on PATH
#   scripts/redis.sh start [PORT]     # one redis-server on 127.0.0.1, a free port unless given;
#                                     # prints REDIS_PORT=.. REDIS_PID=.. REDIS_DIR=.. once it
#                                     # answers PING
#   scripts/redis.sh stop PID         # SIGTERM, then SIGKILL after 5 s; removes its directory
#
# `start` runs redis-server in the background (not daemonized, so its PID is the one printed),
# without persistence (--save '' --appendonly no), in a directory of its own under $TMPDIR, with
# its log in that directory. It waits until the new server answers (INFO's process_id is its
# PID). `eval "$(scripts/redis.sh start)"` sets the three variables.
set -euo pipefail

die() {
  echo "redis.sh: $*" >&2
  exit 1
}

install() {
  if command -v redis-server >/dev/null 2>&1; then
    return 0
  fi
  command -v apt-get >/dev/null 2>&1 ||
    die "redis-server is not on PATH and there is no apt-get: install Redis (7 or newer) yourself"
  sudo=""
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null 2>&1 ||
      die "redis-server is not on PATH; installing it needs root (or sudo): apt-get install redis-server"
    sudo="sudo"
  fi
  echo "redis.sh: installing redis-server (Debian package)" >&2
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server >&2
  command -v redis-server >/dev/null 2>&1 || die "apt-get ran but redis-server is still not on PATH"
}

# A port nobody listens on now: bind 127.0.0.1:0 and read the port the kernel picked.
free_port() {
  if command -v python3 >/dev/null 2>&1; then
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
  else
    # Without python: try random high ports until one refuses a connection.
    local port
    for _ in $(seq 1 100); do
      port=$((20000 + RANDOM % 40000))
      if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "$port"
        return 0
      fi
    done
    die "found no free port"
  fi
}

# The process id of the Redis that answers on port $1 (empty if none answers yet), so that a
# server already listening there is not mistaken for the one just started.
server_pid() {
  local port=$1
  if command -v redis-cli >/dev/null 2>&1; then
    redis-cli -h 127.0.0.1 -p "$port" info server 2>/dev/null | tr -d '\r' |
      sed -n 's/^process_id://p'
  else
    local line
    exec 3<>"/dev/tcp/127.0.0.1/$port" 2>/dev/null || return 0
    printf 'INFO server\r\n' >&3
    while read -r -t 1 line <&3; do
      line=${line%$'\r'}
      case "$line" in
        process_id:*)
          echo "${line#process_id:}"
          break
          ;;
      esac
    done
    exec 3>&-
  fi
}

start() {
  command -v redis-server >/dev/null 2>&1 || die "redis-server is not on PATH: run scripts/redis.sh install"
  local port=${1:-}
  local given=1
  if [ -z "$port" ]; then
    given=0
  fi
  local attempt dir pid
  for attempt in 1 2 3 4 5; do
    if [ "$given" = 0 ]; then
      port=$(free_port)
    fi
    dir=$(mktemp -d "${TMPDIR:-/tmp}/switchboard-redis.XXXXXX")
    # setsid: a Ctrl-C meant for the caller's foreground job does not reach Redis; it is stopped
    # by PID. stdin from /dev/null and output to its log, so the caller's pipes close.
    setsid redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no \
      --dir "$dir" --daemonize no --logfile "$dir/redis.log" </dev/null >/dev/null 2>&1 &
    pid=$!
    for _ in $(seq 1 100); do
      if [ "$(server_pid "$port")" = "$pid" ]; then
        echo "REDIS_PORT=$port REDIS_PID=$pid REDIS_DIR=$dir"
        return 0
      fi
      if ! kill -0 "$pid" 2>/dev/null; then
        break
      fi
      sleep 0.1
    done
    # It exited (the port was taken meanwhile) or never answered: clean up and try again.
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    echo "redis.sh: redis-server on port $port did not come up (attempt $attempt):" >&2
    tail -n 5 "$dir/redis.log" >&2 2>/dev/null || true
    rm -rf "$dir"
    if [ "$given" = 1 ]; then
      die "could not start redis-server on port $port"
    fi
  done
  die "could not start redis-server"
}

# Running, and not a zombie waiting for a parent (an orphan's parent may be a PID 1 that does
# not reap).
alive() {
  local stat
  stat=$(ps -o stat= -p "$1" 2>/dev/null || true)
  [ -n "$stat" ] && [ "${stat#Z}" = "$stat" ]
}

stop() {
  local pid=${1:-}
  [[ "$pid" =~ ^[0-9]+$ ]] || die "usage: scripts/redis.sh stop PID"
  # Only ever a redis-server: never signal a PID that was reused by something else.
  local comm
  comm=$(ps -o comm= -p "$pid" 2>/dev/null || true)
  if [ -z "$comm" ]; then
    echo "redis.sh: no process $pid (already stopped)" >&2
    return 0
  fi
  case "$comm" in
    redis-server*) ;;
    *) die "process $pid is $comm, not redis-server" ;;
  esac
  # Redis rewrites its command line (its process title) but runs in its --dir.
  local dir
  dir=$(readlink "/proc/$pid/cwd" 2>/dev/null || true)
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do
    alive "$pid" || break
    sleep 0.1
  done
  if alive "$pid"; then
    kill -KILL "$pid" 2>/dev/null || true
  fi
  case "$dir" in
    */switchboard-redis.*) rm -rf "$dir" ;;
  esac
}

case "${1:-}" in
  install) install ;;
  start)
    shift
    start "$@"
    ;;
  stop)
    shift
    stop "$@"
    ;;
  *)
    echo "usage: scripts/redis.sh install | start [PORT] | stop PID" >&2
    exit 2
    ;;
esac
