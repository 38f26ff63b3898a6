"""Channel mixers: the transformer MLP and Adventurer's SwiGLU."""
import torch
from torch import nn

from patchscale_mm.ops import swiglu


class Mlp(nn.Module):
    """``fc2(drop(act(fc1(x))))`` then dropout, the transformer's channel
    mixer, with timm's parameter names (``fc1``, ``fc2``).

    Args:
        embed_dims (int): Input and output width.
        hidden_dims (int): Hidden width.
        drop (float): Dropout after the activation and after ``fc2``.
            Defaults to 0.
    """

    def __init__(self, embed_dims: int, hidden_dims: int, drop: float = 0.):
        super().__init__()
        self.fc1 = nn.Linear(embed_dims, hidden_dims)
        self.act = nn.GELU()
        self.drop = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_dims, embed_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class SwiGLU(nn.Module):
    """``w3(silu(w1 x) * w2 x)``, the channel mixer of Adventurer blocks.

    The hidden activation is :func:`patchscale_mm.ops.swiglu` (one matmul
    and one fused pass on float32/bfloat16 CPU tensors). w3 stays the last
    matmul, after every tensor the backward needs is saved, so that
    activation checkpointing stops its recomputation before it.
    """

    def __init__(self, embed_dims: int, hidden_dims: int):
        super().__init__()
        self.w1 = nn.Linear(embed_dims, hidden_dims)
        self.w2 = nn.Linear(embed_dims, hidden_dims)
        self.w3 = nn.Linear(hidden_dims, embed_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = swiglu(x, self.w1.weight, self.w1.bias, self.w2.weight, self.w2.bias)
        return self.w3(hidden)
