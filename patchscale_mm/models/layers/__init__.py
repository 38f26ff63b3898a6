from .attention import Attention
from .drop_path import DropPath
from .mamba2 import GatedRMSNorm, Mamba2Mixer
from .mlp import Mlp
from .patch_embed import PatchEmbed, resample_patch_embed, to_2tuple
from .pos_embed import resample_abs_pos_embed, resize_token_grid

__all__ = [
    'Attention', 'DropPath', 'GatedRMSNorm', 'Mamba2Mixer', 'Mlp', 'PatchEmbed', 'to_2tuple',
    'resample_patch_embed', 'resample_abs_pos_embed', 'resize_token_grid'
]
