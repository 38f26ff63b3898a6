"""The sweep from start to end: :func:`run_sweep`."""
import math
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

from .data import count_classes, count_train_samples, prepare_data
from .overrides import CHECKPOINT_EVERY, run_config
from .plan import TASK_METRIC, plan_runs
from .predictions import PREDICTIONS_FILE, draw_predictions, run_predictions
from .progress import ProgressLine
from .report import fit_and_plot, format_table
from .results import (count_params_and_flops, load_results,
                      read_final_metrics, save_results)
from .resume import resumable_checkpoint, stamp_config
from .supervise import RunFailed, train_run

DEFAULT_PATCHES = dict(seg=[8, 4, 2], cls=[8, 4])
DEFAULT_STEPS = dict(seg=100, cls=60)
DEVICES = ('cpu', 'cuda')


def run_sweep(work_dir: Union[str, Path],
              tasks: Sequence[str] = ('seg', 'cls'),
              families: Sequence[str] = ('vit', 'adventurer'),
              patches: Optional[Dict[str, Sequence[int]]] = None,
              steps: Optional[Dict[str, int]] = None,
              batch_size: Optional[int] = None,
              data_root: Optional[str] = None,
              img_size: int = 32,
              data_cache: Union[str, Path] = 'data',
              num_scenes: Tuple[int, int] = (8000, 1000),
              train_limit: Optional[int] = None,
              val_limit: Optional[int] = None,
              checkpoint_every: int = CHECKPOINT_EVERY,
              threads: Optional[int] = None,
              force: bool = False,
              epochs: Optional[Dict[str, float]] = None,
              device: str = 'cpu',
              log=print) -> List[dict]:
    """Trains every planned run not yet in ``work_dir/results.json``, then
    prints the table, fits the power laws and draws the predictions.

    Args:
        work_dir: Where results, plots and one folder per run go.
        tasks: ``'seg'`` and/or ``'cls'``.
        families: ``'vit'`` and/or ``'adventurer'``.
        patches, steps: Per task; missing tasks take
            ``DEFAULT_PATCHES`` / ``DEFAULT_STEPS``.
        batch_size: Per-step batch; the sweep configs' when None.
        data_root: A user's classification data in ImageNet layout instead
            of Fashion-MNIST; its images are resized to ``img_size``.
        data_cache: Where the Fashion-MNIST datasets are written once.
        num_scenes: (train, val) segmentation scenes.
        train_limit, val_limit: Use only the first N samples.
        checkpoint_every: Steps between checkpoints, from which an
            interrupted sweep resumes its unfinished run.
        threads: Torch threads of each run; torch's default when None.
        force: Retrain runs already in results.json, from scratch.
        epochs: Per task, a budget in passes over the training samples
            instead of ``steps``: ceil(epochs x samples / batch) steps.
        device: ``'cpu'`` (no GPU is visible to the runs) or ``'cuda'``
            (bf16 autocast, as the shipped configs train on a GPU, and
            loader workers). Records keep it, and a rerun skips only the
            runs done on the same device.
        log: Called with each line of progress.

    Returns:
        list[dict]: The records of results.json.

    Raises:
        ValueError: Settings that cannot run, before any work is done.
        RunFailed: A run's trainer failed (results.json keeps the others).
    """
    runs, num_classes = _checked_plan(
        tasks, families, dict(DEFAULT_PATCHES, **(patches or {})),
        dict(DEFAULT_STEPS, **(steps or {})), batch_size, data_root, img_size,
        checkpoint_every, threads, device, epochs, num_scenes, train_limit)
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    start = time.time()
    roots = prepare_data(tasks, Path(data_cache), num_scenes, data_root, log)
    records = load_results(work_dir / 'results.json')
    log(f'{len(runs)} runs: ' + ', '.join(
        f'{r.name} ({r.tokens} tokens, {r.steps} steps)' for r in runs))
    finished = {}  # run name -> seconds it took, for the time left
    progress = ProgressLine(runs)
    for i, run in enumerate(runs, 1):
        key = dict(task=run.task, family=run.family, patch=run.patch,
                   steps=run.steps)
        done = finished_records(records, key, batch_size, device)
        if done and not force:
            log(f'[{i}/{len(runs)}] {run.name}: already in results.json')
            finished[run.name] = done[-1]['seconds']
            continue
        records = [r for r in records if r not in done]
        run_dir = work_dir / run.name
        run_dir.mkdir(exist_ok=True)
        config = run_dir / f'{run.name}.py'
        config_text = run_config(
            run, str(roots[run.task]), batch_size,
            num_classes if run.task == 'cls' else None, train_limit,
            val_limit, checkpoint_every, device)
        resume_from = (None if force else
                       resumable_checkpoint(run, run_dir, config_text))
        config.write_text(config_text)
        stamp_config(run_dir, config_text)
        params, flops = count_params_and_flops(run, config)
        log(f'[{i}/{len(runs)}] {run.name}: {run.tokens} tokens, '
            f'{params / 1e6:.3f}M params, {flops / 1e9:.3f} GFLOPs/image; '
            + progress.note(finished))
        # Those of an earlier training would be drawn as this one's.
        (run_dir / PREDICTIONS_FILE).unlink(missing_ok=True)
        try:
            seconds = train_run(run, config, run_dir, log, resume_from,
                                threads, device)
        except RunFailed:
            save_results(records, work_dir)
            raise
        record = _record(run, key, config, run_dir, params, flops, seconds)
        record.update(device=device,
                      epochs=(epochs or {}).get(run.task))
        records.append(record)
        save_results(records, work_dir)
        finished[run.name] = seconds
        log(f'    {run.name}: test loss {record["test_loss"]:.4f}, '
            f'{record["metric_name"]} {record["metric"]:.2f}, '
            f'{seconds:.0f}s')
        if run.task == 'seg':  # while its checkpoint is surely there
            run_predictions(record, log=log)

    order = {(r.task, r.family, r.patch): i for i, r in enumerate(runs)}
    shown = sorted((r for r in records
                    if (r['task'], r['family'], r['patch']) in order),
                   key=lambda r: order[(r['task'], r['family'], r['patch'])])
    log('\n' + format_table(shown))
    log('\npower-law fits of test loss against patch size:')
    fit_and_plot(shown, work_dir, log)
    draw_predictions(shown, work_dir, log)
    log(f'\nresults: {work_dir / "results.json"} ({time.time() - start:.0f}s '
        'in all)')
    return records


def finished_records(records: List[dict], key: dict, batch_size: Optional[int],
                     device: str) -> List[dict]:
    """The records of ``records`` that are the run ``key`` (task, family,
    patch, steps) trained on ``device`` (records older than the device
    option trained on the CPU) at ``batch_size`` (any when None)."""
    return [r for r in records
            if all(r.get(k) == v for k, v in key.items())
            and r.get('device', 'cpu') == device
            and (batch_size is None or r['batch_size'] == batch_size)]


def _check_device_and_data(device: str, data_root: Optional[str]):
    if device not in DEVICES:
        raise ValueError(f'--device must be one of {", ".join(DEVICES)}, got {device!r}')
    if device == 'cuda':
        import torch
        if not torch.cuda.is_available():
            raise ValueError('--device cuda: no CUDA device is visible here')
    if data_root and not Path(data_root).is_dir():
        raise ValueError(f'--data-root {data_root} is not a folder')


def _steps_for_epochs(epochs: Dict[str, float], families, batch_size,
                      data_root, num_scenes, train_limit) -> Dict[str, int]:
    """Steps per task for an epoch budget: ceil(epochs x training samples /
    batch), the batch being ``batch_size`` or the shipped config's."""
    from mmengine.config import Config

    from .plan import Run
    steps = {}
    for task, count in epochs.items():
        if not count > 0:
            raise ValueError(f'{task} epochs must be > 0, got {count}')
        batch = batch_size or Config.fromfile(
            str(Run(task, families[0], 8, 1).base_config),
            import_custom_modules=False).train_dataloader.batch_size
        samples = count_train_samples(task, data_root, num_scenes, train_limit)
        steps[task] = max(1, math.ceil(count * samples / batch))
    return steps


def _checked_plan(tasks, families, patches, steps, batch_size, data_root,
                  img_size, checkpoint_every, threads, device='cpu', epochs=None,
                  num_scenes=(8000, 1000), train_limit=None) -> tuple:
    """The runs (an epoch budget turned into steps) and the classes of
    ``data_root`` (None without one), or a ValueError for settings that
    cannot run."""
    _check_device_and_data(device, data_root)
    if epochs:
        steps = dict(steps, **_steps_for_epochs(epochs, families, batch_size, data_root,
                                                num_scenes, train_limit))
    if img_size != 32 and not data_root:
        raise ValueError('--img-size applies to --data-root; the '
                         'Fashion-MNIST tasks are 32x32')
    runs = plan_runs(tasks, families, patches, steps,
                     dict(seg=32, cls=img_size))
    for name, value in (('--checkpoint-every', checkpoint_every),
                        ('--batch-size', batch_size), ('--threads', threads)):
        if value is not None and value < 1:
            raise ValueError(f'{name} must be >= 1, got {value}')
    num_classes = (count_classes(Path(data_root))
                   if data_root and 'cls' in tasks else None)
    return runs, num_classes


def _record(run, key: dict, config: Path, run_dir: Path, params: int,
            flops: int, seconds: float) -> dict:
    """The results.json record of a run that trained to the end."""
    from mmengine.config import Config
    metrics = read_final_metrics(run_dir)
    metric_key, metric_name = TASK_METRIC[run.task]
    cfg = Config.fromfile(str(config))
    return dict(key, tokens=run.tokens, params=params, flops=flops,
                batch_size=cfg.train_dataloader.batch_size,
                test_loss=metrics['test/loss'], metric=metrics[metric_key],
                metric_name=metric_name, seconds=round(seconds, 1),
                config=str(config), work_dir=str(run_dir))
