# ImageNet-1k at 224 px with DeiT's augmentation (RandAugment
# rand-m9-mstd0.5-inc1, random erasing 0.25, repeated augmentation x3;
# Mixup/CutMix live in the model), 128 images per GPU. The Adventurer stages
# swap the augmentation: imagenet_224_3aug.py, imagenet_224_randaug.py.
dataset_type = 'ImageNet'
data_root = 'data/imagenet'
data_preprocessor = dict(
    num_classes=1000,
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    to_rgb=True)  # images load as BGR
bgr_mean = data_preprocessor['mean'][::-1]
bgr_std = data_preprocessor['std'][::-1]

rand_augment = dict(
    type='RandAugment',
    policies='timm_increasing',
    num_policies=2,
    total_level=10,
    magnitude_level=9,
    magnitude_std=0.5,
    hparams=dict(pad_val=[round(x) for x in bgr_mean], interpolation='bicubic'))
random_erasing = dict(
    type='RandomErasing',
    erase_prob=0.25,
    mode='rand',
    min_area_ratio=0.02,
    max_area_ratio=1 / 3,
    fill_color=bgr_mean,
    fill_std=bgr_std)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(
        type='RandomResizedCrop',
        scale=224,
        backend='pillow',
        interpolation='bicubic'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    rand_augment,
    random_erasing,
    dict(type='PackInputs'),
]
# Test: resize the short edge to size / crop ratio, then centre-crop, at crop
# ratio 0.875; the authors evaluate patches below 16 and inputs above 224 px
# at 1.0, which those leaf configs pick from test_pipelines.
test_crop_ratios = dict(crop_ratio_0875=0.875, crop_ratio_1=1.0)
test_pipelines = {
    name: [
        dict(type='LoadImageFromFile'),
        dict(
            type='ResizeEdge',
            scale=int(224 / crop_ratio),
            edge='short',
            backend='pillow',
            interpolation='bicubic'),
        dict(type='CenterCrop', crop_size=224),
        dict(type='PackInputs'),
    ]
    for name, crop_ratio in test_crop_ratios.items()
}
test_pipeline = test_pipelines['crop_ratio_0875']

train_dataloader = dict(
    batch_size=128,
    num_workers=8,
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        split='train',
        pipeline=train_pipeline),
    # DeiT's repeated augmentation: each image three times per epoch, on
    # different GPUs, with different augmentations.
    sampler=dict(type='RepeatAugSampler', shuffle=True),
)
val_dataloader = dict(
    batch_size=128,
    num_workers=8,
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        split='val',
        pipeline=test_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=False),
)
# Top-1/5 and the test loss, the paper's Figure 1 axis
# (tools/analysis/fit_scaling_law.py fits it across patch sizes).
val_evaluator = [
    dict(type='Accuracy', topk=(1, 5)),
    dict(type='patchscale_mm.ClsTestLoss')
]
test_dataloader = val_dataloader
test_evaluator = val_evaluator
