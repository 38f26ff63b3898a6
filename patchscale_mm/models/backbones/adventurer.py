"""Adventurer: causal image modelling with a Mamba-2 token mixer.

Wang et al. 2024, "Causal image modeling for efficient visual
understanding". A plain backbone like ViT, but the token mixer is a
uni-directional Mamba-2 scan, linear in the token count, which is what makes
50,176 pixel tokens per image affordable. Two ideas make a causal scan see the
whole image: the class token is appended at the *end* (it is scanned after
every patch), and every mixer input is prefixed with the average of all
tokens ("heading average"), so even the first patch sees a global summary.
"""
from typing import Optional, Sequence, Union

import torch
from torch import nn

from patchscale_mm.parallel import sequence as sequence_parallel
from patchscale_mm.parallel.sequence import TokenShards
from patchscale_mm.registry import MODELS
from ..layers import DropPath, Mamba2Mixer, RMSNorm, SwiGLU
from .base import (PlainBackbone, expand_aliases, init_linear,
                   linear_drop_path_rates)

FLIP_RULES = ('paper', 'released', 'none')
DROP_PATH_SCHEDULES = ('linear', 'released')


def is_flipped(layer_index: int, rule: str) -> bool:
    """Whether a layer scans the patch tokens in reverse order.

    ``'released'``: only layers 2 and 3, as the authors' released code does
    (``flip = (n // 2 == 1)``); every released checkpoint and every number of
    the paper come from that code.
    ``'paper'``: every two layers (2-3, 6-7, 10-11, ...), a reading of the
    Adventurer paper's "flipping between every two layers".
    ``'none'``: never. With four layers or fewer the first two coincide.
    """
    if rule == 'paper':
        return (layer_index // 2) % 2 == 1
    if rule == 'released':
        return layer_index // 2 == 1
    if rule == 'none':
        return False
    raise ValueError(f'unknown flip_rule {rule!r}; valid: '
                     f'{", ".join(FLIP_RULES)}')


def adventurer_drop_path_rates(max_rate: float, num_layers: int,
                               schedule: str = 'linear') -> list:
    """Stochastic depth per layer.

    ``'linear'``: from 0 at the first layer to ``max_rate`` at the last.
    ``'released'``: the authors' code, ``[0] + linspace(0, max_rate, depth)``
    with layer i taking entry i: layers 0 and 1 at 0, the last layer at
    ``max_rate * (depth - 2) / (depth - 1)``.
    """
    if schedule == 'linear':
        return linear_drop_path_rates(max_rate, num_layers)
    if schedule == 'released':
        return [0.] + linear_drop_path_rates(max_rate, num_layers)[:num_layers - 1]
    raise ValueError(f'unknown drop_path_schedule {schedule!r}; valid: '
                     f'{", ".join(DROP_PATH_SCHEDULES)}')


class AdventurerBlock(nn.Module):
    """RMSNorm -> Mamba-2 (with heading average) -> residual, then
    RMSNorm -> SwiGLU -> residual. Tokens are (B, N + 1, C), class token last.

    Args:
        embed_dims (int): Token width C.
        mlp_dims (int): SwiGLU hidden width.
        drop_path_rate (float): Stochastic depth. Defaults to 0.
        flip (bool): Scan the patch tokens in reverse order (the class token
            stays last). Defaults to False.
        mixer_cfg (dict, optional): Extra :class:`Mamba2Mixer` arguments.
        norm_eps (float): RMSNorm epsilon. Defaults to 1e-5.
    """

    def __init__(self,
                 embed_dims: int,
                 mlp_dims: int,
                 drop_path_rate: float = 0.,
                 flip: bool = False,
                 mixer_cfg: Optional[dict] = None,
                 norm_eps: float = 1e-5):
        super().__init__()
        self.flip = flip
        self.norm1 = RMSNorm(embed_dims, eps=norm_eps)
        self.mixer = Mamba2Mixer(embed_dims, **(mixer_cfg or {}))
        self.norm2 = RMSNorm(embed_dims, eps=norm_eps)
        self.mlp = SwiGLU(embed_dims, mlp_dims)
        self.drop_path = DropPath(drop_path_rate)

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        """Token mixing of normed tokens (B, N + 1, C) -> (B, N + 1, C)."""
        if self.flip:
            x = reverse_patch_tokens(x)
        heading = x.mean(dim=1, keepdim=True)  # (B, 1, C)
        y = self.mixer(torch.cat([heading, x], dim=1))[:, 1:]
        return reverse_patch_tokens(y) if self.flip else y

    def mix_shard(self, x: torch.Tensor, shards: TokenShards) -> torch.Tensor:
        """:meth:`mix` of this rank's contiguous shard of the tokens (the
        class token at the end of the last shard).

        The scan visits the shards in order (in reverse order, each shard
        reversed, in a flipped layer), then the class token. No tokens move
        between ranks: the heading average is an all-reduce of partial sums,
        and the mixer passes the scan state between the shards (see
        :meth:`Mamba2Mixer.forward_segments`).
        """
        # The collectives of one block are ordered among themselves, blocks
        # by their data (see patchscale_mm.parallel.sequence).
        shards.chain.clear()
        try:
            return self._mix_shard(x, shards)
        finally:
            shards.chain.clear()

    def _mix_shard(self, x: torch.Tensor, shards: TokenShards) -> torch.Tensor:
        group = shards.group
        has_cls = group.rank == group.size - 1
        patches, cls = (x[:, :-1], x[:, -1:]) if has_cls else (x, None)
        heading = sequence_parallel.all_reduce_sum(
            x.sum(dim=1, keepdim=True), shards) / shards.total
        order = list(range(group.size))
        if self.flip:
            order.reverse()
            patches = patches.flip(1)
        leads = order[0] == group.rank  # the heading opens the scan
        if leads:
            patches = torch.cat([heading, patches], dim=1)
        y, y_cls = self.mixer.forward_segments(patches, cls, shards, order)
        if leads:
            y = y[:, 1:]
        if self.flip:
            y = y.flip(1)
        return torch.cat([y, y_cls], dim=1) if has_cls else y

    def forward(self, x: torch.Tensor,
                shards: Optional[TokenShards] = None) -> torch.Tensor:
        mixed = self.mix(self.norm1(x)) if shards is None else self.mix_shard(
            self.norm1(x), shards)
        x = x + self.drop_path(mixed)
        return x + self.drop_path(self.mlp(self.norm2(x)))


def reverse_patch_tokens(x: torch.Tensor) -> torch.Tensor:
    """Reverses the patch tokens of (B, N + 1, C); the last (class) token
    stays in place."""
    return torch.cat([x[:, :-1].flip(1), x[:, -1:]], dim=1)


@MODELS.register_module()
class Adventurer(PlainBackbone):
    """Adventurer backbone with a free patch size.

    Patch embedding, class token appended last, learned position embedding
    over all tokens, ``num_layers`` :class:`AdventurerBlock`, final RMSNorm;
    the classification feature is the last (class) token.

    Args:
        arch (str | dict): ``'t'``/``'tiny'``, ``'s'``/``'small'``,
            ``'b'``/``'base'``, ``'l'``/``'large'``, ``'h'``/``'huge'``
            (paper Table 7) or a dict with keys ``embed_dims``,
            ``num_layers``, ``mlp_dims``. Defaults to ``'b'``.
        drop_path_rate (float): Stochastic depth of the last block; it grows
            linearly from 0. Defaults to 0.
        drop_path_schedule (str): How the rate grows over depth, see
            :func:`adventurer_drop_path_rates`. Defaults to ``'linear'``; the
            shipped recipes use ``'released'``.
        flip_rule (str): Which layers scan in reverse, see :func:`is_flipped`.
            Defaults to ``'paper'``; the shipped recipes and converted
            checkpoints use ``'released'``.
        mixer_cfg (dict, optional): Overrides of the Mamba-2 mixer defaults
            (d_state 64, expand 2, d_conv 4, headdim 64, ngroups 1,
            chunk_size 256).
        **kwargs: ``img_size``, ``patch_size``, ``in_channels``,
            ``embed_patch_size``, ``out_indices``, ``out_type``,
            ``final_norm``, ``drop_rate``, ``with_cp``, ``init_cfg``; see
            :class:`PlainBackbone`.

    Example:
        >>> model = Adventurer(arch='t', img_size=32, patch_size=2)
        >>> model(torch.rand(2, 3, 32, 32))[-1].shape
        torch.Size([2, 256])
    """
    family = 'Adventurer'
    family_names = ('adventurer', 'adv')  # the first is canonical
    cls_token_last = True
    # Under sequence parallelism, the causal convolution's d_conv - 1 = 3
    # input rows come from the previous shard, plus the class token.
    min_shard_tokens = 4
    arch_zoo = expand_aliases({
        ('t', 'tiny'): dict(embed_dims=256, num_layers=12, mlp_dims=640),
        ('s', 'small'): dict(embed_dims=512, num_layers=12, mlp_dims=1280),
        ('b', 'base'): dict(embed_dims=768, num_layers=12, mlp_dims=1920),
        ('l', 'large'): dict(embed_dims=1024, num_layers=24, mlp_dims=2560),
        ('h', 'huge'): dict(embed_dims=1280, num_layers=32, mlp_dims=3200),
    })

    def __init__(self,
                 arch: Union[str, dict] = 'b',
                 img_size: Union[int, Sequence[int]] = 224,
                 patch_size: Union[int, Sequence[int]] = 16,
                 drop_path_rate: float = 0.,
                 drop_path_schedule: str = 'linear',
                 flip_rule: str = 'paper',
                 mixer_cfg: Optional[dict] = None,
                 norm_eps: float = 1e-5,
                 init_cfg: Optional[Union[dict, list]] = None,
                 **kwargs):
        super().__init__(
            arch,
            img_size=img_size,
            patch_size=patch_size,
            init_cfg=init_cfg,
            **kwargs)
        self.flip_rule = flip_rule
        dpr = adventurer_drop_path_rates(drop_path_rate, self.num_layers,
                                         drop_path_schedule)
        self.layers = nn.ModuleList(
            AdventurerBlock(
                self.embed_dims,
                self.arch_settings['mlp_dims'],
                drop_path_rate=rate,
                flip=is_flipped(i, flip_rule),
                mixer_cfg=mixer_cfg,
                norm_eps=norm_eps) for i, rate in enumerate(dpr))
        self.norm = (
            RMSNorm(self.embed_dims, eps=norm_eps)
            if self.final_norm else nn.Identity())
        self.layers.apply(init_linear)
