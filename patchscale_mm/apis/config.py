"""Loading a config, ``patchscale_mm::`` bases included."""
import os.path as osp

from mmengine.config import Config
from mmengine.config.utils import MODULE2PACKAGE

SCOPE = 'patchscale_mm'


def register_config_package() -> None:
    """Lets configs inherit ours with ``_base_ = 'patchscale_mm::seg/...'``.

    MMEngine follows ``pkg::`` bases only of the packages in its
    ``MODULE2PACKAGE`` and reads ``<package dir>/.mim/configs``. It finds a
    listed distribution's directory from the distribution's location, which
    for an editable install is site-packages, not the checkout; naming a
    module of the package instead makes it ask importlib, which finds the
    copy that is imported (wheel, editable checkout or source tree).
    """
    MODULE2PACKAGE.setdefault(SCOPE, f'{SCOPE}.version')


def _drop_package_scope(node) -> None:
    """Removes the ``_scope_='patchscale_mm'`` MMEngine gives every built
    object of a ``patchscale_mm::`` base: our configs build under their own
    ``default_scope`` (mmpretrain, mmseg, mmdet) and name our classes with
    the ``patchscale_mm.`` prefix, while our scope's registries know none of
    the downstream classes (``EncoderDecoder``, ``LoggerHook``)."""
    if isinstance(node, dict):
        if node.get('_scope_') == SCOPE:
            node.pop('_scope_')
        for value in node.values():
            _drop_package_scope(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            _drop_package_scope(value)


def load_config(path: str) -> Config:
    """``Config.fromfile`` that also resolves ``patchscale_mm::`` bases;
    a missing file (the config or one of its bases) is a one-line error."""
    register_config_package()
    if not osp.isfile(path):
        raise SystemExit(f'error: config file {path} not found')
    try:
        cfg = Config.fromfile(path)
    except FileNotFoundError as e:
        raise SystemExit(f'error: {path}: {e}') from None
    for key in list(cfg.keys()):
        _drop_package_scope(cfg[key])
    return cfg
