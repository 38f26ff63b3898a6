"""Fitting a checkpoint to a backbone of another grid or patch, or of
other key names.

A plain backbone has two tensors whose shapes depend on the geometry: the
position embedding (one vector per token of the grid, plus the class token)
and the patch-embedding kernel (p x p). Everything else has the same shape at
every patch size, so a checkpoint trained at p16 loads into a p8 or p4 model
once these two are resampled. :class:`PlainBackbone` applies
:func:`rename_keys` and :func:`adapt_backbone_state_dict` when a state dict
is loaded into it; the checkpoint converters use the same functions.
"""
import math
import re
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from ..layers import resample_abs_pos_embed, resample_patch_embed

Grid = Tuple[int, int]


def infer_grid(num_tokens: int, like: Sequence[int]) -> Optional[Grid]:
    """The token grid (h, w) of ``num_tokens`` grid tokens, or None.

    A checkpoint stores the grid only as a token count, so its shape is
    guessed: first with the aspect ratio of ``like`` (the model's grid),
    then square, which is how classification checkpoints are trained.

    Args:
        num_tokens (int): Number of grid tokens h * w.
        like (Sequence[int]): A grid (h', w') whose aspect ratio is tried
            first.
    """
    if num_tokens < 1:
        return None
    like_h, like_w = like
    divisor = math.gcd(like_h, like_w)
    for a, b in ((like_h // divisor, like_w // divisor), (1, 1)):
        if num_tokens % (a * b):
            continue
        k = math.isqrt(num_tokens // (a * b))
        if k * k * a * b == num_tokens:
            return a * k, b * k
    return None


def checkpoint_pos_grid(num_tokens: int, num_extra_tokens: Tuple[int, int],
                        like: Sequence[int]) -> Tuple[Grid, bool]:
    """The grid of a checkpoint's position embedding of ``num_tokens``
    tokens, and whether it has the class-token entries.

    The reading with class tokens is tried first; one without them is
    accepted when the count is a grid on its own.

    Args:
        num_tokens (int): Tokens L of the (1, L, D) embedding.
        num_extra_tokens (tuple[int, int]): Class tokens (before, after) the
            grid in the model.
        like (Sequence[int]): Grid whose aspect ratio is tried first, see
            :func:`infer_grid`.

    Raises:
        ValueError: If the count is no grid, with or without class tokens.
    """
    num_extra = sum(num_extra_tokens)
    grid = infer_grid(num_tokens - num_extra, like)
    if grid is not None:
        return grid, True
    grid = infer_grid(num_tokens, like)
    if grid is not None:
        return grid, False
    raise ValueError(
        f'checkpoint pos_embed has {num_tokens} tokens, which is neither a '
        f'token grid plus {num_extra} class token nor a grid alone; cannot '
        'resample it')


def adapt_pos_embed(pos_embed: torch.Tensor, new_grid: Sequence[int],
                    num_extra_tokens: Tuple[int, int]
                    ) -> Tuple[torch.Tensor, Optional[str]]:
    """Fits a checkpoint's position embedding (1, L, D) to ``new_grid``.

    The old grid is inferred from the token count (see :func:`infer_grid`);
    only the grid part is interpolated (bicubic, antialiased when it
    shrinks), the class token keeps its vector wherever it sits. An
    embedding without the class-token entry (models that add no position to
    the class token, e.g. DeiT III) gets a zero vector there, which is the
    same model: the class token's own parameter then carries its position.

    Args:
        pos_embed (Tensor): Checkpoint embedding of shape (1, L, D).
        new_grid (Sequence[int]): The model's token grid (h, w).
        num_extra_tokens (tuple[int, int]): Class tokens (before, after) the
            grid: (1, 0) for PatchViT, (0, 1) for Adventurer.

    Returns:
        tuple: The embedding of shape (1, before + h*w + after, D) (the input
        itself when nothing changes) and a note for the log, or None.

    Raises:
        ValueError: If the token count is no grid, with or without the class
            token (see :func:`checkpoint_pos_grid`).
    """
    before, after = num_extra_tokens
    new_grid = tuple(new_grid)
    old_grid, has_extra = checkpoint_pos_grid(pos_embed.shape[1],
                                              num_extra_tokens, new_grid)
    note = ''
    if not has_extra:
        zeros = pos_embed.new_zeros(1, before + after, pos_embed.shape[-1])
        pos_embed = torch.cat([zeros, pos_embed] if before else
                              [pos_embed, zeros], dim=1)
        note = ' (zero class-token entry added)'
    if old_grid == new_grid:
        return pos_embed, (f'pos_embed{note}' if note else None)
    shrinking = new_grid[0] < old_grid[0] or new_grid[1] < old_grid[1]
    pos_embed = resample_abs_pos_embed(
        pos_embed,
        new_grid,
        old_grid,
        num_prefix_tokens=before,
        num_suffix_tokens=after,
        interpolation='bicubic',
        antialias=shrinking)
    return pos_embed, (f'pos_embed {old_grid[0]}x{old_grid[1]} -> '
                       f'{new_grid[0]}x{new_grid[1]}{note}')


def adapt_patch_embed(weight: torch.Tensor, new_size: Sequence[int],
                      mode: str = 'pinv'
                      ) -> Tuple[torch.Tensor, Optional[str]]:
    """Fits a checkpoint's patch-embedding kernel (D, C, p, p) to p'.

    Args:
        weight (Tensor): Kernel of shape (D, C, p_h, p_w).
        new_size (Sequence[int]): The model's kernel size (p'_h, p'_w).
        mode (str): See :func:`resample_patch_embed`. Defaults to ``'pinv'``.

    Returns:
        tuple: The kernel (the input itself when the size matches) and a note
        for the log, or None.
    """
    old_size, new_size = tuple(weight.shape[-2:]), tuple(new_size)
    if old_size == new_size:
        return weight, None
    weight = resample_patch_embed(weight, new_size, mode=mode)
    return weight, (f'patch_embed {old_size[0]}x{old_size[1]} -> '
                    f'{new_size[0]}x{new_size[1]} ({mode})')


def adapt_backbone_state_dict(state_dict: Dict[str, torch.Tensor],
                              prefix: str,
                              pos_grid: Sequence[int],
                              num_extra_tokens: Tuple[int, int],
                              pos_embed_shape: Sequence[int],
                              kernel_shape: Sequence[int]) -> List[str]:
    """Resamples ``pos_embed`` and ``patch_embed.projection.weight`` of a
    backbone state dict, in place, where only the geometry differs.

    Entries whose width or channels differ are left alone, so that loading
    reports them as the usual size mismatch.

    Args:
        state_dict (dict): The state dict being loaded (modified in place).
        prefix (str): The backbone's key prefix in it, e.g. ``'backbone.'``.
        pos_grid (Sequence[int]): The model's position-embedding grid.
        num_extra_tokens (tuple[int, int]): Class tokens (before, after) the
            grid.
        pos_embed_shape (Sequence[int]): The model's ``pos_embed`` shape.
        kernel_shape (Sequence[int]): The model's patch-embedding kernel
            shape (D, C, p, p).

    Returns:
        list[str]: What was resampled, e.g. ``['pos_embed 8x8 -> 14x14']``.
    """
    changes = []
    key = prefix + 'pos_embed'
    value = state_dict.get(key)
    if (isinstance(value, torch.Tensor) and value.dim() == 3
            and value.shape[-1] == pos_embed_shape[-1]
            and tuple(value.shape) != tuple(pos_embed_shape)):
        state_dict[key], note = adapt_pos_embed(value, pos_grid,
                                                num_extra_tokens)
        changes.append(note)
    key = prefix + 'patch_embed.projection.weight'
    value = state_dict.get(key)
    if (isinstance(value, torch.Tensor) and value.dim() == 4
            and tuple(value.shape[:2]) == tuple(kernel_shape[:2])):
        state_dict[key], note = adapt_patch_embed(value, kernel_shape[-2:])
        changes.append(note)
    return [note for note in changes if note]


def rename_keys(state_dict: Dict[str, torch.Tensor], prefix: str,
                renames: Sequence[Tuple[str, str]]) -> int:
    """Renames keys of a state dict under ``prefix``, in place.

    Args:
        state_dict (dict): The state dict being loaded (modified in place).
        prefix (str): The backbone's key prefix in it, e.g. ``'backbone.'``.
        renames (Sequence[tuple[str, str]]): ``(pattern, template)`` pairs; a
            key whose part after ``prefix`` starts with a match of
            ``pattern`` gets that match replaced by ``match.expand(template)``.
            The first matching pair wins.

    Returns:
        int: How many keys were renamed.
    """
    renamed = 0
    for key in [k for k in state_dict if k.startswith(prefix)]:
        name = key[len(prefix):]
        for pattern, template in renames:
            match = re.match(pattern, name)
            if match:
                new_name = match.expand(template) + name[match.end():]
                state_dict[prefix + new_name] = state_dict.pop(key)
                renamed += 1
                break
    return renamed
