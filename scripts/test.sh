#!/usr/bin/env bash
# Runs every test: formatting, lints, unit tests and the integration tests that start the
# real server on loopback ports with the bundled models.
set -euo pipefail
. "$(dirname "$0")/env.sh"
cd "$ROOT"
# A real Prometheus server and promtool, for the metrics tests.
if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  echo "installing prometheus with apt-get" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
# TorchServe's Python worker, for the custom-handler tests.
FERROSERVE_TEST_PYTHON=$("$ROOT/scripts/python-env.sh")
export FERROSERVE_TEST_PYTHON
rustup component list --installed 2>/dev/null | grep -q clippy || rustup component add rustfmt clippy >/dev/null 2>&1 || true
cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings
cargo build --examples --quiet
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --lib --bins --tests 2>&1 | tee "$log" || status=$?
# One closing line over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit $status
