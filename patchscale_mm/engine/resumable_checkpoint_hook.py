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

:func:`make_resumable` gives these guarantees to whichever checkpoint hook a
config names (MMEngine's ``CheckpointHook`` under any name, or a subclass),
or says in one line why it cannot; :meth:`ResumableCheckpointHook.save_now`
is the out-of-schedule save of a preempted run, also in the middle of an
epoch, which an epoch-based loop resumes by skipping the batches already
trained on.
"""
import os.path as osp
import random
from typing import List, Optional, Type

import numpy as np
import torch
from mmengine.dist import (all_gather_object, get_rank, get_world_size,
                           is_main_process)
from mmengine.hooks import CheckpointHook
from mmengine.logging import print_log
from mmengine.runner import EpochBasedTrainLoop, IterBasedTrainLoop

from patchscale_mm.registry import HOOKS
from .checkpoint_io import atomic_write, remove_stale_temporaries

RNG_KEY = 'rng_states'
# Runtime info naming a mid-epoch checkpoint that the next save replaces.
MID_EPOCH_KEY = 'patchscale_mid_epoch_ckpt'


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
        # A mid-epoch checkpoint of a preemption is obsolete once this one
        # is complete.
        mid_epoch = runner.message_hub.get_info(MID_EPOCH_KEY)
        if mid_epoch:
            runner.message_hub.update_info(MID_EPOCH_KEY, None)
            stale.append(mid_epoch)
        self._write(runner, self.filename_tmpl.format(step), meta,
                    self.by_epoch)
        if not is_main_process():
            return
        # Old files go only once the new one is complete and the pointer
        # names it: a kill leaves a loadable latest.
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
        super().before_save_checkpoint(runner, checkpoint)
        states, self._rng_states = self._rng_states, None
        checkpoint[RNG_KEY] = states or [self._val_rng or get_rng_state()]

    # -- resuming --------------------------------------------------------
    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        super().after_load_checkpoint(runner, checkpoint)
        meta = checkpoint.get('meta') or {}
        self._resumed = (checkpoint.get(RNG_KEY), meta.get('iter'))

    def before_train_epoch(self, runner) -> None:
        super().before_train_epoch(runner)
        if self._resumed is None:
            return
        states, at_iter = self._resumed
        self._resumed = None
        if at_iter != runner.iter or runner.iter == 0:
            return  # a load_from (fine-tuning), not a resume
        loop = runner.train_loop
        skip = 0
        if isinstance(loop, EpochBasedTrainLoop):
            # A checkpoint saved mid-epoch (save_now): the sampler repeats
            # the epoch's order (DistSamplerSeedHook), so drawing and
            # discarding the batches trained on continues exactly.
            skip = runner.iter - runner.epoch * len(loop.dataloader)
        if not states or len(states) != get_world_size():
            print_log(
                'the checkpoint holds no generator states for '
                f'{get_world_size()} process(es); the resumed run draws '
                'other random numbers than an uninterrupted one',
                logger='current')
            return
        state = states[get_rank()]
        if isinstance(loop, IterBasedTrainLoop):
            loop.dataloader_iterator = _RestoreAfterSkip(
                loop.dataloader_iterator, runner.iter, state)
        elif skip > 0:
            loop.dataloader = _RestOfEpoch(loop.dataloader, skip, state)
        else:  # at an epoch boundary: nothing to skip
            set_rng_state(state)

    def after_train_epoch(self, runner) -> None:
        loop = runner.train_loop
        if isinstance(getattr(loop, 'dataloader', None), _RestOfEpoch):
            loop.dataloader = loop.dataloader.dataloader  # next epochs whole
        super().after_train_epoch(runner)

    # -- a save outside the schedule (preemption) --------------------------
    def save_now(self, runner) -> Optional[str]:
        """Saves the state after the current training iteration, unless this
        hook has just saved it; returns the checkpoint's path. Called by
        every rank.

        Iteration-based hooks save ``iter_N.pth`` as at an interval.
        Epoch-based ones save ``epoch_E.pth`` at the end of an epoch and
        ``iter_N.pth`` within one, outside ``max_keep_ckpts``: the next
        epoch checkpoint makes it obsolete and deletes it.
        """
        step_iter = runner.iter + 1
        loop = runner.train_loop
        epoch_end = (isinstance(loop, EpochBasedTrainLoop)
                     and step_iter % len(loop.dataloader) == 0)
        if not self.by_epoch or epoch_end:
            step = runner.epoch + 1 if self.by_epoch else step_iter
            if self.keep_ckpt_ids and self.keep_ckpt_ids[-1] == step:
                return self.last_ckpt  # saved at this very iteration
            meta = dict(epoch=step, iter=step_iter) if self.by_epoch else \
                dict(epoch=runner.epoch, iter=step_iter)
            self._save_checkpoint_with_step(runner, step, meta)
            return self.last_ckpt
        # Mid-epoch: the checkpoint says "epoch E not finished, N
        # iterations done", which before_train_epoch resumes by skipping.
        filename = f'iter_{step_iter}.pth'
        self._rng_states = _gather(get_rng_state())
        runner.message_hub.update_info(
            MID_EPOCH_KEY, self.file_backend.join_path(self.out_dir, filename))
        self._write(runner, filename, dict(epoch=runner.epoch, iter=step_iter),
                    by_epoch=False)
        return self.last_ckpt

    def _write(self, runner, filename: str, meta: dict,
               by_epoch: bool) -> None:
        """Saves ``filename`` in the out dir (every rank calls it; rank 0
        writes) and only then points ``last_checkpoint`` at it."""
        self.last_ckpt = self.file_backend.join_path(self.out_dir, filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        runner.save_checkpoint(
            self.out_dir,
            filename,
            self.file_client_args,
            save_optimizer=self.save_optimizer,
            save_param_scheduler=self.save_param_scheduler,
            meta=meta,
            by_epoch=by_epoch,
            backend_args=self.backend_args,
            **self.args)
        if is_main_process():
            atomic_write(
                osp.join(runner.work_dir, 'last_checkpoint'),
                str(self.last_ckpt).encode())

    # -- validation does not consume training randomness ------------------
    def before_val(self, runner) -> None:
        self._val_rng = get_rng_state()

    def after_val(self, runner) -> None:
        if self._val_rng is not None:
            set_rng_state(self._val_rng)
            self._val_rng = None


class _RestOfEpoch:
    """An epoch loop's data loader for the epoch a mid-epoch checkpoint
    resumes: it draws and discards the ``skip`` batches trained before the
    checkpoint, then restores the generators and yields the rest."""

    def __init__(self, dataloader, skip: int, state: dict):
        self.dataloader, self._skip, self._state = dataloader, skip, state

    def __iter__(self):
        iterator = iter(self.dataloader)
        for _ in range(self._skip):
            next(iterator)
        set_rng_state(self._state)
        return iterator

    def __len__(self):
        return len(self.dataloader) - self._skip

    def __getattr__(self, name):
        if name == 'dataloader':  # not yet set (copy, unpickling)
            raise AttributeError(name)
        return getattr(self.dataloader, name)


# ---------------------------------------------------------------------------
# Any checkpoint hook
# ---------------------------------------------------------------------------
_RESUMABLE_CLASSES = {}


def _resumable_class(cls: Type[CheckpointHook]) -> Type[CheckpointHook]:
    """``cls`` with ResumableCheckpointHook's saving and resuming in front
    of it (one class per ``cls``, so that instances compare alike)."""
    if cls not in _RESUMABLE_CLASSES:
        _RESUMABLE_CLASSES[cls] = type(cls.__name__,
                                       (ResumableCheckpointHook, cls),
                                       {'__module__': cls.__module__})
    return _RESUMABLE_CLASSES[cls]


def make_resumable(hook) -> Optional[str]:
    """Gives a checkpoint hook of a config the guarantees of
    :class:`ResumableCheckpointHook` (atomic writes, safe rotation,
    generator states) by changing its class in place, before training
    starts. Returns None, or one line saying what is not guaranteed and
    why."""
    cls = type(hook)
    if isinstance(hook, ResumableCheckpointHook):
        return None
    if not isinstance(hook, CheckpointHook):
        return (f'{cls.__name__} is not a CheckpointHook: checkpoints are '
                'not written atomically and hold no generator states, so a '
                'killed run may not resume exactly')
    # A subclass that writes its own way keeps it: ours would bypass it.
    overridden = [
        name for name in ('_save_checkpoint_with_step', 'before_train',
                          'before_save_checkpoint', 'after_load_checkpoint')
        if getattr(cls, name) is not getattr(CheckpointHook, name)
    ]
    if '_save_checkpoint_with_step' in overridden:
        return (f'{cls.__module__}.{cls.__name__} overrides '
                '_save_checkpoint_with_step: its checkpoints are not written '
                'atomically nor rotated safely and hold no generator states; '
                'a killed run may not resume exactly (use '
                'patchscale_mm.ResumableCheckpointHook or CheckpointHook)')
    hook.__class__ = (ResumableCheckpointHook if cls is CheckpointHook else
                      _resumable_class(cls))
    hook._rng_states, hook._resumed, hook._val_rng = None, None, None
    return None


def _gather(state: dict) -> List[dict]:
    if get_world_size() == 1:
        return [state]
    return all_gather_object(state)
