"""Which checkpoint a rerun of the sweep continues.

A run's folder keeps the config text the run was started with
(``CONFIG_STAMP``; the Runner overwrites the config file itself with its
full dump). A rerun resumes an unfinished checkpoint only if its own config
trains the same thing: the two are parsed and compared as
:func:`patchscale_mm.engine.auto_resume.config_differences` compares a
checkpoint's config for ``tools/train.py``, where the sweep also lets the
checkpoint interval differ (``--checkpoint-every`` may change between the
pieces of a run; the logging interval is ignored by both).
"""
import re
from pathlib import Path
from typing import Optional

CONFIG_STAMP = 'run_config.txt'
# How often a run saves does not change what it trains.
MAY_DIFFER = ('default_hooks.checkpoint.interval', )


def stamp_config(work_dir: Path, config_text: str) -> None:
    """Records the config a run starts with."""
    (work_dir / CONFIG_STAMP).write_text(config_text)


def same_training(stamped_text: str, config_text: str) -> bool:
    """Whether two run configs train the same model on the same data for
    the same steps."""
    from mmengine.config import Config

    from patchscale_mm.engine.auto_resume import config_differences
    stamped, current = (Config.fromstring(text, '.py')
                        for text in (stamped_text, config_text))
    return not config_differences(stamped, current, also_ignored=MAY_DIFFER)


def resumable_checkpoint(run, work_dir: Path,
                         config_text: str) -> Optional[str]:
    """The checkpoint an interrupted run of the same training left, or None
    (no run yet, one of a different config, or one that trained to the end:
    its evaluation is redone by training again)."""
    from patchscale_mm.engine import find_resumable_checkpoint
    stamp = work_dir / CONFIG_STAMP
    if not stamp.is_file() or not same_training(stamp.read_text(),
                                                config_text):
        return None
    found = find_resumable_checkpoint(str(work_dir))
    step = found and checkpoint_iteration(found)
    return found if step and int(step) < run.steps else None


def checkpoint_iteration(path: str) -> Optional[str]:
    """``'.../iter_40.pth'`` -> ``'40'``; None for other names."""
    found = re.search(r'iter_(\d+)\.pth$', path)
    return found.group(1) if found else None
