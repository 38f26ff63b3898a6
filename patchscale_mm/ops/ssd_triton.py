"""The scan as block matrix products in Triton: forward and backward.

This repository's CUDA kernel (:mod:`.ssd_kernel`) runs the recurrence token
by token inside each chunk. These kernels write each chunk as products of
token blocks, as mamba_ssm's do, so that they run at matmul speed, and they
keep two things mamba_ssm's kernels lack: 64-bit element offsets (correct
past 2**31 elements) and full fp32 products unless asked otherwise
(``precision``).

Within a chunk, with ``l_t`` the running sum of ``dt A`` from the chunk's
start, ``u_t = dt_t x_t`` and ``S`` the state entering the chunk::

    s_t = exp(l_t) S + sum_{k<=t} exp(l_t - l_k) B_k u_k^T
    y_t = exp(l_t) C_t^T S + sum_{k<=t} exp(l_t - l_k) (C_t . B_k) u_k

Forward: (1) :func:`_chunk_states_kernel` gives the state each chunk builds
from zero; (2) :func:`_pass_states_kernel` turns those into the state
entering each chunk and the final state, one chunk after another; (3)
:func:`_chunk_outputs_kernel` gives ``y``, reading ``C B^T`` of each chunk,
which one batched matmul makes once for a group's heads
(:func:`_chunk_products`). Backward: the two first kernels on ``(C, dy)``
give the gradient at each chunk's end; then :func:`_chunk_grads_kernel` gives
dx, dz, dB, dC, dD and, per token, the derivative of the loss by ``l_t``,
whose reverse running sum is the derivative by ``dt_t A``. Every exponent is
``l_late - l_early <= 0`` for a decaying scan, so nothing overflows that the
recurrence would not.

Triton comes with CUDA builds of torch; the module imports without it and
:func:`triton_available` says why it cannot run.
"""
import os
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .ssd_kernel import _prepare
from .ssd_torch import NO_DT_LIMIT, _process_dt

try:
    import triton
    import triton.language as tl
    _IMPORT_ERROR = None
except Exception as e:  # ImportError, or a Triton that does not match torch
    triton = tl = None
    _IMPORT_ERROR = f'{type(e).__name__}: {e}'.splitlines()[0]

__all__ = ['ssd_scan_triton', 'triton_available', 'PRECISIONS', 'BLOCK_LAUNCH']

# tl.dot's input_precision: 'ieee' multiplies in fp32; 'tf32' rounds the
# factors to TF32 (10-bit mantissa, as mamba_ssm's default); 'tf32x3' splits
# each factor into two TF32 parts, near fp32 at three times TF32's work.
PRECISIONS = ('ieee', 'tf32', 'tf32x3')
PRECISION_ENV = 'PATCHSCALE_TRITON_PRECISION'  # the default of ssd_scan_triton's precision

# How the block kernels launch, per precision: (tokens per block, warps,
# software-pipeline stages). Those that spill fewest registers on sm_90 of
# the configurations tools/analysis/triton_resources.py compiles
# (docs/benchmarks.md); not yet timed on a GPU.
BLOCK_LAUNCH = {'ieee': (32, 4, 1), 'tf32': (32, 4, 3), 'tf32x3': (32, 4, 1)}


def triton_available() -> Tuple[bool, Optional[str]]:
    """``(True, None)`` when Triton imports, else ``(False, reason)``."""
    return (_IMPORT_ERROR is None), _IMPORT_ERROR


if triton is not None:

    @triton.jit
    def _decay(l_row, l_col, t_row, t_col, ok_row, ok_col, ROWS_LATER: tl.constexpr):
        """exp(l_later - l_earlier) between two blocks of one chunk's tokens
        where the earlier token is at or before the later one, else 0;
        (rows, cols). Masked before exp, so that no exp(+big) appears."""
        if ROWS_LATER:
            keep = t_col[None, :] <= t_row[:, None]
            diff = l_row[:, None] - l_col[None, :]
        else:
            keep = t_row[:, None] <= t_col[None, :]
            diff = l_col[None, :] - l_row[:, None]
        keep = keep & ok_row[:, None] & ok_col[None, :]
        return tl.exp(tl.where(keep, diff, float('-inf')))

    @triton.jit
    def _chunk_origin(bh, c, seqlen, nheads, heads_per_group, headdim, dstate, chunk, lpad):
        """Where chunk c of (batch x head) bh starts, as 64-bit element
        offsets into the (b, l, h, p), (b, l, g, n) and (b, h, lpad) tensors,
        and how many tokens it has. Offsets within a chunk fit in 32 bits (the
        caller checks), so every tile's addresses are one 64-bit base and
        32-bit offsets: half the registers of 64-bit offsets per element."""
        b, h = bh // nheads, bh % nheads
        row = b * seqlen + c * chunk
        x0 = (row * nheads + h) * headdim
        bc0 = (row * (nheads // heads_per_group) + h // heads_per_group) * dstate
        t0 = bh * lpad + c * chunk
        return x0, bc0, t0, tl.minimum(seqlen - c * chunk, chunk).to(tl.int32), h

    @triton.jit
    def _block_program(chunk, BT: tl.constexpr):
        """The chunk, the block of it and the (batch x head) of this program
        of a block kernel (grid: chunks x blocks, batch x heads)."""
        nblk = tl.cdiv(chunk, BT)
        c = (tl.program_id(0) // nblk).to(tl.int64)
        return c, tl.program_id(0) % nblk, tl.program_id(1).to(tl.int64)

    @triton.jit
    def _tile(ptr, t, ok, stride, cols, ncols):
        """Rows t (tokens of a chunk, 32-bit) of a row-major tensor from ``ptr``,
        columns ``cols``; masked to zero."""
        mask = ok[:, None] & (cols[None, :] < ncols)
        return tl.load(ptr + t[:, None] * stride + cols[None, :], mask=mask, other=0.)

    @triton.jit
    def _tile_t(ptr, t, ok, stride, cols, ncols):
        """The transpose of a (cols, t) block of a row-major tensor: (t, cols)."""
        mask = ok[:, None] & (cols[None, :] < ncols)
        return tl.load(ptr + t[:, None] + cols[None, :] * stride, mask=mask, other=0.)

    @triton.jit
    def _products_origin(bh, c, nheads, heads_per_group, chunk, nchunks):
        """Where chunk c's (chunk, chunk) block of C B^T starts for (batch x
        head) bh in the (b, groups, chunks, chunk, chunk) products."""
        b, h = bh // nheads, bh % nheads
        groups = nheads // heads_per_group
        return ((b * groups + h // heads_per_group) * nchunks + c) * chunk * chunk

    @triton.jit
    def _gated_dout(dout_ptr, z_ptr, offs, mask, HAS_Z: tl.constexpr):
        """The gradient of y before the gate: dout * silu(z)."""
        g = tl.load(dout_ptr + offs, mask=mask, other=0.)
        if HAS_Z:
            zz = tl.load(z_ptr + offs, mask=mask, other=0.)
            g = g * zz * tl.sigmoid(zz)
        return g

    @triton.jit
    def _block(blk, n_tok, BT: tl.constexpr):
        """Token positions in the chunk of block ``blk`` and which exist."""
        t = blk * BT + tl.arange(0, BT)
        return t, t < n_tok

    @triton.jit
    def _chunk_states_kernel(left_ptr, right_ptr, dtv_ptr, lc_ptr, z_ptr, out_ptr,
                             seqlen, nheads, heads_per_group, headdim, dstate, chunk,
                             nchunks, lpad, GRAD: tl.constexpr, HAS_Z: tl.constexpr,
                             BT: tl.constexpr, BN: tl.constexpr, BP: tl.constexpr,
                             PREC: tl.constexpr):
        """out[c] = sum_t w_t left_t right_t^T over chunk c, (dstate, headdim).

        Forward: left = B, right = dt x, w = exp(l_end - l_t) (the chunk's own
        end state). GRAD: left = C, right = dy silu(z), w = exp(l_t) (the
        gradient at the chunk's start from its own outputs).
        """
        c = tl.program_id(0).to(tl.int64)
        bh = tl.program_id(2).to(tl.int64)
        x0, bc0, t0, n_tok, h = _chunk_origin(bh, c, seqlen, nheads, heads_per_group,
                                              headdim, dstate, chunk, lpad)
        xs, bs = nheads * headdim, (nheads // heads_per_group) * dstate  # row strides
        left_ptr += bc0
        right_ptr += x0
        z_ptr += x0
        lc_ptr += t0
        dtv_ptr += t0
        ns = tl.arange(0, BN)
        ps = tl.program_id(1) * BP + tl.arange(0, BP)
        l_end = tl.load(lc_ptr + n_tok - 1)
        acc = tl.zeros((BN, BP), dtype=tl.float32)
        for blk in range(0, tl.cdiv(n_tok, BT)):
            t, ok = _block(blk, n_tok, BT)
            left = _tile(left_ptr, t, ok, bs, ns, dstate)
            l_t = tl.load(lc_ptr + t, mask=ok, other=0.)
            if GRAD:
                right = _gated_dout(right_ptr, z_ptr, t[:, None] * xs + ps[None, :],
                                    ok[:, None] & (ps[None, :] < headdim), HAS_Z)
                w = tl.exp(l_t)
            else:
                right = _tile(right_ptr, t, ok, xs, ps, headdim)
                right = right * tl.load(dtv_ptr + t, mask=ok, other=0.)[:, None]
                w = tl.exp(l_end - l_t)
            w = tl.where(ok, w, 0.)
            acc += tl.dot(tl.trans(left * w[:, None]), right, input_precision=PREC)
        out_ptr += (bh * nchunks + c) * dstate * headdim
        tl.store(out_ptr + ns[:, None] * headdim + ps[None, :], acc,
                 mask=(ns[:, None] < dstate) & (ps[None, :] < headdim))

    @triton.jit
    def _pass_states_kernel(states_ptr, decay_ptr, first_ptr, last_ptr, nchunks, dstate,
                            headdim, HAS_FIRST: tl.constexpr, HAS_LAST: tl.constexpr,
                            REVERSE: tl.constexpr, BLOCK: tl.constexpr):
        """In place, one chunk after another: each chunk's own contribution in
        ``states`` becomes what enters it, s <- decay[c] s + own[c], starting
        from ``first`` ((b, h, p, n) or zero); ``last`` gets the end.

        Forward: states entering chunks and the final state. REVERSE, on the
        chunks' own start gradients: gradients at each chunk's end, starting
        from the final state's gradient, and the initial state's gradient.
        """
        bh = tl.program_id(1).to(tl.int64)
        e = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        ok = e < dstate * headdim
        n, p = e // headdim, e % headdim
        io = p * dstate + n  # (b, h, p, n) layout
        first_ptr += bh * dstate * headdim
        last_ptr += bh * dstate * headdim
        states_ptr += bh * nchunks * dstate * headdim
        decay_ptr += bh * nchunks
        s = tl.zeros((BLOCK,), dtype=tl.float32)
        if HAS_FIRST:
            s = tl.load(first_ptr + io, mask=ok, other=0.)
        for i in range(0, nchunks):
            c = nchunks - 1 - i if REVERSE else i
            here = states_ptr + c.to(tl.int64) * dstate * headdim
            own = tl.load(here + e, mask=ok, other=0.)
            tl.store(here + e, s, mask=ok)
            s = tl.load(decay_ptr + c) * s + own
        if HAS_LAST:
            tl.store(last_ptr + io, s, mask=ok)

    @triton.jit
    def _chunk_outputs_kernel(x_ptr, dtv_ptr, lc_ptr, cb_ptr, C_ptr, D_ptr, z_ptr, states_ptr,
                              out_ptr, seqlen, nheads, heads_per_group, headdim, dstate,
                              chunk, nchunks, lpad, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
                              BT: tl.constexpr, BN: tl.constexpr, BP: tl.constexpr,
                              PREC: tl.constexpr):
        """out = (y + D x) silu(z) for one block m of a chunk's tokens."""
        c, mblk, bh = _block_program(chunk, BT)
        x0, bc0, t0, n_tok, h = _chunk_origin(bh, c, seqlen, nheads, heads_per_group,
                                              headdim, dstate, chunk, lpad)
        xs, bs = nheads * headdim, (nheads // heads_per_group) * dstate
        x_ptr += x0
        z_ptr += x0
        out_ptr += x0
        C_ptr += bc0
        lc_ptr += t0
        dtv_ptr += t0
        cb_ptr += _products_origin(bh, c, nheads, heads_per_group, chunk, nchunks)
        states_ptr += (bh * nchunks + c) * dstate * headdim
        ns, ps = tl.arange(0, BN), tl.arange(0, BP)
        t_m, ok_m = _block(mblk, n_tok, BT)
        l_m = tl.load(lc_ptr + t_m, mask=ok_m, other=0.)
        C_m = _tile(C_ptr, t_m, ok_m, bs, ns, dstate)
        S = _tile(states_ptr, ns, ns < dstate, headdim, ps, headdim)  # (n, p)
        y = tl.dot(C_m, S, input_precision=PREC) * tl.exp(l_m)[:, None]
        for kblk in range(0, mblk + 1):
            t_k, ok_k = _block(kblk, n_tok, BT)
            u_k = _tile(x_ptr, t_k, ok_k, xs, ps, headdim)
            u_k = u_k * tl.load(dtv_ptr + t_k, mask=ok_k, other=0.)[:, None]
            l_k = tl.load(lc_ptr + t_k, mask=ok_k, other=0.)
            M = _tile(cb_ptr, t_m, ok_m, chunk, t_k, n_tok)
            M = M * _decay(l_m, l_k, t_m, t_k, ok_m, ok_k, True)
            y += tl.dot(M, u_k, input_precision=PREC)
        xoffs = t_m[:, None] * xs + ps[None, :]
        mask = ok_m[:, None] & (ps[None, :] < headdim)
        if HAS_D:
            x_m = tl.load(x_ptr + xoffs, mask=mask, other=0.)
            y += x_m * tl.load(D_ptr + h * headdim + ps, mask=ps < headdim, other=0.)[None, :]
        if HAS_Z:
            zz = tl.load(z_ptr + xoffs, mask=mask, other=0.)
            y = y * zz * tl.sigmoid(zz)
        tl.store(out_ptr + xoffs, y, mask=mask)

    @triton.jit
    def _chunk_grads_kernel(x_ptr, dtv_ptr, lc_ptr, cb_ptr, B_ptr, C_ptr, D_ptr, z_ptr, dout_ptr,
                            states_ptr, dstates_ptr, dx_ptr, dz_ptr, dB_ptr, dC_ptr, dD_ptr,
                            dl_ptr, dtx_ptr, seqlen, nheads, heads_per_group, headdim,
                            dstate, chunk, nchunks, lpad, ROWS_LATER: tl.constexpr,
                            HAS_D: tl.constexpr, HAS_Z: tl.constexpr, BT: tl.constexpr,
                            BN: tl.constexpr, BP: tl.constexpr, PREC: tl.constexpr):
        """Gradients for one block m of a chunk's tokens, given the state S
        entering the chunk and the gradient dS at its end.

        With g = dy silu(z), e_tk = exp(l_t - l_k) for k <= t (else 0),
        M = e o (C B^T) and W = e o (g u^T):
          y_m  = exp(l_m) C_m S + sum_k M_mk u_k            (for dz)
          dC_m = exp(l_m) S g_m + sum_k W_mk B_k
          du_m = exp(l_end - l_m) dS^T B_m + sum_j M_jm g_j
          dB_m = exp(l_end - l_m) dS u_m + sum_j W_jm C_j
          dl_m = g_m . exp(l_m) C_m S - u_m . exp(l_end - l_m) dS^T B_m
                 + sum_k M_mk (g_m . u_k) - sum_j M_jm (g_j . u_m)
        where dl_t is the loss's derivative by l_t, less the end state's
        <dS, s_end>, which the caller adds to the last token.

        Two launches share the work, so that each holds two accumulators:
        ROWS_LATER, the block's tokens as the later ones (earlier blocks k):
        y, dz, dC, dD and the first half of dl; else as the earlier ones
        (later blocks j): du, dx, dB and the second half of dl. dB, dC and dl
        are added atomically (dB and dC over the heads of a group; each dl
        entry gets two adds, whose order cannot change their sum).
        """
        c, mblk, bh = _block_program(chunk, BT)
        x0, bc0, t0, n_tok, h = _chunk_origin(bh, c, seqlen, nheads, heads_per_group,
                                              headdim, dstate, chunk, lpad)
        xs, bs = nheads * headdim, (nheads // heads_per_group) * dstate
        x_ptr += x0
        z_ptr += x0
        dout_ptr += x0
        B_ptr += bc0
        C_ptr += bc0
        lc_ptr += t0
        dtv_ptr += t0
        cb_ptr += _products_origin(bh, c, nheads, heads_per_group, chunk, nchunks)
        ns, ps = tl.arange(0, BN), tl.arange(0, BP)
        n_ok, p_ok = ns < dstate, ps < headdim
        t_m, ok_m = _block(mblk, n_tok, BT)
        xoffs = t_m[:, None] * xs + ps[None, :]
        noffs = t_m[:, None] * bs + ns[None, :]
        xmask = ok_m[:, None] & p_ok[None, :]
        nmask = ok_m[:, None] & n_ok[None, :]
        l_m = tl.load(lc_ptr + t_m, mask=ok_m, other=0.)
        state0 = (bh * nchunks + c) * dstate * headdim

        if ROWS_LATER:
            C_m = _tile(C_ptr, t_m, ok_m, bs, ns, dstate)
            g_m = _gated_dout(dout_ptr, z_ptr, xoffs, xmask, HAS_Z)
            S = _tile(states_ptr + state0, ns, n_ok, headdim, ps, headdim)  # (n, p)
            w_start = tl.where(ok_m, tl.exp(l_m), 0.)
            y = tl.dot(C_m, S, input_precision=PREC) * w_start[:, None]
            dC = tl.dot(g_m, tl.trans(S), input_precision=PREC) * w_start[:, None]
            dl = tl.sum(g_m * y, axis=1)
            for kblk in range(0, mblk + 1):
                t_k, ok_k = _block(kblk, n_tok, BT)
                B_k = _tile(B_ptr, t_k, ok_k, bs, ns, dstate)
                u_k = _tile(x_ptr, t_k, ok_k, xs, ps, headdim)
                u_k = u_k * tl.load(dtv_ptr + t_k, mask=ok_k, other=0.)[:, None]
                l_k = tl.load(lc_ptr + t_k, mask=ok_k, other=0.)
                decay = _decay(l_m, l_k, t_m, t_k, ok_m, ok_k, True)
                M = _tile(cb_ptr, t_m, ok_m, chunk, t_k, n_tok) * decay
                gu = tl.dot(g_m, tl.trans(u_k), input_precision=PREC)
                y += tl.dot(M, u_k, input_precision=PREC)
                dC += tl.dot(gu * decay, B_k, input_precision=PREC)
                dl += tl.sum(M * gu, axis=1)
            tl.atomic_add(dC_ptr + bc0 + noffs, dC, mask=nmask)
            tl.atomic_add(dl_ptr + t0 + t_m, dl, mask=ok_m)
            if HAS_D:
                x_m = tl.load(x_ptr + xoffs, mask=xmask, other=0.)
                D_h = tl.load(D_ptr + h * headdim + ps, mask=p_ok, other=0.)
                y += x_m * D_h[None, :]
                tl.atomic_add(dD_ptr + h * headdim + ps, tl.sum(g_m * x_m, axis=0), mask=p_ok)
            if HAS_Z:
                zz = tl.load(z_ptr + xoffs, mask=xmask, other=0.)
                dy = tl.load(dout_ptr + xoffs, mask=xmask, other=0.)
                sg = tl.sigmoid(zz)
                tl.store(dz_ptr + x0 + xoffs, dy * y * sg * (1. + zz * (1. - sg)), mask=xmask)
        else:
            l_end = tl.load(lc_ptr + n_tok - 1)
            dtv_m = tl.load(dtv_ptr + t_m, mask=ok_m, other=0.)
            B_m = _tile(B_ptr, t_m, ok_m, bs, ns, dstate)
            x_m = tl.load(x_ptr + xoffs, mask=xmask, other=0.)
            u_m = x_m * dtv_m[:, None]
            dS = _tile(dstates_ptr + state0, ns, n_ok, headdim, ps, headdim)  # (n, p)
            w_end = tl.where(ok_m, tl.exp(l_end - l_m), 0.)
            du = tl.dot(B_m, dS, input_precision=PREC) * w_end[:, None]
            dB = tl.dot(u_m, tl.trans(dS), input_precision=PREC) * w_end[:, None]
            dl = -tl.sum(u_m * du, axis=1)
            for jblk in range(mblk, tl.cdiv(chunk, BT)):
                t_j, ok_j = _block(jblk, n_tok, BT)
                C_j = _tile(C_ptr, t_j, ok_j, bs, ns, dstate)
                g_j = _gated_dout(dout_ptr, z_ptr, t_j[:, None] * xs + ps[None, :],
                                  ok_j[:, None] & p_ok[None, :], HAS_Z)
                l_j = tl.load(lc_ptr + t_j, mask=ok_j, other=0.)
                decay = _decay(l_m, l_j, t_m, t_j, ok_m, ok_j, False)  # (m, j)
                MT = _tile_t(cb_ptr, t_m, ok_m, chunk, t_j, n_tok) * decay
                ug = tl.dot(u_m, tl.trans(g_j), input_precision=PREC)
                du += tl.dot(MT, g_j, input_precision=PREC)
                dB += tl.dot(ug * decay, C_j, input_precision=PREC)
                dl -= tl.sum(MT * ug, axis=1)
            tl.atomic_add(dB_ptr + bc0 + noffs, dB, mask=nmask)
            tl.atomic_add(dl_ptr + t0 + t_m, dl, mask=ok_m)
            tl.store(dtx_ptr + t0 + t_m, tl.sum(x_m * du, axis=1), mask=ok_m)
            dx = du * dtv_m[:, None]
            if HAS_D:
                g_m = _gated_dout(dout_ptr, z_ptr, xoffs, xmask, HAS_Z)
                dx += g_m * tl.load(D_ptr + h * headdim + ps, mask=p_ok, other=0.)[None, :]
            tl.store(dx_ptr + x0 + xoffs, dx, mask=xmask)


# ---------------------------------------------------------------------------
# Launches
# ---------------------------------------------------------------------------
def _pow2(n: int, least: int = 16) -> int:
    """Block extent for n: tl.dot needs powers of two of at least 16."""
    return max(least, triton.next_power_of_2(n))


class _Geometry:
    """Sizes and launch blocks of one call."""

    def __init__(self, x: Tensor, B: Tensor, chunk_size: int, precision: str):
        self.b, self.l, self.h, self.p = x.shape
        self.g, self.n = B.shape[2:]
        self.chunk = max(1, min(chunk_size, self.l))
        self.nchunks = -(-self.l // self.chunk)
        self.lpad = self.nchunks * self.chunk
        bt, warps, stages = BLOCK_LAUNCH[precision]
        self.BT = min(bt, _pow2(self.chunk))  # tokens per block
        self.launch = dict(num_warps=warps, num_stages=stages)
        self.BN, self.BP = _pow2(self.n), _pow2(self.p)
        self.BP_states = min(64, self.BP)  # headdim tile of the state kernels
        self.nblk = -(-self.chunk // self.BT)
        # Offsets within a chunk are 32-bit (_chunk_origin).
        widest = max(self.h * self.p, self.g * self.n, self.chunk)
        if self.chunk * widest >= 2**31:
            raise ValueError(f'ssd_scan triton: a chunk of {self.chunk} tokens x {widest} '
                             'elements per token (x, B/C or C B^T) reaches 2**31; use a '
                             'smaller chunk_size')

    def sizes(self):
        """The size arguments every kernel takes after its pointers."""
        return (self.l, self.h, self.h // self.g, self.p, self.n, self.chunk)


def _log_decays(dtv: Tensor, A: Tensor, geo: _Geometry) -> Tuple[Tensor, Tensor, Tensor]:
    """dt, its running sum times A within each chunk, both (b, h, lpad), and
    each chunk's decay exp(l_end), (b, h, nchunks). Padded tokens have dt = 0,
    so the last entry of a chunk is its end."""
    dt_p = F.pad(dtv.permute(0, 2, 1), (0, geo.lpad - geo.l)).contiguous()
    lc = (dt_p * A[:, None]).view(geo.b, geo.h, geo.nchunks, geo.chunk).cumsum(-1)
    return dt_p, lc.view(geo.b, geo.h, geo.lpad), lc[..., -1].exp().contiguous()


def _chunk_products(Cf: Tensor, Bf: Tensor, geo: _Geometry, precision: str) -> Tensor:
    """C B^T within each chunk, (b, groups, nchunks, chunk, chunk). The heads
    of a group share it, so one batched matmul makes it for all of them, in
    fp32 unless TF32 products were asked for."""
    pad = (0, 0, 0, 0, 0, geo.lpad - geo.l)
    shape = (geo.b, geo.nchunks, geo.chunk, geo.g, geo.n)
    C = F.pad(Cf, pad).view(shape).permute(0, 3, 1, 2, 4)
    B = F.pad(Bf, pad).view(shape).permute(0, 3, 1, 4, 2)
    if not Cf.is_cuda:
        return torch.matmul(C, B).contiguous()
    allowed = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = precision == 'tf32'
    try:
        return torch.matmul(C, B).contiguous()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allowed


def _chunk_states(left, right, dt_p, lc, z, geo, grad, precision):
    out = left.new_empty(geo.b, geo.h, geo.nchunks, geo.n, geo.p)
    grid = (geo.nchunks, triton.cdiv(geo.p, geo.BP_states), geo.b * geo.h)
    _chunk_states_kernel[grid](left, right, dt_p, lc, z if z is not None else right, out,
                               *geo.sizes(), geo.nchunks, geo.lpad, GRAD=grad,
                               HAS_Z=z is not None, BT=geo.BT, BN=geo.BN,
                               BP=geo.BP_states, PREC=precision, **geo.launch)
    return out


def _pass_states(states, decay, first, last, geo, reverse):
    BLOCK = min(1024, triton.next_power_of_2(geo.n * geo.p))
    grid = (triton.cdiv(geo.n * geo.p, BLOCK), geo.b * geo.h)
    _pass_states_kernel[grid](states, decay, first if first is not None else states,
                              last if last is not None else states, geo.nchunks, geo.n,
                              geo.p, HAS_FIRST=first is not None, HAS_LAST=last is not None,
                              REVERSE=reverse, BLOCK=BLOCK)


def _inputs(x, dt, A, B, C, D, z, dt_bias, initial_states, dt_softplus, dt_limit):
    """The compiled kernels' fp32 inputs (D as (h, p)) and dt after bias,
    softplus and clamp, (b, l, h)."""
    xf, dtf, Af, Bf, Cf, Df, zf, biasf, init = _prepare(x, dt, A, B, C, D, z, dt_bias,
                                                        initial_states, torch.float32)
    dtv = _process_dt(dtf, torch.float32, biasf, dt_softplus, dt_limit)
    return xf, dtv, Af, Bf, Cf, Df, zf, init


class SSDScanTritonFn(torch.autograd.Function):
    """Forward and backward of :func:`ssd_scan_triton`."""

    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, z, dt_bias, initial_states, dt_softplus, dt_limit,
                return_final_states, chunk_size, precision):
        geo = _Geometry(x, B, chunk_size, precision)
        xf, dtv, Af, Bf, Cf, Df, zf, init = _inputs(x, dt, A, B, C, D, z, dt_bias,
                                                    initial_states, dt_softplus, dt_limit)
        dt_p, lc, decay = _log_decays(dtv, Af, geo)
        states = _chunk_states(Bf, xf, dt_p, lc, None, geo, False, precision)
        final = xf.new_empty(geo.b, geo.h, geo.p, geo.n)
        _pass_states(states, decay, init, final, geo, reverse=False)
        out = torch.empty_like(xf)
        grid = (geo.nchunks * geo.nblk, geo.b * geo.h)
        products = _chunk_products(Cf, Bf, geo, precision)
        _chunk_outputs_kernel[grid](xf, dt_p, lc, products, Cf, Df if Df is not None else xf,
                                    zf if zf is not None else xf, states, out, *geo.sizes(),
                                    geo.nchunks, geo.lpad, HAS_D=Df is not None,
                                    HAS_Z=zf is not None, BT=geo.BT, BN=geo.BN, BP=geo.BP,
                                    PREC=precision, **geo.launch)
        ctx.save_for_backward(x, dt, A, B, C, D, z, dt_bias, initial_states, states, final)
        ctx.config = (dt_softplus, dt_limit, chunk_size, precision)
        ctx.set_materialize_grads(False)
        y = out.to(x.dtype)
        return (y, final) if return_final_states else y

    @staticmethod
    def backward(ctx, dout, dfinal=None):
        x, dt, A, B, C, D, z, dt_bias, initial_states, states, final = ctx.saved_tensors
        dt_softplus, dt_limit, chunk_size, precision = ctx.config
        geo = _Geometry(x, B, chunk_size, precision)
        xf, _, Af, Bf, Cf, Df, zf, _, init = _prepare(x, dt, A, B, C, D, z, dt_bias,
                                                      initial_states, torch.float32)
        # dt after bias, softplus and clamp, kept differentiable so that ddt
        # and ddt_bias come from torch's own derivatives of those steps.
        with torch.enable_grad():
            dt_leaves = [t.detach().requires_grad_() if t is not None else None
                         for t in (dt, dt_bias)]
            dtv_graph = _process_dt(dt_leaves[0], torch.float32, dt_leaves[1], dt_softplus,
                                    dt_limit)
        dtv = dtv_graph.detach()
        dout = torch.zeros_like(xf) if dout is None else dout.to(torch.float32).contiguous()
        if dfinal is not None:
            dfinal = dfinal.to(torch.float32).contiguous()
        dt_p, lc, decay = _log_decays(dtv, Af, geo)

        # Gradient at each chunk's end (dstates) and at the initial state.
        dstates = _chunk_states(Cf, dout, dt_p, lc, zf, geo, True, precision)
        dinit = None if init is None else torch.empty_like(init)
        _pass_states(dstates, decay, dfinal, dinit, geo, reverse=True)

        dx, dz = torch.empty_like(xf), (None if zf is None else torch.empty_like(xf))
        dB, dC = torch.zeros_like(Bf), torch.zeros_like(Cf)
        dD = None if Df is None else torch.zeros_like(Df)
        dl = xf.new_zeros(geo.b, geo.h, geo.lpad)
        dtx = xf.new_zeros(geo.b, geo.h, geo.lpad)
        grid = (geo.nchunks * geo.nblk, geo.b * geo.h)
        products = _chunk_products(Cf, Bf, geo, precision)
        for rows_later in (True, False):
            _chunk_grads_kernel[grid](xf, dt_p, lc, products, Bf, Cf, Df if Df is not None else xf,
                                      zf if zf is not None else xf, dout, states, dstates, dx,
                                      dz if dz is not None else dx, dB, dC,
                                      dD if dD is not None else dx, dl, dtx, *geo.sizes(),
                                      geo.nchunks, geo.lpad, ROWS_LATER=rows_later,
                                      HAS_D=Df is not None, HAS_Z=zf is not None, BT=geo.BT,
                                      BN=geo.BN, BP=geo.BP, PREC=precision, **geo.launch)

        # d/d(dt A) of a token is the sum of d/dl over it and the chunk's later
        # tokens, plus <dS, s_end>, through the chunk's end state.
        ends = torch.cat([states[:, :, 1:], final.transpose(-1, -2)[:, :, None]], dim=2)
        through_end = (dstates * ends).sum((-1, -2))  # (b, h, nchunks)
        dl = dl.view(geo.b, geo.h, geo.nchunks, geo.chunk)
        ada = dl.flip(-1).cumsum(-1).flip(-1) + through_end[..., None]
        ada = ada.view(geo.b, geo.h, geo.lpad)[..., :geo.l].transpose(1, 2)  # (b, l, h)
        dtx = dtx[..., :geo.l].transpose(1, 2)
        d_dtv = dtx + ada * Af
        dA = (ada * dtv).sum((0, 1))

        # Back through bias, softplus and clamp.
        ddt = ddt_bias = None
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[7]:
            wanted = [t for t in dt_leaves if t is not None]
            grads = torch.autograd.grad(dtv_graph, wanted, d_dtv)
            ddt = grads[0]
            ddt_bias = grads[1] if dt_bias is not None else None

        if D is not None and D.dim() == 1:
            dD = dD.sum(-1)
        grads = (dx, ddt, dA, dB, dC, dD, dz, ddt_bias, dinit)
        inputs = (x, dt, A, B, C, D, z, dt_bias, initial_states)
        out = [None if t is None or not need else g.to(t.dtype)
               for g, t, need in zip(grads, inputs, ctx.needs_input_grad)]
        return (*out, None, None, None, None, None)


def ssd_scan_triton(x: Tensor,
                    dt: Tensor,
                    A: Tensor,
                    B: Tensor,
                    C: Tensor,
                    D: Optional[Tensor] = None,
                    z: Optional[Tensor] = None,
                    dt_bias: Optional[Tensor] = None,
                    dt_softplus: bool = False,
                    dt_limit: Sequence[float] = NO_DT_LIMIT,
                    initial_states: Optional[Tensor] = None,
                    return_final_states: bool = False,
                    chunk_size: int = 256,
                    precision: Optional[str] = None):
    """The scan in Triton's block products; arguments as
    :func:`patchscale_mm.ops.ssd_scan_ref`.

    Computes in fp32 (fp64 inputs are refused: use the 'cuda' or 'torch'
    backend for them). ``chunk_size`` sets the chunk of the block form;
    ``precision`` is tl.dot's input precision (:data:`PRECISIONS`): 'ieee'
    (fp32 products, the default), 'tf32' (mamba_ssm's default, faster on
    tensor cores, about 1e-3 relative error per product) or 'tf32x3'; None
    reads ``$PATCHSCALE_TRITON_PRECISION``, which is how a model that calls
    :func:`~patchscale_mm.ops.ssd_scan` with ``backend='triton'`` chooses.
    Shapes are not validated here; :func:`patchscale_mm.ops.ssd_scan` does
    that before dispatching.
    """
    ok, reason = triton_available()
    if not ok:
        raise RuntimeError(f'ssd_scan triton: Triton is not available ({reason})')
    if precision is None:
        precision = os.environ.get(PRECISION_ENV) or 'ieee'
    if precision not in PRECISIONS:
        raise ValueError(f'ssd_scan triton: precision must be one of {PRECISIONS} '
                         f'(argument or ${PRECISION_ENV}), got {precision!r}')
    if torch.float64 in (x.dtype, dt.dtype, A.dtype, B.dtype, C.dtype):
        raise ValueError("ssd_scan triton: computes in fp32; for fp64 inputs use "
                         "backend 'cuda' or 'torch'")
    if x.shape[0] * x.shape[2] > 65535:
        raise ValueError(f'ssd_scan triton: batch x heads up to 65535 is supported, '
                         f'got {x.shape[0] * x.shape[2]}')
    if x.shape[1] == 0:
        y = torch.zeros_like(x)
        if not return_final_states:
            return y
        b, _, h, p = x.shape
        fin = (x.new_zeros(b, h, p, B.shape[-1], dtype=torch.float32)
               if initial_states is None else initial_states.float().clone())
        return y, fin
    return SSDScanTritonFn.apply(x, dt, A, B, C, D, z, dt_bias, initial_states, dt_softplus,
                                 tuple(dt_limit), return_final_states, int(chunk_size),
                                 precision)
