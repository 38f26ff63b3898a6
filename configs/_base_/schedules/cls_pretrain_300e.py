# Paper Table 8, Tiny/Small/Base: 300 epochs of AdamW at batch 1024.
# The paper's "base learning rate" is per 512 images (DeiT's rule
# lr = base * batch / 512): 5e-4 gives 1e-3 at 1024, as its Sec. 4.1 states.
# tools/train.py --auto-scale-lr rescales it to the batch you actually run.
_base_ = './no_weight_decay.py'
base_lr = 5e-4
batch_size = 1024
epochs = 300
warmup_epochs = 5

optim_wrapper = dict(
    optimizer=dict(
        type='AdamW',
        lr=base_lr * batch_size / 512,
        weight_decay=0.05,
        betas=(0.9, 0.999),
        eps=1e-8))
param_scheduler = [
    dict(
        type='LinearLR',
        start_factor=1e-3,
        by_epoch=True,
        end=warmup_epochs,
        convert_to_iter_based=True),
    dict(
        type='CosineAnnealingLR',
        eta_min=1e-5,
        by_epoch=True,
        begin=warmup_epochs,
        end=epochs),
]
train_cfg = dict(by_epoch=True, max_epochs=epochs, val_interval=10)
val_cfg = dict()
test_cfg = dict()
auto_scale_lr = dict(base_batch_size=batch_size)
