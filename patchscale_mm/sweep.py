"""The patch-size scaling sweep: the same small ViT and Adventurer trained at
several patch sizes through the real OpenMMLab Runners, evaluated on
held-out data, with a power law fitted to test loss against patch size.

Each run is ``tools/train.py`` on a config that inherits a shipped sweep
config (``configs/sweep/``) and overrides only the patch size, the number of
steps and the data, written into the run's folder so it can be rerun alone.
Results are appended to ``results.json`` after every run, and a rerun of the
sweep skips the runs already there; a run that was interrupted resumes from
its last checkpoint (saved every ``CHECKPOINT_EVERY`` steps).
"""
import contextlib
import csv
import io
import json
import os
import re
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

# The shipped configs, in a checkout and in an installed wheel alike.
SWEEP_CONFIGS = Path(__file__).parent / '.mim' / 'configs' / 'sweep'
FAMILIES = {'vit': 'vit', 'deit': 'vit', 'adventurer': 'adv', 'adv': 'adv'}
TASKS = ('seg', 'cls')
# What each task reports: (metric key in MMEngine's scalars, its name).
TASK_METRIC = {'seg': ('mIoU', 'mIoU'), 'cls': ('accuracy/top1', 'top1')}
PROGRESS = re.compile(r'Iter\(train\)\s*\[\s*(\d+)/(\d+)\].*?loss: ([\d.]+)')
SAVING = re.compile(r'Saving checkpoint at (\d+) iterations')
# Long runs (hours at patch 1 on a CPU) lose at most this many steps when
# interrupted; a checkpoint of the sweep's small models takes milliseconds.
CHECKPOINT_EVERY = 200
# Training seconds up to each saved checkpoint, so that a resumed run
# reports the time its steps took, not the time of its last piece:
# {"origin": wall time at which the latest piece's clock reads 0,
#  "checkpoints": {"<iteration>": seconds}}.
CLOCK_FILE = 'train_seconds.json'
# The config text a run was started with: a checkpoint resumes only the same
# training, whatever its checkpoint and log intervals (the hooks line).
CONFIG_STAMP = 'run_config.txt'
HOOKS_LINE = re.compile(r'^default_hooks = .*\n?', re.MULTILINE)
# predictions.png shows the first SHOWN_SCENES scenes of the val split (the
# same for every run); each segmentation run keeps its predicted label maps
# of them in PREDICTIONS_FILE, so a resumed sweep redraws without a model.
SHOWN_SCENES = 4
PREDICTIONS_FILE = 'val_predictions.npy'
RESULT_KEYS = ('task', 'family', 'patch', 'tokens', 'params', 'flops',
               'steps', 'batch_size', 'test_loss', 'metric', 'metric_name',
               'seconds')


@dataclass
class Run:
    """One training run of the sweep."""
    task: str
    family: str  # 'vit' or 'adventurer'
    patch: int
    steps: int
    img_size: int = 32

    @property
    def name(self) -> str:
        return f'{self.task}_{self.family}_p{self.patch}'

    @property
    def base_config(self) -> Path:
        short = FAMILIES[self.family]
        return SWEEP_CONFIGS / f'fmnist_{self.task}_{short}.py'

    @property
    def tokens(self) -> int:
        return (self.img_size // self.patch)**2


def plan_runs(tasks: Sequence[str], families: Sequence[str],
              patches: Dict[str, Sequence[int]], steps: Dict[str, int],
              img_size: Union[int, Dict[str, int]] = 32) -> List[Run]:
    """Runs in the order they execute: per task, per family, large patches
    first (cheap runs give early results). ``img_size`` is one input size
    for every task or a dict task -> size."""
    runs = []
    for task in tasks:
        if task not in TASKS:
            raise ValueError(f'unknown task {task!r}; valid: {TASKS}')
        if steps[task] < 1:
            raise ValueError(f'{task} steps must be >= 1, got {steps[task]}')
        size = img_size[task] if isinstance(img_size, dict) else img_size
        for family in families:
            if family not in FAMILIES:
                raise ValueError(f'unknown family {family!r}; valid: vit, '
                                 'adventurer')
            family = 'vit' if FAMILIES[family] == 'vit' else 'adventurer'
            for patch in sorted(patches[task], reverse=True):
                if patch < 1 or size % patch:
                    raise ValueError(
                        f'patch size {patch} does not divide the {size}px '
                        f'images of the {task} task; use divisors of {size}')
                runs.append(Run(task, family, patch, steps[task], size))
    return runs


def _step_cost_shape(timed: Sequence[tuple]):
    """Seconds per step against tokens, fitted to one (task, family)'s timed
    runs ``(Run, seconds)``; None with fewer than two token counts.

    A step costs a fixed part (loading the batch, the optimizer, and the
    run's start spread over its steps) plus a part linear in the tokens
    (the blocks and the evaluation; attention's quadratic term is small at
    the sweep's widths). The fixed part dominates small runs, so a cost
    simply proportional to the tokens would promise far too long a sweep.
    """
    t = np.array([run.tokens for run, _ in timed], dtype=float)
    s = np.array([seconds / run.steps for run, seconds in timed])
    if np.unique(t).size < 2:
        return None
    slope, fixed = np.polyfit(t, s, 1)
    if slope < 0:  # noise larger than the token effect
        return lambda tokens: float(s.mean())
    if fixed < 0:
        slope, fixed = np.sum(t * s) / np.sum(t * t), 0.
    return lambda tokens: float(fixed + slope * tokens)


def _seconds_per_step(run: Run, timed: Sequence[tuple],
                      order: Sequence[Run]) -> float:
    """Seconds per step of ``run`` from the timed runs ``(Run, seconds)``.

    The level comes from the nearest evidence: the timed runs of the same
    task and family (families and tasks differ in cost per token), else of
    the same task, else all. The shape against tokens
    (:func:`_step_cost_shape`) comes from the run's own (task, family) if
    two of its token counts are timed, else from the first such of its
    task, else of any, in the order of ``order`` (the plan): the fixed and
    per-token parts differ less between groups than their levels do. With
    no such group yet, the cost is proportional to the tokens, an
    overestimate that the second timed token count corrects.
    """
    near = ((lambda r: (r.task, r.family) == (run.task, run.family)),
            (lambda r: r.task == run.task), (lambda r: True))
    level = next(pool for pool in ([(r, sec) for r, sec in timed if same(r)]
                                   for same in near) if pool)
    groups = sorted(dict.fromkeys((r.task, r.family) for r in order),
                    key=lambda g: (g != (run.task, run.family),
                                   g[0] != run.task))  # stable: plan order
    for group in groups:
        shape = _step_cost_shape([(r, sec) for r, sec in timed
                                  if (r.task, r.family) == group])
        if shape and group == (run.task, run.family):
            return shape(run.tokens)  # fitted to the level itself
        if shape:
            break
    else:
        shape = float  # proportional to the tokens
    ratio = np.mean([sec / r.steps / shape(r.tokens) for r, sec in level])
    return float(ratio * shape(run.tokens))


def sweep_progress(runs: Sequence[Run],
                   finished: Dict[str, Optional[float]]) -> tuple:
    """``(percent done, seconds left)`` of the sweep ``runs``.

    ``finished`` maps the names of the runs done so far to the seconds they
    took, or None when unknown (a run skipped on resume whose record has no
    time): such a run counts as done, but not as evidence of speed. A run
    not timed costs its steps times the seconds per step predicted from the
    timed ones (:func:`_seconds_per_step`). Before any run is timed the
    seconds left are None and runs weigh steps x tokens.
    """
    timed = [(r, finished[r.name]) for r in runs
             if finished.get(r.name) is not None]
    if not timed:
        weight = {r.name: r.steps * r.tokens for r in runs}
        done = sum(weight[name] for name in finished if name in weight)
        return 100. * done / max(sum(weight.values()), 1), None
    done = left = 0.
    for run in runs:
        seconds = finished.get(run.name)
        if seconds is None:
            seconds = run.steps * _seconds_per_step(run, timed, runs)
        if run.name in finished:
            done += seconds
        else:
            left += seconds
    total = done + left
    return (100. * done / total if total > 0 else 100.), left


def format_duration(seconds: float) -> str:
    """'40 s', '6 min', '2.3 h': as precise as an estimate deserves."""
    if seconds < 90:
        return f'{seconds:.0f} s'
    if seconds < 90 * 60:
        return f'{seconds / 60:.0f} min'
    return f'{seconds / 3600:.1f} h'


def progress_note(runs: Sequence[Run],
                  finished: Dict[str, Optional[float]]) -> str:
    """'sweep 31%, about 6 min left' for the run lines."""
    percent, left = sweep_progress(runs, finished)
    if left is None:
        return f'sweep {percent:.0f}%, time left known after the first run'
    return f'sweep {percent:.0f}%, about {format_duration(left)} left'


# A user's classification images, of any size and colour: resized to the
# sweep's square input and normalised with ImageNet's statistics.
USER_DATA_PREPROCESSOR = dict(
    mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)


def user_data_pipelines(img_size: int) -> tuple:
    """(train, test) pipelines that resize any image to img_size^2."""
    resize = dict(type='Resize', scale=(img_size, img_size),
                  interpolation='bicubic')
    train = [dict(type='LoadImageFromFile'), resize,
             dict(type='RandomFlip', prob=0.5, direction='horizontal'),
             dict(type='PackInputs')]
    test = [dict(type='LoadImageFromFile'), resize, dict(type='PackInputs')]
    return train, test


def user_dataset(data_root: str, split: str, pipeline: list) -> dict:
    """``split/`` of an ImageNet-layout folder, with ``meta/<split>.txt``
    when there is one, else labelled by class folder (any number of
    classes, unlike mmpretrain's ``ImageNet`` type)."""
    ann_file = Path(data_root, 'meta', f'{split}.txt')
    return dict(
        _delete_=True,
        type='CustomDataset',
        data_root=data_root,
        data_prefix=split,
        ann_file=str(ann_file) if ann_file.exists() else '',
        pipeline=pipeline)


def run_config(run: Run, data_root: str, batch_size: Optional[int] = None,
               num_classes: Optional[int] = None,
               train_limit: Optional[int] = None,
               val_limit: Optional[int] = None,
               checkpoint_every: int = CHECKPOINT_EVERY) -> str:
    """The text of the run's config: the sweep config plus overrides.

    ``num_classes`` marks a user's classification data (``--data-root``):
    its images are resized to ``run.img_size`` whatever their size.
    """
    model = dict(backbone=dict(patch_size=run.patch))
    train = dict(dataset=dict(data_root=data_root))
    val = dict(dataset=dict(data_root=data_root))
    if num_classes:  # a user's classification data set
        model['backbone']['img_size'] = run.img_size
        model['head'] = dict(num_classes=num_classes)
        pipelines = user_data_pipelines(run.img_size)
        for loader, split, pipeline in ((train, 'train', pipelines[0]),
                                        (val, 'val', pipelines[1])):
            loader['dataset'] = user_dataset(data_root, split, pipeline)
    if batch_size:
        train['batch_size'] = batch_size
    if train_limit:  # MMEngine datasets keep the first ``indices`` samples
        train['dataset']['indices'] = train_limit
    if val_limit:
        val['dataset']['indices'] = val_limit
    lines = [
        f"_base_ = '{run.base_config.as_posix()}'",
        f'model = {model!r}',
        "param_scheduler = [dict(type='OneCycleLR', eta_max=2e-3, "
        f'total_steps={run.steps}, pct_start=0.1, by_epoch=False)]',
        f'train_cfg = dict(max_iters={run.steps}, val_interval={run.steps})',
        'default_hooks = dict(checkpoint=dict('
        f'interval={min(run.steps, checkpoint_every)}), '
        f'logger=dict(interval={max(1, min(50, run.steps // 10))}))',
        f'train_dataloader = {train!r}',
        f'val_dataloader = {val!r}',
        'test_dataloader = val_dataloader',
    ]
    if num_classes:
        preprocessor = dict(USER_DATA_PREPROCESSOR, num_classes=num_classes)
        lines.append(f'data_preprocessor = {preprocessor!r}')
    return '\n'.join(lines) + '\n'


def read_final_metrics(work_dir: Path) -> dict:
    """The last validation entry of the run's ``vis_data/scalars.json``."""
    scalars = sorted(work_dir.glob('*/vis_data/scalars.json'))
    if not scalars:
        raise FileNotFoundError(f'no vis_data/scalars.json under {work_dir}')
    final = {}
    for line in scalars[-1].read_text().splitlines():
        entry = json.loads(line)
        if 'test/loss' in entry:
            final = entry
    if not final:
        raise ValueError(f'{scalars[-1]} has no validation entry with '
                         'test/loss')
    return final


def count_params_and_flops(run: Run, config: Path) -> tuple:
    """Parameters of the built model and analytic forward FLOPs per image."""
    import importlib

    import torch
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    from patchscale_mm.analysis.cost import flops_breakdown
    cfg = Config.fromfile(str(config))
    init_default_scope(cfg.default_scope)
    registry = importlib.import_module(f'{cfg.default_scope}.registry')
    # Deprecation notices of the downstream builders would drown the
    # sweep's progress lines; the run's own log keeps them.
    with torch.device('meta'), warnings.catch_warnings():
        warnings.simplefilter('ignore')
        model = registry.MODELS.build(cfg.model)
    params = sum(p.numel() for p in model.parameters())
    backbone = cfg.model.backbone
    family = 'deit' if 'PatchViT' in backbone.type else 'adventurer'
    flops = sum(
        flops_breakdown(family, dict(backbone.arch), run.img_size, run.patch,
                        num_classes=0,
                        mixer_cfg=backbone.get('mixer_cfg')).values())
    width = backbone.arch['embed_dims']
    if run.task == 'seg':  # a linear classifier per token
        flops += 2 * run.tokens * width * cfg.model.decode_head.num_classes
    else:
        flops += 2 * width * cfg.model.head.num_classes
    return params, flops


def resumable_checkpoint(run: Run, work_dir: Path,
                         config_text: str) -> Optional[str]:
    """The checkpoint an interrupted run of this very config left, or None
    (no run yet, one of a different config, or one that trained to the end:
    its evaluation is redone by training again). Saving and logging more or
    less often is the same config: ``--checkpoint-every`` may change between
    the pieces of a run."""
    from patchscale_mm.engine import find_resumable_checkpoint
    # Not the config itself: the Runner overwrites it with its full dump.
    stamp = work_dir / CONFIG_STAMP
    if not stamp.is_file() or (HOOKS_LINE.sub('', stamp.read_text())
                               != HOOKS_LINE.sub('', config_text)):
        return None
    found = find_resumable_checkpoint(str(work_dir))
    step = found and _checkpoint_iteration(found)
    return found if step and int(step) < run.steps else None


def _checkpoint_iteration(path: str) -> Optional[str]:
    found = re.search(r'iter_(\d+)\.pth$', path)
    return found.group(1) if found else None


def train(run: Run, config: Path, work_dir: Path, log,
          resume_from: Optional[str] = None) -> float:
    """Runs tools/train.py (resuming from ``resume_from`` if given),
    echoing its training progress; returns the seconds of training."""
    start = time.time()
    # Through the lifeline, so a sweep killed by any signal cannot leave its
    # run training beside the rerun that resumes it.
    cmd = [sys.executable, '-m', 'patchscale_mm.utils.lifeline',
           'patchscale_mm.train', str(config), '--work-dir', str(work_dir)]
    clock_path = work_dir / CLOCK_FILE
    clock = {'checkpoints': {}}
    if not resume_from:  # a retrained run starts over its work dir
        cmd += ['--no-resume']
    else:
        cmd += ['--resume', resume_from]
        if clock_path.is_file():
            clock = read_clock(clock_path)
        before = seconds_before(clock, resume_from)
        clock['checkpoints'][_checkpoint_iteration(resume_from)] = before
        start -= before
        log(f'    {run.name}: resuming from {Path(resume_from).name} '
            f'({before:.0f}s of training before)')
    clock['origin'] = start
    _write_atomically(clock_path, json.dumps(clock))
    # Line-buffered: an interrupted sweep keeps its run's log to the end.
    with open(work_dir / 'train.log', 'a' if resume_from else 'w',
              buffering=1) as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        try:
            for line in proc.stdout:
                out.write(line)
                saving = SAVING.search(line)
                if saving:
                    clock['checkpoints'][saving.group(1)] = round(
                        time.time() - start, 1)
                    _write_atomically(clock_path, json.dumps(clock))
                progress = PROGRESS.search(line)
                if progress:
                    step, total, loss = progress.groups()
                    log(f'    {run.name}: step {step}/{total}  loss {loss}  '
                        f'{time.time() - start:.0f}s')
            code = proc.wait()
        finally:  # an interrupted sweep must not leave its run training
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdin.close()
    if code:
        raise RuntimeError(f'{run.name} failed (exit {code}); see '
                           f'{work_dir / "train.log"}')
    return time.time() - start


def read_clock(path: Path) -> dict:
    clock = json.loads(path.read_text())
    # Before the origin was kept, the file held the checkpoints' map alone.
    return clock if 'checkpoints' in clock else {'checkpoints': clock}


def seconds_before(clock: dict, checkpoint: str) -> float:
    """Seconds of training up to ``checkpoint``.

    The sweep times a checkpoint when the trainer announces it. A sweep
    killed after the announcement but before reading it leaves the trainer a
    moment (until its lifeline fires) to finish the file untimed; such a file
    is the latest piece's (each resume times its own starting point), so its
    time is its modification time on that piece's clock."""
    timed = clock['checkpoints'].get(_checkpoint_iteration(checkpoint))
    if timed is not None:
        return timed
    if 'origin' not in clock:
        return 0.0
    return max(0.0, os.path.getmtime(checkpoint) - clock['origin'])


def load_results(path: Path) -> List[dict]:
    return json.loads(path.read_text()) if path.exists() else []


def _write_atomically(path: Path, text: str):
    """A kill mid-write leaves the previous file, never half of one."""
    from patchscale_mm.engine import atomic_write
    atomic_write(path, text.encode())


def save_results(records: List[dict], work_dir: Path):
    """results.json and results.csv, each written atomically."""
    _write_atomically(work_dir / 'results.json',
                      json.dumps(records, indent=1))
    table = io.StringIO(newline='')
    writer = csv.DictWriter(table, fieldnames=RESULT_KEYS,
                            extrasaction='ignore')
    writer.writeheader()
    writer.writerows(records)
    _write_atomically(work_dir / 'results.csv', table.getvalue())


def format_table(records: Sequence[dict]) -> str:
    header = ('task', 'family', 'patch', 'tokens', 'params', 'GFLOPs',
              'steps', 'test loss', 'metric', 'wall s')
    rows = [header]
    for r in records:
        rows.append((r['task'], r['family'], str(r['patch']),
                     f"{r['tokens']:,}", f"{r['params'] / 1e6:.3f}M",
                     f"{r['flops'] / 1e9:.3f}", str(r['steps']),
                     f"{r['test_loss']:.4f}",
                     f"{r['metric_name']} {r['metric']:.2f}",
                     f"{r['seconds']:.0f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return '\n'.join('  '.join(cell.rjust(w) for cell, w in zip(row, widths))
                     for row in rows)


def fit_and_plot(records: Sequence[dict], work_dir: Path, log) -> dict:
    """Fits loss = a * p^b and loss = c + a * p^b per (task, family) with at
    least 3 (resp. 4) patch sizes (fewer are shown as points, not laws);
    writes fits.json (no NaN) and scaling_law.png."""
    from patchscale_mm.analysis.scaling_law import (NoFit, fit_group,
                                                    fit_offset_power_law,
                                                    group_records,
                                                    min_patch_sizes,
                                                    plot_scaling_law)
    fits, summary = {}, {}
    for (task, family), group in sorted(group_records(records).items()):
        patches = [r['patch'] for r in group]
        losses = [r['test_loss'] for r in group]
        if len(set(patches)) < 2:
            continue
        fit = fits[(task, family)] = fit_group(patches, losses)
        summary[f'{task}/{family}'] = fit.as_dict()
        if isinstance(fit, NoFit):
            slope = ('' if fit.slope is None else
                     f', slope {fit.slope:.3f} between patches '
                     f'{max(patches)} and {min(patches)}')
            log(f'  {task} {family}: {fit.note}{slope}')
            continue
        line = (f'  {task} {family}: loss = {fit.a:.4g} * p^{fit.b:.3f} '
                f'(b ± {fit.se_b:.3f}, R² {fit.r2:.3f})')
        if len(set(patches)) >= min_patch_sizes(offset=True):
            try:
                off = fit_offset_power_law(patches, losses)
                line += (f'; with offset: {off.c:.4g} + {off.a:.4g} * '
                         f'p^{off.b:.3f} (R² {off.r2:.3f})')
                summary[f'{task}/{family}']['offset'] = off.as_dict()
            except (RuntimeError, ValueError) as e:
                line += f'; offset fit failed ({e})'
        log(line)
    if fits:
        plot = plot_scaling_law(records, fits, work_dir / 'scaling_law.png')
        log(f'plot: {plot}')
    # allow_nan=False: a reader of fits.json gets numbers or no key at all.
    (work_dir / 'fits.json').write_text(
        json.dumps(summary, indent=1, allow_nan=False))
    return fits


def _first_val_scenes(cfg, num: int) -> tuple:
    """The val dataset cut to its first ``num`` scenes and those scenes
    through its test pipeline (images as the model sees them, ground truth
    reduced as in the evaluation)."""
    import copy

    from mmseg.registry import DATASETS
    dataset_cfg = copy.deepcopy(cfg.val_dataloader.dataset)
    dataset_cfg['indices'] = num  # MMEngine keeps the first ``num``
    with _seg_scope(), warnings.catch_warnings():
        warnings.simplefilter('ignore')  # mmseg's deprecation notices
        dataset = DATASETS.build(dataset_cfg)
        return dataset, [dataset[i] for i in range(len(dataset))]


def _seg_scope():
    """mmseg's registry scope for a while: after the classification runs
    the sweep's scope is mmpretrain's, and switching for good is logged."""
    from mmengine.registry import DefaultScope
    return DefaultScope.overwrite_default_scope('mmseg')


def val_scenes(config: Path, num: int = SHOWN_SCENES) -> dict:
    """``images`` (N, H, W, 3 RGB), ``ground_truth`` (N, H, W), ``classes``
    and ``palette`` (None if the dataset has none) of the first ``num``
    val scenes."""
    from mmengine.config import Config
    dataset, items = _first_val_scenes(Config.fromfile(str(config)), num)
    # LoadImageFromFile reads BGR; the data preprocessor flips it later.
    images = np.stack([item['inputs'].numpy().transpose(1, 2, 0)[..., ::-1]
                       for item in items])
    truth = np.stack([item['data_samples'].gt_sem_seg.data[0].numpy()
                      for item in items]).astype(np.uint8)
    return dict(images=images, ground_truth=truth,
                classes=dataset.metainfo.get('classes'),
                palette=dataset.metainfo.get('palette'))


def predict_val_scenes(config: Path, checkpoint: str,
                       num: int = SHOWN_SCENES) -> np.ndarray:
    """(N, H, W) uint8 label maps the trained model predicts for the first
    ``num`` val scenes: mmseg's ``init_model`` / ``inference_model`` on the
    run's config and checkpoint, on the CPU."""
    from mmengine.config import Config
    from mmseg.apis import inference_model, init_model
    cfg = Config.fromfile(str(config))
    _, items = _first_val_scenes(cfg, num)
    paths = [item['data_samples'].img_path for item in items]
    # The checkpoint loader's print() and the builders' notices would break
    # into the sweep's lines.
    with contextlib.redirect_stdout(io.StringIO()), _seg_scope(), \
            warnings.catch_warnings():
        warnings.simplefilter('ignore')
        model = init_model(cfg, checkpoint, device='cpu')
        samples = inference_model(model, paths)
    return np.stack([s.pred_sem_seg.data[0].numpy() for s in samples
                     ]).astype(np.uint8)


def run_predictions(record: dict, num: int = SHOWN_SCENES,
                    log=None) -> Optional[np.ndarray]:
    """The run's predictions of the shown scenes: kept in its work dir, or
    predicted from its final checkpoint (and kept); None without one."""
    run_dir = Path(record['work_dir'])
    path = run_dir / PREDICTIONS_FILE
    if path.is_file():
        kept = np.load(path)
        if len(kept) >= num:
            return kept[:num]
    checkpoint = run_dir / f'iter_{record["steps"]}.pth'
    if not checkpoint.is_file():
        return None
    predicted = predict_val_scenes(Path(record['config']), str(checkpoint),
                                   num)
    from patchscale_mm.engine import atomic_write
    buffer = io.BytesIO()
    np.save(buffer, predicted)
    atomic_write(path, buffer.getvalue())
    if log:
        log(f'    {run_dir.name}: predicted {len(predicted)} held-out '
            'scenes')
    return predicted


def draw_predictions(records: Sequence[dict], work_dir: Path, log,
                     num: int = SHOWN_SCENES) -> Optional[Path]:
    """predictions.png: the first ``num`` val scenes, their ground truth
    and each segmentation record's prediction (in the records' order),
    with predictions.json naming its rows, scenes and pixel layout."""
    from patchscale_mm.analysis.prediction_grid import draw_prediction_grid
    rows, described = [], []
    for r in records:
        if r['task'] != 'seg':
            continue
        predicted = run_predictions(r, num, log)
        if predicted is None:
            log(f'    {Path(r["work_dir"]).name}: no final checkpoint, left '
                'out of predictions.png')
            continue
        rows.append((f'{r["family"]} p{r["patch"]}', predicted))
        described.append(dict(family=r['family'], patch=r['patch'],
                              predictions=str(Path(r['work_dir']) /
                                              PREDICTIONS_FILE)))
    if not rows:
        return None
    first = next(r for r in records if r['task'] == 'seg')
    scenes = val_scenes(Path(first['config']), num)
    path = work_dir / 'predictions.png'
    _, layout = draw_prediction_grid(scenes['images'],
                                     scenes['ground_truth'], rows,
                                     scenes['palette'], scenes['classes'],
                                     path)
    layout.update(
        rows=[dict(row='image'), dict(row='ground truth')] + described,
        scenes=list(range(len(scenes['images']))),
        classes=list(scenes['classes'] or []))
    _write_atomically(work_dir / 'predictions.json',
                      json.dumps(layout, indent=1))
    log(f'predictions: {path}')
    return path
