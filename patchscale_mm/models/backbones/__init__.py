from .adventurer import Adventurer
from .vit import PatchViT

__all__ = ['Adventurer', 'PatchViT']
