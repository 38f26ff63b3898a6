"""A child started through the lifeline exits when its parent is killed;
started directly, the same child outlives it (the control)."""
import os
import signal
import subprocess
import sys

import pytest
from processes import HAS_PROC, has_exited, still_running_after

pytestmark = pytest.mark.skipif(not HAS_PROC,
                                reason='reads process states from /proc')

SLEEPER = 'import os, time\nprint(os.getpid(), flush=True)\ntime.sleep(120)\n'
# The parent starts the sleeper (via ``launcher``), reports its pid and
# waits to be killed.
PARENT = '''
import subprocess, sys, time
child = subprocess.Popen([sys.executable, '-m', *sys.argv[1:], 'sleeper'],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True)
print(child.stdout.readline().strip(), flush=True)
time.sleep(120)
'''


def orphan_after_parent_killed(tmp_path, launcher) -> bool:
    """Kills the parent with SIGKILL; True if its child still runs 5 s
    later (the orphan is killed before returning)."""
    (tmp_path / 'sleeper.py').write_text(SLEEPER)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(tmp_path), os.environ.get('PYTHONPATH', '')]))
    parent = subprocess.Popen([sys.executable, '-c', PARENT, *launcher],
                              stdout=subprocess.PIPE, text=True, env=env,
                              cwd=tmp_path)
    child = int(parent.stdout.readline())
    assert not has_exited(child)
    parent.kill()
    parent.wait()
    orphaned = still_running_after([child], 5)
    for pid in orphaned:
        os.kill(pid, signal.SIGKILL)
    return bool(orphaned)


def test_child_exits_with_its_killed_parent(tmp_path):
    assert not orphan_after_parent_killed(
        tmp_path, ['patchscale_mm.apis.lifeline'])


def test_without_the_lifeline_the_child_is_orphaned(tmp_path):
    assert orphan_after_parent_killed(tmp_path, [])


def test_lifeline_runs_the_module_with_its_arguments(tmp_path):
    (tmp_path / 'echo_args.py').write_text(
        'import sys\nprint(sys.argv[1:])\n')
    # The pipe stays open until the module is done, as the sweep keeps it.
    proc = subprocess.Popen(
        [sys.executable, '-m', 'patchscale_mm.apis.lifeline', 'echo_args',
         '--work-dir', 'x y'], cwd=tmp_path, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=dict(os.environ, PYTHONPATH=str(tmp_path)))
    out = proc.stdout.read()
    assert proc.wait(timeout=60) == 0, out
    proc.stdin.close()
    assert out.strip() == "['--work-dir', 'x y']"


def test_lifeline_without_a_module_is_a_usage_error():
    out = subprocess.run(
        [sys.executable, '-m', 'patchscale_mm.apis.lifeline'],
        stdin=subprocess.PIPE, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert out.stderr.strip().splitlines()[-1].startswith(
        'usage: python -m patchscale_mm.apis.lifeline MODULE')
