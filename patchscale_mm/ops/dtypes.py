"""The dtype rules of the ops: what they compute in and what they return.

Every op computes in :func:`compute_dtype` of its inputs and returns its
result in the dtype of its activation input (``x``; a bf16 activation under
autocast stays bf16), each gradient in the dtype of its input. Layers that
upcast on their own (norms, the sequence-parallel state passing, position
embedding resampling) use the same function.
"""
import torch
from torch import Tensor


def compute_dtype(*tensors: Tensor) -> torch.dtype:
    """float32 for float32/float16/bfloat16 inputs, float64 if any is float64.

    Half precisions accumulate badly over long sequences, so nothing computes
    below float32; float64 stays float64 so that reference comparisons can
    use tight tolerances.
    """
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def scan_compute_dtype(x: Tensor, dt: Tensor, A: Tensor, B: Tensor,
                       C: Tensor) -> torch.dtype:
    """The dtype of every implementation of the scan: :func:`compute_dtype`
    of the tensors the recurrence multiplies. ``D``, ``z``, ``dt_bias`` and
    the initial state are cast to it, the final state is returned in it and
    ``y`` in the dtype of ``x``."""
    return compute_dtype(x, dt, A, B, C)
