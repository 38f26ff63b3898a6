"""ThreeAugment (DeiT III, Touvron et al. 2022): per image, one of
grayscale, solarization and Gaussian blur, chosen uniformly.

The Adventurer recipes pretrain with it (the authors' ``--ThreeAugment``)
in place of RandAugment; colour jitter (0.3) follows it as its own
transform, as in their pipeline. Images are mmcv's HWC uint8 arrays in BGR
order; each operation matches its PIL counterpart in DeiT III's code.
"""
import random
from typing import Tuple

import cv2
import numpy as np
from mmcv.transforms import BaseTransform

from patchscale_mm.registry import TRANSFORMS

# ITU-R 601-2 luma, PIL's convert('L'), in B, G, R order.
_LUMA_BGR = np.array([114, 587, 299], dtype=np.int64)


def grayscale(img: np.ndarray) -> np.ndarray:
    """PIL's ``convert('L')`` (integer luma, rounded) on three channels."""
    luma = (img.astype(np.int64) @ _LUMA_BGR + 500) // 1000
    return np.repeat(luma.astype(np.uint8)[..., None], 3, axis=-1)


def solarize(img: np.ndarray, threshold: int = 128) -> np.ndarray:
    """PIL's ``ImageOps.solarize``: values at or above ``threshold`` inverted."""
    return np.where(img >= threshold, 255 - img, img).astype(np.uint8)


def gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """A Gaussian blur of standard deviation ``sigma`` pixels, edges
    replicated."""
    return cv2.GaussianBlur(img, (0, 0), sigmaX=sigma, sigmaY=sigma,
                            borderType=cv2.BORDER_REPLICATE)


@TRANSFORMS.register_module()
class ThreeAugment(BaseTransform):
    """Applies one of grayscale, solarization and Gaussian blur to
    ``results['img']``.

    Args:
        blur_sigma (tuple): Range of the blur's standard deviation, drawn
            uniformly per image. Defaults to (0.1, 2.0), DeiT III's.
    """
    OPERATIONS = ('grayscale', 'solarize', 'blur')

    def __init__(self, blur_sigma: Tuple[float, float] = (0.1, 2.0)):
        if not 0 < blur_sigma[0] <= blur_sigma[1]:
            raise ValueError(f'blur_sigma must be (low, high) with 0 < low <= high, '
                             f'got {blur_sigma}')
        self.blur_sigma = tuple(blur_sigma)

    def transform(self, results: dict) -> dict:
        img = results['img']
        operation = random.choice(self.OPERATIONS)
        if operation == 'grayscale':
            img = grayscale(img)
        elif operation == 'solarize':
            img = solarize(img)
        else:
            img = gaussian_blur(img, random.uniform(*self.blur_sigma))
        results['img'] = img
        return results

    def __repr__(self) -> str:
        return f'{type(self).__name__}(blur_sigma={self.blur_sigma})'
