"""Checks this repository's GPU scans on a GPU machine.

One prepared run, for each of ``--impls``: the CUDA kernel ``'cuda'``, the
Triton block products ``'triton'`` (fp32 products), ``'triton_tf32'`` (TF32
products, errors shown but not held to fp32's tolerance) and
``'triton_tf32x3'`` (split TF32 products, held to it). Each is checked
against the sequential reference (outputs, final state and every gradient,
fp64 for the CUDA kernel and fp32, shapes with every optional input) and
against the chunked PyTorch scan in fp64 at Adventurer-T's mixer shape (8
heads x 64, d_state 64, batch 1) for L = 3136 and 50176 and at L = 50178
with batch 2; and timed beside mamba-ssm's
``mamba_chunk_scan_combined`` and the chunked PyTorch scan at Adventurer-T's
and Adventurer-B's mixer shapes (8 and 24 heads), batch 1 and 8.
``--sections`` runs a part alone: mamba-ssm's Triton kernels multiply fp32 in
TF32 by default, so its accuracy is checked by running ``--sections mamba``
again under ``TRITON_F32_DEFAULT=ieee``. Not in the default run: ``profile``
lists the GPU time of each kernel launched by a forward+backward, and
``overflow`` checks every gradient at L = 50178, batch 16, Adventurer-B's
mixer with its inputs as views of one fused projection, as the model passes
them (past 2**31 elements in batch x stride); run it once per implementation
(``--impls mamba_ssm`` last and alone: its 32-bit offsets may end the process
with an illegal memory access); ``step`` times a whole Adventurer-B/1
training step (224 px, bf16 autocast, activation checkpointing) with each
scan, mamba-ssm's included.

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
import time
from pathlib import Path

import torch

from patchscale_mm.ops import ssd_scan, ssd_scan_chunked, ssd_scan_ref
from patchscale_mm.ops.backend import load_kernels
from patchscale_mm.ops.backend import BACKEND_ENV
from patchscale_mm.ops.ssd_triton import PRECISION_ENV, ssd_scan_triton, triton_available

DEVICE = 'cuda'  # what every section runs on (a CPU smoke test of this script sets 'cpu')
OURS = ('cuda', 'triton', 'triton_tf32', 'triton_tf32x3')
TF32 = ('triton_tf32', 'mamba_ssm')  # products in TF32: errors shown, not checked

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
                dtype=torch.float64, device=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    device = device or DEVICE

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
    """Median milliseconds of fn() by CUDA events; 3 repeats where one call
    takes over 0.2 s."""
    if DEVICE != 'cuda':  # the script's own smoke test: that it runs, once
        return _wall_ms(fn)
    for _ in range(warmup):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    if start.elapsed_time(end) > 200:
        repeats = 3
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _wall_ms(fn):
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def reset_peak():
    """Starts a peak-memory measurement; returns the bytes allocated now."""
    if DEVICE != 'cuda':
        return 0
    torch.cuda.reset_peak_memory_stats()
    return torch.cuda.memory_allocated()


def peak_mib(since):
    return (torch.cuda.max_memory_allocated() - since) / 2**20 if DEVICE == 'cuda' else 0.0


def synchronize():
    if DEVICE == 'cuda':
        torch.cuda.synchronize()


def backend_and_precision(impl):
    """The scan backend an implementation's name runs and, for the Triton
    scan, its precision: 'triton_tf32' -> ('triton', 'tf32')."""
    if impl.startswith('triton'):
        return 'triton', impl.partition('_')[2] or 'ieee'
    return impl, None


def scan_fn(impl, chunk):
    if impl == 'chunked':
        return lambda **kw: ssd_scan_chunked(**kw, chunk_size=chunk)
    backend, precision = backend_and_precision(impl)
    if backend == 'triton':
        return lambda **kw: ssd_scan_triton(**kw, chunk_size=chunk, precision=precision)
    return lambda **kw: ssd_scan(**kw, chunk_size=chunk, backend=impl)


class Report:

    def __init__(self):
        self.lines, self.failed = [], False

    def __call__(self, line=''):
        print(line, flush=True)
        self.lines.append(line)

    def check(self, label, worst, name, impl=None):
        """A table row; implementations with TF32 products are shown, not
        checked (their ~1e-3 relative error per product is past fp32's
        tolerance by design)."""
        if impl in TF32:
            self(f'| {label} | not checked (TF32) | {worst:.3g} | {name} |')
            return
        ok = worst <= 1.0
        self.failed |= not ok
        self(f'| {label} | {"ok" if ok else "FAIL"} | {worst:.3g} | {name} |')


def check_small_cases(report, impls):
    report('\n### Against the sequential reference\n')
    report('| case | result | worst err / tol | worst tensor |')
    report('|---|---|---|---|')
    for case in CASES:
        b, l, h, p, g, n, chunk, D, z, dt_bias, init, softplus = case
        inp = make_inputs(b, l, h, p, g, n, D, z, dt_bias, init, seed=l)
        ref = outputs_and_grads(ssd_scan_ref, inp, dt_softplus=softplus)
        label = f'b{b} l{l} h{h} p{p} g{g} n{n} chunk{chunk}'
        inp32 = {k: v.float() for k, v in inp.items()}
        for impl in impls:
            if impl == 'cuda':  # the Triton scan computes in fp32 only
                got = outputs_and_grads(scan_fn(impl, chunk), inp, dt_softplus=softplus)
                report.check(f'{label}, {impl}, fp64', *compare(got, ref, 1e-9, 1e-9))
            got = outputs_and_grads(scan_fn(impl, chunk), inp32, dt_softplus=softplus)
            report.check(f'{label}, {impl}, fp32', *compare(got, ref, 6e-4, 2e-3), impl)


def adventurer_inputs(b, l, h=8, p=64, n=64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    inp = dict(x=torch.randn(b, l, h, p, generator=gen),
               dt=torch.randn(b, l, h, generator=gen) - 2,
               A=-torch.empty(h).uniform_(1, 16, generator=gen),
               B=torch.randn(b, l, 1, n, generator=gen), C=torch.randn(b, l, 1, n, generator=gen),
               D=torch.ones(h), dt_bias=torch.randn(h, generator=gen) * 0.1)
    return {k: v.to(DEVICE) for k, v in inp.items()}


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


# (b, l, h, p, n): per-token states (b l h p n) past 2^31 elements.
LONG_CASE = (2, 50178, 2, 64, 192)


def check_lengths(report, lengths, chunk, impls):
    report('\n### Adventurer-T mixer shape (8 heads x 64, d_state 64, batch 1, fp32) '
           'against the chunked scan in fp64\n')
    report('| case | result | worst err / tol | worst tensor |')
    report('|---|---|---|---|')
    for b, l, h, p, n in [(1, l, 8, 64, 64) for l in lengths] + [LONG_CASE]:
        inp = adventurer_inputs(b, l, h, p, n, seed=int(b > 1))
        ref = fp64_reference(inp, chunk)
        label = f'L {l}' if b == 1 else f'L {l}, batch {b}, h {h}, p {p}, n {n}'
        for impl in impls:
            got = outputs_and_grads(scan_fn(impl, chunk), inp, dt_softplus=True)
            report.check(f'{label}, {impl}', *compare(got, ref, 6e-4, 2e-3), impl)
            del got
        del ref


# Mixer shapes of the speed table: (name, heads); headdim 64, d_state 64.
MIXERS = {'Adventurer-T': 8, 'Adventurer-B': 24}


def time_implementations(report, lengths, chunk, impls, batches):
    report('\n### Speed (median of 10, or of 3 past 0.2 s a call; CUDA events; fwd+bwd '
           'includes the forward; headdim 64, d_state 64, one group)\n')
    base = 'mamba_ssm' if 'mamba_ssm' in impls else impls[0]
    report('| mixer | batch | L | implementation | fwd ms | fwd+bwd ms | peak MiB (fwd+bwd) | '
           f'fwd+bwd time / {base} |')
    report('|---|---|---|---|---|---|---|---|')
    for mixer, h in MIXERS.items():
        for b in batches:
            for l in lengths:
                inp = adventurer_inputs(b, l, h)
                gy = torch.randn_like(inp['x'])
                rows = {}
                # The chunked PyTorch scan keeps (chunk x chunk) matrices per
                # chunk and head: only at the smallest shape.
                small = b * h <= 8
                for impl in [i for i in impls if i != 'chunked' or small]:
                    fn = scan_fn(impl, chunk)

                    def fwd():
                        with torch.no_grad():
                            fn(**inp, dt_softplus=True)

                    t_f = cuda_time(fwd)
                    fwd_bwd = fwd_bwd_step(fn, inp, gy)
                    allocated = reset_peak()
                    t_fb = cuda_time(fwd_bwd)
                    peak = peak_mib(allocated)
                    rows[impl] = (t_f, t_fb, peak)
                    del fwd_bwd
                t_base = rows[base][1]
                for impl, (t_f, t_fb, peak) in rows.items():
                    report(f'| {mixer} | {b} | {l} | {impl} | {t_f:.3f} | {t_fb:.3f} | '
                           f'{peak:.0f} | {t_fb / t_base:.2f} |')
                del inp, gy


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


def check_against_mamba_ssm(report, lengths, chunk, impls):
    precision = triton_fp32_precision()
    report("\n### Ours and mamba-ssm's `mamba_chunk_scan_combined` against the "
           f'chunked scan in fp64 (Adventurer-T mixer shape, fp32 inputs; mamba-ssm\'s '
           f'Triton fp32 dot: {precision})\n')
    report('| case | implementation | result | worst err / tol | worst tensor |')
    report('|---|---|---|---|---|')
    for l in lengths:
        inp = adventurer_inputs(1, l, seed=2)
        ref = fp64_reference(inp, chunk)
        for impl in (*impls, 'mamba_ssm'):
            got = outputs_and_grads(scan_fn(impl, chunk), inp, dt_softplus=True)
            worst, name = compare(got, ref, 6e-4, 2e-3)
            shown_only = impl == 'triton_tf32' or (impl == 'mamba_ssm' and precision != 'ieee')
            report.check(f'L {l} | {impl}', worst, name, 'mamba_ssm' if shown_only else None)
            del got
        del ref


def kernel_name(event_name: str) -> str:
    """'void ns::(anonymous namespace)::bwd_chunk_kernel<float, 8>(...)' -> 'bwd_chunk_kernel'."""
    name = event_name.removeprefix('void ').replace('(anonymous namespace)::', '')
    head = re.split(r'[<(]', name, maxsplit=1)[0]
    return head.rsplit('::', 1)[-1].strip() or event_name[:40]


def profile_kernels(report, lengths, chunk, impls, repeats=3):
    """Where a forward+backward spends its GPU time, per launched kernel
    (torch.profiler), to direct work on the slowest."""
    from torch.profiler import ProfilerActivity, profile
    report('\n### Forward+backward at the Adventurer-T mixer shape, batch 1: GPU time per '
           f'launched kernel (torch.profiler, mean of {repeats})\n')
    report('| implementation | L | kernel | calls per step | ms per step | share |')
    report('|---|---|---|---|---|---|')
    for impl in impls:
        for l in lengths:
            inp = adventurer_inputs(1, l)
            fwd_bwd = fwd_bwd_step(scan_fn(impl, chunk), inp, torch.randn_like(inp['x']))
            fwd_bwd()
            synchronize()
            activity = ProfilerActivity.CUDA if DEVICE == 'cuda' else ProfilerActivity.CPU
            with profile(activities=[activity]) as prof:
                for _ in range(repeats):
                    fwd_bwd()
                synchronize()
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
            for name, (calls, total) in sorted(per_kernel.items(),
                                               key=lambda kv: -kv[1][1])[:10]:
                report(f'| {impl} | {l} | {name} | {calls / repeats:g} | '
                       f'{total / repeats / 1e3:.3f} | {total / step_us:.0%} |')


# Adventurer-B's fused projection per token: z, x, B, C (d_state 64, one
# group), dt; the scan reads its inputs as views of it.
ADV_B = dict(d_inner=1536, heads=24, headdim=64, d_state=64)


def projection_views(proj, cfg=ADV_B):
    """x, z, B, C, dt of ``proj`` (b, l, 2 d_inner + 2 d_state + heads) as views."""
    b, l, _ = proj.shape
    E, h, p, n = cfg['d_inner'], cfg['heads'], cfg['headdim'], cfg['d_state']
    z, x, B, C, dt = proj.split([E, E, n, n, h], dim=-1)
    return dict(x=x.view(b, l, h, p), z=z.view(b, l, h, p), B=B.view(b, l, 1, n),
                C=C.view(b, l, 1, n), dt=dt)


def check_overflow(report, chunk, impls, batch=16, seqlen=50178, cfg=ADV_B, device=None):
    """Every gradient at Adventurer-B's mixer, L 50178, batch 16, inputs as
    views of one projection (dt spans batch x stride = 2.6e9 elements),
    against the chunked scan in fp64, one sample at a time."""
    device = device or DEVICE
    width = 2 * cfg['d_inner'] + 2 * cfg['d_state'] + cfg['heads']
    gen = torch.Generator().manual_seed(3)
    proj = torch.randn(batch, seqlen, width, generator=gen).to(device)
    proj[..., -cfg['heads']:] -= 2  # dt before softplus, as in the other checks
    params = dict(A=-torch.empty(cfg['heads']).uniform_(1, 16, generator=gen).to(device),
                  D=torch.ones(cfg['heads']).to(device),
                  dt_bias=(torch.randn(cfg['heads'], generator=gen) * 0.1).to(device))
    gy = torch.randn(batch, seqlen, cfg['heads'], cfg['headdim'], generator=gen).to(device)
    span = proj.shape[0] * proj.stride(0)
    report(f'\n### {cfg["heads"]} heads x {cfg["headdim"]}, d_state {cfg["d_state"]}, '
           f'L {seqlen}, batch {batch}, inputs as views of one projection ({span:,} '
           'elements in batch x stride), against the chunked scan in fp64 per sample\n')
    report('| implementation | result | worst err / tol | worst tensor |')
    report('|---|---|---|---|')

    def grads(fn, proj, gy, dtype):
        leaf = proj.detach().to(dtype).requires_grad_(True)
        small = {k: v.detach().to(dtype).requires_grad_(True) for k, v in params.items()}
        y = fn(**projection_views(leaf, cfg), **small, dt_softplus=True)
        y.backward(gy.to(dtype))
        return dict(y=y.detach(), dproj=leaf.grad, **{f'd{k}': v.grad for k, v in small.items()})

    for impl in impls:
        try:
            got = grads(scan_fn(impl, chunk), proj, gy, torch.float32)
            if device == 'cuda':
                torch.cuda.synchronize()
        except Exception as e:  # e.g. an illegal memory access past 32-bit offsets
            report(f'| {impl} | FAIL | - | {type(e).__name__}: {str(e).splitlines()[0][:80]} |')
            report.failed |= impl != 'mamba_ssm'
            continue
        worst, name = 0.0, ''
        summed = {k: torch.zeros_like(got[k], dtype=torch.float64)
                  for k in ('dA', 'dD', 'ddt_bias')}
        for i in range(batch):  # samples are independent; dA, dD, ddt_bias add up
            ref = grads(scan_fn('chunked', chunk), proj[i:i + 1], gy[i:i + 1], torch.float64)
            for k in summed:
                summed[k] += ref.pop(k)
            part = compare({k: got[k][i:i + 1] for k in ref}, ref, 6e-4, 2e-3)
            if not part[0] <= worst:
                worst, name = part
            del ref
        part = compare(got, summed, 6e-4, 2e-3)
        if not part[0] <= worst:
            worst, name = part
        report.check(impl, worst, name, impl)
        del got


def time_training_step(report, impls, arch='b', img=224, patch=1, batch=1, repeats=3):
    """One training step of Adventurer (bf16 autocast, activation
    checkpointing) with each scan: median time of ``repeats`` after one
    warm-up, and peak memory."""
    from patchscale_mm.models import Adventurer
    torch.manual_seed(0)
    model = Adventurer(arch=arch, img_size=img, patch_size=patch, with_cp=True).to(DEVICE)
    image = torch.randn(batch, 3, img, img, device=DEVICE)
    tokens = (img // patch)**2 + 2
    report(f'\n### Adventurer-{arch}/{patch} training step ({img} px, {tokens:,} tokens, '
           f'batch {batch}, bf16 autocast, with_cp; median of {repeats})\n')
    report('| scan | step s | peak GiB |')
    report('|---|---|---|')

    def step():
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            out = model(image)[-1]
        out.float().pow(2).mean().backward()
        model.zero_grad(set_to_none=True)

    saved = {k: os.environ.get(k) for k in (BACKEND_ENV, PRECISION_ENV)}
    try:
        for impl in impls:
            # The model's ssd_scan calls read the backend and precision from
            # the environment.
            backend, precision = backend_and_precision(impl)
            os.environ[BACKEND_ENV] = backend
            os.environ.pop(PRECISION_ENV, None)
            if precision:
                os.environ[PRECISION_ENV] = precision
            step()
            synchronize()
            since = reset_peak()
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                step()
                synchronize()
                times.append(time.perf_counter() - start)
            report(f'| {impl} | {statistics.median(times):.3f} | '
                   f'{peak_mib(since) / 1024:.2f} |')
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None)
            if v is not None:
                os.environ[k] = v


SECTIONS = ('reference', 'mamba', 'lengths', 'speed', 'profile', 'overflow', 'step')
DEFAULT_SECTIONS = SECTIONS[:4]  # the others are on request


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--lengths', type=int, nargs='+', default=[3136, 50176])
    parser.add_argument('--chunk', type=int, default=256)
    parser.add_argument('--impls', nargs='+', choices=OURS + ('mamba_ssm',),
                        default=list(OURS),
                        help="this repository's implementations to check (default: all); "
                        "mamba_ssm only with --sections overflow")
    parser.add_argument('--batches', type=int, nargs='+', default=[1, 8],
                        help='batch sizes of the speed table')
    parser.add_argument('--step-model', default='b:224:1:1', metavar='ARCH:IMG:PATCH:BATCH',
                        help='the model of the step section (default: Adventurer-B/1, 224 px, '
                        'batch 1)')
    parser.add_argument('--no-mamba', action='store_true',
                        help='skip the comparison with mamba-ssm even if installed')
    parser.add_argument('--mamba-ssm-src', type=Path, default=None, metavar='DIR',
                        help="take mamba-ssm's Triton SSD kernels from this unpacked "
                        'source tree (nothing is built)')
    parser.add_argument('--sections', nargs='+', choices=SECTIONS,
                        default=list(DEFAULT_SECTIONS),
                        help='which parts to run (default: reference mamba lengths '
                        'speed); e.g. '
                        '`--sections mamba` again under TRITON_F32_DEFAULT=ieee')
    parser.add_argument('--out', type=Path, default=None, help='also write the report here')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit('check_cuda_scan: no CUDA device is visible; run this on a GPU machine')
    if 'mamba_ssm' in args.impls and args.sections != ['overflow']:
        sys.exit('check_cuda_scan: --impls mamba_ssm is for --sections overflow alone; '
                 'the other sections compare with mamba-ssm by themselves')
    for impl in args.impls:
        ok, reason = (load_kernels('cuda') if impl == 'cuda' else
                      triton_available() if impl.startswith('triton') else (True, None))
        if not ok:
            sys.exit(f'check_cuda_scan: {impl} is not available: {reason}')
    with_mamba = not args.no_mamba
    mamba_version = 'not installed'
    if (with_mamba or 'mamba_ssm' in args.impls) and args.mamba_ssm_src:
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
    ours = [i for i in args.impls if i != 'mamba_ssm']
    if 'reference' in args.sections:
        check_small_cases(report, ours)
    if 'mamba' in args.sections and with_mamba:
        check_against_mamba_ssm(report, args.lengths, args.chunk, ours)
    if 'lengths' in args.sections:
        check_lengths(report, args.lengths, args.chunk, ours)
    if 'speed' in args.sections:
        impls = ours + (['mamba_ssm'] if with_mamba else []) + ['chunked']
        time_implementations(report, args.lengths, args.chunk, impls, args.batches)
    if 'profile' in args.sections:
        profile_kernels(report, args.lengths, args.chunk, ours)
    if 'overflow' in args.sections:
        check_overflow(report, args.chunk, args.impls)
    if 'step' in args.sections:
        arch, img, patch, batch = args.step_model.split(':')
        time_training_step(report, ours + (['mamba_ssm'] if with_mamba else []), arch,
                           int(img), int(patch), int(batch))
    report(f'\n{"FAILED" if report.failed else "All checks passed."}')
    if args.out:
        args.out.write_text('\n'.join(report.lines) + '\n')
    return 1 if report.failed else 0


if __name__ == '__main__':
    sys.exit(main())
