"""Resume by default, but only the run that the config describes.

Rerunning a training command (a requeued Slurm job, a worker restarted by
torchrun, a user after a crash) should continue the run in its work dir,
not start it over; a different config pointed at the same work dir should
not silently continue someone else's run. :func:`config_differences`
compares the config of the newest checkpoint (MMEngine stores it in
``meta['cfg']``) with the one about to run, leaving out what does not
change the training trajectory: where it runs and logs, how it was
launched, the process count.
"""
from typing import Iterable, List, Optional

import torch
from mmengine.config import Config

from patchscale_mm.datasets.safe_loading import unwrap_guard
from .checkpoint_io import data_only_classes_allowed, forced_weights_only

# Top-level keys and dotted paths that do not change what is trained.
IGNORED = {
    'work_dir', 'resume', 'load_from', 'launcher', 'env_cfg',
    'model_wrapper_cfg', 'log_level', 'log_processor', 'visualizer',
    'vis_backends', 'default_hooks.logger', 'default_hooks.timer'
}
# Hooks tools/train.py adds itself: runs from before it added them match.
_ADDED_HOOKS = ('patchscale_mm.PreemptionHook', )


def saved_config(path: str) -> Optional[Config]:
    """The config stored in a checkpoint by MMEngine, or None. Memory-maps
    the file, so that the weights are not read."""
    with forced_weights_only(), data_only_classes_allowed():
        checkpoint = torch.load(path, map_location='cpu', mmap=True)
    text = (checkpoint.get('meta') or {}).get('cfg')
    if not isinstance(text, str):
        return None
    return Config.fromstring(text, '.py')


def _normalized(cfg: Config) -> dict:
    # Through the text form, as stored: tuples and lists compare alike.
    tree = unwrap_guard(Config.fromstring(cfg.pretty_text, '.py').to_dict())
    tree['custom_hooks'] = [
        h for h in tree.get('custom_hooks') or []
        if not (isinstance(h, dict) and h.get('type') in _ADDED_HOOKS)
    ]
    return _flatten(without_sync_bn(tree))


def without_sync_bn(node):
    """A copy of a config tree with every ``SyncBN`` norm as ``BN``. SyncBN
    has no CPU implementation, so CPU runs of several processes use BN (and
    their checkpoints' configs count as the GPU run's)."""
    if isinstance(node, dict):
        return {k: ('BN' if k == 'type' and v == 'SyncBN' else without_sync_bn(v))
                for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return type(node)(without_sync_bn(v) for v in node)
    return node


def _flatten(node, prefix='') -> dict:
    if isinstance(node, dict) and node:
        flat = {}
        for key, value in node.items():
            flat.update(_flatten(value, f'{prefix}{key}.'))
        return flat
    return {prefix[:-1]: node}


def _ignored(key: str, ignored: Iterable[str]) -> bool:
    return any(key == k or key.startswith(k + '.') for k in ignored)


def config_differences(saved: Config, current: Config,
                       also_ignored: Iterable[str] = ()) -> List[str]:
    """``'key: A there, B here'`` for each setting that differs, leaving
    out ``IGNORED`` and the keys or dotted paths of ``also_ignored``."""
    old, new = _normalized(saved), _normalized(current)
    ignored = IGNORED | set(also_ignored)
    missing = object()
    found = []
    for key in sorted(set(old) | set(new)):
        if _ignored(key, ignored):
            continue
        a, b = old.get(key, missing), new.get(key, missing)
        if a != b:
            a = 'unset' if a is missing else repr(a)
            b = 'unset' if b is missing else repr(b)
            found.append(f'{key}: {a} there, {b} here')
    return found
