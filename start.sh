#!/usr/bin/env bash
# Starts ferroserve on the bundled model store, picking the device first (as TorchServe's
# image entrypoint does): TORCH_DEVICE wins; otherwise CUDA when an NVIDIA GPU is visible,
# MPS on Apple Silicon macOS, else CPU. The server checks the choice and refuses an invalid
# or unavailable device with a clear error.
# Extra arguments go to the server (TorchServe's flags: --model-store, --ts-config, --models...).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

if [ -z "${TORCH_DEVICE:-}" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    TORCH_DEVICE=cuda
    echo "CUDA detected: $(nvidia-smi -L | wc -l) GPU(s)" >&2
  elif [ "$(uname -s)" = Darwin ] && [ "$(uname -m)" = arm64 ]; then
    TORCH_DEVICE=mps
    echo "MPS (Apple Silicon GPU) detected" >&2
  else
    TORCH_DEVICE=cpu
    [ -e /.dockerenv ] && [ "$(uname -m)" = aarch64 ] &&
      echo "Running in a Linux container on arm64: MPS is never visible inside containers, using CPU" >&2
    echo "No GPU detected, using CPU" >&2
  fi
fi
export TORCH_DEVICE

if command -v ferroserve >/dev/null 2>&1 && [ -z "${FERROSERVE_BUILD:-}" ]; then
  BIN=$(command -v ferroserve)
else
  . "$ROOT/scripts/env.sh"
  (cd "$ROOT" && cargo build --release --quiet)
  BIN="$CARGO_TARGET_DIR/release/ferroserve"
  # Custom Python handlers run in TorchServe's own worker, from this environment.
  set -- --python "$("$ROOT/scripts/python-env.sh")" "$@"
  cd "$ROOT"
fi
exec "$BIN" --foreground "$@"
