"""Evaluate a checkpoint on a config's test set (top-1, mIoU or box/mask AP).

    python -m patchscale_mm.test CONFIG CHECKPOINT [--out results.pkl]
    python tools/test.py CONFIG CHECKPOINT --show-dir pictures [--show-limit 20]
    python tools/test.py CONFIG CHECKPOINT --tta      # segmentation, detection
    tools/dist_test.sh CONFIG CHECKPOINT 8
"""
import os.path as osp
from typing import Optional, Sequence

from patchscale_mm.engine import CheckpointError, check_checkpoint_file
from patchscale_mm.config_checks import config_problems, format_problems
from .arguments import apply_cli_options, base_parser, parse_args
from .config import load_config
from .runner import run

# Each task's own visualizer: scope -> (type, drawing method, its extra
# arguments); classifications drawn at 224 px on the short edge, detections
# scoring above 0.3.
VISUALIZERS = dict(
    mmpretrain=('mmpretrain.UniversalVisualizer', 'visualize_cls',
                dict(resize=224)),
    mmseg=('mmseg.SegLocalVisualizer', 'add_datasample', dict()),
    mmdet=('mmdet.DetLocalVisualizer', 'add_datasample',
           dict(pred_score_thr=0.3)))


def build_parser():
    parser = base_parser(__doc__.splitlines()[0], 'test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument(
        '--out', help='also dump the raw predictions to this pickle file')
    parser.add_argument(
        '--show-dir',
        help='write one picture per test image to this folder: the '
        'prediction drawn over the image, ground truth beside it')
    parser.add_argument(
        '--show-limit', type=int, metavar='N',
        help='with --show-dir: only the first N test images')
    parser.add_argument(
        '--tta', action='store_true',
        help="test-time augmentation (multi-scale + flip): the config's "
        'tta_model and tta_pipeline')
    return parser


def check_show_args(args, scope: str):
    if args.show_limit is not None and not args.show_dir:
        raise SystemExit('error: --show-limit needs --show-dir')
    if args.show_limit is not None and args.show_limit < 1:
        raise SystemExit(f'error: --show-limit must be at least 1, got '
                         f'{args.show_limit}')
    if args.show_dir and scope not in VISUALIZERS:
        raise SystemExit(f'error: --show-dir: no visualizer for '
                         f"default_scope '{scope}' (one of "
                         f'{", ".join(VISUALIZERS)})')


def enable_show(cfg, show_dir: str, limit: Optional[int]):
    """The task's visualizer and :class:`ShowPredictionsHook`."""
    visualizer, method, draw_cfg = VISUALIZERS[cfg.default_scope]
    cfg.visualizer = dict(
        type=visualizer,
        name='visualizer',
        vis_backends=[dict(type='LocalVisBackend')])
    cfg.custom_hooks = list(cfg.get('custom_hooks', [])) + [
        dict(type='patchscale_mm.ShowPredictionsHook',
             out_dir=osp.abspath(show_dir), limit=limit, method=method,
             draw_cfg=draw_cfg)
    ]


def enable_tta(cfg, config_path: str):
    """mmseg's and mmdet's convention: the test set through
    ``tta_pipeline``, the model wrapped in ``tta_model``."""
    missing = [key for key in ('tta_model', 'tta_pipeline') if key not in cfg]
    if missing:
        raise SystemExit(f'error: --tta: {config_path} has no '
                         f'{" or ".join(missing)} (segmentation and detection '
                         'configs inherit them from their dataset base)')
    if cfg.default_scope == 'mmseg':
        # Rescaled views need not be multiples of the patch: pad them in the
        # data preprocessor, which records the padding for the logits' crop.
        patch = cfg.model.backbone.get('patch_size', 16)
        patch = max(patch) if isinstance(patch, (tuple, list)) else patch
        cfg.model.data_preprocessor.test_cfg = dict(size_divisor=patch)
    cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
    cfg.tta_model.module = cfg.model
    cfg.model = cfg.tta_model


def main(argv: Optional[Sequence[str]] = None):
    args = parse_args(build_parser(), argv)
    try:  # complete, and loadable without running code
        check_checkpoint_file(args.checkpoint)
    except CheckpointError as e:
        raise SystemExit(f'error: {e}') from None
    cfg = load_config(args.config)
    apply_cli_options(cfg, args, osp.splitext(osp.basename(args.config))[0])
    check_show_args(args, cfg.get('default_scope'))
    cfg.load_from = args.checkpoint
    problems = config_problems(cfg, 'test', list(args.cfg_options or {}))
    if problems:
        raise SystemExit(format_problems(problems, args.config))
    if args.tta:
        enable_tta(cfg, args.config)
    if args.show_dir:
        enable_show(cfg, args.show_dir, args.show_limit)
    if args.out:
        evaluators = cfg.test_evaluator
        if not isinstance(evaluators, (list, tuple)):
            evaluators = [evaluators]
        cfg.test_evaluator = list(evaluators) + [
            dict(type='mmengine.DumpResults', out_file_path=args.out)
        ]
    run(cfg, 'test')
