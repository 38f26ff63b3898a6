"""The suite's rounding-sensitive tests hold on both CPU vendors' oneMKL paths.

CI runs on Intel and on AMD machines, and oneMKL picks its fp32 matmul
kernels by vendor, so every product rounds differently on the two. The suite
runs on one vendor's path; the tests marked ``sum_order`` (two orders of the
same fp32 sums: threads, sequence shards, fused against composable) run here
again on the other's, through ``tools/analysis/mkl_dispatch.py``. A
tolerance taken from one machine's rounding rather than from the arithmetic
fails here on whichever machine runs the suite.
"""
import platform
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tool_scripts import load_tool

ROOT = Path(__file__).parents[1]
tool = load_tool('mkl_dispatch')
VENDOR, FLAGS = tool.cpu_flags()
needs_mkl_on_x86 = pytest.mark.skipif(
    platform.machine() not in ('x86_64', 'AMD64') or not torch.backends.mkl.is_available(),
    reason="oneMKL's vendor paths exist on x86 builds of torch with MKL")
needs_vendor_check = pytest.mark.skipif(
    VENDOR != 'GenuineIntel' and not tool.vendor_check_exported(),
    reason="this torch does not export oneMKL's vendor check: no Intel path on this CPU")
needs_avx512 = pytest.mark.skipif(
    'avx512f' not in FLAGS, reason='without AVX-512 oneMKL takes its AVX2 path on either vendor')


@needs_mkl_on_x86
@needs_vendor_check
@needs_avx512
def test_each_mode_rounds_as_its_vendor(tmp_path):
    """The two modes give different bits for one matmul, and the mode of
    this machine's vendor gives the bits it gets unaided."""
    intel, amd = tool.paths_differ(tmp_path)
    assert intel != amd
    native = tool.fingerprint(tool.neutral_env())
    if VENDOR == 'GenuineIntel':
        assert native == intel
    elif VENDOR == 'AuthenticAMD':
        assert native == amd
    else:
        pytest.skip(f'CPU vendor {VENDOR!r}: neither mode is native')


@needs_mkl_on_x86
@needs_vendor_check
@needs_avx512
def test_sum_order_tests_hold_on_the_other_vendors_path(tmp_path):
    other = 'amd' if VENDOR == 'GenuineIntel' else 'intel'
    env = tool.dispatch_env(other, tmp_path)
    done = subprocess.run([sys.executable, '-m', 'pytest', '-o', 'addopts=', '-q', '-p',
                           'no:cacheprovider', '-m', 'sum_order', 'tests'], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1800)
    # rc 5 would mean that no test carries the mark.
    assert done.returncode == 0, f'on the {other} path:\n' + done.stdout[-4000:]
    assert re.match(r'\d+ passed', done.stdout.splitlines()[-1]), done.stdout[-500:]


def test_bad_mode_command_or_compiler_are_one_line_errors(capsys, monkeypatch, tmp_path):
    with pytest.raises(SystemExit, match="unknown mode 'arm'; choose one of intel, amd"):
        tool.dispatch_env('arm', '.')
    monkeypatch.setenv('CC', 'false')
    with pytest.raises(SystemExit, match='^mkl_dispatch: false could not build the vendor check'):
        tool.build_vendor_check(tmp_path)
    with pytest.raises(SystemExit):
        tool.parse_args(['intel'])
    assert 'give a mode and a command' in capsys.readouterr().err
    assert tool.parse_args(['amd', '--', 'ls', '-l']).command == ['ls', '-l']
