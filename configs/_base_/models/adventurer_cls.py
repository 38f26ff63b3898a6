# Adventurer classifier at any patch size; the head reads the class token,
# which Adventurer appends last.
_base_ = './deit_cls.py'
model = dict(
    backbone=dict(
        _delete_=True,
        type='patchscale_mm.Adventurer',
        arch='b',
        img_size=224,
        patch_size=16,
        drop_path_rate=0.1))
