"""Failure is cheap: a killed run resumes to the same weights, checkpoints
are written atomically and loaded weights-only, impossible configs and runs
that cannot fit in memory stop before anything is built, a NaN stops
training with the last good checkpoint kept, and a dead rank ends a
distributed job instead of hanging it."""
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.logging import MessageHub, MMLogger
from mmengine.runner.checkpoint import CheckpointLoader
from processes import HAS_PROC, child_pids

from patchscale_mm.config_checks import config_problems, memory_problem
from patchscale_mm.fixtures import make_ade20k_fixture
from patchscale_mm.engine import (CheckpointError, NonFiniteLossError,
                                  NonFiniteLossHook, ResumableCheckpointHook,
                                  UnsafeCheckpointError, check_checkpoint_file,
                                  find_resumable_checkpoint)
from patchscale_mm.engine.resumable_checkpoint_hook import (get_rng_state,
                                                            set_rng_state)

ROOT = Path(__file__).resolve().parents[1]
SEG = 'tests/configs/seg_tiny.py'
TIMEOUT = 300


@pytest.fixture(scope='module')
def ade(tmp_path_factory):
    return make_ade20k_fixture(tmp_path_factory.mktemp('data') / 'ade', 16, 4)


def data_options(root):
    return [f'{loader}.dataset.data_root={root}/'
            for loader in ('train_dataloader', 'val_dataloader',
                           'test_dataloader')]


def train_cmd(work_dir, *options, config=SEG, extra=()):
    return [sys.executable, 'tools/train.py', str(config), '--work-dir',
            str(work_dir), *extra, '--cfg-options', *options]


def run(args, expect_ok=True, **kwargs):
    out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True,
                         timeout=TIMEOUT, **kwargs)
    log = out.stdout + out.stderr
    assert (out.returncode == 0) == expect_ok, log[-4000:]
    return log


def weights(path):
    return torch.load(path, map_location='cpu', weights_only=True)


# ---------------------------------------------------------------------------
# Resume after SIGKILL
# ---------------------------------------------------------------------------
# A user's config of the usual OpenMMLab shape: MMEngine's CheckpointHook by
# name (the guarantees must not depend on the hook's name), over the tiny
# Adventurer linear-head recipe with its InfiniteSampler(shuffle=True),
# RandomFlip and drop path 0.1.
USER_CONFIG = f"""_base_ = '{ROOT / SEG}'
default_hooks = dict(
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=4))
randomness = dict(seed=0, deterministic=True)
"""


@pytest.fixture
def user_config(tmp_path):
    path = tmp_path / 'users_seg.py'
    path.write_text(USER_CONFIG)
    return path


def exact_options(ade, max_iters):
    # A constant lr that moves the weights (the recipe's warm-up starts at
    # 1e-6 of it), random crops/flips, drop-path and a validation midway:
    # any difference in data order or random draws after the resume shows
    # in the weights.
    return data_options(ade) + [
        f'train_cfg.max_iters={max_iters}', 'train_cfg.val_interval=8',
        'param_scheduler=None', 'optim_wrapper.optimizer.lr=1e-3'
    ]


def assert_same_weights(reference, resumed, at=''):
    reference, resumed = weights(reference), weights(resumed)
    for key, value in reference['state_dict'].items():
        assert torch.equal(value, resumed['state_dict'][key]), (key, at)


def test_killed_run_resumes_to_the_same_weights(ade, tmp_path, user_config):
    max_iters = 16
    options = exact_options(ade, max_iters)
    reference_log = run(train_cmd(tmp_path / 'reference', *options,
                                  config=user_config))

    # Kill at a random moment after the first checkpoint (iteration 4):
    # when iteration k is logged, plus up to 50 ms, which may fall inside
    # the save of iteration k.
    kill_iter, jitter = random.randint(5, max_iters - 2), random.random() / 20
    work_dir = tmp_path / 'killed'
    proc = subprocess.Popen(train_cmd(work_dir, *options,
                                      config=user_config), cwd=ROOT,
                            stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        logged = rf'Iter\(train\) \[\s*{kill_iter}/{max_iters}\]'
        for line in proc.stdout:
            if re.search(logged, line):
                break
        time.sleep(jitter)
        assert proc.poll() is None
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate()
    at = f'a kill after iteration {kill_iter} + {jitter * 1000:.0f} ms'
    latest = (work_dir / 'last_checkpoint').read_text()
    check_checkpoint_file(latest)  # never points at a partial file
    resumed_from = weights(latest)['meta']['iter']

    # The same command again resumes (no --resume needed).
    log = run(train_cmd(work_dir, *options, config=user_config))
    assert f'resuming from {latest}' in log, at
    assert f'iter: {resumed_from}' in log, at  # MMEngine's "resumed" line
    # The same batches and draws: the losses after the resume match.
    resumed_losses = losses(log)
    assert min(resumed_losses) == resumed_from + 1, at
    assert resumed_losses == {
        i: loss for i, loss in losses(reference_log).items()
        if i > resumed_from
    }, at
    assert_same_weights(tmp_path / 'reference' / f'iter_{max_iters}.pth',
                        work_dir / f'iter_{max_iters}.pth', at)
    assert torch.serialization.get_unsafe_globals_in_checkpoint(
        work_dir / f'iter_{max_iters}.pth') == []


@pytest.fixture(scope='module')
def reference_16(ade, tmp_path_factory):
    """An uninterrupted 16-iteration run of the user's config: (work dir,
    per-iteration losses)."""
    tmp = tmp_path_factory.mktemp('reference')
    config = tmp / 'users_seg.py'
    config.write_text(USER_CONFIG)
    log = run(train_cmd(tmp / 'work', *exact_options(ade, 16),
                        config=config))
    return tmp / 'work', losses(log)


def start_training(work_dir, options, config, until_iter, **kwargs):
    """A training process, returned once it has logged ``until_iter``."""
    proc = subprocess.Popen(train_cmd(work_dir, *options, config=config),
                            cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kwargs)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if re.search(rf'Iter\(train\) \[\s*{until_iter}/', line):
            return proc, lines
    proc.wait()
    pytest.fail(''.join(lines)[-4000:])


@pytest.mark.parametrize('sig', ['SIGUSR1', 'SIGTERM'])
def test_a_signal_stops_with_a_checkpoint_that_resumes_exactly(
        ade, tmp_path, user_config, reference_16, sig):
    """Slurm's warning (SIGUSR1) or kill (SIGTERM): the iteration finishes,
    one checkpoint is written, the run exits 75; the same command resumes
    to the uninterrupted run's weights and losses."""
    reference_dir, reference_losses = reference_16
    options = exact_options(ade, 16)
    work_dir = tmp_path / 'work'
    proc, lines = start_training(work_dir, options, user_config, 5)
    proc.send_signal(getattr(signal, sig))
    out, _ = proc.communicate(timeout=TIMEOUT)
    log = ''.join(lines) + out
    assert proc.returncode == 75, log[-4000:]
    stopped = re.search(rf'training interrupted: stopped on {sig} after '
                        r'iteration (\d+); checkpoint (\S+) written; the '
                        'same command resumes it', log)
    assert stopped, log[-3000:]
    at, path = int(stopped.group(1)), stopped.group(2)
    assert path == str(work_dir / f'iter_{at}.pth')
    assert (work_dir / 'last_checkpoint').read_text() == path
    assert 'Traceback' not in log

    log = run(train_cmd(work_dir, *options, config=user_config))
    assert f'resumed epoch: 0, iter: {at}' in log
    assert losses(log) == {i: v for i, v in reference_losses.items()
                           if i > at}
    assert_same_weights(reference_dir / 'iter_16.pth',
                        work_dir / 'iter_16.pth')


def test_another_config_in_the_work_dir_is_refused(ade, tmp_path,
                                                   user_config, reference_16):
    reference_dir, _ = reference_16
    options = exact_options(ade, 16)
    log = run(train_cmd(reference_dir, *options, 'train_cfg.max_iters=32',
                        config=user_config), expect_ok=False)
    assert log.strip().splitlines()[-1] == (
        f'error: {reference_dir}/iter_16.pth was written by another config '
        '(train_cfg.max_iters: 16 there, 32 here); pass --no-resume to train '
        'from scratch in this work dir, --resume to resume anyway, or a new '
        '--work-dir')
    assert not (reference_dir / 'iter_20.pth').exists()


def test_a_gpu_run_with_sync_bn_resumes_on_cpu_processes(monkeypatch):
    """CPU process groups train with BN where the config says SyncBN (it has
    no CPU implementation); the checkpoint of either run resumes the other,
    and any other norm change still counts."""
    from mmengine.config import Config

    from patchscale_mm.apis import distributed
    from patchscale_mm.engine.auto_resume import config_differences

    def cfg(norm):
        return Config(dict(model=dict(
            type='EncoderDecoder',
            decode_head=dict(norm_cfg=dict(type=norm, requires_grad=True)),
            auxiliary_head=[dict(norm_cfg=dict(type=norm))]), launcher='pytorch'))

    gpu = cfg('SyncBN')
    cpu = cfg('SyncBN')
    monkeypatch.setattr(distributed.dist, 'is_initialized', lambda: True)
    monkeypatch.setattr(distributed.torch.cuda, 'is_available', lambda: False)
    assert distributed.init_cpu_distributed(cpu)
    assert cpu.model.decode_head.norm_cfg.type == 'BN'
    assert cpu.model.auxiliary_head[0].norm_cfg.type == 'BN'
    assert gpu.model.decode_head.norm_cfg.type == 'SyncBN'
    assert config_differences(gpu, cpu) == []
    assert config_differences(cpu, gpu) == []
    differences = config_differences(gpu, cfg('GN'))
    assert [d.split(':')[0] for d in differences] == [
        'model.auxiliary_head', 'model.decode_head.norm_cfg.type']
    assert all('GN' in d for d in differences)


def losses(log):
    """Iteration -> logged training loss."""
    found = re.findall(r'Iter\(train\) \[\s*(\d+)/\d+\].*? loss: (\S+)', log)
    return {int(i): loss for i, loss in found}


def test_rng_state_round_trip():
    draw = lambda: (random.random(), np.random.rand(), torch.rand(3))  # noqa
    state = get_rng_state()
    first = draw()
    set_rng_state(state)
    again = draw()
    assert first[:2] == again[:2] and torch.equal(first[2], again[2])


class _FakeRunner:
    """What CheckpointHook touches when saving."""

    def __init__(self, work_dir, on_save):
        self.work_dir = str(work_dir)
        self.message_hub = MessageHub.get_instance(f'ckpt-{id(self)}')
        self.logger = MMLogger.get_instance('test_reliability')
        self.on_save = on_save
        self.iter, self.epoch = 0, 0

    def save_checkpoint(self, out_dir, filename, *args, **kwargs):
        self.on_save(Path(out_dir) / filename)
        torch.save({'state_dict': {}}, Path(out_dir) / filename)


def test_rotation_deletes_the_old_checkpoint_after_the_new_one(tmp_path):
    seen = []

    def on_save(path):  # what a kill during this save would leave
        seen.append(sorted(p.name for p in tmp_path.glob('*.pth')))

    runner = _FakeRunner(tmp_path, on_save)
    hook = ResumableCheckpointHook(interval=1, by_epoch=False,
                                   max_keep_ckpts=1)
    hook.before_train(runner)
    for step in (1, 2, 3):
        hook._save_checkpoint_with_step(runner, step, dict(iter=step))
    # mmengine deletes iter_1 before writing iter_2 (nothing left between).
    assert seen == [[], ['iter_1.pth'], ['iter_2.pth']]
    assert sorted(p.name for p in tmp_path.glob('*.pth')) == ['iter_3.pth']
    assert (tmp_path / 'last_checkpoint').read_text().endswith('iter_3.pth')


KILLED_WRITER = """
import os, sys, time, torch
from patchscale_mm.engine import AtomicLocalBackend
os.fsync = lambda fd: time.sleep(600)  # a slow disk: the kill lands here
data = bytearray(64 * 2**20)
AtomicLocalBackend().put(bytes(data), sys.argv[1])
"""


def test_kill_during_a_save_keeps_the_previous_file(tmp_path):
    target = tmp_path / 'iter_8.pth'
    torch.save({'state_dict': {'w': torch.ones(3)}}, target)
    proc = subprocess.Popen([sys.executable, '-c', KILLED_WRITER,
                             str(target)], cwd=ROOT)
    try:
        deadline = time.time() + 120
        while not list(tmp_path.glob('.iter_8.pth.*.tmp')):
            assert proc.poll() is None and time.time() < deadline
            time.sleep(0.02)
        time.sleep(0.2)
    finally:
        proc.kill()
        proc.wait()
    check_checkpoint_file(str(target))
    assert torch.equal(weights(target)['state_dict']['w'], torch.ones(3))
    # The next run's checkpoint hook clears the interrupted write.
    runner = _FakeRunner(tmp_path, lambda path: None)
    ResumableCheckpointHook(by_epoch=False).before_train(runner)
    assert not list(tmp_path.glob('.*.tmp'))


# ---------------------------------------------------------------------------
# Truncated and malicious checkpoints
# ---------------------------------------------------------------------------
@pytest.fixture
def truncated(tmp_path):
    good = tmp_path / 'iter_4.pth'
    torch.save({'state_dict': {'w': torch.randn(256, 256)}}, good)
    bad = tmp_path / 'iter_8.pth'
    bad.write_bytes(good.read_bytes()[:good.stat().st_size // 2])
    os.utime(good, (1, 1))  # older than the truncated one
    return good, bad


def test_truncated_checkpoint_is_refused_and_resume_falls_back(truncated):
    good, bad = truncated
    with pytest.raises(CheckpointError, match='is truncated'):
        check_checkpoint_file(str(bad))
    with pytest.raises(CheckpointError, match='truncated or corrupt'):
        CheckpointLoader.load_checkpoint(str(bad))
    # A last_checkpoint written by a run from before atomic saving.
    (good.parent / 'last_checkpoint').write_text(str(bad))
    assert find_resumable_checkpoint(str(good.parent)) == str(good)


def test_test_tool_refuses_a_truncated_checkpoint(truncated):
    log = run([sys.executable, 'tools/test.py', SEG, str(truncated[1])],
              expect_ok=False)
    assert f'error: checkpoint {truncated[1]} is truncated' in log
    assert 'Traceback' not in log


class _Payload:
    """Unpickling this runs a shell command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}', )


@pytest.fixture
def malicious(tmp_path):
    marker = tmp_path / 'pwned'
    path = tmp_path / 'malicious.pth'
    torch.save({'state_dict': {'w': torch.zeros(1)},
                'meta': _Payload(marker)}, path)
    return path, marker


def test_malicious_checkpoint_is_refused_by_every_loader(
        malicious, monkeypatch):
    from mmengine.model.weight_init import PretrainedInit
    path, marker = malicious
    with pytest.raises(UnsafeCheckpointError, match='would call posix.system'):
        check_checkpoint_file(str(path))
    # The loader behind load_from, resume and init_cfg, even where the
    # environment asks torch to unpickle everything.
    monkeypatch.setenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '1')
    with pytest.raises(UnsafeCheckpointError, match='posix.system'):
        CheckpointLoader.load_checkpoint(str(path))
    with pytest.raises(UnsafeCheckpointError):
        PretrainedInit(checkpoint=str(path))(torch.nn.Linear(1, 1))
    assert os.environ['TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD'] == '1'
    assert not marker.exists()


def test_tools_refuse_a_malicious_checkpoint(malicious, ade):
    path, marker = malicious
    log = run([sys.executable, 'tools/test.py', SEG, str(path)],
              expect_ok=False)
    assert 'error: refusing to load checkpoint' in log
    # tools/train.py's pre-flight (wired as in the bad-config test below).
    # (_delete_: the tiny config trains from scratch, init_cfg=None.)
    pretrained = dict(_delete_=True, type='Pretrained', checkpoint=str(path))
    found = problems(SEG, ade, {
        'load_from': str(path),
        'model.backbone.init_cfg': pretrained
    })
    assert sorted(found) == [
        f'load_from: refusing to load checkpoint {path}: unpickling it would '
        'call posix.system, and only tensors, numbers, strings and '
        'containers load with weights_only=True; if you trust the file, '
        're-save its state_dict as plain tensors',
        'model.backbone.init_cfg.checkpoint: refusing to load checkpoint '
        f'{path}: unpickling it would call posix.system, and only tensors, '
        'numbers, strings and containers load with weights_only=True; if you '
        'trust the file, re-save its state_dict as plain tensors'
    ]
    assert not marker.exists()


# ---------------------------------------------------------------------------
# Pre-flight checks
# ---------------------------------------------------------------------------
def problems(config, ade, options=(), cli_keys=(), mode='train'):
    cfg = Config.fromfile(str(config))
    data = {o.split('=')[0]: o.split('=')[1] for o in data_options(ade)}
    cfg.merge_from_dict({**data, **dict(options)})
    return config_problems(cfg, mode, cli_keys)


@pytest.mark.parametrize('options,expected', [
    ({'model.backbone.img_size': 60}, 'model.backbone.img_size 60x60 is '
     'not divisible by patch size 8x8'),
    ({'model.backbone.patch_size': 0}, 'model.backbone.patch_size must be '
     '>= 1, got 0'),
    ({'model.backbone.arch': 'xl'}, "unknown Adventurer arch 'xl'; valid "
     'archs: b, base, h, huge, l, large, s, small, t, tiny'),
    ({'model.decode_head.in_channels': 64}, 'model.decode_head.in_channels'
     "=64 does not match the backbone's width 32"),
    ({'model.backbone.patch_sise': 4}, "model.backbone.patch_sise: "
     "Adventurer takes no argument 'patch_sise'; did you mean 'patch_size'?"),
    ({'model.decode_head.dropout': 0.1}, "LinearSegHead takes no argument "
     "'dropout'; did you mean 'dropout_ratio'?"),
    ({'model.data_preprocessor.size': (60, 60)}, 'model.data_preprocessor.'
     'size 60x60 is not divisible by patch size 8x8'),
    ({'train_dataloader.dataset.data_root': '/nonexistent'},
     "train_dataloader.dataset.data_root '/nonexistent' does not exist"),
])
def test_preflight_reports_one_line_per_problem(ade, options, expected):
    found = problems(SEG, ade, options)
    assert len(found) == 1 and expected in found[0], found


def test_preflight_catches_unread_top_level_keys(ade, tmp_path):
    config = tmp_path / 'typo.py'
    # A typo, and an override of a base file's variable, which the base's
    # entries never see (each base file is evaluated on its own).
    config.write_text(f"_base_ = '{ROOT / SEG}'\n"
                      'train_dataloder = dict(batch_size=4)\n'
                      'crop_size = (32, 32)\n')
    found = problems(config, ade, cli_keys=['data_root'],
                     options={'data_root': 'x'})
    assert len(found) == 3, found
    assert ("top-level key 'train_dataloder' is not read by MMEngine nor by "
            "the config; did you mean 'train_dataloader'?") in found
    assert any("'crop_size' is not read" in p for p in found)
    assert any(p.startswith("--cfg-options top-level key 'data_root'")
               for p in found)


def test_preflight_checks_detection_necks_and_padding(ade):
    found = problems('tests/configs/det_tiny.py', ade, {
        'model.backbone.patch_size': 64,
        'model.neck.in_channels': 64
    }, mode='test')
    assert any('pad_size_divisor=32 is not a multiple of the patch size 64'
               in p for p in found)
    assert any('model.neck.in_stride=16 does not match' in p for p in found)
    assert any("model.neck.in_channels=64 does not match the backbone's "
               'width 32' in p for p in found)


def test_preflight_checks_the_upernet_pyramid_against_the_patch(ade):
    config = 'configs/seg/adv_b_p8_upernet_ade20k.py'
    assert not [p for p in problems(config, ade) if 'does not exist' not in p]
    found = problems(config, ade, {'model.backbone.patch_size': 4})
    found = [p for p in found if 'does not exist' not in p]
    assert found == ["model.neck.scales=[2.0, 1.0, 0.5, 0.25] do not turn the backbone's "
                     'stride-4 maps (its patch size) into strides 4, 8, 16, 32; set them '
                     'to [1.0, 0.5, 0.25, 0.125]'], found


@pytest.mark.parametrize('config', [
    'configs/cls/deit_b_p4_in1k_128.py', 'configs/cls/adv_l_p8_in1k_224_finetune.py',
    'configs/seg/adv_b_p2_upernet_ade20k.py',
    'configs/det/adv_b_p4_cascade-mask-rcnn_coco_1x.py',
    'configs/sweep/fmnist_seg_vit.py', 'tests/configs/cls_tiny.py'
])
def test_shipped_configs_pass_preflight(config, ade):
    # Every check but the data roots (the data are not on this machine).
    found = problems(config, ade)
    assert not [p for p in found if 'does not exist' not in p], found


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks RAM')
def test_train_stops_before_building_on_a_bad_config(ade, tmp_path):
    # Ten million processes on this node share its RAM: the memory guard
    # refuses even the tiny model.
    env = dict(os.environ, LOCAL_WORLD_SIZE=str(10**7))
    log = run(train_cmd(tmp_path / 'work', *data_options(ade),
                        'model.data_preprocessor.size=[60,60]',
                        'model.decode_head.in_channel=32'),
              expect_ok=False, env=env)
    lines = log.splitlines()
    first = lines.index(f'pre-flight check of {SEG} failed:')
    expected = ('  - model.decode_head.in_channel: LinearSegHead takes no ',
                '  - model.data_preprocessor.size 60x60 is not divisible ',
                '  - estimated peak training memory ')
    found = lines[first + 1:]
    assert len(found) == 3 and all(map(str.startswith, found, expected)), log
    assert 'available RAM per process (10000000 on this node)' in log
    assert not (tmp_path / 'work').exists()  # nothing was built


def test_memory_guard_estimate_and_fixes(ade):
    # The headline config ships with activation checkpointing; without it,
    # its batch of two does not fit 40 GiB.
    cfg = Config.fromfile('configs/seg/adv_b_p2_linear_ade20k.py')
    assert cfg.model.backbone.with_cp
    cfg.merge_from_dict({'model.backbone.with_cp': False})
    message = memory_problem(cfg, available=40 * 2**30, where='test GPU')
    assert message.startswith('estimated peak training memory ')
    assert 'exceeds the 40.0 GiB test GPU' in message
    assert '65,536 tokens' in message
    assert 'model.backbone.with_cp=True' in message
    assert '--skip-memory-check' in message
    cfg.merge_from_dict({'model.backbone.with_cp': True})
    assert memory_problem(cfg, available=40 * 2**30) is None
    assert memory_problem(Config.fromfile(SEG), available=2**30) is None


def test_one_cycle_scheduler_state_resumes_with_weights_only_loading(
        tmp_path):
    """OneCycle keeps its annealing function in its state; the checkpoint
    stores the state without it, loads weights-only, and the rebuilt
    scheduler continues exactly where the saved one was."""
    from mmengine.optim.scheduler import OneCycleLR

    from patchscale_mm.engine import WeightsOnlyCheckpointHook

    def scheduler():
        optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))],
                                      lr=1e-3)
        return optimizer, OneCycleLR(optimizer, eta_max=2e-3, total_steps=20,
                                     by_epoch=False)

    optimizer, saved = scheduler()
    for _ in range(7):
        optimizer.step()
        saved.step()
    checkpoint = {'param_schedulers': [saved.state_dict()]}
    WeightsOnlyCheckpointHook().before_save_checkpoint(None, checkpoint)
    path = tmp_path / 'ckpt.pth'
    torch.save(checkpoint, path)
    assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == []

    resumed_optimizer, resumed = scheduler()
    resumed.load_state_dict(
        torch.load(path, weights_only=True)['param_schedulers'][0])
    resumed_optimizer.param_groups[0]['lr'] = optimizer.param_groups[0]['lr']
    for _ in range(5):
        optimizer.step()
        saved.step()
        resumed_optimizer.step()
        resumed.step()
        assert resumed_optimizer.param_groups[0]['lr'] == \
            optimizer.param_groups[0]['lr']


# ---------------------------------------------------------------------------
# Non-finite loss
# ---------------------------------------------------------------------------
POISON_HOOK = """
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class PoisonHook(Hook):
    '''Makes the weights NaN before the 5th iteration.'''

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if batch_idx == 4:
            weight = runner.model.backbone.patch_embed.projection.weight
            weight.data.fill_(float('nan'))
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks RAM')
def test_nan_loss_stops_with_the_last_good_checkpoint(ade, tmp_path):
    (tmp_path / 'poison_hook.py').write_text(POISON_HOOK)
    config = tmp_path / 'poisoned.py'
    config.write_text(
        f"_base_ = '{ROOT / SEG}'\n"
        "custom_imports = dict(imports=['patchscale_mm.models', "
        "'patchscale_mm.engine', 'poison_hook'])\n"
        "custom_hooks = [dict(type='patchscale_mm.WeightsOnlyCheckpointHook'),"
        " dict(type='patchscale_mm.NonFiniteLossHook'), "
        "dict(type='PoisonHook')]\n")
    work_dir = tmp_path / 'work'
    # The run would not fit in 1e-7 of the RAM: --skip-memory-check lets
    # it train anyway.
    env = dict(os.environ, LOCAL_WORLD_SIZE=str(10**7),
               PYTHONPATH=f'{tmp_path}:{os.environ.get("PYTHONPATH", "")}')
    log = run(train_cmd(work_dir, *data_options(ade),
                        'train_cfg.max_iters=8',
                        'default_hooks.checkpoint.interval=2',
                        config=config, extra=['--skip-memory-check']),
              expect_ok=False, env=env)
    assert 'error: non-finite loss at iteration 5' in log
    assert f'the last good checkpoint is {work_dir}/iter_4.pth' in log
    assert 'Traceback' not in log
    assert sorted(p.name for p in work_dir.glob('*.pth')) == [
        'iter_2.pth', 'iter_4.pth'
    ]
    state = weights(work_dir / 'iter_4.pth')['state_dict']
    assert all(torch.isfinite(v).all() for v in state.values()
               if v.is_floating_point())


def test_non_finite_weights_are_never_saved():
    runner = _FakeRunner('.', lambda path: None)
    checkpoint = {'state_dict': {'w': torch.tensor([1., float('nan')])},
                  'meta': {'iter': 6}}
    with pytest.raises(NonFiniteLossError,
                       match='refusing to save a checkpoint at iteration 6'):
        NonFiniteLossHook().before_save_checkpoint(runner, checkpoint)


def test_dist_train_reports_preflight_problems_once(ade, tmp_path):
    """One report for a run of two processes, and no processes started."""
    env = dict(os.environ, PORT=str(31500 + os.getpid() % 1000))
    log = run(['bash', 'tools/dist_train.sh', SEG, '2', '--work-dir',
               str(tmp_path / 'work'), '--cfg-options', *data_options(ade),
               'model.decode_head.in_channels=64'], expect_ok=False, env=env)
    assert log.count(f'pre-flight check of {SEG} failed:') == 1, log[-3000:]
    assert 'model.decode_head.in_channels=64 does not match' in log
    assert 'torch.distributed' not in log and 'ChildFailedError' not in log
    assert not (tmp_path / 'work').exists()


# ---------------------------------------------------------------------------
# Distributed: a dead rank ends the job
# ---------------------------------------------------------------------------
def _rank_pids(launcher_pid):
    """RANK -> pid of the launcher's worker processes."""
    ranks = {}
    for pid in child_pids(launcher_pid):
        with open(f'/proc/{pid}/environ', 'rb') as env:
            for item in env.read().split(b'\0'):
                if item.startswith(b'RANK='):
                    ranks[int(item[5:])] = pid
    return ranks


@pytest.mark.skipif(not HAS_PROC, reason='needs /proc')
def test_killing_one_rank_ends_the_job(ade, tmp_path):
    env = dict(os.environ, PORT=str(30500 + os.getpid() % 1000))
    proc = subprocess.Popen(
        ['bash', 'tools/dist_train.sh', SEG, '2', '--work-dir',
         str(tmp_path / 'work'), '--cfg-options', *data_options(ade),
         'train_cfg.max_iters=100000'],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)
    ranks = {}
    try:
        for line in proc.stdout:  # until both ranks train
            if re.search(r'Iter\(train\) \[\s*2/100000\]', line):
                break
        else:
            pytest.fail('training did not start')
        ranks = _rank_pids(proc.pid)
        os.kill(ranks[1], signal.SIGKILL)
        killed = time.time()
        proc.communicate(timeout=60)
        assert proc.returncode != 0
        assert time.time() - killed < 60
    finally:
        for pid in [proc.pid, *ranks.values()]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()


# ---------------------------------------------------------------------------
# Elastic restarts, a frozen rank
# ---------------------------------------------------------------------------
def dist_train(work_dir, options, config, port, **env):
    return subprocess.Popen(
        ['bash', 'tools/dist_train.sh', str(config), '2', '--work-dir',
         str(work_dir), '--cfg-options', *options],
        cwd=ROOT, env=dict(os.environ, PORT=str(port), **env),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def read_until(proc, pattern, lines):
    for line in proc.stdout:
        lines.append(line)
        if re.search(pattern, line):
            return True
    return False


def end(proc, ranks=()):
    for pid in [proc.pid, *ranks]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.communicate()


RESTARTED_PEERS = """
import datetime, os, time
import torch, torch.distributed as dist
rank = int(os.environ['RANK'])
restart = int(os.environ['TORCHELASTIC_RESTART_COUNT'])
if restart and rank == 0:
    time.sleep(3)  # rank 1 looks rank 0 up before rank 0 has registered
dist.init_process_group('gloo', timeout=datetime.timedelta(seconds=20))
total = torch.tensor([rank + 1.0])
dist.all_reduce(total)
print(f'restart {restart} rank {rank} total {total.item():g}', flush=True)
if restart == 0 and rank == 1:
    os._exit(1)
dist.barrier()
dist.destroy_process_group()
"""


def test_restarted_processes_do_not_meet_the_previous_round(tmp_path):
    """torchrun's restarted processes must find each other, not the
    addresses their predecessors left in a store shared across rounds
    (pytorch/pytorch#135712): with rank 0 of the second round registering
    late, a reused store hands rank 1 a dead address."""
    script = tmp_path / 'peers.py'
    script.write_text(RESTARTED_PEERS)
    out = subprocess.run(
        ['bash', 'tools/dist_run.sh', '2', str(script)], cwd=ROOT,
        env=dict(os.environ, MAX_RESTARTS='1',
                 PORT=str(31500 + os.getpid() % 1000)),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        timeout=120).stdout
    assert 'restart 1 rank 1 total 3' in out, out[-4000:]
    assert 'restart 1 rank 0 total 3' in out, out[-4000:]


def test_a_shared_store_across_restarts_is_named_at_start(monkeypatch):
    """torchrun launched by hand with restarts and its shared store: train
    says so in one line; with a fresh store per round, nothing."""
    from patchscale_mm.apis.distributed import restart_store_warning
    monkeypatch.setenv('TORCHELASTIC_MAX_RESTARTS', '2')
    monkeypatch.setenv('TORCHELASTIC_USE_AGENT_STORE', 'True')
    assert 'TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1' in restart_store_warning()
    monkeypatch.setenv('TORCHELASTIC_USE_AGENT_STORE', 'False')
    assert restart_store_warning() is None
    monkeypatch.setenv('TORCHELASTIC_USE_AGENT_STORE', 'True')
    monkeypatch.setenv('TORCHELASTIC_MAX_RESTARTS', '0')
    assert restart_store_warning() is None


@pytest.mark.skipif(not HAS_PROC, reason='needs /proc')
def test_torchrun_restarts_a_killed_worker_and_ends_the_same(
        ade, tmp_path, user_config):
    """MAX_RESTARTS=1: one of two workers is SIGKILLed mid-run, torchrun
    restarts the group, which resumes from the last checkpoint; the final
    weights are an uninterrupted run's."""
    options = exact_options(ade, 12)
    port = 32500 + os.getpid() % 1000
    reference = dist_train(tmp_path / 'reference', options, user_config,
                           port)
    out, _ = reference.communicate(timeout=TIMEOUT)
    assert reference.returncode == 0, out[-4000:]

    proc = dist_train(tmp_path / 'work', options, user_config, port + 1,
                      MAX_RESTARTS='1')
    lines, ranks = [], {}
    try:
        assert read_until(proc, r'Iter\(train\) \[\s*6/12\]', lines), \
            ''.join(lines)[-4000:]
        ranks = _rank_pids(proc.pid)
        os.kill(ranks[1], signal.SIGKILL)
        out, _ = proc.communicate(timeout=TIMEOUT)
    finally:
        end(proc, ranks.values())
    log = ''.join(lines) + out
    assert proc.returncode == 0, log[-4000:]
    assert 'resumed epoch: 0, iter: 4' in log  # the checkpoint before
    assert 'shares its store across restarts' not in log
    assert_same_weights(tmp_path / 'reference' / 'iter_12.pth',
                        tmp_path / 'work' / 'iter_12.pth')


@pytest.mark.skipif(not HAS_PROC, reason='needs /proc')
def test_a_stopped_rank_ends_the_job_naming_it(ade, tmp_path):
    """SIGSTOP freezes rank 1 (a hung node): rank 0 does not wait for ever
    but stops within the collective timeout (10 s here), naming rank 1."""
    proc = dist_train(tmp_path / 'work', data_options(ade) + [
        'train_cfg.max_iters=100000'], SEG, 33500 + os.getpid() % 1000,
        PATCHSCALE_DIST_TIMEOUT='10')
    lines, ranks = [], {}
    try:
        assert read_until(proc, r'Iter\(train\) \[\s*2/100000\]', lines)
        ranks = _rank_pids(proc.pid)
        os.kill(ranks[1], signal.SIGSTOP)
        stopped = time.time()
        assert read_until(proc, r'error: rank 1 did not answer', lines), \
            ''.join(lines)[-4000:]
        named = time.time() - stopped
        # torchrun then ends the frozen process too (SIGKILL after 30 s).
        out, _ = proc.communicate(timeout=90)
    finally:
        end(proc, ranks.values())
    assert named < 10 + 5, named
    assert proc.returncode != 0


# ---------------------------------------------------------------------------
# A full disk
# ---------------------------------------------------------------------------
FILL_DISK_HOOK = """
import os, resource, shutil, signal
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class FillDiskHook(Hook):
    '''After the checkpoint of iteration 4, leaves less free space in the
    work dir than a checkpoint needs (or, without a small file system of
    its own, caps the size of files this process writes).'''

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if batch_idx != 4:
            return
        size = os.path.getsize(os.path.join(runner.work_dir, 'iter_4.pth'))
        if os.environ.get('FILL_DISK') == '1':
            free = shutil.disk_usage(runner.work_dir).free
            with open(os.path.join(runner.work_dir, 'filler'), 'wb') as f:
                f.truncate(0)
                f.write(b'x' * max(0, free - size // 2))
        else:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (size // 2, size // 2))
"""


@pytest.fixture
def small_work_dir(tmp_path):
    """A 32 MiB tmpfs, or None where mounting is not allowed."""
    mount = tmp_path / 'small'
    mount.mkdir()
    if subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=32m', 'tmpfs',
                       str(mount)], capture_output=True).returncode != 0:
        yield None
        return
    try:
        yield mount
    finally:
        subprocess.run(['umount', '-l', str(mount)])


def test_a_full_disk_stops_the_run_and_keeps_the_last_checkpoint(
        ade, tmp_path, small_work_dir):
    (tmp_path / 'fill_disk_hook.py').write_text(FILL_DISK_HOOK)
    config = tmp_path / 'filling.py'
    config.write_text(
        f"_base_ = '{ROOT / SEG}'\n"
        "custom_imports = dict(imports=['patchscale_mm.models', "
        "'patchscale_mm.engine', 'fill_disk_hook'])\n"
        "custom_hooks = [dict(type='patchscale_mm.WeightsOnlyCheckpointHook'),"
        " dict(type='FillDiskHook')]\n")
    work_dir = (small_work_dir or tmp_path) / 'work'
    env = dict(os.environ, FILL_DISK='1' if small_work_dir else '0',
               PYTHONPATH=f'{tmp_path}:{os.environ.get("PYTHONPATH", "")}')
    log = run(train_cmd(work_dir, *data_options(ade),
                        'train_cfg.max_iters=12', 'train_cfg.val_interval=100',
                        'default_hooks.checkpoint.interval=4', config=config),
              expect_ok=False, env=env)
    why = 'No space left on device' if small_work_dir else 'File too large'
    last = log.strip().splitlines()[-1]
    assert re.fullmatch(
        rf'error: could not write {work_dir}/iter_8\.pth \([\d.,]+ MiB\): '
        rf'{why}, [\d.,]+ MiB free in {work_dir}; the previous checkpoint is '
        'intact, free space \\(or set max_keep_ckpts\\) and run the same '
        'command to resume', last), log[-3000:]
    assert 'Traceback' not in log
    assert (work_dir / 'last_checkpoint').read_text() == \
        str(work_dir / 'iter_4.pth')
    check_checkpoint_file(str(work_dir / 'iter_4.pth'))
    assert weights(work_dir / 'iter_4.pth')['meta']['iter'] == 4
    assert not list(work_dir.glob('.*.tmp')) and \
        not (work_dir / 'iter_8.pth').exists()
    # The log file holds every iteration and the reason it stopped.
    text = next(work_dir.glob('*/*.log')).read_text()
    assert 'Iter(train) [ 8/12]' in text and last in text


# ---------------------------------------------------------------------------
# Bad samples
# ---------------------------------------------------------------------------
@pytest.fixture(scope='module')
def imagenet_with_a_truncated_jpeg(tmp_path_factory):
    """A tiny ImageNet folder whose 3rd training image is a JPEG cut in
    half; returns (root, that file's path)."""
    import cv2

    from patchscale_mm.fixtures import make_imagenet_fixture
    root = make_imagenet_fixture(tmp_path_factory.mktemp('in') / 'imagenet',
                                 16, 8, img_size=32)
    ann = root / 'meta' / 'train.txt'
    entries = ann.read_text().splitlines()
    name, label = entries[2].split()
    jpeg = Path(name).with_suffix('.JPEG')
    assert cv2.imwrite(str(root / 'train' / jpeg),
                       cv2.imread(str(root / 'train' / name)))
    data = (root / 'train' / jpeg).read_bytes()
    (root / 'train' / jpeg).write_bytes(data[:len(data) // 2])
    entries[2] = f'{jpeg} {label}'
    ann.write_text('\n'.join(entries) + '\n')
    return root, root / 'train' / jpeg


def cls_options(root, *extra):
    return [f'{loader}.dataset.data_root={root}'
            for loader in ('train_dataloader', 'val_dataloader')] + [
                'train_cfg.max_epochs=1', 'train_dataloader.batch_size=4',
                'train_dataloader.num_workers=1',
                'train_dataloader.sampler.type=DefaultSampler', *extra]


def test_a_truncated_jpeg_stops_the_run_naming_it(
        imagenet_with_a_truncated_jpeg, tmp_path):
    root, bad = imagenet_with_a_truncated_jpeg
    log = run(train_cmd(tmp_path / 'work', *cls_options(root),
                        config='tests/configs/cls_tiny.py'), expect_ok=False)
    assert log.strip().splitlines()[-1] == (
        f'error: bad training sample 2 of ImageNet: {bad}: truncated JPEG '
        '(no end-of-image marker)'), log[-3000:]
    assert 'Traceback' not in log

    # Switched to skipping, the epoch completes and the log counts it.
    log = run(train_cmd(tmp_path / 'skip', *cls_options(
        root, 'train_dataloader.dataset.skip_bad_samples=True'),
        config='tests/configs/cls_tiny.py'))
    assert (f'skipped bad training sample 2 of ImageNet: {bad}: truncated '
            'JPEG (no end-of-image marker) (1 skipped in process') in log
    assert (tmp_path / 'skip' / 'epoch_1.pth').is_file()
