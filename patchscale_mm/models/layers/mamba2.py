"""The Mamba-2 token mixer used by Adventurer.

Projections, a causal depthwise convolution, the selective scan (SSD) and a
gated RMSNorm, with the defaults of mamba_ssm's ``Mamba2`` that Adventurer
uses: d_state 64, expand 2, d_conv 4, headdim 64, one group, chunk 256, no
linear bias, conv bias, the norm applied after the gate. The scan itself lives
in :mod:`patchscale_mm.ops` so that kernels can change without touching the
model.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from patchscale_mm.ops import compute_dtype, ssd_scan
from patchscale_mm.ops.fused import fused_cpu_available, mamba2_conv_scan_norm


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
        dtype = x.dtype
        ct = compute_dtype(x, z)
        x = x.to(ct) * F.silu(z.to(ct))
        groups = x.unflatten(-1, (-1, self.group_size))
        groups = groups * torch.rsqrt(
            groups.pow(2).mean(-1, keepdim=True) + self.eps)
        return (groups.flatten(-2) * self.weight).to(dtype)


class Mamba2Mixer(nn.Module):
    """Mamba-2 mixer over (B, L, D) tokens, uni-directional (causal).

    Args:
        embed_dims (int): Model width D.
        d_state (int): SSM state size N. Defaults to 64.
        d_conv (int): Causal convolution width. Defaults to 4.
        expand (int): Inner width is ``expand * D``. Defaults to 2.
        headdim (int): Channels per SSM head P. Defaults to 64.
        ngroups (int): Groups sharing B and C. Defaults to 1.
        chunk_size (int): Chunk length of the scan. Defaults to 256.
        dt_min (float), dt_max (float), dt_init_floor (float): Range of the
            initial step sizes. Defaults to 1e-3, 0.1, 1e-4.
        A_init_range (tuple): Range of the initial decay rates.
            Defaults to (1, 16).
        bias (bool): Bias of the in/out projections. Defaults to False.
        conv_bias (bool): Bias of the convolution. Defaults to True.
        fused (bool): Run everything between the two projections as one
            fused CPU kernel where it applies (CPU float32/bfloat16, not
            traced); False keeps the composable modules, which are the
            reference. Defaults to True.
    """

    def __init__(self,
                 embed_dims: int,
                 d_state: int = 64,
                 d_conv: int = 4,
                 expand: int = 2,
                 headdim: int = 64,
                 ngroups: int = 1,
                 chunk_size: int = 256,
                 dt_min: float = 1e-3,
                 dt_max: float = 0.1,
                 dt_init_floor: float = 1e-4,
                 A_init_range: tuple = (1, 16),
                 bias: bool = False,
                 conv_bias: bool = True,
                 fused: bool = True):
        super().__init__()
        self.d_inner = expand * embed_dims
        if self.d_inner % headdim:
            raise ValueError(f'inner width {self.d_inner} is not divisible '
                             f'by headdim {headdim}')
        self.d_state, self.headdim, self.ngroups = d_state, headdim, ngroups
        self.nheads = self.d_inner // headdim
        self.chunk_size = chunk_size
        # x, B and C go through the convolution together.
        conv_dims = self.d_inner + 2 * ngroups * d_state

        # One projection gives z (gate), x, B, C and one dt per head.
        self.in_proj = nn.Linear(
            embed_dims, self.d_inner + conv_dims + self.nheads, bias=bias)
        self.conv1d = nn.Conv1d(
            conv_dims,
            conv_dims,
            kernel_size=d_conv,
            groups=conv_dims,
            padding=d_conv - 1,
            bias=conv_bias)

        # dt_bias = softplus^-1(dt) for dt log-uniform in [dt_min, dt_max], so
        # that the initial step sizes span the useful time scales.
        dt = torch.exp(
            torch.rand(self.nheads) * (math.log(dt_max) - math.log(dt_min)) +
            math.log(dt_min)).clamp(min=dt_init_floor)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        A = torch.empty(self.nheads).uniform_(*A_init_range)
        self.A_log = nn.Parameter(torch.log(A))
        self.D = nn.Parameter(torch.ones(self.nheads))
        self.norm = GatedRMSNorm(
            self.d_inner, eps=1e-5, group_size=self.d_inner // ngroups)
        self.out_proj = nn.Linear(self.d_inner, embed_dims, bias=bias)
        self.fused = fused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        zxbcdt = self.in_proj(x)
        if self.fused and fused_cpu_available(zxbcdt):
            y = mamba2_conv_scan_norm(
                zxbcdt,
                self.conv1d.weight,
                self.conv1d.bias,
                self.dt_bias,
                self.A_log,
                self.D,
                self.norm.weight,
                d_inner=self.d_inner,
                ngroups=self.ngroups,
                d_state=self.d_state,
                headdim=self.headdim,
                chunk_size=self.chunk_size,
                group_size=self.norm.group_size,
                eps=self.norm.eps)
        else:
            y = self.conv_scan_norm(zxbcdt)
        return self.out_proj(y)

    def conv_scan_norm(self, zxbcdt: torch.Tensor) -> torch.Tensor:
        """(B, L, in_proj outputs) -> (B, L, d_inner), in PyTorch ops."""
        B, L, _ = zxbcdt.shape
        z, xBC, dt = zxbcdt.split(
            [self.d_inner, self.conv1d.in_channels, self.nheads], dim=-1)
        # Causal: keep the first L outputs of the left-padded convolution.
        xBC = self.conv1d(xBC.transpose(1, 2))[..., :L].transpose(1, 2)
        xBC = F.silu(xBC)
        x, Bmat, Cmat = xBC.split([
            self.d_inner, self.ngroups * self.d_state,
            self.ngroups * self.d_state
        ],
                                  dim=-1)
        y = ssd_scan(
            x.unflatten(-1, (self.nheads, self.headdim)),  # (B, L, h, p)
            dt,  # (B, L, h)
            -torch.exp(self.A_log.to(compute_dtype(x, self.A_log))),  # (h,)
            Bmat.unflatten(-1, (self.ngroups, self.d_state)),  # (B, L, g, n)
            Cmat.unflatten(-1, (self.ngroups, self.d_state)),
            D=self.D,
            dt_bias=self.dt_bias,
            dt_softplus=True,
            chunk_size=self.chunk_size)
        return self.norm(y.flatten(-2), z)
