"""Pre-flight checks: find an impossible configuration before any model or
data is built, rather than at the first iteration (or the first OOM) of a
run that waited hours for its GPUs.

:func:`config_problems` reads the config only (registries are consulted for
classes and signatures, nothing is instantiated) and returns one line per
problem: generic ones (:mod:`.keys`, :mod:`.paths`) and those that know our
backbones (:mod:`.backbone`). :func:`memory_problem` (:mod:`.memory`)
compares the analytic training-memory model with the device's memory.
``tools/train.py`` runs both and ``tools/test.py`` the first; they stop with
the lines before building anything.
"""
from typing import List, Sequence

from mmengine.config import Config

from .backbone import channel_problems, input_problems, resolve_backbone
from .keys import models_registry, unknown_model_keys, unread_top_level_keys
from .memory import estimate_training_memory, memory_problem
from .paths import checkpoint_problems, data_problems


def config_problems(cfg: Config,
                    mode: str = 'train',
                    cli_keys: Sequence[str] = ()) -> List[str]:
    """Every problem found in ``cfg``, one line each.

    Args:
        cfg (Config): The config, with command-line overrides merged.
        mode (str): ``'train'`` (train and val data) or ``'test'``.
        cli_keys (Sequence[str]): The keys given to ``--cfg-options``.
    """
    registry = models_registry(cfg)
    problems = unread_top_level_keys(cfg, cli_keys) + unknown_model_keys(
        cfg, registry)
    info, backbone_problems = resolve_backbone(cfg, registry)
    problems += backbone_problems
    if info is not None:
        problems += input_problems(cfg, info) + channel_problems(cfg, info)
    if mode == 'train':
        from patchscale_mm.parallel.setup import sequence_parallel_problems
        problems += sequence_parallel_problems(cfg)
    return problems + data_problems(cfg, mode) + checkpoint_problems(
        cfg, mode)


def format_problems(problems: Sequence[str], config: str) -> str:
    """The problems as one message, a line each under the config's name."""
    lines = [f'pre-flight check of {config} failed:']
    lines += [f'  - {p}' for p in problems]
    return '\n'.join(lines)


__all__ = [
    'config_problems', 'estimate_training_memory', 'format_problems',
    'memory_problem'
]
