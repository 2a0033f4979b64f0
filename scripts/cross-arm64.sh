#!/usr/bin/env bash
# Builds ferroserve for Linux arm64 (aarch64) on an x86_64 Debian host and serves the bundled
# models with it under QEMU's user-mode emulation, checking the answers against torch's
# (tests/fixtures/sign_reference.json). The arm64 libtorch and ONNX Runtime are the ones the
# arm64 image and an arm64 host use: scripts/native-deps.sh for FERROSERVE_PLATFORM=linux-aarch64.
# Debian's cross compiler and qemu-user are installed when missing.
#
#   scripts/cross-arm64.sh          build (debug profile), serve, check; the test command runs it
# An assertion that fails stops the script with the server's log.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TARGET=aarch64-unknown-linux-gnu
SYSROOT=/usr/aarch64-linux-gnu

missing=()
command -v aarch64-linux-gnu-g++ >/dev/null || missing+=(g++-aarch64-linux-gnu)
command -v qemu-aarch64 >/dev/null || missing+=(qemu-user)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]} with apt-get" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# shellcheck source=scripts/env.sh
. scripts/env.sh
rustup target list --installed | grep -qx "$TARGET" || rustup target add "$TARGET"

# The arm64 libraries, in a directory of their own beside the host's.
DEPS="${FERROSERVE_DEPS_DIR:-$HOME/.cache/ferroserve/deps}/platforms/linux-aarch64"
arm_env=$(FERROSERVE_PLATFORM=linux-aarch64 FERROSERVE_DEPS_DIR="$DEPS" scripts/native-deps.sh --env)
eval "$arm_env"

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export CXX_aarch64_unknown_linux_gnu=aarch64-linux-gnu-g++
export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
echo "== building ferroserve for $TARGET against $LIBTORCH" >&2
start=$(date +%s)
cargo build --quiet --target "$TARGET" --bin ferroserve
echo "   built in $(( $(date +%s) - start )) s" >&2
BIN="$CARGO_TARGET_DIR/$TARGET/debug/ferroserve"
file -b "$BIN" 2>/dev/null | sed 's/^/   /' >&2 || true

work=$(mktemp -d)
server=""
cleanup() {
  local status=$?
  if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
  if [ "$status" != 0 ] && [ -f "$work/server.log" ]; then
    echo "== the arm64 server's log" >&2
    tail -n 40 "$work/server.log" >&2
  fi
  rm -rf "$work"
}
trap cleanup EXIT
read -r p1 p2 p3 p4 p5 < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(5)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])')
cat > "$work/config.properties" <<EOF
inference_address=http://127.0.0.1:$p1
management_address=http://127.0.0.1:$p2
metrics_address=http://127.0.0.1:$p3
grpc_inference_port=$p4
grpc_management_port=$p5
model_store=$ROOT/model-store
load_models=all
disable_token_authorization=true
onnxruntime_library=$ORT_DYLIB_PATH
EOF
# The guest's root: Debian's arm64 libraries, and an arm64 /proc/cpuinfo (a Neoverse N1, as
# Graviton 2). qemu-user 7.2 shows the guest the host's x86 /proc/cpuinfo, on which pytorch's
# cpuinfo library crashes at the first operator; -L serves files under it first.
mkdir -p "$work/root/proc"
ln -s "$SYSROOT/lib" "$work/root/lib"
for cpu in 0 1; do
  printf 'processor\t: %s\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x3\nCPU part\t: 0xd0c\nCPU revision\t: 1\n\n' "$cpu"
done >"$work/root/proc/cpuinfo"
echo "== serving model-store/ with the arm64 binary under qemu-aarch64 (Neoverse N1)" >&2
start=$(date +%s)
# In the work directory: the server writes its logs and snapshots under its working directory.
(cd "$work" && exec qemu-aarch64 -cpu neoverse-n1 -L "$work/root" "$BIN" --foreground \
  --ts-config "$work/config.properties" >"$work/server.log" 2>&1) &
server=$!
# The listeners open first and the start-up models load behind them (emulated, slowly):
# wait until every model is ready, failing loudly.
ready=false
for _ in $(seq 600); do
  if curl -sf "http://127.0.0.1:$p1/v2/health/ready" >/dev/null; then ready=true; break; fi
  kill -0 "$server" 2>/dev/null || { echo "the arm64 server exited" >&2; exit 1; }
  sleep 1
done
$ready || { echo "models not ready within 600 s" >&2; exit 1; }
echo "   models ready $(( $(date +%s) - start )) s after start" >&2

python3 - "$p1" "$ROOT/tests/fixtures/sign_reference.json" <<'EOF'
import json, math, struct, sys, urllib.request
port, reference = sys.argv[1], json.load(open(sys.argv[2]))
features, labels = reference["features"], reference["labels"]

def frames(seed, count):
    f32 = lambda v: struct.unpack("f", struct.pack("f", v))[0]
    return [[f32(math.sin((f * features + j) * 0.001 * (seed + 1) + seed) * 0.5)
             for j in range(features)] for f in range(count)]

worst, answers = 0.0, 0
for model in ("sign", "sign_onnx"):
    for case in reference["cases"]:
        rows = frames(case["seed"], case["frames"])
        if case["format"] == "points":
            rows = [[row[i:i + 3] for i in range(0, features, 3)] for row in rows]
        body = json.dumps({"landmarks": rows, "topk": reference["classes"]}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/predictions/{model}", body,
                                     {"Content-Type": "application/json"})
        answer = json.load(urllib.request.urlopen(req, timeout=600))
        got = {p["label"]: p["confidence"] for p in answer["predictions"]}
        logits = case["logits"]
        order = sorted(range(len(logits)), key=lambda c: -logits[c])
        top = [p["label"] for p in answer["predictions"][:5]]
        assert top == [labels[str(c)] for c in order[:5]], (model, case["seed"], top)
        shift = logits[order[0]] - math.log(got[labels[str(order[0])]])
        error = max(abs(math.log(got[labels[str(c)]]) + shift - logits[c]) / max(1.0, abs(logits[c]))
                    for c in range(len(logits)))
        assert error < 1e-4, (model, case["seed"], error)
        worst, answers = max(worst, error), answers + 1
        print(f"   {model} seed {case['seed']} ({case['frames']} frames, {case['format']}): "
              f"top-5 as torch, logits within {error:.1e} relative; device {answer.get('device')}",
              file=sys.stderr)
print(f"arm64: {answers} passed, 0 failed (answers under qemu equal torch's reference; "
      f"worst logit error {worst:.1e})")
EOF
grep -E "device selected|loaded|handler chosen" "$work/server.log" | sed 's/^/   /' | head -6 >&2
