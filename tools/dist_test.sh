#!/usr/bin/env bash
# Distributed evaluation: CONFIG CHECKPOINT GPUS [test.py args]
# (NNODES, NODE_RANK, MASTER_ADDR, PORT for several nodes; see dist_run.sh).
set -euo pipefail
TOOLS=$(cd "$(dirname "$0")" && pwd)
exec bash "$TOOLS/dist_run.sh" "$3" "$TOOLS/test.py" "$1" "$2" "${@:4}"
