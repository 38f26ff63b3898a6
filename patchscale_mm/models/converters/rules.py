"""Key rules: a regular expression over a source key and the target key it
becomes, and the checks that name every key a conversion could not place."""
import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from patchscale_mm.engine.checkpoint_io import CheckpointError

StateDict = Dict[str, torch.Tensor]


class ConversionError(CheckpointError):
    """A source checkpoint that cannot be converted (one line)."""


@dataclass(frozen=True)
class KeyRule:
    """``pattern`` (full match on a source key) -> ``target``, a
    ``re.Match.expand`` template (``\\1`` = first group)."""
    pattern: str
    target: str

    def apply(self, key: str) -> Optional[str]:
        match = re.fullmatch(self.pattern, key)
        return None if match is None else match.expand(self.target)


def key_rules(*pairs: Tuple[str, str]) -> Tuple[KeyRule, ...]:
    """``(pattern, target)`` pairs -> :class:`KeyRule` s, in order."""
    return tuple(KeyRule(p, t) for p, t in pairs)


# Both sources name the stem and the classifier as timm does, and both of
# our backbones share PlainBackbone's stem and mmpretrain's LinearClsHead.
STEM_RULES = key_rules(
    (r'patch_embed\.proj\.(weight|bias)',
     r'backbone.patch_embed.projection.\1'),
    (r'cls_token', 'backbone.cls_token'),
    (r'pos_embed', 'backbone.pos_embed'),
)
HEAD_RULES = key_rules((r'head\.(weight|bias)', r'head.fc.\1'))


def name_keys(keys: Sequence[str], limit: int = 5) -> str:
    """``'a, b, c (+7 more)'``: the first few keys and how many others."""
    keys = list(keys)
    shown = ', '.join(keys[:limit])
    return shown + (f' (+{len(keys) - limit} more)'
                    if len(keys) > limit else '')


def map_keys(state_dict: StateDict, rules: Sequence[KeyRule]
             ) -> Tuple[StateDict, Dict[str, str], List[str]]:
    """Applies the first matching rule to every key.

    Returns:
        tuple: The mapped state dict, target -> source key, and the source
        keys no rule matched.

    Raises:
        ConversionError: If two source keys map to the same target.
    """
    mapped, sources, unmatched = OrderedDict(), {}, []
    for key, value in state_dict.items():
        targets = (rule.apply(key) for rule in rules)
        target = next((t for t in targets if t is not None), None)
        if target is None:
            unmatched.append(key)
            continue
        if target in mapped:
            raise ConversionError(f'{sources[target]} and {key} both map '
                                  f'to {target}')
        mapped[target], sources[target] = value, key
    return mapped, sources, unmatched


def check_unsupported(state_dict: StateDict,
                      unsupported: Sequence[Tuple[str, str]]) -> None:
    """Raises one line if a key marks a model variant that cannot be
    converted."""
    for pattern, reason in unsupported:
        keys = [k for k in state_dict if re.fullmatch(pattern, k)]
        if keys:
            raise ConversionError(f'cannot convert {reason} (keys: '
                                  f'{name_keys(keys)})')


def check_against(mapped: StateDict, sources: Dict[str, str],
                  reference: Dict[str, torch.Tensor],
                  unmatched: Sequence[str] = ()) -> None:
    """Compares mapped keys and shapes with a reference state dict.

    Raises:
        ConversionError: One line naming the unmatched source keys, or else
            the missing, unexpected or wrongly shaped target keys (each with
            the source key it came from).
    """
    if unmatched:
        raise ConversionError(f'{len(unmatched)} unexpected source keys (no '
                              f'mapping rule): {name_keys(unmatched)}')
    missing = [k for k in reference if k not in mapped]
    if missing:
        raise ConversionError(f'{len(missing)} keys missing after mapping: '
                              f'{name_keys(missing)}')
    unexpected = [f'{k} (from {sources.get(k, k)})' for k in mapped
                  if k not in reference]
    if unexpected:
        raise ConversionError(f'{len(unexpected)} unexpected keys after '
                              f'mapping: {name_keys(unexpected)}')
    wrong = [
        f'{k} (from {sources.get(k, k)}) is {tuple(v.shape)}, expected '
        f'{tuple(reference[k].shape)}' for k, v in mapped.items()
        if tuple(v.shape) != tuple(reference[k].shape)
    ]
    if wrong:
        raise ConversionError(f'{len(wrong)} keys with wrong shapes after '
                              f'mapping: {name_keys(wrong, 3)}')
