#!/usr/bin/env bash
# Server instructions per request, counted by callgrind (repeatable for the same binary and
# inputs, whatever else the machine does): the native no-op model (batch 1 from one
# connection; batch 8 from eight) and the Python echo model, front end only (the Python
# worker is not traced). Instrumentation is on only around N requests after a warm-up.
# Usage: bench/instructions.sh BIN [BIN2]  (N requests per case, default 2000).
set -euo pipefail
. "$(dirname "$0")/../scripts/env.sh"
cd "$ROOT"
command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind >/dev/null; }
PY=$("$ROOT/scripts/python-env.sh")
N=${N:-2000}
work=$(mktemp -d)
vpid=
trap '[ -n "$vpid" ] && kill "$vpid" 2>/dev/null; rm -rf "$work"' EXIT
mkdir "$work/store"
cp tests/fixtures/noop.mar "$work/store/"
python3 - "$work/store/echo.mar" <<'PY'
import json, sys, zipfile
echo = ("class Echo:\n    def initialize(self, context):\n        pass\n"
        "    def handle(self, data, context):\n"
        "        return [row.get('body') or row.get('data') for row in data]\n")
with zipfile.ZipFile(sys.argv[1], "w") as z:
    z.writestr("MAR-INF/MANIFEST.json", json.dumps({"runtime": "python", "model": {"modelName": "echo", "handler": "echo_handler.py", "modelVersion": "1.0"}}))
    z.writestr("echo_handler.py", echo)
PY
cat > "$work/client.py" <<'PY'
import http.client, sys, threading
port, n, model, conns = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
noop = model.startswith("noop")
body = b"[0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.25, 2.5, 2.75, 3]" if noop else b"hello"
ctype = "application/json" if noop else "text/plain"
def run():
    c = http.client.HTTPConnection("127.0.0.1", port)
    for _ in range(n // conns):
        c.request("POST", f"/predictions/{model}", body, {"Content-Type": ctype})
        r = c.getresponse()
        r.read()
        assert r.status == 200, r.status
threads = [threading.Thread(target=run) for _ in range(conns)]
for t in threads:
    t.start()
for t in threads:
    t.join()
PY
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat > "$work/config.properties" <<CFG
inference_address=http://127.0.0.1:$port
management_address=http://127.0.0.1:$((port + 1))
metrics_address=http://127.0.0.1:$((port + 2))
grpc_inference_port=$((port + 3))
grpc_management_port=$((port + 4))
model_store=$work/store
load_models=noop.mar,noop8=noop.mar,echo.mar
disable_token_authorization=true
default_workers_per_model=1
intra_op_threads=1
python=$PY
models={"noop8": {"1.0": {"batchSize": 8, "maxBatchDelay": 5}}}
CFG

count() { # binary model connections → instructions per request
  rm -f "$work"/cg.*
  (cd "$work" && OMP_NUM_THREADS=1 RUST_LOG=warn exec valgrind --tool=callgrind --instr-atstart=no \
    --callgrind-out-file="$work/cg.%p" "$1" --foreground --ts-config config.properties > server.log 2>&1) &
  vpid=$!
  for _ in $(seq 600); do
    curl -sf "http://127.0.0.1:$port/v2/health/ready" >/dev/null 2>&1 && break
    sleep 1
  done
  python3 "$work/client.py" "$port" 200 "$2" "$3"
  callgrind_control -i on "$vpid" >/dev/null
  python3 "$work/client.py" "$port" "$N" "$2" "$3"
  callgrind_control -i off "$vpid" >/dev/null
  callgrind_control -d "$vpid" >/dev/null
  kill "$vpid"
  wait "$vpid" 2>/dev/null || true
  vpid=
  cat "$work"/cg.* | awk -v n="$N" '/^totals:/ { s += $2 } END { printf "%.0f", s / n }'
}

echo "| case | $(for b in "$@"; do printf '%s | ' "$(basename "$b")"; done)"
echo "|---|$(for _ in "$@"; do printf -- '---|'; done)"
for case in "noop 1" "noop8 8" "echo 1" "echo 8"; do
  read -r model conns <<< "$case"
  row="| $model, $conns connection(s) |"
  for b in "$@"; do row="$row $(count "$b" "$model" "$conns") |"; done
  echo "$row"
done
