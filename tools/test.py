"""Evaluate a checkpoint on a config's test set (top-1, mIoU or box/mask AP).

    python tools/test.py CONFIG CHECKPOINT [--out results.pkl]
    tools/dist_test.sh CONFIG CHECKPOINT 8
"""
import argparse
import os
import os.path as osp

from mmengine.config import Config, DictAction
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from patchscale_mm.engine import CheckpointError, check_checkpoint_file
from patchscale_mm.utils import (add_rank_log_file, apply_cli_options,
                                 init_cpu_distributed, shutdown_distributed)
from patchscale_mm.utils.preflight import config_problems, format_problems


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='where the evaluation log goes')
    parser.add_argument(
        '--out', help='also dump the raw predictions to this pickle file')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config entries, e.g. test_dataloader.batch_size=1')
    parser.add_argument(
        '--launcher',
        choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none',
        help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def main():
    args = parse_args()
    try:  # complete, and loadable without running code
        check_checkpoint_file(args.checkpoint)
    except CheckpointError as e:
        raise SystemExit(f'error: {e}') from None
    cfg = Config.fromfile(args.config)
    apply_cli_options(cfg, args,
                      osp.splitext(osp.basename(args.config))[0])
    cfg.load_from = args.checkpoint
    problems = config_problems(cfg, 'test', list(args.cfg_options or {}))
    if problems:
        raise SystemExit(format_problems(problems, args.config))
    if args.out:
        evaluators = cfg.test_evaluator
        if not isinstance(evaluators, (list, tuple)):
            evaluators = [evaluators]
        cfg.test_evaluator = list(evaluators) + [
            dict(type='mmengine.DumpResults', out_file_path=args.out)
        ]

    init_cpu_distributed(cfg)
    try:
        runner = (RUNNERS.build(cfg)
                  if 'runner_type' in cfg else Runner.from_cfg(cfg))
        add_rank_log_file(runner)
        runner.test()
    finally:
        shutdown_distributed()


if __name__ == '__main__':
    main()
