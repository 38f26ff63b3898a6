"""The Triton scan (patchscale_mm.ops.ssd_triton) against the sequential
reference, run on CPU by Triton's interpreter (TRITON_INTERPRET=1), which
executes the same kernels block by block with numpy."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch
from tool_scripts import load_tool

from patchscale_mm.ops import ssd_scan
from patchscale_mm.ops.ssd_triton import ssd_scan_triton, triton_available

pytestmark = pytest.mark.skipif(not triton_available()[0],
                                reason=f'Triton: {triton_available()[1]}')


def _interpreter_runs_our_loops() -> bool:
    """Triton 3.6's interpreter cannot take a loop bound computed from a
    program id (it converts a one-element array to an int, which NumPy 2
    refuses); 3.7 and later can. Compiled kernels are not affected."""
    try:
        import triton
        return tuple(int(v) for v in triton.__version__.split('.')[:2]) >= (3, 7)
    except (ImportError, ValueError):
        return False


needs_interpreter = pytest.mark.skipif(
    not _interpreter_runs_our_loops(),
    reason="this Triton's interpreter cannot run loops bounded by program ids (3.7+ can)")

# (b, l, h, p, g, n, chunk, D, z, dt_bias, initial_states, dt_limit[,
# precision]): every optional input, groups, a chunk of one token block (7,
# 16), of several with a partial last block (64, 200) and a partial last
# chunk, headdim and d_state below and above one block, one token. The
# interpreter multiplies in fp32 whatever the precision: the TF32 cases check
# those precisions' launches (64-token blocks for 'tf32x3').
CASES = {
    'one token': (2, 1, 4, 3, 2, 5, 4, 'head', True, True, True, None),
    'groups, odd sizes': (2, 37, 4, 19, 2, 37, 16, 'channel', True, True, True, None),
    'chunk 7, no z/bias/init': (1, 50, 6, 8, 3, 24, 7, 'head', False, False, False, None),
    'blocks within a chunk': (1, 450, 2, 16, 1, 16, 200, None, True, True, True, None),
    'dt clamp, d_state 130': (1, 70, 1, 5, 1, 130, 20, 'channel', True, True, False,
                              (0.05, 0.4)),
    'headdim and d_state 64': (2, 300, 2, 64, 2, 64, 64, 'head', True, True, True, None),
    'tf32x3 launch': (1, 450, 2, 16, 1, 16, 200, 'head', True, True, True, None, 'tf32x3'),
    'tf32 launch': (1, 150, 2, 16, 2, 16, 128, None, True, False, True, None, 'tf32'),
}

RUNNER = r'''
import json, sys
import torch
from patchscale_mm.ops.ssd_torch import ssd_scan_ref
from patchscale_mm.ops.ssd_triton import SSDScanTritonFn, ssd_scan_triton

def inputs(b, l, h, p, g, n, D, z, dt_bias, init, seed):
    gen = torch.Generator().manual_seed(seed)
    rnd = lambda *s, scale=1.0: (torch.randn(*s, generator=gen) * scale).double()
    inp = dict(x=rnd(b, l, h, p), dt=rnd(b, l, h, scale=0.7) - 1.0,
               A=-(torch.rand(h, generator=gen) * 2 + 0.2).double(),
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

def outputs_and_grads(fn, inp, dtype, **kw):
    leaves = {k: v.detach().to(dtype).requires_grad_() for k, v in inp.items()}
    y, final = fn(**leaves, dt_softplus=True, return_final_states=True, **kw)
    gen = torch.Generator().manual_seed(1)
    gy, gf = (torch.randn(t.shape, generator=gen).double() for t in (y, final))
    torch.autograd.backward((y, final), (gy.to(y.dtype), gf.to(final.dtype)))
    out = dict(y=y, final_states=final, **{'d' + k: v.grad for k, v in leaves.items()})
    return {k: v.detach().double() for k, v in out.items()}

results = {}
for name, case in json.loads(sys.argv[1]).items():
    b, l, h, p, g, n, chunk, D, z, bias, init, limit = case[:12]
    inp = inputs(b, l, h, p, g, n, D, z, bias, init, seed=l)
    kw = {} if limit is None else dict(dt_limit=tuple(limit))
    ref = outputs_and_grads(ssd_scan_ref, inp, torch.float64, **kw)
    got = outputs_and_grads(ssd_scan_triton, inp, torch.float32, chunk_size=chunk,
                            precision=(case[12:] or ['ieee'])[0], **kw)
    # fp32 tolerance of the other scan tests: rtol 6e-4, atol 2e-3.
    errs = {k: ((got[k] - r).abs() / (2e-3 + 6e-4 * r.abs())).max().item()
            for k, r in ref.items()}
    results[name] = dict(errs=errs, keys=sorted(got), ref_keys=sorted(ref))

# What the backward keeps beyond its inputs: the state entering each chunk
# and the final state, (b, h, chunks, n, p) and (b, h, p, n).
b, l, h, p, g, n, chunk = 2, 40, 3, 8, 1, 16, 16
inp = {k: v.float().requires_grad_() for k, v in
       inputs(b, l, h, p, g, n, 'head', True, True, True, seed=0).items()}
saved = []
with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
    ssd_scan_triton(**inp, chunk_size=chunk)
extra = sorted(tuple(t.shape) for t in saved if not any(t is v for v in inp.values()))
results['saved beyond inputs'] = extra

# bf16 activations: computed in fp32, y and each gradient in its input's dtype.
raw = inputs(2, 30, 2, 8, 1, 16, 'head', True, True, True, seed=5)
half = {k: v.to(torch.bfloat16) if k in ('x', 'B', 'C', 'z') else v.float()
        for k, v in raw.items()}
lo = {k: v.detach().requires_grad_() for k, v in half.items()}
hi = {k: v.detach().float().requires_grad_() for k, v in half.items()}
y_lo = ssd_scan_triton(**lo, chunk_size=16)
y_hi = ssd_scan_triton(**hi, chunk_size=16)
gy = torch.randn(y_hi.shape, generator=torch.Generator().manual_seed(2))
y_lo.backward(gy.to(torch.bfloat16))
y_hi.backward(gy)
results['bf16'] = dict(
    dtypes={k: str(v.grad.dtype) for k, v in lo.items()} | {'y': str(y_lo.dtype)},
    # Only the rounding of y and dy to bf16 separates the two runs.
    err=max(((a.grad.float() - b.grad).abs().max() / b.grad.abs().max()).item()
            for a, b in zip(lo.values(), hi.values())),
    y_err=((y_lo.float() - y_hi).abs().max() / y_hi.abs().max()).item())

# Inside a model: Adventurer's mixers (D per head, no z, views of one
# projection) on the Triton scan and on the PyTorch chunked scan, both in
# fp32, against the model in fp64. The loss is a fixed linear read-out of
# the class token: the mean square of a final-normed output is constant up
# to the norm's eps, and its gradients would be rounding noise alone.
import copy, os
os.environ['PATCHSCALE_SCAN_BACKEND'] = 'torch'  # the composable blocks, not the fused CPU ones
import patchscale_mm.ops.ssd as ssd_mod
from patchscale_mm.models import Adventurer
torch.manual_seed(0)
model = Adventurer(arch=dict(embed_dims=64, num_layers=2, mlp_dims=160), img_size=16,
                   patch_size=4, mixer_cfg=dict(headdim=16, d_state=16, chunk_size=8))
img = torch.randn(2, 3, 16, 16)
readout = torch.randn(2, 64)

def model_grads(net, backend, image):
    ssd_mod.resolve_scan_backend = lambda name, x, inputs=(): backend
    net.zero_grad()
    out = net(image)[-1]
    (out * readout.to(out.dtype)).sum().backward()
    grads = {n: p.grad.double() for n, p in net.named_parameters() if p.grad is not None}
    return out.detach().double(), grads

y64, g64 = model_grads(copy.deepcopy(model).double(), 'torch', img.double())
y_torch, g_torch = model_grads(model, 'torch', img)
y_tri, g_tri = model_grads(model, 'triton', img)
rel = lambda a, b: ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()
results['model'] = dict(
    names=sorted(g_tri) == sorted(g64), count=len(g64),
    y=[rel(y_tri, y64), rel(y_torch, y64)],
    grads={k: [rel(g_tri[k], g64[k]), rel(g_torch[k], g64[k])] for k in g64})
print('RESULTS' + json.dumps(results))
'''


@pytest.fixture(scope='module')
def interpreted():
    """Every case in one interpreter process (Triton reads TRITON_INTERPRET
    when its kernels are defined, so it cannot be switched on here)."""
    env = dict(os.environ, TRITON_INTERPRET='1')
    proc = subprocess.run([sys.executable, '-c', RUNNER, json.dumps(CASES)], env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith('RESULTS'))
    return json.loads(line[len('RESULTS'):])


@pytest.mark.parametrize('case', list(CASES))
@needs_interpreter
def test_triton_scan_matches_the_sequential_reference(interpreted, case):
    result = interpreted[case]
    assert result['keys'] == result['ref_keys']  # every input has a gradient
    worst = {k: round(v, 4) for k, v in result['errs'].items() if not v <= 1.0}
    assert not worst, f'{case}: err / tol above 1 for {worst}'


@needs_interpreter
def test_triton_scan_keeps_one_state_per_chunk_for_backward(interpreted):
    b, h, p, n, chunks = 2, 3, 8, 16, 3  # l 40 in chunks of 16
    assert interpreted['saved beyond inputs'] == sorted([[b, h, chunks, n, p], [b, h, p, n]])


@needs_interpreter
def test_triton_scan_keeps_bf16_activations_in_bf16(interpreted):
    result = interpreted['bf16']
    assert result['dtypes'] == dict(x='torch.bfloat16', dt='torch.float32',
                                    A='torch.float32', B='torch.bfloat16',
                                    C='torch.bfloat16', D='torch.float32',
                                    z='torch.bfloat16', dt_bias='torch.float32',
                                    initial_states='torch.float32', y='torch.bfloat16')
    # bf16 keeps 8 bits: relative rounding 2**-8, summed over a few terms.
    assert result['y_err'] < 2**-7 and result['err'] < 2**-5


@needs_interpreter
def test_adventurer_trains_the_same_on_the_triton_scan(interpreted):
    """Against the model in fp64, the output and every parameter's gradient
    on the Triton scan are within fp32 rounding, as on the PyTorch scan.

    Relative to each tensor's largest entry. A gradient here passes through
    a few dozen operations whose longest sums run over n = 2 x 17 tokens x
    160 channels; rounding (u = 2^-24 per operation) grows like u * sqrt(n)
    over such a sum, and the test allows 4x that (1.8e-5). The largest
    errors of both scans are 1e-6 to 3e-6 on oneMKL's Intel and AMD paths,
    while a scan backward whose dx is 0.1% off, or whose dB is doubled,
    moves a gradient by 1e-4 or more. The ratio of the two scans' errors is
    not asserted: both are rounding noise, whose ratio moves with the order
    in which the CPU's BLAS sums.
    """
    result = interpreted['model']
    assert result['names'] and result['count'] > 10
    tol = 4 * 2.0**-24 * math.sqrt(2 * 17 * 160)
    for name, (triton_err, torch_err) in [('y', result['y']), *result['grads'].items()]:
        assert triton_err <= tol and torch_err <= tol, (name, triton_err, torch_err, tol)


def _small_inputs(dtype=torch.float32):
    return dict(x=torch.randn(1, 4, 2, 3, dtype=dtype), dt=torch.rand(1, 4, 2, dtype=dtype),
                A=-torch.rand(2, dtype=dtype), B=torch.randn(1, 4, 1, 5, dtype=dtype),
                C=torch.randn(1, 4, 1, 5, dtype=dtype))


def test_triton_scan_refuses_bad_options_in_one_line():
    with pytest.raises(ValueError, match=r"precision must be one of .*'tf32'.*got 'fp16'"):
        ssd_scan_triton(**_small_inputs(), precision='fp16')
    with pytest.raises(ValueError, match="fp64 inputs use backend 'cuda' or 'torch'"):
        ssd_scan_triton(**_small_inputs(torch.float64))


def test_triton_scan_refuses_a_chunk_past_32_bit_offsets():
    """Offsets within a chunk are 32-bit: a chunk of 2**14 tokens of 1024 x 128
    channels spans 2**31 elements. Checked from shapes alone (meta tensors)."""
    from patchscale_mm.ops.ssd_triton import _Geometry
    x = torch.empty(1, 2**14, 1024, 128, device='meta')
    B = torch.empty(1, 2**14, 1, 64, device='meta')
    with pytest.raises(ValueError, match='a chunk of 16384 tokens x 131072 elements'):
        _Geometry(x, B, 2**14, 'ieee')
    assert _Geometry(x, B, 2**13, 'ieee').nchunks == 2


def test_triton_precision_follows_the_environment(monkeypatch):
    monkeypatch.setenv('PATCHSCALE_TRITON_PRECISION', 'bf16')
    with pytest.raises(ValueError, match=r"\$PATCHSCALE_TRITON_PRECISION\), got 'bf16'"):
        ssd_scan_triton(**_small_inputs())


def test_triton_backend_needs_cuda_tensors():
    with pytest.raises(RuntimeError, match="backend 'triton' needs CUDA tensors"):
        ssd_scan(**_small_inputs(), backend='triton')


def test_triton_resources_reads_registers_and_spills_of_a_compiled_kernel(capsys):
    """tools/analysis/triton_resources.py compiles for sm_90 here (no GPU)
    and reads ptxas's resource use back from the cubin."""
    tool = load_tool('triton_resources')
    if tool.find_cuobjdump() is None:
        pytest.skip("no cuobjdump in Triton's NVIDIA backend")
    with pytest.raises(SystemExit):
        tool.parse_args(['--configs', '64:4:fp16'])
    assert tool.parse_args(['--configs', '64:8:tf32:1']).configs == [(64, 8, 'tf32', 1)]
    # Every kernel compiles for the GPU (the interpreter does not compile).
    assert tool.main(['--configs', '16:4:ieee:1', '16:4:tf32', '--dstate', '16',
                      '--headdim', '16', '--with-z']) == 0
    rows = [r.split('|')[1:-1] for r in capsys.readouterr().out.splitlines()
            if r.startswith('| ') and not r.startswith('| kernel')]
    names = [r[0].strip() for r in rows]
    assert names == 2 * ['pass_states', 'chunk_states (B, dt x)', 'chunk_states (dy)',
                         'chunk_outputs', 'chunk_grads (later rows)',
                         'chunk_grads (earlier rows)']
    for name, bt, warps, stages, precision, regs, stack, shared, _ in rows:
        assert 16 <= int(regs) <= 255 and 'over' not in shared, name
        if 'states' in name:  # one 16 x 16 accumulator per 128 threads
            assert int(stack) == 0, name


SMOKE = r'''
import sys, types
import torch
sys.path.insert(0, sys.argv[1])
import check_cuda_scan as tool
tool.DEVICE = 'cpu'
torch.cuda.is_available = lambda: True
torch.cuda.get_device_properties = lambda i: types.SimpleNamespace(name='CPU smoke',
                                                                   total_memory=0)
tool.CASES = tool.CASES[:3]
tool.LONG_CASE = (2, 70, 2, 16, 24)
tool.MIXERS = {'tiny': 2}
rc = tool.main(['--lengths', '40', '--chunk', '16', '--batches', '1', '2', '--no-mamba',
                '--impls', 'triton', 'triton_tf32', 'triton_tf32x3', '--sections',
                'reference', 'lengths',
                'speed', 'profile'])
report = tool.Report()
tool.check_overflow(report, 16, ['triton'], batch=2, seqlen=40,
                    cfg=dict(d_inner=32, heads=2, headdim=16, d_state=16))
tool.time_training_step(report, ['cpp', 'torch'], arch='t', img=32, patch=8)
print('RC', rc, int(report.failed))
'''


@needs_interpreter
def test_check_cuda_scan_runs_every_section_on_cpu():
    """The prepared GPU check, section by section, on CPU at small sizes
    (Triton's interpreter for the Triton scan, the C++ kernel and the torch
    scan for the model step), so that no device time is lost to the
    script itself."""
    from pathlib import Path
    tools = Path(__file__).parents[1] / 'tools' / 'analysis'
    env = dict(os.environ, TRITON_INTERPRET='1')
    proc = subprocess.run([sys.executable, '-c', SMOKE, str(tools)], env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert 'RC 0 0' in out, out[-3000:]
    for row in ('| b2 l37 h4 p19 g1 n37 chunk16, triton, fp32 | ok |',
                '| b2 l37 h4 p19 g1 n37 chunk16, triton_tf32, fp32 | not checked (TF32) |',
                '| L 40, triton | ok |', '| L 70, batch 2, h 2, p 16, n 24, triton | ok |',
                '| L 40, triton_tf32x3 | ok |',
                '| tiny | 2 | 40 | chunked |', '| triton | ok |', '| cpp | ', '| torch | '):
        assert row in out, row
