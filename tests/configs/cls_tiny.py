# The shipped Adventurer-T/16 64px recipe, shrunk for CPU tests: a tiny
# backbone, ten Fashion-MNIST classes, small batches, two epochs.
_base_ = '../../configs/cls/adv_t_p16_in1k_64.py'
model = dict(
    backbone=dict(
        arch=dict(_delete_=True, embed_dims=32, num_layers=2, mlp_dims=48),
        mixer_cfg=dict(headdim=16, d_state=8, chunk_size=16)),
    head=dict(num_classes=10, in_channels=32))
data_preprocessor = dict(num_classes=10)
train_dataloader = dict(
    batch_size=8, num_workers=0, persistent_workers=False)
val_dataloader = dict(batch_size=8, num_workers=0, persistent_workers=False)
test_dataloader = val_dataloader
train_cfg = dict(max_epochs=2, val_interval=1)
default_hooks = dict(logger=dict(interval=1))
randomness = dict(seed=0)
