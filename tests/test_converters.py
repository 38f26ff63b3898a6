"""Checkpoint converters: timm ViT/DeiT -> PatchViT, Adventurer (authors'
naming) -> Adventurer, and their one-line errors."""
import argparse
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
                                             unwrap_state_dict)

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
TINY_ADV = dict(embed_dims=32, num_layers=4, mlp_dims=48)
TINY_MIXER = dict(headdim=16, d_state=8, d_conv=4, expand=2)


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
# Adventurer round trip through the authors' naming
# ---------------------------------------------------------------------------
def to_official_naming(state_dict):
    """Our Adventurer keys -> the naming documented in
    tools/model_converters/adventurer_to_patchscale.py, written out
    independently of the converter's rules."""
    out = {}
    for key, value in state_dict.items():
        if key.startswith('head.fc.'):
            out['head.' + key[len('head.fc.'):]] = value
            continue
        key = key[len('backbone.'):] if key.startswith('backbone.') else key
        parts = key.split('.')
        if key.startswith('patch_embed.projection.'):
            out['patch_embed.proj.' + parts[-1]] = value
        elif key in ('cls_token', 'pos_embed'):
            out[key] = value
        elif key == 'norm.weight':
            out['norm_f.weight'] = value
        elif parts[2] == 'norm1':
            out[f'layers.{parts[1]}.norm.weight'] = value
        elif parts[2] in ('mixer', 'norm2'):
            out[key] = value
        elif parts[2:4] == ['mlp', 'w3']:
            out[f'layers.{parts[1]}.mlp.fc2.{parts[4]}'] = value
        elif parts[2:4] == ['mlp', 'w1']:  # the gate: second half of fc1
            value_half = state_dict['backbone.' +
                                    key.replace('.w1.', '.w2.')]
            out[f'layers.{parts[1]}.mlp.fc1.{parts[4]}'] = torch.cat(
                [value_half, value])
        elif parts[2:4] != ['mlp', 'w2']:
            raise KeyError(key)
    return out


@pytest.fixture
def adventurer_and_official(tmp_path):
    torch.manual_seed(0)
    model = Adventurer(
        arch=TINY_ADV,
        img_size=32,
        patch_size=8,
        flip_rule='released',
        mixer_cfg=TINY_MIXER).eval()
    ours = {f'backbone.{k}': v for k, v in model.state_dict().items()}
    ours['head.fc.weight'] = torch.randn(7, 32)
    ours['head.fc.bias'] = torch.randn(7)
    path = str(tmp_path / 'official.pth')
    torch.save({'model': to_official_naming(ours), 'epoch': 299}, path)
    return model, ours, path


def test_adventurer_round_trip(adventurer_and_official, tmp_path):
    model, ours, path = adventurer_and_official
    dst = str(tmp_path / 'converted.pth')
    lines = []
    meta = convert_file(path, dst, 'adventurer', log=lines.append)
    assert "('model')" in lines[0]
    converted = torch.load(dst, weights_only=True)
    assert converted['meta']['source_entry'] == "'model'"
    assert converted['meta']['backbone']['flip_rule'] == 'released'
    assert converted['meta']['backbone']['mixer_cfg'] == dict(
        TINY_MIXER, ngroups=1)
    state_dict = converted['state_dict']
    assert set(state_dict) == set(ours)
    for key, value in ours.items():
        assert torch.equal(state_dict[key], value), key
    backbone, head = build_converted(state_dict, meta)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(backbone(x)[-1], model(x)[-1])
        assert head(backbone(x)).shape == (2, 7)


def test_adventurer_resample_at_conversion(adventurer_and_official):
    _, ours, path = adventurer_and_official
    official = torch.load(path, weights_only=True)['model']
    state_dict, meta = convert_adventurer(official, patch_size=4)
    assert meta['adapted'] == [
        'pos_embed 4x4 -> 8x8', 'patch_embed 8x8 -> 4x4 (pinv)'
    ]
    assert state_dict['backbone.pos_embed'].shape == (1, 65, 32)
    # The class token is last in Adventurer and keeps its entry.
    assert torch.equal(state_dict['backbone.pos_embed'][:, -1],
                       ours['backbone.pos_embed'][:, -1])
    backbone, _ = build_converted(state_dict, meta)
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, 32, 32))[-1]
    assert out.shape == (1, 32) and torch.isfinite(out).all()


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
    assert ('backbone.layers.1.mlp.0.weight (from blocks.1.mlp.fc1.weight) '
            'is (128, 64), expected (256, 64)') in message


def test_error_pickle_refused_by_weights_only(tmp_path, vit_state):
    src, dst = str(tmp_path / 'src.pth'), str(tmp_path / 'out.pth')
    torch.save({'model': vit_state, 'args': argparse.Namespace(lr=1)}, src)
    message = assert_one_line_error(
        src, dst, 'argparse.Namespace', error=UnsafeCheckpointError)
    assert 'refusing to load' in message


def test_error_adventurer_unmatched_key(adventurer_and_official, tmp_path):
    _, _, path = adventurer_and_official
    official = torch.load(path, weights_only=True)['model']
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


def test_cli_dry_run_lists_unmatched_keys_and_writes_nothing(
        adventurer_and_official, tmp_path):
    _, _, path = adventurer_and_official
    official = torch.load(path, weights_only=True)['model']
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
