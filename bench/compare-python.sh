#!/usr/bin/env bash
# Python-handler path, ferroserve vs TorchServe 0.12 in one run: the same archives (an echo
# handler and the sign model through handlers/sign_handler.py), the same TorchServe Python
# worker, one worker per model, the same wrk load (DURATION s, CONNECTIONS connections).
# The servers run one after the other on the same cores.
set -euo pipefail
. "$(dirname "$0")/../scripts/env.sh"
cd "$ROOT"
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-8}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
command -v java >/dev/null || { apt-get update -qq && apt-get install -y -qq openjdk-17-jre-headless >/dev/null; }
PY=$("$ROOT/scripts/python-env.sh")
VENV_BIN=$(dirname "$PY")
cargo build --release --quiet --bin ferroserve
BIN=$CARGO_TARGET_DIR/release/ferroserve
work=$(mktemp -d)
cleanup() {
  (cd "$work" && PATH="$VENV_BIN:$PATH" torchserve --stop >/dev/null 2>&1) || true
  [ -n "${fpid:-}" ] && kill "$fpid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/store"

# The archives: echo (a class handler) and examples/sign_py.mar (the sign model through
# handlers/sign_handler.py).
cp "$ROOT/examples/sign_py.mar" "$work/store/"
"$PY" - "$work/store" <<'PYEOF'
import json, sys, zipfile
store = sys.argv[1]
echo = '''class Echo:
    def initialize(self, context):
        pass
    def handle(self, data, context):
        return [row.get("body") or row.get("data") for row in data]
'''
with zipfile.ZipFile(f"{store}/echo.mar", "w") as z:
    z.writestr("MAR-INF/MANIFEST.json", json.dumps({"runtime": "python", "model": {
        "modelName": "echo", "handler": "echo_handler.py", "modelVersion": "1.0"}}))
    z.writestr("echo_handler.py", echo)
PYEOF
python3 -c '
import json, math
print(json.dumps({"landmarks": [[math.sin((f * 469 + j) * 0.001) * 0.5 for j in range(469)] for f in range(64)]}))
' > "$work/sign.json"
printf 'hello' > "$work/echo.txt"

config() { # inference management metrics
  cat <<CFG
inference_address=http://127.0.0.1:$1
management_address=http://127.0.0.1:$2
metrics_address=http://127.0.0.1:$3
model_store=$work/store
load_models=echo.mar,sign_py.mar
disable_token_authorization=true
grpc_inference_port=$(($1 + 10))
grpc_management_port=$(($1 + 11))
default_workers_per_model=1
models={"echo": {"1.0": {"minWorkers": 1, "maxWorkers": 1}}, "sign_py": {"1.0": {"minWorkers": 1, "maxWorkers": 1}}}
CFG
}
wait_ready() { # management port
  for _ in $(seq 600); do
    ready=$(curl -s "http://127.0.0.1:$1/models/echo" "http://127.0.0.1:$1/models/sign_py" | grep -c '"READY"' || true)
    [ "$ready" -ge 2 ] && return 0
    sleep 0.2
  done
  echo "server did not get its workers ready" >&2; return 1
}
rss_mib() { ps -o rss= -p "$1" | awk '{s += $1} END {printf "%.0f", s / 1024}'; }
# "front end + workers = total" for the server process $1 and the worker processes $2.
rss_split() { echo "$(rss_mib "$1") + $(rss_mib "$2") = $(rss_mib "$1,$2") MiB"; }
measure() { # name port
  for model in echo sign_py; do
    body=$work/echo.txt; ct=text/plain
    [ "$model" = sign_py ] && { body=$work/sign.json; ct=application/json; }
    cat > "$work/post.lua" <<LUA
local f = assert(io.open("$body", "rb")); wrk.method = "POST"; wrk.body = f:read("*a"); f:close()
wrk.headers["Content-Type"] = "$ct"
LUA
    out=$(wrk -t 2 -c "$CONNECTIONS" -d "${DURATION}s" --latency -s "$work/post.lua" "http://127.0.0.1:$2/predictions/$model")
    rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
    p50=$(awk '$1 == "50%" {print $2}' <<<"$out")
    bad=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
    echo "| $1 | $model | $rps | $p50 | ${bad:-0} |"
  done
}

echo "machine: $(nproc) cores, $(uname -m), $(date -u +%Y-%m-%d); wrk -t2 -c$CONNECTIONS -d${DURATION}s"
echo
echo "| server | model | req/s | p50 | non-2xx |"
echo "|---|---|---|---|---|"
config 18080 18081 18082 > "$work/ts.properties"
(cd "$work" && PATH="$VENV_BIN:$PATH" TORCH_DEVICE=cpu torchserve --start --ncs --disable-token-auth \
   --model-store "$work/store" --ts-config "$work/ts.properties" >"$work/ts.log" 2>&1)
wait_ready 18081
ts_java=$(pgrep -d, -f 'org.pytorch.serve.ModelServer')
ts_rss=$(rss_split "$ts_java" "$(pgrep -d, -f model_service_worker)")
measure torchserve 18080
ts_rss_after=$(rss_split "$ts_java" "$(pgrep -d, -f model_service_worker)")
(cd "$work" && PATH="$VENV_BIN:$PATH" torchserve --stop >/dev/null)
sleep 2

config 28080 28081 28082 > "$work/fs.properties"
(cd "$work" && RUST_LOG=warn TMPDIR="$work" exec "$BIN" --foreground --python "$PY" --ts-config "$work/fs.properties" >"$work/fs.log" 2>&1) &
fpid=$!
wait_ready 28081
fs_rss=$(rss_split "$fpid" "$(pgrep -d, -P "$fpid")")
measure ferroserve 28080
fs_rss_after=$(rss_split "$fpid" "$(pgrep -d, -P "$fpid")")
echo
echo "RSS, front end (TorchServe's JVM, ferroserve's process) + its two Python workers:"
echo
echo "| server | after start | after the load |"
echo "|---|---|---|"
echo "| TorchServe | $ts_rss | $ts_rss_after |"
echo "| ferroserve | $fs_rss | $fs_rss_after |"
