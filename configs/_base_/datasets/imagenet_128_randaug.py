# ImageNet-1k at 128 px with the Adventurer authors' finetuning augmentation
# (their --aa rand-m9-mstd0.5-inc1 --reprob 0.0 --no-repeated-aug):
# random resized crop, flip, RandAugment; no random erasing, no repeated
# augmentation. 64 images per GPU: the finetuning batch 512 on 8 GPUs.
_base_ = './imagenet_128.py'
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(
        type='RandomResizedCrop',
        scale=128,
        backend='pillow',
        interpolation='bicubic'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    {{_base_.rand_augment}},
    dict(type='PackInputs'),
]
train_dataloader = dict(
    batch_size=64,
    dataset=dict(pipeline=train_pipeline),
    sampler=dict(_delete_=True, type='DefaultSampler', shuffle=True))
