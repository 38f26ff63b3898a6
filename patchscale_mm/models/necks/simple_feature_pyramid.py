"""A multi-scale pyramid from the single map of a plain backbone (ViTDet)."""
import math
from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from mmengine.model import BaseModule
from torch import nn

from patchscale_mm.registry import MODELS


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, H, W) map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _rescale(channels: int, in_stride: int, out_stride: int):
    """Layers taking a stride-``in_stride`` map to ``out_stride``: 2x
    transposed convolutions (halving the channels) to go finer, 2x max pools
    to go coarser. Returns the layers and their output channels."""
    ratio = in_stride / out_stride
    steps = int(round(math.log2(max(ratio, 1 / ratio))))
    if 2**steps != max(ratio, 1 / ratio):
        raise ValueError(f'strides must differ by a power of two, got '
                         f'{in_stride} -> {out_stride}')
    layers = []
    if ratio < 1:
        layers = [nn.MaxPool2d(2) for _ in range(steps)]
    for i in range(steps if ratio > 1 else 0):
        out = max(channels // 2, 1)
        layers.append(nn.ConvTranspose2d(channels, out, 2, stride=2))
        if i < steps - 1:
            layers += [LayerNorm2d(out), nn.GELU()]
        channels = out
    return layers, channels


@MODELS.register_module()
class SimpleFeaturePyramid(BaseModule):
    """Builds strides ``out_strides`` (and one extra, coarser level) from the
    stride-p feature map of a plain backbone, as ViTDet does: no top-down
    path, each level rescaled from the one map, then 1x1 and 3x3 convolutions
    with LayerNorm. Works for any power-of-two patch size, finer or coarser
    than the output strides.

    Args:
        in_channels (int): Channels of the backbone map.
        out_channels (int): Channels of every pyramid level.
        in_stride (int): The backbone's stride, i.e. its patch size.
        out_strides (Sequence[int]): Strides to build.
            Defaults to (4, 8, 16, 32).
        num_outs (int): Levels returned; levels beyond ``out_strides`` are
            stride-2 subsamplings of the coarsest one. Defaults to 5.
        in_index (int): Which backbone output to read. Defaults to -1.
        init_cfg (dict, optional): Initialisation config.
    """

    def __init__(self,
                 in_channels: int,
                 out_channels: int,
                 in_stride: int,
                 out_strides: Sequence[int] = (4, 8, 16, 32),
                 num_outs: int = 5,
                 in_index: int = -1,
                 init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        if num_outs < len(out_strides):
            raise ValueError(f'num_outs {num_outs} < {len(out_strides)} '
                             'out_strides')
        self.num_outs, self.in_index = num_outs, in_index
        self.stages = nn.ModuleList()
        for stride in out_strides:
            layers, channels = _rescale(in_channels, in_stride, stride)
            layers += [
                nn.Conv2d(channels, out_channels, 1, bias=False),
                LayerNorm2d(out_channels),
                nn.Conv2d(out_channels, out_channels, 3, padding=1,
                          bias=False),
                LayerNorm2d(out_channels),
            ]
            self.stages.append(nn.Sequential(*layers))

    def forward(self, inputs: Sequence[torch.Tensor]) -> Tuple[torch.Tensor]:
        x = inputs[self.in_index]
        outs = [stage(x) for stage in self.stages]
        while len(outs) < self.num_outs:
            outs.append(F.max_pool2d(outs[-1], kernel_size=1, stride=2))
        return tuple(outs)
