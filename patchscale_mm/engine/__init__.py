from .checkpoint_io import (AtomicLocalBackend, CheckpointError,
                            UnsafeCheckpointError, atomic_write,
                            check_checkpoint_file, find_resumable_checkpoint,
                            guard_checkpoint_loaders)
from .eval_loss_hook import EvalLossHook
from .non_finite_loss_hook import NonFiniteLossError, NonFiniteLossHook
from .resumable_checkpoint_hook import ResumableCheckpointHook
from .show_predictions_hook import ShowPredictionsHook
from .weights_only_checkpoint_hook import WeightsOnlyCheckpointHook

__all__ = [
    'AtomicLocalBackend', 'CheckpointError', 'EvalLossHook',
    'NonFiniteLossError', 'NonFiniteLossHook', 'ResumableCheckpointHook',
    'ShowPredictionsHook', 'UnsafeCheckpointError',
    'WeightsOnlyCheckpointHook', 'atomic_write', 'check_checkpoint_file',
    'find_resumable_checkpoint', 'guard_checkpoint_loaders'
]
