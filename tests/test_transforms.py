"""ThreeAugment against the PIL operations of DeiT III's pipeline, on real
images (three Fashion-MNIST garments as the B, G and R channels)."""
import random
from collections import Counter

import numpy as np
import pytest
from mmpretrain.registry import TRANSFORMS
from PIL import Image, ImageFilter, ImageOps

from patchscale_mm.fixtures import load_fashion_mnist
from patchscale_mm.datasets.transforms import ThreeAugment, gaussian_blur, grayscale, solarize


@pytest.fixture(scope='module')
def bgr():
    images, _ = load_fashion_mnist('test')
    img = np.stack([images[0], images[1], images[2]], axis=-1)  # (28, 28, 3)
    return np.ascontiguousarray(np.kron(img, np.ones((4, 4, 1), np.uint8)))  # 112 px


def pil(bgr):
    return Image.fromarray(np.ascontiguousarray(bgr[..., ::-1]))


def to_bgr(image):
    return np.asarray(image.convert('RGB'))[..., ::-1]


def test_grayscale_is_pils(bgr):
    assert np.array_equal(grayscale(bgr), to_bgr(pil(bgr).convert('L')))


def test_solarize_is_pils(bgr):
    assert np.array_equal(solarize(bgr), to_bgr(ImageOps.solarize(pil(bgr), 128)))


@pytest.mark.parametrize('sigma', [0.5, 2.0])
def test_blur_matches_pils_gaussian_blur(bgr, sigma):
    ours = gaussian_blur(bgr, sigma).astype(float)
    theirs = to_bgr(pil(bgr).filter(ImageFilter.GaussianBlur(radius=sigma))).astype(float)
    # PIL approximates the Gaussian with box blurs: close, not identical.
    assert np.abs(ours - theirs).mean() < 1.0
    assert np.abs(ours - bgr).mean() > 5 * np.abs(ours - theirs).mean()


def test_one_operation_per_image_chosen_uniformly(bgr):
    transform = TRANSFORMS.build(dict(type='patchscale_mm.ThreeAugment'))
    assert isinstance(transform, ThreeAugment)
    random.seed(0)
    seen = Counter()
    for _ in range(300):
        out = transform(dict(img=bgr.copy()))['img']
        assert out.shape == bgr.shape and out.dtype == np.uint8
        if np.array_equal(out, grayscale(bgr)):
            seen['grayscale'] += 1
        elif np.array_equal(out, solarize(bgr)):
            seen['solarize'] += 1
        else:
            # A blur (sigma from 0.1: sometimes almost none) keeps the mean.
            assert abs(out.mean() - bgr.mean()) < 1
            seen['blur'] += 1
    assert all(70 < seen[op] < 130 for op in ThreeAugment.OPERATIONS), seen


def test_bad_blur_range():
    with pytest.raises(ValueError, match='blur_sigma'):
        ThreeAugment(blur_sigma=(2.0, 0.1))
