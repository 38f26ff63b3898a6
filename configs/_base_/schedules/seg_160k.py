# Paper Sec. 4.1, ADE20k: AdamW lr 5e-5, weight decay 0.01, batch 16
# (8 GPUs x 2), 160k iterations; linear warmup then poly decay.
_base_ = './no_weight_decay.py'
# bf16 mixed precision, as the authors' code trains (its --amp default;
# the paper's Table 6 says float16); without a GPU, tools/train.py trains
# the same config in float32.
optim_wrapper = dict(
    type='AmpOptimWrapper',
    dtype='bfloat16',
    optimizer=dict(
        type='AdamW', lr=5e-5, betas=(0.9, 0.999), weight_decay=0.01))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0,
         end=1500),
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=1500,
         end=160000),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=160000,
                 val_interval=16000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
auto_scale_lr = dict(base_batch_size=16)
