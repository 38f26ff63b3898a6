"""Measurements on this machine: the scan implementation in use, the bytes
autograd saves, the time of a training step and the memory there is."""
import contextlib
import os
import time
import warnings
import weakref
from typing import Optional, Sequence, Tuple

import torch

from .memory import PRECISIONS


def active_scan(device: str = 'cpu') -> str:
    """The scan implementation :func:`patchscale_mm.ops.ssd_scan` runs on
    ``device`` now (honouring ``$PATCHSCALE_SCAN_BACKEND``), as a ``scan``
    name of :func:`~.memory.activation_bytes`."""
    from patchscale_mm.ops import resolve_scan_backend
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # the once-only fallback warning
        backend = resolve_scan_backend(None, torch.empty(0, device=device))
    return {'cpp': 'fused_cpu', 'cuda': 'kernel'}.get(backend, backend)


def autocast(precision: str, device: str = 'cpu'):
    """The autocast context of a cost-model precision on ``device``."""
    if precision == 'fp32':
        return contextlib.nullcontext()
    if precision != 'amp':
        raise ValueError(f'unknown precision {precision!r}; valid: '
                         f'{", ".join(PRECISIONS)}')
    # bf16 on CPU: the same 2 bytes per element as the paper's fp16.
    dtype = torch.bfloat16 if device == 'cpu' else torch.float16
    return torch.autocast(device, dtype=dtype)


def saved_tensor_bytes(model: torch.nn.Module,
                       inputs: torch.Tensor,
                       precision: str = 'fp32') -> int:
    """Bytes of the distinct storages autograd still holds for backward at
    the end of one forward pass."""
    saved = []

    def pack(t):
        saved.append(weakref.ref(t))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with autocast(precision, inputs.device.type):
            out = model(inputs)  # noqa: F841 (keeps the graph alive)
    # Graph branches that do not reach the output (e.g. a scan's final
    # state) are freed during the forward pass; their tensors are not
    # activation memory, and their addresses may be reused, so only tensors
    # still alive now are counted, once per storage.
    storages = {}
    for ref in saved:
        t = ref()
        if t is not None:
            storage = t.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
    storages.pop(0, None)  # empty storages
    return sum(storages.values())


def measure_activation_bytes(model: torch.nn.Module,
                             img_size: int,
                             precision: str = 'fp32',
                             batch_sizes: Sequence[int] = (2, 4)) -> float:
    """Measured per-image activation memory of a training step, in bytes.

    The difference of the saved bytes at two batch sizes: weights, their
    autocast copies and other batch-independent tensors cancel, leaving what
    the paper calls the per-image memory. Batch 1 is avoided: there some
    einsums read their operands in place instead of copying them.
    """
    channels = model.patch_embed.projection.in_channels
    was_training = model.training
    model.train()
    try:
        small, large = (saved_tensor_bytes(
            model, torch.randn(b, channels, img_size, img_size), precision)
                        for b in batch_sizes)
    finally:
        model.train(was_training)
    return (large - small) / (batch_sizes[1] - batch_sizes[0])


def measure_step_time(model: torch.nn.Module,
                      img_size: int,
                      batch_size: int = 1,
                      precision: str = 'fp32',
                      repeats: int = 3) -> float:
    """Median seconds of a forward + backward pass on this machine."""
    model.train()
    channels = model.patch_embed.projection.in_channels
    x = torch.randn(batch_size, channels, img_size, img_size)
    times = []
    for _ in range(repeats + 1):  # the first run warms up allocators
        start = time.perf_counter()
        with autocast(precision):
            out = model(x)
        sum(o.float().sum() for o in out).backward()
        times.append(time.perf_counter() - start)
    model.zero_grad(set_to_none=True)
    return sorted(times[1:])[len(times[1:]) // 2]




def _meminfo_available() -> int:
    with open('/proc/meminfo') as f:
        for line in f:
            if line.startswith('MemAvailable:'):
                return int(line.split()[1]) * 1024
    raise OSError('no MemAvailable in /proc/meminfo')


def _cgroup_limit() -> Optional[int]:
    """The memory left under this container's cgroup (v2) limit."""
    try:
        with open('/sys/fs/cgroup/memory.max') as f:
            limit = f.read().strip()
        with open('/sys/fs/cgroup/memory.current') as f:
            used = int(f.read())
    except OSError:
        return None
    return None if limit == 'max' else int(limit) - used


def available_memory() -> Tuple[int, str]:
    """Bytes this process may use for training, and what they are: the
    GPU's memory on CUDA, else the available RAM shared by the processes of
    this node."""
    if torch.cuda.is_available():
        index = int(os.environ.get('LOCAL_RANK', 0))
        props = torch.cuda.get_device_properties(index)
        return props.total_memory, f'memory of GPU {index} ({props.name})'
    available = _meminfo_available()
    limit = _cgroup_limit()
    if limit is not None:
        available = min(available, limit)
    procs = int(os.environ.get('LOCAL_WORLD_SIZE', 1))
    where = 'available RAM' + (f' per process ({procs} on this node)'
                               if procs > 1 else '')
    return available // procs, where
