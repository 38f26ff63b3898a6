"""Checkpoint converters: timm ViT/DeiT -> PatchViT, Adventurer (authors'
naming) -> Adventurer, and their one-line errors."""
import argparse
import json
import os.path as osp
import subprocess
import sys

import pytest
import timm
import torch
from mmpretrain.models import LinearClsHead
from timm.models.vision_transformer import VisionTransformer

from patchscale_mm.engine.checkpoint_io import (CheckpointError,
                                                UnsafeCheckpointError)
from patchscale_mm.models import Adventurer, PatchViT
from patchscale_mm.models.converters import (ConversionError,
                                             convert_adventurer, convert_file,
                                             convert_timm_vit,
                                             load_source_state_dict,
                                             unwrap_state_dict)

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


def small_timm_vit(**kwargs):
    torch.manual_seed(0)
    return VisionTransformer(
        img_size=32,
        patch_size=4,
        embed_dim=64,
        depth=2,
        num_heads=2,
        num_classes=10,
        **kwargs).eval()


def build_converted(state_dict, meta):
    """PatchViT/Adventurer + LinearClsHead from a converted checkpoint."""
    cfg = dict(meta['backbone'])
    cls = PatchViT if cfg.pop('type') == 'patchscale_mm.PatchViT' \
        else Adventurer
    backbone = cls(**cfg).eval()
    backbone.load_state_dict(
        {k[len('backbone.'):]: v
         for k, v in state_dict.items() if k.startswith('backbone.')},
        strict=True)
    head = LinearClsHead(
        num_classes=meta['num_classes'],
        in_channels=backbone.embed_dims).eval()
    head.load_state_dict(
        {k[len('head.'):]: v
         for k, v in state_dict.items() if k.startswith('head.')},
        strict=True)
    return backbone, head


def max_logit_diff(timm_model, state_dict, meta, img_size):
    backbone, head = build_converted(state_dict, meta)
    x = torch.randn(2, 3, img_size, img_size)
    with torch.no_grad():
        return (timm_model(x) - head(backbone(x))).abs().max().item()


# ---------------------------------------------------------------------------
# timm -> PatchViT
# ---------------------------------------------------------------------------
def test_deit_tiny_same_logits():
    torch.manual_seed(0)
    deit = timm.create_model('deit_tiny_patch16_224', pretrained=False).eval()
    state_dict, meta = convert_timm_vit(deit.state_dict())
    assert meta['arch_name'] == 't' and meta['adapted'] == []
    assert meta['backbone']['arch']['num_heads'] == 3
    assert max_logit_diff(deit, state_dict, meta, 224) < 1e-5


def test_small_custom_vit_same_logits():
    vit = small_timm_vit()
    state_dict, meta = convert_timm_vit(vit.state_dict(), num_heads=2)
    assert meta['backbone']['patch_size'] == [4, 4]
    assert meta['backbone']['img_size'] == [32, 32]
    assert max_logit_diff(vit, state_dict, meta, 32) < 1e-5


def test_deit3_layer_scale_and_pos_embed_without_class_entry():
    vit = small_timm_vit(no_embed_class=True, init_values=0.5)
    with torch.no_grad():  # layer scale far from 1, so that folding shows
        for name, param in vit.named_parameters():
            if name.endswith('gamma'):
                param.uniform_(0.1, 2.)
    state_dict = vit.state_dict()
    assert state_dict['pos_embed'].shape[1] == 64  # no class-token entry
    converted, meta = convert_timm_vit(state_dict, num_heads=2)
    assert meta['adapted'] == [
        'pos_embed (zero class-token entry added)',
        'layer scale folded into 4 linear layers'
    ]
    assert max_logit_diff(vit, converted, meta, 32) < 1e-5


# The ViT/DeiT sizes of the paper (Table 7) as timm builds them: DeiT T/S/B,
# DeiT III (layer scale, position embedding without the class entry) and
# the MAE-recipe ViT-L/H that the paper trains as DeiT-L/H.
TIMM_PAPER_MODELS = [
    ('deit_tiny_patch16_224', 't'), ('deit_small_patch16_224', 's'),
    ('deit_base_patch16_224', 'b'), ('deit3_small_patch16_224', 's'),
    ('deit3_base_patch16_224', 'b'), ('deit3_large_patch16_224', 'l'),
    ('deit3_huge_patch14_224', 'h'), ('vit_large_patch16_224', 'l'),
    ('vit_huge_patch14_224', 'h'),
]


@pytest.mark.parametrize('name,arch', TIMM_PAPER_MODELS)
def test_timm_paper_sizes_convert_and_load_strictly(name, arch):
    with torch.device('meta'):
        model = timm.create_model(name, pretrained=False)
    state_dict, meta = convert_timm_vit(model.state_dict())
    assert meta['arch_name'] == arch
    assert meta['backbone']['arch'] == {k: v for k, v in PatchViT.arch_zoo[arch].items()}
    cfg = dict(meta['backbone'])
    cfg.pop('type')
    with torch.device('meta'):
        backbone = PatchViT(**cfg)
    backbone.load_state_dict({k[len('backbone.'):]: v for k, v in state_dict.items()
                              if k.startswith('backbone.')}, strict=True, assign=True)


def test_deit3_small_same_logits():
    torch.manual_seed(0)
    deit3 = timm.create_model('deit3_small_patch16_224', pretrained=False).eval()
    with torch.no_grad():  # layer scale away from its 1e-6 init
        for key, param in deit3.named_parameters():
            if key.endswith('gamma'):
                param.uniform_(0.1, 1.)
    state_dict, meta = convert_timm_vit(deit3.state_dict())
    assert meta['adapted'] == ['pos_embed (zero class-token entry added)',
                               'layer scale folded into 24 linear layers']
    assert max_logit_diff(deit3, state_dict, meta, 224) < 1e-4


def test_distilled_deit_is_rejected():
    deit = timm.create_model(
        'deit_tiny_distilled_patch16_224', pretrained=False)
    with pytest.raises(ConversionError, match='distilled DeiT') as error:
        convert_timm_vit(deit.state_dict())
    assert 'dist_token' in str(error.value) and '\n' not in str(error.value)


def test_conversion_time_resample_matches_the_load_hook():
    vit = small_timm_vit()
    plain, _ = convert_timm_vit(vit.state_dict(), num_heads=2)
    resampled, meta = convert_timm_vit(
        vit.state_dict(), patch_size=(2, 2), num_heads=2)
    assert meta['backbone']['patch_size'] == [2, 2]
    assert meta['backbone']['img_size'] == [32, 32]
    assert meta['adapted'] == [
        'pos_embed 8x8 -> 16x16', 'patch_embed 4x4 -> 2x2 (pinv)'
    ]
    # The backbone's load hook fits the un-resampled weights the same way.
    hooked = PatchViT(
        arch=meta['backbone']['arch'], img_size=32, patch_size=2)
    hooked.load_state_dict(
        {k[len('backbone.'):]: v
         for k, v in plain.items() if k.startswith('backbone.')})
    for name, value in hooked.state_dict().items():
        assert torch.equal(value, resampled[f'backbone.{name}']), name
    backbone, head = build_converted(resampled, meta)
    with torch.no_grad():
        logits = head(backbone(torch.randn(2, 3, 32, 32)))
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()


# ---------------------------------------------------------------------------
# Adventurer: the authors' layout and forward
# ---------------------------------------------------------------------------
OFFICIAL_KEYS = json.load(open(osp.join(REPO, 'tests', 'data', 'adventurer_official_keys.json')))
OFFICIAL_MODELS = [name for name in OFFICIAL_KEYS if not name.startswith('_')]


def official_state_dict(name, img_size=224, seed=0, dtype=torch.float32):
    """Random weights in the layout of the authors' model ``name`` (key list
    from their code), with the position embedding of ``img_size``; values in
    the ranges their initialisation gives, so that 12 blocks stay finite."""
    gen = torch.Generator().manual_seed(seed)
    patch = OFFICIAL_KEYS[name]['patch_embed.proj.weight'][-1]
    out = {}
    for key, shape in OFFICIAL_KEYS[name].items():
        if key == 'pos_embed':
            shape = [1, (img_size // patch)**2 + 1, shape[-1]]
        u = torch.rand(shape, generator=gen, dtype=dtype)
        if key.endswith('A_log'):
            value = torch.log(1 + 15 * u)  # A in [1, 16]
        elif key.endswith('dt_bias'):
            value = torch.log(torch.expm1(1e-3 + 0.1 * u))  # softplus^-1(dt)
        elif key.endswith(('norm.weight', 'norm_mlp.weight', 'norm_f.weight', '.D')):
            value = 0.5 + u
        else:
            value = torch.randn(shape, generator=gen, dtype=dtype) * 0.05
        out[key] = value
    return out


def authors_forward(sd, images, depth):
    """The authors' classifier (``models_mamba.py``), re-implemented from
    their code with plain tensor ops and a token-by-token scan: class token
    appended last, position embedding, blocks [norm -> flip of the patch
    tokens in layers with ``n // 2 == 1`` -> heading average prepended ->
    Mamba-2 -> un-flip -> residual; norm_mlp -> SwiGLU -> residual], norm_f,
    last token, head."""

    def rms(x, w, eps=1e-5):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w

    def flip(x):
        return torch.cat([x[:, :-1].flip(1), x[:, -1:]], dim=1)

    def mamba2(u, p):
        # in_proj rows are [z, x, B, C, dt]; one group, head width 64.
        b, l, _ = u.shape
        nheads = p['A_log'].shape[0]
        d_inner = p['norm.weight'].shape[0]
        d_state = (p['conv1d.bias'].shape[0] - d_inner) // 2
        z, xbc, dt = (u @ p['in_proj.weight'].T).split(
            [d_inner, d_inner + 2 * d_state, nheads], -1)
        k = p['conv1d.weight'].shape[-1]
        xbc = torch.nn.functional.conv1d(
            torch.nn.functional.pad(xbc.transpose(1, 2), (k - 1, 0)), p['conv1d.weight'],
            p['conv1d.bias'], groups=xbc.shape[-1]).transpose(1, 2)
        xbc = xbc * torch.sigmoid(xbc)
        x, Bm, Cm = xbc.split([d_inner, d_state, d_state], -1)
        x = x.unflatten(-1, (nheads, -1))  # (b, l, h, p)
        dt = torch.nn.functional.softplus(dt + p['dt_bias'])  # (b, l, h)
        A = -torch.exp(p['A_log'])
        state = u.new_zeros(b, nheads, x.shape[-1], d_state)
        ys = []
        for t in range(l):
            decay = torch.exp(dt[:, t] * A)[:, :, None, None]
            state = decay * state + (dt[:, t, :, None] * x[:, t])[..., None] * Bm[:, t, None, None]
            ys.append((state * Cm[:, t, None, None]).sum(-1) + p['D'][:, None] * x[:, t])
        y = torch.stack(ys, 1).flatten(-2) * (z * torch.sigmoid(z))
        return rms(y, p['norm.weight']) @ p['out_proj.weight'].T

    def swiglu(x, p):
        a = x @ p['w1.weight'].T + p['w1.bias']
        return (a * torch.sigmoid(a) * (x @ p['w2.weight'].T + p['w2.bias'])) @ \
            p['w3.weight'].T + p['w3.bias']

    def sub(prefix):
        return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}

    x = torch.nn.functional.conv2d(images, sd['patch_embed.proj.weight'],
                                   sd['patch_embed.proj.bias'],
                                   stride=sd['patch_embed.proj.weight'].shape[-1])
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([x, sd['cls_token'].expand(x.shape[0], -1, -1)], 1) + sd['pos_embed']
    for n in range(depth):
        p = sub(f'layers.{n}.')
        h = rms(x, p['norm.weight'])
        h = flip(h) if n // 2 == 1 else h
        h = torch.cat([h.mean(1, keepdim=True), h], 1)
        h = mamba2(h, sub(f'layers.{n}.mixer.'))[:, 1:]
        x = x + (flip(h) if n // 2 == 1 else h)
        x = x + swiglu(rms(x, p['norm_mlp.weight']), sub(f'layers.{n}.mlp.'))
    x = rms(x, sd['norm_f.weight'])[:, -1]
    return x @ sd['head.weight'].T + sd['head.bias']


def strict_load(state_dict, meta):
    """Loads a converted checkpoint strictly into a meta-device backbone and
    head built from its meta config (no memory for the 50,177-entry position
    embeddings)."""
    cfg = dict(meta['backbone'])
    assert cfg.pop('type') == 'patchscale_mm.Adventurer'
    with torch.device('meta'):
        backbone = Adventurer(**cfg)
        head = LinearClsHead(num_classes=meta['num_classes'], in_channels=backbone.embed_dims)
    backbone.load_state_dict({k[len('backbone.'):]: v for k, v in state_dict.items()
                              if k.startswith('backbone.')}, strict=True, assign=True)
    head.load_state_dict({k[len('head.'):]: v for k, v in state_dict.items()
                          if k.startswith('head.')}, strict=True, assign=True)


@pytest.mark.parametrize('name', OFFICIAL_MODELS)
def test_official_layouts_convert_and_load_strictly(name):
    layout = OFFICIAL_KEYS[name]
    source = {k: torch.zeros(s) for k, s in layout.items()}
    state_dict, meta = convert_adventurer(source)
    assert len(state_dict) == len(layout) == 199
    arch = name.split('_')[1][0]
    patch = int(name.split('patch')[1].split('_')[0])
    assert meta['arch_name'] == arch and meta['num_classes'] == 1000
    assert meta['backbone']['patch_size'] == [patch, patch]
    assert meta['backbone']['img_size'] == [224, 224]
    assert meta['backbone']['flip_rule'] == 'released'
    assert meta['backbone']['mixer_cfg'] == dict(
        d_state=64, d_conv=4, expand=2, headdim=64, ngroups=1)
    strict_load(state_dict, meta)


def converted_logits(source, images, dtype, **overrides):
    state_dict, meta = convert_adventurer(source)
    cfg = dict(meta['backbone'], **overrides)
    cfg.pop('type')
    backbone = Adventurer(**cfg).to(dtype).eval()
    head = LinearClsHead(num_classes=meta['num_classes'],
                         in_channels=backbone.embed_dims).to(dtype).eval()
    backbone.load_state_dict({k[len('backbone.'):]: v for k, v in state_dict.items()
                              if k.startswith('backbone.')}, strict=True)
    head.load_state_dict({k[len('head.'):]: v for k, v in state_dict.items()
                          if k.startswith('head.')}, strict=True)
    with torch.no_grad():
        return head(backbone(images.to(dtype)))


@pytest.mark.parametrize('name,img_size', [('adventurer_tiny_patch16_224', 224),
                                           ('adventurer_tiny_patch1_224', 16)])
def test_converted_logits_equal_the_authors_forward(name, img_size):
    torch.manual_seed(0)
    images = torch.randn(2, 3, img_size, img_size, dtype=torch.float64)
    source = official_state_dict(name, img_size, dtype=torch.float64)
    with torch.no_grad():
        reference = authors_forward(source, images, depth=12)
    scale = reference.abs().max().item()
    assert scale > 0.1
    # fp64 through the composable path: the same function to rounding.
    ours64 = converted_logits(source, images, torch.float64)
    torch.testing.assert_close(ours64, reference, rtol=1e-9, atol=1e-9 * scale)
    # fp32 through the fused CPU kernels: fp32 rounding over 12 blocks.
    source32 = {k: v.float() for k, v in source.items()}
    ours32 = converted_logits(source32, images, torch.float32)
    torch.testing.assert_close(ours32.double(), reference, rtol=0, atol=2e-5 * scale)
    # The flip rule is part of the checkpoint: the text's reading differs.
    paper = converted_logits(source, images, torch.float64, flip_rule='paper')
    assert (paper - reference).abs().max() > 0.1 * scale


def authors_training_checkpoint(model_state):
    """What the authors' main.py saves every epoch."""
    return {
        'model': model_state,
        'optimizer': {'state': {}, 'param_groups': [{'lr': 1e-3, 'params': [0]}]},
        'lr_scheduler': {'base_values': [1e-3]},
        'epoch': 299,
        'model_ema': {k: v.clone() + 1 for k, v in model_state.items()},
        'scaler': 'none',
        'args': argparse.Namespace(model='adventurer_tiny_patch16', batch_size=128, lr=5e-4,
                                   input_size=224, ThreeAugment=True, opt_betas=None),
    }


@pytest.fixture
def official_tiny(tmp_path):
    """A training checkpoint of the authors' code, Tiny/16 at 32 px."""
    source = official_state_dict('adventurer_tiny_patch16_224', img_size=32)
    path = str(tmp_path / 'official.pth')
    torch.save(authors_training_checkpoint(source), path)
    return source, path


def test_training_checkpoint_with_args_converts(official_tiny, tmp_path):
    source, path = official_tiny
    dst = str(tmp_path / 'converted.pth')
    lines = []
    meta = convert_file(path, dst, 'adventurer', log=lines.append)
    assert "('model')" in lines[0]
    converted = torch.load(dst, weights_only=True)
    assert converted['meta']['source_entry'] == "'model'"
    assert meta['backbone']['img_size'] == [32, 32]
    state_dict = converted['state_dict']
    assert len(state_dict) == len(source)
    assert torch.equal(state_dict['backbone.layers.3.norm2.weight'],
                       source['layers.3.norm_mlp.weight'])
    assert torch.equal(state_dict['backbone.layers.3.mlp.w2.bias'], source['layers.3.mlp.w2.bias'])
    # The EMA weights on request.
    ema, _ = convert_adventurer(load_source_state_dict(path, key='model_ema')[0])
    assert torch.equal(ema['head.fc.bias'], source['head.bias'] + 1)


def test_adventurer_resample_at_conversion(official_tiny):
    source, _ = official_tiny
    state_dict, meta = convert_adventurer(source, patch_size=8)
    assert meta['adapted'] == ['pos_embed 2x2 -> 4x4', 'patch_embed 16x16 -> 8x8 (pinv)']
    assert state_dict['backbone.pos_embed'].shape == (1, 17, 256)
    # The class token is last in Adventurer and keeps its entry.
    assert torch.equal(state_dict['backbone.pos_embed'][:, -1], source['pos_embed'][:, -1])
    backbone, _ = build_converted(state_dict, meta)
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, 32, 32))[-1]
    assert out.shape == (1, 256) and torch.isfinite(out).all()


# ---------------------------------------------------------------------------
# Errors: one line naming the key, nothing written
# ---------------------------------------------------------------------------
def assert_one_line_error(src, dst, match, source='timm_vit',
                          error=CheckpointError):
    with pytest.raises(error, match=match) as info:
        convert_file(src, dst, source, log=lambda line: None)
    assert '\n' not in str(info.value)
    assert not osp.exists(dst)
    return str(info.value)


@pytest.fixture
def vit_state():
    return small_timm_vit().state_dict()


def test_error_not_a_state_dict(tmp_path):
    dst = str(tmp_path / 'out.pth')
    for i, obj in enumerate([torch.zeros(3), [torch.zeros(3)],
                             {'epoch': 3, 'lr': 0.1}]):
        src = str(tmp_path / f'bad{i}.pth')
        torch.save(obj, src)
        assert_one_line_error(src, dst, 'not a state dict')
    src = str(tmp_path / 'truncated.pth')
    with open(src, 'wb') as f:
        f.write(b'not a checkpoint')
    assert_one_line_error(src, dst, 'not a PyTorch checkpoint')


def test_error_missing_key(tmp_path, vit_state):
    del vit_state['blocks.1.attn.proj.weight']
    src, dst = str(tmp_path / 'src.pth'), str(tmp_path / 'out.pth')
    torch.save({'state_dict': vit_state}, src)
    message = assert_one_line_error(src, dst, 'missing after mapping')
    assert message.endswith('backbone.layers.1.attn.proj.weight')


def test_error_unexpected_key(tmp_path, vit_state):
    vit_state['blocks.0.adapter.weight'] = torch.zeros(3)
    src, dst = str(tmp_path / 'src.pth'), str(tmp_path / 'out.pth')
    torch.save(vit_state, src)
    message = assert_one_line_error(src, dst, 'no mapping rule')
    assert message.endswith('blocks.0.adapter.weight')


def test_error_wrong_shape(tmp_path, vit_state):
    vit_state['blocks.1.mlp.fc1.weight'] = torch.zeros(128, 64)
    src, dst = str(tmp_path / 'src.pth'), str(tmp_path / 'out.pth')
    torch.save({'model': vit_state}, src)
    message = assert_one_line_error(src, dst, 'wrong shapes')
    assert ('backbone.layers.1.mlp.fc1.weight (from blocks.1.mlp.fc1.weight) '
            'is (128, 64), expected (256, 64)') in message


def test_error_pickle_refused_by_weights_only(tmp_path, vit_state):
    src, dst = str(tmp_path / 'src.pth'), str(tmp_path / 'out.pth')
    torch.save({'model': vit_state, 'args': argparse.Namespace(lr=1),
                'loss': torch.nn.CrossEntropyLoss()}, src)
    message = assert_one_line_error(
        src, dst, 'torch.nn.modules.loss.CrossEntropyLoss', error=UnsafeCheckpointError)
    assert 'refusing to load' in message and 'Namespace' not in message


def test_error_adventurer_unmatched_key(official_tiny):
    official = dict(official_tiny[0])
    official['layers.0.mixer.in_proj.bias'] = torch.zeros(3)
    with pytest.raises(ConversionError, match='no mapping rule') as info:
        convert_adventurer(official)
    assert str(info.value).endswith('layers.0.mixer.in_proj.bias')


def test_unwrap_prefers_weights_and_strips_module_prefix():
    weights = {'module.a': torch.zeros(1)}
    state_dict, where = unwrap_state_dict({
        'model': weights,
        'model_ema': {'a': torch.ones(1)}
    })
    assert where == "'model', 'module.' prefix removed"
    assert list(state_dict) == ['a'] and not state_dict['a'].any()
    state_dict, where = unwrap_state_dict(
        {'model_ema': {'a': torch.ones(1)}}, key='model_ema')
    assert where == "'model_ema'" and state_dict['a'].all()
    with pytest.raises(ConversionError, match="no 'ema' entry"):
        unwrap_state_dict({'model': weights}, key='ema')


# ---------------------------------------------------------------------------
# The command-line scripts
# ---------------------------------------------------------------------------
def run_script(name, *args):
    script = osp.join(REPO, 'tools', 'model_converters', name)
    return subprocess.run([sys.executable, script, *map(str, args)],
                          capture_output=True,
                          text=True,
                          cwd=REPO,
                          env={'OMP_NUM_THREADS': '1', 'PATH': ''})


def test_cli_dry_run_lists_unmatched_keys_and_writes_nothing(official_tiny, tmp_path):
    official = dict(official_tiny[0])
    official['layers.0.extra.weight'] = torch.zeros(2)
    src, dst = tmp_path / 'src.pth', tmp_path / 'out.pth'
    torch.save(official, src)
    result = run_script('adventurer_to_patchscale.py', src, '--dry-run')
    assert result.returncode == 1, result.stderr
    assert 'layers.0.mixer.A_log -> backbone.layers.0.mixer.A_log' in \
        result.stdout
    assert ('1 unmatched source keys: layers.0.extra.weight'
            in result.stdout)
    # The failure is one line, no traceback.
    assert result.stderr.strip().count('\n') == 0
    assert result.stderr.startswith('error: 1 unexpected source keys')
    assert not dst.exists()


def test_cli_timm_writes_a_loadable_checkpoint(tmp_path, vit_state):
    src, dst = tmp_path / 'src.pth', tmp_path / 'out.pth'
    torch.save({'model': vit_state}, src)
    result = run_script('timm_vit_to_patchscale.py', src, dst,
                        '--patch-size', 2, '--num-heads', 2)
    assert result.returncode == 0, result.stderr
    assert 'adapted: patch_embed 4x4 -> 2x2 (pinv)' in result.stdout
    meta = torch.load(dst, weights_only=True)['meta']
    assert meta['backbone']['patch_size'] == [2, 2]
