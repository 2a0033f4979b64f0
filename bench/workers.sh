#!/usr/bin/env bash
# Does a second worker add throughput? The bundled sign model (ONNX by default; MODEL=sign for
# TorchScript) at batch 1 with one intra-op thread per worker, 1 then 2 workers, 8 connections,
# REPS runs (default 3) alternating which count goes first; medians with ranges.
# Usage: bench/workers.sh [BIN]; DURATION seconds per case (default 5).
set -euo pipefail
. "$(dirname "$0")/../scripts/env.sh"
cd "$ROOT"
MODEL=${MODEL:-sign_onnx}
DURATION=${DURATION:-5}
REPS=${REPS:-3}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
BIN=${1:-}
if [ -z "$BIN" ]; then
  cargo build --release --quiet --bin ferroserve
  BIN=$CARGO_TARGET_DIR/release/ferroserve
fi
work=$(mktemp -d)
pid=
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"' EXIT
mkdir "$work/store"
cp "model-store/$MODEL.mar" "$work/store/"
python3 -c '
import json, math
print(json.dumps({"landmarks": [[math.sin((f * 469 + j) * 0.001) * 0.5 for j in range(469)] for f in range(64)]}))
' > "$work/body.json"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

run() { # workers → req/s
  cat > "$work/config.properties" <<CFG
inference_address=http://127.0.0.1:$port
management_address=http://127.0.0.1:$((port + 1))
metrics_address=http://127.0.0.1:$((port + 2))
grpc_inference_port=$((port + 3))
grpc_management_port=$((port + 4))
model_store=$work/store
load_models=$MODEL.mar
disable_token_authorization=true
intra_op_threads=1
models={"$MODEL": {"1.0": {"minWorkers": $1, "maxWorkers": $1, "batchSize": 1}}}
CFG
  (cd "$work" && OMP_NUM_THREADS=1 RUST_LOG=warn exec "$BIN" --foreground --ts-config config.properties > server.log 2>&1) &
  pid=$!
  for _ in $(seq 300); do
    curl -sf "http://127.0.0.1:$port/v2/health/ready" >/dev/null && break
    sleep 0.1
  done
  curl -sf "http://127.0.0.1:$port/v2/health/ready" >/dev/null || { cat "$work/server.log" >&2; exit 1; }
  BODY_FILE="$work/body.json" wrk -t2 -c8 -d1s -s bench/post.lua "http://127.0.0.1:$port/predictions/$MODEL" >/dev/null
  out=$(BODY_FILE="$work/body.json" wrk -t2 -c8 -d"${DURATION}s" -s bench/post.lua "http://127.0.0.1:$port/predictions/$MODEL")
  if echo "$out" | grep -q 'Non-2xx'; then echo "non-2xx answers: $out" >&2; exit 1; fi
  kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; pid=
  echo "$out" | awk '/Requests\/sec/ { print $2 }'
}

declare -A rps
for rep in $(seq "$REPS"); do
  order="1 2"; [ $((rep % 2)) -eq 0 ] && order="2 1"
  for w in $order; do rps[$w]="${rps[$w]:-} $(run "$w")"; done
done
summary() { python3 -c 'import statistics, sys; v = [float(x) for x in sys.argv[1].split()]; print(f"{statistics.median(v):.0f} ({min(v):.0f}–{max(v):.0f})")' "$1"; }
one=$(summary "${rps[1]}"); two=$(summary "${rps[2]}")
ratio=$(python3 -c 'import statistics, sys; a = [float(x) for x in sys.argv[1].split()]; b = [float(x) for x in sys.argv[2].split()]; print(f"{statistics.median(b) / statistics.median(a):.2f}")' "${rps[1]}" "${rps[2]}")
echo "$(nproc) cores; $MODEL at batch 1, 1 intra-op thread per worker, wrk -c8, $DURATION s x $REPS runs alternating"
echo "| workers | req/s median (min–max) |"
echo "|---|---|"
echo "| 1 | $one |"
echo "| 2 | $two |"
echo "2 workers / 1 worker: $ratio"
