#!/usr/bin/env bash
# Benchmark: release build, the bundled sign models, loopback, sequential requests.
# Usage: bench/run.sh [requests per model, default 1000]
set -euo pipefail
. "$(dirname "$0")/../scripts/env.sh"
cd "$ROOT"
cargo build --release --quiet --bin ferroserve --example bench
echo "machine: $(nproc) cores, $(uname -m), $(date -u +%Y-%m-%d)"
"$CARGO_TARGET_DIR/release/examples/bench" "$CARGO_TARGET_DIR/release/ferroserve" latency "${1:-1000}"
"$CARGO_TARGET_DIR/release/examples/bench" "$CARGO_TARGET_DIR/release/ferroserve" scrape
