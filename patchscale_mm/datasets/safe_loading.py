"""A corrupt or missing training image stops the run with one line (or is
skipped), never with a traceback from a data loader worker.

``tools/train.py`` wraps the training dataset in :class:`BadSampleGuard`.
Before a sample goes through the pipeline its files (``img_path``,
``seg_map_path``) are checked: present, not empty, and JPEG and PNG files
complete (a JPEG ends with its end-of-image marker, a PNG with its IEND
chunk; OpenCV decodes a truncated JPEG into a half-grey image without an
error). A failing sample, or one whose pipeline raises, becomes
:class:`BadSampleError` naming the file and the dataset index. With the
config switch ``train_dataloader.dataset.skip_bad_samples=True`` the sample
is instead replaced by the next good one and a warning counts it.
"""
import logging
import os
import os.path as osp

from mmengine.dataset import BaseDataset
from mmengine.logging import print_log
from mmengine.registry import DATASETS

GUARD_TYPE = 'BadSampleGuard'
SKIP_SWITCH = 'skip_bad_samples'
PATH_KEYS = ('img_path', 'seg_map_path')
# Consecutive bad samples after which skipping gives up: the pipeline, not
# the data, is broken.
MAX_CONSECUTIVE_BAD = 100
_JPEG_START, _JPEG_END = b'\xff\xd8', b'\xff\xd9'
_PNG_START, _PNG_END = b'\x89PNG\r\n\x1a\n', b'IEND\xaeB`\x82'
# Entropy-coded JPEG data never holds 0xFFD9 (0xFF is stuffed), so a
# complete file has it near its end, after at most some padding.
_TAIL = 1024


class BadSampleError(RuntimeError):
    """A training sample whose file is missing, truncated or unreadable."""

    def one_line(self) -> str:
        # Re-raised from a data loader worker, the message is torch's
        # "Caught ... Original Traceback ..." with ours on its last line.
        last = str(self).strip().splitlines()[-1]
        return last.split(f'{type(self).__name__}: ', 1)[-1]


def file_problem(path: str):
    """Why ``path`` cannot be a good image or map file, or None. Reads only
    its first and last bytes; remote paths are left to the loader."""
    if '://' in str(path):
        return None
    if not osp.isfile(path):
        return 'file not found'
    size = osp.getsize(path)
    if size == 0:
        return 'empty file'
    with open(path, 'rb') as f:
        head = f.read(8)
        f.seek(max(0, size - _TAIL))
        tail = f.read()
    if head.startswith(_JPEG_START) and _JPEG_END not in tail:
        return 'truncated JPEG (no end-of-image marker)'
    if head.startswith(_PNG_START) and _PNG_END not in tail:
        return 'truncated PNG (no IEND chunk)'
    return None


@DATASETS.register_module(name=GUARD_TYPE)
class BadSampleGuard:
    """Wraps a dataset (a config dict or a built one): everything but
    ``__getitem__`` is the wrapped dataset's."""

    def __init__(self, dataset, skip_bad_samples: bool = False):
        if isinstance(dataset, dict):
            dataset = DATASETS.build(dataset)
        self.dataset = dataset
        self.skip_bad_samples = skip_bad_samples
        self.skipped = 0

    def __len__(self):
        return len(self.dataset)

    def __getattr__(self, name):
        if name == 'dataset':  # not yet set (copy, unpickling)
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, idx):
        for attempt in range(MAX_CONSECUTIVE_BAD):
            index = (idx + attempt) % len(self.dataset)
            problem = self._load(index)
            if not isinstance(problem, BadSampleError):
                return problem
            if not self.skip_bad_samples:
                raise problem
            self.skipped += 1
            # Per worker process: each worker counts the samples it skipped.
            print_log(f'skipped {problem.one_line()} ({self.skipped} '
                      f'skipped in process {os.getpid()})',
                      logger='current', level=logging.WARNING)
        raise BadSampleError(f'{MAX_CONSECUTIVE_BAD} consecutive bad '
                             f'samples from index {idx}: the data pipeline '
                             'or the dataset is broken')

    def _load(self, index):
        """The sample, or the BadSampleError that describes it."""
        paths = self._paths(index)
        for path in paths:
            problem = file_problem(path)
            if problem:
                return self._error(index, path, problem)
        try:
            return self.dataset[index]
        except Exception as e:  # decoders raise all kinds
            reason = f'{type(e).__name__}: {str(e).strip()}'.splitlines()[0]
            return self._error(index, ', '.join(paths) or 'no file', reason)

    def _paths(self, index):
        if not isinstance(self.dataset, BaseDataset):
            return []
        info = self.dataset.get_data_info(index)
        return [str(info[k]) for k in PATH_KEYS if info.get(k)]

    def _error(self, index, path, reason) -> BadSampleError:
        return BadSampleError(f'bad training sample {index} of '
                              f'{type(self.dataset).__name__}: {path}: '
                              f'{reason}')


def pop_skip_switch(cfg) -> bool:
    """Takes ``train_dataloader.dataset.skip_bad_samples`` out of the
    config (the dataset classes do not take it) and returns it."""
    dataset = (cfg.get('train_dataloader') or {}).get('dataset')
    if not isinstance(dataset, dict):
        return False
    return bool(dataset.pop(SKIP_SWITCH, False))


def guard_train_dataset(cfg, skip_bad_samples: bool = False) -> None:
    """Wraps the training dataset of ``cfg`` in :class:`BadSampleGuard`."""
    loader = cfg.get('train_dataloader')
    if not loader or not isinstance(loader.get('dataset'), dict):
        return
    if loader.dataset.get('type') == GUARD_TYPE:
        return
    loader.dataset = dict(type=GUARD_TYPE, dataset=loader.dataset,
                          skip_bad_samples=skip_bad_samples)


def unwrap_guard(tree: dict) -> dict:
    """A config dict with the training dataset unwrapped again."""
    dataset = (tree.get('train_dataloader') or {}).get('dataset')
    if isinstance(dataset, dict) and dataset.get('type') == GUARD_TYPE:
        tree['train_dataloader']['dataset'] = dataset['dataset']
    return tree
