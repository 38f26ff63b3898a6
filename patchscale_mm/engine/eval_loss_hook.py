"""The model's own training loss on the validation and test sets.

Figure 1 fits its scaling laws to test loss. For classification and
segmentation a metric computes it from the predictions (``ClsTestLoss``,
``SegTestLoss``); a detector's predictions (boxes after NMS) do not determine
its loss, so this hook runs the detector in loss mode on each evaluation
batch as well and reports the mean total loss beside the evaluator's metrics.
"""
from typing import Optional

import torch
import torch.distributed as dist
from mmengine.hooks import Hook
from mmengine.model import BaseTTAModel, is_model_wrapper

from patchscale_mm.registry import HOOKS


@HOOKS.register_module()
class EvalLossHook(Hook):
    """Adds ``<prefix>/loss``, the image-weighted mean of the model's total
    training loss (the sum of every ``loss*`` term, as the optimizer sees
    it) over the evaluation set, to the validation and test metrics.

    The model stays in eval mode (no drop path); losses that sample (a
    detector's RPN and RoI samplers) are those of one draw. Batches without
    ground truth (e.g. COCO test-dev), and test-time augmentation, are
    skipped and counted in the log.

    Args:
        prefix (str): Metric prefix; ``'test'`` matches ``ClsTestLoss`` and
            ``SegTestLoss``, so one ``--metric-key test/loss`` reads all
            three tasks.
    """
    priority = 'NORMAL'  # before the LoggerHook prints the metrics

    def __init__(self, prefix: str = 'test'):
        self.prefix = prefix
        self._reset()

    def _reset(self):
        self._total, self._images, self._skipped = 0.0, 0, 0

    def before_val_epoch(self, runner) -> None:
        self._reset()

    def before_test_epoch(self, runner) -> None:
        self._reset()

    def after_val_iter(self, runner, batch_idx, data_batch=None,
                       outputs=None) -> None:
        self._accumulate(runner, data_batch)

    def after_test_iter(self, runner, batch_idx, data_batch=None,
                        outputs=None) -> None:
        self._accumulate(runner, data_batch)

    def after_val_epoch(self, runner, metrics: Optional[dict] = None) -> None:
        self._report(runner, metrics)

    def after_test_epoch(self, runner, metrics: Optional[dict] = None) -> None:
        self._report(runner, metrics)

    @torch.no_grad()
    def _accumulate(self, runner, data_batch) -> None:
        samples = data_batch['data_samples']
        model = runner.model.module if is_model_wrapper(
            runner.model) else runner.model
        # Under test-time augmentation (views of each image) the training
        # loss is not defined.
        if isinstance(model, BaseTTAModel) or not all(
                _has_ground_truth(sample) for sample in samples):
            self._skipped += len(samples)
            return
        data = model.data_preprocessor(data_batch, False)
        loss, _ = model.parse_losses(model(**data, mode='loss'))
        self._total += float(loss) * len(samples)
        self._images += len(samples)

    def _report(self, runner, metrics: Optional[dict]) -> None:
        counts = torch.tensor([self._total, self._images, self._skipped],
                              dtype=torch.float64)
        if dist.is_available() and dist.is_initialized():
            # gloo and NCCL both reduce a CPU or current-device tensor.
            device = 'cuda' if dist.get_backend() == 'nccl' else 'cpu'
            counts = counts.to(device)
            dist.all_reduce(counts)
        total, images, skipped = counts.tolist()
        if skipped:
            runner.logger.info(f'{self.prefix}/loss: {int(skipped)} images '
                               'without ground truth or under test-time '
                               'augmentation skipped')
        if metrics is not None and images:
            metrics[f'{self.prefix}/loss'] = total / images


def _has_ground_truth(sample) -> bool:
    """Whether a data sample carries the labels its loss needs. mmdet packs
    ``gt_instances`` even without annotations, then without boxes."""
    if 'gt_instances' in sample:
        return 'bboxes' in sample.gt_instances
    return 'gt_sem_seg' in sample or 'gt_label' in sample
