"""The package's own registries, children of MMEngine's root registries.

Being children of the *root* (not of mmpretrain's, mmseg's or mmdet's) is
what lets one class serve all three: any downstream registry resolves
``'patchscale_mm.Adventurer'`` by walking up to the root and down to this
scope. ``locations`` makes the scope import its modules on first lookup.
"""
from mmengine.registry import DATA_SAMPLERS as MMENGINE_DATA_SAMPLERS
from mmengine.registry import FUNCTIONS as MMENGINE_FUNCTIONS
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import METRICS as MMENGINE_METRICS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import TRANSFORMS as MMENGINE_TRANSFORMS
from mmengine.registry import Registry

MODELS = Registry(
    'model',
    parent=MMENGINE_MODELS,
    scope='patchscale_mm',
    locations=['patchscale_mm.models'])

HOOKS = Registry(
    'hook',
    parent=MMENGINE_HOOKS,
    scope='patchscale_mm',
    locations=['patchscale_mm.engine'])

METRICS = Registry(
    'metric',
    parent=MMENGINE_METRICS,
    scope='patchscale_mm',
    locations=['patchscale_mm.evaluation'])

TRANSFORMS = Registry(
    'transform',
    parent=MMENGINE_TRANSFORMS,
    scope='patchscale_mm',
    locations=['patchscale_mm.datasets.transforms'])

DATA_SAMPLERS = Registry(
    'data sampler',
    parent=MMENGINE_DATA_SAMPLERS,
    scope='patchscale_mm',
    locations=['patchscale_mm.parallel.data'])

FUNCTIONS = Registry(
    'function',
    parent=MMENGINE_FUNCTIONS,
    scope='patchscale_mm',
    locations=['patchscale_mm.parallel.data'])
