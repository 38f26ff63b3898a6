"""Patch-size scaling sweep on real data: does a smaller patch lower the test
loss, following a power law, as the paper finds?

By default (about 6 minutes on a 2-vCPU machine) it trains a small ViT and a
small Adventurer (width 64, depth 4) from scratch at several patch sizes on
two tasks built from Fashion-MNIST (60k/10k, installed from Debian's
dataset-fashion-mnist):

  seg  decoder-free segmentation (the paper's linear head) of 32x32 scenes of
       two garments with exact masks, at patch 8, 4 and 2;
  cls  classification of the garments (28x28 padded to 32), at patch 8 and 4.

Every run goes through tools/train.py and the real mmseg / mmpretrain
Runners, on configs inheriting from the paper's recipes (configs/sweep/).
The work dir gets results.json / results.csv (one record per run),
fits.json, scaling_law.png, predictions.png (the first held-out scenes, their
ground truth and every segmentation run's prediction) and each run's logs
and config. Each run's line tells the sweep's progress and the time left,
estimated from the runs done. The same command again skips the finished runs
and resumes an interrupted one from its last checkpoint.

    python tools/patch_scaling_sweep.py
    python tools/patch_scaling_sweep.py --full         # cls to patch 1, hours
    python tools/patch_scaling_sweep.py --tasks cls --data-root my_imagenet_style --img-size 64
    python tools/patch_scaling_sweep.py --device cuda --tasks cls --cls-patches 8 4 2 1 \
        --cls-epochs 10 --work-dir work_dirs/sweep_gpu_10ep     # on a GPU, bf16 autocast
"""
import argparse
import sys

from patchscale_mm import sweep

# --full: the long classification sweep.
FULL = dict(cls_patches=[8, 4, 2, 1], cls_steps=2400)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split('\n\n', 1)[1])
    parser.add_argument('--work-dir', default='work_dirs/patch_scaling_sweep')
    parser.add_argument(
        '--tasks', nargs='+', choices=sweep.TASKS, default=None,
        help='default: seg cls (cls only with --full)')
    parser.add_argument(
        '--families', nargs='+', default=['vit', 'adventurer'],
        choices=['vit', 'adventurer'])
    parser.add_argument('--seg-patches', type=int, nargs='+')
    parser.add_argument('--cls-patches', type=int, nargs='+')
    parser.add_argument('--seg-steps', type=int)
    parser.add_argument('--cls-steps', type=int)
    parser.add_argument(
        '--seg-epochs', type=float, help='a budget in passes over the '
        'training scenes instead of --seg-steps')
    parser.add_argument(
        '--cls-epochs', type=float, help='a budget in passes over the '
        'training images instead of --cls-steps')
    parser.add_argument(
        '--device', choices=['cpu', 'cuda'], default='cpu',
        help='where every run trains (default cpu: no GPU is visible to '
        'them); cuda trains in bf16 autocast with loader workers')
    parser.add_argument(
        '--batch-size', type=int, help='per-step batch (configs: seg 64, '
        'cls 128)')
    parser.add_argument(
        '--full', action='store_true',
        help=f'long classification sweep: patches {FULL["cls_patches"]}, '
        f'{FULL["cls_steps"]} steps (hours on a CPU)')
    parser.add_argument(
        '--data-root',
        help='classification data in ImageNet layout (train/ and val/ with '
        'meta/{train,val}.txt or class folders) instead of Fashion-MNIST; '
        'images of any size are resized to --img-size')
    parser.add_argument(
        '--img-size', type=int, default=32,
        help='with --data-root: the square input size (default 32); the '
        'patch sizes must divide it')
    parser.add_argument(
        '--data-cache', default='data',
        help='where the Fashion-MNIST datasets are written once')
    parser.add_argument('--num-scenes', type=int, nargs=2,
                        default=[8000, 1000], metavar=('TRAIN', 'VAL'),
                        help='segmentation scenes')
    parser.add_argument('--train-limit', type=int,
                        help='use only the first N training samples')
    parser.add_argument('--val-limit', type=int,
                        help='evaluate on the first N held-out samples only')
    parser.add_argument(
        '--checkpoint-every', type=int, default=sweep.CHECKPOINT_EVERY,
        metavar='STEPS',
        help='save a checkpoint every STEPS steps: an interrupted sweep, '
        'run again with the same arguments (STEPS may differ), resumes its '
        f'unfinished run from there (default {sweep.CHECKPOINT_EVERY})')
    parser.add_argument(
        '--threads', type=int, metavar='N',
        help="torch threads of each run (OMP_NUM_THREADS); default: torch's "
        '(one per core)')
    parser.add_argument('--force', action='store_true',
                        help='rerun runs already in results.json, from '
                        'scratch')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    full = FULL if args.full else {}

    def per_task(option, defaults):
        """The option's value per task: given, else --full's, else the
        sweep's default."""
        values = {}
        for task in sweep.TASKS:
            value = getattr(args, f'{task}_{option}')
            values[task] = (value if value is not None else
                            full.get(f'{task}_{option}', defaults[task]))
        return values

    epochs = {}
    for task in sweep.TASKS:
        given = getattr(args, f'{task}_epochs')
        if given is not None:
            if getattr(args, f'{task}_steps') is not None:
                raise SystemExit(f'error: give --{task}-steps or '
                                 f'--{task}-epochs, not both')
            epochs[task] = given
    try:
        sweep.run_sweep(
            args.work_dir,
            tasks=args.tasks or (['cls'] if args.full else ['seg', 'cls']),
            families=args.families,
            patches=per_task('patches', sweep.DEFAULT_PATCHES),
            steps=per_task('steps', sweep.DEFAULT_STEPS),
            batch_size=args.batch_size, data_root=args.data_root,
            img_size=args.img_size, data_cache=args.data_cache,
            num_scenes=tuple(args.num_scenes), train_limit=args.train_limit,
            val_limit=args.val_limit, checkpoint_every=args.checkpoint_every,
            threads=args.threads, force=args.force, epochs=epochs,
            device=args.device, log=lambda line: print(line, flush=True))
    except (ValueError, sweep.RunFailed) as e:
        raise SystemExit(f'error: {e}')


if __name__ == '__main__':
    sys.exit(main())
