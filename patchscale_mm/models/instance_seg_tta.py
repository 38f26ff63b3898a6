"""Test-time augmentation for instance segmentation.

mmdet's ``DetTTAModel`` merges the boxes of flipped and rescaled views and
refuses masks. A mask belongs to its box: un-flip each view's masks the way
the boxes are un-flipped, and keep the masks of the boxes NMS keeps.
"""
from typing import List

import torch
from mmcv.ops import batched_nms
from mmdet.models.test_time_augs import DetTTAModel
from mmdet.structures import DetDataSample
from mmengine.config import ConfigDict
from mmengine.structures import InstanceData

from patchscale_mm.registry import MODELS

_FLIP_DIMS = dict(horizontal=(-1, ), vertical=(-2, ), diagonal=(-2, -1))


def unflip_masks(masks: torch.Tensor, meta: dict) -> torch.Tensor:
    """(N, H, W) masks of a flipped view in the original orientation."""
    if not meta.get('flip', False):
        return masks
    return masks.flip(_FLIP_DIMS[meta['flip_direction']])


@MODELS.register_module()
class InstanceSegTTAModel(DetTTAModel):
    """``DetTTAModel`` that also merges ``pred_instances.masks``: the views'
    detections are pooled (boxes and masks back in the original image),
    class-wise NMS picks the survivors, and each keeps its own mask.

    Args:
        tta_cfg (dict): ``nms`` (mmcv's ``batched_nms`` config) and
            ``max_per_img``, as for ``DetTTAModel``.
    """

    def __init__(self, tta_cfg: dict, **kwargs):
        # Attribute access (``tta_cfg.nms``) for a plain dict as well.
        super().__init__(tta_cfg=ConfigDict(tta_cfg), **kwargs)

    def test_step(self, data):
        # mmdet's cascade mask head un-flips the masks of a view whose
        # metainfo says ``flip`` (with a numpy slice that fails on tensors):
        # the detector sees every view unflipped, the merge un-flips.
        for views in data['data_samples']:
            for sample in views:
                sample.set_metainfo(dict(
                    tta_flip=sample.metainfo.get('flip', False),
                    tta_flip_direction=sample.metainfo.get('flip_direction'),
                    flip=False))
        return super().test_step(data)

    def _merge_single_sample(
            self, data_samples: List[DetDataSample]) -> DetDataSample:
        metas = [
            dict(sample.metainfo, flip=sample.metainfo.get('tta_flip', False),
                 flip_direction=sample.metainfo.get('tta_flip_direction'))
            for sample in data_samples
        ]
        for sample, meta in zip(data_samples, metas):
            sample.set_metainfo(dict(flip=meta['flip'],
                                     flip_direction=meta['flip_direction']))
        if data_samples[0].pred_instances.get('masks', None) is None:
            return super()._merge_single_sample(data_samples)
        preds = [sample.pred_instances for sample in data_samples]
        bboxes, scores = self.merge_aug_bboxes([p.bboxes for p in preds],
                                               [p.scores for p in preds],
                                               metas)
        if bboxes.numel() == 0:
            return data_samples[0]
        labels = torch.cat([p.labels for p in preds])
        masks = torch.cat(
            [unflip_masks(p.masks, meta) for p, meta in zip(preds, metas)])
        dets, keep = batched_nms(bboxes, scores, labels, self.tta_cfg.nms)
        top = self.tta_cfg.max_per_img
        merged = InstanceData(
            bboxes=dets[:top, :-1],
            scores=dets[:top, -1],
            labels=labels[keep][:top],
            masks=masks[keep][:top])
        result = data_samples[0]
        result.pred_instances = merged
        return result
