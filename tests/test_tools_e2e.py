"""tools/train.py, test.py, dist_train.sh and slurm_train.sh end to end on
CPU, with the shipped configs shrunk by tests/configs and datasets in the real
ImageNet / ADE20k / COCO layouts made from Fashion-MNIST."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from patchscale_mm.fixtures import (make_ade20k_fixture,
                                    make_coco_fixture,
                                    make_imagenet_fixture)

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 600


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp('data')
    return dict(
        cls=make_imagenet_fixture(root / 'imagenet', 40, 20, img_size=32),
        seg=make_ade20k_fixture(root / 'ade', 16, 4),
        det=make_coco_fixture(root / 'coco', 8, 4))


def data_options(task, root):
    """--cfg-options pointing a test config at a fixture."""
    loaders = ('train_dataloader', 'val_dataloader', 'test_dataloader')
    opts = [f'{loader}.dataset.data_root={root}/' for loader in loaders]
    if task == 'det':
        ann = f'{root}/annotations/instances_val2017.json'
        opts += [f'val_evaluator.ann_file={ann}',
                 f'test_evaluator.ann_file={ann}']
    return ['--cfg-options'] + opts


def run(args, **kwargs):
    out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True,
                         timeout=TIMEOUT, **kwargs)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    return out.stdout + out.stderr


def metric(log, name):
    """The last value of ``name`` printed by MMEngine."""
    values = re.findall(rf'{re.escape(name)}: (-?[\d.]+)', log)
    assert values, f'{name} not in the log'
    return float(values[-1])


@pytest.mark.parametrize('task,config,checkpoint,metrics', [
    ('cls', 'cls_tiny.py', 'epoch_2.pth',
     ['accuracy/top1', 'accuracy/top5']),
    ('seg', 'seg_tiny.py', 'iter_6.pth', ['mIoU', 'aAcc']),
    ('det', 'det_tiny.py', 'epoch_1.pth',
     ['coco/bbox_mAP', 'coco/segm_mAP']),
])
def test_train_then_test(data, tmp_path, task, config, checkpoint, metrics):
    options = data_options(task, data[task])
    work_dir = tmp_path / 'work'
    run([sys.executable, 'tools/train.py', f'tests/configs/{config}',
         '--work-dir', str(work_dir)] + options)
    ckpt = work_dir / checkpoint
    assert ckpt.is_file()
    # The run's own checkpoints load with weights-only unpickling.
    assert torch.serialization.get_unsafe_globals_in_checkpoint(ckpt) == []

    out = tmp_path / 'preds.pkl'
    log = run([sys.executable, 'tools/test.py', f'tests/configs/{config}',
               str(ckpt), '--work-dir', str(tmp_path / 'test'), '--out',
               str(out)] + options)
    for name in metrics:
        assert 0 <= metric(log, name) <= 100
    assert out.is_file() and out.stat().st_size > 0
    check_pictures(task, config, ckpt, options, tmp_path, out)


def check_pictures(task, config, ckpt, options, tmp_path, predictions):
    """--show-dir draws the first N test images through the task's own
    visualizer; --tta (segmentation, detection) runs and reports a metric."""
    import mmcv
    from mmengine.fileio import load
    show = tmp_path / 'show'
    log = run([sys.executable, 'tools/test.py', f'tests/configs/{config}',
               str(ckpt), '--work-dir', str(tmp_path / 'show_work'),
               '--show-dir', str(show), '--show-limit', '3'] +
              (['--tta'] if task != 'cls' else []) + options)
    if task != 'cls':
        assert metric(log, 'mIoU' if task == 'seg' else 'coco/bbox_mAP') >= 0
    pictures = sorted(show.glob('*.png'))
    assert len(pictures) == 3
    by_stem = {Path(p['img_path']).stem: p for p in load(predictions)}
    for picture in pictures:
        drawn = mmcv.imread(picture, channel_order='rgb').astype(int)
        sample = by_stem[picture.stem]
        image = mmcv.imread(sample['img_path'], channel_order='rgb').astype(int)
        if task == 'cls':  # class names and scores written on the image
            image = mmcv.imresize(image.astype('uint8'), drawn.shape[1::-1]).astype(int)
            assert drawn.shape == image.shape and (drawn != image).any()
            continue
        # Ground truth on the left, prediction on the right.
        height, width = image.shape[:2]
        assert drawn.shape == (height, 2 * width, 3)
        truth, prediction = drawn[:, :width], drawn[:, width:]
        assert (truth != image).any()
        drawn_any = task == 'seg' or bool((sample['pred_instances']['scores'] >= 0.3).any())
        assert (prediction != image).any() == drawn_any


def test_resume_continues_from_the_last_checkpoint(data, tmp_path):
    options = data_options('cls', data['cls'])
    work_dir = tmp_path / 'work'
    base = [sys.executable, 'tools/train.py', 'tests/configs/cls_tiny.py',
            '--work-dir', str(work_dir)]
    run(base + options + ['train_cfg.max_epochs=1'])
    log = run(base + ['--resume'] + options)
    assert 'resumed epoch: 1' in log
    assert 'Epoch(train) [1]' not in log  # epoch 1 is not trained again
    assert (work_dir / 'epoch_2.pth').is_file()


def test_dist_train_two_cpu_processes(data, tmp_path):
    work_dir = tmp_path / 'work'
    env = dict(os.environ, PORT=str(29500 + os.getpid() % 1000))
    run(['bash', 'tools/dist_train.sh', 'tests/configs/seg_tiny.py', '2',
         '--work-dir', str(work_dir)] + data_options('seg', data['seg']),
        env=env)
    assert (work_dir / 'iter_6.pth').is_file()
    logs = sorted(p.name for p in work_dir.glob('*/*.log'))
    assert len(logs) == 2 and logs[1].endswith('_rank1.log'), logs
    rank1 = next(work_dir.glob('*/*_rank1.log')).read_text()
    assert 'Iter(train) [6/6]' in rank1


STAND_IN_SRUN = """#!/usr/bin/env bash
printf '%s\\n' "$@" > "$SRUN_RECORD"
"""


@pytest.fixture
def srun(tmp_path):
    """A stand-in ``srun`` on PATH that records its arguments."""
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    (bin_dir / 'srun').write_text(STAND_IN_SRUN)
    (bin_dir / 'srun').chmod(0o755)
    record = tmp_path / 'srun_args'

    def call(script, *args, **env):
        run(['bash', f'tools/{script}', *args],
            env=dict(os.environ, PATH=f'{bin_dir}:{os.environ["PATH"]}',
                     SRUN_RECORD=str(record), **env))
        return record.read_text().splitlines()
    return call


def test_slurm_train_builds_the_srun_command(srun):
    args = srun('slurm_train.sh', 'gpu-part', 'job1', 'configs/x.py',
                'work_dirs/x', '--amp', GPUS='16', GPUS_PER_NODE='8',
                CPUS_PER_TASK='4', SRUN_ARGS='--qos=high --time=10')
    assert args[:2] == ['-p', 'gpu-part']
    for flag in ('--job-name=job1', '--gres=gpu:8', '--ntasks=16',
                 '--ntasks-per-node=8', '--cpus-per-task=4',
                 '--kill-on-bad-exit=1', '--qos=high', '--time=10'):
        assert flag in args
    script = args.index(str(ROOT / 'tools' / 'train.py'))
    assert args[script + 1:script + 7] == [
        'configs/x.py', '--work-dir', 'work_dirs/x', '--amp', '--launcher',
        'slurm'
    ]


def test_slurm_on_cpu_nodes_requests_no_gpus(srun):
    args = srun('slurm_train.sh', 'cpu', 'job2', 'configs/x.py', GPUS='2',
                GPUS_PER_NODE='2', CPUS_PER_TASK='1', DEVICE='cpu')
    assert not any(a.startswith('--gres') for a in args)
    assert '--ntasks-per-node=2' in args and '--work-dir' not in args
    args = srun('slurm_test.sh', 'cpu', 'job3', 'configs/x.py', 'model.pth',
                GPUS='4', GPUS_PER_NODE='0')
    assert not any(a.startswith('--gres') for a in args)
    assert '--ntasks-per-node=4' in args
    script = args.index(str(ROOT / 'tools' / 'test.py'))
    assert args[script + 1:] == [
        'configs/x.py', 'model.pth', '--launcher', 'slurm'
    ]


def test_run_releases_the_model_before_the_process_group(monkeypatch):
    """A CPU distributed run tears its gloo group down itself, after the
    Runner's DDP wrapper (which holds the group) is gone: a group left to
    interpreter exit can abort the process after a successful run."""
    import gc
    import weakref

    import torch.distributed as dist
    from mmengine.config import Config

    from patchscale_mm.apis import runner

    collected_while_initialized = []

    class StubRunner:
        def __init__(self):
            self.model = torch.nn.parallel.DistributedDataParallel(
                torch.nn.Linear(2, 2))
            self.cycle = self  # freed only by the garbage collector
            weakref.finalize(self.model, lambda: collected_while_initialized
                             .append(dist.is_initialized()))

        def train(self):
            return self.model

    monkeypatch.setattr(runner.Runner, 'from_cfg', lambda cfg: StubRunner())
    for key, value in dict(RANK='0', WORLD_SIZE='1', LOCAL_RANK='0',
                           MASTER_ADDR='127.0.0.1',
                           MASTER_PORT=str(20000 + os.getpid() % 5000)).items():
        monkeypatch.setenv(key, value)
    cfg = Config(dict(launcher='pytorch', model=dict(type='Stub')))
    gc.disable()  # the cycle must be broken by run() itself
    try:
        runner.run(cfg, 'train')
    finally:
        gc.enable()
    assert collected_while_initialized == [True]
    assert not dist.is_initialized()


def test_tensorboard_backend_from_the_command_line(data, tmp_path):
    """MMEngine's TensorBoard backend through --cfg-options: the training
    loss, learning rate and the validation metrics reach the event file."""
    from tensorboard.backend.event_processing.event_accumulator import \
        EventAccumulator
    work_dir = tmp_path / 'work'
    options = data_options('cls', data['cls'])
    run([sys.executable, 'tools/train.py', 'tests/configs/cls_tiny.py',
         '--work-dir', str(work_dir)] + options +
        ['visualizer.vis_backends.0.type=TensorboardVisBackend'])
    events, = work_dir.glob('*/vis_data/events.out.tfevents.*')
    accumulator = EventAccumulator(str(events.parent))
    accumulator.Reload()
    tags = set(accumulator.Tags()['scalars'])
    assert {'loss', 'lr', 'accuracy/top1', 'test/loss'} <= tags, tags
    losses = [e.value for e in accumulator.Scalars('loss')]
    assert len(losses) >= 2 and all(0 < v < 20 for v in losses)
