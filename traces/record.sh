#!/usr/bin/env bash
# Re-record the shipped traces: deterministic inputs, then `apf trace record` of each program.
# Needs valgrind, xz-utils, sqlite3 and coreutils from Debian. Run from the repository root:
#   bash traces/record.sh          all five (the two large ones take a few minutes each)
set -euo pipefail
APF=${APF:-.venv/bin/apf}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 traces/make_inputs.py "$work"
out=$PWD/traces
cd "$work"
"$APF" trace record -o "$out/xz-9.apfmt" -- xz -9 -c -T1 text24k.txt
"$APF" trace record -o "$out/sqlite-join.apfmt" -- sqlite3 :memory: ".read db.sql"
mkdir -p tmp
"$APF" trace record -o "$out/sort-external.apfmt" -- sort -S 64K -T tmp -o sorted.txt lines3k.txt
LC_ALL=C "$APF" trace record -o "$out/sort-long.apfmt" -- sort --parallel=1 -S 64M -T tmp -o sorted16m.txt long16m.txt
"$APF" trace record -o "$out/sqlite-blobs.apfmt" -- sqlite3 :memory: ".read blobs.sql"
