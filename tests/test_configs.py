"""Every shipped config parses and builds its model, so a broken _base_
chain fails here; the generated zoo matches its generator and the three tasks
compose their bases the same way."""
import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
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


def declared_bases(path):
    """The ``_base_`` a config file names, as a list."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and node.targets[0].id == '_base_':
            bases = ast.literal_eval(node.value)
            return [bases] if isinstance(bases, str) else bases
    return []


def test_leaves_of_every_task_compose_the_same_way():
    """A leaf lists a model, a dataset and a schedule base and the default
    runtime, in that order (or extends another leaf of its task)."""
    for path in CONFIGS:
        bases = declared_bases(path)
        if len(bases) == 1:
            assert (path.parent / bases[0]).exists(), path.name
            continue
        folders = [Path(base).parent.name for base in bases[:3]]
        assert folders == ['models', 'datasets', 'schedules'], path.name
        assert bases[3] == '../_base_/default_runtime.py', path.name


def test_bases_stay_within_their_kind_and_family():
    """Schedules do not bring the runtime, and a model base inherits only
    from a base of its own backbone family."""
    base_dir = ROOT / 'configs' / '_base_'
    for path in (base_dir / 'schedules').glob('*.py'):
        assert all(b.startswith('./') for b in declared_bases(path)), path.name
    for path in (base_dir / 'models').glob('*.py'):
        family = path.stem.split('_')[0]
        for base in declared_bases(path):
            if '::' not in base:
                assert Path(base).stem.split('_')[0] == family, path.name


def test_model_index_lists_the_metafiles_of_the_zoo():
    index = yaml.safe_load((ROOT / 'model-index.yml').read_text())
    assert index['Import'] == [f'configs/{task}/metafile.yml' for task in ZOO]
    # What an installed package reads.
    assert (ROOT / 'patchscale_mm' / '.mim' / 'model-index.yml').read_text() == (
        ROOT / 'model-index.yml').read_text()
    for metafile in index['Import']:
        meta = yaml.safe_load((ROOT / metafile).read_text())
        collections = {c['Name'] for c in meta['Collections']}
        for model in meta['Models']:
            assert (ROOT / model['Config']).exists(), model['Name']
            assert Path(model['Config']).stem == model['Name']
            assert model['In Collection'] in collections
            assert model['Results'] and all(r['Metrics'] for r in model['Results'])


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
