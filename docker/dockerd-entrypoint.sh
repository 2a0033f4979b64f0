#!/usr/bin/env bash
# Entrypoint of the container image, shaped like TorchServe's: `serve` (the default command)
# starts the server with the image's configuration and model store; anything else runs as
# given, e.g. `torchserve --start ...` as KServe's runtime passes it, or a shell.
#   FERROSERVE_CONFIG       configuration file (default /home/model-server/config.properties)
#   FERROSERVE_MODEL_STORE  model store (default /home/model-server/model-store)
# Arguments after `serve` go to the server (TorchServe's flags).
set -euo pipefail
here=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)

if [ $# -eq 0 ] || [ "$1" = serve ]; then
  [ $# -gt 0 ] && shift
  # exec: the server, not this shell, receives docker stop's SIGTERM and drains.
  exec "$here/start.sh" \
    --ts-config "${FERROSERVE_CONFIG:-/home/model-server/config.properties}" \
    --model-store "${FERROSERVE_MODEL_STORE:-/home/model-server/model-store}" \
    "$@"
fi
exec "$@"
