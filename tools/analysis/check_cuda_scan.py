"""Checks the CUDA selective-scan kernel on a GPU machine.

One prepared run: the CUDA kernel (``ssd_scan(backend='cuda')``) against the
sequential reference (outputs, final state and every gradient, fp64 and fp32,
shapes with every optional input), against the chunked PyTorch scan at
Adventurer-T's mixer shape (8 heads x 64, d_state 64, batch 1) for L = 3136
and 50176, at L = 50178 with batch 2 (int64 offsets), and its accuracy and
speed beside mamba-ssm's ``mamba_chunk_scan_combined`` and the chunked
PyTorch scan. ``--sections`` runs a part alone: mamba-ssm's Triton kernels
multiply fp32 in TF32 by default, so its accuracy is checked by running
``--sections mamba`` again under ``TRITON_F32_DEFAULT=ieee``. ``--sections
profile`` (not in the default run) lists the GPU time of each kernel launched
by the CUDA kernel's forward+backward.

    pip install --no-build-isolation -e .   # builds the CUDA kernel where a GPU is visible
    python tools/analysis/check_cuda_scan.py --out cuda_scan.md

Where mamba-ssm is not installed (its CUDA extensions take long to build, and
a GPU machine may have no package index), ``--mamba-ssm-src DIR`` takes its
Triton SSD kernels from an unpacked source tree instead, without building
anything: ``pip download --no-deps --no-binary :all: mamba-ssm`` and unpack
it into DIR, with einops (pure Python) unpacked beside it if the machine
lacks it. Triton comes with CUDA builds of torch.

Prints a markdown report (GPU model included) for docs/benchmarks.md and
exits with 1 if a check fails, or with a one-line message where no GPU or no
CUDA kernel is available.
"""
import argparse
import importlib.machinery
import importlib.util
import os
import re
import statistics
import sys
from pathlib import Path

import torch

from patchscale_mm.ops import ssd_scan, ssd_scan_chunked, ssd_scan_ref
from patchscale_mm.ops.backend import load_kernels

# (b, l, h, p, g, n, chunk, D, z, dt_bias, initial_states, softplus)
CASES = [
    (2, 1, 4, 3, 2, 5, 4, 'head', True, True, True, True),
    (2, 37, 4, 19, 1, 37, 16, 'head', False, True, True, True),
    (1, 50, 6, 8, 3, 24, 7, 'channel', True, False, False, True),
    (2, 300, 2, 64, 2, 64, 64, 'head', True, True, True, False),
    (1, 70, 1, 5, 1, 130, 20, None, True, True, True, True),
    (1, 600, 2, 64, 1, 256, 64, 'channel', True, True, True, True),
]


def make_inputs(b, l, h, p, g, n, D='head', z=True, dt_bias=True, init=True,
                dtype=torch.float64, device='cuda', seed=0):
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(device, dtype)

    inp = dict(x=rnd(b, l, h, p),
               dt=(torch.rand(b, l, h, generator=gen) * 0.5 + 0.05).to(device, dtype),
               A=-(torch.rand(h, generator=gen) * 2 + 0.2).to(device, dtype),
               B=rnd(b, l, g, n, scale=0.5), C=rnd(b, l, g, n, scale=0.5))
    if D:
        inp['D'] = rnd(h) if D == 'head' else rnd(h, p)
    if z:
        inp['z'] = rnd(b, l, h, p)
    if dt_bias:
        inp['dt_bias'] = rnd(h, scale=0.5)
    if init:
        inp['initial_states'] = rnd(b, h, p, n)
    return inp


def outputs_and_grads(fn, inp, **kwargs):
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in inp.items()}
    y, final = fn(**leaves, return_final_states=True, **kwargs)
    gen = torch.Generator().manual_seed(1)
    gy = torch.randn(y.shape, generator=gen).to(y)
    gf = torch.randn(final.shape, generator=gen).to(final)
    torch.autograd.backward((y, final), (gy, gf))
    return dict(y=y.detach(), final_states=final.detach(),
                **{f'd{k}': v.grad for k, v in leaves.items()})


def compare(got, ref, rtol, atol):
    """Worst |got - ref| / (atol + rtol |ref|) over all tensors (<= 1 passes)
    and the name of the worst one."""
    worst, name = 0.0, ''
    for k, r in ref.items():
        g = got[k].double()
        r = r.double()
        err = ((g - r).abs() / (atol + rtol * r.abs())).max().item()
        if not err <= worst:  # NaN counts as worst
            worst, name = err, k
    return worst, name


def cuda_time(fn, warmup=2, repeats=10):
    """Median milliseconds of fn() by CUDA events."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def scan_fn(backend, chunk):
    if backend == 'chunked':
        return lambda **kw: ssd_scan_chunked(**kw, chunk_size=chunk)
    return lambda **kw: ssd_scan(**kw, chunk_size=chunk, backend=backend)


class Report:

    def __init__(self):
        self.lines, self.failed = [], False

    def __call__(self, line=''):
        print(line, flush=True)
        self.lines.append(line)

    def check(self, label, worst, name):
        ok = worst <= 1.0
        self.failed |= not ok
        self(f'| {label} | {"ok" if ok else "FAIL"} | {worst:.3g} | {name} |')


def check_small_cases(report):
    report('\n### CUDA kernel against the sequential reference\n')
    report('| case | result | worst err / tol | worst tensor |')
    report('|---|---|---|---|')
    for case in CASES:
        b, l, h, p, g, n, chunk, D, z, dt_bias, init, softplus = case
        inp = make_inputs(b, l, h, p, g, n, D, z, dt_bias, init, seed=l)
        ref = outputs_and_grads(ssd_scan_ref, inp, dt_softplus=softplus)
        label = f'b{b} l{l} h{h} p{p} g{g} n{n} chunk{chunk}'
        got = outputs_and_grads(scan_fn('cuda', chunk), inp, dt_softplus=softplus)
        report.check(f'{label}, fp64', *compare(got, ref, 1e-9, 1e-9))
        inp32 = {k: v.float() for k, v in inp.items()}
        got = outputs_and_grads(scan_fn('cuda', chunk), inp32, dt_softplus=softplus)
        report.check(f'{label}, fp32', *compare(got, ref, 6e-4, 2e-3))


def adventurer_t_inputs(b, l, h=8, p=64, n=64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return dict(x=torch.randn(b, l, h, p, generator=gen).cuda(),
                dt=(torch.randn(b, l, h, generator=gen) - 2).cuda(),
                A=-torch.empty(h).uniform_(1, 16, generator=gen).cuda(),
                B=torch.randn(b, l, 1, n, generator=gen).cuda(),
                C=torch.randn(b, l, 1, n, generator=gen).cuda(),
                D=torch.ones(h).cuda(), dt_bias=(torch.randn(h, generator=gen) * 0.1).cuda())


def fp64_reference(inp, chunk):
    """Outputs and gradients of the chunked scan on fp64 copies of ``inp``."""
    return outputs_and_grads(scan_fn('chunked', chunk), {k: v.double() for k, v in inp.items()},
                             dt_softplus=True)


def fwd_bwd_step(fn, inp, gy):
    """One forward+backward of ``fn`` on leaf copies of ``inp`` (gradients reset)."""
    leaves = {k: v.clone().requires_grad_(True) for k, v in inp.items()}

    def step():
        for v in leaves.values():
            v.grad = None
        fn(**leaves, dt_softplus=True).backward(gy)
    return step


def check_lengths(report, lengths, chunk):
    report('\n### Adventurer-T mixer shape (8 heads x 64, d_state 64, batch 1, fp32): '
           'CUDA kernel against the chunked scan in fp64\n')
    report('| case | result | worst err / tol | worst tensor |')
    report('|---|---|---|---|')
    for l in lengths:
        inp = adventurer_t_inputs(1, l)
        ref = fp64_reference(inp, chunk)
        got = outputs_and_grads(scan_fn('cuda', chunk), inp, dt_softplus=True)
        report.check(f'L {l}', *compare(got, ref, 6e-4, 2e-3))
        del ref, got
    # Offsets past 2^31 for per-token states (b * l * h * p * n), batch 2.
    b, l, h, p, n = 2, 50178, 2, 64, 192
    inp = adventurer_t_inputs(b, l, h, p, n, seed=1)
    ref = fp64_reference(inp, chunk)
    got = outputs_and_grads(scan_fn('cuda', chunk), inp, dt_softplus=True)
    report.check(f'L {l}, batch {b}, h {h}, p {p}, n {n}', *compare(got, ref, 6e-4, 2e-3))
    del ref, got


def time_implementations(report, lengths, chunk, with_mamba):
    report('\n### Speed (median of 10, CUDA events; fwd+bwd includes the forward)\n')
    report('| L | implementation | fwd ms | fwd+bwd ms | peak MiB (fwd+bwd) | '
           'time / CUDA kernel (fwd+bwd) |')
    report('|---|---|---|---|---|---|')
    impls = ['cuda'] + (['mamba_ssm'] if with_mamba else []) + ['chunked']
    for l in lengths:
        inp = adventurer_t_inputs(1, l)
        gy = torch.randn_like(inp['x'])
        rows = []
        for impl in impls:
            fn = scan_fn(impl, chunk)

            def fwd():
                with torch.no_grad():
                    fn(**inp, dt_softplus=True)

            t_f = cuda_time(fwd)
            fwd_bwd = fwd_bwd_step(fn, inp, gy)
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            t_fb = cuda_time(fwd_bwd)
            peak = (torch.cuda.max_memory_allocated() - base) / 2**20
            rows.append((impl, t_f, t_fb, peak))
        t_ours = rows[0][2]
        for impl, t_f, t_fb, peak in rows:
            report(f'| {l} | {impl} | {t_f:.3f} | {t_fb:.3f} | {peak:.0f} | {t_fb / t_ours:.2f} |')


def load_mamba_ssm_source(src: Path) -> str:
    """Makes ``mamba_ssm.ops.triton`` importable from an unpacked mamba-ssm
    source tree without running ``mamba_ssm/__init__.py`` (it imports the
    package's compiled CUDA extensions, which the SSD kernels do not need).
    Returns the tree's version."""
    package = src / 'mamba_ssm'
    if not (package / 'ops' / 'triton' / 'ssd_combined.py').is_file():
        sys.exit(f'check_cuda_scan: --mamba-ssm-src {src} is not an unpacked '
                 'mamba-ssm source tree (no mamba_ssm/ops/triton/ssd_combined.py)')
    sys.path.insert(0, str(src))  # einops may be unpacked there too
    module = importlib.util.module_from_spec(
        importlib.machinery.ModuleSpec('mamba_ssm', None, is_package=True))
    module.__path__ = [str(package)]
    found = re.search(r'__version__\s*=\s*[\'"]([^\'"]+)',
                      (package / '__init__.py').read_text())
    module.__version__ = f'{found.group(1) if found else "unknown"} (Triton kernels from {src})'
    sys.modules['mamba_ssm'] = module
    return module.__version__


def triton_fp32_precision() -> str:
    """How Triton's ``tl.dot`` multiplies fp32 here: mamba-ssm's SSD kernels
    leave it to Triton, whose default on Ampere and later is TF32 (10-bit
    mantissas) unless ``$TRITON_F32_DEFAULT`` says otherwise."""
    return os.environ.get('TRITON_F32_DEFAULT') or 'tf32'


def check_against_mamba_ssm(report, lengths, chunk):
    precision = triton_fp32_precision()
    report('\n### CUDA kernel and mamba-ssm\'s `mamba_chunk_scan_combined` against the '
           f'chunked scan in fp64 (Adventurer-T mixer shape, fp32 inputs; Triton fp32 '
           f'dot: {precision})\n')
    report('| case | implementation | result | worst err / tol | worst tensor |')
    report('|---|---|---|---|---|')
    for l in lengths:
        inp = adventurer_t_inputs(1, l, seed=2)
        ref = fp64_reference(inp, chunk)
        for impl in ('cuda', 'mamba_ssm'):
            got = outputs_and_grads(scan_fn(impl, chunk), inp, dt_softplus=True)
            worst, name = compare(got, ref, 6e-4, 2e-3)
            if impl == 'mamba_ssm' and precision != 'ieee':
                # TF32 products carry ~1e-3 relative error, beyond fp32 tolerances;
                # the same section under TRITON_F32_DEFAULT=ieee checks the semantics.
                report(f'| L {l} | {impl} | not checked ({precision}) | {worst:.3g} | {name} |')
            else:
                report.check(f'L {l} | {impl}', worst, name)
            del got
        del ref


def kernel_name(event_name: str) -> str:
    """'void ns::(anonymous namespace)::bwd_chunk_kernel<float, 8>(...)' -> 'bwd_chunk_kernel'."""
    name = event_name.removeprefix('void ').replace('(anonymous namespace)::', '')
    head = re.split(r'[<(]', name, maxsplit=1)[0]
    return head.rsplit('::', 1)[-1].strip() or event_name[:40]


def profile_kernels(report, lengths, chunk, repeats=3):
    """Where the CUDA kernel's forward+backward spends its GPU time, per
    launched kernel (torch.profiler), to direct work on the backward."""
    from torch.profiler import ProfilerActivity, profile
    report('\n### CUDA kernel, forward+backward: GPU time per launched kernel '
           f'(torch.profiler, mean of {repeats})\n')
    report('| L | kernel | calls per step | ms per step | share |')
    report('|---|---|---|---|---|')
    for l in lengths:
        inp = adventurer_t_inputs(1, l)
        fwd_bwd = fwd_bwd_step(scan_fn('cuda', chunk), inp, torch.randn_like(inp['x']))
        fwd_bwd()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(repeats):
                fwd_bwd()
            torch.cuda.synchronize()
        per_kernel = {}
        for event in prof.key_averages():
            us = getattr(event, 'device_time_total', None)
            if us is None:
                us = event.cuda_time_total
            if us <= 0:
                continue
            name = kernel_name(event.key)
            calls, total = per_kernel.get(name, (0, 0.0))
            per_kernel[name] = (calls + event.count, total + us)
        step_us = sum(total for _, total in per_kernel.values())
        for name, (calls, total) in sorted(per_kernel.items(), key=lambda kv: -kv[1][1])[:10]:
            report(f'| {l} | {name} | {calls / repeats:g} | {total / repeats / 1e3:.3f} | '
                   f'{total / step_us:.0%} |')


SECTIONS = ('reference', 'mamba', 'lengths', 'speed', 'profile')
DEFAULT_SECTIONS = SECTIONS[:4]  # profiling is on request


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--lengths', type=int, nargs='+', default=[3136, 50176])
    parser.add_argument('--chunk', type=int, default=256)
    parser.add_argument('--no-mamba', action='store_true',
                        help='skip the comparison with mamba-ssm even if installed')
    parser.add_argument('--mamba-ssm-src', type=Path, default=None, metavar='DIR',
                        help="take mamba-ssm's Triton SSD kernels from this unpacked "
                        'source tree (nothing is built)')
    parser.add_argument('--sections', nargs='+', choices=SECTIONS,
                        default=list(DEFAULT_SECTIONS),
                        help='which parts to run (default: all but profile); e.g. '
                        '`--sections mamba` again under TRITON_F32_DEFAULT=ieee')
    parser.add_argument('--out', type=Path, default=None, help='also write the report here')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit('check_cuda_scan: no CUDA device is visible; run this on a GPU machine')
    ok, reason = load_kernels('cuda')
    if not ok:
        sys.exit(f'check_cuda_scan: the CUDA kernel is not available: {reason}')
    with_mamba = not args.no_mamba
    mamba_version = 'not installed'
    if with_mamba and args.mamba_ssm_src:
        load_mamba_ssm_source(args.mamba_ssm_src)
    try:
        import mamba_ssm
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined  # noqa: F401
        mamba_version = mamba_ssm.__version__
    except Exception as e:  # ImportError or a broken Triton/CUDA install
        with_mamba = False
        mamba_version = f'unavailable ({type(e).__name__})'
    report = Report()
    props = torch.cuda.get_device_properties(0)
    report(f'GPU: {props.name} ({props.total_memory / 2**30:.0f} GiB), torch {torch.__version__}, '
           f'CUDA {torch.version.cuda}, mamba-ssm {mamba_version}')
    if 'reference' in args.sections:
        check_small_cases(report)
    if 'mamba' in args.sections and with_mamba:
        check_against_mamba_ssm(report, args.lengths, args.chunk)
    if 'lengths' in args.sections:
        check_lengths(report, args.lengths, args.chunk)
    if 'speed' in args.sections:
        time_implementations(report, args.lengths, args.chunk, with_mamba)
    if 'profile' in args.sections:
        profile_kernels(report, args.lengths, args.chunk)
    report(f'\n{"FAILED" if report.failed else "All checks passed."}')
    if args.out:
        args.out.write_text('\n'.join(report.lines) + '\n')
    return 1 if report.failed else 0


if __name__ == '__main__':
    sys.exit(main())
