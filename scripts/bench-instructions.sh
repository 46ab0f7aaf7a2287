#!/usr/bin/env bash
# Instructions per measured step for each workload of benches/hub.rs, switchboard and baseline,
# counted by callgrind through benches/profile.rs. Counts do not depend on the machine's load.
#
#   scripts/bench-instructions.sh [workload ...]     (default: all)
#
# Work that the wall-clock benchmark keeps outside its clock but the driver runs inside the region
# (`written` acknowledgements, the pongs of a heartbeat sweep, the baseline's recovery-queue
# refill) is subtracted, using callgrind's inclusive cost of that function.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/callgrind}"
export CARGO_PROFILE_BENCH_DEBUG=true
bin=$(cargo bench --bench profile --no-run --message-format=json 2>/dev/null |
    sed -n 's/.*"executable":"\([^"]*profile[^"]*\)".*/\1/p' | tail -1)
out="$CARGO_TARGET_DIR/callgrind-runs"
mkdir -p "$out"

# workload, steps for switchboard, steps for the baseline, function to subtract (each side)
all=(
    "churn 20000 20000 - -"
    "publish-1 20000 20000 Hub::written -"
    "publish-1-noredact 20000 20000 Hub::written -"
    "publish-3 20000 20000 Hub::written -"
    "room-10 20000 5000 Hub::written -"
    "room-1000 2000 100 Hub::written -"
    "room-100000 20 3 Hub::written -"
    "tenant-10000 200 10 Hub::written -"
    "tick-1000000 200000 3 - -"
    "sweep-100-of-100000 2000 10 Hub::pong Baseline::pong"
    "sweep-1000-of-100000 300 10 Hub::pong Baseline::pong"
    "resume-1000 2000 50 - Baseline::publish"
)

# Inclusive Ir of every function whose name ends in $2, in callgrind output $1.
inclusive() {
    [ "$2" = "-" ] && { echo 0; return; }
    callgrind_annotate --inclusive=yes --threshold=100 "$1" 2>/dev/null |
        grep -F "::$2 [" | awk '{gsub(",", "", $1); s += $1} END {print s + 0}'
}

run() { # side workload steps subtract
    local side=$1 w=$2 n=$3 sub=$4 arg=$2
    [ "$side" = baseline ] && arg="baseline-$w"
    local f="$out/$arg.out"
    valgrind --tool=callgrind --callgrind-out-file="$f" --toggle-collect='profile::region' \
        "$bin" "$arg" "$n" >/dev/null 2>&1
    local total minus
    total=$(callgrind_annotate "$f" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
    minus=$(inclusive "$f" "$sub")
    echo $(((total - minus) / n))
}

want=("$@")
echo "| workload | switchboard Ir/step | baseline Ir/step | baseline ÷ switchboard |"
echo "|---|---:|---:|---:|"
for line in "${all[@]}"; do
    read -r w n bn sub bsub <<<"$line"
    if [ ${#want[@]} -gt 0 ] && [[ ! " ${want[*]} " == *" $w "* ]]; then continue; fi
    ours=$(run switchboard "$w" "$n" "$sub")
    theirs=$(run baseline "$w" "$bn" "$bsub")
    ratio=$(awk -v a="$theirs" -v b="$ours" 'BEGIN {printf "%.1f", a / b}')
    echo "| $w | $ours | $theirs | ${ratio}× |"
done
