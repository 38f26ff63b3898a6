"""The fused selective-scan kernels of this repository behind one autograd Function.

``torch.ops.patchscale_mm.ssd_fwd`` / ``ssd_bwd`` dispatch on the tensors'
device to the C++ (``patchscale_mm.ops._C``) or CUDA (``_C_cuda``)
implementation; :func:`~.backend.load_kernels` says whether they are built.

The forward saves only the inputs and the state entering every chunk,
``(b, h, L / chunk_size, n, p)``; the backward recomputes the per-token states
chunk by chunk and never holds ``(b, L, h, p, n)``.
"""
from typing import Optional, Sequence

import torch
from torch import Tensor

from .dtypes import scan_compute_dtype
from .ssd_torch import NO_DT_LIMIT

__all__ = ['ssd_scan_kernel', 'SSDScanFn']


def _prepare(x, dt, A, B, C, D, z, dt_bias, initial_states, dtype):
    """Contiguous tensors in the compute dtype; D as (h, p)."""

    def conv(t):
        return None if t is None else t.to(dtype).contiguous()

    h, p = x.shape[-2:]
    if D is not None:
        D = D.to(dtype)
        D = (D[:, None].expand(h, p) if D.dim() == 1 else D).contiguous()
    return (conv(x), conv(dt), conv(A), conv(B), conv(C), D, conv(z), conv(dt_bias),
            conv(initial_states))


class SSDScanFn(torch.autograd.Function):
    """Fused forward and backward of the scan (see :func:`ssd_scan_kernel`)."""

    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, z, dt_bias, initial_states, dt_softplus,
                dt_limit, return_final_states, chunk_size):
        dtype = scan_compute_dtype(x, dt, A, B, C)
        args = _prepare(x, dt, A, B, C, D, z, dt_bias, initial_states, dtype)
        out, final, states = torch.ops.patchscale_mm.ssd_fwd(
            *args, bool(dt_softplus), float(dt_limit[0]), float(dt_limit[1]),
            int(chunk_size), any(ctx.needs_input_grad))
        # Save the caller's tensors, not the converted copies: backward converts
        # again, which is cheaper than holding a second copy of every input.
        ctx.save_for_backward(x, dt, A, B, C, D, z, dt_bias, initial_states, states)
        ctx.config = (dtype, bool(dt_softplus), float(dt_limit[0]), float(dt_limit[1]),
                      int(chunk_size))
        ctx.set_materialize_grads(False)
        y = out.to(x.dtype)
        return (y, final) if return_final_states else y

    @staticmethod
    def backward(ctx, dout, dfinal=None):
        x, dt, A, B, C, D, z, dt_bias, initial_states, states = ctx.saved_tensors
        dtype, dt_softplus, dt_min, dt_max, chunk_size = ctx.config
        args = _prepare(x, dt, A, B, C, D, z, dt_bias, initial_states, dtype)
        dout = (torch.zeros_like(args[0]) if dout is None else
                dout.to(dtype).contiguous())
        if dfinal is not None:
            dfinal = dfinal.to(dtype).contiguous()
        grads = torch.ops.patchscale_mm.ssd_bwd(dout, dfinal, *args, states, dt_softplus,
                                                 dt_min, dt_max, chunk_size)
        inputs = (x, dt, A, B, C, D, z, dt_bias, initial_states)
        out = []
        for i, (g, t) in enumerate(zip(grads, inputs)):
            if t is None or not ctx.needs_input_grad[i]:
                out.append(None)
                continue
            if i == 5 and t.dim() == 1:  # D given per head: sum its (h, p) gradient
                g = g.sum(-1)
            out.append(g.to(t.dtype))
        return (*out, None, None, None, None)


def ssd_scan_kernel(x: Tensor,
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
                    chunk_size: int = 256):
    """The compiled scan for the device of ``x``; arguments as
    :func:`patchscale_mm.ops.ssd_scan_ref`.

    ``chunk_size`` only sets how often the forward saves the state for the
    backward: the kernels run the exact recurrence, so results do not depend
    on it beyond rounding. Shapes are not validated here;
    :func:`patchscale_mm.ops.ssd_scan` does that before dispatching.
    """
    return SSDScanFn.apply(x, dt, A, B, C, D, z, dt_bias, initial_states, dt_softplus,
                           tuple(dt_limit), return_final_states, chunk_size)
