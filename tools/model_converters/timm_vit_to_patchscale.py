"""timm ViT / DeiT / DeiT III checkpoint -> PatchViT (mmpretrain layout).

Usage::

    python tools/model_converters/timm_vit_to_patchscale.py \
        deit_base_patch16_224.pth deit-b-p16_converted.pth
    # the same weights for a p8 model at 224 px (patch kernel pinv-resampled)
    python tools/model_converters/timm_vit_to_patchscale.py \
        deit_base_patch16_224.pth deit-b-p8_converted.pth --patch-size 8
    python tools/model_converters/timm_vit_to_patchscale.py SRC --dry-run

The output is ``{'state_dict': {'backbone.*', 'head.fc.*'}, 'meta': ...}``,
written atomically, for ``load_from`` or ``init_cfg=dict(type='Pretrained',
checkpoint=..., prefix='backbone.')``; ``meta['backbone']`` is the matching
``backbone`` config. The input is loaded with ``weights_only=True`` (a raw
state dict or one under 'state_dict', 'model', 'module', 'model_ema').

Key mapping (rules: ``TIMM_VIT_RULES`` in
``patchscale_mm/models/converters/timm_vit.py``):

=================================  ==========================================
timm                               patchscale_mm
=================================  ==========================================
patch_embed.proj.{weight,bias}     backbone.patch_embed.projection.*
cls_token, pos_embed               backbone.cls_token, backbone.pos_embed
blocks.i.norm1.*                   backbone.layers.i.ln1.*
blocks.i.attn.{qkv,proj}.*         backbone.layers.i.attn.{qkv,proj}.*
blocks.i.norm2.*                   backbone.layers.i.ln2.*
blocks.i.mlp.{fc1,fc2}.*           backbone.layers.i.mlp.{fc1,fc2}.*
norm.*                             backbone.norm.*
head.*                             head.fc.* (mmpretrain ``LinearClsHead``)
blocks.i.ls1.gamma / ls2.gamma     folded into attn.proj / mlp.fc2 (DeiT III;
                                   also named gamma_1 / gamma_2)
=================================  ==========================================

A position embedding without the class-token entry (DeiT III) gets a zero
entry, which is the same model. Distilled DeiT (``dist_token``,
``head_dist``), register tokens, average pooling (``fc_norm``) and qk-norm
are rejected with one line: PatchViT has no place for them. The number of
heads is not in a state dict: pass ``--num-heads`` for non-zoo widths.
"""
import sys

from patchscale_mm.models.converters import converter_main

if __name__ == '__main__':
    sys.exit(converter_main('timm_vit', __doc__))
