# COCO instance segmentation: mmdet's standard pipeline (short side 800,
# long side at most 1333, horizontal flip), batch 2 per GPU: 16 on 8 GPUs.
_base_ = 'mmdet::_base_/datasets/coco_instance.py'
train_dataloader = dict(batch_size=2)
