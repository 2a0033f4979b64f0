#!/usr/bin/env bash
# Runs every fuzz target (libFuzzer, through cargo fuzz) for a bounded time and prints one
# line per target: executions, corpus size, crashes. Exits non-zero when any target crashed,
# timed out (an input running past FERROSERVE_FUZZ_TIMEOUT seconds, default 60), ran out of
# memory or leaked, after the table, naming the target and the input it left in
# fuzz/artifacts/<target>/. Each target's libFuzzer output is kept in fuzz/logs/<target>.log
# (FERROSERVE_FUZZ_LOGS names another folder).
# Usage: scripts/fuzz.sh [seconds per target, default 60] [target[=seconds] ...]
# Seeds: fuzz/seeds/<target>/ (real TorchServe inputs, see fuzz/seeds/generate.py) and, at
# each run, inputs taken from the repository's fixtures: its archives (large entries cut, see
# slim below), their model-config YAML, config.properties and the deployment's
# configurations, the workflow specs of tests/fixtures/workflow. FERROSERVE_SUITE_FIXTURES
# may name a folder built by tests/suite/fixtures.py: its archives and bodies are added.
# New inputs libFuzzer finds accumulate in fuzz/corpus/<target>/.
# cargo fuzz needs nightly flags; RUSTC_BOOTSTRAP lets the stable toolchain accept them.
# FERROSERVE_FUZZ_NO_BUILD=1 runs the binaries an earlier run built, without calling cargo.
set -euo pipefail
# shellcheck source=scripts/env.sh
. "$(dirname "$0")/env.sh"
cd "$ROOT"
SECONDS_PER_TARGET=${1:-60}
shift || true
TIMEOUT=${FERROSERVE_FUZZ_TIMEOUT:-60}
export RUSTC_BOOTSTRAP=1
# The fuzz binaries link libtorch through the library crate, without its run path.
export LD_LIBRARY_PATH="$LIBTORCH/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
FUZZ_TARGET_DIR="${FERROSERVE_FUZZ_TARGET_DIR:-$HOME/.cache/ferroserve/fuzz-target}"
BIN_DIR="$FUZZ_TARGET_DIR/x86_64-unknown-linux-gnu/release"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  for f in fuzz/fuzz_targets/*.rs; do targets+=("$(basename "$f" .rs)"); done
fi
for t in "${targets[@]}"; do
  [ -f "fuzz/fuzz_targets/${t%%=*}.rs" ] || { echo "no fuzz target ${t%%=*}" >&2; exit 2; }
done

if [ "${FERROSERVE_FUZZ_NO_BUILD:-0}" != 1 ]; then
  command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
  # The server's own dependency versions (the fuzz workspace has its own lock file).
  [ fuzz/Cargo.lock -nt Cargo.lock ] || cp Cargo.lock fuzz/Cargo.lock
  # Address Sanitizer, optimised, with debug assertions and overflow checks.
  cargo fuzz build --target-dir "$FUZZ_TARGET_DIR" >&2
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# An archive as a seed: libFuzzer truncates inputs past 1 MiB, which would cut a zip's central
# directory off. Archives over 64 KiB are rewritten with the same entries, names and order,
# each entry cut to its first 4 KiB (the reader never looks inside weights).
slim() { # archive destination
  if [ "$(stat -c %s "$1")" -le 65536 ]; then
    cp "$1" "$2"
    return
  fi
  python3 - "$1" "$2" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as src, zipfile.ZipFile(sys.argv[2], "w") as dst:
    for info in src.infolist():
        dst.writestr(info, src.read(info)[:4096])
PY
}

archives() {
  local suite=${FERROSERVE_SUITE_FIXTURES:-/nonexistent}
  for m in tests/fixtures/*.mar model-store/*.mar examples/*.mar "$suite"/*.mar "$suite"/*.war; do
    if [ -f "$m" ]; then echo "$m"; fi
  done
}

# Seeds taken from the repository's files at each run, into $2.
fixture_seeds() { # target dir
  mkdir -p "$2"
  case "$1" in
    archive) archives | while read -r m; do slim "$m" "$2/$(basename "$m")"; done ;;
    model_config)
      archives | while read -r m; do
        { unzip -Z1 "$m" | grep -E '\.ya?ml$' || true; } | while read -r entry; do
          unzip -p "$m" "$entry" >"$2/$(basename "$m")-$(basename "$entry")"
        done
      done
      cp src/metrics/metrics.yaml "$2/" ;;
    properties)
      cp config.properties "$2/"
      # The configmap's config.properties block, and the one KServe's example describes.
      awk '/config.properties: \|/ { on = 1; next } on && /^    / { sub(/^    /, ""); print; next } on { exit }' \
        deploy/kubernetes/configmap.yaml >"$2/configmap.properties"
      sed -n 's/^#     \([a-z_]*=.*\)/\1/p' deploy/kserve/inferenceservice-example.yaml >"$2/kserve.properties" ;;
    request_body)
      cp tests/fixtures/sign_reference.json "$2/"
      for b in "${FERROSERVE_SUITE_FIXTURES:-/nonexistent}"/*.json; do
        if [ -f "$b" ]; then cp "$b" "$2/"; fi
      done ;;
    workflow_spec) cp tests/fixtures/workflow/*.yaml "$2/" ;;
  esac
}

LOGS=${FERROSERVE_FUZZ_LOGS:-fuzz/logs}
mkdir -p "$LOGS"
failures=()
echo "| target | seconds | executions | corpus | crashes |"
echo "|---|---|---|---|---|"
for spec in "${targets[@]}"; do
  t=${spec%%=*}
  secs=$SECONDS_PER_TARGET
  [ "$spec" = "$t" ] || secs=${spec#*=}
  corpus=fuzz/corpus/$t
  artifacts=fuzz/artifacts/$t
  mkdir -p "$corpus" "$artifacts"
  fixture_seeds "$t" "$work/$t"
  seeds=("$work/$t")
  [ -d "fuzz/seeds/$t" ] && seeds+=("fuzz/seeds/$t")
  log=$LOGS/$t.log
  before=$(ls "$artifacts")
  status=0
  # New inputs go to the first folder; the seed folders are only read.
  "$BIN_DIR/$t" "$corpus" "${seeds[@]}" -artifact_prefix="$artifacts/" \
    -max_total_time="$secs" -timeout="$TIMEOUT" -report_slow_units="$TIMEOUT" \
    -rss_limit_mb=4096 -print_final_stats=1 >"$log" 2>&1 || status=$?
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)
  # The corpus libFuzzer ended with (seeds that add coverage and inputs it found).
  size=$(grep -o 'corp: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*$' || true)
  new=$(comm -13 <(echo "$before") <(ls "$artifacts") | sed '/^$/d')
  crashes=$(printf '%s' "$new" | grep -c . || true)
  echo "| $t | $secs | ${execs:-?} | ${size:-?} | $crashes |"
  if [ "$status" -ne 0 ] || [ "$crashes" -ne 0 ]; then
    failures+=("$t")
    {
      echo "target $t: libFuzzer exited with status $status; log: $log"
      if [ -n "$new" ]; then
        printf '%s\n' "$new" | while read -r a; do
          echo "  input: $artifacts/$a (reproduce: $BIN_DIR/$t $artifacts/$a)"
        done
      fi
    } >>"$work/failures"
  fi
done

if [ ${#failures[@]} -gt 0 ]; then
  cat "$work/failures" >&2
  for t in "${failures[@]}"; do
    echo "--- the end of $LOGS/$t.log:" >&2
    tail -40 "$LOGS/$t.log" >&2
  done
  echo "fuzzing failed: ${failures[*]}" >&2
  exit 1
fi
