from .attention import Attention
from .drop_path import DropPath
from .mamba2 import Mamba2Mixer
from .mlp import Mlp, SwiGLU
from .norm import GatedRMSNorm, RMSNorm
from .patch_embed import PatchEmbed, resample_patch_embed, to_2tuple
from .pos_embed import resample_abs_pos_embed, resize_token_grid

__all__ = [
    'Attention', 'DropPath', 'GatedRMSNorm', 'Mamba2Mixer', 'Mlp', 'PatchEmbed', 'RMSNorm',
    'SwiGLU', 'to_2tuple', 'resample_patch_embed', 'resample_abs_pos_embed', 'resize_token_grid'
]
