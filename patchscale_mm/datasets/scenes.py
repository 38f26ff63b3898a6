"""Real garments composited onto canvases, with exact masks and boxes, and
writers for the on-disk formats of ImageNet, ADE20k and COCO.

Each garment is a Fashion-MNIST image used as an alpha matte: its pixels
blend a random colour over a smooth random background, and the pixels where
it is visible (alpha above a threshold and not covered by a later garment)
form its mask. Boxes and polygons are derived from those masks, so every
label is exact.
"""
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import cv2
import numpy as np

MASK_THRESHOLD = 0.2  # alpha above which a pixel belongs to the garment


@dataclass
class Scene:
    """One canvas: ``image`` (H, W, 3) uint8 RGB, ``label_map`` (H, W) with
    0 for background and ``class + 1`` for a garment, and per instance its
    class and boolean mask (visible pixels only)."""
    image: np.ndarray
    label_map: np.ndarray
    classes: List[int] = field(default_factory=list)
    masks: List[np.ndarray] = field(default_factory=list)


def _background(rng: np.random.Generator, size: Tuple[int, int]) -> np.ndarray:
    """A dim linear colour gradient: varied but free of garment-like edges."""
    h, w = size
    corners = rng.uniform(0, 90, size=(2, 2, 3))
    ys, xs = np.linspace(0, 1, h)[:, None, None], np.linspace(0, 1, w)[None, :,
                                                                       None]
    top = corners[0, 0] * (1 - xs) + corners[0, 1] * xs
    bottom = corners[1, 0] * (1 - xs) + corners[1, 1] * xs
    return top * (1 - ys) + bottom * ys  # (H, W, 3) float


def compose_scene(rng: np.random.Generator,
                  glyphs: np.ndarray,
                  glyph_labels: np.ndarray,
                  canvas_size: Tuple[int, int] = (64, 64),
                  num_objects: Tuple[int, int] = (1, 3),
                  scale_range: Tuple[float, float] = (0.8, 1.6)) -> Scene:
    """Pastes ``num_objects`` random garments at random places and scales.

    Args:
        rng: Random generator (the scene is a pure function of its state).
        glyphs: (N, h, w) uint8 garment images used as alpha mattes.
        glyph_labels: (N,) class of each garment.
        canvas_size: (H, W) of the scene.
        num_objects: Inclusive range of the number of garments.
        scale_range: Range of the garment's size relative to 28 px.
    """
    h, w = canvas_size
    canvas = _background(rng, canvas_size)
    label_map = np.zeros(canvas_size, np.int64)
    scene = Scene(image=None, label_map=label_map)
    for _ in range(rng.integers(num_objects[0], num_objects[1] + 1)):
        index = rng.integers(len(glyphs))
        side = int(round(glyphs.shape[1] * rng.uniform(*scale_range)))
        side = max(4, min(side, h, w))
        alpha = cv2.resize(glyphs[index], (side, side),
                           interpolation=cv2.INTER_LINEAR) / 255.
        top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        window = (slice(top, top + side), slice(left, left + side))
        colour = rng.uniform(110, 255, size=3)
        canvas[window] = (canvas[window] * (1 - alpha[..., None]) +
                          colour * alpha[..., None])
        mask = np.zeros(canvas_size, bool)
        mask[window] = alpha > MASK_THRESHOLD
        for earlier in scene.masks:  # the new garment occludes older ones
            earlier &= ~mask
        label_map[mask] = int(glyph_labels[index]) + 1
        scene.classes.append(int(glyph_labels[index]))
        scene.masks.append(mask)
    # Drop garments that ended up fully hidden.
    kept = [i for i, m in enumerate(scene.masks) if m.any()]
    scene.classes = [scene.classes[i] for i in kept]
    scene.masks = [scene.masks[i] for i in kept]
    scene.image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    return scene


def make_scenes(glyphs: np.ndarray, glyph_labels: np.ndarray, count: int,
                seed: int = 0, **kwargs) -> List[Scene]:
    """``count`` scenes from one seed; ``kwargs`` go to :func:`compose_scene`."""
    rng = np.random.default_rng(seed)
    return [compose_scene(rng, glyphs, glyph_labels, **kwargs)
            for _ in range(count)]


def _write_image(path: Path, rgb: np.ndarray):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = rgb if rgb.ndim == 2 else cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(path), image):
        raise OSError(f'could not write {path}')


def write_imagenet_folder(root: str, splits: Dict[str, Tuple[np.ndarray,
                                                             np.ndarray]],
                          class_names: Sequence[str]) -> Path:
    """ImageNet layout: ``{split}/{class_dir}/{name}.png`` plus
    ``meta/{split}.txt`` lines ``{class_dir}/{name}.png {label}``.

    Args:
        root: Output folder.
        splits: ``{'train': (images, labels), 'val': (...)}``; images are
            (N, H, W) grey or (N, H, W, 3) RGB uint8.
        class_names: Names; their index is the label.
    """
    root = Path(root)
    (root / 'meta').mkdir(parents=True, exist_ok=True)
    dirs = [f'n{i:08d}' for i in range(len(class_names))]  # ImageNet-like wnids
    (root / 'meta' / 'classes.txt').write_text(''.join(
        f'{d} {name}\n' for d, name in zip(dirs, class_names)))
    for split, (images, labels) in splits.items():
        lines = []
        for i, (image, label) in enumerate(zip(images, labels)):
            name = f'{dirs[label]}/{split}_{i:06d}.png'
            _write_image(root / split / name, image)
            lines.append(f'{name} {int(label)}\n')
        (root / 'meta' / f'{split}.txt').write_text(''.join(lines))
    return root


def write_ade20k_folder(root: str, splits: Dict[str, List[Scene]]) -> Path:
    """ADE20k layout: ``images/{training,validation}/*.jpg`` and
    ``annotations/{training,validation}/*.png``.

    Labels follow ADE20k's ``reduce_zero_label`` convention: 0 is "ignore",
    so the background is written as 1 and garment class k as k + 2; after
    mmseg reduces them, background is class 0 and garment k is class k + 1.

    Args:
        root: Output folder.
        splits: ``{'training': scenes, 'validation': scenes}``.
    """
    root = Path(root)
    for split, scenes in splits.items():
        for i, scene in enumerate(scenes):
            name = f'ADE_{split}_{i:08d}'
            _write_image(root / 'images' / split / f'{name}.jpg', scene.image)
            _write_image(root / 'annotations' / split / f'{name}.png',
                         (scene.label_map + 1).astype(np.uint8))
    return root


def _polygons(mask: np.ndarray) -> List[List[float]]:
    """Outer contours of a mask as COCO polygons (x, y pixel corners)."""
    contours, _ = cv2.findContours(
        mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    polygons = []
    for contour in contours:
        if len(contour) >= 3:
            polygons.append(contour.reshape(-1).astype(float).tolist())
    return polygons


def write_coco_folder(root: str, splits: Dict[str, List[Scene]],
                      class_names: Sequence[str]) -> Path:
    """COCO layout: ``{split}/*.jpg`` and
    ``annotations/instances_{split}.json`` with boxes (xywh, from the mask's
    extent) and polygon segmentations.

    Args:
        root: Output folder.
        splits: ``{'train2017': scenes, 'val2017': scenes}``.
        class_names: Category names; category ids are ``index + 1``.
    """
    root = Path(root)
    categories = [dict(id=i + 1, name=name, supercategory='garment')
                  for i, name in enumerate(class_names)]
    for split, scenes in splits.items():
        images, annotations = [], []
        for i, scene in enumerate(scenes):
            file_name = f'{i:012d}.jpg'
            _write_image(root / split / file_name, scene.image)
            h, w = scene.label_map.shape
            images.append(dict(id=i + 1, file_name=file_name, height=h,
                               width=w))
            for cls, mask in zip(scene.classes, scene.masks):
                polygons = _polygons(mask)
                if not polygons:
                    continue
                ys, xs = np.nonzero(mask)
                x0, y0 = int(xs.min()), int(ys.min())
                box = [x0, y0, int(xs.max()) + 1 - x0, int(ys.max()) + 1 - y0]
                annotations.append(
                    dict(id=len(annotations) + 1, image_id=i + 1,
                         category_id=cls + 1, bbox=box,
                         area=float(mask.sum()), iscrowd=0,
                         segmentation=polygons))
        (root / 'annotations').mkdir(parents=True, exist_ok=True)
        with open(root / 'annotations' / f'instances_{split}.json', 'w') as f:
            json.dump(dict(images=images, annotations=annotations,
                           categories=categories), f)
    return root
