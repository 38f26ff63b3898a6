"""Analysis behind ``tools/analysis``: the patch-size scaling-law fit and
the analytic cost model (FLOPs, activation memory) of the backbones.

Names resolve lazily, so fitting a scaling law does not import the model zoo
(and the downstream OpenMMLab packages it pulls in).
"""
import importlib

_EXPORTS = {
    'FitResult': 'scaling_law',
    'fit_offset_power_law': 'scaling_law',
    'fit_power_law': 'scaling_law',
    'fit_records': 'scaling_law',
    'load_records': 'scaling_law',
    'plot_scaling_law': 'scaling_law',
    'activation_bytes': 'cost',
    'count_flops_mmengine': 'cost',
    'count_params': 'cost',
    'flops_breakdown': 'cost',
    'forward_flops': 'cost',
    'measure_activation_bytes': 'cost',
    'training_flops': 'cost',
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    module = importlib.import_module(f'.{_EXPORTS[name]}', __name__)
    return getattr(module, name)
