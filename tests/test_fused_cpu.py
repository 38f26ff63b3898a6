"""The fused CPU kernels of Adventurer's blocks against the composable
PyTorch code they replace: values and every gradient."""
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from patchscale_mm.models import Adventurer
from patchscale_mm import ops
from patchscale_mm.models.layers import Mamba2Mixer, RMSNorm, SwiGLU
from patchscale_mm.ops import fused
from patchscale_mm.ops.backend import load_kernels
from patchscale_mm.ops.threads import use_kernel_threads
from test_adventurer_mixer import naive_mamba2
from test_ssd_kernel import count_subnormal

CPP_OK, CPP_REASON = load_kernels('cpu')
pytestmark = pytest.mark.skipif(not CPP_OK, reason=f'C++ kernel not built: {CPP_REASON}')


@pytest.fixture(autouse=True, scope='module')
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def outputs_and_grads(module, fn, x, seed=1):
    """fn(x), the gradient of x and of every parameter of module for one
    fixed upstream gradient."""
    module.zero_grad()
    x = x.detach().clone().requires_grad_(True)
    y = fn(x)
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(y.shape, generator=gen).to(y.dtype)
    y.backward(g)
    grads = {k: p.grad.clone() for k, p in module.named_parameters() if p.grad is not None}
    return y.detach(), x.grad, grads


def assert_all_close(a, b, rtol, atol):
    (ya, xa, ga), (yb, xb, gb) = a, b
    torch.testing.assert_close(ya, yb.to(ya.dtype), rtol=rtol, atol=atol, msg='output')
    torch.testing.assert_close(xa, xb.to(xa.dtype), rtol=rtol, atol=atol, msg='input grad')
    assert set(ga) == set(gb)
    for k in gb:
        torch.testing.assert_close(ga[k], gb[k], rtol=rtol, atol=atol,
                                   msg=lambda m, k=k: f'grad {k}: {m}')


def fused_mixer(m):
    """m's forward through the fused Function, whatever the dtype."""

    def fn(u):
        y = fused.fused_conv_scan_norm(
            m.in_proj(u), m.conv1d.weight, m.conv1d.bias, m.dt_bias, m.A_log, m.D,
            m.norm.weight, d_inner=m.d_inner, ngroups=m.ngroups, d_state=m.d_state,
            headdim=m.headdim, chunk_size=m.chunk_size, group_size=m.norm.group_size,
            eps=m.norm.eps)
        return m.out_proj(y)

    return fn


# Odd widths exercise the kernels' single-channel tails next to their vectors.
MIXER_CASES = [
    # dim, d_state, headdim, ngroups, chunk, d_conv, batch, length
    (32, 8, 16, 1, 4, 4, 2, 11),
    (48, 8, 16, 2, 8, 4, 1, 21),
    (40, 5, 20, 1, 256, 3, 2, 9),
    (64, 16, 16, 4, 7, 4, 1, 1),
]


def loop_mixer(m, u):
    """The mixer with a loop over tokens, all in u's dtype, any group count
    (test_adventurer_mixer.naive_mamba2 spells out every tap and head)."""
    b, l, _ = u.shape
    h, p, n, g = m.nheads, m.headdim, m.d_state, m.ngroups
    z, xBC, dt = (u @ m.in_proj.weight.T).split([m.d_inner, m.conv1d.in_channels, h], -1)
    k = m.conv1d.kernel_size[0]
    xBC = F.silu(F.conv1d(F.pad(xBC.transpose(1, 2), (k - 1, 0)), m.conv1d.weight,
                          m.conv1d.bias, groups=xBC.shape[-1]).transpose(1, 2))
    x, Bm, Cm = xBC.split([m.d_inner, g * n, g * n], -1)
    x = x.unflatten(-1, (h, p))
    Bm = Bm.unflatten(-1, (g, n)).repeat_interleave(h // g, 2)  # (b, l, h, n)
    Cm = Cm.unflatten(-1, (g, n)).repeat_interleave(h // g, 2)
    dt = F.softplus(dt + m.dt_bias)
    A = -torch.exp(m.A_log)
    state, ys = u.new_zeros(b, h, p, n), []
    for t in range(l):
        state = torch.exp(dt[:, t] * A)[..., None, None] * state + \
            (dt[:, t, :, None] * x[:, t])[..., None] * Bm[:, t, :, None]
        ys.append(torch.einsum('bhpn,bhn->bhp', state, Cm[:, t]) + m.D[:, None] * x[:, t])
    y = (torch.stack(ys, 1).flatten(-2) * F.silu(z)).unflatten(-1, (g, -1))
    y = (y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + m.norm.eps)).flatten(-2)
    return (y * m.norm.weight) @ m.out_proj.weight.T


@pytest.mark.parametrize('case', MIXER_CASES, ids=str)
def test_mixer_fp64_matches_token_loop(case):
    dim, n, p, g, chunk, k, b, l = case
    torch.manual_seed(0)
    m = Mamba2Mixer(dim, d_state=n, headdim=p, ngroups=g, chunk_size=chunk, d_conv=k).double()
    with torch.no_grad():
        m.norm.weight.uniform_(0.5, 1.5)
        m.conv1d.bias.uniform_(-0.5, 0.5)
    u = torch.randn(b, l, dim, dtype=torch.float64)
    if g == 1:
        torch.testing.assert_close(loop_mixer(m, u), naive_mamba2(m, u), rtol=1e-12,
                                   atol=1e-12)
    assert_all_close(outputs_and_grads(m, fused_mixer(m), u),
                     outputs_and_grads(m, lambda x: loop_mixer(m, x), u), rtol=1e-9, atol=1e-11)


@pytest.mark.sum_order
@pytest.mark.parametrize('case', MIXER_CASES, ids=str)
def test_mixer_fp32_fused_matches_composable(case):
    dim, n, p, g, chunk, k, b, l = case
    torch.manual_seed(0)
    m = Mamba2Mixer(dim, d_state=n, headdim=p, ngroups=g, chunk_size=chunk, d_conv=k)
    u = torch.randn(b, l, dim)
    assert fused.fused_cpu_available(u)
    a = outputs_and_grads(m, m, u)
    m.fused = False
    assert_all_close(a, outputs_and_grads(m, m, u), rtol=2e-4, atol=2e-5)


def rel_err(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def test_mixer_bf16_autocast_as_close_to_fp32_as_composable():
    torch.manual_seed(0)
    m = Mamba2Mixer(64, d_state=16, headdim=16, chunk_size=8)
    u = torch.randn(2, 33, 64)

    def run(bf16):
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=bf16):
            return outputs_and_grads(m, m, u)

    fused_bf16 = run(True)
    assert fused_bf16[0].dtype == torch.bfloat16 and fused_bf16[1].dtype == torch.float32
    m.fused = False
    torch_bf16, ref = run(True), run(False)
    # The composable path convolves and gates in bf16, the fused one in fp32:
    # it is at most as far from the fp32 result (up to noise).
    for i, name in ((0, 'output'), (1, 'input grad')):
        assert rel_err(fused_bf16[i], ref[i]) < max(1.5 * rel_err(torch_bf16[i], ref[i]), 2e-3), name
    for k in ref[2]:
        assert rel_err(fused_bf16[2][k], ref[2][k]) < max(
            1.5 * rel_err(torch_bf16[2][k], ref[2][k]), 5e-3), k


def test_mixer_dispatch():
    m = Mamba2Mixer(32, d_state=8, headdim=16)
    assert fused.fused_cpu_available(torch.zeros(1, dtype=torch.bfloat16))
    assert not fused.fused_cpu_available(torch.zeros(1, dtype=torch.float64))
    assert not fused.fused_cpu_available(torch.zeros(1, dtype=torch.float16))
    assert not fused.fused_cpu_available(torch.zeros(1, device='meta'))
    old = os.environ.get('PATCHSCALE_SCAN_BACKEND')
    os.environ['PATCHSCALE_SCAN_BACKEND'] = 'torch'
    try:
        assert not fused.fused_cpu_available(torch.zeros(1))
    finally:
        if old is None:
            del os.environ['PATCHSCALE_SCAN_BACKEND']
        else:
            os.environ['PATCHSCALE_SCAN_BACKEND'] = old
    assert m.fused and not Mamba2Mixer(32, d_state=8, headdim=16, fused=False).fused


def spy_on(monkeypatch, name):
    """Counts the calls of the fused function ``name`` that the ops make."""
    import importlib
    blocks = importlib.import_module('patchscale_mm.ops.blocks')
    calls, kernel = [], getattr(blocks, name)
    monkeypatch.setattr(blocks, name, lambda *a, **k: calls.append(1) or kernel(*a, **k))
    return calls


def test_ops_choose_the_fused_path(monkeypatch):
    """rms_norm, swiglu and the mixer core take the fused kernel for float32
    CPU tensors only, and not under PATCHSCALE_SCAN_BACKEND=torch."""
    calls = {name: spy_on(monkeypatch, name)
             for name in ('fused_rms_norm', 'fused_swiglu_gate', 'fused_conv_scan_norm')}
    m, mlp, norm = Mamba2Mixer(32, d_state=8, headdim=16), SwiGLU(32, 40), RMSNorm(32)

    def run(dtype):
        m.to(dtype), mlp.to(dtype), norm.to(dtype)
        x = torch.randn(1, 5, 32, dtype=dtype)
        ops.rms_norm(x, (32,), norm.weight, 1e-5)
        ops.swiglu(x, mlp.w1.weight, mlp.w1.bias, mlp.w2.weight, mlp.w2.bias)
        m(x)
        return {name: len(c) for name, c in calls.items()}

    assert set(run(torch.float32).values()) == {1}
    assert set(run(torch.float64).values()) == {1}
    monkeypatch.setenv('PATCHSCALE_SCAN_BACKEND', 'torch')
    assert set(run(torch.float32).values()) == {1}
    # No weight or no bias: the composable path.
    monkeypatch.delenv('PATCHSCALE_SCAN_BACKEND')
    x = torch.randn(1, 5, 32)
    torch.testing.assert_close(ops.rms_norm(x, (32,)), torch.nn.functional.rms_norm(x, (32,)))
    assert len(calls['fused_rms_norm']) == 1


def test_adventurer_mixer_cfg_turns_the_fused_kernel_off(monkeypatch):
    calls = spy_on(monkeypatch, 'fused_conv_scan_norm')
    arch = dict(embed_dims=32, num_layers=1, mlp_dims=48)
    x = torch.randn(1, 3, 16, 16)

    def features(**mixer_cfg):
        torch.manual_seed(0)
        model = Adventurer(arch=arch, img_size=16, patch_size=8,
                           mixer_cfg=dict(d_state=8, headdim=16, **mixer_cfg))
        return model(x)[-1]

    composable = features(fused=False)
    assert calls == []
    torch.testing.assert_close(features(), composable, rtol=2e-4, atol=2e-5)
    assert calls == [1]


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_swiglu_and_rmsnorm(dtype):
    torch.manual_seed(0)
    mlp = SwiGLU(24, 37).to(dtype)
    norm = RMSNorm(24, eps=1e-5).to(dtype)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(2, 13, 24, dtype=dtype)

    def gate_fn(x):
        return mlp.w3(fused.fused_swiglu_gate(torch.cat([mlp.w1(x), mlp.w2(x)], -1)))

    def ref_mlp(x):
        return mlp.w3(F.silu(mlp.w1(x)) * mlp.w2(x))

    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    assert_all_close(outputs_and_grads(mlp, gate_fn, x), outputs_and_grads(mlp, ref_mlp, x), **tol)
    assert_all_close(outputs_and_grads(mlp, mlp, x), outputs_and_grads(mlp, ref_mlp, x), **tol)

    def rms(x):
        return fused.fused_rms_norm(x, norm.weight, 1e-5)

    def ref_rms(x):
        return F.rms_norm(x, (24,), norm.weight, 1e-5)

    assert_all_close(outputs_and_grads(norm, rms, x), outputs_and_grads(norm, ref_rms, x), **tol)
    assert_all_close(outputs_and_grads(norm, norm, x), outputs_and_grads(norm, ref_rms, x), **tol)


def test_swiglu_rmsnorm_bf16_autocast():
    torch.manual_seed(0)
    mlp, norm = SwiGLU(32, 48), RMSNorm(32, eps=1e-5)
    x = torch.randn(3, 17, 32)

    def block(x):
        return mlp(norm(x))

    def ref(x):
        return mlp.w3(F.silu(mlp.w1(x)) * mlp.w2(x))

    with torch.autocast('cpu', dtype=torch.bfloat16):
        a = outputs_and_grads(mlp, block, x)
        b = outputs_and_grads(mlp, lambda x: ref(F.rms_norm(x, (32,), norm.weight, 1e-5)), x)
    assert a[0].dtype == torch.bfloat16
    assert_all_close(a, b, rtol=2e-2, atol=2e-2)


@pytest.mark.sum_order
@pytest.mark.parametrize('with_cp', [False, True])
def test_adventurer_fused_matches_torch_path(monkeypatch, with_cp):
    """The whole backbone, flipped layers and checkpointing included, against
    the composable path with the PyTorch scan."""
    torch.manual_seed(0)
    model = Adventurer(
        arch=dict(embed_dims=64, num_layers=4, mlp_dims=80),
        img_size=16,
        patch_size=2,
        mixer_cfg=dict(headdim=16, d_state=8, chunk_size=16),
        with_cp=with_cp).train()
    img = torch.randn(2, 3, 16, 16)

    def fn(x):
        return model(x)[-1]

    a = outputs_and_grads(model, fn, img)
    monkeypatch.setenv('PATCHSCALE_SCAN_BACKEND', 'torch')
    b = outputs_and_grads(model, fn, img)
    assert_all_close(a, b, rtol=2e-4, atol=2e-5)


def test_adventurer_backward_makes_no_subnormals(monkeypatch):
    """From the class token back over 1024 tokens the last layer's gradient
    decays through fp32's subnormal range (below 1.2e-38). On PyTorch's ops
    it reaches in_proj's output gradient as subnormals, which many Intel
    cores handle with microcode assists in every op that reads them, the
    matmuls included; the fused kernels flush them to zero."""
    torch.manual_seed(0)
    model = Adventurer(arch=dict(embed_dims=64, num_layers=2, mlp_dims=80), img_size=64,
                       patch_size=2, mixer_cfg=dict(headdim=16, d_state=8)).train()
    img = torch.randn(1, 3, 64, 64)
    subnormals = []
    model.layers[-1].mixer.in_proj.register_full_backward_hook(
        lambda module, grad_in, grad_out: subnormals.append(count_subnormal(grad_out[0])))
    monkeypatch.delenv('PATCHSCALE_SCAN_BACKEND', raising=False)
    model(img)[-1].pow(2).sum().backward()
    monkeypatch.setenv('PATCHSCALE_SCAN_BACKEND', 'torch')
    model(img)[-1].pow(2).sum().backward()
    fused_path, torch_path = subnormals
    assert torch_path > 0 and fused_path == 0


@pytest.mark.parametrize('isa', ['avx2', 'generic'])
def test_narrower_instruction_sets(isa):
    """The fp32 kernels' AVX2 and portable code paths, which this CPU would
    not pick (the fp64 ones are the same scalar code on every ISA)."""
    script = textwrap.dedent('''
        import sys, torch
        sys.path.insert(0, sys.argv[1])
        from test_fused_cpu import (MIXER_CASES, test_mixer_fp32_fused_matches_composable,
                                    test_swiglu_and_rmsnorm)
        from patchscale_mm.ops import _C
        print(_C.cpu_isa())
        for case in MIXER_CASES:
            test_mixer_fp32_fused_matches_composable(case)
        test_swiglu_and_rmsnorm(torch.float32)
    ''')
    env = dict(os.environ, PATCHSCALE_SSD_CPU_ISA=isa, OMP_NUM_THREADS='1')
    res = subprocess.run([sys.executable, '-c', script, str(Path(__file__).parent)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    cpu_has_avx2 = 'avx2' in Path('/proc/cpuinfo').read_text() if Path(
        '/proc/cpuinfo').exists() else False
    if isa == 'generic' or cpu_has_avx2:
        assert res.stdout.split()[0] == isa


def test_kernels_are_threaded():
    """at::parallel_for is inline: an extension built without OpenMP runs
    every loop on one thread, whatever torch.get_num_threads() says."""
    from patchscale_mm.ops import _C
    if sys.platform.startswith('linux'):
        assert _C.intra_op_parallel()


@pytest.mark.sum_order
def test_threads_agree():
    """Token blocks and per-thread weight-gradient buffers over two threads.

    Two threads sum each weight gradient over the K = b * l tokens in
    another order (per-thread partial sums, and torch's matmuls split their
    reductions by thread count on some CPUs). Reordering a sum of K float32
    terms moves it by rounding noise of about u * sqrt(K) times the size of
    its partial sums (u = 2^-24); the test allows 4x that, relative to each
    tensor's largest entry. A lost or doubled token block would be off by
    whole terms, i.e. by O(1) relative to the tensor.
    """
    torch.manual_seed(0)
    m = Mamba2Mixer(32, d_state=8, headdim=16, chunk_size=64)
    mlp, norm = SwiGLU(32, 40), RMSNorm(32, eps=1e-5)
    u = torch.randn(2, 1500, 32)  # three convolution blocks per sequence

    def fn(x):
        return mlp(norm(m(x)))

    whole = torch.nn.ModuleList([m, mlp, norm])
    one = outputs_and_grads(whole, fn, u)
    torch.set_num_threads(2)
    try:
        with use_kernel_threads(2):  # split even where the timed choice would not
            two = outputs_and_grads(whole, fn, u)
    finally:
        torch.set_num_threads(1)
    tokens = u.shape[0] * u.shape[1]
    noise = 4 * 2.0**-24 * math.sqrt(tokens)
    (y1, x1, g1), (y2, x2, g2) = one, two
    assert set(g1) == set(g2)
    pairs = [('output', y1, y2), ('input grad', x1, x2)] + [(k, g1[k], g2[k]) for k in g1]
    for name, a, b in pairs:
        torch.testing.assert_close(b, a, rtol=0, atol=noise * a.abs().max().item(),
                                   msg=lambda m, name=name: f'{name}: {m}')


def test_second_backward_raises():
    """The backward overwrites spent activations with gradients in place."""
    m, mlp = Mamba2Mixer(32, d_state=8, headdim=16), SwiGLU(32, 40)
    for module in (m, mlp):
        y = module(torch.randn(1, 5, 32)).sum()
        y.backward(retain_graph=True)
        with pytest.raises(RuntimeError, match='retain_graph'):
            y.backward()
