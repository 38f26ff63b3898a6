"""The patch-size scaling sweep: the same small ViT and Adventurer trained at
several patch sizes through the real OpenMMLab Runners, evaluated on
held-out data, with a power law fitted to test loss against patch size.

Each run is ``python -m patchscale_mm.train`` on a config that inherits a
shipped sweep config (``configs/sweep/``) and overrides only the patch size,
the number of steps and the data, written into the run's folder so it can
be rerun alone. Results are appended to ``results.json`` after every run,
and a rerun of the sweep skips the runs already there; a run that was
interrupted resumes from its last checkpoint.

    plan         which runs, in which order (and the family names)
    data         the Fashion-MNIST datasets, or a user's folder
    overrides    the text of a run's config
    resume       which checkpoint a rerun continues
    supervise    one run as a child process; clock: its training seconds
    progress     how far the sweep is, how long it has left
    results      a run's size, cost and metrics; results.json / .csv
    report       the table and the power-law fits
    predictions  predictions.png
    loop         run_sweep(), all of the above in order
"""
from .loop import DEFAULT_PATCHES, DEFAULT_STEPS, run_sweep
from .overrides import CHECKPOINT_EVERY
from .plan import FAMILIES, TASKS, Run, plan_runs
from .supervise import RunFailed

__all__ = [
    'CHECKPOINT_EVERY', 'DEFAULT_PATCHES', 'DEFAULT_STEPS', 'FAMILIES',
    'TASKS', 'Run', 'RunFailed', 'plan_runs', 'run_sweep'
]
