"""The analytic cost model against measurements on this machine, mmengine's
FLOP counter, published FLOPs and the paper's Table 6."""
import functools

import pytest
import torch
from torch import nn
from tool_scripts import load_tool

from patchscale_mm.analysis import cost as cm
from patchscale_mm.models.zoo import parse_model_name
from patchscale_mm.ops import ssd_scan_chunked

TINY_VIT = dict(embed_dims=64, num_layers=2, num_heads=2, mlp_dims=256)
TINY_ADV = dict(embed_dims=64, num_layers=2, mlp_dims=160)
# Mixer settings covering the scan's code paths: padded chunks, unpadded
# chunks, a single chunk, several groups, pixel tokens.
ADV_CASES = [
    (32, 4, dict(d_state=12, headdim=8, chunk_size=24)),
    (32, 4, dict(d_state=12, headdim=8, chunk_size=33)),
    (32, 4, dict(d_state=12, headdim=8)),
    (32, 2, dict(d_state=16, headdim=16, chunk_size=64, ngroups=2)),
    (16, 1, dict(d_state=16, headdim=16, chunk_size=64)),
]


def _use_scan(monkeypatch, backend: str) -> str:
    """Selects the scan backend of ``ssd_scan``; skips when it is not built.
    Returns the matching ``scan`` name of the cost model."""
    if backend == 'cpp':
        ok, reason = pytest.importorskip('patchscale_mm.ops.backend').load_kernels('cpu')
        if not ok:
            pytest.skip(reason)
    monkeypatch.setenv('PATCHSCALE_SCAN_BACKEND', backend)
    return cm.active_scan('cpu')


# -- activation memory --------------------------------------------------------
@pytest.mark.parametrize('precision,in_channels', [('fp32', 3), ('amp', 1)])
def test_vit_memory_matches_measured_saved_tensors(precision, in_channels):
    torch.manual_seed(0)
    model = cm.build_backbone('deit', TINY_VIT, 32, 4, in_channels=in_channels)
    measured = cm.measure_activation_bytes(model, 32, precision)
    analytic = cm.activation_bytes('deit', TINY_VIT, 32, 4, precision,
                                   in_channels=in_channels)
    # The model lists every saved tensor, so it matches to the byte today;
    # the margin leaves room for torch changing an internal copy.
    assert analytic == pytest.approx(measured, rel=.05)


@pytest.mark.parametrize('precision', cm.PRECISIONS)
@pytest.mark.parametrize('backend,img,patch,mixer_cfg',
                         [('torch', *case) for case in ADV_CASES] +
                         [('cpp', *case) for case in ADV_CASES[::2]])
def test_adventurer_memory_matches_measured_saved_tensors(
        monkeypatch, backend, img, patch, mixer_cfg, precision):
    scan = _use_scan(monkeypatch, backend)
    torch.manual_seed(0)
    model = cm.build_backbone('adventurer', TINY_ADV, img, patch, mixer_cfg)
    measured = cm.measure_activation_bytes(model, img, precision)
    analytic = cm.activation_bytes('adventurer', TINY_ADV, img, patch,
                                   precision, scan, mixer_cfg)
    assert analytic == pytest.approx(measured, rel=.05)


def test_table6_deit_b_memory_and_linear_scaling():
    mib = {
        p: cm.activation_bytes('deit', 'b', 224, p, 'amp') / cm.MIB
        for p in cm.PAPER_TABLE6
    }
    for p, row in cm.PAPER_TABLE6.items():
        assert mib[p] == pytest.approx(row['deit_memory_mb'], rel=.05)
    # Linear in tokens (memory-efficient attention): 4x the tokens at half
    # the patch size is 4x the memory, up to the class token and the image.
    for p in (8, 4, 2, 1):
        assert mib[p] / mib[2 * p] == pytest.approx(4., rel=.02)


def test_adventurer_kernel_memory_is_linear_and_below_torch_scan():
    for p in (8, 4, 2, 1):
        ratio = (cm.activation_bytes('adventurer', 'b', 224, p) /
                 cm.activation_bytes('adventurer', 'b', 224, 2 * p))
        assert ratio == pytest.approx(4., rel=.02)
        # The PyTorch scan also stores its (chunk x chunk) decay matrices.
        for scan in ('kernel', 'mamba_ssm'):
            assert (cm.activation_bytes('adventurer', 'b', 224, p,
                                        scan='torch') >
                    cm.activation_bytes('adventurer', 'b', 224, p, scan=scan))


# -- FLOPs -----------------------------------------------------------------------
@pytest.mark.parametrize('arch,gmacs', [('t', 1.3), ('s', 4.6), ('b', 17.6)])
def test_deit_flops_match_published(arch, gmacs):
    # DeiT paper, Table 1: FLOPs at 224px / patch 16, quoted in multiply-adds.
    macs = cm.forward_flops('deit', arch, 224, 16) / 2
    assert macs / 1e9 == pytest.approx(gmacs, abs=.05)


@pytest.mark.parametrize('family,arch,img,patch,mixer_cfg', [
    ('deit', TINY_VIT, 32, 4, None),
    ('deit', 't', 32, 2, None),
    ('adventurer', TINY_ADV, 32, 4, dict(d_state=16, headdim=16,
                                         chunk_size=24)),
    ('adventurer', TINY_ADV, 32, 2, dict(d_state=16, headdim=16,
                                         chunk_size=64, ngroups=2)),
])
def test_analytic_flops_match_mmengine_counter_on_torch_path(
        monkeypatch, family, arch, img, patch, mixer_cfg):
    _use_scan(monkeypatch, 'torch')
    torch.manual_seed(0)
    model = cm.build_backbone(family, arch, img, patch, mixer_cfg)
    counted = cm.count_flops_mmengine(model, torch.randn(1, 3, img, img))
    analytic = cm.forward_flops(family, arch, img, patch, num_classes=0,
                                scan='chunked', mixer_cfg=mixer_cfg)
    # Both count the same matmuls and einsums; mmengine reads einsum costs
    # from numpy's 4-significant-digit printout, hence the small tolerance.
    # Several chunks are used: with one, the traced graph drops the
    # chunk-state einsum, which then only feeds the unused final state.
    assert analytic == pytest.approx(counted, rel=1e-4)
    if family == 'deit':
        attn = cm.flops_breakdown(family, arch, img, patch)['attn.qk_av']
        assert attn > .1 * analytic  # the SDPA handle is what counts it


def test_analytic_flops_match_mmengine_counter_on_compiled_kernel(
        monkeypatch):
    scan = _use_scan(monkeypatch, 'cpp')
    mixer_cfg = dict(d_state=16, headdim=16, chunk_size=24)
    model = cm.build_backbone('adventurer', TINY_ADV, 32, 4, mixer_cfg)
    counted = cm.count_flops_mmengine(model, torch.randn(1, 3, 32, 32))
    analytic = cm.forward_flops('adventurer', TINY_ADV, 32, 4, 0,
                                cm.SCAN_FLOP_CONVENTION[scan], mixer_cfg)
    assert analytic == pytest.approx(counted, rel=1e-6)


@functools.lru_cache(maxsize=None)
def _scan_custom_op():
    # A stand-in for a compiled scan kernel: opaque to the jit counter.
    @torch.library.custom_op('patchscale_mm_test::ssd_scan', mutates_args=())
    def scan(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor,
             B: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
        return ssd_scan_chunked(x, dt, A, B, C, chunk_size=16)

    scan.register_fake(lambda x, dt, A, B, C: torch.empty_like(x))
    return scan


class _Scan(nn.Module):

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


def test_scan_op_handle_counts_an_opaque_kernel():

    b, l, h, p, g, n = 2, 40, 4, 8, 2, 6
    args = (torch.randn(b, l, h, p), torch.rand(b, l, h), -torch.rand(h),
            torch.randn(b, l, g, n), torch.randn(b, l, g, n))
    from mmengine.analysis import FlopAnalyzer
    analyzer = FlopAnalyzer(_Scan(_scan_custom_op()), args)
    analyzer.unsupported_ops_warnings(False)
    assert analyzer.total() == 0  # invisible without a handle
    analyzer.set_op_handle('patchscale_mm_test::ssd_scan',
                           cm.ssd_scan_flop_jit('chunked', chunk_size=16))
    # The handle's count equals mmengine's own count of the einsums inside.
    ref = FlopAnalyzer(
        _Scan(functools.partial(ssd_scan_chunked, chunk_size=16)), args)
    assert analyzer.total() == pytest.approx(ref.total(), rel=1e-4)
    assert 2 * analyzer.total() == b * cm.ssd_scan_flops(l, h, p, n, g, 16)
    analyzer.set_op_handle('patchscale_mm_test::ssd_scan',
                           cm.ssd_scan_flop_jit('recurrence'))
    assert 2 * analyzer.total() == 4 * b * l * h * p * n


def test_adventurer_to_deit_flops_ratio_tracks_table6_gpu_hours():
    for p, row in cm.PAPER_TABLE6.items():
        ratio = (cm.training_flops('adventurer', 'b', 224, p) /
                 cm.training_flops('deit', 'b', 224, p))
        paper = row['adv_hours'] / row['deit_hours']
        assert ratio == pytest.approx(paper, rel=.2)


def test_bad_arguments_raise_one_clear_line():
    with pytest.raises(ValueError, match='does not divide image size 224'):
        cm.forward_flops('deit', 'b', 224, 3)
    with pytest.raises(ValueError, match="unknown model family 'resnet'"):
        cm.activation_bytes('resnet', 'b', 224, 16)
    with pytest.raises(ValueError, match="not <family>-<arch>"):
        parse_model_name('deitb')
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        cm.activation_bytes('deit', 'b', 224, 16, 'fp8')


# -- CLIs ------------------------------------------------------------------------
def test_estimate_cost_cli_prints_table6_comparison(capsys):
    assert load_tool('estimate_cost').main([]) == 0
    out = capsys.readouterr().out
    assert '| 16 | 196 | 63 | 62 | 185 | 35.1 | 41.0 |' in out
    assert '| 1 | 50176 | 16,061 | 16118 |' in out
    assert '0.12 (115.08 / 967.99)' in out


def test_get_flops_cli_tables_and_check(capsys, monkeypatch):
    tool = load_tool('get_flops')
    monkeypatch.setattr(tool, 'CHECKS', (('deit', 't', 32, 4),
                                         ('adventurer', 't', 64, 4)))
    assert tool.main(['--img-size', '64', '--patch-sizes', '4', '--check']) == 0
    out = capsys.readouterr().out
    assert '| model | p4 |' in out
    assert '| deit-b | 46.1 |' in out  # 256 patch tokens + class token
    assert out.count('| adventurer-h |') == 2  # FLOPs and params tables
    check = out.split('Cross-check')[1]
    assert check.count('+0.00') == 2
