"""Checkpoints that load with ``torch.load(weights_only=True)``.

MMEngine stores its logging state as ``HistoryBuffer`` objects holding numpy
arrays and bound methods, and some parameter schedulers (OneCycle) keep a
function in their state; unpickling those needs ``getattr`` and numpy or
MMEngine globals, which torch >= 2.6 rightly refuses by default, so a run
could not be resumed or evaluated without switching that safety off. This
hook stores the same state as plain lists and numbers on save and rebuilds it
on load, so every checkpoint of a run loads with weights-only unpickling.
"""
from collections import OrderedDict

import numpy as np
from mmengine.hooks import Hook
from mmengine.logging import HistoryBuffer

from patchscale_mm.registry import HOOKS

_BUFFER_KEY = '__history_buffer__'


def to_plain(value):
    """Numpy arrays and scalars -> lists and Python numbers, recursively."""
    if isinstance(value, HistoryBuffer):
        logs, counts = value.data
        return {
            _BUFFER_KEY: True,
            'log': to_plain(logs),
            'count': to_plain(counts),
            'max_length': value.max_length,
        }
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return type(value)((k, to_plain(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(to_plain(v) for v in value)
    return value


def without_functions(value):
    """Scheduler state without its functions, recursively: a scheduler
    rebuilds them from its config before its state is loaded back."""
    if isinstance(value, dict):
        return type(value)((k, without_functions(v)) for k, v in value.items()
                           if not callable(v))
    if isinstance(value, (list, tuple)):
        return type(value)(without_functions(v) for v in value)
    return value


def from_plain(value):
    """Inverse of :func:`to_plain` for history buffers."""
    if isinstance(value, dict):
        if value.get(_BUFFER_KEY):
            return HistoryBuffer(value['log'], value['count'],
                                 value['max_length'])
        return type(value)((k, from_plain(v)) for k, v in value.items())
    return value


@HOOKS.register_module()
class WeightsOnlyCheckpointHook(Hook):
    """Stores the message hub, meta data and scheduler states of
    checkpoints as plain data.

    Add it to ``custom_hooks``; loading checkpoints written without it still
    works where the file has no other objects.
    """
    priority = 'VERY_LOW'

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        for key in ('message_hub', 'meta'):
            if key in checkpoint:
                checkpoint[key] = to_plain(checkpoint[key])
        if 'param_schedulers' in checkpoint:
            checkpoint['param_schedulers'] = without_functions(
                to_plain(checkpoint['param_schedulers']))

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if 'message_hub' in checkpoint:
            hub = from_plain(checkpoint['message_hub'])
            for key in ('log_scalars', 'runtime_info', 'resumed_keys'):
                hub[key] = OrderedDict(hub.get(key, {}))
            checkpoint['message_hub'] = hub
