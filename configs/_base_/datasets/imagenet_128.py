# ImageNet-1k at 128 px: the 224 px recipe with 128 px crops.
_base_ = './imagenet_224.py'
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(
        type='RandomResizedCrop',
        scale=128,
        backend='pillow',
        interpolation='bicubic'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    {{_base_.rand_augment}},
    {{_base_.random_erasing}},
    dict(type='PackInputs'),
]
test_pipelines = {
    name: [
        dict(type='LoadImageFromFile'),
        dict(
            type='ResizeEdge',
            scale=int(128 / crop_ratio),
            edge='short',
            backend='pillow',
            interpolation='bicubic'),
        dict(type='CenterCrop', crop_size=128),
        dict(type='PackInputs'),
    ]
    for name, crop_ratio in _base_.test_crop_ratios.items()
}
test_pipeline = test_pipelines['crop_ratio_0875']
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
