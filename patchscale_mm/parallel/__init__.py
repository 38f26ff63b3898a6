from .sequence import (SequenceGroup, TokenShards, current,
                       init_sequence_parallel, set_current, shard_bounds)
from .setup import prepare_sequence_parallel, sequence_parallel_size

__all__ = ['SequenceGroup', 'TokenShards', 'current',
           'init_sequence_parallel', 'prepare_sequence_parallel',
           'sequence_parallel_size', 'set_current', 'shard_bounds']
