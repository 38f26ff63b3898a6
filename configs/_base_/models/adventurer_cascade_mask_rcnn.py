# Cascade Mask R-CNN (paper Sec. 3.2) on a plain Adventurer: mmdet's standard
# detector with the ResNet+FPN replaced by the backbone's single stride-p map
# and a ViTDet-style simple feature pyramid (strides 4-64).
_base_ = 'mmdet::_base_/models/cascade-mask-rcnn_r50_fpn.py'
default_scope = 'mmdet'
model = dict(
    data_preprocessor=dict(pad_size_divisor=32),
    backbone=dict(
        _delete_=True,
        type='patchscale_mm.Adventurer',
        arch='b',
        # The classification grid the backbone is loaded from; the position
        # embedding is interpolated to each image's grid at run time.
        img_size=224,
        patch_size=16,
        out_type='featmap',
        drop_path_rate=0.1,
        # As the classification weights were trained (the authors' code).
        drop_path_schedule='released',
        flip_rule='released'),
    neck=dict(
        _delete_=True,
        type='patchscale_mm.SimpleFeaturePyramid',
        in_channels=768,
        out_channels=256,
        in_stride=16,
        num_outs=5))
