# shellcheck shell=bash
# Sourced by start.sh and scripts/test.sh: installs what a fresh Debian machine lacks and
# exports the build environment. Everything lands in stable, versioned paths outside the
# clone, so later runs (and CI) reuse it. On macOS (Apple Silicon) the tools come from Xcode's
# command line tools and rustup; what is missing is named, not installed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

missing=()
command -v unzip >/dev/null || missing+=(unzip)
command -v cc >/dev/null || missing+=(build-essential)
command -v curl >/dev/null || missing+=(curl)
command -v openssl >/dev/null || missing+=(openssl)
command -v python3 >/dev/null || missing+=(python3)
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(uname -s)" = Darwin ]; then
    echo "missing ${missing[*]}: xcode-select --install provides them" >&2
    exit 1
  fi
  echo "installing ${missing[*]} with apt-get" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null; then
  # shellcheck source=/dev/null
  [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
fi
command -v cargo >/dev/null || { echo "cargo (Rust toolchain) is required" >&2; exit 1; }

# A CUDA device also needs libtorch's CUDA libraries and onnxruntime-gpu.
deps_args=(--env)
case "${TORCH_DEVICE:-}" in cuda* | gpu) deps_args+=(--cuda) ;; esac
# Assigned first: a failure then stops here instead of vanishing inside eval.
deps_env=$("$ROOT/scripts/native-deps.sh" "${deps_args[@]}")
eval "$deps_env"
export LIBTORCH ORT_DYLIB_PATH
if [ -n "${FERROSERVE_LIBTORCH_CUDA:-}" ]; then export FERROSERVE_LIBTORCH_CUDA; fi
export CARGO_TARGET_DIR="${FERROSERVE_TARGET_DIR:-$HOME/.cache/ferroserve/target}"
