"""Stop on a scheduler's signal with one complete checkpoint, and requeue.

Slurm warns a job before it kills it: at preemption and at the time limit
it sends SIGTERM (then SIGKILL after ``KillWait``/``GraceTime``), and
``--signal=[B:]USR1@120`` sends SIGUSR1 two minutes earlier. torchrun and
Kubernetes stop workers with SIGTERM too. :class:`PreemptionHook` turns
those signals into a clean stop:

* the handler only records the signal, so the current iteration finishes;
* after every iteration the ranks agree (one all-reduce of a flag), so they
  all stop after the same iteration even if the signal reached only some;
* the config's checkpoint hook writes one complete checkpoint with the
  generator states (:meth:`ResumableCheckpointHook.save_now`), atomically;
* under Slurm, a job that may be requeued (``--requeue``) requeues itself
  with ``scontrol requeue``; the requeued job runs the same command, which
  resumes from that checkpoint (``tools/train.py`` resumes by default);
* training then ends with :class:`TrainingInterrupted`.

Before training it also gives the config's checkpoint hook, whatever its
name, the atomic writes and generator states of ``ResumableCheckpointHook``
(:func:`make_resumable`), or says in one line what it cannot guarantee; and
it starts the heartbeat that names a rank that stops answering
(:class:`patchscale_mm.apis.heartbeat.Heartbeat`).
"""
import logging
import signal
from typing import Optional, Sequence

import torch
from mmengine.dist import all_reduce, barrier, is_main_process
from mmengine.hooks import CheckpointHook, Hook
from mmengine.logging import print_log

from patchscale_mm.registry import HOOKS
from patchscale_mm.apis.heartbeat import start_heartbeat
from patchscale_mm.apis.slurm import requeue_slurm_job, slurm_job_id
from .resumable_checkpoint_hook import make_resumable

# sysexits' EX_TEMPFAIL: stopped before the end, run the command again.
INTERRUPTED_EXIT_CODE = 75


class TrainingInterrupted(Exception):
    """Training stopped on a signal, after a complete checkpoint."""


@HOOKS.register_module()
class PreemptionHook(Hook):
    """Stops training cleanly on ``signals`` (see the module docstring).

    Args:
        signals: names of the signals that stop training.
        requeue: requeue the Slurm job after the checkpoint when Slurm
            allows it.
    """

    priority = 'LOWEST'  # after the checkpoint hook's own periodic save

    def __init__(self,
                 signals: Sequence[str] = ('SIGTERM', 'SIGUSR1'),
                 requeue: bool = True):
        self.signals = [signal.Signals[name] for name in signals]
        self.requeue = requeue
        self._received: Optional[str] = None
        self._previous = {}
        self._checkpoint_hook = None
        self.heartbeat = None

    # -- set-up -------------------------------------------------------------
    def before_run(self, runner) -> None:
        self._checkpoint_hook = self._resumable_checkpoint_hook(runner)
        # Before the data loader forks its workers, which inherit the
        # handler instead of dying of SIGUSR1's default action.
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._on_signal)
        self.heartbeat = start_heartbeat()

    @staticmethod
    def _resumable_checkpoint_hook(runner):
        hooks = [h for h in runner.hooks if isinstance(h, CheckpointHook)]
        if not hooks:
            print_log(
                'no checkpoint hook in the config: nothing is saved, so a '
                'killed or preempted run starts again from scratch',
                logger='current', level=logging.WARNING)
            return None
        for hook in hooks:
            problem = make_resumable(hook)
            if problem:
                print_log(problem, logger='current', level=logging.WARNING)
        hook = hooks[0]
        return hook if hasattr(hook, 'save_now') else None

    def _on_signal(self, signum, frame) -> None:
        # Only note it: the iteration in progress finishes first.
        if self._received is None:
            self._received = signal.Signals(signum).name
            print_log(f'received {self._received}: stopping after this '
                      'iteration with a checkpoint', logger='current')

    def after_run(self, runner) -> None:
        self._restore()

    def _restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}
        if self.heartbeat is not None:
            self.heartbeat.stop()
            self.heartbeat = None

    # -- stopping -----------------------------------------------------------
    def after_train_iter(self,
                         runner,
                         batch_idx: int,
                         data_batch=None,
                         outputs=None) -> None:
        if not self._agreed_to_stop():
            return
        what = self._received or 'a signal on another rank'
        path = None
        if self._checkpoint_hook is not None:
            path = self._checkpoint_hook.save_now(runner)
        barrier()  # every rank is done with the checkpoint
        saved = (f'checkpoint {path} written' if path else
                 'no checkpoint hook, nothing saved')
        message = (f'stopped on {what} after iteration {runner.iter + 1}; '
                   f'{saved}')
        if self.requeue and is_main_process() and slurm_job_id():
            # Said first: requeueing ends this job's processes at once.
            print_log(f'{message}; requeueing Slurm job {slurm_job_id()}',
                      logger='current')
            message += requeue_slurm_job()
        self._restore()
        raise TrainingInterrupted(f'{message}; the same command resumes it')

    def _agreed_to_stop(self) -> bool:
        """Whether any rank received a signal: the ranks stop together."""
        flag = torch.tensor([1 if self._received else 0])
        all_reduce(flag, op='max')  # no-op on a single process
        return bool(flag.item())
