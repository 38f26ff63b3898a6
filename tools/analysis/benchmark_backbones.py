"""One training step of Adventurer and DeiT (PatchViT) at small patch sizes on the CPU.

Side by side in one run: forward+backward of one 224 px image (batch 1) through
``patchscale_mm.models.Adventurer`` and ``PatchViT`` (arch 'b' by default) at
each patch size, the step times, their ratio (the paper's A100 ratios of
Adventurer-B / DeiT-B are 0.70 at p4 and 0.34 at p2) and the peak memory.

    python tools/analysis/benchmark_backbones.py                  # p4 and p2
    python tools/analysis/benchmark_backbones.py --adventurer-p1  # Adventurer-B/1 only, once

``--profile`` runs each timed step under ``torch.profiler`` and adds a table
of where its time goes: matmuls (with their GFLOP/s), attention, the scan
kernel, the other fused kernels, copies and the rest, so that a step ratio
measured on one processor can be taken apart there.

``--adventurer-p1`` runs one step of Adventurer at patch size 1 (50,176
tokens + 2) with activation checkpointing and reports its time and the
process's peak RSS.

Activation checkpointing (``with_cp``) is on at patch sizes <= 2 by default
(``--with-cp auto``), for both models alike. Each measurement runs in a fresh
subprocess (warmed up at patch 16), so that its peak-RSS growth is not hidden
by memory that earlier runs freed; with ``--repeats`` > 1 the two models
alternate and the best time of each is kept.
"""
import argparse
import gc
import json
import os
import subprocess
import sys
import time

import torch

from patchscale_mm.models import Adventurer, PatchViT

MODELS = {'Adventurer': Adventurer, 'DeiT (PatchViT)': PatchViT}

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


# Self time of each profiled op goes to the first category whose test accepts
# its name; what no op claims (Python, the autograd engine) is 'rest'.
PROFILE_CATEGORIES = (
    ('matmul', lambda op: op in ('aten::mm', 'aten::addmm', 'aten::bmm', 'aten::baddbmm')),
    ('attention', lambda op: 'scaled_dot_product' in op or 'flash_attention' in op),
    ('scan', lambda op: op.startswith('patchscale_mm::ssd_')),
    ('fused', lambda op: op.startswith('patchscale_mm::')),
    ('copies', lambda op: op in ('aten::copy_', 'aten::cat', 'aten::flip', 'aten::fill_',
                                 'aten::zero_', 'aten::index', 'aten::index_put_')),
)


def op_category(op):
    return next((name for name, test in PROFILE_CATEGORIES if test(op)), 'rest')


def profiled(step):
    """Runs ``step()`` under the profiler: (seconds, {category: seconds},
    {matmul shapes: [seconds, FLOPs]})."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], with_flops=True,
                 record_shapes=True) as prof:
        t = time.perf_counter()
        step()
        t = time.perf_counter() - t
    seconds = {name: 0.0 for name, _ in PROFILE_CATEGORIES}
    matmuls = {}
    for event in prof.key_averages(group_by_input_shape=True):
        category = op_category(event.key)
        if category == 'rest':
            continue
        seconds[category] += event.self_cpu_time_total / 1e6
        if category == 'matmul':
            # A matmul's rate depends on its shape (and the BLAS's kernels
            # for it on this processor): keep them apart.
            shapes = ' '.join('x'.join(map(str, s)) for s in event.input_shapes if s)
            key = f'{event.key.removeprefix("aten::")} {shapes}'
            entry = matmuls.setdefault(key, [0.0, 0])
            entry[0] += event.self_cpu_time_total / 1e6
            entry[1] += event.flops
    seconds['rest'] = max(0.0, t - sum(seconds.values()))
    return t, seconds, matmuls


def train_step(model, img, bf16):
    model.zero_grad(set_to_none=True)
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=bf16):
        out = model(img)[-1]
    out.float().pow(2).mean().backward()


def probe(args, name, patch, with_cp):
    """One step of one model, in this process: prints a JSON line."""
    cls = MODELS[name]
    img = torch.randn(1, 3, args.img_size, args.img_size)
    torch.manual_seed(0)
    warm = cls(arch=args.arch, img_size=args.img_size, patch_size=16).train()
    train_step(warm, img, args.bf16)  # library set-up is not timed
    del warm
    model = cls(arch=args.arch, img_size=args.img_size, patch_size=patch,
                with_cp=with_cp).train()
    base = reset_peak_rss()
    extra = {}
    if args.profile:
        t, extra['seconds'], extra['matmuls'] = profiled(
            lambda: train_step(model, img, args.bf16))
    else:
        t = time.perf_counter()
        train_step(model, img, args.bf16)
        t = time.perf_counter() - t
    peak = _status_kib('VmHWM:')
    # The kernel's RSS counters lag by a few pages per thread, so a step that
    # allocates (almost) nothing can read as a slightly negative growth.
    growth = max(0, peak - base)
    print(json.dumps(dict(time=t, growth=growth / 1024, peak=peak / 1024,
                          load=os.getloadavg()[0], **extra)))


def run(args, name, patch, with_cp):
    """:func:`probe` in a fresh interpreter: dict(time, growth, peak)."""
    cmd = [sys.executable, __file__, '--probe', name, str(patch), str(int(with_cp)),
           '--arch', args.arch, '--img-size', str(args.img_size)]
    cmd += ['--bf16'] if args.bf16 else []
    cmd += ['--threads', str(args.threads)] if args.threads else []
    cmd += ['--profile'] if args.profile else []
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f'{name} p{patch} failed:\n{res.stderr[-2000:]}')
    return json.loads(res.stdout.strip().splitlines()[-1])


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
    parser.add_argument('--profile', action='store_true',
                        help='also print where each step\'s time goes (torch.profiler)')
    parser.add_argument('--adventurer-p1', action='store_true',
                        help='only Adventurer at patch size 1, with_cp, one step')
    parser.add_argument('--probe', nargs=3, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.probe:
        name, patch, with_cp = args.probe
        return probe(args, name, int(patch), bool(int(with_cp)))
    dtype = 'bf16 autocast' if args.bf16 else 'fp32'
    print(f'torch {torch.__version__}, {torch.get_num_threads()} threads, arch {args.arch!r}, '
          f'{args.img_size} px, batch 1, {dtype}')
    if args.adventurer_p1:
        r = run(args, 'Adventurer', 1, True)
        print('\n| model | tokens | with_cp | step s | peak RSS growth MiB | process peak RSS MiB |')
        print('|---|---|---|---|---|---|')
        print(f'| Adventurer-{args.arch}/1 | {args.img_size**2} + 2 | yes | {r["time"]:.1f} '
              f'| {r["growth"]:.0f} | {r["peak"]:.0f} |')
        if args.profile:
            print_profile({(1, 'Adventurer'): r}, args.arch)
        print_load([('Adventurer p1', r)])
        return
    print('\n| patch | tokens | model | with_cp | step s | peak RSS growth MiB |')
    print('|---|---|---|---|---|---|')
    ratios, runs, profiles = {}, [], {}
    for patch in args.patch_sizes:
        with_cp = args.with_cp == 'on' or (args.with_cp == 'auto' and patch <= 2)
        best = {}
        for _ in range(args.repeats):  # alternate, so that load changes hit both
            for name in MODELS:
                r = run(args, name, patch, with_cp)
                runs.append((f'{name} p{patch}', r))
                if name not in best or r['time'] < best[name]['time']:
                    best[name] = r
        for name, r in best.items():
            profiles[patch, name] = r
            print(f'| {patch} | {(args.img_size // patch)**2} + 1 | {name}-{args.arch} '
                  f'| {"yes" if with_cp else "no"} | {r["time"]:.2f} | {r["growth"]:.0f} |',
                  flush=True)
        ratios[patch] = best['Adventurer']['time'] / best['DeiT (PatchViT)']['time']
    print('\n| patch | Adventurer / DeiT step time | paper (A100, B models) |')
    print('|---|---|---|')
    for patch, r in ratios.items():
        paper = PAPER_RATIO.get(patch)
        print(f'| {patch} | {r:.2f} | {paper if paper is not None else "n/a"} |')
    if args.profile:
        print_profile(profiles, args.arch)
    print_load(runs)


def print_profile(profiles, arch):
    """Seconds per category of each profiled step, and the matmuls' rate."""
    names = [name for name, _ in PROFILE_CATEGORIES] + ['rest']
    print('\n| patch | model | step s | ' + ' | '.join(f'{n} s' for n in names)
          + ' | matmul GFLOP/s |')
    print('|---|---|---|' + '---|' * len(names) + '---|')
    for (patch, name), r in profiles.items():
        secs = r['seconds']
        flops = sum(f for _, f in r['matmuls'].values())
        rate = flops / secs['matmul'] / 1e9 if secs['matmul'] else float('nan')
        print(f'| {patch} | {name}-{arch} | {r["time"]:.2f} | '
              + ' | '.join(f'{secs[n]:.2f} ({secs[n] / r["time"]:.0%})' for n in names)
              + f' | {rate:.0f} |')
    for patch in sorted({patch for patch, _ in profiles}, reverse=True):
        adv, deit = profiles.get((patch, 'Adventurer')), profiles.get((patch, 'DeiT (PatchViT)'))
        if adv and deit:
            matmul = adv['seconds']['matmul'] / deit['seconds']['matmul']
            print(f'p{patch}: Adventurer / DeiT matmul seconds {matmul:.2f}, '
                  f'whole step {adv["time"] / deit["time"]:.2f}')
    print('\nmatmul shapes (aten op, inputs), up to 6 per step by time:\n')
    print('| patch | model | matmul | calls\' s | GFLOP/s |')
    print('|---|---|---|---|---|')
    for (patch, name), r in profiles.items():
        for shape, (secs, flops) in sorted(r['matmuls'].items(), key=lambda kv: -kv[1][0])[:6]:
            print(f'| {patch} | {name}-{arch} | {shape} | {secs:.2f} | {flops / secs / 1e9:.0f} |')


def print_load(runs):
    """The 1-minute load average at the end of each step: on a shared machine
    it says which measurements other jobs disturbed."""
    loads = [f'{name} {r["load"]:.1f}' for name, r in runs if 'load' in r]
    if loads:
        print(f'\nload average (1 min) at the end of each step, on {os.cpu_count()} CPUs: '
              + ', '.join(loads))


if __name__ == '__main__':
    main()
