"""How far a sweep is and how long it has left, from the runs timed so far."""
from typing import Dict, Optional, Sequence

import numpy as np

from .plan import Run


def _step_cost_shape(timed: Sequence[tuple]):
    """Seconds per step against tokens, fitted to one (task, family)'s timed
    runs ``(Run, seconds)``; None with fewer than two token counts.

    A step costs a fixed part (loading the batch, the optimizer, and the
    run's start spread over its steps) plus a part linear in the tokens
    (the blocks and the evaluation; attention's quadratic term is small at
    the sweep's widths). The fixed part dominates small runs, so a cost
    simply proportional to the tokens would promise far too long a sweep.
    """
    t = np.array([run.tokens for run, _ in timed], dtype=float)
    s = np.array([seconds / run.steps for run, seconds in timed])
    if np.unique(t).size < 2:
        return None
    slope, fixed = np.polyfit(t, s, 1)
    if slope < 0:  # noise larger than the token effect
        return lambda tokens: float(s.mean())
    if fixed < 0:
        slope, fixed = np.sum(t * s) / np.sum(t * t), 0.
    return lambda tokens: float(fixed + slope * tokens)


def _seconds_per_step(run: Run, timed: Sequence[tuple],
                      order: Sequence[Run]) -> float:
    """Seconds per step of ``run`` from the timed runs ``(Run, seconds)``.

    The level comes from the nearest evidence: the timed runs of the same
    task and family (families and tasks differ in cost per token), else of
    the same task, else all. The shape against tokens
    (:func:`_step_cost_shape`) comes from the run's own (task, family) if
    two of its token counts are timed, else from the first such of its
    task, else of any, in the order of ``order`` (the plan): the fixed and
    per-token parts differ less between groups than their levels do. With
    no such group yet, the cost is proportional to the tokens, an
    overestimate that the second timed token count corrects.
    """
    near = ((lambda r: (r.task, r.family) == (run.task, run.family)),
            (lambda r: r.task == run.task), (lambda r: True))
    level = next(pool for pool in ([(r, sec) for r, sec in timed if same(r)]
                                   for same in near) if pool)
    groups = sorted(dict.fromkeys((r.task, r.family) for r in order),
                    key=lambda g: (g != (run.task, run.family),
                                   g[0] != run.task))  # stable: plan order
    for group in groups:
        shape = _step_cost_shape([(r, sec) for r, sec in timed
                                  if (r.task, r.family) == group])
        if shape and group == (run.task, run.family):
            return shape(run.tokens)  # fitted to the level itself
        if shape:
            break
    else:
        shape = float  # proportional to the tokens
    ratio = np.mean([sec / r.steps / shape(r.tokens) for r, sec in level])
    return float(ratio * shape(run.tokens))


def sweep_progress(runs: Sequence[Run],
                   finished: Dict[str, Optional[float]]) -> tuple:
    """``(percent done, seconds left)`` of the sweep ``runs``.

    ``finished`` maps the names of the runs done so far to the seconds they
    took, or None when unknown (a run skipped on resume whose record has no
    time): such a run counts as done, but not as evidence of speed. A run
    not timed costs its steps times the seconds per step predicted from the
    timed ones (:func:`_seconds_per_step`). Before any run is timed the
    seconds left are None and runs weigh steps x tokens.
    """
    timed = [(r, finished[r.name]) for r in runs
             if finished.get(r.name) is not None]
    if not timed:
        weight = {r.name: r.steps * r.tokens for r in runs}
        done = sum(weight[name] for name in finished if name in weight)
        return 100. * done / max(sum(weight.values()), 1), None
    done = left = 0.
    for run in runs:
        seconds = finished.get(run.name)
        if seconds is None:
            seconds = run.steps * _seconds_per_step(run, timed, runs)
        if run.name in finished:
            done += seconds
        else:
            left += seconds
    total = done + left
    return (100. * done / total if total > 0 else 100.), left


def format_duration(seconds: float) -> str:
    """'40 s', '6 min', '2.3 h': as precise as an estimate deserves."""
    if seconds < 90:
        return f'{seconds:.0f} s'
    if seconds < 90 * 60:
        return f'{seconds / 60:.0f} min'
    return f'{seconds / 3600:.1f} h'


class ProgressLine:
    """The run lines' 'sweep 31%, about 6 min left' over one sweep ``runs``.

    A run that costs more than estimated raises the time left, but the shown
    percentage does not move backwards: it is the highest so far.
    """

    def __init__(self, runs: Sequence[Run]):
        self.runs = runs
        self.shown = 0.

    def note(self, finished: Dict[str, Optional[float]]) -> str:
        percent, left = sweep_progress(self.runs, finished)
        self.shown = max(self.shown, percent)
        if left is None:
            return f'sweep {self.shown:.0f}%, time left known after the first run'
        return f'sweep {self.shown:.0f}%, about {format_duration(left)} left'
