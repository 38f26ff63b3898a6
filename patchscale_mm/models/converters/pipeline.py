"""The steps every conversion shares: map the keys, fit the geometry, read
the architecture from the shapes, and check the result against a backbone
built on the meta device before it is described in the meta information."""
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Type

import torch

from ..backbones.base import PlainBackbone
from ..backbones.checkpoint_filter import (adapt_patch_embed, adapt_pos_embed,
                                           checkpoint_pos_grid)
from ..layers import to_2tuple
from ..layers.patch_embed import check_patch_grid
from ..zoo import arch_name, family_of
from .rules import (ConversionError, KeyRule, StateDict, check_against,
                    map_keys, name_keys)


def first_shape(mapped: StateDict, keys: Sequence[str]) -> torch.Size:
    """The shape of the first of ``keys`` in ``mapped``."""
    for key in keys:
        if key in mapped:
            return mapped[key].shape
    raise ConversionError(f'cannot infer the architecture: missing keys '
                          f'{name_keys(list(keys))}')


def num_layers(mapped: StateDict) -> int:
    """The depth of a mapped backbone (``backbone.layers.<i>``)."""
    indices = [int(m.group(1)) for k in mapped
               for m in [re.match(r'backbone\.layers\.(\d+)\.', k)] if m]
    if not indices:
        raise ConversionError('no blocks found after mapping '
                              '(backbone.layers.*)')
    return max(indices) + 1


def fit_geometry(mapped: StateDict,
                 num_extra_tokens: Tuple[int, int],
                 patch_size: Optional[Sequence[int]] = None,
                 img_size: Optional[Sequence[int]] = None
                 ) -> Tuple[Tuple[int, int], Tuple[int, int], List[str]]:
    """Fits ``pos_embed`` and the patch kernel of a mapped state dict (in
    place) to a patch size and image size.

    Without ``patch_size`` the checkpoint's kernel size is kept; without
    ``img_size`` the checkpoint's image size (grid x its patch size) is kept,
    so ``patch_size`` alone means "same images, smaller patches". A position
    embedding without the class-token entry gets a zero one.

    Returns:
        tuple: (patch size, image size, notes of what changed).
    """
    pos_key = 'backbone.pos_embed'
    kernel_key = 'backbone.patch_embed.projection.weight'
    for key, ndim in ((pos_key, 3), (kernel_key, 4)):
        if key not in mapped:
            raise ConversionError(f'1 keys missing after mapping: {key}')
        if mapped[key].dim() != ndim:
            raise ConversionError(
                f'1 keys with wrong shapes after mapping: {key} is '
                f'{tuple(mapped[key].shape)}, expected {ndim} dimensions')
    old_patch = tuple(mapped[kernel_key].shape[-2:])
    try:
        old_grid, _ = checkpoint_pos_grid(mapped[pos_key].shape[1],
                                          num_extra_tokens, (1, 1))
        new_patch = to_2tuple(patch_size or old_patch, 'patch_size')
        new_img = to_2tuple(
            img_size or (old_grid[0] * old_patch[0],
                         old_grid[1] * old_patch[1]), 'img_size')
        new_grid = check_patch_grid(new_img, new_patch, 'img_size')
        mapped[pos_key], pos_note = adapt_pos_embed(mapped[pos_key],
                                                    new_grid, num_extra_tokens)
    except ValueError as e:
        raise ConversionError(str(e)) from None
    mapped[kernel_key], kernel_note = adapt_patch_embed(
        mapped[kernel_key], new_patch)
    return new_patch, new_img, [n for n in (pos_note, kernel_note) if n]


@dataclass
class Mapped:
    """A source state dict under our keys, fitted to the target geometry.

    Attributes:
        state_dict (dict): The tensors under their target keys.
        sources (dict): Target key -> the source key it came from.
        patch_size, img_size (tuple): The geometry fitted to.
        notes (list[str]): What was adapted, for the meta information.
    """
    state_dict: StateDict
    sources: Dict[str, str]
    patch_size: Tuple[int, int]
    img_size: Tuple[int, int]
    notes: List[str]


def map_and_fit(state_dict: StateDict,
                rules: Sequence[KeyRule],
                num_extra_tokens: Tuple[int, int],
                patch_size: Optional[Sequence[int]] = None,
                img_size: Optional[Sequence[int]] = None) -> Mapped:
    """Maps every key by ``rules`` and fits the geometry
    (:func:`fit_geometry`).

    Raises:
        ConversionError: Naming the source keys no rule matched.
    """
    mapped, sources, unmatched = map_keys(state_dict, rules)
    if unmatched:
        check_against(mapped, sources, {}, unmatched)
    new_patch, new_img, notes = fit_geometry(mapped, num_extra_tokens,
                                             patch_size, img_size)
    return Mapped(mapped, sources, new_patch, new_img, notes)


def _head_reference(mapped: StateDict,
                    embed_dims: int) -> Dict[str, torch.Tensor]:
    """Reference shapes of ``head.fc`` when the source has a head."""
    if 'head.fc.weight' not in mapped and 'head.fc.bias' not in mapped:
        return {}
    num_classes = first_shape(mapped, ['head.fc.weight', 'head.fc.bias'])[0]
    return {
        'head.fc.weight': torch.empty(num_classes, embed_dims, device='meta'),
        'head.fc.bias': torch.empty(num_classes, device='meta'),
    }


def _backbone_reference(cls: Type[PlainBackbone],
                        **kwargs) -> Dict[str, torch.Tensor]:
    # The meta device allocates nothing, so even a 700M model is free to
    # build just for its names and shapes.
    with torch.device('meta'):
        model = cls(**kwargs)
    return {f'backbone.{k}': v for k, v in model.state_dict().items()}


def check_and_describe(mapped: Mapped, cls: Type[PlainBackbone], arch: dict,
                       **backbone_kwargs) -> Tuple[StateDict, dict]:
    """Checks ``mapped`` against a ``cls`` backbone of ``arch`` (plus
    ``head.fc`` when the source has a head) and describes it.

    Returns:
        tuple: The state dict and its meta information: the backbone
        config, the zoo name of its arch (None for a custom one), the
        number of classes of the head (None without one) and what was
        adapted.
    """
    backbone = dict(
        type=f'patchscale_mm.{cls.__name__}',
        arch=arch,
        img_size=list(mapped.img_size),
        patch_size=list(mapped.patch_size),
        **backbone_kwargs)
    reference = _backbone_reference(
        cls, **{k: v for k, v in backbone.items() if k != 'type'})
    reference.update(_head_reference(mapped.state_dict, arch['embed_dims']))
    check_against(mapped.state_dict, mapped.sources, reference)
    head = mapped.state_dict.get('head.fc.weight')
    meta = dict(
        backbone=backbone,
        arch_name=arch_name(family_of(cls), arch),
        num_classes=None if head is None else int(head.shape[0]),
        adapted=list(mapped.notes))
    return mapped.state_dict, meta
