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
# exactly the reverse order of forward, on every rank.
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


def gather_tokens(x: torch.Tensor, shards: 'TokenShards',
                  dim: int = 1) -> torch.Tensor:
    """The whole sequence from every rank's shard (``shards.lengths``
    tokens along ``dim``), on every rank (padded to the longest shard for
    the gather)."""
    lengths = shards.lengths
    pad = max(lengths) - x.shape[dim]
    if pad:
        shape = list(x.shape)
        shape[dim] = pad
        x = torch.cat([x, x.new_zeros(shape)], dim=dim)
    parts = all_gather(x, shards)
    return torch.cat(
        [part.narrow(dim, 0, n) for part, n in zip(parts, lengths)], dim=dim)


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


def owner_to_all(x: torch.Tensor, owner: int,
                 shards: 'TokenShards') -> torch.Tensor:
    """The owner rank's ``x`` on every rank of the group (the others pass a
    tensor of the same shape and dtype); gradients flow back to the
    owner."""
    if shards.group.rank != owner:
        x = _ZerosLike.apply(x)
    return all_reduce_sum(x, shards)


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
