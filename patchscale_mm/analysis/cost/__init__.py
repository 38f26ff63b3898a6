"""Training cost of PatchViT and Adventurer at any patch size, one idea per
module:

* :mod:`.shapes`: widths, token counts, the backbone and its parameters;
* :mod:`.flops`: analytic forward and training FLOPs per image;
* :mod:`.memory`: analytic activation and training memory, the one memory
  model behind the pre-flight guard, ``tools/analysis/estimate_cost.py``
  and the benchmarks;
* :mod:`.measure`: measurements on this machine (saved-tensor bytes, step
  time, the active scan, available memory);
* :mod:`.mmengine_flops`: mmengine ``FlopAnalyzer`` handles to cross-check
  the FLOPs;
* :mod:`.paper`: the paper's Table 6.
"""
from .flops import (FLOP_SCANS, SCAN_FLOP_CONVENTION, flops_breakdown,
                    forward_flops, ssd_scan_flops, training_flops)
from .measure import (active_scan, autocast, available_memory,
                      measure_activation_bytes, measure_step_time,
                      saved_tensor_bytes)
from .memory import (MEMORY_SCANS, MIB, PRECISIONS, SEQUENCE_PARALLEL_SIZES,
                     STATE_BYTES_PER_PARAM, MemoryEstimate, activation_bytes,
                     estimate_memory, sequence_parallel_activation_bytes,
                     training_activation_bytes, training_memory_bytes)
from .mmengine_flops import (SCAN_OPS, count_flops_mmengine, sdpa_flop_jit,
                             ssd_scan_flop_jit)
from .paper import PAPER_TABLE6
from .shapes import (build_backbone, count_backbone_params, count_params,
                     model_dims, num_patches)

__all__ = [
    'FLOP_SCANS', 'MEMORY_SCANS', 'MIB', 'PAPER_TABLE6',
    'PRECISIONS', 'SCAN_FLOP_CONVENTION', 'SCAN_OPS',
    'SEQUENCE_PARALLEL_SIZES', 'STATE_BYTES_PER_PARAM', 'MemoryEstimate',
    'activation_bytes', 'active_scan', 'autocast', 'available_memory',
    'build_backbone', 'count_backbone_params', 'count_flops_mmengine',
    'count_params', 'estimate_memory', 'flops_breakdown', 'forward_flops',
    'measure_activation_bytes', 'measure_step_time', 'model_dims',
    'num_patches', 'saved_tensor_bytes', 'sdpa_flop_jit',
    'sequence_parallel_activation_bytes', 'ssd_scan_flop_jit',
    'ssd_scan_flops', 'training_activation_bytes', 'training_flops',
    'training_memory_bytes'
]
