import importlib
import math
import types

import pytest
import torch

from patchscale_mm.ops import ssd_scan, ssd_scan_chunked, ssd_scan_ref

# The package re-exports the function `ssd_scan`, which shadows the submodule of
# the same name as an attribute, so fetch the module itself for monkeypatching.
ssd_mod = importlib.import_module('patchscale_mm.ops.ssd')
backend_mod = importlib.import_module('patchscale_mm.ops.backend')


def make_inputs(b=2, l=7, h=4, p=3, g=2, n=5, dtype=torch.float64, seed=0,
                d_per_channel=False, with_extras=True):
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
    if with_extras:
        inp.update(
            D=rnd(h, p) if d_per_channel else rnd(h),
            z=rnd(b, l, h, p),
            dt_bias=rnd(h, scale=0.5),
            initial_states=rnd(b, h, p, n),
        )
    return inp


def naive_scan(x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
               initial_states=None):
    """Independent per-(batch, head, token) loop, fp64."""
    x, dt, A, B, C = (t.double() for t in (x, dt, A, B, C))
    b, l, h, p = x.shape
    g, n = B.shape[-2:]
    y = torch.zeros(b, l, h, p, dtype=torch.float64)
    final = torch.zeros(b, h, p, n, dtype=torch.float64)
    for bi in range(b):
        for hi in range(h):
            gi = hi // (h // g)
            s = (torch.zeros(p, n, dtype=torch.float64) if initial_states is None
                 else initial_states[bi, hi].double().clone())
            for t in range(l):
                d = dt[bi, t, hi]
                if dt_bias is not None:
                    d = d + dt_bias[hi]
                if dt_softplus:
                    d = torch.log1p(torch.exp(d))
                s = torch.exp(d * A[hi]) * s + d * torch.outer(x[bi, t, hi], B[bi, t, gi])
                out = s @ C[bi, t, gi]
                if D is not None:
                    out = out + D[hi] * x[bi, t, hi]
                if z is not None:
                    zz = z[bi, t, hi].double()
                    out = out * zz * torch.sigmoid(zz)
                y[bi, t, hi] = out
            final[bi, hi] = s
    return y, final


@pytest.mark.parametrize('fn', [ssd_scan_ref, ssd_scan_chunked], ids=['ref', 'chunked'])
@pytest.mark.parametrize('l,chunk,g,extras,softplus,d_per_channel', [
    (7, 4, 2, True, True, False),    # L not a multiple of the chunk, groups=2
    (8, 4, 1, True, False, True),    # L a multiple, D per channel, bias no softplus
    (1, 4, 2, True, True, True),     # single token
    (6, 3, 1, False, False, False),  # bare scan, no optional inputs
    (5, 16, 2, True, True, False),   # chunk longer than the sequence
])
def test_forward_matches_naive(fn, l, chunk, g, extras, softplus, d_per_channel):
    inp = make_inputs(l=l, g=g, d_per_channel=d_per_channel, with_extras=extras)
    kwargs = dict(chunk_size=chunk) if fn is ssd_scan_chunked else {}
    y, final = fn(**inp, dt_softplus=softplus, return_final_states=True, **kwargs)
    y_exp, final_exp = naive_scan(**inp, dt_softplus=softplus)
    assert y.shape == inp['x'].shape and y.dtype == inp['x'].dtype
    torch.testing.assert_close(y, y_exp, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(final, final_exp, rtol=1e-10, atol=1e-10)
    # Without the flag only y comes back.
    assert isinstance(fn(**inp, dt_softplus=softplus, **kwargs), torch.Tensor)


def test_dt_limit_clamps():
    inp = make_inputs(l=6, with_extras=False)
    lo, hi = 0.15, 0.3
    clamped = dict(inp, dt=inp['dt'].clamp(lo, hi))
    for fn in (ssd_scan_ref, ssd_scan_chunked):
        torch.testing.assert_close(fn(**inp, dt_limit=(lo, hi)), naive_scan(**clamped)[0])


def test_closed_form_attention():
    """y = (L o (C B^T)) (dt x) with L_ij = exp(sum_{k=j+1..i} dt_k A), i >= j."""
    inp = make_inputs(b=1, l=6, h=2, g=1, with_extras=False, seed=3)
    x, dt, A, B, C = inp['x'][0], inp['dt'][0], inp['A'], inp['B'][0, :, 0], inp['C'][0, :, 0]
    l = x.shape[0]
    y_exp = torch.zeros_like(x)
    for hi in range(x.shape[1]):
        Lmat = torch.zeros(l, l, dtype=x.dtype)
        for i in range(l):
            for j in range(i + 1):
                Lmat[i, j] = math.exp(float(dt[j + 1:i + 1, hi].sum() * A[hi]))
        y_exp[:, hi] = (Lmat * (C @ B.T)) @ (dt[:, hi, None] * x[:, hi])
    torch.testing.assert_close(ssd_scan_ref(**inp).squeeze(0), y_exp)
    torch.testing.assert_close(ssd_scan_chunked(**inp, chunk_size=4).squeeze(0), y_exp)


def _grads(fn, inp, **kwargs):
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in inp.items()}
    y, final = fn(**leaves, dt_softplus=True, return_final_states=True, **kwargs)
    gen = torch.Generator().manual_seed(1)
    gy = torch.randn(y.shape, generator=gen, dtype=y.dtype)
    gf = torch.randn(final.shape, generator=gen, dtype=final.dtype)
    torch.autograd.backward((y, final), (gy, gf))
    return {k: v.grad for k, v in leaves.items()}


@pytest.mark.parametrize('d_per_channel', [False, True])
def test_chunked_grads_match_ref(d_per_channel):
    inp = make_inputs(l=7, g=2, d_per_channel=d_per_channel)
    g_ref = _grads(ssd_scan_ref, inp)
    g_chk = _grads(ssd_scan_chunked, inp, chunk_size=3)
    assert set(g_ref) == {'x', 'dt', 'A', 'B', 'C', 'D', 'z', 'dt_bias', 'initial_states'}
    for k in g_ref:
        torch.testing.assert_close(g_chk[k], g_ref[k], rtol=1e-9, atol=1e-9, msg=k)


def test_chunked_gradcheck():
    inp = make_inputs(b=1, l=5, h=2, p=2, g=1, n=2, seed=4)
    names = list(inp)
    leaves = tuple(inp[k].requires_grad_(True) for k in names)

    def f(*args):
        return ssd_scan_chunked(**dict(zip(names, args)), dt_softplus=True,
                                return_final_states=True, chunk_size=2)

    assert torch.autograd.gradcheck(f, leaves)


def test_strong_decay_has_finite_grads():
    # exp of the masked (upper) half of the segment sums would overflow here.
    inp = make_inputs(l=16, with_extras=False, dtype=torch.float32)
    inp['A'] = torch.full_like(inp['A'], -200.0)
    inp['dt'] = inp['dt'] * 10
    leaves = {k: v.requires_grad_(True) for k, v in inp.items()}
    ssd_scan_chunked(**leaves, chunk_size=16).square().sum().backward()
    assert all(torch.isfinite(v.grad).all() for v in leaves.values())


def test_bf16_close_to_fp32():
    inp = make_inputs(l=9, dtype=torch.float32)
    y32 = ssd_scan_chunked(**inp, dt_softplus=True, chunk_size=4)
    bf = {k: v.bfloat16() for k, v in inp.items()}
    y16 = ssd_scan_chunked(**bf, dt_softplus=True, chunk_size=4)
    assert y16.dtype == torch.bfloat16
    # Inputs are rounded to bf16 too, so compare loosely.
    torch.testing.assert_close(y16.float(), y32, rtol=0.1, atol=0.1)
    y16_ref, final = ssd_scan_ref(**bf, dt_softplus=True, return_final_states=True)
    assert final.dtype == torch.float32
    torch.testing.assert_close(y16.float(), y16_ref.float(), rtol=2e-2, atol=2e-2)


def test_dispatch_cpu_uses_chunked(monkeypatch):
    inp = make_inputs(l=7)
    y_chk, f_chk = ssd_scan_chunked(**inp, chunk_size=4, return_final_states=True)
    # None/'auto' pick the compiled kernel when built: tests/test_ssd_kernel.py.
    for backend in ('torch',):
        y, f = ssd_scan(**inp, chunk_size=4, return_final_states=True, backend=backend)
        torch.testing.assert_close(y, y_chk, rtol=0, atol=0)
        torch.testing.assert_close(f, f_chk, rtol=0, atol=0)
    monkeypatch.setenv('PATCHSCALE_SCAN_BACKEND', 'torch')
    torch.testing.assert_close(ssd_scan(**inp, chunk_size=4), y_chk, rtol=0, atol=0)
    monkeypatch.setenv('PATCHSCALE_SCAN_BACKEND', 'bogus')
    with pytest.raises(ValueError, match='bogus'):
        ssd_scan(**inp)


def test_dispatch_errors():
    inp = make_inputs(l=3)
    with pytest.raises(RuntimeError, match='mamba_ssm') as e:
        ssd_scan(**inp, backend='mamba_ssm')
    assert '\n' not in str(e.value)
    with pytest.raises(ValueError, match="'torch'") as e:
        ssd_scan(**inp, backend='tensorrt')
    assert 'tensorrt' in str(e.value) and "'triton'" in str(e.value)


def test_mamba_ssm_kwargs_are_passed_through(monkeypatch):
    seen = {}

    def fake(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None,
             initial_states=None, seq_idx=None, cu_seqlens=None, dt_softplus=False,
             dt_limit=(0.0, float('inf')), return_final_states=False):
        seen.update(chunk_size=chunk_size, dt_softplus=dt_softplus, D=D)
        return x

    monkeypatch.setattr(ssd_mod, 'load_mamba_ssm', lambda: (fake, None))
    monkeypatch.setattr(ssd_mod, 'resolve_scan_backend', lambda backend, x, inputs: 'mamba_ssm')
    inp = make_inputs(l=3)
    assert ssd_scan(**inp, dt_softplus=True, chunk_size=8) is inp['x']
    assert seen['chunk_size'] == 8 and seen['dt_softplus'] and seen['D'] is inp['D']


def test_auto_prefers_mamba_ssm_on_cuda_then_our_kernel_then_torch(monkeypatch):
    """'auto' on CUDA: mamba-ssm when installed (faster backward) except for
    fp64, else our CUDA kernel, else the torch scan with a warning; CPU never
    takes mamba-ssm."""
    on_cuda = types.SimpleNamespace(device=torch.device('cuda'), is_cuda=True,
                                    dtype=torch.float32)
    fp64_on_cuda = types.SimpleNamespace(device=torch.device('cuda'), is_cuda=True,
                                         dtype=torch.float64)
    on_cpu = torch.empty(0)
    built = {'cpu': (True, None), 'cuda': (True, None)}
    monkeypatch.setattr(backend_mod, 'load_kernels', lambda device_type: built[device_type])
    monkeypatch.setattr(backend_mod, 'load_mamba_ssm', lambda: (object(), None))
    assert backend_mod.resolve_scan_backend(None, on_cuda) == 'mamba_ssm'
    assert backend_mod.resolve_scan_backend(None, fp64_on_cuda) == 'cuda'  # TF32 is not fp64
    assert backend_mod.resolve_scan_backend('auto', on_cpu) == 'cpp'
    assert backend_mod.resolve_scan_backend('cuda', on_cuda) == 'cuda'
    monkeypatch.setattr(backend_mod, 'load_mamba_ssm', lambda: (None, 'ImportError'))
    assert backend_mod.resolve_scan_backend(None, on_cuda) == 'cuda'
    built['cuda'] = (False, 'no CUDA kernel in this test build')
    with pytest.warns(UserWarning, match='no CUDA kernel in this test build'):
        assert backend_mod.resolve_scan_backend(None, on_cuda) == 'torch'


def test_auto_keeps_inputs_past_32_bit_offsets_off_mamba_ssm(monkeypatch):
    """mamba-ssm's SSD kernels address elements with 32-bit offsets
    (state-spaces/mamba#1015). Adventurer-B/1 at 224 px: dt is a view of the
    fused projection, 50,178 tokens x 3,224 channels per image, so batch 14
    passes 2**31 elements; batch 13 does not."""
    monkeypatch.setattr(backend_mod, 'load_kernels', lambda device_type: (True, None))
    monkeypatch.setattr(backend_mod, 'load_mamba_ssm', lambda: (object(), None))
    on_cuda = types.SimpleNamespace(device=torch.device('cuda'), is_cuda=True,
                                    dtype=torch.float32)
    L, width, heads = 50178, 3224, 24

    def dt_view(batch):  # (b, L, h) inside the (b, L, 3224) projection
        return torch.empty_strided((batch, L, heads), (L * width, width, 1), device='meta')

    assert backend_mod.int32_offset_overflow(None, dt_view(13)) is None
    reason = backend_mod.int32_offset_overflow(None, dt_view(14))
    assert reason.startswith('dt spans 2,264,834,208 elements (batch 14 x stride 161,773,872)')
    assert backend_mod.resolve_scan_backend(None, on_cuda, (None, dt_view(13))) == 'mamba_ssm'
    with pytest.warns(UserWarning, match="not mamba_ssm's: dt spans"):
        assert backend_mod.resolve_scan_backend(None, on_cuda, (None, dt_view(14))) == 'cuda'
    # A contiguous x of 2**31 elements: batch x tokens x heads x headdim.
    x = torch.empty((1, 2**31 // 64, 1, 64), device='meta')
    assert backend_mod.int32_offset_overflow(x).startswith('x spans 2,147,483,648')


@pytest.mark.parametrize('name,bad', [
    ('dt', lambda i: i['dt'][:, :-1]),
    ('A', lambda i: i['A'][:-1]),
    ('B', lambda i: i['B'][..., :3, :]),  # 3 groups do not divide 4 heads
    ('C', lambda i: i['C'][..., :-1]),
    ('D', lambda i: i['D'][:-1]),
    ('z', lambda i: i['z'][..., :-1]),
    ('dt_bias', lambda i: i['dt_bias'][:-1]),
    ('initial_states', lambda i: i['initial_states'][..., :-1]),
])
def test_shape_errors_name_the_tensor(name, bad):
    inp = make_inputs(l=3, g=2)
    inp['B'] = inp['B'].repeat(1, 1, 2, 1) if name == 'B' else inp['B']
    inp[name] = bad(inp)
    with pytest.raises(ValueError, match=rf'^ssd_scan: {name} has shape \(') as e:
        ssd_scan(**inp)
    assert '\n' not in str(e.value)


def test_chunked_saves_no_per_token_states():
    b, l, h, p, g, n, chunk = 1, 1024, 2, 8, 1, 16, 64
    assert p * n > chunk  # otherwise the (chunk x chunk) decay matrix would trip the check
    inp = make_inputs(b=b, l=l, h=h, p=p, g=g, n=n, dtype=torch.float32)
    leaves = {k: v.requires_grad_(True) for k, v in inp.items()}
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = ssd_scan_chunked(**leaves, dt_softplus=True, chunk_size=chunk)
    assert sizes and max(sizes) < b * l * h * p * n
    y.sum().backward()
    assert leaves['x'].grad.shape == inp['x'].shape
