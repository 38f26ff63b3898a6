"""Config keys that nothing reads: top-level keys that neither MMEngine nor
the config files use, and model keys that the constructors do not take.

Generic: any OpenMMLab config, whatever its backbone.
"""
import ast
import difflib
import importlib
import importlib.util
import inspect
import os.path as osp
import re
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence, Set, Tuple

import torch
from mmengine.config import Config

# Keys of a model config that hold sub-models built from the same registry.
COMPONENTS = ('backbone', 'neck', 'head', 'decode_head', 'auxiliary_head',
              'rpn_head', 'roi_head', 'data_preprocessor')
# Top-level keys read by MMEngine / OpenMMLab beyond the Runner's arguments.
EXTRA_KEYS = frozenset({
    'activation_checkpointing', 'compile', 'custom_imports',
    'efficient_conv_bn_eval', 'find_unused_parameters', 'gpu_ids',
    'launcher', 'model_wrapper_cfg', 'runner_type', 'sequence_parallel',
    'strategy', 'sync_bn', 'tta_model', 'tta_pipeline', 'work_dir'
})


def models_registry(cfg: Config):
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


def registered_class(registry, type_):
    """The class (or builder) ``type_`` names, None when it is unknown."""
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
    bases: Optional[List[str]]  # None when not a literal


def _parse_source(path: str) -> Optional[_Source]:
    try:
        with open(path, encoding='utf-8') as f:
            text = f.read()
        tree = ast.parse(text)
    except (OSError, SyntaxError, ValueError):
        return None
    assigned, bases = set(), []
    for node in tree.body:
        targets = (node.targets if isinstance(node, ast.Assign) else
                   [node.target] if isinstance(
                       node, (ast.AugAssign, ast.AnnAssign)) else [])
        for target in targets:  # `a = ...` and `a, b = ...`
            names = target.elts if isinstance(target, ast.Tuple) else [target]
            assigned.update(n.id for n in names if isinstance(n, ast.Name))
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == '_base_'
                for t in node.targets):
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                bases = None
            else:
                bases = list(value) if isinstance(value, (list, tuple)) \
                    else [value]
    loaded = {
        n.id
        for n in ast.walk(tree)
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)
    }
    # `{{_base_.x}}` substitutions and `_base_.x` references.
    base_refs = set(re.findall(r'_base_\.(\w+)', text))
    return _Source(path, assigned, loaded, base_refs, bases)


def base_config_path(base: str, filename: str) -> Optional[str]:
    """The file a ``_base_`` entry of ``filename`` names: relative to it, or
    ``scope::path`` inside the installed package's ``.mim/configs`` (where
    ``mim`` puts a package's configs); None when it cannot be found."""
    if '::' in base:
        scope, _, relative = base.partition('::')
        spec = importlib.util.find_spec(scope)
        if spec is None or spec.origin is None:
            return None
        path = osp.join(osp.dirname(spec.origin), '.mim', 'configs', relative)
    else:
        path = osp.join(osp.dirname(filename), base)
    return path if osp.isfile(path) else None


def _config_sources(filename: str) -> Iterator[Optional[_Source]]:
    """The config file and its ``_base_`` files, each before its own bases
    (so the first file assigning a key is the one whose value wins)."""
    source = _parse_source(filename)
    yield source
    if source is None or source.bases is None:
        yield None  # an unusual config format: check nothing there
        return
    for base in source.bases:
        path = base_config_path(base, filename)
        if path is None:
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
        cls = registered_class(registry, node['type'])
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
