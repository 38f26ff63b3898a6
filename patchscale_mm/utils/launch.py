"""What tools/train.py and tools/test.py share: CLI options applied to a
config, and distributed runs on machines without a GPU.

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
        timeout = int(os.environ.get('PATCHSCALE_DIST_TIMEOUT', 1800))
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
