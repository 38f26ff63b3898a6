"""Adventurer's token mixing against independent, token-by-token versions."""
import torch
import torch.nn.functional as F

from patchscale_mm.models import Adventurer
from patchscale_mm.models.layers import Mamba2Mixer


def naive_mamba2(mixer: Mamba2Mixer, u: torch.Tensor) -> torch.Tensor:
    """Mamba-2 mixer over (B, L, D) with explicit loops over taps and tokens."""
    Bsz, L, _ = u.shape
    h, p, n, g = mixer.nheads, mixer.headdim, mixer.d_state, mixer.ngroups
    d_inner = h * p
    proj = u @ mixer.in_proj.weight.T
    z, xBC, dt = proj[..., :d_inner], proj[..., d_inner:-h], proj[..., -h:]
    # Causal depthwise convolution: output t sees inputs t-k+1 .. t.
    w = mixer.conv1d.weight[:, 0]  # (channels, k)
    k = w.shape[1]
    conv = torch.zeros_like(xBC) + mixer.conv1d.bias
    for t in range(L):
        for j in range(k):
            src = t - (k - 1) + j
            if src >= 0:
                conv[:, t] += w[:, j] * xBC[:, src]
    xBC = F.silu(conv)
    x = xBC[..., :d_inner].reshape(Bsz, L, h, p)
    Bm = xBC[..., d_inner:d_inner + g * n].reshape(Bsz, L, g, n)
    Cm = xBC[..., d_inner + g * n:].reshape(Bsz, L, g, n)
    dt = F.softplus(dt + mixer.dt_bias)
    A = -torch.exp(mixer.A_log)
    y = torch.zeros(Bsz, L, h, p, dtype=u.dtype)
    for b in range(Bsz):
        for head in range(h):
            grp = head // (h // g)
            state = torch.zeros(p, n, dtype=u.dtype)
            for t in range(L):
                state = torch.exp(dt[b, t, head] * A[head]) * state + \
                    dt[b, t, head] * torch.outer(x[b, t, head], Bm[b, t, grp])
                y[b, t, head] = state @ Cm[b, t, grp] + \
                    mixer.D[head] * x[b, t, head]
    y = y.reshape(Bsz, L, d_inner) * F.silu(z)
    y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + mixer.norm.eps)
    return (y * mixer.norm.weight) @ mixer.out_proj.weight.T


def test_mamba2_mixer_matches_token_loop():
    torch.manual_seed(0)
    mixer = Mamba2Mixer(32, d_state=8, headdim=16, chunk_size=4).double()
    u = torch.randn(2, 11, 32, dtype=torch.float64)  # 11: not a chunk multiple
    torch.testing.assert_close(mixer(u), naive_mamba2(mixer, u))


def test_adventurer_wiring_matches_explicit_loop():
    """Class token last, heading average of the normed tokens prepended and
    dropped, patch order reversed in flipped layers, pre-norm residuals."""
    torch.manual_seed(0)
    model = Adventurer(
        arch=dict(embed_dims=32, num_layers=4, mlp_dims=40),
        img_size=8,
        patch_size=2,
        mixer_cfg=dict(headdim=16, d_state=8, chunk_size=8),
        out_type='raw').double().eval()
    img = torch.randn(2, 3, 8, 8, dtype=torch.float64)

    patches = F.conv2d(img, model.patch_embed.projection.weight,
                       model.patch_embed.projection.bias, stride=2)
    tokens = patches.flatten(2).transpose(1, 2)  # (B, 16, C)
    x = torch.cat([tokens, model.cls_token.expand(2, -1, -1)], 1)
    x = x + model.pos_embed
    num_patches = 16
    for i, layer in enumerate(model.layers):
        order = list(range(num_patches + 1))
        if i in (2, 3):  # the paper's rule: flip every two layers
            order = list(reversed(range(num_patches))) + [num_patches]
        normed = layer.norm1(x)
        seq = normed[:, order]
        heading = seq.sum(1, keepdim=True) / seq.shape[1]
        mixed = layer.mixer(torch.cat([heading, seq], 1))[:, 1:]
        restored = torch.empty_like(mixed)
        restored[:, order] = mixed
        x = x + restored
        x = x + layer.mlp(layer.norm2(x))
    x = model.norm(x)
    torch.testing.assert_close(model(img)[-1], x[:, :num_patches])
    model.out_type = 'cls_token'
    torch.testing.assert_close(model(img)[-1], x[:, -1])
