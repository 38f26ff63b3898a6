"""Which scan implementation can run here, and which one runs.

The compiled kernels of this repository and mamba_ssm's Triton kernel are
imported softly: :func:`load_kernels` and :func:`load_mamba_ssm` say why one
is missing instead of raising at import time. :func:`resolve_scan_backend`
turns a requested backend (or ``$PATCHSCALE_SCAN_BACKEND``) into the one that
:func:`~patchscale_mm.ops.ssd_scan` runs; the fused block kernels
(:mod:`.fused`) follow the same choice.
"""
import functools
import importlib
import os
import warnings
from typing import Optional, Tuple

import torch
from torch import Tensor

__all__ = ['BACKENDS', 'BACKEND_ENV', 'load_kernels', 'load_mamba_ssm',
           'int32_offset_overflow', 'resolve_scan_backend']

BACKENDS = ('auto', 'torch', 'cpp', 'cuda', 'triton', 'mamba_ssm')
BACKEND_ENV = 'PATCHSCALE_SCAN_BACKEND'


# ---------------------------------------------------------------------------
# This repository's compiled kernels
# ---------------------------------------------------------------------------
def _import_kernels(device_type: str) -> Tuple[bool, Optional[str]]:
    names = {'cpu': ['_C'], 'cuda': ['_C', '_C_cuda']}
    if device_type not in names:
        return False, f'no kernel for device type {device_type!r}'
    for name in names[device_type]:  # _C first: it defines the op schemas
        try:
            importlib.import_module(f'patchscale_mm.ops.{name}')
        except Exception as e:  # ImportError, or an extension built for another torch
            hint = ('built by `pip install --no-build-isolation -e .` where a GPU '
                    'is visible or PATCHSCALE_FORCE_CUDA=1' if name == '_C_cuda' else
                    'built by `pip install --no-build-isolation -e .`')
            msg = f'{type(e).__name__}: {e}'.splitlines()[0]
            return False, f'patchscale_mm.ops.{name} is not available ({msg}); it is {hint}'
    return True, None


# Filled at import, so that torch.compile, tracing load_kernels, only reads a
# dict (it does not trace imports).
_STATUS = {device_type: _import_kernels(device_type) for device_type in ('cpu', 'cuda')}


def load_kernels(device_type: str) -> Tuple[bool, Optional[str]]:
    """Whether the compiled kernels for ``'cpu'`` or ``'cuda'`` are usable.

    ``patchscale_mm.ops._C`` (C++, built by ``pip install -e .`` on any
    machine) defines the ops ``torch.ops.patchscale_mm.*`` and their CPU
    implementation; ``patchscale_mm.ops._C_cuda`` (built only where CUDA is
    available) adds the CUDA implementation of the scan.

    Returns:
        ``(True, None)`` when the ops are usable on that device, else
        ``(False, reason)`` with a one-line reason.
    """
    status = _STATUS.get(device_type)
    if status is None:
        status = _STATUS[device_type] = _import_kernels(device_type)
    return status


# ---------------------------------------------------------------------------
# mamba_ssm
# ---------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def load_mamba_ssm():
    """mamba_ssm's ``mamba_chunk_scan_combined``, which takes the arguments
    of :func:`~patchscale_mm.ops.ssd_scan_chunked`.

    Returns:
        ``(function, None)``, or ``(None, reason)`` with a one-line reason.
    """
    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    except Exception as e:  # ImportError, but also broken Triton/CUDA builds
        return None, f'{type(e).__name__}: {e}'.splitlines()[0]
    return mamba_chunk_scan_combined, None


# mamba_ssm's Triton SSD kernels compute element offsets in 32 bits
# (state-spaces/mamba#1015): past 2**31 elements they crash or, worse, write
# wrong values without an error.
INT32_OFFSET_LIMIT = 2**31


def int32_offset_overflow(*tensors: Optional[Tensor]) -> Optional[str]:
    """Why 32-bit element offsets cannot address one of ``tensors`` (x, dt,
    B, C, z, initial_states: the first whose batch x per-sample stride
    reaches 2**31 elements, e.g. ``dt`` as a view of Adventurer-B/1's fused
    projection from batch 14), or None."""
    for name, t in zip(('x', 'dt', 'B', 'C', 'z', 'initial_states'), tensors):
        if t is not None and t.dim() and t.shape[0] * t.stride(0) >= INT32_OFFSET_LIMIT:
            return (f'{name} spans {t.shape[0] * t.stride(0):,} elements (batch '
                    f'{t.shape[0]} x stride {t.stride(0):,}), past the 2**31 that '
                    'its 32-bit offsets address')
    return None


# ---------------------------------------------------------------------------
# The choice
# ---------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _warn_fallback(device_type: str, reason: str):
    """Warns once per device type that 'auto' fell back to the torch scan."""
    warnings.warn(f'ssd_scan: no compiled scan kernel for {device_type} tensors, '
                  f'using the (slower) PyTorch chunked scan: {reason}', stacklevel=4)


@functools.lru_cache(maxsize=None)
def _warn_int32(reason: str):
    warnings.warn(f"ssd_scan: 'auto' uses this repository's CUDA kernel, not "
                  f"mamba_ssm's: {reason}", stacklevel=4)


def resolve_scan_backend(backend: Optional[str], x: Tensor,
                         inputs: Tuple[Optional[Tensor], ...] = ()) -> str:
    """The scan implementation that runs for ``x``: ``'torch'``, ``'cpp'``,
    ``'cuda'``, ``'triton'`` or ``'mamba_ssm'``.

    ``None`` reads ``$PATCHSCALE_SCAN_BACKEND`` (``'auto'`` when unset).
    ``'auto'`` picks, in this order:

    1. ``'torch'`` for tensors on a device other than CPU and CUDA;
    2. on CUDA, ``'mamba_ssm'`` when it imports, unless ``x`` is float64 (it
       multiplies fp32 in TF32; fp64 asks for accuracy) or one of ``inputs``
       (x, dt, B, C, z, initial_states) is too large for its 32-bit offsets
       (:func:`int32_offset_overflow`; warns once). It comes first because
       its backward is much faster (19x forward+backward at 50,176 tokens on
       an H200, docs/benchmarks.md);
    3. this repository's kernel for the device when built: ``'cpp'`` on CPU,
       ``'cuda'`` on CUDA;
    4. else ``'torch'``, with a warning once per device type.

    ``'triton'`` (this repository's block-product kernels in Triton, CUDA
    tensors, fp32) runs only when named, until its speed is measured against
    the others.

    A named backend is returned as is after checking that it can run.

    Raises:
        ValueError: For an unknown name.
        RuntimeError: If a named backend is not built or installed, or does
            not match the device of ``x``.
    """
    name = backend if backend is not None else os.environ.get(BACKEND_ENV) or 'auto'
    if name not in BACKENDS:
        raise ValueError(f'ssd_scan: unknown backend {name!r}; valid backends '
                         f'are None, {", ".join(map(repr, BACKENDS))}')
    if name == 'auto':
        if x.device.type not in ('cpu', 'cuda'):
            return 'torch'
        if x.is_cuda and x.dtype != torch.float64 and load_mamba_ssm()[0] is not None:
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
    if name == 'triton':
        from .ssd_triton import triton_available
        ok, reason = triton_available()
        if not ok:
            raise RuntimeError(f"ssd_scan: backend 'triton' requested but Triton is not "
                               f"available ({reason})")
        if not x.is_cuda:
            raise RuntimeError("ssd_scan: backend 'triton' needs CUDA tensors, "
                               f"got device {x.device}; use backend='auto'")
    if name == 'mamba_ssm':
        fn, reason = load_mamba_ssm()
        if fn is None:
            raise RuntimeError(
                "ssd_scan: backend 'mamba_ssm' requested but "
                f'mamba_ssm.ops.triton.ssd_combined could not be imported ({reason}); '
                "install mamba-ssm or use backend='torch'")
        if not x.is_cuda:
            raise RuntimeError("ssd_scan: backend 'mamba_ssm' needs CUDA tensors, "
                               f"got device {x.device}; use backend='torch'")
    return name
