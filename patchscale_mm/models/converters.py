"""Checkpoints of other code bases -> this repository's backbones.

Two sources are supported, each as a list of key rules (a regular expression
over the source key and the target key(s) it becomes), so that a naming
difference is corrected in one place:

* :data:`TIMM_VIT_RULES`: timm ``VisionTransformer`` (ViT, DeiT, DeiT III)
  -> :class:`PatchViT` + an mmpretrain ``LinearClsHead``.
* :data:`ADVENTURER_RULES`: the Adventurer authors' naming -> our
  :class:`Adventurer`; see
  ``tools/model_converters/adventurer_to_patchscale.py`` for the table and
  for what it was (and was not) validated on.

A conversion loads the file weights-only, unwraps it, maps every key, fits
the geometry (optionally to another patch size or image size, with the same
functions the backbones use on load), and checks names and shapes against a
backbone built from the inferred architecture on the meta device, so that
every problem is one :class:`ConversionError` line naming the keys, raised
before anything is written. The output is an mmpretrain-style checkpoint
``{'state_dict': {'backbone.*', 'head.fc.*'}, 'meta': {...}}`` for
``load_from`` or ``init_cfg=dict(type='Pretrained', prefix='backbone.')``.
"""
import argparse
import io
import os.path as osp
import pickle
import re
import sys
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from patchscale_mm.engine.checkpoint_io import (CheckpointError,
                                                UnsafeCheckpointError,
                                                atomic_write,
                                                check_checkpoint_file,
                                                data_only_classes_allowed)
from patchscale_mm.registry import MODELS
from .backbones import Adventurer, PatchViT
from .backbones.checkpoint_filter import (adapt_patch_embed, adapt_pos_embed,
                                          checkpoint_pos_grid)
from .layers import to_2tuple
from .layers.patch_embed import check_patch_grid
from .zoo import arch_name, family_of

StateDict = Dict[str, torch.Tensor]
# Checked in this order when a file holds a wrapper rather than the weights;
# the EMA weights only when asked for (``key='model_ema'``) or when alone.
WRAPPER_KEYS = ('state_dict', 'model', 'module', 'model_ema')


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


def _rules(*pairs) -> Tuple[KeyRule, ...]:
    return tuple(KeyRule(p, t) for p, t in pairs)


# timm VisionTransformer (and facebookresearch/deit, which is built on it).
TIMM_VIT_RULES = _rules(
    (r'patch_embed\.proj\.(weight|bias)',
     r'backbone.patch_embed.projection.\1'),
    (r'cls_token', 'backbone.cls_token'),
    (r'pos_embed', 'backbone.pos_embed'),
    (r'blocks\.(\d+)\.norm1\.(weight|bias)', r'backbone.layers.\1.ln1.\2'),
    (r'blocks\.(\d+)\.attn\.(qkv|proj)\.(weight|bias)',
     r'backbone.layers.\1.attn.\2.\3'),
    (r'blocks\.(\d+)\.norm2\.(weight|bias)', r'backbone.layers.\1.ln2.\2'),
    (r'blocks\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)',
     r'backbone.layers.\1.mlp.\2.\3'),
    (r'norm\.(weight|bias)', r'backbone.norm.\1'),
    (r'head\.(weight|bias)', r'head.fc.\1'),
)

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

# The Adventurer authors' naming (wangf3014/Adventurer and Patch_Scaling,
# ``models_mamba.py``): blocks ``norm -> mixer``, ``norm_mlp -> mlp`` with a
# SwiGLU ``w3(silu(w1 x) * w2 x)``, the mixer with mamba_ssm ``Mamba2``'s
# names; the same math and order as ours, so every tensor is copied as is.
ADVENTURER_RULES = _rules(
    (r'patch_embed\.proj\.(weight|bias)',
     r'backbone.patch_embed.projection.\1'),
    (r'cls_token', 'backbone.cls_token'),
    (r'pos_embed', 'backbone.pos_embed'),
    (r'layers\.(\d+)\.norm\.weight', r'backbone.layers.\1.norm1.weight'),
    (r'layers\.(\d+)\.mixer\.(in_proj\.weight|conv1d\.weight|conv1d\.bias|'
     r'dt_bias|A_log|D|norm\.weight|out_proj\.weight)',
     r'backbone.layers.\1.mixer.\2'),
    (r'layers\.(\d+)\.norm_mlp\.weight', r'backbone.layers.\1.norm2.weight'),
    (r'layers\.(\d+)\.mlp\.(w[123])\.(weight|bias)',
     r'backbone.layers.\1.mlp.\2.\3'),
    (r'norm_f\.weight', 'backbone.norm.weight'),
    (r'head\.(weight|bias)', r'head.fc.\1'),
)


# ---------------------------------------------------------------------------
# Reading the source
# ---------------------------------------------------------------------------
def name_keys(keys: Sequence[str], limit: int = 5) -> str:
    """``'a, b, c (+7 more)'``: the first few keys and how many others."""
    keys = list(keys)
    shown = ', '.join(keys[:limit])
    return shown + (f' (+{len(keys) - limit} more)'
                    if len(keys) > limit else '')


def unwrap_state_dict(obj, key: Optional[str] = None,
                      what: str = 'checkpoint') -> Tuple[StateDict, str]:
    """The state dict inside a loaded checkpoint, and where it was.

    Accepts a raw state dict or one under ``'state_dict'``, ``'model'``,
    ``'module'`` or ``'model_ema'`` (checked in that order; ``key`` picks one
    explicitly). A ``'module.'`` prefix on every key (DistributedDataParallel)
    is removed.

    Returns:
        tuple: The state dict and a description such as ``"'model'"`` or
        ``'raw state dict'``.

    Raises:
        ConversionError: If there is no dict of tensors where expected.
    """
    if not isinstance(obj, Mapping):
        raise ConversionError(
            f'{what} holds a {type(obj).__name__}, not a state dict (a dict '
            f'of tensors, raw or under {"/".join(map(repr, WRAPPER_KEYS))})')
    if key is not None:
        if key not in obj:
            raise ConversionError(f'{what} has no {key!r} entry; top-level '
                                  f'keys: {name_keys(sorted(map(str, obj)))}')
        found, where = obj[key], repr(key)
    else:
        wrapper = next((k for k in WRAPPER_KEYS
                        if isinstance(obj.get(k), Mapping)), None)
        found, where = ((obj[wrapper], repr(wrapper)) if wrapper else
                        (obj, 'raw state dict'))
    if not isinstance(found, Mapping) or not found:
        raise ConversionError(f'{what} entry {where} is not a state dict '
                              f'(got {type(found).__name__})')
    not_tensors = [str(k) for k, v in found.items()
                   if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ConversionError(
            f'{what} ({where}) is not a state dict: {len(not_tensors)} '
            f'entries are not tensors: {name_keys(not_tensors)}')
    state_dict = dict(found)
    if all(k.startswith('module.') for k in state_dict):
        state_dict = {k[len('module.'):]: v for k, v in state_dict.items()}
        where += ", 'module.' prefix removed"
    return state_dict, where


def load_source_state_dict(path: str,
                           key: Optional[str] = None) -> Tuple[StateDict, str]:
    """Loads ``path`` weights-only and unwraps it (see
    :func:`unwrap_state_dict`).

    Raises:
        CheckpointError: If the file is missing, truncated or would run code
            when unpickled (:class:`UnsafeCheckpointError`).
        ConversionError: If it holds no state dict.
    """
    check_checkpoint_file(path, 'source checkpoint')
    try:
        with data_only_classes_allowed():
            obj = torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:
        last = str(e).strip().splitlines()[0]
        raise UnsafeCheckpointError(
            f'refusing to load source checkpoint {path} weights-only '
            f'({last}); if you trust the file, re-save its state_dict as '
            'plain tensors') from None
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(f'cannot read source checkpoint {path}: '
                              f'{str(e).splitlines()[0]}') from None
    return unwrap_state_dict(obj, key, f'source checkpoint {path}')


# ---------------------------------------------------------------------------
# Mapping keys
# ---------------------------------------------------------------------------
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
        target = next((t for t in (r.apply(key) for r in rules) if t is not None),
                      None)
        if target is None:
            unmatched.append(key)
            continue
        if target in mapped:
            raise ConversionError(f'{sources[target]} and {key} both map '
                                  f'to {target}')
        mapped[target], sources[target] = value, key
    return mapped, sources, unmatched


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


def _first_shape(mapped: StateDict, keys: Sequence[str]) -> torch.Size:
    for key in keys:
        if key in mapped:
            return mapped[key].shape
    raise ConversionError(f'cannot infer the architecture: missing keys '
                          f'{name_keys(list(keys))}')


def _num_layers(mapped: StateDict) -> int:
    indices = [int(m.group(1)) for k in mapped
               for m in [re.match(r'backbone\.layers\.(\d+)\.', k)] if m]
    if not indices:
        raise ConversionError('no blocks found after mapping '
                              '(backbone.layers.*)')
    return max(indices) + 1


# ---------------------------------------------------------------------------
# Geometry (shared by both sources)
# ---------------------------------------------------------------------------
def fit_geometry(mapped: StateDict,
                 num_extra_tokens: Tuple[int, int],
                 patch_size: Optional[Sequence[int]] = None,
                 img_size: Optional[Sequence[int]] = None
                 ) -> Tuple[Tuple[int, int], Tuple[int, int], List[str]]:
    """Fits ``pos_embed`` and the patch kernel of a mapped state dict (in
    place) to a patch size and image size.

    Without ``patch_size`` the checkpoint's kernel size is kept; without
    ``img_size`` the checkpoint's image size (grid x its patch size) is kept,
    so ``patch_size`` alone means "same images, smaller patches". A position
    embedding without the class-token entry gets a zero one.

    Returns:
        tuple: (patch size, image size, notes of what changed).
    """
    pos_key = 'backbone.pos_embed'
    kernel_key = 'backbone.patch_embed.projection.weight'
    for key, ndim in ((pos_key, 3), (kernel_key, 4)):
        if key not in mapped:
            raise ConversionError(f'1 keys missing after mapping: {key}')
        if mapped[key].dim() != ndim:
            raise ConversionError(
                f'1 keys with wrong shapes after mapping: {key} is '
                f'{tuple(mapped[key].shape)}, expected {ndim} dimensions')
    old_patch = tuple(mapped[kernel_key].shape[-2:])
    try:
        old_grid, _ = checkpoint_pos_grid(mapped[pos_key].shape[1],
                                          num_extra_tokens, (1, 1))
        new_patch = to_2tuple(patch_size or old_patch, 'patch_size')
        new_img = to_2tuple(
            img_size or (old_grid[0] * old_patch[0],
                         old_grid[1] * old_patch[1]), 'img_size')
        new_grid = check_patch_grid(new_img, new_patch, 'img_size')
        mapped[pos_key], pos_note = adapt_pos_embed(mapped[pos_key],
                                                    new_grid, num_extra_tokens)
    except ValueError as e:
        raise ConversionError(str(e)) from None
    mapped[kernel_key], kernel_note = adapt_patch_embed(
        mapped[kernel_key], new_patch)
    return new_patch, new_img, [n for n in (pos_note, kernel_note) if n]


def _head_reference(mapped: StateDict,
                    embed_dims: int) -> Dict[str, torch.Tensor]:
    """Reference shapes of ``head.fc`` when the source has a head."""
    if 'head.fc.weight' not in mapped and 'head.fc.bias' not in mapped:
        return {}
    num_classes = _first_shape(mapped, ['head.fc.weight', 'head.fc.bias'])[0]
    return {
        'head.fc.weight': torch.empty(num_classes, embed_dims, device='meta'),
        'head.fc.bias': torch.empty(num_classes, device='meta'),
    }


def _reference(cls, **kwargs) -> Dict[str, torch.Tensor]:
    # The meta device allocates nothing, so even a 700M model is free to
    # build just for its names and shapes.
    with torch.device('meta'):
        model = cls(**kwargs)
    return {f'backbone.{k}': v for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------------
# The two sources
# ---------------------------------------------------------------------------
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
    mapped, sources, unmatched = map_keys(state_dict, TIMM_VIT_RULES)
    if unmatched:
        check_against(mapped, sources, {}, unmatched)
    new_patch, new_img, notes = fit_geometry(mapped, (1, 0), patch_size,
                                             img_size)
    if folded:
        notes.append(f'layer scale folded into {folded} linear layers')
    embed_dims = _first_shape(mapped, ['backbone.cls_token'])[-1]
    arch = dict(
        embed_dims=embed_dims,
        num_layers=_num_layers(mapped),
        mlp_dims=_first_shape(mapped,
                              ['backbone.layers.0.mlp.fc1.weight'])[0])
    zoo = arch_name('deit', arch)
    arch['num_heads'] = num_heads or (PatchViT.arch_zoo[zoo]['num_heads']
                                      if zoo else max(embed_dims // 64, 1))
    qkv_bias = 'backbone.layers.0.attn.qkv.bias' in mapped
    backbone = dict(
        type='patchscale_mm.PatchViT',
        arch=arch,
        img_size=list(new_img),
        patch_size=list(new_patch),
        qkv_bias=qkv_bias)
    reference = _reference(
        PatchViT, **{k: v for k, v in backbone.items() if k != 'type'})
    reference.update(_head_reference(mapped, embed_dims))
    check_against(mapped, sources, reference)
    return mapped, _meta(backbone, mapped, notes)


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
    mapped, sources, unmatched = map_keys(state_dict, ADVENTURER_RULES)
    if unmatched:
        check_against(mapped, sources, {}, unmatched)
    new_patch, new_img, notes = fit_geometry(mapped, (0, 1), patch_size,
                                             img_size)
    embed_dims = _first_shape(mapped, ['backbone.cls_token'])[-1]
    prefix = 'backbone.layers.0.'
    d_inner = _first_shape(mapped, [prefix + 'mixer.norm.weight'])[0]
    nheads = _first_shape(mapped, [prefix + 'mixer.A_log'])[0]
    conv_shape = _first_shape(mapped, [prefix + 'mixer.conv1d.weight'])
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
        num_layers=_num_layers(mapped),
        mlp_dims=_first_shape(mapped, [prefix + 'mlp.w1.weight'])[0])
    backbone = dict(
        type='patchscale_mm.Adventurer',
        arch=arch,
        img_size=list(new_img),
        patch_size=list(new_patch),
        flip_rule='released',
        mixer_cfg=mixer_cfg)
    reference = _reference(
        Adventurer, **{k: v for k, v in backbone.items() if k != 'type'})
    reference.update(_head_reference(mapped, embed_dims))
    check_against(mapped, sources, reference)
    return mapped, _meta(backbone, mapped, notes)


def _meta(backbone: dict, mapped: StateDict, notes: List[str]) -> dict:
    family = family_of(MODELS.get(backbone['type']))
    name = arch_name(family, backbone['arch'])
    head = mapped.get('head.fc.weight')
    return dict(
        backbone=backbone,
        arch_name=name,
        num_classes=None if head is None else int(head.shape[0]),
        adapted=list(notes))


CONVERTERS: Dict[str, Callable[..., Tuple[StateDict, dict]]] = {
    'timm_vit': convert_timm_vit,
    'adventurer': convert_adventurer,
}
RULES = {'timm_vit': TIMM_VIT_RULES, 'adventurer': ADVENTURER_RULES}


# ---------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------
def save_checkpoint(state_dict: StateDict, meta: dict, path: str) -> None:
    """Writes ``{'state_dict', 'meta'}`` atomically (a kill leaves the old
    file or the new one)."""
    buffer = io.BytesIO()
    torch.save({'state_dict': state_dict, 'meta': meta}, buffer)
    atomic_write(path, buffer.getvalue())


def describe_mapping(state_dict: StateDict, source: str) -> List[str]:
    """Lines ``source -> target shape`` and the unmatched keys, for
    ``--dry-run``."""
    mapped, sources, unmatched = map_keys(state_dict, RULES[source])
    lines = [f'{sources[k]} -> {k} {tuple(v.shape)}'
             for k, v in mapped.items()]
    lines.append(f'{len(unmatched)} unmatched source keys'
                 + (f': {", ".join(unmatched)}' if unmatched else ''))
    return lines


def convert_file(src: str,
                 dst: Optional[str],
                 source: str,
                 key: Optional[str] = None,
                 patch_size: Optional[Sequence[int]] = None,
                 img_size: Optional[Sequence[int]] = None,
                 dry_run: bool = False,
                 log: Callable[[str], None] = print,
                 **kwargs) -> dict:
    """Converts the checkpoint file ``src`` into ``dst``.

    Args:
        src (str): Source checkpoint (loaded weights-only).
        dst (str, optional): Output path; not needed with ``dry_run``.
        source (str): ``'timm_vit'`` or ``'adventurer'``.
        key (str, optional): Wrapper entry to read; see
            :func:`unwrap_state_dict`.
        patch_size, img_size (Sequence[int], optional): Resample to these.
        dry_run (bool): Print the mapping and unmatched keys, check, write
            nothing. Defaults to False.
        log (callable): Where progress lines go. Defaults to ``print``.
        **kwargs: More arguments of the source's converter.

    Returns:
        dict: The meta information (also stored in ``dst``).

    Raises:
        CheckpointError: One line (a :class:`ConversionError` for mapping
            problems), raised before anything is written.
    """
    state_dict, where = load_source_state_dict(src, key)
    log(f'read {len(state_dict)} tensors from {src} ({where})')
    if dry_run:
        for line in describe_mapping(state_dict, source):
            log(line)
    mapped, meta = CONVERTERS[source](
        state_dict, patch_size=patch_size, img_size=img_size, **kwargs)
    meta.update(converted_from=osp.basename(src), source=source,
                source_entry=where)
    for note in meta['adapted']:
        log(f'adapted: {note}')
    if dry_run:
        log(f'dry run: {len(mapped)} tensors would be written; checks passed')
        return meta
    if not dst:
        raise ConversionError('no output path given')
    save_checkpoint(dict(mapped), meta, dst)
    log(f'wrote {len(mapped)} tensors to {dst}; backbone config: '
        f'{meta["backbone"]}')
    return meta


# ---------------------------------------------------------------------------
# Command line (tools/model_converters/*.py)
# ---------------------------------------------------------------------------
def _size(text: str) -> Tuple[int, int]:
    """``'224'`` or ``'224,320'`` -> (h, w)."""
    try:
        values = [int(v) for v in text.split(',')]
        return to_2tuple(values[0] if len(values) == 1 else values)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f'expected N or H,W, got {text!r}') from None


def converter_main(source: str,
                   description: str,
                   argv: Optional[Sequence[str]] = None) -> int:
    """The converters' command line; returns the exit status.

    Every error is one ``error: ...`` line on stderr and status 1, and the
    output file is not touched.
    """
    parser = argparse.ArgumentParser(
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('src', help='source checkpoint (loaded weights-only)')
    parser.add_argument(
        'dst', nargs='?', help='output .pth (not needed with --dry-run)')
    parser.add_argument(
        '--key',
        help='entry holding the weights (default: the first of '
        f'{", ".join(WRAPPER_KEYS)}, else the file itself)')
    parser.add_argument(
        '--patch-size',
        type=_size,
        help='resample the patch embedding to this patch size (pinv), N or '
        'H,W')
    parser.add_argument(
        '--img-size',
        type=_size,
        help='resample the position embedding to the grid of this image '
        'size, N or H,W (default: the checkpoint\'s)')
    if source == 'timm_vit':
        parser.add_argument(
            '--num-heads',
            type=int,
            help='attention heads recorded in the meta config (default: the '
            'arch zoo\'s, else width / 64)')
    parser.add_argument(
        '--dry-run',
        action='store_true',
        help='print the key mapping and unmatched keys, check, write nothing')
    args = parser.parse_args(argv)
    if not args.dry_run and not args.dst:
        parser.error('dst is required unless --dry-run is given')
    kwargs = {}
    if getattr(args, 'num_heads', None):
        kwargs['num_heads'] = args.num_heads
    try:
        convert_file(
            args.src,
            args.dst,
            source,
            key=args.key,
            patch_size=args.patch_size,
            img_size=args.img_size,
            dry_run=args.dry_run,
            **kwargs)
    except CheckpointError as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    return 0
