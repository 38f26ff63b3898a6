"""The compiled selective-scan kernels against the sequential reference."""
import importlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from tool_scripts import load_tool

from patchscale_mm.ops import ssd_scan, ssd_scan_chunked, ssd_scan_ref
from patchscale_mm.ops.backend import load_kernels
from patchscale_mm.ops.threads import kernel_threads, use_kernel_threads

ssd_mod = importlib.import_module('patchscale_mm.ops.ssd')
backend_mod = importlib.import_module('patchscale_mm.ops.backend')
CSRC = Path(ssd_mod.__file__).parent / 'csrc'

CPP_OK, CPP_REASON = load_kernels('cpu')
needs_cpp = pytest.mark.skipif(not CPP_OK, reason=f'C++ kernel not built: {CPP_REASON}')


@pytest.fixture(autouse=True, scope='module')
def one_thread():
    """These shapes are small: a second thread only adds waiting, a lot of it
    on a loaded 2-vCPU machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make_inputs(b=2, l=7, h=4, p=3, g=2, n=5, dtype=torch.float64, seed=0,
                D='head', z=True, dt_bias=True, init=True):
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(dtype)

    inp = dict(
        x=rnd(b, l, h, p),
        dt=(torch.rand(b, l, h, generator=gen) * 0.5 + 0.05).to(dtype),
        A=-(torch.rand(h, generator=gen) * 2 + 0.2).to(dtype),
        B=rnd(b, l, g, n),
        C=rnd(b, l, g, n),
    )
    if D is not None:
        inp['D'] = rnd(h) if D == 'head' else rnd(h, p)
    if z:
        inp['z'] = rnd(b, l, h, p)
    if dt_bias:
        inp['dt_bias'] = rnd(h, scale=0.5)
    if init:
        inp['initial_states'] = rnd(b, h, p, n)
    return inp


def run_with_grads(fn, inp, seed=1, **kwargs):
    """Output, final state and the gradient of every input for one fixed
    upstream gradient of both outputs."""
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in inp.items()}
    y, final = fn(**leaves, return_final_states=True, **kwargs)
    gen = torch.Generator().manual_seed(seed)
    gy = torch.randn(y.shape, generator=gen).to(y.dtype)
    gf = torch.randn(final.shape, generator=gen).to(final.dtype)
    torch.autograd.backward((y, final), (gy, gf))
    return y, final, {k: v.grad for k, v in leaves.items()}


def assert_matches_ref(inp, rtol, atol, ref_inp=None, **kwargs):
    chunk = kwargs.pop('chunk_size', 256)
    y, f, g = run_with_grads(ssd_scan, inp, backend='cpp', chunk_size=chunk, **kwargs)
    y_r, f_r, g_r = run_with_grads(ssd_scan_ref, ref_inp or inp, **kwargs)
    assert y.dtype == inp['x'].dtype and y.shape == inp['x'].shape
    torch.testing.assert_close(y, y_r.to(y.dtype), rtol=rtol, atol=atol, msg='y')
    torch.testing.assert_close(f, f_r.to(f.dtype), rtol=rtol, atol=atol, msg='final_states')
    assert set(g) == set(inp)
    for k in g:
        assert g[k].dtype == inp[k].dtype, k
        torch.testing.assert_close(g[k], g_r[k].to(g[k].dtype), rtol=rtol, atol=atol,
                                   msg=lambda m, k=k: f'grad {k}: {m}')


# Shapes cover a single token, sequences that are not a multiple of the chunk
# (and shorter than one chunk), headdim/d_state below, between and above the
# vector widths (4, 8, 16 lanes), groups 1 and > 1, and every optional input.
CASES = [
    # b, l, h, p, g, n, chunk, D, z, dt_bias, init, softplus
    (2, 1, 4, 3, 2, 5, 4, 'head', True, True, True, True),
    (2, 7, 4, 3, 2, 5, 4, 'channel', True, True, True, True),
    (1, 9, 2, 16, 1, 16, 256, None, False, False, False, False),
    (2, 37, 4, 19, 1, 37, 16, 'head', False, True, True, True),
    (1, 50, 6, 8, 3, 24, 7, 'channel', True, False, False, True),
    (2, 33, 2, 64, 2, 64, 32, 'head', True, True, False, False),
    (1, 70, 1, 5, 1, 70, 20, None, True, True, True, True),
]


@needs_cpp
@pytest.mark.parametrize('case', CASES, ids=lambda c: 'b{}l{}h{}p{}g{}n{}'.format(*c[:5], c[5]))
def test_matches_reference_fp64(case):
    b, l, h, p, g, n, chunk, D, z, dt_bias, init, softplus = case
    inp = make_inputs(b=b, l=l, h=h, p=p, g=g, n=n, D=D, z=z, dt_bias=dt_bias, init=init,
                      seed=l)
    assert_matches_ref(inp, rtol=1e-10, atol=1e-10, chunk_size=chunk, dt_softplus=softplus)


@needs_cpp
@pytest.mark.sum_order
@pytest.mark.parametrize('case', CASES[1::2], ids=lambda c: 'b{}l{}h{}p{}g{}n{}'.format(*c[:5], c[5]))
def test_matches_reference_fp32(case):
    b, l, h, p, g, n, chunk, D, z, dt_bias, init, softplus = case
    inp = make_inputs(b=b, l=l, h=h, p=p, g=g, n=n, D=D, z=z, dt_bias=dt_bias, init=init,
                      seed=l, dtype=torch.float32)
    ref = {k: v.double() for k, v in inp.items()}
    assert_matches_ref(inp, rtol=6e-4, atol=2e-3, ref_inp=ref, chunk_size=chunk,
                       dt_softplus=softplus)


@needs_cpp
@pytest.mark.sum_order
@pytest.mark.parametrize('b,h,g', [(2, 4, 2), (3, 4, 1)])
def test_threads_agree(b, h, g):
    """Heads of a group on different threads: their dB/dC are summed from
    per-slice buffers in slice order, so two threads give one thread's bits.
    With 3 x 4 (batch, head) pairs, two threads split a batch row's heads (the
    forward advances a row's heads together)."""
    inp = make_inputs(b=b, l=40, h=h, p=8, g=g, n=16, seed=5)
    y1, f1, g1 = run_with_grads(ssd_scan, inp, backend='cpp', chunk_size=16)
    torch.set_num_threads(2)
    try:
        with use_kernel_threads(2):  # split even where the timed choice would not
            y2, f2, g2 = run_with_grads(ssd_scan, inp, backend='cpp', chunk_size=16)
    finally:
        torch.set_num_threads(1)
    torch.testing.assert_close(y2, y1, rtol=0, atol=0)
    for k in g1:  # the same bits: the slices summed do not depend on threads
        torch.testing.assert_close(g2[k], g1[k], rtol=0, atol=0, msg=k)


@needs_cpp
def test_kernel_threads_cap_the_split():
    """At most the set number of threads, never more than torch's; on any of
    them the same bits, four heads of one group summed in fixed slices."""
    inp = make_inputs(b=1, l=40, h=4, p=8, g=1, n=16, seed=5)
    y1, f1, g1 = run_with_grads(ssd_scan, inp, backend='cpp', chunk_size=16)
    torch.set_num_threads(2)
    try:
        with use_kernel_threads(1):
            assert kernel_threads() == 1
            y2, f2, g2 = run_with_grads(ssd_scan, inp, backend='cpp', chunk_size=16)
        with use_kernel_threads(3):
            assert kernel_threads() == 2  # never more than torch's
            _, _, g3 = run_with_grads(ssd_scan, inp, backend='cpp', chunk_size=16)
    finally:
        torch.set_num_threads(1)
    assert torch.equal(y1, y2) and torch.equal(f1, f2)
    for k in g1:
        assert torch.equal(g1[k], g2[k]) and torch.equal(g1[k], g3[k]), k
    with pytest.raises(ValueError, match='positive number'):
        with use_kernel_threads(-1):
            pass


def run_python(code, env=None, timeout=300):
    env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, '-c', textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=timeout)


@needs_cpp
@pytest.mark.skipif(not hasattr(os, 'sched_setaffinity'), reason='needs CPU affinity (Linux)')
def test_two_threads_on_one_cpu_choose_one():
    """Two torch threads confined to one CPU (the limit of two hyperthreads of
    one core): the timed choice finds no gain and keeps the kernels on one
    thread, as the timings it reports say."""
    res = run_python('''
        import json, os, torch
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        torch.set_num_threads(2)
        from patchscale_mm.ops import _C
        from patchscale_mm.ops.threads import kernel_threads
        print(kernel_threads(), json.dumps(_C.split_timing()))
    ''', env={'PATCHSCALE_KERNEL_THREADS': 'auto'})
    assert res.returncode == 0, res.stderr[-2000:]
    used, timing = res.stdout.split(' ', 1)
    timing = json.loads(timing)
    assert timing['measured'] and timing['threads'] == 2, timing
    assert timing['one_ms'] < 1.25 * timing['split_ms'], timing
    assert used == '1'


@needs_cpp
def test_bad_kernel_threads_setting_is_one_line():
    res = run_python('''
        import torch
        from patchscale_mm.ops import ssd_scan
        x = torch.randn(1, 4, 2, 3)
        ssd_scan(x, torch.rand(1, 4, 2), -torch.rand(2), torch.randn(1, 4, 1, 5),
                 torch.randn(1, 4, 1, 5), backend='cpp')
    ''', env={'PATCHSCALE_KERNEL_THREADS': 'two'})
    assert res.returncode != 0
    assert ("PATCHSCALE_KERNEL_THREADS must be 'auto' or a positive number of threads, "
            "got 'two'") in res.stderr


@needs_cpp
def test_dt_limit_and_large_dt():
    """Clamped steps get no gradient; softplus is the identity past 20."""
    inp = make_inputs(l=12, p=4, n=6)
    inp['dt'] = torch.linspace(-3, 25, inp['dt'].numel(), dtype=torch.float64).reshape(
        inp['dt'].shape)
    assert_matches_ref(inp, rtol=1e-10, atol=1e-10, chunk_size=5, dt_softplus=True,
                       dt_limit=(0.1, 22.0))


def assert_close_per_row(actual, expected, tol, name):
    """|actual - expected| within tol times the largest entry of its row
    (last dimension; of the whole tensor for vectors), so that rows whose
    values differ by many orders of magnitude are each held to their own."""
    expected = expected.double()
    if expected.dim() < 2:
        scale = expected.abs().amax()
    else:
        scale = expected.abs().amax(dim=-1, keepdim=True)
    err = (actual.double() - expected).abs()
    assert torch.isfinite(actual).all(), name
    assert (err <= tol * scale).all(), f'{name}: {(err / scale).max().item():.2e} > {tol}'


@needs_cpp
@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
@pytest.mark.parametrize('head', ['decaying', 'growing'])
def test_scaled_state_folds_where_the_decay_product_leaves_range(head, dtype):
    """Forward and backward carry the state and its gradient divided by a
    product of decays and fold it back where that product would leave
    [2^-60, 2^60]. The steps here cross that range both ways inside blocks of
    16 tokens: decays that underflow to exactly 0 in fp32 (dt * A = -120), a
    run whose product passes 2^-60 on its fifth token, and a growing head
    (A > 0) whose product passes 2^60 on its ninth; outputs and every
    gradient against the token loop in fp64."""
    b, l, p, n = 1, 40, 16, 16
    inp = make_inputs(b=b, l=l, h=1, p=p, g=1, n=n, D='head', z=True, dt_bias=False,
                      init=True, seed=7)
    steps = torch.full((l,), 0.3, dtype=torch.float64)
    if head == 'decaying':
        inp['A'] = torch.tensor([-1.0], dtype=torch.float64)
        steps[3], steps[21] = 120.0, 120.0        # decay exp(-120): 0 in fp32
        steps[24:34] = 10.0                       # product e^-50 after 5 tokens
        assert math.exp(-120) < torch.finfo(torch.float32).tiny / 2 ** 23
    else:
        inp['A'] = torch.tensor([1.0], dtype=torch.float64)
        steps[16:27] = 5.0                        # growth: e^45 > 2^60 after 9
        steps[27:] = 0.01
    inp['dt'] = steps.reshape(b, l, 1)
    inp = {k: v.to(dtype) for k, v in inp.items()}
    ref = {k: v.double() for k, v in inp.items()}
    y, f, g = run_with_grads(ssd_scan, inp, backend='cpp', chunk_size=32)
    y_r, f_r, g_r = run_with_grads(ssd_scan_ref, ref)
    # fp32: a few hundred units of rounding (2^-24) of each row's scale; the
    # growing head's outputs reach e^55. The step and decay gradients are a
    # difference of two sums, <ds_t, s_t> - <u_t, du_t>, that nearly cancel
    # where a decay underflows, so they are held to five times the tolerance
    # (their terms' scale).
    tol = 1e-11 if dtype == torch.float64 else 2e-5
    assert_close_per_row(y, y_r, tol, 'y')
    assert_close_per_row(f, f_r, tol, 'final_states')
    for k in g:
        loose = 5 if k in ('dt', 'A') and dtype == torch.float32 else 1
        assert_close_per_row(g[k], g_r[k], loose * tol, f'grad {k}')


def count_subnormal(t):
    return int(((t.abs() < torch.finfo(t.dtype).tiny) & (t != 0)).sum())


@needs_cpp
@pytest.mark.parametrize('threads', [1, 2])
def test_kernels_flush_subnormals_and_leave_the_callers_mode(threads):
    """A gradient read from the last token only decays by e^-2 per token back
    through the state, through fp32's subnormal range (below 1.2e-38, e^-87)
    about 44 to 51 tokens before it. PyTorch's ops (the reference in fp32)
    keep such values; the kernels flush them to zero and agree with the
    fp64 reference elsewhere. Afterwards every thread computes subnormals
    again."""
    l = 64
    inp = make_inputs(b=1, l=l, h=1, p=16, g=1, n=16, D=None, z=False, dt_bias=False,
                      init=False, seed=3, dtype=torch.float32)
    inp['A'] = torch.tensor([-1.0])
    inp['dt'] = torch.full((1, l, 1), 2.0)
    gy = torch.zeros(1, l, 1, 16)
    gy[:, -1] = 1.0

    def grads(fn, dtype, **kwargs):
        leaves = {k: v.detach().to(dtype).requires_grad_(True) for k, v in inp.items()}
        fn(**leaves, **kwargs).backward(gy.to(dtype))
        return {k: v.grad for k, v in leaves.items()}

    ref32 = grads(ssd_scan_ref, torch.float32)
    assert count_subnormal(ref32['x']) > 0  # the case is real
    ref64 = grads(ssd_scan_ref, torch.float64)
    with use_kernel_threads(threads):
        got = grads(ssd_scan, torch.float32, backend='cpp', chunk_size=32)
    for k, g in got.items():
        assert count_subnormal(g) == 0, k
    # Each gradient is a sum over 16 lanes of products with inputs below 8 in
    # magnitude, and each product may lose up to the smallest normal where it
    # flushes: 128 of it bound the loss; anything flushed above that fails.
    atol = 128 * torch.finfo(torch.float32).tiny
    for k in ('x', 'B', 'C'):
        torch.testing.assert_close(got[k], ref64[k].float(), rtol=1e-4, atol=atol,
                                   msg=lambda m, k=k: f'grad {k}: {m}')
    # The mode is restored on the calling thread and on torch's other threads.
    product = torch.full((1 << 20,), 1e-30) * 1e-10
    assert count_subnormal(product) == product.numel()


@needs_cpp
def test_gradcheck():
    inp = make_inputs(b=1, l=6, h=2, p=3, g=1, n=4, D='channel', seed=4)
    names = list(inp)

    def f(*args):
        return ssd_scan(**dict(zip(names, args)), dt_softplus=True, return_final_states=True,
                        chunk_size=4, backend='cpp')

    leaves = tuple(inp[k].requires_grad_(True) for k in names)
    assert torch.autograd.gradcheck(f, leaves)


@needs_cpp
def test_closed_form_attention():
    """y = (L o (C B^T)) (dt x) with L_ij = exp(sum_{k=j+1..i} dt_k A) for i >= j:
    the quadratic form of SSD, written independently of any recurrence."""
    inp = make_inputs(b=1, l=9, h=2, p=5, g=1, n=7, D=None, z=False, dt_bias=False,
                      init=False, seed=3)
    x, dt, A = inp['x'][0], inp['dt'][0], inp['A']
    B, C = inp['B'][0, :, 0], inp['C'][0, :, 0]
    l = x.shape[0]
    y_exp = torch.zeros_like(x)
    for hi in range(x.shape[1]):
        Lmat = torch.zeros(l, l, dtype=x.dtype)
        for i in range(l):
            for j in range(i + 1):
                Lmat[i, j] = math.exp(float(dt[j + 1:i + 1, hi].sum() * A[hi]))
        y_exp[:, hi] = (Lmat * (C @ B.T)) @ (dt[:, hi, None] * x[:, hi])
    y = ssd_scan(**inp, chunk_size=4, backend='cpp').squeeze(0)
    torch.testing.assert_close(y, y_exp, rtol=1e-12, atol=1e-12)


@needs_cpp
def test_bf16_inputs_accumulate_in_fp32():
    inp = make_inputs(l=40, p=8, n=16, dtype=torch.bfloat16, init=False)
    y, f, g = run_with_grads(ssd_scan, inp, backend='cpp', dt_softplus=True, chunk_size=16)
    assert y.dtype == torch.bfloat16 and f.dtype == torch.float32
    assert all(g[k].dtype == torch.bfloat16 for k in g)
    # Same bf16 inputs through the fp32-accumulating reference.
    y_r, f_r = ssd_scan_ref(**inp, dt_softplus=True, return_final_states=True)
    torch.testing.assert_close(y.float(), y_r.float(), rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(f, f_r, rtol=1e-4, atol=1e-4)


@needs_cpp
def test_backward_saves_no_per_token_states():
    b, l, h, p, g, n = 1, 512, 2, 8, 1, 16
    inp = make_inputs(b=b, l=l, h=h, p=p, g=g, n=n, dtype=torch.float32)
    leaves = {k: v.requires_grad_(True) for k, v in inp.items()}
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = ssd_scan(**leaves, dt_softplus=True, chunk_size=64, backend='cpp')
    # Saved: the inputs and one state per chunk, (b, h, l / 64, n, p).
    assert sizes and max(sizes) <= max(b * l * h * p, b * h * (l // 64) * n * p)
    assert sum(sizes) < b * l * h * p * n
    y.sum().backward()


@needs_cpp
def test_long_sequence_int64_offsets():
    """Adventurer-B/1's length, batch 2. b * l * h * p * n (the per-token
    state count, which a kernel indexing per-token states in int32 overflows)
    passes 2^31. The chunked reference runs the head of the sequence without
    gradients, then the tail from the head's final state, where the kernel's
    offsets are largest; values and gradients must agree there."""
    b, l, h, p, g, n, tail = 2, 50178, 2, 64, 1, 192, 256
    assert b * l * h * p * n > 2**31 > b * l * h * p
    gen = torch.Generator().manual_seed(0)
    inp = dict(x=torch.randn(b, l, h, p, generator=gen),
               dt=torch.rand(b, l, h, generator=gen) * 0.1,
               B=torch.randn(b, l, g, n, generator=gen) * 0.3,
               C=torch.randn(b, l, g, n, generator=gen) * 0.3)
    per_head = dict(A=-torch.rand(h, generator=gen) - 0.5, D=torch.randn(h, generator=gen))
    with torch.no_grad():
        y_head, s_head = ssd_scan_chunked(**{k: v[:, :-tail] for k, v in inp.items()},
                                          **per_head, return_final_states=True)
    leaves = {k: v.requires_grad_(True) for k, v in inp.items()}
    y, final = ssd_scan(**leaves, **per_head, return_final_states=True, backend='cpp')
    tail_leaves = {k: v.detach()[:, -tail:].requires_grad_(True) for k, v in inp.items()}
    y_tail, f_tail = ssd_scan_chunked(**tail_leaves, **per_head, initial_states=s_head,
                                      return_final_states=True)
    torch.testing.assert_close(y[:, :-tail], y_head, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(y[:, -tail:], y_tail, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(final, f_tail, rtol=1e-4, atol=1e-4)
    w = torch.randn(y_tail.shape, generator=gen)
    (y[:, -tail:] * w).sum().backward()
    (y_tail * w).sum().backward()
    for k in inp:
        torch.testing.assert_close(leaves[k].grad[:, -tail:], tail_leaves[k].grad,
                                   rtol=1e-4, atol=1e-4, msg=lambda m, k=k: f'grad {k}: {m}')


# ---------------------------------------------------------------------------
# Dispatch
# ---------------------------------------------------------------------------
@needs_cpp
def test_auto_dispatches_to_cpp_on_cpu(monkeypatch):
    inp = make_inputs(l=7, dtype=torch.float32)
    y_cpp = ssd_scan(**inp, chunk_size=4, backend='cpp')
    for backend in (None, 'auto'):
        torch.testing.assert_close(ssd_scan(**inp, chunk_size=4, backend=backend), y_cpp,
                                   rtol=0, atol=0)
    monkeypatch.setenv('PATCHSCALE_SCAN_BACKEND', 'cpp')
    torch.testing.assert_close(ssd_scan(**inp, chunk_size=4), y_cpp, rtol=0, atol=0)
    assert not torch.equal(y_cpp, ssd_scan(**inp, chunk_size=4, backend='torch'))


def test_missing_kernel_falls_back_once_or_raises(monkeypatch):
    monkeypatch.setattr(backend_mod, 'load_kernels', lambda device: (False, 'not built (test)'))
    backend_mod._warn_fallback.cache_clear()
    inp = make_inputs(l=5)
    y_torch = ssd_scan(**inp, backend='torch')
    with pytest.warns(UserWarning, match='not built'):
        torch.testing.assert_close(ssd_scan(**inp, backend='auto'), y_torch, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match=r"backend 'cpp' requested but not built") as e:
        ssd_scan(**inp, backend='cpp')
    assert '\n' not in str(e.value)
    backend_mod._warn_fallback.cache_clear()


def test_backend_device_mismatch():
    inp = make_inputs(l=3)
    with pytest.raises(RuntimeError, match="backend 'cuda' needs cuda tensors"):
        ssd_scan(**inp, backend='cuda')


def _op_args(inp, D=None):
    """Positional arguments of torch.ops.patchscale_mm.ssd_fwd (D as (h, p))."""
    return [inp['x'], inp['dt'], inp['A'], inp['B'], inp['C'], D, inp.get('z'),
            inp.get('dt_bias'), inp.get('initial_states')]


@needs_cpp
@pytest.mark.parametrize('corrupt, message', [
    (lambda a: a.__setitem__(1, a[1][:, :-1].contiguous()),
     r'dt has shape \[2, 6, 4\], expected \[2, 7, 4\]'),
    (lambda a: a.__setitem__(2, a[2].float()), 'A has dtype Float, expected Double'),
    (lambda a: a.__setitem__(4, a[4].transpose(1, 2).contiguous().transpose(1, 2)),
     'C must be contiguous'),
    (lambda a: a.__setitem__(5, torch.zeros(4, 2, dtype=torch.float64)),
     r'D has shape \[4, 2\], expected \[4, 3\]'),
    (lambda a: a.__setitem__(3, a[3][:, :, :1].expand(2, 7, 3, 5).contiguous()),
     'groups must divide heads'),
    (lambda a: a.__setitem__(0, a[0].half()), 'computes in float32 or float64, got Half'),
], ids=['dt-shape', 'A-dtype', 'C-layout', 'D-shape', 'B-groups', 'x-dtype'])
def test_op_rejects_bad_inputs_by_name(corrupt, message):
    """The op checks every raw-pointer input (shape, dtype, layout) before the
    kernel reads it, and says which input is wrong."""
    args = _op_args(make_inputs())
    corrupt(args)
    with pytest.raises(RuntimeError, match=f'ssd_scan cpp: {message}'):
        torch.ops.patchscale_mm.ssd_fwd(*args, True, 0.0, math.inf, 4, True)


@needs_cpp
def test_op_backward_checks_the_saved_chunk_states():
    args = _op_args(make_inputs())
    out, final, states = torch.ops.patchscale_mm.ssd_fwd(*args, True, 0.0, math.inf, 4, True)
    assert states.shape == (2, 4, 2, 5, 3)  # 7 tokens in chunks of 4
    grads = torch.ops.patchscale_mm.ssd_bwd(out, final, *args, states, True, 0.0, math.inf, 4)
    assert [tuple(g.shape) for g in grads[:5]] == [tuple(a.shape) for a in args[:5]]
    with pytest.raises(RuntimeError, match=r'chunk_states has shape \[2, 4, 2, 5, 3\], '
                                           r'expected \[2, 4, 4, 5, 3\]'):
        torch.ops.patchscale_mm.ssd_bwd(out, final, *args, states, True, 0.0, math.inf, 2)
    with pytest.raises(RuntimeError, match=r'dout has shape \[2, 6, 4, 3\]'):
        torch.ops.patchscale_mm.ssd_bwd(out[:, :-1].contiguous(), final, *args, states,
                                        True, 0.0, math.inf, 4)


@needs_cpp
def test_torch_compile_traces_the_op():
    inp = make_inputs(l=9, p=4, n=8, dtype=torch.float32)
    leaves = {k: v.requires_grad_(True) for k, v in inp.items()}

    def f(**kw):
        return ssd_scan(**kw, dt_softplus=True, chunk_size=4, backend='cpp')

    y = torch.compile(f, backend='aot_eager', fullgraph=True)(**leaves)
    torch.testing.assert_close(y, f(**leaves))
    y.sum().backward()
    assert all(v.grad is not None for v in leaves.values())


@needs_cpp
@pytest.mark.parametrize('isa', ['avx2', 'generic'])
def test_narrower_instruction_sets(isa):
    """The AVX2 and portable code paths, which this CPU would not pick."""
    script = textwrap.dedent('''
        import sys, torch
        sys.path.insert(0, sys.argv[1])
        from test_ssd_kernel import CASES, assert_matches_ref, make_inputs
        from patchscale_mm.ops import _C
        print(_C.cpu_isa())
        for case in CASES[1:]:
            b, l, h, p, g, n, chunk, D, z, dt_bias, init, softplus = case
            inp = make_inputs(b=b, l=l, h=h, p=p, g=g, n=n, D=D, z=z, dt_bias=dt_bias,
                              init=init, seed=l)
            assert_matches_ref(inp, rtol=1e-10, atol=1e-10, chunk_size=chunk,
                               dt_softplus=softplus)
    ''')
    env = dict(os.environ, PATCHSCALE_SSD_CPU_ISA=isa, OMP_NUM_THREADS='1')
    res = subprocess.run([sys.executable, '-c', script, str(Path(__file__).parent)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    cpu_has_avx2 = 'avx2' in Path('/proc/cpuinfo').read_text() if Path(
        '/proc/cpuinfo').exists() else False
    if isa == 'generic' or cpu_has_avx2:
        assert res.stdout.split()[0] == isa


# ---------------------------------------------------------------------------
# Adventurer's mixer
# ---------------------------------------------------------------------------
@needs_cpp
def test_adventurer_mixer_kernel_matches_reference(monkeypatch):
    from patchscale_mm.models.layers import Mamba2Mixer
    blocks = importlib.import_module('patchscale_mm.ops.blocks')
    torch.manual_seed(0)
    mixer = Mamba2Mixer(64, d_state=16, headdim=16, chunk_size=8).double()
    u = torch.randn(2, 21, 64, dtype=torch.float64)

    def outputs_and_grads():
        mixer.zero_grad()
        uu = u.clone().requires_grad_(True)
        y = mixer(uu)
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape)).sum().backward()
        grads = {k: p.grad.clone() for k, p in mixer.named_parameters()}
        return y.detach(), uu.grad, grads

    calls, kernel = [], ssd_mod.ssd_scan_kernel

    def spy_kernel(*args, **kwargs):
        calls.append(1)
        return kernel(*args, **kwargs)

    monkeypatch.setattr(ssd_mod, 'ssd_scan_kernel', spy_kernel)
    y_k, gu_k, g_k = outputs_and_grads()  # the default dispatch: the C++ kernel
    assert calls, 'the mixer did not reach the compiled kernel'

    def ref(x, dt, A, B, C, chunk_size=256, backend=None, **kw):
        return ssd_scan_ref(x, dt, A, B, C, **kw)

    monkeypatch.setattr(blocks, 'ssd_scan', ref)
    y_r, gu_r, g_r = outputs_and_grads()
    torch.testing.assert_close(y_k, y_r, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gu_k, gu_r, rtol=1e-10, atol=1e-10)
    for k in g_r:
        torch.testing.assert_close(g_k[k], g_r[k], rtol=1e-10, atol=1e-10, msg=k)


# ---------------------------------------------------------------------------
# CUDA kernel: compile-checked here, run by tools/analysis/check_cuda_scan.py
# ---------------------------------------------------------------------------
def _cuda_include():
    """The CUDA toolkit's include folder, or None."""
    roots = [os.environ.get('CUDA_HOME'), os.environ.get('CUDA_PATH'), '/usr/local/cuda']
    nvcc = shutil.which('nvcc')
    if nvcc:
        roots.append(str(Path(nvcc).resolve().parents[1]))
    for root in filter(None, roots):
        if (Path(root) / 'include' / 'cuda_runtime_api.h').exists():
            return str(Path(root) / 'include')
    return None


@pytest.mark.skipif(shutil.which('nvcc') is None, reason='nvcc not found')
def test_cuda_kernels_compile(tmp_path):
    """nvcc compiles the kernels (sm_90, -O1: a check, not a build; the kernel
    file includes no torch headers, so this takes seconds)."""
    res = subprocess.run(
        ['nvcc', '-O1', '-std=c++17', '-arch=sm_90', '-c', str(CSRC / 'ssd_cuda_kernel.cu'),
         '-o', str(tmp_path / 'ssd_cuda_kernel.o')],
        capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / 'ssd_cuda_kernel.o').stat().st_size > 0


@pytest.mark.skipif(_cuda_include() is None or torch.version.cuda is None,
                    reason='needs the CUDA toolkit headers and a CUDA build of torch')
def test_cuda_glue_compiles():
    """The torch side of the CUDA extension parses against this torch."""
    from torch.utils import cpp_extension
    import sysconfig
    cxx = os.environ.get('CXX', 'c++')
    cmd = [cxx, '-fsyntax-only', '-std=c++20', '-DTORCH_API_INCLUDE_EXTENSION_H',
           '-DTORCH_EXTENSION_NAME=_C_cuda', f'-I{_cuda_include()}',
           f'-I{sysconfig.get_paths()["include"]}', str(CSRC / 'ssd_cuda.cpp')]
    cmd[2:2] = [f'-I{p}' for p in cpp_extension.include_paths()]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]


# ---------------------------------------------------------------------------
# The benchmark and check scripts (tiny settings; speed is not asserted)
# ---------------------------------------------------------------------------
def test_check_cuda_scan_without_gpu(monkeypatch):
    tool = load_tool('check_cuda_scan')
    args = tool.parse_args(['--lengths', '3136', '--no-mamba'])
    assert args.lengths == [3136] and args.no_mamba and args.chunk == 256
    assert tool.parse_args([]).lengths == [3136, 50176]
    assert tool.parse_args([]).sections == ['reference', 'mamba', 'lengths', 'speed']
    assert tool.parse_args(['--sections', 'profile']).sections == ['profile']
    assert tool.parse_args(['--sections', 'mamba', 'speed']).sections == ['mamba', 'speed']
    assert tool.parse_args([]).impls == ['cuda', 'triton', 'triton_tf32', 'triton_tf32x3']
    with pytest.raises(SystemExit):
        tool.parse_args(['--impls', 'chunked'])
    with pytest.raises(SystemExit):
        tool.parse_args(['--sections', 'everything'])
    monkeypatch.setenv('TRITON_F32_DEFAULT', 'ieee')
    assert tool.triton_fp32_precision() == 'ieee'
    monkeypatch.delenv('TRITON_F32_DEFAULT')
    assert tool.triton_fp32_precision() == 'tf32'
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    with pytest.raises(SystemExit) as e:
        tool.main([])
    assert 'no CUDA device' in str(e.value.code) and '\n' not in str(e.value.code)


def test_check_cuda_scan_names_profiled_kernels_briefly():
    kernel_name = load_tool('check_cuda_scan').kernel_name
    assert kernel_name('void patchscale_ssd_cuda::(anonymous namespace)::bwd_chunk_kernel'
                       '<float, 8>(patchscale_ssd_cuda::Params, int, int, int)') == 'bwd_chunk_kernel'
    assert kernel_name('void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, '
                       'at::native::func_wrapper_t<float> > >(at::native::ReduceOp<float>)'
                       ) == 'reduce_kernel'
    assert kernel_name('Memcpy DtoD (Device -> Device)') == 'Memcpy DtoD'


def test_check_cuda_scan_takes_mamba_ssm_kernels_from_a_source_tree(
        tmp_path, monkeypatch):
    """--mamba-ssm-src: the SSD module imports from an unpacked tree without
    running the package __init__ (which needs mamba-ssm's CUDA builds)."""
    tool = load_tool('check_cuda_scan')
    with pytest.raises(SystemExit) as e:
        tool.load_mamba_ssm_source(tmp_path)
    assert 'not an unpacked mamba-ssm source tree' in str(e.value.code)
    triton_dir = tmp_path / 'mamba_ssm' / 'ops' / 'triton'
    triton_dir.mkdir(parents=True)
    (tmp_path / 'mamba_ssm' / '__init__.py').write_text(
        "__version__ = '9.8.7'\nimport selective_scan_cuda  # not built\n")
    (tmp_path / 'mamba_ssm' / 'ops' / '__init__.py').write_text('')
    (triton_dir / '__init__.py').write_text('')
    (triton_dir / 'ssd_combined.py').write_text(
        'def mamba_chunk_scan_combined(*args, **kwargs):\n'
        '    return "from the tree"\n')
    for name in [m for m in sys.modules if m.split('.')[0] == 'mamba_ssm']:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, 'path', list(sys.path))
    try:
        version = tool.load_mamba_ssm_source(tmp_path)
        from patchscale_mm.ops import backend
        fn, reason = backend.load_mamba_ssm.__wrapped__()
        assert reason is None and fn() == 'from the tree'
        assert version.startswith('9.8.7 ')
    finally:
        for name in [m for m in sys.modules if m.split('.')[0] == 'mamba_ssm']:
            del sys.modules[name]


@needs_cpp
def test_benchmark_scan_smoke(capsys, monkeypatch):
    tool = load_tool('benchmark_scan')
    monkeypatch.setattr(tool.gc, 'collect', lambda: 0)  # slow with pytest's many objects
    small = ['--heads', '2', '--headdim', '8', '--dstate', '8', '--chunk', '8', '--threads', '1']
    # One memory probe, in this process (main runs each in a subprocess).
    tool.main(['--probe', 'scan', 'C++ kernel', '64'] + small)
    assert float(capsys.readouterr().out.strip().splitlines()[-1]) >= 0
    monkeypatch.setattr(tool, 'probe_memory', lambda *a: 1.0)
    tool.main(['--lengths', '16', '40', '--ref-max-len', '16', '--mixer-lengths', '24',
               '--repeats', '1'] + small)
    out = capsys.readouterr().out
    assert '| 40 | reference | ~' in out  # extrapolated past --ref-max-len
    assert '| 40 | C++ kernel |' in out and '| 24 | ours, C++ kernel |' in out


def test_benchmark_backbones_smoke(capsys, monkeypatch):
    tool = load_tool('benchmark_backbones')
    monkeypatch.setattr(tool.gc, 'collect', lambda: 0)
    # One measurement, in this process (main runs each in a subprocess).
    tool.main(['--probe', 'Adventurer', '8', '1', '--arch', 't', '--img-size', '32',
               '--threads', '1'])
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert r['time'] > 0 and r['peak'] >= r['growth'] >= 0
    # The table, from fake measurements.
    fake = {'Adventurer': dict(time=1.4, growth=10, peak=20),
            'DeiT (PatchViT)': dict(time=2.0, growth=12, peak=20)}
    monkeypatch.setattr(tool, 'run', lambda args, name, patch, with_cp: fake[name])
    tool.main(['--patch-sizes', '4', '2'])
    out = capsys.readouterr().out
    assert '| 2 | 12544 + 1 | Adventurer-b | yes | 1.40 | 10 |' in out
    assert '| 4 | 0.70 | 0.7 |' in out and '| 2 | 0.70 | 0.34 |' in out


def test_benchmark_backbones_profile_takes_a_step_apart(capsys, monkeypatch):
    tool = load_tool('benchmark_backbones')
    monkeypatch.setattr(tool.gc, 'collect', lambda: 0)
    steps = {}
    for name in ('Adventurer', 'DeiT (PatchViT)'):
        tool.main(['--probe', name, '8', '0', '--arch', 't', '--img-size', '32',
                   '--threads', '1', '--profile'])
        steps[name] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    adv, deit = steps['Adventurer'], steps['DeiT (PatchViT)']
    # Adventurer's time goes to its kernels and none to attention; DeiT's the other way.
    assert adv['seconds']['scan'] > 0 and adv['seconds']['fused'] > 0
    assert adv['seconds']['attention'] == 0
    assert deit['seconds']['attention'] > 0 and deit['seconds']['scan'] == 0
    for r in (adv, deit):
        assert sum(r['seconds'].values()) == pytest.approx(r['time'], rel=1e-6)
    # DeiT-T/8 at 32 px: 16 patches + cls; every matmul of its 12 blocks,
    # forward (2 m n k) and both gradients (twice that), is counted once.
    tokens, dim = 17, 192
    per_block = tokens * dim * (3 * dim + dim + 4 * dim + 4 * dim)  # qkv, proj, fc1, fc2
    flops = sum(f for _, f in deit['matmuls'].values())
    assert flops == 12 * 2 * 3 * per_block
    monkeypatch.setattr(tool, 'run', lambda args, name, patch, with_cp: steps[name])
    tool.main(['--patch-sizes', '8', '--profile', '--arch', 't'])
    out = capsys.readouterr().out
    assert '| 8 | Adventurer-t |' in out and 'p8: Adventurer / DeiT matmul seconds' in out


@pytest.mark.skipif(shutil.which('llvm-mca') is None or shutil.which('g++') is None,
                    reason='needs llvm-mca and g++')
def test_kernel_pipeline_finds_every_hot_loop(capsys):
    tool = load_tool('kernel_pipeline')
    tool.main(['--cpus', 'skylake-avx512'])
    rows = [line.split(' | ') for line in capsys.readouterr().out.splitlines()
            if line.startswith('| fwd_kernel') or line.startswith('| bwd_kernel')]
    # Loops are named from ssd_cpu_avx512.cpp's tile sizes (4 x 4, adjoint
    # over 4 vectors) and their FP ops: the forward tile and the adjoint row
    # at least (GCC 12 also shows the backward's three tiles), each once.
    found = [(kernel.strip('| '), role, int(ops)) for kernel, role, ops, *_ in rows]
    assert len(set(found)) == len(found)
    assert ('fwd_kernel', 'forward tile (4 x 4): r += B w, y += C r', 32) in found
    assert ('bwd_kernel', 'adjoint, one state row x 4 vectors', 20) in found
    for row in rows:  # no model runs faster than two FP ops per cycle
        cycles, ratio = re.match(r'([\d.]+) \(([\d.]+)\)', row[-1].strip(' |')).groups()
        assert float(ratio) >= 0.99 and float(cycles) > 0


@needs_cpp
def test_check_cuda_scan_overflow_section_compares_every_sample(monkeypatch):
    """The overflow check's bookkeeping (views of one projection, a reference
    per sample, dA/dD/ddt_bias summed over samples), run on CPU with the C++
    kernel at a small shape; a wrong dA must fail it."""
    tool = load_tool('check_cuda_scan')
    cfg = dict(d_inner=12, heads=3, headdim=4, d_state=5)
    report = tool.Report()
    tool.check_overflow(report, 8, ['cpp'], batch=3, seqlen=20, cfg=cfg, device='cpu')
    assert not report.failed and report.lines[-1].startswith('| cpp | ok |')
    assert '3 heads x 4, d_state 5, L 20, batch 3' in report.lines[0]
    scan_fn = tool.scan_fn

    def wrong_dA(impl, chunk):
        fn = scan_fn(impl, chunk)
        return lambda A, **kw: fn(A=A * 1.001, **kw) if impl == 'cpp' else fn(A=A, **kw)

    monkeypatch.setattr(tool, 'scan_fn', wrong_dA)
    report = tool.Report()
    tool.check_overflow(report, 8, ['cpp'], batch=3, seqlen=20, cfg=cfg, device='cpu')
    assert report.failed and '| cpp | FAIL |' in report.lines[-1]
