"""Analytic training memory: the bytes autograd keeps for backward per
image, plus weights, gradients and optimizer state.

Activations follow the code block by block, so memory grows linearly in the
token count as in the paper's Table 6. Attention never stores the N x N
matrix (memory-efficient kernels save q, k, v, the output and the
log-sum-exp). Each block is one closed form per implementation, in bytes,
checked against autograd's saved tensors in ``tests/test_cost_model.py``.

Precisions: ``'fp32'`` everything in fp32; ``'amp'`` fp16/bf16 autocast, as
DeiT trains (``torch.cuda.amp``): matmul inputs and outputs are 2 bytes, the
residual stream, norm inputs/statistics and the scan's internals stay fp32,
and autocast's extra casts are counted where they are saved.

Adventurer's scan has implementations that save different tensors
(``scan``): this repository's compiled kernel (``'kernel'``: its inputs and
one state per chunk), the chunked PyTorch form (``'torch'``: also its
per-chunk decay matrices), mamba-ssm's ``mamba_chunk_scan_combined``
(``'mamba_ssm'``: its inputs, output and ``dA_cumsum``), this repository's
Triton scan (``'triton'``: as ``'kernel'``, plus the final state) and the fused CPU
blocks (``'fused_cpu'``: between its projections the mixer keeps only the
projection output, the scan output and the chunk states).
"""
import math
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple, Union

from patchscale_mm.models.zoo import resolve_family
from .shapes import count_backbone_params, model_dims, num_patches

PRECISIONS = ('fp32', 'amp')
MEMORY_SCANS = ('kernel', 'fused_cpu', 'torch', 'triton', 'mamba_ssm')
MIB = 2**20
# fp32 weights, gradients and AdamW's two moments.
STATE_BYTES_PER_PARAM = 16
# Sequence-parallel sizes the memory advice considers.
SEQUENCE_PARALLEL_SIZES = (1, 2, 4, 8, 16, 32, 64)


@dataclass(frozen=True)
class ElementBytes:
    """Bytes per element of each kind of saved tensor under a precision."""
    act: int  # matmul inputs/outputs: the autocast dtype under amp
    fp32: int = 4  # residual stream, norm statistics, scan internals
    amp_fp32: int = 0  # an fp32 copy that only autocast makes (.float())
    amp_act: int = 0  # a second autocast cast of the same activation
    fp32_only: int = 4  # saved in fp32 only; autocast saves a copy instead


def element_bytes(precision: str) -> ElementBytes:
    if precision == 'fp32':
        return ElementBytes(act=4)
    if precision == 'amp':
        return ElementBytes(act=2, amp_fp32=4, amp_act=2, fp32_only=0)
    raise ValueError(f'unknown precision {precision!r}; valid: '
                     f'{", ".join(PRECISIONS)}')


# ---------------------------------------------------------------------------
# One block, per implementation
# ---------------------------------------------------------------------------
def _vit_block(T: int, d: dict, b: ElementBytes) -> int:
    C, M, nh = d['embed_dims'], d['mlp_dims'], d['num_heads']
    # Per token: both LayerNorms' inputs and mean/rstd and attention's
    # log-sum-exp per head in fp32; the qkv input, q/k/v (views of one
    # output), the attention output and the fc1 input (6C), the GELU input
    # and the fc2 input (2M).
    return T * (b.fp32 * (2 * C + 4 + nh) + b.act * (6 * C + 2 * M))


def _adventurer_shell(T: int, d: dict, b: ElementBytes) -> int:
    """What a block keeps around its scan: both RMSNorms, the projections,
    the causal conv, the gate and the SwiGLU."""
    C, M = d['embed_dims'], d['mlp_dims']
    E, g, h, K = d['d_inner'], d['ngroups'], d['nheads'], d['d_conv']
    conv = E + 2 * g * d['d_state']  # x, B, C
    L = T + 1  # heading average + tokens
    # RMSNorm (composite here) keeps its input, rsqrt and the normalised
    # input in fp32; SwiGLU its input (cast twice under amp, once per
    # projection), w1's output, SiLU's output, w2's output and w3's input.
    tokens = T * (b.fp32 * (4 * C + 2) + b.act * (C + 4 * M) + b.amp_act * C)
    # in_proj's input and output (z, xBC, dt) and out_proj's input; the
    # gated RMSNorm runs in fp32: z, silu(z), y * silu(z), rstd per group
    # and the normalised product.
    mixer = L * (b.act * (C + E + conv + h + E) + b.amp_fp32 * E +
                 b.fp32 * (3 * E + g))
    # The causal conv pads both sides; its L + K - 1 outputs feed the SiLU.
    return tokens + mixer + b.act * (L + K - 1) * conv


def _kernel_scan(L: int, d: dict, b: ElementBytes) -> int:
    """This repository's compiled scan: its inputs (x, B, C are views of the
    conv output; dt of the in_proj output), the state entering each chunk
    (h, n, p) and the output, fp32 under amp too."""
    E, h, p, n, g = (d['d_inner'], d['nheads'], d['headdim'], d['d_state'],
                     d['ngroups'])
    chunks = math.ceil(L / d['chunk_size'])
    return b.act * L * (E + 2 * g * n) + b.fp32 * (chunks * h * n * p + L * E)


def _triton_scan(L: int, d: dict, b: ElementBytes) -> int:
    """:mod:`patchscale_mm.ops.ssd_triton`: what the compiled kernel keeps,
    and the final state, which its backward reads as the last chunk's end."""
    return _kernel_scan(L, d, b) + b.fp32 * d['nheads'] * d['headdim'] * d['d_state']


def _mamba_ssm_scan(L: int, d: dict, b: ElementBytes) -> int:
    """mamba-ssm's ``mamba_chunk_scan_combined``: its inputs, its output
    (cast to fp32 by the gate under amp) and ``dA_cumsum``; the chunk
    matrices are recomputed."""
    E, h, n, g = d['d_inner'], d['nheads'], d['d_state'], d['ngroups']
    padded = math.ceil(L / d['chunk_size']) * d['chunk_size']
    return (b.act * L * (E + 2 * g * n) + b.fp32 * padded * h +
            (b.act + b.amp_fp32) * L * E)


def _torch_scan(L: int, d: dict, b: ElementBytes) -> int:
    """:func:`patchscale_mm.ops.ssd_scan_chunked`, einsum operand copies
    included. Its saved tensors depend on the chunking (padding, one chunk
    or several), so they stay listed one by one."""
    E, h, p, n, g = (d['d_inner'], d['nheads'], d['headdim'], d['d_state'],
                     d['ngroups'])
    s = max(1, min(d['chunk_size'], L))
    c = math.ceil(L / s)
    Lp = c * s
    padded = Lp != L
    total = (
        # softplus input, dt, exp(dA cumsum), decay to chunk end, chunk
        # decay, the (s x s) decay matrices and the output: fp32.
        b.fp32 * (L * h + 3 * Lp * h + c * h + Lp * h * s + L * E) +
        # C B^T, its decayed form, x*dt permuted, the incoming states and
        # their read-out.
        b.act * (Lp * g * s + Lp * h * s + 2 * Lp * h * p + c * h * p * n) +
        # Padding makes fp32 copies of x, B and C; without it x is a view of
        # the conv output in fp32 and an autocast copy under amp, and a
        # single unpadded chunk lets the einsums read B and C in place.
        (b.fp32 if padded else b.amp_fp32) * Lp * h * p +
        (b.act if padded or c > 1 else b.amp_act) * 2 * Lp * g * n +
        # The skip term's x; the conv output after SiLU, a view in fp32.
        b.amp_fp32 * L * E + b.fp32_only * L * (E + 2 * g * n))
    if c > 1:
        # With one chunk the chunk states only feed the final state, which
        # is not returned, so autograd frees that branch in the forward
        # pass. Otherwise: C and B permuted, x*dt decayed, x*dt in fp32 and
        # each state entering a chunk but the first (zeros) and the last.
        total += (b.act * (2 * Lp * g * n + Lp * h * p) + b.fp32 *
                  (Lp * h * p + (c - 1) * h * p * n))
    return total


_SCAN_MEMORY = {
    'kernel': _kernel_scan,
    'torch': _torch_scan,
    'triton': _triton_scan,
    'mamba_ssm': _mamba_ssm_scan
}


def _fused_cpu_adventurer_block(T: int, d: dict, b: ElementBytes) -> int:
    """A block on the fused CPU path (``patchscale_mm.ops.fused``): conv,
    SiLU, x/B/C and the gate are recomputed in backward."""
    C, M = d['embed_dims'], d['mlp_dims']
    E, n, g, h, p = (d['d_inner'], d['d_state'], d['ngroups'], d['nheads'],
                     d['headdim'])
    L = T + 1  # heading average + tokens
    chunks = math.ceil(L / d['chunk_size'])
    # Norm inputs and rstd in fp32; SwiGLU's input, w1/w2 outputs (the
    # gate's input) and w3's input.
    tokens = T * (b.fp32 * (2 * C + 2) + b.act * (C + 3 * M))
    # in_proj's input and output (z, xBC, dt), out_proj's input, the scan
    # output and chunk states in fp32.
    mixer = L * (b.act * (C + 3 * E + 2 * g * n + h) + b.fp32 * E)
    return tokens + mixer + b.fp32 * chunks * h * n * p


def block_bytes(family: str, T: int, d: dict, scan: str,
                b: ElementBytes) -> int:
    """Bytes one block keeps for backward over ``T`` tokens."""
    if family == 'deit':
        return _vit_block(T, d, b)
    if scan == 'fused_cpu':
        return _fused_cpu_adventurer_block(T, d, b)
    if scan not in _SCAN_MEMORY:
        raise ValueError(f'unknown scan implementation {scan!r}; valid: '
                         f'{", ".join(MEMORY_SCANS)}')
    return _adventurer_shell(T, d, b) + _SCAN_MEMORY[scan](T + 1, d, b)


def _activations(family, arch, img_size, patch_size, precision, scan,
                 mixer_cfg, in_channels) -> Tuple[int, int, dict]:
    """(bytes of one block, bytes outside the blocks, dims)."""
    family = resolve_family(family)
    b = element_bytes(precision)
    d = model_dims(family, arch, mixer_cfg)
    T = num_patches(img_size, patch_size) + 1
    C = d['embed_dims']
    # The input image, and the final norm: LayerNorm's input and mean/rstd,
    # or RMSNorm's input, rsqrt and normalised input.
    final = (b.fp32 * T * (C + 2) if family == 'deit' else
             b.fp32 * T * (2 * C + 1))
    outside = b.act * in_channels * img_size**2 + final
    return block_bytes(family, T, d, scan, b), outside, d


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
            the fused CPU blocks), ``'torch'`` (the chunked PyTorch form),
            ``'triton'`` or ``'mamba_ssm'``. Defaults to ``'kernel'``.
        mixer_cfg (dict, optional): Mamba-2 mixer overrides (Adventurer).
        in_channels (int): Image channels. Defaults to 3.
    """
    block, outside, d = _activations(family, arch, img_size, patch_size,
                                     precision, scan, mixer_cfg, in_channels)
    return d['num_layers'] * block + outside


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
    block, outside, d = _activations(family, arch, img_size, patch_size,
                                     precision, scan, mixer_cfg, 3)
    depth = d['num_layers']
    if not with_cp:
        return depth * block + outside
    tokens = num_patches(img_size, patch_size) + 1
    return outside + block + depth * tokens * d['embed_dims'] * 4


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
    if resolve_family(family) == 'deit':
        d = model_dims(family, arch, mixer_cfg)
        tokens = num_patches(img_size, patch_size) + 1
        per_rank += 4 * tokens * d['embed_dims'] * element_bytes(
            precision).act
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
    params = count_backbone_params(family, arch, img_size, patch_size,
                                   mixer_cfg)
    return (batch * training_activation_bytes(
        family, arch, img_size, patch_size, precision, scan, with_cp,
        mixer_cfg) + STATE_BYTES_PER_PARAM * params)


# ---------------------------------------------------------------------------
# A training run's estimate and what would make it fit
# ---------------------------------------------------------------------------
@dataclass
class MemoryEstimate:
    """Peak training memory of one process under the settings a run could
    change: precision, activation checkpointing, batch and
    sequence-parallel size."""
    label: str  # the backbone, for messages
    input_size: Tuple[int, int]
    tokens: int
    batch: int
    precision: str
    with_cp: bool
    # (precision, with_cp, sequence-parallel size) -> bytes per image and rank
    per_image: Dict[Tuple[str, bool, int], int]
    state_bytes: int
    sequence_parallel: int = 1

    def total(self,
              batch: Optional[int] = None,
              precision: Optional[str] = None,
              with_cp: Optional[bool] = None,
              sequence_parallel: Optional[int] = None) -> int:
        key = (precision or self.precision,
               self.with_cp if with_cp is None else with_cp,
               sequence_parallel or self.sequence_parallel)
        batch = self.batch if batch is None else batch
        return batch * self.per_image[key] + self.state_bytes

    def largest_batch(self, available: int) -> int:
        return max(0, (available - self.state_bytes) // self.image_bytes())

    def image_bytes(self) -> int:
        """Activations per image under the run's own settings."""
        return self.per_image[(self.precision, self.with_cp,
                               self.sequence_parallel)]

    def fitting_split(self, available: int) -> Optional[int]:
        """The smallest larger sequence-parallel size that fits."""
        return next((size for size in SEQUENCE_PARALLEL_SIZES
                     if size > self.sequence_parallel and
                     self.total(sequence_parallel=size) <= available), None)


def estimate_memory(family: str,
                    arch: Union[str, dict],
                    input_size: Tuple[int, int],
                    patch_size: Tuple[int, int],
                    batch: int,
                    precision: str,
                    with_cp: bool,
                    scan: str,
                    params: int,
                    sequence_parallel: int = 1,
                    mixer_cfg: Optional[dict] = None,
                    label: str = '') -> MemoryEstimate:
    """A :class:`MemoryEstimate` of a run on ``input_size`` images, with
    every precision, checkpointing and sequence-parallel alternative
    precomputed; ``params`` counts the backbone's parameters."""
    h, w = input_size
    ph, pw = patch_size
    tokens = math.ceil(h / ph) * math.ceil(w / pw)
    # The formulas take square images: the square with as many tokens.
    side = ph * math.ceil(math.sqrt(tokens))
    sizes: Sequence[int] = SEQUENCE_PARALLEL_SIZES + (sequence_parallel, )
    per_image = {(p, cp, size): sequence_parallel_activation_bytes(
        family, arch, side, ph, size, p, scan, cp, mixer_cfg)
                 for p in PRECISIONS for cp in (False, True) for size in sizes}
    return MemoryEstimate(label, (h, w), tokens, batch, precision, with_cp,
                          per_image, STATE_BYTES_PER_PARAM * params,
                          sequence_parallel)

