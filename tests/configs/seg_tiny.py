# The shipped Adventurer-T/8 linear-head ADE20k recipe, shrunk for CPU tests:
# a tiny backbone, 64x64 scenes, a few iterations.
_base_ = '../../configs/seg/adv_t_p8_linear_ade20k.py'
crop_size = (64, 64)
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        arch=dict(_delete_=True, embed_dims=32, num_layers=2, mlp_dims=48),
        img_size=64,
        mixer_cfg=dict(headdim=16, d_state=8, chunk_size=16),
        init_cfg=None),  # from scratch
    decode_head=dict(in_channels=32),
    test_cfg=dict(mode='whole'))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=(128, 64), ratio_range=(0.75, 1.25),
         keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(128, 64), keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs')
]
train_dataloader = dict(
    batch_size=2,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
train_cfg = dict(max_iters=6, val_interval=6)
default_hooks = dict(
    checkpoint=dict(interval=3), logger=dict(interval=1))
randomness = dict(seed=0)
