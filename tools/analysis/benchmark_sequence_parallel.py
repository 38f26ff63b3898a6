"""Sequence parallelism on this machine: activation memory per rank, bytes
each rank sends, and step time, at several sequence-parallel sizes.

    python tools/analysis/benchmark_sequence_parallel.py
    python tools/analysis/benchmark_sequence_parallel.py --settings adventurer-t:448:1 \
        --sizes 4 --with-cp          # 200,705 tokens, forward + backward

Each setting (model:img_size:patch) runs as SIZE CPU processes (gloo) that
split one image's tokens (batch 1), with Adventurer's mixer on its
composable path at every size (the CUDA path; the fused CPU kernel of a
single process has no state passing). Per rank it measures the activations
autograd keeps after the forward pass (distinct storages, less those of an
8x8-patch image: the autocast copies of the weights), the bytes the rank contributes to the
collectives of one training step (forward and backward; an all-gather
counts its input once, an all-reduce its tensor), the process's peak RSS,
and the wall time of one forward + backward step. The processes share this
machine's cores, so times are for information; memory and bytes are per
rank. Beside the bytes, what an all-to-all scheme (Megatron's sequence
<-> head re-sharding around each token mixer) would send: two all-to-alls
of the block's activations per layer forward and two backward, each
sending (size-1)/size of the rank's shard.
"""
import argparse
import json
import os
import resource
import socket
import sys
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from patchscale_mm.analysis import cost as cm
from patchscale_mm.models.zoo import parse_model_name


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        '--settings', nargs='+',
        default=['adventurer-b:224:2', 'adventurer-b:224:4', 'deit-b:224:4'],
        help='model:img_size:patch (default: Adventurer-B/2 and /4 and '
        'DeiT-B/4 at 224 px)')
    parser.add_argument('--sizes', type=int, nargs='+', default=[1, 2, 4])
    parser.add_argument('--precision', choices=cm.PRECISIONS, default='amp',
                        help="'amp': bf16 autocast (default); 'fp32'")
    parser.add_argument('--with-cp', action='store_true',
                        help='activation checkpointing in every block')
    parser.add_argument('--skip-memory', action='store_true',
                        help='time the step only (no separate forward pass '
                        'to count saved activations)')
    return parser.parse_args(argv)


class Traffic:
    """Counts the bytes this rank contributes to torch.distributed's
    all_gather and all_reduce (what the sequence-parallel code calls)."""

    def __init__(self):
        self.bytes = 0
        self._gather, self._reduce = dist.all_gather, dist.all_reduce

        def all_gather(parts, tensor, *args, **kwargs):
            self.bytes += tensor.numel() * tensor.element_size()
            return self._gather(parts, tensor, *args, **kwargs)

        def all_reduce(tensor, *args, **kwargs):
            self.bytes += tensor.numel() * tensor.element_size()
            return self._reduce(tensor, *args, **kwargs)

        dist.all_gather, dist.all_reduce = all_gather, all_reduce


def worker(rank, size, port, setting, precision, with_cp, skip_memory,
           out_path):
    from patchscale_mm.parallel import init_sequence_parallel
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=size)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // size))
    name, img_size, patch = setting
    _, family, arch = (name, *parse_model_name(name))
    torch.manual_seed(0)
    model = cm.build_backbone(family, arch, img_size, patch)
    model.with_cp = with_cp
    model.train()
    for module in model.modules():
        # The mixer's composable path at every size: the one CUDA runs and
        # sequence parallelism uses (the fused CPU kernel has no state
        # passing).
        if hasattr(module, 'fused'):
            module.fused = False
    init_sequence_parallel(size)
    image = torch.randn(1, 3, img_size, img_size)
    saved = None
    if not skip_memory:
        # Activations: what a batch-1 forward keeps, less what a small
        # image keeps (the autocast copies of the weights, which do not
        # grow with the tokens).
        small = torch.randn(1, 3, 8 * patch, 8 * patch)
        saved = (cm.saved_tensor_bytes(model, image, precision) -
                 cm.saved_tensor_bytes(model, small, precision))
    traffic = Traffic()
    start = time.perf_counter()
    with cm.autocast(precision):
        out = model(image)
    sum(o.float().sum() for o in out).backward()
    seconds = time.perf_counter() - start
    result = dict(rank=rank, saved=saved, sent=traffic.bytes,
                  seconds=seconds,
                  rss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    gathered = [None] * size
    dist.all_gather_object(gathered, result)
    if rank == 0:
        with open(out_path, 'w') as f:
            json.dump(gathered, f)
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def run_setting(setting, size, args) -> list:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, 'ranks.json')
        mp.start_processes(
            worker,
            args=(size, free_port(), setting, args.precision, args.with_cp,
                  args.skip_memory, out),
            nprocs=size, start_method='spawn')
        with open(out) as f:
            return json.load(f)


def all_to_all_bytes(family, arch, img_size, patch, size, precision) -> int:
    """Per rank and step: two all-to-alls of the shard's activations around
    each block's token mixer, forward and backward."""
    d = cm.model_dims(family, arch)
    tokens = cm.num_patches(img_size, patch) + 1
    element = 2 if precision == 'amp' else 4
    shard = tokens / size * d['embed_dims'] * element
    return int(4 * d['num_layers'] * shard * (size - 1) / size)


def parse_setting(text: str):
    try:
        name, img_size, patch = text.split(':')
        parse_model_name(name)
        return name, int(img_size), int(patch)
    except ValueError:
        raise SystemExit(f'error: setting {text!r} is not model:img_size:patch, '
                         'e.g. adventurer-b:224:2') from None


def main(argv=None) -> int:
    args = parse_args(argv)
    settings = [parse_setting(s) for s in args.settings]
    if min(args.sizes) < 1:
        raise SystemExit('error: --sizes must be at least 1')
    print(f'CPU: {os.cpu_count()} logical cores; precision {args.precision}; '
          f'activation checkpointing {"on" if args.with_cp else "off"}; '
          'batch 1, one training step.\n')
    print('| setting | tokens | size | activations per rank MiB | vs size 1 '
          '| sent per rank per layer KiB | all-to-all would send KiB | '
          'peak RSS GiB | step s |')
    print('|---|---|---|---|---|---|---|---|---|')
    for name, img_size, patch in settings:
        family, arch = parse_model_name(name)
        layers = cm.model_dims(family, arch)['num_layers']
        tokens = cm.num_patches(img_size, patch) + 1
        first = None
        for size in args.sizes:
            ranks = run_setting((name, img_size, patch), size, args)
            saved = max(r['saved'] or 0 for r in ranks)
            first = first or saved
            sent = max(r['sent'] for r in ranks) / layers
            ratio = f'{saved / first:.2f}' if saved and first else '-'
            print(f'| {name} {img_size}px p{patch} | {tokens:,} | {size} | '
                  f'{saved / 2**20:,.0f} | {ratio} | {sent / 2**10:,.1f} | '
                  f'{all_to_all_bytes(family, arch, img_size, patch, size, args.precision) / layers / 2**10:,.1f} | '  # noqa: E501
                  f'{max(r["rss"] for r in ranks) / 2**30:.1f} | '
                  f'{max(r["seconds"] for r in ranks):.1f} |', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
