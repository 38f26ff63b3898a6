from .checkpoint_io import (AtomicLocalBackend, CheckpointError,
                            CheckpointWriteError, UnsafeCheckpointError,
                            atomic_write,
                            check_checkpoint_file, find_resumable_checkpoint,
                            guard_checkpoint_loaders)
from .eval_loss_hook import EvalLossHook
from .non_finite_loss_hook import NonFiniteLossError, NonFiniteLossHook
from .preemption_hook import PreemptionHook, TrainingInterrupted
from .resumable_checkpoint_hook import ResumableCheckpointHook
from .show_predictions_hook import ShowPredictionsHook
from .weights_only_checkpoint_hook import WeightsOnlyCheckpointHook

__all__ = [
    'AtomicLocalBackend', 'CheckpointError', 'CheckpointWriteError',
    'EvalLossHook', 'NonFiniteLossError', 'NonFiniteLossHook',
    'PreemptionHook', 'ResumableCheckpointHook', 'ShowPredictionsHook',
    'TrainingInterrupted', 'UnsafeCheckpointError',
    'WeightsOnlyCheckpointHook', 'atomic_write', 'check_checkpoint_file',
    'find_resumable_checkpoint', 'guard_checkpoint_loaders'
]
