"""The sizes a cost estimate needs: widths from the model zoo, the Mamba-2
mixer's defaults, token counts, and the backbone itself on any device."""
import inspect
from typing import Optional, Union

import torch

from patchscale_mm.models.layers import Mamba2Mixer
from patchscale_mm.models.zoo import arch_dims, backbone_class, resolve_family


def model_dims(family: str,
               arch: Union[str, dict],
               mixer_cfg: Optional[dict] = None) -> dict:
    """Widths and depth of a backbone, from its ``arch_zoo`` (plus the
    Mamba-2 mixer defaults for Adventurer, overridden by ``mixer_cfg``)."""
    family = resolve_family(family)
    dims = arch_dims(family, arch)
    if family == 'adventurer':
        defaults = {
            k: v.default
            for k, v in inspect.signature(Mamba2Mixer).parameters.items()
            if v.default is not inspect.Parameter.empty
        }
        mixer = {**defaults, **(mixer_cfg or {})}
        inner = mixer['expand'] * dims['embed_dims']
        dims.update(
            d_inner=inner,
            d_state=mixer['d_state'],
            d_conv=mixer['d_conv'],
            headdim=mixer['headdim'],
            nheads=inner // mixer['headdim'],
            ngroups=mixer['ngroups'],
            chunk_size=mixer['chunk_size'])
    return dims


def num_patches(img_size: int, patch_size: int) -> int:
    """Patch tokens of a square image; one clear error if p does not divide
    it."""
    if patch_size < 1 or img_size % patch_size:
        raise ValueError(f'patch size {patch_size} does not divide image '
                         f'size {img_size}')
    return (img_size // patch_size)**2


def build_backbone(family: str,
                   arch: Union[str, dict],
                   img_size: int,
                   patch_size: int,
                   mixer_cfg: Optional[dict] = None,
                   **kwargs) -> torch.nn.Module:
    """The backbone instance a cost estimate refers to."""
    family = resolve_family(family)
    if family == 'adventurer' and mixer_cfg:
        kwargs['mixer_cfg'] = mixer_cfg
    return backbone_class(family)(
        arch=arch, img_size=img_size, patch_size=patch_size, **kwargs)


def count_backbone_params(family: str,
                          arch: Union[str, dict],
                          img_size: int,
                          patch_size: int,
                          mixer_cfg: Optional[dict] = None) -> int:
    """Backbone parameters, counted on the meta device (so even Huge at
    pixel tokens costs no memory)."""
    with torch.device('meta'):
        backbone = build_backbone(family, arch, img_size, patch_size,
                                  mixer_cfg)
    return sum(p.numel() for p in backbone.parameters())


def count_params(family: str, arch: str, img_size: int, patch_size: int,
                 num_classes: int = 1000) -> int:
    """Backbone parameters plus a ``Linear(embed_dims, num_classes)``
    head."""
    width = model_dims(family, arch)['embed_dims']
    head = width * num_classes + num_classes if num_classes else 0
    return count_backbone_params(family, arch, img_size, patch_size) + head
