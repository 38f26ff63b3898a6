"""The transformer MLP."""
import torch
from torch import nn


class Mlp(nn.Module):
    """``fc2(drop(act(fc1(x))))`` then dropout, the transformer's channel
    mixer, with timm's and mmpretrain's parameter names (``fc1``, ``fc2``).

    Args:
        embed_dims (int): Input and output width.
        hidden_dims (int): Hidden width.
        drop (float): Dropout after the activation and after ``fc2``.
            Defaults to 0.
    """

    def __init__(self, embed_dims: int, hidden_dims: int, drop: float = 0.):
        super().__init__()
        self.fc1 = nn.Linear(embed_dims, hidden_dims)
        self.act = nn.GELU()
        self.drop = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_dims, embed_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))

