# Paper Table 8, Large/Huge: 200 epochs, batch 4096 (32 GPUs x 128, four
# nodes of 8), base lr 2e-4 (per 512), weight decay 0.3, betas (0.9, 0.95),
# 20 warmup epochs.
_base_ = './cls_pretrain_300e.py'
base_lr = 2e-4
batch_size = 4096
epochs = 200
warmup_epochs = 20
warmup_lr, min_lr = 1e-6, 1e-5
optim_wrapper = dict(
    optimizer=dict(
        lr=base_lr * batch_size / 512, weight_decay=0.3, betas=(0.9, 0.95)))
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
train_cfg = dict(max_epochs=epochs)
auto_scale_lr = dict(base_batch_size=batch_size)
