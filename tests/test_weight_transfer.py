"""Weights across patch sizes: the pinv patch-kernel resize, position
embedding resampling, and the backbones' load hook."""
import inspect
import logging

import pytest
import torch
import torch.nn.functional as F
from mmengine.logging import MMLogger
from mmengine.runner.checkpoint import load_checkpoint
from torch import nn

from patchscale_mm.models import Adventurer, PatchViT
from patchscale_mm.models.backbones.base import PlainBackbone
from patchscale_mm.models.backbones.checkpoint_filter import (
    adapt_pos_embed, checkpoint_pos_grid, infer_grid)
from patchscale_mm.models.converters import save_checkpoint
from patchscale_mm.models.layers import (resample_abs_pos_embed,
                                         resample_patch_embed)
from patchscale_mm.models.layers.patch_embed import patch_resize_matrix
from patchscale_mm.registry import MODELS

TINY_VIT = dict(embed_dims=32, num_layers=2, num_heads=2, mlp_dims=64)
TINY_ADV = dict(embed_dims=32, num_layers=2, mlp_dims=48)
TINY_MIXER = dict(headdim=16, d_state=8, chunk_size=16)
LOG_MARK = 'resampled checkpoint weights'


def build(family, **kwargs):
    if family == 'vit':
        return PatchViT(arch=TINY_VIT, **kwargs)
    return Adventurer(arch=TINY_ADV, mixer_cfg=TINY_MIXER, **kwargs)


def embed(x, w):
    """Tokens <x, w> of patches (B, C, p, p) under kernels (D, C, p, p)."""
    return torch.einsum('bchw,dchw->bd', x.double(), w.double())


# ---------------------------------------------------------------------------
# resample_patch_embed
# ---------------------------------------------------------------------------
def test_resample_patch_embed_same_size_returns_input():
    w = torch.randn(4, 3, 8, 8)
    assert resample_patch_embed(w, 8) is w
    assert resample_patch_embed(w, (8, 8), mode='interpolate') is w


@pytest.mark.parametrize('interpolation', ['bilinear', 'bicubic'])
@pytest.mark.parametrize('old,new', [(4, 8), (2, 6), (1, 4), (8, 16),
                                     (4, 5), ((2, 4), (4, 8))])
def test_pinv_upsampling_preserves_embedding(interpolation, old, new):
    """p' > p: <resize(x), w'> == <x, w> for every patch x."""
    torch.manual_seed(0)
    old_hw = (old, old) if isinstance(old, int) else old
    new_hw = (new, new) if isinstance(new, int) else new
    w = torch.randn(16, 3, *old_hw)
    x = torch.randn(8, 3, *old_hw)
    w_new = resample_patch_embed(w, new, interpolation=interpolation)
    assert w_new.shape == (16, 3, *new_hw) and w_new.dtype == w.dtype
    x_new = F.interpolate(
        x, size=new_hw, mode=interpolation, align_corners=False,
        antialias=True)
    error = (embed(x_new, w_new) - embed(x, w)).abs().max().item()
    assert error < 1e-4, error


@pytest.mark.parametrize('old,new', [(16, 4), (16, 1), (8, 2), (8, 6)])
def test_pinv_downsampling_is_least_squares(old, new):
    """p' < p: w' minimises ||R^T w' - w||, so the token error <x, R^T w' - w>
    vanishes for patches x = R^T y and is smallest in mean square."""
    torch.manual_seed(0)
    w = torch.randn(8, 3, old, old, dtype=torch.float64)
    w_new = resample_patch_embed(w, new)
    R = patch_resize_matrix(old, new)  # (new^2, old^2)
    residual = w_new.flatten(2) @ R - w.flatten(2)  # (R^T w' - w) per kernel
    # Normal equations: the residual is orthogonal to the rows of R.
    assert (residual @ R.T).abs().max() < 1e-9
    # Exact for patches in the row space of R ...
    y = torch.randn(5, 3, new * new, dtype=torch.float64)
    x = (y @ R).reshape(5, 3, old, old)
    x_small = F.interpolate(
        x, size=(new, new), mode='bicubic', align_corners=False,
        antialias=True)
    torch.testing.assert_close(embed(x_small, w_new), embed(x, w))
    # ... and no other kernel has a smaller residual (here: the plainly
    # interpolated kernel and random perturbations of w').
    best = residual.square().sum()
    others = [resample_patch_embed(w, new, mode='interpolate')]
    others += [w_new + 1e-3 * torch.randn_like(w_new) for _ in range(3)]
    for other in others:
        assert (other.flatten(2) @ R - w.flatten(2)).square().sum() > best


def test_patch_resize_matrix_is_the_image_resize():
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    R = patch_resize_matrix(8, 3)
    expected = F.interpolate(
        x, size=(3, 3), mode='bicubic', align_corners=False, antialias=True)
    torch.testing.assert_close((x.flatten(1) @ R.T).reshape(2, 1, 3, 3),
                               expected)


def test_resample_patch_embed_interpolate_mode_and_errors():
    w = torch.randn(4, 3, 16, 16, dtype=torch.float16)
    out = resample_patch_embed(w, 4, mode='interpolate')
    assert out.shape == (4, 3, 4, 4) and out.dtype == torch.float16
    with pytest.raises(ValueError, match='unknown mode'):
        resample_patch_embed(w, 4, mode='nearest')
    with pytest.raises(ValueError, match='must be'):
        resample_patch_embed(w[0], 4)


# ---------------------------------------------------------------------------
# Position embeddings
# ---------------------------------------------------------------------------
def test_infer_grid():
    assert infer_grid(196, (14, 14)) == (14, 14)
    assert infer_grid(196, (32, 32)) == (14, 14)
    assert infer_grid(8, (2, 4)) == (2, 4)  # the model's aspect first
    assert infer_grid(16, (2, 4)) == (4, 4)  # then square
    assert infer_grid(7, (1, 1)) is None
    assert checkpoint_pos_grid(197, (1, 0), (14, 14)) == ((14, 14), True)
    assert checkpoint_pos_grid(196, (0, 1), (14, 14)) == ((14, 14), False)


@pytest.mark.parametrize('extra', [(1, 0), (0, 1)])
def test_pos_embed_same_grid_is_identity(extra):
    pos = torch.randn(1, 65, 8)
    out, note = adapt_pos_embed(pos, (8, 8), extra)
    assert note is None and torch.equal(out, pos)
    before, after = extra
    assert torch.equal(
        resample_abs_pos_embed(pos, (8, 8), (8, 8), before, after), pos)


@pytest.mark.parametrize('extra', [(1, 0), (0, 1)])
def test_pos_embed_resample_keeps_class_token(extra):
    pos = torch.randn(1, 17, 8)
    out, note = adapt_pos_embed(pos, (8, 8), extra)
    assert out.shape == (1, 65, 8) and note == 'pos_embed 4x4 -> 8x8'
    cls_index = 0 if extra == (1, 0) else -1
    assert torch.equal(out[:, cls_index], pos[:, cls_index])


@pytest.mark.parametrize('extra', [(1, 0), (0, 1)])
def test_pos_embed_without_class_entry_gets_zeros(extra):
    pos = torch.randn(1, 16, 8)  # a 4x4 grid, no class-token entry
    out, note = adapt_pos_embed(pos, (4, 4), extra)
    assert out.shape == (1, 17, 8) and 'zero class-token entry' in note
    grid = out[:, 1:] if extra == (1, 0) else out[:, :-1]
    cls_entry = out[:, 0] if extra == (1, 0) else out[:, -1]
    assert torch.equal(grid, pos) and not cls_entry.any()
    with pytest.raises(ValueError, match='7 tokens'):
        adapt_pos_embed(torch.randn(1, 7, 8), (4, 4), extra)


# ---------------------------------------------------------------------------
# The load hook
# ---------------------------------------------------------------------------
class LogCapture(logging.Handler):

    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())

    def ours(self):
        return [m for m in self.messages if LOG_MARK in m]


@pytest.fixture
def log_capture():
    logger = MMLogger.get_current_instance()
    handler = LogCapture()
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


@pytest.fixture
def p16_checkpoint(tmp_path):
    """mmpretrain-layout checkpoints of p16 models at 32 px (a 2x2 grid)."""
    paths = {}
    for family in ('vit', 'adventurer'):
        torch.manual_seed(0)
        source = build(family, img_size=32, patch_size=16)
        state = {f'backbone.{k}': v for k, v in source.state_dict().items()}
        paths[family] = str(tmp_path / f'{family}_p16.pth')
        save_checkpoint(state, {}, paths[family])
    return paths


@pytest.mark.parametrize('family', ['vit', 'adventurer'])
@pytest.mark.parametrize('patch_size', [8, 4])
def test_p16_checkpoint_into_smaller_patches_via_init_cfg(
        family, patch_size, p16_checkpoint, log_capture):
    cfg = dict(
        # Scoped: another test may have left mmseg as the default scope.
        type='patchscale_mm.PatchViT' if family == 'vit' else
        'patchscale_mm.Adventurer',
        arch=TINY_VIT if family == 'vit' else TINY_ADV,
        img_size=32,
        patch_size=patch_size,
        out_type='featmap',
        init_cfg=dict(
            type='Pretrained',
            checkpoint=p16_checkpoint[family],
            prefix='backbone.'))
    if family == 'adventurer':
        cfg['mixer_cfg'] = TINY_MIXER
    model = MODELS.build(cfg)
    model.init_weights()
    grid = 32 // patch_size
    assert log_capture.ours() == [
        f'{model.family}: {LOG_MARK}: pos_embed 2x2 -> {grid}x{grid}, '
        f'patch_embed 16x16 -> {patch_size}x{patch_size} (pinv)'
    ]
    source = torch.load(p16_checkpoint[family], weights_only=True)
    source = source['state_dict']
    # Everything but the two geometry tensors was loaded as is.
    resampled = {'pos_embed', 'patch_embed.projection.weight'}
    for name, value in model.state_dict().items():
        if name not in resampled:
            assert torch.equal(value, source[f'backbone.{name}']), name
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))[-1]
    assert out.shape == (2, 32, grid, grid) and torch.isfinite(out).all()


@pytest.mark.parametrize('family', ['vit', 'adventurer'])
def test_p16_checkpoint_into_p4_via_load_checkpoint(family, p16_checkpoint,
                                                    log_capture):
    wrapper = nn.Module()
    wrapper.backbone = build(family, img_size=32, patch_size=4)
    load_checkpoint(wrapper, p16_checkpoint[family], strict=True)
    assert len(log_capture.ours()) == 1
    assert 'pos_embed 2x2 -> 8x8, patch_embed 16x16 -> 4x4 (pinv)' in \
        log_capture.ours()[0]
    assert wrapper.backbone.pos_embed.shape == (1, 65, 32)
    with torch.no_grad():
        out = wrapper.backbone(torch.randn(1, 3, 32, 32))[-1]
    assert out.shape == (1, 32) and torch.isfinite(out).all()


@pytest.mark.parametrize('family', ['vit', 'adventurer'])
def test_same_geometry_load_is_silent_and_exact(family, log_capture):
    source = build(family, img_size=32, patch_size=8)
    target = build(family, img_size=32, patch_size=8)
    target.load_state_dict(source.state_dict(), strict=True)
    assert log_capture.ours() == []
    for (name, a), b in zip(source.state_dict().items(),
                            target.state_dict().values()):
        assert torch.equal(a, b), name


def test_checkpoint_without_class_entry_loads(log_capture):
    source = build('vit', img_size=32, patch_size=8)
    state = source.state_dict()
    state['pos_embed'] = state['pos_embed'][:, 1:]  # drop the class entry
    target = build('vit', img_size=32, patch_size=8)
    target.load_state_dict(state, strict=True)
    assert log_capture.ours() == [
        f'PatchViT: {LOG_MARK}: pos_embed (zero class-token entry added)'
    ]
    assert not target.pos_embed[:, 0].any()
    assert torch.equal(target.pos_embed[:, 1:], state['pos_embed'])


def sequential_mlp_keys(state):
    """``state`` with the MLP keys an ``nn.Sequential`` MLP has (mlp.0, mlp.3)."""
    return {k.replace('.mlp.fc1.', '.mlp.0.').replace('.mlp.fc2.', '.mlp.3.'): v
            for k, v in state.items()}


def test_sequential_mlp_keys_load_into_fc1_fc2(tmp_path):
    torch.manual_seed(0)
    source = build('vit', img_size=32, patch_size=8).eval()
    old = sequential_mlp_keys(source.state_dict())
    assert 'layers.1.mlp.3.bias' in old and 'layers.1.mlp.fc2.bias' not in old
    target = build('vit', img_size=32, patch_size=8).eval()
    target.load_state_dict(old, strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(target(x)[-1], source(x)[-1])
    # A full model's checkpoint, through mmengine's loader.
    path = str(tmp_path / 'old_mlp_keys.pth')
    save_checkpoint({f'backbone.{k}': v for k, v in old.items()}, {}, path)
    wrapper = nn.Module()
    wrapper.backbone = build('vit', img_size=32, patch_size=8).eval()
    load_checkpoint(wrapper, path, strict=True)
    with torch.no_grad():
        assert torch.equal(wrapper.backbone(x)[-1], source(x)[-1])


class SequentialMlp(nn.Sequential):
    """The transformer MLP as an ``nn.Sequential`` (keys mlp.0, mlp.3)."""

    def __init__(self, embed_dims, hidden_dims, drop=0.):
        super().__init__(
            nn.Linear(embed_dims, hidden_dims), nn.GELU(), nn.Dropout(drop),
            nn.Linear(hidden_dims, embed_dims), nn.Dropout(drop))


def test_mlp_init_matches_a_sequential_mlp(monkeypatch):
    """fc1 and fc2 draw their initial weights in the order of the positional
    layers, so a seed gives the same model under either naming."""
    torch.manual_seed(0)
    model = build('vit', img_size=32, patch_size=8)
    monkeypatch.setattr('patchscale_mm.models.backbones.vit.Mlp', SequentialMlp)
    torch.manual_seed(0)
    sequential = build('vit', img_size=32, patch_size=8)
    assert 'layers.0.mlp.0.weight' in sequential.state_dict()
    expected = sequential_mlp_keys(model.state_dict())
    assert expected.keys() == sequential.state_dict().keys()
    for name, value in sequential.state_dict().items():
        assert torch.equal(value, expected[name]), name


def test_width_mismatch_is_left_to_the_usual_error():
    source = PatchViT(arch=dict(TINY_VIT, embed_dims=16), img_size=32,
                      patch_size=16)
    target = build('vit', img_size=32, patch_size=8)
    with pytest.raises(RuntimeError, match='size mismatch for pos_embed'):
        target.load_state_dict(source.state_dict())


@pytest.mark.skipif(
    'embed_patch_size' not in inspect.signature(
        PlainBackbone.__init__).parameters,
    reason='needs the embed_patch_size option')
def test_hook_targets_the_patch_embedding_kernel(log_capture):
    """With ``embed_patch_size`` the kernel and the token grid differ; each
    is fitted on its own."""
    source = build('vit', img_size=32, patch_size=16)
    target = build('vit', img_size=32, patch_size=4, embed_patch_size=8)
    target.load_state_dict(source.state_dict(), strict=True)
    assert log_capture.ours() == [
        f'PatchViT: {LOG_MARK}: pos_embed 2x2 -> 8x8, '
        'patch_embed 16x16 -> 8x8 (pinv)'
    ]
