# The sweep's segmentation task with a ViT of the same width and depth.
_base_ = './fmnist_seg_adv.py'
model = dict(
    backbone=dict(
        _delete_=True,
        type='patchscale_mm.PatchViT',
        arch=dict(embed_dims=64, num_layers=4, num_heads=4, mlp_dims=256),
        img_size=32,
        patch_size=8,
        out_type='featmap'))
