"""The scaling sweep end to end on a tiny slice, through the same code path
as the default run (tools/train.py, the Runners, the fit and the plot)."""
import csv
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from processes import HAS_PROC, children, still_running_after
from tool_scripts import load_tool

from patchscale_mm.sweep.clock import CLOCK_FILE, read_clock, seconds_before
from patchscale_mm.sweep.overrides import run_config
from patchscale_mm.sweep.plan import Run, plan_runs
from patchscale_mm.sweep.progress import (ProgressLine, format_duration,
                                          sweep_progress)
from patchscale_mm.sweep.report import fit_and_plot
from patchscale_mm.sweep.resume import CONFIG_STAMP, resumable_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def sweep_cli(*args, timeout=600):
    return subprocess.run([sys.executable, 'tools/patch_scaling_sweep.py',
                           *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def test_sweep_end_to_end(tmp_path):
    tiny = ['--work-dir', tmp_path / 'sweep', '--data-cache', tmp_path,
            '--families', 'adventurer', '--seg-patches', 8, 4,
            '--cls-patches', 8, 4, '--seg-steps', 3, '--cls-steps', 3,
            '--batch-size', 8, '--num-scenes', 48, 16, '--train-limit', 48,
            '--val-limit', 16]
    out = sweep_cli(*tiny)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    records = json.loads((tmp_path / 'sweep' / 'results.json').read_text())
    assert [(r['task'], r['patch']) for r in records] == [
        ('seg', 8), ('seg', 4), ('cls', 8), ('cls', 4)]
    for r in records:
        for key in ('task', 'family', 'patch', 'test_loss', 'metric',
                    'steps', 'seconds'):
            assert key in r
        assert r['family'] == 'adventurer' and r['steps'] == 3
        assert r['tokens'] == (32 // r['patch'])**2
        assert 0 < r['test_loss'] < 10 and 0 <= r['metric'] <= 100
        # The run's own logs and config stay beside the result.
        assert (Path(r['work_dir']) / 'train.log').is_file()
    with open(tmp_path / 'sweep' / 'results.csv', newline='') as f:
        rows = list(csv.DictReader(f))
    assert [(r['task'], int(r['patch']), float(r['test_loss'])) for r in rows] \
        == [(r['task'], r['patch'], r['test_loss']) for r in records]
    assert (tmp_path / 'sweep' / 'scaling_law.png').stat().st_size > 0
    fits = json.loads((tmp_path / 'sweep' / 'fits.json').read_text())
    assert set(fits) == {'seg/adventurer', 'cls/adventurer'}
    # Two patch sizes per group: points, no law.
    assert all(f['fitted'] is False and 'r2' not in f for f in fits.values())
    assert 'test loss' in out.stdout and 'power-law fits' in out.stdout
    assert '2 points: no fit' in out.stdout and 'R²' not in out.stdout
    # Each run's line tells the sweep's progress; the first cannot guess.
    starts = re.findall(r'\[(\d)/4\] \w+: .*; sweep (\d+)%, (.*)', out.stdout)
    assert [s[0] for s in starts] == ['1', '2', '3', '4'], out.stdout
    assert starts[0][1:] == ('0', 'time left known after the first run')
    assert all(re.fullmatch(r'about \d+ (s|min) left', s[2])
               for s in starts[1:])
    assert all(0 < int(s[1]) < 100 for s in starts[1:])
    check_predictions(tmp_path / 'sweep', records)
    assert out.stdout.count('predicted 4 held-out scenes') == 2

    # A second call reuses the finished runs instead of training again, and
    # redraws predictions.png from the kept predictions, with no model.
    (tmp_path / 'sweep' / 'predictions.png').unlink()
    again = sweep_cli(*tiny)
    assert again.returncode == 0
    assert again.stdout.count('already in results.json') == 4
    assert 'predicted' not in again.stdout
    check_predictions(tmp_path / 'sweep', records)


def check_predictions(work_dir: Path, records: list):
    """predictions.png holds the image row, the ground-truth row and one row
    per segmentation run, each panel its run's kept label map in the
    shared palette, at the pixels predictions.json tells."""
    import numpy as np
    from PIL import Image
    layout = json.loads((work_dir / 'predictions.json').read_text())
    seg = [r for r in records if r['task'] == 'seg']
    assert layout['rows'][:2] == [dict(row='image'), dict(row='ground truth')]
    assert [(r['family'], r['patch']) for r in layout['rows'][2:]] == [
        (r['family'], r['patch']) for r in seg]
    assert layout['scenes'] == [0, 1, 2, 3]
    (ph, pw), gap, scale = layout['panel'], layout['gap'], layout['scale']
    assert (ph, pw) == (32 * scale, 32 * scale)
    rows, cols = len(layout['rows']), len(layout['scenes'])
    png = np.asarray(Image.open(work_dir / 'predictions.png').convert('RGB'))
    assert png.shape[:2] == (rows * ph + (rows - 1) * gap +
                             layout['legend_height'],
                             layout['label_width'] + cols * pw +
                             (cols - 1) * gap)

    def panel(r, c):  # back at the scene's own pixels
        x, y = layout['label_width'] + c * (pw + gap), r * (ph + gap)
        return png[y:y + ph:scale, x:x + pw:scale]

    palette = np.array(layout['palette'], np.uint8)
    assert len(palette) == 11  # the scenes' own: background + 10 garments
    truth = [panel(1, c) for c in range(cols)]
    for c in range(cols):  # ground truth in the palette, garments in it
        colors = {tuple(v) for v in truth[c].reshape(-1, 3)}
        assert tuple(palette[0]) in colors and len(colors) >= 2
        assert colors <= {tuple(v) for v in palette}
    drawn = []
    for r, row in enumerate(layout['rows'][2:], 2):
        kept = np.load(row['predictions'])
        assert kept.shape == (cols, 32, 32)
        drawn.append([panel(r, c) for c in range(cols)])
        for c in range(cols):
            assert (drawn[-1][c] == palette[kept[c]]).all()
    # Three training steps do not segment the garments: every model's
    # panels differ from the ground truth somewhere.
    for panels in drawn:
        assert any((p != t).any() for p, t in zip(panels, truth))


def test_sweep_progress_weighs_runs_by_their_measured_cost():
    runs = plan_runs(['seg', 'cls'], ['vit', 'adventurer'],
                           dict(seg=[8, 4, 2], cls=[8]),
                           dict(seg=100, cls=50))
    names = [r.name for r in runs]
    assert names[:3] == ['seg_vit_p8', 'seg_vit_p4', 'seg_vit_p2']
    # Nothing timed: no ETA; done by steps x tokens. 100 * 16 of
    # 2 * 100 * (16 + 64 + 256) + 2 * 50 * 16.
    assert sweep_progress(runs, {}) == (0., None)
    percent, left = sweep_progress(runs, {'seg_vit_p8': None})
    assert percent == pytest.approx(100 * 1600 / 68800) and left is None

    # One token count timed: seconds per step proportional to the tokens
    # (0.2 s/step at 16). The adventurer and cls runs have no timing of
    # their own: the seg vit one stands in for them.
    percent, left = sweep_progress(runs, {'seg_vit_p8': 20.})
    per_token = .2 / 16
    expected_left = (100 * per_token * (64 + 256) +       # vit p4, p2
                     100 * per_token * (16 + 64 + 256) +  # adventurer
                     50 * per_token * (16 + 16))          # cls
    assert left == pytest.approx(expected_left)
    assert percent == pytest.approx(100 * 20 / (20 + expected_left))

    # Two token counts: a fixed cost per step plus one per token, fitted
    # through 0.2 s/step at 16 tokens and 0.5 at 64 (0.1 + 0.00625 * t).
    # The adventurer's one timed run (0.4 s/step at 16, twice the vit's)
    # sets its level; the vit's line its shape. No cls run is timed: all
    # three set the level (mean ratio to the line (1 + 1 + 2) / 3), the
    # seg vit line the shape. The cls vit run, skipped untimed, counts as
    # done at that estimate.
    finished = {'seg_vit_p8': 20., 'seg_vit_p4': 50., 'seg_adventurer_p8': 40.,
                'cls_vit_p8': None}
    percent, left = sweep_progress(runs, finished)
    vit_p2 = 100 * (.1 + .00625 * 256)                  # 170 s
    adventurer = 100 * 2 * (.5 + 1.7)                   # p4, p2: 440 s
    cls = 50 * 4 / 3 * .2                               # 13.3 s each
    assert left == pytest.approx(vit_p2 + adventurer + cls)
    done = 20 + 50 + 40 + cls
    assert percent == pytest.approx(100 * done / (done + left))

    # Noise beyond the token effect: the mean cost per step; a negative
    # fixed part: proportional to the tokens, by least squares.
    seg = runs[:3]
    assert sweep_progress(seg, {'seg_vit_p8': 30., 'seg_vit_p4': 20.}
                                )[1] == pytest.approx(100 * .25)
    assert sweep_progress(seg, {'seg_vit_p8': 10., 'seg_vit_p4': 70.}
                                )[1] == pytest.approx(
                                    100 * 256 * (16 * .1 + 64 * .7) /
                                    (16**2 + 64**2))

    # Everything done: 100 %, nothing left.
    every = {name: 10. for name in names}
    assert sweep_progress(runs, every) == (100., 0.)
    assert ProgressLine(runs).note(finished) == \
        f'sweep {percent:.0f}%, about 10 min left'
    assert [format_duration(s) for s in (40, 150, 7200)] == [
        '40 s', '2 min', '2.0 h']


def test_a_costlier_run_raises_the_time_left_not_the_sweep_back():
    """A first cls run slower than the seg runs predicted raises the time
    left; the sweep's percentage stays where it was shown."""
    runs = plan_runs(['seg', 'cls'], ['vit'], dict(seg=[8, 4], cls=[8]),
                     dict(seg=100, cls=100))
    before = {'seg_vit_p8': 10., 'seg_vit_p4': 10.}
    after = dict(before, cls_vit_p8=60.)
    percent_before, _ = sweep_progress(runs, before)
    percent_after, _ = sweep_progress(runs, after)
    assert percent_after > percent_before  # every run done
    slow = plan_runs(['seg', 'cls'], ['vit'],
                     dict(seg=[8, 4], cls=[8, 4, 2, 1]),
                     dict(seg=100, cls=100))
    shown, _ = sweep_progress(slow, before)
    percent, _ = sweep_progress(slow, after)
    assert percent < shown  # the estimate of the cls runs grew
    line = ProgressLine(slow)
    assert line.note(before).startswith(f'sweep {shown:.0f}%')
    assert line.note(after).startswith(f'sweep {shown:.0f}%')


def _synthetic_records(patches, family='vit', task='cls'):
    return [dict(task=task, family=family, patch=p, test_loss=2. * p**.1)
            for p in patches]


def test_two_patch_sizes_are_points_not_a_law(tmp_path):
    from patchscale_mm.analysis.scaling_law import NoFit, fit_records
    records = (_synthetic_records([8, 4]) +
               _synthetic_records([8, 4, 2], 'adventurer') +
               _synthetic_records([16, 8, 4], 'vit', 'seg'))
    lines = []
    fits = fit_and_plot(records, tmp_path, lines.append)
    two = fits[('cls', 'vit')]
    assert isinstance(two, NoFit) and two.slope == pytest.approx(.1)
    assert not hasattr(two, 'r2') and not hasattr(two, 'se_b')
    # NaN would make fits.json unreadable by strict parsers.
    def no_nan(value):
        raise AssertionError(f'{value} in fits.json')
    saved = json.loads((tmp_path / 'fits.json').read_text(),
                       parse_constant=no_nan)
    assert saved['cls/vit'] == dict(fitted=False, n=2, patch_sizes=2,
                                    note='2 points: no fit',
                                    slope=pytest.approx(.1))
    text = '\n'.join(lines)
    assert 'cls vit: 2 points: no fit, slope 0.100 between patches 8 and 4' \
        in text
    assert 'nan' not in text
    # Three patch sizes fit as before, with an error and R².
    three = fits[('cls', 'adventurer')]
    assert (three.a, three.b) == pytest.approx((2., .1))
    assert saved['cls/adventurer']['fitted'] is True
    assert saved['cls/adventurer']['r2'] == pytest.approx(1.)
    assert 'cls adventurer: loss = 2 * p^0.100 (b ± 0.000, R² 1.000)' in text
    assert (tmp_path / 'scaling_law.png').stat().st_size > 0

    # The offset law needs a fourth: three sizes are points there, with
    # no slope (it is not the exponent of a law with an offset).
    fits, errors = fit_records(records, offset=True)
    assert not errors
    assert fits[('cls', 'adventurer')] == NoFit(3, 3, None)
    assert fits[('cls', 'vit')].note == '2 points: no fit'


def test_fit_scaling_law_cli_lists_a_two_point_group_without_r2(
        tmp_path, capsys):
    cli = load_tool('fit_scaling_law')
    path = tmp_path / 'results.json'
    path.write_text(json.dumps(_synthetic_records([8, 4]) +
                               _synthetic_records([8, 4, 2], 'adventurer')))
    assert cli.main([str(path)]) == 0
    rows = [r for r in capsys.readouterr().out.splitlines()
            if r.startswith('| cls')]
    assert rows[0] == ('| cls | vit | 2 | slope 0.1 | — | — | '
                       '2 points: no fit |')
    assert rows[1].startswith('| cls | adventurer | 3 | 0.1 ± ')
    assert (tmp_path / 'scaling_law.png').is_file()


@pytest.mark.parametrize('args,message', [
    (['--seg-patches', 5], 'patch size 5 does not divide the 32px images'),
    (['--data-root', '/nonexistent/folder', '--tasks', 'cls'],
     '--data-root /nonexistent/folder is not a folder'),
    (['--cls-steps', 0], 'steps must be >= 1'),
    (['--checkpoint-every', 0], '--checkpoint-every must be >= 1, got 0'),
    (['--device', 'cuda'], '--device cuda: no CUDA device is visible here'),
    (['--cls-steps', 3, '--cls-epochs', 1], 'give --cls-steps or --cls-epochs, not both'),
    (['--tasks', 'cls', '--cls-epochs', 0], 'cls epochs must be > 0, got 0'),
])
def test_bad_arguments_fail_before_any_work(tmp_path, args, message):
    out = sweep_cli('--work-dir', tmp_path / 'w', '--data-cache',
                    tmp_path / 'data', *args, timeout=120)
    assert out.returncode != 0
    assert message in out.stderr
    assert not (tmp_path / 'data').exists()  # no data were written


def test_run_config_overrides_only_patch_steps_and_data(tmp_path):
    run = Run('seg', 'vit', 4, steps=10)
    text = run_config(run, '/data/scenes', batch_size=16)
    path = tmp_path / 'run.py'
    path.write_text(text)
    from mmengine.config import Config
    cfg = Config.fromfile(str(path))
    assert cfg.model.backbone.type == 'patchscale_mm.PatchViT'
    assert cfg.model.backbone.patch_size == 4
    assert cfg.train_cfg.max_iters == 10
    assert cfg.param_scheduler[0].total_steps == 10
    assert cfg.train_dataloader.batch_size == 16
    assert cfg.val_dataloader.dataset.data_root == '/data/scenes'
    # The rest comes from the shipped sweep config.
    assert cfg.model.backbone.arch.embed_dims == 64
    assert cfg.model.decode_head.type == 'patchscale_mm.LinearSegHead'


def test_an_epoch_budget_is_steps_over_the_training_samples(tmp_path):
    from patchscale_mm.sweep.loop import _steps_for_epochs
    # The shipped configs' batches: 128 images, 64 scenes.
    assert _steps_for_epochs(dict(cls=10, seg=2), ['vit'], None, None, (8000, 1000),
                             None) == dict(cls=-(-10 * 60000 // 128), seg=250)
    assert _steps_for_epochs(dict(cls=1), ['adventurer'], 100, None, (8000, 1000),
                             1000) == dict(cls=10)
    # A user's folder: its meta/train.txt, else the files under train/.
    (tmp_path / 'meta').mkdir()
    (tmp_path / 'meta' / 'train.txt').write_text(
        ''.join(f'train/{i}.png {i % 3}\n' for i in range(300)))
    assert _steps_for_epochs(dict(cls=1), ['vit'], 128, str(tmp_path), (1, 1),
                             None) == dict(cls=3)
    (tmp_path / 'meta' / 'train.txt').unlink()
    for i in range(5):
        (tmp_path / 'train' / f'c{i % 2}').mkdir(parents=True, exist_ok=True)
        (tmp_path / 'train' / f'c{i % 2}' / f'{i}.png').write_bytes(b'')
    assert _steps_for_epochs(dict(cls=2.5), ['vit'], 4, str(tmp_path), (1, 1),
                             None) == dict(cls=4)


def test_the_device_sets_what_the_runs_see_and_which_results_count(tmp_path):
    from mmengine.config import Config

    from patchscale_mm.sweep.loop import finished_records
    from patchscale_mm.sweep.supervise import run_env
    run = Run('cls', 'adventurer', 4, steps=10)
    for device, workers in (('cpu', 0), ('cuda', 8)):
        path = tmp_path / f'{device}.py'
        path.write_text(run_config(run, '/data', device=device))
        cfg = Config.fromfile(str(path))
        assert cfg.train_dataloader.num_workers == workers
        assert cfg.val_dataloader.num_workers == workers
        # bf16 autocast where a GPU trains (tools/train.py drops it on a CPU).
        assert cfg.optim_wrapper.type == 'AmpOptimWrapper'
        assert cfg.optim_wrapper.dtype == 'bfloat16'
    assert run_env(2, 'cpu')['CUDA_VISIBLE_DEVICES'] == ''
    assert run_env(2, 'cpu')['OMP_NUM_THREADS'] == '2'
    assert run_env(None, 'cuda').get('CUDA_VISIBLE_DEVICES') == \
        os.environ.get('CUDA_VISIBLE_DEVICES')
    key = dict(task='cls', family='adventurer', patch=4, steps=10)
    old = dict(key, batch_size=128)  # written before records had a device
    gpu = dict(key, batch_size=128, device='cuda')
    assert finished_records([old, gpu], key, None, 'cpu') == [old]
    assert finished_records([old, gpu], key, None, 'cuda') == [gpu]
    assert finished_records([old, gpu], key, 64, 'cuda') == []


def stamped_run_with_checkpoint(run, work_dir):
    """A run's work dir as the sweep leaves it after saving iteration 20:
    its config stamp, the checkpoint and MMEngine's last_checkpoint."""
    import torch
    started = run_config(run, '/data', checkpoint_every=10)
    (work_dir / CONFIG_STAMP).write_text(started)
    ckpt = work_dir / 'iter_20.pth'
    torch.save(dict(meta=dict(iter=20), state_dict={}), ckpt)
    (work_dir / 'last_checkpoint').write_text(str(ckpt))
    return started, ckpt


def test_a_checkpoint_resumes_the_same_training_at_any_save_interval(tmp_path):
    """The config stamp decides which checkpoint a rerun continues: other
    save and log intervals are the same training, other steps, batch or
    data are not (they start again)."""
    run = Run('cls', 'vit', 4, steps=100)
    started, ckpt = stamped_run_with_checkpoint(run, tmp_path)

    assert resumable_checkpoint(run, tmp_path, started) == str(ckpt)
    rarer = run_config(run, '/data', checkpoint_every=50)
    assert rarer != started
    assert resumable_checkpoint(run, tmp_path, rarer) == str(ckpt)
    for other in (run_config(run, '/data', batch_size=64, checkpoint_every=10),
                  run_config(run, '/elsewhere', checkpoint_every=10),
                  run_config(Run('cls', 'vit', 4, steps=200), '/data',
                                   checkpoint_every=10)):
        assert resumable_checkpoint(run, tmp_path, other) is None


def test_the_stamp_compares_parsed_configs_not_their_text(tmp_path):
    """The same settings written differently resume; a change that only
    the parsed config shows (a value of the inherited sweep config) does
    not."""
    run = Run('seg', 'vit', 4, steps=100)
    started, ckpt = stamped_run_with_checkpoint(run, tmp_path)

    lines = started.splitlines(keepends=True)
    lines[1], lines[2] = lines[2], lines[1]  # model and param_scheduler
    rewritten = '# the same run\n' + ''.join(lines).replace(', ', ',')
    assert rewritten != started
    assert resumable_checkpoint(run, tmp_path, rewritten) == str(ckpt)
    wider = started + \
        "model = dict(backbone=dict(arch=dict(embed_dims=96)))\n"
    assert resumable_checkpoint(run, tmp_path, wider) is None
    other_head = started + 'model = dict(decode_head=dict(num_classes=3))\n'
    assert resumable_checkpoint(run, tmp_path, other_head) is None


def write_class_folders(root: Path) -> Path:
    """An ImageNet-layout folder of real images (two Fashion-MNIST classes)
    at mixed, non-square sizes, as a user's own data would come."""
    from PIL import Image

    from patchscale_mm.fixtures import load_fashion_mnist
    images, labels = load_fashion_mnist('test')
    sizes = [(20, 24), (48, 40), (33, 33), (64, 16)]
    picked = [i for i in range(len(labels)) if labels[i] in (0, 1)][:24]
    for n, i in enumerate(picked):
        split = 'train' if n < 16 else 'val'
        folder = root / split / f'class{labels[i]}'
        folder.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray(images[i]).convert('RGB')
        image.resize(sizes[n % len(sizes)]).save(folder / f'{n}.png')
    return root


def test_a_checkpoint_the_sweep_did_not_see_saved_is_timed_by_its_file(tmp_path):
    checkpoint = tmp_path / 'iter_42.pth'
    checkpoint.write_bytes(b'')
    os.utime(checkpoint, (1_000_050.0, 1_000_050.0))
    clock = {'origin': 1_000_000.0, 'checkpoints': {'39': 37.5}}
    assert seconds_before(clock, str(tmp_path / 'iter_39.pth')) == 37.5
    # Saved 50 s after the piece's clock read 0.
    assert seconds_before(clock, str(checkpoint)) == pytest.approx(50.0)


def test_sweep_on_a_users_folder_of_any_image_size(tmp_path):
    data = write_class_folders(tmp_path / 'digits')
    out = sweep_cli('--work-dir', tmp_path / 'sweep', '--data-cache',
                    tmp_path / 'cache', '--tasks', 'cls', '--families', 'vit',
                    '--data-root', data, '--img-size', 16, '--cls-patches', 4,
                    2, '--cls-steps', 2, '--batch-size', 4)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    records = json.loads((tmp_path / 'sweep' / 'results.json').read_text())
    assert [(r['patch'], r['tokens']) for r in records] == [(4, 16), (2, 64)]
    assert all(0 <= r['metric'] <= 100 for r in records)
    assert not (tmp_path / 'cache').exists()  # Fashion-MNIST not needed


def test_img_size_needs_a_users_folder(tmp_path):
    out = sweep_cli('--work-dir', tmp_path / 'w', '--img-size', 64,
                    timeout=120)
    assert out.returncode != 0
    assert '--img-size applies to --data-root' in out.stderr


@pytest.mark.skipif(not HAS_PROC, reason='finds the trainer in /proc')
def test_an_interrupted_run_resumes_from_its_last_checkpoint(tmp_path):
    """The sweep alone is killed (as by a lost session or ``kill -9``)
    mid-run: its training process exits with it, and the same command again
    continues that run from its checkpoint instead of step 1."""
    args = [sys.executable, 'tools/patch_scaling_sweep.py', '--work-dir',
            tmp_path / 'sweep', '--data-cache', tmp_path, '--tasks', 'cls',
            '--families', 'adventurer', '--cls-patches', 8, '--cls-steps', 400,
            '--checkpoint-every', 3, '--batch-size', 8, '--train-limit', 48,
            '--val-limit', 16]
    first = subprocess.Popen(list(map(str, args)), cwd=ROOT, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             start_new_session=True)
    seen, trainers = [], []
    try:
        for line in first.stdout:
            seen.append(line)
            if 'step 40/400' in line:  # checkpoints to step 39 are on disk
                trainers = children(first.pid, 'patchscale_mm.train')
                first.kill()  # the sweep only, not its process group
                break
        first.wait(timeout=60)
        orphaned = still_running_after(trainers, 10)
    finally:
        try:  # whatever is left of the group, the test's or not
            os.killpg(first.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert first.returncode == -signal.SIGKILL, ''.join(seen)[-3000:]
    assert len(trainers) == 1, trainers
    assert not orphaned, 'the training process outlived the killed sweep'
    run_dir = tmp_path / 'sweep' / 'cls_adventurer_p8'
    assert not (tmp_path / 'sweep' / 'results.json').exists()

    # Saving at another interval is still the same run.
    args[args.index('--checkpoint-every') + 1] = 5
    second = subprocess.run(list(map(str, args)), cwd=ROOT, text=True,
                            capture_output=True, timeout=600)
    assert second.returncode == 0, (second.stdout + second.stderr)[-3000:]
    resumed = re.search(r'resuming from iter_(\d+)\.pth', second.stdout)
    assert resumed, second.stdout
    start = int(resumed.group(1))
    assert start % 3 == 0 and 39 <= start < 400
    # The resumed piece trains only the steps after the checkpoint.
    log = (run_dir / 'train.log').read_text()
    first_piece, second_piece = log.split(f'resumed epoch: 0, iter: {start}')
    assert re.search(r'Iter\(train\) \[\s*40/400\]', first_piece)
    steps = [int(s) for s in
             re.findall(r'Iter\(train\) \[\s*(\d+)/400\]', second_piece)]
    assert steps and min(steps) > start and max(steps) == 400
    record, = json.loads((tmp_path / 'sweep' / 'results.json').read_text())
    assert record['steps'] == 400 and 0 < record['test_loss'] < 10
    clock = read_clock(run_dir / CLOCK_FILE)['checkpoints']
    assert record['seconds'] >= clock[str(start)] > 0
    saved_after = [int(k) for k in clock if int(k) > start]
    assert saved_after and all(k % 5 == 0 for k in saved_after)
