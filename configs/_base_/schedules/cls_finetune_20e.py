# Paper Table 9, Small/Base: the finetuning stage at 128 or 224 px. 20 epochs,
# lr 1e-5 at batch 512 (8 GPUs x 64; the authors' --unscale-lr: not rescaled
# by batch), weight decay 0.1, 5 warmup epochs from 1e-6, layer-wise lr decay
# 0.95 (Table 9; the authors' command leaves their default 1.0). Their min lr
# is also 1e-5, so the lr stays flat after warmup. Label smoothing 0.1 is set
# by the finetuning configs, RandAugment rand-m9-mstd0.5-inc1 and 64 images
# per GPU by imagenet_*_randaug.py.
_base_ = './cls_pretrain_300e.py'
base_lr = 1e-5
batch_size = 512
epochs = 20
warmup_epochs = 5
warmup_lr, min_lr = 1e-6, 1e-5
optim_wrapper = dict(
    constructor='LearningRateDecayOptimWrapperConstructor',
    optimizer=dict(lr=base_lr * batch_size / 512, weight_decay=0.1),
    paramwise_cfg=dict(layer_decay_rate=0.95))
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
train_cfg = dict(max_epochs=epochs, val_interval=1)
auto_scale_lr = dict(base_batch_size=batch_size)
