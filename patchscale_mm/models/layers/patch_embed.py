"""Patchification: the only spatial compression in a plain backbone."""
import operator
from typing import Sequence, Tuple, Union

import torch
from torch import nn

IntOrPair = Union[int, Sequence[int]]


def to_2tuple(value: IntOrPair, name: str = 'value') -> Tuple[int, int]:
    """``8`` -> ``(8, 8)``; a pair is validated and returned as a tuple.

    Anything integer-like is accepted (``operator.index``), which includes
    the 0-dim tensors that ``x.shape`` holds under ``torch.jit.trace``.
    """
    try:
        if not isinstance(value, (Sequence, torch.Size)):
            side = operator.index(value)
            return side, side
        pair = tuple(operator.index(v) for v in value)
    except TypeError:
        pair = ()
    if len(pair) != 2:
        raise ValueError(f'{name} must be an int or a pair of ints, '
                         f'got {value!r}')
    return pair


def check_patch_grid(img_size: IntOrPair, patch_size: IntOrPair,
                     what: str = 'image size') -> Tuple[int, int]:
    """Returns the token grid, or raises one clear line when it has none."""
    (h, w), (ph, pw) = to_2tuple(img_size, what), to_2tuple(
        patch_size, 'patch_size')
    if ph < 1 or pw < 1:
        raise ValueError(f'patch_size must be >= 1, got {patch_size!r}')
    if h % ph or w % pw:
        raise ValueError(
            f'{what} {h}x{w} is not divisible by patch size {ph}x{pw}; '
            f'use a patch size that divides it (or resize/pad the input)')
    return h // ph, w // pw


class PatchEmbed(nn.Module):
    """Non-overlapping p x p patches projected to ``embed_dims`` tokens.

    A strided convolution with kernel = stride = p, which is the same as
    flattening each patch and applying one linear layer. p = 1 is pixel
    tokenization.

    Args:
        patch_size (int | tuple): Patch height and width, >= 1.
        in_channels (int): Input channels. Defaults to 3.
        embed_dims (int): Token width. Defaults to 768.
        bias (bool): Projection bias. Defaults to True.
    """

    def __init__(self,
                 patch_size: IntOrPair = 16,
                 in_channels: int = 3,
                 embed_dims: int = 768,
                 bias: bool = True):
        super().__init__()
        self.patch_size = to_2tuple(patch_size, 'patch_size')
        if min(self.patch_size) < 1:
            raise ValueError(f'patch_size must be >= 1, got {patch_size!r}')
        self.projection = nn.Conv2d(
            in_channels,
            embed_dims,
            kernel_size=self.patch_size,
            stride=self.patch_size,
            bias=bias)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """(B, C, H, W) -> tokens (B, H/p * W/p, D) and the grid (H/p, W/p)."""
        grid = check_patch_grid(x.shape[-2:], self.patch_size, 'input size')
        x = self.projection(x)  # (B, D, H/p, W/p)
        return x.flatten(2).transpose(1, 2), grid
