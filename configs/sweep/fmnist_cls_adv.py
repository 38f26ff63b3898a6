# The scaling sweep's classification task: the Adventurer recipe of
# configs/cls, shrunk to a small model trained from scratch on Fashion-MNIST
# (60k/10k, 28x28 padded to 32x32, ten classes, plain cross-entropy).
# tools/patch_scaling_sweep.py sets the patch size, steps and data root.
_base_ = '../cls/adv_t_p8_in1k_64.py'
max_iters = 900
model = dict(
    backbone=dict(
        arch=dict(_delete_=True, embed_dims=64, num_layers=4, mlp_dims=160),
        img_size=32,
        patch_size=8,
        drop_path_rate=0.0,
        mixer_cfg=dict(headdim=32, d_state=32, chunk_size=64)),
    head=dict(
        num_classes=10,
        in_channels=64,
        loss=dict(_delete_=True, type='CrossEntropyLoss', loss_weight=1.0)),
    train_cfg=None)
data_preprocessor = dict(
    num_classes=10, mean=[72.9, 72.9, 72.9], std=[90.0, 90.0, 90.0])

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs')
]
test_pipeline = [dict(type='LoadImageFromFile'), dict(type='PackInputs')]
train_dataloader = dict(
    batch_size=128,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(data_root='data/fmnist_imagenet', pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=256,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(data_root='data/fmnist_imagenet', pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = [
    dict(type='Accuracy', topk=(1, )),
    dict(type='patchscale_mm.ClsTestLoss')
]
test_evaluator = val_evaluator

optim_wrapper = dict(optimizer=dict(lr=2e-3, weight_decay=0.05))
param_scheduler = [
    dict(
        type='OneCycleLR',
        eta_max=2e-3,
        total_steps=max_iters,
        pct_start=0.1,
        by_epoch=False)
]
train_cfg = dict(
    _delete_=True,
    type='IterBasedTrainLoop',
    max_iters=max_iters,
    val_interval=max_iters)
default_hooks = dict(
    checkpoint=dict(by_epoch=False, interval=max_iters, max_keep_ckpts=1),
    logger=dict(interval=50, log_metric_by_epoch=False))
log_processor = dict(by_epoch=False)
custom_imports = dict(imports=[
    'patchscale_mm.models', 'patchscale_mm.engine', 'patchscale_mm.evaluation'
])
randomness = dict(seed=0)
