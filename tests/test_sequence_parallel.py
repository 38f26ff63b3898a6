"""Sequence parallelism on CPU (gloo) against one process: 2 and 4 ranks
split every image's tokens, and the outputs, the input gradients and every
parameter gradient equal those of the same model on one process."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from patchscale_mm.models import Adventurer, PatchViT
from patchscale_mm.parallel import init_sequence_parallel, set_current

TOLERANCE = 1e-5  # relative to the largest value, fp32

ADVENTURER = dict(arch=dict(embed_dims=32, num_layers=8, mlp_dims=48),
                  mixer_cfg=dict(headdim=16, d_state=8, chunk_size=16),
                  drop_path_rate=0.2, flip_rule='paper')
VIT = dict(arch=dict(embed_dims=32, num_layers=4, num_heads=2, mlp_dims=48),
           drop_path_rate=0.2)


def build(case):
    family, out_type, with_cp = case['family'], case['out_type'], case['with_cp']
    cls, kwargs = (Adventurer, ADVENTURER) if family == 'adventurer' else (PatchViT, VIT)
    return cls(img_size=case['img_size'], patch_size=case['patch'], out_type=out_type,
               out_indices=(1, -1), with_cp=with_cp, **kwargs)


def step(model, image, weights):
    """Forward, a loss that weighs every output element, backward:
    (outputs, input gradient, parameter gradients)."""
    image = image.clone().requires_grad_(True)
    torch.manual_seed(1)  # the same drop-path draws in both runs
    outs = model(image)
    loss = sum((out * w).sum() for out, w in zip(outs, weights))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    return [o.detach() for o in outs], image.grad, grads


def worker(rank, size, port, case, result_path):
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=size)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    dtype = getattr(torch, case.get('dtype', 'float32'))
    model = build(case).train().to(dtype)
    image = torch.randn(2, 3, case['img_size'], case['img_size'], dtype=dtype)
    weights = [torch.randn(o.shape, dtype=dtype) for o in model(image)]
    reference = step(model, image, weights)

    init_sequence_parallel(size)
    outs, image_grad, grads = step(model, image, weights)
    # Each rank holds `size` times its share of the gradient (every rank
    # computes the loss): the group's sum over `size` is the gradient.
    dist.all_reduce(image_grad)
    for g in grads.values():
        dist.all_reduce(g)
    errors = {}

    def compare(name, ours, theirs):
        scale = theirs.abs().max().clamp_min(1e-12)
        errors[name] = float((ours - theirs).abs().max() / scale)

    for i, (ours, theirs) in enumerate(zip(outs, reference[0])):
        compare(f'output {i}', ours, theirs)
    compare('input grad', image_grad / size, reference[1])
    for name, g in grads.items():
        compare(name, g / size, reference[2][name])
    set_current(None)
    if rank == 0:
        with open(result_path, 'w') as f:
            json.dump(errors, f)
    dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def run_case(tmp_path, size, **case):
    result = tmp_path / 'errors.json'
    mp.start_processes(worker, args=(size, free_port(), case, str(result)),
                       nprocs=size, start_method='spawn')
    errors = json.loads(result.read_text())
    assert len(errors) > 10
    worst = max(errors, key=errors.get)
    assert errors[worst] < TOLERANCE, (worst, errors[worst])


# 10x10 = 100 patch tokens + the class token: 101 tokens, split 51/50 or
# 26/25/25/25, shards that are not multiples of the scan's chunk of 16.
@pytest.mark.parametrize('size', [2, 4])
@pytest.mark.parametrize('with_cp', [False, True])
def test_adventurer_featmap(tmp_path, size, with_cp):
    run_case(tmp_path, size, family='adventurer', out_type='featmap', with_cp=with_cp,
             img_size=20, patch=2)


@pytest.mark.parametrize('size', [pytest.param(2, marks=pytest.mark.sum_order), 4])
def test_adventurer_class_token(tmp_path, size):
    run_case(tmp_path, size, family='adventurer', out_type='cls_token', with_cp=False,
             img_size=20, patch=2)


@pytest.mark.parametrize('size', [pytest.param(2, marks=pytest.mark.sum_order), 4])
@pytest.mark.parametrize('out_type', ['cls_token', 'featmap'])
def test_vit(tmp_path, size, out_type):
    run_case(tmp_path, size, family='vit', out_type=out_type, with_cp=size == 4,
             img_size=20, patch=2)


def test_too_many_ranks_for_the_tokens_is_one_clear_error():
    from patchscale_mm.parallel import SequenceGroup, TokenShards
    model = Adventurer(img_size=4, patch_size=2, **ADVENTURER)
    shards = TokenShards(SequenceGroup(None, 0, 4, 0, 1), ((0, 2), (2, 3), (3, 4), (4, 5)))
    with pytest.raises(ValueError, match='sequence_parallel.size 4 leaves 1 tokens'):
        model._check_shards(shards)


# -- through tools/train.py and tools/dist_train.sh ----------------------------
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    from patchscale_mm.fixtures import (make_ade20k_fixture,
                                        make_imagenet_fixture)
    root = tmp_path_factory.mktemp('data')
    return dict(cls=make_imagenet_fixture(root / 'imagenet', 40, 8, img_size=32),
                seg=make_ade20k_fixture(root / 'ade', 20, 4))


def train(task, data_root, work_dir, procs=1, extra=()):
    """Trains a test config on ``procs`` CPU processes; returns the
    per-iteration training losses from the run's scalars."""
    config = f'tests/configs/{task}_tiny.py'
    options = [f'{loader}.dataset.data_root={data_root}/'
               for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader')]
    if task == 'cls':  # 40 images, 8 per step: 5 iterations
        options += ['train_cfg.max_epochs=1']
    else:
        options += ['train_cfg.max_iters=5', 'train_cfg.val_interval=5']
    options += list(extra)
    args = ['--work-dir', str(work_dir), '--cfg-options'] + options
    if procs == 1:
        cmd = [sys.executable, 'tools/train.py', config] + args
    else:
        cmd = ['bash', 'tools/dist_train.sh', config, str(procs)] + args
    env = dict(os.environ, PORT=str(free_port()))
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    return scalar_losses(work_dir)


def scalar_losses(work_dir):
    found = {}
    for scalars in sorted(Path(work_dir).glob('*/vis_data/scalars.json')):
        for line in scalars.read_text().splitlines():
            record = json.loads(line)
            if 'loss' in record:
                found[record['step']] = record['loss']
    return found


def assert_same_losses(ours, theirs):
    assert sorted(ours) == sorted(theirs) and len(ours) >= 5, (ours, theirs)
    for step, loss in theirs.items():
        assert abs(ours[step] - loss) <= 1e-5 * abs(loss), (step, ours, theirs)


@pytest.mark.parametrize('task', ['cls', 'seg'])
def test_two_ranks_train_as_one_process(task, data, tmp_path):
    """sequence_parallel.size=2 on 2 processes: the same losses, iteration
    by iteration, as one process on the same global batch."""
    one = train(task, data[task], tmp_path / 'one')
    two = train(task, data[task], tmp_path / 'sp2', procs=2,
                extra=['sequence_parallel.size=2'])
    assert_same_losses(two, one)
    if task == 'seg':
        # The checkpoint written under sequence parallelism resumes with it
        # (the same losses onwards) and without it.
        checkpoint = tmp_path / 'sp2' / 'iter_3.pth'
        again = train(task, data[task], tmp_path / 'again', procs=2,
                      extra=['sequence_parallel.size=2', f'load_from={checkpoint}',
                             'resume=True'])
        assert_same_losses({s: again[s] for s in (4, 5)} | {1: 1, 2: 1, 3: 1, 6: 1},
                           {s: two[s] for s in (4, 5)} | {1: 1, 2: 1, 3: 1, 6: 1})
        alone = train(task, data[task], tmp_path / 'alone',
                      extra=[f'load_from={checkpoint}', 'resume=True'])
        assert sorted(alone) == [4, 5]


def test_data_and_sequence_parallel_grid(data, tmp_path):
    """2 data-parallel replicas x 2 sequence ranks on 4 processes train as
    2 data-parallel processes: the same samples, draws and averages."""
    two_epochs = ['train_cfg.max_epochs=2']  # 3 steps of 2 x 8 images each
    dp = train('cls', data['cls'], tmp_path / 'dp2', procs=2, extra=two_epochs)
    grid = train('cls', data['cls'], tmp_path / 'grid', procs=4,
                 extra=two_epochs + ['sequence_parallel.size=2'])
    assert_same_losses(grid, dp)
    log, = [p for p in (tmp_path / 'grid').glob('*/*.log') if '_rank' not in p.name]
    assert 'each image split over 2 ranks, 2 data-parallel replica(s)' in log.read_text()


def test_size_must_divide_the_processes(data, tmp_path):
    config = 'tests/configs/cls_tiny.py'
    out = subprocess.run(
        [sys.executable, 'tools/train.py', config, '--work-dir', str(tmp_path),
         '--cfg-options', f'train_dataloader.dataset.data_root={data["cls"]}/',
         'sequence_parallel.size=2'],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert 'sequence_parallel.size=2 does not divide the 1 processes' in out.stdout + out.stderr


def test_memory_guard_counts_per_rank_memory_and_names_the_split():
    """The guard estimates each rank's share under sequence parallelism
    and, when a run does not fit, names the split that makes it fit."""
    import re

    from mmengine.config import Config

    from patchscale_mm.config_checks import (estimate_training_memory,
                                             memory_problem)
    cfg = Config.fromfile(str(ROOT / 'configs/seg/adv_b_p2_linear_ade20k.py'))
    cfg.merge_from_dict({'model.backbone.with_cp': False})
    message = memory_problem(cfg, available=40 * 2**30, where='test GPU')
    size = int(re.search(r'sequence_parallel\.size=(\d+), the tokens', message)[1])
    one = estimate_training_memory(cfg)
    cfg.merge_from_dict({'sequence_parallel': dict(size=size)})
    split = estimate_training_memory(cfg)
    assert memory_problem(cfg, available=40 * 2**30) is None
    # Adventurer: each rank keeps 1/size of the activations.
    activations = one.total() - one.state_bytes
    assert split.total() - split.state_bytes == pytest.approx(activations / size, rel=1e-6)
    assert size == min(s for s in (2, 4, 8, 16) if one.state_bytes + activations / s <= 40 * 2**30)
