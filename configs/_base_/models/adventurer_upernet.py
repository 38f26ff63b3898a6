# UperNet on a plain Adventurer (paper Table 2 / Fig. 2): four block outputs
# at stride p are turned into a 4-level pyramid (x4, x2, x1, x0.5 of the
# stride-16 map, i.e. strides 4-32 at p16) by mmseg's MultiLevelNeck; the
# leaf configs set the scales for their patch (the pre-flight check refuses a
# mismatch). Neck + decode head: 12.5M parameters for Base, the paper's "13M"
# (Fig. 2; Table 2: 112M - 99M); Tiny's leaves narrow them to 4.8M (17M -
# 12M). The auxiliary FCN head (0.8M) only trains.
_base_ = './adventurer_linear_seg.py'
norm_cfg = dict(type='SyncBN', requires_grad=True)
model = dict(
    backbone=dict(out_indices=(3, 5, 7, 11)),
    neck=dict(
        type='MultiLevelNeck',
        in_channels=[768, 768, 768, 768],
        out_channels=320,
        scales=[4, 2, 1, 0.5]),
    decode_head=dict(
        _delete_=True,
        type='UPerHead',
        in_channels=[320, 320, 320, 320],
        in_index=[0, 1, 2, 3],
        pool_scales=(1, 2, 3, 6),
        channels=256,
        dropout_ratio=0.1,
        num_classes=150,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(
            type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    auxiliary_head=dict(
        type='FCNHead',
        in_channels=320,
        in_index=3,
        channels=256,
        num_convs=1,
        concat_input=False,
        dropout_ratio=0.1,
        num_classes=150,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(
            type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4)))
