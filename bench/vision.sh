#!/usr/bin/env bash
# TorchServe's image_classifier on a TorchScript ResNet-18: ferroserve's native handler vs
# TorchServe 0.12's Python handler, side by side (bench/vision.py); about 5 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
PY=$(scripts/python-env.sh)
cargo build --release --quiet --bin ferroserve --example bench
python3 bench/vision.py "$CARGO_TARGET_DIR/release/ferroserve" "$CARGO_TARGET_DIR/release/examples/bench" "$PY"
