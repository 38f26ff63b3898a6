"""What tools/train.py and tools/test.py share: CLI options applied to a
config, distributed runs on machines without a GPU, Slurm requeueing and
the heartbeat that names a rank that stops answering.

MMEngine 0.10 assumes GPUs when distributed: its launchers call
``torch.cuda.set_device`` and the Runner wraps the model in DDP with
``device_ids=[local_rank]``. The Runner skips its own initialisation when a
process group already exists, so on CPU we start a gloo group ourselves and
adapt the config (no device ids, no SyncBN).
"""
import datetime
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch
import torch.distributed as dist
from mmengine.config import Config, ConfigDict


def apply_cli_options(cfg: Config, args, default_work_dir: str) -> Config:
    """Merges ``--cfg-options`` and picks the work dir the OpenMMLab way:
    command line > config > ``work_dirs/<config stem>``."""
    if getattr(args, 'cfg_options', None):
        cfg.merge_from_dict(args.cfg_options)
    if getattr(args, 'work_dir', None):
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = str(Path('work_dirs') / default_work_dir)
    cfg.launcher = args.launcher
    return cfg


def _slurm_env_to_torch_env():
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


def _replace_sync_bn(node):
    """SyncBN has no CPU implementation: use plain BN in every norm config."""
    if isinstance(node, dict):
        if node.get('type') == 'SyncBN':
            node['type'] = 'BN'
        for value in node.values():
            _replace_sync_bn(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            _replace_sync_bn(value)


def init_cpu_distributed(cfg: Config) -> bool:
    """Starts a gloo process group for a distributed run without CUDA and
    adapts ``cfg`` to it. Returns whether it did; GPU runs are left to
    MMEngine."""
    if cfg.launcher == 'none' or torch.cuda.is_available():
        return False
    if cfg.launcher == 'slurm':
        _slurm_env_to_torch_env()
    elif cfg.launcher != 'pytorch':
        raise ValueError(f'launcher {cfg.launcher!r} is not supported '
                         'without a GPU; use pytorch or slurm')
    if not dist.is_initialized():
        # A lost node otherwise leaves the others waiting in a collective
        # for torch's default 30 minutes.
        timeout = collective_timeout()
        dist.init_process_group(
            backend='gloo',
            rank=int(os.environ['RANK']),
            world_size=int(os.environ['WORLD_SIZE']),
            timeout=datetime.timedelta(seconds=timeout))
    cfg.env_cfg = cfg.get('env_cfg', ConfigDict())
    cfg.env_cfg.dist_cfg = dict(backend='gloo')
    wrapper = dict(cfg.get('model_wrapper_cfg') or {})
    wrapper.setdefault('type', 'MMDistributedDataParallel')
    wrapper['device_ids'] = None  # CPU modules take no device ids
    wrapper.setdefault('broadcast_buffers', False)
    wrapper.setdefault('find_unused_parameters',
                       cfg.get('find_unused_parameters', False))
    cfg.model_wrapper_cfg = wrapper
    _replace_sync_bn(cfg.model)
    return True


def synchronize_ranks():
    """Waits for every rank after a successful run, so that no rank tears
    its connections down while a peer still finishes its last collective."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown_distributed():
    """Destroys the process group so that exit does not abort with
    'terminate called without an active exception'."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def add_rank_log_file(runner) -> None:
    """Gives every rank but 0 its own log file beside rank 0's, so that a
    failure on any rank leaves a trace (MMEngine only logs rank 0)."""
    if not dist.is_initialized() or dist.get_rank() == 0:
        return
    path = os.path.join(runner.log_dir,
                        f'{runner.timestamp}_rank{dist.get_rank()}.log')
    handler = logging.FileHandler(path, mode='a')
    handler.setLevel(logging.INFO)
    handler.setFormatter(
        logging.Formatter(f'%(asctime)s - rank {dist.get_rank()} - '
                          '%(levelname)s - %(message)s'))
    runner.logger.addHandler(handler)


# ---------------------------------------------------------------------------
# Slurm requeue
# ---------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------
# A rank that stops answering
# ---------------------------------------------------------------------------
def collective_timeout() -> int:
    """Seconds a collective waits for a peer (PATCHSCALE_DIST_TIMEOUT, for
    the gloo group of CPU runs; MMEngine's env_cfg.dist_cfg.timeout on
    GPUs)."""
    return int(os.environ.get('PATCHSCALE_DIST_TIMEOUT', 1800))


class Heartbeat:
    """Each rank bumps a counter in the process group's store every
    ``interval`` seconds from a thread, and watches the others' counters.

    A rank that is stopped (SIGSTOP, a frozen node, swapping to death)
    stops its counter; when a counter has not moved for the collective
    timeout, the watching ranks log which rank did not answer and exit, so
    the launcher ends the job instead of it waiting, and the user is told
    whom to look at. A collective that times out first is explained by
    :meth:`describe`.
    """

    PREFIX = 'patchscale/heartbeat/'

    def __init__(self, store, rank: int, world_size: int, timeout: float):
        self.store, self.rank, self.world_size = store, rank, world_size
        self.timeout = timeout
        self.interval = max(0.2, min(5.0, timeout / 10))
        now = time.monotonic()
        self._seen = {r: (None, now) for r in range(world_size)}
        self._store_ok = now
        self._stop = threading.Event()
        self.store.add(self._key(rank), 1)
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name='patchscale-heartbeat')
        self._thread.start()

    def _key(self, rank: int) -> str:
        return f'{self.PREFIX}{rank}'

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._beat()
            except Exception:  # store gone: the job is ending anyway
                if time.monotonic() - self._store_ok > self.timeout:
                    self._fail(self.describe())
                continue
            silent = self.silent_ranks(self.timeout)
            if silent:
                self._fail(self.describe())

    def _beat(self) -> None:
        self.store.add(self._key(self.rank), 1)
        now = time.monotonic()
        for rank in range(self.world_size):
            if rank == self.rank or not self.store.check([self._key(rank)]):
                continue
            count = self.store.add(self._key(rank), 0)  # a read
            if count != self._seen[rank][0]:
                self._seen[rank] = (count, now)
        self._store_ok = now

    def silent_ranks(self, seconds: float) -> list:
        """Ranks whose heartbeat has not moved for ``seconds``."""
        now = time.monotonic()
        return [r for r, (_, seen) in self._seen.items()
                if r != self.rank and now - seen > seconds]

    def describe(self):
        """One line naming the ranks that stopped answering, or None."""
        now = time.monotonic()
        if now - self._store_ok > 3 * self.interval + 1:
            return ('the process group\'s store (on rank 0, or the launcher'
                    f') did not answer for {now - self._store_ok:.0f} s: '
                    'rank 0 or its node stopped responding')
        silent = self.silent_ranks(3 * self.interval + 1)
        if not silent:
            return None
        ranks = ', '.join(map(str, silent))
        longest = max(now - self._seen[r][1] for r in silent)
        return (f'rank{"s" if len(silent) > 1 else ""} {ranks} did not '
                f'answer for {longest:.0f} s (collective timeout '
                f'{self.timeout:.0f} s, PATCHSCALE_DIST_TIMEOUT): stopped '
                'or frozen; ending the job')

    def _fail(self, message) -> None:
        message = f'error: {message or "a rank stopped answering"}'
        logging.getLogger('mmengine').error(message)
        print(message, file=sys.stderr, flush=True)
        os._exit(1)

    def stop(self) -> None:
        self._stop.set()


_HEARTBEAT = None


def start_heartbeat():
    """A :class:`Heartbeat` for the default process group, or None when not
    distributed."""
    global _HEARTBEAT
    if not (dist.is_available() and dist.is_initialized()):
        return None
    if dist.get_world_size() == 1:
        return None
    from torch.distributed.distributed_c10d import _get_default_store
    _HEARTBEAT = Heartbeat(_get_default_store(), dist.get_rank(),
                           dist.get_world_size(), collective_timeout())
    return _HEARTBEAT


def unresponsive_rank_message():
    """Why a collective failed, if the heartbeat knows: one line naming the
    rank that stopped answering, or None."""
    return _HEARTBEAT.describe() if _HEARTBEAT is not None else None
