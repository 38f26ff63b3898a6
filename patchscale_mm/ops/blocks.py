"""The operations of Adventurer's blocks around the scan, each choosing its
implementation as :func:`~patchscale_mm.ops.ssd_scan` does.

:func:`rms_norm`, :func:`swiglu` and :func:`mamba2_conv_scan_norm` (the
Mamba-2 mixer between its two projections) run one fused CPU kernel
(:mod:`.fused`) where :func:`~.fused.fused_cpu_available` says it serves the
input (float32/bfloat16 CPU tensors, the extension built, the scan backend
resolving to ``'cpp'``, not traced or compiled), and composable PyTorch
otherwise; the composable code here is the reference the fused kernels are
tested against. The pieces of the composable mixer (:func:`causal_conv1d_silu`,
:func:`mamba2_conv_scan`, :func:`gated_rms_norm`) are public because the
sequence-parallel mixer composes them with state passing between ranks.
"""
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .dtypes import compute_dtype
from .fused import (fused_conv_scan_norm, fused_cpu_available, fused_rms_norm,
                    fused_swiglu_gate)
from .ssd import ssd_scan

__all__ = ['rms_norm', 'swiglu', 'causal_conv1d_silu', 'gated_rms_norm', 'mamba2_decay_rates',
           'mamba2_conv_scan', 'mamba2_conv_scan_norm']


def rms_norm(x: Tensor, normalized_shape: Sequence[int], weight: Optional[Tensor] = None,
             eps: Optional[float] = None) -> Tensor:
    """``F.rms_norm``, with the same arguments; one fused kernel (forward and
    backward) for a weighted norm over the last dimension."""
    if weight is not None and len(normalized_shape) == 1 and fused_cpu_available(x):
        eps = torch.finfo(x.dtype).eps if eps is None else eps
        return fused_rms_norm(x, weight, eps)
    return F.rms_norm(x, normalized_shape, weight, eps)


def swiglu(x: Tensor, w1: Tensor, b1: Optional[Tensor], w2: Tensor,
           b2: Optional[Tensor]) -> Tensor:
    """SwiGLU's hidden activation ``silu(x w1^T + b1) * (x w2^T + b2)``.

    The fused path runs both projections as one matmul (the weights stacked)
    and the gate as one pass; it needs both biases.
    """
    if b1 is not None and b2 is not None and fused_cpu_available(x):
        ab = F.linear(x, torch.cat([w1, w2]), torch.cat([b1, b2]))
        return fused_swiglu_gate(ab)
    return F.silu(F.linear(x, w1, b1)) * F.linear(x, w2, b2)


def causal_conv1d_silu(x: Tensor, weight: Tensor, bias: Optional[Tensor],
                       halo: Optional[Tensor] = None) -> Tensor:
    """``silu`` of a causal depthwise convolution along the sequence.

    Args:
        x: ``(b, l, c)``.
        weight, bias: ``nn.Conv1d(c, c, width, groups=c)`` parameters,
            ``(c, 1, width)`` and ``(c,)``.
        halo: The ``width - 1`` input rows before ``x``, ``(b, width - 1, c)``;
            zeros when None.

    Returns:
        ``(b, l, c)``.
    """
    length, width = x.shape[1], weight.shape[-1]
    if halo is None:
        # Causal: keep the first l outputs of the left-padded convolution.
        y = F.conv1d(x.transpose(1, 2), weight, bias, padding=width - 1,
                     groups=weight.shape[0])[..., :length]
    else:
        y = F.conv1d(torch.cat([halo, x], dim=1).transpose(1, 2), weight, bias,
                     groups=weight.shape[0])
    return F.silu(y.transpose(1, 2))


def gated_rms_norm(x: Tensor, z: Tensor, weight: Tensor, group_size: int,
                   eps: float) -> Tensor:
    """``RMSNorm(x * silu(z)) * weight``, normalised per group of
    ``group_size`` channels; in the dtype of ``x``."""
    ct = compute_dtype(x, z)
    x_gated = x.to(ct) * F.silu(z.to(ct))
    groups = x_gated.unflatten(-1, (-1, group_size))
    groups = groups * torch.rsqrt(groups.pow(2).mean(-1, keepdim=True) + eps)
    return (groups.flatten(-2) * weight).to(x.dtype)


def mamba2_decay_rates(A_log: Tensor, like: Tensor) -> Tensor:
    """The scan's per-head ``A = -exp(A_log)`` in the compute dtype of
    ``like`` and ``A_log``."""
    return -torch.exp(A_log.to(compute_dtype(like, A_log)))


def mamba2_conv_scan(xBC: Tensor, dt: Tensor, conv_weight: Tensor,
                     conv_bias: Optional[Tensor], dt_bias: Tensor, A_log: Tensor, D: Tensor, *,
                     ngroups: int, d_state: int, headdim: int, chunk_size: int,
                     halo: Optional[Tensor] = None, **scan_kwargs) -> Tuple:
    """Causal convolution and SiLU of ``xBC``, then the scan, in PyTorch ops
    and :func:`~patchscale_mm.ops.ssd_scan`.

    Args:
        xBC: The convolution inputs x, B, C, ``(b, l, d_inner + 2 g n)``.
        dt: One step size per head, ``(b, l, h)``.
        halo: See :func:`causal_conv1d_silu`.
        **scan_kwargs: Further :func:`~patchscale_mm.ops.ssd_scan`
            arguments (``initial_states``, ``return_final_states``).

    Returns:
        tuple: What ``ssd_scan`` returns (``y`` is ``(b, l, h, p)``) and
        ``C`` ``(b, l, g, n)``.
    """
    gn = ngroups * d_state
    x, B, C = causal_conv1d_silu(xBC, conv_weight, conv_bias, halo).split(
        [xBC.shape[-1] - 2 * gn, gn, gn], dim=-1)
    C = C.unflatten(-1, (ngroups, d_state))
    out = ssd_scan(
        x.unflatten(-1, (-1, headdim)),  # (b, l, h, p)
        dt,  # (b, l, h)
        mamba2_decay_rates(A_log, x),  # (h,)
        B.unflatten(-1, (ngroups, d_state)),  # (b, l, g, n)
        C,
        D=D,
        dt_bias=dt_bias,
        dt_softplus=True,
        chunk_size=chunk_size,
        **scan_kwargs)
    return out, C


def mamba2_conv_scan_norm(zxbcdt: Tensor, conv_weight: Tensor, conv_bias: Optional[Tensor],
                          dt_bias: Tensor, A_log: Tensor, D: Tensor, norm_weight: Tensor, *,
                          d_inner: int, ngroups: int, d_state: int, headdim: int,
                          chunk_size: int, group_size: int, eps: float,
                          fused: bool = True) -> Tensor:
    """The Mamba-2 mixer between its two projections:
    ``gated_rms_norm(scan(silu(conv(xBC))), z)``.

    Args:
        zxbcdt: in_proj output ``(b, l, d_inner + conv_dims + nheads)``, the
            pieces z, xBC, dt in that order.
        conv_weight, conv_bias: depthwise ``nn.Conv1d`` parameters,
            ``(conv_dims, 1, width)`` and ``(conv_dims,)``.
        dt_bias, A_log, D: per-head scan parameters ``(nheads,)``.
        norm_weight: gated RMSNorm weight ``(d_inner,)``.
        fused: Allow the fused CPU kernel; False keeps the composable path.
            Defaults to True.

    Returns:
        ``(b, l, d_inner)`` in the dtype of ``zxbcdt``.
    """
    if fused and fused_cpu_available(zxbcdt):
        return fused_conv_scan_norm(
            zxbcdt, conv_weight, conv_bias, dt_bias, A_log, D, norm_weight, d_inner=d_inner,
            ngroups=ngroups, d_state=d_state, headdim=headdim, chunk_size=chunk_size,
            group_size=group_size, eps=eps)
    z, xBC, dt = zxbcdt.split([d_inner, conv_weight.shape[0], dt_bias.shape[0]], dim=-1)
    y, _ = mamba2_conv_scan(xBC, dt, conv_weight, conv_bias, dt_bias, A_log, D,
                            ngroups=ngroups, d_state=d_state, headdim=headdim,
                            chunk_size=chunk_size)
    return gated_rms_norm(y.flatten(-2), z, norm_weight, group_size, eps)
