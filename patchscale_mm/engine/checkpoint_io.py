"""Checkpoint files that survive kills and refuse to run code.

* **Atomic writes.** :func:`atomic_write` puts the bytes in a temporary file
  beside the target, flushes them to disk and renames it over the target, so
  a process killed at any moment leaves the old file or the new one, never a
  truncated one. A full disk (or quota) removes the temporary file and
  raises :class:`CheckpointWriteError`, one line with the file and the free
  space. :class:`AtomicLocalBackend` is MMEngine's local file backend
  with that write (registered as ``'atomic_local'``).
* **Weights-only loading.** :func:`guard_checkpoint_loaders` wraps every
  loader of MMEngine's ``CheckpointLoader`` (local files, URLs, model zoos),
  which all of ``load_from``, ``resume`` and ``init_cfg=dict(type=
  'Pretrained')`` go through, so that ``torch.load`` runs with
  ``weights_only=True`` even where ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` is
  set, and a refused file gives one line instead of torch's advice to turn
  the check off.
* **Validation without loading.** :func:`check_checkpoint_file` reads only
  the zip directory and the pickle's opcodes: a truncated file or one whose
  unpickling would call anything but tensor and container constructors is
  rejected before a model is built.
"""
import argparse
import errno
import functools
import glob
import logging
import os
import os.path as osp
import pickle
import re
import shutil
import uuid
import zipfile
from contextlib import contextmanager
from typing import Iterator, List, Optional

import torch
from mmengine.fileio import LocalBackend, register_backend
from mmengine.logging import print_log
from mmengine.runner.checkpoint import CheckpointLoader

TMP_SUFFIX = '.tmp'
# Files torch.save wrote before it switched to zip archives (torch < 1.6)
# start with this pickled magic number; they cannot be checked statically.
_LEGACY_MAGIC = (0x1950a86a20f9469cfc6c).to_bytes(10, 'little')
_FORCE_WEIGHTS_ONLY = 'TORCH_FORCE_WEIGHTS_ONLY_LOAD'
_FORCE_NO_WEIGHTS_ONLY = 'TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD'
# Classes that hold data only, accepted beside tensors and containers: the
# training script of the Adventurer authors saves its argparse.Namespace
# under 'args' in every checkpoint.
DATA_ONLY_CLASSES = (argparse.Namespace, )
_DATA_ONLY_NAMES = {f'{c.__module__}.{c.__qualname__}' for c in DATA_ONLY_CLASSES}


class CheckpointError(ValueError):
    """A checkpoint file that must not or cannot be loaded."""


class UnsafeCheckpointError(CheckpointError, pickle.UnpicklingError):
    """A checkpoint whose unpickling would call code other than the tensor
    and container constructors that weights-only loading allows."""


class CheckpointWriteError(OSError):
    """A checkpoint (or its pointer) that could not be written for lack of
    space; the previous file is intact."""


# Out of space, out of quota, over the file size limit.
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


# ---------------------------------------------------------------------------
# Atomic writes
# ---------------------------------------------------------------------------
def atomic_write(path: str, data: bytes) -> None:
    """Writes ``data`` to ``path`` so that readers (and a later run after a
    kill) see either the previous file or all of ``data``."""
    path = os.fspath(path)
    directory = osp.dirname(osp.abspath(path))
    os.makedirs(directory, exist_ok=True)
    # Same directory, so the rename never crosses file systems; a hidden,
    # unique name, so it is never mistaken for a checkpoint.
    tmp = osp.join(directory,
                   f'.{osp.basename(path)}.{uuid.uuid4().hex[:8]}{TMP_SUFFIX}')
    try:
        with open(tmp, 'xb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if osp.exists(tmp):
            os.remove(tmp)
        if isinstance(e, OSError) and e.errno in _NO_SPACE:
            raise _no_space(path, len(data), e) from None
        raise
    _fsync_dir(directory)  # makes the rename itself durable


def _no_space(path: str, size: int, error: OSError) -> CheckpointWriteError:
    directory = osp.dirname(osp.abspath(path))
    try:  # measured after the partial file is gone
        free = f'{shutil.disk_usage(directory).free / 2**20:,.1f} MiB free'
    except OSError:
        free = 'free space unknown'
    failure = CheckpointWriteError(
        f'could not write {path} ({size / 2**20:,.1f} MiB): '
        f'{os.strerror(error.errno)}, {free} in {directory}; the previous '
        'checkpoint is intact, free space (or set max_keep_ckpts) and run '
        'the same command to resume')
    failure.errno = error.errno
    return failure


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # not possible on every platform / file system
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temporaries(directory: str) -> List[str]:
    """Deletes the temporary files of writes that a kill interrupted."""
    stale = glob.glob(osp.join(glob.escape(directory), f'.*{TMP_SUFFIX}'))
    stale = [p for p in stale if re.search(r'\.[0-9a-f]{8}\.tmp$', p)]
    for path in stale:
        os.remove(path)
    return stale


class AtomicLocalBackend(LocalBackend):
    """MMEngine's local storage backend whose ``put`` and ``put_text``
    replace the target atomically (see :func:`atomic_write`)."""

    def put(self, obj: bytes, filepath) -> None:
        atomic_write(filepath, obj)

    def put_text(self, obj: str, filepath, encoding: str = 'utf-8') -> None:
        atomic_write(filepath, obj.encode(encoding))


register_backend('atomic_local', AtomicLocalBackend, force=True)


# ---------------------------------------------------------------------------
# Checking a file before loading it
# ---------------------------------------------------------------------------
def _is_legacy_format(path: str) -> bool:
    with open(path, 'rb') as f:
        return _LEGACY_MAGIC in f.read(32)


def check_checkpoint_file(path: str, what: str = 'checkpoint') -> None:
    """Raises :class:`CheckpointError` (one line) unless ``path`` is a
    complete ``torch.save`` archive that weights-only loading accepts.

    Reads the zip directory (at the end of the file, so a truncated file has
    none) and disassembles the pickle without running it.
    """
    if not osp.isfile(path):
        raise CheckpointError(f'{what} {path} does not exist')
    if not zipfile.is_zipfile(path):
        if _is_legacy_format(path):
            return  # pre-1.6 format: the weights-only load still guards it
        raise CheckpointError(
            f'{what} {path} is truncated or not a PyTorch checkpoint (no '
            'zip directory at its end); a write was probably interrupted, '
            'use an earlier checkpoint')
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except (ValueError, RuntimeError, KeyError, zipfile.BadZipFile) as e:
        raise CheckpointError(f'{what} {path} is not a torch.save archive '
                              f'({e})') from None
    unsafe = set(unsafe) - _DATA_ONLY_NAMES
    if unsafe:
        raise UnsafeCheckpointError(_refusal(path, sorted(unsafe), what))


def _refusal(path: str, names: List[str], what: str = 'checkpoint') -> str:
    return (f'refusing to load {what} {path}: unpickling it would call '
            f'{", ".join(names)}, and only tensors, numbers, strings and '
            'containers load with weights_only=True; if you trust the file, '
            're-save its state_dict as plain tensors')


def is_complete_checkpoint(path: str) -> bool:
    try:
        check_checkpoint_file(path)
    except CheckpointError:
        return False
    return True


def find_resumable_checkpoint(work_dir: str) -> Optional[str]:
    """The newest complete checkpoint of a work dir, or None.

    ``last_checkpoint`` is trusted when it names a complete file; otherwise
    (a run from before atomic saving, a file deleted by hand) the newest
    complete ``*.pth`` in ``work_dir`` is taken, with a warning.
    """
    pointer = osp.join(work_dir, 'last_checkpoint')
    named = None
    if osp.isfile(pointer):
        with open(pointer) as f:
            named = f.read().strip() or None
        if named and is_complete_checkpoint(named):
            return named
    candidates = sorted(
        glob.glob(osp.join(glob.escape(work_dir), '*.pth')),
        key=osp.getmtime,
        reverse=True)
    for path in candidates:
        if is_complete_checkpoint(path):
            if named:
                print_log(
                    f'last_checkpoint names {named}, which is missing or '
                    f'incomplete; resuming from {path} instead',
                    logger='current',
                    level=logging.WARNING)
            return path
    return None


# ---------------------------------------------------------------------------
# Weights-only loading through MMEngine's CheckpointLoader
# ---------------------------------------------------------------------------
@contextmanager
def forced_weights_only() -> Iterator[None]:
    """Makes every ``torch.load`` in the block weights-only, whatever its
    caller passes (torch honours ``TORCH_FORCE_WEIGHTS_ONLY_LOAD`` over an
    explicit ``weights_only=False``)."""
    saved = {k: os.environ.pop(k, None)
             for k in (_FORCE_WEIGHTS_ONLY, _FORCE_NO_WEIGHTS_ONLY)}
    os.environ[_FORCE_WEIGHTS_ONLY] = '1'
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def data_only_classes_allowed():
    """A context in which weights-only ``torch.load`` also accepts
    :data:`DATA_ONLY_CLASSES`."""
    return torch.serialization.safe_globals(list(DATA_ONLY_CLASSES))


def _unsafe_names(error: Exception) -> List[str]:
    names = re.findall(r'GLOBAL ([\w.]+)', str(error))
    return sorted(set(names)) or [str(error).strip().splitlines()[-1]]


def weights_only_loader(loader):
    """Wraps a ``CheckpointLoader`` scheme so that it loads weights only and
    fails with one line."""
    if getattr(loader, 'weights_only', False):
        return loader

    @functools.wraps(loader)
    def load(filename, *args, **kwargs):
        with forced_weights_only(), data_only_classes_allowed():
            try:
                return loader(filename, *args, **kwargs)
            except pickle.UnpicklingError as e:
                raise UnsafeCheckpointError(
                    _refusal(filename, _unsafe_names(e))) from None
            except RuntimeError as e:
                if 'zip archive' not in str(e):
                    raise
                raise CheckpointError(
                    f'checkpoint {filename} is truncated or corrupt '
                    f'({str(e).splitlines()[0]})') from None

    load.weights_only = True
    return load


def guard_checkpoint_loaders() -> None:
    """Makes every registered ``CheckpointLoader`` scheme weights-only
    (idempotent; schemes registered later are not covered)."""
    for prefix, loader in list(CheckpointLoader._schemes.items()):
        CheckpointLoader.register_scheme(
            prefix, weights_only_loader(loader), force=True)


guard_checkpoint_loaders()
