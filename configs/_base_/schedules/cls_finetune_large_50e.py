# Paper Table 9, Large: the finetuning stage at 128 or 224 px. 50 epochs,
# base lr 2e-5 (per 512) at batch 512 (8 GPUs x 64), weight decay 0.1,
# betas (0.9, 0.95), 5 warmup epochs from 1e-6, cosine to 1e-5, layer-wise
# lr decay 0.95.
_base_ = './cls_finetune_20e.py'
base_lr = 2e-5
batch_size = 512
epochs = 50
warmup_epochs = 5
warmup_lr, min_lr = 1e-6, 1e-5
optim_wrapper = dict(
    optimizer=dict(lr=base_lr, betas=(0.9, 0.95)))  # batch 512
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
