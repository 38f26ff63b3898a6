#!/usr/bin/env bash
# Evaluation on Slurm: PARTITION JOB_NAME CONFIG CHECKPOINT [test.py args]
# (GPUS, GPUS_PER_NODE, CPUS_PER_TASK, SRUN_ARGS, DEVICE; see slurm_run.sh).
set -euo pipefail
TOOLS=$(cd "$(dirname "$0")" && pwd)
exec bash "$TOOLS/slurm_run.sh" "$1" "$2" "$TOOLS/test.py" "${@:3}"
