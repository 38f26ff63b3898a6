# ImageNet-1k at 64 px with the Adventurer authors' pretraining and
# intermediate augmentation (their --ThreeAugment --repeated-aug --reprob 0.0,
# colour jitter 0.3): random resized crop, flip, one of grayscale /
# solarization / blur, colour jitter; no RandAugment, no random erasing.
# Repeated augmentation x3 and 128 images per GPU as in the base.
_base_ = './imagenet_64.py'
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(
        type='RandomResizedCrop',
        scale=64,
        backend='pillow',
        interpolation='bicubic'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='patchscale_mm.ThreeAugment'),
    dict(type='ColorJitter', brightness=0.3, contrast=0.3, saturation=0.3),
    dict(type='PackInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
