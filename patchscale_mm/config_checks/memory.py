"""The memory guard: the analytic memory model
(:mod:`patchscale_mm.analysis.cost.memory`) applied to a training config,
against the memory of this machine."""
from typing import Optional

import torch
from mmengine.config import Config

from patchscale_mm.analysis.cost import measure
from patchscale_mm.analysis.cost.memory import MemoryEstimate, estimate_memory
from .backbone import resolve_backbone, train_input_size
from .keys import models_registry

GIB = 2**30


def _precision(cfg: Config) -> str:
    wrapper = cfg.get('optim_wrapper') or {}
    return 'amp' if 'Amp' in str(wrapper.get('type', '')) else 'fp32'


def estimate_training_memory(cfg: Config,
                             device: Optional[str] = None
                             ) -> Optional[MemoryEstimate]:
    """Backbone activations of a training batch plus weights, gradients and
    optimizer state; None where the backbone is not PatchViT/Adventurer."""
    registry = models_registry(cfg)
    info, problems = resolve_backbone(cfg, registry)
    loader = cfg.get('train_dataloader') or {}
    if info is None or problems or not loader.get('batch_size'):
        return None
    from patchscale_mm.parallel.setup import sequence_parallel_size
    sequence_parallel = sequence_parallel_size(cfg)
    if not isinstance(sequence_parallel, int) or sequence_parallel < 1:
        return None  # reported by config_problems
    built = {k: v for k, v in info.cfg.items() if k != 'init_cfg'}
    try:
        with torch.device('meta'):  # no memory, even for Huge at p1
            params = sum(p.numel() for p in registry.build(built).parameters())
    except (TypeError, ValueError):  # reported by config_problems
        return None
    device = device or ('cuda' if torch.cuda.is_available() else 'cpu')
    scan = (measure.active_scan(device)
            if info.family == 'adventurer' else 'kernel')
    return estimate_memory(
        info.family, info.arch, train_input_size(cfg, info), info.patch_size,
        batch=int(loader['batch_size']),
        precision=_precision(cfg),
        with_cp=bool(info.cfg.get('with_cp')),
        scan=scan,
        params=params,
        sequence_parallel=sequence_parallel,
        mixer_cfg=info.cfg.get('mixer_cfg'),
        label=info.label())


def _gib(n: int) -> str:
    return f'{n / GIB:.1f} GiB' if n >= GIB else f'{n / 2**20:.1f} MiB'


def memory_problem(cfg: Config,
                   available: Optional[int] = None,
                   where: str = 'given memory') -> Optional[str]:
    """One line when the estimated peak training memory exceeds what the
    device has, with the estimate and the fixes; None when it fits or
    cannot be estimated."""
    estimate = estimate_training_memory(cfg)
    if estimate is None:
        return None
    if available is None:
        available, where = measure.available_memory()
    total = estimate.total()
    if total <= available:
        return None
    h, w = estimate.input_size
    fixes = []
    if not estimate.with_cp:
        fixes.append('model.backbone.with_cp=True (about '
                     f'{_gib(estimate.total(with_cp=True))})')
    batch = estimate.largest_batch(available)
    fixes.append(f'train_dataloader.batch_size={batch} (about '
                 f'{_gib(estimate.total(batch=batch))})' if batch else
                 f'a smaller model or larger patches (batch 1 needs '
                 f'{_gib(estimate.total(batch=1))})')
    if estimate.precision == 'fp32':
        fixes.append('--amp for bf16/fp16 activations on CUDA (about '
                     f"{_gib(estimate.total(precision='amp'))})")
    split = estimate.fitting_split(available)
    if split:
        fixes.append(f'sequence_parallel.size={split}, the tokens of each '
                     f'image split over {split} processes (about '
                     f'{_gib(estimate.total(sequence_parallel=split))} each)')
    return (f'estimated peak training memory {_gib(total)} exceeds the '
            f'{_gib(available)} {where}: {estimate.label} on {h}x{w} '
            f'inputs ({estimate.tokens:,} tokens) keeps '
            f'{_gib(estimate.image_bytes())} of {estimate.precision} '
            f'activations per image x batch {estimate.batch}, plus '
            f'{_gib(estimate.state_bytes)} of weights, gradients and AdamW '
            'state; fixes: ' + '; '.join(fixes) + '; or pass '
            '--skip-memory-check to run anyway')
