#!/usr/bin/env bash
# Builds the container image (Dockerfile.torchserve) and proves it from outside, on a machine
# without a container daemon: buildah builds it (`--isolation chroot`) and runs its real
# entrypoint inside it, on the host's network, as UID 1000.
#
#   scripts/image-test.sh            both CPU variants: PYTHON_WORKER=false and true
#   VARIANTS=false scripts/image-test.sh   the native-only one alone
#
# Test scaffolding only, never part of the image: no registry is reachable here, so the base
# images the Dockerfile names (debian:bookworm-slim, rust:1-bookworm) are made locally once
# (debootstrap from Debian's mirror; the Rust toolchain of this machine placed where the
# official image keeps it) and carry this machine's CA bundle and pip settings, as a company
# CA would be. Results (checks, sizes, start times) go to stdout and $OUT (default
# target/image-test/report.md).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=${IMAGE_WORK:-/var/tmp/ferroserve-images}
OUT=${OUT:-$ROOT/target/image-test}
VARIANTS=${VARIANTS:-"false true"}
mkdir -p "$WORK" "$OUT"

missing=()
for tool in buildah debootstrap; do command -v "$tool" >/dev/null || missing+=("$tool"); done
command -v curl >/dev/null || missing+=(curl)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
export BUILDAH_ISOLATION=chroot

# ---- local stand-ins for the base images ------------------------------------------------
# A debootstrapped root with this machine's CAs and pip settings, committed under `name`.
make_base() {
  local name=$1 include=$2 root="$WORK/rootfs-$3"
  if buildah inspect --type image "$name" >/dev/null 2>&1; then return; fi
  echo "== making base image $name" >&2
  rm -rf "$root"
  debootstrap --variant=minbase ${include:+--include="$include"} bookworm "$root" \
    http://deb.debian.org/debian >"$WORK/debootstrap-$3.log" 2>&1
  mkdir -p "$root/usr/local/share/ca-certificates" "$root/etc/ssl/certs"
  cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/" 2>/dev/null || true
  cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
  [ -f /etc/pip.conf ] && cp /etc/pip.conf "$root/etc/pip.conf"
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  local ctr
  ctr=$(buildah from scratch)
  tar -C "$root" -cf "$WORK/$3.tar" .
  buildah add "$ctr" "$WORK/$3.tar" / >/dev/null
  rm -f "$WORK/$3.tar"
  buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --cmd bash "$ctr"
  if [ "$3" = rust ]; then
    local toolchain
    toolchain=$(readlink -f "$(rustc --print sysroot)")
    buildah run "$ctr" -- mkdir -p /usr/local/rustup/toolchains /usr/local/cargo/bin
    buildah copy "$ctr" "$toolchain" "/usr/local/rustup/toolchains/$(basename "$toolchain")" >/dev/null
    for bin in cargo rustc rustup rustdoc; do
      buildah copy "$ctr" "$HOME/.cargo/bin/$bin" /usr/local/cargo/bin/ >/dev/null
    done
    printf 'version = "12"\ndefault_toolchain = "%s"\nprofile = "minimal"\n' \
      "$(basename "$toolchain")" > "$WORK/settings.toml"
    buildah copy "$ctr" "$WORK/settings.toml" /usr/local/rustup/settings.toml >/dev/null
    buildah config --env RUSTUP_HOME=/usr/local/rustup --env CARGO_HOME=/usr/local/cargo \
      --env PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$ctr"
  fi
  buildah commit -q --rm "$ctr" "$name" >/dev/null
  rm -rf "$root"
}
make_base docker.io/library/debian:bookworm-slim "" slim
# The official rust image's build tools (buildpack-deps) that a Rust build with C parts needs.
make_base docker.io/library/rust:1-bookworm \
  ca-certificates,curl,git,gcc,g++,make,libc6-dev,pkg-config,python3 rust

# ---- the image, as a user builds it ------------------------------------------------------
tag() { [ "$1" = true ] && echo localhost/ferroserve:cpu || echo localhost/ferroserve:cpu-native; }
# PyTorch's own wheel index (the Dockerfile's CPU torch) is not reachable from here: the
# Python-worker variant gets PyPI's torch, the CUDA build with its NVIDIA wheels.
TORCH_INDEX=${TORCH_INDEX_URL:-https://pypi.org/simple}
for python in $VARIANTS; do
  echo "== building $(tag "$python") (VARIANT=cpu PYTHON_WORKER=$python)" >&2
  # docker format: OCI images drop SHELL and HEALTHCHECK.
  buildah bud --layers --format docker --isolation chroot -f Dockerfile.torchserve \
    --build-arg VARIANT=cpu --build-arg "PYTHON_WORKER=$python" \
    --build-arg "TORCH_INDEX_URL=$TORCH_INDEX" -t "$(tag "$python")" . >"$OUT/build-$python.log" 2>&1 \
    || { tail -40 "$OUT/build-$python.log" >&2; exit 1; }
done
[ "${BUILD_ONLY:-}" = 1 ] && exit 0

# ---- the image, started and checked from outside -----------------------------------------
PASS=0
FAIL=0
REPORT="$OUT/report.md"
: >"$REPORT"
: >"$OUT/checks.log"
check() { # description, then a command that must succeed
  local what=$1
  shift
  if "$@" >>"$OUT/checks.log" 2>&1; then
    PASS=$((PASS + 1)); echo "ok   $what" | tee -a "$REPORT" >&2
  else
    FAIL=$((FAIL + 1)); echo "FAIL $what" | tee -a "$REPORT" >&2
  fi
}
ports_free() { ! (exec 3<>/dev/tcp/127.0.0.1/8080) 2>/dev/null; }
wait_http() { # url, seconds: polls until it answers 200
  local deadline=$((SECONDS + $2))
  until curl -sf -o /dev/null "$1"; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.05
  done
}
# The sign model's expected answer for the bundled reference request.
python3 - "$OUT" <<'PY'
import json, math, sys
ref = json.load(open("tests/fixtures/sign_reference.json"))
case = next(c for c in ref["cases"] if c["seed"] == 0 and c["frames"] == 64)
frames = [[math.sin((f * 469 + j) * 0.001) * 0.5 for j in range(469)] for f in range(64)]
json.dump({"landmarks": frames}, open(f"{sys.argv[1]}/sign.json", "w"))
best = max(range(len(case["logits"])), key=lambda i: case["logits"][i])
open(f"{sys.argv[1]}/sign.label", "w").write(ref["labels"][str(best)])
PY
LABEL=$(cat "$OUT/sign.label")
predicts_sign() { # base url, model; $INFERENCE_KEY when token authorization is on
  curl -sf -H 'Content-Type: application/json' ${INFERENCE_KEY:+-H "Authorization: Bearer $INFERENCE_KEY"} \
    --data-binary "@$OUT/sign.json" "$1/predictions/$2" \
    | python3 -c "import json,sys; a=json.load(sys.stdin); sys.exit(a['predictions'][0]['label'] != sys.argv[1])" "$LABEL"
}
# The image's HEALTHCHECK command, run inside the container as Docker would.
healthcheck() { # image, container
  local -a cmd
  mapfile -t cmd < <(buildah inspect --type image "$1" | python3 -c '
import json, sys
test = json.load(sys.stdin)["Docker"]["config"]["Healthcheck"]["Test"]
assert test[0] == "CMD", test
print("\n".join(test[1:]))')
  buildah run --user 1000:1000 "$2" -- "${cmd[@]}"
}
# A token key from the key file the server wrote in the image's working directory.
key() { # container root, key kind
  python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]]['key'])" \
    "$1/home/model-server/key_file.json" "$2"
}
# A file as the running server sees it (in its own mount namespace and root).
server_file() { # path
  local pid
  pid=$(server_pid) && test -s "/proc/$pid/root$1"
}
server_pid() { pgrep -n -f -- "ferroserve --foreground"; }
# Stops the server with SIGTERM and waits for `buildah run` to return its exit status.
stop_with_sigterm() { # buildah-run pid
  local pid
  pid=$(server_pid) || return 1
  kill -TERM "$pid"
  wait "$1"
}

for python in $VARIANTS; do
  image=$(tag "$python")
  echo "== checking $image" >&2
  echo "### $image" >>"$REPORT"
  ports_free || { echo "port 8080 is taken: stop what listens there" >&2; exit 1; }
  ctr=$(buildah from "$image")
  mnt=$(buildah mount "$ctr")
  # The Python variant's store also holds a Python-handler archive (the model API is off by
  # default, as in TorchServe: the store is how it gets there).
  if [ "$python" = true ]; then
    cp examples/sign_py.mar "$mnt/home/model-server/model-store/"
  fi
  # The image's own start: entrypoint, default command, UID 1000, its config and model store.
  start=$(date +%s.%N)
  buildah run --user 1000:1000 "$ctr" -- /usr/local/bin/dockerd-entrypoint.sh \
    >"$OUT/serve-$python.log" 2>&1 &
  run=$!
  # The liveness route needs no token; the rest does, with the keys the server wrote.
  check "the server is up (/v2/health/live)" wait_http http://127.0.0.1:8080/v2/health/live 60
  up_s=$(python3 -c "import time; print(f'{time.time() - $start:.2f}')")
  INFERENCE_KEY=$(key "$mnt" inference)
  key=$(key "$mnt" management)
  check "/ping with the inference key answers Healthy" bash -c \
    "curl -sf -H 'Authorization: Bearer $INFERENCE_KEY' http://127.0.0.1:8080/ping | grep -q Healthy"
  echo "start to listening: $up_s s" | tee -a "$REPORT" >&2
  check "every start-up model ready" wait_http http://127.0.0.1:8080/v2/health/ready 120
  check "sign (native TorchScript) predicts the reference label" predicts_sign http://127.0.0.1:8080 sign
  check "sign_onnx (native ONNX) predicts the reference label" predicts_sign http://127.0.0.1:8080 sign_onnx
  check "management without the key is refused" bash -c \
    "[ \"\$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:8081/models)\" = 400 ]"
  check "management with the key from key_file.json lists the models" bash -c \
    "curl -sf -H 'Authorization: Bearer $key' http://127.0.0.1:8081/models | grep -q sign_onnx"
  check "/metrics answers (metrics_mode=log, the image's default: empty, as TorchServe)" \
    curl -sf -o /dev/null http://127.0.0.1:8082/metrics
  check "HEALTHCHECK as the image defines it" healthcheck "$image" "$ctr"
  if [ "$python" = false ]; then
    check "the native-only image has no Python" bash -c \
      "! buildah run '$ctr' -- bash -c 'command -v python3 || ls /usr/lib/python3*' >/dev/null 2>&1"
  fi
  if [ "$python" = true ]; then
    check "a Python-handler archive in the store predicts (TorchServe's Python worker)" \
      predicts_sign http://127.0.0.1:8080 sign_py
  fi
  check "SIGTERM drains and the container exits 0" stop_with_sigterm "$run"

  # KServe's runtime: `torchserve --start --model-store=... --ts-config=...`, its environment,
  # working directory /tmp, inference and management on one port.
  buildah run --user 0:0 "$ctr" -- bash -c 'mkdir -p /mnt/models/config && cp -r /home/model-server/model-store /mnt/models/ && chown -R 1000:1000 /mnt/models'
  printf '%s\n' 'enable_metrics_api=true' 'metrics_mode=prometheus' 'model_store=/mnt/models/model-store' \
    'load_models=all' 'disable_token_authorization=true' >"$mnt/mnt/models/config/config.properties"
  buildah run --user 1000:1000 --workingdir /tmp \
    --env TS_INFERENCE_ADDRESS=http://0.0.0.0:8080 --env TS_MANAGEMENT_ADDRESS=http://0.0.0.0:8080 \
    --env TS_METRICS_ADDRESS=http://0.0.0.0:8082 --env LOG_LOCATION=/tmp/logs --env METRICS_LOCATION=/tmp/logs \
    "$ctr" -- /usr/local/bin/dockerd-entrypoint.sh torchserve --start \
    --model-store=/mnt/models/model-store --ts-config=/mnt/models/config/config.properties \
    >"$OUT/kserve-$python.log" 2>&1 &
  run=$!
  check "KServe's torchserve --start command line serves (v1 predict route)" bash -c \
    "$(declare -f wait_http); wait_http http://127.0.0.1:8080/v2/health/ready 120 \
     && curl -sf -H 'Content-Type: application/json' --data-binary @$OUT/sign.json http://127.0.0.1:8080/predictions/sign >/dev/null"
  check "KServe's start: /metrics answers Prometheus text" bash -c \
    "curl -sf http://127.0.0.1:8082/metrics | grep -q '^# TYPE ts_inference_requests_total counter'"
  check "KServe's start: SIGTERM drains and exits 0" stop_with_sigterm "$run"

  # Sizes: uncompressed, and as a registry would ship it (an OCI archive, gzip).
  buildah umount "$ctr" >/dev/null
  buildah rm "$ctr" >/dev/null
  buildah push -q "$image" "oci-archive:$WORK/image.tar" >/dev/null
  size=$(buildah images --format '{{.Size}}' "$image" | head -1)
  shipped=$(gzip -1 -c "$WORK/image.tar" | wc -c)
  rm -f "$WORK/image.tar"
  echo "size: $size uncompressed, $((shipped / 1024 / 1024)) MiB as a gzip'd OCI archive" \
    | tee -a "$REPORT" >&2
done
# Kubernetes' readOnlyRootFilesystem (deploy/kubernetes/deployment.yaml), which `buildah run`
# cannot set: in a mount namespace of its own, the image's root is remounted read-only, the
# manifest's emptyDir volumes are tmpfs and its ConfigMap's file is mounted read-only; the
# entrypoint then runs chrooted as UID 1000 with the image's and the manifest's environment.
readonly_root() { # image
  local ctr mnt env_file
  ctr=$(buildah from "$1")
  mnt=$(buildah mount "$ctr")
  mkdir -p "$WORK/k8s" "$mnt/etc/ferroserve" "$mnt/home/model-server/work"
  rm -f "$WORK/k8s/"*
  python3 - "$WORK/k8s/config.properties" <<'PY'
import re, sys
text = open("deploy/kubernetes/configmap.yaml").read()
body = text.split("config.properties: |\n", 1)[1]
lines = [l[4:] for l in body.splitlines() if l.startswith("    ") or not l.strip()]
open(sys.argv[1], "w").write("\n".join(lines).strip() + "\n")
PY
  env_file="$WORK/k8s.env"
  buildah inspect --type image "$1" | python3 -c '
import json, sys
for e in json.load(sys.stdin)["Docker"]["config"]["Env"]:
    print(e)' >"$env_file"
  printf '%s\n' FERROSERVE_CONFIG=/etc/ferroserve/config.properties TORCH_DEVICE=cpu \
    LOG_LOCATION=/home/model-server/logs METRICS_LOCATION=/home/model-server/logs \
    TEMP=/home/model-server/tmp TMPDIR=/home/model-server/tmp HOME=/home/model-server >>"$env_file"
  # The namespace's script gets its values as arguments.
  # shellcheck disable=SC2016
  unshare -m --propagation private bash -c '
    set -e
    mnt=$1
    mount --bind "$mnt" "$mnt"
    mount -o remount,bind,ro "$mnt"
    for dir in tmp logs work; do mount -t tmpfs -o uid=1000,gid=1000 tmpfs "$mnt/home/model-server/$dir"; done
    mount --bind "$2" "$mnt/etc/ferroserve"
    mount -o remount,bind,ro "$mnt/etc/ferroserve"
    mount -t proc proc "$mnt/proc"
    mount --rbind /dev "$mnt/dev"
    if touch "$mnt/probe" 2>/dev/null; then echo "the root is writable" >&2; exit 1; fi
    exec env -i $(cat "$3") chroot --userspec=1000:1000 "$mnt"       bash -c "cd /home/model-server/work && exec /usr/local/bin/dockerd-entrypoint.sh serve"
  ' _ "$mnt" "$WORK/k8s" "$env_file" >"$OUT/readonly.log" 2>&1 &
  local run=$!
  check "read-only root: the server is up and its models ready" \
    wait_http http://127.0.0.1:8080/v2/health/ready 120
  check "read-only root: the key file is in the working directory (an emptyDir)" \
    server_file /home/model-server/work/key_file.json
  check "read-only root: /metrics in Prometheus text" bash -c \
    "curl -sf http://127.0.0.1:8082/metrics | grep -q '^# TYPE ts_inference_requests_total counter'"
  check "read-only root: SIGTERM drains and exits 0" stop_with_sigterm "$run"
  buildah umount "$ctr" >/dev/null
  buildah rm "$ctr" >/dev/null
}
if [ -n "$VARIANTS" ]; then
  echo "### read-only root filesystem ($(tag "${VARIANTS%% *}"))" >>"$REPORT"
  readonly_root "$(tag "${VARIANTS%% *}")"
fi

# The CUDA variant (CUDA=1), as far as it goes without a GPU: built, its libraries in place
# and resolvable, and the server, asked for CUDA, refusing it for want of a device.
if [ "${CUDA:-}" = 1 ]; then
  image=localhost/ferroserve:cuda-native
  echo "== building $image (VARIANT=cuda PYTHON_WORKER=false)" >&2
  echo "### $image" >>"$REPORT"
  buildah bud --layers --format docker --isolation chroot -f Dockerfile.torchserve \
    --build-arg VARIANT=cuda --build-arg PYTHON_WORKER=false -t "$image" . \
    >"$OUT/build-cuda.log" 2>&1 || { tail -40 "$OUT/build-cuda.log" >&2; exit 1; }
  ctr=$(buildah from "$image")
  check "the CUDA variant carries libtorch_cuda.so and onnxruntime-gpu" buildah run "$ctr" -- \
    test -f /opt/ferroserve/lib/cuda/libtorch_cuda.so -a -f /opt/ferroserve/lib/onnxruntime-gpu/libonnxruntime.so
  buildah run --user 1000:1000 --env TORCH_DEVICE=cuda "$ctr" -- /usr/local/bin/dockerd-entrypoint.sh \
    >"$OUT/serve-cuda.log" 2>&1 || true
  check "every library libtorch_cuda.so links resolves in the image (start.sh's library path)" \
    buildah run "$ctr" -- bash -c 'LD_LIBRARY_PATH=/opt/ferroserve/lib/cuda:/opt/ferroserve/lib \
      ldd /opt/ferroserve/lib/cuda/libtorch_cuda.so | grep -q "=>" && ! LD_LIBRARY_PATH=/opt/ferroserve/lib/cuda:/opt/ferroserve/lib \
      ldd /opt/ferroserve/lib/cuda/libtorch_cuda.so | grep -q "not found"'
  check "asked for CUDA without a GPU, start.sh points at the CUDA libraries and the server says no device is visible" \
    bash -c "grep -q 'FERROSERVE_LIBTORCH_CUDA=/opt/ferroserve/lib/cuda/libtorch_cuda.so' '$OUT/serve-cuda.log' \
      && grep -q 'cuda was requested but is not available: no CUDA device visible' '$OUT/serve-cuda.log'"
  buildah rm "$ctr" >/dev/null
  echo "size: $(buildah images --format '{{.Size}}' "$image" | head -1) uncompressed" | tee -a "$REPORT" >&2
fi
# The builds' untagged stage images (several GB a run) would fill the disk run after run; the
# tagged images stay, and the cargo and pip caches are cache mounts, kept apart.
buildah rmi --prune >/dev/null 2>&1 || true
echo "checks: $PASS passed, $FAIL failed" | tee -a "$REPORT" >&2
[ "$FAIL" -eq 0 ]
