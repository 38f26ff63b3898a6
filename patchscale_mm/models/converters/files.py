"""Reading a source checkpoint (weights-only, whatever wraps it) and writing
a converted one."""
import io
import pickle
from typing import Mapping, Optional, Tuple

import torch

from patchscale_mm.engine.checkpoint_io import (CheckpointError,
                                                UnsafeCheckpointError,
                                                atomic_write,
                                                check_checkpoint_file,
                                                data_only_classes_allowed)
from .rules import ConversionError, StateDict, name_keys

# Checked in this order when a file holds a wrapper rather than the weights;
# the EMA weights only when asked for (``key='model_ema'``) or when alone.
WRAPPER_KEYS = ('state_dict', 'model', 'module', 'model_ema')


def unwrap_state_dict(obj, key: Optional[str] = None,
                      what: str = 'checkpoint') -> Tuple[StateDict, str]:
    """The state dict inside a loaded checkpoint, and where it was.

    Accepts a raw state dict or one under ``'state_dict'``, ``'model'``,
    ``'module'`` or ``'model_ema'`` (checked in that order; ``key`` picks one
    explicitly). A ``'module.'`` prefix on every key (DistributedDataParallel)
    is removed.

    Returns:
        tuple: The state dict and a description such as ``"'model'"`` or
        ``'raw state dict'``.

    Raises:
        ConversionError: If there is no dict of tensors where expected.
    """
    if not isinstance(obj, Mapping):
        raise ConversionError(
            f'{what} holds a {type(obj).__name__}, not a state dict (a dict '
            f'of tensors, raw or under {"/".join(map(repr, WRAPPER_KEYS))})')
    if key is not None:
        if key not in obj:
            raise ConversionError(f'{what} has no {key!r} entry; top-level '
                                  f'keys: {name_keys(sorted(map(str, obj)))}')
        found, where = obj[key], repr(key)
    else:
        wrapper = next((k for k in WRAPPER_KEYS
                        if isinstance(obj.get(k), Mapping)), None)
        found, where = ((obj[wrapper], repr(wrapper)) if wrapper else
                        (obj, 'raw state dict'))
    if not isinstance(found, Mapping) or not found:
        raise ConversionError(f'{what} entry {where} is not a state dict '
                              f'(got {type(found).__name__})')
    not_tensors = [str(k) for k, v in found.items()
                   if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ConversionError(
            f'{what} ({where}) is not a state dict: {len(not_tensors)} '
            f'entries are not tensors: {name_keys(not_tensors)}')
    state_dict = dict(found)
    if all(k.startswith('module.') for k in state_dict):
        state_dict = {k[len('module.'):]: v for k, v in state_dict.items()}
        where += ", 'module.' prefix removed"
    return state_dict, where


def load_source_state_dict(path: str,
                           key: Optional[str] = None) -> Tuple[StateDict, str]:
    """Loads ``path`` weights-only and unwraps it (see
    :func:`unwrap_state_dict`).

    Raises:
        CheckpointError: If the file is missing, truncated or would run code
            when unpickled (:class:`UnsafeCheckpointError`).
        ConversionError: If it holds no state dict.
    """
    check_checkpoint_file(path, 'source checkpoint')
    try:
        with data_only_classes_allowed():
            obj = torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:
        last = str(e).strip().splitlines()[0]
        raise UnsafeCheckpointError(
            f'refusing to load source checkpoint {path} weights-only '
            f'({last}); if you trust the file, re-save its state_dict as '
            'plain tensors') from None
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(f'cannot read source checkpoint {path}: '
                              f'{str(e).splitlines()[0]}') from None
    return unwrap_state_dict(obj, key, f'source checkpoint {path}')


def save_checkpoint(state_dict: StateDict, meta: dict, path: str) -> None:
    """Writes ``{'state_dict', 'meta'}`` atomically (a kill leaves the old
    file or the new one)."""
    buffer = io.BytesIO()
    torch.save({'state_dict': state_dict, 'meta': meta}, buffer)
    atomic_write(path, buffer.getvalue())
