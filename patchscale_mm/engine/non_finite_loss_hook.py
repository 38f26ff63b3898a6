"""Stop at the first non-finite loss, before it reaches a checkpoint.

MMEngine 0.10 has no such check: ``EarlyStoppingHook(check_finite=True)``
watches validation metrics, and mmdet's ``CheckInvalidLossHook`` (detection
only) asserts every 50 iterations with an empty message. A NaN that goes
unnoticed until the next checkpoint overwrites good checkpoints with NaN
weights (``max_keep_ckpts`` then deletes the good ones), so this hook checks
every iteration, agrees across ranks, and refuses to save non-finite weights.
"""
from typing import Optional

import torch
import torch.distributed as dist
from mmengine.hooks import Hook

from patchscale_mm.registry import HOOKS


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss (or weights)."""


def _fmt(value: torch.Tensor) -> str:
    value = value.detach().float()
    return f'{value.item():.4g}' if value.numel() == 1 else 'non-finite'


@HOOKS.register_module()
class NonFiniteLossHook(Hook):
    """Raises :class:`NonFiniteLossError` at the first iteration whose loss
    is NaN or infinite, naming the iteration and the last good checkpoint.

    Runs before the ``CheckpointHook`` of the same iteration, so the bad
    step is never saved. In distributed runs the ranks agree (one
    all-reduce of a flag), so all of them stop together.

    Args:
        interval (int): Check every ``interval`` iterations. Defaults to 1
            (the check is one ``isfinite`` on a scalar).
    """
    priority = 'ABOVE_NORMAL'

    def __init__(self, interval: int = 1):
        self.interval = interval

    def after_train_iter(self,
                         runner,
                         batch_idx: int,
                         data_batch=None,
                         outputs: Optional[dict] = None) -> None:
        if not (outputs and 'loss' in outputs
                and self.every_n_train_iters(runner, self.interval)):
            return
        loss = torch.as_tensor(outputs['loss']).detach()
        bad = torch.tensor(float(not torch.isfinite(loss).all()),
                           device=loss.device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        if bad.item():
            message = self._message(runner, outputs)
            runner.logger.error(message)
            raise NonFiniteLossError(message)

    def _message(self, runner, outputs: dict) -> str:
        losses = ', '.join(f'{k}={_fmt(v)}' for k, v in outputs.items()
                           if 'loss' in k and torch.is_tensor(v))
        last = runner.message_hub.get_info('last_ckpt')
        keep = (f'the last good checkpoint is {last}' if last else
                'no checkpoint was saved yet')
        return (f'non-finite loss at iteration {runner.iter + 1} '
                f'(epoch {runner.epoch + 1}; {losses or "loss non-finite"} '
                'on at least one rank): training stopped and '
                f'{keep}; lower the learning rate, clip gradients '
                '(optim_wrapper.clip_grad) or train in fp32, then resume '
                'with --resume')

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        bad = [
            name for name, value in checkpoint.get('state_dict', {}).items()
            if torch.is_tensor(value) and value.is_floating_point()
            and not torch.isfinite(value).all()
        ]
        if bad:
            step = (checkpoint.get('meta') or {}).get('iter', runner.iter)
            message = (f'refusing to save a checkpoint at iteration {step}: '
                       f'{len(bad)} weight tensor(s) are '
                       f'not finite (first: {bad[0]}); the earlier '
                       'checkpoints are kept')
            runner.logger.error(message)
            raise NonFiniteLossError(message)
