#!/usr/bin/env bash
# torchrun launcher behind dist_train.sh and dist_test.sh:
#   dist_run.sh NPROC SCRIPT [script args]
# Multi-node: set NNODES, NODE_RANK, MASTER_ADDR and PORT on every node.
# Without GPUs, NPROC CPU processes train with gloo.
set -euo pipefail
NPROC=$1
SCRIPT=$2
exec "${PYTHON:-python3}" -m torch.distributed.run \
    --nnodes="${NNODES:-1}" \
    --node_rank="${NODE_RANK:-0}" \
    --master_addr="${MASTER_ADDR:-127.0.0.1}" \
    --master_port="${PORT:-29500}" \
    --nproc_per_node="$NPROC" \
    "$SCRIPT" "${@:3}" --launcher pytorch
