"""The sweep's data: Fashion-MNIST datasets written once into a cache
folder, or a user's classification folder."""
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple


def count_classes(root: Path) -> int:
    """Classes of an ImageNet-layout folder: labels of meta/train.txt, or the
    class folders of train/."""
    ann = root / 'meta' / 'train.txt'
    if ann.exists():
        labels = {int(line.split()[-1]) for line in ann.read_text().split('\n')
                  if line.strip()}
        return max(labels) + 1
    folders = [p for p in (root / 'train').iterdir() if p.is_dir()]
    if not folders:
        raise ValueError(f'--data-root {root}: neither meta/train.txt nor '
                         'class folders in train/')
    return len(folders)


# Fashion-MNIST's training split, which the classification task uses whole.
FMNIST_TRAIN = 60000


def count_train_samples(task: str, data_root: Optional[str],
                        num_scenes: Tuple[int, int],
                        train_limit: Optional[int]) -> int:
    """Training samples of a task, as an epoch budget counts them: the
    segmentation scenes, Fashion-MNIST's 60k, or a user's folder
    (meta/train.txt lines, else the files under train/), at most
    ``train_limit``."""
    if task == 'seg':
        count = num_scenes[0]
    elif not data_root:
        count = FMNIST_TRAIN
    else:
        ann = Path(data_root, 'meta', 'train.txt')
        count = (sum(1 for line in ann.read_text().split('\n') if line.strip())
                 if ann.exists() else
                 sum(1 for f in Path(data_root, 'train').rglob('*') if f.is_file()))
    return min(count, train_limit) if train_limit else count


def prepare_data(tasks: Sequence[str], cache: Path,
                 num_scenes: Tuple[int, int], data_root: Optional[str],
                 log) -> Dict[str, Path]:
    """Data roots per task; the Fashion-MNIST datasets are built once in
    ``cache`` (``data_root``, if given, holds the classification data)."""
    from patchscale_mm.fixtures import (make_ade20k_fixture,
                                        make_imagenet_fixture)
    roots = {}
    if 'seg' in tasks:
        n_train, n_val = num_scenes
        root = cache / f'fmnist_scenes32_{n_train}_{n_val}'
        if not (root / '.complete').exists():
            log(f'writing {n_train}+{n_val} segmentation scenes to {root}')
            make_ade20k_fixture(root, n_train, n_val, canvas_size=(32, 32),
                                num_objects=(2, 2), scale_range=(0.6, 1.0))
            (root / '.complete').touch()
        roots['seg'] = root
    if 'cls' in tasks:
        if data_root:
            roots['cls'] = Path(data_root)
        else:
            root = cache / 'fmnist_imagenet32'
            if not (root / '.complete').exists():
                log(f'writing Fashion-MNIST (60k/10k, 32x32) to {root}')
                make_imagenet_fixture(root, None, None, pad_to=32)
                (root / '.complete').touch()
            roots['cls'] = root
    return roots
