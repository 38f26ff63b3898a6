"""Mamba-2 selective state-space scan ("SSD") in plain PyTorch.

Semantics follow ``mamba_ssm.ops.triton.ssd_combined.mamba_chunk_scan_combined``
(scalar decay per head). For every batch ``b``, token ``t`` and head ``h``::

    dt_t = dt_limit.clamp(softplus?(dt_t + dt_bias))
    s_t  = exp(dt_t * A_h) * s_{t-1} + dt_t * outer(x_t, B_t)     # (headdim, d_state)
    y_t  = (s_t @ C_t + D_h * x_t) * silu(z_t)

where head ``h`` reads group ``h // (heads // groups)`` of ``B`` and ``C``.

Three entry points share one signature:

* :func:`ssd_scan_ref` - token-by-token loop; slow, obviously correct, the
  test oracle for faster kernels.
* :func:`ssd_scan_chunked` - the chunked matmul form of Mamba-2; memory is
  linear in the sequence length and it is differentiable with plain autograd.
* :func:`ssd_scan` - the public entry point; validates shapes and dispatches to
  the fastest available backend: this repository's fused C++ kernel on CPU
  tensors and its CUDA kernel on CUDA tensors (:mod:`.ssd_kernel`).
"""
import functools
import os
import warnings
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .dtypes import compute_dtype

__all__ = ['ssd_scan', 'ssd_scan_ref', 'ssd_scan_chunked']

ScanOutput = Union[Tensor, Tuple[Tensor, Tensor]]

_NO_DT_LIMIT = (0.0, float('inf'))
BACKENDS = ('auto', 'torch', 'cpp', 'cuda', 'mamba_ssm')
BACKEND_ENV = 'PATCHSCALE_SCAN_BACKEND'


# ---------------------------------------------------------------------------
# Shared pre/post-processing
# ---------------------------------------------------------------------------
def _process_dt(dt: Tensor, dtype: torch.dtype, dt_bias: Optional[Tensor],
                dt_softplus: bool, dt_limit: Sequence[float]) -> Tensor:
    """Applies bias, softplus and clamp to ``dt`` in the same order as mamba_ssm."""
    dt = dt.to(dtype)
    if dt_bias is not None:
        dt = dt + dt_bias.to(dtype)
    if dt_softplus:
        dt = F.softplus(dt)  # threshold=20 matches the Triton kernel
    if tuple(dt_limit) != _NO_DT_LIMIT:
        dt = dt.clamp(min=dt_limit[0], max=dt_limit[1])
    return dt


def _skip_and_gate(y: Tensor, x: Tensor, D: Optional[Tensor],
                   z: Optional[Tensor]) -> Tensor:
    """Adds the ``D * x`` skip, gates with ``silu(z)`` and casts to x's dtype."""
    if D is not None:
        D = D.to(y.dtype)
        y = y + x.to(y.dtype) * (D[:, None] if D.dim() == 1 else D)  # (h, 1|p)
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y.to(x.dtype)


# ---------------------------------------------------------------------------
# Sequential reference
# ---------------------------------------------------------------------------
def ssd_scan_ref(x: Tensor,
                 dt: Tensor,
                 A: Tensor,
                 B: Tensor,
                 C: Tensor,
                 D: Optional[Tensor] = None,
                 z: Optional[Tensor] = None,
                 dt_bias: Optional[Tensor] = None,
                 dt_softplus: bool = False,
                 dt_limit: Sequence[float] = _NO_DT_LIMIT,
                 initial_states: Optional[Tensor] = None,
                 return_final_states: bool = False) -> ScanOutput:
    """Sequential reference of the Mamba-2 scan, one token at a time.

    Slow (a Python loop over the sequence) but a direct transcription of the
    recurrence, so it serves as the oracle for every faster implementation.

    Shapes use ``b`` batch, ``l`` sequence length, ``h`` heads, ``p`` head dim,
    ``g`` groups (``h % g == 0``) and ``n`` state size.

    Args:
        x: Input, ``(b, l, h, p)``.
        dt: Step sizes, ``(b, l, h)``.
        A: Per-head decay rate, ``(h,)``; negative for a stable scan.
        B: Input projection, ``(b, l, g, n)``. Head ``h`` uses group
            ``h // (h_total // g)``.
        C: Output projection, ``(b, l, g, n)``.
        D: Optional skip weight, ``(h,)`` or ``(h, p)``; adds ``D * x``.
        z: Optional gate, ``(b, l, h, p)``; output is multiplied by
            ``silu(z)``.
        dt_bias: Optional bias added to ``dt``, ``(h,)``.
        dt_softplus: Apply softplus to ``dt`` after the bias.
        dt_limit: ``(min, max)`` clamp applied to ``dt`` last.
        initial_states: Optional starting state, ``(b, h, p, n)``.
        return_final_states: Also return the state after the last token.

    Returns:
        ``y`` with the shape and dtype of ``x``; with ``return_final_states``
        the tuple ``(y, final_states)`` where ``final_states`` is
        ``(b, h, p, n)`` in the compute dtype (fp32, or fp64 for fp64 inputs).
    """
    dtype = compute_dtype(x, dt, A, B, C)
    b, l, h, p = x.shape
    g, n = B.shape[-2:]
    dt = _process_dt(dt, dtype, dt_bias, dt_softplus, dt_limit)  # (b, l, h)
    xf, Af = x.to(dtype), A.to(dtype)
    # Readability over speed: give every head its own copy of its group.
    Bh = B.to(dtype).repeat_interleave(h // g, dim=2)  # (b, l, h, n)
    Ch = C.to(dtype).repeat_interleave(h // g, dim=2)  # (b, l, h, n)

    if initial_states is None:
        state = x.new_zeros((b, h, p, n), dtype=dtype)
    else:
        state = initial_states.to(dtype)
    ys = []
    for t in range(l):
        decay = torch.exp(dt[:, t] * Af)  # (b, h)
        inp = (dt[:, t, :, None] * xf[:, t])[..., None] * Bh[:, t, :, None, :]  # (b, h, p, n)
        state = decay[..., None, None] * state + inp
        ys.append(torch.einsum('bhpn,bhn->bhp', state, Ch[:, t]))
    y = torch.stack(ys, dim=1)  # (b, l, h, p)
    y = _skip_and_gate(y, x, D, z)
    return (y, state) if return_final_states else y


# ---------------------------------------------------------------------------
# Chunked (matmul) form
# ---------------------------------------------------------------------------
def ssd_scan_chunked(x: Tensor,
                     dt: Tensor,
                     A: Tensor,
                     B: Tensor,
                     C: Tensor,
                     D: Optional[Tensor] = None,
                     z: Optional[Tensor] = None,
                     dt_bias: Optional[Tensor] = None,
                     dt_softplus: bool = False,
                     dt_limit: Sequence[float] = _NO_DT_LIMIT,
                     initial_states: Optional[Tensor] = None,
                     return_final_states: bool = False,
                     chunk_size: int = 256) -> ScanOutput:
    """Chunked matmul ("SSD") form of the Mamba-2 scan.

    The sequence is cut into chunks. Inside a chunk the scan is evaluated as a
    masked quadratic "attention" with a decay matrix; across chunks only the
    ``(h, p, n)`` state is carried by a short sequential loop. Memory is linear
    in the sequence length: per-token states are never materialised, only one
    state per chunk.

    Args:
        x, dt, A, B, C, D, z, dt_bias, dt_softplus, dt_limit, initial_states,
        return_final_states: As in :func:`ssd_scan_ref`.
        chunk_size: Tokens per chunk. Capped at the sequence length so short
            sequences are not padded up to a full chunk.

    Returns:
        Same as :func:`ssd_scan_ref`.
    """
    dtype = compute_dtype(x, dt, A, B, C)
    b, l, h, p = x.shape
    g, n = B.shape[-2:]
    r = h // g  # heads per group
    dt = _process_dt(dt, dtype, dt_bias, dt_softplus, dt_limit)
    xf, Bf, Cf = x.to(dtype), B.to(dtype), C.to(dtype)

    # Pad to whole chunks. Padded tokens have dt = 0: decay exp(0) = 1 and a
    # zero input, so they leave the state (and the final state) untouched.
    s = max(1, min(chunk_size, l))
    pad = -l % s
    if pad:
        xf, dt, Bf, Cf = (F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad))
                          for t in (xf, dt, Bf, Cf))
    c = (l + pad) // s

    # Split heads into (group, head-in-group) so B and C broadcast over the
    # heads of their group instead of being copied per head.
    xf = xf.reshape(b, c, s, g, r, p)
    dt = dt.reshape(b, c, s, g, r)
    Bf = Bf.reshape(b, c, s, g, n)
    Cf = Cf.reshape(b, c, s, g, n)
    dA_cs = torch.cumsum(dt * A.to(dtype).reshape(g, r), dim=2)  # (b, c, s, g, r)
    xdt = xf * dt[..., None]  # (b, c, s, g, r, p)

    # 1. Within a chunk: y_i = sum_{j<=i} exp(cs_i - cs_j) (C_i . B_j) dt_j x_j.
    # Mask before exp so the upper triangle is exp(-inf) = 0 rather than a
    # possibly overflowing exp(+big) whose gradient would be NaN.
    cs = dA_cs.permute(0, 1, 3, 4, 2)  # (b, c, g, r, s)
    causal = torch.ones(s, s, dtype=torch.bool, device=x.device).tril()
    decay = torch.exp((cs[..., :, None] - cs[..., None, :])
                      .masked_fill(~causal, float('-inf')))  # (b, c, g, r, s, s)
    CB = torch.einsum('bclgn,bcsgn->bcgls', Cf, Bf)  # (b, c, g, s, s), shared per group
    y = torch.einsum('bcgrls,bcsgrp->bclgrp', CB[:, :, :, None] * decay, xdt)

    # 2. State each chunk would end in if it started from zero.
    decay_to_end = torch.exp(dA_cs[:, :, -1:] - dA_cs)  # (b, c, s, g, r)
    chunk_states = torch.einsum('bcsgn,bcsgrp->bcgrpn', Bf,
                                xdt * decay_to_end[..., None])  # (b, c, g, r, p, n)

    # 3. Carry the state across chunks: O(c) sequential steps of (b, h, p, n).
    chunk_decay = torch.exp(dA_cs[:, :, -1])  # (b, c, g, r)
    if initial_states is None:
        state = xf.new_zeros((b, g, r, p, n))
    else:
        state = initial_states.to(dtype).reshape(b, g, r, p, n)
    prev_states = []
    for i in range(c):
        prev_states.append(state)
        state = chunk_decay[:, i, :, :, None, None] * state + chunk_states[:, i]
    prev_states = torch.stack(prev_states, dim=1)  # (b, c, g, r, p, n), state entering chunk

    # 4. Contribution of the incoming state, decayed to each position.
    y_state = torch.einsum('bclgn,bcgrpn->bclgrp', Cf, prev_states)
    y = y + y_state * torch.exp(dA_cs)[..., None]  # (b, c, s, g, r, p)

    y = y.reshape(b, c * s, h, p)[:, :l]
    y = _skip_and_gate(y, x, D, z)
    if return_final_states:
        return y, state.reshape(b, h, p, n)
    return y


# ---------------------------------------------------------------------------
# Public entry point
# ---------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _load_mamba_ssm():
    """Returns ``(mamba_chunk_scan_combined, None)`` or ``(None, reason)``."""
    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    except Exception as e:  # ImportError, but also broken Triton/CUDA builds
        return None, f'{type(e).__name__}: {e}'.splitlines()[0]
    return mamba_chunk_scan_combined, None


@functools.lru_cache(maxsize=None)
def _warn_fallback(device_type: str, reason: str):
    """Warns once per device type that 'auto' fell back to the torch scan."""
    warnings.warn(f'ssd_scan: no compiled scan kernel for {device_type} tensors, '
                  f'using the (slower) PyTorch chunked scan: {reason}', stacklevel=4)


# mamba_ssm's Triton SSD kernels compute element offsets in 32 bits
# (state-spaces/mamba#1015): past 2**31 elements they crash or, worse, write
# wrong values without an error.
INT32_OFFSET_LIMIT = 2**31


def int32_offset_overflow(*tensors: Optional[Tensor]) -> Optional[str]:
    """Why 32-bit element offsets cannot address one of ``tensors`` (the
    first whose batch x per-sample stride reaches 2**31 elements, e.g. ``dt``
    as a view of Adventurer-B/1's fused projection from batch 14), or
    None."""
    for name, t in zip(('x', 'dt', 'B', 'C', 'z', 'initial_states'), tensors):
        if t is not None and t.dim() and t.shape[0] * t.stride(0) >= INT32_OFFSET_LIMIT:
            return (f'{name} spans {t.shape[0] * t.stride(0):,} elements (batch '
                    f'{t.shape[0]} x stride {t.stride(0):,}), past the 2**31 that '
                    'its 32-bit offsets address')
    return None


@functools.lru_cache(maxsize=None)
def _warn_int32(reason: str):
    warnings.warn(f"ssd_scan: 'auto' uses this repository's CUDA kernel, not "
                  f"mamba_ssm's: {reason}", stacklevel=4)


def resolve_backend(backend: Optional[str], x: Tensor,
                    inputs: Tuple[Optional[Tensor], ...] = ()) -> str:
    """Maps a requested backend (or the env default) to a concrete one.

    ``'auto'`` picks, on CUDA, mamba_ssm's Triton kernel when installed and
    else this repository's 'cuda' kernel; on CPU the 'cpp' kernel. Without a
    kernel for the device it warns once and falls back to 'torch'. mamba_ssm
    comes first because its backward is much faster (19x forward+backward at
    50,176 tokens on an H200, docs/benchmarks.md); it multiplies fp32 in TF32,
    so fp64 inputs, which ask for accuracy, skip it, and ``backend='cuda'``
    is the choice for full fp32 accuracy. Inputs that its 32-bit offsets
    cannot address (``inputs``: x, dt, B, C, z, initial_states; see
    :func:`int32_offset_overflow`) skip it too, with a warning, once.
    """
    name = backend if backend is not None else os.environ.get(BACKEND_ENV) or 'auto'
    if name not in BACKENDS:
        raise ValueError(f'ssd_scan: unknown backend {name!r}; valid backends '
                         f'are None, {", ".join(map(repr, BACKENDS))}')
    from .ssd_kernel import load_kernels
    if name == 'auto':
        if x.device.type not in ('cpu', 'cuda'):
            return 'torch'
        if x.is_cuda and x.dtype != torch.float64 and _load_mamba_ssm()[0] is not None:
            overflow = int32_offset_overflow(*inputs)
            if overflow is None:
                return 'mamba_ssm'
            _warn_int32(overflow)
        ok, reason = load_kernels(x.device.type)
        if ok:
            return 'cpp' if x.device.type == 'cpu' else 'cuda'
        _warn_fallback(x.device.type, reason)
        return 'torch'
    if name in ('cpp', 'cuda'):
        device_type = 'cpu' if name == 'cpp' else 'cuda'
        if x.device.type != device_type:
            raise RuntimeError(f'ssd_scan: backend {name!r} needs {device_type} tensors, '
                               f"got device {x.device}; use backend='auto'")
        ok, reason = load_kernels(device_type)
        if not ok:
            raise RuntimeError(f'ssd_scan: backend {name!r} requested but {reason}')
    if name == 'mamba_ssm':
        fn, reason = _load_mamba_ssm()
        if fn is None:
            raise RuntimeError(
                "ssd_scan: backend 'mamba_ssm' requested but "
                f'mamba_ssm.ops.triton.ssd_combined could not be imported ({reason}); '
                "install mamba-ssm or use backend='torch'")
        if not x.is_cuda:
            raise RuntimeError("ssd_scan: backend 'mamba_ssm' needs CUDA tensors, "
                               f"got device {x.device}; use backend='torch'")
    return name


def _check_shape(name: str, t: Optional[Tensor], expected: Tuple, desc: str = ''):
    if t is not None and tuple(t.shape) != tuple(expected):
        raise ValueError(f'ssd_scan: {name} has shape {tuple(t.shape)}, '
                         f'expected {desc or tuple(expected)}')


def _check_inputs(x, dt, A, B, C, D, z, dt_bias, initial_states, chunk_size):
    """Cheap shape checks so mistakes fail with a readable one-line error."""
    if x.dim() != 4:
        raise ValueError(f'ssd_scan: x has shape {tuple(x.shape)}, '
                         'expected (batch, seqlen, heads, headdim)')
    b, l, h, p = x.shape
    if B.dim() != 4 or tuple(B.shape[:2]) != (b, l) or h % B.shape[2] != 0:
        raise ValueError(f'ssd_scan: B has shape {tuple(B.shape)}, expected '
                         f'({b}, {l}, groups, d_state) with groups dividing heads={h}')
    g, n = B.shape[2:]
    _check_shape('dt', dt, (b, l, h))
    _check_shape('A', A, (h,))
    _check_shape('C', C, (b, l, g, n))
    if D is not None and tuple(D.shape) not in ((h,), (h, p)):
        raise ValueError(f'ssd_scan: D has shape {tuple(D.shape)}, '
                         f'expected ({h},) or ({h}, {p})')
    _check_shape('z', z, (b, l, h, p))
    _check_shape('dt_bias', dt_bias, (h,))
    _check_shape('initial_states', initial_states, (b, h, p, n))
    if chunk_size < 1:
        raise ValueError(f'ssd_scan: chunk_size must be positive, got {chunk_size}')


def ssd_scan(x: Tensor,
             dt: Tensor,
             A: Tensor,
             B: Tensor,
             C: Tensor,
             D: Optional[Tensor] = None,
             z: Optional[Tensor] = None,
             dt_bias: Optional[Tensor] = None,
             dt_softplus: bool = False,
             dt_limit: Sequence[float] = _NO_DT_LIMIT,
             initial_states: Optional[Tensor] = None,
             return_final_states: bool = False,
             chunk_size: int = 256,
             backend: Optional[str] = None) -> ScanOutput:
    """Mamba-2 selective scan; the entry point models should call.

    Arguments and return values are those of :func:`ssd_scan_chunked`.
    Every backend computes in fp32 at least (fp64 for fp64 inputs) and
    returns ``y`` in the dtype of ``x``.

    Args:
        backend: ``None`` (use ``$PATCHSCALE_SCAN_BACKEND``, else ``'auto'``),
            ``'auto'`` (the fastest kernel for the device of ``x``: mamba_ssm's
            on CUDA when installed, else this repository's; see
            :func:`resolve_backend`), ``'cpp'`` (the fused C++ CPU kernel),
            ``'cuda'`` (the fused CUDA kernel), ``'torch'``
            (:func:`ssd_scan_chunked`) or ``'mamba_ssm'`` (its Triton kernel).
            A named backend that cannot run raises.

    Raises:
        ValueError: On inconsistent shapes or an unknown backend.
        RuntimeError: If a named backend is not built/installed or does not
            match the device of ``x``.
    """
    _check_inputs(x, dt, A, B, C, D, z, dt_bias, initial_states, chunk_size)
    kwargs = dict(D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus,
                  dt_limit=tuple(dt_limit), initial_states=initial_states,
                  return_final_states=return_final_states, chunk_size=chunk_size)
    name = resolve_backend(backend, x, (x, dt, B, C, z, initial_states))
    if name == 'mamba_ssm':
        return _load_mamba_ssm()[0](x, dt, A, B, C, **kwargs)
    if name in ('cpp', 'cuda'):
        from .ssd_kernel import ssd_scan_kernel
        return ssd_scan_kernel(x, dt, A, B, C, **kwargs)
    return ssd_scan_chunked(x, dt, A, B, C, **kwargs)
