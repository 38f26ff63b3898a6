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

The sequential reference is a Python loop over tokens: it is timed up to
``--ref-max-len`` and extrapolated linearly (marked ``~``) beyond.

Peak memory is the growth of the process's peak RSS over the run of one
call, with glibc told to return large blocks at free (the script re-executes
itself with MALLOC_MMAP_THRESHOLD_ set) so that freed buffers of earlier runs
do not hide new ones.
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

from patchscale_mm.models.layers import Mamba2Mixer  # noqa: E402
from patchscale_mm.ops import ssd_scan, ssd_scan_chunked, ssd_scan_ref  # noqa: E402


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
    """Best wall time (s) of ``fn()`` over ``repeats`` runs and the peak RSS
    growth (MiB) during the first."""
    gc.collect()
    try:  # reset the peak-RSS watermark (Linux)
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        base = _rss_kib('VmRSS:')
    except OSError:
        base = _rss_kib('VmHWM:')
    times = []
    for i in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
        if i == 0:
            peak = (_rss_kib('VmHWM:') - base) / 1024
    return min(times), peak


def matmul_peak_gflops(size=1024, repeats=10):
    """fp32 matmul rate with the current thread settings."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    t, _ = measure(lambda: a @ b, repeats)
    return 2 * size**3 / t / 1e9


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


def time_scan(fn, inp, repeats):
    leaves = {k: v.clone().requires_grad_(True) for k, v in inp.items()}
    gy = torch.randn(inp['x'].shape)

    def fwd():
        with torch.no_grad():
            fn(**inp, dt_softplus=True)

    def fwd_bwd():
        for v in leaves.values():
            v.grad = None
        fn(**leaves, dt_softplus=True).backward(gy)

    t_f, _ = measure(fwd, repeats)
    t_fb, peak = measure(fwd_bwd, repeats)
    return t_f, t_fb, peak


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
                t_f, t_fb, peak = time_scan(make(args.chunk), inp, reps)
                if name == 'reference':
                    ref_rate = (t_f / l, t_fb / l)
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
    mixers = [('ours, C++ kernel', ours, 'cpp'), ('ours, chunked torch scan', ours, 'torch')]
    if theirs is not None:
        mixers.append(('transformers Mamba2Mixer (torch path)', theirs, None))
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

            old = os.environ.get('PATCHSCALE_SCAN_BACKEND')
            if backend is not None:
                os.environ['PATCHSCALE_SCAN_BACKEND'] = backend
            try:
                step()  # warm-up
                t, peak = measure(step, args.repeats)
            finally:
                if old is None:
                    os.environ.pop('PATCHSCALE_SCAN_BACKEND', None)
                else:
                    os.environ['PATCHSCALE_SCAN_BACKEND'] = old
            rows.append((name, t, peak))
        t_hf = rows[-1][1] if theirs is not None else None
        for name, t, peak in rows:
            ratio = f'{t_hf / t:.2f}x' if t_hf is not None else 'n/a'
            print(f'| {l} | {name} | {fmt_ms(t)} | {peak:.0f} | {ratio} |', flush=True)


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
    parser.add_argument('--no-mixer', action='store_true')
    parser.add_argument('--transformers-path', default=None,
                        help='folder holding transformers (pip install --target DIR), '
                        'imported only for its Mamba2Mixer')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from patchscale_mm.ops.ssd_kernel import load_kernels
    ok, reason = load_kernels('cpu')
    if not ok:
        sys.exit(f'benchmark_scan: the C++ kernel is not available: {reason}')
    from patchscale_mm.ops import _C
    peak = matmul_peak_gflops()
    print(f'torch {torch.__version__}, {torch.get_num_threads()} threads, kernel ISA '
          f'{_C.cpu_isa()}, fp32 matmul {peak:.0f} GFLOP/s')
    bench_scan(args, peak)
    if not args.no_mixer:
        bench_mixer(args)


if __name__ == '__main__':
    main()
