"""What the model zoo trains: its grid of archs, patches and input sizes, the
stages of each classification chain with their recipes (paper Tables 8-10),
the config names, and the per-GPU batch that fits an 80 GB GPU."""
import functools
import math
from pathlib import Path

from mmengine.config import Config

from patchscale_mm.models.backbones import Adventurer, PatchViT

BASES = Path(__file__).resolve().parents[2] / 'configs' / '_base_'

BACKBONES = dict(deit=PatchViT, adv=Adventurer)
ARCH_NAMES = dict(t='Tiny', s='Small', b='Base', l='Large', h='Huge')
FAMILY_NAMES = dict(deit='DeiT', adv='Adventurer')
PATCHES = (16, 8, 4, 2, 1)


def embed_dims(family: str, arch: str) -> int:
    """Width of the backbone's tokens, as its class defines the arch."""
    return BACKBONES[family].arch_zoo[arch]['embed_dims']


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
    # each).
    ('adv', 'b', 16, 128, 448),
    # Figure 4: input size scaled with the patch at the sequence length of
    # B/16 at 224 px, every stage included (8x8 tokens in pretraining, 14x14
    # after): x2 and x4 beside the patch-16 chain. The figure gives no
    # numbers to print.
    ('adv', 'b', 32, 256, 448),
    ('adv', 'b', 64, 512, 896),
)
# The "by extending" ablation (Table 5): patch-16 tokens interpolated to the
# sequence length of a smaller patch. (family, arch, input size) -> the
# patches whose sequence length is matched (16 itself is the reference).
EXTEND_FROM = 16
EXTENDED = {
    ('deit', 'b', 128): (16, 8, 4),
    ('adv', 'b', 224): (16, 8, 4, 2),
}
# stage -> (paper table, schedule base for Tiny/Small/Base, for Large/Huge).
# Tables 9 and 10 list Small/Base and Large: Tiny takes the Small/Base recipe
# and Huge the Large one. The schedule bases hold the epochs and global batch.
STAGE_RECIPES = {
    'pretrain': (8, 'cls_pretrain_300e', 'cls_pretrain_large_200e'),
    'intermediate': (10, 'cls_intermediate_100e', 'cls_intermediate_large_50e'),
    'finetune': (9, 'cls_finetune_20e', 'cls_finetune_large_50e'),
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
# Input sizes with hand-written ImageNet bases; the others are generated
# from the 224 px ones with the crops rescaled.
WRITTEN_DATA_SIZES = (64, 128, 224)

# Downstream tasks on Adventurer-T and -B: ADE20k (Table 2) with both heads,
# COCO (Table 3); their dataset and schedule bases.
DOWNSTREAM_ARCHS = ('t', 'b')
SEG_PATCHES = (16, 8, 4, 2)
SEG_HEADS = ('linear', 'upernet')
SEG_BASES = ('ade20k_512x512', 'seg_160k')
DET_PATCHES = (64, 32, 16, 8, 4, 2)
DET_BASES = ('coco_instance_1x', 'det_1x')
# UperNet widths (neck output, decode head channels) per arch: neck + decode
# head of 12.5M parameters for Base and 4.8M for Tiny, the paper's 13M and 5M
# (Table 2's totals minus the backbones).
UPERNET_WIDTHS = dict(t=(256, 128), b=(320, 256))


def eval_crop_ratio(patch: int, size: int) -> float:
    """The authors evaluate patches below 16 and inputs above 224 px without
    the 0.875 centre crop, except very small inputs (64 px)."""
    return 1.0 if (patch < 16 or size > 224) and size > 64 else 0.875


def cls_name(family: str, arch: str, size: int, patch: int, stage: str,
             extend: bool = False) -> str:
    """Config stem, e.g. ``adv_b_p4_in1k_224_finetune``; MMEngine's default
    work dir ``work_dirs/<stem>`` is where the next stage looks."""
    ext = f'_extend{EXTEND_FROM}' if extend else ''
    return f'{family}_{arch}_p{patch}{ext}_in1k_{size}{STAGE_SUFFIX[stage]}'


def seg_name(arch: str, head: str, patch: int) -> str:
    return f'adv_{arch}_p{patch}_{head}_ade20k'


def det_name(arch: str, patch: int) -> str:
    return f'adv_{arch}_p{patch}_cascade-mask-rcnn_coco_1x'


def chain_stages(family: str, size: int) -> tuple:
    """The stages that train at ``size`` (the grid's, or the three-stage
    chain's for an extra chain's final size)."""
    return CLS_STAGES.get((family, size), ('intermediate', 'finetune'))


@functools.lru_cache(maxsize=None)
def base_config(path: str) -> Config:
    """A config of ``configs/_base_``, e.g. ``'schedules/cls_finetune_20e.py'``."""
    return Config.fromfile(str(BASES / path))


def stage_schedule(stage: str, arch: str) -> str:
    """Name of the schedule base of ``stage`` for ``arch``."""
    return STAGE_RECIPES[stage][1 + (arch in ('l', 'h'))]


def stage_epochs(stage: str, arch: str) -> int:
    schedule = base_config(f'schedules/{stage_schedule(stage, arch)}.py')
    return schedule.train_cfg.max_epochs


def recipe_batch(dataset: str, schedule: str) -> tuple:
    """(per-GPU batch of a dataset base, global batch of a schedule base)."""
    return (base_config(f'datasets/{dataset}.py').train_dataloader.batch_size,
            base_config(f'schedules/{schedule}.py').auto_scale_lr.base_batch_size)


def stage_batch(family: str, arch: str, stage: str) -> tuple:
    """:func:`recipe_batch` of a classification stage (the dataset bases of
    other sizes keep the 224 px batch)."""
    return recipe_batch(f'imagenet_224{STAGE_DATA[(family, stage)]}',
                        stage_schedule(stage, arch))


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
    return (cls_name(family, arch, from_size, patch, before, extend),
            stage_epochs(before, arch))


def classifier_size(patch: int) -> int:
    """Input size of the 224 px classification chain at ``patch``: 256 px
    where 224 px has no whole grid of patches."""
    return 224 if 224 % patch == 0 else 256


def det_side(patch: int) -> int:
    """The square with as many tokens as a 1333x800 image padded by the
    detector's preprocessor, for the memory model."""
    divisor = max(32, patch)
    tokens = (-(-800 // divisor) * divisor // patch) * \
        (-(-1333 // divisor) * divisor // patch)
    return patch * math.ceil(math.sqrt(tokens))


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
    from patchscale_mm.models.zoo import resolve_family
    name = resolve_family(family)
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


def gpu_plan(family: str, arch: str, side: int, patch: int, default: int,
             global_batch: int) -> str:
    """``'GPUs x images'`` and the estimated GiB per GPU of a leaf, for the
    model-zoo table."""
    per_gpu, with_cp = fit_per_gpu(family, arch, side, patch, default)
    state, plain, checkpointed = memory_gib(family, arch, side, patch)
    gib = state + per_gpu * (checkpointed if with_cp else plain)
    return (f'{global_batch // per_gpu} x {per_gpu}'
            f'{" (cp)" if with_cp else ""} | {gib:.1f}')
