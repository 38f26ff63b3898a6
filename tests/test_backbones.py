import pytest
import torch

from patchscale_mm.models import Adventurer, PatchViT
from patchscale_mm.models.backbones.adventurer import is_flipped

TINY_VIT = dict(embed_dims=32, num_layers=2, num_heads=2, mlp_dims=64)
TINY_ADV = dict(embed_dims=32, num_layers=4, mlp_dims=48)
TINY_MIXER = dict(headdim=16, d_state=8, chunk_size=16)


def build(family, **kwargs):
    if family == 'vit':
        return PatchViT(arch=TINY_VIT, **kwargs)
    return Adventurer(arch=TINY_ADV, mixer_cfg=TINY_MIXER, **kwargs)


@pytest.mark.parametrize('family', ['vit', 'adventurer'])
@pytest.mark.parametrize('patch_size,img_size', [(1, 16), (2, 16), (4, 32),
                                                 (8, 32), (16, 64)])
def test_shapes_forward_backward(family, patch_size, img_size):
    model = build(
        family,
        img_size=img_size,
        patch_size=patch_size,
        out_type='featmap',
        out_indices=(0, -1))
    x = torch.randn(2, 3, img_size, img_size, requires_grad=True)
    outs = model(x)
    grid = img_size // patch_size
    assert len(outs) == 2
    for out in outs:
        assert out.shape == (2, 32, grid, grid)
    (outs[0].sum() + outs[1].square().mean()).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for name, param in model.named_parameters():
        assert param.grad is not None, name


@pytest.mark.parametrize('family', ['vit', 'adventurer'])
def test_out_types(family):
    model = build(family, img_size=16, patch_size=4, out_type='cls_token')
    x = torch.randn(2, 3, 16, 16)
    cls_token = model(x)[-1]
    assert cls_token.shape == (2, 32)
    for out_type, shape in [('raw', (2, 16, 32)), ('avg_featmap', (2, 32)),
                            ('featmap', (2, 32, 4, 4))]:
        model.out_type = out_type
        assert model(x)[-1].shape == shape
    # The class token sits last in Adventurer and first in ViT.
    model.out_type = 'raw'
    x_tokens, _ = model.embed(x)
    cls_index = -1 if family == 'adventurer' else 0
    torch.testing.assert_close(
        x_tokens[:, cls_index] - model.pos_embed[:, cls_index],
        model.cls_token[:, 0].expand(2, -1))


@pytest.mark.parametrize('family', ['vit', 'adventurer'])
def test_runtime_input_size_interpolates_pos_embed(family):
    model = build(family, img_size=16, patch_size=4, out_type='featmap')
    assert model(torch.randn(1, 3, 24, 32))[-1].shape == (1, 32, 6, 8)


@pytest.mark.parametrize('family', ['vit', 'adventurer'])
def test_with_cp_matches_plain(family):
    torch.manual_seed(0)
    model = build(
        family, img_size=16, patch_size=2, out_type='featmap',
        drop_path_rate=0.)
    model.train()
    x = torch.randn(2, 3, 16, 16)
    # A fixed linear read-out: the mean square of a final-normed map is
    # constant up to the norm's eps, and its gradients would be noise below
    # assert_close's absolute tolerance.
    readout = torch.randn(2, model.embed_dims, 8, 8)

    def run(with_cp):
        model.zero_grad()
        model.with_cp = with_cp
        inp = x.clone().requires_grad_()
        out = model(inp)[-1]
        (out * readout).sum().backward()
        return out.detach(), inp.grad, [
            p.grad.clone() for p in model.parameters()
        ]

    out_a, gx_a, grads_a = run(False)
    out_b, gx_b, grads_b = run(True)
    torch.testing.assert_close(out_b, out_a)
    torch.testing.assert_close(gx_b, gx_a)
    for ga, gb in zip(grads_a, grads_b):
        torch.testing.assert_close(gb, ga)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match='not divisible by patch size'):
        PatchViT(arch='t', img_size=30, patch_size=4)
    with pytest.raises(ValueError, match=r'patch_size must be >= 1'):
        Adventurer(arch='t', img_size=32, patch_size=0)
    with pytest.raises(ValueError, match=r"unknown Adventurer arch 'xl'.*"
                       r'valid archs: b, base, h, huge, l, large'):
        Adventurer(arch='xl')
    with pytest.raises(ValueError, match='unknown PatchViT arch'):
        PatchViT(arch='giant')
    with pytest.raises(ValueError, match='lacks keys'):
        PatchViT(arch=dict(embed_dims=8))
    with pytest.raises(ValueError, match='unknown out_type'):
        PatchViT(arch='t', out_type='tokens')
    with pytest.raises(ValueError, match='out_indices entry 12'):
        PatchViT(arch='t', out_indices=12)
    with pytest.raises(ValueError, match='unknown flip_rule'):
        build('adventurer', flip_rule='every')
    model = build('vit', img_size=16, patch_size=4)
    with pytest.raises(ValueError, match='input size 18x16 is not divisible'):
        model(torch.randn(1, 3, 18, 16))


def test_flip_rules():
    paper = [i for i in range(12) if is_flipped(i, 'paper')]
    # The authors' models_mamba.py: layer(x, flip=(n // 2 == 1)).
    released = [n for n in range(12) if n // 2 == 1]
    assert [i for i in range(12) if is_flipped(i, 'released')] == released == [2, 3]
    assert paper == [2, 3, 6, 7, 10, 11]
    # Eight layers: the rules differ in layers 6 and 7, and so do the features.
    arch = dict(embed_dims=32, num_layers=8, mlp_dims=48)
    x = torch.randn(1, 3, 16, 16)
    features = {}
    for rule in ('released', 'paper'):
        torch.manual_seed(0)
        model = Adventurer(arch=arch, mixer_cfg=TINY_MIXER, img_size=16,
                           patch_size=4, flip_rule=rule).eval()
        assert [i for i, layer in enumerate(model.layers) if layer.flip] == \
            [i for i in range(8) if i in (released if rule == 'released' else paper)]
        with torch.no_grad():
            features[rule] = model(x)[-1]
    assert (features['released'] - features['paper']).abs().max() > 1e-3


def test_drop_path_grows_linearly():
    model = Adventurer(
        arch=TINY_ADV, mixer_cfg=TINY_MIXER, img_size=16, patch_size=4,
        drop_path_rate=0.3)
    rates = [layer.drop_path.drop_prob for layer in model.layers]
    assert rates == pytest.approx([0.0, 0.1, 0.2, 0.3])


@pytest.mark.parametrize('depth', [4, 12, 24])
def test_drop_path_released_schedule(depth):
    # The authors' models_mamba.py: dpr = [0.0] + [x.item() for x in
    # torch.linspace(0, drop_path_rate, depth)], layer i takes dpr[i].
    dpr = [0.0] + [x.item() for x in torch.linspace(0, 0.4, depth)]
    arch = dict(TINY_ADV, num_layers=depth)
    model = Adventurer(arch=arch, mixer_cfg=TINY_MIXER, img_size=16, patch_size=4,
                       drop_path_rate=0.4, drop_path_schedule='released')
    rates = [layer.drop_path.drop_prob for layer in model.layers]
    assert rates == pytest.approx(dpr[:depth])
    with pytest.raises(ValueError, match='unknown drop_path_schedule'):
        Adventurer(arch=arch, img_size=16, patch_size=4, drop_path_schedule='cosine')


def test_layer_depth_for_lr_decay():
    model = build('vit', img_size=16, patch_size=4)
    assert model.get_layer_depth('backbone.pos_embed', 'backbone.') == (0, 4)
    assert model.get_layer_depth('backbone.layers.1.attn.qkv.weight',
                                 'backbone.') == (2, 4)
    assert model.get_layer_depth('head.fc.weight', 'backbone.') == (3, 4)
