"""Training seconds across the pieces of a resumed run.

A run interrupted and resumed reports the time its steps took, not the time
of its last piece: each checkpoint's training seconds are kept in
``CLOCK_FILE`` of the run's folder as
``{"origin": wall time at which the latest piece's clock reads 0,
"checkpoints": {"<iteration>": seconds}}``.
"""
import json
import os
from pathlib import Path

from .resume import checkpoint_iteration
from .results import write_atomically

CLOCK_FILE = 'train_seconds.json'


def read_clock(path: Path) -> dict:
    return json.loads(path.read_text())


def write_clock(path: Path, clock: dict) -> None:
    write_atomically(path, json.dumps(clock))


def seconds_before(clock: dict, checkpoint: str) -> float:
    """Seconds of training up to ``checkpoint``.

    The sweep times a checkpoint when the trainer announces it. A sweep
    killed after the announcement but before reading it leaves the trainer a
    moment (until its lifeline fires) to finish the file untimed; such a file
    is the latest piece's (each resume times its own starting point), so its
    time is its modification time on that piece's clock."""
    timed = clock['checkpoints'].get(checkpoint_iteration(checkpoint))
    if timed is not None:
        return timed
    if 'origin' not in clock:  # the run's folder lost its clock file
        return 0.0
    return max(0.0, os.path.getmtime(checkpoint) - clock['origin'])
