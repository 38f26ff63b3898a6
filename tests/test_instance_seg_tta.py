"""InstanceSegTTAModel merges the views of one image: boxes and masks of a
flipped view return to the original image, class-wise NMS keeps the best
box of each object, and each kept box keeps its own mask."""
import torch
from mmdet.structures import DetDataSample
from mmengine.structures import InstanceData

from patchscale_mm.models import InstanceSegTTAModel

H, W = 16, 24


class Detector(torch.nn.Module):
    """The TTA model's wrapped detector; merging never calls it."""

    def test_step(self, data):
        raise AssertionError('not called')


def box_mask(x0, y0, x1, y1):
    mask = torch.zeros(H, W, dtype=torch.bool)
    mask[y0:y1, x0:x1] = True
    return mask


def view(boxes, scores, labels, flip):
    sample = DetDataSample(metainfo=dict(
        ori_shape=(H, W), tta_flip=flip, tta_flip_direction='horizontal',
        flip=False, flip_direction=None))
    masks = torch.stack([box_mask(*b) for b in boxes])
    sample.pred_instances = InstanceData(
        bboxes=torch.tensor(boxes, dtype=torch.float), scores=torch.tensor(scores),
        labels=torch.tensor(labels), masks=masks)
    return sample


def mirror(x0, y0, x1, y1):
    return (W - x1, y0, W - x0, y1)


def test_flipped_view_returns_to_the_image_and_nms_keeps_the_best():
    model = InstanceSegTTAModel(
        module=Detector(),
        tta_cfg=dict(nms=dict(type='nms', iou_threshold=0.5), max_per_img=10))
    shared, only_flipped = (2, 3, 8, 9), (14, 6, 22, 14)
    plain = view([shared], [0.9], [1], flip=False)
    # The flipped view sees the shared object mirrored (less sure) and one
    # object the plain view missed.
    flipped = view([mirror(*shared), mirror(*only_flipped)], [0.6, 0.7], [1, 2],
                   flip=True)
    merged = model.merge_preds([[plain, flipped]])[0].pred_instances
    order = merged.scores.argsort(descending=True)
    assert torch.allclose(merged.scores[order], torch.tensor([0.9, 0.7]))
    assert merged.labels[order].tolist() == [1, 2]
    assert merged.bboxes[order].tolist() == [list(map(float, shared)),
                                             list(map(float, only_flipped))]
    assert torch.equal(merged.masks[order[0]], box_mask(*shared))
    assert torch.equal(merged.masks[order[1]], box_mask(*only_flipped))


def test_without_masks_it_is_mmdets_box_merge():
    model = InstanceSegTTAModel(
        module=Detector(),
        tta_cfg=dict(nms=dict(type='nms', iou_threshold=0.5), max_per_img=10))
    samples = [view([(2, 3, 8, 9)], [0.9], [1], flip=False),
               view([mirror(2, 3, 8, 9)], [0.5], [1], flip=True)]
    for sample in samples:
        del sample.pred_instances.masks
    merged = model.merge_preds([samples])[0].pred_instances
    assert merged.bboxes.tolist() == [[2.0, 3.0, 8.0, 9.0]] and 'masks' not in merged
