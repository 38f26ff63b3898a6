"""Scaling-law fits against exact synthetic laws and scipy's regression, the
record readers, and the CLI end to end."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from patchscale_mm.analysis.scaling_law import (fit_offset_power_law,
                                                fit_power_law, fit_records,
                                                load_records)

ROOT = Path(__file__).parents[1]
PATCHES = [16, 8, 4, 2, 1]


@pytest.mark.parametrize('a,b', [(2.5, 0.12), (0.7, -0.4), (11., 1.5)])
def test_power_law_recovers_exact_law(a, b):
    patches = PATCHES + [4, 2]  # repeats, as from several seeds
    fit = fit_power_law(patches, [a * p**b for p in patches])
    assert fit.a == pytest.approx(a, rel=1e-12)
    assert fit.b == pytest.approx(b, rel=1e-12, abs=1e-12)
    assert fit.c == 0 and not fit.offset and fit.n == 7
    assert fit.r2 == pytest.approx(1., abs=1e-12)
    assert fit.se_b < 1e-10 and fit.se_a < 1e-10


def test_power_law_matches_scipy_linregress_on_noisy_data():
    rng = np.random.default_rng(0)
    patches = np.repeat(PATCHES, 3)
    losses = 1.9 * patches**0.15 * np.exp(rng.normal(0, .03, patches.size))
    fit = fit_power_law(patches, losses)
    ref = stats.linregress(np.log(patches), np.log(losses))
    assert fit.b == pytest.approx(ref.slope, rel=1e-10)
    assert fit.se_b == pytest.approx(ref.stderr, rel=1e-8)
    assert np.log(fit.a) == pytest.approx(ref.intercept, rel=1e-10)
    # se of a by the delta method from the intercept's standard error
    assert fit.se_a == pytest.approx(fit.a * ref.intercept_stderr, rel=1e-8)
    assert fit.r2 == pytest.approx(ref.rvalue**2, rel=1e-10)


def test_two_points_fit_exactly_without_standard_errors():
    fit = fit_power_law([16, 4], [3., 2.])
    assert fit.predict([16, 4]) == pytest.approx([3., 2.])
    assert np.isnan(fit.se_b) and np.isnan(fit.se_a)


@pytest.mark.parametrize('a,b,c', [(1.8, .35, .9), (.4, .8, 2.), (3., .1, 0.)])
def test_offset_power_law_recovers_exact_law(a, b, c):
    fit = fit_offset_power_law(PATCHES, [c + a * p**b for p in PATCHES])
    assert fit.offset
    assert (fit.a, fit.b, fit.c) == pytest.approx((a, b, c), rel=1e-6,
                                                  abs=1e-6)
    assert fit.r2 == pytest.approx(1., abs=1e-10)


def test_offset_fit_standard_errors_cover_the_truth():
    rng = np.random.default_rng(1)
    patches = np.repeat(PATCHES, 4)
    losses = .9 + 1.8 * patches**.35 + rng.normal(0, .01, patches.size)
    fit = fit_offset_power_law(patches, losses)
    for value, se, truth in ((fit.a, fit.se_a, 1.8), (fit.b, fit.se_b, .35),
                             (fit.c, fit.se_c, .9)):
        assert 0 < se < 1 and abs(value - truth) < 4 * se


@pytest.mark.parametrize('fit,patches,losses,match', [
    (fit_power_law, [8, 8, 8], [1., 2., 3.], 'at least 2 distinct patch'),
    (fit_power_law, [8, 4], [1., 0.], 'positive losses; got 0 at patch 4'),
    (fit_power_law, [8, 4, 2], [1., 2.], 'differ in length'),
    (fit_power_law, [8, 0], [1., 2.], 'patch sizes must be positive'),
    (fit_power_law, [8, 4], [1., float('nan')], 'losses must be finite'),
    (fit_offset_power_law, [8, 4, 8], [1., 2., 1.], 'at least 3 distinct'),
])
def test_bad_input_raises_one_clear_line(fit, patches, losses, match):
    with pytest.raises(ValueError, match=match) as info:
        fit(patches, losses)
    assert '\n' not in str(info.value)


def _records(task='cls-64', family='Adventurer', a=2., b=.1, patches=PATCHES):
    return [
        dict(task=task, family=family, patch=p, test_loss=a * p**b,
             metric=80. - p, steps=100, seconds=1.) for p in patches
    ]


def test_fit_records_groups_and_reports_unfittable_groups():
    records = (_records('cls-64', 'PatchViT', 2., .2) +
               _records('cls-64', 'Adventurer', 3., .1) +
               _records('seg-512', 'Adventurer', patches=[8]))
    fits, errors = fit_records(records)
    assert fits[('cls-64', 'PatchViT')].b == pytest.approx(.2)
    assert fits[('cls-64', 'Adventurer')].a == pytest.approx(3.)
    assert list(errors) == [('seg-512', 'Adventurer')]
    assert 'at least 2 distinct patch sizes, got 1 (8)' in errors[(
        'seg-512', 'Adventurer')]


def test_load_results_json_names_the_missing_key(tmp_path):
    records = _records()
    del records[2]['patch']
    path = tmp_path / 'results.json'
    path.write_text(json.dumps(records))
    with pytest.raises(ValueError, match=r'record 2 lacks key\(s\) patch'):
        load_records(path)
    path.write_text(json.dumps({'task': 'cls'}))
    with pytest.raises(ValueError, match='expected a list of records'):
        load_records(path)
    with pytest.raises(ValueError, match='no such file'):
        load_records(tmp_path / 'missing.json')


def test_load_mmengine_scalars_with_its_config(tmp_path):
    vis = tmp_path / 'adv_p4' / '20250101_000000' / 'vis_data'
    vis.mkdir(parents=True)
    lines = [dict(loss=2.5, step=50), dict(loss=2.0, step=100),
             {'test/loss': 1.7, 'step': 1}, dict(loss=1.9, step=150),
             {'test/loss': 1.5, 'step': 2}]
    (vis / 'scalars.json').write_text('\n'.join(map(json.dumps, lines)))
    (vis / 'config.py').write_text(
        "model = dict(type='ImageClassifier', backbone=dict("
        "type='patchscale_mm.Adventurer', arch='t', img_size=64, "
        'patch_size=4))\n')
    [record] = load_records(tmp_path, key='test/loss')
    assert record == {'test/loss': 1.5, 'steps': 2, 'task': 'cls-64',
                      'family': 'Adventurer', 'patch': 4}
    # Explicit metadata wins over the config.
    [record] = load_records(vis / 'scalars.json', 'test/loss',
                            dict(task='cls-224'))
    assert record['task'] == 'cls-224'
    with pytest.raises(ValueError, match="no logged value of 'acc'"):
        load_records(vis / 'scalars.json', key='acc')
    (vis / 'config.py').unlink()
    with pytest.raises(ValueError, match='cannot tell task, family, patch'):
        load_records(vis / 'scalars.json', key='test/loss')


def _run_cli(*args):
    return subprocess.run(
        [sys.executable, str(ROOT / 'tools/analysis/fit_scaling_law.py'),
         *map(str, args)],
        capture_output=True, text=True, timeout=120)


def test_cli_fits_and_plots_a_synthetic_sweep(tmp_path):
    records = (_records('cls-64', 'PatchViT', 2.2, .12) +
               _records('cls-64', 'Adventurer', 2.1, .11) +
               _records('seg-512', 'Adventurer', .9, .08))
    path = tmp_path / 'results.json'
    path.write_text(json.dumps(records))
    result = _run_cli(path, '--offset')
    assert result.returncode == 0, result.stderr
    png = tmp_path / 'scaling_law.png'
    assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    rows = [r for r in result.stdout.splitlines() if r.startswith('| cls')]
    assert len(rows) == 2 and '| PatchViT | 5 | 0.12' in rows[0]

    bad = tmp_path / 'bad.json'
    bad.write_text(json.dumps([dict(task='cls', family='A', patch=4)]))
    result = _run_cli(bad, '--out', tmp_path / 'x.png')
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f'error: {bad}: record 0 lacks key(s) test_loss (has: family, patch, '
        'task)'
    ]
