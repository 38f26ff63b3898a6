"""The config of one run: the shipped sweep config plus the run's
overrides (patch size, steps, data), as the text written to its folder."""
from pathlib import Path
from typing import Optional

from .plan import Run

# Long runs (hours at patch 1 on a CPU) lose at most this many steps when
# interrupted; a checkpoint of the sweep's small models takes milliseconds.
CHECKPOINT_EVERY = 200

# Loader workers on a GPU, where decoding images in the training process
# would leave the device idle; on a CPU the workers would take its cores.
GPU_LOADER = dict(num_workers=8, persistent_workers=True, pin_memory=True)

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
               checkpoint_every: int = CHECKPOINT_EVERY,
               device: str = 'cpu') -> str:
    """The text of the run's config: the sweep config plus overrides.

    ``num_classes`` marks a user's classification data (``--data-root``):
    its images are resized to ``run.img_size`` whatever their size.
    ``device='cuda'`` adds loader workers; the shipped configs already
    train in bf16 autocast there (and in fp32 on a CPU).
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
    if device == 'cuda':
        train.update(GPU_LOADER)
        val.update(GPU_LOADER)
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
