"""Slurm: the torch.distributed environment of a job step, and requeueing
a preempted batch job so that the same command resumes it."""
import os
import subprocess


def slurm_env_to_torch_env():
    """Sets RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT from Slurm's
    variables (those already set win); the first host of the job step runs
    rank 0 and is the master."""
    # The step's nodes, not the job's (SLURM_NODELIST): an srun inside a
    # larger sbatch allocation may run on a subset of them.
    nodes = os.environ.get('SLURM_STEP_NODELIST',
                           os.environ['SLURM_NODELIST'])
    if 'MASTER_ADDR' not in os.environ:
        first = subprocess.run(['scontrol', 'show', 'hostname', nodes],
                               check=True, capture_output=True,
                               text=True).stdout.split()[0]
        os.environ['MASTER_ADDR'] = first
    # One port per job, so that jobs sharing a node (CPU nodes, GPU nodes
    # split between jobs) do not collide; below Linux's ephemeral range.
    job_id = int(os.environ.get('SLURM_JOB_ID', 0))
    os.environ.setdefault('MASTER_PORT', str(15000 + job_id % 10000))
    os.environ['RANK'] = os.environ['SLURM_PROCID']
    os.environ['WORLD_SIZE'] = os.environ['SLURM_NTASKS']
    os.environ['LOCAL_RANK'] = os.environ.get('SLURM_LOCALID', '0')


def slurm_job_id():
    """The ID that scontrol takes for this job (an array task's own ID),
    or None outside Slurm."""
    array, task = (os.environ.get('SLURM_ARRAY_JOB_ID'),
                   os.environ.get('SLURM_ARRAY_TASK_ID'))
    if array and task:
        return f'{array}_{task}'
    return os.environ.get('SLURM_JOB_ID')


def requeue_slurm_job() -> str:
    """Requeues this Slurm batch job if Slurm allows it; returns what was
    done, as the end of a sentence ('' outside Slurm)."""
    job = slurm_job_id()
    if job is None:
        return ''
    try:
        shown = subprocess.run(['scontrol', 'show', 'job', '-o', job],
                               capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f'; Slurm job {job} not requeued ({e})'
    record = dict(field.split('=', 1) for field in shown.stdout.split()
                  if '=' in field)
    if record.get('BatchFlag') == '0':
        return (f'; Slurm job {job} was started by srun, which cannot be '
                'requeued (submit with sbatch --requeue)')
    if record.get('Requeue') != '1':
        return (f'; Slurm job {job} does not allow requeueing (submit with '
                'sbatch --requeue)')
    # Slurm ends this job's processes and queues it again; the checkpoint
    # is complete already.
    out = subprocess.run(['scontrol', 'requeue', job], capture_output=True,
                         text=True, timeout=60)
    if out.returncode != 0:
        return (f'; requeueing Slurm job {job} failed: '
                f'{(out.stderr or out.stdout).strip()}')
    return f'; Slurm job {job} requeued'
