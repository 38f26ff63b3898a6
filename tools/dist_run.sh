#!/usr/bin/env bash
# torchrun launcher behind dist_train.sh and dist_test.sh:
#   dist_run.sh NPROC SCRIPT [script args]
# Multi-node: set NNODES, NODE_RANK, MASTER_ADDR and PORT on every node.
# Without GPUs, NPROC CPU processes train with gloo.
# MAX_RESTARTS (default 0): when a process dies, torchrun restarts the whole
# group up to this many times; train.py then resumes from the work dir's
# newest checkpoint.
set -euo pipefail
NPROC=$1
SCRIPT=$2
ADDR=${MASTER_ADDR:-127.0.0.1}
RDZV=(--node_rank="${NODE_RANK:-0}" --master_addr="$ADDR"
      --master_port="${PORT:-29500}")
if [ "${MAX_RESTARTS:-0}" != 0 ]; then
  # Restarted processes must not find their peers' addresses from before
  # the restart: the static rendezvous keeps one store for every round, and
  # so does c10d's unless the agent stops sharing its store with the
  # processes (then rank 0 serves a fresh store on a new port each round).
  RDZV=(--rdzv-backend=c10d --rdzv-endpoint="$ADDR:${PORT:-29500}"
        --rdzv-id="${RDZV_ID:-patchscale}")
  export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1
fi
exec "${PYTHON:-python3}" -m torch.distributed.run \
    --nnodes="${NNODES:-1}" \
    "${RDZV[@]}" \
    --nproc_per_node="$NPROC" \
    --max-restarts="${MAX_RESTARTS:-0}" \
    "$SCRIPT" "${@:3}" --launcher pytorch
