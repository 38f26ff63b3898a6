"""The Mamba-2 scan in plain PyTorch: the token loop and the chunked form.

* :func:`ssd_scan_ref` - token-by-token loop; slow, obviously correct, the
  test oracle for faster kernels.
* :func:`ssd_scan_chunked` - the chunked matmul form of Mamba-2; memory is
  linear in the sequence length and it is differentiable with plain autograd
  (``ssd_scan``'s ``'torch'`` backend).

The recurrence both compute is written out in :mod:`patchscale_mm.ops.ssd`.
"""
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .dtypes import scan_compute_dtype

__all__ = ['ssd_scan_ref', 'ssd_scan_chunked']

ScanOutput = Union[Tensor, Tuple[Tensor, Tensor]]

NO_DT_LIMIT = (0.0, float('inf'))


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
    if tuple(dt_limit) != NO_DT_LIMIT:
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
                 dt_limit: Sequence[float] = NO_DT_LIMIT,
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
    dtype = scan_compute_dtype(x, dt, A, B, C)
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
                     dt_limit: Sequence[float] = NO_DT_LIMIT,
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
    dtype = scan_compute_dtype(x, dt, A, B, C)
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
