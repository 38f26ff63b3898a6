"""Evaluate a checkpoint on a config's test set (top-1, mIoU or box/mask AP).

    python -m patchscale_mm.test CONFIG CHECKPOINT [--out results.pkl]
    python tools/test.py CONFIG CHECKPOINT
    tools/dist_test.sh CONFIG CHECKPOINT 8
"""
import os.path as osp
from typing import Optional, Sequence

from patchscale_mm.cli import base_parser, load_config, parse_args, run
from patchscale_mm.engine import CheckpointError, check_checkpoint_file
from patchscale_mm.utils import apply_cli_options
from patchscale_mm.utils.preflight import config_problems, format_problems


def build_parser():
    parser = base_parser(__doc__.splitlines()[0], 'test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument(
        '--out', help='also dump the raw predictions to this pickle file')
    return parser


def main(argv: Optional[Sequence[str]] = None):
    args = parse_args(build_parser(), argv)
    try:  # complete, and loadable without running code
        check_checkpoint_file(args.checkpoint)
    except CheckpointError as e:
        raise SystemExit(f'error: {e}') from None
    cfg = load_config(args.config)
    apply_cli_options(cfg, args, osp.splitext(osp.basename(args.config))[0])
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
    run(cfg, 'test')


if __name__ == '__main__':
    main()
