"""Draw what a config's data pipeline makes of your dataset, labels included.

Builds the dataset of one phase (train by default) from the config, runs its
pipeline and writes one PNG per sample, the transformed image with its ground
truth drawn by the downstream package's own visualizer, chosen from the
config's ``default_scope``: class labels (mmpretrain ``UniversalVisualizer``),
segmentation masks (mmseg ``SegLocalVisualizer``) or boxes and instance masks
(mmdet ``DetLocalVisualizer``). It first prints the dataset's classes, whether
they have a palette and, for segmentation, ``reduce_zero_label``, then one
line per image with the labels it holds, so you can check that an ImageNet-,
ADE20k- or COCO-format folder is read as you expect before training on it.
Images shorter than 256 px are enlarged by a whole factor (nearest neighbour,
so every input pixel stays visible as a block) for legible labels.

    python tools/analysis/browse_dataset.py configs/cls/adv_t_p16_in1k_64.py \\
        --output-dir work_dirs/browse/cls --show-number 20
    python tools/analysis/browse_dataset.py \\
        configs/seg/adv_t_p8_linear_ade20k.py --phase val \\
        --output-dir work_dirs/browse/seg \\
        --cfg-options val_dataloader.dataset.data_root=data/ade/
"""
import argparse
import importlib
import math
import os
import os.path as osp
import sys
import warnings
from typing import List, Optional, Sequence

from mmengine.config import Config

from patchscale_mm.apis.arguments import (apply_cli_options, base_parser,
                                          parse_args)
from patchscale_mm.apis.config import load_config

# default_scope -> the visualizer that draws that task's ground truth.
VISUALIZERS = dict(
    mmpretrain='mmpretrain.visualization.UniversalVisualizer',
    mmseg='mmseg.visualization.SegLocalVisualizer',
    mmdet='mmdet.visualization.DetLocalVisualizer')
MIN_SIDE = 256  # shorter images are enlarged to at least this many pixels
MAX_NAMES = 12  # class names listed in the header before '...'


def build_parser() -> argparse.ArgumentParser:
    parser = base_parser(__doc__.splitlines()[0], 'config file path')
    parser.add_argument(
        '--output-dir', required=True, help='where the PNG files go')
    parser.add_argument(
        '--show-number',
        '-n',
        type=int,
        default=sys.maxsize,
        help='how many samples to draw, from the first (default: all)')
    parser.add_argument(
        '--phase',
        '-p',
        choices=['train', 'val', 'test'],
        default='train',
        help='whose dataloader\'s dataset and pipeline to browse')
    return parser


def error(message: str) -> SystemExit:
    """A one-line ``error: ...`` exit."""
    return SystemExit('error: ' + ' '.join(str(message).split()))


def dataset_config(cfg: Config, phase: str, config_path: str):
    """The phase's dataset config; a clear error without one."""
    loader = cfg.get(f'{phase}_dataloader')
    if not loader or not loader.get('dataset'):
        raise error(f'{config_path} has no {phase}_dataloader with a dataset '
                    'to browse; pick another --phase')
    return loader.dataset


def data_roots(dataset_cfg) -> List[str]:
    """``data_root`` of the dataset and of the datasets it wraps
    (RepeatDataset, ClassBalancedDataset, ConcatDataset)."""
    roots = []
    if isinstance(dataset_cfg, dict):
        if isinstance(dataset_cfg.get('data_root'), str):
            roots.append(dataset_cfg['data_root'])
        for key in ('dataset', 'datasets'):
            roots += data_roots(dataset_cfg.get(key))
    elif isinstance(dataset_cfg, (list, tuple)):
        for item in dataset_cfg:
            roots += data_roots(item)
    return roots


def check_config(cfg: Config, args) -> str:
    """Everything that can be checked before importing the downstream
    package; returns the scope."""
    if args.show_number < 1:
        raise error(f'--show-number must be at least 1, not '
                    f'{args.show_number}')
    scope = cfg.get('default_scope')
    if scope not in VISUALIZERS:
        raise error(f'{args.config}: default_scope {scope!r} is not one of '
                    f'{", ".join(VISUALIZERS)}')
    dataset_cfg = dataset_config(cfg, args.phase, args.config)
    for root in data_roots(dataset_cfg):
        if root and not osp.isdir(root):
            raise error(
                f'data_root {root} of the {args.phase} dataset not found; '
                f'point it at your data with --cfg-options '
                f'{args.phase}_dataloader.dataset.data_root=DIR')
    return scope


def build_dataset(cfg: Config, scope: str, phase: str):
    from mmengine.registry import init_default_scope
    from mmengine.utils import import_modules_from_strings
    if cfg.get('custom_imports'):
        import_modules_from_strings(**cfg.custom_imports)
    init_default_scope(scope)
    seed = (cfg.get('randomness') or {}).get('seed')
    if seed is not None:  # the same samples and augmentations every run
        from mmengine.runner import set_random_seed
        set_random_seed(seed)
    registry = importlib.import_module(f'{scope}.registry')
    empty = error(f'the {phase} dataset is empty: no samples under its '
                  'data_root / ann_file (or all filtered out)')
    try:
        dataset = registry.DATASETS.build(
            cfg.get(f'{phase}_dataloader').dataset)
    except (OSError, ValueError, KeyError, AssertionError) as e:
        # MMEngine serializing an empty data list fails in np.concatenate.
        if 'need at least one array to concatenate' in str(e):
            raise empty from None
        raise error(f'cannot build the {phase} dataset: '
                    f'{type(e).__name__}: {e}') from None
    if len(dataset) == 0:
        raise empty
    return dataset


def build_visualizer(scope: str, metainfo: dict):
    module, name = VISUALIZERS[scope].rsplit('.', 1)
    cls = getattr(importlib.import_module(module), name)
    visualizer = cls(name='browse_dataset')
    visualizer.dataset_meta = metainfo
    return visualizer


def model_num_classes(node) -> Optional[int]:
    """The first ``num_classes`` in the model config (head or decode head)."""
    if isinstance(node, dict):
        if isinstance(node.get('num_classes'), int):
            return node['num_classes']
        children = node.values()
    elif isinstance(node, (list, tuple)):
        children = node
    else:
        return None
    for child in children:
        found = model_num_classes(child)
        if found is not None:
            return found
    return None


def pipeline_reduce_zero_label(dataset_cfg) -> Optional[bool]:
    for step in dataset_cfg.get('pipeline') or []:
        if isinstance(step, dict) and 'reduce_zero_label' in step:
            return step['reduce_zero_label']
    return None


def describe(dataset, cfg: Config, scope: str, phase: str) -> List[str]:
    """The header: what the dataset holds and the usual surprises."""
    meta = dataset.metainfo
    classes = list(meta.get('classes') or [])
    # Quoted: ImageNet's names hold commas ('tench, Tinca tinca').
    listed = ', '.join(repr(str(c)) for c in classes[:MAX_NAMES])
    if len(classes) > MAX_NAMES:
        listed += f', ... {str(classes[-1])!r}'
    palette = meta.get('palette')
    if palette:
        colours = f'{len(palette)} colours'
    elif scope == 'mmpretrain':
        colours = 'none'
    else:
        colours = 'none (the visualizer picks colours)'
    lines = [
        f'{type(dataset).__name__} ({phase}): {len(dataset)} samples, '
        f'{len(classes)} classes: {listed or "none given"}',
        f'palette: {colours}',
    ]
    if scope == 'mmseg':
        reduce = meta.get('reduce_zero_label')
        in_pipeline = pipeline_reduce_zero_label(
            cfg.get(f'{phase}_dataloader').dataset)
        if reduce:
            zero = 'ignored, and label k becomes class k-1'
        else:
            zero = f'class 0 ({classes[0] if classes else "?"})'
        lines.append(f'reduce_zero_label: {reduce} (pipeline LoadAnnotations: '
                     f'{in_pipeline}); label 0 of the annotation files is '
                     f'{zero}')
    num_classes = model_num_classes(cfg.get('model'))
    if classes and num_classes is not None and num_classes != len(classes):
        lines.append(f'note: the model predicts {num_classes} classes, the '
                     f'dataset names {len(classes)}')
    return lines


def to_rgb_image(inputs, cfg: Config):
    """The packed CHW ``inputs`` as an HWC uint8 RGB array.

    Images load as BGR in OpenMMLab and stay so unless the data
    preprocessor says it receives RGB (``rgb_to_bgr``)."""
    import numpy as np
    image = inputs.detach().cpu().numpy() if hasattr(inputs, 'detach') \
        else np.asarray(inputs)
    image = image.transpose(1, 2, 0) if image.ndim == 3 else image[..., None]
    if image.dtype != np.uint8:
        image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    if image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    preprocessor = (cfg.get('model') or {}).get('data_preprocessor') or \
        cfg.get('data_preprocessor') or {}
    if preprocessor.get('rgb_to_bgr'):
        return np.ascontiguousarray(image)
    return np.ascontiguousarray(image[..., ::-1])


def enlarge(image, data_sample, factor: int):
    """Nearest-neighbour enlargement of the image and of the ground truth
    drawn on it (pixel maps, boxes, instance masks)."""
    import numpy as np
    import torch
    from mmengine.structures import PixelData
    if factor == 1:
        return image, data_sample
    image = image.repeat(factor, axis=0).repeat(factor, axis=1)
    for key in ('gt_sem_seg', 'gt_panoptic_seg'):
        if key in data_sample:
            pixels = getattr(data_sample, key)
            enlarged = PixelData(metainfo=pixels.metainfo)
            for name, value in pixels.items():
                if isinstance(value, torch.Tensor):
                    value = value.repeat_interleave(factor, -2)
                    value = value.repeat_interleave(factor, -1)
                else:
                    value = value.repeat(factor, -2).repeat(factor, -1)
                enlarged.set_field(value, name)
            setattr(data_sample, key, enlarged)
    if 'gt_instances' in data_sample:
        instances = data_sample.gt_instances
        if 'bboxes' in instances:
            instances.bboxes = instances.bboxes * factor
        if 'masks' in instances:
            masks = instances.masks
            masks = masks.numpy() if isinstance(masks, torch.Tensor) else \
                np.asarray(masks)
            instances.masks = masks.repeat(factor, 1).repeat(factor, 2)
    return image, data_sample


def prepare_instances(data_sample):
    """Boxes as a plain tensor and instance masks as a boolean array, as
    DetLocalVisualizer draws them."""
    if 'gt_instances' not in data_sample:
        return data_sample
    instances = data_sample.gt_instances
    bboxes = instances.get('bboxes')
    if bboxes is not None and hasattr(bboxes, 'tensor'):
        instances.bboxes = bboxes.tensor
    masks = instances.get('masks')
    if masks is not None:
        if hasattr(masks, 'to_ndarray'):  # BitmapMasks / PolygonMasks
            masks = masks.to_ndarray()
        elif hasattr(masks, 'cpu'):
            masks = masks.cpu().numpy()
        instances.masks = masks.astype(bool)
    return data_sample


def summary(scope: str, data_sample, classes: Sequence[str]) -> str:
    """The ground truth of one sample in words."""
    import numpy as np

    def name(index: int) -> str:
        index = int(index)
        known = 0 <= index < len(classes)
        return f'{index} ({classes[index]})' if known else str(index)

    if scope == 'mmpretrain':
        labels = data_sample.get('gt_label')
        if labels is None:
            return 'no label'
        return 'label ' + ', '.join(name(i) for i in labels.tolist())
    if scope == 'mmseg':
        if 'gt_sem_seg' not in data_sample:
            return 'no mask'
        seg = np.asarray(data_sample.gt_sem_seg.data.cpu())
        ids, counts = np.unique(seg, return_counts=True)
        parts = [
            f'{name(i)} {c / seg.size:.0%}' for i, c in zip(ids, counts)
            if i < len(classes)
        ]
        ignored = int(counts[ids >= len(classes)].sum())
        if ignored:
            parts.append(f'ignored/unknown {ignored / seg.size:.0%}')
        return 'mask ' + ', '.join(parts)
    if 'gt_instances' not in data_sample:
        return 'no instances'
    labels = data_sample.gt_instances.labels.tolist()
    names = [
        str(classes[i]) if 0 <= i < len(classes) else str(i) for i in labels
    ]
    text = f'{len(labels)} instance{"s" if len(labels) != 1 else ""}'
    return text + (': ' + ', '.join(names) if names else '')


def boxes_outside(data_sample, height: int, width: int) -> int:
    """How many ground-truth boxes reach past the image."""
    if 'gt_instances' not in data_sample or \
            'bboxes' not in data_sample.gt_instances:
        return 0
    boxes = data_sample.gt_instances.bboxes
    if len(boxes) == 0:
        return 0
    x1, y1, x2, y2 = boxes[:, :4].T
    return int(((x1 < 0) | (y1 < 0) | (x2 > width) | (y2 > height)).sum())


def draw(visualizer, scope: str, image, data_sample, out_file: str):
    if scope == 'mmpretrain':
        visualizer.visualize_cls(
            image,
            data_sample,
            draw_gt=True,
            draw_pred=False,
            out_file=out_file)
        return
    with warnings.catch_warnings():
        # MMEngine calls a box or polygon that touches the right or bottom
        # edge out of bounds; main reports the boxes really outside.
        warnings.filterwarnings(
            'ignore', r'Warning: The (bbox|polygon) is out of bounds')
        visualizer.add_datasample(
            osp.basename(out_file),
            image,
            data_sample,
            draw_gt=True,
            draw_pred=False,
            out_file=out_file)


def main(argv: Optional[Sequence[str]] = None):
    args = parse_args(build_parser(), argv)
    cfg = load_config(args.config)
    apply_cli_options(cfg, args, 'browse_dataset')
    scope = check_config(cfg, args)

    dataset = build_dataset(cfg, scope, args.phase)
    for line in describe(dataset, cfg, scope, args.phase):
        print(line, flush=True)
    visualizer = build_visualizer(scope, dataset.metainfo)
    classes = list(dataset.metainfo.get('classes') or [])

    os.makedirs(args.output_dir, exist_ok=True)
    number = min(args.show_number, len(dataset))
    for index in range(number):
        item = dataset[index]
        data_sample = item['data_samples']
        image = to_rgb_image(item['inputs'], cfg)
        note = ''
        if scope == 'mmdet':
            data_sample = prepare_instances(data_sample)
            outside = boxes_outside(data_sample, *image.shape[:2])
            if outside:
                note = f' ({outside} reaching past the image)'
        factor = max(1, math.ceil(MIN_SIDE / min(image.shape[:2])))
        image, data_sample = enlarge(image, data_sample, factor)
        path = data_sample.get('img_path') or ''
        stem = osp.splitext(osp.basename(path))[0] or 'sample'
        out_file = osp.join(args.output_dir, f'{index:04d}_{stem}.png')
        draw(visualizer, scope, image, data_sample, out_file)
        print(
            f'{out_file}: {summary(scope, data_sample, classes)}{note}',
            flush=True)
    print(
        f'wrote {number} of {len(dataset)} {args.phase} samples to '
        f'{args.output_dir}',
        flush=True)


if __name__ == '__main__':
    main()
