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

from patchscale_mm import sweep

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
    assert 'test loss' in out.stdout and 'power-law fits' in out.stdout

    # A second call reuses the finished runs instead of training again.
    again = sweep_cli(*tiny)
    assert again.returncode == 0
    assert again.stdout.count('already in results.json') == 4


@pytest.mark.parametrize('args,message', [
    (['--seg-patches', 5], 'patch size 5 does not divide the 32px images'),
    (['--data-root', '/nonexistent/folder', '--tasks', 'cls'],
     '--data-root /nonexistent/folder is not a folder'),
    (['--cls-steps', 0], 'steps must be >= 1'),
    (['--checkpoint-every', 0], '--checkpoint-every must be >= 1, got 0'),
])
def test_bad_arguments_fail_before_any_work(tmp_path, args, message):
    out = sweep_cli('--work-dir', tmp_path / 'w', '--data-cache',
                    tmp_path / 'data', *args, timeout=120)
    assert out.returncode != 0
    assert message in out.stderr
    assert not (tmp_path / 'data').exists()  # no data were written


def test_run_config_overrides_only_patch_steps_and_data(tmp_path):
    run = sweep.Run('seg', 'vit', 4, steps=10)
    text = sweep.run_config(run, '/data/scenes', batch_size=16)
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


def test_a_checkpoint_resumes_the_same_training_at_any_save_interval(tmp_path):
    """The config stamp decides which checkpoint a rerun continues: other
    save and log intervals are the same training, other steps, batch or
    data are not (they start again)."""
    import torch
    run = sweep.Run('cls', 'vit', 4, steps=100)
    started = sweep.run_config(run, '/data', checkpoint_every=10)
    (tmp_path / sweep.CONFIG_STAMP).write_text(started)
    ckpt = tmp_path / 'iter_20.pth'
    torch.save(dict(meta=dict(iter=20), state_dict={}), ckpt)
    (tmp_path / 'last_checkpoint').write_text(str(ckpt))

    assert sweep.resumable_checkpoint(run, tmp_path, started) == str(ckpt)
    rarer = sweep.run_config(run, '/data', checkpoint_every=50)
    assert rarer != started
    assert sweep.resumable_checkpoint(run, tmp_path, rarer) == str(ckpt)
    for other in (sweep.run_config(run, '/data', batch_size=64, checkpoint_every=10),
                  sweep.run_config(run, '/elsewhere', checkpoint_every=10),
                  sweep.run_config(sweep.Run('cls', 'vit', 4, steps=200), '/data',
                                   checkpoint_every=10)):
        assert sweep.resumable_checkpoint(run, tmp_path, other) is None


def write_class_folders(root: Path) -> Path:
    """An ImageNet-layout folder of real images (two Fashion-MNIST classes)
    at mixed, non-square sizes, as a user's own data would come."""
    from PIL import Image

    from patchscale_mm.datasets.fashion_mnist import load_fashion_mnist
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
    assert sweep.seconds_before(clock, str(tmp_path / 'iter_39.pth')) == 37.5
    # Saved 50 s after the piece's clock read 0.
    assert sweep.seconds_before(clock, str(checkpoint)) == pytest.approx(50.0)
    # A clock written before the origin was kept: the old map, no origin.
    (tmp_path / sweep.CLOCK_FILE).write_text(json.dumps({'39': 37.5}))
    old = sweep.read_clock(tmp_path / sweep.CLOCK_FILE)
    assert old == {'checkpoints': {'39': 37.5}}
    assert sweep.seconds_before(old, str(checkpoint)) == 0.0


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
    clock = sweep.read_clock(run_dir / sweep.CLOCK_FILE)['checkpoints']
    assert record['seconds'] >= clock[str(start)] > 0
    saved_after = [int(k) for k in clock if int(k) > start]
    assert saved_after and all(k % 5 == 0 for k in saved_after)
