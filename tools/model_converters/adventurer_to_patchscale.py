"""Adventurer checkpoint (the authors' naming) -> our Adventurer.

Usage::

    python tools/model_converters/adventurer_to_patchscale.py \
        adventurer_base_patch16_224.pth adventurer-b-p16_converted.pth
    python tools/model_converters/adventurer_to_patchscale.py SRC --dry-run
    # resample to patch 8 at 224 px, or to another input size
    python tools/model_converters/adventurer_to_patchscale.py SRC DST \
        --patch-size 8 --img-size 224

Output, loading and options as in ``timm_vit_to_patchscale.py``. The source
may be a released checkpoint or a training checkpoint of the authors' code
(``{'model', 'optimizer', ..., 'args'}``; ``'model'`` is read, and the
``argparse.Namespace`` under ``'args'`` is the one non-tensor class that the
weights-only loader accepts). The meta config (``meta['backbone']``) sets
``flip_rule='released'``: the authors' code flips the scan only in layers 2
and 3 (``flip = (n // 2 == 1)``), and a converted model must scan as it was
trained. Architecture sizes (width, depth, SwiGLU width, Mamba-2 d_state,
headdim, expand, d_conv) are read from the tensor shapes; one B/C group is
assumed, as in every released model.

Key mapping (rules: ``ADVENTURER_RULES`` in
``patchscale_mm/models/converters/adventurer.py``), read from the authors'
model code (``wangf3014/Adventurer`` and ``wangf3014/Patch_Scaling``,
``models_mamba.py``; the key lists of the released Tiny/Small/Base models are
test data in ``tests/data/adventurer_official_keys.json``):

==================================  =========================================
source (authors' code)              patchscale_mm
==================================  =========================================
patch_embed.proj.{weight,bias}      backbone.patch_embed.projection.*
cls_token                           backbone.cls_token
pos_embed (class token LAST)        backbone.pos_embed
layers.i.norm.weight                backbone.layers.i.norm1.weight
layers.i.mixer.in_proj.weight       backbone.layers.i.mixer.in_proj.weight
layers.i.mixer.conv1d.{weight,bias} backbone.layers.i.mixer.conv1d.*
layers.i.mixer.{dt_bias,A_log,D}    backbone.layers.i.mixer.{dt_bias,A_log,D}
layers.i.mixer.norm.weight          backbone.layers.i.mixer.norm.weight
layers.i.mixer.out_proj.weight      backbone.layers.i.mixer.out_proj.weight
layers.i.norm_mlp.weight            backbone.layers.i.norm2.weight
layers.i.mlp.w{1,2,3}.*             backbone.layers.i.mlp.w{1,2,3}.*
norm_f.weight                       backbone.norm.weight
head.{weight,bias}                  head.fc.*
==================================  =========================================

Both codes compute the same block: RMSNorm, patch tokens reversed in flipped
layers (class token kept last), the mean of all tokens prepended ("heading
average"), Mamba-2 (in_proj = [z, x, B, C, dt], causal conv + SiLU, SSD scan,
RMSNorm(y * silu(z)) per group), un-flip, residual; RMSNorm, SwiGLU
``w3(silu(w1 x) * w2 x)``, residual; the final norm and the class token.
The test suite compares the logits of a converted model with an independent
re-implementation of that forward.
"""
import sys

from patchscale_mm.models.converters import converter_main

if __name__ == '__main__':
    sys.exit(converter_main('adventurer', __doc__))
