# Paper Sec. 4.1, COCO: AdamW lr 1e-4, weight decay 0.05, 12 epochs
# (the "1x" schedule, steps at epochs 8 and 11), batch 16.
_base_ = './no_weight_decay.py'
# bf16 mixed precision, as the authors' code trains (its --amp default;
# the paper's Table 6 says float16); without a GPU, tools/train.py trains
# the same config in float32.
optim_wrapper = dict(
    type='AmpOptimWrapper',
    dtype='bfloat16',
    optimizer=dict(
        type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    clip_grad=dict(max_norm=1.0, norm_type=2))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0,
         end=500),
    dict(type='MultiStepLR', begin=0, end=12, by_epoch=True,
         milestones=[8, 11], gamma=0.1),
]
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=12, val_interval=1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
auto_scale_lr = dict(base_batch_size=16)
