# Paper Table 10, Small/Base: the 224 px intermediate stage after 128 px
# pretraining. 100 epochs, base lr 5e-4 (per 512) at batch 1024 (8 GPUs x
# 128), weight decay 0.05, 5 warmup epochs, layer-wise lr decay 0.9 (Table
# 10; the authors' command leaves their default 1.0).
_base_ = './cls_pretrain_300e.py'
base_lr = 5e-4
batch_size = 1024
epochs = 100
warmup_epochs = 5
warmup_lr, min_lr = 1e-6, 1e-5
optim_wrapper = dict(
    constructor='LearningRateDecayOptimWrapperConstructor',
    paramwise_cfg=dict(layer_decay_rate=0.9))
param_scheduler = [
    dict(
        type='LinearLR',
        start_factor=warmup_lr / (base_lr * batch_size / 512),
        by_epoch=True,
        end=warmup_epochs,
        convert_to_iter_based=True),
    dict(
        type='CosineAnnealingLR',
        eta_min=min_lr,
        by_epoch=True,
        begin=warmup_epochs,
        end=epochs),
]
train_cfg = dict(max_epochs=epochs, val_interval=5)
