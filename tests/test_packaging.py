"""The package as a user gets it: a wheel built from the checkout, installed
on its own and imported from a folder outside the checkout, trains and tests
a config of the user's that inherits a shipped one through
``_base_ = 'patchscale_mm::...'``, with ``python -m patchscale_mm.train`` and
``python -m patchscale_mm.test``."""
import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from patchscale_mm.fixtures import make_ade20k_fixture

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 900


def readme_variant() -> str:
    """What a user writes: the README's variant of the headline recipe, the
    first python block of its "Your own variant" section, as printed."""
    readme = (ROOT / 'README.md').read_text()
    section = readme[readme.index('## Your own variant'):]
    return re.search(r'```python\n(.*?)```', section, re.S)[1]


VARIANT = readme_variant()

# The variant shrunk for a CPU smoke run: tests/configs/seg_tiny.py (a tiny
# backbone, 64x64 scenes, 6 iterations) on top of the variant instead of the
# shipped config it shrinks.
TINY = re.sub(r"^_base_ = .*$", "_base_ = './adv_s_p4_linear_ade20k.py'",
              (ROOT / 'tests' / 'configs' / 'seg_tiny.py').read_text(),
              count=1, flags=re.M)

# Run in the user's folder with only the installed copy importable.
INSPECT = """\
import json, patchscale_mm, patchscale_mm.ops._C
from patchscale_mm.apis.config import load_config
cfg = load_config('adv_s_p4_linear_ade20k.py')
print(json.dumps(dict(
    package=patchscale_mm.__file__,
    bases=[line for line in cfg.text.splitlines() if line.startswith('/')],
    backbone=cfg.model.backbone, max_iters=cfg.train_cfg.max_iters,
    lr=cfg.optim_wrapper.optimizer.lr)))
"""


def scopes(node):
    """Every ``_scope_`` of a config tree."""
    if isinstance(node, dict):
        if '_scope_' in node:
            yield node['_scope_']
        for value in node.values():
            yield from scopes(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            yield from scopes(value)


def test_readme_variant_passes_the_preflight_check_as_written(tmp_path):
    """Every check but the data and the pretrained checkpoint, which are
    not on this machine."""
    from patchscale_mm.apis.config import load_config
    from patchscale_mm.config_checks import config_problems
    (tmp_path / 'adv_s_p4_linear_ade20k.py').write_text(VARIANT)
    cfg = load_config(str(tmp_path / 'adv_s_p4_linear_ade20k.py'))
    assert cfg.model.backbone.arch == 's' and cfg.model.decode_head.in_channels == 512
    problems = [p for p in config_problems(cfg, 'train')
                if 'does not exist' not in p]
    assert problems == []


def test_variant_resolves_from_the_checkout(tmp_path):
    """In the checkout (editable install) patchscale_mm/.mim links to the
    live configs; no object is left in the package's scope, where mmseg's
    classes are unknown."""
    import patchscale_mm
    from patchscale_mm.apis.config import load_config
    (tmp_path / 'variant.py').write_text(VARIANT)
    cfg = load_config(str(tmp_path / 'variant.py'))
    mim = Path(patchscale_mm.__file__).parent / '.mim' / 'configs'
    assert f'{mim}/seg/adv_b_p2_linear_ade20k.py' in cfg.text
    assert cfg.model.backbone.arch == 's'
    assert cfg.model.backbone.patch_size == 4
    assert 'patchscale_mm' not in set(scopes(cfg.to_dict()))
    assert 'mmseg' in set(scopes(cfg.to_dict()))  # mmseg:: bases keep theirs

    (tmp_path / 'typo.py').write_text(
        "_base_ = 'patchscale_mm::seg/adv_b_p3_linear_ade20k.py'\n")
    with pytest.raises(SystemExit, match=r'^error: .*typo\.py: .*'
                       r'\.mim/configs/seg/adv_b_p3_linear_ade20k\.py'):
        load_config(str(tmp_path / 'typo.py'))


def why_no_wheel():
    """Why a wheel cannot be built here, or None."""
    # Both probes in subprocesses: in this process, looking up `pip` makes
    # setuptools' distutils shim fall back to the stdlib's distutils for
    # good, and importing setuptools would clash with what torch imported.
    if subprocess.run([sys.executable, '-c', 'import pip'],
                      capture_output=True).returncode:
        return 'pip is not installed'
    probe = ('from importlib.util import find_spec; import setuptools; '
             'assert find_spec("setuptools.command.bdist_wheel") '
             'or find_spec("wheel")')
    if subprocess.run([sys.executable, '-c', probe],
                      capture_output=True).returncode:
        return 'setuptools with bdist_wheel (or wheel) is not installed'
    if not any(map(shutil.which, (os.environ.get('CXX', 'c++'), 'g++'))):
        return 'no C++ compiler for the scan kernel'
    return None


def copy_source(dst: Path):
    """The files of a clean clone (tracked, or new and not ignored), with
    symlinks kept; the whole tree minus build outputs without git."""
    try:
        listed = subprocess.run(
            ['git', 'ls-files', '-z', '--cached', '--others',
             '--exclude-standard'],
            cwd=ROOT, check=True, capture_output=True).stdout
    except (OSError, subprocess.CalledProcessError):
        shutil.copytree(
            ROOT, dst, symlinks=True,
            ignore=shutil.ignore_patterns('.git', 'build', 'dist',
                                          'work_dirs', '*.egg-info', '*.so',
                                          '__pycache__', '.pytest_cache'))
        return
    for name in filter(None, listed.decode().split('\0')):
        src, out = ROOT / name, dst / name
        if not os.path.lexists(src):  # deleted in the working tree
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            out.symlink_to(os.readlink(src))
        else:
            shutil.copy2(src, out)


def run(args, **kwargs):
    out = subprocess.run(args, capture_output=True, text=True,
                         timeout=TIMEOUT, **kwargs)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    return out.stdout + out.stderr


@pytest.fixture(scope='module')
def site(tmp_path_factory):
    """A wheel of the checkout, installed alone into a folder of its own."""
    reason = why_no_wheel()
    if reason:
        pytest.skip(f'cannot build a wheel: {reason}')
    tmp = tmp_path_factory.mktemp('packaging')
    # A copy: building in the checkout would leave build/ and egg-info
    # behind and race with an editable build there.
    copy_source(tmp / 'src')
    start = time.time()
    # The CPU kernel only: a CUDA build takes minutes and is not what is
    # tested here.
    env = dict(os.environ, PATCHSCALE_FORCE_CUDA='0')
    run([sys.executable, '-m', 'pip', 'wheel', '--no-deps',
         '--no-build-isolation', '--disable-pip-version-check', '-q', '-w',
         str(tmp / 'dist'), str(tmp / 'src')], env=env)
    wheel, = (tmp / 'dist').glob('patchscale_mm-*.whl')
    print(f'wheel built in {time.time() - start:.0f} s')
    check_wheel_contents(wheel, tmp / 'src')
    run([sys.executable, '-m', 'pip', 'install', '--no-deps', '--no-compile',
         '--disable-pip-version-check', '-q', '--target',
         str(tmp / 'site'), str(wheel)])
    return tmp / 'site'


def check_wheel_contents(wheel: Path, src: Path):
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {
        f'patchscale_mm/.mim/configs/{p.relative_to(src / "configs")}'
        for p in (src / 'configs').rglob('*.py')
    }
    assert any('/_base_/' in n for n in configs)
    assert any('/sweep/' in n for n in configs)
    assert not configs - names, sorted(configs - names)[:5]
    for name in ('.mim/model-index.yml', '.mim/tools/train.py',
                 '.mim/tools/test.py', '.mim/tools/dist_train.sh',
                 'train.py', 'test.py'):
        assert f'patchscale_mm/{name}' in names
    assert any(re.match(r'patchscale_mm/ops/_C\..*\.so$', n) for n in names)
    assert not any(n.startswith(('tests/', 'configs/', 'tools/'))
                   for n in names)


def test_user_variant_trains_and_tests_from_the_wheel(site, tmp_path):
    user = tmp_path / 'my_project'  # outside the checkout
    user.mkdir()
    (user / 'adv_s_p4_linear_ade20k.py').write_text(VARIANT)
    (user / 'tiny.py').write_text(TINY)
    data = make_ade20k_fixture(tmp_path / 'ade', 8, 2)
    # Only the installed copy: PYTHONPATH replaced, and the cwd is not the
    # checkout.
    env = dict(os.environ, PYTHONPATH=str(site))

    info = json.loads(
        run([sys.executable, '-c', INSPECT], cwd=user,
            env=env).strip().splitlines()[-1])
    assert Path(info['package']).resolve() == (
        site / 'patchscale_mm' / '__init__.py').resolve()
    # The variant really inherits the installed headline config and its
    # bases (relative ones, and mmseg's through mmseg::).
    mim = str(site / 'patchscale_mm' / '.mim' / 'configs')
    assert f'{mim}/seg/adv_b_p2_linear_ade20k.py' in info['bases']
    assert f'{mim}/_base_/schedules/seg_160k.py' in info['bases']
    assert any(b.endswith('/mmseg/.mim/configs/_base_/datasets/ade20k.py')
               for b in info['bases'])
    assert not any(b.startswith(str(ROOT)) for b in info['bases'])
    assert info['backbone']['arch'] == 's'
    assert info['backbone']['patch_size'] == 4
    assert info['backbone']['type'] == 'patchscale_mm.Adventurer'
    assert info['max_iters'] == 160000 and info['lr'] == 5e-5

    options = ['--cfg-options'] + [
        f'{loader}.dataset.data_root={data}/'
        for loader in ('train_dataloader', 'val_dataloader',
                       'test_dataloader')
    ]
    work_dir = user / 'work_dirs' / 'tiny'
    run([sys.executable, '-m', 'patchscale_mm.train', 'tiny.py'] + options,
        cwd=user, env=env)
    checkpoint = work_dir / 'iter_6.pth'  # work_dirs/<config stem> default
    assert checkpoint.is_file()

    log = run([sys.executable, '-m', 'patchscale_mm.test', 'tiny.py',
               str(checkpoint)] + options, cwd=user, env=env)
    miou = re.findall(r'mIoU: (-?[\d.]+)', log)
    assert miou and 0 <= float(miou[-1]) <= 100, log[-2000:]

    # What mim runs: the shipped copy of tools/test.py, the same main.
    tool = site / 'patchscale_mm' / '.mim' / 'tools' / 'test.py'
    assert 'CONFIG CHECKPOINT' in tool.read_text()
    assert 'checkpoint file' in run([sys.executable, str(tool), '--help'],
                                    cwd=user, env=env)
