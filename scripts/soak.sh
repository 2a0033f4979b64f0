#!/usr/bin/env bash
# Long soak: mixed native and Python traffic with register/scale/unregister churn, sampling
# RSS, descriptors, threads and temporary files; fails on growth (tests/soak.rs).
# Usage: scripts/soak.sh [minutes, default 30]
set -euo pipefail
# shellcheck source=scripts/env.sh
. "$(dirname "$0")/env.sh"
cd "$ROOT"
FERROSERVE_TEST_PYTHON=$("$ROOT/scripts/python-env.sh")
export FERROSERVE_TEST_PYTHON
export FERROSERVE_SOAK_SECS=$(( ${1:-30} * 60 ))
cargo test --release --test soak -- --nocapture
