"""Benchmarks the Mamba-2 selective scan and Adventurer's mixer on the CPU.

Part 1, the scan at Adventurer-T's mixer shape (8 heads x 64, d_state 64,
batch 1, fp32), side by side: the sequential reference ``ssd_scan_ref``, the
chunked PyTorch SSD ``ssd_scan_chunked`` and the fused C++ kernel
(``ssd_scan(backend='cpp')``). Forward (no grad) and forward+backward times,
ratios, the peak memory of forward+backward, and the kernel's forward against
the FMA roofline: 4 x headdim x d_state FLOPs per token and head at the fp32
matmul rate measured in the same run.

Part 2, the whole mixer (projections, conv, scan, gate, norm; hidden 256,
8 heads x 64, state 64, chunk 256), forward+backward: ours
(``Mamba2Mixer``, with the kernel and with the PyTorch scan) against
transformers' ``Mamba2Mixer`` on its pure-PyTorch path, if transformers is
installed.

    pip install --no-deps --target ~/.cache/patchscale_mm/transformers transformers==5.23.0
    python tools/analysis/benchmark_scan.py \
        --transformers-path ~/.cache/patchscale_mm/transformers   # docs/benchmarks.md
    python tools/analysis/benchmark_scan.py --lengths 196 3136 --no-mixer
    python tools/analysis/benchmark_scan.py --lengths 3136 --thread-counts 1 2

The sequential reference is a Python loop over tokens whose autograd
backward is quadratic in L (every token's slice gradient is a full-length
tensor): it is timed up to ``--ref-max-len`` and extrapolated linearly beyond
(marked ``~``, a lower bound).

``--thread-counts 1 2`` times only the kernel, at each torch thread count and
then at the largest with the kernels' own choice of threads (see
``patchscale_mm/ops/csrc/kernel_threads.h``), with the probe behind it.

Peak memory is the growth of peak RSS during one forward+backward, measured
in a fresh subprocess per implementation and length (so that memory freed by
earlier runs does not hide it); the inputs are allocated before the baseline.
"""
import argparse
import gc
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from patchscale_mm.models.layers import Mamba2Mixer
from patchscale_mm.ops import ssd_scan, ssd_scan_chunked, ssd_scan_ref


# ---------------------------------------------------------------------------
# Measurement
# ---------------------------------------------------------------------------
def _rss_kib(field):
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def measure(fn, repeats=1):
    """Best wall time (s) of ``fn()`` over ``repeats`` runs."""
    gc.collect()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def peak_rss_growth(fn):
    """Peak RSS growth (MiB) while ``fn()`` runs; meaningful in a fresh process."""
    gc.collect()
    try:  # reset the peak-RSS watermark (Linux)
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        base = _rss_kib('VmRSS:')
    except OSError:
        base = _rss_kib('VmHWM:')
    fn()
    return (_rss_kib('VmHWM:') - base) / 1024


def probe_memory(args, kind, name, l):
    """Runs ``--probe kind name l`` in a fresh interpreter; MiB or None."""
    cmd = [sys.executable, __file__, '--probe', kind, name, str(l), '--batch', str(args.batch),
           '--heads', str(args.heads), '--headdim', str(args.headdim), '--dstate',
           str(args.dstate), '--chunk', str(args.chunk), '--threads', str(args.threads or 0)]
    if args.transformers_path:
        cmd += ['--transformers-path', args.transformers_path]
    res = subprocess.run(cmd, capture_output=True, text=True)
    try:
        return float(res.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None


def cpu_model():
    """The processor: its name, family/model and L1 data cache (timings
    differ 2-3x between CPU models, and "AMD EPYC" alone names several)."""
    info = {}
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                key, _, value = line.partition(':')
                info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = info.get('model name') or platform.processor() or 'unknown CPU'
    if 'cpu family' in info:
        name += f", family {info['cpu family']} model {info.get('model', '?')}"
    try:
        l1d = Path('/sys/devices/system/cpu/cpu0/cache/index0/size').read_text().strip()
        name += f', L1d {l1d}'
    except OSError:
        pass
    return name


def matmul_peak_gflops(size=1024, repeats=10):
    """fp32 matmul rate with the current thread settings."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    return 2 * size**3 / measure(lambda: a @ b, repeats) / 1e9


# ---------------------------------------------------------------------------
# Part 1: the scan
# ---------------------------------------------------------------------------
def scan_inputs(b, l, h, p, n, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return dict(
        x=torch.randn(b, l, h, p, generator=gen),
        dt=torch.randn(b, l, h, generator=gen) - 2,
        A=-torch.empty(h).uniform_(1, 16, generator=gen),
        B=torch.randn(b, l, 1, n, generator=gen),
        C=torch.randn(b, l, 1, n, generator=gen),
        D=torch.ones(h),
        dt_bias=torch.randn(h, generator=gen) * 0.1,
    )


SCANS = {
    'reference': lambda chunk: (lambda **kw: ssd_scan_ref(**kw)),
    'chunked torch': lambda chunk: (lambda **kw: ssd_scan_chunked(**kw, chunk_size=chunk)),
    'C++ kernel': lambda chunk: (lambda **kw: ssd_scan(**kw, chunk_size=chunk, backend='cpp')),
}


def scan_steps(fn, inp):
    """(forward without grad, forward+backward) closures."""
    leaves = {k: v.clone().requires_grad_(True) for k, v in inp.items()}
    gy = torch.randn(inp['x'].shape)

    def fwd():
        with torch.no_grad():
            fn(**inp, dt_softplus=True)

    def fwd_bwd():
        for v in leaves.values():
            v.grad = None
        fn(**leaves, dt_softplus=True).backward(gy)

    return fwd, fwd_bwd


def fmt_ms(t, approx=False):
    return ('~' if approx else '') + (f'{t * 1e3:.0f}' if t >= 0.1 else f'{t * 1e3:.1f}')


def bench_scan(args, peak_gflops):
    h, p, n = args.heads, args.headdim, args.dstate
    print(f'\n### Selective scan: batch {args.batch}, {h} heads x {p}, d_state {n}, fp32, '
          f'chunk {args.chunk}\n')
    print('| L | implementation | fwd ms | fwd+bwd ms | peak MiB (fwd+bwd) |')
    print('|---|---|---|---|---|')
    results, ref_rate = {}, None
    for l in args.lengths:
        inp = scan_inputs(args.batch, l, h, p, n)
        for name, make in SCANS.items():
            approx = name == 'reference' and l > args.ref_max_len
            if approx:  # linear in L: extrapolate from the longest timed length
                if ref_rate is None:
                    continue
                t_f, t_fb, peak = ref_rate[0] * l, ref_rate[1] * l, None
            else:
                reps = 1 if name == 'reference' else args.repeats
                fwd, fwd_bwd = scan_steps(make(args.chunk), inp)
                t_f, t_fb = measure(fwd, reps), measure(fwd_bwd, reps)
                if name == 'reference':
                    ref_rate = (t_f / l, t_fb / l)
                peak = (probe_memory(args, 'scan', name, l)
                        if name != 'reference' or l <= args.ref_mem_max_len else None)
            results[l, name] = (t_f, t_fb, approx)
            mem = f'{peak:.0f}' if peak is not None else 'n/a'
            print(f'| {l} | {name} | {fmt_ms(t_f, approx)} | {fmt_ms(t_fb, approx)} | {mem} |',
                  flush=True)

    print('\nRatios (time of X / time of the C++ kernel) and the kernel against the '
          f'roofline (fp32 matmul {peak_gflops:.0f} GFLOP/s, 4*p*n FLOPs per token and head):\n')
    print('| L | reference / kernel fwd+bwd | chunked / kernel fwd+bwd | chunked / kernel fwd '
          '| kernel fwd / roofline |')
    print('|---|---|---|---|---|')
    for l in args.lengths:
        k_f, k_fb, _ = results[l, 'C++ kernel']
        c_f, c_fb, _ = results[l, 'chunked torch']
        ref = results.get((l, 'reference'))
        ref_s = f'{"~" if ref[2] else ""}{ref[1] / k_fb:.0f}x' if ref else 'n/a'
        roof = 4 * p * n * l * h * args.batch / (peak_gflops * 1e9)
        print(f'| {l} | {ref_s} | {c_fb / k_fb:.1f}x | {c_f / k_f:.1f}x | {k_f / roof:.2f} |')


def bench_threads(args):
    """The kernel at each torch thread count, then at the largest with the
    kernels' own choice (``PATCHSCALE_KERNEL_THREADS=auto``), side by side."""
    from patchscale_mm.ops import _C
    from patchscale_mm.ops.threads import kernel_threads, use_kernel_threads
    counts, most = args.thread_counts, max(args.thread_counts)
    h, p, n = args.heads, args.headdim, args.dstate
    print(f'\n### The C++ kernel by thread count: batch {args.batch}, {h} heads x {p}, '
          f'd_state {n}, fp32, chunk {args.chunk}\n')
    print('| L | torch threads | kernel threads | fwd ms | fwd+bwd ms '
          f'| fwd+bwd / {counts[0]} thread(s) |')
    print('|---|---|---|---|---|---|')
    for l in args.lengths:
        fwd, fwd_bwd = scan_steps(SCANS['C++ kernel'](args.chunk),
                                  scan_inputs(args.batch, l, h, p, n))
        first = None
        for threads, setting in [(c, c) for c in counts] + [(most, 0)]:
            torch.set_num_threads(threads)
            with use_kernel_threads(setting):
                used = kernel_threads()  # times the split, once, on the auto row
                fwd_bwd()  # warm-up at this thread count
                t_f, t_fb = measure(fwd, args.repeats), measure(fwd_bwd, args.repeats)
            first = first or t_fb
            label = f'{used} (auto)' if setting == 0 else str(used)
            print(f'| {l} | {threads} | {label} | {fmt_ms(t_f)} | {fmt_ms(t_fb)} '
                  f'| {t_fb / first:.2f} |', flush=True)
    probe = _C.split_timing()
    if probe['measured']:
        print(f"\nThe automatic choice timed the forward of {probe['heads']} heads x 1024 "
              f"tokens: {probe['one_ms']:.2f} ms on one thread, {probe['split_ms']:.2f} ms on "
              f"{probe['threads']} ({probe['one_ms'] / probe['split_ms']:.2f}x; it splits "
              'from 1.25x).')


# ---------------------------------------------------------------------------
# Part 2: the whole mixer
# ---------------------------------------------------------------------------
def hf_mixer(hidden, heads, headdim, dstate, chunk, path=None):
    # Imported late and possibly from a separate folder: mmpretrain 1.2 fails
    # to import next to transformers 5, so it may not live in the main env.
    if path:
        sys.path.append(os.path.expanduser(path))
    try:
        from transformers import Mamba2Config
        from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer as HFMixer
    except ImportError as e:
        return None, f'transformers not importable ({e})'
    cfg = Mamba2Config(hidden_size=hidden, num_heads=heads, head_dim=headdim,
                       state_size=dstate, expand=heads * headdim // hidden, n_groups=1,
                       chunk_size=chunk, conv_kernel=4, use_bias=False, use_conv_bias=True,
                       num_hidden_layers=1)
    return HFMixer(cfg, layer_idx=0).train(), None


MIXERS = ('ours, C++ kernel', 'ours, chunked torch scan',
          'transformers Mamba2Mixer (torch path)')


class scan_backend:
    """Sets PATCHSCALE_SCAN_BACKEND for a block (None: leave it)."""

    def __init__(self, backend):
        self.backend, self.old = backend, None

    def __enter__(self):
        self.old = os.environ.get('PATCHSCALE_SCAN_BACKEND')
        if self.backend is not None:
            os.environ['PATCHSCALE_SCAN_BACKEND'] = self.backend

    def __exit__(self, *exc):
        if self.old is None:
            os.environ.pop('PATCHSCALE_SCAN_BACKEND', None)
        else:
            os.environ['PATCHSCALE_SCAN_BACKEND'] = self.old


def run_probe(args):
    """Prints the peak RSS growth (MiB) of one forward+backward."""
    kind, name, l = args.probe[0], args.probe[1], int(args.probe[2])
    if kind == 'scan':
        inp = scan_inputs(args.batch, l, args.heads, args.headdim, args.dstate)
        step = scan_steps(SCANS[name](args.chunk), inp)[1]
        backend = None
    else:
        hidden = args.heads * args.headdim // 2
        if name == MIXERS[2]:
            mixer, _ = hf_mixer(hidden, args.heads, args.headdim, args.dstate, args.chunk,
                                args.transformers_path)
        else:
            mixer = Mamba2Mixer(hidden, d_state=args.dstate, headdim=args.headdim,
                                chunk_size=args.chunk).train()
        u = torch.randn(args.batch, l, hidden, requires_grad=True)
        gy = torch.randn(args.batch, l, hidden)

        def step():
            mixer(u).backward(gy)

        backend = {MIXERS[0]: 'cpp', MIXERS[1]: 'torch'}.get(name)
    with scan_backend(backend):
        print(f'{peak_rss_growth(step):.1f}')


def bench_mixer(args):
    hidden = args.heads * args.headdim // 2
    print(f'\n### Mamba-2 mixer: hidden {hidden}, {args.heads} heads x {args.headdim}, '
          f'state {args.dstate}, chunk {args.chunk}, batch {args.batch}, fp32, fwd+bwd\n')
    torch.manual_seed(0)
    ours = Mamba2Mixer(hidden, d_state=args.dstate, headdim=args.headdim,
                       chunk_size=args.chunk).train()
    theirs, reason = hf_mixer(hidden, args.heads, args.headdim, args.dstate, args.chunk,
                              args.transformers_path)
    if theirs is None:
        print(f'(transformers\' mixer skipped: {reason})\n')
    mixers = [(MIXERS[0], ours, 'cpp'), (MIXERS[1], ours, 'torch')]
    if theirs is not None:
        mixers.append((MIXERS[2], theirs, None))
    print('| L | mixer | fwd+bwd ms | peak MiB | transformers / this |')
    print('|---|---|---|---|---|')
    for l in args.mixer_lengths:
        u = torch.randn(args.batch, l, hidden, requires_grad=True)
        gy = torch.randn(args.batch, l, hidden)
        rows = []
        for name, mixer, backend in mixers:
            def step():
                mixer.zero_grad(set_to_none=True)
                mixer(u).backward(gy)

            with scan_backend(backend):
                step()  # warm-up
                t = measure(step, args.repeats)
            rows.append((name, t, probe_memory(args, 'mixer', name, l)))
        t_hf = rows[-1][1] if theirs is not None else None
        for name, t, peak in rows:
            ratio = f'{t_hf / t:.2f}x' if t_hf is not None else 'n/a'
            mem = f'{peak:.0f}' if peak is not None else 'n/a'
            print(f'| {l} | {name} | {fmt_ms(t)} | {mem} | {ratio} |', flush=True)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--lengths', type=int, nargs='+', default=[196, 3136, 12544, 50176])
    parser.add_argument('--mixer-lengths', type=int, nargs='+', default=[3136, 12544])
    parser.add_argument('--ref-max-len', type=int, default=3136,
                        help='time the sequential reference up to this length')
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--heads', type=int, default=8)
    parser.add_argument('--headdim', type=int, default=64)
    parser.add_argument('--dstate', type=int, default=64)
    parser.add_argument('--chunk', type=int, default=256)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--threads', type=int, default=None,
                        help='torch threads (default: torch\'s choice)')
    parser.add_argument('--thread-counts', type=int, nargs='+', default=None,
                        help='instead of the parts above: the kernel at each of these torch '
                        'thread counts and at the largest with the automatic choice')
    parser.add_argument('--ref-mem-max-len', type=int, default=3136,
                        help='measure the reference\'s memory up to this length')
    parser.add_argument('--no-mixer', action='store_true')
    parser.add_argument('--probe', nargs=3, default=None, help=argparse.SUPPRESS)
    parser.add_argument('--transformers-path', default=None,
                        help='folder holding transformers (pip install --target DIR), '
                        'imported only for its Mamba2Mixer')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.probe:
        return run_probe(args)
    from patchscale_mm.ops.backend import load_kernels
    ok, reason = load_kernels('cpu')
    if not ok:
        sys.exit(f'benchmark_scan: the C++ kernel is not available: {reason}')
    from patchscale_mm.ops import _C
    peak = matmul_peak_gflops()
    print(f'{cpu_model()}; torch {torch.__version__}, {torch.get_num_threads()} threads '
          f'(kernel threaded: {_C.intra_op_parallel()}, kernel threads '
          f'{_C.kernel_threads_setting() or "auto"}), kernel ISA {_C.cpu_isa()}, '
          f'fp32 matmul {peak:.0f} GFLOP/s')
    if args.thread_counts:
        return bench_threads(args)
    bench_scan(args, peak)
    if not args.no_mixer:
        bench_mixer(args)


if __name__ == '__main__':
    main()
