"""The test-loss metrics against F.cross_entropy on known logits and labels,
fed the data samples that mmpretrain and mmseg produce."""
import torch
import torch.nn.functional as F
from mmengine.evaluator import Evaluator
from mmengine.structures import PixelData
from mmpretrain.structures import DataSample
from mmseg.structures import SegDataSample

from patchscale_mm.evaluation import ClsTestLoss, SegTestLoss


def evaluate(metric, samples, batch_size=2):
    evaluator = Evaluator(metric)
    for i in range(0, len(samples), batch_size):
        evaluator.process(samples[i:i + batch_size])
    return evaluator.evaluate(len(samples))


def test_cls_test_loss_is_the_cross_entropy_of_the_logits():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 7, generator=gen) * 3
    labels = torch.tensor([0, 6, 3, 3, 1])
    # mmpretrain's ClsHead.predict stores softmax scores as pred_score.
    samples = [DataSample().set_gt_label(int(y)).set_pred_score(s.softmax(-1))
               for s, y in zip(logits, labels)]
    result = evaluate(ClsTestLoss(), samples)
    expected = F.cross_entropy(logits, labels).item()
    assert abs(result['test/loss'] - expected) < 1e-5 * expected


def seg_sample(logits, label):
    sample = SegDataSample()
    sample.seg_logits = PixelData(data=logits)
    sample.gt_sem_seg = PixelData(data=label[None])
    return sample


def test_seg_test_loss_averages_over_the_labelled_pixels_of_all_images():
    gen = torch.Generator().manual_seed(0)
    logits = [torch.randn(4, 6, 5, generator=gen) * 2, torch.randn(4, 3, 8, generator=gen)]
    labels = [torch.randint(0, 4, (6, 5), generator=gen), torch.randint(0, 4, (3, 8), generator=gen)]
    labels[0][:2] = 255  # ignored pixels: fewer labelled pixels in image 0
    labels[1][0, 0] = 255
    samples = [seg_sample(x, y) for x, y in zip(logits, labels)]
    result = evaluate(SegTestLoss(), samples, batch_size=1)
    # One mean over every labelled pixel, not a mean of per-image means.
    flat_logits = torch.cat([x.flatten(1).T for x in logits])
    flat_labels = torch.cat([y.flatten() for y in labels])
    expected = F.cross_entropy(flat_logits, flat_labels, ignore_index=255).item()
    assert abs(result['test/loss'] - expected) < 1e-5 * expected
    per_image = sum(F.cross_entropy(x[None], y[None], ignore_index=255).item()
                    for x, y in zip(logits, labels)) / 2
    assert abs(per_image - expected) > 1e-3


def test_seg_test_loss_ignore_index_is_configurable():
    gen = torch.Generator().manual_seed(1)
    logits, label = torch.randn(3, 4, 4, generator=gen), torch.randint(0, 3, (4, 4), generator=gen)
    label[0] = 0
    result = evaluate(SegTestLoss(ignore_index=0), [seg_sample(logits, label)])
    expected = F.cross_entropy(logits[None], label[None], ignore_index=0).item()
    assert abs(result['test/loss'] - expected) < 1e-5 * expected


def test_detector_eval_loss_is_its_mean_training_loss_on_the_test_set(tmp_path):
    """EvalLossHook through mmdet's Runner on the COCO fixture: ``test/loss``
    equals the image-weighted mean of ``parse_losses(model.loss(...))`` over
    the test set, computed by a plain loop (deterministic samplers, so that
    one draw is every draw); a pipeline without annotations skips them."""
    from mmengine.config import Config
    from mmengine.runner import Runner

    from patchscale_mm.fixtures import make_coco_fixture
    root = make_coco_fixture(tmp_path / 'coco', 2, 3)
    cfg = Config.fromfile('tests/configs/det_tiny.py')
    cfg.work_dir = str(tmp_path / 'work')
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg[loader].dataset.data_root = f'{root}/'
    cfg.test_evaluator.ann_file = f'{root}/annotations/instances_val2017.json'
    cfg.val_evaluator.ann_file = cfg.test_evaluator.ann_file
    cfg.test_dataloader.batch_size = 2
    pseudo = dict(type='PseudoSampler')
    cfg.model.train_cfg.rpn.sampler = pseudo
    for stage in cfg.model.train_cfg.rcnn:
        stage.sampler = pseudo
    cfg.default_hooks.logger.interval = 1
    runner = Runner.from_cfg(cfg)
    metrics = runner.test()
    assert [h for h in runner.hooks if type(h).__name__ == 'EvalLossHook']

    model = runner.model.eval()
    total, images = 0.0, 0
    with torch.no_grad():
        for batch in runner.test_dataloader:
            data = model.data_preprocessor(batch, False)
            losses = model(**data, mode='loss')
            loss = sum(v.sum() if isinstance(v, torch.Tensor) else sum(v)
                       for k, v in losses.items() if 'loss' in k)
            total += float(loss) * len(batch['data_samples'])
            images += len(batch['data_samples'])
    assert images == 3
    assert abs(metrics['test/loss'] - total / images) <= 1e-5 * total / images
    assert 'coco/bbox_mAP' in metrics

    # Without annotations in the pipeline: no loss, the images counted.
    cfg.test_dataloader.dataset.pipeline = [
        t for t in cfg.test_dataloader.dataset.pipeline if t.type != 'LoadAnnotations']
    cfg.test_evaluator = dict(type='DumpDetResults', out_file_path=str(tmp_path / 'p.pkl'))
    cfg.work_dir = str(tmp_path / 'work2')
    metrics = Runner.from_cfg(cfg).test()
    assert 'test/loss' not in metrics
