# Paper Table 9, Large: the finetuning stage at 128 or 224 px. 50 epochs,
# base lr 2e-5 (per 512) at batch 512, weight decay 0.1, betas (0.9, 0.95),
# 5 warmup epochs, layer-wise lr decay 0.95.
_base_ = './cls_finetune_20e.py'
base_lr = 2e-5
epochs = 50
optim_wrapper = dict(
    optimizer=dict(lr=base_lr, betas=(0.9, 0.95)))  # batch 512
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
train_cfg = dict(max_epochs=epochs)
