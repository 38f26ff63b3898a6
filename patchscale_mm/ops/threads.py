"""How many of torch's threads the C++ CPU kernels split their work over.

By default (``PATCHSCALE_KERNEL_THREADS`` unset or ``auto``) the first kernel
call that could split times the scan kernel on a fixed problem, on one thread
and on all of torch's, once per process, and splits only if that saves at
least a fifth of the time: two vCPUs may be hyperthreads of one core, where a
split of FMA-bound work only adds waiting. ``PATCHSCALE_KERNEL_THREADS=N``
fixes at most N threads and times nothing. Either way the results are the
same bits: work summed across tasks runs in fixed slices. The policy lives in
``csrc/kernel_threads.h``; this module reads and sets it.
"""
import contextlib
from typing import Iterator

__all__ = ['KERNEL_THREADS_ENV', 'kernel_threads', 'use_kernel_threads']

KERNEL_THREADS_ENV = 'PATCHSCALE_KERNEL_THREADS'


def _C():
    from . import _C as ext
    return ext


def kernel_threads() -> int:
    """Threads the CPU kernels split over now (timing the split first, if
    that is still to do)."""
    return _C().kernel_threads()


@contextlib.contextmanager
def use_kernel_threads(n: int) -> Iterator[None]:
    """Within the block, the CPU kernels use at most ``n`` of torch's threads
    (``0``: their own timed choice)."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError(f'kernel threads: 0 (timed choice) or a positive number, got {n!r}')
    ext = _C()
    before = ext.kernel_threads_setting()
    ext.set_kernel_threads(n)
    try:
        yield
    finally:
        ext.set_kernel_threads(before)
