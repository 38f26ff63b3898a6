#!/usr/bin/env bash
# Distributed training: CONFIG GPUS [train.py args]
# (NNODES, NODE_RANK, MASTER_ADDR, PORT for several nodes; see dist_run.sh).
set -euo pipefail
TOOLS=$(cd "$(dirname "$0")" && pwd)
exec bash "$TOOLS/dist_run.sh" "$2" "$TOOLS/train.py" "$1" "${@:3}"
