#!/usr/bin/env bash
# srun launcher behind slurm_train.sh and slurm_test.sh:
#   slurm_run.sh PARTITION JOB_NAME SCRIPT [script args]
# Environment: GPUS (total tasks, default 8), GPUS_PER_NODE (default 8),
# CPUS_PER_TASK (default 5), SRUN_ARGS (extra srun flags), DEVICE (gpu|cpu).
# With DEVICE=cpu no GPUs are requested and GPUS_PER_NODE tasks per node run
# on CPUs; GPUS_PER_NODE=0 also requests none (and packs all GPUS tasks).
# SIGNAL_TIME (default 120): seconds before the time limit at which the
# tasks get SIGUSR1, stop with a checkpoint and exit 75; the same command
# resumes (srun jobs cannot requeue themselves: see sbatch_example.sh).
set -euo pipefail
PARTITION=$1
JOB_NAME=$2
SCRIPT=$3
GPUS=${GPUS:-8}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
CPUS_PER_TASK=${CPUS_PER_TASK:-5}
SRUN_ARGS=${SRUN_ARGS:-}
DEVICE=${DEVICE:-gpu}

TASKS_PER_NODE=$GPUS_PER_NODE
GRES=(--gres="gpu:$GPUS_PER_NODE")
if [ "$DEVICE" = cpu ] || [ "$GPUS_PER_NODE" = 0 ]; then
  GRES=()
  if [ "$GPUS_PER_NODE" = 0 ]; then TASKS_PER_NODE=$GPUS; fi
fi

# shellcheck disable=SC2086  # SRUN_ARGS holds several flags
exec srun -p "$PARTITION" \
    --job-name="$JOB_NAME" \
    "${GRES[@]}" \
    --ntasks="$GPUS" \
    --ntasks-per-node="$TASKS_PER_NODE" \
    --cpus-per-task="$CPUS_PER_TASK" \
    --kill-on-bad-exit=1 \
    --signal="USR1@${SIGNAL_TIME:-120}" \
    $SRUN_ARGS \
    "${PYTHON:-python3}" -u "$SCRIPT" "${@:4}" --launcher slurm
