# Paper Table 10, Small/Base: the 224 px intermediate stage after 128 px
# pretraining. 100 epochs, base lr 5e-4 (per 512) at batch 1024, weight decay
# 0.05, 5 warmup epochs, layer-wise lr decay 0.9.
_base_ = './cls_pretrain_300e.py'
epochs = 100
optim_wrapper = dict(
    constructor='LearningRateDecayOptimWrapperConstructor',
    paramwise_cfg=dict(layer_decay_rate=0.9))
param_scheduler = [
    dict(
        type='LinearLR',
        start_factor=1e-3,
        by_epoch=True,
        end=5,
        convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-6, by_epoch=True, begin=5,
         end=epochs),
]
train_cfg = dict(max_epochs=epochs, val_interval=5)
