# Paper Table 9, Small/Base: the finetuning stage at 128 or 224 px. 20 epochs,
# base lr 1e-5 (per 512) at batch 512, weight decay 0.1, 5 warmup epochs,
# layer-wise lr decay 0.95. Label smoothing 0.1 and RandAugment
# rand-m9-mstd0.5-inc1 come with the model and dataset bases.
_base_ = './cls_pretrain_300e.py'
base_lr = 1e-5
batch_size = 512
epochs = 20
optim_wrapper = dict(
    constructor='LearningRateDecayOptimWrapperConstructor',
    optimizer=dict(lr=base_lr * batch_size / 512, weight_decay=0.1),
    paramwise_cfg=dict(layer_decay_rate=0.95))
param_scheduler = [
    dict(
        type='LinearLR',
        start_factor=1e-3,
        by_epoch=True,
        end=5,
        convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-7, by_epoch=True, begin=5,
         end=epochs),
]
train_cfg = dict(max_epochs=epochs, val_interval=1)
auto_scale_lr = dict(base_batch_size=batch_size)
