# Decoder-free segmentation with a DeiT backbone.
_base_ = './adventurer_linear_seg.py'
model = dict(
    backbone=dict(
        _delete_=True,
        type='patchscale_mm.PatchViT',
        arch='b',
        img_size=224,
        patch_size=16,
        out_type='featmap',
        drop_path_rate=0.1))
