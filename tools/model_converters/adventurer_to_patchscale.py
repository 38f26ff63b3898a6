"""Adventurer checkpoint (the authors' naming) -> our Adventurer.

Usage::

    python tools/model_converters/adventurer_to_patchscale.py \
        adventurer_base_patch16_224.pth adventurer-b-p16_converted.pth
    python tools/model_converters/adventurer_to_patchscale.py SRC --dry-run
    # resample to patch 8 at 224 px, or to another input size
    python tools/model_converters/adventurer_to_patchscale.py SRC DST \
        --patch-size 8 --img-size 224

Output, loading and options as in ``timm_vit_to_patchscale.py``. The meta
config (``meta['backbone']``) sets ``flip_rule='released'``: the authors'
code flips the scan only in layers 2 and 3 (see ``is_flipped`` in
``patchscale_mm/models/backbones/adventurer.py``), and a converted model must
scan as it was trained. Architecture sizes (width, depth, SwiGLU width,
Mamba-2 d_state, headdim, expand, d_conv) are read from the tensor shapes;
one B/C group is assumed.

Key mapping (rules: ``ADVENTURER_RULES`` in
``patchscale_mm/models/converters.py``; correct them there):

==================================  =========================================
source (assumed official naming)    patchscale_mm
==================================  =========================================
patch_embed.proj.{weight,bias}      backbone.patch_embed.projection.*
cls_token                           backbone.cls_token
pos_embed (class token LAST)        backbone.pos_embed
layers.i.norm.weight (or norm1)     backbone.layers.i.norm1.weight
layers.i.mixer.in_proj.weight       backbone.layers.i.mixer.in_proj.weight
layers.i.mixer.conv1d.{weight,bias} backbone.layers.i.mixer.conv1d.*
layers.i.mixer.{dt_bias,A_log,D}    backbone.layers.i.mixer.{dt_bias,A_log,D}
layers.i.mixer.norm.weight          backbone.layers.i.mixer.norm.weight
layers.i.mixer.out_proj.weight      backbone.layers.i.mixer.out_proj.weight
layers.i.norm2.weight               backbone.layers.i.norm2.weight
layers.i.mlp.fc1.* (fused)          first half -> mlp.w2.*, second -> mlp.w1.*
layers.i.mlp.fc1_g.* / fc1_x.*      backbone.layers.i.mlp.w1.* / mlp.w2.*
layers.i.mlp.fc2.*                  backbone.layers.i.mlp.w3.*
norm_f.weight                       backbone.norm.weight
head.{weight,bias}                  head.fc.*
==================================  =========================================

The mixer names are those of mamba_ssm's ``Mamba2`` (in_proj = [z, x, B, C,
dt], the gated RMSNorm applied after the gate), which the authors' code uses
and ours follows, so the mixer tensors are copied unchanged. The fused
``fc1`` follows mamba_ssm's ``GatedMLP`` (``value, gate = fc1(x).chunk(2)``,
``fc2(value * silu(gate))``); ours computes ``w3(silu(w1 x) * w2 x)``.

Provenance: official checkpoints could not be downloaded where this was
written. The block, MLP and final-norm names above are derived from the
mamba_ssm module names the authors' code is built on, and the converter was
validated on synthetic checkpoints with that naming (our model written
under it and converted back gives identical tensors and outputs), NOT on a
downloaded official file. Run ``--dry-run`` on a real checkpoint first: it
lists every source key with its target and the keys no rule matches; fix
``ADVENTURER_RULES`` if any remain.
"""
import sys

from patchscale_mm.models.converters import converter_main

if __name__ == '__main__':
    sys.exit(converter_main('adventurer', __doc__))
