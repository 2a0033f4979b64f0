#!/usr/bin/env bash
# Runtime start script of the container image: picks the device, points the server at the
# image's GPU libraries when CUDA is chosen, then replaces itself with
# `ferroserve --foreground "$@"` (exec: the server gets the container's signals directly).
# Nothing is built here; the repository's ./start.sh is the development counterpart.
#
# TORCH_DEVICE (or DEVICE; FORCE_CPU=true wins): auto (default) | cpu | cuda | cuda:N | mps.
#   auto: CUDA when /dev/nvidia0 exists or `nvidia-smi -L` lists a GPU (and the image has the
#         CUDA libraries, VARIANT=cuda), else CPU.
#   mps:  Apple's GPU is never visible inside a Linux container, so this falls back to the
#         CPU with a warning instead of failing: the same compose file then works on Apple
#         silicon hosts. Run ferroserve natively on macOS to use MPS.
#   Other values go to the server unchanged; it refuses an invalid or unavailable device
#   with a clear error and a non-zero exit.
# FERROSERVE_BIN: the server binary (default: `ferroserve` on PATH).
# FERROSERVE_LIB_DIR: where the image keeps its native libraries (default /opt/ferroserve/lib).
set -euo pipefail

log() { printf 'start.sh: %s\n' "$*" >&2; }

BIN=${FERROSERVE_BIN:-ferroserve}
LIB_DIR=${FERROSERVE_LIB_DIR:-/opt/ferroserve/lib}

gpu_visible() {
  [ -e /dev/nvidia0 ] && return 0
  command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU '
}

cuda_libs() {
  [ -n "${FERROSERVE_LIBTORCH_CUDA:-}" ] || [ -f "$LIB_DIR/cuda/libtorch_cuda.so" ]
}

requested=${TORCH_DEVICE:-${DEVICE:-auto}}
case "${FORCE_CPU:-}" in [Tt][Rr][Uu][Ee] | 1) requested=cpu ;; esac
requested=$(printf '%s' "$requested" | tr '[:upper:]' '[:lower:]')

case "$requested" in
  auto | "")
    if gpu_visible && cuda_libs; then
      device=cuda
      log "NVIDIA GPU visible: using CUDA"
    elif gpu_visible; then
      device=cpu
      log "NVIDIA GPU visible but no CUDA libraries in this image (built with VARIANT=cpu): using CPU"
    else
      device=cpu
      log "no NVIDIA GPU visible: using CPU"
    fi
    ;;
  mps)
    if [ "$(uname -s)" = Darwin ]; then
      device=mps
    else
      log "MPS is not available in Linux containers: it exists only on macOS hosts (Apple silicon); falling back to CPU"
      device=cpu
    fi
    ;;
  *) device=$requested ;;
esac

case "$device" in
  cuda | cuda:* | gpu)
    # The CUDA variant keeps libtorch's CUDA libraries and onnxruntime-gpu apart from the CPU
    # ones; explicit settings win.
    cuda_dir=$LIB_DIR/cuda
    ort_gpu=$LIB_DIR/onnxruntime-gpu/libonnxruntime.so
    if [ -f "$cuda_dir/libtorch_cuda.so" ]; then
      : "${FERROSERVE_LIBTORCH_CUDA:=$cuda_dir/libtorch_cuda.so}"
      export FERROSERVE_LIBTORCH_CUDA
      # ONNX Runtime's CUDA provider loads cuBLAS and cuDNN by soname: the copies from the
      # NVIDIA wheels sit beside libtorch_cuda.so.
      export LD_LIBRARY_PATH="$cuda_dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    fi
    # The image's default ORT_DYLIB_PATH is the CPU build; swap it for the GPU build only then.
    if [ -f "$ort_gpu" ] && { [ -z "${ORT_DYLIB_PATH:-}" ] || [ "$ORT_DYLIB_PATH" = "$LIB_DIR/libonnxruntime.so" ]; }; then
      export ORT_DYLIB_PATH=$ort_gpu
    fi
    if [ -n "${FERROSERVE_LIBTORCH_CUDA:-}" ]; then
      log "CUDA libraries: FERROSERVE_LIBTORCH_CUDA=$FERROSERVE_LIBTORCH_CUDA ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-}"
    else
      log "no CUDA libraries in $LIB_DIR (an image built with VARIANT=cpu): the server will refuse $device"
    fi
    ;;
esac

export TORCH_DEVICE=$device
log "device: $device (requested: $requested)"

# --foreground is always given; --start is the default action. Dropped from the arguments so
# callers may repeat them (the server refuses a flag given twice).
args=()
for arg in "$@"; do
  case "$arg" in
    --foreground | --start) ;;
    *) args+=("$arg") ;;
  esac
done
exec "$BIN" --foreground ${args[@]+"${args[@]}"}
