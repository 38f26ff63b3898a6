"""Pictures of test predictions: ``tools/test.py --show-dir``.

One PNG per test image, drawn by the downstream package's own visualizer
(mmpretrain's ``UniversalVisualizer``, mmseg's ``SegLocalVisualizer``,
mmdet's ``DetLocalVisualizer``, whichever the config's ``visualizer`` is):
ground truth beside the prediction where the data has it.
"""
import os.path as osp
from typing import Optional

import mmcv
from mmengine.dist import get_dist_info
from mmengine.hooks import Hook

from patchscale_mm.registry import HOOKS


@HOOKS.register_module()
class ShowPredictionsHook(Hook):
    """Writes ``out_dir/<image stem>.png`` for the first ``limit`` test
    images (all when None).

    Args:
        out_dir (str): Folder of the pictures; relative paths are taken
            from the current directory, as the other command-line paths.
        limit (int, optional): Draw only the first ``limit`` images of the
            test set. With ``DefaultSampler(shuffle=False)``, process ``r``
            of ``w`` sees images ``r, r + w, ...``, so the count is global.
        topk (int): Classes listed for a classifier's prediction (its
            ``pred_score``), best first.
        method (str): The visualizer's drawing method: ``add_datasample``
            (mmseg, mmdet), ``visualize_cls`` (mmpretrain).
        draw_cfg (dict): Extra keyword arguments of that method, e.g.
            ``pred_score_thr`` for detection or ``resize`` for
            classification.
    """
    priority = 'LOW'

    def __init__(self,
                 out_dir: str,
                 limit: Optional[int] = None,
                 topk: int = 5,
                 method: str = 'add_datasample',
                 draw_cfg: Optional[dict] = None):
        if limit is not None and limit < 1:
            raise ValueError(f'limit must be at least 1, got {limit}')
        self.out_dir = out_dir
        self.limit = limit
        self.topk = topk
        self.method = method
        self.draw_cfg = dict(draw_cfg or {})
        self._seen = 0

    def before_test_epoch(self, runner) -> None:
        self._seen = 0

    def after_test_iter(self, runner, batch_idx, data_batch=None,
                        outputs=None) -> None:
        rank, world_size = get_dist_info()
        for sample in outputs:
            position = self._seen * world_size + rank
            self._seen += 1
            if self.limit is not None and position >= self.limit:
                continue
            path = sample.img_path
            image = mmcv.imread(path, channel_order='rgb')
            stem = osp.splitext(osp.basename(path))[0]
            getattr(runner.visualizer, self.method)(
                name=stem,
                image=image,
                data_sample=self._with_topk(sample),
                draw_gt=True,
                draw_pred=True,
                show=False,
                out_file=osp.join(self.out_dir, f'{stem}.png'),
                **self.draw_cfg)

    def after_test_epoch(self, runner, metrics=None) -> None:
        runner.logger.info(f'pictures of the predictions in {self.out_dir}')

    def _with_topk(self, sample):
        """A classifier's sample listing its ``topk`` best classes (the
        visualizers draw ``pred_label`` with its scores and names)."""
        if 'pred_score' not in sample or self.topk <= 1:
            return sample
        scores = sample.pred_score
        shown = sample.clone()
        shown.set_pred_label(scores.topk(min(self.topk, len(scores))).indices)
        return shown
