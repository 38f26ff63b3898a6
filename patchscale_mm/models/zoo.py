"""The model zoo by name: which backbone class a family name means, and the
widths of its archs, read from the classes themselves (``family_names``,
``arch_zoo``).

A family is named by its canonical short name (``'deit'``, ``'adventurer'``);
the aliases are the other entries of the class's ``family_names``
(``'vit'``, ``'patchvit'``, ``'adv'``). Model names are ``<family>-<arch>``,
e.g. ``'deit-b'`` or ``'adv-tiny'``.
"""
from typing import Dict, Optional, Tuple, Type, Union

from .backbones import Adventurer, PatchViT
from .backbones.base import PlainBackbone, resolve_arch

BACKBONES: Tuple[Type[PlainBackbone], ...] = (PatchViT, Adventurer)
# The archs every family has, smallest first, by their short names.
ARCHS = ('t', 's', 'b', 'l', 'h')

_BY_NAME: Dict[str, Type[PlainBackbone]] = {
    name: cls
    for cls in BACKBONES for name in cls.family_names
}
FAMILIES: Tuple[str, ...] = tuple(cls.family_names[0] for cls in BACKBONES)


def resolve_family(name: str) -> str:
    """``'vit'``, ``'PatchViT'`` or ``'deit'`` -> ``'deit'``; likewise
    ``'adv'`` -> ``'adventurer'``."""
    return backbone_class(name).family_names[0]


def backbone_class(family: str) -> Type[PlainBackbone]:
    """The backbone class of a family name or alias (case-insensitive)."""
    cls = _BY_NAME.get(family.lower())
    if cls is None:
        raise ValueError(f'unknown model family {family!r}; valid: '
                         f'{", ".join(sorted(_BY_NAME))}')
    return cls


def family_of(backbone: Union[type, PlainBackbone]) -> str:
    """The canonical family of a backbone class or instance (subclasses
    included)."""
    cls = backbone if isinstance(backbone, type) else type(backbone)
    for base in BACKBONES:
        if issubclass(cls, base):
            return base.family_names[0]
    raise ValueError(f'{cls.__name__} is not a backbone of the model zoo '
                     f'({", ".join(c.__name__ for c in BACKBONES)})')


def arch_dims(family: str, arch: Union[str, dict]) -> dict:
    """The widths and depth of ``arch`` (a zoo name or a custom dict)."""
    cls = backbone_class(family)
    return resolve_arch(arch, cls.arch_zoo, cls.family)


def arch_name(family: str, dims: dict) -> Optional[str]:
    """The first zoo name whose entry has all of ``dims``; None for a custom
    arch."""
    for name, zoo_dims in backbone_class(family).arch_zoo.items():
        if all(zoo_dims.get(k) == v for k, v in dims.items()):
            return name
    return None


def parse_model_name(name: str) -> Tuple[str, str]:
    """``'deit-b'`` -> ``('deit', 'b')``; ``'adv-base'`` ->
    ``('adventurer', 'base')``."""
    family, sep, arch = name.rpartition('-')
    if not sep or not family:
        raise ValueError(f'model name {name!r} is not <family>-<arch>, '
                         "e.g. 'deit-b' or 'adventurer-t'")
    return resolve_family(family), arch
