"""Files a run will read that are not there: data roots, annotation files
and checkpoints (complete, and loadable with weights-only unpickling).

Generic: any OpenMMLab config, whatever its backbone.
"""
import os.path as osp
from typing import Iterator, List, Tuple

from mmengine.config import Config

from patchscale_mm.engine.checkpoint_io import (CheckpointError,
                                                check_checkpoint_file)


def iter_datasets(node, path: str) -> Iterator[Tuple[str, dict]]:
    """A dataset config and the ones wrapped in it (Repeat/Concat...)."""
    if isinstance(node, dict):
        yield path, node
        yield from iter_datasets(node.get('dataset'), f'{path}.dataset')
        for i, child in enumerate(node.get('datasets') or []):
            yield from iter_datasets(child, f'{path}.datasets[{i}]')


def _is_local(path) -> bool:
    return isinstance(path, str) and '://' not in path


def data_problems(cfg: Config, mode: str) -> List[str]:
    """Missing data roots of the loaders (and evaluator annotation files)
    the run will use."""
    if mode == 'train':
        names = [('train_dataloader', None)]
        if cfg.get('val_cfg') is not None:
            names.append(('val_dataloader', 'val_evaluator'))
    else:
        names = [('test_dataloader', 'test_evaluator')]
    problems = []
    for loader, evaluator in names:
        node = cfg.get(loader)
        if not isinstance(node, dict):
            continue
        for path, dataset in iter_datasets(node.get('dataset'),
                                           f'{loader}.dataset'):
            root = dataset.get('data_root')
            if _is_local(root) and root and not osp.isdir(root):
                problems.append(
                    f"{path}.data_root '{root}' does not exist; put the data "
                    f'there or pass --cfg-options {path}.data_root=DIR')
        evaluators = cfg.get(evaluator) if evaluator else None
        for i, ev in enumerate(evaluators if isinstance(
                evaluators, (list, tuple)) else [evaluators]):
            ann = ev.get('ann_file') if isinstance(ev, dict) else None
            if _is_local(ann) and ann and not osp.isfile(ann):
                where = evaluator if isinstance(ev, dict) and not isinstance(
                    evaluators, (list, tuple)) else f'{evaluator}[{i}]'
                problems.append(f"{where}.ann_file '{ann}' does not exist")
    return problems


def _pretrained_checkpoints(node, path: str) -> Iterator[Tuple[str, str]]:
    if isinstance(node, dict):
        if node.get('type') == 'Pretrained' and node.get('checkpoint'):
            yield f'{path}.checkpoint', node['checkpoint']
        for key, value in node.items():
            yield from _pretrained_checkpoints(
                value, f'{path}.{key}' if path else str(key))
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            yield from _pretrained_checkpoints(value, f'{path}[{i}]')


def checkpoint_problems(cfg: Config, mode: str = 'train') -> List[str]:
    """``load_from`` and, for training (where weights are initialised),
    every ``init_cfg=dict(type='Pretrained')`` file: complete, and loadable
    with weights-only unpickling."""
    files = (list(_pretrained_checkpoints(cfg.get('model'), 'model'))
             if mode == 'train' else [])
    if cfg.get('load_from'):
        files.append(('load_from', cfg.load_from))
    problems = []
    for path, file in files:
        if _is_local(file):
            try:
                check_checkpoint_file(file)
            except CheckpointError as e:
                # Multi-stage configs load the previous stage's last epoch.
                hint = (' (train the stage that writes it first, or pass '
                        f'--cfg-options {path}=FILE)'
                        if not osp.exists(file) else '')
                problems.append(f'{path}: {e}{hint}')
    return problems
