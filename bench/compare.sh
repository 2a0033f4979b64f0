#!/usr/bin/env bash
# One command: ferroserve vs TorchServe 0.12 on the same archives, same load, same machine,
# in one run. Builds ferroserve in release, prepares TorchServe 0.12 (the cached Python
# environment of scripts/python-env.sh; Java 17 and wrk from Debian when missing), then runs
# bench/compare.py and writes its table to bench/results/<date>-<host>.md.
# DURATION (seconds per case, default 4) and REPS (runs per server, default 3) bound the run:
# 30 cases per server run, about 25 minutes at the defaults.
set -euo pipefail
. "$(dirname "$0")/../scripts/env.sh"
cd "$ROOT"
. bench/tools.sh
PY=$("$ROOT/scripts/python-env.sh")
cargo build --release --quiet --bin ferroserve --example bench --example bare_echo
mkdir -p bench/results
out="bench/results/$(date -u +%Y-%m-%d)-$(hostname -s).md"
python3 bench/compare.py "$CARGO_TARGET_DIR/release/ferroserve" \
  "$CARGO_TARGET_DIR/release/examples/bench" "$CARGO_TARGET_DIR/release/examples/bare_echo" "$PY" | tee "$out.tmp"
mv "$out.tmp" "$out"
echo "written: $out" >&2
