from .backend import resolve_scan_backend
from .blocks import (causal_conv1d_silu, gated_rms_norm, mamba2_conv_scan,
                     mamba2_conv_scan_norm, mamba2_decay_rates, rms_norm, swiglu)
from .dtypes import compute_dtype
from .ssd import ssd_scan
from .ssd_torch import ssd_scan_chunked, ssd_scan_ref

__all__ = [
    'compute_dtype', 'resolve_scan_backend', 'ssd_scan', 'ssd_scan_ref', 'ssd_scan_chunked',
    'rms_norm', 'swiglu', 'causal_conv1d_silu', 'gated_rms_norm', 'mamba2_decay_rates',
    'mamba2_conv_scan', 'mamba2_conv_scan_norm'
]
