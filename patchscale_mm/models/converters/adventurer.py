"""The Adventurer authors' checkpoints -> our :class:`Adventurer` + an
mmpretrain ``LinearClsHead``; see
``tools/model_converters/adventurer_to_patchscale.py`` for the key table and
for what it was (and was not) validated on."""
from typing import Optional, Sequence, Tuple

from ..backbones import Adventurer
from .pipeline import check_and_describe, first_shape, map_and_fit, num_layers
from .rules import (HEAD_RULES, STEM_RULES, ConversionError, StateDict,
                    key_rules)

# The authors' naming (wangf3014/Adventurer and Patch_Scaling,
# ``models_mamba.py``): blocks ``norm -> mixer``, ``norm_mlp -> mlp`` with a
# SwiGLU ``w3(silu(w1 x) * w2 x)``, the mixer with mamba_ssm ``Mamba2``'s
# names; the same math and order as ours, so every tensor is copied as is.
ADVENTURER_RULES = STEM_RULES + key_rules(
    (r'layers\.(\d+)\.norm\.weight', r'backbone.layers.\1.norm1.weight'),
    (r'layers\.(\d+)\.mixer\.(in_proj\.weight|conv1d\.weight|conv1d\.bias|'
     r'dt_bias|A_log|D|norm\.weight|out_proj\.weight)',
     r'backbone.layers.\1.mixer.\2'),
    (r'layers\.(\d+)\.norm_mlp\.weight', r'backbone.layers.\1.norm2.weight'),
    (r'layers\.(\d+)\.mlp\.(w[123])\.(weight|bias)',
     r'backbone.layers.\1.mlp.\2.\3'),
    (r'norm_f\.weight', 'backbone.norm.weight'),
) + HEAD_RULES


def convert_adventurer(state_dict: StateDict,
                       patch_size: Optional[Sequence[int]] = None,
                       img_size: Optional[Sequence[int]] = None
                       ) -> Tuple[StateDict, dict]:
    """Adventurer authors' state dict -> our ``Adventurer`` + ``head.fc``.

    The architecture (width, depth, SwiGLU width, Mamba-2 state size, head
    width, expansion, convolution width) is read from the shapes; the meta
    config sets ``flip_rule='released'``, the flipping of the authors' code.

    Args:
        state_dict (dict): Keys as in :data:`ADVENTURER_RULES`.
        patch_size (Sequence[int], optional): Resample the patch kernel to
            this size (pinv). Defaults to the checkpoint's.
        img_size (Sequence[int], optional): Resample the position embedding
            to this image size's grid. Defaults to the checkpoint's.

    Returns:
        tuple: The converted state dict and its meta information.
    """
    # The class token comes last, after the grid, in theirs and ours.
    mapped = map_and_fit(state_dict, ADVENTURER_RULES, (0, 1), patch_size,
                         img_size)
    weights = mapped.state_dict
    embed_dims = first_shape(weights, ['backbone.cls_token'])[-1]
    prefix = 'backbone.layers.0.'
    d_inner = first_shape(weights, [prefix + 'mixer.norm.weight'])[0]
    nheads = first_shape(weights, [prefix + 'mixer.A_log'])[0]
    conv_shape = first_shape(weights, [prefix + 'mixer.conv1d.weight'])
    if nheads < 1 or d_inner % nheads or d_inner % embed_dims:
        raise ConversionError(
            f'inconsistent mixer shapes: {d_inner} inner channels, {nheads} '
            f'heads, width {embed_dims} ({prefix}mixer.*)')
    # One group sharing B and C, as in the released models: the state
    # dict only tells ngroups * d_state.
    mixer_cfg = dict(
        d_state=(conv_shape[0] - d_inner) // 2,
        d_conv=conv_shape[-1],
        expand=d_inner // embed_dims,
        headdim=d_inner // nheads,
        ngroups=1)
    arch = dict(
        embed_dims=embed_dims,
        num_layers=num_layers(weights),
        mlp_dims=first_shape(weights, [prefix + 'mlp.w1.weight'])[0])
    return check_and_describe(
        mapped,
        Adventurer,
        arch,
        flip_rule='released',
        mixer_cfg=mixer_cfg)
