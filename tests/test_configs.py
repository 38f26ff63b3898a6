"""Every shipped config parses and builds its model, so a broken _base_
chain fails here; the generated zoo matches its generator."""
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope

from patchscale_mm.models.zoo import backbone_class

ROOT = Path(__file__).resolve().parents[1]
ZOO = ('cls', 'seg', 'det')
CONFIGS = sorted(p for task in ZOO for p in (ROOT / 'configs' / task).glob('*.py'))
SWEEP_CONFIGS = sorted((ROOT / 'configs' / 'sweep').glob('*.py'))
REGISTRIES = dict(
    mmpretrain='mmpretrain.registry',
    mmseg='mmseg.registry',
    mmdet='mmdet.registry')
NAME = re.compile(r'(?P<family>deit|adv)_(?P<arch>[tsblh])_p(?P<patch>\d+)_')


def test_zoo_is_complete():
    names = {p.relative_to(ROOT).as_posix() for p in CONFIGS}
    assert 'configs/seg/adv_b_p2_linear_ade20k.py' in names
    assert len([n for n in names if n.startswith('configs/cls/')]) == 216
    assert len([n for n in names if n.startswith('configs/seg/')]) == 16
    assert len([n for n in names if n.startswith('configs/det/')]) == 12


def test_generated_configs_are_up_to_date():
    out = subprocess.run(
        [sys.executable, 'tools/misc/generate_configs.py', '--check'],
        cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def build_on_meta(path):
    cfg = Config.fromfile(str(path))
    init_default_scope(cfg.default_scope)
    registry = importlib.import_module(REGISTRIES[cfg.default_scope]).MODELS
    # The meta device builds even Huge at pixel tokens without memory.
    with torch.device('meta'):
        return registry.build(cfg.model)


@pytest.mark.parametrize('path', SWEEP_CONFIGS, ids=lambda p: p.name)
def test_sweep_config_builds_model(path):
    backbone = build_on_meta(path).backbone
    family = 'vit' if path.stem.endswith('_vit') else 'adv'
    assert type(backbone) is backbone_class(family)
    assert backbone.embed_dims == 64 and backbone.num_layers == 4


@pytest.mark.parametrize(
    'path', CONFIGS, ids=[p.relative_to(ROOT / 'configs').as_posix()
                          for p in CONFIGS])
def test_config_builds_model(path):
    backbone = build_on_meta(path).backbone
    expected = NAME.match(path.name)
    assert backbone.patch_size == (int(expected['patch']), ) * 2
    assert type(backbone) is backbone_class(expected['family'])
    zoo = type(backbone).arch_zoo[expected['arch']]
    assert backbone.embed_dims == zoo['embed_dims']
    assert backbone.num_layers == zoo['num_layers']
