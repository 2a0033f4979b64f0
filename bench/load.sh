#!/usr/bin/env bash
# Load benchmark: the bundled sign model (TorchScript and ONNX, one worker, one intra-op
# thread) under wrk at 1, 8 and 32 connections, with batch_size 1 and 8 (max_batch_delay 5 ms).
# Reports throughput, p50/p99, the average batch the model actually ran, and the raw
# in-process forward pass at the same batch size measured in the same run.
# Bounded: DURATION seconds per case (default 5), 12 cases.
set -euo pipefail
. "$(dirname "$0")/../scripts/env.sh"
cd "$ROOT"
DURATION=${DURATION:-5}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
cargo build --release --quiet --bin ferroserve --example bench
BIN=$CARGO_TARGET_DIR/release/ferroserve
BENCH=$CARGO_TARGET_DIR/release/examples/bench
work=$(mktemp -d)
pid=
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"' EXIT

# The same 64x469 request as bench.rs.
python3 -c '
import json, math
print(json.dumps({"landmarks": [[math.sin((f * 469 + j) * 0.001) * 0.5 for j in range(469)] for f in range(64)]}))
' > "$work/body.json"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
stats() { curl -s "$mgmt/models/$1" | python3 -c 'import json, sys; s = json.load(sys.stdin)[0]["stats"]; print(s["batches"], s["requests"])'; }

echo "machine: $(nproc) cores, $(uname -m), $(date -u +%Y-%m-%d); wrk and the server share the cores"
echo
echo "| model | batch_size | connections | req/s | p50 | p99 | non-2xx | avg batch run | raw forward at that batch (p50) |"
echo "|---|---|---|---|---|---|---|---|---|"
for batch in 1 8; do
  ip=$(free_port); mp=$(free_port); xp=$(free_port)
  mgmt=http://127.0.0.1:$mp
  cat > "$work/config.properties" <<CFG
inference_address=http://127.0.0.1:$ip
management_address=$mgmt
metrics_address=http://127.0.0.1:$xp
model_store=$ROOT/model-store
load_models=all
intra_op_threads=1
disable_token_authorization=true
grpc_inference_port=$(free_port)
grpc_management_port=$(free_port)
models={"sign": {"1.0": {"batchSize": $batch, "maxBatchDelay": 5}}, "sign_onnx": {"1.0": {"batchSize": $batch, "maxBatchDelay": 5}}}
CFG
  (cd "$work" && RUST_LOG=warn TMPDIR="$work" exec "$BIN" --foreground --ts-config "$work/config.properties" >/dev/null) &
  pid=$!
  for _ in $(seq 200); do curl -sf "http://127.0.0.1:$ip/ping" >/dev/null && break; sleep 0.05; done
  read -r raw_ts raw_onnx < <("$BENCH" "$BIN" raw "$batch")
  for model in sign sign_onnx; do
    raw=$raw_ts; [ "$model" = sign_onnx ] && raw=$raw_onnx
    for c in 1 8 32; do
      read -r b0 r0 < <(stats "$model")
      out=$(BODY_FILE="$work/body.json" wrk -t "$(( c < 2 ? 1 : 2 ))" -c "$c" -d "${DURATION}s" --latency \
              -s bench/post.lua "http://127.0.0.1:$ip/predictions/$model")
      read -r b1 r1 < <(stats "$model")
      rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
      p50=$(awk '$1 == "50%" {print $2}' <<<"$out")
      p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
      bad=$(awk '/Non-2xx/ {print $NF}' <<<"$out"); bad=${bad:-0}
      avg=$(python3 -c "print(f'{($r1 - $r0) / max($b1 - $b0, 1):.2f}')")
      echo "| $model | $batch | $c | $rps | $p50 | $p99 | $bad | $avg | ${raw} µs |"
    done
  done
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
done
echo
"$BENCH" "$BIN" overload
"$BENCH" "$BIN" memory
