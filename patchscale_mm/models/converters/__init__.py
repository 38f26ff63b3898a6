"""Checkpoints of other code bases -> this repository's backbones.

Two sources are supported, each as a list of key rules (a regular expression
over the source key and the target key(s) it becomes), so that a naming
difference is corrected in one place:

* :data:`TIMM_VIT_RULES` (:mod:`.timm_vit`): timm ``VisionTransformer``
  (ViT, DeiT, DeiT III) -> :class:`PatchViT` + an mmpretrain
  ``LinearClsHead``.
* :data:`ADVENTURER_RULES` (:mod:`.adventurer`): the Adventurer authors'
  naming -> our :class:`Adventurer`.

A conversion loads the file weights-only and unwraps it (:mod:`.files`),
maps every key (:mod:`.rules`), fits the geometry (optionally to another
patch size or image size, with the same functions the backbones use on
load) and checks names and shapes against a backbone built from the
inferred architecture on the meta device (:mod:`.pipeline`), so that every
problem is one :class:`ConversionError` line naming the keys, raised before
anything is written. The output is an mmpretrain-style checkpoint
``{'state_dict': {'backbone.*', 'head.fc.*'}, 'meta': {...}}`` for
``load_from`` or ``init_cfg=dict(type='Pretrained', prefix='backbone.')``;
:mod:`.cli` converts a file by source name and is the scripts' command line.
"""
from .adventurer import ADVENTURER_RULES, convert_adventurer
from .cli import (CONVERTERS, RULES, convert_file, converter_main,
                  describe_mapping)
from .files import (WRAPPER_KEYS, load_source_state_dict, save_checkpoint,
                    unwrap_state_dict)
from .pipeline import fit_geometry
from .rules import (ConversionError, KeyRule, StateDict, check_against,
                    check_unsupported, map_keys, name_keys)
from .timm_vit import (TIMM_VIT_RULES, TIMM_VIT_UNSUPPORTED, convert_timm_vit,
                       fold_layer_scale)

__all__ = [
    'ADVENTURER_RULES', 'CONVERTERS', 'ConversionError', 'KeyRule', 'RULES',
    'StateDict', 'TIMM_VIT_RULES', 'TIMM_VIT_UNSUPPORTED', 'WRAPPER_KEYS',
    'check_against', 'check_unsupported', 'convert_adventurer',
    'convert_file', 'convert_timm_vit', 'converter_main', 'describe_mapping',
    'fit_geometry', 'fold_layer_scale', 'load_source_state_dict', 'map_keys',
    'name_keys', 'save_checkpoint', 'unwrap_state_dict'
]
