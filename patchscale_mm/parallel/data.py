"""What the data side of sequence parallelism needs: the ranks of a
sequence group load the same samples, with the same augmentation."""
import random
import sys
from typing import Optional
from unittest import mock

import numpy as np
import torch
from mmengine.dist import get_dist_info

from patchscale_mm.registry import DATA_SAMPLERS, FUNCTIONS
from . import sequence


def data_parallel_info() -> tuple:
    """(replica, replicas): the sequence group's index and count, or the
    rank and world size without sequence parallelism."""
    group = sequence.current()
    return (group.dp_rank, group.dp_size) if group else get_dist_info()


@DATA_SAMPLERS.register_module()
class DataParallelSampler:
    """Any MMEngine sampler, sharding the data over the data-parallel
    replicas (the sequence groups) instead of the ranks.

    MMEngine's and mmpretrain's samplers read the rank and world size from
    ``get_dist_info()`` when they are built; they are built here with the
    replica's index and count in their place.

    Args:
        dataset: The dataset.
        sampler (dict): The sampler to wrap, e.g.
            ``dict(type='InfiniteSampler', shuffle=True)``.
        seed (int, optional): Passed on, as the Runner passes it.
    """

    def __init__(self, dataset, sampler: dict, seed: Optional[int] = None):
        from mmengine.registry import DATA_SAMPLERS as ROOT
        cfg = dict(sampler)
        # The registry of the config's default scope (mmpretrain's knows
        # RepeatAugSampler).
        with ROOT.switch_scope_and_registry(None) as registry:
            cls = registry.get(cfg['type']) if isinstance(cfg['type'], str) \
                else cfg['type']
        if cls is None:
            raise KeyError(f'unknown sampler {cfg["type"]!r}')
        module = sys.modules[cls.__module__]
        if not hasattr(module, 'get_dist_info'):
            raise TypeError(f'sequence parallelism: {cls.__name__} does not '
                            'read its rank from get_dist_info(); use '
                            'DefaultSampler, InfiniteSampler or '
                            'RepeatAugSampler')
        info = data_parallel_info()
        cfg['type'] = cls
        with mock.patch.object(module, 'get_dist_info', lambda: info):
            self.sampler = ROOT.build(
                cfg, default_args=dict(dataset=dataset, seed=seed))

    def __iter__(self):
        return iter(self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, 'set_epoch'):
            self.sampler.set_epoch(epoch)

    def __getattr__(self, name):  # rank, world_size, seed, ... of the inner
        if name == 'sampler':
            raise AttributeError(name)
        return getattr(self.sampler, name)


@FUNCTIONS.register_module()
def seed_worker_by_replica(worker_id: int) -> None:
    """Seeds a data-loader worker's NumPy and Python generators from the
    seed PyTorch gave it (drawn in the main process, which every rank of a
    sequence group runs identically) and the data-parallel replica, so
    that a sequence group's ranks augment their shared samples alike."""
    replica, _ = data_parallel_info()
    seed = (torch.initial_seed() + 1_000_003 * replica) % 2**32
    np.random.seed(seed)
    random.seed(seed)
