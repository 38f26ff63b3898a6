"""Train a classifier, segmentor or detector from a config.

One entry point for the three tasks: the config's ``default_scope``
(mmpretrain, mmseg or mmdet) decides which registries build it.

    python -m patchscale_mm.train my_variant.py    # only the package installed
    python tools/train.py configs/seg/adv_b_p2_linear_ade20k.py
    tools/dist_train.sh configs/seg/adv_b_p2_linear_ade20k.py 8
"""
import os
import os.path as osp
from typing import Optional, Sequence

from patchscale_mm.cli import base_parser, load_config, parse_args, run
from patchscale_mm.engine import NonFiniteLossError, find_resumable_checkpoint
from patchscale_mm.utils import apply_cli_options
from patchscale_mm.utils.preflight import (config_problems, format_problems,
                                           memory_problem)


def build_parser():
    parser = base_parser(__doc__.splitlines()[0], 'train config file path')
    parser.add_argument(
        '--resume',
        nargs='?',
        type=str,
        const='auto',
        help='resume from this checkpoint, or without a value from the '
        'latest checkpoint in the work dir')
    parser.add_argument(
        '--amp', action='store_true', help='mixed precision (CUDA only)')
    parser.add_argument(
        '--auto-scale-lr',
        action='store_true',
        help='scale the lr by the actual batch size over the config\'s '
        'auto_scale_lr.base_batch_size')
    parser.add_argument(
        '--preflight-only',
        action='store_true',
        help='run the pre-flight checks and exit (tools/dist_train.sh runs '
        'them once before starting its processes)')
    parser.add_argument(
        '--skip-memory-check',
        action='store_true',
        help='train even where the estimated peak memory exceeds the '
        'device\'s')
    return parser


def main(argv: Optional[Sequence[str]] = None):
    args = parse_args(build_parser(), argv)
    cfg = load_config(args.config)
    apply_cli_options(cfg, args, osp.splitext(osp.basename(args.config))[0])

    if args.amp:
        import torch
        if not torch.cuda.is_available():
            raise SystemExit('--amp needs a CUDA device (MMEngine\'s '
                             'AmpOptimWrapper); drop it to train in fp32')
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
    else:
        amp_to_fp32_without_cuda(cfg)
    if args.auto_scale_lr:
        if 'auto_scale_lr' not in cfg or 'base_batch_size' not in \
                cfg.auto_scale_lr:
            raise SystemExit('--auto-scale-lr needs auto_scale_lr.'
                             'base_batch_size in the config')
        cfg.auto_scale_lr.enable = True
    if args.resume == 'auto':
        cfg.resume, cfg.load_from = True, resume_checkpoint(cfg.work_dir)
    elif args.resume is not None:
        cfg.resume, cfg.load_from = True, args.resume
    preflight(cfg, args)
    if args.preflight_only:
        return

    try:
        run(cfg, 'train')
    except NonFiniteLossError as e:
        raise SystemExit(f'error: {e}') from None


def is_first_rank() -> bool:
    """Rank 0 of a launched job, or a single process (before the process
    group exists, from the launcher's environment)."""
    return int(os.environ.get('RANK', 0)) == 0


def amp_to_fp32_without_cuda(cfg) -> None:
    """The recipes train in bf16 mixed precision (MMEngine's
    AmpOptimWrapper, which needs CUDA); without a GPU the same config
    trains in float32."""
    import torch
    wrapper = cfg.get('optim_wrapper') or {}
    if wrapper.get('type') != 'AmpOptimWrapper' or torch.cuda.is_available():
        return
    wrapper.type = 'OptimWrapper'
    for key in ('dtype', 'loss_scale', 'use_fsdp'):
        wrapper.pop(key, None)
    if is_first_rank():
        print('no CUDA device: training in float32 (the config\'s '
              'AmpOptimWrapper needs CUDA)', flush=True)


def resume_checkpoint(work_dir: str):
    """The newest complete checkpoint of the work dir; None (train from
    scratch) when the run has none yet."""
    found = find_resumable_checkpoint(work_dir)
    if found is None and osp.isfile(osp.join(work_dir, 'last_checkpoint')):
        raise SystemExit(f'--resume: {work_dir} has a last_checkpoint but '
                         'no complete checkpoint to resume from')
    return found


def preflight(cfg, args):
    """Stops, before anything is built, on problems in the config and on a
    run that cannot fit in memory."""
    problems = config_problems(cfg, 'train', list(args.cfg_options or {}))
    if not args.skip_memory_check:
        problems += filter(None, [memory_problem(cfg)])
    if problems:
        # Every rank finds the same problems; one of them says so.
        raise SystemExit(format_problems(problems, args.config)
                         if is_first_rank() else 2)


if __name__ == '__main__':
    main()
