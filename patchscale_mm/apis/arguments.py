"""The command-line options that train and test share, and how they apply
to a config (the OpenMMLab order: command line > config > defaults)."""
import argparse
import os
from pathlib import Path
from typing import Optional, Sequence

from mmengine.config import Config, DictAction


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


def apply_cli_options(cfg: Config, args, default_work_dir: str) -> Config:
    """Merges ``--cfg-options`` and picks the work dir the OpenMMLab way:
    command line > config > ``work_dirs/<config stem>``."""
    if getattr(args, 'cfg_options', None):
        cfg.merge_from_dict(args.cfg_options)
    if getattr(args, 'work_dir', None):
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = str(Path('work_dirs') / default_work_dir)
    cfg.launcher = args.launcher
    return cfg
