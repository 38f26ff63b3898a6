"""The shipped recipes against the paper (Tables 8-10, Sec. 4.1, Table 2)
and the Adventurer authors' released training commands.

The expected values are written here from those sources, not read from the
config generator: a config that drifts from the paper fails.
"""
import re
from pathlib import Path

import pytest
import yaml
from mmengine.config import Config

from patchscale_mm.config_checks import estimate_training_memory

ROOT = Path(__file__).resolve().parents[1]
CLS = sorted((ROOT / 'configs' / 'cls').glob('*.py'))
NAME = re.compile(r'(?P<family>deit|adv)_(?P<arch>[tsblh])_p(?P<patch>\d+)(?:_extend16)?_in1k_'
                  r'(?P<size>\d+)(?:_(?P<stage>intermediate|finetune))?\.py')

# Paper Tables 8-10 (optimizer, lr per 512 images, weight decay, epochs,
# betas, global batch, warmup epochs, layer-wise lr decay) and the authors'
# commands (GPUs x images per GPU, lr rescaled by batch / 512 except in
# finetuning, where --unscale-lr keeps 1e-5).
RECIPES = {
    # stage, large: lr, wd, epochs, betas, batch, warmup, layer decay, GPUs
    ('pretrain', False): (5e-4 * 1024 / 512, 0.05, 300, (0.9, 0.999), 1024, 5, None, 8),
    ('pretrain', True): (2e-4 * 4096 / 512, 0.3, 200, (0.9, 0.95), 4096, 20, None, 32),
    ('intermediate', False): (5e-4 * 1024 / 512, 0.05, 100, (0.9, 0.999), 1024, 5, 0.9, 8),
    ('intermediate', True): (8e-4 * 4096 / 512, 0.3, 50, (0.9, 0.95), 4096, 20, 0.9, 32),
    ('finetune', False): (1e-5, 0.1, 20, (0.9, 0.999), 512, 5, 0.95, 8),
    ('finetune', True): (2e-5, 0.1, 50, (0.9, 0.95), 512, 5, 0.95, 8),
}
# Stochastic depth (Tables 8-10; Tiny takes Small's, Huge Large's).
DROP_PATH = {
    'pretrain': dict(t=0.1, s=0.1, b=0.1, l=0.2, h=0.2),
    'intermediate': dict(t=0.2, s=0.2, b=0.4, l=0.4, h=0.4),
    'finetune': dict(t=0.4, s=0.4, b=0.6, l=0.6, h=0.6),
}
# The authors' code: warmup from 1e-6, cosine to 1e-5 (their defaults).
WARMUP_LR, MIN_LR = 1e-6, 1e-5
# Augmentation: (train transforms after the flip, label smoothing, sampler,
# random erasing probability).
THREE_AUGMENT = (['patchscale_mm.ThreeAugment', 'ColorJitter'], 0.0, 'RepeatAugSampler', 0)
RAND_AUGMENT = (['RandAugment'], 0.1, 'DefaultSampler', 0)
DEIT = (['RandAugment', 'RandomErasing'], 0.1, 'RepeatAugSampler', 0.25)


def parse(path):
    m = NAME.fullmatch(path.name)
    assert m, path.name
    family, arch = m['family'], m['arch']
    stage = m['stage'] or 'pretrain'
    return family, arch, int(m['patch']), int(m['size']), stage


@pytest.fixture(scope='module')
def configs():
    return {path: Config.fromfile(str(path)) for path in CLS}


def test_every_classification_config_is_covered(configs):
    assert len(configs) == 216


@pytest.mark.parametrize('path', CLS, ids=lambda p: p.stem)
def test_classification_recipe(path, configs):
    cfg = configs[path]
    family, arch, patch, size, stage = parse(path)
    large = arch in ('l', 'h')
    lr, wd, epochs, betas, batch, warmup, decay, gpus = RECIPES[(stage, large)]
    optim = cfg.optim_wrapper
    assert optim.type == 'AmpOptimWrapper' and optim.dtype == 'bfloat16'
    assert optim.optimizer.type == 'AdamW'
    assert optim.optimizer.lr == pytest.approx(lr)
    assert optim.optimizer.weight_decay == wd
    assert tuple(optim.optimizer.betas) == betas
    assert cfg.train_cfg.max_epochs == epochs
    assert optim.get('paramwise_cfg', {}).get('layer_decay_rate') == decay
    warm, cosine = cfg.param_scheduler
    assert warm.type == 'LinearLR' and warm.end == warmup == cosine.begin
    assert warm.start_factor * lr == pytest.approx(WARMUP_LR)
    assert cosine.type == 'CosineAnnealingLR' and cosine.eta_min == MIN_LR
    assert cosine.end == epochs
    # The table's batch: the README command's GPUs x the per-GPU batch, or
    # as many GPUs as the config says it takes to fit 80 GB.
    assert cfg.auto_scale_lr.base_batch_size == batch
    per_gpu = cfg.train_dataloader.batch_size
    # Table 5's "by extending" configs inherit their batch from the config
    # they extend.
    text = path.read_text() + ''.join(
        (path.parent / base).read_text() for base in re.findall(r"_base_ = '\./(.*)'", path.read_text()))
    stated = re.search(r'takes (\d+) GPUs', text)
    assert per_gpu * (int(stated[1]) if stated else gpus) == batch
    assert cfg.model.backbone.drop_path_rate == DROP_PATH[stage][arch]
    # Mixup 0.8 and CutMix 1.0 in every stage (the authors' defaults, DeiT's).
    assert [(a.type, a.alpha) for a in cfg.model.train_cfg.augments] == [
        ('Mixup', 0.8), ('CutMix', 1.0)]
    if family == 'adv':
        expected = RAND_AUGMENT if stage == 'finetune' else THREE_AUGMENT
        assert cfg.model.backbone.flip_rule == 'released'
        assert cfg.model.backbone.drop_path_schedule == 'released'
    else:
        expected = DEIT
    transforms, smoothing, sampler, erasing = expected
    pipeline = cfg.train_dataloader.dataset.pipeline
    types = [t.type for t in pipeline]
    assert types[:3] == ['LoadImageFromFile', 'RandomResizedCrop', 'RandomFlip']
    assert types[3:-1] == transforms and types[-1] == 'PackInputs'
    assert pipeline[1].scale == size
    for t in pipeline:
        if t.type == 'RandAugment':  # rand-m9-mstd0.5-inc1
            assert (t.policies, t.num_policies, t.magnitude_level, t.magnitude_std) == (
                'timm_increasing', 2, 9, 0.5)
        if t.type == 'RandomErasing':
            assert t.erase_prob == erasing
        if t.type == 'ColorJitter':
            assert (t.brightness, t.contrast, t.saturation) == (0.3, 0.3, 0.3)
    assert cfg.model.head.loss.label_smooth_val == smoothing
    assert cfg.train_dataloader.sampler.type == sampler
    # Figure 1's axis beside top-1.
    assert [e.type for e in cfg.test_evaluator] == ['Accuracy', 'patchscale_mm.ClsTestLoss']


@pytest.mark.parametrize('path', CLS, ids=lambda p: p.stem)
def test_evaluation_crop_ratio(path, configs):
    """Crop ratio 1.0 below patch 16 and above 224 px, 0.875 otherwise and
    at 64 px (the authors' evaluation instructions)."""
    _, _, patch, size, _ = parse(path)
    ratio = 1.0 if (patch < 16 or size > 224) and size > 64 else 0.875
    for loader in ('val_dataloader', 'test_dataloader'):
        resize, crop = configs[path][loader].dataset.pipeline[1:3]
        assert resize.type == 'ResizeEdge' and resize.edge == 'short'
        assert crop.crop_size == size
        assert resize.scale == int(size / ratio)


UPERNET_PAPER_M = dict(t=17 - 12, b=112 - 99)  # Table 2 totals minus backbones


@pytest.mark.parametrize('arch', ['t', 'b'])
def test_upernet_size_matches_the_paper(arch):
    from tools.analysis.get_params import config_params
    for patch in (16, 8, 4, 2):
        parts = config_params(str(ROOT / f'configs/seg/adv_{arch}_p{patch}_upernet_ade20k.py'))
        decoder = (parts['neck'] + parts['decode_head']) / 1e6
        assert abs(decoder - UPERNET_PAPER_M[arch]) <= 0.1 * UPERNET_PAPER_M[arch], decoder


SEG_DET = sorted([*(ROOT / 'configs' / 'seg').glob('*.py'), *(ROOT / 'configs' / 'det').glob('*.py')])


@pytest.mark.parametrize('path', SEG_DET, ids=lambda p: p.stem)
def test_downstream_recipe(path):
    cfg = Config.fromfile(str(path))
    backbone = cfg.model.backbone
    assert backbone.flip_rule == 'released' and backbone.drop_path_schedule == 'released'
    assert cfg.optim_wrapper.type == 'AmpOptimWrapper'
    optimizer = cfg.optim_wrapper.optimizer
    # Sec. 4.1: ADE20k AdamW 5e-5, wd 0.01, 160k iterations, batch 16;
    # COCO AdamW 1e-4, wd 0.05, 12 epochs, batch 16; 8 GPUs x 2 images.
    if '/seg/' in str(path):
        assert (optimizer.lr, optimizer.weight_decay) == (5e-5, 0.01)
        assert cfg.train_cfg.max_iters == 160000
        assert [e.type for e in cfg.test_evaluator] == ['IoUMetric', 'patchscale_mm.SegTestLoss']
        # Iterations, not epochs: a checkpoint at each validation, logs by
        # iteration.
        checkpoint = cfg.default_hooks.checkpoint
        assert checkpoint.by_epoch is False and checkpoint.interval == cfg.train_cfg.val_interval
        assert cfg.log_processor.by_epoch is False
        assert cfg.default_hooks.logger.log_metric_by_epoch is False
    else:
        assert (optimizer.lr, optimizer.weight_decay) == (1e-4, 0.05)
        assert cfg.train_cfg.max_epochs == 12
        # Figure 1's axis: the detector's own loss on the test set.
        assert 'patchscale_mm.EvalLossHook' in [h.type for h in cfg.custom_hooks]
        assert {'patchscale_mm.WeightsOnlyCheckpointHook',
                'patchscale_mm.NonFiniteLossHook'} <= {h.type for h in cfg.custom_hooks}
    assert cfg.train_dataloader.batch_size * 8 == cfg.auto_scale_lr.base_batch_size == 16


@pytest.mark.parametrize('path', CLS + SEG_DET, ids=lambda p: p.stem)
def test_fits_an_80gb_gpu(path, monkeypatch):
    """Each shipped config fits an 80 GB GPU at its per-GPU batch, by the
    memory model the pre-flight check uses (this repository's CUDA scan)."""
    from patchscale_mm.analysis.cost import measure
    monkeypatch.setattr(measure, 'active_scan', lambda device='cpu': 'kernel')
    cfg = Config.fromfile(str(path))
    estimate = estimate_training_memory(cfg, device='cuda')
    assert estimate.precision == 'amp'
    assert estimate.total() <= 0.9 * 80 * 2**30, estimate.total() / 2**30


CHECKPOINT = re.compile(r'work_dirs/(?P<stem>[\w-]+)/epoch_(?P<epoch>\d+)\.pth')


def chain(path):
    """The configs a classification config's training loads, last first,
    down to its pretraining (which loads nothing)."""
    links = []
    while True:
        cfg = Config.fromfile(str(path))
        links.append((path, cfg))
        if not cfg.load_from:
            return links
        m = CHECKPOINT.fullmatch(cfg.load_from)
        path = ROOT / 'configs' / 'cls' / f"{m['stem']}.py"
        assert path.exists(), cfg.load_from
        # The previous stage's last epoch.
        assert Config.fromfile(str(path)).train_cfg.max_epochs == int(m['epoch'])


# Sec. 3.2: the same patch size in classification pretraining and downstream
# finetuning; Table 3's detection patches.
TABLE3_PATCHES = dict(t=(32, 16, 8, 4, 2), b=(64, 32, 16, 8, 4))


@pytest.mark.parametrize('path', SEG_DET, ids=lambda p: p.stem)
def test_downstream_starts_from_a_classifier_at_its_patch(path):
    cfg = Config.fromfile(str(path))
    m = CHECKPOINT.fullmatch(cfg.model.backbone.init_cfg.checkpoint)
    classifier = ROOT / 'configs' / 'cls' / f"{m['stem']}.py"
    assert classifier.exists(), m['stem']
    family, arch, patch, size, stage = parse(classifier)
    assert (family, arch, patch, stage) == ('adv', cfg.model.backbone.arch,
                                            cfg.model.backbone.patch_size, 'finetune')
    assert size % patch == 0 and size >= 224
    assert len(chain(classifier)) == 3
    if '/det/' in str(path):
        assert cfg.model.backbone.img_size == size


def test_every_table3_patch_has_a_detection_config():
    for arch, patches in TABLE3_PATCHES.items():
        for patch in patches:
            assert (ROOT / f'configs/det/adv_{arch}_p{patch}_cascade-mask-rcnn_coco_1x.py').exists()


def test_input_size_scaling_keeps_the_sequence_length():
    """Figure 4 at 2x and 4x the 224 px input, and Sec. 4.3's B/16 at 448 px:
    every stage has the tokens of the chain it is compared with."""
    reference = [(8, 'pretrain'), (14, 'intermediate'), (14, 'finetune')]
    for patch, size in ((32, 448), (64, 896)):
        links = chain(ROOT / f'configs/cls/adv_b_p{patch}_in1k_{size}_finetune.py')
        assert [(parse(p)[3] // patch, parse(p)[4]) for p, _ in reversed(links)] == reference
    links = chain(ROOT / 'configs/cls/adv_b_p16_in1k_448_finetune.py')
    assert (448 // 16)**2 == (224 // 8)**2 == 784
    assert [parse(p)[3] for p, _ in reversed(links)] == [128, 448, 448]
    readme = (ROOT / 'README.md').read_text()
    # Sec. 4.3: 0.4 above B/8 at 224 px (83.9, Table 1).
    assert re.search(r'\| Adventurer-B \(finetune\) \| 16 \| 448px \| 784 \| 84\.3 \|', readme)


# Written from the paper: the abstract's 84.6% top-1 at 50,176 tokens
# (Adventurer-B, pixel tokens, 224 px), Sec. 4.3's B/16 at 448 px, Table 2's
# best linear-head mIoU and Table 3's best Base box / mask AP.
PAPER_HEADLINES = {
    'configs/cls/adv_b_p1_in1k_224_finetune.py': {'Top 1 Accuracy': 84.6},
    'configs/cls/adv_b_p16_in1k_448_finetune.py': {'Top 1 Accuracy': 84.3},
    'configs/seg/adv_b_p2_linear_ade20k.py': {'mIoU': 46.8},
    'configs/det/adv_b_p4_cascade-mask-rcnn_coco_1x.py': {'box AP': 50.3, 'mask AP': 43.4},
}


def test_metafiles_hold_the_papers_headline_results():
    metrics = {}
    for task in ('cls', 'seg', 'det'):
        for model in yaml.safe_load((ROOT / f'configs/{task}/metafile.yml').read_text())['Models']:
            metrics[model['Config']] = {
                name: value for result in model['Results'] for name, value in result['Metrics'].items()}
    for config, expected in PAPER_HEADLINES.items():
        assert metrics[config] == expected, config
