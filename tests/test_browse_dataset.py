"""tools/analysis/browse_dataset.py on the ImageNet, ADE20k and COCO layout
fixtures: one PNG per sample with the ground truth drawn by the task's own
visualizer, and one-line errors for configs it cannot browse."""
import json
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from tool_scripts import load_tool

from patchscale_mm.fixtures import (make_ade20k_fixture,
                                    make_coco_fixture,
                                    make_imagenet_fixture)

ROOT = Path(__file__).resolve().parents[1]
TOOL = 'tools/analysis/browse_dataset.py'
CONFIGS = dict(cls='tests/configs/cls_tiny.py',
               seg='tests/configs/seg_tiny.py',
               det='tests/configs/det_tiny.py')
SEG_ALPHA = 0.8  # SegLocalVisualizer's default mask opacity


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp('data')
    return dict(
        cls=make_imagenet_fixture(root / 'imagenet', 40, 20, img_size=32),
        seg=make_ade20k_fixture(root / 'ade', 16, 4),
        det=make_coco_fixture(root / 'coco', 8, 4))


def browse(task, root, out_dir, *extra):
    loaders = ('train_dataloader', 'val_dataloader', 'test_dataloader')
    options = [f'{loader}.dataset.data_root={root}/' for loader in loaders]
    return subprocess.run(
        [sys.executable, TOOL, CONFIGS[task], '--output-dir', str(out_dir),
         '--show-number', '3', *extra, '--cfg-options', *options],
        cwd=ROOT, capture_output=True, text=True, timeout=300)


def browse_ok(task, root, out_dir, *extra):
    """Runs the tool; returns {png path: its printed ground truth}."""
    out = browse(task, root, out_dir, *extra)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    pngs = sorted(out_dir.glob('*.png'))
    assert len(pngs) == 3 and len(list(out_dir.iterdir())) == 3, pngs
    printed = dict(re.findall(r'^(\S+\.png): (.*)$', out.stdout, re.M))
    assert sorted(Path(p) for p in printed) == pngs, out.stdout
    assert re.search(r'^wrote 3 of \d+ ', out.stdout, re.M), out.stdout
    return out.stdout, {Path(p): text for p, text in printed.items()}


def read_png(path):
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert image is not None, f'{path} is not a readable image'
    return image[..., ::-1]  # RGB


def stem(png):
    """The image file's stem, from ``<index>_<stem>.png``."""
    return png.stem.split('_', 1)[1]


def unchanged_blocks(image, size):
    """Per ``factor x factor`` block of an image enlarged from ``size`` px
    by a whole factor: whether it still holds a single colour."""
    factor = image.shape[0] // size
    assert image.shape[:2] == (size * factor, size * factor) and factor > 1
    blocks = image.reshape(size, factor, size, factor, 3)
    return (blocks == blocks[:, :1, :, :1]).all(axis=(1, 3, 4))


def ade20k_palette():
    from mmseg.datasets import ADE20KDataset
    return np.array(ADE20KDataset.METAINFO['palette'], float)


def test_classification_draws_the_label_file_label(data, tmp_path):
    stdout, printed = browse_ok('cls', data['cls'], tmp_path)
    assert "ImageNet (train): 40 samples" in stdout
    labels = dict(
        line.split() for line in
        (data['cls'] / 'meta' / 'train.txt').read_text().splitlines())
    for png, text in printed.items():
        name = next(k for k in labels if Path(k).stem == stem(png))
        assert text.startswith(f'label {labels[name]} ('), text
        # The 64 px crop, enlarged 4x nearest-neighbour: every block is one
        # pixel of the transformed input, except under the label text drawn
        # at the top.
        blocks = unchanged_blocks(read_png(png), 64)
        assert 0.8 < blocks.mean() < 1
        changed_rows = np.nonzero(~blocks.all(axis=1))[0]
        assert changed_rows.max() < 16, changed_rows


def blend_consistent(image, colours, alpha=SEG_ALPHA):
    """Pixels that are ``alpha * colour + (1 - alpha) * some pixel`` for
    one of ``colours`` (a mask drawn over an image)."""
    image = image.astype(float)
    ok = np.zeros(image.shape[:2], bool)
    for colour in colours:
        rest = image - alpha * colour
        ok |= ((rest >= -2) & (rest <= (1 - alpha) * 255 + 2)).all(-1)
    return ok


def test_segmentation_draws_palette_masks_of_reduced_labels(data, tmp_path):
    stdout, printed = browse_ok('seg', data['seg'], tmp_path)
    assert 'palette: 150 colours' in stdout
    assert 'reduce_zero_label: True' in stdout
    palette = ade20k_palette()
    for png in printed:
        ann = cv2.imread(
            str(data['seg'] / 'annotations' / 'training' / f'{stem(png)}.png'),
            cv2.IMREAD_GRAYSCALE)
        present = [k - 1 for k in np.unique(ann) if k > 0]  # reduced
        # Random crop and resize: the pixels must still be the palette
        # colours of the sample's classes laid over the image.
        image = read_png(png)
        assert blend_consistent(image, palette[present]).mean() > 0.9


def test_segmentation_val_matches_the_files(data, tmp_path):
    _, printed = browse_ok('seg', data['seg'], tmp_path, '--phase', 'val')
    palette = ade20k_palette()
    for png, text in printed.items():
        assert stem(png).startswith('ADE_validation_')
        folder = data['seg']
        source = cv2.imread(
            str(folder / 'images' / 'validation' / f'{stem(png)}.jpg'))
        ann = cv2.imread(
            str(folder / 'annotations' / 'validation' / f'{stem(png)}.png'),
            cv2.IMREAD_GRAYSCALE).astype(int) - 1  # reduce_zero_label
        assert (ann >= 0).all() and text.startswith('mask 0 (wall) ')
        # The val pipeline keeps 64x64: the written image is the file's
        # pixels blended with the palette colour of each reduced label,
        # enlarged 4x; only the class-name tags differ.
        expected = (source[..., ::-1] * (1 - SEG_ALPHA) +
                    palette[ann] * SEG_ALPHA).astype(np.uint8)
        expected = expected.repeat(4, 0).repeat(4, 1)
        image = read_png(png)
        assert image.shape == expected.shape
        same = (np.abs(image.astype(int) - expected) <= 1).all(-1).mean()
        assert 0.85 < same < 1, same


def test_detection_draws_every_instance(data, tmp_path):
    stdout, printed = browse_ok('det', data['det'], tmp_path)
    assert 'CocoDataset (train): 8 samples, 10 classes' in stdout
    coco = json.loads(
        (data['det'] / 'annotations' / 'instances_train2017.json').read_text())
    ids = {Path(img['file_name']).stem: img['id'] for img in coco['images']}
    for png, text in printed.items():
        count = sum(ann['image_id'] == ids[stem(png)]
                    for ann in coco['annotations'])
        assert text.startswith(f'{count} instance'), text
        # 128 px scenes enlarged 2x; boxes, masks and names drawn on them.
        blocks = unchanged_blocks(read_png(png), 128)
        assert 0.7 < blocks.mean() < 1


def test_phase_without_a_dataloader_is_a_one_line_error(tmp_path):
    out = subprocess.run(
        [sys.executable, TOOL, CONFIGS['seg'], '--output-dir',
         str(tmp_path / 'out'), '--phase', 'test', '--cfg-options',
         'test_dataloader=None'],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert out.stderr.strip().splitlines() == [
        f'error: {CONFIGS["seg"]} has no test_dataloader with a dataset to '
        'browse; pick another --phase'
    ], out.stderr
    assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize('config,options,message', [
    (CONFIGS['seg'], ['--cfg-options',
                      'train_dataloader.dataset.data_root=/nowhere/'],
     'data_root /nowhere/ of the train dataset not found'),
    (CONFIGS['det'], ['--phase', 'val', '--cfg-options',
                      'val_dataloader.dataset.data_root=/nowhere/'],
     'data_root /nowhere/ of the val dataset not found'),
    (CONFIGS['cls'], ['--cfg-options', 'default_scope=mmfoo'],
     "default_scope 'mmfoo' is not one of"),
    ('tests/configs/missing.py', [], 'not found'),
    (CONFIGS['cls'], ['--show-number', '0'], 'at least 1'),
], ids=['data_root', 'val_data_root', 'scope', 'config', 'show_number'])
def test_bad_input_stops_before_any_work(monkeypatch, tmp_path, config,
                                         options, message):
    """In process (the config checks need no downstream import)."""
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as exit_info:
        load_tool('browse_dataset').main(
            [config, '--output-dir', str(tmp_path / 'out'), *options])
    text = str(exit_info.value.code)
    assert text.startswith('error: ') and '\n' not in text
    assert message in text
    assert not (tmp_path / 'out').exists()
