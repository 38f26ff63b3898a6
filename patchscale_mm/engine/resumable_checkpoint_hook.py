"""A CheckpointHook whose checkpoints a killed run resumes from exactly.

MMEngine's ``CheckpointHook`` has three gaps for long runs that may be
killed at any moment:

* it writes the ``.pth`` and ``last_checkpoint`` in place, so a kill during a
  save leaves a truncated file or a pointer to one;
* with ``max_keep_ckpts`` it deletes the oldest checkpoint *before* writing
  the new one (with ``max_keep_ckpts=1`` a kill in between leaves none);
* checkpoints hold no random number generator states: a resumed run draws
  other augmentations and drop-path masks than an uninterrupted one, and
  ``IterBasedTrainLoop`` advances the data loader on resume by running the
  data pipeline, which consumes the randomness once more.

Here a save writes the new ``.pth`` atomically, then atomically points
``last_checkpoint`` at it, then deletes what fell out of the keep window; and
every checkpoint stores the generator states of all ranks, restored after
the loop has skipped the data already trained on. Validation runs with
saved-and-restored generators, so how often a run validates does not change
its training randomness.
"""
import os.path as osp
import random
from typing import List, Optional

import numpy as np
import torch
from mmengine.dist import (all_gather_object, get_rank, get_world_size,
                           is_main_process)
from mmengine.hooks import CheckpointHook
from mmengine.logging import print_log
from mmengine.runner import IterBasedTrainLoop

from patchscale_mm.registry import HOOKS
from .checkpoint_io import atomic_write, remove_stale_temporaries

RNG_KEY = 'rng_states'


# ---------------------------------------------------------------------------
# Generator states as plain data (they load with weights_only=True)
# ---------------------------------------------------------------------------
def get_rng_state() -> dict:
    """Python, NumPy, torch CPU (and CUDA) generator states of this
    process."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = dict(
        python=random.getstate(),
        numpy=[name, keys.tolist(), pos, has_gauss, cached],
        torch=torch.get_rng_state())
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Inverse of :func:`get_rng_state`."""
    version, internal, gauss = state['python']
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state['numpy']
    np.random.set_state(
        (name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state['torch'].cpu())
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state['cuda']])


class _RestoreAfterSkip:
    """The train loop's data iterator, which restores the generators once
    the loop has drawn (and discarded) the ``skip`` batches trained before
    the checkpoint: the next batch then sees the generators exactly as the
    uninterrupted run did."""

    def __init__(self, iterator, skip: int, state: dict):
        self._iterator, self._skip, self._state = iterator, skip, state

    def __iter__(self):
        return self

    def __next__(self):
        if self._skip == 0 and self._state is not None:
            set_rng_state(self._state)
            self._state = None
        self._skip -= 1
        return next(self._iterator)

    def __getattr__(self, name):
        return getattr(self._iterator, name)


@HOOKS.register_module()
class ResumableCheckpointHook(CheckpointHook):
    """``CheckpointHook`` with atomic saves, safe rotation and generator
    states; arguments as MMEngine's ``CheckpointHook``.

    Local output dirs get the ``'atomic_local'`` file backend unless
    ``backend_args`` names another one.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._rng_states: Optional[List[dict]] = None
        self._resumed = None
        self._val_rng = None

    # -- saving ----------------------------------------------------------
    def before_train(self, runner) -> None:
        out_dir = str(self.out_dir or runner.work_dir)
        if (self.backend_args is None and self.file_client_args is None
                and '://' not in out_dir):
            self.backend_args = dict(backend='atomic_local')
        super().before_train(runner)
        if is_main_process() and osp.isdir(self.out_dir):
            remove_stale_temporaries(self.out_dir)

    def _save_checkpoint_with_step(self, runner, step, meta):
        # Every rank reaches this point; only rank 0 writes the file.
        self._rng_states = _gather(get_rng_state())
        stale = self._advance_keep_window(runner, step)
        filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir, filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        runner.save_checkpoint(
            self.out_dir,
            filename,
            self.file_client_args,
            save_optimizer=self.save_optimizer,
            save_param_scheduler=self.save_param_scheduler,
            meta=meta,
            by_epoch=self.by_epoch,
            backend_args=self.backend_args,
            **self.args)
        if not is_main_process():
            return
        # The pointer moves only once the new file is complete, and old
        # files go only after that: a kill leaves a loadable latest.
        atomic_write(
            osp.join(runner.work_dir, 'last_checkpoint'),
            str(self.last_ckpt).encode())
        for path in stale:
            if self.file_backend.isfile(path):
                self.file_backend.remove(path)
            elif self.file_backend.isdir(path):  # DeepSpeed checkpoints
                self.file_backend.rmtree(path)

    def _advance_keep_window(self, runner, step) -> List[str]:
        """MMEngine's ``max_keep_ckpts`` bookkeeping, returning the paths to
        delete instead of deleting them before the save."""
        if self.max_keep_ckpts <= 0 or (self.keep_ckpt_ids
                                        and self.keep_ckpt_ids[-1] == step):
            return []
        stale = []
        if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
            stale.append(self.keep_ckpt_ids.popleft())
        self.keep_ckpt_ids.append(step)
        runner.message_hub.update_info('keep_ckpt_ids',
                                       list(self.keep_ckpt_ids))
        return [
            self.file_backend.join_path(self.out_dir,
                                        self.filename_tmpl.format(s))
            for s in stale
        ]

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        # Best-checkpoint saves (during validation) bypass
        # _save_checkpoint_with_step: they keep this rank's training state
        # only, which resumes exactly on one process.
        states, self._rng_states = self._rng_states, None
        checkpoint[RNG_KEY] = states or [self._val_rng or get_rng_state()]

    # -- resuming --------------------------------------------------------
    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        meta = checkpoint.get('meta') or {}
        self._resumed = (checkpoint.get(RNG_KEY), meta.get('iter'))

    def before_train_epoch(self, runner) -> None:
        if self._resumed is None:
            return
        states, at_iter = self._resumed
        self._resumed = None
        if at_iter != runner.iter or runner.iter == 0:
            return  # a load_from (fine-tuning), not a resume
        if not states or len(states) != get_world_size():
            print_log(
                'the checkpoint holds no generator states for '
                f'{get_world_size()} process(es); the resumed run draws '
                'other random numbers than an uninterrupted one',
                logger='current')
            return
        state = states[get_rank()]
        loop = runner.train_loop
        if isinstance(loop, IterBasedTrainLoop):
            loop.dataloader_iterator = _RestoreAfterSkip(
                loop.dataloader_iterator, runner.iter, state)
        else:  # epoch loops resume at an epoch boundary without skipping
            set_rng_state(state)

    # -- validation does not consume training randomness ------------------
    def before_val(self, runner) -> None:
        self._val_rng = get_rng_state()

    def after_val(self, runner) -> None:
        if self._val_rng is not None:
            set_rng_state(self._val_rng)
            self._val_rng = None


def _gather(state: dict) -> List[dict]:
    if get_world_size() == 1:
        return [state]
    return all_gather_object(state)
