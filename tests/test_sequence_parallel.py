"""Sequence parallelism on CPU (gloo) against one process: 2 and 4 ranks
split every image's tokens, and the outputs, the input gradients and every
parameter gradient equal those of the same model on one process."""
import json
import os
import socket

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


@pytest.mark.parametrize('size', [2, 4])
def test_adventurer_class_token(tmp_path, size):
    run_case(tmp_path, size, family='adventurer', out_type='cls_token', with_cp=False,
             img_size=20, patch=2)


@pytest.mark.parametrize('size', [2, 4])
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
