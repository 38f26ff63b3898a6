"""Patch-size scaling sweep on real data: does a smaller patch lower the test
loss, following a power law, as the paper finds?

By default (about 8 minutes on a 2-vCPU machine) it trains a small ViT and a
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
"""
import argparse
import os
import sys
import time
from pathlib import Path

from patchscale_mm import sweep
from patchscale_mm.fixtures import (make_ade20k_fixture, make_imagenet_fixture)

DEFAULTS = dict(
    seg_patches=[8, 4, 2], cls_patches=[8, 4], seg_steps=200, cls_steps=100)
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


def count_classes(root: Path) -> int:
    """Classes of an ImageNet-layout folder: labels of meta/train.txt, or the
    class folders of train/."""
    ann = root / 'meta' / 'train.txt'
    if ann.exists():
        labels = {int(line.split()[-1]) for line in ann.read_text().split('\n')
                  if line.strip()}
        return max(labels) + 1
    folders = [p for p in (root / 'train').iterdir() if p.is_dir()]
    if not folders:
        raise SystemExit(f'--data-root {root}: neither meta/train.txt nor '
                         'class folders in train/')
    return len(folders)


def prepare_data(args, tasks, log) -> dict:
    """Data roots per task; Fashion-MNIST datasets are built once."""
    roots = {}
    cache = Path(args.data_cache)
    if 'seg' in tasks:
        n_train, n_val = args.num_scenes
        root = cache / f'fmnist_scenes32_{n_train}_{n_val}'
        if not (root / '.complete').exists():
            log(f'writing {n_train}+{n_val} segmentation scenes to {root}')
            make_ade20k_fixture(root, n_train, n_val, canvas_size=(32, 32),
                                num_objects=(2, 2), scale_range=(0.6, 1.0))
            (root / '.complete').touch()
        roots['seg'] = root
    if 'cls' in tasks:
        if args.data_root:
            roots['cls'] = Path(args.data_root)
        else:
            root = cache / 'fmnist_imagenet32'
            if not (root / '.complete').exists():
                log(f'writing Fashion-MNIST (60k/10k, 32x32) to {root}')
                make_imagenet_fixture(root, None, None, pad_to=32)
                (root / '.complete').touch()
            roots['cls'] = root
    return roots


def main(argv=None):
    args = parse_args(argv)
    tasks = args.tasks or (['cls'] if args.full else ['seg', 'cls'])
    settings = dict(DEFAULTS, **(FULL if args.full else {}))

    def setting(name):
        value = getattr(args, name)
        return settings[name] if value is None else value

    patches = dict(seg=setting('seg_patches'), cls=setting('cls_patches'))
    steps = dict(seg=setting('seg_steps'), cls=setting('cls_steps'))
    # Check everything cheap before any data or model is built.
    try:
        if args.img_size != 32 and not args.data_root:
            raise ValueError('--img-size applies to --data-root; the '
                             'Fashion-MNIST tasks are 32x32')
        runs = sweep.plan_runs(tasks, args.families, patches, steps,
                               dict(seg=32, cls=args.img_size))
    except ValueError as e:
        raise SystemExit(f'error: {e}')
    if args.data_root and not Path(args.data_root).is_dir():
        raise SystemExit(f'error: --data-root {args.data_root} is not a folder')
    if args.checkpoint_every < 1:
        raise SystemExit(f'error: --checkpoint-every must be >= 1, got '
                         f'{args.checkpoint_every}')
    if args.batch_size is not None and args.batch_size < 1:
        raise SystemExit(f'error: --batch-size must be >= 1, got '
                         f'{args.batch_size}')

    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit(f'error: --threads must be >= 1, got '
                             f'{args.threads}')
        os.environ['OMP_NUM_THREADS'] = str(args.threads)  # the runs inherit it

    work_dir = Path(args.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)

    def log(message):
        print(message, flush=True)

    start = time.time()
    roots = prepare_data(args, tasks, log)
    num_classes = count_classes(roots['cls']) if args.data_root else None
    records = sweep.load_results(work_dir / 'results.json')
    log(f'{len(runs)} runs: ' + ', '.join(
        f'{r.name} ({r.tokens} tokens, {r.steps} steps)' for r in runs))
    finished = {}  # run name -> seconds it took (None: unknown), for the ETA
    for i, run in enumerate(runs, 1):
        batch = args.batch_size
        key = dict(task=run.task, family=run.family, patch=run.patch,
                   steps=run.steps)
        done = [r for r in records
                if all(r.get(k) == v for k, v in key.items())
                and (batch is None or r.get('batch_size') == batch)]
        if done and not args.force:
            log(f'[{i}/{len(runs)}] {run.name}: already in results.json')
            finished[run.name] = done[-1].get('seconds')
            continue
        records = [r for r in records if r not in done]
        run_dir = work_dir / run.name
        run_dir.mkdir(exist_ok=True)
        config = run_dir / f'{run.name}.py'
        config_text = sweep.run_config(
            run, str(roots[run.task]), batch,
            num_classes if run.task == 'cls' else None, args.train_limit,
            args.val_limit, args.checkpoint_every)
        resume_from = (None if args.force else
                       sweep.resumable_checkpoint(run, run_dir, config_text))
        config.write_text(config_text)
        (run_dir / sweep.CONFIG_STAMP).write_text(config_text)
        params, flops = sweep.count_params_and_flops(run, config)
        log(f'[{i}/{len(runs)}] {run.name}: {run.tokens} tokens, '
            f'{params / 1e6:.3f}M params, {flops / 1e9:.3f} GFLOPs/image; '
            + sweep.progress_note(runs, finished))
        # Those of an earlier training would be drawn as this one's.
        (run_dir / sweep.PREDICTIONS_FILE).unlink(missing_ok=True)
        try:
            seconds = sweep.train(run, config, run_dir, log, resume_from)
        except RuntimeError as e:
            sweep.save_results(records, work_dir)
            raise SystemExit(f'error: {e}')
        metrics = sweep.read_final_metrics(run_dir)
        metric_key, metric_name = sweep.TASK_METRIC[run.task]
        from mmengine.config import Config
        cfg = Config.fromfile(str(config))
        record = dict(key, tokens=run.tokens, params=params, flops=flops,
                      batch_size=cfg.train_dataloader.batch_size,
                      test_loss=metrics['test/loss'],
                      metric=metrics[metric_key], metric_name=metric_name,
                      seconds=round(seconds, 1), config=str(config),
                      work_dir=str(run_dir))
        records.append(record)
        sweep.save_results(records, work_dir)
        finished[run.name] = seconds
        log(f'    {run.name}: test loss {record["test_loss"]:.4f}, '
            f'{metric_name} {record["metric"]:.2f}, {seconds:.0f}s')
        if run.task == 'seg':  # while its checkpoint is surely there
            sweep.run_predictions(record, log=log)

    order = {(r.task, r.family, r.patch): i for i, r in enumerate(runs)}
    shown = sorted((r for r in records
                    if (r['task'], r['family'], r['patch']) in order),
                   key=lambda r: order[(r['task'], r['family'], r['patch'])])
    log('\n' + sweep.format_table(shown))
    log('\npower-law fits of test loss against patch size:')
    sweep.fit_and_plot(shown, work_dir, log)
    sweep.draw_predictions(shown, work_dir, log)
    log(f'\nresults: {work_dir / "results.json"} ({time.time() - start:.0f}s '
        'in all)')


if __name__ == '__main__':
    sys.exit(main())
