"""mmengine ``FlopAnalyzer`` handles for what its jit counter cannot see
(``scaled_dot_product_attention``, compiled scans), and a count in the
analytic model's units to cross-check it against."""
import math
from typing import Callable, Dict, List, Optional

import torch

from patchscale_mm.models.layers import Mamba2Mixer
from .flops import ssd_scan_flops

# How the jit trace shows a compiled scan (the autograd Function around this
# repository's kernel, or the op itself), and the work it does. The counter
# cannot look inside; these are counted with the analytic model.
SCAN_OPS = {
    'prim::PythonOp.SSDScanFn': 'recurrence',
    'patchscale_mm::ssd_fwd': 'recurrence',
}


def _shape(value) -> Optional[List[int]]:
    from mmengine.analysis.jit_handles import get_shape
    return get_shape(value)


def sdpa_flop_jit(inputs: list, outputs: list) -> int:
    """mmengine handle for ``aten::scaled_dot_product_attention``.

    Counts MACs (mmengine's unit): ``QK^T`` and ``AV`` over the full
    ``Nq x Nk`` matrix, ``B * heads * Nq * Nk * (d_qk + d_v)``.
    """
    q, k, v = (_shape(x) for x in inputs[:3])
    *batch, nq, dqk = q
    return math.prod(batch) * nq * k[-2] * (dqk + v[-1])


def ssd_scan_flop_jit(scan: str = 'recurrence',
                      chunk_size: int = 256) -> Callable:
    """mmengine handle for a compiled SSD scan whose first inputs follow
    :func:`patchscale_mm.ops.ssd_scan` (``x, dt, A, B, C, ...``); counts MACs
    with :func:`ssd_scan_flops` in the given convention."""

    def handle(inputs: list, outputs: list) -> int:
        b, l, h, p = _shape(inputs[0])
        g, n = _shape(inputs[3])[-2:]
        return b * ssd_scan_flops(l, h, p, n, g, chunk_size, scan) // 2

    return handle


_NORM_OPS = ('aten::layer_norm', 'aten::group_norm', 'aten::batch_norm',
             'aten::instance_norm')


def _zero_flop_jit(inputs: list, outputs: list) -> int:
    return 0


def count_flops_mmengine(model: torch.nn.Module,
                         inputs: torch.Tensor,
                         scan_ops: Optional[Dict[str, str]] = None) -> int:
    """Forward FLOPs (multiply-add = 2) from mmengine's ``FlopAnalyzer``.

    mmengine counts a multiply-add as one "flop", so its total is doubled.
    It has no handle for ``scaled_dot_product_attention`` (it would count
    ViT's attention as zero), so :func:`sdpa_flop_jit` is registered; the
    compiled scan ops of ``scan_ops`` (op name -> FLOP convention, defaults
    to :data:`SCAN_OPS`) get :func:`ssd_scan_flop_jit`. Norm handles are
    removed because the analytic model leaves element-wise work out.
    """
    from mmengine.analysis import FlopAnalyzer
    chunk_sizes = {
        m.chunk_size
        for m in model.modules() if isinstance(m, Mamba2Mixer)
    }
    chunk_size = chunk_sizes.pop() if len(chunk_sizes) == 1 else 256
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            analyzer = FlopAnalyzer(model, inputs)
            analyzer.set_op_handle('aten::scaled_dot_product_attention',
                                   sdpa_flop_jit)
            # A None handle only silences ops without one; to drop mmengine's
            # default norm counts, replace them with zero.
            for op in _NORM_OPS:
                analyzer.set_op_handle(op, _zero_flop_jit)
            for op, scan in (SCAN_OPS if scan_ops is None else
                             scan_ops).items():
                analyzer.set_op_handle(op, ssd_scan_flop_jit(scan, chunk_size))
            analyzer.unsupported_ops_warnings(False)
            analyzer.uncalled_modules_warnings(False)
            macs = analyzer.total()
    finally:
        model.train(was_training)
    return int(2 * macs)
