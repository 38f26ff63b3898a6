"""Analytic training cost of PatchViT and Adventurer at any patch size.

Two per-image quantities from closed forms that follow the code module by
module, so that they can be checked against measurements on small models:

* **Forward FLOPs.** A multiply-add is 2 FLOPs. Matmul-class work only:
  linear layers, the patch-embedding and depthwise convolutions, attention's
  ``QK^T`` and ``AV`` (the quadratic term, full N x N, non-causal) and the
  SSD scan; element-wise work (norms, activations, softmax, residual adds)
  is left out, as in the usual ``2 * params * tokens + attention``
  accounting. The scan is counted either as the chunked SSD algorithm of
  Mamba-2 (``'chunked'``: exactly the einsums of
  :func:`patchscale_mm.ops.ssd_scan_chunked`, the work mamba-ssm's kernel
  does too) or as the exact recurrence this repository's compiled kernel
  runs (``'recurrence'``: ``4 * headdim * d_state`` FLOPs per token and
  head, one multiply-add for the state update and one for the read-out).
  Training is 3x forward (backward = 2x forward).
* **Activation memory.** The bytes autograd keeps for backward, per image:
  the tensors each module saves, item by item, so memory grows linearly in
  the token count as in the paper's Table 6. Attention never stores the
  N x N matrix (memory-efficient kernels save q, k, v, the output and the
  log-sum-exp). Weights, optimizer state and workspace are excluded, as in
  the paper.

Precisions: ``'fp32'`` everything in fp32; ``'amp'`` fp16/bf16 autocast, as
DeiT trains (``torch.cuda.amp``): matmul inputs and outputs are 2 bytes,
the residual stream, norm inputs/statistics and the scan's internals stay
fp32, and autocast's extra casts are counted where they are saved.

Adventurer's scan has three implementations that save different tensors:
this repository's compiled kernel (``scan='kernel'``, what
:func:`patchscale_mm.ops.ssd_scan` picks on CPU and CUDA when built; its
inputs and one state per chunk), the chunked PyTorch form
(``scan='torch'``; also its per-chunk decay matrices) and mamba-ssm's
``mamba_chunk_scan_combined`` (``scan='mamba_ssm'``; its inputs, output and
``dA_cumsum``). On CPU with the compiled kernels, whole blocks run fused
(``scan='fused_cpu'``, what :func:`active_scan` reports there): the mixer
between its projections keeps only the projection output, the scan output
and the chunk states, and the norms and SwiGLU keep their inputs.
"""
import contextlib
import inspect
import math
import time
import warnings
import weakref
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

from patchscale_mm.models.backbones import Adventurer, PatchViT
from patchscale_mm.models.backbones.base import resolve_arch
from patchscale_mm.models.layers import Mamba2Mixer

FAMILIES = {'deit': PatchViT, 'adventurer': Adventurer}
FAMILY_ALIASES = {
    'deit': 'deit', 'vit': 'deit', 'patchvit': 'deit',
    'adventurer': 'adventurer', 'adv': 'adventurer'
}
ARCHS = ('t', 's', 'b', 'l', 'h')
PRECISIONS = ('fp32', 'amp')
MEMORY_SCANS = ('kernel', 'fused_cpu', 'torch', 'mamba_ssm')
FLOP_SCANS = ('chunked', 'recurrence')
# The FLOP convention of the work each scan implementation does.
SCAN_FLOP_CONVENTION = {
    'kernel': 'recurrence',
    'fused_cpu': 'recurrence',
    'torch': 'chunked',
    'mamba_ssm': 'chunked'
}
MIB = 2**20

# Paper Table 6 (DeiT-B / Adventurer-B, 224 px): patch -> per-image training
# memory of DeiT-B in MB (fp16 with FlashAttention) and A100 GPU-hours per
# ImageNet epoch of both models.
PAPER_TABLE6 = {
    16: dict(tokens=196, deit_memory_mb=62, deit_hours=0.36, adv_hours=0.45),
    8: dict(tokens=784, deit_memory_mb=252, deit_hours=1.86, adv_hours=1.76),
    4: dict(tokens=3136, deit_memory_mb=1024, deit_hours=9.79,
            adv_hours=6.86),
    2: dict(tokens=12544, deit_memory_mb=4057, deit_hours=80.06,
            adv_hours=27.45),
    1: dict(tokens=50176, deit_memory_mb=16118, deit_hours=967.99,
            adv_hours=115.08),
}

# Bytes per element of each kind of saved tensor, as (fp32, amp).
_KIND_BYTES = {
    'act': (4, 2),  # matmul input/output: the autocast dtype under amp
    'fp32': (4, 4),  # residual stream, norm statistics, scan internals
    'amp_fp32': (0, 4),  # an fp32 copy that only autocast makes (.float())
    'amp_act': (0, 2),  # a second autocast cast of the same activation
    'fp32_only': (4, 0),  # saved in fp32 only; autocast saves a copy instead
}


# ---------------------------------------------------------------------------
# Architectures
# ---------------------------------------------------------------------------
def resolve_family(family: str) -> str:
    """``'vit'``/``'PatchViT'``/``'deit'`` -> ``'deit'``; likewise for
    Adventurer."""
    key = family.lower()
    if key not in FAMILY_ALIASES:
        raise ValueError(f'unknown model family {family!r}; valid: '
                         f'{", ".join(sorted(FAMILY_ALIASES))}')
    return FAMILY_ALIASES[key]


def parse_model_name(name: str) -> Tuple[str, str]:
    """``'deit-b'`` -> ``('deit', 'b')``; ``'adventurer-base'`` ->
    ``('adventurer', 'base')``."""
    family, sep, arch = name.rpartition('-')
    if not sep or not family:
        raise ValueError(f'model name {name!r} is not <family>-<arch>, '
                         "e.g. 'deit-b' or 'adventurer-t'")
    return resolve_family(family), arch


def model_dims(family: str,
               arch: Union[str, dict],
               mixer_cfg: Optional[dict] = None) -> dict:
    """Widths and depth of a backbone, from its ``arch_zoo`` (plus the
    Mamba-2 mixer defaults for Adventurer, overridden by ``mixer_cfg``)."""
    family = resolve_family(family)
    cls = FAMILIES[family]
    dims = resolve_arch(arch, cls.arch_zoo, cls.family)
    if family == 'adventurer':
        defaults = {
            k: v.default
            for k, v in inspect.signature(Mamba2Mixer).parameters.items()
            if v.default is not inspect.Parameter.empty
        }
        mixer = {**defaults, **(mixer_cfg or {})}
        inner = mixer['expand'] * dims['embed_dims']
        dims.update(
            d_inner=inner,
            d_state=mixer['d_state'],
            d_conv=mixer['d_conv'],
            headdim=mixer['headdim'],
            nheads=inner // mixer['headdim'],
            ngroups=mixer['ngroups'],
            chunk_size=mixer['chunk_size'])
    return dims


def num_patches(img_size: int, patch_size: int) -> int:
    """Patch tokens of a square image; one clear error if p does not divide
    it."""
    if patch_size < 1 or img_size % patch_size:
        raise ValueError(f'patch size {patch_size} does not divide image '
                         f'size {img_size}')
    return (img_size // patch_size)**2


def build_backbone(family: str,
                   arch: Union[str, dict],
                   img_size: int,
                   patch_size: int,
                   mixer_cfg: Optional[dict] = None,
                   **kwargs) -> torch.nn.Module:
    """The backbone instance a cost estimate refers to."""
    family = resolve_family(family)
    if family == 'adventurer' and mixer_cfg:
        kwargs['mixer_cfg'] = mixer_cfg
    return FAMILIES[family](
        arch=arch, img_size=img_size, patch_size=patch_size, **kwargs)


def count_params(family: str, arch: str, img_size: int, patch_size: int,
                 num_classes: int = 1000) -> int:
    """Backbone parameters plus a ``Linear(embed_dims, num_classes)`` head.

    Built on the meta device, so even Huge at pixel tokens costs no memory.
    """
    with torch.device('meta'):
        backbone = build_backbone(family, arch, img_size, patch_size)
    head = backbone.embed_dims * num_classes + num_classes if num_classes else 0
    return sum(p.numel() for p in backbone.parameters()) + head


# ---------------------------------------------------------------------------
# FLOPs
# ---------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------
# Activation memory
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Saved:
    """A tensor autograd keeps for backward: elements per image and kind
    (which sets its bytes per element under each precision)."""
    name: str
    numel: int
    kind: str = 'act'

    def nbytes(self, precision: str) -> int:
        return self.numel * _KIND_BYTES[self.kind][PRECISIONS.index(
            precision)]


def _vit_block(T: int, d: dict) -> List[Saved]:
    C, M, nh = d['embed_dims'], d['mlp_dims'], d['num_heads']
    return [
        Saved('ln1.in', T * C, 'fp32'),
        Saved('ln1.mean_rstd', 2 * T, 'fp32'),
        Saved('attn.qkv.in', T * C),
        Saved('attn.q_k_v', 3 * T * C),  # views of the qkv output
        Saved('attn.lse', nh * T, 'fp32'),
        Saved('attn.out', T * C),  # also the proj input (same storage)
        Saved('ln2.in', T * C, 'fp32'),
        Saved('ln2.mean_rstd', 2 * T, 'fp32'),
        Saved('mlp.fc1.in', T * C),
        Saved('mlp.gelu.in', T * M),
        Saved('mlp.fc2.in', T * M),
    ]


def _rms_norm(prefix: str, T: int, C: int) -> List[Saved]:
    # nn.RMSNorm is composite here: input, rsqrt and the normalised input
    # (for the weight gradient) are saved, all fp32 on the residual stream.
    return [
        Saved(f'{prefix}.in', T * C, 'fp32'),
        Saved(f'{prefix}.rstd', T, 'fp32'),
        Saved(f'{prefix}.normed', T * C, 'fp32'),
    ]


def _torch_scan(L: int, d: dict) -> List[Saved]:
    """What :func:`ssd_scan_chunked` keeps for backward, einsum operand
    copies included (measured against autograd's saved tensors)."""
    E, h, p, n, g = (d['d_inner'], d['nheads'], d['headdim'], d['d_state'],
                     d['ngroups'])
    s = max(1, min(d['chunk_size'], L))
    c = math.ceil(L / s)
    Lp = c * s
    padded = Lp != L
    saved = [
        Saved('scan.softplus.in', L * h, 'fp32'),
        Saved('scan.dt', Lp * h, 'fp32'),
        # Padding makes fp32 copies of x, B and C; without it x is a view of
        # the conv output in fp32 and an autocast copy under amp.
        Saved('scan.x', Lp * h * p, 'fp32' if padded else 'amp_fp32'),
        # A single unpadded chunk lets the einsums read B and C in place.
        Saved('scan.B_C', 2 * Lp * g * n,
              'act' if padded or c > 1 else 'amp_act'),
        Saved('scan.decay', Lp * h * s, 'fp32'),
        Saved('scan.CB', Lp * g * s),
        Saved('scan.CB_decay', Lp * h * s),
        Saved('scan.xdt.permuted', Lp * h * p),
        Saved('scan.prev_states', c * h * p * n),
        Saved('scan.exp_dA_cs', Lp * h, 'fp32'),
        Saved('scan.decay_to_end', Lp * h, 'fp32'),
        Saved('scan.chunk_decay', c * h, 'fp32'),
        Saved('scan.y_state', Lp * h * p),
        Saved('scan.skip.x', L * E, 'amp_fp32'),
        # The conv output after SiLU (x, B, C): the skip holds a view in fp32.
        Saved('mixer.silu.out', L * (E + 2 * g * n), 'fp32_only'),
        Saved('scan.out', L * E, 'fp32'),
    ]
    if c > 1:
        # With one chunk the chunk states only feed the final state, which
        # is not returned, so autograd frees that branch in the forward pass.
        saved += [
            Saved('scan.C.permuted', Lp * g * n),
            Saved('scan.xdt', Lp * h * p, 'fp32'),
            Saved('scan.B.permuted', Lp * g * n),
            Saved('scan.xdt_decayed', Lp * h * p),
            # Each state entering a chunk but the first (zeros) and the last.
            Saved('scan.states', (c - 1) * h * p * n, 'fp32'),
        ]
    return saved


def _kernel_scan(L: int, d: dict) -> List[Saved]:
    """What this repository's compiled scan keeps: its inputs (x, B, C are
    views of the conv output; dt of the in_proj output) and the state
    entering each chunk, ``(h, n, p)`` in fp32."""
    E, h, p, n, g = (d['d_inner'], d['nheads'], d['headdim'], d['d_state'],
                     d['ngroups'])
    return [
        Saved('mixer.silu.out', L * (E + 2 * g * n)),  # x, B, C
        Saved('scan.chunk_states',
              math.ceil(L / d['chunk_size']) * h * n * p, 'fp32'),
        Saved('scan.out', L * E, 'fp32'),  # kept by the gate, fp32 under amp
    ]


def _mamba_ssm_scan(L: int, d: dict) -> List[Saved]:
    """What mamba-ssm's ``mamba_chunk_scan_combined`` keeps: its inputs, its
    output and ``dA_cumsum``; the chunk matrices are recomputed."""
    E, h, n, g = d['d_inner'], d['nheads'], d['d_state'], d['ngroups']
    Lp = math.ceil(L / d['chunk_size']) * d['chunk_size']
    return [
        Saved('mixer.silu.out', L * (E + 2 * g * n)),  # x, B, C
        Saved('scan.dA_cumsum', Lp * h, 'fp32'),
        Saved('scan.out', L * E),
        Saved('gate.y_fp32', L * E, 'amp_fp32'),
    ]


_SCAN_MEMORY = {
    'kernel': _kernel_scan,
    'torch': _torch_scan,
    'mamba_ssm': _mamba_ssm_scan
}


def _fused_cpu_adventurer_block(T: int, d: dict) -> List[Saved]:
    """What a block keeps on the fused CPU path (``patchscale_mm.ops.fused``):
    conv, SiLU, x/B/C and the gate are recomputed in backward."""
    C, M = d['embed_dims'], d['mlp_dims']
    E, n, g, h, p = (d['d_inner'], d['d_state'], d['ngroups'], d['nheads'],
                     d['headdim'])
    L = T + 1  # heading average + tokens
    return [
        Saved('norm1.in', T * C, 'fp32'),
        Saved('norm1.rstd', T, 'fp32'),
        Saved('mixer.in_proj.in', L * C),
        Saved('mixer.in_proj.out', L * (2 * E + 2 * g * n + h)),  # z,xBC,dt
        Saved('scan.out', L * E, 'fp32'),
        Saved('scan.chunk_states',
              math.ceil(L / d['chunk_size']) * h * n * p, 'fp32'),
        Saved('mixer.out_proj.in', L * E),
        Saved('norm2.in', T * C, 'fp32'),
        Saved('norm2.rstd', T, 'fp32'),
        Saved('mlp.in', T * C),
        Saved('mlp.w12.out', 2 * T * M),  # the gate's input
        Saved('mlp.w3.in', T * M),
    ]


def _adventurer_block(T: int, d: dict, scan: str) -> List[Saved]:
    if scan == 'fused_cpu':
        return _fused_cpu_adventurer_block(T, d)
    C, M = d['embed_dims'], d['mlp_dims']
    E, n, g, h, K = (d['d_inner'], d['d_state'], d['ngroups'], d['nheads'],
                     d['d_conv'])
    L = T + 1  # heading average + tokens
    conv_dims = E + 2 * g * n
    if scan not in _SCAN_MEMORY:  # fused_cpu handled above
        raise ValueError(f'unknown scan implementation {scan!r}; valid: '
                         f'{", ".join(MEMORY_SCANS)}')
    scan_saved = _SCAN_MEMORY[scan](L, d)
    return _rms_norm('norm1', T, C) + [
        Saved('mixer.in_proj.in', L * C),
        Saved('mixer.in_proj.out', L * (E + conv_dims + h)),  # z, xBC, dt
        Saved('mixer.conv1d.out', (L + K - 1) * conv_dims),  # SiLU input
    ] + scan_saved + [
        # GatedRMSNorm(y, z) runs in fp32: y * silu(z), then RMS-normalise.
        Saved('gate.z_fp32', L * E, 'amp_fp32'),
        Saved('gate.silu_z', L * E, 'fp32'),
        Saved('gate.prod', L * E, 'fp32'),
        Saved('gate.rstd', L * g, 'fp32'),
        Saved('gate.normed', L * E, 'fp32'),
        Saved('mixer.out_proj.in', L * E),
    ] + _rms_norm('norm2', T, C) + [
        Saved('mlp.in', T * C),
        Saved('mlp.in.second_cast', T * C, 'amp_act'),  # w1 and w2 each cast
        Saved('mlp.w1.out', T * M),  # SiLU input
        Saved('mlp.silu.out', T * M),
        Saved('mlp.w2.out', T * M),
        Saved('mlp.w3.in', T * M),
    ]


def saved_activations(family: str,
                      arch: Union[str, dict],
                      img_size: int,
                      patch_size: int,
                      scan: str = 'kernel',
                      mixer_cfg: Optional[dict] = None,
                      in_channels: int = 3) -> List[Saved]:
    """Every tensor a training step saves for backward, per image.

    Block entries are summed over depth. Arguments as
    :func:`activation_bytes`.
    """
    family = resolve_family(family)
    d = model_dims(family, arch, mixer_cfg)
    T = num_patches(img_size, patch_size) + 1
    if family == 'deit':
        block = _vit_block(T, d)
        final = [Saved('norm.in', T * d['embed_dims'], 'fp32'),
                 Saved('norm.mean_rstd', 2 * T, 'fp32')]
    else:
        block = _adventurer_block(T, d, scan)
        final = _rms_norm('norm', T, d['embed_dims'])
    depth = d['num_layers']
    return ([Saved('patch_embed.in', in_channels * img_size**2)] + [
        Saved(f'blocks.{s.name}', depth * s.numel, s.kind) for s in block
    ] + final)


def activation_bytes(family: str,
                     arch: Union[str, dict],
                     img_size: int,
                     patch_size: int,
                     precision: str = 'amp',
                     scan: str = 'kernel',
                     mixer_cfg: Optional[dict] = None,
                     in_channels: int = 3) -> int:
    """Per-image activation memory of a training step, in bytes.

    Args:
        family (str): ``'deit'`` (PatchViT) or ``'adventurer'``.
        arch (str | dict): Arch name from the family's ``arch_zoo`` or a dict.
        img_size (int): Square input size.
        patch_size (int): Patch size p.
        precision (str): ``'amp'`` (fp16/bf16 autocast) or ``'fp32'``.
            Defaults to ``'amp'``.
        scan (str): Adventurer's scan implementation: ``'kernel'`` (this
            repository's compiled kernel), ``'fused_cpu'`` (that kernel with
            the fused CPU blocks), ``'torch'`` (the chunked PyTorch form) or
            ``'mamba_ssm'``. Defaults to ``'kernel'``.
        mixer_cfg (dict, optional): Mamba-2 mixer overrides (Adventurer).
        in_channels (int): Image channels. Defaults to 3.
    """
    if precision not in PRECISIONS:
        raise ValueError(f'unknown precision {precision!r}; valid: '
                         f'{", ".join(PRECISIONS)}')
    return sum(
        s.nbytes(precision) for s in saved_activations(
            family, arch, img_size, patch_size, scan, mixer_cfg, in_channels))


# fp32 weights, gradients and AdamW's two moments.
STATE_BYTES_PER_PARAM = 16


def training_activation_bytes(family: str,
                              arch: Union[str, dict],
                              img_size: int,
                              patch_size: int,
                              precision: str = 'amp',
                              scan: str = 'kernel',
                              with_cp: bool = False,
                              mixer_cfg: Optional[dict] = None) -> int:
    """Per-image activations of a training step, with or without activation
    checkpointing (``with_cp``): checkpointed blocks keep only their fp32
    input, and one block's activations are live at a time in backward.
    Other arguments as :func:`activation_bytes`."""
    if precision not in PRECISIONS:
        raise ValueError(f'unknown precision {precision!r}; valid: '
                         f'{", ".join(PRECISIONS)}')
    saved = saved_activations(family, arch, img_size, patch_size, scan,
                              mixer_cfg)
    blocks = sum(s.nbytes(precision) for s in saved
                 if s.name.startswith('blocks.'))
    others = sum(s.nbytes(precision) for s in saved
                 if not s.name.startswith('blocks.'))
    if not with_cp:
        return blocks + others
    d = model_dims(family, arch, mixer_cfg)
    tokens = num_patches(img_size, patch_size) + 1
    return (others + blocks // d['num_layers'] +
            d['num_layers'] * tokens * d['embed_dims'] * 4)


def sequence_parallel_activation_bytes(family: str,
                                       arch: Union[str, dict],
                                       img_size: int,
                                       patch_size: int,
                                       size: int,
                                       precision: str = 'amp',
                                       scan: str = 'kernel',
                                       with_cp: bool = False,
                                       mixer_cfg: Optional[dict] = None) -> int:
    """Per-rank activations of one image whose tokens are split over
    ``size`` ranks (:mod:`patchscale_mm.parallel.sequence`): each rank keeps
    its shard's share of :func:`training_activation_bytes`, plus, for ViT,
    the whole sequence's keys and values and their gradients that one
    block's backward gathers for a moment. Adventurer's exchanged states
    are a few hundred kilobytes, not counted."""
    full = training_activation_bytes(family, arch, img_size, patch_size,
                                     precision, scan, with_cp, mixer_cfg)
    if size == 1:
        return full
    per_rank = -(-full // size)
    if family == 'deit':
        d = model_dims(family, arch, mixer_cfg)
        tokens = num_patches(img_size, patch_size) + 1
        element = _KIND_BYTES['act'][PRECISIONS.index(precision)]
        per_rank += 4 * tokens * d['embed_dims'] * element
    return per_rank


def training_memory_bytes(family: str,
                          arch: Union[str, dict],
                          img_size: int,
                          patch_size: int,
                          batch: int,
                          precision: str = 'amp',
                          scan: str = 'kernel',
                          with_cp: bool = False,
                          mixer_cfg: Optional[dict] = None) -> int:
    """Peak training memory of one process: ``batch`` images' activations
    (:func:`training_activation_bytes`) plus the backbone's weights,
    gradients and AdamW state."""
    with torch.device('meta'):
        params = sum(p.numel() for p in build_backbone(
            family, arch, img_size, patch_size, mixer_cfg).parameters())
    return (batch * training_activation_bytes(
        family, arch, img_size, patch_size, precision, scan, with_cp,
        mixer_cfg) + STATE_BYTES_PER_PARAM * params)


# ---------------------------------------------------------------------------
# Measurements (this machine)
# ---------------------------------------------------------------------------
def active_scan(device: str = 'cpu') -> str:
    """The scan implementation :func:`patchscale_mm.ops.ssd_scan` runs on
    ``device`` now (honouring ``$PATCHSCALE_SCAN_BACKEND``), as a ``scan``
    name of :func:`activation_bytes`."""
    from patchscale_mm.ops import resolve_scan_backend
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # the once-only fallback warning
        backend = resolve_scan_backend(None, torch.empty(0, device=device))
    return {'cpp': 'fused_cpu', 'cuda': 'kernel'}.get(backend, backend)


def _autocast(precision: str, device: str = 'cpu'):
    if precision == 'fp32':
        return contextlib.nullcontext()
    if precision != 'amp':
        raise ValueError(f'unknown precision {precision!r}; valid: '
                         f'{", ".join(PRECISIONS)}')
    # bf16 on CPU: the same 2 bytes per element as the paper's fp16.
    dtype = torch.bfloat16 if device == 'cpu' else torch.float16
    return torch.autocast(device, dtype=dtype)


def saved_tensor_bytes(model: torch.nn.Module,
                       inputs: torch.Tensor,
                       precision: str = 'fp32') -> int:
    """Bytes of the distinct storages autograd still holds for backward at
    the end of one forward pass."""
    saved = []

    def pack(t):
        saved.append(weakref.ref(t))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with _autocast(precision, inputs.device.type):
            out = model(inputs)  # noqa: F841 (keeps the graph alive)
    # Graph branches that do not reach the output (e.g. a scan's final
    # state) are freed during the forward pass; their tensors are not
    # activation memory, and their addresses may be reused, so only tensors
    # still alive now are counted, once per storage.
    storages = {}
    for ref in saved:
        t = ref()
        if t is not None:
            storage = t.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
    storages.pop(0, None)  # empty storages
    return sum(storages.values())


def measure_activation_bytes(model: torch.nn.Module,
                             img_size: int,
                             precision: str = 'fp32',
                             batch_sizes: Sequence[int] = (2, 4)) -> float:
    """Measured per-image activation memory of a training step, in bytes.

    The difference of the saved bytes at two batch sizes: weights, their
    autocast copies and other batch-independent tensors cancel, leaving what
    the paper calls the per-image memory. Batch 1 is avoided: there some
    einsums read their operands in place instead of copying them.
    """
    channels = model.patch_embed.projection.in_channels
    was_training = model.training
    model.train()
    try:
        small, large = (saved_tensor_bytes(
            model, torch.randn(b, channels, img_size, img_size), precision)
                        for b in batch_sizes)
    finally:
        model.train(was_training)
    return (large - small) / (batch_sizes[1] - batch_sizes[0])


def measure_step_time(model: torch.nn.Module,
                      img_size: int,
                      batch_size: int = 1,
                      precision: str = 'fp32',
                      repeats: int = 3) -> float:
    """Median seconds of a forward + backward pass on this machine."""
    model.train()
    channels = model.patch_embed.projection.in_channels
    x = torch.randn(batch_size, channels, img_size, img_size)
    times = []
    for _ in range(repeats + 1):  # the first run warms up allocators
        start = time.perf_counter()
        with _autocast(precision):
            out = model(x)
        sum(o.float().sum() for o in out).backward()
        times.append(time.perf_counter() - start)
    model.zero_grad(set_to_none=True)
    return sorted(times[1:])[len(times[1:]) // 2]


# ---------------------------------------------------------------------------
# Cross-check with mmengine's FLOP counter
# ---------------------------------------------------------------------------
# How the jit trace shows a compiled scan (the autograd Function around this
# repository's kernel, or the op itself), and the work it does. The counter
# cannot look inside; these are counted with the analytic model.
SCAN_OPS = {
    'prim::PythonOp.SSDScanFn': 'recurrence',
    'patchscale_mm::ssd_fwd': 'recurrence',
}


def _shape(value) -> Optional[List[int]]:
    from mmengine.analysis.jit_handles import get_shape
    return get_shape(value)


def sdpa_flop_jit(inputs: list, outputs: list) -> int:
    """mmengine handle for ``aten::scaled_dot_product_attention``.

    Counts MACs (mmengine's unit): ``QK^T`` and ``AV`` over the full
    ``Nq x Nk`` matrix, ``B * heads * Nq * Nk * (d_qk + d_v)``.
    """
    q, k, v = (_shape(x) for x in inputs[:3])
    *batch, nq, dqk = q
    return math.prod(batch) * nq * k[-2] * (dqk + v[-1])


def ssd_scan_flop_jit(scan: str = 'recurrence',
                      chunk_size: int = 256) -> Callable:
    """mmengine handle for a compiled SSD scan whose first inputs follow
    :func:`patchscale_mm.ops.ssd_scan` (``x, dt, A, B, C, ...``); counts MACs
    with :func:`ssd_scan_flops` in the given convention."""

    def handle(inputs: list, outputs: list) -> int:
        b, l, h, p = _shape(inputs[0])
        g, n = _shape(inputs[3])[-2:]
        return b * ssd_scan_flops(l, h, p, n, g, chunk_size, scan) // 2

    return handle


_NORM_OPS = ('aten::layer_norm', 'aten::group_norm', 'aten::batch_norm',
             'aten::instance_norm')


def _zero_flop_jit(inputs: list, outputs: list) -> int:
    return 0


def count_flops_mmengine(model: torch.nn.Module,
                         inputs: torch.Tensor,
                         scan_ops: Optional[Dict[str, str]] = None) -> int:
    """Forward FLOPs (multiply-add = 2) from mmengine's ``FlopAnalyzer``.

    mmengine counts a multiply-add as one "flop", so its total is doubled.
    It has no handle for ``scaled_dot_product_attention`` (it would count
    ViT's attention as zero), so :func:`sdpa_flop_jit` is registered; the
    compiled scan ops of ``scan_ops`` (op name -> FLOP convention, defaults
    to :data:`SCAN_OPS`) get :func:`ssd_scan_flop_jit`. Norm handles are
    removed because the analytic model leaves element-wise work out.
    """
    from mmengine.analysis import FlopAnalyzer
    chunk_sizes = {
        m.chunk_size
        for m in model.modules() if isinstance(m, Mamba2Mixer)
    }
    chunk_size = chunk_sizes.pop() if len(chunk_sizes) == 1 else 256
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            analyzer = FlopAnalyzer(model, inputs)
            analyzer.set_op_handle('aten::scaled_dot_product_attention',
                                   sdpa_flop_jit)
            # A None handle only silences ops without one; to drop mmengine's
            # default norm counts, replace them with zero.
            for op in _NORM_OPS:
                analyzer.set_op_handle(op, _zero_flop_jit)
            for op, scan in (SCAN_OPS if scan_ops is None else
                             scan_ops).items():
                analyzer.set_op_handle(op, ssd_scan_flop_jit(scan, chunk_size))
            analyzer.unsupported_ops_warnings(False)
            analyzer.uncalled_modules_warnings(False)
            macs = analyzer.total()
    finally:
        model.train(was_training)
    return int(2 * macs)
