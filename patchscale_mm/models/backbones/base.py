"""What ViT and Adventurer share: a patch embedding, one extra token, a
learned position embedding, a stack of same-width blocks, and the ways
OpenMMLab heads want to read them (``out_type``, ``out_indices``).
"""
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
from mmengine.logging import print_log
from mmengine.model import BaseModule
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..layers import (PatchEmbed, resample_abs_pos_embed, resize_token_grid,
                      to_2tuple)
from ..layers.patch_embed import check_patch_grid
from .checkpoint_filter import adapt_backbone_state_dict, rename_keys
from patchscale_mm.parallel import sequence as sequence_parallel


def resolve_arch(arch: Union[str, dict], arch_zoo: Dict[str, dict],
                 family: str) -> dict:
    """Looks ``arch`` up in ``arch_zoo`` (case-insensitive) or validates a
    dict that has the same keys as the zoo's entries."""
    required = set(next(iter(arch_zoo.values())))
    if isinstance(arch, str):
        key = arch.lower()
        if key not in arch_zoo:
            raise ValueError(f'unknown {family} arch {arch!r}; valid archs: '
                             f'{", ".join(sorted(arch_zoo))}')
        return dict(arch_zoo[key])
    if isinstance(arch, dict):
        missing = required - set(arch)
        if missing:
            raise ValueError(f'custom {family} arch dict lacks keys '
                             f'{sorted(missing)}; required: {sorted(required)}')
        return dict(arch)
    raise TypeError(f'arch must be a name or a dict, got {type(arch).__name__}')


def init_linear(module: nn.Module):
    """Truncated-normal (std 0.02) linear weights and zero biases, as in
    DeiT and Adventurer; use with ``module.apply``."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def linear_drop_path_rates(max_rate: float, num_layers: int) -> list:
    """Stochastic depth growing linearly from 0 to ``max_rate`` over depth."""
    return [max_rate * i / max(num_layers - 1, 1) for i in range(num_layers)]


def expand_aliases(table: Dict[Sequence[str], dict]) -> Dict[str, dict]:
    """``{('t', 'tiny'): cfg}`` -> ``{'t': cfg, 'tiny': cfg}``."""
    return {name: cfg for names, cfg in table.items() for name in names}


class PlainBackbone(BaseModule):
    """Base of single-stage ("plain") backbones at any patch size.

    Subclasses set ``arch_zoo``, ``family`` (the display name),
    ``family_names`` (the names in model names such as ``deit-b``, canonical
    first) and ``cls_token_last``, and build
    ``self.layers`` (an ``nn.ModuleList``) and ``self.norm`` in their
    constructors after calling this one.

    Args:
        arch (str | dict): Architecture name from ``arch_zoo`` or a dict.
        img_size (int | tuple): Training image size; sets the position
            embedding grid. Other input sizes are accepted at run time (the
            embedding is interpolated), as long as the patch size divides them.
        patch_size (int | tuple): Patch size p >= 1 that divides ``img_size``.
        in_channels (int): Input channels. Defaults to 3.
        embed_patch_size (int | tuple, optional): Patch size of the patch
            embedding when it differs from ``patch_size``. The embedded tokens
            are then interpolated (bilinear) to the token grid of
            ``patch_size``: the sequence gets as long as at ``patch_size``
            without new information (the paper's "by extending" ablation,
            Table 5). Defaults to None, i.e. ``patch_size``.
        out_indices (int | Sequence[int]): Blocks whose outputs are returned;
            negative indices count from the end. Defaults to -1.
        out_type (str): ``'cls_token'`` (B, C), ``'featmap'`` (B, C, H/p, W/p),
            ``'avg_featmap'`` (B, C), or ``'raw'`` (B, N, C) patch tokens.
            Defaults to ``'cls_token'``.
        final_norm (bool): Normalise the last block's output.
            Defaults to True.
        drop_rate (float): Dropout after the position embedding.
            Defaults to 0.
        with_cp (bool): Recompute each block in backward (activation
            checkpointing) to trade compute for memory at long sequences.
            Defaults to False.
        init_cfg (dict | list, optional): MMEngine initialisation config,
            e.g. ``dict(type='Pretrained', checkpoint=...)``.
    """
    OUT_TYPES = ('cls_token', 'featmap', 'avg_featmap', 'raw')
    # (pattern, template) pairs that map keys of checkpoints saved under
    # other module names to this model's (see checkpoint_filter.rename_keys).
    checkpoint_key_renames: Tuple[Tuple[str, str], ...] = ()
    # Fewest tokens per rank under sequence parallelism.
    min_shard_tokens = 1
    arch_zoo: Dict[str, dict] = {}
    family = 'backbone'
    family_names: Tuple[str, ...] = ()
    cls_token_last = False

    def __init__(self,
                 arch: Union[str, dict],
                 img_size: Union[int, Sequence[int]] = 224,
                 patch_size: Union[int, Sequence[int]] = 16,
                 in_channels: int = 3,
                 embed_patch_size: Optional[Union[int, Sequence[int]]] = None,
                 out_indices: Union[int, Sequence[int]] = -1,
                 out_type: str = 'cls_token',
                 final_norm: bool = True,
                 drop_rate: float = 0.,
                 with_cp: bool = False,
                 init_cfg: Optional[Union[dict, list]] = None):
        super().__init__(init_cfg=init_cfg)
        self.arch_settings = resolve_arch(arch, self.arch_zoo, self.family)
        self.embed_dims = self.arch_settings['embed_dims']
        self.num_layers = self.arch_settings['num_layers']
        self.img_size = to_2tuple(img_size, 'img_size')
        self.patch_size = to_2tuple(patch_size, 'patch_size')
        self.patch_resolution = check_patch_grid(self.img_size,
                                                 self.patch_size, 'img_size')
        if out_type not in self.OUT_TYPES:
            raise ValueError(f'unknown out_type {out_type!r}; valid: '
                             f'{", ".join(self.OUT_TYPES)}')
        self.out_type = out_type
        self.out_indices = self._normalise_out_indices(out_indices)
        self.final_norm = final_norm
        self.with_cp = with_cp

        embed_patch_size = to_2tuple(
            embed_patch_size or self.patch_size, 'embed_patch_size')
        check_patch_grid(self.img_size, embed_patch_size, 'img_size')
        self.patch_embed = PatchEmbed(embed_patch_size, in_channels,
                                      self.embed_dims)
        num_patches = self.patch_resolution[0] * self.patch_resolution[1]
        self.cls_token = nn.Parameter(torch.zeros(1, 1, self.embed_dims))
        self.pos_embed = nn.Parameter(
            torch.zeros(1, num_patches + 1, self.embed_dims))
        self.drop_after_pos = nn.Dropout(drop_rate)
        nn.init.trunc_normal_(self.pos_embed, std=.02)
        nn.init.trunc_normal_(self.cls_token, std=.02)

    # -- geometry -------------------------------------------------------------
    @property
    def num_extra_tokens(self) -> Tuple[int, int]:
        """Tokens (before, after) the patch grid."""
        return (0, 1) if self.cls_token_last else (1, 0)

    def _normalise_out_indices(self, out_indices) -> Tuple[int, ...]:
        if isinstance(out_indices, int):
            out_indices = [out_indices]
        normalised = []
        for index in out_indices:
            if not -self.num_layers <= index < self.num_layers:
                raise ValueError(f'out_indices entry {index} is out of range '
                                 f'for {self.num_layers} layers')
            normalised.append(index % self.num_layers)
        return tuple(normalised)

    def pos_embed_for(self, grid: Tuple[int, int]) -> torch.Tensor:
        """The position embedding interpolated to a run-time token grid."""
        before, after = self.num_extra_tokens
        return resample_abs_pos_embed(
            self.pos_embed,
            grid,
            self.patch_resolution,
            num_prefix_tokens=before,
            num_suffix_tokens=after)

    # -- forward --------------------------------------------------------------
    def embed_tokens(self, x: torch.Tensor):
        """Image (B, C, H, W) -> patch tokens (B, N, C) on the grid of
        ``patch_size`` and that grid."""
        img_size = x.shape[-2:]
        x, grid = self.patch_embed(x)
        if self.patch_embed.patch_size != self.patch_size:
            new_grid = check_patch_grid(img_size, self.patch_size, 'input size')
            x, grid = resize_token_grid(x, grid, new_grid), new_grid
        return x, grid

    def embed(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """Image (B, C, H, W) -> tokens with the class token, positions added."""
        x, grid = self.embed_tokens(x)
        cls_token = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([x, cls_token] if self.cls_token_last else
                      [cls_token, x], dim=1)
        return self.drop_after_pos(x + self.pos_embed_for(grid)), grid

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        # Evaluation keeps whole images on each rank: inference holds one
        # block's activations, not every block's.
        group = sequence_parallel.current() if self.training else None
        shards = None
        if group is None:
            x, grid = self.embed(x)
        else:  # this rank's tokens of every image
            x, grid, shards = self.embed_shard(x, group)
        outs = []
        for i, layer in enumerate(self.layers):
            if self.with_cp and self.training and x.requires_grad:
                x = checkpoint(layer, x, shards, use_reentrant=False)
            else:
                x = layer(x, shards)
            if i == self.num_layers - 1 and self.final_norm:
                x = self.norm(x)
            if i in self.out_indices:
                outs.append(self._format_output(x, grid, shards))
        return tuple(outs)

    def embed_shard(self, x: torch.Tensor, group) -> Tuple[torch.Tensor, Tuple[
            int, int], 'sequence_parallel.TokenShards']:
        """:meth:`embed` of this rank's contiguous shard of the tokens: only
        the image rows under its patches go through the patch embedding."""
        grid = check_patch_grid(x.shape[-2:], self.patch_size, 'input size')
        before, after = self.num_extra_tokens
        num_patches = grid[0] * grid[1]
        shards = sequence_parallel.TokenShards(
            group,
            tuple(sequence_parallel.shard_bounds(num_patches + before + after,
                                                 group.size)))
        self._check_shards(shards)
        start, end = shards.mine
        first, last = max(start - before, 0), min(end - before, num_patches)
        if first >= last:  # a shard of the class token alone
            tokens, _ = self.patch_embed(x[..., :self.patch_size[0], :])
            tokens = tokens[:, :0]
        elif self.patch_embed.patch_size == self.patch_size:
            row0, row1 = first // grid[1], -(-last // grid[1])
            rows = x[..., row0 * self.patch_size[0]:row1 * self.patch_size[0], :]
            tokens, _ = self.patch_embed(rows)
            tokens = tokens[:, first - row0 * grid[1]:last - row0 * grid[1]]
        else:  # tokens interpolated over the whole grid ("by extending")
            tokens, _ = self.embed_tokens(x)
            tokens = tokens[:, first:last]
        parts = [tokens]
        cls_index = num_patches if self.cls_token_last else 0
        if start <= cls_index < end:
            cls_token = self.cls_token.expand(x.shape[0], -1, -1)
            parts.insert(len(parts) if self.cls_token_last else 0, cls_token)
        else:
            # Every rank's graph reaches every parameter (a zero gradient
            # here), as DDP expects without find_unused_parameters.
            parts.append(self.cls_token[:, :0].expand(x.shape[0], -1, -1))
        tokens = torch.cat(parts, dim=1)
        pos_embed = self.pos_embed_for(grid)[:, start:end]
        return self.drop_after_pos(tokens + pos_embed), grid, shards

    def _check_shards(self, shards) -> None:
        """Each shard must hold at least the tokens one block exchanges
        with its neighbour; subclasses tighten this."""
        shortest = min(shards.lengths)
        if shortest < self.min_shard_tokens:
            raise ValueError(
                f'sequence_parallel.size {shards.group.size} leaves '
                f'{shortest} tokens on a rank ({shards.total} in all); '
                f'{self.family} needs at least {self.min_shard_tokens} per '
                'rank: use a smaller size or a smaller patch')

    def _format_output(self, x: torch.Tensor, grid: Tuple[int, int],
                       shards=None):
        before, after = self.num_extra_tokens
        if self.out_type == 'cls_token':
            if shards is None:
                return x[:, -1] if self.cls_token_last else x[:, 0]
            owner = shards.owner(shards.total - 1 if self.cls_token_last else 0)
            mine = x[:, -1] if self.cls_token_last else x[:, 0]
            return sequence_parallel.owner_to_all(mine, owner, shards)
        if shards is not None:  # the neck and heads see the whole sequence
            x = sequence_parallel.gather_tokens(x, shards)
        patches = x[:, before:x.shape[1] - after]  # (B, N, C)
        if self.out_type == 'raw':
            return patches
        if self.out_type == 'avg_featmap':
            return patches.mean(dim=1)
        B, _, C = patches.shape
        return patches.transpose(1, 2).reshape(B, C, *grid)

    # -- training helpers -----------------------------------------------------
    def get_layer_depth(self, param_name: str, prefix: str = ''):
        """Depth of a parameter for layer-wise lr decay (mmpretrain's
        ``LearningRateDecayOptimWrapperConstructor``): embeddings 0, block i
        at i + 1, everything else (final norm, head) last."""
        num_depths = self.num_layers + 2
        if not param_name.startswith(prefix):
            return num_depths - 1, num_depths
        name = param_name[len(prefix):]
        if name.startswith(('cls_token', 'pos_embed', 'patch_embed')):
            return 0, num_depths
        if name.startswith('layers.'):
            return int(name.split('.')[1]) + 1, num_depths
        return num_depths - 1, num_depths

    # -- checkpoint loading ---------------------------------------------------
    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Renames keys saved under other module names
        (``checkpoint_key_renames``) and resamples a checkpoint's
        ``pos_embed`` and patch-embedding kernel to this model's grid and
        patch size before they are loaded, so that
        ``init_cfg=dict(type='Pretrained')``, ``load_from`` and
        ``load_checkpoint`` accept weights of another resolution or patch
        size (see :func:`adapt_backbone_state_dict`)."""
        renamed = rename_keys(state_dict, prefix, self.checkpoint_key_renames)
        if renamed:
            print_log(f'{self.family}: renamed {renamed} checkpoint keys to '
                      'the current module names', logger='current')
        changes = adapt_backbone_state_dict(
            state_dict, prefix, self.patch_resolution, self.num_extra_tokens,
            self.pos_embed.shape, self.patch_embed.projection.weight.shape)
        if changes:
            print_log(f'{self.family}: resampled checkpoint weights: '
                      f'{", ".join(changes)}', logger='current')
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
