#!/usr/bin/env bash
# Batch training on Slurm: 2 nodes x 8 GPUs, one task per GPU.
#
#   sbatch tools/sbatch_example.sh [CONFIG] [train.py args]
#
# Submit from the repository root: the job starts in the submit directory.
# Options on the sbatch command line override the #SBATCH lines below, e.g.
# on one CPU node with two tasks:
#
#   sbatch --partition=cpu --nodes=1 --ntasks-per-node=2 --cpus-per-task=1 \
#       --gres=none tools/sbatch_example.sh CONFIG
#
#SBATCH --job-name=patchscale
#SBATCH --partition=gpu
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=8
#SBATCH --gres=gpu:8
#SBATCH --cpus-per-task=5
#SBATCH --time=3-00:00:00
#SBATCH --output=%x-%j.out
# Preemptible partitions and time limits: two minutes before the end Slurm
# sends SIGUSR1 to the tasks, which finish their iteration, write one
# checkpoint and requeue the job; the requeued job runs this script again,
# train.py resumes from the work dir and the log goes on in the same file.
#SBATCH --signal=USR1@120
#SBATCH --requeue
#SBATCH --open-mode=append
set -euo pipefail
CONFIG=${1:-configs/seg/adv_b_p2_linear_ade20k.py}

# srun starts every task of the allocation; train.py takes its rank from
# SLURM_PROCID and the master from the step's first node (--launcher slurm),
# with gloo when the nodes have no GPU. Slurm 22.05's srun does not inherit
# --cpus-per-task from sbatch, so pass it on. A failing task ends the job
# instead of leaving the others waiting for it.
srun --cpus-per-task="${SLURM_CPUS_PER_TASK:-1}" --kill-on-bad-exit=1 \
    "${PYTHON:-python}" -u tools/train.py "$CONFIG" "${@:2}" --launcher slurm
