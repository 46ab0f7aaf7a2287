#!/usr/bin/env bash
# The demo page in a real headless browser: installs Debian's chromium if it is missing and
# playwright-core from server/tests/browser/package-lock.json, builds and starts the server on a
# free port, lets server/tests/browser/page.test.mjs type a message and wait for the agent's events (and
# a reconnect with resume), then stops the server with SIGINT (its Ctrl-C path) by PID and checks
# that it exited cleanly. Idempotent; exits non-zero on any failure.
#
#   scripts/browser-test.sh                      # what CI runs
#   SCREENSHOT=/tmp/page.png scripts/browser-test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v chromium >/dev/null 2>&1; then
  echo "installing chromium (Debian package)"
  sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
fi
CHROMIUM="${CHROMIUM:-$(command -v chromium)}"
export CHROMIUM

(cd server/tests/browser && npm ci --no-audit --no-fund --loglevel=error)

cargo build --quiet -p switchboard-server --bin switchboard
target_dir=$(cargo metadata --format-version 1 --no-deps |
  node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).target_directory))')
server="$target_dir/debug/switchboard"

log=$(mktemp)
pid=""
cleanup() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill "$pid" 2>/dev/null || true; fi
  rm -f "$log"
}
trap cleanup EXIT

# Port 0: the server picks a free port and prints it. A brisk agent keeps the test short.
"$server" --listen 127.0.0.1:0 --agent-pace-ms 100 >"$log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do
  if grep -q "listening on" "$log"; then break; fi
  if ! kill -0 "$pid" 2>/dev/null; then cat "$log" >&2; echo "server exited early" >&2; exit 1; fi
  sleep 0.1
done
base=$(grep -o 'listening on http://[0-9.:]*' "$log" | head -1 | cut -d' ' -f3)
page_url=$(grep -o "$base/?token=[A-Za-z0-9._-]*" "$log" | head -1)
if [ -z "$page_url" ]; then cat "$log" >&2; echo "no demo token printed" >&2; exit 1; fi
echo "server $pid at $base"

status=0
# Bounded: a page that never answers fails the run rather than hanging it.
timeout --kill-after=10 300 node server/tests/browser/page.test.mjs "$page_url" || status=$?

# Stop it the way Ctrl-C does and expect a clean exit.
kill -INT "$pid"
exit_code=0
for _ in $(seq 1 100); do
  if ! kill -0 "$pid" 2>/dev/null; then break; fi
  sleep 0.1
done
if kill -0 "$pid" 2>/dev/null; then
  echo "server did not stop within 10 s of SIGINT" >&2
  status=1
else
  wait "$pid" || exit_code=$?
  if [ "$exit_code" -ne 0 ]; then echo "server exited with $exit_code after SIGINT" >&2; status=1; fi
fi
pid=""
if [ "$status" -ne 0 ]; then echo "--- server log" >&2; cat "$log" >&2; fi
exit "$status"
