"""Multi-head self-attention with a memory-efficient kernel.

``F.scaled_dot_product_attention`` never materialises the N x N attention
matrix on its flash / memory-efficient backends, which is what keeps ViT's
memory linear in the token count at small patch sizes. flash-attn is used
instead where it is installed and the inputs are half precision on CUDA.
"""
import functools

import torch
import torch.nn.functional as F
from torch import nn

from patchscale_mm.parallel import sequence as sequence_parallel


@functools.lru_cache(maxsize=None)
def _flash_attn_func():
    try:
        from flash_attn import flash_attn_func
    except Exception:  # not installed, or built without CUDA
        return None
    return flash_attn_func


class Attention(nn.Module):
    """Self-attention over (B, N, C) tokens.

    Args:
        embed_dims (int): Token width C.
        num_heads (int): Heads; ``embed_dims`` must be divisible by it.
        qkv_bias (bool): Bias in the qkv projection. Defaults to True.
        attn_drop (float): Dropout on attention weights. Defaults to 0.
        proj_drop (float): Dropout after the output projection.
            Defaults to 0.
        use_flash_attn (bool): Use flash-attn when available. Defaults to True.
    """

    def __init__(self,
                 embed_dims: int,
                 num_heads: int,
                 qkv_bias: bool = True,
                 attn_drop: float = 0.,
                 proj_drop: float = 0.,
                 use_flash_attn: bool = True):
        super().__init__()
        if embed_dims % num_heads:
            raise ValueError(f'embed_dims {embed_dims} is not divisible by '
                             f'num_heads {num_heads}')
        self.num_heads = num_heads
        self.head_dims = embed_dims // num_heads
        self.attn_drop = attn_drop
        self.use_flash_attn = use_flash_attn
        self.qkv = nn.Linear(embed_dims, embed_dims * 3, bias=qkv_bias)
        self.proj = nn.Linear(embed_dims, embed_dims)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, shards=None) -> torch.Tensor:
        """Attention over (B, N, C) tokens; with ``shards``
        (:class:`~patchscale_mm.parallel.sequence.TokenShards`), ``x`` is
        this rank's shard and its queries attend to the keys and values of
        the whole sequence (:func:`~patchscale_mm.parallel.sequence.
        shard_attention`; no attention dropout there)."""
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dims)
        dropout_p = self.attn_drop if self.training else 0.
        # Under autocast the projection, not the input, carries the compute dtype.
        flash_attn = self._flash_attn(qkv) if shards is None else None
        if flash_attn is not None:
            q, k, v = qkv.unbind(2)  # (B, N, nh, hd)
            x = flash_attn(q, k, v, dropout_p=dropout_p)
        else:
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, nh, N, hd)
            if shards is None:
                x = F.scaled_dot_product_attention(q, k, v,
                                                   dropout_p=dropout_p)
            else:
                x = sequence_parallel.shard_attention(q, k, v, shards)
            x = x.transpose(1, 2)
        return self.proj_drop(self.proj(x.reshape(B, N, C)))

    def _flash_attn(self, x: torch.Tensor):
        if not (self.use_flash_attn and x.is_cuda
                and x.dtype in (torch.float16, torch.bfloat16)):
            return None
        return _flash_attn_func()
