"""One backbone class, built by mmpretrain, mmseg and mmdet configs."""
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope

from patchscale_mm.models import Adventurer, LinearSegHead, PatchViT

BACKBONES = {
    'PatchViT': dict(
        type='patchscale_mm.PatchViT',
        arch=dict(embed_dims=32, num_layers=2, num_heads=2, mlp_dims=64)),
    'Adventurer': dict(
        type='patchscale_mm.Adventurer',
        arch=dict(embed_dims=32, num_layers=2, mlp_dims=48),
        mixer_cfg=dict(headdim=16, d_state=8, chunk_size=16)),
}
CLASSES = {'PatchViT': PatchViT, 'Adventurer': Adventurer}


def config(default_scope: str, model: dict) -> Config:
    """A config as a user writes it: the scope's own types plus ours."""
    cfg = Config(
        dict(
            default_scope=default_scope,
            custom_imports=dict(
                imports=['patchscale_mm.models'], allow_failed_imports=False),
            model=model))
    init_default_scope(cfg.default_scope)
    return cfg


@pytest.mark.parametrize('family', sorted(BACKBONES))
def test_mmpretrain_image_classifier(family):
    from mmpretrain.registry import MODELS
    from mmpretrain.structures import DataSample
    cfg = config(
        'mmpretrain',
        dict(
            type='ImageClassifier',
            backbone=dict(BACKBONES[family], img_size=16, patch_size=2),
            neck=None,
            head=dict(
                type='LinearClsHead',
                num_classes=10,
                in_channels=32,
                loss=dict(type='CrossEntropyLoss'))))
    model = MODELS.build(cfg.model)
    assert type(model.backbone) is CLASSES[family]
    imgs = torch.randn(2, 3, 16, 16)
    assert model(imgs, mode='tensor').shape == (2, 10)
    samples = [DataSample().set_gt_label(i) for i in (3, 7)]
    loss = model(imgs, samples, mode='loss')['loss']
    loss.backward()
    assert torch.isfinite(loss)


@pytest.mark.parametrize('family', sorted(BACKBONES))
def test_mmseg_encoder_decoder_with_linear_head(family):
    from mmengine.structures import PixelData
    from mmseg.registry import MODELS
    from mmseg.structures import SegDataSample
    cfg = config(
        'mmseg',
        dict(
            type='EncoderDecoder',
            data_preprocessor=dict(type='SegDataPreProcessor', size=(16, 16)),
            backbone=dict(
                BACKBONES[family], img_size=16, patch_size=4,
                out_type='featmap'),
            decode_head=dict(
                type='patchscale_mm.LinearSegHead',
                in_channels=32,
                num_classes=5,
                loss_decode=dict(type='CrossEntropyLoss')),
            test_cfg=dict(mode='whole')))
    model = MODELS.build(cfg.model)
    assert type(model.backbone) is CLASSES[family]
    assert type(model.decode_head) is LinearSegHead
    imgs = torch.randn(2, 3, 16, 16)
    # The head classifies each stride-4 token ...
    assert model(imgs, mode='tensor').shape == (2, 5, 4, 4)
    samples = []
    for _ in range(2):
        sample = SegDataSample(
            gt_sem_seg=PixelData(data=torch.randint(0, 5, (1, 16, 16))))
        sample.set_metainfo(dict(img_shape=(16, 16), ori_shape=(16, 16)))
        samples.append(sample)
    # ... and the loss and the prediction are at full resolution.
    losses = model(imgs, samples, mode='loss')
    losses['decode.loss_ce'].backward()
    preds = model(imgs, samples, mode='predict')
    assert preds[0].pred_sem_seg.data.shape == (1, 16, 16)


@pytest.mark.parametrize('family', sorted(BACKBONES))
def test_mmdet_backbone_and_neck(family):
    from mmdet.registry import MODELS
    cfg = config(
        'mmdet',
        dict(
            type='RetinaNet',
            backbone=dict(
                BACKBONES[family],
                img_size=32,
                patch_size=8,
                out_type='featmap',
                out_indices=(0, 1)),
            neck=dict(
                type='FPN', in_channels=[32, 32], out_channels=16,
                num_outs=3, add_extra_convs='on_output'),
            bbox_head=dict(
                type='RetinaHead',
                num_classes=3,
                in_channels=16,
                feat_channels=16,
                stacked_convs=1,
                anchor_generator=dict(
                    type='AnchorGenerator',
                    octave_base_scale=4,
                    scales_per_octave=1,
                    ratios=[1.0],
                    strides=[8, 8, 16]),
                bbox_coder=dict(type='DeltaXYWHBBoxCoder'),
                loss_cls=dict(type='FocalLoss', use_sigmoid=True),
                loss_bbox=dict(type='L1Loss')),
            train_cfg=None,
            test_cfg=None))
    model = MODELS.build(cfg.model)
    assert type(model.backbone) is CLASSES[family]
    feats = model.extract_feat(torch.randn(2, 3, 32, 32))
    # Both stride-8 maps keep their size; the extra level halves it.
    assert [f.shape[-1] for f in feats] == [4, 4, 2]
    cls_scores, bbox_preds = model(torch.randn(2, 3, 32, 32), mode='tensor')
    assert cls_scores[0].shape == (2, 3, 4, 4)


def test_config_files_import_the_package_themselves(tmp_path):
    """A fresh process that only reads config files (as tools/train.py does)
    finds the backbone through ``custom_imports`` in every scope."""
    import subprocess
    import sys
    import textwrap
    script = textwrap.dedent(f"""
        import sys
        from mmengine.config import Config
        from mmengine.registry import init_default_scope
        assert 'patchscale_mm' not in sys.modules
        for scope, registry in [('mmpretrain', 'mmpretrain.registry'),
                                ('mmseg', 'mmseg.registry'),
                                ('mmdet', 'mmdet.registry')]:
            path = '{tmp_path}/' + scope + '.py'
            with open(path, 'w') as f:
                f.write(f"default_scope = {{scope!r}}\\n"
                        "custom_imports = dict(imports=['patchscale_mm.models'],"
                        " allow_failed_imports=False)\\n"
                        "backbone = dict(type='patchscale_mm.Adventurer', "
                        "arch='t', img_size=32, patch_size=8)\\n")
            cfg = Config.fromfile(path)
            init_default_scope(cfg.default_scope)
            MODELS = __import__(registry, fromlist=['MODELS']).MODELS
            model = MODELS.build(cfg.backbone)
            print(scope, type(model).__module__, type(model).__name__)
    """)
    out = subprocess.run([sys.executable, '-c', script],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.split('\n')
    for scope in ('mmpretrain', 'mmseg', 'mmdet'):
        assert (f'{scope} patchscale_mm.models.backbones.adventurer '
                'Adventurer') in lines
