"""Fashion-MNIST from the idx files of Debian's ``dataset-fashion-mnist``."""
import functools
import gzip
import os
from pathlib import Path
from typing import Tuple

import numpy as np

DEFAULT_ROOT = '/usr/share/datasets/fashion-mnist'
FASHION_MNIST_CLASSES = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress',
                         'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag',
                         'Ankle boot')
_FILES = {
    'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
    'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'),
}


def _read_idx(path: Path) -> np.ndarray:
    """Reads an idx file (optionally gzipped): a big-endian header with the
    dimension sizes, then unsigned bytes."""
    opener = gzip.open if path.suffix == '.gz' else open
    with opener(path, 'rb') as f:
        data = f.read()
    magic = int.from_bytes(data[:4], 'big')
    if magic >> 8 != 0x08:  # 0x08: unsigned byte payload
        raise ValueError(f'{path} is not an idx file of unsigned bytes')
    ndim = magic & 0xFF
    shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], 'big')
             for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find(root: Path, name: str) -> Path:
    for candidate in (root / f'{name}.gz', root / name):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(
        f'Fashion-MNIST file {name}[.gz] not found in {root}; install it with '
        '`apt-get install dataset-fashion-mnist` or set FASHION_MNIST_ROOT')


def load_fashion_mnist(split: str = 'train',
                       root: str = None) -> Tuple[np.ndarray, np.ndarray]:
    """Returns ``(images, labels)``: (N, 28, 28) uint8 and (N,) int64,
    read-only and cached per process (decompressing takes a second).

    Args:
        split (str): ``'train'`` (60,000 images) or ``'test'`` (10,000).
        root (str, optional): Folder of the idx files. Defaults to
            ``$FASHION_MNIST_ROOT`` or Debian's install location.
    """
    if split not in _FILES:
        raise ValueError(f'unknown split {split!r}; valid: train, test')
    return _load(split, str(root or os.environ.get('FASHION_MNIST_ROOT',
                                                   DEFAULT_ROOT)))


@functools.lru_cache(maxsize=4)
def _load(split: str, root: str) -> Tuple[np.ndarray, np.ndarray]:
    root = Path(root)
    images_file, labels_file = _FILES[split]
    images = _read_idx(_find(root, images_file))
    labels = _read_idx(_find(root, labels_file)).astype(np.int64)
    labels.flags.writeable = False
    if len(images) != len(labels):
        raise ValueError(f'{root}: {len(images)} images but {len(labels)} '
                         'labels')
    return images, labels
