#!/usr/bin/env bash
# Fetches the native runtimes ferroserve links against, from PyPI wheels only:
#   libtorch 2.13.0 (what tch 0.26 expects) and ONNX Runtime 1.31.1 (what ort 2.0.0-rc.15 expects).
# Idempotent: a finished install leaves a .complete marker holding the plan it followed, and is
# fetched again only when the plan changes.
# Paths are stable and carry the version, so torch-sys' C++ glue is not rebuilt needlessly.
#
# Platforms: linux-x86_64, linux-aarch64 and macos-arm64 (Apple Silicon), from `uname`;
# FERROSERVE_PLATFORM names another, to fetch or plan for it from any host. What each takes
# from which wheel is set in one place (select_platform); tests/platforms.rs checks it against
# the real wheels' contents (tests/fixtures/wheels/, recorded by tests/wheels_record.py).
# Written for bash 3.2 too (macOS's): no associative arrays, no mapfile.
#
# Usage: scripts/native-deps.sh [--cuda] [--env] [--plan]
#   --cuda  also fetch libtorch's CUDA libraries (libtorch_cuda.so and the NVIDIA runtime
#           wheels, about 3 GB) and onnxruntime-gpu, for GPU hosts (Linux only)
#   --env   print `export` lines for the build and the server
#   --plan  fetch nothing: print the platform's wheels and the files taken from each
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

host_platform() {
  case "$(uname -s)-$(uname -m)" in
    Linux-x86_64) echo linux-x86_64 ;;
    Linux-aarch64 | Linux-arm64) echo linux-aarch64 ;;
    Darwin-arm64) echo macos-arm64 ;;
    *) log "no libtorch wheel on PyPI for $(uname -s) $(uname -m) (linux-x86_64, linux-aarch64, macos-arm64)"; exit 1 ;;
  esac
}

# Sets, for platform $1: PIP_PLATFORMS (the wheel tags it accepts), TORCH_LIBS (torch/lib/
# files libtorch_cpu needs: itself, its NEEDED libraries and theirs), CUDA_RUNTIME ("wheel
# spec:member" of the CUDA runtime libraries Linux's libtorch_cpu needs even without a GPU),
# ORT_MEMBERS (from onnxruntime/capi/), ORT_LIBRARY and ORT_LINK (the name the server loads),
# DROP_NEEDED ("library:needed" entries patchelf removes, see install_libtorch).
select_platform() {
  case "$1" in
    linux-x86_64 | linux-aarch64)
      local arch=${1#linux-}
      # Every manylinux tag a glibc 2.28 host takes (pip download does not widen --platform).
      PIP_PLATFORMS=""
      local glibc
      for glibc in 28 27 26 25 24 23 22 21 20 19 18 17; do
        PIP_PLATFORMS="$PIP_PLATFORMS manylinux_2_${glibc}_$arch"
      done
      TORCH_LIBS="libtorch_cpu.so libc10.so libtorch.so libgomp.so.1"
      # aarch64's libtorch_cpu uses the Arm Compute Library and NVPL BLAS/LAPACK of the wheel.
      if [ "$arch" = aarch64 ]; then
        TORCH_LIBS="$TORCH_LIBS libarm_compute.so libarm_compute_graph.so libnvpl_blas_core.so.0
          libnvpl_blas_lp64_gomp.so.0 libnvpl_lapack_core.so.0 libnvpl_lapack_lp64_gomp.so.0"
      fi
      CUDA_RUNTIME="nvidia-cuda-runtime==$CUDART_VERSION:nvidia/cu13/lib/libcudart.so.13
        nvidia-cuda-cupti==$CUPTI_VERSION:nvidia/cu13/lib/libcupti.so.13"
      ORT_LIBRARY="libonnxruntime.so.$ORT_VERSION"
      ORT_MEMBERS="$ORT_LIBRARY libonnxruntime_providers_shared.so"
      ORT_LINK=libonnxruntime.so
      DROP_NEEDED="libtorch.so:libtorch_cuda.so"
      ;;
    macos-arm64)
      # One wheel tag: PyPI's torch for macOS is built for macOS 14 and later.
      PIP_PLATFORMS="macosx_14_0_arm64"
      TORCH_LIBS="libtorch_cpu.dylib libc10.dylib libtorch.dylib libomp.dylib"
      CUDA_RUNTIME=""
      ORT_LIBRARY="libonnxruntime.$ORT_VERSION.dylib"
      ORT_MEMBERS="$ORT_LIBRARY"
      ORT_LINK=libonnxruntime.dylib
      DROP_NEEDED=""
      ;;
    *) log "unknown platform $1 (linux-x86_64, linux-aarch64, macos-arm64)"; exit 2 ;;
  esac
}

need_tools() {
  local missing=()
  command -v unzip >/dev/null || missing+=(unzip)
  [ -z "$DROP_NEEDED" ] || command -v patchelf >/dev/null || missing+=(patchelf)
  command -v "$PYTHON" >/dev/null || missing+=(python3)
  "$PYTHON" -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
  if [ ${#missing[@]} -gt 0 ]; then
    if ! command -v apt-get >/dev/null; then
      log "missing ${missing[*]}: install them (macOS: xcode-select --install; python3 from python.org or Homebrew)"
      exit 1
    fi
    log "installing ${missing[*]} with apt-get"
    apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# pip download of one wheel for the platform (no dependencies, binary only) into $1. The
# wheel's Python tag does not matter (only its native libraries are used), so the fetch does
# not depend on the local Python's version.
wheel() {
  local dest=$1 spec=$2 tags=() tag
  for tag in $PIP_PLATFORMS; do tags+=(--platform "$tag"); done
  "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    "${tags[@]}" -d "$dest" "$spec" >&2
  local found=("$dest"/*.whl)
  echo "${found[0]}"
}

plan() {
  local lib spec
  echo "platform $PLATFORM"
  echo "wheel torch==$TORCH_VERSION torch/include/"
  for lib in $TORCH_LIBS; do echo "wheel torch==$TORCH_VERSION torch/lib/$lib"; done
  for spec in $CUDA_RUNTIME; do echo "wheel ${spec%%:*} ${spec#*:}"; done
  for lib in $ORT_MEMBERS; do echo "wheel onnxruntime==$ORT_VERSION onnxruntime/capi/$lib"; done
  echo "link $ORT_LINK $ORT_LIBRARY"
  for spec in $DROP_NEEDED; do echo "drop-needed ${spec%%:*} ${spec#*:}"; done
}

# Whether DIR holds a finished install of the current plan.
installed() { [ "$(cat "$1/.complete" 2>/dev/null)" = "$PLAN" ]; }

install_libtorch() {
  installed "$LIBTORCH_DIR" && return
  log "fetching libtorch $TORCH_VERSION for $PLATFORM from the torch wheel (once)"
  local tmp; tmp=$(mktemp -d); trap 'rm -rf "$tmp"' RETURN
  rm -rf "$LIBTORCH_DIR"; mkdir -p "$LIBTORCH_DIR/lib"
  local whl members=() lib spec member
  whl=$(wheel "$tmp/torch" "torch==$TORCH_VERSION")
  for lib in $TORCH_LIBS; do members+=("torch/lib/$lib"); done
  unzip -q "$whl" 'torch/include/*' "${members[@]}" -d "$tmp/x"
  mv "$tmp/x/torch/include" "$LIBTORCH_DIR/include"
  mv "$tmp/x/torch/lib/"* "$LIBTORCH_DIR/lib/"
  # Linux's libtorch_cpu needs the CUDA runtime and CUPTI even on CPU-only hosts (DT_NEEDED).
  for spec in $CUDA_RUNTIME; do
    member=${spec#*:}
    whl=$(wheel "$tmp/$(basename "$member")" "${spec%%:*}")
    unzip -q -o -j "$whl" "$member" -d "$LIBTORCH_DIR/lib"
  done
  # Linux's libtorch.so names libtorch_cuda.so, absent from a CPU install. The binary links
  # libtorch.so where it defines symbols the C++ glue uses (aarch64's exports libstdc++ string
  # streams), and the loader would then refuse to start; CUDA is loaded by the server itself
  # when asked for (src/device.rs), so the name is dropped.
  for spec in $DROP_NEEDED; do
    patchelf --remove-needed "${spec#*:}" "$LIBTORCH_DIR/lib/${spec%%:*}"
  done
  echo "$TORCH_VERSION" > "$LIBTORCH_DIR/build-version"
  echo "$PLAN" > "$LIBTORCH_DIR/.complete"
  log "libtorch ready in $LIBTORCH_DIR"
}

# ONNX Runtime's shared library from a wheel: install_onnxruntime PACKAGE DIR MEMBER...
# (onnxruntime for the CPU, onnxruntime-gpu for CUDA hosts; members of onnxruntime/capi/).
install_onnxruntime() {
  local package=$1 dir=$2; shift 2
  installed "$dir" && return
  log "fetching $package $ORT_VERSION for $PLATFORM"
  local tmp; tmp=$(mktemp -d); trap 'rm -rf "$tmp"' RETURN
  rm -rf "$dir"; mkdir -p "$dir/lib"
  local whl members=() member
  whl=$(wheel "$tmp/ort" "$package==$ORT_VERSION")
  for member in "$@"; do members+=("onnxruntime/capi/$member"); done
  unzip -q -o -j "$whl" "${members[@]}" -d "$dir/lib"
  ln -sf "$ORT_LIBRARY" "$dir/lib/$ORT_LINK"
  echo "$PLAN" > "$dir/.complete"
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

cuda=false env=false plan=false
for arg in "$@"; do
  case "$arg" in
    --cuda) cuda=true ;;
    --env) env=true ;;
    --plan) plan=true ;;
    *) log "unknown argument $arg"; exit 2 ;;
  esac
done

PLATFORM=${FERROSERVE_PLATFORM:-$(host_platform)}
select_platform "$PLATFORM"
PLAN=$(plan)
if $plan; then
  echo "$PLAN"
  exit 0
fi
if $cuda && [ "${PLATFORM%%-*}" != linux ]; then
  log "--cuda: CUDA is for Linux hosts; $PLATFORM has none (macOS uses MPS through the CPU libraries)"
  exit 2
fi

need_tools
install_libtorch
# shellcheck disable=SC2086 # one argument per member
install_onnxruntime onnxruntime "$ORT_DIR" $ORT_MEMBERS
if $cuda; then
  install_libtorch_cuda
  # Every library of the GPU wheel: its CUDA provider comes with the shared-provider library.
  install_onnxruntime onnxruntime-gpu "$ORT_GPU_DIR" 'libonnxruntime*'
fi

if $env; then
  echo "export LIBTORCH='$LIBTORCH_DIR'"
  if $cuda; then
    echo "export FERROSERVE_LIBTORCH_CUDA='$CUDA_DIR/lib/libtorch_cuda.so'"
    echo "export ORT_DYLIB_PATH='$ORT_GPU_DIR/lib/$ORT_LINK'"
  else
    echo "export ORT_DYLIB_PATH='$ORT_DIR/lib/$ORT_LINK'"
  fi
fi
