# Decoder-free segmentation with a DeiT backbone: one linear classifier per
# stride-p token, upsampled to the image by mmseg.
default_scope = 'mmseg'
data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255,
    size=(512, 512))
model = dict(
    type='EncoderDecoder',
    data_preprocessor=data_preprocessor,
    backbone=dict(
        type='patchscale_mm.PatchViT',
        arch='b',
        img_size=224,
        patch_size=16,
        out_type='featmap',
        drop_path_rate=0.1),
    decode_head=dict(
        type='patchscale_mm.LinearSegHead',
        in_channels=768,
        num_classes=150,
        dropout_ratio=0.0,
        loss_decode=dict(
            type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    train_cfg=dict(),
    test_cfg=dict(mode='slide', crop_size=(512, 512), stride=(341, 341)))
