"""RMS norms: Adventurer's block norm and the Mamba-2 mixer's gated norm."""
import torch
from torch import nn

from patchscale_mm.ops import gated_rms_norm, rms_norm


class RMSNorm(nn.RMSNorm):
    """``nn.RMSNorm`` through :func:`patchscale_mm.ops.rms_norm` (one fused
    kernel on float32/bfloat16 CPU tensors)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.normalized_shape, self.weight, self.eps)


class GatedRMSNorm(nn.Module):
    """``RMSNorm(x * silu(z))``, normalised per group of ``group_size``."""

    def __init__(self, dim: int, eps: float = 1e-5, group_size: int = None):
        super().__init__()
        self.eps = eps
        self.group_size = group_size or dim
        if dim % self.group_size:
            raise ValueError(f'dim {dim} is not divisible by group_size '
                             f'{self.group_size}')
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return gated_rms_norm(x, z, self.weight, self.group_size, self.eps)
