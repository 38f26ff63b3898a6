"""What a run reports (its size, cost and final metrics) and the sweep's
record of them: ``results.json`` and ``results.csv``."""
import csv
import io
import json
import warnings
from pathlib import Path
from typing import List

from .plan import Run

RESULT_KEYS = ('task', 'family', 'patch', 'tokens', 'params', 'flops',
               'steps', 'epochs', 'batch_size', 'device', 'test_loss', 'metric',
               'metric_name', 'seconds')


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
    flops = sum(
        flops_breakdown(run.family, dict(backbone.arch), run.img_size,
                        run.patch, num_classes=0,
                        mixer_cfg=backbone.get('mixer_cfg')).values())
    width = backbone.arch['embed_dims']
    if run.task == 'seg':  # a linear classifier per token
        flops += 2 * run.tokens * width * cfg.model.decode_head.num_classes
    else:
        flops += 2 * width * cfg.model.head.num_classes
    return params, flops


def load_results(path: Path) -> List[dict]:
    return json.loads(path.read_text()) if path.exists() else []


def write_atomically(path: Path, text: str):
    """A kill mid-write leaves the previous file, never half of one."""
    from patchscale_mm.engine import atomic_write
    atomic_write(path, text.encode())


def save_results(records: List[dict], work_dir: Path):
    """results.json and results.csv, each written atomically."""
    write_atomically(work_dir / 'results.json',
                     json.dumps(records, indent=1))
    table = io.StringIO(newline='')
    writer = csv.DictWriter(table, fieldnames=RESULT_KEYS,
                            extrasaction='ignore')
    writer.writeheader()
    writer.writerows(records)
    write_atomically(work_dir / 'results.csv', table.getvalue())
