#!/usr/bin/env bash
# Finds stale rows in BENCHMARKS.md: re-counts what its machine-independent tables quote and
# reports every row that drifted more than THRESHOLD percent (default 3) from the table.
#
#   scripts/bench-drift.sh                 # instructions and heap bytes (about 8 minutes here)
#   ONLY=memory scripts/bench-drift.sh     # heap bytes only (cargo bench --bench memory, ~20 s)
#   ONLY=instructions scripts/bench-drift.sh
#   THRESHOLD=1 KEEP=/tmp/drift scripts/bench-drift.sh   # a tighter bound; keep the raw outputs
#
# What it compares (counts, not times, so the machine's load does not move them):
# - instructions per step (callgrind, `BASELINE=0 scripts/bench-instructions.sh` over every
#   workload the tables name): the switchboard column of each table headed `switchboard
#   Ir/step` (the last figure of a cell such as `6,940 → **4,180**`), and both columns of each
#   table headed `local Ir/step | cluster Ir/step`;
# - heap bytes (`cargo bench --bench memory`): the `## Memory` table's switchboard column and
#   the allocation table (`| step | allocation calls | bytes requested |`).
# Only the tables that BENCHMARKS.md marks as current are compared: a line `<!-- bench-drift -->`
# between the table and the heading or table before it. A table that records an earlier commit
# on purpose (a before/after, a finding) carries no marker and names its commit instead. Each
# marked table is compared on its own. Exit status 1 when any row drifted.
set -euo pipefail
cd "$(dirname "$0")/.."
THRESHOLD="${THRESHOLD:-3}"
ONLY="${ONLY:-all}"
command -v python3 >/dev/null || { echo "bench-drift: python3 is required" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
keep="${KEEP:-}"

commit=$(git rev-parse --short HEAD)
dirty=$(git status --porcelain --untracked-files=no -- src benches Cargo.toml Cargo.lock | wc -l)
echo "== bench-drift at $commit$([ "$dirty" = 0 ] || echo " (plus uncommitted changes to src/ or benches/)"), threshold ${THRESHOLD}%"

# The workloads the tables name (first column, or the first two of the cluster tables).
workloads=$(python3 - BENCHMARKS.md <<'EOF'
import re, sys
names = set()
for line in open(sys.argv[1], encoding="utf-8"):
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if len(cells) >= 2:
        for c in cells[:2]:
            m = re.fullmatch(r"([a-z]+(?:-[a-z0-9]+)+|churn)(?: \(.*\))?", c)
            if m:
                names.add(m.group(1))
print(" ".join(sorted(names)))
EOF
)

if [ "$ONLY" = all ] || [ "$ONLY" = instructions ]; then
  command -v valgrind >/dev/null || { echo "bench-drift: valgrind is required (apt-get install valgrind)" >&2; exit 1; }
  echo "== counting instructions (switchboard side) for: $workloads"
  # shellcheck disable=SC2086 # one argument per workload
  BASELINE=0 scripts/bench-instructions.sh $workloads | tee "$work/instructions.txt"
fi
if [ "$ONLY" = all ] || [ "$ONLY" = memory ]; then
  echo "== heap bytes (cargo bench --bench memory)"
  cargo bench --quiet --bench memory 2>/dev/null | tee "$work/memory.txt"
fi
[ -z "$keep" ] || { mkdir -p "$keep"; cp "$work"/*.txt "$keep"/; }

echo
python3 - BENCHMARKS.md "$work" "$THRESHOLD" <<'EOF'
import os, re, sys
doc, work, threshold = sys.argv[1], sys.argv[2], float(sys.argv[3])

def cells(line):
    return [c.strip() for c in line.strip().strip("|").split("|")]

def number(cell):
    """The last figure of a cell (`6,940 → **4,180** ⁴` → 4180), or None."""
    found = re.findall(r"\d[\d,]*(?:\.\d+)?", re.sub(r"[⁰¹²³⁴⁵⁶⁷⁸⁹]", "", cell))
    return float(found[-1].replace(",", "")) if found else None

def tables(lines, marked_only=False):
    """(heading, header cells, [row cells]) for every markdown table, in order; with
    `marked_only`, only those after a `<!-- bench-drift -->` line (since the last table)."""
    heading, out, i, marked = "", [], 0, False
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
            marked = False
        if line.strip() == "<!-- bench-drift -->":
            marked = True
        if line.startswith("|") and i + 1 < len(lines) and re.match(r"^\|[-:| ]+\|$", lines[i + 1].strip()):
            header, rows, i = cells(line), [], i + 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(cells(lines[i]))
                i += 1
            if marked or not marked_only:
                out.append((heading, header, rows))
            marked = False
            continue
        i += 1
    return out

def workload(cell):
    m = re.match(r"([a-z0-9-]+)", cell)
    return m.group(1) if m else cell

def step_key(cell):
    """The allocation table's rows by what they count, whatever their wording."""
    for key, words in (("clustered", "clustered publish"), ("local", "local publish"), ("bus", "bus message")):
        if words in cell:
            return key
    return cell

def read(name):
    path = os.path.join(work, name)
    return open(path, encoding="utf-8").read().splitlines() if os.path.exists(path) else None

now = {}  # (kind, key) -> value measured in this run
ins = read("instructions.txt")
if ins is not None:
    for _, header, rows in tables(ins):
        if header[:2] == ["workload", "switchboard Ir/step"]:
            for r in rows:
                now[("ir", r[0])] = number(r[1])
        elif header[:2] == ["cluster workload", "local workload"]:
            for r in rows:
                now[("ir", r[1])] = number(r[2])
                now[("ir", r[0])] = number(r[3])
mem = read("memory.txt")
if mem is not None:
    for _, header, rows in tables(mem):
        if header[:2] == ["scenario", "switchboard"]:
            for r in rows:
                key = "4" if "4 per user" in r[0] else "1" if "1 per user" in r[0] else "detached"
                now[("heap", key)] = number(r[1])
        elif header[:2] == ["step", "allocation calls"]:
            for r in rows:
                now[("calls", step_key(r[0]))] = number(r[1])
                now[("bytes", step_key(r[0]))] = number(r[2])

report, drifted = [], 0
def compare(where, label, kind, key, cell):
    global drifted
    if (kind, key) not in now:
        return
    was, is_ = number(cell), now[(kind, key)]
    if was is None or is_ is None or was == 0:
        return
    pct = (is_ - was) / was * 100
    flag = abs(pct) > threshold
    drifted += flag
    report.append(f"| {where} | {label} | {was:,.1f} | {is_:,.1f} | {pct:+.1f}% | {'**stale**' if flag else 'ok'} |".replace(".0 |", " |"))

for heading, header, rows in tables(open(doc, encoding="utf-8").read().splitlines(), marked_only=True):
    if len(header) >= 2 and header[0] == "workload" and header[1].startswith("switchboard Ir/step"):
        for r in rows:
            compare(heading, workload(r[0]), "ir", workload(r[0]), r[1])
    elif header[:4] == ["cluster workload", "local workload", "local Ir/step", "cluster Ir/step"]:
        for r in rows:
            compare(heading, f"{r[1]} (local)", "ir", r[1], r[2])
            compare(heading, f"{r[0]} (cluster)", "ir", r[0], r[3])
    elif header[:2] == ["scenario", "switchboard"]:
        for r in rows:
            key = "4" if "(4 each)" in r[0] else "1" if "(1 each)" in r[0] else "detached" if "detached" in r[0] else None
            if key:
                compare(heading, r[0], "heap", key, r[1])
    elif header[:3] == ["step", "allocation calls", "bytes requested"]:
        for r in rows:
            compare(heading, f"{r[0]}: calls", "calls", step_key(r[0]), r[1])
            compare(heading, f"{r[0]}: bytes", "bytes", step_key(r[0]), r[2])

print("| section | row | table | now | drift | |")
print("|---|---|---:|---:|---:|---|")
print("\n".join(report))
if not report:
    print("bench-drift: no marked table (<!-- bench-drift -->) had a row this run measured", file=sys.stderr)
    sys.exit(2)
print(f"\n{drifted} of {len(report)} rows drifted more than {threshold:g}% from BENCHMARKS.md")
sys.exit(1 if drifted else 0)
EOF
