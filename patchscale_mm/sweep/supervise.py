"""One run of the sweep as a child process: started, watched and timed.

The trainer runs through :mod:`patchscale_mm.apis.lifeline`, so that a
sweep killed by any signal cannot leave its run training beside the rerun
that resumes it.
"""
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from .clock import CLOCK_FILE, read_clock, seconds_before, write_clock
from .plan import Run
from .resume import checkpoint_iteration

PROGRESS = re.compile(r'Iter\(train\)\s*\[\s*(\d+)/(\d+)\].*?loss: ([\d.]+)')
SAVING = re.compile(r'Saving checkpoint at (\d+) iterations')


class RunFailed(RuntimeError):
    """A run's trainer exited with an error."""


def run_env(threads: Optional[int] = None, device: str = 'cpu') -> dict:
    """The environment of a run: ``threads`` torch threads if given; on
    ``device='cpu'`` no GPU is visible, so that a sweep on a GPU machine
    trains where it was asked to."""
    env = dict(os.environ)
    if threads is not None:
        env['OMP_NUM_THREADS'] = str(threads)
    if device == 'cpu':
        env['CUDA_VISIBLE_DEVICES'] = ''
    return env


def train_run(run: Run, config: Path, work_dir: Path, log,
              resume_from: Optional[str] = None,
              threads: Optional[int] = None, device: str = 'cpu') -> float:
    """Trains ``run`` with ``python -m patchscale_mm.train`` (resuming from
    ``resume_from`` if given, with ``threads`` torch threads if given, on
    ``device``), echoing its training progress; returns the seconds of
    training."""
    start = time.time()
    cmd = [sys.executable, '-m', 'patchscale_mm.apis.lifeline',
           'patchscale_mm.train', str(config), '--work-dir', str(work_dir)]
    clock_path = work_dir / CLOCK_FILE
    clock = {'checkpoints': {}}
    if not resume_from:  # a retrained run starts over its work dir
        cmd += ['--no-resume']
    else:
        cmd += ['--resume', resume_from]
        if clock_path.is_file():
            clock = read_clock(clock_path)
        before = seconds_before(clock, resume_from)
        clock['checkpoints'][checkpoint_iteration(resume_from)] = before
        start -= before
        log(f'    {run.name}: resuming from {Path(resume_from).name} '
            f'({before:.0f}s of training before)')
    clock['origin'] = start
    write_clock(clock_path, clock)
    env = run_env(threads, device)
    # Line-buffered: an interrupted sweep keeps its run's log to the end.
    with open(work_dir / 'train.log', 'a' if resume_from else 'w',
              buffering=1) as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env=env)
        try:
            for line in proc.stdout:
                out.write(line)
                saving = SAVING.search(line)
                if saving:
                    clock['checkpoints'][saving.group(1)] = round(
                        time.time() - start, 1)
                    write_clock(clock_path, clock)
                progress = PROGRESS.search(line)
                if progress:
                    step, total, loss = progress.groups()
                    log(f'    {run.name}: step {step}/{total}  loss {loss}  '
                        f'{time.time() - start:.0f}s')
            code = proc.wait()
        finally:  # an interrupted sweep must not leave its run training
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdin.close()
    if code:
        raise RunFailed(f'{run.name} failed (exit {code}); see '
                        f'{work_dir / "train.log"}')
    return time.time() - start
