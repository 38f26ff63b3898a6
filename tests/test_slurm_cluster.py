"""tools/slurm_train.sh, slurm_test.sh and sbatch_example.sh on a real
single-node Slurm cluster (tests/fixtures/slurm_cluster.sh): two CPU tasks
per job, joined by the gloo process group of patchscale_mm.apis.distributed."""
import fcntl
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import pytest
import torch

from patchscale_mm.fixtures import make_ade20k_fixture
from patchscale_mm.apis.slurm import slurm_env_to_torch_env
from test_tools_e2e import data_options, metric

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / 'tests' / 'fixtures' / 'slurm_cluster.sh'
CLUSTER_DIR = os.environ.get('SLURM_CLUSTER_DIR', '/tmp/patchscale_slurm')
TIMEOUT = 300
ENDED = ('COMPLETED', 'FAILED', 'CANCELLED', 'TIMEOUT', 'NODE_FAIL',
         'OUT_OF_MEMORY', 'BOOT_FAIL', 'DEADLINE', 'PREEMPTED')
# Two one-CPU tasks on the node, as slurm_run.sh's environment says; Slurm
# itself ends a job that runs past 5 minutes.
TWO_CPU_TASKS = dict(GPUS='2', GPUS_PER_NODE='2', CPUS_PER_TASK='1',
                     DEVICE='cpu', SRUN_ARGS='--time=5')
# Job names of this session, told apart from older jobs on a shared cluster.
JOB = f'psm{os.getpid()}_'


def cluster(command):
    return subprocess.run(['bash', str(CLUSTER), command], capture_output=True,
                          text=True, timeout=300,
                          env=dict(os.environ, SLURM_CLUSTER_DIR=CLUSTER_DIR))


@pytest.fixture(scope='module')
def slurm():
    """A running cluster for this module; yields the environment its
    clients need. Test sessions running at once take turns (a lock file),
    so that one does not stop the cluster under another."""
    # Read-only, so that any user may lock the file that root created.
    lock = os.open(f'{CLUSTER_DIR}.lock', os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        was_running = cluster('status').returncode == 0
        started = time.monotonic()
        out = cluster('start')
        if out.returncode == 2 and os.geteuid() != 0:
            pytest.skip('no Slurm cluster: starting one needs root '
                        f'({out.stderr.strip()})')
        assert out.returncode == 0, out.stdout + out.stderr
        print(f'slurm cluster up in {time.monotonic() - started:.1f} s')
        conf = out.stdout.strip().rpartition('SLURM_CONF=')[2]
        yield dict(os.environ, SLURM_CONF=conf, PYTHON=sys.executable)
        if not was_running:  # else it is someone else's: leave it up
            out = cluster('stop')
            assert out.returncode == 0, out.stdout + out.stderr
            status = cluster('status')
            assert status.returncode == 3 and 'running' not in status.stdout
    finally:
        os.close(lock)  # releases the lock


@pytest.fixture(scope='module')
def ade(tmp_path_factory):
    return make_ade20k_fixture(tmp_path_factory.mktemp('data') / 'ade', 16, 4)


def run(args, env, timeout=TIMEOUT):
    """Runs a command from the repository root; (exit code, output, s)."""
    started = time.monotonic()
    out = subprocess.run(args, cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=timeout)
    return (out.returncode, out.stdout + out.stderr,
            time.monotonic() - started)


def job_record(job, env):
    """Slurm's record of a job (an ID or a JobName) as a dict, or None."""
    out = subprocess.run(['scontrol', 'show', 'job', '-o'], env=env,
                         capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        record = dict(f.split('=', 1) for f in line.split() if '=' in f)
        if job in (record.get('JobId'), record.get('JobName')):
            return record
    return None


def ended_job(job, env, timeout):
    """Slurm's record of a job once it has ended (srun may return while
    the job still completes), or None after ``timeout`` seconds."""
    record = None

    def ended():
        nonlocal record
        record = job_record(job, env)
        return record is not None and record['JobState'] in ENDED

    return record if wait_until(ended, timeout) else None


def queue_empty(env):
    return subprocess.run(['squeue', '-h'], env=env, capture_output=True,
                          text=True, check=True).stdout.strip() == ''


def wait_until(predicate, timeout):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def test_master_is_the_first_node_of_the_step(slurm):
    env = dict(SLURM_CONF=slurm['SLURM_CONF'], SLURM_NODELIST='gpu[01-04]',
               SLURM_STEP_NODELIST='gpu[03-04]', SLURM_JOB_ID='123456',
               SLURM_PROCID='9', SLURM_NTASKS='16', SLURM_LOCALID='1')
    before = dict(os.environ)
    # patch.dict restores os.environ whole, removing what the call adds.
    with mock.patch.dict(os.environ, env):
        for name in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR',
                     'MASTER_PORT'):
            os.environ.pop(name, None)
        slurm_env_to_torch_env()
        assert os.environ['MASTER_ADDR'] == 'gpu03'
        assert os.environ['MASTER_PORT'] == '18456'  # one port per job
        assert [os.environ[k] for k in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK')
                ] == ['9', '16', '1']
    assert dict(os.environ) == before  # nothing leaks into other tests


def test_slurm_train_then_test_two_cpu_tasks(slurm, ade, tmp_path):
    env = dict(slurm, **TWO_CPU_TASKS)
    options = data_options('seg', ade)
    work_dir = tmp_path / 'work'
    code, log, seconds = run(
        ['bash', 'tools/slurm_train.sh', 'debug', JOB + 'train',
         'tests/configs/seg_tiny.py', str(work_dir)] + options, env)
    assert code == 0, log[-4000:]
    print(f'slurm_train.sh: {seconds:.1f} s')
    record = ended_job(JOB + 'train', slurm, 30)
    assert record['JobState'] == 'COMPLETED' and record['NumTasks'] == '2'
    assert (work_dir / 'iter_6.pth').is_file()
    rank1 = next(work_dir.glob('*/*_rank1.log')).read_text()
    assert 'Iter(train) [6/6]' in rank1

    code, log, seconds = run(
        ['bash', 'tools/slurm_test.sh', 'debug', JOB + 'test',
         'tests/configs/seg_tiny.py', str(work_dir / 'iter_6.pth'),
         '--work-dir', str(tmp_path / 'test')] + options, env)
    assert code == 0, log[-4000:]
    print(f'slurm_test.sh: {seconds:.1f} s')
    assert 0 <= metric(log, 'mIoU') <= 100
    assert len(list((tmp_path / 'test').glob('*/*_rank1.log'))) == 1


def test_a_failing_rank_ends_the_job(slurm, ade, tmp_path):
    """Rank 1 fails before it joins the process group. Rank 0 would wait
    for it for gloo's 30 minutes; srun's --kill-on-bad-exit ends it."""
    # A module that every task imports through custom_imports, test-only.
    (tmp_path / 'failing_rank.py').write_text(
        "import os\n"
        "if os.environ['SLURM_PROCID'] == '1':\n"
        "    raise RuntimeError('injected failure on rank 1')\n")
    config = tmp_path / 'seg_failing_rank1.py'
    config.write_text(
        f"_base_ = '{ROOT}/tests/configs/seg_tiny.py'\n"
        "custom_imports = dict(imports=['patchscale_mm.models', "
        "'failing_rank'], allow_failed_imports=False)\n")
    path = [str(tmp_path)] + os.environ.get('PYTHONPATH', '').split(':')
    env = dict(slurm, **TWO_CPU_TASKS, PYTHONPATH=':'.join(filter(None, path)))
    work_dir = tmp_path / 'work'
    code, log, seconds = run(
        ['bash', 'tools/slurm_train.sh', 'debug', JOB + 'fail', str(config),
         str(work_dir)] + data_options('seg', ade), env, timeout=90)
    print(f'failing job: {seconds:.1f} s')
    assert code != 0, log[-4000:]
    assert 'RuntimeError: injected failure on rank 1' in log
    assert 'task 1: Exited with exit code 1' in log
    assert 'task 0: Terminated' in log, log[-4000:]
    assert ended_job(JOB + 'fail', slurm, 30)['JobState'] == 'FAILED'
    assert not (work_dir / 'iter_6.pth').exists()
    # Its processes end too, leaving the node to the next job.
    assert wait_until(lambda: queue_empty(slurm), 30)


def test_sbatch_example_on_one_node_two_cpu_tasks(slurm, ade, tmp_path):
    """The README's sbatch script, its 2-node GPU shape overridden on the
    command line."""
    work_dir = tmp_path / 'work'
    submit = subprocess.run(
        ['sbatch', '--parsable', '--partition=debug', '--nodes=1',
         '--ntasks-per-node=2', '--cpus-per-task=1', '--gres=none',
         '--time=5', '--job-name=' + JOB + 'sbatch',
         f'--output={tmp_path}/slurm-%j.out', 'tools/sbatch_example.sh',
         'tests/configs/seg_tiny.py', '--work-dir', str(work_dir)] +
        data_options('seg', ade) + ['train_cfg.max_iters=2'], cwd=ROOT,
        env=slurm, capture_output=True, text=True, timeout=60)
    assert submit.returncode == 0, submit.stderr
    job = submit.stdout.strip().split(';')[0]  # "ID" or "ID;cluster"
    started = time.monotonic()
    # Not `sbatch --wait`: it polls at 2, 4, 8, ... s.
    record = ended_job(job, slurm, TIMEOUT)
    if record is None:
        subprocess.run(['scancel', job], env=slurm)
    print(f'sbatch job: {time.monotonic() - started:.1f} s')
    output = (tmp_path / f'slurm-{job}.out').read_text()
    assert record and record['JobState'] == 'COMPLETED', output[-4000:]
    assert record['ExitCode'] == '0:0' and record['NumTasks'] == '2'
    assert 'Distributed launcher: slurm' in output
    assert (work_dir / 'iter_2.pth').is_file()
    rank1 = next(work_dir.glob('*/*_rank1.log')).read_text()
    assert 'Iter(train) [2/2]' in rank1


def test_readme_shows_the_sbatch_example():
    section = (ROOT / 'README.md').read_text().split('\n## Slurm\n')[1]
    block = next(b for b in section.split('```')[1::2] if '#SBATCH' in b)
    script = (ROOT / 'tools' / 'sbatch_example.sh').read_text().splitlines()
    shown = [line for line in block.splitlines()[1:] if line]  # after "bash"
    assert len(shown) > 8 and [x for x in shown if x not in script] == []


# ---------------------------------------------------------------------------
# Preemption: signalled, requeued, resumed, the same result
# ---------------------------------------------------------------------------
EXACT = ['train_cfg.max_iters=16', 'train_cfg.val_interval=100',
         'default_hooks.checkpoint.interval=4', 'param_scheduler=None',
         'optim_wrapper.optimizer.lr=1e-3', 'randomness.deterministic=True']


def losses(log):
    """Iteration -> logged training loss (rank 0's log)."""
    found = re.findall(r'Iter\(train\) \[\s*(\d+)/\d+\].*? loss: (\S+)', log)
    return {int(i): loss for i, loss in found}


def wait_for(path, pattern, timeout):
    """Waits until the file at ``path`` matches ``pattern``."""
    def found():
        return path.is_file() and re.search(pattern, path.read_text())
    return wait_until(found, timeout)


def test_a_signalled_job_requeues_and_ends_as_if_uninterrupted(
        slurm, ade, tmp_path):
    """scancel --signal=USR1 (what --signal=USR1@120 sends before the time
    limit): the two ranks finish their iteration, write one checkpoint,
    the job requeues itself and the second start resumes; weights and
    per-iteration losses are those of an uninterrupted job."""
    options = data_options('seg', ade) + EXACT
    code, reference_log, seconds = run(
        ['bash', 'tools/slurm_train.sh', 'debug', JOB + 'ref',
         'tests/configs/seg_tiny.py', str(tmp_path / 'reference')] + options,
        dict(slurm, **TWO_CPU_TASKS))
    assert code == 0, reference_log[-4000:]
    print(f'uninterrupted job: {seconds:.1f} s')

    work_dir = tmp_path / 'work'
    submit = subprocess.run(
        ['sbatch', '--parsable', '--partition=debug', '--nodes=1',
         '--ntasks-per-node=2', '--cpus-per-task=1', '--gres=none',
         '--time=5', '--job-name=' + JOB + 'requeue',
         f'--output={tmp_path}/slurm-%j.out', 'tools/sbatch_example.sh',
         'tests/configs/seg_tiny.py', '--work-dir', str(work_dir)] + options,
        cwd=ROOT, env=slurm, capture_output=True, text=True, timeout=60)
    assert submit.returncode == 0, submit.stderr
    job = submit.stdout.strip().split(';')[0]
    output = tmp_path / f'slurm-{job}.out'
    started = time.monotonic()
    try:
        assert wait_for(output, r'Iter\(train\) \[\s*5/16\]', TIMEOUT)
        subprocess.run(['scancel', '--signal=USR1', job], env=slurm,
                       check=True)
        # Slurm holds a requeued job until the old job's credential
        # expires (AuthInfo cred_expire, 120 s by default): most of this
        # test's time is that wait.
        assert wait_until(lambda: job_record(job, slurm)['Restarts'] == '1',
                          60), output.read_text()[-4000:]
        record = ended_job(job, slurm, TIMEOUT)
    finally:
        subprocess.run(['scancel', job], env=slurm)
    log = output.read_text()
    print(f'signalled job: {time.monotonic() - started:.1f} s')
    assert record and record['JobState'] == 'COMPLETED', log[-4000:]
    stopped = re.search(r'stopped on SIGUSR1 after iteration (\d+); '
                        rf'checkpoint (\S+) written; requeueing Slurm job '
                        f'{job}', log)
    assert stopped, log[-4000:]
    at = int(stopped.group(1))
    assert f'resumed epoch: 0, iter: {at}' in log
    # Every iteration once, with the uninterrupted job's loss.
    assert losses(log) == losses(reference_log)
    assert sorted(losses(log)) == list(range(1, 17))
    reference = torch.load(tmp_path / 'reference' / 'iter_16.pth',
                           weights_only=True)['state_dict']
    resumed = torch.load(work_dir / 'iter_16.pth',
                         weights_only=True)['state_dict']
    assert all(torch.equal(v, resumed[k]) for k, v in reference.items())
