"""ViT / DeiT at any patch size, down to pixel tokens (p = 1)."""
from typing import Optional, Sequence, Union

import torch
from torch import nn

from patchscale_mm.registry import MODELS
from ..layers import Attention, DropPath, Mlp
from .base import (PlainBackbone, expand_aliases, init_linear,
                   linear_drop_path_rates)


class TransformerBlock(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self,
                 embed_dims: int,
                 num_heads: int,
                 mlp_dims: int,
                 qkv_bias: bool = True,
                 drop_rate: float = 0.,
                 attn_drop_rate: float = 0.,
                 drop_path_rate: float = 0.,
                 norm_eps: float = 1e-6):
        super().__init__()
        self.ln1 = nn.LayerNorm(embed_dims, eps=norm_eps)
        self.attn = Attention(
            embed_dims,
            num_heads,
            qkv_bias=qkv_bias,
            attn_drop=attn_drop_rate,
            proj_drop=drop_rate)
        self.ln2 = nn.LayerNorm(embed_dims, eps=norm_eps)
        self.mlp = Mlp(embed_dims, mlp_dims, drop_rate)
        self.drop_path = DropPath(drop_path_rate)

    def forward(self, x: torch.Tensor, shards=None) -> torch.Tensor:
        if shards is not None:  # one exchange, used on every rank
            shards.chain.clear()
        x = x + self.drop_path(self.attn(self.ln1(x), shards))
        if shards is not None:
            shards.chain.clear()
        return x + self.drop_path(self.mlp(self.ln2(x)))


@MODELS.register_module()
class PatchViT(PlainBackbone):
    """Vision Transformer (DeiT recipe) with a free patch size.

    Class token first, learned absolute position embedding, pre-norm blocks,
    attention through a memory-efficient kernel. Architectures follow the
    paper's Table 7 (DeiT-T/S/B, DeiT III-L/H with patch 16 by default).

    Args:
        arch (str | dict): ``'t'``/``'tiny'``, ``'s'``/``'small'``,
            ``'b'``/``'base'``, ``'l'``/``'large'``, ``'h'``/``'huge'`` or a
            dict with keys ``embed_dims``, ``num_layers``, ``num_heads``,
            ``mlp_dims``. Defaults to ``'b'``.
        drop_path_rate (float): Stochastic depth of the last block; it grows
            linearly from 0. Defaults to 0.
        attn_drop_rate (float): Attention dropout. Defaults to 0.
        qkv_bias (bool): Bias in the qkv projection. Defaults to True.
        **kwargs: ``img_size``, ``patch_size``, ``in_channels``,
            ``embed_patch_size``, ``out_indices``, ``out_type``,
            ``final_norm``, ``drop_rate``, ``with_cp``, ``init_cfg``; see
            :class:`PlainBackbone`.

    Example:
        >>> model = PatchViT(arch='t', img_size=64, patch_size=4)
        >>> model(torch.rand(2, 3, 64, 64))[-1].shape
        torch.Size([2, 192])
    """
    family = 'PatchViT'
    family_names = ('deit', 'vit', 'patchvit')  # the first is canonical
    cls_token_last = False
    arch_zoo = expand_aliases({
        ('t', 'tiny', 'deit-t', 'deit-tiny'):
        dict(embed_dims=192, num_layers=12, num_heads=3, mlp_dims=768),
        ('s', 'small', 'deit-s', 'deit-small'):
        dict(embed_dims=384, num_layers=12, num_heads=6, mlp_dims=1536),
        ('b', 'base', 'deit-b', 'deit-base'):
        dict(embed_dims=768, num_layers=12, num_heads=12, mlp_dims=3072),
        ('l', 'large', 'deit-l', 'deit-large'):
        dict(embed_dims=1024, num_layers=24, num_heads=16, mlp_dims=4096),
        ('h', 'huge', 'deit-h', 'deit-huge'):
        dict(embed_dims=1280, num_layers=32, num_heads=16, mlp_dims=5120),
    })
    # Weights that name the MLP's linear layers by position, as an
    # nn.Sequential does (mlp.0, mlp.3), load into fc1 and fc2.
    checkpoint_key_renames = (
        (r'(layers\.\d+\.mlp)\.0\.', r'\1.fc1.'),
        (r'(layers\.\d+\.mlp)\.3\.', r'\1.fc2.'),
    )

    def __init__(self,
                 arch: Union[str, dict] = 'b',
                 img_size: Union[int, Sequence[int]] = 224,
                 patch_size: Union[int, Sequence[int]] = 16,
                 drop_path_rate: float = 0.,
                 attn_drop_rate: float = 0.,
                 qkv_bias: bool = True,
                 norm_eps: float = 1e-6,
                 init_cfg: Optional[Union[dict, list]] = None,
                 **kwargs):
        super().__init__(
            arch,
            img_size=img_size,
            patch_size=patch_size,
            init_cfg=init_cfg,
            **kwargs)
        drop_rate = self.drop_after_pos.p
        dpr = linear_drop_path_rates(drop_path_rate, self.num_layers)
        self.layers = nn.ModuleList(
            TransformerBlock(
                self.embed_dims,
                self.arch_settings['num_heads'],
                self.arch_settings['mlp_dims'],
                qkv_bias=qkv_bias,
                drop_rate=drop_rate,
                attn_drop_rate=attn_drop_rate,
                drop_path_rate=rate,
                norm_eps=norm_eps) for rate in dpr)
        self.norm = (
            nn.LayerNorm(self.embed_dims, eps=norm_eps)
            if self.final_norm else nn.Identity())
        self.layers.apply(init_linear)

