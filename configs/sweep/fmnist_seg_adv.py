# The scaling sweep's segmentation task: the decoder-free Adventurer recipe
# of configs/seg, shrunk to a small model trained from scratch on 32x32
# scenes of two Fashion-MNIST garments (background + 10 garment classes).
# tools/patch_scaling_sweep.py sets the patch size, steps and data root.
_base_ = '../seg/adv_t_p8_linear_ade20k.py'
crop_size = (32, 32)
classes = ('background', 'T-shirt/top', 'Trouser', 'Pullover', 'Dress',
           'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot')
palette = [[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25],
           [0, 130, 200], [245, 130, 48], [145, 30, 180], [70, 240, 240],
           [240, 50, 230], [210, 245, 60], [250, 190, 212]]
max_iters = 600
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        arch=dict(_delete_=True, embed_dims=64, num_layers=4, mlp_dims=160),
        img_size=32,
        patch_size=8,
        drop_path_rate=0.0,
        mixer_cfg=dict(headdim=32, d_state=32, chunk_size=64),
        init_cfg=None),
    decode_head=dict(in_channels=64, num_classes=len(classes)),
    test_cfg=dict(_delete_=True, mode='whole'))

# Scenes are already 32x32: no resizing or cropping.
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs')
]
dataset = dict(
    type='BaseSegDataset',
    data_root='data/fmnist_scenes',
    img_suffix='.jpg',
    seg_map_suffix='.png',
    reduce_zero_label=True,
    metainfo=dict(classes=classes, palette=palette))
train_dataloader = dict(
    batch_size=64,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(dataset, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=64,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(dataset, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = [
    dict(type='IoUMetric', iou_metrics=['mIoU']),
    dict(type='patchscale_mm.SegTestLoss')
]
test_evaluator = val_evaluator

# From scratch: AdamW with a one-cycle schedule over the whole run.
optim_wrapper = dict(optimizer=dict(lr=2e-3, weight_decay=0.05))
param_scheduler = [
    dict(
        type='OneCycleLR',
        eta_max=2e-3,
        total_steps=max_iters,
        pct_start=0.1,
        by_epoch=False)
]
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(
    checkpoint=dict(interval=max_iters, max_keep_ckpts=1),
    logger=dict(interval=50))
custom_imports = dict(imports=[
    'patchscale_mm.models', 'patchscale_mm.engine', 'patchscale_mm.evaluation'
])
randomness = dict(seed=0)
