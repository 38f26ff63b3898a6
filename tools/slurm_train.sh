#!/usr/bin/env bash
# Training on Slurm: PARTITION JOB_NAME CONFIG [WORK_DIR] [train.py args]
# (GPUS, GPUS_PER_NODE, CPUS_PER_TASK, SRUN_ARGS, DEVICE; see slurm_run.sh).
set -euo pipefail
TOOLS=$(cd "$(dirname "$0")" && pwd)
PARTITION=$1
JOB_NAME=$2
CONFIG=$3
shift 3
if [ $# -gt 0 ] && [[ $1 != -* ]]; then
  set -- --work-dir "$1" "${@:2}"
fi
exec bash "$TOOLS/slurm_run.sh" "$PARTITION" "$JOB_NAME" "$TOOLS/train.py" \
    "$CONFIG" "$@"
