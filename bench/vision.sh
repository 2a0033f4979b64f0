#!/usr/bin/env bash
# TorchServe's image_classifier on a TorchScript ResNet-18: ferroserve's native handler vs
# TorchServe 0.12's Python handler, side by side (bench/vision.py; Java 17 and wrk from Debian
# when missing). Writes bench/results/<date>-<host>-vision.md; about 8 minutes (DURATION,
# REPS bound it).
set -euo pipefail
. "$(dirname "$0")/../scripts/env.sh"
cd "$ROOT"
. bench/tools.sh
PY=$("$ROOT/scripts/python-env.sh")
cargo build --release --quiet --bin ferroserve --example bench
mkdir -p bench/results
out="bench/results/$(date -u +%Y-%m-%d)-$(hostname -s)-vision.md"
python3 bench/vision.py "$CARGO_TARGET_DIR/release/ferroserve" \
  "$CARGO_TARGET_DIR/release/examples/bench" "$PY" | tee "$out.tmp"
mv "$out.tmp" "$out"
echo "written: $out" >&2
