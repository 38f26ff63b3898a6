"""timm ``VisionTransformer`` (ViT, DeiT, DeiT III) -> :class:`PatchViT` +
an mmpretrain ``LinearClsHead``."""
import re
from typing import Optional, Sequence, Tuple

from ..backbones import PatchViT
from ..zoo import arch_name, family_of
from .pipeline import check_and_describe, first_shape, map_and_fit, num_layers
from .rules import (HEAD_RULES, STEM_RULES, StateDict, check_unsupported,
                    key_rules)

# timm VisionTransformer (and facebookresearch/deit, which is built on it).
TIMM_VIT_RULES = STEM_RULES + key_rules(
    (r'blocks\.(\d+)\.norm1\.(weight|bias)', r'backbone.layers.\1.ln1.\2'),
    (r'blocks\.(\d+)\.attn\.(qkv|proj)\.(weight|bias)',
     r'backbone.layers.\1.attn.\2.\3'),
    (r'blocks\.(\d+)\.norm2\.(weight|bias)', r'backbone.layers.\1.ln2.\2'),
    (r'blocks\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)',
     r'backbone.layers.\1.mlp.\2.\3'),
    (r'norm\.(weight|bias)', r'backbone.norm.\1'),
) + HEAD_RULES

# timm variants that PatchViT cannot represent, with the reason.
TIMM_VIT_UNSUPPORTED = (
    (r'dist_token|head_dist\..*',
     'a distilled DeiT (dist_token, head_dist): it has a second extra token '
     'that PatchViT has not, and dropping it changes every output; convert '
     'the non-distilled model (e.g. deit_base_patch16_224) instead'),
    (r'reg_token', 'a ViT with register tokens (reg_token), which PatchViT '
     'has not'),
    (r'fc_norm\..*', 'an average-pooled ViT (fc_norm); PatchViT reads the '
     'class token'),
    (r'blocks\.\d+\.attn\.[qk]_norm\..*', 'a ViT with qk-norm, which '
     'PatchViT has not'),
)

# Layer scale (DeiT III) is a per-channel factor on a branch's last linear
# layer, so it folds into that layer exactly: gamma * (W x + b).
_LAYER_SCALE = (
    (r'blocks\.(\d+)\.(?:ls1\.gamma|gamma_1)', r'blocks.\1.attn.proj'),
    (r'blocks\.(\d+)\.(?:ls2\.gamma|gamma_2)', r'blocks.\1.mlp.fc2'),
)


def fold_layer_scale(state_dict: StateDict) -> Tuple[StateDict, int]:
    """Folds timm/DeiT III layer scale (``ls1.gamma``/``gamma_1``,
    ``ls2.gamma``/``gamma_2``) into the linear layer before it.

    A gamma whose linear layer is missing is left in place, so that it is
    reported as unmapped.

    Returns:
        tuple: A new state dict and the number of factors folded.
    """
    out, folded = dict(state_dict), 0
    for key, gamma in state_dict.items():
        for pattern, layer in _LAYER_SCALE:
            match = re.fullmatch(pattern, key)
            if match is None:
                continue
            weight_key = match.expand(layer) + '.weight'
            bias_key = match.expand(layer) + '.bias'
            if weight_key not in out:
                break
            out[weight_key] = out[weight_key] * gamma[:, None]
            if bias_key in out:
                out[bias_key] = out[bias_key] * gamma
            del out[key]
            folded += 1
    return out, folded


def convert_timm_vit(state_dict: StateDict,
                     patch_size: Optional[Sequence[int]] = None,
                     img_size: Optional[Sequence[int]] = None,
                     num_heads: Optional[int] = None
                     ) -> Tuple[StateDict, dict]:
    """timm ``VisionTransformer`` state dict -> ``PatchViT`` + ``head.fc``.

    DeiT III's layer scale is folded into the linear layers and its position
    embedding (no class-token entry) gets a zero entry: the same function.
    Distilled DeiT, register tokens, average pooling and qk-norm are
    rejected.

    Args:
        state_dict (dict): timm keys (``blocks.0.attn.qkv.weight``, ...).
        patch_size (Sequence[int], optional): Resample the patch kernel to
            this size (pinv). Defaults to the checkpoint's.
        img_size (Sequence[int], optional): Resample the position embedding
            to this image size's grid. Defaults to the checkpoint's.
        num_heads (int, optional): Attention heads, recorded in the meta
            config (a state dict does not tell them). Defaults to the arch
            zoo's entry of the same width and depth, else width / 64.

    Returns:
        tuple: The converted state dict and its meta information.
    """
    check_unsupported(state_dict, TIMM_VIT_UNSUPPORTED)
    state_dict, folded = fold_layer_scale(state_dict)
    # timm's position embedding holds the class token's entry first.
    mapped = map_and_fit(state_dict, TIMM_VIT_RULES, (1, 0), patch_size,
                         img_size)
    if folded:
        mapped.notes.append(f'layer scale folded into {folded} linear layers')
    weights = mapped.state_dict
    embed_dims = first_shape(weights, ['backbone.cls_token'])[-1]
    arch = dict(
        embed_dims=embed_dims,
        num_layers=num_layers(weights),
        mlp_dims=first_shape(weights,
                             ['backbone.layers.0.mlp.fc1.weight'])[0])
    zoo = arch_name(family_of(PatchViT), arch)
    arch['num_heads'] = num_heads or (PatchViT.arch_zoo[zoo]['num_heads']
                                      if zoo else max(embed_dims // 64, 1))
    return check_and_describe(
        mapped,
        PatchViT,
        arch,
        qkv_bias='backbone.layers.0.attn.qkv.bias' in weights)
