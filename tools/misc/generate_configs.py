"""Writes the leaf configs of the model zoo and its README table.

Every shipped recipe is a few lines that inherit from ``configs/_base_`` and
set the arch, patch size and input size; this script writes them from the
tables below (with the paper's results beside them), so the family stays
consistent. Run it after changing a table; ``--check`` fails when the files
on disk differ from what it would write (the test suite runs it).

    python tools/misc/generate_configs.py [--check]
"""
import argparse
import functools
import math
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ARCH_DIMS = dict(
    deit=dict(t=192, s=384, b=768, l=1024, h=1280),
    adv=dict(t=256, s=512, b=768, l=1024, h=1280))
ARCH_NAMES = dict(t='Tiny', s='Small', b='Base', l='Large', h='Huge')
FAMILY_NAMES = dict(deit='DeiT', adv='Adventurer')
MODEL_BASES = dict(deit='deit_cls', adv='adventurer_cls')
PATCHES = (16, 8, 4, 2, 1)

# Classification: (family, input size) -> patch sizes shipped. DeiT stays
# within 4,096 tokens, as in the paper (attention is quadratic).
CLS_PATCHES = {
    ('deit', 64): (16, 8, 4, 2, 1),
    ('deit', 128): (16, 8, 4, 2),
    ('deit', 224): (16, 8, 4),
    ('adv', 64): PATCHES,
    ('adv', 128): PATCHES,
    ('adv', 224): PATCHES,
}
# Training stages per (family, input size), in order (paper Appendix): DeiT
# trains once at its input size; Adventurer is pretrained at 64 px; at 128 px
# pretrained, then finetuned; at 224 px it loads the 128 px pretraining, trains
# an intermediate stage and finetunes.
CLS_STAGES = {
    ('deit', 64): ('pretrain', ),
    ('deit', 128): ('pretrain', ),
    ('deit', 224): ('pretrain', ),
    ('adv', 64): ('pretrain', ),
    ('adv', 128): ('pretrain', 'finetune'),
    ('adv', 224): ('intermediate', 'finetune'),
}
# Chains beyond the grid, each trained as the 224 px chain (pretraining,
# intermediate stage, finetuning): (family, arch, patch, pretraining size,
# final size).
EXTRA_CHAINS = (
    # Detection at patches 32 and 64 (Table 3) starts from a classifier of
    # the same patch (Sec. 3.2). 224 px has no whole grid of 64 px patches:
    # that chain ends at 256 px (4x4 tokens).
    *(('adv', arch, patch, 128, 224 if patch == 32 else 256)
      for arch in ('t', 'b') for patch in (32, 64)),
    # Sec. 4.3: Adventurer-B/16 at 448 px against B/8 at 224 px (784 tokens
    # each; the paper reports +0.4).
    ('adv', 'b', 16, 128, 448),
    # Figure 4: input size scaled with the patch at the sequence length of
    # B/16 at 224 px, every stage included (8x8 tokens in pretraining, 14x14
    # after): x2 and x4 beside the patch-16 chain. The figure gives no
    # numbers to print.
    ('adv', 'b', 32, 256, 448),
    ('adv', 'b', 64, 512, 896),
)
# Top-1 of the extra chains where the paper gives one: (family, arch, size,
# patch) -> %. B/16 at 448 px: B/8 at 224 px (83.9, Table 1) + 0.4 (Sec. 4.3).
EXTRA_TOP1 = {('adv', 'b', 448, 16): 84.3}
# stage -> (paper table, schedule base, epochs) for Tiny/Small/Base and for
# Large/Huge. Tables 9 and 10 list Small/Base and Large: Tiny takes the
# Small/Base recipe and Huge the Large one.
STAGE_RECIPES = {
    'pretrain': (8, ('cls_pretrain_300e', 300), ('cls_pretrain_large_200e', 200)),
    'intermediate': (10, ('cls_intermediate_100e', 100),
                     ('cls_intermediate_large_50e', 50)),
    'finetune': (9, ('cls_finetune_20e', 20), ('cls_finetune_large_50e', 50)),
}
# Stochastic depth per stage and arch (Tables 8-10; Tiny as Small).
STAGE_DROP_PATH = {
    'pretrain': dict(t=0.1, s=0.1, b=0.1, l=0.2, h=0.2),
    'intermediate': dict(t=0.2, s=0.2, b=0.4, l=0.4, h=0.4),
    'finetune': dict(t=0.4, s=0.4, b=0.6, l=0.6, h=0.6),
}
STAGE_SUFFIX = dict(pretrain='', intermediate='_intermediate',
                    finetune='_finetune')
# Augmentation (dataset base suffix) per family and stage: DeiT's own recipe;
# the Adventurer authors' ThreeAugment for pretraining and the intermediate
# stage and RandAugment for finetuning (Tables 8-10, their commands).
STAGE_DATA = {
    ('deit', 'pretrain'): '',
    ('adv', 'pretrain'): '_3aug',
    ('adv', 'intermediate'): '_3aug',
    ('adv', 'finetune'): '_randaug',
}
# Label smoothing where the model base's default differs: the Adventurer
# finetuning stage (Table 9: 0.1; their other stages 0.0, DeiT 0.1).
STAGE_LABEL_SMOOTH = {('adv', 'finetune'): 0.1}
# Per-GPU batch of each stage's dataset base and the global batch of its
# recipe (Tables 8-10), Tiny/Small/Base and Large/Huge.
STAGE_BATCH = dict(pretrain=(128, (1024, 4096)), intermediate=(128, (1024, 4096)),
                   finetune=(64, (512, 512)))


def eval_crop_ratio(patch: int, size: int) -> float:
    """The authors evaluate patches below 16 and inputs above 224 px without
    the 0.875 centre crop, except very small inputs (64 px)."""
    return 1.0 if (patch < 16 or size > 224) and size > 64 else 0.875


# The memory every shipped config must fit per process: 80 GB GPUs
# (A100/H100), of which 90% for the training step.
GPU_MEMORY_GIB = 80
MEMORY_BUDGET_GIB = 0.9 * GPU_MEMORY_GIB


@functools.lru_cache(maxsize=None)
def memory_gib(family: str, arch: str, img_size: int, patch: int) -> tuple:
    """(GiB of weights, gradients and AdamW state; GiB of bf16 activations
    per image without and with activation checkpointing), from the memory
    model of ``patchscale_mm.analysis.cost`` with this repository's
    scan kernel."""
    from patchscale_mm.analysis import cost
    name = 'deit' if family == 'deit' else 'adventurer'
    state = cost.training_memory_bytes(name, arch, img_size, patch, 0)
    per_image = [cost.training_activation_bytes(
        name, arch, img_size, patch, 'amp', 'kernel', cp) for cp in (False, True)]
    return state / 2**30, per_image[0] / 2**30, per_image[1] / 2**30


def fit_per_gpu(family: str, arch: str, img_size: int, patch: int,
                batch: int):
    """(per-GPU batch, with_cp) that fits :data:`MEMORY_BUDGET_GIB` in bf16
    mixed precision: the recipe's batch without activation checkpointing if
    it fits, else with it, else the largest power-of-two batch that fits
    with it (more GPUs for the same global batch)."""
    state, plain, checkpointed = memory_gib(family, arch, img_size, patch)
    if state + batch * plain <= MEMORY_BUDGET_GIB:
        return batch, False
    while batch > 1 and state + batch * checkpointed > MEMORY_BUDGET_GIB:
        batch //= 2
    return batch, True


# The "by extending" ablation (Table 5): patch-16 tokens interpolated to the
# sequence length of a smaller patch. (family, arch, input size) -> top-1 by
# patch whose length is matched, "by extending" and "by scaling".
EXTEND_FROM = 16
TABLE5 = {
    ('deit', 'b', 128): {16: (78.1, 78.1), 8: (78.2, 81.0), 4: (78.2, 82.3)},
    ('adv', 'b', 224): {16: (82.6, 82.6), 8: (82.7, 83.9), 4: (82.8, 84.3),
                        2: (82.8, 84.5)},
}
# ImageNet top-1 (%) from Tables 1 and 4 (and Sec. 1 for DeiT-B/224),
# keyed (family, arch, size) -> one value per patch size in PATCHES.
PAPER_TOP1 = {
    ('deit', 'b', 64): (68.2, 76.9, 80.1, 80.8, 81.3),
    ('deit', 'b', 128): (78.1, 81.0, 82.3, 82.9, None),
    ('deit', 'b', 224): (81.8, 83.5, None, None, None),
    ('adv', 'b', 64): (69.2, 77.2, 80.0, 80.5, 80.9),
    ('adv', 't', 128): (72.6, 78.5, 80.4, 80.6, 80.7),
    ('adv', 's', 128): (77.6, 80.5, 80.9, 81.2, 81.4),
    ('adv', 'b', 128): (79.0, 81.5, 81.8, 82.2, 82.4),
    ('adv', 'l', 128): (79.8, 82.2, 82.6, 82.9, 83.1),
    ('adv', 't', 224): (78.2, 80.9, 81.3, 81.7, 81.9),
    ('adv', 's', 224): (81.8, 83.0, 83.5, 83.7, 83.8),
    ('adv', 'b', 224): (82.6, 83.9, 84.3, 84.5, 84.6),
}
# ADE20k mIoU (Table 2): (arch, head) -> {patch: mIoU}.
SEG_PATCHES = (16, 8, 4, 2)
SEG_MODEL_BASES = dict(linear='linear_seg', upernet='upernet')
PAPER_MIOU = {
    ('t', 'linear'): {16: 40.0, 8: 41.6, 4: 42.1, 2: 42.5},
    ('t', 'upernet'): {16: 41.3},
    ('b', 'linear'): {16: 44.0, 8: 45.5, 4: 46.3, 2: 46.8},
    ('b', 'upernet'): {16: 45.7},
}
# COCO box / mask AP (Table 3): arch -> {patch: (AP box, AP mask)}.
DET_PATCHES = (64, 32, 16, 8, 4, 2)
PAPER_AP = {
    't': {32: (44.7, 38.4), 16: (46.5, 40.3), 8: (48.0, 41.7),
          4: (48.5, 42.2), 2: (48.7, 42.4)},
    'b': {64: (44.1, 38.3), 32: (46.4, 40.6), 16: (48.4, 42.0),
          8: (49.5, 42.9), 4: (50.3, 43.4)},
}


def cls_name(family: str, arch: str, size: int, patch: int, stage: str,
             extend: bool = False) -> str:
    """Config stem, e.g. ``adv_b_p4_in1k_224_finetune``; MMEngine's default
    work dir ``work_dirs/<stem>`` is where the next stage looks."""
    ext = f'_extend{EXTEND_FROM}' if extend else ''
    return f'{family}_{arch}_p{patch}{ext}_in1k_{size}{STAGE_SUFFIX[stage]}'


def chain_stages(family: str, size: int) -> tuple:
    """The stages that train at ``size`` (the grid's, or the three-stage
    chain's for an extra chain's final size)."""
    return CLS_STAGES.get((family, size), ('intermediate', 'finetune'))


def previous_stage(family: str, arch: str, size: int, patch: int,
                   stage: str, extend: bool = False, pretrained_at: int = 128):
    """(config stem, epochs) of the stage this one loads, or None: the stage
    before it at the same size, else the pretraining at ``pretrained_at``."""
    if stage == 'pretrain':
        return None
    stages = chain_stages(family, size)
    at = stages.index(stage)
    before, from_size = ((stages[at - 1], size) if at else
                         ('pretrain', pretrained_at))
    large = arch in ('l', 'h')
    _, *recipes = STAGE_RECIPES[before]
    return (cls_name(family, arch, from_size, patch, before, extend),
            recipes[large][1])


def stage_title(family: str, size: int, stage: str,
                pretrained_at: int = 128, chain_length: int = None) -> str:
    stages = chain_stages(family, size)
    table = STAGE_RECIPES[stage][0]
    if stage == 'intermediate':
        return (f'stage 2 of 3, the intermediate stage (Table {table}) from '
                f'the {pretrained_at}px pretraining')
    if stage == 'finetune':
        step = len(stages) + (stages[0] == 'intermediate')
        return f'stage {step} of {step}, finetuning (Table {table})'
    chain_length = chain_length or len(stages)
    if chain_length > 1:
        return f'stage 1 of {chain_length}, pretraining (Table {table})'
    return f'the pretraining recipe (Table {table})'


def gpu_plan(family: str, arch: str, side: int, patch: int, default: int,
             global_batch: int) -> str:
    """``'GPUs x images'`` and the estimated GiB per GPU of a leaf, for the
    model-zoo table."""
    per_gpu, with_cp = fit_per_gpu(family, arch, side, patch, default)
    state, plain, checkpointed = memory_gib(family, arch, side, patch)
    gib = state + per_gpu * (checkpointed if with_cp else plain)
    return (f'{global_batch // per_gpu} x {per_gpu}'
            f'{" (cp)" if with_cp else ""} | {gib:.1f}')


def batch_lines(per_gpu: int, default: int, global_batch: int) -> str:
    """The per-GPU batch that fits an 80 GB GPU (see :func:`fit_per_gpu`),
    and the GPU count that keeps the recipe's global batch."""
    if per_gpu == default:
        return ''
    return (f'# {per_gpu} images per GPU fit an {GPU_MEMORY_GIB} GB GPU: the '
            f'batch of {global_batch}\n# takes {global_batch // per_gpu} GPUs.\n'
            f'train_dataloader = dict(batch_size={per_gpu})\n')


def cls_config(family: str, arch: str, size: int, patch: int,
               stage: str = 'pretrain', pretrained_at: int = 128,
               chain_length: int = None) -> str:
    large = arch in ('l', 'h')
    table, *recipes = STAGE_RECIPES[stage]
    schedule = recipes[large][0]
    tokens = (size // patch)**2
    default_batch, global_batches = STAGE_BATCH[stage]
    per_gpu, with_cp = fit_per_gpu(family, arch, size, patch, default_batch)
    smooth = STAGE_LABEL_SMOOTH.get((family, stage))
    head = f'head=dict(in_channels={ARCH_DIMS[family][arch]}'
    head += (f', loss=dict(label_smooth_val={smooth}))' if smooth else ')')
    cp = (',\n        # Activation checkpointing: fits an 80 GB GPU.\n'
          '        with_cp=True' if with_cp else '')
    text = f"""\
# {FAMILY_NAMES[family]}-{ARCH_NAMES[arch]}, patch {patch}, {size}px ImageNet-1k ({tokens:,} tokens):
# {stage_title(family, size, stage, pretrained_at, chain_length)}.
# Generated by tools/misc/generate_configs.py.
_base_ = [
    '../_base_/models/{MODEL_BASES[family]}.py',
    '../_base_/datasets/imagenet_{size}{STAGE_DATA[(family, stage)]}.py',
    '../_base_/schedules/{schedule}.py', '../_base_/default_runtime.py'
]
model = dict(
    backbone=dict(
        arch='{arch}',
        img_size={size},
        patch_size={patch},
        drop_path_rate={STAGE_DROP_PATH[stage][arch]}{cp}),
    {head})
"""
    text += batch_lines(per_gpu, default_batch, global_batches[large])
    if eval_crop_ratio(patch, size) == 1.0:
        text += """\
# Evaluated at crop ratio 1.0, as the authors evaluate patches below 16
# and inputs above 224 px.
val_dataloader = dict(
    dataset=dict(pipeline={{_base_.test_pipelines.crop_ratio_1}}))
test_dataloader = val_dataloader
"""
    previous = previous_stage(family, arch, size, patch, stage,
                              pretrained_at=pretrained_at)
    if previous:
        text += f"""\
# The last checkpoint of the previous stage (a different input size is
# resampled on load); override with --cfg-options load_from=...
load_from = 'work_dirs/{previous[0]}/epoch_{previous[1]}.pth'
"""
    return text


def extend_config(family: str, arch: str, size: int, patch: int,
                  stage: str) -> str:
    tokens = (size // patch)**2
    text = f"""\
# {FAMILY_NAMES[family]}-{ARCH_NAMES[arch]} at {size}px with {tokens:,} tokens interpolated from patch-{EXTEND_FROM}
# tokens: the "by extending" arm of the paper's Table 5, beside
# {cls_name(family, arch, size, patch, stage)}.py ("by scaling").
# Generated by tools/misc/generate_configs.py.
_base_ = './{cls_name(family, arch, size, patch, stage)}.py'
model = dict(backbone=dict(embed_patch_size={EXTEND_FROM}))
"""
    previous = previous_stage(family, arch, size, patch, stage, extend=True)
    if previous:
        text += f"load_from = 'work_dirs/{previous[0]}/epoch_{previous[1]}.pth'\n"
    return text


def classifier_size(patch: int) -> int:
    """Input size of the 224 px classification chain at ``patch``: 256 px
    where 224 px has no whole grid of patches."""
    return 224 if 224 % patch == 0 else 256


def pretrained_backbone(arch: str, patch: int) -> str:
    """``init_cfg`` of a downstream backbone: the last checkpoint of the
    classification chain at the same patch size (the paper's protocol)."""
    size = classifier_size(patch)
    if patch not in PATCHES and ('adv', arch, patch, 128, size) not in EXTRA_CHAINS:
        raise ValueError(f'no Adventurer-{arch} classifier at patch {patch}')
    stage = chain_stages('adv', size)[-1]
    epochs = STAGE_RECIPES[stage][1 + (arch in ('l', 'h'))][1]
    stem = cls_name('adv', arch, size, patch, stage)
    return f"""\
# Classification stage 3: configs/cls/{stem}.py
        # (position grid interpolated to the input).
        init_cfg=dict(
            type='Pretrained',
            checkpoint='work_dirs/{stem}/epoch_{epochs}.pth',
            prefix='backbone.')"""


# UperNet widths (neck output, decode head channels) per arch: neck + decode
# head of 12.5M parameters for Base and 4.8M for Tiny, the paper's 13M and 5M
# (Table 2's totals minus the backbones).
UPERNET_WIDTHS = dict(t=(256, 128), b=(320, 256))
SEG_BATCH, DET_BATCH = 2, 2  # per GPU: 16 on 8 GPUs (paper Sec. 4.1)


def checkpointing(family: str, arch: str, side: int, patch: int,
                  batch: int) -> str:
    """The backbone lines for activation checkpointing where the downstream
    batch needs it on an 80 GB GPU."""
    per_gpu, with_cp = fit_per_gpu(family, arch, side, patch, batch)
    if per_gpu != batch:
        raise ValueError(f'{family}-{arch} p{patch} at {side} px does not fit '
                         f'{batch} images per GPU even with checkpointing')
    if not with_cp:
        return ''
    return ('\n        # Activation checkpointing: fits an 80 GB GPU at its batch.'
            '\n        with_cp=True,')


def seg_config(arch: str, head: str, patch: int) -> str:
    dims = ARCH_DIMS['adv'][arch]
    head_name = 'UperNet' if head == 'upernet' else 'decoder-free linear head'
    text = f"""\
# Adventurer-{ARCH_NAMES[arch]}, patch {patch}, {head_name} on ADE20k
# 512x512 (paper Table 2). Generated by tools/misc/generate_configs.py.
_base_ = [
    '../_base_/models/adventurer_{SEG_MODEL_BASES[head]}.py',
    '../_base_/datasets/ade20k_512x512.py',
    '../_base_/schedules/seg_160k.py'  # includes the default runtime
]
"""
    backbone = f"""\
    backbone=dict(
        arch='{arch}',
        patch_size={patch},{checkpointing('adv', arch, 512, patch, SEG_BATCH)}
        {pretrained_backbone(arch, patch)}),"""
    if head == 'linear':
        return text + f"""\
model = dict(
{backbone}
    decode_head=dict(in_channels={dims}))
"""
    # Rescale the stride-p block outputs to strides 4, 8, 16 and 32.
    scales = [patch / stride for stride in (4, 8, 16, 32)]
    neck, channels = UPERNET_WIDTHS[arch]
    return text + f"""\
model = dict(
{backbone}
    neck=dict(
        in_channels=[{dims}, {dims}, {dims}, {dims}],
        out_channels={neck},
        scales={scales!r}),
    decode_head=dict(
        in_channels=[{neck}, {neck}, {neck}, {neck}], channels={channels}),
    auxiliary_head=dict(in_channels={neck}))
"""


def det_side(patch: int) -> int:
    """The square with as many tokens as a 1333x800 image padded by the
    detector's preprocessor, for the memory model."""
    divisor = max(32, patch)
    tokens = (-(-800 // divisor) * divisor // patch) * \
        (-(-1333 // divisor) * divisor // patch)
    return patch * math.ceil(math.sqrt(tokens))


def det_config(arch: str, patch: int) -> str:
    # The position-embedding grid of the classification backbone.
    grid_size = classifier_size(patch)
    divisor = max(32, patch)
    side = det_side(patch)
    return f"""\
# Adventurer-{ARCH_NAMES[arch]}, patch {patch}, Cascade Mask R-CNN on COCO, 1x schedule
# (paper Table 3). Generated by tools/misc/generate_configs.py.
_base_ = [
    '../_base_/models/adventurer_cascade_mask_rcnn.py',
    '../_base_/datasets/coco_instance_1x.py',
    '../_base_/schedules/det_1x.py', '../_base_/default_runtime.py'
]
model = dict(
    data_preprocessor=dict(pad_size_divisor={divisor}),
    backbone=dict(
        arch='{arch}',
        img_size={grid_size},
        patch_size={patch},{checkpointing('adv', arch, side, patch, DET_BATCH)}
        {pretrained_backbone(arch, patch)}),
    neck=dict(in_channels={ARCH_DIMS['adv'][arch]}, in_stride={patch}))
# Figure 1's axis beside box and mask AP: the detector's own loss on the
# evaluation set, test/loss (tools/analysis/fit_scaling_law.py).
custom_hooks = [*_base_.custom_hooks, dict(type='patchscale_mm.EvalLossHook')]
"""


# Input sizes with hand-written ImageNet bases; the others are generated
# from the 224 px ones with the crops rescaled.
WRITTEN_DATA_SIZES = (64, 128, 224)


def dataset_base(size: int, augmentation: str) -> str:
    return f"""\
# ImageNet-1k at {size} px: imagenet_224{augmentation}.py with {size} px crops.
# Generated by tools/misc/generate_configs.py.
_base_ = './imagenet_224{augmentation}.py'
crop_size = {size}
train_pipeline = [
    dict(step, scale=crop_size) if step.type == 'RandomResizedCrop' else step
    for step in _base_.train_pipeline
]
test_pipelines = {{
    name: [
        dict(step, scale=int(crop_size / _base_.test_crop_ratios[name]))
        if step.type == 'ResizeEdge' else
        dict(step, crop_size=crop_size) if step.type == 'CenterCrop' else step
        for step in pipeline
    ]
    for name, pipeline in _base_.test_pipelines.items()
}}
test_pipeline = test_pipelines['crop_ratio_0875']
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
"""


def cls_row(family: str, arch: str, size: int, patch: int, stage: str,
            top1, path: str, three_stages: bool) -> tuple:
    model = f'{FAMILY_NAMES[family]}-{arch.upper()}'
    if three_stages:
        model += f' ({stage})'
    default, batches = STAGE_BATCH[stage]
    plan = gpu_plan(family, arch, size, patch, default,
                    batches[arch in ('l', 'h')])
    return ('cls', model, patch, f'{size}px', (size // patch)**2, top1, path,
            plan)


def extra_chains():
    """Yields (relative path, text, README row) for the chains of
    :data:`EXTRA_CHAINS` (their pretraining only where the grid lacks it),
    then the dataset bases they need."""
    sizes = set()
    for family, arch, patch, pretrained_at, size in EXTRA_CHAINS:
        stages = [(pretrained_at, 'pretrain')] + [
            (size, stage) for stage in chain_stages(family, size)]
        for stage_size, stage in stages:
            if stage == 'pretrain' and patch in CLS_PATCHES.get(
                    (family, stage_size), ()):
                continue
            sizes.add((stage_size, STAGE_DATA[(family, stage)]))
            path = f'configs/cls/{cls_name(family, arch, stage_size, patch, stage)}.py'
            top1 = (EXTRA_TOP1.get((family, arch, size, patch))
                    if stage == 'finetune' else None)
            row = cls_row(family, arch, stage_size, patch, stage, top1, path,
                          three_stages=True)
            yield path, cls_config(family, arch, stage_size, patch, stage,
                                   pretrained_at, chain_length=3), row
    for size, augmentation in sorted(sizes):
        if size not in WRITTEN_DATA_SIZES:
            yield (f'configs/_base_/datasets/imagenet_{size}{augmentation}.py',
                   dataset_base(size, augmentation), None)


def zoo():
    """Yields (relative path, text, README row) for every leaf config."""
    for (family, size), patches in CLS_PATCHES.items():
        stages = CLS_STAGES[(family, size)]
        for arch in ARCH_DIMS[family]:
            for patch in patches:
                for stage in stages:
                    path = (f'configs/cls/'
                            f'{cls_name(family, arch, size, patch, stage)}.py')
                    paper = PAPER_TOP1.get((family, arch, size))
                    # The paper reports the model at the end of the chain.
                    top1 = (paper[PATCHES.index(patch)]
                            if paper and stage == stages[-1] else None)
                    row = cls_row(family, arch, size, patch, stage, top1, path,
                                  len(stages) > 1 or size == 224 and family == 'adv')
                    yield path, cls_config(family, arch, size, patch,
                                           stage), row
    yield from extra_chains()
    for (family, arch, size), results in TABLE5.items():
        for patch in results:
            if patch == EXTEND_FROM:
                continue
            for stage in (('pretrain', ) if family == 'deit' else
                          ('pretrain', 'intermediate', 'finetune')):
                stage_size = 128 if stage == 'pretrain' else size
                stem = cls_name(family, arch, stage_size, patch, stage,
                                extend=True)
                yield (f'configs/cls/{stem}.py',
                       extend_config(family, arch, stage_size, patch, stage),
                       None)
    for arch in ('t', 'b'):
        for head in ('linear', 'upernet'):
            for patch in SEG_PATCHES:
                path = f'configs/seg/adv_{arch}_p{patch}_{head}_ade20k.py'
                miou = PAPER_MIOU[(arch, head)].get(patch)
                row = ('seg', f'Adventurer-{arch.upper()} + {head}', patch,
                       '512x512', (512 // patch)**2, miou, path,
                       gpu_plan('adv', arch, 512, patch, SEG_BATCH, 8 * SEG_BATCH))
                yield path, seg_config(arch, head, patch), row
    for arch in ('t', 'b'):
        for patch in DET_PATCHES:
            path = f'configs/det/adv_{arch}_p{patch}_cascade-mask-rcnn_coco_1x.py'
            ap = PAPER_AP[arch].get(patch)
            divisor = max(32, patch)  # the padding of the data preprocessor
            h, w = (-(-side // divisor) * divisor for side in (800, 1333))
            row = ('det', f'Adventurer-{arch.upper()}', patch, '800x1333',
                   (h // patch) * (w // patch),
                   f'{ap[0]} / {ap[1]}' if ap else None, path,
                   gpu_plan('adv', arch, det_side(patch), patch, DET_BATCH,
                            8 * DET_BATCH))
            yield path, det_config(arch, patch), row


def readme_table(rows) -> str:
    metric = dict(cls='ImageNet top-1', seg='ADE20k mIoU',
                  det='COCO AP box / mask')
    lines = []
    for task in ('cls', 'seg', 'det'):
        lines += [
            f'\n**{metric[task]}**\n',
            f'| model | patch | input | tokens | paper {metric[task]} | config '
            '| GPUs x batch | GiB per GPU |',
            '|---|---|---|---|---|---|---|---|'
        ]
        for t, model, patch, size, tokens, paper, path, plan in rows:
            if t == task:
                lines.append(f'| {model} | {patch} | {size} | {tokens:,} | '
                             f'{paper if paper is not None else "-"} | '
                             f'{config_link(path)} | {plan} |')
    return '\n'.join(lines) + '\n' + table5_table()


def config_link(path: str) -> str:
    return f'[{Path(path).name}]({path})'


def table5_table() -> str:
    """Table 5: the same sequence lengths by extending (interpolated patch-16
    tokens) and by scaling (smaller patches), last stage of each chain."""
    lines = [
        f'\n**Sequence length, by extending vs by scaling (Table 5)**\n',
        '| model | input | tokens | by extending: paper top-1 | config | '
        'by scaling: paper top-1 | config |', '|---|---|---|---|---|---|---|'
    ]
    for (family, arch, size), results in TABLE5.items():
        stage = CLS_STAGES[(family, size)][-1]
        for patch, (extended, scaled) in results.items():
            scaling = f'configs/cls/{cls_name(family, arch, size, patch, stage)}.py'
            extending = scaling if patch == EXTEND_FROM else (
                'configs/cls/'
                f'{cls_name(family, arch, size, patch, stage, extend=True)}.py')
            lines.append(
                f'| {FAMILY_NAMES[family]}-{arch.upper()} | {size}px | '
                f'{(size // patch)**2:,} | {extended} | {config_link(extending)}'
                f' | {scaled} | {config_link(scaling)} |')
    return '\n'.join(lines) + '\n'


README_MARKERS = ('<!-- model-zoo:start -->', '<!-- model-zoo:end -->')


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        '--check',
        action='store_true',
        help='exit 1 if any generated file differs from the one on disk')
    args = parser.parse_args()

    entries = list(zoo())
    expected = {ROOT / path: text for path, text, _ in entries}
    readme = ROOT / 'README.md'
    start, end = README_MARKERS
    old = readme.read_text()
    if start not in old or end not in old:
        sys.exit(f'README.md lacks the markers {start} ... {end}')
    expected[readme] = re.sub(
        re.escape(start) + '.*?' + re.escape(end),
        lambda _: start + '\n' + readme_table([r for *_, r in entries if r]) + end,
        old, flags=re.S)
    # Leaf configs on disk that the tables no longer list are stale too.
    generated_dirs = [ROOT / 'configs' / task for task in ('cls', 'seg', 'det')]
    generated_dirs.append(ROOT / 'configs' / '_base_' / 'datasets')
    stale = [p for d in generated_dirs for p in sorted(d.glob('*.py'))
             if p not in expected and 'Generated by' in p.read_text()]

    changed = [p for p, text in expected.items()
               if not p.exists() or p.read_text() != text]
    if args.check:
        for path in changed + stale:
            print(f'out of date: {path.relative_to(ROOT)}')
        sys.exit(1 if changed or stale else 0)
    for path in changed:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(expected[path])
    for path in stale:
        path.unlink()
    print(f'{len(entries)} configs; wrote {len(changed)}, removed '
          f'{len(stale)}')


if __name__ == '__main__':
    main()
