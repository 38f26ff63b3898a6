"""predictions.png: the first held-out scenes, their ground truth and what
each segmentation run predicts for them."""
import contextlib
import io
import json
import warnings
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .results import write_atomically

# predictions.png shows the first SHOWN_SCENES scenes of the val split (the
# same for every run); each segmentation run keeps its predicted label maps
# of them in PREDICTIONS_FILE, so a resumed sweep redraws without a model.
SHOWN_SCENES = 4
PREDICTIONS_FILE = 'val_predictions.npy'


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
    write_atomically(work_dir / 'predictions.json',
                      json.dumps(layout, indent=1))
    log(f'predictions: {path}')
    return path
