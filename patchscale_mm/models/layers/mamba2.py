"""The Mamba-2 token mixer used by Adventurer.

Projections, a causal depthwise convolution, the selective scan (SSD) and a
gated RMSNorm, with the defaults of mamba_ssm's ``Mamba2`` that Adventurer
uses: d_state 64, expand 2, d_conv 4, headdim 64, one group, chunk 256, no
linear bias, conv bias, the norm applied after the gate. Everything between
the two projections is :func:`patchscale_mm.ops.mamba2_conv_scan_norm`, which
picks a fused kernel or composable PyTorch, so that kernels can change without
touching the model.
"""
import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from patchscale_mm.ops import (compute_dtype, mamba2_conv_scan, mamba2_conv_scan_norm,
                               mamba2_decay_rates)
from patchscale_mm.parallel import sequence as sequence_parallel
from .norm import GatedRMSNorm


class Mamba2Mixer(nn.Module):
    """Mamba-2 mixer over (B, L, D) tokens, uni-directional (causal).

    Args:
        embed_dims (int): Model width D.
        d_state (int): SSM state size N. Defaults to 64.
        d_conv (int): Causal convolution width. Defaults to 4.
        expand (int): Inner width is ``expand * D``. Defaults to 2.
        headdim (int): Channels per SSM head P. Defaults to 64.
        ngroups (int): Groups sharing B and C. Defaults to 1.
        chunk_size (int): Chunk length of the scan. Defaults to 256.
        dt_min (float), dt_max (float), dt_init_floor (float): Range of the
            initial step sizes. Defaults to 1e-3, 0.1, 1e-4.
        A_init_range (tuple): Range of the initial decay rates.
            Defaults to (1, 16).
        bias (bool): Bias of the in/out projections. Defaults to False.
        conv_bias (bool): Bias of the convolution. Defaults to True.
        fused (bool): Run everything between the two projections as one
            fused CPU kernel where it applies (CPU float32/bfloat16, not
            traced); False keeps the composable PyTorch ops, which are the
            reference. Defaults to True.
    """

    def __init__(self,
                 embed_dims: int,
                 d_state: int = 64,
                 d_conv: int = 4,
                 expand: int = 2,
                 headdim: int = 64,
                 ngroups: int = 1,
                 chunk_size: int = 256,
                 dt_min: float = 1e-3,
                 dt_max: float = 0.1,
                 dt_init_floor: float = 1e-4,
                 A_init_range: tuple = (1, 16),
                 bias: bool = False,
                 conv_bias: bool = True,
                 fused: bool = True):
        super().__init__()
        self.d_inner = expand * embed_dims
        if self.d_inner % headdim:
            raise ValueError(f'inner width {self.d_inner} is not divisible '
                             f'by headdim {headdim}')
        self.d_state, self.headdim, self.ngroups = d_state, headdim, ngroups
        self.nheads = self.d_inner // headdim
        self.chunk_size = chunk_size
        # x, B and C go through the convolution together.
        conv_dims = self.d_inner + 2 * ngroups * d_state

        # One projection gives z (gate), x, B, C and one dt per head.
        self.in_proj = nn.Linear(
            embed_dims, self.d_inner + conv_dims + self.nheads, bias=bias)
        self.conv1d = nn.Conv1d(
            conv_dims,
            conv_dims,
            kernel_size=d_conv,
            groups=conv_dims,
            padding=d_conv - 1,
            bias=conv_bias)

        # dt_bias = softplus^-1(dt) for dt log-uniform in [dt_min, dt_max], so
        # that the initial step sizes span the useful time scales.
        dt = torch.exp(
            torch.rand(self.nheads) * (math.log(dt_max) - math.log(dt_min)) +
            math.log(dt_min)).clamp(min=dt_init_floor)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        A = torch.empty(self.nheads).uniform_(*A_init_range)
        self.A_log = nn.Parameter(torch.log(A))
        self.D = nn.Parameter(torch.ones(self.nheads))
        self.norm = GatedRMSNorm(
            self.d_inner, eps=1e-5, group_size=self.d_inner // ngroups)
        self.out_proj = nn.Linear(self.d_inner, embed_dims, bias=bias)
        self.fused = fused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = mamba2_conv_scan_norm(
            self.in_proj(x),
            self.conv1d.weight,
            self.conv1d.bias,
            self.dt_bias,
            self.A_log,
            self.D,
            self.norm.weight,
            d_inner=self.d_inner,
            ngroups=self.ngroups,
            d_state=self.d_state,
            headdim=self.headdim,
            chunk_size=self.chunk_size,
            group_size=self.norm.group_size,
            eps=self.norm.eps,
            fused=self.fused)
        return self.out_proj(y)

    def _split(self, zxbcdt: torch.Tensor):
        """The in_proj outputs: gate z, conv inputs xBC, one dt per head."""
        return zxbcdt.split(
            [self.d_inner, self.conv1d.in_channels, self.nheads], dim=-1)

    def _conv_scan(self, xBC: torch.Tensor, dt: torch.Tensor,
                   halo: torch.Tensor = None, **scan_kwargs):
        """:func:`patchscale_mm.ops.mamba2_conv_scan` with this mixer's
        parameters: (y (B, L, h, p) or ``ssd_scan``'s tuple, C (B, L, g, n))."""
        return mamba2_conv_scan(
            xBC, dt, self.conv1d.weight, self.conv1d.bias, self.dt_bias, self.A_log, self.D,
            ngroups=self.ngroups, d_state=self.d_state, headdim=self.headdim,
            chunk_size=self.chunk_size, halo=halo, **scan_kwargs)

    def forward_segments(self, segment: torch.Tensor,
                         cls: Optional[torch.Tensor], shards,
                         order: Sequence[int]):
        """The mixer over a sequence split into one segment per rank of
        the sequence group of ``shards``, scanned in the rank order ``order``, then the one-token
        segment ``cls`` (held by the last rank of the group).

        Mamba-2's state passing (the SSD paper's inter-chunk recurrence,
        across ranks): each segment is scanned from a zero state, giving its
        final state h_q and total log-decay a_q; one all-gather of these
        (heads x headdim x d_state numbers per sample, whatever the
        length) lets every rank fold the true state entering its segment,
        H = exp(a_q) H + h_q over the segments before it, and add its
        contribution C_t exp(a_{<=t}) H to the outputs. The causal
        convolution takes its ``d_conv - 1`` input rows from the previous
        segment (another all-gather). Returns the outputs of ``segment`` and
        of ``cls`` (None on the other ranks).
        """
        width = self.conv1d.kernel_size[0] - 1
        z, xBC, dt = self._split(self.in_proj(segment))
        if xBC.shape[1] < width:
            raise ValueError(f'a sequence-parallel segment of {xBC.shape[1]} '
                             f'tokens is shorter than the {width} rows the '
                             'causal convolution passes on')
        halos = sequence_parallel.all_gather(xBC[:, xBC.shape[1] - width:],
                                             shards)
        at = order.index(shards.group.rank)
        halo = halos[order[at - 1]] if at else \
            sequence_parallel.zeros_in_graph(halos[0])
        (y, state), C = self._conv_scan(xBC, dt, halo,
                                        return_final_states=True)
        ct = compute_dtype(y, self.A_log)
        log_decay = (F.softplus(dt.to(ct) + self.dt_bias.to(ct)) *
                     mamba2_decay_rates(self.A_log, y)).cumsum(dim=1)  # (B, L, h)
        states = sequence_parallel.all_gather(state.to(ct), shards)
        totals = sequence_parallel.all_gather(log_decay[:, -1], shards)
        # The output depends on the block's last exchange on every rank,
        # also where its result is not needed (the first segment).
        y = y + sequence_parallel.zeros_in_graph(totals[0]).sum().to(y.dtype)
        entering = fold_states(states, totals, order[:at])
        if entering is not None:
            heads_per_group = self.nheads // self.ngroups
            C = C.to(ct).repeat_interleave(heads_per_group, dim=2)
            y = y + (torch.einsum('blhn,bhpn->blhp', C, entering) *
                     log_decay.exp().unsqueeze(-1)).to(y.dtype)
        out = self.out_proj(self.norm(y.flatten(-2), z))
        if cls is None:
            return out, None
        z, xBC, dt = self._split(self.in_proj(cls))
        y, _ = self._conv_scan(
            xBC, dt, halos[order[-1]],
            initial_states=fold_states(states, totals, order))
        return out, self.out_proj(self.norm(y.flatten(-2), z))


def fold_states(states: Sequence[torch.Tensor], log_decays: Sequence[torch.Tensor],
                order: Sequence[int]) -> Optional[torch.Tensor]:
    """The scan state after the segments ``order`` (each scanned from zero
    to ``states[q]`` (B, h, p, n) with total log-decay ``log_decays[q]``
    (B, h)), or None before the first."""
    state = None
    for q in order:
        state = states[q] if state is None else (
            log_decays[q].exp()[..., None, None] * state + states[q])
    return state
