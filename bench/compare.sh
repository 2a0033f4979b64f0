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
missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
PY=$("$ROOT/scripts/python-env.sh")
cargo build --release --quiet --bin ferroserve --example bench --example bare_echo
mkdir -p bench/results
out="bench/results/$(date -u +%Y-%m-%d)-$(hostname -s).md"
python3 bench/compare.py "$CARGO_TARGET_DIR/release/ferroserve" \
  "$CARGO_TARGET_DIR/release/examples/bench" "$CARGO_TARGET_DIR/release/examples/bare_echo" "$PY" | tee "$out.tmp"
mv "$out.tmp" "$out"
echo "written: $out" >&2
