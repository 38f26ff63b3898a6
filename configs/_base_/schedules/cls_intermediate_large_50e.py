# Paper Table 10, Large: the 224 px intermediate stage after 128 px
# pretraining. 50 epochs, base lr 8e-4 (per 512) at batch 4096 (32 GPUs x
# 128), weight decay 0.3, betas (0.9, 0.95), 20 warmup epochs, layer-wise lr
# decay 0.9.
_base_ = './cls_intermediate_100e.py'
base_lr = 8e-4
batch_size = 4096
epochs = 50
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
