"""Test loss, the paper's unified metric for its scaling laws (Figure 1).

Accuracy and mIoU saturate and jump; the cross-entropy of the model's
predictions on held-out data moves smoothly with the patch size, which is
what a power law is fitted to.
"""
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from mmengine.evaluator import BaseMetric

from patchscale_mm.registry import METRICS


@METRICS.register_module()
class ClsTestLoss(BaseMetric):
    """Mean cross-entropy ``-log p(label)`` of the predicted class
    probabilities (mmpretrain's ``pred_score``)."""
    default_prefix = 'test'

    def process(self, data_batch, data_samples: Sequence[dict]):
        for sample in data_samples:
            score = sample['pred_score'].float()
            label = int(sample['gt_label'].reshape(-1)[0])
            self.results.append(-torch.log(score[label].clamp_min(1e-12)))

    def compute_metrics(self, results: list) -> dict:
        return dict(loss=float(torch.stack(results).mean()))


@METRICS.register_module()
class SegTestLoss(BaseMetric):
    """Pixel-averaged cross-entropy of mmseg's full-resolution ``seg_logits``
    against the labels, skipping ``ignore_index``."""
    default_prefix = 'test'

    def __init__(self, ignore_index: int = 255, **kwargs):
        super().__init__(**kwargs)
        self.ignore_index = ignore_index

    def process(self, data_batch, data_samples: Sequence[dict]):
        for sample in data_samples:
            logits = sample['seg_logits']['data'].float()[None]  # (1, C, H, W)
            label = sample['gt_sem_seg']['data'].long().reshape(
                1, *logits.shape[-2:])
            total = F.cross_entropy(logits, label.to(logits.device),
                                    ignore_index=self.ignore_index,
                                    reduction='sum')
            count = int((label != self.ignore_index).sum())
            self.results.append((float(total), count))

    def compute_metrics(self, results: list) -> dict:
        total, count = np.sum(results, axis=0)
        return dict(loss=float(total / max(count, 1)))
