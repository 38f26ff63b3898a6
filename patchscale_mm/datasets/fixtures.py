"""Small datasets in the real on-disk formats, made from Fashion-MNIST.

Used by the tests (a few dozen images) and by the scaling sweep (the full
60k/10k split); ``tools/dataset_converters/make_fashion_datasets.py`` is the
command line.
"""
from pathlib import Path
from typing import Tuple

import cv2
import numpy as np

from .fashion_mnist import FASHION_MNIST_CLASSES, load_fashion_mnist
from .scenes import (make_scenes, write_ade20k_folder, write_coco_folder,
                     write_imagenet_folder)

# Background plus the ten garments: the segmentation classes after mmseg
# reduces ADE20k's zero label.
SCENE_CLASSES = ('background', ) + FASHION_MNIST_CLASSES


def _subset(split: str, count: int, seed: int, root: str = None):
    images, labels = load_fashion_mnist(split, root)
    if count is None or count >= len(images):
        return images, labels
    index = np.random.default_rng(seed).permutation(len(images))[:count]
    return images[index], labels[index]


def make_imagenet_fixture(root: str,
                          num_train: int = 40,
                          num_val: int = 20,
                          img_size: int = 28,
                          seed: int = 0,
                          fmnist_root: str = None,
                          pad_to: int = None) -> Path:
    """Fashion-MNIST classification in ImageNet's folder + ann-file layout.

    ``None`` counts take the whole split (60,000 train / 10,000 test).
    ``img_size`` other than 28 resizes bilinearly (e.g. 64); ``pad_to``
    instead centres the unchanged pixels on a black canvas (28 -> 32 keeps
    every pixel and makes patch sizes 8, 4, 2 and 1 divide the image).
    """
    splits = {}
    for split, source, count in (('train', 'train', num_train),
                                 ('val', 'test', num_val)):
        images, labels = _subset(source, count, seed, fmnist_root)
        if img_size != images.shape[1]:
            images = np.stack([
                cv2.resize(im, (img_size, img_size),
                           interpolation=cv2.INTER_LINEAR) for im in images
            ])
        if pad_to:
            before = (pad_to - images.shape[1]) // 2
            after = pad_to - images.shape[1] - before
            images = np.pad(images, ((0, 0), (before, after), (before, after)))
        splits[split] = (images, labels)
    return write_imagenet_folder(root, splits, FASHION_MNIST_CLASSES)


def make_ade20k_fixture(root: str,
                        num_train: int = 24,
                        num_val: int = 8,
                        canvas_size: Tuple[int, int] = (64, 64),
                        seed: int = 0,
                        fmnist_root: str = None,
                        **scene_kwargs) -> Path:
    """Garment scenes in ADE20k's layout (reduce_zero_label convention);
    train scenes use training garments, validation scenes test garments."""
    splits = {}
    for offset, (split, source, count) in enumerate(
        (('training', 'train', num_train), ('validation', 'test', num_val))):
        glyphs, labels = load_fashion_mnist(source, fmnist_root)
        splits[split] = make_scenes(glyphs, labels, count, seed + offset,
                                    canvas_size=canvas_size, **scene_kwargs)
    return write_ade20k_folder(root, splits)


def make_coco_fixture(root: str,
                      num_train: int = 24,
                      num_val: int = 8,
                      canvas_size: Tuple[int, int] = (128, 128),
                      seed: int = 0,
                      fmnist_root: str = None,
                      **scene_kwargs) -> Path:
    """Garment scenes in COCO's instance layout (boxes and polygons)."""
    scene_kwargs.setdefault('scale_range', (1.0, 2.5))
    splits = {}
    for offset, (split, source, count) in enumerate(
        (('train2017', 'train', num_train), ('val2017', 'test', num_val))):
        glyphs, labels = load_fashion_mnist(source, fmnist_root)
        splits[split] = make_scenes(glyphs, labels, count, seed + offset,
                                    canvas_size=canvas_size, **scene_kwargs)
    return write_coco_folder(root, splits, FASHION_MNIST_CLASSES)
