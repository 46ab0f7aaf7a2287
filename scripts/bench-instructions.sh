#!/usr/bin/env bash
# Instructions per measured step for each workload of benches/hub.rs, switchboard and baseline,
# counted by callgrind through benches/profile.rs. Counts do not depend on the machine's load.
#
#   scripts/bench-instructions.sh [workload ...]     (default: all)
#   BASELINE=0 scripts/bench-instructions.sh ...      # switchboard only (the baseline column "-")
#
# Two tables: switchboard against the baseline, then cluster mode against the local workload of
# the same shape (bus message fanned out to N vs local publish to N; clustered vs local publish),
# both sides of each row counted in this same run. A workload named on the command line selects
# every row it appears in.
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

# workload, steps for switchboard, steps for the baseline ("-": it has none), function to
# subtract (each side). `floor-<n>` is the least a fan-out to n recipients can do, and
# `floor-publish-1` the least a publish of raw data to one connection can do (serialize + route;
# `floor-publish-1-text` the same frame written by hand; see benches/profile.rs): each is
# compared with the hub's workload in a table of its own.
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
    "floor-10 20000 - - -"
    "floor-1000 2000 - - -"
    "publish-1-raw 20000 - Hub::written -"
    "publish-1-raw-noredact 20000 - Hub::written -"
    "floor-publish-1 20000 - - -"
    "floor-publish-1-text 20000 - - -"
    "raw-new 20000 - - -"
)

# Cluster mode: bus workload, the local workload it is compared with, steps (both), function to
# subtract (bus side). Local publishes acknowledge deliveries (`Hub::written`, subtracted as above).
cluster=(
    "bus-message-user-1 publish-1 20000 Hub::written"
    "bus-message-user-3 publish-3 20000 Hub::written"
    "bus-message-room-10 room-10 20000 Hub::written"
    "bus-message-room-1000 room-1000 2000 Hub::written"
    "bus-message-tenant-10000 tenant-10000 200 Hub::written"
    "publish-clustered-1 publish-1 20000 Hub::bus_reply"
)

# Inclusive Ir of every function whose name ends in one of $2 (comma-separated), in callgrind
# output $1.
inclusive() {
    [ "$2" = "-" ] && { echo 0; return; }
    local sum=0 f part
    IFS=, read -ra parts <<<"$2"
    for f in "${parts[@]}"; do
        part=$(callgrind_annotate --inclusive=yes --threshold=100 "$1" 2>/dev/null |
            grep -F "::$f [" | awk '{gsub(",", "", $1); s += $1} END {print s + 0}')
        sum=$((sum + part))
    done
    echo "$sum"
}

# Calls, in callgrind output $1, into functions whose name contains $2 (at every recursion level).
calls_into() {
    awk -v pat="$2" '
        function name(s,   id, rest) {
            if (match(s, /^\([0-9]+\)/)) {
                id = substr(s, RSTART, RLENGTH)
                rest = substr(s, RLENGTH + 2)
                if (rest != "") names[id] = rest
                return names[id]
            }
            return s
        }
        /^cfn=/ { callee = name(substr($0, 5)); next }
        /^fn=/ { name(substr($0, 4)); next }
        /^calls=/ {
            split(substr($0, 7), a, " ")
            if (index(callee, pat)) n += a[1]
            next
        }
        END { print n + 0 }' "$1"
}

# Serialization per step, from the calls callgrind counted: event frames written
# (`FrameWriter::event`, which serializes an event and its data) / data values serialized (the
# redacting serializer, `protocol::Redacted`, called once per value of the event's `data`).
serializations() { # workload steps
    local f="$out/$1.out" e v
    e=$(calls_into "$f" 'switchboard::protocol::FrameWriter::event')
    v=$(calls_into "$f" 'switchboard::protocol::Redacted as serde_core::ser::Serialize>::serialize')
    awk -v e="$e" -v v="$v" -v n="$2" 'BEGIN {printf "%.2f / %.2f", e / n, v / n}'
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
wanted() { # any of the names given (or none given)
    [ ${#want[@]} -eq 0 ] && return 0
    local w
    for w in "$@"; do [[ " ${want[*]} " == *" $w "* ]] && return 0; done
    return 1
}
# Switchboard's count per workload and step count, measured once per run.
declare -A counted
ours() { # workload steps subtract
    local k="$1 $2"
    [ -n "${counted[$k]:-}" ] || counted[$k]=$(run switchboard "$1" "$2" "$3")
    echo "${counted[$k]}"
}

rows=()
for line in "${all[@]}"; do
    read -r w n bn sub bsub <<<"$line"
    wanted "$w" || continue
    ours "$w" "$n" "$sub" >/dev/null
    o=${counted["$w $n"]}
    if [ "${BASELINE:-1}" = 0 ] || [ "$bn" = - ]; then
        rows+=("| $w | $o | - | - |")
        continue
    fi
    theirs=$(run baseline "$w" "$bn" "$bsub")
    ratio=$(awk -v a="$theirs" -v b="$o" 'BEGIN {printf "%.1f", a / b}')
    rows+=("| $w | $o | $theirs | ${ratio}× |")
done
if [ ${#rows[@]} -gt 0 ]; then
    echo "| workload | switchboard Ir/step | baseline Ir/step | baseline ÷ switchboard |"
    echo "|---|---:|---:|---:|"
    printf '%s\n' "${rows[@]}"
    echo
fi

# A further fan-out recipient: the difference between 1,000 and 10 recipients, per recipient,
# for a room fan-out and for the floor, when all four were counted above.
if [ -n "${counted[room-10 20000]:-}" ] && [ -n "${counted[room-1000 2000]:-}" ] &&
    [ -n "${counted[floor-10 20000]:-}" ] && [ -n "${counted[floor-1000 2000]:-}" ]; then
    awk -v r10="${counted[room-10 20000]}" -v r1k="${counted[room-1000 2000]}" \
        -v f10="${counted[floor-10 20000]}" -v f1k="${counted[floor-1000 2000]}" 'BEGIN {
        room = (r1k - r10) / 990; floor = (f1k - f10) / 990
        print "| a further recipient (1,000 vs 10) | room fan-out Ir | floor Ir | room ÷ floor |"
        print "|---|---:|---:|---:|"
        printf "| per recipient | %.1f | %.1f | %.2f× |\n\n", room, floor, room / floor
    }'
fi

# A publish of raw data to one connection against serialize + route (the event through serde),
# and against the same frame written by hand (`floor-publish-1-text`), when counted above.
for floor in floor-publish-1 floor-publish-1-text; do
    [ -n "${counted[$floor 20000]:-}" ] || continue
    echo "| publish to one connection, raw data | switchboard Ir/step | $floor Ir/step | ÷ |"
    echo "|---|---:|---:|---:|"
    for w in publish-1-raw-noredact publish-1-raw; do
        [ -n "${counted[$w 20000]:-}" ] || continue
        awk -v w="$w" -v a="${counted[$w 20000]}" -v b="${counted[$floor 20000]}" \
            'BEGIN {printf "| %s | %d | %d | %.2f× |\n", w, a, b, a / b}'
    done
    echo
done

rows=()
for line in "${cluster[@]}"; do
    read -r bw lw n sub <<<"$line"
    wanted "$bw" "$lw" || continue
    # The local side is counted with the same number of steps (its own row above used its own).
    local_sub=Hub::written
    ours "$lw" "$n" "$local_sub" >/dev/null
    l=${counted["$lw $n"]}
    ours "$bw" "$n" "$sub" >/dev/null
    b=${counted["$bw $n"]}
    ratio=$(awk -v a="$b" -v b="$l" 'BEGIN {printf "%.2f", a / b}')
    ls=$(serializations "$lw" "$n")
    bs=$(serializations "$bw" "$n")
    rows+=("| $bw | $lw | $l | $b | ${ratio}× | $ls | $bs |")
done
if [ ${#rows[@]} -gt 0 ]; then
    echo "| cluster workload | local workload | local Ir/step | cluster Ir/step | cluster ÷ local | local frames / values serialized per step | cluster frames / values serialized per step |"
    echo "|---|---|---:|---:|---:|---:|---:|"
    printf '%s\n' "${rows[@]}"
fi
