#!/usr/bin/env bash
# A local cluster: one Redis and three switchboard nodes on this machine, sharing one JWT secret
# and one admin key. Prints each node's page link for the demo users, waits for Ctrl-C, then
# stops every process it started by PID (the nodes with SIGINT, their graceful path: 4006).
#
#   scripts/cluster.sh                    # nodes on 8081 8082 8083, Redis on a free port
#   PORTS="9001 9002" scripts/cluster.sh  # any number of nodes, on these ports
#
# Environment: PORTS (default "8081 8082 8083"), REDIS_PORT (default: a free one),
# SWITCHBOARD_JWT_SECRET and SWITCHBOARD_ADMIN_KEY (default: generated), PROFILE=release for an
# optimized build, TOKEN_HOURS (default 24). Logs go to a temp directory (printed).
set -euo pipefail
cd "$(dirname "$0")/.."

PORTS=${PORTS:-8081 8082 8083}
TOKEN_HOURS=${TOKEN_HOURS:-24}
PROFILE=${PROFILE:-dev}

die() {
  echo "cluster.sh: $*" >&2
  exit 1
}

random_hex() { # $1 bytes
  if command -v openssl >/dev/null 2>&1; then
    openssl rand -hex "$1"
  else
    head -c "$1" /dev/urandom | od -An -tx1 | tr -d ' \n'
  fi
}

# Running, and not a zombie its parent has yet to reap.
alive() {
  local stat
  stat=$(ps -o stat= -p "$1" 2>/dev/null || true)
  [ -n "$stat" ] && [ "${stat#Z}" = "$stat" ]
}

b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }

# An HS256 JWT of the claims JSON $1, signed with $SECRET (what server/src/auth.rs verifies).
jwt() {
  local header payload signature
  header=$(printf '%s' '{"alg":"HS256","typ":"JWT"}' | b64url)
  payload=$(printf '%s' "$1" | b64url)
  signature=$(printf '%s' "$header.$payload" | openssl dgst -sha256 -hmac "$SECRET" -binary | b64url)
  printf '%s.%s.%s' "$header" "$payload" "$signature"
}

command -v openssl >/dev/null 2>&1 || die "openssl is needed to sign the demo tokens"
for port in $PORTS; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    die "port $port is taken; choose others with PORTS=\"...\""
  fi
done

scripts/redis.sh install
echo "building the switchboard binary ($PROFILE profile)"
cargo build --quiet --profile "$PROFILE" -p switchboard-server --bin switchboard
target_dir=$(cargo metadata --format-version 1 --no-deps |
  sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
case "$PROFILE" in
  dev) bin="$target_dir/debug/switchboard" ;;
  *) bin="$target_dir/$PROFILE/switchboard" ;;
esac
[ -x "$bin" ] || die "no binary at $bin"

SECRET=${SWITCHBOARD_JWT_SECRET:-$(random_hex 32)}
ADMIN=${SWITCHBOARD_ADMIN_KEY:-$(random_hex 16)}
logs=$(mktemp -d "${TMPDIR:-/tmp}/switchboard-cluster.XXXXXX")

REDIS_PID=""
node_pids=()
stopping=0
cleanup() {
  [ "$stopping" = 1 ] && return
  stopping=1
  trap '' INT TERM
  echo
  echo "stopping the nodes (SIGINT: connections close with 4006) and Redis"
  local pid
  for pid in "${node_pids[@]}"; do
    kill -INT "$pid" 2>/dev/null || true
  done
  for pid in "${node_pids[@]}"; do
    for _ in $(seq 1 50); do
      alive "$pid" || break
      sleep 0.1
    done
    if alive "$pid"; then
      kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
  done
  if [ -n "$REDIS_PID" ]; then
    scripts/redis.sh stop "$REDIS_PID" || true
  fi
  echo "logs kept in $logs"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

eval "$(scripts/redis.sh start "${REDIS_PORT:-}")"
redis_url="redis://127.0.0.1:$REDIS_PORT/"
echo "redis-server on 127.0.0.1:$REDIS_PORT (pid $REDIS_PID)"

i=0
for port in $PORTS; do
  i=$((i + 1))
  # setsid: Ctrl-C reaches this script only, which stops the nodes by PID. The secrets go
  # through the environment, not the command line (which `ps` shows).
  SWITCHBOARD_JWT_SECRET=$SECRET SWITCHBOARD_ADMIN_KEY=$ADMIN \
    setsid "$bin" --listen "127.0.0.1:$port" --redis "$redis_url" --node-id "node$i" \
    </dev/null >"$logs/node$i.log" 2>&1 &
  node_pids+=("$!")
done

i=0
for port in $PORTS; do
  i=$((i + 1))
  for _ in $(seq 1 300); do
    grep -q '^switchboard listening on' "$logs/node$i.log" 2>/dev/null && break
    alive "${node_pids[$((i - 1))]}" || {
      cat "$logs/node$i.log" >&2
      die "node$i (port $port) exited"
    }
    sleep 0.1
  done
  grep -q '^switchboard listening on' "$logs/node$i.log" || die "node$i did not start: $logs/node$i.log"
done

exp=$(($(date +%s) + TOKEN_HOURS * 3600))
# The server's demo users (server/src/auth.rs DEMO_USERS).
users=(
  "alice|{\"sub\":\"alice\",\"tenant\":\"acme\",\"tier\":\"free\",\"roles\":[\"member\"],\"rooms\":[\"lobby\"],\"exp\":$exp}"
  "bob|{\"sub\":\"bob\",\"tenant\":\"acme\",\"tier\":\"mid\",\"roles\":[\"admin\"],\"rooms\":[\"lobby\"],\"exp\":$exp}"
  "carol|{\"sub\":\"carol\",\"tenant\":\"globex\",\"tier\":\"enterprise\",\"roles\":[\"admin\"],\"exp\":$exp}"
)
declare -A tokens
for entry in "${users[@]}"; do
  tokens[${entry%%|*}]=$(jwt "${entry#*|}")
done

echo
echo "switchboard cluster: ${#node_pids[@]} nodes over $redis_url (logs in $logs)"
i=0
for port in $PORTS; do
  i=$((i + 1))
  echo "node$i  http://127.0.0.1:$port  (pid ${node_pids[$((i - 1))]})"
  for user in alice bob carol; do
    echo "  $user: http://127.0.0.1:$port/?token=${tokens[$user]}"
  done
done
first_port=${PORTS%% *}
last_port=${PORTS##* }
cat <<EOF

Open alice on two nodes, then publish through a third, in a shell:
  export ADMIN=$ADMIN
  curl -H "Authorization: Bearer \$ADMIN" -d '{"tenant":"acme","user":"alice","kind":"notice","data":{"text":"hi"}}' http://127.0.0.1:$last_port/publish
  curl -H "Authorization: Bearer \$ADMIN" -d '{"tenant":"acme","kind":"notice","data":{"text":"hi all"}}' http://127.0.0.1:$first_port/publish

Ctrl-C stops the nodes and Redis.
EOF

# Wait for Ctrl-C; report a node that dies by itself.
while true; do
  i=0
  for pid in "${node_pids[@]}"; do
    i=$((i + 1))
    if ! alive "$pid"; then
      echo "node$i (pid $pid) exited; its log:" >&2
      tail -n 20 "$logs/node$i.log" >&2
      exit 1
    fi
  done
  sleep 1
done
