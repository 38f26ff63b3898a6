from .backbones import Adventurer, PatchViT
from .necks import SimpleFeaturePyramid

__all__ = ['Adventurer', 'PatchViT', 'SimpleFeaturePyramid']

# The linear segmentation head subclasses mmseg's BaseDecodeHead, so it is
# only available where mmsegmentation is installed.
try:
    from .heads import LinearSegHead  # noqa: F401
except ImportError:
    pass
else:
    __all__.append('LinearSegHead')

# Likewise the instance-segmentation TTA model extends mmdet's DetTTAModel.
try:
    from .instance_seg_tta import InstanceSegTTAModel  # noqa: F401
except ImportError:
    pass
else:
    __all__.append('InstanceSegTTAModel')
