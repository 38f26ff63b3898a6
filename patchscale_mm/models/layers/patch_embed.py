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


# ---------------------------------------------------------------------------
# Changing the patch size of a trained patch embedding
# ---------------------------------------------------------------------------
PATCH_RESAMPLE_MODES = ('pinv', 'interpolate')


def _resize_patches(patches: torch.Tensor, new_size: Tuple[int, int],
                    interpolation: str, antialias: bool) -> torch.Tensor:
    """``F.interpolate`` of (B, C, p, p) patches; ``antialias`` only where
    the mode supports it (bilinear, bicubic)."""
    antialias = antialias and interpolation in ('bilinear', 'bicubic')
    align = False if interpolation in ('bilinear', 'bicubic') else None
    return torch.nn.functional.interpolate(
        patches,
        size=new_size,
        mode=interpolation,
        align_corners=align,
        antialias=antialias)


def patch_resize_matrix(old_size: IntOrPair,
                        new_size: IntOrPair,
                        interpolation: str = 'bicubic',
                        antialias: bool = True,
                        dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The linear operator R with ``resize(x).flatten() == R @ x.flatten()``
    for a single-channel patch x of ``old_size``.

    Built by resizing each basis patch with the same ``F.interpolate`` call
    that resizes images, so R is exactly the resize the data goes through.

    Args:
        old_size (int | tuple): Patch size (p_h, p_w) before resizing.
        new_size (int | tuple): Patch size (p'_h, p'_w) after resizing.
        interpolation (str): ``F.interpolate`` mode. Defaults to
            ``'bicubic'``.
        antialias (bool): Antialias when shrinking (bilinear and bicubic
            only). Defaults to True.
        dtype (torch.dtype): Dtype of R. Defaults to float64, so that its
            pseudo-inverse is accurate.

    Returns:
        Tensor: R of shape (p'_h * p'_w, p_h * p_w).
    """
    old_size = to_2tuple(old_size, 'old_size')
    new_size = to_2tuple(new_size, 'new_size')
    num_old = old_size[0] * old_size[1]
    basis = torch.eye(num_old, dtype=dtype).reshape(num_old, 1, *old_size)
    resized = _resize_patches(basis, new_size, interpolation, antialias)
    return resized.reshape(num_old, -1).T  # column j = resize(e_j)


def resample_patch_embed(weight: torch.Tensor,
                         new_size: IntOrPair,
                         interpolation: str = 'bicubic',
                         antialias: bool = True,
                         mode: str = 'pinv') -> torch.Tensor:
    """Resamples a patch-embedding kernel (D, C, p, p) to (D, C, p', p').

    ``mode='pinv'`` is FlexiViT's pseudo-inverse resize (Beyer et al.,
    2023). A token is ``<x, w>`` per output channel, for a patch x; the
    goal is that a patch resized to p' (``resize(x) = R x``) gets the token
    the old kernel gave the original patch, ``<R x, w'> = <x, w>`` for every
    x, i.e. ``R^T w' = w``. The kernel is ``w' = pinv(R^T) w``:

    * p' >= p (upsampling, e.g. 1 -> 16): R^T has full row rank, so the
      equation holds exactly: a p'-model on an image upsampled by p'/p gives
      the same tokens as the p-model on the original image. Of all kernels
      that do, w' has the least norm.
    * p' < p (downsampling, e.g. 16 -> 4 or 16 -> 1): there are p'^2
      unknowns for p^2 equations, so the embedding is preserved only in the
      least-squares sense: w' minimises ``||R^T w' - w||``, which is the
      mean squared token error ``E<x, R^T w' - w>^2`` over white-noise
      patches. It is exact for patches of the form ``x = R^T y`` (the error
      is orthogonal to them) and not in general.

    ``mode='interpolate'`` just resizes the kernel like an image. It keeps
    the kernel's shape but not its response: a token sums about (p'/p)^2 as
    many pixels, so its scale changes with the patch area.

    Args:
        weight (Tensor): Kernel of shape (D, C, p_h, p_w).
        new_size (int | tuple): Target patch size p' (an int or a pair).
        interpolation (str): ``F.interpolate`` mode of the patch resize.
            Defaults to ``'bicubic'``.
        antialias (bool): Antialias when shrinking (bilinear and bicubic
            only). Defaults to True.
        mode (str): ``'pinv'`` or ``'interpolate'``. Defaults to ``'pinv'``.

    Returns:
        Tensor: Kernel of shape (D, C, p'_h, p'_w) in the dtype of
        ``weight``; ``weight`` itself when the size does not change.
    """
    if weight.dim() != 4:
        raise ValueError('patch-embedding kernel must be (D, C, p_h, p_w), '
                         f'got shape {tuple(weight.shape)}')
    if mode not in PATCH_RESAMPLE_MODES:
        raise ValueError(f'unknown mode {mode!r}; valid: '
                         f'{", ".join(PATCH_RESAMPLE_MODES)}')
    old_size = tuple(weight.shape[-2:])
    new_size = to_2tuple(new_size, 'new_size')
    if min(new_size) < 1:
        raise ValueError(f'new_size must be >= 1, got {new_size!r}')
    if old_size == new_size:
        return weight
    # float64 throughout: the pinv of a resize matrix is ill-conditioned
    # enough that fp32 costs digits, and the matrices are tiny (p^2 x p'^2).
    work = weight.detach().to(torch.float64)
    if mode == 'interpolate':
        out = _resize_patches(work, new_size, interpolation, antialias)
    else:
        R = patch_resize_matrix(old_size, new_size, interpolation, antialias)
        # w' = pinv(R^T) w for each (D, C) kernel, as rows: w'^T = w^T pinv(R)
        out = work.flatten(2) @ torch.linalg.pinv(R)
        out = out.reshape(*weight.shape[:2], *new_size)
    return out.to(weight.dtype)
