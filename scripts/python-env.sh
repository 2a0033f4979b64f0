#!/usr/bin/env bash
# Creates (once) the Python environment that runs TorchServe's own worker for custom Python
# handlers: torchserve 0.12.0 and what the bundled handlers need (torch, onnxruntime, numpy).
# Prints the interpreter's path. Cached under ~/.cache/ferroserve (FERROSERVE_DEPS_DIR).
set -euo pipefail
DEPS_DIR="${FERROSERVE_DEPS_DIR:-$HOME/.cache/ferroserve/deps}"
VENV="$DEPS_DIR/python-torchserve-0.12.0"
if [ ! -f "$VENV/.complete" ]; then
  echo "python-env: creating $VENV (torchserve 0.12.0, torch 2.13.0; once, a few GB)" >&2
  python3 -m venv --help >/dev/null 2>&1 || {
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
  }
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check \
    torchserve==0.12.0 torch==2.13.0 onnxruntime==1.31.1 numpy pyyaml >&2
  touch "$VENV/.complete"
fi
echo "$VENV/bin/python"
