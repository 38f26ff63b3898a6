"""Absolute position embeddings on a 2-D token grid."""
from typing import Sequence

import torch
import torch.nn.functional as F

from patchscale_mm.ops import compute_dtype


def resample_abs_pos_embed(posemb: torch.Tensor,
                           new_size: Sequence[int],
                           old_size: Sequence[int] = None,
                           num_prefix_tokens: int = 1,
                           num_suffix_tokens: int = 0,
                           interpolation: str = 'bicubic',
                           antialias: bool = False) -> torch.Tensor:
    """Resizes a (1, prefix + H*W + suffix, D) position embedding to a new grid.

    The grid part is interpolated in 2-D; extra tokens (a class token first in
    ViT, last in Adventurer) keep their embeddings unchanged.

    Args:
        posemb (Tensor): Embedding of shape (1, L, D).
        new_size (Sequence[int]): Target grid (H', W').
        old_size (Sequence[int], optional): Source grid; a square grid is
            assumed when omitted.
        num_prefix_tokens (int): Extra tokens before the grid. Defaults to 1.
        num_suffix_tokens (int): Extra tokens after the grid. Defaults to 0.
        interpolation (str): ``'bicubic'`` or ``'bilinear'``.
            Defaults to ``'bicubic'``.
        antialias (bool): Antialias when shrinking. Defaults to False.

    Returns:
        Tensor: (1, prefix + H'*W' + suffix, D).
    """
    num_grid = posemb.shape[1] - num_prefix_tokens - num_suffix_tokens
    if old_size is None:
        side = int(round(num_grid**0.5))
        old_size = (side, side)
    old_size, new_size = tuple(old_size), tuple(new_size)
    if old_size[0] * old_size[1] != num_grid:
        raise ValueError(f'position embedding has {num_grid} grid tokens, '
                         f'which is not the grid {old_size[0]}x{old_size[1]}')
    if old_size == new_size:
        return posemb

    prefix = posemb[:, :num_prefix_tokens]
    grid = posemb[:, num_prefix_tokens:num_prefix_tokens + num_grid]
    suffix = posemb[:, num_prefix_tokens + num_grid:]
    grid = resize_token_grid(grid, old_size, new_size, interpolation,
                             antialias)
    return torch.cat([prefix, grid, suffix], dim=1)


def resize_token_grid(tokens: torch.Tensor,
                      old_size: Sequence[int],
                      new_size: Sequence[int],
                      interpolation: str = 'bilinear',
                      antialias: bool = False) -> torch.Tensor:
    """Interpolates (B, H*W, D) grid tokens to (B, H'*W', D) in 2-D.

    Args:
        tokens (Tensor): Row-major grid tokens of shape (B, H*W, D).
        old_size (Sequence[int]): The grid (H, W) of ``tokens``.
        new_size (Sequence[int]): Target grid (H', W').
        interpolation (str): Any 2-D mode of ``F.interpolate``, e.g.
            ``'bilinear'`` or ``'bicubic'``. Defaults to ``'bilinear'``.
        antialias (bool): Antialias when shrinking. Defaults to False.
    """
    (h, w), new_size = tuple(old_size), tuple(new_size)
    if (h, w) == new_size:
        return tokens
    batch, _, dim = tokens.shape
    # Interpolate in fp32 at least: bicubic is not implemented for half on CPU.
    grid = tokens.reshape(batch, h, w, dim).permute(0, 3, 1, 2).to(compute_dtype(tokens))
    grid = F.interpolate(
        grid,
        size=new_size,
        mode=interpolation,
        align_corners=False,
        antialias=antialias)
    return grid.flatten(2).transpose(1, 2).to(tokens.dtype)
