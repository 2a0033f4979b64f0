#!/usr/bin/env bash
# Runs every fuzz target (libFuzzer, through cargo fuzz) for a bounded time and prints one
# line per target: executions, corpus size, crashes. Seed corpora come from the test fixtures.
# Usage: scripts/fuzz.sh [seconds per target, default 60] [target ...]
# cargo fuzz needs nightly flags; RUSTC_BOOTSTRAP lets the stable toolchain accept them.
set -euo pipefail
. "$(dirname "$0")/env.sh"
cd "$ROOT"
SECONDS_PER_TARGET=${1:-60}
shift || true
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
# The fuzz binaries link libtorch through the library crate, without its run path.
export LD_LIBRARY_PATH="$LIBTORCH/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
FUZZ_TARGET_DIR="${FERROSERVE_FUZZ_TARGET_DIR:-$HOME/.cache/ferroserve/fuzz-target}"
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo fuzz list)

seed() { # target dir
  mkdir -p "$2"
  case "$1" in
    archive) cp tests/fixtures/*.mar model-store/*.mar examples/*.mar "$2/" ;;
    model_config) for m in tests/fixtures/*.mar model-store/*.mar; do
        unzip -p "$m" model-config.yaml > "$2/$(basename "$m").yaml" 2>/dev/null || true
      done; cp src/metrics/metrics.yaml "$2/" ;;
    properties) cp config.properties "$2/"; cp deploy/kubernetes/configmap.yaml "$2/" ;;
    request_body) cp tests/fixtures/sign_reference.json "$2/"
      printf '{"landmarks": [[0.5, 1, 2], [3, 4, 5]], "topk": 2}' > "$2/small.json"
      printf 'a=1&b=2' > "$2/form.txt"
      printf '{"canaries": {"2.0": 10}, "guards": {"maxErrorRate": 0.1, "minRequests": 2}, "rollout": {"steps": [5, 50], "dwellSec": 0}}' > "$2/split.json" ;;
    worker_reply) printf '\x00\x00\x00\xc8\x00\x00\x00\x02ok\x00\x00\x00\x02id\x00\x00\x00\x00\x00\x00\x00\xc8\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02hi\xff\xff\xff\xff' > "$2/reply.bin"
      printf '[METRICS]PredictionTime.ms:2.5|#ModelName:m,Level:Model|#type:GAUGE|#hostname:h,1700000000,req' > "$2/metrics.txt" ;;
    workflow_spec) cp tests/fixtures/workflow/*.yaml "$2/" ;;
    management_input) printf 'file:///tmp/x.mar' > "$2/file.txt"; printf 'sign.mar' > "$2/plain.txt"
      printf 'https://example.com/m.mar' > "$2/http.txt" ;;
  esac
}

echo "| target | seconds | executions | corpus | crashes |"
echo "|---|---|---|---|---|"
for t in "${targets[@]}"; do
  corpus=fuzz/corpus/$t
  [ -d "$corpus" ] || seed "$t" "$corpus"
  log=$(mktemp)
  status=0
  cargo fuzz run --target-dir "$FUZZ_TARGET_DIR" "$t" "$corpus" -- \
    -max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb=4096 -print_final_stats=1 >"$log" 2>&1 || status=$?
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
  size=$(find "$corpus" -type f | wc -l)
  crashes=$(find "fuzz/artifacts/$t" -type f 2>/dev/null | wc -l)
  echo "| $t | $SECONDS_PER_TARGET | ${execs:-?} | $size | $crashes |"
  if [ "$status" -ne 0 ]; then
    echo "target $t stopped with status $status; its log:" >&2
    tail -40 "$log" >&2
  fi
  rm -f "$log"
done
