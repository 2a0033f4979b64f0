#!/usr/bin/env bash
# The native sign model (TorchScript, one worker, one intra-op thread, batch 1) fed the same
# request three ways: JSON as Python writes numpy's float32 values, application/x-npy, and a
# KServe v2 binary tensor. wrk at 8 connections, REPS runs of DURATION seconds per form in
# rotation; medians of req/s and server CPU per request, next to the raw forward pass measured
# in process (`bench raw 1`): with a binary body the request should cost little more.
# WORKERS (default 1) and INTRA (intra-op threads per worker, default 1) set the model's
# threads, FORMS which bodies to send (default "json npy v2"), FERROSERVE_BIN another build
# of the server (before/after comparisons), EXTRA_CONFIG lines added to config.properties.
# PROFILE=1 records the server with perf during each form's first run and prints where its CPU
# went, by library and by thread.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/tools.sh
. scripts/env.sh
DURATION=${DURATION:-8}
REPS=${REPS:-3}
CONNECTIONS=${CONNECTIONS:-8}
WORKERS=${WORKERS:-1}
INTRA=${INTRA:-1}
FORMS=${FORMS:-json npy v2}
cargo build --release --quiet --bin ferroserve --example bench
BIN="${FERROSERVE_BIN:-$CARGO_TARGET_DIR/release/ferroserve}"
work=$(mktemp -d)
server=""
cleanup() {
  if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/store" && cp model-store/sign.mar "$work/store/"
cat > "$work/config.properties" <<CONF
inference_address=http://127.0.0.1:18480
management_address=http://127.0.0.1:18481
metrics_address=http://127.0.0.1:18482
grpc_inference_port=18470
grpc_management_port=18471
model_store=$work/store
load_models=all
disable_token_authorization=true
intra_op_threads=$INTRA
default_workers_per_model=$WORKERS
${EXTRA_CONFIG:-}
CONF
# The three bodies of one request (64 frames of 469 values).
python3 - "$work" <<'PY'
import json, math, struct, sys
work = sys.argv[1]
f32 = lambda v: struct.unpack("f", struct.pack("f", v))[0]
frames = [[f32(math.sin((f * 469 + j) * 0.001) * 0.5) for j in range(469)] for f in range(64)]
open(f"{work}/body.json", "w").write(json.dumps({"landmarks": frames}))
raw = b"".join(struct.pack("<f", v) for row in frames for v in row)
header = "{'descr': '<f4', 'fortran_order': False, 'shape': (64, 469), }"
header += " " * ((64 - (11 + len(header)) % 64) % 64) + "\n"
open(f"{work}/body.npy", "wb").write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + raw)
v2 = json.dumps({"inputs": [{"name": "landmarks", "shape": [1, 64, 469], "datatype": "FP32",
                            "parameters": {"binary_data_size": len(raw)}}]}).encode()
open(f"{work}/body.v2", "wb").write(v2 + raw)
open(f"{work}/v2.len", "w").write(str(len(v2)))
PY
(cd "$work" && exec "$BIN" --foreground --ts-config "$work/config.properties" >"$work/server.log" 2>&1) &
server=$!
for _ in $(seq 120); do curl -sf http://127.0.0.1:18480/v2/health/ready >/dev/null && break; sleep 1; done
curl -sf http://127.0.0.1:18480/v2/health/ready >/dev/null || { cat "$work/server.log" >&2; exit 1; }
url=http://127.0.0.1:18480/predictions/sign
# Every form must give the JSON form's answer before it is timed.
expected=$(curl -sf -H 'Content-Type: application/json' --data-binary @"$work/body.json" "$url")
[ "$(curl -sf -H 'Content-Type: application/x-npy' --data-binary @"$work/body.npy" "$url")" = "$expected" ]
[ "$(curl -sf -H "Inference-Header-Content-Length: $(cat "$work/v2.len")" -H "Content-Type: application/octet-stream" --data-binary @"$work/body.v2" "$url")" = "$expected" ]
ticks=$(getconf CLK_TCK)
cpu() { awk -v t="$ticks" '{ print ($14 + $15) / t }' "/proc/$server/stat"; }
declare -A rates cpus
for rep in $(seq "$REPS"); do
  for form in $FORMS; do
    case $form in
      json) ct=application/json extra="" ;;
      npy) ct=application/x-npy extra="" ;;
      v2) ct=application/octet-stream extra="Inference-Header-Content-Length: $(cat "$work/v2.len")" ;;
    esac
    perf=""
    if [ -n "${PROFILE:-}" ] && [ "$rep" = 1 ]; then
      perf record -q -F 999 -g -p "$server" -o "$work/perf.$form" -- sleep $((DURATION - 2)) 2>/dev/null &
      perf=$!
    fi
    before=$(cpu)
    out=$(BODY_FILE="$work/body.$form" CONTENT_TYPE=$ct EXTRA_HEADER=$extra \
      wrk -t2 -c"$CONNECTIONS" -d"${DURATION}s" -s bench/post.lua "$url")
    after=$(cpu)
    if [ -n "$perf" ]; then wait "$perf"; fi
    rate=$(awk '/Requests\/sec/ { print $2 }' <<<"$out")
    total=$(awk '/requests in/ { print $1 }' <<<"$out")
    errors=$(awk '/Non-2xx|Socket errors/ { n++ } END { print n + 0 }' <<<"$out")
    rates[$form]+="$rate "
    cpus[$form]+="$(awk -v a="$before" -v b="$after" -v n="$total" 'BEGIN { printf "%.3f", (b - a) * 1000 / n }') "
    echo "run $rep $form: $rate req/s, error lines $errors" >&2
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] " (" v[1] "-" v[NR] ")" }'; }
read -r forward _ < <("$CARGO_TARGET_DIR/release/examples/bench" "$BIN" raw 1)
echo "| body | req/s (range) | server CPU ms / request (range) |"
echo "|---|---|---|"
for form in $FORMS; do
  echo "| $form | $(median <<<"${rates[$form]}") | $(median <<<"${cpus[$form]}") |"
done
echo "raw forward in process, batch 1, one thread: $forward us"
if [ -n "${PROFILE:-}" ]; then
  for form in $FORMS; do
    for key in dso comm; do
      echo "perf, $form body, server CPU samples by $key:"
      perf report -i "$work/perf.$form" --no-children --sort "$key" -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -8
    done
  done
fi
