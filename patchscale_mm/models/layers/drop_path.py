"""Stochastic depth: drop a whole residual branch per sample."""
import torch
from torch import nn


class DropPath(nn.Module):
    """Zeroes the branch for a random ``drop_prob`` fraction of the samples
    in training and rescales the rest, so the expectation is unchanged."""

    def __init__(self, drop_prob: float = 0.):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_prob == 0.:
            return x
        keep = 1. - self.drop_prob
        mask = x.new_empty((x.shape[0], ) + (1, ) * (x.dim() - 1))
        return x * mask.bernoulli_(keep) / keep

    def extra_repr(self) -> str:
        return f'drop_prob={self.drop_prob}'
