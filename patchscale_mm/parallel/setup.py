"""Turning sequence parallelism on from a config:
``sequence_parallel = dict(size=4)``."""
import os

from mmengine.config import Config


def sequence_parallel_size(cfg: Config) -> int:
    """The config's ``sequence_parallel.size`` (1 without the key)."""
    setting = cfg.get('sequence_parallel') or {}
    return setting.get('size', 1) if isinstance(setting, dict) else setting


def world_size(cfg: Config) -> int:
    """The job's process count, before the process group exists: torchrun's
    ``WORLD_SIZE``, Slurm's task count under ``--launcher slurm``, else 1."""
    if os.environ.get('WORLD_SIZE'):
        return int(os.environ['WORLD_SIZE'])
    if cfg.get('launcher') == 'slurm' and os.environ.get('SLURM_NTASKS'):
        return int(os.environ['SLURM_NTASKS'])
    return 1


def sequence_parallel_problems(cfg: Config) -> list:
    """One line per reason the config's sequence parallelism cannot run."""
    setting = cfg.get('sequence_parallel')
    if setting is None:
        return []
    if not isinstance(setting, dict) or set(setting) - {'size'}:
        return [f'sequence_parallel must be dict(size=N), got {setting!r}']
    size = setting.get('size', 1)
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        return [f'sequence_parallel.size must be a positive integer, got '
                f'{size!r}']
    world = world_size(cfg)
    if world % size:
        return [f'sequence_parallel.size={size} does not divide the '
                f'{world} processes; use a divisor of {world} (ranks form '
                f'{world} // size data-parallel replicas of size '
                'consecutive ranks)']
    return []


def prepare_sequence_parallel(cfg: Config) -> None:
    """Before the Runner is built: the training data sharded over the
    data-parallel replicas (each sequence group loads the same samples)
    and its workers seeded alike within a group. Evaluation is
    data-parallel over all ranks, whole images on each."""
    loader = cfg.get('train_dataloader')
    if not loader:
        return
    sampler = loader.get('sampler') or dict(type='DefaultSampler',
                                             shuffle=True)
    if sampler.get('type') != 'patchscale_mm.DataParallelSampler':
        loader.sampler = dict(
            type='patchscale_mm.DataParallelSampler', sampler=sampler)
    loader.setdefault('worker_init_fn',
                      dict(type='patchscale_mm.seed_worker_by_replica'))
