"""The decoder-free segmentation head of the paper (Sec. 3.2, Fig. 2)."""
from mmseg.models.decode_heads.decode_head import BaseDecodeHead

from patchscale_mm.registry import MODELS


@MODELS.register_module()
class LinearSegHead(BaseDecodeHead):
    """A per-token linear classifier on the stride-p feature map.

    Each backbone token is mapped to class logits by one 1x1 projection; the
    (B, num_classes, H/p, W/p) logits are upsampled bilinearly to the label
    size in the loss and to the image size at inference by mmseg's
    ``BaseDecodeHead``. With a small patch size the backbone's own resolution
    is fine enough that no decoder is needed. Its parameters are
    ``in_channels * num_classes + num_classes`` (0.1M for a base model on
    ADE20k's 150 classes).

    Args:
        in_channels (int): Channels of the backbone feature map.
        num_classes (int): Number of classes.
        **kwargs: Other :class:`BaseDecodeHead` arguments (``in_index``,
            ``dropout_ratio``, ``loss_decode``, ``align_corners``, ...).
    """

    def __init__(self, in_channels: int, **kwargs):
        # ``channels`` feeds conv_seg; without a decoder it is the input width
        # (the summed widths when several levels are concatenated).
        kwargs.setdefault(
            'channels',
            sum(in_channels) if isinstance(in_channels, (list, tuple)) else
            in_channels)
        super().__init__(in_channels=in_channels, **kwargs)

    def forward(self, inputs):
        return self.cls_seg(self._transform_inputs(inputs))
