#!/usr/bin/env bash
# What drift monitoring costs on the native sign model (bench/drift.py): the same binary with
# drift_monitoring on and off, alternating. Writes bench/results/<date>-<host>-drift.md;
# about 2 minutes (DURATION, REPS bound it).
set -euo pipefail
. "$(dirname "$0")/../scripts/env.sh"
cd "$ROOT"
. bench/tools.sh
cargo build --release --quiet --bin ferroserve --example bench
mkdir -p bench/results
out="bench/results/$(date -u +%Y-%m-%d)-$(hostname -s)-drift.md"
python3 bench/drift.py "$CARGO_TARGET_DIR/release/ferroserve" \
  "$CARGO_TARGET_DIR/release/examples/bench" | tee "$out.tmp"
mv "$out.tmp" "$out"
echo "written: $out" >&2
