"""Sequence parallelism: the tokens of each image split across ranks.

Data parallelism, FSDP and ZeRO split the batch and the parameters; a single
image at small patches can still be too long for one device (ADE20k 512x512
at patch 1: 262,144 tokens). Here the ranks of a *sequence group*
(``size`` consecutive ranks) hold contiguous shards of the same images'
tokens, and the blocks exchange only what crosses a shard boundary (see
:mod:`patchscale_mm.models.backbones.adventurer` and
:mod:`patchscale_mm.models.layers.attention`). The world is ``dp_size x
size`` ranks: sequence groups of consecutive ranks, data-parallel replicas
across them.

Every exchange is an autograd-aware collective and every rank of a group computes the heads and the
loss on the gathered features, so each rank's gradient is ``size`` times
its share of the true one: DDP's average over the whole world is then
exactly the data-parallel average of the sequence groups' gradients, the
gradient of one process training on the same global batch.
"""
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F

_CURRENT: Optional['SequenceGroup'] = None


@dataclass(frozen=True)
class SequenceGroup:
    """This rank's place in the ``dp_size x size`` grid of ranks."""
    group: object  # the ProcessGroup of this rank's sequence group
    rank: int  # rank within the sequence group: which shard it holds
    size: int
    dp_rank: int  # which data-parallel replica (sequence group) it is in
    dp_size: int


def init_sequence_parallel(size: int) -> Optional[SequenceGroup]:
    """Forms the sequence groups of the default process group and makes
    this rank's the current one; ``size`` 1 forms none and returns None.

    Raises:
        ValueError: If ``size`` is not positive or does not divide the
            world size.
    """
    global _CURRENT
    if not isinstance(size, int) or size < 1:
        raise ValueError(f'sequence_parallel.size must be a positive '
                         f'integer, got {size!r}')
    if size == 1:
        _CURRENT = None
        return None
    world = dist.get_world_size() if dist.is_initialized() else 1
    if world % size:
        raise ValueError(f'sequence_parallel.size {size} does not divide the '
                         f'world size {world}; use a divisor of {world}')
    rank = dist.get_rank()
    mine = None
    # Every rank takes part in creating every group (torch's rule).
    for first in range(0, world, size):
        group = dist.new_group(list(range(first, first + size)))
        if first <= rank < first + size:
            mine = group
    _CURRENT = SequenceGroup(mine, rank % size, size, rank // size,
                             world // size)
    return _CURRENT


def current() -> Optional[SequenceGroup]:
    """The sequence group of this rank, or None without sequence
    parallelism."""
    return _CURRENT


def set_current(group: Optional[SequenceGroup]) -> None:
    """Replaces the current sequence group (tests, or a process that builds
    its own groups)."""
    global _CURRENT
    _CURRENT = group


def shard_bounds(length: int, size: int) -> List[Tuple[int, int]]:
    """``size`` contiguous ``(start, end)`` ranges covering ``length``
    items, the first ``length % size`` one longer."""
    base, extra = divmod(length, size)
    bounds, start = [], 0
    for rank in range(size):
        end = start + base + (rank < extra)
        bounds.append((start, end))
        start = end
    return bounds


# -- autograd-aware collectives ------------------------------------------------
# The backward of a collective is itself a collective, and every rank of the
# group must run them in the same order. Autograd orders independent nodes by
# what is ready first, which differs between ranks whose graphs differ (the
# first shard has no incoming scan state, the last one holds the class
# token). So each collective's input is made to depend on the previous
# collective's output (a no-op for the values): backward then runs them in
# exactly the reverse order of forward, on every rank. A block empties the
# chain when it starts and ends (so that a block recomputed under activation
# checkpointing does not keep its graph alive) and makes its output depend on
# its last collective on every rank: the next block's collectives then finish
# their backward before this block's begin.
class _After(torch.autograd.Function):
    """``x`` unchanged, ordered after ``token`` for autograd."""

    @staticmethod
    def forward(ctx, x, token):
        ctx.token_meta = (token.shape, token.dtype, token.device)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        shape, dtype, device = ctx.token_meta
        return grad, torch.zeros(shape, dtype=dtype, device=device)


def _collective(op, x: torch.Tensor, shards: 'TokenShards'):
    if shards.chain and torch.is_grad_enabled():
        x = _After.apply(x, shards.chain[-1])
    out = op(x)
    shards.chain[:] = [out[0] if isinstance(out, (tuple, list)) else out]
    return out


class _AllReduceSum(torch.autograd.Function):
    """Sum over the group; the gradient of a replicated sum is the sum of
    the ranks' gradients."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        x = x.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class _AllGather(torch.autograd.Function):
    """Every rank's tensor; the gradient of a rank's part is the sum of the
    ranks' gradients for it (a reduce-scatter)."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, x, group=group)
        return tuple(parts)

    @staticmethod
    def backward(ctx, *grads):
        # Contiguous buffers: a gradient may arrive with any strides.
        stacked = torch.stack([g.contiguous() for g in grads])
        if dist.get_backend(ctx.group) == 'nccl':
            mine = stacked.new_empty(stacked.shape[1:]).unsqueeze(0)
            dist.reduce_scatter_tensor(mine, stacked, group=ctx.group)
            return mine[0], None
        # gloo has no reduce-scatter: reduce everything, keep this rank's.
        dist.all_reduce(stacked, group=ctx.group)
        return stacked[dist.get_rank(ctx.group)], None


def all_reduce_sum(x: torch.Tensor, shards: 'TokenShards') -> torch.Tensor:
    """Sum over the sequence group; its backward sums the gradients."""
    return _collective(lambda t: _AllReduceSum.apply(t, shards.group.group),
                       x, shards)


def all_gather(x: torch.Tensor,
               shards: 'TokenShards') -> Tuple[torch.Tensor, ...]:
    """Every rank's ``x`` (same shape on all), in rank order."""
    return _collective(lambda t: _AllGather.apply(t, shards.group.group), x,
                       shards)


def _pad_to_longest(x: torch.Tensor, lengths: Sequence[int],
                    dim: int) -> torch.Tensor:
    """``x`` padded with zeros along ``dim`` to the longest shard: a gather
    needs equal shapes on every rank."""
    pad = max(lengths) - x.shape[dim]
    if not pad:
        return x
    shape = list(x.shape)
    shape[dim] = pad
    return torch.cat([x, x.new_zeros(shape)], dim=dim)


def _join_shards(parts: Sequence[torch.Tensor], lengths: Sequence[int],
                 dim: int) -> torch.Tensor:
    """The gathered, padded shards joined into the sequence."""
    return torch.cat([p.narrow(dim, 0, n) for p, n in zip(parts, lengths)],
                     dim=dim)


def gather_tokens(x: torch.Tensor, shards: 'TokenShards',
                  dim: int = 1) -> torch.Tensor:
    """The whole sequence from every rank's shard (``shards.lengths``
    tokens along ``dim``), on every rank."""
    parts = all_gather(_pad_to_longest(x, shards.lengths, dim), shards)
    return _join_shards(parts, shards.lengths, dim)


class _ZerosLike(torch.autograd.Function):
    """Zeros shaped like ``x`` that keep ``x`` in the graph (zero gradient,
    whatever ``x`` holds): every rank then runs the same backward, and with
    it the same recomputation of checkpointed blocks and their
    collectives."""

    @staticmethod
    def forward(ctx, x):
        return torch.zeros_like(x)

    @staticmethod
    def backward(ctx, grad):
        return torch.zeros_like(grad)


def zeros_in_graph(x: torch.Tensor) -> torch.Tensor:
    """Zeros shaped like ``x``, with ``x`` kept in the graph (see
    :class:`_ZerosLike`)."""
    return _ZerosLike.apply(x)


def owner_to_all(x: torch.Tensor, owner: int,
                 shards: 'TokenShards') -> torch.Tensor:
    """The owner rank's ``x`` on every rank of the group (the others pass a
    tensor of the same shape and dtype); gradients flow back to the
    owner."""
    if shards.group.rank != owner:
        x = _ZerosLike.apply(x)
    return all_reduce_sum(x, shards)


def _gather_parts(x: torch.Tensor, lengths: Sequence[int], group,
                  dim: int) -> torch.Tensor:
    """The whole sequence from every rank's shard, without autograd."""
    x = _pad_to_longest(x, lengths, dim).contiguous()
    parts = [torch.empty_like(x) for _ in lengths]
    dist.all_gather(parts, x, group=group)
    return _join_shards(parts, lengths, dim)


def _scatter_sum(full: torch.Tensor, lengths: Sequence[int], rank: int,
                 group, dim: int) -> torch.Tensor:
    """This rank's part of the sum over ranks of ``full`` (a reduce-scatter
    along ``dim``, as an all-reduce where the backend has none)."""
    full = full.contiguous()
    dist.all_reduce(full, group=group)
    start = sum(lengths[:rank])
    return full.narrow(dim, start, lengths[rank])


class _ShardAttention(torch.autograd.Function):
    """Attention of this rank's queries over the keys and values of every
    rank, saving only the local shards: the whole sequence's keys and values
    are gathered again in backward (as flash attention recomputes its
    scores), so a rank keeps 1/size of the activations."""

    @staticmethod
    def forward(ctx, q, k, v, lengths, rank, group):
        ctx.lengths, ctx.rank, ctx.group = lengths, rank, group
        ctx.save_for_backward(q, k, v)
        keys, values = (_gather_parts(t, lengths, group, 2) for t in (k, v))
        return F.scaled_dot_product_attention(q, keys, values)

    @staticmethod
    def backward(ctx, grad):
        q, k, v = ctx.saved_tensors
        keys, values = (_gather_parts(t, ctx.lengths, ctx.group, 2)
                        for t in (k, v))
        with torch.enable_grad():
            q, keys, values = (t.detach().requires_grad_()
                               for t in (q, keys, values))
            out = F.scaled_dot_product_attention(q, keys, values)
            dq, dkeys, dvalues = torch.autograd.grad(out, (q, keys, values),
                                                     grad)
        dk, dv = (_scatter_sum(t, ctx.lengths, ctx.rank, ctx.group, 2)
                  for t in (dkeys, dvalues))
        return dq, dk, dv, None, None, None


def shard_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    shards: 'TokenShards') -> torch.Tensor:
    """``scaled_dot_product_attention`` of this rank's queries (B, heads,
    shard, dims) over the whole sequence's keys and values, whose shards
    ``k`` and ``v`` every rank holds."""
    group = shards.group
    return _collective(
        lambda t: _ShardAttention.apply(t, k, v, tuple(shards.lengths),
                                        group.rank, group.group), q, shards)


@dataclass(frozen=True)
class TokenShards:
    """How one sequence is split over a sequence group: ``bounds[r]`` is the
    ``(start, end)`` of rank r's tokens, in the order the backbone lays them
    out (class token included)."""
    group: SequenceGroup
    bounds: Tuple[Tuple[int, int], ...]
    # The last collective's output, which the next one is ordered after.
    chain: list = field(default_factory=list, compare=False, repr=False)

    @property
    def lengths(self) -> List[int]:
        return [end - start for start, end in self.bounds]

    @property
    def total(self) -> int:
        return self.bounds[-1][1]

    @property
    def mine(self) -> Tuple[int, int]:
        return self.bounds[self.group.rank]

    def owner(self, index: int) -> int:
        """The rank that holds token ``index``."""
        return next(rank for rank, (start, end) in enumerate(self.bounds)
                    if start <= index < end)
