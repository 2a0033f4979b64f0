#!/usr/bin/env bash
# Fetches the native runtimes ferroserve links against, from PyPI wheels only:
#   libtorch 2.13.0 (what tch 0.26 expects) and ONNX Runtime 1.31.1 (what ort 2.0.0-rc.15 expects).
# Idempotent: a finished install leaves a .complete marker and is never fetched again.
# Paths are stable and carry the version, so torch-sys' C++ glue is not rebuilt needlessly.
#
# Usage: scripts/native-deps.sh [--cuda] [--env]
#   --cuda  also fetch libtorch's CUDA libraries (libtorch_cuda.so and the NVIDIA runtime
#           wheels, about 3 GB) and onnxruntime-gpu, for GPU hosts
#   --env   print `export` lines for the build and the server
set -euo pipefail

TORCH_VERSION=2.13.0
CUDART_VERSION=13.0.96
CUPTI_VERSION=13.0.85
ORT_VERSION=1.31.1

DEPS_DIR="${FERROSERVE_DEPS_DIR:-$HOME/.cache/ferroserve/deps}"
LIBTORCH_DIR="$DEPS_DIR/libtorch-$TORCH_VERSION"
ORT_DIR="$DEPS_DIR/onnxruntime-$ORT_VERSION"
CUDA_DIR="$DEPS_DIR/libtorch-$TORCH_VERSION-cuda"
ORT_GPU_DIR="$DEPS_DIR/onnxruntime-gpu-$ORT_VERSION"
PYTHON="${PYTHON:-python3}"

log() { printf 'native-deps: %s\n' "$*" >&2; }

need_tools() {
  local missing=()
  command -v unzip >/dev/null || missing+=(unzip)
  command -v "$PYTHON" >/dev/null || missing+=(python3)
  "$PYTHON" -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]} with apt-get"
    apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# pip download of one wheel (no dependencies, binary only) into $1.
wheel() {
  local dest=$1 spec=$2
  "$PYTHON" -m pip download -q --no-deps --only-binary=:all: -d "$dest" "$spec" >&2
  ls "$dest"/*.whl | head -n1
}

install_libtorch() {
  [ -f "$LIBTORCH_DIR/.complete" ] && return
  log "fetching libtorch $TORCH_VERSION from the torch wheel (about 530 MB, once)"
  local tmp; tmp=$(mktemp -d); trap 'rm -rf "$tmp"' RETURN
  rm -rf "$LIBTORCH_DIR"; mkdir -p "$LIBTORCH_DIR/lib"
  local whl; whl=$(wheel "$tmp/torch" "torch==$TORCH_VERSION")
  unzip -q "$whl" 'torch/include/*' 'torch/lib/libtorch_cpu.so' 'torch/lib/libc10.so' \
    'torch/lib/libgomp*' 'torch/lib/libtorch.so' -d "$tmp/x"
  mv "$tmp/x/torch/include" "$LIBTORCH_DIR/include"
  mv "$tmp/x/torch/lib/"* "$LIBTORCH_DIR/lib/"
  # libtorch_cpu needs the CUDA runtime and CUPTI even on CPU-only hosts (DT_NEEDED).
  local spec lib
  for spec in "nvidia-cuda-runtime==$CUDART_VERSION:libcudart" "nvidia-cuda-cupti==$CUPTI_VERSION:libcupti"; do
    lib=${spec##*:}; spec=${spec%:*}
    whl=$(wheel "$tmp/$lib" "$spec")
    unzip -q -o "$whl" "*/$lib.so*" -d "$tmp/$lib/x"
    find "$tmp/$lib/x" -name '*.so*' -type f -exec mv {} "$LIBTORCH_DIR/lib/" \;
  done
  echo "$TORCH_VERSION" > "$LIBTORCH_DIR/build-version"
  touch "$LIBTORCH_DIR/.complete"
  log "libtorch ready in $LIBTORCH_DIR"
}

# ONNX Runtime's shared library from a wheel: install_onnxruntime PACKAGE DIR
# (onnxruntime for the CPU, onnxruntime-gpu for CUDA hosts).
install_onnxruntime() {
  local package=$1 dir=$2
  [ -f "$dir/.complete" ] && return
  log "fetching $package $ORT_VERSION"
  local tmp; tmp=$(mktemp -d); trap 'rm -rf "$tmp"' RETURN
  rm -rf "$dir"; mkdir -p "$dir/lib"
  local whl; whl=$(wheel "$tmp/ort" "$package==$ORT_VERSION")
  unzip -q "$whl" 'onnxruntime/capi/libonnxruntime*' -d "$tmp/x"
  mv "$tmp/x/onnxruntime/capi/"libonnxruntime* "$dir/lib/"
  ln -sf "libonnxruntime.so.$ORT_VERSION" "$dir/lib/libonnxruntime.so"
  touch "$dir/.complete"
  log "$package ready in $dir"
}

# libtorch_cuda.so and everything it needs, flattened into one directory: its run path
# ($ORIGIN) then finds them. Kept apart from the CPU libraries so CPU builds never link them;
# the server loads libtorch_cuda.so at start when a GPU is requested (src/device.rs).
install_libtorch_cuda() {
  [ -f "$CUDA_DIR/.complete" ] && return
  log "fetching libtorch $TORCH_VERSION CUDA libraries and their NVIDIA wheels (about 3 GB, once)"
  local tmp; tmp=$(mktemp -d); trap 'rm -rf "$tmp"' RETURN
  rm -rf "$CUDA_DIR"; mkdir -p "$CUDA_DIR/lib"
  "$PYTHON" -m pip download -q --only-binary=:all: -d "$tmp/w" "torch==$TORCH_VERSION" >&2
  # Every torch library but the CPU ones the binary already links.
  unzip -q "$tmp"/w/torch-*.whl 'torch/lib/*.so*' -x 'torch/lib/libtorch_cpu.so' \
    'torch/lib/libc10.so' 'torch/lib/libtorch.so' 'torch/lib/libgomp*' 'torch/lib/libtorch_python.so' \
    'torch/lib/libshm*' -d "$tmp/x"
  local whl
  for whl in "$tmp"/w/nvidia_*.whl; do
    unzip -q -o "$whl" '*.so*' -d "$tmp/x" || true
  done
  find "$tmp/x" -name '*.so*' -type f -exec mv {} "$CUDA_DIR/lib/" \;
  [ -f "$CUDA_DIR/lib/libtorch_cuda.so" ] || { log "libtorch_cuda.so missing from the torch wheel"; exit 1; }
  touch "$CUDA_DIR/.complete"
  log "libtorch CUDA libraries ready in $CUDA_DIR"
}

cuda=false env=false
for arg in "$@"; do
  case "$arg" in
    --cuda) cuda=true ;;
    --env) env=true ;;
    *) log "unknown argument $arg"; exit 2 ;;
  esac
done

need_tools
install_libtorch
install_onnxruntime onnxruntime "$ORT_DIR"
if $cuda; then
  install_libtorch_cuda
  install_onnxruntime onnxruntime-gpu "$ORT_GPU_DIR"
fi

if $env; then
  echo "export LIBTORCH='$LIBTORCH_DIR'"
  if $cuda; then
    echo "export FERROSERVE_LIBTORCH_CUDA='$CUDA_DIR/lib/libtorch_cuda.so'"
    echo "export ORT_DYLIB_PATH='$ORT_GPU_DIR/lib/libonnxruntime.so'"
  else
    echo "export ORT_DYLIB_PATH='$ORT_DIR/lib/libonnxruntime.so'"
  fi
fi
