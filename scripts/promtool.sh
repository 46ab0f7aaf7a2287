#!/usr/bin/env bash
# Checks the server's Prometheus alerting rules with promtool (Debian's `prometheus` package).
#
#   scripts/promtool.sh install   # make promtool available; prints its path
#   scripts/promtool.sh check     # promtool check rules server/ops/alerts.yml, then
#                                 # promtool test rules server/ops/alerts.test.yml (every alert
#                                 # fires on synthetic series and stays quiet on its neighbours),
#                                 # then parses every query of server/ops/dashboard.json (as
#                                 # recording rules, Grafana's variables filled in)
#
# That every metric and label value they name is exported is `cargo test`'s to check
# (server/tests/operations.rs).
# `install` uses promtool from PATH when there is one. Otherwise it takes the binary out of
# Debian's `prometheus` package without installing the package (installing it would also install
# and, on most machines, start a Prometheus server): `apt-get download`, then `dpkg-deb -x`, into
# ${PROMTOOL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/switchboard}. Only refreshing apt's package
# lists (when the download finds none) needs root.
set -euo pipefail
cd "$(dirname "$0")/.."

die() {
  echo "promtool.sh: $*" >&2
  exit 1
}

cache="${PROMTOOL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/switchboard}"

install() {
  if command -v promtool >/dev/null 2>&1; then
    command -v promtool
    return 0
  fi
  if [ -x "$cache/promtool" ]; then
    echo "$cache/promtool"
    return 0
  fi
  command -v apt-get >/dev/null 2>&1 && command -v dpkg-deb >/dev/null 2>&1 ||
    die "promtool is not on PATH and there is no apt-get/dpkg-deb: install Prometheus' promtool (2.x) yourself"
  local work
  work=$(mktemp -d "${TMPDIR:-/tmp}/switchboard-promtool.XXXXXX")
  # shellcheck disable=SC2064 # expand $work now: it is local
  trap "rm -rf '$work'" EXIT
  echo "promtool.sh: fetching promtool from Debian's prometheus package" >&2
  if ! (cd "$work" && apt-get download -qq prometheus >&2 2>/dev/null); then
    local sudo=""
    if [ "$(id -u)" != 0 ]; then
      command -v sudo >/dev/null 2>&1 ||
        die "apt-get download found no package lists; refreshing them needs root: apt-get update"
      sudo="sudo"
    fi
    $sudo apt-get update -qq >&2
    (cd "$work" && apt-get download -qq prometheus >&2) || die "apt-get download prometheus failed"
  fi
  dpkg-deb -x "$work"/prometheus_*.deb "$work/root"
  [ -x "$work/root/usr/bin/promtool" ] || die "the prometheus package holds no usr/bin/promtool"
  mkdir -p "$cache"
  cp "$work/root/usr/bin/promtool" "$cache/promtool.partial"
  mv "$cache/promtool.partial" "$cache/promtool"
  "$cache/promtool" --version >&2
  echo "$cache/promtool"
}

# The dashboard's queries as a rules file: each `"expr": "..."` (one per line, JSON-escaped
# quotes only) becomes a recording rule, with $__rate_interval and $instance filled in.
dashboard_rules() {
  echo "groups:"
  echo "  - name: dashboard"
  echo "    rules:"
  local i=0 expr
  grep -o '"expr": "\(\\.\|[^"\\]\)*"' server/ops/dashboard.json |
    sed -e 's/^"expr": "//' -e 's/"$//' -e 's/\\"/"/g' |
    while IFS= read -r expr; do
      i=$((i + 1))
      expr=${expr//\$__rate_interval/5m}
      expr=${expr//\$instance/.*}
      printf "      - record: dashboard:query_%d\n        expr: '%s'\n" "$i" "${expr//\'/\'\'}"
    done
}

check() {
  local promtool
  promtool=$(install)
  "$promtool" check rules server/ops/alerts.yml
  # Relative to the test file: it names alerts.yml beside it.
  (cd server/ops && "$promtool" test rules alerts.test.yml)
  local rules
  rules=$(mktemp "${TMPDIR:-/tmp}/switchboard-dashboard.XXXXXX.yml")
  # shellcheck disable=SC2064 # expand $rules now: it is local
  trap "rm -f '$rules'" EXIT
  dashboard_rules >"$rules"
  grep -q 'record: dashboard:query_' "$rules" || die "found no query in server/ops/dashboard.json"
  echo "Checking the queries of server/ops/dashboard.json" >&2
  "$promtool" check rules "$rules"
}

case "${1:-}" in
  install) install ;;
  check) check ;;
  *)
    echo "usage: scripts/promtool.sh install | check" >&2
    exit 2
    ;;
esac
