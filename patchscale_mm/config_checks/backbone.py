"""Checks that know our backbones (PatchViT, Adventurer): the arch, the
patch grid of the inputs and of the feature pyramid, and the widths of the
necks and heads that read the features."""
import inspect
import math
from dataclasses import dataclass
from typing import Iterator, List, Optional, Tuple

from mmengine.config import Config

from patchscale_mm.models.backbones.base import PlainBackbone, resolve_arch
from patchscale_mm.models.layers import to_2tuple
from patchscale_mm.models.layers.patch_embed import check_patch_grid
from patchscale_mm.models.zoo import family_of
from .keys import registered_class
from .paths import iter_datasets

# Heads that read the backbone (or neck) features and name their width.
FEATURE_HEADS = ('head', 'decode_head', 'auxiliary_head', 'rpn_head')


@dataclass
class BackboneInfo:
    """A PatchViT / Adventurer config resolved without building it."""
    cls: type
    arch: dict
    arch_name: object
    img_size: Tuple[int, int]
    patch_size: Tuple[int, int]
    cfg: dict

    @property
    def family(self) -> str:
        return family_of(self.cls)

    def label(self) -> str:
        arch = (f"arch '{self.arch_name}'" if isinstance(self.arch_name, str)
                else f"embed_dims {self.arch['embed_dims']}, "
                f"{self.arch['num_layers']} layers")
        p = self.patch_size
        patch = p[0] if p[0] == p[1] else f'{p[0]}x{p[1]}'
        return f'{self.cls.__name__} ({arch}) at patch {patch}'


def _default(cls, name: str):
    for klass in cls.__mro__:
        init = klass.__dict__.get('__init__')
        if init is None:
            continue
        param = inspect.signature(init).parameters.get(name)
        if param is not None and param.default is not param.empty:
            return param.default
    return None


def resolve_backbone(cfg: Config,
                     registry) -> Tuple[Optional[BackboneInfo], List[str]]:
    """The backbone's arch and geometry if it is one of ours, and the
    problems found resolving them (the constructors' own one-line errors)."""
    backbone = (cfg.get('model') or {}).get('backbone')
    if not isinstance(backbone, dict):
        return None, []
    cls = registered_class(registry, backbone.get('type'))
    if not (inspect.isclass(cls) and issubclass(cls, PlainBackbone)):
        return None, []
    get = lambda name: backbone.get(name, _default(cls, name))  # noqa: E731
    problems = []
    try:
        arch = resolve_arch(get('arch'), cls.arch_zoo, cls.family)
    except (ValueError, TypeError) as e:
        problems.append(f'model.backbone.arch: {e}')
        arch = None
    try:
        check_patch_grid(get('img_size'), get('patch_size'),
                         'model.backbone.img_size')
    except (ValueError, TypeError) as e:
        message = str(e)  # names img_size already, not always patch_size
        problems.append(message if message.startswith('model.') else
                        f'model.backbone.{message}')
    if problems:
        return None, problems
    return BackboneInfo(cls, arch, get('arch'), to_2tuple(get('img_size')),
                        to_2tuple(get('patch_size')), backbone), []


def _preprocessors(cfg: Config) -> Iterator[Tuple[str, dict]]:
    for path, node in (('model.data_preprocessor',
                        (cfg.get('model') or {}).get('data_preprocessor')),
                       ('data_preprocessor', cfg.get('data_preprocessor'))):
        if isinstance(node, dict):
            yield path, node


def input_problems(cfg: Config, info: BackboneInfo) -> List[str]:
    """Training inputs that would not split into whole patches, and a
    feature pyramid that expects another stride."""
    ph, pw = info.patch_size
    problems = []
    for path, node in _preprocessors(cfg):
        if node.get('size'):
            try:
                check_patch_grid(tuple(node['size']), info.patch_size,
                                 f'{path}.size')
            except (ValueError, TypeError) as e:
                problems.append(str(e))
        divisor = node.get('pad_size_divisor')
        if divisor and (divisor % ph or divisor % pw):
            problems.append(
                f'{path}.pad_size_divisor={divisor} is not a multiple of the '
                f'patch size {ph}: padded images would not split into whole '
                f'patches; use {math.lcm(divisor, ph, pw)}')
    neck = (cfg.get('model') or {}).get('neck')
    if isinstance(neck, dict) and 'in_stride' in neck and \
            neck['in_stride'] != ph:
        problems.append(f"model.neck.in_stride={neck['in_stride']} does not "
                        f'match the backbone, whose feature map has stride '
                        f'{ph} (its patch size); set it to {ph}')
    if isinstance(neck, dict) and str(neck.get('type')).endswith(
            'MultiLevelNeck') and neck.get('scales') is not None:
        # UperNet on a plain backbone: rescale the stride-p maps to strides
        # 4, 8, 16 and 32.
        expected = [ph / stride for stride in (4, 8, 16, 32)]
        if [float(s) for s in neck['scales']] != expected:
            problems.append(
                f"model.neck.scales={list(neck['scales'])} do not turn the "
                f'backbone\'s stride-{ph} maps (its patch size) into strides '
                f'4, 8, 16, 32; set them to {expected}')
    return problems


def _widths(value) -> List[int]:
    if isinstance(value, int):
        return [value]
    if isinstance(value, (list, tuple)):
        return [v for v in value if isinstance(v, int)]
    return []


def channel_problems(cfg: Config, info: BackboneInfo) -> List[str]:
    """Neck and head input widths that differ from what feeds them."""
    model = cfg.get('model') or {}
    width = info.arch['embed_dims']
    source = f"the backbone's width {width} ({info.label()})"
    problems = []
    neck = model.get('neck')
    if isinstance(neck, dict):
        if any(w != width for w in _widths(neck.get('in_channels'))):
            problems.append(f"model.neck.in_channels={neck['in_channels']} "
                            f'does not match {source}; set it to {width}')
        if isinstance(neck.get('out_channels'), int):
            width = neck['out_channels']
            source = f'model.neck.out_channels={width}'
    for key in FEATURE_HEADS:
        heads = model.get(key)
        heads = heads if isinstance(heads, (list, tuple)) else [heads]
        for head in heads:
            if not isinstance(head, dict):
                continue
            if any(w != width for w in _widths(head.get('in_channels'))):
                problems.append(
                    f"model.{key}.in_channels={head['in_channels']} does not "
                    f'match {source}; set it to {width}')
    return problems


def train_input_size(cfg: Config, info: BackboneInfo) -> Tuple[int, int]:
    """The training input: the preprocessor's fixed size (segmentation),
    else the last crop/resize of the train pipeline, else the backbone's
    ``img_size``."""
    for _, node in _preprocessors(cfg):
        if node.get('size'):
            return tuple(node['size'])
    loader = cfg.get('train_dataloader') or {}
    pipelines = [d.get('pipeline') for _, d in iter_datasets(
        loader.get('dataset'), '')]
    for pipeline in filter(None, pipelines):
        for transform in reversed(pipeline):
            for key in ('crop_size', 'scale'):
                size = transform.get(key) if isinstance(transform,
                                                        dict) else None
                if isinstance(size, int):
                    return size, size
                if isinstance(size, (list, tuple)) and len(size) == 2 and \
                        all(isinstance(s, int) for s in size):
                    return tuple(size)
    return info.img_size
