"""The one rule for the dtype that scans and norms compute in."""
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
