"""Changing patch grid and input size between training stages: the "by
extending" backbone option (Table 5) against a closed form, the shipped
multi-stage chains, and one chain run end to end on CPU."""
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mmengine.config import Config

from patchscale_mm.fixtures import make_imagenet_fixture
from patchscale_mm.models.backbones import Adventurer, PatchViT

ROOT = Path(__file__).resolve().parents[1]
CLS = ROOT / 'configs' / 'cls'
TINY_VIT = dict(embed_dims=16, num_layers=1, num_heads=2, mlp_dims=32)


def bilinear_x2_weights(n: int) -> torch.Tensor:
    """(2n, n) matrix of 2x bilinear upsampling with half-pixel centres:
    output 2i+1 mixes inputs i and i+1 as 3:1, 2i+2 as 1:3; the ends copy."""
    weights = torch.zeros(2 * n, n)
    weights[0, 0] = weights[-1, -1] = 1
    for i in range(n - 1):
        weights[2 * i + 1, i], weights[2 * i + 1, i + 1] = .75, .25
        weights[2 * i + 2, i], weights[2 * i + 2, i + 1] = .25, .75
    return weights


@pytest.mark.parametrize('family', [PatchViT, Adventurer])
def test_extending_interpolates_the_embedded_tokens(family):
    torch.manual_seed(0)
    arch = TINY_VIT if family is PatchViT else 't'
    model = family(arch=arch, img_size=32, patch_size=4,
                   embed_patch_size=8).eval()
    assert model.patch_embed.patch_size == (8, 8)
    assert model.pos_embed.shape[1] == 8 * 8 + 1  # the grid of patch 4
    img = torch.randn(2, 3, 32, 32)

    # The patch-8 embedding by hand: one linear map per 8x8 patch.
    weight = model.patch_embed.projection.weight  # (D, 3, 8, 8)
    bias = model.patch_embed.projection.bias
    patches = img.unfold(2, 8, 8).unfold(3, 8, 8)  # (B, 3, 4, 4, 8, 8)
    coarse = torch.einsum('bchwij,dcij->bhwd', patches, weight) + bias
    up = bilinear_x2_weights(4)
    expected = torch.einsum('Hh,Ww,bhwd->bHWd', up, up, coarse).flatten(1, 2)

    tokens, grid = model.embed(img)
    assert grid == (8, 8)
    before, after = model.num_extra_tokens
    tokens = tokens - model.pos_embed_for(grid)
    torch.testing.assert_close(tokens[:, before:tokens.shape[1] - after],
                               expected, rtol=1e-5, atol=1e-5)
    # A larger run-time input keeps the ratio: 48 px -> 6x6 embedded -> 12x12.
    out = model(torch.randn(1, 3, 48, 48))[-1]
    assert out.shape == (1, model.embed_dims)


def test_extending_needs_a_patch_that_divides_the_image():
    with pytest.raises(ValueError, match='img_size 32x32 is not divisible by '
                       'patch size 12x12'):
        PatchViT(arch=TINY_VIT, img_size=32, patch_size=4,
                 embed_patch_size=12)
    model = PatchViT(arch=TINY_VIT, img_size=32, patch_size=4,
                     embed_patch_size=16)
    with pytest.raises(ValueError, match='input size 40x40 is not divisible'):
        model(torch.randn(1, 3, 40, 40))


def last_epoch(stem: str) -> int:
    return Config.fromfile(str(CLS / f'{stem}.py')).train_cfg.max_epochs


STAGED = sorted(CLS.glob('*_intermediate.py')) + sorted(
    CLS.glob('*_finetune.py'))


@pytest.mark.parametrize('path', STAGED, ids=lambda p: p.stem)
def test_each_stage_loads_the_last_checkpoint_of_the_one_before(path):
    cfg = Config.fromfile(str(path))
    match = re.fullmatch(r'work_dirs/(\w+)/epoch_(\d+)\.pth', cfg.load_from)
    assert match, cfg.load_from
    stem, epoch = match.groups()
    previous = Config.fromfile(str(CLS / f'{stem}.py'))
    assert int(epoch) == previous.train_cfg.max_epochs
    ours, theirs = cfg.model.backbone, previous.model.backbone
    for key in ('type', 'arch', 'patch_size', 'embed_patch_size'):
        assert ours.get(key) == theirs.get(key), key
    if path.stem.endswith('_intermediate'):  # from a smaller pretraining
        assert theirs.img_size in (128, 128 * ours.patch_size // 16)
        assert theirs.img_size < ours.img_size
        assert 'intermediate' not in stem and 'finetune' not in stem
    else:  # the same input size, the stage before
        assert ours.img_size == theirs.img_size
    assert cfg.model.head.in_channels == previous.model.head.in_channels


def test_table5_pairs_differ_only_in_the_patch_embedding():
    for extended in sorted(CLS.glob('*_extend16_*.py')):
        scaled = CLS / extended.name.replace('_extend16', '')
        ext, sca = (Config.fromfile(str(p)).model.backbone
                    for p in (extended, scaled))
        assert ext.pop('embed_patch_size') == 16
        assert ext == sca, extended.name


TINY_STAGE = """\
_base_ = '{base}'
model = dict(
    backbone=dict(
        arch=dict(_delete_=True, embed_dims=32, num_layers=2, mlp_dims=48),
        mixer_cfg=dict(headdim=16, d_state=8, chunk_size=16)),
    head=dict(num_classes=10, in_channels=32))
data_preprocessor = dict(num_classes=10)
train_dataloader = dict(batch_size=8, num_workers=0, persistent_workers=False)
val_dataloader = dict(batch_size=8, num_workers=0, persistent_workers=False)
test_dataloader = val_dataloader
train_cfg = dict(max_epochs=1, val_interval=1)
default_hooks = dict(logger=dict(interval=1))
randomness = dict(seed=0)
"""


def test_three_stage_chain_runs_end_to_end(tmp_path):
    """128 px pretraining -> 224 px intermediate -> 224 px finetuning of the
    shipped Adventurer/16 chain (a tiny width, one epoch each) on real
    Fashion-MNIST images: each stage loads the one before, the grid change
    is resampled on load, and the last checkpoint evaluates."""
    data = make_imagenet_fixture(tmp_path / 'data', 40, 20, img_size=32)
    data_opts = [f'{loader}.dataset.data_root={data}/'
                 for loader in ('train_dataloader', 'val_dataloader',
                                'test_dataloader')]
    logs, previous = {}, None
    for stem in ('adv_t_p16_in1k_128', 'adv_t_p16_in1k_224_intermediate',
                 'adv_t_p16_in1k_224_finetune'):
        config = tmp_path / f'{stem}.py'
        config.write_text(TINY_STAGE.format(base=CLS / f'{stem}.py'))
        opts = data_opts + ([f'load_from={previous}'] if previous else [])
        out = subprocess.run(
            [sys.executable, 'tools/train.py', str(config), '--work-dir',
             str(tmp_path / stem), '--cfg-options'] + opts,
            cwd=ROOT, capture_output=True, text=True, timeout=600)
        logs[stem] = out.stdout + out.stderr
        assert out.returncode == 0, logs[stem][-4000:]
        previous = tmp_path / stem / 'epoch_1.pth'
        assert previous.is_file()
        if stem != 'adv_t_p16_in1k_128':
            assert 'Load checkpoint from' in logs[stem]
            # Every tensor of the previous stage found its place.
            for bad in ('size mismatch', 'missing keys', 'unexpected key'):
                assert bad not in logs[stem], logs[stem][-4000:]
    # Only the 128 -> 224 px step changes the position-embedding grid.
    assert '8x8 -> 14x14' in logs['adv_t_p16_in1k_224_intermediate']
    assert '->' not in ''.join(
        line for line in logs['adv_t_p16_in1k_224_finetune'].splitlines()
        if 'resampl' in line)

    out = subprocess.run(
        [sys.executable, 'tools/test.py',
         str(tmp_path / 'adv_t_p16_in1k_224_finetune.py'), str(previous),
         '--work-dir', str(tmp_path / 'test'), '--cfg-options'] + data_opts,
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    assert 'accuracy/top1' in out.stdout + out.stderr


def test_segmentation_starts_from_the_classification_chain(tmp_path):
    """The seg config's backbone loads the last classification stage of the
    same patch size (the paper's protocol): every weight arrives unchanged,
    and the 224 px position grid serves 512 px crops by interpolation."""
    from mmengine.registry import init_default_scope
    from mmpretrain.registry import MODELS as CLS_MODELS
    from mmseg.registry import MODELS as SEG_MODELS

    tiny = dict(arch=dict(embed_dims=32, num_layers=2, mlp_dims=48),
                mixer_cfg=dict(headdim=16, d_state=8, chunk_size=16))
    cls_cfg = Config.fromfile(str(CLS / 'adv_t_p16_in1k_224_finetune.py'))
    cls_cfg.model.backbone.update(tiny)
    cls_cfg.model.head.in_channels = 32
    init_default_scope('mmpretrain')
    classifier = CLS_MODELS.build(cls_cfg.model)
    seg_cfg = Config.fromfile(
        str(ROOT / 'configs' / 'seg' / 'adv_t_p16_linear_ade20k.py'))
    init = seg_cfg.model.backbone.init_cfg
    assert init.checkpoint == ('work_dirs/adv_t_p16_in1k_224_finetune/'
                               f'epoch_{cls_cfg.train_cfg.max_epochs}.pth')
    init.checkpoint = str(tmp_path / 'epoch_20.pth')
    torch.save({'state_dict': classifier.state_dict()}, init.checkpoint)

    seg_cfg.model.backbone.update(tiny)
    seg_cfg.model.decode_head.in_channels = 32
    init_default_scope('mmseg')
    segmentor = SEG_MODELS.build(seg_cfg.model)
    segmentor.init_weights()
    theirs = classifier.backbone.state_dict()
    for name, value in segmentor.backbone.state_dict().items():
        torch.testing.assert_close(value, theirs[name], msg=name)
    segmentor.eval()
    with torch.no_grad():
        logits = segmentor(torch.randn(1, 3, 64, 96), mode='tensor')
    assert logits.shape == (1, 150, 4, 6) and logits.isfinite().all()
