"""Sweep records: read from ``results.json`` (a list of records with at
least ``task``, ``family``, ``patch`` and the fitted key, e.g. ``test_loss``)
or from MMEngine's ``vis_data/scalars.json`` logs, and grouped by
``(task, family)``."""
import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .fit_result import Group

GROUP_KEYS = ('task', 'family', 'patch')
PathLike = Union[str, Path]


def _check_record(record, where: str, key: str) -> dict:
    if not isinstance(record, dict):
        raise ValueError(f'{where} is not a JSON object: {record!r}')
    missing = [k for k in GROUP_KEYS + (key, ) if k not in record]
    if missing:
        raise ValueError(f'{where} lacks key(s) {", ".join(missing)} '
                         f'(has: {", ".join(sorted(record)) or "none"})')
    return record


def _read_results_json(path: Path, key: str) -> List[dict]:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f'{path}: not valid JSON ({e})') from None
    if not isinstance(data, list):
        raise ValueError(f'{path}: expected a list of records, got '
                         f'{type(data).__name__}')
    return [
        _check_record(r, f'{path}: record {i}', key)
        for i, r in enumerate(data)
    ]


def _meta_from_config(config_path: Path) -> dict:
    """task/family/patch from the config MMEngine dumps beside its logs."""
    from mmengine.config import Config
    cfg = Config.fromfile(str(config_path))
    model = cfg.get('model', {})
    backbone = model.get('backbone', {})
    meta = {}
    if 'type' in backbone:
        meta['family'] = str(backbone['type']).split('.')[-1]
    if 'patch_size' in backbone:
        meta['patch'] = backbone['patch_size']
    kinds = {'ImageClassifier': 'cls', 'EncoderDecoder': 'seg'}
    if 'type' in model:
        kind = kinds.get(str(model['type']).split('.')[-1], 'det')
        size = backbone.get('img_size')
        meta['task'] = f'{kind}-{size}' if isinstance(size, int) else kind
    return meta


def _read_scalars_json(path: Path, key: str, meta: dict) -> dict:
    """The last logged value of ``key`` in an MMEngine ``scalars.json``."""
    last = None
    for i, line in enumerate(path.read_text().splitlines()):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            raise ValueError(f'{path}: line {i + 1} is not JSON') from None
        if key in entry:
            last = entry
    if last is None:
        raise ValueError(f'{path}: no logged value of {key!r} (pass the '
                         'logged name with --metric-key)')
    record = {key: last[key], 'steps': last.get('step')}
    config = path.parent / 'config.py'
    if config.is_file() and not all(k in meta for k in GROUP_KEYS):
        record.update(_meta_from_config(config))
    record.update(meta)
    missing = [k for k in GROUP_KEYS if k not in record]
    if missing:
        raise ValueError(f'{path}: cannot tell {", ".join(missing)} (no '
                         f'usable config.py beside it); pass '
                         f'{" ".join("--" + k for k in missing)}')
    return record


def load_records(paths: Union[PathLike, Sequence[PathLike]],
                 key: str = 'test_loss',
                 meta: Optional[dict] = None) -> List[dict]:
    """Reads sweep records from results files, logs or directories.

    Args:
        paths: ``results.json`` files (a JSON list of records), MMEngine
            ``scalars.json`` logs (one JSON object per line; the last value
            of ``key`` is taken), or directories searched for both.
        key (str): The value to fit. Defaults to ``'test_loss'``.
        meta (dict, optional): ``task``/``family``/``patch`` for logs whose
            ``vis_data/config.py`` does not tell them.

    Returns:
        list[dict]: Records with at least ``task``, ``family``, ``patch`` and
        ``key``.

    Raises:
        ValueError: On a missing path or key, naming which.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    records = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(path.rglob('results.json')) + sorted(
                path.rglob('scalars.json'))
            if not found:
                raise ValueError(f'{path}: no results.json or scalars.json '
                                 'below this directory')
        elif path.is_file():
            found = [path]
        else:
            raise ValueError(f'{path}: no such file or directory')
        for file in found:
            if file.name.endswith('scalars.json'):
                records.append(_read_scalars_json(file, key, meta or {}))
            else:
                records.extend(_read_results_json(file, key))
    return records


def group_records(records: Sequence[dict]) -> Dict[Group, list]:
    """Records grouped by ``(task, family)``, in first-seen order."""
    groups = {}
    for r in records:
        groups.setdefault((str(r['task']), str(r['family'])), []).append(r)
    return groups


def group_points(rows: Sequence[dict],
                 key: str) -> Tuple[np.ndarray, np.ndarray]:
    """The patch sizes and values of ``key`` of a group's records, as
    floats.

    Raises:
        TypeError, ValueError: If a value is not a number.
    """
    return (np.array([float(r['patch']) for r in rows]),
            np.array([float(r[key]) for r in rows]))
