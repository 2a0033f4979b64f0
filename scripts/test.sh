#!/usr/bin/env bash
# Runs every test: formatting, lints, unit tests and the integration tests that start the
# real server on loopback ports with the bundled models.
set -euo pipefail
. "$(dirname "$0")/env.sh"
cd "$ROOT"
rustup component list --installed 2>/dev/null | grep -q rustfmt || rustup component add rustfmt clippy >/dev/null 2>&1 || true
cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings
cargo test --all-targets 2>&1
