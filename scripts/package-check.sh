#!/usr/bin/env bash
# The core as crates.io would get it: `cargo package`, then the unpacked package's own tests must
# compile on their own (no workspace, no path dev-dependencies). Prints the package's size and
# its file list's length; fails if it holds anything but sources, README and licenses.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo package -p switchboard --allow-dirty --quiet
target_dir=$(cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
crate=$(ls -t "$target_dir"/package/switchboard-*.crate | head -1)
echo "package: $crate ($(stat -c %s "$crate") bytes)"
unexpected=$(cargo package -p switchboard --allow-dirty --list --quiet |
  grep -vE '^(src/.*\.rs|README\.md|LICENSE-MIT|LICENSE-APACHE|Cargo\.toml|Cargo\.toml\.orig|Cargo\.lock|\.cargo_vcs_info\.json)$' || true)
if [ -n "$unexpected" ]; then
  echo "the package holds files it should not:"; echo "$unexpected"; exit 1
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tar -xzf "$crate" -C "$work"
(cd "$work"/switchboard-* && CARGO_TARGET_DIR="$target_dir/package-check" cargo check --tests --quiet)
echo "the unpacked package's tests compile"
