# ADE20k semantic segmentation: mmseg's standard pipeline (random resize of
# the 2048x512 scale by 0.5-2, 512x512 crops, 150 classes with
# reduce_zero_label), batch 2 per GPU: 16 on 8 GPUs, as in the paper.
_base_ = 'mmseg::_base_/datasets/ade20k.py'
train_dataloader = dict(batch_size=2)
# mIoU and the test loss (pixel-averaged cross-entropy), the paper's Figure 1
# axis.
val_evaluator = [
    dict(type='IoUMetric', iou_metrics=['mIoU']),
    dict(type='patchscale_mm.SegTestLoss')
]
test_evaluator = val_evaluator
# Test-time augmentation (tools/test.py --tta): mmseg's multi-scale (0.5 to
# 1.75) and flip views of tta_pipeline, logits averaged.
tta_model = dict(type='SegTTAModel')
