"""Pre-flight checks: find an impossible configuration before any model or
data is built, rather than at the first iteration (or the first OOM) of a
run that waited hours for its GPUs.

:func:`config_problems` reads the config only (registries are consulted for
classes and signatures, nothing is instantiated) and returns one line per
problem; :func:`memory_problem` compares the analytic training-memory model
of :mod:`patchscale_mm.analysis.cost_model` with the device's memory.
``tools/train.py`` runs both and ``tools/test.py`` the first; they stop
with the lines before building anything.
"""
import ast
import difflib
import importlib
import inspect
import math
import os
import os.path as osp
import re
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Set, Tuple

import torch
from mmengine.config import Config

from patchscale_mm.engine.checkpoint_io import (CheckpointError,
                                                check_checkpoint_file)

# Keys of a model config that hold sub-models built from the same registry.
COMPONENTS = ('backbone', 'neck', 'head', 'decode_head', 'auxiliary_head',
              'rpn_head', 'roi_head', 'data_preprocessor')
# Heads that read the backbone (or neck) features and name their width.
FEATURE_HEADS = ('head', 'decode_head', 'auxiliary_head', 'rpn_head')
# Top-level keys read by MMEngine / OpenMMLab beyond the Runner's arguments.
EXTRA_KEYS = frozenset({
    'activation_checkpointing', 'compile', 'custom_imports',
    'efficient_conv_bn_eval', 'find_unused_parameters', 'gpu_ids',
    'launcher', 'model_wrapper_cfg', 'runner_type', 'sequence_parallel',
    'strategy', 'sync_bn', 'tta_model', 'tta_pipeline', 'work_dir'
})
GIB = 2**30
# Sequence-parallel sizes the memory guard considers in its advice.
SEQUENCE_PARALLEL_SIZES = (1, 2, 4, 8, 16, 32, 64)


def _dotted(path: str, key) -> str:
    return f'{path}.{key}' if path else str(key)


def _models_registry(cfg: Config):
    """The MODELS registry of the config's default scope."""
    from mmengine.registry import MODELS, init_default_scope
    scope = cfg.get('default_scope')
    if not scope or scope == 'mmengine':
        return MODELS
    init_default_scope(scope)
    try:
        return importlib.import_module(f'{scope}.registry').MODELS
    except ImportError:
        return MODELS


def _get_class(registry, type_):
    if not isinstance(type_, str):
        return type_
    try:
        return registry.get(type_)
    except (KeyError, ImportError):
        return None


# ---------------------------------------------------------------------------
# Top-level keys that nothing reads
# ---------------------------------------------------------------------------
def known_top_level_keys() -> Set[str]:
    """The Runner's and FlexibleRunner's arguments, and :data:`EXTRA_KEYS`."""
    from mmengine.runner import FlexibleRunner, Runner
    keys = set(EXTRA_KEYS)
    for runner in (Runner, FlexibleRunner):
        keys.update(inspect.signature(runner.__init__).parameters)
    return keys - {'self', 'cfg'}


@dataclass
class _Source:
    """What one config file assigns and reads at top level."""
    path: str
    assigned: Set[str]
    loaded: Set[str]
    base_refs: Set[str]


def _parse_source(path: str) -> Optional[_Source]:
    try:
        with open(path, encoding='utf-8') as f:
            text = f.read()
        tree = ast.parse(text)
    except (OSError, SyntaxError, ValueError):
        return None
    assigned = set()
    for node in tree.body:
        targets = (node.targets if isinstance(node, ast.Assign) else
                   [node.target] if isinstance(
                       node, (ast.AugAssign, ast.AnnAssign)) else [])
        for target in targets:  # `a = ...` and `a, b = ...`
            names = target.elts if isinstance(target, ast.Tuple) else [target]
            assigned.update(n.id for n in names if isinstance(n, ast.Name))
    loaded = {
        n.id
        for n in ast.walk(tree)
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)
    }
    # `{{_base_.x}}` substitutions and `_base_.x` references.
    base_refs = set(re.findall(r'_base_\.(\w+)', text))
    return _Source(path, assigned, loaded, base_refs)


def _config_sources(filename: str) -> Iterator[Optional[_Source]]:
    """The config file and its ``_base_`` files, each before its own bases
    (so the first file assigning a key is the one whose value wins)."""
    yield _parse_source(filename)
    try:
        bases = Config._get_base_files(filename)
    except Exception:  # an unusual config format: check nothing there
        yield None
        return
    for base in bases:
        try:
            path, _ = Config._get_cfg_path(base, filename)
        except Exception:
            yield None
            continue
        yield from _config_sources(path)


def _is_read(key: str, sources: List[Optional[_Source]]) -> bool:
    if any(s is None for s in sources):
        return True  # cannot tell
    if any(key in s.base_refs for s in sources):
        return True
    definer = next((s for s in sources if key in s.assigned), None)
    return definer is not None and key in definer.loaded


def unread_top_level_keys(cfg: Config,
                          cli_keys: Sequence[str] = ()) -> List[str]:
    """Top-level keys that neither MMEngine nor the config itself reads:
    typos (``train_dataloder``), overrides of a base file's variable (a
    ``data_root = ...`` that the base's dataloaders never see, because each
    base is evaluated on its own), and such variables set by
    ``--cfg-options`` (``cli_keys``, applied after all files are
    evaluated)."""
    known = known_top_level_keys()
    cli = {key.split('.')[0] for key in cli_keys} - known
    sources = (list(_config_sources(cfg.filename))
               if cfg.filename and osp.isfile(cfg.filename) else [None])
    problems = []
    for key in cfg.keys():
        if key.startswith('_') or key in known or (
                key not in cli and _is_read(key, sources)):
            continue
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.75)
        hint = (f"did you mean '{close[0]}'?" if close else
                'set the entries that use it instead (config files are '
                'evaluated on their own, before --cfg-options)')
        where = '--cfg-options ' if key in cli else ''
        problems.append(f"{where}top-level key '{key}' is not read by "
                        f'MMEngine nor by the config; {hint}')
    return problems


# ---------------------------------------------------------------------------
# Model keys the constructors do not accept
# ---------------------------------------------------------------------------
def accepted_arguments(cls) -> Optional[Set[str]]:
    """Keyword arguments a class (or builder function) accepts, following
    ``**kwargs`` up the MRO; None when it accepts anything."""
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD,
             inspect.Parameter.KEYWORD_ONLY)
    if not inspect.isclass(cls):
        params = inspect.signature(cls).parameters.values()
        if any(p.kind is p.VAR_KEYWORD for p in params):
            return None
        return {p.name for p in params if p.kind in kinds}
    names = set()
    for klass in cls.__mro__:
        # nn.Module rejects the keyword arguments that reach it.
        if klass in (object, torch.nn.Module):
            return names
        init = klass.__dict__.get('__init__')
        if init is None:
            continue
        try:
            params = list(inspect.signature(init).parameters.values())
        except (TypeError, ValueError):
            return None
        names.update(p.name for p in params[1:] if p.kind in kinds)
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            return names
    return names


def _model_components(cfg: Config) -> Iterator[Tuple[str, dict]]:
    model = cfg.get('model')
    if not isinstance(model, dict):
        return
    yield 'model', model
    for key in COMPONENTS:
        value = model.get(key)
        items = value if isinstance(value, (list, tuple)) else [value]
        for i, item in enumerate(items):
            if isinstance(item, dict) and 'type' in item:
                suffix = f'[{i}]' if isinstance(value, (list, tuple)) else ''
                yield f'model.{key}{suffix}', item


def unknown_model_keys(cfg: Config, registry) -> List[str]:
    """Keys of the model and its direct components that their constructors
    do not accept (checked against the signatures, nothing is built)."""
    problems = []
    for path, node in _model_components(cfg):
        cls = _get_class(registry, node['type'])
        if cls is None:
            problems.append(f"{path}.type '{node['type']}' is not registered "
                            f"in scope '{cfg.get('default_scope')}'; "
                            'check the name and custom_imports')
            continue
        accepted = accepted_arguments(cls)
        if accepted is None:
            continue
        for key in node:
            if key in ('type', '_scope_') or key in accepted:
                continue
            close = difflib.get_close_matches(key, accepted, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ''
            problems.append(
                f"{path}.{key}: {getattr(cls, '__name__', cls)} takes no "
                f"argument '{key}'; {hint}it accepts "
                f'{", ".join(sorted(accepted))}')
    return problems


# ---------------------------------------------------------------------------
# Backbone geometry and widths
# ---------------------------------------------------------------------------
@dataclass
class BackboneInfo:
    """A PatchViT / Adventurer config resolved without building it."""
    cls: type
    arch: dict
    arch_name: object
    img_size: Tuple[int, int]
    patch_size: Tuple[int, int]
    cfg: dict

    @property
    def family(self) -> str:
        from patchscale_mm.models import PatchViT
        return 'deit' if issubclass(self.cls, PatchViT) else 'adventurer'

    def label(self) -> str:
        arch = (f"arch '{self.arch_name}'" if isinstance(self.arch_name, str)
                else f"embed_dims {self.arch['embed_dims']}, "
                f"{self.arch['num_layers']} layers")
        p = self.patch_size
        patch = p[0] if p[0] == p[1] else f'{p[0]}x{p[1]}'
        return f'{self.cls.__name__} ({arch}) at patch {patch}'


def _default(cls, name: str):
    for klass in cls.__mro__:
        init = klass.__dict__.get('__init__')
        if init is None:
            continue
        param = inspect.signature(init).parameters.get(name)
        if param is not None and param.default is not param.empty:
            return param.default
    return None


def resolve_backbone(cfg: Config,
                     registry) -> Tuple[Optional[BackboneInfo], List[str]]:
    """The backbone's arch and geometry if it is one of ours, and the
    problems found resolving them (the constructors' own one-line errors)."""
    from patchscale_mm.models.backbones.base import (PlainBackbone,
                                                     resolve_arch)
    from patchscale_mm.models.layers.patch_embed import check_patch_grid
    backbone = (cfg.get('model') or {}).get('backbone')
    if not isinstance(backbone, dict):
        return None, []
    cls = _get_class(registry, backbone.get('type'))
    if not (inspect.isclass(cls) and issubclass(cls, PlainBackbone)):
        return None, []
    get = lambda name: backbone.get(name, _default(cls, name))  # noqa: E731
    problems = []
    try:
        arch = resolve_arch(get('arch'), cls.arch_zoo, cls.family)
    except (ValueError, TypeError) as e:
        problems.append(f'model.backbone.arch: {e}')
        arch = None
    try:
        check_patch_grid(get('img_size'), get('patch_size'),
                         'model.backbone.img_size')
    except (ValueError, TypeError) as e:
        message = str(e)  # names img_size already, not always patch_size
        problems.append(message if message.startswith('model.') else
                        f'model.backbone.{message}')
    if problems:
        return None, problems
    from patchscale_mm.models.layers import to_2tuple
    return BackboneInfo(cls, arch, get('arch'), to_2tuple(get('img_size')),
                        to_2tuple(get('patch_size')), backbone), []


def _preprocessors(cfg: Config) -> Iterator[Tuple[str, dict]]:
    for path, node in (('model.data_preprocessor',
                        (cfg.get('model') or {}).get('data_preprocessor')),
                       ('data_preprocessor', cfg.get('data_preprocessor'))):
        if isinstance(node, dict):
            yield path, node


def input_problems(cfg: Config, info: BackboneInfo) -> List[str]:
    """Training inputs that would not split into whole patches, and a
    feature pyramid that expects another stride."""
    from patchscale_mm.models.layers.patch_embed import check_patch_grid
    ph, pw = info.patch_size
    problems = []
    for path, node in _preprocessors(cfg):
        if node.get('size'):
            try:
                check_patch_grid(tuple(node['size']), info.patch_size,
                                 f'{path}.size')
            except (ValueError, TypeError) as e:
                problems.append(str(e))
        divisor = node.get('pad_size_divisor')
        if divisor and (divisor % ph or divisor % pw):
            problems.append(
                f'{path}.pad_size_divisor={divisor} is not a multiple of the '
                f'patch size {ph}: padded images would not split into whole '
                f'patches; use {math.lcm(divisor, ph, pw)}')
    neck = (cfg.get('model') or {}).get('neck')
    if isinstance(neck, dict) and 'in_stride' in neck and \
            neck['in_stride'] != ph:
        problems.append(f"model.neck.in_stride={neck['in_stride']} does not "
                        f'match the backbone, whose feature map has stride '
                        f'{ph} (its patch size); set it to {ph}')
    if isinstance(neck, dict) and str(neck.get('type')).endswith(
            'MultiLevelNeck') and neck.get('scales') is not None:
        # UperNet on a plain backbone: rescale the stride-p maps to strides
        # 4, 8, 16 and 32.
        expected = [ph / stride for stride in (4, 8, 16, 32)]
        if [float(s) for s in neck['scales']] != expected:
            problems.append(
                f"model.neck.scales={list(neck['scales'])} do not turn the "
                f'backbone\'s stride-{ph} maps (its patch size) into strides '
                f'4, 8, 16, 32; set them to {expected}')
    return problems


def _widths(value) -> List[int]:
    if isinstance(value, int):
        return [value]
    if isinstance(value, (list, tuple)):
        return [v for v in value if isinstance(v, int)]
    return []


def channel_problems(cfg: Config, info: BackboneInfo) -> List[str]:
    """Neck and head input widths that differ from what feeds them."""
    model = cfg.get('model') or {}
    width = info.arch['embed_dims']
    source = f"the backbone's width {width} ({info.label()})"
    problems = []
    neck = model.get('neck')
    if isinstance(neck, dict):
        if any(w != width for w in _widths(neck.get('in_channels'))):
            problems.append(f"model.neck.in_channels={neck['in_channels']} "
                            f'does not match {source}; set it to {width}')
        if isinstance(neck.get('out_channels'), int):
            width = neck['out_channels']
            source = f'model.neck.out_channels={width}'
    for key in FEATURE_HEADS:
        heads = model.get(key)
        heads = heads if isinstance(heads, (list, tuple)) else [heads]
        for head in heads:
            if not isinstance(head, dict):
                continue
            if any(w != width for w in _widths(head.get('in_channels'))):
                problems.append(
                    f"model.{key}.in_channels={head['in_channels']} does not "
                    f'match {source}; set it to {width}')
    return problems


# ---------------------------------------------------------------------------
# Data and checkpoints
# ---------------------------------------------------------------------------
def _datasets(node, path: str) -> Iterator[Tuple[str, dict]]:
    """A dataset config and the ones wrapped in it (Repeat/Concat...)."""
    if isinstance(node, dict):
        yield path, node
        yield from _datasets(node.get('dataset'), f'{path}.dataset')
        for i, child in enumerate(node.get('datasets') or []):
            yield from _datasets(child, f'{path}.datasets[{i}]')


def _is_local(path) -> bool:
    return isinstance(path, str) and '://' not in path


def data_problems(cfg: Config, mode: str) -> List[str]:
    """Missing data roots of the loaders (and evaluator annotation files)
    the run will use."""
    if mode == 'train':
        names = [('train_dataloader', None)]
        if cfg.get('val_cfg') is not None:
            names.append(('val_dataloader', 'val_evaluator'))
    else:
        names = [('test_dataloader', 'test_evaluator')]
    problems = []
    for loader, evaluator in names:
        node = cfg.get(loader)
        if not isinstance(node, dict):
            continue
        for path, dataset in _datasets(node.get('dataset'),
                                       f'{loader}.dataset'):
            root = dataset.get('data_root')
            if _is_local(root) and root and not osp.isdir(root):
                problems.append(
                    f"{path}.data_root '{root}' does not exist; put the data "
                    f'there or pass --cfg-options {path}.data_root=DIR')
        evaluators = cfg.get(evaluator) if evaluator else None
        for i, ev in enumerate(evaluators if isinstance(
                evaluators, (list, tuple)) else [evaluators]):
            ann = ev.get('ann_file') if isinstance(ev, dict) else None
            if _is_local(ann) and ann and not osp.isfile(ann):
                where = evaluator if isinstance(ev, dict) and not isinstance(
                    evaluators, (list, tuple)) else f'{evaluator}[{i}]'
                problems.append(f"{where}.ann_file '{ann}' does not exist")
    return problems


def _pretrained_checkpoints(node, path: str) -> Iterator[Tuple[str, str]]:
    if isinstance(node, dict):
        if node.get('type') == 'Pretrained' and node.get('checkpoint'):
            yield f'{path}.checkpoint', node['checkpoint']
        for key, value in node.items():
            yield from _pretrained_checkpoints(value, _dotted(path, key))
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            yield from _pretrained_checkpoints(value, f'{path}[{i}]')


def checkpoint_problems(cfg: Config, mode: str = 'train') -> List[str]:
    """``load_from`` and, for training (where weights are initialised),
    every ``init_cfg=dict(type='Pretrained')`` file: complete, and loadable
    with weights-only unpickling."""
    files = (list(_pretrained_checkpoints(cfg.get('model'), 'model'))
             if mode == 'train' else [])
    if cfg.get('load_from'):
        files.append(('load_from', cfg.load_from))
    problems = []
    for path, file in files:
        if _is_local(file):
            try:
                check_checkpoint_file(file)
            except CheckpointError as e:
                # Multi-stage configs load the previous stage's last epoch.
                hint = (' (train the stage that writes it first, or pass '
                        f'--cfg-options {path}=FILE)'
                        if not osp.exists(file) else '')
                problems.append(f'{path}: {e}{hint}')
    return problems


def config_problems(cfg: Config,
                    mode: str = 'train',
                    cli_keys: Sequence[str] = ()) -> List[str]:
    """Every problem found in ``cfg``, one line each.

    Args:
        cfg (Config): The config, with command-line overrides merged.
        mode (str): ``'train'`` (train and val data) or ``'test'``.
        cli_keys (Sequence[str]): The keys given to ``--cfg-options``.
    """
    registry = _models_registry(cfg)
    problems = unread_top_level_keys(cfg, cli_keys) + unknown_model_keys(
        cfg, registry)
    info, backbone_problems = resolve_backbone(cfg, registry)
    problems += backbone_problems
    if info is not None:
        problems += input_problems(cfg, info) + channel_problems(cfg, info)
    if mode == 'train':
        from patchscale_mm.parallel.setup import sequence_parallel_problems
        problems += sequence_parallel_problems(cfg)
    return problems + data_problems(cfg, mode) + checkpoint_problems(
        cfg, mode)


# ---------------------------------------------------------------------------
# Memory guard
# ---------------------------------------------------------------------------
@dataclass
class MemoryEstimate:
    """Peak training memory of the backbone, from the analytic model."""
    info: BackboneInfo
    input_size: Tuple[int, int]
    tokens: int
    batch: int
    precision: str
    with_cp: bool
    # (precision, with_cp, sequence-parallel size) -> bytes per image and rank
    per_image: Dict[Tuple[str, bool, int], int]
    state_bytes: int
    sequence_parallel: int = 1

    def total(self,
              batch: Optional[int] = None,
              precision: Optional[str] = None,
              with_cp: Optional[bool] = None,
              sequence_parallel: Optional[int] = None) -> int:
        key = (precision or self.precision,
               self.with_cp if with_cp is None else with_cp,
               sequence_parallel or self.sequence_parallel)
        batch = self.batch if batch is None else batch
        return batch * self.per_image[key] + self.state_bytes

    def largest_batch(self, available: int) -> int:
        per_image = self.per_image[(self.precision, self.with_cp,
                                    self.sequence_parallel)]
        return max(0, (available - self.state_bytes) // per_image)


def train_input_size(cfg: Config, info: BackboneInfo) -> Tuple[int, int]:
    """The training input: the preprocessor's fixed size (segmentation),
    else the last crop/resize of the train pipeline, else the backbone's
    ``img_size``."""
    for _, node in _preprocessors(cfg):
        if node.get('size'):
            return tuple(node['size'])
    loader = cfg.get('train_dataloader') or {}
    pipelines = [d.get('pipeline') for _, d in _datasets(
        loader.get('dataset'), '')]
    for pipeline in filter(None, pipelines):
        for transform in reversed(pipeline):
            for key in ('crop_size', 'scale'):
                size = transform.get(key) if isinstance(transform,
                                                        dict) else None
                if isinstance(size, int):
                    return size, size
                if isinstance(size, (list, tuple)) and len(size) == 2 and \
                        all(isinstance(s, int) for s in size):
                    return tuple(size)
    return info.img_size


def _precision(cfg: Config) -> str:
    wrapper = cfg.get('optim_wrapper') or {}
    return 'amp' if 'Amp' in str(wrapper.get('type', '')) else 'fp32'


def estimate_training_memory(cfg: Config,
                             device: Optional[str] = None
                             ) -> Optional[MemoryEstimate]:
    """Backbone activations of a training batch plus weights, gradients and
    optimizer state; None where the backbone is not PatchViT/Adventurer."""
    registry = _models_registry(cfg)
    info, problems = resolve_backbone(cfg, registry)
    loader = cfg.get('train_dataloader') or {}
    if info is None or problems or not loader.get('batch_size'):
        return None
    from patchscale_mm.analysis import cost_model
    device = device or ('cuda' if torch.cuda.is_available() else 'cpu')
    scan = (cost_model.active_scan(device)
            if info.family == 'adventurer' else 'kernel')
    h, w = train_input_size(cfg, info)
    ph, pw = info.patch_size
    tokens = math.ceil(h / ph) * math.ceil(w / pw)
    # The cost model takes square images: the square with as many tokens.
    side = ph * math.ceil(math.sqrt(tokens))
    from patchscale_mm.parallel.setup import sequence_parallel_size
    sequence_parallel = sequence_parallel_size(cfg)
    if not isinstance(sequence_parallel, int) or sequence_parallel < 1:
        return None  # reported by config_problems
    per_image = {(precision, cp, size):
                 cost_model.sequence_parallel_activation_bytes(
                     info.family, info.arch, side, ph, size, precision, scan,
                     cp, info.cfg.get('mixer_cfg'))
                 for precision in ('fp32', 'amp') for cp in (False, True)
                 for size in SEQUENCE_PARALLEL_SIZES + (sequence_parallel, )}
    built = {k: v for k, v in info.cfg.items() if k != 'init_cfg'}
    try:
        with torch.device('meta'):  # no memory, even for Huge at p1
            params = sum(p.numel() for p in registry.build(built).parameters())
    except (TypeError, ValueError):  # reported by config_problems
        return None
    return MemoryEstimate(info, (h, w), tokens, int(loader['batch_size']),
                          _precision(cfg), bool(info.cfg.get('with_cp')),
                          per_image,
                          cost_model.STATE_BYTES_PER_PARAM * params,
                          sequence_parallel)


def _meminfo_available() -> int:
    with open('/proc/meminfo') as f:
        for line in f:
            if line.startswith('MemAvailable:'):
                return int(line.split()[1]) * 1024
    raise OSError('no MemAvailable in /proc/meminfo')


def _cgroup_limit() -> Optional[int]:
    """The memory left under this container's cgroup (v2) limit."""
    try:
        with open('/sys/fs/cgroup/memory.max') as f:
            limit = f.read().strip()
        with open('/sys/fs/cgroup/memory.current') as f:
            used = int(f.read())
    except OSError:
        return None
    return None if limit == 'max' else int(limit) - used


def available_memory() -> Tuple[int, str]:
    """Bytes this process may use for training, and what they are: the
    GPU's memory on CUDA, else the available RAM shared by the processes of
    this node."""
    if torch.cuda.is_available():
        index = int(os.environ.get('LOCAL_RANK', 0))
        props = torch.cuda.get_device_properties(index)
        return props.total_memory, f'memory of GPU {index} ({props.name})'
    available = _meminfo_available()
    limit = _cgroup_limit()
    if limit is not None:
        available = min(available, limit)
    procs = int(os.environ.get('LOCAL_WORLD_SIZE', 1))
    where = 'available RAM' + (f' per process ({procs} on this node)'
                               if procs > 1 else '')
    return available // procs, where


def _gib(n: int) -> str:
    return f'{n / GIB:.1f} GiB' if n >= GIB else f'{n / 2**20:.1f} MiB'


def memory_problem(cfg: Config,
                   available: Optional[int] = None,
                   where: str = 'given memory') -> Optional[str]:
    """One line when the estimated peak training memory exceeds what the
    device has, with the estimate and the fixes; None when it fits or
    cannot be estimated."""
    estimate = estimate_training_memory(cfg)
    if estimate is None:
        return None
    if available is None:
        available, where = available_memory()
    total = estimate.total()
    if total <= available:
        return None
    h, w = estimate.input_size
    fixes = []
    if not estimate.with_cp:
        fixes.append('model.backbone.with_cp=True (about '
                     f'{_gib(estimate.total(with_cp=True))})')
    batch = estimate.largest_batch(available)
    fixes.append(f'train_dataloader.batch_size={batch} (about '
                 f'{_gib(estimate.total(batch=batch))})' if batch else
                 f'a smaller model or larger patches (batch 1 needs '
                 f'{_gib(estimate.total(batch=1))})')
    if estimate.precision == 'fp32':
        fixes.append('--amp for bf16/fp16 activations on CUDA (about '
                     f"{_gib(estimate.total(precision='amp'))})")
    split = next((size for size in SEQUENCE_PARALLEL_SIZES
                  if size > estimate.sequence_parallel and
                  estimate.total(sequence_parallel=size) <= available), None)
    if split:
        fixes.append(f'sequence_parallel.size={split}, the tokens of each '
                     f'image split over {split} processes (about '
                     f'{_gib(estimate.total(sequence_parallel=split))} each)')
    per_image = estimate.per_image[(estimate.precision, estimate.with_cp,
                                    estimate.sequence_parallel)]
    return (f'estimated peak training memory {_gib(total)} exceeds the '
            f'{_gib(available)} {where}: {estimate.info.label()} on {h}x{w} '
            f'inputs ({estimate.tokens:,} tokens) keeps {_gib(per_image)} of '
            f'{estimate.precision} activations per image x batch '
            f'{estimate.batch}, plus {_gib(estimate.state_bytes)} of weights, '
            f'gradients and AdamW state; fixes: {"; ".join(fixes)}; or pass '
            '--skip-memory-check to run anyway')


def format_problems(problems: Sequence[str], config: str) -> str:
    lines = [f'pre-flight check of {config} failed:']
    lines += [f'  - {p}' for p in problems]
    return '\n'.join(lines)
