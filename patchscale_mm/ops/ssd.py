"""Mamba-2 selective state-space scan ("SSD"): the entry point models call.

Semantics follow ``mamba_ssm.ops.triton.ssd_combined.mamba_chunk_scan_combined``
(scalar decay per head). For every batch ``b``, token ``t`` and head ``h``::

    dt_t = dt_limit.clamp(softplus?(dt_t + dt_bias))
    s_t  = exp(dt_t * A_h) * s_{t-1} + dt_t * outer(x_t, B_t)     # (headdim, d_state)
    y_t  = (s_t @ C_t + D_h * x_t) * silu(z_t)

where head ``h`` reads group ``h // (heads // groups)`` of ``B`` and ``C``.

:func:`ssd_scan` validates shapes and runs one of five implementations with
the signature of :func:`ssd_scan_chunked`:

* ``'torch'``: :func:`ssd_scan_chunked` (:mod:`.ssd_torch`, beside the
  token-loop oracle :func:`ssd_scan_ref`);
* ``'cpp'`` / ``'cuda'``: this repository's compiled kernel for CPU / CUDA
  tensors (:mod:`.ssd_kernel`);
* ``'triton'``: this repository's block-product form in Triton for CUDA
  tensors (:mod:`.ssd_triton`; 64-bit offsets, fp32 products);
* ``'mamba_ssm'``: mamba_ssm's Triton kernel (CUDA).

``backend=None`` reads ``$PATCHSCALE_SCAN_BACKEND``, else ``'auto'``.
``'auto'`` (:func:`~.backend.resolve_scan_backend`) runs ``'torch'`` for
tensors on a device other than CPU and CUDA; on CUDA, mamba_ssm when it is
installed, unless ``x`` is float64 or an input is past its 32-bit offsets
(then it warns once); otherwise this repository's kernel for the device
(``'cpp'`` on CPU, ``'cuda'`` on CUDA) when it is built, else ``'torch'``
with a warning once per device type.
"""
from typing import Optional, Sequence, Tuple

from torch import Tensor

from .backend import load_mamba_ssm, resolve_scan_backend
from .ssd_kernel import ssd_scan_kernel
from .ssd_torch import NO_DT_LIMIT, ScanOutput, ssd_scan_chunked

__all__ = ['ssd_scan']


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
             dt_limit: Sequence[float] = NO_DT_LIMIT,
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
            on CUDA when installed, else this repository's; see the module
            docstring), ``'cpp'`` (the fused C++ CPU kernel),
            ``'cuda'`` (the fused CUDA kernel), ``'triton'`` (the block
            products in Triton, fp32 CUDA tensors), ``'torch'``
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
    name = resolve_scan_backend(backend, x, (x, dt, B, C, z, initial_states))
    if name == 'mamba_ssm':
        return load_mamba_ssm()[0](x, dt, A, B, C, **kwargs)
    if name == 'triton':
        from .ssd_triton import ssd_scan_triton
        return ssd_scan_triton(x, dt, A, B, C, **kwargs)
    if name in ('cpp', 'cuda'):
        return ssd_scan_kernel(x, dt, A, B, C, **kwargs)
    return ssd_scan_chunked(x, dt, A, B, C, **kwargs)
