"""What ``python -m patchscale_mm.train`` and ``python -m patchscale_mm.test``
share: the common command-line options, loading a config (``patchscale_mm::``
bases included) and running it with a Runner.

``tools/train.py`` and ``tools/test.py`` in the checkout, and their copies in
``patchscale_mm/.mim/tools`` that mim runs, call the same ``main``.
"""
import argparse
import gc
import os
import os.path as osp
from typing import Optional, Sequence

from mmengine.config import Config, DictAction
from mmengine.config.utils import MODULE2PACKAGE
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from patchscale_mm.parallel import (init_sequence_parallel,
                                    prepare_sequence_parallel,
                                    sequence_parallel_size, set_current)
from patchscale_mm.utils import (add_rank_log_file, init_cpu_distributed,
                                 shutdown_distributed, synchronize_ranks)

SCOPE = 'patchscale_mm'


def base_parser(description: str, config_help: str) -> argparse.ArgumentParser:
    """A parser with the options train and test both take; each adds its
    own (test its ``checkpoint`` positional right after ``config``)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument('config', help=config_help)
    parser.add_argument('--work-dir', help='where logs (and checkpoints) go')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config entries, e.g. model.backbone.patch_size=4')
    parser.add_argument(
        '--launcher',
        choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none',
        help='job launcher')
    # torch.distributed.launch passes --local-rank; torchrun sets LOCAL_RANK.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    return parser


def parse_args(parser: argparse.ArgumentParser,
               argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def register_config_package() -> None:
    """Lets configs inherit ours with ``_base_ = 'patchscale_mm::seg/...'``.

    MMEngine follows ``pkg::`` bases only of the packages in its
    ``MODULE2PACKAGE`` and reads ``<package dir>/.mim/configs``. It finds a
    listed distribution's directory from the distribution's location, which
    for an editable install is site-packages, not the checkout; naming a
    module of the package instead makes it ask importlib, which finds the
    copy that is imported (wheel, editable checkout or source tree).
    """
    MODULE2PACKAGE.setdefault(SCOPE, f'{SCOPE}.version')


def _drop_package_scope(node) -> None:
    """Removes the ``_scope_='patchscale_mm'`` MMEngine gives every built
    object of a ``patchscale_mm::`` base: our configs build under their own
    ``default_scope`` (mmpretrain, mmseg, mmdet) and name our classes with
    the ``patchscale_mm.`` prefix, while our scope's registries know none of
    the downstream classes (``EncoderDecoder``, ``LoggerHook``)."""
    if isinstance(node, dict):
        if node.get('_scope_') == SCOPE:
            node.pop('_scope_')
        for value in node.values():
            _drop_package_scope(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            _drop_package_scope(value)


def load_config(path: str) -> Config:
    """``Config.fromfile`` that also resolves ``patchscale_mm::`` bases;
    a missing file (the config or one of its bases) is a one-line error."""
    register_config_package()
    if not osp.isfile(path):
        raise SystemExit(f'error: config file {path} not found')
    try:
        cfg = Config.fromfile(path)
    except FileNotFoundError as e:
        raise SystemExit(f'error: {path}: {e}') from None
    for key in list(cfg.keys()):
        _drop_package_scope(cfg[key])
    return cfg


def run(cfg: Config, method: str):
    """Builds the Runner (or ``cfg.runner_type``) and calls
    ``runner.<method>()``, in a gloo process group on a distributed run
    without GPUs."""
    init_cpu_distributed(cfg)
    sequence_size = sequence_parallel_size(cfg) if method == 'train' else 1
    if sequence_size > 1:
        prepare_sequence_parallel(cfg)
    runner = None
    try:
        runner = (
            RUNNERS.build(cfg)
            if 'runner_type' in cfg else Runner.from_cfg(cfg))
        if sequence_size > 1:  # the process group exists now
            group = init_sequence_parallel(sequence_size)
            runner.logger.info(
                f'sequence parallelism: each image split over {group.size} '
                f'ranks, {group.dp_size} data-parallel replica(s); this rank '
                f'holds shard {group.rank} of replica {group.dp_rank}')
        add_rank_log_file(runner)
        getattr(runner, method)()
        synchronize_ranks()
    finally:
        # The Runner's DDP wrapper holds the process group: drop it first, so
        # that the group is torn down here and not during interpreter exit.
        del runner
        set_current(None)
        gc.collect()
        shutdown_distributed()
