from .fashion_mnist import FASHION_MNIST_CLASSES, load_fashion_mnist
from .safe_loading import BadSampleError, BadSampleGuard
from .transforms import ThreeAugment
from .scenes import (Scene, compose_scene, make_scenes, write_ade20k_folder,
                     write_coco_folder, write_imagenet_folder)

__all__ = [
    'BadSampleError', 'BadSampleGuard', 'FASHION_MNIST_CLASSES',
    'load_fashion_mnist', 'Scene', 'compose_scene',
    'make_scenes', 'write_ade20k_folder', 'write_coco_folder',
    'write_imagenet_folder', 'ThreeAugment'
]
