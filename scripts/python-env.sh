#!/usr/bin/env bash
# Creates (once) the Python environment that runs TorchServe's own worker for custom Python
# handlers: torchserve 0.12.0 and what the bundled and test handlers need; for the tests,
# the model and workflow archivers (the tests' `.mar` and `.war` files) and grpcio (the
# differential check's gRPC client). Prints the interpreter's path.
# Cached under ~/.cache/ferroserve (FERROSERVE_DEPS_DIR); re-run when the requirement list
# below changes. torch 2.13 has wheels for Python 3.10 and later: the first such python3 on
# PATH makes the environment (macOS: the command line tools' python3 is 3.9, so Homebrew's or
# python.org's python3.12 is taken; FERROSERVE_BASE_PYTHON names one).
set -euo pipefail
DEPS_DIR="${FERROSERVE_DEPS_DIR:-$HOME/.cache/ferroserve/deps}"
VENV="$DEPS_DIR/python-torchserve-0.12.0"
REQUIREMENTS="torchserve==0.12.0 torch-model-archiver==0.12.0 torch-workflow-archiver==0.2.15 torch==2.13.0 torchvision==0.28.0 captum onnxruntime==1.31.1 numpy pyyaml grpcio==1.85.3 grpcio-tools==1.85.1"
# --requirements: print the list and make nothing (tests/platforms.rs resolves it for each
# platform).
if [ "${1:-}" = --requirements ]; then
  echo "$REQUIREMENTS"
  exit 0
fi
if [ "$(cat "$VENV/.complete" 2>/dev/null)" != "$REQUIREMENTS" ]; then
  echo "python-env: preparing $VENV ($REQUIREMENTS; once, a few GB)" >&2
  if [ ! -x "$VENV/bin/python" ]; then
    base=""
    for candidate in ${FERROSERVE_BASE_PYTHON:-} python3 python3.13 python3.12 python3.11 python3.10; do
      if command -v "$candidate" >/dev/null &&
        "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
        base=$candidate
        break
      fi
    done
    if [ -z "$base" ]; then
      echo "python-env: needs Python 3.10 or later (torch 2.13's wheels); macOS: brew install python@3.12" >&2
      exit 1
    fi
    "$base" -m venv --help >/dev/null 2>&1 || {
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    }
    "$base" -m venv "$VENV"
  fi
  # shellcheck disable=SC2086
  "$VENV/bin/pip" install -q --disable-pip-version-check $REQUIREMENTS >&2
  echo "$REQUIREMENTS" > "$VENV/.complete"
fi
echo "$VENV/bin/python"
