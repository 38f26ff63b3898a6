"""Distributed runs on machines without a GPU, and the end of every
distributed run.

MMEngine 0.10 assumes GPUs when distributed: its launchers call
``torch.cuda.set_device`` and the Runner wraps the model in DDP with
``device_ids=[local_rank]``. The Runner skips its own initialisation when a
process group already exists, so on CPU we start a gloo group ourselves and
adapt the config (no device ids, no SyncBN).
"""
import datetime
import logging
import os
from typing import Optional

import torch
import torch.distributed as dist
from mmengine.config import Config, ConfigDict

from patchscale_mm.engine.auto_resume import without_sync_bn
from .slurm import slurm_env_to_torch_env


def init_cpu_distributed(cfg: Config) -> bool:
    """Starts a gloo process group for a distributed run without CUDA and
    adapts ``cfg`` to it. Returns whether it did; GPU runs are left to
    MMEngine."""
    if cfg.launcher == 'none' or torch.cuda.is_available():
        return False
    if cfg.launcher == 'slurm':
        slurm_env_to_torch_env()
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
    cfg.model = without_sync_bn(cfg.model)
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


def collective_timeout() -> int:
    """Seconds a collective waits for a peer (PATCHSCALE_DIST_TIMEOUT, for
    the gloo group of CPU runs; MMEngine's env_cfg.dist_cfg.timeout on
    GPUs)."""
    return int(os.environ.get('PATCHSCALE_DIST_TIMEOUT', 1800))


def restart_store_warning() -> Optional[str]:
    """A warning when torchrun may restart these processes into the store
    it shared with the ones that died: the restarted processes can read
    their predecessors' addresses there and fail to connect
    (pytorch/pytorch#135712). None when restarts meet in a fresh store."""
    restarts = int(os.environ.get('TORCHELASTIC_MAX_RESTARTS', '0') or 0)
    if restarts and os.environ.get('TORCHELASTIC_USE_AGENT_STORE') == 'True':
        return ('warning: torchrun --max-restarts shares its store across '
                'restarts, where restarted processes can find the dead '
                "ones' addresses; launch with "
                'TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 (tools/dist_train.sh '
                'sets it)')
    return None
