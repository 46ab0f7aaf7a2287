#!/usr/bin/env bash
# Runs every fuzz target for FUZZ_SECONDS (default 60) each on the stable toolchain
# (--sanitizer none). Installs the pinned cargo-fuzz if it is missing. A crash fails the script
# and leaves the reproducer in fuzz/artifacts/<target>/.
#
#   scripts/fuzz.sh                 # every target, 60 s each (what CI runs)
#   FUZZ_SECONDS=3600 scripts/fuzz.sh ops   # one target for an hour
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO_FUZZ_VERSION=0.12.0
seconds=${FUZZ_SECONDS:-60}

if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
  cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(cluster frame ops protocol)
fi
cd fuzz
cargo fuzz build --sanitizer none
for t in "${targets[@]}"; do
  echo "fuzzing $t for ${seconds}s"
  # Work on a scratch copy of the committed seeds, so runs never dirty the tree.
  work=$(mktemp -d)
  cp corpus/"$t"/seed-* "$work"/
  log="$work.log"
  status=0
  # A target's dictionary (fuzz/<target>.dict), if it has one: tokens its input treats specially.
  dict=()
  [ -f "$t.dict" ] && dict=(-dict="$t.dict")
  cargo fuzz run --sanitizer none "$t" "$work" -- -max_total_time="$seconds" -print_final_stats=1 \
    "${dict[@]}" >"$log" 2>&1 || status=$?
  grep -E "^(Done|stat::number_of_executed_units)|panicked|Crash|ERROR|SUMMARY" "$log" || true
  if [ "$status" -ne 0 ]; then tail -40 "$log" >&2; fi
  rm -rf "$work" "$log"
  if [ "$status" -ne 0 ]; then
    echo "fuzz target $t failed (exit $status); reproducer in fuzz/artifacts/$t/" >&2
    exit "$status"
  fi
done
