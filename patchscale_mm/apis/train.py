"""Train a classifier, segmentor or detector from a config.

One entry point for the three tasks: the config's ``default_scope``
(mmpretrain, mmseg or mmdet) decides which registries build it.

    python -m patchscale_mm.train my_variant.py    # only the package installed
    python tools/train.py configs/seg/adv_b_p2_linear_ade20k.py
    tools/dist_train.sh configs/seg/adv_b_p2_linear_ade20k.py 8

The same command again continues the run from the work dir's newest
complete checkpoint (a requeued Slurm job, a worker restarted by torchrun),
if the config is the one that wrote it; ``--no-resume`` starts over.
"""
import os
import os.path as osp
from typing import Optional, Sequence

from patchscale_mm.datasets.safe_loading import (BadSampleError,
                                                 guard_train_dataset,
                                                 pop_skip_switch)
from patchscale_mm.engine import (CheckpointWriteError, NonFiniteLossError,
                                  find_resumable_checkpoint)
from patchscale_mm.engine.auto_resume import config_differences, saved_config
from patchscale_mm.engine.preemption_hook import (INTERRUPTED_EXIT_CODE,
                                                  TrainingInterrupted)
from patchscale_mm.config_checks import (config_problems, format_problems,
                                         memory_problem)
from .arguments import apply_cli_options, base_parser, parse_args
from .config import load_config
from .distributed import restart_store_warning
from .heartbeat import unresponsive_rank_message
from .runner import run


def build_parser():
    parser = base_parser(__doc__.splitlines()[0], 'train config file path')
    parser.add_argument(
        '--resume',
        nargs='?',
        type=str,
        const='auto',
        help='resume from this checkpoint, or without a value from the '
        'latest checkpoint in the work dir even if its config differs '
        '(without --resume, a run resumes from the work dir when the config '
        'is the same)')
    parser.add_argument(
        '--no-resume',
        action='store_true',
        help='train from scratch even if the work dir holds checkpoints')
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
    skip_bad_samples = pop_skip_switch(cfg)
    add_preemption_hook(cfg)
    if args.no_resume and args.resume is not None:
        raise SystemExit('error: --resume and --no-resume contradict each '
                         'other; pass one')
    if args.resume == 'auto':
        cfg.resume, cfg.load_from = True, resume_checkpoint(cfg.work_dir)
    elif args.resume is not None:
        cfg.resume, cfg.load_from = True, args.resume
    elif not args.no_resume:
        auto_resume(cfg)
    preflight(cfg, args)
    if args.preflight_only:
        return
    guard_train_dataset(cfg, skip_bad_samples)
    warning = restart_store_warning()
    if warning and is_first_rank():
        print(warning, flush=True)

    try:
        run(cfg, 'train')
    except TrainingInterrupted as e:
        if is_first_rank():
            print(f'training interrupted: {e}', flush=True)
        raise SystemExit(INTERRUPTED_EXIT_CODE) from None
    except (NonFiniteLossError, CheckpointWriteError) as e:
        raise SystemExit(logged(f'error: {e}')) from None
    except BadSampleError as e:
        raise SystemExit(logged(f'error: {e.one_line()}')) from None
    except RuntimeError as e:
        # A collective that timed out or lost its peer: name the rank.
        why = unresponsive_rank_message()
        if why is None:
            raise
        raise SystemExit(
            logged(f'error: {why} ({str(e).splitlines()[0]})')) from None


def logged(message: str) -> str:
    """Writes the line that ends a run to the run's log files too (the
    console gets it from SystemExit), so that the log says why it ended."""
    import logging

    from mmengine.logging import MMLogger
    if MMLogger._instance_dict:  # a Runner was built
        for handler in MMLogger.get_current_instance().handlers:
            if isinstance(handler, logging.FileHandler):
                handler.emit(logging.makeLogRecord(
                    dict(msg=message, levelno=logging.ERROR,
                         levelname='ERROR', name='mmengine')))
                handler.flush()
    return message


def is_first_rank() -> bool:
    """Rank 0 of a launched job, or a single process (before the process
    group exists, from the launcher's environment)."""
    return int(os.environ.get('RANK', os.environ.get('SLURM_PROCID', 0))) == 0


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


def add_preemption_hook(cfg) -> None:
    """Every run stops cleanly on SIGTERM/SIGUSR1 and gets the resume
    guarantees whatever its checkpoint hook is called (PreemptionHook)."""
    hooks = list(cfg.get('custom_hooks') or [])
    names = ('patchscale_mm.PreemptionHook', 'PreemptionHook')
    if not any(isinstance(h, dict) and h.get('type') in names
               for h in hooks):
        hooks.append(dict(type='patchscale_mm.PreemptionHook'))
    cfg.custom_hooks = hooks


def auto_resume(cfg) -> None:
    """Resumes from the work dir's newest complete checkpoint when the
    config is the one that wrote it; stops with one line when it is not."""
    if not osp.isdir(cfg.work_dir):
        return
    found = find_resumable_checkpoint(cfg.work_dir)
    if found is None:
        if osp.isfile(osp.join(cfg.work_dir, 'last_checkpoint')):
            raise SystemExit(
                f'error: {cfg.work_dir} has a last_checkpoint but no complete '
                'checkpoint to resume from; pass --no-resume to train from '
                'scratch in it')
        return
    saved = saved_config(found)
    differences = config_differences(saved, cfg) if saved else []
    if differences:
        more = (f' and {len(differences) - 1} more'
                if len(differences) > 1 else '')
        raise SystemExit(
            f'error: {found} was written by another config '
            f'({differences[0]}{more}); pass --no-resume to train from '
            'scratch in this work dir, --resume to resume anyway, or a new '
            '--work-dir')
    cfg.resume, cfg.load_from = True, found
    if is_first_rank():
        print(f'resuming from {found} (the same command resumes; '
              '--no-resume starts over)', flush=True)


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
