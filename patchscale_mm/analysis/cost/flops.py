"""Analytic forward and training FLOPs per image.

A multiply-add is 2 FLOPs. Matmul-class work only: linear layers, the
patch-embedding and depthwise convolutions, attention's ``QK^T`` and ``AV``
(the quadratic term, full N x N, non-causal) and the SSD scan; element-wise
work (norms, activations, softmax, residual adds) is left out, as in the
usual ``2 * params * tokens + attention`` accounting. Training is 3x forward
(backward = 2x forward).

The scan is counted either as the chunked SSD algorithm of Mamba-2
(``'chunked'``: exactly the einsums of
:func:`patchscale_mm.ops.ssd_scan_chunked`, the work mamba-ssm's kernel does
too) or as the exact recurrence this repository's compiled kernel runs
(``'recurrence'``: ``4 * headdim * d_state`` FLOPs per token and head, one
multiply-add for the state update and one for the read-out).
"""
import math
from typing import Dict, Optional, Union

from patchscale_mm.models.zoo import resolve_family
from .shapes import model_dims, num_patches

FLOP_SCANS = ('chunked', 'recurrence')
# The FLOP convention of the work each scan implementation does.
SCAN_FLOP_CONVENTION = {
    'kernel': 'recurrence',
    'fused_cpu': 'recurrence',
    'torch': 'chunked',
    'triton': 'chunked',
    'mamba_ssm': 'chunked'
}


def ssd_scan_flops(seqlen: int,
                   nheads: int,
                   headdim: int,
                   d_state: int,
                   ngroups: int = 1,
                   chunk_size: int = 256,
                   scan: str = 'chunked') -> int:
    """Forward FLOPs of one Mamba-2 scan over ``seqlen`` tokens.

    ``'chunked'`` counts the four contractions of the chunked SSD form on
    the padded sequence, as :func:`~patchscale_mm.ops.ssd_scan_chunked`
    runs them (chunk capped at the sequence length, full s x s blocks):
    ``C B^T`` per group, the masked intra-chunk product, the chunk states
    and the read-out of the incoming states. ``'recurrence'`` counts
    ``4 * headdim * d_state`` per token and head.
    """
    if scan == 'recurrence':
        return 4 * seqlen * nheads * headdim * d_state
    if scan != 'chunked':
        raise ValueError(f'unknown scan FLOP convention {scan!r}; valid: '
                         f'{", ".join(FLOP_SCANS)}')
    s = max(1, min(chunk_size, seqlen))
    padded = math.ceil(seqlen / s) * s
    macs = padded * (ngroups * s * d_state + nheads * s * headdim +
                     2 * nheads * headdim * d_state)
    return 2 * macs


def flops_breakdown(family: str,
                    arch: Union[str, dict],
                    img_size: int,
                    patch_size: int,
                    num_classes: int = 1000,
                    scan: str = 'chunked',
                    mixer_cfg: Optional[dict] = None,
                    in_channels: int = 3) -> Dict[str, int]:
    """Per-image forward FLOPs by component (multiply-add = 2 FLOPs).

    Args:
        family (str): ``'deit'`` (PatchViT) or ``'adventurer'``.
        arch (str | dict): Arch name from the family's ``arch_zoo`` or a dict.
        img_size (int): Square input size.
        patch_size (int): Patch size p.
        num_classes (int): Classes of the linear head; 0 for none.
            Defaults to 1000.
        scan (str): Scan convention for Adventurer, ``'chunked'`` or
            ``'recurrence'``. Defaults to ``'chunked'``.
        mixer_cfg (dict, optional): Mamba-2 mixer overrides (Adventurer).
        in_channels (int): Image channels. Defaults to 3.

    Returns:
        dict: Component name -> FLOPs, summed over all blocks.
    """
    family = resolve_family(family)
    d = model_dims(family, arch, mixer_cfg)
    C, depth, M = d['embed_dims'], d['num_layers'], d['mlp_dims']
    N = num_patches(img_size, patch_size)
    T = N + 1  # patch tokens and the class token
    out = {'patch_embed': 2 * N * in_channels * patch_size**2 * C}
    if family == 'deit':
        out.update({
            'attn.qkv': depth * 2 * T * C * 3 * C,
            'attn.qk_av': depth * 2 * 2 * T * T * C,
            'attn.proj': depth * 2 * T * C * C,
            'mlp': depth * 2 * 2 * T * C * M,
        })
    else:
        E, n, g, h, K = (d['d_inner'], d['d_state'], d['ngroups'],
                         d['nheads'], d['d_conv'])
        L = T + 1  # the mixer also sees the heading average
        out.update({
            'mixer.in_proj': depth * 2 * L * C * (2 * E + 2 * g * n + h),
            # The causal conv pads both sides and keeps the first L outputs,
            # but computes L + K - 1.
            'mixer.conv1d': depth * 2 * (L + K - 1) * (E + 2 * g * n) * K,
            'mixer.scan': depth * ssd_scan_flops(L, h, d['headdim'], n, g,
                                                 d['chunk_size'], scan),
            'mixer.out_proj': depth * 2 * L * E * C,
            'mlp': depth * 2 * 3 * T * C * M,
        })
    out['head'] = 2 * C * num_classes
    return out


def forward_flops(*args, **kwargs) -> int:
    """Per-image forward FLOPs; arguments as :func:`flops_breakdown`."""
    return sum(flops_breakdown(*args, **kwargs).values())


def training_flops(*args, **kwargs) -> int:
    """Per-image training FLOPs, 3x forward (backward costs two forwards)."""
    return 3 * forward_flops(*args, **kwargs)
