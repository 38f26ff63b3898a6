from .sequence import (SequenceGroup, TokenShards, current,
                       init_sequence_parallel, set_current, shard_bounds)

__all__ = ['SequenceGroup', 'TokenShards', 'current',
           'init_sequence_parallel', 'set_current', 'shard_bounds']
