#!/usr/bin/env bash
# Differential test, part of scripts/test.sh: the same requests sent to TorchServe 0.12 and to
# ferroserve, statuses and bodies compared; exits non-zero when any answer differs beyond
# what docs/compatibility.md lists.
#  1. compare.py: model and workflow management, on one pair of servers (same store, model
#     API on, token authorization off);
#  2. tests/suite/run.py --server both: TorchServe's own regression suite, each of its suites
#     on a fresh pair of servers with TorchServe's configuration for it, /metrics compared
#     after each suite's traffic.
# Needs Java 17 (installed from Debian if missing) and the Python environment of
# scripts/python-env.sh (torchserve 0.12.0). FERROSERVE_BIN names the binary (default: the
# debug build, built here if missing).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
. "$ROOT/scripts/env.sh"
cd "$ROOT"
command -v java >/dev/null || { apt-get update -qq && apt-get install -y -qq openjdk-17-jre-headless >/dev/null; }
PY=$("$ROOT/scripts/python-env.sh")
bin=${FERROSERVE_BIN:-$CARGO_TARGET_DIR/debug/ferroserve}
[ -n "${FERROSERVE_BIN:-}" ] || cargo build --quiet --bin ferroserve
work=$(mktemp -d)
cleanup() {
  (cd "$work/ts" && PATH="$(dirname "$PY"):$PATH" torchserve --stop >/dev/null 2>&1) || true
  if [ -n "${fpid:-}" ]; then kill "$fpid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
# Workflow archives built by the real archiver, and their Python model.
fixtures=tests/fixtures/workflow
for wf in wf par boom slow twostart cycle dupedge badyaml missing nofunc; do
  "$(dirname "$PY")/torch-workflow-archiver" --workflow-name "$wf" --spec-file "$fixtures/$wf.yaml" \
    --handler "$fixtures/wf_handler.py" --export-path "$work" -f
done
"$PY" - "$work/double.mar" "$fixtures/double.py" tests/fixtures/stateful.py tests/fixtures/stream.py <<'PY'
import json, sys, zipfile
def mar(path, name, handler, source, config=None):
    model = {"modelName": name, "handler": handler, "modelVersion": "1.0"}
    if config is not None:
        model["configFile"] = "model-config.yaml"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("MAR-INF/MANIFEST.json", json.dumps({"createdOn": "01/01/2024 00:00:00",
            "runtime": "python", "archiverVersion": "0.12.0", "model": model}))
        z.write(source, handler)
        if config is not None:
            z.writestr("model-config.yaml", config)
mar(sys.argv[1], "double", "double.py", sys.argv[2])
# Model settings as describe reports them (no request is sent to it: with useJobTicket a
# request right after registration depends on whether the worker already waits).
mar(sys.argv[1].replace("double.mar", "settings.mar"), "settings", "double.py", sys.argv[2],
    "minWorkers: 1\nmaxWorkers: 1\nclientTimeoutInMills: 5000\nuseJobTicket: true\n"
    "jobQueueSize: 7\nmaxRetryTimeoutInSec: 100\ndeviceType: cpu\ncontinuousBatching: false\n")
# A stateful model: two sequences at most, two requests waiting in each.
mar(sys.argv[1].replace("double.mar", "stateful.mar"), "stateful", "stateful.py", sys.argv[3],
    "minWorkers: 1\nmaxWorkers: 1\nbatchSize: 1\nsequenceBatching: true\n"
    "sequenceMaxIdleMSec: 600000\nmaxNumSequence: 2\nmaxSequenceJobQueueSize: 2\n")
# A streaming model (intermediate answers).
mar(sys.argv[1].replace("double.mar", "stream.mar"), "stream", "stream.py", sys.argv[4])
# The same handler without a manifest: TorchServe assumes a Python model.
with zipfile.ZipFile(sys.argv[1].replace("double.mar", "nomanifest.mar"), "w") as z:
    z.write(sys.argv[2], "double.py")
PY
# A .tar.gz archive from the real archiver (--archive-format tgz).
mkdir -p "$work/tgz"
"$(dirname "$PY")/torch-model-archiver" --model-name tgzdouble --version 1.0 \
  --handler "$fixtures/double.py" --archive-format tgz --export-path "$work/tgz" -f
for side in ts fs; do
  mkdir -p "$work/$side/store"
  cp model-store/sign.mar "$work/$side/store/"
  cp "$work"/*.war "$work"/*.mar "$work/tgz/tgzdouble.tar.gz" "$work/$side/store/"
done
config() {
  printf '%s\n' "inference_address=http://127.0.0.1:$1" "management_address=http://127.0.0.1:$2" \
    "metrics_address=http://127.0.0.1:$3" "model_store=$4" "load_models=sign.mar" \
    "grpc_inference_port=$(($1 + 10))" "grpc_management_port=$(($1 + 11))" \
    'models={"sign": {"1.0": {"minWorkers": 1, "maxWorkers": 1}}}'
}
config 18180 18181 18182 "$work/ts/store" > "$work/ts/config.properties"
config 28180 28181 28182 "$work/fs/store" > "$work/fs/config.properties"
(cd "$work/ts" && PATH="$(dirname "$PY"):$PATH" TORCH_DEVICE=cpu torchserve --start --ncs --disable-token-auth \
   --enable-model-api --model-store "$work/ts/store" --ts-config "$work/ts/config.properties" >/dev/null 2>&1)
(cd "$work/fs" && RUST_LOG=warn TMPDIR="$work/fs" exec "$bin" --foreground --ncs \
   --disable-token-auth --enable-model-api --python "$PY" --ts-config "$work/fs/config.properties" >/dev/null 2>&1) &
fpid=$!
for port in 18181 28181; do
  for _ in $(seq 600); do
    curl -s "http://127.0.0.1:$port/models/sign" | grep -q '"READY"' && break
    sleep 0.2
  done
done
status=0
echo "| request | TorchServe | ferroserve | |"
echo "|---|---|---|---|"
"$PY" tests/differential/compare.py http://127.0.0.1:18180 http://127.0.0.1:18181 \
  http://127.0.0.1:28180 http://127.0.0.1:28181 || status=$?
# TorchServe's workers use fixed socket names (/tmp/.ts.sock.9000...): the next TorchServe
# starts once this one has gone.
(cd "$work/ts" && PATH="$(dirname "$PY"):$PATH" torchserve --stop >/dev/null 2>&1) || true
for _ in $(seq 300); do
  curl -s -o /dev/null http://127.0.0.1:18181/models || break
  sleep 0.1
done
kill "$fpid" 2>/dev/null || true
wait "$fpid" 2>/dev/null || true
"$PY" tests/suite/run.py --server both --bin "$bin" --python "$PY" || status=$?
exit $status
