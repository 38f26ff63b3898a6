# COCO instance segmentation: mmdet's standard pipeline (short side 800,
# long side at most 1333, horizontal flip), batch 2 per GPU: 16 on 8 GPUs.
_base_ = 'mmdet::_base_/datasets/coco_instance.py'
train_dataloader = dict(batch_size=2)
# Test-time augmentation (tools/test.py --tta): three scales and their flips,
# boxes merged by class-wise NMS, each keeping its mask (mmdet's DetTTAModel
# merges boxes only).
tta_model = dict(
    type='patchscale_mm.InstanceSegTTAModel',
    tta_cfg=dict(nms=dict(type='nms', iou_threshold=0.5), max_per_img=100))
tta_scales = [(1333, 640), (1333, 800), (1333, 960)]
tta_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(
        type='TestTimeAug',
        transforms=[
            [dict(type='Resize', scale=s, keep_ratio=True) for s in tta_scales],
            [dict(type='RandomFlip', prob=1.0),
             dict(type='RandomFlip', prob=0.0)],
            [dict(type='LoadAnnotations', with_bbox=True, with_mask=True)],
            [dict(type='PackDetInputs',
                  meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                             'scale_factor', 'flip', 'flip_direction'))],
        ])
]
