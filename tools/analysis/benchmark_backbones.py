"""One training step of Adventurer and DeiT (PatchViT) at small patch sizes on the CPU.

Side by side in one run: forward+backward of one 224 px image (batch 1) through
``patchscale_mm.models.Adventurer`` and ``PatchViT`` (arch 'b' by default) at
each patch size, the step times, their ratio (the paper's A100 ratios of
Adventurer-B / DeiT-B are 0.70 at p4 and 0.34 at p2) and the peak memory.

    python tools/analysis/benchmark_backbones.py                  # p4 and p2
    python tools/analysis/benchmark_backbones.py --adventurer-p1  # Adventurer-B/1 only, once

``--adventurer-p1`` runs one step of Adventurer at patch size 1 (50,176
tokens + 2) with activation checkpointing and reports its time and the
process's peak RSS.

Activation checkpointing (``with_cp``) is on at patch sizes <= 2 by default
(``--with-cp auto``), for both models alike. Peak memory is measured as in
benchmark_scan.py: the peak-RSS growth during the step, with glibc returning
large blocks at free (the script re-executes itself with
MALLOC_MMAP_THRESHOLD_ set).
"""
import argparse
import gc
import os
import sys
import time

MMAP_ENV = 'MALLOC_MMAP_THRESHOLD_'
if MMAP_ENV not in os.environ and __name__ == '__main__':
    os.environ[MMAP_ENV] = str(1 << 17)
    os.execv(sys.executable, [sys.executable] + sys.argv)

import torch  # noqa: E402

from patchscale_mm.models import Adventurer, PatchViT  # noqa: E402

PAPER_RATIO = {4: 0.70, 2: 0.34}  # Adventurer-B / DeiT-B step time on an A100


def _status_kib(field):
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def reset_peak_rss():
    """Resets the peak-RSS watermark; returns the current RSS (KiB)."""
    gc.collect()
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        return _status_kib('VmRSS:')
    except OSError:  # not Linux, or not permitted: growth over the old peak
        return _status_kib('VmHWM:')


def train_step(model, img, bf16):
    model.zero_grad(set_to_none=True)
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=bf16):
        out = model(img)[-1]
    out.float().pow(2).mean().backward()


def run(cls, arch, img_size, patch, with_cp, bf16, repeats):
    """Best step time (s), peak RSS growth (MiB), process peak RSS (MiB)."""
    torch.manual_seed(0)
    model = cls(arch=arch, img_size=img_size, patch_size=patch, with_cp=with_cp).train()
    img = torch.randn(1, 3, img_size, img_size)
    times, growth = [], 0.0
    for _ in range(repeats):
        base = reset_peak_rss()
        t = time.perf_counter()
        train_step(model, img, bf16)
        times.append(time.perf_counter() - t)
        growth = max(growth, (_status_kib('VmHWM:') - base) / 1024)
    peak = _status_kib('VmHWM:') / 1024
    del model
    gc.collect()
    return min(times), growth, peak


def warm_up(arch, img_size, bf16):
    """Runs each model once at patch 16 so library set-up is not timed."""
    for cls in (Adventurer, PatchViT):
        run(cls, arch, img_size, 16, False, bf16, 1)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--arch', default='b')
    parser.add_argument('--img-size', type=int, default=224)
    parser.add_argument('--patch-sizes', type=int, nargs='+', default=[4, 2])
    parser.add_argument('--repeats', type=int, default=1, help='timed steps per model')
    parser.add_argument('--with-cp', choices=['auto', 'on', 'off'], default='auto',
                        help='activation checkpointing; auto: on at patch sizes <= 2')
    parser.add_argument('--bf16', action='store_true', help='bf16 autocast')
    parser.add_argument('--threads', type=int, default=None)
    parser.add_argument('--adventurer-p1', action='store_true',
                        help='only Adventurer at patch size 1, with_cp, one step')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = 'bf16 autocast' if args.bf16 else 'fp32'
    print(f'torch {torch.__version__}, {torch.get_num_threads()} threads, arch {args.arch!r}, '
          f'{args.img_size} px, batch 1, {dtype}')
    if args.adventurer_p1:
        warm_up(args.arch, args.img_size, args.bf16)
        tokens = args.img_size**2
        t, growth, peak = run(Adventurer, args.arch, args.img_size, 1, True, args.bf16, 1)
        print(f'\n| model | tokens | with_cp | step s | peak RSS growth MiB | process peak RSS MiB |')
        print('|---|---|---|---|---|---|')
        print(f'| Adventurer-{args.arch}/1 | {tokens} + 2 | yes | {t:.1f} | {growth:.0f} '
              f'| {peak:.0f} |')
        return
    warm_up(args.arch, args.img_size, args.bf16)
    print('\n| patch | tokens | model | with_cp | step s | peak RSS growth MiB |')
    print('|---|---|---|---|---|---|')
    ratios = {}
    for patch in args.patch_sizes:
        with_cp = args.with_cp == 'on' or (args.with_cp == 'auto' and patch <= 2)
        tokens = (args.img_size // patch)**2
        res = {}
        for name, cls in (('Adventurer', Adventurer), ('DeiT (PatchViT)', PatchViT)):
            t, growth, _ = run(cls, args.arch, args.img_size, patch, with_cp, args.bf16,
                               args.repeats)
            res[name] = t
            print(f'| {patch} | {tokens} + 1 | {name}-{args.arch} | {"yes" if with_cp else "no"} '
                  f'| {t:.2f} | {growth:.0f} |', flush=True)
        ratios[patch] = res['Adventurer'] / res['DeiT (PatchViT)']
    print('\n| patch | Adventurer / DeiT step time | paper (A100, B models) |')
    print('|---|---|---|')
    for patch, r in ratios.items():
        paper = PAPER_RATIO.get(patch)
        print(f'| {patch} | {r:.2f} | {paper if paper is not None else "n/a"} |')


if __name__ == '__main__':
    main()
