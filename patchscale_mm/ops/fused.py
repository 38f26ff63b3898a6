"""Fused CPU paths of Adventurer's blocks behind autograd Functions.

The composable PyTorch versions of the Mamba-2 mixer, SwiGLU and RMSNorm make
several passes over every (tokens, channels) tensor: transposes around the
depthwise convolution, copies of the slices of the fused projection, fp32
upcasts, and an autograd node per elementwise op, each with its own buffers.
At tens of thousands of tokens those passes cost as much as the matmuls. The
C++ kernels of ``patchscale_mm.ops._C`` (``csrc/mixer_cpu*.h``) do each step
in one pass over token rows, read slices of the projection in place, and
write gradients straight into the slices of one gradient buffer.

Every Function here computes what its composable counterpart in
:mod:`.blocks` computes (the tests compare both, values and gradients); the
functions of :mod:`.blocks` take these paths where
:func:`fused_cpu_available` says so.
"""
import math
from typing import Optional

import torch
from torch import Tensor

from .backend import load_kernels, resolve_scan_backend
from .dtypes import compute_dtype

__all__ = ['fused_cpu_available', 'fused_conv_scan_norm', 'fused_swiglu_gate', 'fused_rms_norm']

FUSED_DTYPES = (torch.float32, torch.bfloat16)


def fused_cpu_available(x: Tensor) -> bool:
    """Whether the fused kernels serve ``x``: a float32 or bfloat16 CPU tensor,
    the extension built, and the scan backend resolving to the C++ kernel
    (``PATCHSCALE_SCAN_BACKEND=torch`` keeps the whole model on PyTorch ops).

    float64 (tests, gradcheck) runs the composable path, which is the
    reference these kernels are tested against; so do tracing and
    torch.compile (exports and FLOP counters see plain aten ops and the scan,
    and the compiler fuses the elementwise work itself).
    """
    return (x.device.type == 'cpu' and x.dtype in FUSED_DTYPES and not torch.jit.is_tracing()
            and not torch.compiler.is_compiling() and load_kernels('cpu')[0]
            and resolve_scan_backend(None, x) == 'cpp')


def _ops():
    return torch.ops.patchscale_mm


def _spend(ctx):
    """Marks a backward that overwrites a saved activation with its gradient
    (which spares a buffer of that size); a second backward through the same
    graph would read gradients as activations, so it raises instead."""
    if getattr(ctx, 'spent', False):
        raise RuntimeError(
            'patchscale_mm fused CPU kernels: backward through the same graph twice '
            '(retain_graph=True) is not supported; set PATCHSCALE_SCAN_BACKEND=torch '
            'for the composable path')
    ctx.spent = True


# ---------------------------------------------------------------------------
# Mamba-2: causal conv + SiLU -> scan -> gated RMSNorm
# ---------------------------------------------------------------------------
class _Mamba2ConvScanNorm(torch.autograd.Function):

    @staticmethod
    def forward(ctx, zxbcdt, conv_weight, conv_bias, dt_bias, A_log, D, norm_weight, cfg):
        d_inner, ngroups, d_state, headdim, chunk_size, group_size, eps = cfg
        b, l, _ = zxbcdt.shape
        nheads = d_inner // headdim
        gn = ngroups * d_state
        z, xBC, dt = zxbcdt.split([d_inner, d_inner + 2 * gn, nheads], dim=-1)
        ct = compute_dtype(zxbcdt)
        scan_args = _scan_args(dt, A_log, D, dt_bias, nheads, headdim, ct)
        x, B, C = _ops().conv1d_silu_fwd(xBC, conv_weight.flatten(1), conv_bias,
                                        [d_inner, gn, gn], True)
        y, _, states = _ops().ssd_fwd(
            x.view(b, l, nheads, headdim), scan_args[0], scan_args[1],
            B.view(b, l, ngroups, d_state), C.view(b, l, ngroups, d_state), scan_args[2],
            None, scan_args[3], None, True, 0.0, math.inf, chunk_size, True)
        y = y.view(b, l, d_inner)
        out = _ops().gated_rmsnorm_fwd(y, z, norm_weight, group_size, eps)
        # x, B and C are recomputed by the backward (one pass over xBC);
        # y is kept (recomputing it would be a second scan) and becomes dy.
        ctx.save_for_backward(zxbcdt, conv_weight, conv_bias, dt_bias, A_log, D, norm_weight,
                              y, states)
        ctx.cfg = cfg
        return out

    @staticmethod
    def backward(ctx, dout):
        (zxbcdt, conv_weight, conv_bias, dt_bias, A_log, D, norm_weight, y,
         states) = ctx.saved_tensors
        d_inner, ngroups, d_state, headdim, chunk_size, group_size, eps = ctx.cfg
        b, l, _ = zxbcdt.shape
        nheads = d_inner // headdim
        gn = ngroups * d_state
        splits = [d_inner, d_inner + 2 * gn, nheads]
        z, xBC, dt = zxbcdt.split(splits, dim=-1)
        dzxbcdt = torch.empty_like(zxbcdt)  # every slice is written below
        dz, dxBC, ddt_out = dzxbcdt.split(splits, dim=-1)
        ct = compute_dtype(zxbcdt)
        dt_c, A, D_hp, dt_bias_c = _scan_args(dt, A_log, D, dt_bias, nheads, headdim, ct)

        _spend(ctx)
        dy = y  # overwritten with its gradient, in place
        dnorm_weight = _ops().gated_rmsnorm_bwd(dout.contiguous(), dy, z, norm_weight, dz,
                                                group_size, eps)
        x, B, C = _ops().conv1d_silu_fwd(xBC, conv_weight.flatten(1), conv_bias,
                                        [d_inner, gn, gn], True)
        dx, ddt, dA, dB, dC, dD, _, ddt_bias, _ = _ops().ssd_bwd(
            dy.view(b, l, nheads, headdim), None, x.view(b, l, nheads, headdim), dt_c, A,
            B.view(b, l, ngroups, d_state), C.view(b, l, ngroups, d_state), D_hp, None,
            dt_bias_c, None, states, True, 0.0, math.inf, chunk_size)
        del dy, x, B, C
        ddt_out.copy_(ddt)
        dconv_weight, dconv_bias = _ops().conv1d_silu_bwd(
            xBC, conv_weight.flatten(1), conv_bias,
            [dx.view(b, l, d_inner), dB.view(b, l, gn), dC.view(b, l, gn)], dxBC, True)

        def cast(g, p):
            return None if p is None or not p.requires_grad else g.to(p.dtype).view_as(p)

        return (dzxbcdt, cast(dconv_weight, conv_weight), cast(dconv_bias, conv_bias),
                cast(ddt_bias, dt_bias), cast(dA * A, A_log), cast(dD.sum(-1), D),
                cast(dnorm_weight, norm_weight), None)


def _scan_args(dt, A_log, D, dt_bias, nheads, headdim, ct):
    """dt (contiguous), A = -exp(A_log), D as (h, p) and dt_bias, in dtype ct."""
    return (dt.to(ct).contiguous(), -torch.exp(A_log.to(ct)),
            D.to(ct)[:, None].expand(nheads, headdim).contiguous(), dt_bias.to(ct).contiguous())


def fused_conv_scan_norm(zxbcdt: Tensor, conv_weight: Tensor, conv_bias: Optional[Tensor],
                         dt_bias: Tensor, A_log: Tensor, D: Tensor, norm_weight: Tensor, *,
                         d_inner: int, ngroups: int, d_state: int, headdim: int,
                         chunk_size: int, group_size: int, eps: float) -> Tensor:
    """The Mamba-2 mixer between its two projections, fused.

    Args:
        zxbcdt: in_proj output ``(b, l, d_inner + conv_dims + nheads)``, the
            pieces z, xBC, dt in that order; float32 or bfloat16.
        conv_weight, conv_bias: depthwise ``nn.Conv1d`` parameters,
            ``(conv_dims, 1, width)`` and ``(conv_dims,)``.
        dt_bias, A_log, D: per-head scan parameters ``(nheads,)``.
        norm_weight: gated RMSNorm weight ``(d_inner,)``.

    Returns:
        ``rmsnorm(scan(silu(conv(xBC))) * silu(z)) * norm_weight``,
        ``(b, l, d_inner)`` in the dtype of ``zxbcdt``; the scan computes in
        ``compute_dtype(zxbcdt)``.
    """
    cfg = (d_inner, ngroups, d_state, headdim, chunk_size, group_size, eps)
    return _Mamba2ConvScanNorm.apply(zxbcdt, conv_weight, conv_bias, dt_bias, A_log, D,
                                     norm_weight, cfg)


# ---------------------------------------------------------------------------
# SwiGLU gate: silu(a) * b
# ---------------------------------------------------------------------------
class _SwiGLUGate(torch.autograd.Function):

    @staticmethod
    def forward(ctx, ab):
        ab = ab.contiguous()
        ctx.save_for_backward(ab)
        return _ops().swiglu_fwd(ab)

    @staticmethod
    def backward(ctx, ds):
        ab, = ctx.saved_tensors
        _spend(ctx)
        _ops().swiglu_bwd(ds.contiguous(), ab)  # ab becomes [da | db]
        return ab


def fused_swiglu_gate(ab: Tensor) -> Tensor:
    """``silu(a) * b`` for ``ab = [a | b]`` along the last dimension (the
    stacked outputs of SwiGLU's w1 and w2), in one pass; backward likewise."""
    return _SwiGLUGate.apply(ab)


# ---------------------------------------------------------------------------
# RMSNorm
# ---------------------------------------------------------------------------
class _RMSNorm(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x, weight, eps):
        x = x.contiguous()
        out, rstd = _ops().rms_norm_fwd(x, weight, eps)
        ctx.save_for_backward(x, weight, rstd)
        return out

    @staticmethod
    def backward(ctx, dout):
        x, weight, rstd = ctx.saved_tensors
        dx, dweight = _ops().rms_norm_bwd(dout.contiguous(), x, weight, rstd)
        return dx, dweight.to(weight.dtype), None


def fused_rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """``F.rms_norm(x, (C,), weight, eps)`` over the last dimension."""
    return _RMSNorm.apply(x, weight, eps)
