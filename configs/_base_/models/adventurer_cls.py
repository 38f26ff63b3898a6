# Adventurer classifier at any patch size. The class token, which Adventurer
# appends last, feeds a linear head. The model the authors' code builds: only
# layers 2-3 scan in reverse and stochastic depth follows their schedule
# (see Adventurer's flip_rule and drop_path_schedule). Their pretraining and
# intermediate stages use no label smoothing; the finetuning configs set 0.1.
default_scope = 'mmpretrain'
model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='patchscale_mm.Adventurer',
        arch='b',
        img_size=224,
        patch_size=16,
        drop_path_rate=0.1,
        drop_path_schedule='released',
        flip_rule='released'),
    neck=None,
    head=dict(
        type='LinearClsHead',
        num_classes=1000,
        in_channels=768,
        loss=dict(
            type='LabelSmoothLoss', label_smooth_val=0.0, mode='original'),
        init_cfg=dict(type='TruncNormal', layer='Linear', std=.02)),
    train_cfg=dict(augments=[
        dict(type='Mixup', alpha=0.8),
        dict(type='CutMix', alpha=1.0)
    ]),
)
