#!/usr/bin/env bash
# Distributed training: CONFIG GPUS [train.py args]
# (NNODES, NODE_RANK, MASTER_ADDR, PORT for several nodes; MAX_RESTARTS for
# torchrun to restart the processes after one dies, resuming from the last
# checkpoint; see dist_run.sh).
# The pre-flight checks run once here, so that a config that cannot run
# says why in one report instead of one per process.
set -euo pipefail
TOOLS=$(cd "$(dirname "$0")" && pwd)
LOCAL_WORLD_SIZE=$2 WORLD_SIZE=$(( ${NNODES:-1} * $2 )) \
  "${PYTHON:-python3}" "$TOOLS/train.py" "$1" "${@:3}" --preflight-only
exec bash "$TOOLS/dist_run.sh" "$2" "$TOOLS/train.py" "$1" "${@:3}"
