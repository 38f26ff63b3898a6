"""Which runs a sweep trains, in which order."""
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Union

from patchscale_mm.models.zoo import resolve_family

# The shipped configs, in a checkout and in an installed wheel alike.
SWEEP_CONFIGS = Path(__file__).parents[1] / '.mim' / 'configs' / 'sweep'
# The sweep's name of each model family (in run names and results) and the
# suffix of its shipped config ``fmnist_<task>_<suffix>.py``, by the model
# zoo's canonical family; any alias the zoo knows is accepted.
FAMILIES = {
    'deit': ('vit', 'vit'),
    'adventurer': ('adventurer', 'adv'),
}
TASKS = ('seg', 'cls')
# What each task reports: (metric key in MMEngine's scalars, its name).
TASK_METRIC = {'seg': ('mIoU', 'mIoU'), 'cls': ('accuracy/top1', 'top1')}


@dataclass
class Run:
    """One training run of the sweep."""
    task: str
    family: str  # 'vit' or 'adventurer'
    patch: int
    steps: int
    img_size: int = 32

    @property
    def name(self) -> str:
        return f'{self.task}_{self.family}_p{self.patch}'

    @property
    def base_config(self) -> Path:
        suffix = FAMILIES[resolve_family(self.family)][1]
        return SWEEP_CONFIGS / f'fmnist_{self.task}_{suffix}.py'

    @property
    def tokens(self) -> int:
        return (self.img_size // self.patch)**2


def plan_runs(tasks: Sequence[str], families: Sequence[str],
              patches: Dict[str, Sequence[int]], steps: Dict[str, int],
              img_size: Union[int, Dict[str, int]] = 32) -> List[Run]:
    """Runs in the order they execute: per task, per family, large patches
    first (cheap runs give early results). ``img_size`` is one input size
    for every task or a dict task -> size."""
    runs = []
    for task in tasks:
        if task not in TASKS:
            raise ValueError(f'unknown task {task!r}; valid: {TASKS}')
        if steps[task] < 1:
            raise ValueError(f'{task} steps must be >= 1, got {steps[task]}')
        size = img_size[task] if isinstance(img_size, dict) else img_size
        for family in families:
            family = FAMILIES[resolve_family(family)][0]
            for patch in sorted(patches[task], reverse=True):
                if patch < 1 or size % patch:
                    raise ValueError(
                        f'patch size {patch} does not divide the {size}px '
                        f'images of the {task} task; use divisors of {size}')
                runs.append(Run(task, family, patch, steps[task], size))
    return runs
